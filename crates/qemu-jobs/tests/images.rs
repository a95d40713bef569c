//! Jobs on images made over QMP, on a real QEMU (the one on `PATH`, or 7.2
//! through the variables `.ci/qemu-7.2 --env` sets), each scenario on
//! `qemu-system-x86_64` and on `qemu-storage-daemon`: qcow2 files created
//! with `blockdev-create` jobs, `block-stream` and `block-commit` checked on
//! the backing chain, two backups in one grouped `transaction` where one
//! fails, and a job finalized by hand after a hook. After each, no job is
//! left in QEMU.

use std::path::{Path, PathBuf};
use std::time::Duration;

use qemu_jobs::{start_transaction, Job, JobOptions, JobStatus, Outcome};
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

/// Which QEMU a scenario runs on.
#[derive(Debug, Clone, Copy)]
enum Kind {
    System,
    StorageDaemon,
}

async fn connect(kind: Kind) -> (TypedClient, QemuProcess) {
    let builder = qemu_qmp::Client::builder().command_timeout(T);
    let (client, qemu) = match kind {
        Kind::System => {
            let (qemu, stream) = QemuProcess::system_with_socketpair(&[]);
            stream.set_nonblocking(true).unwrap();
            let client = builder.build();
            let r = client.connect_to(stream).await;
            (r.map(|_| client), qemu)
        }
        Kind::StorageDaemon => {
            let qemu = QemuProcess::storage_daemon_with_listener(&[]);
            (builder.connect(qemu.qmp_path()).await, qemu)
        }
    };
    let client = client.unwrap_or_else(|e| panic!("connect: {e}\n{}", qemu.log()));
    (TypedClient::new(client), qemu)
}

/// Each scenario, as one test on each QEMU binary.
macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn system() {
                qemu_testkit::require_qemu_system!();
                super::runtime().block_on(super::$scenario(super::Kind::System));
            }

            #[test]
            fn storage_daemon() {
                qemu_testkit::require_storage_daemon!();
                super::runtime().block_on(super::$scenario(super::Kind::StorageDaemon));
            }
        }
    )*};
}

on_both!(
    qcow2_images_are_created_by_jobs,
    a_failing_create_job_reports_qemus_error,
    block_stream_pulls_the_base_into_the_top,
    block_commit_folds_an_overlay_into_its_base,
    active_commit_is_completed_when_ready,
    a_grouped_transaction_fails_and_cancels_together,
    a_grouped_transaction_followed_by_attach,
    a_job_finalized_by_hand_after_a_hook,
);

/// A qcow2 image made over QMP, added as node `node` on the file node
/// `<node>-file`.
#[derive(Debug, Clone)]
struct Image {
    node: String,
    path: PathBuf,
}

/// Creates `<dir>/<node>.qcow2` of `size` bytes through QMP alone, optionally
/// over `backing`, and adds it as node `node`:
/// `blockdev-create` driver=file (a job), `blockdev-add` of the file node,
/// `blockdev-create` driver=qcow2 on it (a job), `blockdev-add` of the qcow2
/// node.
async fn qcow2_image(
    qmp: &TypedClient,
    dir: &Path,
    node: &str,
    size: i128,
    backing: Option<&Image>,
) -> Image {
    let path = dir.join(format!("{node}.qcow2"));
    let filename = path.to_str().unwrap().to_owned();
    let file_node = format!("{node}-file");

    let file = BlockdevCreateOptionsFile::new(filename.clone(), 0);
    let create = BlockdevCreate::new(
        format!("create-{file_node}"),
        BlockdevCreateOptions::new(BlockdevCreateOptionsVariant::File(file)),
    );
    let job = Job::start(qmp, create, JobOptions::new()).await.unwrap();
    assert_eq!(job.wait(Some(T)).await.unwrap(), Outcome::Completed);
    assert!(path.exists(), "{path:?}");

    let opts = BlockdevOptions::new(BlockdevOptionsVariant::File(BlockdevOptionsFile::new(
        filename.clone(),
    )))
    .node_name(file_node.clone());
    qmp.call(BlockdevAdd::new(opts)).await.unwrap();

    let mut qcow2 = BlockdevCreateOptionsQcow2::new(BlockdevRef::String(file_node.clone()), size);
    if let Some(b) = backing {
        qcow2 = qcow2
            .backing_file(b.path.to_str().unwrap())
            .backing_fmt(BlockdevDriver::Qcow2);
    }
    let create = BlockdevCreate::new(
        format!("create-{node}"),
        BlockdevCreateOptions::new(BlockdevCreateOptionsVariant::Qcow2(qcow2)),
    );
    let job = Job::start(qmp, create, JobOptions::new()).await.unwrap();
    assert_eq!(job.wait(Some(T)).await.unwrap(), Outcome::Completed);

    let mut opts = BlockdevOptionsQcow2::new(BlockdevRef::String(file_node));
    if let Some(b) = backing {
        opts = opts.backing(BlockdevRefOrNull::String(b.node.clone()));
    }
    let opts = BlockdevOptions::new(BlockdevOptionsVariant::Qcow2(Box::new(opts))).node_name(node);
    qmp.call(BlockdevAdd::new(opts)).await.unwrap();
    Image {
        node: node.to_owned(),
        path,
    }
}

