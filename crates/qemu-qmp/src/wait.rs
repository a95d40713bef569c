//! How long a call waits: the one convention of every crate in the workspace.
//!
//! - A timeout given as `Option<Duration>` (a command timeout, the time `accept` or a
//!   shutdown may take, a blocking `recv`) always means: `None`, no limit; `Some(d)`,
//!   at most `d`, then an error that says what was waited for and how long.
//! - A call that can also *not wait at all* (Python's `pull_event(wait=False)`,
//!   `get_qmp_event(wait=False)`) takes a [`Wait`], which says so explicitly:
//!   `Wait::No`, `Wait::Forever` or `Wait::Timeout(d)`. Such calls take
//!   `impl Into<Wait>`, so `false`, `true`, a `Duration` and an `Option<Duration>`
//!   (with the meaning above: `None` is no limit) can be passed as they are.
//! - A wait that must end (`event_wait`, `console_read_line`, `QemuMachine::wait`)
//!   takes a plain `Duration`.
//!
//! Async calls without a timeout parameter wait for as long as it takes and can be
//! cancelled by dropping them (or bounded with `tokio::time::timeout`); each says in
//! its documentation whether cancelling loses anything.

use std::time::Duration;

/// Whether, and how long, a call that can return at once waits.
///
/// Python's `pull_event(wait)` takes `False`, `True` or a number of seconds, and waits
/// for ever when given an `int` (only a `float` is taken as a timeout);
/// `Wait::Timeout` always means a timeout. `false.into()` is [`Wait::No`],
/// `true.into()` is [`Wait::Forever`], a `Duration` converts to [`Wait::Timeout`], and
/// an `Option<Duration>` follows the workspace's convention for optional timeouts:
/// `None` is [`Wait::Forever`] (see [the module documentation](self)).
///
/// ```
/// use std::time::Duration;
/// use qemu_qmp::Wait;
///
/// assert_eq!(Wait::from(false), Wait::No);
/// assert_eq!(Wait::from(true), Wait::Forever);
/// assert_eq!(Wait::from(Duration::from_secs(1)), Wait::Timeout(Duration::from_secs(1)));
/// assert_eq!(Wait::from(None::<Duration>), Wait::Forever);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wait {
    /// Do not wait: return what is there now.
    No,
    /// Wait until there is something, or until it is certain nothing more can come
    /// (the session ended).
    Forever,
    /// Wait at most this long.
    Timeout(Duration),
}

impl Wait {
    /// The longest this waits: `Some(Duration::ZERO)` for [`Wait::No`], `None` for
    /// [`Wait::Forever`].
    pub fn limit(self) -> Option<Duration> {
        match self {
            Wait::No => Some(Duration::ZERO),
            Wait::Forever => None,
            Wait::Timeout(t) => Some(t),
        }
    }
}

impl From<bool> for Wait {
    fn from(wait: bool) -> Wait {
        if wait {
            Wait::Forever
        } else {
            Wait::No
        }
    }
}

impl From<Duration> for Wait {
    fn from(timeout: Duration) -> Wait {
        Wait::Timeout(timeout)
    }
}

impl From<Option<Duration>> for Wait {
    /// `None` is no limit ([`Wait::Forever`]), as for every optional timeout.
    fn from(timeout: Option<Duration>) -> Wait {
        match timeout {
            Some(t) => Wait::Timeout(t),
            None => Wait::Forever,
        }
    }
}
