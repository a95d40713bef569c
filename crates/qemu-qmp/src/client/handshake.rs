//! Setting a session up: reading the greeting, negotiating capabilities, the guest
//! agent's resynchronisation, and [`MessageReader`], which reads whole messages for
//! the handshake and then for the session's reader.

use std::io;
use std::sync::Arc;

use tracing::debug;

use super::session::Session;
use super::Client;
use crate::error::{Error, Result};
use crate::framing::{Decoder, FrameError, JsonObject};
use crate::message::{self, Greeting, Message};
use crate::transport::Stream;

impl Client {
    /// Greeting and negotiation on a fresh stream, then start the reader and flusher.
    pub(super) async fn establish(&self, stream: Stream) -> Result<Arc<Session>> {
        let config = &self.inner.config;
        let mut decoder = Decoder::new(config.max_message_size);
        let mut reader = MessageReader::default();
        let mut greeting = None;
        if config.await_greeting || config.negotiate {
            let g = loop {
                let obj = reader
                    .handshake_message(
                        &stream,
                        &mut decoder,
                        "the peer closed the connection before sending a greeting",
                        |reason| Error::Greeting {
                            reason,
                            received: None,
                        },
                    )
                    .await?;
                // QEMU can send an event before its greeting: a monitor leaves the
                // negotiation phase when a client negotiates and only enters it again
                // (and at startup, first enters it) in its "opened" handler, which the
                // socket chardev calls from the monitor's I/O thread just after
                // marking itself connected. An event the main thread emits in between
                // (`RESUME` at startup, say) goes out ahead of the greeting. Deliver
                // it like an event during negotiation, and wait on for the greeting.
                let obj = if obj.contains_key("QMP") {
                    obj
                } else {
                    match message::Event::from_object(obj) {
                        Ok(e) => {
                            debug!(name = %self.inner.label, "event before the greeting: {}", e.name());
                            self.inner.registry.dispatch(&e);
                            self.inner.registry.wake();
                            continue;
                        }
                        Err(obj) => obj,
                    }
                };
                break Greeting::from_object(obj).map_err(|(reason, obj)| Error::Greeting {
                    reason,
                    received: Some(Box::new(obj)),
                })?;
            };
            debug!(name = %self.inner.label, "greeting: QEMU {} capabilities {:?}", g.version.qemu, g.capabilities);
            greeting = Some(g);
        }
        let mut oob = false;
        if config.negotiate {
            let offered = greeting.as_ref().is_some_and(|g| g.has_capability("oob"));
            oob = offered && config.enable_oob;
            let args = if oob {
                serde_json::json!({"enable": ["oob"]})
            } else {
                serde_json::json!({})
            };
            let req = message::make_request("qmp_capabilities", Some(args), false, None);
            write_all(&stream, &message::encode(&req))
                .await
                .map_err(|e| Error::Negotiation {
                    reason: format!("could not send qmp_capabilities: {e}"),
                    received: None,
                })?;
            loop {
                let obj = reader
                    .handshake_message(
                        &stream,
                        &mut decoder,
                        "the peer closed the connection during negotiation",
                        |reason| Error::Negotiation {
                            reason,
                            received: None,
                        },
                    )
                    .await?;
                match Message::classify(obj) {
                    Message::Event(e) => {
                        self.inner.registry.dispatch(&e);
                        self.inner.registry.wake();
                    }
                    Message::Response(r) => {
                        let reason = match r.error_info() {
                            Ok(None) if r.return_value().is_some() => break,
                            Ok(None) => "the reply has no 'return' member".to_owned(),
                            Ok(Some(info)) => format!("the server refused: {info}"),
                            Err(why) => format!("malformed error reply: {why}"),
                        };
                        return Err(Error::Negotiation {
                            reason,
                            received: Some(Box::new(r.raw)),
                        });
                    }
                    // QEMU 7.2's storage daemon, reached very early on a listening
                    // socket, can run its monitor's CHR_EVENT_OPENED handler twice:
                    // it resets the negotiation and greets again. Seen before our
                    // reply, the reset came before our command was processed, so the
                    // reply still stands; the repeated greeting says nothing new.
                    Message::Greeting(g)
                        if greeting.as_ref().is_some_and(|first| first.raw == g.raw) =>
                    {
                        debug!(name = %self.inner.label, "the same greeting again before the reply to qmp_capabilities: ignored");
                    }
                    Message::Greeting(g) => {
                        return Err(Error::Negotiation {
                            reason: "unexpected second greeting".into(),
                            received: Some(Box::new(g.raw)),
                        })
                    }
                    Message::Command(o) | Message::Other(o) => {
                        return Err(Error::Negotiation {
                            reason: "unexpected message in place of the reply to qmp_capabilities"
                                .into(),
                            received: Some(Box::new(o)),
                        })
                    }
                }
            }
            debug!(name = %self.inner.label, "negotiated (oob {})", if oob { "on" } else { "off" });
        }
        if config.agent_sync {
            agent_sync(&stream, &mut decoder, &mut reader).await?;
            debug!(name = %self.inner.label, "synchronised with the guest agent");
        }
        Ok(Session::start(
            stream,
            decoder,
            reader,
            greeting,
            oob,
            config.preserve_order,
            self.inner.label.clone(),
            self.inner.registry.clone(),
            self.inner.state.clone(),
        ))
    }
}

