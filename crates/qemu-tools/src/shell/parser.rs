//! The qmp-shell input grammar: a pure parser with no I/O.
//!
//! A line is one of:
//!
//! - `command key=value ...`: sent as `{"execute": command, "arguments": {...}}`
//!   (`arguments` is always present, as in QEMU's Python shell);
//! - a whole JSON object (`{"execute": ...}`), sent as typed;
//! - `transaction(`, which starts a transaction: every following line is an action
//!   `type key=value ...` (or a JSON action object) until a line `)`, and the actions
//!   are sent as one `transaction` command. The first action may follow `transaction(`
//!   on the same line, and a line may end with `)`, so `transaction( abort )` is a
//!   one-line transaction; `transaction( )` sends an empty one.
//!
//! Tokens are separated by whitespace, except inside single or double quotes, which
//! may appear anywhere in a token (`a={"b":"x y"}` is one token).
//!
//! Keys with dots nest: `a.b=1 a.c=2` gives `{"a": {"b": 1, "c": 2}}`. A value is, in
//! this order (see [`parse_value`]):
//!
//! 1. an integer (`-5`, `+3`, `007`);
//! 2. `true` / `false` (any case), `null`;
//! 3. a JSON object or array (`{...}`, `[...]`), also accepting Python literals as
//!    QEMU's shell does: single quotes, `True`/`False`/`None`, trailing commas;
//! 4. a quoted string, `"..."` (JSON escapes) or `'...'`, quotes removed;
//! 5. a JSON number (`1.5`, `2e3`);
//! 6. anything else: the text as typed.
//!
//! Differences from QEMU's Python `qmp-shell`, on purpose: quotes around a whole value
//! are removed (Python sent them as part of the string), `null` is JSON null (Python
//! sent the string), decimal numbers are numbers, a malformed `{...}`/`[...]` value is
//! an error instead of silently becoming a string, and every `key=value` starts again
//! at the top level (Python nested the keys that follow a dotted key under it).

use qemu_qmp::json::Ordered;
use qemu_qmp::Value;

/// Why a line could not be parsed. The message is meant for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl ParseError {
    fn new(msg: impl Into<String>) -> Self {
        ParseError(msg.into())
    }
}

/// The one-line reminder QEMU's shell prints after a parse error.
pub const COMMAND_FORMAT: &str =
    "command format: <command-name> [arg-name1=arg1] ... [arg-nameN=argN]";

/// How deeply a JSON value typed on the command line may nest.
const MAX_DEPTH: usize = 128;

/// A token of a line, with its byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    /// The text, quotes included.
    pub text: &'a str,
    /// Byte offset of the first character in the line.
    pub start: usize,
}

impl Token<'_> {
    /// Byte offset just past the last character.
    pub fn end(&self) -> usize {
        self.start + self.text.len()
    }
}

/// Split a line into tokens (the grammar of QEMU's shell: whitespace separates tokens
/// except inside quotes, and a backslash inside quotes escapes the next character).
/// The second value is true when the line ends inside a quoted string; the last token
/// then runs to the end of the line.
pub fn tokenize_lenient(line: &str) -> (Vec<Token<'_>>, bool) {
    let mut tokens = Vec::new();
    let mut chars = line.char_indices().peekable();
    let mut unterminated = false;
    loop {
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut end = line.len();
        while let Some(&(i, c)) = chars.peek() {
            if c.is_whitespace() {
                end = i;
                break;
            }
            chars.next();
            if c == '"' || c == '\'' {
                let mut closed = false;
                while let Some((_, q)) = chars.next() {
                    if q == '\\' {
                        chars.next();
                    } else if q == c {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    unterminated = true;
                }
            }
        }
        tokens.push(Token {
            text: &line[start..end],
            start,
        });
    }
    (tokens, unterminated)
}

/// Split a line into tokens; an unterminated quote is an error.
pub fn tokenize(line: &str) -> Result<Vec<Token<'_>>, ParseError> {
    let (tokens, unterminated) = tokenize_lenient(line);
    if unterminated {
        let last = tokens.last().map(|t| t.text).unwrap_or_default();
        return Err(ParseError::new(format!("Unterminated quote in '{last}'")));
    }
    Ok(tokens)
}

