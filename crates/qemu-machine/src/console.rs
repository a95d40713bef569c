//! The guest console: one end of a socketpair whose other end is QEMU's `console`
//! chardev.
//!
//! A task drains it from launch until QEMU closes it, whether or not anyone reads:
//! a console nobody drains fills its socket buffer, and then QEMU blocks writing to
//! it (and with it the guest). What is read goes to an optional log file and to a
//! bounded in-memory buffer, which keeps the most recent output. Readers consume
//! whole lines from that buffer, each reader call advancing one shared cursor, and
//! are woken by a [`Notify`] when data arrives; nothing polls.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::AsFd;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::error::{MachineError, Result};

/// The read side's state, shared between the drain task and readers.
#[derive(Debug)]
struct Buffer {
    /// The most recent output, at most `capacity` bytes.
    ring: VecDeque<u8>,
    capacity: usize,
    /// Absolute stream offset of `ring[0]`.
    start: u64,
    /// Absolute offset of the next unread byte (the readers' cursor).
    read_pos: u64,
    /// Offset up to which the unread bytes are known to hold no newline.
    scanned: u64,
    /// True once QEMU closed its end.
    eof: bool,
    /// Set when a reader first finds that output it had not read was discarded.
    lost_warned: bool,
    /// Set when a partial line was consumed by a pattern match: if only its line
    /// terminator follows, that terminator ends the consumed line, not a new one.
    after_partial: bool,
}

impl Buffer {
    fn end(&self) -> u64 {
        self.start + self.ring.len() as u64
    }

    fn push(&mut self, data: &[u8]) {
        let new_end = self.end() + data.len() as u64;
        if data.len() >= self.capacity {
            self.ring.clear();
            self.ring.extend(&data[data.len() - self.capacity..]);
            self.start = new_end - self.capacity as u64;
            return;
        }
        let overflow = (self.ring.len() + data.len()).saturating_sub(self.capacity);
        self.ring.drain(..overflow);
        self.start += overflow as u64;
        self.ring.extend(data);
    }

    /// Move the cursor past output that was discarded before anyone read it.
    fn catch_up(&mut self) {
        if self.read_pos < self.start {
            if !self.lost_warned {
                self.lost_warned = true;
                warn!(
                    "{} bytes of console output were discarded before they were read (the buffer keeps {} bytes)",
                    self.start - self.read_pos,
                    self.capacity
                );
            }
            self.read_pos = self.start;
        }
        self.scanned = self.scanned.max(self.read_pos);
    }

    fn slice(&self, from: u64, to: u64) -> Vec<u8> {
        let a = (from - self.start) as usize;
        let b = (to - self.start) as usize;
        self.ring.range(a..b).copied().collect()
    }

    /// The next complete line (without its `\n` or `\r\n`), or at end of file the
    /// unterminated rest.
    fn next_line(&mut self) -> Option<String> {
        loop {
            let line = self.next_line_raw()?;
            let continues_partial = std::mem::take(&mut self.after_partial);
            if !(continues_partial && line.is_empty()) {
                return Some(line);
            }
        }
    }

    fn next_line_raw(&mut self) -> Option<String> {
        self.catch_up();
        let from = (self.scanned - self.start) as usize;
        let newline = self.ring.range(from..).position(|&b| b == b'\n');
        match newline {
            Some(i) => {
                let nl = self.scanned + i as u64;
                let line = self.slice(self.read_pos, nl);
                self.read_pos = nl + 1;
                self.scanned = self.read_pos;
                Some(line_to_string(line))
            }
            None => {
                self.scanned = self.end();
                if self.eof && self.read_pos < self.end() {
                    let rest = self.slice(self.read_pos, self.end());
                    self.read_pos = self.end();
                    self.scanned = self.read_pos;
                    Some(line_to_string(rest))
                } else {
                    None
                }
            }
        }
    }

    /// The unterminated rest of the output (when no complete line is unread),
    /// consumed if it contains `pattern`: prompts such as `login: ` end no line.
    fn take_partial_matching(&mut self, pattern: &str) -> Option<String> {
        self.catch_up();
        let rest = self.slice(self.read_pos, self.end());
        if rest.contains(&b'\n') {
            return None;
        }
        let text = line_to_string(rest);
        if !text.is_empty() && text.contains(pattern) {
            self.read_pos = self.end();
            self.scanned = self.read_pos;
            self.after_partial = true;
            Some(text)
        } else {
            None
        }
    }
}

