//! A QMP server to test clients against, with fault injection.
//!
//! [`TestServer`] speaks QMP the way QEMU's monitor does where it matters to a client:
//! it sends the greeting on connect, accepts nothing but `qmp_capabilities` until
//! negotiation succeeds, echoes request ids verbatim, answers unknown commands with
//! `CommandNotFound`, answers malformed JSON with an id-less `GenericError` and goes on,
//! and serves one connection at a time, one after another. On top of that, tests can
//! inject [`Fault`]s into the replies, [`emit`](TestServer::emit) events, add command
//! handlers, and look at what the server received.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use qemu_qmp::server::{Fault, Reply, TestServer};
//! use qemu_qmp::{json, Client};
//!
//! let dir = tempfile::tempdir()?;
//! let server = TestServer::builder()
//!     .handler("query-name", |_args| Reply::Return(json!({"name": "vm1"})))
//!     .bind_unix(dir.path().join("qmp.sock"))
//!     .await?;
//! let qmp = Client::connect(server.address()).await?;
//! assert_eq!(qmp.execute("query-name", None).await?["name"], "vm1");
//!
//! server.inject(Fault::Delay(Duration::from_millis(10)));
//! qmp.execute("echo", Some(json!({"late": true}))).await?;
//! assert_eq!(server.received().len(), 3); // qmp_capabilities, query-name, echo
//! # Ok(()) }
//! ```
//!
//! # Built-in commands
//!
//! `qmp_capabilities`, `query-version` (the configured version), `query-status`,
//! `query-commands`, `stop` and `cont` (which emit `STOP` and `RESUME` before their
//! reply, like QEMU, and change what `query-status` says), `quit` (replies, emits
//! `SHUTDOWN` and closes the connection; the server then waits for the next one),
//! `getfd` and `closefd` (descriptors passed with `SCM_RIGHTS` on Unix sockets), and
//! `echo`, which returns its arguments. Handlers added with
//! [`TestServerBuilder::handler`] override the built-ins.
//!
//! # Performance
//!
//! The server is fast enough to benchmark clients against: replies are serialised
//! straight into one output buffer (no per-message allocation for the built-in
//! commands), every request that arrived in one read is answered with one write, and
//! event floods are generated lazily as the socket drains. Turn recording off with
//! [`TestServerBuilder::record`] when measuring.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut, Write as _};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
use serde::Serialize;
use serde_json::Value;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::address::Address;
use crate::error::{Error, Result};
use crate::framing::{Decoder, FrameError};
use crate::message::{Event, Greeting, JsonObject, VersionInfo, VersionTriple};

/// The name of the events sent by [`Fault::FloodEvents`]; their data is
/// `{"seq": N}`, counting from 0.
pub const FLOOD_EVENT: &str = "FLOOD";

/// The largest request the server accepts by default (64 MiB, QEMU's JSON token
/// limit). A larger one is answered with an id-less error and the connection is closed.
pub const DEFAULT_SERVER_MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Commands the server implements itself.
const BUILTIN_COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-version",
    "query-status",
    "query-commands",
    "stop",
    "cont",
    "quit",
    "getfd",
    "closefd",
    "echo",
];

/// Bytes read per `read`/`recvmsg` call.
const READ_CHUNK: usize = 64 * 1024;
/// At most this many reads before the replies they produced are written.
const MAX_READS_PER_WAKE: usize = 16;
/// Refill the output buffer from deferred output when less than this is pending.
const LOW_WATER: usize = 64 * 1024;
/// Generate flood events in chunks of about this many bytes.
const FLOOD_CHUNK: usize = 256 * 1024;
/// Move emitted events to the output this many at a time.
const EVENT_BATCH: usize = 1024;
/// Stop reading requests while this much output waits for the client to read it.
const HIGH_WATER: usize = 4 * 1024 * 1024;
/// The most descriptors Linux passes in one message (`SCM_MAX_FD`).
const MAX_FDS_PER_READ: usize = 253;
/// How long a connection the server closes keeps draining the client's input, so
/// that the client sees a clean end of stream rather than a reset.
const LINGER: Duration = Duration::from_secs(1);

// ---- public types ---------------------------------------------------------------

/// What a command handler answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A success reply, `{"return": value, "id": ...}`.
    Return(Value),
    /// An error reply, `{"error": {"class": class, "desc": desc}, "id": ...}`.
    Error {
        /// The QMP error class, e.g. `GenericError`.
        class: String,
        /// The human-readable description.
        desc: String,
    },
    /// This object, sent exactly as given: no id is added. For replies (or anything
    /// else) a test wants byte-for-byte control over.
    Raw(JsonObject),
    /// This object with the request's `id` added, replacing any `id` in it (sent as
    /// is when the request had none), for malformed replies that must still reach the
    /// command that asked.
    WithId(JsonObject),
    /// No reply at all (like [`Fault::Hang`]).
    NoReply,
    /// `{"return": {}}` with this fault applied. An injected fault
    /// ([`TestServer::inject`]) takes precedence over it.
    Fault(Fault),
}

impl Reply {
    /// An error reply.
    pub fn error(class: impl Into<String>, desc: impl Into<String>) -> Reply {
        Reply::Error {
            class: class.into(),
            desc: desc.into(),
        }
    }
}

/// A misbehaviour of the server, applied to the reply of one command.
///
/// The command itself is still executed (`stop` still stops and emits `STOP`); the
/// fault changes what happens to its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Send the reply after this delay. Other commands keep flowing meanwhile, so their
    /// replies overtake this one. Delayed replies leave in deadline order; ones still
    /// waiting when the connection ends are dropped.
    Delay(Duration),
    /// Write the first half of the reply, then close the connection.
    CloseMidMessage,
    /// Write these bytes instead of the reply (the connection stays open).
    Garbage(Vec<u8>),
    /// Reply `{"return": {"data": "xxx..."}, "id": ...}`, padded to about this many
    /// bytes (CRLF included).
    Oversized(usize),
    /// Reply with an id nobody sent.
    UnknownId,
    /// Reply without the `id` member.
    NoId,
    /// Send this many [`FLOOD_EVENT`] events before the reply.
    FloodEvents(usize),
    /// Close the connection without replying.
    Disconnect,
    /// Never reply.
    Hang,
}

type Handler = Arc<dyn Fn(&JsonObject) -> Reply + Send + Sync>;
type FaultHook = Arc<dyn Fn(&str, &JsonObject) -> Option<Fault> + Send + Sync>;

#[derive(Clone)]
enum GreetingMode {
    Standard,
    None,
    Custom(JsonObject),
}

/// Builds a [`TestServer`]; see [`TestServer::builder`].
#[derive(Clone)]
pub struct TestServerBuilder {
    version: VersionInfo,
    capabilities: Vec<String>,
    greeting: GreetingMode,
    handlers: HashMap<String, Handler>,
    fault_hook: Option<FaultHook>,
    drop_unsent_events: bool,
    record: bool,
    max_message_size: usize,
}

