//! Fleet-wide limits: the [`Limiter`] trait and what it is asked.
//!
//! Moderation decides which limits apply to a post; the bus keeps their
//! state where every instance sees it (Redis, or memory for the embedded
//! bus), so a user connected to several instances has one budget.

use std::time::Duration;

use crate::{BoxFuture, BusError};

/// One limit a post must pass, keyed by what it limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitCheck {
    /// What is limited, e.g. `user:alice` or `slow:room1:alice`; the bus
    /// adds its own prefix. Keys are opaque to the bus.
    pub key: String,
    /// How.
    pub kind: LimitKind,
}

/// The kinds of limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// A GCRA limit: one event per `period` sustained, up to `burst` at once.
    /// Slow mode is `burst: 1` with `period` the slow-mode interval.
    Gcra {
        /// Time per event, sustained.
        period: Duration,
        /// Events allowed at once; at least 1.
        burst: u32,
    },
    /// Passes once per `ttl`: the first check sets the key, later ones fail
    /// until it expires (duplicate detection).
    Once {
        /// How long the key holds.
        ttl: Duration,
    },
}

/// A check that did not pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitExceeded {
    /// Index, in the checks given, of the first that failed.
    pub index: usize,
    /// When that check would pass.
    pub retry_after: Duration,
}

/// Fleet-wide limit state.
pub trait Limiter: Send + Sync + 'static {
    /// Runs `checks` in order, all or nothing, atomically: if every one
    /// passes, each is charged (GCRA state advanced, `Once` keys set) and
    /// the result is `Ok(None)`; otherwise nothing is charged and the
    /// first failure is returned. Keys expire on their own once idle, so
    /// the state never grows without bound. Time is the backend's own
    /// clock (Redis `TIME`), so instances whose clocks differ agree.
    /// Resolves within [`crate::BusConfig::op_timeout`].
    fn check_limits(
        &self,
        checks: Vec<LimitCheck>,
    ) -> BoxFuture<'_, Result<Option<LimitExceeded>, BusError>>;
}
