//! The test server against the real thing: the same exchange, byte for byte,
//! with a real `qemu-system-x86_64` and with `TestServer` configured as that
//! QEMU's version. Greeting, negotiation, errors for each kind of bad input,
//! escaping, member order, and `quit`; only event timestamps are masked.
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
const EXCHANGE: &[&[u8]] = &[
    br#"{"execute":"query-status"}"#,
    br#"{"execute":"qmp_capabilities","arguments":{"enable":["bogus"]}}"#,
    br#"{"execute":"qmp_capabilities"}"#,
    br#"{"execute":"qmp_capabilities"}"#,
    br#"{"execute":"nope","id":"x"}"#,
    b"{this is bad}\n",
    b"this\n",
    b"{\"execute\": x}\n",
    b"{\"execute\":\"query-status\",}\n",
    b"}\n",
    b"{\"a\" \"b\"}\n",
    br#"[1,2]"#,
    b"\"str\"\n",
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
    br#"{"execute":"quit","id":7}"#,
];

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
    for input in EXCHANGE {
        w.write_all(input).await.expect("write");
        out.push_str(&format!(
            ">> {}\n",
            String::from_utf8_lossy(input).trim_end()
        ));
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
        .await
        .expect("bind");
    let ours = transcript(&dir.path().join("qmp.sock")).await;

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
