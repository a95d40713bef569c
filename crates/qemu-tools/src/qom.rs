//! QEMU Object Model (QOM) queries over QMP: the library behind the `qom` tool.
//!
//! [`Qom`] wraps a connected [`qemu_qmp::Client`] with typed `qom-list`, `qom-get`,
//! `qom-set` and `qom-list-get` calls, and [`Qom::tree`] prints a subtree the way
//! QEMU's Python `qom-tree` does. The formatting helpers ([`python_str`],
//! [`format_list`], [`format_get`]) reproduce the output of QEMU's `qom-*` tools,
//! which print values with Python's `str()`.
//!
//! ```no_run
//! # async fn f() -> Result<(), qemu_tools::qom::QomError> {
//! use qemu_tools::qom::Qom;
//! let qmp = qemu_qmp::Client::connect("/run/vm1/qmp.sock").await?;
//! let qom = Qom::new(qmp);
//! let machine_type = qom.get("/machine", "type").await?;
//! qom.tree("/machine/peripheral", &mut std::io::stdout()).await?;
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::io::{self, Write};

use qemu_qmp::json::Ordered;
use qemu_qmp::{json, Client, Value};

use crate::reply::execute_ordered;

/// How deep [`Qom::tree`] descends before it gives up: QOM trees are a handful of
/// levels deep, so a deeper one means a peer that invents children without end.
pub const MAX_TREE_DEPTH: usize = 256;

/// Why a QOM operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QomError {
    /// QEMU refused a command: the object or property does not exist, the value is
    /// of the wrong type, ... `what` names the object (or `object.property`).
    #[error("{what}: {desc}")]
    Refused {
        /// The QOM path, or `path.property`, the command was about.
        what: String,
        /// QEMU's error description.
        desc: String,
        /// The whole error (class, request, reply).
        #[source]
        source: qemu_qmp::Error,
    },
    /// The connection failed, timed out or ended.
    #[error(transparent)]
    Qmp(qemu_qmp::Error),
    /// QEMU answered with something that is not the documented shape.
    #[error("malformed reply to '{command}': {reason}")]
    BadReply {
        /// The command.
        command: String,
        /// What is wrong with the reply.
        reason: String,
    },
    /// A `qom set` value that does not fit the property's type.
    #[error("{what}: {reason}")]
    BadValue {
        /// `path.property`.
        what: String,
        /// Why the value does not fit.
        reason: String,
    },
    /// A `<path>.<property>` argument without a `.`.
    #[error(
        "invalid <path>.<property> {0:?}: expected a QOM path and a property name separated by '.'"
    )]
    BadPathProperty(String),
    /// The tree is deeper than [`MAX_TREE_DEPTH`].
    #[error("{0}: the tree is more than {MAX_TREE_DEPTH} levels deep; giving up")]
    TooDeep(String),
    /// A task of ours failed (a bug).
    #[error("internal error: {0}")]
    Internal(String),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
}

impl From<qemu_qmp::Error> for QomError {
    fn from(e: qemu_qmp::Error) -> Self {
        QomError::Qmp(e)
    }
}

impl QomError {
    fn from_qmp(what: impl Into<String>, e: qemu_qmp::Error) -> QomError {
        match e.as_execute_error() {
            Some(x) => QomError::Refused {
                what: what.into(),
                desc: x.desc().to_owned(),
                source: e,
            },
            None => QomError::Qmp(e),
        }
    }

    /// True when writing the output failed because the reader went away (`qom tree |
    /// head`), which a command-line tool should treat as a normal end.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, QomError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// One entry of `qom-list` (QAPI `ObjectPropertyInfo`).
#[derive(Debug, Clone, PartialEq)]
pub struct PropertyInfo {
    /// The property name.
    pub name: String,
    /// Its type: `child<TYPE>`, `link<TYPE>`, `bool`, `str`, `uint32`, ...
    pub type_: String,
    /// The description, when QEMU gives one.
    pub description: Option<String>,
    /// The default value, when QEMU gives one.
    pub default_value: Option<Value>,
}

impl PropertyInfo {
    /// A child object (`child<...>`): listed as `name/`.
    pub fn is_child(&self) -> bool {
        self.type_.starts_with("child<")
    }

