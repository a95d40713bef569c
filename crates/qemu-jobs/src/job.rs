//! [`Job`]: one QEMU job, followed from its events.

use std::time::{Duration, Instant};

use qemu_qapi::typed::{CallError, Command, FromEvent, TypedClient};
use qemu_qapi_types::{
    Event, JobCancel, JobComplete, JobDismiss, JobFinalize, JobInfo, JobPause, JobResume,
    JobStatus, JobType, QueryJobs,
};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::progress::{Estimator, Progress};
use crate::{JobError, Outcome};

/// How a [`Job`] is followed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobOptions {
    /// How often progress is read (`query-jobs`) while the job runs: QEMU
    /// sends no progress events. The state machine is followed from events
    /// whatever this is. Default 250 ms.
    pub poll_interval: Duration,
    /// Send `job-complete` as soon as the job is `ready` (a mirror that
    /// should pivot at once). Default off.
    pub complete_when_ready: bool,
    /// Dismiss the job when it has concluded, so none is left in QEMU;
    /// [`Job::start`] then asks QEMU not to dismiss it itself
    /// (`auto-dismiss: false`), so that its error can be read first. Default on.
    pub dismiss: bool,
    /// Start the job with `auto-finalize: false`: it stops in `pending`
    /// until [`Job::finalize`] (a hook runs between [`Job::wait_for`]
    /// `Pending` and that). Default off.
    pub manual_finalize: bool,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            poll_interval: Duration::from_millis(250),
            complete_when_ready: false,
            dismiss: true,
            manual_finalize: false,
        }
    }
}

impl JobOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`JobOptions::poll_interval`].
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets [`JobOptions::complete_when_ready`].
    pub fn complete_when_ready(mut self, yes: bool) -> Self {
        self.complete_when_ready = yes;
        self
    }

    /// Sets [`JobOptions::dismiss`].
    pub fn dismiss(mut self, yes: bool) -> Self {
        self.dismiss = yes;
        self
    }

    /// Sets [`JobOptions::manual_finalize`].
    pub fn manual_finalize(mut self, yes: bool) -> Self {
        self.manual_finalize = yes;
        self
    }
}

/// What is known of a job at one moment.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JobState {
    /// Where it is in QEMU's job state machine (`JobStatus::Undefined`
    /// before its first event or reading).
    pub status: JobStatus,
    /// What kind of job (from `query-jobs`), once known.
    pub job_type: Option<JobType>,
    /// How far it is.
    pub progress: Progress,
    /// How it ended, once it has.
    pub outcome: Option<Outcome>,
    /// Why it can no longer be followed (the connection ended), if so.
    pub lost: Option<String>,
}

/// A QEMU job (backup, mirror, stream, commit, `blockdev-create`,
/// `blockdev-amend`, snapshots) followed from its events: its status, its
/// progress, and how it ends.
///
/// A task follows the job for as long as the handle lives (it stops when
/// the job has ended or the handle is dropped). Nothing here sleeps to wait
/// for a state: status changes come from `JOB_STATUS_CHANGE` and the block
/// job events; only progress, which QEMU does not announce, is read at
/// [`JobOptions::poll_interval`].
pub struct Job {
    qmp: TypedClient,
    id: String,
    state: watch::Receiver<JobState>,
    task: JoinHandle<()>,
}

impl Drop for Job {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl Job {
    /// Starts a job with `command` (`BlockdevBackup`, `BlockdevMirror`,
    /// `BlockStream`, `BlockCommit`, `BlockdevCreate`, ...), which must name
    /// its `job-id`, and follows it. The events are listened to before the
    /// command is sent, so none is missed. With [`JobOptions::dismiss`] (the
    /// default) `auto-dismiss: false` is added when the command takes it; with
    /// [`JobOptions::manual_finalize`], `auto-finalize: false`.
    pub async fn start<C: Command>(
        qmp: &TypedClient,
        command: C,
        options: JobOptions,
    ) -> Result<Job, JobError> {
        let mut arguments = match serde_json::to_value(&command) {
            Ok(Value::Object(m)) => m,
            Ok(_) | Err(_) => return Err(JobError::NoJobId(C::NAME)),
        };
        let id = match arguments.get("job-id") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(JobError::NoJobId(C::NAME)),
        };
        let schema = qmp.schema().await.map_err(CallError::from)?;
        let takes = |member: &str| {
            schema
                .arg_type(C::NAME)
                .and_then(|t| schema.member(t, member))
                .is_some()
        };
        if options.dismiss && takes("auto-dismiss") && !arguments.contains_key("auto-dismiss") {
            arguments.insert("auto-dismiss".into(), Value::Bool(false));
        }
        if options.manual_finalize && takes("auto-finalize") {
            arguments.insert("auto-finalize".into(), Value::Bool(false));
        }
        let listener = qmp.listen::<Event>();
        qmp.execute(C::NAME, Some(Value::Object(arguments))).await?;
        Ok(Job::follow(qmp.clone(), id, options, listener, None))
    }

