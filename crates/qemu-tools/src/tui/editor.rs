//! The input line: editing, multi-line JSON, the history and its search (Ctrl-R).
//!
//! Pure state, driven by [`super::app`], so it is tested without a terminal. The
//! text may hold line breaks (a JSON request typed over several lines); the cursor
//! is a byte offset on a character boundary.
//!
//! History: the entries of `~/.qmp-shell_history`, shared with `qmp-shell` (read at
//! start, written at exit by [`super::app`]); an entry typed over several lines is
//! kept as one line (its line breaks become spaces, which JSON and the `qmp-shell`
//! syntax both read as spaces), since the file holds one entry a line.

/// A reverse search through the history (Ctrl-R).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Search {
    /// What is searched for.
    pub query: String,
    /// The history entry found (an index), if any.
    pub found: Option<usize>,
}

/// The input line editor.
#[derive(Debug, Default)]
pub struct Editor {
    text: String,
    cursor: usize,
    history: Vec<String>,
    /// The history entry shown while browsing with Up/Down.
    browsing: Option<usize>,
    /// The text being typed before browsing started.
    draft: String,
    search: Option<Search>,
}

impl Editor {
    /// An empty editor with this history (oldest first).
    pub fn new(history: Vec<String>) -> Self {
        Editor {
            history,
            ..Default::default()
        }
    }

    /// The text typed.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The cursor, a byte offset into [`Editor::text`].
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// The history, oldest first.
    pub fn history(&self) -> &[String] {
        &self.history
    }

    /// The search in progress, if any.
    pub fn search(&self) -> Option<&Search> {
        self.search.as_ref()
    }

