//! The `qom-fuse` binary against a real QEMU (`-machine pc -S`): the tree walked
//! with ordinary file operations and compared with what `qom-list`/`qom-get` (the
//! `qom` tool's library, on a second QMP monitor) report, writes, the errno
//! values, and every way the mount ends (SIGTERM, a busy mount, SIGKILL of the
//! tool, QEMU killed), each leaving no mount and no temporary directory.
//!
//! Needs `/dev/fuse` and root (the tool mounts with `mount(2)`) and
//! `qemu-system-x86_64`: without them the tests print `SKIPPED: ...`, and fail
//! under `CI=true`.

use std::collections::BTreeSet;
use std::fs;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qemu_qmp::json::Ordered;
use qemu_qmp::{json, Client};
use qemu_testkit::{output_within, poll_until, wait_until, QemuProcess};
use qemu_tools::qom::{python_str, Qom};
use rustix::io::Errno;
use rustix::process::Signal;

const QOM_FUSE: &str = env!("CARGO_BIN_EXE_qom-fuse");
const QOM: &str = env!("CARGO_BIN_EXE_qom");
/// Generous bound for anything to happen (2 shared cores).
const T: Duration = Duration::from_secs(30);

/// Whether this process can mount a FUSE file system the way `qom-fuse` does
/// (`/dev/fuse` and root); says so loudly when not, and fails under `CI=true`.
fn can_mount() -> bool {
    let why = if !Path::new("/dev/fuse").exists() {
        "/dev/fuse does not exist"
    } else if !rustix::process::geteuid().is_root() {
        "it mounts with mount(2), which needs root"
    } else {
        return true;
    };
    if qemu_testkit::is_ci() {
        panic!("cannot test qom-fuse and CI=true: {why}");
    }
    qemu_testkit::loud(&format!("SKIPPED: {}: {why}", qemu_testkit::test_name()));
    false
}

/// Is `path` (canonical) a mount point in this mount namespace?
fn is_mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_str().unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(path))
}

/// A `-machine pc -S` QEMU with three QMP monitors (for `qom-fuse`, the test,
/// and the `qom` tool: a monitor serves one client at a time), and a mount point.
struct Fixture {
    qemu: QemuProcess,
    /// The `qom` tool's monitor (the test's own is the third).
    qmp3: PathBuf,
    rt: tokio::runtime::Runtime,
    qom: Qom,
    /// Holds the mount point (`dir/mnt`).
    dir: Option<tempfile::TempDir>,
    mnt: PathBuf,
    tool: Option<QemuProcess>,
}

