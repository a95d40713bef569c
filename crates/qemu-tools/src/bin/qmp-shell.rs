//! `qmp-shell`: a low-level shell on a QEMU QMP monitor (QEMU's Python `qmp-shell`).
//!
//! ```text
//! qmp-shell [-H] [-N] [-v] [-p] [-l LOGFILE] [--no-check] [ADDRESS]
//! ```
//!
//! See the crate README and [`qemu_tools::shell`].

use std::process::ExitCode;

use clap::Parser;
use qemu_qmp::{Address, Client};
use qemu_tools::exit;
use qemu_tools::shell::{self, cli};

const AFTER_HELP: &str = "\
Start QEMU with a monitor to connect to, e.g.:
  qemu-system-x86_64 [...] -qmp unix:./qmp-sock,server=on,wait=off
then run: qmp-shell ./qmp-sock

Commands: <command-name> [arg-name1=arg1] ... [arg-nameN=argN]
  (QEMU) device_add driver=e1000 id=net1
  (QEMU) blockdev-add driver=null-co node-name=n0 cache.direct=false
  (QEMU) {\"execute\": \"query-status\", \"id\": 1}
Values: integers, true/false/null, JSON (or Python) objects and arrays without
bare spaces, \"quoted strings\", else the text as typed. Dotted names nest.

Transactions:
  (QEMU) transaction(
  TRANS> block-dirty-bitmap-add node=n0 name=b0
  TRANS> block-dirty-bitmap-add node=n0 name=b1
  TRANS> )
or on one line: transaction( abort )

Events are printed as they arrive. Tab completes command and argument names.
Ctrl-C cancels the line (or stops waiting for a reply); Ctrl-D leaves.
History: ~/.qmp-shell_history (or $QMP_SHELL_HISTORY).
When stdin or stdout is not a terminal, commands are read one per line, with no
banner or prompt.";

/// Low-level QEMU shell on top of QMP.
#[derive(Debug, Parser)]
#[command(name = "qmp-shell", version, after_help = exit::after_help(AFTER_HELP, cli::EXIT_HELP))]
struct Cli {
    #[command(flatten)]
    shell: cli::ShellArgs,
    /// Skip the greeting and capability negotiation (for qemu-ga, or raw use)
    #[arg(short = 'N', long = "skip-negotiation")]
    skip_negotiation: bool,
    /// QMP server: a UNIX socket path or TCP host:port
    #[arg(value_name = "ADDRESS", env = "QMP_SOCKET")]
    address: Option<String>,
}

fn main() -> ExitCode {
    let args = Cli::parse();
    cli::init_logging();
    let Some(text) = args.address.clone().filter(|a| !a.is_empty()) else {
        exit::usage_error::<Cli>("QMP socket or TCP address must be specified (or set QMP_SOCKET)")
    };
    let address: Address = exit::parse_address::<Cli>(&text);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return exit::fail("ERROR: ", format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(async move {
        // With -N the client neither waits for a greeting nor negotiates; QEMU's
        // greeting, which a monitor sends anyway, is taken as the session's.
        // Replies and events are shown in the order QEMU wrote their members.
        let connected = Client::builder()
            .name("qmp-shell")
            .preserve_order(true)
            .await_greeting(!args.skip_negotiation)
            .negotiate(!args.skip_negotiation)
            .connect(address)
            .await
            .map_err(|e| exit::one_line(&e));
        let client = match connected {
            Ok(c) => c,
            Err(e) => return exit::fail("ERROR: ", e),
        };
        let mut options = args.shell.options();
        options.skip_negotiation = args.skip_negotiation;
        let outcome = shell::run(client.clone(), options).await;
        let _ = client.disconnect().await;
        match outcome {
            Ok(o) => ExitCode::from(o.exit_code()),
            Err(e) => exit::fail_with("ERROR: ", &e),
        }
    })
}
