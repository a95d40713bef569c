//! The `qom` binary against a real QEMU (`-machine pc`, TCG, stopped) and against the
//! QMP test server (for `qom-list-get`, new in QEMU 10.1: 7.2 and 10.0 lack it).
//!
//! Tests that need `qemu-system-x86_64` print `SKIPPED: ...` without it, and fail
//! under `CI=true`. Every run of the binary has a deadline.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use qemu_qmp::json::Ordered;
use qemu_qmp::server::{Reply, TestServer};
use qemu_qmp::{json, JsonObject, Value};
use qemu_testkit::{output_within, QemuProcess, QemuVersion};

const QOM: &str = env!("CARGO_BIN_EXE_qom");
/// Deadline for one run of the binary.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> &str {
        assert!(
            self.status.success(),
            "failed with {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    fn fails(&self) -> &str {
        assert_eq!(
            self.status.code(),
            Some(1),
            "expected exit status 1\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        &self.stderr
    }
}

/// Run `bin` with `args` and `env` (QMP_SOCKET and friends removed otherwise),
/// killing it after `timeout`.
fn run_with(bin: &str, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Run {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("QMP_SOCKET")
        .env_remove("QGA_CLIENT_ADDRESS")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = output_within(&mut cmd, timeout, &format!("{bin} {args:?}"));
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn qom(socket: &Path, args: &[&str]) -> Run {
    let socket = socket.to_str().expect("UTF-8 path");
    let mut all = vec!["-s", socket];
    all.extend_from_slice(args);
    run_with(QOM, &all, &[], RUN_TIMEOUT)
}

/// The version of the `qemu-system-x86_64` the tests run.
fn pc_version() -> QemuVersion {
    qemu_testkit::version_of(&qemu_testkit::qemu_system().expect("looked up before"))
}

/// A stopped `-machine pc` QEMU with a listening QMP socket.
fn qemu_pc() -> Option<QemuProcess> {
    qemu_testkit::qemu_system()?;
    Some(QemuProcess::system_with_listener(&[
        "-machine", "pc", "-accel", "tcg", "-S",
    ]))
}

#[test]
fn tree_of_a_pc_machine() {
    let Some(qemu) = qemu_pc() else { return };
    let run = qom(qemu.qmp_path(), &["tree"]);
    let out = run.ok();
    assert!(
        out.starts_with("/\n  type: container (string)\n\n"),
        "{out}"
    );
    assert!(
        out.contains("\n/machine\n  type: pc-i440fx-"),
        "no /machine block:\n{out}"
    );
    for child in [
        "/machine/i440fx",
        "/machine/peripheral",
        "/machine/peripheral-anon",
        "/machine/unattached",
        "/machine/fw_cfg",
    ] {
        assert!(
            out.contains(&format!("\n{child}\n  type: ")),
            "no {child} block"
        );
    }
    // Every block: the path, `  name: value (type)` lines, an empty line.
    assert!(out.ends_with("\n\n"));
    let mut expect_path = true;
    for line in out.lines() {
        if expect_path {
            assert!(line.starts_with('/'), "expected a path: {line:?}");
            expect_path = false;
        } else if line.is_empty() {
            expect_path = true;
        } else {
            assert!(
                line.starts_with("  ") && line.contains(": ") && line.ends_with(')'),
                "expected a property line: {line:?}"
            );
        }
    }
    // Values as Python prints them.
    assert!(out.contains("\n  graphics: True (bool)\n"), "{out}");
    assert!(
        out.contains("\n  boot: {'order': 'cad'} (BootConfiguration)\n"),
        "{out}"
    );
    // Links show their target path; child properties are not property lines.
    assert!(
        out.contains("\n  acpi-device: /machine/unattached/device["),
        "{out}"
    );
    if pc_version().is(7, 2) {
        // Gone from 10.0's pc machine.
        assert!(out.contains("\n  rtc_state: /machine/unattached/"), "{out}");
    }
    assert!(!out.contains("\n  i440fx: "), "{out}");

    // A subtree starts at its own path.
    let sub = qom(qemu.qmp_path(), &["tree", "/machine/i440fx/"]);
    let sub = sub.ok();
    assert!(
        sub.starts_with("/machine/i440fx\n  type: i440FX-pcihost (string)\n"),
        "{sub}"
    );
    assert!(sub.contains("\n/machine/i440fx/pci.0\n"), "{sub}");
    assert!(!sub.contains("\n/machine/peripheral\n"), "{sub}");
}

#[test]
fn list_get_and_set_on_a_pc_machine() {
    let Some(qemu) = qemu_pc() else { return };
    let sock = qemu.qmp_path();

    let list = qom(sock, &["list", "/machine"]);
    let lines: Vec<&str> = list.ok().lines().collect();
    for expected in [
        "type",
        "i440fx/",
        "peripheral/",
        "unattached/",
        "@acpi-device/",
    ] {
        assert!(lines.contains(&expected), "no {expected:?} in {lines:?}");
    }
    // The RTC link of 7.2's pc machine is gone in 10.0.
    let rtc_link = lines.contains(&"@rtc_state/");
    if pc_version().is(7, 2) {
        assert!(rtc_link, "no @rtc_state/ in {lines:?}");
    } else if pc_version().at_least(10, 0) {
        assert!(!rtc_link, "@rtc_state/ in {lines:?}");
    }
    assert!(
        lines.iter().all(|l| !l.is_empty() && !l.contains(' ')),
        "{lines:?}"
    );

    let root = qom(sock, &["list"]);
    let root: Vec<&str> = root.ok().lines().collect();
    assert!(
        root.contains(&"machine/") && root.contains(&"type"),
        "{root:?}"
    );

    let get = qom(sock, &["get", "/machine.type"]);
    let ty = get.ok();
    assert!(
        ty.starts_with("pc-i440fx-") && ty.ends_with("-machine\n"),
        "{ty:?}"
    );
    // The socket from the environment, as QEMU's tools take it.
    let env_get = run_with(
        QOM,
        &["get", "/machine.type"],
        &[("QMP_SOCKET", sock.to_str().unwrap())],
        RUN_TIMEOUT,
    );
    assert_eq!(env_get.ok(), ty);
    // A struct value prints one `key: value` line per member.
    assert_eq!(qom(sock, &["get", "/machine.boot"]).ok(), "order: cad\n");
    // A link prints the path it points to.
    let link = qom(sock, &["get", "/machine.acpi-device"]);
    assert!(
        link.ok().starts_with("/machine/unattached/"),
        "{}",
        link.stdout
    );

    // Typed values (more in set_converts_the_value_to_the_property_type).
    assert_eq!(
        qom(sock, &["get", "/machine.dump-guest-core"]).ok(),
        "True\n"
    );
    assert_eq!(
        qom(sock, &["set", "/machine.dump-guest-core", "false"]).ok(),
        "{}\n"
    );
    assert_eq!(
        qom(sock, &["get", "/machine.dump-guest-core"]).ok(),
        "False\n"
    );

    // Errors: exit status 1 and a message naming what failed.
    let err = qom(sock, &["get", "/nope.x"]);
    let msg = err.fails();
    assert!(msg.starts_with("qom: /nope: "), "{msg}");
    assert!(msg.contains("not found"), "{msg}");
    assert!(err.stdout.is_empty());
    let err = qom(sock, &["list", "/nope"]);
    assert!(err.fails().starts_with("qom: /nope: "), "{}", err.stderr);
    let err = qom(sock, &["tree", "/nope"]);
    assert!(err.fails().starts_with("qom: /nope: "), "{}", err.stderr);
    let err = qom(sock, &["get", "/machine.nope"]);
    assert!(
        err.fails().starts_with("qom: /machine.nope: "),
        "{}",
        err.stderr
    );
    // A malformed <path>.<property> is bad usage.
    let err = qom(sock, &["get", "/machine"]);
    assert_eq!(err.status.code(), Some(2), "{}", err.stderr);
    assert!(err.stderr.contains("<path>.<property>"), "{}", err.stderr);
}

/// QEMU's reply to `command`, as the bytes it wrote, over a QMP connection of the
/// test's own, closed before this returns (QEMU's socket takes one client at a time).
fn raw_reply(socket: &Path, command: &str) -> String {
    qemu_testkit::RawQmp::connect(socket).command(command)
}

/// The names of the members of the `return` object of a reply, in order.
fn return_keys(reply: &str) -> Vec<String> {
    let reply = Ordered::parse(reply.as_bytes()).expect("JSON from QEMU");
    reply
        .get("return")
        .and_then(Ordered::members)
        .unwrap_or_else(|| panic!("not an object: {reply}"))
        .iter()
        .map(|(k, _)| k.clone())
        .collect()
}

#[test]
fn objects_keep_the_member_order_qemu_sent() {
    let Some(qemu) = qemu_pc() else { return };
    let sock = qemu.qmp_path();
    let qom_get = |prop: &str| {
        format!(
            r#"{{"execute": "qom-get", "arguments": {{"path": "/machine", "property": "{prop}"}}}}"#
        )
    };
    // The RTC's time (struct tm, values that change) and the SMP configuration
    // (integers that do not), as QEMU writes them.
    let rtc_keys = return_keys(&raw_reply(sock, &qom_get("rtc-time")));
    assert_eq!(rtc_keys.len(), 6, "{rtc_keys:?}");
    let smp = Ordered::parse(raw_reply(sock, &qom_get("smp")).as_bytes()).expect("JSON");
    let smp = smp
        .get("return")
        .and_then(Ordered::members)
        .expect("an object");
    assert!(smp.len() > 3, "{smp:?}");

    // qom get: one `key: value` line per member, in QEMU's order.
    let get = qom(sock, &["get", "/machine.rtc-time"]);
    let keys: Vec<&str> = get
        .ok()
        .lines()
        .map(|l| l.split_once(": ").map_or(l, |(k, _)| k))
        .collect();
    assert_eq!(keys, rtc_keys, "{}", get.stdout);
    let expected: String = smp.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
    assert_eq!(qom(sock, &["get", "/machine.smp"]).ok(), expected);

    // qom tree: dicts as Python prints them, in QEMU's order.
    let tree = qom(sock, &["tree", "/machine"]);
    let tree = tree.ok();
    let smp_dict = smp
        .iter()
        .map(|(k, v)| format!("'{k}': {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    assert!(
        tree.contains(&format!("\n  smp: {{{smp_dict}}} (")),
        "no smp: {{{smp_dict}}} in:\n{tree}"
    );
    let rtc_line = tree
        .lines()
        .find(|l| l.starts_with("  rtc-time: {'"))
        .unwrap_or_else(|| panic!("no rtc-time line in:\n{tree}"));
    // {'tm_year': 125, 'tm_sec': 1, ...}: the names are every other quoted part.
    let keys: Vec<&str> = rtc_line.split('\'').skip(1).step_by(2).collect();
    assert_eq!(keys, rtc_keys, "{rtc_line}");
}

/// A stopped `-machine pc` QEMU with a memory backend to link to.
fn qemu_pc_with_backend() -> Option<QemuProcess> {
    qemu_testkit::qemu_system()?;
    Some(QemuProcess::system_with_listener(&[
        "-machine",
        "pc",
        "-accel",
        "tcg",
        "-S",
        "-object",
        "memory-backend-ram,id=mem0,size=1M",
    ]))
}

#[test]
fn set_converts_the_value_to_the_property_type() {
    let Some(qemu) = qemu_pc_with_backend() else {
        return;
    };
    let sock = qemu.qmp_path();
    let set = |prop: &str, value: &str| qom(sock, &["set", prop, value]);
    let get = |prop: &str| qom(sock, &["get", prop]).ok().to_owned();

    // A string property takes the text as it is: digits and quotes included.
    assert_eq!(set("/machine.dt-compatible", "42").ok(), "{}\n");
    assert_eq!(get("/machine.dt-compatible"), "42\n");
    set("/machine.dt-compatible", "\"42\"").ok();
    assert_eq!(get("/machine.dt-compatible"), "\"42\"\n");
    set("/machine.dt-compatible", "hello, world").ok();
    assert_eq!(get("/machine.dt-compatible"), "hello, world\n");

    // An integer (type int): decimal, negative, hexadecimal; range and form checked.
    set("/machine.phandle-start", "4242").ok();
    assert_eq!(get("/machine.phandle-start"), "4242\n");
    set("/machine.phandle-start", "-3").ok();
    assert_eq!(get("/machine.phandle-start"), "-3\n");
    set("/machine.phandle-start", "0x10").ok();
    assert_eq!(get("/machine.phandle-start"), "16\n");
    let err = set("/machine.phandle-start", "12x");
    assert_eq!(
        err.fails(),
        "qom: /machine.phandle-start: '12x' is not an integer (the property is of type int)\n"
    );
    let err = set("/machine.phandle-start", "9223372036854775808");
    assert_eq!(
        err.fails(),
        "qom: /machine.phandle-start: 9223372036854775808 is out of range for int \
         (-9223372036854775808 to 9223372036854775807)\n"
    );
    assert_eq!(get("/machine.phandle-start"), "16\n");
    // An unsigned one (uint64_t): no negative values.
    let err = set("/machine.bus-lock-ratelimit", "-1");
    assert!(
        err.fails()
            .starts_with("qom: /machine.bus-lock-ratelimit: -1 is out of range for uint64_t"),
        "{}",
        err.stderr
    );

    // A boolean: true/false, on/off, yes/no in any case (True reads back).
    for (text, shown) in [
        ("off", "False"),
        ("YES", "True"),
        ("false", "False"),
        ("True", "True"),
    ] {
        set("/machine.dump-guest-core", text).ok();
        assert_eq!(
            get("/machine.dump-guest-core"),
            format!("{shown}\n"),
            "{text}"
        );
    }
    let err = set("/machine.dump-guest-core", "maybe");
    assert_eq!(
        err.fails(),
        "qom: /machine.dump-guest-core: 'maybe' is not a boolean (true/false, on/off, yes/no)\n"
    );

    // A link takes a path; QEMU checks the target's type.
    set("/machine.memory-backend", "/objects/mem0").ok();
    assert_eq!(get("/machine.memory-backend"), "/objects/mem0\n");
    let err = set("/machine.memory-backend", "/machine");
    assert_eq!(
        err.fails(),
        "qom: /machine.memory-backend: Invalid parameter type for 'memory-backend', \
         expected: memory-backend\n"
    );
    let err = set("/machine.memory-backend", "/nope");
    assert_eq!(
        err.fails(),
        "qom: /machine.memory-backend: Device '/nope' not found\n"
    );
    set("/machine.memory-backend", "").ok();
    assert_eq!(get("/machine.memory-backend"), "\n");

    // A structure takes JSON; an enumeration its value's name.
    set("/machine.boot", "{\"order\": \"dc\"}").ok();
    assert_eq!(get("/machine.boot"), "order: dc\n");
    set("/machine.smm", "off").ok();
    assert_eq!(get("/machine.smm"), "off\n");

    // --json: the value as JSON, whatever the type (QEMU judges it).
    qom(
        sock,
        &["set", "--json", "/machine.boot", "{\"order\": \"c\"}"],
    )
    .ok();
    assert_eq!(get("/machine.boot"), "order: c\n");
    qom(
        sock,
        &["set", "--json", "/machine.dt-compatible", "\"x y\""],
    )
    .ok();
    assert_eq!(get("/machine.dt-compatible"), "x y\n");
    let err = qom(sock, &["set", "--json", "/machine.phandle-start", "\"5\""]);
    assert_eq!(
        err.fails(),
        "qom: /machine.phandle-start: Invalid parameter type for 'phandle-start', \
         expected: integer\n"
    );

    // No such property, object, or a read-only one: QEMU's words.
    let machine_type = get("/machine.type");
    let machine_type = machine_type.trim_end();
    let err = set("/machine.nope", "1");
    assert_eq!(
        err.fails(),
        format!("qom: /machine.nope: Property '{machine_type}.nope' not found\n")
    );
    let err = set("/nope.x", "1");
    assert_eq!(err.fails(), "qom: /nope: Device '/nope' not found\n");
    let err = set("/machine.type", "x");
    assert_eq!(
        err.fails(),
        format!("qom: /machine.type: Property '{machine_type}.type' is not writable\n")
    );
    let err = set("/machine.i440fx", "x");
    assert_eq!(
        err.fails(),
        format!("qom: /machine.i440fx: Property '{machine_type}.i440fx' is not writable\n")
    );
}

#[test]
fn a_missing_socket_is_a_clear_error() {
    // No socket, or a malformed one: bad usage (status 2), as argparse has it.
    let r = run_with(QOM, &["list", "/"], &[], RUN_TIMEOUT);
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("No QMP socket"), "{}", r.stderr);

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let r = qom(&missing, &["tree"]);
    let msg = r.fails();
    assert!(msg.starts_with("qom: failed to connect to "), "{msg}");
    assert!(msg.contains("missing.sock"), "{msg}");

    let r = run_with(QOM, &["-s", "localhost:notaport", "list"], &[], RUN_TIMEOUT);
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("bad port"), "{}", r.stderr);

    let r = run_with(QOM, &[], &[], RUN_TIMEOUT);
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
}

// ---- qom-list-get and the fallback, against the test server ----------------------

/// A property of the fake tree: name, type, and value (None: unreadable).
type FakeProp = (&'static str, &'static str, Option<Value>);

fn fake_tree() -> Vec<(&'static str, Vec<FakeProp>)> {
    vec![
        (
            "/",
            vec![
                ("type", "string", Some(json!("container"))),
                ("machine", "child<fake-machine>", Some(json!("/machine"))),
            ],
        ),
        (
            "/machine",
            vec![
                ("type", "string", Some(json!("fake-machine"))),
                ("flag", "bool", Some(json!(true))),
                ("opts", "Opts", Some(json!({"a": [1, "x"], "n": null}))),
                ("secret", "str", None),
                ("cpu0", "child<cpu>", Some(json!("/machine/cpu0"))),
                ("boot-cpu", "link<cpu>", Some(json!("/machine/cpu0"))),
                (
                    "peripheral",
                    "child<container>",
                    Some(json!("/machine/peripheral")),
                ),
            ],
        ),
        (
            "/machine/cpu0",
            vec![
                ("type", "string", Some(json!("cpu"))),
                ("speed", "double", Some(json!(3.5))),
            ],
        ),
        (
            "/machine/peripheral",
            vec![("type", "string", Some(json!("container")))],
        ),
    ]
}

fn node(path: &str) -> Option<Vec<FakeProp>> {
    fake_tree()
        .into_iter()
        .find(|(p, _)| *p == path)
        .map(|(_, props)| props)
}

fn str_arg<'a>(args: &'a JsonObject, key: &str) -> &'a str {
    args.get(key).and_then(Value::as_str).unwrap_or("")
}

