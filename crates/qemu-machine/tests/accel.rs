//! Accelerator probes (`qemu_machine::accel`) and `MachineBuilder::best_accel`,
//! against a real `qemu-system-x86_64` and against scripts that play a binary
//! without KVM, a program that is not QEMU, and one that hangs.
//!
//! Skipped (with a `SKIPPED:` line on stderr) when the binary is missing, unless
//! `CI=true`, where a missing binary fails the test. Override the binary with
//! `QEMU_SYSTEM_X86_64=/path/to/qemu-system-x86_64`. The KVM test needs a usable
//! `/dev/kvm`; without one it is skipped, loudly, except under `CI=true`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qemu_machine::accel::{self, AccelError, KvmUnavailable};
use qemu_machine::{MachineError, QemuMachine};
use qemu_testkit::{assert_no_qemu_children, init_tracing, is_ci, loud, proc_state, wait_until};
use serde_json::json;
use tokio::sync::Mutex;

/// Every test holds this: scripts are written while no other test forks (a child
/// forked while a script is open for writing would make running it fail with
/// ETXTBSY), and the check for leftover QEMUs sees only its own test's.
static SERIAL: Mutex<()> = Mutex::const_new(());

const T: Duration = Duration::from_secs(30);

fn qemu() -> Option<PathBuf> {
    init_tracing();
    qemu_testkit::qemu_system()
}

