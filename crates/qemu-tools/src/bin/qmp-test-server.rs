//! `qmp-test-server`: a scriptable QMP server with fault injection, for testing QMP
//! clients written in any language. See the crate README and
//! [`qemu_tools::test_server`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Parser};
use qemu_qmp::VersionInfo;
use qemu_tools::exit;
use qemu_tools::shell::cli::init_logging;
use qemu_tools::test_server::{self, Config, FaultRule, Listen, LogTarget, Script};

const AFTER_HELP: &str = r#"Built-in commands (as QEMU answers them): qmp_capabilities, query-version,
query-status, query-commands, stop, cont (emit STOP/RESUME), quit (emits SHUTDOWN and
closes the connection), getfd, closefd, echo (returns its arguments). Anything else
is answered with CommandNotFound, unless the script answers it. With --no-greeting,
also guest-sync-delimited (0xFF + reply, as qemu-ga), guest-sync and guest-ping.

FAULT (for --fault CMD=FAULT[,times=N], and "fault" in a script):
  delay:DURATION      send the reply late (500ms, 2s; bare numbers are ms);
                      other replies overtake it
  garbage[:TEXT]      send TEXT and CRLF (default: "this is not JSON") instead
  close-mid-message   send half the reply, then close the connection
  oversized:BYTES     reply {"return": {"data": "xxx..."}} of about BYTES bytes
  unknown-id          reply with an id nobody sent
  no-id               reply without the id
  flood:N             send N events {"event": "FLOOD", "data": {"seq": i}} first
  disconnect          close the connection instead of replying
  hang                never reply
CMD is a command name, or * for any command except qmp_capabilities, guest-sync
and guest-sync-delimited. Without ",times=N" every matching command gets the fault;
with it, the first N (counted over all connections). The command still runs (stop
still stops). Faults are tried in the order given, before the script's.

SCRIPT (--script FILE): JSON Lines, one object a line; blank lines and lines
starting with # are skipped; the first line that matches a command answers it.
  {"on": "query-name", "reply": {"return": {"name": "vm1"}}}
  {"on": "device_add", "args": {"id": "bad"},
      "reply": {"error": {"class": "GenericError", "desc": "Duplicate ID"}}}
  {"on": "stop", "reply": {"return": {}}, "events": [{"event": "STOP", "data": {}}]}
  {"on": "slow", "fault": {"delay_ms": 500}}
  {"on": "once", "reply": {"return": 1}, "times": 1}
  {"on": "*", "fault": "close-mid-message", "times": 1}
  {"every_ms": 1000, "event": {"event": "TICK", "data": {}}}
(the device_add line is on one line in a real script)
  on       the command name (* for fault-only lines; a line with only a fault
           may leave it out)
  args     match only requests whose arguments contain these (objects compared
           member by member, recursively; other values must be equal)
  reply    {"return": VALUE} or {"error": {"class": ..., "desc": ...}};
           default {"return": {}}
  events   events sent after the reply (before it if a fault delays or withholds
           the reply; not at all if the fault closes the connection)
  fault    a FAULT as above ("hang", "delay:500ms"), or {"delay_ms": N},
           {"oversized": N}, {"flood": N}, {"garbage": "TEXT"} (TEXT as is)
  times    answer only this many matching requests, then let later lines match
  every_ms with event: send the event every N ms while a client is connected
A command the script names but no line matches (wrong arguments, used up) gets a
GenericError saying so: end with a line without "args" to avoid that.

OUTPUT: the first line on standard output is "listening on ADDRESS" (the socket
path, or the bound HOST:PORT, useful with port 0). Each request received is logged
as one JSON line on standard error (or --log FILE). Clients are served one after
another until SIGINT or SIGTERM, which exit 0 and remove the socket file. As in
QEMU, events (timer and script events) go only to a client that has negotiated;
those emitted while none has are dropped.

EXAMPLES:
  qmp-test-server --socket /tmp/qmp.sock
  qmp-test-server --tcp 127.0.0.1:0 --script replies.jsonl -q
  qmp-test-server --socket /tmp/qmp.sock --fault 'query-status=delay:500ms' \
      --fault '*=disconnect,times=1'
  qmp-test-server --socket /tmp/qga.sock --no-greeting --script agent.jsonl
  qmp-test-server --socket /tmp/qmp.sock --version-string 8.2.1 --no-oob

  # in a shell script: start it, read the address, test, stop it
  coproc SERVER { qmp-test-server --tcp 127.0.0.1:0 -q; }
  read -r _ _ ADDR <&"${SERVER[0]}"     # "listening on 127.0.0.1:45678"
  my-client "$ADDR"; kill "$SERVER_PID""#;

