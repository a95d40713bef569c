//! The bounded event queue behind every listener, and [`EventQueue`], its shared
//! form with pass-over waits.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tracing::{debug, warn};

use super::listener::{EventListener, ListenOptions};
use super::log::{Log, Shared};
use crate::error::Error;
use crate::message::Event;

/// What a waiter looks for; runs on the connection's reader.
type Matcher = dyn Fn(&Event) -> bool + Send + Sync;

/// An event with its place in the order of arrival.
#[derive(Clone)]
pub(super) struct Queued {
    seq: u64,
    pub(super) event: Event,
}

#[derive(Debug)]
pub(super) enum Closed {
    Open,
    Closed(Option<Box<Error>>),
}

/// A task waiting in [`EventQueue::wait_for`].
struct Waiter {
    id: u64,
    matcher: Box<Matcher>,
    /// The event handed to it, until it returns it.
    found: Option<Queued>,
    waker: Option<Waker>,
}

/// An event handed to waiters and not queued: kept here until one of them returns
/// it, or goes back to the queue if all of them were dropped first.
struct Held {
    seq: u64,
    holders: usize,
    delivered: bool,
}

pub(super) struct State {
    pub(super) events: VecDeque<Queued>,
    capacity: usize,
    next_seq: u64,
    /// Lost since the consumer last learnt of it.
    pub(super) lost: u64,
    pub(super) total_lost: u64,
    pub(super) closed: Closed,
    /// The [`EventListener`] reading this queue, when it waits.
    pub(super) consumer: Option<Waker>,
    /// In the order they started waiting.
    waiters: Vec<Waiter>,
    next_waiter: u64,
    held: Vec<Held>,
    /// A shared queue warns about losses; a listener says them in-band (`Lagged`).
    warn_on_loss: bool,
    /// For a reader of the client's log: the sequence number of the next event in
    /// the log it has not taken.
    cursor: Option<u64>,
}

impl State {
    /// Queue an arriving event, or hand it to the waiters that want it.
    fn push(&mut self, event: Event, wake: &mut Vec<Waker>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let q = Queued { seq, event };
        if self.waiters.is_empty() {
            // The newest: its place is at the end.
            self.events.push_back(q);
            self.bound();
        } else if let Some(q) = self.deliver(q, wake) {
            self.enqueue(q);
        }
    }

    /// Queue an arriving event for a listener without waiters (a reader of the
    /// log): at the end, within the bound.
    fn push_newest(&mut self, event: Event) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.events.push_back(Queued { seq, event });
        self.bound();
    }

    /// Hand `q` to every waiter still waiting whose matcher takes it; give it back if
    /// none does.
    fn deliver(&mut self, q: Queued, wake: &mut Vec<Waker>) -> Option<Queued> {
        let mut holders = 0;
        for w in &mut self.waiters {
            if w.found.is_none() && (w.matcher)(&q.event) {
                w.found = Some(q.clone());
                holders += 1;
                if let Some(waker) = w.waker.take() {
                    wake.push(waker);
                }
            }
        }
        if holders == 0 {
            return Some(q);
        }
        self.held.push(Held {
            seq: q.seq,
            holders,
            delivered: false,
        });
        None
    }

    /// Put an event in the queue at its place in arrival order (an event put back by
    /// a cancelled wait may be older than others), dropping the oldest when the queue
    /// is full.
    fn enqueue(&mut self, q: Queued) {
        if self.events.back().is_none_or(|last| last.seq < q.seq) {
            self.events.push_back(q);
        } else {
            let at = self.events.partition_point(|e| e.seq < q.seq);
            self.events.insert(at, q);
        }
        self.bound();
    }

    /// Drop the oldest event if the queue holds more than its capacity.
    fn bound(&mut self) {
        if self.events.len() > self.capacity {
            self.events.pop_front();
            self.lose(1);
        }
    }

    /// Count `n` events lost (dropped, or never queued because newer ones filled the
    /// queue), and say so when losses start.
    fn lose(&mut self, n: u64) {
        if n > 0 {
            let first = self.lost == 0;
            self.lost += n;
            self.total_lost += n;
            if first {
                if self.warn_on_loss {
                    warn!(
                        capacity = self.capacity,
                        "the QMP event queue is full: dropping the oldest events, which nobody read"
                    );
                } else {
                    debug!(
                        capacity = self.capacity,
                        "an event listener fell behind: dropping its oldest events"
                    );
                }
            }
        }
    }

    /// Log the losses not yet reported (a shared queue has nobody to tell in-band).
    fn report_losses(&mut self) {
        if self.lost > 0 {
            warn!(
                capacity = self.capacity,
                total_lost = self.total_lost,
                "{} QMP events were dropped because the event queue was full",
                self.lost
            );
            self.lost = 0;
        }
    }

    fn waiter(&mut self, id: u64) -> Option<usize> {
        self.waiters.iter().position(|w| w.id == id)
    }

    /// A waiter holding `seq` returned it (`delivered`) or was dropped. Returns true
    /// when the event must go back to the queue: every holder was dropped.
    fn release(&mut self, seq: u64, delivered: bool) -> bool {
        let Some(i) = self.held.iter().position(|h| h.seq == seq) else {
            return false;
        };
        let h = &mut self.held[i];
        h.holders -= 1;
        h.delivered |= delivered;
        if h.holders > 0 {
            return false;
        }
        let back = !h.delivered;
        self.held.swap_remove(i);
        back
    }

    fn ended(&self) -> Option<SessionEnded> {
        match &self.closed {
            Closed::Open => None,
            Closed::Closed(cause) => Some(SessionEnded {
                cause: cause.clone(),
            }),
        }
    }
}

