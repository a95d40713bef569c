//! Structs and unions: the struct with its constructor and setters, and
//! the enum of a union's variants.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{Field, Gen, RTy};
use crate::codegen::merge::{Kind, TyRef};
use crate::codegen::names::{camel, snake};

impl Gen<'_> {
    /// A struct (or the base of a union) with constructor and setters.
    pub fn emit_struct(&self, out: &mut String, c: usize, name: &str, doc: &str) {
        let class = &self.merged.classes[c];
        let (skip, variant) = if class.kind == Kind::Union {
            let tag = self.union_tag(c);
            (
                Some(tag.clone()),
                Some((tag, self.variant_enum[&c].clone())),
            )
        } else {
            (None, None)
        };
        let fields = self.fields(c, skip.as_deref());
        let all_optional = fields.iter().all(|f| f.optional) && variant.is_none();
        let _ = writeln!(
            out,
            "/// {doc}\n///\n/// {}",
            self.exists_in(&class.presence)
        );
        let derive_default = if all_optional { ", Default" } else { "" };
        let _ = writeln!(
            out,
            "#[derive(Debug, Clone, PartialEq, Serialize, Deserialize{derive_default})]\n#[non_exhaustive]\npub struct {name} {{"
        );
        for f in &fields {
            let _ = writeln!(out, "    /// {}", f.doc);
            for a in f.attrs.lines() {
                let _ = writeln!(out, "    {a}");
            }
            if f.wire != f.name {
                let _ = writeln!(out, "    #[serde(rename = \"{}\")]", f.wire);
            }
            if f.optional && self.nullable(&f.ty) {
                // `null` is a value here (`"backing": null`), not absence.
                let _ = writeln!(
                    out,
                    "    #[serde(default, skip_serializing_if = \"Option::is_none\", deserialize_with = \"support::present\")]"
                );
            } else if f.optional {
                let _ = writeln!(
                    out,
                    "    #[serde(default, skip_serializing_if = \"Option::is_none\")]"
                );
            }
            let _ = writeln!(out, "    pub {}: {},", f.name, self.field_type(f));
        }
        if let Some((tag, venum)) = &variant {
            let _ = writeln!(
                out,
                "    /// `{tag}` and the members that go with its value.\n    #[serde(flatten)]\n    pub {}: {venum},",
                snake(tag)
            );
        }
        let _ = writeln!(out, "}}\n");

        // Constructor and setters.
        let required: Vec<&Field> = fields.iter().filter(|f| !f.optional).collect();
        let _ = writeln!(out, "impl {name} {{");
        let mut params: Vec<String> = Vec::new();
        let mut inits: Vec<String> = Vec::new();
        if let Some((tag, venum)) = &variant {
            params.push(format!("{}: {venum}", snake(tag)));
            inits.push(snake(tag));
        }
        for f in &required {
            let (p, v) = self.param(f);
            params.push(format!("{}: {p}", f.name));
            inits.push(if v == f.name {
                v
            } else {
                format!("{}: {v}", f.name)
            });
        }
        let _ = writeln!(
            out,
            "    /// A value with the mandatory members; set the others with the\n    /// methods named after them.\n    #[allow(clippy::too_many_arguments)]\n    pub fn new({}) -> Self {{\n        Self {{",
            params.join(", ")
        );
        for i in &inits {
            let _ = writeln!(out, "            {i},");
        }
        for f in fields.iter().filter(|f| f.optional) {
            for a in f.attrs.lines().filter(|a| a.starts_with("#[cfg")) {
                let _ = writeln!(out, "            {a}");
            }
            let _ = writeln!(out, "            {}: None,", f.name);
        }
        let _ = writeln!(out, "        }}\n    }}");
        for f in fields.iter().filter(|f| f.optional) {
            let (p, v) = self.param(f);
            let method = if f.name == "new" { "with_new" } else { &f.name };
            let _ = writeln!(out, "\n    /// Sets `{}`.", f.wire);
            for a in f.attrs.lines() {
                let _ = writeln!(out, "    {a}");
            }
            let _ = writeln!(
                out,
                "    pub fn {method}(mut self, {}: {p}) -> Self {{\n        self.{} = Some({v});\n        self\n    }}",
                f.name, f.name
            );
        }
        let _ = writeln!(out, "}}\n");
        if let Some((tag, venum)) = &variant {
            self.emit_variants(out, c, tag, venum);
        }
    }

    /// The members of a union's variants, in any version: a member an older
    /// version has in the base and a newer one in a variant (SevInfo's
    /// `policy`, 7.2 and 9.1) belongs to the variant, where the newer
    /// version puts it.
    pub(super) fn variant_members(&self, c: usize) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for &n in &self.merged.classes[c].nodes {
            let src = self.merged.nodes[n].src;
            let Some(o) = self.merged.info(n).as_object() else {
                continue;
            };
            for v in &o.variants {
                let t = self.merged.schemas[src].get(&v.type_name);
                if let Some(vo) = t.and_then(|t| t.as_object()) {
                    out.extend(vo.members.iter().map(|m| m.name.clone()));
                }
            }
        }
        out
    }

    /// The tag member of a union class (from its newest node).
    pub fn union_tag(&self, c: usize) -> String {
        self.merged.classes[c]
            .nodes
            .iter()
            .find_map(|&n| self.merged.info(n).as_object()?.tag.clone())
            .unwrap_or_default()
    }

    /// The enum of a union's variants, with its (de)serialization.
    fn emit_variants(&self, out: &mut String, c: usize, tag: &str, venum: &str) {
        let union_name = &self.names.class[&c];
        // The tag's values (its enum's, in every version), each with its
        // variant's type in each version that has one, and attributes.
        type Case = (String, Vec<(usize, TyRef)>, String);
        let mut cases: Vec<Case> = Vec::new();
        let tag_enum = self
            .merged
            .members(c)
            .into_iter()
            .find(|(w, _)| w == tag)
            .map(|(_, e)| e);
        let mut values: Vec<(String, String)> = Vec::new();
        if let Some(entries) = tag_enum {
            for (src, m) in entries {
                if let TyRef::Node(n) = self.merged.resolve(src, &m.type_name) {
                    if let Some(e) = self.merged.info(n).as_enum() {
                        for v in &e.members {
                            if !values.iter().any(|(w, _)| *w == v.name) {
                                values.push((v.name.clone(), self.feature_attrs(v, &v.name, true)));
                            }
                        }
                    }
                }
            }
        }
        for (case, attrs) in values {
            let mut uses = Vec::new();
            for &n in &self.merged.classes[c].nodes {
                let src = self.merged.nodes[n].src;
                if let Some(o) = self.merged.info(n).as_object() {
                    if let Some(v) = o.variant(&case) {
                        uses.push((src, self.merged.resolve(src, &v.type_name)));
                    }
                }
            }
            cases.push((case, uses, attrs));
        }
        let _ = writeln!(
            out,
            "/// The variants of [`{union_name}`], by `{tag}`; `Unknown` keeps a value this\n/// crate does not know and its members.\n#[derive(Debug, Clone, PartialEq)]\n#[non_exhaustive]\npub enum {venum} {{"
        );
        let mut arms_ser = String::new();
        let mut arms_de = String::new();
        let mut arms_tag = String::new();
        let mut used: BTreeSet<String> = BTreeSet::new();
        for (case, uses, attrs) in &cases {
            let mut v = camel(case);
            if v == "Unknown" {
                v = "UnknownValue".to_owned();
            }
            while !used.insert(v.clone()) {
                v.push('_');
            }
            let cfg: String = attrs.lines().filter(|a| a.starts_with("#[cfg")).collect();
            let _ = writeln!(out, "    /// `{tag}: \"{case}\"`.");
            for a in attrs.lines() {
                let _ = writeln!(out, "    {a}");
            }
            let payload = match self.resolve(uses) {
                Some(RTy::Class(vc)) if self.merged.classes[vc].kind != Kind::Mixed => {
                    Some(self.names.class[&vc].clone())
                }
                Some(RTy::Empty) | None => None,
                Some(other) => Some(self.spell(&other)),
            };
            match &payload {
                Some(p) => {
                    let p = if self.boxed.contains(&(c, format!("+{case}"))) {
                        format!("Box<{p}>")
                    } else {
                        p.clone()
                    };
                    let _ = writeln!(out, "    {v}({p}),");
                    let _ = writeln!(
                        (&mut arms_ser),
                        "            {cfg}Self::{v}(data) => support::serialize_variant(serializer, \"{tag}\", \"{case}\", Some(data)),"
                    );
                    let _ = writeln!(
                        (&mut arms_de),
                        "            {cfg}\"{case}\" => Self::{v}(support::from_members(members)?),"
                    );
                    let _ = writeln!(
                        (&mut arms_tag),
                        "            {cfg}Self::{v}(_) => \"{case}\","
                    );
                }
                None => {
                    let _ = writeln!(out, "    {v},");
                    let _ = writeln!(
                        (&mut arms_ser),
                        "            {cfg}Self::{v} => support::serialize_variant::<_, Empty>(serializer, \"{tag}\", \"{case}\", None),"
                    );
                    let _ = writeln!((&mut arms_de), "            {cfg}\"{case}\" => Self::{v},");
                    let _ = writeln!((&mut arms_tag), "            {cfg}Self::{v} => \"{case}\",");
                }
            }
        }
        let _ = writeln!(
            out,
            "    /// A `{tag}` this crate does not know, with the members that came with it.\n    Unknown {{\n        /// The `{tag}` value.\n        tag: String,\n        /// The members other than those of [`{union_name}`].\n        members: Map<String, Value>,\n    }},\n}}\n"
        );
        let _ = writeln!(
            out,
            "impl {venum} {{\n    /// The `{tag}` value.\n    pub fn tag(&self) -> &str {{\n        match self {{\n{arms_tag}            Self::Unknown {{ tag, .. }} => tag,\n        }}\n    }}\n}}\n"
        );
        let _ = writeln!(
            out,
            "impl Serialize for {venum} {{\n    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {{\n        match self {{\n{arms_ser}            Self::Unknown {{ tag, members }} => support::serialize_variant(serializer, \"{tag}\", tag, Some(members)),\n        }}\n    }}\n}}\n"
        );
        let _ = writeln!(
            out,
            "impl<'de> Deserialize<'de> for {venum} {{\n    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {{\n        let (tag, members) = support::deserialize_variant(deserializer, \"{tag}\")?;\n        Ok(match tag.as_str() {{\n{arms_de}            _ => Self::Unknown {{ tag, members }},\n        }})\n    }}\n}}\n"
        );
    }
}
