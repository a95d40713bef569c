//! The generated types against a real QEMU: the one on `PATH` (10.0) or
//! the one the variables name (7.2, see `.ci/qemu-7.2`). Every `query-*`
//! command without mandatory arguments is called typed and its return must
//! decode; the events the suite provokes must decode to their own variant;
//! a command or member the running QEMU lacks fails locally.

use std::collections::BTreeSet;
use std::time::Duration;

use qemu_qapi::typed::{CallError, TypedClient, TypedListener};
use qemu_qapi::Schema;
use qemu_qapi_types::commands::dispatch;
use qemu_qapi_types::*;
use qemu_testkit::QemuProcess;

const T: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A typed client on a fresh `qemu-system-x86_64` with `args`.
async fn connect(args: &[&str]) -> (TypedClient, QemuProcess) {
    let (qemu, stream) = QemuProcess::system_with_socketpair(args);
    stream.set_nonblocking(true).unwrap();
    let client = qemu_qmp::Client::builder().command_timeout(T).build();
    client
        .connect_to(stream)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", qemu.log()));
    (TypedClient::new(client), qemu)
}

/// True if the command takes no mandatory argument in this schema.
fn takes_nothing_mandatory(schema: &Schema, name: &str) -> bool {
    let arg = schema.arg_type(name).unwrap();
    arg.as_object()
        .is_some_and(|o| o.tag.is_none() && o.members.iter().all(|m| m.is_optional()))
}

fn every_query_decodes(args: &[&str]) {
    runtime().block_on(async {
        let (qmp, qemu) = connect(args).await;
        let schema = qmp.schema().await.unwrap().clone();
        let version = schema.version().unwrap().clone();
        let (mut decoded, mut refused) = (Vec::new(), Vec::new());
        for c in schema.commands() {
            let name = c.name.as_str();
            if !(name.starts_with("query-") || name.starts_with("x-query-")) {
                continue;
            }
            if !takes_nothing_mandatory(&schema, name) {
                continue;
            }
            let unstable = name.starts_with("x-") || qemu_qapi::Featured::is_unstable(c);
            match dispatch::call_without_arguments(&qmp, name).await {
                None if unstable && !cfg!(feature = "unstable") => {}
                None => panic!("{name} ({version}) has no typed command"),
                Some(Ok(())) => decoded.push(name),
                // QEMU's own error (no balloon device, not a PCI machine, ...)
                // is an error, not a decoding failure.
                Some(Err(e)) if e.as_execute_error().is_some() => refused.push(name),
                Some(Err(e)) => panic!("{name} on QEMU {version}: {e}\n{}", qemu.log()),
            }
        }
        eprintln!(
            "QEMU {version} {args:?}: {} queries decoded, {} refused by QEMU: {refused:?}",
            decoded.len(),
            refused.len()
        );
        assert!(decoded.len() >= 40, "{decoded:?}");
        for q in [
            "query-status",
            "query-version",
            "query-commands",
            "query-qmp-schema",
        ] {
            assert!(decoded.contains(&q), "{q}");
        }
    });
}

#[test]
fn every_query_decodes_on_machine_none() {
    qemu_testkit::require_qemu_system!();
    every_query_decodes(&["-machine", "none"]);
}

#[test]
fn every_query_decodes_on_a_pc_machine() {
    qemu_testkit::require_qemu_system!();
    every_query_decodes(&["-machine", "pc", "-S", "-smp", "2", "-m", "64"]);
}

#[test]
fn typed_returns_carry_the_values() {
    qemu_testkit::require_qemu_system!();
    runtime().block_on(async {
        let (qmp, _qemu) = connect(&["-S"]).await;
        let status = qmp.call(QueryStatus::new()).await.unwrap();
        assert!(!status.running);
        assert_eq!(status.status.as_str(), "prelaunch");
        let v = qmp.call(QueryVersion::new()).await.unwrap();
        let live = qmp.schema().await.unwrap().version().unwrap().clone();
        assert_eq!(v.qemu.major, i128::from(live.major as u32));
        assert_eq!(v.qemu.minor, i128::from(live.minor as u32));
        assert_eq!(v.package, live.package);
    });
}

/// Collects events up to the first named `until`, each decoded to its own
/// variant.
async fn events_until(listener: &mut TypedListener<Event>, until: &str) -> Vec<Event> {
    events_until_matching(listener, |e| e.name() == until).await
}

async fn events_until_matching(
    listener: &mut TypedListener<Event>,
    last: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        let e = listener.recv_timeout(T).await.unwrap();
        assert!(
            !matches!(e, Event::Unknown { .. }),
            "an event this crate should know: {e:?}"
        );
        let done = last(&e);
        out.push(e);
        if done {
            return out;
        }
    }
}

