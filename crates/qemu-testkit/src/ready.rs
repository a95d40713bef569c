//! [`MonitorsReady`]: hold a test back until QEMU has set up its QMP monitors.
//!
//! # Why
//!
//! A QMP monitor on a socket chardev runs in QEMU's monitor I/O thread. QEMU
//! creates the chardev on its main thread (a listener starts being watched
//! there) and only later, from a bottom half on the I/O thread, moves the
//! chardev's watches to that thread. A client connection that arrives in
//! between (one the harness made as soon as QEMU ran, waiting in the backlog of
//! a listener it handed QEMU) can be seen by both threads. About one run in 70
//! of `qemu-qmp`'s `tests/qemu.rs` on QEMU 10.0 failed this way (about one
//! connection in 1,000), and `qemu-storage-daemon` 7.2 did too:
//!
//! - both threads called `accept`; the main thread's waited for good on the
//!   blocking listener, and the greeting never came;
//! - with a non-blocking listener instead: the greeting came twice (the second
//!   one read as the reply to `qmp_capabilities`), the connection was closed
//!   before any greeting, or the bytes of a command were read out of order by
//!   two threads (`'exectue' is unexpected`).
//!
//! A connection made after that window is handled by the I/O thread alone,
//! which is the case QEMU's own users rely on. The harness therefore adds one
//! more monitor, last on the command line, on a connected socketpair (a
//! connected chardev has no listener, so it does not race), and waits for it:
//! its greeting shows its set-up bottom half has run, and since the bottom
//! halves of earlier monitors were scheduled before its own, they have run by
//! then or in the same batch. The reply to a command on it is read by a later
//! turn of the I/O thread's loop than that batch, so once it arrives every
//! monitor listed before it is set up.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::process::{above_stdio, QemuProcess};

/// The chardev and monitor id of the extra monitor.
pub const READY_MONITOR_ID: &str = "testkit-ready";

/// How long QEMU may take to set up its monitors.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// An extra QMP monitor to put last on QEMU's command line, and to wait on
/// before a test connects to any listening monitor before it. See the
/// [module documentation](self) for why.
///
/// ```no_run
/// # use qemu_testkit::{MonitorsReady, QemuProcess};
/// # use std::os::fd::AsFd;
/// # let (binary, mut args, listener): (std::path::PathBuf, Vec<String>, std::os::fd::OwnedFd) = todo!();
/// let ready = MonitorsReady::new();
/// args.extend(ready.system_args());
/// let qemu = QemuProcess::spawn(&binary, &args, &[listener.as_fd(), ready.fd()]);
/// drop(listener);
/// ready.wait(&qemu);
/// // Now connect to the listener's path.
/// ```
#[derive(Debug)]
pub struct MonitorsReady {
    ours: UnixStream,
    theirs: OwnedFd,
}

impl Default for MonitorsReady {
    fn default() -> Self {
        Self::new()
    }
}

impl MonitorsReady {
    /// A connected socketpair: one end for QEMU, one to wait on.
    pub fn new() -> MonitorsReady {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        MonitorsReady {
            ours,
            theirs: above_stdio(OwnedFd::from(theirs)),
        }
    }

    /// QEMU's end, to pass to the child.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.theirs.as_fd()
    }

    fn chardev(&self) -> String {
        format!(
            "socket,id={READY_MONITOR_ID},fd={}",
            self.theirs.as_raw_fd()
        )
    }

    /// `-chardev socket,id=testkit-ready,fd=N -mon
    /// chardev=testkit-ready,mode=control`, for `qemu-system-*`.
    pub fn system_args(&self) -> [String; 4] {
        [
            "-chardev".to_owned(),
            self.chardev(),
            "-mon".to_owned(),
            format!("chardev={READY_MONITOR_ID},mode=control"),
        ]
    }

    /// `--chardev socket,id=testkit-ready,fd=N --monitor chardev=testkit-ready`,
    /// for `qemu-storage-daemon`.
    pub fn storage_daemon_args(&self) -> [String; 4] {
        [
            "--chardev".to_owned(),
            self.chardev(),
            "--monitor".to_owned(),
            format!("chardev={READY_MONITOR_ID}"),
        ]
    }

    /// Closes QEMU's end here, then waits until the extra monitor has answered a
    /// command, or QEMU has closed it (it exited while starting: the test sees
    /// that when it connects). Panics, with QEMU's log, if neither happens
    /// within 30 s.
    pub fn wait(self, qemu: &QemuProcess) {
        let MonitorsReady { ours, theirs } = self;
        drop(theirs);
        ours.set_read_timeout(Some(READY_TIMEOUT))
            .expect("read timeout");
        let mut writer = ours.try_clone().expect("clone the socket");
        let mut reader = BufReader::new(ours);
        let mut line = String::new();
        let mut next = |what: &str| -> bool {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => false,
                Ok(_) => true,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!(
                        "QEMU did not send {what} on its {READY_MONITOR_ID} monitor within {}s\n{}",
                        READY_TIMEOUT.as_secs(),
                        qemu.log()
                    )
                }
                // A reset: QEMU is gone.
                Err(_) => false,
            }
        };
        if !next("a greeting") {
            return;
        }
        if writer
            .write_all(br#"{"execute": "qmp_capabilities"}"#)
            .is_err()
        {
            return;
        }
        next("the reply to qmp_capabilities");
    }
}
