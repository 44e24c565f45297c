//! The Redis bus against a real `redis-server` started per test: delivery
//! in order and only to subscribed rooms, history, subscription lifetime
//! (batching, linger), presence, and recovery from outages.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use danmaku_bus::{
    now_ms, Bus, BusConfig, BusError, InstanceReport, Readiness, RecvError, RedisBus,
    RedisBusConfig, Subscription,
};
use danmaku_proto::{Danmaku, Mode, RoomId};
use danmaku_testkit::RedisServer;

/// How long any single expectation may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

fn config() -> RedisBusConfig {
    RedisBusConfig {
        prefix: "t:".into(),
        unsubscribe_linger: Duration::from_millis(200),
        heartbeat_ttl: Duration::from_millis(1_000),
        bus: BusConfig {
            history_len: 5,
            ..BusConfig::default()
        },
        ping_interval: Duration::from_millis(200),
        ..RedisBusConfig::default()
    }
}

fn room(id: &str) -> RoomId {
    RoomId::parse(id).unwrap()
}

fn comment(room: &str, id: &str) -> Arc<Danmaku> {
    Arc::new(Danmaku {
        id: id.into(),
        room: room.into(),
        user: "guest-000001".into(),
        name: Some("名前".into()),
        text: format!("弹幕 {id}"),
        color: "#ffcc00".into(),
        mode: Mode::Top,
        ts: now_ms(),
    })
}

/// Retries `check` until it returns `Some`, or fails after `PATIENCE`.
async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    danmaku_testkit::eventually(what, PATIENCE, check).await
}

async fn ready(bus: &RedisBus) {
    eventually("the bus is ready", || async {
        (bus.readiness() == Readiness::Ready).then_some(())
    })
    .await;
}

/// Waits for `room`'s subscription to be live, the way the gateway does
/// before `hello`: `recent` answers once the room is subscribed.
async fn subscribed(bus: &RedisBus, id: &str) -> Subscription {
    let sub = bus.subscribe(&room(id));
    bus.recent(&room(id)).await.unwrap();
    sub
}

async fn next_id(sub: &mut Subscription) -> String {
    tokio::time::timeout(PATIENCE, sub.recv())
        .await
        .expect("a comment in time")
        .expect("a comment")
        .id
        .clone()
}

/// Publishes until it is accepted, for right after a recovery.
async fn publish_when_ready(bus: &RedisBus, c: Arc<Danmaku>) {
    eventually("a publish is accepted", || {
        let c = c.clone();
        async move { bus.publish(c).await.ok() }
    })
    .await
}

#[tokio::test]
async fn comments_reach_every_subscribed_instance_once_in_order() {
    let redis = RedisServer::start().unwrap();
    let a = RedisBus::new(&redis.url(), config()).unwrap();
    let b = RedisBus::new(&redis.url(), config()).unwrap();
    ready(&a).await;
    ready(&b).await;
    let mut a1 = subscribed(&a, "live").await;
    let mut a2 = subscribed(&a, "live").await;
    let mut b1 = subscribed(&b, "live").await;
    let mut other = subscribed(&b, "other").await;

    for i in 0..20 {
        let from = if i % 2 == 0 { &a } else { &b };
        from.publish(comment("live", &format!("c{i}")))
            .await
            .unwrap();
    }
    let want: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
    for sub in [&mut a1, &mut a2, &mut b1] {
        let mut got = Vec::new();
        for _ in 0..20 {
            got.push(next_id(sub).await);
        }
        assert_eq!(got, want);
    }
    // Nothing more for the room, nothing at all for the other room.
    b.publish(comment("other", "o1")).await.unwrap();
    assert_eq!(next_id(&mut other).await, "o1");
    for sub in [&mut a1, &mut a2, &mut b1, &mut other] {
        assert_eq!(sub.try_recv().unwrap(), None);
    }
    // The payload survives the trip intact.
    let sent = comment("other", "o2");
    a.publish(sent.clone()).await.unwrap();
    let got = tokio::time::timeout(PATIENCE, other.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*got, *sent);
}

