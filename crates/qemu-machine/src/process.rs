//! Starting QEMU and watching it exit.
//!
//! # Where QEMU is forked
//!
//! The fork itself is [`qemu_process`]'s, the one audited spawn site of the
//! workspace: every child is started with `PR_SET_PDEATHSIG = SIGKILL`, so that it
//! dies when we die, from the process-global spawner thread of that crate (the
//! kernel ties the signal to the *thread* that forked: a child forked from a tokio
//! blocking-pool thread would be killed when that thread idles out, and one forked
//! from a runtime worker when its runtime shuts down). A launch submits a job to that
//! thread ([`qemu_process::submit`]) that forks, opens the pidfd and starts the
//! watchdog, and awaits the reply. A launch cancelled meanwhile (its future dropped)
//! either stops the job before it starts or, if it is forking, waits for it (one
//! fork and exec) and then drops the new [`Process`], whose `Drop` kills and reaps
//! the child: once the drop returns, nothing it started runs, whenever it was
//! cancelled.
//!
//! # Process group and watchdog
//!
//! The death signal reaches only the direct child. A wrapper that forks (`timeout`,
//! `sh -c 'qemu ...; true'`) would leave QEMU running. So the child leads a process
//! group of its own (`setpgid(0, 0)` before exec; `timeout`'s own `setpgid(0, 0)`
//! is then a no-op), which everything it forks joins, and every kill goes to the
//! whole group:
//!
//! - when we kill (drop, `kill()`, a hard or failed shutdown, a failed or cancelled
//!   launch), SIGKILL goes to the group, then the child is reaped;
//! - when the child exits by itself, SIGKILL goes to what is left of its group
//!   before the child is reaped: nothing the child started outlives it;
//! - when this whole process dies, even by SIGKILL: the child itself has
//!   `PR_SET_PDEATHSIG`, which is enough when it is QEMU; when a wrapper runs QEMU
//!   (anything it forks would survive), a watchdog kills the group: a
//!   `/bin/sh` that joins the group, reads a pipe whose write end only this process
//!   holds (close-on-exec), and runs `kill -9 0` (its own group) once the read sees
//!   end-of-file, i.e. once we are gone. It ignores the usual terminating signals,
//!   so that a wrapper signalling its group (`timeout` does) does not end it. It is
//!   started with `posix_spawn` (no fork of this process). Only machines with a
//!   wrapper get one: a shell per launch costs about 4% of launch-to-ready time
//!   (`benches/launch.rs`, measured with a watchdog for every launch).
//!
//! The group id is the child's pid, and both the child and the watchdog (a member)
//! stay unreaped until the group has been killed, so the id cannot be reused by
//! another group while we may still signal it. A process that leaves the group
//! (`setsid`, `setpgid`: e.g. `setsid(1)`, a shell with job control) escapes all of
//! this; see [`MachineBuilder::wrapper`](crate::MachineBuilder::wrapper).
//!
//! # Waiting for exit
//!
//! Right after the fork the spawner opens a pidfd for the child and hands it to the
//! [reaper](crate::reaper): one thread for all children, blocked in `epoll_wait` on
//! their pidfds. When the child exits, the reaper kills the rest of its group and
//! reaps it (and the watchdog), and publishes the status on a watch channel, which
//! tasks await; nothing polls, and it works whichever runtime (if any) is running.
//! Nothing reaps the child before that, so its pid cannot be recycled under us; and
//! signals to the child alone go through the pidfd anyway. Dropping a [`Process`]
//! that is still running sends SIGKILL to its group and reaps it synchronously.
//!
//! # Inherited descriptors
//!
//! Descriptors meant for QEMU stay close-on-exec in the parent; [`qemu_process`]
//! clears the flag only in the child, between fork and exec. Clearing it in the
//! parent would leak them into every other program that any thread starts
//! meanwhile. The parent's copies are closed right after the fork, so that when QEMU
//! dies its sockets see end-of-file.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

