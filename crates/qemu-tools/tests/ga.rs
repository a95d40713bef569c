//! The `qemu-ga-client` binary against a real `qemu-ga` (read-only commands only) and
//! against the QMP test server in guest-agent mode (everything that would change the
//! machine).
//!
//! SAFETY: a `qemu-ga` started here acts on the machine running the tests. It is
//! started with `--block-rpcs` covering every command that changes anything, and only
//! read-only commands are sent to it. `guest-file-open` is allowed because the client
//! opens files with mode `r` only; `guest-file-write`, `-seek` and `-flush` are
//! blocked all the same.
//!
//! Tests that need `qemu-ga` print `SKIPPED: ...` without it, and fail under
//! `CI=true`. Every run of the binary has a deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qemu_qmp::json::Ordered;
use qemu_qmp::server::{Fault, Reply, TestServer, TestServerBuilder};
use qemu_qmp::{json, JsonObject, Value};
use qemu_testkit::{output_within, GA_BLOCKED_RPCS};

const GA: &str = env!("CARGO_BIN_EXE_qemu-ga-client");
/// Deadline for one run of the binary.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

struct Run {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn ok(&self) -> String {
        assert!(
            self.status.success(),
            "failed with {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout(),
            self.stderr
        );
        self.stdout()
    }

    fn fails(&self) -> &str {
        assert_eq!(
            self.status.code(),
            Some(1),
            "expected exit status 1\nstdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr
        );
        &self.stderr
    }
}

