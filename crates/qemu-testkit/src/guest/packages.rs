//! The packages: which versions apt would fetch now (remembered until its
//! package lists change), and their `.deb` files, downloaded once.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::build::{
    failed, fnv, have, run, write_atomically, Error, BUSYBOX, KERNEL_META, TOOL_TIMEOUT,
};

const APT_LISTS: &str = "/var/lib/apt/lists";
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// `(package, version)` for the kernel and busybox, as apt would fetch them now.
/// The answer is kept in `dir/apt-resolved` with a fingerprint of apt's package
/// lists (asking apt-cache takes ~3 s).
pub(super) fn resolve(dir: &Path) -> Result<Vec<(String, String)>, Error> {
    for tool in ["apt-cache", "apt-get", "dpkg-deb", "ldd", "xz"] {
        if !have(tool) {
            return Err(Error::Unavailable(format!(
                "`{tool}` not found (a Debian-like host is needed)"
            )));
        }
    }
    let fingerprint = apt_lists_fingerprint();
    let saved = dir.join("apt-resolved");
    if let Ok(text) = fs::read_to_string(&saved) {
        let mut lines = text.lines();
        if lines.next() == Some(fingerprint.as_str()) {
            let packages: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(' '))
                .map(|(p, v)| (p.to_owned(), v.to_owned()))
                .collect();
            if packages.len() == 2 {
                return Ok(packages);
            }
        }
    }
    let show = run(
        Command::new("apt-cache").args(["show", "--no-all-versions", KERNEL_META, BUSYBOX]),
        TOOL_TIMEOUT,
    )
    .map_err(|e| {
        Error::Unavailable(format!(
            "apt does not know {KERNEL_META} and {BUSYBOX}: {e}"
        ))
    })?;
    let mut kernel = None;
    let mut busybox = None;
    for stanza in show.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
        };
        match field("Package") {
            Some(KERNEL_META) => {
                // "linux-image-6.1.0-57-amd64 (= 6.1.192-3)"
                kernel = field("Depends").and_then(|d| {
                    let first = d.split(',').next()?.trim();
                    let (name, rest) = first.split_once(" (= ")?;
                    Some((name.to_owned(), rest.strip_suffix(')')?.to_owned()))
                });
            }
            Some(BUSYBOX) => busybox = field("Version").map(|v| (BUSYBOX.to_owned(), v.to_owned())),
            _ => {}
        }
    }
    let (Some(kernel), Some(busybox)) = (kernel, busybox) else {
        return Err(Error::Unavailable(format!(
            "apt-cache show gives no kernel package behind {KERNEL_META} or no {BUSYBOX} version"
        )));
    };
    let packages = vec![kernel, busybox];
    let mut text = fingerprint;
    for (p, v) in &packages {
        text.push_str(&format!("\n{p} {v}"));
    }
    write_atomically(&saved, text.as_bytes())?;
    Ok(packages)
}

/// Names, sizes and modification times of apt's package lists, hashed.
fn apt_lists_fingerprint() -> String {
    let mut entries: Vec<String> = fs::read_dir(APT_LISTS)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = e.metadata().ok()?;
            name.contains("_Packages")
                .then(|| format!("{name} {} {}", meta.len(), meta.mtime()))
        })
        .collect();
    entries.sort();
    format!("lists {:016x}", fnv(entries.join("\n").as_bytes()))
}

/// The `.deb` files, from `dir/debs` or downloaded into it.
pub(super) fn download(
    dir: &Path,
    tmp: &Path,
    packages: &[(String, String)],
) -> Result<Vec<PathBuf>, Error> {
    let debs = dir.join("debs");
    fs::create_dir_all(&debs)
        .map_err(|e| failed(format_args!("creating {}", debs.display()), e))?;
    let mut paths = Vec::new();
    for (package, version) in packages {
        let file = debs.join(format!("{package}_{}.deb", version.replace(':', "%3a")));
        if !file.is_file() {
            let into = tmp.join(format!("download-{package}"));
            fs::create_dir(&into).map_err(|e| failed("creating a download directory", e))?;
            let mut cmd = Command::new("apt-get");
            cmd.current_dir(&into).args(["download", "-q"]);
            if rustix::process::geteuid().is_root() {
                // Root downloads as root: apt's _apt user cannot enter the directory.
                cmd.args(["-o", "APT::Sandbox::User=root"]);
            }
            run(cmd.arg(format!("{package}={version}")), DOWNLOAD_TIMEOUT)?;
            let got = fs::read_dir(&into)
                .map_err(|e| failed("reading the download directory", e))?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "deb"))
                .ok_or_else(|| {
                    Error::Failed(format!("apt-get download {package}={version} left no .deb"))
                })?;
            fs::rename(&got, &file)
                .map_err(|e| failed(format_args!("moving {}", got.display()), e))?;
        }
        paths.push(file);
    }
    Ok(paths)
}