impl fmt::Debug for TestServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut handlers: Vec<&String> = self.handlers.keys().collect();
        handlers.sort();
        f.debug_struct("TestServerBuilder")
            .field("version", &self.version)
            .field("capabilities", &self.capabilities)
            .field(
                "greeting",
                &match &self.greeting {
                    GreetingMode::Standard => "standard",
                    GreetingMode::None => "none",
                    GreetingMode::Custom(_) => "custom",
                },
            )
            .field("handlers", &handlers)
            .field("fault_hook", &self.fault_hook.is_some())
            .field("drop_unsent_events", &self.drop_unsent_events)
            .field("record", &self.record)
            .field("max_message_size", &self.max_message_size)
            .finish()
    }
}

impl Default for TestServerBuilder {
    /// QEMU 9.2.0, package "qemu-qmp test server", offering `oob`, recording requests.
    fn default() -> Self {
        TestServerBuilder {
            version: VersionInfo {
                qemu: VersionTriple {
                    major: 9,
                    minor: 2,
                    micro: 0,
                },
                package: "qemu-qmp test server".into(),
            },
            capabilities: vec!["oob".into()],
            greeting: GreetingMode::Standard,
            handlers: HashMap::new(),
            fault_hook: None,
            drop_unsent_events: false,
            record: true,
            max_message_size: DEFAULT_SERVER_MAX_MESSAGE_SIZE,
        }
    }
}

impl TestServerBuilder {
    /// The version in the greeting and in `query-version` (default 9.2.0, package
    /// "qemu-qmp test server").
    pub fn version(mut self, version: VersionInfo) -> Self {
        self.version = version;
        self
    }

    /// The capabilities offered in the greeting (default `["oob"]`).
    /// `qmp_capabilities` accepts only these.
    pub fn capabilities(mut self, capabilities: Vec<String>) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Guest-agent style: send no greeting and require no negotiation; every command
    /// is accepted from the start and events flow at once.
    pub fn no_greeting(mut self) -> Self {
        self.greeting = GreetingMode::None;
        self
    }

    /// Send this object as the greeting instead of the standard one (to test how
    /// clients handle bad greetings). Negotiation is still required.
    pub fn greeting(mut self, greeting: JsonObject) -> Self {
        self.greeting = GreetingMode::Custom(greeting);
        self
    }

    /// Answer `command` with `f`, which gets the request's `arguments` (an empty
    /// object when there are none). Overrides a built-in command of the same name;
    /// a handler for `qmp_capabilities` that returns [`Reply::Return`] completes
    /// negotiation (enabling OOB if the request asked for it and it was offered).
    pub fn handler(
        mut self,
        command: &str,
        f: impl Fn(&JsonObject) -> Reply + Send + Sync + 'static,
    ) -> Self {
        self.handlers.insert(command.to_owned(), Arc::new(f));
        self
    }

    /// Ask `f` for a fault for every command, with the command's name and arguments
    /// (an empty object when there are none), after the command ran and before its
    /// reply is sent. Called for every well-formed request, `qmp_capabilities` and
    /// unknown commands included. A fault queued with [`TestServer::inject`] takes
    /// precedence over the one `f` returns, which takes precedence over a
    /// [`Reply::Fault`] from a handler.
    pub fn fault_hook(
        mut self,
        f: impl Fn(&str, &JsonObject) -> Option<Fault> + Send + Sync + 'static,
    ) -> Self {
        self.fault_hook = Some(Arc::new(f));
        self
    }

    /// Like QEMU, drop the events [emitted](TestServer::emit) while no client has
    /// completed negotiation (none is connected, or the one connected has not sent
    /// `qmp_capabilities` yet), instead of keeping them for the next client (default
    /// false). Clients that expect the reply to `qmp_capabilities` to be the first
    /// message after the greeting need this when events are emitted at any time.
    pub fn drop_unsent_events(mut self, yes: bool) -> Self {
        self.drop_unsent_events = yes;
        self
    }

    /// Record every request for [`TestServer::received`] (default true). Turn off for
    /// benchmarks; [`TestServer::requests`] still counts.
    pub fn record(mut self, yes: bool) -> Self {
        self.record = yes;
        self
    }

    /// The largest request accepted (default [`DEFAULT_SERVER_MAX_MESSAGE_SIZE`]).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Listen on a Unix socket at `path` (which must not exist). The socket file is
    /// removed when the server is dropped.
    pub async fn bind_unix(self, path: impl AsRef<Path>) -> io::Result<TestServer> {
        let path = path.as_ref().to_owned();
        let listener = UnixListener::bind(&path)?;
        let identity = file_identity(&path);
        let shared = self.into_shared();
        info!("QMP test server listening on {}", path.display());
        let task = spawn_server(shared.clone(), Listening::Unix(listener));
        Ok(TestServer {
            shared,
            task: Some(task),
            local: Local::Unix { path, identity },
        })
    }

    /// Listen on TCP, e.g. `"127.0.0.1:0"` for a free port
    /// ([`TestServer::address`] tells which).
    pub async fn bind_tcp(self, addr: &str) -> io::Result<TestServer> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let shared = self.into_shared();
        info!("QMP test server listening on {local}");
        let task = spawn_server(shared.clone(), Listening::Tcp(listener));
        Ok(TestServer {
            shared,
            task: Some(task),
            local: Local::Tcp(local),
        })
    }

    /// Serve one end of a new socket pair and return the other end (in blocking
    /// mode, as `std` makes it), e.g. for `Client::connect`. Counts as one connection;
    /// the server has no address.
    pub async fn socketpair(self) -> io::Result<(TestServer, std::os::unix::net::UnixStream)> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let ours = UnixStream::from_std(ours)?;
        let shared = self.into_shared();
        shared.counters.send_modify(|c| c.accepted += 1);
        let task = spawn_server(shared.clone(), Listening::Pair(ours));
        Ok((
            TestServer {
                shared,
                task: Some(task),
                local: Local::Pair,
            },
            theirs,
        ))
    }

    fn into_shared(self) -> Arc<Shared> {
        let mut greeting_bytes = Vec::new();
        let (greeting, negotiation) = match self.greeting {
            GreetingMode::Standard => {
                let g = Greeting::new(self.version.clone(), self.capabilities.clone());
                write_message(&mut greeting_bytes, &g.raw);
                (Some(greeting_bytes), true)
            }
            GreetingMode::Custom(obj) => {
                write_message(&mut greeting_bytes, &obj);
                (Some(greeting_bytes), true)
            }
            GreetingMode::None => (None, false),
        };
        let mut version_json = Vec::new();
        write_json(&mut version_json, &self.version);
        let mut names: Vec<&str> = BUILTIN_COMMANDS.to_vec();
        let mut extra: Vec<&str> = self
            .handlers
            .keys()
            .map(String::as_str)
            .filter(|n| !BUILTIN_COMMANDS.contains(n))
            .collect();
        extra.sort_unstable();
        names.extend(extra);
        let commands: Vec<Value> = names
            .iter()
            .map(|n| serde_json::json!({ "name": n }))
            .collect();
        let mut commands_json = Vec::new();
        write_json(&mut commands_json, &commands);
        Arc::new(Shared {
            config: Config {
                greeting,
                negotiation,
                capabilities: self.capabilities,
                version_json: version_json.into(),
                commands_json: commands_json.into(),
                handlers: self.handlers,
                fault_hook: self.fault_hook,
                drop_unsent_events: self.drop_unsent_events,
                record: self.record,
                max_message_size: self.max_message_size,
            },
            state: Mutex::new(State::default()),
            faults_pending: AtomicUsize::new(0),
            running: AtomicBool::new(true),
            wake: Notify::new(),
            counters: watch::channel(Counters::default()).0,
        })
    }
}

