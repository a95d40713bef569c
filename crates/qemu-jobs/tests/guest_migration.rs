//! A live migration of a running guest: qemu-testkit's test guest booted under
//! `QemuMachine`, migrated over a Unix socket to a second QEMU started with
//! `-incoming defer`, followed with [`Migration`], and still answering on the
//! destination's serial console. On the QEMU on `PATH`, or 7.2 through the
//! variables `.ci/qemu-7.2 --env` sets.
//!
//! Skipped (with a `SKIPPED:` line) without `qemu-system-x86_64`, `qemu-ga` or a way
//! to build the image; under `CI=true` that fails instead.

use std::time::Duration;

use qemu_jobs::{Migration, MigrationOptions, Outcome};
use qemu_machine::QemuMachine;
use qemu_qapi::typed::TypedClient;
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
    let status = source.command("query-status", None).await.unwrap();
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
