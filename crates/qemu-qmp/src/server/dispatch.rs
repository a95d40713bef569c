//! Checking a request and choosing its answer.

use super::*;

pub(super) enum Post {
    None,
    Quit,
}

/// The answer to a command, before it is serialised.
pub(super) enum Answer<'a> {
    /// `{"return": {}}`.
    Empty,
    /// `{"return": object}` (echo).
    Object(&'a JsonObject),
    Value(Value),
    /// Pre-encoded JSON for `return`.
    Encoded(Arc<[u8]>),
    /// `query-status`: the run state, and whether the (deprecated, then
    /// removed) `singlestep` member is there.
    Status {
        running: bool,
        singlestep: bool,
    },
    Error {
        class: &'static str,
        desc: String,
    },
    ErrorOwned {
        class: String,
        desc: String,
    },
    Raw(JsonObject),
    WithId(JsonObject),
    None,
}

impl Answer<'_> {
    pub(super) fn error(class: &'static str, desc: String) -> Self {
        Answer::Error { class, desc }
    }
}

pub(super) fn reply_to_answer<'a>(reply: Reply) -> (Answer<'a>, Option<Fault>, Post) {
    let answer = match reply {
        Reply::Return(v) => Answer::Value(v),
        Reply::Error { class, desc } => Answer::ErrorOwned { class, desc },
        Reply::Raw(o) => Answer::Raw(o),
        Reply::WithId(o) => Answer::WithId(o),
        Reply::NoReply => Answer::None,
        Reply::Fault(f) => return (Answer::Empty, Some(f), Post::None),
    };
    (answer, None, Post::None)
}

pub(super) static EMPTY: std::sync::OnceLock<JsonObject> = std::sync::OnceLock::new();

/// Validate a request like QEMU's `qmp_dispatch_check_obj`: returns the command
/// name, its arguments and whether it is `exec-oob`, or the error description.
pub(super) fn check_request(
    obj: &JsonObject,
    allow_oob: bool,
) -> std::result::Result<(&str, &JsonObject, bool), String> {
    let mut name = None;
    let mut oob = false;
    let mut args = None;
    for (key, value) in obj {
        match key.as_str() {
            k @ ("execute" | "exec-oob") if k == "execute" || allow_oob => {
                let Value::String(s) = value else {
                    return Err(format!("QMP input member '{k}' must be a string"));
                };
                if name.is_some() {
                    // Both are present: QEMU names the second, whatever the order.
                    return Err("QMP input member 'exec-oob' is unexpected".into());
                }
                name = Some(s.as_str());
                oob = k == "exec-oob";
            }
            "arguments" => match value {
                Value::Object(a) => args = Some(a),
                _ => return Err("QMP input member 'arguments' must be an object".into()),
            },
            "id" => {}
            other => return Err(format!("QMP input member '{other}' is unexpected")),
        }
    }
    let Some(name) = name else {
        return Err("QMP input lacks member 'execute'".into());
    };
    let args = args.unwrap_or_else(|| EMPTY.get_or_init(JsonObject::new));
    Ok((name, args, oob))
}

pub(super) fn no_arguments<'a>(args: &JsonObject) -> std::result::Result<(), Answer<'a>> {
    match args.keys().next() {
        Some(k) => Err(Answer::error(
            "GenericError",
            format!("Parameter '{k}' is unexpected"),
        )),
        None => Ok(()),
    }
}

pub(super) fn fdname<'a>(args: &JsonObject) -> std::result::Result<&str, Answer<'a>> {
    for k in args.keys() {
        if k != "fdname" {
            return Err(Answer::error(
                "GenericError",
                format!("Parameter '{k}' is unexpected"),
            ));
        }
    }
    match args.get("fdname") {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Answer::error(
            "GenericError",
            "Invalid parameter type for 'fdname', expected: string".into(),
        )),
        None => Err(Answer::error(
            "GenericError",
            "Parameter 'fdname' is missing".into(),
        )),
    }
}

/// What QEMU's JSON parser says about the input serde_json rejected with
/// `error`, for the mistakes a client makes (checked against QEMU 10.0 and 7.2
/// by `tests/server_fidelity.rs`): a bare word is an `invalid keyword`, a
/// missing value `expecting value`, a missing colon `missing : in object
/// pair`. Anything else keeps serde_json's description.
pub(super) fn qemu_parse_error(error: &serde_json::Error, excerpt: &str) -> String {
    let text = error.to_string();
    // serde_json points at the byte where it gave up, which may be inside a bare
    // word (`this`: after the `t` of a would-be `true`): take the whole word.
    let input = unescape_debug(excerpt);
    let line = input
        .split('\n')
        .nth(error.line().saturating_sub(1))
        .unwrap_or("")
        .as_bytes();
    let mut start = error.column().saturating_sub(1).min(line.len());
    while start > 0 && line[start - 1].is_ascii_alphabetic() {
        start -= 1;
    }
    let word: String = line[start..]
        .iter()
        .take_while(|b| b.is_ascii_alphabetic())
        .map(|&b| char::from(b))
        .collect();
    let expected_value = text.starts_with("expected value")
        || text.starts_with("expected ident")
        || text.starts_with("key must be a string");
    if expected_value && !word.is_empty() {
        format!("invalid keyword '{word}'")
    } else if expected_value || text.starts_with("trailing comma") {
        "expecting value".to_owned()
    } else if text.starts_with("expected `:`") {
        "missing : in object pair".to_owned()
    } else {
        text
    }
}

/// Undoes `char::escape_debug`, with which the decoder quotes the offending
/// input in its error.
fn unescape_debug(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('0') => out.push('\0'),
            Some('u') => {
                let hex: String = chars
                    .by_ref()
                    .skip_while(|&c| c == '{')
                    .take_while(|&c| c != '}')
                    .collect();
                let decoded = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                out.push(decoded.unwrap_or(char::REPLACEMENT_CHARACTER));
            }
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}
