//! The walker over values: an object's members and its variant's, arrays,
//! alternates, enums and builtins, checked against their types as QEMU's
//! input visitor would.

use serde_json::{Map, Value};

use super::{closest, CheckErrorKind};
use crate::{Meta, Schema, SchemaInfo};

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

/// A type error found at some path, before the command name is attached.
pub(super) struct Problem {
    pub(super) path: String,
    pub(super) kind: CheckErrorKind,
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
    /// Checks an object value against the object type `t`: its members,
    /// its variant's, then that nothing else is there.
    pub(super) fn check_object(
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
