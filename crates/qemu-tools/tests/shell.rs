//! qmp-shell and qmp-shell-wrap end to end: the real binaries on a pseudo-terminal
//! (expectrl), against a real `qemu-system-x86_64 -machine none`.
//!
//! QEMU's monitors listen on sockets the test binds and hands over as inherited
//! descriptors (see the shared harness), so the shell can connect at once. Each test
//! skips with a `SKIPPED:` line when QEMU is missing (and fails under `CI=true`).
//! The terminal tests run one at a time: expectrl polls, and two CPUs are shared with
//! QEMU and the shell.

use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use expectrl::process::unix::WaitStatus;
use expectrl::session::OsSession;
use expectrl::Session;
use qemu_testkit::{is_event, QemuProcess, QemuVersion, RawQmp};
use serde_json::{json, Value};

/// The longest any single expectation may wait.
const TIMEOUT: Duration = Duration::from_secs(30);

const SHELL: &str = env!("CARGO_BIN_EXE_qmp-shell");
const WRAP: &str = env!("CARGO_BIN_EXE_qmp-shell-wrap");

/// One terminal test at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// QEMU with two QMP monitors, each listening on a socket in its directory: one for
/// the shell, one for the test to act on QEMU behind the shell's back.
struct Qemu {
    /// Killed and reaped on drop.
    process: QemuProcess,
    qmp: PathBuf,
    qmp2: PathBuf,
}

/// The version of the QEMU the tests run against.
fn qemu_version() -> QemuVersion {
    qemu_testkit::version_of(&qemu_testkit::qemu_system().expect("looked up before"))
}

/// Whether `reply` is the reply to `query-status` in run state `status`. The
/// deprecated `singlestep` member is there (and false) in QEMU 7.2 and gone in 10.0;
/// other versions are not asked about it.
fn is_status(reply: &Value, status: &str, running: bool) -> bool {
    let Some(r) = reply.get("return").and_then(Value::as_object) else {
        return false;
    };
    let v = qemu_version();
    let singlestep_ok = if v.is(7, 2) {
        r.get("singlestep") == Some(&Value::Bool(false))
    } else if v.at_least(10, 0) {
        !r.contains_key("singlestep")
    } else {
        true
    };
    r.get("status") == Some(&json!(status))
        && r.get("running") == Some(&json!(running))
        && singlestep_ok
}

fn start_qemu() -> Option<Qemu> {
    start_qemu_with(&[])
}

/// [`start_qemu`] with more arguments (`-S`).
fn start_qemu_with(extra: &[&str]) -> Option<Qemu> {
    qemu_testkit::qemu_system()?;
    let process = QemuProcess::system_with_monitors(2, extra);
    let (qmp, qmp2) = (process.monitor_path(1), process.monitor_path(2));
    Some(Qemu { process, qmp, qmp2 })
}

/// A program on a pseudo-terminal, with a transcript for failure messages.
struct Pty {
    session: OsSession,
    /// Output not consumed by an expectation yet.
    pending: Vec<u8>,
    /// Everything the program wrote.
    transcript: Vec<u8>,
    eof: bool,
}

