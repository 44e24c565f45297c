//! The Redis bus against a real `redis-server` started per test: delivery
//! in order and only to subscribed rooms, bursts far beyond any buffer,
//! history and its removal, deletes, the control channel, subscription
//! lifetime (batching, linger), presence, recovery from outages (rooms with
//! and without a comment before), the envelope's compatibility (legacy,
//! unknown, garbage payloads), the operation timeout and its promise that
//! a timed-out publish never takes effect (Redis asleep or paused),
//! readiness while Redis refuses writes, and the metrics that count it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use danmaku_bus::{
    now_ms, Broker, BusConfig, BusError, BusMetrics, ControlMessage, Controller, Health,
    InstanceCounters, InstanceReport, PresenceManager, Readiness, RecvError, RedisBus,
    RedisBusConfig, RoomEvent, Subscription, CONTROL_RESYNC,
};
use danmaku_proto::{Danmaku, RoomId};
use danmaku_testkit::{comment, RedisServer};

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

/// Test settings keeping `history_len` comments per room.
fn keeping(history_len: usize) -> RedisBusConfig {
    RedisBusConfig {
        bus: BusConfig {
            history_len,
            ..BusConfig::default()
        },
        ..config()
    }
}

/// Publishes comments `{prefix}{i}` for each `i` in `range` to `room`, in
/// order, and returns their ids.
async fn post_all(
    bus: &RedisBus,
    room: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in range {
        let c = comment(room, &format!("{prefix}{i}"));
        post(bus, c.clone()).await.unwrap();
        ids.push(c.id.clone());
    }
    ids
}

/// The ids of the next `n` comments of a subscription.
async fn next_ids(sub: &mut Subscription, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(next_id(sub).await);
    }
    ids
}

/// A bus on `redis` with the test settings and its own metrics.
fn bus(redis: &RedisServer) -> RedisBus {
    bus_with(redis, config()).0
}

fn bus_with(redis: &RedisServer, config: RedisBusConfig) -> (RedisBus, BusMetrics) {
    let metrics = BusMetrics::default();
    let bus = RedisBus::new(&redis.url(), config, metrics.clone()).unwrap();
    (bus, metrics)
}

/// Two ready instances on the same Redis, as most fleet tests want.
async fn two_buses(redis: &RedisServer) -> (RedisBus, RedisBus) {
    let (a, b) = (bus(redis), bus(redis));
    ready(&a).await;
    ready(&b).await;
    (a, b)
}

fn room(id: &str) -> RoomId {
    RoomId::parse(id).unwrap()
}

