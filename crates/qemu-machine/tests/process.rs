//! QEMU never outlives its machine, whatever the wrapper does, and a machine's
//! temporary directory does not outlive a killed owner for long: against a real
//! `qemu-system-x86_64` started through wrappers that fork it (`timeout`, a shell
//! that does not exec), after drop, `kill()`, a hard shutdown, the SIGKILL that ends a
//! failed graceful shutdown, a wrapper that exits early, and SIGKILL of the owning
//! process (a child copy of this test binary).
//!
//! QEMU is not our child here (its parent is the wrapper), so it cannot be waited
//! for: it is found in `/proc` by its process group, pinned by a pidfd (so that
//! a reused pid is never mistaken for it, and a QEMU that outlived the test is
//! killed), and `/proc` is checked until it has exited, as the test kit's
//! `assert_gone_within` does; every wait is bounded.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use qemu_machine::{MachineBuilder, MachineError, QemuMachine, ShutdownCause};
use qemu_testkit::{assert_dir_empty, find_in_path, init_tracing};
use rustix::process::{Pid, PidfdFlags, Signal};

/// How long a killed QEMU may take to be gone.
const GONE: Duration = Duration::from_secs(10);
/// Bound for launches and helper processes.
const T: Duration = Duration::from_secs(30);

/// Set in the helper copy of this binary: which wrapper, and the base directory.
const HELPER_WRAPPER: &str = "QEMU_MACHINE_TEST_HELPER_WRAPPER";
const HELPER_BASE: &str = "QEMU_MACHINE_TEST_HELPER_BASE";

fn qemu() -> Option<PathBuf> {
    init_tracing();
    qemu_testkit::qemu_system()
}

fn tempdir() -> tempfile::TempDir {
    qemu_testkit::tempdir("qm-proc-")
}

/// The wrappers under test, by name: both fork QEMU instead of exec'ing it.
fn wrapper(kind: &str) -> Vec<String> {
    match kind {
        // Puts itself in a process group of its own (it calls setpgid(0, 0)) and
        // forks QEMU; cannot forward SIGKILL.
        "timeout" => vec!["timeout".into(), "1000".into()],
        // A shell that forks QEMU and waits for it (no exec: `; true` follows).
        "sh" => ["sh", "-c", "\"$@\"; true", "sh"]
            .map(String::from)
            .to_vec(),
        other => panic!("unknown wrapper {other:?}"),
    }
}

fn wrappers() -> Vec<&'static str> {
    if find_in_path("timeout").is_some() {
        vec!["timeout", "sh"]
    } else {
        qemu_testkit::loud("NOTE: no `timeout` in PATH: only the `sh` wrapper is tested");
        vec!["sh"]
    }
}

fn builder(qemu: &Path, base: &Path, kind: &str) -> MachineBuilder {
    QemuMachine::builder(qemu)
        .machine_type("none")
        .base_temp_dir(base)
        .wrapper(wrapper(kind))
}

/// `(comm, state, pgrp, start time)` from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(String, char, u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (open, close) = (s.find('(')?, s.rfind(')')?);
    let comm = s.get(open + 1..close)?.to_owned();
    let f: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    Some((
        comm,
        state,
        f.get(2)?.parse().ok()?,
        f.get(19)?.parse().ok()?,
    ))
}

/// Processes in process group `pgid` that are not zombies, as `(pid, comm)`.
fn running_in_group(pgid: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some((comm, state, pgrp, _)) = stat(pid) {
            if pgrp == pgid && state != 'Z' && state != 'X' {
                found.push((pid, comm));
            }
        }
    }
    found
}

/// QEMU, found among the processes of group `pgid`, with its start time and a
/// pidfd (opened, then checked to be still the same process: pids get reused).
struct Qemu {
    pid: u32,
    start: u64,
    pidfd: OwnedFd,
}

impl Qemu {
    fn in_group(pgid: u32) -> Qemu {
        let group = running_in_group(pgid);
        let pid = group
            .iter()
            .find(|(_, comm)| comm.starts_with("qemu-system"))
            .unwrap_or_else(|| panic!("no QEMU in process group {pgid}: {group:?}"))
            .0;
        Qemu::open(pid)
    }

