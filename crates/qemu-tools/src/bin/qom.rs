//! `qom`: query and change a running QEMU's object model over QMP, with the
//! subcommands and the output of QEMU's Python `qom` tool (`qom-get`, `qom-set`,
//! `qom-list`, `qom-tree`).

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use qemu_qmp::Client;
use qemu_tools::qom::{self, Qom, QomError};

/// Query and manipulate QOM data.
#[derive(Debug, Parser)]
#[command(
    name = "qom",
    version,
    after_help = "Values given to `set` are typed: true/false are booleans, numbers are numbers, \
other JSON ({...}, [...], null, \"quoted\") is JSON, anything else is a string.\n\
Exit status: 0 on success, 1 on failure, 2 for bad usage."
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
          value_parser = parse_seconds)]
    timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set a QOM property value.
    Set {
        /// QOM path and property, separated by a period '.'
        #[arg(value_name = "<path>.<property>")]
        path_prop: String,
        /// New QOM property value.
        #[arg(value_name = "<value>", allow_hyphen_values = true)]
        value: String,
    },
    /// Get a QOM property value.
    Get {
        /// QOM path and property, separated by a period '.'
        #[arg(value_name = "<path>.<property>")]
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

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err(format!("'{s}': the timeout must be more than 0"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}': too long"))
}

fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(io::stderr)
            .try_init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let Some(socket) = cli.socket.clone() else {
        eprintln!("qom: No QMP socket path or address given (use --socket or QMP_SOCKET)");
        return ExitCode::FAILURE;
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qom: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&socket, cli.timeout, cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qom: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(socket: &str, timeout: Duration, command: Command) -> Result<(), QomError> {
    // Check the arguments before connecting.
    if let Command::Set { path_prop, .. } | Command::Get { path_prop } = &command {
        qom::split_path_property(path_prop)?;
    }
    let client = Client::builder()
        .name("qom")
        .connect_timeout(timeout)
        .command_timeout(timeout)
        .connect(socket)
        .await?;
    let qom = Qom::new(client.clone());
    let result = run_command(&qom, command).await;
    let _ = client.disconnect().await;
    result
}

async fn run_command(qom: &Qom, command: Command) -> Result<(), QomError> {
    let stdout = io::stdout();
    match command {
        Command::Set { path_prop, value } => {
            let (path, prop) = qom::split_path_property(&path_prop)?;
            let rsp = qom.set(path, prop, qom::parse_value(&value)).await?;
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
