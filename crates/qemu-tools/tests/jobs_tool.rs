//! The `qemu-jobs` binary against a real QEMU (the one on `PATH`, or 7.2
//! through the variables `.ci/qemu-7.2 --env` sets), whose jobs copy between
//! `null-co` nodes. QEMU has two QMP monitors: one for the tool, one for the
//! test to make nodes, start jobs and cancel them behind the tool's back.
//!
//! Tests print `SKIPPED: ...` without `qemu-system-x86_64`, and fail under
//! `CI=true`. Every run of the binary and every wait has a deadline.

use std::io::{self, BufRead, BufReader, Read as _};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use expectrl::process::unix::WaitStatus;
use expectrl::session::OsSession;
use expectrl::Session;
use qemu_testkit::{output_within, QemuProcess, RawQmp};
use serde_json::{json, Value};

const JOBS: &str = env!("CARGO_BIN_EXE_qemu-jobs");
/// Deadline for one run of the binary, or one wait.
const T: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

/// QEMU with two QMP monitors: `qmp` for the tool, `qmp2` for the test.
struct Qemu {
    /// Killed and reaped on drop.
    _process: QemuProcess,
    qmp: PathBuf,
    qmp2: PathBuf,
}

fn start_qemu() -> Option<Qemu> {
    qemu_testkit::qemu_system()?;
    let process = QemuProcess::system_with_monitors(2, &[]);
    let (qmp, qmp2) = (process.qmp_path().to_owned(), process.monitor_path(2));
    Some(Qemu {
        _process: process,
        qmp,
        qmp2,
    })
}

/// The test's own monitor.
struct Monitor(RawQmp);

impl Monitor {
    fn connect(qemu: &Qemu) -> Monitor {
        Monitor(RawQmp::connect(&qemu.qmp2))
    }

    /// Runs `command` with `arguments`; panics on an error reply.
    #[track_caller]
    fn ok(&mut self, command: &str, arguments: Value) -> Value {
        let reply = self
            .0
            .command(&json!({"execute": command, "arguments": arguments}).to_string());
        let reply: Value = serde_json::from_str(&reply).expect("JSON reply");
        match reply.get("return") {
            Some(r) => r.clone(),
            None => panic!("{command} {arguments}: {reply}"),
        }
    }

    fn null_node(&mut self, name: &str, size: u64) {
        self.ok(
            "blockdev-add",
            json!({"driver": "null-co", "node-name": name, "size": size}),
        );
    }

    /// A backup `id` from `src` to `dst` at `speed` bytes a second (0: as
    /// fast as it goes).
    fn backup(&mut self, id: &str, src: &str, dst: &str, speed: u64) {
        self.ok(
            "blockdev-backup",
            json!({"job-id": id, "device": src, "target": dst, "sync": "full", "speed": speed}),
        );
    }

    fn jobs(&mut self) -> Vec<Value> {
        match self.ok("query-jobs", json!({})) {
            Value::Array(jobs) => jobs,
            other => panic!("query-jobs: {other}"),
        }
    }
}

/// A throttled backup `slow` of 1 GiB at 1 MiB/s: running for as long as a
/// test needs.
fn slow_job(m: &mut Monitor) {
    m.null_node("src", 1024 * MIB);
    m.null_node("dst", 1024 * MIB);
    m.backup("slow", "src", "dst", MIB);
}

