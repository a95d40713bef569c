//! The generated argument types against every recorded schema: random
//! arguments that a recording accepts, for every command it has, read into
//! the command's type and written back, are the same JSON, and still
//! accepted. No QEMU needed; `tests/live.rs` does the same with QEMU itself.

use std::path::PathBuf;

use proptest::prelude::*;
use qemu_qapi::{Featured, Meta, Recording, Schema};
use qemu_qapi_types::commands::dispatch;
use serde_json::{json, Map, Value};

fn recordings() -> Vec<Schema> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../qemu-qapi/schemas");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            out.push(Recording::load(&p).unwrap().schema().unwrap());
        }
    }
    assert_eq!(out.len(), 4, "two binaries, two versions");
    out
}

/// A small deterministic generator (xorshift), seeded by proptest.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// A random value of the type `name` that the schema accepts.
fn value(s: &Schema, name: &str, rng: &mut Rng, depth: u32) -> Value {
    let info = s.get(name).unwrap_or_else(|| panic!("type {name}"));
    match &info.meta {
        Meta::Builtin(b) => match b.json_type.as_str() {
            "string" => json!(["", "a", "node0", "x-y", "ünï"][rng.below(5)]),
            "int" => match rng.below(4) {
                0 => json!(0),
                1 => json!(-5),
                2 => json!(u64::MAX),
                _ => json!(rng.next() % 100_000),
            },
            "number" => json!([0.5, -2.25, 1e300][rng.below(3)]),
            "boolean" => json!(rng.coin()),
            "null" => Value::Null,
            _ => [json!({"a": [1, "b"]}), json!(7), json!("s"), Value::Null][rng.below(4)].clone(),
        },
        Meta::Enum(e) => json!(e.members[rng.below(e.members.len())].name),
        Meta::Array(a) => {
            let n = if depth > 4 { 0 } else { rng.below(3) };
            Value::Array(
                (0..n)
                    .map(|_| value(s, &a.element_type, rng, depth + 1))
                    .collect(),
            )
        }
        Meta::Object(_) => Value::Object(object(s, name, rng, depth)),
        Meta::Alternate(a) => {
            // Deep down, prefer branches that are not objects.
            let mut branches: Vec<&str> = a.members.iter().map(|m| m.type_name.as_str()).collect();
            if depth > 4 {
                let flat: Vec<&str> = branches
                    .iter()
                    .copied()
                    .filter(|t| !matches!(s.get(t).map(|i| &i.meta), Some(Meta::Object(_))))
                    .collect();
                if !flat.is_empty() {
                    branches = flat;
                }
            }
            let pick = branches[rng.below(branches.len())];
            value(s, pick, rng, depth + 1)
        }
        _ => Value::Null,
    }
}

/// A random object of the object type `name`: its mandatory members, some
/// optional ones, and for a union a random variant's.
fn object(s: &Schema, name: &str, rng: &mut Rng, depth: u32) -> Map<String, Value> {
    let o = s.get(name).and_then(|i| i.as_object()).unwrap();
    let mut out = Map::new();
    for m in &o.members {
        if Some(&m.name) == o.tag.as_ref() {
            continue;
        }
        if m.is_optional() && (depth > 3 || rng.coin()) {
            continue;
        }
        // Optional unstable members are behind the `unstable` feature: a
        // build without it ignores them, as it does unknown members.
        let unstable = m.name.starts_with("x-") || m.is_unstable();
        if m.is_optional() && unstable && !cfg!(feature = "unstable") {
            continue;
        }
        out.insert(m.name.clone(), value(s, &m.type_name, rng, depth + 1));
    }
    if let Some(tag) = &o.tag {
        let tag_type = &o.member(tag).unwrap().type_name;
        let values: Vec<&str> = s
            .get(tag_type)
            .unwrap()
            .as_enum()
            .unwrap()
            .values()
            .collect();
        let case = values[rng.below(values.len())];
        out.insert(tag.clone(), json!(case));
        if let Some(v) = o.variant(case) {
            out.extend(object(s, &v.type_name, rng, depth + 1));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn arguments_survive_the_generated_types(seed in 1u64..) {
        let schemas = recordings();
        let mut rng = Rng(seed);
        let mut checked = 0;
        for s in &schemas {
            for c in s.commands() {
                let cmd = c.as_command().unwrap();
                if (c.name.starts_with("x-") || c.is_unstable()) && !cfg!(feature = "unstable") {
                    continue;
                }
                let args = Value::Object(object(s, &cmd.arg_type, &mut rng, 0));
                s.check(&c.name, Some(&args))
                    .unwrap_or_else(|e| panic!("the generator made bad arguments: {e}\n{args}"));
                let back = dispatch::roundtrip_arguments(&c.name, args.clone())
                    .unwrap_or_else(|| panic!("{} is not generated", c.name))
                    .unwrap_or_else(|e| panic!("{}: {e}\n{args}", c.name));
                prop_assert_eq!(&back, &args, "{}", c.name);
                checked += 1;
            }
        }
        prop_assert!(checked >= 500, "{checked}");
    }
}
