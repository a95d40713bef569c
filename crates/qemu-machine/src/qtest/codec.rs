//! Encoding and decoding of qtest protocol lines: replies, numbers, hex and
//! base64 blobs, IRQ notifications, and validation of outgoing words.
//!
//! Nothing here panics on input from QEMU: every malformed reply becomes a
//! [`QtestError::Protocol`].

use std::fmt::Write as _;

use super::{IrqEvent, QtestError};

/// Longest command text kept in an error (a `write` line can be megabytes).
const MAX_COMMAND_IN_ERROR: usize = 120;

/// The command line as shown in errors: truncated to a readable length.
pub(crate) fn command_for_error(line: &str) -> String {
    if line.len() <= MAX_COMMAND_IN_ERROR {
        return line.to_owned();
    }
    let mut end = MAX_COMMAND_IN_ERROR;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &line[..end], line.len())
}

/// Checks a complete command line before it is sent.
///
/// QEMU splits the line at single spaces and asserts (aborting the whole
/// process) on an empty line; a NUL byte would hide the terminating newline
/// from it forever; a newline would make two commands of one.
pub(crate) fn check_line(line: &str) -> Result<(), QtestError> {
    if line.is_empty() {
        return Err(QtestError::InvalidArgument(
            "empty qtest command line".to_owned(),
        ));
    }
    if let Some(c) = line.chars().find(|c| matches!(c, '\n' | '\r' | '\0')) {
        return Err(QtestError::InvalidArgument(format!(
            "qtest command line contains {c:?}: {:?}",
            command_for_error(line)
        )));
    }
    Ok(())
}

/// Checks one word (a QOM path or a GPIO list name) of a typed command: it
/// must be non-empty and free of whitespace and control characters, or QEMU
/// would see a different number of words (and assert on the missing ones).
pub(crate) fn check_word(what: &str, word: &str) -> Result<(), QtestError> {
    if word.is_empty() {
        return Err(QtestError::InvalidArgument(format!("empty {what}")));
    }
    if word.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(QtestError::InvalidArgument(format!(
            "{what} {word:?} contains whitespace or control characters"
        )));
    }
    Ok(())
}

/// The kind of a line received from QEMU.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// An asynchronous `IRQ raise N` / `IRQ lower N` notification.
    Irq(IrqEvent),
    /// A line starting with `IRQ` that is not a well-formed notification.
    /// Never a reply (replies start with `OK`, `FAIL` or `ERR`), so it is
    /// logged and dropped.
    BadIrq,
    /// Anything else: the reply to the oldest command in flight.
    Reply,
}

/// Classifies one line received from QEMU (without its newline).
pub(crate) fn classify(line: &str) -> Incoming {
    let Some(rest) = line.strip_prefix("IRQ") else {
        return Incoming::Reply;
    };
    let mut words = rest.split_ascii_whitespace();
    let raised = match words.next() {
        Some("raise") => true,
        Some("lower") => false,
        _ => return Incoming::BadIrq,
    };
    let line = match words.next().map(str::parse::<u32>) {
        Some(Ok(n)) => n,
        _ => return Incoming::BadIrq,
    };
    if words.next().is_some() {
        return Incoming::BadIrq;
    }
    Incoming::Irq(IrqEvent { line, raised })
}

/// Splits a reply into its `OK` payload (empty for a bare `OK`), or turns a
/// `FAIL`/`ERR` reply into [`QtestError::Failed`] and anything else into
/// [`QtestError::Protocol`].
pub(crate) fn ok_payload(command: &str, reply: &str) -> Result<String, QtestError> {
    if let Some(payload) = word_payload(reply, "OK") {
        return Ok(payload.to_owned());
    }
    for prefix in ["FAIL", "ERR"] {
        if let Some(reason) = word_payload(reply, prefix) {
            return Err(QtestError::Failed {
                command: command_for_error(command),
                reason: reason.to_owned(),
            });
        }
    }
    Err(protocol(command, reply))
}

/// `Some(rest)` when `line` is `word` alone (`rest` empty) or `word`, a space
/// and `rest`.
fn word_payload<'a>(line: &'a str, word: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(word)?;
    if rest.is_empty() {
        Some(rest)
    } else {
        rest.strip_prefix(' ')
    }
}

/// A [`QtestError::Protocol`] for `command` and the offending reply.
pub(crate) fn protocol(command: &str, reply: &str) -> QtestError {
    QtestError::Protocol {
        command: command_for_error(command),
        line: reply.to_owned(),
    }
}

