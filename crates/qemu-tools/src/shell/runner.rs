//! The read-execute-print loop, over an existing [`Client`].

use std::fs::File;
use std::future::Future;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qemu_qapi::{CheckErrorKind, Schema};
use qemu_qmp::json::Ordered;
use qemu_qmp::{Client, Error, RecvError, Response, Value};

use super::complete::{self, ShellHelper};
use super::display::{format_json, format_log_entry};
use super::input::{
    default_history_file, read_history, write_history, EventSink, Input, Interrupter, PipedInput,
    Terminal, HISTORY_SIZE,
};
use super::parser::{CommandParser, Parsed, COMMAND_FORMAT};

/// How long each completion (or schema) query may take at startup.
const COMPLETION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for QEMU to hang up after `quit`.
const QUIT_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for the line editor to give up a read or to stop.
const EDITOR_TIMEOUT: Duration = Duration::from_secs(3);
/// How long to wait for the last events to be printed once the session is over.
const EVENT_DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

/// The prompt, as QEMU's shell (both modes).
pub const PROMPT: &str = "(QEMU) ";
/// The prompt inside a transaction.
pub const TRANSACTION_PROMPT: &str = "TRANS> ";

/// Which monitor language the shell speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// QMP commands (`name key=value ...` or JSON).
    #[default]
    Qmp,
    /// HMP command lines, sent through `human-monitor-command`.
    Hmp,
}

/// How the shell behaves.
#[derive(Debug, Clone, Default)]
pub struct ShellOptions {
    /// QMP or HMP.
    pub mode: Mode,
    /// Print each request before sending it (`-v`).
    pub verbose: bool,
    /// Pretty-print JSON: indented, keys sorted (`-p`).
    pub pretty: bool,
    /// Write every request with its reply, and every event, as JSON lines (`-l`).
    pub logfile: Option<PathBuf>,
    /// The history file; `None` keeps no history. See
    /// [`super::input::default_history_file`].
    pub history_file: Option<PathBuf>,
    /// Interactive (line editor, banner, prompt) or not (plain lines, no noise, exit
    /// status reflects failures). See [`ShellOptions::detect`].
    pub interactive: bool,
    /// The client neither waited for a greeting nor negotiated (`-N`): the banner
    /// says only `Connected`, as QEMU's shell does, whether a greeting came or not.
    pub skip_negotiation: bool,
    /// Check each QMP-mode command against the peer's schema before sending it (on
    /// in [`ShellOptions::detect`]; `--no-check` turns it off). See [`refusal`].
    pub check: bool,
}

impl ShellOptions {
    /// Options with the defaults of the command-line tools: interactive when stdin
    /// and stdout are terminals, history in the default file when interactive.
    pub fn detect() -> Self {
        use std::io::IsTerminal;
        let interactive = io::stdin().is_terminal() && io::stdout().is_terminal();
        ShellOptions {
            interactive,
            check: true,
            history_file: if interactive {
                default_history_file()
            } else {
                None
            },
            ..Default::default()
        }
    }
}

/// How a shell session ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Commands that failed: error replies, lines that did not parse, commands that
    /// could not be sent or were interrupted.
    pub failures: u64,
    /// The session was stopped by Ctrl-C (non-interactive runs only).
    pub interrupted: bool,
    /// The session was stopped by `SIGTERM` or `SIGHUP`.
    pub terminated: bool,
    /// The connection ended on its own, with this description, when that was not
    /// the expected result of `quit` (or the shell could not start its input).
    pub lost_connection: Option<String>,
    /// The session was interactive.
    pub interactive: bool,
}

impl Outcome {
    /// The exit status for the tools: 143 when terminated, 130 when interrupted; 1
    /// when the connection was lost, or (non-interactive) when any command failed;
    /// else 0.
    /// See [`crate::exit`] for the convention.
    pub fn exit_code(&self) -> u8 {
        use crate::exit;
        if self.terminated {
            exit::TERMINATED
        } else if self.interrupted {
            exit::INTERRUPTED
        } else if self.lost_connection.is_some() || (!self.interactive && self.failures > 0) {
            exit::FAILURE
        } else {
            exit::SUCCESS
        }
    }
}

