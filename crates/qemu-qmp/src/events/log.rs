//! The shared log that listeners for every event read from.
//!
//! # How it works
//!
//! A listener that wants every event (no names, no filter) would otherwise get its
//! own copy of every event in its own queue: with 10,000 of them, each event meant
//! 10,000 locks and queue pushes on the reader, and the time went into stores to
//! 10,000 cold queues. Such listeners are *readers* of one log per client instead:
//! the reader appends each event to the log once, and wakes only the readers whose
//! consumer waits. A reader keeps a cursor (the sequence number of the next event it
//! has not taken) and moves the events it has not taken into its own queue when its
//! consumer looks (`Core::sync`), so everything else about a listener (its bound,
//! its loss count, `recv_many`, closing) works on that queue as for any listener.
//!
//! Each event in the log counts the readers that have not taken it yet; it goes once
//! none is left, or when the log holds more events than the largest reader capacity.
//! A reader whose cursor fell further behind than that has lost the events that were
//! dropped, exactly those a queue of its own would have dropped. The log's head (the
//! sequence number of the next event) is also kept in an atomic, so that a consumer
//! with events already in its own queue can tell, without the log's lock, whether
//! it must look at the log first.
//!
//! While a client has at most 8 readers, the registry puts each event straight
//! into their queues instead (after what the log still holds for them), and the
//! log stays empty: with one `listen_all` listener draining a backlog, going
//! through the log cost the multi-thread client about a fifth of its rate.
//!
//! A reader whose queue becomes an [`EventQueue`](super::EventQueue) (pass-over
//! waits need events handed to waits as they arrive) takes what the log holds for it
//! and becomes an ordinary listener.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::queue::Core;
use crate::message::Event;

/// One client's log and its head.
#[derive(Default)]
pub(crate) struct Shared {
    log: Mutex<Log>,
    /// [`Log::head`], written under the lock, read without it.
    head: AtomicU64,
}

impl Shared {
    /// Lock the log, through a poisoning (its state stays consistent: no step of it
    /// can panic half-way). Taken after a listener's own lock when both are held.
    pub(super) fn lock(&self) -> LogGuard<'_> {
        LogGuard {
            log: self.log.lock().unwrap_or_else(|p| p.into_inner()),
            head: &self.head,
        }
    }

    /// The sequence number the next event will get (possibly a little stale).
    pub(super) fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }
}

/// The locked log; publishes its head when released.
pub(super) struct LogGuard<'a> {
    log: MutexGuard<'a, Log>,
    head: &'a AtomicU64,
}

impl std::ops::Deref for LogGuard<'_> {
    type Target = Log;
    fn deref(&self) -> &Log {
        &self.log
    }
}

impl std::ops::DerefMut for LogGuard<'_> {
    fn deref_mut(&mut self) -> &mut Log {
        &mut self.log
    }
}

impl Drop for LogGuard<'_> {
    fn drop(&mut self) {
        self.head.store(self.log.head(), Ordering::Release);
    }
}

/// An event and how many readers have yet to take it.
struct Entry {
    event: Event,
    left: usize,
}

#[derive(Default)]
pub(crate) struct Log {
    /// Events in arrival order; `events[0]` has sequence number `base`.
    events: VecDeque<Entry>,
    base: u64,
    readers: usize,
    /// How many readers have each capacity.
    capacities: BTreeMap<usize, usize>,
    /// The largest of them (0 without readers).
    largest: usize,
    /// Readers whose consumer waits, to wake at the next event.
    parked: Vec<Arc<Core>>,
}

impl Log {
    /// The sequence number the next event will get.
    pub(super) fn head(&self) -> u64 {
        self.base + self.events.len() as u64
    }

    /// Append an event; returns the readers to wake (those whose consumer waits).
    pub(super) fn push(&mut self, event: &Event) -> Vec<Arc<Core>> {
        if self.readers == 0 {
            return Vec::new();
        }
        self.events.push_back(Entry {
            event: event.clone(),
            left: self.readers,
        });
        if self.events.len() > self.largest {
            self.events.pop_front();
            self.base += 1;
        }
        if self.parked.is_empty() {
            return Vec::new();
        }
        for core in &self.parked {
            core.parked.store(false, Ordering::Release);
        }
        std::mem::take(&mut self.parked)
    }

    /// A new reader, which will take the events from the next one on; returns its
    /// cursor.
    pub(super) fn attach(&mut self, capacity: usize) -> u64 {
        self.readers += 1;
        *self.capacities.entry(capacity).or_default() += 1;
        self.largest = self.largest.max(capacity);
        self.head()
    }

    /// A reader leaves (dropped, closed, or turned into an ordinary listener),
    /// having taken nothing from `cursor` on.
    pub(super) fn detach(&mut self, cursor: u64, capacity: usize) {
        self.taken(cursor);
        self.readers -= 1;
        if let Some(n) = self.capacities.get_mut(&capacity) {
            *n -= 1;
            if *n == 0 {
                self.capacities.remove(&capacity);
            }
        }
        self.largest = self.capacities.last_key_value().map_or(0, |(&c, _)| c);
        while self.events.len() > self.largest {
            self.events.pop_front();
            self.base += 1;
        }
    }

    /// How many events before `cursor`'s were dropped from the log already, and the
    /// events from there on: what a reader at `cursor` has to take. Call
    /// [`taken`](Self::taken) once they are copied.
    pub(super) fn from(&self, cursor: u64) -> (u64, impl ExactSizeIterator<Item = &Event>) {
        let from = cursor.max(self.base);
        let skip = usize::try_from(from - self.base).unwrap_or(usize::MAX);
        let events = self.events.range(skip.min(self.events.len())..);
        (from - cursor, events.map(|e| &e.event))
    }

    /// A reader at `cursor` has taken every event up to the head: each counts one
    /// reader fewer, and those no reader needs any more go.
    pub(super) fn taken(&mut self, cursor: u64) {
        let from = cursor.max(self.base);
        let skip = usize::try_from(from - self.base).unwrap_or(usize::MAX);
        for e in self.events.range_mut(skip.min(self.events.len())..) {
            e.left -= 1;
        }
        while self.events.front().is_some_and(|e| e.left == 0) {
            self.events.pop_front();
            self.base += 1;
        }
    }

    /// Whether events from `cursor` on exist.
    pub(super) fn has_news(&self, cursor: u64) -> bool {
        cursor < self.head()
    }

    /// Wake `core` at the next event.
    pub(super) fn park(&mut self, core: Arc<Core>) {
        self.parked.push(core);
    }

    /// Forget `core`, parked and now leaving: the list holds live readers only (it
    /// is emptied only by events appended to the log, which direct delivery
    /// skips).
    pub(super) fn unpark(&mut self, core: &Core) {
        if let Some(i) = self
            .parked
            .iter()
            .position(|c| std::ptr::eq(Arc::as_ptr(c), core))
        {
            self.parked.swap_remove(i);
        }
    }

    /// Readers waiting for the next event (tests).
    #[cfg(test)]
    pub(super) fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Readers (tests).
    #[cfg(test)]
    pub(super) fn readers(&self) -> usize {
        self.readers
    }

    /// Events held (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.events.len()
    }
}
