//! Following jobs, measured against a real QEMU (`qemu-system-x86_64`, or
//! the one `QEMU_SYSTEM_X86_64` names: `.ci/qemu-7.2 --env` for 7.2).
//!
//! ```text
//! cargo bench -p qemu-jobs --bench jobs
//! ```
//!
//! Prints, then one JSON line with the same figures:
//! - `latency_*`: events to progress: from a `JOB_STATUS_CHANGE` reaching the
//!   client (a raw listener's timestamp) to a [`Job::watch`] receiver seeing
//!   the new status, over every status of short backups (`null-co` nodes:
//!   `short`) and of pause/resume cycles of a throttled one (`cycles`);
//!   statuses the watch coalesced (two changes between two looks: a watch
//!   keeps the latest) are counted, not measured;
//! - `many_*`: `n` throttled backups (pairs of `null-co` nodes of 1 GiB,
//!   1 MiB/s each) followed from one client with the default poll interval:
//!   the time to start them one after the other, the latency of one
//!   `query-jobs` while they all run, the cost of a poll interval (each job
//!   reads `query-jobs` once an interval: `n` calls), the CPU QEMU and this
//!   process used meanwhile, then the time for all to be cancelled; all must
//!   end `Cancelled`, and none be left in QEMU.
//!
//! No figure is asserted. `cargo test --all-targets` runs this binary without
//! `--bench`: a smoke run, a few jobs for half a second.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qemu_jobs::{Job, JobOptions, JobStatus, Outcome};
use qemu_qapi::typed::TypedClient;
use qemu_qapi_types::*;
use qemu_testkit::QemuProcess;

const T: Duration = Duration::from_secs(60);
const MIB: i128 = 1 << 20;

struct Sizes {
    /// Short backups whose status changes are timed.
    latency_jobs: usize,
    /// Throttled backups followed at once.
    many: usize,
    /// How long they run before they are cancelled.
    window: Duration,
}

