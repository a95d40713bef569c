//! [`QemuProcess`]: QEMU (or any program) as a child that cannot outlive the test.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::binaries::{require_binary, QEMU_SYSTEM_ENV, STORAGE_DAEMON_ENV};
use crate::ready::MonitorsReady;

/// Largest Unix socket path (`sun_path` is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Pids of children owned by a live `QemuProcess`. Held across spawn so that
/// [`qemu_children`](crate::qemu_children) never sees a harness child that is
/// not yet registered.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

pub(crate) fn live() -> MutexGuard<'static, Vec<u32>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Returns `fd`, or a close-on-exec duplicate numbered 3 or higher if `fd` is
/// 0, 1 or 2 (possible when the test runs with stdio closed); inherited fds
/// must not collide with the child's stdio.
pub fn above_stdio(fd: OwnedFd) -> OwnedFd {
    qemu_process::above_stdio(fd).expect("fcntl(F_DUPFD_CLOEXEC)")
}

/// Makes `listener` a listening socket fit to hand QEMU
/// (`-chardev socket,fd=N,server=on`): non-blocking, and numbered 3 or higher
/// (see [`above_stdio`]).
///
/// Non-blocking because QEMU's event loops should never wait in `accept(2)`:
/// when two of its threads see the same connection (see
/// [`MonitorsReady`](crate::MonitorsReady) for when), the second `accept` on a
/// blocking listener waits for good, and when that is the main thread, QEMU
/// stops. On a non-blocking one it fails with `EAGAIN`, which QEMU ignores. The
/// flag belongs to the open file, so it is set here, before the fork.
pub fn listener_for_qemu(listener: impl Into<OwnedFd>) -> OwnedFd {
    let fd = above_stdio(listener.into());
    rustix::io::ioctl_fionbio(&fd, true).expect("ioctl(FIONBIO)");
    fd
}

/// Binds a Unix socket at `path` and returns it as [`listener_for_qemu`] does.
/// Panics (saying which path) if it cannot be bound, or if `path` is too long
/// for a Unix socket.
pub fn bind_for_qemu(path: &Path) -> OwnedFd {
    assert!(
        path.as_os_str().len() <= MAX_SOCKET_PATH,
        "socket path too long for a Unix socket ({} bytes): {}; set TMPDIR to a shorter directory",
        path.as_os_str().len(),
        path.display()
    );
    let listener =
        UnixListener::bind(path).unwrap_or_else(|e| panic!("cannot bind {}: {e}", path.display()));
    listener_for_qemu(listener)
}

/// QEMU option values separate sub-options by ','; a literal ',' is ",,".
fn qemu_opt_escape(path: &Path) -> String {
    path.to_str()
        .unwrap_or_else(|| panic!("path is not UTF-8: {}", path.display()))
        .replace(',', ",,")
}

fn has_machine_arg(extra_args: &[&str]) -> bool {
    extra_args.iter().any(|a| {
        matches!(*a, "-machine" | "--machine" | "-M")
            || a.starts_with("-machine=")
            || a.starts_with("--machine=")
    })
}

/// `-machine none -nodefaults -display none` (without `-machine none` if the
/// extra args choose a machine).
fn system_base_args(extra_args: &[&str]) -> Vec<String> {
    let mut args = Vec::new();
    if !has_machine_arg(extra_args) {
        args.extend(["-machine".to_owned(), "none".to_owned()]);
    }
    args.extend(["-nodefaults", "-display", "none"].map(String::from));
    args
}

/// The socket file of QMP monitor `n` (1-based).
fn monitor_file(n: usize) -> String {
    if n <= 1 {
        "qmp.sock".to_owned()
    } else {
        format!("qmp{n}.sock")
    }
}

fn new_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("qemu-test-")
        .tempdir()
        .expect("cannot create a temporary directory")
}

/// A QEMU child process with its own temporary directory. Dropping it sends
/// SIGKILL, reaps the child, then deletes the directory.
pub struct QemuProcess {
    child: Child,
    /// Set once the child has been reaped; after that its pid may be reused.
    status: Option<ExitStatus>,
    qmp_path: Option<PathBuf>,
    log_path: PathBuf,
    dir: tempfile::TempDir,
}

