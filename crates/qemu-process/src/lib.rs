//! Children that cannot outlive their owner.
//!
//! The one place in the workspace that forks and execs a child with
//! `PR_SET_PDEATHSIG`, and the only one with `unsafe` for it. [`Spawn`] starts a
//! [`Command`] so that:
//!
//! - the kernel sends it SIGKILL when this process dies, even by SIGKILL: the child
//!   sets `PR_SET_PDEATHSIG` between fork and exec, and the fork happens on one
//!   long-lived *spawner thread*, because the kernel ties that signal to the thread
//!   that forked, not to the process;
//! - it leads a new process group, so that [`kill_group`] also reaches what it forks
//!   (a wrapper such as `timeout` or `sh -c` that starts QEMU);
//! - chosen descriptors are open in it under the same numbers, while they stay
//!   close-on-exec in this process, so that programs that other threads start at
//!   the same time never inherit them;
//! - it never runs at all if this process died before the death signal was armed.
//!
//! ```no_run
//! use std::os::fd::AsRawFd;
//! use std::os::unix::net::UnixStream;
//! use std::process::Command;
//!
//! # fn f() -> std::io::Result<()> {
//! let (ours, theirs) = UnixStream::pair()?;
//! let theirs = qemu_process::above_stdio(theirs.into())?;
//! let mut command = Command::new("qemu-system-x86_64");
//! command
//!     .args(["-machine", "none", "-display", "none", "-chardev"])
//!     .arg(format!("socket,id=qmp,fd={}", theirs.as_raw_fd()))
//!     .args(["-mon", "chardev=qmp,mode=control"]);
//! let mut spawn = qemu_process::Spawn::new(command);
//! spawn.inherit_owned(theirs); // our copy is closed right after the fork
//! let child = spawn.spawn()?; // blocks for one fork and exec
//! // QMP on `ours`; `child` dies with this process at the latest.
//! # drop((ours, child)); Ok(()) }
//! ```
//!
//! Work that must run on the spawner thread around a spawn (opening a pidfd,
//! deciding whether a cancelled request still wants its child) goes there with
//! [`submit`] (non-blocking) or [`on_spawner_thread`] (blocking); a
//! [`Spawn::spawn`] inside such a job forks right there.
//!
//! Linux only.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(unsafe_code)]

use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::panic::AssertUnwindSafe;
use std::process::{Child, Command};
use std::sync::{mpsc, OnceLock};

use rustix::io::Errno;
pub use rustix::process::{Pid, Signal};

#[cfg(test)]
mod tests;

/// The name of the spawner thread.
pub const SPAWNER_THREAD_NAME: &str = "qemu-spawner";

/// A [`Command`] to start as a child that cannot outlive this process, with
/// descriptors to pass it. See the [crate documentation](crate).
///
/// `'fd` is the lifetime of the descriptors lent with [`inherit`](Self::inherit);
/// with none lent, a `Spawn<'static>` can be moved into a job for [`submit`].
#[derive(Debug)]
pub struct Spawn<'fd> {
    command: Command,
    borrowed: Vec<BorrowedFd<'fd>>,
    owned: Vec<OwnedFd>,
}

impl<'fd> Spawn<'fd> {
    /// Prepares `command` (its program, arguments, environment, directory and
    /// stdio as set on it). Its process group is set to a new one, led by the
    /// child.
    pub fn new(mut command: Command) -> Spawn<'fd> {
        // `setpgid(0, 0)` in the child, before exec.
        command.process_group(0);
        Spawn {
            command,
            borrowed: Vec::new(),
            owned: Vec::new(),
        }
    }

    /// Opens `fd` in the child under the same number (it must be 3 or higher; see
    /// [`above_stdio`]). It stays close-on-exec here; the flag is cleared in the
    /// child only, between fork and exec.
    pub fn inherit(&mut self, fd: BorrowedFd<'fd>) -> &mut Self {
        self.borrowed.push(fd);
        self
    }

    /// Like [`inherit`](Self::inherit), and closes `fd` here right after the fork:
    /// once the child has exited, the other end of a socket or pipe sees
    /// end-of-file.
    pub fn inherit_owned(&mut self, fd: OwnedFd) -> &mut Self {
        self.owned.push(fd);
        self
    }

    /// Forks and execs on the spawner thread (right here when called on it, from a
    /// job), and returns once the program runs or has failed to start, like
    /// [`Command::spawn`]. The child has `PR_SET_PDEATHSIG = SIGKILL` and leads a
    /// new process group (its pid is the group id).
    ///
    /// Fails with `InvalidInput` when a descriptor to inherit is 0, 1 or 2 (the
    /// child's stdio would replace it), and with `ESRCH` when this process died
    /// before the child could arm its death signal (its parent is then another
    /// process; it does not exec).
    pub fn spawn(self) -> io::Result<Child> {
        let Spawn {
            command,
            borrowed,
            owned,
        } = self;
        let fds: Vec<RawFd> = borrowed
            .iter()
            .map(|fd| fd.as_raw_fd())
            .chain(owned.iter().map(|fd| fd.as_raw_fd()))
            .collect();
        if let Some(fd) = fds.iter().find(|fd| **fd <= 2) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("descriptor {fd} would collide with the child's stdio"),
            ));
        }
        // The job gets only the numbers of the lent descriptors: `borrowed` stays
        // here, and so open, until `on_spawner_thread` has returned, i.e. until the
        // job has forked (or panicked, or never run).
        let result = on_spawner_thread(move || fork_exec(command, fds, owned));
        drop(borrowed);
        result?
    }
}

