//! Event listeners and the shared event queue.
//!
//! Any number of [`EventListener`]s can watch a client's events, each with its own
//! queue and its own choice of events (a set of names and/or a filter closure). The
//! reader never waits for a listener: each queue is bounded, and when a listener falls
//! behind, its oldest events are dropped and the listener is told how many it lost
//! ([`RecvError::Lagged`]) before it receives the next one. Losses are never silent.
//!
//! An [`EventQueue`] is a listener's queue shared by any number of tasks or threads
//! (`&self` methods), with the operations of Python's `QEMUMachine` and
//! `QEMUMonitorProtocol`: take every queued event or wait for one
//! ([`recv_all`](EventQueue::recv_all)), and wait for the first event that matches,
//! passing over the others, which stay queued in order
//! ([`wait_for`](EventQueue::wait_for)). Concurrent waits each see every event that
//! arrives while they wait. The blocking client's event queue and
//! `qemu_machine::QemuMachine`'s kept events are `EventQueue`s.
//!
//! Every queue holds at most its capacity, [`DEFAULT_EVENT_CAPACITY`] unless chosen
//! otherwise ([`ListenOptions::capacity`]).
//!
//! A listener's stream ends when the session it watches ends (the peer hung up, a
//! protocol error, or `disconnect()`); a listener created while the client is idle
//! watches the next session.
//!
//! The module is split by concern: `listener` (what a listener wants, how it is
//! read), `queue` (the bounded queue and its waiters, shared by both kinds of
//! reader), `registry` (a client's listeners, fed by its reader), `log` (the one
//! copy of the events that listeners for every event read from).

mod listener;
mod log;
mod queue;
mod registry;

pub use listener::{
    EventListener, Lagged, ListenOptions, RecvError, RecvTimeoutError, StreamItem, TryRecvError,
};
pub use queue::{EventQueue, SessionEnded};
pub(crate) use registry::Registry;

/// How many events a queue holds before it drops the oldest, unless told otherwise:
/// the one default of every [`EventListener`], [`EventQueue`], the blocking client's
/// event queue and `QemuMachine`'s kept events.
///
/// Why 16,384: a queued event costs about 220 bytes (an event keeps the text it
/// arrived as and is parsed only when asked, see [`Event`](crate::Event); measured
/// with `benches/limits.rs`, 221 bytes for a 95-byte event, where a parsed one cost
/// 2 KiB), so a full queue holds about 4 MiB, and listeners that lag on the same
/// events share them (events are reference-counted). That is small beside any QEMU,
/// and far more than QEMU emits between two reads in practice: a block job's whole
/// life is about ten events, QEMU rate-limits the events a guest can trigger at will
/// (`RTC_CHANGE`, `BALLOON_CHANGE`, ... at most one a second each), and a command's
/// events arrive before its reply. A program that really ignores events for long (a
/// script that never calls `pull_event`) loses the oldest ones, counted and logged,
/// instead of growing without bound.
///
/// Sizing rule, for a consumer that keeps up on average: the queue must hold what
/// arrives while the consumer is not running, that is the peer's event rate times
/// the consumer's longest pause (a scheduling delay, a slow step between two
/// `recv`s). The reader decodes about a million small events a second on one core
/// of the machine the benchmarks ran on, so the default covers a pause of about
/// 16 ms at that rate; a consumer on the multi-thread runtime reading a flood of
/// 100,000 events lost none in 5 of 5 runs (`benches/limits.rs`, `consumer_loss`),
/// where a queue of 4,096 lost 24-39 % in 2 runs of 8. A consumer that does real
/// work per event during floods should size its queue
/// ([`ListenOptions::capacity`]) for its own pauses.
pub const DEFAULT_EVENT_CAPACITY: usize = 16 * 1024;

/// The default capacity of an [`EventListener`]: [`DEFAULT_EVENT_CAPACITY`] (kept
/// under its former name).
pub const DEFAULT_LISTENER_CAPACITY: usize = DEFAULT_EVENT_CAPACITY;
