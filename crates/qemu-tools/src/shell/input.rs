//! Where lines come from: a line editor on a terminal, or plain lines from a pipe.
//!
//! The editor (rustyline) blocks, so it runs on a thread of its own that reads one line
//! per request; the shell waits for the answer asynchronously, so it can watch the
//! connection at the same time. Rustyline cannot be told to stop reading, but it
//! returns `Interrupted` on `SIGINT` (its own handler turns the signal into a wake-up);
//! [`Interrupter`] uses that to end a read when QEMU goes away while the user sits at
//! the prompt.
//!
//! Events are printed above the prompt with rustyline's external printer, from a
//! thread of its own (the printer may block until the editor reads again).

use std::io::{self, BufRead, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::Duration;

use rustyline::config::{Behavior, CompletionType};
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Config, Editor, ExternalPrinter};
use tokio::sync::{mpsc, oneshot};

use super::complete::ShellHelper;

/// How many lines the history keeps (as QEMU's shell: `set_history_length(1024)`).
pub const HISTORY_SIZE: usize = 1024;

/// The environment variable that overrides the history file.
pub const HISTORY_ENV: &str = "QMP_SHELL_HISTORY";

/// The history file: `$QMP_SHELL_HISTORY` if set (an empty value disables history),
/// else `~/.qmp-shell_history`; `None` when neither can be determined.
pub fn default_history_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(HISTORY_ENV) {
        return (!p.is_empty()).then(|| PathBuf::from(p));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(Path::new(&home).join(".qmp-shell_history"))
}

/// Read a history file: one entry a line, as readline writes it. A missing file is
/// an empty history.
pub fn read_history(path: &Path) -> io::Result<Vec<String>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<String> = text
        .lines()
        .enumerate()
        // A file written by rustyline's own format starts with a version line.
        .filter(|(i, l)| !(*i == 0 && *l == "#V2"))
        .map(|(_, l)| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    if lines.len() > HISTORY_SIZE {
        lines.drain(..lines.len() - HISTORY_SIZE);
    }
    Ok(lines)
}

/// Write a history file (the last [`HISTORY_SIZE`] entries, one a line, readable by
/// QEMU's Python shell too). The file is replaced atomically.
pub fn write_history<'a>(
    path: &Path,
    entries: impl IntoIterator<Item = &'a str>,
) -> io::Result<()> {
    let entries: Vec<&str> = entries
        .into_iter()
        .filter(|e| !e.contains(['\n', '\r']))
        .collect();
    let skip = entries.len().saturating_sub(HISTORY_SIZE);
    let mut text = String::new();
    for e in &entries[skip..] {
        text.push_str(e);
        text.push('\n');
    }
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let mut tmp_name = name.to_owned();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// One read from a line source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A line (without its newline).
    Line(String),
    /// The user pressed Ctrl-C at the prompt (or the read was interrupted).
    Interrupted,
    /// End of input (Ctrl-D, or the end of the pipe).
    Eof,
    /// A line that could not be read (not UTF-8); reading can go on.
    Invalid(String),
    /// Reading failed for good.
    Failed(String),
}

enum Request {
    Read {
        prompt: String,
        reply: oneshot::Sender<Input>,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
}

/// What the editor thread reports once it is ready.
struct Ready {
    printer: Option<Box<dyn ExternalPrinter + Send>>,
}

/// The line editor, on its own thread.
pub struct Terminal {
    requests: std_mpsc::Sender<Request>,
    thread: Option<thread::JoinHandle<()>>,
    printer: Option<thread::JoinHandle<()>>,
    signal_wakes: bool,
}

/// Prints messages above the prompt of a [`Terminal`], or to stdout when there is no
/// terminal to protect.
#[derive(Clone, Debug)]
pub struct EventSink {
    tx: Option<std_mpsc::Sender<String>>,
}

impl EventSink {
    /// A sink that writes to stdout directly.
    pub fn stdout() -> Self {
        EventSink { tx: None }
    }