pub(crate) use qemu_process::above_stdio;
use qemu_process::kill_group;
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions, WaitIdStatus};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::reaper::{self, Watch};

/// Start `command` on the spawner thread of [`qemu_process`] as the leader of a new
/// process group, with `inherit` open in the child under the same numbers (they
/// must be above 2; see [`above_stdio`]), `PR_SET_PDEATHSIG` set to SIGKILL, a
/// pidfd that the reaper watches, and, with `watchdog` (for a wrapper that may fork
/// QEMU), a watchdog that kills the group if this process dies (see the module
/// documentation). Our copies of `inherit` are closed once the child has been
/// forked.
///
/// `label` names the machine in log lines, `shown` is its command line for them.
pub(crate) async fn spawn(
    command: Command,
    inherit: Vec<OwnedFd>,
    label: String,
    shown: String,
    watchdog: bool,
) -> io::Result<Process> {
    // A descriptor numbered 0 to 2 fails the spawn (`InvalidInput`).
    let mut spawn = qemu_process::Spawn::new(command);
    for fd in inherit {
        spawn.inherit_owned(fd);
    }

    let handoff = Arc::new(Handoff::new());
    let (wake_tx, wake_rx) = oneshot::channel::<()>();
    let theirs = handoff.clone();
    let job = move || {
        if !theirs.start() {
            // Cancelled before it ran: nothing to do (`inherit` is closed with the job).
            return;
        }
        // On the spawner thread, so this forks right here; our copies of `inherit`
        // are closed as soon as it has.
        let result = spawn
            .spawn()
            .and_then(|child| Process::adopt(child, label, shown, watchdog));
        theirs.finish(result);
        let _ = wake_tx.send(());
    };
    // From here on, dropping this future (cancelling the launch) waits for a running
    // job and kills what it started: see `Pending`.
    let mut pending = Pending(Some(handoff));
    qemu_process::submit(job)?;
    // An error means that the job was dropped without finishing; `take` tells.
    let _ = wake_rx.await;
    pending.take()
}

/// How long a cancelled launch waits for the spawner thread to finish the fork it
/// started (normally a few milliseconds), before leaving the child to the job.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// Where the spawner thread leaves a spawn's result, shared by the job and the
/// launch.
#[derive(Debug)]
struct Handoff {
    stage: Mutex<Stage>,
    changed: Condvar,
}

#[derive(Debug)]
enum Stage {
    /// Sent to the spawner thread, not started.
    Queued,
    /// Forking.
    Running,
    /// The result, not yet taken.
    Done(io::Result<Process>),
    /// Taken by the launch.
    Taken,
    /// The launch was cancelled before the job started: the job does nothing.
    Cancelled,
    /// The launch was cancelled and gave up waiting: the job kills what it started.
    Abandoned,
}

