//! Tests of `qemu_qmp::blocking` against a real QEMU (`qemu-system-x86_64 -machine
//! none`). Each test skips with a `SKIPPED:` line when QEMU is not installed, and
//! fails under `CI=true`.
//!
//! Most tests are plain `#[test]`s: the blocking client must work without any async
//! runtime in the caller.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use qemu_qmp::blocking::{Client, Wait};
use qemu_qmp::{json, Address, Error, Event, Runstate, Value};
use qemu_testkit::QemuProcess;
use rustix::process::Signal;

/// Generous bound for anything QEMU does, for slow CI machines.
const TIMEOUT: Duration = Duration::from_secs(10);

/// QEMU paused at startup (`-S`), its QMP monitor on a socketpair, and a blocking
/// client connected to it. Drop the client before the QEMU (declaration order).
fn qemu_and_client() -> Option<(Client, QemuProcess)> {
    qemu_testkit::qemu_system()?;
    qemu_testkit::init_tracing();
    let (qemu, stream) = QemuProcess::system_with_socketpair(&["-S"]);
    let client = Client::builder()
        .name("test")
        .connect(stream)
        .unwrap_or_else(|e| panic!("connect: {e}\nQEMU log:\n{}", qemu.log()));
    Some((client, qemu))
}

/// Every QEMU this process started is gone once its `QemuProcess` is dropped.
fn assert_no_qemu_left(qemu: QemuProcess) {
    drop(qemu);
    qemu_testkit::assert_no_qemu_children();
}

fn object(v: Value) -> qemu_qmp::JsonObject {
    match v {
        Value::Object(o) => o,
        other => panic!("not an object: {other}"),
    }
}

fn pull(client: &mut Client) -> Event {
    client
        .pull_event(Wait::Timeout(TIMEOUT))
        .expect("an event")
        .expect("Wait::Timeout returns an event or an error")
}

/// Threads of this process whose name (as the kernel shows it) is `name`.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .count()
}

/// Waits (bounded) until no thread is named `name`.
fn threads_gone(name: &str, within: Duration) -> bool {
    qemu_testkit::poll_until(within, || threads_named(name) == 0)
}

/// The kernel's id of the calling thread (from `/proc/thread-self`, a link to
/// `<pid>/task/<tid>`).
fn my_tid() -> u32 {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("/proc/thread-self -> {}", link.display()))
}

/// Whether thread `tid` of this process is asleep (`S` in `/proc`).
fn thread_asleep(tid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(") ")?;
            rest.chars().next()
        })
        == Some('S')
}

fn temp_file() -> std::fs::File {
    tempfile::tempfile().expect("temporary file")
}

#[test]
fn the_types_can_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Client>();
    send_sync::<qemu_qmp::blocking::Server>();
    send_sync::<qemu_qmp::blocking::EventListener>();
}

// ---- connecting and commands ------------------------------------------------------

#[test]
fn connect_and_query_version_without_a_runtime() {
    let Some((qmp, qemu)) = qemu_and_client() else {
        return;
    };
    assert!(tokio::runtime::Handle::try_current().is_err());
    assert_eq!(qmp.runstate(), Runstate::Running);
    let greeting = qmp.greeting().expect("the greeting was awaited");
    let version = qmp.execute("query-version", None).unwrap();
    assert!(version["qemu"]["major"].as_u64().unwrap() >= 7, "{version}");
    assert_eq!(version["qemu"]["major"], greeting.version.qemu.major);
    assert!(
        qmp.as_async().oob_enabled(),
        "QEMU offers OOB on a socket monitor"
    );
    qmp.close().unwrap();
    assert_no_qemu_left(qemu);
}

#[test]
fn error_reply_keeps_the_class() {
    let Some((qmp, qemu)) = qemu_and_client() else {
        return;
    };
    let err = qmp.execute("no-such-command", None).unwrap_err();
    assert_eq!(err.error_class(), Some("CommandNotFound"), "{err}");
    let exec = err.as_execute_error().unwrap();
    assert_eq!(exec.command(), "no-such-command");
    assert!(exec.desc().contains("no-such-command"), "{}", exec.desc());
    // The session goes on.
    assert_eq!(
        qmp.execute("query-status", None).unwrap()["status"],
        "prelaunch"
    );
    drop(qmp);
    assert_no_qemu_left(qemu);
}

