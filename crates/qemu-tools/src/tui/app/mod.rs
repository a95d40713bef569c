//! The application state and what each key does: the transcript, the event pane, the
//! status line, the input line with completion, and the line sent to QEMU.
//!
//! Pure state: [`App::key`] and [`App::update`] change it and return what the
//! caller must do ([`Action`]); [`super::view`] draws it. Nothing here waits. What
//! each key does is in [`keys`].

mod keys;

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Instant;

use qemu_qapi::Schema;
use qemu_qmp::json::Ordered;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};

use super::connection::{Control, Job, State, Update};
use super::editor::{one_line, Editor};
use super::events::EventPane;
use super::render::json_lines;
use super::transcript::Transcript;
use crate::shell::complete::{Candidate, Completions};
use crate::shell::display::{format_json, format_log_entry};
use crate::shell::parser::{CommandParser, Parsed, COMMAND_FORMAT};
use crate::shell::runner::refusal;
use crate::shell::{PROMPT, TRANSACTION_PROMPT};

/// What the status line shows.
#[derive(Debug, Clone)]
pub struct Status {
    /// Where QEMU is.
    pub target: String,
    /// QEMU's version, once connected.
    pub version: Option<String>,
    /// The run state.
    pub runstate: Option<String>,
    /// The connection.
    pub connection: State,
}

/// A completion offered on Tab.
#[derive(Debug, Clone)]
pub struct Menu {
    /// Where the replaced text starts.
    pub start: usize,
    /// The candidates.
    pub candidates: Vec<Candidate>,
    /// The one put in the line by the last Tab.
    pub selected: Option<usize>,
}

/// What the caller must do after a key or an update.
#[derive(Debug)]
pub enum Action {
    /// Nothing.
    None,
    /// Send this command.
    Send(Job),
    /// Tell the connection task.
    Control(Control),
    /// Leave.
    Quit,
}

/// Where the panes were drawn (for the mouse).
#[derive(Debug, Clone, Copy, Default)]
pub struct Areas {
    /// The transcript pane.
    pub transcript: Rect,
    /// The event pane.
    pub events: Rect,
}

struct Sent {
    request: Ordered,
    text: String,
    /// The transcript's length right after the command was shown.
    shown_at: usize,
}

/// The whole state of the TUI.
pub struct App {
    /// The input line.
    pub editor: Editor,
    /// The event pane.
    pub events: EventPane,
    /// Commands and replies.
    pub transcript: Transcript,
    /// The status line.
    pub status: Status,
    /// The completion menu, after a Tab with several candidates.
    pub menu: Option<Menu>,
    /// The help overlay is shown.
    pub help: bool,
    /// The event filter being edited (F3).
    pub filter_edit: Option<String>,
    /// Where the panes are (set when drawn).
    pub areas: Areas,
    completions: Arc<Completions>,
    schema: Option<Arc<Schema>>,
    check: bool,
    hmp: bool,
    parser: CommandParser,
    next_id: u64,
    sent: HashMap<u64, Sent>,
    log: Option<File>,
    /// The last reason for being disconnected shown in the transcript.
    last_failure: Option<String>,
}

fn dim() -> Style {
    Style::new().add_modifier(Modifier::DIM)
}

fn error() -> Style {
    Style::new().fg(Color::Red)
}

impl App {
    /// A new state: `target` for the status line, the history, whether commands are
    /// checked against the schema, and the log file (`-l`) if any. See
    /// [`App::hmp`] for HMP mode.
    pub fn new(target: String, history: Vec<String>, check: bool, log: Option<File>) -> App {
        App {
            editor: Editor::new(history),
            events: EventPane::default(),
            transcript: Transcript::default(),
            status: Status {
                target,
                version: None,
                runstate: None,
                connection: State::Connecting(1),
            },
            menu: None,
            help: false,
            filter_edit: None,
            areas: Areas::default(),
            completions: Arc::new(Completions::default()),
            schema: None,
            check,
            hmp: false,
            parser: CommandParser::new(),
            next_id: 1,
            sent: HashMap::new(),
            log,
            last_failure: None,
        }
    }