/// True if `s` is an integer as Python's `int()` reads it: an optional sign and
/// ASCII digits.
fn is_python_int(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Parse the value of a `key=value` argument (see the [module docs](self) for the
/// rules). Objects keep their members in the order typed.
pub fn parse_value(text: &str) -> Result<Ordered, ParseError> {
    if is_python_int(text) {
        let t = text.strip_prefix('+').unwrap_or(text);
        if let Ok(n) = t.parse::<i64>() {
            return Ok(Ordered::Number(n.into()));
        }
        if let Ok(n) = t.parse::<u64>() {
            return Ok(Ordered::Number(n.into()));
        }
        return Err(ParseError::new(format!(
            "'{text}' is out of the range of a 64-bit integer (quote it to pass a string)"
        )));
    }
    if text.eq_ignore_ascii_case("true") {
        return Ok(Ordered::Bool(true));
    }
    if text.eq_ignore_ascii_case("false") {
        return Ok(Ordered::Bool(false));
    }
    if text == "null" {
        return Ok(Ordered::Null);
    }
    if text.starts_with(['{', '[']) {
        return parse_json_lenient(text).map_err(|e| {
            ParseError::new(format!(
                "'{text}' is not a valid JSON value: {e} (quote it to pass a string)"
            ))
        });
    }
    if text.starts_with(['"', '\'']) {
        return match Fuzzy::new(text).whole(|p| p.string()) {
            Ok(s) => Ok(Ordered::String(s)),
            Err(e) => Err(ParseError::new(format!("bad quoted string {text}: {e}"))),
        };
    }
    if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        if let Ok(Value::Number(n)) = serde_json::from_str::<Value>(text) {
            return Ok(Ordered::Number(n));
        }
    }
    Ok(Ordered::String(text.to_owned()))
}

/// Parse JSON, or failing that the Python literal subset QEMU's shell accepts
/// (single-quoted strings, `True`/`False`/`None`, trailing commas). The error is the
/// strict JSON parser's, which is the more useful one. Objects keep their members in
/// the order typed (a member typed twice keeps its first place and its last value,
/// as in Python).
pub fn parse_json_lenient(text: &str) -> Result<Ordered, String> {
    match serde_json::from_str::<Ordered>(text) {
        Ok(v) => Ok(v),
        Err(strict) => Fuzzy::new(text)
            .whole(|p| p.value(0))
            .map_err(|_| strict.to_string()),
    }
}

/// A small recursive-descent parser for JSON extended with Python literals.
struct Fuzzy<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Fuzzy<'a> {
    fn new(s: &'a str) -> Self {
        Fuzzy { s, pos: 0 }
    }

    /// Run `f` and require that it consumed everything but trailing whitespace.
    fn whole<T>(mut self, f: impl FnOnce(&mut Self) -> Result<T, String>) -> Result<T, String> {
        let v = f(&mut self)?;
        self.ws();
        if self.pos != self.s.len() {
            return Err(format!("unexpected text at offset {}", self.pos));
        }
        Ok(v)
    }

    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        self.ws();
        match self.bump() {
            Some(x) if x == c => Ok(()),
            Some(x) => Err(format!(
                "expected '{c}', found '{x}' at offset {}",
                self.pos - 1
            )),
            None => Err(format!("expected '{c}', found the end")),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Ordered, String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested more than {MAX_DEPTH} levels deep"));
        }
        self.ws();
        match self.peek() {
            None => Err("expected a value, found the end".into()),
            Some('{') => self.object(depth),
            Some('[') => self.array(depth),
            Some('"' | '\'') => self.string().map(Ordered::String),
            Some(c) if c == '-' || c == '+' || c.is_ascii_digit() => self.number(),
            Some(c) if c.is_alphabetic() => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    self.bump();
                }
                match &self.s[start..self.pos] {
                    "true" | "True" => Ok(Ordered::Bool(true)),
                    "false" | "False" => Ok(Ordered::Bool(false)),
                    "null" | "None" => Ok(Ordered::Null),
                    w => Err(format!("unknown word '{w}'")),
                }
            }
            Some(c) => Err(format!("unexpected '{c}' at offset {}", self.pos)),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Ordered, String> {
        self.expect('{')?;
        let mut map = Ordered::Object(Vec::new());
        loop {
            self.ws();
            if self.peek() == Some('}') {
                self.bump();
                return Ok(map);
            }
            if !matches!(self.peek(), Some('"' | '\'')) {
                return Err(format!("expected a quoted key at offset {}", self.pos));
            }
            let key = self.string()?;
            self.expect(':')?;
            let v = self.value(depth + 1)?;
            // As in a Python dict: a repeated key keeps its place, takes the value.
            map.set(&key, v);
            self.ws();
            match self.bump() {
                Some(',') => {}
                Some('}') => return Ok(map),
                _ => return Err(format!("expected ',' or '}}' at offset {}", self.pos)),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Ordered, String> {
        self.expect('[')?;
        let mut items = Vec::new();
        loop {
            self.ws();
            if self.peek() == Some(']') {
                self.bump();
                return Ok(Ordered::Array(items));
            }
            items.push(self.value(depth + 1)?);
            self.ws();
            match self.bump() {
                Some(',') => {}
                Some(']') => return Ok(Ordered::Array(items)),
                _ => return Err(format!("expected ',' or ']' at offset {}", self.pos)),
            }
        }
    }

    fn number(&mut self) -> Result<Ordered, String> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E'))
        {
            self.bump();
        }
        let text = &self.s[start..self.pos];
        let text = text.strip_prefix('+').unwrap_or(text);
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Number(n)) => Ok(Ordered::Number(n)),
            _ => Err(format!("bad number '{text}'")),
        }
    }

    /// A string in double or single quotes, with JSON and Python escapes.
    fn string(&mut self) -> Result<String, String> {
        let quote = match self.bump() {
            Some(q @ ('"' | '\'')) => q,
            _ => return Err("expected a quoted string".into()),
        };
        let mut out = String::new();
        loop {
            let Some(c) = self.bump() else {
                return Err("unterminated string".into());
            };
            match c {
                c if c == quote => return Ok(out),
                '\\' => {
                    let Some(e) = self.bump() else {
                        return Err("unterminated string".into());
                    };
                    match e {
                        '"' | '\'' | '\\' | '/' => out.push(e),
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        '0' => out.push('\0'),
                        'x' => out.push(self.hex_char(2)?),
                        'u' => {
                            let c = self.hex_code(4)?;
                            out.push(self.surrogate(c)?);
                        }
                        'U' => out.push(self.hex_char(8)?),
                        // Python keeps unknown escapes as they are.
                        other => {
                            out.push('\\');
                            out.push(other);
                        }
                    }
                }
                c => out.push(c),
            }
        }
    }

    fn hex_code(&mut self, digits: usize) -> Result<u32, String> {
        let start = self.pos;
        for _ in 0..digits {
            match self.bump() {
                Some(c) if c.is_ascii_hexdigit() => {}
                _ => return Err(format!("bad escape: expected {digits} hex digits")),
            }
        }
        u32::from_str_radix(&self.s[start..self.pos], 16).map_err(|e| e.to_string())
    }

    fn hex_char(&mut self, digits: usize) -> Result<char, String> {
        let c = self.hex_code(digits)?;
        char::from_u32(c).ok_or_else(|| format!("bad escape: U+{c:X} is not a character"))
    }

    /// Complete a `\uXXXX` escape, joining a surrogate pair.
    fn surrogate(&mut self, hi: u32) -> Result<char, String> {
        if (0xD800..0xDC00).contains(&hi) && self.s[self.pos..].starts_with("\\u") {
            self.pos += 2;
            let lo = self.hex_code(4)?;
            if (0xDC00..0xE000).contains(&lo) {
                let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                return char::from_u32(c).ok_or_else(|| "bad surrogate pair".to_owned());
            }
            return Err("bad surrogate pair".into());
        }
        char::from_u32(hi).ok_or_else(|| format!("bad escape: U+{hi:X} is not a character"))
    }
}

