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

use std::collections::{BTreeSet, HashSet};
use std::fmt;

use serde_json::{json, Value};

use crate::{Featured, Member, Meta, ObjectType, Schema, SchemaInfo};

/// Which group of the report a change belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    /// A command added or removed, or its own features.
    Commands,
    /// An event added or removed, or its own features.
    Events,
    /// A change inside the arguments, return value or data of a command or
    /// event that both schemas have.
    Types,
}

impl Group {
    /// `commands`, `events` or `types`.
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Commands => "commands",
            Group::Events => "events",
            Group::Types => "types",
        }
    }
}

/// Where in a command or event a change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// The command or event itself.
    Itself,
    /// A command's arguments.
    Arguments,
    /// An event's data.
    Data,
    /// A command's return value.
    Return,
}

impl Part {
    /// `""`, `arguments`, `data` or `return`.
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Itself => "",
            Part::Arguments => "arguments",
            Part::Data => "data",
            Part::Return => "return",
        }
    }
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangeKind {
    /// The command appeared.
    CommandAdded,
    /// The command went away.
    CommandRemoved,
    /// The event appeared.
    EventAdded,
    /// The event went away.
    EventRemoved,
    /// A member appeared in the object at the path.
    MemberAdded {
        /// Its name.
        name: String,
        /// Whether it may be left out.
        optional: bool,
    },
    /// A member of the object at the path went away.
    MemberRemoved {
        /// Its name.
        name: String,
    },
    /// The member at the path may now be left out.
    BecameOptional,
    /// The member at the path must now be given.
    BecameMandatory,
    /// The type at the path is another kind of type.
    TypeChanged {
        /// The old type, described (`string`, `enum`, `array of int`, ...).
        old: String,
        /// The new type, described.
        new: String,
    },
    /// The enum at the path has a new value.
    EnumValueAdded {
        /// The value.
        value: String,
    },
    /// The enum at the path lost a value.
    EnumValueRemoved {
        /// The value.
        value: String,
    },
    /// The union at the path has a variant for a new tag value.
    VariantAdded {
        /// The tag value.
        case: String,
    },
    /// The union at the path lost the variant for a tag value.
    VariantRemoved {
        /// The tag value.
        case: String,
    },
    /// The alternate at the path may now be of another type.
    BranchAdded {
        /// The branch's type, described.
        branch: String,
    },
    /// The alternate at the path may no longer be of a type.
    BranchRemoved {
        /// The branch's type, described.
        branch: String,
    },
    /// The command, event, member or type at the path has a new feature.
    FeatureAdded {
        /// `deprecated`, `unstable`, ...
        feature: String,
    },
    /// The command, event, member or type at the path lost a feature.
    FeatureRemoved {
        /// `deprecated`, `unstable`, ...
        feature: String,
    },
    /// A value of the enum at the path has a new feature.
    EnumValueFeatureAdded {
        /// The enum value.
        value: String,
        /// The feature.
        feature: String,
    },
    /// A value of the enum at the path lost a feature.
    EnumValueFeatureRemoved {
        /// The enum value.
        value: String,
        /// The feature.
        feature: String,
    },
}

