//! Launch and supervise QEMU (Python: `qemu.machine.QEMUMachine`).
//!
//! [`QemuMachine::builder`] describes a QEMU to start; [`MachineBuilder::launch`]
//! starts it with its QMP monitor on a socketpair (no socket file anywhere), connects,
//! and returns a [`QemuMachine`] that owns the process, the QMP connection, an
//! optional console and a temporary directory:
//!
//! ```no_run
//! # async fn f() -> qemu_machine::Result<()> {
//! use std::time::Duration;
//! use qemu_machine::QemuMachine;
//!
//! let vm = QemuMachine::builder("qemu-system-x86_64")
//!     .machine_type("none")
//!     .launch()
//!     .await?;
//! println!("{}", vm.command("query-version", None).await?);
//! vm.command("stop", None).await?;
//! assert!(vm.event_wait("STOP", Duration::from_secs(5), None).await?.is_some());
//! vm.shutdown().await?; // `quit`, wait, SIGKILL if that fails; then clean up
//! # Ok(()) }
//! ```
//!
//! [`QtestMachine`] is the same machine with a qtest channel and a typed
//! [`qtest::QtestClient`] on it (Python: `QEMUQtestMachine`), for driving devices
//! without guest code.
//!
//! [`accel`] asks a binary for its accelerators and says whether KVM is usable here
//! (Python: `qemu.utils.accel`), and why not; [`MachineBuilder::best_accel`] uses it
//! to run with KVM when it can, else TCG.
//!
//! # Nothing leaks
//!
//! - QEMU is forked with `PR_SET_PDEATHSIG = SIGKILL` from a thread that lives as
//!   long as the process (by [`qemu_process`], the workspace's one spawn site), so
//!   it dies when we die, even on `SIGKILL`. It leads a process group of its own, which every kill reaches and, when a wrapper runs
//!   QEMU, a watchdog kills when we die, so QEMU dies also when a wrapper forked it
//!   ([`MachineBuilder::wrapper`]).
//! - Dropping a machine, on any path including a panic, kills QEMU, reaps it and
//!   removes its temporary directory.
//! - A failed launch kills and reaps QEMU and removes what it created before it
//!   returns; a QEMU that exits during startup fails the launch at once, with its
//!   exit code and output ([`VmLaunchFailure`]).
//! - QEMU's exit is watched through a pidfd, so it is awaited without polling and
//!   no signal can reach a recycled pid.
//! - Descriptors for QEMU are made inheritable only in the child, between fork and
//!   exec, so concurrent launches never inherit each other's sockets.
//!
//! Linux 5.3 or later is required (pidfds).
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
// Forking with a pre-exec hook, the one thing that needs `unsafe`, is
// `qemu_process`'s.
#![forbid(unsafe_code)]

pub mod accel;
mod builder;
mod console;
pub mod error;
mod events;
mod machine;
pub mod matching;
mod process;
pub mod qtest;
mod qtest_machine;
mod reaper;
mod sweep;

pub use builder::{
    MachineBuilder, QmpAddress, DEFAULT_ACCEPT_TIMEOUT, DEFAULT_CONSOLE_BUFFER,
    DEFAULT_SHUTDOWN_TIMEOUT,
};
pub use error::{LaunchCause, MachineError, Result, ShutdownCause, VmLaunchFailure};
pub use machine::{conv_keys, QemuMachine};
pub use matching::{event_match, event_matches};
pub use qtest_machine::{QtestAccel, QtestMachine, QtestMachineBuilder, QTEST_CHARDEV};

/// Re-exported: the QMP client library.
pub use qemu_qmp;
pub use qemu_qmp::Wait;