    /// Print `text` (a newline is added).
    pub fn print(&self, mut text: String) {
        match &self.tx {
            Some(tx) => {
                // The printer adds a newline only while the editor is reading.
                text.push('\n');
                let _ = tx.send(text);
            }
            None => {
                let mut out = io::stdout().lock();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
        }
    }
}

/// Ends a pending [`Terminal`] read from another task.
#[derive(Clone, Copy, Debug)]
pub struct Interrupter {
    signal_wakes: bool,
}

impl Interrupter {
    /// True if [`interrupt`](Self::interrupt) can end a read.
    pub fn can_interrupt(&self) -> bool {
        self.signal_wakes
    }

    /// Make a pending read return [`Input::Interrupted`]. Returns false when that is
    /// not possible (no editor, or one that does not watch for `SIGINT`).
    pub fn interrupt(&self) -> bool {
        if !self.signal_wakes {
            return false;
        }
        // Rustyline's SIGINT handler (installed for as long as the editor exists)
        // wakes the editor; the process is not killed.
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::INT)
            .is_ok()
    }
}

impl Terminal {
    /// Start the editor thread with `helper` for completion and `history` as the
    /// lines Up recalls. Returns the terminal and a sink for events.
    pub fn start(helper: ShellHelper, history: Vec<String>) -> io::Result<(Terminal, EventSink)> {
        let (req_tx, req_rx) = std_mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = std_mpsc::channel::<Result<Ready, String>>();
        let thread = thread::Builder::new()
            .name("qmp-shell-editor".into())
            .spawn(move || editor_thread(helper, history, ready_tx, req_rx))?;
        let ready = match ready_rx.recv() {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(io::Error::other(e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(io::Error::other("the line editor failed to start"));
            }
        };
        let signal_wakes = ready.printer.is_some();
        let (sink, printer) = match ready.printer {
            Some(mut printer) => {
                let (tx, rx) = std_mpsc::channel::<String>();
                // The printer blocks while the editor reads and its queue is full;
                // this thread absorbs that. It ends when the sink is dropped.
                let t = thread::Builder::new()
                    .name("qmp-shell-printer".into())
                    .spawn(move || {
                        for msg in rx {
                            if printer.print(msg).is_err() {
                                break;
                            }
                        }
                    })?;
                (EventSink { tx: Some(tx) }, Some(t))
            }
            None => (EventSink::stdout(), None),
        };
        Ok((
            Terminal {
                requests: req_tx,
                thread: Some(thread),
                printer,
                signal_wakes,
            },
            sink,
        ))
    }

    /// A handle that can interrupt a read in progress.
    pub fn interrupter(&self) -> Interrupter {
        Interrupter {
            signal_wakes: self.signal_wakes,
        }
    }

    /// Read a line with `prompt`.
    pub async fn read_line(&self, prompt: &str) -> Input {
        let (tx, rx) = oneshot::channel();
        let req = Request::Read {
            prompt: prompt.to_owned(),
            reply: tx,
        };
        if self.requests.send(req).is_err() {
            return Input::Failed("the line editor has stopped".into());
        }
        rx.await
            .unwrap_or_else(|_| Input::Failed("the line editor has stopped".into()))
    }

    /// Stop the editor thread and let the event printer finish, each waiting at
    /// most `timeout` (a thread that does not finish is left to end with the
    /// process). Drop every [`EventSink`] first.
    pub async fn stop(mut self, timeout: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Stop { reply: tx }).is_ok()
            && tokio::time::timeout(timeout, rx).await.is_ok()
        {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        if let Some(t) = self.printer.take() {
            let deadline = tokio::time::Instant::now() + timeout;
            while !t.is_finished() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

fn editor_thread(
    helper: ShellHelper,
    history: Vec<String>,
    ready: std_mpsc::Sender<Result<Ready, String>>,
    requests: std_mpsc::Receiver<Request>,
) {
    let config = match Config::builder().max_history_size(HISTORY_SIZE) {
        Ok(b) => b
            .completion_type(CompletionType::List)
            .auto_add_history(false)
            .behavior(Behavior::Stdio)
            .build(),
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let mut editor: Editor<ShellHelper, DefaultHistory> = match Editor::with_config(config) {
        Ok(e) => e,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot start the line editor: {e}")));
            return;
        }
    };
    editor.set_helper(Some(helper));
    for l in history {
        let _ = editor.add_history_entry(l);
    }
    let printer = editor
        .create_external_printer()
        .ok()
        .map(|p| Box::new(p) as Box<dyn ExternalPrinter + Send>);
    if ready.send(Ok(Ready { printer })).is_err() {
        return;
    }
    for req in requests {
        match req {
            Request::Read { prompt, reply } => {
                let input = match editor.readline(&prompt) {
                    Ok(line) => {
                        if !line.trim().is_empty() {
                            let _ = editor.add_history_entry(line.as_str());
                        }
                        Input::Line(line)
                    }
                    Err(ReadlineError::Interrupted) => Input::Interrupted,
                    Err(ReadlineError::Eof) => Input::Eof,
                    Err(e) => Input::Failed(e.to_string()),
                };
                let _ = reply.send(input);
            }
            Request::Stop { reply } => {
                drop(editor);
                let _ = reply.send(());
                return;
            }
        }
    }
}

/// Lines from a pipe or file (stdin when it is not a terminal), read on a thread.
pub struct PipedInput {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    line_number: u64,
}

impl PipedInput {
    /// Read lines from stdin.
    pub fn stdin() -> io::Result<PipedInput> {
        Self::from_reader(io::BufReader::new(io::stdin()))
    }

    /// Read lines from any reader.
    pub fn from_reader(mut reader: impl BufRead + Send + 'static) -> io::Result<PipedInput> {
        let (tx, rx) = mpsc::channel(1);
        thread::Builder::new()
            .name("qmp-shell-stdin".into())
            .spawn(move || loop {
                let mut buf = Vec::new();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) => return,
                    Ok(_) => {
                        if buf.ends_with(b"\n") {
                            buf.pop();
                        }
                        if buf.ends_with(b"\r") {
                            buf.pop();
                        }
                        if tx.blocking_send(Ok(buf)).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            })?;
        Ok(PipedInput { rx, line_number: 0 })
    }

    /// The next line.
    pub async fn read_line(&mut self) -> Input {
        match self.rx.recv().await {
            None => Input::Eof,
            Some(Err(e)) => Input::Failed(format!("reading the input: {e}")),
            Some(Ok(bytes)) => {
                self.line_number += 1;
                match String::from_utf8(bytes) {
                    Ok(s) => Input::Line(s),
                    Err(_) => Input::Invalid(format!(
                        "line {} of the input is not valid UTF-8",
                        self.line_number
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_round_trips_and_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h");
        assert_eq!(read_history(&path).unwrap(), Vec::<String>::new());
        let many: Vec<String> = (0..1100).map(|i| format!("cmd {i}")).collect();
        write_history(&path, many.iter().map(String::as_str).chain(["a\nb"])).unwrap();
        let back = read_history(&path).unwrap();
        assert_eq!(back.len(), HISTORY_SIZE);
        assert_eq!(back[0], "cmd 76");
        assert_eq!(back.last().unwrap(), "cmd 1099");
        std::fs::write(&path, b"#V2\nquery-status\n\n\xff x\r\n").unwrap();
        assert_eq!(read_history(&path).unwrap(), ["query-status", "\u{fffd} x"]);
        assert!(write_history(&dir.path().join("no/such/dir/h"), ["x"]).is_err());
    }

    #[tokio::test]
    async fn piped_lines() {
        let data: &[u8] = b"query-status\r\n\xff\nlast";
        let mut p = PipedInput::from_reader(io::BufReader::new(data)).unwrap();
        assert_eq!(p.read_line().await, Input::Line("query-status".into()));
        assert!(matches!(p.read_line().await, Input::Invalid(m) if m.contains("line 2")));
        assert_eq!(p.read_line().await, Input::Line("last".into()));
        assert_eq!(p.read_line().await, Input::Eof);
    }
}
