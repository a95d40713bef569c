//! The machine's event queue (Python: `QEMUMachine._events` plus the QMP client's
//! event queue).
//!
//! One listener for all events is registered on the QMP client before the
//! connection is made, so no event is missed, not even one sent during capability
//! negotiation. Events that a wait passes over are kept, in order, for later calls.

use std::collections::VecDeque;

use qemu_qmp::{Event, EventListener, RecvError, TryRecvError};
use serde_json::Value;
use tokio::time::Instant;
use tracing::warn;

use crate::matching::event_matches;

/// How many events the listener buffers before the oldest are dropped (with a
/// warning) if nobody reads them.
pub(crate) const EVENT_CAPACITY: usize = 16 * 1024;

#[derive(Debug)]
pub(crate) struct EventQueue {
    listener: EventListener,
    /// Events taken from the listener but not yet handed out.
    kept: VecDeque<Event>,
}

/// How a wait on the queue ended without an event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoEvent {
    /// The deadline passed.
    Timeout,
    /// The session ended; no more events can come.
    Closed,
}

impl EventQueue {
    pub(crate) fn new(listener: EventListener) -> Self {
        EventQueue {
            listener,
            kept: VecDeque::new(),
        }
    }

    /// The next event from the listener, waiting until the deadline (`None`: do not
    /// wait).
    async fn recv(&mut self, deadline: Option<Instant>) -> Result<Event, NoEvent> {
        loop {
            let r = match deadline {
                None => match self.listener.try_recv() {
                    Ok(e) => Ok(e),
                    Err(TryRecvError::Empty) => return Err(NoEvent::Timeout),
                    Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                    Err(TryRecvError::Closed(c)) => Err(RecvError::Closed(c)),
                },
                Some(d) => match tokio::time::timeout_at(d, self.listener.recv()).await {
                    Ok(r) => r,
                    Err(_) => return Err(NoEvent::Timeout),
                },
            };
            match r {
                Ok(e) => return Ok(e),
                Err(RecvError::Lagged(n)) => {
                    warn!("{n} QMP events were dropped because nobody read them (the queue holds {EVENT_CAPACITY})");
                }
                Err(RecvError::Closed(_)) => return Err(NoEvent::Closed),
                Err(RecvError::Timeout(_)) => return Err(NoEvent::Timeout),
            }
        }
    }

    /// The oldest event not yet handed out, waiting until the deadline for one.
    pub(crate) async fn pull(&mut self, deadline: Option<Instant>) -> Option<Event> {
        if let Some(e) = self.kept.pop_front() {
            return Some(e);
        }
        self.recv(deadline).await.ok()
    }

    /// Every event not yet handed out; if there is none, wait until the deadline for
    /// one (and then take whatever else has arrived with it).
    pub(crate) async fn pull_all(&mut self, deadline: Option<Instant>) -> Vec<Event> {
        let mut out: Vec<Event> = self.kept.drain(..).collect();
        while let Ok(e) = self.recv(None).await {
            out.push(e);
        }
        if out.is_empty() {
            if let Ok(e) = self.recv(deadline).await {
                out.push(e);
                while let Ok(e) = self.recv(None).await {
                    out.push(e);
                }
            }
        }
        out
    }

    /// Forget every event received so far.
    pub(crate) fn clear(&mut self) {
        self.kept.clear();
        self.listener.clear();
    }

    /// The first event that matches one of `alternatives` (name and pattern), kept
    /// ones first. Events passed over stay queued, in order.
    pub(crate) async fn wait_for(
        &mut self,
        alternatives: &[(&str, Option<Value>)],
        deadline: Instant,
    ) -> Result<Event, NoEvent> {
        let matches = |e: &Event| {
            alternatives
                .iter()
                .any(|(name, pattern)| event_matches(e, name, pattern.as_ref()))
        };
        if let Some(i) = self.kept.iter().position(matches) {
            if let Some(e) = self.kept.remove(i) {
                return Ok(e);
            }
        }
        loop {
            let e = self.recv(Some(deadline)).await?;
            if matches(&e) {
                return Ok(e);
            }
            self.kept.push_back(e);
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