/// Publishes a comment to its own room.
async fn post(bus: &RedisBus, c: Arc<Danmaku>) -> Result<(), BusError> {
    let r = room(&c.room);
    bus.publish(&r, RoomEvent::Comment(c)).await
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

async fn next_event(sub: &mut Subscription) -> RoomEvent {
    tokio::time::timeout(PATIENCE, sub.recv())
        .await
        .expect("an event in time")
        .expect("an event")
}

async fn next_id(sub: &mut Subscription) -> String {
    match next_event(sub).await {
        RoomEvent::Comment(c) => c.id.clone(),
        other => panic!("not a comment: {other:?}"),
    }
}

/// Publishes until it is accepted, for right after a recovery.
async fn publish_when_ready(bus: &RedisBus, c: Arc<Danmaku>) {
    eventually("a publish is accepted", || {
        let c = c.clone();
        async move { post(bus, c).await.ok() }
    })
    .await
}

/// Kills the one pub/sub connection subscribed to `subs` channels (the
/// control channel counts), so only that instance is cut off.
fn kill_pubsub_with(redis: &RedisServer, subs: usize) {
    let clients = redis.clients("pubsub").unwrap();
    let victims: Vec<_> = clients
        .iter()
        .filter(|c| c["sub"] == subs.to_string())
        .collect();
    assert_eq!(
        victims.len(),
        1,
        "exactly one connection with {subs} channels: {clients:?}"
    );
    assert!(redis.kill_client(&victims[0]["id"]).unwrap());
}

/// The value of one sample in the metrics' text exposition.
fn metric(metrics: &BusMetrics, sample: &str) -> f64 {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{sample} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn comments_reach_every_subscribed_instance_once_in_order() {
    let redis = RedisServer::start().unwrap();
    let (a, b) = two_buses(&redis).await;
    let mut a1 = subscribed(&a, "live").await;
    let mut a2 = subscribed(&a, "live").await;
    let mut b1 = subscribed(&b, "live").await;
    let mut other = subscribed(&b, "other").await;

    for i in 0..20 {
        let from = if i % 2 == 0 { &a } else { &b };
        post(from, comment("live", &format!("c{i}"))).await.unwrap();
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
    post(&b, comment("other", "o1")).await.unwrap();
    assert_eq!(next_id(&mut other).await, "o1");
    for sub in [&mut a1, &mut a2, &mut b1, &mut other] {
        assert_eq!(sub.try_recv().unwrap(), None);
    }
    // The payload survives the trip intact.
    let sent = comment("other", "o2");
    post(&a, sent.clone()).await.unwrap();
    assert_eq!(next_event(&mut other).await, RoomEvent::Comment(sent));
}

#[tokio::test]
async fn history_keeps_the_last_comments_oldest_first_and_forgets_old_ones() {
    let redis = RedisServer::start().unwrap();
    let bus = bus(&redis);
    ready(&bus).await;
    let _sub = subscribed(&bus, "h").await;
    for i in 0..8 {
        post(&bus, comment("h", &format!("c{i}"))).await.unwrap();
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
    let other = crate::bus(&redis);
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
    post(&bus, Arc::new(old)).await.unwrap();
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
    let bus = bus(&redis);
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
    post(&bus, comment("r0", "still-here")).await.unwrap();
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
    post(&bus, comment("flip", "f1")).await.unwrap();
    assert_eq!(next_id(&mut again).await, "f1");
}

#[tokio::test]
async fn starts_without_redis_and_becomes_ready_when_it_appears() {
    let mut redis = RedisServer::start().unwrap();
    redis.stop();
    let bus = bus(&redis);
    match bus.readiness() {
        Readiness::NotReady(why) => assert!(why.contains("redis unreachable"), "{why}"),
        Readiness::Ready => panic!("ready without redis"),
    }
    let mut sub = bus.subscribe(&room("early"));
    match post(&bus, comment("early", "lost")).await {
        Err(BusError::Unavailable(why)) => assert!(why.contains("redis"), "{why}"),
        other => panic!("publish without redis: {other:?}"),
    }
    assert!(bus.recent(&room("early")).await.is_err());
    assert!(bus.cluster_rooms().await.is_err());

    redis.restart().unwrap();
    ready(&bus).await;
    // The room subscribed before Redis was there is subscribed now.
    assert_eq!(redis.numsub("t:room:early").unwrap(), 1);
    post(&bus, comment("early", "first")).await.unwrap();
    assert_eq!(next_id(&mut sub).await, "first");
}

#[tokio::test]
async fn a_redis_restart_is_survived_with_rooms_resubscribed() {
    let mut redis = RedisServer::start().unwrap();
    let (a, b) = two_buses(&redis).await;
    let mut sa = subscribed(&a, "x").await;
    let mut sb = subscribed(&b, "x").await;
    post(&a, comment("x", "before")).await.unwrap();
    assert_eq!(next_id(&mut sa).await, "before");
    assert_eq!(next_id(&mut sb).await, "before");

    redis.stop();
    eventually("the outage is noticed", || async {
        matches!(a.readiness(), Readiness::NotReady(_)).then_some(())
    })
    .await;
    assert!(matches!(
        post(&a, comment("x", "during")).await,
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
async fn killed_connections_are_noticed_replaced_and_counted() {
    let redis = RedisServer::start().unwrap();
    let (bus, metrics) = bus_with(&redis, config());
    ready(&bus).await;
    let reconnects = |conn: &str| {
        metric(
            &metrics,
            &format!("danmaku_bus_reconnects_total{{connection=\"{conn}\"}}"),
        )
    };
    assert_eq!(
        reconnects("pubsub"),
        0.0,
        "the first connection is no reconnect"
    );
    let mut sub = subscribed(&bus, "k").await;
    post(&bus, comment("k", "k1")).await.unwrap();
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
    assert_eq!(reconnects("pubsub"), 1.0);
    assert_eq!(reconnects("command"), 0.0);

    // The command connection is the one normal client (the killer skips
    // itself).
    let killed: i64 = redis
        .redis_cli(&["CLIENT", "KILL", "TYPE", "normal"])
        .unwrap();
    assert_eq!(killed, 1);
    eventually("the command connection is replaced", || async {
        (reconnects("command") == 1.0).then_some(())
    })
    .await;
    publish_when_ready(&bus, comment("k", "k3")).await;
    assert_eq!(next_id(&mut sub).await, "k3");
    assert_eq!(metric(&metrics, "danmaku_bus_subscribed_rooms"), 1.0);
}

#[tokio::test]
async fn presence_sums_live_instances_and_forgets_the_gone() {
    let redis = RedisServer::start().unwrap();
    let (a, b) = two_buses(&redis).await;
    let report = |id: &str, rooms: &[(&str, u64)]| InstanceReport {
        id: id.into(),
        address: format!("{id}:8080"),
        started_ms: now_ms() - 5_000,
        rooms: rooms.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
        ..InstanceReport::default()
    };
    a.report(report("gw-a", &[("x", 2), ("y", 1)]))
        .await
        .unwrap();
    b.report(report("gw-b", &[("x", 3)])).await.unwrap();
    let mut rooms = a.cluster_rooms().await.unwrap();
    rooms.sort();
    assert_eq!(rooms, [("x".to_string(), 5), ("y".to_string(), 1)]);
    let mut list = b.instances().await.unwrap();
    list.sort_by(|p, q| p.report.id.cmp(&q.report.id));
    assert_eq!(list.len(), 2);
    let first = &list[0].report;
    assert_eq!(
        (first.id.as_str(), first.address.as_str()),
        ("gw-a", "gw-a:8080")
    );
    assert_eq!(first.rooms, [("x".to_string(), 2), ("y".to_string(), 1)]);
    assert!(now_ms() - first.started_ms >= 4_000);
    assert_eq!(list[1].report.id, "gw-b");
    assert_eq!(list[1].report.rooms, [("x".to_string(), 3)]);
    for status in &list {
        let age = now_ms() - status.last_heartbeat_ms;
        assert!(age < 5_000, "a fresh heartbeat: {age} ms old");
    }

    // A clean leave is seen at once.
    b.leave("gw-b").await;
    assert_eq!(a.cluster_rooms().await.unwrap().len(), 2);
    let ids: Vec<String> = a
        .instances()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.report.id)
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
async fn heartbeat_counters_round_trip_and_an_older_report_reads_as_zero() {
    let redis = RedisServer::start().unwrap();
    let (a, b) = two_buses(&redis).await;
    let counters = InstanceCounters {
        room_comments: vec![("x".into(), 12)],
        posts_accepted: 12,
        rejected: vec![("rate_limited".into(), 3), ("blocked".into(), 1)],
        frames_dropped: 5,
        slow_evictions: 2,
    };
    let report = InstanceReport {
        id: "gw-a".into(),
        address: "gw-a:8080".into(),
        started_ms: now_ms(),
        rooms: vec![("x".into(), 2)],
        counters: counters.clone(),
    };
    a.report(report.clone()).await.unwrap();
    let list = b.instances().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].report, report);

    // A hash as an older version writes it, with no counters field: the
    // instance still counts, with zero counters.
    let now = now_ms().to_string();
    let _: () = redis
        .redis_cli(&[
            "HSET",
            "t:instance:gw-old",
            "id",
            "gw-old",
            "address",
            "old:1",
            "started_ms",
            "1",
            "rooms",
            r#"[["x",4]]"#,
            "last_heartbeat_ms",
            &now,
        ])
        .unwrap();
    let _: () = redis
        .redis_cli(&["ZADD", "t:instances", &now, "gw-old"])
        .unwrap();
    let mut list = b.instances().await.unwrap();
    list.sort_by(|p, q| p.report.id.cmp(&q.report.id));
    assert_eq!(list.len(), 2);
    assert_eq!(list[1].report.id, "gw-old");
    assert_eq!(list[1].report.rooms, [("x".to_string(), 4)]);
    assert_eq!(list[1].report.counters, InstanceCounters::default());
    assert_eq!(b.cluster_rooms().await.unwrap(), [("x".to_string(), 6)]);
}

#[tokio::test]
async fn a_subscriber_beyond_room_queue_max_sheds_the_oldest_and_others_are_not_held_up() {
    let redis = RedisServer::start().unwrap();
    let (bus, metrics) = bus_with(
        &redis,
        RedisBusConfig {
            bus: BusConfig {
                room_queue_max: 4,
                ..BusConfig::default()
            },
            ..config()
        },
    );
    ready(&bus).await;
    let mut slow = subscribed(&bus, "busy").await;
    let mut fast = subscribed(&bus, "quiet").await;
    for i in 0..10 {
        post(&bus, comment("busy", &format!("b{i}"))).await.unwrap();
    }
    post(&bus, comment("quiet", "q")).await.unwrap();
    assert_eq!(next_id(&mut fast).await, "q");
    // Everything for "busy" went out on the one connection before "q", so
    // the slow room's buffer already overflowed.
    assert_eq!(slow.try_recv(), Err(RecvError::Lagged(6)));
    for i in 6..10 {
        assert_eq!(next_id(&mut slow).await, format!("b{i}"));
    }
    assert_eq!(metric(&metrics, "danmaku_bus_room_events_shed_total"), 6.0);
}

#[tokio::test]
async fn a_malformed_url_is_a_config_error_and_new_never_connects() {
    assert!(matches!(
        RedisBus::new("not a url", config(), BusMetrics::default()),
        Err(BusError::Config(_))
    ));
    // Nothing listens on port 1: construction still succeeds.
    let bus = RedisBus::new("redis://127.0.0.1:1/", config(), BusMetrics::default()).unwrap();
    assert!(matches!(bus.readiness(), Readiness::NotReady(_)));
}

#[tokio::test]
async fn comments_published_while_the_pubsub_connection_was_down_are_recovered_once() {
    let redis = RedisServer::start().unwrap();
    let config = keeping(100);
    let (a, metrics) = bus_with(&redis, config.clone());
    // `b` serves no room, so its pub/sub connection holds only the control
    // channel and is spared by the kill below: it keeps publishing while
    // `a` is cut off.
    let (b, _) = bus_with(&redis, config);
    ready(&a).await;
    ready(&b).await;
    let mut sub = subscribed(&a, "gap").await;
    let mut sent = Vec::new();
    sent.extend(post_all(&b, "gap", "g", 0..5).await);
    kill_pubsub_with(&redis, 2);
    sent.extend(post_all(&b, "gap", "g", 5..40).await);
    ready(&a).await;
    sent.extend(post_all(&b, "gap", "g", 40..45).await);
    let got = next_ids(&mut sub, sent.len()).await;
    assert_eq!(got, sent, "every comment once, in order");
    post(&b, comment("gap", "end")).await.unwrap();
    assert_eq!(next_id(&mut sub).await, "end", "and nothing twice");
    assert_eq!(metric(&metrics, "danmaku_bus_recoveries_total"), 1.0);
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
    let (a, metrics) = {
        let _on = rt_a.handle.enter();
        bus_with(&redis, config())
    };
    let b = bus(&redis);
    ready(&a).await;
    ready(&b).await;
    let mut sub = subscribed(&a, "many").await;
    post(&b, comment("many", "m00")).await.unwrap();
    assert_eq!(next_id(&mut sub).await, "m00");

    // `a` is frozen while its pub/sub connection is killed and 29 more
    // comments go by: far more than the history's 5.
    let thaw = rt_a.freeze();
    kill_pubsub_with(&redis, 2);
    for i in 1..30 {
        post(&b, comment("many", &format!("m{i:02}")))
            .await
            .unwrap();
    }
    drop(thaw);
    post(&b, comment("many", "end")).await.unwrap();

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
    post(&b, comment("many", "after")).await.unwrap();
    assert_eq!(next_id(&mut sub).await, "after");
    assert_eq!(sub.try_recv().unwrap(), None);
    assert_eq!(metric(&metrics, "danmaku_bus_recoveries_total"), 1.0);
    assert_eq!(
        metric(&metrics, "danmaku_bus_recovered_comments_total"),
        5.0,
        "history's 5 were replayed"
    );
    assert_eq!(
        metric(
            &metrics,
            "danmaku_bus_reconnects_total{connection=\"pubsub\"}"
        ),
        1.0
    );
    drop(a);
}

/// Publishes raw bytes on a channel, as an instance of another version (or
/// a broken one) would.
fn publish_raw(redis: &RedisServer, channel: &str, payload: &[u8]) {
    let client = danmaku_testkit::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let _: i64 = danmaku_testkit::redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query(&mut conn)
        .unwrap();
}

/// A v1-shaped envelope of any kind and version, built by hand.
#[derive(serde::Serialize)]
struct HandMade<'a> {
    v: u64,
    kind: &'a str,
    extra: &'a str,
}

#[tokio::test]
async fn unknown_kinds_and_garbage_are_skipped_and_counted_and_legacy_comments_delivered() {
    let redis = RedisServer::start().unwrap();
    let (bus, metrics) = bus_with(&redis, config());
    ready(&bus).await;
    let mut sub = subscribed(&bus, "mixed").await;
    let channel = "t:room:mixed";
    let envelope = |v, kind| {
        rmp_serde::to_vec_named(&HandMade {
            v,
            kind,
            extra: "from the future",
        })
        .unwrap()
    };
    // A kind this version does not know, and a newer envelope version
    // (whose kinds it cannot trust, even a known one).
    publish_raw(&redis, channel, &envelope(1, "future_thing"));
    publish_raw(&redis, channel, &envelope(2, "comment"));
    publish_raw(&redis, channel, b"\xc1 not messagepack");
    // An instance from before envelopes publishes a bare comment.
    let legacy = comment("mixed", "legacy");
    publish_raw(&redis, channel, &rmp_serde::to_vec_named(&*legacy).unwrap());
    post(&bus, comment("mixed", "current")).await.unwrap();

    assert_eq!(next_event(&mut sub).await, RoomEvent::Comment(legacy));
    assert_eq!(next_id(&mut sub).await, "current");
    assert_eq!(sub.try_recv().unwrap(), None);
    assert_eq!(metric(&metrics, "danmaku_bus_unknown_events_total"), 2.0);
    assert_eq!(metric(&metrics, "danmaku_bus_invalid_payloads_total"), 1.0);
}

#[tokio::test]
async fn history_written_by_an_old_instance_is_read() {
    let redis = RedisServer::start().unwrap();
    let bus = bus(&redis);
    ready(&bus).await;
    // What an instance from before envelopes left in history.
    let old = comment("old", "bare");
    let client = danmaku_testkit::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let _: i64 = danmaku_testkit::redis::cmd("RPUSH")
        .arg("t:history:old")
        .arg(rmp_serde::to_vec_named(&*old).unwrap())
        .query(&mut conn)
        .unwrap();
    post(&bus, comment("old", "new")).await.unwrap();
    let recent = bus.recent(&room("old")).await.unwrap();
    assert_eq!(recent.len(), 2);
    assert_eq!(recent[0], *old);
    assert_eq!(recent[1].id, "new");
    // And it can be removed like any other entry.
    assert!(bus.remove_history(&room("old"), "bare").await.unwrap());
}

#[tokio::test]
async fn deletes_reach_every_instance_and_removed_comments_leave_history() {
    let redis = RedisServer::start().unwrap();
    let (a, b) = two_buses(&redis).await;
    let mut sa = subscribed(&a, "d").await;
    let mut sb = subscribed(&b, "d").await;
    for id in ["c1", "c2", "c3"] {
        post(&a, comment("d", id)).await.unwrap();
    }
    assert!(b.remove_history(&room("d"), "c2").await.unwrap());
    assert!(
        !a.remove_history(&room("d"), "c2").await.unwrap(),
        "gone already"
    );
    assert!(!a.remove_history(&room("d"), "never").await.unwrap());
    assert!(!a.remove_history(&room("nothing"), "c1").await.unwrap());
    let delete = RoomEvent::Delete { id: "c2".into() };
    b.publish(&room("d"), delete.clone()).await.unwrap();
    for sub in [&mut sa, &mut sb] {
        for id in ["c1", "c2", "c3"] {
            assert_eq!(next_id(sub).await, id);
        }
        assert_eq!(next_event(sub).await, delete);
    }
    for bus in [&a, &b] {
        let ids: Vec<String> = bus
            .recent(&room("d"))
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(
            ids,
            ["c1", "c3"],
            "late joiners never see c2, nor the delete"
        );
    }
}

#[tokio::test]
async fn control_messages_reach_every_instance_once_the_sender_included() {
    let redis = RedisServer::start().unwrap();
    let (a, b) = two_buses(&redis).await;
    let mut ca = a.subscribe_control();
    let mut cb = b.subscribe_control();
    assert_eq!(redis.numsub("t:control").unwrap(), 2, "always subscribed");
    let msg = |n: u8| ControlMessage {
        origin: "gw-a".into(),
        kind: "test".into(),
        body: bytes::Bytes::from(vec![n, 0, 255]),
    };
    a.publish_control(msg(1)).await.unwrap();
    a.publish_control(msg(2)).await.unwrap();
    for sub in [&mut ca, &mut cb] {
        for n in [1, 2] {
            let got = tokio::time::timeout(PATIENCE, sub.recv()).await.unwrap();
            assert_eq!(got.unwrap(), msg(n), "each once, in order");
        }
    }

    // Subscribed again after lost connections.
    let killed: i64 = redis
        .redis_cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .unwrap();
    assert_eq!(killed, 2);
    eventually("the control channel is back", || async {
        (redis.numsub("t:control").unwrap() == 2
            && a.readiness() == Readiness::Ready
            && b.readiness() == Readiness::Ready)
            .then_some(())
    })
    .await;
    b.publish_control(msg(3)).await.unwrap();
    for sub in [&mut ca, &mut cb] {
        let got = tokio::time::timeout(PATIENCE, sub.recv()).await.unwrap();
        assert_eq!(
            got.unwrap().kind,
            CONTROL_RESYNC,
            "told it may have missed some"
        );
        let got = tokio::time::timeout(PATIENCE, sub.recv()).await.unwrap();
        assert_eq!(got.unwrap(), msg(3));
        assert_eq!(sub.try_recv().unwrap(), None);
    }
}

#[tokio::test]
async fn every_operation_resolves_within_op_timeout_when_redis_hangs() {
    let redis = RedisServer::start().unwrap();
    let op_timeout = Duration::from_millis(500);
    let config = RedisBusConfig {
        bus: BusConfig {
            op_timeout,
            ..config().bus
        },
        ..config()
    };
    let (bus, _) = bus_with(&redis, config);
    ready(&bus).await;
    let _sub = subscribed(&bus, "p").await;
    let _: String = redis
        .redis_cli(&["CLIENT", "PAUSE", "5000", "ALL"])
        .unwrap();
    // The slack is scheduling on a busy test machine, not part of the promise.
    let bound = op_timeout + Duration::from_millis(500);

    async fn timed<T: std::fmt::Debug>(
        what: &str,
        bound: Duration,
        op: impl Future<Output = Result<T, BusError>>,
    ) {
        let started = std::time::Instant::now();
        let out = op.await;
        let took = started.elapsed();
        assert!(
            matches!(out, Err(BusError::Unavailable(_))),
            "{what}: {out:?}"
        );
        assert!(took <= bound, "{what} took {took:?}");
    }
    timed("publish", bound, post(&bus, comment("p", "paused"))).await;
    timed("recent", bound, bus.recent(&room("p"))).await;
    timed("recent elsewhere", bound, bus.recent(&room("q"))).await;
    timed("remove_history", bound, bus.remove_history(&room("p"), "x")).await;
    let report = InstanceReport {
        id: "gw".into(),
        ..InstanceReport::default()
    };
    timed("report", bound, bus.report(report)).await;
    timed("instances", bound, bus.instances()).await;
    timed("cluster_rooms", bound, bus.cluster_rooms()).await;
    let control = ControlMessage {
        origin: "gw".into(),
        kind: "k".into(),
        body: bytes::Bytes::new(),
    };
    timed("publish_control", bound, bus.publish_control(control)).await;
    let started = std::time::Instant::now();
    bus.leave("gw").await;
    assert!(started.elapsed() <= bound, "leave");
}

#[tokio::test]
async fn a_burst_nobody_reads_yet_is_received_whole_in_order() {
    let redis = RedisServer::start().unwrap();
    let (bus, metrics) = bus_with(&redis, config());
    ready(&bus).await;
    let mut unread = subscribed(&bus, "burst").await;
    for i in 0..20_000 {
        post(&bus, comment("burst", &format!("c{i}")))
            .await
            .unwrap();
    }
    for i in 0..20_000 {
        assert_eq!(next_id(&mut unread).await, format!("c{i}"));
    }
    assert_eq!(unread.try_recv().unwrap(), None);
    assert_eq!(metric(&metrics, "danmaku_bus_room_events_shed_total"), 0.0);
}

#[tokio::test]
async fn a_room_without_comments_before_an_outage_recovers_those_posted_during_it() {
    let redis = RedisServer::start().unwrap();
    let config = keeping(100);
    let rt_a = Freezable::new();
    let (a, metrics) = {
        let _on = rt_a.handle.enter();
        bus_with(&redis, config.clone())
    };
    let (b, _) = bus_with(&redis, config);
    ready(&a).await;
    ready(&b).await;
    // Subscribed, and served a (still empty) history, as for a `hello`.
    let mut sub = subscribed(&a, "fresh").await;
    assert!(a.recent(&room("fresh")).await.unwrap().is_empty());

    // `a` is frozen while its pub/sub connection is killed and comments go
    // by: the room had received none before.
    let thaw = rt_a.freeze();
    kill_pubsub_with(&redis, 2);
    let mut sent = Vec::new();
    sent.extend(post_all(&b, "fresh", "f", 0..10).await);
    drop(thaw);
    // Reconnected and recovered (the bus turns ready only after both).
    eventually("a reconnected and recovered", || async {
        let reconnects = metric(
            &metrics,
            "danmaku_bus_reconnects_total{connection=\"pubsub\"}",
        );
        (reconnects == 1.0 && a.readiness() == Readiness::Ready).then_some(())
    })
    .await;
    post(&b, comment("fresh", "end")).await.unwrap();
    sent.push("end".into());

    let got = next_ids(&mut sub, sent.len()).await;
    assert_eq!(got, sent, "every comment once, in order");
    post(&b, comment("fresh", "after")).await.unwrap();
    assert_eq!(next_id(&mut sub).await, "after", "and nothing twice");
    assert_eq!(sub.try_recv().unwrap(), None);
    assert_eq!(metric(&metrics, "danmaku_bus_recoveries_total"), 1.0);
    assert_eq!(
        metric(&metrics, "danmaku_bus_recovered_comments_total"),
        10.0
    );
    drop(a);
}

/// Settings under which a stalled Redis is not noticed by pings while a
/// publish waits on it: the publish alone meets the stall.
fn stall_config() -> RedisBusConfig {
    RedisBusConfig {
        bus: BusConfig {
            op_timeout: Duration::from_secs(1),
            ..config().bus
        },
        ping_interval: Duration::from_secs(30),
        ..config()
    }
}

/// Checks a publish that timed out while Redis was stalled never takes
/// effect once Redis runs again: not delivered, not in history.
async fn a_stalled_publish_never_takes_effect(redis: &RedisServer, stall: impl FnOnce()) {
    let (bus, _) = bus_with(redis, stall_config());
    ready(&bus).await;
    let mut sub = subscribed(&bus, "stall").await;
    post(&bus, comment("stall", "before")).await.unwrap();
    assert_eq!(next_id(&mut sub).await, "before");

    stall();
    let started = std::time::Instant::now();
    let out = post(&bus, comment("stall", "stalled")).await;
    assert!(
        matches!(out, Err(BusError::Unavailable(_))),
        "the publish fails: {out:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(2_500), "in time");

    // Once Redis runs again (3 s after the stall began), and a little
    // past it, the next comment is the next thing delivered.
    tokio::time::sleep(Duration::from_millis(3_500).saturating_sub(started.elapsed())).await;
    publish_when_ready(&bus, comment("stall", "after")).await;
    assert_eq!(
        next_id(&mut sub).await,
        "after",
        "the timed-out one never came"
    );
    assert_eq!(sub.try_recv().unwrap(), None);
    let ids: Vec<String> = bus
        .recent(&room("stall"))
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["before", "after"], "nor is it in history");
}

#[tokio::test]
async fn a_publish_that_timed_out_while_redis_slept_never_takes_effect() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "local"]).unwrap();
    let url = redis.url();
    a_stalled_publish_never_takes_effect(&redis, move || {
        let (asleep_tx, asleep) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let client = danmaku_testkit::redis::Client::open(url).unwrap();
            let mut conn = client.get_connection().unwrap();
            asleep_tx.send(()).unwrap();
            let _: danmaku_testkit::redis::RedisResult<()> = danmaku_testkit::redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(3)
                .query(&mut conn);
        });
        asleep.recv().unwrap();
        // Let the DEBUG SLEEP reach Redis before the publish does.
        std::thread::sleep(Duration::from_millis(150));
    })
    .await;
}

