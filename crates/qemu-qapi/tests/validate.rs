//! How often [`Schema::check_command`] agrees with a real QEMU: a corpus of
//! requests built from the live schema (right ones, and each mutated into
//! wrong ones) is sent to `qemu-system-x86_64 -machine none -S`, and QEMU's
//! verdict compared with the checker's. QEMU is the one on `PATH` (10.0) or
//! the one the variables name (7.2, see `.ci/qemu-7.2`).
//!
//! QEMU's verdict: a request is *rejected* when QEMU's dispatcher or input
//! visitor refuses it (the command is unknown, or an error in the visitor's
//! words: "Parameter 'x' is missing", "... is unexpected", "Invalid parameter
//! type for 'x'", "... does not accept value ...", "Parameter 'x' expects
//! ..."); it is *accepted* when the command returns, or fails with an error of
//! its own (no such node, no balloon device, ...), which it can only do after
//! its arguments were read.

use std::collections::BTreeSet;
use std::time::Instant;

use qemu_qapi::{CheckErrorKind, Meta, Schema, SchemaInfo};
use qemu_testkit::QemuProcess;
use serde_json::{json, Map, Value};

/// Commands never sent, whole or mutated: they end QEMU, reset it, or start
/// something the corpus cannot clean up.
const DENYLIST: &[&str] = &[
    "quit",
    "system_reset",
    "system_powerdown",
    "system_wakeup",
    "cont",
    "device_add",
    "device_del",
    "migrate",
    "migrate-incoming",
    "x-exit-preconfig",
    "dump-guest-memory",
    "inject-nmi",
];

/// Requests QEMU answers right (or fails for reasons of its own, after
/// reading the arguments): `(command, arguments)`.
fn handwritten() -> Vec<(&'static str, Value)> {
    vec![
        (
            "blockdev-add",
            json!({"driver": "null-co", "node-name": "n0"}),
        ),
        (
            "blockdev-add",
            json!({"driver": "null-co", "node-name": "n1", "size": 1048576,
                   "read-zeroes": true, "latency-ns": 0}),
        ),
        (
            "blockdev-add",
            json!({"driver": "null-aio", "node-name": "n2"}),
        ),
        (
            "blockdev-add",
            json!({"driver": "file", "node-name": "f0", "filename": "/nonexistent/x",
                   "aio": "threads", "read-only": true, "locking": "off"}),
        ),
        (
            "blockdev-add",
            json!({"driver": "raw", "node-name": "r0", "file": "n0",
                   "cache": {"direct": false, "no-flush": true}}),
        ),
        (
            "blockdev-add",
            json!({"driver": "raw", "node-name": "r1",
                   "file": {"driver": "null-co", "size": 4096}}),
        ),
        (
            "blockdev-add",
            json!({"driver": "qcow2", "node-name": "q0", "file": "n1",
                   "discard": "unmap", "cache-size": 1048576}),
        ),
        (
            "blockdev-add",
            json!({"driver": "throttle", "node-name": "t0", "file": "n2",
                   "throttle-group": "tg0"}),
        ),
        ("blockdev-del", json!({"node-name": "nosuch"})),
        (
            "block-set-write-threshold",
            json!({"node-name": "n0", "write-threshold": 100}),
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "n1", "name": "bm0", "granularity": 65536, "persistent": false}),
        ),
        (
            "object-add",
            json!({"qom-type": "memory-backend-ram", "id": "mem0", "size": 1048576,
                   "share": false}),
        ),
        (
            "object-add",
            json!({"qom-type": "secret", "id": "sec0", "data": "abc", "format": "raw"}),
        ),
        (
            "object-add",
            json!({"qom-type": "iothread", "id": "io0", "poll-max-ns": 0}),
        ),
        (
            "object-add",
            json!({"qom-type": "throttle-group", "id": "tg0",
                   "limits": {"iops-total": 100, "bps-read": 1000}}),
        ),
        ("object-del", json!({"id": "nosuch"})),
        ("qom-get", json!({"path": "/machine", "property": "type"})),
        ("qom-list", json!({"path": "/machine"})),
        (
            "qom-set",
            json!({"path": "/nosuch", "property": "x", "value": 1}),
        ),
        (
            "qom-list-types",
            json!({"abstract": true, "implements": "device"}),
        ),
        (
            "qom-list-properties",
            json!({"typename": "memory-backend-ram"}),
        ),
        (
            "device-list-properties",
            json!({"typename": "virtio-blk-pci"}),
        ),
        (
            "human-monitor-command",
            json!({"command-line": "info version"}),
        ),
        (
            "human-monitor-command",
            json!({"command-line": "info status", "cpu-index": 0}),
        ),
        (
            "query-cpu-model-expansion",
            json!({"type": "static", "model": {"name": "max", "props": {}}}),
        ),
        (
            "netdev_add",
            json!({"type": "hubport", "id": "hp0", "hubid": 0}),
        ),
        ("netdev_del", json!({"id": "nosuch"})),
        (
            "chardev-add",
            json!({"id": "c0", "backend": {"type": "null", "data": {}}}),
        ),
        (
            "chardev-add",
            json!({"id": "c1", "backend": {"type": "ringbuf", "data": {"size": 4096}}}),
        ),
        ("chardev-remove", json!({"id": "nosuch"})),
        ("trace-event-get-state", json!({"name": "qmp_*"})),
        (
            "trace-event-set-state",
            json!({"name": "nosuch_event", "enable": false}),
        ),
        ("query-command-line-options", json!({"option": "drive"})),
        ("balloon", json!({"value": 1073741824})),
        (
            "migrate-set-parameters",
            json!({"downtime-limit": 500, "max-bandwidth": 1000000}),
        ),
        (
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "xbzrle", "state": false}]}),
        ),
        (
            "input-send-event",
            json!({"events": [{"type": "key",
                               "data": {"down": true, "key": {"type": "qcode", "data": "a"}}}]}),
        ),
        (
            "send-key",
            json!({"keys": [{"type": "qcode", "data": "a"}], "hold-time": 10}),
        ),
        ("query-stats", json!({"target": "vm"})),
        (
            "block-latency-histogram-set",
            json!({"id": "nosuch", "boundaries": [10, 50]}),
        ),
        ("qmp_capabilities", json!({"enable": []})),
        ("stop", json!({})),
    ]
}

