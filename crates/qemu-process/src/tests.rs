//! Against real processes: `/bin/sh`, `cat` and `sleep` as children.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// `(state, ppid, pgrp)` from `/proc/<pid>/stat` (fields 3 to 5, counted after the
/// command name's last `)`).
fn stat(pid: u32) -> (char, u32, u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let mut fields = stat[stat.rfind(')').unwrap() + 1..].split_whitespace();
    let state = fields.next().unwrap().chars().next().unwrap();
    let ppid = fields.next().unwrap().parse().unwrap();
    let pgrp = fields.next().unwrap().parse().unwrap();
    (state, ppid, pgrp)
}

fn sh(script: &str) -> Command {
    let mut command = Command::new("/bin/sh");
    command.args(["-c", script]);
    command
}

/// A descriptor numbered 100 or higher, so that the shell under test cannot have
/// opened one of its own under that number.
fn high(fd: impl Into<OwnedFd>) -> OwnedFd {
    rustix::io::fcntl_dupfd_cloexec(fd.into(), 100).unwrap()
}

fn is_cloexec(fd: impl AsFd) -> bool {
    rustix::io::fcntl_getfd(fd)
        .unwrap()
        .contains(rustix::io::FdFlags::CLOEXEC)
}

#[test]
fn a_child_leads_a_process_group_that_kill_group_reaches() {
    // The shell forks `sleep` into its group and prints its pid: once the line is
    // read, both exist.
    let mut command = sh("sleep 1000 & echo $!; wait");
    command.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut child = Spawn::new(command).spawn().unwrap();
    let pid = child.id();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let grandchild: u32 = line.trim().parse().unwrap();

    assert_eq!(stat(pid).2, pid, "the child leads its group");
    assert_ne!(
        rustix::process::getpgrp().as_raw_pid() as u32,
        pid,
        "not ours"
    );
    assert_eq!(stat(grandchild).2, pid, "what it forks joins the group");

    kill_group(Pid::from_child(&child), Signal::KILL).unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(Signal::KILL.as_raw()));
    // `sleep` holds the pipe's write end too: end-of-file means it is gone.
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // Reaped, and its group empty: not an error.
    kill_group(Pid::from_child(&child), Signal::KILL).unwrap();
}

#[test]
fn inherited_descriptors_keep_their_numbers_and_no_other_leaks() {
    let (lent_r, lent_w) = std::io::pipe().unwrap();
    let (given_r, given_w) = std::io::pipe().unwrap();
    let (_kept_r, kept_w) = std::io::pipe().unwrap();
    let lent_w = high(lent_w);
    let given_w = high(given_w);
    let kept_w = high(kept_w);
    let (lent, given, kept) = (lent_w.as_raw_fd(), given_w.as_raw_fd(), kept_w.as_raw_fd());

    let script = format!(
        "echo lent > /proc/self/fd/{lent} && echo given > /proc/self/fd/{given} \
         && test ! -e /proc/self/fd/{kept}"
    );
    let mut command = sh(&script);
    command.stdin(Stdio::null());
    let mut spawn = Spawn::new(command);
    spawn.inherit(lent_w.as_fd()).inherit_owned(given_w);
    let mut child = spawn.spawn().unwrap();

    // Our copy of a lent descriptor is still ours, and still close-on-exec: a
    // program another thread starts now does not get it.
    assert!(is_cloexec(&lent_w), "the parent's copy lost FD_CLOEXEC");
    assert!(is_cloexec(&kept_w));
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "{status}: a descriptor was missing, or one leaked"
    );

    drop(lent_w);
    let mut text = String::new();
    BufReader::new(lent_r).read_to_string(&mut text).unwrap();
    assert_eq!(text, "lent\n");

    // The given descriptor was closed here after the fork: with the child gone,
    // the pipe is at end-of-file (non-blocking, so that a leak fails, not hangs).
    rustix::io::ioctl_fionbio(&given_r, true).unwrap();
    let mut text = String::new();
    let read = BufReader::new(given_r).read_to_string(&mut text);
    assert!(
        read.is_ok(),
        "our copy of the given descriptor is still open: {read:?}"
    );
    assert_eq!(text, "given\n");
}

#[test]
fn stdio_numbers_cannot_be_inherited() {
    let stdin = std::io::stdin();
    let mut spawn = Spawn::new(Command::new("/bin/true"));
    spawn.inherit(stdin.as_fd());
    let err = spawn.spawn().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
}

#[test]
fn a_program_that_cannot_start_is_an_error() {
    let err = Spawn::new(Command::new("/nonexistent/program"))
        .spawn()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
}

/// The death signal follows the thread that forked: a child started from a
/// thread that then ends must survive it, because the fork happened on the
/// spawner thread.
#[test]
fn a_child_outlives_the_short_lived_thread_that_started_it() {
    let (tid, mut child) = std::thread::spawn(|| {
        let tid = std::fs::read_link("/proc/thread-self").unwrap();
        let mut command = Command::new("cat");
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        (tid, Spawn::new(command).spawn().unwrap())
    })
    .join()
    .unwrap();
    // `join` returns before the kernel has finished the thread's exit, where it
    // sends the death signals; the thread's `/proc` entry goes only after that.
    // Nothing notifies that step, so this one wait polls (without sleeping).
    let task = std::path::Path::new("/proc").join(tid);
    let deadline = Instant::now() + Duration::from_secs(30);
    while task.exists() {
        assert!(Instant::now() < deadline, "{} never went", task.display());
        std::thread::yield_now();
    }
    // `cat` still answers: no SIGKILL came (had it, the read would see
    // end-of-file).
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"alive\n").unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "alive\n");
    assert_eq!(stat(child.id()).1, std::process::id());
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn jobs_run_on_one_thread_that_survives_a_panicking_job() {
    let name = || std::thread::current().name().map(str::to_owned);
    let first = on_spawner_thread(move || (name(), std::thread::current().id())).unwrap();
    assert_eq!(first.0.as_deref(), Some(SPAWNER_THREAD_NAME));
    assert!(!is_spawner_thread());

    let err = on_spawner_thread::<()>(|| panic!("a deliberate panic in a test job")).unwrap_err();
    assert!(err.to_string().contains("panicked"), "{err}");

    // Nested: runs inline instead of waiting for itself.
    let nested = on_spawner_thread(|| on_spawner_thread(|| std::thread::current().id()))
        .unwrap()
        .unwrap();
    assert_eq!(nested, first.1, "the same thread after the panic");

    // A spawn inside a job forks right there.
    let (tx, rx) = mpsc::channel();
    submit(move || {
        let child = Spawn::new(Command::new("/bin/true")).spawn();
        let _ = tx.send(child.and_then(|mut c| c.wait()).map(|s| s.success()));
    })
    .unwrap();
    assert!(rx.recv().unwrap().unwrap());
}
