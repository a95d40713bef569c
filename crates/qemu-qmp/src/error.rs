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

    /// The peer's first message (events aside: QEMU can send one before its greeting)
    /// was not a valid QMP greeting (Python: `GreetingError`). The message shows the
    /// start of what was received in its place.
    #[error("did not understand the greeting: {reason}{}", received_excerpt(.received))]
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

    /// A local system call failed (duplicating a caller's descriptor, starting the
    /// blocking client's thread, ...): nothing was sent, and the session, if there is
    /// one, goes on.
    #[error("{context} failed: {source}")]
    System {
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

    /// A request the library refuses to send (file descriptors on a transport that
    /// cannot carry them, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// A request carries more file descriptors than one message can pass (Linux's
    /// `SCM_MAX_FD`, 253). Checked before anything is queued: nothing was sent, and
    /// the session and the other commands in flight go on.
    #[error("command '{command}' carries {count} file descriptors, but one message can pass at most {limit} (the kernel's SCM_MAX_FD); nothing was sent")]
    TooManyFds {
        /// The command.
        command: String,
        /// How many descriptors it carries.
        count: usize,
        /// The most one message can pass.
        limit: usize,
    },

    /// The kernel refused to send a request's file descriptors, before any byte of the
    /// request was written: `sendmsg` failed with `EINVAL` (a descriptor that cannot
    /// be passed), `ETOOMANYREFS` (too many descriptors in flight) or `EBADF`. Only
    /// this request failed; the session and the other commands in flight go on.
    #[error("{} was not sent: the kernel refused to pass its file descriptors: {source}", not_sent_what(.command))]
    NotSent {
        /// The command, or `None` for a descriptor sent with `send_fd_scm`.
        command: Option<String>,
        /// What `sendmsg` said.
        #[source]
        source: Arc<io::Error>,
    },
}

/// How much of a received message an error's text quotes, in bytes of JSON.
const RECEIVED_EXCERPT_LEN: usize = 200;

/// `"; received: {...}"`: the start of a received message as compact JSON, at most
/// about [`RECEIVED_EXCERPT_LEN`] bytes (then `...`); empty if there is none. Only
/// that much is serialized, however large the message.
fn received_excerpt(received: &Option<Box<JsonObject>>) -> String {
    /// Keeps the first `room` bytes written, then fails, which stops serde.
    struct Capped {
        out: Vec<u8>,
        room: usize,
    }
    impl io::Write for Capped {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            let n = data.len().min(self.room);
            self.out.extend_from_slice(&data[..n]);
            self.room -= n;
            if n < data.len() {
                return Err(io::ErrorKind::WriteZero.into());
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    let Some(obj) = received else {
        return String::new();
    };
    let mut capped = Capped {
        out: Vec::new(),
        room: RECEIVED_EXCERPT_LEN,
    };
    let cut = serde_json::to_writer(&mut capped, obj).is_err();
    // A cut may split a UTF-8 sequence: keep the valid prefix.
    let text = match String::from_utf8(capped.out) {
        Ok(s) => s,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let mut bytes = e.into_bytes();
            bytes.truncate(valid);
            String::from_utf8(bytes).unwrap_or_default()
        }
    };
    format!("; received: {text}{}", if cut { "..." } else { "" })
}

fn not_sent_what(command: &Option<String>) -> String {
    match command {
        Some(c) => format!("command '{c}'"),
        None => "the descriptor of send_fd_scm".to_owned(),
    }
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

    pub(crate) fn system(context: &'static str, source: io::Error) -> Self {
        Error::System {
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

    /// True if this error means there is no session (any more), so nothing more can
    /// be done on this connection: a command interrupted by, or issued after, the end
    /// of the session ([`Error::Disconnected`]); the peer hung up
    /// ([`Error::ConnectionClosed`]); a protocol error ([`Error::Protocol`], which
    /// always ends the session); an I/O error on the connection ([`Error::Io`]); or a
    /// call made while the client is not connected ([`Error::State`] in
    /// [`Runstate::Idle`] or [`Runstate::Disconnecting`], e.g. after
    /// [`disconnect`](crate::Client::disconnect)).
    pub fn is_disconnected(&self) -> bool {
        match self {
            Error::Disconnected { .. }
            | Error::ConnectionClosed { .. }
            | Error::Protocol(_)
            | Error::Io { .. } => true,
            Error::State { state, .. } => {
                matches!(state, Runstate::Idle | Runstate::Disconnecting)
            }
            _ => false,
        }
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
/// reply that was received, both in the caller's terms: the id the library put on
/// the wire is not in them (the library chooses its own ids; see
/// [`Client::execute_raw`](crate::Client::execute_raw)), so `sent` is the request as
/// the caller made it and `received` is QEMU's reply to it, every other member as
/// received.
#[derive(Debug, Clone)]
pub struct ExecuteError {
    /// The `error` member of the reply.
    pub error: ErrorInfo,
    /// The request as the caller made it (without the library's wire id).
    pub sent: JsonObject,
    /// The whole reply as received, without the library's wire id.
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