impl Handoff {
    fn new() -> Handoff {
        Handoff {
            stage: Mutex::new(Stage::Queued),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Stage> {
        self.stage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The job starts, unless the launch was cancelled.
    fn start(&self) -> bool {
        let mut stage = self.lock();
        if matches!(*stage, Stage::Cancelled) {
            return false;
        }
        *stage = Stage::Running;
        true
    }

    /// The job's result, for the launch; or, if it gave up, dropped here, which kills
    /// and reaps the child.
    fn finish(&self, result: io::Result<Process>) {
        let mut stage = self.lock();
        if matches!(*stage, Stage::Abandoned) {
            drop(stage);
            if let Ok(process) = &result {
                debug!(
                    pid = process.pid(),
                    "launch cancelled during the fork: killing the new child"
                );
            }
            return;
        }
        *stage = Stage::Done(result);
        self.changed.notify_all();
    }
}

/// A spawn in progress, from the launch's side. Dropped without
/// [`take`](Self::take) (the launch future was dropped), it cancels the job if it has
/// not started, or waits for it to finish (one fork and exec, bounded by
/// [`CANCEL_WAIT`]) and kills and reaps what it started, so that a cancelled launch
/// has left nothing behind once the drop returns.
struct Pending(Option<Arc<Handoff>>);

impl Pending {
    /// The result, once the job has signalled that it finished (or was dropped).
    fn take(&mut self) -> io::Result<Process> {
        let dropped = || io::Error::other("the qemu-spawner thread dropped the spawn request");
        let Some(handoff) = self.0.take() else {
            return Err(dropped());
        };
        let mut stage = handoff.lock();
        match std::mem::replace(&mut *stage, Stage::Taken) {
            Stage::Done(result) => result,
            // The job was dropped without running, or panicked: nothing to wait for.
            _ => Err(dropped()),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(handoff) = self.0.take() else {
            return;
        };
        let mut stage = handoff.lock();
        if matches!(*stage, Stage::Queued) {
            *stage = Stage::Cancelled;
            return;
        }
        let (mut stage, _) = handoff
            .changed
            .wait_timeout_while(stage, CANCEL_WAIT, |s| matches!(s, Stage::Running))
            .unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut *stage, Stage::Taken) {
            Stage::Done(result) => {
                drop(stage);
                if let Ok(process) = &result {
                    debug!(
                        pid = process.pid(),
                        "launch cancelled during the fork: killing the new child"
                    );
                }
                // `Process::drop` kills the group and reaps, here and now.
                drop(result);
            }
            Stage::Running => *stage = Stage::Abandoned,
            other => *stage = other,
        }
    }
}

/// The watchdog's script (run by `/bin/sh -c`): ignore the signals a wrapper may
/// send to its group, block until the pipe on stdin reaches end-of-file (we never
/// write to it; our copy of the write end is closed when we die, or when the
/// `Process` is dropped, after the group was killed), then SIGKILL the own process
/// group: the child, everything it started, and the watchdog itself.
const WATCHDOG_SCRIPT: &str =
    "trap '' HUP INT QUIT TERM PIPE ALRM USR1 USR2 TSTP TTIN TTOU; read _ ; kill -9 0";

/// The shell that runs [`WATCHDOG_SCRIPT`].
const WATCHDOG_SHELL: &str = "/bin/sh";

/// A member of the child's process group that SIGKILLs the group when this process
/// dies.
#[derive(Debug)]
struct Watchdog {
    /// Reaped (after the group was killed) when the child is.
    child: Child,
    /// The pipe's only write end; the watchdog acts when it is closed.
    _alive: OwnedFd,
}

impl Watchdog {
    /// Start a watchdog in the process group `pgid` (which must exist and be
    /// ours: its leader is not reaped).
    fn start(pgid: Pid) -> io::Result<Watchdog> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let child = Command::new(WATCHDOG_SHELL)
            .args(["-c", WATCHDOG_SCRIPT, "qemu-machine-watchdog"])
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(pgid.as_raw_pid())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot start the watchdog ({WATCHDOG_SHELL}): {e}"),
                )
            })?;
        Ok(Watchdog {
            child,
            _alive: write,
        })
    }

    /// Reap the watchdog, which the group's SIGKILL has ended (or ends now).
    fn reap(mut self) {
        // Unreaped, so its pid is still its own.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process, watched through a pidfd, leading a process group that a
/// watchdog guards. Dropping it kills the group and reaps the child.
#[derive(Debug)]
pub(crate) struct Process {
    pid: u32,
    shared: Arc<Shared>,
    /// The reaper's watch on the pidfd (which `shared` keeps open).
    _watch: Watch,
}

#[derive(Debug)]
struct Shared {
    pidfd: OwnedFd,
    /// The child's process group: its pid, since it leads the group.
    pgid: Pid,
    status: watch::Sender<Option<ExitStatus>>,
    /// Set before we send a terminating signal, so that death by it is not reported
    /// as unexpected.
    signalled: AtomicBool,
    /// Serialises signalling the group and reaping, so that the group is never
    /// signalled once its id may have been reused, and the status is published
    /// exactly once. Holds the watchdog until it is reaped.
    reap_lock: Mutex<Option<Watchdog>>,
    label: String,
    /// The command line, for the warning about an unexpected signal.
    command: String,
}

impl Process {
    /// Take over a child just spawned (as a group leader, not reaped by anyone): open
    /// its pidfd, start its watchdog (if asked for) and have the reaper watch it. On
    /// failure the group is killed and the child reaped.
    fn adopt(
        mut child: Child,
        label: String,
        command: String,
        watchdog: bool,
    ) -> io::Result<Process> {
        let pid = child.id();
        let pgid = Pid::from_child(&child);
        let discard = |child: &mut Child| {
            // Not reaped yet, so the pid (and group id) is still the child's.
            let _ = kill_group(pgid, Signal::KILL);
            let _ = child.kill();
            let _ = child.wait();
        };
        let pidfd = match rustix::process::pidfd_open(pgid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(e) => {
                discard(&mut child);
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("pidfd_open failed (Linux 5.3 or later is needed): {e}"),
                ));
            }
        };
        let watchdog = match watchdog.then(|| Watchdog::start(pgid)).transpose() {
            Ok(w) => w,
            Err(e) => {
                discard(&mut child);
                return Err(e);
            }
        };
        // From here on, the pidfd and `Shared` own the child (`Child` does nothing
        // when dropped).
        let shared = Arc::new(Shared {
            pidfd,
            pgid,
            status: watch::channel(None).0,
            signalled: AtomicBool::new(false),
            reap_lock: Mutex::new(watchdog),
            label,
            command,
        });
        let watch = match reaper::watch(shared.pidfd.as_fd(), reaper::weak(&shared)) {
            Ok(w) => w,
            Err(e) => {
                let _ = shared.kill_and_reap();
                return Err(e);
            }
        };
        Ok(Process {
            pid,
            shared,
            _watch: watch,
        })
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

    /// Send a signal to the child's whole process group (the wrapper, QEMU, and
    /// anything else they started that stayed in it), and SIGKILL to the child
    /// through its pidfd too. Never reaches a recycled pid or group: it is sent only
    /// while the child is unreaped. Sending to a child that has already exited is
    /// not an error.
    pub(crate) fn signal(&self, sig: Signal) -> io::Result<()> {
        if sig != Signal::STOP && sig != Signal::CONT {
            self.shared.signalled.store(true, Ordering::SeqCst);
        }
        let _guard = self.shared.lock();
        if self.status().is_some() {
            return Ok(());
        }
        if sig == Signal::KILL {
            // Also if the child has left its own group.
            self.shared.kill_child();
        }
        kill_group(self.shared.pgid, sig)
    }

    /// SIGKILL the group (if the child still runs) and reap, blocking the thread
    /// until the kernel has torn the child down (normally well under a millisecond).
    /// Returns the status.
    pub(crate) fn kill_and_reap(&self) -> ExitStatus {
        self.shared.kill_and_reap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.shared.kill_and_reap();
    }
}