/// A QMP server for tests; see the [module documentation](self).
///
/// It owns one task, which accepts connections and serves them one at a time.
/// Dropping the server stops the task (closing any connection) and removes the Unix
/// socket file it created.
pub struct TestServer {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
    local: Local,
}

enum Local {
    Unix {
        path: PathBuf,
        /// Device and inode of the socket file, so that only our own file is removed.
        identity: Option<(u64, u64)>,
    },
    Tcp(SocketAddr),
    Pair,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = *self.shared.counters.borrow();
        f.debug_struct("TestServer")
            .field("address", &self.try_address().map(|a| a.to_string()))
            .field("connections", &c.accepted)
            .field("requests", &c.requests)
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// A builder with the defaults: QEMU 9.2.0, offering `oob`, greeting on connect,
    /// recording requests.
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder::default()
    }

    /// Where to connect: the Unix socket path or the bound TCP address.
    ///
    /// # Panics
    ///
    /// For a server made by [`TestServerBuilder::socketpair`], which has no address;
    /// use [`try_address`](Self::try_address) when that can happen.
    pub fn address(&self) -> Address {
        match self.try_address() {
            Some(a) => a,
            None => panic!("a QMP test server serving a socketpair has no address"),
        }
    }

    /// Where to connect, or `None` for a server serving a socketpair.
    pub fn try_address(&self) -> Option<Address> {
        match &self.local {
            Local::Unix { path, .. } => Some(Address::Unix(path.clone())),
            Local::Tcp(a) => Some(Address::Tcp {
                host: a.ip().to_string(),
                port: a.port(),
            }),
            Local::Pair => None,
        }
    }

    /// Send an event to the client: at once if one is connected and has negotiated,
    /// otherwise as soon as one has.
    pub fn emit(&self, event: Event) {
        self.shared.lock().events.push_back(event);
        self.shared.wake.notify_one();
    }

    /// [`emit`](Self::emit) several events, in order.
    pub fn emit_many(&self, events: impl IntoIterator<Item = Event>) {
        self.shared.lock().events.extend(events);
        self.shared.wake.notify_one();
    }

    /// Apply a fault to the reply of the next command received (faults queue up and
    /// are used one per command, in order). Any well-formed request counts as a
    /// command, `qmp_capabilities` and unknown commands included; requests rejected
    /// for their shape (malformed JSON, no `execute`) do not.
    pub fn inject(&self, fault: Fault) {
        let mut s = self.shared.lock();
        s.faults.push_back(fault);
        self.shared
            .faults_pending
            .store(s.faults.len(), Ordering::Release);
    }

    /// Every request received so far, in order, over all connections (empty when
    /// recording is off). Includes requests the server rejected.
    pub fn received(&self) -> Vec<JsonObject> {
        self.shared.lock().received.clone()
    }

    /// Like [`received`](Self::received), and forget them.
    pub fn take_received(&self) -> Vec<JsonObject> {
        std::mem::take(&mut self.shared.lock().received)
    }

    /// How many requests have been received (counted even when recording is off).
    pub fn requests(&self) -> usize {
        self.shared.counters.borrow().requests
    }

    /// How many descriptors were received with `SCM_RIGHTS`. Descriptors are closed
    /// unless `getfd` keeps one: like QEMU, the descriptors of one read are held until
    /// a later read brings new ones, `getfd` takes the first of them, and the
    /// connection's end closes the rest.
    pub fn received_fds(&self) -> usize {
        self.shared.lock().fds_received
    }

    /// The names of the descriptors kept by `getfd` (and not yet closed by `closefd`),
    /// sorted.
    pub fn fd_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.shared.lock().named_fds.keys().cloned().collect();
        names.sort();
        names
    }

    /// Take a descriptor kept by `getfd`, e.g. to check what the client passed.
    pub fn take_fd(&self, name: &str) -> Option<OwnedFd> {
        self.shared.lock().named_fds.remove(name)
    }

    /// How many connections have been accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.counters.borrow().accepted
    }

    /// How many connections have ended so far (their socket is closed by then).
    pub fn disconnections(&self) -> usize {
        self.shared.counters.borrow().closed
    }

    /// Wait until at least `n` connections have been accepted, or fail with
    /// [`Error::Timeout`].
    pub async fn wait_for_connections(&self, n: usize, timeout: Duration) -> Result<()> {
        self.wait_until(
            timeout,
            |c| c.accepted >= n,
            || format!("{n} connections to the QMP test server"),
        )
        .await
    }

    /// Wait until at least `n` connections have ended, or fail with [`Error::Timeout`].
    pub async fn wait_for_disconnections(&self, n: usize, timeout: Duration) -> Result<()> {
        self.wait_until(
            timeout,
            |c| c.closed >= n,
            || format!("{n} connections to the QMP test server to end"),
        )
        .await
    }

    /// Wait until at least `n` requests have been received (and recorded), or fail
    /// with [`Error::Timeout`].
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Result<()> {
        self.wait_until(
            timeout,
            |c| c.requests >= n,
            || format!("{n} requests to the QMP test server"),
        )
        .await
    }

    async fn wait_until(
        &self,
        timeout: Duration,
        cond: impl FnMut(&Counters) -> bool,
        what: impl FnOnce() -> String,
    ) -> Result<()> {
        let mut rx = self.shared.counters.subscribe();
        // The sender lives in `self.shared`, so `wait_for` cannot fail here.
        let reached = tokio::time::timeout(timeout, async { rx.wait_for(cond).await.is_ok() })
            .await
            .unwrap_or(false);
        if reached {
            Ok(())
        } else {
            Err(Error::timeout(what(), timeout))
        }
    }

    /// Stop serving and wait until the task has stopped (so every socket it held is
    /// closed), then remove the socket file.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Local::Unix {
            path,
            identity: Some(id),
        } = &self.local
        {
            if file_identity(path) == Some(*id) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

// ---- shared state ---------------------------------------------------------------

struct Config {
    /// The encoded greeting, if one is sent.
    greeting: Option<Vec<u8>>,
    /// `qmp_capabilities` is required before other commands.
    negotiation: bool,
    capabilities: Vec<String>,
    version_json: Arc<[u8]>,
    commands_json: Arc<[u8]>,
    handlers: HashMap<String, Handler>,
    fault_hook: Option<FaultHook>,
    drop_unsent_events: bool,
    record: bool,
    max_message_size: usize,
}

#[derive(Default)]
struct State {
    received: Vec<JsonObject>,
    faults: VecDeque<Fault>,
    events: VecDeque<Event>,
    fds_received: usize,
    named_fds: HashMap<String, OwnedFd>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    accepted: usize,
    closed: usize,
    requests: usize,
}

struct Shared {
    config: Config,
    state: Mutex<State>,
    /// Length of `state.faults`, to skip the lock when there are none.
    faults_pending: AtomicUsize,
    /// The "VM" run state, changed by `stop` and `cont`.
    running: AtomicBool,
    /// Wakes the connection task when events are emitted.
    wake: Notify,
    counters: watch::Sender<Counters>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, even if a panic
        // poisoned the lock elsewhere.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_fault(&self) -> Option<Fault> {
        if self.faults_pending.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut s = self.lock();
        let f = s.faults.pop_front();
        self.faults_pending.store(s.faults.len(), Ordering::Release);
        f
    }
}

