//! Throughput and memory at the limit, each beside the limit it is measured against,
//! in one run.
//!
//! ```text
//! cargo bench -p qemu-qmp --bench limits          # BENCH_QUICK=1 for a short run
//! ```
//!
//! Prints one JSON line; every `*_ratio` is ours / the limit (higher is better for
//! rates, lower for costs):
//! - `pipelined_{8,64}`: commands per second with 8 or 64 in flight against an
//!   out-of-process server that answers at once (this binary run again as a
//!   `TestServer` in a process of its own, so the server does not share the client's
//!   threads), for a raw pipelined client (blocking socket; reads what came, parses
//!   each reply, writes as many new requests in one write) and ours on the
//!   current-thread and multi-thread runtimes (`ct`, `mt`). The raw client runs
//!   twice: as deep as asked (`raw_per_s`), and within the 7-command in-band window
//!   that keeps `exec-oob` able to get through (`raw_window_per_s`, the limit for a
//!   client that keeps that guarantee, as ours does with OOB on: `*_window_ratio`);
//! - `backlog`: events per second drained from a real QEMU's backlog of `STOP` and
//!   `RESUME` events, queued while nobody read the socket: the raw limit reads and
//!   parses each event once; ours (async on both runtimes, and the blocking client)
//!   takes each event from a listener and reads its name and timestamp;
//! - `blocking_memory`: the peak memory added while a `blocking::Client` consumes
//!   100,000 events of a flood (default queue), beside the async client doing the same,
//!   and the cost of a queued event (a flood left queued, divided by the events kept);
//! - `listeners`: against a real QEMU, `stop` + `cont` latency with one listener, with
//!   10,000 `listen_all` listeners (and the memory they take when made, and once the
//!   events of those rounds are queued for all of them), and with 10,000 idle
//!   listeners for another event; the time to drop 1,000 and 10,000 listeners;
//! - `consumer_loss`: events lost by a consumer on the multi-thread runtime reading a
//!   100,000-event flood with the default queue.
//!
//! The clients take turns (several rounds; median kept, with min-max) so that machine
//! noise hits both alike.

use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qemu_qmp::server::{Fault, Reply, TestServer};
use qemu_qmp::{blocking, Client, ListenOptions, Value};
use qemu_testkit::QemuProcess;
use serde_json::json;

const SERVER_ROLE: &str = "QMP_LIMITS_BENCH_SERVER";

/// In-band commands a client may have in flight, with OOB on, and still be sure that
/// an `exec-oob` gets through: QEMU stops reading a monitor whose queue holds 8
/// (our client keeps to this; `OURS_NO_OOB=1` lifts it).
const INBAND_WINDOW: usize = 7;

struct Sizes {
    rounds: usize,
    pipelined: usize,
    backlog: usize,
    flood: usize,
    listeners: usize,
    stop_cont: usize,
}

fn sizes() -> Sizes {
    if !std::env::args().any(|a| a == "--bench") {
        Sizes {
            rounds: 1,
            pipelined: 2_000,
            backlog: 2_000,
            flood: 5_000,
            listeners: 200,
            stop_cont: 5,
        }
    } else if std::env::var_os("BENCH_QUICK").is_some() {
        Sizes {
            rounds: 3,
            pipelined: 50_000,
            backlog: 40_000,
            flood: 100_000,
            listeners: 10_000,
            stop_cont: 50,
        }
    } else {
        Sizes {
            rounds: 7,
            pipelined: 200_000,
            backlog: 100_000,
            flood: 100_000,
            listeners: 10_000,
            stop_cont: 200,
        }
    }
}

// --- the out-of-process server -------------------------------------------------------

/// Run as the server: a `TestServer` on the socket named by the environment, which
/// also floods on `x-flood`; ends when its standard input closes (the bench ended).
fn serve(path: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _enter = rt.enter();
    let server = TestServer::builder()
        .record(false)
        .handler("x-flood", |_| Reply::Return(json!({})))
        .fault_hook(|cmd, args| {
            (cmd == "x-flood").then(|| {
                Fault::FloodEvents(args.get("count").and_then(Value::as_u64).unwrap_or(0) as usize)
            })
        })
        .bind_unix(path)
        .expect("bind");
    println!("ready");
    std::io::stdout().flush().ok();
    rt.block_on(async {
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await
        .ok();
    });
    drop(server);
}

