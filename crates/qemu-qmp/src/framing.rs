//! Incremental decoding of a QMP JSON stream into messages.
//!
//! QMP peers send JSON objects back to back, and the framing varies:
//!
//! * QEMU ends every message with `\r\n`;
//! * monitors created with `pretty=on` send multi-line JSON;
//! * some clients (e.g. Python's `qemu.qmp`) send objects with no trailing
//!   newline at all;
//! * the guest agent may send a `0xFF` byte before a message.
//!
//! Bytes arrive in arbitrary chunks, so a message may be split over several
//! reads and one read may hold several messages. [`Decoder`] handles all of
//! these while touching each byte as little as possible: in the common case
//! (one message per line) every byte is seen only by `memchr` and by a
//! single `serde_json` parse.
//!
//! # How it works
//!
//! * **Newline path.** The decoder searches for `'\n'` (never searching the
//!   same bytes twice) and, when it finds one, parses the buffered bytes up
//!   to and including it. The first JSON value found is the message; bytes
//!   after it stay buffered for the next call, so several messages on one
//!   line work.
//! * **Scanner.** If that parse runs out of input (the message spans several
//!   lines), or if the caller is idle (no more bytes are coming for now) and
//!   the buffered tail could end a message, or if more than the size limit
//!   is buffered, an incremental structural scanner finds where the
//!   top-level value ends, respecting strings and escapes. It resumes where
//!   it stopped, so it never scans a byte twice for one message.
//!
//! # Single-quoted strings
//!
//! QEMU's JSON parser accepts strings in single quotes as well, as an
//! extension, and scripts (and QEMU's own `qmp-shell` users) send them:
//! `{'execute': 'query-status'}`. Inside one, `"` needs no escape and `\'`
//! is an apostrophe; every other escape is JSON's. QEMU also takes `\'` in
//! a double-quoted string. The decoder accepts all of these where QEMU
//! does, at no cost to standard JSON: only when the JSON parser fails at an
//! apostrophe is the message rewritten as standard JSON (the strings
//! requoted, their contents unchanged) and parsed again. The scanner knows
//! both kinds of string.

mod probe;

use std::fmt;

use memchr::{memchr, memchr2, memchr3};
use serde_json::error::Category;
use serde_json::Value;

use crate::message::Event;

/// Default limit on the size of a single message, in bytes (10 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 10 * 1024 * 1024;

/// A JSON object, the shape of every QMP message.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// Spare capacity guaranteed by [`Decoder::buffer_mut`].
const MIN_SPARE: usize = 64 * 1024;

/// When the buffer is empty and its capacity exceeds this, it is shrunk so
/// that one huge message does not pin memory for the rest of a session.
const SHRINK_THRESHOLD: usize = 4 * 1024 * 1024;

/// Maximum number of bytes of the offending input quoted in errors.
const EXCERPT_LEN: usize = 200;

/// How many trailing whitespace bytes the idle heuristic looks through
/// before giving up and simply running the scanner.
const TAIL_LOOKBACK: usize = 64;

/// A message as a client's reader gets it ([`Decoder::decode_message`]).
pub(crate) enum Decoded {
    /// An event, parsed when first asked.
    Event(Event),
    /// Any other message.
    Object(JsonObject),
}

/// Errors produced while decoding a QMP stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A message (complete or still incomplete) is longer than the limit.
    #[error(
        "QMP message exceeds the size limit: at least {size} bytes buffered, limit is {limit} bytes"
    )]
    TooLarge {
        /// Size of the message, or of the incomplete message buffered so far.
        size: usize,
        /// The configured limit ([`Decoder::max_message_size`]).
        limit: usize,
    },
    /// Bytes that are not valid JSON.
    #[error("malformed JSON in QMP stream: {source}; input starts with \"{excerpt}\"")]
    #[non_exhaustive]
    Malformed {
        /// The JSON parser's error.
        source: serde_json::Error,
        /// The start of the offending bytes (at most about 200 characters),
        /// lossily decoded as UTF-8 and escaped.
        excerpt: String,
        /// Where the parser stopped: the offset, from the start of the
        /// offending bytes, of the byte it could not take (their length if
        /// they ended too soon).
        offset: usize,
        /// The raw bytes of the token the parser stopped in, delimited as
        /// QEMU's JSON lexer delimits tokens, so that a server can word the
        /// error as QEMU does: a bare word (`[a-z]+`) that holds or ends at
        /// `offset`; a string, from its opening quote (`"` or `'`) up to and
        /// including the byte at `offset`; a number, from its start up to
        /// and including the byte at `offset`; otherwise the one byte at
        /// `offset` (none at the end of the input).
        token: Vec<u8>,
    },
    /// Valid JSON that is not an object.
    #[error("QMP message is a JSON {kind}, not an object: \"{excerpt}\"")]
    NotAnObject {
        /// The kind of JSON value received: `"array"`, `"string"`,
        /// `"number"`, `"boolean"` or `"null"`.
        kind: &'static str,
        /// The start of the value (at most about 200 characters), lossily
        /// decoded as UTF-8 and escaped.
        excerpt: String,
    },
}

/// A decoding failure, remembered so that [`Decoder::decode`] keeps failing
/// until [`Decoder::resync`]. Lengths are relative to `Decoder::start`,
/// which does not move while a failure is recorded (compaction only drops
/// bytes before it).
#[derive(Debug, Clone, Copy)]
enum Failure {
    TooLarge { size: usize },
    Malformed { len: usize },
    NotAnObject { kind: &'static str, len: usize },
}

/// Incremental state of the structural scanner for the current message.
#[derive(Debug, Default, Clone, Copy)]
struct Scanner {
    /// The scanner has been initialised for the message at `start`.
    active: bool,
    /// Absolute index of the next byte to scan.
    pos: usize,
    /// Nesting depth of `open`/`close` brackets.
    depth: usize,
    /// Inside a string.
    in_string: bool,
    /// The quote that ends the current string: `"`, or `'` for QEMU's
    /// single-quoted strings.
    quote: u8,
    /// The previous byte was a backslash inside a string.
    escape: bool,
    /// The message is a top-level scalar (number, `true`, ...).
    scalar: bool,
    /// Opening bracket of the top-level container (`{` or `[`).
    open: u8,
    /// Closing bracket of the top-level container (`}` or `]`).
    close: u8,
    /// The newline path ran out of input for this message: it spans lines,
    /// so only the scanner is used until it ends.
    multiline: bool,
}

/// Incremental decoder for a stream of QMP messages.
///
/// Feed bytes with [`extend`](Self::extend), then call
/// [`decode`](Self::decode) until it returns `Ok(None)`. (Within the crate,
/// the readers append straight into the decoder's buffer instead, to save a
/// copy.)
///
/// ```
/// use qemu_qmp::framing::{Decoder, DEFAULT_MAX_MESSAGE_SIZE};
///
/// let mut decoder = Decoder::new(DEFAULT_MAX_MESSAGE_SIZE);
/// decoder.extend(b"{\"return\": {}}\r\n{\"event\": \"STOP\",");
/// let msg = decoder.decode(false)?.expect("a complete message");
/// assert!(msg.contains_key("return"));
/// // The second message is not complete yet.
/// assert_eq!(decoder.decode(true)?, None);
/// decoder.extend(b" \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\r\n");
/// assert_eq!(decoder.decode(false)?.expect("the event")["event"], "STOP");
/// # Ok::<(), qemu_qmp::framing::FrameError>(())
/// ```
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of the current message (bytes before it are consumed).
    start: usize,
    /// No `'\n'` lies in `start..nl_pos` (when `nl_pos >= start`).
    nl_pos: usize,
    /// Where the scanner's next `'` is. Kept across messages, like
    /// `nl_pos`, so that each byte is searched once.
    apostrophe: Apostrophe,
    scan: Scanner,
    max: usize,
    failure: Option<Failure>,
    /// Where the message `decode` returned last lies in `buf` (empty once the
    /// buffer has been compacted).
    last: std::ops::Range<usize>,
    /// Total bytes examined by the scanner (for tests of the fast path).
    #[cfg(test)]
    scanned: usize,
    /// Total bytes searched for apostrophes.
    #[cfg(test)]
    apostrophes_searched: usize,
}

