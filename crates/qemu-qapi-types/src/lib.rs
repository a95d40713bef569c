//! Typed QMP commands and events, generated from the schemas of every QEMU
//! version this project is tested against (see `crates/qemu-qapi/schemas`).

#![warn(missing_docs)]
#![forbid(unsafe_code)]

#[rustfmt::skip]
pub mod commands;
#[rustfmt::skip]
pub mod events;
#[rustfmt::skip]
pub mod types;

pub use commands::*;
pub use events::*;
pub use qemu_qapi::typed::{Command, Empty, EventData, FromEvent, TypedClient};
pub use types::*;
