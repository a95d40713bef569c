//! Rust types generated from recorded schemas: what `crates/qemu-qapi-types`
//! is made of, and what `qapi-schema gen` makes for a user's own QEMUs.
//!
//! # How it works
//!
//! 1. The recordings are merged (see `merge`): the types of different QEMU
//!    versions found at the same wire place (a command's arguments, a member
//!    of the same name, ...) are one Rust type. Nothing is taken from one
//!    version alone: members, enum values, union variants and events are the
//!    union of all versions.
//! 2. A member is `Option` unless every recording that has its type has it
//!    mandatory; enums, unions, alternates and the event enum keep an
//!    `Unknown` variant for what a newer QEMU adds; unknown members are
//!    ignored when reading. So a reply of any recorded version, and of a
//!    newer one that only adds, decodes.
//! 3. Types are named by the rule in `names` and the names are remembered
//!    in `names.json`, so that adding a version renames nothing.
//! 4. `deprecated` becomes `#[deprecated]`; `unstable` and `x-` commands,
//!    events, optional members and enum values are behind the `unstable`
//!    cargo feature of the generated crate.
//!
//! Members whose type differs between versions in a way no Rust type covers
//! (a string in one, an object in another) are [`serde_json::Value`], and
//! listed in [`Generated::conflicts`].

mod emit;
mod merge;
mod names;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use emit::Gen;
use merge::{Kind, Merged};
use names::Roots;

use crate::{Featured, Recording, Schema, SchemaError};

/// What [`generate`] made.
#[derive(Debug, Clone)]
pub struct Generated {
    /// File name (`types.rs`, `commands.rs`, `events.rs`, `names.json`) to
    /// its text.
    pub files: BTreeMap<String, String>,
    /// Members whose type differs between versions beyond what a Rust type
    /// covers, represented as JSON values: `Type.member`.
    pub conflicts: Vec<String>,
    /// How many commands, events and types were generated.
    pub counts: (usize, usize, usize),
}

