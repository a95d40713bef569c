//! Migrations of a small `-machine pc -S -m 64` guest on a real QEMU (the
//! one on `PATH`, or 7.2 through the variables `.ci/qemu-7.2 --env` sets),
//! to a file in a temporary directory: `file:` where QEMU has it (8.2 and
//! later), `exec:cat > FILE` on 7.2.
//!
//! A stopped guest's RAM is nearly all zero pages, which cost a few bytes
//! each whatever `max-bandwidth` says (10.0 sends 64 MiB of them in half a
//! second at 4 KiB/s). The slow migrations therefore load 8 MiB of non-zero
//! bytes into the guest's RAM (`-device loader`), which `max-bandwidth`
//! does hold back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use qemu_jobs::{JobError, Migration, MigrationOptions, MigrationStatus, Outcome};
use qemu_qapi::typed::TypedClient;
use qemu_qapi_types::*;
use qemu_testkit::QemuProcess;

const T: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(extra: &[&str]) -> (TypedClient, QemuProcess) {
    let mut args = vec!["-machine", "pc", "-S", "-m", "64"];
    args.extend_from_slice(extra);
    let (qemu, stream) = QemuProcess::system_with_socketpair(&args);
    stream.set_nonblocking(true).unwrap();
    let client = qemu_qmp::Client::builder().command_timeout(T).build();
    client
        .connect_to(stream)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", qemu.log()));
    (TypedClient::new(client), qemu)
}

/// A guest with 8 MiB of non-zero RAM, migrating at most `bandwidth` bytes
/// a second once started.
async fn slow_guest(dir: &Path, bandwidth: u64) -> (TypedClient, QemuProcess) {
    let fill = dir.join("fill.bin");
    std::fs::write(&fill, vec![0x5a_u8; 8 * MIB as usize]).unwrap();
    let loader = format!("loader,file={},addr=0x1000000,force-raw=on", fill.display());
    let (qmp, qemu) = connect(&["-device", &loader]).await;
    let params = MigrateSetParameters::new().max_bandwidth(bandwidth as i128);
    qmp.call(params).await.unwrap();
    (qmp, qemu)
}

/// QEMU has the `file:` URI (8.2 and later).
async fn has_file_uri(qmp: &TypedClient) -> bool {
    let v = qmp.call(QueryVersion::new()).await.unwrap().qemu;
    (v.major, v.minor) >= (8, 2)
}

/// Where to migrate to: the URI and the file it writes.
async fn destination(qmp: &TypedClient, dir: &Path) -> (String, PathBuf, bool) {
    let path = dir.join("state.mig");
    if has_file_uri(qmp).await {
        (format!("file:{}", path.display()), path, true)
    } else {
        (format!("exec:cat > '{}'", path.display()), path, false)
    }
}

async fn status(qmp: &TypedClient) -> Option<MigrationStatus> {
    qmp.call(QueryMigrate::new()).await.unwrap().status
}

#[test]
fn a_migration_to_a_file_completes_with_its_progress() {
    qemu_testkit::require_qemu_system!();
    runtime().block_on(async {
        let dir = qemu_testkit::tempdir("migration");
        let (qmp, _qemu) = connect(&[]).await;
        let (uri, path, is_file) = destination(&qmp, dir.path()).await;
        let migration = Migration::start(&qmp, uri.as_str(), MigrationOptions::new())
            .await
            .unwrap();
        assert_eq!(migration.wait(Some(T)).await.unwrap(), Outcome::Completed);
        let s = migration.state();
        assert_eq!(s.status, MigrationStatus::Completed);
        assert!(s.transferred > 0, "{s:?}");
        assert_eq!(s.remaining, 0);
        assert!(s.ram_total >= 64 * MIB, "{s:?}");
        assert_eq!(s.progress.current, s.transferred);
        assert_eq!(s.progress.total, s.transferred);
        assert_eq!(s.progress.fraction(), 1.0);
        // At least the first pass and the last, reported by MIGRATION_PASS
        // (the `events` capability is on) or dirty-sync-count.
        assert!(s.passes >= 2, "{s:?}");
        assert!(s.downtime.is_some() && s.total_time.is_some(), "{s:?}");
        // The capability was turned on for the events.
        let caps = qmp.call(QueryMigrateCapabilities::new()).await.unwrap();
        assert!(caps
            .iter()
            .any(|c| c.capability == MigrationCapability::Events && c.state));
        // `file:` has written everything by `completed`; `cat` may still be
        // writing, so its file is only checked to exist.
        let len = std::fs::metadata(&path).unwrap().len();
        if is_file {
            assert_eq!(len, s.transferred);
        }
        assert_eq!(status(&qmp).await, Some(MigrationStatus::Completed));
    });
}