/// Parses a `0x`-prefixed hexadecimal reply value.
pub(crate) fn parse_hex_u64(payload: &str) -> Option<u64> {
    let digits = payload
        .strip_prefix("0x")
        .or_else(|| payload.strip_prefix("0X"))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// Parses a signed decimal reply value (the clock commands).
pub(crate) fn parse_i64(payload: &str) -> Option<i64> {
    if payload.is_empty() {
        return None;
    }
    payload.parse().ok()
}

/// `0x` followed by two lowercase hex digits per byte (the `write` command's
/// DATA argument).
pub(crate) fn encode_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 + 2 * bytes.len());
    out.push_str("0x");
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Decodes the `read` reply: `0x` followed by exactly `len` bytes in hex.
pub(crate) fn decode_hex(payload: &str, len: usize) -> Option<Vec<u8>> {
    let digits = payload.strip_prefix("0x")?.as_bytes();
    if digits.len() != len.checked_mul(2)? {
        return None;
    }
    digits
        .chunks_exact(2)
        .map(|pair| Some((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect()
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

const B64_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with `=` padding (what GLib's `g_base64_encode` produces
/// and `g_base64_decode` accepts).
pub(crate) fn encode_base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b0 = chunk[0];
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let sextets = [
            b0 >> 2,
            ((b0 & 0x03) << 4) | (b1 >> 4),
            ((b1 & 0x0f) << 2) | (b2 >> 6),
            b2 & 0x3f,
        ];
        for (i, s) in sextets.iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(B64_ALPHABET[usize::from(*s)]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard padded base64; `None` when it is malformed.
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let quads = bytes.len() / 4;
    for (q, quad) in bytes.chunks_exact(4).enumerate() {
        let last = q + 1 == quads;
        let padding = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && !last) {
            return None;
        }
        let mut acc: u32 = 0;
        for &c in &quad[..4 - padding] {
            acc = (acc << 6) | u32::from(sextet(c)?);
        }
        acc <<= 6 * padding;
        let [_, b0, b1, b2] = acc.to_be_bytes();
        out.push(b0);
        if padding < 2 {
            out.push(b1);
        }
        if padding < 1 {
            out.push(b2);
        }
    }
    Some(out)
}

fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_irq_lines() {
        assert_eq!(
            classify("IRQ raise 8"),
            Incoming::Irq(IrqEvent {
                line: 8,
                raised: true
            })
        );
        assert_eq!(
            classify("IRQ lower 0"),
            Incoming::Irq(IrqEvent {
                line: 0,
                raised: false
            })
        );
        for bad in [
            "IRQ",
            "IRQ raise",
            "IRQ up 3",
            "IRQ raise -1",
            "IRQ raise 3 4",
        ] {
            assert_eq!(classify(bad), Incoming::BadIrq, "{bad:?}");
        }
        for reply in [
            "OK",
            "OK 0x00",
            "FAIL Unknown device",
            "ERR x",
            "",
            "garbage",
        ] {
            assert_eq!(classify(reply), Incoming::Reply, "{reply:?}");
        }
    }

    #[test]
    fn splits_replies() {
        assert_eq!(ok_payload("c", "OK").unwrap(), "");
        assert_eq!(ok_payload("c", "OK 0x10").unwrap(), "0x10");
        assert_eq!(ok_payload("c", "OK little").unwrap(), "little");
        match ok_payload("foo 1", "FAIL Unknown command 'foo'") {
            Err(QtestError::Failed { command, reason }) => {
                assert_eq!(command, "foo 1");
                assert_eq!(reason, "Unknown command 'foo'");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ok_payload("c", "FAIL"),
            Err(QtestError::Failed { reason, .. }) if reason.is_empty()
        ));
        assert!(matches!(
            ok_payload("c", "ERR invalid argument size"),
            Err(QtestError::Failed { reason, .. }) if reason == "invalid argument size"
        ));
        for bad in ["OKAY", "", "ok", "FAILED x", "IRQ raise 1"] {
            assert!(
                matches!(ok_payload("c", bad), Err(QtestError::Protocol { line, .. }) if line == bad),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parses_numbers() {
        assert_eq!(parse_hex_u64("0x00ff"), Some(0xff));
        assert_eq!(parse_hex_u64("0xffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_hex_u64("0x1ffffffffffffffff"), None);
        assert_eq!(parse_hex_u64("0x"), None);
        assert_eq!(parse_hex_u64("ff"), None);
        assert_eq!(parse_hex_u64("0x+1"), None);
        assert_eq!(parse_i64("1000"), Some(1000));
        assert_eq!(parse_i64("-5"), Some(-5));
        assert_eq!(parse_i64(""), None);
        assert_eq!(parse_i64("0x10"), None);
    }

    #[test]
    fn hex_round_trip() {
        let data: Vec<u8> = (0..=255).collect();
        let hex = encode_hex(&data);
        assert!(hex.starts_with("0x0001020304"));
        assert_eq!(decode_hex(&hex, data.len()).unwrap(), data);
        assert_eq!(decode_hex("0xEFbe", 2).unwrap(), vec![0xef, 0xbe]);
        assert_eq!(decode_hex("0xefbe", 3), None);
        assert_eq!(decode_hex("0xefb", 2), None);
        assert_eq!(decode_hex("0xzz", 1), None);
        assert_eq!(decode_hex("efbe", 2), None);
        assert_eq!(decode_hex("0x", usize::MAX), None);
    }

    #[test]
    fn base64_matches_known_vectors() {
        let vectors: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (&[0xef, 0xbe, 0xad, 0xde], "776t3g=="),
        ];
        for (raw, text) in vectors {
            assert_eq!(encode_base64(raw), text);
            assert_eq!(decode_base64(text).unwrap(), raw);
        }
        let data: Vec<u8> = (0..=255).rev().collect();
        assert_eq!(decode_base64(&encode_base64(&data)).unwrap(), data);
        for bad in ["Zg=", "Z===", "Zg==Zm9v", "Zm9*", "Zm 9"] {
            assert_eq!(decode_base64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn validates_lines_and_words() {
        assert!(check_line("readb 0x0").is_ok());
        for bad in ["", "a\nb", "a\rb", "a\0b"] {
            assert!(matches!(
                check_line(bad),
                Err(QtestError::InvalidArgument(_))
            ));
        }
        assert!(check_word("path", "/machine/ioapic").is_ok());
        for bad in ["", "a b", "a\tb", "a\u{7f}"] {
            assert!(matches!(
                check_word("path", bad),
                Err(QtestError::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn truncates_long_commands_in_errors() {
        let long = format!("write 0x0 4096 {}", "é".repeat(5000));
        let shown = command_for_error(&long);
        assert!(shown.len() < 200, "{shown}");
        assert!(shown.ends_with(&format!("({} bytes)", long.len())));
        assert_eq!(command_for_error("readb 0x0"), "readb 0x0");
    }
}