#[tokio::test]
async fn history_keeps_the_last_comments_oldest_first_and_forgets_old_ones() {
    let redis = RedisServer::start().unwrap();
    let bus = RedisBus::new(&redis.url(), config()).unwrap();
    ready(&bus).await;
    let _sub = subscribed(&bus, "h").await;
    for i in 0..8 {
        bus.publish(comment("h", &format!("c{i}"))).await.unwrap();
    }
    let ids: Vec<String> = bus
        .recent(&room("h"))
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["c3", "c4", "c5", "c6", "c7"]);
    // Another instance sees the same history without subscribing.
    let other = RedisBus::new(&redis.url(), config()).unwrap();
    ready(&other).await;
    assert_eq!(other.recent(&room("h")).await.unwrap().len(), 5);
    assert!(other.recent(&room("empty")).await.unwrap().is_empty());
    let len: i64 = redis.redis_cli(&["LLEN", "t:history:h"]).unwrap();
    assert_eq!(len, 5, "the list itself is trimmed");
    let ttl: i64 = redis.redis_cli(&["PTTL", "t:history:h"]).unwrap();
    assert!(ttl > 0, "the list expires");

    // Entries older than the maximum age are left out.
    let mut old = (*comment("h", "ancient")).clone();
    old.ts = now_ms() - 3_600_000;
    bus.publish(Arc::new(old)).await.unwrap();
    let ids: Vec<String> = bus
        .recent(&room("h"))
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["c4", "c5", "c6", "c7"]);
}

#[tokio::test]
async fn a_room_is_subscribed_while_served_and_unsubscribed_after_the_linger() {
    let redis = RedisServer::start().unwrap();
    let bus = RedisBus::new(&redis.url(), config()).unwrap();
    ready(&bus).await;
    let numsub = |ch: &str| redis.numsub(&format!("t:room:{ch}")).unwrap();

    // Many rooms joined at once: all subscribed, each exactly once.
    let subs: Vec<Subscription> = (0..50)
        .map(|i| bus.subscribe(&room(&format!("r{i}"))))
        .collect();
    let extra = bus.subscribe(&room("r0"));
    eventually("all rooms subscribed", || async {
        (0..50).all(|i| numsub(&format!("r{i}")) == 1).then_some(())
    })
    .await;
    let channels: Vec<String> = redis
        .redis_cli(&["PUBSUB", "CHANNELS", "t:room:*"])
        .unwrap();
    assert_eq!(channels.len(), 50);

    // The last subscription of a room ends: unsubscribed after the linger.
    drop(subs);
    assert_eq!(numsub("r0"), 1, "r0 still has a subscription");
    eventually("idle rooms unsubscribed", || async {
        (1..50).all(|i| numsub(&format!("r{i}")) == 0).then_some(())
    })
    .await;
    assert_eq!(numsub("r0"), 1);

    // Coming back within the linger keeps the subscription, and comments
    // keep flowing to the new subscriber.
    drop(extra);
    let mut back = bus.subscribe(&room("r0"));
    tokio::time::sleep(config().unsubscribe_linger * 3).await;
    assert_eq!(numsub("r0"), 1, "rejoined within the linger");
    bus.publish(comment("r0", "still-here")).await.unwrap();
    assert_eq!(next_id(&mut back).await, "still-here");
    drop(back);
    eventually("r0 unsubscribed", || async {
        (numsub("r0") == 0).then_some(())
    })
    .await;

    // A room dropped before it was ever subscribed and rejoined is served.
    let first = bus.subscribe(&room("flip"));
    drop(first);
    let mut again = subscribed(&bus, "flip").await;
    assert_eq!(numsub("flip"), 1);
    bus.publish(comment("flip", "f1")).await.unwrap();
    assert_eq!(next_id(&mut again).await, "f1");
}

