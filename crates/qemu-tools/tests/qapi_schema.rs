//! The `qapi-schema` binary: `diff` and `show` on the schemas qemu-qapi
//! recorded (no QEMU needed), `dump --binary` and `--socket` of the installed QEMU (or the
//! one `QEMU_SYSTEM_X86_64`/`QEMU_STORAGE_DAEMON` name) against the recording
//! for its version, and the exit statuses.
//!
//! Tests that need QEMU print `SKIPPED: ...` without it, and fail under
//! `CI=true`. Every run has a deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use qemu_qapi::Recording;
use qemu_testkit::output_within;

const QAPI: &str = env!("CARGO_BIN_EXE_qapi-schema");
/// Deadline for one run.
const T: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Run {
    let mut cmd = Command::new(QAPI);
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = output_within(&mut cmd, T, &format!("qapi-schema {args:?}"));
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[track_caller]
fn ok(r: &Run) -> &str {
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.is_empty(), "{r:?}");
    &r.stdout
}

#[track_caller]
fn fails(r: &Run) {
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(r.stderr.starts_with("qapi-schema: "), "{r:?}");
}

fn schemas() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu-qapi/schemas")
}

fn recording(name: &str) -> String {
    schemas().join(name).to_str().unwrap().to_owned()
}

#[test]
fn diff_of_the_recorded_system_schemas() {
    let old = recording("qemu-system-x86_64-7.2.22.json");
    let new = recording("qemu-system-x86_64-10.0.2.json");
    let r = run(&["diff", &old, &new]);
    let out = ok(&r);
    for line in [
        "commands:",
        "  blockdev-set-active: command added",
        "events:",
        "  MEM_UNPLUG_ERROR: event removed",
        "types:",
        "  query-status return: member singlestep removed",
        "  blockdev-add arguments +qcow2: member discard-no-unref added (optional)",
        "  blockdev-add arguments driver: enum value gluster: feature deprecated added",
    ] {
        assert!(out.lines().any(|l| l == line), "no {line:?} in\n{out}");
    }
    // Groups in order, each line once.
    let c = out.find("commands:").unwrap();
    let e = out.find("events:").unwrap();
    let t = out.find("types:").unwrap();
    assert!(c < e && e < t, "{out}");
    let mut lines: Vec<&str> = out.lines().collect();
    let n = lines.len();
    lines.dedup();
    assert_eq!(lines.len(), n);

    // --json: the same changes.
    let r = run(&["diff", "--json", &old, &new]);
    let v: serde_json::Value = serde_json::from_str(ok(&r)).unwrap();
    let changes = v["changes"].as_array().unwrap();
    assert_eq!(changes.len(), n - 3, "one per text line but the headings");
    assert!(changes.iter().any(|c| c["change"] == "command-added"
        && c["name"] == "blockdev-set-active"
        && c["group"] == "commands"));
    assert!(changes.iter().any(|c| c["change"] == "member-removed"
        && c["name"] == "query-status"
        && c["part"] == "return"
        && c["member"] == "singlestep"));
    assert_eq!(v["old"]["version"], "7.2.22");
    assert_eq!(v["new"]["version"], "10.0.2");
    assert_eq!(v["new"]["binary"], "qemu-system-x86_64");

    // No differences: still 0, nothing printed.
    assert_eq!(ok(&run(&["diff", &new, &new])), "");
}

#[test]
fn show_a_command_and_an_event() {
    let old = recording("qemu-system-x86_64-7.2.22.json");
    let new = recording("qemu-system-x86_64-10.0.2.json");
    let r = run(&["show", "query-status", "--schema", &old]);
    let out = ok(&r);
    assert!(
        out.starts_with("command query-status\narguments: none\nreturn: object\n"),
        "{out}"
    );
    assert!(out.contains("\n  singlestep: boolean\n"), "{out}");
    assert!(out.contains("\n  status: enum: debug | inmigrate"), "{out}");
    let r = run(&["show", "query-status", "--schema", &new]);
    assert!(!ok(&r).contains("singlestep"), "{r:?}");

    // Nested objects, variants, optional members and features.
    let r = run(&["show", "blockdev-add", "--schema", &new]);
    let out = ok(&r);
    assert!(out.contains("\n  node-name: string (optional)\n"), "{out}");
    assert!(out.contains("gluster (deprecated)"), "{out}");
    assert!(
        out.contains("\n  when driver = file:\n    filename: string\n"),
        "{out}"
    );
    assert!(
        out.contains("\n  cache: object (optional)\n    direct: boolean (optional)\n"),
        "{out}"
    );

    let r = run(&["show", "SHUTDOWN", "--schema", &new]);
    let out = ok(&r);
    assert!(
        out.starts_with("event SHUTDOWN\ndata: object\n  guest: boolean\n"),
        "{out}"
    );
    assert!(out.contains("host-qmp-quit"), "{out}");

    fails(&run(&["show", "no-such-command", "--schema", &new]));
}

