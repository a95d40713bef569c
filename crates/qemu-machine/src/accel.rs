//! Which accelerators a QEMU binary has, and whether KVM can be used here (Python:
//! `qemu.utils.accel`).
//!
//! [`list_accel`], [`kvm_available`] and [`tcg_available`] keep Python's names and
//! meaning; [`kvm_status`] adds what Python lacks, the reason KVM cannot be used
//! ([`KvmUnavailable`]), and [`best_accel`] the choice that
//! [`MachineBuilder::best_accel`](crate::MachineBuilder::best_accel) makes:
//!
//! ```no_run
//! # async fn f() -> Result<(), qemu_machine::accel::AccelError> {
//! use qemu_machine::accel;
//!
//! let qemu = std::path::Path::new("qemu-system-x86_64");
//! println!("{:?}", accel::list_accel(qemu).await?);          // ["tcg", "kvm"]
//! match accel::kvm_status(None, Some(qemu)).await {
//!     Ok(()) => println!("KVM usable"),
//!     Err(why) => println!("no KVM: {why}"),  // e.g. "/dev/kvm does not exist"
//! }
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! A binary is asked with `BINARY -accel help`, run (without a wrapper) by the same
//! no-orphan spawner as QEMU itself: its output is read while it runs, and if it
//! has not exited and closed its output within the timeout (10 s by default) its
//! process group is killed and the probe fails with [`AccelError::Timeout`]. The
//! output must start with QEMU's header (`Accelerators supported in QEMU binary:`),
//! so a program that is not a QEMU system emulator fails with
//! [`AccelError::NotQemu`] instead of passing for one without accelerators. The
//! answer is kept per binary path for the life of the process (QEMU takes ~20 ms to
//! answer, and test suites ask for every test); failures are not kept. Concurrent
//! calls for one binary run it once.
//!
//! KVM is usable when `/dev/kvm` can be opened for reading and writing (checked with
//! `access(2)`, as Python does), the target architecture is the host's (`uname -m`)
//! or one the host runs too (`i386` on `x86_64`, `armhf` on `aarch64`, `ppc64` on
//! `ppc64le`, Python's `ADDITIONAL_ARCHES`), and the binary lists `kvm`.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::OnceCell;
use tracing::debug;

use crate::builder::shell_quote;
use crate::process;

/// How long `BINARY -accel help` may take before it is killed ([`list_accel`]).
pub const ACCEL_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most output of `-accel help` that is read (it is a few dozen bytes).
const MAX_OUTPUT: u64 = 64 * 1024;

/// The first line QEMU prints for `-accel help` (every version since 4.2).
const HEADER: &str = "Accelerators supported in QEMU binary";

/// The KVM device.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// Target architectures a host of another architecture also runs under KVM
/// (Python's `ADDITIONAL_ARCHES`): `(host, target)`.
const ADDITIONAL_ARCHES: &[(&str, &str)] = &[
    ("x86_64", "i386"),
    ("aarch64", "armhf"),
    ("ppc64le", "ppc64"),
];

/// Why asking a binary for its accelerators failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccelError {
    /// The binary could not be started (it does not exist, is not executable, ...).
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The command line, for display.
        command: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// It did not finish within the timeout; it was killed.
    #[error("{command} did not finish within {timeout:?}; killed it")]
    Timeout {
        /// The command line, for display.
        command: String,
        /// The timeout.
        timeout: Duration,
    },
    /// It exited with a failure status.
    #[error("{command} failed ({status}); it printed: {output:?}")]
    Failed {
        /// The command line, for display.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stdout (trimmed).
        output: String,
    },
    /// It succeeded but did not print QEMU's list of accelerators: it is not a QEMU
    /// system emulator (`qemu-img`, a shell, a script, ...).
    #[error("{command} did not print QEMU's list of accelerators ('{HEADER}:'); is it a QEMU system emulator? It printed: {output:?}")]
    NotQemu {
        /// The command line, for display.
        command: String,
        /// What it printed on stdout (trimmed, at most 200 characters).
        output: String,
    },
}

