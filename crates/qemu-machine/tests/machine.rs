//! Integration tests against a real `qemu-system-x86_64`.
//!
//! Skipped (with a `SKIPPED:` line on stderr) when the binary is missing, unless
//! `CI=true`, where a missing binary fails the test. Override the binary with
//! `QEMU_SYSTEM_X86_64=/path/to/qemu-system-x86_64`.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qemu_machine::{
    LaunchCause, MachineBuilder, MachineError, QemuMachine, QmpAddress, ShutdownCause,
};
use qemu_testkit::{
    assert_dir_empty, assert_gone_within, find_in_path, gone, init_tracing, qemu_children,
};
use serde_json::{json, Value};
use tokio::sync::RwLock;

/// Tests that check process-wide state (no QEMU children at all) take this for
/// writing; every other test holds it for reading while it has QEMUs running.
static GLOBAL: RwLock<()> = RwLock::const_new(());

const T: Duration = Duration::from_secs(10);

/// `qemu-system-x86_64`, or `None` after saying loudly that the test is skipped.
fn qemu() -> Option<PathBuf> {
    init_tracing();
    qemu_testkit::qemu_system()
}

/// A builder for `-machine none` with its temporary directory under `base`.
fn none(qemu: &Path, base: &Path) -> MachineBuilder {
    QemuMachine::builder(qemu)
        .machine_type("none")
        .base_temp_dir(base)
}

fn tempdir() -> tempfile::TempDir {
    qemu_testkit::tempdir("qm-test-")
}

fn names(events: &[qemu_qmp::Event]) -> Vec<&str> {
    events.iter().map(|e| e.name()).collect()
}

// ---- launch and shutdown -------------------------------------------------------------

#[tokio::test]
async fn launch_and_graceful_shutdown() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let vm = none(&qemu, base.path())
        .name("graceful")
        .launch()
        .await
        .unwrap();
    assert_eq!(vm.name(), "graceful");
    assert!(vm.is_running());
    let pid = vm.pid().expect("pid while running");
    assert!(vm.temp_dir().starts_with(base.path()) && vm.temp_dir().is_dir());
    let cmd = vm.command_line().join(" ");
    assert!(cmd.contains("-display none -vga none"), "{cmd}");
    assert!(
        cmd.contains("-mon chardev=mon,mode=control -machine none"),
        "{cmd}"
    );
    assert!(!cmd.contains("-nodefaults"), "{cmd}");

    let status = vm.command("query-status", None).await.unwrap();
    assert_eq!(status["running"], json!(true), "{status}");
    assert_eq!(vm.exit_code(), None);

    vm.shutdown().await.unwrap();
    assert!(!vm.is_running());
    assert_eq!(vm.exit_code(), Some(0));
    assert!(vm.exit_status().unwrap().success());
    assert_eq!(vm.pid(), None);
    assert!(gone(pid));
    let events = vm.get_qmp_events(false).await;
    let shutdown = events
        .iter()
        .find(|e| e.name() == "SHUTDOWN")
        .unwrap_or_else(|| panic!("no SHUTDOWN event among {:?}", names(&events)));
    assert_eq!(shutdown.data()["guest"], json!(false));
    assert_eq!(shutdown.data()["reason"], json!("host-qmp-quit"));
    assert!(!vm.temp_dir().exists());
    assert_dir_empty(base.path());

    // Every method still works.
    vm.shutdown().await.unwrap();
    vm.shutdown_with(true, None).await.unwrap();
    vm.kill().await.unwrap();
    assert!(vm.wait(Duration::from_millis(10)).await.unwrap().success());
    assert!(matches!(
        vm.command("query-status", None).await,
        Err(MachineError::Qmp { .. })
    ));
    assert!(vm.qmp_raw("query-status", None).await.is_err());
    assert!(matches!(
        vm.event_wait("STOP", Duration::from_millis(10), None).await,
        Err(MachineError::EventStreamEnded { .. })
    ));
    assert!(vm.get_qmp_event(Duration::from_millis(10)).await.is_none());
    assert!(vm.send_fd_scm_path("/dev/null").is_err());
    assert!(matches!(
        vm.console_read_line(Duration::from_millis(10)).await,
        Err(MachineError::NoConsole)
    ));
    assert_eq!(vm.console_output(), None);
    let _ = vm.log();
}