fn not_found(path: &str) -> Reply {
    Reply::error("DeviceNotFound", format!("Device '{path}' not found"))
}

fn qom_list(args: &JsonObject) -> Reply {
    let path = str_arg(args, "path");
    match node(path) {
        Some(props) => Reply::Return(Value::Array(
            props
                .iter()
                .map(|(n, t, _)| json!({"name": n, "type": t}))
                .collect(),
        )),
        None => not_found(path),
    }
}

fn qom_get(args: &JsonObject) -> Reply {
    let path = str_arg(args, "path");
    let prop = str_arg(args, "property");
    let Some(props) = node(path) else {
        return not_found(path);
    };
    match props.into_iter().find(|(n, _, _)| *n == prop) {
        Some((_, _, Some(v))) => Reply::Return(v),
        Some(_) => Reply::error(
            "GenericError",
            format!("Property 'fake-machine.{prop}' is not readable"),
        ),
        None => Reply::error("GenericError", format!("Property '{prop}' not found")),
    }
}

fn qom_list_get(args: &JsonObject) -> Reply {
    let mut out = Vec::new();
    for p in args
        .get("paths")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let path = p.as_str().unwrap_or("");
        let Some(props) = node(path) else {
            return not_found(path);
        };
        let props: Vec<Value> = props
            .into_iter()
            .map(|(n, t, v)| match v {
                Some(v) => json!({"name": n, "type": t, "value": v}),
                None => json!({"name": n, "type": t}),
            })
            .collect();
        out.push(json!({ "properties": props }));
    }
    Reply::Return(Value::Array(out))
}

