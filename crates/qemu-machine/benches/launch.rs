//! What the machine layer costs: `QemuMachine::launch()` until QMP is ready, and until
//! a full graceful shutdown, against the bare binary started with the same arguments
//! and a socketpair, its greeting read and capabilities negotiated over a raw blocking
//! socket, then `quit` and `waitpid`. Medians over alternating runs. Then the wall
//! time to launch 50 machines at once (and to shut them all down).
//!
//! Then many at once, against its own limit: `MANY` (default 100) bare QEMUs started
//! together until every one has negotiated QMP, and the same number of
//! `QemuMachine::launch()` futures on the tokio runtime until every one is ready;
//! then all are shut down (`launch100_ms` is to all ready, `launch100_total_ms`
//! to all exited and reaped). Alternating rounds (`MANY_ROUNDS`, default 5), medians
//! and min-max; the ratios are the medians of each round's ratio to the bare round
//! run just before it (listed in `launch100_round_ratios`).
//!
//! The bare variant is as fast as a plain program can be: `BARE_THREADS` (default 2,
//! one per core of the machine the figures come from; 1, 2 and 4 were within noise
//! of each other there) threads each start their share with `Command::spawn` (no
//! `pre_exec` hook, so std uses `posix_spawn`, i.e. `clone(CLONE_VM | CLONE_VFORK)`,
//! not a full fork) and then read the greeting and negotiate on each of their
//! sockets in turn (blocking, one after the other: every QEMU is already starting
//! while the thread waits for the first); shutdown is `quit` on every socket, then
//! `waitpid` on every child. QEMU's end of each socketpair is not close-on-exec (so
//! that the child inherits it without a hook); our end is made so right after the
//! socketpair is created. A QEMU started by the other thread in between may inherit
//! one of them too: that only delays end-of-file, which bare does not wait for.
//!
//! ```text
//! cargo bench -p qemu-machine --bench launch            # 20 runs each, 5 rounds of 100
//! RUNS=50 cargo bench -p qemu-machine --bench launch
//! MANY=200 MANY_ROUNDS=3 BARE_THREADS=4 cargo bench -p qemu-machine --bench launch
//! ```
//!
//! Prints one JSON line. Needs `qemu-system-x86_64` (or `$QEMU_SYSTEM_X86_64`).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qemu_machine::QemuMachine;

/// The arguments both variants get (the machine adds the same `-display none -vga
/// none` and QMP chardev itself).
const ARGS: [&str; 2] = ["-machine", "none"];

/// `qemu-system-x86_64` (or `$QEMU_SYSTEM_X86_64`), without a `SKIPPED:` line or a
/// panic under `CI=true`: the bench says it skipped in its JSON line.
fn qemu() -> Option<PathBuf> {
    qemu_testkit::locate_binary("qemu-system-x86_64", qemu_testkit::QEMU_SYSTEM_ENV).ok()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

/// Read lines until one is not an event; returns it.
fn read_reply(r: &mut impl BufRead) -> String {
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).expect("read from QEMU");
        assert!(n > 0, "QEMU closed the QMP socket");
        if !line.contains("\"event\"") {
            return line;
        }
    }
}

/// The bare binary: (time to QMP ready, time to exit).
fn bare(qemu: &Path) -> (Duration, Duration) {
    let start = Instant::now();
    let mut q = bare_start(qemu);
    q.ready();
    let ready = start.elapsed();
    q.quit();
    let mut rest = String::new();
    while q
        .reader
        .read_line(&mut rest)
        .map(|n| n > 0)
        .unwrap_or(false)
    {}
    q.reap();
    (ready, start.elapsed())
}

/// The machine layer: (time to QMP ready, time to full shutdown).
async fn machine(qemu: &Path) -> (Duration, Duration) {
    let start = Instant::now();
    let vm = QemuMachine::builder(qemu)
        .args(ARGS)
        .launch()
        .await
        .expect("launch");
    let ready = start.elapsed();
    vm.shutdown().await.expect("shutdown");
    (ready, start.elapsed())
}

async fn fifty(qemu: &Path) -> (Duration, Duration) {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let q = qemu.to_path_buf();
        set.spawn(async move { QemuMachine::builder(q).args(ARGS).launch().await });
    }
    let mut vms = Vec::new();
    while let Some(r) = set.join_next().await {
        vms.push(std::sync::Arc::new(r.expect("task").expect("launch")));
    }
    let launched = start.elapsed();
    let mut set = tokio::task::JoinSet::new();
    for vm in &vms {
        let vm = vm.clone();
        set.spawn(async move { vm.shutdown().await });
    }
    while let Some(r) = set.join_next().await {
        r.expect("task").expect("shutdown");
    }
    (launched, start.elapsed())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

