//! What the `qmp-shell` and `qmp-shell-wrap` binaries share: their common options,
//! logging, and the exit statuses they add to the convention of [`crate::exit`].

use std::path::PathBuf;

use super::runner::{Mode, ShellOptions};

/// The shells' own exit statuses, after [`crate::exit::HELP`] in `--help`.
pub const EXIT_HELP: &str = "\
When stdin or stdout is not a terminal, the shell reads to the end of its input
and then exits 1 if any command failed (an error reply, a line that did not parse),
else 0; at a terminal, failed commands do not change the exit status.
1 also when the connection to QEMU is lost; 130 after Ctrl-C (piped input);
143 after SIGTERM or SIGHUP.";

/// The options both shells take (as QEMU's Python shells).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ShellArgs {
    /// Use the HMP interface: lines are HMP commands, sent through
    /// human-monitor-command
    #[arg(short = 'H', long)]
    pub hmp: bool,
    /// Verbose: echo each QMP request before its reply
    #[arg(short, long)]
    pub verbose: bool,
    /// Pretty-print JSON (indented, keys sorted)
    #[arg(short, long)]
    pub pretty: bool,
    /// Log every request with its reply, and every event, to FILE as JSON lines
    #[arg(short, long = "logfile", value_name = "FILE")]
    pub logfile: Option<PathBuf>,
    /// Send commands unchecked. By default (QMP mode) each command is first
    /// checked against QEMU's schema (query-qmp-schema, asked once at start); one
    /// the schema refuses is not sent, and an error reply is printed in QEMU's
    /// place: {"error": {"class": "CommandNotFound" or "GenericError", "desc":
    /// "... (not sent)"}}. It counts as a failed command. Without a schema (a peer
    /// that does not answer query-qmp-schema), nothing is checked
    #[arg(long = "no-check")]
    pub no_check: bool,
}

impl ShellArgs {
    /// The shell options these arguments ask for (interactive when stdin and stdout
    /// are terminals; history in `$QMP_SHELL_HISTORY` or `~/.qmp-shell_history`).
    pub fn options(&self) -> ShellOptions {
        let mut o = ShellOptions::detect();
        o.mode = if self.hmp { Mode::Hmp } else { Mode::Qmp };
        o.verbose = self.verbose;
        o.pretty = self.pretty;
        o.logfile = self.logfile.clone();
        o.check = !self.no_check;
        o
    }
}

/// Log library diagnostics to stderr, filtered by `RUST_LOG` (default: warnings),
/// without timestamps, in colour only on a terminal.
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_target(false)
        .try_init();
}
