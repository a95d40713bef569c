//! Jobs on a real QEMU (the one on `PATH`, or 7.2 through the variables
//! `.ci/qemu-7.2 --env` sets), between `null-co` nodes made over QMP: each
//! job is followed to its outcome, and none is left in QEMU.

use std::time::Duration;

use qemu_jobs::{Job, JobOptions, JobStatus, Outcome};
use qemu_qapi::typed::TypedClient;
use qemu_qapi_types::*;
use qemu_testkit::QemuProcess;

const T: Duration = Duration::from_secs(30);
const MIB: i128 = 1 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn connect() -> (TypedClient, QemuProcess) {
    let (qemu, stream) = QemuProcess::system_with_socketpair(&[]);
    stream.set_nonblocking(true).unwrap();
    let client = qemu_qmp::Client::builder().command_timeout(T).build();
    client
        .connect_to(stream)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", qemu.log()));
    (TypedClient::new(client), qemu)
}

/// A `null-co` node of `size` bytes.
async fn null_node(qmp: &TypedClient, name: &str, size: i128) {
    let null = BlockdevOptionsNull::new().size(size);
    let opts = BlockdevOptions::new(BlockdevOptionsVariant::NullCo(null)).node_name(name);
    qmp.call(BlockdevAdd::new(opts)).await.unwrap();
}

async fn no_jobs_left(qmp: &TypedClient) {
    let jobs = qmp.call(QueryJobs::new()).await.unwrap();
    assert!(jobs.is_empty(), "{jobs:?}");
}

#[test]
fn a_backup_completes_with_its_progress_and_is_dismissed() {
    qemu_testkit::require_qemu_system!();
    runtime().block_on(async {
        let (qmp, _qemu) = connect().await;
        null_node(&qmp, "src", 64 * MIB).await;
        null_node(&qmp, "dst", 64 * MIB).await;
        let backup = BlockdevBackup::new("src", MirrorSyncMode::Full, "dst").job_id("b");
        let job = Job::start(&qmp, backup, JobOptions::new()).await.unwrap();
        assert_eq!(job.wait(Some(T)).await.unwrap(), Outcome::Completed);
        let state = job.state();
        assert_eq!(state.status, JobStatus::Concluded);
        assert_eq!(state.progress.current, 64 << 20);
        assert_eq!(state.progress.total, 64 << 20);
        no_jobs_left(&qmp).await;
    });
}

#[test]
fn a_throttled_job_moves_pauses_resumes_and_is_cancelled() {
    qemu_testkit::require_qemu_system!();
    runtime().block_on(async {
        let (qmp, _qemu) = connect().await;
        null_node(&qmp, "src", 1024 * MIB).await;
        null_node(&qmp, "dst", 1024 * MIB).await;
        let backup = BlockdevBackup::new("src", MirrorSyncMode::Full, "dst")
            .job_id("slow")
            .speed(4 * MIB);
        let options = JobOptions::new().poll_interval(Duration::from_millis(50));
        let job = Job::start(&qmp, backup, options).await.unwrap();
        // Progress is seen moving, at about the speed asked.
        let mut w = job.watch();
        let first = w
            .wait_for(|s| s.progress.current > 0)
            .await
            .unwrap()
            .progress
            .current;
        let later = w
            .wait_for(|s| s.progress.current >= first + 2 * (1 << 20) && s.progress.rate.is_some())
            .await
            .unwrap()
            .progress;
        assert_eq!(later.total, 1 << 30);
        // A rate and a time left: not the speed asked, at first (7.2 copies
        // its first chunks in a burst: 21 MB/s measured for 4 MiB/s).
        let rate = later.rate.unwrap();
        assert!(rate > 0.0 && rate < 1e9, "{rate} B/s for 4 MiB/s");
        assert!(later.eta.unwrap() > Duration::from_secs(1));

        job.pause().await.unwrap();
        job.wait_for(JobStatus::Paused, Some(T)).await.unwrap();
        let paused_at = job.state().progress.current;
        job.resume().await.unwrap();
        job.wait_for(JobStatus::Running, Some(T)).await.unwrap();
        w.wait_for(|s| s.progress.current > paused_at)
            .await
            .unwrap();

        job.cancel().await.unwrap();
        assert_eq!(job.wait(Some(T)).await.unwrap(), Outcome::Cancelled);
        no_jobs_left(&qmp).await;
    });
}

#[test]
fn a_mirror_is_completed_when_ready() {
    qemu_testkit::require_qemu_system!();
    runtime().block_on(async {
        let (qmp, _qemu) = connect().await;
        null_node(&qmp, "src", 16 * MIB).await;
        null_node(&qmp, "dst", 16 * MIB).await;
        let mirror = BlockdevMirror::new("src", "dst", MirrorSyncMode::Full).job_id("m");
        // By hand: wait for ready, then complete.
        let job = Job::start(&qmp, mirror.clone(), JobOptions::new())
            .await
            .unwrap();
        job.wait_for(JobStatus::Ready, Some(T)).await.unwrap();
        job.complete().await.unwrap();
        assert_eq!(job.wait(Some(T)).await.unwrap(), Outcome::Completed);
        no_jobs_left(&qmp).await;
        // Automatically.
        let options = JobOptions::new().complete_when_ready(true);
        let job = Job::start(&qmp, mirror.clone(), options).await.unwrap();
        assert_eq!(job.wait(Some(T)).await.unwrap(), Outcome::Completed);
        no_jobs_left(&qmp).await;
    });
}