/// An empty JSON object.
fn empty_object() -> Ordered {
    Ordered::Object(Vec::new())
}

/// The members of `obj`, which must be an object.
fn members_mut(obj: &mut Ordered) -> &mut Vec<(String, Ordered)> {
    match obj {
        Ordered::Object(m) => m,
        _ => unreachable!("only objects are given members"),
    }
}

/// Set `key` (dotted for nesting) to `value` in `args`, an object. New members go
/// after those already there, so the arguments keep the order they were typed in, as
/// in Python's shell (`a.b=1 c=2 a.d=3` gives `{"a": {"b": 1, "d": 3}, "c": 2}`).
pub fn insert_argument(args: &mut Ordered, key: &str, value: Ordered) -> Result<(), ParseError> {
    if key.is_empty() {
        return Err(ParseError::new("An argument name is empty"));
    }
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(ParseError::new(format!(
            "The argument name \"{key}\" has an empty component"
        )));
    }
    let (last, path) = parts.split_last().expect("split gives at least one part");
    if !matches!(args, Ordered::Object(_)) {
        return Err(ParseError::new("The arguments are not an object"));
    }
    let mut parent = args;
    for (i, p) in path.iter().enumerate() {
        let members = members_mut(parent);
        let at = match members.iter().position(|(k, _)| k == p) {
            Some(at) => at,
            None => {
                members.push(((*p).to_owned(), empty_object()));
                members.len() - 1
            }
        };
        let child = &mut members[at].1;
        if !matches!(child, Ordered::Object(_)) {
            return Err(ParseError::new(format!(
                "Cannot use \"{}\" as both leaf and non-leaf key",
                parts[..=i].join(".")
            )));
        }
        parent = child;
    }
    if let Some(old) = parent.get(last) {
        if matches!(old, Ordered::Object(_)) {
            return Err(ParseError::new(format!(
                "Cannot use \"{key}\" as both leaf and non-leaf key"
            )));
        }
        return Err(ParseError::new(format!(
            "Cannot set \"{key}\" multiple times"
        )));
    }
    members_mut(parent).push(((*last).to_owned(), value));
    Ok(())
}

