//! Checking a QMP request against the schema before sending it, as QEMU's
//! dispatcher (`qapi/qmp-dispatch.c`) and QMP input visitor
//! (`qapi/qobject-input-visitor.c`) would: [`Schema::check_command`] and
//! [`Schema::check`].
//!
//! The aim is QEMU's *verdict*: a request this module accepts is one whose
//! arguments QEMU's visitor accepts (the command itself may still fail), and
//! a request it rejects is one QEMU rejects before running the command.
//! Where it knowingly differs from QEMU:
//!
//! - **Integer ranges.** Introspection reports every integer type (`int8`
//!   ... `uint64`, `size`) as `int`, so the checker cannot know a member's
//!   range: it accepts any JSON integer from `-2^63` to `2^64 - 1`. QEMU
//!   rejects `300` for a `uint8`, `-1` for a `size` and `2^63` for an
//!   `int64`; this checker does not.
//! - **The first error.** QEMU stops at the first error in its own visiting
//!   order (members in schema order, then variant members, then unexpected
//!   members, in its hash table's order); so does this checker, in the same
//!   order but with unexpected members in sorted order. The verdict is the
//!   same; the member named may differ when there are several errors.
//! - **`device_add`.** QEMU marshals its arguments by hand (`'gen': false`):
//!   it takes any member besides `driver`, `bus` and `id` as a device
//!   property. The checker accepts unknown members for it.
//! - **Compatibility policies** (`-compat deprecated-input=reject`,
//!   `unstable-input=reject`) are not applied: the checker accepts deprecated
//!   and unstable commands, members and enum values, as QEMU does by default.
//! - **`exec-oob`** is accepted for commands that allow out-of-band
//!   execution; whether the session negotiated the `oob` capability is not
//!   known here.

use std::fmt;

use serde_json::{Map, Value};

use crate::{Meta, Schema, SchemaInfo};

/// Commands whose arguments QEMU does not check against their schema
/// (`'gen': false`): it reads the members it knows and passes the rest on.
const UNCHECKED_EXTRA_MEMBERS: &[&str] = &["device_add"];

/// Why a request would be rejected by QEMU before its command runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}{}", self.command_or_request(), self.path_prefix(), self.kind)]
pub struct CheckError {
    /// The command's name (empty if the request names none).
    pub command: String,
    /// Where the problem is: `execute`, `arguments`,
    /// `arguments.file.filename`, `arguments.keys[2]`, ...
    pub path: String,
    /// What the problem is.
    pub kind: CheckErrorKind,
}

impl CheckError {
    fn command_or_request(&self) -> &str {
        if self.command.is_empty() {
            "request"
        } else {
            &self.command
        }
    }

    fn path_prefix(&self) -> String {
        if self.path.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.path)
        }
    }

    /// The name QEMU gives the member in its error messages: the path
    /// without `arguments.` (`file.filename`, `keys[2]`).
    pub fn qemu_name(&self) -> &str {
        self.path
            .strip_prefix("arguments.")
            .unwrap_or(self.path.as_str())
    }
}

/// What is wrong with a request, for [`CheckError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckErrorKind {
    /// The request has neither `execute` nor `exec-oob`.
    NoCommand,
    /// `execute` or `exec-oob` is not a string, or `arguments` not an object.
    RequestMemberType {
        /// What it must be: `string` or `object`.
        expected: &'static str,
        /// What it is.
        got: &'static str,
    },
    /// A top-level member other than `execute`, `exec-oob`, `arguments`
    /// and `id`, or both `execute` and `exec-oob`.
    UnexpectedRequestMember,
    /// The schema has no such command (QEMU's `CommandNotFound`).
    UnknownCommand {
        /// The closest command name, if one is close.
        did_you_mean: Option<String>,
    },
    /// `exec-oob` for a command without `allow-oob`.
    NoOob,
    /// A mandatory member is missing.
    Missing,
    /// A member the type does not have.
    Unexpected {
        /// The closest member name the type has, if one is close.
        did_you_mean: Option<String>,
    },
    /// A value of the wrong JSON type.
    WrongType {
        /// What the schema wants: `string`, `integer`, `number`, `boolean`,
        /// `null`, `object`, `array`, or an alternate's JSON types joined by
        /// ` or `.
        expected: String,
        /// What the value is.
        got: &'static str,
    },
    /// A string that is not one of the enum's values.
    BadEnumValue {
        /// The value given.
        value: String,
        /// The closest value the enum has, if one is close.
        did_you_mean: Option<String>,
    },
}

