//! Sockets: connecting, listening, non-blocking reads and writes, and file descriptor
//! passing with `SCM_RIGHTS`.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Notify;

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

    /// Shut down both directions, waking the peer and our own reader.
    pub(crate) fn shutdown(&self) {
        let fd = match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        };
        // Errors (already shut down, not connected) leave nothing to do.
        let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Both);
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

/// Ordered, cancel-safe writes.
///
/// A message is written straight from the caller's thread when the socket can take it
/// (the common case: no hop through another task). What the socket cannot take at once
/// is queued, and a flusher task finishes it in order, so a caller that stops waiting
/// never leaves half a message on the wire.
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
    /// now. Returns an error if the connection is already closed or the write failed.
    pub(crate) fn send(&self, data: Vec<u8>, fds: Vec<OwnedFd>) -> io::Result<()> {
        if !fds.is_empty() && !self.stream.can_pass_fds() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "file descriptors can only be passed over a Unix socket, and this connection is a {}",
                    self.stream.kind()
                ),
            ));
        }
        let mut q = self.lock();
        if let Some(kind) = q.closed {
            return Err(io::Error::new(kind, "the connection is closed"));
        }
        let was_empty = q.chunks.is_empty();
        q.chunks.push_back(Chunk { data, pos: 0, fds });
        if was_empty {
            match self.flush_locked(&mut q) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    q.closed = Some(e.kind());
                    q.chunks.clear();
                    drop(q);
                    self.wake.notify_one();
                    return Err(e);
                }
            }
        }
        drop(q);
        self.wake.notify_one();
        Ok(())
    }

    /// Write queued chunks until done (`Ok(true)`) or the socket is full (`Ok(false)`).
    fn flush_locked(&self, q: &mut WriteQueue) -> io::Result<bool> {
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
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// The flusher: finishes queued writes whenever the socket becomes writable.
    /// Returns when the writer is closed, or with the error that broke the socket.
    pub(crate) async fn run_flusher(&self) -> io::Result<()> {
        loop {
            self.wake.notified().await;
            loop {
                {
                    let mut q = self.lock();
                    if q.closed.is_some() {
                        return Ok(());
                    }
                    match self.flush_locked(&mut q) {
                        Ok(true) => break,
                        Ok(false) => {}
                        Err(e) => {
                            q.closed = Some(e.kind());
                            q.chunks.clear();
                            return Err(e);
                        }
                    }
                }
                self.stream.writable().await?;
            }
        }
    }

    /// Write everything queued, waiting for the socket as needed.
    pub(crate) async fn flush(&self) -> io::Result<()> {
        loop {
            {
                let mut q = self.lock();
                if q.closed.is_some() {
                    return Err(io::ErrorKind::NotConnected.into());
                }
                if self.flush_locked(&mut q)? {
                    return Ok(());
                }
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
