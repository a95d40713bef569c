//! [`QemuMachine`]: a running QEMU and everything it owns.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use qemu_qapi::typed::{CallError, Command, FromEvent, TypedClient};
use qemu_qapi::Schema;
use qemu_qmp::{Client, Event, Response, Runstate, Value, Wait};
use rustix::process::Signal;
use tempfile::TempDir;
use tokio::time::Instant;
use tracing::debug;

use crate::accel::AccelChoice;
use crate::builder::MachineBuilder;
use crate::console::Console;
use crate::error::{MachineError, Result, ShutdownCause};
use crate::events::{describe, EventQueue, NoEvent};
use crate::process::{python_exit_code, Process};

/// How long a hard shutdown waits for the kernel to tear QEMU down after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the console may take to deliver QEMU's last output once QEMU exited.
const CONSOLE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything a launch hands over to the machine.
pub(crate) struct MachineParts {
    pub(crate) name: String,
    pub(crate) command_line: Vec<String>,
    pub(crate) temp_dir: TempDir,
    pub(crate) log_path: PathBuf,
    pub(crate) qmp_enabled: bool,
    pub(crate) conv_keys: bool,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) powerdown_timeout: Option<Duration>,
    pub(crate) qmp: Client,
    pub(crate) events: EventQueue,
    pub(crate) console: Option<Console>,
    pub(crate) process: Process,
    pub(crate) accel: Option<AccelChoice>,
}

/// What is removed or read at cleanup.
#[derive(Debug)]
struct Files {
    temp_dir: Option<TempDir>,
    /// QEMU's output, read at cleanup.
    log: Option<String>,
}

/// A running QEMU (Python: `QEMUMachine`), made by [`MachineBuilder::launch`].
///
/// It owns the process, its QMP connection, its console and its temporary directory,
/// and never leaks any of them: [`shutdown`](Self::shutdown) stops QEMU (gracefully,
/// falling back to SIGKILL) and cleans everything up; dropping the machine kills
/// QEMU with SIGKILL, reaps it and removes its files, also while unwinding from a
/// panic; and if this whole process dies, even by SIGKILL, QEMU is killed too (the
/// kernel's `PR_SET_PDEATHSIG`, and a watchdog for QEMU's process group). Every
/// kill reaches QEMU's whole process group, so QEMU dies also when a
/// [wrapper](MachineBuilder::wrapper) forked it; see there for exactly what is
/// covered. A temporary directory that a killed process could not remove is removed
/// by the next launch under the same base directory (see
/// [`MachineBuilder::base_temp_dir`]).
///
/// Every method takes `&self` and may be called in any state: before or after
/// shutdown, after QEMU died on its own, twice. Share a machine between tasks with an
/// `Arc`. It must be used inside the tokio runtime that launched it.
///
/// ```no_run
/// # async fn f() -> qemu_machine::Result<()> {
/// use std::time::Duration;
/// use qemu_machine::QemuMachine;
/// use serde_json::json;
///
/// let vm = QemuMachine::builder("qemu-system-x86_64")
///     .machine_type("none")
///     .launch()
///     .await?;
/// let status = vm.command("query-status", None).await?;
/// println!("{}", status["status"]);
/// vm.command("stop", None).await?;
/// let stop = vm.event_wait("STOP", Duration::from_secs(5), None).await?;
/// vm.command("quit", None).await?;
/// let shutdown = vm
///     .event_wait("SHUTDOWN", Duration::from_secs(5), Some(json!({"data": {"guest": false}})))
///     .await?;
/// vm.shutdown().await?;
/// assert_eq!(vm.exit_code(), Some(0));
/// # Ok(()) }
/// ```
pub struct QemuMachine {
    name: String,
    command_line: Vec<String>,
    temp_dir_path: PathBuf,
    log_path: PathBuf,
    qmp_enabled: bool,
    conv_keys: bool,
    shutdown_timeout: Duration,
    /// Set: a graceful shutdown asks the guest first (`system_powerdown`).
    powerdown_timeout: Option<Duration>,
    qmp: Client,
    /// Events received and not yet handed out; shared by concurrent waits, no lock
    /// held across a wait.
    events: EventQueue,
    console: Option<Console>,
    /// Set once `quit` was sent (by us or through [`QemuMachine::command`]).
    quit_issued: AtomicBool,
    /// Typed calls on `qmp`; keeps QEMU's schema, fetched by the first one.
    typed: TypedClient,
    /// Serialises shutdown, wait and kill.
    lifecycle: tokio::sync::Mutex<()>,
    files: Mutex<Files>,
    /// Dropped (QEMU killed and reaped) before the temporary directory is removed.
    process: Process,
    accel: Option<AccelChoice>,
}