/// This tool's exit statuses, besides the convention.
const EXIT_HELP: &str = "\
The server exits 0 when stopped by SIGINT or SIGTERM; 1 when it cannot listen,
or the script cannot be read or is wrong; 2 for a malformed --fault, --tcp or
--version-string.";

/// A QMP server for testing QMP clients: QEMU's greeting, negotiation and errors,
/// canned replies and events from a script, and injected faults.
#[derive(Debug, Parser)]
#[command(
    name = "qmp-test-server",
    version,
    after_help = exit::after_help(AFTER_HELP, EXIT_HELP),
    group(ArgGroup::new("listen").required(true).args(["socket", "tcp"])),
)]
struct Cli {
    /// Listen on a Unix socket at PATH (which must not exist; removed on exit)
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Listen on TCP HOST:PORT (port 0: a free port, printed on the first line)
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_tcp)]
    tcp: Option<String>,

    /// Canned replies, events, faults and timer events, as JSON Lines (see below)
    #[arg(long, value_name = "FILE")]
    script: Option<PathBuf>,

    /// Apply FAULT to the replies to CMD (* for any); repeatable (see below)
    #[arg(long = "fault", value_name = "CMD=FAULT[,times=N]")]
    faults: Vec<FaultRule>,

    /// The QEMU version in the greeting and query-version
    #[arg(long, value_name = "MAJOR.MINOR.MICRO", default_value = "9.2.0",
          value_parser = test_server::parse_version)]
    version_string: qemu_qmp::message::VersionTriple,

    /// The package string in the greeting and query-version
    #[arg(long, value_name = "STR", default_value = "qmp-test-server")]
    package: String,

    /// The capabilities offered in the greeting, comma-separated ("" for none)
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "oob"
    )]
    capabilities: Vec<String>,

    /// Do not offer the oob capability
    #[arg(long)]
    no_oob: bool,

    /// Guest-agent style: no greeting and no negotiation
    #[arg(long)]
    no_greeting: bool,

    /// Log the requests received to FILE instead of standard error
    #[arg(long, value_name = "FILE", conflicts_with = "quiet")]
    log: Option<PathBuf>,

    /// Do not log the requests received
    #[arg(short, long)]
    quiet: bool,

    /// Also log what the server does (connections, faults) on standard error; or set
    /// RUST_LOG
    #[arg(short, long)]
    verbose: bool,
}

/// `--tcp`: HOST:PORT with a numeric port (a usage error otherwise, not a failure to
/// listen).
fn parse_tcp(text: &str) -> Result<String, String> {
    match text.parse::<qemu_qmp::Address>() {
        Ok(a @ qemu_qmp::Address::Tcp { .. }) => Ok(a.to_string()),
        Ok(_) => Err(format!("'{text}' is not HOST:PORT")),
        Err(e) => Err(e.to_string()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.verbose && std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "debug");
    }
    init_logging();
    let script = match &cli.script {
        None => Script::default(),
        Some(path) => match Script::load(path) {
            Ok(s) => s,
            Err(e) => return fail(&e),
        },
    };
    let listen = match (cli.socket, cli.tcp) {
        (Some(path), _) => Listen::Unix(path),
        (None, Some(addr)) => Listen::Tcp(addr),
        // clap requires one of them.
        (None, None) => return ExitCode::from(exit::USAGE),
    };
    let mut capabilities: Vec<String> = cli
        .capabilities
        .into_iter()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .collect();
    if cli.no_oob {
        capabilities.retain(|c| c != "oob");
    }
    let config = Config {
        listen,
        version: VersionInfo {
            qemu: cli.version_string,
            package: cli.package,
        },
        capabilities,
        greeting: !cli.no_greeting,
        script,
        faults: cli.faults,
        log: match (cli.quiet, cli.log) {
            (true, _) => LogTarget::Off,
            (false, Some(path)) => LogTarget::File(path),
            (false, None) => LogTarget::Stderr,
        },
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return exit::fail(
                "qmp-test-server: ",
                format!("cannot start the async runtime: {e}"),
            )
        }
    };
    let result = rt.block_on(test_server::run(config));
    // Do not wait for a connection task stuck in a blocking call.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &test_server::ServerError) -> ExitCode {
    exit::fail_with("qmp-test-server: ", e)
}