/// A bare QEMU of the many-at-once round, its greeting not read yet.
struct BareQemu {
    child: std::process::Child,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// Start a bare QEMU with a socketpair for QMP (QEMU's end not close-on-exec: see
/// the module documentation).
fn bare_start(qemu: &Path) -> BareQemu {
    let (ours, theirs): (OwnedFd, OwnedFd) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::empty(),
        None,
    )
    .expect("socketpair");
    // Not for the QEMUs started after this one.
    rustix::io::fcntl_setfd(&ours, rustix::io::FdFlags::CLOEXEC).expect("fcntl");
    let ours = UnixStream::from(ours);
    let child = Command::new(qemu)
        .args(["-display", "none", "-vga", "none", "-chardev"])
        .arg(format!("socket,id=mon,fd={}", theirs.as_raw_fd()))
        .args(["-mon", "chardev=mon,mode=control"])
        .args(ARGS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn QEMU");
    drop(theirs);
    BareQemu {
        child,
        reader: BufReader::new(ours.try_clone().expect("dup")),
        writer: ours,
    }
}

impl BareQemu {
    /// Read the greeting and negotiate.
    fn ready(&mut self) {
        let greeting = read_reply(&mut self.reader);
        assert!(greeting.contains("\"QMP\""), "{greeting}");
        self.writer
            .write_all(b"{\"execute\": \"qmp_capabilities\"}\n")
            .expect("write");
        let reply = read_reply(&mut self.reader);
        assert!(reply.contains("\"return\""), "{reply}");
    }

    /// Ask QEMU to quit.
    fn quit(&mut self) {
        self.writer
            .write_all(b"{\"execute\": \"quit\"}\n")
            .expect("write");
    }

    /// Wait for QEMU to exit, successfully.
    fn reap(&mut self) {
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "{status}");
    }
}

/// `n` bare QEMUs at once from `threads` threads: (time to all ready, time to all
/// exited and reaped).
fn bare_many(qemu: &Path, n: usize, threads: usize) -> (Duration, Duration) {
    let start = Instant::now();
    let threads = threads.clamp(1, n.max(1));
    let mut all: Vec<BareQemu> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let share = n / threads + usize::from(t < n % threads);
                s.spawn(move || {
                    let mut mine: Vec<BareQemu> = (0..share).map(|_| bare_start(qemu)).collect();
                    for q in &mut mine {
                        q.ready();
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("bare thread"))
            .collect()
    });
    let ready = start.elapsed();
    all.iter_mut().for_each(BareQemu::quit);
    all.iter_mut().for_each(BareQemu::reap);
    (ready, start.elapsed())
}

/// The median of `ours[i] / limit[i]`, each pair of rounds run back to back (so
/// that load from others on a shared machine, which drifts over seconds, weighs on
/// both alike), and those ratios; `null` and `[]` without figures for both.
fn paired_ratio(ours: &[Duration], limit: &[Duration]) -> (String, String) {
    let mut ratios: Vec<f64> = ours
        .iter()
        .zip(limit)
        .map(|(o, l)| o.as_secs_f64() / l.as_secs_f64())
        .collect();
    let each = ratios
        .iter()
        .map(|r| format!("{r:.3}"))
        .collect::<Vec<_>>()
        .join(", ");
    if ratios.is_empty() {
        return ("null".to_owned(), "[]".to_owned());
    }
    ratios.sort_by(f64::total_cmp);
    let n = ratios.len();
    let median = if n % 2 == 1 {
        ratios[n / 2]
    } else {
        (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
    };
    (format!("{median:.3}"), format!("[{each}]"))
}

/// `n` machines launched at once: (time to all ready, time to all shut down).
async fn machine_many(qemu: &Path, n: usize) -> (Duration, Duration) {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let q = qemu.to_path_buf();
        set.spawn(async move { QemuMachine::builder(q).args(ARGS).launch().await });
    }
    let mut vms = Vec::new();
    while let Some(r) = set.join_next().await {
        vms.push(std::sync::Arc::new(r.expect("task").expect("launch")));
    }
    let ready = start.elapsed();
    let mut set = tokio::task::JoinSet::new();
    for vm in vms {
        set.spawn(async move { vm.shutdown().await });
    }
    while let Some(r) = set.join_next().await {
        r.expect("task").expect("shutdown");
    }
    (ready, start.elapsed())
}

