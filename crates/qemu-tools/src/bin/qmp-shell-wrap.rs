//! `qmp-shell-wrap`: launch QEMU and open a QMP shell on it (QEMU's Python
//! `qmp-shell-wrap`).
//!
//! ```text
//! qmp-shell-wrap [-H] [-v] [-p] [-l LOGFILE] [--no-check] [--] QEMU_BINARY ARGS...
//! ```
//!
//! QEMU is started by [`qemu_machine::QemuMachine`] with its QMP monitor on a
//! socketpair (no socket file), whose client keeps each reply's and event's member
//! order ([`qemu_machine::MachineBuilder::preserve_order`]), as `qmp-shell` does; the
//! shell runs on that connection, and leaving it shuts QEMU down through it (`quit`,
//! then SIGKILL if it does not exit).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use qemu_machine::{LaunchCause, MachineError, QemuMachine};
use qemu_tools::exit;
use qemu_tools::shell::{self, cli};

/// How long QEMU has to exit after the shell ends before it is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

const AFTER_HELP: &str = "\
Example: qmp-shell-wrap -- qemu-system-x86_64 -machine none

QEMU's output goes to a log file, shown if QEMU fails to start or exits
abnormally. Typing 'quit' stops QEMU and ends the shell; leaving the shell
(Ctrl-D) shuts QEMU down. See qmp-shell --help for the command syntax.";

/// This tool's exit statuses, besides the shell's.
const EXIT_HELP: &str = "\
1 also when QEMU cannot start or does not shut down cleanly (the error line is
followed by QEMU's command line and output).";

/// Launch QEMU and open a QMP shell on its monitor.
#[derive(Debug, Parser)]
#[command(
    name = "qmp-shell-wrap",
    version,
    after_help = exit::after_help(AFTER_HELP, &format!("{}\n\n{EXIT_HELP}", cli::EXIT_HELP))
)]
struct Cli {
    #[command(flatten)]
    shell: cli::ShellArgs,
    /// The QEMU command line: binary and arguments (default: qemu-system-x86_64)
    #[arg(
        value_name = "QEMU_COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<String>,
}

fn launch_error(binary: &str, e: &MachineError) -> String {
    if let Some(f) = e.as_launch_failure() {
        if let LaunchCause::Spawn { source, .. } = &f.cause {
            if source.kind() == std::io::ErrorKind::NotFound {
                return format!("QEMU executable '{binary}' not found.");
            }
        }
        return f.to_string();
    }
    exit::one_line(e)
}

fn main() -> ExitCode {
    let args = Cli::parse();
    cli::init_logging();
    let mut command = args.command.clone();
    if command.is_empty() {
        command.push("qemu-system-x86_64".into());
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return exit::fail("ERROR: ", format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(async move {
        let binary = command[0].clone();
        let launched = QemuMachine::builder(&binary)
            .args(command[1..].iter().cloned())
            // Replies and events are shown in the order QEMU wrote their members.
            .preserve_order(true)
            // The command line is the user's: no -display none -vga none.
            .display_none(false)
            .shutdown_timeout(SHUTDOWN_TIMEOUT)
            .launch()
            .await;
        let vm = match launched {
            Ok(vm) => vm,
            Err(e) => {
                // The first line says why; QEMU's command line and output follow.
                eprintln!("ERROR: {}", launch_error(&binary, &e));
                return ExitCode::from(exit::FAILURE);
            }
        };
        let outcome = shell::run(vm.qmp().clone(), args.shell.options()).await;
        let mut code = match &outcome {
            Ok(o) => ExitCode::from(o.exit_code()),
            Err(e) => exit::fail_with("ERROR: ", e),
        };
        if let Err(e) = vm.shutdown().await {
            eprintln!("ERROR: {}", exit::one_line(&e));
            let log = vm.log();
            if !log.trim().is_empty() {
                eprintln!("QEMU's output:\n{}", log.trim_end());
            }
            code = ExitCode::from(exit::FAILURE);
        }
        code
    })
}
