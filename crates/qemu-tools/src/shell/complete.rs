//! Tab completion: command names from `query-commands`, argument names and values
//! from `query-qmp-schema`, and HMP commands from `help` and `info`.
//!
//! The candidates are computed by pure functions of the line, the cursor and the data
//! fetched from the peer when the shell starts ([`Completions`]), so they can be tested
//! without a terminal; [`ShellHelper`] plugs them into rustyline.
//!
//! In QMP mode:
//!
//! - the first word completes to a command name (and `transaction(`);
//! - later words complete to `name=` for the command's arguments (those not given yet),
//!   or `name.` for an argument that is an object, whose members then complete after
//!   the dot (`file.` -> `file.driver=`); the members of a union's variant are offered
//!   once its tag is given (`blockdev-add driver=null-co ` offers `size=`);
//! - after `name=`, enumeration values and `true`/`false` complete;
//! - inside a transaction (`TRANS>` or after `transaction(`), the first word completes
//!   to an action type and the rest to that action's `data` members.
//!
//! In HMP mode the whole line completes against `help`'s command names, `help NAME`,
//! and `info` subcommands, as QEMU's Python shell does.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qemu_qmp::json::Ordered;
use qemu_qmp::{Client, JsonObject, Value};
use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::Helper;

use super::parser::{insert_argument, parse_value, tokenize_lenient};

/// How deep type references are followed (schemas are acyclic in practice, but peer
/// data is not trusted).
const MAX_TYPE_DEPTH: usize = 16;

/// One completion: what is listed, and what replaces the word being completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Shown when several candidates are listed.
    pub display: String,
    /// Replaces the text from the start position to the cursor.
    pub replacement: String,
}

#[derive(Debug, Clone)]
struct Member {
    name: String,
    ty: String,
}

#[derive(Debug, Clone)]
enum SchemaType {
    Object {
        members: Vec<Member>,
        tag: Option<String>,
        variants: Vec<(String, String)>,
    },
    Enum(Vec<String>),
    Array(String),
    Alternate(Vec<String>),
    Builtin(String),
}

/// The parts of `query-qmp-schema` completion needs: each command's argument type,
/// and the types.
#[derive(Debug, Clone, Default)]
pub struct QmpSchema {
    commands: HashMap<String, String>,
    types: HashMap<String, SchemaType>,
}

fn str_field<'a>(obj: &'a JsonObject, key: &str) -> Option<&'a str> {
    obj.get(key).and_then(Value::as_str)
}

