//! Regression tests against a real QEMU (`qemu-system-x86_64 -machine none`) for two
//! defects:
//!
//! - one request that the kernel cannot send (more descriptors than `SCM_MAX_FD`)
//!   ended the whole session: every other command in flight failed;
//! - a caller's own id (`execute_raw`) collided with the ids the library gave
//!   concurrent `execute()` calls ("id 2 is already in use").
//!
//! To have commands truly in flight together, QEMU is frozen with `SIGSTOP` (and the
//! test waits until it is stopped) while they are sent, and thawed afterwards. Each
//! test skips (loudly) when the binary is missing, and fails under `CI=true`.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::Poll;
use std::thread;
use std::time::{Duration, Instant};

use qemu_qmp::{json, Client, Error, JsonObject, Response, Runstate, Value};
use qemu_testkit::QemuProcess;
use rustix::process::{waitid, Pid, Signal, WaitId, WaitIdOptions};

/// Generous bound for anything QEMU does, for slow CI machines.
const T: Duration = Duration::from_secs(10);

/// One more than the most descriptors one message can pass.
const TOO_MANY: usize = 254;

async fn connect(qemu: &QemuProcess, oob: bool) -> Client {
    Client::builder()
        .name("defects")
        .enable_oob(oob)
        .connect_timeout(T)
        .command_timeout(T)
        .connect(qemu.qmp_path())
        .await
        .unwrap_or_else(|e| panic!("connect failed: {e}\nQEMU log:\n{}", qemu.log()))
}

/// Stop QEMU and return once it is stopped (or gone): nothing sent from now on is
/// answered before [`thaw`].
fn freeze(qemu: &QemuProcess) {
    qemu.signal(Signal::STOP).unwrap();
    let pid = Pid::from_raw(qemu.pid() as i32).expect("a pid");
    // Blocks until the child stops (SIGSTOP cannot be caught) or exits; NOWAIT
    // leaves its state for the harness to reap.
    waitid(
        WaitId::Pid(pid),
        WaitIdOptions::STOPPED | WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
    )
    .expect("waitid");
    assert_eq!(
        qemu_testkit::proc_state(qemu.pid()),
        Some('T'),
        "QEMU did not stop"
    );
}

fn thaw(qemu: &QemuProcess) {
    qemu.signal(Signal::CONT).unwrap();
}

type Call<'a, T> = Pin<Box<dyn Future<Output = qemu_qmp::Result<T>> + 'a>>;

/// Poll a call once: that sends it. QEMU is frozen, so it must still be waiting.
async fn start<T: std::fmt::Debug>(call: &mut Call<'_, T>) {
    let pending = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx).is_pending()));
    assert!(pending.await, "a command completed while QEMU was stopped");
}

async fn finish<T>(call: Call<'_, T>) -> qemu_qmp::Result<T> {
    tokio::time::timeout(T, call)
        .await
        .expect("no reply within the timeout")
}

fn object(v: Value) -> JsonObject {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// `getfd` named `name` carrying `count` copies of `file`.
fn getfd_with(qmp: &Client, name: &str, file: &File, count: usize) -> Call<'static, Value> {
    let qmp = qmp.clone();
    let name = name.to_owned();
    let file = file.try_clone().unwrap();
    Box::pin(async move {
        let mut request = qmp.request("getfd").arg("fdname", name);
        for _ in 0..count {
            request = request.fd(file.as_fd());
        }
        request.send().await
    })
}

fn execute(qmp: &Client, command: &'static str) -> Call<'static, Value> {
    let qmp = qmp.clone();
    Box::pin(async move { qmp.execute(command, None).await })
}

fn raw(qmp: &Client, request: Value) -> Call<'static, Response> {
    let qmp = qmp.clone();
    Box::pin(async move { qmp.execute_raw(object(request)).await })
}

