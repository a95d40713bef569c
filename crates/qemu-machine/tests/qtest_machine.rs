//! Tests of `QtestMachine` against a real `qemu-system-x86_64`.
//!
//! Skipped (with a `SKIPPED:` line on stderr) when the binary is missing, unless
//! `CI=true`, where a missing binary fails the test. Override the binary with
//! `QEMU_SYSTEM_X86_64=/path/to/qemu-system-x86_64`. Where the binary lacks the qtest
//! accelerator (Debian's 7.2 and 10.0), the machine runs `-accel tcg -S` and the clock
//! test checks that documented fallback instead; the one `SKIPPED:` line for the clock
//! commands is in `tests/qtest.rs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qemu_machine::qtest::{Endianness, QtestError};
use qemu_machine::{
    LaunchCause, MachineBuilder, MachineError, QemuMachine, QtestAccel, QtestMachine,
    QtestMachineBuilder,
};
use qemu_testkit::{assert_dir_empty, children, gone, init_tracing, proc_stat};
use serde_json::Value;
use tokio::sync::RwLock;

/// The test that counts this process's descriptors and children takes this for
/// writing; every other test holds it for reading while it has QEMUs running.
static GLOBAL: RwLock<()> = RwLock::const_new(());

const T: Duration = Duration::from_secs(10);

/// `qemu-system-x86_64`, or `None` after saying loudly that the test is skipped.
fn qemu() -> Option<PathBuf> {
    init_tracing();
    qemu_testkit::qemu_system()
}

/// Whether the binary lists the qtest accelerator, asked independently of the
/// library.
fn binary_has_qtest_accel(qemu: &Path) -> bool {
    qemu_testkit::has_qtest_accel(qemu)
}

fn tempdir() -> tempfile::TempDir {
    qemu_testkit::tempdir("qtm-test-")
}

/// This process's open descriptors, as `(fd, target)`, except the ones that other
/// tests' tokio runtimes create and drop concurrently (epoll and eventfd) and the
/// handle on `/proc/self/fd` used to list them. Pidfds, sockets, pipes and files
/// all count.
fn open_fds() -> BTreeSet<(String, String)> {
    let dir = std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd");
    dir.flatten()
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            let target = target.to_string_lossy().into_owned();
            let ignored = target == "anon_inode:[eventpoll]"
                || target == "anon_inode:[eventfd]"
                || (target.starts_with("/proc/") && target.ends_with("/fd"));
            (!ignored).then(|| (e.file_name().to_string_lossy().into_owned(), target))
        })
        .collect()
}

const PIDFD: &str = "anon_inode:[pidfd]";

/// Descriptors in `after` that do not refer to anything open in `before`, and every
/// pidfd (none may be left once every machine is gone). Compared by what they refer
/// to, not by number: a tokio runtime started meanwhile by another test (which then
/// waits for `GLOBAL`) duplicates the process-wide signal socket, a new number for
/// an old socket.
fn new_fds(
    before: &BTreeSet<(String, String)>,
    after: &BTreeSet<(String, String)>,
) -> Vec<(String, String)> {
    let old: BTreeSet<&str> = before.iter().map(|(_, t)| t.as_str()).collect();
    after
        .iter()
        .filter(|(_, t)| t == PIDFD || !old.contains(t.as_str()))
        .cloned()
        .collect()
}

/// A `-machine pc` qtest machine with a console, its temporary directory in `base`.
fn pc(qemu: &Path, base: &Path) -> QtestMachineBuilder {
    QtestMachine::builder(qemu).machine(|b| {
        b.base_temp_dir(base)
            .machine_type("pc")
            .nodefaults()
            .args(["-m", "32"])
            .console(true)
    })
}

async fn launch(b: QtestMachineBuilder) -> QtestMachine {
    match b.launch().await {
        Ok(vm) => vm,
        Err(e) => panic!("launch failed: {e}"),
    }
}

// ---- the qtest channel and the machine together -----------------------------------

#[tokio::test]
async fn outb_to_com1_reaches_the_console() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let vm = launch(pc(&qemu, base.path())).await;

    let cmd = vm.command_line().join(" ");
    assert!(
        cmd.contains("-chardev socket,id=qtest,fd=")
            && cmd.contains("-qtest chardev:qtest -qtest-log /dev/null -accel ")
            && cmd.contains("-serial chardev:console"),
        "{cmd}"
    );
    // The qtest arguments come before the user's.
    let qtest_at = cmd.find("-qtest ").expect("-qtest");
    let user_at = cmd.find("-m 32").expect("-m 32");
    assert!(qtest_at < user_at, "{cmd}");

    let text = b"hello from qtest\n";
    for &b in text {
        vm.qtest().outb(0x3f8, b).await.unwrap();
    }
    let line = vm
        .wait_for_console_pattern("hello from qtest", T)
        .await
        .unwrap_or_else(|e| panic!("{e}; log: {}", vm.log()));
    assert_eq!(line, "hello from qtest");
    // Line status register: transmitter empty, no error.
    let lsr = vm.qtest().inb(0x3fd).await.unwrap();
    assert_eq!(lsr & 0x60, 0x60, "LSR {lsr:#x}");

    vm.shutdown().await.unwrap();
    assert_eq!(vm.console_output().as_deref(), Some("hello from qtest\n"));
    assert_dir_empty(base.path());
}

