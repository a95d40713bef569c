//! The async client against `qemu_qmp::server::TestServer`, one test per injected
//! fault, plus the server's own QEMU-like behaviour (greeting, negotiation, errors,
//! built-in commands, descriptor passing).
//!
//! Every wait is bounded by a timeout, and nothing sleeps to synchronise: ordering
//! comes from the server's counters (`wait_for_requests`, ...) and from the protocol
//! itself. Every test runs inside [`run`], which serialises the tests of this binary
//! (they count the process's descriptors) and checks that once the test has dropped
//! its client and server, no task is alive and no descriptor is left open.

use std::future::Future;
use std::os::fd::AsFd;
use std::pin::pin;
use std::time::{Duration, Instant};

use qemu_qmp::server::{Fault, Reply, TestServer, TestServerBuilder, FLOOD_EVENT};
use qemu_qmp::{
    json, Client, Error, Event, JsonObject, ListenOptions, ProtocolError, RecvError, TryRecvError,
    Value,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::timeout;

/// Generous bound for anything that should happen, for slow CI machines.
const T: Duration = Duration::from_secs(20);

/// The tests count the descriptors of the whole process, so they take turns; each
/// takes the lock before making its runtime (whose descriptors would count too).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn open_fds() -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok())
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            format!("{} -> {target}", e.file_name().to_string_lossy())
        })
        .collect();
    fds.sort();
    fds
}

/// Run a test on a current-thread runtime, then check that nothing is left behind:
/// every task of the runtime has ended and the process has as many open descriptors
/// as before.
fn run(test: impl Future<Output = ()>) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(clean(test));
}

/// [`run`] on a multi-threaded runtime.
fn run_multi_thread(test: impl Future<Output = ()>) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(clean(test));
}

async fn clean(test: impl Future<Output = ()>) {
    let before = open_fds();
    test.await;
    let handle = tokio::runtime::Handle::current();
    let deadline = Instant::now() + T;
    loop {
        let tasks = handle.metrics().num_alive_tasks();
        let fds = open_fds();
        if tasks == 0 && fds.len() == before.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {tasks} tasks alive, {} descriptors open, before:\n{}\nafter:\n{}",
            fds.len(),
            before.join("\n"),
            fds.join("\n")
        );
        // Let aborted tasks be dropped.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        let _ = timeout(Duration::from_millis(2), std::future::pending::<()>()).await;
    }
}

fn obj(v: Value) -> JsonObject {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// A server on a Unix socket in a fresh directory. The directory goes after the server.
async fn unix_server(builder: TestServerBuilder) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = builder
        .bind_unix(dir.path().join("qmp.sock"))
        .expect("bind");
    (server, dir)
}

async fn connect(server: &TestServer) -> Client {
    Client::builder()
        .name("test")
        .connect_timeout(T)
        .connect(server.address())
        .await
        .expect("connect")
}

/// Await with the test bound.
async fn bounded<F: Future>(f: F) -> F::Output {
    timeout(T, f).await.expect("timed out")
}

/// The error that ended the session, from a command that was interrupted by it.
fn interrupted_cause(e: Error) -> Error {
    match e.disconnect_cause() {
        Some(cause) => cause.clone(),
        None => panic!("expected Disconnected with a cause, got {e:?}"),
    }
}

// ---- faults ---------------------------------------------------------------------

#[test]
fn delay_lets_later_commands_overtake() {
    run(async {
        let (server, _dir) = unix_server(TestServer::builder()).await;
        let qmp = connect(&server).await;
        let base = server.requests();
        server.inject(Fault::Delay(Duration::from_millis(500)));
        let mut slow = pin!(qmp.execute("echo", Some(json!({"n": "slow"}))));
        // Send the delayed command first, and know the server has it.
        tokio::select! {
            biased;
            r = &mut slow => panic!("the delayed reply came at once: {r:?}"),
            r = server.wait_for_requests(base + 1, T) => r.unwrap(),
        }
        let fast = tokio::select! {
            biased;
            r = &mut slow => panic!("the delayed reply overtook the fast one: {r:?}"),
            r = qmp.execute("echo", Some(json!({"n": "fast"}))) => r.unwrap(),
        };
        assert_eq!(fast, json!({"n": "fast"}));
        assert_eq!(bounded(slow).await.unwrap(), json!({"n": "slow"}));
        let order: Vec<Value> = server.received()[base..]
            .iter()
            .map(|r| r["arguments"]["n"].clone())
            .collect();
        assert_eq!(order, [json!("slow"), json!("fast")]);
        qmp.disconnect().await.unwrap();
    });
}

