//! Client for QEMU's qtest protocol (Python: `qemu.machine.qtest.QEMUQtestProtocol`).
//!
//! QEMU started with `-qtest chardev:ID` (usually with `-accel qtest`, see
//! below) lets a test drive devices without any guest code: it reads one
//! command per line from the chardev and answers each with one line, `OK
//! [values]`, `FAIL [reason]` or `ERR reason`. After `irq_intercept_in` or
//! `irq_intercept_out` it also writes `IRQ raise N` / `IRQ lower N` lines
//! whenever an intercepted interrupt line changes level, at any time:
//! interleaved with replies or between commands.
//!
//! [`QtestClient`] runs a background reader task that sorts those
//! notifications out of the stream (see [`QtestClient::irqs`],
//! [`QtestClient::wait_irq`], [`QtestClient::get_irq`]) and hands every other
//! line to the command waiting for it; commands are serialised and each one is
//! bounded by the client's timeout ([`DEFAULT_TIMEOUT`] unless changed with
//! [`QtestClient::set_timeout`]).
//!
//! ```no_run
//! # async fn demo(stream: tokio::net::UnixStream) -> Result<(), qemu_machine::qtest::QtestError> {
//! use qemu_machine::qtest::QtestClient;
//!
//! let qtest = QtestClient::new(stream);
//! qtest.writel(0x10_0000, 0xdead_beef).await?;
//! assert_eq!(qtest.readl(0x10_0000).await?, 0xdead_beef);
//! qtest.outb(0x3f8, b'A').await?; // COM1
//! # Ok(()) }
//! ```
//!
//! # The clock commands need the qtest accelerator
//!
//! `clock_step` and `clock_set` exist only under `-accel qtest`; with any
//! other accelerator QEMU answers `FAIL Unknown command 'clock_step'`
//! ([`QtestError::Failed`]). Some distribution builds of QEMU (Debian's 7.2 and 10.0,
//! for one) leave that accelerator out; the other commands work with `-accel
//! tcg -S` as well.
//!
//! # QEMU trusts its qtest client
//!
//! QEMU asserts, and so aborts, on malformed arguments to the commands it
//! knows (a missing argument, a number that does not parse, a zero-length
//! `read`, a port above 0xffff). The typed methods never send such lines;
//! [`QtestClient::cmd`] sends whatever it is given apart from the checks listed
//! there.

mod codec;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use codec::Incoming;

/// Timeout of a new [`QtestClient`] for each command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The name [`QtestClient::set_irq_in`] takes for a device's unnamed GPIO
/// input list (its plain IRQ inputs, e.g. the IOAPIC's pins).
pub const UNNAMED_GPIO_IN: &str = "unnamed-gpio-in";

/// Errors of the qtest client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QtestError {
    /// QEMU refused the command: it answered `FAIL [reason]` (for example
    /// `Unknown command 'foo'`, `Unknown device`) or `ERR reason`.
    #[error("qtest command `{command}` failed: {reason}")]
    Failed {
        /// The command line sent (shortened if very long).
        command: String,
        /// The text after `FAIL` or `ERR` (may be empty).
        reason: String,
    },
    /// QEMU's reply did not have the expected form.
    #[error("unexpected reply to qtest command `{command}`: {line:?}")]
    Protocol {
        /// The command line sent (shortened if very long).
        command: String,
        /// The reply line, without its newline.
        line: String,
    },
    /// The arguments cannot be sent: QEMU would misparse them or abort. Nothing
    /// was sent.
    #[error("invalid qtest argument: {0}")]
    InvalidArgument(String),
    /// Reading from or writing to the qtest socket failed.
    #[error("qtest I/O error: {0}")]
    Io(#[from] io::Error),
    /// No reply (or, for [`QtestClient::wait_irq`], no matching IRQ) within the
    /// timeout. The connection stays usable: a late reply is discarded when it
    /// arrives.
    #[error("qtest: no answer to `{command}` within {timeout:?}")]
    Timeout {
        /// The command line sent (shortened), or what was awaited.
        command: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// QEMU closed the qtest connection (it exited or was killed).
    #[error("qtest connection closed")]
    Closed,
}

/// An `IRQ raise N` or `IRQ lower N` notification from QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IrqEvent {
    /// The intercepted interrupt line number `N` (the index among the
    /// intercepted device's GPIO pins, e.g. the IOAPIC input).
    pub line: u32,
    /// `true` for `raise`, `false` for `lower`.
    pub raised: bool,
}

