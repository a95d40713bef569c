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
//!
//! Before the visitor, the probe tries the bytes of QEMU's own event layout
//! (`{"timestamp": {"seconds": S, "microseconds": U}, "event": "NAME"` and an optional
//! `, "data": ...}`), which is how every event QEMU sends starts: a twentieth of the
//! visitor's cost. The property test at the end of this file holds both stages to the
//! full parse's outcome.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::message::Timestamp;

/// What the probe found in an event.
pub(super) struct ProbedEvent {
    /// Where the `event` member's string (without its quotes) lies in the input: the
    /// name is always written there without escapes, so the event needs no copy.
    pub(super) name: std::ops::Range<usize>,
    pub(super) timestamp: Option<Timestamp>,
    /// Bytes the event spans from the start of the input.
    pub(super) len: usize,
}

/// Probe the first JSON value of `bytes`; `None` unless it is an object with a string
/// `event` member (written without escapes), none of `return`, `error`, `QMP`,
/// `execute` or `exec-oob`, a well-formed `timestamp` if any, and valid UTF-8 text.
pub(super) fn probe_event(bytes: &[u8]) -> Option<ProbedEvent> {
    if let Some(found) = qemu_layout(bytes) {
        return Some(found);
    }
    // Most messages that are not events do not even have the member: one vectorised
    // search spares them the probe. (An `event` spelt with escapes is found by the
    // full parse.) The searcher is built once: building it for each message cost
    // about as much as the search.
    static EVENT_KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"event\""));
    EVENT_KEY.find(bytes)?;
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<Probed>();
    let Probed(found) = stream.next()?.ok()?;
    let len = stream.byte_offset();
    let (name, timestamp) = found?;
    std::str::from_utf8(bytes.get(..len)?).ok()?;
    // The name was borrowed from `bytes`, so it lies within them.
    let start = (name.as_ptr() as usize).checked_sub(bytes.as_ptr() as usize)?;
    Some(ProbedEvent {
        name: start..start + name.len(),
        timestamp,
        len,
    })
}

/// The probe for an event exactly as QEMU writes one (and the test server after it):
/// `{"timestamp": {"seconds": S, "microseconds": U}, "event": "NAME"}`, optionally
/// with `, "data": ...` before the closing brace. Matching those bytes directly costs
/// a twentieth of running the visitor (measured: 130 instructions an event against
/// 2,700 for the visitor, which was a third of the reader's work per event).
/// Anything that differs by a byte (other spacing, escapes in the name, numbers that
/// are not plain digits, more members) is left to the visitor, so this only ever
/// decides sooner.
fn qemu_layout(bytes: &[u8]) -> Option<ProbedEvent> {
    let mut at = Cursor { bytes, pos: 0 };
    at.literal(b"{\"timestamp\": {\"seconds\": ")?;
    let seconds = at.integer()?;
    at.literal(b", \"microseconds\": ")?;
    let microseconds = at.integer()?;
    at.literal(b"}, \"event\": \"")?;
    let start = at.pos;
    // Printable ASCII other than the quote and the backslash needs no escape.
    while at
        .peek()
        .is_some_and(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        at.pos += 1;
    }
    let name = start..at.pos;
    at.literal(b"\"")?;
    if at.literal(b"}").is_none() {
        at.literal(b", \"data\": ")?;
        let mut data =
            serde_json::Deserializer::from_slice(bytes.get(at.pos..)?).into_iter::<Checked>();
        data.next()?.ok()?;
        at.pos += data.byte_offset();
        at.literal(b"}")?;
        std::str::from_utf8(bytes.get(..at.pos)?).ok()?;
    }
    Some(ProbedEvent {
        name,
        timestamp: Some(Timestamp {
            seconds,
            microseconds,
        }),
        len: at.pos,
    })
}

/// A position in the probed bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Step over `lit` if the bytes continue with it.
    fn literal(&mut self, lit: &[u8]) -> Option<()> {
        let end = self.pos.checked_add(lit.len())?;
        (self.bytes.get(self.pos..end)? == lit).then(|| self.pos = end)
    }

    /// A non-negative JSON integer written as plain digits (no leading zero, no sign,
    /// fraction or exponent) that fits an `i64`.
    fn integer(&mut self) -> Option<i64> {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        let digits = self.bytes.get(start..self.pos)?;
        if digits.is_empty() || digits.len() > 18 || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        Some(
            digits
                .iter()
                .fold(0i64, |n, d| n * 10 + i64::from(d - b'0')),
        )
    }
}

struct Probe;

/// The probe's answer: the name (borrowed from the input) and timestamp of an event,
/// `None` for an object without `event`.
struct Probed<'de>(Option<(&'de str, Option<Timestamp>)>);

