//! The logic of `qmp-test-server`: a QMP server, scripted from the command line and
//! a JSON Lines file, for testing QMP clients written in any language.
//!
//! It is [`qemu_qmp::server::TestServer`] (greeting, negotiation, `CommandNotFound`
//! for unknown commands, the built-in commands, fault injection) with:
//!
//! - canned replies, events and faults per command from a [`Script`];
//! - timer events ([`TimerRule`]) sent while a client is connected;
//! - faults for every matching command, or the first N, from [`FaultRule`]s
//!   (`--fault CMD=FAULT[,times=N]`);
//! - a log of every request received, one JSON object a line;
//! - in guest-agent style (no greeting), answers to `guest-sync-delimited` (with the
//!   `0xFF` marker), `guest-sync` and `guest-ping` as `qemu-ga` gives them.
//!
//! [`run`] is the whole program once its options are parsed: it listens, prints
//! `listening on ADDRESS` as the first line on standard output, and serves clients
//! one after another until SIGINT or SIGTERM.
//!
//! ```
//! use qemu_tools::test_server::{parse_fault, FaultRule, Script};
//! use qemu_qmp::server::Fault;
//! use std::time::Duration;
//!
//! let script = Script::parse(r#"{"on": "query-name", "reply": {"return": {"name": "vm1"}}}"#)?;
//! assert_eq!(script.commands[0].on, "query-name");
//! assert_eq!(parse_fault("delay:500ms")?, Fault::Delay(Duration::from_millis(500)));
//! let rule: FaultRule = "stop=hang,times=1".parse()?;
//! assert_eq!(rule.times, Some(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use qemu_qmp::message::VersionTriple;
use qemu_qmp::server::{Fault, Reply, TestServer, TestServerBuilder};
use qemu_qmp::{Event, JsonObject, Value, VersionInfo};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The bytes sent by the `garbage` fault when no text is given.
pub const DEFAULT_GARBAGE: &[u8] = b"this is not JSON\r\n";

/// Commands `*` does not match: the handshakes, which most clients cannot get past
/// when they fail. Name them explicitly to fault them.
pub const HANDSHAKE_COMMANDS: &[&str] = &["qmp_capabilities", "guest-sync-delimited", "guest-sync"];

/// How long shutting down waits for the server task and for the log to be written.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// Everything that can stop `qmp-test-server` from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The script file could not be read.
    #[error("cannot read the script {}: {source}", path.display())]
    ReadScript {
        /// The script's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A line of the script is wrong.
    #[error("{}: {source}", path.display())]
    Script {
        /// The script's path.
        path: PathBuf,
        /// The line and what is wrong with it.
        #[source]
        source: ScriptError,
    },
    /// The log file could not be created.
    #[error("cannot create the log file {}: {source}", path.display())]
    Log {
        /// The log file's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Binding the socket failed.
    #[error("cannot listen on {address}: {source}{hint}")]
    Listen {
        /// The address as given.
        address: String,
        /// Why.
        #[source]
        source: io::Error,
        /// Advice, when there is some (starts with a separator).
        hint: &'static str,
    },
    /// The thread that writes the log could not be started.
    #[error("cannot start the log thread: {0}")]
    LogThread(#[source] io::Error),
    /// The signal handlers could not be installed.
    #[error("cannot handle signals: {0}")]
    Signals(#[source] io::Error),
}

// ---- faults -----------------------------------------------------------------------

/// Parse a fault as written after `CMD=` in `--fault` (and as a string in a script):
/// `delay:500ms` (also `2s`, `1.5s`; a bare number is milliseconds), `garbage`,
/// `garbage:TEXT` (TEXT and CRLF), `close-mid-message`, `oversized:BYTES`,
/// `unknown-id`, `no-id`, `flood:N`, `disconnect`, `hang`.
pub fn parse_fault(text: &str) -> Result<Fault, String> {
    let (kind, arg) = match text.split_once(':') {
        Some((k, a)) => (k.trim(), Some(a)),
        None => (text.trim(), None),
    };
    let no_arg = |fault: Fault| match arg {
        None => Ok(fault),
        Some(_) => Err(format!("the fault '{kind}' takes no ':' argument")),
    };
    let number = |what: &str| -> Result<usize, String> {
        let a = arg.ok_or_else(|| format!("the fault '{kind}' needs a {what}: '{kind}:N'"))?;
        a.trim()
            .parse::<usize>()
            .map_err(|_| format!("'{a}' is not a {what} (in '{text}')"))
    };
    match kind {
        "delay" => {
            let a = arg.ok_or("the fault 'delay' needs a duration, e.g. 'delay:500ms'")?;
            Ok(Fault::Delay(parse_duration(a)?))
        }
        "garbage" => Ok(Fault::Garbage(match arg {
            None => DEFAULT_GARBAGE.to_vec(),
            Some(t) => {
                let mut bytes = t.as_bytes().to_vec();
                bytes.extend_from_slice(b"\r\n");
                bytes
            }
        })),
        "close-mid-message" => no_arg(Fault::CloseMidMessage),
        "oversized" => Ok(Fault::Oversized(number("size in bytes")?)),
        "unknown-id" => no_arg(Fault::UnknownId),
        "no-id" => no_arg(Fault::NoId),
        "flood" => Ok(Fault::FloodEvents(number("number of events")?)),
        "disconnect" => no_arg(Fault::Disconnect),
        "hang" => no_arg(Fault::Hang),
        "" => Err("the fault is empty".into()),
        other => Err(format!(
            "unknown fault '{other}' (expected delay:DURATION, garbage[:TEXT], \
close-mid-message, oversized:BYTES, unknown-id, no-id, flood:N, disconnect or hang)"
        )),
    }
}

/// `500ms`, `2s`, `1.5s`, or a bare number of milliseconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || format!("'{text}' is not a duration (write e.g. 500ms or 2s)");
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 0.001)
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    Duration::try_from_secs_f64(value * scale).map_err(|_| bad())
}

/// A fault for the replies to one command (or any, `*`): `--fault CMD=FAULT[,times=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    /// The command name, or `*` for any command except the [`HANDSHAKE_COMMANDS`].
    pub command: String,
    /// What happens to the reply.
    pub fault: Fault,
    /// Only the first this many matching commands (over all connections); `None` for
    /// every one.
    pub times: Option<u64>,
}

