//! The exit statuses and error reporting every tool of this crate shares, in one
//! place.
//!
//! | status | meaning | where it is said |
//! |---|---|---|
//! | [`SUCCESS`] (0) | done | |
//! | [`FAILURE`] (1) | QEMU or the agent refused a command, the connection could not be made, was lost or timed out, a piped `qmp-shell` had a command fail, a local file could not be read or written | one line on stderr |
//! | [`USAGE`] (2) | the command line is wrong: anything found before connecting (unknown option, missing or malformed argument, a port that is not a number) | clap's usage message on stderr |
//! | [`INTERRUPTED`] (130) | a piped `qmp-shell` stopped by Ctrl-C (`SIGINT`) | |
//! | [`TERMINATED`] (143) | `qmp-shell`/`qmp-shell-wrap` ended by `SIGTERM` or `SIGHUP` | |
//!
//! `--help` and `--version` print to stdout and exit 0, as clap does. Three tools
//! add their own: `qemu-ga-client exec` exits with the guest program's status,
//! `qmp-test-server` exits 0 when stopped by `SIGINT` or `SIGTERM`, and `qom-fuse`
//! exits 0 when stopped by `SIGINT`, `SIGTERM` or `SIGHUP` (it unmounts first).
//!
//! [`HELP`] is the text each tool's `--help` shows ([`after_help`]); [`usage_error`]
//! and [`fail`] report the two kinds of error.

use std::error::Error;
use std::fmt::Display;
use std::process::ExitCode;

use clap::CommandFactory;

/// Success.
pub const SUCCESS: u8 = 0;
/// A failure found after the command line was accepted: QEMU (or the guest agent)
/// answered with an error, the connection failed, ended or timed out, ...
pub const FAILURE: u8 = 1;
/// Bad usage: the command line is wrong. clap's own status for usage errors.
pub const USAGE: u8 = 2;
/// Stopped by Ctrl-C (128 + `SIGINT`).
pub const INTERRUPTED: u8 = 130;
/// Stopped by `SIGTERM` or `SIGHUP` (128 + `SIGTERM`).
pub const TERMINATED: u8 = 143;

/// The exit-status section of every tool's `--help`.
pub const HELP: &str = "\
Exit status:
  0  success
  1  failure: QEMU (or the guest agent) refused a command, or the connection
     could not be made, was lost or timed out; one line on stderr says why
  2  bad usage: the command line is wrong (a usage message on stderr)";

/// A tool's `--help` epilogue: `intro` (may be empty), [`HELP`], then `extra`, a
/// paragraph about this tool's own statuses (may be empty).
pub fn after_help(intro: &str, extra: &str) -> String {
    let mut s = String::new();
    if !intro.is_empty() {
        s.push_str(intro.trim_end());
        s.push_str("\n\n");
    }
    s.push_str(HELP);
    if !extra.is_empty() {
        s.push_str("\n\n");
        s.push_str(extra.trim_end());
    }
    s
}

/// Report bad usage the way clap does (`error: MESSAGE`, the usage line, a hint to
/// `--help`, on stderr) and exit with [`USAGE`].
pub fn usage_error<C: CommandFactory>(message: impl Display) -> ! {
    C::command()
        .error(clap::error::ErrorKind::ValueValidation, message)
        .exit()
}

/// Parse a QMP or agent address given on the command line (or in the environment);
/// a malformed one (e.g. a port that is not a number) is a usage error.
pub fn parse_address<C: CommandFactory>(text: &str) -> qemu_qmp::Address {
    match text.parse() {
        Ok(a) => a,
        Err(e) => usage_error::<C>(e),
    }
}

/// Parse a timeout given in seconds on the command line (`--timeout 2.5`): a
/// positive, finite number; for clap's `value_parser`.
pub fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err(format!("'{s}': the timeout must be more than 0"));
    }
    std::time::Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}': too long"))
}

/// Log the library's diagnostics to stderr when `RUST_LOG` is set (filtered by
/// it); otherwise log nothing, so that errors stay one line.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// An error and its causes on one line, `error: cause: cause`, leaving out a cause
/// whose text is already there; line breaks inside a message become `; `.
pub fn one_line(err: &(dyn Error + 'static)) -> String {
    let mut text = flatten(&err.to_string());
    let mut source = err.source();
    while let Some(s) = source {
        let t = flatten(&s.to_string());
        if !t.is_empty() && !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

fn flatten(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Print `PREFIXMESSAGE` as one line on stderr and return [`FAILURE`]. The prefix
/// is the tool's (`qom: `; `ERROR: ` for the shells, as QEMU's Python shell).
pub fn fail(prefix: &str, message: impl Display) -> ExitCode {
    eprintln!("{prefix}{}", flatten(&message.to_string()));
    ExitCode::from(FAILURE)
}

/// [`fail`] with an error and its causes ([`one_line`]).
pub fn fail_with(prefix: &str, err: &(dyn Error + 'static)) -> ExitCode {
    fail(prefix, one_line(err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner\n  more")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn errors_fit_on_one_line() {
        let e = Outer(Inner(std::io::Error::other("root")));
        assert_eq!(one_line(&e), "outer: inner; more: root");
        assert_eq!(flatten("a\n\n  b\n"), "a; b");
    }

    #[test]
    fn help_has_the_convention() {
        let h = after_help("Intro.\n", "130: ...");
        assert!(
            h.starts_with("Intro.\n\nExit status:\n  0  success\n"),
            "{h}"
        );
        assert!(h.ends_with("usage message on stderr)\n\n130: ..."), "{h}");
        assert_eq!(after_help("", ""), HELP);
    }
}
