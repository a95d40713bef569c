//! Shared code of the command-line tools.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
pub mod exit;
pub mod ga;
pub mod jobs;
pub mod qom;
pub mod qom_fuse;
mod reply;
pub mod shell;
pub mod test_server;
pub mod tui;