/// A `null-co` node of `size` bytes.
async fn null_node(qmp: &TypedClient, name: &str, size: i128) {
    let null = BlockdevOptionsNull::new().size(size);
    let opts = BlockdevOptions::new(BlockdevOptionsVariant::NullCo(null)).node_name(name);
    qmp.call(BlockdevAdd::new(opts)).await.unwrap();
}

/// A `blkdebug` node `name` over `image` whose every read fails with EIO.
async fn failing_reads(qmp: &TypedClient, name: &str, image: &str) {
    let inject = BlkdebugInjectErrorOptions::new(BlkdebugEvent::None)
        .iotype(BlkdebugIOType::Read)
        .errno(5)
        .immediately(true);
    let blkdebug =
        BlockdevOptionsBlkdebug::new(BlockdevRef::String(image.into())).inject_error(vec![inject]);
    let opts =
        BlockdevOptions::new(BlockdevOptionsVariant::Blkdebug(Box::new(blkdebug))).node_name(name);
    qmp.call(BlockdevAdd::new(opts)).await.unwrap();
}

async fn no_jobs_left(qmp: &TypedClient) {
    let jobs = qmp.call(QueryJobs::new()).await.unwrap();
    assert!(jobs.is_empty(), "{jobs:?}");
}

async fn node(qmp: &TypedClient, name: &str) -> Option<BlockDeviceInfo> {
    let nodes = qmp.call(QueryNamedBlockNodes::new()).await.unwrap();
    nodes
        .into_iter()
        .find(|n| n.node_name.as_deref() == Some(name))
}

/// The files of `name`'s backing chain as QEMU reports it, `name`'s first.
async fn chain(qmp: &TypedClient, name: &str) -> Vec<PathBuf> {
    let info = node(qmp, name)
        .await
        .unwrap_or_else(|| panic!("no node {name}"));
    let mut files = Vec::new();
    let mut image = Some(&info.image);
    while let Some(i) = image {
        files.push(PathBuf::from(&i.filename));
        image = i.backing_image.as_deref();
    }
    assert_eq!(
        info.backing_file_depth as usize,
        files.len() - 1,
        "{name}: {info:?}"
    );
    files
}

async fn qcow2_images_are_created_by_jobs(kind: Kind) {
    let (qmp, _qemu) = connect(kind).await;
    let dir = qemu_testkit::tempdir("qemu-jobs-create");
    let base = qcow2_image(&qmp, dir.path(), "base", 16 * MIB, None).await;
    let top = qcow2_image(&qmp, dir.path(), "top", 16 * MIB, Some(&base)).await;
    let info = node(&qmp, "top").await.unwrap();
    assert_eq!(info.drv, "qcow2");
    assert_eq!(info.image.virtual_size, 16 * MIB);
    assert_eq!(info.image.format, "qcow2");
    // The backing file is recorded in the image and opened as the node asked.
    assert_eq!(
        info.image.backing_filename.as_deref(),
        base.path.to_str(),
        "{info:?}"
    );
    assert_eq!(chain(&qmp, "top").await, vec![top.path, base.path]);
    no_jobs_left(&qmp).await;
}

async fn a_failing_create_job_reports_qemus_error(kind: Kind) {
    let (qmp, _qemu) = connect(kind).await;
    let dir = qemu_testkit::tempdir("qemu-jobs-create");
    let missing = dir.path().join("no-such-dir").join("x.img");
    let file = BlockdevCreateOptionsFile::new(missing.to_str().unwrap(), 0);
    let create = BlockdevCreate::new(
        "create-missing",
        BlockdevCreateOptions::new(BlockdevCreateOptionsVariant::File(file)),
    );
    let job = Job::start(&qmp, create, JobOptions::new()).await.unwrap();
    match job.wait(Some(T)).await.unwrap() {
        Outcome::Failed { error } => assert!(error.contains("No such file"), "{error}"),
        other => panic!("{other:?}"),
    }
    no_jobs_left(&qmp).await;
}