#[tokio::test]
async fn event_wait_before_shutdown() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let vm = none(&qemu, base.path()).launch().await.unwrap();
    vm.command("stop", None).await.unwrap();
    let stop = vm.event_wait("STOP", T, None).await.unwrap().expect("STOP");
    assert_eq!(stop.name(), "STOP");
    vm.command("quit", None).await.unwrap();
    let shutdown = vm
        .event_wait("SHUTDOWN", T, Some(json!({"data": {"guest": false}})))
        .await
        .unwrap()
        .expect("SHUTDOWN");
    assert_eq!(shutdown.data()["reason"], json!("host-qmp-quit"));
    // `quit` was already sent: shutdown only waits for the exit.
    vm.shutdown().await.unwrap();
    assert_eq!(vm.exit_code(), Some(0));
    assert_dir_empty(base.path());
}

#[tokio::test]
async fn a_bad_argument_fails_the_launch_at_once() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let start = Instant::now();
    let err = none(&qemu, base.path())
        .arg("-bogus-option")
        .launch()
        .await
        .expect_err("QEMU must refuse -bogus-option");
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    let f = err.as_launch_failure().expect("a LaunchFailure");
    assert_eq!(f.exit_code, Some(1), "{err}");
    assert_eq!(f.signal, None);
    assert!(
        f.output.contains("-bogus-option: invalid option"),
        "output: {}",
        f.output
    );
    assert!(
        matches!(f.cause, LaunchCause::Exited { .. }),
        "{:?}",
        f.cause
    );
    assert_eq!(
        f.command_line.last().map(String::as_str),
        Some("-bogus-option")
    );
    let shown = err.to_string();
    for want in [
        "Exit code: 1",
        "-bogus-option: invalid option",
        "-machine none -bogus-option",
    ] {
        assert!(shown.contains(want), "{want:?} not in:\n{shown}");
    }
    eprintln!("launch failure after {elapsed:?}:\n{shown}");
    assert_dir_empty(base.path());
}

#[tokio::test]
async fn a_missing_binary_is_a_launch_failure() {
    init_tracing();
    let base = tempdir();
    let err = QemuMachine::builder("/nonexistent/qemu-system-x86_64")
        .base_temp_dir(base.path())
        .launch()
        .await
        .expect_err("no such binary");
    let f = err.as_launch_failure().expect("a LaunchFailure");
    assert!(
        matches!(f.cause, LaunchCause::Spawn { .. }),
        "{:?}",
        f.cause
    );
    assert_eq!(f.exit_code, None);
    assert!(
        err.to_string().contains("/nonexistent/qemu-system-x86_64"),
        "{err}"
    );
    assert_dir_empty(base.path());
}

#[tokio::test]
async fn hard_shutdown_kills() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let vm = none(&qemu, base.path()).launch().await.unwrap();
    let pid = vm.pid().unwrap();
    vm.shutdown_with(true, None).await.unwrap();
    assert_eq!(vm.exit_status().unwrap().signal(), Some(9));
    assert_eq!(vm.exit_code(), Some(-9));
    assert!(gone(pid));
    // Nothing in the events about a shutdown: QEMU was killed.
    assert!(!names(&vm.get_qmp_events(false).await).contains(&"SHUTDOWN"));
    assert_dir_empty(base.path());
}

#[tokio::test]
async fn a_stopped_qemu_times_out_and_is_killed() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let vm = none(&qemu, base.path()).launch().await.unwrap();
    let pid = vm.pid().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::STOP,
    )
    .unwrap();
    let start = Instant::now();
    let err = vm
        .shutdown_with(false, Some(Duration::from_secs(1)))
        .await
        .expect_err("a stopped QEMU cannot quit");
    let elapsed = start.elapsed();
    assert!(
        matches!(
            err,
            MachineError::AbnormalShutdown {
                cause: ShutdownCause::Timeout(_)
            }
        ),
        "{err:?}"
    );
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    assert!(!vm.is_running());
    assert_eq!(vm.exit_code(), Some(-9));
    assert!(gone(pid));
    assert_dir_empty(base.path());
    eprintln!("{err}");
}

