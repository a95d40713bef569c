//! What the machine layer costs: `QemuMachine::launch()` until QMP is ready, and until
//! a full graceful shutdown, against the bare binary started with the same arguments
//! and a socketpair, its greeting read and capabilities negotiated over a raw blocking
//! socket, then `quit` and `waitpid`. Medians over alternating runs. Then the wall
//! time to launch 50 machines at once (and to shut them all down).
//!
//! ```text
//! cargo bench -p qemu-machine --bench launch            # 20 runs each
//! RUNS=50 cargo bench -p qemu-machine --bench launch
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
    // Without SOCK_CLOEXEC, so that QEMU inherits its end with no pre_exec hook.
    // (Fine here: nothing else spawns concurrently.)
    let (ours, theirs): (OwnedFd, OwnedFd) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::empty(),
        None,
    )
    .expect("socketpair");
    let ours = UnixStream::from(ours);
    let mut child = Command::new(qemu)
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
    let mut reader = BufReader::new(ours.try_clone().expect("dup"));
    let mut writer = ours;
    let greeting = read_reply(&mut reader);
    assert!(greeting.contains("\"QMP\""), "{greeting}");
    writer
        .write_all(b"{\"execute\": \"qmp_capabilities\"}\n")
        .expect("write");
    let reply = read_reply(&mut reader);
    assert!(reply.contains("\"return\""), "{reply}");
    let ready = start.elapsed();
    writer
        .write_all(b"{\"execute\": \"quit\"}\n")
        .expect("write");
    let mut rest = String::new();
    while reader.read_line(&mut rest).map(|n| n > 0).unwrap_or(false) {}
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
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
    for i in 0..runs * 2 {
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
    println!(
        "{{\"runs\": {runs}, \"machine_ready_ms\": {:.2}, \"bare_ready_ms\": {:.2}, \"ready_ratio\": {:.3}, \
         \"machine_total_ms\": {:.2}, \"bare_total_ms\": {:.2}, \"total_ratio\": {:.3}, \
         \"launch50_ms\": {:.1}, \"launch50_and_shutdown_ms\": {:.1}}}",
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
