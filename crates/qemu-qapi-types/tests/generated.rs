//! The committed code is what the generator makes from the committed
//! recordings and names, and adding a recording renames nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use qemu_qapi::codegen::{generate, Generated};
use qemu_qapi::Recording;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn recordings() -> Vec<Recording> {
    let dir = crate_dir().join("../qemu-qapi/schemas");
    let mut out: Vec<Recording> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| Recording::load(&p).unwrap())
        .collect();
    out.sort_by_key(|r| r.file_name().unwrap());
    out
}

#[test]
fn the_committed_code_is_what_the_generator_makes() {
    let src = crate_dir().join("src");
    let names = std::fs::read_to_string(src.join("names.json")).unwrap();
    let generated = generate(&recordings(), Some(&names)).unwrap();
    let mut stale = Vec::new();
    for (file, text) in &generated.files {
        let committed = std::fs::read_to_string(src.join(file)).unwrap_or_default();
        if committed != *text {
            stale.push(file.clone());
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} differ from what the generator makes: run \
         `cargo run -p qemu-tools --bin qapi-schema -- gen --out crates/qemu-qapi-types/src \
         crates/qemu-qapi/schemas/*.json`"
    );
    assert!(generated.conflicts.is_empty(), "{:?}", generated.conflicts);
}

/// Command name to (struct, return type), read off `commands.rs`.
fn commands(g: &Generated) -> BTreeMap<String, (String, String)> {
    let text = &g.files["commands.rs"];
    let mut out = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix("impl Command for ") else {
            continue;
        };
        let name = rest.trim_end_matches(" {").to_owned();
        let cmd = lines.next().unwrap();
        let ret = lines.next().unwrap();
        let cmd = cmd.split('"').nth(1).unwrap().to_owned();
        let ret = ret
            .trim()
            .trim_start_matches("type Returns = ")
            .trim_end_matches(';');
        out.insert(cmd, (name, ret.to_owned()));
    }
    out
}

/// Generates from `first`, then from `first` and `then` with the names the
/// first run remembered: every name of the first run is kept, for the same
/// place, and every command keeps its struct and return type's names.
fn adding_keeps_names(first: &[Recording], then: &[Recording]) {
    let a = generate(first, None).unwrap();
    let all: Vec<Recording> = first.iter().chain(then).cloned().collect();
    let b = generate(&all, Some(&a.files["names.json"])).unwrap();
    let names_a: BTreeMap<String, String> = serde_json::from_str(&a.files["names.json"]).unwrap();
    let names_b: BTreeMap<String, String> = serde_json::from_str(&b.files["names.json"]).unwrap();
    assert!(names_b.len() >= names_a.len());
    for (name, place) in &names_a {
        assert_eq!(names_b.get(name), Some(place), "{name}");
    }
    let (ca, cb) = (commands(&a), commands(&b));
    assert!(ca.len() > 100);
    for (cmd, types) in &ca {
        assert_eq!(cb.get(cmd), Some(types), "{cmd}");
    }
}

#[test]
fn adding_a_newer_version_renames_nothing() {
    let (old, new): (Vec<Recording>, Vec<Recording>) = recordings()
        .into_iter()
        .partition(|r| r.version["qemu"]["major"] == 7);
    assert_eq!((old.len(), new.len()), (2, 2));
    adding_keeps_names(&old, &new);
}

#[test]
fn adding_an_older_version_renames_nothing() {
    let (old, new): (Vec<Recording>, Vec<Recording>) = recordings()
        .into_iter()
        .partition(|r| r.version["qemu"]["major"] == 7);
    adding_keeps_names(&new, &old);
}

#[test]
fn generating_twice_gives_the_same_code() {
    let r = recordings();
    let a = generate(&r, None).unwrap();
    let b = generate(&r, None).unwrap();
    assert_eq!(a.files, b.files);
}