#[tokio::test]
async fn starts_without_redis_and_becomes_ready_when_it_appears() {
    let mut redis = RedisServer::start().unwrap();
    redis.stop();
    let bus = RedisBus::new(&redis.url(), config()).unwrap();
    match bus.readiness() {
        Readiness::NotReady(why) => assert!(why.contains("redis unreachable"), "{why}"),
        Readiness::Ready => panic!("ready without redis"),
    }
    let mut sub = bus.subscribe(&room("early"));
    match bus.publish(comment("early", "lost")).await {
        Err(BusError::Unavailable(why)) => assert!(why.contains("redis"), "{why}"),
        other => panic!("publish without redis: {other:?}"),
    }
    assert!(bus.recent(&room("early")).await.is_err());
    assert!(bus.cluster_rooms().await.is_err());

    redis.restart().unwrap();
    ready(&bus).await;
    // The room subscribed before Redis was there is subscribed now.
    assert_eq!(redis.numsub("t:room:early").unwrap(), 1);
    bus.publish(comment("early", "first")).await.unwrap();
    assert_eq!(next_id(&mut sub).await, "first");
}

#[tokio::test]
async fn a_redis_restart_is_survived_with_rooms_resubscribed() {
    let mut redis = RedisServer::start().unwrap();
    let a = RedisBus::new(&redis.url(), config()).unwrap();
    let b = RedisBus::new(&redis.url(), config()).unwrap();
    ready(&a).await;
    ready(&b).await;
    let mut sa = subscribed(&a, "x").await;
    let mut sb = subscribed(&b, "x").await;
    a.publish(comment("x", "before")).await.unwrap();
    assert_eq!(next_id(&mut sa).await, "before");
    assert_eq!(next_id(&mut sb).await, "before");

    redis.stop();
    eventually("the outage is noticed", || async {
        matches!(a.readiness(), Readiness::NotReady(_)).then_some(())
    })
    .await;
    assert!(matches!(
        a.publish(comment("x", "during")).await,
        Err(BusError::Unavailable(_))
    ));

    redis.restart().unwrap();
    ready(&a).await;
    ready(&b).await;
    assert_eq!(redis.numsub("t:room:x").unwrap(), 2);
    publish_when_ready(&b, comment("x", "after")).await;
    assert_eq!(next_id(&mut sa).await, "after");
    assert_eq!(next_id(&mut sb).await, "after");
    assert_eq!(sa.try_recv().unwrap(), None);
    assert_eq!(sb.try_recv().unwrap(), None);
}

#[tokio::test]
async fn a_killed_pubsub_connection_is_noticed_and_replaced() {
    let redis = RedisServer::start().unwrap();
    let bus = RedisBus::new(&redis.url(), config()).unwrap();
    ready(&bus).await;
    let mut sub = subscribed(&bus, "k").await;
    bus.publish(comment("k", "k1")).await.unwrap();
    assert_eq!(next_id(&mut sub).await, "k1");

    let killed: i64 = redis
        .redis_cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .unwrap();
    assert_eq!(killed, 1);
    eventually("resubscribed on a new connection", || async {
        (redis.numsub("t:room:k").unwrap() == 1 && bus.readiness() == Readiness::Ready)
            .then_some(())
    })
    .await;
    publish_when_ready(&bus, comment("k", "k2")).await;
    assert_eq!(next_id(&mut sub).await, "k2");
    assert_eq!(sub.try_recv().unwrap(), None);
}

