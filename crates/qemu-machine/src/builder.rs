//! [`MachineBuilder`]: what to launch, and the launch itself.

use std::fmt::Write as _;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use qemu_qmp::{Client, ListenOptions};
use tokio::time::Instant;
use tracing::debug;

use crate::accel::{self, AccelChoice, KvmUnavailable, NoAccel};
use crate::console::Console;
use crate::error::{LaunchCause, MachineError, Result, VmLaunchFailure};
use crate::events::{EventQueue, EVENT_CAPACITY};
use crate::machine::{MachineParts, QemuMachine};
use crate::process::{self, above_stdio, Process};
use crate::sweep::{self, TEMP_DIR_PREFIX};

/// The default for [`MachineBuilder::accept_timeout`].
pub const DEFAULT_ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);
/// The default for [`MachineBuilder::shutdown_timeout`].
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The default for [`MachineBuilder::console_buffer_size`]: 1 MiB.
pub const DEFAULT_CONSOLE_BUFFER: usize = 1 << 20;

/// The longest Unix socket path (`sun_path` holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// How long a failed launch waits for QEMU to exit by itself, once the QMP
/// connection has failed, before killing it (QEMU closing the socket almost always
/// means it is exiting; its exit code and output tell why).
const LAUNCH_EXIT_GRACE: Duration = Duration::from_secs(5);

/// Where QEMU's QMP monitor is (Python: `monitor_address`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum QmpAddress {
    /// One end of a socketpair, inherited by QEMU as a descriptor
    /// (`-chardev socket,id=mon,fd=N`): no socket file exists at all. The default.
    #[default]
    Socketpair,
    /// A Unix socket we listen on and QEMU connects to at startup
    /// (`-chardev socket,id=mon,path=P,server=off`). A relative path is taken relative
    /// to the socket directory ([`MachineBuilder::sock_dir`]). The socket file is
    /// removed as soon as QEMU has connected.
    Unix(PathBuf),
    /// A TCP address we listen on and QEMU connects to at startup
    /// (`-chardev socket,id=mon,host=H,port=P,server=off`). Port 0 picks a free port.
    Tcp {
        /// Host name or address to listen on.
        host: String,
        /// Port (0: any free port).
        port: u16,
    },
}

/// A descriptor passed to QEMU with `-add-fd`.
#[derive(Debug)]
struct AddFd {
    fd: OwnedFd,
    fdset: u32,
    opaque: Option<String>,
}

/// A socket chardev on a descriptor QEMU inherits (`-chardev socket,id=ID,fd=N`).
#[derive(Debug)]
struct ChardevFd {
    id: String,
    fd: OwnedFd,
}

/// What to launch; made by [`QemuMachine::builder`] (Python: the arguments of
/// `QEMUMachine.__init__` and its `set_*`/`add_*` methods).
///
/// [`launch`](Self::launch) consumes the builder, so a machine cannot be launched
/// twice; build another one for a second QEMU.
///
/// ```no_run
/// # async fn f() -> qemu_machine::Result<()> {
/// use std::time::Duration;
/// use qemu_machine::QemuMachine;
///
/// let vm = QemuMachine::builder("qemu-system-x86_64")
///     .machine_type("none")
///     .args(["-S"])
///     .shutdown_timeout(Duration::from_secs(10))
///     .launch()
///     .await?;
/// vm.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until launched"]
pub struct MachineBuilder {
    binary: PathBuf,
    args: Vec<String>,
    wrapper: Vec<String>,
    name: Option<String>,
    base_temp_dir: Option<PathBuf>,
    sock_dir: Option<PathBuf>,
    log_dir: Option<PathBuf>,
    machine_type: Option<String>,
    qmp: bool,
    qmp_address: QmpAddress,
    accept_timeout: Duration,
    console: bool,
    console_device_type: Option<String>,
    console_index: u32,
    console_log: Option<PathBuf>,
    console_buffer_size: usize,
    fds: Vec<AddFd>,
    chardev_fds: Vec<ChardevFd>,
    shutdown_timeout: Duration,
    powerdown_timeout: Option<Duration>,
    display_none: bool,
    nodefaults: bool,
    conv_keys: bool,
    event_capacity: usize,
    preserve_order: bool,
    best_accel: bool,
}