#[tokio::test]
async fn an_unexpected_death_is_reported() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let vm = none(&qemu, base.path()).launch().await.unwrap();
    let pid = vm.pid().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert!(matches!(
        vm.event_wait("STOP", T, None).await,
        Err(MachineError::EventStreamEnded { .. })
    ));
    let status = vm.wait(T).await.unwrap();
    assert_eq!(status.signal(), Some(9));
    // Already exited (abnormally) and cleaned up: shutdown has nothing left to do.
    vm.shutdown().await.unwrap();
    assert_dir_empty(base.path());

    // Without the wait, shutdown reports it.
    let vm = none(&qemu, base.path()).launch().await.unwrap();
    let pid = vm.pid().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let _ = vm.qmp().wait_disconnected().await;
    let err = vm.shutdown().await.expect_err("QEMU died");
    assert!(
        matches!(err, MachineError::AbnormalShutdown { cause: ShutdownCause::Exited(s) } if s.signal() == Some(9)),
        "{err:?}"
    );
    assert_dir_empty(base.path());
}

#[tokio::test]
async fn wait_for_qemu_to_exit_by_itself() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let vm = none(&qemu, base.path()).launch().await.unwrap();
    let err = vm
        .wait(Duration::from_millis(300))
        .await
        .expect_err("QEMU keeps running");
    assert!(matches!(
        err,
        MachineError::AbnormalShutdown {
            cause: ShutdownCause::Timeout(_)
        }
    ));
    assert!(!vm.is_running());

    let vm = none(&qemu, base.path()).launch().await.unwrap();
    vm.qmp().execute("quit", None).await.unwrap();
    assert!(vm.wait(T).await.unwrap().success());
    assert_dir_empty(base.path());
}

#[tokio::test]
async fn without_qmp_shutdown_sends_sigterm() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let vm = none(&qemu, base.path()).qmp(false).launch().await.unwrap();
    assert!(!vm.command_line().iter().any(|a| a == "-mon"));
    assert!(matches!(
        vm.command("query-status", None).await,
        Err(MachineError::QmpDisabled(_))
    ));
    assert!(matches!(
        vm.event_wait("STOP", Duration::ZERO, None).await,
        Err(MachineError::QmpDisabled(_))
    ));
    vm.shutdown().await.unwrap();
    // Without QMP there is no way to know when QEMU has installed its signal
    // handlers: SIGTERM either makes it exit cleanly or, this early, kills it.
    match vm.exit_code() {
        Some(0) => assert!(
            vm.log().contains("terminating on signal 15"),
            "{}",
            vm.log()
        ),
        Some(-15) => {}
        other => panic!("exit code {other:?}; log: {}", vm.log()),
    }
    assert_dir_empty(base.path());
}

#[tokio::test]
async fn a_wrapper_runs_qemu() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let wrapper = if find_in_path("taskset").is_some() {
        vec!["taskset", "-c", "0"]
    } else {
        vec!["env"]
    };
    let base = tempdir();
    let vm = none(&qemu, base.path())
        .wrapper(wrapper.clone())
        .launch()
        .await
        .unwrap();
    assert_eq!(&vm.command_line()[..wrapper.len()], &wrapper[..]);
    vm.command("query-status", None).await.unwrap();
    vm.shutdown().await.unwrap();
    assert_eq!(vm.exit_code(), Some(0));
    assert_dir_empty(base.path());
}

// ---- QMP conveniences -----------------------------------------------------------------