fn did_you_mean(s: &Option<String>) -> String {
    match s {
        Some(s) => format!(" (did you mean '{s}'?)"),
        None => String::new(),
    }
}

impl fmt::Display for CheckErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckErrorKind::NoCommand => write!(f, "no 'execute' member"),
            CheckErrorKind::RequestMemberType { expected, got } => {
                write!(f, "expected {expected}, got {got}")
            }
            CheckErrorKind::UnexpectedRequestMember => write!(f, "unexpected member"),
            CheckErrorKind::UnknownCommand { did_you_mean: d } => {
                write!(f, "unknown command{}", did_you_mean(d))
            }
            CheckErrorKind::NoOob => write!(f, "the command does not support out-of-band"),
            CheckErrorKind::Missing => write!(f, "missing"),
            CheckErrorKind::Unexpected { did_you_mean: d } => {
                write!(f, "unexpected member{}", did_you_mean(d))
            }
            CheckErrorKind::WrongType { expected, got } => {
                write!(f, "expected {expected}, got {got}")
            }
            CheckErrorKind::BadEnumValue {
                value,
                did_you_mean: d,
            } => write!(f, "'{value}' is not a valid value{}", did_you_mean(d)),
        }
    }
}

/// The JSON type of `v`, in QAPI's words (QEMU's `QType`s).
pub fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The edit distance between `a` and `b`, in characters: insertions,
/// deletions, substitutions and transpositions of neighbours (`qocde` is one
/// edit from `qcode`).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows of the optimal string alignment table.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(before[j - 2] + 1);
            }
            cur[j] = d;
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `name` by edit distance, if it is close: at most
/// a third of the name's length away (and at least 1, at most 3 edits). Ties
/// go to the candidate whose length is closest, then to the first in
/// alphabetical order.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let len = name.chars().count();
    let limit = (len / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c.chars().count().abs_diff(len), c))
        .filter(|&(d, _, _)| d <= limit)
        .min()
        .map(|(_, _, c)| c.to_owned())
}

/// A type error found at some path, before the command name is attached.
struct Problem {
    path: String,
    kind: CheckErrorKind,
}

type Checked = Result<(), Problem>;

fn problem(path: &str, kind: CheckErrorKind) -> Checked {
    Err(Problem {
        path: path.to_owned(),
        kind,
    })
}

fn child(path: &str, name: &str) -> String {
    format!("{path}.{name}")
}

impl Schema {
    /// Checks a whole QMP request (`{"execute": name, "arguments": {...},
    /// "id": ...}`) as QEMU would before running the command. See the
    /// [module](crate::validate) for where the verdict may differ.
    ///
    /// ```
    /// use qemu_qapi::Schema;
    /// use serde_json::json;
    ///
    /// let schema = Schema::from_introspection(&json!([
    ///     {"name": "qom-get", "meta-type": "command", "arg-type": "0", "ret-type": "any"},
    ///     {"name": "0", "meta-type": "object", "members": [
    ///         {"name": "path", "type": "str"}, {"name": "property", "type": "str"}]},
    ///     {"name": "str", "meta-type": "builtin", "json-type": "string"},
    ///     {"name": "any", "meta-type": "builtin", "json-type": "value"},
    /// ]))?;
    /// let request = json!({"execute": "qom-get",
    ///                      "arguments": {"path": "/machine", "property": 1}});
    /// let err = schema.check_command(request.as_object().unwrap()).unwrap_err();
    /// assert_eq!(err.path, "arguments.property");
    /// assert_eq!(err.to_string(), "qom-get: arguments.property: expected string, got integer");
    /// let err = schema.check("qom-gte", None).unwrap_err();
    /// assert_eq!(err.to_string(), "qom-gte: execute: unknown command (did you mean 'qom-get'?)");
    /// # Ok::<(), qemu_qapi::SchemaError>(())
    /// ```
    pub fn check_command(&self, request: &Map<String, Value>) -> Result<(), CheckError> {
        let mut name: Option<(&str, bool)> = None;
        let err = |command: &str, path: &str, kind| CheckError {
            command: command.to_owned(),
            path: path.to_owned(),
            kind,
        };
        for key in ["execute", "exec-oob"] {
            if let Some(v) = request.get(key) {
                let Value::String(s) = v else {
                    return Err(err(
                        "",
                        key,
                        CheckErrorKind::RequestMemberType {
                            expected: "string",
                            got: json_type_name(v),
                        },
                    ));
                };
                if name.is_some() {
                    return Err(err(s, key, CheckErrorKind::UnexpectedRequestMember));
                }
                name = Some((s, key == "exec-oob"));
            }
        }
        let command = name.map(|(n, _)| n).unwrap_or("");
        for key in request.keys() {
            if !matches!(key.as_str(), "execute" | "exec-oob" | "arguments" | "id") {
                return Err(err(command, key, CheckErrorKind::UnexpectedRequestMember));
            }
        }
        let Some((command, oob)) = name else {
            return Err(err("", "execute", CheckErrorKind::NoCommand));
        };
        let arguments = request.get("arguments");
        if let Some(a) = arguments {
            if !a.is_object() {
                return Err(err(
                    command,
                    "arguments",
                    CheckErrorKind::RequestMemberType {
                        expected: "object",
                        got: json_type_name(a),
                    },
                ));
            }
        }
        let key = if oob { "exec-oob" } else { "execute" };
        self.check_arguments(command, key, oob, arguments)
    }