/// Wait for Ctrl-C (`SIGINT`); never returns if signals cannot be watched.
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// `SIGTERM` and `SIGHUP`, watched for the whole session.
struct Terminate {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Terminate {
    fn new() -> Option<Terminate> {
        use tokio::signal::unix::{signal, SignalKind};
        Some(Terminate {
            term: signal(SignalKind::terminate()).ok()?,
            hup: signal(SignalKind::hangup()).ok()?,
        })
    }
}

/// Wait for `SIGTERM` or `SIGHUP`; never returns if they are not watched.
async fn terminated(t: &mut Option<Terminate>) {
    match t {
        Some(t) => {
            tokio::select! {
                _ = t.term.recv() => {}
                _ = t.hup.recv() => {}
            }
        }
        None => std::future::pending().await,
    }
}

enum Source {
    Terminal(Terminal),
    Piped(PipedInput),
}

/// A log file: one JSON object a line.
struct Log {
    file: File,
    failed: bool,
}

impl Log {
    fn write(&mut self, line: &str) {
        if self.failed {
            return;
        }
        if let Err(e) = writeln!(self.file, "{line}").and_then(|()| self.file.flush()) {
            self.failed = true;
            eprintln!("WARNING: cannot write the log file: {e}; logging stops");
        }
    }
}

type SharedLog = Arc<Mutex<Option<Log>>>;

/// Log one line (formatted only when there is a log).
fn log_write(log: &SharedLog, line: impl FnOnce() -> String) {
    if let Some(l) = log.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        l.write(&line());
    }
}

/// What a command wait produced.
enum Waited<T> {
    Done(T),
    Interrupted,
    Terminated,
}

/// A shell session over a connected [`Client`] (the QMP client may have been
/// connected by the caller in any way: a socket address, or a QEMU launched by
/// `qemu-machine`).
pub struct Shell {
    client: Client,
    options: ShellOptions,
    parser: CommandParser,
    in_transaction: Arc<AtomicBool>,
    cpu_index: Option<i64>,
    log: SharedLog,
    outcome: Outcome,
    /// `quit` was sent: the end of the connection is expected.
    quit_sent: bool,
    /// Stdout cannot be written to any more.
    stdout_broken: bool,
    /// The lines entered (interactive), with those loaded from the history file.
    history: Vec<String>,
    /// A read is still pending in the line editor and cannot be ended.
    editor_stuck: bool,
    terminate: Option<Terminate>,
    /// The peer's schema, when commands are checked against it.
    schema: Option<Schema>,
}

