//! The connection to QEMU, on a task of its own: connecting (or waiting for QEMU to
//! connect), reconnecting with backoff, running commands, forwarding events.
//!
//! The user interface never waits for QEMU: it sends [`Job`]s down a channel and
//! gets [`Update`]s back (replies, events, the connection state). Each command runs
//! on a task of its own, so a slow one does not hold up the next, and the reply
//! comes back with the job's number.
//!
//! After each connection the task asks QEMU for `query-qmp-schema` and
//! `query-commands` (completion and the schema check, as `qmp-shell` does at start;
//! in HMP mode, HMP's `help` and `info` for completion)
//! and for `query-status` (the run state in the status line; asked again after
//! every event that changes it).
//!
//! When the connection ends (QEMU quits, is killed, or cannot be reached), the task
//! waits and tries again: [`FIRST_DELAY`], doubling up to [`MAX_DELAY`], and at
//! once after a successful connection ended. The wait is shown as a countdown, and
//! F5 cuts it short ([`Control::ReconnectNow`]). Commands typed while there is no
//! connection are answered at once with an error, never queued for later: a
//! command meant for one QEMU must not reach the next.

use std::sync::Arc;
use std::time::{Duration, Instant};

use qemu_qapi::Schema;
use qemu_qmp::json::Ordered;
use qemu_qmp::{Address, Client, Error, Event, RecvError, Value};
use tokio::sync::mpsc;

use crate::exit::one_line;
use crate::shell::complete::{self, Completions};
use crate::shell::parser::Parsed;

/// The first wait before reconnecting after a failed attempt.
pub const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest wait between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(4);
/// How long each of the queries made after connecting may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting (socket, greeting, negotiation) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The events after which the run state is asked again.
const RUNSTATE_EVENTS: &[&str] = &[
    "STOP",
    "RESUME",
    "SHUTDOWN",
    "RESET",
    "SUSPEND",
    "SUSPEND_DISK",
    "WAKEUP",
    "GUEST_PANICKED",
];

/// Where QEMU is: a socket path or a TCP address (an already-connected socket
/// cannot be connected again, so it is refused when reconnecting).
#[derive(Debug)]
pub enum Target {
    /// Connect to QEMU's monitor socket.
    Connect(Address),
    /// Listen here and wait for QEMU to connect (`-qmp unix:PATH` without
    /// `server=on`), as Python's `qmp-shell-wrap` does; listen again after each
    /// connection.
    Listen(Address),
}

/// A copy of a path or TCP address, to connect (or listen) again.
fn again(a: &Address) -> Result<Address, String> {
    match a {
        Address::Unix(p) => Ok(Address::Unix(p.clone())),
        Address::Tcp { host, port } => Ok(Address::Tcp {
            host: host.clone(),
            port: *port,
        }),
        other => Err(format!("cannot connect to {other} again")),
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Connect(a) => write!(f, "{a}"),
            Target::Listen(a) => write!(f, "listening on {a}"),
        }
    }
}

/// A command to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its number, given back with the reply.
    pub id: u64,
    /// What the parser made of the line.
    pub parsed: Parsed,
}

/// What the UI can ask besides commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop waiting and try to connect now.
    ReconnectNow,
}

/// The state of the connection, for the status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Trying to connect (the attempt's number, from 1).
    Connecting(u32),
    /// Waiting for QEMU to connect to our socket.
    Listening,
    /// Connected.
    Connected,
    /// The connection ended or could not be made; the next attempt is at `retry`
    /// (`None`: no more attempts).
    Down {
        /// Why.
        cause: String,
        /// When the next attempt starts.
        retry: Option<Instant>,
    },
}

/// What the connection task tells the UI.
#[derive(Debug)]
pub enum Update {
    /// The connection state changed.
    State(State),
    /// Connected, with what was learnt from QEMU.
    Connected {
        /// QEMU's version (from the greeting).
        version: String,
        /// Completion data.
        completions: Arc<Completions>,
        /// The schema, for the check before sending (`None`: not available).
        schema: Option<Arc<Schema>>,
    },
    /// The run state (`query-status`'s `status`).
    RunState(String),
    /// An event.
    Event(Event),
    /// Events were lost because the UI fell behind.
    Lagged(u64),
    /// The reply to a job: the reply object in QEMU's order, or why there is none.
    Reply {
        /// The job's number.
        id: u64,
        /// The reply, or an error.
        result: Result<Ordered, String>,
    },
}

