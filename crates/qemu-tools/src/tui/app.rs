//! The application state and what each key does: the transcript, the event pane, the
//! status line, the input line with completion, and the line sent to QEMU.
//!
//! Pure state: [`App::key`] and [`App::update`] change it and return what the
//! caller must do ([`Action`]); [`super::view`] draws it. Nothing here waits.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Instant;

use qemu_qapi::Schema;
use qemu_qmp::json::Ordered;
use ratatui::crossterm::event::{
    Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEventKind,
};
use ratatui::layout::{Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};

use super::connection::{Control, Job, State, Update};
use super::editor::{one_line, Editor};
use super::events::EventPane;
use super::render::{json_lines, wrap};
use crate::shell::complete::{Candidate, Completions};
use crate::shell::display::{format_json, format_log_entry};
use crate::shell::parser::{CommandParser, Parsed, COMMAND_FORMAT};
use crate::shell::runner::refusal;
use crate::shell::{PROMPT, TRANSACTION_PROMPT};

/// The transcript keeps at most this many lines (the oldest tenth goes beyond).
const MAX_TRANSCRIPT_LINES: usize = 200_000;
/// How many rows PgUp/PgDn and the mouse wheel move.
const WHEEL_ROWS: usize = 3;

/// The commands and replies, as lines, wrapped to the pane's width on demand.
#[derive(Debug, Default)]
pub struct Transcript {
    lines: Vec<Line<'static>>,
    rows: Vec<Line<'static>>,
    /// The width `rows` were wrapped to, and how many lines they hold.
    wrapped: (usize, usize),
    /// Rows scrolled back from the newest (0: follow the end).
    pub scroll: usize,
}

impl Transcript {
    /// Add lines at the end.
    pub fn push(&mut self, lines: impl IntoIterator<Item = Line<'static>>) {
        self.lines.extend(lines);
        if self.lines.len() > MAX_TRANSCRIPT_LINES {
            self.lines.drain(..MAX_TRANSCRIPT_LINES / 10);
            self.wrapped = (0, 0);
            self.rows.clear();
        }
    }

    /// How many lines it holds.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Empty it.
    pub fn clear(&mut self) {
        self.lines.clear();
        self.rows.clear();
        self.wrapped = (0, 0);
        self.scroll = 0;
    }

    /// The lines wrapped to `width` (wrapping only what is new since the last call).
    pub fn rows(&mut self, width: usize) -> &[Line<'static>] {
        if self.wrapped.0 != width {
            self.rows.clear();
            self.wrapped = (width, 0);
        }
        for l in &self.lines[self.wrapped.1..] {
            self.rows.extend(wrap(l, width));
        }
        self.wrapped.1 = self.lines.len();
        &self.rows
    }
}

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
    parser: CommandParser,
    next_id: u64,
    sent: HashMap<u64, Sent>,
    log: Option<File>,
}

fn dim() -> Style {
    Style::new().add_modifier(Modifier::DIM)
}

fn error() -> Style {
    Style::new().fg(Color::Red)
}