impl ChangeKind {
    /// A short kebab-case name, as in the JSON output (`member-added`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            ChangeKind::CommandAdded => "command-added",
            ChangeKind::CommandRemoved => "command-removed",
            ChangeKind::EventAdded => "event-added",
            ChangeKind::EventRemoved => "event-removed",
            ChangeKind::MemberAdded { .. } => "member-added",
            ChangeKind::MemberRemoved { .. } => "member-removed",
            ChangeKind::BecameOptional => "became-optional",
            ChangeKind::BecameMandatory => "became-mandatory",
            ChangeKind::TypeChanged { .. } => "type-changed",
            ChangeKind::EnumValueAdded { .. } => "enum-value-added",
            ChangeKind::EnumValueRemoved { .. } => "enum-value-removed",
            ChangeKind::VariantAdded { .. } => "variant-added",
            ChangeKind::VariantRemoved { .. } => "variant-removed",
            ChangeKind::BranchAdded { .. } => "branch-added",
            ChangeKind::BranchRemoved { .. } => "branch-removed",
            ChangeKind::FeatureAdded { .. } => "feature-added",
            ChangeKind::FeatureRemoved { .. } => "feature-removed",
            ChangeKind::EnumValueFeatureAdded { .. } => "enum-value-feature-added",
            ChangeKind::EnumValueFeatureRemoved { .. } => "enum-value-feature-removed",
        }
    }
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeKind::CommandAdded => write!(f, "command added"),
            ChangeKind::CommandRemoved => write!(f, "command removed"),
            ChangeKind::EventAdded => write!(f, "event added"),
            ChangeKind::EventRemoved => write!(f, "event removed"),
            ChangeKind::MemberAdded { name, optional } => write!(
                f,
                "member {name} added ({})",
                if *optional { "optional" } else { "mandatory" }
            ),
            ChangeKind::MemberRemoved { name } => write!(f, "member {name} removed"),
            ChangeKind::BecameOptional => write!(f, "now optional"),
            ChangeKind::BecameMandatory => write!(f, "now mandatory"),
            ChangeKind::TypeChanged { old, new } => write!(f, "type {old} -> {new}"),
            ChangeKind::EnumValueAdded { value } => write!(f, "enum value {value} added"),
            ChangeKind::EnumValueRemoved { value } => write!(f, "enum value {value} removed"),
            ChangeKind::VariantAdded { case } => write!(f, "variant +{case} added"),
            ChangeKind::VariantRemoved { case } => write!(f, "variant +{case} removed"),
            ChangeKind::BranchAdded { branch } => write!(f, "alternate branch {branch} added"),
            ChangeKind::BranchRemoved { branch } => {
                write!(f, "alternate branch {branch} removed")
            }
            ChangeKind::FeatureAdded { feature } => write!(f, "feature {feature} added"),
            ChangeKind::FeatureRemoved { feature } => write!(f, "feature {feature} removed"),
            ChangeKind::EnumValueFeatureAdded { value, feature } => {
                write!(f, "enum value {value}: feature {feature} added")
            }
            ChangeKind::EnumValueFeatureRemoved { value, feature } => {
                write!(f, "enum value {value}: feature {feature} removed")
            }
        }
    }
}

/// One change: in which command or event, in which part of it, at which
/// member path, what.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Change {
    /// The group of the report.
    pub group: Group,
    /// The command or event.
    pub name: String,
    /// Its arguments, data or return value, or itself.
    pub part: Part,
    /// The member path from the part, `.`-separated; a variant is `+CASE`
    /// (`+file.aio`: the member `aio` of the variant `file`). Empty for the
    /// part itself.
    pub path: String,
    /// What changed.
    pub kind: ChangeKind,
}

impl Change {
    /// The change as a JSON object: `group`, `name`, `part` (`""` for the
    /// command or event itself), `path`, `change` ([`ChangeKind::name`]),
    /// the change's own fields (`member`, `optional`, `value`, `case`,
    /// `branch`, `feature`, `old`, `new`) and `text`, the report's line.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "group": self.group.as_str(),
            "name": self.name,
            "part": self.part.as_str(),
            "path": self.path,
            "change": self.kind.name(),
            "text": self.to_string(),
        });
        let o = v.as_object_mut().expect("an object");
        let mut put = |k: &str, x: Value| {
            o.insert(k.to_owned(), x);
        };
        match &self.kind {
            ChangeKind::MemberAdded { name, optional } => {
                put("member", json!(name));
                put("optional", json!(optional));
            }
            ChangeKind::MemberRemoved { name } => put("member", json!(name)),
            ChangeKind::TypeChanged { old, new } => {
                put("old", json!(old));
                put("new", json!(new));
            }
            ChangeKind::EnumValueAdded { value } | ChangeKind::EnumValueRemoved { value } => {
                put("value", json!(value))
            }
            ChangeKind::VariantAdded { case } | ChangeKind::VariantRemoved { case } => {
                put("case", json!(case))
            }
            ChangeKind::BranchAdded { branch } | ChangeKind::BranchRemoved { branch } => {
                put("branch", json!(branch))
            }
            ChangeKind::FeatureAdded { feature } | ChangeKind::FeatureRemoved { feature } => {
                put("feature", json!(feature))
            }
            ChangeKind::EnumValueFeatureAdded { value, feature }
            | ChangeKind::EnumValueFeatureRemoved { value, feature } => {
                put("value", json!(value));
                put("feature", json!(feature));
            }
            _ => {}
        }
        v
    }
}

