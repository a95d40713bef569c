//! A typed client for the QEMU guest agent (`qemu-ga`): the library behind
//! `qemu-ga-client`.
//!
//! [`GuestAgent::connect`] speaks the agent's dialect (no greeting, a `0xFF` +
//! `guest-sync-delimited` resynchronisation on connect) with one deadline for
//! connecting and synchronising, and a default deadline for every reply, so that a
//! missing or stuck agent never blocks its caller for long. The methods wrap the
//! agent's commands with typed results; the `format_*` functions print them the way
//! QEMU's Python `qemu-ga-client` does.
//!
//! ```no_run
//! # async fn f() -> Result<(), qemu_tools::ga::GaError> {
//! use std::time::Duration;
//! use qemu_tools::ga::GuestAgent;
//!
//! let ga = GuestAgent::connect("/run/vm1/qga.sock", Duration::from_secs(3)).await?;
//! ga.ping().await?;
//! let info = ga.info().await?;
//! println!("agent {}", info.version);
//! let status = ga.exec("/bin/uname", &["-r".to_owned()], Duration::from_secs(30)).await?;
//! print!("{}", String::from_utf8_lossy(&status.stdout));
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::Duration;

use qemu_qmp::json::Ordered;
use qemu_qmp::{json, Address, Client, ToAddress, Value};

use crate::qom::python_str;

/// The default deadline for connecting and for each reply: Python's
/// `qemu-ga-client` gives the agent 3 seconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// The least deadline for commands that may take long in a real guest (freezing or
/// thawing file systems, trimming them): Python's tool gives freezing 60 seconds.
pub const SLOW_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How many bytes `guest-file-read` is asked for at a time.
const READ_CHUNK: u64 = 64 * 1024;

/// How many empty reads without `eof` a file read tolerates before it gives up on a
/// peer that never finishes.
const MAX_EMPTY_READS: u32 = 100;

/// Why a guest agent operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GaError {
    /// The Unix socket does not exist (Python's wording).
    #[error("'{0}' not found. (Is QEMU running?)")]
    SocketNotFound(String),
    /// The address cannot be parsed.
    #[error(transparent)]
    BadAddress(qemu_qmp::Error),
    /// The socket could not be connected to.
    #[error("{0} (Is QEMU running?)")]
    Connect(#[source] qemu_qmp::Error),
    /// Nobody answered the resynchronisation in time.
    #[error("the guest agent did not respond within {} s; it seems not alive", secs(*.0))]
    NotResponding(Duration),
    /// The agent answered a command with an error (a disabled command, a missing
    /// file, ...).
    #[error("{command}: {desc}")]
    Refused {
        /// The agent command.
        command: String,
        /// The agent's error description.
        desc: String,
        /// The whole error (class, request, reply).
        #[source]
        source: qemu_qmp::Error,
    },
    /// The connection failed, timed out or ended during a command.
    #[error("{command}: {source}")]
    Qmp {
        /// The agent command.
        command: String,
        /// What went wrong.
        #[source]
        source: qemu_qmp::Error,
    },
    /// The agent answered with something that is not the documented shape.
    #[error("malformed reply to '{command}': {reason}")]
    BadReply {
        /// The agent command.
        command: String,
        /// What is wrong with the reply.
        reason: String,
    },
    /// A command started with [`GuestAgent::exec`] was still running at the deadline.
    #[error("the guest process {pid} did not finish within {} s (it may still be running)", secs(*.waited))]
    ExecTimeout {
        /// The guest process id.
        pid: i64,
        /// How long we waited.
        waited: Duration,
    },
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
}

impl GaError {
    fn from_qmp(command: &str, e: qemu_qmp::Error) -> GaError {
        match e.as_execute_error() {
            Some(x) => GaError::Refused {
                command: command.to_owned(),
                desc: x.desc().to_owned(),
                source: e,
            },
            None => GaError::Qmp {
                command: command.to_owned(),
                source: e,
            },
        }
    }

