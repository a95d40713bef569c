//! Event listeners.
//!
//! Any number of [`EventListener`]s can watch a client's events, each with its own
//! queue and its own choice of events (a set of names and/or a filter closure). The
//! reader never waits for a listener: each queue is bounded, and when a listener falls
//! behind, its oldest events are dropped and the listener is told how many it lost
//! ([`RecvError::Lagged`]) before it receives the next one. Losses are never silent.
//!
//! A listener's stream ends when the session it watches ends (the peer hung up, a
//! protocol error, or `disconnect()`); a listener created while the client is idle
//! watches the next session.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::error::Error;
use crate::message::Event;

/// The default number of events a listener buffers before it starts dropping the
/// oldest.
pub const DEFAULT_LISTENER_CAPACITY: usize = 4096;

type FilterFn = dyn Fn(&Event) -> bool + Send + Sync;

/// Which events a listener wants, and how many it may buffer.
///
/// ```
/// use qemu_qmp::ListenOptions;
/// let opts = ListenOptions::new()
///     .names(["BLOCK_JOB_COMPLETED", "BLOCK_JOB_ERROR"])
///     .filter(|e| e.data()["device"] == "job0")
///     .capacity(64);
/// # let _ = opts;
/// ```
#[derive(Clone)]
pub struct ListenOptions {
    names: Vec<String>,
    filter: Option<Arc<FilterFn>>,
    capacity: usize,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            names: Vec::new(),
            filter: None,
            capacity: DEFAULT_LISTENER_CAPACITY,
        }
    }
}

impl fmt::Debug for ListenOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenOptions")
            .field("names", &self.names)
            .field("filter", &self.filter.as_ref().map(|_| "<fn>"))
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl ListenOptions {
    /// All events, default capacity.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only events with one of these names (no names: all events).
    pub fn names<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.names.extend(names.into_iter().map(Into::into));
        self
    }

    /// Only events for which the closure returns true (applied after the names).
    /// It runs on the connection's reader, so it must be quick.
    pub fn filter(mut self, f: impl Fn(&Event) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Arc::new(f));
        self
    }

    /// How many events to buffer before the oldest are dropped (at least 1).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    fn accepts(&self, event: &Event) -> bool {
        (self.names.is_empty() || self.names.iter().any(|n| n == event.name()))
            && self.filter.as_ref().is_none_or(|f| f(event))
    }
}

/// Why [`EventListener::recv`] returned no event.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecvError {
    /// The listener fell behind and this many events were dropped; the next call
    /// returns the oldest event still buffered.
    #[error("the listener fell behind: {0} events were dropped")]
    Lagged(u64),
    /// The session ended; `cause` is what ended it when that was not a deliberate
    /// disconnect.
    #[error("the session ended{}", .0.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
    Closed(Option<Box<Error>>),
    /// No event arrived in time.
    #[error("no event arrived within {0:?}")]
    Timeout(Duration),
}

/// Why [`EventListener::try_recv`] returned no event.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TryRecvError {
    /// Nothing is queued right now.
    #[error("no event is queued")]
    Empty,
    /// See [`RecvError::Lagged`].
    #[error("the listener fell behind: {0} events were dropped")]
    Lagged(u64),
    /// See [`RecvError::Closed`].
    #[error("the session ended")]
    Closed(Option<Box<Error>>),
}

/// What the stream of an [`EventListener`] yields: an event, or the number of events
/// lost since the last item.
pub type StreamItem = Result<Event, Lagged>;

/// Events were dropped because the listener fell behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} events were dropped because the listener fell behind")]
pub struct Lagged(pub u64);

#[derive(Debug)]
enum Closed {
    Open,
    Closed(Option<Box<Error>>),
}

struct Queue {
    events: VecDeque<Event>,
    lost: u64,
    total_lost: u64,
    closed: Closed,
    waker: Option<Waker>,
}

