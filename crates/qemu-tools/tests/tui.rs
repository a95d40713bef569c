//! qmp-tui end to end: the real binary on a pseudo-terminal (expectrl), its screen
//! read by a terminal emulator (vt100), against a real `qemu-system-x86_64 -machine
//! none`.
//!
//! QEMU's monitors listen on sockets the test binds and hands over as inherited
//! descriptors, so qmp-tui can connect at once; a second monitor lets the test act on
//! QEMU behind qmp-tui's back (`stop`, for an event). Every wait polls the emulated
//! screen until a condition holds, with a deadline. The binary runs under `sh -c`,
//! which, once it has ended, compares the terminal's settings with those before
//! (`stty -g`) and prints them (`stty -a`) and the exit status: so each test also
//! sees the terminal as qmp-tui left it. Each test skips with a `SKIPPED:` line when
//! QEMU is missing (and fails under `CI=true`). One test at a time: two CPUs are
//! shared with QEMU and the TUI.

use std::io::{self, Write as _};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use expectrl::session::OsSession;
use expectrl::Session;
use qemu_testkit::{QemuProcess, RawQmp};

/// The longest any single wait may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The emulated terminal: wide enough for the event pane to sit on the right.
const COLS: u16 = 120;
const ROWS: u16 = 36;

const TUI: &str = env!("CARGO_BIN_EXE_qmp-tui");

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// QEMU with two QMP monitors on sockets in `dir` (kept by the test, so that a new
/// QEMU can listen on the same path): `qmp.sock` for qmp-tui, `qmp2.sock` for the test.
struct Qemu {
    process: QemuProcess,
    qmp: PathBuf,
    qmp2: PathBuf,
}

fn bind(path: &Path) -> OwnedFd {
    let _ = std::fs::remove_file(path);
    qemu_testkit::bind_for_qemu(path)
}

fn start_qemu(dir: &Path) -> Option<Qemu> {
    let binary = qemu_testkit::qemu_system()?;
    let qmp = dir.join("qmp.sock");
    let qmp2 = dir.join("qmp2.sock");
    let (l1, l2) = (bind(&qmp), bind(&qmp2));
    let mut args: Vec<String> = ["-machine", "none", "-nodefaults", "-display", "none"]
        .map(String::from)
        .to_vec();
    for (id, l) in [("qmp", &l1), ("qmp2", &l2)] {
        args.push("-chardev".into());
        args.push(format!(
            "socket,id={id},fd={},server=on,wait=off",
            l.as_raw_fd()
        ));
        args.push("-mon".into());
        args.push(format!("chardev={id},mode=control"));
    }
    let ready = qemu_testkit::MonitorsReady::new();
    args.extend(ready.system_args());
    let process = QemuProcess::spawn(&binary, &args, &[l1.as_fd(), l2.as_fd(), ready.fd()]);
    drop((l1, l2));
    ready.wait(&process);
    Some(Qemu { process, qmp, qmp2 })
}

/// `major.minor` of the QEMU under test, as the status line shows it.
fn qemu_version() -> String {
    let v = qemu_testkit::version_of(&qemu_testkit::qemu_system().expect("looked up before"));
    format!("QEMU {}.{}.", v.major, v.minor)
}

/// qmp-tui on a pseudo-terminal, its output fed to a terminal emulator.
struct Tui {
    session: OsSession,
    screen: vt100::Parser,
    /// Everything it wrote, for the escape sequences and failure messages.
    bytes: Vec<u8>,
}

impl Tui {
    /// Start qmp-tui with `args` and `$HOME` in `home` (its history file is there).
    fn spawn(home: &Path, args: &[&str]) -> Tui {
        Self::spawn_with(home, args, &[])
    }