#[tokio::test]
async fn raw_replies_and_key_conversion() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let vm = none(&qemu, base.path())
        .conv_keys(true)
        .launch()
        .await
        .unwrap();
    let reply = vm.qmp_raw("no-such-command", None).await.unwrap();
    assert!(reply.is_error());
    assert_eq!(
        reply.error_info().unwrap().unwrap().class,
        "CommandNotFound"
    );
    let reply = vm.qmp_raw("query-status", None).await.unwrap();
    assert_eq!(reply.return_value().unwrap()["status"], json!("running"));
    let err = vm.command("no-such-command", None).await.unwrap_err();
    assert!(err.to_string().contains("no-such-command"), "{err}");
    // QEMU's error class and text, reached through the machine's error.
    assert_eq!(err.error_class(), Some("CommandNotFound"));
    let reply = err.as_execute_error().expect("an error reply");
    assert_eq!(
        reply.desc(),
        "The command no-such-command has not been found"
    );
    assert!(!err.is_timeout() && !err.is_disconnected());
    // `command_line` becomes `command-line`.
    let out = vm
        .command(
            "human-monitor-command",
            Some(json!({"command_line": "info version"})),
        )
        .await
        .unwrap();
    assert!(out.as_str().is_some_and(|s| s.contains('.')), "{out}");
    vm.shutdown().await.unwrap();
    assert_dir_empty(base.path());
}

#[tokio::test]
async fn event_wait_matches_and_keeps_what_it_passes_over() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let vm = none(&qemu, base.path()).launch().await.unwrap();
    let short = Duration::from_millis(200);

    vm.command("stop", None).await.unwrap();
    // A STOP arrives, but neither wait matches it.
    assert!(vm
        .event_wait("RESUME", short, None)
        .await
        .unwrap()
        .is_none());
    let start = Instant::now();
    let none_found = vm
        .event_wait("STOP", short, Some(json!({"data": {"reason": null}})))
        .await
        .unwrap();
    assert!(none_found.is_none());
    assert!(start.elapsed() >= short);
    // It was kept.
    let stop = vm
        .get_qmp_event(false)
        .await
        .expect("the STOP that was passed over");
    assert_eq!(stop.name(), "STOP");
    assert!(vm.get_qmp_event(false).await.is_none());

    vm.command("cont", None).await.unwrap();
    vm.command("stop", None).await.unwrap();
    // RESUME then STOP arrive; wait for the STOP, the RESUME stays.
    let e = vm
        .events_wait(
            &[("SHUTDOWN", None), ("STOP", Some(json!({"event": "STOP"})))],
            T,
        )
        .await
        .unwrap()
        .expect("STOP");
    assert_eq!(e.name(), "STOP");
    assert_eq!(names(&vm.get_qmp_events(false).await), ["RESUME"]);

    // Several passed over, taken later in order.
    vm.command("cont", None).await.unwrap();
    vm.command("stop", None).await.unwrap();
    vm.command("cont", None).await.unwrap();
    assert!(vm
        .event_wait("SHUTDOWN", short, None)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        names(&vm.get_qmp_events(false).await),
        ["RESUME", "STOP", "RESUME"]
    );
    vm.command("stop", None).await.unwrap();
    let _ = vm.event_wait("STOP", T, None).await.unwrap().expect("STOP");
    vm.clear_events();
    assert!(vm.get_qmp_events(false).await.is_empty());

    // get_qmp_event waits.
    vm.command("cont", None).await.unwrap();
    let e = vm.get_qmp_event(T).await.expect("RESUME");
    assert_eq!(e.name(), "RESUME");

    // After quit the session ends: a wait that cannot match says so instead of
    // sleeping out its timeout, and the SHUTDOWN it passed over is still there.
    vm.command("quit", None).await.unwrap();
    let start = Instant::now();
    let err = vm
        .event_wait("SHUTDOWN", T, Some(json!({"data": {"guest": true}})))
        .await
        .expect_err("no guest shutdown will come");
    assert!(
        matches!(err, MachineError::EventStreamEnded { .. }),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    let e = vm
        .event_wait(
            "SHUTDOWN",
            Duration::ZERO,
            Some(json!({"data": {"guest": false}})),
        )
        .await
        .unwrap()
        .expect("the kept SHUTDOWN");
    assert_eq!(e.data()["reason"], json!("host-qmp-quit"));
    vm.shutdown().await.unwrap();
    assert_dir_empty(base.path());
}