impl fmt::Display for Change {
    /// `blockdev-add arguments +file.aio: enum value io_uring added`,
    /// `blockdev-set-active: command added`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if self.part != Part::Itself {
            write!(f, " {}", self.part.as_str())?;
        }
        if !self.path.is_empty() {
            write!(f, " {}", self.path)?;
        }
        write!(f, ": {}", self.kind)
    }
}

/// The changes from one schema to another, sorted by group, command or
/// event name, part, path and change: see [`diff`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SchemaDiff {
    /// Every change, sorted, without duplicates.
    pub changes: Vec<Change>,
}

impl SchemaDiff {
    /// True if nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The changes of one group.
    pub fn group(&self, group: Group) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(move |c| c.group == group)
    }

    /// The report's lines ([`Change`]'s `Display`), without the group
    /// headings.
    pub fn lines(&self) -> Vec<String> {
        self.changes.iter().map(|c| c.to_string()).collect()
    }

    /// `{"changes": [...]}`, each change as [`Change::to_json`].
    pub fn to_json(&self) -> Value {
        json!({"changes": self.changes.iter().map(Change::to_json).collect::<Vec<_>>()})
    }
}

impl fmt::Display for SchemaDiff {
    /// The report: for each group with changes, a heading (`commands:`,
    /// `events:`, `types:`), then one indented line per change.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for group in [Group::Commands, Group::Events, Group::Types] {
            let mut first = true;
            for c in self.group(group) {
                if first {
                    writeln!(f, "{}:", group.as_str())?;
                    first = false;
                }
                writeln!(f, "  {c}")?;
            }
        }
        Ok(())
    }
}

/// What changed from `old` to `new`, as a management application sees it:
/// commands and events added and removed; in the commands and events both
/// have, members, enum values, union variants and alternate branches added
/// and removed, members made optional or mandatory or given another type,
/// features added and removed. Types are compared by structure (see
/// [`describe`]), from the command or event by member path.
pub fn diff(old: &Schema, new: &Schema) -> SchemaDiff {
    let mut d = Differ {
        old,
        new,
        changes: BTreeSet::new(),
    };
    for c in old.commands() {
        match new.command(&c.name) {
            None => d.root(Group::Commands, &c.name, ChangeKind::CommandRemoved),
            Some(n) => d.command(c, n),
        }
    }
    for c in new.commands() {
        if !old.has_command(&c.name) {
            d.root(Group::Commands, &c.name, ChangeKind::CommandAdded);
        }
    }
    for e in old.events() {
        match new.event(&e.name) {
            None => d.root(Group::Events, &e.name, ChangeKind::EventRemoved),
            Some(n) => d.event(e, n),
        }
    }
    for e in new.events() {
        if !old.has_event(&e.name) {
            d.root(Group::Events, &e.name, ChangeKind::EventAdded);
        }
    }
    SchemaDiff {
        changes: d.changes.into_iter().collect(),
    }
}

/// How deep member paths are followed (QAPI nests far less).
const MAX_DEPTH: usize = 64;

struct Differ<'a> {
    old: &'a Schema,
    new: &'a Schema,
    changes: BTreeSet<Change>,
}

/// Where the walk is: the command or event, the part, the path.
struct At<'p> {
    group: Group,
    name: &'p str,
    part: Part,
}

