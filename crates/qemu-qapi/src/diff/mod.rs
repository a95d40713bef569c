//! What changed between two schemas, as a management application sees it
//! when it moves from one QEMU to the next: commands and events added and
//! removed, and for each command and event that both have, the members of
//! its arguments (or event data) and of its return value added and removed,
//! made optional or mandatory, of another type, enum values added and
//! removed, and `deprecated`/`unstable` (any) features added and removed.
//!
//! Types are compared by structure, reached from the command or event by
//! member path: type names other than builtins are numbers that change
//! with every build, and mean nothing. A member's type is described by its
//! JSON type (`string`, `int`, `boolean`, ...), `enum`, `object`,
//! `alternate` or `array of ...`; two members whose descriptions differ
//! have changed type, two enums are compared value by value, two objects
//! member by member and variant by variant, two alternates branch by
//! branch (branches matched by description).
//!
//! ```
//! use qemu_qapi::{diff, Schema};
//! use serde_json::json;
//!
//! let old = Schema::from_introspection(&json!([
//!     {"name": "query-status", "meta-type": "command", "arg-type": "0", "ret-type": "1"},
//!     {"name": "0", "meta-type": "object", "members": []},
//!     {"name": "1", "meta-type": "object", "members": [
//!         {"name": "running", "type": "bool"},
//!         {"name": "singlestep", "type": "bool", "features": ["deprecated"]}]},
//!     {"name": "bool", "meta-type": "builtin", "json-type": "boolean"},
//! ]))?;
//! let new = Schema::from_introspection(&json!([
//!     {"name": "query-status", "meta-type": "command", "arg-type": "9", "ret-type": "8"},
//!     {"name": "9", "meta-type": "object", "members": []},
//!     {"name": "8", "meta-type": "object", "members": [{"name": "running", "type": "bool"}]},
//!     {"name": "bool", "meta-type": "builtin", "json-type": "boolean"},
//! ]))?;
//! let d = diff(&old, &new);
//! assert_eq!(d.to_string(), "types:\n  query-status return: member singlestep removed\n");
//! # Ok::<(), qemu_qapi::SchemaError>(())
//! ```

mod change;
mod compare;
mod render;

pub use change::{Change, ChangeKind, Group, Part, SchemaDiff};
pub use compare::diff;
pub use render::describe;

#[cfg(test)]
mod tests;