impl reaper::Exited for Shared {
    /// On the reaper thread, once the child has exited: kill what is left of its
    /// group and reap it.
    fn exited(&self) {
        let _ = self.finish(false);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Option<Watchdog>> {
        self.reap_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn kill_and_reap(&self) -> ExitStatus {
        self.finish(true)
    }

    /// SIGKILL to the child alone, through its pidfd.
    fn kill_child(&self) {
        if let Err(e) = rustix::process::pidfd_send_signal(self.pidfd.as_fd(), Signal::KILL) {
            if e != rustix::io::Errno::SRCH {
                warn!(name = %self.label, "could not kill QEMU: {e}");
            }
        }
    }

    /// Unless already done: SIGKILL the child (with `kill`), then its whole group
    /// (what the child left behind if it exited by itself, and the watchdog), reap
    /// the child, blocking until it exits, then the watchdog, and publish the
    /// child's status.
    fn finish(&self, kill: bool) -> ExitStatus {
        let mut watchdog = self.lock();
        if let Some(s) = *self.status.borrow() {
            return s;
        }
        if kill {
            self.signalled.store(true, Ordering::SeqCst);
            self.kill_child();
        }
        // The child is not reaped yet (and neither is the watchdog, a member), so the
        // group id cannot have been reused.
        if let Err(e) = kill_group(self.pgid, Signal::KILL) {
            warn!(name = %self.label, "could not kill QEMU's process group: {e}");
        }
        let status = loop {
            match rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED)
            {
                Ok(Some(st)) => break to_exit_status(&st),
                // Cannot happen without WNOHANG; do not spin.
                Ok(None) => break ExitStatus::from_raw(255 << 8),
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
        if let Some(w) = watchdog.take() {
            w.reap();
        }
        self.publish(status);
        status
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

/// Whether the process that made something is still alive, judged from an
/// [`owner_tag`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// The very process (same pid and start time) still runs.
    Alive,
    /// No process with that pid and start time runs any more (or only its zombie).
    Dead,
    /// Cannot tell: another pid namespace, an unreadable `/proc`, a malformed tag.
    Unknown,
}

/// This process's identity, for names that must say who made them:
/// `<pid>.<start>.<pidns>`, the pid in decimal, then in hex its start time (clock
/// ticks after boot, field 22 of `/proc/<pid>/stat`, so that a reused pid is not
/// mistaken for it) and the inode of its pid namespace (so that a process of another
/// namespace sharing the directory is never judged by our `/proc`).
pub(crate) fn owner_tag() -> io::Result<String> {
    static TAG: OnceLock<(u32, String)> = OnceLock::new();
    let pid = std::process::id();
    if let Some((p, tag)) = TAG.get() {
        // A forked (not exec'd) copy of this process has a pid of its own.
        if *p == pid {
            return Ok(tag.clone());
        }
    }
    let start = start_time(pid).ok_or_else(|| {
        io::Error::other(format!("cannot read the start time of pid {pid} in /proc"))
    })?;
    let tag = format!("{pid}.{start:x}.{:x}", pid_namespace()?);
    let _ = TAG.set((pid, tag.clone()));
    Ok(tag)
}

/// Whether the process named by `tag` (made by [`owner_tag`]) is alive.
pub(crate) fn owner_state(tag: &str) -> Owner {
    let mut parts = tag.split('.');
    let (Some(pid), Some(start), Some(ns), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Owner::Unknown;
    };
    let (Ok(pid), Ok(start), Ok(ns)) = (
        pid.parse::<u32>(),
        u64::from_str_radix(start, 16),
        u64::from_str_radix(ns, 16),
    ) else {
        return Owner::Unknown;
    };
    if pid_namespace().ok() != Some(ns) {
        return Owner::Unknown;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => match parse_stat(&stat) {
            Some((state, t)) if t == start && state != 'Z' && state != 'X' => Owner::Alive,
            Some(_) => Owner::Dead,
            None => Owner::Unknown,
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Owner::Dead,
        Err(_) => Owner::Unknown,
    }
}

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, start)| start)
}

/// The state letter and start time from the text of `/proc/<pid>/stat`. The command
/// name (field 2, in parentheses) may contain anything, so fields are counted from
/// its last `)`: state is field 3, the start time field 22.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// The inode of this process's pid namespace (`/proc/self/ns/pid` is a link to
/// `pid:[INODE]`).
fn pid_namespace() -> io::Result<u64> {
    static NS: OnceLock<u64> = OnceLock::new();
    if let Some(ns) = NS.get() {
        return Ok(*ns);
    }
    let link = std::fs::read_link("/proc/self/ns/pid")?;
    let ns = link
        .to_str()
        .and_then(|l| l.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok())
        .ok_or_else(|| io::Error::other(format!("unexpected /proc/self/ns/pid: {link:?}")))?;
    Ok(*NS.get_or_init(|| ns))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 \
                    20 0 1 0 987654 1000 100 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(('S', 987654)));
        assert_eq!(parse_stat("4242 (x) Z 1"), None);
    }

