//! Starting QEMU and watching it exit.
//!
//! # Where QEMU is forked
//!
//! Every child is started with `PR_SET_PDEATHSIG = SIGKILL`, so that it dies when we
//! die. The kernel ties that signal to the *thread* that forked, not to the process:
//! a child forked from a tokio blocking-pool thread would be killed when that thread
//! idles out, and one forked from a runtime worker when its runtime shuts down. So
//! all forks happen on one process-global `qemu-spawner` thread that is started on
//! first use and lives as long as the process; launches send it a job and await the
//! reply.
//!
//! # Waiting for exit
//!
//! Right after the fork the spawner opens a pidfd for the child. A small waiter
//! thread per child blocks in `waitid(P_PIDFD, WEXITED | WNOWAIT)` until the child
//! exits, then reaps it and publishes the status on a watch channel, which tasks
//! await; nothing polls, and it works whichever runtime (if any) is running. The
//! waiter does not reap while it waits, so the pid cannot be recycled under us; and
//! signals go through the pidfd anyway. Dropping a [`Process`] that is still running
//! sends SIGKILL and reaps it synchronously.
//!
//! # Inherited descriptors
//!
//! Descriptors meant for QEMU stay close-on-exec in the parent; the flag is cleared
//! only in the child, between fork and exec. Clearing it in the parent would leak
//! them into every other program that any thread starts meanwhile. The parent's
//! copies are closed right after the fork, so that when QEMU dies its sockets see
//! end-of-file.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::panic::AssertUnwindSafe;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use rustix::process::{PidfdFlags, Signal, WaitId, WaitIdOptions, WaitIdStatus};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

type Job = Box<dyn FnOnce() + Send>;

/// The process-global spawner thread's job queue.
fn spawner() -> io::Result<&'static mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Result<mpsc::Sender<Job>, String>> = OnceLock::new();
    let slot = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("qemu-spawner".into())
            .spawn(move || {
                for job in rx {
                    // A panicking job must not end this thread: every child it
                    // forked would get its death signal.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                }
            })
            .map(|_| tx)
            .map_err(|e| e.to_string())
    });
    slot.as_ref()
        .map_err(|e| io::Error::other(format!("cannot start the qemu-spawner thread: {e}")))
}

/// Returns `fd`, or a close-on-exec duplicate numbered 3 or higher when it is 0, 1 or
/// 2 (possible when our own stdio is closed): the child's stdio would overwrite it.
pub(crate) fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    Ok(rustix::io::fcntl_dupfd_cloexec(&fd, 3)?)
}