/// Generates the typed API from `recordings` (at least one), keeping the
/// names in `names_json` (the previous `names.json`, if any).
pub fn generate(
    recordings: &[Recording],
    names_json: Option<&str>,
) -> Result<Generated, SchemaError> {
    if recordings.is_empty() {
        return Err(SchemaError::Recording(
            "no recordings to generate from".into(),
        ));
    }
    // Newest first, then by binary: the newest version orders members.
    let mut sources: Vec<(crate::QemuVersion, String, Schema)> = Vec::new();
    for r in recordings {
        let v = r.qemu_version()?;
        sources.push((v, r.binary.clone(), r.schema()?));
    }
    sources.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let labels: Vec<String> = sources
        .iter()
        .map(|(v, b, _)| format!("{b} {}.{}", v.major, v.minor))
        .collect();
    let schemas: Vec<Schema> = sources.into_iter().map(|(_, _, s)| s).collect();
    let lock: BTreeMap<String, String> = match names_json {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| SchemaError::Recording(format!("names.json: {e}")))?,
        None => BTreeMap::new(),
    };

    let merged = Merged::new(&schemas);
    let mut roots = Roots {
        args: BTreeMap::new(),
        rets: BTreeMap::new(),
        events: BTreeMap::new(),
    };
    for (src, schema) in schemas.iter().enumerate() {
        for c in schema.commands() {
            if let Some(cmd) = c.as_command() {
                let arg = merged.resolve(src, &cmd.arg_type);
                let ret = merged.resolve(src, &cmd.ret_type);
                roots
                    .args
                    .entry(c.name.clone())
                    .or_default()
                    .push((src, arg));
                roots
                    .rets
                    .entry(c.name.clone())
                    .or_default()
                    .push((src, ret));
            }
        }
        for e in schema.events() {
            if let Some(ev) = e.as_event() {
                let data = merged.resolve(src, &ev.arg_type);
                roots
                    .events
                    .entry(e.name.clone())
                    .or_default()
                    .push((src, data));
            }
        }
    }
    let names = names::assign(&merged, &roots, &lock);

    let mut gen = Gen {
        merged: &merged,
        names: &names,
        roots: &roots,
        labels: &labels,
        boxed: BTreeSet::new(),
        conflicts: RefCell::new(BTreeSet::new()),
        variant_enum: BTreeMap::new(),
    };
    gen.boxed = recursion_boxes(&gen);
    let mut taken: BTreeSet<String> = names.class.values().cloned().collect();
    taken.extend(names.command.values().map(|(n, _)| n.clone()));
    taken.extend(names.event.values().map(|(n, _)| n.clone()));
    taken.insert("Event".to_owned());
    for (&c, name) in &names.class {
        if merged.classes[c].kind == Kind::Union {
            let mut v = format!("{name}Variant");
            while taken.contains(&v) {
                v.push('_');
            }
            taken.insert(v.clone());
            gen.variant_enum.insert(c, v);
        }
    }

    // Classes that are a command or an event go with it.
    let mut owned_by_root: BTreeSet<usize> = BTreeSet::new();
    for (cmd, (_, wraps)) in &names.command {
        if !wraps {
            owned_by_root.extend(gen.arg_class(cmd));
        }
    }
    for (ev, (_, wraps)) in &names.event {
        if !wraps {
            owned_by_root.extend(gen.event_class(ev));
        }
    }

    let mut types = header(
        "Types of command arguments, returns and event data.",
        "types",
    );
    let mut by_name: Vec<(&String, usize)> = names.class.iter().map(|(c, n)| (n, *c)).collect();
    by_name.sort();
    let mut type_count = 0;
    for (name, c) in &by_name {
        if owned_by_root.contains(c) {
            continue;
        }
        let doc = format!("Found at {}.", describe_place(&names.lock, name));
        emit_class(&gen, &mut types, *c, name, &doc);
        type_count += 1;
    }

    let mut commands = header("One struct per command, with its return type.", "commands");
    let mut plain: Vec<(&str, &str, bool)> = Vec::new();
    for (cmd, (name, wraps)) in &names.command {
        let no_params = emit_command(&gen, &schemas, &mut commands, cmd, name, *wraps);
        let (_, unstable) = entity_attrs(&schemas, cmd, false);
        if no_params {
            plain.push((cmd, name, unstable));
        }
    }
    emit_dispatch(&names, &schemas, &plain, &mut commands);
    let mut events = header(
        "One struct per event, and [`Event`], any of them.",
        "events",
    );
    for (ev, (name, wraps)) in &names.event {
        emit_event_struct(&gen, &schemas, &mut events, ev, name, *wraps);
    }
    emit_event_enum(&gen, &schemas, &mut events);

    let mut lock_text = String::from("{\n");
    let entries: Vec<String> = names
        .lock
        .iter()
        .map(|(n, p)| format!("  {}: {}", json_str(n), json_str(p)))
        .collect();
    lock_text += &entries.join(",\n");
    lock_text += "\n}\n";

    let mut files = BTreeMap::new();
    files.insert("types.rs".to_owned(), types);
    files.insert("commands.rs".to_owned(), commands);
    files.insert("events.rs".to_owned(), events);
    files.insert("names.json".to_owned(), lock_text);
    let conflicts = gen.conflicts.borrow().iter().cloned().collect();
    Ok(Generated {
        files,
        conflicts,
        counts: (
            names.command.len(),
            names.event.len(),
            type_count + owned_by_root.len(),
        ),
    })
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// "`query-block` → return → `inserted`" for a remembered name.
fn describe_place(lock: &BTreeMap<String, String>, name: &str) -> String {
    let Some(place) = lock.get(name) else {
        return "an unremembered place".to_owned();
    };
    if let Some(c) = place.strip_prefix("arg:") {
        return format!("the arguments of `{c}`");
    }
    if let Some(c) = place.strip_prefix("ret:") {
        return format!("the return of `{c}`");
    }
    if let Some(e) = place.strip_prefix("event:") {
        return format!("the data of `{e}`");
    }
    match place.split_once('/') {
        Some((owner, p)) => match p.chars().next() {
            Some('+') => format!("[`{owner}`] when the tag is `{}`", &p[1..]),
            Some('|') => format!("[`{owner}`] as a JSON {}", &p[1..]),
            _ => format!("[`{owner}`]`.{p}`"),
        },
        None => format!("`{place}`"),
    }
}