// ---- accepting ------------------------------------------------------------------

enum Listening {
    Unix(UnixListener),
    Tcp(TcpListener),
    Pair(UnixStream),
}

fn spawn_server(shared: Arc<Shared>, listening: Listening) -> JoinHandle<()> {
    let span = tracing::debug_span!("qmp-test-server");
    tokio::spawn(
        async move {
            match listening {
                // Counted as accepted by `socketpair()`.
                Listening::Pair(s) => {
                    serve(&shared, Conn::Unix(s)).await;
                }
                Listening::Unix(l) => loop {
                    match l.accept().await {
                        Ok((s, _)) => {
                            shared.counters.send_modify(|c| c.accepted += 1);
                            serve(&shared, Conn::Unix(s)).await;
                        }
                        Err(e) => accept_failed(e).await,
                    }
                },
                Listening::Tcp(l) => loop {
                    match l.accept().await {
                        Ok((s, peer)) => {
                            let _ = s.set_nodelay(true);
                            shared.counters.send_modify(|c| c.accepted += 1);
                            debug!("connection from {peer}");
                            serve(&shared, Conn::Tcp(s)).await;
                        }
                        Err(e) => accept_failed(e).await,
                    }
                },
            }
        }
        .instrument(span),
    )
}

async fn accept_failed(e: io::Error) {
    warn!("accept failed: {e}");
    // Out of descriptors and the like: back off instead of spinning.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn serve(shared: &Arc<Shared>, stream: Conn) {
    debug!("client connected");
    let mut conn = Connection::new(shared.clone(), stream);
    match conn.run().await {
        Ending::Close => {
            debug!("closing the connection");
            conn.linger().await;
        }
        Ending::Eof => debug!("the client closed the connection"),
        Ending::Failed(e) => debug!("connection failed: {e}"),
    }
    drop(conn);
    shared.counters.send_modify(|c| c.closed += 1);
}

// ---- the connection -------------------------------------------------------------

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    async fn readable(&self) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.readable().await,
            Conn::Tcp(s) => s.readable().await,
        }
    }

    async fn writable(&self) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.writable().await,
            Conn::Tcp(s) => s.writable().await,
        }
    }

    fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.try_write(data),
            Conn::Tcp(s) => s.try_write(data),
        }
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.try_read(buf),
            Conn::Tcp(s) => s.try_read(buf),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Conn::Unix(s) => s.as_fd(),
            Conn::Tcp(s) => s.as_fd(),
        }
    }
}

enum Ending {
    /// The server closes the connection (a fault, `quit`, an oversized request).
    Close,
    /// The client closed it.
    Eof,
    /// An I/O error.
    Failed(io::Error),
}

/// A reply delayed by [`Fault::Delay`].
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Delayed {
    at: Instant,
    seq: u64,
    bytes: Vec<u8>,
}

struct Connection {
    shared: Arc<Shared>,
    stream: Conn,
    decoder: Decoder,
    /// Read buffer for `recvmsg` on Unix sockets.
    scratch: Vec<u8>,
    /// Control buffer for `recvmsg`.
    cmsg: Vec<MaybeUninit<u8>>,
    out: Output,
    delayed: BinaryHeap<Reverse<Delayed>>,
    delay_seq: u64,
    negotiated: bool,
    oob: bool,
    /// The descriptors of the latest read that brought some (QEMU keeps only those).
    fds: Vec<OwnedFd>,
    /// Requests of the current read batch, recorded in one go.
    batch: Vec<JsonObject>,
    batch_requests: usize,
    unknown_ids: u64,
    eof: bool,
    /// Emitted events are waiting in the shared queue for the output to drain.
    events_more: bool,
    /// Reused buffer for moving events out of the shared queue.
    event_batch: Vec<Event>,
}

