//! [`Ordered`]: a JSON value that keeps object members in the order they were written.

use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Number, Value};

use crate::message::JsonObject;

/// A JSON value whose objects keep their members in the order they were written,
/// for showing a message as the peer sent it.
///
/// The client decodes messages into [`serde_json::Value`], whose objects are sorted
/// by key: that keeps decoding fast (an insertion-ordered map measured 40-80 % slower
/// per event), and order means nothing to a program. To a reader it does
/// (`{"status": "prelaunch", "singlestep": false, "running": false}`; `execute`
/// before `arguments`): a client built with
/// [`preserve_order(true)`](crate::ClientBuilder::preserve_order) keeps each
/// message's text, and [`Response::ordered`](crate::Response::ordered) and
/// [`Event::ordered`](crate::Event::ordered) parse it into this type on demand.
///
/// A member that appears twice keeps the place of its first appearance and the value
/// of its last, as with `serde_json::Value` and in QEMU.
///
/// ```
/// use qemu_qmp::json::Ordered;
///
/// let v = Ordered::parse(br#"{"return": {"status": "running", "running": true}, "id": 1}"#)?;
/// assert_eq!(v.to_string(), r#"{"return":{"status":"running","running":true},"id":1}"#);
/// let keys: Vec<&str> = v.members().unwrap().iter().map(|(k, _)| k.as_str()).collect();
/// assert_eq!(keys, ["return", "id"]);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Ordered {
    /// `null`
    Null,
    /// `true` or `false`
    Bool(bool),
    /// A number, as serde_json keeps it.
    Number(Number),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Ordered>),
    /// An object: its members in the order they were written.
    Object(Vec<(String, Ordered)>),
}

/// Objects with more members than this get an index while they are built, so that a
/// hostile message with many members cannot make duplicate detection quadratic.
const INDEX_FROM: usize = 16;

impl Ordered {
    /// Parse JSON text, keeping member order.
    pub fn parse(text: &[u8]) -> serde_json::Result<Ordered> {
        serde_json::from_slice(text)
    }

    /// A value without a known order, with its objects' members in QEMU's order
    /// ([`qemu_order`](super::qemu_order): exact but for members that share a hash
    /// bucket).
    pub fn from_value(value: &Value) -> Ordered {
        match value {
            Value::Null => Ordered::Null,
            Value::Bool(b) => Ordered::Bool(*b),
            Value::Number(n) => Ordered::Number(n.clone()),
            Value::String(s) => Ordered::String(s.clone()),
            Value::Array(a) => Ordered::Array(a.iter().map(Ordered::from_value).collect()),
            Value::Object(m) => Ordered::from_object(m),
        }
    }

    /// [`from_value`](Self::from_value) of an object.
    pub fn from_object(obj: &JsonObject) -> Ordered {
        Ordered::Object(
            super::qemu_order(obj)
                .into_iter()
                .map(|(k, v)| (k.clone(), Ordered::from_value(v)))
                .collect(),
        )
    }

    /// The same value as a [`serde_json::Value`] (whose objects are sorted).
    pub fn to_value(&self) -> Value {
        match self {
            Ordered::Null => Value::Null,
            Ordered::Bool(b) => Value::Bool(*b),
            Ordered::Number(n) => Value::Number(n.clone()),
            Ordered::String(s) => Value::String(s.clone()),
            Ordered::Array(a) => Value::Array(a.iter().map(Ordered::to_value).collect()),
            Ordered::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_value())).collect())
            }
        }
    }

    /// The members of an object, in order; `None` for other values.
    pub fn members(&self) -> Option<&[(String, Ordered)]> {
        match self {
            Ordered::Object(m) => Some(m),
            _ => None,
        }
    }

    /// The value of member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Ordered> {
        self.members()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Set member `key` of an object: in its place if it exists, else at the end.
    /// Does nothing to a value that is not an object.
    pub fn set(&mut self, key: &str, value: Ordered) {
        if let Ordered::Object(m) = self {
            match m.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => *v = value,
                None => m.push((key.to_owned(), value)),
            }
        }
    }

    /// Remove member `key` of an object, keeping the others in order.
    pub fn remove(&mut self, key: &str) -> Option<Ordered> {
        match self {
            Ordered::Object(m) => {
                let i = m.iter().position(|(k, _)| k == key)?;
                Some(m.remove(i).1)
            }
            _ => None,
        }
    }
}

impl From<&Value> for Ordered {
    fn from(value: &Value) -> Ordered {
        Ordered::from_value(value)
    }
}

impl From<Ordered> for Value {
    fn from(value: Ordered) -> Value {
        value.to_value()
    }
}

