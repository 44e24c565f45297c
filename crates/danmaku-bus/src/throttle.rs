//! A lock-free "at most once per interval" gate for log lines on hot paths,
//! so a flood of bad payloads costs a counter increment each and one log
//! line per interval, not a log line each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::now_ms;

/// Lets one caller through per interval; the rest are told to stay quiet.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    interval_ms: u64,
    /// When a caller was last let through, ms since the epoch (0: never).
    last_ms: AtomicU64,
}

impl LogThrottle {
    pub(crate) const fn new(interval: Duration) -> LogThrottle {
        LogThrottle {
            interval_ms: interval.as_millis() as u64,
            last_ms: AtomicU64::new(0),
        }
    }

    /// True for the first caller of each interval.
    pub(crate) fn allow(&self) -> bool {
        let now = now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.interval_ms {
            return false;
        }
        self.last_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_one_through_per_interval() {
        let t = LogThrottle::new(Duration::from_secs(60));
        assert!(t.allow());
        assert!(!t.allow());
        assert!(!t.allow());
        let t = LogThrottle::new(Duration::ZERO);
        assert!(t.allow());
        assert!(t.allow());
    }
}