impl MachineBuilder {
    /// Settings to launch `binary` (a path, or a name looked up in `PATH`).
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        MachineBuilder {
            binary: binary.into(),
            args: Vec::new(),
            wrapper: Vec::new(),
            name: None,
            base_temp_dir: None,
            sock_dir: None,
            log_dir: None,
            machine_type: None,
            qmp: true,
            qmp_address: QmpAddress::Socketpair,
            accept_timeout: DEFAULT_ACCEPT_TIMEOUT,
            console: false,
            console_device_type: None,
            console_index: 0,
            console_log: None,
            console_buffer_size: DEFAULT_CONSOLE_BUFFER,
            fds: Vec::new(),
            chardev_fds: Vec::new(),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            powerdown_timeout: None,
            display_none: true,
            nodefaults: false,
            conv_keys: false,
            event_capacity: EVENT_CAPACITY,
            preserve_order: false,
            best_accel: false,
        }
    }

    /// Add one argument; user arguments come after the ones the library adds.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Add arguments (Python: `add_args`).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// A command that runs QEMU, e.g. `["taskset", "-c", "0"]`, `["timeout", "600"]`,
    /// `["valgrind", "--quiet"]` or `["sh", "-c", "\"$@\"; true", "sh"]`: the command
    /// line becomes `wrapper... binary args...`.
    ///
    /// The wrapper's process is the machine's process: its pid is
    /// [`QemuMachine::pid`], its exit is QEMU's exit for the machine. So it must exec
    /// QEMU, or fork it and wait for it. It is started as the leader of a new process
    /// group, which QEMU and everything else it starts join (`timeout` puts itself in
    /// a group of its own, which it already leads: nothing changes), and every
    /// process that stays in that group is covered by these guarantees:
    ///
    /// - dropping the machine, [`QemuMachine::kill`], a hard shutdown, the SIGKILL
    ///   that follows a failed graceful shutdown, and a failed or cancelled launch
    ///   send SIGKILL to the whole group before the wrapper is reaped;
    /// - when the wrapper's process exits, whatever is left of its group is killed
    ///   with SIGKILL (a wrapper that starts QEMU in the background and exits takes
    ///   QEMU with it);
    /// - if this whole process dies, even by SIGKILL, a watchdog in the group (a
    ///   `/bin/sh` blocked on a pipe whose write end only this process holds) kills
    ///   the group; the wrapper also gets SIGKILL from the kernel
    ///   (`PR_SET_PDEATHSIG`);
    /// - a graceful shutdown without QMP sends SIGTERM to the group.
    ///
    /// Not covered: a process that leaves the group, i.e. calls `setsid()` or
    /// `setpgid()`, such as `setsid(1)`, a shell with job control (`sh -m`, an
    /// interactive shell), `sudo` with a pseudo-terminal, or QEMU's own
    /// `-daemonize`; such a process survives the machine unless it exits when its
    /// sockets close. A QEMU forked by a wrapper that was killed with it is reaped by
    /// init (or the nearest subreaper), not by this process.
    ///
    /// Being in a group of its own, QEMU does not get the terminal's job-control
    /// signals (Ctrl-C) meant for this process; it is killed when this process dies.
    pub fn wrapper<I, S>(mut self, wrapper: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.wrapper = wrapper.into_iter().map(Into::into).collect();
        self
    }

    /// The machine's name, used in log lines and file names (default: unique in the
    /// process, `qemu-<pid>-<n>`). It must not contain `/`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Where the machine's temporary directory is created (default: the system's
    /// temporary directory). The directory is removed at shutdown and on drop.
    ///
    /// Its name, `qemu-machine-<pid>.<start>.<pidns>-<random>`, records which process
    /// made it: the pid, in hex that process's start time (so that a reused pid is not
    /// mistaken for it) and the inode of its pid namespace. A process killed by
    /// SIGKILL cannot remove its directories; every launch removes (while QEMU
    /// starts, before `launch` returns) the directories under its base directory whose
    /// owner no longer runs, if they belong to this user. Directories of live
    /// processes, of other pid namespaces, and without that record (made by older
    /// versions) are left alone.
    pub fn base_temp_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.base_temp_dir = Some(dir.into());
        self
    }

    /// Where a Unix QMP socket with a relative path is created (default: the machine's
    /// temporary directory). Must exist; keep it short, a socket path is limited to
    /// 107 bytes.
    pub fn sock_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.sock_dir = Some(dir.into());
        self
    }

    /// Where QEMU's output goes, as `<name>.log` (default: the machine's temporary
    /// directory, so it is removed at shutdown after being read into
    /// [`QemuMachine::log`]). A log in a directory given here is kept. Must exist.
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = Some(dir.into());
        self
    }

    /// Add `-machine TYPE` (Python: `set_machine`).
    pub fn machine_type(mut self, machine: impl Into<String>) -> Self {
        self.machine_type = Some(machine.into());
        self
    }

    /// Give QEMU a QMP monitor and connect to it (default true; Python:
    /// `set_qmp_monitor`). Without QMP, graceful shutdown sends SIGTERM, and the QMP
    /// methods return [`MachineError::QmpDisabled`].
    pub fn qmp(mut self, enabled: bool) -> Self {
        self.qmp = enabled;
        self
    }

    /// Where the QMP monitor is (default [`QmpAddress::Socketpair`]).
    pub fn qmp_address(mut self, address: QmpAddress) -> Self {
        self.qmp_address = address;
        self
    }

    /// How long QEMU has to bring QMP up (connect to our socket, greet, negotiate)
    /// before the launch fails and QEMU is killed (default 30 s). A QEMU that exits
    /// before then fails the launch at once, whatever this is.
    pub fn accept_timeout(mut self, timeout: Duration) -> Self {
        self.accept_timeout = timeout;
        self
    }

    /// Give the machine a console (default false): a socketpair chardev
    /// (`-chardev socket,id=console,fd=N`) on the first serial port
    /// (`-serial chardev:console`) unless [`console_device_type`](Self::console_device_type)
    /// is set. It is drained for as long as QEMU runs.
    pub fn console(mut self, enabled: bool) -> Self {
        self.console = enabled;
        self
    }

    /// Attach the console to a device of this type (`-device TYPE,chardev=console`,
    /// e.g. `isa-serial` or `virtconsole`) instead of `-serial`; enables the console.
    pub fn console_device_type(mut self, device_type: impl Into<String>) -> Self {
        self.console = true;
        self.console_device_type = Some(device_type.into());
        self
    }

    /// Put the console on serial port `index` (preceded by `index` times
    /// `-serial null`; Python: `console_index`); enables the console.
    pub fn console_index(mut self, index: u32) -> Self {
        self.console = true;
        self.console_index = index;
        self
    }

    /// Also write all console output to this file (created or truncated; it is kept
    /// after shutdown); enables the console.
    pub fn console_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.console = true;
        self.console_log = Some(path.into());
        self
    }

    /// How much recent console output is kept in memory for
    /// [`QemuMachine::console_output`] and the line readers (default 1 MiB; 0 keeps
    /// none, for a console that only goes to a log file).
    pub fn console_buffer_size(mut self, bytes: usize) -> Self {
        self.console_buffer_size = bytes;
        self
    }

    /// Pass a descriptor to QEMU as `-add-fd fd=N,set=FDSET[,opaque=OPAQUE]` (Python:
    /// `add_fd`). QEMU inherits it under the same number; our copy is closed once QEMU
    /// has started. Duplicate it first (`try_clone`) to keep using it.
    pub fn add_fd(mut self, fd: impl Into<OwnedFd>, fdset: u32, opaque: Option<&str>) -> Self {
        self.fds.push(AddFd {
            fd: fd.into(),
            fdset,
            opaque: opaque.map(str::to_owned),
        });
        self
    }

    /// Give QEMU a socket chardev on a descriptor it inherits:
    /// `-chardev socket,id=ID,fd=N`, typically one end of a
    /// [`UnixStream::pair`](std::os::unix::net::UnixStream::pair) whose other end you
    /// keep. Use the chardev with your own arguments (`-serial chardev:ID`,
    /// `-device virtserialport,chardev=ID`, `-qtest chardev:ID`, ...). As with the QMP
    /// socketpair, our copy of `fd` is closed once QEMU has started, so your end sees
    /// end-of-file when QEMU exits.
    ///
    /// `id` must be a QEMU identifier (a letter, then letters, digits, `-`, `.` or
    /// `_`), not `mon` or `console` (the library's own), and not used twice; otherwise
    /// [`launch`](Self::launch) fails with [`MachineError::InvalidConfig`].
    pub fn chardev_fd(mut self, id: impl Into<String>, fd: impl Into<OwnedFd>) -> Self {
        self.chardev_fds.push(ChardevFd {
            id: id.into(),
            fd: fd.into(),
        });
        self
    }

    /// Insert arguments before the user's (after the library's own), for wrappers
    /// such as the qtest machine whose arguments belong with the base ones.
    pub(crate) fn prepend_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let user = std::mem::take(&mut self.args);
        self.args = args.into_iter().map(Into::into).chain(user).collect();
        self
    }

    /// The QEMU binary.
    pub(crate) fn binary(&self) -> &Path {
        &self.binary
    }

    /// How many received events the machine keeps for
    /// [`event_wait`](QemuMachine::event_wait) and the others before it drops the
    /// oldest (at least 1; default
    /// [`DEFAULT_EVENT_CAPACITY`](qemu_qmp::DEFAULT_EVENT_CAPACITY), 16,384). Drops
    /// are counted by [`QemuMachine::events_lost`] and logged.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// How long a graceful shutdown may take before QEMU is killed (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Make a graceful [`shutdown`](QemuMachine::shutdown) ask the guest first: send
    /// `system_powerdown` (ACPI power button) and give the guest up to `timeout` to
    /// power off, and only then `quit` (default: no powerdown; Python has none).
    /// A guest that powered off ends with a `SHUTDOWN` event whose `guest` is true;
    /// one that ignored the button costs `timeout`, then QEMU quits as without this.
    /// The whole shutdown stays within [`shutdown_timeout`](Self::shutdown_timeout).
    pub fn powerdown_timeout(mut self, timeout: Duration) -> Self {
        self.powerdown_timeout = Some(timeout);
        self
    }

    /// Add `-display none -vga none`, as Python does (default true).
    pub fn display_none(mut self, yes: bool) -> Self {
        self.display_none = yes;
        self
    }

    /// Add `-nodefaults` (no default devices; off by default, as in Python).
    pub fn nodefaults(mut self) -> Self {
        self.nodefaults = true;
        self
    }

    /// Keep the text of each QMP reply and event (default false), so that their
    /// `ordered()` views show members in the order QEMU wrote them: for tools that
    /// show QEMU's messages to a person. See
    /// [`qemu_qmp::ClientBuilder::preserve_order`].
    pub fn preserve_order(mut self, yes: bool) -> Self {
        self.preserve_order = yes;
        self
    }

    /// Run QEMU with the best accelerator it can use here: `-accel kvm` when KVM is
    /// usable ([`accel::kvm_status`] for the target architecture in the binary's
    /// name and the binary itself), else `-accel tcg` (default: no `-accel`
    /// argument, QEMU's own default). The binary is asked for its accelerators
    /// before the launch (once per binary and process, see [`accel::list_accel`]);
    /// the choice, and why KVM was not chosen, is [`QemuMachine::accel`]. A binary
    /// with neither fails the launch with [`MachineError::NoAccel`], one that cannot
    /// be asked with [`MachineError::Accel`].
    ///
    /// ```no_run
    /// # async fn f() -> qemu_machine::Result<()> {
    /// let vm = qemu_machine::QemuMachine::builder("qemu-system-x86_64")
    ///     .machine_type("pc")
    ///     .best_accel()
    ///     .launch()
    ///     .await?;
    /// let choice = vm.accel().expect("best_accel was asked for");
    /// if let Some(why) = &choice.kvm_unavailable {
    ///     println!("using {} because {why}", choice.name);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn best_accel(mut self) -> Self {
        self.best_accel = true;
        self
    }

    /// Convert `_` to `-` in the top-level argument names of
    /// [`QemuMachine::command`] and [`QemuMachine::qmp_raw`] (Python: `conv_keys`;
    /// default false).
    pub fn conv_keys(mut self, yes: bool) -> Self {
        self.conv_keys = yes;
        self
    }

    fn validate(&self) -> Result<()> {
        if let Some(name) = &self.name {
            if name.is_empty() || name.contains('/') || name.contains('\0') {
                return Err(MachineError::InvalidConfig(format!(
                    "the name {name:?} cannot be used in a file name"
                )));
            }
        }
        if self.binary.as_os_str().is_empty() {
            return Err(MachineError::InvalidConfig(
                "the QEMU binary is empty".into(),
            ));
        }
        if !self.console && (self.console_device_type.is_some() || self.console_log.is_some()) {
            return Err(MachineError::InvalidConfig(
                "console settings were given but the console is disabled".into(),
            ));
        }
        for (i, c) in self.chardev_fds.iter().enumerate() {
            if !is_qemu_id(&c.id) {
                return Err(MachineError::InvalidConfig(format!(
                    "the chardev id {:?} is not a QEMU identifier (a letter, then letters, digits, '-', '.' or '_')",
                    c.id
                )));
            }
            if c.id == "mon" || c.id == "console" {
                return Err(MachineError::InvalidConfig(format!(
                    "the chardev id {:?} is reserved for the machine's own chardevs",
                    c.id
                )));
            }
            if self.chardev_fds[..i].iter().any(|d| d.id == c.id) {
                return Err(MachineError::InvalidConfig(format!(
                    "the chardev id {:?} is used twice",
                    c.id
                )));
            }
        }
        Ok(())
    }

    /// QEMU's arguments, before the user's (Python: `_base_args`).
    fn base_args(
        &self,
        qmp_chardev: Option<&str>,
        console_chardev: Option<&str>,
        add_fds: &[(i32, u32, Option<String>)],
    ) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        if self.nodefaults {
            args.push("-nodefaults".into());
        }
        if self.display_none {
            args.extend(["-display", "none", "-vga", "none"].map(String::from));
        }
        let mut push = |a: &str, b: String| {
            args.push(a.to_owned());
            args.push(b);
        };
        if let Some(c) = qmp_chardev {
            push("-chardev", c.to_owned());
            push("-mon", "chardev=mon,mode=control".to_owned());
        }
        if let Some(m) = &self.machine_type {
            push("-machine", m.clone());
        }
        if let Some(c) = console_chardev {
            for _ in 0..self.console_index {
                push("-serial", "null".to_owned());
            }
            push("-chardev", c.to_owned());
            match &self.console_device_type {
                None => push("-serial", "chardev:console".to_owned()),
                Some(t) => push("-device", format!("{t},chardev=console")),
            }
        }
        for (fd, set, opaque) in add_fds {
            let mut v = format!("fd={fd},set={set}");
            if let Some(o) = opaque {
                let _ = write!(v, ",opaque={}", o.replace(',', ",,"));
            }
            push("-add-fd", v);
        }
        args
    }

    /// Start QEMU and connect to its QMP monitor (Python: `launch()`).
    ///
    /// QEMU's stdout and stderr go to `<name>.log` in the log directory. If QEMU exits
    /// before QMP is up, this fails at once (it does not wait out the accept timeout)
    /// with [`MachineError::LaunchFailure`], which holds QEMU's exit code, command line
    /// and output. On every failure path QEMU is killed and reaped, and the temporary
    /// directory and socket files are removed.
    pub async fn launch(self) -> Result<QemuMachine> {
        self.validate()?;
        let accel = if self.best_accel {
            Some(match accel::best_accel(&self.binary).await {
                Ok(choice) => choice,
                Err(NoAccel {
                    kvm: KvmUnavailable::Probe(e),
                    ..
                }) => return Err(MachineError::Accel(e)),
                Err(e) => return Err(MachineError::NoAccel(e)),
            })
        } else {
            None
        };
        Launch::new(self, accel).run().await
    }
}

