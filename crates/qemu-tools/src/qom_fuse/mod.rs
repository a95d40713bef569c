//! A running QEMU's object model (QOM) as a file system: the library behind the
//! `qom-fuse` tool (Python: `qom-fuse`, `qemu.utils.qom_fuse`).
//!
//! Objects are directories, their `child<>` properties subdirectories, `link<>`
//! properties symbolic links to the object they point to (relative, so they resolve
//! inside the mount), and every other property a file whose content is the value
//! as `qom get` prints it (Python's `str()`, then a newline). With
//! [`Options::writable`], writing a file sets the property with `qom-set`, the text
//! converted to the property's type as `qom set` does ([`crate::qom::typed_value`]).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use qemu_tools::qom::Qom;
//! use qemu_tools::qom_fuse::{self, Options};
//!
//! let qmp = qemu_qmp::Client::connect("/run/vm1/qmp.sock").await?;
//! let mounted = qom_fuse::mount(
//!     Qom::new(qmp),
//!     "/mnt/qom".as_ref(),
//!     Options::default(),
//!     tokio::runtime::Handle::current(),
//! )?;
//! // File operations block: not on a runtime thread, which may be the one
//! // that has to answer them.
//! let machine_type =
//!     tokio::task::spawn_blocking(|| std::fs::read_to_string("/mnt/qom/machine/type"))
//!         .await??;
//! mounted.unmount().await?;
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! [`fuser`] runs the FUSE session on a thread of its own, with its own mount (the
//! `mount(2)` system call, which root may make without `fusermount`). Each request
//! that needs QEMU is answered from a task on the tokio runtime, so the FUSE thread
//! never waits for QEMU, and each QMP command has the client's command timeout: a
//! QEMU that does not answer fails that request with `ETIMEDOUT`, it does not hang
//! the file system. Listings (`qom-list`) are kept for [`Options::cache_ttl`]
//! (1 s by default): a `find` or `ls -l` looks every entry up, which would
//! otherwise be one `qom-list` of the parent per entry. The kernel keeps entries and
//! attributes for the same time. A read at offset 0 asks QEMU for the value (one
//! `qom-get`), later reads of the same open file continue in that value; files are
//! opened with direct I/O, so no stale value sits in the page cache.
//!
//! Errors are errno values that say what happened (see the table in `errno.rs`):
//! `ENOENT` for an object or property that is gone, `EACCES` for a property QEMU
//! will not write (or read), `EINVAL` for a value that does not fit (ours or
//! QEMU's refusal), `ETIMEDOUT` for a QEMU that did not answer in time, `EIO` for
//! the rest (a lost connection, a property whose getter fails such as a CPU's
//! `crash-information`), `EROFS` for a write to a read-only mount.
//!
//! [`Mounted::unmount`] unmounts with `umount(2)`, and lazily (`MNT_DETACH`) when
//! the mount is busy (a shell's working directory inside it), so the mount point is
//! free at once either way; dropping a [`Mounted`] does the same. A watchdog (a
//! `/bin/sh` reading a pipe whose write end only this process holds, started
//! before the mount) unmounts it if this process dies without unmounting
//! (SIGKILL): on end-of-file, unless told first that the unmount was done, it runs
//! `umount -l` if the mount table has this mount (its source, `qom-fuse:PID-N`,
//! names it alone).

mod errno;
mod fs;
mod inodes;

use std::io::{self, Write as _};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fuser::{Config, MountOption, Session, SessionUnmounter};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::qom::Qom;

/// The default for [`Options::cache_ttl`].
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(1);

/// How long [`Mounted::unmount`] waits for the FUSE session to end after the
/// unmount (it ends at once unless the mount was busy and detached).
const SESSION_END_TIMEOUT: Duration = Duration::from_secs(1);

/// How the tree is mounted.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Files of properties can be written, which sets the property (default false:
    /// a read-only mount, where writes fail with `EROFS`).
    pub writable: bool,
    /// How long a listing (`qom-list`) is reused, and how long the kernel keeps
    /// entries and attributes (default [`DEFAULT_CACHE_TTL`]; zero: ask QEMU every
    /// time).
    pub cache_ttl: Duration,
    /// The source shown in the mount table, followed by `:PID-N` (default
    /// `qom-fuse`). It must not contain white space.
    pub fs_name: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            writable: false,
            cache_ttl: DEFAULT_CACHE_TTL,
            fs_name: "qom-fuse".to_owned(),
        }
    }
}