impl QemuProcess {
    /// Starts `binary` with `args` in a fresh temporary directory; see
    /// [`QemuProcess::spawn_in`].
    pub fn spawn<S: AsRef<OsStr>>(
        binary: &Path,
        args: &[S],
        inherited_fds: &[BorrowedFd<'_>],
    ) -> QemuProcess {
        Self::spawn_in(new_tempdir(), binary, args, inherited_fds)
    }

    /// Starts `binary` with `args`, owning `dir` (prepare files in it first,
    /// e.g. disk images). `inherited_fds` stay open across exec under the same
    /// numbers (they must be 3 or higher); every other fd of the test process
    /// stays close-on-exec. stdin is /dev/null; stdout and stderr go to
    /// `<dir>/qemu.log` (see [`QemuProcess::log`]), after a first line with
    /// the command. Panics if the process cannot be started.
    pub fn spawn_in<S: AsRef<OsStr>>(
        dir: tempfile::TempDir,
        binary: &Path,
        args: &[S],
        inherited_fds: &[BorrowedFd<'_>],
    ) -> QemuProcess {
        let fds: Vec<RawFd> = inherited_fds.iter().map(|fd| fd.as_raw_fd()).collect();
        if let Some(fd) = fds.iter().find(|fd| **fd <= 2) {
            panic!("cannot pass fd {fd} to QEMU: it would collide with its stdio; use a fd >= 3");
        }

        let log_path = dir.path().join("qemu.log");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let mut cmdline = format!("+ {}", binary.display());
        for arg in args {
            let _ = write!(cmdline, " {}", arg.as_ref().to_string_lossy());
        }
        if !fds.is_empty() {
            let _ = write!(cmdline, "    # inherited fds: {fds:?}");
        }
        let _ = writeln!(log, "{cmdline}");
        let stderr = log.try_clone().expect("dup log file");

        let mut command = Command::new(binary);
        command
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        // Forked on `qemu_process`'s long-lived spawner thread with
        // PR_SET_PDEATHSIG=SIGKILL, as the leader of a new process group, with
        // `inherited_fds` made inheritable in the child only (so children that
        // other test threads start meanwhile never get them).
        let mut spawn = qemu_process::Spawn::new(command);
        for fd in inherited_fds {
            spawn.inherit(*fd);
        }

        // Hold the registry lock until the pid is registered, so that
        // `qemu_children` never reports a child that is owned by a harness.
        let mut live = live();
        let child = spawn
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        live.push(child.id());
        drop(live);

        QemuProcess {
            child,
            status: None,
            qmp_path: None,
            log_path,
            dir,
        }
    }

    /// Binds `<tempdir>/qmp.sock`, returns the dir, the path and the listener
    /// as an fd suitable for inheritance.
    fn listener_in_tempdir() -> (tempfile::TempDir, PathBuf, OwnedFd) {
        let dir = new_tempdir();
        let path = dir.path().join("qmp.sock");
        let listener = bind_for_qemu(&path);
        (dir, path, listener)
    }

    /// `qemu-system-x86_64` whose QMP monitor listens on [`Self::qmp_path`].
    ///
    /// The harness binds the socket before QEMU starts and hands QEMU the
    /// listening fd (`-chardev socket,id=qmp,fd=N,server=on,wait=off -mon
    /// chardev=qmp,mode=control`; see [`bind_for_qemu`]), then returns once
    /// QEMU has set up its monitors (see [`MonitorsReady`]), so a client may
    /// connect right away. No polling. Adds `-machine none -nodefaults -display
    /// none` (no `-machine none` if `extra_args` has `-machine`/`-M`);
    /// `extra_args` come next, and the [`MonitorsReady`] monitor last.
    ///
    /// The harness keeps no copy of the listener, so once QEMU is dead,
    /// connecting fails with `ECONNREFUSED` instead of hanging.
    pub fn system_with_listener(extra_args: &[&str]) -> QemuProcess {
        Self::system_with_monitors(1, extra_args)
    }

    /// [`Self::system_with_listener`] with `count` QMP monitors, each listening on
    /// a socket of its own in QEMU's directory ([`Self::monitor_path`]): the first
    /// for the client under test, the others for a test to act on QEMU behind its
    /// back (a QMP monitor serves one client at a time).
    pub fn system_with_monitors(count: usize, extra_args: &[&str]) -> QemuProcess {
        let binary = require_binary("qemu-system-x86_64", QEMU_SYSTEM_ENV);
        let (dir, path, first) = Self::listener_in_tempdir();
        let mut listeners = vec![first];
        for n in 2..=count {
            listeners.push(bind_for_qemu(&dir.path().join(monitor_file(n))));
        }
        let mut args = system_base_args(extra_args);
        for (i, l) in listeners.iter().enumerate() {
            let id = if i == 0 {
                "qmp".to_owned()
            } else {
                format!("qmp{}", i + 1)
            };
            args.push("-chardev".into());
            args.push(format!(
                "socket,id={id},fd={},server=on,wait=off",
                l.as_raw_fd()
            ));
            args.extend(["-mon".to_owned(), format!("chardev={id},mode=control")]);
        }
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let ready = MonitorsReady::new();
        args.extend(ready.system_args());
        let mut fds: Vec<_> = listeners.iter().map(|l| l.as_fd()).collect();
        fds.push(ready.fd());
        let mut qemu = Self::spawn_in(dir, &binary, &args, &fds);
        qemu.qmp_path = Some(path);
        // QEMU holds the only copies of the listeners from here.
        drop(listeners);
        ready.wait(&qemu);
        qemu
    }

    /// The socket of QMP monitor `n` (1-based) of [`Self::system_with_monitors`]:
    /// `qmp.sock`, `qmp2.sock`, ... in QEMU's directory.
    pub fn monitor_path(&self, n: usize) -> PathBuf {
        self.dir().join(monitor_file(n))
    }

    /// `qemu-storage-daemon` whose QMP monitor listens on [`Self::qmp_path`]
    /// (`--chardev socket,id=qmp,fd=N,server=on,wait=off --monitor
    /// chardev=qmp`), like [`Self::system_with_listener`]. `extra_args` come last.
    pub fn storage_daemon_with_listener(extra_args: &[&str]) -> QemuProcess {
        let binary = require_binary("qemu-storage-daemon", STORAGE_DAEMON_ENV);
        let (dir, path, listener) = Self::listener_in_tempdir();
        let fd = listener.as_raw_fd();
        let mut args = vec![
            "--chardev".to_owned(),
            format!("socket,id=qmp,fd={fd},server=on,wait=off"),
            "--monitor".to_owned(),
            "chardev=qmp".to_owned(),
        ];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let ready = MonitorsReady::new();
        args.extend(ready.storage_daemon_args());
        let mut qemu = Self::spawn_in(dir, &binary, &args, &[listener.as_fd(), ready.fd()]);
        qemu.qmp_path = Some(path);
        drop(listener);
        ready.wait(&qemu);
        qemu
    }

    /// `qemu-system-x86_64` whose QMP monitor is one end of a connected
    /// socketpair (`-chardev socket,id=qmp,fd=N`); returns the other end,
    /// already connected (blocking mode; call `set_nonblocking(true)` before
    /// handing it to tokio). The harness keeps no copy of QEMU's end, so the
    /// returned stream sees EOF when QEMU dies. Base args as in
    /// [`Self::system_with_listener`]; there is no [`Self::qmp_path`].
    pub fn system_with_socketpair(extra_args: &[&str]) -> (QemuProcess, UnixStream) {
        let binary = require_binary("qemu-system-x86_64", QEMU_SYSTEM_ENV);
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let theirs = above_stdio(OwnedFd::from(theirs));
        let fd = theirs.as_raw_fd();
        let mut args = system_base_args(extra_args);
        args.push("-chardev".into());
        args.push(format!("socket,id=qmp,fd={fd}"));
        args.extend(["-mon", "chardev=qmp,mode=control"].map(String::from));
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let qemu = Self::spawn(&binary, &args, &[theirs.as_fd()]);
        (qemu, ours)
    }

    /// `qemu-system-x86_64` whose QMP monitor connects, at startup, to the
    /// Unix socket at `path` that the test is already listening on
    /// (`-chardev socket,id=qmp,path=<path>,server=off -mon
    /// chardev=qmp,mode=control`), for testing the server side. QEMU exits
    /// with an error if nothing listens there. Base args as in
    /// [`Self::system_with_listener`].
    pub fn system_connecting_to(path: &Path, extra_args: &[&str]) -> QemuProcess {
        let binary = require_binary("qemu-system-x86_64", QEMU_SYSTEM_ENV);
        let mut args = system_base_args(extra_args);
        args.push("-chardev".into());
        args.push(format!(
            "socket,id=qmp,path={},server=off",
            qemu_opt_escape(path)
        ));
        args.extend(["-mon", "chardev=qmp,mode=control"].map(String::from));
        args.extend(extra_args.iter().map(|a| a.to_string()));
        Self::spawn(&binary, &args, &[])
    }

    /// Path of the QMP listening socket (`<tempdir>/qmp.sock`). Panics for
    /// processes not made by a `*_with_listener` constructor.
    pub fn qmp_path(&self) -> &Path {
        self.qmp_path
            .as_deref()
            .expect("qmp_path(): this QemuProcess was not started with a listener")
    }

    /// The process's temporary directory (its working directory too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process id of the QEMU child.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything QEMU wrote to stdout and stderr so far, after a first line
    /// `+ <command line>`. For assertion messages.
    pub fn log(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("<cannot read {}: {e}>", self.log_path.display()),
        }
    }

    /// Sends `sig` to QEMU. Fails with `ESRCH` once the child was reaped (by
    /// [`Self::wait_exit`]); until then the pid cannot be reused.
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        if self.status.is_some() {
            return Err(rustix::io::Errno::SRCH.into());
        }
        rustix::process::kill_process(Pid::from_child(&self.child), sig)?;
        Ok(())
    }