impl Fixture {
    fn new() -> Option<Fixture> {
        qemu_testkit::init_tracing();
        if !can_mount() {
            return None;
        }
        qemu_testkit::qemu_system()?;
        let dir = qemu_testkit::tempdir("qom-fuse-");
        let qmp2 = dir.path().join("qmp2.sock");
        let qmp3 = dir.path().join("qmp3.sock");
        let chardev = |id: &str, path: &Path| {
            format!("socket,id={id},path={},server=on,wait=off", path.display())
        };
        let (c2, c3) = (chardev("qmp2", &qmp2), chardev("qmp3", &qmp3));
        let qemu = QemuProcess::system_with_listener(&[
            "-machine",
            "pc",
            "-S",
            "-chardev",
            &c2,
            "-mon",
            "chardev=qmp2,mode=control",
            "-chardev",
            &c3,
            "-mon",
            "chardev=qmp3,mode=control",
        ]);
        // QEMU created these sockets before it set up its monitors, which the
        // harness waits for (and QEMU mishandles a connection made earlier).
        assert!(qmp2.exists() && qmp3.exists(), "{}", qemu.log());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt
            .block_on(
                Client::builder()
                    .preserve_order(true)
                    .command_timeout(T)
                    .connect(qmp2.as_path()),
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", qemu.log()));
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let mnt = mnt.canonicalize().unwrap();
        Some(Fixture {
            qemu,
            qmp3,
            rt,
            qom: Qom::new(client),
            dir: Some(dir),
            mnt,
            tool: None,
        })
    }

    /// Start `qom-fuse` with `args` before the mount point, and wait until it is
    /// mounted.
    fn mount(&mut self, args: &[&str]) {
        let socket = self.qemu.qmp_path().to_str().unwrap().to_owned();
        let mut all: Vec<&str> = vec!["-s", &socket];
        all.extend_from_slice(args);
        all.push(self.mnt.to_str().unwrap());
        let tool = QemuProcess::spawn(Path::new(QOM_FUSE), &all, &[]);
        let mnt = self.mnt.clone();
        if !poll_until(T, || is_mounted(&mnt)) {
            panic!("qom-fuse did not mount:\n{}", tool.log());
        }
        // The mount is listed as soon as mount(2) returns, before the tool has
        // answered the kernel's first request (FUSE_INIT): a request made now waits
        // for that answer, so the file system serves when it returns. (Unmounting
        // before then ends the handshake, which the tool reports as a failed mount.)
        if let Err(e) = fs::metadata(&mnt) {
            panic!("qom-fuse does not serve: {e}\n{}", tool.log());
        }
        self.tool = Some(tool);
    }

    fn tool(&mut self) -> &mut QemuProcess {
        self.tool.as_mut().expect("mounted")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    fn get(&self, path: &str, prop: &str) -> Result<Ordered, qemu_tools::qom::QomError> {
        self.rt.block_on(self.qom.get(path, prop))
    }

    fn qmp(&self, cmd: &str, args: qemu_qmp::Value) -> qemu_qmp::Value {
        self.rt
            .block_on(self.qom.client().execute(cmd, Some(args)))
            .unwrap()
    }

    /// The tool's exit, within `limit`.
    fn tool_exits(&mut self, limit: Duration) -> std::process::ExitStatus {
        let tool = self.tool();
        match tool.wait_exit(limit) {
            Some(s) => s,
            None => panic!("qom-fuse still runs after {limit:?}:\n{}", tool.log()),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut tool) = self.tool.take() {
            if tool.exit_status().is_none() {
                let _ = tool.signal(Signal::TERM);
                tool.wait_exit(T);
            }
        }
        // Never leave a mount behind, even when a test failed.
        if !poll_until(T, || !is_mounted(&self.mnt)) {
            let _ = rustix::mount::unmount(&self.mnt, rustix::mount::UnmountFlags::DETACH);
            if !std::thread::panicking() {
                panic!("{} still mounted", self.mnt.display());
            }
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_owned();
            dir.close().unwrap();
            assert!(!path.exists());
        }
    }
}

/// Run an ordinary program to completion; its stdout, which it must succeed.
fn tool_output(cmd: &mut Command) -> String {
    let out = output_within(
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()),
        T,
        "a program",
    );
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn errno(e: &std::io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw_os_error)
}

/// What a walk saw, as `find` lists it: every path below the mount point.
#[derive(Default)]
struct Walk {
    paths: Vec<String>,
    files_read: usize,
    links: usize,
}

/// Walk directory `rel` (a QOM object path) recursively, comparing each with
/// `qom-list` and each value and link with `qom-get`.
fn walk(fx: &Fixture, qom_path: &str, out: &mut Walk) {
    let dir = fx.path(qom_path.trim_start_matches('/'));
    let listed = fx.rt.block_on(fx.qom.list(qom_path)).unwrap();
    let mut seen = BTreeSet::new();
    for entry in fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        seen.insert(entry.file_name().into_string().unwrap());
    }
    let expected: BTreeSet<String> = listed.iter().map(|p| p.name.clone()).collect();
    assert_eq!(seen, expected, "entries of {qom_path}");
    for p in listed.iter() {
        let path = dir.join(&p.name);
        let child = qemu_tools::qom::child_path(qom_path, &p.name);
        out.paths.push(child.clone());
        let meta = fs::symlink_metadata(&path).unwrap();
        if p.is_child() {
            assert!(meta.is_dir(), "{child} ({}) is not a directory", p.type_);
            walk(fx, &child, out);
        } else if p.is_link() {
            assert!(meta.file_type().is_symlink(), "{child} is not a symlink");
            out.links += 1;
            match fx.get(qom_path, &p.name).unwrap() {
                Ordered::String(target) if target.is_empty() => {
                    // Unset: a dangling link.
                    assert_eq!(fs::read_link(&path).unwrap(), Path::new("(unset)"));
                    let e = fs::metadata(&path).unwrap_err();
                    assert_eq!(errno(&e), Some(Errno::NOENT), "{child}: {e}");
                }
                Ordered::String(target) => {
                    let link = fs::read_link(&path).unwrap();
                    // The link resolves inside the mount to the object it names.
                    let resolved = dir.join(&link);
                    assert_eq!(
                        resolved.canonicalize().unwrap(),
                        fx.path(target.trim_start_matches('/')),
                        "{child} -> {}",
                        link.display()
                    );
                }
                other => panic!("{child}: link value {other}"),
            }
        } else {
            assert!(meta.is_file(), "{child} is not a file");
            let read = fs::read_to_string(&path);
            match fx.get(qom_path, &p.name) {
                Ok(v) => {
                    let text = read.unwrap_or_else(|e| panic!("{child}: {e}"));
                    // Values that move on their own (an RTC's time) may differ
                    // between the two reads; the rest must be equal.
                    if p.name != "date" && p.name != "rtc-time" {
                        assert_eq!(text, format!("{}\n", python_str(&v)), "{child}");
                    }
                    out.files_read += 1;
                }
                Err(qom_err) => {
                    let e = read.expect_err(&child);
                    let expected = if qom_err.to_string().contains("is not readable") {
                        Errno::ACCESS
                    } else {
                        Errno::IO
                    };
                    assert_eq!(errno(&e), Some(expected), "{child}: {e} ({qom_err})");
                }
            }
        }
    }
}