async fn block_stream_pulls_the_base_into_the_top(kind: Kind) {
    let (qmp, _qemu) = connect(kind).await;
    let dir = qemu_testkit::tempdir("qemu-jobs-stream");
    let base = qcow2_image(&qmp, dir.path(), "base", 16 * MIB, None).await;
    let top = qcow2_image(&qmp, dir.path(), "top", 16 * MIB, Some(&base)).await;
    assert_eq!(chain(&qmp, "top").await, vec![top.path.clone(), base.path]);

    let stream = BlockStream::new("top").job_id("stream");
    let job = Job::start(&qmp, stream, JobOptions::new()).await.unwrap();
    assert_eq!(job.wait(Some(T)).await.unwrap(), Outcome::Completed);
    assert_eq!(job.state().status, JobStatus::Concluded);

    // The top stands alone, in QEMU and in its header.
    assert_eq!(chain(&qmp, "top").await, vec![top.path]);
    let info = node(&qmp, "top").await.unwrap();
    assert_eq!(info.image.backing_filename, None, "{info:?}");
    // The base node is still there (the monitor holds it), unused.
    assert!(node(&qmp, "base").await.is_some());
    no_jobs_left(&qmp).await;
}

async fn block_commit_folds_an_overlay_into_its_base(kind: Kind) {
    let (qmp, _qemu) = connect(kind).await;
    let dir = qemu_testkit::tempdir("qemu-jobs-commit");
    let base = qcow2_image(&qmp, dir.path(), "base", 16 * MIB, None).await;
    let mid = qcow2_image(&qmp, dir.path(), "mid", 16 * MIB, Some(&base)).await;
    let top = qcow2_image(&qmp, dir.path(), "top", 16 * MIB, Some(&mid)).await;
    assert_eq!(
        chain(&qmp, "top").await,
        vec![top.path.clone(), mid.path, base.path.clone()]
    );

    // Not the active layer: a commit job that ends by itself.
    let commit = BlockCommit::new("top")
        .top_node("mid")
        .base_node("base")
        .job_id("commit");
    let job = Job::start(&qmp, commit, JobOptions::new()).await.unwrap();
    assert_eq!(job.wait(Some(T)).await.unwrap(), Outcome::Completed);

    // `mid` is out of the chain, in QEMU and in top's header.
    assert_eq!(
        chain(&qmp, "top").await,
        vec![top.path.clone(), base.path.clone()]
    );
    let info = node(&qmp, "top").await.unwrap();
    assert_eq!(info.image.backing_filename.as_deref(), base.path.to_str());
    no_jobs_left(&qmp).await;
}

async fn active_commit_is_completed_when_ready(kind: Kind) {
    let (qmp, _qemu) = connect(kind).await;
    let dir = qemu_testkit::tempdir("qemu-jobs-commit");
    let base = qcow2_image(&qmp, dir.path(), "base", 16 * MIB, None).await;
    let top = qcow2_image(&qmp, dir.path(), "top", 16 * MIB, Some(&base)).await;
    assert_eq!(chain(&qmp, "top").await, vec![top.path, base.path.clone()]);

    // The active layer: a mirror-like job that waits in `ready` for
    // `job-complete`, sent here by the follower.
    let commit = BlockCommit::new("top").job_id("active");
    let options = JobOptions::new().complete_when_ready(true);
    let job = Job::start(&qmp, commit, options).await.unwrap();
    let mut w = job.watch();
    let ready = w.wait_for(|s| s.status == JobStatus::Ready || s.outcome.is_some());
    assert_eq!(ready.await.unwrap().status, JobStatus::Ready);
    assert_eq!(job.wait(Some(T)).await.unwrap(), Outcome::Completed);
    // Whatever used the top now uses the base; the base's chain is itself.
    assert_eq!(chain(&qmp, "base").await, vec![base.path]);
    no_jobs_left(&qmp).await;
}