#[test]
fn execute_raw_keeps_the_callers_id_and_error_replies() {
    let Some((qmp, qemu)) = qemu_and_client() else {
        return;
    };
    let reply = qmp
        .execute_raw(object(json!({"execute": "query-status", "id": "mine-1"})))
        .unwrap();
    assert_eq!(reply.id(), Some(&json!("mine-1")));
    assert_eq!(reply.return_value().unwrap()["status"], "prelaunch");

    let reply = qmp
        .execute_raw(object(json!({"execute": "nope", "id": 7})))
        .expect("an error reply is still a reply");
    assert!(reply.is_error());
    assert_eq!(reply.id(), Some(&json!(7)));
    assert_eq!(
        reply.error_info().unwrap().unwrap().class,
        "CommandNotFound"
    );

    // Without an id.
    let reply = qmp
        .execute_raw(object(json!({"execute": "query-status"})))
        .unwrap();
    assert_eq!(reply.id(), None);
    assert!(reply.return_value().is_some(), "{:?}", reply.raw);

    // Any id of the caller's is kept, even one that looks like Python's.
    let reply = qmp
        .execute_raw(object(json!({"execute": "query-status", "id": "__qmp#1"})))
        .unwrap();
    assert_eq!(reply.id(), Some(&json!("__qmp#1")));
    drop(qmp);
    assert_no_qemu_left(qemu);
}

#[test]
fn execute_oob_goes_out_of_band() {
    let Some((qmp, qemu)) = qemu_and_client() else {
        return;
    };
    // migrate-pause allows OOB; with no migration it fails, from the OOB path.
    let err = qmp.execute_oob("migrate-pause", None).unwrap_err();
    assert_eq!(err.error_class(), Some("GenericError"), "{err}");
    // query-status does not allow OOB, and QEMU says so.
    let err = qmp.execute_oob("query-status", None).unwrap_err();
    assert!(err.to_string().contains("OOB"), "{err}");
    drop(qmp);
    assert_no_qemu_left(qemu);
}

#[test]
fn commands_from_several_threads() {
    let Some((qmp, qemu)) = qemu_and_client() else {
        return;
    };
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..25 {
                    assert!(qmp.execute("query-status", None).unwrap()["status"].is_string());
                }
            });
        }
    });
    drop(qmp);
    assert_no_qemu_left(qemu);
}

#[test]
fn command_timeout_and_the_session_goes_on() {
    let Some(_) = qemu_testkit::qemu_system() else {
        return;
    };
    let (qemu, stream) = QemuProcess::system_with_socketpair(&["-S"]);
    let mut qmp = Client::builder()
        .command_timeout(Duration::from_millis(200))
        .connect(stream)
        .unwrap();
    assert_eq!(qmp.timeout(), Some(Duration::from_millis(200)));
    // A frozen QEMU cannot answer.
    qemu.signal(Signal::STOP).unwrap();
    let start = Instant::now();
    let err = qmp.execute("query-status", None).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(start.elapsed() >= Duration::from_millis(200));
    let err = qmp
        .execute_raw(object(json!({"execute": "query-status", "id": 1})))
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    qemu.signal(Signal::CONT).unwrap();
    // The late replies are dropped; the session goes on, without a deadline now.
    qmp.set_timeout(None);
    assert_eq!(qmp.timeout(), None);
    assert_eq!(
        qmp.execute("query-status", None).unwrap()["status"],
        "prelaunch"
    );
    drop(qmp);
    assert_no_qemu_left(qemu);
}

#[test]
fn block_on_runs_async_requests() {
    let Some((qmp, qemu)) = qemu_and_client() else {
        return;
    };
    let request = qmp
        .as_async()
        .request("query-status")
        .timeout(TIMEOUT)
        .send();
    let status = qmp.block_on(request).unwrap();
    assert_eq!(status["status"], "prelaunch");
    drop(qmp);
    assert_no_qemu_left(qemu);
}

// ---- events -------------------------------------------------------------------------

#[test]
fn stop_and_cont_give_stop_then_resume() {
    let Some((mut qmp, qemu)) = qemu_and_client() else {
        return;
    };
    // Leave the prelaunch state first: `stop` sends no STOP while nothing runs.
    qmp.execute("cont", None).unwrap();
    assert_eq!(pull(&mut qmp).name(), "RESUME");
    qmp.execute("stop", None).unwrap();
    qmp.execute("cont", None).unwrap();
    let stop = pull(&mut qmp);
    assert_eq!(stop.name(), "STOP");
    assert!(stop.timestamp().unwrap().seconds > 0);
    assert_eq!(pull(&mut qmp).name(), "RESUME");
    assert_eq!(qmp.pull_event(Wait::No).unwrap(), None);
    assert_eq!(qmp.events_lost(), 0);
    drop(qmp);
    assert_no_qemu_left(qemu);
}