#[test]
fn the_tree_is_qoms_and_ordinary_tools_read_it() {
    let Some(mut fx) = Fixture::new() else { return };
    fx.mount(&[]);
    let start = Instant::now();
    let mut seen = Walk::default();
    walk(&fx, "/", &mut seen);
    eprintln!(
        "walked {} paths ({} values read, {} links) in {:?}",
        seen.paths.len(),
        seen.files_read,
        seen.links,
        start.elapsed()
    );
    assert!(seen.paths.len() > 500, "{}", seen.paths.len());
    assert!(seen.links > 10);

    // `find` sees the same paths (it does not follow the symlinks).
    let find = tool_output(Command::new("find").arg(&fx.mnt));
    let found: BTreeSet<String> = find
        .lines()
        .filter_map(|l| l.strip_prefix(fx.mnt.to_str().unwrap()).map(str::to_owned))
        .filter(|l| !l.is_empty())
        .collect();
    let walked: BTreeSet<String> = seen.paths.into_iter().collect();
    assert_eq!(found.len(), walked.len());
    let differ: Vec<_> = found.symmetric_difference(&walked).collect();
    assert!(differ.is_empty(), "find and the walk differ: {differ:?}");

    // `cat` and `qom get` agree; `ls` lists what `qom list` lists; `readlink`
    // gives a path inside the mount.
    let cat = tool_output(Command::new("cat").arg(fx.path("machine/type")));
    let sock = fx.qmp3.to_str().unwrap().to_owned();
    let get = tool_output(Command::new(QOM).args(["-s", &sock, "get", "/machine.type"]));
    assert_eq!(cat, get);
    assert!(cat.starts_with("pc-i440fx-"), "{cat}");
    let ls = tool_output(Command::new("ls").arg("-1").arg(fx.path("objects/pc.ram")));
    let list = tool_output(Command::new(QOM).args(["-s", &sock, "list", "/objects/pc.ram"]));
    let ls: BTreeSet<&str> = ls.lines().collect();
    let list: BTreeSet<&str> = list
        .lines()
        .map(|l| l.trim_end_matches('/').trim_start_matches('@'))
        .collect();
    assert_eq!(ls, list);
    let readlink =
        tool_output(Command::new("readlink").arg(fx.path("machine/unattached/device[0]/memory")));
    assert!(readlink.starts_with("../../../machine/"), "{readlink}");

    // A read-only mount: no write reaches QEMU.
    let e = fs::write(fx.path("machine/dump-guest-core"), "false\n").unwrap_err();
    assert_eq!(errno(&e), Some(Errno::ROFS), "{e}");
    assert_eq!(
        python_str(&fx.get("/machine", "dump-guest-core").unwrap()),
        "True"
    );

    // SIGTERM unmounts and exits 0.
    fx.tool().signal(Signal::TERM).unwrap();
    let status = fx.tool_exits(T);
    assert!(status.success(), "{status}\n{}", fx.tool().log());
    assert!(!is_mounted(&fx.mnt));
    assert!(fx.tool().log().contains("Mounting QOMFS to"));
}