#[test]
fn check_commands_against_a_recorded_schema() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("commands.jsonl");
    std::fs::write(
        &file,
        concat!(
            "# comments and blank lines are skipped\n",
            "{\"execute\": \"query-status\"}\n",
            "\n",
            "{\"execute\": \"query-stauts\"}\n",
            "{\"execute\": \"blockdev-add\", \"arguments\": {\"driver\": \"null-co\", \"node-name\": 42}}\n",
            "[1]\n",
            "{\"execute\": \"blockdev-set-active\", \"arguments\": {\"active\": true}}\n",
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let shown = file.display();
    // 10.0 has blockdev-set-active; 7.2 has not.
    let r = run(&[
        "check",
        f,
        "--schema",
        &recording("qemu-system-x86_64-10.0.2.json"),
    ]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(
        r.stdout,
        format!(
            "{shown}:4: query-stauts: execute: unknown command (did you mean 'query-status'?)\n\
             {shown}:5: blockdev-add: arguments.node-name: expected string, got integer\n\
             {shown}:6: not a JSON object\n"
        )
    );
    assert_eq!(r.stderr, "3 of 5 commands rejected\n");
    let r = run(&[
        "check",
        f,
        "--schema",
        &recording("qemu-system-x86_64-7.2.22.json"),
    ]);
    assert!(
        r.stdout.contains(&format!(
            "{shown}:7: blockdev-set-active: execute: unknown command"
        )),
        "{r:?}"
    );
    assert_eq!(r.stderr, "4 of 5 commands rejected\n");

    // All good: nothing printed, exit 0.
    std::fs::write(&file, "{\"execute\": \"query-status\"}\n").unwrap();
    let r = run(&[
        "check",
        f,
        "--schema",
        &recording("qemu-system-x86_64-7.2.22.json"),
    ]);
    assert_eq!(ok(&r), "");
    // A missing file is a failure; no schema source is bad usage.
    fails(&run(&[
        "check",
        "/nonexistent/x.jsonl",
        "--schema",
        &recording("qemu-system-x86_64-7.2.22.json"),
    ]));
    assert_eq!(run(&["check", f]).code, Some(2));
}

#[test]
fn usage_errors_exit_2_and_failures_1() {
    for args in [
        &[][..],
        &["bogus"],
        &["diff"],
        &["diff", "a"],
        &["dump"],
        &["dump", "--socket", "a", "--binary", "b"],
        &["show", "query-status"],
        &["show", "--schema", "x"],
        &["dump", "--socket", "localhost:port"],
        &["dump", "--binary", "x", "--timeout", "0"],
    ] {
        let r = run(args);
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let missing = missing.to_str().unwrap();
    let good = recording("qemu-system-x86_64-10.0.2.json");
    fails(&run(&["diff", missing, &good]));
    fails(&run(&["diff", &good, missing]));
    fails(&run(&["show", "query-status", "--schema", missing]));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"binary\": 1}").unwrap();
    let r = run(&["diff", bad.to_str().unwrap(), &good]);
    fails(&r);
    assert!(r.stderr.contains("bad.json"), "{r:?}");
    let sock = dir.path().join("missing.sock");
    fails(&run(&["dump", "--socket", sock.to_str().unwrap()]));
    fails(&run(&[
        "dump",
        "--binary",
        "/nonexistent/qemu-system-x86_64",
    ]));
    fails(&run(&[
        "dump",
        "--binary",
        "/nonexistent/qemu-storage-daemon",
    ]));

    let r = run(&["--help"]);
    let out = ok(&r);
    assert!(out.contains("Exit status:\n  0  success\n"), "{out}");
    assert!(
        out.contains("`diff` exits 0 whether or not the schemas differ"),
        "{out}"
    );
}

/// `dump --binary` (or `--socket`) prints what qemu-qapi recorded for that
/// version, byte for byte (a SKIPPED line when there is no recording for it).
fn dump_equals_recording(binary: &Path) {
    let r = run(&["dump", "--binary", binary.to_str().unwrap()]);
    same_as_recording(binary, ok(&r));
}

fn same_as_recording(binary: &Path, out: &str) {
    let live = Recording::from_json(out).unwrap();
    let name = live.file_name().unwrap();
    let path = schemas().join(&name);
    if !path.exists() {
        qemu_testkit::loud(&format!(
            "SKIPPED: {}: no recording {name} for this QEMU",
            qemu_testkit::test_name()
        ));
        return;
    }
    let recorded = std::fs::read_to_string(&path).unwrap();
    // Not assert_eq!: 200 kB of JSON would say nothing.
    assert!(
        recorded == out,
        "{}: the dump of {} differs from {}",
        name,
        binary.display(),
        path.display()
    );
}

#[test]
fn dump_of_the_system_emulator() {
    let Some(qemu) = qemu_testkit::qemu_system() else {
        return;
    };
    dump_equals_recording(&qemu);
}

/// `dump --into DIR` writes the recording under its own name and prints
/// the path.
#[test]
fn dump_into_a_directory() {
    let Some(qsd) = qemu_testkit::storage_daemon() else {
        return;
    };
    let dir = qemu_testkit::tempdir("dump-into");
    let d = dir.path().to_str().unwrap();
    let r = run(&["dump", "--binary", qsd.to_str().unwrap(), "--into", d]);
    let path = PathBuf::from(ok(&r).trim_end());
    assert_eq!(path.parent(), Some(dir.path()));
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("qemu-storage-daemon-") && name.ends_with(".json"),
        "{name}"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        Recording::from_json(&text).unwrap().file_name().unwrap(),
        name
    );
    same_as_recording(&qsd, &text);
}

/// `gen` writes what qemu-qapi-types holds, from the same recordings and
/// names; without recordings it is a usage error.
#[test]
fn gen_makes_the_typed_crate() {
    let dir = qemu_testkit::tempdir("gen");
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu-qapi-types/src");
    std::fs::copy(committed.join("names.json"), dir.path().join("names.json")).unwrap();
    let mut args = vec![
        "gen".to_owned(),
        "--out".to_owned(),
        dir.path().display().to_string(),
    ];
    for e in std::fs::read_dir(schemas()).unwrap() {
        args.push(e.unwrap().path().display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run(&args);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(r.stderr.contains("235 commands, 57 events"), "{r:?}");
    for f in ["types.rs", "commands.rs", "events.rs", "names.json"] {
        let made = std::fs::read_to_string(dir.path().join(f)).unwrap();
        let held = std::fs::read_to_string(committed.join(f)).unwrap();
        assert!(made == held, "{f} differs");
    }
    let r = run(&["gen", "--out", dir.path().to_str().unwrap()]);
    assert_eq!(r.code, Some(2), "{r:?}");
}

#[test]
fn dump_of_the_storage_daemon() {
    let Some(qsd) = qemu_testkit::storage_daemon() else {
        return;
    };
    dump_equals_recording(&qsd);
}

#[test]
fn dump_and_show_of_a_running_qemu() {
    let Some(qemu) = qemu_testkit::qemu_system() else {
        return;
    };
    let running = qemu_testkit::QemuProcess::system_with_listener(&[]);
    let sock = running.qmp_path().to_str().unwrap();
    // The program's name comes from query-target.
    let r = run(&["dump", "--socket", sock]);
    same_as_recording(&qemu, ok(&r));
    let r = run(&["show", "query-status", "--socket", sock]);
    assert!(ok(&r).starts_with("command query-status\n"), "{r:?}");
}