/// Start `command` on the spawner thread, with `inherit` open in the child under the
/// same numbers (they must be above 2; see [`above_stdio`]), `PR_SET_PDEATHSIG`
/// set to SIGKILL, and a pidfd to watch it. Our copies of `inherit` are closed once
/// the child has been forked.
///
/// `label` names the machine in log lines, `shown` is its command line for them.
pub(crate) async fn spawn(
    mut command: Command,
    inherit: Vec<OwnedFd>,
    label: String,
    shown: String,
) -> io::Result<Process> {
    let fds: Vec<RawFd> = inherit.iter().map(|f| f.as_raw_fd()).collect();
    if let Some(fd) = fds.iter().find(|fd| **fd <= 2) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} would collide with QEMU's stdio"),
        ));
    }
    let parent = rustix::process::getpid();
    // Runs in the forked child before exec, where only async-signal-safe operations
    // are allowed: raw system calls through rustix (fcntl, prctl, getppid), no
    // allocation (it only reads the vector captured before the fork), no locks;
    // errors are built from errno values, which does not allocate either.
    let child_setup = move || -> io::Result<()> {
        for &raw in &fds {
            // SAFETY: `raw` is one of the descriptors in `inherit`, which the job below
            // keeps open until `spawn` has returned, i.e. until the child has exec'd or
            // failed; the child got a copy of the descriptor table at fork.
            let fd = unsafe { BorrowedFd::borrow_raw(raw) };
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
        }
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
        // If we died before the prctl, the signal will never come: fail the exec
        // rather than leave an orphan.
        if rustix::process::getppid() != Some(parent) {
            return Err(rustix::io::Errno::SRCH.into());
        }
        Ok(())
    };
    // SAFETY: `child_setup` only makes async-signal-safe system calls (see above).
    unsafe {
        command.pre_exec(child_setup);
    }

    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let result = command.spawn().and_then(|child| {
            let pid = child.id();
            // The child is not reaped by anyone yet, so its pid is still its own.
            match rustix::process::pidfd_open(
                rustix::process::Pid::from_child(&child),
                PidfdFlags::empty(),
            ) {
                Ok(pidfd) => Ok((pid, pidfd)),
                Err(e) => {
                    let mut child = child;
                    let _ = child.kill();
                    let _ = child.wait();
                    Err(io::Error::new(
                        io::Error::from(e).kind(),
                        format!("pidfd_open failed (Linux 5.3 or later is needed): {e}"),
                    ))
                }
            }
        });
        // Close our copies of the child's descriptors now.
        drop(inherit);
        if let Err(Ok((_, pidfd))) = tx.send(result) {
            // The launch was cancelled while we forked: nobody will own this child.
            debug!("launch cancelled during the fork: killing the new child");
            let _ = rustix::process::pidfd_send_signal(&pidfd, Signal::KILL);
            let _ = rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED);
        }
    });
    spawner()?
        .send(job)
        .map_err(|_| io::Error::other("the qemu-spawner thread is gone"))?;
    let (pid, pidfd) = rx
        .await
        .map_err(|_| io::Error::other("the qemu-spawner thread dropped the spawn request"))??;
    Process::watch(pid, pidfd, label, shown)
}

/// A child process, watched through a pidfd. Dropping it kills and reaps the child.
#[derive(Debug)]
pub(crate) struct Process {
    pid: u32,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    pidfd: OwnedFd,
    status: watch::Sender<Option<ExitStatus>>,
    /// Set before we send a terminating signal, so that death by it is not reported
    /// as unexpected.
    signalled: AtomicBool,
    /// Serialises reaping, so that the status is published exactly once.
    reap_lock: Mutex<()>,
    label: String,
    /// The command line, for the warning about an unexpected signal.
    command: String,
}