/// Byte order of the target, as reported by the `endianness` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endianness {
    /// `OK big`.
    Big,
    /// `OK little`.
    Little,
}

/// Why the connection ended, kept so that every later call can report it.
#[derive(Debug, Clone)]
enum CloseReason {
    /// End of stream, or the peer went away while we were writing.
    Closed,
    /// Any other I/O error, as kind and message (`io::Error` is not `Clone`).
    Io(io::ErrorKind, String),
}

impl CloseReason {
    fn from_io(err: &io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof => CloseReason::Closed,
            kind => CloseReason::Io(kind, err.to_string()),
        }
    }

    fn to_error(&self) -> QtestError {
        match self {
            CloseReason::Closed => QtestError::Closed,
            CloseReason::Io(kind, msg) => QtestError::Io(io::Error::new(*kind, msg.clone())),
        }
    }
}

/// State shared by the client and its reader and writer tasks.
#[derive(Default)]
struct State {
    /// One entry per command line sent and not answered yet, oldest first.
    /// A receiver dropped on timeout makes its reply vanish when it comes.
    pending: VecDeque<oneshot::Sender<String>>,
    /// Notifications not yet taken by `irqs` or `wait_irq`.
    irq_events: VecDeque<IrqEvent>,
    /// Last reported level of each line.
    irq_levels: HashMap<u32, bool>,
    /// Set once, when the connection ends.
    closed: Option<CloseReason>,
}

struct Shared {
    state: Mutex<State>,
    /// Woken on every IRQ notification and when the connection ends.
    irq_notify: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock is never held across code that can panic, but don't turn a
        // poisoned lock into a second panic anyway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the end of the connection (the first reason wins) and fails
    /// every command in flight and every IRQ waiter.
    fn close(&self, reason: CloseReason) {
        let pending = {
            let mut state = self.lock();
            state.closed.get_or_insert(reason);
            std::mem::take(&mut state.pending)
        };
        // Dropping the senders wakes the waiting commands, which then read
        // `closed`.
        drop(pending);
        self.irq_notify.notify_waiters();
    }
}

/// An async client for the qtest protocol over a connected Unix stream.
///
/// All methods take `&self`: share the client (for example in an `Arc`) and
/// calls are serialised, one command in flight at a time. A background task
/// reads QEMU's output all the time, so IRQ notifications are collected even
/// while no command runs; another one writes the commands. Both stop when the
/// client is dropped, which closes the connection.
///
/// Every command waits at most [`QtestClient::timeout`] (including the wait
/// for an earlier command of another task to finish) and then fails with
/// [`QtestError::Timeout`]. Commands are cancel-safe in the same sense: a
/// command whose future is dropped may or may not have been executed by
/// QEMU, and its reply is discarded when it comes, so later commands still get
/// their own replies.
pub struct QtestClient {
    shared: Arc<Shared>,
    /// Complete lines, newline included, for the writer task.
    lines: mpsc::UnboundedSender<Vec<u8>>,
    /// Serialises commands: held from sending a line until its reply.
    command_lock: tokio::sync::Mutex<()>,
    timeout: Mutex<Duration>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl fmt::Debug for QtestClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("QtestClient")
            .field("timeout", &self.timeout())
            .field("in_flight", &state.pending.len())
            .field("irq_events", &state.irq_events.len())
            .field("closed", &state.closed)
            .finish_non_exhaustive()
    }
}

