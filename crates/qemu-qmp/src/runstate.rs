//! The run state of a client (Python: `Runstate`).

use std::fmt;

/// Where a client is in its life cycle.
///
/// A good session goes `Idle -> Connecting -> Running -> Disconnecting -> Idle`; a failed
/// connection attempt goes `Idle -> Connecting -> Disconnecting -> Idle`. When the
/// peer hangs up or breaks the protocol, the client stays in `Disconnecting` until
/// [`Client::disconnect`](crate::Client::disconnect) is called, which returns what
/// ended the session and brings the client back to `Idle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runstate {
    /// Not connected; `connect` and `start_server` are allowed.
    Idle,
    /// Connecting, listening or accepting, or exchanging greeting and capabilities.
    Connecting,
    /// The session is up; commands may be executed.
    Running,
    /// The session is ending or has ended; call `disconnect()` to return to `Idle`.
    Disconnecting,
}

impl fmt::Display for Runstate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Runstate::Idle => "IDLE",
            Runstate::Connecting => "CONNECTING",
            Runstate::Running => "RUNNING",
            Runstate::Disconnecting => "DISCONNECTING",
        })
    }
}

impl Runstate {
    /// The message of Python's `StateError` for an operation that needs `required`
    /// while the client is in `self`.
    pub(crate) fn state_error(self, required: Runstate) -> crate::Error {
        let message = match self {
            Runstate::Connecting => "the QMP client is currently connecting".to_owned(),
            Runstate::Disconnecting => {
                "the QMP client is disconnecting; call disconnect() to return to the idle state"
                    .to_owned()
            }
            Runstate::Running => "the QMP client is already connected and running".to_owned(),
            Runstate::Idle => "the QMP client is disconnected and idle".to_owned(),
        };
        crate::Error::State {
            message,
            state: self,
            required,
        }
    }
}