#[test]
fn writes_set_properties_and_errors_say_why() {
    let Some(mut fx) = Fixture::new() else { return };
    // No listing cache, so that a deleted object is gone at once.
    fx.mount(&["--writable", "--cache", "0", "--timeout", "2"]);
    let prop = fx.path("machine/dump-guest-core");
    assert_eq!(fs::read_to_string(&prop).unwrap(), "True\n");
    fs::write(&prop, "false\n").unwrap();
    assert_eq!(
        python_str(&fx.get("/machine", "dump-guest-core").unwrap()),
        "False"
    );
    assert_eq!(fs::read_to_string(&prop).unwrap(), "False\n");
    // What `qom get` prints reads back.
    fs::write(&prop, "True").unwrap();
    assert_eq!(
        python_str(&fx.get("/machine", "dump-guest-core").unwrap()),
        "True"
    );

    // A read-only property: EACCES; a value that does not fit: EINVAL (ours, and
    // QEMU's refusal); the value is unchanged.
    let e = fs::write(fx.path("machine/type"), "x\n").unwrap_err();
    assert_eq!(errno(&e), Some(Errno::ACCESS), "{e}");
    let e = fs::write(&prop, "maybe\n").unwrap_err();
    assert_eq!(errno(&e), Some(Errno::INVAL), "{e}");
    let e = fs::write(fx.path("machine/boot"), "{\"order\": 42}").unwrap_err();
    assert_eq!(errno(&e), Some(Errno::INVAL), "{e}");
    assert_eq!(
        python_str(&fx.get("/machine", "dump-guest-core").unwrap()),
        "True"
    );
    // A property that cannot be read: EIO (QEMU: "No crash occurred").
    let e =
        fs::read_to_string(fx.path("machine/unattached/device[0]/crash-information")).unwrap_err();
    assert_eq!(errno(&e), Some(Errno::IO), "{e}");

    // An object that goes away while open: ENOENT.
    fx.qmp(
        "object-add",
        json!({"qom-type": "secret", "id": "s0", "data": "x"}),
    );
    let file = fx.path("objects/s0/format");
    let mut open = fs::File::open(&file).unwrap();
    assert_eq!(fs::read_to_string(&file).unwrap(), "raw\n");
    fx.qmp("object-del", json!({"id": "s0"}));
    let mut buf = String::new();
    let e = open.read_to_string(&mut buf).unwrap_err();
    assert_eq!(errno(&e), Some(Errno::NOENT), "{e}");
    let e = fs::metadata(fx.path("objects/s0")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    drop(open);

    // A QEMU that does not answer: ETIMEDOUT after --timeout, not a hang; and
    // the mount works again once QEMU does.
    fx.qemu.signal(Signal::STOP).unwrap();
    let start = Instant::now();
    let r = fs::read_to_string(&prop);
    let took = start.elapsed();
    fx.qemu.signal(Signal::CONT).unwrap();
    let e = r.unwrap_err();
    assert_eq!(errno(&e), Some(Errno::TIMEDOUT), "{e}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "{took:?}"
    );
    assert_eq!(fs::read_to_string(&prop).unwrap(), "True\n");
}

#[test]
fn qemu_dying_unmounts_and_ends_the_tool() {
    let Some(mut fx) = Fixture::new() else { return };
    fx.mount(&[]);
    assert!(fs::read_dir(fx.path("machine")).unwrap().count() > 10);
    fx.qemu.kill_now();
    let status = fx.tool_exits(T);
    let log = fx.tool().log();
    assert_eq!(status.code(), Some(1), "{status}\n{log}");
    assert!(log.contains("qom-fuse: the QMP connection ended"), "{log}");
    assert!(!is_mounted(&fx.mnt));
    assert_eq!(fs::read_dir(&fx.mnt).unwrap().count(), 0);
}

#[test]
fn busy_killed_and_unmounted_from_outside_leave_no_mount() {
    let Some(mut fx) = Fixture::new() else { return };
    fx.mount(&[]);
    // An open file keeps the mount busy: SIGTERM detaches it all the same.
    let mut open = fs::File::open(fx.path("machine/type")).unwrap();
    fx.tool().signal(Signal::TERM).unwrap();
    let status = fx.tool_exits(T);
    assert!(status.success(), "{status}\n{}", fx.tool().log());
    assert!(!is_mounted(&fx.mnt));
    // The tool is gone: the open file fails, it does not hang.
    let mut buf = String::new();
    let e = open.read_to_string(&mut buf).unwrap_err();
    assert_eq!(errno(&e), Some(Errno::NOTCONN), "{e}");
    drop(open);

    // SIGKILL: nothing of the tool runs, its watchdog unmounts.
    fx.tool = None;
    fx.mount(&[]);
    fx.tool().signal(Signal::KILL).unwrap();
    fx.tool_exits(T);
    wait_until(T, "the watchdog to unmount", || !is_mounted(&fx.mnt));
    assert_eq!(fs::read_dir(&fx.mnt).unwrap().count(), 0);

    // Unmounted from outside: the tool ends, status 0.
    fx.tool = None;
    fx.mount(&[]);
    rustix::mount::unmount(&fx.mnt, rustix::mount::UnmountFlags::empty()).unwrap();
    let status = fx.tool_exits(T);
    assert!(status.success(), "{status}\n{}", fx.tool().log());
}

#[test]
fn bad_mount_points_and_usage_fail_cleanly() {
    let dir = qemu_testkit::tempdir("qom-fuse-");
    let run = |args: &[&str]| {
        output_within(
            Command::new(QOM_FUSE)
                .args(args)
                .env_remove("QMP_SOCKET")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
            T,
            "qom-fuse",
        )
    };
    let out = run(&[dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No QMP socket"));
    // Nothing listens on the socket.
    let sock = dir.path().join("none.sock");
    let out = run(&["-s", sock.to_str().unwrap(), dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("qom-fuse: ") && err.lines().count() == 1,
        "{err}"
    );

    // A mount point that is not a directory, with a real QEMU.
    let Some(fx) = Fixture::new() else { return };
    let file = dir.path().join("file");
    fs::write(&file, "").unwrap();
    let qmp = fx.qemu.qmp_path().to_str().unwrap().to_owned();
    let out = run(&["-s", &qmp, file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot mount on") && err.contains("not a directory"),
        "{err}"
    );
    assert!(!is_mounted(&file));
}
