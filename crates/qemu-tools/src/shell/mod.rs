//! The QMP shell behind `qmp-shell` and `qmp-shell-wrap` (QEMU's Python
//! `qemu.qmp.qmp_shell`).
//!
//! A [`Shell`] runs over any connected [`qemu_qmp::Client`]: one connected to a socket
//! address (`qmp-shell`), or the client of a QEMU launched by
//! [`qemu_machine::QemuMachine`] (`qmp-shell-wrap`).
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use qemu_tools::shell::{self, ShellOptions};
//! let client = qemu_qmp::Client::connect("/run/vm1/qmp.sock").await.map_err(std::io::Error::other)?;
//! let outcome = shell::run(client, ShellOptions::detect()).await?;
//! std::process::exit(outcome.exit_code().into());
//! # }
//! ```
//!
//! The parts:
//!
//! - [`parser`]: the input grammar (`command key=value ...`, JSON, transactions), pure;
//! - [`display`]: how replies and events are printed (the layout of Python's
//!   `json.dumps`);
//! - [`complete`]: tab completion from the live `query-commands` and
//!   `query-qmp-schema` (or HMP's `help`);
//! - [`input`]: the line editor thread, piped input, the history file;
//! - [`runner`]: the loop that ties them together;
//! - [`cli`]: what the two binaries share.
//!
//! # Behaviour, compared with QEMU's Python shell
//!
//! Kept: the grammar, prompts (`(QEMU) `, `TRANS> `), banner, the history file
//! `~/.qmp-shell_history` with 1024 entries, completion of command names, the HMP mode
//! with `cpu N`, `-v`/`-p`/`-l`/`-N`, replies printed whole as JSON, parse errors that
//! do not end the shell, EOF (Ctrl-D) to leave.
//!
//! Changed: events are printed as they arrive, above the prompt, instead of when an
//! empty line is entered; arguments complete too; the HMP mode sends `cpu-index` only
//! after `cpu N` (Python always sent 0, which fails on a machine without CPUs); `-l`
//! works in `qmp-shell` (in Python it turned the shell into a server and removed
//! QEMU's socket); the address may come from `$QMP_SOCKET`; Ctrl-C cancels the line
//! (or the wait for a reply) instead of killing the shell; when stdin is not a
//! terminal there is no banner or prompt and the exit status is 1 if any command
//! failed; with `-N`, QEMU's greeting is taken out quietly and never mistaken for a
//! reply (Python's client dropped it, or gave it as the reply to a command already
//! waiting); the value-parsing fixes listed in [`parser`]; in QMP mode each command
//! is checked against the peer's `query-qmp-schema` (asked once at start) and, if
//! refused, not sent, its error reply printed in QEMU's place ([`runner::refusal`],
//! [`ShellOptions::check`], `--no-check`).

pub mod cli;
pub mod complete;
pub mod display;
pub mod input;
pub mod parser;
pub mod runner;

pub use runner::{run, Mode, Outcome, Shell, ShellOptions, PROMPT, TRANSACTION_PROMPT};