#[test]
fn a_throttled_migration_moves_and_is_cancelled() {
    qemu_testkit::require_qemu_system!();
    runtime().block_on(async {
        let dir = qemu_testkit::tempdir("migration");
        let (qmp, _qemu) = slow_guest(dir.path(), MIB).await;
        let (uri, _, _) = destination(&qmp, dir.path()).await;
        let options = MigrationOptions::new().poll_interval(Duration::from_millis(50));
        let migration = Migration::start(&qmp, Migrate::new().uri(uri), options)
            .await
            .unwrap();
        migration
            .wait_for(MigrationStatus::Active, Some(T))
            .await
            .unwrap();
        // Seen moving, with a rate and a time left.
        let mut w = migration.watch();
        let moving = tokio::time::timeout(
            T,
            w.wait_for(|s| {
                s.transferred >= MIB && s.progress.rate.is_some() || s.outcome.is_some()
            }),
        )
        .await
        .unwrap()
        .unwrap()
        .clone();
        assert_eq!(moving.outcome, None, "{moving:?}");
        assert!(moving.ram_total >= 64 * MIB, "{moving:?}");
        assert!(moving.remaining > 0, "{moving:?}");
        let rate = moving.progress.rate.unwrap();
        // 1 MiB/s asked; QEMU's own accounting lets a little more through.
        assert!(rate > 0.0 && rate < 8e6, "{rate} B/s for 1 MiB/s");
        assert!(moving.progress.eta.unwrap() > Duration::from_secs(1));
        assert!(moving.expected_downtime.is_some(), "{moving:?}");

        migration.cancel().await.unwrap();
        assert_eq!(migration.wait(Some(T)).await.unwrap(), Outcome::Cancelled);
        assert_eq!(migration.state().status, MigrationStatus::Cancelled);
        assert_eq!(status(&qmp).await, Some(MigrationStatus::Cancelled));
    });
}

#[test]
fn qemu_dying_mid_migration_ends_the_wait() {
    qemu_testkit::require_qemu_system!();
    runtime().block_on(async {
        let dir = qemu_testkit::tempdir("migration");
        let (qmp, qemu) = slow_guest(dir.path(), 256 << 10).await;
        let (uri, _, _) = destination(&qmp, dir.path()).await;
        let migration = Migration::start(&qmp, uri, MigrationOptions::new())
            .await
            .unwrap();
        migration
            .wait_for(MigrationStatus::Active, Some(T))
            .await
            .unwrap();
        qemu.kill_now();
        let e = migration.wait(Some(T)).await.unwrap_err();
        assert!(e.is_disconnected(), "{e}");
        assert!(migration.state().lost.is_some());
    });
}