impl Connection {
    fn new(shared: Arc<Shared>, stream: Conn) -> Connection {
        let negotiated = !shared.config.negotiation;
        let max = shared.config.max_message_size;
        let unix = matches!(stream, Conn::Unix(_));
        Connection {
            shared,
            stream,
            decoder: Decoder::new(max),
            scratch: if unix {
                vec![0; READ_CHUNK]
            } else {
                Vec::new()
            },
            cmsg: if unix {
                vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_READ))]
            } else {
                Vec::new()
            },
            out: Output::default(),
            delayed: BinaryHeap::new(),
            delay_seq: 0,
            negotiated,
            oob: false,
            fds: Vec::new(),
            batch: Vec::new(),
            batch_requests: 0,
            unknown_ids: 0,
            eof: false,
            events_more: false,
            event_batch: Vec::new(),
        }
    }

    async fn run(&mut self) -> Ending {
        if let Some(g) = &self.shared.config.greeting {
            self.out.buf.extend_from_slice(g);
        }
        self.drop_unsent_events();
        if self.negotiated {
            self.take_events();
        }
        let mut timer = Box::pin(tokio::time::sleep_until(Instant::now()));
        let mut timer_at: Option<Instant> = None;
        loop {
            if let Err(e) = self.flush() {
                return Ending::Failed(e);
            }
            if self.out.close_now && self.out.pending() == 0 {
                return Ending::Close;
            }
            if self.eof {
                return Ending::Eof;
            }
            let next = self.delayed.peek().map(|Reverse(d)| d.at);
            if next != timer_at {
                if let Some(at) = next {
                    timer.as_mut().reset(at);
                }
                timer_at = next;
            }
            let want_read = !self.out.closing && self.out.buffered() < HIGH_WATER;
            let want_write = self.out.pending() > 0;
            tokio::select! {
                r = self.stream.readable(), if want_read => {
                    if let Err(e) = r.and_then(|()| self.read()) {
                        return Ending::Failed(e);
                    }
                }
                r = self.stream.writable(), if want_write => {
                    if let Err(e) = r {
                        return Ending::Failed(e);
                    }
                }
                () = &mut timer, if timer_at.is_some() => {
                    timer_at = None;
                    self.release_due();
                }
                () = self.shared.wake.notified() => {
                    if self.negotiated {
                        self.take_events();
                    } else {
                        self.drop_unsent_events();
                    }
                }
            }
        }
    }

    /// Write what is pending until done or the socket is full.
    fn flush(&mut self) -> io::Result<()> {
        loop {
            if self.events_more && self.negotiated && self.out.buffered() < LOW_WATER {
                self.take_events();
            }
            self.out.refill();
            if self.out.pending() == 0 {
                return Ok(());
            }
            match self.stream.try_write(&self.out.buf[self.out.pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Read what is available (a bounded number of times) and handle every complete
    /// request; the replies are written afterwards, together.
    fn read(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        for _ in 0..MAX_READS_PER_WAKE {
            match self.read_once() {
                Ok(0) => {
                    self.eof = true;
                    self.handle_messages(true);
                    break;
                }
                Ok(_) => {
                    self.handle_messages(false);
                    if self.out.closing || self.out.buffered() >= HIGH_WATER {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Nothing more for now: look for messages not ended by a newline.
                    self.handle_messages(true);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.finish_batch();
        result
    }

    fn read_once(&mut self) -> io::Result<usize> {
        let Connection {
            stream,
            decoder,
            scratch,
            cmsg,
            ..
        } = self;
        let s = match stream {
            Conn::Tcp(s) => return s.try_read_buf(decoder.buffer_mut()),
            Conn::Unix(s) => s,
        };
        let mut fds: Vec<OwnedFd> = Vec::new();
        let mut truncated = false;
        let n = s.try_io(Interest::READABLE, || {
            let mut control = RecvAncillaryBuffer::new(cmsg);
            let mut iov = [IoSliceMut::new(scratch)];
            let msg =
                rustix::net::recvmsg(s.as_fd(), &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
            for m in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = m {
                    fds.extend(received);
                }
            }
            truncated = msg.flags.contains(ReturnFlags::CTRUNC);
            Ok(msg.bytes)
        })?;
        decoder.extend(&scratch[..n]);
        if truncated {
            warn!("control data truncated: some descriptors the client sent were dropped");
        }
        if !fds.is_empty() {
            debug!("received {} descriptor(s) with SCM_RIGHTS", fds.len());
            self.shared.lock().fds_received += fds.len();
            // QEMU keeps only the descriptors of the latest read that brought some.
            self.fds = fds;
        }
        Ok(n)
    }

    fn handle_messages(&mut self, idle: bool) {
        while !self.out.closing {
            match self.decoder.decode(idle) {
                Ok(Some(obj)) => self.handle(obj),
                Ok(None) => break,
                Err(FrameError::TooLarge { size, limit }) => {
                    warn!("request too large ({size} bytes, limit {limit}); closing");
                    let desc = format!(
                        "JSON parse error, message exceeds the size limit of {limit} bytes"
                    );
                    self.out
                        .write_with(|b| render_error(b, "GenericError", &desc, None));
                    self.out.close();
                }
                Err(e) => {
                    debug!("<-- unparsable input: {e}");
                    let desc = match &e {
                        FrameError::NotAnObject { .. } => {
                            "QMP input must be a JSON object".to_owned()
                        }
                        FrameError::Malformed { source, .. } => {
                            format!("JSON parse error, {source}")
                        }
                        FrameError::TooLarge { .. } => e.to_string(),
                    };
                    self.out
                        .write_with(|b| render_error(b, "GenericError", &desc, None));
                    self.decoder.resync();
                }
            }
        }
    }

    /// Record the batch of requests and count them (before their replies are written,
    /// so whoever sees a reply also sees the request in `received()`).
    fn finish_batch(&mut self) {
        if self.batch_requests == 0 {
            return;
        }
        if !self.batch.is_empty() {
            self.shared.lock().received.append(&mut self.batch);
        }
        let n = std::mem::take(&mut self.batch_requests);
        self.shared.counters.send_modify(|c| c.requests += n);
    }

    fn handle(&mut self, obj: JsonObject) {
        self.batch_requests += 1;
        debug!("<-- {}", JsonDisplay(&obj));
        let id = obj.get("id");
        match check_request(&obj, self.oob) {
            Err(desc) => self
                .out
                .write_with(|b| render_error(b, "GenericError", &desc, id)),
            Ok((name, args, _oob)) => {
                let fault = self.shared.next_fault();
                let (answer, handler_fault, post) = self.dispatch(name, args);
                let hooked = match &self.shared.config.fault_hook {
                    Some(hook) => hook(name, args),
                    None => None,
                };
                let fault = fault.or(hooked).or(handler_fault);
                if let Some(f) = &fault {
                    debug!("fault on the reply to '{name}': {f:?}");
                }
                self.send_reply(&answer, id, fault);
                if let Post::Quit = post {
                    self.write_event(&Event::new(
                        "SHUTDOWN",
                        Some(serde_json::json!({"guest": false, "reason": "host-qmp-quit"})),
                    ));
                    self.out.close();
                }
            }
        }
        if self.shared.config.record {
            self.batch.push(obj);
        }
    }

    /// Run a command; returns the answer, a fault the handler asked for, and what to
    /// do after the reply.
    fn dispatch<'a>(
        &mut self,
        name: &str,
        args: &'a JsonObject,
    ) -> (Answer<'a>, Option<Fault>, Post) {
        if !self.negotiated {
            if name != "qmp_capabilities" {
                return (
                    Answer::error(
                        "CommandNotFound",
                        "Expecting capabilities negotiation with 'qmp_capabilities'".into(),
                    ),
                    None,
                    Post::None,
                );
            }
            if let Some(reply) = self.call_handler(name, args) {
                if matches!(reply, Reply::Return(_) | Reply::Fault(_)) {
                    self.negotiated_with(args);
                }
                return reply_to_answer(reply);
            }
            return (self.qmp_capabilities(args), None, Post::None);
        }
        if let Some(reply) = self.call_handler(name, args) {
            return reply_to_answer(reply);
        }
        let answer = match name {
            "qmp_capabilities" => Answer::error(
                "CommandNotFound",
                "Capabilities negotiation is already complete, command ignored".into(),
            ),
            "echo" => Answer::Object(args),
            "query-version" => match no_arguments(args) {
                Err(e) => e,
                Ok(()) => Answer::Encoded(self.shared.config.version_json.clone()),
            },
            "query-commands" => match no_arguments(args) {
                Err(e) => e,
                Ok(()) => Answer::Encoded(self.shared.config.commands_json.clone()),
            },
            "query-status" => match no_arguments(args) {
                Err(e) => e,
                Ok(()) => Answer::Status(self.shared.running.load(Ordering::Relaxed)),
            },
            "stop" => match no_arguments(args) {
                Err(e) => e,
                Ok(()) => {
                    if self.shared.running.swap(false, Ordering::Relaxed) {
                        self.write_event(&Event::new("STOP", None));
                    }
                    Answer::Empty
                }
            },
            "cont" => match no_arguments(args) {
                Err(e) => e,
                Ok(()) => {
                    self.shared.running.store(true, Ordering::Relaxed);
                    self.write_event(&Event::new("RESUME", None));
                    Answer::Empty
                }
            },
            "quit" => match no_arguments(args) {
                Err(e) => e,
                Ok(()) => return (Answer::Empty, None, Post::Quit),
            },
            "getfd" => self.getfd(args),
            "closefd" => self.closefd(args),
            _ => Answer::error(
                "CommandNotFound",
                format!("The command {name} has not been found"),
            ),
        };
        (answer, None, Post::None)
    }

    fn call_handler(&self, name: &str, args: &JsonObject) -> Option<Reply> {
        self.shared.config.handlers.get(name).map(|h| h(args))
    }

    fn negotiated_with(&mut self, args: &JsonObject) {
        self.negotiated = true;
        let wants_oob = args
            .get("enable")
            .and_then(Value::as_array)
            .is_some_and(|caps| caps.iter().any(|c| c == "oob"));
        self.oob = wants_oob && self.shared.config.capabilities.iter().any(|c| c == "oob");
        debug!("negotiated (oob {})", if self.oob { "on" } else { "off" });
        self.drop_unsent_events();
        self.take_events();
    }

    /// With [`TestServerBuilder::drop_unsent_events`], drop the events waiting to be
    /// sent (called while no client has negotiated).
    fn drop_unsent_events(&mut self) {
        if !self.shared.config.drop_unsent_events {
            return;
        }
        let n = {
            let mut s = self.shared.lock();
            let n = s.events.len();
            s.events.clear();
            n
        };
        self.events_more = false;
        if n > 0 {
            debug!("dropped {n} event(s) emitted while no client had negotiated");
        }
    }

    fn qmp_capabilities<'a>(&mut self, args: &JsonObject) -> Answer<'a> {
        let mut requested: Vec<&str> = Vec::new();
        for (key, value) in args {
            if key != "enable" {
                return Answer::error("GenericError", format!("Parameter '{key}' is unexpected"));
            }
            let Value::Array(caps) = value else {
                return Answer::error(
                    "GenericError",
                    "Invalid parameter type for 'enable', expected: array".into(),
                );
            };
            for (i, c) in caps.iter().enumerate() {
                match c.as_str() {
                    Some(s) => requested.push(s),
                    None => {
                        return Answer::error(
                            "GenericError",
                            format!("Invalid parameter type for 'enable[{i}]', expected: string"),
                        )
                    }
                }
            }
        }
        let offered = &self.shared.config.capabilities;
        let unavailable: Vec<&str> = requested
            .iter()
            .copied()
            .filter(|r| !offered.iter().any(|o| o == r))
            .collect();
        if !unavailable.is_empty() {
            return Answer::error(
                "GenericError",
                format!("Capability {} not available", unavailable.join(", ")),
            );
        }
        self.negotiated_with(args);
        Answer::Empty
    }

    fn getfd<'a>(&mut self, args: &JsonObject) -> Answer<'a> {
        let name = match fdname(args) {
            Ok(n) => n,
            Err(e) => return e,
        };
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            return Answer::error(
                "GenericError",
                "Parameter 'fdname' expects a name not starting with a digit".into(),
            );
        }
        if self.fds.is_empty() {
            return Answer::error(
                "GenericError",
                "No file descriptor supplied via SCM_RIGHTS".into(),
            );
        }
        // Like QEMU: take the first descriptor of the latest set, close the others.
        let fd = self.fds.swap_remove(0);
        self.fds.clear();
        // Replacing a descriptor of the same name closes the old one.
        self.shared.lock().named_fds.insert(name.to_owned(), fd);
        Answer::Empty
    }

    fn closefd<'a>(&mut self, args: &JsonObject) -> Answer<'a> {
        let name = match fdname(args) {
            Ok(n) => n,
            Err(e) => return e,
        };
        match self.shared.lock().named_fds.remove(name) {
            Some(_fd) => Answer::Empty,
            None => Answer::error(
                "GenericError",
                format!("File descriptor named '{name}' not found"),
            ),
        }
    }

    fn write_event(&mut self, event: &Event) {
        self.out.write_with(|b| write_message(b, event.as_object()));
    }

    /// Move emitted events to the output, a batch at a time while little output is
    /// waiting; `events_more` says whether some are left for later.
    fn take_events(&mut self) {
        while self.out.buffered() < FLOOD_CHUNK && !self.out.closing {
            let more = {
                let mut s = self.shared.lock();
                let k = s.events.len().min(EVENT_BATCH);
                self.event_batch.extend(s.events.drain(..k));
                !s.events.is_empty()
            };
            self.events_more = more;
            if self.event_batch.is_empty() {
                return;
            }
            let batch = std::mem::take(&mut self.event_batch);
            self.out.write_with(|b| {
                for e in &batch {
                    write_message(b, e.as_object());
                }
            });
            self.event_batch = batch;
            self.event_batch.clear();
            if !more {
                return;
            }
        }
    }

    fn release_due(&mut self) {
        let now = Instant::now();
        while self.delayed.peek().is_some_and(|Reverse(d)| d.at <= now) {
            if let Some(Reverse(d)) = self.delayed.pop() {
                self.out.write_with(|b| b.extend_from_slice(&d.bytes));
            }
        }
    }

    fn send_reply(&mut self, answer: &Answer<'_>, id: Option<&Value>, fault: Option<Fault>) {
        let Some(fault) = fault else {
            self.out.write_with(|b| render(b, answer, id));
            return;
        };
        match fault {
            Fault::Delay(d) => {
                let mut bytes = Vec::new();
                render(&mut bytes, answer, id);
                // A delay too long to represent is a hang.
                if let Some(at) = Instant::now().checked_add(d) {
                    self.delay_seq += 1;
                    self.delayed.push(Reverse(Delayed {
                        at,
                        seq: self.delay_seq,
                        bytes,
                    }));
                }
            }
            Fault::CloseMidMessage => {
                let mut bytes = Vec::new();
                render(&mut bytes, answer, id);
                let half = (bytes.len() / 2).max(1).min(bytes.len());
                self.out.write_with(|b| b.extend_from_slice(&bytes[..half]));
                self.out.close();
            }
            Fault::Garbage(bytes) => self.out.write_with(|b| b.extend_from_slice(&bytes)),
            Fault::Oversized(size) => self.out.write_with(|b| render_oversized(b, size, id)),
            Fault::UnknownId => {
                self.unknown_ids += 1;
                let fake = Value::String(format!(
                    "qemu-qmp-test-server:unknown-id:{}",
                    self.unknown_ids
                ));
                self.out.write_with(|b| render(b, answer, Some(&fake)));
            }
            Fault::NoId => self.out.write_with(|b| render(b, answer, None)),
            Fault::FloodEvents(n) => {
                self.out.flood(n);
                self.out.write_with(|b| render(b, answer, id));
            }
            Fault::Disconnect => self.out.close(),
            Fault::Hang => {}
        }
    }

    /// Shut down our sending side and drain the client's input until it closes (or
    /// [`LINGER`] passes), so that it reads a clean end of stream: closing a socket
    /// with unread input makes the peer's next read fail with "connection reset".
    async fn linger(&mut self) {
        let _ = rustix::net::shutdown(self.stream.fd(), rustix::net::Shutdown::Write);
        self.fds.clear();
        if self.scratch.is_empty() {
            self.scratch = vec![0; READ_CHUNK];
        }
        let stream = &self.stream;
        let scratch = &mut self.scratch;
        let _ = tokio::time::timeout(LINGER, async {
            loop {
                if stream.readable().await.is_err() {
                    return;
                }
                match stream.try_read(scratch) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        })
        .await;
    }
}

enum Post {
    None,
    Quit,
}

/// The answer to a command, before it is serialised.
enum Answer<'a> {
    /// `{"return": {}}`.
    Empty,
    /// `{"return": object}` (echo).
    Object(&'a JsonObject),
    Value(Value),
    /// Pre-encoded JSON for `return`.
    Encoded(Arc<[u8]>),
    /// `query-status`.
    Status(bool),
    Error {
        class: &'static str,
        desc: String,
    },
    ErrorOwned {
        class: String,
        desc: String,
    },
    Raw(JsonObject),
    WithId(JsonObject),
    None,
}

impl Answer<'_> {
    fn error(class: &'static str, desc: String) -> Self {
        Answer::Error { class, desc }
    }
}

fn reply_to_answer<'a>(reply: Reply) -> (Answer<'a>, Option<Fault>, Post) {
    let answer = match reply {
        Reply::Return(v) => Answer::Value(v),
        Reply::Error { class, desc } => Answer::ErrorOwned { class, desc },
        Reply::Raw(o) => Answer::Raw(o),
        Reply::WithId(o) => Answer::WithId(o),
        Reply::NoReply => Answer::None,
        Reply::Fault(f) => return (Answer::Empty, Some(f), Post::None),
    };
    (answer, None, Post::None)
}

static EMPTY: std::sync::OnceLock<JsonObject> = std::sync::OnceLock::new();

/// Validate a request like QEMU's `qmp_dispatch_check_obj`: returns the command
/// name, its arguments and whether it is `exec-oob`, or the error description.
fn check_request(
    obj: &JsonObject,
    allow_oob: bool,
) -> std::result::Result<(&str, &JsonObject, bool), String> {
    let mut name = None;
    let mut oob = false;
    let mut args = None;
    for (key, value) in obj {
        match key.as_str() {
            k @ ("execute" | "exec-oob") if k == "execute" || allow_oob => {
                let Value::String(s) = value else {
                    return Err(format!("QMP input member '{k}' must be a string"));
                };
                if name.is_some() {
                    // Both are present: QEMU names the second, whatever the order.
                    return Err("QMP input member 'exec-oob' is unexpected".into());
                }
                name = Some(s.as_str());
                oob = k == "exec-oob";
            }
            "arguments" => match value {
                Value::Object(a) => args = Some(a),
                _ => return Err("QMP input member 'arguments' must be an object".into()),
            },
            "id" => {}
            other => return Err(format!("QMP input member '{other}' is unexpected")),
        }
    }
    let Some(name) = name else {
        return Err("QMP input lacks member 'execute'".into());
    };
    let args = args.unwrap_or_else(|| EMPTY.get_or_init(JsonObject::new));
    Ok((name, args, oob))
}

fn no_arguments<'a>(args: &JsonObject) -> std::result::Result<(), Answer<'a>> {
    match args.keys().next() {
        Some(k) => Err(Answer::error(
            "GenericError",
            format!("Parameter '{k}' is unexpected"),
        )),
        None => Ok(()),
    }
}

fn fdname<'a>(args: &JsonObject) -> std::result::Result<&str, Answer<'a>> {
    for k in args.keys() {
        if k != "fdname" {
            return Err(Answer::error(
                "GenericError",
                format!("Parameter '{k}' is unexpected"),
            ));
        }
    }
    match args.get("fdname") {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Answer::error(
            "GenericError",
            "Invalid parameter type for 'fdname', expected: string".into(),
        )),
        None => Err(Answer::error(
            "GenericError",
            "Parameter 'fdname' is missing".into(),
        )),
    }
}

// ---- output ---------------------------------------------------------------------

/// Output waiting to be written: bytes in `buf` from `pos`, then deferred items that
/// are turned into bytes as the buffer drains (so a flood of events does not sit in
/// memory all at once).
#[derive(Default)]
struct Output {
    buf: Vec<u8>,
    pos: usize,
    backlog: VecDeque<Deferred>,
    backlog_bytes: usize,
    /// A close was queued: nothing more is written after it.
    closing: bool,
    /// The close was reached: close once `buf` is written.
    close_now: bool,
}

enum Deferred {
    Flood { next: u64, end: u64 },
    Bytes(Vec<u8>),
    Close,
}

impl Output {
    fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Bytes waiting, deferred bytes included (floods not counted).
    fn buffered(&self) -> usize {
        self.pending() + self.backlog_bytes
    }

    fn advance(&mut self, n: usize) {
        self.pos += n;
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos >= LOW_WATER && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Append output, in order after everything queued.
    fn write_with(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        if self.closing {
            return;
        }
        if self.backlog.is_empty() {
            f(&mut self.buf);
            return;
        }
        if let Some(Deferred::Bytes(v)) = self.backlog.back_mut() {
            let before = v.len();
            f(v);
            self.backlog_bytes += v.len() - before;
            return;
        }
        let mut v = Vec::new();
        f(&mut v);
        self.backlog_bytes += v.len();
        self.backlog.push_back(Deferred::Bytes(v));
    }

    fn flood(&mut self, n: usize) {
        if !self.closing && n > 0 {
            self.backlog.push_back(Deferred::Flood {
                next: 0,
                end: n as u64,
            });
        }
    }

    /// Close the connection after what is queued so far.
    fn close(&mut self) {
        if !self.closing {
            self.closing = true;
            self.backlog.push_back(Deferred::Close);
        }
    }

    /// Turn deferred output into bytes while little is pending.
    fn refill(&mut self) {
        while self.pending() < LOW_WATER {
            match self.backlog.front_mut() {
                None => return,
                Some(Deferred::Flood { next, end }) => {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default();
                    let (secs, micros) = (now.as_secs(), now.subsec_micros());
                    while *next < *end && self.buf.len() - self.pos < FLOOD_CHUNK {
                        let _ = write!(
                            self.buf,
                            "{{\"event\":\"{FLOOD_EVENT}\",\"data\":{{\"seq\":{next}}},\"timestamp\":{{\"seconds\":{secs},\"microseconds\":{micros}}}}}\r\n"
                        );
                        *next += 1;
                    }
                    if *next >= *end {
                        self.backlog.pop_front();
                    }
                }
                Some(Deferred::Bytes(_)) => {
                    if let Some(Deferred::Bytes(v)) = self.backlog.pop_front() {
                        self.backlog_bytes -= v.len();
                        self.buf.extend_from_slice(&v);
                    }
                }
                Some(Deferred::Close) => {
                    self.backlog.clear();
                    self.backlog_bytes = 0;
                    self.close_now = true;
                    return;
                }
            }
        }
    }
}

// ---- serialisation --------------------------------------------------------------

/// Serialise compact JSON the way [`crate::message::encode`] does (non-ASCII
/// characters escaped), into `out`.
fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let start = out.len();
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.truncate(start);
        out.extend_from_slice(b"null");
        return;
    }
    if !out[start..].is_ascii() {
        // Only string contents can hold non-ASCII characters, so escaping each one
        // keeps the JSON valid.
        let tail = out.split_off(start);
        match String::from_utf8(tail) {
            Ok(s) => {
                for ch in s.chars() {
                    if ch.is_ascii() {
                        out.push(ch as u8);
                    } else {
                        let mut units = [0u16; 2];
                        for u in ch.encode_utf16(&mut units) {
                            let _ = write!(out, "\\u{u:04x}");
                        }
                    }
                }
            }
            Err(e) => out.extend_from_slice(e.as_bytes()),
        }
    }
}

/// A whole message: JSON and CRLF.
fn write_message(out: &mut Vec<u8>, obj: &JsonObject) {
    write_json(out, obj);
    out.extend_from_slice(b"\r\n");
}

fn write_id(out: &mut Vec<u8>, id: Option<&Value>) {
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        write_json(out, id);
    }
}

fn render_error(out: &mut Vec<u8>, class: &str, desc: &str, id: Option<&Value>) {
    out.extend_from_slice(b"{\"error\":{\"class\":");
    write_json(out, class);
    out.extend_from_slice(b",\"desc\":");
    write_json(out, desc);
    out.push(b'}');
    write_id(out, id);
    out.extend_from_slice(b"}\r\n");
}

fn render(out: &mut Vec<u8>, answer: &Answer<'_>, id: Option<&Value>) {
    let body_start = b"{\"return\":";
    match answer {
        Answer::None => return,
        Answer::Error { class, desc } => return render_error(out, class, desc, id),
        Answer::ErrorOwned { class, desc } => return render_error(out, class, desc, id),
        Answer::Raw(obj) => return write_message(out, obj),
        Answer::WithId(obj) => {
            let mut obj = obj.clone();
            if let Some(id) = id {
                obj.insert("id".into(), id.clone());
            }
            return write_message(out, &obj);
        }
        Answer::Empty => {
            out.extend_from_slice(body_start);
            out.extend_from_slice(b"{}");
        }
        Answer::Object(obj) => {
            out.extend_from_slice(body_start);
            write_json(out, *obj);
        }
        Answer::Value(v) => {
            out.extend_from_slice(body_start);
            write_json(out, v);
        }
        Answer::Encoded(bytes) => {
            out.extend_from_slice(body_start);
            out.extend_from_slice(bytes);
        }
        Answer::Status(running) => {
            out.extend_from_slice(body_start);
            out.extend_from_slice(if *running {
                b"{\"status\":\"running\",\"singlestep\":false,\"running\":true}"
            } else {
                b"{\"status\":\"paused\",\"singlestep\":false,\"running\":false}"
            });
        }
    }
    write_id(out, id);
    out.extend_from_slice(b"}\r\n");
}

fn render_oversized(out: &mut Vec<u8>, size: usize, id: Option<&Value>) {
    let mut tail = Vec::new();
    tail.extend_from_slice(b"\"}");
    write_id(&mut tail, id);
    tail.extend_from_slice(b"}\r\n");
    let head = b"{\"return\":{\"data\":\"";
    let pad = size.saturating_sub(head.len() + tail.len());
    out.reserve(head.len() + pad + tail.len());
    out.extend_from_slice(head);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(&tail);
}

/// Displays a JSON object, for logs (formatted only when the log line is enabled).
struct JsonDisplay<'a>(&'a JsonObject);