    /// The cursor as (line, column in characters).
    pub fn cursor_position(&self) -> (usize, usize) {
        let before = &self.text[..self.cursor];
        let line = before.matches('\n').count();
        let start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[start..].chars().count())
    }

    /// Replace the whole text (the cursor goes to its end).
    pub fn set_text(&mut self, text: impl Into<String>) {
        self.text = text.into();
        self.cursor = self.text.len();
    }

    /// Insert text at the cursor (typed or pasted; `\r\n` and `\r` become `\n`).
    pub fn insert(&mut self, text: &str) {
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        self.text.insert_str(self.cursor, &text);
        self.cursor += text.len();
        self.browsing = None;
    }

    /// Replace `start..cursor` with `with` (completion).
    pub fn replace_before_cursor(&mut self, start: usize, with: &str) {
        let start = start.min(self.cursor);
        if !self.text.is_char_boundary(start) {
            return;
        }
        self.text.replace_range(start..self.cursor, with);
        self.cursor = start + with.len();
    }

    fn prev_boundary(&self, from: usize) -> usize {
        self.text[..from]
            .char_indices()
            .next_back()
            .map_or(0, |(i, _)| i)
    }

    fn next_boundary(&self, from: usize) -> usize {
        self.text[from..]
            .chars()
            .next()
            .map_or(from, |c| from + c.len_utf8())
    }

    /// Backspace.
    pub fn backspace(&mut self) {
        if self.cursor > 0 {
            let p = self.prev_boundary(self.cursor);
            self.text.replace_range(p..self.cursor, "");
            self.cursor = p;
        }
    }

    /// Delete the character under the cursor.
    pub fn delete(&mut self) {
        if self.cursor < self.text.len() {
            let n = self.next_boundary(self.cursor);
            self.text.replace_range(self.cursor..n, "");
        }
    }

    /// Move one character left.
    pub fn left(&mut self) {
        self.cursor = self.prev_boundary(self.cursor);
    }

    /// Move one character right.
    pub fn right(&mut self) {
        self.cursor = self.next_boundary(self.cursor);
    }

    fn line_start(&self) -> usize {
        self.text[..self.cursor].rfind('\n').map_or(0, |i| i + 1)
    }

    fn line_end(&self) -> usize {
        self.text[self.cursor..]
            .find('\n')
            .map_or(self.text.len(), |i| self.cursor + i)
    }

    /// Go to the start of the line.
    pub fn home(&mut self) {
        self.cursor = self.line_start();
    }

    /// Go to the end of the line.
    pub fn end(&mut self) {
        self.cursor = self.line_end();
    }

    /// Delete from the start of the line to the cursor (Ctrl-U).
    pub fn kill_to_start(&mut self) {
        let s = self.line_start();
        self.text.replace_range(s..self.cursor, "");
        self.cursor = s;
    }

    /// Delete from the cursor to the end of the line (Ctrl-K).
    pub fn kill_to_end(&mut self) {
        let e = self.line_end();
        self.text.replace_range(self.cursor..e, "");
    }

    /// Delete the word before the cursor (Ctrl-W): spaces, then non-spaces.
    pub fn kill_word(&mut self) {
        let before = &self.text[..self.cursor];
        let trimmed = before.trim_end_matches([' ', '\t']);
        let start = trimmed
            .rfind([' ', '\t', '\n'])
            .map_or(0, |i| i + 1)
            .min(trimmed.len());
        self.text.replace_range(start..self.cursor, "");
        self.cursor = start;
    }

    /// Empty the input (Ctrl-C), leaving history browsing and search.
    pub fn clear(&mut self) {
        self.text.clear();
        self.cursor = 0;
        self.browsing = None;
        self.search = None;
    }

    /// Whether the cursor is on the first line of the text.
    fn on_first_line(&self) -> bool {
        !self.text[..self.cursor].contains('\n')
    }

    fn on_last_line(&self) -> bool {
        !self.text[self.cursor..].contains('\n')
    }

    fn move_vertically(&mut self, up: bool) {
        let (_, col) = self.cursor_position();
        let target_start = if up {
            let s = self.line_start();
            self.text[..s.saturating_sub(1)]
                .rfind('\n')
                .map_or(0, |i| i + 1)
        } else {
            self.line_end() + 1
        };
        let line = &self.text[target_start..];
        let line = &line[..line.find('\n').unwrap_or(line.len())];
        let off = line.char_indices().nth(col).map_or(line.len(), |(i, _)| i);
        self.cursor = target_start + off;
    }

    /// Up: the line above in a multi-line text, else the previous history entry.
    pub fn up(&mut self) {
        if !self.on_first_line() {
            self.move_vertically(true);
            return;
        }
        let next = match self.browsing {
            None if self.history.is_empty() => return,
            None => {
                self.draft = self.text.clone();
                self.history.len() - 1
            }
            Some(0) => return,
            Some(i) => i - 1,
        };
        self.browsing = Some(next);
        self.set_text(self.history[next].clone());
    }

    /// Down: the line below in a multi-line text, else the next history entry (and
    /// past the last, the text typed before browsing).
    pub fn down(&mut self) {
        if !self.on_last_line() {
            self.move_vertically(false);
            return;
        }
        match self.browsing {
            None => {}
            Some(i) if i + 1 < self.history.len() => {
                self.browsing = Some(i + 1);
                self.set_text(self.history[i + 1].clone());
            }
            Some(_) => {
                self.browsing = None;
                let draft = std::mem::take(&mut self.draft);
                self.set_text(draft);
            }
        }
    }

    /// Whether Enter should break the line instead of sending: a JSON request whose
    /// braces and brackets are not closed yet.
    pub fn needs_more(&self) -> bool {
        let t = self.text.trim_start();
        if !t.starts_with('{') {
            return false;
        }
        let mut depth = 0i64;
        let mut in_string = false;
        let mut escaped = false;
        for c in t.chars() {
            if in_string {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => in_string = true,
                '{' | '[' => depth += 1,
                '}' | ']' => depth -= 1,
                _ => {}
            }
        }
        depth > 0
    }

    /// Take the text to send: the editor is emptied and the entry added to the
    /// history (as one line; not an empty one, nor a repeat of the last).
    pub fn take(&mut self) -> String {
        let text = std::mem::take(&mut self.text);
        self.cursor = 0;
        self.browsing = None;
        self.search = None;
        let entry = one_line(&text);
        if !entry.trim().is_empty() && self.history.last() != Some(&entry) {
            self.history.push(entry);
        }
        text
    }

    // ---- reverse search ------------------------------------------------------------

    /// Start a reverse search, or (when one runs) look for an older match.
    pub fn search_back(&mut self) {
        match &mut self.search {
            None => self.search = Some(Search::default()),
            Some(s) => {
                let before = s.found.unwrap_or(self.history.len());
                let q = s.query.clone();
                if let Some(i) = find_back(&self.history, &q, before) {
                    s.found = Some(i);
                }
            }
        }
    }

    /// Add to the search text, and look again from the newest entry.
    pub fn search_insert(&mut self, text: &str) {
        if let Some(s) = &mut self.search {
            s.query.push_str(text);
            s.found = find_back(&self.history, &s.query, self.history.len());
        }
    }

    /// Take the last character off the search text.
    pub fn search_backspace(&mut self) {
        if let Some(s) = &mut self.search {
            s.query.pop();
            s.found = if s.query.is_empty() {
                None
            } else {
                find_back(&self.history, &s.query, self.history.len())
            };
        }
    }

    /// End the search, putting the entry found (if any) in the input.
    pub fn search_accept(&mut self) {
        if let Some(s) = self.search.take() {
            if let Some(i) = s.found {
                self.set_text(self.history[i].clone());
            }
        }
    }

    /// End the search, leaving the input as it was.
    pub fn search_cancel(&mut self) {
        self.search = None;
    }

    /// The entry the search found.
    pub fn search_found(&self) -> Option<&str> {
        self.search
            .as_ref()
            .and_then(|s| s.found)
            .map(|i| self.history[i].as_str())
    }
}

