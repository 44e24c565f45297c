//! Tests of the whole pipeline, on governor's fake clock and hand-set wall
//! times.

use std::net::IpAddr;
use std::time::Duration;

use danmaku_proto::{Mode, Post, RejectCode, Role, RoomId};
use governor::clock::FakeRelativeClock;

use super::*;

/// Wall time of the tests' posts, ms since the epoch.
const WALL: u64 = 1_700_000_000_000;

/// A moderator on a fake clock, and the room most tests post to.
struct Env {
    /// The pipeline.
    m: Moderator<FakeRelativeClock>,
    /// Shared with the pipeline's limiters.
    clock: FakeRelativeClock,
    /// `room1`.
    room: RoomId,
}

impl Env {
    fn new(policy: Policy) -> Env {
        let clock = FakeRelativeClock::default();
        Env {
            m: Moderator::with_clock(policy, clock.clone()).expect("valid policy"),
            clock,
            room: RoomId::parse("room1").expect("valid room"),
        }
    }

    /// A viewer posting from 192.0.2.1 in room1.
    fn check(&self, user: &str, text: &str) -> Result<Checked, Refusal> {
        self.check_as(user, Role::Viewer, "192.0.2.1", text)
    }

    fn check_as(&self, user: &str, role: Role, ip: &str, text: &str) -> Result<Checked, Refusal> {
        self.check_full(&self.room, user, role, ip, WALL, &post(text))
    }

    fn check_full(
        &self,
        room: &RoomId,
        user: &str,
        role: Role,
        ip: &str,
        wall_ms: u64,
        post: &Post,
    ) -> Result<Checked, Refusal> {
        let ip: IpAddr = ip.parse().expect("an address");
        let ctx = PostContext {
            room,
            user,
            role,
            ip,
            now: self.m.now(),
            wall_ms,
        };
        self.m.check(&ctx, post)
    }

    fn apply(&self, change: Change) {
        self.m.apply(&change).expect("valid change");
    }

    fn code(&self, user: &str, text: &str) -> RejectCode {
        self.check(user, text).expect_err("refused").code
    }
}

/// A policy whose limits stay out of the way unless a test lowers them.
fn roomy() -> Policy {
    Policy {
        post_rate_count: 1_000,
        post_burst: 1_000,
        ip_rate_count: 1_000,
        ip_burst: 1_000,
        ..Policy::default()
    }
}

fn post(text: &str) -> Post {
    Post {
        text: text.into(),
        color: None,
        mode: None,
        nonce: None,
    }
}

fn mute(user: &str, room: Option<&str>, until_ms: Option<u64>, shadow: bool) -> Change {
    Change::Mute(Mute {
        user: user.into(),
        room: room.map(str::to_owned),
        until_ms,
        shadow,
        by: "mod".into(),
        at_ms: WALL - 1_000,
    })
}

fn block(word: &str, action: WordAction) -> Change {
    Change::BlockWord {
        word: word.into(),
        action,
    }
}

fn settings(room: &str, slow_mode_secs: u32, locked: bool) -> Change {
    Change::RoomSettings {
        room: room.into(),
        settings: RoomSettings {
            slow_mode_secs,
            locked,
        },
    }
}

fn keys(checked: &Checked) -> Vec<&str> {
    checked.cluster.iter().map(|c| c.key.as_str()).collect()
}

#[test]
fn moderator_is_clone_send_sync_and_clones_share_state() {
    fn assert_traits<T: Clone + Send + Sync>() {}
    assert_traits::<Moderator>();
    assert_traits::<Moderator<FakeRelativeClock>>();
    let env = Env::new(roomy());
    let other = env.m.clone();
    other
        .apply(&block("bad", WordAction::Block))
        .expect("valid change");
    assert_eq!(
        env.m.blocklist(),
        vec![("bad".to_owned(), WordAction::Block)]
    );
}