#[test]
fn delay_beyond_the_request_timeout_then_the_late_reply_is_dropped() {
    run(async {
        let (server, _dir) = unix_server(TestServer::builder()).await;
        let qmp = connect(&server).await;
        server.inject(Fault::Delay(Duration::from_millis(400)));
        let err = qmp
            .request("echo")
            .arg("n", 1)
            .timeout(Duration::from_millis(50))
            .send()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        // The abandoned command still waits for its reply.
        assert_eq!(qmp.pending_commands(), 1);
        // Delay this one further: its reply leaves after the late one, so by the time
        // it arrives, the late reply has been received and dropped.
        server.inject(Fault::Delay(Duration::from_millis(600)));
        let v = bounded(qmp.execute("echo", Some(json!({"n": 2}))))
            .await
            .unwrap();
        assert_eq!(v, json!({"n": 2}));
        assert_eq!(qmp.pending_commands(), 0);
        let status = qmp.execute("query-status", None).await.unwrap();
        assert_eq!(status["status"], "running");
        qmp.disconnect().await.unwrap();
    });
}

#[test]
fn close_mid_message() {
    run(async {
        let (server, _dir) = unix_server(TestServer::builder()).await;
        let qmp = connect(&server).await;
        server.inject(Fault::CloseMidMessage);
        let err = bounded(qmp.execute("echo", Some(json!({"pad": "x".repeat(100)}))))
            .await
            .unwrap_err();
        assert!(
            matches!(
                interrupted_cause(err),
                Error::ConnectionClosed { mid_message: true }
            ),
            "wrong cause"
        );
        let end = qmp.disconnect().await;
        assert!(
            matches!(end, Err(Error::ConnectionClosed { mid_message: true })),
            "{end:?}"
        );
        server.wait_for_disconnections(1, T).await.unwrap();
    });
}

#[test]
fn garbage_ends_the_session_with_a_frame_error() {
    run(async {
        let (server, _dir) = unix_server(TestServer::builder()).await;
        let qmp = connect(&server).await;
        let mut events = qmp.listen_all();
        server.inject(Fault::Garbage(b"this is not json\r\n".to_vec()));
        let err = bounded(qmp.execute("echo", None)).await.unwrap_err();
        let cause = interrupted_cause(err);
        assert!(
            matches!(cause, Error::Protocol(ProtocolError::Frame(_))),
            "{cause:?}"
        );
        match bounded(events.recv()).await {
            Err(RecvError::Closed(Some(c))) => {
                assert!(matches!(*c, Error::Protocol(ProtocolError::Frame(_))))
            }
            other => panic!("{other:?}"),
        }
        let end = qmp.disconnect().await;
        assert!(
            matches!(end, Err(Error::Protocol(ProtocolError::Frame(_)))),
            "{end:?}"
        );
    });
}

#[test]
fn oversized_reply_within_and_beyond_the_limit() {
    run(async {
        let (server, _dir) = unix_server(TestServer::builder()).await;

        // Within the (default, 10 MiB) limit: a valid reply of the requested size.
        let qmp = connect(&server).await;
        server.inject(Fault::Oversized(200_000));
        let v = bounded(qmp.execute("echo", None)).await.unwrap();
        let data = v["data"].as_str().unwrap();
        assert!((199_000..200_000).contains(&data.len()), "{}", data.len());
        qmp.disconnect().await.unwrap();

        // Beyond the client's limit: the session ends with TooLarge.
        let qmp = Client::builder()
            .max_message_size(64 * 1024)
            .connect_timeout(T)
            .connect(server.address())
            .await
            .unwrap();
        server.inject(Fault::Oversized(1024 * 1024));
        let err = bounded(qmp.execute("echo", None)).await.unwrap_err();
        match interrupted_cause(err) {
            Error::Protocol(ProtocolError::TooLarge { size, limit }) => {
                assert_eq!(limit, 64 * 1024);
                assert!(size > limit, "{size}");
            }
            other => panic!("{other:?}"),
        }
        let end = qmp.disconnect().await;
        assert!(
            matches!(end, Err(Error::Protocol(ProtocolError::TooLarge { .. }))),
            "{end:?}"
        );
        // The server copes with a client that stopped reading, and serves the next.
        server.wait_for_disconnections(2, T).await.unwrap();
        let qmp = connect(&server).await;
        qmp.execute("echo", None).await.unwrap();
        assert_eq!(server.connections(), 3);
    });
}

#[test]
fn unknown_id_is_dropped_and_the_command_times_out() {
    run(async {
        let (server, _dir) = unix_server(TestServer::builder()).await;
        let qmp = connect(&server).await;
        server.inject(Fault::UnknownId);
        let err = qmp
            .request("echo")
            .timeout(Duration::from_millis(300))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        // Its reply never comes, so it stays pending; nothing else is disturbed.
        assert_eq!(qmp.pending_commands(), 1);
        let v = bounded(qmp.execute("echo", Some(json!({"after": 1}))))
            .await
            .unwrap();
        assert_eq!(v, json!({"after": 1}));
        assert!(qmp.disconnect_cause().is_none());
        qmp.disconnect().await.unwrap();
    });
}

