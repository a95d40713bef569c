//! The guest agent inside a real guest: qemu-testkit's test guest booted with a
//! virtio-serial port for its `qemu-ga`, driven through the library
//! (`qemu_tools::ga::GuestAgent`, the guest-agent dialect of `qemu-qmp`) and the
//! `qemu-ga-client` binary. Inside the guest nothing is blocked: `guest-exec`,
//! file writes, `guest-set-time`, file system freezing and `guest-shutdown` act on
//! the guest alone, so they run for real here (on the host, `tests/ga.rs` may only
//! use read-only commands).
//!
//! Skipped (with a `SKIPPED:` line) without `qemu-system-x86_64`, `qemu-ga` or a way
//! to build the image; under `CI=true` that fails instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use qemu_machine::QemuMachine;
use qemu_testkit::guest::{guest_image, GUEST_AGENT_PORT};
use qemu_tools::ga::GuestAgent;
use serde_json::json;

const GA: &str = env!("CARGO_BIN_EXE_qemu-ga-client");
/// Generous: under TCG on a loaded 2-core machine a boot takes 5 to 15 s.
const BOOT: Duration = Duration::from_secs(120);
/// For each agent reply: a TCG guest is slow to schedule `qemu-ga`.
const REPLY: Duration = Duration::from_secs(30);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `qemu-ga-client --address SOCK --timeout 30 ARGS...`, on a blocking thread,
/// killed after 2 minutes.
async fn client(sock: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(GA);
    cmd.arg("--address")
        .arg(sock)
        .args(["--timeout", "30"])
        .args(args)
        .env_remove("QGA_CLIENT_ADDRESS")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("qemu-ga-client {args:?}");
    let out = tokio::task::spawn_blocking(move || {
        qemu_testkit::output_within(&mut cmd, Duration::from_secs(120), &what)
    })
    .await
    .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(run: Run) -> String {
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    run.stdout
}

fn qemu() -> Option<PathBuf> {
    qemu_testkit::init_tracing();
    qemu_testkit::qemu_system()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_in_a_booted_guest_runs_what_the_host_must_block() {
    let Some(qemu) = qemu() else { return };
    let Some(image) = guest_image() else { return };
    let base = qemu_testkit::tempdir("ga-guest-");
    let sock = base.path().join("qga.sock");
    let vm = QemuMachine::builder(&qemu)
        .machine_type("pc")
        .base_temp_dir(base.path())
        .args(image.qemu_args(""))
        .args([
            "-chardev".to_owned(),
            format!("socket,id=qga,path={},server=on,wait=off", sock.display()),
            "-device".to_owned(),
            "virtio-serial".to_owned(),
            "-device".to_owned(),
            format!("virtserialport,chardev=qga,id=qga0,name={GUEST_AGENT_PORT}"),
        ])
        .console(true)
        .launch()
        .await
        .unwrap();
    // QEMU says when the guest opened its end: qemu-ga is up.
    let open = vm
        .event_wait(
            "VSERPORT_CHANGE",
            BOOT,
            Some(json!({"data": {"id": "qga0", "open": true}})),
        )
        .await
        .unwrap();
    assert!(
        open.is_some(),
        "qemu-ga never opened its port; console:\n{}",
        vm.console_output().unwrap_or_default()
    );

    // ---- the library ----
    let ga = GuestAgent::connect(sock.as_path(), REPLY).await.unwrap();
    ga.ping().await.unwrap();
    let info = ga.info().await.unwrap();
    let version = qemu_testkit::version_of(&qemu_testkit::qemu_ga().unwrap());
    assert!(
        info.version
            .starts_with(&format!("{}.{}", version.major, version.minor)),
        "agent {} vs {version:?}",
        info.version
    );
    for command in [
        "guest-exec",
        "guest-shutdown",
        "guest-set-time",
        "guest-file-write",
    ] {
        let c = info.commands.iter().find(|c| c.name == command);
        assert!(c.is_some_and(|c| c.enabled), "{command}: {c:?}");
    }

    // guest-exec: output, error output and exit status of a guest program.
    let status = ga
        .exec(
            "/bin/sh",
            &["-c".into(), "uname -s; echo oops >&2; exit 3".into()],
            REPLY,
        )
        .await
        .unwrap();
    assert_eq!(status.exit_code, Some(3), "{status:?}");
    assert_eq!(String::from_utf8_lossy(&status.stdout), "Linux\n");
    assert_eq!(String::from_utf8_lossy(&status.stderr), "oops\n");

    // guest-file-open/write/close, then read back.
    let handle = ga
        .execute(
            "guest-file-open",
            Some(json!({"path": "/tmp/from-host.txt", "mode": "w"})),
        )
        .await
        .unwrap();
    // "written by qemu-rs\n"
    let wrote = ga
        .execute(
            "guest-file-write",
            Some(json!({"handle": handle, "buf-b64": "d3JpdHRlbiBieSBxZW11LXJzCg=="})),
        )
        .await
        .unwrap();
    assert_eq!(wrote["count"], 19, "{wrote}");
    ga.execute("guest-file-close", Some(json!({"handle": handle})))
        .await
        .unwrap();
    assert_eq!(
        ga.read_file("/tmp/from-host.txt").await.unwrap(),
        b"written by qemu-rs\n"
    );

    // guest-set-time: the guest's clock (and its RTC, through hwclock) moves.
    let target: i64 = 2_051_222_400; // 2035-01-01T00:00:00Z
    ga.execute(
        "guest-set-time",
        Some(json!({"time": target * 1_000_000_000})),
    )
    .await
    .unwrap();
    let now = ga.execute("guest-get-time", None).await.unwrap();
    let secs = now.as_i64().unwrap() / 1_000_000_000;
    assert!((target..target + 120).contains(&secs), "guest time {secs}");
    let year = ga
        .exec("/bin/date", &["-u".into(), "+%Y".into()], REPLY)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&year.stdout), "2035\n");

    // File system freezing: the guest has only virtual file systems (devtmpfs,
    // tmpfs, the initramfs), which the agent skips: nothing to freeze, and the
    // agent does not stay frozen for nothing.
    assert_eq!(ga.fsfreeze_status().await.unwrap(), "thawed");
    assert_eq!(ga.fsfreeze_freeze().await.unwrap(), 0);
    assert_eq!(ga.fsfreeze_status().await.unwrap(), "thawed");
    assert_eq!(ga.fsfreeze_thaw().await.unwrap(), 0);
    assert_eq!(ga.fsfreeze_status().await.unwrap(), "thawed");
    ga.disconnect().await;

    // ---- the binary, on the same agent ----
    assert_eq!(ok(client(&sock, &["ping"]).await), "");
    let info = ok(client(&sock, &["info"]).await);
    assert!(
        info.starts_with(&format!("version: {}.{}", version.major, version.minor)),
        "{info}"
    );
    assert!(info.contains("guest-exec"), "{info}");
    let cat = ok(client(&sock, &["cat", "/tmp/from-host.txt"]).await);
    assert_eq!(cat, "written by qemu-rs\n");
    let run = client(&sock, &["exec", "/bin/sh", "-c", "echo $((6 * 7)); exit 5"]).await;
    assert_eq!(run.code, Some(5), "{}", run.stderr);
    assert_eq!(run.stdout, "42\n");
    assert_eq!(
        ok(client(&sock, &["fsfreeze", "status"]).await).trim(),
        "thawed"
    );

    // guest-shutdown (the tool's powerdown): the guest powers itself off.
    ok(client(&sock, &["powerdown"]).await);
    let shutdown = vm
        .event_wait(
            "SHUTDOWN",
            BOOT,
            Some(json!({"data": {"guest": true, "reason": "guest-shutdown"}})),
        )
        .await
        .unwrap();
    assert!(
        shutdown.is_some(),
        "no SHUTDOWN from the guest; console:\n{}",
        vm.console_output().unwrap_or_default()
    );
    let status = vm.wait(BOOT).await.unwrap();
    assert!(status.success(), "{status:?}");
}