#[test]
fn zero_limits_are_refused() {
    let zero = |f: fn(&mut Policy)| {
        let mut p = Policy::default();
        f(&mut p);
        Moderator::new(p).expect_err("zero")
    };
    assert_eq!(
        zero(|p| p.max_text_chars = 0),
        PolicyError::Zero("max_text_chars")
    );
    assert_eq!(
        zero(|p| p.max_text_chars_moderator = 0),
        PolicyError::Zero("max_text_chars_moderator")
    );
    assert_eq!(
        zero(|p| p.post_rate_count = 0),
        PolicyError::Zero("post_rate_count")
    );
    assert_eq!(
        zero(|p| p.post_window = Duration::ZERO),
        PolicyError::Zero("post_window_ms")
    );
    assert_eq!(zero(|p| p.post_burst = 0), PolicyError::Zero("post_burst"));
    assert_eq!(
        zero(|p| p.ip_rate_count = 0),
        PolicyError::Zero("ip_rate_count")
    );
    assert_eq!(
        zero(|p| p.ip_window = Duration::ZERO),
        PolicyError::Zero("ip_window_ms")
    );
    assert_eq!(zero(|p| p.ip_burst = 0), PolicyError::Zero("ip_burst"));
    assert_eq!(
        zero(|p| p.moderator_rate_factor = 0),
        PolicyError::Zero("moderator_rate_factor")
    );
    let off = Policy {
        duplicate_window: Duration::ZERO,
        ..Policy::default()
    };
    assert!(Moderator::new(off).is_ok());
}

#[test]
fn validation_codes() {
    let env = Env::new(roomy());
    let ok = env.check("alice", "  hello\nthere  ").expect("valid");
    assert_eq!(ok.accepted.text, "hello there");
    assert_eq!(ok.accepted.color, "#ffffff");
    assert_eq!(ok.accepted.mode, Mode::Scroll);
    assert!(!ok.shadow);
    assert_eq!(ok.blocked, None);

    assert_eq!(env.code("alice", "   "), RejectCode::Empty);
    assert_eq!(env.code("alice", "a\u{202E}b"), RejectCode::InvalidText);
    let long = "x".repeat(101);
    assert_eq!(env.code("alice", &long), RejectCode::TooLong);
    assert!(env.check("alice", &"x".repeat(100)).is_ok());
    let bad_color = Post {
        color: Some("red".into()),
        ..post("hi")
    };
    let bad_mode = Post {
        mode: Some("sideways".into()),
        ..post("hi")
    };
    for bad in [bad_color, bad_mode] {
        let refusal = env
            .check_full(&env.room, "alice", Role::Viewer, "192.0.2.1", WALL, &bad)
            .expect_err("bad field");
        assert_eq!(refusal.code, RejectCode::BadRequest);
    }
}

#[test]
fn moderators_may_write_longer_comments() {
    let env = Env::new(roomy());
    let text = "y".repeat(300);
    let viewer = env.check_as("v", Role::Viewer, "192.0.2.1", &text);
    assert_eq!(viewer.expect_err("too long").code, RejectCode::TooLong);
    for role in [Role::Moderator, Role::Admin] {
        assert!(env.check_as("m", role, "192.0.2.1", &text).is_ok());
    }
    let longer = "y".repeat(301);
    let refusal = env.check_as("m", Role::Moderator, "192.0.2.1", &longer);
    assert_eq!(refusal.expect_err("too long").code, RejectCode::TooLong);
}

#[test]
fn mutes_refuse_until_they_end() {
    let env = Env::new(roomy());
    env.apply(mute("alice", Some("room1"), Some(WALL + 5_000), false));
    let refusal = env.check("alice", "hi").expect_err("muted");
    assert_eq!(refusal.code, RejectCode::Muted);
    assert_eq!(refusal.retry_after, Some(Duration::from_millis(5_000)));
    // Another user, another room: not muted.
    assert!(env.check("bob", "hi").is_ok());
    let room2 = RoomId::parse("room2").expect("valid room");
    assert!(env
        .check_full(
            &room2,
            "alice",
            Role::Viewer,
            "192.0.2.1",
            WALL,
            &post("hi")
        )
        .is_ok());
    // Ended: the mute's end is its first free millisecond.
    let at_end = env.check_full(
        &env.room,
        "alice",
        Role::Viewer,
        "192.0.2.1",
        WALL + 5_000,
        &post("hi"),
    );
    assert!(at_end.is_ok());
    let before = env.check_full(
        &env.room,
        "alice",
        Role::Viewer,
        "192.0.2.1",
        WALL + 4_999,
        &post("hi"),
    );
    assert_eq!(
        before.expect_err("muted").retry_after,
        Some(Duration::from_millis(1))
    );
}

