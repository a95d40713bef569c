//! Typed calls and events through a blocking client
//! ([`qemu_qmp::blocking::Client`]), for programs without an async runtime.
//!
//! The names and meanings are those of the async [`TypedClient`](super::TypedClient)
//! and [`TypedListener`](super::TypedListener); the gate (the check against the
//! connected QEMU's schema, [`CallError::Unsupported`]) and the decoding are the
//! same code. Waits follow [`qemu_qmp::blocking`]: an `Option<Duration>` timeout,
//! `None` for no limit; like every blocking call, they panic inside an async
//! runtime (see [there](qemu_qmp::blocking#inside-an-async-runtime)).
//!
//! ```no_run
//! # fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use qemu_qapi::typed::blocking::TypedClient;
//!
//! let qmp = TypedClient::new(qemu_qmp::blocking::Client::connect("/run/qemu/qmp.sock")?);
//! // With the generated types (crate `qemu-qapi-types`):
//! // let mut stops = qmp.listen::<StopEvent>();
//! // qmp.call(Stop::new())?;
//! // let stop = stops.recv(Some(Duration::from_secs(5)))?;
//! // assert!(!qmp.call(QueryStatus::new())?.running);
//! let version = qmp.schema()?.version().cloned();
//! # Ok(()) }
//! ```

use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use qemu_qmp::RecvTimeoutError;
use serde_json::Value;

use super::client::{check, decode, encode};
use super::listener::decode as decode_event;
use super::{CallError, Command, EventError, FromEvent};
use crate::{FetchError, Schema};

/// A [`qemu_qmp::blocking::Client`] that makes typed calls, each checked
/// against the connected QEMU's schema before it is sent: the blocking
/// [`TypedClient`](super::TypedClient).
///
/// The schema is fetched on the first typed call (or [`TypedClient::schema`])
/// and kept for the connection. Hand-written JSON and the client's event
/// queue remain available through [`TypedClient::client`] and
/// [`TypedClient::client_mut`].
pub struct TypedClient {
    client: qemu_qmp::blocking::Client,
    schema: OnceLock<Arc<Schema>>,
    /// Held while the schema is fetched, so that it is fetched once.
    fetching: Mutex<()>,
}

impl std::fmt::Debug for TypedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedClient")
            .field("client", &self.client)
            .field(
                "schema_version",
                &self.schema.get().map(|s| s.version().cloned()),
            )
            .finish()
    }
}

impl TypedClient {
    /// Wraps a connected client.
    pub fn new(client: qemu_qmp::blocking::Client) -> TypedClient {
        TypedClient {
            client,
            schema: OnceLock::new(),
            fetching: Mutex::new(()),
        }
    }

    /// Wraps a connected client whose schema is already known (fetched
    /// before, or a recording of the same QEMU binary).
    pub fn with_schema(client: qemu_qmp::blocking::Client, schema: Arc<Schema>) -> TypedClient {
        TypedClient {
            client,
            schema: OnceLock::from(schema),
            fetching: Mutex::new(()),
        }
    }

    /// The client, for everything untyped.
    pub fn client(&self) -> &qemu_qmp::blocking::Client {
        &self.client
    }

    /// The client, for what needs it mutably: its event queue
    /// ([`pull_event`](qemu_qmp::blocking::Client::pull_event)), its
    /// [timeout](qemu_qmp::blocking::Client::set_timeout).
    pub fn client_mut(&mut self) -> &mut qemu_qmp::blocking::Client {
        &mut self.client
    }

    /// The client, unwrapped (to [`close`](qemu_qmp::blocking::Client::close) it).
    pub fn into_client(self) -> qemu_qmp::blocking::Client {
        self.client
    }

    /// The connected QEMU's schema, fetched on first use (through
    /// [`Schema::fetch_blocking`], with the client's command timeout). A
    /// failed fetch is not kept: the next call tries again.
    pub fn schema(&self) -> Result<&Arc<Schema>, FetchError> {
        if let Some(schema) = self.schema.get() {
            return Ok(schema);
        }
        let _fetching = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(schema) = self.schema.get() {
            return Ok(schema);
        }
        let schema = Arc::new(Schema::fetch_blocking(&self.client)?);
        Ok(self.schema.get_or_init(|| schema))
    }

    /// Runs `command` and decodes what it returns, after checking it
    /// against the connected QEMU's schema ([`CallError::Unsupported`]).
    pub fn call<C: Command>(&self, command: C) -> Result<C::Returns, CallError> {
        let arguments = encode(&command)?;
        check(self.schema()?, C::NAME, arguments.as_ref())?;
        self.send::<C>(arguments)
    }