#[test]
fn pull_event_without_waiting_and_with_a_timeout() {
    let Some((mut qmp, qemu)) = qemu_and_client() else {
        return;
    };
    assert_eq!(qmp.pull_event(Wait::No).unwrap(), None);
    assert_eq!(qmp.pull_event(false).unwrap(), None);

    let start = Instant::now();
    let err = qmp
        .pull_event(Wait::Timeout(Duration::from_millis(100)))
        .unwrap_err();
    let waited = start.elapsed();
    assert!(err.is_timeout(), "{err}");
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert!(matches!(
        qmp.get_events(Duration::from_millis(10)),
        Err(Error::Timeout { .. })
    ));
    drop(qmp);
    assert_no_qemu_left(qemu);
}

#[test]
fn get_events_and_clear_events() {
    let Some((mut qmp, qemu)) = qemu_and_client() else {
        return;
    };
    assert!(qmp.get_events(Wait::No).unwrap().is_empty());
    assert!(qmp.clear_events().is_empty());

    qmp.execute("cont", None).unwrap();
    qmp.execute("stop", None).unwrap();
    // QEMU sends an event before the reply to the command that caused it, and the
    // reader queues it before handing over the reply, so both are queued now.
    let names: Vec<String> = qmp
        .get_events(Wait::Timeout(TIMEOUT))
        .unwrap()
        .iter()
        .map(|e| e.name().to_owned())
        .collect();
    assert_eq!(names, ["RESUME", "STOP"]);
    assert!(qmp.get_events(Wait::No).unwrap().is_empty());

    qmp.execute("cont", None).unwrap();
    qmp.execute("stop", None).unwrap();
    let cleared = qmp.clear_events();
    assert_eq!(
        cleared.iter().map(Event::name).collect::<Vec<_>>(),
        ["RESUME", "STOP"]
    );
    assert_eq!(qmp.pull_event(Wait::No).unwrap(), None);

    // With nothing queued, get_events waits for the next event.
    qmp.execute("cont", None).unwrap();
    let events = qmp.get_events(Wait::Forever).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].name(), "RESUME");
    drop(qmp);
    assert_no_qemu_left(qemu);
}

#[test]
fn a_full_event_queue_drops_the_oldest_and_counts() {
    let Some(_) = qemu_testkit::qemu_system() else {
        return;
    };
    let (qemu, stream) = QemuProcess::system_with_socketpair(&["-S"]);
    let mut qmp = Client::builder()
        .event_queue_capacity(1)
        .connect(stream)
        .unwrap();
    qmp.execute("cont", None).unwrap();
    qmp.execute("stop", None).unwrap();
    assert_eq!(pull(&mut qmp).name(), "STOP");
    assert_eq!(qmp.events_lost(), 1);
    assert_eq!(qmp.pull_event(Wait::No).unwrap(), None);
    drop(qmp);
    assert_no_qemu_left(qemu);
}

