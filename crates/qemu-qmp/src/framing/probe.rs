//! The event probe: is a message an event, and what are its name and timestamp,
//! without building the message.
//!
//! Events are most of what a busy client reads and most of what its queues hold, and
//! few of them are ever looked at beyond their name. The probe runs `serde_json` over
//! the message with a visitor that keeps only the `event` and `timestamp` members and
//! skips the rest (validating it, allocating nothing); the event then keeps its text
//! and is parsed only when asked (see [`Event`](crate::Event)). Anything else (a
//! reply, a greeting, a command, an event whose members are not what QEMU sends, or
//! bytes `serde_json` does not take as they are, such as QEMU's single-quoted strings)
//! makes the probe give up, at the first member that shows it for replies and
//! greetings, and the message is parsed in full as before: the probe never decides
//! differently from the full path, it only decides sooner.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::message::Timestamp;

/// What the probe found in an event.
pub(super) struct ProbedEvent {
    pub(super) name: String,
    pub(super) timestamp: Option<Timestamp>,
    /// Bytes the event spans from the start of the input.
    pub(super) len: usize,
}

/// Probe the first JSON value of `bytes`; `None` unless it is an object with a string
/// `event` member, none of `return`, `error`, `QMP`, `execute` or `exec-oob`, a
/// well-formed `timestamp` if any, and valid UTF-8 text.
pub(super) fn probe_event(bytes: &[u8]) -> Option<ProbedEvent> {
    // Most messages that are not events do not even have the member: one vectorised
    // search spares them the probe. (An `event` spelt with escapes is found by the
    // full parse.)
    memchr::memmem::find(bytes, b"\"event\"")?;
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<Probed>();
    let Probed(found) = stream.next()?.ok()?;
    let len = stream.byte_offset();
    let (name, timestamp) = found?;
    std::str::from_utf8(bytes.get(..len)?).ok()?;
    Some(ProbedEvent {
        name,
        timestamp,
        len,
    })
}

struct Probe;

/// The probe's answer: the name and timestamp of an event, `None` for an object
/// without `event`.
struct Probed(Option<(String, Option<Timestamp>)>);

impl<'de> de::Deserialize<'de> for Probed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Probed, D::Error> {
        d.deserialize_map(Probe).map(Probed)
    }
}

/// Why the probe gave up; never shown (the message is then parsed in full).
const NOT_AN_EVENT: &str = "not an event";

impl<'de> Visitor<'de> for Probe {
    type Value = Option<(String, Option<Timestamp>)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a QMP event")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut name, mut timestamp) = (None, None);
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Event => name = Some(map.next_value::<String>()?),
                Key::Timestamp => timestamp = Some(map.next_value::<Timestamp>()?),
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
                Key::NotAnEvent => return Err(de::Error::custom(NOT_AN_EVENT)),
            }
        }
        Ok(name.map(|n| (n, timestamp)))
    }
}

/// A member name, as far as the probe cares.
enum Key {
    Event,
    Timestamp,
    /// A member that makes the message something else, or an event the full path
    /// must judge.
    NotAnEvent,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                Ok(match s {
                    "event" => Key::Event,
                    "timestamp" => Key::Timestamp,
                    "return" | "error" | "QMP" | "execute" | "exec-oob" => Key::NotAnEvent,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_recognised_with_name_timestamp_and_length() {
        let text = br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#;
        let mut input = text.to_vec();
        input.extend_from_slice(b"\r\n{\"return\": {}}");
        let p = probe_event(&input).expect("an event");
        assert_eq!(p.name, "STOP");
        assert_eq!(
            p.timestamp,
            Some(Timestamp {
                seconds: 1,
                microseconds: 2
            })
        );
        assert_eq!(p.len, text.len());
        let p = probe_event(br#"{"event": "X", "data": {"a": [1, {"b": null}]}}"#).unwrap();
        assert_eq!((p.name.as_str(), p.timestamp), ("X", None));
    }

    #[test]
    fn the_decoder_hands_events_over_unparsed_and_the_rest_as_objects() {
        use crate::framing::{Decoded, Decoder};
        let mut d = Decoder::default();
        d.extend(
            b"{\"timestamp\": {\"seconds\": 5, \"microseconds\": 6}, \"event\": \"STOP\", \"data\": {\"b\": 1, \"a\": 2}}\r\n\
              {\"return\": {}, \"id\": 1}\r\n\
              {'event': 'QUOTED'}\r\n\
              {\"event\": \"PRETTY\",\n \"data\": {}}\r\n",
        );
        let Some(Decoded::Event(e)) = d.decode_message(false).unwrap() else {
            panic!("not an event")
        };
        assert_eq!(e.name(), "STOP");
        assert_eq!(e.timestamp().map(|t| t.seconds), Some(5));
        // Parsed when asked, and kept in the order it came in.
        assert_eq!(e.data()["a"], 2);
        let ordered = serde_json::to_string(&e.ordered()).unwrap();
        assert!(ordered.find("\"b\"") < ordered.find("\"a\""), "{ordered}");
        assert!(
            matches!(d.decode_message(false).unwrap(), Some(Decoded::Object(o)) if o.contains_key("return"))
        );
        // QEMU's single quotes take the full path.
        assert!(
            matches!(d.decode_message(false).unwrap(), Some(Decoded::Object(o)) if o["event"] == "QUOTED")
        );
        // A multi-line event found by the scanner is probed too.
        let Some(Decoded::Event(e)) = d.decode_message(true).unwrap() else {
            panic!("not an event")
        };
        assert_eq!((e.name(), e.data()), ("PRETTY", &serde_json::json!({})));
        assert!(d.decode_message(true).unwrap().is_none());
    }

    #[test]
    fn anything_else_is_left_to_the_full_parse() {
        for text in [
            &br#"{"return": {}, "event": "X"}"#[..],
            br#"{"event": "X", "error": {}}"#,
            br#"{"QMP": {}}"#,
            br#"{"execute": "stop"}"#,
            br#"{"event": 5}"#,
            br#"{"event": "X", "timestamp": "now"}"#,
            br#"{"data": {}}"#,
            br#"{'event': 'X'}"#,
            b"{\"event\": \"X\", \"data\": \"\xff\"}",
            br#"["event", "X"]"#,
            br#"{"event": "X", "data": {"#,
            b"",
        ] {
            assert!(
                probe_event(text).is_none(),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }
}
