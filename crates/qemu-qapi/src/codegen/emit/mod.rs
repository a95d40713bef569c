//! Rust source for the merged schema: `types.rs`, `commands.rs`,
//! `events.rs`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use super::merge::{Kind, Merged, TyRef};
use super::names::{class_of_uses, snake, Names, Roots};
use crate::{Featured, Member};

mod enums;
mod structs;

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
