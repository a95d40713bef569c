use serde_json::{json, Value};

use super::{closest, edit_distance, CheckError, CheckErrorKind};
use crate::Schema;

/// A fragment shaped like QEMU's: a flat union on `driver` whose branches
/// have an enum, an alternate, an array and a nested struct; every
/// builtin; a command without arguments and one with `allow-oob`.
fn schema() -> Schema {
    Schema::from_introspection(&json!([
        {"name": "blockdev-add", "meta-type": "command", "arg-type": "0", "ret-type": "1"},
        {"name": "query-status", "meta-type": "command", "arg-type": "1", "ret-type": "1"},
        {"name": "query-stats", "meta-type": "command", "arg-type": "1", "ret-type": "1"},
        {"name": "x-oob", "meta-type": "command", "arg-type": "1", "ret-type": "1",
         "allow-oob": true},
        {"name": "builtins", "meta-type": "command", "arg-type": "9", "ret-type": "1"},
        {"name": "0", "meta-type": "object",
         "members": [
            {"name": "driver", "type": "2"},
            {"name": "node-name", "type": "str", "default": null},
            {"name": "cache", "type": "8", "default": null}],
         "tag": "driver",
         "variants": [{"case": "file", "type": "4"}, {"case": "qcow2", "type": "5"}]},
        {"name": "1", "meta-type": "object", "members": []},
        {"name": "2", "meta-type": "enum", "values": ["file", "qcow2", "null-co"]},
        {"name": "4", "meta-type": "object", "members": [
            {"name": "filename", "type": "str"},
            {"name": "aio", "type": "6", "default": null}]},
        {"name": "5", "meta-type": "object", "members": [
            {"name": "file", "type": "7"},
            {"name": "cache-sizes", "type": "[int]", "default": null}]},
        {"name": "6", "meta-type": "enum", "values": ["threads", "native", "io_uring"]},
        {"name": "7", "meta-type": "alternate",
         "members": [{"type": "0"}, {"type": "str"}, {"type": "null"}]},
        {"name": "8", "meta-type": "object", "members": [
            {"name": "direct", "type": "bool", "default": null}]},
        {"name": "9", "meta-type": "object", "members": [
            {"name": "s", "type": "str", "default": null},
            {"name": "i", "type": "int", "default": null},
            {"name": "n", "type": "number", "default": null},
            {"name": "b", "type": "bool", "default": null},
            {"name": "z", "type": "null", "default": null},
            {"name": "a", "type": "any", "default": null},
            {"name": "e", "type": "6", "default": null},
            {"name": "l", "type": "[int]", "default": null}]},
        {"name": "[int]", "meta-type": "array", "element-type": "int"},
        {"name": "str", "meta-type": "builtin", "json-type": "string"},
        {"name": "int", "meta-type": "builtin", "json-type": "int"},
        {"name": "number", "meta-type": "builtin", "json-type": "number"},
        {"name": "bool", "meta-type": "builtin", "json-type": "boolean"},
        {"name": "null", "meta-type": "builtin", "json-type": "null"},
        {"name": "any", "meta-type": "builtin", "json-type": "value"},
    ]))
    .unwrap()
}

fn check(request: Value) -> Result<(), CheckError> {
    schema().check_command(request.as_object().unwrap())
}

/// The error's path and message.
fn fails(request: Value) -> (String, String) {
    let e = check(request.clone()).expect_err(&request.to_string());
    (e.path.clone(), e.to_string())
}

fn blockdev(args: Value) -> Value {
    json!({"execute": "blockdev-add", "arguments": args})
}

#[test]
fn edit_distance_counts_edits_and_transpositions() {
    assert_eq!(edit_distance("", ""), 0);
    assert_eq!(edit_distance("abc", ""), 3);
    assert_eq!(edit_distance("", "ab"), 2);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    assert_eq!(edit_distance("qcode", "qocde"), 1);
    assert_eq!(edit_distance("node-name", "node_name"), 1);
    assert_eq!(
        closest("query-stauts", ["query-status", "query-stats"]).as_deref(),
        Some("query-status")
    );
    assert_eq!(closest("zzz", ["query-status"]), None);
}