impl FromStr for FaultRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (command, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("'{s}': expected CMD=FAULT, e.g. query-status=delay:500ms"))?;
        let command = command.trim();
        if command.is_empty() {
            return Err(format!("'{s}': the command name is empty (use * for any)"));
        }
        let (fault, times) = match rest.rsplit_once(",times=") {
            Some((f, n)) => {
                let n: u64 = n
                    .trim()
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("'{s}': times={n} is not a positive number"))?;
                (f, Some(n))
            }
            None => (rest, None),
        };
        let fault = parse_fault(fault).map_err(|e| format!("'{s}': {e}"))?;
        Ok(FaultRule {
            command: command.to_owned(),
            fault,
            times,
        })
    }
}

/// Does `command` (a rule's) cover the command `name`?
fn command_matches(command: &str, name: &str) -> bool {
    if command == "*" {
        !HANDSHAKE_COMMANDS.contains(&name)
    } else {
        command == name
    }
}

// ---- the script -------------------------------------------------------------------

/// A bad line of a script.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ScriptError {
    /// The line number, from 1.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// An event to send: `{"event": NAME, "data": {...}}` (timestamped when sent).
#[derive(Debug, Clone, PartialEq)]
pub struct EventSpec {
    /// The event's name.
    pub name: String,
    /// Its `data` member, if any.
    pub data: Option<Value>,
}

impl EventSpec {
    /// The event, timestamped now.
    pub fn to_event(&self) -> Event {
        Event::new(self.name.clone(), self.data.clone())
    }
}

/// What a script line answers.
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptReply {
    /// `{"return": value}`.
    Return(Value),
    /// `{"error": {"class": class, "desc": desc}}`.
    Error {
        /// The error class.
        class: String,
        /// The description.
        desc: String,
    },
}

/// A script line for a command: `{"on": NAME, "args": {...}, "reply": {...},
/// "events": [...], "fault": ..., "times": N}`.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRule {
    /// The line number in the script.
    pub line: usize,
    /// The command name, or `*` (fault-only lines).
    pub on: String,
    /// Match only requests whose arguments contain these (recursively for objects).
    pub args: Option<JsonObject>,
    /// The reply (default `{"return": {}}`).
    pub reply: ScriptReply,
    /// Events to send after the reply.
    pub events: Vec<EventSpec>,
    /// A fault applied to the reply.
    pub fault: Option<Fault>,
    /// Used for only this many matching requests.
    pub times: Option<u64>,
}

/// A script line for a timer: `{"every_ms": N, "event": {...}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct TimerRule {
    /// The line number in the script.
    pub line: usize,
    /// The period.
    pub every: Duration,
    /// The event sent each period while a client is connected.
    pub event: EventSpec,
}

/// A parsed script: JSON Lines, one rule a line; blank lines and lines starting with
/// `#` are skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Script {
    /// Command rules, in file order (the first that matches a request answers it).
    pub commands: Vec<CommandRule>,
    /// Timer rules.
    pub timers: Vec<TimerRule>,
}

impl Script {
    /// Read and parse a script file.
    pub fn load(path: &Path) -> Result<Script, ServerError> {
        let text = std::fs::read(path).map_err(|source| ServerError::ReadScript {
            path: path.to_owned(),
            source,
        })?;
        let text = String::from_utf8(text).map_err(|e| {
            let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            ServerError::Script {
                path: path.to_owned(),
                source: ScriptError {
                    line,
                    message: "not valid UTF-8".into(),
                },
            }
        })?;
        Script::parse(&text).map_err(|source| ServerError::Script {
            path: path.to_owned(),
            source,
        })
    }

