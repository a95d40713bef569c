//! Event waits against a real `qemu-system-x86_64`: the bound on kept events (and
//! the exact count of losses), concurrent waits on a machine shared through an
//! `Arc`, and cancellation.
//!
//! Events come from `stop`/`cont` on a `-machine none` QEMU: each `stop` of a
//! running machine sends one `STOP`, each `cont` of a stopped one one `RESUME`, and
//! QEMU sends a command's events before its reply, so once a command has returned,
//! its events have been received. Nothing sleeps to synchronise; every wait is
//! bounded.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use qemu_machine::{MachineBuilder, QemuMachine};
use qemu_qmp::Event;
use qemu_testkit::init_tracing;

/// Generous bound for anything that should happen.
const T: Duration = Duration::from_secs(10);
/// A wait that must not end during the test.
const LONG: Duration = Duration::from_secs(600);

fn qemu() -> Option<PathBuf> {
    init_tracing();
    qemu_testkit::qemu_system()
}

fn none(qemu: &Path, base: &Path) -> MachineBuilder {
    QemuMachine::builder(qemu)
        .machine_type("none")
        .base_temp_dir(base)
}

fn tempdir() -> tempfile::TempDir {
    qemu_testkit::tempdir("qm-events-")
}

fn names(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.name()).collect()
}

/// `pairs` times `stop` then `cont`: exactly `2 * pairs` events, STOP and RESUME
/// alternating, all received when this returns.
async fn stop_cont(vm: &QemuMachine, pairs: usize) {
    for _ in 0..pairs {
        vm.command("stop", None).await.unwrap();
        vm.command("cont", None).await.unwrap();
    }
}

/// Wait (bounded, without sleeping) until `n` waits are waiting on the machine.
async fn until_waiting(vm: &QemuMachine, n: usize) {
    let deadline = Instant::now() + T;
    while vm.event_queue().waiting() < n {
        assert!(Instant::now() < deadline, "the waits never started");
        tokio::task::yield_now().await;
    }
}

/// Poll a future once.
fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    Pin::new(f).poll(&mut cx)
}

// ---- the bound --------------------------------------------------------------------

/// The acceptance scenario in small: a wait that matches nothing runs while QEMU
/// sends many events; the machine keeps `capacity` of them, the newest, and counts
/// the rest as lost, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_events_stay_at_the_bound_and_losses_are_counted_exactly() {
    let Some(qemu) = qemu() else { return };
    const CAPACITY: usize = 64;
    const PAIRS: usize = 150;
    let base = tempdir();
    let vm = Arc::new(
        none(&qemu, base.path())
            .event_capacity(CAPACITY)
            .launch()
            .await
            .unwrap(),
    );
    assert_eq!(vm.event_queue().capacity(), CAPACITY);
    vm.clear_events();
    assert_eq!(vm.events_lost(), 0);

    let never = tokio::spawn({
        let vm = vm.clone();
        async move { vm.event_wait("NEVER", LONG, None).await }
    });
    until_waiting(&vm, 1).await;
    stop_cont(&vm, PAIRS).await;

    assert_eq!(vm.event_queue().pending(), CAPACITY);
    assert_eq!(vm.events_lost(), (2 * PAIRS - CAPACITY) as u64);
    assert!(!never.is_finished());
    never.abort();
    assert!(never.await.unwrap_err().is_cancelled());

    // The newest are kept, in order: ..., STOP, RESUME.
    let kept = vm.get_qmp_events(false).await;
    assert_eq!(kept.len(), CAPACITY);
    for (i, e) in kept.iter().enumerate() {
        assert_eq!(e.name(), if i % 2 == 0 { "STOP" } else { "RESUME" });
    }
    assert!(kept
        .windows(2)
        .all(|w| w[0].timestamp() <= w[1].timestamp()));

    // Still bounded after it was emptied, and waits still work.
    let lost = vm.events_lost();
    stop_cont(&vm, CAPACITY).await;
    assert_eq!(vm.event_queue().pending(), CAPACITY);
    assert_eq!(vm.events_lost() - lost, CAPACITY as u64);
    vm.command("stop", None).await.unwrap();
    let stop = vm.event_wait("STOP", T, None).await.unwrap().expect("STOP");
    assert_eq!(stop.name(), "STOP");
    vm.shutdown().await.unwrap();
}

/// With the default capacity (16,384): a flood just beyond it keeps exactly that
/// many and counts the excess.
#[tokio::test]
async fn the_default_capacity_bounds_the_kept_events() {
    let Some(qemu) = qemu() else { return };
    const EXCESS: usize = 100;
    let capacity = qemu_qmp::DEFAULT_EVENT_CAPACITY;
    let base = tempdir();
    let vm = none(&qemu, base.path()).launch().await.unwrap();
    assert_eq!(vm.event_queue().capacity(), capacity);
    vm.clear_events();
    let started = Instant::now();
    stop_cont(&vm, (capacity + EXCESS) / 2).await;
    eprintln!("{} events in {:?}", capacity + EXCESS, started.elapsed());
    assert_eq!(vm.event_queue().pending(), capacity);
    assert_eq!(vm.events_lost(), EXCESS as u64);
    // Passed over by a wait, they stay as they are.
    assert!(vm
        .event_wait("NEVER", Duration::ZERO, None)
        .await
        .unwrap()
        .is_none());
    assert_eq!(vm.event_queue().pending(), capacity);
    assert_eq!(vm.get_qmp_events(false).await.len(), capacity);
    vm.shutdown().await.unwrap();
}