#[test]
fn requests_as_a_whole() {
    assert!(check(json!({"execute": "query-status"})).is_ok());
    assert!(check(json!({"execute": "query-status", "arguments": {}, "id": 1})).is_ok());
    assert!(check(json!({"exec-oob": "x-oob", "id": "a"})).is_ok());
    assert_eq!(
        fails(json!({"exec-oob": "query-status"})).1,
        "query-status: exec-oob: the command does not support out-of-band"
    );
    assert_eq!(fails(json!({"id": 1})).0, "execute");
    assert_eq!(
        fails(json!({"execute": 1})).1,
        "request: execute: expected string, got integer"
    );
    assert_eq!(
        fails(json!({"execute": "query-status", "arguments": []})).1,
        "query-status: arguments: expected object, got array"
    );
    assert_eq!(
        fails(json!({"execute": "query-status", "bogus": 1})).1,
        "query-status: bogus: unexpected member"
    );
    assert_eq!(
        fails(json!({"execute": "query-status", "exec-oob": "x-oob"})).0,
        "exec-oob"
    );
}

#[test]
fn unknown_commands_suggest_the_closest() {
    let e = check(json!({"execute": "query-stauts"})).unwrap_err();
    assert_eq!(
        e.kind,
        CheckErrorKind::UnknownCommand {
            did_you_mean: Some("query-status".into())
        }
    );
    assert_eq!(
        e.to_string(),
        "query-stauts: execute: unknown command (did you mean 'query-status'?)"
    );
    assert_eq!(
        fails(json!({"execute": "frobnicate"})).1,
        "frobnicate: execute: unknown command"
    );
    assert!(schema().check("query-status", None).is_ok());
    assert!(schema().check("query-status", Some(&json!({}))).is_ok());
    assert_eq!(
        schema()
            .check("query-status", Some(&json!(1)))
            .unwrap_err()
            .path,
        "arguments"
    );
}

#[test]
fn commands_without_arguments_take_none() {
    assert_eq!(
        fails(json!({"execute": "query-status", "arguments": {"verbose": true}})).1,
        "query-status: arguments.verbose: unexpected member"
    );
}

#[test]
fn flat_unions_check_the_branch_the_tag_selects() {
    assert!(check(blockdev(json!({"driver": "file", "filename": "/x"}))).is_ok());
    assert!(check(blockdev(json!({"driver": "null-co"}))).is_ok());
    assert!(check(blockdev(json!({"driver": "qcow2", "file": "n0",
                                  "cache-sizes": [1, 2]})))
    .is_ok());
    // The discriminator missing, or not a value of its enum.
    assert_eq!(
        fails(blockdev(json!({"filename": "/x"}))).1,
        "blockdev-add: arguments.driver: missing"
    );
    assert_eq!(
        fails(blockdev(json!({"driver": "flie", "filename": "/x"}))).1,
        "blockdev-add: arguments.driver: 'flie' is not a valid value (did you mean 'file'?)"
    );
    // A member of the branch missing; one of another branch.
    assert_eq!(
        fails(blockdev(json!({"driver": "file"}))).1,
        "blockdev-add: arguments.filename: missing"
    );
    assert_eq!(
        fails(blockdev(
            json!({"driver": "file", "filename": "/x", "file": "n0"})
        ))
        .1,
        "blockdev-add: arguments.file: unexpected member"
    );
    assert_eq!(
        fails(blockdev(json!({"driver": "null-co", "filename": "/x"}))).0,
        "arguments.filename"
    );
    // Misspelt: the closest member of the branch.
    assert_eq!(
        fails(blockdev(
            json!({"driver": "file", "filename": "/x", "node_name": "a"})
        ))
        .1,
        "blockdev-add: arguments.node_name: unexpected member (did you mean 'node-name'?)"
    );
    assert_eq!(
        fails(blockdev(
            json!({"driver": "file", "filename": "/x", "aio": "uring"})
        ))
        .1,
        "blockdev-add: arguments.aio: 'uring' is not a valid value"
    );
    assert_eq!(
        fails(blockdev(
            json!({"driver": "file", "filename": "/x", "aio": "natve"})
        ))
        .1,
        "blockdev-add: arguments.aio: 'natve' is not a valid value (did you mean 'native'?)"
    );
}