    fn open(pid: u32) -> Qemu {
        let start = stat(pid).expect("QEMU's /proc entry").3;
        let pidfd =
            rustix::process::pidfd_open(Pid::from_raw(pid as i32).unwrap(), PidfdFlags::empty())
                .expect("pidfd_open");
        let same = stat(pid).is_some_and(|(comm, _, _, s)| s == start && comm.starts_with("qemu"));
        assert!(same, "pid {pid} changed hands while we opened it");
        Qemu { pid, start, pidfd }
    }

    /// Whether QEMU still runs: its pid exists, with its start time, and is not a
    /// zombie (its parent, the wrapper, may be gone: init reaps it).
    fn runs(&self) -> bool {
        stat(self.pid)
            .is_some_and(|(_, state, _, start)| start == self.start && state != 'Z' && state != 'X')
    }

    /// Panics unless QEMU has exited within [`GONE`].
    async fn assert_gone(self, what: &str) {
        let deadline = std::time::Instant::now() + GONE;
        while self.runs() {
            if std::time::Instant::now() > deadline {
                // Do not leave it running; the pidfd cannot reach another process.
                let _ = rustix::process::pidfd_send_signal(&self.pidfd, Signal::KILL);
                panic!(
                    "{what}: QEMU (pid {}) still runs {GONE:?} later: {:?}",
                    self.pid,
                    stat(self.pid)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

// ---- drop, kill, shutdown ------------------------------------------------------------

#[tokio::test]
async fn a_forking_wrapper_runs_qemu_and_shuts_down_gracefully() {
    let Some(qemu) = qemu() else { return };
    for kind in wrappers() {
        let base = tempdir();
        let vm = builder(&qemu, base.path(), kind).launch().await.unwrap();
        let pgid = vm.pid().unwrap();
        let q = Qemu::in_group(pgid);
        assert_ne!(q.pid, pgid, "{kind}: QEMU is the wrapper's child");
        vm.command("query-status", None).await.unwrap();
        vm.shutdown().await.unwrap();
        assert_eq!(vm.exit_code(), Some(0), "{kind}: {}", vm.log());
        q.assert_gone(kind).await;
        assert_eq!(running_in_group(pgid), vec![], "{kind}");
        assert_dir_empty(base.path());
    }
}

#[tokio::test]
async fn dropping_a_machine_kills_a_forked_qemu() {
    let Some(qemu) = qemu() else { return };
    for kind in wrappers() {
        let base = tempdir();
        let vm = builder(&qemu, base.path(), kind).launch().await.unwrap();
        let pgid = vm.pid().unwrap();
        let q = Qemu::in_group(pgid);
        drop(vm);
        q.assert_gone(&format!("{kind}, drop")).await;
        assert_eq!(running_in_group(pgid), vec![], "{kind}");
        assert_dir_empty(base.path());
    }
}

#[tokio::test]
async fn kill_and_hard_shutdown_kill_a_forked_qemu() {
    let Some(qemu) = qemu() else { return };
    for kind in wrappers() {
        for hard_shutdown in [false, true] {
            let base = tempdir();
            let vm = builder(&qemu, base.path(), kind).launch().await.unwrap();
            let pgid = vm.pid().unwrap();
            let q = Qemu::in_group(pgid);
            if hard_shutdown {
                vm.shutdown_with(true, None).await.unwrap();
            } else {
                vm.kill().await.unwrap();
            }
            assert_eq!(vm.exit_code(), Some(-9), "{kind}");
            q.assert_gone(&format!("{kind}, hard shutdown {hard_shutdown}"))
                .await;
            assert_eq!(running_in_group(pgid), vec![], "{kind}");
            assert_dir_empty(base.path());
        }
    }
}

/// QEMU is stopped, so `quit` gets no answer: the graceful shutdown times out and
/// falls back to SIGKILL, which must reach QEMU and not only the wrapper.
#[tokio::test]
async fn a_failed_graceful_shutdown_kills_a_forked_qemu() {
    let Some(qemu) = qemu() else { return };
    for kind in wrappers() {
        let base = tempdir();
        let vm = builder(&qemu, base.path(), kind).launch().await.unwrap();
        let pgid = vm.pid().unwrap();
        let q = Qemu::in_group(pgid);
        rustix::process::pidfd_send_signal(&q.pidfd, Signal::STOP).unwrap();
        let err = vm
            .shutdown_with(false, Some(Duration::from_millis(500)))
            .await
            .expect_err("a stopped QEMU cannot quit");
        assert!(
            matches!(
                err,
                MachineError::AbnormalShutdown {
                    cause: ShutdownCause::Timeout(_)
                }
            ),
            "{kind}: {err:?}"
        );
        q.assert_gone(&format!("{kind}, failed graceful shutdown"))
            .await;
        assert_eq!(running_in_group(pgid), vec![], "{kind}");
        assert_dir_empty(base.path());
    }
}

/// A wrapper that starts QEMU in the background and exits: what it leaves in its
/// group is killed when it exits, so the launch fails and no QEMU remains.
#[tokio::test]
async fn a_wrapper_that_exits_early_takes_qemu_with_it() {
    let Some(qemu) = qemu() else { return };
    let base = tempdir();
    let files = tempdir();
    let pidfile = files.path().join("qemu.pid");
    let script = format!(
        "\"$@\" & echo $! > {}.tmp && mv {0}.tmp {0}; exit 0",
        pidfile.display()
    );
    let err = QemuMachine::builder(&qemu)
        .machine_type("none")
        .base_temp_dir(base.path())
        .wrapper(["sh", "-c", &script, "sh"])
        .launch()
        .await
        .expect_err("QEMU is killed when the wrapper exits");
    let f = err.as_launch_failure().expect("a launch failure");
    assert_eq!(f.exit_code, Some(0), "{err}");
    // The shell wrote QEMU's pid before it exited, i.e. before the group was killed.
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("the wrapper's pid file")
        .trim()
        .parse()
        .unwrap();
    // SIGKILL was sent before the launch failed; the kernel may still be tearing
    // QEMU down. Gone, another process by now, or QEMU's zombie (its parent, the
    // shell, is gone; init reaps it) will do.
    let runs = || {
        stat(pid).is_some_and(|(comm, state, ..)| {
            comm.starts_with("qemu") && state != 'Z' && state != 'X'
        })
    };
    let deadline = std::time::Instant::now() + GONE;
    while runs() {
        assert!(
            std::time::Instant::now() < deadline,
            "QEMU {pid} still runs: {:?}",
            stat(pid)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_dir_empty(base.path());
}

// ---- SIGKILL of the owning process ---------------------------------------------------

/// Not a test: run by the tests below in a child copy of this binary. Launches a
/// machine with the wrapper `$QEMU_MACHINE_TEST_HELPER_WRAPPER` under
/// `$QEMU_MACHINE_TEST_HELPER_BASE`, prints `HELPER <wrapper pid> <qemu pid>
/// <temporary directory>`, then blocks until stdin closes (or it is killed).
#[tokio::test]
#[ignore = "helper process for the SIGKILL tests"]
async fn helper_launch_and_block() {
    let (Some(kind), Some(base)) = (
        std::env::var_os(HELPER_WRAPPER),
        std::env::var_os(HELPER_BASE),
    ) else {
        return;
    };
    let Some(qemu) = qemu() else { return };
    let kind = kind.to_str().unwrap();
    let mut b = QemuMachine::builder(&qemu)
        .machine_type("none")
        .base_temp_dir(base);
    if kind != "none" {
        b = b.wrapper(wrapper(kind));
    }
    let vm = b.launch().await.unwrap();
    let pgid = vm.pid().unwrap();
    let qemu_pid = running_in_group(pgid)
        .into_iter()
        .find(|(_, comm)| comm.starts_with("qemu-system"))
        .expect("QEMU in the group")
        .0;
    println!("HELPER {pgid} {qemu_pid} {}", vm.temp_dir().display());
    tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new()))
        .await
        .unwrap()
        .unwrap();
    vm.shutdown().await.unwrap();
}

/// A helper copy of this binary owning a machine.
struct Helper {
    child: Child,
    /// The wrapper's pid (the group id).
    pgid: u32,
    qemu: u32,
    temp_dir: PathBuf,
}

impl Helper {
    fn start(kind: &str, base: &Path) -> Helper {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "helper_launch_and_block",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HELPER_WRAPPER, kind)
            .env(HELPER_BASE, base)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // libtest prints "test helper_launch_and_block ... " first, without a
        // newline, so the marker may be mid-line. Read on a thread, so that a broken
        // helper cannot hang the test.
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end: the helper must be able to print its result.
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("HELPER ") {
                    let _ = tx.send(line[at + "HELPER ".len()..].trim().to_owned());
                }
            }
        });
        let line = match rx.recv_timeout(T) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the helper did not report its machine: {e}");
            }
        };
        let mut parts = line.splitn(3, ' ');
        let mut next = || parts.next().expect("HELPER line").to_owned();
        let (pgid, qemu, temp_dir) = (next(), next(), next());
        Helper {
            child,
            pgid: pgid.parse().unwrap(),
            qemu: qemu.parse().unwrap(),
            temp_dir: temp_dir.into(),
        }
    }

    /// SIGKILL the helper and reap it.
    fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Let the helper shut its machine down and exit; bounded.
    fn finish(mut self) {
        drop(self.child.stdin.take());
        let deadline = std::time::Instant::now() + T;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "helper: {status}");
                return;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the helper did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The owner is SIGKILLed, so nothing of it runs: the wrapper gets SIGKILL from the
