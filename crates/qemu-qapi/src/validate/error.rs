//! Why a request would be rejected: the error and its kinds, and how they
//! read.

use std::fmt;

/// Why a request would be rejected by QEMU before its command runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}{}", self.command_or_request(), self.path_prefix(), self.kind)]
pub struct CheckError {
    /// The command's name (empty if the request names none).
    pub command: String,
    /// Where the problem is: `execute`, `arguments`,
    /// `arguments.file.filename`, `arguments.keys[2]`, ...
    pub path: String,
    /// What the problem is.
    pub kind: CheckErrorKind,
}

impl CheckError {
    fn command_or_request(&self) -> &str {
        if self.command.is_empty() {
            "request"
        } else {
            &self.command
        }
    }

    fn path_prefix(&self) -> String {
        if self.path.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.path)
        }
    }

    /// The name QEMU gives the member in its error messages: the path
    /// without `arguments.` (`file.filename`, `keys[2]`).
    pub fn qemu_name(&self) -> &str {
        self.path
            .strip_prefix("arguments.")
            .unwrap_or(self.path.as_str())
    }
}

/// What is wrong with a request, for [`CheckError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckErrorKind {
    /// The request has neither `execute` nor `exec-oob`.
    NoCommand,
    /// `execute` or `exec-oob` is not a string, or `arguments` not an object.
    RequestMemberType {
        /// What it must be: `string` or `object`.
        expected: &'static str,
        /// What it is.
        got: &'static str,
    },
    /// A top-level member other than `execute`, `exec-oob`, `arguments`
    /// and `id`, or both `execute` and `exec-oob`.
    UnexpectedRequestMember,
    /// The schema has no such command (QEMU's `CommandNotFound`).
    UnknownCommand {
        /// The closest command name, if one is close.
        did_you_mean: Option<String>,
    },
    /// `exec-oob` for a command without `allow-oob`.
    NoOob,
    /// A mandatory member is missing.
    Missing,
    /// A member the type does not have.
    Unexpected {
        /// The closest member name the type has, if one is close.
        did_you_mean: Option<String>,
    },
    /// A value of the wrong JSON type.
    WrongType {
        /// What the schema wants: `string`, `integer`, `number`, `boolean`,
        /// `null`, `object`, `array`, or an alternate's JSON types joined by
        /// ` or `.
        expected: String,
        /// What the value is.
        got: &'static str,
    },
    /// A string that is not one of the enum's values.
    BadEnumValue {
        /// The value given.
        value: String,
        /// The closest value the enum has, if one is close.
        did_you_mean: Option<String>,
    },
}

fn did_you_mean(s: &Option<String>) -> String {
    match s {
        Some(s) => format!(" (did you mean '{s}'?)"),
        None => String::new(),
    }
}

impl fmt::Display for CheckErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckErrorKind::NoCommand => write!(f, "no 'execute' member"),
            CheckErrorKind::RequestMemberType { expected, got } => {
                write!(f, "expected {expected}, got {got}")
            }
            CheckErrorKind::UnexpectedRequestMember => write!(f, "unexpected member"),
            CheckErrorKind::UnknownCommand { did_you_mean: d } => {
                write!(f, "unknown command{}", did_you_mean(d))
            }
            CheckErrorKind::NoOob => write!(f, "the command does not support out-of-band"),
            CheckErrorKind::Missing => write!(f, "missing"),
            CheckErrorKind::Unexpected { did_you_mean: d } => {
                write!(f, "unexpected member{}", did_you_mean(d))
            }
            CheckErrorKind::WrongType { expected, got } => {
                write!(f, "expected {expected}, got {got}")
            }
            CheckErrorKind::BadEnumValue {
                value,
                did_you_mean: d,
            } => write!(f, "'{value}' is not a valid value{}", did_you_mean(d)),
        }
    }
}