/// Events arrive while the caller makes no call at all: QEMU gets a second QMP
/// monitor, a second client stops the VM there, and the STOP that QEMU broadcasts to
/// the first monitor is queued by the first client's background reader.
#[test]
fn events_are_queued_while_the_caller_does_nothing() {
    let Some(binary) = qemu_testkit::qemu_system() else {
        return;
    };
    qemu_testkit::init_tracing();
    let (ours1, theirs1) = UnixStream::pair().unwrap();
    let (ours2, theirs2) = UnixStream::pair().unwrap();
    let (theirs1, theirs2) = (OwnedFd::from(theirs1), OwnedFd::from(theirs2));
    let (fd1, fd2) = (theirs1.as_raw_fd(), theirs2.as_raw_fd());
    let args = [
        "-machine".to_owned(),
        "none".to_owned(),
        "-nodefaults".to_owned(),
        "-display".to_owned(),
        "none".to_owned(),
        "-chardev".to_owned(),
        format!("socket,id=qmp1,fd={fd1}"),
        "-mon".to_owned(),
        "chardev=qmp1,mode=control".to_owned(),
        "-chardev".to_owned(),
        format!("socket,id=qmp2,fd={fd2}"),
        "-mon".to_owned(),
        "chardev=qmp2,mode=control".to_owned(),
    ];
    let fds: [BorrowedFd<'_>; 2] = [theirs1.as_fd(), theirs2.as_fd()];
    let qemu = QemuProcess::spawn(&binary, &args, &fds);
    drop((theirs1, theirs2));

    let mut idle = Client::connect(ours1).unwrap();
    let other = Client::connect(ours2).unwrap();
    // Without -S the VM runs, so `stop` sends STOP.
    other.execute("stop", None).unwrap();
    drop(other);

    // Only non-waiting checks from here: nothing but the background reader can have
    // read the event from the socket.
    let mut event = None;
    qemu_testkit::wait_until(TIMEOUT, "the STOP event to be queued", || {
        event = idle.pull_event(Wait::No).unwrap();
        event.is_some()
    });
    assert_eq!(event.expect("queued").name(), "STOP");
    idle.close().unwrap();
    assert_no_qemu_left(qemu);
}

#[test]
fn event_listener_in_another_thread() {
    let Some((qmp, qemu)) = qemu_and_client() else {
        return;
    };
    let mut resumes = qmp.listen(["RESUME"]);
    assert!(resumes.try_recv().is_none());
    let waiter = thread::spawn(move || resumes.recv(Some(TIMEOUT)));
    qmp.execute("cont", None).unwrap();
    qmp.execute("stop", None).unwrap();
    assert_eq!(waiter.join().unwrap().unwrap().name(), "RESUME");

    let mut stops = qmp.listen(["STOP"]);
    let err = stops.recv(Some(Duration::from_millis(50))).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    qmp.execute("cont", None).unwrap();
    qmp.execute("stop", None).unwrap();
    assert_eq!(stops.recv(None).unwrap().name(), "STOP");
    assert!(stops.clear().is_empty());
    qmp.close().unwrap();
    // After the session, the listener ends.
    assert!(stops.is_closed());
    assert!(stops.recv(None).unwrap_err().is_disconnected());
    assert_no_qemu_left(qemu);
}

// ---- the peer going away ----------------------------------------------------------

#[test]
fn sigkill_wakes_a_forever_pull_event() {
    let Some((qmp, mut qemu)) = qemu_and_client() else {
        return;
    };
    let mut listener = qmp.listen(["NEVER"]);
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    let (tids, tid_rx) = mpsc::channel();
    let tids2 = tids.clone();
    let puller = thread::spawn(move || {
        let mut qmp = qmp;
        tids.send(my_tid()).unwrap();
        let result = qmp.pull_event(Wait::Forever);
        let _ = tx.send(("pull_event", result.map(|_| ())));
        qmp
    });
    let listening = thread::spawn(move || {
        tids2.send(my_tid()).unwrap();
        let result = listener.recv(None);
        let _ = tx2.send(("EventListener::recv", result.map(|_| ())));
    });
    // Kill QEMU only once both threads wait: each one parks (sleeps, `S`) in its
    // wait, and nothing else puts them to sleep here (a QEMU started with -S sends
    // no event). Either way the test holds: a wait that starts after the peer is
    // gone returns at once; this makes it test the wake-up of waits in progress.
    for _ in 0..2 {
        let tid = tid_rx.recv_timeout(TIMEOUT).expect("the thread's id");
        qemu_testkit::wait_until(TIMEOUT, &format!("thread {tid} to wait"), || {
            thread_asleep(tid)
        });
    }
    let killed = Instant::now();
    qemu.kill_now();
    for _ in 0..2 {
        let (who, result) = rx
            .recv_timeout(Duration::from_secs(1).saturating_sub(killed.elapsed()))
            .expect("a waiter is still waiting 1 s after QEMU was killed");
        let err = result.expect_err(who);
        assert!(err.is_disconnected(), "{who}: {err}");
    }
    let qmp = puller.join().unwrap();
    listening.join().unwrap();
    match qmp.disconnect_cause() {
        Some(Error::ConnectionClosed { .. }) => {}
        other => panic!("disconnect cause: {other:?}"),
    }
    // The async client wakes listeners a moment before it publishes the new state.
    qemu_testkit::wait_until(TIMEOUT, "the runstate to leave Running", || {
        qmp.runstate() != Runstate::Running
    });
    assert_eq!(qmp.runstate(), Runstate::Disconnecting);
    let err = qmp.execute("query-status", None).unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    // A peer that hung up is no error.
    qmp.close().unwrap();
    qemu.wait_exit(TIMEOUT).expect("QEMU survived SIGKILL");
    assert_no_qemu_left(qemu);
}

// ---- server mode ------------------------------------------------------------------

fn socket_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("qmp.sock")
}