    /// SIGKILL now, without waiting or reaping: for "QEMU dies mid-command"
    /// tests. No-op if already reaped. Use [`Self::wait_exit`] to reap.
    pub fn kill_now(&self) {
        if self.status.is_none() {
            self.signal(Signal::KILL).expect("kill(SIGKILL)");
        }
    }

    /// Waits up to `timeout` for QEMU to exit and reaps it; `None` if it is
    /// still running. Returns the same status again on later calls.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.status.is_some() {
                return self.status;
            }
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.status = Some(status);
                    unregister(self.child.id());
                }
                Ok(None) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    thread::sleep((deadline - now).min(Duration::from_millis(10)));
                }
                Err(e) => panic!("waitpid({}): {e}", self.child.id()),
            }
        }
    }

    /// Exit status if the child has already been reaped by [`Self::wait_exit`].
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.status
    }
}

fn unregister(pid: u32) {
    live().retain(|p| *p != pid);
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            // The child is not reaped yet, so the pid (and the id of the process
            // group it leads) is still ours: first what it forked, then itself.
            let _ = qemu_process::kill_group(Pid::from_child(&self.child), Signal::KILL);
            let _ = self.child.kill();
            match self.child.wait() {
                Ok(status) => self.status = Some(status),
                Err(e) => {
                    let _ = writeln!(
                        io::stderr(),
                        "QemuProcess: waitpid({}): {e}",
                        self.child.id()
                    );
                }
            }
            unregister(self.child.id());
        }
        if thread::panicking() {
            // Captured by libtest and shown with the failing test's output.
            eprintln!(
                "---- QEMU (pid {}) log, {} ----\n{}---- end of QEMU log ----",
                self.child.id(),
                self.log_path.display(),
                self.log()
            );
        }
        // `dir` (with the socket and the log) is removed after this.
    }
}
