//! The one JSON encoder of the crate, in the two styles QMP needs.
//!
//! - [`Style::Compact`]: what the client sends. No spaces, because QEMU reads a
//!   monitor's input one byte per `read()` and every byte costs a few
//!   microseconds of round trip; ASCII only (`\u00e9`), like Python's `qemu.qmp`.
//! - [`Style::Qemu`]: what QEMU itself writes, byte for byte (its
//!   `json-writer.c`): `", "` between members and elements, `": "` after a
//!   key, every character outside printable ASCII (controls, DEL, non-ASCII)
//!   as an upper-case `\uXXXX` (surrogate pairs beyond the BMP), and numbers
//!   with a fraction or exponent as C's `%.17g`. The test server writes this,
//!   so a client tested against it sees what QEMU would send.
//!
//! # Member order
//!
//! QEMU keeps a JSON object in a hash table (`QDict`: 512 buckets, Samba's
//! `tdb_hash` of the key) and writes it bucket by bucket, the newest member
//! first within a bucket. Its member order is therefore a function of the keys:
//! `{"return": ..., "id": 1}` but `{"id": 1, "error": ...}`, `"micro"` before
//! `"minor"` before `"major"`. [`qemu_order`] reproduces it, and the QEMU
//! style writes every object in it, which is what the test server sends and
//! what the tools show. Checked against every object in 22 replies of QEMU 10.0
//! and 7.2 (`query-qmp-schema`, `query-named-block-nodes`, ... 5,871 objects):
//! all were in bucket order. Members that share a bucket (9 pairs in those
//! replies, e.g. `micro`/`minor`, and 7.2's `status`/`singlestep`) come out by
//! name here, which is QEMU's order for some and not for others: QEMU's depends
//! on the order in which its code added them, which the wire does not tell.
//!
//! ```
//! use qemu_qmp::json::{to_vec, Style};
//! use qemu_qmp::json as j;
//!
//! let v = serde_json::json!({"desc": "café", "n": [1, 0.1]});
//! assert_eq!(to_vec(&v, Style::Compact), br#"{"desc":"caf\u00e9","n":[1,0.1]}"#);
//! let mut qemu = Vec::new();
//! j::write_value(&mut qemu, &v, Style::Qemu);
//! assert_eq!(qemu, br#"{"n": [1, 0.10000000000000001], "desc": "caf\u00E9"}"#);
//!
//! // QEMU's member order, not the map's.
//! let reply = serde_json::json!({"id": 7, "return": {}});
//! j::write_value(&mut qemu, &reply, Style::Qemu);
//! assert!(qemu.ends_with(br#"{"return": {}, "id": 7}"#));
//! ```

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter, Serializer};
use serde_json::Value;

use crate::message::JsonObject;

mod ordered;
pub use ordered::Ordered;

/// How to write JSON; see the [module documentation](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Compact, ASCII only, lower-case escapes: what the client sends.
    Compact,
    /// QEMU's own output: spaced, upper-case escapes, `%.17g` numbers.
    Qemu,
}

/// Serialises `value` in `style`, appending to `out`, with maps in their own
/// iteration order (use [`write_value`] for QEMU's member order).
///
/// Writing into a `Vec` cannot fail and a `serde_json::Value` always
/// serialises; a type whose `Serialize` fails leaves `null` in its place.
pub fn write<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T, style: Style) {
    let start = out.len();
    let result = match style {
        Style::Compact => value.serialize(&mut Serializer::with_formatter(
            &mut *out,
            Escaping { qemu: false },
        )),
        Style::Qemu => value.serialize(&mut Serializer::with_formatter(
            &mut *out,
            Escaping { qemu: true },
        )),
    };
    if result.is_err() {
        out.truncate(start);
        out.extend_from_slice(b"null");
    }
}

/// A JSON value in `style`; in the QEMU style its objects come out in
/// [`qemu_order`].
pub fn write_value(out: &mut Vec<u8>, value: &Value, style: Style) {
    match style {
        Style::Compact => write(out, value, style),
        Style::Qemu => write(out, &QemuOrdered(value), style),
    }
}

/// A JSON object in `style`, like [`write_value`].
pub fn write_object(out: &mut Vec<u8>, obj: &JsonObject, style: Style) {
    match style {
        Style::Compact => write(out, obj, style),
        Style::Qemu => {
            out.push(b'{');
            for (i, (k, v)) in qemu_order(obj).into_iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(separator(style));
                }
                write_key(out, k, style);
                write_value(out, v, style);
            }
            out.push(b'}');
        }
    }
}

/// `value` serialised in `style`.
pub fn to_vec<T: Serialize + ?Sized>(value: &T, style: Style) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write(&mut out, value, style);
    out
}