#[test]
fn server_mode_accepts_qemu() {
    let Some(_) = qemu_testkit::qemu_system() else {
        return;
    };
    qemu_testkit::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let path = socket_path(&dir);
    let server = Client::start_server(&path).unwrap();
    assert_eq!(server.address(), &Address::Unix(path.clone()));
    assert!(path.exists());
    let qemu = QemuProcess::system_connecting_to(&path, &["-S"]);
    let qmp = server
        .accept(Some(TIMEOUT))
        .unwrap_or_else(|e| panic!("accept: {e}\nQEMU log:\n{}", qemu.log()));
    assert!(
        !path.exists(),
        "the socket file is removed after the accept"
    );
    assert!(qmp.greeting().is_some());
    assert_eq!(
        qmp.execute("query-status", None).unwrap()["status"],
        "prelaunch"
    );
    qmp.close().unwrap();
    assert_no_qemu_left(qemu);
}

#[test]
fn server_mode_on_a_listener_of_the_caller() {
    let Some(_) = qemu_testkit::qemu_system() else {
        return;
    };
    qemu_testkit::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let path = socket_path(&dir);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = Client::start_server_with_listener(listener).unwrap();
    assert_eq!(server.address(), &Address::Unix(path.clone()));
    let qemu = QemuProcess::system_connecting_to(&path, &["-S"]);
    let qmp = server.accept(Some(TIMEOUT)).unwrap();
    assert!(qmp.execute("query-version", None).is_ok());
    assert!(path.exists(), "the caller's socket file is left alone");
    drop(qmp);
    assert_no_qemu_left(qemu);
}

#[test]
fn accept_timeout_leaves_no_socket_file() {
    // Needs no QEMU.
    let dir = tempfile::tempdir().unwrap();
    let path = socket_path(&dir);
    let server = Client::start_server(&path).unwrap();
    assert!(path.exists());
    let start = Instant::now();
    let err = server.accept(Some(Duration::from_millis(200))).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert!(!path.exists(), "{} left behind", path.display());

    // Dropping a server that never accepted removes the file too.
    let server = Client::start_server(&path).unwrap();
    assert!(path.exists());
    drop(server);
    assert!(!path.exists(), "{} left behind", path.display());
}

#[test]
fn server_mode_over_tcp() {
    let Some(binary) = qemu_testkit::qemu_system() else {
        return;
    };
    qemu_testkit::init_tracing();
    let server = Client::start_server("127.0.0.1:0").unwrap();
    let Address::Tcp { host, port } = server.address() else {
        panic!("{:?}", server.address());
    };
    assert_eq!(host, "127.0.0.1");
    assert_ne!(*port, 0, "the address shows the port chosen");
    let chardev = format!("socket,id=qmp,host=127.0.0.1,port={port},server=off");
    let args = [
        "-machine",
        "none",
        "-nodefaults",
        "-display",
        "none",
        "-S",
        "-chardev",
        &chardev,
        "-mon",
        "chardev=qmp,mode=control",
    ];
    let qemu = QemuProcess::spawn(&binary, &args, &[]);
    let qmp = server
        .accept(Some(TIMEOUT))
        .unwrap_or_else(|e| panic!("accept: {e}\nQEMU log:\n{}", qemu.log()));
    assert_eq!(
        qmp.execute("query-status", None).unwrap()["status"],
        "prelaunch"
    );
    // Descriptors need a Unix socket.
    let err = qmp.send_fd_scm(temp_file()).unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
    qmp.close().unwrap();
    assert_no_qemu_left(qemu);
}

// ---- file descriptors -----------------------------------------------------------