/// kernel and QEMU, the wrapper's child, from the watchdog.
#[tokio::test]
async fn qemu_dies_with_its_sigkilled_owner_whatever_the_wrapper() {
    let Some(_) = qemu() else { return };
    let mut kinds = wrappers();
    kinds.push("none");
    for kind in kinds {
        let base = tempdir();
        let helper = Helper::start(kind, base.path());
        let q = Qemu::open(helper.qemu);
        let pgid = helper.pgid;
        if kind != "none" {
            assert_ne!(q.pid, pgid, "{kind}: QEMU is the wrapper's child");
        }
        helper.sigkill();
        q.assert_gone(&format!("{kind}, owner SIGKILLed")).await;
        // The wrapper and the watchdog too.
        let deadline = std::time::Instant::now() + GONE;
        while !running_in_group(pgid).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{kind}: still running in group {pgid}: {:?}",
                running_in_group(pgid)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A SIGKILLed owner leaves its machine's temporary directory behind; the next
/// launch under the same base directory removes it, and keeps a live owner's.
#[tokio::test]
async fn the_next_launch_removes_the_directory_of_a_sigkilled_owner() {
    let Some(qemu) = qemu() else { return };
    let base = tempdir();
    let killed = Helper::start("none", base.path());
    let live = Helper::start("none", base.path());
    let (stale, kept) = (killed.temp_dir.clone(), live.temp_dir.clone());
    assert!(stale.starts_with(base.path()) && kept.starts_with(base.path()));
    let q = Qemu::open(killed.qemu);
    killed.sigkill();
    q.assert_gone("owner SIGKILLed").await;
    assert!(stale.is_dir(), "nothing of the killed owner removed it");
    // Something that only looks like a machine directory, and one with a malformed
    // owner: left alone.
    let foreign = base.path().join("qemu-machine-notours");
    let malformed = base.path().join("qemu-machine-1.2-abcdef");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::create_dir(&malformed).unwrap();

    let vm = QemuMachine::builder(&qemu)
        .machine_type("none")
        .base_temp_dir(base.path())
        .launch()
        .await
        .unwrap();
    assert!(!stale.exists(), "{} left behind", stale.display());
    assert!(
        kept.is_dir(),
        "the live owner's {} was removed",
        kept.display()
    );
    assert!(foreign.is_dir() && malformed.is_dir());
    vm.shutdown().await.unwrap();
    live.finish();
    assert!(!kept.exists());
    std::fs::remove_dir(&foreign).unwrap();
    std::fs::remove_dir(&malformed).unwrap();
    assert_dir_empty(base.path());
}