struct ServerProcess {
    child: Child,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    fn start() -> ServerProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let mut child = Command::new(std::env::current_exe().expect("current exe"))
            .env(SERVER_ROLE, &path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("server process");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("server ready");
        assert_eq!(line.trim(), "ready", "server did not start");
        ServerProcess {
            child,
            path,
            _dir: dir,
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        if self.child.wait().is_err() {
            let _ = self.child.kill();
        }
    }
}

// --- raw limits --------------------------------------------------------------------

/// A blocking socket client: whole lines, each parsed once.
struct Raw {
    sock: UnixStream,
    buf: Vec<u8>,
    start: usize,
    scratch: Box<[u8]>,
}

impl Raw {
    fn new(sock: UnixStream) -> Raw {
        Raw {
            sock,
            buf: Vec::with_capacity(1 << 20),
            start: 0,
            scratch: vec![0; 1 << 16].into_boxed_slice(),
        }
    }

    fn connect(sock: UnixStream) -> Raw {
        let mut r = Raw::new(sock);
        r.next_line(); // greeting
        r.sock
            .write_all(b"{\"execute\":\"qmp_capabilities\",\"arguments\":{\"enable\":[\"oob\"]}}\n")
            .expect("write");
        r.next_line();
        r
    }

    /// Read what is available into the buffer (blocking for at least one byte).
    fn fill(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > (1 << 19) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let n = self.sock.read(&mut self.scratch).expect("read");
        assert!(n > 0, "the peer hung up");
        self.buf.extend_from_slice(&self.scratch[..n]);
    }

    /// The next complete line, if buffered.
    fn buffered_line(&mut self) -> Option<Value> {
        let p = memchr::memchr(b'\n', &self.buf[self.start..])?;
        let end = self.start + p + 1;
        let v = serde_json::from_slice(&self.buf[self.start..end]).expect("JSON");
        self.start = end;
        Some(v)
    }

