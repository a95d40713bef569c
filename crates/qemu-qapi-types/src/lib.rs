#![doc = include_str!("../README.md")]
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
