//! Drawing the state ([`super::app::App`]) with ratatui.
//!
//! ```text
//! ┌ transcript ─────────────────────────────┐┌ events 3 ────────────────────┐
//! │(QEMU) query-status                      ││15:02:11.204 STOP             │
//! │{                                        ││15:02:12.918 RESUME           │
//! │  "return": {                            ││                              │
//! │    "status": "running", ...             │└ STOP 1 · RESUME 1 ──────────┘
//! └─────────────────────────────────────────┘
//!  ./qmp.sock │ QEMU 10.0.2 │ running │ connected │ F1 help
//! (QEMU) query-|
//! ```
//!
//! Wide terminals (100 columns or more) put the event pane on the right (38%), narrower
//! ones below the transcript.

use std::time::Instant;

use ratatui::layout::{Constraint, Direction, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};
use ratatui::Frame;

use super::app::App;
use super::connection::State;
use super::render::{json_line, key_style, wrap};

/// The input area grows with the text up to this many rows.
const MAX_INPUT_ROWS: u16 = 10;
/// At most this many rows list completion candidates.
const MAX_MENU_ROWS: u16 = 6;

/// The keys, for the help overlay.
pub const HELP: &[(&str, &str)] = &[
    (
        "Enter",
        "send the line (an unclosed JSON object continues on the next line)",
    ),
    ("Alt-Enter, Ctrl-J", "break the line"),
    (
        "Tab",
        "complete a command, argument or value; again: next candidate",
    ),
    (
        "Up, Down",
        "previous, next line of the history (or of a multi-line input)",
    ),
    (
        "Ctrl-R",
        "search the history (again: older; Enter: take it; Esc: cancel)",
    ),
    (
        "Ctrl-A/E/U/K/W",
        "start, end, delete to start, to end, word before",
    ),
    ("Ctrl-C", "clear the line (and cancel a transaction)"),
    ("PgUp, PgDn", "scroll the transcript (Esc: back to the end)"),
    (
        "Shift-PgUp/PgDn",
        "scroll the events (the mouse wheel scrolls either pane)",
    ),
    ("F2", "pause or resume the event pane"),
    ("F3", "filter events by name (empty: all)"),
    ("F5", "reconnect now"),
    ("Ctrl-L", "clear the transcript"),
    ("F1", "this help (any key closes it)"),
    ("Ctrl-D, F10", "leave"),
];

/// Draw everything.
pub fn draw(frame: &mut Frame<'_>, app: &mut App) {
    let area = frame.area();
    let input = input_lines(app, area.width);
    let input_rows = (input.rows.len() as u16).clamp(1, MAX_INPUT_ROWS);
    let menu_rows = app.menu.as_ref().map_or(0, |m| {
        let width: usize = m.candidates.iter().map(|c| c.display.len() + 2).sum();
        ((width / usize::from(area.width.max(1))) as u16 + 1).min(MAX_MENU_ROWS)
    });
    let [main, status, menu, input_area] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(menu_rows),
        Constraint::Length(input_rows),
    ])
    .areas(area);
    let (direction, split) = if area.width >= 100 {
        (Direction::Horizontal, [62, 38])
    } else {
        (Direction::Vertical, [60, 40])
    };
    let panes = Layout::default()
        .direction(direction)
        .constraints(split.map(Constraint::Percentage))
        .split(main);
    app.areas.transcript = panes[0];
    app.areas.events = panes[1];
    draw_transcript(frame, app, panes[0]);
    draw_events(frame, app, panes[1]);
    draw_status(frame, app, status);
    if let Some(m) = &app.menu {
        let spans: Vec<Span<'_>> = m
            .candidates
            .iter()
            .enumerate()
            .flat_map(|(i, c)| {
                let style = if m.selected == Some(i) {
                    Style::new().add_modifier(Modifier::REVERSED)
                } else {
                    key_style()
                };
                [Span::styled(c.display.clone(), style), Span::raw("  ")]
            })
            .collect();
        frame.render_widget(
            Paragraph::new(Line::from(spans)).wrap(Wrap { trim: false }),
            menu,
        );
    }
    // The input: the rows around the cursor.
    let skip = (input.cursor.1 + 1).saturating_sub(usize::from(input_rows));
    let shown: Vec<Line<'static>> = input.rows.into_iter().skip(skip).collect();
    frame.render_widget(Paragraph::new(shown), input_area);
    let (col, row) = input.cursor;
    frame.set_cursor_position(Position::new(
        input_area.x + col as u16,
        input_area.y + (row - skip) as u16,
    ));
    if app.help {
        draw_help(frame, area);
    }
}

fn draw_transcript(frame: &mut Frame<'_>, app: &mut App, area: Rect) {
    let mut title = " transcript ".to_owned();
    if app.waiting() > 0 {
        let n = app.waiting();
        let replies = if n == 1 { "reply" } else { "replies" };
        title.push_str(&format!("(waiting for {n} {replies}) "));
    }
    let scrolled = app.transcript.scroll;
    let block = Block::default().borders(Borders::ALL).title(title);
    let inner = block.inner(area);
    let rows = app.transcript.rows(usize::from(inner.width));
    let height = usize::from(inner.height);
    let max_scroll = rows.len().saturating_sub(height);
    let scroll = scrolled.min(max_scroll);
    app.transcript.scroll = scroll;
    let rows = app.transcript.rows(usize::from(inner.width));
    let end = rows.len() - scroll;
    let visible = rows[end.saturating_sub(height)..end].to_vec();
    let block = if scroll > 0 {
        block.title_bottom(format!(" {scroll} rows back (Esc: end) "))
    } else {
        block
    };
    frame.render_widget(Paragraph::new(visible).block(block), area);
}

