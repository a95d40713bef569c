//! The exit-status convention (`qemu_tools::exit`), tool by tool: `--help` states
//! it; bad usage exits 2 with clap's message on stderr; a connection that cannot be
//! made exits 1 with one line on stderr; an error from QEMU (or the agent) exits 1;
//! success exits 0.
//!
//! The QEMU and guest-agent parts print `SKIPPED: ...` without the binaries, and
//! fail under `CI=true`. Every run has a deadline.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use qemu_testkit::{output_within, QemuProcess};
use rustix::process::{kill_process, Pid, Signal};

const SHELL: &str = env!("CARGO_BIN_EXE_qmp-shell");
const WRAP: &str = env!("CARGO_BIN_EXE_qmp-shell-wrap");
const QOM: &str = env!("CARGO_BIN_EXE_qom");
const GA: &str = env!("CARGO_BIN_EXE_qemu-ga-client");
const SERVER: &str = env!("CARGO_BIN_EXE_qmp-test-server");
const QAPI: &str = env!("CARGO_BIN_EXE_qapi-schema");
const JOBS: &str = env!("CARGO_BIN_EXE_qemu-jobs");
const FUSE: &str = env!("CARGO_BIN_EXE_qom-fuse");
const TUI: &str = env!("CARGO_BIN_EXE_qmp-tui");
const TOOLS: [&str; 9] = [SHELL, WRAP, QOM, GA, SERVER, QAPI, JOBS, FUSE, TUI];

/// Deadline for one run.
const T: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run `bin` with `args`, `input` on stdin (a file, so not a terminal), and none of
/// the address variables or RUST_LOG in the environment.
fn run(bin: &str, args: &[&str], input: &str) -> Run {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(input.as_bytes()).unwrap();
    use std::io::Seek;
    file.rewind().unwrap();
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("QMP_SOCKET")
        .env_remove("QGA_CLIENT_ADDRESS")
        .env_remove("RUST_LOG")
        .stdin(Stdio::from(file))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = output_within(&mut cmd, T, &format!("{bin} {args:?}"));
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn name(bin: &str) -> &str {
    Path::new(bin).file_name().unwrap().to_str().unwrap()
}

#[track_caller]
fn expect_usage_error(bin: &str, args: &[&str]) {
    let r = run(bin, args, "");
    assert_eq!(r.code, Some(2), "{} {args:?}: {r:?}", name(bin));
    assert!(r.stdout.is_empty(), "{} {args:?}: {r:?}", name(bin));
    // clap's message: `error: ...` (or the whole help when a subcommand is
    // missing), pointing to --help.
    assert!(
        (r.stderr.starts_with("error: ") && r.stderr.contains("try '--help'"))
            || r.stderr.contains("\nUsage: "),
        "{} {args:?}: {r:?}",
        name(bin)
    );
}

/// Exit status 1 with a single line on stderr that starts with `prefix`.
#[track_caller]
fn expect_one_line_failure(r: &Run, prefix: &str) {
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(r.stderr.starts_with(prefix), "{r:?}");
    assert!(r.stderr.ends_with('\n'), "{r:?}");
}

#[track_caller]
fn expect_success(r: &Run) -> &str {
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.is_empty(), "{r:?}");
    &r.stdout
}

#[test]
fn every_tool_states_the_convention_in_its_help() {
    for bin in TOOLS {
        let r = run(bin, &["--help"], "");
        let out = expect_success(&r);
        for line in [
            "Exit status:",
            "  0  success",
            "  1  failure: QEMU (or the guest agent) refused a command",
            "  2  bad usage: the command line is wrong",
        ] {
            assert!(out.contains(line), "{}: no {line:?} in\n{out}", name(bin));
        }
    }
    let shell = run(SHELL, &["--help"], "");
    assert!(
        shell
            .stdout
            .contains("exits 1 if any command failed (an error reply, a line that did not parse)"),
        "{}",
        shell.stdout
    );
    let jobs = run(JOBS, &["--help"], "");
    assert!(
        jobs.stdout.contains(
            "`watch` and `run` exit 0 when every job followed completed, 1 when one failed"
        ),
        "{}",
        jobs.stdout
    );
    let ga = run(GA, &["--help"], "");
    assert!(
        ga.stdout
            .contains("`exec` exits with the guest program's status"),
        "{}",
        ga.stdout
    );
}

