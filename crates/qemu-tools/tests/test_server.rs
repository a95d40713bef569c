//! The `qmp-test-server` binary, run as a subprocess: our own client against it, a raw
//! socket, and its command line. Every child is killed when its test ends (panics
//! included), and every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use qemu_qmp::{json, Client, Error, ProtocolError, Value};
use rustix::process::{kill_process, Pid, Signal};

const BIN: &str = env!("CARGO_BIN_EXE_qmp-test-server");
/// The bound on every wait.
const T: Duration = Duration::from_secs(15);

/// A running `qmp-test-server`, killed on drop.
struct Server {
    child: Child,
    /// The address from the first line of its standard output.
    address: String,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_reader: Option<thread::JoinHandle<()>>,
    /// Holds the socket (and script) while the server runs.
    _dir: tempfile::TempDir,
}

impl Server {
    /// Start it with a Unix socket in a fresh directory, and `args`.
    fn unix(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let mut all = vec!["--socket", sock.to_str().unwrap()];
        all.extend_from_slice(args);
        Server::start(&all, dir)
    }

    /// Start it on TCP port 0 of the loopback, and `args`.
    fn tcp(args: &[&str]) -> Server {
        let mut all = vec!["--tcp", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Server::start(&all, tempfile::tempdir().unwrap())
    }

    fn start(args: &[&str], dir: tempfile::TempDir) -> Server {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
        let (stderr, stderr_reader) = collect(child.stderr.take().unwrap());
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            // Keep the pipe open (and drained) until the server exits.
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
        let mut server = Server {
            child,
            address: String::new(),
            stderr,
            stderr_reader: Some(stderr_reader),
            _dir: dir,
        };
        let line = rx.recv_timeout(T).unwrap_or_else(|_| {
            panic!(
                "no address on stdout within {T:?}; stderr:\n{}",
                server.stderr()
            )
        });
        server.address = line
            .trim_end()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "first stdout line {line:?} is not 'listening on ...'; stderr:\n{}",
                    server.stderr()
                )
            })
            .to_owned();
        server
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    fn signal(&self, sig: Signal) {
        let pid = Pid::from_raw(self.child.id() as i32).unwrap();
        kill_process(pid, sig).unwrap();
    }

    /// Wait for it to exit (bounded), then for its standard error to be read.
    fn wait(&mut self) -> ExitStatus {
        let status = wait_bounded(&mut self.child);
        if let Some(r) = self.stderr_reader.take() {
            let _ = r.join();
        }
        status
    }

    async fn client(&self) -> Client {
        Client::builder()
            .connect_timeout(T)
            .connect(self.address.as_str())
            .await
            .unwrap_or_else(|e| panic!("connect: {e}; stderr:\n{}", self.stderr()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Read a pipe to its end on a thread.
fn collect(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, thread::JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    let handle = thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => b.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    });
    (buf, handle)
}

/// Wait for a child to exit, killing it (and failing) after T.
fn wait_bounded(child: &mut Child) -> ExitStatus {
    let mut status = None;
    if !qemu_testkit::poll_until(T, || {
        status = child.try_wait().unwrap();
        status.is_some()
    }) {
        let _ = child.kill();
        let _ = child.wait();
        panic!("qmp-test-server did not exit within {T:?}");
    }
    status.expect("exited")
}

/// Run the binary to completion (bounded): status, stdout, stderr.
fn run(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, out_reader) = collect(child.stdout.take().unwrap());
    let (err, err_reader) = collect(child.stderr.take().unwrap());
    let status = wait_bounded(&mut child);
    let _ = out_reader.join();
    let _ = err_reader.join();
    let text = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
    (status, text(&out), text(&err))
}

