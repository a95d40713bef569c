//! One connection once set up: [`Session`], the commands waiting for replies
//! ([`Pending`]), the reader that routes every message, and the writer's flusher.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, trace, warn, Instrument};

use super::handshake::MessageReader;
use super::request::swap_id;
use crate::error::{Error, ProtocolError, Result};
use crate::events::Registry;
use crate::framing::{Decoded, Decoder, JsonObject};
use crate::message::{self, request_command, Greeting, Message, Response};
use crate::runstate::Runstate;
use crate::transport::{Rejected, SendError, Stream, Writer, SCM_MAX_FD};

/// QEMU queues at most this many in-band commands per monitor once OOB is on; when the
/// queue is full it stops reading, and an `exec-oob` could not get through.
const QEMU_INBAND_QUEUE: usize = 8;

/// How long `disconnect()` waits for queued writes to drain before closing anyway.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// One connection: the socket, the writer, the commands waiting for replies, and the
/// reader and flusher tasks.
pub(super) struct Session {
    label: Arc<str>,
    stream: Arc<Stream>,
    pub(super) writer: Arc<Writer>,
    /// The peer's greeting: read while connecting, or, when the client did not wait
    /// for one (`await_greeting(false)`, as `qmp-shell -N` talks to QEMU), the first
    /// greeting the reader meets.
    pub(super) greeting: std::sync::OnceLock<Greeting>,
    pub(super) oob: bool,
    /// Keep each reply's and event's text, for their `ordered()` views
    /// ([`ClientBuilder::preserve_order`](crate::ClientBuilder::preserve_order)).
    keep_text: bool,
    /// Bounds in-band commands in flight when OOB is on.
    inband: Option<Arc<Semaphore>>,
    pending: Mutex<Pending>,
    ended: Notify,
    registry: Arc<Registry>,
    state: Arc<watch::Sender<Runstate>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Commands waiting for replies.
///
/// Every id on the wire is the library's own: a caller's id (`execute_raw`) is kept
/// aside and put back into the reply, so no caller id can collide with another
/// command's, and two callers may even use the same id at once.
#[derive(Default)]
pub(super) struct Pending {
    /// The one command sent without an id, if it waits.
    unnumbered: Option<Entry>,
    /// Indexed by the id on the wire. Ids are the smallest free numbers, so this is
    /// as long as the most commands ever in flight at once; a vector indexed by the
    /// id costs a fraction of hashing it (measured: the `SipHash` map took about
    /// 1,000 instructions per command, of some 14,000).
    numbered: Vec<Option<Entry>>,
    /// How many entries `numbered` holds.
    numbered_len: usize,
    /// Wire ids free for reuse (smallest first), and the next never used.
    free_ids: BinaryHeap<Reverse<u64>>,
    next_id: u64,
    /// Numbers every command, so that a message the kernel refuses finds its entry.
    next_seq: u64,
    ended: bool,
    cause: Option<Error>,
}

impl Pending {
    /// Give a request the shortest identity that is unambiguous: none at all when no
    /// id-less command is in flight (its reply is the one reply without an id) unless
    /// `numbered`, else the smallest free number. QEMU reads a monitor's input one
    /// byte per read call, so every byte of a request costs the round trip several
    /// microseconds.
    fn assign_id(&mut self, numbered: bool) -> Option<u64> {
        if !numbered && self.unnumbered.is_none() {
            return None;
        }
        Some(match self.free_ids.pop() {
            Some(Reverse(n)) => n,
            None => {
                self.next_id += 1;
                self.next_id - 1
            }
        })
    }

    /// The slot of wire id `n`, if one was ever handed out.
    fn slot(&mut self, n: u64) -> Option<&mut Option<Entry>> {
        self.numbered.get_mut(usize::try_from(n).ok()?)
    }

    /// Record the command waiting under `key` (from [`assign_id`](Self::assign_id)).
    fn insert(&mut self, key: Option<u64>, entry: Entry) {
        let Some(n) = key else {
            self.unnumbered = Some(entry);
            return;
        };
        // Ids come from `assign_id`, which counts up from 0: at most one past the end.
        let i = usize::try_from(n).unwrap_or(usize::MAX);
        if i >= self.numbered.len() {
            self.numbered.resize_with(i.saturating_add(1), || None);
        }
        if let Some(slot) = self.numbered.get_mut(i) {
            if slot.replace(entry).is_none() {
                self.numbered_len += 1;
            }
        }
    }