    /// The QMP library's error behind this one, if there is one (the same helper as
    /// `qemu_machine::MachineError::qmp_error`).
    pub fn qmp_error(&self) -> Option<&qemu_qmp::Error> {
        match self {
            GaError::BadAddress(e) | GaError::Connect(e) => Some(e),
            GaError::Refused { source, .. } | GaError::Qmp { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The agent's error class (`GenericError`, `CommandNotFound`, ...) if it answered
    /// a command with an error.
    pub fn error_class(&self) -> Option<&str> {
        self.qmp_error()?.error_class()
    }

    /// True for a deadline that passed (connecting or waiting for a reply), at any
    /// depth of wrapping.
    pub fn is_timeout(&self) -> bool {
        match self {
            GaError::NotResponding(_) | GaError::ExecTimeout { .. } => true,
            _ => self.qmp_error().is_some_and(qemu_qmp::Error::is_timeout),
        }
    }

    /// True if the connection to the agent is gone.
    pub fn is_disconnected(&self) -> bool {
        self.qmp_error()
            .is_some_and(qemu_qmp::Error::is_disconnected)
    }

    /// True when writing the output failed because the reader went away.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, GaError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Seconds as a short decimal: `3`, `0.5`.
fn secs(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

fn bad_reply(command: &str, reason: impl Into<String>) -> GaError {
    GaError::BadReply {
        command: command.to_owned(),
        reason: reason.into(),
    }
}

/// What `guest-info` says.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentInfo {
    /// The agent's version.
    pub version: String,
    /// Every command the agent knows, in its order.
    pub commands: Vec<AgentCommand>,
}

/// One entry of `guest-info`'s `supported_commands`.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentCommand {
    /// The command name.
    pub name: String,
    /// False when the agent was told to refuse it (`--block-rpcs`).
    pub enabled: bool,
    /// False for commands that send no reply on success (`guest-shutdown`, ...).
    pub success_response: bool,
}

/// A guest network interface (`guest-network-get-interfaces`).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkInterface {
    /// The interface name.
    pub name: String,
    /// The MAC address, when the agent gives one.
    pub hardware_address: Option<String>,
    /// Its IP addresses.
    pub ip_addresses: Vec<IpAddress>,
}

/// An address of a [`NetworkInterface`].
#[derive(Debug, Clone, PartialEq)]
pub struct IpAddress {
    /// `ipv4` or `ipv6`.
    pub kind: String,
    /// The address.
    pub address: String,
    /// The prefix length.
    pub prefix: u32,
}

/// How `guest-shutdown` takes the guest down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Power off.
    Powerdown,
    /// Halt.
    Halt,
    /// Reboot.
    Reboot,
}

impl ShutdownMode {
    /// The `mode` argument of `guest-shutdown`.
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownMode::Powerdown => "powerdown",
            ShutdownMode::Halt => "halt",
            ShutdownMode::Reboot => "reboot",
        }
    }
}

/// Which `guest-suspend-*` command to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuspendMode {
    /// Suspend to disk.
    Disk,
    /// Suspend to RAM.
    Ram,
    /// Both.
    Hybrid,
}

impl SuspendMode {
    /// The agent command.
    pub fn command(self) -> &'static str {
        match self {
            SuspendMode::Disk => "guest-suspend-disk",
            SuspendMode::Ram => "guest-suspend-ram",
            SuspendMode::Hybrid => "guest-suspend-hybrid",
        }
    }
}

/// How a guest process ended (`guest-exec-status` once `exited` is true).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecStatus {
    /// The guest process id.
    pub pid: i64,
    /// The exit code, when it exited normally.
    pub exit_code: Option<i64>,
    /// The signal that killed it (POSIX guests).
    pub signal: Option<i64>,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
    /// True when the agent cut the standard output short.
    pub stdout_truncated: bool,
    /// True when the agent cut the standard error short.
    pub stderr_truncated: bool,
}

/// A connected guest agent.
#[derive(Debug, Clone)]
pub struct GuestAgent {
    client: Client,
    timeout: Duration,
}

