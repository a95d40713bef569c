//! Checking a QMP request against the schema before sending it, as QEMU's
//! dispatcher (`qapi/qmp-dispatch.c`) and QMP input visitor
//! (`qapi/qobject-input-visitor.c`) would: [`Schema::check_command`] and
//! [`Schema::check`].
//!
//! The aim is QEMU's *verdict*: a request this module accepts is one whose
//! arguments QEMU's visitor accepts (the command itself may still fail), and
//! a request it rejects is one QEMU rejects before running the command.
//! Where it knowingly differs from QEMU:
//!
//! - **Integer ranges.** Introspection reports every integer type (`int8`
//!   ... `uint64`, `size`) as `int`, so the checker cannot know a member's
//!   range: it accepts any JSON integer from `-2^63` to `2^64 - 1`. QEMU
//!   rejects `300` for a `uint8`, `-1` for a `size` and `2^63` for an
//!   `int64`; this checker does not.
//! - **The first error.** QEMU stops at the first error in its own visiting
//!   order (members in schema order, then variant members, then unexpected
//!   members, in its hash table's order); so does this checker, in the same
//!   order but with unexpected members in sorted order. The verdict is the
//!   same; the member named may differ when there are several errors.
//! - **`device_add`.** QEMU marshals its arguments by hand (`'gen': false`):
//!   it takes any member besides `driver`, `bus` and `id` as a device
//!   property. The checker accepts unknown members for it.
//! - **Compatibility policies** (`-compat deprecated-input=reject`,
//!   `unstable-input=reject`) are not applied: the checker accepts deprecated
//!   and unstable commands, members and enum values, as QEMU does by default.
//! - **`exec-oob`** is accepted for commands that allow out-of-band
//!   execution; whether the session negotiated the `oob` capability is not
//!   known here.

#[cfg(doc)]
use crate::Schema;

mod error;
mod request;
mod suggest;
mod walk;

pub use error::{CheckError, CheckErrorKind};
pub use suggest::{closest, edit_distance};
pub use walk::json_type_name;

#[cfg(test)]
mod tests;
