//! `run`: a command in qmp-shell syntax parsed into a command that starts a
//! job, the job started and followed to its outcome.

use qemu_jobs::{Job, JobError, JobOptions};
use qemu_qapi::typed::TypedClient;
use qemu_qmp::Value;
use tokio::sync::mpsc;

use super::display::{Display, Mode};
use super::watch::{forward, on_change, Tally};
use super::Failure;
use crate::shell::parser::{CommandParser, Parsed};

/// The commands that start a job, which `run` takes.
pub const JOB_COMMANDS: &[&str] = &[
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

/// A command that starts a job: its name (one of [`JOB_COMMANDS`]) and
/// arguments, with a `job-id`.
#[derive(Debug, PartialEq)]
pub struct JobCommand {
    name: String,
    arguments: serde_json::Map<String, Value>,
}

/// Parses `line` (qmp-shell syntax, or a JSON request) into a command that
/// starts a job.
pub fn job_command(line: &str) -> Result<JobCommand, String> {
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

/// `run`.
pub async fn run_job(qmp: &TypedClient, command: JobCommand, mode: Mode) -> Result<bool, Failure> {
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
}