/// What the scanner knows of the apostrophes ahead: with `found`, `pos` is
/// the absolute index of a `'` and none lies between where it was searched
/// from and it; without, none lies before `pos` from where it was searched
/// from (`pos` was the buffer's length then).
#[derive(Debug, Default, Clone, Copy)]
struct Apostrophe {
    pos: usize,
    found: bool,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("buffered", &self.buffered())
            .field("max_message_size", &self.max)
            .field("failed", &self.failure.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Decoder {
    /// A decoder with the [`DEFAULT_MAX_MESSAGE_SIZE`] limit.
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE_SIZE)
    }
}

impl Decoder {
    /// Creates a decoder that rejects messages longer than
    /// `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> Self {
        Decoder {
            buf: Vec::new(),
            start: 0,
            nl_pos: 0,
            apostrophe: Apostrophe::default(),
            scan: Scanner::default(),
            max: max_message_size,
            failure: None,
            last: 0..0,
            #[cfg(test)]
            scanned: 0,
            #[cfg(test)]
            apostrophes_searched: 0,
        }
    }

    /// The size limit for one message, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.max
    }

    /// Buffer to read into, for the crate's own readers: compacts
    /// already-consumed bytes when worthwhile (amortised O(1), never O(n²)),
    /// and guarantees at least 64 KiB of spare capacity. Callers append bytes
    /// (e.g. tokio's `try_read_buf(decoder.buffer_mut())`); they must not
    /// modify or remove bytes already in it. Not public: the decoder's
    /// positions index this buffer, so outside code feeds bytes with
    /// [`extend`](Self::extend).
    pub(crate) fn buffer_mut(&mut self) -> &mut Vec<u8> {
        self.compact();
        if self.buf.is_empty() && self.buf.capacity() > SHRINK_THRESHOLD {
            self.buf.shrink_to(MIN_SPARE);
        }
        self.buf.reserve(MIN_SPARE);
        &mut self.buf
    }

    /// Appends bytes to decode.
    pub fn extend(&mut self, data: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    /// True if non-whitespace bytes of an unfinished message are buffered
    /// (for "EOF in the middle of a message" errors). Call it after
    /// [`decode`](Self::decode) has returned `Ok(None)` with `idle` set:
    /// bytes of a complete message that has not been decoded yet also count.
    pub fn has_partial(&self) -> bool {
        self.unconsumed().iter().any(|&b| !is_skippable(b))
    }

    /// After a [`FrameError::Malformed`] or [`FrameError::NotAnObject`]
    /// error, drops the offending bytes so decoding can continue (used by
    /// servers, which answer a parse error and go on): discards up to and
    /// including the next `'\n'`, or everything buffered if there is none,
    /// and resets the scanning state.
    pub fn resync(&mut self) {
        self.start = match memchr(b'\n', self.unconsumed()) {
            Some(off) => self.start + off + 1,
            None => self.buf.len(),
        };
        self.nl_pos = self.start;
        self.scan = Scanner::default();
        self.failure = None;
    }

    /// Returns the next complete message, if any.
    ///
    /// `idle` is true when the caller knows no more bytes are immediately
    /// available (its last read would block, or it is at EOF). Only then are
    /// messages that are not followed by a newline looked for. (As an
    /// optimisation, an idle call looks for them only if the buffered bytes,
    /// ignoring trailing whitespace, end with a byte that can end the
    /// current message, e.g. `}` for an object; a complete message followed
    /// by part of the next one, with no newline in between, is therefore
    /// returned once that next message is complete.) Messages terminated by
    /// a newline are returned whatever `idle` is.
    ///
    /// After an error, every call returns an error until
    /// [`resync`](Self::resync) is called. [`FrameError::TooLarge`] should be
    /// treated as fatal.
    pub fn decode(&mut self, idle: bool) -> Result<Option<JsonObject>, FrameError> {
        Ok(self.decode_next(idle, false)?.map(|m| match m {
            Decoded::Object(obj) => obj,
            // Not produced without probing.
            Decoded::Event(e) => e.as_object().clone(),
        }))
    }

    /// [`decode`](Self::decode) for a client's reader: an event comes as an
    /// [`Event`] that keeps its text and is parsed only when asked (see the
    /// `probe` module), anything else as an object.
    pub(crate) fn decode_message(&mut self, idle: bool) -> Result<Option<Decoded>, FrameError> {
        self.decode_next(idle, true)
    }

    fn decode_next(&mut self, idle: bool, probe: bool) -> Result<Option<Decoded>, FrameError> {
        if let Some(failure) = self.failure {
            return Err(self.make_error(failure, None));
        }
        match self.decode_inner(idle, probe) {
            Ok(msg) => Ok(msg),
            Err((failure, source)) => {
                self.failure = Some(failure);
                Err(self.make_error(failure, source))
            }
        }
    }

    /// The bytes not consumed yet.
    fn unconsumed(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or(&[])
    }

    fn decode_inner(
        &mut self,
        idle: bool,
        probe: bool,
    ) -> Result<Option<Decoded>, (Failure, Option<serde_json::Error>)> {
        let len = self.buf.len();
        if self.start > len || self.nl_pos > len || self.scan.pos > len {
            // The caller shrank the buffer it got from `buffer_mut`, which it
            // must not do; recover instead of indexing out of bounds.
            self.start = self.start.min(len);
            self.nl_pos = self.start;
            self.apostrophe = Apostrophe::default();
            self.scan = Scanner::default();
        }
        if !self.scan.active {
            // 1. Skip whitespace and 0xFF between messages.
            match self.buf[self.start..]
                .iter()
                .position(|&b| !is_skippable(b))
            {
                Some(off) => self.start += off,
                None => {
                    // Everything consumed: reset for free.
                    self.buf.clear();
                    self.start = 0;
                    self.nl_pos = 0;
                    self.apostrophe = Apostrophe::default();
                    return Ok(None);
                }
            }
            if !can_start_value(self.buf[self.start]) {
                let rest = &self.buf[self.start..];
                let line = memchr(b'\n', rest).unwrap_or(rest.len());
                let err = parse_message(&rest[..line.max(1)]).err();
                return Err((Failure::Malformed { len: line.max(1) }, err));
            }
        }
        let start = self.start;
        if self.nl_pos < start {
            self.nl_pos = start;
        }

        // 2. Newline path.
        if !self.scan.multiline {
            match memchr(b'\n', &self.buf[self.nl_pos..]) {
                Some(off) => {
                    // Keep nl_pos at the newline: the rest of the line may
                    // hold further messages that end at the same newline.
                    let nl = self.nl_pos + off;
                    self.nl_pos = nl;
                    if probe {
                        if let Some(event) = probe::probe_event(&self.buf[start..=nl]) {
                            return self.finish_event(event);
                        }
                    }
                    match parse_message(&self.buf[start..=nl]) {
                        Ok((value, used)) => return self.finish(value, used),
                        Err(e) if e.classify() == Category::Eof => self.scan.multiline = true,
                        Err(e) => {
                            return Err((
                                Failure::Malformed {
                                    len: nl + 1 - start,
                                },
                                Some(e),
                            ))
                        }
                    }
                }
                None => self.nl_pos = len,
            }
        }

        // 3. Scanner.
        let pending = len - start;
        let over_limit = pending > self.max;
        if !(self.scan.multiline || over_limit || (idle && self.tail_may_end_message())) {
            return Ok(None);
        }
        match self.run_scanner() {
            Some(end) => {
                let size = end - start;
                if size > self.max {
                    return Err((Failure::TooLarge { size }, None));
                }
                if probe {
                    if let Some(event) = probe::probe_event(&self.buf[start..end]) {
                        return self.finish_event(event);
                    }
                }
                match parse_message(&self.buf[start..end]) {
                    Ok((value, used)) => self.finish(value, used),
                    Err(e) => Err((Failure::Malformed { len: size }, Some(e))),
                }
            }
            // 4. Size cap for an incomplete message.
            None if over_limit => Err((Failure::TooLarge { size: pending }, None)),
            None => Ok(None),
        }
    }

    /// Accepts a parsed value of `used` bytes starting at `start`.
    fn finish(
        &mut self,
        value: Value,
        used: usize,
    ) -> Result<Option<Decoded>, (Failure, Option<serde_json::Error>)> {
        if used > self.max {
            return Err((Failure::TooLarge { size: used }, None));
        }
        match value {
            Value::Object(map) => {
                self.last = self.start..self.start + used;
                self.start += used;
                self.scan = Scanner::default();
                Ok(Some(Decoded::Object(map)))
            }
            other => Err((
                Failure::NotAnObject {
                    kind: kind_of(&other),
                    len: used,
                },
                None,
            )),
        }
    }

    /// Accepts an event the probe found at `start`.
    fn finish_event(
        &mut self,
        event: probe::ProbedEvent,
    ) -> Result<Option<Decoded>, (Failure, Option<serde_json::Error>)> {
        let used = event.len;
        if used > self.max {
            return Err((Failure::TooLarge { size: used }, None));
        }
        let text = &self.buf[self.start..self.start + used];
        let e = Event::from_wire(event.name, event.timestamp, text);
        self.last = self.start..self.start + used;
        self.start += used;
        self.scan = Scanner::default();
        Ok(Some(Decoded::Event(e)))
    }

    /// Whether the buffered bytes, ignoring trailing whitespace, end with a
    /// byte that could end the current top-level value. Used to avoid
    /// scanning on idle calls when the message cannot be complete yet.
    fn tail_may_end_message(&self) -> bool {
        let want = match self.buf[self.start] {
            b'{' => b'}',
            b'[' => b']',
            b'"' => b'"',
            b'\'' => b'\'',
            _ => return true,
        };
        let tail = &self.buf[self.start..];
        for (i, &b) in tail.iter().rev().enumerate() {
            if i >= TAIL_LOOKBACK {
                return true;
            }
            if !is_skippable(b) {
                return b == want;
            }
        }
        false
    }

    /// Advances the structural scanner over the new bytes. Returns the
    /// absolute end (exclusive) of the top-level value at `start`, if it is
    /// complete.
    fn run_scanner(&mut self) -> Option<usize> {
        let buf = &self.buf[..];
        let len = buf.len();
        let s = &mut self.scan;
        let apostrophe = &mut self.apostrophe;
        #[cfg(test)]
        let mut searched = 0;
        if !s.active {
            *s = Scanner {
                active: true,
                pos: self.start + 1,
                multiline: s.multiline,
                ..Scanner::default()
            };
            match buf.get(self.start) {
                Some(b'{') => {
                    s.open = b'{';
                    s.close = b'}';
                    s.depth = 1;
                }
                Some(b'[') => {
                    s.open = b'[';
                    s.close = b']';
                    s.depth = 1;
                }
                Some(&q @ (b'"' | b'\'')) => {
                    s.in_string = true;
                    s.quote = q;
                }
                _ => s.scalar = true,
            }
        }
        #[cfg(test)]
        let begin = s.pos;
        let mut i = s.pos;
        let end = if s.scalar {
            // A scalar ends at the first byte serde accepts after one.
            match buf[i..].iter().position(|&b| is_scalar_delimiter(b)) {
                Some(off) => {
                    i += off;
                    Some(i)
                }
                None => {
                    i = len;
                    None
                }
            }
        } else {
            // Only quotes, `\` and the top-level bracket pair matter: other
            // brackets cannot close the top-level value in valid JSON, and
            // invalid JSON is reported by serde once the end is found.
            loop {
                if i >= len {
                    break None;
                }
                if s.in_string {
                    if s.escape {
                        s.escape = false;
                        i += 1;
                        continue;
                    }
                    match memchr2(s.quote, b'\\', &buf[i..]) {
                        None => {
                            i = len;
                            break None;
                        }
                        Some(off) => {
                            let j = i + off;
                            i = j + 1;
                            if buf[j] == b'\\' {
                                s.escape = true;
                            } else {
                                s.in_string = false;
                                if s.depth == 0 {
                                    break Some(i);
                                }
                            }
                        }
                    }
                } else {
                    // A single-quoted string may start before the next `"`
                    // or bracket.
                    let sq = next_apostrophe(
                        apostrophe,
                        buf,
                        i,
                        #[cfg(test)]
                        &mut searched,
                    );
                    match memchr3(b'"', s.open, s.close, &buf[i..sq]) {
                        None if sq < len => {
                            i = sq + 1;
                            s.in_string = true;
                            s.quote = b'\'';
                        }
                        None => {
                            i = len;
                            break None;
                        }
                        Some(off) => {
                            let j = i + off;
                            i = j + 1;
                            let b = buf[j];
                            if b == b'"' {
                                s.in_string = true;
                                s.quote = b'"';
                            } else if b == s.open {
                                s.depth += 1;
                            } else {
                                s.depth = s.depth.saturating_sub(1);
                                if s.depth == 0 {
                                    break Some(i);
                                }
                            }
                        }
                    }
                }
            }
        };
        s.pos = i;
        #[cfg(test)]
        {
            self.scanned += i - begin;
            self.apostrophes_searched += searched;
        }
        end
    }

    /// Drops consumed bytes when that costs no more than the bytes consumed
    /// since the last compaction (amortised O(1) per byte).
    /// The bytes of the message [`decode`](Self::decode) returned last, as
    /// received; empty once more bytes have been fed.
    pub(crate) fn last_message(&self) -> &[u8] {
        self.buf.get(self.last.clone()).unwrap_or_default()
    }

    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        let remaining = self.buf.len() - self.start;
        if remaining == 0 {
            self.buf.clear();
        } else if self.start >= remaining {
            self.buf.drain(..self.start);
        } else {
            return;
        }
        let shift = self.start;
        self.start = 0;
        self.last = 0..0;
        self.nl_pos = self.nl_pos.saturating_sub(shift);
        self.scan.pos = self.scan.pos.saturating_sub(shift);
        self.apostrophe.pos = self.apostrophe.pos.saturating_sub(shift);
    }

    fn make_error(&self, failure: Failure, source: Option<serde_json::Error>) -> FrameError {
        let slice = |len: usize| {
            let end = self.start.saturating_add(len).min(self.buf.len());
            self.buf.get(self.start..end).unwrap_or(&[])
        };
        match failure {
            Failure::TooLarge { size } => FrameError::TooLarge {
                size,
                limit: self.max,
            },
            Failure::Malformed { len } => {
                let bytes = slice(len);
                // Re-parsing the same bytes reproduces the same error, and
                // tells where it is.
                let (source, offset) = locate_failure(bytes).unwrap_or_else(|| {
                    let e = source.unwrap_or_else(|| {
                        <serde_json::Error as serde::de::Error>::custom("malformed JSON")
                    });
                    (e, 0)
                });
                FrameError::Malformed {
                    source,
                    excerpt: excerpt(bytes),
                    offset,
                    token: bytes[token_at(bytes, offset)].to_vec(),
                }
            }
            Failure::NotAnObject { kind, len } => FrameError::NotAnObject {
                kind,
                excerpt: excerpt(slice(len)),
            },
        }
    }
}

