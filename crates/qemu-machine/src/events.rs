//! The machine's event queue (Python: `QEMUMachine._events` plus the QMP client's
//! event queue), a [`qemu_qmp::EventQueue`].
//!
//! One listener for all events is registered on the QMP client before the
//! connection is made, so no event is missed, not even one sent during capability
//! negotiation. Its queue is the only place events are kept: events that a wait
//! passes over stay there, in order, for later calls; it is bounded (the oldest are
//! dropped, counted and logged), and any number of waits may run on it at once
//! without a lock held across them.

use std::time::Duration;

use qemu_qmp::{Event, EventListener, Wait};
use serde_json::Value;
use tokio::time::Instant;

use crate::matching::event_matches;

/// How many events the machine keeps before the oldest are dropped (with a warning)
/// if nobody reads them: the default of every QMP event queue.
pub(crate) const EVENT_CAPACITY: usize = qemu_qmp::DEFAULT_EVENT_CAPACITY;

#[derive(Debug)]
pub(crate) struct EventQueue {
    queue: qemu_qmp::EventQueue,
}

/// How a wait on the queue ended without an event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoEvent {
    /// The deadline passed.
    Timeout,
    /// The session ended; no more events can come.
    Closed,
}

/// Run `future` until `timeout` has passed (`None` from a timeout too long to
/// represent: no deadline).
async fn within<F: std::future::Future>(timeout: Duration, future: F) -> Option<F::Output> {
    match Instant::now().checked_add(timeout) {
        Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
        None => Some(future.await),
    }
}

impl EventQueue {
    pub(crate) fn new(listener: EventListener) -> Self {
        EventQueue {
            queue: listener.into(),
        }
    }

    pub(crate) fn queue(&self) -> &qemu_qmp::EventQueue {
        &self.queue
    }

    /// The oldest event not yet handed out, waiting for one as `wait` says.
    pub(crate) async fn pull(&self, wait: Wait) -> Option<Event> {
        match wait {
            Wait::No => self.queue.try_recv(),
            Wait::Forever => self.queue.recv().await.ok(),
            Wait::Timeout(w) => within(w, self.queue.recv()).await?.ok(),
        }
    }

    /// Every event not yet handed out; if there is none, wait up to `wait` for one
    /// (and then take whatever else has arrived with it).
    pub(crate) async fn pull_all(&self, wait: Wait) -> Vec<Event> {
        let wait = match wait {
            Wait::No => return self.queue.take_all(),
            Wait::Forever => None,
            Wait::Timeout(w) => Some(w),
        };
        match wait {
            None => self.queue.recv_all().await.unwrap_or_default(),
            Some(w) => match within(w, self.queue.recv_all()).await {
                Some(Ok(events)) => events,
                // Something may have been queued since the wait gave up.
                Some(Err(_)) | None => self.queue.take_all(),
            },
        }
    }

    /// Forget every event received so far.
    pub(crate) fn clear(&self) {
        self.queue.take_all();
    }

    /// The first event that matches one of `alternatives` (name and pattern), kept
    /// ones first, waiting up to `timeout`. Events passed over stay queued, in order;
    /// concurrent waits each see every event that arrives while they wait (see
    /// [`qemu_qmp::EventQueue::wait_for`]).
    pub(crate) async fn wait_for(
        &self,
        alternatives: &[(&str, Option<Value>)],
        timeout: Duration,
    ) -> Result<Event, NoEvent> {
        let wanted: Vec<(String, Option<Value>)> = alternatives
            .iter()
            .map(|(name, pattern)| ((*name).to_owned(), pattern.clone()))
            .collect();
        let matches = move |e: &Event| {
            wanted
                .iter()
                .any(|(name, pattern)| event_matches(e, name, pattern.as_ref()))
        };
        self.wait_with(matches, timeout).await
    }

    /// The first event `matcher` accepts, as [`wait_for`](Self::wait_for).
    pub(crate) async fn wait_with<F>(&self, matcher: F, timeout: Duration) -> Result<Event, NoEvent>
    where
        F: Fn(&Event) -> bool + Send + Sync + 'static,
    {
        match within(timeout, self.queue.wait_for(matcher)).await {
            Some(Ok(e)) => Ok(e),
            Some(Err(_)) => Err(NoEvent::Closed),
            None => Err(NoEvent::Timeout),
        }
    }
}

/// Describe what a wait is for, for error messages.
pub(crate) fn describe(alternatives: &[(&str, Option<Value>)]) -> String {
    let parts: Vec<String> = alternatives
        .iter()
        .map(|(name, pattern)| match pattern {
            None | Some(Value::Null) => format!("event {name}"),
            Some(p) => format!("event {name} matching {p}"),
        })
        .collect();
    if parts.is_empty() {
        "an event (none was asked for)".to_owned()
    } else {
        parts.join(" or ")
    }
}