/// Forks and execs `command` with `fds` inherited, on the spawner thread; closes
/// `owned` once the child has been forked.
///
/// Every number in `fds` is that of a descriptor that stays open in this process
/// until this function has returned: one in `owned`, or one lent to
/// [`Spawn::spawn`], which waits for this function.
#[allow(unsafe_code)]
fn fork_exec(mut command: Command, fds: Vec<RawFd>, owned: Vec<OwnedFd>) -> io::Result<Child> {
    debug_assert!(is_spawner_thread());
    let parent = rustix::process::getpid();
    // SAFETY: two obligations, both met.
    //
    // `pre_exec`: the hook runs in the forked child before exec, where only
    // async-signal-safe operations are allowed. It makes raw system calls through
    // rustix (fcntl, prctl, getppid), takes no locks, and does not allocate: it
    // only reads the vector and the pid captured before the fork, and its errors
    // are errno values, which `io::Error` holds without allocating.
    //
    // `BorrowedFd::borrow_raw`: each `raw` was open in this process when it forked
    // (see above: the caller keeps it open until we return, which is after
    // `spawn` has forked), so it is open in the child, whose descriptor table is
    // a copy made by the fork. Nothing closes it there before the hook runs: std
    // only moves the stdio onto 0, 1 and 2, and `Spawn::spawn` refused those
    // numbers. The borrow lasts for one `fcntl`.
    unsafe {
        command.pre_exec(move || {
            for &raw in &fds {
                // Clear FD_CLOEXEC in the child only: clearing it in the parent
                // would leak the descriptor into whatever other threads start
                // meanwhile.
                let fd = BorrowedFd::borrow_raw(raw);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            }
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            // If the parent died before the prctl, the signal will never come (the
            // child was reparented already): fail the exec rather than leave an
            // orphan.
            if rustix::process::getppid() != Some(parent) {
                return Err(Errno::SRCH.into());
            }
            Ok(())
        });
    }
    let child = command.spawn();
    // The child has its copies (or failed to start): close ours.
    drop(owned);
    child
}

/// Returns `fd`, or a close-on-exec duplicate numbered 3 or higher when it is 0, 1
/// or 2 (possible when this process runs with its stdio closed): the child's stdio
/// would replace it.
pub fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    Ok(rustix::io::fcntl_dupfd_cloexec(fd.as_fd(), 3)?)
}

/// Sends `signal` to the process group led by `leader`, a child started by
/// [`Spawn::spawn`] (its pid is the group id). A group with no process left is
/// not an error.
///
/// Call it only while `leader` is not reaped: until then no other group can have
/// its id.
pub fn kill_group(leader: Pid, signal: Signal) -> io::Result<()> {
    match rustix::process::kill_process_group(leader, signal) {
        Ok(()) | Err(Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    static IS_SPAWNER: Cell<bool> = const { Cell::new(false) };
}

/// The spawner thread's job queue; the thread is started on first use and runs
/// as long as the process.
fn spawner() -> io::Result<&'static mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Result<mpsc::Sender<Job>, String>> = OnceLock::new();
    let slot = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(SPAWNER_THREAD_NAME.into())
            .spawn(move || {
                IS_SPAWNER.set(true);
                for job in rx {
                    // A panicking job must not end this thread: every child it
                    // forked would get its death signal.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                }
            })
            .map(|_| tx)
            .map_err(|e| e.to_string())
    });
    slot.as_ref().map_err(|e| {
        io::Error::other(format!(
            "cannot start the {SPAWNER_THREAD_NAME} thread: {e}"
        ))
    })
}

/// Whether the calling thread is the spawner thread (that is, runs a job).
pub fn is_spawner_thread() -> bool {
    IS_SPAWNER.get()
}

/// Queues `job` for the spawner thread and returns at once. Jobs run one at a
/// time, in the order they were submitted; a job that panics is dropped, and the
/// thread goes on. Fails only if the thread cannot be started.
///
/// A [`Spawn::spawn`] (or [`on_spawner_thread`]) inside the job runs right there.
pub fn submit(job: impl FnOnce() + Send + 'static) -> io::Result<()> {
    spawner()?
        .send(Box::new(job))
        .map_err(|_| io::Error::other(format!("the {SPAWNER_THREAD_NAME} thread is gone")))
}

/// Runs `f` on the spawner thread (right here when called on it) and returns its
/// result, blocking until then. Fails if the thread cannot be started, or if `f`
/// panicked there.
pub fn on_spawner_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    if is_spawner_thread() {
        return Ok(f());
    }
    let (tx, rx) = mpsc::sync_channel(1);
    submit(move || {
        let _ = tx.send(f());
    })?;
    rx.recv().map_err(|_| {
        io::Error::other(format!(
            "the job panicked on the {SPAWNER_THREAD_NAME} thread"
        ))
    })
}

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