#[tokio::test]
async fn events_wait_takes_the_first_of_several_alternatives() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let vm = none(&qemu, base.path()).launch().await.unwrap();
    let alternatives = [
        ("SHUTDOWN", Some(json!({"data": {"guest": true}}))),
        ("RESUME", None),
        ("STOP", None),
    ];
    vm.command("stop", None).await.unwrap();
    let e = vm.events_wait(&alternatives, T).await.unwrap().unwrap();
    assert_eq!(e.name(), "STOP");
    vm.command("cont", None).await.unwrap();
    let e = vm.events_wait(&alternatives, T).await.unwrap().unwrap();
    assert_eq!(e.name(), "RESUME");
    vm.command("quit", None).await.unwrap();
    // The only SHUTDOWN is the host's, which does not match.
    assert!(vm.events_wait(&alternatives, T).await.is_err());
    let e = vm
        .events_wait(
            &[
                ("SHUTDOWN", Some(json!({"data": {"guest": false}}))),
                ("STOP", None),
            ],
            Duration::ZERO,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.name(), "SHUTDOWN");
    vm.shutdown().await.unwrap();
}

// ---- descriptors ----------------------------------------------------------------------

#[tokio::test]
async fn add_fd_shows_up_in_query_fdsets() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let file = tempfile::tempfile().unwrap();
    let vm = none(&qemu, base.path())
        .add_fd(file, 3, Some("my opaque, with a comma"))
        .launch()
        .await
        .unwrap();
    assert!(vm
        .command_line()
        .iter()
        .any(|a| a.starts_with("fd=") && a.contains(",set=3,opaque=my opaque,, with a comma")));
    let sets = vm.command("query-fdsets", None).await.unwrap();
    let set = sets
        .as_array()
        .and_then(|a| a.iter().find(|s| s["fdset-id"] == json!(3)))
        .unwrap_or_else(|| panic!("fdset 3 missing: {sets}"));
    assert_eq!(
        set["fds"][0]["opaque"],
        json!("my opaque, with a comma"),
        "{sets}"
    );
    vm.shutdown().await.unwrap();
    assert_dir_empty(base.path());
}

#[tokio::test]
async fn send_fd_scm_then_getfd() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let vm = none(&qemu, base.path()).launch().await.unwrap();
    let file = tempfile::tempfile().unwrap();
    vm.send_fd_scm(&file).unwrap();
    vm.command("getfd", Some(json!({"fdname": "fd-a"})))
        .await
        .unwrap();
    vm.send_fd_scm_path("/dev/null").unwrap();
    vm.command("getfd", Some(json!({"fdname": "fd-b"})))
        .await
        .unwrap();
    // Both exist: closing works once, then QEMU no longer knows them.
    for name in ["fd-a", "fd-b"] {
        vm.command("closefd", Some(json!({"fdname": name})))
            .await
            .unwrap();
        let err = vm
            .command("closefd", Some(json!({"fdname": name})))
            .await
            .expect_err("already closed");
        assert!(err.to_string().contains(name), "{err}");
    }
    // getfd without a descriptor fails.
    assert!(vm
        .command("getfd", Some(json!({"fdname": "none"})))
        .await
        .is_err());
    assert!(vm.send_fd_scm_path("/nonexistent/file").is_err());
    vm.shutdown().await.unwrap();
}

// ---- server-mode QMP ------------------------------------------------------------------

#[tokio::test]
async fn qmp_server_on_a_unix_path_leaves_no_socket_file() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let socks = tempdir();
    let vm = none(&qemu, base.path())
        .sock_dir(socks.path())
        .qmp_address(QmpAddress::Unix("vm.qmp".into()))
        .launch()
        .await
        .unwrap();
    let path = socks.path().join("vm.qmp");
    let chardev = format!("socket,id=mon,path={},server=off", path.display());
    assert!(
        vm.command_line().contains(&chardev),
        "{:?}",
        vm.command_line()
    );
    assert!(
        !path.exists(),
        "the socket file is removed once QEMU connected"
    );
    assert_dir_empty(socks.path());
    vm.command("query-status", None).await.unwrap();
    vm.command("stop", None).await.unwrap();
    assert!(vm.event_wait("STOP", T, None).await.unwrap().is_some());
    vm.shutdown().await.unwrap();
    assert_eq!(vm.exit_code(), Some(0));
    assert_dir_empty(socks.path());
    assert_dir_empty(base.path());

    // A failed launch removes it too.
    let err = none(&qemu, base.path())
        .sock_dir(socks.path())
        .qmp_address(QmpAddress::Unix("vm.qmp".into()))
        .arg("-bogus-option")
        .launch()
        .await
        .expect_err("bad option");
    assert_eq!(err.as_launch_failure().unwrap().exit_code, Some(1));
    assert_dir_empty(socks.path());
    assert_dir_empty(base.path());
}

