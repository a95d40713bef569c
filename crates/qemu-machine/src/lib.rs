//! Launch and supervise QEMU (Python: `qemu.machine`).
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod qtest;
