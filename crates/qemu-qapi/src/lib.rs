//! QEMU's QAPI schema as QMP introspection reports it (`query-qmp-schema`):
//! a typed model, lookups by command, event and type name, path queries
//! ("does this QEMU's `blockdev-add` take `aio: io_uring`?"), checks of whole
//! requests as QEMU's input visitor would make them
//! ([`Schema::check_command`], see [`validate`]), and schemas recorded from the
//! QEMU versions the project is tested against.
//!
//! ```
//! use qemu_qapi::{Featured, Schema};
//! use serde_json::json;
//!
//! let schema = Schema::from_introspection(&json!([
//!     {"name": "query-status", "meta-type": "command", "arg-type": "0", "ret-type": "1",
//!      "allow-oob": false},
//!     {"name": "0", "meta-type": "object", "members": []},
//!     {"name": "1", "meta-type": "object", "members": [
//!         {"name": "running", "type": "bool"},
//!         {"name": "singlestep", "type": "bool", "features": ["deprecated"]}]},
//!     {"name": "bool", "meta-type": "builtin", "json-type": "boolean"},
//! ]))?;
//! let ret = schema.ret_type("query-status").unwrap();
//! let members = schema.members(ret);
//! assert_eq!(members.len(), 2);
//! assert!(members[1].is_deprecated());
//! assert!(schema.path_exists("query-status/ret-type/running/!boolean"));
//! # Ok::<(), qemu_qapi::SchemaError>(())
//! ```
//!
//! Type names other than builtins (`"123"`) are not part of QEMU's ABI: they
//! change from build to build. Reach types from commands and events
//! ([`Schema::arg_type`], [`Schema::query`]), not by name.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod codegen;
mod diff;
pub mod model;
pub mod path;
pub mod recording;
pub mod typed;
pub mod validate;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde_json::Value;

pub use diff::{describe, diff, Change, ChangeKind, Group, Part, SchemaDiff};
pub use model::{
    AlternateMember, AlternateType, ArrayType, BuiltinType, CommandType, EnumType, EnumValue,
    EventType, Featured, Member, Meta, ObjectType, SchemaInfo, Variant,
};
pub use path::Found;
pub use recording::Recording;
pub use validate::{CheckError, CheckErrorKind};

/// Why a schema could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// `query-qmp-schema` returns an array; this was not one.
    #[error("query-qmp-schema's return is not an array but {0}")]
    NotAnArray(&'static str),
    /// An element of the array is malformed (no name, no meta-type, a known
    /// meta-type without its fields).
    #[error("schema entity #{index} ({name}): {source}")]
    Entity {
        /// Its position in the array.
        index: usize,
        /// Its name, or `?` if it has none.
        name: String,
        /// What is wrong.
        source: serde_json::Error,
    },
    /// Two entities have the same name, which QEMU guarantees never happens.
    #[error("schema entity name {0:?} appears twice")]
    Duplicate(String),
    /// `query-version`'s return is malformed.
    #[error("query-version's return is malformed: {0}")]
    Version(serde_json::Error),
    /// A recording is malformed.
    #[error("recording: {0}")]
    Recording(String),
}

/// Why [`Schema::fetch`] failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A QMP command failed.
    #[error("{command}: {source}")]
    Qmp {
        /// `query-qmp-schema` or `query-version`.
        command: &'static str,
        /// The failure.
        source: qemu_qmp::Error,
    },
    /// QEMU's answer could not be read as a schema or version.
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// A QEMU version, as `query-version` returns it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QemuVersion {
    /// `10` in 10.0.2.
    pub major: u64,
    /// `0` in 10.0.2.
    pub minor: u64,
    /// `2` in 10.0.2.
    pub micro: u64,
    /// The distribution's package string (` (Debian 1:10.0.2+ds-2...)`), as
    /// QEMU reports it.
    pub package: String,
}