#[test]
fn provoked_events_decode() {
    qemu_testkit::require_qemu_system!();
    runtime().block_on(async {
        let (qmp, mut qemu) = connect(&["-S"]).await;
        let mut all = qmp.listen::<Event>();
        let mut stops = qmp.listen::<StopEvent>();
        let raw = qmp.client();

        raw.execute("cont", None).await.unwrap();
        raw.execute("stop", None).await.unwrap();
        let _: StopEvent = stops.recv_timeout(T).await.unwrap();
        raw.execute("system_reset", None).await.unwrap();
        raw.execute("system_powerdown", None).await.unwrap();
        let seen = events_until(&mut all, "POWERDOWN").await;
        let names: Vec<&str> = seen.iter().map(Event::name).collect();
        for n in ["RESUME", "STOP", "RESET", "POWERDOWN"] {
            assert!(names.contains(&n), "{n} in {names:?}");
        }
        let reset = seen
            .iter()
            .find_map(|e| match e {
                Event::Reset(r) => Some(r),
                _ => None,
            })
            .unwrap();
        assert!(!reset.guest);

        // A backup job between two null devices: the job events.
        let mut completed = qmp.listen::<BlockJobCompletedEvent>();
        for node in ["src", "dst"] {
            let null = BlockdevOptionsNull::new().size(1 << 20);
            let opts = BlockdevOptions::new(BlockdevOptionsVariant::NullCo(null)).node_name(node);
            qmp.call(BlockdevAdd::new(opts)).await.unwrap();
        }
        let backup = BlockdevBackup::new("src", MirrorSyncMode::Full, "dst").job_id("j");
        qmp.call(backup).await.unwrap();
        let done = completed.recv_timeout(T).await.unwrap();
        assert_eq!(
            (done.device.as_str(), done.len, done.offset),
            ("j", 1 << 20, 1 << 20)
        );
        assert_eq!(done.type_.as_str(), "backup");
        assert!(done.error.is_none());
        // The job goes on to `null` (it is dismissed automatically).
        let job_events = events_until_matching(
            &mut all,
            |e| matches!(e, Event::JobStatusChange(j) if j.status.as_str() == "null"),
        )
        .await;
        assert!(job_events.iter().any(|e| e.name() == "BLOCK_JOB_COMPLETED"));
        let statuses: BTreeSet<String> = job_events
            .iter()
            .filter_map(|e| match e {
                Event::JobStatusChange(j) => Some(j.status.to_string()),
                _ => None,
            })
            .collect();
        for s in ["created", "running", "pending", "concluded", "null"] {
            assert!(statuses.contains(s), "{s} in {statuses:?}");
        }

        qmp.client().execute("quit", None).await.unwrap();
        let shutdown = events_until(&mut all, "SHUTDOWN").await;
        match shutdown.last() {
            Some(Event::Shutdown(s)) => assert!(!s.guest),
            other => panic!("{other:?}"),
        }
        assert!(qemu.wait_exit(T).is_some());
    });
}

#[test]
fn what_the_running_qemu_lacks_fails_locally() {
    qemu_testkit::require_qemu_system!();
    runtime().block_on(async {
        let (qmp, _qemu) = connect(&["-S"]).await;
        let version = qmp.schema().await.unwrap().version().unwrap().clone();
        // `query-audiodevs` came with 8.0.
        let r = qmp.call(QueryAudiodevs::new()).await;
        if version.at_least(8, 0) {
            r.unwrap();
        } else {
            let e = r.unwrap_err();
            assert!(e.is_unsupported(), "{e}");
            let text = e.to_string();
            assert!(
                text.contains("query-audiodevs") && text.contains(&version.to_string()),
                "{text}"
            );
        }
        // `active` of `blockdev-add` came with 10.0.
        let opts = BlockdevOptions::new(BlockdevOptionsVariant::NullCo(BlockdevOptionsNull::new()))
            .node_name("n")
            .active(true);
        let r = qmp.call(BlockdevAdd::new(opts)).await;
        if version.at_least(10, 0) {
            r.unwrap();
        } else {
            match r.unwrap_err() {
                CallError::Unsupported { version: v, error } => {
                    assert_eq!(v.as_ref(), Some(&version));
                    assert_eq!(error.command, "blockdev-add");
                    assert_eq!(error.path, "arguments.active");
                }
                other => panic!("{other}"),
            }
            // Nothing was sent: the node does not exist.
            let nodes = qmp.call(QueryNamedBlockNodes::new()).await.unwrap();
            assert!(nodes.is_empty());
        }
    });
}

/// Hand-written JSON through `TypedClient::execute` is checked against the
/// live schema: refused locally with the path of the problem, or sent.
#[test]
fn untyped_json_is_checked_when_asked() {
    qemu_testkit::require_qemu_system!();
    runtime().block_on(async {
        let (qmp, _qemu) = connect(&["-S"]).await;
        let wrong = serde_json::json!({"driver": "null-co", "node-name": 1});
        match qmp.execute("blockdev-add", Some(wrong)).await.unwrap_err() {
            CallError::Unsupported { error, .. } => {
                assert_eq!(error.path, "arguments.node-name");
                assert_eq!(
                    error.to_string(),
                    "blockdev-add: arguments.node-name: expected string, got integer"
                );
            }
            other => panic!("{other}"),
        }
        let e = qmp.execute("query-stauts", None).await.unwrap_err();
        assert!(e.is_unsupported());
        assert!(e.to_string().contains("did you mean 'query-status'"), "{e}");
        // Nothing was sent: no node.
        let nodes = qmp.call(QueryNamedBlockNodes::new()).await.unwrap();
        assert!(nodes.is_empty());
        let right = serde_json::json!({"driver": "null-co", "node-name": "n"});
        qmp.execute("blockdev-add", Some(right)).await.unwrap();
        let status = qmp.execute("query-status", None).await.unwrap();
        assert_eq!(status["status"], "prelaunch");
    });
}
