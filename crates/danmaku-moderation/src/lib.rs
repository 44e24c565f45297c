//! Moderation: decides whether a client's post may be published.
//!
//! Every post passes through [`Moderator::check`] before it reaches the bus.
//! The pipeline is a list of steps run in order, the first refusal winning:
//!
//! 1. validation: text (with [`danmaku_proto::validate_text`], length by
//!    role), colour, mode;
//! 2. mutes, per room and global, possibly shadow mutes;
//! 3. room modes: a locked room, then slow mode (fleet-wide);
//! 4. rate limits: per client address and per user, locally here and
//!    fleet-wide;
//! 5. duplicates (fleet-wide);
//! 6. blocked and masked words.
//!
//! Fleet-wide limits need state shared by every instance, which this crate
//! does not have: `check` returns them as [`ClusterCheck`]s, in pipeline
//! order, for the gateway to run against the bus, with the blocked-word
//! verdict held back ([`Checked::blocked`]) so it is reported only once they
//! pass. Nonces are not checked here: the gateway checks them once, with
//! [`danmaku_proto::Nonce`], for posts and pings alike.
//!
//! Architecture invariant: moderation decides, it does not send, and it does
//! no I/O. It returns a verdict; the gateway turns a refusal into a `reject`
//! frame. Time comes from an injected [`Clock`] (for rate limits) and from
//! the caller's wall time (for mute expiry), so tests drive both by hand.

mod limits;
mod normalize;
mod rules;
mod store;
mod words;

pub use crate::normalize::normalize;
pub use crate::rules::{
    parse_blocklist, Change, FieldError, Mute, RoomSettings, Snapshot, WordAction,
    MAX_SLOW_MODE_SECS, MAX_USER_BYTES, MAX_WORD_CHARS,
};

use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use danmaku_proto::{
    validate_color, validate_text, InvalidText, Mode, Post, RejectCode, Role, RoomId, DEFAULT_COLOR,
};
use governor::clock::{Clock, DefaultClock};
use governor::RateLimiter;
use parking_lot::{Mutex, RwLock};

use crate::limits::{whole_ms, Budget, IpKey, Keyed};
use crate::normalize::stable_hash;
use crate::store::Rules;
use crate::words::Words;

/// Settings of the moderation pipeline; every limit is configurable.
///
/// There is no setting for how long an idle limiter key is kept: governor
/// decides that from the quota. [`Moderator::evict_idle`] drops a key once
/// its budget has refilled completely (at most `burst` × `window / count`
/// after its last post), since a fresh key behaves the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Longest comment of a viewer, in Unicode scalar values, after trimming.
    pub max_text_chars: u32,
    /// Longest comment of a moderator or admin, who may need to explain.
    pub max_text_chars_moderator: u32,
    /// Posts a user may make per `post_window`, sustained.
    pub post_rate_count: u32,
    /// The window of `post_rate_count`.
    pub post_window: Duration,
    /// Posts a user may make at once before the sustained rate applies.
    pub post_burst: u32,
    /// Posts one client address (IPv4, or IPv6 /64) may make per
    /// `ip_window`, all its users together; moderators and admins are not
    /// counted.
    pub ip_rate_count: u32,
    /// The window of `ip_rate_count`.
    pub ip_window: Duration,
    /// Posts one address may make at once.
    pub ip_burst: u32,
    /// Moderators' and admins' user budget (count and burst) is the
    /// viewers' times this.
    pub moderator_rate_factor: u32,
    /// A viewer may not post the same text (after folding, as for word
    /// matching) twice within this; zero turns the check off.
    pub duplicate_window: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_text_chars: 100,
            max_text_chars_moderator: 300,
            post_rate_count: 5,
            post_window: Duration::from_secs(10),
            post_burst: 3,
            ip_rate_count: 30,
            ip_window: Duration::from_secs(10),
            ip_burst: 15,
            moderator_rate_factor: 10,
            duplicate_window: Duration::from_secs(30),
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
    /// The poster's role: moderators and admins pass locked rooms, slow
    /// mode, the address limit and the duplicate check; admins also mutes.
    pub role: Role,
    /// The client's address, for the per-address limit.
    pub ip: IpAddr,
    /// When the post arrived, from [`Moderator::now`]; a retry time is
    /// counted from it.
    pub now: I,
    /// When the post arrived, in ms since the Unix epoch: mutes end at a
    /// wall time, which every instance must agree on.
    pub wall_ms: u64,
}

