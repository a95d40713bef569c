//! Typed calls and events through the blocking client
//! (`qemu_qapi::typed::blocking`), against the `qemu-system-x86_64` on `PATH`
//! (10.0) or the one `QEMU_SYSTEM_X86_64` names (7.2, see `.ci/qemu-7.2`).
//! Version-specific facts are asserted where the binary has them.

use std::time::Duration;

use qemu_qapi::typed::blocking::TypedClient;
use qemu_qapi::typed::CallError;
use qemu_qapi_types::{
    Cont, DeviceDel, Event, QueryAudiodevs, QueryStatus, ResumeEvent, RunState, Stop, StopEvent,
};
use qemu_testkit::QemuProcess;

/// Generous bound for anything QEMU does, for slow CI machines.
const T: Duration = Duration::from_secs(10);

/// QEMU (`-machine none`, plus `args`) with a blocking typed client on its
/// QMP monitor. Drop the client before the QEMU (declaration order).
fn qemu(args: &[&str]) -> (TypedClient, QemuProcess, qemu_testkit::QemuVersion) {
    qemu_testkit::init_tracing();
    let binary = qemu_testkit::qemu_system().expect("checked by require_qemu_system!");
    let version = qemu_testkit::version_of(&binary);
    let (qemu, stream) = QemuProcess::system_with_socketpair(args);
    let client = qemu_qmp::blocking::Client::builder()
        .command_timeout(T)
        .connect(stream)
        .unwrap_or_else(|e| panic!("connect: {e}\nQEMU log:\n{}", qemu.log()));
    (TypedClient::new(client), qemu, version)
}

#[test]
fn call_decodes_the_return() {
    qemu_testkit::require_qemu_system!();
    let (qmp, _qemu, version) = qemu(&["-S"]);
    let status = qmp.call(QueryStatus::new()).unwrap();
    assert!(!status.running);
    assert_eq!(status.status, RunState::Prelaunch);
    // The schema the call was checked against is this QEMU's, kept.
    let schema = qmp.schema().unwrap();
    let v = schema.version().expect("a fetched schema has a version");
    assert_eq!(
        (v.major, v.minor, v.micro),
        (
            version.major.into(),
            version.minor.into(),
            version.micro.into()
        )
    );
    assert!(std::ptr::eq(schema, qmp.schema().unwrap()));
}

#[test]
fn the_gate_refuses_what_this_qemu_lacks() {
    qemu_testkit::require_qemu_system!();
    let (qmp, _qemu, version) = qemu(&[]);
    let result = qmp.call(QueryAudiodevs::new());
    if version.at_least(10, 0) {
        // No `-audiodev`: none.
        assert_eq!(result.unwrap(), vec![]);
        qmp.check(&QueryAudiodevs::new()).unwrap();
    } else {
        let e = result.unwrap_err();
        assert!(e.is_unsupported(), "{e:?}");
        assert!(matches!(e, CallError::Unsupported { .. }));
        let message = e.to_string();
        assert!(message.contains("query-audiodevs"), "{message}");
        assert!(
            message.contains(&format!("{}.{}", version.major, version.minor)),
            "{message}"
        );
        assert!(qmp
            .check(&QueryAudiodevs::new())
            .unwrap_err()
            .is_unsupported());
        // Refused locally: the session goes on.
        assert!(qmp.call(QueryStatus::new()).unwrap().running);
    }
    // `call_unchecked` sends it all the same; QEMU 7.2 answers CommandNotFound.
    match qmp.call_unchecked(QueryAudiodevs::new()) {
        Ok(devs) => {
            assert!(version.at_least(10, 0));
            assert!(devs.is_empty());
        }
        Err(e) => {
            assert!(!version.at_least(10, 0), "{e}");
            assert_eq!(e.error_class(), Some("CommandNotFound"), "{e:?}");
        }
    }
}

#[test]
fn an_error_reply_is_a_qmp_error() {
    qemu_testkit::require_qemu_system!();
    let (qmp, _qemu, _) = qemu(&["-S"]);
    let e = qmp.call(DeviceDel::new("no-such-device")).unwrap_err();
    assert_eq!(e.error_class(), Some("DeviceNotFound"), "{e:?}");
    assert!(e.as_execute_error().is_some());
    assert!(!e.is_unsupported());
}

#[test]
fn a_typed_listener_gets_stop_and_resume() {
    qemu_testkit::require_qemu_system!();
    let (qmp, _qemu, _) = qemu(&[]);
    let mut stops = qmp.listen::<StopEvent>();
    let mut all = qmp.listen::<Event>();
    qmp.call(Stop::new()).unwrap();
    let (StopEvent { .. }, raw) = stops.recv_event(Some(T)).unwrap();
    assert_eq!(raw.name(), "STOP");
    assert!(!qmp.call(QueryStatus::new()).unwrap().running);
    qmp.call(Cont::new()).unwrap();
    // The listener for every event gets both, in order; the STOP listener
    // only STOP.
    assert!(matches!(all.recv(Some(T)).unwrap(), Event::Stop(_)));
    assert!(matches!(
        all.recv_timeout(T).unwrap(),
        Event::Resume(ResumeEvent { .. })
    ));
    assert!(stops.try_recv().is_none());
    // Nothing more comes: a short wait times out.
    let e = stops.recv(Some(Duration::from_millis(50))).unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    assert!(!e.is_disconnected());
}

#[test]
fn a_listener_sees_the_session_end() {
    qemu_testkit::require_qemu_system!();
    let (qmp, _qemu, _) = qemu(&[]);
    let mut shutdowns = qmp.listen::<qemu_qapi_types::ShutdownEvent>();
    let mut stops = qmp.listen::<StopEvent>();
    // QEMU replies before it exits; should the reply be lost to the hangup,
    // the call fails as a disconnect.
    if let Err(e) = qmp.call(qemu_qapi_types::Quit::new()) {
        assert!(e.is_disconnected(), "{e:?}");
    }
    shutdowns.recv(Some(T)).unwrap();
    let e = stops.recv(Some(T)).unwrap_err();
    assert!(e.is_disconnected(), "{e:?}");
}
