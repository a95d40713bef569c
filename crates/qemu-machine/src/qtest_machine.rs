//! [`QtestMachine`]: a QEMU launched with a qtest channel and a [`QtestClient`] on it
//! (Python: `qemu.machine.qtest.QEMUQtestMachine`).

use std::io;
use std::ops::Deref;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{debug, warn};

use crate::accel;
use crate::builder::MachineBuilder;
use crate::error::{LaunchCause, MachineError, Result, VmLaunchFailure};
use crate::machine::QemuMachine;
use crate::qtest::{QtestClient, DEFAULT_TIMEOUT};

/// The id of the qtest chardev (`-chardev socket,id=qtest,fd=N`); it cannot be used
/// for another [`MachineBuilder::chardev_fd`].
pub const QTEST_CHARDEV: &str = "qtest";

/// The accelerator a [`QtestMachine`] runs with
/// ([`QtestMachineBuilder::accel`], [`QtestMachine::accel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum QtestAccel {
    /// [`Qtest`](Self::Qtest) if the binary has the qtest accelerator, else
    /// [`TcgStopped`](Self::TcgStopped) (the default). The binary is asked once per
    /// process ([`QtestMachine::has_qtest_accel`]); if asking fails, `TcgStopped` is
    /// used and the launch itself tells whether the binary works.
    #[default]
    Auto,
    /// `-accel qtest`: no CPU runs at all, and the virtual clock only moves with
    /// [`QtestClient::clock_step`] and [`QtestClient::clock_set`]. What Python uses.
    /// A binary built without it fails the launch ("invalid accelerator qtest").
    Qtest,
    /// `-accel tcg -S`, for binaries without the qtest accelerator (Debian's QEMU 7.2
    /// and 10.0, for two): the CPUs stay stopped (QMP status `prelaunch`), so no firmware runs
    /// and only qtest touches the devices. Every qtest command works except the clock
    /// ones, which QEMU answers with `FAIL Unknown command 'clock_step'`
    /// ([`QtestError::Failed`](crate::qtest::QtestError::Failed)); the virtual clock
    /// does not run while the CPUs are stopped.
    TcgStopped,
    /// No accelerator arguments: pass your own through
    /// [`QtestMachineBuilder::machine`] (e.g. `b.args(["-accel", "kvm"])`).
    Manual,
}

impl QtestAccel {
    /// The arguments for this choice (`Auto` must be resolved first).
    fn args(self) -> &'static [&'static str] {
        match self {
            QtestAccel::Qtest => &["-accel", "qtest"],
            QtestAccel::TcgStopped => &["-accel", "tcg", "-S"],
            QtestAccel::Auto | QtestAccel::Manual => &[],
        }
    }
}

/// The qtest arguments that go before the user's: the chardev is added by
/// [`MachineBuilder::chardev_fd`].
fn qtest_args(accel: QtestAccel) -> Vec<String> {
    ["-qtest", "chardev:qtest", "-qtest-log", "/dev/null"]
        .iter()
        .chain(accel.args())
        .map(|s| (*s).to_owned())
        .collect()
}

/// What to launch; made by [`QtestMachine::builder`].
///
/// It wraps a [`MachineBuilder`], so every option of a plain machine is available
/// through [`machine`](Self::machine), and adds the qtest channel: a socketpair whose
/// end QEMU inherits as `-chardev socket,id=qtest,fd=N` (our copy of that end is
/// closed once QEMU started, as for the QMP socketpair), `-qtest chardev:qtest`,
/// `-qtest-log /dev/null`, and the accelerator ([`accel`](Self::accel)). These come
/// after the machine's own arguments and before the user's.
///
/// ```no_run
/// # async fn f() -> qemu_machine::Result<()> {
/// use std::time::Duration;
/// use qemu_machine::{MachineBuilder, QtestAccel, QtestMachine};
///
/// let vm = QtestMachine::builder("qemu-system-x86_64")
///     .machine(|b| b.machine_type("pc").console(true).args(["-m", "64"]))
///     .accel(QtestAccel::Auto)
///     .qtest_timeout(Duration::from_secs(5))
///     .launch()
///     .await?;
/// vm.shutdown().await?;
///
/// // Or start from an existing machine builder.
/// let b = MachineBuilder::new("qemu-system-x86_64").machine_type("q35");
/// let vm = QtestMachine::from_builder(b).launch().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until launched"]
pub struct QtestMachineBuilder {
    machine: MachineBuilder,
    accel: QtestAccel,
    qtest_timeout: Duration,
}