#[test]
fn no_id_with_one_command_in_flight_still_reaches_it() {
    run(async {
        let (server, _dir) = unix_server(TestServer::builder()).await;
        let qmp = connect(&server).await;
        server.inject(Fault::NoId);
        let v = bounded(qmp.execute("echo", Some(json!({"k": "v"}))))
            .await
            .unwrap();
        assert_eq!(v, json!({"k": "v"}));
        // An id-less error reply reaches it too.
        server.inject(Fault::NoId);
        let err = bounded(qmp.execute("no-such-command", None))
            .await
            .unwrap_err();
        assert_eq!(err.error_class(), Some("CommandNotFound"));
        qmp.disconnect().await.unwrap();
    });
}

#[test]
fn no_id_error_with_two_commands_in_flight_is_a_server_parse_error() {
    run(async {
        let (server, _dir) = unix_server(TestServer::builder()).await;
        let qmp = connect(&server).await;
        let base = server.requests();
        server.inject(Fault::Hang);
        server.inject(Fault::NoId);
        // Both with ids: an id-less reply can then belong to neither.
        let with_id = |cmd: &str, id: &str| {
            let Value::Object(m) = json!({"execute": cmd, "id": id}) else {
                unreachable!()
            };
            m
        };
        let mut first = pin!(qmp.execute_raw(with_id("echo", "a")));
        tokio::select! {
            biased;
            r = &mut first => panic!("a hung command completed: {r:?}"),
            r = server.wait_for_requests(base + 1, T) => r.unwrap(),
        }
        let err = bounded(qmp.execute_raw(with_id("no-such-command", "b")))
            .await
            .unwrap_err();
        match interrupted_cause(err) {
            Error::Protocol(ProtocolError::ServerParse { class, desc }) => {
                assert_eq!(class, "CommandNotFound");
                assert_eq!(desc, "The command no-such-command has not been found");
            }
            other => panic!("{other:?}"),
        }
        let err = bounded(first).await.unwrap_err();
        assert!(matches!(
            interrupted_cause(err),
            Error::Protocol(ProtocolError::ServerParse { .. })
        ));
        let end = qmp.disconnect().await;
        assert!(
            matches!(end, Err(Error::Protocol(ProtocolError::ServerParse { .. }))),
            "{end:?}"
        );
    });
}

#[test]
fn event_flood_does_not_hold_up_the_reply_and_a_slow_listener_lags() {
    run(async {
        const N: usize = 100_000;
        const CAPACITY: usize = 100;
        let (server, _dir) = unix_server(TestServer::builder().record(false)).await;
        let qmp = connect(&server).await;
        let mut slow =
            qmp.listen_with(ListenOptions::new().names([FLOOD_EVENT]).capacity(CAPACITY));
        server.inject(Fault::FloodEvents(N));
        let started = Instant::now();
        let v = bounded(qmp.execute("echo", Some(json!({"after": "flood"}))))
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(v, json!({"after": "flood"}));
        eprintln!("{N} events and the reply in {took:?}");
        // The reply came after every event: the listener has lost all but the last 100.
        match slow.try_recv() {
            Err(TryRecvError::Lagged(n)) => assert_eq!(n, (N - CAPACITY) as u64),
            other => panic!("{other:?}"),
        }
        for seq in N - CAPACITY..N {
            let e = slow.try_recv().unwrap();
            assert_eq!(e.name(), FLOOD_EVENT);
            assert_eq!(e.data()["seq"], seq);
        }
        assert!(matches!(slow.try_recv(), Err(TryRecvError::Empty)));
        assert_eq!(slow.total_lost(), (N - CAPACITY) as u64);
        assert!(server.received().is_empty(), "recording is off");
        qmp.disconnect().await.unwrap();
    });
}

#[test]
fn disconnect_fails_every_pending_command_and_ends_listeners() {
    run(async {
        let (server, _dir) = unix_server(TestServer::builder()).await;
        let qmp = connect(&server).await;
        let mut events = qmp.listen_all();
        let base = server.requests();
        server.inject(Fault::Hang);
        server.inject(Fault::Hang);
        server.inject(Fault::Disconnect);
        let mut pending = Vec::new();
        for i in 0..2 {
            let q = qmp.clone();
            pending.push(tokio::spawn(async move {
                q.execute("echo", Some(json!({ "i": i }))).await
            }));
            server.wait_for_requests(base + i + 1, T).await.unwrap();
        }
        assert_eq!(qmp.pending_commands(), 2);
        let err = bounded(qmp.execute("echo", None)).await.unwrap_err();
        assert!(matches!(
            interrupted_cause(err),
            Error::ConnectionClosed { mid_message: false }
        ));
        for p in pending {
            let err = bounded(p).await.unwrap().unwrap_err();
            assert!(
                matches!(&err, Error::Disconnected { command: Some(c), .. } if c == "echo"),
                "{err:?}"
            );
        }
        match bounded(events.recv()).await {
            Err(RecvError::Closed(Some(c))) => assert!(c.is_disconnected()),
            other => panic!("{other:?}"),
        }
        assert_eq!(qmp.pending_commands(), 0);
        // A peer that hung up is not an error.
        qmp.disconnect().await.unwrap();
    });
}

