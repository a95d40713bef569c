//! The async client against a real QEMU: `qemu-system-x86_64 -machine none` and
//! `qemu-storage-daemon`.
//!
//! Each test skips (loudly) when the binary is missing, and fails under `CI=true`.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use qemu_qmp::{json, Client, Error, ListenOptions, RecvTimeoutError, Runstate};
use qemu_testkit::{MonitorsReady, QemuProcess};

const T: Duration = Duration::from_secs(10);

async fn connect(qemu: &QemuProcess) -> Client {
    Client::builder()
        .name("test")
        .connect_timeout(T)
        .command_timeout(T)
        .connect(qemu.qmp_path())
        .await
        .unwrap_or_else(|e| panic!("connect failed: {e}\nQEMU log:\n{}", qemu.log()))
}

#[tokio::test]
async fn negotiates_and_queries_the_version() {
    qemu_testkit::require_qemu_system!();
    let qemu = QemuProcess::system_with_listener(&[]);
    let qmp = connect(&qemu).await;
    assert_eq!(qmp.runstate(), Runstate::Running);
    let greeting = qmp.greeting().expect("greeting");
    assert!(greeting.version.qemu.major >= 2, "{greeting:?}");
    // QMP monitors on socket chardevs run in the I/O thread and offer OOB.
    assert!(greeting.has_capability("oob"));
    assert!(qmp.oob_enabled());

    let v = qmp.execute("query-version", None).await.unwrap();
    assert_eq!(v["qemu"]["major"], greeting.version.qemu.major);
    assert_eq!(v["package"], greeting.version.package.as_str());
    qmp.disconnect().await.unwrap();
    assert_eq!(qmp.runstate(), Runstate::Idle);
}

#[tokio::test]
async fn storage_daemon_speaks_qmp_too() {
    qemu_testkit::require_storage_daemon!();
    let qemu = QemuProcess::storage_daemon_with_listener(&[]);
    let qmp = connect(&qemu).await;
    let nodes = qmp.execute("query-named-block-nodes", None).await.unwrap();
    assert_eq!(nodes, json!([]));
    qmp.execute(
        "blockdev-add",
        Some(json!({"driver": "null-co", "node-name": "null0", "size": 1048576})),
    )
    .await
    .unwrap();
    let nodes = qmp.execute("query-named-block-nodes", None).await.unwrap();
    assert_eq!(nodes[0]["node-name"], "null0");
    // An error from the daemon keeps its class and description.
    let err = qmp
        .execute("blockdev-del", Some(json!({"node-name": "nope"})))
        .await
        .unwrap_err();
    let e = err.as_execute_error().expect("an execute error");
    assert_eq!(e.error_class(), "GenericError");
    assert!(e.desc().contains("nope"), "{}", e.desc());
    assert_eq!(e.sent["arguments"]["node-name"], "nope");
    assert!(e.received.contains_key("error"));
    qmp.disconnect().await.unwrap();
}

#[tokio::test]
async fn error_replies_keep_their_class() {
    qemu_testkit::require_qemu_system!();
    let qemu = QemuProcess::system_with_listener(&[]);
    let qmp = connect(&qemu).await;

    let err = qmp.execute("no-such-command", None).await.unwrap_err();
    assert_eq!(err.error_class(), Some("CommandNotFound"));
    assert!(err.to_string().contains("no-such-command"), "{err}");

    let err = qmp
        .execute("object-del", Some(json!({"id": "nope"})))
        .await
        .unwrap_err();
    assert_eq!(err.error_class(), Some("GenericError"), "{err}");

    let err = qmp
        .execute("query-status", Some(json!({"bogus": 1})))
        .await
        .unwrap_err();
    assert_eq!(err.error_class(), Some("GenericError"), "{err}");
    assert!(err.to_string().contains("bogus"), "{err}");

    // The session survives error replies.
    qmp.execute("query-status", None).await.unwrap();
    qmp.disconnect().await.unwrap();
}