impl fmt::Display for Ordered {
    /// Compact JSON, as serde_json writes a `Value`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_string(self).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

impl Serialize for Ordered {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Ordered::Null => serializer.serialize_unit(),
            Ordered::Bool(b) => serializer.serialize_bool(*b),
            Ordered::Number(n) => n.serialize(serializer),
            Ordered::String(s) => serializer.serialize_str(s),
            Ordered::Array(a) => {
                let mut seq = serializer.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Ordered::Object(m) => {
                let mut map = serializer.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Ordered, D::Error> {
        deserializer.deserialize_any(OrderedVisitor)
    }
}

struct OrderedVisitor;

impl<'de> Visitor<'de> for OrderedVisitor {
    type Value = Ordered;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Ordered, E> {
        Ok(Ordered::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Ordered, E> {
        Ok(Ordered::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Ordered, E> {
        Ok(Ordered::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Ordered, E> {
        // JSON text cannot hold a non-finite number, so this always succeeds.
        Ok(Number::from_f64(v).map_or(Ordered::Null, Ordered::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Ordered, E> {
        Ok(Ordered::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Ordered, E> {
        Ok(Ordered::String(v))
    }

    fn visit_unit<E>(self) -> Result<Ordered, E> {
        Ok(Ordered::Null)
    }

    fn visit_none<E>(self) -> Result<Ordered, E> {
        Ok(Ordered::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Ordered, D::Error> {
        Deserialize::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Ordered, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Ordered::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
        let mut members: Vec<(String, Ordered)> = Vec::new();
        let mut index: Option<HashMap<String, usize>> = None;
        while let Some(key) = map.next_key::<String>()? {
            let value: Ordered = map.next_value()?;
            if index.is_none() && members.len() >= INDEX_FROM {
                let built = members
                    .iter()
                    .enumerate()
                    .map(|(i, (k, _))| (k.clone(), i))
                    .collect();
                index = Some(built);
            }
            let existing = match &index {
                Some(ix) => ix.get(&key).copied(),
                None => members.iter().position(|(k, _)| *k == key),
            };
            match existing {
                Some(i) => members[i].1 = value,
                None => {
                    if let Some(ix) = &mut index {
                        ix.insert(key.clone(), members.len());
                    }
                    members.push((key, value));
                }
            }
        }
        Ok(Ordered::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_the_written_order_at_every_depth() {
        let text =
            br#"{"z": 1, "a": {"y": [true, null, {"q": 1.5, "b": "x"}], "b": -2}, "m": "s"}"#;
        let v = Ordered::parse(text).unwrap();
        assert_eq!(
            v.to_string(),
            r#"{"z":1,"a":{"y":[true,null,{"q":1.5,"b":"x"}],"b":-2},"m":"s"}"#
        );
        // The same value as serde_json sees it.
        assert_eq!(v.to_value(), serde_json::from_slice::<Value>(text).unwrap());
    }

    #[test]
    fn a_repeated_member_keeps_its_first_place_and_last_value() {
        let v = Ordered::parse(br#"{"a": 1, "b": 2, "a": 3}"#).unwrap();
        assert_eq!(v.to_string(), r#"{"a":3,"b":2}"#);
        // Also past the size at which an index is used.
        let mut text = String::from("{");
        for i in 0..100 {
            text.push_str(&format!("\"k{i}\": {i}, "));
        }
        text.push_str("\"k5\": \"last\", \"k99\": true}");
        let v = Ordered::parse(text.as_bytes()).unwrap();
        let m = v.members().unwrap();
        assert_eq!(m.len(), 100);
        assert_eq!(m[5], ("k5".to_owned(), Ordered::String("last".into())));
        assert_eq!(m[99], ("k99".to_owned(), Ordered::Bool(true)));
    }

    #[test]
    fn many_members_parse_in_linear_time() {
        // 200,000 distinct members: quadratic duplicate checks would take minutes.
        let mut text = String::from("{");
        for i in 0..200_000 {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&format!("\"k{i}\":{i}"));
        }
        text.push('}');
        let v = Ordered::parse(text.as_bytes()).unwrap();
        assert_eq!(v.members().unwrap().len(), 200_000);
    }

    #[test]
    fn set_get_and_remove_keep_the_other_members_in_place() {
        let mut v = Ordered::parse(br#"{"return": {}, "id": 7, "x": 1}"#).unwrap();
        v.set("id", Ordered::String("mine".into()));
        assert_eq!(v.to_string(), r#"{"return":{},"id":"mine","x":1}"#);
        assert_eq!(v.remove("id"), Some(Ordered::String("mine".into())));
        assert_eq!(v.to_string(), r#"{"return":{},"x":1}"#);
        v.set("new", Ordered::Null);
        assert_eq!(v.to_string(), r#"{"return":{},"x":1,"new":null}"#);
        assert_eq!(v.get("x"), Some(&Ordered::Number(1.into())));
        assert_eq!(v.get("id"), None);
    }

    #[test]
    fn values_without_text_come_in_qemus_order() {
        let v = Ordered::from_value(&json!({"id": 1, "return": {"minor": 2, "micro": 0}}));
        assert_eq!(v.to_string(), r#"{"return":{"micro":0,"minor":2},"id":1}"#);
    }

    #[test]
    fn numbers_keep_their_form() {
        let text = br#"[18446744073709551615, -9223372036854775808, 0.1, 1e300]"#;
        let v = Ordered::parse(text).unwrap();
        // Exactly as serde_json writes the same numbers.
        let plain: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(v.to_string(), plain.to_string());
        assert!(v
            .to_string()
            .starts_with("[18446744073709551615,-9223372036854775808,0.1,"));
    }
}