    /// Remove an entry, releasing its wire id.
    fn take(&mut self, key: &Option<u64>) -> Option<Entry> {
        let Some(n) = *key else {
            return self.unnumbered.take();
        };
        let entry = self.slot(n)?.take()?;
        self.numbered_len -= 1;
        self.free_ids.push(Reverse(n));
        Some(entry)
    }

    /// How many commands wait.
    pub(super) fn len(&self) -> usize {
        self.numbered_len + usize::from(self.unnumbered.is_some())
    }

    /// The key of some waiting command (the only one, when [`len`](Self::len) is 1).
    fn any_key(&self) -> Option<Option<u64>> {
        if self.unnumbered.is_some() {
            return Some(None);
        }
        let i = self.numbered.iter().position(Option::is_some)?;
        Some(Some(i as u64))
    }

    /// The key of the command numbered `seq`.
    fn key_of_seq(&self, seq: u64) -> Option<Option<u64>> {
        if self.unnumbered.as_ref().is_some_and(|e| e.seq == seq) {
            return Some(None);
        }
        let i = self
            .numbered
            .iter()
            .position(|e| e.as_ref().is_some_and(|e| e.seq == seq))?;
        Some(Some(i as u64))
    }

    /// Remove every entry.
    fn drain(&mut self) -> Vec<Entry> {
        self.numbered_len = 0;
        self.free_ids.clear();
        self.next_id = 0;
        let mut all: Vec<Entry> = self.unnumbered.take().into_iter().collect();
        all.extend(std::mem::take(&mut self.numbered).into_iter().flatten());
        all
    }
}

pub(super) struct Entry {
    tx: oneshot::Sender<Result<Response>>,
    command: String,
    /// This command's number (see [`Pending::next_seq`]).
    seq: u64,
    /// Held until the reply arrives, even if the caller stops waiting: the command
    /// still occupies the server's queue until then.
    _permit: Option<OwnedSemaphorePermit>,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start(
        stream: Stream,
        decoder: Decoder,
        reader: MessageReader,
        greeting: Option<Greeting>,
        oob: bool,
        keep_text: bool,
        label: Arc<str>,
        registry: Arc<Registry>,
        state: Arc<watch::Sender<Runstate>>,
    ) -> Arc<Session> {
        let stream = Arc::new(stream);
        let writer = Arc::new(Writer::new(stream.clone()));
        let session = Arc::new(Session {
            label: label.clone(),
            stream,
            writer: writer.clone(),
            greeting: greeting.map(std::sync::OnceLock::from).unwrap_or_default(),
            oob,
            keep_text,
            inband: oob.then(|| Arc::new(Semaphore::new(QEMU_INBAND_QUEUE - 1))),
            pending: Mutex::new(Pending::default()),
            ended: Notify::new(),
            registry,
            state,
            tasks: Mutex::new(Vec::new()),
        });
        let span = tracing::debug_span!("qmp", name = %label);
        let s = session.clone();
        let read_task = tokio::spawn(
            async move {
                let cause = s.read_loop(decoder, reader).await;
                s.end(Some(cause));
            }
            .instrument(span.clone()),
        );
        let s = session.clone();
        let flush_task = tokio::spawn(
            async move {
                if let Err(e) = writer.run_flusher(|r| s.rejected(r)).await {
                    let err = Error::io("writing to the peer", e);
                    s.end(Some(err));
                }
            }
            .instrument(span),
        );
        session
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend([read_task, flush_task]);
        session
    }

    pub(super) fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn cause(&self) -> Option<Error> {
        self.pending().cause.clone()
    }

    pub(super) async fn wait_ended(&self) {
        let notified = self.ended.notified();
        if self.pending().ended {
            return;
        }
        notified.await;
    }

    /// Read and route messages until the connection ends; returns why it ended.
    async fn read_loop(&self, mut decoder: Decoder, mut reader: MessageReader) -> Error {
        loop {
            let next = reader.read_with(
                &self.stream,
                &mut decoder,
                || self.registry.wake(),
                Decoder::decode_message,
            );
            match next.await {
                Ok(Some(Decoded::Event(e))) => {
                    trace!("<-- event {}", e.name());
                    self.registry.dispatch(&e);
                    tokio::task::consume_budget().await;
                }
                Ok(Some(Decoded::Object(obj))) => {
                    let text = self.keep_text.then(|| decoder.last_message());
                    if let Err(e) = self.route(obj, text) {
                        error!("{e}");
                        return e;
                    }
                    // Non-blocking reads never yield on their own: under a flood the
                    // reader would keep its worker, and a listener it just woke (which
                    // tokio parks in that worker's unstealable LIFO slot) would starve.
                    tokio::task::consume_budget().await;
                }
                Ok(None) => {
                    info!("the peer closed the connection");
                    return Error::ConnectionClosed { mid_message: false };
                }
                Err(e) => {
                    // A closed connection is routine; anything else is worth an error.
                    if e.is_disconnected() {
                        info!("{e}");
                    } else {
                        error!("session ended: {e}");
                    }
                    return e;
                }
            }
        }
    }

