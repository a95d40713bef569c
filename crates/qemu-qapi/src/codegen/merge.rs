//! The union of several schemas: which types of different recordings are
//! "the same type", found by unification from the wire names (the ABI).
//!
//! Every enum, object and alternate of every recording is a node. Nodes are
//! joined into classes (union-find): the argument types of a command of the
//! same name in two recordings are one class, so are its return types and an
//! event's data types; then, until nothing changes, the types of a member of
//! the same name (of a variant for the same tag value, of an alternate branch
//! of the same JSON kind) of two nodes of one class are joined too. Arrays are
//! looked through; builtins and the empty object are leaves, never classes
//! (the empty object is shared by unrelated commands in every recording).
//!
//! A class then knows the recordings it exists in ([`Class::presence`]),
//! including those where its place holds a leaf (a command whose arguments
//! were `{}` in 7.2 and are an object in 10.0), so that a member is mandatory
//! only if every one of them has it mandatory.

use std::collections::{BTreeMap, BTreeSet};

use crate::{Member, Meta, Schema, SchemaInfo};

/// A type reference inside one recording.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TyRef {
    /// A builtin: its QAPI name (`str`, `int`, ...).
    Builtin(String),
    /// The empty object.
    Empty,
    /// An enum, object or alternate.
    Node(usize),
    /// An array of the element.
    Array(Box<TyRef>),
    /// A meta-type this crate does not know.
    Unknown,
}

/// One enum, object or alternate of one recording.
pub(crate) struct Node {
    pub src: usize,
    pub entity: usize,
}

/// What a class is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Enum,
    Struct,
    Union,
    Alternate,
    /// Different kinds in different recordings: represented as JSON.
    Mixed,
}

/// Types of the recordings found to be one type.
pub(crate) struct Class {
    pub nodes: Vec<usize>,
    /// The recordings it exists in, as indexes into the sources.
    pub presence: BTreeSet<usize>,
    pub kind: Kind,
}

/// The merged view of all the recordings.
pub(crate) struct Merged<'a> {
    pub schemas: &'a [Schema],
    pub nodes: Vec<Node>,
    /// For each recording, type name to reference.
    pub refs: Vec<BTreeMap<&'a str, TyRef>>,
    /// Node to class index.
    pub class_of: Vec<usize>,
    pub classes: Vec<Class>,
}

struct UnionFind {
    parent: Vec<usize>,
    extra: Vec<BTreeSet<usize>>,
}

impl UnionFind {
    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    /// Joins the classes of `a` and `b`; true if they were apart.
    fn union(&mut self, a: usize, b: usize) -> bool {
        let (a, b) = (self.find(a), self.find(b));
        if a == b {
            return false;
        }
        let (keep, gone) = if a < b { (a, b) } else { (b, a) };
        self.parent[gone] = keep;
        let moved = std::mem::take(&mut self.extra[gone]);
        self.extra[keep].extend(moved);
        true
    }
}

impl<'a> Merged<'a> {
    /// Merges `schemas` (at least one).
    pub fn new(schemas: &'a [Schema]) -> Merged<'a> {
        let mut nodes = Vec::new();
        let mut refs = Vec::new();
        for (src, schema) in schemas.iter().enumerate() {
            let mut map = BTreeMap::new();
            for (entity, info) in schema.entities().iter().enumerate() {
                let r = match &info.meta {
                    Meta::Builtin(_) => TyRef::Builtin(info.name.clone()),
                    Meta::Object(o) if o.members.is_empty() && o.variants.is_empty() => {
                        TyRef::Empty
                    }
                    Meta::Enum(_) | Meta::Object(_) | Meta::Alternate(_) => {
                        nodes.push(Node { src, entity });
                        TyRef::Node(nodes.len() - 1)
                    }
                    Meta::Array(_) => continue,
                    Meta::Command(_) | Meta::Event(_) => continue,
                    Meta::Unknown(_) => TyRef::Unknown,
                };
                map.insert(info.name.as_str(), r);
            }
            // Arrays last: their elements are in the map by now.
            for info in schema.entities() {
                if let Meta::Array(a) = &info.meta {
                    let elem = map.get(a.element_type.as_str()).cloned();
                    let elem = elem.unwrap_or(TyRef::Unknown);
                    map.insert(info.name.as_str(), TyRef::Array(Box::new(elem)));
                }
            }
            refs.push(map);
        }
        let mut merged = Merged {
            schemas,
            class_of: Vec::new(),
            classes: Vec::new(),
            nodes,
            refs,
        };
        merged.unify();
        merged
    }

    /// The reference for the type `name` of recording `src`.
    pub fn resolve(&self, src: usize, name: &str) -> TyRef {
        self.refs[src].get(name).cloned().unwrap_or(TyRef::Unknown)
    }

    /// The node's entity.
    pub fn info(&self, node: usize) -> &'a SchemaInfo {
        let n = &self.nodes[node];
        &self.schemas[n.src].entities()[n.entity]
    }