#[tokio::test]
async fn qmp_server_on_tcp() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let vm = none(&qemu, base.path())
        .qmp_address(QmpAddress::Tcp {
            host: "127.0.0.1".into(),
            port: 0,
        })
        .launch()
        .await
        .unwrap();
    let chardev = vm
        .command_line()
        .iter()
        .find(|a| a.starts_with("socket,id=mon,host=127.0.0.1,port="))
        .expect("a TCP chardev");
    assert!(!chardev.contains("port=0,"), "{chardev}");
    vm.command("query-status", None).await.unwrap();
    assert!(
        vm.send_fd_scm_path("/dev/null").is_err(),
        "no fd passing over TCP"
    );
    vm.shutdown().await.unwrap();
    assert_dir_empty(base.path());
}

// ---- console --------------------------------------------------------------------------

/// A 64 KiB PC BIOS image that prints a greeting on COM1 and then echoes every byte
/// it receives there (hand-assembled 16-bit code at F000:0000, a far jump to it at
/// the reset vector). Every byte waits for the transmitter to be empty (line status
/// bit 5), as a real driver does: QEMU's UART drops a byte written while the previous
/// one is still held, which happened when the host was slow to drain the console.
fn test_bios(dir: &Path) -> PathBuf {
    #[rustfmt::skip]
    let code: [u8; 55] = [
        0x31, 0xC0,             // xor ax, ax
        0x8E, 0xD0,             // mov ss, ax
        0xBC, 0x00, 0x7C,       // mov sp, 0x7c00
        0xBE, 0x37, 0x00,       // mov si, msg
        0x2E, 0xAC,             // print: cs lodsb
        0x84, 0xC0,             // test al, al
        0x74, 0x05,             // jz echo
        0xE8, 0x13, 0x00,       // call putc
        0xEB, 0xF5,             // jmp print
        0xBA, 0xFD, 0x03,       // echo: mov dx, 0x3fd (line status)
        0xEC,                   // wait_rx: in al, dx
        0xA8, 0x01,             // test al, 1 (data ready)
        0x74, 0xFB,             // jz wait_rx
        0xBA, 0xF8, 0x03,       // mov dx, 0x3f8
        0xEC,                   // in al, dx
        0xE8, 0x02, 0x00,       // call putc
        0xEB, 0xEF,             // jmp echo
        0x88, 0xC4,             // putc: mov ah, al
        0xBA, 0xFD, 0x03,       // mov dx, 0x3fd (line status)
        0xEC,                   // wait_tx: in al, dx
        0xA8, 0x20,             // test al, 0x20 (transmitter holding register empty)
        0x74, 0xFB,             // jz wait_tx
        0x88, 0xE0,             // mov al, ah
        0xBA, 0xF8, 0x03,       // mov dx, 0x3f8
        0xEE,                   // out dx, al
        0xC3,                   // ret
    ];
    let msg = b"Hello from the test BIOS\r\nsecond line\r\n\0";
    let mut image = vec![0xF4u8; 65536]; // hlt
    image[..code.len()].copy_from_slice(&code);
    image[code.len()..code.len() + msg.len()].copy_from_slice(msg);
    image[0xFFF0..0xFFF5].copy_from_slice(&[0xEA, 0x00, 0x00, 0x00, 0xF0]); // jmp F000:0000
    let path = dir.join("test-bios.bin");
    std::fs::write(&path, image).unwrap();
    path
}

