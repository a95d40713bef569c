//! What each key (and paste, and mouse wheel) does; the list shown by F1 is
//! [`super::view::HELP`].

use ratatui::crossterm::event::{
    Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEventKind,
};
use ratatui::layout::Position;

use super::{error, Action, App, Menu};
use crate::tui::connection::Control;

/// How many rows the mouse wheel moves.
const WHEEL_ROWS: usize = 3;

impl App {
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

    #[test]
    fn prefixes() {
        assert_eq!(common_prefix(["query-a", "query-b"].into_iter()), "query-");
        assert_eq!(common_prefix(["a", "b"].into_iter()), "");
        assert_eq!(common_prefix(["é1", "é2"].into_iter()), "é");
    }
}