fn assert_too_many(err: &Error) {
    match err {
        Error::TooManyFds {
            command,
            count,
            limit,
        } => {
            assert_eq!(command, "getfd");
            assert_eq!(*count, TOO_MANY);
            assert_eq!(*limit, 253);
        }
        other => panic!("expected TooManyFds, got {other:?}"),
    }
    assert!(!err.is_disconnected());
    let text = err.to_string();
    assert!(
        text.contains("254") && text.contains("253") && text.contains("getfd"),
        "{text}"
    );
}

/// QEMU holds the descriptor named `name`: closefd succeeds.
async fn assert_qemu_holds(qmp: &Client, name: &str) {
    qmp.execute("closefd", Some(json!({"fdname": name})))
        .await
        .unwrap_or_else(|e| panic!("closefd {name}: {e}"));
}

#[tokio::test]
async fn too_many_descriptors_fail_only_that_request() {
    qemu_testkit::require_qemu_system!();
    let qemu = QemuProcess::system_with_listener(&[]);
    let qmp = connect(&qemu, true).await;
    let file = tempfile::tempfile().unwrap();

    freeze(&qemu);
    let mut others = vec![
        execute(&qmp, "query-status"),
        execute(&qmp, "query-version"),
        execute(&qmp, "query-status"),
        execute(&qmp, "query-version"),
    ];
    for call in &mut others {
        start(call).await;
    }
    assert_eq!(qmp.pending_commands(), 4);

    // Refused before anything is queued: at once, even with QEMU frozen.
    let err = finish(getfd_with(&qmp, "many", &file, TOO_MANY))
        .await
        .unwrap_err();
    assert_too_many(&err);
    assert_eq!(qmp.pending_commands(), 4);
    assert_eq!(qmp.runstate(), Runstate::Running);

    thaw(&qemu);
    for (n, call) in others.into_iter().enumerate() {
        let v = finish(call)
            .await
            .unwrap_or_else(|e| panic!("command {n}: {e}"));
        assert!(v.get("status").is_some() || v.get("qemu").is_some(), "{v}");
    }
    // The session goes on, and descriptors still pass.
    assert_eq!(qmp.disconnect_cause().map(|e| e.to_string()), None);
    qmp.execute("query-status", None).await.unwrap();
    finish(getfd_with(&qmp, "one", &file, 1)).await.unwrap();
    assert_qemu_holds(&qmp, "one").await;
    // Nothing of the refused request reached QEMU.
    let err = qmp
        .execute("closefd", Some(json!({"fdname": "many"})))
        .await
        .unwrap_err();
    assert_eq!(err.error_class(), Some("GenericError"), "{err}");
    assert_eq!(qmp.pending_commands(), 0);
    qmp.disconnect().await.unwrap();
}

#[tokio::test]
async fn too_many_descriptors_on_send_raw() {
    qemu_testkit::require_qemu_system!();
    let qemu = QemuProcess::system_with_listener(&[]);
    let qmp = connect(&qemu, true).await;
    let file = tempfile::tempfile().unwrap();
    let mut request = qmp.request("add-fd").arg("fdset-id", 3);
    for _ in 0..TOO_MANY {
        request = request.fd(file.as_fd());
    }
    match request.send_raw().await.unwrap_err() {
        Error::TooManyFds { command, count, .. } => {
            assert_eq!((command.as_str(), count), ("add-fd", TOO_MANY))
        }
        other => panic!("{other:?}"),
    }
    // The same command with one descriptor works.
    let added = qmp
        .request("add-fd")
        .arg("fdset-id", 3)
        .fd(&file)
        .send()
        .await
        .unwrap();
    assert_eq!(added["fdset-id"], 3);
    qmp.execute("remove-fd", Some(json!({"fdset-id": 3})))
        .await
        .unwrap();
    qmp.disconnect().await.unwrap();
}