    /// [`Tui::spawn`] with more environment variables.
    fn spawn_with(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Tui {
        let mut cmd = Command::new("sh");
        cmd.envs(env.iter().copied());
        cmd.arg("-c")
            .arg(concat!(
                r#"before=$(stty -g); "$0" "$@"; code=$?; "#,
                r#"[ "$(stty -g)" = "$before" ] && echo tty-as-before; stty -a; echo "exit=$code""#
            ))
            .arg(TUI)
            .args(args)
            .env("TERM", "xterm-256color")
            .env("HOME", home)
            .env_remove("QMP_SHELL_HISTORY")
            .env_remove("QMP_SOCKET")
            .env_remove("RUST_LOG")
            .env_remove("RUST_BACKTRACE");
        let mut session = Session::spawn(cmd).expect("spawn on a pty");
        session
            .get_process_mut()
            .set_window_size(COLS, ROWS)
            .expect("set the window size");
        Tui {
            session,
            screen: vt100::Parser::new(
                ROWS.try_into().expect("rows"),
                COLS.try_into().expect("columns"),
                0,
            ),
            bytes: Vec::new(),
        }
    }

    /// Feed what qmp-tui wrote (at most 256 KiB a call) to the emulator.
    fn pump(&mut self) {
        let mut buf = [0u8; 16384];
        for _ in 0..16 {
            match self.session.try_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.screen.process(&buf[..n]);
                    self.bytes.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
    }

    fn contents(&self) -> String {
        self.screen.screen().contents()
    }

    /// The transcript pane's text.
    fn transcript(&self) -> String {
        self.panes()
            .into_iter()
            .map(|(t, _)| t.trim_end().to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Wait until `cond` holds for the screen.
    #[track_caller]
    fn wait(&mut self, what: &str, mut cond: impl FnMut(&Tui) -> bool) {
        let ok = qemu_testkit::poll_until(TIMEOUT, || {
            self.pump();
            cond(self)
        });
        assert!(
            ok,
            "no {what} within {TIMEOUT:?}; the screen:\n{}",
            self.contents()
        );
    }

    #[track_caller]
    fn wait_text(&mut self, text: &str) {
        self.wait(&format!("{text:?} on the screen"), |t| {
            t.contents().contains(text)
        });
    }

    /// The panes side by side, row by row: (transcript, events), the text inside
    /// their borders.
    fn panes(&self) -> Vec<(String, String)> {
        self.screen
            .screen()
            .rows(0, COLS)
            .filter_map(|r| {
                let (left, right) = r.split_once("││")?;
                Some((
                    left.trim_start_matches('│').to_owned(),
                    right.trim_end_matches('│').to_owned(),
                ))
            })
            .collect()
    }

    /// The events shown in the event pane (rows starting with a time of day).
    fn event_rows(&self) -> Vec<String> {
        self.panes()
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| r.as_bytes().get(2) == Some(&b':') && r.as_bytes().get(8) == Some(&b'.'))
            .collect()
    }

    /// Whether an event named `name` is shown in the event pane.
    fn has_event(&self, name: &str) -> bool {
        self.event_rows()
            .iter()
            .any(|r| r.split_whitespace().nth(1) == Some(name))
    }

    /// The input line: the screen's last row.
    fn input_line(&self) -> String {
        let (_, cols) = self.screen.screen().size();
        self.screen
            .screen()
            .rows(0, cols.get())
            .last()
            .unwrap_or_default()
            .trim_end()
            .to_owned()
    }

    #[track_caller]
    fn wait_input(&mut self, expected: &str) {
        self.wait(&format!("the input line {expected:?}"), |t| {
            t.input_line() == expected
        });
    }

    /// Change the terminal's size (qmp-tui gets SIGWINCH).
    fn resize(&mut self, cols: u16, rows: u16) {
        self.pump();
        self.screen.set_size(
            rows.try_into().expect("rows"),
            cols.try_into().expect("columns"),
        );
        self.session
            .get_process_mut()
            .set_window_size(cols, rows)
            .expect("set the window size");
    }

    fn send(&mut self, keys: &str) {
        self.session.write_all(keys.as_bytes()).expect("write");
        self.session.flush().expect("flush");
    }

    /// Wait for the status line to say connected, to this QEMU.
    #[track_caller]
    fn wait_connected(&mut self) {
        let version = qemu_version();
        self.wait("a connection in the status line", |t| {
            let c = t.contents();
            c.contains("│ connected │") && c.contains(&version)
        });
    }

    /// The process id of qmp-tui (the child of `sh`).
    fn tui_pid(&self) -> u32 {
        let sh = self.session.get_process().pid().as_raw();
        let children = std::fs::read_to_string(format!("/proc/{sh}/task/{sh}/children"))
            .expect("read the children of sh");
        children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("qmp-tui is running")
    }

    /// Wait for qmp-tui to end; check the terminal is as it was (main screen, no
    /// mouse reporting, no bracketed paste, a visible cursor, cooked mode with echo);
    /// return its exit status.
    #[track_caller]
    fn wait_exit(&mut self) -> i32 {
        self.wait("the exit status", |t| t.contents().contains("exit="));
        let contents = self.contents();
        let code: i32 = contents
            .split("exit=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .expect("exit=N");
        let s = self.screen.screen();
        assert!(!s.alternate_screen(), "still on the alternate screen");
        assert_eq!(s.mouse_protocol_mode(), vt100::MouseProtocolMode::None);
        assert!(!s.bracketed_paste(), "bracketed paste left on");
        assert!(!s.hide_cursor(), "the cursor is left hidden");
        assert!(
            contents.contains("tty-as-before"),
            "the terminal settings changed:\n{contents}"
        );
        let stty = contents.split_whitespace().collect::<Vec<_>>();
        for flag in ["icanon", "isig", "icrnl", "opost"] {
            assert!(
                stty.contains(&flag),
                "the terminal is left without {flag}:\n{contents}"
            );
        }
        // The escape sequences: the alternate screen was entered, then left.
        let text = String::from_utf8_lossy(&self.bytes);
        let entered = text
            .rfind("\x1b[?1049h")
            .expect("entered the alternate screen");
        assert!(
            text[entered..].contains("\x1b[?1049l"),
            "never left the alternate screen"
        );
        code
    }
}

fn home() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("qmp-tui-home-")
        .tempdir()
        .expect("temporary directory")
}

fn socket_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("qmp-tui-")
        .tempdir()
        .expect("temporary directory")
}

#[test]
fn a_command_and_its_reply_completion_and_history_in_a_second_run() {
    let _serial = serial();
    let dir = socket_dir();
    let Some(qemu) = start_qemu(dir.path()) else {
        return;
    };
    let home = home();
    let qmp = qemu.qmp.to_str().expect("UTF-8 path");
    let mut tui = Tui::spawn(home.path(), &[qmp]);
    tui.wait_connected();
    // Completion of a command name from the live schema.
    tui.send("query-statu");
    tui.wait_input("(QEMU) query-statu");
    tui.send("\t");
    tui.wait_input("(QEMU) query-status");
    tui.send("\r");
    tui.wait("the reply, members in QEMU's order", |t| {
        let c = t.transcript();
        let (Some(status), Some(running)) = (
            c.find(r#""status": "running""#),
            c.find(r#""running": true"#),
        ) else {
            return false;
        };
        c.contains("(QEMU) query-status") && status < running
    });
    // A command the schema refuses is not sent: its error is shown at once.
    tui.send("qom-gte path=/\r");
    tui.wait_text("CommandNotFound");
    tui.wait_text("(did you mean 'qom-get'?)");
    tui.wait_text(" (not sent)\"");
    // F1 shows the keys; any key closes the overlay (and is not typed).
    tui.send("\x1bOP");
    tui.wait_text("search the history");
    tui.send("x");
    tui.wait("the help closed", |t| {
        !t.contents().contains("search the history")
    });
    assert_eq!(tui.input_line(), "(QEMU)");
    // The mouse wheel scrolls the transcript back (a long reply), Esc goes back to
    // the end.
    assert_ne!(
        tui.screen.screen().mouse_protocol_mode(),
        vt100::MouseProtocolMode::None
    );
    tui.send("query-commands\r");
    tui.wait_text(r#""name": "#);
    tui.wait("the reply's end", |t| t.transcript().ends_with("  ]\n}"));
    tui.send("\x1b[<64;10;5M");
    tui.wait_text(" 3 rows back (Esc: end) ");
    tui.send("\x1b[<64;10;5M\x1b[<65;10;5M\x1b[<64;10;5M");
    tui.wait_text(" 6 rows back (Esc: end) ");
    tui.send("\x1b");
    tui.wait("the end of the transcript", |t| {
        !t.contents().contains("rows back")
    });
    // Ctrl-D on an empty line leaves.
    tui.send("\x04");
    assert_eq!(tui.wait_exit(), 0);
    let history =
        std::fs::read_to_string(home.path().join(".qmp-shell_history")).expect("the history file");
    // The space completion added is not kept.
    assert_eq!(history, "query-status\nqom-gte path=/\nquery-commands\n");

    // A second run recalls the history, and finds entries by search.
    let mut tui = Tui::spawn(home.path(), &[qmp]);
    tui.wait_connected();
    tui.send("\x1b[A");
    tui.wait_input("(QEMU) query-commands");
    tui.send("\x1b[A");
    tui.wait_input("(QEMU) qom-gte path=/");
    tui.send("\x1b[A");
    tui.wait_input("(QEMU) query-status");
    tui.send("\x03\x12stat");
    tui.wait_input("(history search)'stat': query-status");
    tui.send("\x1b");
    tui.wait_input("(QEMU)");
    tui.send("\x1b[21~");
    assert_eq!(tui.wait_exit(), 0);
    drop(qemu);
}

#[test]
fn an_event_lands_in_its_pane_and_the_half_typed_line_stays() {
    let _serial = serial();
    let dir = socket_dir();
    let Some(qemu) = start_qemu(dir.path()) else {
        return;
    };
    let home = home();
    let log = home.path().join("log");
    let mut tui = Tui::spawn(
        home.path(),
        &[
            "-l",
            log.to_str().expect("UTF-8 path"),
            qemu.qmp.to_str().expect("UTF-8 path"),
        ],
    );
    tui.wait_connected();
    tui.wait_text("│ running │");
    tui.send("query-na");
    tui.wait_input("(QEMU) query-na");
    // Another client stops QEMU: STOP comes as an event.
    let mut other = RawQmp::connect(&qemu.qmp2);
    assert!(other.command(r#"{"execute": "stop"}"#).contains("return"));
    tui.wait("STOP in the event pane", |t| t.has_event("STOP"));
    tui.wait_text("│ paused │");
    assert!(
        !tui.panes().iter().any(|(t, _)| t.contains("STOP")),
        "an event in the transcript:\n{}",
        tui.contents()
    );
    // The whole frame is written in several pieces: wait for the end of it.
    tui.wait("the cursor back at the end of the input line", |t| {
        t.screen.screen().cursor_position() == (ROWS - 1, "(QEMU) query-na".len() as u16)
    });
    assert_eq!(tui.input_line(), "(QEMU) query-na");
    // The line goes on where it was.
    tui.send("me\r");
    tui.wait_text("(QEMU) query-name");
    tui.wait_text(r#""return": {}"#);
    // The count, the filter (F3) and pause (F2).
    assert!(tui.contents().contains("└ STOP 1 ─"), "{}", tui.contents());
    tui.send("\x1bOR");
    tui.wait_input("event filter:");
    tui.send("resume\r");
    tui.wait_text("[filter resume]");
    assert!(!tui.has_event("STOP"), "filtered out:\n{}", tui.contents());
    assert!(other.command(r#"{"execute": "cont"}"#).contains("return"));
    tui.wait("RESUME in the event pane", |t| t.has_event("RESUME"));
    tui.wait_text("│ running │");
    assert!(!tui.has_event("STOP"));
    // Paused, the pane stays as it is and counts what came.
    tui.send("\x1bOQ");
    tui.wait_text("[paused +0]");
    assert!(other.command(r#"{"execute": "stop"}"#).contains("return"));
    tui.wait_text("[paused +1]");
    tui.send("\x04");
    assert_eq!(tui.wait_exit(), 0);
    // -l logged each request with its reply, and each event, as qmp-shell -l does.
    let log = std::fs::read_to_string(&log).expect("the log file");
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines.contains(&r#"{"execute": "query-name", "arguments": {}, "return": {}}"#),
        "{log}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains(r#""event": "STOP""#))
            .count(),
        2,
        "{log}"
    );
    drop(qemu);
}

#[test]
fn reconnects_when_qemu_comes_back_on_the_same_socket() {
    let _serial = serial();
    let dir = socket_dir();
    let Some(mut qemu) = start_qemu(dir.path()) else {
        return;
    };
    let home = home();
    let qmp = qemu.qmp.clone();
    let mut tui = Tui::spawn(home.path(), &[qmp.to_str().expect("UTF-8 path")]);
    tui.wait_connected();
    qemu.process.kill_now();
    qemu.process.wait_exit(TIMEOUT).expect("QEMU killed");
    tui.wait_text("-- disconnected: QEMU closed the connection");
    tui.wait_text("reconnecting in");
    // A command while there is no QEMU is refused, not kept for the next one.
    tui.send("stop\r");
    tui.wait_text("Error: not connected to QEMU");
    drop(qemu);
    let qemu = start_qemu(dir.path()).expect("QEMU again");
    tui.wait("a second connection", |t| {
        t.contents().matches("-- connected to QEMU").count() == 2
            && t.contents().contains("│ connected │")
    });
    tui.send("query-status\r");
    tui.wait_text(r#""status": "running""#);
    tui.send("\x04");
    assert_eq!(tui.wait_exit(), 0);
    drop(qemu);
}

#[test]
fn sigterm_restores_the_terminal() {
    let _serial = serial();
    let dir = socket_dir();
    let Some(qemu) = start_qemu(dir.path()) else {
        return;
    };
    let home = home();
    let mut tui = Tui::spawn(home.path(), &[qemu.qmp.to_str().expect("UTF-8 path")]);
    tui.wait_connected();
    tui.send("query-");
    tui.wait_input("(QEMU) query-");
    // Narrower: the event pane goes below the transcript.
    tui.resize(90, 30);
    tui.wait("the event pane below the transcript", |t| {
        t.screen
            .screen()
            .rows(0, 90)
            .any(|r| r.starts_with("┌ events 0 "))
    });
    tui.wait_input("(QEMU) query-");
    let pid = rustix::process::Pid::from_raw(tui.tui_pid() as i32).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    assert_eq!(tui.wait_exit(), 143);
    drop(qemu);
}

#[test]
fn a_panic_gives_the_terminal_back() {
    let _serial = serial();
    let dir = socket_dir();
    let Some(qemu) = start_qemu(dir.path()) else {
        return;
    };
    let home = home();
    // Debug builds panic on the connection's task once connected.
    let mut tui = Tui::spawn_with(
        home.path(),
        &[qemu.qmp.to_str().expect("UTF-8 path")],
        &[("QMP_TUI_TEST_PANIC", "1")],
    );
    assert_eq!(tui.wait_exit(), 1);
    let c = tui.contents();
    assert!(c.contains("QMP_TUI_TEST_PANIC is set"), "{c}");
    assert!(c.contains("ERROR: qmp-tui hit an internal error"), "{c}");
    drop(qemu);
}

#[test]
fn hmp_mode() {
    let _serial = serial();
    let dir = socket_dir();
    let Some(qemu) = start_qemu(dir.path()) else {
        return;
    };
    let home = home();
    let mut tui = Tui::spawn(home.path(), &["-H", qemu.qmp.to_str().expect("UTF-8 path")]);
    tui.wait_connected();
    // HMP's own commands complete (from `help` and `info`).
    tui.send("info versi");
    tui.wait_input("(QEMU) info versi");
    tui.send("\t");
    tui.wait_input("(QEMU) info version");
    tui.send("\r");
    let version = qemu_version().trim_start_matches("QEMU ").to_owned();
    tui.wait("the version as HMP's text", |t| {
        t.transcript()
            .lines()
            .any(|l| l.trim_end().starts_with(&version))
    });
    tui.send("\x04");
    assert_eq!(tui.wait_exit(), 0);
    drop(qemu);
}

#[test]
fn server_mode_waits_for_qemu_to_connect() {
    let _serial = serial();
    if qemu_testkit::qemu_system().is_none() {
        return;
    }
    let dir = socket_dir();
    let home = home();
    let path = dir.path().join("tui.sock");
    let mut tui = Tui::spawn(
        home.path(),
        &["--listen", "--no-mouse", path.to_str().expect("UTF-8 path")],
    );
    tui.wait_text("waiting for QEMU to connect");
    assert_eq!(
        tui.screen.screen().mouse_protocol_mode(),
        vt100::MouseProtocolMode::None
    );
    let qemu = QemuProcess::system_connecting_to(&path, &[]);
    tui.wait_connected();
    tui.send("query-name\r");
    tui.wait_text(r#""return": {}"#);
    tui.send("\x04");
    assert_eq!(tui.wait_exit(), 0);
    drop(qemu);
    assert!(!path.exists(), "the socket file is left behind");
}

#[test]
fn without_reconnect_a_failed_connection_ends_it_with_status_1() {
    let _serial = serial();
    let home = home();
    let missing = home.path().join("missing.sock");
    let mut tui = Tui::spawn(
        home.path(),
        &["--no-reconnect", missing.to_str().expect("UTF-8 path")],
    );
    assert_eq!(tui.wait_exit(), 1);
    // Said once the terminal is back.
    assert!(
        tui.contents().contains("ERROR: failed to connect to "),
        "{}",
        tui.contents()
    );
}
