//! An async client for the QEMU Machine Protocol (QMP), with a blocking API for
//! scripts and, behind the `server` cargo feature, a QMP server for testing clients
//! (`server::TestServer`, with fault injection).
//!
//! This crate does in Rust what QEMU's Python `qemu.qmp` package does, and the names
//! carry over: [`Client`] is `QMPClient`, [`Client::execute`] is `execute()`,
//! [`EventListener`] is `EventListener`, [`Runstate`] is `Runstate`, and the variants of
//! [`Error`] map onto its exceptions.
//!
//! ```no_run
//! # async fn f() -> qemu_qmp::Result<()> {
//! use qemu_qmp::Client;
//!
//! let qmp = Client::connect("/run/vm1/qmp.sock").await?;  // greeting + negotiation
//! let version = qmp.execute("query-version", None).await?;
//! let mut stops = qmp.listen(["STOP"]);
//! qmp.execute("stop", None).await?;
//! let stop = stops.recv().await;
//! qmp.disconnect().await?;
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! One reader task per connection decodes the byte stream with a JSON stream decoder
//! (QEMU ends messages with `\r\n`, `pretty=on` monitors send multi-line JSON, other
//! peers send none) and routes each message: a reply wakes the one `execute` waiting
//! for its id; an event is offered to every listener. Commands are written from the
//! caller's task when the socket can take them, and finished by a flusher task when it
//! cannot, so many commands can be in flight and dropping a waiting `execute` never
//! corrupts the stream.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod address;
pub mod blocking;
mod client;
pub mod error;
pub mod events;
pub mod framing;
pub mod json;
pub mod message;
pub mod runstate;
#[cfg(feature = "server")]
pub mod server;
mod transport;
pub mod wait;

pub use address::{Address, ToAddress};
pub use client::{Client, ClientBuilder, Config, Request};
pub use error::{Error, ExecuteError, ProtocolError, Result};
pub use events::{
    EventListener, EventQueue, Lagged, ListenOptions, RecvError, RecvTimeoutError, SessionEnded,
    TryRecvError, DEFAULT_EVENT_CAPACITY,
};
pub use message::{
    ErrorInfo, Event, Greeting, JsonObject, Message, Response, Timestamp, VersionInfo,
};
pub use runstate::Runstate;
#[cfg(feature = "server")]
pub use server::{TestServer, TestServerBuilder};
pub use wait::Wait;

/// Re-exported so callers can build arguments without naming `serde_json` themselves.
pub use serde_json::{json, Value};