/// One request of the corpus, with what was done to it.
struct Case {
    label: String,
    request: Map<String, Value>,
}

fn request(name: &str, arguments: Option<Value>) -> Map<String, Value> {
    let mut r = Map::new();
    r.insert("execute".into(), name.into());
    if let Some(a) = arguments {
        r.insert("arguments".into(), a);
    }
    r
}

/// The members of the object type `t` that `value` may have: its own, and
/// those of the variant its tag selects.
fn branch_members<'a>(
    s: &'a Schema,
    t: &'a SchemaInfo,
    value: &Map<String, Value>,
) -> Vec<&'a qemu_qapi::Member> {
    let Some(obj) = t.as_object() else {
        return Vec::new();
    };
    let mut out: Vec<_> = obj.members.iter().collect();
    if let Some(tag) = &obj.tag {
        if let Some(Value::String(case)) = value.get(tag) {
            if let Some(vt) = s.variant(t, case) {
                out.extend(branch_members(s, vt, value));
            }
        }
    }
    out
}

/// A misspelling of `name`.
fn misspell(name: &str) -> String {
    if name.contains('-') {
        name.replacen('-', "_", 1)
    } else if name.len() > 3 {
        let mut c: Vec<char> = name.chars().collect();
        c.swap(1, 2);
        c.into_iter().collect()
    } else {
        format!("{name}s")
    }
}

/// A value of another JSON type than `v`.
fn wrong_type(v: &Value) -> Value {
    match v {
        Value::String(_) => json!(42),
        Value::Number(n) if n.is_f64() => json!("1.5"),
        Value::Number(_) => json!("42"),
        Value::Bool(_) => json!("yes"),
        Value::Null | Value::Object(_) | Value::Array(_) => json!(42),
    }
}