    /// Checks the command `name` with `arguments` (`None`: no `arguments`
    /// member, the same as `{}` for QEMU), as [`Schema::check_command`]
    /// does for `{"execute": name, "arguments": arguments}`.
    pub fn check(&self, name: &str, arguments: Option<&Value>) -> Result<(), CheckError> {
        if let Some(a) = arguments {
            if !a.is_object() {
                return Err(CheckError {
                    command: name.to_owned(),
                    path: "arguments".to_owned(),
                    kind: CheckErrorKind::RequestMemberType {
                        expected: "object",
                        got: json_type_name(a),
                    },
                });
            }
        }
        self.check_arguments(name, "execute", false, arguments)
    }

    fn check_arguments(
        &self,
        name: &str,
        key: &str,
        oob: bool,
        arguments: Option<&Value>,
    ) -> Result<(), CheckError> {
        let err = |path: &str, kind| CheckError {
            command: name.to_owned(),
            path: path.to_owned(),
            kind,
        };
        let Some(command) = self.command(name).and_then(SchemaInfo::as_command) else {
            let did_you_mean = closest(name, self.commands().map(|c| c.name.as_str()));
            return Err(err(key, CheckErrorKind::UnknownCommand { did_you_mean }));
        };
        if oob && !command.allow_oob {
            return Err(err(key, CheckErrorKind::NoOob));
        }
        let empty = Map::new();
        let args = arguments.and_then(Value::as_object).unwrap_or(&empty);
        let Some(arg_type) = self.get(&command.arg_type) else {
            return Ok(());
        };
        let lenient = UNCHECKED_EXTRA_MEMBERS.contains(&name);
        self.check_object(arg_type, args, "arguments", lenient)
            .map_err(|p| err(&p.path, p.kind))
    }

    /// Checks an object value against the object type `t`: its members,
    /// its variant's, then that nothing else is there.
    fn check_object(
        &self,
        t: &SchemaInfo,
        value: &Map<String, Value>,
        path: &str,
        lenient: bool,
    ) -> Checked {
        let mut known: Vec<&str> = Vec::new();
        self.check_members(t, value, path, &mut known, 8)?;
        if lenient {
            return Ok(());
        }
        let mut extra: Vec<&String> = value
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .collect();
        extra.sort();
        if let Some(k) = extra.first() {
            let did_you_mean = closest(k, known.iter().copied());
            return problem(&child(path, k), CheckErrorKind::Unexpected { did_you_mean });
        }
        Ok(())
    }

