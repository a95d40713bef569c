//! The error hierarchy of the QMP library.
//!
//! One enum, [`Error`], covers every way a QMP operation can fail. Its variants
//! map onto the exceptions of QEMU's Python `qemu.qmp` package:
//!
//! | Python                              | Rust                                   |
//! |-------------------------------------|----------------------------------------|
//! | `ConnectError`                      | [`Error::Connect`], [`Error::Accept`]  |
//! | `GreetingError`                     | [`Error::Greeting`]                    |
//! | `NegotiationError`                  | [`Error::Negotiation`]                 |
//! | `ExecuteError`                      | [`Error::Execute`] ([`ExecuteError`])  |
//! | `ExecInterruptedError`              | [`Error::Disconnected`]                |
//! | `ProtocolError` and its subclasses  | [`Error::Protocol`] ([`ProtocolError`])|
//! | `StateError`                        | [`Error::State`]                       |
//! | `asyncio.TimeoutError`              | [`Error::Timeout`]                     |
//!
//! Errors are cheap to clone (I/O and JSON causes are shared behind an `Arc`), so the
//! error that ended a session can be handed to every command that was waiting on it
//! and still be returned by [`Client::disconnect`](crate::Client::disconnect).

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::framing::FrameError;
use crate::message::{ErrorInfo, JsonObject};
use crate::runstate::Runstate;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every way a QMP operation can fail.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transport could not be established (Python: `ConnectError`).
    #[error("failed to connect to {target}: {source}")]
    Connect {
        /// What we tried to reach, as the user named it.
        target: String,
        /// The underlying I/O error.
        #[source]
        source: Arc<io::Error>,
    },

    /// Listening for, or accepting, an incoming connection failed.
    #[error("failed to accept a connection on {target}: {source}")]
    Accept {
        /// Where we listened.
        target: String,
        /// The underlying I/O error.
        #[source]
        source: Arc<io::Error>,
    },

    /// The peer's first message was not a valid QMP greeting (Python: `GreetingError`).
    #[error("did not understand the greeting: {reason}")]
    Greeting {
        /// Why the greeting was rejected.
        reason: String,
        /// The message received in place of a greeting, if one was received.
        received: Option<Box<JsonObject>>,
    },

    /// `qmp_capabilities` failed (Python: `NegotiationError`).
    #[error("capability negotiation failed: {reason}")]
    Negotiation {
        /// Why negotiation failed.
        reason: String,
        /// The reply to `qmp_capabilities`, if one was received.
        received: Option<Box<JsonObject>>,
    },

    /// The peer answered a command with an error (Python: `ExecuteError`).
    #[error(transparent)]
    Execute(Box<ExecuteError>),

    /// The session ended while a command was waiting for its reply, or a command was
    /// issued on a session that had already ended (Python: `ExecInterruptedError`).
    #[error("{}", disconnected_message(.command, .cause))]
    Disconnected {
        /// The command that was interrupted, if any.
        command: Option<String>,
        /// What ended the session, when it was not a deliberate `disconnect()`.
        cause: Option<Box<Error>>,
    },

    /// The peer closed the connection (Python: `EOFError` from `disconnect()`).
    #[error("{}", if *.mid_message { "the peer closed the connection in the middle of a message" } else { "the peer closed the connection" })]
    ConnectionClosed {
        /// True if bytes of an unfinished message were buffered when the peer hung up.
        mid_message: bool,
    },

    /// The peer broke the protocol (Python: `ProtocolError` and its subclasses).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),

    /// An operation did not finish in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What we were waiting for.
        what: String,
        /// How long we waited.
        timeout: Duration,
    },

    /// The operation is not valid in the client's current run state (Python: `StateError`).
    #[error("{message}")]
    State {
        /// The message, in the words of Python's `StateError`.
        message: String,
        /// The state the client was in.
        state: Runstate,
        /// The state the operation needs.
        required: Runstate,
    },

    /// An I/O error on an established connection.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What we were doing.
        context: &'static str,
        /// The underlying I/O error.
        #[source]
        source: Arc<io::Error>,
    },

    /// An address string could not be parsed (Python: `QMPBadPortError`).
    #[error("bad QMP address {input:?}: {reason}")]
    Address {
        /// The string as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A request the library refuses to send (bad id, reserved id prefix, id in use,
    /// file descriptors on a transport that cannot carry them, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// The blocking API was used from inside an async runtime, where it would deadlock.
    #[error("the blocking QMP API cannot be used from inside an async runtime; use the async client there")]
    InsideRuntime,
}

