//! Finding the QEMU binaries, and saying loudly when a test is skipped.

use std::ffi::OsStr;
use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;

/// Environment variable that overrides the `qemu-system-x86_64` binary.
pub const QEMU_SYSTEM_ENV: &str = "QEMU_SYSTEM_X86_64";
/// Environment variable that overrides the `qemu-storage-daemon` binary.
pub const STORAGE_DAEMON_ENV: &str = "QEMU_STORAGE_DAEMON";
/// Environment variable that overrides the `qemu-ga` binary.
pub const QEMU_GA_ENV: &str = "QEMU_GA";
/// Environment variable that overrides the `qemu-img` binary.
pub const QEMU_IMG_ENV: &str = "QEMU_IMG";

/// Writes `msg` and a newline straight to stderr: not through `eprintln!`,
/// which libtest captures and only shows for failing tests.
pub fn loud(msg: &str) {
    let _ = writeln!(io::stderr().lock(), "{msg}");
}

/// The name of the running test (its thread's name), or `<unknown test>`
/// outside one (on `main`, or an unnamed thread).
pub fn test_name() -> String {
    thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("<unknown test>")
        .to_owned()
}

/// `qemu-system-x86_64` (or `$QEMU_SYSTEM_X86_64`), or `None` after printing a
/// `SKIPPED:` line. Panics when it is missing and `CI=true`.
///
/// `let Some(qemu) = qemu_testkit::qemu_system() else { return };`
pub fn qemu_system() -> Option<PathBuf> {
    find_binary("qemu-system-x86_64", QEMU_SYSTEM_ENV)
}

/// `qemu-storage-daemon` (or `$QEMU_STORAGE_DAEMON`); see [`qemu_system`].
pub fn storage_daemon() -> Option<PathBuf> {
    find_binary("qemu-storage-daemon", STORAGE_DAEMON_ENV)
}

/// `qemu-ga` (or `$QEMU_GA`); see [`qemu_system`].
pub fn qemu_ga() -> Option<PathBuf> {
    find_binary("qemu-ga", QEMU_GA_ENV)
}

/// `qemu-img` (or `$QEMU_IMG`); see [`qemu_system`].
pub fn qemu_img() -> Option<PathBuf> {
    find_binary("qemu-img", QEMU_IMG_ENV)
}

/// Returns early from the calling test (which must return `()`) when
/// `qemu-system-x86_64` is missing (see [`qemu_system`]). Use as
/// `qemu_testkit::require_qemu_system!();`.
#[macro_export]
macro_rules! require_qemu_system {
    () => {
        if $crate::qemu_system().is_none() {
            return;
        }
    };
}

/// Returns early from the calling test when `qemu-storage-daemon` is missing
/// (see [`storage_daemon`]). Use as `qemu_testkit::require_storage_daemon!();`.
#[macro_export]
macro_rules! require_storage_daemon {
    () => {
        if $crate::storage_daemon().is_none() {
            return;
        }
    };
}

/// Finds `name`: the path in `env_var` if that is set (a bare name in it is
/// looked up in `PATH`), else `name` in `PATH`.
///
/// The first time a process finds a binary, it writes `qemu-testkit: <name>
/// <version> (<path>)` to stderr, and a test that panics later names it in
/// its failure report (see [`version_of`](crate::version_of)).
///
/// When it is not found: panics if `CI` is `true` or `1`, otherwise writes
/// `SKIPPED: <test> needs <name>, ...` to stderr (bypassing libtest's output
/// capture so it is always visible) and returns `None`.
pub fn find_binary(name: &str, env_var: &str) -> Option<PathBuf> {
    match locate_binary(name, env_var) {
        Ok(path) => {
            crate::version::announce(name, &path);
            Some(path)
        }
        Err(why) => {
            if is_ci() {
                panic!(
                    "{name} not found and CI=true: install it with apt-get install -y {} ({why})",
                    debian_package(name)
                );
            }
            loud(&format!("SKIPPED: {} needs {name}, {why}", test_name()));
            None
        }
    }
}

/// True when the `CI` environment variable is `true` (any case) or `1`.
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn debian_package(name: &str) -> &'static str {
    match name {
        "qemu-system-x86_64" => "qemu-system-x86",
        // In qemu-system-common, which qemu-system-x86 depends on.
        "qemu-storage-daemon" => "qemu-system-x86",
        "qemu-ga" => "qemu-guest-agent",
        "qemu-img" | "qemu-nbd" | "qemu-io" => "qemu-utils",
        _ => "<the package that provides it>",
    }
}

/// Side-effect-free lookup of `name` as in [`find_binary`] (no `SKIPPED:`
/// line, no panic); the error says why it was not found.
pub fn locate_binary(name: &str, env_var: &str) -> Result<PathBuf, String> {
    if let Some(value) = std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        let candidate = PathBuf::from(&value);
        let found = if candidate.components().count() > 1 {
            is_executable_file(&candidate).then_some(candidate)
        } else {
            search_path(&value)
        };
        return found.ok_or_else(|| {
            format!(
                "{env_var}={} is not an executable file",
                Path::new(&value).display()
            )
        });
    }
    search_path(OsStr::new(name)).ok_or_else(|| "not found in PATH".to_owned())
}

/// `name` in a directory of `PATH`, if it is an executable file there (no
/// `SKIPPED:` line, no panic).
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    search_path(OsStr::new(name))
}

fn search_path(name: &OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable_file(candidate))
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Like the public lookups but for constructors that cannot return `None`.
pub(crate) fn require_binary(name: &str, env_var: &str) -> PathBuf {
    let path = locate_binary(name, env_var).unwrap_or_else(|why| {
        panic!(
            "{name}: {why}. Start the test with \
             `let Some(_) = qemu_testkit::{}() else {{ return }};` so it is skipped when QEMU is absent",
            if name == "qemu-storage-daemon" {
                "storage_daemon"
            } else {
                "qemu_system"
            }
        )
    });
    crate::version::announce(name, &path);
    path
}

/// Whether `binary` (a `qemu-system-*`) lists the qtest accelerator in
/// `-accel help`. Panics if it cannot be run.
pub fn has_qtest_accel(binary: &Path) -> bool {
    let out = std::process::Command::new(binary)
        .args(["-accel", "help"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run qemu -accel help");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "qtest")
}
