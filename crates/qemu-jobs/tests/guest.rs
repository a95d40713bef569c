//! Jobs on a running guest (qemu-testkit's test guest booted under
//! `QemuMachine`): a live migration over a Unix socket to a second QEMU started
//! with `-incoming defer`, followed with [`Migration`], the guest still answering
//! on the destination's serial console; and a backup of a disk the guest has just
//! written to, followed with [`Job`], holding what the guest wrote. On the QEMU on
//! `PATH`, or 7.2 through the variables `.ci/qemu-7.2 --env` sets.
//!
//! Skipped (with a `SKIPPED:` line) without `qemu-system-x86_64`, `qemu-ga` or a way
//! to build the image; under `CI=true` that fails instead.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use qemu_jobs::{Job, JobOptions, Migration, MigrationOptions, Outcome};
use qemu_machine::QemuMachine;
use qemu_qapi::typed::TypedClient;
use qemu_qapi_types::{BlockdevBackup, MirrorSyncMode};
use qemu_testkit::guest::{guest_image, GUEST_READY};
use serde_json::json;

/// Generous: under TCG on a loaded 2-core machine a boot takes 5 to 15 s.
const BOOT: Duration = Duration::from_secs(120);
const GUEST: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_guest_migrates_and_answers_on_the_destination() {
    qemu_testkit::init_tracing();
    let Some(qemu) = qemu_testkit::qemu_system() else {
        return;
    };
    let Some(image) = guest_image() else { return };
    let base = qemu_testkit::tempdir("jobs-guest-");
    let launch = |incoming: bool| {
        let mut b = QemuMachine::builder(&qemu)
            .machine_type("pc")
            .base_temp_dir(base.path())
            .args(image.qemu_args(""))
            .console(true);
        if incoming {
            b = b.args(["-incoming", "defer"]);
        }
        b.launch()
    };
    let source = launch(false).await.unwrap();
    source
        .wait_for_console_pattern(GUEST_READY, BOOT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", source.console_output().unwrap_or_default()));
    // Something the guest keeps in its memory across the migration.
    source
        .console_write(b"before=$((20 + 1)); echo set-$before\n")
        .await
        .unwrap();
    source
        .wait_for_console_pattern("set-21", GUEST)
        .await
        .unwrap();

    let destination = launch(true).await.unwrap();
    let uri = format!("unix:{}", base.path().join("migration.sock").display());
    destination
        .command("migrate-incoming", Some(json!({"uri": uri})))
        .await
        .unwrap();
    let qmp = TypedClient::new(source.qmp().clone());
    let migration = Migration::start(&qmp, uri.as_str(), MigrationOptions::new())
        .await
        .unwrap();
    let outcome = migration.wait(Some(BOOT)).await.unwrap();
    assert_eq!(outcome, Outcome::Completed, "{}", source.log());
    // QEMU reports the migration completed a moment before the source's run state
    // moves from finish-migrate to postmigrate (no event marks that step).
    let status = tokio::time::timeout(GUEST, async {
        loop {
            let status = source.command("query-status", None).await.unwrap();
            if status["status"] != "finish-migrate" {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the source left finish-migrate in time");
    assert_eq!(status["status"], "postmigrate", "{status}");

    // The destination runs the same guest: its shell, its variable.
    let resumed = destination.event_wait("RESUME", GUEST, None).await.unwrap();
    assert!(resumed.is_some(), "the destination did not resume");
    destination
        .console_write(b"echo moved-$before-$((2 + 3))\n")
        .await
        .unwrap();
    let line = destination
        .wait_for_console_pattern("-5", GUEST)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", destination.console_output().unwrap_or_default()));
    assert!(line.contains("moved-21-5"), "{line:?}");

    destination.shutdown().await.unwrap();
    source.shutdown().await.unwrap();
}

fn qemu_img(img: &Path, args: &[&str]) {
    let out = qemu_testkit::output_within(
        Command::new(img)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        GUEST,
        "qemu-img",
    );
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_running_guests_disk_holds_what_the_guest_wrote() {
    qemu_testkit::init_tracing();
    let Some(qemu) = qemu_testkit::qemu_system() else {
        return;
    };
    let Some(img) = qemu_testkit::qemu_img() else {
        return;
    };
    let Some(image) = guest_image() else { return };
    let base = qemu_testkit::tempdir("jobs-guest-");
    let disk = base.path().join("disk.qcow2");
    let backup = base.path().join("backup.qcow2");
    let raw = base.path().join("backup.raw");
    for file in [&disk, &backup] {
        qemu_img(
            &img,
            &["create", "-q", "-f", "qcow2", file.to_str().unwrap(), "8M"],
        );
    }
    let vm = QemuMachine::builder(&qemu)
        .machine_type("pc")
        .base_temp_dir(base.path())
        .args(image.qemu_args(""))
        .args([
            "-blockdev".to_owned(),
            format!(
                "driver=qcow2,node-name=disk0,file.driver=file,file.filename={}",
                disk.display()
            ),
            "-device".to_owned(),
            "virtio-blk-pci,drive=disk0,id=vd0".to_owned(),
        ])
        .console(true)
        .launch()
        .await
        .unwrap();
    vm.wait_for_console_pattern(GUEST_READY, BOOT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", vm.console_output().unwrap_or_default()));
    vm.console_write(
        b"until [ -e /dev/vda ]; do sleep 0.1; done; \
          echo written-by-the-guest > /dev/vda; sync; echo wrote-$((3 * 3))\n",
    )
    .await
    .unwrap();
    vm.wait_for_console_pattern("wrote-9", GUEST)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", vm.console_output().unwrap_or_default()));

    // A full backup while the guest runs.
    vm.command(
        "blockdev-add",
        Some(json!({
            "driver": "qcow2", "node-name": "bk0",
            "file": {"driver": "file", "filename": backup.to_str().unwrap()},
        })),
    )
    .await
    .unwrap();
    let qmp = TypedClient::new(vm.qmp().clone());
    let job = Job::start(
        &qmp,
        BlockdevBackup::new("disk0", MirrorSyncMode::Full, "bk0").job_id("bk"),
        JobOptions::new(),
    )
    .await
    .unwrap();
    assert_eq!(job.wait(Some(GUEST)).await.unwrap(), Outcome::Completed);
    vm.command("blockdev-del", Some(json!({"node-name": "bk0"})))
        .await
        .unwrap();
    let status = vm.command("query-status", None).await.unwrap();
    assert_eq!(status["status"], "running", "{status}");

    qemu_img(
        &img,
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            backup.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    let copied = std::fs::read(&raw).unwrap();
    assert!(
        copied.starts_with(b"written-by-the-guest\n"),
        "{:?}",
        String::from_utf8_lossy(&copied[..32])
    );
    vm.shutdown().await.unwrap();
}
