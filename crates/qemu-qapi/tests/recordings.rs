//! The schemas recorded under `schemas/` (by `.ci/record-schemas`) load, and
//! say what their file names say. Needs no QEMU.

use std::path::PathBuf;

use qemu_qapi::{Featured, Recording};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

/// The QEMUs the project is tested against, each recorded.
const EXPECTED: [&str; 4] = [
    "qemu-storage-daemon-10.0.2.json",
    "qemu-storage-daemon-7.2.22.json",
    "qemu-system-x86_64-10.0.2.json",
    "qemu-system-x86_64-7.2.22.json",
];

#[test]
fn every_tested_version_is_recorded() {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    for want in EXPECTED {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
}

#[test]
fn recordings_load_and_match_their_names() {
    let mut seen = 0;
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        seen += 1;
        let file_name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let recording = Recording::load(&path).unwrap();
        assert_eq!(recording.file_name().unwrap(), file_name);
        // Written as the recorder writes it: a re-recording diffs cleanly.
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            recording.to_json(),
            "{file_name}"
        );

        let s = recording.schema().unwrap();
        let v = s.version().unwrap();
        assert!(file_name.ends_with(&format!("-{v}.json")), "{file_name}");
        let commands = s.commands().count();
        let (min_commands, system) = match recording.binary.as_str() {
            "qemu-system-x86_64" => (200, true),
            "qemu-storage-daemon" => (50, false),
            other => panic!("{file_name}: unexpected binary {other}"),
        };
        assert!(commands > min_commands, "{file_name}: {commands} commands");
        assert!(s.events().count() > 10, "{file_name}");
        assert!(s.has_command("qmp_capabilities"), "{file_name}");
        assert!(s.has_command("query-qmp-schema"), "{file_name}");
        assert_eq!(s.has_command("query-status"), system, "{file_name}");
        assert!(s.path_exists("blockdev-add/arg-type/+file/aio/^io_uring"));
        assert_eq!(s.has_command("blockdev-set-active"), v.at_least(10, 0));
        assert!(s.command("x-blockdev-change").unwrap().is_unstable());
        assert!(s.command("drive-backup").unwrap().is_deprecated());
        // No meta-type this crate does not know, in the versions it was
        // written against.
        assert!(s
            .entities()
            .iter()
            .all(|e| !matches!(e.meta, qemu_qapi::Meta::Unknown(_))));
    }
    assert!(seen >= EXPECTED.len(), "{seen} recordings");
}