/// A bounded queue of events: the state of a listener, also shared as an
/// [`EventQueue`].
pub(crate) struct Core {
    pub(super) options: ListenOptions,
    state: Mutex<State>,
    /// In the registry's list of consumers to wake at the end of the batch.
    pub(super) wake_pending: AtomicBool,
    /// The client's log, for a reader of it (see the `log` module).
    log: Option<Arc<Shared>>,
    /// In the log's list of readers to wake at the next event (changed under the
    /// log's lock).
    pub(super) parked: AtomicBool,
}

impl Core {
    pub(super) fn new(options: ListenOptions) -> Core {
        Self::with_log(options, None)
    }

    /// A reader of `log`, which takes events from sequence number `cursor` on.
    pub(super) fn reader(options: ListenOptions, log: Arc<Shared>, cursor: u64) -> Core {
        let core = Self::with_log(options, Some(log));
        core.lock().cursor = Some(cursor);
        core
    }

    fn with_log(options: ListenOptions, log: Option<Arc<Shared>>) -> Core {
        let capacity = options.capacity_value();
        Core {
            options,
            wake_pending: AtomicBool::new(false),
            log,
            parked: AtomicBool::new(false),
            state: Mutex::new(State {
                events: VecDeque::new(),
                capacity,
                next_seq: 0,
                lost: 0,
                total_lost: 0,
                closed: Closed::Open,
                consumer: None,
                waiters: Vec::new(),
                next_waiter: 0,
                held: Vec::new(),
                warn_on_loss: false,
                cursor: None,
            }),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`lock`](Self::lock), with the events a reader has not taken from the log
    /// moved into its queue: what every read of a listener looks at.
    pub(super) fn lock_synced(&self) -> MutexGuard<'_, State> {
        let mut st = self.lock();
        self.sync(&mut st);
        st
    }

    /// For a reader: move the events of the log it has not taken into its queue,
    /// keeping at most its capacity, and counting those it lost as a queue of its
    /// own would have (the log dropped them, or newer ones would have pushed them
    /// out).
    fn sync(&self, st: &mut State) {
        // The published head first: nothing new (the common case while a client
        // has few readers) costs no lock.
        if let (Some(log), Some(cursor)) = (&self.log, st.cursor) {
            if log.head() > cursor {
                Self::sync_from(st, &mut log.lock());
            }
        }
    }

    fn sync_from(st: &mut State, log: &mut Log) {
        let Some(cursor) = st.cursor else {
            return;
        };
        if !log.has_news(cursor) {
            return;
        }
        let head = log.head();
        let (dropped, events) = log.from(cursor);
        let skip = events.len().saturating_sub(st.capacity);
        st.lose(dropped + skip as u64);
        for event in events.skip(skip) {
            st.push_newest(event.clone());
        }
        st.cursor = Some(head);
        log.taken(cursor);
    }