    /// Parse a script's text.
    pub fn parse(text: &str) -> Result<Script, ScriptError> {
        let mut script = Script::default();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let err = |message: String| ScriptError { line, message };
            let obj = match serde_json::from_str::<Value>(trimmed) {
                Ok(Value::Object(o)) => o,
                Ok(other) => {
                    return Err(err(format!(
                        "expected a JSON object, found {}",
                        kind_of(&other)
                    )))
                }
                Err(e) => return Err(err(format!("not valid JSON: {}", json_error(&e)))),
            };
            if obj.contains_key("every_ms") {
                script.timers.push(parse_timer(line, &obj).map_err(err)?);
            } else {
                script.commands.push(parse_command(line, obj).map_err(err)?);
            }
        }
        Ok(script)
    }
}

/// serde_json's message without its "at line 1 column N" (always line 1 here).
fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let message = match text.rfind(" at line ") {
        Some(p) => &text[..p],
        None => &text,
    };
    format!("{message} (column {})", e.column())
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn positive(v: &Value, what: &str) -> Result<u64, String> {
    v.as_u64()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("\"{what}\" must be a positive integer, not {v}"))
}

fn parse_timer(line: usize, obj: &JsonObject) -> Result<TimerRule, String> {
    for key in obj.keys() {
        if key != "every_ms" && key != "event" {
            return Err(format!(
                "unknown member \"{key}\" in a timer line (which takes only \"every_ms\" and \"event\")"
            ));
        }
    }
    let every = Duration::from_millis(positive(&obj["every_ms"], "every_ms")?);
    let event = obj
        .get("event")
        .ok_or("a timer line needs \"event\": {\"event\": NAME, \"data\": {...}}")?;
    Ok(TimerRule {
        line,
        every,
        event: parse_event(event)?,
    })
}

fn parse_event(v: &Value) -> Result<EventSpec, String> {
    let Value::Object(o) = v else {
        return Err(format!(
            "an event must be an object {{\"event\": NAME, \"data\": {{...}}}}, not {}",
            kind_of(v)
        ));
    };
    for key in o.keys() {
        if key != "event" && key != "data" {
            return Err(format!(
                "unknown member \"{key}\" in an event (expected \"event\" and \"data\")"
            ));
        }
    }
    let name = match o.get("event") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(other) => return Err(format!("an event's name must be a string, not {other}")),
        None => return Err("an event needs \"event\": its name".into()),
    };
    let data = match o.get("data") {
        None => None,
        Some(d @ Value::Object(_)) => Some(d.clone()),
        Some(other) => {
            return Err(format!(
                "an event's \"data\" must be an object, not {other}"
            ))
        }
    };
    Ok(EventSpec { name, data })
}

fn parse_reply(v: &Value) -> Result<ScriptReply, String> {
    let Value::Object(o) = v else {
        return Err(format!(
            "\"reply\" must be {{\"return\": ...}} or {{\"error\": {{...}}}}, not {}",
            kind_of(v)
        ));
    };
    if let Some(k) = o.keys().find(|k| *k != "return" && *k != "error") {
        return Err(format!(
            "unknown member \"{k}\" in \"reply\" (expected \"return\" or \"error\")"
        ));
    }
    let keys: Vec<&str> = o.keys().map(String::as_str).collect();
    match keys.as_slice() {
        ["return"] => Ok(ScriptReply::Return(o["return"].clone())),
        ["error"] => {
            let Value::Object(e) = &o["error"] else {
                return Err("\"error\" must be {\"class\": ..., \"desc\": ...}".into());
            };
            let text = |key: &str| match e.get(key) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(format!(
                    "the error's \"{key}\" must be a string, not {other}"
                )),
                None => Err(format!("the error needs \"{key}\"")),
            };
            if let Some(k) = e.keys().find(|k| *k != "class" && *k != "desc") {
                return Err(format!(
                    "unknown member \"{k}\" in \"error\" (expected \"class\" and \"desc\")"
                ));
            }
            Ok(ScriptReply::Error {
                class: text("class")?,
                desc: text("desc")?,
            })
        }
        [] => Err("\"reply\" needs \"return\" or \"error\"".into()),
        _ => Err("\"reply\" cannot have both \"return\" and \"error\"".into()),
    }
}