/// The index of the next `'` at or after `i` in `buf`, or `buf.len()`.
/// Remembers what it found, so that each byte is searched once however many
/// double-quoted strings (whose apostrophes do not count) and messages the
/// scanner goes through.
fn next_apostrophe(
    a: &mut Apostrophe,
    buf: &[u8],
    i: usize,
    #[cfg(test)] searched: &mut usize,
) -> usize {
    if a.found && a.pos >= i {
        return a.pos;
    }
    // No `'` lies before `pos` when it was not found.
    let from = if a.found { i } else { a.pos.max(i) };
    match memchr(b'\'', &buf[from..]) {
        Some(off) => {
            a.pos = from + off;
            a.found = true;
        }
        None => {
            a.pos = buf.len();
            a.found = false;
        }
    }
    #[cfg(test)]
    {
        *searched += a.pos - from;
    }
    a.pos
}

/// Parses the first JSON value in `bytes` as QEMU does, returning it and the
/// number of bytes it spans: standard JSON, or with QEMU's single-quoted
/// strings (see the [module documentation](self)), which are tried only
/// when standard JSON fails at an apostrophe.
fn parse_message(bytes: &[u8]) -> Result<(Value, usize), serde_json::Error> {
    match parse_first(bytes) {
        Err(e) if fails_at_apostrophe(bytes, &e) => parse_single_quoted(bytes).map_err(|(e, _)| e),
        r => r,
    }
}

/// Where [`parse_message`] fails on `bytes`: the parser's error and the
/// offset in `bytes` of the byte it stopped at. `None` if it does not fail.
fn locate_failure(bytes: &[u8]) -> Option<(serde_json::Error, usize)> {
    match parse_first(bytes) {
        Ok(_) => None,
        Err(e) if fails_at_apostrophe(bytes, &e) => parse_single_quoted(bytes).err(),
        Err(e) => {
            let offset = error_offset(bytes, &e);
            Some((e, offset))
        }
    }
}