fn header(doc: &str, this: &str) -> String {
    let mut s = format!(
        "//! {doc}\n//!\n//! Generated by `qapi-schema gen` from the recorded schemas; do not edit.\n\n#![allow(deprecated)]\n#![allow(clippy::large_enum_variant)]\n\n"
    );
    s += "#[allow(unused_imports)]\nuse qemu_qapi::typed::{support, Command, Empty, EventData, FromEvent};\n#[allow(unused_imports)]\nuse serde::{Deserialize, Deserializer, Serialize, Serializer};\n#[allow(unused_imports)]\nuse serde_json::{Map, Value};\n\n";
    for module in ["commands", "events", "types"] {
        if module != this {
            s += &format!("#[allow(unused_imports)]\nuse crate::{module}::*;\n");
        }
    }
    s.push('\n');
    s
}

fn emit_class(gen: &Gen, out: &mut String, c: usize, name: &str, doc: &str) {
    match gen.merged.classes[c].kind {
        Kind::Struct | Kind::Union => gen.emit_struct(out, c, name, doc),
        Kind::Enum => gen.emit_enum(out, c, name, doc),
        Kind::Alternate => gen.emit_alternate(out, c, name, doc),
        Kind::Mixed => {
            gen.conflicts.borrow_mut().insert(format!(
                "{name} (a different kind of type in different versions)"
            ));
            let _ = writeln!(
                out,
                "/// {doc}\n///\n/// Its kind differs between QEMU versions: it is plain JSON.\npub type {name} = Value;\n"
            );
        }
    }
}

/// The recordings that have the command or event.
fn presence_of(schemas: &[Schema], name: &str, event: bool) -> BTreeSet<usize> {
    schemas
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            if event {
                s.has_event(name)
            } else {
                s.has_command(name)
            }
        })
        .map(|(i, _)| i)
        .collect()
}

/// `#[deprecated]` from the newest recording that has the entity.
fn entity_attrs(schemas: &[Schema], name: &str, event: bool) -> (bool, bool) {
    let info = schemas.iter().find_map(|s| {
        if event {
            s.event(name)
        } else {
            s.command(name)
        }
    });
    match info {
        Some(i) => (i.is_deprecated(), i.is_unstable() || name.starts_with("x-")),
        None => (false, false),
    }
}

/// Emits a command; true if its `new()` takes nothing.
fn emit_command(
    gen: &Gen,
    schemas: &[Schema],
    out: &mut String,
    cmd: &str,
    name: &str,
    wraps: bool,
) -> bool {
    let presence = presence_of(schemas, cmd, false);
    let (deprecated, unstable) = entity_attrs(schemas, cmd, false);
    let dep = if deprecated {
        "#[deprecated = \"deprecated by QEMU\"]\n"
    } else {
        ""
    };
    let gate = if unstable {
        "#[cfg(feature = \"unstable\")]\n"
    } else {
        ""
    };
    let returns = gen.returns(cmd);
    let doc = format!(
        "The command `{cmd}`; returns [`{}`].",
        returns.trim_start_matches("Vec<").trim_end_matches('>')
    );
    let no_params = match gen.arg_class(cmd) {
        Some(c) if !wraps => {
            out.push_str(dep);
            gen.emit_struct(out, c, name, &doc);
            gen.merged.classes[c].kind == Kind::Struct && gen.required_count(c) == 0
        }
        Some(c) => {
            let inner = gen.names.class[&c].clone();
            let _ = writeln!(
                out,
                "/// {doc} Its arguments are a [`{inner}`].\n///\n/// {}\n{dep}#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]\n#[serde(transparent)]\npub struct {name}(pub {inner});\n\nimpl {name} {{\n    /// The command with these arguments.\n    pub fn new(arguments: {inner}) -> Self {{\n        Self(arguments)\n    }}\n}}\n\nimpl From<{inner}> for {name} {{\n    fn from(arguments: {inner}) -> Self {{\n        Self(arguments)\n    }}\n}}\n",
                gen.exists_in(&presence)
            );
            false
        }
        None => {
            let _ = writeln!(
                out,
                "/// {doc} It takes no arguments.\n///\n/// {}\n{dep}#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]\n#[non_exhaustive]\npub struct {name} {{}}\n\nimpl {name} {{\n    /// The command.\n    pub fn new() -> Self {{\n        Self {{}}\n    }}\n}}\n",
                gen.exists_in(&presence)
            );
            true
        }
    };
    let _ = writeln!(
        out,
        "{gate}impl Command for {name} {{\n    const NAME: &'static str = \"{cmd}\";\n    type Returns = {returns};\n}}\n"
    );
    no_params
}