impl Pty {
    fn spawn(program: &str, args: &[&str], history: &Path) -> Pty {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("TERM", "xterm")
            .env("QMP_SHELL_HISTORY", history)
            .env_remove("QMP_SOCKET")
            .env_remove("RUST_LOG");
        let mut session = Session::spawn(cmd).expect("spawn on a pty");
        session.set_expect_timeout(Some(TIMEOUT));
        // Wide enough that no line the tests type or expect wraps.
        session
            .get_process_mut()
            .set_window_size(250, 50)
            .expect("set the window size");
        Pty {
            session,
            pending: Vec::new(),
            transcript: Vec::new(),
            eof: false,
        }
    }

    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.transcript).into_owned()
    }

    /// Read what is available; false when nothing was.
    fn fill(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        match self.session.try_read(&mut buf) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                self.transcript.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            // EIO: the program has exited and closed the terminal.
            Err(_) => {
                self.eof = true;
                false
            }
        }
    }

    /// Read what is available, up to 64 KiB (so that a program that never stops
    /// printing cannot keep a bounded wait from checking its deadline).
    fn drain(&mut self) {
        for _ in 0..16 {
            if !self.fill() {
                break;
            }
        }
    }

    /// Read (at most [`TIMEOUT`]) until `needle` has been printed; returns the
    /// output before it.
    #[track_caller]
    fn expect(&mut self, needle: &str) -> String {
        let appeared = qemu_testkit::poll_until(TIMEOUT, || {
            self.drain();
            self.eof || find(&self.pending, needle.as_bytes()).is_some()
        });
        if let Some(i) = find(&self.pending, needle.as_bytes()) {
            let before = String::from_utf8_lossy(&self.pending[..i]).into_owned();
            self.pending.drain(..i + needle.len());
            return before;
        }
        if appeared {
            panic!(
                "the program ended before printing {needle:?}; it printed:\n{}",
                self.shown()
            );
        }
        panic!(
            "no {needle:?} within {TIMEOUT:?}; the program printed:\n{}",
            self.shown()
        );
    }

    fn send(&mut self, text: &str) {
        self.session
            .write_all(text.as_bytes())
            .expect("write to the pty");
        self.session.flush().expect("flush the pty");
    }

    /// Type text as a user does (several keys to a write, as a fast typist or a slow
    /// link delivers them), and wait for the line editor to show it. Control keys go
    /// one at a time with [`Pty::send`], after the effect of the previous one is
    /// visible.
    #[track_caller]
    fn type_text(&mut self, text: &str) {
        self.send(text);
        self.expect(text);
    }

    /// Send text as a bracketed paste, without waiting.
    fn paste(&mut self, text: &str) {
        self.send(&format!("\x1b[200~{text}\x1b[201~"));
    }

    /// Type a line and press Enter.
    #[track_caller]
    fn line(&mut self, text: &str) {
        self.type_text(text);
        self.send("\r");
    }

    /// Wait for a line holding a JSON object for which `pred` is true (other lines
    /// are skipped); returns it. Comparing values, not text, keeps the tests
    /// independent of the order of members.
    #[track_caller]
    fn expect_json_where(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            assert!(
                Instant::now() < deadline,
                "no JSON line with {what} within {TIMEOUT:?}; the program printed:\n{}",
                self.shown()
            );
            let line = self.expect("\r\n");
            if let Some(v) = line
                .find('{')
                .and_then(|i| serde_json::from_str::<Value>(line[i..].trim_end()).ok())
            {
                if pred(&v) {
                    return v;
                }
            }
        }
    }

    /// Wait for a line holding exactly this JSON value.
    #[track_caller]
    fn expect_json(&mut self, expected: Value) {
        let what = expected.to_string();
        self.expect_json_where(&what, |v| *v == expected);
    }

    /// Wait (bounded) for the program to exit; returns its exit code.
    #[track_caller]
    fn wait_exit(&mut self) -> i32 {
        let mut code = None;
        let exited = qemu_testkit::poll_until(TIMEOUT, || {
            // Keep draining, so the program never blocks on a full terminal.
            self.drain();
            match self.session.get_process().status() {
                Ok(WaitStatus::Exited(_, c)) => code = Some(c),
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    panic!("killed by {sig:?}; it printed:\n{}", self.shown())
                }
                Ok(_) => {}
                Err(e) => panic!("waitpid: {e}"),
            }
            code.is_some()
        });
        match code {
            Some(code) if exited => code,
            _ => panic!(
                "still running after {TIMEOUT:?}; it printed:\n{}",
                self.shown()
            ),
        }
    }

    fn pid(&self) -> u32 {
        self.session.get_process().pid().as_raw() as u32
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether the main thread of `pid` (a shell, whose current-thread tokio runtime
/// runs there) is asleep in `epoll_wait`, that is, its runtime has nothing to run
/// and waits for I/O, a timer or a signal. From `/proc`: the kernel function it
/// sleeps in, or else the number of the system call it is in (x86_64 numbers:
/// epoll_wait, epoll_pwait, epoll_pwait2).
fn runtime_asleep(pid: u32) -> bool {
    let task = format!("/proc/{pid}/task/{pid}");
    let read = |what: &str| std::fs::read_to_string(format!("{task}/{what}")).unwrap_or_default();
    let state = read("stat")
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    if state != Some('S') {
        return false;
    }
    let wchan = read("wchan");
    let syscall = read("syscall");
    wchan.contains("epoll")
        || matches!(
            syscall.split_whitespace().next(),
            Some("232" | "281" | "441")
        )
}

/// A temporary directory for a history file.
fn history_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("qmp-shell-history-")
        .tempdir()
        .expect("temporary directory")
}

/// Start qmp-shell on QEMU's first monitor and wait for the prompt.
fn shell(qemu: &Qemu, args: &[&str], history: &Path) -> Pty {
    let path = qemu.qmp.to_str().expect("UTF-8 path");
    let mut all: Vec<&str> = args.to_vec();
    all.push(path);
    let mut pty = Pty::spawn(SHELL, &all, history);
    pty.expect("(QEMU) ");
    pty
}

#[test]
fn a_command_and_its_reply_then_an_error_reply() {
    let _serial = serial();
    let Some(qemu) = start_qemu() else { return };
    let hist = history_dir();
    let path = qemu.qmp.to_str().unwrap();
    let mut sh = Pty::spawn(SHELL, &[path], &hist.path().join("h"));
    let banner = sh.expect("(QEMU) ");
    assert!(
        banner.contains("Welcome to the QMP low-level shell!"),
        "{banner}"
    );
    let connected = format!("Connected to QEMU {}\r\n", qemu_version());
    assert!(banner.contains(&connected), "{banner}");

    sh.line("query-status");
    sh.expect_json_where("status running", |v| is_status(v, "running", true));
    sh.expect("(QEMU) ");

    // A command the schema accepts and QEMU refuses: QEMU's error reply.
    sh.line("qom-get path=/no-such-object property=type");
    sh.expect_json(
        json!({"error": {"class": "DeviceNotFound", "desc": "Device '/no-such-object' not found"}}),
    );
    sh.expect("(QEMU) ");

    // A parse error is reported and the shell goes on.
    sh.line("query-status bogus");
    sh.expect("Error while parsing command line: Expected a key=value pair, got 'bogus'");
    sh.expect("(QEMU) ");
    sh.line(r#"{"execute": "query-status", "id": "mine"}"#);
    sh.expect_json_where("id \"mine\"", |v| {
        v["id"] == "mine" && v["return"]["running"] == true
    });
    sh.expect("(QEMU) ");

    sh.send("\x04"); // Ctrl-D
    assert_eq!(sh.wait_exit(), 0, "{}", sh.shown());
    drop(qemu);
}

/// The shell's reply in QEMU's place for `qom-gte` (misspelt `qom-get`), not sent.
fn qom_gte_refused() -> Value {
    json!({"error": {"class": "CommandNotFound",
        "desc": "qom-gte: execute: unknown command (did you mean 'qom-get'?) (not sent)"}})
}

/// A `blockdev-add` whose node-name is fine but `read-only` has the wrong type.
const WRONG_BLOCKDEV_ADD: &str = "blockdev-add driver=null-co node-name=n0 read-only=7";

/// The shell's reply in QEMU's place for [`WRONG_BLOCKDEV_ADD`], not sent.
fn wrong_blockdev_add_refused() -> Value {
    json!({"error": {"class": "GenericError",
        "desc": "blockdev-add: arguments.read-only: expected boolean, got integer (not sent)"}})
}

#[test]
fn the_schema_check_refuses_a_wrong_command_without_sending_it() {
    let _serial = serial();
    let Some(qemu) = start_qemu() else { return };
    let hist = history_dir();
    let mut sh = shell(&qemu, &[], &hist.path().join("h"));

    sh.line("qom-gte path=/machine property=type");
    sh.expect_json(qom_gte_refused());
    sh.expect("(QEMU) ");
    sh.line(WRONG_BLOCKDEV_ADD);
    sh.expect_json(wrong_blockdev_add_refused());
    sh.expect("(QEMU) ");
    // QEMU never saw it: no node was added.
    sh.line("query-named-block-nodes");
    sh.expect_json(json!({"return": []}));
    sh.expect("(QEMU) ");
    // A right command goes through.
    sh.line("blockdev-add driver=null-co node-name=n0");
    sh.expect_json(json!({"return": {}}));
    sh.expect("(QEMU) ");
    sh.line("query-named-block-nodes");
    sh.expect_json_where("node n0", |v| v["return"][0]["node-name"] == "n0");
    sh.expect("(QEMU) ");
    sh.send("\x04");
    // At a terminal, refused commands do not change the exit status.
    assert_eq!(sh.wait_exit(), 0, "{}", sh.shown());
}

#[test]
fn tab_completes_command_and_argument_names() {
    let _serial = serial();
    let Some(qemu) = start_qemu() else { return };
    let hist = history_dir();
    let mut sh = shell(&qemu, &[], &hist.path().join("h"));

    // QEMU has query-stats, query-stats-schemas and query-status (7.2 and 10.0): the first Tab
    // completes the common part, the second lists them.
    sh.type_text("query-sta");
    sh.send("\t");
    sh.expect("query-stat");
    sh.send("\t");
    let listing = sh.expect("query-status");
    assert!(listing.contains("query-stats"), "{}", sh.shown());
    sh.paste("u");
    sh.expect("query-statu");
    sh.send("\t");
    sh.expect("query-status ");
    sh.send("\r");
    sh.expect_json_where("status running", |v| v["return"]["status"] == "running");
    sh.expect("(QEMU) ");

    // Argument names come from the schema.
    sh.type_text("block-dirty-bitmap-add no");
    sh.send("\t");
    sh.expect("node=");
    sh.send("\x03"); // Ctrl-C: drop the line
    sh.expect("(QEMU) ");
    sh.send("\x04");
    assert_eq!(sh.wait_exit(), 0, "{}", sh.shown());
}

#[test]
fn an_event_is_shown_while_idle_and_the_line_survives() {
    let _serial = serial();
    let Some(qemu) = start_qemu() else { return };
    let hist = history_dir();
    let mut sh = shell(&qemu, &[], &hist.path().join("h"));

    // Half a command typed, then QEMU stops behind the shell's back.
    sh.type_text("query-");
    let other = qemu_qmp::blocking::Client::connect(qemu.qmp2.as_path()).expect("second monitor");
    other.execute("stop", None).expect("stop");
    sh.expect(r#""event": "STOP""#);
    // The prompt and the half-typed line are redrawn below the event.
    sh.expect("(QEMU) query-");
    sh.line("status");
    sh.expect_json_where("status paused", |v| is_status(v, "paused", false));
    sh.expect("(QEMU) ");

    other.execute("cont", None).expect("cont");
    sh.expect(r#""event": "RESUME""#);
    sh.expect("(QEMU) ");
    other.close().expect("close");
    sh.send("\x04");
    assert_eq!(sh.wait_exit(), 0, "{}", sh.shown());
}

#[test]
fn ctrl_c_stops_waiting_for_a_reply() {
    let _serial = serial();
    let Some(qemu) = start_qemu() else { return };
    let hist = history_dir();
    let mut sh = shell(&qemu, &["-v"], &hist.path().join("h"));

    // A frozen QEMU never answers.
    qemu.process
        .signal(rustix::process::Signal::STOP)
        .expect("SIGSTOP");
    sh.line("query-status");
    // -v echoes the request just before the shell starts waiting.
    sh.expect_json(json!({"execute": "query-status", "arguments": {}}));
    // Ctrl-C raises SIGINT, which the shell sees only once it waits for Ctrl-C
    // alongside the reply (a SIGINT before that is lost). After the echo it goes
    // straight into that wait, and it is the only thing that can put its runtime
    // to sleep now: QEMU is frozen and no event can come. So wait for the runtime
    // thread to sleep in epoll_wait.
    qemu_testkit::wait_until(TIMEOUT, "the shell to wait for the reply", || {
        runtime_asleep(sh.pid())
    });
    sh.send("\x03");
    sh.expect("Interrupted: no longer waiting for the reply to 'query-status'");
    sh.expect("(QEMU) ");
    qemu.process
        .signal(rustix::process::Signal::CONT)
        .expect("SIGCONT");

    // The late reply is dropped; the next command gets its own.
    sh.line("query-version");
    sh.expect_json_where("a version", |v| v["return"]["qemu"]["major"].is_u64());
    sh.expect("(QEMU) ");
    sh.send("\x04");
    assert_eq!(sh.wait_exit(), 0, "{}", sh.shown());
}

#[test]
fn qemu_going_away_at_the_prompt_ends_the_shell() {
    let _serial = serial();
    let Some(qemu) = start_qemu() else { return };
    let hist = history_dir();
    let mut sh = shell(&qemu, &[], &hist.path().join("h"));
    sh.type_text("query-");
    qemu.process.kill_now();
    sh.expect("Disconnected: QEMU closed the connection");
    assert_eq!(sh.wait_exit(), 1, "{}", sh.shown());
}

#[test]
fn history_is_kept_across_sessions() {
    let _serial = serial();
    let Some(qemu) = start_qemu() else { return };
    let hist = history_dir();
    let file = hist.path().join("history");

    let mut first = shell(&qemu, &[], &file);
    first.line("query-version");
    first.expect_json_where("a version", |v| v["return"]["qemu"]["major"].is_u64());
    first.expect("(QEMU) ");
    first.send("\x04");
    assert_eq!(first.wait_exit(), 0, "{}", first.shown());
    let saved = std::fs::read_to_string(&file).expect("history file written");
    assert_eq!(saved, "query-version\n");

    let mut second = shell(&qemu, &[], &file);
    second.send("\x1b[A"); // Up
    second.expect("query-version");
    second.send("\r");
    second.expect_json_where("a version", |v| v["return"]["qemu"]["major"].is_u64());
    second.expect("(QEMU) ");
    second.send("\x04");
    assert_eq!(second.wait_exit(), 0, "{}", second.shown());
}

#[test]
fn transactions_multi_line_and_one_line() {
    let _serial = serial();
    let Some(qemu) = start_qemu() else { return };
    let hist = history_dir();
    let mut sh = shell(&qemu, &["-v"], &hist.path().join("h"));

    sh.line("blockdev-add driver=null-co node-name=n0");
    sh.expect_json(json!({"return": {}}));
    sh.expect("(QEMU) ");
    sh.line("transaction(");
    sh.expect("TRANS> ");
    sh.line("block-dirty-bitmap-add node=n0 name=b0");
    sh.expect("TRANS> ");
    sh.line("block-dirty-bitmap-add node=n0 name=b1 persistent=false");
    sh.expect("TRANS> ");
    sh.line(")");
    // -v shows the request built from the three lines, in the order typed.
    sh.expect(concat!(
        r#"{"execute": "transaction", "arguments": {"actions": ["#,
        r#"{"type": "block-dirty-bitmap-add", "data": {"node": "n0", "name": "b0"}}, "#,
        r#"{"type": "block-dirty-bitmap-add", "data": {"node": "n0", "name": "b1", "persistent": false}}"#,
        "]}}\r\n"
    ));
    sh.expect_json(json!({"return": {}}));
    sh.expect("(QEMU) ");

    // The bitmaps exist now.
    sh.line("block-dirty-bitmap-add node=n0 name=b1");
    sh.expect_json_where("a bitmap error", |v| {
        v["error"]["desc"] == "Bitmap already exists: b1"
    });
    sh.expect("(QEMU) ");

    // One line; the abort action fails the whole transaction.
    sh.line("transaction( abort )");
    sh.expect_json(json!({"error": {"class": "GenericError", "desc": "Transaction aborted using Abort action"}}));
    sh.expect("(QEMU) ");
    sh.send("\x04");
    assert_eq!(sh.wait_exit(), 0, "{}", sh.shown());
}

#[test]
fn hmp_mode() {
    let _serial = serial();
    let Some(qemu) = start_qemu() else { return };
    let hist = history_dir();
    let path = qemu.qmp.to_str().unwrap();
    let mut sh = Pty::spawn(SHELL, &["-H", path], &hist.path().join("h"));
    let banner = sh.expect("(QEMU) ");
    assert!(banner.contains("Welcome to the HMP shell!"), "{banner}");

    sh.line("info status");
    sh.expect("VM status: running");
    sh.expect("(QEMU) ");
    // -machine none has no CPU 0.
    sh.line("cpu 0");
    sh.expect("bad CPU index");
    sh.expect("(QEMU) ");
    sh.line("cpu x");
    sh.expect("cpu command takes an integer argument");
    sh.expect("(QEMU) ");
    // HMP completion from 'info'.
    sh.type_text("info versi");
    sh.send("\t");
    sh.expect("info version");
    sh.send("\r");
    sh.expect(&qemu_version().to_string());
    sh.expect("(QEMU) ");
    sh.send("\x04");
    assert_eq!(sh.wait_exit(), 0, "{}", sh.shown());
}

#[test]
fn skip_negotiation_with_qemu() {
    let _serial = serial();
    let Some(qemu) = start_qemu() else { return };
    let hist = history_dir();
    let path = qemu.qmp.to_str().unwrap();
    let mut sh = Pty::spawn(SHELL, &["-N", path], &hist.path().join("h"));
    let banner = sh.expect("(QEMU) ");
    assert!(banner.contains("Connected"), "{banner}");
    assert!(!banner.contains("Connected to QEMU"), "{banner}");

    sh.line("query-status");
    sh.expect_json(json!({"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}));
    sh.expect("(QEMU) ");
    sh.line("qmp_capabilities");
    sh.expect_json(json!({"return": {}}));
    sh.expect("(QEMU) ");
    sh.line("query-status");
    sh.expect_json_where("status running", |v| v["return"]["status"] == "running");
    sh.expect("(QEMU) ");
    sh.send("\x04");
    assert_eq!(sh.wait_exit(), 0, "{}", sh.shown());
    // QEMU's greeting was taken out quietly: not shown, not warned about.
    let shown = sh.shown();
    assert!(!shown.contains("WARN"), "{shown}");
    assert!(!shown.contains("\"QMP\""), "{shown}");
}

#[test]
fn skip_negotiation_takes_the_greeting_out_quietly() {
    let Some(qemu) = start_qemu() else { return };
    let path = qemu.qmp.to_str().unwrap();
    // The first command is sent at once, before or after the greeting arrives:
    // either way, the greeting is neither its reply nor a warning.
    let (status, out, err) = run_piped(
        SHELL,
        &["-N", path],
        "query-status\nqmp_capabilities\nquery-status\n",
    );
    assert_eq!(err, "", "stdout:\n{out}");
    let replies: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(replies.len(), 3, "{out}");
    assert_eq!(replies[0]["error"]["class"], "CommandNotFound", "{out}");
    assert_eq!(replies[1], json!({"return": {}}), "{out}");
    assert!(is_status(&replies[2], "running", true), "{out}");
    // A piped run with a failed command exits 1.
    assert_eq!(status.code(), Some(1), "stdout:\n{out}\nstderr:\n{err}");
}

#[test]
fn skip_negotiation_with_the_guest_agent() {
    let _serial = serial();
    // The agent gets a socket the test already listens on (socket activation), so
    // the shell can connect at once; the commands that would change this machine
    // are blocked.
    let Some((_agent, sock, _dir)) = qemu_testkit::start_agent(&[]) else {
        return;
    };
    let hist = history_dir();
    let mut sh = Pty::spawn(
        SHELL,
        &["-N", sock.to_str().unwrap()],
        &hist.path().join("h"),
    );
    let banner = sh.expect("(QEMU) ");
    assert!(banner.contains("Connected"), "{banner}");
    // Command names come from guest-info when query-commands does not exist.
    sh.type_text("guest-pin");
    sh.send("\t");
    sh.expect("guest-ping ");
    sh.send("\r");
    sh.expect_json(json!({"return": {}}));
    sh.expect("(QEMU) ");
    sh.send("\x04");
    assert_eq!(sh.wait_exit(), 0, "{}", sh.shown());
}

/// Run a program with `input` on a pipe; bounded. Returns status, stdout, stderr.
fn run_piped(program: &str, args: &[&str], input: &str) -> (ExitStatus, String, String) {
    let mut child = Command::new(program)
        .args(args)
        .env_remove("QMP_SOCKET")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut status = None;
    if !qemu_testkit::poll_until(TIMEOUT, || {
        status = child.try_wait().expect("wait");
        status.is_some()
    }) {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{program} {args:?} did not exit within {TIMEOUT:?}");
    }
    let status = status.expect("exited");
    writer.join().unwrap();
    (
        status,
        out_reader.join().unwrap(),
        err_reader.join().unwrap(),
    )
}

#[test]
fn non_interactive_runs_exit_with_the_result() {
    let Some(qemu) = start_qemu() else { return };
    let path = qemu.qmp.to_str().unwrap();

    let (status, out, err) = run_piped(SHELL, &[path], "query-status\n\nquery-version\n");
    assert_eq!(status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let replies: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(replies.len(), 2, "{out}");
    assert_eq!(replies[0]["return"]["status"], "running", "{out}");
    assert!(replies[1]["return"]["qemu"]["major"].is_u64(), "{out}");
    assert!(!out.contains("Welcome") && !out.contains("(QEMU)"), "{out}");

    let (status, out, err) = run_piped(
        SHELL,
        &[path],
        "query-status\nno-such-command\nquery-status\n",
    );
    assert_eq!(status.code(), Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains(r#""class": "CommandNotFound""#), "{out}");

    let (status, out, err) = run_piped(SHELL, &["-p", path], "query-status x\nquery-status\n");
    assert_eq!(status.code(), Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("Expected a key=value pair, got 'x'"), "{err}");
    assert!(
        out.contains("{\n    \"return\": {\n        \"running\": true,"),
        "{out}"
    );

    // The address may come from $QMP_SOCKET; -l logs requests with their replies.
    let dir = history_dir();
    let log = dir.path().join("log.jsonl");
    let mut child = Command::new(SHELL)
        .args(["-l", log.to_str().unwrap()])
        .env("QMP_SOCKET", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    child.stdin.take().unwrap().write_all(b"stop\n").unwrap();
    let mut status = None;
    if !qemu_testkit::poll_until(TIMEOUT, || {
        status = child.try_wait().unwrap();
        status.is_some()
    }) {
        let _ = child.kill();
        let _ = child.wait();
        panic!("qmp-shell did not exit within {TIMEOUT:?}");
    }
    assert!(status.expect("exited").success());
    let logged = std::fs::read_to_string(&log).unwrap();
    let entries: Vec<Value> = logged
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        entries.contains(&json!({"execute": "stop", "arguments": {}, "return": {}})),
        "{logged}"
    );
    assert!(entries.iter().any(|e| e["event"] == "STOP"), "{logged}");
}

#[test]
fn replies_and_events_as_qemu_wrote_them_requests_as_typed() {
    let Some(qemu) = start_qemu_with(&["-S"]) else {
        return;
    };
    // What QEMU writes, read on its second monitor: the shell must show the same
    // bytes (QEMU's member order is its hash table's, which no program can compute
    // exactly from the names).
    let mut raw = RawQmp::connect(&qemu.qmp2);
    let status = raw.command(r#"{"execute": "query-status"}"#);
    if qemu_version().is(7, 2) {
        assert_eq!(
            status,
            r#"{"return": {"status": "prelaunch", "singlestep": false, "running": false}}"#
        );
    }
    let status_with_id = raw.command(r#"{"execute": "query-status", "id": "x1"}"#);
    let version = raw.command(r#"{"execute": "query-version"}"#);
    let status_value = status
        .strip_prefix(r#"{"return": "#)
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or_else(|| panic!("{status}"));

    let dir = history_dir();
    let log = dir.path().join("log.jsonl");
    let input = concat!(
        "query-status\n",
        "{\"id\": \"x1\", \"execute\": \"query-status\"}\n",
        "blockdev-add node-name=n0 driver=null-co size=4096\n",
        "blockdev-add node-name=r0 driver=raw file.driver=null-co file.size=4096\n",
        "transaction( block-dirty-bitmap-add node=n0 name=b0 persistent=false )\n",
        "query-version\n",
        "cont\n",
    );
    let path = qemu.qmp.to_str().unwrap();
    let (status_code, out, err) =
        run_piped(SHELL, &["-v", "-l", log.to_str().unwrap(), path], input);
    assert_eq!(
        status_code.code(),
        Some(0),
        "stdout:\n{out}\nstderr:\n{err}"
    );
    assert_eq!(err, "");
    let resume = raw.event("RESUME");

    // -v shows each request as Python's shell builds it: "execute", then the
    // arguments in the order typed (a dotted key's object where it was first
    // named); JSON as typed. Replies follow, as QEMU wrote them; the id is the one
    // typed, where QEMU put it. Events come as they arrive.
    let (events, lines): (Vec<&str>, Vec<&str>) = out.lines().partition(|l| is_event(l));
    assert_eq!(events, [resume.as_str()], "{out}");
    let nested = r#"{"execute": "blockdev-add", "arguments": {"node-name": "r0", "driver": "raw", "file": {"driver": "null-co", "size": 4096}}}"#;
    let transaction = r#"{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-add", "data": {"node": "n0", "name": "b0", "persistent": false}}]}}"#;
    assert_eq!(
        lines,
        [
            r#"{"execute": "query-status", "arguments": {}}"#,
            &status,
            r#"{"id": "x1", "execute": "query-status"}"#,
            &status_with_id,
            r#"{"execute": "blockdev-add", "arguments": {"node-name": "n0", "driver": "null-co", "size": 4096}}"#,
            r#"{"return": {}}"#,
            nested,
            r#"{"return": {}}"#,
            transaction,
            r#"{"return": {}}"#,
            r#"{"execute": "query-version", "arguments": {}}"#,
            &version,
            r#"{"execute": "cont", "arguments": {}}"#,
            r#"{"return": {}}"#,
        ],
        "{out}"
    );

    // The log: each request with its reply merged in (`{**command, **reply}`: a
    // member of both keeps the request's place), and the events.
    let logged = std::fs::read_to_string(&log).expect("the log");
    let (events, entries): (Vec<&str>, Vec<&str>) = logged.lines().partition(|l| is_event(l));
    assert_eq!(events, [resume.as_str()], "{logged}");
    let merged = |request: &str, reply: &str| {
        format!(
            "{}, {}",
            request.strip_suffix('}').unwrap(),
            reply.strip_prefix('{').unwrap()
        )
    };
    assert_eq!(
        entries,
        [
            merged(r#"{"execute": "query-status", "arguments": {}}"#, &status),
            format!(r#"{{"id": "x1", "execute": "query-status", "return": {status_value}}}"#),
            r#"{"execute": "blockdev-add", "arguments": {"node-name": "n0", "driver": "null-co", "size": 4096}, "return": {}}"#.to_owned(),
            merged(nested, r#"{"return": {}}"#),
            merged(transaction, r#"{"return": {}}"#),
            merged(r#"{"execute": "query-version", "arguments": {}}"#, &version),
            r#"{"execute": "cont", "arguments": {}, "return": {}}"#.to_owned(),
        ],
        "{logged}"
    );
}

#[test]
fn piped_refusals_fail_the_run_and_no_check_sends_the_commands() {
    let Some(qemu) = start_qemu() else { return };
    let path = qemu.qmp.to_str().unwrap();
    let mut raw = RawQmp::connect(&qemu.qmp2);
    let dir = history_dir();
    let log = dir.path().join("log.jsonl");
    let input = concat!(
        "qom-gte path=/machine property=type\n",
        "blockdev-add driver=null-co node-name=n0 read-only=7\n",
        "{\"execute\": \"query-stauts\", \"id\": 7}\n",
        "transaction( block-dirty-bitmap-add node=n0 name=b0 persistent=7 )\n",
        "query-named-block-nodes\n",
    );
    let (status, out, err) = run_piped(SHELL, &["-v", "-l", log.to_str().unwrap(), path], input);
    assert_eq!(status.code(), Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(err, "");
    let qom_gte =
        r#"{"execute": "qom-gte", "arguments": {"path": "/machine", "property": "type"}}"#;
    let qom_gte_error = r#""error": {"class": "CommandNotFound", "desc": "qom-gte: execute: unknown command (did you mean 'qom-get'?) (not sent)"}"#;
    let blockdev_add = r#"{"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": "n0", "read-only": 7}}"#;
    let blockdev_add_error = r#""error": {"class": "GenericError", "desc": "blockdev-add: arguments.read-only: expected boolean, got integer (not sent)"}"#;
    let raw_error = r#""error": {"class": "CommandNotFound", "desc": "query-stauts: execute: unknown command (did you mean 'query-status'?) (not sent)"}"#;
    let transaction = r#"{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-add", "data": {"node": "n0", "name": "b0", "persistent": 7}}]}}"#;
    let transaction_error = r#""error": {"class": "GenericError", "desc": "transaction: arguments.actions[0].data.persistent: expected boolean, got integer (not sent)"}"#;
    // -v echoes each request; the refusal stands where QEMU's error reply would,
    // laid out as one (a raw request's id first, where QEMU puts it).
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            qom_gte,
            &format!("{{{qom_gte_error}}}"),
            blockdev_add,
            &format!("{{{blockdev_add_error}}}"),
            r#"{"execute": "query-stauts", "id": 7}"#,
            &format!(r#"{{"id": 7, {raw_error}}}"#),
            transaction,
            &format!("{{{transaction_error}}}"),
            r#"{"execute": "query-named-block-nodes", "arguments": {}}"#,
            r#"{"return": []}"#,
        ],
        "{out}"
    );
    // Logged as a request with its reply.
    let logged = std::fs::read_to_string(&log).expect("the log");
    let merged =
        |request: &str, error: &str| format!("{}, {error}}}", request.strip_suffix('}').unwrap());
    assert_eq!(
        logged.lines().collect::<Vec<_>>(),
        [
            merged(qom_gte, qom_gte_error),
            merged(blockdev_add, blockdev_add_error),
            format!(r#"{{"execute": "query-stauts", "id": 7, {raw_error}}}"#),
            merged(transaction, transaction_error),
            r#"{"execute": "query-named-block-nodes", "arguments": {}, "return": []}"#.to_owned(),
        ],
        "{logged}"
    );
    // QEMU never saw them.
    assert_eq!(
        raw.command(r#"{"execute": "query-named-block-nodes"}"#),
        r#"{"return": []}"#
    );

    // -p lays the refusal out as it does a reply; one refused command fails the run.
    let (status, out, err) = run_piped(
        SHELL,
        &["-p", path],
        "qom-gte path=/machine property=type\n",
    );
    assert_eq!(status.code(), Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(
        out,
        concat!(
            "{\n",
            "    \"error\": {\n",
            "        \"class\": \"CommandNotFound\",\n",
            "        \"desc\": \"qom-gte: execute: unknown command (did you mean 'qom-get'?) (not sent)\"\n",
            "    }\n",
            "}\n"
        )
    );

    // --no-check sends them: QEMU's own error replies.
    let (status, out, err) = run_piped(
        SHELL,
        &["--no-check", path],
        &format!("qom-gte path=/machine property=type\n{WRONG_BLOCKDEV_ADD}\n"),
    );
    assert_eq!(status.code(), Some(1), "stdout:\n{out}\nstderr:\n{err}");
    let replies: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(
        replies,
        [
            json!({"error": {"class": "CommandNotFound", "desc": "The command qom-gte has not been found"}}),
            json!({"error": {"class": "GenericError", "desc": "Invalid parameter type for 'read-only', expected: boolean"}}),
        ],
        "{out}"
    );
}

#[test]
fn wrap_checks_too_unless_told_not_to() {
    let Some(qemu_bin) = qemu_testkit::qemu_system() else {
        return;
    };
    let bin = qemu_bin.to_str().unwrap();
    let qemu = [
        "--",
        bin,
        "-machine",
        "none",
        "-nodefaults",
        "-display",
        "none",
    ];
    for (args, expected) in [
        (&[][..], qom_gte_refused()),
        (
            &["--no-check"][..],
            json!({"error": {"class": "CommandNotFound", "desc": "The command qom-gte has not been found"}}),
        ),
    ] {
        let all: Vec<&str> = args.iter().chain(&qemu).copied().collect();
        let (status, out, err) = run_piped(WRAP, &all, "qom-gte path=/machine property=type\n");
        assert_eq!(status.code(), Some(1), "stdout:\n{out}\nstderr:\n{err}");
        let reply: Value =
            serde_json::from_str(out.trim_end()).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(reply, expected, "{args:?}");
    }
    for program in [SHELL, WRAP] {
        let (_, help, _) = run_piped(program, &["--help"], "");
        assert!(help.contains("--no-check"), "{help}");
    }
}

#[test]
fn connection_failures_are_reported() {
    let dir = history_dir();
    let missing = dir.path().join("nothing-here.sock");
    let (status, out, err) = run_piped(SHELL, &[missing.to_str().unwrap()], "");
    assert_eq!(status.code(), Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.starts_with("ERROR: failed to connect to"), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let (status, _, err) = run_piped(SHELL, &["localhost:port"], "");
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("bad port 'port'"), "{err}");

    let (status, _, err) = run_piped(SHELL, &[], "");
    assert_eq!(status.code(), Some(2));
    assert!(
        err.contains("QMP socket or TCP address must be specified"),
        "{err}"
    );
}

/// Children of `pid` whose executable name starts with `qemu`.
fn qemu_children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        let name = std::fs::read_link(format!("/proc/{child}/exe"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        if ppid == Some(&pid.to_string()) && name.starts_with("qemu") {
            found.push(child);
        }
    }
    found
}

fn gone(pid: u32) -> bool {
    match qemu_testkit::proc_state(pid) {
        None => true,
        // Someone else's process by now, or an unreaped zombie of the dead wrapper.
        Some('Z') => true,
        Some(_) => std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| !p.to_string_lossy().contains("qemu"))
            .unwrap_or(true),
    }
}

fn wrap_session(leave: &str) {
    let _serial = serial();
    let Some(qemu_bin) = qemu_testkit::qemu_system() else {
        return;
    };
    let hist = history_dir();
    let bin = qemu_bin.to_str().unwrap();
    let mut sh = Pty::spawn(
        WRAP,
        &[
            "--",
            bin,
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
        ],
        &hist.path().join("h"),
    );
    let banner = sh.expect("(QEMU) ");
    let connected = format!(
        "Connected to QEMU {}\r\n",
        qemu_testkit::version_of(&qemu_bin)
    );
    assert!(banner.contains(&connected), "{banner}");
    let children = qemu_children_of(sh.pid());
    assert_eq!(children.len(), 1, "one QEMU expected: {children:?}");
    // The reply as QEMU writes it, read from another QEMU of the same kind.
    let status = {
        let Some(other) = start_qemu() else { return };
        RawQmp::connect(&other.qmp2).command(r#"{"execute": "query-status"}"#)
    };
    sh.line("query-status");
    sh.expect(&format!("\r\n{status}\r\n"));
    sh.expect("(QEMU) ");
    let expected_status = match leave {
        "quit" => {
            sh.line("quit");
            sh.expect(r#""event": "SHUTDOWN""#);
            0
        }
        "SIGTERM" => {
            let pid = rustix::process::Pid::from_raw(sh.pid() as i32).expect("a pid");
            rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("kill");
            143
        }
        keys => {
            sh.send(keys);
            0
        }
    };
    assert_eq!(sh.wait_exit(), expected_status, "{}", sh.shown());
    assert!(
        !sh.shown().contains("ERROR"),
        "the shutdown reported a problem:\n{}",
        sh.shown()
    );
    qemu_testkit::wait_until(TIMEOUT, &format!("QEMU {} to exit", children[0]), || {
        gone(children[0])
    });
}

#[test]
fn wrap_runs_a_command_and_quit_ends_qemu() {
    wrap_session("quit");
}

#[test]
fn wrap_shuts_qemu_down_when_the_shell_ends() {
    wrap_session("\x04");
}

#[test]
fn wrap_shuts_qemu_down_on_sigterm() {
    wrap_session("SIGTERM");
}

#[test]
fn wrap_launch_failure_shows_qemu_output() {
    let Some(qemu_bin) = qemu_testkit::qemu_system() else {
        return;
    };
    let bin = qemu_bin.to_str().unwrap();
    let (status, out, err) = run_piped(WRAP, &["--", bin, "-machine", "none", "-bogus-option"], "");
    assert_eq!(status.code(), Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("-bogus-option: invalid option"), "{err}");

    let (status, _, err) = run_piped(WRAP, &["--", "/nonexistent/qemu-system-x86_64"], "");
    assert_eq!(status.code(), Some(1));
    assert!(
        err.contains("QEMU executable '/nonexistent/qemu-system-x86_64' not found."),
        "{err}"
    );
}