    /// A link to another object (`link<...>`): listed as `@name/`.
    pub fn is_link(&self) -> bool {
        self.type_.starts_with("link<")
    }

    fn from_value(command: &str, v: &Value) -> Result<PropertyInfo, QomError> {
        let (name, type_) = name_and_type(command, v)?;
        Ok(PropertyInfo {
            name,
            type_,
            description: v
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_owned),
            default_value: v.get("default-value").cloned(),
        })
    }
}

/// One property of `qom-list-get` (QAPI `ObjectPropertyValue`).
#[derive(Debug, Clone, PartialEq)]
pub struct PropertyValue {
    /// The property name.
    pub name: String,
    /// Its type, as in [`PropertyInfo::type_`].
    pub type_: String,
    /// The value, its members in the order QEMU sent them; `None` when QEMU could
    /// not read it.
    pub value: Option<Ordered>,
}

impl PropertyValue {
    /// A child object (`child<...>`).
    pub fn is_child(&self) -> bool {
        self.type_.starts_with("child<")
    }

    /// A link to another object (`link<...>`).
    pub fn is_link(&self) -> bool {
        self.type_.starts_with("link<")
    }
}

fn bad_reply(command: &str, reason: impl Into<String>) -> QomError {
    QomError::BadReply {
        command: command.to_owned(),
        reason: reason.into(),
    }
}

fn name_and_type(command: &str, v: &Value) -> Result<(String, String), QomError> {
    let name = v.get("name").and_then(Value::as_str);
    let type_ = v.get("type").and_then(Value::as_str);
    match (name, type_) {
        (Some(n), Some(t)) => Ok((n.to_owned(), t.to_owned())),
        _ => Err(bad_reply(
            command,
            format!("a property without a string 'name' and 'type': {v}"),
        )),
    }
}

/// Which commands [`Qom::tree`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeMethod {
    /// `qom-list-get` once per object with children (QEMU 10.1 and later).
    ListGet,
    /// `qom-list` per object and `qom-get` per property (every QEMU).
    ListAndGet,
}

/// QOM operations on a connected QMP client.
#[derive(Debug, Clone)]
pub struct Qom {
    client: Client,
}

impl Qom {
    /// Use `client`, which must be connected to a QEMU (negotiated).
    pub fn new(client: Client) -> Qom {
        Qom { client }
    }

    /// The client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `qom-list`: the properties of the object at `path`.
    pub async fn list(&self, path: &str) -> Result<Vec<PropertyInfo>, QomError> {
        let rsp = self
            .client
            .execute("qom-list", Some(json!({ "path": path })))
            .await
            .map_err(|e| QomError::from_qmp(path, e))?;
        let items = rsp
            .as_array()
            .ok_or_else(|| bad_reply("qom-list", format!("expected a list, got {rsp}")))?;
        items
            .iter()
            .map(|v| PropertyInfo::from_value("qom-list", v))
            .collect()
    }

    /// `qom-get`: the value of `property` of the object at `path`, its members in the
    /// order QEMU sent them (exact when the client was built with
    /// [`preserve_order`](qemu_qmp::ClientBuilder::preserve_order), as the `qom`
    /// tool's is).
    pub async fn get(&self, path: &str, property: &str) -> Result<Ordered, QomError> {
        let args = json!({ "path": path, "property": property });
        execute_ordered(&self.client, "qom-get", Some(args), None)
            .await
            .map_err(|e| QomError::from_qmp(what(path, property, &e), e))
    }

    /// `qom-set`: set `property` of the object at `path` to `value`; returns QEMU's
    /// reply (`{}`).
    pub async fn set(&self, path: &str, property: &str, value: Value) -> Result<Ordered, QomError> {
        let args = json!({ "path": path, "property": property, "value": value });
        execute_ordered(&self.client, "qom-set", Some(args), None)
            .await
            .map_err(|e| QomError::from_qmp(what(path, property, &e), e))
    }

