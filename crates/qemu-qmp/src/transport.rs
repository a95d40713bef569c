//! Sockets: connecting, listening, non-blocking reads and writes, and file descriptor
//! passing with `SCM_RIGHTS`.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Notify;
use tracing::warn;

use crate::address::Address;

/// A connected stream socket.
#[derive(Debug)]
pub(crate) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    /// Connect to an address (or adopt an already-connected socket).
    pub(crate) async fn connect(address: Address) -> io::Result<Stream> {
        match address {
            Address::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path).await?)),
            Address::Tcp { host, port } => {
                let s = TcpStream::connect((host.as_str(), port)).await?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Address::UnixStream(s) => {
                s.set_nonblocking(true)?;
                Ok(Stream::Unix(UnixStream::from_std(s)?))
            }
            Address::TcpStream(s) => {
                s.set_nonblocking(true)?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(TcpStream::from_std(s)?))
            }
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Stream::Unix(_) => "Unix socket",
            Stream::Tcp(_) => "TCP socket",
        }
    }

    pub(crate) async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.readable().await,
            Stream::Tcp(s) => s.readable().await,
        }
    }

    /// Read what is available into the spare capacity of `buf`.
    pub(crate) fn try_read_buf(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.try_read_buf(buf),
            Stream::Tcp(s) => s.try_read_buf(buf),
        }
    }

    /// A read into `scratch`, also taking the descriptors that came with the bytes
    /// (`SCM_RIGHTS`): they are appended to `fds`, close-on-exec. On a Unix socket
    /// this is one `recvmsg`; a TCP socket cannot carry descriptors, so there it is a
    /// plain read. Descriptors beyond the [`SCM_MAX_FD`] that one message can carry
    /// cannot arrive; should the kernel still truncate the control data, the lost
    /// descriptors are closed by it and a warning is logged.
    ///
    /// `recvmsg` takes initialised memory, so the caller keeps one `scratch` buffer
    /// (e.g. [`READ_WINDOW`] bytes, zeroed once) and copies what was read: zeroing
    /// 64 KiB of a decoder's spare capacity before every read measured 22 % of the
    /// instructions of the pipelined benchmark, copying a small request costs nothing
    /// comparable.
    #[cfg_attr(not(feature = "server"), allow(dead_code))] // Used by the test server.
    pub(crate) fn try_read_with_fds(
        &self,
        scratch: &mut [u8],
        fds: &mut Vec<OwnedFd>,
    ) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read(scratch),
            Stream::Unix(s) => s.try_io(Interest::READABLE, || {
                recv_with_fds(s.as_fd(), scratch, fds)
            }),
        }
    }

    pub(crate) async fn writable(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.writable().await,
            Stream::Tcp(s) => s.writable().await,
        }
    }

    /// Write without blocking; with `fds`, they travel with the first byte
    /// (`SCM_RIGHTS`), which needs a Unix socket.
    pub(crate) fn try_write(&self, data: &[u8], fds: &[OwnedFd]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) if !fds.is_empty() => s.try_io(tokio::io::Interest::WRITABLE, || {
                send_with_fds(s.as_fd(), data, fds)
            }),
            Stream::Unix(s) => s.try_write(data),
            Stream::Tcp(_) if !fds.is_empty() => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "file descriptors can only be passed over a Unix socket",
            )),
            Stream::Tcp(s) => s.try_write(data),
        }
    }

    /// Write several buffers in one call, without blocking (no descriptors).
    pub(crate) fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.try_write_vectored(bufs),
            Stream::Tcp(s) => s.try_write_vectored(bufs),
        }
    }

    /// Shut down both directions, waking the peer and our own reader.
    pub(crate) fn shutdown(&self) {
        self.shutdown_how(rustix::net::Shutdown::Both);
    }

    /// Shut down the sending direction: the peer reads the end of the stream, and we
    /// can still read what it sends.
    #[cfg_attr(not(feature = "server"), allow(dead_code))] // Used by the test server.
    pub(crate) fn shutdown_write(&self) {
        self.shutdown_how(rustix::net::Shutdown::Write);
    }

    fn shutdown_how(&self, how: rustix::net::Shutdown) {
        let fd = match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        };
        // Errors (already shut down, not connected) leave nothing to do.
        let _ = rustix::net::shutdown(fd, how);
    }

    /// True for Unix sockets, which can carry file descriptors.
    pub(crate) fn can_pass_fds(&self) -> bool {
        matches!(self, Stream::Unix(_))
    }
}

fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[OwnedFd]) -> io::Result<usize> {
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space =
        vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(borrowed.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many file descriptors for one message",
        ));
    }
    let n = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(data)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(n)
}

/// The size of the scratch buffer a reader keeps for [`Stream::try_read_with_fds`].
#[cfg_attr(not(feature = "server"), allow(dead_code))] // Used by the test server.
pub(crate) const READ_WINDOW: usize = 64 * 1024;

/// Room for the control data of one message with [`SCM_MAX_FD`] descriptors.
#[cfg_attr(not(feature = "server"), allow(dead_code))] // Used by the test server.
const RECV_CMSG_SPACE: usize = rustix::cmsg_space!(ScmRights(SCM_MAX_FD));

/// One `recvmsg` into `buf`, taking the descriptors that came with the bytes
/// (close-on-exec).
#[cfg_attr(not(feature = "server"), allow(dead_code))] // Used by the test server.
fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::<u8>::uninit(); RECV_CMSG_SPACE];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let n = msg.bytes;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        warn!("control data truncated: some descriptors the peer sent were dropped");
    }
    Ok(n)
}

/// A listening socket for server mode. A Unix socket file we created is removed when
/// the listener is dropped.
#[derive(Debug)]
pub(crate) enum Listener {
    Unix {
        listener: UnixListener,
        /// The socket file to remove, if we created it.
        path: Option<PathBuf>,
    },
    Tcp(TcpListener),
}

impl Listener {
    pub(crate) fn bind(address: &Address) -> io::Result<Listener> {
        match address {
            Address::Unix(path) => Ok(Listener::Unix {
                listener: UnixListener::bind(path)?,
                path: Some(path.clone()),
            }),
            Address::Tcp { host, port } => {
                let std = std::net::TcpListener::bind((host.as_str(), *port))?;
                std.set_nonblocking(true)?;
                Ok(Listener::Tcp(TcpListener::from_std(std)?))
            }
            Address::UnixStream(_) | Address::TcpStream(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot listen on an already-connected socket",
            )),
        }
    }

    /// Adopt a listening Unix socket made by the caller (its file is left alone).
    pub(crate) fn from_std_unix(l: std::os::unix::net::UnixListener) -> io::Result<Listener> {
        l.set_nonblocking(true)?;
        Ok(Listener::Unix {
            listener: UnixListener::from_std(l)?,
            path: None,
        })
    }

    /// Adopt a listening TCP socket made by the caller.
    pub(crate) fn from_std_tcp(l: std::net::TcpListener) -> io::Result<Listener> {
        l.set_nonblocking(true)?;
        Ok(Listener::Tcp(TcpListener::from_std(l)?))
    }

    pub(crate) async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Unix { listener, .. } => Ok(Stream::Unix(listener.accept().await?.0)),
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
        }
    }

    /// Where the listener is, for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Listener::Unix { listener, path } => match path {
                Some(p) => p.display().to_string(),
                None => listener
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                    .unwrap_or_else(|| "unix listener".into()),
            },
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "tcp listener".into()),
        }
    }

    /// The local TCP address, when listening on TCP.
    pub(crate) fn local_tcp_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix { .. } => None,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix { path: Some(p), .. } = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The most descriptors one `sendmsg` can pass: Linux's `SCM_MAX_FD`. With more, the
/// kernel refuses the whole message with `EINVAL`.
pub(crate) const SCM_MAX_FD: usize = 253;

/// Why [`Writer::send`] failed.
#[derive(Debug)]
pub(crate) enum SendError {
    /// This message was refused before any byte of it was written (descriptors the
    /// kernel will not pass, or a transport that cannot carry them). The connection is
    /// unharmed and stays at a message boundary.
    Rejected(io::Error),
    /// The connection is closed, or the write broke it.
    Closed(io::Error),
}

/// A queued message that the kernel refused before any byte of it was written; the
/// writer dropped it and went on with the next.
#[derive(Debug)]
pub(crate) struct Rejected {
    /// The tag the message was sent with.
    pub(crate) tag: Option<u64>,
    /// What `sendmsg` said.
    pub(crate) error: io::Error,
}

