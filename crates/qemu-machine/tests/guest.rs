//! A real Linux guest under `QemuMachine`: Debian's kernel and busybox, booted from
//! the image qemu-testkit builds (see its `guest` module), under KVM when it is
//! hardware-assisted and TCG otherwise. One boot per test, several checks per boot.
//!
//! Skipped (with a `SKIPPED:` line) without `qemu-system-x86_64`, `qemu-ga` or a way
//! to build the image; under `CI=true` that fails instead.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use qemu_machine::{MachineBuilder, QemuMachine};
use qemu_testkit::guest::{guest_image, GUEST_READY};
use serde_json::json;

/// Generous: under TCG on a loaded 2-core machine a boot takes 5 to 15 s.
const BOOT: Duration = Duration::from_secs(120);
/// For a command typed on the console, or a hot-plug, to show.
const GUEST: Duration = Duration::from_secs(60);

fn qemu() -> Option<PathBuf> {
    qemu_testkit::init_tracing();
    qemu_testkit::qemu_system()
}

/// A `pc` machine booting the test guest with its console on COM1.
fn guest(qemu: &PathBuf, base: &std::path::Path) -> Option<MachineBuilder> {
    let image = guest_image()?;
    Some(
        QemuMachine::builder(qemu)
            .machine_type("pc")
            .base_temp_dir(base)
            .args(image.qemu_args(""))
            .console(true),
    )
}