/// Mutations of `value`, of the type `t`: each `(label, mutated value)`.
fn mutate(s: &Schema, t: &SchemaInfo, value: &Value, depth: u32) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    if depth == 0 {
        return out;
    }
    match (&t.meta, value) {
        (Meta::Object(obj), Value::Object(map)) => {
            let members = branch_members(s, t, map);
            for m in &members {
                let Some(v) = map.get(&m.name) else { continue };
                let with = |nv: Value| {
                    let mut c = map.clone();
                    c.insert(m.name.clone(), nv);
                    Value::Object(c)
                };
                let mut without = map.clone();
                without.remove(&m.name);
                out.push((
                    format!("{} removed", m.name),
                    Value::Object(without.clone()),
                ));
                let mut renamed = without;
                renamed.insert(misspell(&m.name), v.clone());
                out.push((format!("{} misspelt", m.name), Value::Object(renamed)));
                out.push((format!("{} wrong type", m.name), with(wrong_type(v))));
                out.push((format!("{} null", m.name), with(Value::Null)));
                let mt = s.type_of(m);
                if let (Some(Meta::Enum(_)), Value::String(sv)) = (mt.map(|t| &t.meta), v) {
                    out.push((
                        format!("{} bad enum value", m.name),
                        with(json!("bogus-value")),
                    ));
                    out.push((
                        format!("{} misspelt enum value", m.name),
                        with(json!(misspell(sv))),
                    ));
                }
                if let Value::Number(n) = v {
                    if !n.is_f64() {
                        out.push((format!("{} beyond 64 bits", m.name), with(json!(1e20))));
                        out.push((format!("{} as a float", m.name), with(json!(1.5))));
                    }
                }
                if let Some(mt) = mt {
                    for (label, nv) in mutate(s, mt, v, depth - 1) {
                        out.push((format!("{}: {label}", m.name), with(nv)));
                    }
                }
            }
            let mut extra = map.clone();
            extra.insert("bogus-member".into(), json!(1));
            out.push(("extra member".into(), Value::Object(extra)));
            if obj.tag.is_some() {
                // A member of another branch.
                let here: BTreeSet<&str> = members.iter().map(|m| m.name.as_str()).collect();
                let other = obj
                    .variants
                    .iter()
                    .filter_map(|v| s.get(&v.type_name))
                    .flat_map(|vt| s.members(vt))
                    .find(|m| !here.contains(m.name.as_str()));
                if let Some(m) = other {
                    let mut c = map.clone();
                    c.insert(m.name.clone(), json!("x"));
                    out.push((format!("{} of another branch", m.name), Value::Object(c)));
                }
            }
        }
        (Meta::Array(a), Value::Array(items)) if !items.is_empty() => {
            if let Some(et) = s.get(&a.element_type) {
                for (label, nv) in mutate(s, et, &items[0], depth) {
                    let mut c = items.clone();
                    c[0] = nv;
                    out.push((format!("[0]: {label}"), Value::Array(c)));
                }
            }
            out.push((
                "element of wrong type".into(),
                json!([wrong_type(&items[0])]),
            ));
        }
        (Meta::Alternate(alt), Value::Object(_)) => {
            for m in &alt.members {
                if let Some(mt) = s.get(&m.type_name) {
                    if mt.as_object().is_some() {
                        out.extend(mutate(s, mt, value, depth));
                    }
                }
            }
        }
        _ => {}
    }
    out
}

