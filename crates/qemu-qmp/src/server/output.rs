//! Output: buffering, deferred event floods, and the JSON QEMU would write.


use super::*;

// ---- output ---------------------------------------------------------------------

/// Output waiting to be written: bytes in `buf` from `pos`, then deferred items that
/// are turned into bytes as the buffer drains (so a flood of events does not sit in
/// memory all at once).
#[derive(Default)]
pub(super) struct Output {
    pub(super) buf: Vec<u8>,
    pub(super) pos: usize,
    pub(super) backlog: VecDeque<Deferred>,
    pub(super) backlog_bytes: usize,
    /// A close was queued: nothing more is written after it.
    pub(super) closing: bool,
    /// The close was reached: close once `buf` is written.
    pub(super) close_now: bool,
}

pub(super) enum Deferred {
    Flood { next: u64, end: u64 },
    Bytes(Vec<u8>),
    Close,
}

impl Output {
    pub(super) fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Bytes waiting, deferred bytes included (floods not counted).
    pub(super) fn buffered(&self) -> usize {
        self.pending() + self.backlog_bytes
    }

    pub(super) fn advance(&mut self, n: usize) {
        self.pos += n;
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos >= LOW_WATER && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Append output, in order after everything queued.
    pub(super) fn write_with(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        if self.closing {
            return;
        }
        if self.backlog.is_empty() {
            f(&mut self.buf);
            return;
        }
        if let Some(Deferred::Bytes(v)) = self.backlog.back_mut() {
            let before = v.len();
            f(v);
            self.backlog_bytes += v.len() - before;
            return;
        }
        let mut v = Vec::new();
        f(&mut v);
        self.backlog_bytes += v.len();
        self.backlog.push_back(Deferred::Bytes(v));
    }

    pub(super) fn flood(&mut self, n: usize) {
        if !self.closing && n > 0 {
            self.backlog.push_back(Deferred::Flood {
                next: 0,
                end: n as u64,
            });
        }
    }

    /// Close the connection after what is queued so far.
    pub(super) fn close(&mut self) {
        if !self.closing {
            self.closing = true;
            self.backlog.push_back(Deferred::Close);
        }
    }

    /// Turn deferred output into bytes while little is pending.
    pub(super) fn refill(&mut self) {
        while self.pending() < LOW_WATER {
            match self.backlog.front_mut() {
                None => return,
                Some(Deferred::Flood { next, end }) => {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default();
                    let (secs, micros) = (now.as_secs(), now.subsec_micros());
                    while *next < *end && self.buf.len() - self.pos < FLOOD_CHUNK {
                        let _ = write!(
                            self.buf,
                            "{{\"event\":\"{FLOOD_EVENT}\",\"data\":{{\"seq\":{next}}},\"timestamp\":{{\"seconds\":{secs},\"microseconds\":{micros}}}}}\r\n"
                        );
                        *next += 1;
                    }
                    if *next >= *end {
                        self.backlog.pop_front();
                    }
                }
                Some(Deferred::Bytes(_)) => {
                    if let Some(Deferred::Bytes(v)) = self.backlog.pop_front() {
                        self.backlog_bytes -= v.len();
                        self.buf.extend_from_slice(&v);
                    }
                }
                Some(Deferred::Close) => {
                    self.backlog.clear();
                    self.backlog_bytes = 0;
                    self.close_now = true;
                    return;
                }
            }
        }
    }
}

// ---- serialisation --------------------------------------------------------------

/// Serialise compact JSON the way [`crate::message::encode`] does (non-ASCII
/// characters escaped), into `out`.
pub(super) fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let start = out.len();
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.truncate(start);
        out.extend_from_slice(b"null");
        return;
    }
    if !out[start..].is_ascii() {
        // Only string contents can hold non-ASCII characters, so escaping each one
        // keeps the JSON valid.
        let tail = out.split_off(start);
        match String::from_utf8(tail) {
            Ok(s) => {
                for ch in s.chars() {
                    if ch.is_ascii() {
                        out.push(ch as u8);
                    } else {
                        let mut units = [0u16; 2];
                        for u in ch.encode_utf16(&mut units) {
                            let _ = write!(out, "\\u{u:04x}");
                        }
                    }
                }
            }
            Err(e) => out.extend_from_slice(e.as_bytes()),
        }
    }
}

/// A whole message: JSON and CRLF.
pub(super) fn write_message(out: &mut Vec<u8>, obj: &JsonObject) {
    write_json(out, obj);
    out.extend_from_slice(b"\r\n");
}

pub(super) fn write_id(out: &mut Vec<u8>, id: Option<&Value>) {
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        write_json(out, id);
    }
}

pub(super) fn render_error(out: &mut Vec<u8>, class: &str, desc: &str, id: Option<&Value>) {
    out.extend_from_slice(b"{\"error\":{\"class\":");
    write_json(out, class);
    out.extend_from_slice(b",\"desc\":");
    write_json(out, desc);
    out.push(b'}');
    write_id(out, id);
    out.extend_from_slice(b"}\r\n");
}

pub(super) fn render(out: &mut Vec<u8>, answer: &Answer<'_>, id: Option<&Value>) {
    let body_start = b"{\"return\":";
    match answer {
        Answer::None => return,
        Answer::Error { class, desc } => return render_error(out, class, desc, id),
        Answer::ErrorOwned { class, desc } => return render_error(out, class, desc, id),
        Answer::Raw(obj) => return write_message(out, obj),
        Answer::WithId(obj) => {
            let mut obj = obj.clone();
            if let Some(id) = id {
                obj.insert("id".into(), id.clone());
            }
            return write_message(out, &obj);
        }
        Answer::Empty => {
            out.extend_from_slice(body_start);
            out.extend_from_slice(b"{}");
        }
        Answer::Object(obj) => {
            out.extend_from_slice(body_start);
            write_json(out, *obj);
        }
        Answer::Value(v) => {
            out.extend_from_slice(body_start);
            write_json(out, v);
        }
        Answer::Encoded(bytes) => {
            out.extend_from_slice(body_start);
            out.extend_from_slice(bytes);
        }
        Answer::Status(running) => {
            out.extend_from_slice(body_start);
            out.extend_from_slice(if *running {
                b"{\"status\":\"running\",\"singlestep\":false,\"running\":true}"
            } else {
                b"{\"status\":\"paused\",\"singlestep\":false,\"running\":false}"
            });
        }
    }
    write_id(out, id);
    out.extend_from_slice(b"}\r\n");
}

pub(super) fn render_oversized(out: &mut Vec<u8>, size: usize, id: Option<&Value>) {
    let mut tail = Vec::new();
    tail.extend_from_slice(b"\"}");
    write_id(&mut tail, id);
    tail.extend_from_slice(b"}\r\n");
    let head = b"{\"return\":{\"data\":\"";
    let pad = size.saturating_sub(head.len() + tail.len());
    out.reserve(head.len() + pad + tail.len());
    out.extend_from_slice(head);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(&tail);
}

/// Displays a JSON object, for logs (formatted only when the log line is enabled).
pub(super) struct JsonDisplay<'a>(pub(super) &'a JsonObject);

impl fmt::Display for JsonDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut v = Vec::new();
        write_json(&mut v, self.0);
        f.write_str(&String::from_utf8_lossy(&v))
    }
}