/// Name-keyed access to every command, for tests that go through all of
/// them: decoding and re-encoding arguments, calling those without any.
fn emit_dispatch(
    names: &names::Names,
    schemas: &[Schema],
    plain: &[(&str, &str, bool)],
    out: &mut String,
) {
    let _ = writeln!(
        out,
        "/// Every command by name, for tests that go through all of them.\n#[doc(hidden)]\npub mod dispatch {{\n    use super::*;\n    use qemu_qapi::typed::{{CallError, TypedClient}};\n\n    /// Reads `arguments` as the arguments of the command `name` and writes\n    /// them back; `None` for a command this crate does not have.\n    pub fn roundtrip_arguments(name: &str, arguments: Value) -> Option<Result<Value, serde_json::Error>> {{\n        Some(match name {{"
    );
    for (cmd, (name, _)) in &names.command {
        let (_, unstable) = entity_attrs(schemas, cmd, false);
        let gate = if unstable {
            "#[cfg(feature = \"unstable\")] "
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "            {gate}\"{cmd}\" => support::roundtrip::<{name}>(arguments),"
        );
    }
    let _ = writeln!(
        out,
        "            _ => return None,\n        }})\n    }}\n\n    /// Calls the command `name`, which takes no mandatory arguments, and\n    /// decodes its return; `None` if this crate has no such command.\n    pub async fn call_without_arguments(qmp: &TypedClient, name: &str) -> Option<Result<(), CallError>> {{\n        Some(match name {{"
    );
    for (cmd, name, unstable) in plain {
        let gate = if *unstable {
            "#[cfg(feature = \"unstable\")] "
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "            {gate}\"{cmd}\" => qmp.call({name}::new()).await.map(drop),"
        );
    }
    let _ = writeln!(
        out,
        "            _ => return None,\n        }})\n    }}\n}}"
    );
}

fn emit_event_struct(
    gen: &Gen,
    schemas: &[Schema],
    out: &mut String,
    ev: &str,
    name: &str,
    wraps: bool,
) {
    let presence = presence_of(schemas, ev, true);
    let (deprecated, _) = entity_attrs(schemas, ev, true);
    let dep = if deprecated {
        "#[deprecated = \"deprecated by QEMU\"]\n"
    } else {
        ""
    };
    let doc = format!("The data of the event `{ev}`.");
    match gen.event_class(ev) {
        Some(c) if !wraps => {
            out.push_str(dep);
            gen.emit_struct(out, c, name, &doc);
        }
        Some(c) => {
            let inner = gen.names.class[&c].clone();
            let _ = writeln!(
                out,
                "/// {doc}\n///\n/// {}\n{dep}#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]\n#[serde(transparent)]\npub struct {name}(pub {inner});\n",
                gen.exists_in(&presence)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "/// {doc} It has none.\n///\n/// {}\n{dep}#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]\n#[non_exhaustive]\npub struct {name} {{}}\n",
                gen.exists_in(&presence)
            );
        }
    }
    let _ = writeln!(
        out,
        "impl EventData for {name} {{\n    const NAME: &'static str = \"{ev}\";\n}}\n\nimpl FromEvent for {name} {{\n    fn names() -> Option<&'static [&'static str]> {{\n        Some(&[\"{ev}\"])\n    }}\n\n    fn from_parts(name: &str, data: Option<&Value>) -> Result<Self, serde_json::Error> {{\n        support::event_as(name, data)\n    }}\n}}\n"
    );
}

