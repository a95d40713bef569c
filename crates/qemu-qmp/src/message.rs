//! QMP messages: greeting, requests, replies and events.
//!
//! Incoming messages are decoded into a JSON object first and then viewed through the
//! types here. Unknown members are never an error: each type keeps the whole object it
//! was made from, so nothing the peer sent is lost.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::json::Ordered;

/// A JSON object, the shape of every QMP message.
pub type JsonObject = serde_json::Map<String, Value>;

/// The QMP greeting: `{"QMP": {"version": {...}, "capabilities": [...]}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Greeting {
    /// The `version` member, typed.
    pub version: VersionInfo,
    /// The capabilities the server offers (`"oob"` is the only one QEMU defines).
    pub capabilities: Vec<String>,
    /// The whole greeting as received.
    pub raw: JsonObject,
}

/// The `version` member of the greeting and of `query-version`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The numeric version.
    #[serde(default)]
    pub qemu: VersionTriple,
    /// The distribution's package string, e.g. `Debian 1:7.2+dfsg-7`.
    #[serde(default)]
    pub package: String,
}

/// A `major.minor.micro` version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VersionTriple {
    /// Major version.
    #[serde(default)]
    pub major: u64,
    /// Minor version.
    #[serde(default)]
    pub minor: u64,
    /// Micro version.
    #[serde(default)]
    pub micro: u64,
}

impl fmt::Display for VersionTriple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

impl Greeting {
    /// Validate and view a message as a greeting. The error says what is missing.
    pub fn from_object(raw: JsonObject) -> Result<Greeting, (String, JsonObject)> {
        let Some(Value::Object(qmp)) = raw.get("QMP") else {
            return Err(("the message has no 'QMP' object member".into(), raw));
        };
        let version = match qmp.get("version") {
            Some(v @ Value::Object(_)) => match VersionInfo::deserialize(v) {
                Ok(v) => v,
                Err(e) => return Err((format!("'version' is malformed: {e}"), raw)),
            },
            Some(_) => return Err(("'QMP.version' is not an object".into(), raw)),
            None => return Err(("'QMP' has no 'version' member".into(), raw)),
        };
        let capabilities = match qmp.get("capabilities") {
            Some(Value::Array(caps)) => caps
                .iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect(),
            Some(_) => return Err(("'QMP.capabilities' is not an array".into(), raw)),
            None => return Err(("'QMP' has no 'capabilities' member".into(), raw)),
        };
        Ok(Greeting {
            version,
            capabilities,
            raw,
        })
    }

    /// True if the server offers the capability, e.g. `"oob"`.
    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities.iter().any(|c| c == name)
    }

    /// Build a greeting (for servers).
    pub fn new(version: VersionInfo, capabilities: Vec<String>) -> Greeting {
        let mut qmp = JsonObject::new();
        qmp.insert(
            "version".into(),
            serde_json::to_value(&version).unwrap_or(Value::Null),
        );
        qmp.insert(
            "capabilities".into(),
            Value::Array(capabilities.iter().cloned().map(Value::String).collect()),
        );
        let mut raw = JsonObject::new();
        raw.insert("QMP".into(), Value::Object(qmp));
        Greeting {
            version,
            capabilities,
            raw,
        }
    }
}

/// The `error` member of an error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    /// The error class, e.g. `GenericError`.
    pub class: String,
    /// The human-readable description.
    pub desc: String,
}

impl fmt::Display for ErrorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.desc, self.class)
    }
}

/// A reply to a command: `{"return": ...}` or `{"error": {...}}`, with the request's id.
#[derive(Debug, Clone)]
pub struct Response {
    /// The whole reply as received (with the caller's id, if any, in place of the
    /// library's: see [`Client::execute_raw`](crate::Client::execute_raw)).
    pub raw: JsonObject,
    /// The reply's text as received, kept by clients that
    /// [preserve order](crate::ClientBuilder::preserve_order).
    text: Option<Arc<[u8]>>,
}

impl PartialEq for Response {
    /// Replies are equal when their contents are: member order does not count.
    fn eq(&self, other: &Response) -> bool {
        self.raw == other.raw
    }
}

impl From<JsonObject> for Response {
    fn from(raw: JsonObject) -> Response {
        Response::new(raw)
    }
}