#[tokio::test]
async fn stop_and_cont_reach_listeners_with_names_and_filters() {
    qemu_testkit::require_qemu_system!();
    let qemu = QemuProcess::system_with_listener(&["-S"]);
    let qmp = connect(&qemu).await;

    let mut stops = qmp.listen(["STOP"]);
    let mut both = qmp.listen(["STOP", "RESUME"]);
    let mut filtered = qmp.listen_with(ListenOptions::new().filter(|e| e.name() == "RESUME"));
    let mut all = qmp.listen_all();

    qmp.execute("cont", None).await.unwrap();
    qmp.execute("stop", None).await.unwrap();
    let status = qmp.execute("query-status", None).await.unwrap();
    assert_eq!(status["running"], false);

    assert_eq!(stops.recv_timeout(T).await.unwrap().name(), "STOP");
    assert_eq!(both.recv_timeout(T).await.unwrap().name(), "RESUME");
    assert_eq!(both.recv_timeout(T).await.unwrap().name(), "STOP");
    let resume = filtered.recv_timeout(T).await.unwrap();
    assert_eq!(resume.name(), "RESUME");
    assert!(resume.timestamp().is_some());
    let names: Vec<_> = [all.recv_timeout(T).await, all.recv_timeout(T).await]
        .into_iter()
        .map(|e| e.unwrap().name().to_owned())
        .collect();
    assert_eq!(names, ["RESUME", "STOP"]);
    // Each listener got exactly its own events.
    assert!(stops.is_empty() && both.is_empty() && filtered.is_empty());

    qmp.execute("quit", None).await.unwrap();
    let shutdown = all.recv_timeout(T).await.unwrap();
    assert_eq!(shutdown.name(), "SHUTDOWN");
    assert_eq!(shutdown.data()["guest"], false);
    // The stream ends when QEMU hangs up.
    assert!(matches!(
        all.recv_timeout(T).await,
        Err(RecvTimeoutError::Closed(Some(_)))
    ));
    // A peer that hangs up after `quit` is not an error.
    qmp.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_commands_are_routed_by_id() {
    qemu_testkit::require_qemu_system!();
    let qemu = QemuProcess::system_with_listener(&[]);
    let qmp = connect(&qemu).await;
    let options = qmp
        .execute("query-command-line-options", None)
        .await
        .unwrap();
    let names: Vec<String> = options
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["option"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.len() > 10);

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let qmp = qmp.clone();
        let name = names[i % names.len()].clone();
        tasks.spawn(async move {
            let reply = qmp
                .execute("query-command-line-options", Some(json!({"option": name})))
                .await
                .unwrap();
            assert_eq!(
                reply[0]["option"],
                name.as_str(),
                "reply routed to the wrong caller"
            );
        });
    }
    let mut done = 0;
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
        done += 1;
    }
    assert_eq!(done, 200);
    assert_eq!(qmp.pending_commands(), 0);
    qmp.disconnect().await.unwrap();
}

#[tokio::test]
async fn exec_oob_when_negotiated() {
    qemu_testkit::require_qemu_system!();
    let qemu = QemuProcess::system_with_listener(&[]);
    let qmp = connect(&qemu).await;
    assert!(qmp.oob_enabled());
    // `yank` is allowed out of band.
    let r = qmp
        .execute_oob("yank", Some(json!({"instances": []})))
        .await
        .unwrap();
    assert_eq!(r, json!({}));
    // A command that does not allow OOB is refused when sent out of band.
    let err = qmp.execute_oob("query-status", None).await.unwrap_err();
    assert_eq!(err.error_class(), Some("GenericError"), "{err}");
    assert!(
        err.to_string().contains("out-of-band") || err.to_string().contains("OOB"),
        "{err}"
    );

    // In-band and out-of-band commands interleave.
    let (a, b) = tokio::join!(
        qmp.execute("query-status", None),
        qmp.execute_oob("yank", Some(json!({"instances": []})))
    );
    a.unwrap();
    b.unwrap();
    qmp.disconnect().await.unwrap();
}

#[tokio::test]
async fn oob_can_be_declined() {
    qemu_testkit::require_qemu_system!();
    let qemu = QemuProcess::system_with_listener(&[]);
    let qmp = Client::builder()
        .enable_oob(false)
        .connect(qemu.qmp_path())
        .await
        .unwrap();
    assert!(!qmp.oob_enabled());
    let err = qmp
        .execute_oob("yank", Some(json!({"instances": []})))
        .await
        .unwrap_err();
    assert!(err.error_class().is_some(), "{err}");
    qmp.disconnect().await.unwrap();
}