/// Appends `"key": ` (or `"key":` in the compact style), for writing an object
/// member by member in an order of one's choosing.
pub fn write_key(out: &mut Vec<u8>, key: &str, style: Style) {
    write(out, key, style);
    out.extend_from_slice(match style {
        Style::Compact => b":",
        Style::Qemu => b": ",
    });
}

/// The separator between members or elements in `style`.
pub fn separator(style: Style) -> &'static [u8] {
    match style {
        Style::Compact => b",",
        Style::Qemu => b", ",
    }
}

/// The keys of `obj` in the order QEMU writes them; see the [module
/// documentation](self#member-order).
pub fn qemu_order(obj: &JsonObject) -> Vec<(&String, &Value)> {
    let mut members: Vec<_> = obj.iter().collect();
    // The map iterates by name, so a stable sort by bucket keeps names in order
    // within a bucket.
    members.sort_by_key(|(k, _)| qdict_bucket(k));
    members
}

/// The bucket of `key` in QEMU's `QDict` (`tdb_hash(key) % 512`).
fn qdict_bucket(key: &str) -> u32 {
    let bytes = key.as_bytes();
    // tdb_hash works in unsigned int: wrapping 32-bit arithmetic; a key longer
    // than 4 GiB cannot occur in a message.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    let mut value = 0x238F_13AFu32.wrapping_mul(len);
    for (i, &b) in bytes.iter().enumerate() {
        value = value.wrapping_add(u32::from(b) << ((i * 5) % 24));
    }
    1_103_515_243u32.wrapping_mul(value).wrapping_add(12345) % 512
}

/// A value whose objects serialise in [`qemu_order`].
struct QemuOrdered<'a>(&'a Value);

impl Serialize for QemuOrdered<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Object(obj) => {
                let mut map = serializer.serialize_map(Some(obj.len()))?;
                for (k, v) in qemu_order(obj) {
                    map.serialize_entry(k, &QemuOrdered(v))?;
                }
                map.end()
            }
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(&QemuOrdered(v))?;
                }
                seq.end()
            }
            other => other.serialize(serializer),
        }
    }
}

/// serde_json's formatter with our escaping, spacing and number formats.
struct Escaping {
    qemu: bool,
}

impl Escaping {
    fn escape_unit<W: ?Sized + Write>(&self, out: &mut W, unit: u32) -> io::Result<()> {
        if self.qemu {
            write!(out, "\\u{unit:04X}")
        } else {
            write!(out, "\\u{unit:04x}")
        }
    }
}

impl Formatter for Escaping {
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        match (first, self.qemu) {
            (true, _) => Ok(()),
            (false, false) => w.write_all(b","),
            (false, true) => w.write_all(b", "),
        }
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.begin_array_value(w, first)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(if self.qemu { b": " } else { b":" })
    }

    fn write_f64<W: ?Sized + Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        if self.qemu {
            w.write_all(format_g17(value).as_bytes())
        } else {
            serde_json::ser::CompactFormatter.write_f64(w, value)
        }
    }

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // Nearly every string QMP carries is plain ASCII: one vectorised check spares
        // it the walk below.
        if fragment.is_ascii() && !(self.qemu && fragment.as_bytes().contains(&0x7f)) {
            return w.write_all(fragment.as_bytes());
        }
        let mut plain = 0;
        for (i, ch) in fragment.char_indices() {
            // serde_json hands control characters to write_char_escape; DEL and
            // non-ASCII reach us here.
            let escape = !ch.is_ascii() || (self.qemu && ch == '\x7f');
            if escape {
                w.write_all(&fragment.as_bytes()[plain..i])?;
                let mut units = [0u16; 2];
                for unit in ch.encode_utf16(&mut units) {
                    self.escape_unit(w, u32::from(*unit))?;
                }
                plain = i + ch.len_utf8();
            }
        }
        w.write_all(&fragment.as_bytes()[plain..])
    }

    fn write_char_escape<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        let s: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(byte) => return self.escape_unit(w, u32::from(byte)),
        };
        w.write_all(s)
    }
}

/// C's `printf("%.17g", value)`, as QEMU formats a JSON number that is not an
/// integer. Non-finite values cannot occur in JSON; they print as `null`.
fn format_g17(value: f64) -> String {
    if !value.is_finite() {
        return "null".to_owned();
    }
    if value == 0.0 {
        return if value.is_sign_negative() { "-0" } else { "0" }.to_owned();
    }
    // 17 significant digits: d.dddddddddddddddde±x.
    let sci = format!("{value:.16e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..17).contains(&exp) {
        let mantissa = trim_fraction(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.unsigned_abs());
    }
    let decimals = usize::try_from(16 - exp).unwrap_or(0);
    trim_fraction(&format!("{value:.decimals$}")).to_owned()
}