    /// [`lock`](Self::lock), for taking the oldest event: a reader looks at the log
    /// only when its own queue is empty, or when what the log holds for it would
    /// push out events of its queue (so that what it takes is what a queue of its
    /// own would hold). Checked against the log's published head, without its lock.
    pub(super) fn lock_to_take(&self) -> MutexGuard<'_, State> {
        let mut st = self.lock();
        if let (Some(log), Some(cursor)) = (&self.log, st.cursor) {
            let news = log.head().saturating_sub(cursor);
            if news > 0
                && (st.events.is_empty() || st.events.len() as u64 + news > st.capacity as u64)
            {
                Self::sync_from(&mut st, &mut log.lock());
            }
        }
        st
    }

    /// For a reader: whether the log holds events it has not taken, by its
    /// published head, as [`sync`](Self::sync) checks (exact on the connection's
    /// reader, which published it).
    fn log_has_news(&self, st: &State) -> bool {
        match (&self.log, st.cursor) {
            (Some(log), Some(cursor)) => log.head() > cursor,
            _ => false,
        }
    }

    /// For a reader whose consumer is about to wait (its waker set): ask the log to
    /// wake it at the next event. False if events arrived since the last
    /// [`sync`](Self::sync): the consumer must look again instead of waiting.
    pub(super) fn park(self: &Arc<Self>, st: &mut State) -> bool {
        let (Some(log), Some(cursor)) = (&self.log, st.cursor) else {
            return true;
        };
        let mut log = log.lock();
        if log.has_news(cursor) {
            return false;
        }
        if !self.parked.swap(true, Ordering::AcqRel) {
            log.park(self.clone());
        }
        true
    }

    /// Stop reading the log (the listener was dropped, its session ended, or it
    /// became an [`EventQueue`]), after taking what it holds for this reader.
    pub(super) fn leave_log(&self) {
        let mut st = self.lock();
        self.leave_log_locked(&mut st);
    }

    fn leave_log_locked(&self, st: &mut State) {
        let Some(log) = &self.log else {
            return;
        };
        let mut log = log.lock();
        Self::sync_from(st, &mut log);
        if let Some(cursor) = st.cursor.take() {
            log.detach(cursor, st.capacity);
        }
        if self.parked.swap(false, Ordering::AcqRel) {
            log.unpark(self);
        }
    }

    /// Put an event straight into a reader's queue, as [`offer`](Self::offer) does
    /// for other listeners: while a client has few readers, the log stays empty.
    pub(super) fn offer_to_reader(&self, event: &Event) -> bool {
        let mut st = self.lock();
        if !matches!(st.closed, Closed::Open) {
            return false;
        }
        // Events the log still holds for it (it had more readers until now) come
        // first.
        self.sync(&mut st);
        st.push_newest(event.clone());
        st.consumer.is_some()
    }

    /// Offer an event; called by the reader (or [`EventQueue::push`]). Waiters it is
    /// handed to are woken at once; a listener's consumer only by
    /// [`wake_if_ready`](Self::wake_if_ready), which is worth calling only when this
    /// returns true: the event was queued and the consumer waits.
    pub(super) fn offer(&self, event: &Event) -> bool {
        if !self.options.accepts(event) {
            return false;
        }
        let mut wake = Vec::new();
        let consumer_waits = {
            let mut st = self.lock();
            if !matches!(st.closed, Closed::Open) {
                return false;
            }
            st.push(event.clone(), &mut wake);
            st.consumer.is_some()
        };
        wake.into_iter().for_each(Waker::wake);
        consumer_waits
    }

    /// Wake the consumer if it waits and something is queued for it.
    pub(super) fn wake_if_ready(&self) {
        // A reader's events stay in the log: its consumer moves them on its own
        // thread, not the connection's reader.
        let mut st = self.lock();
        if st.events.is_empty() && st.lost == 0 && !self.log_has_news(&st) {
            return;
        }
        if let Some(w) = st.consumer.take() {
            drop(st);
            w.wake();
        }
    }

    /// The session ended: no more events; wake everyone waiting.
    pub(super) fn close(&self, cause: Option<&Error>) {
        let mut wake = Vec::new();
        {
            let mut st = self.lock();
            // The events it had not taken stay readable, before the end.
            self.leave_log_locked(&mut st);
            if matches!(st.closed, Closed::Open) {
                st.closed = Closed::Closed(cause.map(|c| Box::new(c.clone())));
            }
            wake.extend(st.consumer.take());
            wake.extend(st.waiters.iter_mut().filter_map(|w| w.waker.take()));
        }
        wake.into_iter().for_each(Waker::wake);
    }
}