#[tokio::test]
async fn passes_file_descriptors_to_getfd_and_add_fd() {
    qemu_testkit::require_qemu_system!();
    let qemu = QemuProcess::system_with_listener(&[]);
    let qmp = connect(&qemu).await;
    let file = tempfile::tempfile().unwrap();

    // getfd with the descriptor on the command itself.
    qmp.request("getfd")
        .arg("fdname", "fd0")
        .fd(&file)
        .send()
        .await
        .unwrap();
    // QEMU holds it now: closefd succeeds once, then the name is gone.
    qmp.execute("closefd", Some(json!({"fdname": "fd0"})))
        .await
        .unwrap();
    let err = qmp
        .execute("closefd", Some(json!({"fdname": "fd0"})))
        .await
        .unwrap_err();
    assert_eq!(err.error_class(), Some("GenericError"), "{err}");

    // The Python way: send_fd_scm, then getfd.
    qmp.send_fd_scm(file.as_fd()).unwrap();
    qmp.execute("getfd", Some(json!({"fdname": "fd1"})))
        .await
        .unwrap();
    qmp.execute("closefd", Some(json!({"fdname": "fd1"})))
        .await
        .unwrap();

    // add-fd puts it in an fdset that query-fdsets shows.
    let added = qmp
        .request("add-fd")
        .arg("fdset-id", 7)
        .arg("opaque", "hello")
        .fd(&file)
        .send()
        .await
        .unwrap();
    assert_eq!(added["fdset-id"], 7);
    let sets = qmp.execute("query-fdsets", None).await.unwrap();
    let set = sets
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["fdset-id"] == 7)
        .expect("fdset 7");
    assert_eq!(set["fds"][0]["opaque"], "hello");
    assert_eq!(set["fds"][0]["fd"], added["fd"]);

    // Without a descriptor, getfd fails with QEMU's own message.
    let err = qmp
        .execute("getfd", Some(json!({"fdname": "none"})))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("SCM_RIGHTS"), "{err}");
    qmp.disconnect().await.unwrap();
}

#[tokio::test]
async fn server_mode_qemu_connects_to_us() {
    qemu_testkit::require_qemu_system!();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("listen.sock");
    let qmp = Client::builder().name("server").build();
    qmp.start_server(&path).unwrap();
    assert_eq!(qmp.runstate(), Runstate::Connecting);
    assert!(path.exists());
    let qemu = QemuProcess::system_connecting_to(&path, &[]);
    qmp.accept(Some(T))
        .await
        .unwrap_or_else(|e| panic!("accept failed: {e}\n{}", qemu.log()));
    assert_eq!(qmp.runstate(), Runstate::Running);
    // The listener is closed and its socket file removed once the peer is in.
    assert!(!path.exists());
    let v = qmp.execute("query-version", None).await.unwrap();
    assert!(v["qemu"]["major"].as_u64().unwrap() >= 2);
    qmp.disconnect().await.unwrap();
}

#[tokio::test]
async fn accept_times_out_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nobody.sock");
    let qmp = Client::new();
    qmp.start_server(&path).unwrap();
    let started = Instant::now();
    let err = qmp
        .accept(Some(Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(qmp.runstate(), Runstate::Idle);
    assert!(!path.exists(), "stale socket file left behind");
}

#[tokio::test]
async fn sigkill_fails_pending_commands_at_once() {
    qemu_testkit::require_qemu_system!();
    let mut qemu = QemuProcess::system_with_listener(&[]);
    let qmp = connect(&qemu).await;
    let mut events = qmp.listen_all();
    // Freeze QEMU so the command stays pending, then kill it.
    qemu.signal(rustix::process::Signal::STOP).unwrap();
    let pending = {
        let qmp = qmp.clone();
        tokio::spawn(async move { qmp.execute("query-status", None).await })
    };
    // Wait until the command is really in flight.
    let deadline = Instant::now() + T;
    while qmp.pending_commands() == 0 {
        assert!(
            Instant::now() < deadline,
            "the command never became pending"
        );
        tokio::task::yield_now().await;
    }
    let killed = Instant::now();
    qemu.kill_now();
    let err = tokio::time::timeout(T, pending)
        .await
        .expect("the pending execute hung")
        .unwrap()
        .unwrap_err();
    let elapsed = killed.elapsed();
    assert!(elapsed < Duration::from_millis(500), "took {elapsed:?}");
    assert!(matches!(err, Error::Disconnected { .. }), "{err}");
    // Listeners see their stream end; the cause is readable without disconnect().
    assert!(matches!(
        events.recv_timeout(T).await,
        Err(RecvTimeoutError::Closed(_))
    ));
    assert_eq!(qmp.runstate(), Runstate::Disconnecting);
    let cause = qmp.disconnect_cause().expect("a cause");
    assert!(
        cause.is_disconnected() || matches!(cause, Error::Io { .. }),
        "{cause}"
    );
    // New commands fail at once too.
    let err = qmp.execute("query-status", None).await.unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err}");
    let _ = qmp.disconnect().await;
    assert_eq!(qmp.runstate(), Runstate::Idle);
    qemu.wait_exit(T);
}

