//! Redis's clock as seen from here, so a deadline taken on this host's
//! monotonic clock can be handed to a script that compares it with Redis
//! `TIME` (`broker.rs`: a publish that Redis gets to only after its
//! deadline does nothing).
//!
//! A reading is one `TIME` round trip: Redis read its clock at some
//! instant between sending and receiving, so at the receiving instant its
//! clock was at least the value read. From there Redis's clock advances
//! like ours, give or take the drift of two quartz clocks, for which
//! [`DRIFT_PER_MILLE`] is a generous allowance. So
//! [`RedisClock::lower_bound_us`] is never later than Redis's actual clock
//! at that instant: a script that sees `TIME` past it runs after the local
//! instant it stands for. It errs early by at most a round trip plus the
//! drift allowance, which only makes a deadline a little stricter.
//!
//! A reading is taken on every (re)connect of the command connection and
//! on each of its pings, so it is never older than a ping interval or so.
//! A step of Redis's wall clock (an operator setting it back) is not
//! covered.

use std::time::Duration;

use tokio::time::Instant;

/// Allowance for the drift between this host's and Redis's clocks: one
/// ms per second since the reading (1,000 ppm, far beyond real quartz).
const DRIFT_PER_MILLE: u64 = 1;

/// A reading of Redis `TIME`, anchored where it is certainly not ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RedisClock {
    /// When the reply arrived, on this host's monotonic clock.
    received: Instant,
    /// What `TIME` said, in µs since the epoch.
    redis_us: u64,
}

impl RedisClock {
    /// A reading whose reply, `(seconds, microseconds)` as `TIME` answers,
    /// arrived at `received`.
    pub(crate) fn new(received: Instant, (secs, micros): (u64, u64)) -> RedisClock {
        RedisClock {
            received,
            redis_us: secs.saturating_mul(1_000_000).saturating_add(micros),
        }
    }

    /// A time, in µs since the epoch on Redis's clock, that Redis's clock
    /// had certainly reached at the local instant `at` (or is behind, if
    /// `at` is before the reading).
    pub(crate) fn lower_bound_us(&self, at: Instant) -> u64 {
        let ahead = at.saturating_duration_since(self.received);
        let behind = self.received.saturating_duration_since(at);
        let ahead_us = micros(ahead);
        let drift_us = ahead_us / 1_000 * DRIFT_PER_MILLE;
        self.redis_us
            .saturating_add(ahead_us)
            .saturating_sub(drift_us)
            .saturating_sub(micros(behind))
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().try_into().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bound_follows_the_local_clock_minus_the_drift_allowance() {
        let t0 = Instant::now();
        let clock = RedisClock::new(t0, (1_700_000_000, 250_000));
        let base = 1_700_000_000_250_000u64;
        assert_eq!(clock.lower_bound_us(t0), base);
        // One second later: one second on, minus one ms of drift.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(clock.lower_bound_us(later), base + 1_000_000 - 1_000);
        // Before the reading, simply behind.
        tokio::time::advance(Duration::from_secs(2)).await;
        let clock = RedisClock::new(Instant::now(), (1_700_000_002, 0));
        assert_eq!(
            clock.lower_bound_us(Instant::now() - Duration::from_millis(500)),
            1_700_000_001_500_000
        );
    }
}