const EXPECTED_TREE: &str = "\
/
  type: container (string)

/machine
  type: fake-machine (string)
  flag: True (bool)
  opts: {'n': None, 'a': [1, 'x']} (Opts)
  secret: SECRET (str)
  boot-cpu: /machine/cpu0 (link<cpu>)

/machine/cpu0
  type: cpu (string)
  speed: 3.5 (double)

/machine/peripheral
  type: container (string)

";

fn commands(server: &TestServer) -> Vec<(String, Value)> {
    server
        .received()
        .into_iter()
        .map(|r| {
            (
                str_arg(&r, "execute").to_owned(),
                r.get("arguments").cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

struct Served {
    server: TestServer,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start(with_list_get: bool) -> Served {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut builder = TestServer::builder()
            .handler("qom-list", qom_list)
            .handler("qom-get", qom_get);
        if with_list_get {
            builder = builder.handler("qom-list-get", qom_list_get);
        }
        let server = {
            let _in_runtime = rt.enter();
            builder.bind_unix(dir.path().join("qmp.sock")).unwrap()
        };
        Served {
            server,
            rt,
            _dir: dir,
        }
    }

    fn qom(&self, args: &[&str]) -> Run {
        let qemu_qmp::Address::Unix(path) = self.server.address() else {
            unreachable!()
        };
        qom(&path, args)
    }

    fn stop(self) {
        self.rt.block_on(self.server.shutdown());
    }
}

#[test]
fn tree_uses_qom_list_get_when_offered() {
    let served = Served::start(true);
    let out = served.qom(&["tree"]);
    assert_eq!(
        out.ok(),
        EXPECTED_TREE.replace("SECRET", "<EXCEPTION: property could not be read>")
    );
    let cmds = commands(&served.server);
    let names: Vec<&str> = cmds.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "qmp_capabilities",
            "query-commands",
            "qom-list-get",
            "qom-list-get",
            "qom-list-get",
        ],
        "{cmds:?}"
    );
    // The siblings are read in one batch, as QEMU's tool does.
    assert_eq!(cmds[2].1, json!({"paths": ["/"]}));
    assert_eq!(cmds[3].1, json!({"paths": ["/machine"]}));
    assert_eq!(
        cmds[4].1,
        json!({"paths": ["/machine/cpu0", "/machine/peripheral"]})
    );

    // A subtree, and a path that does not exist.
    let sub = served.qom(&["tree", "/machine/cpu0"]);
    assert_eq!(
        sub.ok(),
        "/machine/cpu0\n  type: cpu (string)\n  speed: 3.5 (double)\n\n"
    );
    let err = served.qom(&["tree", "/nope"]);
    assert!(
        err.fails()
            .starts_with("qom: /nope: Device '/nope' not found"),
        "{}",
        err.stderr
    );
    served.stop();
}

#[test]
fn tree_falls_back_to_qom_list_and_qom_get() {
    let served = Served::start(false);
    let out = served.qom(&["tree"]);
    assert_eq!(
        out.ok(),
        EXPECTED_TREE.replace(
            "SECRET",
            "<EXCEPTION: Property 'fake-machine.secret' is not readable>"
        )
    );
    let names: Vec<String> = commands(&served.server)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(!names.iter().any(|n| n == "qom-list-get"), "{names:?}");
    assert_eq!(names.iter().filter(|n| *n == "qom-list").count(), 4);
    // One qom-get per property that is not a child: 1 + 5 + 2 + 1.
    assert_eq!(names.iter().filter(|n| *n == "qom-get").count(), 9);

    // list and get against the same fake.
    assert_eq!(
        served.qom(&["list", "/machine"]).ok(),
        "type\nflag\nopts\nsecret\ncpu0/\n@boot-cpu/\nperipheral/\n"
    );
    assert_eq!(
        served.qom(&["get", "/machine.opts"]).ok(),
        // QEMU's member order.
        "n: None\na: [1, 'x']\n"
    );
    assert_eq!(served.qom(&["get", "/machine/cpu0.speed"]).ok(), "3.5\n");
    let err = served.qom(&["get", "/machine.secret"]);
    assert_eq!(
        err.fails(),
        "qom: /machine.secret: Property 'fake-machine.secret' is not readable\n"
    );
    served.stop();
}

#[test]
fn a_server_that_never_answers_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.sock");
    // Bound and listening, never accepting: the connection waits in the backlog.
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let start = Instant::now();
    let r = run_with(
        QOM,
        &["-s", path.to_str().unwrap(), "--timeout", "0.5", "list"],
        &[],
        RUN_TIMEOUT,
    );
    let msg = r.fails();
    assert!(msg.contains("timed out"), "{msg}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}
