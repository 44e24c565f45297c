//! The embedded bus's limit state: what [`crate::Limiter`] keeps in memory
//! when there is one instance.
//!
//! One map from key to entry, under one short lock, on the monotonic clock
//! (Tokio's, so tests can pause it). A GCRA entry is its theoretical arrival
//! time (TAT): the instant the key's budget is whole again; a `Once` entry
//! is the instant it lapses. Either way an entry past its instant holds no
//! information, so it counts as absent and may be dropped at any time.
//!
//! Bound: expired entries are swept when the map has grown to twice what it
//! held after the previous sweep (at least [`SWEEP_FLOOR`]), so the map
//! holds at most about twice the live keys, and sweeping costs O(1)
//! amortised per insertion. Idle keys cannot make it grow without bound.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::{LimitCheck, LimitExceeded, LimitKind};

/// Below this many entries the map is never swept: not worth the scan.
pub(super) const SWEEP_FLOOR: usize = 1024;

/// Every limit key's state.
pub(super) struct Limits {
    state: Mutex<LimitState>,
}

struct LimitState {
    entries: HashMap<String, Entry>,
    /// The size at which the next sweep runs.
    sweep_at: usize,
}

/// What a key holds.
#[derive(Debug, Clone, Copy)]
enum Entry {
    /// A GCRA key: its theoretical arrival time.
    Gcra { tat: Instant },
    /// A `Once` key: when it lapses.
    Once { until: Instant },
}

impl Entry {
    /// When the entry stops holding information.
    fn expires(self) -> Instant {
        match self {
            Entry::Gcra { tat } => tat,
            Entry::Once { until } => until,
        }
    }
}

/// `at + d`, saturating at a century past `at` (and at `at` itself if even
/// that is out of the clock's range), so absurd durations cannot overflow.
fn later(at: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    at.checked_add(d.min(CENTURY))
        .or_else(|| at.checked_add(CENTURY))
        .unwrap_or(at)
}

/// Decides one check against the key's current entry (`None` if absent or
/// expired): the entry to store if it passes, how long until it would pass
/// otherwise.
fn decide(kind: LimitKind, current: Option<Entry>, now: Instant) -> Result<Entry, Duration> {
    match kind {
        LimitKind::Gcra { period, burst } => {
            let tat = match current {
                Some(Entry::Gcra { tat }) => tat.max(now),
                _ => now,
            };
            // How far ahead of now the TAT would be with this event charged;
            // a burst may put it at most `burst` periods ahead.
            let backlog = tat.saturating_duration_since(now).saturating_add(period);
            let allowance = period.saturating_mul(burst.max(1));
            if backlog > allowance {
                Err(backlog - allowance)
            } else {
                Ok(Entry::Gcra {
                    tat: later(now, backlog),
                })
            }
        }
        LimitKind::Once { ttl } => match current {
            Some(Entry::Once { until }) => Err(until.saturating_duration_since(now)),
            _ => Ok(Entry::Once {
                until: later(now, ttl),
            }),
        },
    }
}

impl Limits {
    pub(super) fn new() -> Limits {
        Limits {
            state: Mutex::new(LimitState {
                entries: HashMap::new(),
                sweep_at: SWEEP_FLOOR,
            }),
        }
    }

    /// Runs the checks all or nothing (see [`crate::Limiter`]). Checks of
    /// one key within one call see each other's charges, in order.
    pub(super) fn check(&self, checks: &[LimitCheck]) -> Option<LimitExceeded> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let mut pending: HashMap<&str, Entry> = HashMap::new();
        for (index, check) in checks.iter().enumerate() {
            let current = pending
                .get(check.key.as_str())
                .or_else(|| state.entries.get(&check.key))
                .copied()
                .filter(|e| e.expires() > now);
            match decide(check.kind, current, now) {
                Ok(entry) => {
                    pending.insert(check.key.as_str(), entry);
                }
                Err(retry_after) => return Some(LimitExceeded { index, retry_after }),
            }
        }
        for (key, entry) in pending {
            state.entries.insert(key.to_owned(), entry);
        }
        state.sweep_if_grown(now);
        None
    }

    /// Entries held, expired ones not yet swept included.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.state.lock().entries.len()
    }
}