/// A waiter's registration; dropping it unregisters the waiter and puts back an
/// event it was handed but did not return.
struct WaitGuard<'a> {
    core: &'a Core,
    id: u64,
    done: bool,
}

impl WaitGuard<'_> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Queued, SessionEnded>> {
        let mut st = self.core.lock();
        let Some(i) = st.waiter(self.id) else {
            // Unreachable: only this guard removes its waiter.
            self.done = true;
            return Poll::Ready(Err(SessionEnded { cause: None }));
        };
        if let Some(q) = st.waiters[i].found.take() {
            st.waiters.remove(i);
            st.release(q.seq, true);
            self.done = true;
            return Poll::Ready(Ok(q));
        }
        if let Some(ended) = st.ended() {
            st.waiters.remove(i);
            self.done = true;
            return Poll::Ready(Err(ended));
        }
        let w = &mut st.waiters[i];
        if !w.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            w.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut wake = Vec::new();
        {
            let mut st = self.core.lock();
            let Some(i) = st.waiter(self.id) else { return };
            let w = st.waiters.remove(i);
            if let Some(q) = w.found {
                if st.release(q.seq, false) {
                    // Nobody returned it: to another waiter that wants it, else back
                    // to its place in the queue.
                    if let Some(q) = st.deliver(q, &mut wake) {
                        st.enqueue(q);
                    }
                }
            }
        }
        wake.into_iter().for_each(Waker::wake);
    }
}

/// The session ended (or [`EventQueue::close`] was called) and no event can come.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the session ended{}", .cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
pub struct SessionEnded {
    /// What ended the session when that was not a deliberate disconnect.
    pub cause: Option<Box<Error>>,
}

/// A bounded queue of events that any number of tasks and threads can read and wait
/// on at once (Python: the event list of `QEMUMachine` and of
/// `QEMUMonitorProtocol`).
///
/// Made from a listener, which keeps watching the client's events
/// (`EventQueue::from(client.listen_with(options))`), or on its own with
/// [`new`](Self::new) and fed with [`push`](Self::push). Every method takes `&self`;
/// share the queue with an `Arc`. The futures need no particular runtime (the
/// blocking client polls them on plain threads); bound them with a timeout, such as
/// `tokio::time::timeout`.
///
/// ```no_run
/// # async fn f(qmp: qemu_qmp::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use qemu_qmp::{EventQueue, ListenOptions};
///
/// let events = EventQueue::from(qmp.listen_with(ListenOptions::new()));
/// qmp.execute("stop", None).await?;
/// qmp.execute("cont", None).await?;
/// // Wait for the RESUME; the STOP before it stays queued.
/// let resume = tokio::time::timeout(
///     Duration::from_secs(5),
///     events.wait_for(|e| e.name() == "RESUME"),
/// )
/// .await??;
/// assert_eq!(events.take_all()[0].name(), "STOP");
/// # Ok(()) }
/// ```
///
/// # Waiting for a match: what is consumed
///
/// [`wait_for`](Self::wait_for) first looks at the queued events, oldest first, and
/// takes the first one that matches; the others stay queued, in order. If none
/// matches, every event that arrives from then on is offered to the wait until one
/// matches. An event that a wait returns is consumed: it is no longer queued (as in
/// Python, where a matched event leaves the kept list and an unmatched one stays for
/// `get_qmp_events`).
///
/// Waits may run concurrently, and none starves another:
///
/// - an event that arrives while several waits wait is offered to each of them, in
///   the order they started: *every* wait whose matcher accepts it returns it (events
///   are reference-counted, so this costs a pointer each). So two waits for the same
///   event both get it, and a wait that matches nothing cannot hide an event from one
///   that does;
/// - an event that no waiting wait accepts is queued for later reads and waits;
/// - a queued event is taken by the first wait or read that looks at it (one only).
///
/// # Cancellation
///
/// Every future is cancel-safe. A wait that is dropped (for example by its timeout)
/// after an event was handed to it, but before it returned it, puts that event back:
/// to another wait that wants it, else into the queue at its place in arrival
/// order, unless another wait that was handed the same event returned it. Nothing is
/// lost or duplicated by a cancellation.
///
/// # Bound
///
/// At most [`capacity`](Self::capacity) events are queued (events handed to waits do
/// not count). When one more arrives, the oldest is dropped: counted in
/// [`total_lost`](Self::total_lost), and logged with `tracing` (a warning when
/// losses start, and one with their number at the next read or wait).
pub struct EventQueue {
    core: Arc<Core>,
    /// Keeps the queue registered with its client, when made from a listener.
    _listener: Option<EventListener>,
}

