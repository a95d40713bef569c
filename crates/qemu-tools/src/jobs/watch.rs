//! `watch`: the jobs followed, each one's changes forwarded to the one loop
//! that shows them, until all have ended.

use std::collections::{HashMap, HashSet};

use qemu_jobs::{Job, JobError, JobOptions, JobState, JobStatus, Outcome};
use qemu_qapi::typed::TypedClient;
use qemu_qapi_types::{Event, QueryJobs};
use tokio::sync::mpsc;

use super::display::{Display, Mode};
use super::{Failure, PREFIX};

/// A job's state changes, forwarded to the one loop that shows them.
type Changes = mpsc::UnboundedSender<(String, JobState)>;

/// Forwards every change of `job`'s state until it has ended (or is lost).
pub(crate) fn forward(job: &Job, tx: Changes) {
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
pub(crate) struct Tally {
    pub(crate) following: usize,
    pub(crate) all_completed: bool,
}

/// Shows `state`; reports an ended job's failure on stderr. Returns true
/// when the job has ended; a lost job is an error.
pub(crate) fn on_change(
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
pub async fn watch(qmp: &TypedClient, ids: Vec<String>, mode: Mode) -> Result<bool, Failure> {
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