pub(crate) struct Shared {
    options: ListenOptions,
    queue: Mutex<Queue>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offer an event; called by the reader.
    fn offer(&self, event: &Event) {
        if !self.options.accepts(event) {
            return;
        }
        let mut q = self.lock();
        if !matches!(q.closed, Closed::Open) {
            return;
        }
        if q.events.len() >= self.options.capacity {
            q.events.pop_front();
            q.lost += 1;
            q.total_lost += 1;
        }
        q.events.push_back(event.clone());
    }

    /// Wake the consumer if it waits and something is queued for it.
    fn wake_if_ready(&self) {
        let mut q = self.lock();
        if q.events.is_empty() && q.lost == 0 {
            return;
        }
        if let Some(w) = q.waker.take() {
            drop(q);
            w.wake();
        }
    }

    fn close(&self, cause: Option<&Error>) {
        let mut q = self.lock();
        if matches!(q.closed, Closed::Open) {
            q.closed = Closed::Closed(cause.map(|c| Box::new(c.clone())));
        }
        if let Some(w) = q.waker.take() {
            drop(q);
            w.wake();
        }
    }
}

/// The listeners of one client.
#[derive(Default)]
pub(crate) struct Registry {
    listeners: Mutex<Vec<Arc<Shared>>>,
    /// Set by `dispatch`, cleared by `wake`.
    undelivered: AtomicBool,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Shared>>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register(self: &Arc<Self>, options: ListenOptions) -> EventListener {
        let shared = Arc::new(Shared {
            options,
            queue: Mutex::new(Queue {
                events: VecDeque::new(),
                lost: 0,
                total_lost: 0,
                closed: Closed::Open,
                waker: None,
            }),
        });
        self.lock().push(shared.clone());
        EventListener {
            shared,
            registry: Arc::downgrade(self),
        }
    }

    /// Hand an event to every listener that wants it.
    ///
    /// Listeners are not woken here but by [`wake`](Self::wake), once per batch of
    /// messages: a consumer that keeps up would otherwise be woken (a thread switch)
    /// for every single event.
    pub(crate) fn dispatch(&self, event: &Event) {
        for l in self.lock().iter() {
            l.offer(event);
        }
        self.undelivered.store(true, Ordering::Release);
    }

    /// Wake the listeners that have events queued since the last call.
    pub(crate) fn wake(&self) {
        if !self.undelivered.swap(false, Ordering::AcqRel) {
            return;
        }
        for l in self.lock().iter() {
            l.wake_if_ready();
        }
    }

    /// End every listener's stream (the session ended) and forget them.
    pub(crate) fn close_all(&self, cause: Option<&Error>) {
        let listeners = std::mem::take(&mut *self.lock());
        for l in listeners {
            l.close(cause);
        }
    }

    fn remove(&self, shared: &Arc<Shared>) {
        self.lock().retain(|l| !Arc::ptr_eq(l, shared));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A queue of the events a client receives, chosen by name and/or filter
/// (Python: `EventListener`).
///
/// Made by [`Client::listen`](crate::Client::listen) or
/// [`Client::listen_with`](crate::Client::listen_with). Use it with
/// [`recv`](Self::recv), [`recv_timeout`](Self::recv_timeout),
/// [`try_recv`](Self::try_recv), or as a [`Stream`](futures_core::Stream). Dropping it
/// unregisters it.
pub struct EventListener {
    shared: Arc<Shared>,
    registry: Weak<Registry>,
}

impl fmt::Debug for EventListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = self.shared.lock();
        f.debug_struct("EventListener")
            .field("names", &self.shared.options.names)
            .field("pending", &q.events.len())
            .field("lost", &q.total_lost)
            .field("closed", &!matches!(q.closed, Closed::Open))
            .finish()
    }
}

impl Drop for EventListener {
    fn drop(&mut self) {
        if let Some(r) = self.registry.upgrade() {
            r.remove(&self.shared);
        }
    }
}