/// The newest entry before index `before` that contains `query`.
fn find_back(history: &[String], query: &str, before: usize) -> Option<usize> {
    if query.is_empty() {
        return None;
    }
    history[..before.min(history.len())]
        .iter()
        .rposition(|h| h.contains(query))
}

/// An entry as one line: line breaks (and the spaces around them) become one space.
pub fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(text: &str) -> Editor {
        let mut e = Editor::new(Vec::new());
        e.insert(text);
        e
    }

    #[test]
    fn editing_a_line() {
        let mut e = typed("query-stauts");
        for _ in 0..3 {
            e.left();
        }
        e.delete();
        e.right();
        e.insert("u");
        assert_eq!(e.text(), "query-status");
        assert_eq!(e.cursor(), "query-statu".len());
        e.backspace();
        e.insert("u");
        e.home();
        e.insert("x ");
        e.kill_word();
        assert_eq!(e.text(), "query-status");
        e.end();
        e.insert(" arg=1");
        e.kill_word();
        assert_eq!(e.text(), "query-status ");
        e.kill_to_start();
        assert_eq!((e.text(), e.cursor()), ("", 0));
        let mut e = typed("éa");
        e.left();
        e.left();
        e.delete();
        assert_eq!(e.text(), "a");
        e.end();
        e.kill_to_end();
        e.home();
        e.kill_to_end();
        assert_eq!(e.text(), "");
    }

    #[test]
    fn json_asks_for_more_lines_until_closed() {
        assert!(typed(r#"{"execute": "qom-list","#).needs_more());
        assert!(typed(r#"{"execute": "x", "arguments": {"a": "}"#).needs_more());
        assert!(!typed(r#"{"execute": "x", "arguments": {"a": "}\"{"}}"#).needs_more());
        assert!(!typed("query-status").needs_more());
        assert!(!typed("{}}").needs_more());
    }

    #[test]
    fn multi_line_text_moves_between_lines_and_goes_to_history_as_one_line() {
        let mut e = typed("{\"execute\":\r\n  \"query-status\"}");
        assert_eq!(e.cursor_position(), (1, 17));
        e.up();
        assert_eq!(e.cursor_position(), (0, 11));
        e.down();
        e.home();
        assert_eq!(e.cursor_position(), (1, 0));
        let sent = e.take();
        assert_eq!(sent, "{\"execute\":\n  \"query-status\"}");
        assert_eq!(e.history(), [r#"{"execute": "query-status"}"#]);
    }

    #[test]
    fn history_browsing_keeps_the_draft() {
        let mut e = Editor::new(vec!["stop".into(), "cont".into()]);
        e.insert("que");
        e.up();
        assert_eq!(e.text(), "cont");
        e.up();
        assert_eq!(e.text(), "stop");
        e.up();
        assert_eq!(e.text(), "stop");
        e.down();
        e.down();
        assert_eq!(e.text(), "que");
        e.take();
        e.insert("que");
        e.take();
        e.take();
        assert_eq!(e.history(), ["stop", "cont", "que"]);
    }

    #[test]
    fn reverse_search() {
        let mut e = Editor::new(vec![
            "query-status".into(),
            "stop".into(),
            "query-name".into(),
        ]);
        e.insert("draft");
        e.search_back();
        e.search_insert("que");
        assert_eq!(e.search_found(), Some("query-name"));
        e.search_back();
        assert_eq!(e.search_found(), Some("query-status"));
        e.search_back();
        assert_eq!(e.search_found(), Some("query-status"));
        e.search_backspace();
        assert_eq!(e.search_found(), Some("query-name"));
        e.search_cancel();
        assert_eq!(e.text(), "draft");
        e.search_back();
        e.search_insert("st");
        e.search_accept();
        assert_eq!(e.text(), "stop");
        assert!(e.search().is_none());
    }

    #[test]
    fn completion_replaces_the_word() {
        let mut e = typed("query-st x");
        for _ in 0..2 {
            e.left();
        }
        e.replace_before_cursor(0, "query-status");
        assert_eq!(e.text(), "query-status x");
        assert_eq!(e.cursor(), "query-status".len());
    }
}