    /// `qom set`: read the type of `property` from `qom-list`, turn `text` into a
    /// value of that type ([`typed_value`]), and `qom-set` it; returns QEMU's reply
    /// (`{}`). A property that does not exist fails with QEMU's own message, as does
    /// one that cannot be set (`Property '...' is not writable`).
    pub async fn set_typed(
        &self,
        path: &str,
        property: &str,
        text: &str,
    ) -> Result<Ordered, QomError> {
        let props = self.list(path).await?;
        let what = format!("{path}.{property}");
        let Some(info) = props.iter().find(|p| p.name == property) else {
            // QEMU's words for it: reading the property fails as setting it would.
            self.get(path, property).await?;
            return Err(QomError::BadValue {
                what,
                reason: "the property is not listed by qom-list".into(),
            });
        };
        let value =
            typed_value(&info.type_, text).map_err(|reason| QomError::BadValue { what, reason })?;
        self.set(path, property, value).await
    }

    /// `qom-list-get` (QEMU 10.1 and later): every property with its value, for each
    /// path, in order. One missing path fails the whole call.
    pub async fn list_get(&self, paths: &[String]) -> Result<Vec<Vec<PropertyValue>>, QomError> {
        const CMD: &str = "qom-list-get";
        let rsp = execute_ordered(&self.client, CMD, Some(json!({ "paths": paths })), None)
            .await
            .map_err(|e| {
                let what = match paths {
                    [one] => one.clone(),
                    _ => paths.join(", "),
                };
                QomError::from_qmp(what, e)
            })?;
        let Ordered::Array(objects) = &rsp else {
            return Err(bad_reply(CMD, format!("expected a list, got {rsp}")));
        };
        if objects.len() != paths.len() {
            return Err(bad_reply(
                CMD,
                format!(
                    "asked for {} paths, got {} answers",
                    paths.len(),
                    objects.len()
                ),
            ));
        }
        objects
            .iter()
            .map(|o| {
                let Some(Ordered::Array(props)) = o.get("properties") else {
                    return Err(bad_reply(
                        CMD,
                        format!("an entry without a 'properties' list: {o}"),
                    ));
                };
                props
                    .iter()
                    .map(|p| {
                        let text = |key| match p.get(key) {
                            Some(Ordered::String(s)) => Some(s.clone()),
                            _ => None,
                        };
                        let (Some(name), Some(type_)) = (text("name"), text("type")) else {
                            return Err(bad_reply(
                                CMD,
                                format!("a property without a string 'name' and 'type': {p}"),
                            ));
                        };
                        Ok(PropertyValue {
                            name,
                            type_,
                            value: p.get("value").cloned(),
                        })
                    })
                    .collect()
            })
            .collect()
    }