impl AccelError {
    /// True when the binary does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, AccelError::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Why KVM cannot be used ([`kvm_status`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvmUnavailable {
    /// The KVM device does not exist: the kernel has no KVM module loaded, the CPU
    /// has no virtualization extensions, or a container does not pass it in.
    #[error("{} does not exist (no KVM kernel module, or not passed into this container)", .device.display())]
    NoDevice {
        /// The device path.
        device: PathBuf,
    },
    /// The KVM device exists but this user cannot open it for reading and writing
    /// (usually: not in the `kvm` group).
    #[error("{} is not readable and writable by this user (not in the kvm group?): {source}", .device.display())]
    NoPermission {
        /// The device path.
        device: PathBuf,
        /// `access(2)`'s error.
        #[source]
        source: io::Error,
    },
    /// Checking the KVM device failed otherwise.
    #[error("cannot check {}: {source}", .device.display())]
    Device {
        /// The device path.
        device: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The target architecture is not one KVM on this host runs.
    #[error("the target architecture {target} is not the host's ({host}): KVM runs only guests of the host's architecture")]
    ArchMismatch {
        /// The host's architecture (`uname -m`).
        host: String,
        /// The target asked for.
        target: String,
    },
    /// The binary was built without KVM (`-accel help` does not list it).
    #[error("{} was built without KVM (its accelerators: {})", .binary.display(), .accelerators.join(", "))]
    NotInBinary {
        /// The binary.
        binary: PathBuf,
        /// What it does list.
        accelerators: Vec<String>,
    },
    /// The binary could not be asked.
    #[error(transparent)]
    Probe(#[from] AccelError),
}

/// The accelerators `binary` supports, as `BINARY -accel help` lists them (Python:
/// `list_accel`): e.g. `["tcg", "kvm"]`. Asked once per binary path and process,
/// bounded by [`ACCEL_PROBE_TIMEOUT`]; see the [module documentation](self).
///
/// Unlike Python's, an empty binary path is an error (a spawn error), not an empty
/// list.
pub async fn list_accel(binary: impl AsRef<Path>) -> Result<Vec<String>, AccelError> {
    list_accel_timeout(binary, ACCEL_PROBE_TIMEOUT).await
}

/// [`list_accel`] with another timeout for the probe (a cached answer is returned
/// at once, whatever the timeout).
pub async fn list_accel_timeout(
    binary: impl AsRef<Path>,
    timeout: Duration,
) -> Result<Vec<String>, AccelError> {
    type Cache = Mutex<HashMap<PathBuf, Arc<OnceCell<Vec<String>>>>>;
    static CACHE: LazyLock<Cache> = LazyLock::new(Mutex::default);
    let binary = binary.as_ref();
    let cell = CACHE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(binary.to_owned())
        .or_default()
        .clone();
    cell.get_or_try_init(|| probe(binary, timeout))
        .await
        .cloned()
}

/// Whether `binary` has the TCG accelerator (Python: `tcg_available`).
pub async fn tcg_available(binary: impl AsRef<Path>) -> Result<bool, AccelError> {
    Ok(list_accel(binary).await?.iter().any(|a| a == "tcg"))
}

/// Whether KVM can be used (Python: `kvm_available`): `/dev/kvm` is readable and
/// writable, `target_arch` (if given) runs on this host, and `binary` (if given)
/// has KVM. An error only when `binary` could not be asked; [`kvm_status`] says
/// why KVM is unusable.
pub async fn kvm_available(
    target_arch: Option<&str>,
    binary: Option<&Path>,
) -> Result<bool, AccelError> {
    match kvm_status(target_arch, binary).await {
        Ok(()) => Ok(true),
        Err(KvmUnavailable::Probe(e)) => Err(e),
        Err(_) => Ok(false),
    }
}

/// `Ok` when KVM can be used for `target_arch` (a QEMU target name such as
/// `x86_64`; `None`: not checked) with `binary` (`None`: not checked), else why not.
/// The checks go in this order: the device, the architecture, the binary.
pub async fn kvm_status(
    target_arch: Option<&str>,
    binary: Option<&Path>,
) -> Result<(), KvmUnavailable> {
    check_device(Path::new(KVM_DEVICE))?;
    if let Some(target) = target_arch {
        check_arch(&host_arch(), target)?;
    }
    if let Some(binary) = binary {
        let accelerators = list_accel(binary).await?;
        if !accelerators.iter().any(|a| a == "kvm") {
            return Err(KvmUnavailable::NotInBinary {
                binary: binary.to_owned(),
                accelerators,
            });
        }
    }
    Ok(())
}

/// The target architecture of a system emulator, from its file name
/// (`qemu-system-x86_64` → `x86_64`); `None` for any other name.
///
/// ```
/// use qemu_machine::accel::target_arch_of;
/// assert_eq!(target_arch_of("/usr/bin/qemu-system-aarch64".as_ref()).as_deref(), Some("aarch64"));
/// assert_eq!(target_arch_of("qemu-kvm".as_ref()), None);
/// ```
pub fn target_arch_of(binary: &Path) -> Option<String> {
    let name = binary.file_name()?.to_str()?;
    let arch = name.strip_prefix("qemu-system-")?;
    (!arch.is_empty()).then(|| arch.to_owned())
}

/// The host's architecture, as `uname -m` prints it.
pub fn host_arch() -> String {
    rustix::system::uname()
        .machine()
        .to_string_lossy()
        .into_owned()
}

/// The accelerator [`best_accel`] chose, and why not KVM when it is not KVM.
#[derive(Debug)]
pub struct AccelChoice {
    /// `kvm` or `tcg`.
    pub name: &'static str,
    /// Why KVM was not chosen (`None` when it was).
    pub kvm_unavailable: Option<KvmUnavailable>,
}

/// What [`best_accel`] found: neither KVM nor TCG can be used.
#[derive(Debug, thiserror::Error)]
#[error("no usable accelerator: KVM: {kvm}; TCG: {tcg}")]
pub struct NoAccel {
    /// Why not KVM.
    pub kvm: KvmUnavailable,
    /// Why not TCG.
    pub tcg: String,
}

/// The best accelerator for `binary`: `kvm` when [`kvm_status`] allows it (the
/// target architecture taken from the binary's name, see [`target_arch_of`];
/// unchecked if the name does not say), else `tcg` if the binary has it.
pub async fn best_accel(binary: &Path) -> Result<AccelChoice, NoAccel> {
    let target = target_arch_of(binary);
    let why = match kvm_status(target.as_deref(), Some(binary)).await {
        Ok(()) => {
            return Ok(AccelChoice {
                name: "kvm",
                kvm_unavailable: None,
            })
        }
        Err(why) => why,
    };
    debug!("{}: not using KVM: {why}", binary.display());
    let tcg = match &why {
        // The binary could not be asked: no use asking again.
        KvmUnavailable::Probe(e) => Err(e.to_string()),
        _ => match list_accel(binary).await {
            Ok(list) if list.iter().any(|a| a == "tcg") => Ok(()),
            Ok(list) => Err(format!(
                "{} was built without TCG (its accelerators: {})",
                binary.display(),
                list.join(", ")
            )),
            Err(e) => Err(e.to_string()),
        },
    };
    match tcg {
        Ok(()) => Ok(AccelChoice {
            name: "tcg",
            kvm_unavailable: Some(why),
        }),
        Err(tcg) => Err(NoAccel { kvm: why, tcg }),
    }
}

fn check_device(device: &Path) -> Result<(), KvmUnavailable> {
    use rustix::fs::{access, Access};
    match access(device, Access::READ_OK | Access::WRITE_OK) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOENT) => Err(KvmUnavailable::NoDevice {
            device: device.to_owned(),
        }),
        Err(
            e @ (rustix::io::Errno::ACCESS | rustix::io::Errno::PERM | rustix::io::Errno::ROFS),
        ) => Err(KvmUnavailable::NoPermission {
            device: device.to_owned(),
            source: e.into(),
        }),
        Err(e) => Err(KvmUnavailable::Device {
            device: device.to_owned(),
            source: e.into(),
        }),
    }
}

