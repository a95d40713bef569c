//! Waiting for a condition, with a deadline: how tests synchronise instead of
//! sleeping.

use std::thread;
use std::time::{Duration, Instant};

/// The first pause between two checks of a condition; it doubles up to
/// [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(1);
/// The longest pause between two checks of a condition.
const MAX_PAUSE: Duration = Duration::from_millis(10);

/// Polls `cond` until it returns true, for at most `deadline`; panics with
/// "timed out after `deadline` waiting for `what`" if it never does.
///
/// For state that can only be polled: a file appearing, `/proc`, a process
/// exiting (`try_wait`), a `try_*` call. Where a channel, a pipe or a socket
/// can be waited on directly, do that instead. The deadline only bounds a
/// failing test: keep it generous (seconds), never a guess at how long the
/// thing takes.
///
/// `cond` is called at once, then after short pauses (1 ms, doubling up to
/// 10 ms), and once more after the deadline has passed, so a test thread that
/// was descheduled past the deadline does not fail while the condition holds.
/// It may panic itself (for example on an error that ends the wait).
///
/// ```
/// use std::time::Duration;
/// let file = std::env::temp_dir();
/// qemu_testkit::wait_until(Duration::from_secs(10), "the temporary directory", || {
///     file.exists()
/// });
/// ```
#[track_caller]
pub fn wait_until(deadline: Duration, what: &str, cond: impl FnMut() -> bool) {
    if !poll_until(deadline, cond) {
        panic!("timed out after {deadline:?} waiting for {what}");
    }
}

/// Like [`wait_until`], but returns whether `cond` became true instead of
/// panicking: for callers that must clean up before failing (kill a child) or
/// put more in their failure message (what a program printed).
pub fn poll_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    let mut pause = FIRST_PAUSE;
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= end {
            // One last look: the pause (or a descheduled thread) may have
            // overslept the deadline while the condition came true.
            return cond();
        }
        thread::sleep(pause.min(end - now));
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_as_soon_as_the_condition_holds() {
        let mut calls = 0;
        wait_until(Duration::from_secs(10), "the third call", || {
            calls += 1;
            calls == 3
        });
        assert_eq!(calls, 3);
    }

    #[test]
    #[should_panic(expected = "timed out after 20ms waiting for never")]
    fn panics_naming_what_it_waited_for() {
        wait_until(Duration::from_millis(20), "never", || false);
    }

    #[test]
    fn poll_until_says_false_after_the_deadline() {
        let start = Instant::now();
        let mut last_call = start;
        assert!(!poll_until(Duration::from_millis(20), || {
            last_call = Instant::now();
            false
        }));
        assert!(last_call - start >= Duration::from_millis(20));
    }
}
