//! `qemu-ga-client`: talk to a QEMU guest agent, with the subcommands and output of
//! QEMU's Python `qemu-ga-client`, plus `exec` and `osinfo`.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use qemu_qmp::Address;
use qemu_tools::exit;
use qemu_tools::ga::{self, GaError, GuestAgent, ShutdownMode, SuspendMode};

/// This tool's exit statuses, besides the convention.
const EXIT_HELP: &str = "\
`exec` exits with the guest program's status (128+N when a signal N killed it),
or 1 when it cannot be run or its status cannot be had.";

/// QEMU guest agent client.
///
/// Start QEMU with a guest agent channel, e.g.
///
///   qemu-system-x86_64 [...] \
///     -chardev socket,path=/tmp/qga.sock,server=on,wait=off,id=qga0 \
///     -device virtio-serial \
///     -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0
///
/// then run `qemu-ga-client --address /tmp/qga.sock COMMAND [ARGS...]`.
#[derive(Debug, Parser)]
#[command(
    name = "qemu-ga-client",
    version,
    verbatim_doc_comment,
    after_help = exit::after_help("", EXIT_HELP)
)]
struct Cli {
    /// The agent's Unix socket path, or host:port. May also be set via the
    /// QGA_CLIENT_ADDRESS environment variable.
    #[arg(
        long,
        env = "QGA_CLIENT_ADDRESS",
        global = true,
        value_name = "ADDRESS"
    )]
    address: Option<String>,

    /// Seconds to wait for the agent: to connect and synchronise, and for each reply
    /// (file system freeze, thaw and trim get at least 60).
    #[arg(long, short = 't', global = true, default_value = "3", value_name = "SECONDS",
          value_parser = parse_seconds)]
    timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a file of the guest (opened read-only).
    Cat {
        /// The file's path in the guest.
        file: String,
    },
    /// Run a program in the guest; print its output and exit with its status.
    Exec {
        /// Seconds to wait for the program to finish.
        #[arg(long, default_value = "60", value_name = "SECONDS", value_parser = parse_seconds)]
        wait: Duration,
        /// The program (searched in the guest's PATH).
        program: String,
        /// Its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Freeze or thaw the guest's file systems, or show whether they are frozen.
    Fsfreeze {
        #[arg(value_enum)]
        action: FreezeAction,
    },
    /// Discard unused blocks of the guest's file systems.
    Fstrim {
        /// Skip free ranges smaller than this many bytes.
        #[arg(default_value_t = 0)]
        minimum: u64,
    },
    /// Halt the guest.
    Halt,
    /// Show the guest's network interfaces.
    Ifconfig,
    /// Show the agent's version and commands.
    Info,
    /// Show the guest's operating system.
    Osinfo,
    /// Check that the agent answers.
    Ping {
        /// Seconds to wait for the answer (default: --timeout).
        #[arg(id = "ping_timeout", value_name = "TIMEOUT", value_parser = check_seconds)]
        seconds: Option<String>,
    },
    /// Power the guest off.
    Powerdown,
    /// Reboot the guest.
    Reboot,
    /// Power the guest off (same as powerdown).
    Shutdown,
    /// Suspend the guest.
    Suspend {
        #[arg(value_enum)]
        mode: Mode,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FreezeAction {
    Status,
    Freeze,
    Thaw,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Disk,
    Ram,
    Hybrid,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err(format!("'{s}': the timeout must be more than 0"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}': too long"))
}

/// [`parse_seconds`], keeping the text as typed (for `Not responded in TIMEOUT sec`).
fn check_seconds(s: &str) -> Result<String, String> {
    parse_seconds(s).map(|_| s.to_owned())
}

/// What went wrong, for the one line printed before exiting with status 1.
enum Failure {
    Agent(GaError),
    Message(String),
}

impl From<GaError> for Failure {
    fn from(e: GaError) -> Self {
        Failure::Agent(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Agent(GaError::Output(e))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    exit::init_logging();
    let Some(text) = cli.address.as_deref().filter(|a| !a.is_empty()) else {
        exit::usage_error::<Cli>("address is not specified (use --address or QGA_CLIENT_ADDRESS)")
    };
    let address = exit::parse_address::<Cli>(text);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return exit::fail(
                "qemu-ga-client: ",
                format!("cannot start the async runtime: {e}"),
            )
        }
    };
    match rt.block_on(run(address, cli.timeout, cli.command)) {
        Ok(code) => code,
        Err(Failure::Agent(e)) if e.is_broken_pipe() => ExitCode::from(exit::SUCCESS),
        Err(Failure::Agent(e)) => exit::fail("qemu-ga-client: ", e),
        Err(Failure::Message(m)) => exit::fail("qemu-ga-client: ", m),
    }
}

async fn run(address: Address, timeout: Duration, command: Command) -> Result<ExitCode, Failure> {
    if let Command::Ping { seconds } = &command {
        return ping(address, seconds.as_deref(), timeout).await;
    }
    let agent = GuestAgent::connect(address, timeout).await?;
    let result = run_command(&agent, command).await;
    agent.disconnect().await;
    result
}

/// `ping [TIMEOUT]`: connect, synchronise and ping, all within the timeout.
async fn ping(address: Address, arg: Option<&str>, default: Duration) -> Result<ExitCode, Failure> {
    let (timeout, shown) = match arg {
        Some(s) => (parse_seconds(s).map_err(Failure::Message)?, s.to_owned()),
        None => (default, format!("{}", default.as_secs_f64())),
    };
    let not_responded = || Failure::Message(format!("Not responded in {shown} sec"));
    let start = Instant::now();
    let agent = match GuestAgent::connect(address, timeout).await {
        Ok(a) => a,
        Err(e) if e.is_timeout() => return Err(not_responded()),
        Err(e) => return Err(e.into()),
    };
    let left = timeout
        .saturating_sub(start.elapsed())
        .max(Duration::from_millis(1));
    let result = agent.execute_within("guest-ping", None, left).await;
    agent.disconnect().await;
    match result {
        Ok(_) => Ok(ExitCode::from(exit::SUCCESS)),
        Err(e) if e.is_timeout() => Err(not_responded()),
        Err(e) => Err(e.into()),
    }
}

async fn run_command(agent: &GuestAgent, command: Command) -> Result<ExitCode, Failure> {
    let mut out = io::stdout().lock();
    match command {
        Command::Cat { file } => {
            agent.read_file_to(&file, &mut out).await?;
        }
        Command::Exec {
            wait,
            program,
            args,
        } => {
            drop(out);
            return exec(agent, &program, &args, wait).await;
        }
        Command::Fsfreeze { action } => match action {
            FreezeAction::Status => writeln!(out, "{}", agent.fsfreeze_status().await?)?,
            FreezeAction::Freeze => {
                writeln!(out, "{} filesystems frozen", agent.fsfreeze_freeze().await?)?
            }
            FreezeAction::Thaw => {
                writeln!(out, "{} filesystems thawed", agent.fsfreeze_thaw().await?)?
            }
        },
        Command::Fstrim { minimum } => {
            let rsp = agent.fstrim(minimum).await?;
            writeln!(out, "{}", qemu_tools::qom::python_str(&rsp))?;
        }
        Command::Halt => agent.shutdown(ShutdownMode::Halt).await?,
        Command::Powerdown | Command::Shutdown => agent.shutdown(ShutdownMode::Powerdown).await?,
        Command::Reboot => agent.shutdown(ShutdownMode::Reboot).await?,
        Command::Suspend { mode } => {
            let mode = match mode {
                Mode::Disk => SuspendMode::Disk,
                Mode::Ram => SuspendMode::Ram,
                Mode::Hybrid => SuspendMode::Hybrid,
            };
            agent.suspend(mode).await?;
        }
        Command::Ifconfig => {
            let nifs = agent.network_interfaces().await?;
            out.write_all(ga::format_ifconfig(&nifs).as_bytes())?;
        }
        Command::Info => {
            let info = agent.info().await?;
            out.write_all(ga::format_info(&info).as_bytes())?;
        }
        Command::Osinfo => {
            let info = agent.osinfo().await?;
            out.write_all(ga::format_osinfo(&info).as_bytes())?;
        }
        // Handled by `ping()`, which connects differently.
        Command::Ping { .. } => {}
    }
    out.flush()?;
    Ok(ExitCode::from(exit::SUCCESS))
}

/// `exec`: the guest's standard output and error go to ours, then `exitcode: N` (or
/// `signal: N`) on standard error; our exit status is the program's.
async fn exec(
    agent: &GuestAgent,
    program: &str,
    args: &[String],
    wait: Duration,
) -> Result<ExitCode, Failure> {
    let status = agent.exec(program, args, wait).await?;
    {
        let mut out = io::stdout().lock();
        out.write_all(&status.stdout)?;
        out.flush()?;
    }
    let mut err = io::stderr().lock();
    err.write_all(&status.stderr)?;
    if status.stdout_truncated {
        writeln!(
            err,
            "qemu-ga-client: the agent truncated the standard output"
        )?;
    }
    if status.stderr_truncated {
        writeln!(
            err,
            "qemu-ga-client: the agent truncated the standard error"
        )?;
    }
    let code = match (status.exit_code, status.signal) {
        (_, Some(sig)) => {
            writeln!(err, "signal: {sig}")?;
            128 + sig.clamp(0, 127)
        }
        (Some(code), None) => {
            writeln!(err, "exitcode: {code}")?;
            if (0..=255).contains(&code) {
                code
            } else {
                i64::from(exit::FAILURE)
            }
        }
        (None, None) => {
            writeln!(err, "exitcode: unknown")?;
            i64::from(exit::FAILURE)
        }
    };
    Ok(ExitCode::from(code as u8))
}
