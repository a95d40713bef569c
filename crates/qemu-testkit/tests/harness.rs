//! Tests of the QEMU test harness itself (this crate). They use plain
//! blocking std sockets and do not depend on the QMP library.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qemu_testkit::QemuProcess;
use rustix::process::Signal;

/// Generous bound for anything QEMU does at startup, for slow CI machines.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Reads one line (up to and including '\n') with a read timeout.
fn read_line(stream: &mut UnixStream, qemu: &QemuProcess) -> String {
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => panic!(
                "EOF after {:?}\nQEMU log:\n{}",
                String::from_utf8_lossy(&line),
                qemu.log()
            ),
            Ok(_) => {
                line.push(byte[0]);
                if byte[0] == b'\n' {
                    return String::from_utf8(line).expect("QMP sent invalid UTF-8");
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "read failed after {:?}: {e}\nQEMU log:\n{}",
                String::from_utf8_lossy(&line),
                qemu.log()
            ),
        }
    }
}

fn assert_greeting(line: &str, qemu: &QemuProcess) {
    assert!(
        line.contains("\"QMP\"") && line.contains("\"version\""),
        "not a QMP greeting: {line:?}\nQEMU log:\n{}",
        qemu.log()
    );
    let value: serde_json::Value = serde_json::from_str(line).expect("greeting is not JSON");
    assert!(value["QMP"]["version"]["qemu"]["major"].is_u64(), "{value}");
}

/// Reads the greeting, then negotiates capabilities and runs one command, to
/// show the monitor really works.
fn handshake(stream: &mut UnixStream, qemu: &QemuProcess) {
    let greeting = read_line(stream, qemu);
    assert_greeting(&greeting, qemu);
    stream
        .write_all(b"{\"execute\": \"qmp_capabilities\"}\n")
        .unwrap();
    let reply = read_line(stream, qemu);
    assert!(reply.contains("\"return\""), "qmp_capabilities: {reply}");
    stream
        .write_all(b"{\"execute\": \"query-version\", \"id\": 7}\n")
        .unwrap();
    let reply = read_line(stream, qemu);
    let value: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(value["id"], 7, "{reply}");
    assert!(value["return"]["qemu"]["major"].is_u64(), "{reply}");
}