/// A fault in a script: a string as in `--fault` (`"hang"`, `"delay:500ms"`), or an
/// object `{"delay_ms": N}`, `{"oversized": BYTES}`, `{"flood": N}`,
/// `{"garbage": "TEXT"}` (TEXT exactly, no CRLF added).
fn parse_script_fault(v: &Value) -> Result<Fault, String> {
    match v {
        Value::String(s) => parse_fault(s),
        Value::Object(o) if o.len() == 1 => {
            let (key, value) = o.iter().next().ok_or("empty fault")?;
            let n = |what: &str| {
                value.as_u64().ok_or_else(|| {
                    format!("\"{what}\" must be a non-negative integer, not {value}")
                })
            };
            match key.as_str() {
                "delay_ms" => Ok(Fault::Delay(Duration::from_millis(n("delay_ms")?))),
                "oversized" => Ok(Fault::Oversized(n("oversized")? as usize)),
                "flood" => Ok(Fault::FloodEvents(n("flood")? as usize)),
                "garbage" => match value {
                    Value::String(s) => Ok(Fault::Garbage(s.as_bytes().to_vec())),
                    other => Err(format!("\"garbage\" must be a string, not {other}")),
                },
                other => Err(format!(
                    "unknown fault \"{other}\" (expected delay_ms, oversized, flood or garbage; \
or a string such as \"hang\")"
                )),
            }
        }
        other => Err(format!(
            "\"fault\" must be a string such as \"hang\" or \"delay:500ms\", or one of \
{{\"delay_ms\": N}}, {{\"oversized\": N}}, {{\"flood\": N}}, {{\"garbage\": \"TEXT\"}}; not {other}"
        )),
    }
}

fn parse_command(line: usize, mut obj: JsonObject) -> Result<CommandRule, String> {
    const KEYS: &[&str] = &["on", "args", "reply", "events", "fault", "times"];
    if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown member \"{k}\" (a command line takes on, args, reply, events, fault and \
times; a timer line every_ms and event)"
        ));
    }
    let on = match obj.remove("on") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(other) => return Err(format!("\"on\" must be a command name, not {other}")),
        // A line with only a fault applies to any command.
        None if obj.contains_key("fault")
            && !obj.contains_key("reply")
            && !obj.contains_key("events") =>
        {
            "*".to_owned()
        }
        None => return Err("missing \"on\": the command this line answers".into()),
    };
    let args = match obj.remove("args") {
        None => None,
        Some(Value::Object(a)) => Some(a),
        Some(other) => return Err(format!("\"args\" must be an object, not {other}")),
    };
    let reply = match obj.get("reply") {
        None => ScriptReply::Return(Value::Object(JsonObject::new())),
        Some(r) => parse_reply(r)?,
    };
    let events = match obj.get("events") {
        None => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(parse_event)
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(format!(
                "\"events\" must be an array of events, not {other}"
            ))
        }
    };
    let fault = obj.get("fault").map(parse_script_fault).transpose()?;
    let times = obj.get("times").map(|t| positive(t, "times")).transpose()?;
    if on == "*" {
        if obj.contains_key("reply") || obj.contains_key("events") {
            return Err(
                "a line for \"*\" (any command) can only carry \"fault\", \"args\" and \
\"times\": commands are answered by name"
                    .into(),
            );
        }
        if fault.is_none() {
            return Err("a line for \"*\" (any command) needs a \"fault\"".into());
        }
    }
    Ok(CommandRule {
        line,
        on,
        args,
        reply,
        events,
        fault,
        times,
    })
}

/// Does `pattern` match `actual`: objects by subset (recursively), anything else by
/// equality.
pub fn args_match(pattern: &Value, actual: &Value) -> bool {
    match (pattern, actual) {
        (Value::Object(p), Value::Object(a)) => p
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| args_match(v, av))),
        _ => pattern == actual,
    }
}

/// Does a line's `args` (if any) match a request's arguments?
fn line_matches(pattern: Option<&JsonObject>, args: &JsonObject) -> bool {
    pattern.is_none_or(|p| {
        p.iter()
            .all(|(k, v)| args.get(k).is_some_and(|a| args_match(v, a)))
    })
}

// ---- configuration ----------------------------------------------------------------

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket at this path (which must not exist).
    Unix(PathBuf),
    /// TCP, `HOST:PORT` (port 0 for a free one).
    Tcp(String),
}

/// Where the requests received are logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard error.
    Stderr,
    /// This file (created, or truncated).
    File(PathBuf),
    /// Nowhere (`-q`).
    Off,
}

/// Everything `qmp-test-server` is told.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: Listen,
    /// The version in the greeting and in `query-version`.
    pub version: VersionInfo,
    /// The capabilities offered in the greeting.
    pub capabilities: Vec<String>,
    /// Send a greeting and require negotiation (false: guest-agent style).
    pub greeting: bool,
    /// Canned replies, events, faults and timers.
    pub script: Script,
    /// Faults from the command line, tried in order before the script's.
    pub faults: Vec<FaultRule>,
    /// Where to log requests.
    pub log: LogTarget,
}

/// Parse `MAJOR.MINOR.MICRO` (or `MAJOR.MINOR`, micro 0).
pub fn parse_version(text: &str) -> Result<VersionTriple, String> {
    let bad = || format!("'{text}' is not a version: expected MAJOR.MINOR.MICRO, e.g. 9.2.0");
    let parts: Vec<&str> = text.trim().split('.').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(bad());
    }
    let num = |s: &str| s.parse::<u64>().map_err(|_| bad());
    Ok(VersionTriple {
        major: num(parts[0])?,
        minor: num(parts[1])?,
        micro: parts.get(2).map(|s| num(s)).transpose()?.unwrap_or(0),
    })
}