    fn route(&self, obj: JsonObject, text: Option<&[u8]>) -> Result<()> {
        match Message::classify_with_text(obj, text) {
            Message::Event(e) => {
                trace!("<-- event {}", e.name());
                self.registry.dispatch(&e);
                Ok(())
            }
            Message::Response(r) => self.deliver(r),
            Message::Greeting(g) => {
                // Not awaited (a monitor greets every client whether it waits or not):
                // the session's greeting. A second one is the peer's mistake.
                let text = serde_json::Value::Object(g.raw.clone());
                match self.greeting.set(g) {
                    Ok(()) => debug!("greeting, not awaited: {text}"),
                    Err(_) => warn!("unexpected second greeting dropped: {text}"),
                }
                Ok(())
            }
            Message::Command(o) | Message::Other(o) => {
                warn!(
                    "message that is neither a reply nor an event dropped: {}",
                    serde_json::Value::Object(o)
                );
                Ok(())
            }
        }
    }

    fn deliver(&self, reply: Response) -> Result<()> {
        // Every id we send is a number of ours: any other id is unknown.
        let key = match reply.id() {
            None => Some(None),
            Some(id) => id.as_u64().map(Some),
        };
        let entry = key.and_then(|key| {
            let mut p = self.pending();
            match p.take(&key) {
                Some(e) => Some(e),
                // A peer that does not echo ids: the reply belongs to the only command
                // in flight.
                None if key.is_none() && p.len() == 1 => {
                    let k = p.any_key();
                    k.and_then(|k| p.take(&k))
                }
                None => None,
            }
        });
        match entry {
            Some(e) => {
                trace!("<-- reply to '{}'", e.command);
                if let Err(Ok(r)) = e.tx.send(Ok(reply)) {
                    debug!(
                        "late reply to '{}' dropped (its caller stopped waiting): {}",
                        e.command,
                        serde_json::Value::Object(r.raw)
                    );
                }
                Ok(())
            }
            None if reply.id().is_none() && reply.is_error() => {
                let info = reply.error_info().ok().flatten();
                Err(ProtocolError::ServerParse {
                    class: info.as_ref().map(|i| i.class.clone()).unwrap_or_default(),
                    desc: info.map(|i| i.desc).unwrap_or_default(),
                }
                .into())
            }
            None => {
                warn!(
                    "reply with unknown id {} dropped: {}",
                    reply
                        .id()
                        .map_or_else(|| "(none)".to_owned(), |id| id.to_string()),
                    serde_json::Value::Object(reply.raw)
                );
                Ok(())
            }
        }
    }

    /// Send a request and wait for its reply.
    pub(super) async fn call(
        &self,
        msg: JsonObject,
        fds: Vec<OwnedFd>,
        timeout: Option<Duration>,
    ) -> Result<Response> {
        self.call_keep_request(msg, fds, timeout)
            .await
            .map(|(_, r)| r)
    }

    /// Send a request and wait for its reply; returns the request and the reply in
    /// the caller's terms (see [`call_inner`](Self::call_inner)).
    pub(super) async fn call_keep_request(
        &self,
        msg: JsonObject,
        fds: Vec<OwnedFd>,
        timeout: Option<Duration>,
    ) -> Result<(JsonObject, Response)> {
        let command = request_command(&msg).map(str::to_owned);
        let fd_count = fds.len();
        self.bounded(
            command.as_deref(),
            fd_count,
            timeout,
            self.call_inner(msg, fds),
        )
        .await
    }

    /// Send the command `command` (out of band if `oob`), written by `encode` under
    /// the wire id it is given, and wait for its reply: the request builder's path,
    /// which writes the request from its parts without building an object first.
    /// The reply keeps the wire id, if the peer echoed one.
    pub(super) async fn call_command(
        &self,
        command: &str,
        oob: bool,
        encode: impl FnOnce(Option<u64>) -> Vec<u8>,
        fds: Vec<OwnedFd>,
        timeout: Option<Duration>,
    ) -> Result<Response> {
        let fd_count = fds.len();
        let exchange = self.exchange(command, oob, false, encode, fds);
        self.bounded(Some(command), fd_count, timeout, exchange)
            .await
    }