/// The wait before attempt `n` (0-based) after failures.
pub fn backoff(n: u32) -> Duration {
    FIRST_DELAY
        .saturating_mul(1u32.checked_shl(n.min(16)).unwrap_or(u32::MAX))
        .min(MAX_DELAY)
}

/// The handles the UI keeps.
pub struct Connection {
    /// Commands to run.
    pub jobs: mpsc::UnboundedSender<Job>,
    /// Other requests.
    pub control: mpsc::UnboundedSender<Control>,
    /// What happens.
    pub updates: mpsc::UnboundedReceiver<Update>,
    task: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// Start the task (on the current tokio runtime). `reconnect: false` stops
    /// after the first connection ends or the first attempt fails; `hmp`: completion
    /// data is HMP's (`help`, `info`) and no schema is fetched.
    pub fn start(target: Target, reconnect: bool, hmp: bool) -> Connection {
        let (jobs, job_rx) = mpsc::unbounded_channel();
        let (control, control_rx) = mpsc::unbounded_channel();
        let (tx, updates) = mpsc::unbounded_channel();
        let task = tokio::spawn(
            Worker {
                target,
                reconnect,
                hmp,
                jobs: job_rx,
                control: control_rx,
                tx,
            }
            .run(),
        );
        Connection {
            jobs,
            control,
            updates,
            task,
        }
    }

    /// Close the connection: the task disconnects and ends (waited for at most
    /// `grace`, then aborted; either way the client, and a socket file it listens
    /// on, are gone).
    pub async fn close(self, grace: Duration) {
        drop(self.jobs);
        drop(self.control);
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// How a session ended.
enum Ended {
    /// The connection ended (or was never made), for this reason.
    Lost(String),
    /// The UI is gone.
    Closed,
}

struct Worker {
    target: Target,
    reconnect: bool,
    hmp: bool,
    jobs: mpsc::UnboundedReceiver<Job>,
    control: mpsc::UnboundedReceiver<Control>,
    tx: mpsc::UnboundedSender<Update>,
}

impl Worker {
    fn send(&self, u: Update) {
        let _ = self.tx.send(u);
    }

    fn refuse(&self, job: Job, why: &str) {
        self.send(Update::Reply {
            id: job.id,
            result: Err(why.to_owned()),
        });
    }

    async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            let client = Client::builder()
                .name("qmp-tui")
                .preserve_order(true)
                .connect_timeout(CONNECT_TIMEOUT)
                .build();
            let cause = match self.connect(&client, failures + 1).await {
                Ok(true) => {
                    failures = 0;
                    match self.session(&client).await {
                        Ended::Lost(cause) => cause,
                        Ended::Closed => return,
                    }
                }
                Ok(false) => return,
                Err(cause) => {
                    failures += 1;
                    cause
                }
            };
            drop(client);
            let delay = if failures == 0 {
                Duration::ZERO
            } else {
                backoff(failures - 1)
            };
            if !self.reconnect {
                self.send(Update::State(State::Down { cause, retry: None }));
                // Answer what comes until the UI closes.
                while let Some(job) = self.jobs.recv().await {
                    self.refuse(job, "not connected to QEMU");
                }
                return;
            }
            let retry = Instant::now() + delay;
            self.send(Update::State(State::Down {
                cause,
                retry: Some(retry),
            }));
            let sleep = tokio::time::sleep_until(retry.into());
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    c = self.control.recv() => match c {
                        Some(Control::ReconnectNow) => break,
                        None => return,
                    },
                    j = self.jobs.recv() => match j {
                        Some(job) => self.refuse(job, "not connected to QEMU: not sent"),
                        None => return,
                    },
                }
            }
        }
    }

    /// Connect (or accept); `Ok(false)` when the UI went away meanwhile.
    async fn connect(&mut self, client: &Client, attempt: u32) -> Result<bool, String> {
        let (target, tx) = (&self.target, &self.tx);
        let connecting = async {
            match target {
                Target::Connect(a) => {
                    let _ = tx.send(Update::State(State::Connecting(attempt)));
                    client.connect_to(again(a)?).await.map_err(|e| one_line(&e))
                }
                Target::Listen(a) => {
                    client.start_server(again(a)?).map_err(|e| one_line(&e))?;
                    let _ = tx.send(Update::State(State::Listening));
                    client.accept(None).await.map_err(|e| one_line(&e))
                }
            }
        };
        tokio::pin!(connecting);
        loop {
            tokio::select! {
                r = &mut connecting => return r.map(|()| true),
                j = self.jobs.recv() => match j {
                    Some(job) => {
                        let _ = self.tx.send(Update::Reply {
                            id: job.id,
                            result: Err("not connected to QEMU yet: not sent".into()),
                        });
                    }
                    None => return Ok(false),
                },
                c = self.control.recv() => if c.is_none() {
                    return Ok(false);
                },
            }
        }
    }

    /// Run a connected session until it ends.
    async fn session(&mut self, client: &Client) -> Ended {
        // Listen first, so no event is missed while the schema is fetched.
        let mut events = client.listen_all();
        let (completions, schema) = if self.hmp {
            (complete::fetch_hmp(client, QUERY_TIMEOUT).await, None)
        } else {
            let introspection = client
                .request("query-qmp-schema")
                .timeout(QUERY_TIMEOUT)
                .send()
                .await
                .ok();
            let completions =
                complete::fetch_qmp(client, QUERY_TIMEOUT, introspection.as_ref()).await;
            let schema = introspection
                .as_ref()
                .and_then(|v| Schema::from_introspection(v).ok())
                .map(Arc::new);
            (completions, schema)
        };
        let version = client
            .greeting()
            .map(|g| g.version.qemu.to_string())
            .unwrap_or_default();
        // Debug builds only: a panic on this task, for the test that the terminal
        // is given back and the session ends (tests/tui.rs).
        #[cfg(debug_assertions)]
        if std::env::var_os("QMP_TUI_TEST_PANIC").is_some() {
            panic!("QMP_TUI_TEST_PANIC is set");
        }
        self.send(Update::State(State::Connected));
        self.send(Update::Connected {
            version,
            completions: Arc::new(completions),
            schema,
        });
        spawn_runstate_query(client, &self.tx);
        loop {
            tokio::select! {
                e = events.recv() => match e {
                    Ok(ev) => {
                        if RUNSTATE_EVENTS.contains(&ev.name()) {
                            spawn_runstate_query(client, &self.tx);
                        }
                        self.send(Update::Event(ev));
                    }
                    Err(RecvError::Lagged(n)) => self.send(Update::Lagged(n)),
                    Err(_) => return Ended::Lost(disconnect_text(client.disconnect_cause())),
                },
                j = self.jobs.recv() => match j {
                    Some(job) => spawn_job(client, job, &self.tx),
                    None => {
                        let _ = client.disconnect().await;
                        return Ended::Closed;
                    }
                },
                c = self.control.recv() => match c {
                    Some(Control::ReconnectNow) => {
                        let _ = client.disconnect().await;
                        return Ended::Lost("reconnecting (F5)".into());
                    }
                    None => {
                        let _ = client.disconnect().await;
                        return Ended::Closed;
                    }
                },
                cause = client.wait_disconnected() => return Ended::Lost(disconnect_text(cause)),
            }
        }
    }
}