impl<'a> Differ<'a> {
    fn root(&mut self, group: Group, name: &str, kind: ChangeKind) {
        self.changes.insert(Change {
            group,
            name: name.to_owned(),
            part: Part::Itself,
            path: String::new(),
            kind,
        });
    }

    fn push(&mut self, at: &At<'_>, path: &str, kind: ChangeKind) {
        self.changes.insert(Change {
            group: at.group,
            name: at.name.to_owned(),
            part: at.part,
            path: path.to_owned(),
            kind,
        });
    }

    fn features(&mut self, at: &At<'_>, path: &str, old: &[String], new: &[String]) {
        for f in old.iter().filter(|f| !new.contains(f)) {
            self.push(at, path, ChangeKind::FeatureRemoved { feature: f.clone() });
        }
        for f in new.iter().filter(|f| !old.contains(f)) {
            self.push(at, path, ChangeKind::FeatureAdded { feature: f.clone() });
        }
    }

    fn command(&mut self, old: &'a SchemaInfo, new: &'a SchemaInfo) {
        let root = At {
            group: Group::Commands,
            name: &old.name,
            part: Part::Itself,
        };
        self.features(&root, "", &old.features, &new.features);
        let (Some(oc), Some(nc)) = (old.as_command(), new.as_command()) else {
            return;
        };
        let args = At {
            group: Group::Types,
            name: &old.name,
            part: Part::Arguments,
        };
        self.types(&args, &oc.arg_type, &nc.arg_type);
        let ret = At {
            group: Group::Types,
            name: &old.name,
            part: Part::Return,
        };
        self.types(&ret, &oc.ret_type, &nc.ret_type);
    }

    fn event(&mut self, old: &'a SchemaInfo, new: &'a SchemaInfo) {
        let root = At {
            group: Group::Events,
            name: &old.name,
            part: Part::Itself,
        };
        self.features(&root, "", &old.features, &new.features);
        let (Some(oe), Some(ne)) = (old.as_event(), new.as_event()) else {
            return;
        };
        let data = At {
            group: Group::Types,
            name: &old.name,
            part: Part::Data,
        };
        self.types(&data, &oe.arg_type, &ne.arg_type);
    }

    /// Compares a part's types; each pair of types is compared once per
    /// part, at the first path that reaches it (which also ends cycles).
    fn types(&mut self, at: &At<'_>, old: &str, new: &str) {
        let mut seen = HashSet::new();
        self.compare(at, "", old, new, &mut seen, 0);
    }

    fn compare(
        &mut self,
        at: &At<'_>,
        path: &str,
        old: &str,
        new: &str,
        seen: &mut HashSet<(String, String)>,
        depth: usize,
    ) {
        if depth > MAX_DEPTH || !seen.insert((old.to_owned(), new.to_owned())) {
            return;
        }
        let (Some(o), Some(n)) = (self.old.get(old), self.new.get(new)) else {
            return;
        };
        let (od, nd) = (describe(self.old, o), describe(self.new, n));
        if od != nd {
            self.push(at, path, ChangeKind::TypeChanged { old: od, new: nd });
            return;
        }
        if !matches!(o.meta, Meta::Builtin(_)) {
            self.features(at, path, &o.features, &n.features);
        }
        match (&o.meta, &n.meta) {
            (Meta::Enum(oe), Meta::Enum(ne)) => {
                for v in &oe.members {
                    match ne.value(&v.name) {
                        None => self.push(
                            at,
                            path,
                            ChangeKind::EnumValueRemoved {
                                value: v.name.clone(),
                            },
                        ),
                        Some(nv) => {
                            for f in v.features.iter().filter(|f| !nv.features.contains(f)) {
                                self.push(
                                    at,
                                    path,
                                    ChangeKind::EnumValueFeatureRemoved {
                                        value: v.name.clone(),
                                        feature: f.clone(),
                                    },
                                );
                            }
                            for f in nv.features.iter().filter(|f| !v.features.contains(f)) {
                                self.push(
                                    at,
                                    path,
                                    ChangeKind::EnumValueFeatureAdded {
                                        value: v.name.clone(),
                                        feature: f.clone(),
                                    },
                                );
                            }
                        }
                    }
                }
                for v in ne.members.iter().filter(|v| oe.value(&v.name).is_none()) {
                    self.push(
                        at,
                        path,
                        ChangeKind::EnumValueAdded {
                            value: v.name.clone(),
                        },
                    );
                }
            }
            (Meta::Array(oa), Meta::Array(na)) => {
                self.compare(
                    at,
                    path,
                    &oa.element_type,
                    &na.element_type,
                    seen,
                    depth + 1,
                );
            }
            (Meta::Object(oo), Meta::Object(no)) => self.object(at, path, oo, no, seen, depth),
            (Meta::Alternate(oa), Meta::Alternate(na)) => {
                let branches = |s: &'a Schema, a: &'a crate::AlternateType| {
                    a.members
                        .iter()
                        .filter_map(|m| s.get(&m.type_name))
                        .map(|t| (describe(s, t), t))
                        .collect::<Vec<_>>()
                };
                let (ob, nb) = (branches(self.old, oa), branches(self.new, na));
                for (d, t) in &ob {
                    match nb.iter().find(|(e, _)| e == d) {
                        None => {
                            self.push(at, path, ChangeKind::BranchRemoved { branch: d.clone() })
                        }
                        Some((_, nt)) => self.compare(at, path, &t.name, &nt.name, seen, depth + 1),
                    }
                }
                for (d, _) in nb.iter().filter(|(d, _)| !ob.iter().any(|(e, _)| e == d)) {
                    self.push(at, path, ChangeKind::BranchAdded { branch: d.clone() });
                }
            }
            _ => {}
        }
    }