    fn unify(&mut self) {
        let n = self.nodes.len();
        let mut uf = UnionFind {
            parent: (0..n).collect(),
            extra: vec![BTreeSet::new(); n],
        };
        // Roots: a command's arguments and return, an event's data.
        let mut roots: BTreeMap<String, Vec<(usize, TyRef)>> = BTreeMap::new();
        for (src, schema) in self.schemas.iter().enumerate() {
            for c in schema.commands() {
                if let Some(cmd) = c.as_command() {
                    roots
                        .entry(format!("arg:{}", c.name))
                        .or_default()
                        .push((src, self.resolve(src, &cmd.arg_type)));
                    roots
                        .entry(format!("ret:{}", c.name))
                        .or_default()
                        .push((src, self.resolve(src, &cmd.ret_type)));
                }
            }
            for e in schema.events() {
                if let Some(ev) = e.as_event() {
                    roots
                        .entry(format!("event:{}", e.name))
                        .or_default()
                        .push((src, self.resolve(src, &ev.arg_type)));
                }
            }
        }
        for uses in roots.values() {
            unify_all(&mut uf, uses);
        }
        // Then members of joined nodes, until nothing changes.
        loop {
            let mut changed = false;
            let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for node in 0..n {
                groups.entry(uf.find(node)).or_default().push(node);
            }
            for group in groups.values().filter(|g| g.len() > 1) {
                let mut places: BTreeMap<String, Vec<(usize, TyRef)>> = BTreeMap::new();
                for &node in group {
                    let src = self.nodes[node].src;
                    for (place, r) in self.children(node) {
                        places.entry(place).or_default().push((src, r));
                    }
                }
                for uses in places.values() {
                    changed |= unify_all(&mut uf, uses);
                }
            }
            if !changed {
                break;
            }
        }
        let mut index: BTreeMap<usize, usize> = BTreeMap::new();
        let mut class_of = vec![0; n];
        let mut classes: Vec<Class> = Vec::new();
        for (node, slot) in class_of.iter_mut().enumerate() {
            let root = uf.find(node);
            let c = *index.entry(root).or_insert_with(|| {
                classes.push(Class {
                    nodes: Vec::new(),
                    presence: uf.extra[root].clone(),
                    kind: Kind::Mixed,
                });
                classes.len() - 1
            });
            classes[c].nodes.push(node);
            classes[c].presence.insert(self.nodes[node].src);
            *slot = c;
        }
        for class in &mut classes {
            let kinds: BTreeSet<&str> = class
                .nodes
                .iter()
                .map(|&node| {
                    let info =
                        &self.schemas[self.nodes[node].src].entities()[self.nodes[node].entity];
                    match &info.meta {
                        Meta::Enum(_) => "enum",
                        Meta::Object(o) if o.tag.is_some() => "union",
                        Meta::Object(_) => "struct",
                        _ => "alternate",
                    }
                })
                .collect();
            class.kind = match kinds.into_iter().collect::<Vec<_>>().as_slice() {
                ["enum"] => Kind::Enum,
                ["struct"] => Kind::Struct,
                // A struct that became a union (BlockJobInfo in 8.0): a
                // union whose older versions have the base members only.
                ["union"] | ["struct", "union"] => Kind::Union,
                ["alternate"] => Kind::Alternate,
                _ => Kind::Mixed,
            };
        }
        self.class_of = class_of;
        self.classes = classes;
    }

