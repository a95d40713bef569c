//! `qemu-jobs`: a running QEMU's jobs (backup, mirror, stream, commit,
//! `blockdev-create`, snapshots): list them, follow them with progress bars
//! (or plain lines, or JSON), start one and follow it to its outcome, and
//! cancel, pause, resume, complete or dismiss one. Built on [`qemu_jobs`].

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use qemu_qapi::typed::TypedClient;
use qemu_qapi_types::{JobCancel, JobComplete, JobDismiss, JobPause, JobResume};
use qemu_qmp::{Address, Client};
use qemu_tools::exit;
use qemu_tools::jobs::{job_command, list, run_job, watch, Failure, JobCommand, Mode, PREFIX};

const INTRO: &str = "\
Progress: on a terminal, `watch` and `run` show one bar per job (percent,
bytes, rate, time left); otherwise one line per change of a job,
`ID STATUS CURRENT/TOTAL PERCENT RATE eta ETA` (progress alone at most once a
second), and a last line with how the job ended (completed, cancelled,
failed, QEMU's error in parentheses); with --json, one JSON object per change.
`watch` follows the jobs running when it starts and those that appear, and
ends when all have ended; it dismisses nothing. `run` takes a command in
qmp-shell syntax (`blockdev-backup job-id=b device=src target=dst
sync=full`); without job-id, the job is named after `device`, as in QEMU.";

const STATUS_HELP: &str = "\
`watch` and `run` exit 0 when every job followed completed, 1 when one failed
or was cancelled (QEMU's error on stderr); `watch` with no job to follow says
so and exits 0.";

/// Follow, start and control a QEMU's jobs.
#[derive(Debug, Parser)]
#[command(
    name = "qemu-jobs",
    version,
    after_help = exit::after_help(INTRO, STATUS_HELP)
)]
struct Cli {
    /// QMP socket path or address (host:port). May also be set via the QMP_SOCKET
    /// environment variable.
    #[arg(
        long,
        short = 's',
        env = "QMP_SOCKET",
        global = true,
        value_name = "SOCKET"
    )]
    socket: Option<String>,

    /// Seconds to wait for QEMU: to connect, and for each reply (not for a
    /// job to end).
    #[arg(long, short = 't', global = true, default_value = "30", value_name = "SECONDS",
          value_parser = exit::parse_seconds)]
    timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the jobs (`query-jobs`): id, type, status, progress, error.
    List {
        /// One JSON object per job, as QEMU gives it.
        #[arg(long)]
        json: bool,
    },
    /// Follow the running jobs (or those named) until all have ended.
    Watch {
        /// One JSON object per change.
        #[arg(long)]
        json: bool,
        /// The jobs to follow (default: every job, and those that appear).
        #[arg(value_name = "ID")]
        ids: Vec<String>,
    },
    /// Start a job with a command in qmp-shell syntax and follow it.
    Run {
        /// One JSON object per change.
        #[arg(long)]
        json: bool,
        /// The command and its arguments (`blockdev-backup job-id=b device=src
        /// target=dst sync=full`), as one argument or several.
        #[arg(value_name = "COMMAND", required = true, num_args = 1.., trailing_var_arg = true,
              allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Cancel a job (`job-cancel`).
    Cancel {
        /// The job.
        id: String,
    },
    /// Pause a job (`job-pause`).
    Pause {
        /// The job.
        id: String,
    },
    /// Resume a paused job (`job-resume`).
    Resume {
        /// The job.
        id: String,
    },
    /// Complete a ready job (`job-complete`: a mirror pivots).
    Complete {
        /// The job.
        id: String,
    },
    /// Dismiss a concluded job (`job-dismiss`).
    Dismiss {
        /// The job.
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    exit::init_logging();
    let Some(socket) = cli.socket.as_deref().filter(|s| !s.is_empty()) else {
        exit::usage_error::<Cli>("No QMP socket path or address given (use --socket or QMP_SOCKET)")
    };
    let address = exit::parse_address::<Cli>(socket);
    // `run`'s command is parsed before connecting: a wrong one is bad usage.
    let start = match &cli.command {
        Command::Run { command, .. } => {
            Some(job_command(&command.join(" ")).unwrap_or_else(|e| exit::usage_error::<Cli>(e)))
        }
        _ => None,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return exit::fail(PREFIX, format!("cannot start the async runtime: {e}")),
    };
    match rt.block_on(run(address, cli.timeout, cli.command, start)) {
        Ok(true) => ExitCode::from(exit::SUCCESS),
        Ok(false) => ExitCode::from(exit::FAILURE),
        Err(e) if e.is_broken_pipe() => ExitCode::from(exit::SUCCESS),
        Err(e) => exit::fail_with(PREFIX, &e),
    }
}

/// Runs a subcommand; `Ok(false)` when a job followed did not complete.
async fn run(
    address: Address,
    timeout: Duration,
    command: Command,
    start: Option<JobCommand>,
) -> Result<bool, Failure> {
    let client = Client::builder()
        .name("qemu-jobs")
        .preserve_order(true)
        .connect_timeout(timeout)
        .command_timeout(timeout)
        .connect(address)
        .await?;
    let qmp = TypedClient::new(client.clone());
    let result = run_command(&qmp, command, start).await;
    let _ = client.disconnect().await;
    result
}

async fn run_command(
    qmp: &TypedClient,
    command: Command,
    start: Option<JobCommand>,
) -> Result<bool, Failure> {
    match command {
        Command::List { json } => list(qmp, json).await.map(|()| true),
        Command::Watch { json, ids } => watch(qmp, ids, Mode::detect(json)).await,
        Command::Run { json, .. } => {
            let start = start.expect("parsed before connecting");
            run_job(qmp, start, Mode::detect(json)).await
        }
        Command::Cancel { id } => Ok(qmp.call(JobCancel::new(id)).await.map(|_| true)?),
        Command::Pause { id } => Ok(qmp.call(JobPause::new(id)).await.map(|_| true)?),
        Command::Resume { id } => Ok(qmp.call(JobResume::new(id)).await.map(|_| true)?),
        Command::Complete { id } => Ok(qmp.call(JobComplete::new(id)).await.map(|_| true)?),
        Command::Dismiss { id } => Ok(qmp.call(JobDismiss::new(id)).await.map(|_| true)?),
    }
}
