//! A `newc` cpio archive writer: the format the kernel unpacks as an initramfs
//! (`Documentation/driver-api/early-userspace/buffer-format.rst`). Written here
//! because a fresh Debian 12 has no `cpio` binary, and the format is a fixed
//! 110-byte ASCII header per entry; it also lets the archive hold `/dev/console`
//! (a character device) without root.

use std::io::{self, Write};

const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Writes entries in order; [`Cpio::finish`] adds the trailer.
pub(crate) struct Cpio<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> Cpio<W> {
    pub(crate) fn new(out: W) -> Self {
        Cpio {
            out,
            ino: 1,
            written: 0,
        }
    }

    /// A directory (`path` without a leading `/`).
    pub(crate) fn dir(&mut self, path: &str) -> io::Result<()> {
        self.entry(path, S_IFDIR | 0o755, (0, 0), b"")
    }

    /// A regular file with `mode`'s permission bits.
    pub(crate) fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | (mode & 0o7777), (0, 0), data)
    }

    /// A symbolic link to `target`.
    pub(crate) fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    /// A character device node.
    pub(crate) fn char_device(&mut self, path: &str, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, S_IFCHR | 0o600, (major, minor), b"")
    }

    /// The trailer; returns the writer and the archive's size.
    pub(crate) fn finish(mut self) -> io::Result<(W, u64)> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, (0, 0), b"")?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file above 4 GiB"))?;
        let name_size = path.len() as u32 + 1;
        let ino = self.ino;
        self.ino += 1;
        let nlink = if mode & 0o170_000 == S_IFDIR { 2 } else { 1 };
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
        // devminor, rdevmajor, rdevminor, namesize, check.
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{name_size:08x}{:08x}",
            0, 0, 0, 0, 0, rdev.0, rdev.1, 0
        );
        self.put(header.as_bytes())?;
        self.put(path.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0; 3][..pad])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_end_with_the_trailer() {
        let mut cpio = Cpio::new(Vec::new());
        cpio.dir("bin").unwrap();
        cpio.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        cpio.symlink("bin/sh", "busybox").unwrap();
        cpio.char_device("dev/console", 5, 1).unwrap();
        let (bytes, size) = cpio.finish().unwrap();
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(size % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("init\0"));
        assert!(text.contains("TRAILER!!!\0"));
        // The init file: mode 0100755, 10 bytes.
        let init = text.find("init\0").unwrap();
        let header = &text[init - 110..init];
        assert_eq!(&header[14..22], "000081ed");
        assert_eq!(&header[54..62], "0000000a");
        // The device: rdev 5:1.
        let console = text.find("dev/console\0").unwrap();
        let header = &text[console - 110..console];
        assert_eq!(&header[78..86], "00000005");
        assert_eq!(&header[86..94], "00000001");
    }
}
