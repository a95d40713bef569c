//! Running a program to completion, with a deadline.

use std::process::{Command, Output};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};

/// Runs `cmd` (its stdio as the caller set it up; pipe stdout and stderr to get
/// them) and waits for it to exit, at most `timeout`. After that, sends it
/// SIGKILL and panics with "`what` did not finish within `timeout`" and what it
/// wrote to stderr. Panics too if it cannot be started.
pub fn output_within(cmd: &mut Command, timeout: Duration, what: &str) -> Output {
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cmd.get_program().display()));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("waiting for the child"),
        Err(_) => {
            if let Some(pid) = Pid::from_raw(pid as i32) {
                let _ = kill_process(pid, Signal::KILL);
            }
            let out = rx.recv().ok().and_then(Result::ok);
            panic!(
                "{what} did not finish within {timeout:?}; stderr:\n{}",
                out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default()
            );
        }
    }
}
