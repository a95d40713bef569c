//! Writing the image: the kernel's ELF image out of its bzImage, and the
//! initramfs (busybox, the init script, the modules in load order, `qemu-ga` and
//! its libraries).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::build::{failed, have, run, Error, TOOL_TIMEOUT};
use super::cpio::Cpio;

/// The modules the guest loads (with what they depend on): virtio over PCI, the
/// console/serial and block drivers, and the ACPI power button with evdev for
/// `acpid`. The 8250 serial port, ACPI and PCI hot-plug are built into
/// Debian's kernel.
pub(super) const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_console",
    "virtio_blk",
    "evdev",
    "button",
];
pub(super) const INIT: &str = include_str!("init.sh");
/// What `acpid` runs on the power button: busybox's `poweroff` without `-f`
/// signals a busybox init, which this guest does not run.
pub(super) const POWER_BUTTON: &str = "#!/bin/sh\nsync\npoweroff -f\n";
/// `qemu-ga` runs `/sbin/shutdown -P|-H|-r +0 MESSAGE` for `guest-shutdown`;
/// busybox has no `shutdown`.
pub(super) const SHUTDOWN: &str = "#!/bin/sh\nsync\ncase \"$1\" in\n-r) exec reboot -f ;;\n-H) exec halt -f ;;\n*) exec poweroff -f ;;\nesac\n";
/// Unpacks the packages under `tmp` and writes the image into `out`.
pub(super) fn assemble(
    tmp: &Path,
    out: &Path,
    debs: &[PathBuf],
    qemu_ga: &Path,
    libs: &[PathBuf],
    specs: &[String],
) -> Result<(), Error> {
    let root = tmp.join("unpacked");
    for deb in debs {
        run(
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root),
            TOOL_TIMEOUT,
        )?;
    }
    let modules_root = root.join("lib/modules");
    let release = fs::read_dir(&modules_root)
        .map_err(|e| failed(format_args!("reading {}", modules_root.display()), e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| Error::Failed("the kernel package has no /lib/modules".into()))?;
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    let vmlinux = uncompressed_kernel(&vmlinuz, tmp)?;
    fs::write(out.join("vmlinux"), vmlinux).map_err(|e| failed("writing vmlinux", e))?;
    let modules = module_load_order(&modules_root.join(&release))?;

    let busybox = root.join("bin/busybox");
    let applets = run(Command::new(&busybox).arg("--list"), TOOL_TIMEOUT)?;

    let file =
        fs::File::create(out.join("initrd.img")).map_err(|e| failed("creating initrd.img", e))?;
    let mut cpio = Tree::new(Cpio::new(BufWriter::new(file)));
    let io = |e: std::io::Error| failed("writing initrd.img", e);
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "root",
        "var",
        "etc/acpi/PWRF",
    ] {
        cpio.dir(dir).map_err(io)?;
    }
    cpio.cpio.symlink("var/run", "../run").map_err(io)?;
    cpio.cpio.char_device("dev/console", 5, 1).map_err(io)?;
    cpio.file("init", 0o755, INIT.as_bytes()).map_err(io)?;
    let busybox_bytes =
        fs::read(&busybox).map_err(|e| failed(format_args!("reading {}", busybox.display()), e))?;
    cpio.file("bin/busybox", 0o755, &busybox_bytes)
        .map_err(io)?;
    for applet in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        cpio.cpio
            .symlink(&format!("bin/{applet}"), "busybox")
            .map_err(io)?;
    }
    // qemu-ga calls these by absolute path.
    for applet in ["hwclock", "poweroff", "reboot", "halt"] {
        cpio.cpio
            .symlink(&format!("sbin/{applet}"), "../bin/busybox")
            .map_err(io)?;
    }
    cpio.file("sbin/shutdown", 0o755, SHUTDOWN.as_bytes())
        .map_err(io)?;
    cpio.file("etc/acpi/PWRF/00000080", 0o755, POWER_BUTTON.as_bytes())
        .map_err(io)?;
    cpio.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        .map_err(io)?;
    cpio.file("etc/group", 0o644, b"root:x:0:\n").map_err(io)?;

    let mut list = String::new();
    for module in &modules {
        let path = format!("lib/modules/{release}/{module}");
        let bytes = fs::read(modules_root.join(&release).join(module))
            .map_err(|e| failed(format_args!("reading {module}"), e))?;
        cpio.file(&path, 0o644, &bytes).map_err(io)?;
        list.push_str(module);
        list.push('\n');
    }
    cpio.file("etc/modules", 0o644, list.as_bytes())
        .map_err(io)?;

    let ga =
        fs::read(qemu_ga).map_err(|e| failed(format_args!("reading {}", qemu_ga.display()), e))?;
    cpio.file("usr/bin/qemu-ga", 0o755, &ga).map_err(io)?;
    for lib in libs {
        // Under the path ldd names (following symlinks for the content).
        let bytes =
            fs::read(lib).map_err(|e| failed(format_args!("reading {}", lib.display()), e))?;
        let path = lib.to_string_lossy();
        cpio.file(path.trim_start_matches('/'), 0o755, &bytes)
            .map_err(io)?;
    }
    cpio.cpio.finish().map_err(io)?;

    let manifest = format!(
        "packages: {}\nqemu-ga: {}\nlibraries: {}\nmodules (load order): {}\n",
        specs.join(" "),
        qemu_ga.display(),
        libs.iter()
            .map(|l| l.display().to_string())
            .collect::<Vec<_>>()
            .join(" "),
        modules.join(" "),
    );
    fs::write(out.join("inputs.txt"), manifest).map_err(|e| failed("writing inputs.txt", e))?;
    // Last: its presence marks the image complete.
    fs::write(out.join("kernel-release"), format!("{release}\n"))
        .map_err(|e| failed("writing kernel-release", e))
}