/// `%g` drops trailing zeros of the fraction, and the point with them.
fn trim_fraction(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn qemu_style_matches_what_qemu_writes() {
        // Recorded from QEMU 10.0 and 7.2: an id echoed in a CommandNotFound error.
        let id = json!([
            "\u{e9}\u{7f}",
            1.5,
            1e300,
            12345678901234567890u64,
            true,
            null,
            {},
            []
        ]);
        assert_eq!(
            String::from_utf8(to_vec(&id, Style::Qemu)).unwrap(),
            r#"["\u00E9\u007F", 1.5, 1.0000000000000001e+300, 12345678901234567890, true, null, {}, []]"#
        );
        let desc = "x\u{e9}\u{7f}\u{1}\u{1f}\u{1f600}/<>\u{8}\u{c}\t";
        assert_eq!(
            String::from_utf8(to_vec(desc, Style::Qemu)).unwrap(),
            r#""x\u00E9\u007F\u0001\u001F\uD83D\uDE00/<>\b\f\t""#
        );
        assert_eq!(
            to_vec(&json!({"a": {"b": [1, 2]}, "c": "\"\\\n\r"}), Style::Qemu),
            br#"{"a": {"b": [1, 2]}, "c": "\"\\\n\r"}"#
        );
    }

    #[test]
    fn compact_style_is_short_and_ascii() {
        // DEL is ASCII: it stays a raw byte, as in Python's json.dumps.
        assert_eq!(
            to_vec(
                &json!({"a": [1, "\u{e9}\u{1}\u{7f}"], "b": 0.1}),
                Style::Compact
            ),
            b"{\"a\":[1,\"\\u00e9\\u0001\x7f\"],\"b\":0.1}"
        );
    }

    #[test]
    fn percent_g17() {
        for (v, s) in [
            (1.5, "1.5"),
            (0.1, "0.10000000000000001"),
            (1e300, "1.0000000000000001e+300"),
            (-2.5e-7, "-2.4999999999999999e-07"),
            (1e16, "10000000000000000"),
            (1e17, "1e+17"),
            (0.0001, "0.0001"),
            (123456.789, "123456.789"),
            (-0.0, "-0"),
        ] {
            assert_eq!(format_g17(v), s, "{v:e}");
        }
    }

    #[test]
    fn members_in_qemu_order() {
        // Recorded from QEMU 10.0 and 7.2.
        for wire in [
            r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, "capabilities": ["oob"]}}"#,
            r#"{"id": "x", "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}"#,
            r#"{"return": {"status": "running", "running": true}, "id": [1, {"a": 2}]}"#,
            r#"{"timestamp": {"seconds": 1795938346, "microseconds": 706882}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}"#,
            r#"{"return": [{"auto-finalize": true, "io-status": "ok", "device": "j0", "auto-dismiss": true, "busy": false, "len": 1048576, "offset": 1048576, "status": "ready", "paused": false, "speed": 0, "ready": true, "type": "mirror", "actively-synced": false}]}"#,
        ] {
            let parsed: Value = serde_json::from_str(wire).unwrap();
            let mut out = Vec::new();
            write_value(&mut out, &parsed, Style::Qemu);
            assert_eq!(String::from_utf8(out).unwrap(), wire);
            let mut out = Vec::new();
            write_object(&mut out, parsed.as_object().unwrap(), Style::Qemu);
            assert_eq!(String::from_utf8(out).unwrap(), wire);
        }
    }

    #[test]
    fn members_sharing_a_bucket_are_ordered_by_name() {
        assert_eq!(qdict_bucket("micro"), qdict_bucket("minor"));
        assert_eq!(qdict_bucket("status"), qdict_bucket("singlestep"));
        let v = serde_json::json!({"minor": 2, "micro": 22, "major": 7});
        assert_eq!(
            to_vec_value(&v),
            r#"{"micro": 22, "minor": 2, "major": 7}"#,
            "QEMU's order too"
        );
        // QEMU 7.2 writes {"status": ..., "singlestep": ...}: the newest member of a
        // bucket first, which only the order of QEMU's code tells.
        let v = serde_json::json!({"status": "running", "singlestep": false});
        assert_eq!(
            to_vec_value(&v),
            r#"{"singlestep": false, "status": "running"}"#
        );
    }

    fn to_vec_value(v: &Value) -> String {
        let mut out = Vec::new();
        write_value(&mut out, v, Style::Qemu);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn keys_written_one_by_one() {
        let mut out = b"{".to_vec();
        write_key(&mut out, "return", Style::Qemu);
        write(&mut out, &json!({}), Style::Qemu);
        out.extend_from_slice(separator(Style::Qemu));
        write_key(&mut out, "id", Style::Qemu);
        write(&mut out, &json!(7), Style::Qemu);
        out.push(b'}');
        assert_eq!(out, br#"{"return": {}, "id": 7}"#);
    }
}