#[test]
fn hang_and_dropped_futures_are_accounted_for() {
    run(async {
        let (server, _dir) = unix_server(TestServer::builder()).await;
        let qmp = connect(&server).await;
        server.inject(Fault::Hang);
        let dropped = timeout(Duration::from_millis(100), qmp.execute("echo", None)).await;
        assert!(dropped.is_err(), "a hung command completed: {dropped:?}");
        // The abandoned command stays pending until its reply (which never comes).
        assert_eq!(qmp.pending_commands(), 1);
        server.inject(Fault::Hang);
        let err = qmp
            .request("echo")
            .timeout(Duration::from_millis(100))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout());
        assert_eq!(qmp.pending_commands(), 2);
        // The client still works.
        assert_eq!(
            bounded(qmp.execute("echo", Some(json!({"ok": true}))))
                .await
                .unwrap(),
            json!({"ok": true})
        );
        assert_eq!(qmp.pending_commands(), 2);
        qmp.disconnect().await.unwrap();
        assert_eq!(qmp.pending_commands(), 0);
    });
}

#[test]
fn reply_handlers_can_fault_too() {
    run(async {
        let builder = TestServer::builder()
            .handler("slow", |_| {
                Reply::Fault(Fault::Delay(Duration::from_millis(20)))
            })
            .handler("raw", |_| Reply::Raw(obj(json!({"return": {"raw": true}}))))
            .handler("bad-reply", |_| {
                Reply::WithId(obj(json!({"error": "oops"})))
            })
            .handler("query-status", |_| {
                Reply::Return(json!({"status": "inmigrate", "running": false}))
            })
            .handler("refuse", |args| {
                Reply::error("DeviceNotFound", format!("no {}", args["dev"]))
            });
        let (server, _dir) = unix_server(builder).await;
        let qmp = connect(&server).await;
        assert_eq!(bounded(qmp.execute("slow", None)).await.unwrap(), json!({}));
        // No id, but the only command in flight.
        assert_eq!(
            bounded(qmp.execute("raw", None)).await.unwrap(),
            json!({"raw": true})
        );
        let err = bounded(qmp.execute("bad-reply", None)).await.unwrap_err();
        assert!(
            matches!(err, Error::Protocol(ProtocolError::BadReply { .. })),
            "{err:?}"
        );
        // Handlers override built-ins.
        assert_eq!(
            qmp.execute("query-status", None).await.unwrap()["status"],
            "inmigrate"
        );
        let err = qmp
            .execute("refuse", Some(json!({"dev": "sda"})))
            .await
            .unwrap_err();
        let e = err.as_execute_error().unwrap();
        assert_eq!(e.error_class(), "DeviceNotFound");
        assert_eq!(e.desc(), "no \"sda\"");
        let names: Vec<Value> = qmp
            .execute("query-commands", None)
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].clone())
            .collect();
        for n in ["qmp_capabilities", "echo", "getfd", "slow", "raw", "refuse"] {
            assert!(names.contains(&json!(n)), "{n} missing from {names:?}");
        }
        qmp.disconnect().await.unwrap();
    });
}

// ---- concurrency ----------------------------------------------------------------

#[test]
fn two_hundred_concurrent_echoes_get_their_own_replies() {
    run_multi_thread(async {
        let (server, _dir) = unix_server(TestServer::builder()).await;
        let qmp = connect(&server).await;
        let mut set = tokio::task::JoinSet::new();
        for i in 0..200u32 {
            let q = qmp.clone();
            set.spawn(async move {
                let args = json!({"i": i, "s": format!("n{i}"), "nested": {"list": [i, i * 2]}});
                let v = q.execute("echo", Some(args.clone())).await;
                (args, v)
            });
        }
        let mut n = 0;
        while let Some(joined) = bounded(set.join_next()).await {
            let (args, v) = joined.unwrap();
            assert_eq!(v.unwrap(), args);
            n += 1;
        }
        assert_eq!(n, 200);
        let echoes = server.received();
        let echoes: Vec<_> = echoes.iter().filter(|r| r["execute"] == "echo").collect();
        assert_eq!(echoes.len(), 200);
        // Ids are as short as the library can make them: numbers, reused once free.
        assert!(echoes.iter().all(|r| r.get("id").is_none_or(Value::is_u64)));
        qmp.disconnect().await.unwrap();
    });
}

// ---- greeting and negotiation ---------------------------------------------------

