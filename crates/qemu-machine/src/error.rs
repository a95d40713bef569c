//! Errors of the machine library.
//!
//! | Python (`qemu.machine`) | Rust                                                   |
//! |-------------------------|--------------------------------------------------------|
//! | `VMLaunchFailure`       | [`MachineError::LaunchFailure`] ([`VmLaunchFailure`])  |
//! | `AbnormalShutdown`      | [`MachineError::AbnormalShutdown`] ([`ShutdownCause`]) |
//! | `QEMUMachineError`      | the other variants of [`MachineError`]                 |

use std::fmt;
use std::io;
use std::process::ExitStatus;
use std::time::Duration;

/// A `Result` whose error is [`MachineError`].
pub type Result<T, E = MachineError> = std::result::Result<T, E>;

/// Every way an operation on a machine can fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MachineError {
    /// QEMU could not be started, or exited (or was killed) before QMP was up
    /// (Python: `VMLaunchFailure`).
    #[error(transparent)]
    LaunchFailure(Box<VmLaunchFailure>),

    /// A graceful shutdown failed, so QEMU was killed with SIGKILL (Python:
    /// `AbnormalShutdown`). The machine is cleaned up all the same.
    #[error("QEMU did not shut down gracefully: {cause}")]
    AbnormalShutdown {
        /// Why the graceful shutdown failed.
        cause: ShutdownCause,
    },

    /// The builder's settings cannot work; nothing was started.
    #[error("invalid machine configuration: {0}")]
    InvalidConfig(String),

    /// A QMP operation failed.
    #[error("QMP {what} failed: {source}")]
    Qmp {
        /// What we were doing, e.g. `command 'query-status'`.
        what: String,
        /// The QMP library's error.
        #[source]
        source: qemu_qmp::Error,
    },

    /// The machine was built with [`qmp(false)`](crate::MachineBuilder::qmp), so there
    /// is no QMP connection to use.
    #[error("QMP is disabled for this machine (MachineBuilder::qmp(false)); cannot {0}")]
    QmpDisabled(String),

    /// The QMP session ended (QEMU exited or hung up) before an event we were waiting
    /// for arrived; no more events can come.
    #[error("the QMP session ended before {waiting_for} arrived")]
    EventStreamEnded {
        /// A description of the events we were waiting for.
        waiting_for: String,
    },

    /// The machine was built without a console
    /// ([`MachineBuilder::console`](crate::MachineBuilder::console)).
    #[error("this machine has no console (enable it with MachineBuilder::console)")]
    NoConsole,

    /// QEMU closed its end of the console (it exited) before what we waited for
    /// arrived.
    #[error("the console was closed (QEMU exited) before {waiting_for}")]
    ConsoleClosed {
        /// What we were waiting for.
        waiting_for: String,
    },

    /// A wait did not finish in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What we were waiting for.
        what: String,
        /// How long we waited.
        timeout: Duration,
    },

    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl MachineError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        MachineError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn qmp(what: impl Into<String>, source: qemu_qmp::Error) -> Self {
        MachineError::Qmp {
            what: what.into(),
            source,
        }
    }

    /// The launch failure, if this is one.
    pub fn as_launch_failure(&self) -> Option<&VmLaunchFailure> {
        match self {
            MachineError::LaunchFailure(f) => Some(f),
            _ => None,
        }
    }

    /// True for [`MachineError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, MachineError::Timeout { .. })
    }
}

/// Why a launch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchCause {
    /// Preparing the launch (a temporary directory, a socket, the log file) failed.
    #[error("could not prepare the launch: {what}: {source}")]
    Setup {
        /// What we were preparing.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The program could not be executed (not found, not executable, ...).
    #[error("could not start {program}: {source}")]
    Spawn {
        /// The program we tried to run (the wrapper's, if there is one).
        program: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// QEMU exited before the QMP connection was up.
    #[error("QEMU exited ({status}) before the QMP connection was established")]
    Exited {
        /// How it exited.
        status: ExitStatus,
    },

    /// Connecting to QEMU's QMP monitor (or accepting its connection) failed.
    #[error("the QMP connection failed: {0}")]
    Qmp(#[source] qemu_qmp::Error),

    /// QMP was not up within the accept timeout; QEMU was killed.
    #[error("QMP was not up within {0:?}; QEMU was killed")]
    Timeout(Duration),
}

/// QEMU failed to launch (Python: `VMLaunchFailure`).
///
/// Its `Display` shows why, the exit code, the command line and everything QEMU
/// printed, which is usually the real reason:
///
/// ```text
/// QEMU failed to launch: QEMU exited (exit status: 1) before the QMP connection was established
///     Exit code: 1
///     Command: qemu-system-x86_64 -display none -vga none ... -bogus-option
///     Output: qemu-system-x86_64: -bogus-option: invalid option
/// ```
#[derive(Debug)]
pub struct VmLaunchFailure {
    /// QEMU's exit code, if it exited normally.
    pub exit_code: Option<i32>,
    /// The signal that killed QEMU, if one did.
    pub signal: Option<i32>,
    /// The whole command line, wrapper included.
    pub command_line: Vec<String>,
    /// What QEMU wrote to stdout and stderr.
    pub output: String,
    /// Why the launch failed.
    pub cause: LaunchCause,
}

impl fmt::Display for VmLaunchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "QEMU failed to launch: {}", self.cause)?;
        if let Some(code) = self.exit_code {
            writeln!(f, "    Exit code: {code}")?;
        }
        if let Some(sig) = self.signal {
            writeln!(f, "    Killed by signal: {sig}")?;
        }
        writeln!(
            f,
            "    Command: {}",
            crate::builder::shell_join(&self.command_line)
        )?;
        let output = self.output.trim_end();
        if output.is_empty() {
            write!(f, "    Output: (none)")
        } else {
            write!(f, "    Output: {output}")
        }
    }
}

impl std::error::Error for VmLaunchFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.cause)
    }
}

/// Why a graceful shutdown failed (the cause of [`MachineError::AbnormalShutdown`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownCause {
    /// The `quit` command failed.
    #[error("the 'quit' command failed: {0}")]
    Quit(#[source] qemu_qmp::Error),

    /// Sending SIGTERM (QMP disabled) failed.
    #[error("could not send SIGTERM: {0}")]
    Terminate(#[source] io::Error),

    /// QEMU did not exit within the shutdown timeout, and was killed with SIGKILL.
    #[error("QEMU did not exit within {0:?} and was killed with SIGKILL")]
    Timeout(Duration),

    /// QEMU exited abnormally (a non-zero exit code, or a signal this library did not
    /// send) before or during the shutdown.
    #[error("QEMU exited abnormally ({0})")]
    Exited(ExitStatus),

    /// QEMU did not go away within the given time even after SIGKILL (a process stuck
    /// in the kernel). Dropping the machine reaps it once it dies.
    #[error("QEMU was still running {0:?} after SIGKILL")]
    KillTimeout(Duration),
}
