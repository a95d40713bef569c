//! QEMU's long-running operations as objects: a [`Job`] is a block job
//! (backup, mirror, stream, commit, `blockdev-create`, `blockdev-amend`,
//! snapshots) followed from QEMU's events to its [`Outcome`], with its
//! [`Progress`] (rate and time left), and nothing left behind in QEMU. A
//! [`Migration`] is QEMU's outgoing migration, followed the same way.
//!
//! ```no_run
//! use qemu_jobs::{Job, JobOptions, Outcome};
//! use qemu_qapi_types::{BlockdevBackup, MirrorSyncMode, TypedClient};
//!
//! # async fn f(qmp: TypedClient) -> Result<(), Box<dyn std::error::Error>> {
//! let backup = BlockdevBackup::new("disk0", MirrorSyncMode::Full, "backup0").job_id("b0");
//! let job = Job::start(&qmp, backup, JobOptions::new()).await?;
//! let mut progress = job.watch();
//! tokio::spawn(async move {
//!     while progress.changed().await.is_ok() {
//!         let p = progress.borrow().progress;
//!         println!("{:.0} % at {:?} B/s, {:?} left", p.fraction() * 100.0, p.rate, p.eta);
//!     }
//! });
//! match job.wait(None).await? {
//!     Outcome::Completed => println!("done"),
//!     Outcome::Cancelled => println!("cancelled"),
//!     Outcome::Failed { error } => println!("failed: {error}"),
//! }
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! [`Job::start`] listens to the events before it sends the command, and
//! asks QEMU to keep the job when it concludes (`auto-dismiss: false`): a
//! task then follows `JOB_STATUS_CHANGE` (created, running, paused, ready,
//! standby, waiting, pending, aborting, concluded, null) and the block job
//! events; at `concluded` it reads QEMU's own error from `query-jobs`, then
//! dismisses the job. Progress is read with `query-jobs` every
//! [`JobOptions::poll_interval`] while the job runs, since QEMU announces
//! none; a missed event (a lagging listener) is made good by the same
//! reading. The connection ending, QEMU dying, a deadline: each ends a wait
//! with an error, never a hang.
//!
//! [`Migration::start`] turns on the `events` migration capability (without
//! it neither 7.2 nor 10.0 sends `MIGRATION` or `MIGRATION_PASS`), listens
//! to the events, then sends `migrate`. The status follows `MIGRATION`
//! (setup, active, device, postcopy-*, cancelling, completed, failed,
//! cancelled); bytes sent and remaining, passes and downtime are read with
//! `query-migrate` every [`MigrationOptions::poll_interval`], and once more
//! at the end for the final numbers and, on failure, QEMU's `error-desc`.
//! The same errors end its waits.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod job;
mod migration;
mod progress;
mod transaction;
mod waiting;

pub use job::{Job, JobOptions, JobState};
pub use migration::{IntoMigrate, Migration, MigrationOptions, MigrationState};
pub use progress::Progress;
pub use qemu_qapi_types::{JobStatus, MigrationStatus};
pub use transaction::start_transaction;

use std::time::Duration;

use qemu_qapi::typed::CallError;

/// How a job (or a migration) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It did its work.
    Completed,
    /// It was cancelled (by anyone) before it finished.
    Cancelled,
    /// It failed; QEMU's error text.
    Failed {
        /// QEMU's words (`query-jobs`' `error`, or the block job event's;
        /// `query-migrate`'s `error-desc` for a migration).
        error: String,
    },
}

/// Why a job (or a migration) could not be started or followed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The command has no `job-id`, which following it needs.
    #[error("{0}: the command names no job-id")]
    NoJobId(&'static str),
    /// There is no job of that id.
    #[error("no job {0:?}")]
    NoSuchJob(String),
    /// There is no migration to attach to (`query-migrate` says none).
    #[error("no migration")]
    NoMigration,
    /// A command failed (QEMU's error, the connection, the version gate).
    #[error(transparent)]
    Call(#[from] CallError),
    /// The job can no longer be followed: the connection ended.
    #[error("the job can no longer be followed: {0}")]
    Lost(String),
    /// The wait ran out; the job (or migration) goes on.
    #[error("job {id}: not done within {timeout:?}")]
    Timeout {
        /// The job (`"migration"` for a [`Migration`]).
        id: String,
        /// How long it was waited for.
        timeout: Duration,
    },
    /// The job ended before it reached the status waited for.
    #[error("job {id} ended ({outcome:?}) before it was {wanted}")]
    Ended {
        /// The job.
        id: String,
        /// How it ended.
        outcome: Outcome,
        /// The status waited for.
        wanted: JobStatus,
    },
    /// The migration ended before it reached the status waited for.
    #[error("the migration ended ({outcome:?}) before it was {wanted}")]
    MigrationEnded {
        /// How it ended.
        outcome: Outcome,
        /// The status waited for.
        wanted: MigrationStatus,
    },
}

impl JobError {
    /// The QMP error class if QEMU refused a command.
    pub fn error_class(&self) -> Option<&str> {
        match self {
            JobError::Call(e) => e.error_class(),
            _ => None,
        }
    }

    /// True if a deadline ran out.
    pub fn is_timeout(&self) -> bool {
        match self {
            JobError::Timeout { .. } => true,
            JobError::Call(e) => e.is_timeout(),
            _ => false,
        }
    }

    /// True if the connection is gone.
    pub fn is_disconnected(&self) -> bool {
        match self {
            JobError::Lost(_) => true,
            JobError::Call(e) => e.is_disconnected(),
            _ => false,
        }
    }
}

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The workspace README's examples, compiled as doctests (this crate
/// depends on every crate they use).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct WorkspaceReadmeDoctests;
