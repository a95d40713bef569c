//! The test server against the real thing: the same exchange, byte for byte,
//! with a real `qemu-system-x86_64` and with `TestServer` configured as that
//! QEMU's version. Greeting, negotiation, QEMU's single-quoted strings, errors
//! for each kind of bad input (bad keywords, stray bytes, bad escapes, bad
//! UTF-8, nesting too deep, ...), escaping, member order, and `quit`; only
//! event timestamps are masked.
//!
//! Runs against whichever QEMU the suite runs against (10.0 and 7.2 in CI);
//! skips loudly without one, and fails under `CI=true`.

use std::path::Path;
use std::time::Duration;

use qemu_qmp::message::{VersionInfo, VersionTriple};
use qemu_qmp::server::TestServer;
use qemu_qmp::Value;
use qemu_testkit::QemuProcess;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const T: Duration = Duration::from_secs(10);

/// What a client sends, in order. Each is answered by exactly one reply (plus
/// events, for `quit`).
fn exchange() -> Vec<Vec<u8>> {
    let fixed: &[&[u8]] = &[
        br#"{"execute":"query-status"}"#,
        // QEMU's single-quoted strings, before negotiation too.
        br#"{'execute': 'query-status'}"#,
        br#"{"execute":"qmp_capabilities","arguments":{"enable":["bogus"]}}"#,
        br#"{"execute":"qmp_capabilities"}"#,
        br#"{"execute":"qmp_capabilities"}"#,
        br#"{"execute":"nope","id":"x"}"#,
        // Single quotes: `"` needs no escape in them, `\'` is an apostrophe
        // (in double quotes too), keys and nested values, mixed with double
        // quotes, over two lines.
        br#"{'execute': 'query-status', 'id': 'it\'s "q" \"r\"'}"#,
        b"{'execute': \"query-status\", 'arguments': {},\n 'id': ['\\u00e9\\/\\\\', {'k': \"it\\'s\", \"'\": '}'}]}\n",
        br#"{'execute': 'nope', 'id': 'x'}"#,
        b"{this is bad}\n",
        b"this\n",
        b"{\"execute\": x}\n",
        b"{\"execute\": tru}\n",
        b"{\"execute\":\"query-status\",}\n",
        b"}\n",
        b"]\n",
        b"{\"a\" \"b\"}\n",
        b"{1: 2}\n",
        b"{\"a\": 1 \"b\": 2}\n",
        b"[1 2]\n",
        // Strings: a bad escape, a bad \u escape, bad UTF-8.
        b"{\"a\": \"\\x\"}\n",
        b"{'a': '\\q'}\n",
        b"{\"a\": \"\\ud800\"}\n",
        b"{\"a\": \"\xc0\"}\n",
        // What the lexer rejects: a stray byte, an invalid UTF-8 byte outside
        // a string, a number cut short.
        b"@\n",
        b"\xc0\n",
        b"{\"a\": -}\n",
        br#"[1,2]"#,
        b"\"str\"\n",
        b"'str'\n",
        br#"{"id":1}"#,
        br#"{"execute":1}"#,
        br#"{"execute":"query-status","extra":1}"#,
        br#"{"execute":"query-status","arguments":[]}"#,
        br#"{"execute":"query-status","arguments":{"x":1}}"#,
        br#"{"execute":"query-status","id":[1,{"a":2}]}"#,
        br#"{"execute":"query-version","id":2}"#,
        br#"{"execute":"stop"}"#,
        br#"{"execute":"query-status"}"#,
        br#"{"execute":"x\u00e9\u007f\u0001\u001f\ud83d\ude00/<>\b\f\t","id":["\u00e9\u007f",1.5,1e300,12345678901234567890,true,null,{},[]]}"#,
    ];
    let mut all: Vec<Vec<u8>> = fixed.iter().map(|m| m.to_vec()).collect();
    // Nesting beyond QEMU's limit of 1024.
    let mut deep = b"[".repeat(1025);
    deep.push(b'\n');
    all.push(deep);
    all.push(br#"{"execute":"quit","id":7}"#.to_vec());
    all
}

/// Sends the exchange and returns every byte received, with the numbers of
/// event timestamps masked.
async fn transcript(socket: &Path) -> String {
    let stream = tokio::time::timeout(T, UnixStream::connect(socket))
        .await
        .expect("connect in time")
        .expect("connect");
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut out = String::new();
    let mut line = String::new();
    let read_line = async |r: &mut BufReader<_>, line: &mut String| {
        line.clear();
        tokio::time::timeout(T, r.read_line(line))
            .await
            .expect("a line in time")
            .expect("read")
    };
    read_line(&mut r, &mut line).await;
    out.push_str(&line);
    for input in exchange() {
        w.write_all(&input).await.expect("write");
        let shown = String::from_utf8_lossy(&input);
        let shown = shown.trim_end();
        if shown.len() > 80 {
            let start: String = shown.chars().take(40).collect();
            out.push_str(&format!(">> {start}... ({} bytes)\n", input.len()));
        } else {
            out.push_str(&format!(">> {shown}\n"));
        }
        loop {
            if read_line(&mut r, &mut line).await == 0 {
                out.push_str("<EOF>\n");
                break;
            }
            out.push_str(&mask_timestamp(&line));
            if !line.contains("\"event\": ") {
                break;
            }
        }
    }
    // After `quit`, the end of the stream.
    if read_line(&mut r, &mut line).await == 0 {
        out.push_str("<EOF>\n");
    } else {
        out.push_str(&line);
    }
    out
}

fn mask_timestamp(line: &str) -> String {
    let Some(start) = line.find("{\"timestamp\": {") else {
        return line.to_owned();
    };
    let end = line[start..].find('}').map_or(line.len(), |i| start + i);
    format!(
        "{}{{\"timestamp\": {{SECONDS, MICROSECONDS{}",
        &line[..start],
        &line[end..]
    )
}

#[tokio::test]
async fn the_test_server_answers_byte_for_byte_as_qemu_does() {
    let Some(binary) = qemu_testkit::qemu_system() else {
        return;
    };
    let version = qemu_testkit::version_of(&binary);
    let qemu = QemuProcess::system_with_listener(&[]);
    let real = transcript(qemu.qmp_path()).await;

    // The server plays the same QEMU: version and package from its greeting.
    let greeting: Value = serde_json::from_str(real.lines().next().unwrap()).unwrap();
    let package = greeting["QMP"]["version"]["package"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = qemu_testkit::tempdir("server-fidelity-");
    let _server = TestServer::builder()
        .version(VersionInfo {
            qemu: VersionTriple {
                major: version.major.into(),
                minor: version.minor.into(),
                micro: version.micro.into(),
            },
            package,
        })
        .bind_unix(dir.path().join("qmp.sock"))
        .expect("bind");
    let ours = transcript(&dir.path().join("qmp.sock")).await;

    // Every input was answered (a greeting, then at least a line each).
    assert!(
        real.lines().count() > 2 * exchange().len(),
        "QEMU's transcript is short:\n{real}"
    );
    let differences: Vec<String> = real
        .lines()
        .zip(ours.lines())
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("  QEMU {version}: {a}\n  test server: {b}"))
        .collect();
    assert!(
        differences.is_empty() && real.lines().count() == ours.lines().count(),
        "the test server differs from QEMU {version}:\n{}\n\nQEMU's whole transcript:\n{real}\nthe server's:\n{ours}",
        differences.join("\n")
    );
}