impl<'de> de::Deserialize<'de> for Probed<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Probed<'de>, D::Error> {
        d.deserialize_map(Probe).map(Probed)
    }
}

/// Why the probe gave up; never shown (the message is then parsed in full).
const NOT_AN_EVENT: &str = "not an event";

impl<'de> Visitor<'de> for Probe {
    type Value = Option<(&'de str, Option<Timestamp>)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a QMP event")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut name, mut timestamp) = (None, None);
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                // A name with escapes cannot be borrowed: the full parse takes it.
                Key::Event => name = Some(map.next_value::<&str>()?),
                Key::Timestamp => timestamp = Some(map.next_value::<Timestamp>()?),
                Key::Other => {
                    map.next_value::<Checked>()?;
                }
                Key::NotAnEvent => return Err(de::Error::custom(NOT_AN_EVENT)),
            }
        }
        Ok(name.map(|n| (n, timestamp)))
    }
}

/// A JSON value read for its validity only, allocating nothing: like serde's
/// `IgnoredAny`, but strings are decoded as the full parse decodes them. `IgnoredAny`
/// lets `serde_json` skip a string's escapes unchecked, so `"\ud800"` (a lone
/// surrogate, which the full parse refuses) would pass, and the probe would take for
/// an event what the full parse calls malformed (found by the equivalence property
/// test below).
struct Checked;