    /// HMP mode: each line is an HMP command line, sent through
    /// `human-monitor-command`, and its text reply shown as it is (as `qmp-shell -H`).
    pub fn hmp(mut self, hmp: bool) -> App {
        self.hmp = hmp;
        self
    }

    /// The prompt of the input line.
    pub fn prompt(&self) -> &'static str {
        if self.parser.in_transaction() {
            TRANSACTION_PROMPT
        } else {
            PROMPT
        }
    }

    /// Whether the status line needs redrawing as time passes (a countdown).
    pub fn ticking(&self) -> bool {
        matches!(self.status.connection, State::Down { retry: Some(_), .. })
    }

    fn note(&mut self, text: impl Into<String>, style: Style) {
        self.transcript
            .push([Line::from(Span::styled(text.into(), style))]);
    }

    fn log_line(&mut self, line: impl FnOnce() -> String) {
        let Some(f) = &mut self.log else { return };
        if let Err(e) = writeln!(f, "{}", line()).and_then(|()| f.flush()) {
            self.log = None;
            self.note(
                format!("WARNING: cannot write the log file: {e}; logging stops"),
                error(),
            );
        }
    }

    /// Take in what the connection task says.
    pub fn update(&mut self, u: Update) {
        match u {
            Update::State(s) => {
                if let State::Down { cause, .. } = &s {
                    // Each new reason once, not once an attempt.
                    if self.status.connection == State::Connected {
                        self.note(format!("-- disconnected: {cause}"), error());
                        self.last_failure = Some(cause.clone());
                    } else if self.last_failure.as_ref() != Some(cause) {
                        self.note(format!("-- cannot connect: {cause}"), error());
                        self.last_failure = Some(cause.clone());
                    }
                }
                if s != State::Connected {
                    self.status.runstate = None;
                }
                self.status.connection = s;
            }
            Update::Connected {
                version,
                completions,
                schema,
            } => {
                self.note(format!("-- connected to QEMU {version}"), dim());
                self.last_failure = None;
                self.status.version = Some(version);
                self.completions = completions;
                self.schema = schema;
            }
            Update::RunState(s) => self.status.runstate = Some(s),
            Update::Event(ev) => {
                let ordered = ev.ordered();
                self.log_line(|| format_json(&ordered, false));
                let time = ev.timestamp().map(|t| (t.seconds, t.microseconds));
                let data = ordered.get("data").cloned();
                self.events.push(ev.name().to_owned(), time, data);
            }
            Update::Lagged(n) => {
                self.note(
                    format!("-- {n} events were dropped (the display fell behind)"),
                    error(),
                );
            }
            Update::Reply { id, result } => self.reply(id, result),
        }
    }

    fn reply(&mut self, id: u64, result: Result<Ordered, String>) {
        let Some(sent) = self.sent.remove(&id) else {
            return;
        };
        if sent.shown_at != self.transcript.len() {
            self.note(format!("↳ reply to: {}", sent.text), dim());
        }
        match result {
            Ok(reply) => {
                self.log_line(|| format_log_entry(&sent.request, &reply));
                match (self.hmp, reply.get("return"), reply.get("error")) {
                    (true, Some(Ordered::String(text)), _) => {
                        let lines: Vec<Line<'static>> =
                            text.lines().map(|l| Line::from(l.to_owned())).collect();
                        self.transcript.push(lines);
                    }
                    (true, _, Some(e)) => {
                        let text = |k| match e.get(k) {
                            Some(Ordered::String(s)) => s.as_str(),
                            _ => "?",
                        };
                        let line = format!("{}: {}", text("class"), text("desc"));
                        self.note(line, error());
                    }
                    _ => self.transcript.push(json_lines(&reply)),
                }
            }
            Err(e) => self.note(format!("Error: {e}"), error()),
        }
    }

    /// Enter: show the line, parse it, check it, and hand it over to be sent.
    fn submit(&mut self) -> Action {
        let prompt = self.prompt();
        let text = self.editor.take();
        for (i, l) in text.split('\n').enumerate() {
            let p = if i == 0 { prompt } else { "       " };
            self.transcript.push([Line::from(vec![
                Span::styled(p, dim()),
                Span::styled(l.to_owned(), Style::new().add_modifier(Modifier::BOLD)),
            ])]);
        }
        let line = one_line(&text);
        if self.hmp {
            if line.is_empty() {
                return Action::None;
            }
            let parsed = Parsed::Command {
                name: "human-monitor-command".into(),
                arguments: Ordered::Object(vec![(
                    "command-line".into(),
                    Ordered::String(line.clone()),
                )]),
            };
            return self.send(parsed, line);
        }
        let parsed = match self.parser.parse(&line) {
            Ok(Parsed::Nothing) => return Action::None,
            Ok(p) => p,
            Err(e) => {
                self.note(format!("Error while parsing command line: {e}"), error());
                self.note(COMMAND_FORMAT, dim());
                return Action::None;
            }
        };
        let Some(request) = parsed.request() else {
            return Action::None;
        };
        let refused = self
            .schema
            .as_ref()
            .filter(|_| self.check)
            .and_then(|s| refusal(s, &request));
        if let Some(reply) = refused {
            self.log_line(|| format_log_entry(&request, &reply));
            self.transcript.push(json_lines(&reply));
            return Action::None;
        }
        self.send(parsed, line)
    }

    /// Hand a command over to be sent, remembering it for its reply.
    fn send(&mut self, parsed: Parsed, text: String) -> Action {
        let Some(request) = parsed.request() else {
            return Action::None;
        };
        let id = self.next_id;
        self.next_id += 1;
        self.transcript.scroll = 0;
        self.sent.insert(
            id,
            Sent {
                request,
                text,
                shown_at: self.transcript.len(),
            },
        );
        Action::Send(Job { id, parsed })
    }

    /// The countdown text of the status line.
    pub fn connection_text(&self, now: Instant) -> String {
        match &self.status.connection {
            State::Connecting(1) => "connecting".into(),
            State::Connecting(n) => format!("connecting (attempt {n})"),
            State::Listening => "waiting for QEMU to connect".into(),
            State::Connected => "connected".into(),
            // Why is in the transcript: a long reason would push the countdown out.
            State::Down { retry: Some(t), .. } => {
                let left = t.saturating_duration_since(now).as_secs_f64();
                format!("disconnected, reconnecting in {left:.1} s (F5: now)")
            }
            State::Down { cause, retry: None } => format!("disconnected: {cause}"),
        }
    }

    /// Commands sent and not answered yet.
    pub fn waiting(&self) -> usize {
        self.sent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::render::plain;
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn type_text(app: &mut App, text: &str) {
        for c in text.chars() {
            app.key(key(KeyCode::Char(c)));
        }
    }

    fn app() -> App {
        let mut app = App::new("test".into(), Vec::new(), true, None);
        app.completions = Arc::new(Completions::qmp(
            ["query-status", "query-name", "stop"].map(String::from),
            None,
        ));
        app
    }

    fn transcript(app: &mut App) -> Vec<String> {
        app.transcript.rows(200).iter().map(plain).collect()
    }

    #[test]
    fn tab_completes_then_lists_then_cycles() {
        let mut a = app();
        type_text(&mut a, "st");
        a.key(key(KeyCode::Tab));
        assert_eq!(a.editor.text(), "stop ");
        a.editor.clear();
        type_text(&mut a, "q");
        a.key(key(KeyCode::Tab));
        assert_eq!(a.editor.text(), "query-");
        assert_eq!(a.menu.as_ref().map(|m| m.candidates.len()), Some(2));
        a.key(key(KeyCode::Tab));
        assert_eq!(a.editor.text(), "query-name ");
        a.key(key(KeyCode::Tab));
        assert_eq!(a.editor.text(), "query-status ");
        a.key(key(KeyCode::Char(' ')));
        assert!(a.menu.is_none());
    }

    #[test]
    fn a_line_is_parsed_and_sent_and_its_reply_shown() {
        let mut a = app();
        type_text(&mut a, "query-status");
        let Action::Send(job) = a.key(key(KeyCode::Enter)) else {
            panic!("not sent")
        };
        assert_eq!(
            job.parsed,
            Parsed::Command {
                name: "query-status".into(),
                arguments: Ordered::Object(Vec::new())
            }
        );
        a.update(Update::Reply {
            id: job.id,
            result: Ok(Ordered::parse(br#"{"return": {}}"#).unwrap()),
        });
        assert_eq!(
            transcript(&mut a),
            ["(QEMU) query-status", "{", r#"  "return": {}"#, "}"]
        );
        assert_eq!(a.editor.history(), ["query-status"]);
    }

    #[test]
    fn unclosed_json_continues_on_the_next_line() {
        let mut a = app();
        type_text(&mut a, r#"{"execute":"#);
        assert!(matches!(a.key(key(KeyCode::Enter)), Action::None));
        type_text(&mut a, r#" "stop"}"#);
        let Action::Send(job) = a.key(key(KeyCode::Enter)) else {
            panic!("not sent")
        };
        assert!(matches!(job.parsed, Parsed::Raw(_)));
        assert_eq!(
            transcript(&mut a),
            [r#"(QEMU) {"execute":"#, r#"        "stop"}"#]
        );
    }

    #[test]
    fn connection_failures_are_noted_once_per_reason() {
        let mut a = app();
        let down = |cause: &str| {
            Update::State(State::Down {
                cause: cause.into(),
                retry: None,
            })
        };
        for cause in ["refused", "refused", "timed out", "timed out"] {
            a.update(down(cause));
        }
        a.update(Update::State(State::Connected));
        a.update(down("QEMU closed the connection"));
        a.update(down("refused"));
        assert_eq!(
            transcript(&mut a),
            [
                "-- cannot connect: refused",
                "-- cannot connect: timed out",
                "-- disconnected: QEMU closed the connection",
                "-- cannot connect: refused",
            ]
        );
        assert_eq!(a.status.runstate, None);
    }

    #[test]
    fn hmp_lines_go_through_human_monitor_command_and_replies_are_text() {
        let mut a = app().hmp(true);
        type_text(&mut a, "info  version");
        let Action::Send(job) = a.key(key(KeyCode::Enter)) else {
            panic!("not sent")
        };
        assert_eq!(
            job.parsed.request().map(|r| r.to_string()),
            Some(r#"{"execute":"human-monitor-command","arguments":{"command-line":"info  version"}}"#.into())
        );
        a.update(Update::Reply {
            id: job.id,
            result: Ok(Ordered::parse(br#"{"return": "10.0.2\r\nmore\r\n"}"#).unwrap()),
        });
        type_text(&mut a, "bogus");
        let Action::Send(job) = a.key(key(KeyCode::Enter)) else {
            panic!("not sent")
        };
        a.update(Update::Reply {
            id: job.id,
            result: Ok(Ordered::parse(
                br#"{"error": {"class": "GenericError", "desc": "unknown command: 'bogus'"}}"#,
            )
            .unwrap()),
        });
        assert_eq!(
            transcript(&mut a),
            [
                "(QEMU) info  version",
                "10.0.2",
                "more",
                "(QEMU) bogus",
                "GenericError: unknown command: 'bogus'"
            ]
        );
    }

    #[test]
    fn parse_errors_stay_local() {
        let mut a = app();
        type_text(&mut a, "stop x");
        assert!(matches!(a.key(key(KeyCode::Enter)), Action::None));
        let t = transcript(&mut a);
        assert!(
            t[1].starts_with("Error while parsing command line"),
            "{t:?}"
        );
    }

    #[test]
    fn a_late_reply_names_its_command() {
        let mut a = app();
        type_text(&mut a, "stop");
        let Action::Send(first) = a.key(key(KeyCode::Enter)) else {
            panic!()
        };
        type_text(&mut a, "query-name");
        let Action::Send(_) = a.key(key(KeyCode::Enter)) else {
            panic!()
        };
        a.update(Update::Reply {
            id: first.id,
            result: Err("boom".into()),
        });
        let t = transcript(&mut a);
        assert_eq!(t[2..], ["↳ reply to: stop", "Error: boom"]);
    }
}
