//! `qmp-tui`: a full-screen QMP console (QEMU's Python `qmp-tui`, with more).
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use qemu_tools::tui::{self, Target, TuiOptions};
//! let target = Target::Connect("/run/vm1/qmp.sock".parse().map_err(std::io::Error::other)?);
//! let outcome = tui::run(TuiOptions::new(target)).await?;
//! std::process::exit(outcome.code.into());
//! # }
//! ```
//!
//! # How it works
//!
//! Three parts run at once, and none waits for another:
//!
//! - a thread reads the terminal (crossterm's `event::read`, which blocks) and passes
//!   keys, pastes, mouse and resize events down a channel;
//! - the connection task ([`connection`]) connects, reconnects, runs each command on
//!   a task of its own and passes replies, events and state changes down another;
//! - the main loop (here) takes from both channels and from the signals, changes the
//!   state ([`app`]: the transcript, the [`events`] pane, the status line, the
//!   [`editor`]) and draws it ([`view`], with [`render`] for highlighted JSON).
//!
//! So typing goes on while a command runs, and an event lands in its pane without
//! touching the line being typed. The line is read by `qmp-shell`'s parser
//! ([`crate::shell::parser`]), completed by its completer
//! ([`crate::shell::complete`], from the live `query-qmp-schema`), checked against
//! the schema before sending ([`crate::shell::runner::refusal`], off with
//! `--no-check`), and kept in `qmp-shell`'s history file
//! ([`crate::shell::input::default_history_file`]). `-l` logs as `qmp-shell -l`.
//!
//! The terminal is given back on every way out ([`terminal`]): drop, panic hook,
//! and `SIGTERM`, `SIGHUP` and `SIGINT`, which end the main loop like F10 does.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use ratatui::crossterm::event;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

pub mod app;
pub mod connection;
pub mod editor;
pub mod events;
pub mod render;
pub mod terminal;
pub mod transcript;
pub mod view;

pub use connection::Target;

use crate::exit;
use crate::shell::input::{default_history_file, read_history, write_history};
use app::{Action, App};
use connection::{Connection, State, Update};

/// How often the terminal-reading thread looks whether it should stop.
const INPUT_POLL: Duration = Duration::from_millis(100);
/// How often the status line's countdown is redrawn (and a panic looked for).
const TICK: Duration = Duration::from_millis(200);
/// At most this many updates from the connection are taken in between two frames.
const BATCH: usize = 1024;
/// How long the connection may take to close at exit.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How `qmp-tui` runs.
#[derive(Debug)]
pub struct TuiOptions {
    /// Where QEMU is.
    pub target: Target,
    /// Reconnect when the connection ends (else leave, with status 1).
    pub reconnect: bool,
    /// Check commands against the schema before sending them.
    pub check: bool,
    /// Log requests with their replies, and events, as JSON lines (`-l`).
    pub logfile: Option<PathBuf>,
    /// The history file (`None`: no history).
    pub history_file: Option<PathBuf>,
    /// Ask the terminal for mouse reporting (wheel scrolling).
    pub mouse: bool,
    /// HMP mode: lines are HMP commands ([`App::hmp`]).
    pub hmp: bool,
}