impl Response {
    /// A reply made of `raw` (for servers and tests).
    pub fn new(raw: JsonObject) -> Response {
        Response { raw, text: None }
    }

    pub(crate) fn set_text(&mut self, text: Arc<[u8]>) {
        self.text = Some(text);
    }

    /// The reply with its members in the order the peer sent them, at every depth,
    /// for showing it to a person: exact when the client keeps each message's text
    /// ([`ClientBuilder::preserve_order`](crate::ClientBuilder::preserve_order)),
    /// else in QEMU's order as [`Ordered::from_object`] computes it. The `id` is the
    /// caller's, in the place the peer gave the library's (none when the caller gave
    /// none), as in [`raw`](Self::raw).
    pub fn ordered(&self) -> Ordered {
        let Some(mut ordered) = self.text.as_deref().and_then(|t| Ordered::parse(t).ok()) else {
            return Ordered::from_object(&self.raw);
        };
        match self.raw.get("id") {
            Some(id) => ordered.set("id", Ordered::from_value(id)),
            None => {
                ordered.remove("id");
            }
        }
        ordered
    }

    /// The `id` member, if any.
    pub fn id(&self) -> Option<&Value> {
        self.raw.get("id")
    }

    /// The `return` member, if this is a success reply.
    pub fn return_value(&self) -> Option<&Value> {
        self.raw.get("return")
    }

    /// True if the reply has an `error` member.
    pub fn is_error(&self) -> bool {
        self.raw.contains_key("error")
    }

    /// The parsed `error` member: `Ok(None)` when there is none, `Err(reason)` when it
    /// is malformed.
    pub fn error_info(&self) -> Result<Option<ErrorInfo>, String> {
        let Some(err) = self.raw.get("error") else {
            return Ok(None);
        };
        let Value::Object(err) = err else {
            return Err("'error' is not an object".into());
        };
        let class = match err.get("class") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err("'error.class' is missing or not a string".into()),
        };
        let desc = match err.get("desc") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err("'error.desc' is missing or not a string".into()),
        };
        Ok(Some(ErrorInfo { class, desc }))
    }
}

/// A timestamp of an event, as QEMU sends it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub seconds: i64,
    /// Microseconds within the second.
    pub microseconds: i64,
}

/// An asynchronous event: `{"event": name, "data": {...}, "timestamp": {...}}`.
///
/// Cheap to clone: every listener that receives an event gets a handle to the same
/// immutable message.
///
/// # How it works
///
/// An event a client reads keeps the bytes it arrived as, and its name and timestamp,
/// which the reader picks out without building anything else; the rest is parsed
/// into a JSON object the first time something asks for it ([`data`](Self::data),
/// [`as_object`](Self::as_object), a listener's filter), once for every holder of
/// the event. So a queued event costs little more than its size on the wire (about
/// 250 bytes for QEMU's `STOP`, against about 1.5 KiB for the parsed object), and a
/// consumer that looks only at names and timestamps, or drops events it does not
/// want, never pays for a parse.
#[derive(Clone, PartialEq)]
pub struct Event(Arc<EventInner>);

struct EventInner {
    name: EventName,
    /// The `timestamp` member, when the event was read from the wire (else taken
    /// from the object).
    timestamp: Option<Timestamp>,
    /// The event's text as received: always for an event read from the wire, else
    /// when kept by a client that [preserves order](crate::ClientBuilder::preserve_order).
    text: Option<Box<[u8]>>,
    /// The event as an object: made at once for an event built from one, else from
    /// `text` when first asked for.
    raw: std::sync::OnceLock<JsonObject>,
}

impl PartialEq for EventInner {
    /// Events are equal when their contents are: member order does not count.
    fn eq(&self, other: &EventInner) -> bool {
        self.object() == other.object()
    }
}

/// Where an event's name is kept.
enum EventName {
    Owned(Box<str>),
    /// A span of the event's text, which holds the name unescaped: an event read
    /// from the wire needs no copy of it.
    InText(std::ops::Range<usize>),
}

impl EventInner {
    fn name(&self) -> &str {
        match &self.name {
            EventName::Owned(name) => name,
            EventName::InText(span) => self
                .text
                .as_deref()
                .and_then(|t| t.get(span.clone()))
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or_default(),
        }
    }