    /// Fail at once with more descriptors than one message can pass; bound `call` by
    /// `timeout`.
    async fn bounded<T>(
        &self,
        command: Option<&str>,
        fd_count: usize,
        timeout: Option<Duration>,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        if fd_count > SCM_MAX_FD {
            return Err(Error::TooManyFds {
                command: command.unwrap_or("").to_owned(),
                count: fd_count,
                limit: SCM_MAX_FD,
            });
        }
        match timeout {
            None => call.await,
            Some(t) => tokio::time::timeout(t, call).await.map_err(|_| {
                let what = format!("the reply to '{}'", command.unwrap_or("(no command)"));
                Error::timeout(what, t)
            })?,
        }
    }

    /// Send a request object under an id of the library's and wait for its reply.
    ///
    /// The caller's id, if the request has one, never goes on the wire: it is kept
    /// aside and put back into the reply in place of the library's (a peer that
    /// echoes no id gets none added). The request returned is the caller's, as given.
    /// A request with an id of the caller's always gets a number on the wire, so that
    /// its reply is matched by id, as its caller asked; one without is sent without an
    /// id when no other id-less command is in flight.
    async fn call_inner(
        &self,
        mut msg: JsonObject,
        fds: Vec<OwnedFd>,
    ) -> Result<(JsonObject, Response)> {
        let command = request_command(&msg).unwrap_or("").to_owned();
        let oob = msg.contains_key("exec-oob");
        let caller_id = msg.remove("id");
        let reply = self
            .exchange(
                &command,
                oob,
                caller_id.is_some(),
                |key| message::encode_request(&msg, key),
                fds,
            )
            .await;
        if let Some(id) = &caller_id {
            msg.insert("id".into(), id.clone());
        }
        let mut reply = reply?;
        swap_id(&mut reply.raw, caller_id);
        Ok((msg, reply))
    }

    /// Send one request and wait for its reply: take a place in the in-band window
    /// (unless `oob`), a wire id (see [`Pending::assign_id`]; always a number if
    /// `numbered`), write what `encode` makes of it, and wait.
    async fn exchange(
        &self,
        command: &str,
        oob: bool,
        numbered: bool,
        encode: impl FnOnce(Option<u64>) -> Vec<u8>,
        fds: Vec<OwnedFd>,
    ) -> Result<Response> {
        let permit = match (&self.inband, oob) {
            (Some(sem), false) => Some(
                sem.clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| self.disconnected(Some(command)))?,
            ),
            _ => None,
        };
        let (tx, rx) = oneshot::channel();
        let (key, seq) = {
            let mut p = self.pending();
            if p.ended {
                let cause = p.cause.clone();
                return Err(Error::Disconnected {
                    command: Some(command.to_owned()),
                    cause: cause.map(Box::new),
                });
            }
            let key = p.assign_id(numbered);
            let seq = p.next_seq;
            p.next_seq += 1;
            p.insert(
                key,
                Entry {
                    tx,
                    command: command.to_owned(),
                    seq,
                    _permit: permit,
                },
            );
            (key, seq)
        };
        let bytes = encode(key);
        match key {
            Some(n) => trace!(name = %self.label, "--> {command} (id {n})"),
            None => trace!(name = %self.label, "--> {command}"),
        }
        if let Err(e) = self.writer.send(bytes, fds, Some(seq)) {
            self.pending().take(&key);
            return Err(self.send_error(Some(command), e));
        }
        match rx.await {
            Ok(reply) => reply,
            Err(_) => Err(self.disconnected(Some(command))),
        }
    }

    /// The kernel refused a queued message before writing any of it: fail its
    /// command (the session goes on).
    fn rejected(&self, r: Rejected) {
        let Some(seq) = r.tag else {
            warn!(
                "a descriptor sent with send_fd_scm was not sent: the kernel refused it: {}",
                r.error
            );
            return;
        };
        let entry = {
            let mut p = self.pending();
            let key = p.key_of_seq(seq);
            key.and_then(|k| p.take(&k))
        };
        // No entry: the session ended in the meantime, and its end failed the command.
        if let Some(e) = entry {
            warn!(
                "command '{}' was not sent: the kernel refused it: {}",
                e.command, r.error
            );
            let _ = e.tx.send(Err(Error::NotSent {
                command: Some(e.command),
                source: Arc::new(r.error),
            }));
        }
    }