#[test]
fn global_and_permanent_mutes() {
    let env = Env::new(roomy());
    env.apply(mute("alice", None, None, false));
    let refusal = env.check("alice", "hi").expect_err("muted");
    assert_eq!(
        (refusal.code, refusal.retry_after),
        (RejectCode::Muted, None)
    );
    env.apply(Change::Unmute {
        room: None,
        user: "alice".into(),
    });
    assert!(env.check("alice", "hi").is_ok());
}

#[test]
fn of_two_mutes_a_real_one_then_the_later_end_wins() {
    let env = Env::new(roomy());
    let at = |user: &str, wall_ms: u64| {
        env.check_full(
            &env.room,
            user,
            Role::Viewer,
            "192.0.2.1",
            wall_ms,
            &post("hi"),
        )
    };
    // A shadow global mute and a real room mute: refused until the real
    // one ends, then shadowed.
    env.apply(mute("alice", None, None, true));
    env.apply(mute("alice", Some("room1"), Some(WALL + 1_000), false));
    let refusal = at("alice", WALL).expect_err("muted");
    assert_eq!(refusal.retry_after, Some(Duration::from_millis(1_000)));
    assert!(at("alice", WALL + 1_000).expect("shadow").shadow);
    // Two real ones: the later end, whichever it is.
    env.apply(mute("bob", Some("room1"), Some(WALL + 1_000), false));
    env.apply(mute("bob", None, Some(WALL + 9_000), false));
    env.apply(mute("carol", Some("room1"), Some(WALL + 9_000), false));
    env.apply(mute("carol", None, Some(WALL + 1_000), false));
    for user in ["bob", "carol"] {
        let refusal = at(user, WALL).expect_err("muted");
        assert_eq!(
            refusal.retry_after,
            Some(Duration::from_millis(9_000)),
            "{user}"
        );
    }
}

#[test]
fn shadow_mutes_let_the_post_go_on_marked() {
    let env = Env::new(Policy {
        post_burst: 1,
        ..roomy()
    });
    env.apply(mute("alice", Some("room1"), None, true));
    env.apply(block("bad", WordAction::Block));
    let checked = env.check("alice", "hello").expect("shadow passes");
    assert!(checked.shadow);
    assert!(!checked.cluster.is_empty());
    // Later steps still run: the rate limit, then words.
    assert_eq!(env.code("alice", "hello"), RejectCode::RateLimited);
    let blocked = env.check("bob", "bad").expect("local steps pass");
    assert!(!blocked.shadow);
    assert_eq!(blocked.blocked.map(|r| r.code), Some(RejectCode::Blocked));
}

#[test]
fn admins_are_never_muted_but_moderators_are() {
    let env = Env::new(roomy());
    env.apply(mute("boss", None, None, false));
    env.apply(mute("mod", None, None, false));
    env.apply(mute("ghost", None, None, true));
    assert!(env.check_as("boss", Role::Admin, "192.0.2.1", "hi").is_ok());
    let refusal = env.check_as("mod", Role::Moderator, "192.0.2.1", "hi");
    assert_eq!(refusal.expect_err("muted").code, RejectCode::Muted);
    let admin = env
        .check_as("ghost", Role::Admin, "192.0.2.1", "hi")
        .expect("admin");
    assert!(!admin.shadow);
}

#[test]
fn locked_rooms_admit_moderators_and_admins() {
    let env = Env::new(roomy());
    env.apply(settings("room1", 0, true));
    assert_eq!(env.code("alice", "hi"), RejectCode::RoomLocked);
    assert!(env
        .check_as("m", Role::Moderator, "192.0.2.1", "hi")
        .is_ok());
    assert!(env.check_as("a", Role::Admin, "192.0.2.1", "hi").is_ok());
    env.apply(settings("room1", 0, false));
    assert!(env.check("alice", "hi").is_ok());
}

