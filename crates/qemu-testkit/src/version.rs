//! Which QEMU a test runs against: the version of a binary, and saying so.
//!
//! The suite runs once per supported QEMU version (see `.ci/run`), with the
//! binaries chosen by environment variables. A test asserts what every
//! version guarantees, and a version-specific fact only where
//! [`version_of`] says the binary has it.
//!
//! Saying so: the first successful lookup of each binary in a test process
//! writes `qemu-testkit: <name> <version> (<path>)` past libtest's capture,
//! so the output of every test binary names the QEMU it used; and a test
//! that panics after a lookup ends its failure report with the same names.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, Once};

/// A QEMU release as `--version` prints it (`QEMU emulator version 10.0.2
/// (Debian ...)`, `qemu-storage-daemon version 7.2.22 (...)`, `QEMU Guest
/// Agent 7.2.22`). Ordered, so `version >= QemuVersion::new(10, 0, 0)` reads as
/// it should.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QemuVersion {
    /// `10` in 10.0.2.
    pub major: u32,
    /// `0` in 10.0.2.
    pub minor: u32,
    /// `2` in 10.0.2.
    pub micro: u32,
}

impl QemuVersion {
    /// The version `major.minor.micro`.
    pub const fn new(major: u32, minor: u32, micro: u32) -> QemuVersion {
        QemuVersion {
            major,
            minor,
            micro,
        }
    }

    /// True for any release of `major.minor` (7.2.0 up to 7.2.22 and on).
    pub fn is(&self, major: u32, minor: u32) -> bool {
        self.major == major && self.minor == minor
    }

    /// True from release `major.minor.0` on.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        *self >= QemuVersion::new(major, minor, 0)
    }

    /// Parses the first `N.N.N` in `text` (a `--version` line).
    pub fn parse(text: &str) -> Option<QemuVersion> {
        text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .find_map(|word| {
                let mut parts = word.split('.');
                let major = parts.next()?.parse().ok()?;
                let minor = parts.next()?.parse().ok()?;
                let micro = parts.next()?.parse().ok()?;
                parts
                    .next()
                    .is_none()
                    .then_some(QemuVersion::new(major, minor, micro))
            })
    }
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// Versions asked so far, by path.
static VERSIONS: Mutex<BTreeMap<PathBuf, QemuVersion>> = Mutex::new(BTreeMap::new());
/// Binaries the tests of this process looked up, with their versions.
static USED: Mutex<BTreeMap<PathBuf, QemuVersion>> = Mutex::new(BTreeMap::new());

/// The version of a QEMU binary (`qemu-system-*`, `qemu-storage-daemon`,
/// `qemu-ga`, `qemu-img`), from its `--version`; asked once per path and
/// process.
///
/// Panics, saying what it ran and what it printed, when the binary does not
/// run or prints no version: a test cannot choose its assertions without it.
pub fn version_of(binary: &Path) -> QemuVersion {
    if let Some(v) = lock(&VERSIONS).get(binary) {
        return *v;
    }
    let v = ask_version(binary);
    lock(&VERSIONS).insert(binary.to_owned(), v);
    v
}

fn lock(
    map: &'static Mutex<BTreeMap<PathBuf, QemuVersion>>,
) -> std::sync::MutexGuard<'static, BTreeMap<PathBuf, QemuVersion>> {
    map.lock().unwrap_or_else(|p| p.into_inner())
}

fn ask_version(binary: &Path) -> QemuVersion {
    let out = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --version: {e}", binary.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .and_then(QemuVersion::parse)
        .unwrap_or_else(|| {
            panic!(
                "{} --version printed no version ({}): {text:?} {:?}",
                binary.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// Called on every successful lookup: learns the version, says it once per
/// binary and process, and arms the panic note.
pub(crate) fn announce(name: &str, binary: &Path) {
    let version = version_of(binary);
    if lock(&USED).insert(binary.to_owned(), version).is_none() {
        crate::loud(&format!(
            "qemu-testkit: {name} {version} ({})",
            binary.display()
        ));
    }
    install_panic_note();
}

/// A panic hook that, after the usual report, names the QEMU binaries this
/// test process uses. It writes with `eprintln!`, so libtest shows it in the
/// failing test's own output.
fn install_panic_note() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let used = USED.try_lock().map(|m| describe(&m)).unwrap_or_default();
            if !used.is_empty() {
                eprintln!("(this test ran against {used})");
            }
        }));
    });
}

fn describe(used: &BTreeMap<PathBuf, QemuVersion>) -> String {
    used.iter()
        .map(|(path, version)| {
            let name = path.file_name().unwrap_or(path.as_os_str());
            format!("{} {version} at {}", name.to_string_lossy(), path.display())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_version_lines_of_each_binary() {
        for (line, expected) in [
            (
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)",
                QemuVersion::new(10, 0, 2),
            ),
            (
                "qemu-storage-daemon version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)",
                QemuVersion::new(7, 2, 22),
            ),
            ("QEMU Guest Agent 7.2.22", QemuVersion::new(7, 2, 22)),
            ("qemu-img version 8.2.90", QemuVersion::new(8, 2, 90)),
        ] {
            assert_eq!(QemuVersion::parse(line), Some(expected), "{line}");
        }
        assert_eq!(QemuVersion::parse("no version here 1.2"), None);
        assert_eq!(QemuVersion::parse("1.2.3.4"), None);
    }

    #[test]
    fn versions_compare_as_releases() {
        let v = QemuVersion::new(7, 2, 22);
        assert!(v.is(7, 2) && !v.is(7, 1));
        assert!(v.at_least(7, 2) && !v.at_least(8, 0));
        assert!(QemuVersion::new(10, 0, 2).at_least(8, 0));
        assert!(QemuVersion::new(10, 0, 0) > v);
        assert_eq!(v.to_string(), "7.2.22");
    }
}
