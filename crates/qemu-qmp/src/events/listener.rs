//! [`EventListener`]: one reader's queue of a client's events, and what it wants.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use super::queue::{Closed, Core, State};
use super::registry::Registry;
use super::DEFAULT_EVENT_CAPACITY;
use crate::error::Error;
use crate::message::Event;

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
            capacity: DEFAULT_EVENT_CAPACITY,
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
    /// All events, default capacity ([`DEFAULT_EVENT_CAPACITY`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Only events with one of these names (no names: all events).
    pub fn names<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        for name in names {
            let name = name.into();
            if !self.names.contains(&name) {
                self.names.push(name);
            }
        }
        self
    }

    /// Only events for which the closure returns true (applied after the names).
    /// It runs on the connection's reader, so it must be quick.
    pub fn filter(mut self, f: impl Fn(&Event) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Arc::new(f));
        self
    }

    /// How many events to buffer before the oldest are dropped (at least 1; default
    /// [`DEFAULT_EVENT_CAPACITY`]).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// The names wanted (empty: every event).
    pub(super) fn name_list(&self) -> &[String] {
        &self.names
    }

    /// No names and no filter: every event.
    pub(super) fn takes_everything(&self) -> bool {
        self.names.is_empty() && self.filter.is_none()
    }

    pub(super) fn capacity_value(&self) -> usize {
        self.capacity
    }

    pub(super) fn accepts(&self, event: &Event) -> bool {
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
}

/// Why [`EventListener::recv_timeout`] returned no event: the reasons of
/// [`RecvError`], or the deadline.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecvTimeoutError {
    /// See [`RecvError::Lagged`].
    #[error("the listener fell behind: {0} events were dropped")]
    Lagged(u64),
    /// See [`RecvError::Closed`].
    #[error("the session ended{}", .0.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
    Closed(Option<Box<Error>>),
    /// No event arrived in time.
    #[error("no event arrived within {0:?}")]
    Timeout(Duration),
}

impl From<RecvError> for RecvTimeoutError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Lagged(n) => RecvTimeoutError::Lagged(n),
            RecvError::Closed(c) => RecvTimeoutError::Closed(c),
        }
    }
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

/// A queue of the events a client receives, chosen by name and/or filter
/// (Python: `EventListener`).
///
/// Made by [`Client::listen`](crate::Client::listen) or
/// [`Client::listen_with`](crate::Client::listen_with). Use it with
/// [`recv`](Self::recv), [`recv_timeout`](Self::recv_timeout),
/// [`try_recv`](Self::try_recv), or as a [`Stream`](futures_core::Stream); or turn it
/// into an [`EventQueue`](super::EventQueue) that many tasks share. Dropping it
/// unregisters it.
pub struct EventListener {
    core: Arc<Core>,
    registry: Weak<Registry>,
}

impl fmt::Debug for EventListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.core.lock_synced();
        f.debug_struct("EventListener")
            .field("names", &self.core.options.names)
            .field("pending", &st.events.len())
            .field("lost", &st.total_lost)
            .field("closed", &!matches!(st.closed, Closed::Open))
            .finish()
    }
}

impl Drop for EventListener {
    fn drop(&mut self) {
        if let Some(r) = self.registry.upgrade() {
            r.remove(&self.core);
        }
    }
}

impl EventListener {
    pub(super) fn new(core: Arc<Core>, registry: Weak<Registry>) -> EventListener {
        EventListener { core, registry }
    }

    pub(super) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Stop reading the client's log, if this listener does (see the `log` module).
    pub(super) fn leave_log(&self) {
        match self.registry.upgrade() {
            Some(r) => r.make_ordinary(&self.core),
            None => self.core.leave_log(),
        }
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Event, RecvError>> {
        loop {
            let mut st = self.core.lock_to_take();
            return match take(&mut st) {
                Err(TryRecvError::Empty) => {
                    st.consumer = Some(cx.waker().clone());
                    if !self.core.park(&mut st) {
                        continue;
                    }
                    Poll::Pending
                }
                Ok(e) => Poll::Ready(Ok(e)),
                Err(TryRecvError::Lagged(n)) => Poll::Ready(Err(RecvError::Lagged(n))),
                Err(TryRecvError::Closed(c)) => Poll::Ready(Err(RecvError::Closed(c))),
            };
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
        std::future::poll_fn(|cx| loop {
            let mut st = self.core.lock_synced();
            if st.lost > 0 {
                let n = std::mem::take(&mut st.lost);
                return Poll::Ready(Err(RecvError::Lagged(n)));
            }
            if !st.events.is_empty() {
                let n = st.events.len().min(limit.max(1));
                buf.extend(st.events.drain(..n).map(|q| q.event));
                return Poll::Ready(Ok(n));
            }
            return match &st.closed {
                Closed::Open => {
                    st.consumer = Some(cx.waker().clone());
                    if !self.core.park(&mut st) {
                        continue;
                    }
                    Poll::Pending
                }
                Closed::Closed(c) => Poll::Ready(Err(RecvError::Closed(c.clone()))),
            };
        })
        .await
    }

    /// [`recv`](Self::recv) with a deadline.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Event, RecvTimeoutError> {
        match tokio::time::timeout(timeout, self.recv()).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(RecvTimeoutError::Timeout(timeout)),
        }
    }

