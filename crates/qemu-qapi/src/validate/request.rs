//! Checking whole requests: the request's own members, the command, then its
//! arguments with the walker over values (`walk`).

use serde_json::{Map, Value};

use super::{closest, json_type_name, CheckError, CheckErrorKind};
use crate::{Schema, SchemaInfo};

/// Commands whose arguments QEMU does not check against their schema
/// (`'gen': false`): it reads the members it knows and passes the rest on.
const UNCHECKED_EXTRA_MEMBERS: &[&str] = &["device_add"];

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
}
