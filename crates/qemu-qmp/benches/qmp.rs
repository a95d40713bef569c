//! The QMP client against the raw-socket limit, in one run, against the same QEMU.
//!
//! ```text
//! cargo bench -p qemu-qmp --bench qmp
//! ```
//!
//! Prints one JSON line:
//! - `seq_*`: sequential `execute("query-status")` rate of our client and of a minimal
//!   blocking raw-socket client (write, read to `\n`, parse), and their ratio;
//! - `schema_*`: median latency of `query-qmp-schema` (~200 KB reply), and the ratio;
//! - `pipelined_per_s`: commands per second with many in flight, against the in-process
//!   test server (no QEMU bottleneck);
//! - `events_per_s`: events per second decoded and dispatched to a listener;
//! - `decode_*_mb_per_s`: the JSON stream decoder alone, on QEMU's replies and events
//!   one a line (`lines`), pretty-printed over several lines (`pretty`, the scanner's
//!   path) and with no newline between them (`unterminated`); best of the rounds.
//!   `BENCH_DECODE_ONLY=1` prints only these;
//! - `python_qemu_qmp`: for scale, QEMU's Python `qemu.qmp` on the same QEMU, when
//!   `python3 -c "import qemu.qmp"` works (`pip install qemu.qmp`).
//!
//! The two clients take turns (several rounds, best round kept for each) so that
//! machine noise hits both alike. Set `BENCH_QUICK=1` for a short run.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use qemu_qmp::{json, Client, Value};
use qemu_testkit::QemuProcess;

struct Sizes {
    rounds: usize,
    seq: usize,
    schema: usize,
    pipelined: usize,
    events: usize,
}

fn sizes() -> Sizes {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary
    // without it: then only a smoke run, to show the benchmark still works.
    if !std::env::args().any(|a| a == "--bench") {
        Sizes {
            rounds: 1,
            seq: 20,
            schema: 1,
            pipelined: 2_000,
            events: 5_000,
        }
    } else if std::env::var_os("BENCH_QUICK").is_some() {
        Sizes {
            rounds: 6,
            seq: 200,
            schema: 3,
            pipelined: 20_000,
            events: 50_000,
        }
    } else {
        Sizes {
            rounds: 30,
            seq: 300,
            schema: 3,
            pipelined: 200_000,
            events: 500_000,
        }
    }
}

/// The limit: a blocking socket, one command at a time, each reply read up to its
/// newline and parsed into a JSON value (as any client must).
struct RawClient {
    sock: UnixStream,
    buf: Vec<u8>,
    start: usize,
    /// How far `buf` has been searched for a newline.
    scanned: usize,
    scratch: Box<[u8; 65536]>,
}