#[tokio::test]
async fn console_output_lines_and_echo() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let files = tempdir();
    let bios = test_bios(files.path());
    let console_log = files.path().join("console.log");
    let vm = QemuMachine::builder(&qemu)
        .base_temp_dir(base.path())
        .machine_type("pc")
        .nodefaults()
        .args(["-accel", "tcg", "-m", "16", "-bios"])
        .arg(bios.to_str().unwrap())
        .console(true)
        .console_log(&console_log)
        .launch()
        .await
        .unwrap();
    let cmd = vm.command_line().join(" ");
    assert!(cmd.contains("-serial chardev:console"), "{cmd}");
    let line = vm
        .wait_for_console_pattern("from the test BIOS", T)
        .await
        .unwrap_or_else(|e| panic!("{e}; log: {}", vm.log()));
    assert_eq!(line, "Hello from the test BIOS");
    assert_eq!(vm.console_read_line(T).await.unwrap(), "second line");
    // Nothing more until we write: the guest echoes.
    assert!(vm
        .console_read_line(Duration::from_millis(100))
        .await
        .unwrap_err()
        .is_timeout());
    vm.console_write(b"ping\r\n").await.unwrap();
    assert_eq!(vm.console_read_line(T).await.unwrap(), "ping");
    vm.console_write(b"login: ").await.unwrap();
    // The echo comes byte by byte: wait for the whole prompt.
    assert_eq!(
        vm.wait_for_console_pattern("login: ", T).await.unwrap(),
        "login: "
    );
    // A lot of input, echoed back: nothing blocks, the drain keeps up.
    let big = "x".repeat(4000) + "\n";
    vm.console_write(big.as_bytes()).await.unwrap();
    assert_eq!(vm.console_read_line(T).await.unwrap().len(), 4000);

    vm.shutdown().await.unwrap();
    let output = vm.console_output().unwrap();
    assert!(
        output.starts_with("Hello from the test BIOS\r\nsecond line\r\nping\r\nlogin: "),
        "{output:?}"
    );
    assert!(matches!(
        vm.console_read_line(Duration::from_millis(100)).await,
        Err(MachineError::ConsoleClosed { .. })
    ));
    let logged = std::fs::read_to_string(&console_log).unwrap();
    assert_eq!(logged, output);
    assert_dir_empty(base.path());
}

#[tokio::test]
async fn a_console_without_guest_is_drained_and_closed_cleanly() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let vm = none(&qemu, base.path())
        .console_index(1)
        .launch()
        .await
        .unwrap();
    let cmd = vm.command_line().join(" ");
    assert!(
        cmd.contains("-serial null -chardev socket,id=console,fd=")
            && cmd.contains("-serial chardev:console"),
        "{cmd}"
    );
    assert_eq!(vm.console_output().as_deref(), Some(""));
    // Nobody reads on QEMU's side, but a small write fits in the socket buffer.
    tokio::time::timeout(T, vm.console_write(b"hello\n"))
        .await
        .expect("console_write blocked")
        .unwrap();
    assert!(vm
        .console_read_line(Duration::from_millis(50))
        .await
        .unwrap_err()
        .is_timeout());
    let start = Instant::now();
    vm.shutdown().await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        vm.wait_for_console_pattern("x", T).await,
        Err(MachineError::ConsoleClosed { .. })
    ));
    assert_dir_empty(base.path());
}

// ---- never leak -----------------------------------------------------------------------

#[tokio::test]
async fn dropping_a_running_machine_kills_qemu() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let vm = none(&qemu, base.path())
        .console(true)
        .launch()
        .await
        .unwrap();
    let pid = vm.pid().unwrap();
    let temp = vm.temp_dir().to_owned();
    assert!(temp.is_dir());
    drop(vm);
    assert_gone_within(pid, Duration::from_secs(5));
    assert!(!temp.exists());
    assert_dir_empty(base.path());
}