impl App {
    /// A new state: `target` for the status line, the history, whether commands are
    /// checked against the schema, and the log file (`-l`) if any.
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
            parser: CommandParser::new(),
            next_id: 1,
            sent: HashMap::new(),
            log,
        }
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
                match &s {
                    State::Down { cause, .. } if self.status.connection == State::Connected => {
                        self.note(format!("-- disconnected: {cause}"), error());
                    }
                    State::Connected => {}
                    _ => {}
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
                self.transcript.push(json_lines(&reply));
            }
            Err(e) => self.note(format!("Error: {e}"), error()),
        }
    }

    /// Handle a terminal event.
    pub fn input(&mut self, ev: TermEvent) -> Action {
        match ev {
            TermEvent::Key(k) if k.kind != KeyEventKind::Release => self.key(k),
            TermEvent::Paste(text) => {
                if let Some(f) = &mut self.filter_edit {
                    f.push_str(text.trim());
                } else if self.editor.search().is_some() {
                    self.editor.search_insert(&text);
                } else {
                    self.editor.insert(&text);
                }
                Action::None
            }
            TermEvent::Mouse(m) => {
                let pos = Position::new(m.column, m.row);
                let up = match m.kind {
                    MouseEventKind::ScrollUp => true,
                    MouseEventKind::ScrollDown => false,
                    _ => return Action::None,
                };
                let scroll = if self.areas.events.contains(pos) {
                    &mut self.events.scroll
                } else {
                    &mut self.transcript.scroll
                };
                *scroll = if up {
                    scroll.saturating_add(WHEEL_ROWS)
                } else {
                    scroll.saturating_sub(WHEEL_ROWS)
                };
                Action::None
            }
            _ => Action::None,
        }
    }

    /// Handle a key.
    pub fn key(&mut self, k: KeyEvent) -> Action {
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        let alt = k.modifiers.contains(KeyModifiers::ALT);
        if self.help {
            self.help = false;
            return Action::None;
        }
        if let Some(filter) = &mut self.filter_edit {
            match k.code {
                KeyCode::Enter => {
                    let f = filter.trim().to_owned();
                    self.events.set_filter(f);
                    self.filter_edit = None;
                }
                KeyCode::Esc => self.filter_edit = None,
                KeyCode::Char('c') if ctrl => self.filter_edit = None,
                KeyCode::Backspace => {
                    filter.pop();
                }
                KeyCode::Char(c) if !ctrl && !alt => filter.push(c),
                _ => {}
            }
            return Action::None;
        }
        if self.editor.search().is_some() {
            match k.code {
                KeyCode::Char('r') if ctrl => self.editor.search_back(),
                KeyCode::Char('g' | 'c') if ctrl => self.editor.search_cancel(),
                KeyCode::Esc => self.editor.search_cancel(),
                KeyCode::Backspace => self.editor.search_backspace(),
                KeyCode::Char(c) if !ctrl && !alt => self.editor.search_insert(&c.to_string()),
                _ => self.editor.search_accept(),
            }
            return Action::None;
        }
        if k.code != KeyCode::Tab {
            self.menu = None;
        }
        match k.code {
            KeyCode::F(1) => self.help = true,
            KeyCode::F(2) => self.events.toggle_pause(),
            KeyCode::F(3) => self.filter_edit = Some(self.events.filter().to_owned()),
            KeyCode::F(5) => return Action::Control(Control::ReconnectNow),
            KeyCode::F(10) => return Action::Quit,
            KeyCode::Char('d') if ctrl => {
                if self.editor.text().is_empty() {
                    return Action::Quit;
                }
                self.editor.delete();
            }
            KeyCode::Char('c') if ctrl => {
                self.editor.clear();
                if let Some(n) = self.parser.cancel_transaction() {
                    self.note(
                        format!("Transaction cancelled ({n} actions dropped)"),
                        error(),
                    );
                }
            }
            KeyCode::Char('l') if ctrl => self.transcript.clear(),
            KeyCode::Char('r') if ctrl => self.editor.search_back(),
            KeyCode::Char('a') if ctrl => self.editor.home(),
            KeyCode::Char('e') if ctrl => self.editor.end(),
            KeyCode::Char('u') if ctrl => self.editor.kill_to_start(),
            KeyCode::Char('k') if ctrl => self.editor.kill_to_end(),
            KeyCode::Char('w') if ctrl => self.editor.kill_word(),
            KeyCode::Char('b') if ctrl => self.editor.left(),
            KeyCode::Char('f') if ctrl => self.editor.right(),
            KeyCode::Char('p') if ctrl => self.editor.up(),
            KeyCode::Char('n') if ctrl => self.editor.down(),
            KeyCode::Char('j') if ctrl => self.editor.insert("\n"),
            KeyCode::Char(c) if !ctrl && !alt => self.editor.insert(&c.to_string()),
            KeyCode::Enter if alt => self.editor.insert("\n"),
            KeyCode::Enter if self.editor.needs_more() => self.editor.insert("\n"),
            KeyCode::Enter => return self.submit(),
            KeyCode::Tab => self.complete(),
            KeyCode::Backspace => self.editor.backspace(),
            KeyCode::Delete => self.editor.delete(),
            KeyCode::Left => self.editor.left(),
            KeyCode::Right => self.editor.right(),
            KeyCode::Home => self.editor.home(),
            KeyCode::End => self.editor.end(),
            KeyCode::Up => self.editor.up(),
            KeyCode::Down => self.editor.down(),
            KeyCode::PageUp if k.modifiers.contains(KeyModifiers::SHIFT) => {
                self.events.scroll = self.events.scroll.saturating_add(self.page(true));
            }
            KeyCode::PageDown if k.modifiers.contains(KeyModifiers::SHIFT) => {
                self.events.scroll = self.events.scroll.saturating_sub(self.page(true));
            }
            KeyCode::PageUp => {
                self.transcript.scroll = self.transcript.scroll.saturating_add(self.page(false));
            }
            KeyCode::PageDown => {
                self.transcript.scroll = self.transcript.scroll.saturating_sub(self.page(false));
            }
            KeyCode::Esc => {
                self.transcript.scroll = 0;
                self.events.scroll = 0;
            }
            _ => {}
        }
        Action::None
    }

    fn page(&self, events: bool) -> usize {
        let area = if events {
            self.areas.events
        } else {
            self.areas.transcript
        };
        usize::from(area.height.saturating_sub(3)).max(1)
    }

    /// Tab: complete the word before the cursor; with several candidates, extend to
    /// their common prefix and list them, and cycle through them on the next Tabs.
    fn complete(&mut self) {
        if let Some(menu) = &mut self.menu {
            let next = menu.selected.map_or(0, |i| (i + 1) % menu.candidates.len());
            menu.selected = Some(next);
            let (start, with) = (menu.start, menu.candidates[next].replacement.clone());
            self.editor.replace_before_cursor(start, &with);
            return;
        }
        let (start, candidates) = self.completions.complete(
            self.editor.text(),
            self.editor.cursor(),
            self.parser.in_transaction(),
        );
        match candidates.len() {
            0 => {}
            1 => {
                let with = candidates[0].replacement.clone();
                self.editor.replace_before_cursor(start, &with);
            }
            _ => {
                let prefix = common_prefix(candidates.iter().map(|c| c.replacement.as_str()));
                let typed = self.editor.cursor().saturating_sub(start);
                if prefix.len() > typed {
                    self.editor.replace_before_cursor(start, &prefix);
                }
                self.menu = Some(Menu {
                    start,
                    candidates,
                    selected: None,
                });
            }
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
        let id = self.next_id;
        self.next_id += 1;
        self.transcript.scroll = 0;
        self.sent.insert(
            id,
            Sent {
                request,
                text: line,
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
            State::Down {
                cause,
                retry: Some(t),
            } => {
                let left = t.saturating_duration_since(now).as_secs_f64();
                format!("disconnected: {cause}; reconnecting in {left:.1} s (F5: now)")
            }
            State::Down { cause, retry: None } => format!("disconnected: {cause}"),
        }
    }

    /// Commands sent and not answered yet.
    pub fn waiting(&self) -> usize {
        self.sent.len()
    }
}

fn common_prefix<'a>(mut words: impl Iterator<Item = &'a str>) -> String {
    let Some(first) = words.next() else {
        return String::new();
    };
    let mut len = first.len();
    for w in words {
        len = first
            .char_indices()
            .zip(w.chars())
            .take_while(|((_, a), b)| a == b)
            .last()
            .map_or(0, |((i, a), _)| i + a.len_utf8())
            .min(len);
    }
    first[..len].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::render::plain;

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

    #[test]
    fn prefixes() {
        assert_eq!(common_prefix(["query-a", "query-b"].into_iter()), "query-");
        assert_eq!(common_prefix(["a", "b"].into_iter()), "");
        assert_eq!(common_prefix(["é1", "é2"].into_iter()), "é");
    }
}