fn fails_at_apostrophe(bytes: &[u8], e: &serde_json::Error) -> bool {
    e.classify() == Category::Syntax && bytes.get(error_offset(bytes, e)) == Some(&b'\'')
}

/// [`parse_first`] for a value with single-quoted strings: rewrites it as
/// standard JSON and parses that. Errors come with the offset in `bytes` of
/// the byte the parser stopped at.
fn parse_single_quoted(bytes: &[u8]) -> Result<(Value, usize), (serde_json::Error, usize)> {
    let mut json = Vec::with_capacity(bytes.len() + 16);
    let end = requote(bytes, &mut json, usize::MAX);
    match parse_first(&json) {
        Ok((value, used)) if used == json.len() => Ok((value, end)),
        Ok((value, used)) => Ok((value, original_offset(bytes, used))),
        Err(e) => {
            let offset = original_offset(bytes, error_offset(&json, &e));
            Err((e, offset))
        }
    }
}

/// The offset in `bytes` that became offset `rewritten` of its
/// [`requote`]d form.
fn original_offset(bytes: &[u8], rewritten: usize) -> usize {
    requote(bytes, &mut Vec::new(), rewritten)
}

/// Appends to `out` the first value of `bytes` in standard JSON: strings in
/// single quotes become double-quoted (with `"` escaped and `\'`
/// unescaped), and `\'` in a double-quoted string becomes `'`; nothing else
/// changes. Stops after the value, or when `out` holds `stop` bytes or
/// more; returns how many bytes of `bytes` were used.
fn requote(bytes: &[u8], out: &mut Vec<u8>, stop: usize) -> usize {
    let mut i = 0;
    let mut depth = 0usize;
    let mut quote = None;
    while i < bytes.len() && out.len() < stop {
        let rest = &bytes[i..];
        let Some(q) = quote else {
            i += 1;
            match rest[0] {
                b @ (b'"' | b'\'') => {
                    out.push(b'"');
                    quote = Some(b);
                }
                b @ (b'{' | b'[') => {
                    depth += 1;
                    out.push(b);
                }
                b @ (b'}' | b']') => {
                    out.push(b);
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return i;
                    }
                }
                b => out.push(b),
            }
            continue;
        };
        // Inside a string: plain bytes are copied as they are.
        let run = if q == b'"' {
            memchr2(b'"', b'\\', rest)
        } else {
            memchr3(b'\'', b'"', b'\\', rest)
        }
        .unwrap_or(rest.len());
        if run > 0 {
            let take = run.min(stop - out.len());
            out.extend_from_slice(&rest[..take]);
            i += take;
            continue;
        }
        match (rest[0], rest.get(1)) {
            (b'\\', Some(b'\'')) => {
                out.push(b'\'');
                i += 2;
            }
            (b'\\', Some(&c)) => {
                if stop - out.len() < 2 {
                    // `stop` falls inside the escape, which maps one to one.
                    return i + (stop - out.len());
                }
                out.extend_from_slice(&[b'\\', c]);
                i += 2;
            }
            (b'\\', None) => {
                out.push(b'\\');
                i += 1;
            }
            (b'"', _) if q == b'\'' => {
                if stop - out.len() < 2 {
                    return i;
                }
                out.extend_from_slice(b"\\\"");
                i += 1;
            }
            _ => {
                // The closing quote.
                out.push(b'"');
                i += 1;
                quote = None;
                if depth == 0 {
                    return i;
                }
            }
        }
    }
    i
}

/// The offset in `bytes` of the byte at which parsing stopped with `e`.
fn error_offset(bytes: &[u8], e: &serde_json::Error) -> usize {
    let mut line_start = 0;
    for _ in 1..e.line() {
        match memchr(b'\n', &bytes[line_start..]) {
            Some(off) => line_start += off + 1,
            None => break,
        }
    }
    // serde_json's column counts the bytes of the line it has read.
    (line_start + e.column()).saturating_sub(1).min(bytes.len())
}

/// The token of `bytes` that the byte at `offset` belongs to, as
/// [`FrameError::Malformed::token`] describes it.
fn token_at(bytes: &[u8], offset: usize) -> std::ops::Range<usize> {
    let offset = offset.min(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
            i += 1;
            continue;
        }
        if i > offset {
            break;
        }
        let run = |from: usize, f: fn(&u8) -> bool| {
            from + bytes[from..]
                .iter()
                .position(|b| !f(b))
                .unwrap_or(bytes.len() - from)
        };
        let end = match b {
            b'"' | b'\'' => {
                // To the closing quote, past escapes.
                let mut j = i + 1;
                loop {
                    match bytes.get(j) {
                        None => break j,
                        Some(b'\\') => j += 2,
                        Some(&c) if c == b => break j + 1,
                        Some(_) => j += 1,
                    }
                }
                .min(bytes.len())
            }
            b'a'..=b'z' => run(i, u8::is_ascii_lowercase),
            b'-' | b'0'..=b'9' => run(i, |c| {
                matches!(c, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
            }),
            _ => i + 1,
        };
        let word = b.is_ascii_lowercase();
        let number = matches!(b, b'-' | b'0'..=b'9');
        if offset < end || (offset == end && (word || number)) {
            return if number || b == b'"' || b == b'\'' {
                // Up to and including the offending byte.
                i..(offset + 1).min(bytes.len())
            } else {
                i..end
            };
        }
        i = end;
    }
    offset..(offset + 1).min(bytes.len())
}

/// Parses the first JSON value in `bytes`, returning it and the number of
/// bytes it spans.
fn parse_first(bytes: &[u8]) -> Result<(Value, usize), serde_json::Error> {
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
    match stream.next() {
        Some(Ok(value)) => Ok((value, stream.byte_offset())),
        Some(Err(e)) => Err(e),
        // Only whitespace: callers never pass that, but stay total.
        None => Err(<serde_json::Error as serde::de::Error>::custom(
            "expected a JSON value",
        )),
    }
}

/// Bytes skipped between messages.
fn is_skippable(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0xFF)
}

/// Bytes that can start a JSON value.
fn can_start_value(b: u8) -> bool {
    matches!(
        b,
        b'{' | b'[' | b'"' | b'\'' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
    )
}

