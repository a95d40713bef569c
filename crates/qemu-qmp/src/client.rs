//! The async QMP client (Python: `QMPClient`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, trace, warn, Instrument};

use crate::address::ToAddress;
use crate::error::{Error, ExecuteError, ProtocolError, Result};
use crate::events::{EventListener, ListenOptions, Registry};
use crate::framing::{Decoder, JsonObject, DEFAULT_MAX_MESSAGE_SIZE};
use crate::message::{self, request_command, Greeting, Message, Response};
use crate::runstate::Runstate;
use crate::transport::{dup_fd, Listener, Rejected, SendError, Stream, Writer, SCM_MAX_FD};

/// QEMU queues at most this many in-band commands per monitor once OOB is on; when the
/// queue is full it stops reading, and an `exec-oob` could not get through.
const QEMU_INBAND_QUEUE: usize = 8;

/// How long `disconnect()` waits for queued writes to drain before closing anyway.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Settings of a [`Client`]; build one with [`Client::builder`].
#[derive(Debug, Clone)]
pub struct Config {
    name: Option<String>,
    max_message_size: usize,
    await_greeting: bool,
    negotiate: bool,
    enable_oob: bool,
    agent_sync: bool,
    connect_timeout: Option<Duration>,
    command_timeout: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            await_greeting: true,
            negotiate: true,
            enable_oob: true,
            agent_sync: false,
            connect_timeout: Some(Duration::from_secs(30)),
            command_timeout: None,
        }
    }
}

/// Builds a [`Client`].
///
/// ```no_run
/// # async fn f() -> qemu_qmp::Result<()> {
/// use std::time::Duration;
/// let qmp = qemu_qmp::Client::builder()
///     .name("vm1")
///     .command_timeout(Duration::from_secs(10))
///     .connect("/run/vm1/qmp.sock")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct ClientBuilder {
    config: Config,
}