#[test]
fn a_panic_while_holding_a_machine_leaves_no_qemu() {
    let Some(qemu) = qemu() else { return };
    let base = tempdir();
    let pid = Arc::new(AtomicU32::new(0));
    let seen = pid.clone();
    let base_path = base.path().to_owned();
    let result = std::panic::catch_unwind(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let _g = GLOBAL.read().await;
            let vm = none(&qemu, &base_path).launch().await.unwrap();
            seen.store(vm.pid().unwrap(), Ordering::SeqCst);
            vm.command("query-status", None).await.unwrap();
            panic!("deliberate panic while holding a machine");
        })
    });
    assert!(result.is_err(), "the closure panicked");
    let pid = pid.load(Ordering::SeqCst);
    assert_ne!(pid, 0);
    assert_gone_within(pid, Duration::from_secs(5));
    assert_dir_empty(base.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_machines_at_once() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.write().await;
    let base = tempdir();
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..50 {
        let b = none(&qemu, base.path()).name(format!("many-{i}"));
        set.spawn(async move {
            let vm = b.launch().await?;
            let status = vm.command("query-status", None).await?;
            Ok::<_, MachineError>((vm, status))
        });
    }
    let mut machines = Vec::new();
    while let Some(r) = set.join_next().await {
        let (vm, status) = r.expect("task").expect("launch");
        assert_eq!(status["status"], json!("running"));
        machines.push(Arc::new(vm));
    }
    let launched = start.elapsed();
    assert_eq!(machines.len(), 50);
    let mut pids: Vec<u32> = machines.iter().map(|m| m.pid().unwrap()).collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 50);
    // Every machine has its own directory under `base`, and no socket file anywhere.
    assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 50);

    let mut set = tokio::task::JoinSet::new();
    for vm in &machines {
        let vm = vm.clone();
        set.spawn(async move { vm.shutdown().await });
    }
    while let Some(r) = set.join_next().await {
        r.expect("task").expect("shutdown");
    }
    eprintln!(
        "50 machines: launched in {launched:?}, all done in {:?}",
        start.elapsed()
    );
    for vm in &machines {
        assert_eq!(vm.exit_code(), Some(0), "{}: {}", vm.name(), vm.log());
    }
    assert!(qemu_children().is_empty(), "{:?}", qemu_children());
    for pid in pids {
        assert!(gone(pid));
    }
    assert_dir_empty(base.path());
    drop(machines);
    assert!(qemu_children().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_launches_leave_nothing_behind() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.write().await;
    let base = tempdir();
    let mut finished = 0;
    for i in 0..40u64 {
        // Dropped at different points: before the fork, while the spawner forks,
        // while QEMU starts, during QMP negotiation, or not at all.
        let launch = none(&qemu, base.path()).console(true).launch();
        if let Ok(vm) = tokio::time::timeout(Duration::from_micros(i * 750), launch).await {
            drop(vm.unwrap());
            finished += 1;
        }
        // Nothing is left once the drop has returned: a launch dropped while the
        // spawner thread forks waits for the fork and kills what it started. (It
        // used to leave QEMU running when dropped after the spawner had sent its
        // reply and before the launch had looked at it.)
        assert!(qemu_children().is_empty(), "leaked: {:?}", qemu_children());
    }
    eprintln!("{finished} of 40 launches finished before being cancelled");
    assert!(qemu_children().is_empty(), "leaked: {:?}", qemu_children());
    assert_dir_empty(base.path());
}

#[tokio::test]
async fn launch_failures_leave_nothing_behind() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    // QMP never comes up: a wrapper that sleeps instead of running QEMU.
    let start = Instant::now();
    let err = QemuMachine::builder(&qemu)
        .base_temp_dir(base.path())
        .wrapper(["sh", "-c", "exec sleep 30", "sh"])
        .accept_timeout(Duration::from_millis(500))
        .launch()
        .await
        .expect_err("no QMP");
    let f = err.as_launch_failure().unwrap();
    assert!(matches!(f.cause, LaunchCause::Timeout(_)), "{err}");
    assert_eq!(f.signal, Some(9), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_dir_empty(base.path());

    // Settings that cannot work fail before anything is started.
    let err = none(&qemu, base.path())
        .name("a/b")
        .launch()
        .await
        .unwrap_err();
    assert!(matches!(err, MachineError::InvalidConfig(_)), "{err}");
    let long = "x".repeat(120);
    let err = none(&qemu, base.path())
        .qmp_address(QmpAddress::Unix(long.into()))
        .launch()
        .await
        .unwrap_err();
    assert!(matches!(err, MachineError::InvalidConfig(_)), "{err}");
    assert_dir_empty(base.path());
}

#[allow(dead_code)]
fn _value_is_reexported(v: Value) -> qemu_machine::qemu_qmp::Value {
    v
}
