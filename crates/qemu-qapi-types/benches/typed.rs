//! What the typed layer costs: [`TypedClient`] calls with the generated types against
//! [`Client::execute`] with hand-written JSON, in one run, against the same QEMU.
//!
//! ```text
//! cargo bench -p qemu-qapi-types --bench typed
//! ```
//!
//! Prints a table, then one JSON line:
//! - `seq_*`: sequential calls per second of `query-status` through
//!   `TypedClient::call` (encode, schema check, send, decode into the generated
//!   return type), `TypedClient::call_unchecked` (no schema check) and
//!   `Client::execute` (untyped), and the ratios to `execute` (the typed call's
//!   target: 0.98 or more). The same for a command with arguments, `qom-get`
//!   `/machine` `type`;
//! - `schema_*`: the `query-qmp-schema` round trip (~200 KB reply) and
//!   `Schema::from_introspection` on its return, separately; and `Schema::fetch`
//!   (`query-version`, `query-qmp-schema`, parse): what a `TypedClient` pays once
//!   per connection;
//! - `blockdev_add_*`: for a large `blockdev-add` (qcow2 over file, every option
//!   set that QEMU takes together), built with the generated types: `Schema::check`
//!   alone, serializing the typed value (`to_value`, as the typed call does, and
//!   `to_string`), `TypedClient::check` (both), per call in µs, against a
//!   `query-status` round trip; and, when `qemu-img` is there to make the image,
//!   the real `blockdev-add` round trip (`blockdev-del` after each, not timed),
//!   typed and untyped.
//!
//! The variants take turns in small batches within each round, in a rotating
//! order, so that drift in the machine's load hits them alike; each figure is the
//! median over the rounds, and each ratio the median of the per-round ratios.
//! `BENCH_QUICK=1` for a short run; `BENCH_VERBOSE=1` prints every round.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qemu_qapi::Schema;
use qemu_qapi_types::{
    BlockdevAdd, BlockdevAioOptions, BlockdevCacheOptions, BlockdevDetectZeroesOptions,
    BlockdevDiscardOptions, BlockdevOptions, BlockdevOptionsFile, BlockdevOptionsQcow2,
    BlockdevOptionsVariant, BlockdevRef, OnOffAuto, Qcow2OverlapCheckFlags, Qcow2OverlapCheckMode,
    Qcow2OverlapChecks, QomGet, QueryStatus, StatusInfo, TypedClient,
};
use qemu_qmp::{json, Client, Value};
use qemu_testkit::QemuProcess;
use serde::Deserialize;

struct Sizes {
    /// Rounds; every figure is a median over them.
    rounds: usize,
    /// Turns per round of each sequential variant ...
    turns: usize,
    /// ... of this many calls each.
    batch: usize,
    /// Schema checks (and serializations) per round, timed together.
    checks: usize,
    /// Real `blockdev-add` round trips per round and variant.
    adds: usize,
}

fn sizes() -> Sizes {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary
    // without it: then only a smoke run, to show the benchmark still works.
    if !std::env::args().any(|a| a == "--bench") {
        Sizes {
            rounds: 1,
            turns: 1,
            batch: 5,
            checks: 10,
            adds: 1,
        }
    } else if std::env::var_os("BENCH_QUICK").is_some() {
        Sizes {
            rounds: 5,
            turns: 4,
            batch: 25,
            checks: 500,
            adds: 3,
        }
    } else {
        Sizes {
            rounds: 15,
            turns: 10,
            batch: 40,
            checks: 2000,
            adds: 5,
        }
    }
}

/// The sequential variants, in the order of [`VARIANTS`].
#[derive(Clone, Copy)]
enum Variant {
    Execute,
    Typed,
    Unchecked,
    ExecuteArgs,
    TypedArgs,
}

const VARIANTS: [Variant; 5] = [
    Variant::Execute,
    Variant::Typed,
    Variant::Unchecked,
    Variant::ExecuteArgs,
    Variant::TypedArgs,
];

/// `n` calls of one variant; their time.
async fn batch(qmp: &TypedClient, v: Variant, n: usize) -> Duration {
    let client = qmp.client();
    let t = Instant::now();
    for _ in 0..n {
        match v {
            Variant::Execute => {
                let r = client.execute("query-status", None).await.unwrap();
                assert!(r.get("status").is_some());
            }
            Variant::Typed => {
                let r = qmp.call(QueryStatus::new()).await.unwrap();
                std::hint::black_box(r.running);
            }
            Variant::Unchecked => {
                let r = qmp.call_unchecked(QueryStatus::new()).await.unwrap();
                std::hint::black_box(r.running);
            }
            Variant::ExecuteArgs => {
                let args = json!({"path": "/machine", "property": "type"});
                let r = client.execute("qom-get", Some(args)).await.unwrap();
                assert!(r.is_string());
            }
            Variant::TypedArgs => {
                let r = qmp.call(QomGet::new("/machine", "type")).await.unwrap();
                assert!(r.is_string());
            }
        }
    }
    t.elapsed()
}

