//! What each failure looks like to a program using the file system: an errno.

use fuser::Errno;

use crate::qom::QomError;

/// The operation that failed, for the mapping of QEMU's generic errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// `qom-list` of a directory.
    List,
    /// `qom-get` for a read or a symlink.
    Get,
    /// `qom-set` for a write.
    Set,
}

/// The errno for a failed QOM operation:
///
/// | failure | errno |
/// |---|---|
/// | the object is gone (`DeviceNotFound`), the property is gone (`Property '...' not found`) | `ENOENT` |
/// | `Property '...' is not writable` / `is not readable` | `EACCES` |
/// | a value that does not fit the property's type (ours, or QEMU's refusal of a `qom-set`) | `EINVAL` |
/// | a command that QEMU did not answer within the timeout | `ETIMEDOUT` |
/// | QEMU refused a `qom-get` otherwise (`No crash occurred`), the connection is lost, a malformed reply | `EIO` |
pub(crate) fn errno_for(op: Op, e: &QomError) -> Errno {
    match e {
        QomError::Refused { source, desc, .. } => {
            let class = source.error_class().unwrap_or("");
            if class == "DeviceNotFound"
                || (desc.starts_with("Property '") && desc.ends_with("' not found"))
            {
                Errno::ENOENT
            } else if desc.ends_with("is not writable") || desc.ends_with("is not readable") {
                Errno::EACCES
            } else if op == Op::Set {
                Errno::EINVAL
            } else {
                Errno::EIO
            }
        }
        QomError::BadValue { .. } => Errno::EINVAL,
        QomError::Qmp(q) if q.is_timeout() => Errno::ETIMEDOUT,
        _ => Errno::EIO,
    }
}
