//! The async QMP client (Python: `QMPClient`).
//!
//! # How it works
//!
//! - [`builder`]: [`Config`] and [`ClientBuilder`], the settings.
//! - this module: the [`Client`] handle, its state (idle, listening, connecting, or a
//!   session) and the guards that set it back to idle when a connect or a disconnect
//!   ends half-way.
//! - [`handshake`]: on a fresh stream, `Client::establish` reads the greeting (passing
//!   any event that comes first to the listeners), negotiates capabilities or
//!   resynchronises with the guest agent, then starts a session. [`MessageReader`]
//!   reads whole messages, for the handshake and then for the session's reader.
//! - [`session`]: a [`Session`] owns the connection once it is set up. Its reader task
//!   routes every message (a reply to the command waiting for its id, an event to
//!   every listener); commands are written from the caller's task, or by the flusher
//!   task when the socket cannot take them at once. The ids on the wire are the
//!   library's own ([`Pending`](session::Pending)).
//! - [`request`]: [`Request`], a command with options, sent through the session, and
//!   the turning of its reply into the `return` value or an error.
//!
//! [`MessageReader`]: handshake::MessageReader
//! [`Session`]: session::Session

use std::fmt;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tracing::debug;

use crate::address::ToAddress;
use crate::error::{Error, Result};
use crate::events::{EventListener, ListenOptions, Registry};
use crate::framing::JsonObject;
use crate::message::{Greeting, Response};
use crate::runstate::Runstate;
use crate::transport::{dup_fd, Listener, Stream};

mod builder;
mod handshake;
mod request;
mod session;

pub use builder::{ClientBuilder, Config};
pub use request::Request;
use session::Session;

/// An async QMP client (Python: `QMPClient`).
///
/// Cheap to clone: clones share one connection, and any number of commands may be in
/// flight at once from any of them. When the last clone is dropped, the connection is
/// closed and its tasks stop.
///
/// ```no_run
/// # async fn f() -> qemu_qmp::Result<()> {
/// use qemu_qmp::Client;
/// let qmp = Client::connect("/run/vm1/qmp.sock").await?;
/// let status = qmp.execute("query-status", None).await?;
/// println!("{}", status["status"]);
/// let mut stops = qmp.listen(["STOP", "RESUME"]);
/// qmp.execute("stop", None).await?;
/// let event = stops.recv().await;
/// qmp.disconnect().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    label: Arc<str>,
    state: Arc<watch::Sender<Runstate>>,
    registry: Arc<Registry>,
    slot: Mutex<Slot>,
}