/// Run the client with `args` and `env` (QGA_CLIENT_ADDRESS removed otherwise),
/// killing it after RUN_TIMEOUT.
fn run_with(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(GA);
    cmd.args(args)
        .env_remove("QGA_CLIENT_ADDRESS")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let out = output_within(&mut cmd, RUN_TIMEOUT, &format!("qemu-ga-client {args:?}"));
    Run {
        status: out.status,
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

fn ga(address: &Path, args: &[&str]) -> Run {
    let address = address.to_str().expect("UTF-8 path");
    let mut all = vec!["--address", address];
    all.extend_from_slice(args);
    run_with(&all, &[])
}

#[test]
fn read_only_commands_against_a_real_agent() {
    let Some((agent, sock, dir)) = qemu_testkit::start_agent(&[]) else {
        return;
    };
    let version = Command::new(qemu_testkit::qemu_ga().unwrap())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();

    // info: the version, then the enabled and disabled commands.
    let info = ga(&sock, &["info"]);
    let out = info.ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}\nagent log:\n{}", agent.log());
    let v = lines[0].strip_prefix("version: ").expect("version line");
    assert!(version.contains(v), "{v} vs {version}");
    assert_eq!(lines[1], "supported_commands:");
    let enabled: Vec<&str> = lines[2]
        .strip_prefix("\tenabled: ")
        .expect("enabled line")
        .split(", ")
        .collect();
    let disabled: Vec<&str> = lines[3]
        .strip_prefix("\tdisabled: ")
        .expect("disabled line")
        .split(", ")
        .collect();
    for c in [
        "guest-ping",
        "guest-info",
        "guest-file-open",
        "guest-get-osinfo",
    ] {
        assert!(enabled.contains(&c), "{c} not enabled: {enabled:?}");
    }
    for &c in GA_BLOCKED_RPCS {
        assert!(disabled.contains(&c), "{c} not disabled: {disabled:?}");
    }

    // ping: silent success; the address may come from the environment.
    assert_eq!(ga(&sock, &["ping"]).ok(), "");
    assert_eq!(ga(&sock, &["ping", "5"]).ok(), "");
    let r = run_with(&["ping"], &[("QGA_CLIENT_ADDRESS", sock.to_str().unwrap())]);
    assert_eq!(r.ok(), "");

    // cat: the bytes as they are, over several reads.
    let file = dir.path().join("data.bin");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let r = ga(&sock, &["cat", file.to_str().unwrap()]);
    r.ok();
    assert!(r.stdout == data, "cat returned {} bytes", r.stdout.len());
    let text = dir.path().join("hello.txt");
    std::fs::write(&text, "hello\nworld\n").unwrap();
    assert_eq!(
        ga(&sock, &["cat", text.to_str().unwrap()]).ok(),
        "hello\nworld\n"
    );
    let missing = dir.path().join("missing.txt");
    let r = ga(&sock, &["cat", missing.to_str().unwrap()]);
    let msg = r.fails();
    assert!(msg.starts_with("qemu-ga-client: "), "{msg}");
    assert!(
        msg.contains("missing.txt") && msg.contains("No such file"),
        "{msg}"
    );
    // The file the client read is untouched.
    assert_eq!(std::fs::read(&file).unwrap(), data);

    // ifconfig: interface blocks as Python's tool prints them.
    let out = ga(&sock, &["ifconfig"]).ok();
    assert!(out.lines().any(|l| l == "lo:"), "{out}");
    for line in out.lines() {
        assert!(
            (line.ends_with(':') && !line.starts_with('\t'))
                || line.starts_with("\tinet ")
                || line.starts_with("\tinet6 ")
                || line.starts_with("\tether "),
            "unexpected line {line:?} in\n{out}"
        );
        if let Some(rest) = line.strip_prefix("\tinet ") {
            assert!(rest.contains("  netmask "), "{line:?}");
        }
        if let Some(rest) = line.strip_prefix("\tinet6 ") {
            assert!(rest.contains("  prefixlen "), "{line:?}");
        }
        assert_ne!(line, "\tether 00:00:00:00:00:00");
    }

    // osinfo: `key: value` lines, the kernel release among them.
    let out = ga(&sock, &["osinfo"]).ok();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    assert!(
        out.lines()
            .any(|l| l == format!("kernel-release: {}", release.trim())),
        "{out}"
    );
    // The members in the order the agent writes them.
    let keys: Vec<&str> = out
        .lines()
        .map(|l| l.split_once(": ").map_or(l, |(k, _)| k))
        .collect();
    assert_eq!(keys, raw_return_keys(&sock, "guest-get-osinfo"), "{out}");

    // fsfreeze status is read-only.
    assert_eq!(ga(&sock, &["fsfreeze", "status"]).ok(), "thawed\n");
    drop(agent);
}

// ---- commands that change the guest, against the test server ---------------------

/// The agent's resynchronisation: `0xFF` and the id back, as `qemu-ga` answers
/// `guest-sync-delimited`.
fn sync_delimited(args: &JsonObject) -> Reply {
    let id = args.get("id").cloned().unwrap_or(Value::Null);
    let mut bytes = vec![0xFF];
    bytes.extend_from_slice(format!("{{\"return\": {id}}}\r\n").as_bytes());
    Reply::Fault(Fault::Garbage(bytes))
}

struct FakeAgent {
    server: TestServer,
    rt: tokio::runtime::Runtime,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl FakeAgent {
    fn start(builder: TestServerBuilder) -> FakeAgent {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let server = {
            let _in_runtime = rt.enter();
            builder
                .no_greeting()
                .handler("guest-sync-delimited", sync_delimited)
                .bind_unix(&path)
                .unwrap()
        };
        FakeAgent {
            server,
            rt,
            path,
            _dir: dir,
        }
    }

    fn run(&self, args: &[&str]) -> Run {
        ga(&self.path, args)
    }

    /// The commands received, without the resynchronisations.
    fn commands(&self) -> Vec<(String, Value)> {
        self.server
            .take_received()
            .into_iter()
            .filter_map(|r| {
                let name = r.get("execute").and_then(Value::as_str)?.to_owned();
                (name != "guest-sync-delimited")
                    .then(|| (name, r.get("arguments").cloned().unwrap_or(Value::Null)))
            })
            .collect()
    }

    fn stop(self) {
        self.rt.block_on(self.server.shutdown());
    }
}

/// The names of the members of the agent's `return` object for `command`, in the
/// order the agent wrote them, read over a connection of the test's own.
fn raw_return_keys(sock: &Path, command: &str) -> Vec<String> {
    let line = qemu_testkit::RawQmp::agent(sock).command(&format!(r#"{{"execute": "{command}"}}"#));
    let reply = Ordered::parse(line.as_bytes()).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    reply
        .get("return")
        .and_then(Ordered::members)
        .unwrap_or_else(|| panic!("not an object: {line}"))
        .iter()
        .map(|(k, _)| k.clone())
        .collect()
}

#[test]
fn fsfreeze_and_fstrim() {
    let fake = FakeAgent::start(
        TestServer::builder()
            .handler("guest-fsfreeze-freeze", |_| Reply::Return(json!(3)))
            .handler("guest-fsfreeze-thaw", |_| Reply::Return(json!(3)))
            .handler("guest-fsfreeze-status", |_| Reply::Return(json!("frozen")))
            .handler("guest-fstrim", |_| {
                Reply::Return(json!({"paths": [{"path": "/", "trimmed": 4096, "minimum": 0}]}))
            }),
    );
    assert_eq!(
        fake.run(&["fsfreeze", "freeze"]).ok(),
        "3 filesystems frozen\n"
    );
    assert_eq!(fake.run(&["fsfreeze", "status"]).ok(), "frozen\n");
    assert_eq!(
        fake.run(&["fsfreeze", "thaw"]).ok(),
        "3 filesystems thawed\n"
    );
    assert_eq!(
        fake.run(&["fstrim", "65536"]).ok(),
        "{'paths': [{'minimum': 0, 'path': '/', 'trimmed': 4096}]}\n"
    );
    fake.run(&["fstrim"]).ok();
    let cmds = fake.commands();
    assert_eq!(
        cmds,
        [
            ("guest-fsfreeze-freeze".to_owned(), Value::Null),
            ("guest-fsfreeze-status".to_owned(), Value::Null),
            ("guest-fsfreeze-thaw".to_owned(), Value::Null),
            ("guest-fstrim".to_owned(), json!({"minimum": 65536})),
            ("guest-fstrim".to_owned(), json!({"minimum": 0})),
        ]
    );
    // A refused freeze is an error with the agent's words.
    let r = fake.run(&["fsfreeze", "bogus"]);
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    fake.stop();

    let fake = FakeAgent::start(TestServer::builder().handler("guest-fsfreeze-freeze", |_| {
        Reply::error(
            "GenericError",
            "failed to freeze /: Operation not supported",
        )
    }));
    let r = fake.run(&["fsfreeze", "freeze"]);
    assert_eq!(
        r.fails(),
        "qemu-ga-client: guest-fsfreeze-freeze: failed to freeze /: Operation not supported\n"
    );
    fake.stop();
}

#[test]
fn shutdown_reboot_halt_and_suspend() {
    // A real agent sends no reply when it carries these out.
    let fake = FakeAgent::start(
        TestServer::builder()
            .handler("guest-shutdown", |_| Reply::NoReply)
            .handler("guest-suspend-ram", |_| Reply::NoReply)
            .handler("guest-suspend-disk", |_| Reply::Fault(Fault::Disconnect))
            .handler("guest-suspend-hybrid", |_| Reply::Return(json!({}))),
    );
    for (cmd, mode) in [
        ("shutdown", "powerdown"),
        ("powerdown", "powerdown"),
        ("reboot", "reboot"),
        ("halt", "halt"),
    ] {
        let r = fake.run(&["--timeout", "0.5", cmd]);
        assert_eq!(r.ok(), "", "{cmd}");
        assert!(
            r.elapsed < Duration::from_secs(10),
            "{cmd}: {:?}",
            r.elapsed
        );
        assert_eq!(
            fake.commands(),
            [("guest-shutdown".to_owned(), json!({ "mode": mode }))],
            "{cmd}"
        );
    }
    for mode in ["ram", "disk", "hybrid"] {
        assert_eq!(fake.run(&["--timeout", "0.5", "suspend", mode]).ok(), "");
        let cmds = fake.commands();
        assert_eq!(cmds.len(), 1, "{cmds:?}");
        assert_eq!(cmds[0].0, format!("guest-suspend-{mode}"));
    }
    let r = fake.run(&["suspend", "sleep"]);
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    fake.stop();

    // An error reply is a failure, with the agent's words.
    let fake = FakeAgent::start(TestServer::builder().handler("guest-shutdown", |_| {
        Reply::error(
            "CommandNotFound",
            "Command guest-shutdown has been disabled",
        )
    }));
    let r = fake.run(&["shutdown"]);
    assert_eq!(
        r.fails(),
        "qemu-ga-client: guest-shutdown: Command guest-shutdown has been disabled\n"
    );
    fake.stop();
}

#[test]
fn exec_prints_output_and_exits_with_the_status() {
    let polls = Arc::new(AtomicUsize::new(0));
    let p = polls.clone();
    let fake = FakeAgent::start(
        TestServer::builder()
            .handler("guest-exec", |_| Reply::Return(json!({"pid": 4242})))
            .handler("guest-exec-status", move |args| {
                if args.get("pid") != Some(&json!(4242)) {
                    return Reply::error("GenericError", "Invalid parameter 'pid'");
                }
                // Running for the first two polls.
                if p.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Reply::Return(json!({"exited": false}));
                }
                Reply::Return(json!({
                    "exited": true,
                    "exitcode": 3,
                    "out-data": "aGVsbG8K",   // "hello\n"
                    "err-data": "b29wcwo=",   // "oops\n"
                }))
            }),
    );
    let r = fake.run(&["exec", "ls", "-l", "--", "/tmp"]);
    assert_eq!(r.status.code(), Some(3), "{}", r.stderr);
    assert_eq!(r.stdout(), "hello\n");
    assert_eq!(r.stderr, "oops\nexitcode: 3\n");
    assert_eq!(polls.load(Ordering::SeqCst), 3);
    let cmds = fake.commands();
    assert_eq!(
        cmds[0],
        (
            "guest-exec".to_owned(),
            json!({"path": "ls", "arg": ["-l", "--", "/tmp"], "capture-output": true})
        )
    );
    assert!(cmds[1..]
        .iter()
        .all(|(n, a)| n == "guest-exec-status" && *a == json!({"pid": 4242})));
    fake.stop();

    // Killed by a signal; no output.
    let fake = FakeAgent::start(
        TestServer::builder()
            .handler("guest-exec", |_| Reply::Return(json!({"pid": 7})))
            .handler("guest-exec-status", |_| {
                Reply::Return(json!({"exited": true, "signal": 9}))
            }),
    );
    let r = fake.run(&["exec", "/bin/true"]);
    assert_eq!(r.status.code(), Some(128 + 9), "{}", r.stderr);
    assert_eq!(r.stdout(), "");
    assert_eq!(r.stderr, "signal: 9\n");
    fake.stop();

    // A process that never ends: the wait is bounded.
    let fake = FakeAgent::start(
        TestServer::builder()
            .handler("guest-exec", |_| Reply::Return(json!({"pid": 99})))
            .handler("guest-exec-status", |_| {
                Reply::Return(json!({"exited": false}))
            }),
    );
    let r = fake.run(&["exec", "--wait", "0.5", "sleep", "1000"]);
    let msg = r.fails();
    assert!(
        msg.contains("99") && msg.contains("did not finish"),
        "{msg}"
    );
    assert!(r.elapsed < Duration::from_secs(10), "{:?}", r.elapsed);

    // Malformed base64 from the peer is an error, not a crash.
    fake.stop();
    let fake = FakeAgent::start(
        TestServer::builder()
            .handler("guest-exec", |_| Reply::Return(json!({"pid": 1})))
            .handler("guest-exec-status", |_| {
                Reply::Return(json!({"exited": true, "exitcode": 0, "out-data": "!!!"}))
            }),
    );
    let r = fake.run(&["exec", "x"]);
    assert!(r.fails().contains("malformed reply"), "{}", r.stderr);
    fake.stop();
}

#[test]
fn a_missing_agent_fails_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.sock");
    // Bound and listening, never accepting: the connection waits in the backlog and
    // nobody ever answers.
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();

    let r = ga(&path, &["ping", "1"]);
    assert_eq!(r.fails(), "qemu-ga-client: Not responded in 1 sec\n");
    assert!(
        r.elapsed >= Duration::from_millis(900) && r.elapsed < Duration::from_secs(5),
        "{:?}",
        r.elapsed
    );
    let r = ga(&path, &["--timeout", "0.5", "ping"]);
    assert_eq!(r.fails(), "qemu-ga-client: Not responded in 0.5 sec\n");

    let r = ga(&path, &["--timeout", "0.5", "info"]);
    let msg = r.fails();
    assert!(msg.contains("did not respond within 0.5 s"), "{msg}");
    assert!(r.elapsed < Duration::from_secs(5), "{:?}", r.elapsed);

    // A socket file that does not exist: Python's message.
    let missing = dir.path().join("missing.sock");
    let r = ga(&missing, &["info"]);
    assert_eq!(
        r.fails(),
        format!(
            "qemu-ga-client: '{}' not found. (Is QEMU running?)\n",
            missing.display()
        )
    );

    // A socket file nobody listens on.
    drop(_listener);
    let r = ga(&path, &["ping"]);
    let msg = r.fails();
    assert!(
        msg.contains("failed to connect") && msg.contains("(Is QEMU running?)"),
        "{msg}"
    );

    // No address at all is bad usage.
    let r = run_with(&["ping"], &[]);
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("address is not specified"),
        "{}",
        r.stderr
    );
}

/// The library's errors keep the agent's error class and say what kind of failure
/// they are, whatever wraps the QMP error.
#[test]
fn library_errors_keep_the_agents_error_class() {
    let Some((agent, sock, _dir)) = qemu_testkit::start_agent(&[]) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ga = qemu_tools::ga::GuestAgent::connect(sock.as_path(), Duration::from_secs(10))
            .await
            .unwrap();
        let err = ga.execute("guest-no-such-command", None).await.unwrap_err();
        assert_eq!(err.error_class(), Some("CommandNotFound"), "{err}");
        assert!(!err.is_timeout() && !err.is_disconnected(), "{err}");
        // A blocked RPC is refused by the agent, with its own class.
        let err = ga.execute("guest-shutdown", None).await.unwrap_err();
        assert!(err.error_class().is_some(), "{err}");
        assert!(
            matches!(err, qemu_tools::ga::GaError::Refused { .. }),
            "{err}"
        );
        ga.disconnect().await;
        let err = ga.ping().await.unwrap_err();
        assert!(err.is_disconnected(), "{err}");
        assert_eq!(err.error_class(), None);
    });
    drop(agent);
}