/// An executable shell script `name` in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn the_real_binary_lists_tcg_and_kvm_and_is_asked_once() {
    let Some(qemu) = qemu() else { return };
    let _g = SERIAL.lock().await;
    let list = accel::list_accel(&qemu).await.unwrap();
    assert!(list.iter().any(|a| a == "tcg"), "{list:?}");
    // Debian builds both versions with KVM.
    assert!(list.iter().any(|a| a == "kvm"), "{list:?}");
    assert!(accel::tcg_available(&qemu).await.unwrap());
    // Cached: the second answer costs no process.
    let start = Instant::now();
    assert_eq!(accel::list_accel(&qemu).await.unwrap(), list);
    assert!(
        start.elapsed() < Duration::from_millis(5),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn best_accel_runs_kvm_and_query_kvm_says_so() {
    let Some(qemu) = qemu() else { return };
    let _g = SERIAL.lock().await;
    if let Err(why) = accel::kvm_status(Some("x86_64"), Some(&qemu)).await {
        if is_ci() {
            panic!("KVM is not usable here and CI=true: {why}");
        }
        loud(&format!(
            "SKIPPED: best_accel_runs_kvm_and_query_kvm_says_so: {why}"
        ));
        return;
    }
    assert!(accel::kvm_available(Some("x86_64"), Some(&qemu))
        .await
        .unwrap());
    let base = qemu_testkit::tempdir("accel-test-");
    let vm = QemuMachine::builder(&qemu)
        .machine_type("pc")
        .args(["-S"])
        .base_temp_dir(base.path())
        .best_accel()
        .launch()
        .await
        .unwrap();
    let choice = vm.accel().unwrap();
    assert_eq!(choice.name, "kvm");
    assert!(choice.kvm_unavailable.is_none());
    let cl = vm.command_line().join(" ");
    assert!(cl.contains("-accel kvm"), "{cl}");
    let kvm = vm.command("query-kvm", None).await.unwrap();
    assert_eq!(kvm, json!({"enabled": true, "present": true}));
    vm.shutdown().await.unwrap();
    assert_no_qemu_children();
}

#[tokio::test]
async fn a_foreign_target_architecture_rules_kvm_out() {
    let Some(qemu) = qemu() else { return };
    let _g = SERIAL.lock().await;
    let host = accel::host_arch();
    let foreign = if host == "aarch64" {
        "x86_64"
    } else {
        "aarch64"
    };
    match accel::kvm_status(Some(foreign), Some(&qemu)).await {
        Err(KvmUnavailable::ArchMismatch { host: h, target }) => {
            assert_eq!(h, host);
            assert_eq!(target, foreign);
        }
        // Without /dev/kvm the device is named first.
        Err(KvmUnavailable::NoDevice { .. } | KvmUnavailable::NoPermission { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(!accel::kvm_available(Some(foreign), Some(&qemu))
        .await
        .unwrap());
}

#[tokio::test]
async fn a_binary_without_kvm_gets_tcg() {
    let Some(qemu) = qemu() else { return };
    let _g = SERIAL.lock().await;
    let dir = qemu_testkit::tempdir("accel-test-");
    // Named like the real one, so the target architecture is x86_64; it answers
    // `-accel help` without kvm and runs the real QEMU otherwise.
    let fake = script(
        dir.path(),
        "qemu-system-x86_64",
        &format!(
            "if [ \"$1 $2\" = '-accel help' ]; then\n  \
             echo 'Accelerators supported in QEMU binary:'; echo tcg; exit 0\nfi\n\
             exec '{}' \"$@\"",
            qemu.display()
        ),
    );
    let e = accel::kvm_status(None, Some(&fake)).await.unwrap_err();
    match &e {
        KvmUnavailable::NotInBinary {
            binary,
            accelerators,
        } => {
            assert_eq!(binary, &fake);
            assert_eq!(accelerators, &["tcg"]);
        }
        // Without /dev/kvm the device is named first.
        KvmUnavailable::NoDevice { .. } | KvmUnavailable::NoPermission { .. } => {}
        other => panic!("{other:?}"),
    }
    assert!(!accel::kvm_available(None, Some(&fake)).await.unwrap());

    let vm = QemuMachine::builder(&fake)
        .machine_type("pc")
        .args(["-S"])
        .base_temp_dir(dir.path())
        .best_accel()
        .launch()
        .await
        .unwrap();
    let choice = vm.accel().unwrap();
    assert_eq!(choice.name, "tcg");
    let why = choice.kvm_unavailable.as_ref().unwrap().to_string();
    assert!(
        why.contains("built without KVM") || why.contains("/dev/kvm"),
        "{why}"
    );
    assert!(vm.command_line().join(" ").contains("-accel tcg"));
    let kvm = vm.command("query-kvm", None).await.unwrap();
    assert_eq!(kvm["enabled"], json!(false));
    vm.shutdown().await.unwrap();
    assert_no_qemu_children();
}

#[tokio::test]
async fn programs_that_are_not_qemu_are_named_as_such() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let dir = qemu_testkit::tempdir("accel-test-");
    // Succeeds and prints something else.
    let echo = script(dir.path(), "echo-args", "echo \"$@\"");
    let e = accel::list_accel(&echo).await.unwrap_err();
    assert!(matches!(e, AccelError::NotQemu { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("is it a QEMU system emulator"), "{text}");
    assert!(text.contains("-accel help"), "{text}");
    // Succeeds and prints nothing.
    let silent = script(dir.path(), "silent", "exit 0");
    let e = accel::list_accel(&silent).await.unwrap_err();
    assert!(matches!(e, AccelError::NotQemu { .. }), "{e:?}");
    // Fails.
    let failing = script(dir.path(), "failing", "echo 'unknown option' ; exit 3");
    let e = accel::list_accel(&failing).await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains("exit status: 3"), "{text}");
    assert!(text.contains("unknown option"), "{text}");
    // Not there, or not executable.
    let e = accel::list_accel(dir.path().join("missing"))
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "not a program").unwrap();
    let e = accel::list_accel(&plain).await.unwrap_err();
    assert!(matches!(e, AccelError::Spawn { .. }), "{e:?}");
    // The builder says the same, and starts nothing.
    let e = QemuMachine::builder(&echo)
        .best_accel()
        .launch()
        .await
        .unwrap_err();
    assert!(
        matches!(e, MachineError::Accel(AccelError::NotQemu { .. })),
        "{e:?}"
    );
    // And so does kvm_available (Python raises too).
    assert!(
        accel::kvm_available(None, Some(&echo)).await.is_err()
            || !Path::new(accel::KVM_DEVICE).exists()
    );
}

#[tokio::test]
async fn a_binary_that_hangs_is_killed_at_the_timeout() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let dir = qemu_testkit::tempdir("accel-test-");
    let pids = dir.path().join("pids");
    // One that never answers, and one that answers and exits but leaves a child
    // holding its output: its process group is killed when it exits.
    let hangs = script(
        dir.path(),
        "hangs",
        &format!("echo $$ >> '{}'; exec sleep 600", pids.display()),
    );
    let leaves = script(
        dir.path(),
        "leaves-a-child",
        &format!(
            "sleep 600 &\necho $! >> '{}'\necho 'Accelerators supported in QEMU binary:'; echo tcg",
            pids.display()
        ),
    );
    let start = Instant::now();
    let e = accel::list_accel_timeout(&hangs, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(e, AccelError::Timeout { .. }), "{e:?}");
    assert!(e.to_string().contains("did not finish within 1s"), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let list = accel::list_accel_timeout(&leaves, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(list, ["tcg"]);
    // Everything they started is gone: the probe kills the process group.
    let pids = std::fs::read_to_string(&pids).unwrap();
    let pids: Vec<u32> = pids.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2, "{pids:?}");
    for pid in pids {
        // Dead (a zombie at most, if init has not reaped the orphan yet).
        wait_until(T, &format!("pid {pid} to die"), || {
            matches!(proc_state(pid), None | Some('Z'))
        });
    }
}