impl RawClient {
    fn connect(path: &Path) -> RawClient {
        let sock = UnixStream::connect(path).expect("raw connect");
        let mut c = RawClient {
            sock,
            buf: Vec::with_capacity(1 << 20),
            start: 0,
            scanned: 0,
            scratch: Box::new([0; 65536]),
        };
        c.read_msg(); // greeting

        // Negotiate as our client does: OOB on when offered (QEMU always offers it on
        // a socket monitor). `RAW_NO_OOB=1` to compare with OOB off.
        if std::env::var_os("RAW_NO_OOB").is_none() {
            c.sock
                .write_all(br#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#)
                .unwrap();
        } else {
            c.sock
                .write_all(br#"{"execute":"qmp_capabilities"}"#)
                .unwrap();
        }
        c.read_msg();
        c
    }

    fn read_msg(&mut self) -> Value {
        loop {
            let from = self.scanned.max(self.start);
            if let Some(p) = memchr::memchr(b'\n', &self.buf[from..]) {
                let end = from + p + 1;
                let v: Value = serde_json::from_slice(&self.buf[self.start..end]).unwrap();
                self.start = end;
                self.scanned = end;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                    self.scanned = 0;
                }
                return v;
            }
            self.scanned = self.buf.len();
            let n = self.sock.read(&mut self.scratch[..]).unwrap();
            assert!(n > 0, "QEMU hung up");
            self.buf.extend_from_slice(&self.scratch[..n]);
        }
    }

    fn execute(&mut self, cmd: &[u8]) -> Value {
        self.sock.write_all(cmd).unwrap();
        loop {
            let v = self.read_msg();
            if v.get("event").is_none() {
                return v;
            }
        }
    }
}

fn raw_seq(path: &Path, n: usize) -> f64 {
    let mut c = RawClient::connect(path);
    let cmd = br#"{"execute":"query-status"}"#;
    c.execute(cmd);
    let t = Instant::now();
    for _ in 0..n {
        let r = c.execute(cmd);
        assert!(r.get("return").is_some());
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn raw_schema(path: &Path, n: usize) -> Duration {
    let mut c = RawClient::connect(path);
    let cmd = br#"{"execute":"query-qmp-schema"}"#;
    c.execute(cmd);
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = c.execute(cmd);
        times.push(t.elapsed());
        assert!(r["return"].as_array().is_some_and(|a| a.len() > 100));
    }
    median(times)
}

async fn ours_seq(path: &Path, n: usize) -> f64 {
    let qmp = Client::builder()
        .enable_oob(std::env::var_os("OURS_NO_OOB").is_none())
        .connect(path)
        .await
        .unwrap();
    qmp.execute("query-status", None).await.unwrap();
    let t = Instant::now();
    for _ in 0..n {
        let r = qmp.execute("query-status", None).await.unwrap();
        assert!(r.get("status").is_some());
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    qmp.disconnect().await.unwrap();
    rate
}

async fn ours_schema(path: &Path, n: usize) -> Duration {
    let qmp = Client::connect(path).await.unwrap();
    qmp.execute("query-qmp-schema", None).await.unwrap();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = qmp.execute("query-qmp-schema", None).await.unwrap();
        times.push(t.elapsed());
        assert!(r.as_array().is_some_and(|a| a.len() > 100));
    }
    qmp.disconnect().await.unwrap();
    median(times)
}

/// The same measurements with QEMU's Python `qemu.qmp` (asyncio `QMPClient`).
const PYTHON_BENCH: &str = r#"
import asyncio, sys, time
from qemu.qmp import QMPClient
async def main(path, n, schema_n):
    qmp = QMPClient('bench')
    await qmp.connect(path)
    await qmp.execute('query-status')
    t = time.perf_counter()
    for _ in range(n):
        await qmp.execute('query-status')
    seq = n / (time.perf_counter() - t)
    times = []
    for _ in range(schema_n):
        t = time.perf_counter()
        await qmp.execute('query-qmp-schema')
        times.append(time.perf_counter() - t)
    times.sort()
    await qmp.disconnect()
    print(seq, times[len(times) // 2])
asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"#;

fn python_available() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import qemu.qmp"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One round of the Python client: (commands/s, median schema latency in seconds).
fn python_round(path: &Path, seq: usize, schema: usize) -> Option<(f64, f64)> {
    let out = std::process::Command::new("python3")
        .args(["-c", PYTHON_BENCH])
        .arg(path)
        .arg(seq.to_string())
        .arg(schema.to_string())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some((it.next()??, it.next()??))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn runtime(multi: bool) -> tokio::runtime::Runtime {
    if multi {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }
}

fn fmedian(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// A stream of QEMU-like messages: replies, events, a schema-sized reply, error
/// texts with apostrophes in double-quoted strings.
fn decode_corpus(style: &str) -> Vec<u8> {
    let mut msgs: Vec<Value> = Vec::new();
    for i in 0..2000 {
        msgs.push(json!({"return": {"status": "running", "running": true}, "id": i}));
        msgs.push(json!({"timestamp": {"seconds": 1_700_000_000u64 + i, "microseconds": 123_456}, "event": "BLOCK_JOB_COMPLETED", "data": {"device": format!("job{i}"), "len": 1u64 << 30, "offset": 1u64 << 30, "speed": 0, "type": "mirror"}}));
        msgs.push(json!({"error": {"class": "GenericError", "desc": format!("Parameter 'x{i}' is unexpected")}, "id": format!("cmd-{i}")}));
    }
    let schema: Vec<Value> = (0..2000)
        .map(|i| json!({"name": format!("type{i}"), "meta-type": "object", "members": [{"name": "a", "type": "int"}, {"name": "b", "type": "str", "default": null}]}))
        .collect();
    msgs.push(json!({"return": schema}));
    let mut out = Vec::new();
    for m in &msgs {
        match style {
            "pretty" => {
                out.extend_from_slice(serde_json::to_string_pretty(m).unwrap().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            "unterminated" => out.extend_from_slice(m.to_string().as_bytes()),
            _ => {
                out.extend_from_slice(m.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out
}

/// MB per second through the decoder, fed in 64 KiB reads as a socket would.
fn decode_rate(corpus: &[u8], rounds: usize) -> f64 {
    let expected = decode_corpus_len();
    let mut best = f64::MAX;
    for _ in 0..rounds.max(3) * 4 {
        let mut d = qemu_qmp::framing::Decoder::default();
        let mut n = 0;
        let t = Instant::now();
        for chunk in corpus.chunks(64 * 1024) {
            d.extend(chunk);
            while let Some(m) = d.decode(false).unwrap() {
                std::hint::black_box(&m);
                n += 1;
            }
            while let Some(m) = d.decode(true).unwrap() {
                std::hint::black_box(&m);
                n += 1;
            }
        }
        best = best.min(t.elapsed().as_secs_f64());
        assert_eq!(n, expected);
    }
    corpus.len() as f64 / best / 1e6
}

fn decode_corpus_len() -> usize {
    3 * 2000 + 1
}

fn decode_benches(rounds: usize) -> Value {
    let mut out = serde_json::Map::new();
    for style in ["lines", "pretty", "unterminated"] {
        let rate = decode_rate(&decode_corpus(style), rounds);
        out.insert(format!("decode_{style}_mb_per_s"), json!(round(rate, 1)));
    }
    Value::Object(out)
}

fn main() {
    let s = sizes();
    if std::env::var_os("BENCH_DECODE_ONLY").is_some() {
        println!("{}", decode_benches(s.rounds));
        return;
    }
    if qemu_testkit::qemu_system().is_none() {
        eprintln!("qemu-system-x86_64 is missing: nothing to measure");
        return;
    }
    if std::env::var_os("BENCH_SERVER_ONLY").is_some() {
        let (p, e) = runtime(true).block_on(server_benches(s.pipelined, s.events));
        println!(
            "{}",
            json!({"pipelined_per_s": p.round(), "events_per_s": e.round()})
        );
        return;
    }
    let qemu = QemuProcess::system_with_listener(&[]);
    let path = qemu.qmp_path().to_owned();
    let multi = runtime(true);
    let single = runtime(false);

    // Take turns in small batches and compare within each round, so that drift in
    // the machine's load hits both sides alike; report medians.
    let (mut raw, mut ours_mt, mut ours_ct) = (vec![], vec![], vec![]);
    let (mut raw_s, mut ours_s) = (vec![], vec![]);
    let (mut r_mt, mut r_ct, mut r_s) = (vec![], vec![], vec![]);
    let python = s.rounds > 1 && python_available();
    let (mut py, mut py_s, mut r_py, mut r_py_s) = (vec![], vec![], vec![], vec![]);
    for _ in 0..s.rounds {
        let a = raw_seq(&path, s.seq);
        // In a task on the multi-thread runtime (a block_on future runs on the
        // calling thread, so every reply would cross threads to reach it).
        let p2 = path.clone();
        let n = s.seq;
        let b = multi.block_on(async move {
            tokio::spawn(async move { ours_seq(&p2, n).await })
                .await
                .unwrap()
        });
        let c = single.block_on(ours_seq(&path, s.seq));
        let d = raw_schema(&path, s.schema);
        let e = multi.block_on(ours_schema(&path, s.schema));
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            eprintln!("round: raw {a:.0}/s ours(mt) {b:.0}/s ours(ct) {c:.0}/s schema raw {:.2} ms ours {:.2} ms", d.as_secs_f64() * 1e3, e.as_secs_f64() * 1e3);
        }
        r_mt.push(b / a);
        r_ct.push(c / a);
        r_s.push(e.as_secs_f64() / d.as_secs_f64());
        raw.push(a);
        ours_mt.push(b);
        ours_ct.push(c);
        raw_s.push(d.as_secs_f64());
        ours_s.push(e.as_secs_f64());
        // Python's qemu.qmp, for scale, in every fifth round (a process start each).
        if python && raw.len() % 5 == 1 {
            if let Some((seq, schema)) = python_round(&path, s.seq, s.schema) {
                let raw_now = raw_seq(&path, s.seq);
                let raw_schema_now = raw_schema(&path, s.schema);
                r_py.push(seq / raw_now);
                r_py_s.push(schema / raw_schema_now.as_secs_f64());
                py.push(seq);
                py_s.push(schema);
            }
        }
    }
    drop(qemu);

    let (pipelined, events) = multi.block_on(server_benches(s.pipelined, s.events));
    let decode = decode_benches(s.rounds);

    let python_figures = if !python {
        json!("not measured: a smoke run, or python3 with qemu.qmp is not installed (pip install qemu.qmp)")
    } else if py.is_empty() {
        json!("not measured: the Python client failed to run")
    } else {
        json!({
            "seq_per_s": fmedian(py).round(),
            "seq_ratio": round(fmedian(r_py), 3),
            "schema_ms": round(fmedian(py_s) * 1e3, 3),
            "schema_ratio": round(fmedian(r_py_s), 3),
        })
    };
    let out = json!({
        "qemu": "qemu-system-x86_64 -machine none",
        "rounds": s.rounds,
        "mode": if s.rounds > 1 { "benchmark" } else { "smoke run (cargo test): not a measurement" },
        "seq_raw_per_s": fmedian(raw).round(),
        "seq_ours_per_s": fmedian(ours_mt).round(),
        "seq_ratio": round(fmedian(r_mt), 3),
        "seq_ours_current_thread_per_s": fmedian(ours_ct).round(),
        "seq_ratio_current_thread": round(fmedian(r_ct), 3),
        "schema_raw_ms": round(fmedian(raw_s) * 1e3, 3),
        "schema_ours_ms": round(fmedian(ours_s) * 1e3, 3),
        "schema_ratio": round(fmedian(r_s), 3),
        "pipelined_per_s": pipelined.round(),
        "events_per_s": events.round(),
        "python_qemu_qmp": python_figures,
    });
    let mut out = out;
    if let (Value::Object(o), Value::Object(d)) = (&mut out, decode) {
        o.extend(d);
    }
    println!("{out}");
}

/// Commands per second with many in flight, and events per second decoded and handed
/// to a listener, against the in-process test server.
async fn server_benches(pipelined: usize, events: usize) -> (f64, f64) {
    use qemu_qmp::server::{Fault, TestServer};
    use qemu_qmp::ListenOptions;

    // The server runs on a thread and runtime of its own, as a peer process would, so
    // that it does not compete with the client for the client's worker threads.
    let (to_main, from_server) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_thread = std::thread::spawn(move || {
        let rt = runtime(false);
        rt.block_on(async move {
            let pair = TestServer::builder().record(false).socketpair();
            let _ = to_main.send(pair);
            let _ = stopped.await;
        });
    });
    let (server, sock) = from_server.recv().unwrap().unwrap();
    // No OOB: QEMU's in-band queue limit (and ours) only applies with OOB on.
    let qmp = Client::builder()
        .enable_oob(false)
        .connect(sock)
        .await
        .unwrap();

    const TASKS: usize = 64;
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let qmp = qmp.clone();
        set.spawn(async move {
            for _ in 0..pipelined / TASKS {
                qmp.execute("query-status", None).await.unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let pipelined_rate = (pipelined / TASKS * TASKS) as f64 / t.elapsed().as_secs_f64();

    // A bounded queue, as in real use: the consumer must keep up or lose events.
    // Three floods; the median rate is reported, and any loss is said.
    let mut rates = Vec::new();
    for _ in 0..3 {
        let mut listener = qmp.listen_with(ListenOptions::new().capacity(65536));
        server.inject(Fault::FloodEvents(events));
        let t = Instant::now();
        let counter = tokio::spawn(async move {
            let (mut received, mut lost) = (0usize, 0usize);
            let mut buf = Vec::with_capacity(4096);
            while received + lost < events {
                match listener.recv_many(&mut buf, 4096).await {
                    Ok(n) => received += n,
                    Err(qemu_qmp::RecvError::Lagged(n)) => lost += n as usize,
                    Err(e) => panic!("{e}"),
                }
                buf.clear();
            }
            lost
        });
        qmp.execute("query-status", None).await.unwrap();
        let lost = counter.await.unwrap();
        // Lost events were decoded and dispatched too, but say so.
        if lost > 0 {
            eprintln!("note: the benchmark's listener lost {lost} of {events} events");
        }
        rates.push(events as f64 / t.elapsed().as_secs_f64());
    }
    let events_rate = fmedian(rates);

    qmp.disconnect().await.unwrap();
    drop(server);
    let _ = stop.send(());
    server_thread.join().unwrap();
    (pipelined_rate, events_rate)
}
