//! The jobs of a running QEMU (backup, mirror, stream, commit,
//! `blockdev-create`, snapshots): the library behind the `qemu-jobs` tool,
//! built on [`qemu_jobs`]. List them, follow them with progress bars (or plain
//! lines, or JSON), start one and follow it to its outcome.
//!
//! The parts:
//!
//! - [`display`]: how the jobs are shown (bars, plain lines, JSON lines, the
//!   table of `list`);
//! - [`watch`](mod@watch): following the jobs running and those that appear;
//! - [`run`]: a command in qmp-shell syntax parsed into a command that starts a
//!   job, and that job followed.

use std::io::{self, Write};

use qemu_jobs::JobError;
use qemu_qapi::typed::{CallError, TypedClient};
use qemu_qapi_types::QueryJobs;
use qemu_qmp::json::Ordered;

pub mod display;
pub mod run;
pub mod watch;

pub use display::Mode;
pub use run::{job_command, run_job, JobCommand, JOB_COMMANDS};
pub use watch::watch;

use display::format_table;

/// Why a subcommand failed: printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A job could not be started, followed or found.
    #[error(transparent)]
    Job(#[from] JobError),
    /// A command failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The connection to QEMU failed.
    #[error(transparent)]
    Qmp(#[from] qemu_qmp::Error),
    /// Output could not be written.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Failure {
    /// Whether output stopped because its reader went away (not a failure).
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Failure::Io(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// What the tool's messages on stderr start with.
pub const PREFIX: &str = "qemu-jobs: ";

/// `list`.
pub async fn list(qmp: &TypedClient, json: bool) -> Result<(), Failure> {
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
