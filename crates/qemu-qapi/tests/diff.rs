//! `diff` on the recorded schemas of QEMU 7.2 and 10.0: facts known from
//! QEMU's changelogs. Needs no QEMU.

use std::path::PathBuf;

use qemu_qapi::{diff, Recording, Schema};

fn load(name: &str) -> Schema {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(name);
    Recording::load(&path).unwrap().schema().unwrap()
}

#[test]
fn system_7_2_to_10_0() {
    let old = load("qemu-system-x86_64-7.2.22.json");
    let new = load("qemu-system-x86_64-10.0.2.json");
    let d = diff(&old, &new);
    let lines = d.lines();
    let has = |l: &str| assert!(lines.iter().any(|x| x == l), "no {l:?} in\n{d}");
    has("blockdev-set-active: command added");
    has("MEM_UNPLUG_ERROR: event removed");
    has("query-status return: member singlestep removed");
    has("blockdev-add arguments +qcow2: member discard-no-unref added (optional)");
    has("blockdev-add arguments driver: enum value gluster: feature deprecated added");
    // Sorted and without duplicates, and the same both times.
    let mut sorted = d.changes.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, d.changes);
    assert_eq!(diff(&old, &new), d);
    // Nothing changed from a schema to itself, though its type names are
    // its own.
    assert!(diff(&new, &new).is_empty());
    // Backwards, the same changes the other way.
    let back = diff(&new, &old).lines();
    assert!(back
        .iter()
        .any(|l| l == "blockdev-set-active: command removed"));
    assert!(back
        .iter()
        .any(|l| l == "query-status return: member singlestep added (mandatory)"));
}

#[test]
fn storage_daemon_7_2_to_10_0() {
    let old = load("qemu-storage-daemon-7.2.22.json");
    let new = load("qemu-storage-daemon-10.0.2.json");
    let d = diff(&old, &new);
    assert!(
        d.lines()
            .iter()
            .any(|l| l == "blockdev-set-active: command added"),
        "{d}"
    );
    assert!(
        !d.lines().iter().any(|l| l.starts_with("query-status")),
        "{d}"
    );
}