/// Waits (bounded) until `pid` no longer runs: gone from /proc, or a zombie
/// (an orphan's zombie may linger if PID 1 does not reap).
fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match qemu_testkit::proc_state(pid) {
            None | Some('Z') => return true,
            Some(_) if Instant::now() >= deadline => return false,
            Some(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[test]
fn system_listener_greeting() {
    let Some(_qemu) = qemu_testkit::qemu_system() else {
        return;
    };
    let qemu = QemuProcess::system_with_listener(&[]);
    // Connect immediately: the socket was bound before QEMU started.
    let mut stream = UnixStream::connect(qemu.qmp_path()).unwrap();
    handshake(&mut stream, &qemu);
}

#[test]
fn storage_daemon_listener_greeting() {
    let Some(_qsd) = qemu_testkit::storage_daemon() else {
        return;
    };
    let qsd = QemuProcess::storage_daemon_with_listener(&[]);
    let mut stream = UnixStream::connect(qsd.qmp_path()).unwrap();
    handshake(&mut stream, &qsd);
}

#[test]
fn socketpair_greeting() {
    let Some(_qemu) = qemu_testkit::qemu_system() else {
        return;
    };
    let (qemu, mut stream) = QemuProcess::system_with_socketpair(&[]);
    handshake(&mut stream, &qemu);
}

#[test]
fn socketpair_sees_eof_when_qemu_dies() {
    let Some(_qemu) = qemu_testkit::qemu_system() else {
        return;
    };
    let (mut qemu, mut stream) = QemuProcess::system_with_socketpair(&[]);
    assert_greeting(&read_line(&mut stream, &qemu), &qemu);
    qemu.kill_now();
    let status = qemu.wait_exit(TIMEOUT).expect("QEMU survived SIGKILL");
    assert_eq!(status.signal(), Some(libc_sigkill()));
    let mut rest = Vec::new();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
        .read_to_end(&mut rest)
        .expect("expected EOF, the harness must not keep QEMU's end open");
}

#[test]
fn listener_refuses_connections_after_qemu_dies() {
    let Some(_qemu) = qemu_testkit::qemu_system() else {
        return;
    };
    let mut qemu = QemuProcess::system_with_listener(&[]);
    let mut stream = UnixStream::connect(qemu.qmp_path()).unwrap();
    assert_greeting(&read_line(&mut stream, &qemu), &qemu);
    qemu.kill_now();
    qemu.wait_exit(TIMEOUT).expect("QEMU survived SIGKILL");
    // Nobody else holds the listening socket, so this fails instead of hanging.
    let err = UnixStream::connect(qemu.qmp_path()).expect_err("connected to a dead QEMU");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn process_is_gone_after_drop() {
    let Some(_qemu) = qemu_testkit::qemu_system() else {
        return;
    };
    let qemu = QemuProcess::system_with_listener(&[]);
    let pid = qemu.pid();
    let dir = qemu.dir().to_owned();
    let mut stream = UnixStream::connect(qemu.qmp_path()).unwrap();
    assert_greeting(&read_line(&mut stream, &qemu), &qemu);
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(qemu);
    // Drop kills and reaps, so /proc/<pid> is gone at once; the bound only
    // guards against surprises.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "QEMU {pid} still exists after drop"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!dir.exists(), "tempdir {} not removed", dir.display());
    qemu_testkit::assert_no_qemu_children();
}

#[test]
fn process_is_gone_after_panic() {
    let Some(_qemu) = qemu_testkit::qemu_system() else {
        return;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let qemu = QemuProcess::system_with_listener(&[]);
        tx.send(qemu.pid()).unwrap();
        panic!("deliberate panic with a live QEMU");
    })
    .join();
    assert!(result.is_err());
    let pid = rx.recv().unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU {pid} survived a panicking test"
    );
}

#[test]
fn system_connecting_to_our_listener() {
    let Some(_qemu) = qemu_testkit::qemu_system() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A comma in the path checks the harness escapes QEMU option values.
    let path = dir.path().join("server,mode.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let qemu = QemuProcess::system_connecting_to(&path, &[]);

    // QEMU connects during startup; accept without blocking forever.
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "QEMU did not connect within {TIMEOUT:?}\nQEMU log:\n{}",
                    qemu.log()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    handshake(&mut stream, &qemu);
}

#[test]
fn log_captures_qemu_stderr_and_exit_status() {
    let Some(_qemu) = qemu_testkit::qemu_system() else {
        return;
    };
    let mut qemu = QemuProcess::system_with_listener(&["-no-such-option"]);
    let status = qemu.wait_exit(TIMEOUT).expect("QEMU did not exit");
    assert!(!status.success());
    assert_eq!(status.code(), Some(1), "{status:?}");
    let log = qemu.log();
    assert!(log.starts_with("+ "), "{log}");
    assert!(log.contains("-machine none"), "{log}");
    assert!(log.contains("-no-such-option: invalid option"), "{log}");
    // Reaped: signals are refused rather than sent to a reused pid.
    assert!(qemu.signal(Signal::TERM).is_err());
}

#[test]
fn extra_machine_arg_replaces_default() {
    let Some(_qemu) = qemu_testkit::qemu_system() else {
        return;
    };
    let mut qemu = QemuProcess::system_with_listener(&["-M", "none"]);
    assert!(!qemu.log().contains("-machine none"), "{}", qemu.log());
    let mut stream = UnixStream::connect(qemu.qmp_path()).unwrap();
    assert_greeting(&read_line(&mut stream, &qemu), &qemu);
    // SIGTERM makes QEMU shut down cleanly.
    qemu.signal(Signal::TERM).unwrap();
    let status = qemu.wait_exit(TIMEOUT).expect("QEMU ignored SIGTERM");
    assert!(status.code().is_some() || status.signal().is_some());
}

/// PR_SET_PDEATHSIG follows the thread that forked, not the process. The
/// harness forks from a long-lived thread, so QEMU must outlive the (short)
/// thread that created the QemuProcess.
#[test]
fn qemu_survives_the_thread_that_started_it() {
    let Some(_qemu) = qemu_testkit::qemu_system() else {
        return;
    };
    let qemu = std::thread::spawn(|| QemuProcess::system_with_listener(&[]))
        .join()
        .unwrap();
    let mut stream = UnixStream::connect(qemu.qmp_path()).unwrap();
    handshake(&mut stream, &qemu);
}

const HELPER_ENV: &str = "QEMU_QMP_HARNESS_HELPER";

/// Not a test: run by `qemu_dies_with_the_test_process` in a child copy of
/// this test binary. Starts QEMU, prints its pid, then blocks until killed.
#[test]
#[ignore = "helper process for qemu_dies_with_the_test_process"]
fn helper_spawn_qemu_and_block() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let qemu = QemuProcess::system_with_listener(&[]);
    let mut out = std::io::stdout().lock();
    writeln!(out, "QEMU_PID={}", qemu.pid()).unwrap();
    out.flush().unwrap();
    drop(out);
    // Block until the parent closes stdin (or kills us).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

#[test]
fn qemu_dies_with_the_test_process() {
    let Some(_qemu) = qemu_testkit::qemu_system() else {
        return;
    };
    // The helper is killed, so its QemuProcess never removes its temporary
    // directory: give it a TMPDIR of ours, removed when this test ends.
    let helper_tmp = tempfile::tempdir().unwrap();
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_spawn_qemu_and_block",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, "1")
        .env("TMPDIR", helper_tmp.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // libtest prints "test helper_spawn_qemu_and_block ... " without a
    // newline before running it, so the marker can be mid-line. Read on a
    // thread so a broken helper cannot hang this test.
    let stdout = BufReader::new(helper.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            if let Some(at) = line.find("QEMU_PID=") {
                let _ = tx.send(line[at + "QEMU_PID=".len()..].trim().parse::<u32>());
                return;
            }
        }
    });
    let pid = match rx.recv_timeout(TIMEOUT) {
        Ok(pid) => pid.expect("bad QEMU_PID line"),
        Err(e) => {
            let _ = helper.kill();
            let _ = helper.wait();
            panic!("helper did not report a QEMU pid: {e}");
        }
    };
    assert!(qemu_testkit::proc_state(pid).is_some());

    helper.kill().unwrap();
    helper.wait().unwrap();

    if !wait_gone(pid, TIMEOUT) {
        // Don't leave an orphan behind; check it is still QEMU first.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.starts_with("qemu") {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).unwrap(),
                Signal::KILL,
            );
        }
        panic!("QEMU {pid} survived its parent: PR_SET_PDEATHSIG not in effect");
    }
}

#[test]
fn no_leaks_from_this_thread() {
    let Some(_qemu) = qemu_testkit::qemu_system() else {
        return;
    };
    {
        let _a = QemuProcess::system_with_listener(&[]);
        let (_b, _s) = QemuProcess::system_with_socketpair(&[]);
        // Owned by live QemuProcess values: not leaks.
        qemu_testkit::assert_no_qemu_children();
    }
    qemu_testkit::assert_no_qemu_children();
}

fn libc_sigkill() -> i32 {
    Signal::KILL.as_raw()
}