impl Options {
    /// [`writable`](Self::writable).
    pub fn writable(mut self, yes: bool) -> Self {
        self.writable = yes;
        self
    }

    /// [`cache_ttl`](Self::cache_ttl).
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// [`fs_name`](Self::fs_name).
    pub fn fs_name(mut self, name: impl Into<String>) -> Self {
        self.fs_name = name.into();
        self
    }
}

/// Why mounting or unmounting failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FuseError {
    /// The mount point is a FUSE mount whose program died without unmounting it.
    #[error("{} is a stale FUSE mount (its program died); unmount it first: umount -l {}", .0.display(), .0.display())]
    Stale(PathBuf),
    /// Mounting failed (no such directory, no permission, no `/dev/fuse`, ...).
    #[error("cannot mount on {}: {source}", .mountpoint.display())]
    Mount {
        /// The mount point.
        mountpoint: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Unmounting failed.
    #[error("cannot unmount {}: {source}", .mountpoint.display())]
    Unmount {
        /// The mount point.
        mountpoint: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A mounted tree; unmounted by [`unmount`](Self::unmount) or when dropped.
#[derive(Debug)]
pub struct Mounted {
    mountpoint: PathBuf,
    unmounter: SessionUnmounter,
    ended: Option<oneshot::Receiver<io::Result<()>>>,
    watchdog: Option<Watchdog>,
    unmounted: bool,
}

/// Mount the QOM tree of the QEMU `qom` talks to on `mountpoint` (an existing
/// directory). Requests are answered by tasks on `rt`, so the mount must not be
/// used from a thread that `rt` needs to run them (a current-thread runtime's own
/// thread would wait for itself). The client's command timeout bounds every request
/// (see the [module documentation](self)).
pub fn mount(
    qom: Qom,
    mountpoint: &Path,
    options: Options,
    rt: Handle,
) -> Result<Mounted, FuseError> {
    let mount_err = |source: io::Error| FuseError::Mount {
        mountpoint: mountpoint.to_owned(),
        source,
    };
    match std::fs::metadata(mountpoint) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTCONN.raw_os_error()) => {
            return Err(FuseError::Stale(mountpoint.to_owned()))
        }
        Err(e) => return Err(mount_err(e)),
        Ok(m) if !m.is_dir() => {
            return Err(mount_err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            )))
        }
        Ok(_) => {}
    }
    if options.fs_name.is_empty() || options.fs_name.contains(char::is_whitespace) {
        return Err(mount_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the file system name {:?} is empty or has white space",
                options.fs_name
            ),
        )));
    }
    let canonical = mountpoint.canonicalize().map_err(mount_err)?;
    // The mount's source names this mount alone, so that the watchdog can tell it
    // from whatever else may be mounted there.
    static MOUNTS: AtomicU64 = AtomicU64::new(0);
    let source = format!(
        "{}:{}-{}",
        options.fs_name,
        std::process::id(),
        MOUNTS.fetch_add(1, Ordering::Relaxed)
    );
    let mut mount_options = vec![
        MountOption::FSName(source.clone()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoExec,
        MountOption::DefaultPermissions,
    ];
    mount_options.push(if options.writable {
        MountOption::RW
    } else {
        MountOption::RO
    });
    let mut config = Config::default();
    config.mount_options = mount_options;
    let writable = options.writable;
    let fs = fs::QomFs::new(qom, options, rt);
    // Started before the mount, so that no moment exists when we could die with
    // the mount made and no watchdog to remove it.
    let watchdog = match Watchdog::start(&canonical, &source) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!("no watchdog for {}: {e}", canonical.display());
            None
        }
    };
    let mut session = match Session::new(fs, &canonical, &config) {
        Ok(s) => s,
        Err(e) => {
            if let Some(w) = watchdog {
                w.done();
            }
            return Err(mount_err(e));
        }
    };
    let unmounter = session.unmount_callable();
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("qom-fuse".to_owned())
        .spawn(move || {
            let _ = tx.send(session.run());
        });
    let mounted = Mounted {
        mountpoint: canonical,
        unmounter,
        ended: Some(rx),
        watchdog,
        unmounted: false,
    };
    if let Err(e) = spawned {
        // `mounted` unmounts when dropped.
        return Err(mount_err(e));
    }
    debug!(
        "mounted on {} ({})",
        mounted.mountpoint.display(),
        if writable { "writable" } else { "read-only" }
    );
    Ok(mounted)
}

