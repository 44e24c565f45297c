//! Moderation: decides whether a client's post may be published.
//!
//! Every post passes through [`Moderator::check`] before it reaches the bus.
//! The pipeline is a list of small steps run in order: validation (text,
//! with [`danmaku_proto::validate_text`], colour, mode), then a per-connection rate limit. Blocked words, mutes,
//! room modes and cluster-wide limits are later steps of the same list; each
//! sees the [`PostContext`] (room, user, role, time) so it can be written and
//! tested as a pure function. Nonces are not checked here: the gateway checks
//! them once, with [`danmaku_proto::Nonce`], for posts and pings alike.
//!
//! Architecture invariant: moderation decides, it does not send, and it does
//! no I/O. It returns a verdict; the gateway turns a refusal into a `reject`
//! frame. Time comes from an injected [`Clock`], so tests drive it by hand.

mod rules;

pub use crate::rules::{
    Change, FieldError, Mute, RoomSettings, Snapshot, WordAction, MAX_SLOW_MODE_SECS,
    MAX_WORD_CHARS,
};

use std::num::NonZeroU32;
use std::time::Duration;

use danmaku_proto::{
    validate_color, validate_text, InvalidText, Mode, Post, RejectCode, Role, RoomId, DEFAULT_COLOR,
};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// Settings of the moderation pipeline; every limit is configurable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Longest comment, in Unicode scalar values, after trimming.
    pub max_text_chars: u32,
    /// Posts a connection may make per `post_window`, sustained.
    pub post_rate_count: u32,
    /// The window of `post_rate_count`.
    pub post_window: Duration,
    /// Posts a connection may make at once before the sustained rate applies.
    pub post_burst: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_text_chars: 100,
            post_rate_count: 5,
            post_window: Duration::from_secs(10),
            post_burst: 3,
        }
    }
}

/// A policy that cannot be enforced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A zero that would make every post fail.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
}

/// Who posts where and when: what every step may base its verdict on, beyond
/// the post itself. Built by the gateway for each post.
///
/// `I` is the moderator's clock's instant ([`Moderator::now`]), so a test
/// with a fake clock passes fake times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostContext<'a, I> {
    /// The room posted to.
    pub room: &'a RoomId,
    /// The poster's user id.
    pub user: &'a str,
    /// The poster's role; room modes and mutes will let some roles through.
    pub role: Role,
    /// When the post arrived, from [`Moderator::now`]; a retry time is
    /// counted from it.
    pub now: I,
}

/// A post that passed every check, normalised for publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The text, trimmed, each run of line breaks made one space.
    pub text: String,
    /// `#rrggbb`, lower case.
    pub color: String,
    /// Where it is drawn.
    pub mode: Mode,
}

/// Why a post was refused: what the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable code.
    pub code: RejectCode,
    /// Human-readable reason.
    pub message: String,
    /// When a retry may succeed.
    pub retry_after: Option<Duration>,
}

impl Refusal {
    fn new(code: RejectCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// The rate limiter of one connection, on clock `C`.
type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The per-connection state moderation keeps: one governor cell and a handle
/// on the clock, a few words. The gateway creates it on a connection's first
/// post, so viewers that never post cost nothing.
pub struct ConnState<C: Clock = DefaultClock> {
    limiter: Limiter<C>,
}

impl<C: Clock> std::fmt::Debug for ConnState<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnState").finish_non_exhaustive()
    }
}

/// The moderation pipeline, shared by every connection of a gateway.
///
/// Generic over its clock so tests can use governor's `FakeRelativeClock`
/// (whose clones share one time) instead of waiting for real time to pass.
#[derive(Clone)]
pub struct Moderator<C: Clock = DefaultClock> {
    policy: Policy,
    quota: Quota,
    clock: C,
}

impl<C: Clock> std::fmt::Debug for Moderator<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moderator")
            .field("policy", &self.policy)
            .field("quota", &self.quota)
            .finish_non_exhaustive()
    }
}

