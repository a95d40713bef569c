//! The model and path queries on small hand-written introspection fragments.

use serde_json::{json, Value};

use crate::{Featured, Found, Meta, QemuVersion, Recording, Schema, SchemaError};

/// A little `blockdev-add`, shaped like QEMU's: a union on `driver` whose
/// `file` branch has an enum `aio`, an alternate, an array, and features.
fn fragment() -> Value {
    json!([
        {"name": "blockdev-add", "meta-type": "command", "arg-type": "0", "ret-type": "1",
         "allow-oob": false},
        {"name": "0", "meta-type": "object",
         "members": [
            {"name": "driver", "type": "2"},
            {"name": "node-name", "type": "str", "default": null},
            {"name": "discard", "type": "3", "default": null,
             "features": ["deprecated"]}],
         "tag": "driver",
         "variants": [
            {"case": "file", "type": "4"},
            {"case": "qcow2", "type": "5"}]},
        {"name": "1", "meta-type": "object", "members": []},
        {"name": "2", "meta-type": "enum",
         "members": [{"name": "file"}, {"name": "qcow2"}, {"name": "x-old", "features": ["unstable"]}],
         "values": ["file", "qcow2", "x-old"]},
        // Before QEMU 6.2, enums had only `values`.
        {"name": "3", "meta-type": "enum", "values": ["ignore", "unmap"]},
        {"name": "4", "meta-type": "object", "members": [
            {"name": "filename", "type": "str"},
            {"name": "aio", "type": "6", "default": null},
            {"name": "x-check", "type": "bool", "default": null, "features": ["unstable"]}]},
        {"name": "5", "meta-type": "object", "members": [
            {"name": "file", "type": "7"},
            {"name": "cache-sizes", "type": "[int]", "default": null}]},
        {"name": "6", "meta-type": "enum", "values": ["threads", "native", "io_uring"]},
        {"name": "7", "meta-type": "alternate", "members": [{"type": "0"}, {"type": "str"}]},
        {"name": "[int]", "meta-type": "array", "element-type": "int"},
        {"name": "str", "meta-type": "builtin", "json-type": "string"},
        {"name": "int", "meta-type": "builtin", "json-type": "int"},
        {"name": "bool", "meta-type": "builtin", "json-type": "boolean"},
        {"name": "STOP", "meta-type": "event", "arg-type": "1"},
        {"name": "x-debug", "meta-type": "command", "arg-type": "1", "ret-type": "1",
         "allow-oob": true, "features": ["unstable", "deprecated"]},
    ])
}

fn schema() -> Schema {
    Schema::from_introspection(&fragment()).unwrap()
}

#[test]
fn commands_events_and_types_are_indexed() {
    let s = schema();
    assert!(s.has_command("blockdev-add"));
    assert!(!s.has_command("STOP"));
    assert!(s.has_event("STOP"));
    assert!(s.event("blockdev-add").is_none());
    assert_eq!(
        s.commands().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["blockdev-add", "x-debug"]
    );
    assert_eq!(s.events().count(), 1);
    assert_eq!(s.entities().len(), fragment().as_array().unwrap().len());
    assert_eq!(s.get("str").unwrap().meta_type(), "builtin");
    assert_eq!(s.version(), None);
}

#[test]
fn arg_and_ret_types_resolve() {
    let s = schema();
    let cmd = s.command("blockdev-add").unwrap().as_command().unwrap();
    assert_eq!(cmd.arg_type, "0");
    assert!(!cmd.allow_oob);
    assert!(
        s.command("x-debug")
            .unwrap()
            .as_command()
            .unwrap()
            .allow_oob
    );
    let args = s.arg_type("blockdev-add").unwrap();
    assert_eq!(args.as_object().unwrap().tag.as_deref(), Some("driver"));
    assert_eq!(s.ret_type("blockdev-add").unwrap().name, "1");
    assert_eq!(s.arg_type("STOP").unwrap().name, "1");
    assert!(s.ret_type("STOP").is_none());
}

