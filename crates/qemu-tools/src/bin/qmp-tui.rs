//! `qmp-tui`: a full-screen console on a QEMU QMP monitor (QEMU's Python `qmp-tui`).
//!
//! ```text
//! qmp-tui [-H] [--listen] [--no-reconnect] [--no-mouse] [-l LOGFILE] [--no-check] [ADDRESS]
//! ```
//!
//! See the crate README and [`qemu_tools::tui`].

use std::process::ExitCode;

use clap::Parser;
use qemu_tools::exit;
use qemu_tools::tui::{self, Target, TuiOptions};

const AFTER_HELP: &str = "\
Start QEMU with a monitor to connect to, e.g.:
  qemu-system-x86_64 [...] -qmp unix:./qmp-sock,server=on,wait=off
then run: qmp-tui ./qmp-sock
Or let QEMU connect to qmp-tui:
  qmp-tui --listen ./qmp-sock &   qemu-system-x86_64 [...] -qmp unix:./qmp-sock

Lines are qmp-shell commands (query-status, device_del id=net1,
transaction( ... )) or JSON requests, which may span lines. Tab completes
commands, arguments and values from QEMU's schema; F1 lists the keys; Ctrl-D
or F10 leaves. When QEMU goes away, qmp-tui reconnects (or listens again).
History: ~/.qmp-shell_history (or $QMP_SHELL_HISTORY), shared with qmp-shell.";

const EXIT_HELP: &str = "\
1 also when the connection is lost with --no-reconnect; 130 after SIGINT; 143
after SIGTERM or SIGHUP (the terminal is restored in every case).";

/// A full-screen QMP console: transcript, event pane, status line.
#[derive(Debug, Parser)]
#[command(name = "qmp-tui", version, after_help = exit::after_help(AFTER_HELP, EXIT_HELP))]
struct Cli {
    /// Use the HMP interface: lines are HMP commands, sent through
    /// human-monitor-command
    #[arg(short = 'H', long)]
    hmp: bool,
    /// Listen on ADDRESS and wait for QEMU to connect (server mode), again after
    /// each connection ends
    #[arg(long)]
    listen: bool,
    /// Leave (exit status 1) when the connection ends or cannot be made, instead of
    /// trying again
    #[arg(long = "no-reconnect")]
    no_reconnect: bool,
    /// Log every request with its reply, and every event, to FILE as JSON lines
    /// (as qmp-shell -l)
    #[arg(short, long = "logfile", value_name = "FILE")]
    logfile: Option<std::path::PathBuf>,
    /// Leave the mouse to the terminal (select text without Shift; no wheel
    /// scrolling)
    #[arg(long = "no-mouse")]
    no_mouse: bool,
    /// Send commands unchecked (by default a command QEMU's schema refuses is not
    /// sent; its error is shown in QEMU's place)
    #[arg(long = "no-check")]
    no_check: bool,
    /// QMP server: a UNIX socket path or TCP host:port
    #[arg(value_name = "ADDRESS", env = "QMP_SOCKET")]
    address: Option<String>,
}

fn main() -> ExitCode {
    let args = Cli::parse();
    exit::init_logging();
    let Some(text) = args.address.clone().filter(|a| !a.is_empty()) else {
        exit::usage_error::<Cli>("QMP socket or TCP address must be specified (or set QMP_SOCKET)")
    };
    let address = exit::parse_address::<Cli>(&text);
    {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
            return exit::fail(
                "ERROR: ",
                "qmp-tui needs a terminal (for piped input use qmp-shell)",
            );
        }
    }
    let target = if args.listen {
        Target::Listen(address)
    } else {
        Target::Connect(address)
    };
    let mut options = TuiOptions::new(target);
    options.reconnect = !args.no_reconnect;
    options.check = !args.no_check;
    options.logfile = args.logfile;
    options.mouse = !args.no_mouse;
    options.hmp = args.hmp;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return exit::fail("ERROR: ", format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(tui::run(options)) {
        Ok(outcome) => {
            for m in &outcome.messages {
                eprintln!("{m}");
            }
            ExitCode::from(outcome.code)
        }
        Err(e) => exit::fail_with("ERROR: ", &e),
    }
}
