//! The changes in words: the report's lines and headings, the JSON output,
//! and types described by their structure.

use std::fmt;

use serde_json::{json, Value};

use super::{Change, ChangeKind, Group, Part, SchemaDiff};
use crate::{Meta, Schema, SchemaInfo};

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

impl SchemaDiff {
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