    fn object(&self) -> &JsonObject {
        self.raw.get_or_init(|| {
            let text = self.text.as_deref().unwrap_or_default();
            match serde_json::from_slice(text) {
                Ok(obj) => obj,
                // Not expected: the reader checked the text before keeping it.
                Err(e) => {
                    tracing::warn!(
                        "event {} could not be parsed ({e}); only its name is kept",
                        self.name()
                    );
                    let mut obj = JsonObject::new();
                    obj.insert("event".into(), Value::String(self.name().to_owned()));
                    obj
                }
            }
        })
    }
}

impl Event {
    /// View a message as an event; `None` if it has no string `event` member.
    pub fn from_object(raw: JsonObject) -> Result<Event, JsonObject> {
        Event::from_object_and_text(raw, None)
    }

    /// [`from_object`](Self::from_object), keeping the text the event was decoded
    /// from for [`ordered`](Self::ordered).
    pub(crate) fn from_object_and_text(
        raw: JsonObject,
        text: Option<Box<[u8]>>,
    ) -> Result<Event, JsonObject> {
        let name = match raw.get("event") {
            Some(Value::String(s)) => EventName::Owned(s.as_str().into()),
            _ => return Err(raw),
        };
        Ok(Event(Arc::new(EventInner {
            name,
            timestamp: None,
            text,
            raw: std::sync::OnceLock::from(raw),
        })))
    }

    /// An event read from the wire: its text (one JSON object, valid UTF-8, whose
    /// `event` member is the bytes `name` of it, unescaped), parsed when first needed.
    pub(crate) fn from_wire(
        name: std::ops::Range<usize>,
        timestamp: Option<Timestamp>,
        text: &[u8],
    ) -> Event {
        Event(Arc::new(EventInner {
            name: EventName::InText(name),
            timestamp,
            text: Some(Box::from(text)),
            raw: std::sync::OnceLock::new(),
        }))
    }

    /// Build an event (for servers and tests), timestamped now.
    pub fn new(name: impl Into<String>, data: Option<Value>) -> Event {
        let name = name.into();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut raw = JsonObject::new();
        raw.insert("event".into(), Value::String(name.clone()));
        if let Some(d) = data {
            raw.insert("data".into(), d);
        }
        raw.insert(
            "timestamp".into(),
            serde_json::json!({"seconds": now.as_secs(), "microseconds": now.subsec_micros()}),
        );
        Event(Arc::new(EventInner {
            name: EventName::Owned(name.into_boxed_str()),
            timestamp: None,
            text: None,
            raw: std::sync::OnceLock::from(raw),
        }))
    }

    /// The event name, e.g. `STOP`.
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// The `data` member (`Value::Null` when absent).
    pub fn data(&self) -> &Value {
        self.0.object().get("data").unwrap_or(&Value::Null)
    }

    /// The `timestamp` member, if present and well-formed.
    pub fn timestamp(&self) -> Option<Timestamp> {
        if self.0.timestamp.is_some() {
            return self.0.timestamp;
        }
        self.0
            .object()
            .get("timestamp")
            .and_then(|t| Timestamp::deserialize(t).ok())
    }

    /// The whole event as received, unknown members included.
    pub fn as_object(&self) -> &JsonObject {
        self.0.object()
    }

    /// The event as a JSON value (a copy).
    pub fn to_value(&self) -> Value {
        Value::Object(self.0.object().clone())
    }

    /// The event with its members in the order the peer sent them, at every depth,
    /// for showing it to a person: exact for an event a client read (it keeps the
    /// text), else in QEMU's order as [`Ordered::from_object`] computes it.
    pub fn ordered(&self) -> Ordered {
        self.0
            .text
            .as_deref()
            .and_then(|t| Ordered::parse(t).ok())
            .unwrap_or_else(|| Ordered::from_object(self.0.object()))
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Event({})", Value::Object(self.0.object().clone()))
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Value::Object(self.0.object().clone()))
    }
}

/// An incoming message, classified.
#[derive(Debug, Clone)]
pub enum Message {
    /// A greeting.
    Greeting(Greeting),
    /// A reply to a command.
    Response(Response),
    /// An event.
    Event(Event),
    /// A command, `execute` or `exec-oob` (what a server receives; QMP's
    /// specification calls these commands). Not to be confused with
    /// [`Request`](crate::Request), the builder that sends one.
    Command(JsonObject),
    /// Anything else.
    Other(JsonObject),
}