impl fmt::Debug for EventQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.core.lock();
        f.debug_struct("EventQueue")
            .field("pending", &st.events.len())
            .field("capacity", &st.capacity)
            .field("lost", &st.total_lost)
            .field("waiters", &st.waiters.len())
            .field("closed", &!matches!(st.closed, Closed::Open))
            .finish()
    }
}

impl From<EventListener> for EventQueue {
    /// Share a listener's queue: the events it chooses, with its capacity. Events it
    /// has queued stay queued.
    fn from(listener: EventListener) -> EventQueue {
        // Waits are handed events as they arrive: not a reader of the log.
        listener.leave_log();
        let core = listener.core().clone();
        core.lock().warn_on_loss = true;
        EventQueue {
            core,
            _listener: Some(listener),
        }
    }
}

impl EventQueue {
    /// A queue attached to no client, holding at most `capacity` events (at least 1),
    /// fed by [`push`](Self::push): for tests, or events from another source.
    pub fn new(capacity: usize) -> EventQueue {
        let core = Core::new(ListenOptions::new().capacity(capacity));
        core.lock().warn_on_loss = true;
        EventQueue {
            core: Arc::new(core),
            _listener: None,
        }
    }

    /// Add an event, as the client's reader does: it goes to the waits that want it,
    /// else to the end of the queue. Ignored once the queue is closed.
    pub fn push(&self, event: Event) {
        self.core.offer(&event);
    }

    /// End the queue as the end of a session does: waits that find nothing fail with
    /// [`SessionEnded`]; queued events can still be taken.
    pub fn close(&self) {
        self.core.close(None);
    }

    /// The oldest queued event, without waiting (Python: `get_qmp_event(wait=False)`).
    pub fn try_recv(&self) -> Option<Event> {
        let mut st = self.core.lock();
        st.report_losses();
        st.events.pop_front().map(|q| q.event)
    }

    /// The oldest queued event, waiting for one if none is queued (Python:
    /// `get_qmp_event(wait=True)`). Fails once the session has ended and nothing is
    /// queued. Cancel-safe.
    pub async fn recv(&self) -> Result<Event, SessionEnded> {
        self.wait_queued(Box::new(|_| true)).await.map(|q| q.event)
    }

    /// Remove and return every queued event, oldest first, without waiting (Python:
    /// `clear_events()`, and `get_qmp_events(wait=False)`).
    pub fn take_all(&self) -> Vec<Event> {
        let mut st = self.core.lock();
        st.report_losses();
        st.events.drain(..).map(|q| q.event).collect()
    }

    /// Every queued event, oldest first; if none is queued, wait for one, then take it
    /// and whatever else has arrived with it (Python: `get_qmp_events(wait=True)`).
    /// Never returns an empty list. Cancel-safe.
    pub async fn recv_all(&self) -> Result<Vec<Event>, SessionEnded> {
        let first = self.wait_queued(Box::new(|_| true)).await?;
        let mut st = self.core.lock();
        let mut all: Vec<Queued> = st.events.drain(..).collect();
        let at = all.partition_point(|q| q.seq < first.seq);
        all.insert(at, first);
        Ok(all.into_iter().map(|q| q.event).collect())
    }

