//! Enums and alternates.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{Gen, RTy};
use crate::codegen::merge::TyRef;
use crate::codegen::names::camel;

impl Gen<'_> {
    /// An enum with its fallback.
    pub fn emit_enum(&self, out: &mut String, c: usize, name: &str, doc: &str) {
        let class = &self.merged.classes[c];
        let mut values: Vec<(String, Vec<usize>, String)> = Vec::new();
        for &n in &class.nodes {
            let src = self.merged.nodes[n].src;
            if let Some(e) = self.merged.info(n).as_enum() {
                for v in &e.members {
                    match values.iter_mut().find(|(w, _, _)| *w == v.name) {
                        Some((_, srcs, _)) => srcs.push(src),
                        None => values.push((
                            v.name.clone(),
                            vec![src],
                            self.feature_attrs(v, &v.name, true),
                        )),
                    }
                }
            }
        }
        let _ = writeln!(
            out,
            "/// {doc}\n///\n/// {}\n#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]\n#[non_exhaustive]\npub enum {name} {{",
            self.exists_in(&class.presence)
        );
        let mut arms = String::new();
        let mut used: BTreeSet<String> = BTreeSet::new();
        for (wire, srcs, attrs) in &values {
            let mut v = camel(wire);
            if v == "Unknown" {
                v = "UnknownValue".to_owned();
            }
            while !used.insert(v.clone()) {
                v.push('_');
            }
            let srcs: BTreeSet<usize> = srcs.iter().copied().collect();
            if srcs == class.presence {
                let _ = writeln!(out, "    /// `{wire}`");
            } else {
                let _ = writeln!(out, "    /// `{wire}`. {}", self.exists_in(&srcs));
            }
            for a in attrs.lines() {
                let _ = writeln!(out, "    {a}");
            }
            let _ = writeln!(out, "    {v},");
            let cfg: String = attrs.lines().filter(|a| a.starts_with("#[cfg")).collect();
            let _ = writeln!((&mut arms), "    {cfg}{v} = \"{wire}\",");
        }
        let _ = writeln!(
            out,
            "    /// A value this crate does not know (from a newer QEMU).\n    Unknown(String),\n}}\n\nsupport::qapi_enum!({name} {{\n{arms}}});\n"
        );
    }

    /// An alternate: one variant per JSON kind, and `Unknown`.
    pub fn emit_alternate(&self, out: &mut String, c: usize, name: &str, doc: &str) {
        let class = &self.merged.classes[c];
        let mut kinds: Vec<(String, Vec<(usize, TyRef)>)> = Vec::new();
        for &n in &class.nodes {
            for (place, r) in self.merged.children(n) {
                let kind = place.trim_start_matches('|').to_owned();
                let src = self.merged.nodes[n].src;
                match kinds.iter_mut().find(|(k, _)| *k == kind) {
                    Some((_, uses)) => uses.push((src, r)),
                    None => kinds.push((kind, vec![(src, r)])),
                }
            }
        }
        let order = [
            "null", "boolean", "int", "number", "string", "object", "array",
        ];
        kinds.sort_by_key(|(k, _)| order.iter().position(|o| o == k).unwrap_or(order.len()));
        let _ = writeln!(
            out,
            "/// {doc}: one of several types, told apart by their JSON type.\n///\n/// {}\n#[derive(Debug, Clone, PartialEq)]\n#[non_exhaustive]\npub enum {name} {{",
            self.exists_in(&class.presence)
        );
        let mut ser = String::new();
        let mut de = String::new();
        let has_number = kinds.iter().any(|(k, _)| k == "number");
        for (kind, uses) in &kinds {
            let variant = match kind.as_str() {
                "null" => "Null",
                "boolean" => "Bool",
                "int" => "Int",
                "number" => "Number",
                "string" => "String",
                "object" => "Object",
                "array" => "Array",
                _ => continue,
            };
            if kind == "null" {
                let _ = writeln!(out, "    /// JSON `null`.\n    Null,");
                ser += "            Self::Null => serializer.serialize_unit(),\n";
                de += "            Value::Null => Self::Null,\n";
                continue;
            }
            let ty = self.resolve(uses).unwrap_or(RTy::Value);
            let mut t = self.spell(&ty);
            if self.boxed.contains(&(c, format!("|{kind}"))) {
                t = format!("Box<{t}>");
            }
            let _ = writeln!(out, "    /// A JSON {kind}.\n    {variant}({t}),");
            let _ = writeln!(
                (&mut ser),
                "            Self::{variant}(v) => v.serialize(serializer),"
            );
            let pattern = match kind.as_str() {
                "boolean" => "Value::Bool(_)",
                "int" if has_number => "Value::Number(ref n) if n.is_i64() || n.is_u64()",
                "int" | "number" => "Value::Number(_)",
                "string" => "Value::String(_)",
                "object" => "Value::Object(_)",
                _ => "Value::Array(_)",
            };
            let _ = writeln!(
                (&mut de),
                "            {pattern} => Self::{variant}(support::from_value(value)?),"
            );
        }
        let _ = writeln!(
            out,
            "    /// A JSON type this crate does not expect here (from a newer QEMU).\n    Unknown(Value),\n}}\n"
        );
        let _ = writeln!(
            out,
            "impl Serialize for {name} {{\n    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {{\n        match self {{\n{ser}            Self::Unknown(v) => v.serialize(serializer),\n        }}\n    }}\n}}\n"
        );
        let _ = writeln!(
            out,
            "impl<'de> Deserialize<'de> for {name} {{\n    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {{\n        let value = Value::deserialize(deserializer)?;\n        Ok(match value {{\n{de}            value => Self::Unknown(value),\n        }})\n    }}\n}}\n"
        );
    }
}