#[test]
fn slow_mode_is_the_first_cluster_check_for_viewers_only() {
    let env = Env::new(roomy());
    env.apply(settings("room1", 30, false));
    let checked = env.check("alice", "hi").expect("passes locally");
    assert_eq!(
        checked.cluster.first(),
        Some(&ClusterCheck {
            key: "slow:room1:alice".into(),
            kind: ClusterKind::Gcra {
                period: Duration::from_secs(30),
                burst: 1
            },
            code: RejectCode::SlowMode,
        })
    );
    for role in [Role::Moderator, Role::Admin] {
        let staff = env.check_as("m", role, "192.0.2.1", "hi").expect("passes");
        assert!(staff.cluster.iter().all(|c| c.code != RejectCode::SlowMode));
    }
    let room2 = RoomId::parse("room2").expect("valid room");
    let elsewhere = env
        .check_full(
            &room2,
            "alice",
            Role::Viewer,
            "192.0.2.1",
            WALL,
            &post("hi"),
        )
        .expect("passes");
    assert!(elsewhere
        .cluster
        .iter()
        .all(|c| c.code != RejectCode::SlowMode));
}

#[test]
fn cluster_checks_in_pipeline_order_with_local_budgets() {
    let env = Env::new(Policy::default());
    env.apply(settings("room1", 10, false));
    let checked = env.check("alice", "Hello").expect("passes");
    let hash = format!("{:016x}", crate::normalize::stable_hash("hello"));
    assert_eq!(
        keys(&checked),
        vec![
            "slow:room1:alice".to_owned(),
            "user:alice".to_owned(),
            "ip:192.0.2.1".to_owned(),
            format!("dup:alice:{hash}"),
        ]
    );
    let kinds: Vec<_> = checked.cluster.iter().map(|c| (c.kind, c.code)).collect();
    assert_eq!(
        kinds[1..],
        [
            (
                ClusterKind::Gcra {
                    period: Duration::from_secs(2),
                    burst: 3
                },
                RejectCode::RateLimited
            ),
            (
                ClusterKind::Gcra {
                    period: Duration::from_secs(10) / 30,
                    burst: 15
                },
                RejectCode::RateLimited
            ),
            (
                ClusterKind::Once {
                    ttl: Duration::from_secs(30)
                },
                RejectCode::Duplicate
            ),
        ]
    );
    // Moderators: their own, larger user budget, nothing else.
    let staff = env
        .check_as("m", Role::Moderator, "192.0.2.1", "Hello")
        .expect("passes");
    assert_eq!(
        staff.cluster,
        vec![ClusterCheck {
            key: "user:m".into(),
            kind: ClusterKind::Gcra {
                period: Duration::from_millis(200),
                burst: 30
            },
            code: RejectCode::RateLimited,
        }]
    );
}

#[test]
fn duplicate_keys_fold_the_text_and_can_be_turned_off() {
    let env = Env::new(roomy());
    let a = env.check("alice", "Hello there").expect("passes");
    let b = env.check("alice", "ＨＥＬＬＯ   there!").expect("passes");
    assert_eq!(a.cluster.last(), b.cluster.last());
    let c = env.check("alice", "something else").expect("passes");
    assert_ne!(a.cluster.last(), c.cluster.last());
    let bob = env.check("bob", "Hello there").expect("passes");
    assert_ne!(a.cluster.last(), bob.cluster.last());
    let bangs = env.check("alice", "!!!").expect("passes");
    let marks = env.check("alice", "???").expect("passes");
    assert_ne!(bangs.cluster.last(), marks.cluster.last());

    let off = Env::new(Policy {
        duplicate_window: Duration::ZERO,
        ..roomy()
    });
    let checked = off.check("alice", "hi").expect("passes");
    assert!(checked
        .cluster
        .iter()
        .all(|c| c.code != RejectCode::Duplicate));
}

#[test]
fn blocked_posts_have_no_duplicate_check() {
    let env = Env::new(roomy());
    env.apply(block("bad", WordAction::Block));
    let checked = env.check("alice", "so bad").expect("local steps pass");
    let refusal = checked.blocked.clone().expect("blocked");
    assert_eq!(refusal.code, RejectCode::Blocked);
    assert_eq!(keys(&checked), vec!["user:alice", "ip:192.0.2.1"]);
}