    fn object(
        &mut self,
        at: &At<'_>,
        path: &str,
        old: &'a ObjectType,
        new: &'a ObjectType,
        seen: &mut HashSet<(String, String)>,
        depth: usize,
    ) {
        for m in &old.members {
            match new.member(&m.name) {
                None => self.push(
                    at,
                    path,
                    ChangeKind::MemberRemoved {
                        name: m.name.clone(),
                    },
                ),
                Some(n) => self.member(at, path, m, n, seen, depth),
            }
        }
        for m in new.members.iter().filter(|m| old.member(&m.name).is_none()) {
            self.push(
                at,
                path,
                ChangeKind::MemberAdded {
                    name: m.name.clone(),
                    optional: m.is_optional(),
                },
            );
        }
        for v in &old.variants {
            match new.variant(&v.case) {
                None => self.push(
                    at,
                    path,
                    ChangeKind::VariantRemoved {
                        case: v.case.clone(),
                    },
                ),
                Some(nv) => {
                    let p = join(path, &format!("+{}", v.case));
                    self.compare(at, &p, &v.type_name, &nv.type_name, seen, depth + 1);
                }
            }
        }
        for v in new
            .variants
            .iter()
            .filter(|v| old.variant(&v.case).is_none())
        {
            self.push(
                at,
                path,
                ChangeKind::VariantAdded {
                    case: v.case.clone(),
                },
            );
        }
    }

    fn member(
        &mut self,
        at: &At<'_>,
        path: &str,
        old: &'a Member,
        new: &'a Member,
        seen: &mut HashSet<(String, String)>,
        depth: usize,
    ) {
        let p = join(path, &old.name);
        match (old.is_optional(), new.is_optional()) {
            (false, true) => self.push(at, &p, ChangeKind::BecameOptional),
            (true, false) => self.push(at, &p, ChangeKind::BecameMandatory),
            _ => {}
        }
        self.features(at, &p, old.features(), new.features());
        self.compare(at, &p, &old.type_name, &new.type_name, seen, depth + 1);
    }
}

fn join(path: &str, component: &str) -> String {
    if path.is_empty() {
        component.to_owned()
    } else {
        format!("{path}.{component}")
    }
}

/// A type described by its structure, never by its (meaningless) name:
/// a builtin's JSON type (`string`, `int`, `number`, `boolean`, `null`,
/// `value`, ...), `enum`, `object`, `alternate`, or `array of ...`.
pub fn describe(schema: &Schema, t: &SchemaInfo) -> String {
    describe_depth(schema, t, 0)
}

