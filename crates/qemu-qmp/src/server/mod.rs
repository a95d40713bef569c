//! A QMP server to test clients against, with fault injection.
//!
//! [`TestServer`] speaks QMP the way QEMU's monitor does where it matters to a client:
//! it sends the greeting on connect, accepts nothing but `qmp_capabilities` until
//! negotiation succeeds, echoes request ids verbatim, answers unknown commands with
//! `CommandNotFound`, answers malformed JSON with an id-less `GenericError` and goes on,
//! and serves one connection at a time, one after another. It writes what QEMU writes,
//! byte for byte where a client could tell: QEMU's spacing, escaping and member order
//! (see [`crate::json`](mod@crate::json)), CRLF line ends, the same error classes and texts for the
//! same mistakes (checked against QEMU 10.0 and 7.2 by `tests/server_fidelity.rs`).
//! On top of that, tests can
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
//!     .bind_unix(dir.path().join("qmp.sock"))?;
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
//! reply, like QEMU, and change what `query-status` says), `quit` (emits `SHUTDOWN`,
//! replies, and closes the connection, in QEMU's order; the server then waits for the
//! next one), `query-status` has `singlestep` when the configured version is before
//! 9.0,
//! `getfd` and `closefd` (descriptors passed with `SCM_RIGHTS` on Unix sockets), and
//! `echo`, which returns its arguments. Handlers added with
//! [`TestServerBuilder::handler`] override the built-ins.
//!
//! # Parse errors
//!
//! Requests are read as QEMU reads them, single-quoted strings included (see
//! [`crate::framing`]). Malformed JSON is answered with QEMU's texts (`JSON parse error,
//! invalid keyword 'x'`, `... stray '@'`, `JSON nesting depth limit exceeded`, ...),
//! worded from the raw token the decoder stopped at. Where the server still differs
//! from QEMU:
//!
//! * it answers a malformed line once and goes on after its newline, where QEMU's lexer
//!   recovers token by token and may answer one line more than once (`this that`: two
//!   `invalid keyword` errors; a control character in a string: `stray` and then
//!   `expecting value`);
//! * it refuses nesting deeper than 128 levels (`serde_json`'s limit) with QEMU's
//!   nesting error, where QEMU's limit is 1024;
//! * a member given twice keeps its last value, where QEMU answers `duplicate key`.
//!
//! # Performance
//!
//! The server is fast enough to benchmark clients against: replies are serialised
//! straight into one output buffer (no per-message allocation for the built-in
//! commands), every request that arrived in one read is answered with one write, and
//! event floods are generated lazily as the socket drains. Turn recording off with
//! [`TestServerBuilder::record`] when measuring.

mod builder;
mod connection;
mod dispatch;
mod output;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::address::Address;
use crate::error::{Error, Result};
use crate::framing::{Decoder, FrameError};
use crate::json::{self, Style};
use crate::message::{Event, Greeting, JsonObject, VersionInfo, VersionTriple};
use crate::transport::{Listener, Stream, READ_WINDOW};

pub use builder::{Fault, Reply, TestServerBuilder};
use builder::{FaultHook, Handler};
use connection::{Connection, Ending};
use dispatch::*;
use output::*;

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

/// Bytes read per call while draining a closing connection.
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
/// How long a connection the server closes keeps draining the client's input, so
/// that the client sees a clean end of stream rather than a reset.
const LINGER: Duration = Duration::from_secs(1);

/// A QMP server for tests; see the [module documentation](crate::server).
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
    /// `query-status` has `singlestep` (QEMU before 9.0; 7.2 has it, 10.0 not).
    status_has_singlestep: bool,
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
    /// Connections one after another.
    Listener(Listener),
    /// One end of a socket pair: one connection.
    Pair(Stream),
}