/// A large `blockdev-add`: qcow2 over file with the options QEMU 10.0 takes
/// together (not `cache-size` with both cache sizes, not `data-file`).
fn blockdev_add(image: &str) -> BlockdevAdd {
    let mut file = BlockdevOptionsFile::new(image);
    file.locking = Some(OnOffAuto::On);
    file.aio = Some(BlockdevAioOptions::Threads);
    file.aio_max_batch = Some(16);
    file.drop_cache = Some(true);
    let proto = BlockdevOptions::new(BlockdevOptionsVariant::File(file))
        .node_name("bench-file")
        .cache(BlockdevCacheOptions::new().direct(false).no_flush(false))
        .discard(BlockdevDiscardOptions::Unmap)
        .read_only(false)
        .auto_read_only(false)
        .force_share(false)
        .detect_zeroes(BlockdevDetectZeroesOptions::Off);

    let mut overlap = Qcow2OverlapCheckFlags::default();
    overlap.template = Some(Qcow2OverlapCheckMode::Cached);
    overlap.main_header = Some(true);
    overlap.active_l1 = Some(true);
    overlap.active_l2 = Some(true);
    overlap.refcount_table = Some(true);
    overlap.refcount_block = Some(true);
    overlap.snapshot_table = Some(true);
    overlap.inactive_l1 = Some(false);
    overlap.inactive_l2 = Some(false);
    overlap.bitmap_directory = Some(true);

    let mut qcow2 = BlockdevOptionsQcow2::new(BlockdevRef::Object(Box::new(proto)));
    qcow2.lazy_refcounts = Some(false);
    qcow2.pass_discard_request = Some(true);
    qcow2.pass_discard_snapshot = Some(true);
    qcow2.pass_discard_other = Some(false);
    qcow2.overlap_check = Some(Qcow2OverlapChecks::Object(overlap));
    qcow2.l2_cache_size = Some(1 << 20);
    qcow2.l2_cache_entry_size = Some(65536);
    qcow2.refcount_cache_size = Some(256 << 10);
    qcow2.cache_clean_interval = Some(600);

    BlockdevAdd::new(
        BlockdevOptions::new(BlockdevOptionsVariant::Qcow2(Box::new(qcow2)))
            .node_name("bench-qcow2")
            .cache(BlockdevCacheOptions::new().direct(false).no_flush(false))
            .discard(BlockdevDiscardOptions::Unmap)
            .read_only(false)
            .auto_read_only(false)
            .force_share(false)
            .detect_zeroes(BlockdevDetectZeroesOptions::Unmap),
    )
}

/// The same as hand-written JSON.
fn blockdev_add_json(image: &str) -> Value {
    json!({
        "driver": "qcow2",
        "node-name": "bench-qcow2",
        "cache": {"direct": false, "no-flush": false},
        "discard": "unmap",
        "read-only": false,
        "auto-read-only": false,
        "force-share": false,
        "detect-zeroes": "unmap",
        "lazy-refcounts": false,
        "pass-discard-request": true,
        "pass-discard-snapshot": true,
        "pass-discard-other": false,
        "overlap-check": {
            "template": "cached",
            "main-header": true,
            "active-l1": true,
            "active-l2": true,
            "refcount-table": true,
            "refcount-block": true,
            "snapshot-table": true,
            "inactive-l1": false,
            "inactive-l2": false,
            "bitmap-directory": true,
        },
        "l2-cache-size": 1 << 20,
        "l2-cache-entry-size": 65536,
        "refcount-cache-size": 256 << 10,
        "cache-clean-interval": 600,
        "file": {
            "driver": "file",
            "node-name": "bench-file",
            "filename": image,
            "cache": {"direct": false, "no-flush": false},
            "discard": "unmap",
            "read-only": false,
            "auto-read-only": false,
            "force-share": false,
            "detect-zeroes": "off",
            "locking": "on",
            "aio": "threads",
            "aio-max-batch": 16,
            "drop-cache": true,
        },
    })
}