impl From<MachineBuilder> for QtestMachineBuilder {
    fn from(machine: MachineBuilder) -> Self {
        QtestMachineBuilder {
            machine,
            accel: QtestAccel::Auto,
            qtest_timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl QtestMachineBuilder {
    /// Settings to launch `binary` (a path, or a name looked up in `PATH`).
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        MachineBuilder::new(binary).into()
    }

    /// Change the machine's settings: `f` gets the wrapped [`MachineBuilder`] and
    /// returns it, e.g. `.machine(|b| b.machine_type("pc").console(true))`. May be
    /// called any number of times.
    pub fn machine(mut self, f: impl FnOnce(MachineBuilder) -> MachineBuilder) -> Self {
        self.machine = f(self.machine);
        self
    }

    /// The accelerator (default [`QtestAccel::Auto`]).
    pub fn accel(mut self, accel: QtestAccel) -> Self {
        self.accel = accel;
        self
    }

    /// The qtest client's timeout for each command (default
    /// [`qtest::DEFAULT_TIMEOUT`](crate::qtest::DEFAULT_TIMEOUT); see
    /// [`QtestClient::set_timeout`]).
    pub fn qtest_timeout(mut self, timeout: Duration) -> Self {
        self.qtest_timeout = timeout;
        self
    }

    /// Start QEMU with its qtest channel, as [`MachineBuilder::launch`] does (QMP up
    /// unless disabled), and attach a [`QtestClient`] to it.
    ///
    /// With [`QtestAccel::Auto`] the binary is first asked for its accelerators, once
    /// per binary and process. A QEMU that exits during startup fails the launch with
    /// [`MachineError::LaunchFailure`], exactly as for a plain machine; on every
    /// failure path QEMU is killed and reaped, and the socketpair and temporary
    /// directory are gone.
    ///
    /// QEMU sends nothing on the qtest channel before the first command, so when QMP
    /// is disabled ([`MachineBuilder::qmp`]`(false)`) nothing confirms that QEMU
    /// started: the first qtest command does (within the qtest timeout).
    pub async fn launch(self) -> Result<QtestMachine> {
        let accel = match self.accel {
            QtestAccel::Auto => match QtestMachine::has_qtest_accel(self.machine.binary()).await {
                Ok(true) => QtestAccel::Qtest,
                Ok(false) => QtestAccel::TcgStopped,
                Err(e) => {
                    if is_not_found(&e) {
                        debug!("cannot probe QEMU's accelerators: {e}");
                    } else {
                        warn!("cannot probe QEMU's accelerators, using TCG with -S: {e}");
                    }
                    QtestAccel::TcgStopped
                }
            },
            other => other,
        };
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| setup_failure("creating the qtest socketpair", e))?;
        let ours = ours
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(ours))
            .map_err(|e| setup_failure("registering the qtest socket", e))?;
        let machine = self
            .machine
            .chardev_fd(QTEST_CHARDEV, theirs)
            .prepend_args(qtest_args(accel))
            .launch()
            .await?;
        let qtest = QtestClient::new(ours);
        qtest.set_timeout(self.qtest_timeout);
        Ok(QtestMachine {
            machine,
            qtest,
            accel,
        })
    }
}

/// A running QEMU with a qtest channel (Python: `QEMUQtestMachine`), made by
/// [`QtestMachineBuilder::launch`].
///
/// It is a [`QemuMachine`] (it derefs to one, or see [`machine`](Self::machine)) with
/// a [`QtestClient`] attached ([`qtest`](Self::qtest)). Shutdown and drop are the
/// machine's: [`shutdown`](QemuMachine::shutdown) quits QEMU and cleans up, and
/// dropping kills QEMU, reaps it and removes its files. Once QEMU has exited, qtest
/// commands fail with [`QtestError::Closed`](crate::qtest::QtestError::Closed); our
/// end of the socketpair is closed when the `QtestMachine` is dropped.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use qemu_machine::{QtestAccel, QtestMachine};
///
/// let vm = QtestMachine::builder("qemu-system-x86_64")
///     .machine(|b| b.machine_type("pc").console(true))
///     .launch()
///     .await?;
/// let qtest = vm.qtest();
/// for &b in b"hi\n" {
///     qtest.outb(0x3f8, b).await?; // COM1
/// }
/// vm.wait_for_console_pattern("hi", Duration::from_secs(5)).await?;
/// qtest.writel(0x10_0000, 0xdead_beef).await?;
/// assert_eq!(qtest.readl(0x10_0000).await?, 0xdead_beef);
/// if vm.accel() == QtestAccel::Qtest {
///     let now = qtest.clock_step(1_000_000).await?;
///     println!("virtual clock at {now} ns");
/// }
/// println!("{}", vm.command("query-status", None).await?); // QMP works too
/// vm.shutdown().await?;
/// # Ok(()) }
/// ```
///
/// Qtest commands fail with [`QtestError`](crate::qtest::QtestError), machine and
/// QMP operations with [`MachineError`].
#[derive(Debug)]
pub struct QtestMachine {
    // Dropped first: QEMU is killed and reaped before the client's socket closes.
    machine: QemuMachine,
    qtest: QtestClient,
    accel: QtestAccel,
}

