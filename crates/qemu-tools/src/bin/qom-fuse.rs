//! `qom-fuse`: mount a running QEMU's object model as a file system (Python:
//! `qom-fuse`). See the `qom_fuse` module of this crate for the layout and the
//! errors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use qemu_qmp::{Address, Client};
use qemu_tools::exit;
use qemu_tools::qom::Qom;
use qemu_tools::qom_fuse::{self, Options};
use tokio::signal::unix::{signal, Signal, SignalKind};

const INTRO: &str = "\
Objects are directories, child<> properties subdirectories, link<> properties
symbolic links to the object they point to, other properties files holding the
value (as `qom get` prints it). With --writable, writing a file sets the property,
the text converted to its type as `qom set` does (`echo off > .../prop`).

Errors: ENOENT an object or property that is gone, EACCES a property QEMU will not
write or read, EINVAL a value that does not fit, ETIMEDOUT QEMU did not answer
within --timeout, EIO anything else (e.g. QEMU went away), EROFS a write without
--writable.

It runs in the foreground until Ctrl-C, SIGTERM or SIGHUP (exit status 0), an
unmount from outside (0), or QEMU going away (1); it unmounts in every case,
lazily when the mount is busy.";

/// Mount a QEMU's QOM tree as a file system.
#[derive(Debug, Parser)]
#[command(
    name = "qom-fuse",
    version,
    after_help = exit::after_help(INTRO, "")
)]
struct Cli {
    /// QMP socket path or address (host:port). May also be set via the QMP_SOCKET
    /// environment variable.
    #[arg(long, short = 's', env = "QMP_SOCKET", value_name = "SOCKET")]
    socket: Option<String>,

    /// Seconds to wait for QEMU: to connect, and for each reply (a request that
    /// QEMU does not answer in time fails with ETIMEDOUT).
    #[arg(long, short = 't', default_value = "10", value_name = "SECONDS",
          value_parser = exit::parse_seconds)]
    timeout: Duration,

    /// Seconds a directory listing is reused (0: ask QEMU every time).
    #[arg(long, default_value = "1", value_name = "SECONDS", value_parser = parse_cache)]
    cache: Duration,

    /// Let writes to property files set the properties (default: read-only).
    #[arg(long, short = 'w')]
    writable: bool,

    /// Mount point: an existing directory.
    #[arg(value_name = "MOUNT")]
    mount: PathBuf,
}

fn parse_cache(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    exit::parse_seconds(s)
}

/// How the mount ended.
enum End {
    /// Asked to stop (a signal) or unmounted from outside.
    Stopped,
    /// QEMU went away.
    QemuGone(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    exit::init_logging();
    let Some(socket) = cli.socket.as_deref().filter(|s| !s.is_empty()) else {
        exit::usage_error::<Cli>("No QMP socket path or address given (use --socket or QMP_SOCKET)")
    };
    let address = exit::parse_address::<Cli>(socket);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return exit::fail("qom-fuse: ", format!("cannot start the async runtime: {e}")),
    };
    match rt.block_on(run(address, &cli)) {
        Ok(End::Stopped) => ExitCode::from(exit::SUCCESS),
        Ok(End::QemuGone(why)) => exit::fail("qom-fuse: ", why),
        Err(e) => exit::fail_with("qom-fuse: ", e.as_ref()),
    }
}

/// SIGINT, SIGTERM and SIGHUP, handled from before the mount.
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn any(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

async fn run(address: Address, cli: &Cli) -> Result<End, Box<dyn std::error::Error>> {
    let mut signals = Signals::new()?;
    let client = Client::builder()
        .name("qom-fuse")
        .preserve_order(true)
        .connect_timeout(cli.timeout)
        .command_timeout(cli.timeout)
        .connect(address)
        .await?;
    eprintln!("Mounting QOMFS to '{}'", cli.mount.display());
    let options = Options::default()
        .writable(cli.writable)
        .cache_ttl(cli.cache);
    let mut mounted = qom_fuse::mount(
        Qom::new(client.clone()),
        Path::new(&cli.mount),
        options,
        tokio::runtime::Handle::current(),
    )?;
    let end = tokio::select! {
        () = signals.any() => End::Stopped,
        () = mounted.ended() => End::Stopped,
        cause = client.wait_disconnected() => End::QemuGone(match cause {
            Some(e) => format!("the QMP connection ended ({}); unmounted {}", exit::one_line(&e), cli.mount.display()),
            None => format!("the QMP connection ended; unmounted {}", cli.mount.display()),
        }),
    };
    mounted.unmount().await?;
    let _ = client.disconnect().await;
    Ok(end)
}