    /// The first event that `matcher` accepts: the oldest such queued event, else the
    /// first such event to arrive (Python: `event_wait()`, with the matching done by
    /// the caller's closure). Events passed over stay queued, in order. Fails once the
    /// session has ended and no queued event matches. Cancel-safe.
    ///
    /// See [the type's documentation](Self#waiting-for-a-match-what-is-consumed) for
    /// what concurrent waits get. The matcher runs on the connection's reader for
    /// every event that arrives while the wait waits, so it must be quick.
    pub async fn wait_for<F>(&self, matcher: F) -> Result<Event, SessionEnded>
    where
        F: Fn(&Event) -> bool + Send + Sync + 'static,
    {
        self.wait_queued(Box::new(matcher)).await.map(|q| q.event)
    }

    async fn wait_queued(&self, matcher: Box<Matcher>) -> Result<Queued, SessionEnded> {
        let id = {
            let mut st = self.core.lock();
            st.report_losses();
            if let Some(i) = st.events.iter().position(|q| matcher(&q.event)) {
                if let Some(q) = st.events.remove(i) {
                    return Ok(q);
                }
            }
            if let Some(ended) = st.ended() {
                return Err(ended);
            }
            let id = st.next_waiter;
            st.next_waiter += 1;
            st.waiters.push(Waiter {
                id,
                matcher,
                found: None,
                waker: None,
            });
            id
        };
        let mut guard = WaitGuard {
            core: &self.core,
            id,
            done: false,
        };
        std::future::poll_fn(|cx| guard.poll(cx)).await
    }

    /// How many events are queued.
    pub fn pending(&self) -> usize {
        self.core.lock().events.len()
    }

    /// True if no event is queued.
    pub fn is_empty(&self) -> bool {
        self.pending() == 0
    }

    /// The most events the queue holds before it drops the oldest.
    pub fn capacity(&self) -> usize {
        self.core.lock().capacity
    }

    /// How many events were dropped, in all, because the queue was full.
    pub fn total_lost(&self) -> u64 {
        self.core.lock().total_lost
    }

    /// How many waits ([`recv`](Self::recv), [`recv_all`](Self::recv_all),
    /// [`wait_for`](Self::wait_for)) are waiting now.
    pub fn waiting(&self) -> usize {
        self.core.lock().waiters.len()
    }