    fn check_members<'a>(
        &'a self,
        t: &'a SchemaInfo,
        value: &Map<String, Value>,
        path: &str,
        known: &mut Vec<&'a str>,
        depth: u32,
    ) -> Checked {
        let Some(obj) = t.as_object() else {
            return Ok(());
        };
        for m in &obj.members {
            known.push(&m.name);
            match value.get(&m.name) {
                Some(v) => self.check_value(&m.type_name, v, &child(path, &m.name))?,
                None if m.is_optional() => {}
                None => return problem(&child(path, &m.name), CheckErrorKind::Missing),
            }
        }
        if depth == 0 {
            return Ok(());
        }
        if let Some(tag) = &obj.tag {
            // The tag is a mandatory enum member: checked above.
            if let Some(Value::String(case)) = value.get(tag) {
                if let Some(vt) = obj.variant(case).and_then(|v| self.get(&v.type_name)) {
                    self.check_members(vt, value, path, known, depth - 1)?;
                }
            }
        }
        Ok(())
    }

    /// Checks `value` against the type named `t`.
    fn check_value(&self, t: &str, value: &Value, path: &str) -> Checked {
        let Some(info) = self.get(t) else {
            // A type the schema does not define: nothing to check against.
            return Ok(());
        };
        let wrong = |expected: &str| {
            problem(
                path,
                CheckErrorKind::WrongType {
                    expected: expected.to_owned(),
                    got: json_type_name(value),
                },
            )
        };
        match &info.meta {
            Meta::Builtin(b) => match (b.json_type.as_str(), value) {
                ("string", Value::String(_)) => Ok(()),
                ("int", Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(()),
                ("int", Value::Number(_)) => wrong("integer"),
                ("number", Value::Number(_)) => Ok(()),
                ("boolean", Value::Bool(_)) => Ok(()),
                ("null", Value::Null) => Ok(()),
                ("object", Value::Object(_)) => Ok(()),
                ("array", Value::Array(_)) => Ok(()),
                ("value", _) => Ok(()),
                ("string" | "number" | "boolean" | "null" | "object" | "array", _) => {
                    wrong(&b.json_type)
                }
                ("int", _) => wrong("integer"),
                // A JSON type this crate does not know.
                _ => Ok(()),
            },
            Meta::Enum(e) => {
                let Value::String(s) = value else {
                    return wrong("string");
                };
                if e.value(s).is_some() {
                    Ok(())
                } else {
                    problem(
                        path,
                        CheckErrorKind::BadEnumValue {
                            value: s.clone(),
                            did_you_mean: closest(s, e.values()),
                        },
                    )
                }
            }
            Meta::Array(a) => {
                let Value::Array(items) = value else {
                    return wrong("array");
                };
                for (i, item) in items.iter().enumerate() {
                    self.check_value(&a.element_type, item, &format!("{path}[{i}]"))?;
                }
                Ok(())
            }
            Meta::Object(_) => {
                let Value::Object(map) = value else {
                    return wrong("object");
                };
                self.check_object(info, map, path, false)
            }
            Meta::Alternate(alt) => {
                // QAPI guarantees at most one branch per JSON type; QEMU
                // picks it by the value's type, then checks the value.
                let mut expected = Vec::new();
                for m in &alt.members {
                    let wants = self.json_type_of(&m.type_name);
                    if wants.is_empty() || wants.iter().any(|w| matches_json(w, value)) {
                        return self.check_value(&m.type_name, value, path);
                    }
                    expected.extend(wants);
                }
                expected.dedup();
                wrong(&expected.join(" or "))
            }
            Meta::Command(_) | Meta::Event(_) | Meta::Unknown(_) => Ok(()),
        }
    }

    /// The JSON types a value of the type named `t` may have (empty: any).
    fn json_type_of(&self, t: &str) -> Vec<&'static str> {
        match self.get(t).map(|i| &i.meta) {
            Some(Meta::Builtin(b)) => match b.json_type.as_str() {
                "string" => vec!["string"],
                "int" => vec!["integer"],
                "number" => vec!["number", "integer"],
                "boolean" => vec!["boolean"],
                "null" => vec!["null"],
                "object" => vec!["object"],
                "array" => vec!["array"],
                _ => vec![],
            },
            Some(Meta::Enum(_)) => vec!["string"],
            Some(Meta::Array(_)) => vec!["array"],
            Some(Meta::Object(_)) => vec!["object"],
            _ => vec![],
        }
    }
}