    #[test]
    fn owner_tags_tell_live_from_dead() {
        let me = owner_tag().unwrap();
        assert_eq!(owner_tag().unwrap(), me);
        assert_eq!(owner_state(&me), Owner::Alive);
        let (pid, rest) = me.split_once('.').unwrap();
        let (start, ns) = rest.split_once('.').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        // The same pid, started at another time: a reused pid.
        assert_eq!(
            owner_state(&format!("{pid}.{:x}.{ns}", start + 1)),
            Owner::Dead
        );
        // No such pid (above any pid_max).
        assert_eq!(owner_state(&format!("999999999.1.{ns}")), Owner::Dead);
        // Another pid namespace, or not a tag: cannot tell.
        assert_eq!(owner_state(&format!("{pid}.{start:x}.1")), Owner::Unknown);
        for bad in ["", "1", "1.2", "x.1.2", "1.2.3.4"] {
            assert_eq!(owner_state(bad), Owner::Unknown, "{bad:?}");
        }
    }

    /// Children of this process whose command line contains `marker`.
    fn children_with(marker: &str) -> Vec<u32> {
        let me = std::process::id().to_string();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1).map(str::to_owned));
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if ppid.as_deref() == Some(me.as_str())
                && String::from_utf8_lossy(&cmdline).contains(marker)
            {
                found.push(pid);
            }
        }
        found
    }

    /// The launch is cancelled after the spawner thread has sent its reply and
    /// before the launch looked at it: the reply, dropped with the channel, must kill
    /// and reap the child (it used to drop only the pidfd, leaving QEMU running).
    #[tokio::test]
    async fn a_spawn_cancelled_after_the_reply_was_sent_leaves_no_child() {
        let Some(qemu) = qemu_testkit::qemu_system() else {
            return;
        };
        let marker = format!("cancelled-after-reply-{}", std::process::id());
        let mut command = Command::new(&qemu);
        command
            .args(["-machine", "none", "-display", "none", "-name", &marker])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut launch = Box::pin(spawn(
            command,
            Vec::new(),
            "test".into(),
            marker.clone(),
            false,
        ));
        // Hold the spawner thread, so that the first poll cannot find the spawn done.
        let (release, held) = std::sync::mpsc::channel::<()>();
        qemu_process::submit(move || {
            let _ = held.recv_timeout(Duration::from_secs(30));
        })
        .unwrap();
        // Polled once: the job is queued on the spawner thread, behind the hold.
        assert!(
            tokio::time::timeout(Duration::ZERO, &mut launch)
                .await
                .is_err(),
            "the spawn cannot be done at the first poll"
        );
        release.send(()).unwrap();
        // Jobs run in order: once this one runs, the spawn job has sent its reply.
        let (done_tx, done_rx) = oneshot::channel();
        qemu_process::submit(move || {
            let _ = done_tx.send(());
        })
        .unwrap();
        tokio::time::timeout(Duration::from_secs(30), done_rx)
            .await
            .expect("the spawner thread is stuck")
            .unwrap();
        assert_eq!(children_with(&marker).len(), 1, "QEMU was started");
        drop(launch);
        // Killed and reaped by the drop itself, synchronously.
        let left = children_with(&marker);
        for &pid in &left {
            let _ = rustix::process::kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::KILL);
        }
        assert_eq!(
            left,
            Vec::<u32>::new(),
            "a cancelled spawn left QEMU running"
        );
    }
}