/// Members in a JSON value, nested ones included.
fn count_members(v: &Value) -> usize {
    match v {
        Value::Object(m) => m.values().map(|x| 1 + count_members(x)).sum(),
        Value::Array(a) => a.iter().map(count_members).sum(),
        _ => 0,
    }
}

/// Microseconds per call of `f`, over `n` calls.
fn per_call_us(n: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// One round's figures, each a list the medians are taken of.
#[derive(Default)]
struct Figures {
    /// Calls per second, per variant of [`VARIANTS`].
    rate: [Vec<f64>; 5],
    /// Per-round ratio to the untyped call without (with) arguments.
    r_typed: Vec<f64>,
    r_unchecked: Vec<f64>,
    r_typed_args: Vec<f64>,
    schema_rtt_ms: Vec<f64>,
    schema_parse_ms: Vec<f64>,
    schema_fetch_ms: Vec<f64>,
    check_us: Vec<f64>,
    to_value_us: Vec<f64>,
    to_string_us: Vec<f64>,
    typed_check_us: Vec<f64>,
    /// What a typed `query-status` adds, without I/O: encode and check, decode.
    status_check_us: Vec<f64>,
    status_decode_us: Vec<f64>,
    add_execute_us: Vec<f64>,
    add_typed_us: Vec<f64>,
    r_add: Vec<f64>,
}

async fn round(
    qmp: &TypedClient,
    s: &Sizes,
    r: usize,
    add: &BlockdevAdd,
    add_json: &Value,
    real_adds: bool,
    f: &mut Figures,
) {
    let client = qmp.client();

    // 1. Sequential calls: the variants take turns, the order rotating.
    let mut total = [Duration::ZERO; 5];
    for turn in 0..s.turns {
        for k in 0..VARIANTS.len() {
            let i = (k + turn + r) % VARIANTS.len();
            total[i] += batch(qmp, VARIANTS[i], s.batch).await;
        }
    }
    let n = (s.turns * s.batch) as f64;
    let rate = total.map(|t| n / t.as_secs_f64());
    for (i, x) in rate.iter().enumerate() {
        f.rate[i].push(*x);
    }
    f.r_typed.push(rate[1] / rate[0]);
    f.r_unchecked.push(rate[2] / rate[0]);
    f.r_typed_args.push(rate[4] / rate[3]);

    // 2. The schema: the round trip, the parse, and both with `query-version`.
    let t = Instant::now();
    let v = client.execute("query-qmp-schema", None).await.unwrap();
    f.schema_rtt_ms.push(t.elapsed().as_secs_f64() * 1e3);
    let t = Instant::now();
    let schema = Schema::from_introspection(&v).unwrap();
    f.schema_parse_ms.push(t.elapsed().as_secs_f64() * 1e3);
    drop(std::hint::black_box(schema));
    drop(v);
    let t = Instant::now();
    let schema = Schema::fetch(client).await.unwrap();
    f.schema_fetch_ms.push(t.elapsed().as_secs_f64() * 1e3);
    drop(schema);

    // 3. Validation of a large blockdev-add, against the round trips.
    let schema = qmp.schema().await.unwrap();
    f.check_us.push(per_call_us(s.checks, || {
        schema
            .check("blockdev-add", std::hint::black_box(Some(add_json)))
            .unwrap();
    }));
    f.to_value_us.push(per_call_us(s.checks, || {
        std::hint::black_box(serde_json::to_value(std::hint::black_box(add)).unwrap());
    }));
    f.to_string_us.push(per_call_us(s.checks, || {
        std::hint::black_box(serde_json::to_string(std::hint::black_box(add)).unwrap());
    }));
    let t = Instant::now();
    for _ in 0..s.checks {
        qmp.check(std::hint::black_box(add)).await.unwrap();
    }
    f.typed_check_us
        .push(t.elapsed().as_secs_f64() * 1e6 / s.checks as f64);

    let t = Instant::now();
    for _ in 0..s.checks {
        qmp.check(std::hint::black_box(&QueryStatus::new()))
            .await
            .unwrap();
    }
    f.status_check_us
        .push(t.elapsed().as_secs_f64() * 1e6 / s.checks as f64);
    let reply = json!({"status": "prelaunch", "singlestep": false, "running": false});
    f.status_decode_us.push(per_call_us(s.checks, || {
        std::hint::black_box(StatusInfo::deserialize(std::hint::black_box(&reply)).unwrap());
    }));

    if real_adds {
        let del = json!({"node-name": "bench-qcow2"});
        let (mut e, mut ty) = (vec![], vec![]);
        for i in 0..s.adds * 2 {
            let t = Instant::now();
            if (i + r).is_multiple_of(2) {
                client
                    .execute("blockdev-add", Some(add_json.clone()))
                    .await
                    .unwrap();
                e.push(t.elapsed().as_secs_f64() * 1e6);
            } else {
                qmp.call(add.clone()).await.unwrap();
                ty.push(t.elapsed().as_secs_f64() * 1e6);
            }
            client
                .execute("blockdev-del", Some(del.clone()))
                .await
                .unwrap();
        }
        let (e, ty) = (fmedian(e), fmedian(ty));
        f.add_execute_us.push(e);
        f.add_typed_us.push(ty);
        f.r_add.push(e / ty);
    }

    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!(
            "round {r}: query-status execute {:.0}/s typed {:.0}/s ({:.3}) unchecked {:.0}/s; \
             qom-get execute {:.0}/s typed {:.0}/s ({:.3}); schema {:.2} ms parse {:.2} ms; \
             check {:.2} µs",
            rate[0],
            rate[1],
            rate[1] / rate[0],
            rate[2],
            rate[3],
            rate[4],
            rate[4] / rate[3],
            f.schema_rtt_ms.last().unwrap(),
            f.schema_parse_ms.last().unwrap(),
            f.check_us.last().unwrap(),
        );
    }
}