impl GuestAgent {
    /// Connect to the agent at `address` (a Unix socket path or `host:port`) and
    /// resynchronise with it, all within `timeout`, which is also the default deadline
    /// for each reply afterwards.
    ///
    /// A Unix socket that does not exist is [`GaError::SocketNotFound`]; one nobody
    /// answers on within `timeout` is [`GaError::NotResponding`].
    pub async fn connect(
        address: impl ToAddress,
        timeout: Duration,
    ) -> Result<GuestAgent, GaError> {
        let address = address.to_address().map_err(GaError::BadAddress)?;
        if let Address::Unix(path) = &address {
            if !path.exists() {
                return Err(GaError::SocketNotFound(path.display().to_string()));
            }
        }
        // What is shown keeps the agent's member order.
        let client = Client::builder()
            .name("qga")
            .guest_agent()
            .preserve_order(true)
            .connect_timeout(timeout)
            .command_timeout(timeout)
            .connect(address)
            .await
            .map_err(|e| match e {
                qemu_qmp::Error::Timeout { .. } => GaError::NotResponding(timeout),
                e @ qemu_qmp::Error::Connect { .. } => GaError::Connect(e),
                e => GaError::from_qmp("guest-sync-delimited", e),
            })?;
        Ok(GuestAgent { client, timeout })
    }

    /// Use a client that is already connected to an agent (and synchronised with
    /// it); `timeout` is the default deadline for each reply.
    pub fn from_client(client: Client, timeout: Duration) -> GuestAgent {
        GuestAgent { client, timeout }
    }

    /// The client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The default deadline for each reply.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Close the connection.
    pub async fn disconnect(&self) {
        let _ = self.client.disconnect().await;
    }

    /// Execute any agent command and return its `return` value, waiting at most the
    /// default deadline.
    pub async fn execute(&self, command: &str, arguments: Option<Value>) -> Result<Value, GaError> {
        self.execute_within(command, arguments, self.timeout).await
    }

    /// Execute any agent command, waiting at most `timeout` for the reply.
    pub async fn execute_within(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, GaError> {
        self.client
            .request(command)
            .arguments_opt(arguments)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| GaError::from_qmp(command, e))
    }

    /// `guest-ping`.
    pub async fn ping(&self) -> Result<(), GaError> {
        self.execute("guest-ping", None).await.map(drop)
    }