/// Build an arguments object from `key=value` tokens, its members in the order typed.
pub fn parse_arguments<'a>(
    tokens: impl IntoIterator<Item = &'a str>,
) -> Result<Ordered, ParseError> {
    let mut args = empty_object();
    for tok in tokens {
        let Some((key, value)) = tok.split_once('=') else {
            return Err(ParseError::new(format!(
                "Expected a key=value pair, got '{tok}'"
            )));
        };
        let value = parse_value(value)?;
        insert_argument(&mut args, key, value)?;
    }
    Ok(args)
}

/// What a line produced. Requests are [`Ordered`]: they keep the order in which
/// QEMU's Python shell builds them (`execute`, then `arguments` in the order typed;
/// JSON as typed), which is the order `-v` and `-l` show.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// Nothing to send: an empty line, or a transaction action that was queued.
    Nothing,
    /// A command built from `name key=value ...`, or a finished transaction.
    Command {
        /// The command name.
        name: String,
        /// Its arguments (an object, possibly empty).
        arguments: Ordered,
    },
    /// A JSON request object typed by the user, to be sent as typed.
    Raw(Ordered),
}

impl Parsed {
    /// The request as it goes on the wire (without the id the client adds to built
    /// commands), in the order shown; `None` for [`Parsed::Nothing`].
    pub fn request(&self) -> Option<Ordered> {
        match self {
            Parsed::Nothing => None,
            Parsed::Command { name, arguments } => Some(Ordered::Object(vec![
                ("execute".into(), Ordered::String(name.clone())),
                ("arguments".into(), arguments.clone()),
            ])),
            Parsed::Raw(obj) => Some(obj.clone()),
        }
    }
}

