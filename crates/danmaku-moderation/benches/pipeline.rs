//! Criterion benches of the moderation pipeline: one `check` of a typical
//! 20–40 character post (clean, masked, blocked) against 20,000 blocked
//! words, half Chinese and half Latin; folding alone; and building the
//! word list, which every word edit pays.

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use danmaku_moderation::{normalize, Moderator, Policy, PostContext, Snapshot, WordAction};
use danmaku_proto::{Post, Role, RoomId};

/// Words in the bench's list.
const WORDS: usize = 20_000;

/// A small deterministic generator, so every run matches the same words.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u32) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % u64::from(below)) as u32
    }
}

/// 20,000 words: half of 2–4 common-range CJK ideographs, half of 5–9 Latin
/// letters, every tenth one masking; plus the few the posts use.
fn blocklist() -> Vec<(String, WordAction)> {
    let mut rng = Lcg(42);
    let mut words = Vec::with_capacity(WORDS + 4);
    for i in 0..WORDS {
        let word: String = if i % 2 == 0 {
            let len = 2 + rng.next(3);
            (0..len)
                .filter_map(|_| char::from_u32(0x4E00 + rng.next(0x51A5)))
                .collect()
        } else {
            let len = 5 + rng.next(5);
            (0..len)
                .filter_map(|_| char::from_u32(u32::from(b'a') + rng.next(26)))
                .collect()
        };
        let action = if i % 10 == 0 {
            WordAction::Mask
        } else {
            WordAction::Block
        };
        words.push((word, action));
    }
    words.push(("badword".into(), WordAction::Mask));
    words.push(("笨蛋".into(), WordAction::Mask));
    words.push(("blockme".into(), WordAction::Block));
    words.push(("操你".into(), WordAction::Block));
    words
}

fn snapshot() -> Snapshot {
    Snapshot {
        blocklist: blocklist(),
        allowlist: vec!["体操".into(), "操作".into()],
        ..Snapshot::default()
    }
}

/// Typical posts, each 20–40 characters.
const POSTS: [(&str, &str); 5] = [
    ("clean_latin", "this part is great, what a play 2333"),
    ("clean_cjk", "前方高能！！！ this part is great 2333"),
    (
        "clean_cjk_only",
        "前方高能预警，这段操作太秀了哈哈哈哈，主播加油！！",
    ),
    ("masked", "这个笨蛋又来了 what a badword play"),
    ("blocked", "blockme 前方高能 这是一条普通弹幕"),
];

fn pipeline(c: &mut Criterion) {
    let policy = Policy {
        post_rate_count: u32::MAX / 16,
        post_burst: u32::MAX / 16,
        ip_rate_count: u32::MAX / 16,
        ip_burst: u32::MAX / 16,
        ..Policy::default()
    };
    let m = Moderator::new(policy).expect("valid policy");
    m.replace(snapshot()).expect("builds");
    let room = RoomId::parse("lobby").expect("valid room");
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    let mut g = c.benchmark_group("check_20k_words");
    g.throughput(Throughput::Elements(1));
    for (name, text) in POSTS {
        let post = Post {
            text: text.into(),
            color: Some("#FFCC00".into()),
            mode: None,
            nonce: None,
        };
        // Check the post does what its name says, so a broken list cannot
        // make the bench fast.
        let ctx = PostContext {
            room: &room,
            user: "guest-4f2a9c",
            role: Role::Viewer,
            ip,
            now: m.now(),
            wall_ms: 1_763_700_000_000,
        };
        let checked = m.check(&ctx, &post).expect("passes locally");
        assert_eq!(checked.blocked.is_some(), name == "blocked", "{name}");
        assert_eq!(
            checked.accepted.text.contains('*'),
            name == "masked",
            "{name}"
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                let ctx = PostContext {
                    now: m.now(),
                    ..ctx
                };
                m.check(black_box(&ctx), black_box(&post))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("normalize");
    g.throughput(Throughput::Elements(1));
    for (name, text) in [POSTS[0], POSTS[1]] {
        g.bench_function(name, |b| b.iter(|| normalize(black_box(text))));
    }
    g.finish();

    let mut g = c.benchmark_group("build");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    let words = snapshot();
    g.bench_function("replace_20k_words", |b| {
        b.iter(|| m.replace(black_box(words.clone())).expect("builds"))
    });
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