#[test]
fn nested_structs_arrays_and_alternates() {
    assert_eq!(
        fails(blockdev(
            json!({"driver": "null-co", "cache": {"direct": 1}})
        ))
        .1,
        "blockdev-add: arguments.cache.direct: expected boolean, got integer"
    );
    assert_eq!(
        fails(blockdev(
            json!({"driver": "null-co", "cache": {"direkt": true}})
        ))
        .1,
        "blockdev-add: arguments.cache.direkt: unexpected member (did you mean 'direct'?)"
    );
    assert_eq!(
        fails(blockdev(json!({"driver": "null-co", "cache": []}))).1,
        "blockdev-add: arguments.cache: expected object, got array"
    );
    assert_eq!(
        fails(blockdev(
            json!({"driver": "qcow2", "file": "n", "cache-sizes": [1, "2"]})
        ))
        .1,
        "blockdev-add: arguments.cache-sizes[1]: expected integer, got string"
    );
    // The alternate: a node name, a nested definition, or null.
    for file in [
        json!("n0"),
        json!(null),
        json!({"driver": "file", "filename": "/x"}),
    ] {
        assert!(check(blockdev(json!({"driver": "qcow2", "file": file}))).is_ok());
    }
    assert_eq!(
        fails(blockdev(json!({"driver": "qcow2", "file": 1}))).1,
        "blockdev-add: arguments.file: expected object or string or null, got integer"
    );
    assert_eq!(
        fails(blockdev(
            json!({"driver": "qcow2", "file": {"driver": "file"}})
        ))
        .1,
        "blockdev-add: arguments.file.filename: missing"
    );
    assert_eq!(
        fails(blockdev(json!({"driver": "qcow2",
                              "file": {"driver": "qcow2", "file": {"driver": "nul"}}})))
        .0,
        "arguments.file.file.driver"
    );
}

#[test]
fn builtins() {
    let ok = |args: Value| {
        schema()
            .check("builtins", Some(&args))
            .unwrap_or_else(|e| panic!("{args}: {e}"))
    };
    let bad = |args: Value| {
        schema()
            .check("builtins", Some(&args))
            .expect_err(&args.to_string())
            .to_string()
    };
    ok(
        json!({"s": "x", "i": -3, "n": 1.5, "b": false, "z": null, "e": "native",
              "l": [], "a": {"any": ["thing"]}}),
    );
    // `number` takes integers; `int` takes anything from -2^63 to 2^64 - 1.
    ok(json!({"n": 2, "i": u64::MAX}));
    ok(json!({"i": i64::MIN}));
    for a in [json!(null), json!(1), json!("s"), json!([1]), json!({})] {
        ok(json!({ "a": a }));
    }
    assert_eq!(
        bad(json!({"i": 1.0})),
        "builtins: arguments.i: expected integer, got number"
    );
    assert_eq!(
        bad(json!({"i": 1e20})),
        "builtins: arguments.i: expected integer, got number"
    );
    assert_eq!(
        bad(json!({"i": "1"})),
        "builtins: arguments.i: expected integer, got string"
    );
    assert_eq!(
        bad(json!({"n": "1"})),
        "builtins: arguments.n: expected number, got string"
    );
    assert_eq!(
        bad(json!({"b": "true"})),
        "builtins: arguments.b: expected boolean, got string"
    );
    assert_eq!(
        bad(json!({"s": null})),
        "builtins: arguments.s: expected string, got null"
    );
    assert_eq!(
        bad(json!({"z": 0})),
        "builtins: arguments.z: expected null, got integer"
    );
    assert_eq!(
        bad(json!({"e": 1})),
        "builtins: arguments.e: expected string, got integer"
    );
    assert_eq!(
        bad(json!({"l": 1})),
        "builtins: arguments.l: expected array, got integer"
    );
}

#[test]
fn the_first_error_in_visiting_order() {
    // Members in schema order, then the branch's, then the unexpected.
    assert_eq!(
        fails(blockdev(
            json!({"driver": "file", "node-name": 1, "zzz": 1})
        ))
        .0,
        "arguments.node-name"
    );
    assert_eq!(
        fails(blockdev(json!({"driver": "file", "zzz": 1}))).0,
        "arguments.filename"
    );
    assert_eq!(
        fails(blockdev(
            json!({"driver": "file", "filename": "/x", "zzz": 1, "aaa": 1})
        ))
        .0,
        "arguments.aaa"
    );
}

#[test]
fn qemu_names_members_without_arguments() {
    let e = check(blockdev(
        json!({"driver": "qcow2", "file": {"driver": "file"}}),
    ))
    .unwrap_err();
    assert_eq!(e.qemu_name(), "file.filename");
    assert_eq!(e.command, "blockdev-add");
}