    /// True if the QEMU offers `qom-list-get` (per `query-commands`). A QEMU that
    /// cannot say is taken not to.
    pub async fn has_list_get(&self) -> Result<bool, QomError> {
        match self.client.execute("query-commands", None).await {
            Ok(Value::Array(cmds)) => Ok(cmds
                .iter()
                .any(|c| c.get("name").and_then(Value::as_str) == Some("qom-list-get"))),
            Ok(_) => Ok(false),
            Err(e) if e.as_execute_error().is_some() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Print the tree below `path` the way QEMU's `qom-tree` does, choosing
    /// `qom-list-get` when the QEMU offers it.
    pub async fn tree<W: Write>(&self, path: &str, out: &mut W) -> Result<(), QomError> {
        let method = if self.has_list_get().await? {
            TreeMethod::ListGet
        } else {
            TreeMethod::ListAndGet
        };
        self.tree_with(path, method, out).await
    }

    /// Print the tree below `path` with the given method.
    ///
    /// Depth first: each object's path, then one line per property that is not a
    /// child, `  name: value (type)`, then an empty line, then its children. A
    /// property that cannot be read shows `<EXCEPTION: reason>` in place of its value.
    pub async fn tree_with<W: Write>(
        &self,
        path: &str,
        method: TreeMethod,
        out: &mut W,
    ) -> Result<(), QomError> {
        // Depth-first with an explicit stack: (path, depth, properties when known).
        let mut stack: Vec<(String, usize, Option<Vec<Shown>>)> =
            vec![(normalise_path(path), 0, None)];
        while let Some((path, depth, props)) = stack.pop() {
            if depth > MAX_TREE_DEPTH {
                return Err(QomError::TooDeep(path));
            }
            let props = match props {
                Some(p) => p,
                None => self.read_node(&path, method).await?,
            };
            let mut block = format!("{path}\n");
            for p in props.iter().filter(|p| !p.child) {
                let _ = writeln!(block, "  {}: {} ({})", p.name, p.value, p.type_);
            }
            block.push('\n');
            out.write_all(block.as_bytes())?;
            let children: Vec<String> = props
                .iter()
                .filter(|p| p.child)
                .map(|p| child_path(&path, &p.name))
                .collect();
            if children.is_empty() {
                continue;
            }
            // qom-list-get reads all the siblings at once, as QEMU's tool does.
            let mut known: Vec<Option<Vec<Shown>>> = match method {
                TreeMethod::ListGet => self
                    .list_get(&children)
                    .await?
                    .into_iter()
                    .map(|props| Some(props.into_iter().map(Shown::from_value).collect()))
                    .collect(),
                TreeMethod::ListAndGet => vec![None; children.len()],
            };
            for child in children.into_iter().rev() {
                let props = known.pop().flatten();
                stack.push((child, depth + 1, props));
            }
        }
        out.flush()?;
        Ok(())
    }

    /// The properties of one object with their values, by `qom-list-get` or by
    /// `qom-list` plus a `qom-get` per property (all sent before the first reply is
    /// awaited; QEMU answers them in order).
    async fn read_node(&self, path: &str, method: TreeMethod) -> Result<Vec<Shown>, QomError> {
        if method == TreeMethod::ListGet {
            let all = self.list_get(&[path.to_owned()]).await?;
            let props = all.into_iter().next().unwrap_or_default();
            return Ok(props.into_iter().map(Shown::from_value).collect());
        }
        let items = self.list(path).await?;
        let mut reads = Vec::with_capacity(items.len());
        for item in &items {
            if item.is_child() {
                reads.push(None);
                continue;
            }
            let client = self.client.clone();
            let args = json!({ "path": path, "property": item.name });
            reads.push(Some(tokio::spawn(async move {
                execute_ordered(&client, "qom-get", Some(args), None).await
            })));
        }
        let mut props = Vec::with_capacity(items.len());
        for (item, read) in items.into_iter().zip(reads) {
            let value = match read {
                None => String::new(),
                Some(handle) => match handle.await {
                    Ok(Ok(v)) => python_str(&v),
                    // Python's tool prints str(ExecuteError), which is the description.
                    Ok(Err(e)) => match e.as_execute_error() {
                        Some(x) => format!("<EXCEPTION: {}>", x.desc()),
                        None => return Err(e.into()),
                    },
                    Err(join) => {
                        return Err(QomError::Internal(format!(
                            "reading {path}.{} failed: {join}",
                            item.name
                        )))
                    }
                },
            };
            props.push(Shown {
                child: item.is_child(),
                name: item.name,
                type_: item.type_,
                value,
            });
        }
        Ok(props)
    }
}

/// A property of a tree node, its value formatted for printing.
#[derive(Debug, Clone)]
struct Shown {
    name: String,
    type_: String,
    child: bool,
    value: String,
}

impl Shown {
    fn from_value(p: PropertyValue) -> Shown {
        Shown {
            child: p.is_child(),
            value: match &p.value {
                Some(v) => python_str(v),
                None => "<EXCEPTION: property could not be read>".to_owned(),
            },
            name: p.name,
            type_: p.type_,
        }
    }
}

/// What an error message names: the object when it does not exist, else the
/// property (also when the object missing is another, e.g. a link's target).
fn what(path: &str, property: &str, e: &qemu_qmp::Error) -> String {
    let about_path = e
        .as_execute_error()
        .is_some_and(|x| x.desc().contains(&format!("'{path}'")));
    if e.error_class() == Some("DeviceNotFound") && about_path {
        path.to_owned()
    } else {
        format!("{path}.{property}")
    }
}

/// The path of child `name` of `parent` (`/` + name under the root).
pub fn child_path(parent: &str, name: &str) -> String {
    if parent.ends_with('/') {
        format!("{parent}{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// `path` without trailing slashes (the root stays `/`).
fn normalise_path(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() && path.starts_with('/') {
        "/".to_owned()
    } else if trimmed.is_empty() {
        path.to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Split `<path>.<property>` at the last `.`, as QEMU's tools do.
///
/// ```
/// use qemu_tools::qom::split_path_property;
/// assert_eq!(split_path_property("/machine.type").unwrap(), ("/machine", "type"));
/// assert!(split_path_property("/machine").is_err());
/// ```
pub fn split_path_property(arg: &str) -> Result<(&str, &str), QomError> {
    match arg.rsplit_once('.') {
        Some((path, prop)) if !path.is_empty() && !prop.is_empty() => Ok((path, prop)),
        _ => Err(QomError::BadPathProperty(arg.to_owned())),
    }
}

/// How [`typed_value`] reads the text given for a property of a QOM type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// `string`, `str`: the text as it is.
    String,
    /// `bool`: `true`/`false`, `on`/`off`, `yes`/`no`, in any case.
    Bool,
    /// An integer type (`int`, `int8` ... `int64`, `uint8` ... `uint64`, `size`, and
    /// their `_t` spellings), with its range: decimal, or hexadecimal with `0x`.
    Integer {
        /// The smallest value.
        min: i128,
        /// The largest value.
        max: i128,
    },
    /// `double`, `number`, `float`: a finite number.
    Float,
    /// `link<TYPE>`: the path of the object to point to (empty to clear the link).
    Link,
    /// `child<TYPE>`: not settable; the text is sent as it is and QEMU says so.
    Child,
    /// Anything else (enumerations such as `OnOffAuto`, structures such as
    /// `BootConfiguration`): JSON when the text starts with `{` or `[`, else the text
    /// as a string (an enumeration's value).
    Other,
}

impl ValueKind {
    /// The kind of value a property of QOM type `type_` takes.
    ///
    /// ```
    /// use qemu_tools::qom::ValueKind;
    /// assert_eq!(ValueKind::of("string"), ValueKind::String);
    /// assert_eq!(ValueKind::of("uint8"), ValueKind::Integer { min: 0, max: 255 });
    /// assert_eq!(ValueKind::of("link<memory-backend>"), ValueKind::Link);
    /// assert_eq!(ValueKind::of("OnOffAuto"), ValueKind::Other);
    /// ```
    pub fn of(type_: &str) -> ValueKind {
        if type_.starts_with("link<") {
            return ValueKind::Link;
        }
        if type_.starts_with("child<") {
            return ValueKind::Child;
        }
        let base = type_.strip_suffix("_t").unwrap_or(type_);
        let signed = |bits: u32| ValueKind::Integer {
            min: -(1i128 << (bits - 1)),
            max: (1i128 << (bits - 1)) - 1,
        };
        let unsigned = |bits: u32| ValueKind::Integer {
            min: 0,
            max: (1i128 << bits) - 1,
        };
        match base {
            "string" | "str" => ValueKind::String,
            "bool" => ValueKind::Bool,
            "int" | "int64" => signed(64),
            "int8" => signed(8),
            "int16" => signed(16),
            "int32" => signed(32),
            "uint64" | "size" => unsigned(64),
            "uint8" => unsigned(8),
            "uint16" => unsigned(16),
            "uint32" => unsigned(32),
            "double" | "number" | "float" => ValueKind::Float,
            _ => ValueKind::Other,
        }
    }
}

/// The JSON value `qom set` sends for `text` to a property of QOM type `type_` (see
/// [`ValueKind`]), or why the text does not fit the type.
///
/// ```
/// use qemu_tools::qom::typed_value;
/// use qemu_qmp::json;
/// assert_eq!(typed_value("string", "42").unwrap(), json!("42"));
/// assert_eq!(typed_value("int", "-42").unwrap(), json!(-42));
/// assert_eq!(typed_value("bool", "on").unwrap(), json!(true));
/// assert_eq!(typed_value("BootConfiguration", r#"{"order": "c"}"#).unwrap(), json!({"order": "c"}));
/// assert!(typed_value("uint8", "256").is_err());
/// ```
pub fn typed_value(type_: &str, text: &str) -> Result<Value, String> {
    match ValueKind::of(type_) {
        ValueKind::String | ValueKind::Link | ValueKind::Child => {
            Ok(Value::String(text.to_owned()))
        }
        ValueKind::Bool => parse_bool(text)
            .map(Value::Bool)
            .ok_or_else(|| format!("'{text}' is not a boolean (true/false, on/off, yes/no)")),
        ValueKind::Integer { min, max } => {
            let n = parse_integer(text).ok_or_else(|| {
                format!("'{text}' is not an integer (the property is of type {type_})")
            })?;
            if n < min || n > max {
                return Err(format!(
                    "{text} is out of range for {type_} ({min} to {max})"
                ));
            }
            Ok(match i64::try_from(n) {
                Ok(i) => Value::from(i),
                // Within uint64's range, checked above.
                Err(_) => Value::from(n as u64),
            })
        }
        ValueKind::Float => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
            .ok_or_else(|| format!("'{text}' is not a number (the property is of type {type_})")),
        ValueKind::Other => {
            let t = text.trim_start();
            if t.starts_with('{') || t.starts_with('[') {
                serde_json::from_str(text).map_err(|e| format!("'{text}' is not valid JSON: {e}"))
            } else {
                Ok(Value::String(text.to_owned()))
            }
        }
    }
}

/// `true`/`false`, `on`/`off`, `yes`/`no`, in any case (so that `True`, as `qom get`
/// prints it, reads back).
fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" => Some(true),
        "false" | "off" | "no" => Some(false),
        _ => None,
    }
}

/// A decimal integer, or a hexadecimal one with `0x`, with an optional sign.
fn parse_integer(text: &str) -> Option<i128> {
    let t = text.trim();
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let magnitude = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            i128::from_str_radix(hex, 16).ok()?
        }
        Some(_) => return None,
        None if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            digits.parse::<i128>().ok()?
        }
        None => return None,
    };
    Some(if negative { -magnitude } else { magnitude })
}

/// A `qom set --json` value: JSON, as it is.
pub fn json_value(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("'{text}' is not valid JSON: {e}"))
}