// ---- concurrent waits ---------------------------------------------------------------

/// One task waits for an event that never comes, another for STOP: the STOP waiter
/// returns as soon as the STOP arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_a_missing_event_does_not_hold_up_another() {
    let Some(qemu) = qemu() else { return };
    let base = tempdir();
    let vm = Arc::new(none(&qemu, base.path()).launch().await.unwrap());

    let never = tokio::spawn({
        let vm = vm.clone();
        async move { vm.event_wait("NEVER", LONG, None).await }
    });
    until_waiting(&vm, 1).await;
    let stop = tokio::spawn({
        let vm = vm.clone();
        async move { vm.event_wait("STOP", T, None).await }
    });
    until_waiting(&vm, 2).await;

    let sent = Instant::now();
    vm.command("stop", None).await.unwrap();
    let got = tokio::time::timeout(T, stop)
        .await
        .expect("the STOP wait is bounded")
        .unwrap()
        .unwrap()
        .expect("the STOP arrived, so the wait must return it");
    assert_eq!(got.name(), "STOP");
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "{:?}",
        sent.elapsed()
    );

    // The other wait saw the STOP too, passed over it, and still waits; the STOP
    // was consumed by the wait that returned it.
    assert!(!never.is_finished());
    assert_eq!(vm.event_queue().waiting(), 1);
    assert!(vm.get_qmp_events(false).await.is_empty());

    // An event nobody waits for is kept for get_qmp_events, in order, while the
    // other wait goes on.
    vm.command("cont", None).await.unwrap();
    vm.command("stop", None).await.unwrap();
    assert_eq!(names(&vm.get_qmp_events(false).await), ["RESUME", "STOP"]);
    assert!(!never.is_finished());

    // The session's end ends the remaining wait at once, with an error.
    vm.command("quit", None).await.unwrap();
    let r = tokio::time::timeout(T, never).await.unwrap().unwrap();
    assert!(
        matches!(r, Err(qemu_machine::MachineError::EventStreamEnded { .. })),
        "{r:?}"
    );
    vm.shutdown().await.unwrap();
}

/// Two waits for the same event, both waiting when it arrives: both get it (the
/// same event), and it is not kept. A wait that starts later does not: the event was
/// consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_waits_for_the_same_event_both_get_it() {
    let Some(qemu) = qemu() else { return };
    let base = tempdir();
    let vm = Arc::new(none(&qemu, base.path()).launch().await.unwrap());
    let wait = |vm: &Arc<QemuMachine>| {
        let vm = vm.clone();
        tokio::spawn(async move { vm.event_wait("STOP", T, None).await })
    };
    let a = wait(&vm);
    let b = wait(&vm);
    until_waiting(&vm, 2).await;
    vm.command("stop", None).await.unwrap();
    let a = a.await.unwrap().unwrap().expect("STOP for the first wait");
    let b = b.await.unwrap().unwrap().expect("STOP for the second wait");
    assert_eq!(a, b);
    assert_eq!(a.name(), "STOP");
    assert!(vm.get_qmp_events(false).await.is_empty());
    assert!(vm
        .event_wait("STOP", Duration::from_millis(50), None)
        .await
        .unwrap()
        .is_none());

    // A kept event goes to one wait only: the first to look.
    vm.command("cont", None).await.unwrap();
    let first = vm.event_wait("RESUME", T, None).await.unwrap();
    assert!(first.is_some());
    assert!(vm
        .event_wait("RESUME", Duration::ZERO, None)
        .await
        .unwrap()
        .is_none());
    vm.shutdown().await.unwrap();
}

/// A wait looks at the kept events first: an event kept before it started (passed
/// over by another wait) is found at once, the others stay in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_wait_finds_events_kept_while_another_waits() {
    let Some(qemu) = qemu() else { return };
    let base = tempdir();
    let vm = Arc::new(none(&qemu, base.path()).launch().await.unwrap());
    let never = tokio::spawn({
        let vm = vm.clone();
        async move { vm.event_wait("NEVER", LONG, None).await }
    });
    until_waiting(&vm, 1).await;
    stop_cont(&vm, 2).await; // STOP RESUME STOP RESUME, all passed over
    let resume = vm
        .event_wait("RESUME", Duration::ZERO, None)
        .await
        .unwrap()
        .expect("a kept RESUME");
    assert_eq!(resume.name(), "RESUME");
    assert_eq!(
        names(&vm.get_qmp_events(false).await),
        ["STOP", "STOP", "RESUME"]
    );
    never.abort();
    assert!(never.await.unwrap_err().is_cancelled());
    assert_eq!(vm.event_queue().waiting(), 0);
    vm.shutdown().await.unwrap();
}

