//! The transcript: commands, replies and notes, as styled lines, wrapped to the
//! pane's width as it is drawn.
//!
//! Wrapping is cached: only the lines added since the last draw are wrapped, and a
//! change of width wraps everything again (once). The transcript keeps at most
//! [`MAX_TRANSCRIPT_LINES`] lines.

use ratatui::text::Line;

use super::render::wrap;

/// The transcript keeps at most this many lines (the oldest tenth goes beyond).
pub const MAX_TRANSCRIPT_LINES: usize = 200_000;

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