/// A post that passed every check, normalised for publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The text, trimmed, each run of line breaks made one space, masked
    /// words replaced by `*`.
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
    /// A refusal with no retry time.
    fn new(code: RejectCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// What moderators see of a room: its modes and who may not post in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomView {
    /// The room's modes.
    pub settings: RoomSettings,
    /// The room's unexpired mutes and the unexpired global ones, sorted by
    /// room (global first) then user.
    pub mutes: Vec<Mute>,
}

/// The moderation pipeline, shared by every connection of a gateway.
///
/// Cheap to clone: clones share the rules and the limiters (an `Arc`
/// inside), so every task of an instance sees one state. Generic over its
/// clock so tests can use governor's `FakeRelativeClock` (whose clones
/// share one time) instead of waiting for real time to pass.
pub struct Moderator<C: Clock = DefaultClock> {
    /// Everything, shared by clones.
    inner: Arc<Inner<C>>,
}

impl<C: Clock> Clone for Moderator<C> {
    fn clone(&self) -> Self {
        Moderator {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// What clones of a [`Moderator`] share.
struct Inner<C: Clock> {
    /// The settings.
    policy: Policy,
    /// The limiters' clock, also [`Moderator::now`].
    clock: C,
    /// A viewer's budget.
    viewer_budget: Budget,
    /// A moderator's or admin's budget.
    staff_budget: Budget,
    /// A client address's budget.
    ip_budget: Budget,
    /// Viewers, by user id.
    viewers: Keyed<String, C>,
    /// Moderators and admins, by user id: a separate limiter, as their
    /// budget differs.
    staff: Keyed<String, C>,
    /// Client addresses.
    ips: Keyed<IpKey, C>,
    /// The rules in force; posts take the read lock briefly.
    rules: RwLock<Rules>,
    /// Held while a word edit builds its new list, so two edits cannot
    /// each start from the old list and lose one another; posts never take
    /// it.
    word_edits: Mutex<()>,
}

impl<C: Clock> std::fmt::Debug for Moderator<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moderator")
            .field("policy", &self.inner.policy)
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
    /// Builds the pipeline on `clock`, with no rules, refusing a policy that
    /// cannot work.
    pub fn with_clock(policy: Policy, clock: C) -> Result<Moderator<C>, PolicyError> {
        if policy.max_text_chars == 0 {
            return Err(PolicyError::Zero("max_text_chars"));
        }
        if policy.max_text_chars_moderator == 0 {
            return Err(PolicyError::Zero("max_text_chars_moderator"));
        }
        if policy.moderator_rate_factor == 0 {
            return Err(PolicyError::Zero("moderator_rate_factor"));
        }
        let user_names = ["post_rate_count", "post_window_ms", "post_burst"];
        let viewer_budget = Budget::new(
            policy.post_rate_count,
            policy.post_window,
            policy.post_burst,
            1,
            user_names,
        )?;
        let staff_budget = Budget::new(
            policy.post_rate_count,
            policy.post_window,
            policy.post_burst,
            policy.moderator_rate_factor,
            user_names,
        )?;
        let ip_budget = Budget::new(
            policy.ip_rate_count,
            policy.ip_window,
            policy.ip_burst,
            1,
            ["ip_rate_count", "ip_window_ms", "ip_burst"],
        )?;
        crate::normalize::warm_up();
        let inner = Inner {
            viewers: RateLimiter::dashmap_with_clock(viewer_budget.quota, clock.clone()),
            staff: RateLimiter::dashmap_with_clock(staff_budget.quota, clock.clone()),
            ips: RateLimiter::dashmap_with_clock(ip_budget.quota, clock.clone()),
            policy,
            clock,
            viewer_budget,
            staff_budget,
            ip_budget,
            rules: RwLock::new(Rules::default()),
            word_edits: Mutex::new(()),
        };
        Ok(Moderator {
            inner: Arc::new(inner),
        })
    }
}

impl<C: Clock> Moderator<C> {
    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// The time now on the moderator's clock, for [`PostContext::now`].
    pub fn now(&self) -> C::Instant {
        self.inner.clock.now()
    }

    /// Runs the local pipeline on one post: each step in order, the first
    /// refusal wins. What it cannot decide alone comes back in
    /// [`Checked::cluster`] and [`Checked::blocked`].
    ///
    /// Validation comes first so malformed posts do not use up the
    /// sender's budget, and mutes and room modes come before the rate
    /// limits for the same reason.
    pub fn check(
        &self,
        ctx: &PostContext<'_, C::Instant>,
        post: &Post,
    ) -> Result<Checked, Refusal> {
        let staff = ctx.role >= Role::Moderator;
        let mut accepted = self.validate(post, ctx.role)?;

        let (shadow, settings, words) = {
            let rules = self.inner.rules.read();
            let shadow = mute_step(&rules, ctx)?;
            let settings = rules.room(ctx.room.as_str());
            (shadow, settings, Arc::clone(&rules.words))
        };

        if settings.locked && !staff {
            return Err(Refusal::new(
                RejectCode::RoomLocked,
                "this room is locked: only moderators may post",
            ));
        }
        let mut cluster = Vec::with_capacity(4);
        if settings.slow_mode_secs > 0 && !staff {
            let secs = settings.slow_mode_secs.min(MAX_SLOW_MODE_SECS);
            cluster.push(ClusterCheck {
                key: key(&["slow:", ctx.room.as_str(), ":", ctx.user]),
                kind: ClusterKind::Gcra {
                    period: Duration::from_secs(u64::from(secs)),
                    burst: 1,
                },
                code: RejectCode::SlowMode,
            });
        }

        self.local_rate(ctx, staff)?;
        let budget = if staff {
            &self.inner.staff_budget
        } else {
            &self.inner.viewer_budget
        };
        cluster.push(ClusterCheck {
            key: key(&["user:", ctx.user]),
            kind: budget.cluster(),
            code: RejectCode::RateLimited,
        });
        if !staff {
            cluster.push(ClusterCheck {
                key: {
                    let mut key = String::with_capacity(24);
                    key.push_str("ip:");
                    IpKey::of(ctx.ip).push_to(&mut key);
                    key
                },
                kind: self.inner.ip_budget.cluster(),
                code: RejectCode::RateLimited,
            });
        }

        let folded = normalize(&accepted.text);
        let mut found = words.scan(&folded);
        found.keep_spelled(&accepted.text, &folded);
        let blocked = (!found.block.is_empty())
            .then(|| Refusal::new(RejectCode::Blocked, "the comment contains a blocked word"));
        if blocked.is_none() {
            if !found.mask_chars.is_empty() {
                accepted.text = mask(&accepted.text, &found.mask_chars);
            }
            let window = self.inner.policy.duplicate_window;
            if !staff && !window.is_zero() {
                // Folded, so trivial variations repeat; a text of only
                // punctuation or symbols folds to nothing and is hashed as
                // written, so `!!!` and `???` differ.
                let basis = if folded.is_empty() {
                    accepted.text.as_str()
                } else {
                    folded.as_str()
                };
                cluster.push(ClusterCheck {
                    key: {
                        let mut key = key(&["dup:", ctx.user, ":"]);
                        push_hex(&mut key, stable_hash(basis));
                        key
                    },
                    kind: ClusterKind::Once { ttl: window },
                    code: RejectCode::Duplicate,
                });
            }
        }
        Ok(Checked {
            accepted,
            shadow,
            cluster,
            blocked,
        })
    }

    /// The client-facing refusal for a fleet-wide check that failed, to
    /// retry after `retry_after` (rounded up to whole ms, at least 1 ms).
    pub fn refusal(&self, check: &ClusterCheck, retry_after: Duration) -> Refusal {
        let message = match (check.code, check.kind) {
            (RejectCode::SlowMode, ClusterKind::Gcra { period, .. }) => {
                format!("slow mode: one comment per {} s", period.as_secs().max(1))
            }
            (RejectCode::Duplicate, _) => "duplicate comment: wait before repeating it".into(),
            (RejectCode::RateLimited, _) => "posting too fast".into(),
            (code, _) => code.as_str().replace('_', " "),
        };
        Refusal {
            code: check.code,
            message,
            retry_after: Some(whole_ms(retry_after)),
        }
    }

    /// Forgets limiter keys whose budget has refilled (their state is the
    /// same as a fresh key's) and gives back the memory; the gateway calls
    /// it on a timer so the limiters do not grow with every user and
    /// address ever seen.
    pub fn evict_idle(&self) {
        let inner = &self.inner;
        inner.viewers.retain_recent();
        inner.viewers.shrink_to_fit();
        inner.staff.retain_recent();
        inner.staff.shrink_to_fit();
        inner.ips.retain_recent();
        inner.ips.shrink_to_fit();
    }

    /// Keys the local limiters hold: users and addresses seen recently.
    pub fn limiter_keys(&self) -> usize {
        let inner = &self.inner;
        inner.viewers.len() + inner.staff.len() + inner.ips.len()
    }

    /// Replaces every rule at once: what a (re)started instance loads from
    /// the store. Words that fold to nothing are left out, as they could
    /// never match. On error (a word list too large to build) nothing
    /// changes.
    pub fn replace(&self, snapshot: Snapshot) -> Result<(), FieldError> {
        let _edit = self.inner.word_edits.lock();
        let words = Words::build(
            snapshot.blocklist.iter().cloned(),
            snapshot.allowlist.iter().cloned(),
        )?;
        let rules = Rules::from_snapshot(snapshot, words);
        *self.inner.rules.write() = rules;
        Ok(())
    }

    /// Applies one edit, after [`Change::validate`]. A word edit builds the
    /// new word list before taking the lock, so posts are not held up while
    /// it builds.
    pub fn apply(&self, change: &Change) -> Result<(), FieldError> {
        change.validate()?;
        match change {
            Change::Mute(mute) => self.inner.rules.write().mute(mute.clone()),
            Change::Unmute { room, user } => self.inner.rules.write().unmute(room.as_deref(), user),
            Change::RoomSettings { room, settings } => {
                self.inner.rules.write().set_room(room.clone(), *settings)
            }
            Change::BlockWord { .. }
            | Change::UnblockWord { .. }
            | Change::AllowWord { .. }
            | Change::DisallowWord { .. } => {
                let _edit = self.inner.word_edits.lock();
                let mut words = self.inner.rules.read().words.edited();
                match change {
                    Change::BlockWord { word, action } => words.insert_block(word, *action),
                    Change::UnblockWord { word } => words.remove_block(word),
                    Change::AllowWord { word } => words.insert_allow(word),
                    Change::DisallowWord { word } => words.remove_allow(word),
                    _ => {}
                }
                words.rebuild()?;
                self.inner.rules.write().words = Arc::new(words);
            }
        }
        Ok(())
    }

    /// Every rule as values, each list sorted: what [`Moderator::replace`]
    /// takes back.
    pub fn snapshot(&self) -> Snapshot {
        self.inner.rules.read().snapshot()
    }

    /// A room's modes and the mutes that apply in it at `wall_ms`.
    pub fn room_view(&self, room: &str, wall_ms: u64) -> RoomView {
        let rules = self.inner.rules.read();
        RoomView {
            settings: rules.room(room),
            mutes: rules.room_mutes(room, wall_ms),
        }
    }

    /// (room, user) of every mute that has ended by `wall_ms`, sorted (room
    /// `None` for a global mute). They no longer act; the gateway lifts
    /// them (with [`Change::Unmute`]) to clean its store and this instance.
    pub fn expired_mutes(&self, wall_ms: u64) -> Vec<(Option<String>, String)> {
        self.inner.rules.read().expired(wall_ms)
    }

    /// Blocked words as given, sorted.
    pub fn blocklist(&self) -> Vec<(String, WordAction)> {
        self.inner.rules.read().words.blocklist()
    }

    /// Allowed words as given, sorted.
    pub fn allowlist(&self) -> Vec<String> {
        self.inner.rules.read().words.allowlist()
    }

    /// Step 1: the post's own fields, normalised.
    fn validate(&self, post: &Post, role: Role) -> Result<Accepted, Refusal> {
        Ok(Accepted {
            text: self.text(post, role)?,
            color: color(post)?,
            mode: mode(post)?,
        })
    }

    /// The text, cleaned by the protocol's one text rule (trimmed, line
    /// breaks made spaces, nothing that hides or reorders its neighbours,
    /// something visible), then not too long for the poster's role.
    fn text(&self, post: &Post, role: Role) -> Result<String, Refusal> {
        let text = validate_text(&post.text).map_err(|e| {
            let code = match e {
                InvalidText::Empty => RejectCode::Empty,
                InvalidText::BadChar => RejectCode::InvalidText,
            };
            Refusal::new(code, e.to_string())
        })?;
        let policy = &self.inner.policy;
        let max = if role >= Role::Moderator {
            policy.max_text_chars_moderator
        } else {
            policy.max_text_chars
        } as usize;
        // Count at most max+1 chars: enough to know, without walking a huge text.
        if text.chars().take(max + 1).count() > max {
            return Err(Refusal::new(
                RejectCode::TooLong,
                format!("text is longer than {max} characters"),
            ));
        }
        Ok(text)
    }

    /// Step 4a: the local limits, the address first, then the user, so a
    /// post refused for its address does not use up its user's budget.
    /// The reverse imprecision remains: a post refused for its user has
    /// used one of its address's posts (governor cannot look without
    /// taking). Moderators and admins skip the address limit.
    fn local_rate(&self, ctx: &PostContext<'_, C::Instant>, staff: bool) -> Result<(), Refusal> {
        let inner = &self.inner;
        let limited = |not_until: governor::NotUntil<C::Instant>| Refusal {
            code: RejectCode::RateLimited,
            message: "posting too fast".into(),
            retry_after: Some(whole_ms(not_until.wait_time_from(ctx.now))),
        };
        if !staff {
            inner.ips.check_key(&IpKey::of(ctx.ip)).map_err(limited)?;
        }
        let users = if staff { &inner.staff } else { &inner.viewers };
        users.check_key(&ctx.user.to_owned()).map_err(limited)?;
        Ok(())
    }
}

/// Step 2: mutes. Admins are never muted: they are who lifts mutes. Of a
/// room mute and a global mute that both hold, a real one beats a shadow
/// one, then the later end wins. A real mute refuses, with the time left
/// (none when permanent); a shadow mute lets the post go on, marked.
fn mute_step<I>(rules: &Rules, ctx: &PostContext<'_, I>) -> Result<bool, Refusal> {
    if ctx.role >= Role::Admin {
        return Ok(false);
    }
    let strongest = rules
        .mutes_of(ctx.room.as_str(), ctx.user)
        .into_iter()
        .flatten()
        .filter(|m| m.active_at(ctx.wall_ms))
        .max_by_key(|m| (!m.shadow, m.until_ms.unwrap_or(u64::MAX)));
    match strongest {
        None => Ok(false),
        Some(m) if m.shadow => Ok(true),
        Some(m) => Err(Refusal {
            code: RejectCode::Muted,
            message: match m.room {
                Some(_) => "you are muted in this room".into(),
                None => "you are muted".into(),
            },
            retry_after: m
                .until_ms
                .map(|until| whole_ms(Duration::from_millis(until.saturating_sub(ctx.wall_ms)))),
        }),
    }
}

/// Replaces with `*` each original character of `text` in the character
/// ranges `hidden` (a masked word's, including the spaces or invisible
/// characters that were put between its letters).
fn mask(text: &str, hidden: &[Range<usize>]) -> String {
    text.chars()
        .enumerate()
        .map(|(i, c)| {
            if hidden.iter().any(|r| r.contains(&i)) {
                '*'
            } else {
                c
            }
        })
        .collect()
}

/// A fleet-wide key from its parts: concatenation without the formatting
/// machinery, which costs more than the rest of building a key.
fn key(parts: &[&str]) -> String {
    // Room for a hash or an address after the parts.
    let mut key = String::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() + 16);
    for part in parts {
        key.push_str(part);
    }
    key
}

/// Appends `n` as 16 lower-case hex digits.
fn push_hex(out: &mut String, n: u64) {
    for i in (0..16).rev() {
        let digit = ((n >> (i * 4)) & 0xf) as u32;
        out.extend(char::from_digit(digit, 16));
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

#[cfg(test)]
mod tests;