#[test]
fn a_deadline_ends_the_wait_not_the_migration() {
    qemu_testkit::require_qemu_system!();
    runtime().block_on(async {
        let dir = qemu_testkit::tempdir("migration");
        let (qmp, _qemu) = slow_guest(dir.path(), 256 << 10).await;
        let (uri, _, _) = destination(&qmp, dir.path()).await;
        let migration = Migration::start(&qmp, &uri, MigrationOptions::new())
            .await
            .unwrap();
        let e = migration
            .wait(Some(Duration::from_millis(100)))
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert!(matches!(e, JobError::Timeout { .. }), "{e}");
        assert_eq!(migration.state().outcome, None);
        let running = status(&qmp).await;
        assert!(
            matches!(
                running,
                Some(MigrationStatus::Setup | MigrationStatus::Active)
            ),
            "{running:?}"
        );
        // A status it will not reach before its end.
        migration.cancel().await.unwrap();
        let e = migration
            .wait_for(MigrationStatus::Completed, Some(T))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                JobError::MigrationEnded {
                    outcome: Outcome::Cancelled,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(migration.wait(Some(T)).await.unwrap(), Outcome::Cancelled);
    });
}

#[test]
fn a_failing_migration_reports_qemus_error() {
    qemu_testkit::require_qemu_system!();
    runtime().block_on(async {
        let dir = qemu_testkit::tempdir("migration");
        let (qmp, _qemu) = slow_guest(dir.path(), 64 * MIB).await;
        // The command exits at once: QEMU's writes fail.
        let migration = Migration::start(&qmp, "exec:exit 3", MigrationOptions::new())
            .await
            .unwrap();
        match migration.wait(Some(T)).await.unwrap() {
            Outcome::Failed { error } => {
                // 7.2: "Unable to write to command: Broken pipe";
                // 10.0: "ram_save_setup failed: Input/output error".
                assert!(
                    error.contains("Broken pipe") || error.contains("Input/output error"),
                    "{error}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(migration.state().status, MigrationStatus::Failed);
    });
}

#[test]
fn a_migration_started_by_someone_else_is_followed() {
    qemu_testkit::require_qemu_system!();
    runtime().block_on(async {
        let dir = qemu_testkit::tempdir("migration");
        let (qmp, _qemu) = slow_guest(dir.path(), MIB).await;
        let e = Migration::attach(&qmp, MigrationOptions::new())
            .await
            .unwrap_err();
        assert!(matches!(e, JobError::NoMigration), "{e}");
        // Started untyped, without the `events` capability: followed by
        // its readings alone.
        let (uri, _, _) = destination(&qmp, dir.path()).await;
        qmp.client()
            .execute("migrate", Some(serde_json::json!({ "uri": uri })))
            .await
            .unwrap();
        let options = MigrationOptions::new().poll_interval(Duration::from_millis(50));
        let migration = Migration::attach(&qmp, options).await.unwrap();
        migration
            .wait_for(MigrationStatus::Active, Some(T))
            .await
            .unwrap();
        migration.cancel().await.unwrap();
        assert_eq!(migration.wait(Some(T)).await.unwrap(), Outcome::Cancelled);
        // Attaching afterwards tells how the last one ended.
        let last = Migration::attach(&qmp, MigrationOptions::new())
            .await
            .unwrap();
        assert_eq!(last.wait(Some(T)).await.unwrap(), Outcome::Cancelled);
    });
}

#[test]
fn a_uri_qemu_does_not_know_is_refused() {
    qemu_testkit::require_qemu_system!();
    runtime().block_on(async {
        let (qmp, _qemu) = connect(&[]).await;
        let e = Migration::start(&qmp, "nowhere:at-all", MigrationOptions::new())
            .await
            .unwrap_err();
        assert_eq!(e.error_class(), Some("GenericError"), "{e}");
        // 7.2 has no `file:` (8.2 brought it).
        if !has_file_uri(&qmp).await {
            let dir = qemu_testkit::tempdir("migration");
            let uri = format!("file:{}", dir.path().join("state.mig").display());
            let e = Migration::start(&qmp, uri, MigrationOptions::new())
                .await
                .unwrap_err();
            assert!(e.to_string().contains("migration protocol"), "{e}");
        }
    });
}
