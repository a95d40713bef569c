//! Schemas of a real QEMU: `qemu-system-x86_64 -machine none` and
//! `qemu-storage-daemon`, the one on `PATH` (10.0) or the one the variables
//! name (7.2, see `.ci/qemu-7.2`). Each test asserts what both versions have,
//! and what one version has and the other lacks where that version runs; and
//! that the live schema is the one recorded under `schemas/` for its version.

use std::path::{Path, PathBuf};

use qemu_qapi::{Featured, Recording, Schema};
use qemu_testkit::QemuProcess;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Connects to `qemu` and asks for its schema and version.
fn fetch(qemu: &QemuProcess, binary: &str) -> Recording {
    runtime().block_on(async {
        let qmp = qemu_qmp::Client::connect(qemu.qmp_path())
            .await
            .unwrap_or_else(|e| panic!("connect: {e}\n{}", qemu.log()));
        let recording = Recording::fetch(&qmp, binary).await.unwrap();
        // `Schema::fetch` as well: the same schema, with its version.
        let schema = Schema::fetch(&qmp).await.unwrap();
        assert_eq!(schema, recording.schema().unwrap());
        qmp.disconnect().await.unwrap();
        recording
    })
}

/// The version QEMU reported is the one its `--version` prints.
fn check_version(schema: &Schema, binary: &Path) -> qemu_testkit::QemuVersion {
    let v = qemu_testkit::version_of(binary);
    let reported = schema.version().expect("fetched schemas have a version");
    assert_eq!(
        (reported.major, reported.minor, reported.micro),
        (v.major.into(), v.minor.into(), v.micro.into())
    );
    v
}

/// What both binaries share: the block layer and the QMP basics.
fn check_common(s: &Schema, v: qemu_testkit::QemuVersion) {
    for cmd in [
        "qmp_capabilities",
        "query-version",
        "query-commands",
        "quit",
    ] {
        assert!(s.has_command(cmd), "{cmd}");
    }
    assert!(s.has_command("query-qmp-schema"));
    assert!(s.path_exists("blockdev-add/arg-type/*node-name/!string"));
    assert!(!s.path_exists("blockdev-add/arg-type/*driver"));
    assert!(s.path_exists("blockdev-add/arg-type/+file/filename/!string"));
    // Debian builds both with liburing; `io_uring` has been an `aio` value
    // since 5.0.
    assert!(s.path_exists("blockdev-add/arg-type/+file/aio/^io_uring"));
    assert!(s.path_exists("blockdev-add/arg-type/+file/aio/^threads"));
    assert!(!s.path_exists("blockdev-add/arg-type/+file/aio/^posix"));
    // qcow2's `discard-no-unref` came with 8.1.
    assert_eq!(
        s.path_exists("blockdev-add/arg-type/+qcow2/discard-no-unref/!boolean"),
        v.at_least(8, 1)
    );
    // `blockdev-set-active` came with 10.0.
    assert_eq!(s.has_command("blockdev-set-active"), v.at_least(10, 0));
    // Unstable (`x-`) and deprecated, in both.
    assert!(s.command("x-blockdev-change").unwrap().is_unstable());
    assert!(s.path_exists("x-debug-query-block-graph/$unstable"));
    assert!(s.command("drive-backup").unwrap().is_deprecated());
    assert!(!s.command("blockdev-add").unwrap().is_deprecated());
    // Features of members and of enum values.
    assert!(s.path_exists("block-commit/arg-type/top/$deprecated"));
    assert!(!s.path_exists("block-commit/arg-type/top-node/$deprecated"));
    assert!(s.path_exists("object-add/arg-type/qom-type/^x-remote-object/$unstable"));
    // The gluster driver: deprecated in 9.2.
    assert!(s.path_exists("blockdev-add/arg-type/driver/^gluster"));
    assert_eq!(
        s.path_exists("blockdev-add/arg-type/driver/^gluster/$deprecated"),
        v.at_least(9, 2)
    );
    // Every command's types resolve.
    for c in s.commands() {
        assert!(s.arg_type(&c.name).is_some(), "{}", c.name);
        assert!(s.ret_type(&c.name).is_some(), "{}", c.name);
    }
}

/// The recording for this binary and version, if there is one; else a
/// SKIPPED line.
fn check_recorded(live: &Recording) {
    let name = live.file_name().unwrap();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(&name);
    if !path.exists() {
        qemu_testkit::loud(&format!(
            "SKIPPED: {}: no recording {name} for this QEMU (.ci/record-schemas makes one)",
            qemu_testkit::test_name()
        ));
        return;
    }
    let recorded = Recording::load(&path).unwrap();
    assert_eq!(recorded.binary, live.binary);
    assert_eq!(
        recorded.qemu_version().unwrap().to_string(),
        live.qemu_version().unwrap().to_string()
    );
    if recorded.schema != live.schema {
        // Say which entities differ, not 200 kB of JSON.
        let (a, b) = (
            recorded.schema.as_array().unwrap(),
            live.schema.as_array().unwrap(),
        );
        let differ: Vec<_> = b.iter().filter(|e| !a.contains(e)).take(5).collect();
        panic!(
            "{} differs from this QEMU's schema ({} entities recorded, {} live); live entities not recorded: {differ:?}",
            path.display(),
            a.len(),
            b.len()
        );
    }
}

#[test]
fn system_emulator_schema() {
    qemu_testkit::require_qemu_system!();
    let binary = qemu_testkit::qemu_system().unwrap();
    let qemu = QemuProcess::system_with_listener(&[]);
    let live = fetch(&qemu, "qemu-system-x86_64");
    let s = live.schema().unwrap();
    let v = check_version(&s, &binary);
    check_common(&s, v);

    assert!(s.commands().count() > 200, "{}", s.commands().count());
    assert!(s.has_command("query-status"));
    assert!(s.path_exists("query-status/ret-type/running/!boolean"));
    assert!(s.path_exists("query-status/ret-type/status/^running"));
    assert!(s.has_event("STOP") && s.has_event("RESUME"));
    assert!(s.path_exists("SHUTDOWN/arg-type/reason/^host-qmp-quit"));
    assert!(s.path_exists("object-add/arg-type/+memory-backend-file/mem-path/!string"));
    // MEM_UNPLUG_ERROR: deprecated in 6.2, gone by 10.0.
    if v.is(7, 2) {
        assert!(s.path_exists("MEM_UNPLUG_ERROR/$deprecated"));
    }
    if v.at_least(10, 0) {
        assert!(!s.has_event("MEM_UNPLUG_ERROR"));
        assert!(s.path_exists("query-migrationthreads/$deprecated"));
    }
    check_recorded(&live);
}

#[test]
fn storage_daemon_schema() {
    qemu_testkit::require_storage_daemon!();
    let binary = qemu_testkit::storage_daemon().unwrap();
    let qemu = QemuProcess::storage_daemon_with_listener(&[]);
    let live = fetch(&qemu, "qemu-storage-daemon");
    let s = live.schema().unwrap();
    let v = check_version(&s, &binary);
    check_common(&s, v);

    // The daemon has the block layer, not the machine.
    assert!(s.commands().count() > 50, "{}", s.commands().count());
    assert!(!s.has_command("query-status"));
    assert!(!s.has_event("STOP"));
    assert!(s.has_command("nbd-server-start"));
    check_recorded(&live);
}
