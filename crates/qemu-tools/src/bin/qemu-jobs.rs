//! `qemu-jobs`: a running QEMU's jobs (backup, mirror, stream, commit,
//! `blockdev-create`, snapshots): list them, follow them with progress bars
//! (or plain lines, or JSON), start one and follow it to its outcome, and
//! cancel, pause, resume, complete or dismiss one. Built on [`qemu_jobs`].

use std::collections::{HashMap, HashSet};
use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use qemu_jobs::{Job, JobError, JobOptions, JobState, JobStatus, Outcome, Progress};
use qemu_qapi::typed::{CallError, TypedClient};
use qemu_qapi_types::{
    Event, JobCancel, JobComplete, JobDismiss, JobPause, JobResume, JobType, QueryJobs,
};
use qemu_qmp::json::Ordered;
use qemu_qmp::{Address, Client, Value};
use qemu_tools::exit;
use qemu_tools::shell::parser::{CommandParser, Parsed};
use tokio::sync::mpsc;

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

/// The commands that start a job, which `run` takes.
const JOB_COMMANDS: &[&str] = &[
    "blockdev-backup",
    "drive-backup",
    "blockdev-mirror",
    "drive-mirror",
    "block-stream",
    "block-commit",
    "blockdev-create",
    "blockdev-amend",
    "x-blockdev-amend",
    "snapshot-save",
    "snapshot-load",
    "snapshot-delete",
];

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
          value_parser = parse_seconds)]
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

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err(format!("'{s}': the timeout must be more than 0"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}': too long"))
}

fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(io::stderr)
            .try_init();
    }
}