impl QtestMachine {
    /// Settings for launching `binary` with qtest (a path, or a name looked up in
    /// `PATH`).
    pub fn builder(binary: impl Into<PathBuf>) -> QtestMachineBuilder {
        QtestMachineBuilder::new(binary)
    }

    /// Settings for launching the machine `builder` describes, with qtest.
    pub fn from_builder(builder: MachineBuilder) -> QtestMachineBuilder {
        builder.into()
    }

    /// The machine (also reachable through `Deref`).
    pub fn machine(&self) -> &QemuMachine {
        &self.machine
    }

    /// The qtest client (Python: `qtest(cmd)` is `qtest().cmd(cmd)`). Do not rely on
    /// it after [`shutdown`](QemuMachine::shutdown): its commands then fail with
    /// [`QtestError::Closed`](crate::qtest::QtestError::Closed).
    pub fn qtest(&self) -> &QtestClient {
        &self.qtest
    }

    /// The accelerator QEMU runs with: [`QtestAccel::Qtest`],
    /// [`QtestAccel::TcgStopped`] or [`QtestAccel::Manual`], never `Auto`. The clock
    /// commands work only with `Qtest`.
    pub fn accel(&self) -> QtestAccel {
        self.accel
    }

    /// Whether `binary` has the qtest accelerator: runs `binary -accel help` (no
    /// wrapper; killed after 10 s) the first time it is asked about `binary` in this
    /// process and remembers the answer. Failures are not remembered. Concurrent
    /// calls for one binary run it once.
    pub async fn has_qtest_accel(binary: impl AsRef<Path>) -> Result<bool> {
        let list = accel::list_accel(binary).await?;
        Ok(list.iter().any(|a| a == "qtest"))
    }
}

impl Deref for QtestMachine {
    type Target = QemuMachine;

    fn deref(&self) -> &QemuMachine {
        &self.machine
    }
}

impl AsRef<QemuMachine> for QtestMachine {
    fn as_ref(&self) -> &QemuMachine {
        &self.machine
    }
}

/// A launch failure while preparing, before QEMU exists.
fn setup_failure(what: &str, source: io::Error) -> MachineError {
    MachineError::LaunchFailure(Box::new(VmLaunchFailure {
        exit_code: None,
        signal: None,
        command_line: Vec::new(),
        output: String::new(),
        cause: LaunchCause::Setup {
            what: what.to_owned(),
            source,
        },
    }))
}

fn is_not_found(e: &MachineError) -> bool {
    matches!(e, MachineError::Accel(a) if a.is_not_found())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qtest_arguments() {
        let join = |a: QtestAccel| qtest_args(a).join(" ");
        assert_eq!(
            join(QtestAccel::Qtest),
            "-qtest chardev:qtest -qtest-log /dev/null -accel qtest"
        );
        assert_eq!(
            join(QtestAccel::TcgStopped),
            "-qtest chardev:qtest -qtest-log /dev/null -accel tcg -S"
        );
        assert_eq!(
            join(QtestAccel::Manual),
            "-qtest chardev:qtest -qtest-log /dev/null"
        );
    }

    #[tokio::test]
    async fn probing_a_missing_binary_fails_and_is_not_cached() {
        let missing = "/nonexistent/qemu-system-none";
        for _ in 0..2 {
            let e = QtestMachine::has_qtest_accel(missing).await.unwrap_err();
            assert!(is_not_found(&e), "{e:?}");
        }
    }

    #[tokio::test]
    async fn a_failing_probe_reports_its_output() {
        // `false` exits 1 whatever its arguments.
        let Some(f) = ["/bin/false", "/usr/bin/false"]
            .into_iter()
            .find(|p| Path::new(p).exists())
        else {
            return;
        };
        let e = QtestMachine::has_qtest_accel(f).await.unwrap_err();
        assert!(e.to_string().contains("-accel help"), "{e}");
        assert!(e.to_string().contains("exit status: 1"), "{e}");
    }
}