/// True if `value`'s JSON type is `json_type` (in [`json_type_name`]'s
/// words).
fn matches_json(json_type: &str, value: &Value) -> bool {
    json_type_name(value) == json_type
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::{closest, edit_distance, CheckError, CheckErrorKind};
    use crate::Schema;

    /// A fragment shaped like QEMU's: a flat union on `driver` whose branches
    /// have an enum, an alternate, an array and a nested struct; every
    /// builtin; a command without arguments and one with `allow-oob`.
    fn schema() -> Schema {
        Schema::from_introspection(&json!([
            {"name": "blockdev-add", "meta-type": "command", "arg-type": "0", "ret-type": "1"},
            {"name": "query-status", "meta-type": "command", "arg-type": "1", "ret-type": "1"},
            {"name": "query-stats", "meta-type": "command", "arg-type": "1", "ret-type": "1"},
            {"name": "x-oob", "meta-type": "command", "arg-type": "1", "ret-type": "1",
             "allow-oob": true},
            {"name": "builtins", "meta-type": "command", "arg-type": "9", "ret-type": "1"},
            {"name": "0", "meta-type": "object",
             "members": [
                {"name": "driver", "type": "2"},
                {"name": "node-name", "type": "str", "default": null},
                {"name": "cache", "type": "8", "default": null}],
             "tag": "driver",
             "variants": [{"case": "file", "type": "4"}, {"case": "qcow2", "type": "5"}]},
            {"name": "1", "meta-type": "object", "members": []},
            {"name": "2", "meta-type": "enum", "values": ["file", "qcow2", "null-co"]},
            {"name": "4", "meta-type": "object", "members": [
                {"name": "filename", "type": "str"},
                {"name": "aio", "type": "6", "default": null}]},
            {"name": "5", "meta-type": "object", "members": [
                {"name": "file", "type": "7"},
                {"name": "cache-sizes", "type": "[int]", "default": null}]},
            {"name": "6", "meta-type": "enum", "values": ["threads", "native", "io_uring"]},
            {"name": "7", "meta-type": "alternate",
             "members": [{"type": "0"}, {"type": "str"}, {"type": "null"}]},
            {"name": "8", "meta-type": "object", "members": [
                {"name": "direct", "type": "bool", "default": null}]},
            {"name": "9", "meta-type": "object", "members": [
                {"name": "s", "type": "str", "default": null},
                {"name": "i", "type": "int", "default": null},
                {"name": "n", "type": "number", "default": null},
                {"name": "b", "type": "bool", "default": null},
                {"name": "z", "type": "null", "default": null},
                {"name": "a", "type": "any", "default": null},
                {"name": "e", "type": "6", "default": null},
                {"name": "l", "type": "[int]", "default": null}]},
            {"name": "[int]", "meta-type": "array", "element-type": "int"},
            {"name": "str", "meta-type": "builtin", "json-type": "string"},
            {"name": "int", "meta-type": "builtin", "json-type": "int"},
            {"name": "number", "meta-type": "builtin", "json-type": "number"},
            {"name": "bool", "meta-type": "builtin", "json-type": "boolean"},
            {"name": "null", "meta-type": "builtin", "json-type": "null"},
            {"name": "any", "meta-type": "builtin", "json-type": "value"},
        ]))
        .unwrap()
    }

    fn check(request: Value) -> Result<(), CheckError> {
        schema().check_command(request.as_object().unwrap())
    }

    /// The error's path and message.
    fn fails(request: Value) -> (String, String) {
        let e = check(request.clone()).expect_err(&request.to_string());
        (e.path.clone(), e.to_string())
    }

    fn blockdev(args: Value) -> Value {
        json!({"execute": "blockdev-add", "arguments": args})
    }

    #[test]
    fn edit_distance_counts_edits_and_transpositions() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("", "ab"), 2);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("qcode", "qocde"), 1);
        assert_eq!(edit_distance("node-name", "node_name"), 1);
        assert_eq!(
            closest("query-stauts", ["query-status", "query-stats"]).as_deref(),
            Some("query-status")
        );
        assert_eq!(closest("zzz", ["query-status"]), None);
    }

    #[test]
    fn requests_as_a_whole() {
        assert!(check(json!({"execute": "query-status"})).is_ok());
        assert!(check(json!({"execute": "query-status", "arguments": {}, "id": 1})).is_ok());
        assert!(check(json!({"exec-oob": "x-oob", "id": "a"})).is_ok());
        assert_eq!(
            fails(json!({"exec-oob": "query-status"})).1,
            "query-status: exec-oob: the command does not support out-of-band"
        );
        assert_eq!(fails(json!({"id": 1})).0, "execute");
        assert_eq!(
            fails(json!({"execute": 1})).1,
            "request: execute: expected string, got integer"
        );
        assert_eq!(
            fails(json!({"execute": "query-status", "arguments": []})).1,
            "query-status: arguments: expected object, got array"
        );
        assert_eq!(
            fails(json!({"execute": "query-status", "bogus": 1})).1,
            "query-status: bogus: unexpected member"
        );
        assert_eq!(
            fails(json!({"execute": "query-status", "exec-oob": "x-oob"})).0,
            "exec-oob"
        );
    }

    #[test]
    fn unknown_commands_suggest_the_closest() {
        let e = check(json!({"execute": "query-stauts"})).unwrap_err();
        assert_eq!(
            e.kind,
            CheckErrorKind::UnknownCommand {
                did_you_mean: Some("query-status".into())
            }
        );
        assert_eq!(
            e.to_string(),
            "query-stauts: execute: unknown command (did you mean 'query-status'?)"
        );
        assert_eq!(
            fails(json!({"execute": "frobnicate"})).1,
            "frobnicate: execute: unknown command"
        );
        assert!(schema().check("query-status", None).is_ok());
        assert!(schema().check("query-status", Some(&json!({}))).is_ok());
        assert_eq!(
            schema()
                .check("query-status", Some(&json!(1)))
                .unwrap_err()
                .path,
            "arguments"
        );
    }

    #[test]
    fn commands_without_arguments_take_none() {
        assert_eq!(
            fails(json!({"execute": "query-status", "arguments": {"verbose": true}})).1,
            "query-status: arguments.verbose: unexpected member"
        );
    }

    #[test]
    fn flat_unions_check_the_branch_the_tag_selects() {
        assert!(check(blockdev(json!({"driver": "file", "filename": "/x"}))).is_ok());
        assert!(check(blockdev(json!({"driver": "null-co"}))).is_ok());
        assert!(check(blockdev(json!({"driver": "qcow2", "file": "n0",
                                      "cache-sizes": [1, 2]})))
        .is_ok());
        // The discriminator missing, or not a value of its enum.
        assert_eq!(
            fails(blockdev(json!({"filename": "/x"}))).1,
            "blockdev-add: arguments.driver: missing"
        );
        assert_eq!(
            fails(blockdev(json!({"driver": "flie", "filename": "/x"}))).1,
            "blockdev-add: arguments.driver: 'flie' is not a valid value (did you mean 'file'?)"
        );
        // A member of the branch missing; one of another branch.
        assert_eq!(
            fails(blockdev(json!({"driver": "file"}))).1,
            "blockdev-add: arguments.filename: missing"
        );
        assert_eq!(
            fails(blockdev(
                json!({"driver": "file", "filename": "/x", "file": "n0"})
            ))
            .1,
            "blockdev-add: arguments.file: unexpected member"
        );
        assert_eq!(
            fails(blockdev(json!({"driver": "null-co", "filename": "/x"}))).0,
            "arguments.filename"
        );
        // Misspelt: the closest member of the branch.
        assert_eq!(
            fails(blockdev(
                json!({"driver": "file", "filename": "/x", "node_name": "a"})
            ))
            .1,
            "blockdev-add: arguments.node_name: unexpected member (did you mean 'node-name'?)"
        );
        assert_eq!(
            fails(blockdev(
                json!({"driver": "file", "filename": "/x", "aio": "uring"})
            ))
            .1,
            "blockdev-add: arguments.aio: 'uring' is not a valid value"
        );
        assert_eq!(
            fails(blockdev(
                json!({"driver": "file", "filename": "/x", "aio": "natve"})
            ))
            .1,
            "blockdev-add: arguments.aio: 'natve' is not a valid value (did you mean 'native'?)"
        );
    }

    #[test]
    fn nested_structs_arrays_and_alternates() {
        assert_eq!(
            fails(blockdev(
                json!({"driver": "null-co", "cache": {"direct": 1}})
            ))
            .1,
            "blockdev-add: arguments.cache.direct: expected boolean, got integer"
        );
        assert_eq!(
            fails(blockdev(
                json!({"driver": "null-co", "cache": {"direkt": true}})
            ))
            .1,
            "blockdev-add: arguments.cache.direkt: unexpected member (did you mean 'direct'?)"
        );
        assert_eq!(
            fails(blockdev(json!({"driver": "null-co", "cache": []}))).1,
            "blockdev-add: arguments.cache: expected object, got array"
        );
        assert_eq!(
            fails(blockdev(
                json!({"driver": "qcow2", "file": "n", "cache-sizes": [1, "2"]})
            ))
            .1,
            "blockdev-add: arguments.cache-sizes[1]: expected integer, got string"
        );
        // The alternate: a node name, a nested definition, or null.
        for file in [
            json!("n0"),
            json!(null),
            json!({"driver": "file", "filename": "/x"}),
        ] {
            assert!(check(blockdev(json!({"driver": "qcow2", "file": file}))).is_ok());
        }
        assert_eq!(
            fails(blockdev(json!({"driver": "qcow2", "file": 1}))).1,
            "blockdev-add: arguments.file: expected object or string or null, got integer"
        );
        assert_eq!(
            fails(blockdev(
                json!({"driver": "qcow2", "file": {"driver": "file"}})
            ))
            .1,
            "blockdev-add: arguments.file.filename: missing"
        );
        assert_eq!(
            fails(blockdev(json!({"driver": "qcow2",
                                  "file": {"driver": "qcow2", "file": {"driver": "nul"}}})))
            .0,
            "arguments.file.file.driver"
        );
    }

    #[test]
    fn builtins() {
        let ok = |args: Value| {
            schema()
                .check("builtins", Some(&args))
                .unwrap_or_else(|e| panic!("{args}: {e}"))
        };
        let bad = |args: Value| {
            schema()
                .check("builtins", Some(&args))
                .expect_err(&args.to_string())
                .to_string()
        };
        ok(
            json!({"s": "x", "i": -3, "n": 1.5, "b": false, "z": null, "e": "native",
                  "l": [], "a": {"any": ["thing"]}}),
        );
        // `number` takes integers; `int` takes anything from -2^63 to 2^64 - 1.
        ok(json!({"n": 2, "i": u64::MAX}));
        ok(json!({"i": i64::MIN}));
        for a in [json!(null), json!(1), json!("s"), json!([1]), json!({})] {
            ok(json!({ "a": a }));
        }
        assert_eq!(
            bad(json!({"i": 1.0})),
            "builtins: arguments.i: expected integer, got number"
        );
        assert_eq!(
            bad(json!({"i": 1e20})),
            "builtins: arguments.i: expected integer, got number"
        );
        assert_eq!(
            bad(json!({"i": "1"})),
            "builtins: arguments.i: expected integer, got string"
        );
        assert_eq!(
            bad(json!({"n": "1"})),
            "builtins: arguments.n: expected number, got string"
        );
        assert_eq!(
            bad(json!({"b": "true"})),
            "builtins: arguments.b: expected boolean, got string"
        );
        assert_eq!(
            bad(json!({"s": null})),
            "builtins: arguments.s: expected string, got null"
        );
        assert_eq!(
            bad(json!({"z": 0})),
            "builtins: arguments.z: expected null, got integer"
        );
        assert_eq!(
            bad(json!({"e": 1})),
            "builtins: arguments.e: expected string, got integer"
        );
        assert_eq!(
            bad(json!({"l": 1})),
            "builtins: arguments.l: expected array, got integer"
        );
    }

    #[test]
    fn the_first_error_in_visiting_order() {
        // Members in schema order, then the branch's, then the unexpected.
        assert_eq!(
            fails(blockdev(
                json!({"driver": "file", "node-name": 1, "zzz": 1})
            ))
            .0,
            "arguments.node-name"
        );
        assert_eq!(
            fails(blockdev(json!({"driver": "file", "zzz": 1}))).0,
            "arguments.filename"
        );
        assert_eq!(
            fails(blockdev(
                json!({"driver": "file", "filename": "/x", "zzz": 1, "aaa": 1})
            ))
            .0,
            "arguments.aaa"
        );
    }

    #[test]
    fn qemu_names_members_without_arguments() {
        let e = check(blockdev(
            json!({"driver": "qcow2", "file": {"driver": "file"}}),
        ))
        .unwrap_err();
        assert_eq!(e.qemu_name(), "file.filename");
        assert_eq!(e.command, "blockdev-add");
    }
}