impl QmpSchema {
    /// Read the reply of `query-qmp-schema` (the `return` array). Malformed entries
    /// are skipped.
    pub fn from_introspection(schema: &Value) -> QmpSchema {
        let mut s = QmpSchema::default();
        let Some(entries) = schema.as_array() else {
            return s;
        };
        for e in entries.iter().filter_map(Value::as_object) {
            let (Some(name), Some(meta)) = (str_field(e, "name"), str_field(e, "meta-type")) else {
                continue;
            };
            let name = name.to_owned();
            let members = |key: &str| -> Vec<&JsonObject> {
                e.get(key)
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_object).collect())
                    .unwrap_or_default()
            };
            match meta {
                "command" => {
                    if let Some(arg) = str_field(e, "arg-type") {
                        s.commands.insert(name, arg.to_owned());
                    }
                }
                "object" => {
                    let ms = members("members")
                        .into_iter()
                        .filter_map(|m| {
                            Some(Member {
                                name: str_field(m, "name")?.to_owned(),
                                ty: str_field(m, "type")?.to_owned(),
                            })
                        })
                        .collect();
                    let variants = members("variants")
                        .into_iter()
                        .filter_map(|v| {
                            Some((
                                str_field(v, "case")?.to_owned(),
                                str_field(v, "type")?.to_owned(),
                            ))
                        })
                        .collect();
                    s.types.insert(
                        name,
                        SchemaType::Object {
                            members: ms,
                            tag: str_field(e, "tag").map(str::to_owned),
                            variants,
                        },
                    );
                }
                "enum" => {
                    // "values" (all versions so far) or "members" (QEMU 6.2 and later).
                    let mut values: Vec<String> = e
                        .get("values")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default();
                    if values.is_empty() {
                        values = members("members")
                            .into_iter()
                            .filter_map(|m| str_field(m, "name").map(str::to_owned))
                            .collect();
                    }
                    s.types.insert(name, SchemaType::Enum(values));
                }
                "array" => {
                    if let Some(el) = str_field(e, "element-type") {
                        s.types.insert(name, SchemaType::Array(el.to_owned()));
                    }
                }
                "alternate" => {
                    let alts = members("members")
                        .into_iter()
                        .filter_map(|m| str_field(m, "type").map(str::to_owned))
                        .collect();
                    s.types.insert(name, SchemaType::Alternate(alts));
                }
                "builtin" => {
                    let json = str_field(e, "json-type").unwrap_or("");
                    s.types.insert(name, SchemaType::Builtin(json.to_owned()));
                }
                _ => {}
            }
        }
        s
    }

    /// The argument type of a command.
    fn arg_type(&self, command: &str) -> Option<&str> {
        self.commands.get(command).map(String::as_str)
    }

    fn is_object(&self, ty: &str) -> bool {
        matches!(self.types.get(ty), Some(SchemaType::Object { .. }))
    }

    /// The object type a value of `ty` can be: the type itself, or an alternate's
    /// object branch.
    fn as_object_type<'a>(&'a self, ty: &'a str) -> Option<&'a str> {
        match self.types.get(ty)? {
            SchemaType::Object { .. } => Some(ty),
            SchemaType::Alternate(alts) => {
                alts.iter().map(String::as_str).find(|t| self.is_object(t))
            }
            _ => None,
        }
    }

    /// The members of an object type, with those of the variant selected by the tag's
    /// value in `given` (the arguments typed so far at this level).
    fn members(&self, ty: &str, given: &JsonObject, depth: usize) -> Vec<&Member> {
        let mut out = Vec::new();
        if depth > MAX_TYPE_DEPTH {
            return out;
        }
        let Some(SchemaType::Object {
            members,
            tag,
            variants,
        }) = self.types.get(ty)
        else {
            return out;
        };
        out.extend(members.iter());
        if let Some(tag_value) = tag
            .as_deref()
            .and_then(|t| given.get(t))
            .and_then(Value::as_str)
        {
            if let Some((_, vty)) = variants.iter().find(|(case, _)| case == tag_value) {
                out.extend(self.members(vty, given, depth + 1));
            }
        }
        out
    }

    fn member_type<'a>(&'a self, ty: &str, name: &str, given: &JsonObject) -> Option<&'a str> {
        self.members(ty, given, 0)
            .into_iter()
            .find(|m| m.name == name)
            .map(|m| m.ty.as_str())
    }

    /// The values a member of type `ty` may take, where they are few: enumeration
    /// values and booleans.
    fn values(&self, ty: &str, depth: usize) -> Vec<String> {
        if depth > MAX_TYPE_DEPTH {
            return Vec::new();
        }
        match self.types.get(ty) {
            Some(SchemaType::Enum(v)) => v.clone(),
            Some(SchemaType::Builtin(j)) if j == "boolean" => vec!["true".into(), "false".into()],
            Some(SchemaType::Alternate(alts)) => alts
                .iter()
                .flat_map(|a| self.values(a, depth + 1))
                .collect(),
            _ if ty == "bool" => vec!["true".into(), "false".into()],
            _ => Vec::new(),
        }
    }

    /// The union describing one transaction action (`TransactionAction`).
    fn transaction_action_type(&self) -> Option<&str> {
        let args = self.arg_type("transaction")?;
        let actions = self.member_type(args, "actions", &JsonObject::new())?;
        match self.types.get(actions)? {
            SchemaType::Array(el) => Some(el.as_str()),
            _ => None,
        }
    }

    /// Transaction action types (`abort`, `block-dirty-bitmap-add`, ...).
    fn action_types(&self) -> Vec<String> {
        let Some(ty) = self.transaction_action_type() else {
            return Vec::new();
        };
        match self.types.get(ty) {
            Some(SchemaType::Object { variants, .. }) => {
                variants.iter().map(|(c, _)| c.clone()).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The type of the `data` of a transaction action.
    fn action_data_type(&self, action: &str) -> Option<&str> {
        let ty = self.transaction_action_type()?;
        let mut given = JsonObject::new();
        given.insert("type".into(), Value::String(action.to_owned()));
        self.member_type(ty, "data", &given)
    }
}

/// Everything completion needs, fetched from the peer once.
#[derive(Debug, Clone, Default)]
pub struct Completions {
    hmp: bool,
    commands: Vec<String>,
    schema: Option<QmpSchema>,
    hmp_lines: Vec<String>,
}

impl Completions {
    /// QMP-mode completions from command names and (optionally) the schema.
    pub fn qmp(commands: impl IntoIterator<Item = String>, schema: Option<QmpSchema>) -> Self {
        let commands: BTreeSet<String> = commands.into_iter().collect();
        Completions {
            hmp: false,
            commands: commands.into_iter().collect(),
            schema,
            hmp_lines: Vec::new(),
        }
    }

    /// HMP-mode completions from the text of HMP's `help` and `info` commands.
    pub fn hmp(help: &str, info: &str) -> Self {
        let mut lines = BTreeSet::new();
        for l in help.lines() {
            let l = l.trim_end_matches('\r');
            if l.is_empty() || l.starts_with(['[', '\t']) {
                continue;
            }
            let Some(mut name) = l.split_whitespace().next() else {
                continue;
            };
            if name == "info" {
                continue;
            }
            if let Some((a, b)) = name.split_once('|') {
                // 'foobar|f' or 'f|foobar': take the long form.
                name = if a.chars().count() == 1 { b } else { a };
            }
            lines.insert(name.to_owned());
            lines.insert(format!("help {name}"));
        }
        for l in info.lines() {
            if let Some(sub) = l.split_whitespace().nth(1) {
                lines.insert(format!("info {sub}"));
            }
        }
        if !lines.is_empty() {
            lines.insert("help info".into());
        }
        Completions {
            hmp: true,
            commands: Vec::new(),
            schema: None,
            hmp_lines: lines.into_iter().collect(),
        }
    }

    /// The command names known (QMP mode).
    pub fn commands(&self) -> &[String] {
        &self.commands
    }

    /// The candidates for completing `line` at byte offset `pos`: the offset where the
    /// replaced text starts, and the candidates. `in_transaction` says whether the
    /// shell is between `transaction(` and `)`.
    pub fn complete(
        &self,
        line: &str,
        pos: usize,
        in_transaction: bool,
    ) -> (usize, Vec<Candidate>) {
        let pos = pos.min(line.len());
        let Some(before) = line.get(..pos) else {
            return (pos, Vec::new());
        };
        if self.hmp {
            let c = self
                .hmp_lines
                .iter()
                .filter(|l| l.starts_with(before))
                .map(|l| Candidate {
                    display: l.clone(),
                    replacement: l.clone(),
                })
                .collect();
            return (0, c);
        }
        let (tokens, open_quote) = tokenize_lenient(before);
        let new_word = !open_quote && (before.is_empty() || before.ends_with(char::is_whitespace));
        let (prev, cur, start) = if new_word {
            (&tokens[..], "", pos)
        } else {
            match tokens.split_last() {
                Some((last, prev)) => (prev, last.text, last.start),
                None => (&tokens[..], "", pos),
            }
        };
        if open_quote {
            return (start, Vec::new());
        }
        let mut words: Vec<&str> = prev.iter().map(|t| t.text).collect();
        if words.first().is_some_and(|w| w.starts_with('{')) {
            return (start, Vec::new());
        }
        let mut transaction = in_transaction;
        if words.first() == Some(&"transaction(") {
            transaction = true;
            words.remove(0);
        }
        let candidates = match (words.split_first(), transaction) {
            (None, false) => self.complete_command(cur),
            (None, true) => self.complete_action(cur),
            (Some((&")", _)), true) => Vec::new(),
            (Some((&name, given)), true) => match &self.schema {
                Some(s) => match s.action_data_type(name) {
                    Some(ty) => complete_argument(s, ty, given, cur),
                    None => Vec::new(),
                },
                None => Vec::new(),
            },
            (Some((&name, given)), false) => match &self.schema {
                Some(s) => match s.arg_type(name) {
                    Some(ty) => complete_argument(s, ty, given, cur),
                    None => Vec::new(),
                },
                None => Vec::new(),
            },
        };
        (start, candidates)
    }

    fn complete_command(&self, cur: &str) -> Vec<Candidate> {
        let mut names: Vec<&str> = self.commands.iter().map(String::as_str).collect();
        if self.commands.iter().any(|c| c == "transaction") {
            names.push("transaction(");
        }
        names.sort_unstable();
        names
            .into_iter()
            .filter(|n| n.starts_with(cur))
            .map(|n| Candidate {
                display: n.to_owned(),
                replacement: format!("{n} "),
            })
            .collect()
    }

    fn complete_action(&self, cur: &str) -> Vec<Candidate> {
        let mut names = self
            .schema
            .as_ref()
            .map(QmpSchema::action_types)
            .unwrap_or_default();
        names.push(")".into());
        names
            .into_iter()
            .filter(|n| n.starts_with(cur))
            .map(|n| Candidate {
                replacement: format!("{n} "),
                display: n,
            })
            .collect()
    }
}

/// Complete the argument word `cur` of a command (or action) whose arguments are of
/// type `ty`, given the words already typed.
fn complete_argument(schema: &QmpSchema, ty: &str, given: &[&str], cur: &str) -> Vec<Candidate> {
    // What has been typed so far, read leniently: a word that does not parse still
    // counts as given.
    let mut typed = Ordered::Object(Vec::new());
    for w in given {
        if let Some((k, v)) = w.split_once('=') {
            let v = parse_value(v).unwrap_or_else(|_| Ordered::String(v.to_owned()));
            let _ = insert_argument(&mut typed, k, v);
        }
    }
    let typed = match typed.to_value() {
        Value::Object(m) => m,
        _ => JsonObject::new(),
    };
    let empty = JsonObject::new();
    if let Some((key, prefix)) = cur.split_once('=') {
        // A value.
        let path: Vec<&str> = key.split('.').collect();
        let Some((last, parents)) = path.split_last() else {
            return Vec::new();
        };
        let Some((obj_ty, at)) = walk(schema, ty, parents, &typed) else {
            return Vec::new();
        };
        let Some(member_ty) = schema.member_type(obj_ty, last, at.unwrap_or(&empty)) else {
            return Vec::new();
        };
        return schema
            .values(member_ty, 0)
            .into_iter()
            .filter(|v| v.starts_with(prefix))
            .map(|v| Candidate {
                replacement: format!("{key}={v} "),
                display: v,
            })
            .collect();
    }
    // A name, possibly below dotted parents.
    let path: Vec<&str> = cur.split('.').collect();
    let Some((prefix, parents)) = path.split_last() else {
        return Vec::new();
    };
    let Some((obj_ty, at)) = walk(schema, ty, parents, &typed) else {
        return Vec::new();
    };
    let at = at.unwrap_or(&empty);
    let lead: String = parents.iter().map(|p| format!("{p}.")).collect();
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for m in schema.members(obj_ty, at, 0) {
        if !m.name.starts_with(prefix) || !seen.insert(m.name.as_str()) {
            continue;
        }
        let given_here = at.get(&m.name);
        let is_object = schema.is_object(&m.ty);
        let nests = schema.as_object_type(&m.ty).is_some();
        if given_here.is_some_and(|v| !v.is_object()) {
            continue; // already set
        }
        if !is_object && given_here.is_none() {
            out.push(Candidate {
                display: format!("{}=", m.name),
                replacement: format!("{lead}{}=", m.name),
            });
        }
        if nests {
            out.push(Candidate {
                display: format!("{}.", m.name),
                replacement: format!("{lead}{}.", m.name),
            });
        }
    }
    out
}

/// Follow dotted `parents` from type `ty`; returns the object type reached, and the
/// arguments typed at that level (if any).
fn walk<'a, 'b>(
    schema: &'a QmpSchema,
    ty: &'a str,
    parents: &[&str],
    typed: &'b JsonObject,
) -> Option<(&'a str, Option<&'b JsonObject>)> {
    let empty = JsonObject::new();
    let mut ty = schema.as_object_type(ty)?;
    let mut at = Some(typed);
    for p in parents {
        let member = schema.member_type(ty, p, at.unwrap_or(&empty))?;
        ty = schema.as_object_type(member)?;
        at = at.and_then(|a| a.get(*p)).and_then(Value::as_object);
    }
    Some((ty, at))
}

/// Fetch the QMP-mode completion data: command names from `query-commands` (or, from
/// a guest agent, `guest-info`), with argument names from `introspection`, the reply
/// of `query-qmp-schema` the caller already asked for (`None` if it has none). Every
/// failure just means less completion; each request is bounded by `timeout`.
pub async fn fetch_qmp(
    client: &Client,
    timeout: Duration,
    introspection: Option<&Value>,
) -> Completions {
    let names = |v: &Value, list: Option<&str>| -> Vec<String> {
        let list = match list {
            Some(k) => v.get(k),
            None => Some(v),
        };
        list.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let run =
        |cmd: &'static str| async move { client.request(cmd).timeout(timeout).send().await.ok() };
    let mut commands = match run("query-commands").await {
        Some(v) => names(&v, None),
        None => Vec::new(),
    };
    let mut schema = None;
    if commands.is_empty() {
        if let Some(v) = run("guest-info").await {
            commands = names(&v, Some("supported_commands"));
        }
    } else if let Some(v) = introspection {
        schema = Some(QmpSchema::from_introspection(v));
    }
    Completions::qmp(commands, schema)
}

/// Fetch the HMP-mode completion data from HMP's `help` and `info`.
pub async fn fetch_hmp(client: &Client, timeout: Duration) -> Completions {
    let run = |line: &'static str| async move {
        client
            .request("human-monitor-command")
            .arg("command-line", line)
            .timeout(timeout)
            .send()
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let help = run("help").await;
    let info = run("info").await;
    Completions::hmp(&help, &info)
}

/// The rustyline helper of the shell: completion only.
pub struct ShellHelper {
    completions: Arc<Completions>,
    in_transaction: Arc<AtomicBool>,
}

impl ShellHelper {
    /// A helper completing from `completions`; `in_transaction` is kept up to date by
    /// the shell.
    pub fn new(completions: Arc<Completions>, in_transaction: Arc<AtomicBool>) -> Self {
        ShellHelper {
            completions,
            in_transaction,
        }
    }
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let trans = self.in_transaction.load(Ordering::Relaxed);
        let (start, c) = self.completions.complete(line, pos, trans);
        Ok((
            start,
            c.into_iter()
                .map(|c| Pair {
                    display: c.display,
                    replacement: c.replacement,
                })
                .collect(),
        ))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}

impl Highlighter for ShellHelper {}

impl Validator for ShellHelper {}

impl Helper for ShellHelper {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A schema shaped like QEMU 7.2's, cut down.
    fn schema() -> QmpSchema {
        QmpSchema::from_introspection(&json!([
            {"name": "query-status", "meta-type": "command", "arg-type": "0", "ret-type": "1"},
            {"name": "query-stats", "meta-type": "command", "arg-type": "0", "ret-type": "1"},
            {"name": "stop", "meta-type": "command", "arg-type": "0", "ret-type": "0"},
            {"name": "block-dirty-bitmap-add", "meta-type": "command", "arg-type": "36", "ret-type": "0"},
            {"name": "blockdev-add", "meta-type": "command", "arg-type": "49", "ret-type": "0"},
            {"name": "transaction", "meta-type": "command", "arg-type": "168", "ret-type": "0"},
            {"name": "0", "meta-type": "object", "members": []},
            {"name": "36", "meta-type": "object", "members": [
                {"name": "node", "type": "str"}, {"name": "name", "type": "str"},
                {"name": "granularity", "default": null, "type": "int"},
                {"name": "persistent", "default": null, "type": "bool"}]},
            {"name": "49", "meta-type": "object", "tag": "driver",
             "members": [{"name": "driver", "type": "291"}, {"name": "node-name", "default": null, "type": "str"},
                         {"name": "cache", "default": null, "type": "293"}, {"name": "detect-zeroes", "type": "283"}],
             "variants": [{"case": "null-co", "type": "312"}, {"case": "raw", "type": "313"}]},
            {"name": "291", "meta-type": "enum", "values": ["null-co", "raw", "qcow2"]},
            {"name": "283", "meta-type": "enum", "members": [{"name": "off"}, {"name": "on"}, {"name": "unmap"}]},
            {"name": "293", "meta-type": "object", "members": [{"name": "direct", "type": "bool"}, {"name": "no-flush", "type": "bool"}]},
            {"name": "312", "meta-type": "object", "members": [{"name": "size", "type": "int"}, {"name": "read-zeroes", "type": "bool"}]},
            {"name": "313", "meta-type": "object", "members": [{"name": "file", "type": "290"}]},
            {"name": "290", "meta-type": "alternate", "members": [{"type": "str"}, {"type": "49"}]},
            {"name": "168", "meta-type": "object", "members": [{"name": "actions", "type": "[415]"}]},
            {"name": "[415]", "meta-type": "array", "element-type": "415"},
            {"name": "415", "meta-type": "object", "tag": "type", "members": [{"name": "type", "type": "588"}],
             "variants": [{"case": "abort", "type": "589"}, {"case": "block-dirty-bitmap-add", "type": "590"}]},
            {"name": "588", "meta-type": "enum", "values": ["abort", "block-dirty-bitmap-add"]},
            {"name": "589", "meta-type": "object", "members": [{"name": "data", "type": "0"}]},
            {"name": "590", "meta-type": "object", "members": [{"name": "data", "type": "36"}]},
            {"name": "bool", "meta-type": "builtin", "json-type": "boolean"},
            {"name": "str", "meta-type": "builtin", "json-type": "string"},
            {"name": "int", "meta-type": "builtin", "json-type": "int"},
            "junk", {"meta-type": "object"}, {"name": "x", "meta-type": "command"}
        ]))
    }

    fn qmp() -> Completions {
        let s = schema();
        let mut names: Vec<String> = s.commands.keys().cloned().collect();
        names.push("query-version".into());
        Completions::qmp(names, Some(s))
    }

    fn repl(c: &Completions, line: &str, trans: bool) -> (usize, Vec<String>) {
        let (start, cands) = c.complete(line, line.len(), trans);
        (start, cands.into_iter().map(|c| c.replacement).collect())
    }

    #[test]
    fn command_names() {
        let c = qmp();
        assert_eq!(
            repl(&c, "query-sta", false),
            (0, vec!["query-stats ".into(), "query-status ".into()])
        );
        assert_eq!(
            repl(&c, "  query-statu", false),
            (2, vec!["query-status ".into()])
        );
        assert_eq!(
            repl(&c, "trans", false).1,
            ["transaction ", "transaction( "]
        );
        assert_eq!(repl(&c, "", false).1.len(), 8);
        assert!(repl(&c, "nope", false).1.is_empty());
    }

    #[test]
    fn argument_names_skip_those_given() {
        let c = qmp();
        assert_eq!(
            repl(&c, "block-dirty-bitmap-add ", false),
            (
                23,
                vec![
                    "node=".into(),
                    "name=".into(),
                    "granularity=".into(),
                    "persistent=".into()
                ]
            )
        );
        assert_eq!(
            repl(&c, "block-dirty-bitmap-add node=n0 n", false).1,
            ["name="]
        );
        assert!(repl(&c, "query-status ", false).1.is_empty());
        assert!(repl(&c, "unknown-command ", false).1.is_empty());
    }

    #[test]
    fn values_from_enums_and_booleans() {
        let c = qmp();
        assert_eq!(
            repl(&c, "blockdev-add driver=", false),
            (
                13,
                vec![
                    "driver=null-co ".into(),
                    "driver=raw ".into(),
                    "driver=qcow2 ".into()
                ]
            )
        );
        assert_eq!(
            repl(&c, "blockdev-add detect-zeroes=u", false).1,
            ["detect-zeroes=unmap "]
        );
        assert_eq!(
            repl(&c, "block-dirty-bitmap-add persistent=", false).1,
            ["persistent=true ", "persistent=false "]
        );
        assert_eq!(
            repl(&c, "blockdev-add cache.direct=t", false).1,
            ["cache.direct=true "]
        );
        assert!(repl(&c, "block-dirty-bitmap-add node=", false).1.is_empty());
    }

    #[test]
    fn union_variants_and_nested_members() {
        let c = qmp();
        let names = repl(&c, "blockdev-add driver=null-co ", false).1;
        assert_eq!(
            names,
            [
                "node-name=",
                "cache.",
                "detect-zeroes=",
                "size=",
                "read-zeroes="
            ]
        );
        assert_eq!(repl(&c, "blockdev-add ca", false).1, ["cache."]);
        assert_eq!(
            repl(&c, "blockdev-add cache.", false),
            (13, vec!["cache.direct=".into(), "cache.no-flush=".into()])
        );
        assert_eq!(
            repl(&c, "blockdev-add cache.direct=on cache.", false).1,
            ["cache.no-flush="]
        );
        // An alternate with an object branch offers both forms.
        assert_eq!(
            repl(&c, "blockdev-add driver=raw fi", false).1,
            ["file=", "file."]
        );
        assert_eq!(
            repl(
                &c,
                "blockdev-add driver=raw file.driver=null-co file.s",
                false
            )
            .1,
            ["file.size="]
        );
        assert!(repl(&c, "blockdev-add nope.", false).1.is_empty());
    }

    #[test]
    fn transactions() {
        let c = qmp();
        assert_eq!(
            repl(&c, "", true).1,
            ["abort ", "block-dirty-bitmap-add ", ") "]
        );
        assert_eq!(
            repl(&c, "transaction( bl", false).1,
            ["block-dirty-bitmap-add "]
        );
        assert_eq!(
            repl(&c, "block-dirty-bitmap-add node=x ", true).1,
            ["name=", "granularity=", "persistent="]
        );
        assert_eq!(
            repl(&c, "transaction( block-dirty-bitmap-add na", false).1,
            ["name="]
        );
        assert!(repl(&c, ") ", true).1.is_empty());
    }

    #[test]
    fn odd_input_gives_no_candidates() {
        let c = qmp();
        assert!(repl(&c, r#"{"execute": "q"#, false).1.is_empty());
        assert!(repl(&c, r#"blockdev-add node-name="a "#, false)
            .1
            .is_empty());
        // A cursor in the middle of a word, or past the end, or not on a char boundary.
        assert_eq!(c.complete("query-status", 5, false).1.len(), 3);
        assert!(c.complete("é", 1, false).1.is_empty());
        let _ = c.complete("x", 99, false);
        // No schema: only command names.
        let bare = Completions::qmp(vec!["stop".to_owned()], None);
        assert_eq!(repl(&bare, "st", false).1, ["stop "]);
        assert!(repl(&bare, "stop ", false).1.is_empty());
        assert!(repl(&bare, "", true).1 == [") "]);
    }

    #[test]
    fn hmp_lines_follow_python() {
        let help = "announce_self [interfaces] [id] -- Trigger GARP/RARP announcements\r\n\
                    c|cont  -- resume emulation\r\n\
                    info [subcommand] -- show various information\r\n\
                    quit|q  -- quit the emulator\r\n\
                    [not a command]\r\n\
                    \tcontinuation\r\n";
        let info =
            "info status  -- show the current VM status\r\ninfo version  -- show the version\r\n";
        let c = Completions::hmp(help, info);
        assert_eq!(repl(&c, "info s", false), (0, vec!["info status".into()]));
        assert_eq!(repl(&c, "c", false).1, ["cont"]);
        assert_eq!(repl(&c, "q", false).1, ["quit"]);
        assert_eq!(
            repl(&c, "help ", false).1,
            ["help announce_self", "help cont", "help info", "help quit"]
        );
        assert!(Completions::hmp("", "").hmp_lines.is_empty());
    }
}