impl LimitState {
    /// Drops expired entries once the map has doubled since the last sweep,
    /// and gives back memory a burst of keys left behind.
    fn sweep_if_grown(&mut self, now: Instant) {
        if self.entries.len() < self.sweep_at {
            return;
        }
        self.entries.retain(|_, e| e.expires() > now);
        let live = self.entries.len();
        self.sweep_at = (live * 2).max(SWEEP_FLOOR);
        if self.entries.capacity() > 4 * self.sweep_at {
            self.entries.shrink_to(self.sweep_at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gcra(key: &str, period_ms: u64, burst: u32) -> LimitCheck {
        LimitCheck {
            key: key.into(),
            kind: LimitKind::Gcra {
                period: Duration::from_millis(period_ms),
                burst,
            },
        }
    }

    fn once(key: &str, ttl_ms: u64) -> LimitCheck {
        LimitCheck {
            key: key.into(),
            kind: LimitKind::Once {
                ttl: Duration::from_millis(ttl_ms),
            },
        }
    }

    fn refused(index: usize, ms: u64) -> Option<LimitExceeded> {
        Some(LimitExceeded {
            index,
            retry_after: Duration::from_millis(ms),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn gcra_allows_the_burst_then_one_per_period() {
        let limits = Limits::new();
        let check = [gcra("u", 1_000, 3)];
        for _ in 0..3 {
            assert_eq!(limits.check(&check), None);
        }
        assert_eq!(limits.check(&check), refused(0, 1_000));
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(limits.check(&check), refused(0, 600));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(limits.check(&check), None, "one period later, one more");
        assert_eq!(limits.check(&check), refused(0, 1_000));
        // Idle for the whole burst: the burst is back.
        tokio::time::advance(Duration::from_millis(3_000)).await;
        for _ in 0..3 {
            assert_eq!(limits.check(&check), None);
        }
        assert_eq!(limits.check(&check), refused(0, 1_000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_charges_none_of_the_checks() {
        let limits = Limits::new();
        assert_eq!(limits.check(&[gcra("slow", 5_000, 1)]), None);
        let both = [gcra("user", 1_000, 1), gcra("slow", 5_000, 1)];
        for _ in 0..5 {
            assert_eq!(limits.check(&both), refused(1, 5_000));
        }
        // "user" was never charged: it still has its one event.
        assert_eq!(limits.check(&[gcra("user", 1_000, 1)]), None);
        assert_eq!(limits.check(&[gcra("user", 1_000, 1)]), refused(0, 1_000));
    }

    #[tokio::test(start_paused = true)]
    async fn checks_of_one_key_in_one_call_see_each_other() {
        let limits = Limits::new();
        let twice = [gcra("k", 1_000, 2), gcra("k", 1_000, 2)];
        assert_eq!(limits.check(&twice), None);
        assert_eq!(limits.check(&[gcra("k", 1_000, 2)]), refused(0, 1_000));
        let dup = [once("d", 1_000), once("d", 1_000)];
        assert_eq!(limits.check(&dup), refused(1, 1_000));
        assert_eq!(limits.check(&[once("d", 1_000)]), None, "nothing charged");
    }

    #[tokio::test(start_paused = true)]
    async fn once_passes_once_per_ttl() {
        let limits = Limits::new();
        let check = [once("dup:hash", 2_000)];
        assert_eq!(limits.check(&check), None);
        assert_eq!(limits.check(&check), refused(0, 2_000));
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(limits.check(&check), refused(0, 500));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(limits.check(&check), None, "lapsed");
        assert_eq!(limits.check(&check), refused(0, 2_000));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keys_are_swept_so_the_map_stays_bounded() {
        let limits = Limits::new();
        assert_eq!(limits.check(&[once("kept", 3_600_000)]), None);
        // Many one-off keys, each idle 10 ms after its use: a few live at
        // any time, so the map never holds more than the sweep floor.
        for i in 0..10 * SWEEP_FLOOR {
            assert_eq!(limits.check(&[gcra(&format!("u{i}"), 10, 1)]), None);
            tokio::time::advance(Duration::from_millis(1)).await;
            assert!(
                limits.len() <= SWEEP_FLOOR,
                "{} entries at {i}",
                limits.len()
            );
        }
        // A live key outlives every sweep.
        assert_eq!(
            limits.check(&[once("kept", 3_600_000)]).map(|e| e.index),
            Some(0)
        );
    }

    #[test]
    fn absurd_durations_saturate_instead_of_overflowing() {
        let limits = Limits::new();
        let huge = LimitCheck {
            key: "h".into(),
            kind: LimitKind::Gcra {
                period: Duration::MAX,
                burst: u32::MAX,
            },
        };
        assert_eq!(limits.check(std::slice::from_ref(&huge)), None);
        let forever = LimitCheck {
            key: "f".into(),
            kind: LimitKind::Once { ttl: Duration::MAX },
        };
        assert_eq!(limits.check(std::slice::from_ref(&forever)), None);
        assert!(limits.check(&[forever]).is_some());
    }
}