#[tokio::test]
async fn clock_step_advances_the_clock_with_the_qtest_accelerator() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let expected = binary_has_qtest_accel(&qemu);
    assert_eq!(
        QtestMachine::has_qtest_accel(&qemu).await.unwrap(),
        expected
    );
    let vm = launch(pc(&qemu, base.path())).await;
    let c = vm.qtest();
    if expected {
        assert_eq!(vm.accel(), QtestAccel::Qtest);
        let t0 = c.clock_step(0).await.unwrap();
        let t1 = c.clock_step(1000).await.unwrap();
        assert_eq!(t1, t0 + 1000);
        let t2 = c.clock_step(1_000_000).await.unwrap();
        assert_eq!(t2, t1 + 1_000_000);
        assert_eq!(c.clock_set(t2 + 5000).await.unwrap(), t2 + 5000);
        assert!(c.clock_step_next().await.unwrap() >= t2 + 5000);
    } else {
        // The documented fallback: TCG with the CPUs stopped, and the clock
        // commands refused by QEMU, cleanly.
        assert_eq!(vm.accel(), QtestAccel::TcgStopped);
        let cmd = vm.command_line().join(" ");
        assert!(cmd.contains("-accel tcg -S"), "{cmd}");
        for r in [
            c.clock_step(1000).await,
            c.clock_step_next().await,
            c.clock_set(1000).await,
        ] {
            match r {
                Err(QtestError::Failed { reason, .. }) => {
                    assert!(reason.starts_with("Unknown command 'clock_"), "{reason}")
                }
                other => panic!("expected FAIL Unknown command, got {other:?}"),
            }
        }
    }
    // The channel is fine either way.
    assert_eq!(c.endianness().await.unwrap(), Endianness::Little);
    vm.shutdown().await.unwrap();
    assert_dir_empty(base.path());
}

#[tokio::test]
async fn writel_readl_round_trip() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let vm = launch(pc(&qemu, base.path())).await;
    let c = vm.qtest();
    let base_addr = 0x10_0000;
    assert_eq!(c.readl(base_addr).await.unwrap(), 0, "fresh RAM is zero");
    c.writel(base_addr, 0xdead_beef).await.unwrap();
    assert_eq!(c.readl(base_addr).await.unwrap(), 0xdead_beef);
    // Little-endian target: the bytes in memory order.
    assert_eq!(
        c.memread(base_addr, 4).await.unwrap(),
        [0xef, 0xbe, 0xad, 0xde]
    );
    c.writeq(base_addr + 8, 0x0123_4567_89ab_cdef)
        .await
        .unwrap();
    assert_eq!(c.readl(base_addr + 8).await.unwrap(), 0x89ab_cdef);
    assert_eq!(c.readl(base_addr + 12).await.unwrap(), 0x0123_4567);
    // Raw commands (Python's `qtest(cmd)`).
    assert_eq!(c.cmd("readl 0x100000").await.unwrap(), "0x00000000deadbeef");
    vm.shutdown().await.unwrap();
    assert_dir_empty(base.path());
}

#[tokio::test]
async fn qmp_works_on_the_same_machine() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let vm = launch(pc(&qemu, base.path())).await;
    let status = vm.command("query-status", None).await.unwrap();
    let expected = match vm.accel() {
        QtestAccel::Qtest => "running",
        // -S: the CPUs have not been started.
        _ => "prelaunch",
    };
    assert_eq!(status["status"], expected, "{status}");
    let chardevs = vm.command("query-chardev", None).await.unwrap();
    let labels: Vec<&str> = chardevs
        .as_array()
        .expect("query-chardev returns a list")
        .iter()
        .filter_map(|c| c["label"].as_str())
        .collect();
    for label in ["qtest", "mon", "console"] {
        assert!(labels.contains(&label), "{labels:?}");
    }
    // Both channels interleave freely, also concurrently.
    let (qmp, qtest) = tokio::join!(
        vm.command("query-name", None),
        vm.qtest().writel(0x20_0000, 7)
    );
    assert!(qmp.unwrap().is_object());
    qtest.unwrap();
    assert_eq!(vm.qtest().readl(0x20_0000).await.unwrap(), 7);
    assert!(
        vm.machine().qmp().runstate() == qemu_machine::qemu_qmp::Runstate::Running,
        "QMP session still up"
    );
    vm.shutdown().await.unwrap();
    assert_eq!(vm.exit_code(), Some(0));
    assert_dir_empty(base.path());
}