enum Slot {
    Idle,
    /// A connect or accept is in progress.
    Connecting,
    /// `start_server` has bound a listener; `accept` has not been called yet.
    Listening(Listener),
    Session(Arc<Session>),
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.inner.config.name)
            .field("runstate", &self.runstate())
            .finish()
    }
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    /// An idle client with default settings.
    pub fn new() -> Client {
        Client::with_config(Config::default())
    }

    /// Settings for a new client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    fn with_config(config: Config) -> Client {
        let label: Arc<str> = config.name.as_deref().unwrap_or("qmp").into();
        Client {
            inner: Arc::new(Inner {
                config,
                label,
                state: Arc::new(watch::channel(Runstate::Idle).0),
                registry: Arc::new(Registry::default()),
                slot: Mutex::new(Slot::Idle),
            }),
        }
    }

    /// Connect to a QMP server with default settings: read the greeting, negotiate
    /// capabilities (enabling OOB when offered), and return the running client.
    pub async fn connect(address: impl ToAddress) -> Result<Client> {
        Client::builder().connect(address).await
    }

    /// The connection's name, as given to [`ClientBuilder::name`].
    pub fn name(&self) -> Option<&str> {
        self.inner.config.name.as_deref()
    }

    /// The current run state.
    pub fn runstate(&self) -> Runstate {
        *self.inner.state.borrow()
    }

    /// Wait for the next change of run state and return the new state.
    pub async fn runstate_changed(&self) -> Runstate {
        let mut rx = self.inner.state.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we wait.
        let _ = rx.changed().await;
        let s = *rx.borrow();
        s
    }

    /// A watch on the run state, for callers that want every change.
    pub fn runstate_watch(&self) -> watch::Receiver<Runstate> {
        self.inner.state.subscribe()
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.inner.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn session(&self) -> Result<Arc<Session>> {
        match &*self.slot() {
            Slot::Session(s) => Ok(s.clone()),
            _ => Err(self.runstate().state_error(Runstate::Running)),
        }
    }

    /// The greeting of the current session: None when not connected, or when the
    /// greeting was not awaited and none has come (the guest agent sends none; a
    /// QEMU monitor greets every client, and a greeting that was not awaited is
    /// taken as the session's when it comes, quietly).
    pub fn greeting(&self) -> Option<Greeting> {
        self.session().ok().and_then(|s| s.greeting.get().cloned())
    }

    /// True if out-of-band execution was negotiated on the current session.
    pub fn oob_enabled(&self) -> bool {
        self.session().map(|s| s.oob).unwrap_or(false)
    }

    /// What ended the current session, if it has ended: `None` while it runs or after
    /// a deliberate `disconnect()`. Reading it does not change the state.
    pub fn disconnect_cause(&self) -> Option<Error> {
        self.session().ok().and_then(|s| s.cause())
    }

    /// Wait until the current session ends (the peer hangs up, a protocol error, or
    /// `disconnect()`), returning what ended it. Returns at once when not connected.
    pub async fn wait_disconnected(&self) -> Option<Error> {
        let Ok(s) = self.session() else { return None };
        s.wait_ended().await;
        s.cause()
    }

    // ---- connecting -------------------------------------------------------------

    /// Move from Idle to Connecting, or say why not.
    fn begin_connecting(&self) -> Result<ConnectingGuard> {
        let mut slot = self.slot();
        if !matches!(*slot, Slot::Idle) {
            return Err(self.runstate().state_error(Runstate::Idle));
        }
        *slot = Slot::Connecting;
        self.inner.state.send_replace(Runstate::Connecting);
        Ok(ConnectingGuard {
            client: self.clone(),
            armed: true,
        })
    }

    /// Connect this (idle) client to a QMP server. On failure the client is idle
    /// again, and the error says which step failed.
    pub async fn connect_to(&self, address: impl ToAddress) -> Result<()> {
        let address = address.to_address()?;
        let guard = self.begin_connecting()?;
        let target = address.to_string();
        let deadline = self.inner.config.connect_timeout;
        let fut = async {
            debug!(name = %self.inner.label, "connecting to {target}");
            let stream = Stream::connect(address).await.map_err(|e| Error::Connect {
                target: target.clone(),
                source: Arc::new(e),
            })?;
            self.establish(stream).await
        };
        let session = match deadline {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| Error::timeout(format!("connecting to {target}"), t))??,
            None => fut.await?,
        };
        guard.succeed(session);
        Ok(())
    }

    /// Listen on an address for a QMP server to connect to us (server mode: QEMU is
    /// started with a client-mode `-qmp` socket). Returns once listening; call
    /// [`accept`](Self::accept) to wait for the peer. A Unix socket file created here
    /// is removed after the accept, on `disconnect()`, and when the client is dropped.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with I/O enabled, like tokio's own listeners.
    pub fn start_server(&self, address: impl ToAddress) -> Result<()> {
        let address = address.to_address()?;
        let guard = self.begin_connecting()?;
        let listener = Listener::bind(&address).map_err(|e| Error::Accept {
            target: address.to_string(),
            source: Arc::new(e),
        })?;
        self.listening(guard, listener);
        Ok(())
    }

    /// Like [`start_server`](Self::start_server), on a listening Unix socket made by
    /// the caller (its file is left for the caller to remove).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with I/O enabled, like tokio's own listeners.
    pub fn start_server_with_listener(
        &self,
        listener: std::os::unix::net::UnixListener,
    ) -> Result<()> {
        let guard = self.begin_connecting()?;
        let l = Listener::from_std_unix(listener).map_err(|e| Error::Accept {
            target: "unix listener".into(),
            source: Arc::new(e),
        })?;
        self.listening(guard, l);
        Ok(())
    }

    /// Like [`start_server`](Self::start_server), on a listening TCP socket made by the
    /// caller.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with I/O enabled, like tokio's own listeners.
    pub fn start_server_with_tcp_listener(&self, listener: std::net::TcpListener) -> Result<()> {
        let guard = self.begin_connecting()?;
        let l = Listener::from_std_tcp(listener).map_err(|e| Error::Accept {
            target: "tcp listener".into(),
            source: Arc::new(e),
        })?;
        self.listening(guard, l);
        Ok(())
    }

    fn listening(&self, mut guard: ConnectingGuard, listener: Listener) {
        debug!(name = %self.inner.label, "listening on {}", listener.describe());
        *self.slot() = Slot::Listening(listener);
        guard.armed = false;
    }

    /// The local address of a TCP server started with port 0.
    pub fn server_tcp_address(&self) -> Option<std::net::SocketAddr> {
        match &*self.slot() {
            Slot::Listening(l) => l.local_tcp_addr(),
            _ => None,
        }
    }

    /// Wait (at most `timeout`, if given) for the peer to connect to the server started
    /// by [`start_server`](Self::start_server), then read its greeting and negotiate.
    /// One connection is accepted; the listener is closed afterwards. On failure or
    /// timeout the client is idle again.
    pub async fn accept(&self, timeout: Option<Duration>) -> Result<()> {
        let listener = {
            let mut slot = self.slot();
            match std::mem::replace(&mut *slot, Slot::Connecting) {
                Slot::Listening(l) => l,
                other => {
                    *slot = other;
                    let state = self.runstate();
                    return Err(
                        if state == Runstate::Idle || state == Runstate::Connecting {
                            Error::InvalidRequest("accept() needs start_server() first".into())
                        } else {
                            state.state_error(Runstate::Connecting)
                        },
                    );
                }
            }
        };
        let guard = ConnectingGuard {
            client: self.clone(),
            armed: true,
        };
        let target = listener.describe();
        let fut = async {
            let stream = listener.accept().await.map_err(|e| Error::Accept {
                target: target.clone(),
                source: Arc::new(e),
            })?;
            debug!(name = %self.inner.label, "accepted a connection on {target}");
            drop(listener);
            self.establish(stream).await
        };
        let session = match timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| Error::timeout(format!("a connection on {target}"), t))??,
            None => fut.await?,
        };
        guard.succeed(session);
        Ok(())
    }

    /// [`start_server`](Self::start_server) then [`accept`](Self::accept).
    pub async fn start_server_and_accept(
        &self,
        address: impl ToAddress,
        timeout: Option<Duration>,
    ) -> Result<()> {
        self.start_server(address)?;
        self.accept(timeout).await
    }

    /// End the session (Python: `disconnect()`): flush what is queued, close the
    /// connection, fail every command still waiting with [`Error::Disconnected`], end
    /// every listener's stream, and return to Idle.
    ///
    /// Returns the error that ended the session, if the peer or the protocol ended it
    /// with one before this call. A peer that simply hung up is not an error. Calling
    /// it when idle is harmless.
    pub async fn disconnect(&self) -> Result<()> {
        let prev = {
            let mut slot = self.slot();
            if matches!(*slot, Slot::Connecting) {
                return Err(Runstate::Connecting.state_error(Runstate::Running));
            }
            std::mem::replace(&mut *slot, Slot::Connecting)
        };
        self.inner.state.send_replace(Runstate::Disconnecting);
        // Back to Idle however this ends, even if this future is dropped half-way
        // (then the session is closed at once instead of gracefully).
        let mut guard = DisconnectGuard {
            client: self,
            session: None,
        };
        match prev {
            Slot::Session(s) => {
                guard.session = Some(s.clone());
                let cause = s.close().await;
                guard.session = None;
                match cause {
                    None | Some(Error::ConnectionClosed { mid_message: false }) => Ok(()),
                    Some(e) => Err(e),
                }
            }
            // Dropping the listener closes it and removes its socket file.
            Slot::Listening(_) | Slot::Idle | Slot::Connecting => Ok(()),
        }
    }

    // ---- events ----------------------------------------------------------------

    /// A listener for the named events (no names: every event).
    ///
    /// Create it before the command whose events you want, so none is missed.
    pub fn listen<I, S>(&self, names: I) -> EventListener
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.listen_with(ListenOptions::new().names(names))
    }

    /// A listener for every event.
    pub fn listen_all(&self) -> EventListener {
        self.listen_with(ListenOptions::new())
    }

    /// A listener with names, a filter and a capacity of your choice.
    pub fn listen_with(&self, options: ListenOptions) -> EventListener {
        self.inner.registry.register(options)
    }

    // ---- commands --------------------------------------------------------------

    /// Execute a command and return its `return` value (Python: `execute()`).
    ///
    /// An error reply becomes [`Error::Execute`], which keeps the QMP error class and
    /// description, the request and the reply. Dropping the future is safe: the reply
    /// is dropped (and logged) when it arrives.
    pub async fn execute(&self, command: &str, arguments: Option<Value>) -> Result<Value> {
        self.request(command).arguments_opt(arguments).send().await
    }

    /// Execute a command out of band (`exec-oob`), bypassing the in-band queue.
    pub async fn execute_oob(&self, command: &str, arguments: Option<Value>) -> Result<Value> {
        self.request(command)
            .arguments_opt(arguments)
            .oob()
            .send()
            .await
    }

    /// A command with options: arguments, a timeout, OOB, file descriptors.
    ///
    /// ```no_run
    /// # async fn f(qmp: qemu_qmp::Client, file: std::fs::File) -> qemu_qmp::Result<()> {
    /// use std::time::Duration;
    /// qmp.request("getfd")
    ///     .arg("fdname", "disk0")
    ///     .fd(&file)
    ///     .timeout(Duration::from_secs(5))
    ///     .send()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn request(&self, command: &str) -> Request<'_> {
        Request::new(self, command)
    }

    /// Execute a request object as given and return the whole reply, error replies
    /// included (Python: `_raw()` / legacy `cmd_obj()`). For tools such as a shell.
    ///
    /// Any `id` works, whatever else is in flight: the id in the message comes back in
    /// the reply, and no other command's id can collide with it, not even the same id
    /// used by two requests at once. The library sends its own short id in its place
    /// (the smallest number free on this connection) and, when the reply arrives, puts
    /// the caller's id back where QEMU echoed its own. Without an `id`, the reply has
    /// none either (the library's id, if it needed one, is removed). So QEMU never
    /// sees the caller's id; everything else is sent as given.
    ///
    /// The deadline for the reply is the client's
    /// [`command_timeout`](ClientBuilder::command_timeout), as for
    /// [`execute`](Self::execute); for another, wrap the call in
    /// [`tokio::time::timeout`].
    ///
    /// ```no_run
    /// # async fn f(qmp: qemu_qmp::Client) -> qemu_qmp::Result<()> {
    /// use qemu_qmp::{json, Value};
    /// let Value::Object(msg) = json!({"execute": "query-status", "id": "mine"}) else { unreachable!() };
    /// let reply = qmp.execute_raw(msg).await?;
    /// assert_eq!(reply.id(), Some(&json!("mine")));
    /// # Ok(()) }
    /// ```
    pub async fn execute_raw(&self, message: JsonObject) -> Result<Response> {
        self.execute_raw_within(message, self.inner.config.command_timeout)
            .await
    }

    /// [`execute_raw`](Self::execute_raw) with a deadline of the caller's (`None`:
    /// none), for the blocking client, whose deadline can change.
    pub(crate) async fn execute_raw_within(
        &self,
        message: JsonObject,
        timeout: Option<Duration>,
    ) -> Result<Response> {
        let session = self.session()?;
        session.call(message, Vec::new(), timeout).await
    }

    /// Send a file descriptor with `SCM_RIGHTS` alongside a single space, the way
    /// Python's `send_fd_scm()` does; a following `getfd` or `add-fd` picks it up.
    /// Needs a Unix socket. The caller keeps its descriptor.
    pub fn send_fd_scm(&self, fd: impl AsFd) -> Result<()> {
        let session = self.session()?;
        let dup = dup_fd(fd.as_fd()).map_err(|e| Error::system("duplicating a descriptor", e))?;
        session
            .writer
            .send(b" ".to_vec(), vec![dup], None)
            .map_err(|e| session.send_error(None, e))
    }

    /// How many commands are waiting for replies (late replies to abandoned commands
    /// included).
    pub fn pending_commands(&self) -> usize {
        self.session().map(|s| s.pending().len()).unwrap_or(0)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let slot = std::mem::replace(
            self.slot.get_mut().unwrap_or_else(|p| p.into_inner()),
            Slot::Idle,
        );
        if let Slot::Session(s) = slot {
            s.abort();
        }
    }
}

/// Ends a `disconnect()`: the client is Idle afterwards, and a session whose graceful
/// close was interrupted is closed at once.
struct DisconnectGuard<'a> {
    client: &'a Client,
    session: Option<Arc<Session>>,
}

impl Drop for DisconnectGuard<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            s.abort();
        }
        *self.client.slot() = Slot::Idle;
        self.client.inner.state.send_replace(Runstate::Idle);
    }
}

/// Sets the client back to Idle unless the connection attempt succeeded; this also
/// covers a connect future that is dropped half-way.
struct ConnectingGuard {
    client: Client,
    armed: bool,
}

impl ConnectingGuard {
    fn succeed(mut self, session: Arc<Session>) {
        self.armed = false;
        *self.client.slot() = Slot::Session(session);
        self.client.inner.state.send_replace(Runstate::Running);
    }
}

impl Drop for ConnectingGuard {
    fn drop(&mut self) {
        if self.armed {
            *self.client.slot() = Slot::Idle;
            self.client
                .inner
                .state
                .send_replace(Runstate::Disconnecting);
            self.client.inner.state.send_replace(Runstate::Idle);
        }
    }
}