/// Median, min and max in milliseconds (zeros for no figures).
fn spread(v: &[Duration]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let min = v.iter().min().copied().unwrap_or_default();
    let max = v.iter().max().copied().unwrap_or_default();
    (ms(median(v.to_vec())), ms(min), ms(max))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us with no such
    // flag and expects a quick exit.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(qemu) = qemu() else {
        println!("{{\"skipped\": \"qemu-system-x86_64 not found\"}}");
        return;
    };
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // Warm up the page cache and the spawner thread.
    let _ = bare(&qemu);
    let _ = rt.block_on(machine(&qemu));

    let (mut m_ready, mut m_total, mut b_ready, mut b_total) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs.max(1) * 2 {
        if i % 2 == 0 {
            let (r, t) = rt.block_on(machine(&qemu));
            m_ready.push(r);
            m_total.push(t);
        } else {
            let (r, t) = bare(&qemu);
            b_ready.push(r);
            b_total.push(t);
        }
    }
    let (m_ready, m_total) = (median(m_ready), median(m_total));
    let (b_ready, b_total) = (median(b_ready), median(b_total));
    let (launch50, all50) = rt.block_on(fifty(&qemu));

    let many = env_usize("MANY", 100);
    let rounds = env_usize("MANY_ROUNDS", 5);
    let threads = env_usize("BARE_THREADS", 2);
    let (mut mm_ready, mut mm_total, mut bm_ready, mut bm_total) = (vec![], vec![], vec![], vec![]);
    // For profiling one side alone: `MANY_ONLY=bare` or `MANY_ONLY=machine` (the
    // other side's figures are then 0, its ratios null).
    let only = std::env::var("MANY_ONLY").unwrap_or_default();
    for i in 0..rounds * 2 {
        if (i % 2 == 0 && only != "machine") || only == "bare" {
            let (r, t) = bare_many(&qemu, many, threads);
            bm_ready.push(r);
            bm_total.push(t);
        } else {
            let (r, t) = rt.block_on(machine_many(&qemu, many));
            mm_ready.push(r);
            mm_total.push(t);
        }
    }
    let (m_med, m_min, m_max) = spread(&mm_ready);
    let (b_med, b_min, b_max) = spread(&bm_ready);
    let (mt_med, mt_min, mt_max) = spread(&mm_total);
    let (bt_med, bt_min, bt_max) = spread(&bm_total);
    let (ratio, ratios) = paired_ratio(&mm_ready, &bm_ready);
    let (total_ratio, _) = paired_ratio(&mm_total, &bm_total);
    let n = many;
    let many_row = format!(
        "\"many\": {n}, \"many_rounds\": {rounds}, \"bare_threads\": {threads}, \
         \"launch{n}_ms\": {m_med:.0}, \"launch{n}_min_max_ms\": [{m_min:.0}, {m_max:.0}], \
         \"bare{n}_ms\": {b_med:.0}, \"bare{n}_min_max_ms\": [{b_min:.0}, {b_max:.0}], \
         \"launch{n}_ratio\": {ratio}, \"launch{n}_round_ratios\": {ratios}, \
         \"launch{n}_total_ms\": {mt_med:.0}, \"launch{n}_total_min_max_ms\": [{mt_min:.0}, {mt_max:.0}], \
         \"bare{n}_total_ms\": {bt_med:.0}, \"bare{n}_total_min_max_ms\": [{bt_min:.0}, {bt_max:.0}], \
         \"launch{n}_total_ratio\": {total_ratio}",
    );
    println!(
        "{{\"runs\": {runs}, \"machine_ready_ms\": {:.2}, \"bare_ready_ms\": {:.2}, \"ready_ratio\": {:.3}, \
         \"machine_total_ms\": {:.2}, \"bare_total_ms\": {:.2}, \"total_ratio\": {:.3}, \
         \"launch50_ms\": {:.1}, \"launch50_and_shutdown_ms\": {:.1}, {many_row}}}",
        ms(m_ready),
        ms(b_ready),
        ms(m_ready) / ms(b_ready),
        ms(m_total),
        ms(b_total),
        ms(m_total) / ms(b_total),
        ms(launch50),
        ms(all50),
    );
}
