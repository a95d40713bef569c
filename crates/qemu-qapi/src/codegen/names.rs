//! Rust names for wire names, and the naming of merged types.
//!
//! # The naming rule
//!
//! - A command's arguments are the struct named after the command in
//!   CamelCase (`query-status` → `QueryStatus`) when that type is a struct
//!   used by no other command; otherwise `QueryStatus` wraps it and the type
//!   is `QueryStatusArguments`.
//! - A command's return type is `<Command>Return`; an event's data
//!   `<EVENT>Event` (`BLOCK_JOB_COMPLETED` → `BlockJobCompletedEvent`), or
//!   `<EVENT>Data` inside a wrapper when other events share it.
//! - Any other type is named after the first place it is found at, walking
//!   breadth-first from the command arguments (commands in name order), then
//!   the returns, then the events: the owner's name (without an
//!   `Arguments` suffix) and the member's name (`QueryBlockReturnInserted`),
//!   the tag value of a union variant (`BlockdevAddArgumentsFile` →
//!   `BlockdevAddFile`), or the JSON kind of an alternate branch. Arrays are
//!   looked through. A name already taken gets `2`, `3`, ... appended.
//! - Names are remembered in `names.json` beside the generated code, each
//!   with the place it was first given for (`"QueryBlockReturnInserted":
//!   "QueryBlockReturn/inserted"`). A type found at a remembered place keeps
//!   the remembered name, whatever recordings are added: names are only ever
//!   added, so adding a QEMU version renames nothing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::merge::{Kind, Merged, TyRef};

/// `query-status` → `QueryStatus`, `BLOCK_JOB_COMPLETED` →
/// `BlockJobCompleted`, `io_uring` → `IoUring`; a leading digit gets `V`.
pub(crate) fn camel(name: &str) -> String {
    let mut out = String::new();
    for word in name.split(|c: char| !c.is_ascii_alphanumeric()) {
        let mut chars = word.chars();
        let Some(first) = chars.next() else { continue };
        out.push(first.to_ascii_uppercase());
        let rest: String = chars.collect();
        if rest.chars().any(|c| c.is_ascii_lowercase()) {
            out += &rest;
        } else {
            out += &rest.to_ascii_lowercase();
        }
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'V');
    }
    out
}

const KEYWORDS: &[&str] = &[
    "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate",
    "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl",
    "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub", "ref",
    "return", "self", "static", "struct", "super", "trait", "true", "try", "type", "typeof",
    "unsafe", "unsized", "use", "virtual", "where", "while", "yield", "union",
];

/// `node-name` → `node_name`, `type` → `type_`, `thread_id` stays.
pub(crate) fn snake(name: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        } else {
            out.push('_');
            prev_lower = false;
        }
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    if KEYWORDS.contains(&out.as_str()) {
        out.push('_');
    }
    out
}

/// Names of the generated items.
pub(crate) struct Names {
    /// Class index to type name (only classes that are emitted).
    pub class: BTreeMap<usize, String>,
    /// Command name to its struct's name and whether it wraps its
    /// arguments' type (then the class's name is in `class`).
    pub command: BTreeMap<String, (String, bool)>,
    /// Event name to its data struct's name and whether it wraps.
    pub event: BTreeMap<String, (String, bool)>,
    /// The memory: name to the place it was given for.
    pub lock: BTreeMap<String, String>,
}

/// Where classes are used as a command's arguments, return, or event data.
/// Each with the references in each recording that has it.
pub(crate) struct Roots {
    pub args: BTreeMap<String, Vec<(usize, TyRef)>>,
    pub rets: BTreeMap<String, Vec<(usize, TyRef)>>,
    pub events: BTreeMap<String, Vec<(usize, TyRef)>>,
}

/// The class a reference names, if any (arrays looked through).
pub(crate) fn class_in(merged: &Merged, r: &TyRef) -> Option<usize> {
    match r {
        TyRef::Node(n) => Some(merged.class(*n)),
        TyRef::Array(e) => class_in(merged, e),
        _ => None,
    }
}

/// The class any of `uses` names.
pub(crate) fn class_of_uses(merged: &Merged, uses: &[(usize, TyRef)]) -> Option<usize> {
    uses.iter().find_map(|(_, r)| class_in(merged, r))
}