fn sizes() -> Sizes {
    if !std::env::args().any(|a| a == "--bench") {
        Sizes {
            latency_jobs: 3,
            many: 5,
            window: Duration::from_millis(500),
        }
    } else {
        Sizes {
            latency_jobs: 40,
            many: 50,
            window: Duration::from_secs(3),
        }
    }
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

async fn null_node(qmp: &TypedClient, name: &str, size: i128) {
    let null = BlockdevOptionsNull::new().size(size);
    let opts = BlockdevOptions::new(BlockdevOptionsVariant::NullCo(null)).node_name(name);
    qmp.call(BlockdevAdd::new(opts)).await.unwrap();
}

async fn no_jobs_left(qmp: &TypedClient) {
    let jobs = qmp.call(QueryJobs::new()).await.unwrap();
    assert!(jobs.is_empty(), "{jobs:?}");
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// User + system CPU time of a process, from `/proc/<pid>/stat`.
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the
    // 14th field, stime the 15th; 100 ticks a second on Linux.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    Duration::from_millis(f.iter().sum::<u64>() * 10)
}

struct Latency {
    samples: Vec<Duration>,
    coalesced: usize,
}

/// The statuses a watch saw, in order, with when it saw them.
async fn watched(
    mut w: tokio::sync::watch::Receiver<qemu_jobs::JobState>,
) -> Vec<(String, Instant)> {
    let mut seen: Vec<(String, Instant)> = Vec::new();
    loop {
        let s = w.borrow_and_update().clone();
        let status = s.status.to_string();
        if seen.last().map(|(st, _)| st) != Some(&status) {
            seen.push((status, Instant::now()));
        }
        if s.outcome.is_some() || s.lost.is_some() || w.changed().await.is_err() {
            return seen;
        }
    }
}

/// Matches a job's events (in order) with what its watch saw (in order);
/// `null` comes after the follower is done (it dismisses), so is left out.
fn match_up(events: &[(String, Instant)], seen: &[(String, Instant)], l: &mut Latency) {
    let mut next = 0;
    for (status, at) in events.iter().filter(|(s, _)| s != "null") {
        match seen[next..].iter().position(|(s, _)| s == status) {
            Some(k) => {
                l.samples
                    .push(seen[next + k].1.saturating_duration_since(*at));
                next += k + 1;
            }
            None => l.coalesced += 1,
        }
    }
}

/// Events to progress: over `jobs` short backups (whose statuses follow each
/// other within a millisecond, so the watch coalesces many), then over
/// `jobs` pause/resume cycles of a throttled backup (one change at a time).
async fn latency(qmp: &TypedClient, jobs: usize) -> (Latency, Latency) {
    null_node(qmp, "lsrc", 16 * MIB).await;
    null_node(qmp, "ldst", 16 * MIB).await;
    null_node(qmp, "psrc", 1024 * MIB).await;
    null_node(qmp, "pdst", 1024 * MIB).await;
    // (job, status, when the raw listener had the event), in order.
    type Arrivals = Arc<Mutex<Vec<(String, String, Instant)>>>;
    let arrived: Arrivals = Default::default();
    let mut raw = qmp.client().listen(["JOB_STATUS_CHANGE"]);
    let recorder = {
        let arrived = arrived.clone();
        tokio::spawn(async move {
            while let Ok(e) = raw.recv().await {
                let at = Instant::now();
                let d = e.data();
                let id = d["id"].as_str().unwrap_or("").to_owned();
                let status = d["status"].as_str().unwrap_or("").to_owned();
                arrived.lock().unwrap().push((id, status, at));
            }
        })
    };
    let events_of = |id: &str| -> Vec<(String, Instant)> {
        arrived
            .lock()
            .unwrap()
            .iter()
            .filter(|(j, _, _)| j == id)
            .map(|(_, s, at)| (s.clone(), *at))
            .collect()
    };

    let mut short = Latency {
        samples: Vec::new(),
        coalesced: 0,
    };
    for i in 0..jobs {
        let id = format!("l{i}");
        let backup = BlockdevBackup::new("lsrc", MirrorSyncMode::Full, "ldst").job_id(&id);
        let job = Job::start(qmp, backup, JobOptions::new()).await.unwrap();
        let seen = watched(job.watch()).await;
        assert_eq!(job.wait(Some(T)).await.unwrap(), Outcome::Completed);
        // Events may still be on their way to the recorder.
        tokio::time::sleep(Duration::from_millis(20)).await;
        match_up(&events_of(&id), &seen, &mut short);
    }

    let mut cycles = Latency {
        samples: Vec::new(),
        coalesced: 0,
    };
    let backup = BlockdevBackup::new("psrc", MirrorSyncMode::Full, "pdst")
        .job_id("p")
        .speed(MIB);
    let job = Job::start(qmp, backup, JobOptions::new()).await.unwrap();
    let watcher = tokio::spawn(watched(job.watch()));
    job.wait_for(JobStatus::Running, Some(T)).await.unwrap();
    for _ in 0..jobs {
        job.pause().await.unwrap();
        job.wait_for(JobStatus::Paused, Some(T)).await.unwrap();
        job.resume().await.unwrap();
        job.wait_for(JobStatus::Running, Some(T)).await.unwrap();
    }
    job.cancel().await.unwrap();
    assert_eq!(job.wait(Some(T)).await.unwrap(), Outcome::Cancelled);
    let seen = watcher.await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    match_up(&events_of("p"), &seen, &mut cycles);

    recorder.abort();
    short.samples.sort();
    cycles.samples.sort();
    (short, cycles)
}

struct Many {
    start: Duration,
    query_jobs: Vec<Duration>,
    qemu_cpu: Duration,
    our_cpu: Duration,
    window: Duration,
    progressed: usize,
    cancel: Duration,
}

/// `n` throttled backups followed at once, then cancelled.
async fn many(qmp: &TypedClient, qemu: &QemuProcess, n: usize, window: Duration) -> Many {
    for i in 0..n {
        null_node(qmp, &format!("src{i}"), 1024 * MIB).await;
        null_node(qmp, &format!("dst{i}"), 1024 * MIB).await;
    }
    let t0 = Instant::now();
    let mut jobs = Vec::with_capacity(n);
    for i in 0..n {
        let backup =
            BlockdevBackup::new(format!("src{i}"), MirrorSyncMode::Full, format!("dst{i}"))
                .job_id(format!("j{i}"))
                .speed(MIB);
        jobs.push(Job::start(qmp, backup, JobOptions::new()).await.unwrap());
    }
    let start = t0.elapsed();

    let pid = qemu.pid().to_string();
    let (qemu_cpu0, our_cpu0) = (cpu_time(&pid), cpu_time("self"));
    let w0 = Instant::now();
    let mut query_jobs = Vec::new();
    while w0.elapsed() < window {
        let t = Instant::now();
        let infos = qmp.call(QueryJobs::new()).await.unwrap();
        query_jobs.push(t.elapsed());
        assert_eq!(infos.len(), n);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let window = w0.elapsed();
    let (qemu_cpu, our_cpu) = (
        cpu_time(&pid).saturating_sub(qemu_cpu0),
        cpu_time("self").saturating_sub(our_cpu0),
    );
    query_jobs.sort();
    let progressed = jobs
        .iter()
        .filter(|j| j.state().progress.current > 0)
        .count();

    let t0 = Instant::now();
    for j in &jobs {
        j.cancel().await.unwrap();
    }
    for j in &jobs {
        assert_eq!(j.wait(Some(T)).await.unwrap(), Outcome::Cancelled, "{j:?}");
    }
    let cancel = t0.elapsed();
    no_jobs_left(qmp).await;
    Many {
        start,
        query_jobs,
        qemu_cpu,
        our_cpu,
        window,
        progressed,
        cancel,
    }
}

fn main() {
    if qemu_testkit::qemu_system().is_none() {
        return;
    }
    let sizes = sizes();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (qmp, qemu) = connect().await;
        let version = qmp
            .call(QueryVersion::new())
            .await
            .map(|v| format!("{}.{}.{}", v.qemu.major, v.qemu.minor, v.qemu.micro))
            .unwrap_or_default();

        let (short, cycles) = latency(&qmp, sizes.latency_jobs).await;
        for (what, l) in [("short backups", &short), ("pause/resume cycles", &cycles)] {
            println!(
                "events to progress, {what} ({} statuses, {} coalesced by the watch): median {:.0} µs, p90 {:.0} µs, max {:.0} µs",
                l.samples.len(),
                l.coalesced,
                us(quantile(&l.samples, 0.5)),
                us(quantile(&l.samples, 0.9)),
                us(quantile(&l.samples, 1.0)),
            );
        }

        let n = sizes.many;
        let m = many(&qmp, &qemu, n, sizes.window).await;
        let interval = JobOptions::new().poll_interval;
        let q50 = quantile(&m.query_jobs, 0.5);
        let per_interval = q50 * n as u32;
        println!(
            "{n} throttled backups: started in {:.1} ms ({:.2} ms each); query-jobs with {n} jobs: median {:.0} µs, p90 {:.0} µs; \
             a poll interval ({} ms) costs {n} of them: {:.1} ms of QEMU's monitor ({:.1} %); \
             over {:.1} s: QEMU {:.0} ms CPU, this process {:.0} ms CPU; {} of {n} moved; all cancelled in {:.1} ms, none left",
            ms(m.start),
            ms(m.start) / n as f64,
            us(q50),
            us(quantile(&m.query_jobs, 0.9)),
            interval.as_millis(),
            ms(per_interval),
            100.0 * per_interval.as_secs_f64() / interval.as_secs_f64(),
            m.window.as_secs_f64(),
            ms(m.qemu_cpu),
            ms(m.our_cpu),
            m.progressed,
            ms(m.cancel),
        );
        println!(
            "{}",
            serde_json::json!({
                "qemu": version,
                "latency_short_statuses": short.samples.len(),
                "latency_short_coalesced": short.coalesced,
                "latency_short_median_us": us(quantile(&short.samples, 0.5)).round(),
                "latency_short_max_us": us(quantile(&short.samples, 1.0)).round(),
                "latency_cycles_statuses": cycles.samples.len(),
                "latency_cycles_coalesced": cycles.coalesced,
                "latency_cycles_median_us": us(quantile(&cycles.samples, 0.5)).round(),
                "latency_cycles_p90_us": us(quantile(&cycles.samples, 0.9)).round(),
                "latency_cycles_max_us": us(quantile(&cycles.samples, 1.0)).round(),
                "many_jobs": n,
                "many_start_ms": (ms(m.start) * 10.0).round() / 10.0,
                "many_query_jobs_median_us": us(q50).round(),
                "many_query_jobs_p90_us": us(quantile(&m.query_jobs, 0.9)).round(),
                "many_poll_interval_cost_ms": (ms(per_interval) * 10.0).round() / 10.0,
                "many_window_s": (m.window.as_secs_f64() * 10.0).round() / 10.0,
                "many_qemu_cpu_ms": ms(m.qemu_cpu).round(),
                "many_our_cpu_ms": ms(m.our_cpu).round(),
                "many_moved": m.progressed,
                "many_cancel_ms": (ms(m.cancel) * 10.0).round() / 10.0,
            })
        );
    });
}
