//! Rust source for the merged schema: `types.rs`, `commands.rs`,
//! `events.rs`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::merge::{Kind, Merged, TyRef};
use super::names::{camel, class_of_uses, snake, Names, Roots};
use crate::{Featured, Member};

/// A Rust type for a place.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RTy {
    /// A Rust type spelt out (`String`, `i128`, `bool`, `f64`, `()`).
    Prim(&'static str),
    /// Any JSON value.
    Value,
    /// The empty object.
    Empty,
    /// A generated type.
    Class(usize),
    /// A vector.
    Vec(Box<RTy>),
}

/// What the emitters share.
pub(crate) struct Gen<'a> {
    pub merged: &'a Merged<'a>,
    pub names: &'a Names,
    pub roots: &'a Roots,
    /// Per recording, a short label: `qemu-system-x86_64 10.0`.
    pub labels: &'a [String],
    /// Boxed places: (owner class, place).
    pub boxed: BTreeSet<(usize, String)>,
    /// Places whose versions disagree on the type, represented as JSON.
    pub conflicts: RefCell<BTreeSet<String>>,
    /// Auxiliary names (union variant enums).
    pub variant_enum: BTreeMap<usize, String>,
}

fn builtin(name: &str) -> RTy {
    match name {
        "str" => RTy::Prim("String"),
        "int" | "int8" | "int16" | "int32" | "int64" | "uint8" | "uint16" | "uint32" | "uint64"
        | "size" => RTy::Prim("i128"),
        "number" => RTy::Prim("f64"),
        "bool" => RTy::Prim("bool"),
        "null" => RTy::Prim("()"),
        _ => RTy::Value,
    }
}

impl<'a> Gen<'a> {
    /// The Rust type for a place that has `uses` in the recordings.
    pub fn resolve(&self, uses: &[(usize, TyRef)]) -> Option<RTy> {
        let mut shapes: Vec<RTy> = Vec::new();
        let mut arrays: Vec<(usize, TyRef)> = Vec::new();
        let mut all_arrays = true;
        for (src, r) in uses {
            let shape = match r {
                TyRef::Builtin(b) => builtin(b),
                TyRef::Empty => RTy::Empty,
                TyRef::Node(n) => RTy::Class(self.merged.class(*n)),
                TyRef::Unknown => RTy::Value,
                TyRef::Array(e) => {
                    arrays.push((*src, (**e).clone()));
                    continue;
                }
            };
            all_arrays = false;
            if !shapes.contains(&shape) {
                shapes.push(shape);
            }
        }
        if uses.is_empty() {
            return None;
        }
        if all_arrays {
            return Some(RTy::Vec(Box::new(self.resolve(&arrays)?)));
        }
        if !arrays.is_empty() {
            return Some(RTy::Value);
        }
        let classes: Vec<&RTy> = shapes
            .iter()
            .filter(|s| matches!(s, RTy::Class(_)))
            .collect();
        Some(match (shapes.len(), classes.len()) {
            (1, _) => shapes[0].clone(),
            // `{}` in one version, an object in another: the object, whose
            // members are all optional then.
            (2, 1) if shapes.contains(&RTy::Empty) => classes[0].clone(),
            _ => RTy::Value,
        })
    }

    /// The Rust spelling of a type.
    pub fn spell(&self, t: &RTy) -> String {
        match t {
            RTy::Prim(p) => (*p).to_owned(),
            RTy::Value => "Value".to_owned(),
            RTy::Empty => "Empty".to_owned(),
            RTy::Class(c) => self.class_type(*c),
            RTy::Vec(e) => format!("Vec<{}>", self.spell(e)),
        }
    }

    fn class_type(&self, c: usize) -> String {
        if self.merged.classes[c].kind == Kind::Mixed {
            return "Value".to_owned();
        }
        self.names.class[&c].clone()
    }

    /// "Exists in: ..." for a set of recordings.
    pub fn exists_in(&self, srcs: &BTreeSet<usize>) -> String {
        let list: Vec<&str> = srcs.iter().map(|&s| self.labels[s].as_str()).collect();
        format!("In: {}.", list.join(", "))
    }

    /// The attributes for features: `#[deprecated]`, and the `unstable`
    /// gate when `gate` allows it.
    fn feature_attrs<F: Featured>(&self, item: &F, wire: &str, gate: bool) -> String {
        let mut out = String::new();
        if item.is_deprecated() {
            out += "#[deprecated = \"deprecated by QEMU\"]\n";
        }
        if gate && (item.is_unstable() || wire.starts_with("x-")) {
            out += "#[cfg(feature = \"unstable\")]\n";
        }
        out
    }

    /// The recordings where the entries are.
    fn srcs<T>(entries: &[(usize, T)]) -> BTreeSet<usize> {
        entries.iter().map(|(s, _)| *s).collect()
    }

