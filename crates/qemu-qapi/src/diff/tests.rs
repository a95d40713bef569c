use super::*;
use serde_json::{json, Value};

use crate::Schema;

fn schema(v: Value) -> Schema {
    Schema::from_introspection(&v).unwrap()
}

/// A little `blockdev-add` (as in the crate's other tests), numbered
/// from `base` so that the two sides never share type names.
fn old() -> Schema {
    schema(json!([
        {"name": "blockdev-add", "meta-type": "command", "arg-type": "10", "ret-type": "11"},
        {"name": "10", "meta-type": "object",
         "members": [
            {"name": "driver", "type": "12"},
            {"name": "node-name", "type": "str", "default": null},
            {"name": "discard", "type": "str", "default": null}],
         "tag": "driver",
         "variants": [{"case": "file", "type": "14"}, {"case": "nfs", "type": "11"}]},
        {"name": "11", "meta-type": "object", "members": []},
        {"name": "12", "meta-type": "enum", "values": ["file", "nfs"]},
        {"name": "14", "meta-type": "object", "members": [
            {"name": "filename", "type": "str"},
            {"name": "aio", "type": "16", "default": null},
            {"name": "next", "type": "17", "default": null}]},
        {"name": "16", "meta-type": "enum", "members": [{"name": "threads"}, {"name": "native"}]},
        {"name": "17", "meta-type": "alternate", "members": [{"type": "10"}, {"type": "str"}]},
        {"name": "str", "meta-type": "builtin", "json-type": "string"},
        {"name": "int", "meta-type": "builtin", "json-type": "int"},
        {"name": "bool", "meta-type": "builtin", "json-type": "boolean"},
        {"name": "STOP", "meta-type": "event", "arg-type": "11"},
        {"name": "GONE", "meta-type": "event", "arg-type": "11", "features": ["deprecated"]},
        {"name": "query-x", "meta-type": "command", "arg-type": "11", "ret-type": "20"},
        {"name": "20", "meta-type": "array", "element-type": "21"},
        {"name": "21", "meta-type": "object", "members": [
            {"name": "a", "type": "int"}, {"name": "b", "type": "bool"}]},
        {"name": "old-cmd", "meta-type": "command", "arg-type": "11", "ret-type": "11"},
    ]))
}

fn new() -> Schema {
    schema(json!([
        {"name": "blockdev-add", "meta-type": "command", "arg-type": "0", "ret-type": "1",
         "features": ["x"]},
        {"name": "0", "meta-type": "object",
         "members": [
            {"name": "driver", "type": "2"},
            {"name": "node-name", "type": "str"},
            {"name": "discard", "type": "3", "default": null},
            {"name": "cache", "type": "bool", "default": null}],
         "tag": "driver",
         "variants": [{"case": "file", "type": "4"}, {"case": "io", "type": "1"}]},
        {"name": "1", "meta-type": "object", "members": []},
        {"name": "2", "meta-type": "enum", "values": ["file", "io"]},
        {"name": "3", "meta-type": "enum", "values": ["ignore"]},
        {"name": "4", "meta-type": "object", "members": [
            {"name": "filename", "type": "str", "features": ["deprecated"]},
            {"name": "aio", "type": "6", "default": null},
            {"name": "next", "type": "7", "default": null}]},
        {"name": "6", "meta-type": "enum", "members": [
            {"name": "threads"}, {"name": "native", "features": ["deprecated"]},
            {"name": "io_uring"}]},
        {"name": "7", "meta-type": "alternate", "members": [{"type": "0"}, {"type": "null"}]},
        {"name": "str", "meta-type": "builtin", "json-type": "string"},
        {"name": "null", "meta-type": "builtin", "json-type": "null"},
        {"name": "int", "meta-type": "builtin", "json-type": "int"},
        {"name": "STOP", "meta-type": "event", "arg-type": "1"},
        {"name": "NEW", "meta-type": "event", "arg-type": "1"},
        {"name": "query-x", "meta-type": "command", "arg-type": "1", "ret-type": "20"},
        {"name": "20", "meta-type": "array", "element-type": "21"},
        {"name": "21", "meta-type": "object", "members": [
            {"name": "a", "type": "int"}, {"name": "b", "type": "int"}]},
        {"name": "new-cmd", "meta-type": "command", "arg-type": "1", "ret-type": "1",
         "features": ["unstable"]},
    ]))
}

#[test]
fn the_fragments_differ_as_expected() {
    let d = diff(&old(), &new());
    let text = d.to_string();
    assert_eq!(
        text,
        "\
commands:
  blockdev-add: feature x added
  new-cmd: command added
  old-cmd: command removed
events:
  GONE: event removed
  NEW: event added
types:
  blockdev-add arguments: member cache added (optional)
  blockdev-add arguments: variant +io added
  blockdev-add arguments: variant +nfs removed
  blockdev-add arguments +file.aio: enum value io_uring added
  blockdev-add arguments +file.aio: enum value native: feature deprecated added
  blockdev-add arguments +file.filename: feature deprecated added
  blockdev-add arguments +file.next: alternate branch null added
  blockdev-add arguments +file.next: alternate branch string removed
  blockdev-add arguments discard: type string -> enum
  blockdev-add arguments driver: enum value io added
  blockdev-add arguments driver: enum value nfs removed
  blockdev-add arguments node-name: now mandatory
  query-x return b: type boolean -> int
"
    );
    // New-cmd's unstable feature is not reported apart: it is new.
    assert!(d
        .changes
        .iter()
        .all(|c| c.name != "new-cmd" || c.kind == ChangeKind::CommandAdded));
}

#[test]
fn a_schema_does_not_differ_from_itself() {
    assert!(diff(&old(), &old()).is_empty());
    assert!(diff(&new(), &new()).is_empty());
    assert_eq!(diff(&old(), &old()).to_string(), "");
}

#[test]
fn the_reverse_diff_mirrors() {
    let d = diff(&new(), &old());
    let lines = d.lines();
    assert!(
        lines.contains(&"new-cmd: command removed".to_owned()),
        "{lines:?}"
    );
    assert!(lines.contains(&"blockdev-add arguments node-name: now optional".to_owned()));
    assert!(lines.contains(&"blockdev-add arguments: member cache removed".to_owned()));
    assert!(
        lines.contains(&"blockdev-add arguments +file.aio: enum value io_uring removed".to_owned())
    );
    assert!(lines.contains(&"blockdev-add: feature x removed".to_owned()));
}

#[test]
fn json_has_the_fields() {
    let d = diff(&old(), &new());
    let v = d.to_json();
    let changes = v["changes"].as_array().unwrap();
    assert_eq!(changes.len(), d.changes.len());
    let aio = changes
        .iter()
        .find(|c| c["change"] == "enum-value-added")
        .unwrap();
    assert_eq!(
        *aio,
        json!({"group": "types", "name": "blockdev-add", "part": "arguments",
               "path": "+file.aio", "change": "enum-value-added", "value": "io_uring",
               "text": "blockdev-add arguments +file.aio: enum value io_uring added"})
    );
    let added = changes
        .iter()
        .find(|c| c["change"] == "member-added")
        .unwrap();
    assert_eq!(added["member"], "cache");
    assert_eq!(added["optional"], true);
}
