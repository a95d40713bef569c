//! What the machine layer costs when a real guest boots: launch until the test
//! guest's init script prints its ready marker on the serial console, with
//! `QemuMachine` (QMP over a socketpair, the console on a socket drained by a task,
//! `wait_for_console_pattern`) against the bare binary started with the same guest
//! arguments, `-serial stdio` and no monitor, its stdout read line by line. Medians
//! over alternating runs; each guest is killed once the marker is seen.
//!
//! ```text
//! cargo bench -p qemu-machine --bench guest_boot            # 5 runs each
//! RUNS=10 cargo bench -p qemu-machine --bench guest_boot
//! ```
//!
//! Prints one JSON line. Needs `qemu-system-x86_64` (or `$QEMU_SYSTEM_X86_64`),
//! `qemu-ga` and what qemu-testkit needs to build the guest image.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qemu_machine::QemuMachine;
use qemu_testkit::guest::{build_guest_image, guest_dir, kvm_usable, GuestImage, GUEST_READY};

/// A boot under TCG on a loaded machine takes 5 to 15 s.
const BOOT: Duration = Duration::from_secs(120);

fn locate(name: &str, env: &str) -> Option<PathBuf> {
    qemu_testkit::locate_binary(name, env).ok()
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

/// The bare binary: launch to the marker on its stdout.
fn bare(qemu: &Path, image: &GuestImage) -> Duration {
    let start = Instant::now();
    let mut child = Command::new(qemu)
        .args(["-display", "none", "-vga", "none", "-machine", "pc"])
        .args(["-serial", "stdio", "-monitor", "none"])
        .args(image.qemu_args(""))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn QEMU");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = out
            .read_until(b'\n', &mut line)
            .expect("read QEMU's stdout");
        assert!(n > 0, "QEMU exited before the marker");
        if String::from_utf8_lossy(&line).contains(GUEST_READY) {
            break;
        }
        assert!(start.elapsed() < BOOT, "no marker within {BOOT:?}");
    }
    let ready = start.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    ready
}

async fn machine(qemu: &Path, image: &GuestImage) -> Duration {
    let start = Instant::now();
    let vm = QemuMachine::builder(qemu)
        .machine_type("pc")
        .args(image.qemu_args(""))
        .console(true)
        .launch()
        .await
        .expect("launch");
    vm.wait_for_console_pattern(GUEST_READY, BOOT)
        .await
        .expect("the guest's marker");
    let ready = start.elapsed();
    vm.kill().await.expect("kill");
    ready
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let (Some(qemu), Some(ga)) = (
        locate("qemu-system-x86_64", qemu_testkit::QEMU_SYSTEM_ENV),
        locate("qemu-ga", qemu_testkit::QEMU_GA_ENV),
    ) else {
        println!("{{\"skipped\": \"qemu-system-x86_64 or qemu-ga not found\"}}");
        return;
    };
    let image = match build_guest_image(&ga, &guest_dir()) {
        Ok(report) => report.image,
        Err(e) => {
            println!("{{\"skipped\": {:?}}}", format!("no guest image: {e}"));
            return;
        }
    };
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let (mut m, mut b) = (vec![], vec![]);
    for i in 0..runs * 2 {
        if i % 2 == 0 {
            m.push(rt.block_on(machine(&qemu, &image)));
        } else {
            b.push(bare(&qemu, &image));
        }
    }
    let (m_min, b_min) = (*m.iter().min().unwrap(), *b.iter().min().unwrap());
    let (m, b) = (median(m), median(b));
    println!(
        "{{\"runs\": {runs}, \"accel\": \"{}\", \"machine_ready_ms\": {:.0}, \"bare_ready_ms\": {:.0}, \
         \"ready_ratio\": {:.3}, \"machine_min_ms\": {:.0}, \"bare_min_ms\": {:.0}}}",
        if kvm_usable() { "kvm" } else { "tcg" },
        ms(m),
        ms(b),
        ms(m) / ms(b),
        ms(m_min),
        ms(b_min),
    );
}