impl ClientBuilder {
    /// A name for the connection, used in every log line (Python: `nickname`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = Some(name.into());
        self
    }

    /// The largest message accepted from the peer (default 10 MiB). A larger one ends
    /// the session with [`ProtocolError::TooLarge`].
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.max_message_size = bytes.max(64);
        self
    }

    /// Wait for the greeting when connecting (default true). Turn off, together with
    /// [`negotiate`](Self::negotiate), for the guest agent, which sends none.
    pub fn await_greeting(mut self, yes: bool) -> Self {
        self.config.await_greeting = yes;
        self
    }

    /// Send `qmp_capabilities` when connecting (default true; implies awaiting the
    /// greeting).
    pub fn negotiate(mut self, yes: bool) -> Self {
        self.config.negotiate = yes;
        self
    }

    /// Speak the guest agent's dialect (`qemu-ga`): no greeting, no negotiation, and
    /// on connect the `guest-sync-delimited` handshake with a `0xFF` marker, which
    /// discards whatever stale bytes or replies a previous client left in the channel.
    pub fn guest_agent(mut self) -> Self {
        self.config.await_greeting = false;
        self.config.negotiate = false;
        self.config.agent_sync = true;
        self
    }

    /// Enable out-of-band execution when the server offers it (default true).
    pub fn enable_oob(mut self, yes: bool) -> Self {
        self.config.enable_oob = yes;
        self
    }

    /// One deadline for connecting, reading the greeting and negotiating (default 30 s;
    /// `None` waits for ever, still cancellable by dropping the future).
    pub fn connect_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.connect_timeout = timeout.into();
        self
    }

    /// The default deadline for each command's reply (default: none). A command's own
    /// [`Request::timeout`] overrides it.
    pub fn command_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.command_timeout = timeout.into();
        self
    }

    /// An idle client with these settings.
    pub fn build(self) -> Client {
        Client::with_config(self.config)
    }

    /// Build and connect.
    pub async fn connect(self, address: impl ToAddress) -> Result<Client> {
        let c = self.build();
        c.connect_to(address).await?;
        Ok(c)
    }
}

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
    pub async fn start_server(&self, address: impl ToAddress) -> Result<()> {
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
    pub async fn start_server_with_listener(
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
    pub async fn start_server_with_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> Result<()> {
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
        self.start_server(address).await?;
        self.accept(timeout).await
    }

    /// Greeting and negotiation on a fresh stream, then start the reader and flusher.
    async fn establish(&self, stream: Stream) -> Result<Arc<Session>> {
        let config = &self.inner.config;
        let mut decoder = Decoder::new(config.max_message_size);
        let mut reader = MessageReader::default();
        let mut greeting = None;
        if config.await_greeting || config.negotiate {
            let g = loop {
                let obj = reader
                    .handshake_message(
                        &stream,
                        &mut decoder,
                        "the peer closed the connection before sending a greeting",
                        |reason| Error::Greeting {
                            reason,
                            received: None,
                        },
                    )
                    .await?;
                // QEMU can send an event before its greeting: a monitor leaves the
                // negotiation phase when a client negotiates and only enters it again
                // (and at startup, first enters it) in its "opened" handler, which the
                // socket chardev calls from the monitor's I/O thread just after
                // marking itself connected. An event the main thread emits in between
                // (`RESUME` at startup, say) goes out ahead of the greeting. Deliver
                // it like an event during negotiation, and wait on for the greeting.
                let obj = if obj.contains_key("QMP") {
                    obj
                } else {
                    match message::Event::from_object(obj) {
                        Ok(e) => {
                            debug!(name = %self.inner.label, "event before the greeting: {}", e.name());
                            self.inner.registry.dispatch(&e);
                            self.inner.registry.wake();
                            continue;
                        }
                        Err(obj) => obj,
                    }
                };
                break Greeting::from_object(obj).map_err(|(reason, obj)| Error::Greeting {
                    reason,
                    received: Some(Box::new(obj)),
                })?;
            };
            debug!(name = %self.inner.label, "greeting: QEMU {} capabilities {:?}", g.version.qemu, g.capabilities);
            greeting = Some(g);
        }
        let mut oob = false;
        if config.negotiate {
            let offered = greeting.as_ref().is_some_and(|g| g.has_capability("oob"));
            oob = offered && config.enable_oob;
            let args = if oob {
                serde_json::json!({"enable": ["oob"]})
            } else {
                serde_json::json!({})
            };
            let req = message::make_request("qmp_capabilities", Some(args), false, None);
            write_all(&stream, &message::encode(&req))
                .await
                .map_err(|e| Error::Negotiation {
                    reason: format!("could not send qmp_capabilities: {e}"),
                    received: None,
                })?;
            loop {
                let obj = reader
                    .handshake_message(
                        &stream,
                        &mut decoder,
                        "the peer closed the connection during negotiation",
                        |reason| Error::Negotiation {
                            reason,
                            received: None,
                        },
                    )
                    .await?;
                match Message::classify(obj) {
                    Message::Event(e) => {
                        self.inner.registry.dispatch(&e);
                        self.inner.registry.wake();
                    }
                    Message::Response(r) => {
                        let reason = match r.error_info() {
                            Ok(None) if r.return_value().is_some() => break,
                            Ok(None) => "the reply has no 'return' member".to_owned(),
                            Ok(Some(info)) => format!("the server refused: {info}"),
                            Err(why) => format!("malformed error reply: {why}"),
                        };
                        return Err(Error::Negotiation {
                            reason,
                            received: Some(Box::new(r.raw)),
                        });
                    }
                    Message::Greeting(g) => {
                        return Err(Error::Negotiation {
                            reason: "unexpected second greeting".into(),
                            received: Some(Box::new(g.raw)),
                        })
                    }
                    Message::Request(o) | Message::Other(o) => {
                        return Err(Error::Negotiation {
                            reason: "unexpected message in place of the reply to qmp_capabilities"
                                .into(),
                            received: Some(Box::new(o)),
                        })
                    }
                }
            }
            debug!(name = %self.inner.label, "negotiated (oob {})", if oob { "on" } else { "off" });
        }
        if config.agent_sync {
            agent_sync(&stream, &mut decoder, &mut reader).await?;
            debug!(name = %self.inner.label, "synchronised with the guest agent");
        }
        Ok(Session::start(
            stream,
            decoder,
            reader,
            greeting,
            oob,
            self.inner.label.clone(),
            self.inner.registry.clone(),
            self.inner.state.clone(),
        ))
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
        Request {
            client: self,
            command: command.to_owned(),
            arguments: None,
            oob: false,
            timeout: self.inner.config.command_timeout,
            fds: Vec::new(),
            fd_error: None,
        }
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
    /// ```no_run
    /// # async fn f(qmp: qemu_qmp::Client) -> qemu_qmp::Result<()> {
    /// use qemu_qmp::{json, Value};
    /// let Value::Object(msg) = json!({"execute": "query-status", "id": "mine"}) else { unreachable!() };
    /// let reply = qmp.execute_raw(msg, None).await?;
    /// assert_eq!(reply.id(), Some(&json!("mine")));
    /// # Ok(()) }
    /// ```
    pub async fn execute_raw(
        &self,
        message: JsonObject,
        timeout: Option<Duration>,
    ) -> Result<Response> {
        let session = self.session()?;
        let timeout = timeout.or(self.inner.config.command_timeout);
        session.call(message, Vec::new(), timeout).await
    }

    /// Send a file descriptor with `SCM_RIGHTS` alongside a single space, the way
    /// Python's `send_fd_scm()` does; a following `getfd` or `add-fd` picks it up.
    /// Needs a Unix socket. The caller keeps its descriptor.
    pub fn send_fd_scm(&self, fd: impl AsFd) -> Result<()> {
        let session = self.session()?;
        let dup = dup_fd(fd.as_fd()).map_err(|e| Error::io("duplicating a descriptor", e))?;
        session
            .writer
            .send(b" ".to_vec(), vec![dup], None)
            .map_err(|e| session.send_error(None, e))
    }

    /// How many commands are waiting for replies (late replies to abandoned commands
    /// included).
    pub fn pending_commands(&self) -> usize {
        self.session().map(|s| s.pending().map.len()).unwrap_or(0)
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

/// A command being built; see [`Client::request`].
#[must_use = "a request does nothing until sent"]
pub struct Request<'a> {
    client: &'a Client,
    command: String,
    arguments: Option<Value>,
    oob: bool,
    timeout: Option<Duration>,
    fds: Vec<OwnedFd>,
    fd_error: Option<io::Error>,
}

impl Request<'_> {
    /// Set all arguments at once (a JSON object).
    pub fn arguments(mut self, arguments: Value) -> Self {
        self.arguments = Some(arguments);
        self
    }

    /// Set the arguments if given.
    pub fn arguments_opt(mut self, arguments: Option<Value>) -> Self {
        self.arguments = arguments;
        self
    }

    /// Add one argument.
    pub fn arg(mut self, key: &str, value: impl Into<Value>) -> Self {
        match &mut self.arguments {
            Some(Value::Object(m)) => {
                m.insert(key.to_owned(), value.into());
            }
            _ => {
                let mut m = JsonObject::new();
                m.insert(key.to_owned(), value.into());
                self.arguments = Some(Value::Object(m));
            }
        }
        self
    }

    /// Execute out of band (`exec-oob`).
    pub fn oob(mut self) -> Self {
        self.oob = true;
        self
    }

    /// Deadline for the reply (overrides the client's default).
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = timeout.into();
        self
    }

    /// Send a file descriptor with the command (`SCM_RIGHTS`, Unix sockets only), for
    /// `getfd` and `add-fd`. The descriptor is duplicated; the caller keeps its own.
    pub fn fd(mut self, fd: impl AsFd) -> Self {
        match dup_fd(fd.as_fd()) {
            Ok(d) => self.fds.push(d),
            Err(e) => self.fd_error = Some(e),
        }
        self
    }

    /// Send and return the whole reply, error replies included. The id the library
    /// chose for the request, if it needed one, is removed from the reply, so the
    /// reply reads as QEMU's answer to the command as typed.
    ///
    /// With more file descriptors than one message can pass (253, the kernel's
    /// `SCM_MAX_FD`), fails with [`Error::TooManyFds`] before anything is sent; with
    /// descriptors the kernel refuses to pass, with [`Error::NotSent`]. Either way
    /// only this request fails: the session goes on.
    pub async fn send_raw(self) -> Result<Response> {
        if let Some(e) = self.fd_error {
            return Err(Error::io("duplicating a descriptor", e));
        }
        let session = self.client.session()?;
        let msg = message::make_request(&self.command, self.arguments, self.oob, None);
        session.call(msg, self.fds, self.timeout).await
    }

    /// Send and return the `return` value; an error reply becomes [`Error::Execute`].
    /// Errors about descriptors as for [`send_raw`](Self::send_raw).
    pub async fn send(self) -> Result<Value> {
        if let Some(e) = self.fd_error {
            return Err(Error::io("duplicating a descriptor", e));
        }
        let session = self.client.session()?;
        let msg = message::make_request(&self.command, self.arguments, self.oob, None);
        let (sent, reply) = session
            .call_keep_request(msg, self.fds, self.timeout)
            .await?;
        into_return(sent, reply)
    }
}

/// Put `caller_id` where the library's wire id is in a request or reply, or remove
/// the wire id when the caller gave none. A message without an id (a peer that did
/// not echo one) is left as it is.
fn swap_id(obj: &mut JsonObject, caller_id: Option<Value>) {
    if obj.remove("id").is_some() {
        if let Some(id) = caller_id {
            obj.insert("id".into(), id);
        }
    }
}

/// Turn a reply into the `return` value or the matching error.
pub(crate) fn into_return(sent: JsonObject, reply: Response) -> Result<Value> {
    let command = request_command(&sent).unwrap_or("").to_owned();
    match reply.error_info() {
        Ok(Some(error)) => Err(ExecuteError {
            error,
            sent,
            received: reply.raw,
        }
        .into()),
        Err(reason) => Err(ProtocolError::BadReply {
            command,
            reason,
            received: Box::new(reply.raw),
        }
        .into()),
        Ok(None) => {
            let mut raw = reply.raw;
            match raw.remove("return") {
                Some(v) => Ok(v),
                None => Err(ProtocolError::BadReply {
                    command,
                    reason: "the reply has neither 'return' nor 'error'".into(),
                    received: Box::new(raw),
                }
                .into()),
            }
        }
    }
}

/// Reads whole messages from a stream into a decoder.
#[derive(Default)]
pub(crate) struct MessageReader {
    idle: bool,
}

impl MessageReader {
    /// The next message, `None` at a clean end of stream.
    pub(crate) async fn next(
        &mut self,
        stream: &Stream,
        decoder: &mut Decoder,
    ) -> Result<Option<JsonObject>> {
        self.next_with(stream, decoder, || {}).await
    }

    /// The next message of a handshake step: a hang-up or a protocol error becomes
    /// that step's error, built by `step_error` from a reason.
    async fn handshake_message(
        &mut self,
        stream: &Stream,
        decoder: &mut Decoder,
        closed: &str,
        step_error: impl Fn(String) -> Error,
    ) -> Result<JsonObject> {
        match self.next(stream, decoder).await {
            Ok(Some(obj)) => Ok(obj),
            Ok(None) => Err(step_error(closed.to_owned())),
            Err(Error::Protocol(p)) => Err(step_error(p.to_string())),
            Err(e) => Err(e),
        }
    }

    /// [`next`](Self::next), calling `drained` whenever every buffered message has
    /// been returned and more must be read: the end of a batch.
    pub(crate) async fn next_with(
        &mut self,
        stream: &Stream,
        decoder: &mut Decoder,
        mut drained: impl FnMut(),
    ) -> Result<Option<JsonObject>> {
        loop {
            if let Some(obj) = decoder.decode(self.idle)? {
                return Ok(Some(obj));
            }
            drained();
            match stream.try_read_buf(decoder.buffer_mut()) {
                Ok(0) => {
                    // Let the decoder finish a final message that had no newline.
                    if let Some(obj) = decoder.decode(true)? {
                        return Ok(Some(obj));
                    }
                    if decoder.has_partial() {
                        return Err(Error::ConnectionClosed { mid_message: true });
                    }
                    return Ok(None);
                }
                Ok(_) => self.idle = false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.idle {
                        self.idle = true;
                        continue;
                    }
                    stream
                        .readable()
                        .await
                        .map_err(|e| Error::io("waiting for data", e))?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A reset is how a peer that exits with unread input hangs up.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return if decoder.has_partial() {
                        Err(Error::ConnectionClosed { mid_message: true })
                    } else {
                        Ok(None)
                    };
                }
                Err(e) => return Err(Error::io("reading from the peer", e)),
            }
        }
    }
}

