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

/// The workspace README's examples, compiled as doctests (this crate's
/// dev-dependencies cover every crate they use).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct WorkspaceReadmeDoctests;
