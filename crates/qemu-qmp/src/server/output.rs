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
                            // As QEMU writes an event (crate::json): spaced, its member order.
                            "{{\"timestamp\": {{\"seconds\": {secs}, \"microseconds\": {micros}}}, \"event\": \"{FLOOD_EVENT}\", \"data\": {{\"seq\": {next}}}}}\r\n"
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
//
// Everything the server writes is in QEMU's own form (see `crate::json`): spaced,
// upper-case escapes, members in QEMU's order, CRLF after each message. Replies put
// `return` before `id` and `id` before `error`, as QEMU's hash table does.

const STYLE: Style = Style::Qemu;

/// Any serialisable value (strings, pre-built structures) in QEMU's style.
pub(super) fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    json::write(out, value, STYLE);
}

/// A JSON value in QEMU's style and member order.
pub(super) fn write_value(out: &mut Vec<u8>, value: &Value) {
    json::write_value(out, value, STYLE);
}

/// A whole message: JSON and CRLF.
pub(super) fn write_message(out: &mut Vec<u8>, obj: &JsonObject) {
    json::write_object(out, obj, STYLE);
    out.extend_from_slice(b"\r\n");
}

pub(super) fn write_id(out: &mut Vec<u8>, id: Option<&Value>) {
    if let Some(id) = id {
        out.extend_from_slice(b", \"id\": ");
        write_value(out, id);
    }
}

pub(super) fn render_error(out: &mut Vec<u8>, class: &str, desc: &str, id: Option<&Value>) {
    out.push(b'{');
    if let Some(id) = id {
        out.extend_from_slice(b"\"id\": ");
        write_value(out, id);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(b"\"error\": {\"class\": ");
    write_json(out, class);
    out.extend_from_slice(b", \"desc\": ");
    write_json(out, desc);
    out.extend_from_slice(b"}}\r\n");
}

pub(super) fn render(out: &mut Vec<u8>, answer: &Answer<'_>, id: Option<&Value>) {
    let body_start = b"{\"return\": ";
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
            json::write_object(out, obj, STYLE);
        }
        Answer::Value(v) => {
            out.extend_from_slice(body_start);
            write_value(out, v);
        }
        Answer::Encoded(bytes) => {
            out.extend_from_slice(body_start);
            out.extend_from_slice(bytes);
        }
        Answer::Status {
            running,
            singlestep,
        } => {
            out.extend_from_slice(body_start);
            // QEMU's order: `status` and `singlestep` share a bucket, newest first.
            out.extend_from_slice(if *running {
                b"{\"status\": \"running\", "
            } else {
                b"{\"status\": \"paused\", "
            });
            if *singlestep {
                out.extend_from_slice(b"\"singlestep\": false, ");
            }
            out.extend_from_slice(if *running {
                b"\"running\": true}"
            } else {
                b"\"running\": false}"
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
    let head = b"{\"return\": {\"data\": \"";
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