/// Bytes that end a top-level scalar (as serde's stream deserializer sees it).
fn is_scalar_delimiter(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | b'\r' | b'\n' | b'"' | b'[' | b']' | b'{' | b'}' | b',' | b':'
    )
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn excerpt(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(EXCERPT_LEN)];
    let mut out = String::new();
    let mut chars = 0;
    let mut truncated = cut.len() < bytes.len();
    for c in String::from_utf8_lossy(cut).chars() {
        let escaped = c.escape_debug();
        if chars + escaped.len() > EXCERPT_LEN {
            truncated = true;
            break;
        }
        chars += escaped.len();
        out.extend(escaped);
    }
    if truncated {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn obj(v: Value) -> JsonObject {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    /// Decodes everything currently decodable.
    fn drain(d: &mut Decoder, idle: bool) -> Vec<JsonObject> {
        let mut out = Vec::new();
        while let Some(m) = d.decode(idle).expect("decode error") {
            out.push(m);
        }
        out
    }

    #[test]
    fn last_message_is_the_text_of_what_decode_returned() {
        let mut d = Decoder::new(1024);
        d.extend(b"{\"b\": 1, \"a\": 2}\r\n{\"z\": [1, {\"y\": 0, \"x\": 1}]}");
        assert!(d.decode(false).unwrap().is_some());
        assert_eq!(d.last_message(), b"{\"b\": 1, \"a\": 2}");
        assert!(d.decode(true).unwrap().is_some());
        assert_eq!(d.last_message(), b"{\"z\": [1, {\"y\": 0, \"x\": 1}]}");
        // Feeding more bytes may move the buffer: the text is no longer there.
        let _ = d.buffer_mut();
        assert_eq!(d.last_message(), b"");
    }

    #[test]
    fn single_message_crlf() {
        let mut d = Decoder::new(DEFAULT_MAX_MESSAGE_SIZE);
        d.extend(b"{\"return\": {}}\r\n");
        assert_eq!(d.decode(false).unwrap(), Some(obj(json!({"return": {}}))));
        assert_eq!(d.decode(false).unwrap(), None);
        assert_eq!(d.decode(true).unwrap(), None);
        assert!(!d.has_partial());
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.scanned, 0);
    }

    #[test]
    fn many_in_one_buffer() {
        let mut d = Decoder::default();
        let mut data = Vec::new();
        for i in 0..100 {
            data.extend_from_slice(format!("{{\"id\":{i}}}\r\n").as_bytes());
        }
        d.extend(&data);
        let got = drain(&mut d, false);
        assert_eq!(got.len(), 100);
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m["id"], json!(i));
        }
        assert_eq!(d.scanned, 0);
    }

    const TWO: &[u8] = b"{\"a\":\"x}{\\\"\",\"b\":[1,{}]}\r\n{\"c\":null}\r\n";

    fn two_expected() -> Vec<JsonObject> {
        vec![
            obj(json!({"a": "x}{\"", "b": [1, {}]})),
            obj(json!({"c": null})),
        ]
    }

    #[test]
    fn split_at_every_position() {
        for k in 0..=TWO.len() {
            for idle in [false, true] {
                let mut d = Decoder::default();
                d.extend(&TWO[..k]);
                let mut got = drain(&mut d, idle);
                d.extend(&TWO[k..]);
                got.extend(drain(&mut d, idle));
                got.extend(drain(&mut d, true));
                assert_eq!(got, two_expected(), "split at {k}, idle {idle}");
                assert!(!d.has_partial());
            }
        }
    }

    #[test]
    fn byte_at_a_time_idle() {
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for &b in TWO {
            d.extend(&[b]);
            got.extend(drain(&mut d, true));
        }
        assert_eq!(got, two_expected());
        assert!(d.scanned <= TWO.len());
    }

    #[test]
    fn byte_at_a_time_not_idle() {
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for &b in TWO {
            d.extend(&[b]);
            got.extend(drain(&mut d, false));
        }
        got.extend(drain(&mut d, true));
        assert_eq!(got, two_expected());
        assert_eq!(d.scanned, 0);
    }

    #[test]
    fn pretty_multiline() {
        let v = json!({"return": [{"name": "a", "x": {"y": [1, 2, "}\n"]}}, {}]});
        let text = serde_json::to_string_pretty(&v).unwrap() + "\n";
        let mut d = Decoder::default();
        // Fed in one piece.
        d.extend(text.as_bytes());
        assert_eq!(drain(&mut d, false), vec![obj(v.clone())]);
        // Fed one byte at a time, never idle.
        let mut got = Vec::new();
        for &b in text.as_bytes() {
            d.extend(&[b]);
            got.extend(drain(&mut d, false));
        }
        assert_eq!(got, vec![obj(v.clone())]);
        // Without the final newline, idle at the end.
        let mut d = Decoder::default();
        d.extend(text.trim_end().as_bytes());
        assert_eq!(drain(&mut d, false), vec![obj(v)]);
    }

    #[test]
    fn pretty_scanner_is_incremental() {
        let v = json!({"return": (0..500).map(|i| json!({"n": i, "s": "a\"b\\c{"})).collect::<Vec<_>>()});
        let text = serde_json::to_string_pretty(&v).unwrap();
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for chunk in text.as_bytes().chunks(7) {
            d.extend(chunk);
            got.extend(drain(&mut d, true));
        }
        assert_eq!(got, vec![obj(v)]);
        assert!(d.scanned <= text.len(), "{} > {}", d.scanned, text.len());
    }

    #[test]
    fn no_trailing_newline_needs_idle() {
        let mut d = Decoder::default();
        d.extend(b"{\"execute\":\"qmp_capabilities\"}");
        assert_eq!(d.decode(false).unwrap(), None);
        assert!(d.has_partial());
        assert_eq!(
            d.decode(true).unwrap(),
            Some(obj(json!({"execute": "qmp_capabilities"})))
        );
        assert_eq!(d.decode(true).unwrap(), None);
        assert!(!d.has_partial());
    }

    #[test]
    fn no_trailing_newline_back_to_back() {
        let mut d = Decoder::default();
        d.extend(b"{\"a\":1}{\"b\":2} \r");
        assert_eq!(d.decode(false).unwrap(), None);
        assert_eq!(
            drain(&mut d, true),
            vec![obj(json!({"a": 1})), obj(json!({"b": 2}))]
        );
    }

    #[test]
    fn idle_incomplete_is_none() {
        let mut d = Decoder::default();
        d.extend(b"{\"a\":{\"b\":1}");
        assert_eq!(d.decode(true).unwrap(), None);
        assert!(d.has_partial());
        d.extend(b"}");
        assert_eq!(d.decode(true).unwrap(), Some(obj(json!({"a": {"b": 1}}))));
    }

    #[test]
    fn tricky_strings() {
        let cases = [
            r#"{"s":"}"}"#,
            r#"{"s":"{"}"#,
            r#"{"s":"\""}"#,
            r#"{"s":"\\"}"#,
            r#"{"s":"\\\""}"#,
            r#"{"s":"a\nb"}"#,
            r#"{"s":"h\u00e9llo \ud83d\ude00"}"#,
            "{\"s\":\"héllo 😀 ünïcode\"}",
            r#"{"s\"}{":"]["}"#,
        ];
        for case in cases {
            let expected: JsonObject = serde_json::from_str(case).unwrap();
            for (idle, suffix) in [(false, "\r\n"), (true, ""), (true, "\n")] {
                let mut d = Decoder::default();
                let text = format!("{case}{suffix}");
                // Byte-at-a-time to exercise escapes split across reads.
                let mut got = Vec::new();
                for &b in text.as_bytes() {
                    d.extend(&[b]);
                    got.extend(drain(&mut d, idle));
                }
                got.extend(drain(&mut d, true));
                assert_eq!(got, vec![expected.clone()], "{case:?} {suffix:?}");
            }
        }
    }

    #[test]
    fn ff_prefix_skipped() {
        let mut d = Decoder::default();
        d.extend(b"\xff{\"return\":{}}\n\xff\xff  {\"a\":1}");
        assert_eq!(
            drain(&mut d, true),
            vec![obj(json!({"return": {}})), obj(json!({"a": 1}))]
        );
        d.extend(b"\xff");
        assert!(!d.has_partial());
        assert_eq!(d.decode(true).unwrap(), None);
    }

    #[test]
    fn two_objects_one_line() {
        let mut d = Decoder::default();
        d.extend(b"{\"a\":1}{\"b\":2}\n");
        assert_eq!(d.decode(false).unwrap(), Some(obj(json!({"a": 1}))));
        assert_eq!(d.decode(false).unwrap(), Some(obj(json!({"b": 2}))));
        assert_eq!(d.decode(false).unwrap(), None);
        assert_eq!(d.scanned, 0);
    }

    #[test]
    fn too_large_complete() {
        let mut d = Decoder::new(64);
        let big = format!("{{\"a\":\"{}\"}}\r\n", "x".repeat(100));
        d.extend(big.as_bytes());
        match d.decode(false) {
            Err(FrameError::TooLarge { size, limit }) => {
                assert_eq!(limit, 64);
                assert_eq!(size, big.len() - 2);
            }
            other => panic!("unexpected {other:?}"),
        }
        // Sticky.
        assert!(matches!(d.decode(true), Err(FrameError::TooLarge { .. })));
        // Exactly at the limit is fine.
        let mut d = Decoder::new(64);
        let fits = format!("{{\"a\":\"{}\"}}\n", "x".repeat(64 - 8));
        assert_eq!(fits.len(), 65);
        d.extend(fits.as_bytes());
        assert!(d.decode(false).unwrap().is_some());
    }

    #[test]
    fn too_large_incomplete() {
        let mut d = Decoder::new(64);
        d.extend(b"{\"a\":\"");
        assert_eq!(d.decode(false).unwrap(), None);
        let mut err = None;
        for _ in 0..100 {
            d.extend(b"xxxxxxxxxx");
            match d.decode(false) {
                Ok(None) => {}
                Ok(Some(m)) => panic!("unexpected message {m:?}"),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        match err {
            Some(e @ FrameError::TooLarge { size, limit: 64 }) => {
                assert!(size > 64 && size <= 64 + 10, "size {size}");
                assert!(e.to_string().contains("exceeds the size limit"));
            }
            other => panic!("unexpected {other:?}"),
        }
        // Pretty (multi-line) incomplete message too.
        let mut d = Decoder::new(64);
        d.extend(b"{\n");
        assert_eq!(d.decode(false).unwrap(), None);
        for _ in 0..10 {
            d.extend(b"  \"key\": 1,\n");
        }
        assert!(matches!(d.decode(false), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn over_limit_buffer_of_small_messages_is_fine() {
        let mut d = Decoder::new(64);
        for _ in 0..10 {
            d.extend(b"{\"a\":1}");
        }
        let mut got = drain(&mut d, false);
        got.extend(drain(&mut d, true));
        assert_eq!(got.len(), 10);
    }

    #[test]
    fn malformed_object() {
        let mut d = Decoder::default();
        d.extend(b"{\"a\":}\n");
        match d.decode(false) {
            Err(e @ FrameError::Malformed { .. }) => {
                let FrameError::Malformed { excerpt, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(excerpt, "{\\\"a\\\":}\\n");
                let msg = e.to_string();
                assert!(msg.contains("malformed JSON"), "{msg}");
                assert!(msg.contains(excerpt.as_str()), "{msg}");
            }
            other => panic!("unexpected {other:?}"),
        }
        // Sticky, with the same message, whatever `idle` is.
        let first = d.decode(true).unwrap_err().to_string();
        assert_eq!(first, d.decode(false).unwrap_err().to_string());
    }

    #[test]
    fn malformed_garbage() {
        for input in [&b"xyz"[..], b"xyz\n", b"}", b"]\n", b",", b"\x00"] {
            let mut d = Decoder::default();
            d.extend(input);
            assert!(
                matches!(d.decode(false), Err(FrameError::Malformed { .. })),
                "{input:?}"
            );
        }
        // Malformed found by the scanner (no newline, idle).
        let mut d = Decoder::default();
        d.extend(b"{\"a\" 1}");
        assert!(matches!(d.decode(true), Err(FrameError::Malformed { .. })));
        let mut d = Decoder::default();
        d.extend(b"{\"a\":[1}");
        assert!(matches!(d.decode(true), Err(FrameError::Malformed { .. })));
    }

    /// The offset and raw token of the first error in `input`.
    fn failure(input: &[u8]) -> (usize, Vec<u8>) {
        let mut d = Decoder::default();
        d.extend(input);
        match d.decode(true) {
            Err(FrameError::Malformed { offset, token, .. }) => (offset, token),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn errors_carry_the_raw_offending_token() {
        let cases: &[(&[u8], usize, &[u8])] = &[
            (b"{this is bad}\n", 1, b"this"),
            (b"this\n", 1, b"this"),
            (b"{\"execute\": x}\n", 12, b"x"),
            // The parser stops after a word it took for `true`: the word.
            (b"{\"execute\": tru}\n", 15, b"tru"),
            (b"{\"a\": truex}\n", 10, b"truex"),
            (b"}\n", 0, b"}"),
            // A string up to where the parser stopped: its opening quote.
            (b"{\"a\" \"b\"}\n", 5, b"\""),
            (b"{\"a\": \"\\x\"}\n", 8, b"\"\\x"),
            (b"{\"a\": \"\xc0\"}\n", 7, b"\"\xc0"),
            (b"{\"a\": \"\\ud800\"}\n", 13, b"\"\\ud800\""),
            (b"{\"a\": -}\n", 7, b"-}"),
            (b"{\"a\": 01}\n", 7, b"01"),
            (b"@\n", 0, b"@"),
            (b"{\"a\": 1,\n\"b\": @}\n", 14, b"@"),
            // In single-quoted messages, offsets are in the input as sent.
            (b"{'a': 'x\"y', 'b': tru}\n", 21, b"tru"),
            (b"{'a': '\\'\"', 'b': '\\q'}\n", 20, b"'\\q"),
            (b"{\"a\": 'it\\'s' 'b'}\n", 14, b"'"),
        ];
        for (input, offset, token) in cases {
            assert_eq!(
                failure(input),
                (*offset, token.to_vec()),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn excerpt_is_bounded() {
        let mut d = Decoder::default();
        let mut bad = b"{\"a\":".to_vec();
        bad.extend_from_slice(&[b'x'; 10_000]);
        bad.push(b'\n');
        d.extend(&bad);
        match d.decode(false) {
            Err(FrameError::Malformed { excerpt, .. }) => {
                assert!(excerpt.len() <= EXCERPT_LEN + 3, "{}", excerpt.len())
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn not_an_object() {
        let cases: [(&[u8], &str); 7] = [
            (b"[1,2]\n", "array"),
            (b"42\n", "number"),
            (b"-1.5e3\r\n", "number"),
            (b"\"s\"\n", "string"),
            (b"true\n", "boolean"),
            (b"false\n", "boolean"),
            (b"null\n", "null"),
        ];
        for (input, want) in cases {
            let mut d = Decoder::default();
            d.extend(input);
            match d.decode(false) {
                Err(e @ FrameError::NotAnObject { kind, .. }) => {
                    assert_eq!(kind, want);
                    assert!(e.to_string().contains(want));
                }
                other => panic!("{input:?}: unexpected {other:?}"),
            }
        }
        // Found by the scanner.
        for (input, want) in [
            (&b"[1,2]"[..], "array"),
            (b"\"s\"", "string"),
            (b"42 ", "number"),
        ] {
            let mut d = Decoder::default();
            d.extend(input);
            assert_eq!(d.decode(false).unwrap(), None, "{input:?}");
            match d.decode(true) {
                Err(FrameError::NotAnObject { kind, .. }) => assert_eq!(kind, want),
                other => panic!("{input:?}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn resync_continues() {
        let mut d = Decoder::default();
        d.extend(b"{\"a\":}\n{\"b\":1}\n[1]\n{\"c\":2}\r\nxyz");
        assert!(matches!(d.decode(false), Err(FrameError::Malformed { .. })));
        assert!(d.decode(false).is_err());
        d.resync();
        assert_eq!(d.decode(false).unwrap(), Some(obj(json!({"b": 1}))));
        assert!(matches!(
            d.decode(false),
            Err(FrameError::NotAnObject { .. })
        ));
        d.resync();
        assert_eq!(d.decode(false).unwrap(), Some(obj(json!({"c": 2}))));
        assert!(matches!(d.decode(false), Err(FrameError::Malformed { .. })));
        d.resync();
        assert_eq!(d.buffered(), 0);
        d.extend(b"{\"d\":3}\n");
        assert_eq!(d.decode(false).unwrap(), Some(obj(json!({"d": 3}))));
    }

    #[test]
    fn compaction_keeps_data() {
        let mut stream = Vec::new();
        let n = 20_000;
        for i in 0..n {
            let pad = "p".repeat(i % 37);
            match i % 3 {
                0 => stream
                    .extend_from_slice(format!("{{\"id\":{i},\"p\":\"{pad}\"}}\r\n").as_bytes()),
                1 => stream.extend_from_slice(
                    serde_json::to_string_pretty(&json!({"id": i, "p": pad}))
                        .unwrap()
                        .as_bytes(),
                ),
                _ => {
                    stream.push(0xFF);
                    stream.extend_from_slice(format!("{{\"id\":{i},\"p\":\"{pad}\"}}").as_bytes());
                }
            }
        }
        let mut d = Decoder::default();
        let mut got = Vec::new();
        let mut max_cap = 0;
        for (k, chunk) in stream.chunks(777).enumerate() {
            let buf = d.buffer_mut();
            assert!(buf.capacity() - buf.len() >= MIN_SPARE);
            buf.extend_from_slice(chunk);
            max_cap = max_cap.max(d.buf.capacity());
            got.extend(drain(&mut d, k % 5 == 0));
        }
        got.extend(drain(&mut d, true));
        assert_eq!(got.len(), n);
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m["id"], json!(i));
            assert_eq!(m["p"], json!("p".repeat(i % 37)));
        }
        assert!(max_cap < 4 * MIN_SPARE, "buffer grew to {max_cap}");
    }

    #[test]
    fn large_single_line_uses_no_scanner() {
        let mut map = JsonObject::new();
        let mut i = 0;
        let mut size = 0;
        while size < 1024 * 1024 {
            let key = format!("key-{i}");
            let value = json!({"name": format!("v{i}"), "meta-type": "object", "members": [{"name": "x", "type": "int"}], "esc": "}\"{"});
            size += key.len() + serde_json::to_vec(&value).unwrap().len() + 4;
            map.insert(key, value);
            i += 1;
        }
        assert!(size >= 1024 * 1024);
        let mut stream = serde_json::to_vec(&map).unwrap();
        stream.extend_from_slice(b"\r\n");
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for chunk in stream.chunks(64 * 1024) {
            d.buffer_mut().extend_from_slice(chunk);
            got.extend(drain(&mut d, false));
        }
        got.extend(drain(&mut d, true));
        assert_eq!(got, vec![map]);
        assert_eq!(d.scanned, 0);
    }

    #[test]
    fn zero_limit_never_panics() {
        let mut d = Decoder::new(0);
        assert_eq!(d.max_message_size(), 0);
        d.extend(b"{}\n");
        assert!(matches!(d.decode(false), Err(FrameError::TooLarge { .. })));
        d.resync();
        assert_eq!(d.decode(true).unwrap(), None);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let mut d = Decoder::default();
        let mut s = "[".repeat(100_000);
        s.push('\n');
        d.extend(s.as_bytes());
        assert!(d.decode(true).is_err());
        let mut d = Decoder::default();
        let mut s = "{\"a\":".repeat(50_000);
        s.push_str(&"}".repeat(50_000));
        d.extend(s.as_bytes());
        assert!(d.decode(true).is_err());
    }

    // ---- single-quoted strings (QEMU's extension) ----

    /// Decodes `input` as one read, then idle: every message, or the error.
    fn decode_all(input: &[u8]) -> Result<Vec<JsonObject>, FrameError> {
        let mut d = Decoder::default();
        d.extend(input);
        let mut got = Vec::new();
        for idle in [false, true] {
            while let Some(m) = d.decode(idle)? {
                got.push(m);
            }
        }
        assert!(!d.has_partial(), "{:?}", String::from_utf8_lossy(input));
        Ok(got)
    }

    fn one(input: &[u8]) -> Value {
        match decode_all(input) {
            Ok(mut v) if v.len() == 1 => Value::Object(v.remove(0)),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn single_quoted_strings_plain() {
        for input in [
            &b"{'execute': 'query-status'}\r\n"[..],
            b"{'execute': 'query-status'}",
            b"{'execute':'query-status'}\n",
            b" \xff{ 'execute' : 'query-status' }\n",
        ] {
            assert_eq!(one(input), json!({"execute": "query-status"}));
        }
        // Mixed with double quotes, in keys and values.
        assert_eq!(
            one(b"{'execute': \"query-status\", \"id\": 'x', 'arguments': {}}\n"),
            json!({"execute": "query-status", "id": "x", "arguments": {}})
        );
        assert_eq!(one(b"{'': ''}\n"), json!({"": ""}));
    }

    #[test]
    fn single_quoted_strings_escapes() {
        assert_eq!(
            one(br#"{'a': '\n\t\r\b\f\\\/\u00e9\ud83d\ude00'}"#),
            json!({"a": "\n\t\r\u{8}\u{c}\\/é😀"})
        );
        // `\'` is an apostrophe, in both kinds of string (QEMU's extension).
        assert_eq!(one(br"{'a': 'it\'s'}"), json!({"a": "it's"}));
        assert_eq!(one(br#"{"a": "it\'s"}"#), json!({"a": "it's"}));
        assert_eq!(one(br"{'a': '\''}"), json!({"a": "'"}));
        // An escaped backslash before the closing quote ends the string.
        assert_eq!(one(br"{'a': 'x\\', 'b': 1}"), json!({"a": "x\\", "b": 1}));
        assert_eq!(one(br"{'a\\\'b': 1}"), json!({"a\\'b": 1}));
        // Non-ASCII bytes go through as they are.
        assert_eq!(one("{'é': '😀'}\n".as_bytes()), json!({"é": "😀"}));
    }

    #[test]
    fn single_quoted_strings_with_double_quotes_inside() {
        assert_eq!(one(br#"{'a': 'say "hi"'}"#), json!({"a": "say \"hi\""}));
        assert_eq!(one(br#"{'a': '"'}"#), json!({"a": "\""}));
        // `\"` is a double quote there too.
        assert_eq!(one(br#"{'a': 'x\"y'}"#), json!({"a": "x\"y"}));
        assert_eq!(one(br#"{'"': '""'}"#), json!({"\"": "\"\""}));
    }

    #[test]
    fn apostrophes_inside_double_quoted_strings_are_plain() {
        assert_eq!(one(br#"{"a": "it's"}"#), json!({"a": "it's"}));
        assert_eq!(
            one(br#"{"a": "'", "b": 'x"y', "c": "'}"}"#),
            json!({"a": "'", "b": "x\"y", "c": "'}"})
        );
        assert_eq!(one(b"{\"'\": \"'\"}\n"), json!({"'": "'"}));
    }

    #[test]
    fn single_quoted_keys_and_nesting() {
        assert_eq!(
            one(b"{'execute': 'x', 'arguments': {'list': ['a', {'b': ['c', 'd}]']}], 'n': [1, true, null]}}\n"),
            json!({"execute": "x", "arguments": {"list": ["a", {"b": ["c", "d}]"]}], "n": [1, true, null]}})
        );
        // Brackets and quotes of the other kind inside strings do not count.
        assert_eq!(
            one(b"{'a': '}', 'b': '{[\"', 'c': \"'}'\"}"),
            json!({"a": "}", "b": "{[\"", "c": "'}'"})
        );
    }

    #[test]
    fn single_quoted_messages_over_several_lines_and_reads() {
        let input = b"{'execute': 'x',\n 'id': '}\\'\"{'\n}\n{'a':\n1}{'b': 'c'}";
        let want = vec![
            obj(json!({"execute": "x", "id": "}'\"{"})),
            obj(json!({"a": 1})),
            obj(json!({"b": "c"})),
        ];
        assert_eq!(decode_all(input).unwrap(), want);
        for k in 0..=input.len() {
            assert_eq!(
                decode_chunks([&input[..k], &input[k..]]),
                want,
                "split at {k}"
            );
        }
        assert_eq!(decode_chunks(input.chunks(1)), want, "one byte at a time");
    }

    #[test]
    fn single_quoted_errors_and_non_objects() {
        match decode_all(b"'str'\n") {
            Err(FrameError::NotAnObject { kind: "string", .. }) => {}
            other => panic!("{other:?}"),
        }
        match decode_all(b"['a', 'b']") {
            Err(FrameError::NotAnObject { kind: "array", .. }) => {}
            other => panic!("{other:?}"),
        }
        for input in [
            &br"{'a': '\q'}"[..],
            b"{'a': 'tab\there'}\n",
            b"{'a' 'b'}\n",
            b"{'a': 'b',}\n",
            b"{'a': 'x'\n}}\n",
        ] {
            match decode_all(input) {
                Err(FrameError::Malformed { .. }) => {}
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
            }
        }
        // Unfinished: waits for more.
        let mut d = Decoder::default();
        d.extend(b"{'a': 'x}'\n, 'b': '{");
        assert_eq!(d.decode(true).unwrap(), None);
        assert!(d.has_partial());
        d.extend(b"\"'}\n");
        assert_eq!(
            d.decode(false).unwrap(),
            Some(obj(json!({"a": "x}", "b": "{\""})))
        );
    }

    #[test]
    fn apostrophes_are_searched_once_over_many_messages() {
        // Back to back, no newline (the scanner's path), no apostrophe at all,
        // then one far ahead of many messages.
        for tail in [&b""[..], b"{\"x\": \"'\"}"] {
            let mut stream = Vec::new();
            for i in 0..5000 {
                stream.extend_from_slice(format!("{{\"id\": {i}}}").as_bytes());
            }
            stream.extend_from_slice(tail);
            let mut d = Decoder::default();
            d.extend(&stream);
            let got = drain(&mut d, true);
            assert_eq!(got.len(), 5000 + usize::from(!tail.is_empty()));
            assert!(
                d.apostrophes_searched <= stream.len(),
                "{} > {}",
                d.apostrophes_searched,
                stream.len()
            );
        }
    }

    #[test]
    fn apostrophes_in_double_quoted_strings_keep_the_scanner_linear() {
        // Multi-line, double-quoted, full of apostrophes in strings.
        let mut msg = b"{\"a\": [".to_vec();
        for i in 0..1000 {
            msg.extend_from_slice(format!("\"it's {i}\",\n").as_bytes());
        }
        msg.extend_from_slice(b"\"end\"]}");
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for chunk in msg.chunks(100) {
            d.extend(chunk);
            got.extend(drain(&mut d, false));
        }
        got.extend(drain(&mut d, true));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["a"].as_array().unwrap().len(), 1001);
        assert!(d.scanned <= msg.len(), "{} > {}", d.scanned, msg.len());
    }

    /// QEMU 7.2's greeting, as it is on the wire.
    const GREETING: &[u8] = b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"Debian 1:7.2+dfsg-7+deb12u18+b3\"}, \"capabilities\": [\"oob\"]}}\r\n";

    fn greeting() -> JsonObject {
        serde_json::from_slice(GREETING).unwrap()
    }

    /// Feeds `chunks` the way `MessageReader` does: after each chunk, decode
    /// until nothing is left (not idle, as after a read that returned data),
    /// then once more as idle (as after the read that would block).
    fn decode_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<JsonObject> {
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for chunk in chunks {
            d.buffer_mut().extend_from_slice(chunk);
            got.extend(drain(&mut d, false));
            got.extend(drain(&mut d, true));
        }
        got.extend(drain(&mut d, true));
        assert!(!d.has_partial());
        got
    }

    #[test]
    fn greeting_split_at_every_position() {
        for k in 0..=GREETING.len() {
            let got = decode_chunks([&GREETING[..k], &GREETING[k..]]);
            assert_eq!(got, vec![greeting()], "split at {k}");
        }
        for i in 0..=GREETING.len() {
            for j in i..=GREETING.len() {
                let got = decode_chunks([&GREETING[..i], &GREETING[i..j], &GREETING[j..]]);
                assert_eq!(got, vec![greeting()], "split at {i} and {j}");
            }
        }
        let got = decode_chunks(GREETING.chunks(1));
        assert_eq!(got, vec![greeting()], "one byte at a time");
    }

    // ---- property tests ----

    fn arb_string() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            prop::collection::vec(
                prop::sample::select(vec![
                    '{', '}', '[', ']', '"', '\\', '\n', '\r', 'a', 'é', '😀', ' ', ':', ',',
                    '\u{ff}', '\''
                ]),
                0..12
            )
            .prop_map(|v| v.into_iter().collect()),
        ]
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            arb_string().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(arb_string(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_object() -> impl Strategy<Value = JsonObject> {
        prop::collection::btree_map(arb_string(), arb_value(), 0..5)
            .prop_map(|m| m.into_iter().collect())
    }

    /// Writes `v` as JSON with each string in single or double quotes, as
    /// `seed` decides, sometimes over several lines.
    fn write_mixed_quotes(out: &mut Vec<u8>, v: &Value, seed: &mut u64) {
        fn step(seed: &mut u64) -> u64 {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *seed >> 33
        }
        match v {
            Value::String(s) => {
                if step(seed).is_multiple_of(2) {
                    out.extend_from_slice(serde_json::to_string(s).unwrap().as_bytes());
                    return;
                }
                out.push(b'\'');
                for c in s.chars() {
                    match c {
                        '\'' => out.extend_from_slice(br"\'"),
                        '\\' => out.extend_from_slice(br"\\"),
                        // Sometimes escaped, as QEMU allows.
                        '"' if step(seed).is_multiple_of(2) => out.extend_from_slice(br#"\""#),
                        c if (c as u32) < 0x20 => {
                            out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
                        }
                        c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                out.push(b'\'');
            }
            Value::Array(a) => {
                out.push(b'[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(if step(seed).is_multiple_of(4) {
                            b",\n"
                        } else {
                            b", "
                        });
                    }
                    write_mixed_quotes(out, x, seed);
                }
                out.push(b']');
            }
            Value::Object(m) => {
                out.push(b'{');
                for (i, (k, x)) in m.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(if step(seed).is_multiple_of(4) {
                            b",\n"
                        } else {
                            b", "
                        });
                    }
                    write_mixed_quotes(out, &Value::String(k.clone()), seed);
                    out.extend_from_slice(b": ");
                    write_mixed_quotes(out, x, seed);
                }
                out.push(b'}');
            }
            other => out.extend_from_slice(other.to_string().as_bytes()),
        }
    }

    fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                any::<u8>(),
                prop::sample::select(b"{}[]\"'\\:,\n\r \t0123456789-tfnulrea\xff".to_vec()),
            ],
            0..400,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn greeting_in_random_chunks_is_exactly_the_greeting(
            cuts in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 0..40),
        ) {
            let mut points: BTreeMap<usize, bool> = BTreeMap::new();
            for (i, idle) in &cuts {
                *points.entry(i.index(GREETING.len() + 1)).or_insert(false) |= *idle;
            }
            points.insert(GREETING.len(), true);
            let mut d = Decoder::default();
            let mut got = Vec::new();
            let mut prev = 0;
            for (pos, idle) in points {
                d.buffer_mut().extend_from_slice(&GREETING[prev..pos]);
                prev = pos;
                while let Some(m) = d.decode(idle).map_err(|e| TestCaseError::fail(e.to_string()))? {
                    got.push(m);
                }
            }
            prop_assert_eq!(got, vec![greeting()]);
            prop_assert!(!d.has_partial());
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            data in arb_bytes(),
            cuts in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 0..30),
            limit in prop::sample::select(vec![0usize, 1, 16, 64, 1024, DEFAULT_MAX_MESSAGE_SIZE]),
        ) {
            let mut points: Vec<(usize, bool)> =
                cuts.iter().map(|(i, idle)| (i.index(data.len() + 1), *idle)).collect();
            points.push((data.len(), true));
            points.sort();
            let mut d = Decoder::new(limit);
            let mut prev = 0;
            for (pos, idle) in points {
                d.extend(&data[prev..pos]);
                prev = pos;
                for _ in 0..1000 {
                    match d.decode(idle) {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => {
                            let _ = e.to_string();
                            d.resync();
                        }
                    }
                }
                let _ = d.has_partial();
                let _ = d.buffered();
                let _ = d.buffer_mut();
            }
        }

        #[test]
        fn random_objects_in_single_quotes_roundtrip(
            msgs in prop::collection::vec((arb_object(), any::<u64>()), 1..5),
            cuts in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 0..20),
        ) {
            let mut stream = Vec::new();
            for (m, seed) in &msgs {
                let mut seed = *seed;
                write_mixed_quotes(&mut stream, &Value::Object(m.clone()), &mut seed);
                if seed.is_multiple_of(3) {
                    stream.extend_from_slice(b"\r\n");
                }
            }
            let mut points: BTreeMap<usize, bool> = BTreeMap::new();
            for (i, idle) in &cuts {
                *points.entry(i.index(stream.len() + 1)).or_insert(false) |= *idle;
            }
            points.insert(stream.len(), true);
            let mut d = Decoder::default();
            let mut got = Vec::new();
            let mut prev = 0;
            for (pos, idle) in points {
                d.extend(&stream[prev..pos]);
                prev = pos;
                while let Some(m) = d.decode(idle).map_err(|e| TestCaseError::fail(e.to_string()))? {
                    got.push(m);
                }
            }
            // Messages with no newline between them come out once the next
            // one is complete, so the last ones all arrive at the end.
            let expected: Vec<JsonObject> = msgs.into_iter().map(|(m, _)| m).collect();
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn random_objects_roundtrip(
            msgs in prop::collection::vec(
                (arb_object(), any::<bool>(), 0u8..3, 0u8..3),
                0..8,
            ),
            cuts in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 0..20),
        ) {
            let mut stream = Vec::new();
            let mut forced_idle = Vec::new();
            for (m, pretty, term, prefix) in &msgs {
                match prefix {
                    0 => {}
                    1 => stream.push(0xFF),
                    _ => stream.extend_from_slice(b" \t"),
                }
                let text = if *pretty {
                    serde_json::to_vec_pretty(m).unwrap()
                } else {
                    serde_json::to_vec(m).unwrap()
                };
                stream.extend_from_slice(&text);
                match term {
                    0 => stream.extend_from_slice(b"\r\n"),
                    1 => stream.push(b'\n'),
                    _ => forced_idle.push(stream.len()),
                }
            }
            let mut points: BTreeMap<usize, bool> = BTreeMap::new();
            for p in forced_idle {
                points.insert(p, true);
            }
            for (i, idle) in &cuts {
                *points.entry(i.index(stream.len() + 1)).or_insert(false) |= *idle;
            }
            points.insert(stream.len(), true);

            let mut d = Decoder::default();
            let mut got = Vec::new();
            let mut prev = 0;
            for (pos, idle) in points {
                d.extend(&stream[prev..pos]);
                prev = pos;
                while let Some(m) = d.decode(idle).map_err(|e| TestCaseError::fail(e.to_string()))? {
                    got.push(m);
                }
            }
            let expected: Vec<JsonObject> = msgs.into_iter().map(|(m, ..)| m).collect();
            prop_assert_eq!(got, expected);
            prop_assert!(!d.has_partial());
        }
    }
}