    /// Follows the job `id` that is already running (started by anyone).
    /// It is dismissed when it concludes only if [`JobOptions::dismiss`] is
    /// set and QEMU does not do it itself.
    pub async fn attach(qmp: &TypedClient, id: &str, options: JobOptions) -> Result<Job, JobError> {
        let listener = qmp.listen::<Event>();
        let jobs = qmp.call(QueryJobs::new()).await?;
        let info = jobs
            .into_iter()
            .find(|j| j.id == id)
            .ok_or_else(|| JobError::NoSuchJob(id.to_owned()))?;
        Ok(Job::follow(
            qmp.clone(),
            id.to_owned(),
            options,
            listener,
            Some(info),
        ))
    }

    /// Follows `id` from `listener`, made before the command that started
    /// it was sent ([`Job::start`], [`crate::start_transaction`]).
    pub(crate) fn follow(
        qmp: TypedClient,
        id: String,
        options: JobOptions,
        listener: qemu_qapi::typed::TypedListener<Event>,
        info: Option<JobInfo>,
    ) -> Job {
        let mut estimator = Estimator::new();
        let initial = JobState {
            status: info
                .as_ref()
                .map(|i| i.status.clone())
                .unwrap_or(JobStatus::Undefined),
            job_type: info.as_ref().map(|i| i.type_.clone()),
            progress: match &info {
                Some(i) => estimator.update(
                    Instant::now(),
                    clamp(i.current_progress),
                    clamp(i.total_progress),
                ),
                None => estimator.update(Instant::now(), 0, 0),
            },
            outcome: None,
            lost: None,
        };
        let (tx, rx) = watch::channel(initial);
        let follower = Follower {
            qmp: qmp.clone(),
            id: id.clone(),
            options,
            tx,
            estimator,
            saw_cancelled: false,
            block_error: None,
            completed_sent: false,
        };
        let task = tokio::spawn(follower.run(listener));
        Job {
            qmp,
            id,
            state: rx,
            task,
        }
    }

    /// The job's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What is known now.
    pub fn state(&self) -> JobState {
        self.state.borrow().clone()
    }

    /// A receiver of every change of state (status, progress, outcome).
    pub fn watch(&self) -> watch::Receiver<JobState> {
        self.state.clone()
    }

    /// Waits until the job has ended and returns how; at most `deadline`
    /// (`None`: no limit), after which [`JobError::Timeout`] (the job goes
    /// on). The connection ending first is [`JobError::Lost`].
    pub async fn wait(&self, deadline: Option<Duration>) -> Result<Outcome, JobError> {
        let state = self
            .wait_until(deadline, |s| s.outcome.is_some() || s.lost.is_some())
            .await?;
        crate::waiting::ended(state.outcome, state.lost)
    }

    /// Waits until the job reaches `status` (or has ended, or is lost).
    pub async fn wait_for(
        &self,
        status: JobStatus,
        deadline: Option<Duration>,
    ) -> Result<JobState, JobError> {
        let state = self
            .wait_until(deadline, |s| {
                s.status == status || s.outcome.is_some() || s.lost.is_some()
            })
            .await?;
        if state.status == status {
            Ok(state)
        } else if let Some(why) = state.lost.clone() {
            Err(JobError::Lost(why))
        } else {
            Err(JobError::Ended {
                id: self.id.clone(),
                outcome: state.outcome.clone().unwrap_or(Outcome::Completed),
                wanted: status,
            })
        }
    }

    async fn wait_until(
        &self,
        deadline: Option<Duration>,
        done: impl Fn(&JobState) -> bool,
    ) -> Result<JobState, JobError> {
        crate::waiting::wait_until(&self.state, &self.id, "job", deadline, done).await
    }