    /// Runs `command` without the schema check: for a QEMU whose schema
    /// cannot be asked, or a command you know better about.
    pub fn call_unchecked<C: Command>(&self, command: C) -> Result<C::Returns, CallError> {
        let arguments = encode(&command)?;
        self.send::<C>(arguments)
    }

    fn send<C: Command>(&self, arguments: Option<Value>) -> Result<C::Returns, CallError> {
        let value = self.client.execute(C::NAME, arguments)?;
        decode::<C>(value)
    }

    /// Hand-written JSON, checked against the connected QEMU's schema
    /// before it is sent, as the async
    /// [`TypedClient::execute`](super::TypedClient::execute).
    pub fn execute(&self, name: &str, arguments: Option<Value>) -> Result<Value, CallError> {
        check(self.schema()?, name, arguments.as_ref())?;
        Ok(self.client.execute(name, arguments)?)
    }

    /// Checks `command` against the connected QEMU's schema without
    /// sending it.
    pub fn check<C: Command>(&self, command: &C) -> Result<(), CallError> {
        let arguments = encode(command)?;
        check(self.schema()?, C::NAME, arguments.as_ref())
    }

    /// A listener for events decoded as `E`: one event's data type (only
    /// that event is received) or the generated `Event` enum (every event).
    /// Create it before the command whose events you want.
    pub fn listen<E: FromEvent>(&self) -> TypedListener<E> {
        let inner = match E::names() {
            Some(names) => self.client.listen(names.iter().copied()),
            // No names: every event.
            None => self.client.listen(std::iter::empty::<String>()),
        };
        TypedListener::new(inner)
    }
}

/// Receives events decoded as `E`, blocking: the blocking
/// [`TypedListener`](super::TypedListener). Made by [`TypedClient::listen`];
/// a [`qemu_qmp::blocking::EventListener`] underneath, with its buffering and
/// its filter. It may be moved to another thread.
pub struct TypedListener<E> {
    inner: qemu_qmp::blocking::EventListener,
    _decoded: PhantomData<fn() -> E>,
}

impl<E> std::fmt::Debug for TypedListener<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedListener")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<E: FromEvent> TypedListener<E> {
    /// Decodes the events of `inner` (which should only receive events `E`
    /// decodes).
    pub fn new(inner: qemu_qmp::blocking::EventListener) -> TypedListener<E> {
        TypedListener {
            inner,
            _decoded: PhantomData,
        }
    }

    /// The next event, decoded, with the event as received (for its
    /// timestamp), waiting at most `timeout` (`None`: no limit).
    ///
    /// No event is [`EventError::Recv`]: [`RecvTimeoutError::Timeout`] when
    /// none came in time ([`EventError::is_timeout`]),
    /// [`RecvTimeoutError::Closed`] once the session has ended and none is
    /// queued ([`EventError::is_disconnected`]).
    pub fn recv_event(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<(E, qemu_qmp::Event), EventError> {
        let event = self.inner.recv(timeout).map_err(no_event)?;
        decode_event(event)
    }

    /// The next event, decoded, waiting at most `timeout` (`None`: no
    /// limit); see [`recv_event`](Self::recv_event).
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<E, EventError> {
        Ok(self.recv_event(timeout)?.0)
    }

    /// The next event, decoded, waiting at most `timeout`: `recv(Some(timeout))`,
    /// under the async listener's name.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<E, EventError> {
        self.recv(Some(timeout))
    }

    /// The next event if one is queued, decoded, without waiting.
    pub fn try_recv(&mut self) -> Option<Result<E, EventError>> {
        let event = self.inner.try_recv()?;
        Some(decode_event(event).map(|(e, _)| e))
    }

    /// The listener underneath.
    pub fn inner(&mut self) -> &mut qemu_qmp::blocking::EventListener {
        &mut self.inner
    }
}

/// The blocking listener's error as the async listener's, so that both
/// listeners fail alike.
fn no_event(e: qemu_qmp::Error) -> EventError {
    let e = match e {
        qemu_qmp::Error::Timeout { timeout, .. } => RecvTimeoutError::Timeout(timeout),
        qemu_qmp::Error::Disconnected { cause, .. } => RecvTimeoutError::Closed(cause),
        // The blocking listener fails with no other error.
        other => RecvTimeoutError::Closed(Some(Box::new(other))),
    };
    EventError::Recv(e)
}