/// Names every class reachable from the roots, keeping the names in `lock`.
pub(crate) fn assign(merged: &Merged, roots: &Roots, lock: &BTreeMap<String, String>) -> Names {
    let mut by_place: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, place) in lock {
        by_place.insert(place.as_str(), name.as_str());
    }
    let mut taken: BTreeSet<String> = lock.keys().cloned().collect();
    let mut names = Names {
        class: BTreeMap::new(),
        command: BTreeMap::new(),
        event: BTreeMap::new(),
        lock: lock.clone(),
    };

    // How many roots of each kind use a class.
    let mut arg_uses: BTreeMap<usize, usize> = BTreeMap::new();
    for uses in roots.args.values() {
        if let Some(c) = class_of_uses(merged, uses) {
            *arg_uses.entry(c).or_default() += 1;
        }
    }
    let mut event_uses: BTreeMap<usize, usize> = BTreeMap::new();
    for uses in roots.events.values() {
        if let Some(c) = class_of_uses(merged, uses) {
            *event_uses.entry(c).or_default() += 1;
        }
    }
    let owned = |r: &[(usize, TyRef)], uses: &BTreeMap<usize, usize>| {
        if r.iter()
            .any(|(_, t)| !matches!(t, TyRef::Node(_) | TyRef::Empty))
        {
            return false;
        }
        match class_of_uses(merged, r) {
            Some(c) => merged.classes[c].kind == Kind::Struct && uses.get(&c) == Some(&1),
            None => true,
        }
    };

    // The wrappers' names come first: nothing else may take them. Types
    // that are a command or an event are named first, after it; a type is
    // a command (an event) only if no other command (event) uses it, and
    // an event only if it is not a command.
    let mut first: VecDeque<(usize, String, String)> = VecDeque::new();
    let mut queue: VecDeque<(usize, String, String)> = VecDeque::new();
    let mut owned_classes: BTreeSet<usize> = BTreeSet::new();
    for (cmd, r) in &roots.args {
        let base = camel(cmd);
        let c = class_of_uses(merged, r);
        let own = owned(r, &arg_uses) && c.is_none_or(|c| owned_classes.insert(c));
        names.command.insert(cmd.clone(), (base.clone(), !own));
        taken.insert(base.clone());
        if let Some(c) = c {
            if own {
                first.push_back((c, base, format!("arg:{cmd}")));
            } else {
                queue.push_back((c, format!("{base}Arguments"), format!("arg:{cmd}")));
            }
        }
    }
    for (cmd, r) in &roots.rets {
        if let Some(c) = class_of_uses(merged, r) {
            queue.push_back((c, format!("{}Return", camel(cmd)), format!("ret:{cmd}")));
        }
    }
    for (ev, r) in &roots.events {
        let base = format!("{}Event", camel(ev));
        let c = class_of_uses(merged, r);
        let own = owned(r, &event_uses) && c.is_none_or(|c| owned_classes.insert(c));
        names.event.insert(ev.clone(), (base.clone(), !own));
        taken.insert(base.clone());
        if let Some(c) = c {
            if own {
                first.push_back((c, base, format!("event:{ev}")));
            } else {
                queue.push_back((c, format!("{}Data", camel(ev)), format!("event:{ev}")));
            }
        }
    }
    first.extend(queue);
    let mut queue = first;
    // The wrappers' own names are theirs, even if the lock says otherwise.
    let wrappers: BTreeSet<String> = names
        .command
        .values()
        .chain(names.event.values())
        .map(|(n, _)| n.clone())
        .collect();

    // Pass 1: remembered places, from the roots down, until nothing changes.
    for (c, _, place) in &queue {
        if let Some(name) = by_place.get(place.as_str()) {
            names.class.entry(*c).or_insert_with(|| (*name).to_owned());
        }
    }
    loop {
        let mut added = Vec::new();
        for (&c, owner) in &names.class {
            for (place, child) in child_classes(merged, c) {
                if names.class.contains_key(&child) {
                    continue;
                }
                let key = format!("{owner}/{place}");
                if let Some(name) = by_place.get(key.as_str()) {
                    added.push((child, (*name).to_owned()));
                }
            }
        }
        if added.is_empty() {
            break;
        }
        for (c, n) in added {
            names.class.entry(c).or_insert(n);
        }
    }

    // A command or event whose type the memory names otherwise wraps it.
    for (c, base, place) in &queue {
        if !wrappers.contains(base) || names.class.get(c).is_none_or(|n| n == base) {
            continue;
        }
        if let Some(cmd) = place.strip_prefix("arg:") {
            names.command.insert(cmd.to_owned(), (base.clone(), true));
        } else if let Some(ev) = place.strip_prefix("event:") {
            names.event.insert(ev.to_owned(), (base.clone(), true));
        }
    }

    // Pass 2: breadth-first, new names for the rest.
    let mut seen: BTreeSet<usize> = BTreeSet::new();
    while let Some((c, candidate, place)) = queue.pop_front() {
        if !names.class.contains_key(&c) {
            // A command's or event's own name goes to its type only when
            // that type is the command or event (it is not wrapped).
            let own_root = wrappers.contains(&candidate)
                && (place.starts_with("arg:") || place.starts_with("event:"));
            let mut name = candidate.clone();
            let mut n = 2;
            while taken.contains(&name) && !(own_root && name == candidate) {
                name = format!("{candidate}{n}");
                n += 1;
            }
            taken.insert(name.clone());
            names.lock.insert(name.clone(), place);
            names.class.insert(c, name);
        }
        if !seen.insert(c) {
            continue;
        }
        let owner = names.class[&c].clone();
        let stem = owner.strip_suffix("Arguments").unwrap_or(&owner).to_owned();
        for (place, child) in child_classes(merged, c) {
            let suffix = camel(place.trim_start_matches(['+', '|']));
            queue.push_back((child, format!("{stem}{suffix}"), format!("{owner}/{place}")));
        }
    }
    names
}

/// The classes right below a class, with their places, in a stable order:
/// places in the order of the newest recording, each once.
pub(crate) fn child_classes(merged: &Merged, class: usize) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for &node in &merged.classes[class].nodes {
        for (place, r) in merged.children(node) {
            if let Some(c) = class_in(merged, &r) {
                if !out.iter().any(|(p, _)| *p == place) {
                    out.push((place, c));
                }
            }
        }
    }
    out
}
