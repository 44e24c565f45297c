//! Delay between reconnection attempts: capped exponential backoff with
//! full jitter (a random delay in `[0, cap]`, the cap doubling per failure),
//! so a fleet that lost the same Redis does not reconnect in lockstep.

use std::time::Duration;

use rand::RngExt;
use tokio::sync::watch;

/// Capped exponential backoff with full jitter.
#[derive(Debug)]
pub(crate) struct Backoff {
    /// The cap of the next delay.
    cap: Duration,
    /// The largest cap.
    max: Duration,
}

impl Backoff {
    /// The cap of the first delay after a success.
    pub(crate) const FIRST: Duration = Duration::from_millis(50);

    pub(crate) fn new(max: Duration) -> Backoff {
        Backoff {
            cap: Self::FIRST.min(max),
            max,
        }
    }

    /// After a success: the next failure waits little again.
    pub(crate) fn reset(&mut self) {
        self.cap = Self::FIRST.min(self.max);
    }

    /// The next delay, random in `[0, cap]`; doubles the cap up to `max`.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let cap = self.cap;
        self.cap = (self.cap * 2).min(self.max);
        let cap_us = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rand::rng().random_range(0..=cap_us))
    }

    /// Sleeps for the next delay; false if the bus was dropped meanwhile.
    pub(crate) async fn wait(&mut self, stop: &mut watch::Receiver<()>) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = stop.changed() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_a_doubling_cap_that_stops_at_max_and_resets() {
        let max = Duration::from_millis(400);
        let mut b = Backoff::new(max);
        let caps = [50, 100, 200, 400, 400, 400].map(Duration::from_millis);
        for cap in caps {
            let d = b.next_delay();
            assert!(d <= cap, "{d:?} > {cap:?}");
        }
        b.reset();
        for _ in 0..100 {
            b.reset();
            assert!(b.next_delay() <= Backoff::FIRST);
        }
        // Full jitter: delays spread over the range, not all at the cap.
        let mut b = Backoff::new(max);
        for _ in 0..4 {
            b.next_delay();
        }
        let delays: Vec<Duration> = (0..200).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= max));
        assert!(delays.iter().any(|d| *d < max / 2));
        assert!(delays.iter().any(|d| *d > max / 2));
    }

    #[test]
    fn a_max_below_the_first_delay_caps_it() {
        let mut b = Backoff::new(Duration::from_millis(10));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_millis(10));
        }
    }
}
