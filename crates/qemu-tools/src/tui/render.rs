//! Highlighted JSON as ratatui [`Line`]s, and the wrapping of styled lines to a width.
//!
//! Replies and events are shown indented by 2, their members in the order QEMU wrote
//! them (the client keeps it: [`qemu_qmp::Response::ordered`]), unlike `qmp-shell -p`,
//! which sorts them as Python's `json.dumps(sort_keys=True)` does. Scalars are
//! written as `qmp-shell` writes them ([`crate::shell::display::format_json`]), so a
//! float reads the same in both tools.
//!
//! Colours: member names cyan, strings green, numbers magenta, `true`/`false`/`null`
//! yellow, punctuation dim; an `error` member is red, so a failed command stands out.

use qemu_qmp::json::Ordered;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};

use crate::shell::display::format_json;

/// How many spaces one level of nesting indents.
const INDENT: usize = 2;

/// The style of member names.
pub fn key_style() -> Style {
    Style::new().fg(Color::Cyan)
}

fn string_style() -> Style {
    Style::new().fg(Color::Green)
}

fn number_style() -> Style {
    Style::new().fg(Color::Magenta)
}

fn literal_style() -> Style {
    Style::new().fg(Color::Yellow)
}

fn punct_style() -> Style {
    Style::new().add_modifier(Modifier::DIM)
}

fn error_style() -> Style {
    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
}

/// Builds lines span by span.
struct Builder {
    lines: Vec<Line<'static>>,
    current: Vec<Span<'static>>,
}

impl Builder {
    fn push(&mut self, text: impl Into<String>, style: Style) {
        self.current.push(Span::styled(text.into(), style));
    }

    fn newline(&mut self, level: usize) {
        let spans = std::mem::take(&mut self.current);
        self.lines.push(Line::from(spans));
        if level > 0 {
            self.current.push(Span::raw(" ".repeat(level * INDENT)));
        }
    }

    fn finish(mut self) -> Vec<Line<'static>> {
        if !self.current.is_empty() || self.lines.is_empty() {
            let spans = std::mem::take(&mut self.current);
            self.lines.push(Line::from(spans));
        }
        self.lines
    }
}

/// A value as indented, highlighted lines, members in their order. Empty objects
/// and arrays, and arrays of scalars short enough, stay on one line.
pub fn json_lines(value: &Ordered) -> Vec<Line<'static>> {
    let mut b = Builder {
        lines: Vec::new(),
        current: Vec::new(),
    };
    write_value(&mut b, value, 0, false);
    b.finish()
}

/// A value on one line, highlighted (the event pane's data).
pub fn json_line(value: &Ordered) -> Line<'static> {
    let mut spans = Vec::new();
    compact(&mut spans, value);
    Line::from(spans)
}

fn scalar(value: &Ordered) -> Span<'static> {
    let text = format_json(value, false);
    let style = match value {
        Ordered::String(_) => string_style(),
        Ordered::Number(_) => number_style(),
        _ => literal_style(),
    };
    Span::styled(text, style)
}

fn compact(spans: &mut Vec<Span<'static>>, value: &Ordered) {
    match value {
        Ordered::Object(m) => {
            spans.push(Span::styled("{", punct_style()));
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    spans.push(Span::styled(", ", punct_style()));
                }
                spans.push(Span::styled(
                    format_json(&Ordered::String(k.clone()), false),
                    key_style(),
                ));
                spans.push(Span::styled(": ", punct_style()));
                compact(spans, v);
            }
            spans.push(Span::styled("}", punct_style()));
        }
        Ordered::Array(a) => {
            spans.push(Span::styled("[", punct_style()));
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    spans.push(Span::styled(", ", punct_style()));
                }
                compact(spans, v);
            }
            spans.push(Span::styled("]", punct_style()));
        }
        other => spans.push(scalar(other)),
    }
}

/// Arrays of at most this many scalars stay on one line.
const SHORT_ARRAY: usize = 8;

fn write_value(b: &mut Builder, value: &Ordered, level: usize, in_error: bool) {
    match value {
        Ordered::Object(m) if m.is_empty() => b.push("{}", punct_style()),
        Ordered::Object(m) => {
            b.push("{", punct_style());
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    b.push(",", punct_style());
                }
                b.newline(level + 1);
                let error = level == 0 && k == "error";
                let style = if error || in_error {
                    error_style()
                } else {
                    key_style()
                };
                b.push(format_json(&Ordered::String(k.clone()), false), style);
                b.push(": ", punct_style());
                write_value(b, v, level + 1, error || in_error);
            }
            b.newline(level);
            b.push("}", punct_style());
        }
        Ordered::Array(a) if a.is_empty() => b.push("[]", punct_style()),
        Ordered::Array(a)
            if a.len() <= SHORT_ARRAY
                && a.iter()
                    .all(|v| !matches!(v, Ordered::Object(_) | Ordered::Array(_))) =>
        {
            let mut spans = Vec::new();
            compact(&mut spans, value);
            b.current.extend(spans);
        }
        Ordered::Array(a) => {
            b.push("[", punct_style());
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    b.push(",", punct_style());
                }
                b.newline(level + 1);
                write_value(b, v, level + 1, in_error);
            }
            b.newline(level);
            b.push("]", punct_style());
        }
        other => b.current.push(scalar(other)),
    }
}