impl EventListener {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Event, RecvError>> {
        let mut q = self.shared.lock();
        match self.take(&mut q) {
            Err(TryRecvError::Empty) => {
                q.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Ok(e) => Poll::Ready(Ok(e)),
            Err(TryRecvError::Lagged(n)) => Poll::Ready(Err(RecvError::Lagged(n))),
            Err(TryRecvError::Closed(c)) => Poll::Ready(Err(RecvError::Closed(c))),
        }
    }

    fn take(&self, q: &mut Queue) -> Result<Event, TryRecvError> {
        if q.lost > 0 {
            let n = std::mem::take(&mut q.lost);
            return Err(TryRecvError::Lagged(n));
        }
        if let Some(e) = q.events.pop_front() {
            return Ok(e);
        }
        match &q.closed {
            Closed::Open => Err(TryRecvError::Empty),
            Closed::Closed(c) => Err(TryRecvError::Closed(c.clone())),
        }
    }

    /// The next event. Waits until one arrives, the listener learns it lost events, or
    /// the session ends. Cancel-safe: dropping the future loses nothing.
    pub async fn recv(&mut self) -> Result<Event, RecvError> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Wait for at least one event, then move every queued event (up to `limit`) into
    /// `buf` under one lock; returns how many were added. Cheaper per event than
    /// [`recv`](Self::recv) for a consumer that handles floods (like tokio's
    /// `mpsc::Receiver::recv_many`). Losses and the end of the session are reported as
    /// by `recv`, once the events queued before them have been taken.
    pub async fn recv_many(
        &mut self,
        buf: &mut Vec<Event>,
        limit: usize,
    ) -> Result<usize, RecvError> {
        std::future::poll_fn(|cx| {
            let mut q = self.shared.lock();
            if q.lost > 0 {
                let n = std::mem::take(&mut q.lost);
                return Poll::Ready(Err(RecvError::Lagged(n)));
            }
            if !q.events.is_empty() {
                let n = q.events.len().min(limit.max(1));
                buf.extend(q.events.drain(..n));
                return Poll::Ready(Ok(n));
            }
            match &q.closed {
                Closed::Open => {
                    q.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                Closed::Closed(c) => Poll::Ready(Err(RecvError::Closed(c.clone()))),
            }
        })
        .await
    }

    /// [`recv`](Self::recv) with a deadline.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Event, RecvError> {
        match tokio::time::timeout(timeout, self.recv()).await {
            Ok(r) => r,
            Err(_) => Err(RecvError::Timeout(timeout)),
        }
    }

    /// The next event if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Result<Event, TryRecvError> {
        let mut q = self.shared.lock();
        self.take(&mut q)
    }

    /// Remove and return every queued event (Python: `EventListener.clear()`).
    pub fn clear(&mut self) -> Vec<Event> {
        let mut q = self.shared.lock();
        q.lost = 0;
        q.events.drain(..).collect()
    }

    /// How many events are queued.
    pub fn pending(&self) -> usize {
        self.shared.lock().events.len()
    }

    /// True if no event is queued (Python: `empty()`).
    pub fn is_empty(&self) -> bool {
        self.pending() == 0
    }

    /// How many events this listener has lost in all because it fell behind.
    pub fn total_lost(&self) -> u64 {
        self.shared.lock().total_lost
    }

    /// True once the session this listener watched has ended.
    pub fn is_closed(&self) -> bool {
        !matches!(self.shared.lock().closed, Closed::Open)
    }

    /// Would this listener accept the event? (Python: `accept()`.)
    pub fn accepts(&self, event: &Event) -> bool {
        self.shared.options.accepts(event)
    }
}

impl futures_core::Stream for EventListener {
    type Item = StreamItem;

