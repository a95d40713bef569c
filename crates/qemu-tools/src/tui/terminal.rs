//! Taking the terminal over and always giving it back.
//!
//! [`Screen::enter`] switches to raw mode and the alternate screen and turns mouse
//! reporting and bracketed paste on; [`restore`] undoes all of it. It runs when the
//! [`Screen`] is dropped (a normal exit, an error, `SIGTERM`/`SIGHUP`/`SIGINT`, which
//! the main loop turns into a normal exit), and from a panic hook installed by
//! [`Screen::enter`], before the panic message is printed, so the message is readable
//! on a sane terminal. Restoring twice is harmless. A panic on another task (the
//! connection's) leaves the main loop running on a terminal given back: it looks at
//! [`panicked`] and ends the session.

use std::io::{self, Stdout, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{
    DisableBracketedPaste, DisableMouseCapture, EnableBracketedPaste, EnableMouseCapture,
};
use ratatui::crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::crossterm::{cursor, execute};
use ratatui::Terminal;

/// Whether the terminal is currently taken over.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Whether a thread or task has panicked since the terminal was taken over.
static PANICKED: AtomicBool = AtomicBool::new(false);

/// Whether a panic has happened (on any thread or task): the terminal has been
/// given back, so the session must end.
pub fn panicked() -> bool {
    PANICKED.load(Ordering::SeqCst)
}

/// Give the terminal back: leave the alternate screen, stop mouse reporting and
/// bracketed paste, show the cursor, leave raw mode. Does nothing when the terminal
/// was not taken over (or was already given back).
pub fn restore() {
    if !ACTIVE.swap(false, Ordering::SeqCst) {
        return;
    }
    let mut out = io::stdout();
    let _ = execute!(
        out,
        DisableBracketedPaste,
        DisableMouseCapture,
        LeaveAlternateScreen,
        cursor::Show
    );
    let _ = disable_raw_mode();
    let _ = out.flush();
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if ACTIVE.load(Ordering::SeqCst) {
                PANICKED.store(true, Ordering::SeqCst);
            }
            restore();
            previous(info);
        }));
    });
}

/// The terminal, taken over; given back on drop.
pub struct Screen {
    /// The ratatui terminal to draw on.
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Screen {
    /// Take the terminal over; `mouse`: ask for mouse reporting (the wheel scrolls,
    /// but selecting text then needs Shift in most terminals).
    pub fn enter(mouse: bool) -> io::Result<Screen> {
        install_panic_hook();
        enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        let mut out = io::stdout();
        let mut set_up = execute!(out, EnterAlternateScreen, EnableBracketedPaste);
        if mouse && set_up.is_ok() {
            set_up = execute!(out, EnableMouseCapture);
        }
        if let Err(e) = set_up {
            restore();
            return Err(e);
        }
        match Terminal::new(CrosstermBackend::new(out)) {
            Ok(terminal) => Ok(Screen { terminal }),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}
