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

/// What QEMU says about input its JSON parser rejects, worded from the
/// decoder's `error` and the raw offending `token` (see
/// [`FrameError::Malformed`]) as QEMU's lexer, streamer and parser word it
/// (`qobject/json-*.c`; QEMU 10.0 and 7.2 alike, checked by
/// `tests/server_fidelity.rs`). A mistake serde_json has no counterpart of
/// keeps serde_json's description.
pub(super) fn qemu_parse_error(error: &serde_json::Error, token: &[u8]) -> String {
    let text = error.to_string();
    let says = |prefix: &str| text.starts_with(prefix);
    // The lexer's complaint: the token so far, with the byte it could not take.
    let stray = || {
        format!(
            "JSON parse error, stray '{}'",
            String::from_utf8_lossy(token)
        )
    };
    let parse_error = |what: &str| format!("JSON parse error, {what}");
    if says("recursion limit exceeded") {
        // QEMU's limit is 1024 levels, serde_json's 128 (see the module docs).
        return "JSON nesting depth limit exceeded".to_owned();
    }
    // The lexer takes any run of [a-z] for a keyword; the parser knows three.
    if !token.is_empty()
        && token.iter().all(u8::is_ascii_lowercase)
        && !matches!(token, b"true" | b"false" | b"null")
    {
        return parse_error(&format!(
            "invalid keyword '{}'",
            String::from_utf8_lossy(token)
        ));
    }
    let first = token.first().copied();
    match first {
        Some(b'"' | b'\'') => {
            // 0xFE, 0xFF and control characters end a string in the lexer.
            if token.iter().any(|&b| b >= 0xFE) || says("control character") {
                return stray();
            }
            if says("invalid escape") {
                return parse_error("invalid escape sequence in string");
            }
            // serde_json stops at a byte of a bad UTF-8 sequence, and after a
            // bad `\u` escape.
            if token.last().is_some_and(|&b| b >= 0x80) {
                return parse_error("invalid UTF-8 sequence in string");
            }
            if let Some(escape) = bad_unicode_escape(token) {
                return parse_error(&format!(
                    "{} is not a valid Unicode character",
                    String::from_utf8_lossy(escape)
                ));
            }
        }
        Some(b'-' | b'0'..=b'9') if says("invalid number") => return stray(),
        Some(b) if !starts_token(b) => return stray(),
        _ => {}
    }
    if says("expected value") || says("trailing comma") || says("expected ident") {
        return parse_error("expecting value");
    }
    if says("key must be a string") {
        return parse_error(match first {
            None | Some(b',' | b':' | b']' | b'}') => "expecting value",
            Some(_) => "key is not a string in object",
        });
    }
    if says("expected `:`") {
        return parse_error("missing : in object pair");
    }
    if says("expected `,` or `}`") {
        return parse_error("expected separator in dict");
    }
    if says("expected `,` or `]`") {
        return parse_error("expected separator in list");
    }
    parse_error(&text)
}

/// Whether QEMU's lexer can start a token with `b` (interpolation off, as
/// for QMP).
fn starts_token(b: u8) -> bool {
    matches!(
        b,
        b'"' | b'\'' | b'0'..=b'9' | b'-' | b'{' | b'}' | b'[' | b']' | b',' | b':' | b'a'..=b'z'
            | b' ' | b'\t' | b'\r' | b'\n'
    )
}

/// The `\uXXXX` escape of a string token that QEMU refuses: the last one, or
/// the leading surrogate before it that it does not complete.
fn bad_unicode_escape(token: &[u8]) -> Option<&[u8]> {
    let escapes: Vec<usize> = token
        .windows(2)
        .enumerate()
        .filter(|(i, w)| w == b"\\u" && !(*i > 0 && token[i - 1] == b'\\'))
        .map(|(i, _)| i)
        .collect();
    let hex = |at: usize| {
        token
            .get(at + 2..at + 6)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u16::from_str_radix(h, 16).ok())
    };
    let last = *escapes.last()?;
    let pick = match escapes.len().checked_sub(2).map(|k| escapes[k]) {
        Some(prev)
            if prev + 6 == last
                && hex(prev).is_some_and(|c| (0xD800..0xDC00).contains(&c))
                && !hex(last).is_some_and(|c| (0xDC00..0xE000).contains(&c)) =>
        {
            prev
        }
        _ => last,
    };
    Some(&token[pick..(pick + 6).min(token.len())])
}