    /// Yields events, `Err(Lagged(n))` where events were lost, and ends when the
    /// session ends.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamItem>> {
        match self.get_mut().poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(e)) => Poll::Ready(Some(Ok(e))),
            Poll::Ready(Err(RecvError::Lagged(n))) => Poll::Ready(Some(Err(Lagged(n)))),
            Poll::Ready(Err(_)) => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(name: &str, n: i64) -> Event {
        Event::new(name, Some(json!({ "n": n })))
    }

    #[tokio::test]
    async fn names_filters_and_copies() {
        let reg = Arc::new(Registry::default());
        let mut all = reg.register(ListenOptions::new());
        let mut stops = reg.register(ListenOptions::new().names(["STOP"]));
        let mut odd = reg.register(
            ListenOptions::new().filter(|e| e.data()["n"].as_i64().unwrap_or(0) % 2 == 1),
        );
        for (i, name) in ["STOP", "RESUME", "STOP"].iter().enumerate() {
            reg.dispatch(&ev(name, i as i64));
        }
        assert_eq!(all.clear().len(), 3);
        assert_eq!(stops.recv().await.unwrap().data()["n"], 0);
        assert_eq!(stops.recv().await.unwrap().data()["n"], 2);
        assert!(matches!(stops.try_recv(), Err(TryRecvError::Empty)));
        assert_eq!(odd.recv().await.unwrap().name(), "RESUME");
        assert!(odd.is_empty());
    }

    #[tokio::test]
    async fn a_slow_listener_learns_what_it_lost() {
        let reg = Arc::new(Registry::default());
        let mut l = reg.register(ListenOptions::new().capacity(3));
        for i in 0..10 {
            reg.dispatch(&ev("E", i));
        }
        assert!(matches!(l.recv().await, Err(RecvError::Lagged(7))));
        for want in 7..10 {
            assert_eq!(l.recv().await.unwrap().data()["n"], want);
        }
        assert_eq!(l.total_lost(), 7);
    }

    #[tokio::test]
    async fn close_ends_the_stream_after_queued_events() {
        let reg = Arc::new(Registry::default());
        let mut l = reg.register(ListenOptions::new());
        reg.dispatch(&ev("E", 1));
        reg.close_all(Some(&Error::ConnectionClosed { mid_message: false }));
        assert!(l.recv().await.is_ok());
        match l.recv().await {
            Err(RecvError::Closed(Some(c))) => assert!(c.is_disconnected()),
            other => panic!("{other:?}"),
        }
        assert_eq!(reg.len(), 0);
    }

    #[tokio::test]
    async fn dropping_unregisters_and_recv_wakes() {
        let reg = Arc::new(Registry::default());
        let l = reg.register(ListenOptions::new());
        assert_eq!(reg.len(), 1);
        drop(l);
        assert_eq!(reg.len(), 0);
        let mut l = reg.register(ListenOptions::new());
        let r2 = reg.clone();
        let h = tokio::spawn(async move { l.recv_timeout(Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        r2.dispatch(&ev("LATE", 1));
        r2.wake();
        assert_eq!(h.await.unwrap().unwrap().name(), "LATE");
    }

    #[tokio::test]
    async fn recv_many_takes_a_batch_and_reports_losses() {
        let reg = Arc::new(Registry::default());
        let mut l = reg.register(ListenOptions::new().capacity(4));
        for i in 0..3 {
            reg.dispatch(&ev("E", i));
        }
        let mut buf = Vec::new();
        assert_eq!(l.recv_many(&mut buf, 2).await.unwrap(), 2);
        assert_eq!(l.recv_many(&mut buf, 10).await.unwrap(), 1);
        assert_eq!(buf.len(), 3);
        for i in 3..9 {
            reg.dispatch(&ev("E", i));
        }
        assert!(matches!(
            l.recv_many(&mut buf, 10).await,
            Err(RecvError::Lagged(2))
        ));
        buf.clear();
        assert_eq!(l.recv_many(&mut buf, 10).await.unwrap(), 4);
        assert_eq!(buf[0].data()["n"], 5);
        reg.close_all(None);
        assert!(matches!(
            l.recv_many(&mut buf, 10).await,
            Err(RecvError::Closed(None))
        ));
    }

    #[tokio::test]
    async fn recv_timeout_times_out() {
        let reg = Arc::new(Registry::default());
        let mut l = reg.register(ListenOptions::new());
        assert!(matches!(
            l.recv_timeout(Duration::from_millis(10)).await,
            Err(RecvError::Timeout(_))
        ));
    }
}