#[test]
fn getfd_with_a_descriptor_then_closefd() {
    let Some((qmp, qemu)) = qemu_and_client() else {
        return;
    };
    let file = temp_file();
    qmp.execute_with_fds("getfd", Some(json!({"fdname": "x"})), &[file.as_fd()])
        .unwrap();
    qmp.execute("closefd", Some(json!({"fdname": "x"})))
        .unwrap();
    let err = qmp
        .execute("closefd", Some(json!({"fdname": "unknown"})))
        .unwrap_err();
    assert_eq!(err.error_class(), Some("GenericError"), "{err}");
    // The caller keeps its descriptor.
    assert!(file.metadata().is_ok());
    drop(qmp);
    assert_no_qemu_left(qemu);
}

#[test]
fn add_fd_with_a_descriptor() {
    let Some((qmp, qemu)) = qemu_and_client() else {
        return;
    };
    let file = temp_file();
    let info = qmp
        .execute_with_fds("add-fd", Some(json!({"opaque": "disk"})), &[file.as_fd()])
        .unwrap();
    let fdset = info["fdset-id"].as_i64().unwrap();
    let sets = qmp.execute("query-fdsets", None).unwrap();
    assert!(
        sets.as_array()
            .unwrap()
            .iter()
            .any(|s| s["fdset-id"] == fdset && s["fds"][0]["opaque"] == "disk"),
        "{sets}"
    );
    qmp.execute("remove-fd", Some(json!({"fdset-id": fdset})))
        .unwrap();
    drop(qmp);
    assert_no_qemu_left(qemu);
}

#[test]
fn send_fd_scm_then_getfd() {
    let Some((qmp, qemu)) = qemu_and_client() else {
        return;
    };
    let file = temp_file();
    qmp.send_fd_scm(&file).unwrap();
    qmp.execute("getfd", Some(json!({"fdname": "y"}))).unwrap();
    qmp.execute("closefd", Some(json!({"fdname": "y"})))
        .unwrap();
    // Without a descriptor sent first, getfd fails.
    let err = qmp
        .execute("getfd", Some(json!({"fdname": "z"})))
        .unwrap_err();
    assert_eq!(err.error_class(), Some("GenericError"), "{err}");
    drop(qmp);
    assert_no_qemu_left(qemu);
}

// ---- async runtimes, dropping, threads ------------------------------------------

/// Connects on a thread of its own, so the client is made outside any runtime.
fn connect_outside_runtime(name: &str) -> Option<(Client, QemuProcess)> {
    qemu_testkit::qemu_system()?;
    let name = name.to_owned();
    thread::spawn(move || {
        let (qemu, stream) = QemuProcess::system_with_socketpair(&["-S"]);
        let client = Client::builder().name(name).connect(stream).unwrap();
        Some((client, qemu))
    })
    .join()
    .unwrap()
}

/// The message of a panic caught by `catch_unwind`.
fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

/// Asserts that `f` panics with the blocking API's inside-a-runtime message.
fn refused_inside_runtime<T>(what: &str, f: impl FnOnce() -> T) {
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    match caught {
        Ok(_) => panic!("{what}: the blocking API worked inside a runtime"),
        Err(p) => {
            let msg = panic_message(p);
            assert!(
                msg.contains("cannot be used from inside an async runtime"),
                "{what}: {msg}"
            );
        }
    }
}

#[tokio::test]
async fn inside_a_runtime_the_blocking_api_says_so() {
    let Some((mut qmp, qemu)) = connect_outside_runtime("in-rt") else {
        return;
    };
    let (_other, stream) = QemuProcess::system_with_socketpair(&["-S"]);
    refused_inside_runtime("connect", || Client::connect(stream));
    refused_inside_runtime("start_server", || {
        Client::start_server("/nonexistent/x.sock")
    });
    refused_inside_runtime("execute", || qmp.execute("query-status", None));
    refused_inside_runtime("execute_raw", || {
        qmp.execute_raw(object(json!({"execute": "query-status"})))
    });
    refused_inside_runtime("pull_event", || qmp.pull_event(Wait::Forever));
    // Even with an event queued: whether it works must not depend on timing.
    qmp.as_async().execute("cont", None).await.unwrap();
    refused_inside_runtime("pull_event with an event queued", || {
        qmp.pull_event(Wait::Timeout(TIMEOUT))
    });
    assert_eq!(qmp.pull_event(Wait::No).unwrap().unwrap().name(), "RESUME");
    refused_inside_runtime("block_on", || qmp.block_on(async {}));
    // What never blocks works.
    assert_eq!(qmp.pull_event(false).unwrap(), None);
    assert!(qmp.greeting().is_some());
    assert_eq!(qmp.runstate(), Runstate::Running);
    // The async client underneath works here, on the blocking client's connection.
    let status = qmp.as_async().execute("query-status", None).await.unwrap();
    assert_eq!(status["status"], "running");
    // `close` refuses too; the client it consumed is dropped while unwinding, which
    // stops its thread without blocking.
    refused_inside_runtime("close", || qmp.close());
    assert!(
        threads_gone("qmp:in-rt", TIMEOUT),
        "the runtime thread lives on"
    );
    drop(qemu);
}