impl Message {
    /// Classify a decoded JSON object.
    pub fn classify(obj: JsonObject) -> Message {
        Message::classify_with_text(obj, None)
    }

    /// [`classify`](Self::classify), keeping `text`, the bytes `obj` was decoded from,
    /// in a reply or an event for their `ordered()` view.
    pub(crate) fn classify_with_text(obj: JsonObject, text: Option<&[u8]>) -> Message {
        if obj.contains_key("event") {
            return match Event::from_object_and_text(obj, text.map(Box::from)) {
                Ok(e) => Message::Event(e),
                Err(obj) => Message::Other(obj),
            };
        }
        if obj.contains_key("return") || obj.contains_key("error") {
            let mut r = Response::new(obj);
            if let Some(text) = text {
                r.set_text(Arc::from(text));
            }
            return Message::Response(r);
        }
        if obj.contains_key("execute") || obj.contains_key("exec-oob") {
            return Message::Command(obj);
        }
        if obj.contains_key("QMP") {
            return match Greeting::from_object(obj) {
                Ok(g) => Message::Greeting(g),
                Err((_, obj)) => Message::Other(obj),
            };
        }
        Message::Other(obj)
    }
}

/// Build a request object: `{"execute" | "exec-oob": cmd, "arguments"?: args, "id"?: id}`
/// (Python: `QMPClient.make_execute_msg`).
pub(crate) fn make_request(
    cmd: impl Into<String>,
    arguments: Option<Value>,
    oob: bool,
    id: Option<Value>,
) -> JsonObject {
    let mut m = JsonObject::new();
    let key = if oob { "exec-oob" } else { "execute" };
    m.insert(key.into(), Value::String(cmd.into()));
    if let Some(a) = arguments {
        m.insert("arguments".into(), a);
    }
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    m
}

/// The command name of a request object, if it has one.
pub fn request_command(req: &JsonObject) -> Option<&str> {
    req.get("execute")
        .or_else(|| req.get("exec-oob"))
        .and_then(Value::as_str)
}

/// Serialise a message the way a QMP client sends it: compact JSON, ASCII only
/// (non-ASCII characters escaped), with no trailing newline, like Python's `qemu.qmp`.
///
/// QEMU's JSON stream parser needs no delimiter. A trailing newline would be left
/// unread in QEMU's socket buffer after a final `quit`, and closing a Unix socket with
/// unread data makes the kernel reset the connection.
pub fn encode(obj: &JsonObject) -> Vec<u8> {
    crate::json::to_vec(obj, crate::json::Style::Compact)
}

/// Write the request `command` (`exec-oob` if `oob`) with `arguments` and the wire id
/// `id`, as [`encode`] would write the object [`make_request`] builds from them, in
/// the order a person writes them (`execute`, `arguments`, `id`), without building
/// the object: the client's path for every command it sends.
pub(crate) fn encode_command(
    command: &str,
    arguments: Option<&Value>,
    oob: bool,
    id: Option<u64>,
) -> Vec<u8> {
    use crate::json::{write, Style};
    use std::io::Write;
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(if oob {
        b"{\"exec-oob\":"
    } else {
        b"{\"execute\":"
    });
    write(&mut out, command, Style::Compact);
    if let Some(arguments) = arguments {
        out.extend_from_slice(b",\"arguments\":");
        write(&mut out, arguments, Style::Compact);
    }
    if let Some(n) = id {
        let _ = write!(out, ",\"id\":{n}");
    }
    out.push(b'}');
    out
}

/// [`encode`] a request with the wire id `id` (if any) as its last member, without
/// adding it to the object: the client's request path, which keeps the caller's
/// object as given.
pub(crate) fn encode_request(obj: &JsonObject, id: Option<u64>) -> Vec<u8> {
    use std::io::Write;
    let mut out = encode(obj);
    if let Some(n) = id {
        // `{...}` becomes `{...,"id":n}`.
        out.pop();
        if !obj.is_empty() {
            out.push(b',');
        }
        let _ = write!(out, "\"id\":{n}}}");
    }
    out
}