impl Shell {
    /// Prepare a session (opens the log file, truncating it as QEMU's shell does).
    pub fn new(client: Client, options: ShellOptions) -> io::Result<Shell> {
        let log = match &options.logfile {
            Some(path) => Some(Log {
                file: File::create(path).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot create the log file {}: {e}", path.display()),
                    )
                })?,
                failed: false,
            }),
            None => None,
        };
        let outcome = Outcome {
            interactive: options.interactive,
            ..Default::default()
        };
        Ok(Shell {
            client,
            options,
            parser: CommandParser::new(),
            in_transaction: Arc::new(AtomicBool::new(false)),
            cpu_index: None,
            log: Arc::new(Mutex::new(log)),
            outcome,
            quit_sent: false,
            stdout_broken: false,
            history: Vec::new(),
            editor_stuck: false,
            terminate: None,
            schema: None,
        })
    }

    /// Run the session until end of input, `quit`, or the connection ends.
    ///
    /// From the start of the session, `SIGINT` is handled (through tokio) rather than
    /// ending the process: Ctrl-C stops waiting for a reply, or ends a
    /// non-interactive run with [`Outcome::interrupted`].
    pub async fn run(mut self) -> Outcome {
        // Listen first, so that no event is missed while completion data is fetched.
        let listener = self.client.listen_all();
        let introspection = self.fetch_introspection().await;
        if self.options.check {
            self.schema =
                introspection
                    .as_ref()
                    .and_then(|v| match Schema::from_introspection(v) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            tracing::debug!(
                                "cannot read query-qmp-schema ({e}): commands are not checked"
                            );
                            None
                        }
                    });
        }
        let (mut source, sink, interrupter) = match self.open_input(introspection.as_ref()).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ERROR: {e}");
                self.outcome.failures += 1;
                self.outcome.lost_connection = Some(e.to_string());
                return self.outcome;
            }
        };
        // Watch SIGINT from now on rather than from the first command, so the first
        // wait for a reply is already interruptible. In a terminal this comes after
        // the line editor installed its own handler, which keeps running (chained).
        let _ = tokio::time::timeout(Duration::ZERO, ctrl_c()).await;
        self.terminate = Terminate::new();
        if self.options.interactive {
            self.banner();
        }
        let pretty = self.options.pretty;
        let log = self.log.clone();
        let (stop_events, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let mut events = tokio::spawn(async move {
            let mut listener = listener;
            let show = |item: Result<qemu_qmp::Event, u64>| match item {
                Ok(ev) => {
                    // As QEMU sent it.
                    let ordered = ev.ordered();
                    log_write(&log, || format_json(&ordered, false));
                    sink.print(format_json(&ordered, pretty));
                }
                Err(n) => sink.print(format!(
                    "({n} events were dropped because the shell fell behind)"
                )),
            };
            loop {
                tokio::select! {
                    biased;
                    r = listener.recv() => match r {
                        Ok(ev) => show(Ok(ev)),
                        Err(RecvError::Lagged(n)) => show(Err(n)),
                        Err(_) => break,
                    },
                    _ = &mut stopped => {
                        // Show what has arrived, then stop.
                        loop {
                            match listener.try_recv() {
                                Ok(ev) => show(Ok(ev)),
                                Err(qemu_qmp::TryRecvError::Lagged(n)) => show(Err(n)),
                                Err(_) => break,
                            }
                        }
                        break;
                    }
                }
            }
        });

        self.repl(&mut source, interrupter).await;

        // Show the last events (QEMU's SHUTDOWN after 'quit').
        let _ = stop_events.send(());
        if tokio::time::timeout(EVENT_DRAIN_TIMEOUT, &mut events)
            .await
            .is_err()
        {
            events.abort();
            let _ = events.await;
        }
        if let Source::Terminal(t) = source {
            if !self.editor_stuck {
                t.stop(EDITOR_TIMEOUT).await;
            }
        }
        self.save_history();
        self.outcome
    }

    fn save_history(&mut self) {
        let Some(path) = self
            .options
            .history_file
            .as_ref()
            .filter(|_| self.options.interactive)
        else {
            return;
        };
        if let Err(e) = write_history(path, self.history.iter().map(String::as_str)) {
            eprintln!(
                "WARNING: Failed to save history file '{}': {e}",
                path.display()
            );
        }
    }

    /// Remember an entered line for the history file (as the editor does: no empty
    /// lines, no immediate repeats).
    fn remember(&mut self, line: &str) {
        if line.trim().is_empty() || self.history.last().is_some_and(|l| l == line) {
            return;
        }
        self.history.push(line.to_owned());
        if self.history.len() > 2 * HISTORY_SIZE {
            self.history.drain(..self.history.len() - HISTORY_SIZE);
        }
    }

    /// The reply of `query-qmp-schema`, asked once a session, in QMP mode, for the
    /// check and for completion; `None` when neither wants it or the peer does not
    /// answer it (the check and argument completion are then off).
    async fn fetch_introspection(&self) -> Option<Value> {
        if self.options.mode != Mode::Qmp || !(self.options.check || self.options.interactive) {
            return None;
        }
        let asked = self
            .client
            .request("query-qmp-schema")
            .timeout(COMPLETION_TIMEOUT)
            .send()
            .await;
        match asked {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::debug!("query-qmp-schema failed ({e}): commands are not checked");
                None
            }
        }
    }

    /// Set up where lines come from (and, interactively, completion and history).
    async fn open_input(
        &mut self,
        introspection: Option<&Value>,
    ) -> io::Result<(Source, EventSink, Option<Interrupter>)> {
        if !self.options.interactive {
            return Ok((
                Source::Piped(PipedInput::stdin()?),
                EventSink::stdout(),
                None,
            ));
        }
        let completions = match self.options.mode {
            Mode::Qmp => complete::fetch_qmp(&self.client, COMPLETION_TIMEOUT, introspection).await,
            Mode::Hmp => complete::fetch_hmp(&self.client, COMPLETION_TIMEOUT).await,
        };
        if let Some(path) = &self.options.history_file {
            match read_history(path) {
                Ok(lines) => self.history = lines,
                Err(e) => eprintln!("WARNING: Failed to read history '{}': {e}", path.display()),
            }
        }
        let helper = ShellHelper::new(Arc::new(completions), self.in_transaction.clone());
        let (terminal, sink) = Terminal::start(helper, self.history.clone())?;
        let interrupter = terminal.interrupter();
        Ok((Source::Terminal(terminal), sink, Some(interrupter)))
    }

    fn banner(&mut self) {
        let welcome = match self.options.mode {
            Mode::Qmp => "Welcome to the QMP low-level shell!",
            Mode::Hmp => "Welcome to the HMP shell!",
        };
        let greeting = self
            .client
            .greeting()
            .filter(|_| !self.options.skip_negotiation);
        let connected = match greeting {
            Some(g) => format!("Connected to QEMU {}\n", g.version.qemu),
            None => "Connected".to_owned(),
        };
        self.say(&format!("{welcome}\n{connected}"));
    }

    /// Print a line to stdout.
    fn say(&mut self, text: &str) {
        let mut out = io::stdout().lock();
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            self.stdout_broken = true;
        }
    }

    /// Print text to stdout exactly as given.
    fn say_raw(&mut self, text: &str) {
        let mut out = io::stdout().lock();
        if write!(out, "{text}").and_then(|()| out.flush()).is_err() {
            self.stdout_broken = true;
        }
    }

    fn fail(&mut self, message: &str) {
        self.outcome.failures += 1;
        eprintln!("{message}");
    }

    fn prompt(&self) -> &'static str {
        if self.parser.in_transaction() {
            TRANSACTION_PROMPT
        } else {
            PROMPT
        }
    }

    async fn repl(&mut self, source: &mut Source, interrupter: Option<Interrupter>) {
        loop {
            if self.stdout_broken {
                self.outcome.failures += 1;
                return;
            }
            if self.session_over() {
                return;
            }
            let prompt = self.prompt();
            let input = match source {
                Source::Terminal(t) => {
                    let wakes = interrupter.is_some_and(|i| i.can_interrupt());
                    let read = t.read_line(prompt);
                    tokio::pin!(read);
                    tokio::select! {
                        input = &mut read => input,
                        _ = self.client.wait_disconnected() => {
                            // Take the prompt down (and the terminal out of raw mode)
                            // before reporting.
                            self.end_read(interrupter, read).await;
                            let _ = self.session_over();
                            return;
                        }
                        _ = terminated(&mut self.terminate) => {
                            self.end_read(interrupter, read).await;
                            self.outcome.terminated = true;
                            return;
                        }
                        // An editor that cannot be woken reads in cooked mode (e.g.
                        // TERM=dumb), where Ctrl-C is a signal: leave, as Python's
                        // shell does.
                        _ = ctrl_c(), if !wakes => {
                            self.editor_stuck = true;
                            self.say("");
                            return;
                        }
                    }
                }
                Source::Piped(p) => {
                    tokio::select! {
                        input = p.read_line() => input,
                        _ = self.client.wait_disconnected() => {
                            let _ = self.session_over();
                            return;
                        }
                        _ = ctrl_c() => {
                            self.outcome.interrupted = true;
                            return;
                        }
                        _ = terminated(&mut self.terminate) => {
                            self.outcome.terminated = true;
                            return;
                        }
                    }
                }
            };
            match input {
                Input::Line(line) => {
                    if self.options.interactive {
                        self.remember(&line);
                    }
                    self.handle_line(&line).await;
                    if self.outcome.interrupted || self.outcome.terminated {
                        return;
                    }
                }
                Input::Interrupted => {
                    if let Some(n) = self.parser.cancel_transaction() {
                        self.in_transaction.store(false, Ordering::Relaxed);
                        eprintln!("Transaction cancelled ({n} actions dropped)");
                    }
                }
                Input::Eof => {
                    if let Some(n) = self.parser.cancel_transaction() {
                        self.in_transaction.store(false, Ordering::Relaxed);
                        self.fail(&format!(
                            "The transaction was not closed with ')' and was not sent ({n} actions)"
                        ));
                    }
                    if self.options.interactive {
                        // As QEMU's shell: end the prompt line.
                        self.say("");
                    }
                    return;
                }
                Input::Invalid(why) => self.fail(&format!("ERROR: {why}")),
                Input::Failed(why) => {
                    self.fail(&format!("ERROR: {why}"));
                    return;
                }
            }
        }
    }

    /// If the connection has ended, record and report it; true when it has.
    fn session_over(&mut self) -> bool {
        if self.client.runstate() == qemu_qmp::Runstate::Running
            && self.client.disconnect_cause().is_none()
        {
            return false;
        }
        let cause = self.client.disconnect_cause();
        let clean = cause
            .as_ref()
            .is_none_or(|c| matches!(c, Error::ConnectionClosed { mid_message: false }));
        if self.quit_sent && clean {
            return true;
        }
        let text = match &cause {
            Some(c) if !clean => format!("Disconnected: {c}"),
            _ => "Disconnected: QEMU closed the connection".to_owned(),
        };
        eprintln!("{text}");
        self.outcome.lost_connection = Some(text);
        true
    }

    async fn handle_line(&mut self, line: &str) {
        match self.options.mode {
            Mode::Qmp => {
                let parsed = self.parser.parse(line);
                self.in_transaction
                    .store(self.parser.in_transaction(), Ordering::Relaxed);
                match parsed {
                    Ok(Parsed::Nothing) => {}
                    Ok(p) => self.execute_qmp(p).await,
                    Err(e) => self.fail(&format!(
                        "Error while parsing command line: {e}\n{COMMAND_FORMAT}"
                    )),
                }
            }
            Mode::Hmp => self.execute_hmp(line).await,
        }
    }

    /// Wait for `fut`, or for Ctrl-C, `SIGTERM` or `SIGHUP`.
    async fn wait<T>(&mut self, fut: impl Future<Output = T>) -> Waited<T> {
        tokio::select! {
            r = fut => Waited::Done(r),
            _ = ctrl_c() => Waited::Interrupted,
            _ = terminated(&mut self.terminate) => Waited::Terminated,
        }
    }

    /// End a pending editor read (the session is ending): wake the editor, which
    /// takes the terminal out of raw mode, and wait for it a little.
    async fn end_read(
        &mut self,
        interrupter: Option<Interrupter>,
        read: std::pin::Pin<&mut impl Future<Output = Input>>,
    ) {
        let ended = interrupter.is_some_and(|i| i.interrupt())
            && tokio::time::timeout(EDITOR_TIMEOUT, read).await.is_ok();
        self.editor_stuck = !ended;
        if !ended {
            // The prompt is still on the line.
            self.say("");
        }
    }

    fn interrupted(&mut self, command: &str) {
        self.outcome.failures += 1;
        if self.options.interactive {
            eprintln!("Interrupted: no longer waiting for the reply to '{command}'");
        } else {
            eprintln!("Interrupted while waiting for the reply to '{command}'");
            self.outcome.interrupted = true;
        }
    }

    /// Show a request before it is sent (`-v`), in the order it was built.
    fn echo(&mut self, request: &Ordered) {
        if self.options.verbose {
            let text = format_json(request, self.options.pretty);
            self.say(&text);
        }
    }

    /// Send one QMP request and show the reply.
    async fn execute_qmp(&mut self, parsed: Parsed) {
        let Some(request) = parsed.request() else {
            return;
        };
        let name = match request.get("execute").or_else(|| request.get("exec-oob")) {
            Some(Ordered::String(s)) => s.clone(),
            _ => "(no command)".to_owned(),
        };
        self.echo(&request);
        if let Some(reply) = self.schema.as_ref().and_then(|s| refusal(s, &request)) {
            // Shown, logged and counted as QEMU's own error reply would be.
            self.outcome.failures += 1;
            let text = format_json(&reply, self.options.pretty);
            self.say(&text);
            log_write(&self.log, || format_log_entry(&request, &reply));
            return;
        }
        if name == "quit" {
            self.quit_sent = true;
        }
        let client = self.client.clone();
        let reply = match parsed {
            // What is sent is a plain JSON value: the order shown does not matter
            // to QEMU.
            Parsed::Command { name, arguments } => {
                let fut = async move {
                    client
                        .request(&name)
                        .arguments(arguments.to_value())
                        .send_raw()
                        .await
                };
                self.wait(fut).await
            }
            Parsed::Raw(obj) => {
                let Value::Object(obj) = obj.to_value() else {
                    return;
                };
                self.wait(client.execute_raw(obj)).await
            }
            Parsed::Nothing => return,
        };
        self.show_reply(&name, &request, reply, |shell, reply| {
            let text = format_json(reply, shell.options.pretty);
            shell.say(&text);
        });
        if name == "quit" {
            self.await_hangup().await;
        }
    }

    /// Show a reply (or why there is none), log it, and count failures. `show` prints
    /// a reply object, in the order QEMU sent it.
    fn show_reply(
        &mut self,
        command: &str,
        request: &Ordered,
        reply: Waited<qemu_qmp::Result<Response>>,
        show: impl FnOnce(&mut Self, &Ordered),
    ) {
        match reply {
            Waited::Interrupted => self.interrupted(command),
            Waited::Terminated => {
                self.outcome.failures += 1;
                self.outcome.terminated = true;
            }
            Waited::Done(Ok(resp)) => {
                if resp.is_error() {
                    self.outcome.failures += 1;
                }
                let ordered = resp.ordered();
                show(self, &ordered);
                log_write(&self.log, || format_log_entry(request, &ordered));
            }
            Waited::Done(Err(e)) => {
                if self.quit_sent && e.is_disconnected() {
                    // QEMU quit before answering.
                    return;
                }
                self.fail(&format!("Error: {e}"));
            }
        }
    }

    /// After `quit`: give QEMU a moment to hang up, so the shell ends at once.
    async fn await_hangup(&mut self) {
        let client = self.client.clone();
        let _ = self
            .wait(tokio::time::timeout(QUIT_GRACE, client.wait_disconnected()))
            .await;
    }

    /// The request for an HMP command line, in the order Python's shell builds it.
    fn hmp_request(&self, line: &str, cpu_index: Option<i64>) -> Ordered {
        let mut args = vec![("command-line".into(), Ordered::String(line.to_owned()))];
        if let Some(i) = cpu_index {
            args.push(("cpu-index".into(), Ordered::Number(i.into())));
        }
        Ordered::Object(vec![
            (
                "execute".into(),
                Ordered::String("human-monitor-command".into()),
            ),
            ("arguments".into(), Ordered::Object(args)),
        ])
    }

    async fn send_hmp(&mut self, request: &Ordered) -> Waited<qemu_qmp::Result<Response>> {
        let args = request
            .get("arguments")
            .map_or(Value::Null, Ordered::to_value);
        let client = self.client.clone();
        let fut = async move {
            client
                .request("human-monitor-command")
                .arguments(args)
                .send_raw()
                .await
        };
        self.wait(fut).await
    }

    /// Run one HMP command line.
    async fn execute_hmp(&mut self, line: &str) {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else {
            return;
        };
        if first == "cpu" {
            // As QEMU's shell: check the index with 'info version' on that CPU, then
            // use it for every later command.
            let Some(index) = words.next().and_then(|w| w.parse::<i64>().ok()) else {
                self.fail("cpu command takes an integer argument");
                return;
            };
            let probe = self.hmp_request("info version", Some(index));
            match self.send_hmp(&probe).await {
                Waited::Done(Ok(r)) if r.return_value().is_some() => self.cpu_index = Some(index),
                Waited::Done(Ok(_)) => {
                    self.fail("bad CPU index");
                    return;
                }
                other => {
                    self.show_reply("human-monitor-command", &probe, other, |_, _| {});
                    return;
                }
            }
        }
        if matches!(first, "quit" | "q") {
            self.quit_sent = true;
        }
        let request = self.hmp_request(line, self.cpu_index);
        self.echo(&request);
        let reply = self.send_hmp(&request).await;
        self.show_reply(
            "human-monitor-command",
            &request,
            reply,
            |shell, reply| match (reply.get("return"), reply.get("error")) {
                (Some(Ordered::String(text)), _) => {
                    if !text.is_empty() {
                        if text.ends_with('\n') {
                            shell.say_raw(text);
                        } else {
                            shell.say(text);
                        }
                    }
                }
                (_, Some(err)) => {
                    let text = |key| match err.get(key) {
                        Some(Ordered::String(s)) => Some(s.as_str()),
                        _ => None,
                    };
                    let class = text("class").unwrap_or("?");
                    let desc = text("desc").unwrap_or("");
                    shell.say(&format!("{class}: {desc}"));
                }
                _ => {
                    let text = format_json(reply, shell.options.pretty);
                    shell.say(&text);
                }
            },
        );
        if self.quit_sent {
            self.await_hangup().await;
        }
    }
}