/// `qom list` output: a line per property, `name/` for children, `@name/` for links,
/// `name` otherwise.
pub fn format_list(items: &[PropertyInfo]) -> String {
    let mut s = String::new();
    for item in items {
        if item.is_child() {
            let _ = writeln!(s, "{}/", item.name);
        } else if item.is_link() {
            let _ = writeln!(s, "@{}/", item.name);
        } else {
            let _ = writeln!(s, "{}", item.name);
        }
    }
    s
}

/// `qom get` output: `key: value` lines for an object, in its order, the value
/// itself otherwise, printed as Python's `str()` does.
pub fn format_get(value: &Ordered) -> String {
    match value {
        Ordered::Object(m) => {
            let mut s = String::new();
            for (k, v) in m {
                let _ = writeln!(s, "{k}: {}", python_str(v));
            }
            s
        }
        v => format!("{}\n", python_str(v)),
    }
}

/// A JSON value as Python prints it with `str()` after decoding it: strings bare,
/// `True`/`False`/`None`, and lists and dicts in Python's `repr` (`{'a': [1, 'b']}`),
/// members in their order (Python shows them as received).
///
/// ```
/// use qemu_tools::qom::python_str;
/// use qemu_qmp::json::Ordered;
/// let show = |text: &str| python_str(&Ordered::parse(text.as_bytes()).unwrap());
/// assert_eq!(show(r#""pc""#), "pc");
/// assert_eq!(show("true"), "True");
/// assert_eq!(
///     show(r#"{"return": {"status": "prelaunch", "singlestep": false}, "id": 1}"#),
///     "{'return': {'status': 'prelaunch', 'singlestep': False}, 'id': 1}"
/// );
/// ```
pub fn python_str(v: &Ordered) -> String {
    match v {
        Ordered::String(s) => s.clone(),
        other => python_repr(other),
    }
}

