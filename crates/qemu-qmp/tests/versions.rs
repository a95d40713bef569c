//! What differs between the QEMU versions the project supports (10.0 and 7.2),
//! against the real `qemu-storage-daemon`: where the newer QEMU offers a
//! command, the test uses it; where the older one lacks it, the test checks
//! what a client then sees (QEMU's `CommandNotFound`, class and text kept, and
//! a session that goes on) and that the older way still works.
//!
//! The suite runs once per version (see `.ci/run`); each test skips, loudly,
//! without the binary, and fails under `CI=true`.

use std::time::Duration;

use qemu_qmp::{json, Client, EventListener, Value};
use qemu_testkit::{QemuProcess, QemuVersion};

const T: Duration = Duration::from_secs(10);

async fn storage_daemon() -> Option<(QemuProcess, Client, QemuVersion)> {
    let binary = qemu_testkit::storage_daemon()?;
    let version = qemu_testkit::version_of(&binary);
    let qemu = QemuProcess::storage_daemon_with_listener(&[]);
    let qmp = Client::builder()
        .connect_timeout(T)
        .command_timeout(T)
        .connect(qemu.qmp_path())
        .await
        .unwrap_or_else(|e| panic!("connect failed: {e}\nlog:\n{}", qemu.log()));
    let greeting = qmp.greeting().expect("a greeting");
    let greeted = &greeting.version.qemu;
    assert_eq!(
        (greeted.major, greeted.minor, greeted.micro),
        (
            u64::from(version.major),
            u64::from(version.minor),
            u64::from(version.micro)
        ),
        "the greeting names the version --version printed"
    );
    Some((qemu, qmp, version))
}

async fn add_null_node(qmp: &Client, name: &str) {
    qmp.execute(
        "blockdev-add",
        Some(json!({"driver": "null-co", "node-name": name, "size": 1048576})),
    )
    .await
    .unwrap();
}

/// The `active` member of node `name` in `query-named-block-nodes`, if any.
async fn node_active(qmp: &Client, name: &str) -> Option<Value> {
    let nodes = qmp
        .execute("query-named-block-nodes", Some(json!({"flat": true})))
        .await
        .unwrap();
    let node = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == name)
        .unwrap_or_else(|| panic!("no node {name} in {nodes}"))
        .clone();
    node.get("active").cloned()
}

/// Asserts that `result` is QEMU's reply to a command it does not have.
fn assert_not_found(result: qemu_qmp::Result<Value>, command: &str) {
    let err = result.expect_err("the command should not exist in this QEMU");
    let e = err.as_execute_error().expect("an error reply from QEMU");
    assert_eq!(e.error_class(), "CommandNotFound", "{err}");
    assert_eq!(
        e.desc(),
        format!("The command {command} has not been found")
    );
}

/// `blockdev-set-active` (QEMU 10.0): deactivate a node and activate it again;
/// 7.2 has neither the command nor the `active` member.
#[tokio::test]
async fn blockdev_set_active_or_its_absence() {
    let Some((_qemu, qmp, version)) = storage_daemon().await else {
        return;
    };
    add_null_node(&qmp, "disk0").await;
    let set = |active: bool| {
        qmp.execute(
            "blockdev-set-active",
            Some(json!({"node-name": "disk0", "active": active})),
        )
    };
    if version.at_least(10, 0) {
        assert_eq!(node_active(&qmp, "disk0").await, Some(json!(true)));
        assert_eq!(set(false).await.unwrap(), json!({}));
        assert_eq!(node_active(&qmp, "disk0").await, Some(json!(false)));
        assert_eq!(set(true).await.unwrap(), json!({}));
        assert_eq!(node_active(&qmp, "disk0").await, Some(json!(true)));
    } else if version.is(7, 2) {
        assert_not_found(set(false).await, "blockdev-set-active");
        assert_eq!(node_active(&qmp, "disk0").await, None);
    }
    // Either way the session goes on.
    qmp.execute("query-named-block-nodes", None).await.unwrap();
    qmp.disconnect().await.unwrap();
}

async fn next_status(jobs: &mut EventListener) -> String {
    let event = jobs.recv_timeout(T).await.expect("a JOB_STATUS_CHANGE");
    event.data()["status"].as_str().unwrap().to_owned()
}

/// `block-job-change` (new in QEMU 8.2): switch a ready mirror to active
/// (write-blocking) mode, which `query-block-jobs` then reports with
/// `actively-synced`; in 7.2 the command is missing and the job keeps the mode
/// it was started with. The job completes the same way in both.
#[tokio::test]
async fn block_job_change_or_its_absence() {
    let Some((_qemu, qmp, version)) = storage_daemon().await else {
        return;
    };
    add_null_node(&qmp, "src").await;
    add_null_node(&qmp, "dst").await;
    let mut jobs = qmp.listen(["JOB_STATUS_CHANGE"]);
    let mut ready = qmp.listen(["BLOCK_JOB_READY"]);
    qmp.execute(
        "blockdev-mirror",
        Some(json!({"job-id": "j0", "device": "src", "target": "dst", "sync": "full"})),
    )
    .await
    .unwrap();
    assert_eq!(ready.recv_timeout(T).await.unwrap().data()["device"], "j0");
    for expected in ["created", "running", "ready"] {
        assert_eq!(next_status(&mut jobs).await, expected);
    }

    let change = qmp
        .execute(
            "block-job-change",
            Some(json!({"id": "j0", "type": "mirror", "copy-mode": "write-blocking"})),
        )
        .await;
    let info = qmp.execute("query-block-jobs", None).await.unwrap();
    let job = &info[0];
    assert_eq!(job["device"], "j0", "{info}");
    assert_eq!(job["status"], "ready", "{info}");
    if version.at_least(10, 0) {
        assert_eq!(change.unwrap(), json!({}));
        // Reported once the job is in write-blocking mode.
        assert!(job["actively-synced"].is_boolean(), "{info}");
    } else if version.is(7, 2) {
        assert_not_found(change, "block-job-change");
        assert!(job.get("actively-synced").is_none(), "{info}");
    }

    // A ready mirror that is cancelled completes without pivoting.
    qmp.execute("block-job-cancel", Some(json!({"device": "j0"})))
        .await
        .unwrap();
    for expected in ["waiting", "pending", "concluded", "null"] {
        assert_eq!(next_status(&mut jobs).await, expected);
    }
    assert_eq!(
        qmp.execute("query-block-jobs", None).await.unwrap(),
        json!([])
    );
    qmp.disconnect().await.unwrap();
}
