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

use qemu_qapi::typed::CallError;

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

    /// A typed call ([`QemuMachine::call`](crate::QemuMachine::call)) failed:
    /// refused by the version gate ([`CallError::Unsupported`]), failed in QMP, or
    /// its return did not fit its type.
    #[error("QMP command '{command}' failed: {source}")]
    Call {
        /// The command.
        command: &'static str,
        /// Why it failed.
        #[source]
        source: CallError,
    },

    /// An event that a typed wait
    /// ([`QemuMachine::event_wait_typed`](crate::QemuMachine::event_wait_typed))
    /// took did not fit its type. The event is not kept in the queue.
    #[error("event {}: the data does not fit its type: {source}", event.name())]
    EventDecode {
        /// The event as received.
        event: qemu_qmp::Event,
        /// What did not fit.
        #[source]
        source: serde_json::Error,
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

    /// A binary could not be asked for its accelerators
    /// ([`accel::list_accel`](crate::accel::list_accel)).
    #[error(transparent)]
    Accel(#[from] crate::accel::AccelError),

    /// [`MachineBuilder::best_accel`](crate::MachineBuilder::best_accel) found
    /// neither KVM nor TCG usable; nothing was started.
    #[error(transparent)]
    NoAccel(#[from] crate::accel::NoAccel),

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

    /// The QMP library's error behind this one, wherever it is wrapped: a failed QMP
    /// operation ([`MachineError::Qmp`]), a typed call that failed in QMP or whose
    /// schema could not be fetched ([`MachineError::Call`], see
    /// [`CallError::qmp_error`]), a launch whose QMP connection failed
    /// ([`LaunchCause::Qmp`]), a graceful shutdown whose `quit` failed
    /// ([`ShutdownCause::Quit`]). The other helpers look through it, as
    /// tokio-postgres's `Error::as_db_error` looks through its wrapping.
    pub fn qmp_error(&self) -> Option<&qemu_qmp::Error> {
        match self {
            MachineError::Qmp { source, .. } => Some(source),
            MachineError::Call { source, .. } => source.qmp_error(),
            MachineError::LaunchFailure(f) => match &f.cause {
                LaunchCause::Qmp(e) => Some(e),
                _ => None,
            },
            MachineError::AbnormalShutdown {
                cause: ShutdownCause::Quit(e),
            } => Some(e),
            _ => None,
        }
    }

    /// The typed call's error, if this is one ([`MachineError::Call`]).
    pub fn as_call_error(&self) -> Option<&CallError> {
        match self {
            MachineError::Call { source, .. } => Some(source),
            _ => None,
        }
    }

    /// True if a typed call was refused by the version gate: the machine's QEMU
    /// lacks the command or a member, or refuses a value
    /// ([`CallError::Unsupported`]); nothing was sent.
    pub fn is_unsupported(&self) -> bool {
        self.as_call_error().is_some_and(CallError::is_unsupported)
    }

    /// The QMP error class (`GenericError`, `CommandNotFound`, `DeviceNotFound`, ...)
    /// if QEMU answered a command with an error, at any depth of wrapping.
    pub fn error_class(&self) -> Option<&str> {
        self.qmp_error()?.error_class()
    }

    /// QEMU's error reply (class, description, the request and the reply), if QEMU
    /// answered a command with an error, at any depth of wrapping.
    pub fn as_execute_error(&self) -> Option<&qemu_qmp::ExecuteError> {
        self.qmp_error()?.as_execute_error()
    }

    /// True if something did not finish in time, at any depth: a wait of this
    /// library ([`MachineError::Timeout`]), QMP not up within the accept timeout
    /// ([`LaunchCause::Timeout`]), or a QMP command or connection that timed out
    /// ([`qemu_qmp::Error::is_timeout`]). A shutdown that had to kill QEMU is an
    /// [`MachineError::AbnormalShutdown`], not a timeout: QEMU is gone all the same.
    pub fn is_timeout(&self) -> bool {
        match self {
            MachineError::Timeout { .. } => true,
            MachineError::LaunchFailure(f) if matches!(f.cause, LaunchCause::Timeout(_)) => true,
            _ => self.qmp_error().is_some_and(qemu_qmp::Error::is_timeout),
        }
    }

    /// True if the QMP session is gone (QEMU exited or hung up), at any depth: an
    /// event stream that ended before the awaited event, or a QMP error that
    /// [`qemu_qmp::Error::is_disconnected`] says is one.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, MachineError::EventStreamEnded { .. })
            || self
                .qmp_error()
                .is_some_and(qemu_qmp::Error::is_disconnected)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn qmp_timeout() -> qemu_qmp::Error {
        qemu_qmp::Error::Timeout {
            what: "the reply to 'query-status'".into(),
            timeout: Duration::from_secs(1),
        }
    }

    fn launch_failure(cause: LaunchCause) -> MachineError {
        MachineError::LaunchFailure(Box::new(VmLaunchFailure {
            exit_code: None,
            signal: Some(9),
            command_line: vec!["qemu-system-x86_64".into()],
            output: String::new(),
            cause,
        }))
    }

    #[test]
    fn is_timeout_looks_through_every_wrapping() {
        let own = MachineError::Timeout {
            what: "event STOP".into(),
            timeout: Duration::from_secs(1),
        };
        assert!(own.is_timeout());
        assert!(MachineError::qmp("command 'query-status'", qmp_timeout()).is_timeout());
        assert!(launch_failure(LaunchCause::Timeout(Duration::from_secs(1))).is_timeout());
        assert!(launch_failure(LaunchCause::Qmp(qmp_timeout())).is_timeout());
        let quit = MachineError::AbnormalShutdown {
            cause: ShutdownCause::Quit(qmp_timeout()),
        };
        assert!(quit.is_timeout());
        assert!(quit.qmp_error().is_some());
        // A shutdown that killed QEMU is not a timeout; neither is a QMP error reply.
        let killed = MachineError::AbnormalShutdown {
            cause: ShutdownCause::Timeout(Duration::from_secs(1)),
        };
        assert!(!killed.is_timeout());
        assert!(!MachineError::NoConsole.is_timeout());
        let closed = MachineError::qmp(
            "command 'stop'",
            qemu_qmp::Error::Disconnected {
                command: Some("stop".into()),
                cause: None,
            },
        );
        assert!(!closed.is_timeout());
        assert!(closed.is_disconnected());
        assert!(MachineError::EventStreamEnded {
            waiting_for: "event STOP".into()
        }
        .is_disconnected());
        assert!(!own.is_disconnected());
        assert_eq!(own.error_class(), None);
    }
}
