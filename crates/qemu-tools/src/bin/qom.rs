//! `qom`: query and change a running QEMU's object model over QMP, with the
//! subcommands and the output of QEMU's Python `qom` tool (`qom-get`, `qom-set`,
//! `qom-list`, `qom-tree`).

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use qemu_qmp::{Address, Client, Value};
use qemu_tools::exit;
use qemu_tools::qom::{self, Qom, QomError};

const SET_HELP: &str = "\
`set` converts the value to the property's type, as qom-list gives it:
  string, str          the text as it is (`set /machine.dt-compatible 42` sets the
                       string 42)
  bool                 true/false, on/off, yes/no (any case)
  int, int8..int64,    an integer in the type's range, decimal or 0x hexadecimal
  uint8..uint64, size
  double, number       a number
  link<TYPE>           the path of the object to link to (empty: no object)
  anything else        JSON if it starts with { or [ (structures), else the text
                       (enumeration values such as on/off/auto)
With --json the value is JSON, sent as it is, whatever the type.";

/// Query and manipulate QOM data.
#[derive(Debug, Parser)]
#[command(
    name = "qom",
    version,
    after_help = exit::after_help(SET_HELP, "")
)]
struct Cli {
    /// QMP socket path or address (host:port). May also be set via the QMP_SOCKET
    /// environment variable.
    #[arg(
        long,
        short = 's',
        env = "QMP_SOCKET",
        global = true,
        value_name = "SOCKET"
    )]
    socket: Option<String>,

    /// Seconds to wait for QEMU: to connect, and for each reply.
    #[arg(long, short = 't', global = true, default_value = "30", value_name = "SECONDS",
          value_parser = exit::parse_seconds)]
    timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set a QOM property value (converted to the property's type; see below).
    #[command(after_help = SET_HELP)]
    Set {
        /// Take the value as JSON and send it as it is.
        #[arg(long)]
        json: bool,
        /// QOM path and property, separated by a period '.'
        #[arg(value_name = "<path>.<property>", value_parser = parse_path_property)]
        path_prop: String,
        /// New QOM property value.
        #[arg(value_name = "<value>", allow_hyphen_values = true)]
        value: String,
    },
    /// Get a QOM property value.
    Get {
        /// QOM path and property, separated by a period '.'
        #[arg(value_name = "<path>.<property>", value_parser = parse_path_property)]
        path_prop: String,
    },
    /// List QOM properties at a given path: children as `name/`, links as `@name/`.
    List {
        /// QOM path.
        #[arg(value_name = "<path>", default_value = "/")]
        path: String,
    },
    /// Show QOM tree from a given path.
    Tree {
        /// QOM path.
        #[arg(value_name = "<path>", default_value = "/")]
        path: String,
    },
}

fn parse_path_property(s: &str) -> Result<String, String> {
    qom::split_path_property(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    exit::init_logging();
    let Some(socket) = cli.socket.as_deref().filter(|s| !s.is_empty()) else {
        exit::usage_error::<Cli>("No QMP socket path or address given (use --socket or QMP_SOCKET)")
    };
    let address = exit::parse_address::<Cli>(socket);
    // A --json value is checked before connecting: bad JSON is bad usage.
    let json = match &cli.command {
        Command::Set {
            json: true, value, ..
        } => Some(qom::json_value(value).unwrap_or_else(|e| exit::usage_error::<Cli>(e))),
        _ => None,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return exit::fail("qom: ", format!("cannot start the async runtime: {e}")),
    };
    match rt.block_on(run(address, cli.timeout, cli.command, json)) {
        Ok(()) => ExitCode::from(exit::SUCCESS),
        Err(e) if e.is_broken_pipe() => ExitCode::from(exit::SUCCESS),
        Err(e) => exit::fail("qom: ", e),
    }
}

async fn run(
    address: Address,
    timeout: Duration,
    command: Command,
    json: Option<Value>,
) -> Result<(), QomError> {
    // Values are shown with their members in the order QEMU wrote them.
    let client = Client::builder()
        .name("qom")
        .preserve_order(true)
        .connect_timeout(timeout)
        .command_timeout(timeout)
        .connect(address)
        .await?;
    let qom = Qom::new(client.clone());
    let result = run_command(&qom, command, json).await;
    let _ = client.disconnect().await;
    result
}

async fn run_command(qom: &Qom, command: Command, json: Option<Value>) -> Result<(), QomError> {
    let stdout = io::stdout();
    match command {
        Command::Set {
            path_prop, value, ..
        } => {
            let (path, prop) = qom::split_path_property(&path_prop)?;
            let rsp = match json {
                Some(v) => qom.set(path, prop, v).await?,
                None => qom.set_typed(path, prop, &value).await?,
            };
            // Python's tool prints the reply as it is: `{}`.
            writeln!(stdout.lock(), "{}", qom::python_str(&rsp))?;
        }
        Command::Get { path_prop } => {
            let (path, prop) = qom::split_path_property(&path_prop)?;
            let rsp = qom.get(path, prop).await?;
            stdout.lock().write_all(qom::format_get(&rsp).as_bytes())?;
        }
        Command::List { path } => {
            let items = qom.list(&path).await?;
            stdout
                .lock()
                .write_all(qom::format_list(&items).as_bytes())?;
        }
        Command::Tree { path } => {
            let mut out = io::BufWriter::new(stdout.lock());
            qom.tree(&path, &mut out).await?;
        }
    }
    stdout.lock().flush()?;
    Ok(())
}