impl std::fmt::Debug for QemuMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuMachine")
            .field("name", &self.name)
            .field("pid", &self.process.pid())
            .field("exit_status", &self.exit_status())
            .field("qmp", &self.qmp.runstate())
            .field("temp_dir", &self.temp_dir_path)
            .finish()
    }
}

impl QemuMachine {
    /// Settings for launching `binary` (a path, or a name looked up in `PATH`).
    pub fn builder(binary: impl Into<PathBuf>) -> MachineBuilder {
        MachineBuilder::new(binary)
    }

    pub(crate) fn new(p: MachineParts) -> QemuMachine {
        let typed = TypedClient::new(p.qmp.clone());
        QemuMachine {
            name: p.name,
            command_line: p.command_line,
            temp_dir_path: p.temp_dir.path().to_owned(),
            log_path: p.log_path,
            qmp_enabled: p.qmp_enabled,
            conv_keys: p.conv_keys,
            shutdown_timeout: p.shutdown_timeout,
            powerdown_timeout: p.powerdown_timeout,
            qmp: p.qmp,
            events: p.events,
            console: p.console,
            quit_issued: AtomicBool::new(false),
            typed,
            lifecycle: tokio::sync::Mutex::new(()),
            files: Mutex::new(Files {
                temp_dir: Some(p.temp_dir),
                log: None,
            }),
            process: p.process,
            accel: p.accel,
        }
    }

    fn files(&self) -> MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- identity and state --------------------------------------------------------

    /// The machine's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The accelerator [`MachineBuilder::best_accel`] chose (`kvm` or `tcg`), and
    /// why not KVM when it is TCG; `None` without `best_accel`.
    pub fn accel(&self) -> Option<&AccelChoice> {
        self.accel.as_ref()
    }

    /// The whole command line, wrapper included.
    pub fn command_line(&self) -> &[String] {
        &self.command_line
    }

    /// QEMU's pid while it runs (with a [wrapper](MachineBuilder::wrapper), the
    /// wrapper's, which is also QEMU's process group id); `None` once it has exited
    /// and been reaped (the pid may then belong to another process).
    pub fn pid(&self) -> Option<u32> {
        self.process.status().is_none().then(|| self.process.pid())
    }

    /// True until QEMU has exited (Python: `is_running()`).
    pub fn is_running(&self) -> bool {
        self.process.status().is_none()
    }

