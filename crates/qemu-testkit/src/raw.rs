//! [`RawQmp`]: a QMP connection of the test's own, byte for byte.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long a read may wait for QEMU.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to a QMP monitor (or a guest agent) of the test's own, on which
/// messages are read as the bytes the peer wrote them, one a line (QEMU ends each with
/// CRLF): what a client or tool under test must show, to compare with. Blocking, with
/// a read timeout; the connection closes when this is dropped (a QEMU socket takes
/// one client at a time).
pub struct RawQmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl RawQmp {
    /// Connect to a QMP monitor and negotiate (`qmp_capabilities`, no OOB).
    pub fn connect(path: &Path) -> RawQmp {
        let mut raw = RawQmp::open(path);
        let greeting = raw.message();
        assert!(greeting.starts_with(r#"{"QMP": "#), "{greeting}");
        assert_eq!(
            raw.command(r#"{"execute": "qmp_capabilities"}"#),
            r#"{"return": {}}"#
        );
        raw
    }

    /// Connect to a guest agent (no greeting, no negotiation).
    pub fn agent(path: &Path) -> RawQmp {
        RawQmp::open(path)
    }

    fn open(path: &Path) -> RawQmp {
        let stream = UnixStream::connect(path)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", path.display()));
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("read timeout");
        RawQmp {
            reader: BufReader::new(stream.try_clone().expect("clone the socket")),
            writer: stream,
        }
    }

    /// The next message, without its line end.
    pub fn message(&mut self) -> String {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .expect("a message from the peer in time");
        assert!(line.ends_with('\n'), "not a whole line: {line:?}");
        line.trim_end_matches(['\r', '\n']).to_owned()
    }

    /// Send `text` as it is; the reply as the peer wrote it (events before it are
    /// passed over).
    pub fn command(&mut self, text: &str) -> String {
        self.writer.write_all(text.as_bytes()).expect("send");
        loop {
            let m = self.message();
            if !is_event(&m) {
                return m;
            }
        }
    }

    /// The next event `name`, as the peer wrote it (other messages are passed over).
    pub fn event(&mut self, name: &str) -> String {
        loop {
            let m = self.message();
            let parsed: serde_json::Value = serde_json::from_str(&m).expect("JSON");
            if parsed.get("event").and_then(|e| e.as_str()) == Some(name) {
                return m;
            }
        }
    }
}

/// Whether a message is an event (has a top-level `event` member).
pub fn is_event(message: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(message).is_ok_and(|m| m.get("event").is_some())
}
