//! Typed calls and events of a [`QemuMachine`], against the
//! `qemu-system-x86_64` on `PATH` (10.0) or the one `QEMU_SYSTEM_X86_64` names
//! (7.2, see `.ci/qemu-7.2`). Version-specific facts are asserted where the
//! binary has them.

use std::time::Duration;

use qemu_machine::{MachineError, QemuMachine};
use qemu_qapi::typed::CallError;
use qemu_qapi_types::{
    Cont, DeviceDel, Event, QueryAudiodevs, QueryStatus, Quit, RunState, Stop, StopEvent,
};
use qemu_testkit::QemuVersion;
use serde_json::json;

const T: Duration = Duration::from_secs(10);

/// A `-machine none` QEMU, and its version.
async fn machine() -> Option<(QemuMachine, QemuVersion)> {
    qemu_testkit::init_tracing();
    let qemu = qemu_testkit::qemu_system()?;
    let version = qemu_testkit::version_of(&qemu);
    let vm = QemuMachine::builder(&qemu)
        .machine_type("none")
        .launch()
        .await
        .unwrap();
    Some((vm, version))
}

#[tokio::test]
async fn call_decodes_and_is_checked_against_the_schema() {
    let Some((vm, version)) = machine().await else {
        return;
    };
    let status = vm.call(QueryStatus::new()).await.unwrap();
    assert!(status.running);
    assert_eq!(status.status, RunState::Running);
    let schema = vm.schema().await.unwrap();
    let v = schema.version().expect("a fetched schema has a version");
    assert_eq!(
        (v.major, v.minor, v.micro),
        (
            version.major.into(),
            version.minor.into(),
            version.micro.into()
        )
    );
    // Fetched once for the machine.
    assert!(std::ptr::eq(schema, vm.schema().await.unwrap()));
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_gate_refuses_what_this_qemu_lacks() {
    let Some((vm, version)) = machine().await else {
        return;
    };
    let result = vm.call(QueryAudiodevs::new()).await;
    if version.at_least(10, 0) {
        assert_eq!(result.unwrap(), vec![]);
        vm.check(&QueryAudiodevs::new()).await.unwrap();
    } else {
        let e = result.unwrap_err();
        assert!(e.is_unsupported(), "{e:?}");
        assert!(matches!(
            e,
            MachineError::Call {
                command: "query-audiodevs",
                source: CallError::Unsupported { .. }
            }
        ));
        let message = e.to_string();
        assert!(message.contains("query-audiodevs"), "{message}");
        assert!(
            message.contains(&format!("{}.{}", version.major, version.minor)),
            "{message}"
        );
        assert!(e.qmp_error().is_none());
        assert!(!e.is_timeout() && !e.is_disconnected());
        let e = vm.check(&QueryAudiodevs::new()).await.unwrap_err();
        assert!(e.is_unsupported(), "{e:?}");
        let e = vm.call_unchecked(QueryAudiodevs::new()).await.unwrap_err();
        assert_eq!(e.error_class(), Some("CommandNotFound"), "{e:?}");
    }
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_error_helpers_look_through_a_typed_call() {
    let Some((vm, _)) = machine().await else {
        return;
    };
    let e = vm.call(DeviceDel::new("no-such-device")).await.unwrap_err();
    assert_eq!(e.error_class(), Some("DeviceNotFound"), "{e:?}");
    assert!(e.as_execute_error().is_some());
    assert!(e.qmp_error().is_some());
    assert!(!e.is_unsupported());
    assert!(e.as_call_error().is_some());
    assert!(e.to_string().contains("device_del"), "{e}");
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn typed_event_waits() {
    let Some((vm, _)) = machine().await else {
        return;
    };
    vm.call(Stop::new()).await.unwrap();
    let stop: Option<StopEvent> = vm.event_wait_typed(T, None).await.unwrap();
    assert!(stop.is_some());
    vm.call(Cont::new()).await.unwrap();
    // Any event, as the generated enum: the RESUME (the STOP was taken).
    let any: Option<Event> = vm.event_wait_typed(T, None).await.unwrap();
    assert!(matches!(any, Some(Event::Resume(_))), "{any:?}");
    // A pattern that no event matches: nothing, at once for a zero timeout.
    vm.call(Stop::new()).await.unwrap();
    let none: Option<StopEvent> = vm
        .event_wait_typed(Duration::ZERO, Some(json!({"data": {"no-such-member": 1}})))
        .await
        .unwrap();
    assert!(none.is_none());
    // The STOP passed over is kept for the untyped wait.
    assert!(vm.event_wait("STOP", T, None).await.unwrap().is_some());
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_typed_quit_is_a_graceful_shutdown() {
    let Some((vm, _)) = machine().await else {
        return;
    };
    if let Err(e) = vm.call(Quit::new()).await {
        assert!(e.is_disconnected(), "{e:?}");
    }
    vm.shutdown().await.unwrap();
    assert_eq!(vm.exit_code(), Some(0));
    // After shutdown, a typed call fails as a disconnect.
    let e = vm.call_unchecked(QueryStatus::new()).await.unwrap_err();
    assert!(e.is_disconnected(), "{e:?}");
}