fn disconnected_message(command: &Option<String>, cause: &Option<Box<Error>>) -> String {
    let mut s = match command {
        Some(c) => format!("command '{c}' was interrupted: disconnected"),
        None => "disconnected".to_owned(),
    };
    if let Some(cause) = cause {
        s.push_str(" (");
        s.push_str(&cause.to_string());
        s.push(')');
    }
    s
}

impl Error {
    pub(crate) fn io(context: &'static str, source: io::Error) -> Self {
        Error::Io {
            context,
            source: Arc::new(source),
        }
    }

    pub(crate) fn timeout(what: impl Into<String>, timeout: Duration) -> Self {
        Error::Timeout {
            what: what.into(),
            timeout,
        }
    }

    /// The QMP error class (`GenericError`, `CommandNotFound`, ...) if this is an
    /// error reply from the peer.
    pub fn error_class(&self) -> Option<&str> {
        match self {
            Error::Execute(e) => Some(e.error_class()),
            _ => None,
        }
    }

    /// The [`ExecuteError`] if the peer answered with an error reply.
    pub fn as_execute_error(&self) -> Option<&ExecuteError> {
        match self {
            Error::Execute(e) => Some(e),
            _ => None,
        }
    }

    /// True if this error means the session is gone: disconnected, closed by the peer,
    /// or an I/O or protocol failure that ended it.
    pub fn is_disconnected(&self) -> bool {
        matches!(
            self,
            Error::Disconnected { .. } | Error::ConnectionClosed { .. }
        )
    }

    /// What ended the session, for an [`Error::Disconnected`] that knows it (the peer
    /// hung up, a protocol or I/O error); `None` for other errors and for a deliberate
    /// `disconnect()`.
    pub fn disconnect_cause(&self) -> Option<&Error> {
        match self {
            Error::Disconnected {
                cause: Some(cause), ..
            } => Some(cause),
            _ => None,
        }
    }

    /// True for [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }
}

impl From<ExecuteError> for Error {
    fn from(e: ExecuteError) -> Self {
        Error::Execute(Box::new(e))
    }
}

/// An error reply to a command (Python: `ExecuteError`).
///
/// Keeps the QMP error class and description, the request that was sent and the
/// reply that was received.
#[derive(Debug, Clone)]
pub struct ExecuteError {
    /// The `error` member of the reply.
    pub error: ErrorInfo,
    /// The request as it was sent.
    pub sent: JsonObject,
    /// The whole reply as it was received.
    pub received: JsonObject,
}

impl ExecuteError {
    /// The QMP error class, e.g. `GenericError` or `CommandNotFound`.
    pub fn error_class(&self) -> &str {
        &self.error.class
    }

    /// The human-readable description QEMU gave.
    pub fn desc(&self) -> &str {
        &self.error.desc
    }

    /// The command name of the request that failed.
    pub fn command(&self) -> &str {
        self.sent
            .get("execute")
            .or_else(|| self.sent.get("exec-oob"))
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

impl fmt::Display for ExecuteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "command '{}' failed: {} ({})",
            self.command(),
            self.error.desc,
            self.error.class
        )
    }
}

impl std::error::Error for ExecuteError {}

/// The peer broke the protocol.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Bytes that do not frame into JSON objects (Python: `DeserializationError`,
    /// `UnexpectedTypeError`).
    #[error("could not decode a QMP message: {0}")]
    Frame(Arc<FrameError>),

    /// A message larger than the configured limit.
    #[error("QMP message too large: at least {size} bytes, the limit is {limit} bytes")]
    TooLarge {
        /// How many bytes of the message were seen.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// An error reply without an id while no id-less command was waiting: the peer
    /// failed to parse something we sent, and we cannot tell which command it was
    /// (Python: `ServerParseError`).
    #[error("the peer sent an error reply without an id and no id-less command is pending; assuming the peer could not parse a request: {desc} ({class})")]
    ServerParse {
        /// The error class.
        class: String,
        /// The error description.
        desc: String,
    },

    /// A reply that has neither `return` nor a well-formed `error` member
    /// (Python: `BadReplyError`).
    #[error("malformed reply to '{command}': {reason}")]
    BadReply {
        /// The command it answered.
        command: String,
        /// What is wrong with it.
        reason: String,
        /// The reply.
        received: Box<JsonObject>,
    },

    /// A message that is not a greeting, reply or event where one was expected.
    #[error("unexpected message: {reason}")]
    Unexpected {
        /// What is wrong with it.
        reason: String,
    },
}

impl From<FrameError> for ProtocolError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::TooLarge { size, limit } => ProtocolError::TooLarge { size, limit },
            other => ProtocolError::Frame(Arc::new(other)),
        }
    }
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Self {
        Error::Protocol(e.into())
    }
}
