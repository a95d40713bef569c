//! The event pane's state: the events received, a filter by name, pause and resume,
//! and how many of each event came.
//!
//! Events never touch the input line: they are kept here and drawn in their own pane
//! ([`super::view`]). The pane keeps the last [`MAX_EVENTS`] events; the counts cover
//! every event of the session.

use std::collections::{BTreeMap, VecDeque};

use qemu_qmp::json::Ordered;

/// How many events the pane keeps (older ones are dropped, still counted).
pub const MAX_EVENTS: usize = 5000;

/// One event as received.
#[derive(Debug, Clone, PartialEq)]
pub struct EventEntry {
    /// Its number in the session, from 0.
    pub seq: u64,
    /// The event name.
    pub name: String,
    /// QEMU's timestamp: seconds and microseconds since the epoch.
    pub time: Option<(i64, i64)>,
    /// The `data` member, in QEMU's order, if any.
    pub data: Option<Ordered>,
}

impl EventEntry {
    /// The time of day (UTC) as `HH:MM:SS.mmm`, or blanks without a timestamp.
    pub fn clock(&self) -> String {
        match self.time {
            Some((s, us)) => {
                let day = s.rem_euclid(86_400);
                format!(
                    "{:02}:{:02}:{:02}.{:03}",
                    day / 3600,
                    day / 60 % 60,
                    day % 60,
                    us.clamp(0, 999_999) / 1000
                )
            }
            None => " ".repeat(12),
        }
    }
}

/// The event pane.
#[derive(Debug, Default)]
pub struct EventPane {
    entries: VecDeque<EventEntry>,
    counts: BTreeMap<String, u64>,
    total: u64,
    filter: String,
    /// Paused: only events before this number are shown.
    paused_at: Option<u64>,
    /// Rows scrolled back from the newest.
    pub scroll: usize,
}

impl EventPane {
    /// Add an event.
    pub fn push(&mut self, name: String, time: Option<(i64, i64)>, data: Option<Ordered>) {
        *self.counts.entry(name.clone()).or_default() += 1;
        self.entries.push_back(EventEntry {
            seq: self.total,
            name,
            time,
            data,
        });
        self.total += 1;
        if self.entries.len() > MAX_EVENTS {
            self.entries.pop_front();
        }
    }

    /// Every event received this session.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// How many of each event came, by name.
    pub fn counts(&self) -> &BTreeMap<String, u64> {
        &self.counts
    }

    /// The filter: events whose name contains it (any case) are shown.
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// Set the filter (empty: every event).
    pub fn set_filter(&mut self, filter: impl Into<String>) {
        self.filter = filter.into();
        self.scroll = 0;
    }

    /// Whether the pane is paused.
    pub fn paused(&self) -> bool {
        self.paused_at.is_some()
    }

    /// Pause (the pane stops moving) or resume (it shows what came meanwhile).
    pub fn toggle_pause(&mut self) {
        self.paused_at = match self.paused_at {
            Some(_) => None,
            None => Some(self.total),
        };
        self.scroll = 0;
    }

    /// Events that came since the pause and are not shown yet.
    pub fn waiting(&self) -> u64 {
        self.paused_at.map_or(0, |p| self.total - p)
    }

    fn matches(&self, e: &EventEntry) -> bool {
        self.filter.is_empty()
            || e.name
                .to_ascii_lowercase()
                .contains(&self.filter.to_ascii_lowercase())
    }

    /// The events to show, oldest first: those that pass the filter and, when
    /// paused, came before the pause.
    pub fn visible(&self) -> impl DoubleEndedIterator<Item = &EventEntry> {
        let until = self.paused_at.unwrap_or(u64::MAX);
        self.entries
            .iter()
            .filter(move |e| e.seq < until && self.matches(e))
    }

    /// The counts as one line: `STOP 2 · RESUME 1`, most frequent first.
    pub fn counts_line(&self) -> String {
        let mut c: Vec<(&String, &u64)> = self.counts.iter().collect();
        c.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        c.iter()
            .map(|(n, k)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(" · ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: &EventPane) -> Vec<&str> {
        p.visible().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn filter_pause_and_counts() {
        let mut p = EventPane::default();
        p.push("STOP".into(), Some((3661, 5_000)), None);
        p.push("RESUME".into(), None, None);
        p.push("STOP".into(), None, None);
        assert_eq!(names(&p), ["STOP", "RESUME", "STOP"]);
        p.set_filter("sto");
        assert_eq!(names(&p), ["STOP", "STOP"]);
        p.set_filter("");
        p.toggle_pause();
        p.push("DEVICE_DELETED".into(), None, None);
        assert_eq!(names(&p), ["STOP", "RESUME", "STOP"]);
        assert_eq!(p.waiting(), 1);
        p.toggle_pause();
        assert_eq!(p.waiting(), 0);
        assert_eq!(names(&p).last(), Some(&"DEVICE_DELETED"));
        assert_eq!(p.counts_line(), "STOP 2 · DEVICE_DELETED 1 · RESUME 1");
        assert_eq!(p.total(), 4);
        let first = p.visible().next().unwrap();
        assert_eq!(first.clock(), "01:01:01.005");
    }

    #[test]
    fn old_events_are_dropped_but_counted() {
        let mut p = EventPane::default();
        for _ in 0..MAX_EVENTS + 3 {
            p.push("X".into(), None, None);
        }
        assert_eq!(p.visible().count(), MAX_EVENTS);
        assert_eq!(p.visible().next().unwrap().seq, 3);
        assert_eq!(p.counts()["X"], MAX_EVENTS as u64 + 3);
    }
}
