//! [`Progress`]: how far a job is, how fast it goes, when it should end.

use std::time::{Duration, Instant};

/// How far a job is, as QEMU reports it (`current-progress` of
/// `total-progress`, in units of the job's choice: bytes for block jobs),
/// with a smoothed rate and an estimate of the time left.
///
/// QEMU may change `total` in either direction while the job runs (a
/// mirror whose source is written to grows it), so `current` may exceed an
/// earlier total, and the estimate moves with it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Work done.
    pub current: u64,
    /// Work known so far.
    pub total: u64,
    /// Units per second, smoothed; `None` until two readings a moment apart.
    pub rate: Option<f64>,
    /// Time left at that rate; `None` without a rate.
    pub eta: Option<Duration>,
}

impl Progress {
    /// Done as a fraction of the total (0 when the total is 0).
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            (self.current as f64 / self.total as f64).min(1.0)
        }
    }
}

/// The shortest interval between two readings that updates the rate, in
/// seconds.
const MIN_INTERVAL: f64 = 0.04;

/// Turns readings into a [`Progress`]: an exponentially weighted rate, so
/// one slow or fast interval does not swing the estimate.
#[derive(Debug)]
pub(crate) struct Estimator {
    last: Option<(Instant, u64)>,
    rate: Option<f64>,
    /// Weight of the newest interval's rate.
    alpha: f64,
}

impl Estimator {
    pub(crate) fn new() -> Estimator {
        Estimator {
            last: None,
            rate: None,
            alpha: 0.3,
        }
    }

    /// Takes a reading made at `at`.
    pub(crate) fn update(&mut self, at: Instant, current: u64, total: u64) -> Progress {
        if let Some((then, before)) = self.last {
            let dt = at.saturating_duration_since(then).as_secs_f64();
            // Two readings close together (an event's numbers just after a
            // poll) would give a wild rate: keep the last rate until the
            // interval is long enough to mean something.
            if dt >= MIN_INTERVAL {
                // Progress never goes back for one job; if it does (another
                // job under the same id), start over.
                if current >= before {
                    let r = (current - before) as f64 / dt;
                    self.rate = Some(match self.rate {
                        Some(old) => old + self.alpha * (r - old),
                        None => r,
                    });
                } else {
                    self.rate = None;
                }
                self.last = Some((at, current));
            }
        } else {
            self.last = Some((at, current));
        }
        let eta = match self.rate {
            Some(r) if r > 0.0 => Some(Duration::from_secs_f64(
                total.saturating_sub(current) as f64 / r,
            )),
            _ => None,
        };
        Progress {
            current,
            total,
            rate: self.rate,
            eta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_job_gets_its_rate_and_eta() {
        let mut e = Estimator::new();
        let t0 = Instant::now();
        assert_eq!(e.update(t0, 0, 1000).rate, None);
        let p = e.update(t0 + Duration::from_secs(1), 100, 1000);
        assert_eq!(p.rate, Some(100.0));
        assert_eq!(p.eta, Some(Duration::from_secs(9)));
        let p = e.update(t0 + Duration::from_secs(2), 200, 1000);
        assert_eq!(p.rate, Some(100.0));
        assert_eq!(p.fraction(), 0.2);
    }

    #[test]
    fn the_rate_is_smoothed_and_the_total_may_move() {
        let mut e = Estimator::new();
        let t0 = Instant::now();
        e.update(t0, 0, 100);
        e.update(t0 + Duration::from_secs(1), 100, 100);
        // A stall: the rate drops by the weight, not to zero.
        let p = e.update(t0 + Duration::from_secs(2), 100, 300);
        assert_eq!(p.rate, Some(70.0));
        assert_eq!(p.total, 300);
        assert!(p.eta.unwrap() > Duration::from_secs(2));
        // Going back (a new job under the same id) forgets the rate.
        assert_eq!(e.update(t0 + Duration::from_secs(3), 10, 300).rate, None);
    }

    #[test]
    fn readings_close_together_do_not_make_a_wild_rate() {
        let mut e = Estimator::new();
        let t0 = Instant::now();
        e.update(t0, 0, 1 << 30);
        let p = e.update(t0 + Duration::from_secs(1), 100 << 20, 1 << 30);
        assert_eq!(p.rate, Some(104857600.0));
        // 64 MiB more reported a millisecond later: not 64 GB/s.
        let p = e.update(t0 + Duration::from_millis(1001), 164 << 20, 1 << 30);
        assert_eq!(p.rate, Some(104857600.0));
        assert_eq!(p.current, 164 << 20);
        let p = e.update(t0 + Duration::from_secs(2), 200 << 20, 1 << 30);
        assert!(p.rate.unwrap() < 2e8, "{:?}", p.rate);
    }
}