#[tokio::test]
async fn presence_sums_live_instances_and_forgets_the_gone() {
    let redis = RedisServer::start().unwrap();
    let a = RedisBus::new(&redis.url(), config()).unwrap();
    let b = RedisBus::new(&redis.url(), config()).unwrap();
    ready(&a).await;
    ready(&b).await;
    let report = |id: &str, rooms: &[(&str, u64)]| InstanceReport {
        id: id.into(),
        address: format!("{id}:8080"),
        started_ms: now_ms() - 5_000,
        rooms: rooms.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
    };
    a.report(report("gw-a", &[("x", 2), ("y", 1)]))
        .await
        .unwrap();
    b.report(report("gw-b", &[("x", 3)])).await.unwrap();
    let mut rooms = a.cluster_rooms().await.unwrap();
    rooms.sort();
    assert_eq!(rooms, [("x".to_string(), 5), ("y".to_string(), 1)]);
    let mut list = b.instances().await.unwrap();
    list.sort_by(|p, q| p.id.cmp(&q.id));
    assert_eq!(list.len(), 2);
    assert_eq!(
        (list[0].id.as_str(), list[0].connections, list[0].rooms),
        ("gw-a", 3, 2)
    );
    assert_eq!(
        (list[1].id.as_str(), list[1].connections, list[1].rooms),
        ("gw-b", 3, 1)
    );
    assert_eq!(list[0].address, "gw-a:8080");
    assert!(list[0].uptime_s >= 4);

    // A clean leave is seen at once.
    b.leave("gw-b").await;
    assert_eq!(a.cluster_rooms().await.unwrap().len(), 2);
    let ids: Vec<String> = a
        .instances()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, ["gw-a"]);

    // An instance that stops reporting drops out once its heartbeat is
    // older than the TTL, and is pruned from the index.
    b.report(report("gw-b", &[("z", 4)])).await.unwrap();
    assert!(a
        .cluster_rooms()
        .await
        .unwrap()
        .contains(&("z".to_string(), 4)));
    let rooms = eventually("the silent instance expires", || async {
        a.report(report("gw-a", &[("x", 2)])).await.unwrap();
        let rooms = a.cluster_rooms().await.unwrap();
        (!rooms.iter().any(|(r, _)| r == "z")).then_some(rooms)
    })
    .await;
    assert_eq!(rooms, [("x".to_string(), 2)]);
    let members: Vec<String> = redis
        .redis_cli(&["ZRANGE", "t:instances", "0", "-1"])
        .unwrap();
    assert_eq!(members, ["gw-a"]);
}

#[tokio::test]
async fn a_lagging_subscriber_skips_the_oldest_and_others_are_not_held_up() {
    let redis = RedisServer::start().unwrap();
    let bus = RedisBus::new(
        &redis.url(),
        RedisBusConfig {
            bus: BusConfig {
                room_buffer: 4,
                ..BusConfig::default()
            },
            ..config()
        },
    )
    .unwrap();
    ready(&bus).await;
    let mut slow = subscribed(&bus, "busy").await;
    let mut fast = subscribed(&bus, "quiet").await;
    for i in 0..10 {
        bus.publish(comment("busy", &format!("b{i}")))
            .await
            .unwrap();
    }
    bus.publish(comment("quiet", "q")).await.unwrap();
    assert_eq!(next_id(&mut fast).await, "q");
    // Everything for "busy" went out on the one connection before "q", so
    // the slow room's buffer already overflowed.
    assert_eq!(slow.try_recv(), Err(RecvError::Lagged(6)));
    for i in 6..10 {
        assert_eq!(next_id(&mut slow).await, format!("b{i}"));
    }
}

#[tokio::test]
async fn a_malformed_url_is_a_config_error_and_new_never_connects() {
    assert!(matches!(
        RedisBus::new("not a url", config()),
        Err(BusError::Config(_))
    ));
    // Nothing listens on port 1: construction still succeeds.
    let bus = RedisBus::new("redis://127.0.0.1:1/", config()).unwrap();
    assert!(matches!(bus.readiness(), Readiness::NotReady(_)));
}