fn check_arch(host: &str, target: &str) -> Result<(), KvmUnavailable> {
    let runs = target == host
        || ADDITIONAL_ARCHES
            .iter()
            .any(|&(h, t)| h == host && t == target);
    if runs {
        Ok(())
    } else {
        Err(KvmUnavailable::ArchMismatch {
            host: host.to_owned(),
            target: target.to_owned(),
        })
    }
}

/// Run `binary -accel help` and parse its list.
async fn probe(binary: &Path, timeout: Duration) -> Result<Vec<String>, AccelError> {
    let command = format!("{} -accel help", shell_quote(&binary.to_string_lossy()));
    let spawn_err = |source: io::Error| AccelError::Spawn {
        command: command.clone(),
        source,
    };
    // Close-on-exec in the parent; the child gets the write end as its stdout.
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| spawn_err(e.into()))?;
    let mut read = tokio::net::unix::pipe::Receiver::from_owned_fd(read).map_err(spawn_err)?;
    let mut cmd = Command::new(binary);
    cmd.args(["-accel", "help"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::null());
    let child = process::spawn(
        cmd,
        Vec::new(),
        "accel-probe".to_owned(),
        command.clone(),
        false,
    )
    .await
    .map_err(spawn_err)?;
    let output = async {
        let mut out = Vec::new();
        // Read errors end the output; the exit status tells the rest.
        let _ = (&mut read).take(MAX_OUTPUT).read_to_end(&mut out).await;
        out
    };
    // Both the exit and the end of the output (a child of the binary may hold it);
    // on timeout, dropping `child` kills its process group and reaps it.
    let Ok((output, status)) =
        tokio::time::timeout(timeout, async { tokio::join!(output, child.wait()) }).await
    else {
        return Err(AccelError::Timeout { command, timeout });
    };
    let output = String::from_utf8_lossy(&output).into_owned();
    if !status.success() {
        return Err(AccelError::Failed {
            command,
            status,
            output: output.trim().to_owned(),
        });
    }
    match parse_accel_help(&output) {
        Some(list) => {
            debug!("{command}: {}", list.join(", "));
            Ok(list)
        }
        None => Err(AccelError::NotQemu {
            command,
            output: output.trim().chars().take(200).collect(),
        }),
    }
}