#[test]
fn no_greeting_makes_connect_time_out() {
    run(async {
        let (server, _dir) = unix_server(TestServer::builder().no_greeting()).await;
        let err = Client::builder()
            .connect_timeout(Duration::from_millis(200))
            .connect(server.address())
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        // Guest-agent style: no greeting, no negotiation, commands at once.
        server.wait_for_disconnections(1, T).await.unwrap();
        let qmp = Client::builder()
            .await_greeting(false)
            .negotiate(false)
            .connect(server.address())
            .await
            .unwrap();
        assert_eq!(
            bounded(qmp.execute("echo", Some(json!({"ga": 1}))))
                .await
                .unwrap(),
            json!({"ga": 1})
        );
        qmp.disconnect().await.unwrap();
    });
}

#[test]
fn bad_greeting_is_a_greeting_error() {
    run(async {
        let (server, _dir) =
            unix_server(TestServer::builder().greeting(obj(json!({"hello": "world"})))).await;
        let err = Client::builder()
            .connect_timeout(T)
            .connect(server.address())
            .await
            .unwrap_err();
        match err {
            Error::Greeting { received, .. } => {
                assert_eq!(received.unwrap()["hello"], "world")
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn refused_negotiation_is_a_negotiation_error() {
    run(async {
        let builder = TestServer::builder().handler("qmp_capabilities", |_| {
            Reply::error("GenericError", "no negotiating today")
        });
        let (server, _dir) = unix_server(builder).await;
        let err = Client::builder()
            .connect_timeout(T)
            .connect(server.address())
            .await
            .unwrap_err();
        match err {
            Error::Negotiation { reason, received } => {
                assert!(reason.contains("no negotiating today"), "{reason}");
                assert!(received.is_some());
            }
            other => panic!("{other:?}"),
        }
        // What the client asked for: OOB, as offered.
        let caps = &server.received()[0];
        assert_eq!(caps["execute"], "qmp_capabilities");
        assert_eq!(caps["arguments"], json!({"enable": ["oob"]}));
    });
}

#[test]
fn oob_is_negotiated_only_when_offered() {
    run(async {
        let (server, _dir) = unix_server(TestServer::builder()).await;
        let qmp = connect(&server).await;
        assert!(qmp.oob_enabled());
        assert_eq!(
            bounded(qmp.execute_oob("echo", Some(json!({"oob": 1}))))
                .await
                .unwrap(),
            json!({"oob": 1})
        );
        qmp.disconnect().await.unwrap();
        drop(server);

        let (server, _dir2) = unix_server(TestServer::builder().capabilities(vec![])).await;
        let qmp = connect(&server).await;
        assert!(!qmp.oob_enabled());
        assert_eq!(server.received()[0]["arguments"], json!({}));
        qmp.disconnect().await.unwrap();
    });
}

// ---- requests the server must reject --------------------------------------------

#[test]
fn malformed_requests_from_execute_raw_get_qemu_errors() {
    run(async {
        let (server, _dir) = unix_server(TestServer::builder()).await;
        let qmp = connect(&server).await;
        let cases = [
            (
                json!({"id": "a", "arguments": {}}),
                "QMP input lacks member 'execute'",
            ),
            (
                json!({"execute": "echo", "arguments": [1, 2], "id": "b"}),
                "QMP input member 'arguments' must be an object",
            ),
            (
                json!({"execute": "echo", "bogus": true, "id": "c"}),
                "QMP input member 'bogus' is unexpected",
            ),
            (
                json!({"execute": 42, "id": "d"}),
                "QMP input member 'execute' must be a string",
            ),
            (
                json!({"execute": "query-status", "arguments": {"x": 1}, "id": "e"}),
                "Parameter 'x' is unexpected",
            ),
        ];
        for (request, desc) in cases {
            let id = request["id"].clone();
            let reply = bounded(qmp.execute_raw(obj(request))).await.unwrap();
            let info = reply.error_info().unwrap().unwrap();
            assert_eq!(info.class, "GenericError");
            assert_eq!(info.desc, desc);
            assert_eq!(reply.id(), Some(&id));
        }
        // Without an id: matched as the one id-less command in flight.
        let reply =
            bounded(qmp.execute_raw(obj(json!({"execute": "echo", "arguments": {"a": 1}}))))
                .await
                .unwrap();
        assert_eq!(reply.return_value(), Some(&json!({"a": 1})));
        let reply = bounded(qmp.execute_raw(obj(json!({"execute": "nope"}))))
            .await
            .unwrap();
        assert_eq!(
            reply.error_info().unwrap().unwrap().desc,
            "The command nope has not been found"
        );
        // The session is unharmed.
        assert!(qmp.disconnect_cause().is_none());
        assert_eq!(qmp.execute("echo", None).await.unwrap(), json!({}));
        qmp.disconnect().await.unwrap();
    });
}

/// Reads one CRLF-terminated message as JSON.
async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Value {
    let mut line = String::new();
    let n = bounded(r.read_line(&mut line)).await.unwrap();
    assert!(n > 0, "the server closed the connection");
    assert!(line.ends_with("\r\n"), "{line:?}");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// Send a request and check the reply.
async fn exchange<R: tokio::io::AsyncBufRead + Unpin>(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    r: &mut R,
    request: &[u8],
    expected: Value,
) {
    w.write_all(request).await.unwrap();
    let reply = read_reply(r).await;
    assert_eq!(
        reply,
        expected,
        "request {}",
        String::from_utf8_lossy(request)
    );
}

#[test]
fn raw_socket_sees_qemu_behaviour() {
    run(async {
        let (server, _dir) = unix_server(TestServer::builder()).await;
        let Some(qemu_qmp::Address::Unix(path)) = server.try_address() else {
            panic!("not a Unix socket")
        };
        let stream = bounded(tokio::net::UnixStream::connect(&path))
            .await
            .unwrap();
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);

        let greeting = read_reply(&mut r).await;
        assert_eq!(
            greeting,
            json!({"QMP": {"version": {"qemu": {"major": 9, "minor": 2, "micro": 0},
                "package": "qemu-qmp test server"}, "capabilities": ["oob"]}})
        );
        let not_found = |desc: &str| json!({"class": "CommandNotFound", "desc": desc});
        let generic = |desc: &str| json!({"class": "GenericError", "desc": desc});

        exchange(&mut w, &mut r,
            b"{\"execute\": \"query-status\", \"id\": 1}\n",
            json!({"error": not_found("Expecting capabilities negotiation with 'qmp_capabilities'"), "id": 1}),
        )
        .await;
        exchange(&mut w, &mut r,
            b"{\"execute\": \"qmp_capabilities\", \"arguments\": {\"enable\": [\"oob\", \"foo\"]}, \"id\": 2}\n",
            // QEMU's wording for a value its QMPCapability enum lacks.
            json!({"error": generic("Parameter 'null' does not accept value 'foo'"), "id": 2}),
        )
        .await;
        // Malformed JSON: an error without id, then the server carries on.
        w.write_all(b"{\"execute\": oops}\n").await.unwrap();
        let reply = read_reply(&mut r).await;
        assert_eq!(reply["error"]["class"], "GenericError");
        let desc = reply["error"]["desc"].as_str().unwrap();
        assert!(desc.starts_with("JSON parse error, "), "{desc}");
        assert!(reply.get("id").is_none(), "{reply}");
        exchange(
            &mut w,
            &mut r,
            b"[1, 2]\n",
            json!({"error": generic("QMP input must be a JSON object")}),
        )
        .await;
        // No newline, as Python's qemu.qmp sends.
        exchange(
            &mut w,
            &mut r,
            b"{\"execute\": \"qmp_capabilities\", \"id\": 3}",
            json!({"return": {}, "id": 3}),
        )
        .await;
        exchange(&mut w, &mut r,
            b"{\"execute\": \"qmp_capabilities\", \"id\": 4}",
            json!({"error": not_found("Capabilities negotiation is already complete, command ignored"), "id": 4}),
        )
        .await;
        exchange(
            &mut w,
            &mut r,
            b"{\"execute\": \"frobnicate\", \"id\": [1, {\"a\": null, \"b\": \"\\u00e9\"}]}",
            json!({"error": not_found("The command frobnicate has not been found"),
                   "id": [1, {"a": null, "b": "é"}]}),
        )
        .await;
        exchange(
            &mut w,
            &mut r,
            b"{\"exec-oob\": \"echo\", \"id\": 5}",
            json!({"error": generic("QMP input member 'exec-oob' is unexpected"), "id": 5}),
        )
        .await;
        exchange(
            &mut w,
            &mut r,
            b"{\"execute\": \"query-version\", \"id\": 6}",
            json!({"return": {"qemu": {"major": 9, "minor": 2, "micro": 0},
                   "package": "qemu-qmp test server"}, "id": 6}),
        )
        .await;
        exchange(
            &mut w,
            &mut r,
            b"{\"execute\": \"getfd\", \"arguments\": {\"fdname\": \"x\"}, \"id\": 7}",
            json!({"error": generic("No file descriptor supplied via SCM_RIGHTS"), "id": 7}),
        )
        .await;
        // Replies are ASCII, non-ASCII characters escaped, in QEMU's style.
        w.write_all("{\"execute\": \"echo\", \"arguments\": {\"s\": \"é\"}}\n".as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        bounded(r.read_line(&mut line)).await.unwrap();
        assert_eq!(line, "{\"return\": {\"s\": \"\\u00E9\"}}\r\n");
        // Pipelined requests in one write: replies in order.
        w.write_all(b"{\"execute\":\"echo\",\"id\":10}{\"execute\":\"echo\",\"id\":11}\n{\"execute\":\"echo\",\"id\":12}")
            .await
            .unwrap();
        for id in 10..13 {
            assert_eq!(read_reply(&mut r).await, json!({"return": {}, "id": id}));
        }
        // quit: SHUTDOWN, reply, end of stream (QEMU's order).
        w.write_all(b"{\"execute\": \"quit\"}").await.unwrap();
        let shutdown = read_reply(&mut r).await;
        assert_eq!(shutdown["event"], "SHUTDOWN");
        assert_eq!(
            shutdown["data"],
            json!({"guest": false, "reason": "host-qmp-quit"})
        );
        assert_eq!(read_reply(&mut r).await, json!({"return": {}}));
        let mut rest = String::new();
        assert_eq!(
            bounded(r.read_line(&mut rest)).await.unwrap(),
            0,
            "{rest:?}"
        );
        assert_eq!(server.requests(), 13);
    });
}

// ---- built-in commands, events, connections -------------------------------------

#[test]
fn stop_cont_quit_and_events() {
    run(async {
        let (server, _dir) = unix_server(TestServer::builder()).await;
        // Emitted before anyone connects: delivered once a client has negotiated.
        server.emit(Event::new("EARLY", Some(json!({"n": 1}))));
        let qmp = Client::builder().connect_timeout(T).build();
        let mut early = qmp.listen(["EARLY"]);
        qmp.connect_to(server.address()).await.unwrap();
        assert_eq!(bounded(early.recv()).await.unwrap().data()["n"], 1);

        let mut runstate = qmp.listen(["STOP", "RESUME"]);
        let v = qmp.execute("query-version", None).await.unwrap();
        assert_eq!(v["qemu"]["major"], 9);
        assert_eq!(qmp.greeting().unwrap().version.qemu.to_string(), "9.2.0");
        assert_eq!(
            qmp.execute("query-status", None).await.unwrap(),
            // 9.2.0 (the default version) has no `singlestep` any more.
            json!({"status": "running", "running": true})
        );
        qmp.execute("stop", None).await.unwrap();
        // STOP precedes the reply, as in QEMU.
        assert_eq!(runstate.try_recv().unwrap().name(), "STOP");
        assert_eq!(
            qmp.execute("query-status", None).await.unwrap()["status"],
            "paused"
        );
        qmp.execute("cont", None).await.unwrap();
        assert_eq!(runstate.try_recv().unwrap().name(), "RESUME");

        let mut all = qmp.listen_all();
        server.emit_many((0..3).map(|i| Event::new("MANY", Some(json!({ "i": i })))));
        for i in 0..3 {
            assert_eq!(bounded(all.recv()).await.unwrap().data()["i"], i);
        }

        qmp.execute("quit", None).await.unwrap();
        let shutdown = bounded(all.recv()).await.unwrap();
        assert_eq!(shutdown.name(), "SHUTDOWN");
        assert_eq!(
            shutdown.data(),
            &json!({"guest": false, "reason": "host-qmp-quit"})
        );
        let cause = bounded(qmp.wait_disconnected()).await;
        assert!(
            matches!(cause, Some(Error::ConnectionClosed { mid_message: false })),
            "{cause:?}"
        );
        qmp.disconnect().await.unwrap();

        // The server goes on with the next connection.
        server.wait_for_disconnections(1, T).await.unwrap();
        let qmp = connect(&server).await;
        server.wait_for_connections(2, T).await.unwrap();
        assert_eq!(server.connections(), 2);
        assert!(server
            .wait_for_connections(3, Duration::from_millis(10))
            .await
            .unwrap_err()
            .is_timeout());
        qmp.disconnect().await.unwrap();
    });
}

#[test]
fn tcp_and_socketpair_servers() {
    run(async {
        let server = TestServer::builder().bind_tcp("127.0.0.1:0").await.unwrap();
        let address = server.address();
        assert!(
            matches!(&address, qemu_qmp::Address::Tcp { host, port } if host == "127.0.0.1" && *port != 0)
        );
        let qmp = connect(&server).await;
        assert_eq!(
            qmp.execute("echo", Some(json!({"tcp": true})))
                .await
                .unwrap(),
            json!({"tcp": true})
        );
        // No descriptors over TCP.
        let file = tempfile::tempfile().unwrap();
        let err = qmp
            .request("getfd")
            .arg("fdname", "f")
            .fd(&file)
            .send()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
        qmp.disconnect().await.unwrap();
        server.shutdown().await;

        let (server, stream) = TestServer::builder().socketpair().unwrap();
        assert!(server.try_address().is_none());
        assert_eq!(server.connections(), 1);
        let qmp = Client::builder()
            .connect_timeout(T)
            .connect(stream)
            .await
            .unwrap();
        assert_eq!(qmp.execute("echo", None).await.unwrap(), json!({}));
        qmp.disconnect().await.unwrap();
        server.wait_for_disconnections(1, T).await.unwrap();
    });
}

#[test]
fn socket_file_is_removed_on_drop() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let server = TestServer::builder().bind_unix(&path).unwrap();
        assert!(path.exists());
        // A second server cannot take the same path.
        assert!(TestServer::builder().bind_unix(&path).is_err());
        drop(server);
        assert!(!path.exists());
        let server = TestServer::builder().bind_unix(&path).unwrap();
        server.shutdown().await;
        assert!(!path.exists());
    });
}

#[test]
fn descriptors_passed_with_scm_rights() {
    run(async {
        use std::os::unix::fs::MetadataExt;
        let (server, _dir) = unix_server(TestServer::builder()).await;
        let qmp = connect(&server).await;
        let file = tempfile::tempfile().unwrap();
        let ino = file.metadata().unwrap().ino();

        qmp.request("getfd")
            .arg("fdname", "disk0")
            .fd(&file)
            .send()
            .await
            .unwrap();
        assert_eq!(server.received_fds(), 1);
        assert_eq!(server.fd_names(), ["disk0"]);

        let err = qmp
            .execute("getfd", Some(json!({"fdname": "disk1"})))
            .await
            .unwrap_err();
        assert_eq!(
            err.as_execute_error().unwrap().desc(),
            "No file descriptor supplied via SCM_RIGHTS"
        );

        // Python's send_fd_scm() way: the descriptor alone, then getfd.
        qmp.send_fd_scm(&file).unwrap();
        qmp.execute("getfd", Some(json!({"fdname": "disk1"})))
            .await
            .unwrap();
        assert_eq!(server.received_fds(), 2);
        assert_eq!(server.fd_names(), ["disk0", "disk1"]);

        qmp.execute("closefd", Some(json!({"fdname": "disk0"})))
            .await
            .unwrap();
        let err = qmp
            .execute("closefd", Some(json!({"fdname": "disk0"})))
            .await
            .unwrap_err();
        assert_eq!(
            err.as_execute_error().unwrap().desc(),
            "File descriptor named 'disk0' not found"
        );
        let fd = server.take_fd("disk1").unwrap();
        let kept = std::fs::File::from(fd);
        assert_eq!(kept.metadata().unwrap().ino(), ino);
        drop(kept);

        // Descriptors nobody claims are closed by the server (checked by `clean`).
        qmp.request("echo")
            .fd(&file)
            .fd(file.as_fd())
            .send()
            .await
            .unwrap();
        assert_eq!(server.received_fds(), 4);
        qmp.request("getfd")
            .arg("fdname", "disk2")
            .fd(&file)
            .send()
            .await
            .unwrap();
        assert_eq!(server.received_fds(), 5);
        qmp.disconnect().await.unwrap();
    });
}

#[test]
fn requests_carry_the_shortest_unambiguous_id() {
    run(async {
        let (server, _dir) = unix_server(TestServer::builder()).await;
        let qmp = connect(&server).await;
        let base = server.requests();
        // Alone in flight: no id at all (QEMU reads its input a byte at a time).
        qmp.execute("echo", Some(json!({"n": 1}))).await.unwrap();
        // Two in flight: the second gets the smallest free number.
        server.inject(Fault::Delay(Duration::from_millis(200)));
        let (a, b) = tokio::join!(
            qmp.execute("echo", Some(json!({"n": 2}))),
            qmp.execute("echo", Some(json!({"n": 3})))
        );
        assert_eq!(a.unwrap(), json!({"n": 2}));
        assert_eq!(b.unwrap(), json!({"n": 3}));
        // Alone again: no id; a raw request keeps the caller's.
        qmp.execute("echo", Some(json!({"n": 4}))).await.unwrap();
        let Value::Object(raw) = json!({"execute": "echo", "id": 0}) else {
            unreachable!()
        };
        let reply = qmp.execute_raw(raw).await.unwrap();
        assert_eq!(reply.id(), Some(&json!(0)));
        let ids: Vec<Option<Value>> = server.received()[base..]
            .iter()
            .map(|r| r.get("id").cloned())
            .collect();
        assert_eq!(ids, [None, None, Some(json!(0)), None, Some(json!(0))]);
        qmp.disconnect().await.unwrap();
    });
}

#[test]
fn a_dropped_disconnect_still_leaves_the_client_idle() {
    run(async {
        let (server, _dir) = unix_server(TestServer::builder()).await;
        let qmp = connect(&server).await;
        let mut events = qmp.listen_all();
        {
            // Polled once at most, then dropped half-way.
            let fut = qmp.disconnect();
            let _ = timeout(Duration::ZERO, fut).await;
        }
        assert_eq!(qmp.runstate(), qemu_qmp::Runstate::Idle);
        assert!(bounded(events.recv()).await.is_err());
        // The client is usable again.
        qmp.connect_to(server.address()).await.unwrap();
        qmp.execute("query-status", None).await.unwrap();
        qmp.disconnect().await.unwrap();
    });
}