/// Types `command` on the guest's shell and returns the first console line holding
/// `expect`, which the echo of the command itself must not contain (`$((6 * 7))`
/// prints `42`), and which must end what the test looks at: a line still being
/// written matches as soon as `expect` arrives.
async fn run_on_console(vm: &QemuMachine, command: &str, expect: &str) -> String {
    vm.console_write(format!("{command}\n").as_bytes())
        .await
        .unwrap();
    match vm.wait_for_console_pattern(expect, GUEST).await {
        Ok(line) => line,
        Err(e) => panic!(
            "no {expect:?} on the console after {command:?}: {e}\nconsole:\n{}",
            vm.console_output().unwrap_or_default()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booted_guest_answers_on_its_console_sees_a_hot_plugged_disk_and_powers_off() {
    let Some(qemu) = qemu() else { return };
    let Some(img) = qemu_testkit::qemu_img() else {
        return;
    };
    let base = qemu_testkit::tempdir("qm-guest-");
    let Some(builder) = guest(&qemu, base.path()) else {
        return;
    };
    let started = Instant::now();
    let vm = builder.powerdown_timeout(GUEST).launch().await.unwrap();

    // The kernel's own boot output, then the init script's marker.
    vm.wait_for_console_pattern("Linux version", BOOT)
        .await
        .unwrap();
    vm.wait_for_console_pattern(GUEST_READY, BOOT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", vm.console_output().unwrap_or_default()));
    // (The line matched above may have been cut short: it is complete by now.)
    let console = vm.console_output().unwrap();
    let banner = console
        .lines()
        .find(|l| l.contains("Linux version"))
        .unwrap();
    assert!(banner.contains("Debian"), "{banner}");
    eprintln!("guest ready {:?} after launch", started.elapsed());

    // A command typed on the serial console, and its output read back.
    let line = run_on_console(&vm, "echo $(uname -s) sum-$((6 * 7))", "sum-42").await;
    assert!(line.contains("Linux sum-42"), "{line:?}");

    // Hot-plug: a qcow2 disk the guest's virtio-blk driver picks up.
    let disk = base.path().join("hotplug.qcow2");
    let out = qemu_testkit::output_within(
        std::process::Command::new(&img)
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg("8M")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
        GUEST,
        "qemu-img create",
    );
    assert!(out.status.success(), "{out:?}");
    vm.command(
        "blockdev-add",
        Some(json!({
            "driver": "qcow2", "node-name": "hp0",
            "file": {"driver": "file", "filename": disk.to_str().unwrap()},
        })),
    )
    .await
    .unwrap();
    vm.command(
        "device_add",
        Some(json!({"driver": "virtio-blk-pci", "drive": "hp0", "id": "hp-disk", "serial": "qemurs-hp"})),
    )
    .await
    .unwrap();
    // 8 MiB = 16384 sectors of 512 bytes.
    let line = run_on_console(
        &vm,
        "until [ -e /sys/block/vda/serial ]; do sleep 0.1; done; \
         echo disk-$(cat /sys/block/vda/serial)-$(cat /sys/block/vda/size) seen-$((1 + 1))",
        "seen-2",
    )
    .await;
    assert!(line.contains("disk-qemurs-hp-16384"), "{line:?}");

    // Unplug: completed by the guest (ACPI eject), announced by DEVICE_DELETED.
    vm.command("device_del", Some(json!({"id": "hp-disk"})))
        .await
        .unwrap();
    let deleted = vm
        .event_wait(
            "DEVICE_DELETED",
            GUEST,
            Some(json!({"data": {"device": "hp-disk"}})),
        )
        .await
        .unwrap();
    assert!(deleted.is_some(), "no DEVICE_DELETED for hp-disk");
    run_on_console(
        &vm,
        "while [ -e /sys/block/vda ]; do sleep 0.1; done; echo vda-$((1 + 1))-gone",
        "vda-2-gone",
    )
    .await;
    vm.command("blockdev-del", Some(json!({"node-name": "hp0"})))
        .await
        .unwrap();

    // shutdown() with a powerdown timeout: the ACPI power button, which the guest's
    // acpid turns into a poweroff, and no `quit`.
    let asked = Instant::now();
    vm.shutdown().await.unwrap();
    let took = asked.elapsed();
    assert_eq!(vm.exit_code(), Some(0), "{}", vm.log());
    let events = vm.get_qmp_events(false).await;
    let names: Vec<&str> = events.iter().map(|e| e.name()).collect();
    assert!(names.contains(&"POWERDOWN"), "{names:?}");
    let shutdown = events
        .iter()
        .find(|e| e.name() == "SHUTDOWN")
        .unwrap_or_else(|| panic!("no SHUTDOWN event: {names:?}"));
    assert!(
        qemu_machine::event_match(
            &shutdown.to_value(),
            &json!({"data": {"guest": true, "reason": "guest-shutdown"}})
        ),
        "{shutdown:?}"
    );
    assert!(took < GUEST, "the guest took {took:?} to power off");
    eprintln!("guest powered off {took:?} after shutdown() was called");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_ignoring_the_power_button_is_quit_after_the_powerdown_timeout() {
    let Some(qemu) = qemu() else { return };
    let base = qemu_testkit::tempdir("qm-guest-");
    let Some(builder) = guest(&qemu, base.path()) else {
        return;
    };
    let patience = Duration::from_secs(3);
    let vm = builder
        .powerdown_timeout(patience)
        .shutdown_timeout(GUEST)
        .launch()
        .await
        .unwrap();
    vm.wait_for_console_pattern(GUEST_READY, BOOT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", vm.console_output().unwrap_or_default()));
    // Without acpid nobody handles the power button.
    run_on_console(&vm, "killall acpid; echo acpid-killed-$?", "acpid-killed-0").await;

    let asked = Instant::now();
    vm.shutdown().await.unwrap();
    let took = asked.elapsed();
    assert_eq!(vm.exit_code(), Some(0), "{}", vm.log());
    assert!(
        took >= patience,
        "quit after {took:?}, before the powerdown timeout"
    );
    let events = vm.get_qmp_events(false).await;
    let names: Vec<&str> = events.iter().map(|e| e.name()).collect();
    assert!(names.contains(&"POWERDOWN"), "{names:?}");
    let shutdown = events
        .iter()
        .find(|e| e.name() == "SHUTDOWN")
        .unwrap_or_else(|| panic!("no SHUTDOWN event: {names:?}"));
    assert!(
        qemu_machine::event_match(
            &shutdown.to_value(),
            &json!({"data": {"guest": false, "reason": "host-qmp-quit"}})
        ),
        "{shutdown:?}"
    );
}