impl fmt::Display for JsonDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut v = Vec::new();
        write_json(&mut v, self.0);
        f.write_str(&String::from_utf8_lossy(&v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::encode_line as encode;
    use serde_json::json;

    fn obj(v: Value) -> JsonObject {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn rendered(answer: &Answer<'_>, id: Option<&Value>) -> Vec<u8> {
        let mut v = Vec::new();
        render(&mut v, answer, id);
        v
    }

    /// Same JSON, ASCII only, CRLF-terminated (key order is the encoder's business).
    fn assert_same(rendered: Vec<u8>, encoded: Vec<u8>) {
        assert!(rendered.is_ascii() && rendered.ends_with(b"}\r\n"));
        let a: Value = serde_json::from_slice(&rendered).unwrap();
        let b: Value = serde_json::from_slice(&encoded).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn replies_are_encoded_like_message_encode() {
        let id = json!({"n": [1, "é"]});
        let args = obj(json!({"s": "é😀", "n": 1}));
        assert_same(
            rendered(&Answer::Object(&args), Some(&id)),
            encode(&obj(json!({"return": args, "id": id}))),
        );
        assert_same(
            rendered(&Answer::Empty, None),
            encode(&obj(json!({"return": {}}))),
        );
        assert_same(
            rendered(&Answer::error("GenericError", "ü".into()), Some(&json!(1))),
            encode(&obj(
                json!({"error": {"class": "GenericError", "desc": "ü"}, "id": 1}),
            )),
        );
        let status: Value = serde_json::from_slice(&rendered(&Answer::Status(true), None)).unwrap();
        assert_eq!(
            status["return"],
            json!({"status": "running", "running": true, "singlestep": false})
        );
    }

    #[test]
    fn oversized_has_the_requested_size() {
        for size in [0usize, 10, 100, 100_000] {
            let mut v = Vec::new();
            render_oversized(&mut v, size, Some(&json!("abc")));
            let parsed: Value = serde_json::from_slice(&v).unwrap();
            assert_eq!(parsed["id"], "abc");
            if size > 40 {
                assert_eq!(v.len(), size);
            }
        }
    }

    #[test]
    fn request_checks_follow_qemu() {
        let c = |v: Value, oob: bool| {
            check_request(&obj(v), oob).map(|(n, a, o)| (n.to_owned(), a.len(), o))
        };
        assert_eq!(
            c(json!({"execute": "x", "id": 1}), false),
            Ok(("x".into(), 0, false))
        );
        assert_eq!(
            c(json!({"exec-oob": "x", "arguments": {"a": 1}}), true),
            Ok(("x".into(), 1, true))
        );
        assert_eq!(
            c(json!({"exec-oob": "x"}), false).unwrap_err(),
            "QMP input member 'exec-oob' is unexpected"
        );
        assert_eq!(
            c(json!({"id": 1}), false).unwrap_err(),
            "QMP input lacks member 'execute'"
        );
        assert_eq!(
            c(json!({"execute": 1}), false).unwrap_err(),
            "QMP input member 'execute' must be a string"
        );
        assert_eq!(
            c(json!({"execute": "x", "arguments": []}), false).unwrap_err(),
            "QMP input member 'arguments' must be an object"
        );
        assert_eq!(
            c(json!({"execute": "x", "foo": 1}), false).unwrap_err(),
            "QMP input member 'foo' is unexpected"
        );
        assert_eq!(
            c(json!({"execute": "x", "exec-oob": "y"}), true).unwrap_err(),
            "QMP input member 'exec-oob' is unexpected"
        );
    }

    #[test]
    fn output_defers_behind_a_flood_and_closes_last() {
        let mut out = Output::default();
        out.write_with(|b| b.extend_from_slice(b"a"));
        out.flood(3);
        out.write_with(|b| b.extend_from_slice(b"b"));
        out.write_with(|b| b.extend_from_slice(b"c"));
        out.close();
        out.write_with(|b| b.extend_from_slice(b"dropped"));
        assert_eq!(out.buffered(), 3);
        out.refill();
        assert!(out.close_now);
        let text = String::from_utf8(out.buf.clone()).unwrap();
        assert!(
            text.starts_with("a{\"event\":\"FLOOD\",\"data\":{\"seq\":0}"),
            "{text}"
        );
        assert_eq!(text.matches("FLOOD").count(), 3);
        assert!(text.ends_with("}\r\nbc"), "{text}");
    }
}
