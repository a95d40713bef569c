//! How the shell shows JSON: the layout of Python's `json.dumps`, which QEMU's shell
//! uses, so output reads the same.
//!
//! Everything shown is an [`Ordered`] value: replies and events as QEMU sent them
//! ([`Response::ordered`](qemu_qmp::Response::ordered),
//! [`Event::ordered`](qemu_qmp::Event::ordered)), requests as they were built from
//! the line typed ([`super::parser`]), so members come in the same order as in
//! Python, whose dicts keep insertion order.
//!
//! - one line: `{"return": {"status": "running", "running": true}}` (a space after
//!   `:` and `,`), members in their order;
//! - pretty (`-p`): indented by 4, members sorted by name (`indent=4, sort_keys=True`).
//!
//! Numbers are written as Python writes them (`1e+16`, `1.5e-05`). Unlike Python,
//! non-ASCII text is shown as is rather than as `\u` escapes.

use std::fmt::Write as _;

use qemu_qmp::json::Ordered;
use qemu_qmp::Value;

/// Format a value as QEMU's shell does: one line, or pretty (indented, sorted keys).
pub fn format_json(value: &Ordered, pretty: bool) -> String {
    let mut out = String::new();
    if pretty {
        write_pretty(&mut out, value, 0);
    } else {
        write_compact(&mut out, value);
    }
    out
}

fn write_string(out: &mut String, s: &str) {
    // serde_json escapes exactly what Python's json.dumps(ensure_ascii=False) does.
    out.push_str(&Value::String(s.to_owned()).to_string());
}

fn write_scalar(out: &mut String, value: &Ordered) {
    match value {
        Ordered::String(s) => write_string(out, s),
        Ordered::Number(n) if n.is_f64() => {
            out.push_str(&crate::qom::python_float(n.as_f64().unwrap_or(f64::NAN)));
        }
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

fn write_compact(out: &mut String, value: &Ordered) {
    match value {
        Ordered::Object(m) => write_compact_members(out, m.iter().map(|(k, v)| (k, v))),
        Ordered::Array(a) => {
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

fn write_compact_members<'a>(
    out: &mut String,
    members: impl IntoIterator<Item = (&'a String, &'a Ordered)>,
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

fn write_pretty(out: &mut String, value: &Ordered, level: usize) {
    match value {
        Ordered::Object(m) => write_pretty_object(out, m, level),
        Ordered::Array(a) if a.is_empty() => out.push_str("[]"),
        Ordered::Array(a) => {
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

fn write_pretty_object(out: &mut String, m: &[(String, Ordered)], level: usize) {
    if m.is_empty() {
        out.push_str("{}");
        return;
    }
    let mut members: Vec<&(String, Ordered)> = m.iter().collect();
    members.sort_by(|a, b| a.0.cmp(&b.0));
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
/// member in both keeps the request's place and takes the reply's value. (Values
/// that are not objects are logged as they are.)
pub fn format_log_entry(request: &Ordered, reply: &Ordered) -> String {
    let (Some(req), Some(rep)) = (request.members(), reply.members()) else {
        return format_json(reply, false);
    };
    let from_request = req.iter().map(|(k, v)| (k, reply.get(k).unwrap_or(v)));
    let from_reply = rep
        .iter()
        .filter(|(k, _)| request.get(k).is_none())
        .map(|(k, v)| (k, v));
    let mut out = String::new();
    write_compact_members(&mut out, from_request.chain(from_reply));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Ordered {
        Ordered::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn compact_is_python_json_dumps_in_the_order_given() {
        // QEMU 7.2's query-status: not in any order a program could compute.
        let v = parse(r#"{"return":{"status":"prelaunch","singlestep":false,"running":false}}"#);
        assert_eq!(
            format_json(&v, false),
            r#"{"return": {"status": "prelaunch", "singlestep": false, "running": false}}"#
        );
        assert_eq!(
            format_json(
                &parse(r#"{"z": [1, 2.5, null, "x\"y"], "b": {}, "a": []}"#),
                false
            ),
            r#"{"z": [1, 2.5, null, "x\"y"], "b": {}, "a": []}"#
        );
        assert_eq!(
            format_json(&Ordered::String("é\n\u{1}".into()), false),
            "\"é\\n\\u0001\""
        );
        // Floats as Python writes them.
        assert_eq!(
            format_json(
                &parse("[1e16, 1.5e-5, 0.1, 2.0, -0.0, 18446744073709551615]"),
                false
            ),
            "[1e+16, 1.5e-05, 0.1, 2.0, -0.0, 18446744073709551615]"
        );
    }

    #[test]
    fn pretty_is_indented_and_sorted() {
        let v = parse(
            r#"{"return": {"status": "running", "running": true, "e": {}, "l": [1, {"z": 1, "a": []}]}}"#,
        );
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
        assert_eq!(format_json(&parse("{}"), true), "{}");
        assert_eq!(format_json(&parse("[]"), true), "[]");
    }

    #[test]
    fn log_entries_merge_request_and_reply() {
        let req = parse(r#"{"execute": "stop", "arguments": {}}"#);
        let rep = parse(r#"{"return": {}}"#);
        assert_eq!(
            format_log_entry(&req, &rep),
            r#"{"execute": "stop", "arguments": {}, "return": {}}"#
        );
        // An id in both keeps the request's place.
        let req = parse(r#"{"id": 5, "execute": "query-status"}"#);
        let rep = parse(r#"{"return": {"status": "running", "running": true}, "id": 5}"#);
        assert_eq!(
            format_log_entry(&req, &rep),
            r#"{"id": 5, "execute": "query-status", "return": {"status": "running", "running": true}}"#
        );
    }
}
