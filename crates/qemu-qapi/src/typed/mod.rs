//! Typed commands and events, checked against the connected QEMU's schema.
//!
//! The types themselves are generated (crate `qemu-qapi-types`, or your
//! own with `qapi-schema gen`); this module is what they plug into:
//! [`Command`] ties a command's arguments to its name and return type,
//! [`EventData`]/[`FromEvent`] an event's data to its name, and
//! [`TypedClient`] calls them ([`blocking::TypedClient`] without an async
//! runtime).
//!
//! # The version rule
//!
//! The generated types are the union of several QEMU versions, so they can
//! describe a command or a member the QEMU at the other end lacks. Before a
//! typed call is sent, [`TypedClient`] checks it against that QEMU's own
//! schema (`query-qmp-schema`, fetched once per connection): a command it
//! does not have, a member it does not take, a value it would refuse, fail
//! locally with [`CallError::Unsupported`], which names the command, the
//! member and the QEMU version, and nothing is sent. Replies are read
//! tolerantly: unknown members are ignored, unknown enum values, union
//! variants and events land in `Unknown` variants.

pub mod blocking;
mod client;
mod listener;
pub mod support;

pub use client::{CallError, TypedClient};
pub use listener::{EventError, TypedListener};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A command: its arguments as a value of the type, its name and what it
/// returns.
pub trait Command: Serialize + Send + Sync {
    /// The command's name on the wire (`query-status`).
    const NAME: &'static str;
    /// What the command returns.
    type Returns: DeserializeOwned + Send;
}

/// An event's data type, with the event's name.
pub trait EventData: DeserializeOwned + Send {
    /// The event's name on the wire (`BLOCK_JOB_COMPLETED`).
    const NAME: &'static str;
}

/// Something decoded from an event: one event's data (its name is known)
/// or any event (the generated `Event` enum).
pub trait FromEvent: Sized + Send {
    /// The event names it decodes; `None` for any event.
    fn names() -> Option<&'static [&'static str]>;

    /// Decodes the event `name` with `data` (`None`: it had none).
    fn from_parts(name: &str, data: Option<&Value>) -> Result<Self, serde_json::Error>;

    /// Decodes a received event.
    fn from_event(event: &qemu_qmp::Event) -> Result<Self, serde_json::Error> {
        let data = event.as_object().get("data");
        Self::from_parts(event.name(), data)
    }
}

/// The empty object: what commands that return nothing return (`{}`), and
/// what they take when they take nothing. Reading it ignores any members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Empty {}
