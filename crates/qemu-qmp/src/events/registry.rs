//! The listeners of one client, fed by its reader.
//!
//! # How it works
//!
//! Listeners are kept by the names they want (a listener for every event, or with
//! only a filter, in a list of its own), so an event is offered only to the
//! listeners that could want it: listeners for other events cost an event nothing
//! (with 10,000 of them, a `stop` + `cont` took 1,180 µs before, 432 µs after,
//! against 331 µs with one listener). Listeners for every event with no filter are
//! not offered events at all once there are more than 8: they read the client's
//! log (see the `log` module), so 10,000 of them cost a `stop` + `cont` what one
//! does (0.3-0.5 ms, against 1.7-5.6 ms with a queue each). Each list is a vector
//! of slots walked in order, with a map from a listener's address to its slot, so
//! that dropping a listener costs the same whatever the number of others (a `Vec`
//! and `retain` made dropping 10,000 listeners quadratic: 60 ms, now 1.5 ms).
//! Consumers are woken once per batch of messages, and only those that wait and got
//! something: the reader notes them while it offers (a flag on each keeps the note
//! single).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::listener::{EventListener, ListenOptions};
use super::log::Shared;
use super::queue::Core;
use crate::error::Error;
use crate::message::Event;

/// A set of listeners: slots walked in order (an event is offered to each, touching
/// memory in the order the listeners were made), found by address for removal.
#[derive(Default)]
struct Set {
    slots: Vec<Option<Arc<Core>>>,
    /// Slot of each listener, by address.
    index: HashMap<usize, usize>,
    /// Empty slots, reused first.
    free: Vec<usize>,
}

impl Set {
    fn insert(&mut self, core: Arc<Core>) {
        let k = key(&core);
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(core);
                i
            }
            None => {
                self.slots.push(Some(core));
                self.slots.len() - 1
            }
        };
        self.index.insert(k, slot);
    }

    /// Returns whether `k` was in the set.
    fn remove(&mut self, k: usize) -> bool {
        let Some(slot) = self.index.remove(&k) else {
            return false;
        };
        self.slots[slot] = None;
        self.free.push(slot);
        // More holes than listeners: close them up (amortised O(1) a removal), so
        // that offering an event never walks many empty slots.
        if self.free.len() * 2 > self.slots.len() {
            self.slots.retain(Option::is_some);
            self.free.clear();
            self.index.clear();
            for (i, c) in self.slots.iter().flatten().enumerate() {
                self.index.insert(key(c), i);
            }
        }
        true
    }

    fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn values(&self) -> impl Iterator<Item = &Arc<Core>> {
        self.slots.iter().flatten()
    }

    fn into_entries(self) -> impl Iterator<Item = (usize, Arc<Core>)> {
        self.slots.into_iter().flatten().map(|c| (key(&c), c))
    }
}

fn key(core: &Arc<Core>) -> usize {
    Arc::as_ptr(core) as usize
}

#[derive(Default)]
struct Listeners {
    /// Listeners for every event with no filter: readers of the log.
    readers: Set,
    /// Other listeners that name no event: every event is offered to them.
    all: Set,
    /// Listeners by the event names they want.
    by_name: HashMap<Box<str>, Set>,
    /// Consumers to wake at the end of the batch.
    to_wake: Vec<Arc<Core>>,
}

/// Up to this many readers, events go straight into their queues, as for other
/// listeners, and the log stays empty: with one `listen_all` listener draining a
/// backlog, the log cost the multi-thread client about a fifth of its rate (the
/// reader appending and the consumer taking shared the log's lock and entries).
const DIRECT_READERS: usize = 8;

