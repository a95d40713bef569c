//! How the shell shows JSON: the layout of Python's `json.dumps`, which QEMU's shell
//! uses, so output reads the same.
//!
//! - one line: `{"return": {"status": "running", "running": true}}` (a space after
//!   `:` and `,`), members in QEMU's order ([`qemu_qmp::json::qemu_order`], which is
//!   the order QEMU writes them in; Python shows them as received);
//! - pretty (`-p`): indented by 4, members sorted by name (`indent=4, sort_keys=True`).
//!
//! Unlike Python, non-ASCII text is shown as is rather than as `\u` escapes.

use std::fmt::Write as _;

use qemu_qmp::json::qemu_order;
use qemu_qmp::{JsonObject, Value};

/// Format a value as QEMU's shell does: one line, or pretty (indented, sorted keys).
pub fn format_json(value: &Value, pretty: bool) -> String {
    let mut out = String::new();
    if pretty {
        write_pretty(&mut out, value, 0);
    } else {
        write_compact(&mut out, value);
    }
    out
}

/// [`format_json`] of an object.
pub fn format_object(obj: &JsonObject, pretty: bool) -> String {
    let mut out = String::new();
    if pretty {
        write_pretty_object(&mut out, obj, 0);
    } else {
        write_compact_object(&mut out, obj);
    }
    out
}

fn write_string(out: &mut String, s: &str) {
    // serde_json escapes exactly what JSON requires.
    out.push_str(&Value::String(s.to_owned()).to_string());
}

fn write_scalar(out: &mut String, value: &Value) {
    match value {
        Value::String(s) => write_string(out, s),
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

fn write_compact(out: &mut String, value: &Value) {
    match value {
        Value::Object(m) => write_compact_object(out, m),
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_compact(out, v);
            }
            out.push(']');
        }
        other => write_scalar(out, other),
    }
}

fn write_compact_object(out: &mut String, m: &JsonObject) {
    write_compact_members(out, qemu_order(m));
}

fn write_compact_members<'a>(
    out: &mut String,
    members: impl IntoIterator<Item = (&'a String, &'a Value)>,
) {
    out.push('{');
    for (i, (k, v)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_string(out, k);
        out.push_str(": ");
        write_compact(out, v);
    }
    out.push('}');
}

fn indent(out: &mut String, level: usize) {
    out.push('\n');
    for _ in 0..level {
        out.push_str("    ");
    }
}

fn write_pretty(out: &mut String, value: &Value, level: usize) {
    match value {
        Value::Object(m) => write_pretty_object(out, m, level),
        Value::Array(a) if a.is_empty() => out.push_str("[]"),
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                indent(out, level + 1);
                write_pretty(out, v, level + 1);
            }
            indent(out, level);
            out.push(']');
        }
        other => write_scalar(out, other),
    }
}

fn write_pretty_object(out: &mut String, m: &JsonObject, level: usize) {
    if m.is_empty() {
        out.push_str("{}");
        return;
    }
    let mut members: Vec<(&String, &Value)> = m.iter().collect();
    members.sort_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (k, v)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        indent(out, level + 1);
        write_string(out, k);
        out.push_str(": ");
        write_pretty(out, v, level + 1);
    }
    indent(out, level);
    out.push('}');
}

/// A request and its reply as one line of the log, as QEMU's shell writes it
/// (`{**command, **reply}`): the request's members first, then the reply's; a
/// member in both keeps the request's place and takes the reply's value.
pub fn format_log_entry(request: &JsonObject, reply: &JsonObject) -> String {
    let from_request = qemu_order(request)
        .into_iter()
        .map(|(k, v)| (k, reply.get(k).unwrap_or(v)));
    let from_reply = qemu_order(reply)
        .into_iter()
        .filter(|(k, _)| !request.contains_key(*k));
    let mut out = String::new();
    write_compact_members(&mut out, from_request.chain(from_reply));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compact_is_python_json_dumps() {
        // QEMU's member order, whatever order the map holds.
        let v = json!({"id": 1, "return": {"running": true, "status": "running"}});
        assert_eq!(
            format_json(&v, false),
            r#"{"return": {"status": "running", "running": true}, "id": 1}"#
        );
        assert_eq!(
            format_json(
                &json!({"a": [1, 2.5, null, "x\"y"], "b": {}, "c": []}),
                false
            ),
            r#"{"a": [1, 2.5, null, "x\"y"], "b": {}, "c": []}"#
        );
        assert_eq!(format_json(&json!("é\n"), false), "\"é\\n\"");
    }

    #[test]
    fn pretty_is_indented_and_sorted() {
        let v = json!({"return": {"status": "running", "running": true, "e": {}, "l": [1, {"z": 1, "a": []}]}});
        assert_eq!(
            format_json(&v, true),
            r#"{
    "return": {
        "e": {},
        "l": [
            1,
            {
                "a": [],
                "z": 1
            }
        ],
        "running": true,
        "status": "running"
    }
}"#
        );
        assert_eq!(format_json(&json!({}), true), "{}");
    }

    #[test]
    fn log_entries_merge_request_and_reply() {
        let req = json!({"execute": "stop", "arguments": {}, "id": 5});
        let rep = json!({"return": {}, "id": 5});
        assert_eq!(
            format_log_entry(req.as_object().unwrap(), rep.as_object().unwrap()),
            r#"{"execute": "stop", "arguments": {}, "id": 5, "return": {}}"#
        );
    }
}