impl Moderator {
    /// Builds the pipeline on the real clock, refusing a policy that cannot work.
    pub fn new(policy: Policy) -> Result<Moderator, PolicyError> {
        Moderator::with_clock(policy, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Moderator<C> {
    /// Builds the pipeline on `clock`, refusing a policy that cannot work.
    pub fn with_clock(policy: Policy, clock: C) -> Result<Moderator<C>, PolicyError> {
        let count =
            NonZeroU32::new(policy.post_rate_count).ok_or(PolicyError::Zero("post_rate_count"))?;
        let burst = NonZeroU32::new(policy.post_burst).ok_or(PolicyError::Zero("post_burst"))?;
        if policy.post_window.is_zero() {
            return Err(PolicyError::Zero("post_window_ms"));
        }
        if policy.max_text_chars == 0 {
            return Err(PolicyError::Zero("max_text_chars"));
        }
        let period = policy.post_window / count.get();
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .ok_or(PolicyError::Zero("post_window_ms"))?
            .allow_burst(burst);
        Ok(Moderator {
            policy,
            quota,
            clock,
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The time now on the moderator's clock, for [`PostContext::now`].
    pub fn now(&self) -> C::Instant {
        self.clock.now()
    }

    /// Fresh state for a new connection, on the moderator's clock.
    pub fn conn_state(&self) -> ConnState<C> {
        ConnState {
            limiter: RateLimiter::direct_with_clock(self.quota, self.clock.clone()),
        }
    }

    /// Runs the pipeline on one post: each step in order, the first refusal
    /// wins. Validation comes before the rate limit so malformed posts do
    /// not use up the sender's budget.
    pub fn check(
        &self,
        ctx: &PostContext<'_, C::Instant>,
        conn: &mut ConnState<C>,
        post: &Post,
    ) -> Result<Accepted, Refusal> {
        let accepted = self.validate(post)?;
        rate(ctx, conn)?;
        Ok(accepted)
    }

    /// Step 1: the post's own fields, normalised.
    fn validate(&self, post: &Post) -> Result<Accepted, Refusal> {
        Ok(Accepted {
            text: self.text(post)?,
            color: color(post)?,
            mode: mode(post)?,
        })
    }

    /// The text, cleaned by the protocol's one text rule (trimmed, line
    /// breaks made spaces, nothing that hides or reorders its neighbours,
    /// something visible), then not too long.
    fn text(&self, post: &Post) -> Result<String, Refusal> {
        let text = validate_text(&post.text).map_err(|e| {
            let code = match e {
                InvalidText::Empty => RejectCode::Empty,
                InvalidText::BadChar => RejectCode::InvalidText,
            };
            Refusal::new(code, e.to_string())
        })?;
        // Count at most max+1 chars: enough to know, without walking a huge text.
        let max = self.policy.max_text_chars as usize;
        if text.chars().take(max + 1).count() > max {
            return Err(Refusal::new(
                RejectCode::TooLong,
                format!("text is longer than {max} characters"),
            ));
        }
        Ok(text)
    }
}

/// The colour, lower case; white when absent.
fn color(post: &Post) -> Result<String, Refusal> {
    match post.color.as_deref() {
        None => Ok(DEFAULT_COLOR.to_owned()),
        Some(c) => validate_color(c)
            .ok_or_else(|| Refusal::new(RejectCode::BadRequest, "color must be #rrggbb")),
    }
}

/// The mode; scroll when absent.
fn mode(post: &Post) -> Result<Mode, Refusal> {
    match post.mode.as_deref() {
        None => Ok(Mode::Scroll),
        Some(m) => Mode::parse(m).ok_or_else(|| {
            Refusal::new(RejectCode::BadRequest, "mode must be scroll, top or bottom")
        }),
    }
}

/// Step 2: the connection's rate limit. Takes a token, or says when the next
/// one comes, counted from `ctx.now`.
fn rate<C: Clock>(
    ctx: &PostContext<'_, C::Instant>,
    conn: &mut ConnState<C>,
) -> Result<(), Refusal> {
    let Err(not_until) = conn.limiter.check() else {
        return Ok(());
    };
    let wait = not_until.wait_time_from(ctx.now);
    // Whole milliseconds rounded up, so a client that waits exactly this long
    // succeeds; at least 1 ms, so a refusal never says "retry now".
    let ms = u64::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    Err(Refusal {
        code: RejectCode::RateLimited,
        message: "posting too fast".into(),
        retry_after: Some(Duration::from_millis(ms.max(1))),
    })
}

// ---------------------------------------------------------------------------
// API of the full pipeline (issue 8). SKELETON: the bodies below are for the
// moderation helper to write; the gateway is written against these
// signatures.
// ---------------------------------------------------------------------------

/// A limit the gateway must check fleet-wide (through the bus's limiter),
/// decided here: moderation says which keys and budgets apply, the bus keeps
/// their state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterCheck {
    /// The key, e.g. `user:alice`, `ip:203.0.113.0`, `slow:room1:alice`,
    /// `dup:alice:<hash>`. Opaque to the bus.
    pub key: String,
    /// How it limits.
    pub kind: ClusterKind,
    /// The code a failure is refused with.
    pub code: RejectCode,
}

/// The kinds of fleet-wide limit (mirroring the bus's `LimitKind`, which
/// this crate does not depend on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterKind {
    /// GCRA: one event per `period` sustained, `burst` at once.
    Gcra {
        /// Time per event.
        period: Duration,
        /// Events at once; at least 1.
        burst: u32,
    },
    /// Passes once per `ttl`.
    Once {
        /// How long a pass holds.
        ttl: Duration,
    },
}

/// A post that passed every local step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// What to publish (the text masked where a `mask` word matched).
    pub accepted: Accepted,
    /// The poster is shadow-muted: acknowledge it and show it to the
    /// poster alone.
    pub shadow: bool,
    /// Fleet-wide limits to check next, in pipeline order (slow mode,
    /// user budget, IP budget, duplicate).
    pub cluster: Vec<ClusterCheck>,
    /// The blocked-word refusal (step 6), to report only once the cluster
    /// checks passed, so the order of steps holds.
    pub blocked: Option<Refusal>,
}