impl Process {
    fn watch(pid: u32, pidfd: OwnedFd, label: String, command: String) -> io::Result<Process> {
        let shared = Arc::new(Shared {
            pidfd,
            status: watch::channel(None).0,
            signalled: AtomicBool::new(false),
            reap_lock: Mutex::new(()),
            label,
            command,
        });
        let s = shared.clone();
        let waiter = std::thread::Builder::new()
            .name("qemu-waiter".into())
            .stack_size(256 * 1024)
            .spawn(move || s.wait_then_reap());
        if let Err(e) = waiter {
            let _ = shared.kill_and_reap();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot start a thread to wait for QEMU: {e}"),
            ));
        }
        Ok(Process { pid, shared })
    }

    /// The child's pid. Only meaningful while [`status`](Self::status) is `None`:
    /// afterwards the pid may belong to another process.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status, once the child has exited and been reaped.
    pub(crate) fn status(&self) -> Option<ExitStatus> {
        *self.shared.status.borrow()
    }

    /// Whether we sent a terminating signal.
    pub(crate) fn signalled_by_us(&self) -> bool {
        self.shared.signalled.load(Ordering::SeqCst)
    }

    /// Wait for the child to exit (cancel-safe).
    pub(crate) async fn wait(&self) -> ExitStatus {
        let mut rx = self.shared.status.subscribe();
        loop {
            if let Some(s) = *rx.borrow_and_update() {
                return s;
            }
            if rx.changed().await.is_err() {
                // Cannot happen: `self.shared` holds the sender. Do not spin.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Wait until the deadline for the child to exit.
    pub(crate) async fn wait_until(&self, deadline: Instant) -> Option<ExitStatus> {
        tokio::time::timeout_at(deadline, self.wait()).await.ok()
    }

    /// Wait at most `timeout` for the child to exit.
    pub(crate) async fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.wait()).await.ok()
    }

    /// Send a signal (through the pidfd, so it cannot reach a recycled pid). Sending
    /// to a child that has already exited is not an error.
    pub(crate) fn signal(&self, sig: Signal) -> io::Result<()> {
        if sig != Signal::STOP && sig != Signal::CONT {
            self.shared.signalled.store(true, Ordering::SeqCst);
        }
        if self.status().is_some() {
            return Ok(());
        }
        match rustix::process::pidfd_send_signal(self.shared.pidfd.as_fd(), sig) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// SIGKILL (if still running) and reap, blocking the thread until the kernel has
    /// torn the child down (normally well under a millisecond). Returns the status.
    pub(crate) fn kill_and_reap(&self) -> ExitStatus {
        self.shared.kill_and_reap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.shared.kill_and_reap();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ()> {
        self.reap_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The waiter thread: block until the child exits (without reaping it, so that
    /// its pid stays reserved and `kill_and_reap` can run concurrently), then reap it.
    fn wait_then_reap(&self) {
        loop {
            let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
            match rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), options) {
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) => continue,
                // Already reaped (ECHILD), or something odd: `reap` tells.
                Err(_) => break,
            }
        }
        let _ = self.reap(false);
    }

    fn kill_and_reap(&self) -> ExitStatus {
        if let Some(s) = *self.status.borrow() {
            return s;
        }
        self.signalled.store(true, Ordering::SeqCst);
        if let Err(e) = rustix::process::pidfd_send_signal(self.pidfd.as_fd(), Signal::KILL) {
            if e != rustix::io::Errno::SRCH {
                warn!(name = %self.label, "could not kill QEMU: {e}");
            }
        }
        // A blocking reap always returns a status.
        self.reap(true)
            .unwrap_or_else(|| ExitStatus::from_raw(Signal::KILL.as_raw()))
    }

    /// Reap the child if it has exited (or, with `block`, once it exits), and publish
    /// its status. Returns the status if known.
    fn reap(&self, block: bool) -> Option<ExitStatus> {
        let _guard = self.lock();
        if let Some(s) = *self.status.borrow() {
            return Some(s);
        }
        let mut options = WaitIdOptions::EXITED;
        if !block {
            options |= WaitIdOptions::NOHANG;
        }
        let status = loop {
            match rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), options) {
                Ok(Some(st)) => break to_exit_status(&st),
                Ok(None) => return None,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    // ECHILD: something else in this process reaped our child (a
                    // `waitpid(-1)`, or SIGCHLD set to SIG_IGN). It is gone, but its
                    // status is lost.
                    warn!(
                        name = %self.label,
                        "QEMU's exit status is lost, something else reaped it ({e}); reporting exit code 255"
                    );
                    break ExitStatus::from_raw(255 << 8);
                }
            }
        };
        self.publish(status);
        Some(status)
    }

    fn publish(&self, status: ExitStatus) {
        match status.signal() {
            Some(sig) if !self.signalled.load(Ordering::SeqCst) => warn!(
                name = %self.label,
                "QEMU was killed by signal {sig}{}, which this library did not send; command: {}",
                if status.core_dumped() { " (core dumped)" } else { "" },
                self.command
            ),
            _ => debug!(name = %self.label, "QEMU exited: {status}"),
        }
        self.status.send_replace(Some(status));
    }
}

fn to_exit_status(st: &WaitIdStatus) -> ExitStatus {
    if let Some(code) = st.exit_status() {
        ExitStatus::from_raw((code & 0xff) << 8)
    } else if let Some(sig) = st.terminating_signal() {
        ExitStatus::from_raw((sig & 0x7f) | if st.dumped() { 0x80 } else { 0 })
    } else {
        // Only exits are waited for; keep a value that is not "success".
        ExitStatus::from_raw(255 << 8)
    }
}

/// A Python-style exit code: the exit code, or minus the signal that killed it.
pub(crate) fn python_exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| -s))
        .unwrap_or(-1)
}