impl Drop for QtestClient {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl QtestClient {
    /// Wraps a stream connected to QEMU's qtest chardev (for example one end
    /// of a socketpair whose other end QEMU got as `-chardev
    /// socket,id=qtest,fd=N`, or a connection accepted from `-qtest
    /// unix:PATH`) and starts the background reader and writer tasks.
    ///
    /// QEMU sends nothing before the first command, so there is no handshake;
    /// the first command simply waits (within the timeout) until QEMU has
    /// started up.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (like `tokio::spawn`).
    pub fn new(stream: UnixStream) -> Self {
        let (read_half, write_half) = stream.into_split();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            irq_notify: Notify::new(),
        });
        let (lines, lines_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(read_half, Arc::clone(&shared)));
        let writer = tokio::spawn(write_loop(write_half, lines_rx, Arc::clone(&shared)));
        QtestClient {
            shared,
            lines,
            command_lock: tokio::sync::Mutex::new(()),
            timeout: Mutex::new(DEFAULT_TIMEOUT),
            reader,
            writer,
        }
    }

    /// Like [`QtestClient::new`], from a blocking std stream (which is
    /// switched to non-blocking mode).
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime with I/O enabled.
    pub fn from_std(stream: std::os::unix::net::UnixStream) -> Result<Self, QtestError> {
        stream.set_nonblocking(true)?;
        Ok(Self::new(UnixStream::from_std(stream)?))
    }

    /// The timeout applied to each command.
    pub fn timeout(&self) -> Duration {
        *self.timeout.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the timeout applied to each command from now on (default
    /// [`DEFAULT_TIMEOUT`]).
    pub fn set_timeout(&self, timeout: Duration) {
        *self.timeout.lock().unwrap_or_else(PoisonError::into_inner) = timeout;
    }

    /// Whether the connection has ended (QEMU closed it or it failed); every
    /// command then fails at once.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed.is_some()
    }

    // -- raw commands -------------------------------------------------------

    /// Sends one command line (without the newline) and returns QEMU's reply
    /// line as it is, whatever it says. IRQ notifications are never returned.
    ///
    /// Fails with [`QtestError::InvalidArgument`] (sending nothing) for an
    /// empty line or one containing `\n`, `\r` or NUL.
    pub async fn cmd_reply(&self, line: &str) -> Result<String, QtestError> {
        codec::check_line(line)?;
        self.transact(line).await
    }

    /// Sends one command line (without the newline) and returns what follows
    /// `OK` in the reply (empty for a bare `OK`); `FAIL`/`ERR` replies become
    /// [`QtestError::Failed`], anything else [`QtestError::Protocol`].
    ///
    /// For commands without a typed method. Validated like
    /// [`QtestClient::cmd_reply`]; beyond that, malformed arguments to a
    /// command QEMU knows make QEMU abort (see the module documentation).
    pub async fn cmd(&self, line: &str) -> Result<String, QtestError> {
        let reply = self.cmd_reply(line).await?;
        codec::ok_payload(line, &reply)
    }

    // -- clock --------------------------------------------------------------

    /// `clock_step NS`: advances the virtual clock by `ns` nanoseconds,
    /// running the timers that expire on the way, and returns the new clock
    /// value. `ns` must fit in an `i64`. Needs `-accel qtest`.
    pub async fn clock_step(&self, ns: u64) -> Result<i64, QtestError> {
        if i64::try_from(ns).is_err() {
            return Err(QtestError::InvalidArgument(format!(
                "clock_step: {ns} ns does not fit in an i64"
            )));
        }
        let line = format!("clock_step {ns}");
        self.ok_with(&line, codec::parse_i64).await
    }

    /// `clock_step` without an argument: advances the virtual clock to the
    /// next timer deadline and returns the new clock value. Needs `-accel
    /// qtest`.
    pub async fn clock_step_next(&self) -> Result<i64, QtestError> {
        self.ok_with("clock_step", codec::parse_i64).await
    }

    /// `clock_set NS`: advances the virtual clock to `ns` nanoseconds (does
    /// nothing if it is already past that) and returns the new clock value.
    /// Needs `-accel qtest`.
    pub async fn clock_set(&self, ns: i64) -> Result<i64, QtestError> {
        let line = format!("clock_set {ns}");
        self.ok_with(&line, codec::parse_i64).await
    }

    // -- memory ---------------------------------------------------------------

    /// `readb ADDR`: one byte of guest physical memory (or MMIO).
    pub async fn readb(&self, addr: u64) -> Result<u8, QtestError> {
        self.read_value(format!("readb {addr:#x}")).await
    }

    /// `readw ADDR`: a 16-bit value in target byte order.
    pub async fn readw(&self, addr: u64) -> Result<u16, QtestError> {
        self.read_value(format!("readw {addr:#x}")).await
    }

    /// `readl ADDR`: a 32-bit value in target byte order.
    pub async fn readl(&self, addr: u64) -> Result<u32, QtestError> {
        self.read_value(format!("readl {addr:#x}")).await
    }

    /// `readq ADDR`: a 64-bit value in target byte order.
    pub async fn readq(&self, addr: u64) -> Result<u64, QtestError> {
        self.read_value(format!("readq {addr:#x}")).await
    }

    /// `writeb ADDR VALUE`.
    pub async fn writeb(&self, addr: u64, value: u8) -> Result<(), QtestError> {
        self.ok_empty(&format!("writeb {addr:#x} {value:#x}")).await
    }

    /// `writew ADDR VALUE`, in target byte order.
    pub async fn writew(&self, addr: u64, value: u16) -> Result<(), QtestError> {
        self.ok_empty(&format!("writew {addr:#x} {value:#x}")).await
    }

    /// `writel ADDR VALUE`, in target byte order.
    pub async fn writel(&self, addr: u64, value: u32) -> Result<(), QtestError> {
        self.ok_empty(&format!("writel {addr:#x} {value:#x}")).await
    }

    /// `writeq ADDR VALUE`, in target byte order.
    pub async fn writeq(&self, addr: u64, value: u64) -> Result<(), QtestError> {
        self.ok_empty(&format!("writeq {addr:#x} {value:#x}")).await
    }

    /// `read ADDR SIZE`: `size` bytes of guest memory (hex-encoded on the
    /// wire). A zero size returns an empty vector without asking QEMU (which
    /// would abort).
    pub async fn memread(&self, addr: u64, size: usize) -> Result<Vec<u8>, QtestError> {
        if size == 0 {
            return Ok(Vec::new());
        }
        let line = format!("read {addr:#x} {size:#x}");
        self.ok_with(&line, |payload| codec::decode_hex(payload, size))
            .await
    }

    /// `write ADDR SIZE DATA`: writes `data` to guest memory (hex-encoded on
    /// the wire). Empty data is a no-op that does not talk to QEMU.
    pub async fn memwrite(&self, addr: u64, data: &[u8]) -> Result<(), QtestError> {
        if data.is_empty() {
            return Ok(());
        }
        let line = format!(
            "write {addr:#x} {:#x} {}",
            data.len(),
            codec::encode_hex(data)
        );
        self.ok_empty(&line).await
    }

    /// `memset ADDR SIZE VALUE`: fills `size` bytes with `value` (zero size
    /// is allowed and does nothing).
    pub async fn memset(&self, addr: u64, size: u64, value: u8) -> Result<(), QtestError> {
        self.ok_empty(&format!("memset {addr:#x} {size:#x} {value:#x}"))
            .await
    }

    /// `b64read ADDR SIZE`: like [`QtestClient::memread`], base64 on the wire
    /// (a third less data than hex).
    pub async fn b64read(&self, addr: u64, size: usize) -> Result<Vec<u8>, QtestError> {
        if size == 0 {
            return Ok(Vec::new());
        }
        let line = format!("b64read {addr:#x} {size:#x}");
        self.ok_with(&line, |payload| {
            codec::decode_base64(payload).filter(|data| data.len() == size)
        })
        .await
    }

    /// `b64write ADDR SIZE B64_DATA`: like [`QtestClient::memwrite`], base64
    /// on the wire. Empty data is a no-op that does not talk to QEMU.
    pub async fn b64write(&self, addr: u64, data: &[u8]) -> Result<(), QtestError> {
        if data.is_empty() {
            return Ok(());
        }
        let line = format!(
            "b64write {addr:#x} {:#x} {}",
            data.len(),
            codec::encode_base64(data)
        );
        self.ok_empty(&line).await
    }

    // -- I/O ports ------------------------------------------------------------

    /// `inb PORT`: reads an I/O port (unassigned ports read as all ones).
    pub async fn inb(&self, port: u16) -> Result<u8, QtestError> {
        self.read_value(format!("inb {port:#x}")).await
    }

    /// `inw PORT`: reads a 16-bit I/O port.
    pub async fn inw(&self, port: u16) -> Result<u16, QtestError> {
        self.read_value(format!("inw {port:#x}")).await
    }

    /// `inl PORT`: reads a 32-bit I/O port.
    pub async fn inl(&self, port: u16) -> Result<u32, QtestError> {
        self.read_value(format!("inl {port:#x}")).await
    }

    /// `outb PORT VALUE`: writes an I/O port.
    pub async fn outb(&self, port: u16, value: u8) -> Result<(), QtestError> {
        self.ok_empty(&format!("outb {port:#x} {value:#x}")).await
    }

    /// `outw PORT VALUE`: writes a 16-bit I/O port.
    pub async fn outw(&self, port: u16, value: u16) -> Result<(), QtestError> {
        self.ok_empty(&format!("outw {port:#x} {value:#x}")).await
    }

    /// `outl PORT VALUE`: writes a 32-bit I/O port.
    pub async fn outl(&self, port: u16, value: u32) -> Result<(), QtestError> {
        self.ok_empty(&format!("outl {port:#x} {value:#x}")).await
    }

    // -- interrupts -----------------------------------------------------------

    /// `irq_intercept_in QOM-PATH`: reports level changes of the unnamed GPIO
    /// inputs of the device at `path` as IRQ notifications (on a PC,
    /// `"ioapic"` gives the ISA/PCI interrupt lines, IRQ 0 as line 0). Only
    /// one device can be intercepted per QEMU: another one fails with `IRQ
    /// intercept already enabled`; an unknown path with `Unknown device`.
    /// The path must name a device: QEMU aborts for a QOM object that is not
    /// one.
    pub async fn irq_intercept_in(&self, path: &str) -> Result<(), QtestError> {
        codec::check_word("QOM path", path)?;
        self.ok_empty(&format!("irq_intercept_in {path}")).await
    }

    /// `irq_intercept_out QOM-PATH`: like [`QtestClient::irq_intercept_in`],
    /// for the device's unnamed GPIO outputs.
    pub async fn irq_intercept_out(&self, path: &str) -> Result<(), QtestError> {
        codec::check_word("QOM path", path)?;
        self.ok_empty(&format!("irq_intercept_out {path}")).await
    }

    /// `set_irq_in QOM-PATH NAME NUM LEVEL`: forces input `num` of the GPIO
    /// list `name` ([`UNNAMED_GPIO_IN`] for the plain IRQ inputs) of the
    /// device at `path` to `level`. If that input is intercepted, QEMU reports
    /// the change as an IRQ notification before its reply. QEMU aborts if
    /// `num` is out of range for the list.
    pub async fn set_irq_in(
        &self,
        path: &str,
        name: &str,
        num: u32,
        level: i32,
    ) -> Result<(), QtestError> {
        codec::check_word("QOM path", path)?;
        codec::check_word("GPIO list name", name)?;
        if i32::try_from(num).is_err() {
            return Err(QtestError::InvalidArgument(format!(
                "set_irq_in: input number {num} does not fit in an int"
            )));
        }
        self.ok_empty(&format!("set_irq_in {path} {name} {num} {level}"))
            .await
    }

    /// Takes every IRQ notification collected so far (oldest first), leaving
    /// none behind. Notifications are collected from the moment the client is
    /// created, whether or not a command is running.
    pub fn irqs(&self) -> Vec<IrqEvent> {
        self.shared.lock().irq_events.drain(..).collect()
    }

    /// Waits until a notification for `line` with the given direction
    /// (`raised`: `IRQ raise`, else `IRQ lower`) has been collected, and
    /// removes that one notification (the oldest match) from the collected
    /// ones; the others stay for [`QtestClient::irqs`]. A matching
    /// notification already collected returns at once; one already taken by
    /// `irqs` does not count.
    ///
    /// Fails with [`QtestError::Timeout`] after `timeout`, or with the reason
    /// the connection ended.
    pub async fn wait_irq(
        &self,
        line: u32,
        raised: bool,
        timeout: Duration,
    ) -> Result<(), QtestError> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.irq_notify.notified();
            tokio::pin!(notified);
            // Register before looking, so a notification arriving in between
            // still wakes us.
            notified.as_mut().enable();
            {
                let mut state = self.shared.lock();
                let wanted = IrqEvent { line, raised };
                if let Some(i) = state.irq_events.iter().position(|e| *e == wanted) {
                    state.irq_events.remove(i);
                    return Ok(());
                }
                if let Some(reason) = &state.closed {
                    return Err(reason.to_error());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let direction = if raised { "raise" } else { "lower" };
                return Err(QtestError::Timeout {
                    command: format!("wait for IRQ {direction} {line}"),
                    timeout,
                });
            }
        }
    }

    /// The level of `line` as last reported by QEMU (`false` if it never was).
    /// Not changed by [`QtestClient::irqs`].
    pub fn get_irq(&self, line: u32) -> bool {
        self.shared
            .lock()
            .irq_levels
            .get(&line)
            .copied()
            .unwrap_or(false)
    }

    // -- misc -----------------------------------------------------------------

    /// `endianness`: the target's byte order.
    pub async fn endianness(&self) -> Result<Endianness, QtestError> {
        self.ok_with("endianness", |payload| match payload {
            "big" => Some(Endianness::Big),
            "little" => Some(Endianness::Little),
            _ => None,
        })
        .await
    }

    // -- plumbing -------------------------------------------------------------

    /// Sends a (validated) line and converts the `OK` payload with `parse`;
    /// `None` from it is a [`QtestError::Protocol`] error showing the reply.
    async fn ok_with<T>(
        &self,
        line: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, QtestError> {
        let reply = self.transact(line).await?;
        let payload = codec::ok_payload(line, &reply)?;
        parse(&payload).ok_or_else(|| codec::protocol(line, &reply))
    }

    /// Sends a (validated) line that must be answered with a bare `OK`.
    async fn ok_empty(&self, line: &str) -> Result<(), QtestError> {
        let reply = self.transact(line).await?;
        let payload = codec::ok_payload(line, &reply)?;
        if payload.is_empty() {
            Ok(())
        } else {
            Err(codec::protocol(line, &reply))
        }
    }

    /// Sends a line whose reply is `OK 0x<hex>` and converts the value to `T`.
    async fn read_value<T: TryFrom<u64>>(&self, line: String) -> Result<T, QtestError> {
        self.ok_with(&line, |payload| {
            codec::parse_hex_u64(payload).and_then(|v| T::try_from(v).ok())
        })
        .await
    }

    /// Sends `line` (already validated, without newline) and waits for its
    /// reply line, all within the client's timeout.
    async fn transact(&self, line: &str) -> Result<String, QtestError> {
        let timeout = self.timeout();
        let deadline = Instant::now() + timeout;
        let timed_out = || QtestError::Timeout {
            command: codec::command_for_error(line),
            timeout,
        };

        let _serialised = tokio::time::timeout_at(deadline, self.command_lock.lock())
            .await
            .map_err(|_| timed_out())?;

        let reply = {
            let mut state = self.shared.lock();
            if let Some(reason) = &state.closed {
                return Err(reason.to_error());
            }
            let mut bytes = Vec::with_capacity(line.len() + 1);
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
            // Queue the reply slot and the line under one lock, so that the
            // order of `pending` is the order of the lines on the wire. The
            // writer task writes whole lines even if this future is dropped,
            // so the stream never carries half a command.
            let (tx, rx) = oneshot::channel();
            state.pending.push_back(tx);
            if self.lines.send(bytes).is_err() {
                state.pending.pop_back();
                return Err(state
                    .closed
                    .as_ref()
                    .map_or(QtestError::Closed, CloseReason::to_error));
            }
            rx
        };
        tracing::trace!(command = %codec::command_for_error(line), "qtest command sent");

        match tokio::time::timeout_at(deadline, reply).await {
            Ok(Ok(reply)) => {
                tracing::trace!(%reply, "qtest reply");
                Ok(reply)
            }
            // The sender was dropped: the connection ended.
            Ok(Err(_)) => Err(self
                .shared
                .lock()
                .closed
                .as_ref()
                .map_or(QtestError::Closed, CloseReason::to_error)),
            // Our slot stays in `pending`; the reader drops the late reply.
            Err(_) => Err(timed_out()),
        }
    }
}