/// The guest agent's resynchronisation: send `0xFF` (which resets the agent's parser)
/// and `guest-sync-delimited` with a fresh id; the agent answers with `0xFF` followed by
/// the reply. Everything before that marker, and any reply with another id, is stale.
async fn agent_sync(
    stream: &Stream,
    decoder: &mut Decoder,
    reader: &mut MessageReader,
) -> Result<()> {
    let fail = |reason: String| Error::Negotiation {
        reason: format!("guest agent synchronisation failed: {reason}"),
        received: None,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let id = (now.subsec_nanos() ^ std::process::id().rotate_left(16)) & 0x7fff_ffff;
    let req = message::make_request(
        "guest-sync-delimited",
        Some(serde_json::json!({ "id": id })),
        false,
        None,
    );
    let mut bytes = vec![0xFF];
    bytes.extend(message::encode(&req));
    write_all(stream, &bytes)
        .await
        .map_err(|e| fail(format!("could not send guest-sync-delimited: {e}")))?;
    let mut raw = Vec::with_capacity(4096);
    loop {
        raw.clear();
        match stream.try_read_buf(&mut raw) {
            Ok(0) => return Err(fail("the agent closed the connection".into())),
            Ok(_) => {
                if let Some(p) = memchr::memchr(0xFF, &raw) {
                    decoder.extend(&raw[p + 1..]);
                    break;
                }
                debug!("discarded {} stale bytes from the guest agent", raw.len());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream
                .readable()
                .await
                .map_err(|e| Error::io("waiting for the guest agent", e))?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading from the guest agent", e)),
        }
    }
    loop {
        let obj = reader
            .next(stream, decoder)
            .await?
            .ok_or_else(|| fail("the agent closed the connection".into()))?;
        match obj.get("return") {
            Some(v) if v.as_u64() == Some(u64::from(id)) => return Ok(()),
            _ => debug!(
                "stale message from the guest agent dropped: {}",
                serde_json::Value::Object(obj)
            ),
        }
    }
}

async fn write_all(stream: &Stream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match stream.try_write(data, &[]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---- the session ---------------------------------------------------------------

/// One connection: the socket, the writer, the commands waiting for replies, and the
/// reader and flusher tasks.
struct Session {
    label: Arc<str>,
    stream: Arc<Stream>,
    writer: Arc<Writer>,
    /// The peer's greeting: read while connecting, or, when the client did not wait
    /// for one (`await_greeting(false)`, as `qmp-shell -N` talks to QEMU), the first
    /// greeting the reader meets.
    greeting: std::sync::OnceLock<Greeting>,
    oob: bool,
    /// Bounds in-band commands in flight when OOB is on.
    inband: Option<Arc<Semaphore>>,
    pending: Mutex<Pending>,
    ended: Notify,
    registry: Arc<Registry>,
    state: Arc<watch::Sender<Runstate>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Commands waiting for replies.
///
/// Every id on the wire is the library's own: a caller's id (`execute_raw`) is kept
/// aside and put back into the reply, so no caller id can collide with another
/// command's, and two callers may even use the same id at once.
#[derive(Default)]
struct Pending {
    /// Keyed by the id on the wire; `None` for the one command sent without an id.
    map: HashMap<Option<u64>, Entry>,
    /// Wire ids free for reuse (smallest first), and the next never used.
    free_ids: BinaryHeap<Reverse<u64>>,
    next_id: u64,
    /// Numbers every command, so that a message the kernel refuses finds its entry.
    next_seq: u64,
    ended: bool,
    cause: Option<Error>,
}

impl Pending {
    /// Give a request the shortest identity that is unambiguous: none at all when no
    /// id-less command is in flight (its reply is the one reply without an id) unless
    /// `numbered`, else the smallest free number. QEMU reads a monitor's input one
    /// byte per read call, so every byte of a request costs the round trip several
    /// microseconds.
    fn assign_id(&mut self, numbered: bool) -> Option<u64> {
        if !numbered && !self.map.contains_key(&None) {
            return None;
        }
        Some(match self.free_ids.pop() {
            Some(Reverse(n)) => n,
            None => {
                self.next_id += 1;
                self.next_id - 1
            }
        })
    }

    /// Remove an entry, releasing its wire id.
    fn take(&mut self, key: &Option<u64>) -> Option<Entry> {
        let entry = self.map.remove(key)?;
        if let Some(n) = *key {
            self.free_ids.push(Reverse(n));
        }
        Some(entry)
    }
}

struct Entry {
    tx: oneshot::Sender<Result<Response>>,
    command: String,
    /// This command's number (see [`Pending::next_seq`]).
    seq: u64,
    /// Held until the reply arrives, even if the caller stops waiting: the command
    /// still occupies the server's queue until then.
    _permit: Option<OwnedSemaphorePermit>,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    fn start(
        stream: Stream,
        decoder: Decoder,
        reader: MessageReader,
        greeting: Option<Greeting>,
        oob: bool,
        label: Arc<str>,
        registry: Arc<Registry>,
        state: Arc<watch::Sender<Runstate>>,
    ) -> Arc<Session> {
        let stream = Arc::new(stream);
        let writer = Arc::new(Writer::new(stream.clone()));
        let session = Arc::new(Session {
            label: label.clone(),
            stream,
            writer: writer.clone(),
            greeting: greeting.map(std::sync::OnceLock::from).unwrap_or_default(),
            oob,
            inband: oob.then(|| Arc::new(Semaphore::new(QEMU_INBAND_QUEUE - 1))),
            pending: Mutex::new(Pending::default()),
            ended: Notify::new(),
            registry,
            state,
            tasks: Mutex::new(Vec::new()),
        });
        let span = tracing::debug_span!("qmp", name = %label);
        let s = session.clone();
        let read_task = tokio::spawn(
            async move {
                let cause = s.read_loop(decoder, reader).await;
                s.end(Some(cause));
            }
            .instrument(span.clone()),
        );
        let s = session.clone();
        let flush_task = tokio::spawn(
            async move {
                if let Err(e) = writer.run_flusher(|r| s.rejected(r)).await {
                    let err = Error::io("writing to the peer", e);
                    s.end(Some(err));
                }
            }
            .instrument(span),
        );
        session
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend([read_task, flush_task]);
        session
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cause(&self) -> Option<Error> {
        self.pending().cause.clone()
    }

    async fn wait_ended(&self) {
        let notified = self.ended.notified();
        if self.pending().ended {
            return;
        }
        notified.await;
    }

    /// Read and route messages until the connection ends; returns why it ended.
    async fn read_loop(&self, mut decoder: Decoder, mut reader: MessageReader) -> Error {
        loop {
            let next = reader.next_with(&self.stream, &mut decoder, || self.registry.wake());
            match next.await {
                Ok(Some(obj)) => {
                    if let Err(e) = self.route(obj) {
                        error!("{e}");
                        return e;
                    }
                    // Non-blocking reads never yield on their own: under a flood the
                    // reader would keep its worker, and a listener it just woke (which
                    // tokio parks in that worker's unstealable LIFO slot) would starve.
                    tokio::task::consume_budget().await;
                }
                Ok(None) => {
                    info!("the peer closed the connection");
                    return Error::ConnectionClosed { mid_message: false };
                }
                Err(e) => {
                    // A closed connection is routine; anything else is worth an error.
                    if e.is_disconnected() {
                        info!("{e}");
                    } else {
                        error!("session ended: {e}");
                    }
                    return e;
                }
            }
        }
    }

    fn route(&self, obj: JsonObject) -> Result<()> {
        match Message::classify(obj) {
            Message::Event(e) => {
                trace!("<-- event {}", e.name());
                self.registry.dispatch(&e);
                Ok(())
            }
            Message::Response(r) => self.deliver(r),
            Message::Greeting(g) => {
                // Not awaited (a monitor greets every client whether it waits or not):
                // the session's greeting. A second one is the peer's mistake.
                let text = serde_json::Value::Object(g.raw.clone());
                match self.greeting.set(g) {
                    Ok(()) => debug!("greeting, not awaited: {text}"),
                    Err(_) => warn!("unexpected second greeting dropped: {text}"),
                }
                Ok(())
            }
            Message::Request(o) | Message::Other(o) => {
                warn!(
                    "message that is neither a reply nor an event dropped: {}",
                    serde_json::Value::Object(o)
                );
                Ok(())
            }
        }
    }

    fn deliver(&self, reply: Response) -> Result<()> {
        // Every id we send is a number of ours: any other id is unknown.
        let key = match reply.id() {
            None => Some(None),
            Some(id) => id.as_u64().map(Some),
        };
        let entry = key.and_then(|key| {
            let mut p = self.pending();
            match p.take(&key) {
                Some(e) => Some(e),
                // A peer that does not echo ids: the reply belongs to the only command
                // in flight.
                None if key.is_none() && p.map.len() == 1 => {
                    let k = p.map.keys().next().cloned();
                    k.and_then(|k| p.take(&k))
                }
                None => None,
            }
        });
        match entry {
            Some(e) => {
                trace!("<-- reply to '{}'", e.command);
                if let Err(Ok(r)) = e.tx.send(Ok(reply)) {
                    debug!(
                        "late reply to '{}' dropped (its caller stopped waiting): {}",
                        e.command,
                        serde_json::Value::Object(r.raw)
                    );
                }
                Ok(())
            }
            None if reply.id().is_none() && reply.is_error() => {
                let info = reply.error_info().ok().flatten();
                Err(ProtocolError::ServerParse {
                    class: info.as_ref().map(|i| i.class.clone()).unwrap_or_default(),
                    desc: info.map(|i| i.desc).unwrap_or_default(),
                }
                .into())
            }
            None => {
                warn!(
                    "reply with unknown id {} dropped: {}",
                    reply
                        .id()
                        .map_or_else(|| "(none)".to_owned(), |id| id.to_string()),
                    serde_json::Value::Object(reply.raw)
                );
                Ok(())
            }
        }
    }

    /// Send a request and wait for its reply.
    async fn call(
        &self,
        msg: JsonObject,
        fds: Vec<OwnedFd>,
        timeout: Option<Duration>,
    ) -> Result<Response> {
        self.call_keep_request(msg, fds, timeout)
            .await
            .map(|(_, r)| r)
    }

    /// Send a request and wait for its reply; returns the request and the reply in
    /// the caller's terms (see [`call_inner`](Self::call_inner)).
    async fn call_keep_request(
        &self,
        msg: JsonObject,
        fds: Vec<OwnedFd>,
        timeout: Option<Duration>,
    ) -> Result<(JsonObject, Response)> {
        if fds.len() > SCM_MAX_FD {
            return Err(Error::TooManyFds {
                command: request_command(&msg).unwrap_or("").to_owned(),
                count: fds.len(),
                limit: SCM_MAX_FD,
            });
        }
        match timeout {
            None => self.call_inner(msg, fds).await,
            Some(t) => {
                let what = format!(
                    "the reply to '{}'",
                    request_command(&msg).unwrap_or("(no command)")
                );
                tokio::time::timeout(t, self.call_inner(msg, fds))
                    .await
                    .map_err(|_| Error::timeout(what, t))?
            }
        }
    }

    /// Send a request under an id of the library's and wait for its reply.
    ///
    /// The caller's id, if the request has one, never goes on the wire: it is kept
    /// aside and put back into the reply in place of the library's (a peer that
    /// echoes no id gets none added). The request returned is the caller's, as given.
    /// A request with an id of the caller's always gets a number on the wire, so that
    /// its reply is matched by id, as its caller asked; one without is sent without an
    /// id when no other id-less command is in flight.
    async fn call_inner(
        &self,
        mut msg: JsonObject,
        fds: Vec<OwnedFd>,
    ) -> Result<(JsonObject, Response)> {
        let command = request_command(&msg).unwrap_or("").to_owned();
        let oob = msg.contains_key("exec-oob");
        let caller_id = msg.remove("id");
        let permit = match (&self.inband, oob) {
            (Some(sem), false) => Some(
                sem.clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| self.disconnected(Some(&command)))?,
            ),
            _ => None,
        };
        let (tx, rx) = oneshot::channel();
        let (key, seq) = {
            let mut p = self.pending();
            if p.ended {
                let cause = p.cause.clone();
                return Err(Error::Disconnected {
                    command: Some(command),
                    cause: cause.map(Box::new),
                });
            }
            let key = p.assign_id(caller_id.is_some());
            let seq = p.next_seq;
            p.next_seq += 1;
            p.map.insert(
                key,
                Entry {
                    tx,
                    command: command.clone(),
                    seq,
                    _permit: permit,
                },
            );
            (key, seq)
        };
        if let Some(n) = key {
            msg.insert("id".into(), Value::from(n));
        }
        let bytes = message::encode(&msg);
        match key {
            Some(n) => trace!(name = %self.label, "--> {command} (id {n})"),
            None => trace!(name = %self.label, "--> {command}"),
        }
        if let Err(e) = self.writer.send(bytes, fds, Some(seq)) {
            self.pending().take(&key);
            return Err(self.send_error(Some(&command), e));
        }
        swap_id(&mut msg, caller_id.clone());
        match rx.await {
            Ok(Ok(mut reply)) => {
                swap_id(&mut reply.raw, caller_id);
                Ok((msg, reply))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(self.disconnected(Some(&command))),
        }
    }

    /// The kernel refused a queued message before writing any of it: fail its
    /// command (the session goes on).
    fn rejected(&self, r: Rejected) {
        let Some(seq) = r.tag else {
            warn!(
                "a descriptor sent with send_fd_scm was not sent: the kernel refused it: {}",
                r.error
            );
            return;
        };
        let entry = {
            let mut p = self.pending();
            let key = p.map.iter().find(|(_, e)| e.seq == seq).map(|(k, _)| *k);
            key.and_then(|k| p.take(&k))
        };
        // No entry: the session ended in the meantime, and its end failed the command.
        if let Some(e) = entry {
            warn!(
                "command '{}' was not sent: the kernel refused it: {}",
                e.command, r.error
            );
            let _ = e.tx.send(Err(Error::NotSent {
                command: Some(e.command),
                source: Arc::new(r.error),
            }));
        }
    }

    fn disconnected(&self, command: Option<&str>) -> Error {
        Error::Disconnected {
            command: command.map(str::to_owned),
            cause: self.cause().map(Box::new),
        }
    }

    /// The error for a failed [`Writer::send`]: a refused message fails only its
    /// command; a broken connection ends the session.
    fn send_error(&self, command: Option<&str>, e: SendError) -> Error {
        let e = match e {
            SendError::Rejected(e) if e.kind() == io::ErrorKind::Unsupported => {
                return Error::InvalidRequest(e.to_string())
            }
            SendError::Rejected(e) => {
                return Error::NotSent {
                    command: command.map(str::to_owned),
                    source: Arc::new(e),
                }
            }
            SendError::Closed(e) => e,
        };
        if self.pending().ended || e.kind() == io::ErrorKind::NotConnected {
            return self.disconnected(command);
        }
        let err = Error::io("writing to the peer", e);
        self.end(Some(err.clone()));
        err
    }

    /// The session is over: fail every waiting command, end every listener, stop
    /// writing. Idempotent; the first cause wins.
    fn end(&self, cause: Option<Error>) {
        let entries = {
            let mut p = self.pending();
            if p.ended {
                return;
            }
            p.ended = true;
            p.cause = cause.clone();
            std::mem::take(&mut p.map)
        };
        // Publish the state first, so that whoever is woken below sees it.
        self.state.send_if_modified(|s| {
            if *s == Runstate::Running {
                *s = Runstate::Disconnecting;
                true
            } else {
                false
            }
        });
        for (_, e) in entries {
            let _ = e.tx.send(Err(Error::Disconnected {
                command: Some(e.command),
                cause: cause.clone().map(Box::new),
            }));
        }
        if let Some(sem) = &self.inband {
            sem.close();
        }
        self.registry.close_all(cause.as_ref());
        self.writer.close();
        self.ended.notify_waiters();
    }

    /// Graceful close: flush, end, stop the tasks. Returns what ended the session
    /// before this call, if anything did.
    async fn close(&self) -> Option<Error> {
        if !self.writer.is_flushed() {
            let flushed =
                tokio::time::timeout(FLUSH_TIMEOUT, self.writer.flush(|r| self.rejected(r))).await;
            match flushed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    debug!(name = %self.label, "could not flush before disconnecting: {e}")
                }
                Err(_) => {
                    warn!(name = %self.label, "disconnecting with unsent data: the peer did not read it within {FLUSH_TIMEOUT:?}")
                }
            }
        }
        let cause = self.cause();
        self.abort();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
        debug!(name = %self.label, "disconnected");
        cause
    }

    /// Immediate close, usable from `Drop`.
    fn abort(&self) {
        self.end(None);
        self.stream.shutdown();
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::{pin, Pin};
    use std::task::Poll;

    use qemu_testkit::QemuProcess;
    use rustix::io::Errno;
    use serde_json::json;

    use super::*;

    const T: Duration = Duration::from_secs(10);

    /// Poll once: that sends the request. It must still be waiting for its reply.
    async fn start<F: Future + Unpin>(call: &mut F) {
        let pending =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *call).poll(cx).is_pending()));
        assert!(pending.await, "completed at once");
    }

    fn copies(file: &std::fs::File, n: usize) -> Vec<OwnedFd> {
        (0..n).map(|_| dup_fd(file.as_fd()).expect("dup")).collect()
    }

    fn assert_refused_by_the_kernel(err: &Error) {
        match err {
            Error::NotSent {
                command: Some(c),
                source,
            } => {
                assert_eq!(c, "getfd");
                assert_eq!(Errno::from_io_error(source), Some(Errno::INVAL), "{source}");
            }
            other => panic!("expected NotSent, got {other:?}"),
        }
        assert!(!err.is_disconnected());
        assert!(err.to_string().contains("was not sent"), "{err}");
    }

    /// The kernel's own refusal (`sendmsg` → `EINVAL`), which the count check in
    /// `call_keep_request` normally pre-empts: reached here by sending 254
    /// descriptors through `call_inner` directly, against a real QEMU.
    #[tokio::test]
    async fn a_request_the_kernel_refuses_fails_alone_sent_at_once_or_queued() {
        qemu_testkit::require_qemu_system!();
        let (qemu, stream) = QemuProcess::system_with_socketpair(&[]);
        // A small send buffer, so that one long request keeps the queue busy: QEMU
        // reads its monitor a byte at a time.
        rustix::net::sockopt::set_socket_send_buffer_size(&stream, 4096).unwrap();
        let qmp = Client::builder()
            .command_timeout(T)
            .connect(stream)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}\n{}", qemu.log()));
        let session = qmp.session().unwrap();
        let file = tempfile::tempfile().unwrap();
        let getfd = message::make_request("getfd", Some(json!({"fdname": "many"})), false, None);

        // Refused at once, by the caller's own write.
        let err = session
            .call_inner(getfd.clone(), copies(&file, SCM_MAX_FD + 1))
            .await
            .unwrap_err();
        assert_refused_by_the_kernel(&err);
        assert_eq!(qmp.pending_commands(), 0);

        // Refused in the flusher, queued between two commands that go through.
        let pad = "x".repeat(64 * 1024);
        let mut long = pin!(qmp.execute("query-status", Some(json!({ "pad": pad }))));
        start(&mut long).await;
        assert!(
            !session.writer.is_flushed(),
            "the long request went out at once"
        );
        let mut refused = pin!(session.call_inner(getfd, copies(&file, SCM_MAX_FD + 1)));
        start(&mut refused).await;
        let mut after = pin!(qmp.execute("query-version", None));
        start(&mut after).await;
        assert_eq!(qmp.pending_commands(), 3);
        let (long, refused, after) =
            tokio::time::timeout(T, async { tokio::join!(long, refused, after) })
                .await
                .expect("bounded");
        // QEMU refuses the unknown argument, which shows it read the whole request.
        assert_eq!(long.unwrap_err().error_class(), Some("GenericError"));
        assert_refused_by_the_kernel(&refused.unwrap_err());
        assert!(after.unwrap()["qemu"].is_object());

        // The session goes on; a descriptor still passes.
        assert_eq!(qmp.runstate(), Runstate::Running);
        assert!(qmp.disconnect_cause().is_none());
        qmp.request("getfd")
            .arg("fdname", "one")
            .fd(&file)
            .send()
            .await
            .unwrap();
        qmp.execute("closefd", Some(json!({"fdname": "one"})))
            .await
            .unwrap();
        let err = qmp
            .execute("closefd", Some(json!({"fdname": "many"})))
            .await
            .unwrap_err();
        assert_eq!(err.error_class(), Some("GenericError"), "{err}");
        assert_eq!(qmp.pending_commands(), 0);
        qmp.disconnect().await.unwrap();
    }
}