    /// `guest-info`: the agent's version and commands.
    pub async fn info(&self) -> Result<AgentInfo, GaError> {
        const CMD: &str = "guest-info";
        let rsp = self.execute(CMD, None).await?;
        let version = rsp
            .get("version")
            .and_then(Value::as_str)
            .ok_or_else(|| bad_reply(CMD, "no 'version' string"))?
            .to_owned();
        let list = rsp
            .get("supported_commands")
            .and_then(Value::as_array)
            .ok_or_else(|| bad_reply(CMD, "no 'supported_commands' list"))?;
        let commands = list
            .iter()
            .map(|c| {
                let name = c
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad_reply(CMD, format!("a command without a name: {c}")))?;
                Ok(AgentCommand {
                    name: name.to_owned(),
                    enabled: c.get("enabled").and_then(Value::as_bool).unwrap_or(false),
                    success_response: c
                        .get("success-response")
                        .and_then(Value::as_bool)
                        .unwrap_or(true),
                })
            })
            .collect::<Result<_, GaError>>()?;
        Ok(AgentInfo { version, commands })
    }

    /// Copy the guest file `path` to `out`, opened read-only (`guest-file-open` with
    /// mode `r`, `guest-file-read` until `eof`, `guest-file-close`). Returns the number
    /// of bytes copied. The handle is closed on every path out.
    pub async fn read_file_to<W: Write>(&self, path: &str, out: &mut W) -> Result<u64, GaError> {
        const OPEN: &str = "guest-file-open";
        let rsp = self
            .execute(OPEN, Some(json!({ "path": path, "mode": "r" })))
            .await
            .map_err(|e| match e {
                GaError::Refused { desc, source, .. } => GaError::Refused {
                    command: path.to_owned(),
                    desc,
                    source,
                },
                e => e,
            })?;
        let handle = rsp
            .as_i64()
            .ok_or_else(|| bad_reply(OPEN, format!("expected a file handle, got {rsp}")))?;
        let copied = self.read_handle_to(handle, out).await;
        let closed = self
            .execute("guest-file-close", Some(json!({ "handle": handle })))
            .await;
        let n = copied?;
        closed?;
        Ok(n)
    }

    async fn read_handle_to<W: Write>(&self, handle: i64, out: &mut W) -> Result<u64, GaError> {
        const READ: &str = "guest-file-read";
        let mut total = 0u64;
        let mut empty = 0;
        loop {
            let rsp = self
                .execute(READ, Some(json!({ "handle": handle, "count": READ_CHUNK })))
                .await?;
            let b64 = rsp
                .get("buf-b64")
                .and_then(Value::as_str)
                .ok_or_else(|| bad_reply(READ, "no 'buf-b64' string"))?;
            let data = decode_base64(b64).map_err(|why| bad_reply(READ, why))?;
            out.write_all(&data)?;
            total += data.len() as u64;
            if rsp.get("eof").and_then(Value::as_bool).unwrap_or(false) {
                break;
            }
            if data.is_empty() {
                empty += 1;
                if empty >= MAX_EMPTY_READS {
                    return Err(bad_reply(
                        READ,
                        format!("{MAX_EMPTY_READS} empty reads in a row without 'eof'"),
                    ));
                }
            } else {
                empty = 0;
            }
        }
        out.flush()?;
        Ok(total)
    }

    /// The whole guest file `path`; see [`read_file_to`](Self::read_file_to).
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, GaError> {
        let mut v = Vec::new();
        self.read_file_to(path, &mut v).await?;
        Ok(v)
    }

    /// `guest-fsfreeze-status`: `thawed` or `frozen`.
    pub async fn fsfreeze_status(&self) -> Result<String, GaError> {
        const CMD: &str = "guest-fsfreeze-status";
        let rsp = self.execute(CMD, None).await?;
        rsp.as_str()
            .map(str::to_owned)
            .ok_or_else(|| bad_reply(CMD, format!("expected a string, got {rsp}")))
    }

    /// `guest-fsfreeze-freeze`: freeze the guest's file systems; returns how many.
    pub async fn fsfreeze_freeze(&self) -> Result<i64, GaError> {
        self.count_command("guest-fsfreeze-freeze").await
    }

    /// `guest-fsfreeze-thaw`: thaw the guest's file systems; returns how many.
    pub async fn fsfreeze_thaw(&self) -> Result<i64, GaError> {
        self.count_command("guest-fsfreeze-thaw").await
    }

    async fn count_command(&self, cmd: &str) -> Result<i64, GaError> {
        let rsp = self
            .execute_within(cmd, None, self.timeout.max(SLOW_COMMAND_TIMEOUT))
            .await?;
        rsp.as_i64()
            .ok_or_else(|| bad_reply(cmd, format!("expected a number, got {rsp}")))
    }

    /// Execute `command` and return its `return` value with its members in the
    /// agent's order (exact on a connection made by [`connect`](Self::connect)).
    async fn execute_ordered(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Ordered, GaError> {
        crate::reply::execute_ordered(&self.client, command, arguments, Some(timeout))
            .await
            .map_err(|e| GaError::from_qmp(command, e))
    }

    /// `guest-fstrim` with `minimum` (bytes; contiguous free ranges smaller than this
    /// may be skipped). Returns the agent's report, in the agent's order.
    pub async fn fstrim(&self, minimum: u64) -> Result<Ordered, GaError> {
        self.execute_ordered(
            "guest-fstrim",
            Some(json!({ "minimum": minimum })),
            self.timeout.max(SLOW_COMMAND_TIMEOUT),
        )
        .await
    }

    /// `guest-network-get-interfaces`.
    pub async fn network_interfaces(&self) -> Result<Vec<NetworkInterface>, GaError> {
        const CMD: &str = "guest-network-get-interfaces";
        let rsp = self.execute(CMD, None).await?;
        let list = rsp
            .as_array()
            .ok_or_else(|| bad_reply(CMD, format!("expected a list, got {rsp}")))?;
        list.iter()
            .map(|nif| {
                let name = nif
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad_reply(CMD, format!("an interface without a name: {nif}")))?;
                let mut ip_addresses = Vec::new();
                for a in nif
                    .get("ip-addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let kind = a.get("ip-address-type").and_then(Value::as_str);
                    let address = a.get("ip-address").and_then(Value::as_str);
                    let prefix = a.get("prefix").and_then(Value::as_u64);
                    match (kind, address, prefix) {
                        (Some(k), Some(addr), Some(p)) if p <= 128 => {
                            ip_addresses.push(IpAddress {
                                kind: k.to_owned(),
                                address: addr.to_owned(),
                                prefix: p as u32,
                            })
                        }
                        _ => return Err(bad_reply(CMD, format!("a malformed address: {a}"))),
                    }
                }
                Ok(NetworkInterface {
                    name: name.to_owned(),
                    hardware_address: nif
                        .get("hardware-address")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    ip_addresses,
                })
            })
            .collect()
    }

    /// `guest-get-osinfo`: the guest operating system's identification, as the
    /// agent gives it (`kernel-release`, `id`, `pretty-name`, ...).
    /// The object's members are in the agent's order.
    pub async fn osinfo(&self) -> Result<Ordered, GaError> {
        const CMD: &str = "guest-get-osinfo";
        match self.execute_ordered(CMD, None, self.timeout).await? {
            m @ Ordered::Object(_) => Ok(m),
            other => Err(bad_reply(CMD, format!("expected an object, got {other}"))),
        }
    }

    /// `guest-shutdown`. An agent that carries it out sends no reply (the guest goes
    /// down), so no reply within the deadline, or the connection closing, is success;
    /// only an error reply is a failure.
    pub async fn shutdown(&self, mode: ShutdownMode) -> Result<(), GaError> {
        self.no_reply_command("guest-shutdown", Some(json!({ "mode": mode.as_str() })))
            .await
    }

    /// `guest-suspend-disk`, `-ram` or `-hybrid`; like [`shutdown`](Self::shutdown),
    /// no reply is success.
    pub async fn suspend(&self, mode: SuspendMode) -> Result<(), GaError> {
        self.no_reply_command(mode.command(), None).await
    }

    async fn no_reply_command(&self, cmd: &str, args: Option<Value>) -> Result<(), GaError> {
        match self.execute(cmd, args).await {
            Ok(_) => Ok(()),
            Err(GaError::Qmp { source, .. }) if source.is_timeout() || source.is_disconnected() => {
                tracing::debug!("{cmd}: no reply ({source}), as expected");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// `guest-exec` with captured output: start `path` with `args` in the guest.
    /// Returns the guest process id.
    pub async fn exec_start(&self, path: &str, args: &[String]) -> Result<i64, GaError> {
        const CMD: &str = "guest-exec";
        let rsp = self
            .execute(
                CMD,
                Some(json!({ "path": path, "arg": args, "capture-output": true })),
            )
            .await?;
        rsp.get("pid")
            .and_then(Value::as_i64)
            .ok_or_else(|| bad_reply(CMD, format!("no 'pid' number in {rsp}")))
    }

    /// `guest-exec-status`: `None` while the process runs, its end once it has
    /// exited.
    pub async fn exec_status(&self, pid: i64) -> Result<Option<ExecStatus>, GaError> {
        const CMD: &str = "guest-exec-status";
        let rsp = self.execute(CMD, Some(json!({ "pid": pid }))).await?;
        let exited = rsp
            .get("exited")
            .and_then(Value::as_bool)
            .ok_or_else(|| bad_reply(CMD, format!("no 'exited' boolean in {rsp}")))?;
        if !exited {
            return Ok(None);
        }
        let data = |key: &str| -> Result<Vec<u8>, GaError> {
            match rsp.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::String(s)) => {
                    decode_base64(s).map_err(|why| bad_reply(CMD, format!("'{key}': {why}")))
                }
                Some(other) => Err(bad_reply(CMD, format!("'{key}' is not a string: {other}"))),
            }
        };
        let flag = |key: &str| rsp.get(key).and_then(Value::as_bool).unwrap_or(false);
        Ok(Some(ExecStatus {
            pid,
            exit_code: rsp.get("exitcode").and_then(Value::as_i64),
            signal: rsp.get("signal").and_then(Value::as_i64),
            stdout: data("out-data")?,
            stderr: data("err-data")?,
            stdout_truncated: flag("out-truncated"),
            stderr_truncated: flag("err-truncated"),
        }))
    }

    /// Run `path` with `args` in the guest and wait, at most `wait`, for it to end:
    /// `guest-exec`, then `guest-exec-status` polled every 10 ms at first, backing off
    /// to 250 ms. Still running at the deadline is [`GaError::ExecTimeout`].
    pub async fn exec(
        &self,
        path: &str,
        args: &[String],
        wait: Duration,
    ) -> Result<ExecStatus, GaError> {
        let pid = self.exec_start(path, args).await?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(10);
        loop {
            if let Some(status) = self.exec_status(pid).await? {
                return Ok(status);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(GaError::ExecTimeout { pid, waited: wait });
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }
}

/// `info` output, as Python's tool prints it: `version: V`, `supported_commands:`,
/// then a tab and `enabled: ` with the enabled commands joined by `, `, and a tab and
/// `disabled: ` with the others.
pub fn format_info(info: &AgentInfo) -> String {
    let names = |enabled: bool| {
        info.commands
            .iter()
            .filter(|c| c.enabled == enabled)
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "version: {}\nsupported_commands:\n\tenabled: {}\n\tdisabled: {}\n",
        info.version,
        names(true),
        names(false)
    )
}

/// `ifconfig` output, as Python's tool prints it: `name:`, then `\tinet ADDR  netmask
/// MASK`, `\tinet6 ADDR  prefixlen N`, and `\tether MAC` unless the MAC is all zeros.
pub fn format_ifconfig(interfaces: &[NetworkInterface]) -> String {
    let mut s = String::new();
    for nif in interfaces {
        let _ = writeln!(s, "{}:", nif.name);
        for a in &nif.ip_addresses {
            match a.kind.as_str() {
                "ipv4" => {
                    let _ = writeln!(
                        s,
                        "\tinet {}  netmask {}",
                        a.address,
                        ipv4_netmask(a.prefix)
                    );
                }
                "ipv6" => {
                    let _ = writeln!(s, "\tinet6 {}  prefixlen {}", a.address, a.prefix);
                }
                _ => {}
            }
        }
        if let Some(mac) = &nif.hardware_address {
            if mac != "00:00:00:00:00:00" {
                let _ = writeln!(s, "\tether {mac}");
            }
        }
    }
    s
}

/// The dotted IPv4 netmask of a prefix length (`24` -> `255.255.255.0`; lengths
/// above 32 count as 32).
pub fn ipv4_netmask(prefix: u32) -> String {
    let mask: u32 = match prefix.min(32) {
        0 => 0,
        p => u32::MAX << (32 - p),
    };
    let [a, b, c, d] = mask.to_be_bytes();
    format!("{a}.{b}.{c}.{d}")
}

/// `osinfo` output: a `key: value` line per member, in the agent's order.
pub fn format_osinfo(info: &Ordered) -> String {
    let mut s = String::new();
    for (k, v) in info.members().unwrap_or_default() {
        let _ = writeln!(s, "{k}: {}", python_str(v));
    }
    s
}

/// Decode standard base64 (padding optional, as `guest-file-read` and
/// `guest-exec-status` produce it).
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    fn sextet(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.as_bytes();
    let body = match bytes.iter().position(|&b| b == b'=') {
        Some(p) => {
            if bytes[p..].iter().any(|&b| b != b'=')
                || bytes.len() - p > 2
                || !bytes.len().is_multiple_of(4)
            {
                return Err("bad base64 padding".into());
            }
            &bytes[..p]
        }
        None => bytes,
    };
    if body.len() % 4 == 1 {
        return Err("truncated base64 data".into());
    }
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 2);
    for chunk in body.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = sextet(c).ok_or_else(|| format!("invalid base64 character {:?}", c as char))?;
            acc |= v << (18 - 6 * i);
        }
        let [_, a, b, c] = acc.to_be_bytes();
        out.push(a);
        if chunk.len() > 2 {
            out.push(b);
        }
        if chunk.len() > 3 {
            out.push(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        for (text, plain) in [
            ("", &b""[..]),
            ("Zg==", b"f"),
            ("Zm8=", b"fo"),
            ("Zm9v", b"foo"),
            ("Zm9vYg==", b"foob"),
            ("Zm9vYmE=", b"fooba"),
            ("Zm9vYmFy", b"foobar"),
            ("Zm9vYg", b"foob"),
            ("AP8=", b"\x00\xff"),
        ] {
            assert_eq!(decode_base64(text).unwrap(), plain, "{text}");
        }
        for bad in ["Z", "Zm9v!", "Zg=a", "Zg===", "=Zg="] {
            assert!(decode_base64(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn netmasks() {
        assert_eq!(ipv4_netmask(0), "0.0.0.0");
        assert_eq!(ipv4_netmask(8), "255.0.0.0");
        assert_eq!(ipv4_netmask(20), "255.255.240.0");
        assert_eq!(ipv4_netmask(32), "255.255.255.255");
        assert_eq!(ipv4_netmask(99), "255.255.255.255");
    }

    #[test]
    fn formats() {
        let info = AgentInfo {
            version: "7.2.0".into(),
            commands: vec![
                AgentCommand {
                    name: "guest-ping".into(),
                    enabled: true,
                    success_response: true,
                },
                AgentCommand {
                    name: "guest-info".into(),
                    enabled: true,
                    success_response: true,
                },
                AgentCommand {
                    name: "guest-shutdown".into(),
                    enabled: false,
                    success_response: false,
                },
            ],
        };
        assert_eq!(
            format_info(&info),
            "version: 7.2.0\nsupported_commands:\n\tenabled: guest-ping, guest-info\n\tdisabled: guest-shutdown\n"
        );
        let nifs = vec![
            NetworkInterface {
                name: "lo".into(),
                hardware_address: Some("00:00:00:00:00:00".into()),
                ip_addresses: vec![
                    IpAddress {
                        kind: "ipv4".into(),
                        address: "127.0.0.1".into(),
                        prefix: 8,
                    },
                    IpAddress {
                        kind: "ipv6".into(),
                        address: "::1".into(),
                        prefix: 128,
                    },
                ],
            },
            NetworkInterface {
                name: "eth0".into(),
                hardware_address: Some("52:54:00:12:34:56".into()),
                ip_addresses: vec![],
            },
            NetworkInterface {
                name: "tun0".into(),
                hardware_address: None,
                ip_addresses: vec![],
            },
        ];
        assert_eq!(
            format_ifconfig(&nifs),
            "lo:\n\tinet 127.0.0.1  netmask 255.0.0.0\n\tinet6 ::1  prefixlen 128\neth0:\n\tether 52:54:00:12:34:56\ntun0:\n"
        );
        // In the agent's order.
        let os = Ordered::parse(br#"{"version-id": "12", "id": "debian"}"#).unwrap();
        assert_eq!(format_osinfo(&os), "version-id: 12\nid: debian\n");
    }
}