/// Builds a unique machine name.
fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "qemu-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// QEMU's rule for identifiers (`id_wellformed`): a letter, then letters, digits,
/// `-`, `.` or `_`.
fn is_qemu_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// Escape a value for a QEMU option string (`,` is written `,,`).
fn opt_escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// Quote an argument for display in a POSIX shell.
pub(crate) fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if safe {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// A command line for display.
pub(crate) fn shell_join(args: &[String]) -> String {
    args.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How we reach the QMP monitor once QEMU runs.
enum QmpConn {
    Pair(UnixStream),
    /// `start_server` was called on the client; accept.
    Server,
}

/// The state of one launch. Everything [`Launch::run`] creates is owned by a local
/// that cleans up when dropped (the `Process` kills and reaps QEMU, the `TempDir`
/// removes itself, the QMP client's listener removes its socket file), so a failure
/// or a cancelled launch future at any point leaves nothing behind.
struct Launch {
    b: MachineBuilder,
    name: String,
    command_line: Vec<String>,
    /// What [`MachineBuilder::best_accel`] chose.
    accel: Option<AccelChoice>,
}

impl Launch {
    fn new(b: MachineBuilder, accel: Option<AccelChoice>) -> Launch {
        let name = b.name.clone().unwrap_or_else(unique_name);
        Launch {
            b,
            name,
            command_line: Vec::new(),
            accel,
        }
    }

    fn failure(&self, cause: LaunchCause) -> MachineError {
        MachineError::LaunchFailure(Box::new(VmLaunchFailure {
            exit_code: None,
            signal: None,
            command_line: self.command_line.clone(),
            output: String::new(),
            cause,
        }))
    }

    fn setup(&self, what: impl Into<String>, e: std::io::Error) -> MachineError {
        self.failure(LaunchCause::Setup {
            what: what.into(),
            source: e,
        })
    }

    async fn run(mut self) -> Result<QemuMachine> {
        let base = self
            .b
            .base_temp_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        // Directories left by machines of processes that died (SIGKILL) are removed
        // meanwhile (by a sweep shared with concurrent launches: see `sweep`);
        // awaited before the launch succeeds.
        let sweep = sweep::sweep(&base);
        let temp_dir = process::owner_tag()
            .and_then(|owner| {
                tempfile::Builder::new()
                    .prefix(&format!("{TEMP_DIR_PREFIX}{owner}-"))
                    .tempdir_in(&base)
            })
            .map_err(|e| {
                self.setup(
                    format!("creating a temporary directory in {}", base.display()),
                    e,
                )
            })?;
        let sock_dir = self
            .b
            .sock_dir
            .clone()
            .unwrap_or_else(|| temp_dir.path().to_owned());
        let log_dir = self
            .b
            .log_dir
            .clone()
            .unwrap_or_else(|| temp_dir.path().to_owned());
        let log_path = log_dir.join(format!("{}.log", self.name));

        // No timeout of its own: `connect` enforces the accept timeout.
        let client = Client::builder()
            .name(self.name.clone())
            .connect_timeout(None)
            .preserve_order(self.b.preserve_order)
            .build();
        // Registered before the session exists, so that it sees every event.
        let listener = client.listen_with(ListenOptions::new().capacity(self.b.event_capacity));

        let mut inherit: Vec<OwnedFd> = Vec::new();
        let (qmp_chardev, qmp_conn) = if self.b.qmp {
            let (chardev, conn) = self.prepare_qmp(&client, &sock_dir, &mut inherit)?;
            (Some(chardev), Some(conn))
        } else {
            (None, None)
        };

        let (console_chardev, console_ours) = if self.b.console {
            let (ours, theirs) =
                UnixStream::pair().map_err(|e| self.setup("creating the console socketpair", e))?;
            let theirs = above_stdio(theirs.into())
                .map_err(|e| self.setup("moving a descriptor above stdio", e))?;
            let chardev = format!("socket,id=console,fd={}", theirs.as_raw_fd());
            inherit.push(theirs);
            (Some(chardev), Some(ours))
        } else {
            (None, None)
        };
        let console_log =
            match &self.b.console_log {
                Some(p) => Some(File::create(p).map_err(|e| {
                    self.setup(format!("creating the console log {}", p.display()), e)
                })?),
                None => None,
            };

        let mut add_fds = Vec::new();
        for a in std::mem::take(&mut self.b.fds) {
            let fd =
                above_stdio(a.fd).map_err(|e| self.setup("moving a descriptor above stdio", e))?;
            add_fds.push((fd.as_raw_fd(), a.fdset, a.opaque));
            inherit.push(fd);
        }
        let mut chardev_args = Vec::new();
        for c in std::mem::take(&mut self.b.chardev_fds) {
            let fd =
                above_stdio(c.fd).map_err(|e| self.setup("moving a descriptor above stdio", e))?;
            chardev_args.push("-chardev".to_owned());
            chardev_args.push(format!("socket,id={},fd={}", c.id, fd.as_raw_fd()));
            inherit.push(fd);
        }

        let mut args =
            self.b
                .base_args(qmp_chardev.as_deref(), console_chardev.as_deref(), &add_fds);
        if let Some(a) = &self.accel {
            args.extend(["-accel".to_owned(), a.name.to_owned()]);
        }
        let binary = self.b.binary.to_string_lossy().into_owned();
        self.command_line = self
            .b
            .wrapper
            .iter()
            .cloned()
            .chain(std::iter::once(binary))
            .chain(args)
            .chain(chardev_args)
            .chain(self.b.args.iter().cloned())
            .collect();

        let log = File::create(&log_path)
            .map_err(|e| self.setup(format!("creating the log file {}", log_path.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| self.setup("duplicating the log file descriptor", e))?;
        let mut command = if self.b.wrapper.is_empty() {
            Command::new(&self.b.binary)
        } else {
            let mut c = Command::new(&self.b.wrapper[0]);
            c.args(&self.b.wrapper[1..]).arg(&self.b.binary);
            c
        };
        command
            .args(&self.command_line[self.b.wrapper.len() + 1..])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));

        debug!(name = %self.name, "launching: {}", shell_join(&self.command_line));
        let program = self.command_line[0].clone();
        let shown = shell_join(&self.command_line);
        // Without a wrapper the child is QEMU, which its death signal takes down with
        // us; a wrapper may fork it, and then only a watchdog can.
        let watchdog = !self.b.wrapper.is_empty();
        let process = process::spawn(command, inherit, self.name.clone(), shown, watchdog)
            .await
            .map_err(|source| self.failure(LaunchCause::Spawn { program, source }))?;

        let console = match console_ours {
            Some(ours) => Some(
                Console::start(
                    ours,
                    console_log,
                    self.b.console_buffer_size,
                    self.name.clone(),
                )
                .map_err(|e| self.setup("watching the console socket", e))?,
            ),
            None => None,
        };

        if let Some(conn) = qmp_conn {
            if let Err(cause) = self.connect(&client, conn, &process).await {
                return Err(self.fail_running(cause, process, &log_path, console).await);
            }
        }
        // Long done by now (it ran while QEMU started); it cannot fail the launch.
        sweep.await;

        Ok(QemuMachine::new(MachineParts {
            name: self.name,
            command_line: self.command_line,
            temp_dir,
            log_path,
            qmp_enabled: self.b.qmp,
            conv_keys: self.b.conv_keys,
            shutdown_timeout: self.b.shutdown_timeout,
            powerdown_timeout: self.b.powerdown_timeout,
            qmp: client,
            events: EventQueue::new(listener),
            console,
            process,
            accel: self.accel,
        }))
    }

    /// Set up the QMP transport; returns the chardev option and how to connect.
    fn prepare_qmp(
        &self,
        client: &Client,
        sock_dir: &Path,
        inherit: &mut Vec<OwnedFd>,
    ) -> Result<(String, QmpConn)> {
        match &self.b.qmp_address {
            QmpAddress::Socketpair => {
                let (ours, theirs) =
                    UnixStream::pair().map_err(|e| self.setup("creating the QMP socketpair", e))?;
                let theirs = above_stdio(theirs.into())
                    .map_err(|e| self.setup("moving a descriptor above stdio", e))?;
                let chardev = format!("socket,id=mon,fd={}", theirs.as_raw_fd());
                inherit.push(theirs);
                Ok((chardev, QmpConn::Pair(ours)))
            }
            QmpAddress::Unix(path) => {
                let path = sock_dir.join(path);
                if path.as_os_str().len() > MAX_SOCKET_PATH {
                    return Err(MachineError::InvalidConfig(format!(
                        "the QMP socket path {} is {} bytes long, more than a Unix socket allows ({MAX_SOCKET_PATH}); use a shorter sock_dir or name",
                        path.display(),
                        path.as_os_str().len()
                    )));
                }
                let Some(text) = path.to_str() else {
                    return Err(MachineError::InvalidConfig(format!(
                        "the QMP socket path {} is not UTF-8",
                        path.display()
                    )));
                };
                client
                    .start_server(path.as_path())
                    .map_err(|e| self.failure(LaunchCause::Qmp(e)))?;
                Ok((
                    format!("socket,id=mon,path={},server=off", opt_escape(text)),
                    QmpConn::Server,
                ))
            }
            QmpAddress::Tcp { host, port } => {
                client
                    .start_server((host.clone(), *port))
                    .map_err(|e| self.failure(LaunchCause::Qmp(e)))?;
                let port = client
                    .server_tcp_address()
                    .map(|a| a.port())
                    .unwrap_or(*port);
                Ok((
                    format!(
                        "socket,id=mon,host={},port={port},server=off",
                        opt_escape(host)
                    ),
                    QmpConn::Server,
                ))
            }
        }
    }

    /// Bring QMP up, racing QEMU's exit: a QEMU that dies fails the launch at once.
    async fn connect(
        &self,
        client: &Client,
        conn: QmpConn,
        process: &Process,
    ) -> Result<(), LaunchCause> {
        let timeout = self.b.accept_timeout;
        let deadline = Instant::now() + timeout;
        let connect = async {
            match conn {
                QmpConn::Pair(s) => client.connect_to(s).await,
                QmpConn::Server => client.accept(None).await,
            }
        };
        tokio::select! {
            r = tokio::time::timeout_at(deadline, connect) => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(LaunchCause::Qmp(e)),
                Err(_) => Err(LaunchCause::Timeout(timeout)),
            },
            status = process.wait() => Err(LaunchCause::Exited { status }),
        }
    }

    /// QMP did not come up: make sure QEMU is dead, and describe the failure with
    /// its exit status and output.
    async fn fail_running(
        &self,
        cause: LaunchCause,
        process: Process,
        log_path: &Path,
        console: Option<Console>,
    ) -> MachineError {
        let on_its_own = match &cause {
            LaunchCause::Exited { status } => Some(*status),
            // QEMU closing the connection almost always means that it is exiting.
            LaunchCause::Qmp(_) => process.wait_timeout(LAUNCH_EXIT_GRACE).await,
            _ => None,
        };
        let status = match on_its_own {
            Some(s) => s,
            None => process.kill_and_reap(),
        };
        let cause = match cause {
            // The connection failed because QEMU exited: that is the real cause.
            LaunchCause::Qmp(e) if on_its_own.is_some() => {
                debug!(name = %self.name, "QMP failed during launch because QEMU exited: {e}");
                LaunchCause::Exited { status }
            }
            other => other,
        };
        if let Some(c) = &console {
            c.finish(Duration::from_secs(1)).await;
        }
        let output = match std::fs::read(log_path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => format!("(cannot read {}: {e})", log_path.display()),
        };
        MachineError::LaunchFailure(Box::new(VmLaunchFailure {
            exit_code: status.code(),
            signal: status.signal(),
            command_line: self.command_line.clone(),
            output,
            cause,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_args_follow_python() {
        let b = MachineBuilder::new("qemu")
            .machine_type("pc")
            .console_index(2)
            .add_fd(std::fs::File::open("/dev/null").unwrap(), 1, Some("a,b"));
        let args = b.base_args(
            Some("socket,id=mon,fd=5"),
            Some("socket,id=console,fd=6"),
            &[(7, 1, Some("a,b".into()))],
        );
        assert_eq!(
            args.join(" "),
            "-display none -vga none -chardev socket,id=mon,fd=5 -mon chardev=mon,mode=control \
             -machine pc -serial null -serial null -chardev socket,id=console,fd=6 \
             -serial chardev:console -add-fd fd=7,set=1,opaque=a,,b"
        );
    }

    #[test]
    fn base_args_with_a_console_device_and_no_qmp() {
        let b = MachineBuilder::new("qemu")
            .nodefaults()
            .display_none(false)
            .console_device_type("isa-serial");
        let args = b.base_args(None, Some("socket,id=console,fd=3"), &[]);
        assert_eq!(
            args.join(" "),
            "-nodefaults -chardev socket,id=console,fd=3 -device isa-serial,chardev=console"
        );
    }

    #[test]
    fn names_are_unique_and_validated() {
        assert_ne!(unique_name(), unique_name());
        assert!(MachineBuilder::new("q").name("a/b").validate().is_err());
        assert!(MachineBuilder::new("q").name("").validate().is_err());
        assert!(MachineBuilder::new("q").name("vm-1").validate().is_ok());
        assert!(MachineBuilder::new("").validate().is_err());
    }

    #[test]
    fn chardev_ids_are_validated() {
        let fd = || std::fs::File::open("/dev/null").unwrap();
        let ok = MachineBuilder::new("q").chardev_fd("qtest", fd());
        assert!(ok.validate().is_ok());
        for bad in ["", "1a", "a,b", "a=b", "a b", "mon", "console"] {
            let b = MachineBuilder::new("q").chardev_fd(bad, fd());
            assert!(b.validate().is_err(), "{bad:?} accepted");
        }
        let twice = MachineBuilder::new("q")
            .chardev_fd("x", fd())
            .chardev_fd("x", fd());
        assert!(twice.validate().is_err());
    }

    #[test]
    fn prepended_args_come_before_the_users() {
        let b = MachineBuilder::new("q")
            .args(["-a", "1"])
            .prepend_args(["-b", "2"])
            .arg("-c");
        assert_eq!(b.args, ["-b", "2", "-a", "1", "-c"]);
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("-machine"), "-machine");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(
            shell_join(&["qemu".into(), "-name".into(), "my vm".into()]),
            "qemu -name 'my vm'"
        );
    }
}