#[test]
fn members_include_those_of_variants() {
    let s = schema();
    let args = s.arg_type("blockdev-add").unwrap();
    let names: Vec<&str> = s.members(args).iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "driver",
            "node-name",
            "discard",
            "filename",
            "aio",
            "x-check",
            "file",
            "cache-sizes"
        ]
    );
    let aio = s.member(args, "aio").unwrap();
    assert!(aio.is_optional());
    assert!(!s.member(args, "filename").unwrap().is_optional());
    assert_eq!(
        s.enum_values(s.type_of(aio).unwrap()),
        ["threads", "native", "io_uring"]
    );
    let file = s.variant(args, "file").unwrap();
    assert_eq!(file.as_object().unwrap().members.len(), 3);
    assert!(s.variant(args, "nbd").is_none());
}

#[test]
fn features() {
    let s = schema();
    let debug = s.command("x-debug").unwrap();
    assert!(debug.is_unstable() && debug.is_deprecated());
    assert!(!s.command("blockdev-add").unwrap().is_deprecated());
    let args = s.arg_type("blockdev-add").unwrap();
    assert!(s.member(args, "discard").unwrap().is_deprecated());
    assert!(s.member(args, "x-check").unwrap().is_unstable());
    let drivers = s.get("2").unwrap().as_enum().unwrap();
    assert!(drivers.value("x-old").unwrap().is_unstable());
    assert!(!drivers.value("file").unwrap().has_feature("unstable"));
    // Enums from `values` only have no features.
    assert!(s.get("3").unwrap().as_enum().unwrap().members[0]
        .features
        .is_empty());
}

#[test]
fn paths() {
    let s = schema();
    let yes = [
        "blockdev-add",
        "STOP",
        "STOP/arg-type",
        "blockdev-add/arg-type",
        "blockdev-add/ret-type",
        "blockdev-add/arg-type/driver",
        "blockdev-add/arg-type/driver/^qcow2",
        "blockdev-add/arg-type/driver/^x-old/$unstable",
        "blockdev-add/arg-type/+file",
        "blockdev-add/arg-type/+file/aio/^io_uring",
        // Variant members are found without naming the variant.
        "blockdev-add/arg-type/aio/^native",
        "blockdev-add/arg-type/filename/!string",
        "blockdev-add/arg-type/discard/$deprecated",
        "blockdev-add/arg-type/discard/^unmap",
        "blockdev-add/arg-type/+file/x-check/$unstable",
        "blockdev-add/arg-type/+file/x-check/!boolean",
        // Arrays and alternates are looked through.
        "blockdev-add/arg-type/+qcow2/cache-sizes/!int",
        "blockdev-add/arg-type/+qcow2/file/!string",
        "blockdev-add/arg-type/+qcow2/file/+file/aio/^threads",
        "blockdev-add/arg-type/+qcow2/file/driver",
        "x-debug/$unstable",
        "x-debug/$deprecated",
        "blockdev-add/arg-type/*node-name",
        "blockdev-add/arg-type/*aio/^native",
    ];
    for p in yes {
        assert!(s.path_exists(p), "{p} should exist");
    }
    let no = [
        "",
        "/",
        "blockdev-add/",
        "nope",
        "str",
        "0",
        "blockdev-add/driver",
        "blockdev-add/$deprecated",
        "STOP/ret-type",
        "blockdev-add/arg-type/nope",
        "blockdev-add/arg-type/+nbd",
        "blockdev-add/arg-type/+file/aio/^posix",
        "blockdev-add/arg-type/+qcow2/aio",
        "blockdev-add/arg-type/filename/!int",
        "blockdev-add/arg-type/driver/^file/$unstable",
        "blockdev-add/arg-type/aio/^native/more",
        "blockdev-add/arg-type/node-name/$deprecated",
        "x-debug/$nope",
        "blockdev-add/arg-type/*driver",
        "blockdev-add/arg-type/*filename",
    ];
    for p in no {
        assert!(!s.path_exists(p), "{p} should not exist");
    }
}

