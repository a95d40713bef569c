//! The shared [`EventQueue`] behind the blocking client's `pull_event`/`get_events`
//! (and `qemu_machine::QemuMachine`'s kept events), against the test server's event
//! floods: one default capacity, losses counted exactly, waits that pass over events.
//!
//! The test server sends a flood before the reply to the command it was injected
//! into, so once that command has returned, every event of the flood was received.

use std::time::Duration;

use qemu_qmp::blocking::{self, Wait};
use qemu_qmp::server::{Fault, TestServer, FLOOD_EVENT};
use qemu_qmp::{json, Client, EventQueue, ListenOptions, DEFAULT_EVENT_CAPACITY};

const T: Duration = Duration::from_secs(20);

/// A test server on a thread and runtime of its own (as a peer process would be),
/// and our end of its socketpair. The server stops when the returned guard drops.
struct ServerThread {
    server: Option<TestServer>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        drop(self.server.take());
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
    }
}

fn server_thread() -> (ServerThread, std::os::unix::net::UnixStream) {
    let (to_main, from_server) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let pair = TestServer::builder().record(false).socketpair();
            let _ = to_main.send(pair);
            let _ = stopped.await;
        });
    });
    let (server, sock) = from_server
        .recv_timeout(T)
        .expect("the server thread started")
        .expect("socketpair");
    (
        ServerThread {
            server: Some(server),
            stop: Some(stop),
            thread: Some(thread),
        },
        sock,
    )
}

fn seq(e: &qemu_qmp::Event) -> u64 {
    e.data()["seq"].as_u64().expect("seq")
}

#[test]
fn the_blocking_client_keeps_the_default_capacity_and_counts_the_rest() {
    const EXCESS: usize = 1000;
    let (server, sock) = server_thread();
    let mut qmp = blocking::Client::connect(sock).expect("connect");
    server
        .server
        .as_ref()
        .expect("server")
        .inject(Fault::FloodEvents(DEFAULT_EVENT_CAPACITY + EXCESS));
    assert_eq!(qmp.execute("echo", Some(json!({}))).unwrap(), json!({}));
    assert_eq!(qmp.events_lost(), EXCESS as u64);
    let events = qmp.get_events(Wait::No).unwrap();
    assert_eq!(events.len(), DEFAULT_EVENT_CAPACITY);
    // The newest were kept, in order.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.name(), FLOOD_EVENT);
        assert_eq!(seq(e), (EXCESS + i) as u64);
    }
    assert_eq!(qmp.pull_event(Wait::No).unwrap(), None);
    assert_eq!(qmp.events_lost(), EXCESS as u64);
    qmp.close().unwrap();
}

#[test]
fn a_small_blocking_queue_loses_exactly_the_excess() {
    let (server, sock) = server_thread();
    let mut qmp = blocking::Client::builder()
        .event_queue_capacity(10)
        .connect(sock)
        .expect("connect");
    server
        .server
        .as_ref()
        .expect("server")
        .inject(Fault::FloodEvents(25));
    qmp.execute("echo", Some(json!({}))).unwrap();
    assert_eq!(qmp.events_lost(), 15);
    let first = qmp.pull_event(Wait::Timeout(T)).unwrap().expect("an event");
    assert_eq!(seq(&first), 15);
    let rest = qmp.get_events(Wait::Timeout(T)).unwrap();
    assert_eq!(
        rest.iter().map(seq).collect::<Vec<_>>(),
        (16..25).collect::<Vec<_>>()
    );
    qmp.close().unwrap();
}

/// Events pulled one by one, the rest cleared, and events queued in between come out
/// of `pull_event`, `get_events` and `clear_events` in the order they arrived.
#[test]
fn events_taken_together_keep_their_order_with_later_ones() {
    let (server, sock) = server_thread();
    let mut qmp = blocking::Client::connect(sock).expect("connect");
    let server = server.server.as_ref().expect("server");
    server.inject(Fault::FloodEvents(5));
    qmp.execute("echo", Some(json!({}))).unwrap();
    assert_eq!(
        seq(&qmp.pull_event(Wait::No).unwrap().expect("an event")),
        0
    );
    server.inject(Fault::FloodEvents(3));
    qmp.execute("echo", Some(json!({}))).unwrap();
    assert_eq!(
        seq(&qmp.pull_event(Wait::Timeout(T)).unwrap().expect("an event")),
        1
    );
    let rest: Vec<_> = qmp.clear_events().iter().map(seq).collect();
    assert_eq!(rest, [2, 3, 4, 0, 1, 2]);
    assert_eq!(qmp.pull_event(Wait::No).unwrap(), None);
    assert!(qmp.get_events(Wait::No).unwrap().is_empty());
    qmp.close().unwrap();
}

/// An async `EventQueue` on a flood: a wait for one event in the middle passes over
/// the others, which stay queued in order, within the bound; a wait that started
/// before the flood sees every event of it.
#[test]
fn waits_pass_over_a_flood_within_the_bound() {
    let (server, sock) = server_thread();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let qmp = Client::connect(sock).await.expect("connect");
        let queue = std::sync::Arc::new(EventQueue::from(
            qmp.listen_with(ListenOptions::new().capacity(100)),
        ));
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        // Counts every event it is offered, never matches.
        let counter = tokio::spawn({
            let (queue, seen) = (queue.clone(), seen.clone());
            async move {
                queue
                    .wait_for(move |_| {
                        seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        false
                    })
                    .await
            }
        });
        let middle = tokio::spawn({
            let queue = queue.clone();
            async move { queue.wait_for(|e| e.data()["seq"] == 500).await }
        });
        let deadline = std::time::Instant::now() + T;
        while queue.waiting() < 2 {
            assert!(std::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        server
            .server
            .as_ref()
            .expect("server")
            .inject(Fault::FloodEvents(1000));
        qmp.execute("echo", Some(json!({}))).await.unwrap();
        let found = tokio::time::timeout(T, middle)
            .await
            .expect("bounded")
            .unwrap()
            .unwrap();
        assert_eq!(seq(&found), 500);
        assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 1000);
        assert_eq!(queue.pending(), 100);
        assert_eq!(queue.total_lost(), 899);
        let kept: Vec<u64> = queue.take_all().iter().map(seq).collect();
        assert_eq!(kept, (900..1000).collect::<Vec<_>>());
        counter.abort();
        assert!(counter.await.unwrap_err().is_cancelled());
        assert_eq!(queue.waiting(), 0);
        qmp.disconnect().await.unwrap();
        // The session ended: waits fail at once.
        assert!(queue.recv().await.is_err());
    });
    drop(server);
}
