//! The file system: FUSE requests answered from QMP.
//!
//! Every request that needs QEMU is answered from a task on the tokio runtime, so
//! the FUSE thread never waits for QEMU; each QMP command is bounded by the client's
//! command timeout, after which the request fails with `ETIMEDOUT`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyWrite, Request, WriteFlags,
};
use tokio::runtime::Handle;
use tracing::debug;

use super::errno::{errno_for, Op};
use super::inodes::{link_target, Inodes, Kind, Node};
use super::Options;
use crate::qom::{python_str, typed_value, PropertyInfo, Qom, QomError};

/// What an unset link (QEMU's value `""`) points to: a name no QOM object has
/// (no property name has parentheses), so it dangles.
pub(crate) const UNSET_LINK: &str = "(unset)";

/// A listing, and when it was fetched.
#[derive(Debug)]
struct Listing {
    at: Instant,
    items: Arc<Vec<PropertyInfo>>,
}

/// An open property file: the value read at offset 0 (later reads continue in it,
/// so that one `cat` sees one value), and what was written so far.
#[derive(Debug, Default)]
struct OpenFile {
    value: Option<Arc<Vec<u8>>>,
    written: Vec<u8>,
}

/// State shared by the FUSE thread and the tasks answering it.
#[derive(Debug)]
struct Shared {
    qom: Qom,
    options: Options,
    inodes: Mutex<Inodes>,
    listings: Mutex<HashMap<String, Listing>>,
    files: Mutex<HashMap<u64, OpenFile>>,
    next_fh: AtomicU64,
    uid: u32,
    gid: u32,
    time: SystemTime,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn node(&self, ino: INodeNo) -> Option<Node> {
        lock(&self.inodes).get(ino).cloned()
    }

    /// `qom-list path`, from the cache when younger than the cache time.
    async fn list(&self, path: &str) -> Result<Arc<Vec<PropertyInfo>>, Errno> {
        let ttl = self.options.cache_ttl;
        if let Some(l) = lock(&self.listings).get(path) {
            if l.at.elapsed() < ttl {
                return Ok(l.items.clone());
            }
        }
        let items = match self.qom.list(path).await {
            Ok(items) => Arc::new(items),
            Err(e) => {
                debug!("qom-list {path}: {e}");
                lock(&self.listings).remove(path);
                return Err(errno_for(Op::List, &e));
            }
        };
        if !ttl.is_zero() {
            lock(&self.listings).insert(
                path.to_owned(),
                Listing {
                    at: Instant::now(),
                    items: items.clone(),
                },
            );
        }
        Ok(items)
    }

    /// The entry `name` of object `parent` as it is now: its inode and kind.
    async fn entry(&self, parent: &str, name: &str) -> Result<(INodeNo, Kind), Errno> {
        let items = self.list(parent).await?;
        let info = items.iter().find(|p| p.name == name).ok_or(Errno::ENOENT)?;
        let kind = Kind::of(&info.type_);
        let ino = lock(&self.inodes).intern(parent, name, kind.clone());
        Ok((ino, kind))
    }

    /// The node of `ino`, checked against its parent's listing (the object or
    /// property may have gone).
    async fn current(&self, ino: INodeNo) -> Result<(INodeNo, Node), Errno> {
        let node = self.node(ino).ok_or(Errno::ENOENT)?;
        let Some(parent) = &node.parent else {
            return Ok((ino, node));
        };
        let (ino2, kind) = self.entry(parent, &node.name).await?;
        Ok((ino2, Node { kind, ..node }))
    }