    fn next_line(&mut self) -> Value {
        loop {
            if let Some(v) = self.buffered_line() {
                return v;
            }
            self.fill();
        }
    }
}

fn raw_pipelined(path: &Path, n: usize, depth: usize) -> f64 {
    let mut c = Raw::connect(UnixStream::connect(path).expect("connect"));
    let req = |id: usize| format!("{{\"execute\":\"query-status\",\"id\":{id}}}\n");
    let t = Instant::now();
    let mut sent = 0;
    let mut out = String::new();
    while sent < depth.min(n) {
        out.push_str(&req(sent));
        sent += 1;
    }
    c.sock.write_all(out.as_bytes()).expect("write");
    let mut done = 0;
    while done < n {
        c.fill();
        out.clear();
        while let Some(v) = c.buffered_line() {
            assert!(v.get("return").is_some());
            done += 1;
            if sent < n {
                out.push_str(&req(sent));
                sent += 1;
            }
        }
        if !out.is_empty() {
            c.sock.write_all(out.as_bytes()).expect("write");
        }
    }
    n as f64 / t.elapsed().as_secs_f64()
}

async fn ours_pipelined(path: &Path, n: usize, depth: usize) -> f64 {
    // `OURS_NO_OOB=1`: without OOB, hence without the in-band window.
    let qmp = Client::builder()
        .enable_oob(std::env::var_os("OURS_NO_OOB").is_none())
        .connect(path)
        .await
        .expect("connect");
    let qmp = std::sync::Arc::new(qmp);
    qmp.execute("query-status", None).await.expect("warm up");
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..depth {
        let qmp = qmp.clone();
        let share = n / depth + usize::from(i < n % depth);
        tasks.spawn(async move {
            for _ in 0..share {
                qmp.execute("query-status", None)
                    .await
                    .expect("query-status");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task");
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    qmp.disconnect().await.expect("disconnect");
    rate
}

// --- a real QEMU's event backlog -----------------------------------------------------

/// A negotiated connection to `qemu` (from [`QemuProcess::system_with_monitors`]) on
/// which `n` events wait, generated through its second monitor while nobody read
/// this one.
fn backlog(qemu: &QemuProcess, n: usize) -> UnixStream {
    let reader = Raw::connect(UnixStream::connect(qemu.qmp_path()).expect("connect"));
    let mut gen = Raw::connect(UnixStream::connect(qemu.monitor_path(2)).expect("connect"));
    // Pipelined, 32 at a time: each pair makes a STOP and a RESUME.
    let mut outstanding = 0;
    let mut sent = 0;
    let mut replies = 0;
    let pairs = n / 2;
    while replies < pairs * 2 {
        let mut out = String::new();
        while outstanding < 32 && sent < pairs * 2 {
            out.push_str(if sent % 2 == 0 {
                "{\"execute\":\"stop\"}\n"
            } else {
                "{\"execute\":\"cont\"}\n"
            });
            sent += 1;
            outstanding += 1;
        }
        if !out.is_empty() {
            gen.sock.write_all(out.as_bytes()).expect("write");
        }
        let v = gen.next_line();
        if v.get("return").is_some() {
            replies += 1;
            outstanding -= 1;
        }
    }
    assert!(reader.start == reader.buf.len(), "the reader read ahead");
    reader.sock
}

fn raw_backlog(sock: UnixStream, n: usize) -> f64 {
    let mut r = Raw::new(sock);
    let t = Instant::now();
    for _ in 0..n {
        let v = r.next_line();
        assert!(v["event"].is_string());
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn consume(e: &qemu_qmp::Event) {
    assert!(matches!(e.name(), "STOP" | "RESUME"));
    assert!(e.timestamp().is_some());
}

async fn ours_backlog(sock: UnixStream, n: usize) -> f64 {
    let qmp = Client::builder()
        .await_greeting(false)
        .negotiate(false)
        .build();
    let mut events = qmp.listen_with(ListenOptions::new().capacity(n + 16));
    let t = Instant::now();
    qmp.connect_to(sock).await.expect("connect");
    for _ in 0..n {
        consume(&events.recv().await.expect("event"));
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    qmp.disconnect().await.expect("disconnect");
    rate
}

fn blocking_backlog(sock: UnixStream, n: usize) -> f64 {
    let t = Instant::now();
    let mut qmp = blocking::Client::builder()
        .await_greeting(false)
        .negotiate(false)
        .event_queue_capacity(n + 16)
        .connect(sock)
        .expect("connect");
    for _ in 0..n {
        let e = qmp.pull_event(true).expect("event").expect("an event");
        consume(&e);
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    qmp.close().expect("close");
    rate
}

// --- memory --------------------------------------------------------------------------

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("field")
}

/// Peak memory added while `f` runs, in MiB.
fn peak_added<T>(f: impl FnOnce() -> T) -> (f64, T) {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak");
    let before = status_kib("VmRSS:");
    let out = f();
    let peak = status_kib("VmHWM:");
    (peak.saturating_sub(before) as f64 / 1024.0, out)
}

fn blocking_flood(path: &Path, n: usize) {
    let mut qmp = blocking::Client::connect(path).expect("connect");
    qmp.execute("x-flood", Some(json!({ "count": n })))
        .expect("flood");
    let mut got = 0;
    while got + qmp.events_lost() < n as u64 {
        match qmp.pull_event(Duration::from_millis(200)) {
            Ok(Some(_)) => got += 1,
            Ok(None) => break,
            // Waiting at the end after losses were counted.
            Err(e) if e.is_timeout() => {}
            Err(e) => panic!("{e}"),
        }
    }
    qmp.close().expect("close");
}

fn async_flood(rt: &tokio::runtime::Runtime, path: &Path, n: usize) {
    rt.block_on(async {
        let qmp = Client::connect(path).await.expect("connect");
        let mut events = qmp.listen_all();
        qmp.execute("x-flood", Some(json!({ "count": n })))
            .await
            .expect("flood");
        let mut got = 0u64;
        while got < n as u64 {
            match events.recv().await {
                Ok(_) => got += 1,
                Err(qemu_qmp::RecvError::Lagged(k)) => got += k,
                Err(e) => panic!("{e}"),
            }
        }
        qmp.disconnect().await.expect("disconnect");
    });
}

/// Bytes per queued event: a flood of `n` left in a listener's queue.
fn queued_event_cost(rt: &tokio::runtime::Runtime, path: &Path, n: usize) -> f64 {
    rt.block_on(async {
        let qmp = Client::connect(path).await.expect("connect");
        let events = qmp.listen_with(ListenOptions::new().capacity(n));
        let before = status_kib("VmRSS:");
        qmp.execute("x-flood", Some(json!({ "count": n })))
            .await
            .expect("flood");
        let after = status_kib("VmRSS:");
        drop(events);
        qmp.disconnect().await.expect("disconnect");
        (after.saturating_sub(before) * 1024) as f64 / n as f64
    })
}

async fn consumer_loss(path: &Path, n: usize) -> f64 {
    let qmp = Client::connect(path).await.expect("connect");
    let mut events = qmp.listen_all();
    let consumer = tokio::spawn(async move {
        let (mut got, mut lost) = (0u64, 0u64);
        while got + lost < n as u64 {
            match events.recv().await {
                Ok(e) => {
                    assert_eq!(e.name(), "FLOOD");
                    got += 1
                }
                Err(qemu_qmp::RecvError::Lagged(k)) => lost += k,
                Err(e) => panic!("{e}"),
            }
        }
        lost
    });
    qmp.execute("x-flood", Some(json!({ "count": n })))
        .await
        .expect("flood");
    let lost = consumer.await.expect("consumer");
    qmp.disconnect().await.expect("disconnect");
    lost as f64 / n as f64
}

// --- listeners -----------------------------------------------------------------------

/// Median `stop` + `cont` round (both replies and both events seen by `watch`).
async fn stop_cont(qmp: &Client, rounds: usize) -> Duration {
    let mut watch = qmp.listen(["STOP", "RESUME"]);
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        qmp.execute("stop", None).await.expect("stop");
        qmp.execute("cont", None).await.expect("cont");
        watch.recv().await.expect("STOP");
        watch.recv().await.expect("RESUME");
        times.push(t.elapsed());
    }
    median(times)
}

struct ListenerRows {
    one_us: f64,
    all_us: f64,
    all_mib: f64,
    all_after_mib: f64,
    idle_us: f64,
    drop_1k_ms: f64,
    drop_n_ms: f64,
}

async fn listeners(path: &Path, n: usize, rounds: usize) -> ListenerRows {
    let qmp = Client::connect(path).await.expect("connect");
    let one = stop_cont(&qmp, rounds).await;
    let before = status_kib("VmRSS:");
    let all: Vec<_> = (0..n).map(|_| qmp.listen_all()).collect();
    let all_mib = status_kib("VmRSS:").saturating_sub(before) as f64 / 1024.0;
    let with_all = stop_cont(&qmp, rounds).await;
    // With the events of those rounds queued for every listener (none reads).
    let all_after_mib = status_kib("VmRSS:").saturating_sub(before) as f64 / 1024.0;
    drop(all);
    let idle: Vec<_> = (0..n).map(|_| qmp.listen(["BLOCK_JOB_READY"])).collect();
    let with_idle = stop_cont(&qmp, rounds).await;
    drop(idle);
    let timed_drop = |k: usize| {
        let ls: Vec<_> = (0..k).map(|_| qmp.listen_all()).collect();
        let t = Instant::now();
        drop(ls);
        t.elapsed().as_secs_f64() * 1e3
    };
    let drop_1k_ms = timed_drop(1_000.min(n));
    let drop_n_ms = timed_drop(n);
    qmp.disconnect().await.expect("disconnect");
    ListenerRows {
        one_us: one.as_secs_f64() * 1e6,
        all_us: with_all.as_secs_f64() * 1e6,
        all_mib,
        all_after_mib,
        idle_us: with_idle.as_secs_f64() * 1e6,
        drop_1k_ms,
        drop_n_ms,
    }
}

// --- statistics ----------------------------------------------------------------------

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    v[v.len() / 2]
}

/// Median and range of several rounds, as JSON.
fn stat(v: &[f64]) -> Value {
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    json!({"median": round(median(v.to_vec())), "min": round(lo), "max": round(hi)})
}

fn round(x: f64) -> f64 {
    if x.abs() >= 100.0 {
        x.round()
    } else {
        (x * 1000.0).round() / 1000.0
    }
}

fn ratio(ours: &[f64], limit: &[f64]) -> f64 {
    round(median(ours.to_vec()) / median(limit.to_vec()))
}

fn runtime(multi: bool) -> tokio::runtime::Runtime {
    let mut b = if multi {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all().build().expect("runtime")
}

fn main() {
    if let Some(path) = std::env::var_os(SERVER_ROLE) {
        serve(path.to_str().expect("UTF-8 path"));
        return;
    }
    let s = sizes();
    // `BENCH_ONLY=pipelined,memory,loss,backlog,listeners` runs only those rows.
    let only = std::env::var("BENCH_ONLY").ok();
    let run = |row: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|r| r == row))
    };
    let ct = runtime(false);
    let mt = runtime(true);
    let mut out = serde_json::Map::new();
    out.insert(
        "machine".into(),
        json!(format!(
            "{} cores",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        )),
    );

    // `BENCH_CLIENTS=ct` (or `raw`, `mt`, `blocking`, comma-separated) runs only
    // those clients in the pipelined and backlog rows, for profiling one of them.
    let clients = std::env::var("BENCH_CLIENTS").ok();
    let with = |c: &str| {
        clients
            .as_deref()
            .is_none_or(|o| o.split(',').any(|x| x == c))
    };

    let server = ServerProcess::start();
    if run("pipelined") {
        for depth in [8usize, 64] {
            let (mut raw, mut raw_window, mut ours_ct, mut ours_mt) =
                (vec![], vec![], vec![], vec![]);
            for _ in 0..s.rounds {
                if with("raw") {
                    raw.push(raw_pipelined(&server.path, s.pipelined, depth));
                    raw_window.push(raw_pipelined(
                        &server.path,
                        s.pipelined,
                        depth.min(INBAND_WINDOW),
                    ));
                }
                if with("ct") {
                    ours_ct.push(ct.block_on(ours_pipelined(&server.path, s.pipelined, depth)));
                }
                if with("mt") {
                    ours_mt.push(mt.block_on(ours_pipelined(&server.path, s.pipelined, depth)));
                }
            }
            for v in [&mut raw, &mut raw_window, &mut ours_ct, &mut ours_mt] {
                if v.is_empty() {
                    v.push(f64::NAN);
                }
            }
            out.insert(
                format!("pipelined_{depth}"),
                json!({
                    "raw_per_s": stat(&raw), "ct_per_s": stat(&ours_ct), "mt_per_s": stat(&ours_mt),
                    "ct_ratio": ratio(&ours_ct, &raw), "mt_ratio": ratio(&ours_mt, &raw),
                    "raw_window_per_s": stat(&raw_window),
                    "ct_window_ratio": ratio(&ours_ct, &raw_window),
                    "mt_window_ratio": ratio(&ours_mt, &raw_window),
                }),
            );
        }
    }
    if run("memory") {
        let (mut blocking_mib, mut async_mib) = (vec![], vec![]);
        for _ in 0..s.rounds.min(3) {
            blocking_mib.push(peak_added(|| blocking_flood(&server.path, s.flood)).0);
            async_mib.push(peak_added(|| async_flood(&ct, &server.path, s.flood)).0);
        }
        let per_event = queued_event_cost(&ct, &server.path, s.flood.min(16_384));
        out.insert(
            "blocking_memory".into(),
            json!({
                "events": s.flood,
                "blocking_peak_added_mib": stat(&blocking_mib),
                "async_peak_added_mib": stat(&async_mib),
                "queued_event_bytes": round(per_event),
                "flood_event_wire_bytes": 95,
            }),
        );
    }
    if run("loss") {
        let mut lost = vec![];
        for _ in 0..s.rounds.min(5) {
            lost.push(mt.block_on(consumer_loss(&server.path, s.flood)));
        }
        out.insert(
            "consumer_loss".into(),
            json!({"default_capacity": qemu_qmp::DEFAULT_EVENT_CAPACITY, "lost_fraction": stat(&lost)}),
        );
    }
    drop(server);

    if run("backlog") || run("listeners") {
        let qemu = QemuProcess::system_with_monitors(2, &[]);
        if run("backlog") {
            let (mut raw, mut ours_ct, mut ours_mt, mut ours_blocking) =
                (vec![], vec![], vec![], vec![]);
            for _ in 0..s.rounds {
                if with("raw") {
                    raw.push(raw_backlog(backlog(&qemu, s.backlog), s.backlog));
                }
                if with("ct") {
                    let sock = backlog(&qemu, s.backlog);
                    ours_ct.push(ct.block_on(ours_backlog(sock, s.backlog)));
                }
                if with("mt") {
                    let sock = backlog(&qemu, s.backlog);
                    ours_mt.push(mt.block_on(ours_backlog(sock, s.backlog)));
                }
                if with("blocking") {
                    ours_blocking.push(blocking_backlog(backlog(&qemu, s.backlog), s.backlog));
                }
            }
            for v in [&mut raw, &mut ours_ct, &mut ours_mt, &mut ours_blocking] {
                if v.is_empty() {
                    v.push(f64::NAN);
                }
            }
            out.insert(
                "backlog".into(),
                json!({
                    "events": s.backlog,
                    "raw_parse_per_s": stat(&raw), "ct_per_s": stat(&ours_ct),
                    "mt_per_s": stat(&ours_mt), "blocking_per_s": stat(&ours_blocking),
                    "ct_ratio": ratio(&ours_ct, &raw), "mt_ratio": ratio(&ours_mt, &raw),
                    "blocking_ratio": ratio(&ours_blocking, &raw),
                }),
            );
        }
        if run("listeners") {
            let l = ct.block_on(listeners(qemu.qmp_path(), s.listeners, s.stop_cont));
            out.insert(
                "listeners".into(),
                json!({
                    "count": s.listeners,
                    "stop_cont_us_one": round(l.one_us),
                    "stop_cont_us_all": round(l.all_us),
                    "all_added_mib": round(l.all_mib),
                    "all_after_rounds_mib": round(l.all_after_mib),
                    "stop_cont_us_idle": round(l.idle_us),
                    "drop_1000_ms": round(l.drop_1k_ms),
                    "drop_all_ms": round(l.drop_n_ms),
                }),
            );
        }
    }
    println!("{}", Value::Object(out));
}
