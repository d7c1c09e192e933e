//! Rate-limited logging of failures that come and go: at most one line per
//! [`QUIET`] for each kind of failure, saying how many happened since the
//! last line, and one line for the recovery after a logged failure. A
//! failure of a new kind is logged at once, whatever else is failing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The least time between two lines for one kind of failure.
pub(super) const QUIET: Duration = Duration::from_secs(10);

/// Failures by kind, and whether one was logged since the last recovery.
#[derive(Default)]
pub(super) struct Flaps {
    /// A failure was logged and no recovery since: the next success says so.
    logged: AtomicBool,
    /// Each kind seen: when its last line was written, and the failures
    /// of that kind since (not yet told).
    kinds: Mutex<Vec<(String, Instant, u64)>>,
}

impl Flaps {
    /// A failure of kind `kind` at `now`: `Some(n)` when it is to be
    /// logged, `n` the failures of that kind since its last line (this one
    /// included); `None` to keep quiet.
    pub(super) fn failed(&self, kind: &str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let told = match kinds.iter_mut().find(|(k, ..)| k == kind) {
            Some((_, last, unsaid)) => {
                *unsaid += 1;
                if now.saturating_duration_since(*last) < QUIET {
                    return None;
                }
                *last = now;
                std::mem::take(unsaid)
            }
            None => {
                kinds.push((kind.to_string(), now, 0));
                1
            }
        };
        self.logged.store(true, Ordering::Relaxed);
        Some(told)
    }

    /// A success: true when it ends a run of failures that was logged (then
    /// once only). Costs one atomic load otherwise.
    pub(super) fn succeeded(&self) -> bool {
        self.logged.load(Ordering::Relaxed) && self.logged.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_quiet_period_and_one_recovery_after_a_logged_failure() {
        let flaps = Flaps::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert!(!flaps.succeeded());
        assert_eq!(flaps.failed("storage", at(0)), Some(1));
        assert!(flaps.succeeded());
        // Flapping: quiet until the period is over, then the count.
        for ms in 1..100 {
            assert_eq!(flaps.failed("storage", at(ms * 10)), None);
            assert!(!flaps.succeeded());
        }
        // A new kind within the run is logged at once.
        assert_eq!(flaps.failed("read-only", at(1000)), Some(1));
        assert_eq!(flaps.failed("read-only", at(1001)), None);
        assert!(flaps.succeeded());
        assert!(!flaps.succeeded());
        assert_eq!(flaps.failed("storage", at(10_000)), Some(100));
        assert_eq!(flaps.failed("storage", at(10_001)), None);
        assert!(flaps.succeeded());
        assert_eq!(flaps.failed("storage", at(20_000)), Some(2));
    }
}
