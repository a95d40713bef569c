//! The comparison: commands and events, then their types by structure, member
//! path by member path.

use std::collections::{BTreeSet, HashSet};

use super::{describe, Change, ChangeKind, Group, Part, SchemaDiff};
use crate::{Featured, Member, Meta, ObjectType, Schema, SchemaInfo};

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
