//! The listeners of one client, fed by its reader.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::listener::{EventListener, ListenOptions};
use super::queue::Core;
use crate::error::Error;
use crate::message::Event;

/// The listeners of one client.
#[derive(Default)]
pub(crate) struct Registry {
    listeners: Mutex<Vec<Arc<Core>>>,
    /// Set by `dispatch`, cleared by `wake`.
    undelivered: AtomicBool,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Core>>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register(self: &Arc<Self>, options: ListenOptions) -> EventListener {
        let core = Arc::new(Core::new(options));
        self.lock().push(core.clone());
        EventListener::new(core, Arc::downgrade(self))
    }

    /// Hand an event to every listener that wants it.
    ///
    /// Listeners are not woken here but by [`wake`](Self::wake), once per batch of
    /// messages: a consumer that keeps up would otherwise be woken (a thread switch)
    /// for every single event. (Waits on an [`EventQueue`](super::EventQueue) that
    /// an event is handed to are woken at once.)
    pub(crate) fn dispatch(&self, event: &Event) {
        for l in self.lock().iter() {
            l.offer(event);
        }
        self.undelivered.store(true, Ordering::Release);
    }

    /// Wake the listeners that have events queued since the last call.
    pub(crate) fn wake(&self) {
        if !self.undelivered.swap(false, Ordering::AcqRel) {
            return;
        }
        for l in self.lock().iter() {
            l.wake_if_ready();
        }
    }

    /// End every listener's stream (the session ended) and forget them.
    pub(crate) fn close_all(&self, cause: Option<&Error>) {
        let listeners = std::mem::take(&mut *self.lock());
        for l in listeners {
            l.close(cause);
        }
    }

    pub(super) fn remove(&self, core: &Arc<Core>) {
        self.lock().retain(|l| !Arc::ptr_eq(l, core));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}
