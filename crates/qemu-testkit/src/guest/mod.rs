//! A Linux guest for the tests that need a running one: Debian's kernel and
//! static busybox (fetched with `apt-get download`, unpacked with `dpkg-deb -x`),
//! and an initramfs built here holding busybox, an init script, the virtio and
//! ACPI button modules, and the host's `qemu-ga` with the shared libraries it
//! links.
//!
//! # How it works
//!
//! [`guest_image`] finds (or builds) the image under `target/guest/` (or
//! `$QEMU_RS_GUEST_DIR`), in a directory named after a hash of every input: the
//! package versions apt would fetch, the init script, this recipe's version, and
//! the path, size and modification time of `qemu-ga` and of each library `ldd`
//! lists for it. A new kernel in the package lists, a different `qemu-ga` (QEMU
//! 10.0's or 7.2's) or an edited init script gives a new directory; an unchanged
//! one is reused without running apt. Asking apt which versions it would fetch
//! takes ~3 s, so the answer is kept beside the images together with the size and
//! modification time of apt's package lists, and asked again only when those
//! change.
//!
//! A build happens in a private temporary directory which is renamed into place at
//! the end: two test processes building at once both succeed, the second rename
//! fails harmlessly (the directory exists) and its copy is removed. Downloaded
//! packages are kept (`target/guest/debs/`) and moved into place the same way.
//!
//! The guest boots with `-kernel`/`-initrd` (see [`GuestImage::qemu_args`]),
//! prints [`GUEST_READY`] on the serial console once its init script is done, and
//! then runs a shell there. `system_powerdown` powers it off (busybox `acpid`
//! runs `poweroff -f` on the power button). When QEMU gives it a virtio-serial
//! port named `org.qemu.guest_agent.0`, `qemu-ga` runs on it, with nothing
//! blocked: inside the guest, `guest-exec` or `guest-shutdown` harm nobody.

mod build;
mod cpio;
mod initramfs;
mod packages;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use build::{build_guest_image, BuildReport};

/// Environment variable naming the directory the guest images are kept in
/// (default: `guest` in Cargo's target directory).
pub const GUEST_DIR_ENV: &str = "QEMU_RS_GUEST_DIR";

/// What the guest's init script prints on the serial console when it is done
/// (modules loaded, `acpid` started) and its shell is about to start.
pub const GUEST_READY: &str = "qemu-rs-guest: ready";

/// What the guest's init script prints just before it starts `qemu-ga`.
pub const GUEST_AGENT_STARTING: &str = "qemu-rs-guest: agent starting";

/// The name of the virtio-serial port the guest runs `qemu-ga` on.
pub const GUEST_AGENT_PORT: &str = "org.qemu.guest_agent.0";

/// A built guest: a kernel and an initramfs.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// The kernel: the uncompressed ELF `vmlinux`, booted by QEMU through its
    /// PVH entry point.
    pub kernel: PathBuf,
    /// The initramfs (an uncompressed `newc` cpio archive).
    pub initrd: PathBuf,
    /// The kernel's release (`uname -r` in the guest).
    pub kernel_release: String,
}

impl GuestImage {
    /// The QEMU arguments that boot this guest with its console on the first
    /// serial port, which the caller connects (for `QemuMachine`:
    /// `.console(true)`, or `-serial stdio`), for a `pc` machine the caller
    /// chooses (`.machine_type("pc")`): 256 MiB, KVM when [`kvm_usable`], TCG
    /// otherwise, and `-no-reboot` (a guest panic or reboot ends QEMU).
    /// `extra_append` is added to the kernel command line.
    pub fn qemu_args(&self, extra_append: &str) -> Vec<String> {
        let accel = if kvm_usable() { "kvm" } else { "tcg" };
        let mut append = String::from("console=ttyS0 panic=-1");
        if !extra_append.is_empty() {
            append.push(' ');
            append.push_str(extra_append);
        }
        [
            "-accel",
            accel,
            "-m",
            "256",
            "-no-reboot",
            "-kernel",
            &self.kernel.display().to_string(),
            "-initrd",
            &self.initrd.display().to_string(),
            "-append",
            &append,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// Environment variable forcing the guest's accelerator (`kvm` or `tcg`) over
/// what [`kvm_usable`] decides.
pub const GUEST_ACCEL_ENV: &str = "QEMU_RS_GUEST_ACCEL";

/// Whether the guest runs under KVM: `$QEMU_RS_GUEST_ACCEL` when set, else
/// `/dev/kvm` opens for reading and writing *and* it is hardware-assisted KVM
/// (`kvm_intel` or `kvm_amd` loaded). A `/dev/kvm` from another provider is not
/// enough: on a host whose `/dev/kvm` is PVM (`kvm_pvm`, paravirtualised nested
/// virtualisation, which needs a guest kernel built for it), QEMU starts and
/// `query-kvm` says enabled, but Debian's kernel took 9 s to reach its real-mode
/// setup and had not finished decompressing after 2 minutes; under TCG it is
/// ready in ~5 s.
pub fn kvm_usable() -> bool {
    match std::env::var(GUEST_ACCEL_ENV).as_deref() {
        Ok("kvm") => return true,
        Ok("tcg") => return false,
        _ => {}
    }
    let hardware = ["kvm_intel", "kvm_amd"]
        .iter()
        .any(|m| Path::new("/sys/module").join(m).is_dir());
    hardware
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

/// Where the images are kept: `$QEMU_RS_GUEST_DIR`, else `guest` in the Cargo
/// target directory of the running test (the nearest ancestor of the test
/// executable holding Cargo's `CACHEDIR.TAG`), else the workspace's `target/guest`.
pub fn guest_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(GUEST_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(target) = exe
            .ancestors()
            .skip(1)
            .find(|d| d.join("CACHEDIR.TAG").is_file())
        {
            return target.join("guest");
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/guest")
}

/// The guest image for the `qemu-ga` the tests use ([`crate::qemu_ga`]), built
/// on first use (see the module documentation), or `None` after a `SKIPPED:`
/// line when it cannot be had here (no `qemu-ga`, no `apt-get`/`dpkg-deb`, or
/// apt knows no kernel package); panics in that case under `CI=true`, and
/// whenever a build fails. Built once per test process.
pub fn guest_image() -> Option<GuestImage> {
    static CACHE: Mutex<Option<GuestImage>> = Mutex::new(None);
    let ga = crate::qemu_ga()?;
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(image) = cache.as_ref() {
        return Some(image.clone());
    }
    match build_guest_image(&ga, &guest_dir()) {
        Ok(report) => {
            *cache = Some(report.image.clone());
            Some(report.image)
        }
        Err(build::Error::Unavailable(why)) => {
            let msg = format!("SKIPPED: {}: no guest image: {why}", crate::test_name());
            if crate::is_ci() {
                panic!("{msg} (CI=true: a guest is required)");
            }
            crate::loud(&msg);
            None
        }
        Err(e) => panic!("building the guest image failed: {e}"),
    }
}