/// The stateful parser of QMP-mode lines (the state is an open transaction).
#[derive(Debug, Default, Clone)]
pub struct CommandParser {
    transaction: Option<Vec<Ordered>>,
}

impl CommandParser {
    /// A parser outside any transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// True between `transaction(` and `)`.
    pub fn in_transaction(&self) -> bool {
        self.transaction.is_some()
    }

    /// How many actions the open transaction holds.
    pub fn pending_actions(&self) -> usize {
        self.transaction.as_ref().map_or(0, Vec::len)
    }

    /// Drop the open transaction, if any; returns how many actions it held.
    pub fn cancel_transaction(&mut self) -> Option<usize> {
        self.transaction.take().map(|a| a.len())
    }

    /// Parse one line. On error the line is ignored and the state (an open transaction
    /// and its actions) is kept, as in QEMU's shell.
    pub fn parse(&mut self, line: &str) -> Result<Parsed, ParseError> {
        let trimmed = line.trim();
        if trimmed.starts_with('{') {
            let obj = parse_json_object(trimmed)?;
            return Ok(match &mut self.transaction {
                Some(actions) => {
                    actions.push(obj);
                    Parsed::Nothing
                }
                None => Parsed::Raw(obj),
            });
        }
        let tokens = tokenize(line)?;
        let mut args: Vec<&str> = tokens.iter().map(|t| t.text).collect();
        if args.first() == Some(&"transaction(") {
            self.transaction = Some(Vec::new());
            args.remove(0);
        }
        if self.transaction.is_some() && args.first() == Some(&")") {
            if args.len() > 1 {
                self.transaction = None;
                return Err(ParseError::new(
                    "Unexpected input after close of Transaction sub-shell",
                ));
            }
            return Ok(self.finish_transaction());
        }
        let Some((&name, rest)) = args.split_first() else {
            return Ok(Parsed::Nothing);
        };
        if self.transaction.is_some() {
            let (rest, finalize) = match rest.split_last() {
                Some((&")", init)) => (init, true),
                _ => (rest, false),
            };
            let data = parse_arguments(rest.iter().copied())?;
            let action = Ordered::Object(vec![
                ("type".into(), Ordered::String(name.to_owned())),
                ("data".into(), data),
            ]);
            if let Some(actions) = &mut self.transaction {
                actions.push(action);
            }
            return Ok(if finalize {
                self.finish_transaction()
            } else {
                Parsed::Nothing
            });
        }
        if name == ")" {
            return Err(ParseError::new("')' outside of a transaction"));
        }
        let arguments = parse_arguments(rest.iter().copied())?;
        Ok(Parsed::Command {
            name: name.to_owned(),
            arguments,
        })
    }

    fn finish_transaction(&mut self) -> Parsed {
        let actions = self.transaction.take().unwrap_or_default();
        Parsed::Command {
            name: "transaction".into(),
            arguments: Ordered::Object(vec![("actions".into(), Ordered::Array(actions))]),
        }
    }
}