fn emit_event_enum(gen: &Gen, schemas: &[Schema], out: &mut String) {
    let _ = writeln!(
        out,
        "/// Any event, decoded; `Unknown` keeps one this crate does not know.\n#[derive(Debug, Clone, PartialEq)]\n#[non_exhaustive]\npub enum Event {{"
    );
    let mut arms = String::new();
    let mut names_arms = String::new();
    for (ev, (name, _)) in &gen.names.event {
        let (deprecated, unstable) = entity_attrs(schemas, ev, true);
        let variant = name.trim_end_matches("Event");
        let variant = if variant == "Unknown" {
            "UnknownValue"
        } else {
            variant
        };
        let gate = if unstable {
            "#[cfg(feature = \"unstable\")] "
        } else {
            ""
        };
        let _ = writeln!(out, "    /// `{ev}`.");
        if deprecated {
            let _ = writeln!(out, "    #[deprecated = \"deprecated by QEMU\"]");
        }
        if unstable {
            let _ = writeln!(out, "    #[cfg(feature = \"unstable\")]");
        }
        let _ = writeln!(out, "    {variant}({name}),");
        let _ = writeln!(
            arms,
            "            {gate}\"{ev}\" => Event::{variant}(support::event_data(data)?),"
        );
        let _ = writeln!(
            names_arms,
            "            {gate}Event::{variant}(_) => \"{ev}\","
        );
    }
    let _ = writeln!(
        out,
        "    /// An event this crate does not know (from a newer QEMU).\n    Unknown {{\n        /// Its name.\n        name: String,\n        /// Its `data` (`{{}}` when it had none).\n        data: Value,\n    }},\n}}\n"
    );
    let _ = writeln!(
        out,
        "impl Event {{\n    /// Decodes an event from its name and `data` member (`None`: it had\n    /// none). An unknown name is [`Event::Unknown`]; a known one whose data\n    /// does not fit its type is an error.\n    pub fn from_parts(name: &str, data: Option<&Value>) -> Result<Event, serde_json::Error> {{\n        Ok(match name {{\n{arms}            _ => Event::Unknown {{\n                name: name.to_owned(),\n                data: data.cloned().unwrap_or_else(|| Value::Object(Map::new())),\n            }},\n        }})\n    }}\n\n    /// The event's name, as on the wire.\n    pub fn name(&self) -> &str {{\n        match self {{\n{names_arms}            Event::Unknown {{ name, .. }} => name,\n        }}\n    }}\n}}\n\nimpl FromEvent for Event {{\n    fn names() -> Option<&'static [&'static str]> {{\n        None\n    }}\n\n    fn from_parts(name: &str, data: Option<&Value>) -> Result<Self, serde_json::Error> {{\n        Event::from_parts(name, data)\n    }}\n}}\n"
    );
}

/// The places to box so that recursive types have a size: a by-value place
/// whose type leads back to its owner.
fn recursion_boxes(gen: &Gen) -> BTreeSet<(usize, String)> {
    let classes = &gen.merged.classes;
    let edges: Vec<Vec<(String, usize)>> = (0..classes.len())
        .map(|c| {
            if classes[c].kind == Kind::Mixed {
                Vec::new()
            } else {
                gen.by_value_edges(c)
            }
        })
        .collect();
    let reaches = |from: usize, to: usize| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from];
        while let Some(c) = stack.pop() {
            if c == to {
                return true;
            }
            if seen.insert(c) {
                stack.extend(edges[c].iter().map(|(_, t)| *t));
            }
        }
        false
    };
    let mut out = BTreeSet::new();
    for (c, es) in edges.iter().enumerate() {
        for (place, t) in es {
            if classes[*t].kind != Kind::Mixed && reaches(*t, c) {
                out.insert((c, place.clone()));
            }
        }
    }
    out
}