impl QemuVersion {
    /// Reads `query-version`'s return.
    pub fn from_query_version(value: &Value) -> Result<QemuVersion, SchemaError> {
        #[derive(serde::Deserialize)]
        struct Triple {
            major: u64,
            minor: u64,
            micro: u64,
        }
        #[derive(serde::Deserialize)]
        struct Raw {
            qemu: Triple,
            #[serde(default)]
            package: String,
        }
        let raw: Raw = serde::Deserialize::deserialize(value).map_err(SchemaError::Version)?;
        Ok(QemuVersion {
            major: raw.qemu.major,
            minor: raw.qemu.minor,
            micro: raw.qemu.micro,
            package: raw.package,
        })
    }

    /// True for any release of `major.minor`.
    pub fn is(&self, major: u64, minor: u64) -> bool {
        self.major == major && self.minor == minor
    }

    /// True from release `major.minor.0` on.
    pub fn at_least(&self, major: u64, minor: u64) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

impl fmt::Display for QemuVersion {
    /// `10.0.2`, without the package string.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// A QEMU's QAPI schema: every command, event and type its QMP monitor
/// reports, indexed by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    entities: Vec<SchemaInfo>,
    by_name: HashMap<String, usize>,
    commands: BTreeMap<String, usize>,
    events: BTreeMap<String, usize>,
    version: Option<QemuVersion>,
}

impl Schema {
    /// Reads `query-qmp-schema`'s return. Meta-types and fields this crate
    /// does not know (from a newer QEMU) are kept as [`Meta::Unknown`] or
    /// ignored, never an error.
    pub fn from_introspection(value: &Value) -> Result<Schema, SchemaError> {
        let array = match value {
            Value::Array(a) => a,
            Value::Object(_) => return Err(SchemaError::NotAnArray("an object")),
            Value::String(_) => return Err(SchemaError::NotAnArray("a string")),
            Value::Number(_) => return Err(SchemaError::NotAnArray("a number")),
            Value::Bool(_) => return Err(SchemaError::NotAnArray("a boolean")),
            Value::Null => return Err(SchemaError::NotAnArray("null")),
        };
        let mut schema = Schema {
            entities: Vec::with_capacity(array.len()),
            by_name: HashMap::with_capacity(array.len()),
            commands: BTreeMap::new(),
            events: BTreeMap::new(),
            version: None,
        };
        for (index, v) in array.iter().enumerate() {
            let info = SchemaInfo::from_value(v).map_err(|source| SchemaError::Entity {
                index,
                name: v
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned(),
                source,
            })?;
            let i = schema.entities.len();
            if schema.by_name.insert(info.name.clone(), i).is_some() {
                return Err(SchemaError::Duplicate(info.name));
            }
            match info.meta {
                Meta::Command(_) => {
                    schema.commands.insert(info.name.clone(), i);
                }
                Meta::Event(_) => {
                    schema.events.insert(info.name.clone(), i);
                }
                _ => {}
            }
            schema.entities.push(info);
        }
        Ok(schema)
    }

    /// Asks a connected QEMU for its schema (`query-qmp-schema`) and version
    /// (`query-version`), kept together: see [`Schema::version`].
    pub async fn fetch(client: &qemu_qmp::Client) -> Result<Schema, FetchError> {
        let recording = Recording::fetch(client, "").await?;
        Ok(recording.schema()?)
    }

    /// [`Schema::fetch`] through a blocking client.
    pub fn fetch_blocking(client: &qemu_qmp::blocking::Client) -> Result<Schema, FetchError> {
        let recording = Recording::fetch_blocking(client, "")?;
        Ok(recording.schema()?)
    }

    /// The same schema, said to be `version`'s.
    pub fn with_version(mut self, version: QemuVersion) -> Schema {
        self.version = Some(version);
        self
    }