#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn command(qemu: &Qemu, args: &[&str]) -> Command {
    let mut cmd = Command::new(JOBS);
    cmd.arg("-s")
        .arg(&qemu.qmp)
        .args(args)
        .env_remove("QMP_SOCKET")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn jobs(qemu: &Qemu, args: &[&str]) -> Run {
    let out = output_within(&mut command(qemu, args), T, &format!("qemu-jobs {args:?}"));
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The tool running in the background, its stdout read line by line.
struct Background {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Background {
    fn spawn(qemu: &Qemu, args: &[&str]) -> Background {
        let mut child = command(qemu, args).spawn().expect("spawn qemu-jobs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Background {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one for which `pred` is true; returns it.
    #[track_caller]
    fn line_where(&mut self, pred: impl Fn(&str) -> bool) -> String {
        loop {
            match self.lines.recv_timeout(T) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(e) => panic!("no such line ({e}); printed:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Waits (bounded) for the tool to exit: its status, all its stdout lines,
    /// its stderr.
    #[track_caller]
    fn finish(mut self) -> (ExitStatus, Vec<String>, String) {
        let mut status = None;
        let exited = qemu_testkit::poll_until(T, || {
            status = self.child.try_wait().expect("wait");
            status.is_some()
        });
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!(
                "still running after {T:?}; printed:\n{}",
                self.seen.join("\n")
            );
        }
        // The reader thread ends at EOF.
        while let Ok(line) = self.lines.recv_timeout(T) {
            self.seen.push(line);
        }
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status.unwrap(), self.seen, stderr)
    }
}

/// Checks a plain `watch`/`run` line: `ID STATUS CURRENT/TOTAL PERCENT RATE
/// eta ETA` (and a failure's error in parentheses); returns its fields.
#[track_caller]
fn fields(line: &str) -> Vec<&str> {
    let f: Vec<&str> = line.split(' ').collect();
    assert!(f.len() >= 7, "{line:?}");
    let (current, total) = f[2].split_once('/').expect("CURRENT/TOTAL");
    current.parse::<u64>().expect("current");
    total.parse::<u64>().expect("total");
    let pct = f[3].strip_suffix('%').expect("a percentage");
    assert!(
        (0.0..=100.0).contains(&pct.parse::<f64>().unwrap()),
        "{line:?}"
    );
    assert!(f[4] == "-" || f[4].ends_with("B/s"), "{line:?}");
    assert_eq!(f[5], "eta", "{line:?}");
    assert!(f[6] == "-" || f[6].ends_with('s'), "{line:?}");
    f
}

#[test]
fn list_shows_a_throttled_job() {
    let Some(qemu) = start_qemu() else { return };
    let mut m = Monitor::connect(&qemu);
    let r = jobs(&qemu, &["list"]);
    assert!(r.status.success() && r.stdout.is_empty(), "{r:?}");
    slow_job(&mut m);
    let r = jobs(&qemu, &["list"]);
    assert!(r.status.success(), "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{r:?}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "TYPE", "STATUS", "PROGRESS", "ERROR"],
        "{r:?}"
    );
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cols[..3], ["slow", "backup", "running"], "{r:?}");
    assert!(cols[3].ends_with("/1073741824"), "{r:?}");
    // Aligned: the progress starts under its header.
    assert_eq!(lines[1].find(cols[3]), lines[0].find("PROGRESS"), "{r:?}");

    let r = jobs(&qemu, &["list", "--json"]);
    assert!(r.status.success(), "{r:?}");
    let job: Value = serde_json::from_str(r.stdout.trim_end()).expect("one JSON object");
    assert_eq!(job["id"], "slow");
    assert_eq!(job["type"], "backup");
    assert_eq!(job["status"], "running");
    assert_eq!(job["total-progress"], 1073741824);
    m.ok("job-cancel", json!({"id": "slow"}));
}

#[test]
fn watch_with_no_job_says_so() {
    let Some(qemu) = start_qemu() else { return };
    let r = jobs(&qemu, &["watch"]);
    assert!(r.status.success(), "{r:?}");
    assert_eq!(r.stdout, "no jobs\n");
    assert!(r.stderr.is_empty(), "{r:?}");
    let r = jobs(&qemu, &["watch", "nope"]);
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    assert_eq!(r.stderr, "qemu-jobs: no job \"nope\"\n");
}

#[test]
fn watch_prints_lines_until_the_job_is_cancelled() {
    let Some(qemu) = start_qemu() else { return };
    let mut m = Monitor::connect(&qemu);
    slow_job(&mut m);
    let mut watch = Background::spawn(&qemu, &["watch"]);
    // Moving: a second line a second or so later, with a rate.
    let first = watch.line_where(|l| l.starts_with("slow running "));
    fields(&first);
    let later = watch.line_where(|l| l.starts_with("slow running ") && !l.contains(" - eta"));
    let f = fields(&later);
    assert!(f[4].ends_with("B/s"), "{later}");
    m.ok("job-cancel", json!({"id": "slow"}));
    let (status, lines, stderr) = watch.finish();
    assert_eq!(status.code(), Some(1), "{lines:?} {stderr}");
    let last = lines.last().unwrap();
    assert!(last.starts_with("slow cancelled "), "{lines:?}");
    fields(last);
    for l in &lines {
        fields(l);
    }
    assert_eq!(stderr, "qemu-jobs: job slow was cancelled\n");
    // A few lines a second at most: never two progress lines in a row with
    // the same status closer than the tool's interval (not measurable here;
    // bounded by the count instead).
    assert!(lines.len() < 30, "{lines:?}");
    assert!(m.jobs().is_empty());
}

#[test]
fn watch_follows_new_jobs_and_exits_0_when_all_complete() {
    let Some(qemu) = start_qemu() else { return };
    let mut m = Monitor::connect(&qemu);
    for n in ["a", "a2", "b", "b2"] {
        m.null_node(n, 64 * MIB);
    }
    m.backup("ja", "a", "a2", 16 * MIB);
    let mut watch = Background::spawn(&qemu, &["watch"]);
    watch.line_where(|l| l.starts_with("ja "));
    // A job that appears while watching is followed too.
    m.backup("jb", "b", "b2", 16 * MIB);
    watch.line_where(|l| l.starts_with("jb "));
    let (status, lines, stderr) = watch.finish();
    assert!(status.success(), "{status}: {lines:?} {stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    for id in ["ja", "jb"] {
        let done = format!("{id} completed 67108864/67108864 100.0% ");
        assert!(lines.iter().any(|l| l.starts_with(&done)), "{lines:?}");
    }
    // Jobs started with QEMU's defaults dismiss themselves.
    assert!(m.jobs().is_empty());
}

#[test]
fn watch_json_lines_parse() {
    let Some(qemu) = start_qemu() else { return };
    let mut m = Monitor::connect(&qemu);
    slow_job(&mut m);
    let mut watch = Background::spawn(&qemu, &["watch", "--json", "slow"]);
    watch.line_where(|l| l.contains(r#""status":"running""#));
    m.ok("job-cancel", json!({"id": "slow"}));
    let (status, lines, stderr) = watch.finish();
    assert_eq!(status.code(), Some(1), "{lines:?} {stderr}");
    let objects: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    for o in &objects {
        assert_eq!(o["id"], "slow", "{o}");
        assert_eq!(o["total"], 1073741824, "{o}");
        assert!(o["current"].is_u64() && o["status"].is_string(), "{o}");
    }
    assert_eq!(objects[0]["type"], "backup");
    assert_eq!(objects.last().unwrap()["outcome"], "cancelled");
}

#[test]
fn run_of_a_backup_exits_0_and_leaves_no_job() {
    let Some(qemu) = start_qemu() else { return };
    let mut m = Monitor::connect(&qemu);
    m.null_node("src", 64 * MIB);
    m.null_node("dst", 64 * MIB);
    let r = jobs(
        &qemu,
        &[
            "run",
            "blockdev-backup job-id=b device=src target=dst sync=full",
        ],
    );
    assert!(r.status.success(), "{r:?}");
    assert!(r.stderr.is_empty(), "{r:?}");
    let last = r.stdout.lines().last().expect("a line");
    assert!(
        last.starts_with("b completed 67108864/67108864 100.0% "),
        "{r:?}"
    );
    assert!(m.jobs().is_empty());
    // Several arguments are one command too.
    let r = jobs(
        &qemu,
        &[
            "run",
            "--json",
            "blockdev-backup",
            "job-id=c",
            "device=src",
            "target=dst",
            "sync=full",
        ],
    );
    assert!(r.status.success(), "{r:?}");
    let last: Value = serde_json::from_str(r.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["outcome"], "completed");
    assert!(m.jobs().is_empty());
}

#[test]
fn run_of_a_failing_backup_exits_1_with_qemus_error() {
    let Some(qemu) = start_qemu() else { return };
    let mut m = Monitor::connect(&qemu);
    m.null_node("src", 64 * MIB);
    m.null_node("dst", 64 * MIB);
    m.ok(
        "blockdev-add",
        json!({"driver": "blkdebug", "node-name": "bad", "image": "src",
               "inject-error": [{"event": "none", "iotype": "read", "errno": 5,
                                 "immediately": true}]}),
    );
    let r = jobs(
        &qemu,
        &[
            "run",
            "blockdev-backup job-id=f device=bad target=dst sync=full",
        ],
    );
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    assert_eq!(r.stderr, "qemu-jobs: job f failed: Input/output error\n");
    let last = r.stdout.lines().last().expect("a line");
    assert!(last.starts_with("f failed "), "{r:?}");
    assert!(last.ends_with(" (Input/output error)"), "{r:?}");
    assert!(m.jobs().is_empty());
    // QEMU's refusal of the command: one line, status 1.
    let r = jobs(
        &qemu,
        &[
            "run",
            "blockdev-backup job-id=g device=nope target=dst sync=full",
        ],
    );
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(r.stderr.starts_with("qemu-jobs: "), "{r:?}");
}

#[test]
fn control_commands() {
    let Some(qemu) = start_qemu() else { return };
    let mut m = Monitor::connect(&qemu);
    slow_job(&mut m);
    let status = |m: &mut Monitor| m.jobs()[0]["status"].as_str().unwrap().to_owned();
    let r = jobs(&qemu, &["pause", "slow"]);
    assert!(r.status.success() && r.stdout.is_empty(), "{r:?}");
    qemu_testkit::wait_until(T, "paused", || status(&mut m) == "paused");
    let r = jobs(&qemu, &["resume", "slow"]);
    assert!(r.status.success(), "{r:?}");
    qemu_testkit::wait_until(T, "running", || status(&mut m) == "running");
    // Not ready: QEMU's refusal.
    let r = jobs(&qemu, &["complete", "slow"]);
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    assert!(r.stderr.starts_with("qemu-jobs: "), "{r:?}");
    let r = jobs(&qemu, &["cancel", "slow"]);
    assert!(r.status.success(), "{r:?}");
    qemu_testkit::wait_until(T, "no job", || m.jobs().is_empty());
    let r = jobs(&qemu, &["dismiss", "slow"]);
    assert_eq!(r.status.code(), Some(1), "{r:?}");
}

/// `watch` on a terminal: an indicatif bar, redrawn in place.
#[test]
fn watch_on_a_terminal_shows_a_bar() {
    let Some(qemu) = start_qemu() else { return };
    let mut m = Monitor::connect(&qemu);
    slow_job(&mut m);
    let mut cmd = Command::new(JOBS);
    cmd.arg("-s")
        .arg(&qemu.qmp)
        .arg("watch")
        .env("TERM", "xterm")
        .env_remove("QMP_SOCKET")
        .env_remove("RUST_LOG");
    let mut session: OsSession = Session::spawn(cmd).expect("spawn on a pty");
    session
        .get_process_mut()
        .set_window_size(120, 30)
        .expect("set the window size");
    let mut shown = Vec::new();
    let read = |session: &mut OsSession, shown: &mut Vec<u8>| {
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            match session.try_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => shown.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
    };
    // The bar: the job, its bytes of 1 GiB (indicatif's units), a rate, redrawn.
    let appeared = qemu_testkit::poll_until(T, || {
        read(&mut session, &mut shown);
        let text = String::from_utf8_lossy(&shown);
        text.contains("slow") && text.contains("/1.00 GiB") && text.contains("MiB/s eta ")
    });
    let text = String::from_utf8_lossy(&shown).into_owned();
    assert!(appeared, "no bar; the terminal shows:\n{text:?}");
    assert!(text.contains("running"), "{text:?}");
    assert!(text.contains('%'), "{text:?}");
    // indicatif redraws the bar in place, and colours it.
    assert!(
        text.contains("\x1b[2K") || text.contains("\x1b[1A"),
        "{text:?}"
    );
    m.ok("job-cancel", json!({"id": "slow"}));
    let mut code = None;
    let exited = qemu_testkit::poll_until(T, || {
        read(&mut session, &mut shown);
        if let Ok(WaitStatus::Exited(_, c)) = session.get_process().status() {
            code = Some(c);
        }
        code.is_some()
    });
    read(&mut session, &mut shown);
    let text = String::from_utf8_lossy(&shown).into_owned();
    assert!(exited, "still running; the terminal shows:\n{text:?}");
    assert_eq!(code, Some(1), "{text:?}");
    assert!(text.contains("cancelled"), "{text:?}");
    assert!(
        text.contains("qemu-jobs: job slow was cancelled"),
        "{text:?}"
    );
}