/// The ELF kernel inside Debian's `vmlinuz` (a bzImage holding one xz stream):
/// QEMU boots it through its PVH entry point (`CONFIG_PVH=y`), which skips the
/// real-mode setup and the decompression. Measured under TCG: the init script's
/// marker 5.1 s after launch instead of 12 s.
fn uncompressed_kernel(vmlinuz: &Path, tmp: &Path) -> Result<Vec<u8>, Error> {
    const XZ_MAGIC: &[u8] = b"\xfd7zXZ\0";
    let bytes =
        fs::read(vmlinuz).map_err(|e| failed(format_args!("reading {}", vmlinuz.display()), e))?;
    let at = bytes
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .ok_or_else(|| {
            Error::Failed(format!(
                "{}: no xz stream (not an xz-compressed kernel)",
                vmlinuz.display()
            ))
        })?;
    let xz_file = tmp.join("vmlinux.xz");
    fs::write(&xz_file, &bytes[at..]).map_err(|e| failed("writing vmlinux.xz", e))?;
    if !have("xz") {
        return Err(Error::Unavailable(
            "`xz` not found (package xz-utils)".into(),
        ));
    }
    let mut cmd = Command::new("xz");
    cmd.args(["-dc", "--single-stream"]).arg(&xz_file);
    let what = format!("xz -dc {}", xz_file.display());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = crate::output_within(&mut cmd, TOOL_TIMEOUT, &what);
    if !output.status.success() || !output.stdout.starts_with(b"\x7fELF") {
        return Err(Error::Failed(format!(
            "{what}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output.stdout)
}

/// A cpio writer that creates each parent directory once, before its entries.
struct Tree<W: std::io::Write> {
    cpio: Cpio<W>,
    dirs: BTreeSet<String>,
}

impl<W: std::io::Write> Tree<W> {
    fn new(cpio: Cpio<W>) -> Self {
        Tree {
            cpio,
            dirs: BTreeSet::new(),
        }
    }

    fn dir(&mut self, path: &str) -> std::io::Result<()> {
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.dirs.insert(path.to_owned());
        self.cpio.dir(path)
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.cpio.file(path, mode, data)
    }
}

/// The paths (relative to `release_dir`) of [`MODULES`] and the modules they
/// depend on, each after its dependencies. Dependencies are read from each
/// module's `.modinfo` section (`depends=a,b`): the package ships no
/// `modules.dep` (depmod runs when it is installed).
fn module_load_order(release_dir: &Path) -> Result<Vec<String>, Error> {
    let mut by_name = BTreeMap::new();
    let mut stack = vec![release_dir.join("kernel")];
    while let Some(dir) = stack.pop() {
        let entries =
            fs::read_dir(&dir).map_err(|e| failed(format_args!("reading {}", dir.display()), e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                let relative = path
                    .strip_prefix(release_dir)
                    .map_err(|e| failed("module path", e))?
                    .to_string_lossy()
                    .into_owned();
                by_name.insert(stem.replace('-', "_"), relative);
            }
        }
    }
    let mut order = Vec::new();
    let mut visiting = BTreeSet::new();
    for module in MODULES {
        visit(module, release_dir, &by_name, &mut visiting, &mut order)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    release_dir: &Path,
    by_name: &BTreeMap<String, String>,
    visiting: &mut BTreeSet<String>,
    order: &mut Vec<String>,
) -> Result<(), Error> {
    let Some(path) = by_name.get(name) else {
        // Built into the kernel (or absent: insmod of its dependents says so).
        return Ok(());
    };
    if order.contains(path) || !visiting.insert(name.to_owned()) {
        return Ok(());
    }
    let bytes =
        fs::read(release_dir.join(path)).map_err(|e| failed(format_args!("reading {path}"), e))?;
    for dep in modinfo_depends(&bytes) {
        visit(&dep, release_dir, by_name, visiting, order)?;
    }
    order.push(path.clone());
    Ok(())
}

/// The `depends=` entry of a module's `.modinfo` (NUL-separated `key=value`
/// strings), split at commas.
fn modinfo_depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = module.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let value = &module[at + KEY.len()..];
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_depends_reads_the_list() {
        let module = b"\x7fELF...\0license=GPL\0depends=virtio,virtio_ring,virtio-pci-modern-dev\0vermagic=6.1\0";
        assert_eq!(
            modinfo_depends(module),
            ["virtio", "virtio_ring", "virtio_pci_modern_dev"]
        );
        assert!(modinfo_depends(b"\0depends=\0name=x\0").is_empty());
        assert!(modinfo_depends(b"no modinfo here").is_empty());
    }
}