#[test]
fn usage_errors_exit_2_on_stderr() {
    // Anything wrong on the command line, found before connecting: 2, as clap does.
    expect_usage_error(SHELL, &["--bogus"]);
    expect_usage_error(SHELL, &[]);
    expect_usage_error(SHELL, &["localhost:port"]);
    expect_usage_error(WRAP, &["-l"]);
    expect_usage_error(QOM, &[]);
    expect_usage_error(QOM, &["list"]);
    expect_usage_error(QOM, &["-s", "localhost:port", "list"]);
    expect_usage_error(QOM, &["-s", "/nonexistent.sock", "get", "/machine"]);
    expect_usage_error(
        QOM,
        &["-s", "/nonexistent.sock", "set", "--json", "/m.x", "{"],
    );
    expect_usage_error(GA, &[]);
    expect_usage_error(GA, &["info"]);
    expect_usage_error(GA, &["--address", "localhost:port", "info"]);
    expect_usage_error(GA, &["--address", "/nonexistent.sock", "ping", "soon"]);
    expect_usage_error(SERVER, &[]);
    expect_usage_error(SERVER, &["--tcp", "localhost:port"]);
    expect_usage_error(SERVER, &["--tcp", "127.0.0.1:0", "--fault", "bogus"]);
    expect_usage_error(QAPI, &[]);
    expect_usage_error(QAPI, &["dump"]);
    expect_usage_error(QAPI, &["dump", "--socket", "localhost:port"]);
    expect_usage_error(QAPI, &["diff", "old.json"]);
    expect_usage_error(JOBS, &[]);
    expect_usage_error(JOBS, &["list"]);
    expect_usage_error(JOBS, &["-s", "localhost:port", "list"]);
    expect_usage_error(JOBS, &["-s", "/nonexistent.sock", "run"]);
    expect_usage_error(JOBS, &["-s", "/nonexistent.sock", "run", "query-status"]);
    expect_usage_error(JOBS, &["-s", "/nonexistent.sock", "run", "blockdev-create"]);
    expect_usage_error(JOBS, &["-s", "/nonexistent.sock", "cancel"]);
    expect_usage_error(FUSE, &[]);
    expect_usage_error(FUSE, &["/mnt"]);
    expect_usage_error(FUSE, &["-s", "localhost:port", "/mnt"]);
    expect_usage_error(FUSE, &["-s", "/nonexistent.sock", "--cache", "-1", "/mnt"]);
    expect_usage_error(TUI, &[]);
    expect_usage_error(TUI, &["--bogus", "/nonexistent.sock"]);
    expect_usage_error(TUI, &["localhost:port"]);
}

#[test]
fn connection_failures_exit_1_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let missing = missing.to_str().unwrap();

    let r = run(SHELL, &[missing], "");
    expect_one_line_failure(&r, "ERROR: failed to connect to ");
    let r = run(SHELL, &["-N", missing], "");
    expect_one_line_failure(&r, "ERROR: failed to connect to ");
    let r = run(WRAP, &["--", "/nonexistent/qemu-system-x86_64"], "");
    expect_one_line_failure(&r, "ERROR: QEMU executable ");
    let r = run(QOM, &["-s", missing, "list"], "");
    expect_one_line_failure(&r, "qom: failed to connect to ");
    let r = run(GA, &["--address", missing, "info"], "");
    expect_one_line_failure(&r, "qemu-ga-client: ");
    let r = run(QAPI, &["dump", "--socket", missing], "");
    expect_one_line_failure(&r, "qapi-schema: failed to connect to ");
    let r = run(JOBS, &["-s", missing, "watch"], "");
    expect_one_line_failure(&r, "qemu-jobs: failed to connect to ");
    let r = run(FUSE, &["-s", missing, dir.path().to_str().unwrap()], "");
    expect_one_line_failure(&r, "qom-fuse: failed to connect to ");
    // qmp-tui keeps trying to connect (tests/tui.rs); without a terminal it does
    // not start at all.
    let r = run(TUI, &[missing], "");
    expect_one_line_failure(&r, "ERROR: qmp-tui needs a terminal");
    // The server's equivalent: it cannot listen where a file is.
    let taken = dir.path().join("taken");
    std::fs::write(&taken, "").unwrap();
    let r = run(SERVER, &["--socket", taken.to_str().unwrap()], "");
    expect_one_line_failure(&r, "qmp-test-server: cannot listen on ");
}