    /// The places below a node, each with the type there: `m` for member
    /// `m`, `+c` for the variant of tag value `c`, `|k` for the alternate
    /// branch of JSON kind `k`.
    pub fn children(&self, node: usize) -> Vec<(String, TyRef)> {
        let src = self.nodes[node].src;
        let info = self.info(node);
        let mut out = Vec::new();
        match &info.meta {
            Meta::Object(o) => {
                for m in &o.members {
                    out.push((m.name.clone(), self.resolve(src, &m.type_name)));
                }
                for v in &o.variants {
                    out.push((format!("+{}", v.case), self.resolve(src, &v.type_name)));
                }
            }
            Meta::Alternate(a) => {
                for m in &a.members {
                    let r = self.resolve(src, &m.type_name);
                    out.push((format!("|{}", self.json_kind(src, &r)), r));
                }
            }
            _ => {}
        }
        out
    }

    /// The JSON kind of values of `r` in recording `src`: `string`, `int`,
    /// `number`, `boolean`, `null`, `object`, `array` or `value`.
    pub fn json_kind(&self, src: usize, r: &TyRef) -> String {
        match r {
            TyRef::Builtin(name) => self.schemas[src]
                .get(name)
                .and_then(SchemaInfo::as_builtin)
                .map(|b| b.json_type.clone())
                .unwrap_or_else(|| "value".to_owned()),
            TyRef::Empty => "object".to_owned(),
            TyRef::Array(_) => "array".to_owned(),
            TyRef::Unknown => "value".to_owned(),
            TyRef::Node(n) => match &self.info(*n).meta {
                Meta::Enum(_) => "string".to_owned(),
                Meta::Object(_) => "object".to_owned(),
                _ => "value".to_owned(),
            },
        }
    }

    /// The class of a node.
    pub fn class(&self, node: usize) -> usize {
        self.class_of[node]
    }

    /// The object members of a class's nodes, by wire name, in order: those
    /// of the first node (newest recording first), then those only others
    /// have. Each with every node's member of that name.
    pub fn members(&self, class: usize) -> Vec<(String, Vec<(usize, &'a Member)>)> {
        let mut out: Vec<(String, Vec<(usize, &'a Member)>)> = Vec::new();
        for &node in &self.classes[class].nodes {
            let src = self.nodes[node].src;
            if let Some(o) = self.info(node).as_object() {
                for m in &o.members {
                    match out.iter_mut().find(|(name, _)| *name == m.name) {
                        Some((_, v)) => v.push((src, m)),
                        None => out.push((m.name.clone(), vec![(src, m)])),
                    }
                }
            }
        }
        out
    }

    /// The recordings, of those the class exists in, where the member
    /// (given by its per-recording entries) is present and mandatory in
    /// every node of that recording.
    pub fn mandatory_everywhere(&self, class: usize, entries: &[(usize, &Member)]) -> bool {
        let c = &self.classes[class];
        c.presence.iter().all(|&src| {
            let nodes_here = c
                .nodes
                .iter()
                .filter(|&&n| self.nodes[n].src == src)
                .count();
            let mandatory_here = entries
                .iter()
                .filter(|(s, m)| *s == src && !m.is_optional())
                .count();
            nodes_here > 0 && mandatory_here == nodes_here
        })
    }

    /// The newest entry's features, for a member given by its entries.
    pub fn newest<'m, T>(&self, entries: &'m [(usize, T)]) -> Option<&'m T> {
        entries.iter().min_by_key(|(src, _)| *src).map(|(_, t)| t)
    }
}

/// Joins the nodes among `uses`, and records leaves as presence of the
/// nodes' class. True if two classes were joined.
fn unify_all(uf: &mut UnionFind, uses: &[(usize, TyRef)]) -> bool {
    let mut changed = false;
    let mut first: Option<usize> = None;
    let mut arrays: Vec<(usize, TyRef)> = Vec::new();
    let mut leaves: Vec<usize> = Vec::new();
    for (src, r) in uses {
        match r {
            TyRef::Node(n) => match first {
                None => first = Some(*n),
                Some(f) => changed |= uf.union(f, *n),
            },
            TyRef::Array(e) => arrays.push((*src, (**e).clone())),
            _ => leaves.push(*src),
        }
    }
    if let Some(f) = first {
        let root = uf.find(f);
        uf.extra[root].extend(leaves);
    }
    if !arrays.is_empty() {
        changed |= unify_all(uf, &arrays);
    }
    changed
}