    fn disconnected(&self, command: Option<&str>) -> Error {
        Error::Disconnected {
            command: command.map(str::to_owned),
            cause: self.cause().map(Box::new),
        }
    }

    /// The error for a failed [`Writer::send`]: a refused message fails only its
    /// command; a broken connection ends the session.
    pub(super) fn send_error(&self, command: Option<&str>, e: SendError) -> Error {
        let e = match e {
            SendError::Rejected(e) if e.kind() == io::ErrorKind::Unsupported => {
                return Error::InvalidRequest(e.to_string())
            }
            SendError::Rejected(e) => {
                return Error::NotSent {
                    command: command.map(str::to_owned),
                    source: Arc::new(e),
                }
            }
            SendError::Closed(e) => e,
        };
        if self.pending().ended || e.kind() == io::ErrorKind::NotConnected {
            return self.disconnected(command);
        }
        let err = Error::io("writing to the peer", e);
        self.end(Some(err.clone()));
        err
    }

    /// The session is over: fail every waiting command, end every listener, stop
    /// writing. Idempotent; the first cause wins.
    fn end(&self, cause: Option<Error>) {
        let entries = {
            let mut p = self.pending();
            if p.ended {
                return;
            }
            p.ended = true;
            p.cause = cause.clone();
            p.drain()
        };
        // Publish the state first, so that whoever is woken below sees it.
        self.state.send_if_modified(|s| {
            if *s == Runstate::Running {
                *s = Runstate::Disconnecting;
                true
            } else {
                false
            }
        });
        for e in entries {
            let _ = e.tx.send(Err(Error::Disconnected {
                command: Some(e.command),
                cause: cause.clone().map(Box::new),
            }));
        }
        if let Some(sem) = &self.inband {
            sem.close();
        }
        self.registry.close_all(cause.as_ref());
        self.writer.close();
        self.ended.notify_waiters();
    }