#[test]
fn qemu_errors_exit_1_and_success_exits_0() {
    let Some(qemu_bin) = qemu_testkit::qemu_system() else {
        return;
    };
    let qemu = QemuProcess::system_with_listener(&[]);
    let sock = qemu.qmp_path().to_str().unwrap();

    // qmp-shell, piped: 1 once a command failed, though it goes on to the end.
    let r = run(SHELL, &[sock], "no-such-command\nquery-status\n");
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(r.stdout.lines().count(), 2, "{r:?}");
    assert!(r.stdout.contains("CommandNotFound"), "{r:?}");
    let r = run(SHELL, &[sock], "query-status\n");
    assert!(expect_success(&r).contains("\"running\""), "{r:?}");

    // qom: QEMU's refusal on one line.
    let r = run(QOM, &["-s", sock, "get", "/nope.x"], "");
    expect_one_line_failure(&r, "qom: /nope: ");
    let r = run(QOM, &["-s", sock, "get", "/machine.type"], "");
    assert_eq!(expect_success(&r), "none-machine\n");

    // qmp-shell-wrap, piped, on a QEMU of its own.
    let bin = qemu_bin.to_str().unwrap();
    let qemu_args = [
        "--",
        bin,
        "-machine",
        "none",
        "-nodefaults",
        "-display",
        "none",
    ];
    let r = run(WRAP, &qemu_args, "no-such-command\n");
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.contains("CommandNotFound"), "{r:?}");
    let r = run(WRAP, &qemu_args, "query-status\n");
    assert!(expect_success(&r).contains("\"running\""), "{r:?}");
}

#[test]
fn agent_errors_exit_1_and_success_exits_0() {
    let Some((_agent, sock, dir)) = qemu_testkit::start_agent(&[]) else {
        return;
    };
    let sock = sock.to_str().unwrap();
    let missing = dir.path().join("no-such-file");
    let r = run(
        GA,
        &["--address", sock, "cat", missing.to_str().unwrap()],
        "",
    );
    expect_one_line_failure(&r, "qemu-ga-client: ");
    assert!(r.stdout.is_empty(), "{r:?}");
    expect_success(&run(GA, &["--address", sock, "ping"], ""));
}

#[test]
fn the_test_server_exits_0_when_stopped_and_1_on_a_bad_script() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("bad.jsonl");
    std::fs::write(&script, "{\"on\": \"x\", \"retrun\": 1}\n").unwrap();
    let sock = dir.path().join("qmp.sock");
    let sock = sock.to_str().unwrap();
    let r = run(
        SERVER,
        &["--socket", sock, "--script", script.to_str().unwrap()],
        "",
    );
    expect_one_line_failure(&r, "qmp-test-server: ");

    // Started, then stopped by SIGTERM: 0.
    let mut child = Command::new(SERVER)
        .args(["--socket", sock, "-q"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(T);
    let pid = Pid::from_raw(child.id() as i32).unwrap();
    if !matches!(&line, Ok(l) if l.starts_with("listening on ")) {
        let _ = kill_process(pid, Signal::KILL);
        let _ = child.wait();
        panic!("no 'listening on' line: {line:?}");
    }
    kill_process(pid, Signal::TERM).unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(T) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = kill_process(pid, Signal::KILL);
            panic!("qmp-test-server did not exit on SIGTERM");
        }
    };
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
}