/// `qemu-system-x86_64 -machine none` with its QMP monitor (`-mon` options `mon`)
/// on `listener`, returned once QEMU has set up its monitors.
fn qemu_on_listener(listener: std::os::fd::OwnedFd, mon: &str) -> QemuProcess {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let ready = MonitorsReady::new();
    let mut args: Vec<String> = ["-machine", "none", "-nodefaults", "-display", "none"]
        .map(String::from)
        .to_vec();
    args.extend([
        "-chardev".to_owned(),
        format!("socket,id=qmp,fd={fd},server=on,wait=off"),
        "-mon".to_owned(),
        mon.to_owned(),
    ]);
    args.extend(ready.system_args());
    let qemu = QemuProcess::spawn(
        &qemu_testkit::qemu_system().unwrap(),
        &args,
        &[listener.as_fd(), ready.fd()],
    );
    drop(listener);
    ready.wait(&qemu);
    qemu
}

#[tokio::test]
async fn pretty_monitor_and_a_large_reply() {
    qemu_testkit::require_qemu_system!();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let listener = qemu_testkit::bind_for_qemu(&sock);
    let qemu = qemu_on_listener(listener, "chardev=qmp,mode=control,pretty=on");
    let qmp = Client::builder()
        .connect_timeout(T)
        .connect(&sock)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", qemu.log()));
    let schema = qmp.execute("query-qmp-schema", None).await.unwrap();
    let n = schema.as_array().unwrap().len();
    assert!(n > 1000, "{n} schema entries");
    let status = qmp.execute("query-status", None).await.unwrap();
    assert!(status.get("status").is_some());
    qmp.disconnect().await.unwrap();
}

#[tokio::test]
async fn a_small_message_limit_ends_the_session_cleanly() {
    qemu_testkit::require_qemu_system!();
    let qemu = QemuProcess::system_with_listener(&[]);
    let qmp = Client::builder()
        .max_message_size(64 * 1024)
        .connect(qemu.qmp_path())
        .await
        .unwrap();
    let err = qmp.execute("query-qmp-schema", None).await.unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err}");
    let err = qmp.disconnect().await.unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");
}

#[tokio::test]
async fn reconnects_after_disconnect() {
    qemu_testkit::require_qemu_system!();
    let qemu = QemuProcess::system_with_listener(&[]);
    let qmp = connect(&qemu).await;
    qmp.execute("query-status", None).await.unwrap();
    qmp.disconnect().await.unwrap();
    // Commands on an idle client are state errors, not hangs.
    let err = qmp.execute("query-status", None).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::State {
                state: Runstate::Idle,
                ..
            }
        ),
        "{err}"
    );
    qmp.connect_to(qemu.qmp_path()).await.unwrap();
    qmp.execute("query-status", None).await.unwrap();
    // A second connect while running is a state error.
    let err = qmp.connect_to(qemu.qmp_path()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::State {
                state: Runstate::Running,
                ..
            }
        ),
        "{err}"
    );
    qmp.disconnect().await.unwrap();
}

#[tokio::test]
async fn connects_over_a_socketpair() {
    qemu_testkit::require_qemu_system!();
    let (_qemu, ours) = QemuProcess::system_with_socketpair(&[]);
    let qmp = Client::connect(ours).await.unwrap();
    qmp.execute("query-status", None).await.unwrap();
    qmp.disconnect().await.unwrap();
}

#[tokio::test]
async fn connects_over_tcp() {
    qemu_testkit::require_qemu_system!();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let qemu = qemu_on_listener(
        qemu_testkit::listener_for_qemu(listener),
        "chardev=qmp,mode=control",
    );
    let qmp = Client::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", qemu.log()));
    qmp.execute("query-status", None).await.unwrap();
    // Descriptors cannot travel over TCP: a clear error, and the session goes on.
    let file = tempfile::tempfile().unwrap();
    let err = qmp
        .request("getfd")
        .arg("fdname", "x")
        .fd(&file)
        .send()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Unix socket"), "{err}");
    qmp.execute("query-status", None).await.unwrap();
    qmp.disconnect().await.unwrap();
}