fn disconnect_text(cause: Option<Error>) -> String {
    match cause {
        None | Some(Error::ConnectionClosed { mid_message: false }) => {
            "QEMU closed the connection".into()
        }
        Some(e) => one_line(&e),
    }
}

fn spawn_runstate_query(client: &Client, tx: &mpsc::UnboundedSender<Update>) {
    let client = client.clone();
    let tx = tx.clone();
    tokio::spawn(async move {
        if let Ok(v) = client
            .request("query-status")
            .timeout(QUERY_TIMEOUT)
            .send()
            .await
        {
            if let Some(s) = v.get("status").and_then(Value::as_str) {
                let _ = tx.send(Update::RunState(s.to_owned()));
            }
        }
    });
}

fn spawn_job(client: &Client, job: Job, tx: &mpsc::UnboundedSender<Update>) {
    let client = client.clone();
    let tx = tx.clone();
    tokio::spawn(async move {
        let reply = match job.parsed {
            Parsed::Command { name, arguments } => {
                client
                    .request(&name)
                    .arguments(arguments.to_value())
                    .send_raw()
                    .await
            }
            Parsed::Raw(obj) => match obj.to_value() {
                Value::Object(o) => client.execute_raw(o).await,
                _ => return,
            },
            Parsed::Nothing => return,
        };
        let result = reply.map(|r| r.ordered()).map_err(|e| one_line(&e));
        let _ = tx.send(Update::Reply { id: job.id, result });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(4), MAX_DELAY);
        assert_eq!(backoff(40), MAX_DELAY);
    }
}