/// The listeners of one client.
pub(crate) struct Registry {
    listeners: Mutex<Listeners>,
    /// What the readers read (locked after `listeners` when both are held).
    log: Arc<Shared>,
    /// Set by `dispatch`, cleared by `wake`.
    undelivered: AtomicBool,
    /// [`DIRECT_READERS`], or another bound in tests.
    direct_readers: usize,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            listeners: Mutex::default(),
            log: Arc::default(),
            undelivered: AtomicBool::new(false),
            direct_readers: DIRECT_READERS,
        }
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Listeners> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register(self: &Arc<Self>, options: ListenOptions) -> EventListener {
        let mut l = self.lock();
        if options.takes_everything() {
            // Under the listeners' lock, so that no event goes by between the
            // cursor's place and the registration.
            let cursor = self.log.lock().attach(options.capacity_value());
            let core = Arc::new(Core::reader(options, self.log.clone(), cursor));
            l.readers.insert(core.clone());
            drop(l);
            return EventListener::new(core, Arc::downgrade(self));
        }
        let core = Arc::new(Core::new(options));
        {
            let names = core.options.name_list();
            if names.is_empty() {
                l.all.insert(core.clone());
            } else {
                for name in names {
                    l.by_name
                        .entry(name.as_str().into())
                        .or_default()
                        .insert(core.clone());
                }
            }
        }
        drop(l);
        EventListener::new(core, Arc::downgrade(self))
    }

    /// Make a reader of the log an ordinary listener, whose queue is offered each
    /// event (an [`EventQueue`](super::EventQueue) needs that for its waits).
    pub(super) fn make_ordinary(&self, core: &Arc<Core>) {
        let mut l = self.lock();
        if l.readers.remove(key(core)) {
            // Under the listeners' lock: no event goes by between leaving the log
            // and joining the others.
            core.leave_log();
            l.all.insert(core.clone());
        }
    }

    /// Hand an event to every listener that wants it.
    ///
    /// Listeners are not woken here but by [`wake`](Self::wake), once per batch of
    /// messages: a consumer that keeps up would otherwise be woken (a thread switch)
    /// for every single event. (Waits on an [`EventQueue`](super::EventQueue) that
    /// an event is handed to are woken at once.)
    pub(crate) fn dispatch(&self, event: &Event) {
        let mut guard = self.lock();
        let l = &mut *guard;
        if l.readers.len() > self.direct_readers {
            // One append for every reader; only those that wait are woken.
            let parked = self.log.lock().push(event);
            for core in parked {
                if !core.wake_pending.swap(true, Ordering::AcqRel) {
                    l.to_wake.push(core);
                }
            }
        } else {
            for core in l.readers.values() {
                if core.offer_to_reader(event) && !core.wake_pending.swap(true, Ordering::AcqRel) {
                    l.to_wake.push(core.clone());
                }
            }
        }
        let named = l.by_name.get(event.name());
        for core in l
            .all
            .values()
            .chain(named.into_iter().flat_map(|s| s.values()))
        {
            if core.offer(event) && !core.wake_pending.swap(true, Ordering::AcqRel) {
                l.to_wake.push(core.clone());
            }
        }
        self.undelivered.store(true, Ordering::Release);
    }

    /// Wake the consumers that wait and got events since the last call.
    pub(crate) fn wake(&self) {
        if !self.undelivered.swap(false, Ordering::AcqRel) {
            return;
        }
        let to_wake = std::mem::take(&mut self.lock().to_wake);
        for core in to_wake {
            core.wake_pending.store(false, Ordering::Release);
            core.wake_if_ready();
        }
    }

    /// End every listener's stream (the session ended) and forget them.
    pub(crate) fn close_all(&self, cause: Option<&Error>) {
        let listeners = std::mem::take(&mut *self.lock());
        let mut closed = std::collections::HashSet::new();
        let named = listeners.by_name.into_values().flat_map(Set::into_entries);
        let everything = listeners
            .readers
            .into_entries()
            .chain(listeners.all.into_entries());
        for (k, core) in everything.chain(named) {
            if closed.insert(k) {
                core.close(cause);
            }
        }
    }

    pub(super) fn remove(&self, core: &Arc<Core>) {
        let mut l = self.lock();
        let k = key(core);
        if l.readers.remove(k) {
            core.leave_log();
            return;
        }
        let names = core.options.name_list();
        if names.is_empty() {
            l.all.remove(k);
        }
        for name in names {
            if let Some(set) = l.by_name.get_mut(name.as_str()) {
                set.remove(k);
                if set.is_empty() {
                    l.by_name.remove(name.as_str());
                }
            }
        }
    }

    /// How many listeners have a consumer waiting (tests).
    #[cfg(test)]
    pub(crate) fn lock_for_test_waiting(&self) -> usize {
        let l = self.lock();
        let named = l.by_name.values().flat_map(|s| s.values());
        l.readers
            .values()
            .chain(l.all.values())
            .chain(named)
            .filter(|c| c.lock().consumer.is_some())
            .count()
    }

    /// A registry that puts events straight into the queues of at most `n` readers
    /// (tests).
    #[cfg(test)]
    pub(crate) fn with_direct_readers(n: usize) -> Registry {
        Registry {
            direct_readers: n,
            ..Registry::default()
        }
    }

    /// How many events the log holds, and for how many readers (tests).
    #[cfg(test)]
    pub(crate) fn log_state(&self) -> (usize, usize) {
        let log = self.log.lock();
        (log.len(), log.readers())
    }

    /// How many readers wait in the log's list (tests).
    #[cfg(test)]
    pub(crate) fn log_parked(&self) -> usize {
        self.log.lock().parked()
    }

    /// How many listeners are registered (tests): a listener of several names is
    /// in several sets, and counts once.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let l = self.lock();
        let named = l.by_name.values().flat_map(|s| s.values());
        let keys: std::collections::HashSet<usize> = l
            .readers
            .values()
            .chain(l.all.values())
            .chain(named)
            .map(key)
            .collect();
        keys.len()
    }
}