// ---- the server -------------------------------------------------------------------

/// A rule with its remaining uses.
struct Counted<T> {
    rule: T,
    left: Option<AtomicU64>,
}

impl<T> Counted<T> {
    fn new(rule: T, times: Option<u64>) -> Self {
        Counted {
            rule,
            left: times.map(AtomicU64::new),
        }
    }

    /// Use the rule once, if it has uses left.
    fn take(&self) -> bool {
        match &self.left {
            None => true,
            Some(left) => left
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

/// What the script line that answered the current command asks for after the reply.
/// Set by the command's handler, taken by the fault hook, which runs right after it
/// for the same command (the server handles one request at a time).
#[derive(Default)]
struct Matched {
    fault: Option<Fault>,
    events: Vec<EventSpec>,
}

/// State shared by the handlers, the fault hook and the main loop.
#[derive(Default)]
struct Hooks {
    matched: Mutex<Option<Matched>>,
    /// Events of script lines, for the main loop to emit.
    events: Mutex<Vec<EventSpec>>,
    events_ready: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fault hook: the command line's faults, then the fault of the script line that
/// answered, then the script's `*` lines. Queues the script line's events unless the
/// fault closes the connection.
fn choose_fault(
    hooks: &Hooks,
    flags: &[Counted<FaultRule>],
    any: &[Counted<CommandRule>],
    name: &str,
    args: &JsonObject,
) -> Option<Fault> {
    let matched = lock(&hooks.matched).take();
    let mut fault = flags
        .iter()
        .find(|r| command_matches(&r.rule.command, name) && r.take())
        .map(|r| r.rule.fault.clone());
    if fault.is_none() {
        fault = matched.as_ref().and_then(|m| m.fault.clone());
    }
    if fault.is_none() {
        fault = any
            .iter()
            .find(|r| {
                command_matches(&r.rule.on, name)
                    && line_matches(r.rule.args.as_ref(), args)
                    && r.take()
            })
            .and_then(|r| r.rule.fault.clone());
    }
    if let Some(m) = matched {
        let closes = matches!(fault, Some(Fault::Disconnect | Fault::CloseMidMessage));
        if !m.events.is_empty() && !closes {
            lock(&hooks.events).extend(m.events);
            hooks.events_ready.notify_one();
        }
    }
    fault
}

/// The handler of a command the script answers: the first line whose arguments
/// match and that has uses left.
fn scripted(hooks: &Hooks, name: &str, rules: &[Counted<CommandRule>], args: &JsonObject) -> Reply {
    for r in rules {
        if line_matches(r.rule.args.as_ref(), args) && r.take() {
            *lock(&hooks.matched) = Some(Matched {
                fault: r.rule.fault.clone(),
                events: r.rule.events.clone(),
            });
            return match &r.rule.reply {
                ScriptReply::Return(v) => Reply::Return(v.clone()),
                ScriptReply::Error { class, desc } => Reply::error(class, desc),
            };
        }
    }
    Reply::error(
        "GenericError",
        format!(
            "qmp-test-server: no script line for '{name}' matches the arguments {} \
(or they were used up)",
            Value::Object(args.clone())
        ),
    )
}

/// `guest-sync-delimited` as `qemu-ga` answers it: `0xFF`, then the reply.
fn guest_sync_delimited(args: &JsonObject) -> Reply {
    let id = args.get("id").cloned().unwrap_or(Value::Null);
    let mut bytes = vec![0xFF];
    bytes.extend_from_slice(format!("{{\"return\": {id}}}\r\n").as_bytes());
    Reply::Fault(Fault::Garbage(bytes))
}

/// The server builder for `config`, and the state its handlers share.
fn builder(config: &Config) -> (TestServerBuilder, Arc<Hooks>) {
    let hooks = Arc::new(Hooks::default());
    let mut b = TestServer::builder()
        .version(config.version.clone())
        .capabilities(config.capabilities.clone())
        // Like QEMU: no events before the reply to qmp_capabilities, and none left
        // over from an earlier client.
        .drop_unsent_events(true)
        .record(config.log != LogTarget::Off);
    if !config.greeting {
        b = b.no_greeting();
        let scripted_names: Vec<&str> = config.script.commands.iter().map(|c| &*c.on).collect();
        if !scripted_names.contains(&"guest-sync-delimited") {
            b = b.handler("guest-sync-delimited", guest_sync_delimited);
        }
        if !scripted_names.contains(&"guest-sync") {
            b = b.handler("guest-sync", |args| {
                Reply::Return(args.get("id").cloned().unwrap_or(Value::Null))
            });
        }
        if !scripted_names.contains(&"guest-ping") {
            b = b.handler("guest-ping", |_| {
                Reply::Return(Value::Object(JsonObject::new()))
            });
        }
    }
    let mut by_name: HashMap<String, Vec<Counted<CommandRule>>> = HashMap::new();
    let mut any = Vec::new();
    for c in &config.script.commands {
        let counted = Counted::new(c.clone(), c.times);
        if c.on == "*" {
            any.push(counted);
        } else {
            by_name.entry(c.on.clone()).or_default().push(counted);
        }
    }
    for (name, rules) in by_name {
        let hooks = hooks.clone();
        let n = name.clone();
        b = b.handler(&name, move |args| scripted(&hooks, &n, &rules, args));
    }
    let flags: Vec<Counted<FaultRule>> = config
        .faults
        .iter()
        .map(|f| Counted::new(f.clone(), f.times))
        .collect();
    let h = hooks.clone();
    b = b.fault_hook(move |name, args| choose_fault(&h, &flags, &any, name, args));
    (b, hooks)
}

/// Writes the request log from its own thread, so that a reader that does not keep
/// up never stalls the server.
struct LogWriter {
    tx: Option<mpsc::Sender<Vec<JsonObject>>>,
    done: mpsc::Receiver<()>,
}

impl LogWriter {
    fn start(target: &LogTarget) -> Result<Option<LogWriter>, ServerError> {
        let out: Box<dyn Write + Send> = match target {
            LogTarget::Off => return Ok(None),
            LogTarget::Stderr => Box::new(io::stderr()),
            LogTarget::File(path) => Box::new(io::BufWriter::new(
                std::fs::File::create(path).map_err(|source| ServerError::Log {
                    path: path.clone(),
                    source,
                })?,
            )),
        };
        let (tx, rx) = mpsc::channel::<Vec<JsonObject>>();
        let (done_tx, done) = mpsc::channel();
        thread::Builder::new()
            .name("request-log".into())
            .spawn(move || {
                let mut out = out;
                let mut ok = true;
                for batch in rx {
                    if !ok {
                        continue;
                    }
                    for req in batch {
                        let line = serde_json::to_string(&Value::Object(req))
                            .unwrap_or_else(|_| "null".into());
                        ok = ok && writeln!(out, "{line}").is_ok();
                    }
                    ok = ok && out.flush().is_ok();
                }
                let _ = done_tx.send(());
            })
            .map_err(ServerError::LogThread)?;
        Ok(Some(LogWriter { tx: Some(tx), done }))
    }

    fn write(&self, batch: Vec<JsonObject>) {
        if batch.is_empty() {
            return;
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(batch);
        }
    }

    /// Let the thread write what is queued, for at most `wait`.
    fn finish(mut self, wait: Duration) {
        self.tx = None;
        let _ = self.done.recv_timeout(wait);
    }
}

/// A timer rule's next deadline.
struct Timer {
    next: Instant,
    every: Duration,
    event: EventSpec,
}

/// A started server: bound, not yet announced.
pub struct Running {
    server: TestServer,
    hooks: Arc<Hooks>,
    log: Option<LogWriter>,
    timers: Vec<Timer>,
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// Open the log and bind the socket.
    pub async fn start(config: &Config) -> Result<Running, ServerError> {
        let log = LogWriter::start(&config.log)?;
        let (b, hooks) = builder(config);
        let bound = match &config.listen {
            Listen::Unix(path) => b.bind_unix(path).map_err(|source| {
                let hint = if source.kind() == io::ErrorKind::AddrInUse {
                    " (the file exists: remove it if no server uses it)"
                } else {
                    ""
                };
                ServerError::Listen {
                    address: path.display().to_string(),
                    source,
                    hint,
                }
            }),
            Listen::Tcp(addr) => b
                .bind_tcp(addr)
                .await
                .map_err(|source| ServerError::Listen {
                    address: addr.clone(),
                    source,
                    hint: "",
                }),
        };
        let server = match bound {
            Ok(s) => s,
            Err(e) => {
                if let Some(log) = log {
                    log.finish(SHUTDOWN_WAIT);
                }
                return Err(e);
            }
        };
        let now = Instant::now();
        let timers = config
            .script
            .timers
            .iter()
            .map(|t| Timer {
                next: now + t.every,
                every: t.every,
                event: t.event.clone(),
            })
            .collect();
        Ok(Running {
            server,
            hooks,
            log,
            timers,
        })
    }

    /// Where clients connect: the socket path, or the bound `HOST:PORT`.
    pub fn address(&self) -> String {
        self.server.address().to_string()
    }

    /// Serve until `stop` completes: emit the script's events and timer events, log
    /// requests. Then stop the server, remove the socket file, and finish the log.
    pub async fn serve_until(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut logged: usize = 0;
        loop {
            let next_tick = self.timers.iter().map(|t| t.next).min();
            let logging = self.log.is_some();
            tokio::select! {
                biased;
                () = &mut stop => break,
                () = self.hooks.events_ready.notified() => {
                    let events = std::mem::take(&mut *lock(&self.hooks.events));
                    self.server.emit_many(events.iter().map(EventSpec::to_event));
                }
                () = tokio::time::sleep_until(next_tick.unwrap_or_else(Instant::now)),
                    if next_tick.is_some() => self.tick(),
                _ = self.server.wait_for_requests(logged + 1, Duration::from_secs(1)),
                    if logging => {
                    logged += self.drain_log();
                }
            }
        }
        self.drain_log();
        let Running { server, log, .. } = self;
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, server.shutdown()).await;
        if let Some(log) = log {
            log.finish(SHUTDOWN_WAIT);
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let connected = self.server.connections() > self.server.disconnections();
        for t in &mut self.timers {
            if t.next <= now {
                if connected {
                    self.server.emit(t.event.to_event());
                }
                t.next += t.every;
                if t.next <= now {
                    // Fell behind: skip the missed periods rather than send a burst.
                    t.next = now + t.every;
                }
            }
        }
    }

    fn drain_log(&self) -> usize {
        let Some(log) = &self.log else { return 0 };
        let batch = self.server.take_received();
        let n = batch.len();
        log.write(batch);
        n
    }
}

/// The whole program: listen, print `listening on ADDRESS` on standard output, serve
/// until SIGINT or SIGTERM, clean up.
pub async fn run(config: Config) -> Result<(), ServerError> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed before the address is printed, so that a signal sent as soon as it
    // is read is handled.
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServerError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(ServerError::Signals)?;
    let running = Running::start(&config).await?;
    {
        let mut out = io::stdout().lock();
        // Nobody reading standard output is no reason to stop serving.
        let _ = writeln!(out, "listening on {}", running.address());
        let _ = out.flush();
    }
    running
        .serve_until(async {
            tokio::select! {
                _ = sigint.recv() => {}
                _ = sigterm.recv() => {}
            }
        })
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn faults_parse() {
        assert_eq!(
            parse_fault("delay:500ms"),
            Ok(Fault::Delay(Duration::from_millis(500)))
        );
        assert_eq!(
            parse_fault("delay:1.5s"),
            Ok(Fault::Delay(Duration::from_millis(1500)))
        );
        assert_eq!(
            parse_fault("delay:20"),
            Ok(Fault::Delay(Duration::from_millis(20)))
        );
        assert_eq!(
            parse_fault("garbage"),
            Ok(Fault::Garbage(DEFAULT_GARBAGE.to_vec()))
        );
        assert_eq!(
            parse_fault("garbage:{oops"),
            Ok(Fault::Garbage(b"{oops\r\n".to_vec()))
        );
        assert_eq!(
            parse_fault("oversized:20000000"),
            Ok(Fault::Oversized(20_000_000))
        );
        assert_eq!(parse_fault("flood:100000"), Ok(Fault::FloodEvents(100_000)));
        for (text, fault) in [
            ("close-mid-message", Fault::CloseMidMessage),
            ("unknown-id", Fault::UnknownId),
            ("no-id", Fault::NoId),
            ("disconnect", Fault::Disconnect),
            ("hang", Fault::Hang),
        ] {
            assert_eq!(parse_fault(text), Ok(fault));
        }
        for bad in [
            "",
            "delay",
            "delay:x",
            "delay:-1s",
            "hang:1",
            "flood",
            "flood:many",
            "explode",
        ] {
            assert!(parse_fault(bad).is_err(), "{bad}");
        }
        assert!(parse_fault("explode")
            .unwrap_err()
            .contains("unknown fault 'explode'"));
    }

    #[test]
    fn fault_rules_parse() {
        let r: FaultRule = "*=hang,times=2".parse().unwrap();
        assert_eq!(
            r,
            FaultRule {
                command: "*".into(),
                fault: Fault::Hang,
                times: Some(2)
            }
        );
        let r: FaultRule = "x=garbage:a,b".parse().unwrap();
        assert_eq!(r.fault, Fault::Garbage(b"a,b\r\n".to_vec()));
        assert_eq!(r.times, None);
        for bad in [
            "hang",
            "=hang",
            "x=hang,times=0",
            "x=hang,times=z",
            "x=nope",
        ] {
            assert!(bad.parse::<FaultRule>().is_err(), "{bad}");
        }
        assert!(command_matches("*", "stop"));
        assert!(!command_matches("*", "qmp_capabilities"));
        assert!(command_matches("qmp_capabilities", "qmp_capabilities"));
    }

    #[test]
    fn versions_parse() {
        let v = parse_version("9.2.1").unwrap();
        assert_eq!((v.major, v.minor, v.micro), (9, 2, 1));
        assert_eq!(parse_version("8.0").unwrap().micro, 0);
        for bad in ["9", "9.x.0", "1.2.3.4", "", "v9.2.0"] {
            assert!(parse_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scripts_parse() {
        let s = Script::parse(
            r#"
# comment
{"on": "query-status", "reply": {"return": {"status": "running"}}}
{"on": "x", "reply": {"error": {"class": "GenericError", "desc": "no"}}}
{"on": "stop", "events": [{"event": "STOP", "data": {}}], "times": 1}
{"on": "slow", "args": {"a": 1}, "fault": {"delay_ms": 500}}
{"fault": "close-mid-message"}
{"every_ms": 1000, "event": {"event": "TICK"}}
"#,
        )
        .unwrap();
        assert_eq!(s.commands.len(), 5);
        assert_eq!(s.commands[0].line, 3);
        assert_eq!(
            s.commands[1].reply,
            ScriptReply::Error {
                class: "GenericError".into(),
                desc: "no".into()
            }
        );
        assert_eq!(s.commands[2].reply, ScriptReply::Return(json!({})));
        assert_eq!(s.commands[2].events[0].name, "STOP");
        assert_eq!(s.commands[2].times, Some(1));
        assert_eq!(
            s.commands[3].fault,
            Some(Fault::Delay(Duration::from_millis(500)))
        );
        assert_eq!(s.commands[4].on, "*");
        assert_eq!(s.timers[0].every, Duration::from_secs(1));
        assert_eq!(s.timers[0].line, 8);
    }

    #[test]
    fn bad_script_lines_name_the_line() {
        let cases = [
            ("{\"on\": \"x\"}\nnot json", 2, "not valid JSON"),
            ("[1]", 1, "expected a JSON object, found an array"),
            ("{\"on\": 5}", 1, "\"on\" must be a command name"),
            ("{\"reply\": {\"return\": 1}}", 1, "missing \"on\""),
            (
                "{\"on\": \"x\", \"repyl\": {}}",
                1,
                "unknown member \"repyl\"",
            ),
            (
                "{\"on\": \"x\", \"reply\": {}}",
                1,
                "needs \"return\" or \"error\"",
            ),
            (
                "{\"on\": \"x\", \"reply\": {\"retrun\": 1}}",
                1,
                "unknown member \"retrun\"",
            ),
            (
                "{\"on\": \"x\", \"reply\": {\"error\": {\"class\": \"E\"}}}",
                1,
                "needs \"desc\"",
            ),
            (
                "\n\n{\"on\": \"x\", \"fault\": \"boom\"}",
                3,
                "unknown fault 'boom'",
            ),
            (
                "{\"on\": \"x\", \"fault\": {\"delay_ms\": -1}}",
                1,
                "delay_ms",
            ),
            (
                "{\"on\": \"x\", \"events\": [{\"data\": {}}]}",
                1,
                "needs \"event\"",
            ),
            (
                "{\"on\": \"x\", \"times\": 0}",
                1,
                "\"times\" must be a positive integer",
            ),
            (
                "{\"on\": \"*\", \"reply\": {\"return\": 1}}",
                1,
                "only carry",
            ),
            (
                "{\"every_ms\": 0, \"event\": {\"event\": \"T\"}}",
                1,
                "every_ms",
            ),
            ("{\"every_ms\": 10}", 1, "needs \"event\""),
            (
                "{\"every_ms\": 10, \"event\": {\"event\": \"T\"}, \"on\": \"x\"}",
                1,
                "timer line",
            ),
        ];
        for (text, line, needle) in cases {
            let e = Script::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(e.message.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn args_match_by_subset() {
        let actual = json!({"a": 1, "b": {"c": [1, 2], "d": "x"}});
        assert!(args_match(&json!({}), &actual));
        assert!(args_match(&json!({"b": {"d": "x"}}), &actual));
        assert!(!args_match(&json!({"b": {"c": [1]}}), &actual));
        assert!(!args_match(&json!({"z": null}), &actual));
    }

    #[test]
    fn script_lines_answer_in_order_with_uses() {
        let s = Script::parse(
            r#"{"on": "f", "args": {"k": 1}, "reply": {"return": 1}, "times": 1}
{"on": "f", "reply": {"return": 2}, "fault": "hang", "events": [{"event": "E"}]}"#,
        )
        .unwrap();
        let hooks = Hooks::default();
        let rules: Vec<_> = s
            .commands
            .into_iter()
            .map(|c| {
                let t = c.times;
                Counted::new(c, t)
            })
            .collect();
        let args = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(
            scripted(&hooks, "f", &rules, &args(json!({"k": 1}))),
            Reply::Return(json!(1))
        );
        assert_eq!(
            choose_fault(&hooks, &[], &[], "f", &JsonObject::new()),
            None
        );
        assert_eq!(
            scripted(&hooks, "f", &rules, &args(json!({"k": 1}))),
            Reply::Return(json!(2))
        );
        let flags = [Counted::new(
            "f=no-id,times=1".parse::<FaultRule>().unwrap(),
            Some(1),
        )];
        // The command line's fault comes first; the line's events are still sent.
        assert_eq!(
            choose_fault(&hooks, &flags, &[], "f", &JsonObject::new()),
            Some(Fault::NoId)
        );
        assert_eq!(lock(&hooks.events).len(), 1);
        scripted(&hooks, "f", &rules, &JsonObject::new());
        assert_eq!(
            choose_fault(&hooks, &flags, &[], "f", &JsonObject::new()),
            Some(Fault::Hang)
        );
    }
}
