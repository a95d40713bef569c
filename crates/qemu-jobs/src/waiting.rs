//! The waits [`Job`](crate::Job) and [`Migration`](crate::Migration) share:
//! on the state their follower task publishes, with a deadline.

use std::time::Duration;

use tokio::sync::watch;

use crate::{JobError, Outcome};

/// The first state `done` accepts; [`JobError::Timeout`] (naming `id`)
/// after `deadline` (`None`: no limit), [`JobError::Lost`] if the follower
/// (`what`'s) stopped first.
pub(crate) async fn wait_until<S: Clone>(
    state: &watch::Receiver<S>,
    id: &str,
    what: &str,
    deadline: Option<Duration>,
    done: impl Fn(&S) -> bool,
) -> Result<S, JobError> {
    let mut rx = state.clone();
    let wait = async {
        match rx.wait_for(|s| done(s)).await {
            Ok(s) => Ok(s.clone()),
            Err(_) => Err(JobError::Lost(format!("the {what}'s follower stopped"))),
        }
    };
    match deadline {
        None => wait.await,
        Some(d) => tokio::time::timeout(d, wait)
            .await
            .map_err(|_| JobError::Timeout {
                id: id.to_owned(),
                timeout: d,
            })?,
    }
}

/// What a wait for the end returns, from an ended state's outcome and why
/// it was lost (one of them is set).
pub(crate) fn ended(outcome: Option<Outcome>, lost: Option<String>) -> Result<Outcome, JobError> {
    match (outcome, lost) {
        (Some(o), _) => Ok(o),
        (None, Some(why)) => Err(JobError::Lost(why)),
        (None, None) => unreachable!("waited for one of them"),
    }
}