    /// How QEMU exited, once it has.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.process.status()
    }

    /// QEMU's exit code once it has exited, as in Python (`exitcode()`): the exit
    /// code, or minus the number of the signal that killed it.
    pub fn exit_code(&self) -> Option<i32> {
        self.process.status().map(python_exit_code)
    }

    /// The machine's temporary directory. It is removed at shutdown (and on drop), so
    /// the path may no longer exist.
    pub fn temp_dir(&self) -> &Path {
        &self.temp_dir_path
    }

    /// The file QEMU's stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// What QEMU wrote to stdout and stderr (Python: `get_log()`): read from the log
    /// file while QEMU runs, kept in memory after shutdown.
    pub fn log(&self) -> String {
        if let Some(log) = &self.files().log {
            return log.clone();
        }
        read_log(&self.log_path)
    }

    // ---- shutdown ------------------------------------------------------------------

    /// Shut QEMU down gracefully within the default timeout
    /// ([`MachineBuilder::shutdown_timeout`]); see [`shutdown_with`](Self::shutdown_with).
    pub async fn shutdown(&self) -> Result<()> {
        self.shutdown_with(false, None).await
    }

    /// Stop QEMU and clean up (Python: `shutdown(hard, timeout)`).
    ///
    /// Graceful (`hard == false`): send `quit` over QMP (SIGTERM when QMP is
    /// disabled) and wait for QEMU to exit. With
    /// [`MachineBuilder::powerdown_timeout`] set, the guest is asked first:
    /// `system_powerdown` (the ACPI power button), then up to that long for QEMU to
    /// exit because the guest powered off (`SHUTDOWN` with `guest: true`); a guest
    /// that ignores it gets `quit` (`SHUTDOWN` with `guest: false`), within what
    /// is left of `timeout`. If that fails or takes longer than
    /// `timeout` (default: [`MachineBuilder::shutdown_timeout`]; one deadline for the
    /// whole shutdown), QEMU is killed with SIGKILL and the result is
    /// [`MachineError::AbnormalShutdown`], whose cause says what went wrong. It is also
    /// `AbnormalShutdown` if QEMU had already exited abnormally (non-zero, or on a
    /// signal this library did not send).
    ///
    /// Hard (`hard == true`): SIGKILL at once.
    ///
    /// Either way, and on every error path, the QMP connection is closed, the log is
    /// read into [`log`](Self::log), and the temporary directory and socket files are
    /// removed. Calling it again, or after QEMU exited, is harmless.
    pub async fn shutdown_with(&self, hard: bool, timeout: Option<Duration>) -> Result<()> {
        let _lifecycle = self.lifecycle.lock().await;
        if self.is_cleaned_up() {
            return Ok(());
        }
        let timeout = timeout.unwrap_or(self.shutdown_timeout);
        let result = if let Some(status) = self.process.status() {
            self.check_exit(status)
                .map_err(|cause| MachineError::AbnormalShutdown { cause })
        } else if hard {
            self.hard_kill().await
        } else {
            match self.soft_shutdown(timeout).await {
                Ok(()) => Ok(()),
                Err(cause) => {
                    debug!(name = %self.name, "graceful shutdown failed: {cause}");
                    let _ = self.hard_kill().await;
                    Err(MachineError::AbnormalShutdown { cause })
                }
            }
        };
        self.cleanup().await;
        result
    }

    /// Kill QEMU with SIGKILL and clean up (Python: `kill()`, i.e. a hard shutdown).
    pub async fn kill(&self) -> Result<()> {
        self.shutdown_with(true, None).await
    }

    /// Wait for QEMU to exit by itself (e.g. the guest powers off; no `quit` is sent),
    /// then clean up and return how it exited (Python: `wait()`). If it has not exited
    /// within `timeout`, it is killed, cleaned up, and the result is
    /// [`MachineError::AbnormalShutdown`] with [`ShutdownCause::Timeout`].
    pub async fn wait(&self, timeout: Duration) -> Result<ExitStatus> {
        let _lifecycle = self.lifecycle.lock().await;
        self.quit_issued.store(true, Ordering::SeqCst);
        let result = match self.process.wait_timeout(timeout).await {
            Some(status) => Ok(status),
            None => {
                let _ = self.hard_kill().await;
                Err(MachineError::AbnormalShutdown {
                    cause: ShutdownCause::Timeout(timeout),
                })
            }
        };
        self.cleanup().await;
        result
    }

    fn is_cleaned_up(&self) -> bool {
        self.files().temp_dir.is_none()
    }

    /// Was this exit status expected?
    fn check_exit(&self, status: ExitStatus) -> std::result::Result<(), ShutdownCause> {
        use std::os::unix::process::ExitStatusExt;
        if status.success() || (status.signal().is_some() && self.process.signalled_by_us()) {
            Ok(())
        } else {
            Err(ShutdownCause::Exited(status))
        }
    }

    async fn soft_shutdown(&self, timeout: Duration) -> std::result::Result<(), ShutdownCause> {
        let deadline = Instant::now() + timeout;
        if let Some(status) = self.guest_powerdown(deadline).await {
            return self.check_exit(status);
        }
        if self.qmp_enabled {
            if self.qmp.runstate() == Runstate::Running
                && !self.quit_issued.swap(true, Ordering::SeqCst)
            {
                match tokio::time::timeout_at(deadline, self.qmp.execute("quit", None)).await {
                    Ok(Ok(_)) => {}
                    // QEMU hung up before replying: it is exiting, or already dead.
                    // Its exit status tells which.
                    Ok(Err(e)) if e.is_disconnected() => {
                        debug!(name = %self.name, "no reply to 'quit': {e}");
                    }
                    Ok(Err(e)) => return Err(ShutdownCause::Quit(e)),
                    Err(_) => return Err(ShutdownCause::Timeout(timeout)),
                }
            }
        } else {
            self.process
                .signal(Signal::TERM)
                .map_err(ShutdownCause::Terminate)?;
        }
        match self.process.wait_until(deadline).await {
            Some(status) => self.check_exit(status),
            None => Err(ShutdownCause::Timeout(timeout)),
        }
    }

    /// The guest's part of a graceful shutdown (see [`shutdown_with`]): QEMU's exit
    /// status if the guest powered off before the powerdown timeout (and `deadline`).
    ///
    /// [`shutdown_with`]: Self::shutdown_with
    async fn guest_powerdown(&self, deadline: Instant) -> Option<ExitStatus> {
        let grace = self.powerdown_timeout?;
        if !self.qmp_enabled
            || self.qmp.runstate() != Runstate::Running
            || self.quit_issued.load(Ordering::SeqCst)
        {
            return None;
        }
        let guest_deadline = deadline.min(Instant::now() + grace);
        match tokio::time::timeout_at(guest_deadline, self.qmp.execute("system_powerdown", None))
            .await
        {
            Ok(Ok(_)) => {}
            // The guest was quicker than the reply: QEMU is exiting.
            Ok(Err(e)) if e.is_disconnected() => {}
            Ok(Err(e)) => {
                debug!(name = %self.name, "'system_powerdown' failed: {e}");
                return None;
            }
            Err(_) => return None,
        }
        let status = self.process.wait_until(guest_deadline).await;
        if status.is_none() {
            debug!(name = %self.name, "the guest ignored 'system_powerdown' for {grace:?}: sending 'quit'");
        }
        status
    }

    async fn hard_kill(&self) -> Result<()> {
        self.process
            .signal(Signal::KILL)
            .map_err(|e| MachineError::io("sending SIGKILL to QEMU", e))?;
        match self.process.wait_timeout(KILL_TIMEOUT).await {
            Some(_) => Ok(()),
            None => Err(MachineError::AbnormalShutdown {
                cause: ShutdownCause::KillTimeout(KILL_TIMEOUT),
            }),
        }
    }

    /// After QEMU exited (or would not die): close QMP, let the console drain, read
    /// the log, remove the temporary directory. Idempotent.
    async fn cleanup(&self) {
        if self.is_cleaned_up() {
            return;
        }
        if let Err(e) = self.qmp.disconnect().await {
            debug!(name = %self.name, "QMP session ended with an error: {e}");
        }
        if let Some(c) = &self.console {
            c.finish(CONSOLE_FLUSH_TIMEOUT).await;
        }
        let mut files = self.files();
        files.log = Some(read_log(&self.log_path));
        if let Some(dir) = files.temp_dir.take() {
            let path = dir.path().to_owned();
            if let Err(e) = dir.close() {
                tracing::warn!(name = %self.name, "could not remove {}: {e}", path.display());
            }
        }
    }

    // ---- QMP -----------------------------------------------------------------------

    /// The QMP client, for anything the conveniences below do not cover. When QMP is
    /// disabled it is an idle client whose commands fail. Do not disconnect it: the
    /// machine does that at shutdown.
    pub fn qmp(&self) -> &Client {
        &self.qmp
    }

    fn require_qmp(&self, what: &str) -> Result<()> {
        if self.qmp_enabled {
            Ok(())
        } else {
            Err(MachineError::QmpDisabled(what.to_owned()))
        }
    }

    fn arguments(&self, args: Option<Value>) -> Option<Value> {
        match args {
            Some(a) if self.conv_keys => Some(conv_keys(a)),
            other => other,
        }
    }

    fn note_quit(&self, command: &str) {
        if command == "quit" {
            self.quit_issued.store(true, Ordering::SeqCst);
        }
    }

    /// Execute a command and return the whole reply, error replies included (Python:
    /// `qmp()`).
    pub async fn qmp_raw(&self, command: &str, args: Option<Value>) -> Result<Response> {
        self.require_qmp(&format!("execute '{command}'"))?;
        self.note_quit(command);
        self.qmp
            .request(command)
            .arguments_opt(self.arguments(args))
            .send_raw()
            .await
            .map_err(|e| MachineError::qmp(format!("command '{command}'"), e))
    }

    /// Execute a command and return its `return` value; an error reply is an error
    /// (Python: `command()` / `cmd()`).
    pub async fn command(&self, command: &str, args: Option<Value>) -> Result<Value> {
        self.require_qmp(&format!("execute '{command}'"))?;
        self.note_quit(command);
        self.qmp
            .execute(command, self.arguments(args))
            .await
            .map_err(|e| MachineError::qmp(format!("command '{command}'"), e))
    }

    // ---- typed QMP ---------------------------------------------------------------

    /// QEMU's QAPI schema (`query-qmp-schema`, with `query-version`), fetched on
    /// first use and kept for the machine's life. Typed calls are checked against it.
    pub async fn schema(&self) -> Result<&Arc<Schema>> {
        self.require_qmp("fetch the schema")?;
        self.typed.schema().await.map_err(|e| MachineError::Call {
            command: "query-qmp-schema",
            source: CallError::Schema(e),
        })
    }

    /// Execute a typed command (generated, e.g. by `qemu-qapi-types`) and decode
    /// what it returns, after checking it against this QEMU's
    /// [schema](Self::schema): a command, member or value this QEMU lacks fails
    /// locally, nothing sent, with [`MachineError::Call`] around
    /// [`CallError::Unsupported`] ([`MachineError::is_unsupported`]), which names the
    /// command and QEMU's version. Error replies are [`MachineError::Call`] too, seen
    /// through by [`MachineError::error_class`] and the other helpers.
    ///
    /// The arguments go as the type writes them ([`conv_keys`] does not apply).
    ///
    /// ```no_run
    /// # async fn f(vm: qemu_machine::QemuMachine) -> qemu_machine::Result<()> {
    /// use qemu_qapi_types::QueryStatus;
    /// let status = vm.call(QueryStatus::new()).await?;
    /// println!("running: {}", status.running);
    /// # Ok(()) }
    /// ```
    pub async fn call<C: Command>(&self, command: C) -> Result<C::Returns> {
        self.require_qmp(&format!("execute '{}'", C::NAME))?;
        // Checked before `quit` is noted: a refused call sends nothing.
        self.typed.check(&command).await.map_err(call_error::<C>)?;
        self.note_quit(C::NAME);
        self.typed
            .call_unchecked(command)
            .await
            .map_err(call_error::<C>)
    }

    /// Execute a typed command without the schema check (see [`call`](Self::call)).
    pub async fn call_unchecked<C: Command>(&self, command: C) -> Result<C::Returns> {
        self.require_qmp(&format!("execute '{}'", C::NAME))?;
        self.note_quit(C::NAME);
        self.typed
            .call_unchecked(command)
            .await
            .map_err(call_error::<C>)
    }

    /// Check a typed command against this QEMU's [schema](Self::schema) without
    /// sending it (see [`call`](Self::call)).
    pub async fn check<C: Command>(&self, command: &C) -> Result<()> {
        self.require_qmp(&format!("check '{}'", C::NAME))?;
        self.typed.check(command).await.map_err(call_error::<C>)
    }

    /// Send a descriptor to QEMU with `SCM_RIGHTS` (Python: `send_fd_scm(fd=...)`);
    /// a following `getfd` or `add-fd` command picks it up. We keep our descriptor.
    pub fn send_fd_scm(&self, fd: impl AsFd) -> Result<()> {
        self.require_qmp("send a descriptor")?;
        self.qmp
            .send_fd_scm(fd)
            .map_err(|e| MachineError::qmp("sending a descriptor", e))
    }

    /// Open a file read-only and send its descriptor (Python:
    /// `send_fd_scm(file_path=...)`). To send a descriptor open for writing, open the
    /// file yourself and use [`send_fd_scm`](Self::send_fd_scm).
    pub fn send_fd_scm_path(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let file = File::open(path)
            .map_err(|e| MachineError::io(format!("opening {}", path.display()), e))?;
        self.send_fd_scm(&file)
    }

    // ---- events --------------------------------------------------------------------

    /// Wait for an event named `name` that matches `pattern` (see
    /// [`event_match`](crate::event_match); `None` matches any event of that name),
    /// looking first at the events already received (Python: `event_wait()`).
    ///
    /// Returns `Ok(None)` if none arrives within `timeout` (one deadline for the whole
    /// wait; `Duration::ZERO` only looks at what has arrived), and
    /// [`MachineError::EventStreamEnded`] if the QMP session ends first. Events passed
    /// over are kept, in order, for later calls; the event returned is not (as in
    /// Python).
    ///
    /// Waits may run concurrently on a machine shared through an `Arc`; none holds
    /// up another. Each sees every event that arrives while it waits: an event that
    /// several waits match is returned by each of them (so two tasks waiting for the
    /// same `STOP` both get it), and one that none matches is kept. A kept event is
    /// taken by the first wait that looks for it. Dropping a wait (cancelling it)
    /// loses no event. See [`qemu_qmp::EventQueue`] for the details.
    ///
    /// The kept events are bounded ([`MachineBuilder::event_capacity`]): beyond that,
    /// the oldest are dropped, counted by [`events_lost`](Self::events_lost) and
    /// logged.
    pub async fn event_wait(
        &self,
        name: &str,
        timeout: Duration,
        pattern: Option<Value>,
    ) -> Result<Option<Event>> {
        self.events_wait(&[(name, pattern)], timeout).await
    }

    /// Wait for the first event that matches any of `events` (name and pattern pairs),
    /// like [`event_wait`](Self::event_wait) (Python: `events_wait()`).
    pub async fn events_wait(
        &self,
        events: &[(&str, Option<Value>)],
        timeout: Duration,
    ) -> Result<Option<Event>> {
        self.require_qmp("wait for events")?;
        match self.events.wait_for(events, timeout).await {
            Ok(e) => Ok(Some(e)),
            Err(NoEvent::Timeout) => Ok(None),
            Err(NoEvent::Closed) => Err(MachineError::EventStreamEnded {
                waiting_for: describe(events),
            }),
        }
    }

    /// Wait for an event that `E` decodes (one event's generated data type, such as
    /// `StopEvent`, or the generated `Event` enum for any event) and that matches
    /// `pattern`, and decode it: [`event_wait`](Self::event_wait) with the name
    /// taken from the type. The same queue, the same rules: events passed over are
    /// kept, `Ok(None)` if none arrives within `timeout`,
    /// [`MachineError::EventStreamEnded`] if the session ends first. An event whose
    /// data does not fit `E` is taken and returned as
    /// [`MachineError::EventDecode`].
    ///
    /// ```no_run
    /// # async fn f(vm: qemu_machine::QemuMachine) -> qemu_machine::Result<()> {
    /// use std::time::Duration;
    /// use qemu_qapi_types::StopEvent;
    /// vm.command("stop", None).await?;
    /// let stop: Option<StopEvent> = vm.event_wait_typed(Duration::from_secs(5), None).await?;
    /// # Ok(()) }
    /// ```
    pub async fn event_wait_typed<E: FromEvent>(
        &self,
        timeout: Duration,
        pattern: Option<Value>,
    ) -> Result<Option<E>> {
        self.require_qmp("wait for events")?;
        let names = E::names();
        let waiting_for = || match names {
            Some(names) => {
                let alternatives: Vec<(&str, Option<Value>)> =
                    names.iter().map(|n| (*n, pattern.clone())).collect();
                describe(&alternatives)
            }
            None => match &pattern {
                None | Some(Value::Null) => "any event".to_owned(),
                Some(p) => format!("any event matching {p}"),
            },
        };
        let wanted = pattern.clone();
        let matcher = move |e: &Event| {
            names.is_none_or(|names| names.contains(&e.name()))
                && crate::event_matches(e, e.name(), wanted.as_ref())
        };
        match self.events.wait_with(matcher, timeout).await {
            Ok(event) => match E::from_event(&event) {
                Ok(e) => Ok(Some(e)),
                Err(source) => Err(MachineError::EventDecode { event, source }),
            },
            Err(NoEvent::Timeout) => Ok(None),
            Err(NoEvent::Closed) => Err(MachineError::EventStreamEnded {
                waiting_for: waiting_for(),
            }),
        }
    }

    /// The oldest event not yet handed out, waiting for one as `wait` says if there is
    /// none (Python: `get_qmp_event(wait=False)`). `wait` is a [`Wait`] or converts to
    /// one: `false` (do not wait), `true` (until one comes), a `Duration`, an
    /// `Option<Duration>` (`None`: no limit), as everywhere in the workspace (see
    /// [`qemu_qmp::wait`]). Returns `None` if there is none in time, also once the QMP
    /// session has ended and every event was taken.
    ///
    /// Cancel-safe: a cancelled call takes no event.
    ///
    /// ```no_run
    /// # async fn f(vm: qemu_machine::QemuMachine) {
    /// use std::time::Duration;
    /// let queued = vm.get_qmp_event(false).await;
    /// let next = vm.get_qmp_event(Duration::from_secs(5)).await;
    /// # }
    /// ```
    pub async fn get_qmp_event(&self, wait: impl Into<Wait>) -> Option<Event> {
        self.events.pull(wait.into()).await
    }

    /// Every event not yet handed out, oldest first; if there is none, wait for one as
    /// `wait` says (see [`get_qmp_event`](Self::get_qmp_event)) (Python:
    /// `get_qmp_events(wait=False)`). Cancel-safe.
    pub async fn get_qmp_events(&self, wait: impl Into<Wait>) -> Vec<Event> {
        self.events.pull_all(wait.into()).await
    }

    /// Forget every event received so far (Python: `clear_events()`).
    pub fn clear_events(&self) {
        self.events.clear();
    }

    /// How many events were dropped, in all, because more than
    /// [`MachineBuilder::event_capacity`] were kept (received and not handed out).
    pub fn events_lost(&self) -> u64 {
        self.events.queue().total_lost()
    }

    /// The queue of events received and not yet handed out: how many it holds
    /// ([`pending`](qemu_qmp::EventQueue::pending)), its
    /// [`capacity`](qemu_qmp::EventQueue::capacity), and waits with a matcher of your
    /// own ([`wait_for`](qemu_qmp::EventQueue::wait_for)), which share it with
    /// [`event_wait`](Self::event_wait) and the others.
    pub fn event_queue(&self) -> &qemu_qmp::EventQueue {
        self.events.queue()
    }

    // ---- console -------------------------------------------------------------------

    fn console(&self) -> Result<&Console> {
        self.console.as_ref().ok_or(MachineError::NoConsole)
    }

    /// The console output kept in memory (the most recent
    /// [`console_buffer_size`](MachineBuilder::console_buffer_size) bytes), or `None`
    /// without a console.
    pub fn console_output(&self) -> Option<String> {
        self.console.as_ref().map(Console::output)
    }

    /// The next line of console output not yet consumed by this method or
    /// [`wait_for_console_pattern`](Self::wait_for_console_pattern), without its line
    /// ending. Fails with [`MachineError::Timeout`] if no complete line arrives in time,
    /// and [`MachineError::ConsoleClosed`] once QEMU has closed the console and every
    /// line was read.
    pub async fn console_read_line(&self, timeout: Duration) -> Result<String> {
        self.console()?.read_line(timeout).await
    }

    /// Consume console lines until one contains `pattern`, and return it (Python's
    /// `wait_for_console_pattern` in the avocado tests). An unterminated last line
    /// (a prompt such as `login: `) matches too. One deadline for the whole wait.
    pub async fn wait_for_console_pattern(
        &self,
        pattern: &str,
        timeout: Duration,
    ) -> Result<String> {
        self.console()?.wait_for_pattern(pattern, timeout).await
    }

    /// Write to the guest's console (its serial input). Waits while the socket is
    /// full (QEMU reads only as fast as the guest does); cancel by dropping the
    /// future.
    pub async fn console_write(&self, data: &[u8]) -> Result<()> {
        self.console()?.write(data).await
    }
}

impl Drop for QemuMachine {
    fn drop(&mut self) {
        // SIGKILL and reap first, so the temporary directory is removed after QEMU
        // stopped using it. The rest (QMP session, console task, directory) goes
        // with the fields.
        if self.process.status().is_none() {
            debug!(name = %self.name, "machine dropped while QEMU runs: killing it");
        }
        let _ = self.process.kill_and_reap();
    }
}

/// A typed call's error, with its command.
fn call_error<C: Command>(source: CallError) -> MachineError {
    MachineError::Call {
        command: C::NAME,
        source,
    }
}

fn read_log(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Convert `_` to `-` in the top-level keys of a JSON object (Python: `conv_keys`);
/// other values are returned unchanged.
///
/// ```
/// use serde_json::json;
/// assert_eq!(
///     qemu_machine::conv_keys(json!({"node_name": "a", "opts": {"x_y": 1}})),
///     json!({"node-name": "a", "opts": {"x_y": 1}})
/// );
/// ```
pub fn conv_keys(args: Value) -> Value {
    match args {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k.replace('_', "-"), v))
                .collect(),
        ),
        other => other,
    }
}