#[tokio::test]
async fn connect_errors_say_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let err = Client::connect(dir.path().join("missing.sock"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.to_string().contains("missing.sock"), "{err}");
    let err = Client::connect("127.0.0.1:1").await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
}

/// Blocked besides `qemu_testkit::GA_BLOCKED_RPCS`: this test needs no file access
/// and no network information either.
const AGENT_ALSO_BLOCKED: &[&str] = &[
    "guest-file-open",
    "guest-file-close",
    "guest-file-read",
    "guest-network-get-interfaces",
];

#[tokio::test]
async fn guest_agent_dialect_resynchronises() {
    let Some((agent, path, _dir)) = qemu_testkit::start_agent(AGENT_ALSO_BLOCKED) else {
        return;
    };
    // A previous client that left half a command in the agent's parser.
    {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        s.write_all(br#"{"execute": "guest-ping", "argu"#).unwrap();
    }
    let ga = Client::builder()
        .guest_agent()
        .connect_timeout(T)
        .command_timeout(T)
        .connect(&path)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert!(ga.greeting().is_none());
    assert_eq!(ga.execute("guest-ping", None).await.unwrap(), json!({}));
    let info = ga.execute("guest-info", None).await.unwrap();
    assert!(info["version"].as_str().is_some());
    let blocked = info["supported_commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "guest-shutdown")
        .unwrap();
    assert_eq!(blocked["enabled"], false);
    let err = ga.execute("guest-shutdown", None).await.unwrap_err();
    assert!(err.error_class().is_some(), "{err}");
    ga.disconnect().await.unwrap();
}

fn keys(v: &qemu_qmp::json::Ordered) -> Vec<&str> {
    v.members()
        .unwrap()
        .iter()
        .map(|(k, _)| k.as_str())
        .collect()
}

#[tokio::test]
async fn preserve_order_shows_replies_and_events_as_qemu_sent_them() {
    qemu_testkit::require_qemu_system!();
    let qemu = QemuProcess::system_with_listener(&["-S"]);
    let version = qemu_testkit::version_of(&qemu_testkit::qemu_system().unwrap());
    // QEMU's own text, from a connection that is not ours.
    let sent =
        qemu_testkit::RawQmp::connect(qemu.qmp_path()).command(r#"{"execute": "query-status"}"#);
    let qmp = Client::builder()
        .preserve_order(true)
        .command_timeout(T)
        .connect(qemu.qmp_path())
        .await
        .unwrap();
    let mut msg = qemu_qmp::JsonObject::new();
    msg.insert("execute".into(), json!("query-status"));
    let reply = qmp.execute_raw(msg).await.unwrap();
    let ordered = reply.ordered();
    // The library's wire id is not shown: the caller gave none.
    assert_eq!(
        ordered.to_string(),
        qemu_qmp::json::Ordered::parse(sent.as_bytes())
            .unwrap()
            .to_string()
    );
    let status = ordered.get("return").unwrap();
    if version.is(7, 2) {
        // `status` and `singlestep` share a bucket of QEMU's hash table: only the
        // text tells their order.
        assert_eq!(keys(status), ["status", "singlestep", "running"], "{sent}");
    } else {
        assert_eq!(keys(status), ["status", "running"], "{sent}");
    }
    // The return value alone, in the same order.
    let value = qmp.request("query-status").send_ordered().await.unwrap();
    assert_eq!(keys(&value), keys(status));
    let err = qmp
        .request("no-such-command")
        .send_ordered()
        .await
        .unwrap_err();
    assert_eq!(err.error_class(), Some("CommandNotFound"));
    // A caller's id comes back in the place QEMU gave the library's.
    let mut msg = qemu_qmp::JsonObject::new();
    msg.insert("execute".into(), json!("query-status"));
    msg.insert("id".into(), json!("mine"));
    let reply = qmp.execute_raw(msg).await.unwrap();
    assert_eq!(keys(&reply.ordered()), ["return", "id"]);
    assert_eq!(
        reply.ordered().get("id"),
        Some(&qemu_qmp::json::Ordered::String("mine".into()))
    );

    let mut events = qmp.listen(["RESUME"]);
    qmp.execute("cont", None).await.unwrap();
    let resume = events.recv_timeout(T).await.unwrap().ordered();
    assert_eq!(keys(&resume), ["timestamp", "event"]);
    assert_eq!(
        keys(resume.get("timestamp").unwrap()),
        ["seconds", "microseconds"]
    );
    qmp.disconnect().await.unwrap();
}
