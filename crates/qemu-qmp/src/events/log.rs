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
//! The log keeps an event while a reader's cursor is at or before it, and never more
//! events than the largest reader capacity: a reader whose cursor fell further behind
//! than that has lost the events that were dropped, exactly those a queue of its own
//! would have dropped. Cursors and capacities are counted in ordered maps, so the
//! slowest cursor and the largest capacity are found without walking the readers.
//!
//! A reader whose queue becomes an [`EventQueue`](super::EventQueue) (pass-over
//! waits need events handed to waits as they arrive) takes what the log holds for it
//! and becomes an ordinary listener.

use std::collections::{vec_deque, BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::queue::Core;
use crate::message::Event;

/// One client's log; behind a mutex, which is taken after a listener's own lock
/// when both are held.
#[derive(Default)]
pub(crate) struct Log {
    /// Events in arrival order; `events[0]` has sequence number `base`.
    events: VecDeque<Event>,
    base: u64,
    /// How many readers have their cursor at each position.
    cursors: BTreeMap<u64, usize>,
    /// How many readers have each capacity.
    capacities: BTreeMap<usize, usize>,
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
        if self.cursors.is_empty() {
            return Vec::new();
        }
        self.events.push_back(event.clone());
        self.trim();
        for core in &self.parked {
            core.parked.store(false, Ordering::Release);
        }
        std::mem::take(&mut self.parked)
    }

    /// A new reader, which will take the events from the next one on; returns its
    /// cursor.
    pub(super) fn attach(&mut self, capacity: usize) -> u64 {
        let head = self.head();
        *self.cursors.entry(head).or_default() += 1;
        *self.capacities.entry(capacity).or_default() += 1;
        head
    }

    /// A reader leaves (dropped, closed, or turned into an ordinary listener).
    pub(super) fn detach(&mut self, cursor: u64, capacity: usize) {
        decrement(&mut self.cursors, cursor);
        decrement(&mut self.capacities, capacity);
        self.trim();
    }

    /// The events from `cursor` on, and how many before them were dropped from the
    /// log already; moves the reader's cursor to the head ([`trim`](Self::trim)
    /// once they are copied).
    pub(super) fn take_from(&mut self, cursor: u64) -> (u64, vec_deque::Iter<'_, Event>) {
        let head = self.head();
        let from = cursor.max(self.base);
        let dropped = from - cursor;
        if cursor != head {
            decrement(&mut self.cursors, cursor);
            *self.cursors.entry(head).or_default() += 1;
        }
        // `from` is within the log: at most its head.
        let skip = usize::try_from(from - self.base).unwrap_or(usize::MAX);
        (dropped, self.events.range(skip.min(self.events.len())..))
    }

    /// Whether events from `cursor` on exist.
    pub(super) fn has_news(&self, cursor: u64) -> bool {
        cursor < self.head()
    }

    /// Wake `core` at the next event.
    pub(super) fn park(&mut self, core: Arc<Core>) {
        self.parked.push(core);
    }

    /// Drop the events every reader has taken, and those beyond the largest
    /// capacity.
    pub(super) fn trim(&mut self) {
        let (Some((&slowest, _)), Some((&largest, _))) = (
            self.cursors.first_key_value(),
            self.capacities.last_key_value(),
        ) else {
            self.base = self.head();
            self.events.clear();
            return;
        };
        while self.base < slowest || self.events.len() > largest {
            if self.events.pop_front().is_none() {
                break;
            }
            self.base += 1;
        }
    }

    /// Readers (tests).
    #[cfg(test)]
    pub(super) fn readers(&self) -> usize {
        self.cursors.values().sum()
    }

    /// Events held (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.events.len()
    }
}

fn decrement<K: Ord>(map: &mut BTreeMap<K, usize>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}