    /// Graceful close: flush, end, stop the tasks. Returns what ended the session
    /// before this call, if anything did.
    pub(super) async fn close(&self) -> Option<Error> {
        if !self.writer.is_flushed() {
            let flushed =
                tokio::time::timeout(FLUSH_TIMEOUT, self.writer.flush(|r| self.rejected(r))).await;
            match flushed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    debug!(name = %self.label, "could not flush before disconnecting: {e}")
                }
                Err(_) => {
                    warn!(name = %self.label, "disconnecting with unsent data: the peer did not read it within {FLUSH_TIMEOUT:?}")
                }
            }
        }
        let cause = self.cause();
        self.abort();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
        debug!(name = %self.label, "disconnected");
        cause
    }

    /// Immediate close, usable from `Drop`.
    pub(super) fn abort(&self) {
        self.end(None);
        self.stream.shutdown();
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::os::fd::AsFd;
    use std::pin::{pin, Pin};
    use std::task::Poll;

    use qemu_testkit::QemuProcess;
    use rustix::io::Errno;
    use serde_json::json;

    use super::*;
    use crate::transport::dup_fd;
    use crate::Client;

    const T: Duration = Duration::from_secs(10);

    fn entry(seq: u64) -> Entry {
        Entry {
            tx: oneshot::channel().0,
            command: "c".into(),
            seq,
            _permit: None,
        }
    }

    /// Wire ids: none while no id-less command waits, then the smallest free number;
    /// each entry is found by its id or its sequence number, once.
    #[test]
    fn pending_hands_out_the_shortest_ids_and_finds_each_entry_once() {
        let mut p = Pending::default();
        let mut keys = Vec::new();
        for seq in 0..4 {
            let key = p.assign_id(false);
            p.insert(key, entry(seq));
            keys.push(key);
        }
        assert_eq!(keys, [None, Some(0), Some(1), Some(2)]);
        assert_eq!(p.len(), 4);
        assert!(p.take(&Some(1)).is_some_and(|e| e.seq == 2));
        assert!(p.take(&Some(1)).is_none(), "taken twice");
        assert!(p.take(&Some(99)).is_none(), "an id never handed out");
        // The freed id comes back first; a caller's id always gets a number.
        assert_eq!(p.assign_id(true), Some(1));
        assert_eq!(p.assign_id(true), Some(3));
        assert_eq!(p.key_of_seq(3), Some(Some(2)));
        assert_eq!(p.key_of_seq(0), Some(None));
        assert_eq!(p.key_of_seq(2), None);
        assert!(p.take(&None).is_some());
        assert_eq!(p.assign_id(false), None);
        assert_eq!(p.len(), 2);
        assert_eq!(p.any_key(), Some(Some(0)));
        let all: Vec<u64> = p.drain().into_iter().map(|e| e.seq).collect();
        assert_eq!(all, [1, 3]);
        assert_eq!(p.len(), 0);
        assert_eq!(p.any_key(), None);
    }

    /// Poll once: that sends the request. It must still be waiting for its reply.
    async fn start<F: Future + Unpin>(call: &mut F) {
        let pending =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *call).poll(cx).is_pending()));
        assert!(pending.await, "completed at once");
    }

    fn copies(file: &std::fs::File, n: usize) -> Vec<OwnedFd> {
        (0..n).map(|_| dup_fd(file.as_fd()).expect("dup")).collect()
    }

    fn assert_refused_by_the_kernel(err: &Error) {
        match err {
            Error::NotSent {
                command: Some(c),
                source,
            } => {
                assert_eq!(c, "getfd");
                assert_eq!(Errno::from_io_error(source), Some(Errno::INVAL), "{source}");
            }
            other => panic!("expected NotSent, got {other:?}"),
        }
        assert!(!err.is_disconnected());
        assert!(err.to_string().contains("was not sent"), "{err}");
    }

    /// The kernel's own refusal (`sendmsg` → `EINVAL`), which the count check in
    /// `call_keep_request` normally pre-empts: reached here by sending 254
    /// descriptors through `call_inner` directly, against a real QEMU.
    #[tokio::test]
    async fn a_request_the_kernel_refuses_fails_alone_sent_at_once_or_queued() {
        qemu_testkit::require_qemu_system!();
        let (qemu, stream) = QemuProcess::system_with_socketpair(&[]);
        // A small send buffer, so that one long request keeps the queue busy: QEMU
        // reads its monitor a byte at a time.
        rustix::net::sockopt::set_socket_send_buffer_size(&stream, 4096).unwrap();
        let qmp = Client::builder()
            .command_timeout(T)
            .connect(stream)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}\n{}", qemu.log()));
        let session = qmp.session().unwrap();
        let file = tempfile::tempfile().unwrap();
        let getfd = message::make_request("getfd", Some(json!({"fdname": "many"})), false, None);

        // Refused at once, by the caller's own write.
        let err = session
            .call_inner(getfd.clone(), copies(&file, SCM_MAX_FD + 1))
            .await
            .unwrap_err();
        assert_refused_by_the_kernel(&err);
        assert_eq!(qmp.pending_commands(), 0);

        // Refused in the flusher, queued between two commands that go through.
        let pad = "x".repeat(64 * 1024);
        let mut long = pin!(qmp.execute("query-status", Some(json!({ "pad": pad }))));
        start(&mut long).await;
        assert!(
            !session.writer.is_flushed(),
            "the long request went out at once"
        );
        let mut refused = pin!(session.call_inner(getfd, copies(&file, SCM_MAX_FD + 1)));
        start(&mut refused).await;
        let mut after = pin!(qmp.execute("query-version", None));
        start(&mut after).await;
        assert_eq!(qmp.pending_commands(), 3);
        let (long, refused, after) =
            tokio::time::timeout(T, async { tokio::join!(long, refused, after) })
                .await
                .expect("bounded");
        // QEMU refuses the unknown argument, which shows it read the whole request.
        assert_eq!(long.unwrap_err().error_class(), Some("GenericError"));
        assert_refused_by_the_kernel(&refused.unwrap_err());
        assert!(after.unwrap()["qemu"].is_object());

        // The session goes on; a descriptor still passes.
        assert_eq!(qmp.runstate(), Runstate::Running);
        assert!(qmp.disconnect_cause().is_none());
        qmp.request("getfd")
            .arg("fdname", "one")
            .fd(&file)
            .send()
            .await
            .unwrap();
        qmp.execute("closefd", Some(json!({"fdname": "one"})))
            .await
            .unwrap();
        let err = qmp
            .execute("closefd", Some(json!({"fdname": "many"})))
            .await
            .unwrap_err();
        assert_eq!(err.error_class(), Some("GenericError"), "{err}");
        assert_eq!(qmp.pending_commands(), 0);
        qmp.disconnect().await.unwrap();
    }
}