// ---- lifecycle and leaks -----------------------------------------------------------

#[tokio::test]
async fn shutdown_leaves_nothing_behind() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let vm = launch(pc(&qemu, base.path())).await;
    let pid = vm.pid().expect("running");
    let temp = vm.temp_dir().to_owned();
    assert!(temp.is_dir());
    vm.qtest().outb(0x3f8, b'x').await.unwrap();

    let start = Instant::now();
    vm.shutdown().await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(!vm.is_running());
    assert_eq!(vm.exit_code(), Some(0));
    assert!(gone(pid), "QEMU pid {pid}: {:?}", proc_stat(pid));
    assert!(!temp.exists());
    assert_dir_empty(base.path());
    // QEMU has closed its end of the qtest socketpair.
    match tokio::time::timeout(T, vm.qtest().readl(0x10_0000)).await {
        Ok(Err(QtestError::Closed)) => {}
        other => panic!("expected Closed after shutdown, got {other:?}"),
    }
    assert!(vm.qtest().is_closed());
    // Shutting down again is harmless.
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn dropping_a_running_qtest_machine_kills_qemu() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let vm = launch(pc(&qemu, base.path())).await;
    let pid = vm.pid().expect("running");
    vm.qtest().writel(0x10_0000, 1).await.unwrap();
    drop(vm);
    // Drop reaps synchronously.
    assert!(gone(pid), "QEMU pid {pid}: {:?}", proc_stat(pid));
    assert_dir_empty(base.path());
}

#[tokio::test]
async fn a_qemu_that_exits_during_launch_is_a_launch_failure() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let start = Instant::now();
    let e = pc(&qemu, base.path())
        .machine(|b| b.arg("-bogus-option"))
        .launch()
        .await
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let f = e.as_launch_failure().unwrap_or_else(|| panic!("{e:?}"));
    assert!(matches!(f.cause, LaunchCause::Exited { .. }), "{f}");
    assert_eq!(f.exit_code, Some(1), "{f}");
    assert!(f.output.contains("-bogus-option"), "{f}");
    assert!(f.command_line.iter().any(|a| a == "chardev:qtest"), "{f}");
    assert_dir_empty(base.path());

    if !binary_has_qtest_accel(&qemu) {
        // Forcing the missing accelerator fails the same way.
        let e = pc(&qemu, base.path())
            .accel(QtestAccel::Qtest)
            .launch()
            .await
            .unwrap_err();
        let f = e.as_launch_failure().unwrap_or_else(|| panic!("{e:?}"));
        assert!(matches!(f.cause, LaunchCause::Exited { .. }), "{f}");
        assert!(f.output.contains("invalid accelerator qtest"), "{f}");
        assert_dir_empty(base.path());
    }
}

#[tokio::test]
async fn a_missing_binary_is_a_launch_failure() {
    init_tracing();
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let e = QtestMachine::builder("/nonexistent/qemu-system-x86_64")
        .machine(|b| b.base_temp_dir(base.path()))
        .launch()
        .await
        .unwrap_err();
    let f = e.as_launch_failure().unwrap_or_else(|| panic!("{e:?}"));
    assert!(matches!(f.cause, LaunchCause::Spawn { .. }), "{f}");
    assert_dir_empty(base.path());
}

#[tokio::test]
async fn a_clashing_chardev_id_is_rejected_before_launch() {
    init_tracing();
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    // The binary is never run: validation comes first (the probe of a missing
    // binary just fails).
    let e = QtestMachine::builder("/nonexistent/qemu")
        .machine(|b| b.base_temp_dir(base.path()).chardev_fd("qtest", a))
        .launch()
        .await
        .unwrap_err();
    assert!(matches!(e, MachineError::InvalidConfig(_)), "{e:?}");
    assert_dir_empty(base.path());
}

