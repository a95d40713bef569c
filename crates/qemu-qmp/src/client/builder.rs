//! Settings of a client: [`Config`] and [`ClientBuilder`].

use std::time::Duration;

use super::Client;
use crate::address::ToAddress;
use crate::error::Result;
use crate::framing::DEFAULT_MAX_MESSAGE_SIZE;

/// Settings of a [`Client`]; build one with [`Client::builder`].
#[derive(Debug, Clone)]
pub struct Config {
    pub(super) name: Option<String>,
    pub(super) max_message_size: usize,
    pub(super) await_greeting: bool,
    pub(super) negotiate: bool,
    pub(super) enable_oob: bool,
    pub(super) agent_sync: bool,
    pub(super) connect_timeout: Option<Duration>,
    pub(super) command_timeout: Option<Duration>,
    pub(super) preserve_order: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            await_greeting: true,
            negotiate: true,
            enable_oob: true,
            agent_sync: false,
            connect_timeout: Some(Duration::from_secs(30)),
            command_timeout: None,
            preserve_order: false,
        }
    }
}

/// Builds a [`Client`].
///
/// ```no_run
/// # async fn f() -> qemu_qmp::Result<()> {
/// use std::time::Duration;
/// let qmp = qemu_qmp::Client::builder()
///     .name("vm1")
///     .command_timeout(Duration::from_secs(10))
///     .connect("/run/vm1/qmp.sock")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct ClientBuilder {
    config: Config,
}

impl ClientBuilder {
    /// A name for the connection, used in every log line (Python: `nickname`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = Some(name.into());
        self
    }

    /// The largest message accepted from the peer (default 10 MiB). A larger one ends
    /// the session with [`ProtocolError::TooLarge`](crate::ProtocolError::TooLarge).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.max_message_size = bytes.max(64);
        self
    }

    /// Wait for the greeting when connecting (default true). Turn off, together with
    /// [`negotiate`](Self::negotiate), for the guest agent, which sends none.
    pub fn await_greeting(mut self, yes: bool) -> Self {
        self.config.await_greeting = yes;
        self
    }

    /// Send `qmp_capabilities` when connecting (default true; implies awaiting the
    /// greeting).
    pub fn negotiate(mut self, yes: bool) -> Self {
        self.config.negotiate = yes;
        self
    }

    /// Speak the guest agent's dialect (`qemu-ga`): no greeting, no negotiation, and
    /// on connect the `guest-sync-delimited` handshake with a `0xFF` marker, which
    /// discards whatever stale bytes or replies a previous client left in the channel.
    pub fn guest_agent(mut self) -> Self {
        self.config.await_greeting = false;
        self.config.negotiate = false;
        self.config.agent_sync = true;
        self
    }

    /// Enable out-of-band execution when the server offers it (default true).
    pub fn enable_oob(mut self, yes: bool) -> Self {
        self.config.enable_oob = yes;
        self
    }

    /// One deadline for connecting, reading the greeting and negotiating (default 30 s;
    /// `None` waits for ever, still cancellable by dropping the future).
    pub fn connect_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.connect_timeout = timeout.into();
        self
    }

    /// The default deadline for each command's reply (default: none). A command's own
    /// [`Request::timeout`](crate::Request::timeout) overrides it.
    pub fn command_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.command_timeout = timeout.into();
        self
    }

    /// Keep the text of each reply and event as received (default false), so that
    /// [`Response::ordered`](crate::Response::ordered) and
    /// [`Event::ordered`](crate::Event::ordered) show their members in the order the
    /// peer sent them: what a tool shows a person. Costs a copy of each message;
    /// without it, `ordered()` computes QEMU's order from the keys, which is exact but
    /// for members that share a bucket of QEMU's hash table (see
    /// [`json`](mod@crate::json)). Decoded values are sorted by key either way.
    pub fn preserve_order(mut self, yes: bool) -> Self {
        self.config.preserve_order = yes;
        self
    }

    /// An idle client with these settings.
    pub fn build(self) -> Client {
        Client::with_config(self.config)
    }

    /// Build and connect.
    pub async fn connect(self, address: impl ToAddress) -> Result<Client> {
        let c = self.build();
        c.connect_to(address).await?;
        Ok(c)
    }
}