    /// `job-pause`.
    pub async fn pause(&self) -> Result<(), JobError> {
        self.qmp.call(JobPause::new(self.id.clone())).await?;
        Ok(())
    }

    /// `job-resume`.
    pub async fn resume(&self) -> Result<(), JobError> {
        self.qmp.call(JobResume::new(self.id.clone())).await?;
        Ok(())
    }

    /// `job-cancel`; [`Job::wait`] then says [`Outcome::Cancelled`] (or how
    /// the job ended if it raced the cancel and won).
    pub async fn cancel(&self) -> Result<(), JobError> {
        self.qmp.call(JobCancel::new(self.id.clone())).await?;
        Ok(())
    }

    /// `job-complete` (a `ready` mirror pivots).
    pub async fn complete(&self) -> Result<(), JobError> {
        self.qmp.call(JobComplete::new(self.id.clone())).await?;
        Ok(())
    }

    /// `job-finalize` (a `pending` job started with
    /// [`JobOptions::manual_finalize`]).
    pub async fn finalize(&self) -> Result<(), JobError> {
        self.qmp.call(JobFinalize::new(self.id.clone())).await?;
        Ok(())
    }

    /// `job-dismiss` (a `concluded` job not dismissed automatically).
    pub async fn dismiss(&self) -> Result<(), JobError> {
        self.qmp.call(JobDismiss::new(self.id.clone())).await?;
        Ok(())
    }
}

/// QEMU's progress numbers are `int` on the wire, never negative in
/// practice; out of range reads as 0 or the maximum.
pub(crate) fn clamp(v: i128) -> u64 {
    v.clamp(0, u64::MAX as i128) as u64
}

/// `query-jobs`' `error` of a cancelled job: `strerror(ECANCELED)`.
const CANCELLED: &str = "Operation canceled";

/// The task that follows one job.
struct Follower {
    qmp: TypedClient,
    id: String,
    options: JobOptions,
    tx: watch::Sender<JobState>,
    estimator: Estimator,
    saw_cancelled: bool,
    block_error: Option<String>,
    completed_sent: bool,
}

