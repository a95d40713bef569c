//! [`start_transaction`]: the jobs one `transaction` starts, each followed
//! like a [`Job`] from [`Job::start`].

use qemu_qapi::typed::{CallError, Command, TypedClient};
use qemu_qapi_types::{Event, Transaction};
use serde_json::Value;

use crate::{Job, JobError, JobOptions};

/// Runs `transaction` and follows every job it starts (the actions whose
/// `data` names a `job-id`: `blockdev-backup`, `drive-backup`), in the order
/// of the actions.
///
/// As with [`Job::start`], the events are listened to before the command
/// is sent, so even a job that fails at once, or is cancelled with its group
/// (`completion-mode: grouped`), is seen to its end; with
/// [`JobOptions::dismiss`] (the default) each job action gets
/// `auto-dismiss: false` when it takes it, and with
/// [`JobOptions::manual_finalize`], `auto-finalize: false`.
///
/// An action that takes a `job-id` and names none is [`JobError::NoJobId`]
/// (nothing is sent): such a job could not be told apart from the others.
/// If QEMU refuses the transaction, no job was started.
pub async fn start_transaction(
    qmp: &TypedClient,
    transaction: Transaction,
    options: JobOptions,
) -> Result<Vec<Job>, JobError> {
    let mut arguments = match serde_json::to_value(&transaction) {
        Ok(Value::Object(m)) => m,
        Ok(_) | Err(_) => return Err(JobError::NoJobId(Transaction::NAME)),
    };
    let schema = qmp.schema().await.map_err(CallError::from)?;
    let mut ids = Vec::new();
    if let Some(Value::Array(actions)) = arguments.get_mut("actions") {
        for action in actions {
            let Some(tag) = action
                .get("type")
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                continue;
            };
            let Some(Value::Object(data)) = action.get_mut("data") else {
                continue;
            };
            // An action's data is the arguments of the command of its name
            // (`blockdev-backup` action: `BlockdevBackup`).
            let takes = |member: &str| {
                schema
                    .arg_type(&tag)
                    .and_then(|t| schema.member(t, member))
                    .is_some()
            };
            match data.get("job-id") {
                Some(Value::String(id)) => ids.push(id.clone()),
                _ if takes("job-id") => return Err(JobError::NoJobId(Transaction::NAME)),
                _ => continue,
            }
            if options.dismiss && takes("auto-dismiss") && !data.contains_key("auto-dismiss") {
                data.insert("auto-dismiss".into(), Value::Bool(false));
            }
            if options.manual_finalize && takes("auto-finalize") {
                data.insert("auto-finalize".into(), Value::Bool(false));
            }
        }
    }
    // One listener a job, all made before the command is sent.
    let listeners: Vec<_> = ids.iter().map(|_| qmp.listen::<Event>()).collect();
    qmp.execute(Transaction::NAME, Some(Value::Object(arguments)))
        .await?;
    Ok(ids
        .into_iter()
        .zip(listeners)
        .map(|(id, listener)| Job::follow(qmp.clone(), id, options.clone(), listener, None))
        .collect())
}