// ---- cancellation -------------------------------------------------------------------

/// A wait dropped after its event arrived, but before it returned it, gives the
/// event back: it is kept, at its place.
#[tokio::test]
async fn a_cancelled_wait_loses_no_event() {
    let Some(qemu) = qemu() else { return };
    let base = tempdir();
    let vm = none(&qemu, base.path()).launch().await.unwrap();

    // Dropped while its STOP was handed to it.
    let mut wait = Box::pin(vm.event_wait("STOP", T, None));
    assert!(poll_once(&mut wait).is_pending());
    vm.command("stop", None).await.unwrap(); // the STOP goes to the wait
    vm.command("cont", None).await.unwrap(); // the RESUME is kept
    assert_eq!(vm.event_queue().pending(), 1);
    drop(wait);
    assert_eq!(vm.event_queue().waiting(), 0);
    assert_eq!(names(&vm.get_qmp_events(false).await), ["STOP", "RESUME"]);

    // Dropped by its timeout: whatever arrives later is kept.
    assert!(vm
        .event_wait("STOP", Duration::from_millis(20), None)
        .await
        .unwrap()
        .is_none());
    vm.command("stop", None).await.unwrap();
    assert_eq!(names(&vm.get_qmp_events(false).await), ["STOP"]);

    // Two waits were handed the same RESUME; one is dropped, the other returns
    // it: it is not kept (it was consumed), nor returned twice.
    let mut a = Box::pin(vm.event_wait("RESUME", T, None));
    let mut b = Box::pin(vm.event_wait("RESUME", T, None));
    assert!(poll_once(&mut a).is_pending());
    assert!(poll_once(&mut b).is_pending());
    vm.command("cont", None).await.unwrap();
    drop(a);
    let got = tokio::time::timeout(T, b).await.unwrap().unwrap();
    assert_eq!(got.expect("RESUME").name(), "RESUME");
    assert!(vm.get_qmp_events(false).await.is_empty());

    // A task aborted while it waits leaves no waiter behind, and the event it
    // waited for is kept.
    let vm = Arc::new(vm);
    let a = tokio::spawn({
        let vm = vm.clone();
        async move { vm.event_wait("STOP", LONG, None).await }
    });
    until_waiting(&vm, 1).await;
    a.abort();
    assert!(a.await.unwrap_err().is_cancelled());
    assert_eq!(vm.event_queue().waiting(), 0);
    vm.command("stop", None).await.unwrap();
    assert_eq!(names(&vm.get_qmp_events(false).await), ["STOP"]);
    vm.command("cont", None).await.unwrap();
    assert_eq!(names(&vm.get_qmp_events(false).await), ["RESUME"]);

    // get_qmp_event(s) with a wait, cancelled, lose nothing either.
    let mut pull = Box::pin(vm.get_qmp_events(T));
    assert!(poll_once(&mut pull).is_pending());
    vm.command("stop", None).await.unwrap();
    drop(pull);
    assert_eq!(names(&vm.get_qmp_events(false).await), ["STOP"]);
    vm.shutdown().await.unwrap();
}

// ---- measurement ----------------------------------------------------------------------

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Measurement, not a check: the peak memory of this process while QEMU sends
/// `FLOOD_EVENTS` (default 400,000) events that a running wait does not match.
///
/// ```text
/// FLOOD_EVENTS=400000 cargo test -p qemu-machine --test events -- --ignored --nocapture flood_memory
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn flood_memory() {
    let Some(qemu) = qemu() else { return };
    let n: usize = std::env::var("FLOOD_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400_000);
    let base = tempdir();
    let vm = Arc::new(none(&qemu, base.path()).launch().await.unwrap());
    let before = vm_hwm_kib();
    let waiter = tokio::spawn({
        let vm = vm.clone();
        async move { vm.event_wait("NEVER", LONG, None).await }
    });
    until_waiting(&vm, 1).await;
    let t = Instant::now();
    stop_cont(&vm, n / 2).await;
    let flood = t.elapsed();
    waiter.abort();
    let _ = waiter.await;
    let after = vm_hwm_kib();
    let kept = vm.get_qmp_events(false).await.len();
    println!(
        "{{\"events\": {n}, \"flood_s\": {:.1}, \"vmhwm_before_kib\": {before}, \"vmhwm_after_kib\": {after}, \"delta_mib\": {:.1}, \"kept\": {kept}, \"lost\": {}}}",
        flood.as_secs_f64(),
        (after - before) as f64 / 1024.0,
        vm.events_lost()
    );
    vm.shutdown().await.unwrap();
}