fn spawn_server(shared: Arc<Shared>, listening: Listening) -> JoinHandle<()> {
    let span = tracing::debug_span!("qmp-test-server");
    tokio::spawn(
        async move {
            match listening {
                // Counted as accepted by `socketpair()`.
                Listening::Pair(s) => serve(&shared, s).await,
                Listening::Listener(l) => loop {
                    match l.accept().await {
                        Ok(s) => {
                            shared.counters.send_modify(|c| c.accepted += 1);
                            serve(&shared, s).await;
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

async fn serve(shared: &Arc<Shared>, stream: Stream) {
    debug!("client connected ({})", stream.kind());
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
    }

    #[test]
    fn replies_are_written_as_qemu_writes_them() {
        // Byte for byte as QEMU 10.0 and 7.2 write them.
        let text = |answer: &Answer<'_>, id: Option<&Value>| {
            String::from_utf8(rendered(answer, id)).unwrap()
        };
        assert_eq!(
            text(
                &Answer::Status {
                    running: true,
                    singlestep: true
                },
                Some(&json!([1, {"a": 2}]))
            ),
            "{\"return\": {\"status\": \"running\", \"singlestep\": false, \"running\": true}, \"id\": [1, {\"a\": 2}]}\r\n"
        );
        assert_eq!(
            text(
                &Answer::Status {
                    running: false,
                    singlestep: false
                },
                None
            ),
            "{\"return\": {\"status\": \"paused\", \"running\": false}}\r\n"
        );
        assert_eq!(
            text(
                &Answer::error(
                    "CommandNotFound",
                    "The command nope has not been found".into()
                ),
                Some(&json!("x"))
            ),
            "{\"id\": \"x\", \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}}\r\n"
        );
        assert_eq!(
            text(&Answer::Empty, Some(&json!(7))),
            "{\"return\": {}, \"id\": 7}\r\n"
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

    /// What QEMU 10.0 and 7.2 answer (alike) to malformed input that they
    /// answer with one error, recorded from `qemu-system-x86_64 -machine none`.
    const QEMU_PARSE_ERRORS: &[(&[u8], &str)] = &[
        (
            b"{this is bad}\n",
            "JSON parse error, invalid keyword 'this'",
        ),
        (b"this\n", "JSON parse error, invalid keyword 'this'"),
        (
            b"{\"execute\": x}\n",
            "JSON parse error, invalid keyword 'x'",
        ),
        (
            b"{\"execute\": tru}\n",
            "JSON parse error, invalid keyword 'tru'",
        ),
        (
            b"{\"execute\": nul, \"id\": 1}\n",
            "JSON parse error, invalid keyword 'nul'",
        ),
        (
            b"{\"a\": truex}\n",
            "JSON parse error, invalid keyword 'truex'",
        ),
        (b"{\"a\": [tr]}\n", "JSON parse error, invalid keyword 'tr'"),
        (b"}\n", "JSON parse error, expecting value"),
        (b"]\n", "JSON parse error, expecting value"),
        (b",\n", "JSON parse error, expecting value"),
        (b":\n", "JSON parse error, expecting value"),
        (
            b"{\"execute\":\"query-status\",}\n",
            "JSON parse error, expecting value",
        ),
        (
            b"{\"a\" \"b\"}\n",
            "JSON parse error, missing : in object pair",
        ),
        (
            b"{1: 2}\n",
            "JSON parse error, key is not a string in object",
        ),
        (
            b"{\"a\": 1 \"b\": 2}\n",
            "JSON parse error, expected separator in dict",
        ),
        (b"[1 2]\n", "JSON parse error, expected separator in list"),
        (
            b"{\"a\": \"\\x\"}\n",
            "JSON parse error, invalid escape sequence in string",
        ),
        (
            b"{'a': '\\q'}\n",
            "JSON parse error, invalid escape sequence in string",
        ),
        (
            b"{\"a\": \"\\ud800\"}\n",
            "JSON parse error, \\ud800 is not a valid Unicode character",
        ),
        (
            b"{\"a\": \"\xc0\"}\n",
            "JSON parse error, invalid UTF-8 sequence in string",
        ),
        (
            b"{\"a\": \"\xe2\x82\"}\n",
            "JSON parse error, invalid UTF-8 sequence in string",
        ),
        (
            b"{\"a\": \"\xed\xa0\x80\"}\n",
            "JSON parse error, invalid UTF-8 sequence in string",
        ),
        (b"{\"a\": 1.}\n", "JSON parse error, stray '1.}'"),
        (b"{\"a\": -}\n", "JSON parse error, stray '-}'"),
        (b"{\"a\": 1e}\n", "JSON parse error, stray '1e}'"),
        (b"@\n", "JSON parse error, stray '@'"),
        (b"\xc0\n", "JSON parse error, stray '\u{fffd}'"),
    ];

    fn parse_error_of(input: &[u8]) -> String {
        let mut d = Decoder::default();
        d.extend(input);
        match d.decode(false) {
            Err(FrameError::Malformed { source, token, .. }) => qemu_parse_error(&source, &token),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn parse_errors_are_worded_as_qemu_words_them() {
        for (input, qemu) in QEMU_PARSE_ERRORS {
            assert_eq!(
                parse_error_of(input),
                *qemu,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let mut deep = b"[".repeat(1025);
        deep.push(b'\n');
        assert_eq!(parse_error_of(&deep), "JSON nesting depth limit exceeded");
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
            text.starts_with("a{\"timestamp\": {\"seconds\": "),
            "{text}"
        );
        assert_eq!(text.matches("FLOOD").count(), 3);
        assert!(
            text.contains("\"event\": \"FLOOD\", \"data\": {\"seq\": 2}}\r\n"),
            "{text}"
        );
        assert!(text.ends_with("}\r\nbc"), "{text}");
    }
}