impl TuiOptions {
    /// The defaults: reconnect, check, no log, `qmp-shell`'s history file, the mouse.
    pub fn new(target: Target) -> TuiOptions {
        TuiOptions {
            target,
            reconnect: true,
            check: true,
            logfile: None,
            history_file: default_history_file(),
            mouse: true,
            hmp: false,
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The exit status ([`crate::exit`]): 0 when the user left, 1 when the
    /// connection was lost without `reconnect`, 143 on `SIGTERM`/`SIGHUP`, 130 on
    /// `SIGINT`.
    pub code: u8,
    /// What to print on stderr once the terminal is back (a lost connection, a
    /// history file that could not be written).
    pub messages: Vec<String>,
}

/// Reads the terminal on a thread of its own.
struct InputThread {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl InputThread {
    fn start() -> io::Result<(
        InputThread,
        mpsc::UnboundedReceiver<io::Result<event::Event>>,
    )> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::unbounded_channel();
        let flag = stop.clone();
        let handle = thread::Builder::new()
            .name("qmp-tui-input".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let read = event::poll(INPUT_POLL)
                        .and_then(|ready| ready.then(event::read).transpose());
                    match read {
                        Ok(None) => {}
                        Ok(Some(ev)) => {
                            if tx.send(Ok(ev)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
            })?;
        Ok((
            InputThread {
                stop,
                handle: Some(handle),
            },
            rx,
        ))
    }
}

impl Drop for InputThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            // It looks at the flag every INPUT_POLL.
            let _ = h.join();
        }
    }
}

fn internal_error() -> io::Error {
    io::Error::other("qmp-tui hit an internal error (the panic is reported above)")
}

/// Apply an update; returns why the session is over when the connection ended for
/// good (`--no-reconnect`).
fn take_update(app: &mut App, u: Update) -> Option<String> {
    let gone = match &u {
        Update::State(State::Down { retry: None, cause }) => Some(cause.clone()),
        _ => None,
    };
    app.update(u);
    gone
}

/// Run `qmp-tui` on this terminal until the user leaves (or a signal, or the
/// connection ends without `reconnect`). Errors: the log file cannot be created,
/// the terminal cannot be set up or written to.
pub async fn run(options: TuiOptions) -> io::Result<Outcome> {
    let log = match &options.logfile {
        Some(p) => Some(File::create(p).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create the log file {}: {e}", p.display()),
            )
        })?),
        None => None,
    };
    let mut messages = Vec::new();
    let history = match &options.history_file {
        Some(p) => read_history(p).unwrap_or_else(|e| {
            messages.push(format!(
                "WARNING: Failed to read history '{}': {e}",
                p.display()
            ));
            Vec::new()
        }),
        None => Vec::new(),
    };
    let mut app =
        App::new(options.target.to_string(), history, options.check, log).hmp(options.hmp);
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut int = signal(SignalKind::interrupt())?;

    let mut screen = terminal::Screen::enter(options.mouse)?;
    let (input, mut keys) = InputThread::start()?;
    let mut conn = Connection::start(options.target, options.reconnect, options.hmp);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // Drawn when something changed; the tick also looks for a panic on another
    // task (the hook has given the terminal back: the session must end).
    let mut dirty = true;
    let ended: io::Result<u8> = loop {
        if terminal::panicked() {
            break Err(internal_error());
        }
        if dirty {
            if let Err(e) = screen.terminal.draw(|f| view::draw(f, &mut app)) {
                break Err(e);
            }
        }
        dirty = true;
        let action = tokio::select! {
            k = keys.recv() => match k {
                Some(Ok(ev)) => app.input(ev),
                Some(Err(e)) => break Err(e),
                None => break Err(io::Error::other("the terminal input ended")),
            },
            u = conn.updates.recv() => match u {
                Some(u) => match take_update(&mut app, u) {
                    Some(cause) => {
                        messages.push(format!("ERROR: {cause}"));
                        break Ok(exit::FAILURE);
                    }
                    None => Action::None,
                },
                // Its task can only end early by panicking.
                None => break Err(internal_error()),
            },
            _ = tick.tick() => {
                dirty = app.ticking();
                Action::None
            }
            _ = term.recv() => break Ok(exit::TERMINATED),
            _ = hup.recv() => break Ok(exit::TERMINATED),
            _ = int.recv() => break Ok(exit::INTERRUPTED),
        };
        // Take in what else has come before drawing again: an event storm then
        // costs one frame per batch, not one per event.
        let mut gone = None;
        for _ in 0..BATCH {
            match conn.updates.try_recv() {
                Ok(u) => {
                    dirty = true;
                    gone = gone.or(take_update(&mut app, u));
                }
                Err(_) => break,
            }
        }
        if let Some(cause) = gone {
            messages.push(format!("ERROR: {cause}"));
            break Ok(exit::FAILURE);
        }
        match action {
            Action::None => {}
            Action::Quit => break Ok(exit::SUCCESS),
            Action::Send(job) => {
                let id = job.id;
                if conn.jobs.send(job).is_err() {
                    app.update(Update::Reply {
                        id,
                        result: Err("the connection task has ended".into()),
                    });
                }
            }
            Action::Control(c) => {
                let _ = conn.control.send(c);
            }
        }
    };
    // The terminal first: whatever happens next is readable.
    drop(screen);
    drop(input);
    conn.close(CLOSE_GRACE).await;
    if let Some(p) = &options.history_file {
        if let Err(e) = write_history(p, app.editor.history().iter().map(String::as_str)) {
            messages.push(format!(
                "WARNING: Failed to save history file '{}': {e}",
                p.display()
            ));
        }
    }
    Ok(Outcome {
        code: ended?,
        messages,
    })
}