/// Background task: reads lines from QEMU, collects IRQ notifications and
/// hands every other line to the oldest command in flight.
async fn read_loop(read_half: OwnedReadHalf, shared: Arc<Shared>) {
    let mut reader = BufReader::new(read_half);
    let mut buf = Vec::new();
    let reason = loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) => break CloseReason::Closed,
            Ok(_) => {}
            Err(e) => break CloseReason::from_io(&e),
        }
        if buf.last() != Some(&b'\n') {
            tracing::debug!(
                partial = %String::from_utf8_lossy(&buf),
                "qtest: connection closed in the middle of a line"
            );
            break CloseReason::Closed;
        }
        buf.pop();
        let line = String::from_utf8_lossy(&buf);
        match codec::classify(&line) {
            Incoming::Irq(event) => {
                tracing::trace!(?event, "qtest IRQ");
                {
                    let mut state = shared.lock();
                    state.irq_levels.insert(event.line, event.raised);
                    state.irq_events.push_back(event);
                }
                shared.irq_notify.notify_waiters();
            }
            Incoming::BadIrq => {
                tracing::warn!(%line, "qtest: ignoring malformed IRQ notification");
            }
            Incoming::Reply => {
                let slot = shared.lock().pending.pop_front();
                match slot {
                    Some(tx) => {
                        if tx.send(line.into_owned()).is_err() {
                            tracing::debug!("qtest: discarding the reply to a timed-out command");
                        }
                    }
                    None => {
                        tracing::warn!(%line, "qtest: ignoring a line that answers no command");
                    }
                }
            }
        }
    };
    tracing::debug!(?reason, "qtest: connection ended");
    shared.close(reason);
}

/// Background task: writes whole command lines in order.
async fn write_loop(
    mut write_half: OwnedWriteHalf,
    mut lines: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    while let Some(line) = lines.recv().await {
        if let Err(e) = write_half.write_all(&line).await {
            tracing::debug!(error = %e, "qtest: write failed");
            shared.close(CloseReason::from_io(&e));
            return;
        }
    }
}
