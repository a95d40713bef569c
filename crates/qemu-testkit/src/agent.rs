//! A real `qemu-ga` for tests, on the test machine itself.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use crate::{qemu_ga, QemuProcess};

/// Every guest-agent command that would change the machine it runs on. An
/// agent started by [`start_agent`] acts on the test machine itself, so these
/// are always blocked (`--block-rpcs`). `guest-file-open`, `-read` and `-close`
/// are not in it (opening a file with mode `r` changes nothing), but writing,
/// seeking and flushing are.
pub const GA_BLOCKED_RPCS: &[&str] = &[
    "guest-shutdown",
    "guest-suspend-disk",
    "guest-suspend-ram",
    "guest-suspend-hybrid",
    "guest-fsfreeze-freeze",
    "guest-fsfreeze-freeze-list",
    "guest-fsfreeze-thaw",
    "guest-fstrim",
    "guest-exec",
    "guest-set-time",
    "guest-set-user-password",
    "guest-ssh-add-authorized-keys",
    "guest-ssh-remove-authorized-keys",
    "guest-set-vcpus",
    "guest-set-memory-blocks",
    "guest-file-write",
    "guest-file-seek",
    "guest-file-flush",
];

/// `qemu-ga` listening on a Unix socket the test bound, handed over by socket
/// activation (`LISTEN_FDS`, the socket at fd 3), so it is connectable as soon
/// as it starts. Every command in [`GA_BLOCKED_RPCS`] and in `also_blocked` is
/// blocked.
///
/// Returns the agent (a `/bin/bash -c` that execs `qemu-ga`), the socket path,
/// and the directory holding the socket and the agent's state and pid files
/// (keep it until the agent is dropped). `None` after a `SKIPPED:` line when
/// `qemu-ga` is missing (a panic under `CI=true`); see [`qemu_ga`].
pub fn start_agent(also_blocked: &[&str]) -> Option<(QemuProcess, PathBuf, tempfile::TempDir)> {
    let ga = qemu_ga()?;
    let blocked = GA_BLOCKED_RPCS
        .iter()
        .chain(also_blocked)
        .copied()
        .collect::<Vec<_>>()
        .join(",");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qga.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let fd = listener.as_raw_fd();
    // Socket activation wants the listener at fd 3; `exec 3<&3 3<&-` would
    // close it.
    let move_to_3 = if fd == 3 {
        String::new()
    } else {
        format!("exec 3<&{fd} {fd}<&-; ")
    };
    let script = format!(
        "{move_to_3}LISTEN_FDS=1 LISTEN_PID=$$ exec {} -m unix-listen -p {} -t {} -f {} -b {blocked}",
        ga.display(),
        path.display(),
        dir.path().display(),
        dir.path().join("qga.pid").display(),
    );
    let agent = QemuProcess::spawn(
        Path::new("/bin/bash"),
        &["-c", &script],
        &[listener.as_fd()],
    );
    Some((agent, path, dir))
}