#[test]
fn query_says_what_it_found() {
    let s = schema();
    match s.query("blockdev-add/arg-type/+file/aio/^io_uring") {
        Some(Found::EnumValue { owner, value }) => {
            assert_eq!(owner.name, "6");
            assert_eq!(value.name, "io_uring");
        }
        other => panic!("{other:?}"),
    }
    match s.query("blockdev-add/arg-type/+file/aio") {
        Some(Found::Member { owner, member }) => {
            assert_eq!(owner.name, "4");
            assert_eq!(member.type_name, "6");
        }
        other => panic!("{other:?}"),
    }
    let found = s.query("x-debug").unwrap();
    assert_eq!(found.entity().unwrap().name, "x-debug");
    assert!(found.is_unstable());
    assert_eq!(
        s.query("blockdev-add/arg-type/+qcow2/cache-sizes/!int")
            .unwrap()
            .entity()
            .unwrap()
            .name,
        "int"
    );
}

#[test]
fn unknown_meta_types_and_fields_are_kept_or_ignored() {
    let s = Schema::from_introspection(&json!([
        {"name": "frob", "meta-type": "command", "arg-type": "0", "ret-type": "0",
         "new-field": {"x": 1}, "features": ["shiny"]},
        {"name": "0", "meta-type": "object", "members": [
            {"name": "a", "type": "0", "extra": true}], "more": []},
        {"name": "9", "meta-type": "quantum", "whatever": 1},
    ]))
    .unwrap();
    assert!(s.command("frob").unwrap().has_feature("shiny"));
    assert_eq!(s.get("9").unwrap().meta, Meta::Unknown("quantum".into()));
    assert!(s.path_exists("frob/arg-type/a/a/a"));
}

#[test]
fn malformed_schemas_are_errors() {
    assert!(matches!(
        Schema::from_introspection(&json!({"return": []})),
        Err(SchemaError::NotAnArray("an object"))
    ));
    let e = Schema::from_introspection(&json!([
        {"name": "ok", "meta-type": "event", "arg-type": "0"},
        {"name": "bad", "meta-type": "command", "arg-type": "0"},
    ]))
    .unwrap_err();
    match &e {
        SchemaError::Entity { index, name, .. } => assert_eq!((*index, name.as_str()), (1, "bad")),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("ret-type"), "{e}");
    assert!(matches!(
        Schema::from_introspection(&json!([{"meta-type": "event", "arg-type": "0"}])),
        Err(SchemaError::Entity { .. })
    ));
    assert!(matches!(
        Schema::from_introspection(&json!([
            {"name": "a", "meta-type": "event", "arg-type": "0"},
            {"name": "a", "meta-type": "builtin", "json-type": "int"},
        ])),
        Err(SchemaError::Duplicate(n)) if n == "a"
    ));
}

#[test]
fn versions() {
    let v = QemuVersion::from_query_version(&json!({
        "qemu": {"major": 7, "minor": 2, "micro": 22}, "package": "Debian 1:7.2+dfsg-7+deb12u18"
    }))
    .unwrap();
    assert_eq!(v.to_string(), "7.2.22");
    assert!(v.is(7, 2) && v.at_least(7, 0) && !v.at_least(8, 0));
    assert!(QemuVersion::from_query_version(&json!({"qemu": {}})).is_err());
}

#[test]
fn recordings_round_trip() {
    let r = Recording {
        binary: "qemu-storage-daemon".into(),
        version: json!({"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": "x"}),
        schema: fragment(),
    };
    let text = r.to_json();
    // One line per entity, plus the frame.
    assert_eq!(
        text.lines().count(),
        fragment().as_array().unwrap().len() + 6
    );
    assert!(text.starts_with("{\n\"binary\": \"qemu-storage-daemon\",\n\"version\": {"));
    assert_eq!(Recording::from_json(&text).unwrap(), r);
    assert_eq!(r.file_name().unwrap(), "qemu-storage-daemon-10.0.2.json");
    let s = r.schema().unwrap();
    assert_eq!(s.version().unwrap().to_string(), "10.0.2");
    assert!(s.has_command("blockdev-add"));
    assert!(matches!(
        Recording::from_json("{\"binary\": 1, \"version\": {}, \"schema\": []}"),
        Err(SchemaError::Recording(_))
    ));
    assert!(Recording::from_json("{}").is_err());
}