/// Why a subcommand failed: printed as one line.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(transparent)]
    Qmp(#[from] qemu_qmp::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Failure {
    fn is_broken_pipe(&self) -> bool {
        matches!(self, Failure::Io(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

const PREFIX: &str = "qemu-jobs: ";

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
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

/// A command that starts a job: its name (one of [`JOB_COMMANDS`]) and
/// arguments, with a `job-id`.
#[derive(Debug, PartialEq)]
struct JobCommand {
    name: String,
    arguments: serde_json::Map<String, Value>,
}

/// Parses `line` (qmp-shell syntax, or a JSON request) into a command that
/// starts a job.
fn job_command(line: &str) -> Result<JobCommand, String> {
    let parsed = CommandParser::new()
        .parse(line)
        .map_err(|e| format!("{line:?}: {e}"))?;
    let (name, arguments) = match parsed {
        Parsed::Command { name, arguments } => (name, arguments.to_value()),
        Parsed::Raw(obj) => {
            let v = obj.to_value();
            let name = v
                .get("execute")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{line:?}: no \"execute\""))?
                .to_owned();
            let args = v
                .get("arguments")
                .cloned()
                .unwrap_or(Value::Object(Default::default()));
            (name, args)
        }
        Parsed::Nothing => return Err("no command given".into()),
    };
    if !JOB_COMMANDS.contains(&name.as_str()) {
        return Err(format!(
            "{name} does not start a job; one of: {}",
            JOB_COMMANDS.join(", ")
        ));
    }
    let Value::Object(mut arguments) = arguments else {
        return Err(format!("{name}: the arguments are not an object"));
    };
    if !arguments.contains_key("job-id") {
        // QEMU names a block job after its device when it is given no id.
        match arguments.get("device").cloned() {
            Some(Value::String(d)) => {
                arguments.insert("job-id".into(), Value::String(d));
            }
            _ => return Err(format!("{name}: give the job an id (job-id=ID)")),
        }
    }
    Ok(JobCommand { name, arguments })
}

/// The job-starting commands as typed commands whose arguments are given
/// whole ([`Job::start`] takes a typed command; the QEMU's schema checks the
/// arguments before they are sent).
macro_rules! job_commands {
    ($($ty:ident = $name:literal,)*) => {
        $(
            struct $ty(serde_json::Map<String, Value>);
            impl serde::Serialize for $ty {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    self.0.serialize(s)
                }
            }
            impl qemu_qapi::typed::Command for $ty {
                const NAME: &'static str = $name;
                type Returns = Value;
            }
        )*

        async fn start_job(
            qmp: &TypedClient,
            command: JobCommand,
            options: JobOptions,
        ) -> Result<Job, JobError> {
            match command.name.as_str() {
                $($name => Job::start(qmp, $ty(command.arguments), options).await,)*
                other => unreachable!("{other} was checked to start a job"),
            }
        }
    };
}

job_commands! {
    BlockdevBackup = "blockdev-backup",
    DriveBackup = "drive-backup",
    BlockdevMirror = "blockdev-mirror",
    DriveMirror = "drive-mirror",
    BlockStream = "block-stream",
    BlockCommit = "block-commit",
    BlockdevCreate = "blockdev-create",
    BlockdevAmend = "blockdev-amend",
    XBlockdevAmend = "x-blockdev-amend",
    SnapshotSave = "snapshot-save",
    SnapshotLoad = "snapshot-load",
    SnapshotDelete = "snapshot-delete",
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

/// `list`.
async fn list(qmp: &TypedClient, json: bool) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    if json {
        // QEMU's own objects, members in its order.
        let jobs = qmp.client().request("query-jobs").send_ordered().await?;
        if let Ordered::Array(jobs) = jobs {
            for job in jobs {
                writeln!(out, "{job}")?;
            }
        }
    } else {
        let jobs = qmp.call(QueryJobs::new()).await?;
        let rows: Vec<[String; 5]> = jobs
            .iter()
            .map(|j| {
                [
                    j.id.clone(),
                    j.type_.as_str().to_owned(),
                    j.status.as_str().to_owned(),
                    format!("{}/{}", j.current_progress, j.total_progress),
                    j.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.write_all(format_table(&rows).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// The jobs as aligned columns under a header; nothing when there is none.
fn format_table(rows: &[[String; 5]]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let header = ["ID", "TYPE", "STATUS", "PROGRESS", "ERROR"].map(String::from);
    let all: Vec<&[String; 5]> = std::iter::once(&header).chain(rows).collect();
    let widths: Vec<usize> = (0..5)
        .map(|c| all.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut s = String::new();
    for row in all {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', widths[c] - cell.chars().count()));
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// indicatif bars on stdout, a terminal.
    Bars,
    /// Plain lines.
    Lines,
    /// JSON lines.
    Json,
}

impl Mode {
    fn detect(json: bool) -> Mode {
        if json {
            Mode::Json
        } else if io::stdout().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        }
    }
}

/// The minimum time between two lines of a job that only say its progress.
const LINE_INTERVAL: Duration = Duration::from_secs(1);

/// Shows the jobs' states as they change.
struct Display {
    mode: Mode,
    multi: MultiProgress,
    jobs: HashMap<String, Shown>,
}

/// What was last shown of one job.
struct Shown {
    bar: Option<ProgressBar>,
    status: Option<JobStatus>,
    at: Option<Instant>,
    text: String,
    ended: bool,
}

impl Display {
    fn new(mode: Mode) -> Display {
        Display {
            mode,
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            jobs: HashMap::new(),
        }
    }

    fn bar_style() -> ProgressStyle {
        ProgressStyle::with_template(
            "{prefix:<10.bold} {bar:30.cyan/blue} {percent:>3}% {bytes:>10}/{total_bytes:<10} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
    }

    /// Shows `state` of job `id` if there is something new to show.
    fn update(&mut self, id: &str, state: &JobState) -> io::Result<()> {
        let mode = self.mode;
        let multi = &self.multi;
        let shown = self.jobs.entry(id.to_owned()).or_insert_with(|| Shown {
            bar: (mode == Mode::Bars).then(|| {
                let bar = multi.add(ProgressBar::new(0));
                bar.set_style(Display::bar_style());
                bar.set_prefix(id.to_owned());
                bar
            }),
            status: None,
            at: None,
            text: String::new(),
            ended: false,
        });
        if shown.ended {
            return Ok(());
        }
        let p = &state.progress;
        match mode {
            Mode::Bars => {
                let bar = shown.bar.as_ref().expect("made in bar mode");
                bar.set_length(p.total);
                bar.set_position(p.current.min(p.total));
                match &state.outcome {
                    None => bar.set_message(format!(
                        "{} {} eta {}",
                        state.status.as_str(),
                        format_rate(p.rate),
                        format_eta(p.eta)
                    )),
                    Some(Outcome::Completed) => bar.finish_with_message("completed"),
                    Some(Outcome::Cancelled) => bar.abandon_with_message("cancelled"),
                    Some(Outcome::Failed { error }) => {
                        bar.abandon_with_message(format!("failed: {error}"))
                    }
                }
            }
            Mode::Lines => {
                let text = format_line(id, &state.status, p, state.outcome.as_ref());
                let now = Instant::now();
                let status_changed = shown.status.as_ref() != Some(&state.status);
                let due = shown
                    .at
                    .is_none_or(|t| now.duration_since(t) >= LINE_INTERVAL);
                // `concluded` (or `null`) is followed at once by how it ended.
                let ending = state.outcome.is_none()
                    && matches!(state.status, JobStatus::Concluded | JobStatus::Null);
                if !ending
                    && (state.outcome.is_some() || status_changed || (due && text != shown.text))
                {
                    let mut out = io::stdout().lock();
                    writeln!(out, "{text}")?;
                    out.flush()?;
                    shown.text = text;
                    shown.at = Some(now);
                }
            }
            Mode::Json => {
                let text = format_json(
                    id,
                    state.job_type.as_ref(),
                    &state.status,
                    p,
                    state.outcome.as_ref(),
                )
                .to_string();
                if text != shown.text {
                    let mut out = io::stdout().lock();
                    writeln!(out, "{text}")?;
                    out.flush()?;
                    shown.text = text;
                }
            }
        }
        shown.status = Some(state.status.clone());
        shown.ended = state.outcome.is_some();
        Ok(())
    }

    /// Prints a line on stderr (above the bars on a terminal).
    fn note(&self, text: &str) {
        if self.mode == Mode::Bars {
            self.multi.suspend(|| eprintln!("{text}"));
        } else {
            eprintln!("{text}");
        }
    }
}

/// A rate in bytes per second, binary units, no space (`4.0MiB/s`); `-`
/// when unknown.
fn format_rate(rate: Option<f64>) -> String {
    let Some(mut r) = rate.filter(|r| r.is_finite() && *r >= 0.0) else {
        return "-".into();
    };
    let mut unit = "B";
    for next in ["KiB", "MiB", "GiB", "TiB"] {
        if r < 1024.0 {
            break;
        }
        r /= 1024.0;
        unit = next;
    }
    if unit == "B" {
        format!("{r:.0}B/s")
    } else {
        format!("{r:.1}{unit}/s")
    }
}

/// A time left as `1h02m03s`, `2m05s`, `7s`; `-` when unknown.
fn format_eta(eta: Option<Duration>) -> String {
    let Some(eta) = eta else { return "-".into() };
    let s = eta.as_secs_f64().round() as u64;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// `ID STATUS CURRENT/TOTAL PERCENT RATE eta ETA`; once ended, the outcome in
/// place of the status (and a failure's error in parentheses).
fn format_line(id: &str, status: &JobStatus, p: &Progress, outcome: Option<&Outcome>) -> String {
    let status = match outcome {
        None => status.as_str().to_owned(),
        Some(o) => outcome_word(o).to_owned(),
    };
    let mut line = format!(
        "{id} {status} {}/{} {:.1}% {} eta {}",
        p.current,
        p.total,
        p.fraction() * 100.0,
        format_rate(p.rate),
        match outcome {
            // No time left to a job that will not finish.
            Some(Outcome::Cancelled | Outcome::Failed { .. }) => "-".to_owned(),
            _ => format_eta(p.eta),
        }
    );
    if let Some(Outcome::Failed { error }) = outcome {
        line.push_str(&format!(" ({error})"));
    }
    line
}

fn outcome_word(o: &Outcome) -> &'static str {
    match o {
        Outcome::Completed => "completed",
        Outcome::Cancelled => "cancelled",
        Outcome::Failed { .. } => "failed",
    }
}

/// One change as a JSON object: id, type, status, current, total, rate (B/s),
/// eta (s), and once ended, outcome (and error).
fn format_json(
    id: &str,
    job_type: Option<&JobType>,
    status: &JobStatus,
    p: &Progress,
    outcome: Option<&Outcome>,
) -> Ordered {
    let num = |v: Option<f64>| {
        v.and_then(serde_json::Number::from_f64)
            .map_or(Ordered::Null, Ordered::Number)
    };
    let mut members = vec![
        ("id".to_owned(), Ordered::String(id.to_owned())),
        (
            "type".to_owned(),
            job_type.map_or(Ordered::Null, |t| Ordered::String(t.as_str().to_owned())),
        ),
        (
            "status".to_owned(),
            Ordered::String(status.as_str().to_owned()),
        ),
        ("current".to_owned(), Ordered::Number(p.current.into())),
        ("total".to_owned(), Ordered::Number(p.total.into())),
        ("rate".to_owned(), num(p.rate.map(|r| r.round()))),
        (
            "eta".to_owned(),
            num(p.eta.map(|e| (e.as_secs_f64() * 10.0).round() / 10.0)),
        ),
    ];
    if let Some(o) = outcome {
        members.push((
            "outcome".to_owned(),
            Ordered::String(outcome_word(o).to_owned()),
        ));
        if let Outcome::Failed { error } = o {
            members.push(("error".to_owned(), Ordered::String(error.clone())));
        }
    }
    Ordered::Object(members)
}

/// A job's state changes, forwarded to the one loop that shows them.
type Changes = mpsc::UnboundedSender<(String, JobState)>;

/// Forwards every change of `job`'s state until it has ended (or is lost).
fn forward(job: &Job, tx: Changes) {
    let id = job.id().to_owned();
    let mut rx = job.watch();
    tokio::spawn(async move {
        loop {
            let state = rx.borrow_and_update().clone();
            let done = state.outcome.is_some() || state.lost.is_some();
            if tx.send((id.clone(), state)).is_err() || done {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
}

/// How the jobs followed ended.
#[derive(Default)]
struct Tally {
    following: usize,
    all_completed: bool,
}

/// Shows `state`; reports an ended job's failure on stderr. Returns true
/// when the job has ended; a lost job is an error.
fn on_change(
    display: &mut Display,
    tally: &mut Tally,
    id: &str,
    state: &JobState,
) -> Result<bool, Failure> {
    display.update(id, state)?;
    if let Some(why) = &state.lost {
        return Err(JobError::Lost(format!("job {id}: {why}")).into());
    }
    let Some(outcome) = &state.outcome else {
        return Ok(false);
    };
    match outcome {
        Outcome::Completed => {}
        Outcome::Cancelled => {
            tally.all_completed = false;
            display.note(&format!("{PREFIX}job {id} was cancelled"));
        }
        Outcome::Failed { error } => {
            tally.all_completed = false;
            display.note(&format!("{PREFIX}job {id} failed: {error}"));
        }
    }
    tally.following -= 1;
    Ok(true)
}

/// `watch`.
async fn watch(qmp: &TypedClient, ids: Vec<String>, mode: Mode) -> Result<bool, Failure> {
    // Listen first: a job that appears while the list is read is not missed.
    let mut events = qmp.listen::<Event>();
    let jobs = qmp.call(QueryJobs::new()).await?;
    let options = JobOptions::new().dismiss(false);
    let wanted: Option<HashSet<String>> = (!ids.is_empty()).then(|| ids.iter().cloned().collect());
    let mut initial = Vec::new();
    match &wanted {
        Some(_) => {
            for id in &ids {
                if !jobs.iter().any(|j| &j.id == id) {
                    return Err(JobError::NoSuchJob(id.clone()).into());
                }
                initial.push(id.clone());
            }
        }
        None => initial.extend(
            jobs.iter()
                .filter(|j| !matches!(j.status, JobStatus::Concluded | JobStatus::Null))
                .map(|j| j.id.clone()),
        ),
    }
    if initial.is_empty() {
        if mode != Mode::Json {
            println!("no jobs");
        }
        return Ok(true);
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut display = Display::new(mode);
    let mut followed: HashMap<String, Job> = HashMap::new();
    let mut tally = Tally {
        following: 0,
        all_completed: true,
    };
    for id in initial {
        if followed.contains_key(&id) {
            continue;
        }
        // A job gone since the list was read has ended unseen: passed over.
        match Job::attach(qmp, &id, options.clone()).await {
            Ok(job) => {
                forward(&job, tx.clone());
                followed.insert(id, job);
                tally.following += 1;
            }
            Err(JobError::NoSuchJob(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut listening = true;
    while tally.following > 0 {
        tokio::select! {
            Some((id, state)) = rx.recv() => {
                on_change(&mut display, &mut tally, &id, &state)?;
            }
            event = events.recv(), if listening => match event {
                Ok(Event::JobStatusChange(e)) => {
                    let new = !followed.contains_key(&e.id)
                        && !matches!(e.status, JobStatus::Concluded | JobStatus::Null)
                        && wanted.as_ref().is_none_or(|w| w.contains(&e.id));
                    if new {
                        match Job::attach(qmp, &e.id, options.clone()).await {
                            Ok(job) => {
                                forward(&job, tx.clone());
                                followed.insert(e.id, job);
                                tally.following += 1;
                            }
                            Err(JobError::NoSuchJob(_)) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Ok(_) => {}
                // The jobs' followers see the connection end and say so.
                Err(e) if e.is_disconnected() => listening = false,
                Err(e) => tracing::debug!("events: {e}"),
            },
        }
    }
    Ok(tally.all_completed)
}

/// `run`.
async fn run_job(qmp: &TypedClient, command: JobCommand, mode: Mode) -> Result<bool, Failure> {
    let job = start_job(qmp, command, JobOptions::new()).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    forward(&job, tx);
    let mut display = Display::new(mode);
    let mut tally = Tally {
        following: 1,
        all_completed: true,
    };
    while let Some((id, state)) = rx.recv().await {
        if on_change(&mut display, &mut tally, &id, &state)? {
            break;
        }
    }
    Ok(tally.all_completed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_commands_are_parsed_before_connecting() {
        let c = job_command("blockdev-backup job-id=b device=src target=dst sync=full").unwrap();
        assert_eq!(c.name, "blockdev-backup");
        assert_eq!(c.arguments["job-id"], "b");
        assert_eq!(c.arguments["sync"], "full");
        // Named after the device, as QEMU does.
        let c = job_command("block-stream device=top").unwrap();
        assert_eq!(c.arguments["job-id"], "top");
        let c = job_command(
            r#"{"execute": "block-stream", "arguments": {"device": "d", "job-id": "s"}}"#,
        )
        .unwrap();
        assert_eq!(c.arguments["job-id"], "s");
        assert!(job_command("query-status")
            .unwrap_err()
            .contains("does not start a job"));
        assert!(job_command("blockdev-create options={}")
            .unwrap_err()
            .contains("job-id"));
        assert!(job_command("").is_err());
        assert!(job_command("transaction( abort )").is_err());
        assert!(job_command("blockdev-backup a={").is_err());
    }

    #[test]
    fn rates_and_times() {
        assert_eq!(format_rate(None), "-");
        assert_eq!(format_rate(Some(512.0)), "512B/s");
        assert_eq!(format_rate(Some(4.0 * 1024.0 * 1024.0)), "4.0MiB/s");
        assert_eq!(
            format_rate(Some(1.5 * 1024.0 * 1024.0 * 1024.0)),
            "1.5GiB/s"
        );
        assert_eq!(format_eta(None), "-");
        assert_eq!(format_eta(Some(Duration::from_secs(7))), "7s");
        assert_eq!(format_eta(Some(Duration::from_secs(125))), "2m05s");
        assert_eq!(format_eta(Some(Duration::from_secs(3723))), "1h02m03s");
    }

    #[test]
    fn lines_and_json() {
        let p = Progress {
            current: 1 << 20,
            total: 4 << 20,
            rate: Some(1048576.0),
            eta: Some(Duration::from_secs(3)),
        };
        let running = JobStatus::Running;
        assert_eq!(
            format_line("b", &running, &p, None),
            "b running 1048576/4194304 25.0% 1.0MiB/s eta 3s"
        );
        let failed = Outcome::Failed {
            error: "Input/output error".into(),
        };
        assert_eq!(
            format_line("b", &JobStatus::Concluded, &p, Some(&failed)),
            "b failed 1048576/4194304 25.0% 1.0MiB/s eta - (Input/output error)"
        );
        assert_eq!(
            format_json("b", None, &running, &p, None).to_string(),
            r#"{"id":"b","type":null,"status":"running","current":1048576,"total":4194304,"rate":1048576.0,"eta":3.0}"#
        );
        let done = format_json("b", None, &JobStatus::Concluded, &p, Some(&failed)).to_string();
        assert!(
            done.ends_with(r#""outcome":"failed","error":"Input/output error"}"#),
            "{done}"
        );
    }

    #[test]
    fn tables_are_aligned() {
        let rows = [
            [
                "b".into(),
                "backup".into(),
                "running".into(),
                "1/10".into(),
                String::new(),
            ],
            [
                "mirror0".into(),
                "mirror".into(),
                "ready".into(),
                "10/10".into(),
                String::new(),
            ],
        ];
        assert_eq!(
            format_table(&rows),
            "ID       TYPE    STATUS   PROGRESS  ERROR\n\
             b        backup  running  1/10\n\
             mirror0  mirror  ready    10/10\n"
        );
        assert_eq!(format_table(&[]), "");
    }
}