/// Serialise a message like [`encode`], followed by CRLF (the test server writes
/// QEMU's own style instead: see [`crate::json`](mod@crate::json)).
pub fn encode_line(obj: &JsonObject) -> Vec<u8> {
    let mut out = encode(obj);
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> JsonObject {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn greeting_parses_and_keeps_unknown_members() {
        let g = Greeting::from_object(obj(json!({"QMP": {
            "version": {"qemu": {"major": 7, "minor": 2, "micro": 22}, "package": "Debian"},
            "capabilities": ["oob"], "future": 1}, "extra": true})))
        .unwrap();
        assert_eq!(g.version.qemu.to_string(), "7.2.22");
        assert!(g.has_capability("oob"));
        assert_eq!(g.raw["extra"], json!(true));
    }

    #[test]
    fn greeting_errors_say_what_is_missing() {
        let (e, _) = Greeting::from_object(obj(json!({"return": {}}))).unwrap_err();
        assert!(e.contains("'QMP'"), "{e}");
        let (e, _) = Greeting::from_object(obj(json!({"QMP": {"version": {}}}))).unwrap_err();
        assert!(e.contains("capabilities"), "{e}");
        let (e, _) = Greeting::from_object(obj(json!({"QMP": {"version": 1, "capabilities": []}})))
            .unwrap_err();
        assert!(e.contains("version"), "{e}");
    }

    #[test]
    fn classify_and_views() {
        let m = Message::classify(obj(json!({"event": "STOP", "timestamp":
            {"seconds": 1, "microseconds": 2}, "x": 1})));
        let Message::Event(e) = m else { panic!() };
        assert_eq!(e.name(), "STOP");
        assert_eq!(e.data(), &Value::Null);
        assert_eq!(
            e.timestamp(),
            Some(Timestamp {
                seconds: 1,
                microseconds: 2
            })
        );
        assert_eq!(e.as_object()["x"], json!(1));

        let Message::Response(r) = Message::classify(obj(json!({"error":
            {"class": "GenericError", "desc": "boom"}, "id": 3})))
        else {
            panic!()
        };
        assert_eq!(r.id(), Some(&json!(3)));
        assert_eq!(r.error_info().unwrap().unwrap().class, "GenericError");
        let r = Response::new(obj(json!({"error": {"class": 1}})));
        assert!(r.error_info().is_err());

        for key in ["execute", "exec-oob"] {
            let m = Message::classify(obj(json!({ key: "stop", "id": 1 })));
            let Message::Command(c) = m else {
                panic!("{m:?}")
            };
            assert_eq!(request_command(&c), Some("stop"));
        }
    }

    #[test]
    fn encode_is_compact_ascii() {
        let m = make_request("x", Some(json!({"s": "é😀"})), false, Some(json!("id")));
        assert!(encode_line(&m).ends_with(b"}\r\n"));
        let bytes = encode(&m);
        assert!(bytes.is_ascii());
        assert!(bytes.ends_with(b"}"));
        let back: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back["arguments"]["s"], json!("é😀"));
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            "{\"arguments\":{\"s\":\"\\u00e9\\ud83d\\ude00\"},\"execute\":\"x\",\"id\":\"id\"}"
        );
    }

    /// The request path writes what `encode` writes of the same request, members in
    /// the order a person writes them.
    #[test]
    fn requests_from_parts_are_what_encode_writes() {
        let args = json!({"s": "é😀\u{7f}", "n": 1});
        for (oob, id) in [(false, None), (true, Some(7)), (false, Some(u64::MAX))] {
            let bytes = encode_command("q", Some(&args), oob, id);
            let text = std::str::from_utf8(&bytes).unwrap();
            let key = if oob { "exec-oob" } else { "execute" };
            assert!(
                text.starts_with(&format!("{{\"{key}\":\"q\",\"arguments\":")),
                "{text}"
            );
            let want = make_request("q", Some(args.clone()), oob, id.map(Value::from));
            let back: JsonObject = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(back, want);
            assert!(bytes.is_ascii());
            // The object path, with the id appended, writes the same members.
            let plain = make_request("q", Some(args.clone()), oob, None);
            let back: JsonObject = serde_json::from_slice(&encode_request(&plain, id)).unwrap();
            assert_eq!(back, want);
        }
        assert_eq!(
            encode_command("q", None, false, None),
            b"{\"execute\":\"q\"}"
        );
        assert_eq!(encode_request(&JsonObject::new(), Some(3)), b"{\"id\":3}");
        assert_eq!(encode_request(&JsonObject::new(), None), b"{}");
    }
}