impl<'de> de::Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Checked, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_key::<Checked>()?.is_some() {
            map.next_value::<Checked>()?;
        }
        Ok(Checked)
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
        assert_eq!(&input[p.name.clone()], b"STOP");
        assert_eq!(
            p.timestamp,
            Some(Timestamp {
                seconds: 1,
                microseconds: 2
            })
        );
        assert_eq!(p.len, text.len());
        let text = br#"{"event": "X", "data": {"a": [1, {"b": null}]}}"#;
        let p = probe_event(text).unwrap();
        assert_eq!((&text[p.name], p.timestamp), (&b"X"[..], None));
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

    /// QEMU's own layout takes the fast path, and it finds what the visitor finds;
    /// a byte off that layout leaves the decision to the visitor or the full parse.
    #[test]
    fn the_qemu_layout_fast_path_agrees_with_the_visitor() {
        let qemu: [&[u8]; 4] = [
            br#"{"timestamp": {"seconds": 1732900000, "microseconds": 5}, "event": "STOP"}"#,
            r#"{"timestamp": {"seconds": 0, "microseconds": 999999}, "event": "X", "data": {"a": [1, {"b": "\u00e9"}], "c": "é"}}"#.as_bytes(),
            br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "", "data": null}"#,
            br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "A-B.c_1"}"#,
        ];
        for text in qemu {
            let mut input = text.to_vec();
            input.extend_from_slice(b"\r\n{\"return\": {}}");
            let fast = qemu_layout(&input).expect("the fast path");
            assert_eq!(fast.len, text.len());
            // The visitor alone, on the same bytes.
            let mut stream = serde_json::Deserializer::from_slice(&input).into_iter::<Probed>();
            let Probed(Some((name, timestamp))) = stream.next().unwrap().unwrap() else {
                panic!("the visitor disagrees")
            };
            assert_eq!(&input[fast.name.clone()], name.as_bytes());
            assert_eq!(fast.timestamp, timestamp);
            assert_eq!(stream.byte_offset(), fast.len);
        }
        for text in [
            // Other spacing, numbers, escapes or members: the visitor decides.
            &br#"{"timestamp":{"seconds":1,"microseconds":2},"event":"STOP"}"#[..],
            br#"{"timestamp": {"seconds": 01, "microseconds": 2}, "event": "STOP"}"#,
            br#"{"timestamp": {"seconds": -1, "microseconds": 2}, "event": "STOP"}"#,
            br#"{"timestamp": {"seconds": 1.5, "microseconds": 2}, "event": "STOP"}"#,
            br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "ST"OP"}"#,
            br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "x": 1}"#,
            br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "X", "data": {}, "return": {}}"#,
            br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "X", "data": {"#,
            b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"X\", \"data\": \"\xff\"}",
            br#"{"timestamp": {"seconds": 1234567890123456789, "microseconds": 2}, "event": "STOP"}"#,
        ] {
            assert!(
                qemu_layout(text).is_none(),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        // Those the visitor takes, it takes with the same answer as before.
        let off = br#"{"timestamp":{"seconds":1,"microseconds":2},"event":"STOP"}"#;
        let p = probe_event(off).unwrap();
        assert_eq!((&off[p.name], p.len), (&b"STOP"[..], off.len()));
        // An escaped name is left to the full parse, which keeps it decoded.
        use crate::framing::{Decoded, Decoder};
        let mut d = Decoder::default();
        d.extend(
            b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"ST\\\"OP\"}\r\n",
        );
        let Some(Decoded::Object(o)) = d.decode_message(false).unwrap() else {
            panic!("expected the full parse")
        };
        let e = crate::Event::from_object(o).unwrap();
        assert_eq!(e.name(), "ST\"OP");
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

    mod equivalence {
        use proptest::prelude::*;

        use crate::framing::{Decoded, Decoder};
        use crate::message::Timestamp;

        /// What the probing path and the full parse make of `input`: an event's name,
        /// timestamp and object, another object, or an error.
        #[derive(Debug, PartialEq)]
        enum Outcome {
            Event(
                String,
                Option<Timestamp>,
                serde_json::Map<String, serde_json::Value>,
            ),
            Object(serde_json::Map<String, serde_json::Value>),
            Error,
            Nothing,
        }

        fn probed(input: &[u8]) -> Outcome {
            let mut d = Decoder::default();
            d.extend(input);
            match d.decode_message(true) {
                Ok(Some(Decoded::Event(e))) => {
                    Outcome::Event(e.name().to_owned(), e.timestamp(), e.as_object().clone())
                }
                // What the session does with an object that has a string `event`.
                Ok(Some(Decoded::Object(o))) => classify(o),
                Ok(None) => Outcome::Nothing,
                Err(_) => Outcome::Error,
            }
        }

        fn classify(o: serde_json::Map<String, serde_json::Value>) -> Outcome {
            match crate::Event::from_object(o) {
                Ok(e) => Outcome::Event(e.name().to_owned(), e.timestamp(), e.as_object().clone()),
                Err(o) => Outcome::Object(o),
            }
        }

        fn parsed(input: &[u8]) -> Outcome {
            let mut d = Decoder::default();
            d.extend(input);
            match d.decode(true) {
                Ok(Some(o)) => classify(o),
                Ok(None) => Outcome::Nothing,
                Err(_) => Outcome::Error,
            }
        }

        fn number() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<u32>().prop_map(|n| n.to_string()),
                any::<u64>().prop_map(|n| n.to_string()),
                prop::sample::select(vec![
                    "0",
                    "00",
                    "01",
                    "-1",
                    "1.5",
                    "1e3",
                    "",
                    "9223372036854775807"
                ])
                .prop_map(str::to_owned),
            ]
        }

        fn name() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop::sample::select(vec![
                    "A", "_", "z", "0", "-", ".", " ", "\"", "\\", "\\\"", "é", "\u{1}", "\u{7f}",
                ]),
                0..6,
            )
            .prop_map(|parts| parts.concat())
        }

        fn data() -> impl Strategy<Value = Option<String>> {
            prop::option::of(
                prop::sample::select(vec![
                    "{}",
                    "null",
                    "{\"a\": [1, {\"b\": \"\\u00e9\"}], \"c\": \"é\"}",
                    "{\"device\": \"x\", \"path\": \"/machine/peripheral/x\"}",
                    "{",
                    "[1, 2",
                    "\"\\ud800\"",
                    "{\"a\": 1}}",
                    "{\"a\": \"\u{1}\"}",
                    "{'a': 1}",
                ])
                .prop_map(str::to_owned),
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            /// The probe (its byte-for-byte fast path included) only ever decides
            /// sooner: on events in QEMU's layout, and on those bytes with one byte
            /// changed, removed or added, it comes to what the full parse comes to.
            #[test]
            fn the_probe_agrees_with_the_full_parse(
                seconds in number(),
                micros in number(),
                name in name(),
                data in data(),
                edit in prop::option::of((any::<prop::sample::Index>(), 0u8..3, any::<u8>())),
            ) {
                let mut text = format!(
                    "{{\"timestamp\": {{\"seconds\": {seconds}, \"microseconds\": {micros}}}, \"event\": \"{name}\""
                );
                if let Some(d) = data {
                    text.push_str(&format!(", \"data\": {d}"));
                }
                text.push('}');
                let mut input = text.into_bytes();
                if let Some((at, op, byte)) = edit {
                    let i = at.index(input.len());
                    match op {
                        0 => input[i] = byte,
                        1 => { input.remove(i); }
                        _ => input.insert(i, byte),
                    }
                }
                input.extend_from_slice(b"\r\n");
                prop_assert_eq!(probed(&input), parsed(&input), "{}", String::from_utf8_lossy(&input));
            }
        }
    }
}