fn write_script(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("script.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

/// A server on a Unix socket with this script (and more arguments).
fn scripted(script: &str, args: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let path = write_script(dir.path(), script);
    let sock = dir.path().join("qmp.sock");
    let mut all = vec![
        "--socket",
        sock.to_str().unwrap(),
        "--script",
        path.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    Server::start(&all, dir)
}

/// Await with the test bound.
async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f).await.expect("timed out")
}

/// The error that ended the session, from a command it interrupted.
fn interrupted_cause(e: Error) -> Error {
    match e.disconnect_cause() {
        Some(cause) => cause.clone(),
        None => panic!("expected Disconnected with a cause, got {e:?}"),
    }
}

const SCRIPT: &str = r#"
# replies for the tests
{"on": "query-status", "reply": {"return": {"status": "prelaunch", "running": false, "singlestep": false}}}
{"on": "frob", "reply": {"error": {"class": "DeviceNotFound", "desc": "Device 'x' not found"}}}
{"on": "stop", "reply": {"return": {}}, "events": [{"event": "STOP", "data": {"why": "script"}}, {"event": "AFTER"}]}
{"on": "pick", "args": {"n": 1, "deep": {"k": "v"}}, "reply": {"return": "one"}}
{"on": "pick", "reply": {"return": "any"}, "times": 1}
{"on": "query-name", "reply": {"return": {"name": "vm1"}}}
"#;

#[tokio::test]
async fn script_replies_errors_and_events() {
    let mut server = scripted(SCRIPT, &[]);
    let qmp = server.client().await;

    let status = bounded(qmp.execute("query-status", None)).await.unwrap();
    assert_eq!(status["status"], "prelaunch");
    assert_eq!(status["running"], false);

    let err = bounded(qmp.execute("frob", None)).await.unwrap_err();
    let exec = err.as_execute_error().expect("an error reply");
    assert_eq!(exec.error_class(), "DeviceNotFound");
    assert_eq!(exec.desc(), "Device 'x' not found");

    // Events after the reply, in the script's order.
    let mut events = qmp.listen(["STOP", "AFTER"]);
    bounded(qmp.execute("stop", None)).await.unwrap();
    let stop = events.recv_timeout(T).await.unwrap();
    assert_eq!(stop.name(), "STOP");
    assert_eq!(stop.data(), &json!({"why": "script"}));
    assert!(stop.timestamp().is_some());
    assert_eq!(events.recv_timeout(T).await.unwrap().name(), "AFTER");

    // Arguments match by subset; "times" uses a line up.
    let pick = |args: Value| qmp.execute("pick", Some(args));
    assert_eq!(
        bounded(pick(
            json!({"n": 1, "deep": {"k": "v", "extra": 2}, "more": true})
        ))
        .await
        .unwrap(),
        "one"
    );
    assert_eq!(bounded(pick(json!({"n": 2}))).await.unwrap(), "any");
    let used_up = bounded(pick(json!({"n": 2}))).await.unwrap_err();
    assert_eq!(used_up.error_class(), Some("GenericError"));
    assert!(
        used_up.to_string().contains("no script line for 'pick'"),
        "{used_up}"
    );

    // Unknown commands are QEMU's CommandNotFound; built-ins still work.
    let err = bounded(qmp.execute("no-such-command", None))
        .await
        .unwrap_err();
    assert_eq!(err.error_class(), Some("CommandNotFound"));
    assert_eq!(
        bounded(qmp.execute("echo", Some(json!({"a": 1}))))
            .await
            .unwrap(),
        json!({"a": 1})
    );
    qmp.disconnect().await.unwrap();

    // Each request is logged as a JSON line on stderr.
    server.signal(Signal::TERM);
    assert!(server.wait().success());
    let log: Vec<Value> = server
        .stderr()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let names: Vec<&str> = log.iter().filter_map(|r| r["execute"].as_str()).collect();
    assert_eq!(
        names,
        [
            "qmp_capabilities",
            "query-status",
            "frob",
            "stop",
            "pick",
            "pick",
            "pick",
            "no-such-command",
            "echo"
        ]
    );
    assert_eq!(log[8]["arguments"], json!({"a": 1}));
}

#[tokio::test]
async fn timer_events_arrive_while_a_client_is_connected() {
    let mut server = scripted(
        r#"{"every_ms": 50, "event": {"event": "TICK", "data": {"n": 1}}}"#,
        &["-q"],
    );
    // Connect while ticks are being emitted: none may come before the reply to
    // qmp_capabilities (our client would cope; Python's qemu.qmp would not). The
    // timer runs from before the server prints its address (which `scripted` waits
    // for), and sends only to a connected client, so there is nothing to wait for.
    for _ in 0..2 {
        let qmp = server.client().await;
        let mut ticks = qmp.listen(["TICK"]);
        for _ in 0..2 {
            let tick = ticks.recv_timeout(T).await.unwrap();
            assert_eq!(tick.data(), &json!({"n": 1}));
        }
        qmp.disconnect().await.unwrap();
    }
    server.signal(Signal::TERM);
    assert!(server.wait().success());
    assert_eq!(server.stderr(), "", "-q logs nothing");
}

#[test]
fn timer_events_never_precede_the_negotiation_reply() {
    // A raw client that reads the reply to qmp_capabilities as the next line, as
    // simple clients (and Python's qemu.qmp) do.
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(
        dir.path(),
        r#"{"every_ms": 10, "event": {"event": "TICK"}}"#,
    );
    let server = Server::tcp(&["-q", "--script", script.to_str().unwrap()]);
    for _ in 0..5 {
        let mut s = RawClient::connect(&server.address);
        s.line(); // greeting
                  // Not synchronisation: a client slow to negotiate is the case under test.
                  // Ticks fall due (every 10 ms) while it has not negotiated, and the server
                  // must drop them rather than send them before the reply. Scheduling can
                  // only make the case happen less often, never fail the test.
                  // TODO(sync): the test cannot see that a tick fell due in this window;
                  // the server would have to count (or log) the timer events it dropped
                  // before negotiation, and the test would wait for that count to grow.
        thread::sleep(Duration::from_millis(40));
        s.send(br#"{"execute": "qmp_capabilities"}"#);
        assert_eq!(s.line(), json!({"return": {}}));
        assert_eq!(s.line()["event"], "TICK");
    }
}

#[tokio::test]
async fn faults_from_the_command_line() {
    let server = Server::unix(&[
        "-q",
        "--fault",
        "echo=close-mid-message,times=1",
        "--fault",
        "query-version=garbage",
        "--fault",
        "query-status=delay:300ms",
        "--fault",
        "hangs=hang",
        "--fault",
        "flood=flood:1000",
    ]);

    // close-mid-message: the session ends with ConnectionClosed { mid_message }.
    let qmp = server.client().await;
    let err = bounded(qmp.execute("echo", Some(json!({"pad": "x".repeat(100)}))))
        .await
        .unwrap_err();
    assert!(
        matches!(
            interrupted_cause(err),
            Error::ConnectionClosed { mid_message: true }
        ),
        "wrong cause"
    );
    let _ = qmp.disconnect().await;

    // The next client: the echo fault is used up; garbage is a frame error.
    let qmp = server.client().await;
    assert_eq!(
        bounded(qmp.execute("echo", Some(json!({"k": 1}))))
            .await
            .unwrap(),
        json!({"k": 1})
    );
    // delay: the real reply (the built-in still runs), late.
    let start = Instant::now();
    let status = bounded(qmp.execute("query-status", None)).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(status["status"], "running");
    // hang: no reply.
    let err = qmp
        .request("hangs")
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    // flood: the events, then the reply (CommandNotFound: no such command).
    let mut floods = qmp.listen([qemu_qmp::server::FLOOD_EVENT]);
    let err = bounded(qmp.execute("flood", None)).await.unwrap_err();
    assert_eq!(err.error_class(), Some("CommandNotFound"));
    for seq in 0..1000 {
        let e = floods.recv_timeout(T).await.unwrap();
        assert_eq!(e.data()["seq"], seq);
    }
    let err = bounded(qmp.execute("query-version", None))
        .await
        .unwrap_err();
    let cause = interrupted_cause(err);
    assert!(
        matches!(cause, Error::Protocol(ProtocolError::Frame(_))),
        "{cause:?}"
    );
    let _ = qmp.disconnect().await;
}

#[tokio::test]
async fn any_command_faults_spare_the_negotiation() {
    let server = Server::unix(&["-q", "--fault", "*=disconnect,times=1"]);
    let qmp = server.client().await;
    let err = bounded(qmp.execute("query-status", None))
        .await
        .unwrap_err();
    assert!(err.is_disconnected(), "{err:?}");
    let _ = qmp.disconnect().await;
    let qmp = server.client().await;
    bounded(qmp.execute("query-status", None)).await.unwrap();
    qmp.disconnect().await.unwrap();
}

#[tokio::test]
async fn script_faults_and_unknown_ids() {
    let server = scripted(
        r#"{"on": "slow", "reply": {"return": "late"}, "fault": {"delay_ms": 300}}
{"on": "lost", "reply": {"return": 1}, "fault": "unknown-id"}
{"on": "big", "fault": {"oversized": 200000}}"#,
        &["-q"],
    );
    let qmp = server.client().await;
    // The delayed reply is the scripted one; a later command overtakes it.
    let slow = qmp.execute("slow", None);
    let fast = qmp.execute("echo", Some(json!({"n": 1})));
    let (slow, fast) = bounded(async { tokio::join!(slow, fast) }).await;
    assert_eq!(slow.unwrap(), "late");
    assert_eq!(fast.unwrap(), json!({"n": 1}));
    let err = qmp
        .request("lost")
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    let big = bounded(qmp.execute("big", None)).await.unwrap();
    assert!(big["data"].as_str().unwrap().len() > 190_000);
    qmp.disconnect().await.unwrap();
}

#[tokio::test]
async fn two_clients_one_after_another() {
    let server = scripted(SCRIPT, &["-q"]);
    for _ in 0..2 {
        let qmp = server.client().await;
        let name = bounded(qmp.execute("query-name", None)).await.unwrap();
        assert_eq!(name["name"], "vm1");
        qmp.disconnect().await.unwrap();
    }
    // `quit` closes the connection; the server serves the next client.
    let qmp = server.client().await;
    let _ = bounded(qmp.execute("quit", None)).await;
    let _ = bounded(qmp.wait_disconnected()).await;
    let qmp = server.client().await;
    bounded(qmp.execute("query-name", None)).await.unwrap();
}

#[tokio::test]
async fn greeting_version_and_capabilities() {
    let server = Server::tcp(&[
        "-q",
        "--version-string",
        "8.1.2",
        "--package",
        "v8.1.2-test",
        "--no-oob",
    ]);
    let qmp = server.client().await;
    let greeting = qmp.greeting().unwrap();
    assert_eq!(greeting.version.qemu.to_string(), "8.1.2");
    assert_eq!(greeting.version.package, "v8.1.2-test");
    assert!(greeting.capabilities.is_empty());
    assert!(!qmp.oob_enabled());
    let v = bounded(qmp.execute("query-version", None)).await.unwrap();
    assert_eq!(v["qemu"], json!({"major": 8, "minor": 1, "micro": 2}));
    qmp.disconnect().await.unwrap();

    let server = Server::tcp(&["-q", "--capabilities", "oob,frobnicate"]);
    let qmp = server.client().await;
    assert_eq!(
        qmp.greeting().unwrap().capabilities,
        ["oob".to_owned(), "frobnicate".to_owned()]
    );
    assert!(qmp.oob_enabled());
}

/// A raw connection, as a script in another language would make.
struct RawClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RawClient {
    fn connect(address: &str) -> RawClient {
        let s = TcpStream::connect(address).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.set_write_timeout(Some(T)).unwrap();
        RawClient {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }

    /// Send without a newline, as Python's `json.dumps` + `sendall` does.
    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// Wait until the server has read everything sent so far: the kernel has
    /// had it acknowledged (nothing left in our send queue) and the server's
    /// receive queue is empty, as `/proc/net/tcp` shows.
    fn wait_until_read(&self) {
        let ours = self.writer.local_addr().unwrap();
        let server = self.writer.peer_addr().unwrap();
        qemu_testkit::wait_until(T, "the server to read what was sent", || {
            let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
            let sent = tcp_queues(&text, ours, server).map(|(tx, _)| tx);
            let unread = tcp_queues(&text, server, ours).map(|(_, rx)| rx);
            sent == Some(0) && unread == Some(0)
        });
    }

    /// The next message: one CRLF-terminated line.
    fn line(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read (bounded)");
        assert!(line.ends_with("\r\n"), "{line:?}");
        serde_json::from_str(&line).unwrap()
    }
}

/// `(tx_queue, rx_queue)` of the IPv4 TCP socket from `local` to `remote` in
/// `text`, the contents of `/proc/net/tcp`: bytes sent and not yet acknowledged,
/// and bytes received that the program has not read.
fn tcp_queues(text: &str, local: SocketAddr, remote: SocketAddr) -> Option<(u64, u64)> {
    // The kernel prints the address as it is in memory, as a native-endian u32
    // in hex, and the port as a number in hex.
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(a) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(a.ip().octets()),
            a.port()
        ),
        SocketAddr::V6(a) => panic!("not IPv4: {a}"),
    };
    let (local, remote) = (hex(local), hex(remote));
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&local.as_str()) || f.get(2) != Some(&remote.as_str()) {
            return None;
        }
        let (tx, rx) = f.get(4)?.split_once(':')?;
        Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

#[test]
fn raw_socket_python_style() {
    let server = Server::tcp(&["-q"]);
    assert!(
        server.address.starts_with("127.0.0.1:"),
        "{}",
        server.address
    );
    assert!(!server.address.ends_with(":0"));
    let mut s = RawClient::connect(&server.address);
    let greeting = s.line();
    assert_eq!(greeting["QMP"]["version"]["qemu"]["major"], 9);
    assert_eq!(greeting["QMP"]["capabilities"], json!(["oob"]));

    s.send(br#"{"execute": "query-status"}"#);
    let r = s.line();
    assert_eq!(r["error"]["class"], "CommandNotFound");
    assert_eq!(
        r["error"]["desc"],
        "Expecting capabilities negotiation with 'qmp_capabilities'"
    );
    s.send(br#"{"execute": "qmp_capabilities"}"#);
    assert_eq!(s.line(), json!({"return": {}}));
    s.send(br#"{"execute": "query-status", "id": "a"}"#);
    assert_eq!(
        s.line(),
        // The default version, 9.2.0, has no `singlestep` any more.
        json!({"return": {"status": "running", "running": true}, "id": "a"})
    );
    s.send(br#"{"execute": "nope", "id": 7}"#);
    assert_eq!(
        s.line(),
        json!({"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}, "id": 7})
    );
    // A message in two parts, the server reading the first before the second
    // is sent.
    s.send(b"{\"execute\": ");
    s.wait_until_read();
    s.send(br#""echo", "arguments": {"x": [1, 2]}, "id": {"k": 1}}"#);
    assert_eq!(s.line(), json!({"return": {"x": [1, 2]}, "id": {"k": 1}}));
}

#[tokio::test]
async fn no_greeting_guest_agent_style() {
    let server = scripted(
        r#"{"on": "guest-info", "reply": {"return": {"version": "9.2.0", "supported_commands": []}}}"#,
        &["-q", "--no-greeting"],
    );
    let raw = Client::builder()
        .await_greeting(false)
        .negotiate(false)
        .connect_timeout(T)
        .connect(server.address.as_str())
        .await
        .unwrap();
    assert!(raw.greeting().is_none());
    let info = bounded(raw.execute("guest-info", None)).await.unwrap();
    assert_eq!(info["version"], "9.2.0");
    raw.disconnect().await.unwrap();

    // The agent handshake: 0xFF and guest-sync-delimited.
    let agent = Client::builder()
        .guest_agent()
        .connect_timeout(T)
        .connect(server.address.as_str())
        .await
        .unwrap();
    assert_eq!(
        bounded(agent.execute("guest-ping", None)).await.unwrap(),
        json!({})
    );
    let info = bounded(agent.execute("guest-info", None)).await.unwrap();
    assert_eq!(info["version"], "9.2.0");
    agent.disconnect().await.unwrap();
}

#[test]
fn bad_script_exits_1_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(
        dir.path(),
        "{\"on\": \"a\"}\n\n{\"on\": \"b\", \"reply\": {\"retrun\": {}}}\n",
    );
    let sock = dir.path().join("qmp.sock");
    let (status, stdout, stderr) = run(&[
        "--socket",
        sock.to_str().unwrap(),
        "--script",
        script.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(stderr.contains("unknown member \"retrun\""), "{stderr}");
    assert!(!sock.exists());

    std::fs::write(&script, "{\"on\": \"a\"\n").unwrap();
    let (status, _, stderr) = run(&[
        "--socket",
        sock.to_str().unwrap(),
        "--script",
        script.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("line 1: not valid JSON"), "{stderr}");

    let missing = dir.path().join("missing.jsonl");
    let (status, _, stderr) = run(&[
        "--socket",
        sock.to_str().unwrap(),
        "--script",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("cannot read the script"), "{stderr}");
}

#[test]
fn bad_usage_and_busy_addresses_are_clear_errors() {
    let (status, _, stderr) = run(&["--tcp", "127.0.0.1:0", "--fault", "x=explode"]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("unknown fault 'explode'"), "{stderr}");
    let (status, _, stderr) = run(&["--tcp", "127.0.0.1:0", "--version-string", "nine"]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("MAJOR.MINOR.MICRO"), "{stderr}");
    let (status, _, _) = run(&["--script", "x"]);
    assert_eq!(status.code(), Some(2));

    // A socket path that exists.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("taken");
    std::fs::write(&sock, "").unwrap();
    let (status, stdout, stderr) = run(&["--socket", sock.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1));
    assert_eq!(stdout, "");
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    assert!(sock.exists(), "someone else's file is left alone");
}

#[tokio::test]
async fn sigterm_and_sigint_exit_0_and_remove_the_socket() {
    for sig in [Signal::TERM, Signal::INT] {
        let mut server = Server::unix(&["-q"]);
        let path = PathBuf::from(&server.address);
        assert!(path.exists());
        // With a client connected.
        let qmp = server.client().await;
        bounded(qmp.execute("query-status", None)).await.unwrap();
        server.signal(sig);
        let status = server.wait();
        assert!(status.success(), "{sig:?}: {status}");
        assert!(!path.exists(), "{sig:?}: socket file left behind");
        let _ = bounded(qmp.wait_disconnected()).await;
    }
}

#[tokio::test]
async fn log_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.log");
    let mut server = Server::unix(&["--log", log.to_str().unwrap()]);
    let qmp = server.client().await;
    bounded(qmp.execute("echo", Some(json!({"é": "ü"}))))
        .await
        .unwrap();
    qemu_testkit::wait_until(T, "two log lines", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() == 2)
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["execute"], "qmp_capabilities");
    assert_eq!(lines[1]["arguments"], json!({"é": "ü"}));
    server.signal(Signal::TERM);
    assert!(server.wait().success());
    assert_eq!(server.stderr(), "", "the log went to the file");
}

#[test]
fn help_documents_the_options() {
    let (status, stdout, _) = run(&["--help"]);
    assert!(status.success());
    for needle in [
        "--socket",
        "--tcp",
        "--script",
        "--fault",
        "--version-string",
        "--package",
        "--capabilities",
        "--no-oob",
        "--no-greeting",
        "--log",
        "--quiet",
        "close-mid-message",
        "oversized:BYTES",
        "every_ms",
        "listening on",
        "EXAMPLES",
    ] {
        assert!(stdout.contains(needle), "--help lacks {needle}");
    }
}