fn line_to_string(mut line: Vec<u8>) -> String {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8_lossy(&line).into_owned()
}

#[derive(Debug)]
struct Shared {
    buffer: Mutex<Buffer>,
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The machine's console.
#[derive(Debug)]
pub(crate) struct Console {
    shared: Arc<Shared>,
    stream: Arc<UnixStream>,
    drain: Mutex<Option<JoinHandle<()>>>,
}

impl Console {
    /// Start draining `ours` (our end of the console socketpair) into a buffer of
    /// `capacity` bytes and, if given, `log`.
    pub(crate) fn start(
        ours: std::os::unix::net::UnixStream,
        log: Option<File>,
        capacity: usize,
        label: String,
    ) -> io::Result<Console> {
        ours.set_nonblocking(true)?;
        let stream = Arc::new(UnixStream::from_std(ours)?);
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer {
                ring: VecDeque::new(),
                capacity,
                start: 0,
                read_pos: 0,
                scanned: 0,
                eof: false,
                lost_warned: false,
                after_partial: false,
            }),
            changed: Notify::new(),
        });
        let drain = tokio::spawn(drain(stream.clone(), shared.clone(), log, label));
        Ok(Console {
            shared,
            stream,
            drain: Mutex::new(Some(drain)),
        })
    }

    /// Everything kept in memory (the last `capacity` bytes of output).
    pub(crate) fn output(&self) -> String {
        let b = self.shared.lock();
        let (a, c) = b.ring.as_slices();
        let mut v = Vec::with_capacity(b.ring.len());
        v.extend_from_slice(a);
        v.extend_from_slice(c);
        String::from_utf8_lossy(&v).into_owned()
    }

    /// Wait until `take` finds something in the buffer, the console closes, or the
    /// deadline passes.
    async fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &dyn Fn() -> String,
        mut take: impl FnMut(&mut Buffer) -> Option<T>,
    ) -> Result<T> {
        if self.shared.lock().capacity == 0 {
            return Err(MachineError::InvalidConfig(format!(
                "cannot wait for {}: the console buffer size is 0, so no output is kept",
                what()
            )));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let mut notified = pin!(self.shared.changed.notified());
            notified.as_mut().enable();
            {
                let mut b = self.shared.lock();
                if let Some(found) = take(&mut b) {
                    return Ok(found);
                }
                if b.eof {
                    return Err(MachineError::ConsoleClosed {
                        waiting_for: what(),
                    });
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(MachineError::Timeout {
                    what: what(),
                    timeout,
                });
            }
        }
    }

    /// The next line of output not yet consumed.
    pub(crate) async fn read_line(&self, timeout: Duration) -> Result<String> {
        self.wait_for(timeout, &|| "a line on the console".to_owned(), |b| {
            b.next_line()
        })
        .await
    }

    /// Consume lines until one contains `pattern`, and return it.
    pub(crate) async fn wait_for_pattern(
        &self,
        pattern: &str,
        timeout: Duration,
    ) -> Result<String> {
        let what = || format!("{pattern:?} on the console");
        self.wait_for(timeout, &what, |b| {
            while let Some(line) = b.next_line() {
                if line.contains(pattern) {
                    return Some(line);
                }
            }
            b.take_partial_matching(pattern)
        })
        .await
    }

    /// Write to the guest's console input. Cancel-safe in that dropping the future
    /// stops writing; a part of `data` may have been sent.
    pub(crate) async fn write(&self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let sent = self
                .stream
                .async_io(Interest::WRITABLE, || {
                    // send(MSG_NOSIGNAL): a closed peer is an error, not a SIGPIPE.
                    rustix::net::send(self.stream.as_fd(), data, rustix::net::SendFlags::NOSIGNAL)
                        .map_err(io::Error::from)
                })
                .await
                .map_err(|e| MachineError::io("writing to the console", e))?;
            if sent == 0 {
                return Err(MachineError::io(
                    "writing to the console",
                    io::ErrorKind::WriteZero.into(),
                ));
            }
            data = &data[sent..];
        }
        Ok(())
    }

    /// After QEMU exited: let the drain task read what is left (it ends at EOF),
    /// giving up after `timeout`.
    pub(crate) async fn finish(&self, timeout: Duration) {
        let task = self.drain.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut task) = task {
            if tokio::time::timeout(timeout, &mut task).await.is_err() {
                debug!(
                    "the console did not reach end-of-file within {timeout:?}; stopped draining it"
                );
                task.abort();
            }
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Some(task) = self.drain.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

async fn drain(stream: Arc<UnixStream>, shared: Arc<Shared>, mut log: Option<File>, label: String) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(f) = &mut log {
                    if let Err(e) = f.write_all(&buf[..n]) {
                        warn!(name = %label, "stopped writing the console log: {e}");
                        log = None;
                    }
                }
                shared.lock().push(&buf[..n]);
                shared.changed.notify_waiters();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = stream.readable().await {
                    warn!(name = %label, "stopped draining the console: {e}");
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // How a peer that exits with unread input hangs up.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => {
                warn!(name = %label, "stopped draining the console: {e}");
                break;
            }
        }
    }
    debug!(name = %label, "console closed");
    shared.lock().eof = true;
    shared.changed.notify_waiters();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(capacity: usize) -> Buffer {
        Buffer {
            ring: VecDeque::new(),
            capacity,
            start: 0,
            read_pos: 0,
            scanned: 0,
            eof: false,
            lost_warned: false,
            after_partial: false,
        }
    }

    #[test]
    fn lines_split_across_pushes() {
        let mut b = buffer(1024);
        b.push(b"hel");
        assert_eq!(b.next_line(), None);
        b.push(b"lo\r\nwor");
        assert_eq!(b.next_line().as_deref(), Some("hello"));
        assert_eq!(b.next_line(), None);
        b.push(b"ld\n\n");
        assert_eq!(b.next_line().as_deref(), Some("world"));
        assert_eq!(b.next_line().as_deref(), Some(""));
        b.push(b"tail");
        assert_eq!(b.next_line(), None);
        b.eof = true;
        assert_eq!(b.next_line().as_deref(), Some("tail"));
        assert_eq!(b.next_line(), None);
    }

    #[test]
    fn the_buffer_keeps_the_most_recent_output() {
        let mut b = buffer(8);
        b.push(b"0123456789\nab");
        assert_eq!(b.ring.iter().copied().collect::<Vec<_>>(), b"56789\nab");
        assert_eq!(b.start, 5);
        assert_eq!(b.next_line().as_deref(), Some("56789"));
        b.push(b"cd");
        b.push(b"efghij\n");
        // "ab" and "c" were discarded before anyone read them.
        assert_eq!(b.next_line().as_deref(), Some("defghij"));
        assert_eq!(b.end(), 22);
        assert_eq!(b.next_line(), None);
    }

    #[test]
    fn partial_lines_match_prompts() {
        let mut b = buffer(64);
        b.push(b"boot\nlogin: ");
        assert_eq!(b.take_partial_matching("login:"), None); // "boot\n" is unread
        assert_eq!(b.next_line().as_deref(), Some("boot"));
        assert_eq!(
            b.take_partial_matching("login:").as_deref(),
            Some("login: ")
        );
        b.push(b"root\n");
        assert_eq!(b.next_line().as_deref(), Some("root"));
    }

    #[test]
    fn the_terminator_of_a_matched_partial_line_is_not_a_new_line() {
        let mut b = buffer(64);
        b.push(b"Hello BIOS");
        assert_eq!(
            b.take_partial_matching("BIOS").as_deref(),
            Some("Hello BIOS")
        );
        b.push(b"\r\nsecond line\r\n\r\n");
        assert_eq!(b.next_line().as_deref(), Some("second line"));
        // A real empty line later is still returned.
        assert_eq!(b.next_line().as_deref(), Some(""));
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let mut b = buffer(0);
        b.push(b"abc\n");
        assert_eq!(b.next_line(), None);
        assert_eq!(b.end(), 4);
    }
}