/// The error reply the shell shows in QEMU's place for a request `schema` refuses
/// (`None` if it accepts it): `{"error": {"class": C, "desc": D}}`, C as QEMU would
/// say (`CommandNotFound` for an unknown command, else `GenericError`), D the
/// [`qemu_qapi::CheckError`] followed by ` (not sent)`; a request's `id` comes first,
/// where QEMU 7.2 and 10.0 put it (`{"id": 7, "error": ...}`).
pub fn refusal(schema: &Schema, request: &Ordered) -> Option<Ordered> {
    let Value::Object(map) = request.to_value() else {
        return None;
    };
    let e = schema.check_command(&map).err()?;
    let class = match e.kind {
        CheckErrorKind::UnknownCommand { .. } => "CommandNotFound",
        _ => "GenericError",
    };
    let error = Ordered::Object(vec![
        ("class".into(), Ordered::String(class.into())),
        ("desc".into(), Ordered::String(format!("{e} (not sent)"))),
    ]);
    let id = request.get("id").map(|id| ("id".into(), id.clone()));
    let reply = id.into_iter().chain([("error".into(), error)]).collect();
    Some(Ordered::Object(reply))
}

/// Run a shell session over `client` (see [`Shell`]).
pub async fn run(client: Client, options: ShellOptions) -> io::Result<Outcome> {
    Ok(Shell::new(client, options)?.run().await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_can_run_on_any_task() {
        fn send<T: Send>(_: &T) {}
        let shell = Shell::new(Client::new(), ShellOptions::default()).unwrap();
        let session = shell.run();
        send(&session);
    }

    #[test]
    fn exit_codes() {
        let o = |f: fn(&mut Outcome)| {
            let mut o = Outcome::default();
            f(&mut o);
            o.exit_code()
        };
        assert_eq!(o(|_| {}), 0);
        assert_eq!(o(|o| o.failures = 2), 1);
        assert_eq!(
            o(|o| {
                o.failures = 2;
                o.interactive = true
            }),
            0
        );
        assert_eq!(o(|o| o.lost_connection = Some("x".into())), 1);
        assert_eq!(o(|o| o.interrupted = true), 130);
        assert_eq!(o(|o| o.terminated = true), 143);
    }

    #[test]
    fn refusals_read_as_qemu_error_replies() {
        let schema = Schema::from_introspection(&serde_json::json!([
            {"name": "qom-get", "meta-type": "command", "arg-type": "0", "ret-type": "any"},
            {"name": "0", "meta-type": "object", "members": [
                {"name": "path", "type": "str"}, {"name": "property", "type": "str"}]},
            {"name": "str", "meta-type": "builtin", "json-type": "string"},
            {"name": "any", "meta-type": "builtin", "json-type": "value"},
        ]))
        .unwrap();
        let refused = |request: &str| {
            let request = Ordered::parse(request.as_bytes()).unwrap();
            refusal(&schema, &request).map(|r| r.to_string())
        };
        assert_eq!(
            refused(r#"{"execute": "qom-get", "arguments": {"path": "/", "property": "x"}}"#),
            None
        );
        assert_eq!(
            refused(r#"{"execute": "qom-gte", "arguments": {}}"#).as_deref(),
            Some(concat!(
                r#"{"error":{"class":"CommandNotFound","desc":"#,
                r#""qom-gte: execute: unknown command (did you mean 'qom-get'?) (not sent)"}}"#
            ))
        );
        assert_eq!(
            refused(
                r#"{"execute": "qom-get", "arguments": {"path": "/", "property": 1}, "id": 7}"#
            )
            .as_deref(),
            Some(concat!(
                r#"{"id":7,"error":{"class":"GenericError","desc":"#,
                r#""qom-get: arguments.property: expected string, got integer (not sent)"}}"#
            ))
        );
    }

    #[test]
    fn a_log_file_that_cannot_be_created_is_an_error() {
        let options = ShellOptions {
            logfile: Some("/nonexistent/dir/log".into()),
            ..Default::default()
        };
        let e = Shell::new(Client::new(), options).err().unwrap();
        assert!(e.to_string().contains("cannot create the log file"), "{e}");
    }
}
