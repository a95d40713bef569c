//! Start QEMU with a QMP socket, connect, print the version and a few events, and shut
//! it down.
//!
//! Uses `qemu-system-x86_64 -machine none` if present, else `qemu-storage-daemon`
//! (override with `QEMU=/path/to/binary`).
//!
//! ```text
//! cargo run -p qemu-qmp --example demo
//! ```

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use qemu_qmp::{Client, RecvTimeoutError};

fn find(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let binary = std::env::var_os("QEMU")
        .map(PathBuf::from)
        .or_else(|| find("qemu-system-x86_64"))
        .or_else(|| find("qemu-storage-daemon"))
        .ok_or("neither qemu-system-x86_64 nor qemu-storage-daemon is installed (apt-get install qemu-system-x86)")?;
    let is_daemon = binary.ends_with("qemu-storage-daemon");

    // A socketpair: QEMU gets one end as an inherited descriptor, so no socket file
    // is ever created.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let theirs = qemu_process::above_stdio(theirs.into())?;
    let fd = theirs.as_raw_fd();
    let chardev = format!("socket,id=qmp,fd={fd}");
    let mut cmd = Command::new(&binary);
    if is_daemon {
        cmd.args(["--chardev", &chardev, "--monitor", "chardev=qmp"]);
    } else {
        cmd.args(["-machine", "none", "-nodefaults", "-display", "none", "-S"])
            .args(["-chardev", &chardev, "-mon", "chardev=qmp,mode=control"]);
    }
    cmd.stdin(Stdio::null());
    // QEMU dies with this program, even if it is killed: `qemu_process` forks it
    // with PR_SET_PDEATHSIG from a thread that lives as long as the program. Our
    // copy of `theirs` is closed right after the fork, so that `ours` sees
    // end-of-file once QEMU exits.
    let mut spawn = qemu_process::Spawn::new(cmd);
    spawn.inherit_owned(theirs);
    let mut child = spawn.spawn()?;
    println!("started {} (pid {})", binary.display(), child.id());

    let qmp = Client::builder().name("demo").connect(ours).await?;
    let greeting = qmp.greeting().expect("greeting awaited");
    println!(
        "connected: QEMU {} ({}), capabilities {:?}, oob {}",
        greeting.version.qemu,
        greeting.version.package,
        greeting.capabilities,
        qmp.oob_enabled()
    );
    let version = qmp.execute("query-version", None).await?;
    println!("query-version: {version}");

    let mut events = qmp.listen_all();
    if !is_daemon {
        qmp.execute("cont", None).await?;
        qmp.execute("stop", None).await?;
    }
    qmp.execute("quit", None).await?;
    loop {
        match events.recv_timeout(Duration::from_secs(5)).await {
            Ok(e) => println!("event: {e}"),
            Err(RecvTimeoutError::Closed(_)) => break,
            Err(e) => return Err(e.into()),
        }
    }
    qmp.disconnect().await?;
    let status = child.wait()?;
    println!("QEMU exited: {status}");
    Ok(())
}