#[test]
fn a_job_whose_reads_fail_reports_qemus_error() {
    qemu_testkit::require_qemu_system!();
    runtime().block_on(async {
        let (qmp, _qemu) = connect().await;
        null_node(&qmp, "disk", 16 * MIB).await;
        null_node(&qmp, "dst", 16 * MIB).await;
        // Every read of `bad` fails with EIO.
        let inject = BlkdebugInjectErrorOptions::new(BlkdebugEvent::None)
            .iotype(BlkdebugIOType::Read)
            .errno(5)
            .immediately(true);
        let blkdebug = BlockdevOptionsBlkdebug::new(BlockdevRef::String("disk".into()))
            .inject_error(vec![inject]);
        let opts = BlockdevOptions::new(BlockdevOptionsVariant::Blkdebug(Box::new(blkdebug)))
            .node_name("bad");
        qmp.call(BlockdevAdd::new(opts)).await.unwrap();
        let backup = BlockdevBackup::new("bad", MirrorSyncMode::Full, "dst").job_id("f");
        let job = Job::start(&qmp, backup, JobOptions::new()).await.unwrap();
        match job.wait(Some(T)).await.unwrap() {
            Outcome::Failed { error } => assert!(error.contains("Input/output error"), "{error}"),
            other => panic!("{other:?}"),
        }
        no_jobs_left(&qmp).await;
    });
}

#[test]
fn a_job_started_by_someone_else_is_followed() {
    qemu_testkit::require_qemu_system!();
    runtime().block_on(async {
        let (qmp, _qemu) = connect().await;
        null_node(&qmp, "src", 256 * MIB).await;
        null_node(&qmp, "dst", 256 * MIB).await;
        // Started untyped, auto-dismissed by QEMU.
        let args = serde_json::json!({"job-id": "other", "device": "src", "target": "dst",
                                      "sync": "full", "speed": 64 << 20});
        qmp.client()
            .execute("blockdev-backup", Some(args))
            .await
            .unwrap();
        let job = Job::attach(&qmp, "other", JobOptions::new()).await.unwrap();
        assert_eq!(job.wait(Some(T)).await.unwrap(), Outcome::Completed);
        no_jobs_left(&qmp).await;
        let e = Job::attach(&qmp, "other", JobOptions::new())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no job"), "{e}");
    });
}

#[test]
fn qemu_dying_mid_job_ends_the_wait() {
    qemu_testkit::require_qemu_system!();
    runtime().block_on(async {
        let (qmp, qemu) = connect().await;
        null_node(&qmp, "src", 1024 * MIB).await;
        null_node(&qmp, "dst", 1024 * MIB).await;
        let backup = BlockdevBackup::new("src", MirrorSyncMode::Full, "dst")
            .job_id("doomed")
            .speed(MIB);
        let job = Job::start(&qmp, backup, JobOptions::new()).await.unwrap();
        job.wait_for(JobStatus::Running, Some(T)).await.unwrap();
        qemu.kill_now();
        let e = job.wait(Some(T)).await.unwrap_err();
        assert!(e.is_disconnected(), "{e}");
    });
}

#[test]
fn a_deadline_ends_the_wait_not_the_job() {
    qemu_testkit::require_qemu_system!();
    runtime().block_on(async {
        let (qmp, _qemu) = connect().await;
        null_node(&qmp, "src", 1024 * MIB).await;
        null_node(&qmp, "dst", 1024 * MIB).await;
        let backup = BlockdevBackup::new("src", MirrorSyncMode::Full, "dst")
            .job_id("long")
            .speed(MIB);
        let job = Job::start(&qmp, backup, JobOptions::new()).await.unwrap();
        let e = job
            .wait(Some(Duration::from_millis(100)))
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert!(!job.state().status.to_string().is_empty());
        job.cancel().await.unwrap();
        assert_eq!(job.wait(Some(T)).await.unwrap(), Outcome::Cancelled);
        no_jobs_left(&qmp).await;
    });
}

/// A cancel sent while the job completes: whichever wins, the wait ends
/// with that outcome, the cancel's refusal (the job already gone) is only
/// an error of the cancel, and nothing is left.
#[test]
fn a_cancel_racing_completion_ends_either_way() {
    qemu_testkit::require_qemu_system!();
    runtime().block_on(async {
        let (qmp, _qemu) = connect().await;
        let (mut completed, mut cancelled) = (0, 0);
        for i in 0..20 {
            // Sizes from 1 MiB to 512 MiB at 256 MiB/s: the small ones may
            // finish before the cancel arrives, the large ones cannot.
            let size = MIB << (i % 10);
            null_node(&qmp, &format!("src{i}"), size).await;
            null_node(&qmp, &format!("dst{i}"), size).await;
            let id = format!("race{i}");
            let backup =
                BlockdevBackup::new(format!("src{i}"), MirrorSyncMode::Full, format!("dst{i}"))
                    .job_id(id.as_str())
                    .speed(256 * MIB);
            let job = Job::start(&qmp, backup, JobOptions::new()).await.unwrap();
            if let Err(e) = job.cancel().await {
                // Too late: QEMU no longer has a running job of that id.
                assert_eq!(e.error_class(), Some("GenericError"), "{e}");
            }
            match job.wait(Some(T)).await.unwrap() {
                Outcome::Completed => completed += 1,
                Outcome::Cancelled => cancelled += 1,
                other => panic!("{other:?}"),
            }
            no_jobs_left(&qmp).await;
        }
        eprintln!("cancel raced completion: {completed} completed, {cancelled} cancelled");
        assert_eq!(completed + cancelled, 20);
        assert!(cancelled > 0, "the largest backups are cancelled");
    });
}