#[test]
fn dropping_inside_a_runtime_does_not_panic_or_leak() {
    let Some((qmp, qemu)) = connect_outside_runtime("drop-in-rt") else {
        return;
    };
    let mut listener = qmp.listen(Vec::<String>::new());
    assert_eq!(threads_named("qmp:drop-in-rt"), 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move { drop(qmp) });
    // The session was closed, and the runtime's thread exits by itself.
    let err = listener.recv(Some(TIMEOUT)).unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    assert!(
        threads_gone("qmp:drop-in-rt", TIMEOUT),
        "the runtime thread lives on"
    );

    // A server that never accepted, dropped inside a multi-thread runtime.
    let dir = tempfile::tempdir().unwrap();
    let path = socket_path(&dir);
    let server = Client::builder()
        .name("srv-in-rt")
        .start_server(&path)
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    rt.block_on(async move { drop(server) });
    assert!(!path.exists(), "{} left behind", path.display());
    assert!(
        threads_gone("qmp:srv-in-rt", TIMEOUT),
        "the runtime thread lives on"
    );
    assert_no_qemu_left(qemu);
}

#[test]
fn close_and_drop_join_the_runtime_thread() {
    let Some((qmp, qemu)) = connect_outside_runtime("join-close") else {
        return;
    };
    assert_eq!(threads_named("qmp:join-close"), 1);
    qmp.close().unwrap();
    // Joined, so gone at once (the bound only covers the kernel's bookkeeping).
    assert!(threads_gone("qmp:join-close", Duration::from_secs(1)));
    drop(qemu);

    let Some((qmp, qemu)) = connect_outside_runtime("join-drop") else {
        return;
    };
    let mut listener = qmp.listen(Vec::<String>::new());
    assert_eq!(threads_named("qmp:join-drop"), 1);
    drop(qmp);
    assert!(threads_gone("qmp:join-drop", Duration::from_secs(1)));
    // Dropping disconnected.
    assert!(listener.try_recv().is_none());
    assert!(listener.is_closed());
    assert_no_qemu_left(qemu);
}

// ---- measurement ----------------------------------------------------------------

/// Mean and median of the sequential `execute` round trip, in microseconds.
fn measure(mut execute: impl FnMut()) -> (f64, f64) {
    for _ in 0..300 {
        execute();
    }
    let mut samples: Vec<f64> = (0..3000)
        .map(|_| {
            let t = Instant::now();
            execute();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    (mean, samples[samples.len() / 2])
}

/// The sequential `execute` round trip of the blocking client against the async
/// client on a current-thread runtime (the best an async caller can do), on one QEMU,
/// alternating in rounds to cancel out drift. Run with
/// `cargo test --release -p qemu-qmp --test blocking -- --ignored --nocapture round_trip`.
#[test]
#[ignore = "a measurement, not a test"]
fn round_trip() {
    let Some(_) = qemu_testkit::qemu_system() else {
        return;
    };
    let qemu = QemuProcess::system_with_listener(&["-S"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut blocking, mut asynchronous) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let qmp = Client::connect(qemu.qmp_path()).unwrap();
        blocking.push(measure(|| {
            qmp.execute("query-status", None).unwrap();
        }));
        qmp.close().unwrap();

        let qmp = rt
            .block_on(qemu_qmp::Client::connect(qemu.qmp_path()))
            .unwrap();
        asynchronous.push(measure(|| {
            rt.block_on(qmp.execute("query-status", None)).unwrap();
        }));
        rt.block_on(qmp.disconnect()).unwrap();
    }
    for (what, mut rounds) in [("blocking", blocking), ("async", asynchronous)] {
        rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mean, p50) = rounds[rounds.len() / 2];
        eprintln!("{what:>8}: median round: mean {mean:.1} us, p50 {p50:.1} us");
    }
    assert_no_qemu_left(qemu);
}