#[test]
fn local_user_limit_with_exact_retry_after() {
    // 5 per 10 s, burst 3: after the burst, one every 2 s.
    let env = Env::new(Policy {
        ip_rate_count: 1_000,
        ip_burst: 1_000,
        ..Policy::default()
    });
    for _ in 0..3 {
        assert!(env.check("alice", "hi").is_ok());
    }
    let refusal = env.check("alice", "hi").expect_err("limited");
    assert_eq!(refusal.code, RejectCode::RateLimited);
    assert_eq!(refusal.retry_after, Some(Duration::from_secs(2)));
    env.clock.advance(Duration::from_micros(1_500_500));
    let refusal = env.check("alice", "hi").expect_err("limited");
    // 499.5 ms left, rounded up.
    assert_eq!(refusal.retry_after, Some(Duration::from_millis(500)));
    // Another user from the same address has their own budget.
    assert!(env.check("bob", "hi").is_ok());
    env.clock.advance(Duration::from_millis(500));
    assert!(env.check("alice", "hi").is_ok());
}

#[test]
fn moderators_get_a_multiplied_budget() {
    let env = Env::new(Policy {
        post_burst: 1,
        moderator_rate_factor: 3,
        ..roomy()
    });
    assert!(env.check("v", "hi").is_ok());
    assert_eq!(env.code("v", "hi"), RejectCode::RateLimited);
    for _ in 0..3 {
        assert!(env
            .check_as("m", Role::Moderator, "192.0.2.1", "hi")
            .is_ok());
    }
    let refusal = env.check_as("m", Role::Moderator, "192.0.2.1", "hi");
    assert_eq!(refusal.expect_err("limited").code, RejectCode::RateLimited);
}

#[test]
fn local_address_limit_keys_ipv6_by_64_and_mapped_ipv4_as_ipv4() {
    let env = Env::new(Policy {
        ip_burst: 1,
        ..roomy()
    });
    let limited = |user: &str, ip: &str| {
        env.check_as(user, Role::Viewer, ip, "hi")
            .err()
            .map(|r| r.code)
    };
    assert_eq!(limited("a", "2001:db8:1:2::1"), None);
    assert_eq!(
        limited("b", "2001:db8:1:2:ffff::2"),
        Some(RejectCode::RateLimited)
    );
    assert_eq!(limited("c", "2001:db8:1:3::1"), None);
    assert_eq!(limited("d", "198.51.100.7"), None);
    assert_eq!(
        limited("e", "::ffff:198.51.100.7"),
        Some(RejectCode::RateLimited)
    );
    assert_eq!(limited("f", "198.51.100.8"), None);
    // Moderators skip the address limit.
    assert!(env
        .check_as("m", Role::Moderator, "198.51.100.7", "hi")
        .is_ok());
    let checked = env
        .check_as("g", Role::Viewer, "2001:db8:9:9:1::1", "hi")
        .expect("passes");
    assert!(keys(&checked).contains(&"ip:2001:db8:9:9::/64"));
}

#[test]
fn an_address_refusal_does_not_charge_the_user() {
    let env = Env::new(Policy {
        post_burst: 2,
        ip_burst: 1,
        ..roomy()
    });
    let on = |ip: &str| {
        env.check_as("alice", Role::Viewer, ip, "hi")
            .err()
            .map(|r| r.retry_after.is_some().then_some(r.code))
    };
    assert_eq!(on("192.0.2.1"), None);
    assert_eq!(on("192.0.2.1"), Some(Some(RejectCode::RateLimited)));
    // The refused post did not use alice's second post.
    assert_eq!(on("192.0.2.2"), None);
    assert_eq!(on("192.0.2.3"), Some(Some(RejectCode::RateLimited)));
}

#[test]
fn evict_idle_forgets_refilled_keys() {
    let env = Env::new(Policy::default());
    for user in ["a", "b", "c"] {
        assert!(env.check(user, "hi").is_ok());
    }
    assert!(env
        .check_as("m", Role::Moderator, "192.0.2.9", "hi")
        .is_ok());
    // Three viewers, one moderator, one address.
    assert_eq!(env.m.limiter_keys(), 5);
    env.m.evict_idle();
    assert_eq!(env.m.limiter_keys(), 5, "recent keys stay");
    env.clock.advance(Duration::from_secs(60));
    env.m.evict_idle();
    assert_eq!(env.m.limiter_keys(), 0);
}