impl Mounted {
    /// The mount point (canonical).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Wait until the file system is unmounted from outside (`umount`); returns at
    /// once after that. Cancel-safe.
    pub async fn ended(&mut self) {
        if let Some(rx) = &mut self.ended {
            let r = rx.await;
            self.ended = None;
            match r {
                Ok(Err(e)) => warn!("the FUSE session ended: {e}"),
                _ => debug!("the FUSE session ended"),
            }
        }
    }

    /// Unmount, lazily if the mount is busy, then wait (at most 1 s) for the FUSE
    /// session to end.
    pub async fn unmount(mut self) -> Result<(), FuseError> {
        self.unmount_now()?;
        if let Some(rx) = self.ended.take() {
            if tokio::time::timeout(SESSION_END_TIMEOUT, rx).await.is_err() {
                // Detached while busy: the session ends when its last user lets go,
                // or when this process exits.
                debug!(
                    "{}: the FUSE session is still in use after the unmount",
                    self.mountpoint.display()
                );
            }
        }
        Ok(())
    }

    fn unmount_now(&mut self) -> Result<(), FuseError> {
        if self.unmounted {
            return Ok(());
        }
        self.unmounted = true;
        let result = match self.unmounter.unmount() {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                debug!("{} is busy: detaching it", self.mountpoint.display());
                rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH)
                    .map_err(io::Error::from)
            }
            Err(e) => Err(e),
        };
        if let Some(w) = self.watchdog.take() {
            w.done();
        }
        result.map_err(|source| FuseError::Unmount {
            mountpoint: self.mountpoint.clone(),
            source,
        })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_now() {
            warn!("{e}");
        }
    }
}

/// Unmounts the mount point if this process dies without doing it: a shell in a
/// process group of its own (so the terminal's Ctrl-C does not reach it), reading
/// its standard input, a pipe whose write end only we hold (close-on-exec, so no
/// other child inherits it). End-of-file without the word `done` means we died:
/// then, if our mount (found by its source, unique to it) is in the mount table, it
/// runs `umount -l` on the mount point.
#[derive(Debug)]
struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    fn start(mountpoint: &Path, source: &str) -> io::Result<Watchdog> {
        let mut child = Command::new("/bin/sh")
            .args([
                "-c",
                r#"read -r word; [ "$word" = done ] && exit 0
grep -qF -- " $2 " /proc/self/mountinfo && exec umount -l -- "$1""#,
                "qom-fuse-watchdog",
            ])
            .arg(mountpoint)
            .arg(source)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        let stdin = child.stdin.take();
        Ok(Watchdog { child, stdin })
    }

    /// The unmount was done: let the watchdog go without unmounting, and reap it.
    fn done(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"done\n");
        }
        // Its read has returned (with the word, or end-of-file if the write failed
        // because it is gone): it exits at once.
        let _ = self.child.wait();
    }
}