fn describe_depth(schema: &Schema, t: &SchemaInfo, depth: usize) -> String {
    match &t.meta {
        Meta::Builtin(b) => b.json_type.clone(),
        Meta::Enum(_) => "enum".to_owned(),
        Meta::Object(_) => "object".to_owned(),
        Meta::Alternate(_) => "alternate".to_owned(),
        Meta::Array(a) => match schema.get(&a.element_type) {
            Some(e) if depth < 8 => format!("array of {}", describe_depth(schema, e, depth + 1)),
            _ => "array".to_owned(),
        },
        Meta::Command(_) => "command".to_owned(),
        Meta::Event(_) => "event".to_owned(),
        Meta::Unknown(m) => m.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(v: Value) -> Schema {
        Schema::from_introspection(&v).unwrap()
    }

    /// A little `blockdev-add` (as in the crate's other tests), numbered
    /// from `base` so that the two sides never share type names.
    fn old() -> Schema {
        schema(json!([
            {"name": "blockdev-add", "meta-type": "command", "arg-type": "10", "ret-type": "11"},
            {"name": "10", "meta-type": "object",
             "members": [
                {"name": "driver", "type": "12"},
                {"name": "node-name", "type": "str", "default": null},
                {"name": "discard", "type": "str", "default": null}],
             "tag": "driver",
             "variants": [{"case": "file", "type": "14"}, {"case": "nfs", "type": "11"}]},
            {"name": "11", "meta-type": "object", "members": []},
            {"name": "12", "meta-type": "enum", "values": ["file", "nfs"]},
            {"name": "14", "meta-type": "object", "members": [
                {"name": "filename", "type": "str"},
                {"name": "aio", "type": "16", "default": null},
                {"name": "next", "type": "17", "default": null}]},
            {"name": "16", "meta-type": "enum", "members": [{"name": "threads"}, {"name": "native"}]},
            {"name": "17", "meta-type": "alternate", "members": [{"type": "10"}, {"type": "str"}]},
            {"name": "str", "meta-type": "builtin", "json-type": "string"},
            {"name": "int", "meta-type": "builtin", "json-type": "int"},
            {"name": "bool", "meta-type": "builtin", "json-type": "boolean"},
            {"name": "STOP", "meta-type": "event", "arg-type": "11"},
            {"name": "GONE", "meta-type": "event", "arg-type": "11", "features": ["deprecated"]},
            {"name": "query-x", "meta-type": "command", "arg-type": "11", "ret-type": "20"},
            {"name": "20", "meta-type": "array", "element-type": "21"},
            {"name": "21", "meta-type": "object", "members": [
                {"name": "a", "type": "int"}, {"name": "b", "type": "bool"}]},
            {"name": "old-cmd", "meta-type": "command", "arg-type": "11", "ret-type": "11"},
        ]))
    }

    fn new() -> Schema {
        schema(json!([
            {"name": "blockdev-add", "meta-type": "command", "arg-type": "0", "ret-type": "1",
             "features": ["x"]},
            {"name": "0", "meta-type": "object",
             "members": [
                {"name": "driver", "type": "2"},
                {"name": "node-name", "type": "str"},
                {"name": "discard", "type": "3", "default": null},
                {"name": "cache", "type": "bool", "default": null}],
             "tag": "driver",
             "variants": [{"case": "file", "type": "4"}, {"case": "io", "type": "1"}]},
            {"name": "1", "meta-type": "object", "members": []},
            {"name": "2", "meta-type": "enum", "values": ["file", "io"]},
            {"name": "3", "meta-type": "enum", "values": ["ignore"]},
            {"name": "4", "meta-type": "object", "members": [
                {"name": "filename", "type": "str", "features": ["deprecated"]},
                {"name": "aio", "type": "6", "default": null},
                {"name": "next", "type": "7", "default": null}]},
            {"name": "6", "meta-type": "enum", "members": [
                {"name": "threads"}, {"name": "native", "features": ["deprecated"]},
                {"name": "io_uring"}]},
            {"name": "7", "meta-type": "alternate", "members": [{"type": "0"}, {"type": "null"}]},
            {"name": "str", "meta-type": "builtin", "json-type": "string"},
            {"name": "null", "meta-type": "builtin", "json-type": "null"},
            {"name": "int", "meta-type": "builtin", "json-type": "int"},
            {"name": "STOP", "meta-type": "event", "arg-type": "1"},
            {"name": "NEW", "meta-type": "event", "arg-type": "1"},
            {"name": "query-x", "meta-type": "command", "arg-type": "1", "ret-type": "20"},
            {"name": "20", "meta-type": "array", "element-type": "21"},
            {"name": "21", "meta-type": "object", "members": [
                {"name": "a", "type": "int"}, {"name": "b", "type": "int"}]},
            {"name": "new-cmd", "meta-type": "command", "arg-type": "1", "ret-type": "1",
             "features": ["unstable"]},
        ]))
    }

    #[test]
    fn the_fragments_differ_as_expected() {
        let d = diff(&old(), &new());
        let text = d.to_string();
        assert_eq!(
            text,
            "\
commands:
  blockdev-add: feature x added
  new-cmd: command added
  old-cmd: command removed
events:
  GONE: event removed
  NEW: event added
types:
  blockdev-add arguments: member cache added (optional)
  blockdev-add arguments: variant +io added
  blockdev-add arguments: variant +nfs removed
  blockdev-add arguments +file.aio: enum value io_uring added
  blockdev-add arguments +file.aio: enum value native: feature deprecated added
  blockdev-add arguments +file.filename: feature deprecated added
  blockdev-add arguments +file.next: alternate branch null added
  blockdev-add arguments +file.next: alternate branch string removed
  blockdev-add arguments discard: type string -> enum
  blockdev-add arguments driver: enum value io added
  blockdev-add arguments driver: enum value nfs removed
  blockdev-add arguments node-name: now mandatory
  query-x return b: type boolean -> int
"
        );
        // New-cmd's unstable feature is not reported apart: it is new.
        assert!(d
            .changes
            .iter()
            .all(|c| c.name != "new-cmd" || c.kind == ChangeKind::CommandAdded));
    }

    #[test]
    fn a_schema_does_not_differ_from_itself() {
        assert!(diff(&old(), &old()).is_empty());
        assert!(diff(&new(), &new()).is_empty());
        assert_eq!(diff(&old(), &old()).to_string(), "");
    }

    #[test]
    fn the_reverse_diff_mirrors() {
        let d = diff(&new(), &old());
        let lines = d.lines();
        assert!(
            lines.contains(&"new-cmd: command removed".to_owned()),
            "{lines:?}"
        );
        assert!(lines.contains(&"blockdev-add arguments node-name: now optional".to_owned()));
        assert!(lines.contains(&"blockdev-add arguments: member cache removed".to_owned()));
        assert!(lines
            .contains(&"blockdev-add arguments +file.aio: enum value io_uring removed".to_owned()));
        assert!(lines.contains(&"blockdev-add: feature x removed".to_owned()));
    }

    #[test]
    fn json_has_the_fields() {
        let d = diff(&old(), &new());
        let v = d.to_json();
        let changes = v["changes"].as_array().unwrap();
        assert_eq!(changes.len(), d.changes.len());
        let aio = changes
            .iter()
            .find(|c| c["change"] == "enum-value-added")
            .unwrap();
        assert_eq!(
            *aio,
            json!({"group": "types", "name": "blockdev-add", "part": "arguments",
                   "path": "+file.aio", "change": "enum-value-added", "value": "io_uring",
                   "text": "blockdev-add arguments +file.aio: enum value io_uring added"})
        );
        let added = changes
            .iter()
            .find(|c| c["change"] == "member-added")
            .unwrap();
        assert_eq!(added["member"], "cache");
        assert_eq!(added["optional"], true);
    }
}
