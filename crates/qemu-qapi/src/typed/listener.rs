//! [`TypedListener`]: events decoded as generated types.

use std::marker::PhantomData;
use std::time::Duration;

use qemu_qmp::{EventListener, RecvError, RecvTimeoutError};

use super::FromEvent;

/// Why [`TypedListener`] returned no event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// No event came: the listener lagged, the session ended, or the wait
    /// ran out.
    #[error(transparent)]
    Recv(#[from] RecvTimeoutError),
    /// An event came whose data does not fit its type; the event is kept.
    #[error("event {}: the data does not fit its type: {source}", event.name())]
    Decode {
        /// The event as received.
        event: qemu_qmp::Event,
        /// What did not fit.
        source: serde_json::Error,
    },
}

impl From<RecvError> for EventError {
    fn from(e: RecvError) -> EventError {
        EventError::Recv(e.into())
    }
}

impl EventError {
    /// True if the wait ran out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, EventError::Recv(RecvTimeoutError::Timeout(_)))
    }

    /// True if the session ended.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, EventError::Recv(RecvTimeoutError::Closed(_)))
    }
}

/// Receives events decoded as `E`: one event's data type, or any event.
/// Made by [`TypedClient::listen`](super::TypedClient::listen); an
/// [`EventListener`] underneath, with its buffering and its filter.
pub struct TypedListener<E> {
    inner: EventListener,
    _decoded: PhantomData<fn() -> E>,
}

impl<E: FromEvent> TypedListener<E> {
    /// Decodes the events of `inner` (which should only receive events `E`
    /// decodes).
    pub fn new(inner: EventListener) -> TypedListener<E> {
        TypedListener {
            inner,
            _decoded: PhantomData,
        }
    }

    /// The next event, decoded, with the event as received (for its
    /// timestamp).
    pub async fn recv_event(&mut self) -> Result<(E, qemu_qmp::Event), EventError> {
        let event = self.inner.recv().await?;
        decode(event)
    }

    /// The next event, decoded.
    pub async fn recv(&mut self) -> Result<E, EventError> {
        Ok(self.recv_event().await?.0)
    }

    /// The next event, decoded, waiting at most `timeout`.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<E, EventError> {
        let event = self.inner.recv_timeout(timeout).await?;
        Ok(decode(event)?.0)
    }

    /// The listener underneath.
    pub fn inner(&mut self) -> &mut EventListener {
        &mut self.inner
    }
}

/// The event, decoded (also for the blocking listener).
pub(crate) fn decode<E: FromEvent>(
    event: qemu_qmp::Event,
) -> Result<(E, qemu_qmp::Event), EventError> {
    match E::from_event(&event) {
        Ok(e) => Ok((e, event)),
        Err(source) => Err(EventError::Decode { event, source }),
    }
}
