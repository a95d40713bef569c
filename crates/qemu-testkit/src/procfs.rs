//! What `/proc` says about this process's children: leak checks.

use std::thread;
use std::time::{Duration, Instant};

use crate::process::live;

/// Child processes of this test process, as `(pid, comm)` (`comm` is the
/// kernel's name for the process, at most 15 bytes; a child forked but not yet
/// exec'd has its parent thread's name).
pub fn children() -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Some((ppid, comm)) = read_ppid_and_comm(pid) else {
            continue;
        };
        if ppid == me {
            found.push((pid, comm));
        }
    }
    found
}

/// Child processes of this test process whose executable (or, for zombies,
/// command name) starts with `qemu`, as `(pid, name)`, excluding those owned
/// by a live [`QemuProcess`](crate::QemuProcess) (tests run in parallel
/// threads, so other tests' QEMUs are legitimately alive).
pub fn qemu_children() -> Vec<(u32, String)> {
    let live = live();
    let mut found = Vec::new();
    for (pid, comm) in children() {
        if live.contains(&pid) {
            continue;
        }
        // exe, not comm, for running processes: a child forked from a test
        // thread but not yet exec'd has the thread's (test's) name as comm.
        let name = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or(comm);
        if name.starts_with("qemu") {
            found.push((pid, name));
        }
    }
    found
}

/// Panics if any QEMU child of this process exists that is not owned by a
/// live [`QemuProcess`](crate::QemuProcess) (see [`qemu_children`]).
pub fn assert_no_qemu_children() {
    let leaked = qemu_children();
    assert!(leaked.is_empty(), "leaked QEMU child processes: {leaked:?}");
}

/// `(ppid, comm)` from `/proc/<pid>/stat`.
fn read_ppid_and_comm(pid: u32) -> Option<(u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let comm = stat.get(open + 1..close)?.to_owned();
    // After ") ": state, ppid, ...
    let ppid = stat
        .get(close + 1..)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ppid, comm))
}

/// State letter from `/proc/<pid>/stat` (`'Z'` for a zombie), or `None` if the
/// process does not exist.
pub fn proc_state(pid: u32) -> Option<char> {
    proc_stat(pid).map(|(_, state)| state)
}

/// `(ppid, state)` of a process from `/proc/<pid>/stat`, if it exists.
pub fn proc_stat(pid: u32) -> Option<(u32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut it = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((ppid, state))
}

/// True if `pid` is no longer a child of this process (gone, or the pid was
/// reused).
pub fn gone(pid: u32) -> bool {
    proc_stat(pid).is_none_or(|(ppid, _)| ppid != std::process::id())
}

/// Waits (bounded) until `pid` is [`gone`]; panics with its `/proc` state after
/// `limit`.
pub fn assert_gone_within(pid: u32, limit: Duration) {
    let start = Instant::now();
    while !gone(pid) {
        assert!(
            start.elapsed() < limit,
            "QEMU pid {pid} still exists after {limit:?}: {:?}",
            proc_stat(pid)
        );
        thread::sleep(Duration::from_millis(10));
    }
}
