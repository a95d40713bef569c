//! `qmp-shell -N`: a session without capability negotiation.
//!
//! `-N` serves two kinds of peer: the guest agent (`qemu-ga`), which never speaks
//! first, and a QEMU monitor talked to raw, which greets every client as it connects
//! whether the client waits for the greeting or not. The client cannot wait for a
//! greeting (the agent would never send one), so a [`Client`] built with
//! `await_greeting(false)` gets QEMU's greeting later, in its reader, as an
//! unexpected message, and warns about it (`unexpected greeting dropped`).
//!
//! The shell is the layer that knows a greeting may come first, and takes it out:
//! it connects the socket itself and gives the client one end of a socketpair,
//! relaying the bytes both ways; when the first line the peer sends is a greeting,
//! it is logged at debug level and not passed on. As QEMU's Python shell does with
//! `-N`, the greeting is not shown and the banner says only `Connected`.

use std::io;
use std::time::Duration;

use qemu_qmp::{Address, Client, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// How long connecting may take, as the client's default.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A first line longer than this is not a greeting: stop looking and pass it on.
const MAX_GREETING: usize = 1 << 20;

/// Connecting failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to connect to {target}: {source}")]
pub struct ConnectError {
    /// The address, as given.
    pub target: String,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// Connect to `address` without awaiting a greeting or negotiating, taking out
/// the greeting a QEMU monitor sends first (see the module documentation). Must
/// be called within a tokio runtime, which then runs the relay.
pub async fn connect(address: Address, name: &str) -> Result<Client, ConnectError> {
    let target = address.to_string();
    let wrap = |source| ConnectError {
        target: target.clone(),
        source,
    };
    let (ours, theirs) = UnixStream::pair().map_err(wrap)?;
    let timed_out = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("timed out after {} s", CONNECT_TIMEOUT.as_secs()),
        )
    };
    match address {
        Address::Unix(path) => {
            let s = tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(path))
                .await
                .map_err(|_| wrap(timed_out()))?
                .map_err(wrap)?;
            relay(s, ours)
        }
        Address::Tcp { host, port } => {
            let s =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
                    .await
                    .map_err(|_| wrap(timed_out()))?
                    .map_err(wrap)?;
            let _ = s.set_nodelay(true);
            relay(s, ours)
        }
        Address::UnixStream(s) => {
            s.set_nonblocking(true).map_err(wrap)?;
            relay(UnixStream::from_std(s).map_err(wrap)?, ours)
        }
        Address::TcpStream(s) => {
            s.set_nonblocking(true).map_err(wrap)?;
            relay(TcpStream::from_std(s).map_err(wrap)?, ours)
        }
    }
    let theirs = theirs.into_std().map_err(wrap)?;
    Client::builder()
        .name(name)
        .await_greeting(false)
        .negotiate(false)
        .connect(theirs)
        .await
        .map_err(|e| wrap(io::Error::other(e)))
}

/// Relay between the peer and the client's end of the socketpair, until each side
/// has closed. An end of input is passed on as one (a half close).
fn relay<S>(peer: S, client: UnixStream)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut peer_rx, mut peer_tx) = tokio::io::split(peer);
    let (mut client_rx, mut client_tx) = client.into_split();
    tokio::spawn(async move {
        let down = async {
            pass_greeting(&mut peer_rx, &mut client_tx).await?;
            tokio::io::copy(&mut peer_rx, &mut client_tx).await?;
            client_tx.shutdown().await
        };
        if let Err(e) = down.await {
            tracing::debug!("relay from the peer ended: {e}");
        }
        // Dropping the write half closes it: the client sees the end.
    });
    tokio::spawn(async move {
        let up = async {
            tokio::io::copy(&mut client_rx, &mut peer_tx).await?;
            peer_tx.shutdown().await
        };
        if let Err(e) = up.await {
            tracing::debug!("relay to the peer ended: {e}");
        }
    });
}

/// Read the peer's first line; pass it on unless it is a greeting, and pass on
/// whatever came after it.
async fn pass_greeting<R, W>(from: &mut R, to: &mut W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = from.read(&mut chunk).await?;
        if n == 0 {
            return to.write_all(&buf).await;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line = &buf[..=end];
            if is_greeting(line) {
                tracing::debug!(
                    "greeting (not negotiated): {}",
                    String::from_utf8_lossy(line).trim_end()
                );
                return to.write_all(&buf[end + 1..]).await;
            }
            return to.write_all(&buf).await;
        }
        if buf.len() > MAX_GREETING {
            return to.write_all(&buf).await;
        }
    }
}

/// A QMP greeting: `{"QMP": {...}}`.
fn is_greeting(line: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(o)) => o.len() == 1 && o.get("QMP").is_some_and(Value::is_object),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn passed(input: &[u8]) -> Vec<u8> {
        let mut from = input;
        let mut to = Vec::new();
        pass_greeting(&mut from, &mut to).await.unwrap();
        tokio::io::copy(&mut from, &mut to).await.unwrap();
        to
    }

    #[tokio::test]
    async fn only_a_greeting_on_the_first_line_is_taken_out() {
        let greeting = b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n";
        let reply = b"{\"return\": {}}\r\n";
        assert_eq!(passed(&[&greeting[..], reply].concat()).await, reply);
        assert_eq!(passed(greeting).await, b"");
        // The agent's first line is a reply: passed on, as is everything after it.
        let two = [&reply[..], greeting].concat();
        assert_eq!(passed(&two).await, two);
        // Not a line (yet): passed on at the end.
        assert_eq!(passed(b"{\"QMP\"").await, b"{\"QMP\"");
        assert!(!is_greeting(b"{\"QMP\": 1}\n"));
        assert!(!is_greeting(b"{\"QMP\": {}, \"id\": 1}\n"));
    }
}