/// The corpus for schema `s`.
fn corpus(s: &Schema) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut push = |label: String, request: Map<String, Value>| cases.push(Case { label, request });
    // Every query command without mandatory arguments, bare and mutated.
    for c in s.commands() {
        let name = c.name.as_str();
        if !name.starts_with("query-") || DENYLIST.contains(&name) {
            continue;
        }
        let Some(at) = s.arg_type(name) else { continue };
        if s.members(at).iter().any(|m| !m.is_optional()) {
            continue;
        }
        push(name.to_owned(), request(name, None));
        push(format!("{name} {{}}"), request(name, Some(json!({}))));
        push(
            format!("{name} extra member"),
            request(name, Some(json!({"bogus-member": true}))),
        );
        push(format!("{name} misspelt"), request(&misspell(name), None));
    }
    // Requests malformed as a whole.
    push(
        "arguments not an object".into(),
        request("query-status", Some(json!([]))),
    );
    let mut r = request("query-status", None);
    r.insert("bogus".into(), json!(1));
    push("unknown request member".into(), r);
    push("no such command".into(), request("frobnicate", None));
    // Integers out of the range of their (unseen) type: introspection says
    // `int`, the checker accepts them, QEMU does not.
    for (name, args) in [
        (
            "netdev_add",
            json!({"type": "hubport", "id": "hp1", "hubid": 1u64 << 40}),
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "n1", "name": "bm1", "granularity": 1u64 << 40}),
        ),
    ] {
        if s.has_command(name) {
            push(
                format!("{name} {args}: out of range"),
                request(name, Some(args)),
            );
        }
    }
    // Commands with arguments, and their mutations.
    for (name, args) in handwritten() {
        if !s.has_command(name) || DENYLIST.contains(&name) {
            continue;
        }
        let at = s.arg_type(name).unwrap();
        for (label, v) in mutate(s, at, &args, 4) {
            push(format!("{name} {args}: {label}"), request(name, Some(v)));
        }
        push(format!("{name} {args}"), request(name, Some(args)));
    }
    cases
}

/// QEMU's verdict on a reply: `Ok` if the arguments were accepted (the
/// command ran, well or not), `Err(desc)` if the dispatcher or the visitor
/// refused them.
fn qemu_verdict(reply: &Map<String, Value>) -> Result<(), String> {
    let Some(error) = reply.get("error") else {
        return Ok(());
    };
    let class = error["class"].as_str().unwrap_or("");
    let desc = error["desc"].as_str().unwrap_or("").to_owned();
    let visitor = (desc.starts_with("Parameter '")
        && (desc.ends_with("' is missing")
            || desc.ends_with("' is unexpected")
            || desc.contains("' does not accept value '")
            || int_range(&desc)))
        || desc.starts_with("Invalid parameter type for '")
        || desc.starts_with("QMP input ")
        || (class == "CommandNotFound" && desc.ends_with("has not been found"));
    if visitor {
        Err(desc)
    } else {
        Ok(())
    }
}

/// True for the visitor's range error, "Parameter 'x' expects uint8_t" (and
/// not a command's own "Parameter 'cpu-index' expects a CPU number").
fn int_range(desc: &str) -> bool {
    desc.split_once("' expects ").is_some_and(|(_, t)| {
        matches!(
            t.strip_suffix("_t").unwrap_or(t),
            "int8" | "int16" | "int32" | "int64" | "uint8" | "uint16" | "uint32" | "uint64"
        )
    })
}

#[derive(Default)]
struct Tally {
    total: usize,
    agree: usize,
    qemu_accepts: usize,
    qemu_rejects: usize,
    false_accepts: Vec<String>,
    false_rejects: Vec<String>,
    /// Rejections by both for a member, and those where QEMU names the same
    /// member.
    member_errors: usize,
    same_member: usize,
}

fn measure(s: &Schema, qmp: &qemu_qmp::Client, rt: &tokio::runtime::Runtime) -> Tally {
    let mut t = Tally::default();
    for case in corpus(s) {
        let reply = rt
            .block_on(qmp.execute_raw(case.request.clone()))
            .unwrap_or_else(|e| panic!("{}: {e}", case.label));
        let qemu = qemu_verdict(&reply.raw);
        if std::env::var_os("QAPI_VALIDATE_TRACE").is_some() {
            println!("{}: {:?}", case.label, reply.raw.get("error"));
        }
        let ours = s.check_command(&case.request);
        t.total += 1;
        match (&qemu, &ours) {
            (Ok(()), Ok(())) => t.agree += 1,
            (Err(desc), Err(e)) => {
                t.agree += 1;
                if e.path.starts_with("arguments.") {
                    t.member_errors += 1;
                    // QEMU names a bad enum value's member without its path.
                    let name = e.qemu_name();
                    let last = match e.kind {
                        CheckErrorKind::BadEnumValue { .. } => {
                            name.rsplit(['.', ']']).next().unwrap_or(name)
                        }
                        _ => name,
                    };
                    if desc.contains(&format!("'{last}'")) {
                        t.same_member += 1;
                    } else if std::env::var_os("QAPI_VALIDATE_TRACE").is_some() {
                        println!("other member: {}: ours: {e}; QEMU: {desc}", case.label);
                    }
                }
            }
            (Err(desc), Ok(())) => t
                .false_accepts
                .push(format!("{}: QEMU: {desc}", case.label)),
            (Ok(()), Err(e)) => t.false_rejects.push(format!(
                "{}: ours: {e}; QEMU: {}",
                case.label,
                serde_json::to_string(reply.raw.get("error").unwrap_or(&json!("success"))).unwrap()
            )),
        }
        if qemu.is_ok() {
            t.qemu_accepts += 1;
        } else {
            t.qemu_rejects += 1;
        }
    }
    t
}