/// True for the errors with which `sendmsg` refuses one message because of its
/// `SCM_RIGHTS` data, writing nothing: too many descriptors or one that cannot be
/// passed (`EINVAL`), too many descriptors in flight (`ETOOMANYREFS`), a descriptor
/// that is not open (`EBADF`). The socket itself is fine, so only that message fails.
/// (Every other error, and any error once a byte of the message was written, is the
/// connection's.)
fn refuses_message(e: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(e),
        Some(Errno::INVAL | Errno::TOOMANYREFS | Errno::BADF)
    ) || (e.kind() == io::ErrorKind::InvalidInput && e.raw_os_error().is_none())
}

/// Ordered, cancel-safe writes.
///
/// A message is written straight from the caller's thread when the socket can take it
/// (the common case: no hop through another task). What the socket cannot take at once
/// is queued, and a flusher task finishes it in order, so a caller that stops waiting
/// never leaves half a message on the wire.
///
/// A message with descriptors that the kernel refuses before writing any of its bytes
/// ([`refuses_message`]) is that message's failure, not the connection's: it is
/// dropped, reported with its tag (to the caller of [`send`](Self::send), or to the
/// flusher's `on_reject`), and the next message is written. Descriptors travel with a
/// message's first byte, so once a byte is written no such refusal can come.
#[derive(Debug)]
pub(crate) struct Writer {
    stream: Arc<Stream>,
    queue: Mutex<WriteQueue>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct WriteQueue {
    chunks: VecDeque<Chunk>,
    /// Set when the socket failed or the session ended; later writes fail with it.
    closed: Option<io::ErrorKind>,
}

#[derive(Debug)]
struct Chunk {
    data: Vec<u8>,
    pos: usize,
    fds: Vec<OwnedFd>,
    /// Who to tell if the kernel refuses the message.
    tag: Option<u64>,
}

impl Writer {
    pub(crate) fn new(stream: Arc<Stream>) -> Writer {
        Writer {
            stream,
            queue: Mutex::new(WriteQueue::default()),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriteQueue> {
        // A panic while holding this lock cannot leave the queue inconsistent: every
        // critical section only pushes, pops or advances a position.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a message (and descriptors) and write as much of it as the socket takes
    /// now. `tag` names the message's owner should the kernel refuse it later, in the
    /// flusher. Fails with [`SendError::Rejected`] if this message is refused now (and
    /// nothing of it was written), with [`SendError::Closed`] if the connection is
    /// already closed or the write broke it.
    pub(crate) fn send(
        &self,
        data: Vec<u8>,
        fds: Vec<OwnedFd>,
        tag: Option<u64>,
    ) -> Result<(), SendError> {
        if !fds.is_empty() && !self.stream.can_pass_fds() {
            return Err(SendError::Rejected(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "file descriptors can only be passed over a Unix socket, and this connection is a {}",
                    self.stream.kind()
                ),
            )));
        }
        let mut q = self.lock();
        if let Some(kind) = q.closed {
            return Err(SendError::Closed(io::Error::new(
                kind,
                "the connection is closed",
            )));
        }
        let was_empty = q.chunks.is_empty();
        q.chunks.push_back(Chunk {
            data,
            pos: 0,
            fds,
            tag,
        });
        if was_empty {
            let mut rejected = Vec::new();
            match self.flush_locked(&mut q, &mut rejected) {
                Ok(done) => {
                    // Ours was the only message queued, so a refusal is ours.
                    if let Some(r) = rejected.pop() {
                        return Err(SendError::Rejected(r.error));
                    }
                    if done {
                        return Ok(());
                    }
                }
                Err(e) => {
                    q.closed = Some(e.kind());
                    q.chunks.clear();
                    drop(q);
                    self.wake.notify_one();
                    return Err(SendError::Closed(e));
                }
            }
        }
        drop(q);
        self.wake.notify_one();
        Ok(())
    }

    /// Write the front chunks that carry no descriptors, several at once; returns the
    /// bytes written.
    fn write_batch(&self, q: &WriteQueue) -> io::Result<usize> {
        const MAX_BATCH: usize = 64;
        let mut slices = [io::IoSlice::new(&[]); MAX_BATCH];
        let mut n = 0;
        for chunk in q.chunks.iter().take(MAX_BATCH) {
            if !chunk.fds.is_empty() {
                break;
            }
            slices[n] = io::IoSlice::new(&chunk.data[chunk.pos..]);
            n += 1;
        }
        self.stream.try_write_vectored(&slices[..n])
    }

    /// Drop `n` written bytes from the front of the queue.
    fn consume(q: &mut WriteQueue, mut n: usize) {
        while n > 0 {
            let Some(chunk) = q.chunks.front_mut() else {
                return;
            };
            let left = chunk.data.len() - chunk.pos;
            if n < left {
                chunk.pos += n;
                return;
            }
            n -= left;
            q.chunks.pop_front();
        }
    }

    /// Write queued chunks until done (`Ok(true)`) or the socket is full (`Ok(false)`).
    /// Messages the kernel refuses before any of their bytes is written are dropped
    /// and added to `rejected`; any other error is the connection's. Consecutive
    /// messages without descriptors (queued while the socket was full) go in one
    /// vectored write.
    fn flush_locked(&self, q: &mut WriteQueue, rejected: &mut Vec<Rejected>) -> io::Result<bool> {
        while q.chunks.len() > 1 && q.chunks.front().is_some_and(|c| c.fds.is_empty()) {
            match self.write_batch(q) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => Self::consume(q, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        while let Some(chunk) = q.chunks.front_mut() {
            match self.stream.try_write(&chunk.data[chunk.pos..], &chunk.fds) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    // Descriptors went with the first byte written.
                    chunk.fds.clear();
                    chunk.pos += n;
                    if chunk.pos == chunk.data.len() {
                        q.chunks.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Nothing of this message is on the wire (its descriptors would have
                // gone with its first byte): the stream is still at a message
                // boundary, so drop it and go on with the next.
                Err(e) if chunk.pos == 0 && !chunk.fds.is_empty() && refuses_message(&e) => {
                    let tag = chunk.tag;
                    q.chunks.pop_front();
                    rejected.push(Rejected { tag, error: e });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// The flusher: finishes queued writes whenever the socket becomes writable,
    /// handing each message the kernel refuses to `on_reject`. Returns when the writer
    /// is closed, or with the error that broke the socket.
    pub(crate) async fn run_flusher(&self, on_reject: impl Fn(Rejected)) -> io::Result<()> {
        loop {
            self.wake.notified().await;
            loop {
                let mut rejected = Vec::new();
                let flushed = {
                    let mut q = self.lock();
                    if q.closed.is_some() {
                        return Ok(());
                    }
                    let flushed = self.flush_locked(&mut q, &mut rejected);
                    if let Err(e) = &flushed {
                        q.closed = Some(e.kind());
                        q.chunks.clear();
                    }
                    flushed
                };
                // Outside the lock: the owner's handler may take other locks.
                rejected.into_iter().for_each(&on_reject);
                if flushed? {
                    break;
                }
                self.stream.writable().await?;
            }
        }
    }

    /// Write everything queued, waiting for the socket as needed; messages the kernel
    /// refuses go to `on_reject`.
    pub(crate) async fn flush(&self, on_reject: impl Fn(Rejected)) -> io::Result<()> {
        loop {
            let mut rejected = Vec::new();
            let flushed = {
                let mut q = self.lock();
                if q.closed.is_some() {
                    return Err(io::ErrorKind::NotConnected.into());
                }
                self.flush_locked(&mut q, &mut rejected)
            };
            rejected.into_iter().for_each(&on_reject);
            if flushed? {
                return Ok(());
            }
            self.stream.writable().await?;
        }
    }

    /// True when nothing is waiting to be written.
    pub(crate) fn is_flushed(&self) -> bool {
        self.lock().chunks.is_empty()
    }

    /// Refuse further writes and drop what is queued; stops the flusher.
    pub(crate) fn close(&self) {
        let mut q = self.lock();
        if q.closed.is_none() {
            q.closed = Some(io::ErrorKind::NotConnected);
        }
        q.chunks.clear();
        drop(q);
        self.wake.notify_one();
    }
}

/// Duplicate a descriptor (close-on-exec) so that it can be sent later even if the
/// caller closes its own copy.
pub(crate) fn dup_fd(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;
    use std::time::Duration;

    use rustix::io::Errno;
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use tokio::io::AsyncReadExt;

    const T: Duration = Duration::from_secs(10);

    fn writer_and_peer() -> (Writer, UnixStream) {
        let (ours, peer) = UnixStream::pair().expect("socketpair");
        (Writer::new(Arc::new(Stream::Unix(ours))), peer)
    }

    fn copies(n: usize) -> Vec<OwnedFd> {
        let file = tempfile::tempfile().expect("tempfile");
        (0..n).map(|_| dup_fd(file.as_fd()).expect("dup")).collect()
    }

    fn errno(e: &io::Error) -> Option<Errno> {
        Errno::from_io_error(e)
    }

    /// Read what is there (the writes were synchronous), counting descriptors.
    fn read_available(peer: &UnixStream) -> (Vec<u8>, usize) {
        let mut data = Vec::new();
        let mut fds = 0;
        loop {
            let mut buf = [0u8; 4096];
            let mut space =
                vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(SCM_MAX_FD))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            match rustix::net::recvmsg(
                peer,
                &mut [io::IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::DONTWAIT,
            ) {
                Ok(r) if r.bytes == 0 => break,
                Ok(r) => {
                    data.extend_from_slice(&buf[..r.bytes]);
                    for m in control.drain() {
                        if let RecvAncillaryMessage::ScmRights(received) = m {
                            fds += received.count();
                        }
                    }
                }
                Err(Errno::AGAIN) => break,
                Err(e) => panic!("recvmsg: {e}"),
            }
        }
        (data, fds)
    }

    /// Wait until `stream` has something, then read it with its descriptors.
    async fn read_with_fds(stream: &Stream, buf: &mut Vec<u8>, fds: &mut Vec<OwnedFd>) -> usize {
        let mut scratch = [0u8; 4096];
        loop {
            tokio::time::timeout(T, stream.readable())
                .await
                .expect("readable in time")
                .unwrap();
            match stream.try_read_with_fds(&mut scratch, fds) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => {
                    let n = r.unwrap();
                    buf.extend_from_slice(&scratch[..n]);
                    return n;
                }
            }
        }
    }

    #[tokio::test]
    async fn reads_take_the_descriptors_that_came_with_the_bytes_close_on_exec() {
        let (ours, peer) = UnixStream::pair().expect("socketpair");
        let stream = Stream::Unix(ours);
        let identity = |fd: BorrowedFd<'_>| {
            let st = rustix::fs::fstat(fd).expect("fstat");
            (st.st_dev, st.st_ino)
        };
        let file = tempfile::tempfile().expect("tempfile");
        // Descriptors without close-on-exec on the sending side: the flag on ours
        // comes from the receiving read.
        let plain: Vec<OwnedFd> = (0..2)
            .map(|_| rustix::io::dup(file.as_fd()).expect("dup"))
            .collect();
        assert!(!rustix::io::fcntl_getfd(&plain[0])
            .unwrap()
            .contains(rustix::io::FdFlags::CLOEXEC));
        assert_eq!(send_with_fds(peer.as_fd(), b"one", &plain).unwrap(), 3);

        let mut buf = b"kept".to_vec();
        let mut fds = Vec::new();
        assert_eq!(read_with_fds(&stream, &mut buf, &mut fds).await, 3);
        assert_eq!(buf, b"keptone");
        assert_eq!(fds.len(), 2);
        for fd in &fds {
            assert!(rustix::io::fcntl_getfd(fd)
                .unwrap()
                .contains(rustix::io::FdFlags::CLOEXEC));
            assert_eq!(identity(fd.as_fd()), identity(file.as_fd()));
        }

        // Bytes without descriptors: a read that adds none.
        peer.try_write(b"two").unwrap();
        let mut more = Vec::new();
        assert_eq!(read_with_fds(&stream, &mut buf, &mut more).await, 3);
        assert_eq!(buf, b"keptonetwo");
        assert!(more.is_empty());

        // Nothing there: it would block; then the end of the stream.
        let e = stream
            .try_read_with_fds(&mut [0u8; 16], &mut more)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(peer);
        assert_eq!(read_with_fds(&stream, &mut buf, &mut more).await, 0);
        assert_eq!(buf, b"keptonetwo");
    }

    #[tokio::test]
    async fn reads_on_tcp_are_plain_reads() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let stream = Stream::Tcp(TcpStream::from_std(server).unwrap());
        std::io::Write::write_all(&mut &client, b"{}\n").unwrap();
        let (mut buf, mut fds) = (Vec::new(), Vec::new());
        assert_eq!(read_with_fds(&stream, &mut buf, &mut fds).await, 3);
        assert_eq!((buf.as_slice(), fds.len()), (&b"{}\n"[..], 0));
    }

    #[test]
    fn refusals_of_one_message_are_told_apart_from_broken_connections() {
        for e in [Errno::INVAL, Errno::TOOMANYREFS, Errno::BADF] {
            assert!(refuses_message(&e.into()), "{e:?}");
        }
        for e in [Errno::PIPE, Errno::CONNRESET, Errno::NOTCONN, Errno::NOBUFS] {
            assert!(!refuses_message(&e.into()), "{e:?}");
        }
    }

    #[test]
    fn consuming_a_batch_stops_inside_a_partly_written_message() {
        let mut q = WriteQueue::default();
        for m in ["abc", "de", "f"] {
            q.chunks.push_back(Chunk {
                data: m.as_bytes().to_vec(),
                pos: 0,
                fds: Vec::new(),
                tag: None,
            });
        }
        Writer::consume(&mut q, 4);
        assert_eq!(q.chunks.len(), 2);
        assert_eq!(
            (q.chunks[0].data.as_slice(), q.chunks[0].pos),
            (&b"de"[..], 1)
        );
        Writer::consume(&mut q, 2);
        assert!(q.chunks.is_empty());
    }

    #[tokio::test]
    async fn the_kernel_passes_scm_max_fd_and_refuses_one_more_alone() {
        let (writer, peer) = writer_and_peer();
        writer
            .send(b"a".to_vec(), copies(SCM_MAX_FD), Some(1))
            .unwrap();
        match writer.send(b"b".to_vec(), copies(SCM_MAX_FD + 1), Some(2)) {
            Err(SendError::Rejected(e)) => assert_eq!(errno(&e), Some(Errno::INVAL), "{e}"),
            other => panic!("{other:?}"),
        }
        // The connection is unharmed and nothing of the refused message was written.
        writer.send(b"c".to_vec(), Vec::new(), None).unwrap();
        writer.send(b"d".to_vec(), copies(1), Some(3)).unwrap();
        assert!(writer.is_flushed());
        assert_eq!(read_available(&peer), (b"acd".to_vec(), SCM_MAX_FD + 1));
    }

    #[tokio::test]
    async fn a_queued_refused_message_is_reported_to_its_owner_and_skipped() {
        let (writer, mut peer) = writer_and_peer();
        let writer = Arc::new(writer);
        let refused = Arc::new(StdMutex::new(Vec::new()));
        let flusher = tokio::spawn({
            let writer = writer.clone();
            let refused = refused.clone();
            async move {
                writer
                    .run_flusher(|r| refused.lock().unwrap().push((r.tag, errno(&r.error))))
                    .await
            }
        });
        // More than the socket buffer holds: the rest waits in the queue.
        let big = vec![b'x'; 4 << 20];
        writer.send(big.clone(), Vec::new(), Some(1)).unwrap();
        assert!(!writer.is_flushed());
        // Queued behind it, so refused in the flusher.
        writer
            .send(b"REFUSED".to_vec(), copies(SCM_MAX_FD + 1), Some(7))
            .unwrap();
        writer.send(b"tail".to_vec(), copies(1), Some(8)).unwrap();

        let mut got = vec![0u8; big.len() + 4];
        tokio::time::timeout(T, peer.read_exact(&mut got))
            .await
            .expect("bounded")
            .unwrap();
        assert!(got.starts_with(&big) && got.ends_with(b"tail"));
        assert_eq!(*refused.lock().unwrap(), [(Some(7), Some(Errno::INVAL))]);
        writer.close();
        tokio::time::timeout(T, flusher)
            .await
            .expect("bounded")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_failure_after_the_first_byte_is_the_connections() {
        let (writer, peer) = writer_and_peer();
        let writer = Arc::new(writer);
        // Part of it is written at once, descriptors with the first byte.
        writer
            .send(vec![b'x'; 4 << 20], copies(1), Some(1))
            .unwrap();
        assert!(!writer.is_flushed());
        let refused = Arc::new(StdMutex::new(Vec::new()));
        let flusher = tokio::spawn({
            let writer = writer.clone();
            let refused = refused.clone();
            async move {
                writer
                    .run_flusher(|r| refused.lock().unwrap().push(r.tag))
                    .await
            }
        });
        writer.send(b"more".to_vec(), Vec::new(), None).unwrap();
        drop(peer);
        let err = tokio::time::timeout(T, flusher)
            .await
            .expect("bounded")
            .unwrap()
            .unwrap_err();
        assert_eq!(errno(&err), Some(Errno::PIPE), "{err}");
        assert!(refused.lock().unwrap().is_empty());
        assert!(matches!(
            writer.send(b"late".to_vec(), Vec::new(), None),
            Err(SendError::Closed(_))
        ));
    }
}