/// Parse a whole-line JSON request (JSON, or the Python literal subset), keeping its
/// members in the order typed.
pub fn parse_json_object(text: &str) -> Result<Ordered, ParseError> {
    match parse_json_lenient(text) {
        Ok(obj @ Ordered::Object(_)) => Ok(obj),
        Ok(_) => Err(ParseError::new("A JSON request must be an object")),
        Err(e) => Err(ParseError::new(format!("Invalid JSON request: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn texts(line: &str) -> Vec<&str> {
        tokenize(line)
            .unwrap()
            .into_iter()
            .map(|t| t.text)
            .collect()
    }

    /// The request built from a line.
    fn request(p: &mut CommandParser, line: &str) -> Ordered {
        match p.parse(line).unwrap() {
            p @ (Parsed::Command { .. } | Parsed::Raw(_)) => p.request().unwrap(),
            Parsed::Nothing => panic!("no command from {line:?}"),
        }
    }

    fn cmd(p: &mut CommandParser, line: &str) -> Value {
        request(p, line).to_value()
    }

    fn one(line: &str) -> Value {
        cmd(&mut CommandParser::new(), line)
    }

    /// The request built from a line, as compact JSON in its order.
    fn shown(line: &str) -> String {
        request(&mut CommandParser::new(), line).to_string()
    }

    fn err(line: &str) -> String {
        CommandParser::new().parse(line).unwrap_err().0
    }

    #[test]
    fn tokens_split_on_whitespace_outside_quotes() {
        assert_eq!(texts("  a  b=1\tc "), ["a", "b=1", "c"]);
        assert_eq!(
            texts(r#"x a="b c" d='e f'"#),
            ["x", r#"a="b c""#, "d='e f'"]
        );
        assert_eq!(texts(r#"a={"k":"x y"}"#), [r#"a={"k":"x y"}"#]);
        assert_eq!(texts(r#"a="q\"w e""#), [r#"a="q\"w e""#]);
        assert_eq!(texts(""), Vec::<&str>::new());
        let toks = tokenize("ab  cd").unwrap();
        assert_eq!((toks[1].start, toks[1].end()), (4, 6));
    }

    #[test]
    fn unterminated_quotes_are_an_error_or_run_to_the_end() {
        assert!(err(r#"x a="b c"#).contains("Unterminated quote"));
        let (toks, open) = tokenize_lenient(r#"x a="b c"#);
        assert!(open);
        assert_eq!(toks.last().unwrap().text, r#"a="b c"#);
    }

    #[test]
    fn values_are_typed() {
        let v = |s| parse_value(s).unwrap().to_value();
        assert_eq!(v("5"), json!(5));
        assert_eq!(v("-5"), json!(-5));
        assert_eq!(v("+3"), json!(3));
        assert_eq!(v("00012"), json!(12));
        assert_eq!(v("18446744073709551615"), json!(u64::MAX));
        assert_eq!(v("1.5"), json!(1.5));
        assert_eq!(v("-2e3"), json!(-2000.0));
        assert_eq!(v("true"), json!(true));
        assert_eq!(v("FALSE"), json!(false));
        assert_eq!(v("null"), Value::Null);
        assert_eq!(v("None"), json!("None"));
        assert_eq!(v("0x10"), json!("0x10"));
        assert_eq!(v("1.2.3"), json!("1.2.3"));
        assert_eq!(v("-"), json!("-"));
        assert_eq!(v(""), json!(""));
        assert_eq!(v("a=b"), json!("a=b"));
        assert_eq!(v("x\"y z\""), json!("x\"y z\""));
        assert_eq!(v(r#""a b""#), json!("a b"));
        assert_eq!(v(r#""12""#), json!("12"));
        assert_eq!(v(r#""t\"\u00e9""#), json!("t\"é"));
        assert_eq!(v("'it\\'s'"), json!("it's"));
    }

    #[test]
    fn bad_values_say_why() {
        assert!(parse_value("'a'b'").is_err());
        assert!(parse_value(r#""a"b""#).is_err());
        let e = parse_value("{abc").unwrap_err().0;
        assert!(e.contains("not a valid JSON value"), "{e}");
        assert!(parse_value("99999999999999999999")
            .unwrap_err()
            .0
            .contains("range"));
        assert!(parse_value(r#""\uZZZZ""#).is_err());
    }

    #[test]
    fn objects_and_arrays_accept_json_and_python_literals() {
        let v = |s| parse_value(s).unwrap().to_value();
        assert_eq!(
            v(r#"{"a":[1,2,{"b":null}]}"#),
            json!({"a": [1, 2, {"b": null}]})
        );
        assert_eq!(
            v("{'k':None,'b':true,'c':False,'d':[1,],}"),
            json!({"k": null, "b": true, "c": false, "d": [1]})
        );
        assert_eq!(
            v(r"['a\'b', 'c\nd', '\x41\u00e9']"),
            json!(["a'b", "c\nd", "Aé"])
        );
        assert_eq!(v(r#"["\ud83d\ude00"]"#), json!(["😀"]));
        assert_eq!(v("[]"), json!([]));
        assert_eq!(v("{}"), json!({}));
        assert!(parse_value("{1:2}").is_err());
        assert!(parse_value("[1 2]").is_err());
        assert!(parse_value("[nope]").is_err());
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse_value(&deep).is_err());
    }

    #[test]
    fn commands_always_carry_arguments() {
        assert_eq!(
            one("query-status"),
            json!({"execute": "query-status", "arguments": {}})
        );
        assert_eq!(
            one("device_add driver=e1000 id=net1 x=true"),
            json!({"execute": "device_add", "arguments": {"driver": "e1000", "id": "net1", "x": true}})
        );
    }

    #[test]
    fn dotted_keys_nest_and_later_keys_start_at_the_top() {
        assert_eq!(
            one("foo a.b=1 c=2"),
            json!({"execute": "foo", "arguments": {"a": {"b": 1}, "c": 2}})
        );
        assert_eq!(
            one("foo a.b.c=1 a.b.d=x a.e=[1]"),
            json!({"execute": "foo", "arguments": {"a": {"b": {"c": 1, "d": "x"}, "e": [1]}}})
        );
        // A value given as an object can be extended, as in Python.
        assert_eq!(
            one(r#"foo a={"b":1} a.c=2"#),
            json!({"execute": "foo", "arguments": {"a": {"b": 1, "c": 2}}})
        );
        // The value may contain '='.
        assert_eq!(
            one("foo a=b=c"),
            json!({"execute": "foo", "arguments": {"a": "b=c"}})
        );
    }

    #[test]
    fn key_conflicts_are_errors() {
        assert_eq!(err("foo a=1 a=2"), r#"Cannot set "a" multiple times"#);
        assert_eq!(
            err("foo a=1 a.b=2"),
            r#"Cannot use "a" as both leaf and non-leaf key"#
        );
        assert_eq!(
            err("foo a.b=1 a=2"),
            r#"Cannot use "a" as both leaf and non-leaf key"#
        );
        assert_eq!(
            err("foo x.a=1 x.a.b=2"),
            r#"Cannot use "x.a" as both leaf and non-leaf key"#
        );
        assert_eq!(err("foo bar"), "Expected a key=value pair, got 'bar'");
        assert!(err("foo =1").contains("empty"));
        assert!(err("foo a..b=1").contains("empty component"));
        assert!(err("foo .a=1").contains("empty component"));
        assert!(err(")").contains("outside of a transaction"));
    }

    #[test]
    fn raw_json_is_sent_as_typed() {
        assert_eq!(
            one(r#"  {"execute": "query-status", "id": 7} "#),
            json!({"execute": "query-status", "id": 7})
        );
        assert_eq!(one("{'execute':'stop'}"), json!({"execute": "stop"}));
        assert!(err("{\"execute\": ").contains("Invalid JSON request"));
        assert!(err("{} x").contains("Invalid JSON request"));
    }

    #[test]
    fn multi_line_transactions() {
        let mut p = CommandParser::new();
        assert_eq!(p.parse("transaction(").unwrap(), Parsed::Nothing);
        assert!(p.in_transaction());
        assert_eq!(
            p.parse("block-dirty-bitmap-add node=n0 name=b0").unwrap(),
            Parsed::Nothing
        );
        // A bad action is reported and dropped; the transaction stays open.
        assert!(p.parse("block-dirty-bitmap-add node").is_err());
        assert!(p.in_transaction());
        assert_eq!(p.parse("").unwrap(), Parsed::Nothing);
        assert_eq!(
            p.parse(r#"{"type": "abort", "data": {}}"#).unwrap(),
            Parsed::Nothing
        );
        assert_eq!(p.pending_actions(), 2);
        assert_eq!(
            cmd(&mut p, ")"),
            json!({"execute": "transaction", "arguments": {"actions": [
                {"type": "block-dirty-bitmap-add", "data": {"node": "n0", "name": "b0"}},
                {"type": "abort", "data": {}},
            ]}})
        );
        assert!(!p.in_transaction());
    }

    #[test]
    fn one_line_transactions() {
        assert_eq!(
            one("transaction( abort )"),
            json!({"execute": "transaction", "arguments": {"actions": [{"type": "abort", "data": {}}]}})
        );
        assert_eq!(
            one("transaction( )"),
            json!({"execute": "transaction", "arguments": {"actions": []}})
        );
        let mut p = CommandParser::new();
        assert_eq!(p.parse("transaction( a x=1").unwrap(), Parsed::Nothing);
        assert_eq!(
            cmd(&mut p, "b y.z=2 )"),
            json!({"execute": "transaction", "arguments": {"actions": [
                {"type": "a", "data": {"x": 1}},
                {"type": "b", "data": {"y": {"z": 2}}},
            ]}})
        );
    }

    #[test]
    fn transaction_close_with_extra_input_is_an_error() {
        let mut p = CommandParser::new();
        p.parse("transaction(").unwrap();
        let e = p.parse(") x").unwrap_err();
        assert_eq!(e.0, "Unexpected input after close of Transaction sub-shell");
        // Python leaves transaction mode before raising; so do we.
        assert!(!p.in_transaction());
    }

    #[test]
    fn a_new_transaction_restarts_and_cancel_drops_it() {
        let mut p = CommandParser::new();
        p.parse("transaction( a").unwrap();
        p.parse("transaction( b").unwrap();
        assert_eq!(p.pending_actions(), 1);
        assert_eq!(p.cancel_transaction(), Some(1));
        assert!(!p.in_transaction());
        assert_eq!(p.cancel_transaction(), None);
    }

    #[test]
    fn requests_keep_the_order_typed() {
        // execute first, then the arguments as typed (Python's dicts).
        assert_eq!(
            shown("blockdev-add driver=file node-name=x filename=/tmp/y"),
            r#"{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"x","filename":"/tmp/y"}}"#
        );
        assert_eq!(
            shown("query-status"),
            r#"{"execute":"query-status","arguments":{}}"#
        );
        // A dotted key's object takes the place of its first member; later members
        // of it join it there.
        assert_eq!(
            shown("foo z.y=1 b=2 z.a.q=3 z.a.c=4 a=5"),
            r#"{"execute":"foo","arguments":{"z":{"y":1,"a":{"q":3,"c":4}},"b":2,"a":5}}"#
        );
        // Values given as JSON (or Python) keep their order too, and can be extended.
        assert_eq!(
            shown(r#"foo o={"z":1,"a":{"y":2,"b":3}} o.m=4 l=[{'q':1,'c':2}]"#),
            r#"{"execute":"foo","arguments":{"o":{"z":1,"a":{"y":2,"b":3},"m":4},"l":[{"q":1,"c":2}]}}"#
        );
    }

    #[test]
    fn raw_json_keeps_the_order_typed() {
        assert_eq!(
            shown(r#"{"id": 7, "arguments": {"name": "b", "node": "n"}, "execute": "x"}"#),
            r#"{"id":7,"arguments":{"name":"b","node":"n"},"execute":"x"}"#
        );
        // Python literals too; a repeated key keeps its first place, as in Python.
        assert_eq!(
            shown("{'execute': 'stop', 'id': 1, 'arguments': {}, 'id': 2,}"),
            r#"{"execute":"stop","id":2,"arguments":{}}"#
        );
    }

    #[test]
    fn transactions_keep_the_order_typed() {
        let mut p = CommandParser::new();
        p.parse("transaction(").unwrap();
        p.parse("block-dirty-bitmap-add node=n0 name=b0 persistent=false")
            .unwrap();
        p.parse(r#"{"data": {"node": "n0", "name": "b1"}, "type": "block-dirty-bitmap-clear"}"#)
            .unwrap();
        assert_eq!(
            request(&mut p, ")").to_string(),
            concat!(
                r#"{"execute":"transaction","arguments":{"actions":["#,
                r#"{"type":"block-dirty-bitmap-add","data":{"node":"n0","name":"b0","persistent":false}},"#,
                r#"{"data":{"node":"n0","name":"b1"},"type":"block-dirty-bitmap-clear"}]}}"#
            )
        );
    }
}
