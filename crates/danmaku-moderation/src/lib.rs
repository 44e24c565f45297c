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

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn post(text: &str) -> Post {
        Post {
            text: text.into(),
            color: None,
            mode: None,
            nonce: None,
        }
    }

    fn room() -> RoomId {
        RoomId::parse("lobby").unwrap()
    }

    /// A moderator with the default policy on a fake clock, and the clock.
    fn moderator() -> (Moderator<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let m = Moderator::with_clock(Policy::default(), clock.clone()).unwrap();
        (m, clock)
    }

    /// Checks `p` as a viewer of `lobby` posting now.
    fn check<C: Clock + Clone>(
        m: &Moderator<C>,
        c: &mut ConnState<C>,
        p: &Post,
    ) -> Result<Accepted, Refusal> {
        let room = room();
        let ctx = PostContext {
            room: &room,
            user: "guest-abc123",
            role: Role::Viewer,
            now: m.now(),
        };
        m.check(&ctx, c, p)
    }

    #[test]
    fn accepts_and_normalises() {
        let (m, _) = moderator();
        let mut c = m.conn_state();
        let p = Post {
            text: "  hi ".into(),
            color: Some("#AABBCC".into()),
            mode: Some("top".into()),
            nonce: None,
        };
        assert_eq!(
            check(&m, &mut c, &p).unwrap(),
            Accepted {
                text: "hi".into(),
                color: "#aabbcc".into(),
                mode: Mode::Top
            }
        );
        assert_eq!(check(&m, &mut c, &post("x")).unwrap().color, DEFAULT_COLOR);
    }

    #[test]
    fn refuses_with_stable_codes() {
        let (m, _) = moderator();
        let mut c = m.conn_state();
        assert_eq!(
            check(&m, &mut c, &post("  \n ")).unwrap_err().code,
            RejectCode::Empty
        );
        assert_eq!(
            check(&m, &mut c, &post(&"字".repeat(101)))
                .unwrap_err()
                .code,
            RejectCode::TooLong
        );
        assert!(check(&m, &mut c, &post(&"字".repeat(100))).is_ok());
        let bad_color = Post {
            color: Some("red".into()),
            ..post("x")
        };
        assert_eq!(
            check(&m, &mut c, &bad_color).unwrap_err().code,
            RejectCode::BadRequest
        );
        let bad_mode = Post {
            mode: Some("diagonal".into()),
            ..post("x")
        };
        assert_eq!(
            check(&m, &mut c, &bad_mode).unwrap_err().code,
            RejectCode::BadRequest
        );
    }

    #[test]
    fn text_that_could_hide_or_reorder_its_neighbours_is_refused() {
        let (m, _) = moderator();
        let mut c = m.conn_state();
        for bad in [
            "abc\u{202E}txt.exe",
            "\u{202D}x",
            "x\u{2066}y\u{2069}",
            "a\u{0}b",
            "a\u{1B}[2Jb",
            "a\u{9B}b",
        ] {
            let refusal = check(&m, &mut c, &post(bad)).unwrap_err();
            assert_eq!(refusal.code, RejectCode::InvalidText, "{bad:?}");
            assert_eq!(RejectCode::InvalidText.as_str(), "invalid_text");
        }
        for blank in [
            "\u{200B}",
            "\u{200B}\u{200D}\u{FEFF}",
            "\u{200F}",
            "\u{3164}",
        ] {
            let refusal = check(&m, &mut c, &post(blank)).unwrap_err();
            assert_eq!(refusal.code, RejectCode::Empty, "{blank:?}");
        }
    }

    #[test]
    fn text_line_breaks_become_spaces_and_legitimate_text_passes() {
        let (m, clock) = moderator();
        let mut c = m.conn_state();
        let text =
            |m: &Moderator<_>, c: &mut ConnState<_>, t: &str| check(m, c, &post(t)).map(|a| a.text);
        assert_eq!(
            text(&m, &mut c, "  one\r\ntwo\tthree \n").unwrap(),
            "one two three"
        );
        for good in [
            "👨\u{200D}👩\u{200D}👧",
            "שלום \u{200F}123",
            "弹幕 e\u{301}",
        ] {
            clock.advance(Duration::from_secs(10));
            assert_eq!(text(&m, &mut c, good).as_deref(), Ok(good));
        }
        // The length limit counts the cleaned text: 50 letters joined by CRLF
        // pairs are 148 characters as sent, 99 once each pair is one space.
        clock.advance(Duration::from_secs(10));
        let long = vec!["a"; 50].join("\r\n");
        assert_eq!(text(&m, &mut c, &long).unwrap().chars().count(), 99);
    }

    #[test]
    fn the_nonce_is_not_moderations_business() {
        // The gateway refuses over-long nonces (with `Nonce`) before moderation runs.
        let (m, _) = moderator();
        let long_nonce = Post {
            nonce: Some("n".repeat(65)),
            ..post("x")
        };
        assert!(check(&m, &mut m.conn_state(), &long_nonce).is_ok());
    }

    #[test]
    fn rate_limit_allows_the_burst_then_refuses_with_an_exact_retry_after() {
        let (m, clock) = moderator();
        let mut c = m.conn_state();
        for _ in 0..3 {
            check(&m, &mut c, &post("x")).unwrap();
        }
        let refusal = check(&m, &mut c, &post("x")).unwrap_err();
        assert_eq!(refusal.code, RejectCode::RateLimited);
        // 5 posts per 10 s: one token every 2 s, and the clock has not moved.
        assert_eq!(refusal.retry_after, Some(Duration::from_secs(2)));
        // Halfway there, the wait is half as long.
        clock.advance(Duration::from_millis(500));
        let refusal = check(&m, &mut c, &post("x")).unwrap_err();
        assert_eq!(refusal.retry_after, Some(Duration::from_millis(1500)));
        // Sub-millisecond waits round up, never down to "now".
        clock.advance(Duration::from_micros(1_499_999));
        let refusal = check(&m, &mut c, &post("x")).unwrap_err();
        assert_eq!(refusal.retry_after, Some(Duration::from_millis(1)));
    }

    #[test]
    fn retry_after_is_counted_from_the_context_time() {
        let (m, clock) = moderator();
        let mut c = m.conn_state();
        let room = room();
        let then = m.now();
        clock.advance(Duration::from_millis(300));
        let ctx = PostContext {
            room: &room,
            user: "u",
            role: Role::Viewer,
            now: then,
        };
        for _ in 0..3 {
            m.check(&ctx, &mut c, &post("x")).unwrap();
        }
        // The token is due 2 s after the limiter saw the post, 2.3 s after `then`.
        let refusal = m.check(&ctx, &mut c, &post("x")).unwrap_err();
        assert_eq!(refusal.retry_after, Some(Duration::from_millis(2300)));
    }

    #[test]
    fn waiting_one_period_lets_exactly_one_more_post_through() {
        let (m, clock) = moderator();
        let mut c = m.conn_state();
        for _ in 0..3 {
            check(&m, &mut c, &post("x")).unwrap();
        }
        let wait = check(&m, &mut c, &post("x"))
            .unwrap_err()
            .retry_after
            .unwrap();
        clock.advance(wait - Duration::from_nanos(1));
        assert_eq!(
            check(&m, &mut c, &post("x")).unwrap_err().code,
            RejectCode::RateLimited,
            "not a moment too soon"
        );
        clock.advance(Duration::from_nanos(1));
        check(&m, &mut c, &post("x")).unwrap();
        assert_eq!(
            check(&m, &mut c, &post("x")).unwrap_err().retry_after,
            Some(Duration::from_secs(2))
        );
        // Idle long enough and the whole burst is back, no more.
        clock.advance(Duration::from_secs(60));
        for _ in 0..3 {
            check(&m, &mut c, &post("x")).unwrap();
        }
        assert!(check(&m, &mut c, &post("x")).is_err());
    }

    #[test]
    fn invalid_posts_do_not_use_the_budget() {
        let (m, _) = moderator();
        let mut c = m.conn_state();
        let bad_color = Post {
            color: Some("red".into()),
            ..post("x")
        };
        for _ in 0..10 {
            assert_eq!(
                check(&m, &mut c, &post("")).unwrap_err().code,
                RejectCode::Empty
            );
            assert_eq!(
                check(&m, &mut c, &bad_color).unwrap_err().code,
                RejectCode::BadRequest
            );
        }
        for _ in 0..3 {
            check(&m, &mut c, &post("x")).unwrap();
        }
        // Once limited, invalid posts are still refused for what they are.
        assert_eq!(
            check(&m, &mut c, &post("x")).unwrap_err().code,
            RejectCode::RateLimited
        );
        assert_eq!(
            check(&m, &mut c, &post("")).unwrap_err().code,
            RejectCode::Empty
        );
    }

    #[test]
    fn each_connection_has_its_own_budget() {
        let (m, _) = moderator();
        let mut first = m.conn_state();
        for _ in 0..3 {
            check(&m, &mut first, &post("x")).unwrap();
        }
        assert!(check(&m, &mut first, &post("x")).is_err());
        let mut second = m.conn_state();
        for _ in 0..3 {
            check(&m, &mut second, &post("x")).unwrap();
        }
        assert!(check(&m, &mut second, &post("x")).is_err());
    }

    #[test]
    fn the_real_clock_still_limits() {
        let m = Moderator::new(Policy::default()).unwrap();
        let mut c = m.conn_state();
        for _ in 0..3 {
            check(&m, &mut c, &post("x")).unwrap();
        }
        let wait = check(&m, &mut c, &post("x"))
            .unwrap_err()
            .retry_after
            .unwrap();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        assert!(check(&m, &mut m.conn_state(), &post("x")).is_ok());
    }

    #[test]
    fn zero_limits_are_refused() {
        for p in [
            Policy {
                post_rate_count: 0,
                ..Policy::default()
            },
            Policy {
                post_burst: 0,
                ..Policy::default()
            },
            Policy {
                post_window: Duration::ZERO,
                ..Policy::default()
            },
            Policy {
                max_text_chars: 0,
                ..Policy::default()
            },
        ] {
            assert!(Moderator::new(p.clone()).is_err());
            assert!(Moderator::with_clock(p, FakeRelativeClock::default()).is_err());
        }
    }
}