/// Split a styled line into rows of at most `width` characters (at least 1),
/// keeping the styles. Characters are counted, not display cells: QMP text is
/// ASCII but for the rare string a user put there.
pub fn wrap(line: &Line<'static>, width: usize) -> Vec<Line<'static>> {
    let width = width.max(1);
    let mut rows = Vec::new();
    let mut row: Vec<Span<'static>> = Vec::new();
    let mut used = 0;
    for span in &line.spans {
        let mut rest: &str = &span.content;
        while !rest.is_empty() {
            let room = width - used;
            let cut = rest.char_indices().nth(room).map_or(rest.len(), |(i, _)| i);
            let (head, tail) = rest.split_at(cut);
            used += head.chars().count();
            row.push(Span::styled(head.to_owned(), span.style));
            rest = tail;
            if used == width && !rest.is_empty() {
                rows.push(Line::from(std::mem::take(&mut row)).style(line.style));
                used = 0;
            }
        }
        if used == width {
            rows.push(Line::from(std::mem::take(&mut row)).style(line.style));
            used = 0;
        }
    }
    if !row.is_empty() || rows.is_empty() {
        rows.push(Line::from(row).style(line.style));
    }
    rows
}

/// The text of a line, without styles (for tests and searches).
pub fn plain(line: &Line<'_>) -> String {
    line.spans.iter().map(|s| s.content.as_ref()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Ordered {
        Ordered::parse(text.as_bytes()).unwrap()
    }

    fn text(lines: &[Line<'_>]) -> Vec<String> {
        lines.iter().map(plain).collect()
    }

    /// The style of the first span whose text is `content`.
    fn style_of(lines: &[Line<'_>], content: &str) -> Style {
        lines
            .iter()
            .flat_map(|l| l.spans.iter())
            .find(|s| s.content == content)
            .unwrap_or_else(|| panic!("no span {content:?}"))
            .style
    }

    #[test]
    fn members_stay_in_qemus_order_and_are_indented() {
        // QEMU 7.2's query-status: no sorting brings this order back.
        let v =
            parse(r#"{"return": {"status": "prelaunch", "singlestep": false, "running": false}}"#);
        assert_eq!(
            text(&json_lines(&v)),
            [
                "{",
                r#"  "return": {"#,
                r#"    "status": "prelaunch","#,
                r#"    "singlestep": false,"#,
                r#"    "running": false"#,
                "  }",
                "}",
            ]
        );
    }

    #[test]
    fn short_scalar_arrays_stay_on_one_line_others_break() {
        let v = parse(r#"{"a": [1, 2.5, "x"], "b": [], "c": {}, "d": [{"n": null}]}"#);
        assert_eq!(
            text(&json_lines(&v)),
            [
                "{",
                r#"  "a": [1, 2.5, "x"],"#,
                r#"  "b": [],"#,
                r#"  "c": {},"#,
                r#"  "d": ["#,
                "    {",
                r#"      "n": null"#,
                "    }",
                "  ]",
                "}",
            ]
        );
        // Scalars alone, and floats as qmp-shell writes them.
        assert_eq!(text(&json_lines(&parse("1e16"))), ["1e+16"]);
        assert_eq!(text(&json_lines(&parse(r#""a\"b""#))), [r#""a\"b""#]);
    }

    #[test]
    fn kinds_of_values_have_their_colours() {
        let v = parse(r#"{"return": {"s": "x", "n": 3, "b": true, "z": null}}"#);
        let lines = json_lines(&v);
        assert_eq!(style_of(&lines, r#""s""#), key_style());
        assert_eq!(style_of(&lines, r#""x""#), string_style());
        assert_eq!(style_of(&lines, "3"), number_style());
        assert_eq!(style_of(&lines, "true"), literal_style());
        assert_eq!(style_of(&lines, "null"), literal_style());
        assert_eq!(style_of(&lines, "{"), punct_style());
    }

    #[test]
    fn an_error_reply_is_red() {
        let v = parse(r#"{"error": {"class": "CommandNotFound", "desc": "nope"}}"#);
        let lines = json_lines(&v);
        assert_eq!(style_of(&lines, r#""error""#), error_style());
        assert_eq!(style_of(&lines, r#""class""#), error_style());
        assert_eq!(style_of(&lines, r#""CommandNotFound""#), string_style());
    }

    #[test]
    fn one_line_form_for_events() {
        let v = parse(r#"{"device": "x", "path": "/machine/peripheral/x"}"#);
        assert_eq!(
            plain(&json_line(&v)),
            r#"{"device": "x", "path": "/machine/peripheral/x"}"#
        );
    }

    #[test]
    fn wrapping_keeps_styles_and_counts_characters() {
        let line = Line::from(vec![
            Span::styled("abcd", key_style()),
            Span::styled("éfgh", string_style()),
        ]);
        let rows = wrap(&line, 3);
        assert_eq!(text(&rows), ["abc", "déf", "gh"]);
        assert_eq!(rows[1].spans[0].style, key_style());
        assert_eq!(rows[1].spans[1].style, string_style());
        // Exactly full rows make no empty row; an empty line stays one row.
        assert_eq!(text(&wrap(&Line::from("abcdef"), 3)), ["abc", "def"]);
        assert_eq!(text(&wrap(&Line::from(""), 3)), [""]);
        assert_eq!(text(&wrap(&Line::from("ab"), 0)), ["a", "b"]);
    }
}