#[test]
fn steps_run_in_order() {
    let env = Env::new(Policy {
        post_burst: 1,
        ..roomy()
    });
    env.apply(mute("alice", None, None, false));
    env.apply(settings("room1", 0, true));
    env.apply(block("bad", WordAction::Block));
    // Validation before mutes.
    assert_eq!(env.code("alice", " "), RejectCode::Empty);
    // Mutes before the room lock.
    assert_eq!(env.code("alice", "hi"), RejectCode::Muted);
    // The lock before rate limits: refused posts do not use the budget.
    for _ in 0..3 {
        assert_eq!(env.code("bob", "hi"), RejectCode::RoomLocked);
    }
    env.apply(settings("room1", 0, false));
    // Rate limits before words.
    assert!(env
        .check("bob", "bad")
        .expect("local pass")
        .blocked
        .is_some());
    assert_eq!(env.code("bob", "bad"), RejectCode::RateLimited);
}

#[test]
fn evasions_are_caught() {
    let env = Env::new(roomy());
    env.apply(block("fuck", WordAction::Block));
    env.apply(block("操你", WordAction::Block));
    env.apply(block("学习", WordAction::Block));
    for text in [
        "fuck",
        "ｆｕｃｋ",
        "FuCk you",
        "f u c k",
        "f.u.c.k",
        "f\u{200B}u\u{200C}c\u{2060}k",
        "f\u{FEFF}uck",
        "操你",
        "操 你",
        "操.你",
        "操_你",
        "操\u{200B}你",
        "學習",
        "好好學 習",
    ] {
        let checked = env.check("alice", text).expect("local pass");
        assert_eq!(
            checked.blocked.map(|r| r.code),
            Some(RejectCode::Blocked),
            "{text:?}"
        );
    }
    for text in ["fun cookies", "操作", "学", "hello"] {
        let checked = env.check("alice", text).expect("passes");
        assert_eq!(checked.blocked, None, "{text:?}");
    }
}

#[test]
fn allowed_words_excuse_blocked_words_inside_them() {
    let env = Env::new(roomy());
    env.apply(block("操", WordAction::Block));
    env.apply(Change::AllowWord {
        word: "体操".into(),
    });
    env.apply(Change::AllowWord {
        word: "操作".into(),
    });
    for (text, blocked) in [
        ("体操", false),
        ("我在操作", false),
        ("操", true),
        ("操你", true),
    ] {
        let checked = env.check("alice", text).expect("local pass");
        assert_eq!(checked.blocked.is_some(), blocked, "{text:?}");
    }
    env.apply(Change::DisallowWord {
        word: "操作".into(),
    });
    assert!(env
        .check("alice", "操作")
        .expect("local pass")
        .blocked
        .is_some());
}

#[test]
fn mask_replaces_the_original_span() {
    let env = Env::new(roomy());
    env.apply(block("bad", WordAction::Mask));
    env.apply(block("笨蛋", WordAction::Mask));
    for (text, masked) in [
        ("so bad!", "so ***!"),
        ("so B a D!", "so *****!"),
        ("b\u{200B}ad day", "**** day"),
        ("ｂａｄ", "***"),
        ("你这个笨 蛋", "你这个***"),
        ("bad and bad", "*** and ***"),
        ("fine", "fine"),
    ] {
        let checked = env.check("alice", text).expect("published");
        assert_eq!(checked.blocked, None);
        assert_eq!(checked.accepted.text, masked, "{text:?}");
    }
}

#[test]
fn blocking_beats_masking() {
    let env = Env::new(roomy());
    env.apply(block("bad", WordAction::Mask));
    env.apply(block("worse", WordAction::Block));
    let checked = env.check("alice", "bad and worse").expect("local pass");
    assert!(checked.blocked.is_some());
}

#[test]
fn refusals_for_cluster_checks() {
    let env = Env::new(roomy());
    env.apply(settings("room1", 30, false));
    let checked = env.check("alice", "hi").expect("passes");
    let slow = &checked.cluster[0];
    let refusal = env.m.refusal(slow, Duration::from_micros(12_000_001));
    assert_eq!(refusal.code, RejectCode::SlowMode);
    assert_eq!(refusal.message, "slow mode: one comment per 30 s");
    assert_eq!(refusal.retry_after, Some(Duration::from_millis(12_001)));
    let dup = checked.cluster.last().expect("a duplicate check");
    let refusal = env.m.refusal(dup, Duration::ZERO);
    assert_eq!(refusal.code, RejectCode::Duplicate);
    assert_eq!(refusal.retry_after, Some(Duration::from_millis(1)));
    let user = &checked.cluster[1];
    assert_eq!(
        env.m.refusal(user, Duration::from_secs(1)).message,
        "posting too fast"
    );
}