    /// The version of the QEMU this schema came from, when known (from
    /// [`Schema::fetch`], a [`Recording`] or [`Schema::with_version`]).
    pub fn version(&self) -> Option<&QemuVersion> {
        self.version.as_ref()
    }

    /// Every entity, in QEMU's order.
    pub fn entities(&self) -> &[SchemaInfo] {
        &self.entities
    }

    /// The entity named `name`: a command, an event or a type.
    pub fn get(&self, name: &str) -> Option<&SchemaInfo> {
        self.by_name.get(name).map(|&i| &self.entities[i])
    }

    /// The command `name`.
    pub fn command(&self, name: &str) -> Option<&SchemaInfo> {
        self.commands.get(name).map(|&i| &self.entities[i])
    }

    /// True if the command `name` exists.
    pub fn has_command(&self, name: &str) -> bool {
        self.commands.contains_key(name)
    }

    /// The event `name`.
    pub fn event(&self, name: &str) -> Option<&SchemaInfo> {
        self.events.get(name).map(|&i| &self.entities[i])
    }

    /// True if the event `name` exists.
    pub fn has_event(&self, name: &str) -> bool {
        self.events.contains_key(name)
    }

    /// Every command, sorted by name.
    pub fn commands(&self) -> impl Iterator<Item = &SchemaInfo> {
        self.commands.values().map(|&i| &self.entities[i])
    }

    /// Every event, sorted by name.
    pub fn events(&self) -> impl Iterator<Item = &SchemaInfo> {
        self.events.values().map(|&i| &self.entities[i])
    }

    /// The argument type of the command or event `name` (an object type).
    pub fn arg_type(&self, name: &str) -> Option<&SchemaInfo> {
        let e = self.command(name).or_else(|| self.event(name))?;
        let t = match &e.meta {
            Meta::Command(c) => &c.arg_type,
            Meta::Event(ev) => &ev.arg_type,
            _ => return None,
        };
        self.get(t)
    }

    /// The return type of the command `name`.
    pub fn ret_type(&self, name: &str) -> Option<&SchemaInfo> {
        self.get(&self.command(name)?.as_command()?.ret_type)
    }

    /// The values of the enum type `t` (empty if `t` is not an enum).
    pub fn enum_values<'a>(&self, t: &'a SchemaInfo) -> Vec<&'a str> {
        t.as_enum()
            .map(|e| e.values().collect())
            .unwrap_or_default()
    }

    /// Every member of the object type `t`: its own, then those of each
    /// variant (recursively, for unions nested in variants), in the schema's
    /// order. A name may appear more than once, from different variants.
    /// Empty if `t` is not an object type.
    pub fn members<'a>(&'a self, t: &'a SchemaInfo) -> Vec<&'a Member> {
        let mut out = Vec::new();
        self.collect_members(t, &mut out, 8);
        out
    }

    fn collect_members<'a>(&'a self, t: &'a SchemaInfo, out: &mut Vec<&'a Member>, depth: u32) {
        let Some(obj) = t.as_object() else { return };
        out.extend(obj.members.iter());
        if depth == 0 {
            return;
        }
        for v in &obj.variants {
            if let Some(vt) = self.get(&v.type_name) {
                self.collect_members(vt, out, depth - 1);
            }
        }
    }

    /// The member `name` of the object type `t`, or of one of its variants
    /// (the first found, own members first).
    pub fn member<'a>(&'a self, t: &'a SchemaInfo, name: &str) -> Option<&'a Member> {
        self.members(t).into_iter().find(|m| m.name == name)
    }

    /// The variant type of the union `t` for the tag value `case`.
    pub fn variant(&self, t: &SchemaInfo, case: &str) -> Option<&SchemaInfo> {
        self.get(&t.as_object()?.variant(case)?.type_name)
    }

    /// The type of `member`.
    pub fn type_of(&self, member: &Member) -> Option<&SchemaInfo> {
        self.get(&member.type_name)
    }
}

#[cfg(test)]
mod tests;

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