#[tokio::test]
async fn a_publish_that_timed_out_while_writes_were_paused_never_takes_effect() {
    let redis = RedisServer::start().unwrap();
    a_stalled_publish_never_takes_effect(&redis, || {
        let _: String = redis
            .redis_cli(&["CLIENT", "PAUSE", "3000", "WRITE"])
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn publishes_keep_history_and_order_through_the_script_and_survive_a_script_flush() {
    let redis = RedisServer::start().unwrap();
    let (a, b) = two_buses(&redis).await;
    let mut sub = subscribed(&b, "s").await;
    for i in 0..3 {
        post(&a, comment("s", &format!("s{i}"))).await.unwrap();
    }
    // Redis forgets the script: it is loaded again on first use.
    let _: String = redis.redis_cli(&["SCRIPT", "FLUSH"]).unwrap();
    for i in 3..7 {
        post(&a, comment("s", &format!("s{i}"))).await.unwrap();
    }
    for i in 0..7 {
        assert_eq!(next_id(&mut sub).await, format!("s{i}"));
    }
    let ids: Vec<String> = b
        .recent(&room("s"))
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["s2", "s3", "s4", "s5", "s6"], "capped at history_len");
    let ttl: i64 = redis.redis_cli(&["PTTL", "t:history:s"]).unwrap();
    assert!(ttl > 0, "the list expires");
    // A delete is published but is not history.
    let delete = RoomEvent::Delete { id: "s6".into() };
    a.publish(&room("s"), delete.clone()).await.unwrap();
    assert_eq!(next_event(&mut sub).await, delete);
    assert_eq!(b.recent(&room("s")).await.unwrap().len(), 5);
}

#[tokio::test]
async fn readiness_follows_whether_redis_takes_writes() {
    let redis = RedisServer::start().unwrap();
    let (bus, metrics) = bus_with(&redis, config());
    ready(&bus).await;
    let _sub = subscribed(&bus, "full").await;
    post(&bus, comment("full", "ok")).await.unwrap();

    let _: String = redis
        .redis_cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .unwrap();
    let _: String = redis
        .redis_cli(&["CONFIG", "SET", "maxmemory", "1"])
        .unwrap();
    let why = eventually("not ready while writes are refused", || async {
        match bus.readiness() {
            Readiness::NotReady(why) => Some(why),
            Readiness::Ready => None,
        }
    })
    .await;
    assert!(why.contains("redis refuses writes"), "{why}");
    assert!(why.contains("OOM"), "{why}");
    assert!(post(&bus, comment("full", "refused")).await.is_err());
    assert!(metric(&metrics, "danmaku_bus_write_refusals_total") >= 1.0);

    let _: String = redis
        .redis_cli(&["CONFIG", "SET", "maxmemory", "0"])
        .unwrap();
    ready(&bus).await;
    post(&bus, comment("full", "again")).await.unwrap();
    let ids: Vec<String> = bus
        .recent(&room("full"))
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["ok", "again"]);
}

#[tokio::test]
async fn a_publish_refused_for_memory_marks_the_bus_not_ready_at_once() {
    let redis = RedisServer::start().unwrap();
    // Pings (and so probes) too rare to be the ones noticing.
    let (bus, _) = bus_with(
        &redis,
        RedisBusConfig {
            ping_interval: Duration::from_secs(30),
            ..config()
        },
    );
    ready(&bus).await;
    let mut sub = subscribed(&bus, "oom").await;
    let _: String = redis
        .redis_cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .unwrap();
    let _: String = redis
        .redis_cli(&["CONFIG", "SET", "maxmemory", "1"])
        .unwrap();
    match post(&bus, comment("oom", "refused")).await {
        Err(BusError::Unavailable(why)) => assert!(why.contains("refuses writes"), "{why}"),
        other => panic!("a refused publish: {other:?}"),
    }
    match bus.readiness() {
        Readiness::NotReady(why) => assert!(why.contains("redis refuses writes"), "{why}"),
        Readiness::Ready => panic!("ready while Redis refuses writes"),
    }
    // Nothing of the refused comment went out: the next comment a
    // direct publish sends is the first thing delivered.
    let _: String = redis
        .redis_cli(&["CONFIG", "SET", "maxmemory", "0"])
        .unwrap();
    let len: i64 = redis.redis_cli(&["LLEN", "t:history:oom"]).unwrap();
    assert_eq!(len, 0);
    let legacy = comment("oom", "marker");
    publish_raw(
        &redis,
        "t:room:oom",
        &rmp_serde::to_vec_named(&*legacy).unwrap(),
    );
    assert_eq!(next_id(&mut sub).await, "marker");
}