/// A JSON value as Python's `repr()` prints it after decoding it.
pub fn python_repr(v: &Ordered) -> String {
    let mut s = String::new();
    repr_into(&mut s, v);
    s
}

fn repr_into(out: &mut String, v: &Ordered) {
    match v {
        Ordered::Null => out.push_str("None"),
        Ordered::Bool(true) => out.push_str("True"),
        Ordered::Bool(false) => out.push_str("False"),
        Ordered::Number(n) => {
            if n.is_f64() {
                out.push_str(&python_float(n.as_f64().unwrap_or(f64::NAN)));
            } else {
                let _ = write!(out, "{n}");
            }
        }
        Ordered::String(s) => string_repr_into(out, s),
        Ordered::Array(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr_into(out, item);
            }
            out.push(']');
        }
        Ordered::Object(m) => {
            out.push('{');
            for (i, (k, item)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                string_repr_into(out, k);
                out.push_str(": ");
                repr_into(out, item);
            }
            out.push('}');
        }
    }
}

/// Python's `repr(float)`: the shortest round-trip digits, positional for exponents
/// from -4 to 15 (always with a `.`), else `1e+16` style.
pub(crate) fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// Python's `repr(str)`: single quotes unless the text has a `'` and no `"`.
fn string_repr_into(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {
                let n = c as u32;
                if n < 0x100 {
                    let _ = write!(out, "\\x{n:02x}");
                } else {
                    let _ = write!(out, "\\u{n:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `python_str` of a value given as JSON text (objects in the order written).
    fn py(text: &str) -> String {
        python_str(&Ordered::parse(text.as_bytes()).unwrap())
    }

    #[test]
    fn python_formatting() {
        assert_eq!(py("null"), "None");
        assert_eq!(py("false"), "False");
        assert_eq!(py("-3"), "-3");
        assert_eq!(py("18446744073709551615"), "18446744073709551615");
        assert_eq!(py("1.0"), "1.0");
        assert_eq!(py("0.5"), "0.5");
        assert_eq!(py("1e16"), "1e+16");
        assert_eq!(py("1.5e-5"), "1.5e-05");
        assert_eq!(py("123456.789"), "123456.789");
        assert_eq!(py("[]"), "[]");
        assert_eq!(py("{}"), "{}");
        assert_eq!(
            python_str(&Ordered::from_value(&json!([
                "it's",
                "a\"b",
                "both'\"",
                "tab\there\\",
                "\u{1}"
            ]))),
            r#"["it's", 'a"b', 'both\'"', 'tab\there\\', '\x01']"#
        );
        assert_eq!(
            // The members in the order received, at every depth.
            py(r#"{"tm_year": 125, "ok": true, "s": {"z": "x", "a": [{"q": null, "b": 1}]}}"#),
            "{'tm_year': 125, 'ok': True, 's': {'z': 'x', 'a': [{'q': None, 'b': 1}]}}"
        );
    }

    #[test]
    fn value_typing() {
        let ok = |t: &str, v: &str| typed_value(t, v).unwrap_or_else(|e| panic!("{t} {v}: {e}"));
        let bad = |t: &str, v: &str| typed_value(t, v).unwrap_err();
        // Strings, links and children: the text as it is.
        assert_eq!(ok("string", "42"), json!("42"));
        assert_eq!(ok("str", "\"42\""), json!("\"42\""));
        assert_eq!(ok("string", ""), json!(""));
        assert_eq!(
            ok("link<memory-backend>", "/objects/m"),
            json!("/objects/m")
        );
        assert_eq!(ok("child<container>", "x"), json!("x"));
        // Booleans.
        for t in ["true", "on", "yes", "True", "ON"] {
            assert_eq!(ok("bool", t), json!(true), "{t}");
        }
        for f in ["false", "off", "no", "False"] {
            assert_eq!(ok("bool", f), json!(false), "{f}");
        }
        assert!(bad("bool", "maybe").contains("not a boolean"));
        assert!(bad("bool", "1").contains("not a boolean"));
        // Integers, with ranges.
        assert_eq!(ok("int", "-3"), json!(-3));
        assert_eq!(ok("int", "+7"), json!(7));
        assert_eq!(
            ok("uint64", "18446744073709551615"),
            json!(18446744073709551615u64)
        );
        assert_eq!(ok("uint64_t", "0x10"), json!(16));
        assert_eq!(ok("int8", "-128"), json!(-128));
        assert_eq!(ok("size", "4096"), json!(4096));
        assert_eq!(
            bad("uint8", "256"),
            "256 is out of range for uint8 (0 to 255)"
        );
        assert!(bad("uint64_t", "-1").contains("out of range"));
        assert!(bad("int64", "9223372036854775808").contains("out of range"));
        assert!(bad("int", "1.5").contains("not an integer"));
        assert!(bad("int", "12x").contains("not an integer"));
        assert!(bad("int", "0x").contains("not an integer"));
        assert!(bad("int", "").contains("not an integer"));
        // Floats.
        assert_eq!(ok("double", "1.5"), json!(1.5));
        assert!(bad("double", "inf").contains("not a number"));
        // Other types: JSON objects and lists, else strings (enumerations).
        assert_eq!(ok("OnOffAuto", "off"), json!("off"));
        assert_eq!(
            ok("BootConfiguration", "{\"order\": \"c\"}"),
            json!({"order": "c"})
        );
        assert_eq!(ok("strList", "[\"a\"]"), json!(["a"]));
        assert!(bad("BootConfiguration", "{order").contains("not valid JSON"));
        // --json.
        assert_eq!(json_value("\"42\"").unwrap(), json!("42"));
        assert!(json_value("hello").is_err());
    }

    #[test]
    fn path_property_split() {
        assert_eq!(
            split_path_property("/machine/i440fx.pci-hole64-start").unwrap(),
            ("/machine/i440fx", "pci-hole64-start")
        );
        assert_eq!(split_path_property("/a.b.c").unwrap(), ("/a.b", "c"));
        for bad in ["/machine", "/machine.", ".type", ""] {
            let e = split_path_property(bad).unwrap_err();
            assert!(matches!(e, QomError::BadPathProperty(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn list_and_get_formats() {
        let items: Vec<PropertyInfo> = [
            ("type", "string"),
            ("peripheral", "child<container>"),
            ("rtc_state", "link<isa-device>"),
        ]
        .iter()
        .map(|(n, t)| PropertyInfo {
            name: n.to_string(),
            type_: t.to_string(),
            description: None,
            default_value: None,
        })
        .collect();
        assert_eq!(format_list(&items), "type\nperipheral/\n@rtc_state/\n");
        let get = |text: &str| format_get(&Ordered::parse(text.as_bytes()).unwrap());
        assert_eq!(get(r#""pc""#), "pc\n");
        assert_eq!(
            get(r#"{"tm_sec": 1, "b": "x", "a": {"z": 1, "y": true}}"#),
            "tm_sec: 1\nb: x\na: {'z': 1, 'y': True}\n"
        );
    }

    #[test]
    fn paths() {
        assert_eq!(child_path("/", "machine"), "/machine");
        assert_eq!(child_path("/machine", "i440fx"), "/machine/i440fx");
        assert_eq!(normalise_path("/"), "/");
        assert_eq!(normalise_path("//"), "/");
        assert_eq!(normalise_path("/machine/"), "/machine");
        assert_eq!(normalise_path("i440fx"), "i440fx");
    }
}