    /// True once the session has ended (queued events can still be taken).
    pub fn is_closed(&self) -> bool {
        !matches!(self.core.lock().closed, Closed::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn ev(name: &str, n: i64) -> Event {
        Event::new(name, Some(json!({ "n": n })))
    }

    fn n(e: &Event) -> i64 {
        e.data()["n"].as_i64().unwrap_or(-1)
    }

    fn named(name: &'static str) -> impl Fn(&Event) -> bool + Send + Sync + 'static {
        move |e| e.name() == name
    }

    #[test]
    fn the_bound_drops_the_oldest_and_counts() {
        let q = EventQueue::new(3);
        for i in 0..10 {
            q.push(ev("E", i));
        }
        assert_eq!(q.pending(), 3);
        assert_eq!(q.total_lost(), 7);
        assert_eq!(q.take_all().iter().map(n).collect::<Vec<_>>(), [7, 8, 9]);
        assert_eq!(q.total_lost(), 7);
    }

    #[tokio::test]
    async fn a_wait_takes_the_first_queued_match_and_keeps_the_rest() {
        let q = EventQueue::new(16);
        q.push(ev("A", 0));
        q.push(ev("B", 1));
        q.push(ev("A", 2));
        q.push(ev("B", 3));
        assert_eq!(n(&q.wait_for(named("B")).await.unwrap()), 1);
        assert_eq!(q.take_all().iter().map(n).collect::<Vec<_>>(), [0, 2, 3]);
    }

    #[tokio::test]
    async fn concurrent_waits_each_see_every_arrival() {
        let q = Arc::new(EventQueue::new(16));
        let never = tokio::spawn({
            let q = q.clone();
            async move { q.wait_for(named("NEVER")).await }
        });
        let b1 = tokio::spawn({
            let q = q.clone();
            async move { q.wait_for(named("B")).await }
        });
        let b2 = tokio::spawn({
            let q = q.clone();
            async move { q.wait_for(named("B")).await }
        });
        while q.waiting() < 3 {
            tokio::task::yield_now().await;
        }
        q.push(ev("A", 0));
        q.push(ev("B", 1));
        assert_eq!(n(&b1.await.unwrap().unwrap()), 1);
        assert_eq!(n(&b2.await.unwrap().unwrap()), 1);
        // The B was consumed; the A that nobody wanted stays.
        assert_eq!(q.take_all().iter().map(n).collect::<Vec<_>>(), [0]);
        never.abort();
        assert!(never.await.unwrap_err().is_cancelled());
        assert_eq!(q.waiting(), 0);
    }

    #[tokio::test]
    async fn a_dropped_wait_puts_its_event_back_in_order() {
        let q = EventQueue::new(16);
        let mut wait = Box::pin(q.wait_for(named("B")));
        let waker = futures_noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        q.push(ev("B", 0)); // handed to the wait
        q.push(ev("A", 1)); // queued
        assert_eq!(q.pending(), 1);
        drop(wait);
        assert_eq!(q.take_all().iter().map(n).collect::<Vec<_>>(), [0, 1]);
    }

    #[tokio::test]
    async fn a_dropped_wait_hands_its_event_to_a_later_wait() {
        let q = EventQueue::new(16);
        let waker = futures_noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut first = Box::pin(q.wait_for(named("B")));
        assert!(first.as_mut().poll(&mut cx).is_pending());
        q.push(ev("B", 0));
        let mut second = Box::pin(q.wait_for(named("B")));
        assert!(second.as_mut().poll(&mut cx).is_pending());
        drop(first);
        match second.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(e)) => assert_eq!(n(&e), 0),
            other => panic!("{other:?}"),
        }
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn an_event_returned_by_one_holder_is_not_put_back_by_another() {
        let q = EventQueue::new(16);
        let waker = futures_noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut a = Box::pin(q.wait_for(named("B")));
        let mut b = Box::pin(q.wait_for(named("B")));
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(b.as_mut().poll(&mut cx).is_pending());
        q.push(ev("B", 0));
        assert!(matches!(a.as_mut().poll(&mut cx), Poll::Ready(Ok(_))));
        drop(b);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn recv_all_takes_everything_or_waits_for_one() {
        let q = Arc::new(EventQueue::new(16));
        q.push(ev("A", 0));
        q.push(ev("A", 1));
        assert_eq!(q.recv_all().await.unwrap().len(), 2);
        let h = tokio::spawn({
            let q = q.clone();
            async move { q.recv_all().await }
        });
        while q.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        q.push(ev("A", 2));
        assert_eq!(
            h.await.unwrap().unwrap().iter().map(n).collect::<Vec<_>>(),
            [2]
        );
        assert_eq!(q.try_recv().map(|e| n(&e)), None);
    }

    #[tokio::test]
    async fn close_ends_waits_but_not_queued_events() {
        let q = Arc::new(EventQueue::new(16));
        q.push(ev("A", 0));
        let h = tokio::spawn({
            let q = q.clone();
            async move { q.wait_for(named("B")).await }
        });
        while q.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        q.close();
        assert!(h.await.unwrap().is_err());
        assert!(q.is_closed());
        // A wait that matches what is queued still gets it.
        assert_eq!(n(&q.wait_for(named("A")).await.unwrap()), 0);
        assert!(q.recv().await.is_err());
        q.push(ev("A", 1));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_timed_out_wait_loses_nothing() {
        let q = EventQueue::new(16);
        let r = tokio::time::timeout(Duration::from_millis(10), q.wait_for(named("B"))).await;
        assert!(r.is_err());
        assert_eq!(q.waiting(), 0);
        q.push(ev("B", 0));
        assert_eq!(q.pending(), 1);
    }

    fn futures_noop_waker() -> Waker {
        Waker::noop().clone()
    }

    use std::future::Future;
}
