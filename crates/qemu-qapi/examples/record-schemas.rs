//! Start each QEMU binary given, ask it for `query-version` and
//! `query-qmp-schema`, and write what it says to
//! `OUTDIR/<binary>-<version>.json` (see `qemu_qapi::recording`).
//!
//! ```text
//! cargo run -p qemu-qapi --example record-schemas -- [--binary PATH ...] OUTDIR
//! ```
//!
//! Without `--binary`: `qemu-system-x86_64` and `qemu-storage-daemon` from
//! `PATH`. A binary whose file name starts with `qemu-storage-daemon` is
//! started as the storage daemon, any other as `qemu-system-*` with
//! `-machine none`. `.ci/record-schemas` runs it on every QEMU the project is
//! tested against.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use qemu_qapi::Recording;
use qemu_qmp::Client;

type BoxError = Box<dyn std::error::Error>;

fn find(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
}

/// `qemu-system-x86_64` for `/x/qemu-system-x86_64`, `qemu-storage-daemon`
/// for `/x/qemu-storage-daemon`: what the recording says it is.
fn kind(binary: &Path) -> Result<String, BoxError> {
    let name = binary
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: no file name", binary.display()))?;
    Ok(name.to_owned())
}

async fn record(binary: &Path, outdir: &Path) -> Result<PathBuf, BoxError> {
    let kind = kind(binary)?;
    let is_daemon = kind.starts_with("qemu-storage-daemon");

    // A socketpair, as in qemu-qmp's demo: QEMU gets one end as an inherited
    // descriptor, and dies with this program.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let theirs = qemu_process::above_stdio(theirs.into())?;
    let chardev = format!("socket,id=qmp,fd={}", theirs.as_raw_fd());
    let mut cmd = Command::new(binary);
    if is_daemon {
        cmd.args(["--chardev", &chardev, "--monitor", "chardev=qmp"]);
    } else {
        cmd.args(["-machine", "none", "-nodefaults", "-display", "none", "-S"])
            .args(["-chardev", &chardev, "-mon", "chardev=qmp,mode=control"]);
    }
    cmd.stdin(Stdio::null());
    let mut spawn = qemu_process::Spawn::new(cmd);
    spawn.inherit_owned(theirs);
    let mut child = spawn.spawn()?;

    let result = async {
        let qmp = Client::builder()
            .name("record-schemas")
            .connect(ours)
            .await?;
        let recording = Recording::fetch(&qmp, &kind).await?;
        qmp.execute("quit", None).await?;
        qmp.disconnect().await?;
        Ok::<_, BoxError>(recording)
    }
    .await;
    let recording = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{}: {e}", binary.display()).into());
        }
    };
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("{}: exited with {status} after quit", binary.display()).into());
    }
    // Check it reads back before writing it.
    let schema = recording.schema()?;
    let path = outdir.join(recording.file_name()?);
    std::fs::write(&path, recording.to_json())?;
    println!(
        "{}: {} {} ({} entities, {} commands, {} events) -> {}",
        binary.display(),
        kind,
        schema.version().expect("a recording has a version"),
        schema.entities().len(),
        schema.commands().count(),
        schema.events().count(),
        path.display()
    );
    Ok(path)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let mut binaries = Vec::new();
    let mut outdir = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--binary" {
            binaries.push(PathBuf::from(args.next().ok_or("--binary needs a path")?));
        } else if arg == "-h" || arg == "--help" {
            println!("usage: record-schemas [--binary PATH ...] OUTDIR");
            return Ok(());
        } else if outdir.is_none() {
            outdir = Some(PathBuf::from(arg));
        } else {
            return Err("usage: record-schemas [--binary PATH ...] OUTDIR".into());
        }
    }
    let outdir = outdir.ok_or("usage: record-schemas [--binary PATH ...] OUTDIR")?;
    if binaries.is_empty() {
        for name in ["qemu-system-x86_64", "qemu-storage-daemon"] {
            binaries.push(find(name).ok_or_else(|| format!("{name} is not in PATH"))?);
        }
    }
    std::fs::create_dir_all(&outdir)?;
    for binary in &binaries {
        record(binary, &outdir).await?;
    }
    Ok(())
}