/// The accelerators in `-accel help` output: the lines after QEMU's header,
/// trimmed; `None` without the header.
fn parse_accel_help(output: &str) -> Option<Vec<String>> {
    let mut lines = output.lines();
    if !lines.next()?.trim_start().starts_with(HEADER) {
        return None;
    }
    Some(
        lines
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accel_help_parsing() {
        let debian = "Accelerators supported in QEMU binary:\ntcg\nkvm\n";
        assert_eq!(parse_accel_help(debian).unwrap(), ["tcg", "kvm"]);
        let upstream = "Accelerators supported in QEMU binary:\ntcg\nkvm\nqtest\nxen\n";
        assert_eq!(
            parse_accel_help(upstream).unwrap(),
            ["tcg", "kvm", "qtest", "xen"]
        );
        assert_eq!(
            parse_accel_help("Accelerators supported in QEMU binary:\n").unwrap(),
            Vec::<String>::new()
        );
        assert!(parse_accel_help("").is_none());
        assert!(parse_accel_help("-accel help\n").is_none());
        assert!(parse_accel_help("tcg\nkvm\n").is_none());
    }

    #[test]
    fn architectures() {
        assert!(check_arch("x86_64", "x86_64").is_ok());
        assert!(check_arch("x86_64", "i386").is_ok());
        assert!(check_arch("aarch64", "armhf").is_ok());
        assert!(check_arch("ppc64le", "ppc64").is_ok());
        let e = check_arch("x86_64", "aarch64").unwrap_err();
        assert!(
            matches!(&e, KvmUnavailable::ArchMismatch { host, target } if host == "x86_64" && target == "aarch64"),
            "{e:?}"
        );
        assert!(e.to_string().contains("aarch64"), "{e}");
        assert!(check_arch("i386", "x86_64").is_err());
        assert_eq!(target_arch_of(Path::new("qemu-system-")), None);
        assert_eq!(
            target_arch_of(Path::new("qemu-system-i386")).unwrap(),
            "i386"
        );
    }

    #[test]
    fn device_checks() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("kvm");
        let e = check_device(&missing).unwrap_err();
        assert!(matches!(e, KvmUnavailable::NoDevice { .. }), "{e:?}");
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[tokio::test]
    async fn a_missing_binary_fails_and_is_not_cached() {
        let missing = "/nonexistent/qemu-system-none";
        for _ in 0..2 {
            let e = list_accel(missing).await.unwrap_err();
            assert!(e.is_not_found(), "{e:?}");
        }
    }
}
