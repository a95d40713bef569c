//! Building the guest image: the cache (keys, atomic renames), and the steps in
//! order: [`packages`] (versions, downloads), [`initramfs`] (the image).

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::initramfs::{self, INIT, MODULES, POWER_BUTTON, SHUTDOWN};
use super::packages;
use super::GuestImage;

/// Bumped whenever the recipe below changes in a way the other inputs do not show.
const RECIPE: u32 = 1;
/// The kernel metapackage; the image gets the real package it depends on.
pub(super) const KERNEL_META: &str = "linux-image-amd64";
pub(super) const BUSYBOX: &str = "busybox-static";
pub(super) const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// Why there is no image.
#[derive(Debug)]
pub enum Error {
    /// The image cannot be built on this machine (no apt, no package): tests skip.
    Unavailable(String),
    /// A step of the build failed.
    Failed(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unavailable(why) | Error::Failed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Error {}

pub(super) fn failed(what: impl fmt::Display, e: impl fmt::Display) -> Error {
    Error::Failed(format!("{what}: {e}"))
}

/// What [`build_guest_image`] did.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// The image.
    pub image: GuestImage,
    /// Whether it was built now (`false`: found from an earlier build).
    pub built: bool,
    /// Time spent downloading packages (zero when they were already there).
    pub download: Duration,
    /// Time spent unpacking and writing the image, downloads excluded.
    pub build: Duration,
    /// The packages it was built from (`name=version`).
    pub packages: Vec<String>,
}

/// Finds or builds, under `dir`, the guest image whose agent is `qemu_ga` (see
/// the module documentation for the cache).
pub fn build_guest_image(qemu_ga: &Path, dir: &Path) -> Result<BuildReport, Error> {
    fs::create_dir_all(dir).map_err(|e| failed(format_args!("creating {}", dir.display()), e))?;
    let packages = packages::resolve(dir)?;
    let libs = shared_libraries(qemu_ga)?;
    let key = cache_key(&packages, qemu_ga, &libs)?;
    let out = dir.join(&key);
    let specs: Vec<String> = packages.iter().map(|(p, v)| format!("{p}={v}")).collect();
    if let Some(image) = existing(&out) {
        return Ok(BuildReport {
            image,
            built: false,
            download: Duration::ZERO,
            build: Duration::ZERO,
            packages: specs,
        });
    }

    let tmp = tempfile::Builder::new()
        .prefix(&format!("build-{key}-"))
        .tempdir_in(dir)
        .map_err(|e| {
            failed(
                format_args!("creating a build directory in {}", dir.display()),
                e,
            )
        })?;
    let started = Instant::now();
    let debs = packages::download(dir, tmp.path(), &packages)?;
    let download = started.elapsed();

    let started = Instant::now();
    let staged = tmp.path().join("image");
    fs::create_dir(&staged).map_err(|e| failed("creating the image directory", e))?;
    initramfs::assemble(tmp.path(), &staged, &debs, qemu_ga, &libs, &specs)?;
    // Atomic: the first build to get here wins, a concurrent one drops its copy.
    match fs::rename(&staged, &out) {
        Ok(()) => {}
        Err(_) if existing(&out).is_some() => {}
        Err(e) => {
            return Err(failed(
                format_args!("moving the image to {}", out.display()),
                e,
            ))
        }
    }
    let image = existing(&out).ok_or_else(|| {
        Error::Failed(format!(
            "{}: image incomplete after the build",
            out.display()
        ))
    })?;
    remove_superseded(dir, &key, qemu_ga);
    Ok(BuildReport {
        image,
        built: true,
        download,
        build: started.elapsed(),
        packages: specs,
    })
}

/// Removes the other images built for the same `qemu-ga` path: some input changed
/// since (a package, the binary, the recipe), so nothing will use them again.
fn remove_superseded(dir: &Path, key: &str, qemu_ga: &Path) {
    let line = format!("qemu-ga: {}\n", qemu_ga.display());
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.len() != key.len() || name == key || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let inputs = fs::read_to_string(entry.path().join("inputs.txt")).unwrap_or_default();
        if inputs.contains(&line) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The image in `out`, if it is complete.
fn existing(out: &Path) -> Option<GuestImage> {
    let release = fs::read_to_string(out.join("kernel-release")).ok()?;
    let image = GuestImage {
        kernel: out.join("vmlinux"),
        initrd: out.join("initrd.img"),
        kernel_release: release.trim().to_owned(),
    };
    (image.kernel.is_file() && image.initrd.is_file()).then_some(image)
}

/// Runs `cmd` to completion within `timeout`; its stdout, or an error with its
/// stderr.
pub(super) fn run(cmd: &mut Command, timeout: Duration) -> Result<String, Error> {
    let what = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = crate::output_within(cmd, timeout, &what);
    if !output.status.success() {
        return Err(Error::Failed(format!(
            "{what}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    String::from_utf8(output.stdout).map_err(|e| failed(&what, e))
}

pub(super) fn have(program: &str) -> bool {
    crate::find_in_path(program).is_some()
}

pub(super) fn write_atomically(path: &Path, data: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, data).map_err(|e| failed(format_args!("writing {}", tmp.display()), e))?;
    fs::rename(&tmp, path).map_err(|e| failed(format_args!("writing {}", path.display()), e))
}

/// FNV-1a, 64 bits: a stable hash for cache keys (std's hasher may change).
pub(super) fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The shared libraries `ldd` lists for `binary`, the dynamic loader included.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, Error> {
    let out = run(Command::new("ldd").arg(binary), TOOL_TIMEOUT)?;
    let mut libs = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        if line.contains("not found") {
            return Err(Error::Failed(format!("ldd {}: {line}", binary.display())));
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
        let path = match line.split_once(" => ") {
            Some((_, rest)) => rest.split(" (").next(),
            None => line.split(" (").next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

fn cache_key(
    packages: &[(String, String)],
    qemu_ga: &Path,
    libs: &[PathBuf],
) -> Result<String, Error> {
    let mut inputs = format!("recipe {RECIPE}\n{INIT}\n{POWER_BUTTON}\n{SHUTDOWN}\n{MODULES:?}\n");
    for (p, v) in packages {
        inputs.push_str(&format!("{p} {v}\n"));
    }
    for file in std::iter::once(qemu_ga).chain(libs.iter().map(PathBuf::as_path)) {
        let meta = fs::metadata(file).map_err(|e| failed(format_args!("{}", file.display()), e))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        inputs.push_str(&format!(
            "{} {} {}\n",
            file.display(),
            meta.len(),
            mtime.as_nanos()
        ));
    }
    Ok(format!("{:016x}", fnv(inputs.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