impl Follower {
    async fn run(mut self, mut listener: qemu_qapi::typed::TypedListener<Event>) {
        let mut tick = tokio::time::interval(self.options.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A status known at attach time may already call for action.
        let status = self.tx.borrow().status.clone();
        if self.on_status(status).await {
            return;
        }
        loop {
            let polling = !matches!(
                self.tx.borrow().status,
                JobStatus::Concluded | JobStatus::Null
            );
            tokio::select! {
                event = listener.recv() => match event {
                    Ok(e) => {
                        if self.on_event(e).await {
                            return;
                        }
                    }
                    Err(e) if e.is_disconnected() => {
                        self.tx.send_modify(|s| s.lost = Some(format!("the connection ended: {e}")));
                        return;
                    }
                    // Lagged, or an event whose data did not decode: read the
                    // job's state instead of trusting what was missed.
                    Err(e) => {
                        tracing::debug!(job = %self.id, "resynchronising after: {e}");
                        if self.poll_and_settle(&mut listener).await {
                            return;
                        }
                    }
                },
                _ = tick.tick(), if polling => {
                    if self.poll_and_settle(&mut listener).await {
                        return;
                    }
                }
            }
        }
    }

    /// Handles an event; true when following is over.
    async fn on_event(&mut self, event: Event) -> bool {
        match event {
            Event::JobStatusChange(e) if e.id == self.id => return self.on_status(e.status).await,
            Event::BlockJobCancelled(e) if e.device == self.id => self.saw_cancelled = true,
            Event::BlockJobCompleted(e) if e.device == self.id => {
                self.block_error = e.error;
                let at = Instant::now();
                let p = self.estimator.update(at, clamp(e.offset), clamp(e.len));
                self.tx.send_modify(|s| s.progress = p);
            }
            _ => {}
        }
        false
    }

    /// Reacts to a new status; true when following is over.
    async fn on_status(&mut self, status: JobStatus) -> bool {
        self.tx.send_modify(|s| s.status = status.clone());
        match status {
            JobStatus::Ready if self.options.complete_when_ready && !self.completed_sent => {
                self.completed_sent = true;
                if let Err(e) = self.qmp.call(JobComplete::new(self.id.clone())).await {
                    tracing::warn!(job = %self.id, "job-complete: {e}");
                }
            }
            JobStatus::Concluded => {
                // Still there (not dismissed yet): QEMU's own word on how it
                // ended, then dismiss it.
                let info = self.info().await;
                let outcome = self.outcome(info.as_ref().and_then(|i| i.error.clone()));
                if let Some(i) = &info {
                    let p = self.estimator.update(
                        Instant::now(),
                        clamp(i.current_progress),
                        clamp(i.total_progress),
                    );
                    self.tx.send_modify(|s| s.progress = p);
                }
                if self.options.dismiss {
                    if let Err(e) = self.qmp.call(JobDismiss::new(self.id.clone())).await {
                        tracing::debug!(job = %self.id, "job-dismiss: {e}");
                    }
                }
                self.tx.send_modify(|s| s.outcome = Some(outcome));
                return true;
            }
            JobStatus::Null => {
                // Dismissed by QEMU (auto-dismiss) or by someone else: the
                // block job events said how it ended, if anyone did.
                let outcome = self.outcome(self.block_error.clone());
                self.tx.send_modify(|s| s.outcome = Some(outcome));
                return true;
            }
            _ => {}
        }
        false
    }

    fn outcome(&self, error: Option<String>) -> Outcome {
        match error {
            _ if self.saw_cancelled => Outcome::Cancelled,
            // QEMU's own word for a cancelled job (`job_update_rc`: no error
            // of its own, `strerror(ECANCELED)`): what `query-jobs` says when
            // `BLOCK_JOB_CANCELLED` was not seen (a job attached to after
            // it was cancelled, or a job that is no block job).
            Some(error) if error == CANCELLED => Outcome::Cancelled,
            Some(error) => Outcome::Failed { error },
            None => Outcome::Completed,
        }
    }

    async fn info(&self) -> Option<JobInfo> {
        match self.qmp.call(QueryJobs::new()).await {
            Ok(jobs) => jobs.into_iter().find(|j| j.id == self.id),
            Err(e) => {
                tracing::debug!(job = %self.id, "query-jobs: {e}");
                None
            }
        }
    }

    /// [`Follower::poll`]; a job found gone is taken as ended only after the
    /// events queued before the reading are handled: they say how it ended
    /// (`BLOCK_JOB_CANCELLED` before a reading that no longer shows the job
    /// would otherwise be lost, and a cancelled job taken as completed).
    /// True when following is over.
    async fn poll_and_settle(
        &mut self,
        listener: &mut qemu_qapi::typed::TypedListener<Event>,
    ) -> bool {
        match self.poll().await {
            Polled::Going => false,
            Polled::Over => true,
            Polled::Gone => {
                while let Ok(raw) = listener.inner().try_recv() {
                    match Event::from_event(&raw) {
                        Ok(event) => {
                            if self.on_event(event).await {
                                return true;
                            }
                        }
                        Err(e) => tracing::debug!(job = %self.id, "undecodable event: {e}"),
                    }
                }
                Box::pin(self.on_status(JobStatus::Null)).await
            }
        }
    }

    /// Reads progress (and the status, in case an event was missed).
    async fn poll(&mut self) -> Polled {
        match self.qmp.call(QueryJobs::new()).await {
            Ok(jobs) => match jobs.into_iter().find(|j| j.id == self.id) {
                Some(i) => {
                    let p = self.estimator.update(
                        Instant::now(),
                        clamp(i.current_progress),
                        clamp(i.total_progress),
                    );
                    self.tx.send_modify(|s| {
                        s.progress = p;
                        s.job_type = Some(i.type_.clone());
                    });
                    if i.status != self.tx.borrow().status
                        && Box::pin(self.on_status(i.status)).await
                    {
                        return Polled::Over;
                    }
                    Polled::Going
                }
                // Gone since the last reading (its events not handled yet,
                // or missed).
                None => Polled::Gone,
            },
            Err(e) if e.is_disconnected() => {
                self.tx
                    .send_modify(|s| s.lost = Some(format!("the connection ended: {e}")));
                Polled::Over
            }
            Err(e) => {
                tracing::debug!(job = %self.id, "query-jobs: {e}");
                Polled::Going
            }
        }
    }
}

/// What a reading of the job found.
enum Polled {
    /// It goes on.
    Going,
    /// Following is over (it ended, or the connection did).
    Over,
    /// QEMU no longer has it.
    Gone,
}