/// Counts descriptors and children before and after launches, shutdowns, drops and
/// failed launches: the same descriptors are open afterwards, and no child is left.
#[tokio::test]
async fn nothing_leaks_on_any_path() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.write().await;
    let base = tempdir();
    // Warm up process-global state (the spawner thread, the probe cache).
    let _ = QtestMachine::has_qtest_accel(&qemu).await;
    // Machines of tests that just ended are reaped, but the reaper thread may hold
    // their pidfds for a moment longer (while it publishes an exit).
    let deadline = Instant::now() + T;
    let before = loop {
        let fds = open_fds();
        if !fds.iter().any(|(_, t)| t == PIDFD) {
            break fds;
        }
        assert!(Instant::now() < deadline, "pidfds stay open: {fds:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(children(), vec![]);

    let vm = launch(pc(&qemu, base.path())).await;
    vm.qtest().outb(0x3f8, b'a').await.unwrap();
    vm.shutdown().await.unwrap();
    drop(vm);

    let vm = launch(pc(&qemu, base.path())).await;
    vm.qtest().outb(0x3f8, b'b').await.unwrap();
    drop(vm);

    let e = pc(&qemu, base.path())
        .machine(|b| b.arg("-bogus-option"))
        .launch()
        .await
        .unwrap_err();
    assert!(e.as_launch_failure().is_some(), "{e:?}");

    // A launch cancelled half-way (the future dropped).
    let cancelled =
        tokio::time::timeout(Duration::from_millis(5), pc(&qemu, base.path()).launch()).await;
    drop(cancelled);

    assert_eq!(children(), vec![]);
    assert_dir_empty(base.path());
    // The client's tasks were aborted on drop; the runtime frees their sockets the
    // next time it runs them, so give it a (bounded) moment. Descriptors of other
    // tests that were still being released when we started may be gone by now; what
    // must not exist is one that was not there before.
    let deadline = Instant::now() + T;
    loop {
        let new = new_fds(&before, &open_fds());
        if new.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "descriptors left open: {new:?}\nbefore: {before:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- builder variants ----------------------------------------------------------------

#[tokio::test]
async fn manual_accel_from_an_existing_builder() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let b: MachineBuilder = QemuMachine::builder(&qemu)
        .base_temp_dir(base.path())
        .machine_type("none");
    let vm = QtestMachine::from_builder(b)
        .accel(QtestAccel::Manual)
        .machine(|b| b.args(["-accel", "tcg"]))
        .qtest_timeout(Duration::from_secs(3))
        .launch()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(vm.accel(), QtestAccel::Manual);
    assert_eq!(vm.qtest().timeout(), Duration::from_secs(3));
    let accels: Vec<&String> = vm
        .command_line()
        .iter()
        .zip(vm.command_line().iter().skip(1))
        .filter(|(a, _)| *a == "-accel")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(accels, ["tcg"]);
    assert_eq!(vm.qtest().endianness().await.unwrap(), Endianness::Little);
    let status: Value = vm.command("query-status", None).await.unwrap();
    assert_eq!(status["status"], "running");
    vm.shutdown().await.unwrap();
    assert_dir_empty(base.path());
}

#[tokio::test]
async fn without_qmp_the_qtest_channel_still_works() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    let vm = launch(pc(&qemu, base.path()).machine(|b| b.qmp(false))).await;
    // Nothing confirmed the launch; the first command waits for QEMU.
    vm.qtest().writel(0x10_0000, 0x1234_5678).await.unwrap();
    assert_eq!(vm.qtest().readl(0x10_0000).await.unwrap(), 0x1234_5678);
    assert!(matches!(
        vm.command("query-status", None).await,
        Err(MachineError::QmpDisabled(_))
    ));
    // SIGTERM, since there is no QMP.
    vm.shutdown().await.unwrap();
    assert!(!vm.is_running());
    assert_dir_empty(base.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_qtest_machines_at_once() {
    let Some(qemu) = qemu() else { return };
    let _g = GLOBAL.read().await;
    let base = tempdir();
    // Concurrent launches of one binary also share one accelerator probe.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..4u32 {
        let b = pc(&qemu, base.path()).machine(move |b| b.name(format!("qt-{i}")));
        set.spawn(async move { (i, b.launch().await) });
    }
    let mut vms = Vec::new();
    while let Some(r) = set.join_next().await {
        let (i, vm) = r.expect("task");
        vms.push((i, vm.unwrap_or_else(|e| panic!("launch {i}: {e}"))));
    }
    // Each machine has its own channel: distinct values, read back from each.
    for (i, vm) in &vms {
        vm.qtest().writel(0x10_0000, 0xa000 + i).await.unwrap();
    }
    for (i, vm) in &vms {
        assert_eq!(vm.qtest().readl(0x10_0000).await.unwrap(), 0xa000 + i);
        assert_eq!(vm.name(), format!("qt-{i}"));
    }
    for (_, vm) in &vms {
        vm.shutdown().await.unwrap();
    }
    assert_dir_empty(base.path());
}