fn draw_events(frame: &mut Frame<'_>, app: &mut App, area: Rect) {
    let pane = &app.events;
    let mut title = format!(" events {} ", pane.total());
    if !pane.filter().is_empty() {
        title.push_str(&format!("[filter {}] ", pane.filter()));
    }
    if pane.paused() {
        title.push_str(&format!("[paused +{}] ", pane.waiting()));
    }
    let block = Block::default()
        .borders(Borders::ALL)
        .title(title)
        .title_bottom(format!(" {} ", pane.counts_line()));
    let inner = block.inner(area);
    let width = usize::from(inner.width);
    let height = usize::from(inner.height);
    // Newest first, only as many as are shown (the pane may hold thousands).
    let wanted = height.saturating_add(pane.scroll);
    let mut rows: Vec<Line<'static>> = Vec::new();
    for e in pane.visible().rev() {
        if rows.len() >= wanted {
            break;
        }
        let mut spans = vec![
            Span::styled(e.clock(), Style::new().add_modifier(Modifier::DIM)),
            Span::raw(" "),
            Span::styled(
                e.name.clone(),
                Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
            ),
        ];
        if let Some(d) = &e.data {
            spans.push(Span::raw(" "));
            spans.extend(json_line(d).spans);
        }
        let mut event_rows = wrap(&Line::from(spans), width);
        event_rows.reverse();
        rows.extend(event_rows);
    }
    rows.reverse();
    let scroll = pane.scroll.min(rows.len().saturating_sub(height));
    app.events.scroll = scroll;
    let end = rows.len() - scroll;
    let visible = rows[end.saturating_sub(height)..end].to_vec();
    frame.render_widget(Paragraph::new(visible).block(block), area);
}

fn draw_status(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let s = &app.status;
    let sep = || Span::styled(" │ ", Style::new().add_modifier(Modifier::DIM));
    let mut spans = vec![Span::raw(" "), Span::raw(s.target.clone())];
    if let Some(v) = &s.version {
        spans.extend([sep(), Span::raw(format!("QEMU {v}"))]);
    }
    if let Some(r) = &s.runstate {
        spans.extend([sep(), Span::styled(r.clone(), Style::new().fg(Color::Cyan))]);
    }
    let conn_style = match s.connection {
        State::Connected => Style::new().fg(Color::Green),
        State::Down { .. } => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        _ => Style::new().fg(Color::Yellow),
    };
    spans.extend([
        sep(),
        Span::styled(app.connection_text(Instant::now()), conn_style),
        sep(),
        Span::raw("F1 help"),
    ]);
    frame.render_widget(
        Paragraph::new(Line::from(spans)).style(Style::new().add_modifier(Modifier::REVERSED)),
        area,
    );
}

fn draw_help(frame: &mut Frame<'_>, area: Rect) {
    let lines: Vec<Line<'_>> = HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:>18}  "), key_style()),
                Span::raw(*what),
            ])
        })
        .collect();
    let width = (lines.iter().map(Line::width).max().unwrap_or(0) as u16 + 2).min(area.width);
    let height = (lines.len() as u16 + 2).min(area.height);
    let rect = Rect::new(
        area.x + (area.width - width) / 2,
        area.y + (area.height - height) / 2,
        width,
        height,
    );
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" keys ")),
        rect,
    );
}

/// The input area's rows and the cursor in it (column, row).
struct InputRows {
    rows: Vec<Line<'static>>,
    cursor: (usize, usize),
}

fn input_lines(app: &App, width: u16) -> InputRows {
    let width = usize::from(width).max(1);
    let prompt_style = Style::new().fg(Color::Green).add_modifier(Modifier::BOLD);
    let (prefix, text, cursor_char) = if let Some(f) = &app.filter_edit {
        ("event filter: ".to_owned(), f.clone(), f.chars().count())
    } else if let Some(s) = app.editor.search() {
        let found = app.editor.search_found().unwrap_or("");
        let prefix = format!("(history search)'{}': ", s.query);
        return one_row(prefix, found.to_owned(), 0, width, prompt_style, true);
    } else {
        let (line, col) = app.editor.cursor_position();
        let mut rows = Vec::new();
        let mut cursor = (0, 0);
        for (i, l) in app.editor.text().split('\n').enumerate() {
            let p = if i == 0 { app.prompt() } else { "       " };
            let line_rows = wrap(
                &Line::from(vec![
                    Span::styled(p.to_owned(), prompt_style),
                    Span::raw(l.to_owned()),
                ]),
                width,
            );
            if i == line {
                let at = p.chars().count() + col;
                cursor = (at % width, rows.len() + at / width);
            }
            rows.extend(line_rows);
        }
        if cursor.1 >= rows.len() {
            rows.push(Line::default());
        }
        return InputRows { rows, cursor };
    };
    one_row(prefix, text, cursor_char, width, prompt_style, false)
}

fn one_row(
    prefix: String,
    text: String,
    cursor: usize,
    width: usize,
    style: Style,
    cursor_at_prefix_end: bool,
) -> InputRows {
    let at = prefix.chars().count() + if cursor_at_prefix_end { 0 } else { cursor };
    let rows = wrap(
        &Line::from(vec![Span::styled(prefix, style), Span::raw(text)]),
        width,
    );
    let mut rows = rows;
    let cursor = (at % width, at / width);
    while rows.len() <= cursor.1 {
        rows.push(Line::default());
    }
    InputRows { rows, cursor }
}