    /// The next event if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Result<Event, TryRecvError> {
        take(&mut self.core.lock_to_take())
    }

    /// Remove and return every queued event (Python: `EventListener.clear()`).
    pub fn clear(&mut self) -> Vec<Event> {
        let mut st = self.core.lock_synced();
        st.lost = 0;
        st.events.drain(..).map(|q| q.event).collect()
    }

    /// How many events are queued.
    pub fn pending(&self) -> usize {
        self.core.lock_synced().events.len()
    }

    /// True if no event is queued (Python: `empty()`).
    pub fn is_empty(&self) -> bool {
        self.pending() == 0
    }

    /// How many events this listener has lost in all because it fell behind.
    pub fn total_lost(&self) -> u64 {
        self.core.lock_synced().total_lost
    }

    /// True once the session this listener watched has ended.
    pub fn is_closed(&self) -> bool {
        !matches!(self.core.lock().closed, Closed::Open)
    }

    /// Would this listener accept the event? (Python: `accept()`.)
    pub fn accepts(&self, event: &Event) -> bool {
        self.core.options.accepts(event)
    }
}

/// The next item for a listener: losses first, then the oldest event, then the end.
fn take(st: &mut State) -> Result<Event, TryRecvError> {
    if st.lost > 0 {
        let n = std::mem::take(&mut st.lost);
        return Err(TryRecvError::Lagged(n));
    }
    if let Some(q) = st.events.pop_front() {
        return Ok(q.event);
    }
    match &st.closed {
        Closed::Open => Err(TryRecvError::Empty),
        Closed::Closed(c) => Err(TryRecvError::Closed(c.clone())),
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
    async fn several_names_a_repeated_name_and_dropping_among_many() {
        let reg = Arc::new(Registry::default());
        let mut both = reg.register(ListenOptions::new().names(["A", "B", "A"]));
        let others: Vec<_> = (0..100)
            .map(|i| reg.register(ListenOptions::new().names([format!("X{i}")])))
            .collect();
        let mut all = reg.register(ListenOptions::new());
        assert_eq!(reg.len(), 102);
        for name in ["A", "B", "C", "X7"] {
            reg.dispatch(&ev(name, 0));
        }
        // Once each, though "A" was asked for twice.
        let got: Vec<_> = both.clear().iter().map(|e| e.name().to_owned()).collect();
        assert_eq!(got, ["A", "B"]);
        assert_eq!(all.clear().len(), 4);
        let counts: Vec<_> = others.iter().map(EventListener::pending).collect();
        assert_eq!(counts.iter().sum::<usize>(), 1);
        assert_eq!(counts[7], 1);
        drop(others);
        assert_eq!(reg.len(), 2);
        drop(both);
        reg.dispatch(&ev("A", 1));
        assert_eq!(all.clear().len(), 1);
        assert_eq!(reg.len(), 1);
    }

    #[tokio::test]
    async fn a_waiting_consumer_is_woken_at_the_end_of_the_batch() {
        let reg = Arc::new(Registry::default());
        let mut l = reg.register(ListenOptions::new().names(["E"]));
        let r2 = reg.clone();
        let h = tokio::spawn(async move {
            let mut n = 0;
            while n < 3 {
                let mut buf = Vec::new();
                n += l.recv_many(&mut buf, 10).await.unwrap();
            }
            n
        });
        // Let the consumer wait, then deliver a batch of three and wake once.
        while !h.is_finished() && reg.lock_for_test_waiting() == 0 {
            tokio::task::yield_now().await;
        }
        for i in 0..3 {
            r2.dispatch(&ev("E", i));
        }
        r2.wake();
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), h)
                .await
                .unwrap()
                .unwrap(),
            3
        );
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
            Err(RecvTimeoutError::Timeout(_))
        ));
    }

    #[tokio::test]
    async fn a_listener_turned_queue_stays_registered_and_keeps_its_events() {
        let reg = Arc::new(Registry::default());
        let l = reg.register(ListenOptions::new().names(["STOP"]).capacity(2));
        reg.dispatch(&ev("STOP", 0));
        let q = crate::EventQueue::from(l);
        assert_eq!(reg.len(), 1);
        reg.dispatch(&ev("RESUME", 1));
        reg.dispatch(&ev("STOP", 2));
        reg.dispatch(&ev("STOP", 3));
        assert_eq!(q.capacity(), 2);
        assert_eq!(q.total_lost(), 1);
        let left: Vec<_> = q.take_all().iter().map(|e| e.data()["n"].clone()).collect();
        assert_eq!(left, [json!(2), json!(3)]);
        drop(q);
        assert_eq!(reg.len(), 0);
    }

    fn n(item: Result<Event, TryRecvError>) -> i64 {
        match item {
            Ok(e) => e.data()["n"].as_i64().unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn readers_share_one_log_and_each_keeps_its_own_bound() {
        let reg = Arc::new(Registry::with_direct_readers(0));
        let mut small = reg.register(ListenOptions::new().capacity(2));
        let mut large = reg.register(ListenOptions::new().capacity(5));
        for i in 0..6 {
            reg.dispatch(&ev("E", i));
        }
        // One copy, at most the largest capacity.
        assert_eq!(reg.log_state(), (5, 2));
        assert!(matches!(small.try_recv(), Err(TryRecvError::Lagged(4))));
        assert_eq!(n(small.try_recv()), 4);
        assert_eq!(n(small.try_recv()), 5);
        assert!(matches!(small.try_recv(), Err(TryRecvError::Empty)));
        assert!(matches!(large.try_recv(), Err(TryRecvError::Lagged(1))));
        for want in 1..6 {
            assert_eq!(n(large.try_recv()), want);
        }
        assert_eq!((small.total_lost(), large.total_lost()), (4, 1));
        // Both have taken everything: the log keeps nothing.
        assert_eq!(reg.log_state(), (0, 2));
    }

    #[tokio::test]
    async fn a_reader_sees_the_events_after_it_was_made() {
        let reg = Arc::new(Registry::default());
        let mut first = reg.register(ListenOptions::new());
        reg.dispatch(&ev("E", 0));
        let mut second = reg.register(ListenOptions::new());
        reg.dispatch(&ev("E", 1));
        assert_eq!(first.pending(), 2);
        assert_eq!(n(second.try_recv()), 1);
        assert!(second.is_empty());
        assert_eq!(n(first.try_recv()), 0);
    }

    #[tokio::test]
    async fn readers_leave_the_log_when_dropped_closed_or_shared() {
        let reg = Arc::new(Registry::with_direct_readers(0));
        let mut kept = reg.register(ListenOptions::new());
        let dropped = reg.register(ListenOptions::new());
        let shared = reg.register(ListenOptions::new());
        reg.dispatch(&ev("E", 0));
        drop(dropped);
        assert_eq!(reg.log_state(), (1, 2));
        // A reader turned queue keeps what it had not taken, then gets events as
        // an ordinary listener.
        let q = crate::EventQueue::from(shared);
        assert_eq!(reg.log_state(), (1, 1));
        reg.dispatch(&ev("E", 1));
        assert_eq!(q.take_all().len(), 2);
        assert_eq!(reg.len(), 2);
        // The end of the session: what was not taken stays readable.
        reg.close_all(None);
        assert_eq!(reg.log_state(), (0, 0));
        assert_eq!(n(kept.try_recv()), 0);
        assert_eq!(n(kept.try_recv()), 1);
        assert!(matches!(kept.try_recv(), Err(TryRecvError::Closed(None))));
    }

    /// A reader that waited and was then served directly stays in the log's list
    /// of waiting readers (only an append to the log empties it): it must leave it
    /// when dropped, or a client making and dropping listeners would grow it.
    #[tokio::test]
    async fn dropped_readers_leave_the_list_of_waiting_ones() {
        let reg = Arc::new(Registry::default());
        for i in 0..100 {
            let mut l = reg.register(ListenOptions::new());
            assert!(matches!(
                l.recv_timeout(Duration::from_millis(1)).await,
                Err(RecvTimeoutError::Timeout(_))
            ));
            assert_eq!(reg.log_parked(), 1);
            reg.dispatch(&ev("E", i));
            reg.wake();
            assert_eq!(n(l.try_recv()), i);
            drop(l);
            assert_eq!(reg.log_parked(), 0);
        }
    }

    /// The consumer parks and the reader appends on other threads: no wake-up is
    /// missed between a consumer finding nothing and waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_reader_misses_no_wake_up() {
        // Through the log, and straight into the queue.
        for direct in [0, 1] {
            a_waiting_reader_misses_no_wake_up_with(direct).await;
        }
    }

    async fn a_waiting_reader_misses_no_wake_up_with(direct: usize) {
        const N: i64 = 20_000;
        let reg = Arc::new(Registry::with_direct_readers(direct));
        let mut l = reg.register(ListenOptions::new().capacity(N as usize));
        let consumer = tokio::spawn(async move {
            let mut next = 0;
            while next < N {
                let e = l.recv().await.unwrap();
                assert_eq!(e.data()["n"], next);
                next += 1;
            }
        });
        let r2 = reg.clone();
        std::thread::spawn(move || {
            for i in 0..N {
                r2.dispatch(&ev("E", i));
                r2.wake();
            }
        })
        .join()
        .unwrap();
        tokio::time::timeout(Duration::from_secs(30), consumer)
            .await
            .expect("the consumer was not woken")
            .unwrap();
    }

    mod equivalence {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Dispatch(u8),
            TryRecv,
            Clear,
            Pending,
            /// Add or drop a reader beside them (crossing the bound between the
            /// log and direct delivery).
            AddOther,
            DropOther,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (1u8..6).prop_map(Op::Dispatch),
                3 => Just(Op::TryRecv),
                1 => Just(Op::Clear),
                1 => Just(Op::Pending),
                1 => Just(Op::AddOther),
                1 => Just(Op::DropOther),
            ]
        }

        fn item(r: Result<Event, TryRecvError>) -> String {
            match r {
                Ok(e) => format!("event {}", e.data()["n"]),
                Err(TryRecvError::Lagged(n)) => format!("lagged {n}"),
                Err(e) => format!("{e}"),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            /// A reader of the log and an ordinary listener with the same capacity
            /// (a filter that takes everything keeps it off the log) see the same
            /// events and the same losses, whatever the order of reads and events,
            /// with other readers of other capacities beside them.
            #[test]
            fn a_reader_behaves_as_a_listener_of_its_own(
                capacity in 1usize..8,
                other_capacity in 1usize..8,
                direct in 0usize..4,
                ops in proptest::collection::vec(op(), 0..80),
                close in any::<bool>(),
            ) {
                let reg = Arc::new(Registry::with_direct_readers(direct));
                let mut reader = reg.register(ListenOptions::new().capacity(capacity));
                let mut own = reg.register(ListenOptions::new().capacity(capacity).filter(|_| true));
                let mut others = vec![reg.register(ListenOptions::new().capacity(other_capacity))];
                let mut n = 0i64;
                for op in ops {
                    match op {
                        Op::Dispatch(k) => {
                            for _ in 0..k {
                                reg.dispatch(&ev("E", n));
                                n += 1;
                            }
                        }
                        Op::TryRecv => {
                            prop_assert_eq!(item(reader.try_recv()), item(own.try_recv()));
                            if let Some(other) = others.first_mut() {
                                let _ = other.try_recv();
                            }
                        }
                        Op::AddOther => {
                            others.push(reg.register(ListenOptions::new().capacity(other_capacity)));
                        }
                        Op::DropOther => {
                            others.pop();
                        }
                        Op::Clear => {
                            let a: Vec<_> = reader.clear().iter().map(|e| e.data()["n"].clone()).collect();
                            let b: Vec<_> = own.clear().iter().map(|e| e.data()["n"].clone()).collect();
                            prop_assert_eq!(a, b);
                        }
                        Op::Pending => {
                            prop_assert_eq!(reader.pending(), own.pending());
                            prop_assert_eq!(reader.total_lost(), own.total_lost());
                        }
                    }
                }
                if close {
                    reg.close_all(None);
                }
                loop {
                    let (a, b) = (item(reader.try_recv()), item(own.try_recv()));
                    prop_assert_eq!(&a, &b);
                    if !a.starts_with("event") && !a.starts_with("lagged") {
                        break;
                    }
                }
                prop_assert_eq!(reader.total_lost(), own.total_lost());
            }
        }
    }
}