/// Reads whole messages from a stream into a decoder.
#[derive(Default)]
pub(crate) struct MessageReader {
    idle: bool,
}

impl MessageReader {
    /// The next message, `None` at a clean end of stream.
    pub(crate) async fn next(
        &mut self,
        stream: &Stream,
        decoder: &mut Decoder,
    ) -> Result<Option<JsonObject>> {
        self.next_with(stream, decoder, || {}).await
    }

    /// The next message of a handshake step: a hang-up or a protocol error becomes
    /// that step's error, built by `step_error` from a reason.
    pub(super) async fn handshake_message(
        &mut self,
        stream: &Stream,
        decoder: &mut Decoder,
        closed: &str,
        step_error: impl Fn(String) -> Error,
    ) -> Result<JsonObject> {
        match self.next(stream, decoder).await {
            Ok(Some(obj)) => Ok(obj),
            Ok(None) => Err(step_error(closed.to_owned())),
            Err(Error::Protocol(p)) => Err(step_error(p.to_string())),
            Err(e) => Err(e),
        }
    }

    /// [`next`](Self::next), calling `drained` whenever every buffered message has
    /// been returned and more must be read: the end of a batch.
    pub(crate) async fn next_with(
        &mut self,
        stream: &Stream,
        decoder: &mut Decoder,
        drained: impl FnMut(),
    ) -> Result<Option<JsonObject>> {
        self.read_with(stream, decoder, drained, Decoder::decode)
            .await
    }

    /// [`next_with`](Self::next_with), decoding with `decode`: the session's reader
    /// takes events as [`Event`](crate::Event)s parsed when asked
    /// ([`Decoder::decode_message`]).
    pub(crate) async fn read_with<T>(
        &mut self,
        stream: &Stream,
        decoder: &mut Decoder,
        mut drained: impl FnMut(),
        decode: impl Fn(&mut Decoder, bool) -> std::result::Result<Option<T>, FrameError>,
    ) -> Result<Option<T>> {
        loop {
            if let Some(obj) = decode(decoder, self.idle)? {
                return Ok(Some(obj));
            }
            drained();
            match stream.try_read_buf(decoder.buffer_mut()) {
                Ok(0) => {
                    // Let the decoder finish a final message that had no newline.
                    if let Some(obj) = decode(decoder, true)? {
                        return Ok(Some(obj));
                    }
                    if decoder.has_partial() {
                        return Err(Error::ConnectionClosed { mid_message: true });
                    }
                    return Ok(None);
                }
                Ok(_) => self.idle = false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.idle {
                        self.idle = true;
                        continue;
                    }
                    stream
                        .readable()
                        .await
                        .map_err(|e| Error::io("waiting for data", e))?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A reset is how a peer that exits with unread input hangs up.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return if decoder.has_partial() {
                        Err(Error::ConnectionClosed { mid_message: true })
                    } else {
                        Ok(None)
                    };
                }
                Err(e) => return Err(Error::io("reading from the peer", e)),
            }
        }
    }
}

/// The guest agent's resynchronisation: send `0xFF` (which resets the agent's parser)
/// and `guest-sync-delimited` with a fresh id; the agent answers with `0xFF` followed by
/// the reply. Everything before that marker, and any reply with another id, is stale.
async fn agent_sync(
    stream: &Stream,
    decoder: &mut Decoder,
    reader: &mut MessageReader,
) -> Result<()> {
    let fail = |reason: String| Error::Negotiation {
        reason: format!("guest agent synchronisation failed: {reason}"),
        received: None,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let id = (now.subsec_nanos() ^ std::process::id().rotate_left(16)) & 0x7fff_ffff;
    let req = message::make_request(
        "guest-sync-delimited",
        Some(serde_json::json!({ "id": id })),
        false,
        None,
    );
    let mut bytes = vec![0xFF];
    bytes.extend(message::encode(&req));
    write_all(stream, &bytes)
        .await
        .map_err(|e| fail(format!("could not send guest-sync-delimited: {e}")))?;
    let mut raw = Vec::with_capacity(4096);
    loop {
        raw.clear();
        match stream.try_read_buf(&mut raw) {
            Ok(0) => return Err(fail("the agent closed the connection".into())),
            Ok(_) => {
                if let Some(p) = memchr::memchr(0xFF, &raw) {
                    decoder.extend(&raw[p + 1..]);
                    break;
                }
                debug!("discarded {} stale bytes from the guest agent", raw.len());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream
                .readable()
                .await
                .map_err(|e| Error::io("waiting for the guest agent", e))?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading from the guest agent", e)),
        }
    }
    loop {
        let obj = reader
            .next(stream, decoder)
            .await?
            .ok_or_else(|| fail("the agent closed the connection".into()))?;
        match obj.get("return") {
            Some(v) if v.as_u64() == Some(u64::from(id)) => return Ok(()),
            _ => debug!(
                "stale message from the guest agent dropped: {}",
                serde_json::Value::Object(obj)
            ),
        }
    }
}

async fn write_all(stream: &Stream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match stream.try_write(data, &[]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