/// Two backups: `bad` fails at its first read, `good` is slow (1 MiB/s of
/// 1 GiB) so it is still running when its partner fails.
fn two_backups() -> Transaction {
    let bad = BlockdevBackup::new("bad", MirrorSyncMode::Full, "dst1").job_id("bad");
    let good = BlockdevBackup::new("src2", MirrorSyncMode::Full, "dst2")
        .job_id("good")
        .speed(MIB);
    let action = |b| {
        TransactionAction::new(TransactionActionVariant::BlockdevBackup(
            BlockdevBackupWrapper::new(b),
        ))
    };
    Transaction::new(vec![action(bad), action(good)])
        .properties(TransactionProperties::new().completion_mode(ActionCompletionMode::Grouped))
}

async fn two_backup_nodes(qmp: &TypedClient) {
    null_node(qmp, "disk1", 16 * MIB).await;
    failing_reads(qmp, "bad", "disk1").await;
    null_node(qmp, "dst1", 16 * MIB).await;
    null_node(qmp, "src2", 1024 * MIB).await;
    null_node(qmp, "dst2", 1024 * MIB).await;
}

async fn a_grouped_transaction_fails_and_cancels_together(kind: Kind) {
    let (qmp, _qemu) = connect(kind).await;
    two_backup_nodes(&qmp).await;
    let mut events = qmp.listen::<Event>();
    let jobs = start_transaction(&qmp, two_backups(), JobOptions::new())
        .await
        .unwrap();
    let ids: Vec<_> = jobs.iter().map(|j| j.id()).collect();
    assert_eq!(ids, ["bad", "good"]);
    // As QEMU says: the failing one failed, its partner was cancelled.
    match jobs[0].wait(Some(T)).await.unwrap() {
        Outcome::Failed { error } => assert!(error.contains("Input/output error"), "{error}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(jobs[1].wait(Some(T)).await.unwrap(), Outcome::Cancelled);
    no_jobs_left(&qmp).await;
    // What QEMU said, in order (`--nocapture` shows it).
    let mut said = Vec::new();
    while let Ok(e) = events.recv_timeout(Duration::from_millis(20)).await {
        said.push(match e {
            Event::JobStatusChange(e) => format!("{}:{}", e.id, e.status),
            Event::BlockJobCompleted(e) => format!("{}:COMPLETED({:?})", e.device, e.error),
            Event::BlockJobCancelled(e) => format!("{}:CANCELLED", e.device),
            other => format!("{other:?}"),
        });
    }
    eprintln!("{kind:?}: {}", said.join(" "));
}

async fn a_grouped_transaction_followed_by_attach(kind: Kind) {
    let (qmp, _qemu) = connect(kind).await;
    two_backup_nodes(&qmp).await;
    // Sent by hand, with `auto-dismiss: false` so that the jobs are still
    // there to attach to however soon they end.
    let mut t = serde_json::to_value(two_backups()).unwrap();
    for a in t["actions"].as_array_mut().unwrap() {
        a["data"]["auto-dismiss"] = false.into();
    }
    qmp.execute("transaction", Some(t)).await.unwrap();
    let bad = Job::attach(&qmp, "bad", JobOptions::new()).await.unwrap();
    let good = Job::attach(&qmp, "good", JobOptions::new()).await.unwrap();
    match bad.wait(Some(T)).await.unwrap() {
        Outcome::Failed { error } => assert!(error.contains("Input/output error"), "{error}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(good.wait(Some(T)).await.unwrap(), Outcome::Cancelled);
    no_jobs_left(&qmp).await;
}

async fn a_job_finalized_by_hand_after_a_hook(kind: Kind) {
    let (qmp, _qemu) = connect(kind).await;
    let dir = qemu_testkit::tempdir("qemu-jobs-finalize");
    null_node(&qmp, "src", 16 * MIB).await;
    let dst = qcow2_image(&qmp, dir.path(), "dst", 16 * MIB, None).await;
    let backup = BlockdevBackup::new("src", MirrorSyncMode::Full, "dst").job_id("mf");
    let options = JobOptions::new().manual_finalize(true);
    let job = Job::start(&qmp, backup, options).await.unwrap();
    let state = job.wait_for(JobStatus::Pending, Some(T)).await.unwrap();
    assert_eq!(state.outcome, None);

    // The hook: the job waits in `pending` (QEMU says so too) while the
    // target is checked.
    let jobs = qmp.call(QueryJobs::new()).await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].status, JobStatus::Pending);
    let target = node(&qmp, &dst.node).await.expect("the target node");
    assert_eq!(target.image.virtual_size, 16 * MIB);
    assert_eq!(job.state().status, JobStatus::Pending);

    job.finalize().await.unwrap();
    assert_eq!(job.wait(Some(T)).await.unwrap(), Outcome::Completed);
    no_jobs_left(&qmp).await;
}