/// The recorded schemas (no QEMU needed): what one version takes and the
/// other refuses.
#[test]
fn recorded_schemas_differ_where_qemu_does() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let load = |name: &str| {
        qemu_qapi::Recording::load(&dir.join(name))
            .unwrap()
            .schema()
            .unwrap()
    };
    let new = load("qemu-system-x86_64-10.0.2.json");
    let old = load("qemu-system-x86_64-7.2.22.json");
    let qcow2 = json!({"driver": "qcow2", "node-name": "q", "discard-no-unref": true,
                       "file": {"driver": "file", "filename": "/x", "aio": "io_uring"}});
    assert_eq!(new.check("blockdev-add", Some(&qcow2)), Ok(()));
    let e = old.check("blockdev-add", Some(&qcow2)).unwrap_err();
    assert_eq!(e.path, "arguments.discard-no-unref");
    assert_eq!(
        e.to_string(),
        "blockdev-add: arguments.discard-no-unref: unexpected member"
    );
    // blockdev-set-active came with 10.0.
    let active = json!({"execute": "blockdev-set-active", "arguments": {"active": true}});
    assert_eq!(new.check_command(active.as_object().unwrap()), Ok(()));
    let e = old.check_command(active.as_object().unwrap()).unwrap_err();
    assert!(
        matches!(e.kind, CheckErrorKind::UnknownCommand { .. }),
        "{e}"
    );
    for s in [&new, &old] {
        assert_eq!(
            s.check(
                "blockdev-add",
                Some(&json!({"driver": "null-co", "node-name": 1}))
            )
            .unwrap_err()
            .to_string(),
            "blockdev-add: arguments.node-name: expected string, got integer"
        );
        assert_eq!(
            s.check("query-statsu", None).unwrap_err().to_string(),
            "query-statsu: execute: unknown command (did you mean 'query-status'?)"
        );
    }
}

#[test]
fn agreement_with_qemu() {
    qemu_testkit::require_qemu_system!();
    let started = Instant::now();
    let qemu = QemuProcess::system_with_listener(&["-S"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let qmp = rt
        .block_on(qemu_qmp::Client::connect(qemu.qmp_path()))
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", qemu.log()));
    let s = rt.block_on(Schema::fetch(&qmp)).unwrap();
    let version = s.version().unwrap().to_string();
    let t = measure(&s, &qmp, &rt);
    rt.block_on(qmp.disconnect()).unwrap();
    drop(qemu);

    let percent = 100.0 * t.agree as f64 / t.total as f64;
    println!(
        "QEMU {version}: agreement: {}/{} ({percent:.1} %); QEMU accepted {}, rejected {}; \
         false accepts {}, false rejects {} ({:.1} s)",
        t.agree,
        t.total,
        t.qemu_accepts,
        t.qemu_rejects,
        t.false_accepts.len(),
        t.false_rejects.len(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "both reject a member: {}, and name the same member: {}",
        t.member_errors, t.same_member
    );
    for e in &t.false_accepts {
        println!("false accept: {e}");
    }
    for e in &t.false_rejects {
        println!("false reject: {e}");
    }
    assert!(
        t.qemu_accepts >= 200,
        "only {} right requests",
        t.qemu_accepts
    );
    assert!(
        t.qemu_rejects >= 200,
        "only {} wrong requests",
        t.qemu_rejects
    );
    assert!(percent >= 95.0, "agreement {percent:.1} % < 95 %");
}
