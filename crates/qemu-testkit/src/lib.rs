//! Test support shared by the crates of this workspace: finding the QEMU
//! binaries, running QEMU (and `qemu-ga`) as child processes that cannot
//! outlive the test, and checking `/proc` for leftovers.
//!
//! It is a dev-dependency of `qemu-qmp`, `qemu-machine` and `qemu-tools`, so it
//! depends on none of them; of the workspace it uses only `qemu-process`, which
//! depends on nothing. It is not published.
//!
//! Typical use:
//!
//! ```no_run
//! use std::io::{BufRead, BufReader};
//! use qemu_testkit::QemuProcess;
//!
//! fn greeting() {
//!     let Some(_qemu) = qemu_testkit::qemu_system() else { return };
//!     let qemu = QemuProcess::system_with_listener(&[]);
//!     // No polling or sleeping needed: the socket exists before QEMU starts.
//!     let stream = std::os::unix::net::UnixStream::connect(qemu.qmp_path()).unwrap();
//!     let mut line = String::new();
//!     BufReader::new(stream).read_line(&mut line).unwrap();
//!     assert!(line.contains("\"QMP\""), "{}", qemu.log());
//! }
//! ```
//!
//! Binaries are looked up in an environment variable first (for example
//! `QEMU_SYSTEM_X86_64=/opt/qemu/bin/qemu-system-x86_64`), then in `PATH`. When
//! one is missing, the lookup functions print a `SKIPPED:` line straight to
//! stderr (not captured by libtest) and return `None`, so the test can return
//! early. Under `CI=true` (or `CI=1`) they panic instead, so CI cannot go green
//! by silently skipping everything.
//!
//! The suite runs once per supported QEMU version (10.0 and 7.2; `.ci/run`
//! sets the variables above for the second run). Tests assert what every
//! version guarantees and branch on [`version_of`] for what one version has
//! and another lacks.
//!
//! Every QEMU is started by [`qemu_process`] (the workspace's one spawn site)
//! with `PR_SET_PDEATHSIG=SIGKILL` from one long-lived spawner thread (the death
//! signal is tied to the thread that forked, so a short-lived thread would take
//! QEMU down with it), as the leader of a process group of its own.
//! [`QemuProcess`] sends SIGKILL to that group and to its child and reaps it on
//! drop, including while unwinding from a panic. If the whole test process dies,
//! the kernel kills QEMU.
//!
//! The modules:
//! - finding binaries: [`qemu_system`], [`storage_daemon`], [`qemu_ga`],
//!   [`qemu_img`], [`find_binary`], [`locate_binary`], [`find_in_path`], [`has_qtest_accel`], [`require_qemu_system!`],
//!   [`require_storage_daemon!`]; saying so: [`loud`], [`test_name`];
//! - [`QemuProcess`]: a child with inherited descriptors, a log, and kill and
//!   reap on drop; [`above_stdio`]; listeners to hand QEMU:
//!   [`bind_for_qemu`], [`listener_for_qemu`], and [`MonitorsReady`] to wait
//!   until QEMU's monitors are set up before connecting to one (QEMU can
//!   mishandle a connection that comes earlier);
//! - [`guest`]: a Linux guest image (Debian's kernel, busybox, `qemu-ga`)
//!   built from packages and cached, for tests that need a running guest;
//! - [`start_agent`]: a `qemu-ga` by socket activation, with every command that
//!   would change the test machine blocked;
//! - `/proc`: [`children`], [`qemu_children`], [`assert_no_qemu_children`],
//!   [`proc_state`], [`proc_stat`], [`gone`], [`assert_gone_within`];
//! - which QEMU: [`version_of`] a binary, as a [`QemuVersion`]; each lookup
//!   names the binary and its version in the test output;
//! - files and output: [`tempdir`], [`assert_dir_empty`], [`init_tracing`];
//! - [`output_within`]: run a program to completion, killed after a deadline;
//! - [`wait_until`] (and [`poll_until`]): wait for a condition with a deadline,
//!   where a test would otherwise sleep and hope.

#![warn(missing_docs)]
// Spawning (the one thing that needs `unsafe`) is `qemu_process`'s.
#![forbid(unsafe_code)]

mod agent;
mod binaries;
mod command;
pub mod guest;
mod process;
mod procfs;
mod raw;
mod ready;
mod version;
mod wait;

pub use agent::{start_agent, GA_BLOCKED_RPCS};
pub use binaries::{
    find_binary, find_in_path, has_qtest_accel, is_ci, locate_binary, loud, qemu_ga, qemu_img,
    qemu_system, storage_daemon, test_name, QEMU_GA_ENV, QEMU_IMG_ENV, QEMU_SYSTEM_ENV,
    STORAGE_DAEMON_ENV,
};
pub use command::output_within;
pub use process::{above_stdio, bind_for_qemu, listener_for_qemu, QemuProcess};
pub use procfs::{
    assert_gone_within, assert_no_qemu_children, children, gone, proc_stat, proc_state,
    qemu_children,
};
pub use raw::{is_event, RawQmp};
pub use ready::{MonitorsReady, READY_MONITOR_ID};
pub use version::{version_of, QemuVersion};
pub use wait::{poll_until, wait_until};

use std::path::Path;
use std::sync::Once;

/// Installs a `tracing_subscriber` fmt subscriber filtered by `RUST_LOG` that
/// writes through libtest's capture. Safe to call from every test.
pub fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    });
}

/// A fresh temporary directory whose name starts with `prefix` (in `TMPDIR`).
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temporary directory")
}

/// Panics, listing what is there, unless `dir` is empty.
pub fn assert_dir_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.map(|e| e.path()))
        .collect();
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        dir.display()
    );
}