fn fmedian(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn med(v: &[f64]) -> f64 {
    fmedian(v.to_vec())
}

fn round_to(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// A qcow2 image to open, when `qemu-img` is there.
fn make_image(dir: &Path) -> Option<String> {
    let qemu_img = qemu_testkit::qemu_img()?;
    let path = dir.join("bench.qcow2");
    let ok = std::process::Command::new(qemu_img)
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg("64M")
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| path.to_str().unwrap().to_owned())
}

fn main() {
    let s = sizes();
    let (rounds, smoke) = (s.rounds, s.rounds == 1);
    if qemu_testkit::qemu_system().is_none() {
        println!("{{\"skipped\": \"qemu-system-x86_64 not found\"}}");
        return;
    }
    let started = Instant::now();
    let dir = qemu_testkit::tempdir("typed-bench");
    let image = make_image(dir.path());
    let real_adds = image.is_some();
    let image = image.unwrap_or_else(|| dir.path().join("absent.qcow2").display().to_string());
    let add = blockdev_add(&image);
    let add_json = blockdev_add_json(&image);
    assert_eq!(
        serde_json::to_value(&add).unwrap(),
        add_json,
        "the typed and the hand-written blockdev-add differ"
    );
    let members = count_members(&add_json);

    let qemu = QemuProcess::system_with_listener(&[]);
    let path = qemu.qmp_path().to_owned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // In a task on the multi-thread runtime, as in qemu-qmp's benchmark.
    let (f, version) = rt.block_on(async move {
        tokio::spawn(async move {
            let client = Client::connect(&path).await.unwrap();
            let qmp = TypedClient::new(client);
            // Fetch the schema (and warm up) before anything is timed.
            let schema = qmp.schema().await.unwrap().clone();
            let version = schema.version().map(ToString::to_string);
            schema
                .check("blockdev-add", Some(&add_json))
                .expect("the schema takes the blockdev-add");
            for v in VARIANTS {
                batch(&qmp, v, 20).await;
            }
            let mut f = Figures::default();
            for r in 0..s.rounds {
                round(&qmp, &s, r, &add, &add_json, real_adds, &mut f).await;
            }
            drop(Arc::clone(&schema));
            qmp.client().disconnect().await.unwrap();
            (f, version)
        })
        .await
        .unwrap()
    });
    drop(qemu);

    let rtt_us = 1e6 / med(&f.rate[0]);
    let version = version.unwrap_or_else(|| "?".into());
    println!(
        "typed calls against qemu-system-x86_64 {version} -machine none: {} rounds, medians{}",
        rounds,
        if smoke {
            " (smoke run, cargo test: not a measurement)"
        } else {
            ""
        }
    );
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "", "calls/s", "µs/call", "ratio"
    );
    let rows = [
        ("query-status  Client::execute", 0, None),
        ("query-status  TypedClient::call", 1, Some(&f.r_typed)),
        (
            "query-status  TypedClient::call_unchecked",
            2,
            Some(&f.r_unchecked),
        ),
        ("qom-get       Client::execute", 3, None),
        ("qom-get       TypedClient::call", 4, Some(&f.r_typed_args)),
    ];
    for (name, i, ratio) in rows {
        let rate = med(&f.rate[i]);
        println!(
            "{name:<44} {rate:>10.0} {:>10.2} {:>10}",
            1e6 / rate,
            ratio.map_or(String::new(), |r| format!("{:.3}", med(r)))
        );
    }
    println!(
        "{:<44} {:>10} {:>21}",
        "query-status, typed, without I/O", "µs/call", "÷ query-status RTT"
    );
    for (name, v) in [
        ("  TypedClient::check (encode + check)", &f.status_check_us),
        ("  decode into StatusInfo", &f.status_decode_us),
    ] {
        let us = med(v);
        println!("{name:<44} {us:>10.2} {:>21.4}", us / rtt_us);
    }
    println!("{:<44} {:>10}", "", "ms");
    println!(
        "{:<44} {:>10.2}",
        "query-qmp-schema round trip",
        med(&f.schema_rtt_ms)
    );
    println!(
        "{:<44} {:>10.2}",
        "Schema::from_introspection",
        med(&f.schema_parse_ms)
    );
    println!(
        "{:<44} {:>10.2}",
        "Schema::fetch (+query-version, parse)",
        med(&f.schema_fetch_ms)
    );
    println!(
        "{:<44} {:>10} {:>21}",
        format!("blockdev-add, qcow2 over file, {members} members"),
        "µs/call",
        "÷ query-status RTT"
    );
    let per = [
        ("  Schema::check", &f.check_us),
        ("  serde_json::to_value (typed value)", &f.to_value_us),
        ("  serde_json::to_string (typed value)", &f.to_string_us),
        ("  TypedClient::check (to_value + check)", &f.typed_check_us),
    ];
    for (name, v) in per {
        let us = med(v);
        println!("{name:<44} {us:>10.2} {:>21.3}", us / rtt_us);
    }
    if real_adds {
        println!(
            "{:<44} {:>10.1} {:>21.3}",
            "  Client::execute round trip",
            med(&f.add_execute_us),
            med(&f.add_execute_us) / rtt_us
        );
        println!(
            "{:<44} {:>10.1} {:>21.3}   ratio {:.3}",
            "  TypedClient::call round trip",
            med(&f.add_typed_us),
            med(&f.add_typed_us) / rtt_us,
            med(&f.r_add)
        );
    }
    println!("(took {:.1} s)", started.elapsed().as_secs_f64());

    let adds = if real_adds {
        json!({
            "blockdev_add_execute_us": round_to(med(&f.add_execute_us), 1),
            "blockdev_add_typed_us": round_to(med(&f.add_typed_us), 1),
            "blockdev_add_ratio": round_to(med(&f.r_add), 3),
        })
    } else {
        json!({"blockdev_add_round_trip": "not measured: qemu-img is missing"})
    };
    let mut out = json!({
        "qemu": format!("qemu-system-x86_64 {version} -machine none"),
        "rounds": rounds,
        "mode": if smoke { "smoke run (cargo test): not a measurement" } else { "benchmark" },
        "seq_execute_per_s": med(&f.rate[0]).round(),
        "seq_typed_per_s": med(&f.rate[1]).round(),
        "seq_unchecked_per_s": med(&f.rate[2]).round(),
        "seq_typed_ratio": round_to(med(&f.r_typed), 3),
        "seq_unchecked_ratio": round_to(med(&f.r_unchecked), 3),
        "seq_args_execute_per_s": med(&f.rate[3]).round(),
        "seq_args_typed_per_s": med(&f.rate[4]).round(),
        "seq_args_typed_ratio": round_to(med(&f.r_typed_args), 3),
        "schema_round_trip_ms": round_to(med(&f.schema_rtt_ms), 3),
        "schema_parse_ms": round_to(med(&f.schema_parse_ms), 3),
        "schema_fetch_ms": round_to(med(&f.schema_fetch_ms), 3),
        "blockdev_add_members": members,
        "blockdev_add_check_us": round_to(med(&f.check_us), 3),
        "blockdev_add_to_value_us": round_to(med(&f.to_value_us), 3),
        "blockdev_add_to_string_us": round_to(med(&f.to_string_us), 3),
        "blockdev_add_typed_check_us": round_to(med(&f.typed_check_us), 3),
        "query_status_round_trip_us": round_to(rtt_us, 2),
        "query_status_typed_check_us": round_to(med(&f.status_check_us), 3),
        "query_status_decode_us": round_to(med(&f.status_decode_us), 3),
    });
    if let (Value::Object(o), Value::Object(a)) = (&mut out, adds) {
        o.extend(a);
    }
    println!("{out}");
}