    /// A struct's fields: (wire name, field name, type, optional, attrs, doc).
    fn fields(&self, c: usize, skip: Option<&str>) -> Vec<Field> {
        let mut out = Vec::new();
        let mut used: BTreeSet<String> = BTreeSet::new();
        let presence = &self.merged.classes[c].presence;
        let in_variants = self.variant_members(c);
        for (wire, entries) in self.merged.members(c) {
            if Some(wire.as_str()) == skip || in_variants.contains(&wire) {
                continue;
            }
            let uses: Vec<(usize, TyRef)> = entries
                .iter()
                .map(|(src, m)| (*src, self.merged.resolve(*src, &m.type_name)))
                .collect();
            let Some(ty) = self.resolve(&uses) else {
                continue;
            };
            if ty == RTy::Value && uses.iter().any(|(_, r)| !matches!(r, TyRef::Unknown)) {
                let builtin_any = uses
                    .iter()
                    .all(|(_, r)| matches!(r, TyRef::Builtin(b) if b == "any"));
                if !builtin_any {
                    self.conflict(format!("{}.{}", self.names.class[&c], wire));
                }
            }
            let optional = !self.merged.mandatory_everywhere(c, &entries);
            let newest: Option<&&Member> = self.merged.newest(&entries);
            let mut name = snake(&wire);
            while !used.insert(name.clone()) {
                name.push('_');
            }
            let srcs = Self::srcs(&entries);
            let doc = if &srcs == presence {
                format!("`{wire}`")
            } else {
                format!("`{wire}`. {}", self.exists_in(&srcs))
            };
            let attrs = match newest {
                Some(m) => self.feature_attrs(*m, &wire, optional),
                None => String::new(),
            };
            let boxed = self.boxed.contains(&(c, wire.clone()));
            out.push(Field {
                wire,
                name,
                ty,
                optional,
                attrs,
                doc,
                boxed,
            });
        }
        out
    }

    fn conflict(&self, what: String) {
        self.conflicts.borrow_mut().insert(what);
    }

    /// The type of a field, with `Option` and `Box`.
    fn field_type(&self, f: &Field) -> String {
        let mut t = self.spell(&f.ty);
        if f.boxed {
            t = format!("Box<{t}>");
        }
        if f.optional {
            t = format!("Option<{t}>");
        }
        t
    }

    /// The parameter type for a constructor or setter, and how to store it.
    fn param(&self, f: &Field) -> (String, String) {
        let inner = self.spell(&f.ty);
        let (p, v) = if f.ty == RTy::Prim("String") {
            ("impl Into<String>".to_owned(), format!("{}.into()", f.name))
        } else {
            (inner, f.name.clone())
        };
        let v = if f.boxed { format!("Box::new({v})") } else { v };
        (p, v)
    }

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
    fn variant_members(&self, c: usize) -> BTreeSet<String> {
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

    /// True if JSON `null` is a value of the type.
    pub fn nullable(&self, t: &RTy) -> bool {
        match t {
            RTy::Prim("()") | RTy::Value => true,
            RTy::Class(c) => {
                self.merged.classes[*c].kind == Kind::Alternate
                    && self.merged.classes[*c].nodes.iter().any(|&n| {
                        self.merged
                            .children(n)
                            .iter()
                            .any(|(place, _)| place == "|null")
                    })
            }
            _ => false,
        }
    }

    /// How many members of a struct class are mandatory.
    pub fn required_count(&self, c: usize) -> usize {
        self.fields(c, None).iter().filter(|f| !f.optional).count()
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

    /// The places of a class that hold a class by value (not in a `Vec`).
    pub fn by_value_edges(&self, c: usize) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for &n in &self.merged.classes[c].nodes {
            for (place, r) in self.merged.children(n) {
                if let TyRef::Node(m) = r {
                    let target = self.merged.class(m);
                    if !out.contains(&(place.clone(), target)) {
                        out.push((place, target));
                    }
                }
            }
        }
        out
    }

    /// The name of the root's Rust type for a command's return.
    pub fn returns(&self, cmd: &str) -> String {
        match self.roots.rets.get(cmd).and_then(|u| self.resolve(u)) {
            Some(t) => self.spell(&t),
            None => "Value".to_owned(),
        }
    }

    /// The class a command's arguments are, if any.
    pub fn arg_class(&self, cmd: &str) -> Option<usize> {
        class_of_uses(self.merged, self.roots.args.get(cmd)?)
    }

    /// The class an event's data is, if any.
    pub fn event_class(&self, ev: &str) -> Option<usize> {
        class_of_uses(self.merged, self.roots.events.get(ev)?)
    }
}

/// A struct field.
pub(crate) struct Field {
    pub wire: String,
    pub name: String,
    pub ty: RTy,
    pub optional: bool,
    pub attrs: String,
    pub doc: String,
    pub boxed: bool,
}