#[test]
fn too_many_descriptors_on_the_blocking_client() {
    let Some(_) = qemu_testkit::qemu_system() else {
        return;
    };
    let (qemu, stream) = QemuProcess::system_with_socketpair(&[]);
    let qmp = qemu_qmp::blocking::Client::builder()
        .command_timeout(T)
        .connect(stream)
        .unwrap();
    let file = tempfile::tempfile().unwrap();
    let fds = vec![file.as_fd(); TOO_MANY];

    freeze(&qemu);
    thread::scope(|s| {
        let others: Vec<_> = (0..3)
            .map(|_| s.spawn(|| qmp.execute("query-status", None)))
            .collect();
        // No notification exists for "a thread's command is on the wire": poll the
        // count, bounded.
        let deadline = Instant::now() + T;
        while qmp.as_async().pending_commands() < 3 {
            assert!(
                Instant::now() < deadline,
                "the commands never got in flight"
            );
            thread::yield_now();
        }
        let err = qmp
            .execute_with_fds("getfd", Some(json!({"fdname": "many"})), &fds)
            .unwrap_err();
        assert_too_many(&err);
        thaw(&qemu);
        for t in others {
            assert!(t.join().unwrap().unwrap()["status"].is_string());
        }
    });
    assert_eq!(qmp.runstate(), Runstate::Running);
    qmp.execute_with_fds("getfd", Some(json!({"fdname": "one"})), &[file.as_fd()])
        .unwrap();
    qmp.execute("closefd", Some(json!({"fdname": "one"})))
        .unwrap();
    qmp.close().unwrap();
    drop(qemu);
}

#[tokio::test]
async fn five_executes_and_execute_raw_with_id_2() {
    qemu_testkit::require_qemu_system!();
    let qemu = QemuProcess::system_with_listener(&[]);
    let qmp = connect(&qemu, true).await;

    freeze(&qemu);
    let mut executes: Vec<_> = (0..5)
        .map(|i| execute(&qmp, ["query-status", "query-version"][i % 2]))
        .collect();
    for call in &mut executes {
        start(call).await;
    }
    let mut mine = raw(&qmp, json!({"execute": "query-version", "id": 2}));
    start(&mut mine).await;
    assert_eq!(qmp.pending_commands(), 6);
    thaw(&qemu);

    let reply = finish(mine).await.unwrap();
    assert_eq!(reply.id(), Some(&json!(2)));
    assert!(
        reply.return_value().unwrap()["qemu"].is_object(),
        "{:?}",
        reply.raw
    );
    for (i, call) in executes.into_iter().enumerate() {
        let v = finish(call).await.unwrap();
        let key = ["status", "qemu"][i % 2];
        assert!(v.get(key).is_some(), "execute {i}: {v}");
    }
    qmp.disconnect().await.unwrap();
}

