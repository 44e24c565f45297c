//! Moderation: decides whether a client's post may be published.
//!
//! Every post passes through [`Moderator::check`] before it reaches the bus.
//! This pipeline is validation (text, colour, mode, nonce) followed by
//! a per-connection rate limit; blocked words, mutes, room modes and
//! cluster-wide limits are later stages of the same pipeline.
//!
//! Architecture invariant: moderation decides, it does not send. It returns a
//! verdict; the gateway turns a refusal into a `reject` frame.

use std::num::NonZeroU32;
use std::time::Duration;

use danmaku_proto::{validate_color, Mode, Post, RejectCode, DEFAULT_COLOR, MAX_NONCE_BYTES};
use governor::clock::{Clock, DefaultClock};
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

/// A post that passed every check, normalised for publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The text, trimmed.
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

/// The per-connection state moderation keeps: one governor cell, a few words.
pub struct ConnState {
    limiter: RateLimiter<governor::state::NotKeyed, governor::state::InMemoryState, DefaultClock>,
}

impl std::fmt::Debug for ConnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnState").finish_non_exhaustive()
    }
}

/// The moderation pipeline, shared by every connection of a gateway.
#[derive(Debug, Clone)]
pub struct Moderator {
    policy: Policy,
    quota: Quota,
}

impl Moderator {
    /// Builds the pipeline, refusing a policy that cannot work.
    pub fn new(policy: Policy) -> Result<Moderator, PolicyError> {
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
        Ok(Moderator { policy, quota })
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Fresh state for a new connection.
    pub fn conn_state(&self) -> ConnState {
        ConnState {
            limiter: RateLimiter::direct(self.quota),
        }
    }

    /// Runs the pipeline on one post. Validation comes first so malformed
    /// posts do not use up the sender's rate budget.
    pub fn check(&self, conn: &ConnState, post: &Post) -> Result<Accepted, Refusal> {
        if post
            .nonce
            .as_ref()
            .is_some_and(|n| n.len() > MAX_NONCE_BYTES)
        {
            return Err(Refusal::new(
                RejectCode::BadRequest,
                format!("nonce is longer than {MAX_NONCE_BYTES} bytes"),
            ));
        }
        let text = post.text.trim();
        if text.is_empty() {
            return Err(Refusal::new(RejectCode::Empty, "text is empty"));
        }
        // Count at most max+1 chars: enough to know, without walking a huge text.
        let max = self.policy.max_text_chars as usize;
        if text.chars().take(max + 1).count() > max {
            return Err(Refusal::new(
                RejectCode::TooLong,
                format!("text is longer than {max} characters"),
            ));
        }
        let color = match post.color.as_deref() {
            None => DEFAULT_COLOR.to_owned(),
            Some(c) => validate_color(c)
                .ok_or_else(|| Refusal::new(RejectCode::BadRequest, "color must be #rrggbb"))?,
        };
        let mode = match post.mode.as_deref() {
            None => Mode::Scroll,
            Some(m) => Mode::parse(m).ok_or_else(|| {
                Refusal::new(RejectCode::BadRequest, "mode must be scroll, top or bottom")
            })?,
        };
        if let Err(not_until) = conn.limiter.check() {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(Refusal {
                code: RejectCode::RateLimited,
                message: "posting too fast".into(),
                // Round up so a client that waits exactly this long succeeds.
                retry_after: Some(Duration::from_millis(wait.as_millis() as u64 + 1)),
            });
        }
        Ok(Accepted {
            text: text.to_owned(),
            color,
            mode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(text: &str) -> Post {
        Post {
            text: text.into(),
            color: None,
            mode: None,
            nonce: None,
        }
    }

    fn moderator() -> Moderator {
        Moderator::new(Policy::default()).unwrap()
    }

    #[test]
    fn accepts_and_normalises() {
        let m = moderator();
        let c = m.conn_state();
        let p = Post {
            text: "  hi ".into(),
            color: Some("#AABBCC".into()),
            mode: Some("top".into()),
            nonce: None,
        };
        assert_eq!(
            m.check(&c, &p).unwrap(),
            Accepted {
                text: "hi".into(),
                color: "#aabbcc".into(),
                mode: Mode::Top
            }
        );
        assert_eq!(m.check(&c, &post("x")).unwrap().color, DEFAULT_COLOR);
    }

    #[test]
    fn refuses_with_stable_codes() {
        let m = moderator();
        let c = m.conn_state();
        assert_eq!(
            m.check(&c, &post("  \n ")).unwrap_err().code,
            RejectCode::Empty
        );
        assert_eq!(
            m.check(&c, &post(&"字".repeat(101))).unwrap_err().code,
            RejectCode::TooLong
        );
        assert!(m.check(&c, &post(&"字".repeat(100))).is_ok());
        let bad_color = Post {
            color: Some("red".into()),
            ..post("x")
        };
        assert_eq!(
            m.check(&c, &bad_color).unwrap_err().code,
            RejectCode::BadRequest
        );
        let bad_mode = Post {
            mode: Some("diagonal".into()),
            ..post("x")
        };
        assert_eq!(
            m.check(&c, &bad_mode).unwrap_err().code,
            RejectCode::BadRequest
        );
        let bad_nonce = Post {
            nonce: Some("n".repeat(65)),
            ..post("x")
        };
        assert_eq!(
            m.check(&c, &bad_nonce).unwrap_err().code,
            RejectCode::BadRequest
        );
    }

    #[test]
    fn rate_limit_allows_the_burst_then_refuses_with_retry_after() {
        let m = moderator();
        let c = m.conn_state();
        for _ in 0..3 {
            m.check(&c, &post("x")).unwrap();
        }
        let refusal = m.check(&c, &post("x")).unwrap_err();
        assert_eq!(refusal.code, RejectCode::RateLimited);
        let wait = refusal.retry_after.unwrap();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        // Invalid posts are refused for what they are, not for the rate.
        assert_eq!(m.check(&c, &post("")).unwrap_err().code, RejectCode::Empty);
        // Each connection has its own budget.
        assert!(m.check(&m.conn_state(), &post("x")).is_ok());
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
            assert!(Moderator::new(p).is_err());
        }
    }
}