#[tokio::test]
async fn comments_published_while_the_pubsub_connection_was_down_are_recovered_once() {
    let redis = RedisServer::start().unwrap();
    let config = RedisBusConfig {
        bus: BusConfig {
            history_len: 100,
            ..BusConfig::default()
        },
        ..config()
    };
    let a = RedisBus::new(&redis.url(), config.clone()).unwrap();
    // `b` serves no room, so its pub/sub connection is not in pub/sub mode
    // and survives the kill below: it keeps publishing while `a` is cut off.
    let b = RedisBus::new(&redis.url(), config).unwrap();
    ready(&a).await;
    ready(&b).await;
    let mut sub = subscribed(&a, "gap").await;
    let mut sent = Vec::new();
    for i in 0..5 {
        let c = comment("gap", &format!("g{i}"));
        b.publish(c.clone()).await.unwrap();
        sent.push(c.id.clone());
    }
    let killed: i64 = redis
        .redis_cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .unwrap();
    assert_eq!(killed, 1);
    for i in 5..40 {
        let c = comment("gap", &format!("g{i}"));
        b.publish(c.clone()).await.unwrap();
        sent.push(c.id.clone());
    }
    ready(&a).await;
    for i in 40..45 {
        let c = comment("gap", &format!("g{i}"));
        b.publish(c.clone()).await.unwrap();
        sent.push(c.id.clone());
    }
    let mut got = Vec::new();
    for _ in 0..sent.len() {
        got.push(next_id(&mut sub).await);
    }
    assert_eq!(got, sent, "every comment once, in order");
    b.publish(comment("gap", "end")).await.unwrap();
    assert_eq!(next_id(&mut sub).await, "end", "and nothing twice");
}

/// A single-threaded runtime on its own thread that the test can freeze,
/// so the bus built on it stays cut off for exactly as long as the test
/// wants, however fast it would otherwise reconnect.
struct Freezable {
    handle: tokio::runtime::Handle,
    end: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Freezable {
    fn new() -> Freezable {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let handle = rt.handle().clone();
        let (end, ended) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _ = rt.block_on(ended);
        });
        Freezable {
            handle,
            end: Some(end),
            thread: Some(thread),
        }
    }

    /// Blocks the runtime's only thread until the returned sender is used
    /// or dropped; returns once it is blocked.
    fn freeze(&self) -> std::sync::mpsc::Sender<()> {
        let (frozen_tx, frozen) = std::sync::mpsc::channel::<()>();
        let (thaw, thawed) = std::sync::mpsc::channel::<()>();
        self.handle.spawn(async move {
            frozen_tx.send(()).unwrap();
            let _ = thawed.recv();
        });
        frozen.recv().unwrap();
        thaw
    }
}

impl Drop for Freezable {
    fn drop(&mut self) {
        let _ = self.end.take().unwrap().send(());
        let _ = self.thread.take().unwrap().join();
    }
}

#[tokio::test]
async fn beyond_the_history_the_newest_missed_comments_are_recovered_in_order() {
    let redis = RedisServer::start().unwrap();
    let rt_a = Freezable::new();
    let a = {
        let _on = rt_a.handle.enter();
        RedisBus::new(&redis.url(), config()).unwrap()
    };
    let b = RedisBus::new(&redis.url(), config()).unwrap();
    ready(&a).await;
    ready(&b).await;
    let mut sub = subscribed(&a, "many").await;
    b.publish(comment("many", "m00")).await.unwrap();
    assert_eq!(next_id(&mut sub).await, "m00");

    // `a` is frozen while its pub/sub connection is killed and 29 more
    // comments go by: far more than the history's 5.
    let thaw = rt_a.freeze();
    let killed: i64 = redis
        .redis_cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .unwrap();
    assert_eq!(killed, 1);
    for i in 1..30 {
        b.publish(comment("many", &format!("m{i:02}")))
            .await
            .unwrap();
    }
    drop(thaw);
    b.publish(comment("many", "end")).await.unwrap();

    // The oldest missed ones left history: the 5 newest are recovered, in
    // order, then live delivery goes on with nothing twice.
    let mut got = Vec::new();
    loop {
        let id = next_id(&mut sub).await;
        if id == "end" {
            break;
        }
        got.push(id);
    }
    // "end" takes one of the 5 places if it was published before `a` read
    // history; either way the run is the newest missed ones.
    let missed: Vec<String> = (1..30).map(|i| format!("m{i:02}")).collect();
    assert!(
        (4..=5).contains(&got.len()) && missed.ends_with(&got),
        "the newest missed comments, in order: {got:?}"
    );
    b.publish(comment("many", "after")).await.unwrap();
    assert_eq!(next_id(&mut sub).await, "after");
    assert_eq!(sub.try_recv().unwrap(), None);
    drop(a);
}