    fn attr(&self, ino: INodeNo, kind: &Kind) -> FileAttr {
        let w = self.options.writable;
        let (perm, nlink) = match kind {
            Kind::Object => (if w { 0o755 } else { 0o555 }, 2),
            Kind::Link => (0o777, 1),
            Kind::Property { .. } => (if w { 0o644 } else { 0o444 }, 1),
        };
        FileAttr {
            ino,
            // As Python's qom-fuse: values are read with direct I/O, so the size only
            // has to be non-zero for programs that look at it first.
            size: 4096,
            blocks: 8,
            atime: self.time,
            mtime: self.time,
            ctime: self.time,
            crtime: self.time,
            kind: kind.file_type(),
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The value of property `node` as a file holds it: Python's `str()` of the
    /// value and a newline, as `qom get` prints a scalar.
    async fn read_value(&self, node: &Node) -> Result<Vec<u8>, Errno> {
        let parent = node.parent.as_deref().ok_or(Errno::EISDIR)?;
        match self.qom.get(parent, &node.name).await {
            Ok(v) => Ok(format!("{}\n", python_str(&v)).into_bytes()),
            Err(e) => {
                debug!("qom-get {}: {e}", node.path);
                Err(errno_for(Op::Get, &e))
            }
        }
    }

    async fn write_value(&self, node: &Node, text: &[u8]) -> Result<(), Errno> {
        let (Some(parent), Kind::Property { type_ }) = (node.parent.as_deref(), &node.kind) else {
            return Err(Errno::EISDIR);
        };
        let text = std::str::from_utf8(text).map_err(|_| Errno::EINVAL)?;
        // `echo VALUE > file` writes a newline after the value.
        let text = text.strip_suffix('\n').unwrap_or(text);
        let what = || node.path.clone();
        let value = typed_value(type_, text).map_err(|reason| {
            debug!("{}: {reason}", what());
            errno_for(
                Op::Set,
                &QomError::BadValue {
                    what: what(),
                    reason,
                },
            )
        })?;
        match self.qom.set(parent, &node.name, value).await {
            Ok(_) => Ok(()),
            Err(e) => {
                debug!("qom-set {}: {e}", node.path);
                Err(errno_for(Op::Set, &e))
            }
        }
    }
}

/// The file system handed to `fuser`.
#[derive(Debug)]
pub(crate) struct QomFs {
    shared: Arc<Shared>,
    rt: Handle,
}

impl QomFs {
    pub(crate) fn new(qom: Qom, options: Options, rt: Handle) -> QomFs {
        QomFs {
            shared: Arc::new(Shared {
                qom,
                options,
                inodes: Mutex::new(Inodes::new()),
                listings: Mutex::default(),
                files: Mutex::default(),
                next_fh: AtomicU64::new(1),
                uid: rustix::process::geteuid().as_raw(),
                gid: rustix::process::getegid().as_raw(),
                time: SystemTime::now(),
            }),
            rt,
        }
    }

    /// Answer a request from a task: `f` gets the shared state.
    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(f(self.shared.clone()));
    }

    fn ttl(&self) -> Duration {
        self.shared.options.cache_ttl
    }
}

impl Filesystem for QomFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str().map(str::to_owned) else {
            return reply.error(Errno::ENOENT);
        };
        let ttl = self.ttl();
        self.spawn(move |s| async move {
            let Some(p) = s.node(parent) else {
                return reply.error(Errno::ENOENT);
            };
            if p.kind != Kind::Object {
                return reply.error(Errno::ENOTDIR);
            }
            match s.entry(&p.path, &name).await {
                Ok((ino, kind)) => reply.entry(&ttl, &s.attr(ino, &kind), Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ttl = self.ttl();
        self.spawn(move |s| async move {
            match s.current(ino).await {
                Ok((ino, node)) => reply.attr(&ttl, &s.attr(ino, &node.kind)),
                Err(e) => reply.error(e),
            }
        });
    }

    /// Only truncation, which `echo VALUE > file` asks for before writing: a no-op
    /// on a writable mount.
    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if !self.shared.options.writable {
            return reply.error(Errno::EROFS);
        }
        if mode.is_some() || uid.is_some() || gid.is_some() {
            return reply.error(Errno::EPERM);
        }
        let ttl = self.ttl();
        self.spawn(move |s| async move {
            match s.current(ino).await {
                Ok((_, node)) if size.is_some() && !matches!(node.kind, Kind::Property { .. }) => {
                    reply.error(Errno::EISDIR)
                }
                Ok((ino, node)) => reply.attr(&ttl, &s.attr(ino, &node.kind)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(move |s| async move {
            let Some(node) = s.node(ino) else {
                return reply.error(Errno::ENOENT);
            };
            let Some(parent) = node.parent.as_deref() else {
                return reply.error(Errno::EINVAL);
            };
            if node.kind != Kind::Link {
                return reply.error(Errno::EINVAL);
            }
            match s.qom.get(parent, &node.name).await {
                Ok(qemu_qmp::json::Ordered::String(target)) if target.starts_with('/') => {
                    reply.data(link_target(parent, &target).as_bytes())
                }
                // An unset link (""): a dangling link (an empty one would resolve
                // to its own directory).
                Ok(qemu_qmp::json::Ordered::String(t)) if t.is_empty() => {
                    reply.data(UNSET_LINK.as_bytes())
                }
                Ok(_) => reply.error(Errno::EIO),
                Err(e) => reply.error(errno_for(Op::Get, &e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writing = flags.acc_mode() != OpenAccMode::O_RDONLY;
        if writing && !self.shared.options.writable {
            return reply.error(Errno::EROFS);
        }
        match self.shared.node(ino) {
            Some(Node {
                kind: Kind::Property { .. },
                ..
            }) => {}
            Some(_) => return reply.error(Errno::EISDIR),
            None => return reply.error(Errno::ENOENT),
        }
        let fh = self.shared.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.files).insert(fh, OpenFile::default());
        // Direct I/O: every read comes to us (the value changes under the page
        // cache's feet), and the size in the attributes does not cut reads short.
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(move |s| async move {
            let Some(node) = s.node(ino) else {
                return reply.error(Errno::ENOENT);
            };
            // Offset 0 reads QEMU's value; later offsets continue in that value.
            let kept = match lock(&s.files).get(&fh.0) {
                Some(f) if offset > 0 => f.value.clone(),
                _ => None,
            };
            let value = match kept {
                Some(v) => v,
                None => match s.read_value(&node).await {
                    Ok(v) => {
                        let v = Arc::new(v);
                        if let Some(f) = lock(&s.files).get_mut(&fh.0) {
                            f.value = Some(v.clone());
                        }
                        v
                    }
                    Err(e) => return reply.error(e),
                },
            };
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(value.len());
            let end = start.saturating_add(size as usize).min(value.len());
            reply.data(&value[start..end]);
        });
    }

    /// Writes collect the value (from offset 0, in order); each write sets the
    /// property to what was written so far, with `qom set`'s conversion to the
    /// property's type, so an error reaches the `write` call.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if !self.shared.options.writable {
            return reply.error(Errno::EROFS);
        }
        let text = {
            let mut files = lock(&self.shared.files);
            let Some(f) = files.get_mut(&fh.0) else {
                return reply.error(Errno::EBADF);
            };
            if offset == 0 {
                f.written.clear();
            } else if offset != f.written.len() as u64 {
                // Only a value written from its start, in order.
                return reply.error(Errno::EINVAL);
            }
            f.written.extend_from_slice(data);
            f.written.clone()
        };
        let len = data.len() as u32;
        self.spawn(move |s| async move {
            let Some(node) = s.node(ino) else {
                return reply.error(Errno::ENOENT);
            };
            match s.write_value(&node, &text).await {
                Ok(()) => reply.written(len),
                Err(e) => reply.error(e),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.shared.files).remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.spawn(move |s| async move {
            let Some(node) = s.node(ino) else {
                return reply.error(Errno::ENOENT);
            };
            if node.kind != Kind::Object {
                return reply.error(Errno::ENOTDIR);
            }
            let items = match s.list(&node.path).await {
                Ok(items) => items,
                Err(e) => return reply.error(e),
            };
            let parent_ino = match &node.parent {
                // The parent's inode; the root is its own parent.
                Some(p) => lock(&s.inodes).lookup_path(p).unwrap_or(INodeNo::ROOT),
                None => INodeNo::ROOT,
            };
            let mut entries = vec![
                (ino, fuser::FileType::Directory, ".".to_owned()),
                (parent_ino, fuser::FileType::Directory, "..".to_owned()),
            ];
            {
                let mut inodes = lock(&s.inodes);
                for p in items.iter() {
                    let kind = Kind::of(&p.type_);
                    let t = kind.file_type();
                    entries.push((inodes.intern(&node.path, &p.name, kind), t, p.name.clone()));
                }
            }
            let skip = usize::try_from(offset).unwrap_or(usize::MAX);
            for (i, (ino, t, name)) in entries.into_iter().enumerate().skip(skip) {
                if reply.add(ino, (i + 1) as u64, t, name) {
                    break;
                }
            }
            reply.ok();
        });
    }
}