#[tokio::test]
async fn caller_ids_never_collide() {
    qemu_testkit::require_qemu_system!();
    let qemu = QemuProcess::system_with_listener(&[]);
    // Without OOB, QEMU has no in-band queue limit: everything below is in flight at
    // once.
    let qmp = connect(&qemu, false).await;

    freeze(&qemu);
    let mut executes = vec![
        execute(&qmp, "query-status"),
        execute(&qmp, "query-version"),
        execute(&qmp, "query-status"),
        execute(&qmp, "no-such-command"),
        execute(&qmp, "query-version"),
    ];
    for call in &mut executes {
        start(call).await;
    }
    // (id, command, the member of the return value that shows it is that command's)
    let raws: Vec<(Option<Value>, &str, Option<&str>)> = vec![
        (Some(json!(2)), "query-version", Some("qemu")),
        (Some(json!(0)), "query-status", Some("status")),
        (Some(json!(1)), "no-such-command", None),
        (Some(json!("mine")), "query-version", Some("qemu")),
        (Some(json!("dup")), "query-status", Some("status")),
        (Some(json!("dup")), "query-version", Some("qemu")),
        (Some(json!(2)), "query-status", Some("status")),
        (Some(json!({"nested": [1, "x"]})), "query-name", None),
        (None, "query-status", Some("status")),
        (None, "query-version", Some("qemu")),
    ];
    let mut calls = Vec::new();
    for (id, command, _) in &raws {
        let mut request = json!({ "execute": command });
        if let Some(id) = id {
            request["id"] = id.clone();
        }
        let mut call = raw(&qmp, request);
        start(&mut call).await;
        calls.push(call);
    }
    assert_eq!(qmp.pending_commands(), executes.len() + raws.len());
    thaw(&qemu);

    for ((id, command, key), call) in raws.iter().zip(calls) {
        let reply = finish(call)
            .await
            .unwrap_or_else(|e| panic!("{command} {id:?}: {e}"));
        assert_eq!(reply.id(), id.as_ref(), "{command}: {:?}", reply.raw);
        match key {
            Some(key) => assert!(
                reply.return_value().unwrap().get(*key).is_some(),
                "{command} {id:?} got another's reply: {:?}",
                reply.raw
            ),
            None if *command == "no-such-command" => assert_eq!(
                reply.error_info().unwrap().unwrap().class,
                "CommandNotFound"
            ),
            None => assert!(reply.return_value().is_some(), "{:?}", reply.raw),
        }
    }
    for (i, call) in executes.into_iter().enumerate() {
        match finish(call).await {
            Ok(v) => assert!(
                v.get(["status", "qemu", "status", "", "qemu"][i]).is_some(),
                "execute {i}: {v}"
            ),
            Err(Error::Execute(e)) => {
                assert_eq!(i, 3);
                assert_eq!(e.error_class(), "CommandNotFound");
                // Both in the caller's terms: the library's wire id is in neither.
                assert_eq!(e.sent, object(json!({"execute": "no-such-command"})));
                assert!(e.received.get("id").is_none(), "{:?}", e.received);
                assert!(e.received.contains_key("error"));
            }
            Err(e) => panic!("execute {i}: {e}"),
        }
    }
    assert_eq!(qmp.pending_commands(), 0);
    // Alone in flight, a caller's id still comes back.
    let reply = qmp
        .execute_raw(object(json!({"execute": "query-status", "id": 0})))
        .await
        .unwrap();
    assert_eq!(reply.id(), Some(&json!(0)));
    qmp.disconnect().await.unwrap();
}

#[test]
fn blocking_execute_raw_ids_never_collide() {
    let Some(_) = qemu_testkit::qemu_system() else {
        return;
    };
    let (qemu, stream) = QemuProcess::system_with_socketpair(&[]);
    let qmp = qemu_qmp::blocking::Client::builder()
        .command_timeout(T)
        .connect(stream)
        .unwrap();
    freeze(&qemu);
    thread::scope(|s| {
        let executes: Vec<_> = (0..5)
            .map(|_| s.spawn(|| qmp.execute("query-status", None)))
            .collect();
        let raws: Vec<_> = [json!(2), json!(0), json!(2), json!("x")]
            .into_iter()
            .map(|id| {
                let qmp = &qmp;
                s.spawn(move || {
                    let reply = qmp
                        .execute_raw(object(json!({"execute": "query-version", "id": id})))
                        .unwrap();
                    (id, reply)
                })
            })
            .collect();
        let deadline = Instant::now() + T;
        // OOB is on: at most 7 in-band commands go on the wire at once.
        while qmp.as_async().pending_commands() < 7 {
            assert!(
                Instant::now() < deadline,
                "the commands never got in flight"
            );
            thread::yield_now();
        }
        thaw(&qemu);
        for t in executes {
            assert!(t.join().unwrap().unwrap()["status"].is_string());
        }
        for t in raws {
            let (id, reply) = t.join().unwrap();
            assert_eq!(reply.id(), Some(&id));
            assert!(reply.return_value().unwrap()["qemu"].is_object());
        }
    });
    qmp.close().unwrap();
    drop(qemu);
}