#[test]
fn snapshot_replace_and_apply_round_trip() {
    let env = Env::new(roomy());
    let snapshot = Snapshot {
        mutes: vec![
            Mute {
                user: "alice".into(),
                room: None,
                until_ms: None,
                shadow: false,
                by: "mod".into(),
                at_ms: 1,
            },
            Mute {
                user: "bob".into(),
                room: Some("room1".into()),
                until_ms: Some(WALL + 10),
                shadow: true,
                by: "mod".into(),
                at_ms: 2,
            },
        ],
        rooms: vec![(
            "room1".into(),
            RoomSettings {
                slow_mode_secs: 5,
                locked: false,
            },
        )],
        blocklist: vec![
            ("bad".into(), WordAction::Block),
            ("笨蛋".into(), WordAction::Mask),
        ],
        allowlist: vec!["体操".into()],
    };
    env.m.replace(snapshot.clone()).expect("builds");
    assert_eq!(env.m.snapshot(), snapshot);
    assert_eq!(env.m.blocklist(), snapshot.blocklist);
    assert_eq!(env.m.allowlist(), snapshot.allowlist);

    // The same rules built by edits.
    let edited = Env::new(roomy());
    for m in &snapshot.mutes {
        edited.apply(Change::Mute(m.clone()));
    }
    edited.apply(settings("room1", 5, false));
    edited.apply(settings("room2", 0, false));
    edited.apply(block("笨蛋", WordAction::Mask));
    edited.apply(block("bad", WordAction::Mask));
    edited.apply(block("bad", WordAction::Block));
    edited.apply(block("gone", WordAction::Block));
    edited.apply(Change::UnblockWord {
        word: "GONE".into(),
    });
    edited.apply(Change::AllowWord {
        word: "体操".into(),
    });
    assert_eq!(edited.m.snapshot(), snapshot);

    // Replacing wipes what was there.
    env.m.replace(Snapshot::default()).expect("builds");
    assert_eq!(env.m.snapshot(), Snapshot::default());
    assert!(env.check("alice", "bad").expect("passes").blocked.is_none());
}

#[test]
fn invalid_changes_are_not_applied() {
    let env = Env::new(roomy());
    let err = env
        .m
        .apply(&settings("room1", 301, false))
        .expect_err("invalid");
    assert_eq!(err.field, "slow_mode_secs");
    let err = env
        .m
        .apply(&block(" !! ", WordAction::Block))
        .expect_err("invalid");
    assert_eq!(err.field, "word");
    assert_eq!(env.m.snapshot(), Snapshot::default());
}

#[test]
fn room_view_and_expired_mutes() {
    let env = Env::new(roomy());
    env.apply(settings("room1", 0, true));
    env.apply(mute("alice", Some("room1"), Some(WALL + 100), false));
    env.apply(mute("bob", Some("room1"), Some(WALL - 1), false));
    env.apply(mute("carol", None, None, true));
    env.apply(mute("dave", None, Some(WALL), false));
    env.apply(mute("erin", Some("room2"), None, false));
    let view = env.m.room_view("room1", WALL);
    assert!(view.settings.locked);
    let users: Vec<_> = view.mutes.iter().map(|m| m.user.as_str()).collect();
    assert_eq!(users, vec!["carol", "alice"]);
    assert_eq!(
        env.m.room_view("room3", WALL),
        RoomView {
            settings: RoomSettings::default(),
            mutes: view.mutes[..1].to_vec(),
        }
    );
    assert_eq!(
        env.m.expired_mutes(WALL),
        vec![
            (None, "dave".to_owned()),
            (Some("room1".to_owned()), "bob".to_owned())
        ]
    );
    env.apply(Change::Unmute {
        room: Some("room1".into()),
        user: "bob".into(),
    });
    assert_eq!(env.m.expired_mutes(WALL), vec![(None, "dave".to_owned())]);
}
