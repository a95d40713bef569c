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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use qemu_qmp::error::ExecuteError;
    use qemu_qmp::{ErrorInfo, JsonObject};

    use super::*;

    /// QEMU's error reply `class`/`desc`, as the `qom` library reports it.
    fn refused(class: &str, desc: &str) -> QomError {
        let source = qemu_qmp::Error::Execute(Box::new(ExecuteError {
            error: ErrorInfo {
                class: class.to_owned(),
                desc: desc.to_owned(),
            },
            sent: JsonObject::new(),
            received: JsonObject::new(),
        }));
        QomError::Refused {
            what: "/machine.x".to_owned(),
            desc: desc.to_owned(),
            source,
        }
    }

    #[test]
    fn qemus_errors_become_errno_values() {
        // The words of QEMU 7.2 and 10.0.
        let gone = refused("DeviceNotFound", "Device '/machine/nonexist' not found");
        let no_prop = refused(
            "GenericError",
            "Property 'pc-i440fx-10.0-machine.nonexist' not found",
        );
        let ro = refused(
            "GenericError",
            "Property 'pc-i440fx-10.0-machine.type' is not writable",
        );
        let wo = refused(
            "GenericError",
            "Property 'vmmouse.legacy-i8042' is not readable",
        );
        let bad = refused(
            "GenericError",
            "Invalid parameter type for 'realized', expected: boolean",
        );
        let crash = refused("GenericError", "No crash occurred");
        for op in [Op::List, Op::Get, Op::Set] {
            assert_eq!(errno_for(op, &gone), Errno::ENOENT);
            assert_eq!(errno_for(op, &no_prop), Errno::ENOENT);
            assert_eq!(errno_for(op, &ro), Errno::EACCES);
            assert_eq!(errno_for(op, &wo), Errno::EACCES);
        }
        assert_eq!(errno_for(Op::Set, &bad), Errno::EINVAL);
        assert_eq!(errno_for(Op::Get, &crash), Errno::EIO);
        let ours = QomError::BadValue {
            what: "/machine.x".into(),
            reason: "'maybe' is not a boolean".into(),
        };
        assert_eq!(errno_for(Op::Set, &ours), Errno::EINVAL);
        let slow = QomError::Qmp(qemu_qmp::Error::Timeout {
            what: "a reply".into(),
            timeout: Duration::from_secs(1),
        });
        assert_eq!(errno_for(Op::Get, &slow), Errno::ETIMEDOUT);
        let lost = QomError::Qmp(qemu_qmp::Error::ConnectionClosed { mid_message: false });
        assert_eq!(errno_for(Op::List, &lost), Errno::EIO);
    }
}
