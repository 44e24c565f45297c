//! Several gateways on one real Redis (a `redis-server` per test): delivery
//! exactly once and in one order across instances, subscriptions only where
//! viewers are, fleet-wide counts (also after a SIGKILL and a clean stop),
//! and riding out Redis being absent, restarted, or dropping the pub/sub
//! connection. Gateways run in process unless a real process is needed.

use std::collections::HashSet;
use std::net::SocketAddr;

use danmaku_bus::{Broker, BusMetrics, Health, RedisBus, RedisBusConfig, RoomEvent};
use danmaku_gateway::{RoomsResponse, Settings};
use danmaku_proto::{Danmaku, RejectCode, RoomId, ServerEvent, SUBPROTOCOL_MSGPACK};
use danmaku_testkit::RedisServer;
use serde_json::json;

use crate::support::{
    eventually, readyz, until_ready, Client, GatewayProcess, TestGateway, PATIENCE,
};

/// Channel of a room under the default prefix.
fn channel(room: &str) -> String {
    format!("danmaku:room:{room}")
}

/// Test settings for instance `id` on `redis`: short linger, no post limits.
fn node(redis: &RedisServer, id: &str) -> impl FnOnce(&mut Settings) {
    let (url, id) = (redis.url(), id.to_owned());
    move |s| {
        s.redis_url = url;
        s.instance_id = id;
        s.unsubscribe_linger_ms = 300;
        s.post_rate_count = 1_000_000;
        s.post_burst = 1_000_000;
    }
}

/// Starts instance `id` on `redis`, with `more` changes to its settings,
/// and waits until it is ready.
async fn start(redis: &RedisServer, id: &str, more: impl FnOnce(&mut Settings)) -> TestGateway {
    let base = node(redis, id);
    let gw = TestGateway::with(|s| {
        base(s);
        more(s);
    })
    .await;
    until_ready(gw.addr).await;
    gw
}

/// A client that keeps every danmaku, ack and reject it has been sent, so a
/// test can wait for one thing without losing the others.
struct Tracked {
    c: Client,
    seen: Vec<Danmaku>,
    acked: Vec<String>,
    rejected: Vec<RejectCode>,
    deleted: Vec<String>,
    pongs: usize,
}

impl Tracked {
    fn new(c: Client) -> Tracked {
        Tracked {
            c,
            seen: Vec::new(),
            acked: Vec::new(),
            rejected: Vec::new(),
            deleted: Vec::new(),
            pongs: 0,
        }
    }

    /// Reads one event (batches unpacked, `online` skipped) and files it.
    async fn step(&mut self) {
        match self.c.next_event().await {
            ServerEvent::Danmaku(d) => self.seen.push(d),
            ServerEvent::Ack { id, .. } => self.acked.push(id),
            ServerEvent::Reject { code, .. } => self.rejected.push(code),
            ServerEvent::Pong { .. } => self.pongs += 1,
            ServerEvent::Delete { id, .. } => self.deleted.push(id),
            other => panic!("unexpected event {other:?}"),
        }
    }

    /// Reads events until `done` holds.
    async fn until(&mut self, done: impl Fn(&Tracked) -> bool) {
        while !done(self) {
            self.step().await;
        }
    }

    /// Reads until this many danmaku have arrived in all.
    async fn until_seen(&mut self, n: usize) {
        self.until(|t| t.seen.len() >= n).await;
    }

    /// Posts `text` and waits for its answer: the new id, or the code.
    async fn post(&mut self, text: &str) -> Result<String, RejectCode> {
        let (acks, rejects) = (self.acked.len(), self.rejected.len());
        self.c.post(text).await;
        self.until(|t| t.acked.len() > acks || t.rejected.len() > rejects)
            .await;
        match self.acked.get(acks) {
            Some(id) => Ok(id.clone()),
            None => Err(self.rejected[rejects]),
        }
    }

    /// Posts `text` until it is accepted, tolerating `unavailable` (for
    /// right after a recovery); returns the id.
    async fn post_until_acked(&mut self, text: &str) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match self.post(text).await {
                Ok(id) => return id,
                Err(RejectCode::Unavailable) => {
                    assert!(tokio::time::Instant::now() < deadline, "never accepted");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(code) => panic!("rejected with {code:?}"),
            }
        }
    }

    /// Sends a ping and waits for the pong: the socket is alive.
    async fn ping(&mut self) {
        let before = self.pongs;
        self.c
            .send_event(json!({"type": "ping", "nonce": "alive"}))
            .await;
        self.until(|t| t.pongs > before).await;
    }

    fn ids(&self) -> Vec<String> {
        self.seen.iter().map(|d| d.id.clone()).collect()
    }
}

/// Asserts every viewer saw exactly `acked` (as a set), each once, all in
/// the same order.
fn assert_same_stream(viewers: &[&Tracked], acked: &[String]) {
    let order = viewers[0].ids();
    let unique: HashSet<&String> = order.iter().collect();
    assert_eq!(unique.len(), order.len(), "no duplicates: {order:?}");
    let want: HashSet<&String> = acked.iter().collect();
    assert_eq!(unique, want, "exactly the accepted comments");
    for v in viewers {
        assert_eq!(v.ids(), order, "one order for every viewer");
    }
}

async fn rooms(addr: SocketAddr) -> RoomsResponse {
    let (status, body) = crate::support::http_get(addr, "/api/rooms").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// `(room, online)` pairs of `/api/rooms`, sorted by room.
async fn room_counts(addr: SocketAddr) -> Vec<(String, u64)> {
    let mut list: Vec<(String, u64)> = rooms(addr)
        .await
        .rooms
        .into_iter()
        .map(|r| (r.room, r.online))
        .collect();
    list.sort();
    list
}

/// `(id, connections, rooms)` of each instance in `/api/instances`.
async fn instances(addr: SocketAddr) -> Vec<(String, u64, u64)> {
    let (status, body) = crate::support::http_get(addr, "/api/instances").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_owned(),
                i["connections"].as_u64().unwrap(),
                i["rooms"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn counts(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|(r, n)| (r.to_string(), *n)).collect()
}

fn fleet(list: &[(&str, u64, u64)]) -> Vec<(String, u64, u64)> {
    list.iter()
        .map(|(i, c, r)| (i.to_string(), *c, *r))
        .collect()
}

/// Waits until both instances have new pub/sub connections (none of
/// `before`) and are subscribed to room `k` again.
async fn resubscribed(redis: &RedisServer, before: &HashSet<String>, what: &str) {
    eventually(what, || async {
        let now = pubsub_clients(redis);
        (now.len() == 2 && now.is_disjoint(before) && redis.numsub(&channel("k")).unwrap() == 2)
            .then_some(())
    })
    .await;
}

/// Ids of Redis's pub/sub clients, from `CLIENT LIST TYPE pubsub`.
fn pubsub_clients(redis: &RedisServer) -> HashSet<String> {
    let list: String = redis
        .redis_cli(&["CLIENT", "LIST", "TYPE", "pubsub"])
        .unwrap();
    list.lines()
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn three_instances_deliver_every_comment_once_and_in_one_order() {
    let redis = RedisServer::start().unwrap();
    let a = start(&redis, "gw-a", |_| {}).await;
    let b = start(&redis, "gw-b", |_| {}).await;
    let c = start(&redis, "gw-c", |_| {}).await;
    let mut viewers = [
        Tracked::new(a.join("live").await),
        Tracked::new(a.join("live").await),
        Tracked::new(b.join("live").await),
        Tracked::new(Client::connect(&b.url("live"), Some(SUBPROTOCOL_MSGPACK)).await),
        Tracked::new(c.join("live").await),
    ];
    let mut elsewhere = Tracked::new(c.join("elsewhere").await);
    // One poster per instance, all posting at once.
    let posters = [0, 2, 4];
    for round in 0..10 {
        for p in posters {
            viewers[p].c.post(&format!("p{p} r{round}")).await;
        }
    }
    for v in viewers.iter_mut() {
        v.until_seen(30).await;
    }
    let mut acked = Vec::new();
    for p in posters {
        assert_eq!(
            viewers[p].acked.len(),
            10,
            "every post acked before its echo"
        );
        assert!(viewers[p].rejected.is_empty());
        acked.extend(viewers[p].acked.iter().cloned());
    }
    assert_same_stream(&viewers.iter().collect::<Vec<_>>(), &acked);
    // Each poster's comments keep their order.
    for p in posters {
        let mine: Vec<&str> = viewers[0]
            .seen
            .iter()
            .filter(|d| d.text.starts_with(&format!("p{p} ")))
            .map(|d| d.text.as_str())
            .collect();
        let want: Vec<String> = (0..10).map(|r| format!("p{p} r{r}")).collect();
        assert_eq!(mine, want);
    }

    // Nothing extra follows: every viewer's next danmaku is the next post,
    // and the other room on the same instance saw none of it.
    let last = viewers[4].post("last").await.unwrap();
    for v in viewers.iter_mut() {
        v.until_seen(31).await;
        assert_eq!(v.seen[30].id, last);
    }
    let own = elsewhere.post("own room").await.unwrap();
    elsewhere.until_seen(1).await;
    assert_eq!(elsewhere.ids(), [own]);
}

#[tokio::test]
async fn only_instances_with_viewers_subscribe_and_they_let_go_after_the_linger() {
    let redis = RedisServer::start().unwrap();
    let a = start(&redis, "gw-a", |_| {}).await;
    let b = start(&redis, "gw-b", |_| {}).await;
    let c = start(&redis, "gw-c", |_| {}).await;
    assert_eq!(redis.numsub(&channel("x")).unwrap(), 0);

    // `hello` means subscribed: no waiting needed for NUMSUB.
    let a1 = a.join("x").await;
    let a2 = a.join("x").await;
    let b1 = b.join("x").await;
    let mut cy = Tracked::new(c.join("y").await);
    assert_eq!(redis.numsub(&channel("x")).unwrap(), 2, "one per instance");
    assert_eq!(redis.numsub(&channel("y")).unwrap(), 1);

    // Traffic in x never reaches c: its viewer's next danmaku is from y.
    let mut poster = Tracked::new(a1);
    for i in 0..5 {
        poster.post(&format!("x{i}")).await.unwrap();
    }
    let mine = cy.post("y0").await.unwrap();
    cy.until_seen(1).await;
    assert_eq!(cy.ids(), [mine]);

    // The last viewer on b leaves: b unsubscribes once the linger is over.
    drop(b1);
    eventually("b unsubscribes x", || async {
        (redis.numsub(&channel("x")).unwrap() == 1).then_some(())
    })
    .await;
    drop(a2);
    drop(poster);
    eventually("nobody subscribes x", || async {
        (redis.numsub(&channel("x")).unwrap() == 0).then_some(())
    })
    .await;
    assert_eq!(redis.numsub(&channel("y")).unwrap(), 1);
}

#[tokio::test]
async fn counts_span_the_fleet_and_a_killed_process_drops_out_within_the_ttl() {
    let redis = RedisServer::start().unwrap();
    let ttl = |s: &mut Settings| {
        s.heartbeat_ttl_ms = 1_500;
        s.heartbeat_interval_ms = 200;
    };
    let a = start(&redis, "gw-a", ttl).await;
    let b = start(&redis, "gw-b", ttl).await;
    let mut p = GatewayProcess::spawn(
        "gw-p",
        &[
            ("DANMAKU_REDIS_URL", &redis.url()),
            ("DANMAKU_HEARTBEAT_TTL_MS", "1500"),
            ("DANMAKU_HEARTBEAT_INTERVAL_MS", "200"),
        ],
    )
    .await;
    until_ready(p.addr).await;

    let _a = [a.join("c").await, a.join("c").await];
    let _b = [b.join("c").await, b.join("d").await];
    let _p = [
        Client::connect(&p.url("c"), None).await,
        Client::connect(&p.url("c"), None).await,
    ];
    let want = counts(&[("c", 5), ("d", 1)]);
    for addr in [a.addr, b.addr, p.addr] {
        eventually("every instance shows the fleet's counts", || async {
            (room_counts(addr).await == want).then_some(())
        })
        .await;
        assert_eq!(rooms(addr).await.total_online, 6);
    }
    let all = fleet(&[("gw-a", 2, 1), ("gw-b", 2, 2), ("gw-p", 2, 1)]);
    eventually("every instance is listed", || async {
        (instances(a.addr).await == all).then_some(())
    })
    .await;
    // A newcomer's hello counts everyone, itself included.
    eventually("hello.online counts the fleet", || async {
        let probe = b.join("c").await;
        (probe.hello.online == 6).then_some(())
    })
    .await;

    p.kill();
    let want = counts(&[("c", 3), ("d", 1)]);
    eventually("the killed instance leaves the counts", || async {
        (room_counts(a.addr).await == want && room_counts(b.addr).await == want).then_some(())
    })
    .await;
    let live = fleet(&[("gw-a", 2, 1), ("gw-b", 2, 2)]);
    eventually("the killed instance leaves the list", || async {
        (instances(b.addr).await == live).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_cleanly_stopped_instance_leaves_at_once_without_waiting_for_the_ttl() {
    let redis = RedisServer::start().unwrap();
    // A TTL far beyond the test: only leaving can remove b.
    let long = |s: &mut Settings| s.heartbeat_ttl_ms = 600_000;
    let a = start(&redis, "gw-a", long).await;
    let b = start(&redis, "gw-b", long).await;
    let _a = a.join("c").await;
    let mut closing = Vec::new();
    for _ in 0..2 {
        let mut c = b.join("c").await;
        closing.push(tokio::spawn(async move { c.expect_close().await }));
    }
    eventually("a sees b", || async {
        (room_counts(a.addr).await == counts(&[("c", 3)])).then_some(())
    })
    .await;
    assert_eq!(instances(a.addr).await.len(), 2);

    b.stop().await.unwrap();
    for c in closing {
        assert_eq!(c.await.unwrap().0, 1001);
    }
    // Checked once, right away: the stop itself removed b.
    assert_eq!(instances(a.addr).await, fleet(&[("gw-a", 1, 1)]));
    eventually("b's viewers leave a's counts", || async {
        (room_counts(a.addr).await == counts(&[("c", 1)])).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_gateway_starts_without_redis_and_serves_once_it_appears() {
    let mut redis = RedisServer::start().unwrap();
    redis.stop();
    let a = TestGateway::with(node(&redis, "gw-a")).await;
    let (status, body) = readyz(a.addr).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("redis unreachable"), "{body}");

    // Viewers get in all the same, with no history, and posts are refused.
    let mut v = Tracked::new(a.join("r").await);
    assert!(v.c.hello.recent.is_empty());
    assert_eq!(v.post("too early").await, Err(RejectCode::Unavailable));
    v.ping().await;

    redis.restart().unwrap();
    until_ready(a.addr).await;
    let id = v.post("now").await.unwrap();
    v.until_seen(1).await;
    assert_eq!(v.ids(), [id]);
    assert_eq!(v.seen[0].text, "now");
    let late = a.join("r").await;
    let recent: Vec<&str> = late.hello.recent.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(recent, ["now"]);
}

#[tokio::test]
async fn a_redis_restart_rejects_posts_meanwhile_and_delivery_resumes_without_duplicates() {
    let mut redis = RedisServer::start().unwrap();
    let a = start(&redis, "gw-a", |_| {}).await;
    let b = start(&redis, "gw-b", |_| {}).await;
    let mut pa = Tracked::new(a.join("s").await);
    let mut ma = Tracked::new(Client::connect(&a.url("s"), Some(SUBPROTOCOL_MSGPACK)).await);
    let mut vb = Tracked::new(b.join("s").await);
    pa.post("before").await.unwrap();

    redis.stop();
    // Posting on: once the loss is seen, every post is refused.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match pa.post("during").await {
            Err(RejectCode::Unavailable) => break,
            Err(code) => panic!("rejected with {code:?}"),
            // Accepted before the loss was noticed: must be delivered too.
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "never refused"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for gw in [&a, &b] {
        eventually("/readyz says not ready", || async {
            let (status, body) = readyz(gw.addr).await;
            (status == 503 && body.contains("redis")).then_some(())
        })
        .await;
    }
    for _ in 0..3 {
        assert_eq!(pa.post("down").await, Err(RejectCode::Unavailable));
        assert_eq!(vb.post("down").await, Err(RejectCode::Unavailable));
    }
    // The sockets stay open through the outage.
    for v in [&mut pa, &mut ma, &mut vb] {
        v.ping().await;
    }

    redis.restart().unwrap();
    until_ready(a.addr).await;
    until_ready(b.addr).await;
    assert_eq!(redis.numsub(&channel("s")).unwrap(), 2, "resubscribed");
    pa.post_until_acked("after a").await;
    vb.post_until_acked("after b").await;

    let mut acked = pa.acked.clone();
    acked.extend(vb.acked.iter().cloned());
    for v in [&mut pa, &mut ma, &mut vb] {
        v.until_seen(acked.len()).await;
    }
    assert_same_stream(&[&pa, &ma, &vb], &acked);
    let texts: Vec<&str> = pa.seen.iter().map(|d| d.text.as_str()).collect();
    assert!(!texts.contains(&"down"), "{texts:?}");
    assert_eq!(texts.first(), Some(&"before"));
}

#[tokio::test]
async fn a_pubsub_connection_dropped_by_redis_is_replaced_and_delivery_resumes() {
    // A small pub/sub output buffer, so Redis can be made to drop
    // subscribers the way it drops ones that lag.
    let redis =
        RedisServer::start_with(&["--client-output-buffer-limit", "pubsub 64kb 0 0"]).unwrap();
    let a = start(&redis, "gw-a", |_| {}).await;
    let b = start(&redis, "gw-b", |_| {}).await;
    let mut pa = Tracked::new(a.join("k").await);
    let mut vb = Tracked::new(b.join("k").await);
    pa.post("k1").await.unwrap();

    // 1. Killed outright.
    let before = pubsub_clients(&redis);
    assert_eq!(before.len(), 2);
    let killed: i64 = redis
        .redis_cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .unwrap();
    assert_eq!(killed, 2);
    resubscribed(&redis, &before, "both instances subscribe again").await;
    until_ready(a.addr).await;
    until_ready(b.addr).await;
    pa.post_until_acked("k2").await;
    vb.post_until_acked("k3").await;

    // 2. Over the output buffer limit: one message far larger than it.
    let before = pubsub_clients(&redis);
    let junk = "x".repeat(256 * 1024);
    let _: i64 = redis.redis_cli(&["PUBLISH", &channel("k"), &junk]).unwrap();
    resubscribed(
        &redis,
        &before,
        "both instances reconnect after the overrun",
    )
    .await;
    until_ready(a.addr).await;
    until_ready(b.addr).await;
    pa.post_until_acked("k4").await;

    let mut acked = pa.acked.clone();
    acked.extend(vb.acked.iter().cloned());
    for v in [&mut pa, &mut vb] {
        v.until_seen(acked.len()).await;
    }
    assert_same_stream(&[&pa, &vb], &acked);
    let texts: Vec<&str> = vb.seen.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(texts.first(), Some(&"k1"));
    assert_eq!(texts.last(), Some(&"k4"));
}

#[tokio::test]
async fn a_late_viewer_gets_the_last_comments_of_the_fleet_in_order() {
    let redis = RedisServer::start().unwrap();
    let keep = |s: &mut Settings| s.history_len = 5;
    let a = start(&redis, "gw-a", keep).await;
    let b = start(&redis, "gw-b", keep).await;
    let mut pa = Tracked::new(a.join("h").await);
    let mut pb = Tracked::new(b.join("h").await);
    for i in 0..4 {
        pa.post(&format!("a{i}")).await.unwrap();
        pb.post(&format!("b{i}")).await.unwrap();
    }
    pa.until_seen(8).await;
    let last5: Vec<String> = pa.ids()[3..].to_vec();

    for late in [
        a.join("h").await,
        Client::connect(&b.url("h"), Some(SUBPROTOCOL_MSGPACK)).await,
    ] {
        let recent: Vec<String> = late.hello.recent.iter().map(|d| d.id.clone()).collect();
        assert_eq!(recent, last5);
    }
    let texts: Vec<&str> = pa.seen[3..].iter().map(|d| d.text.as_str()).collect();
    assert_eq!(texts, ["b1", "a2", "b2", "a3", "b3"]);
}

/// A bus of the test's own on `redis`, as another instance of the fleet
/// would have, ready to publish.
async fn side_bus(redis: &RedisServer) -> RedisBus {
    let bus = RedisBus::new(
        &redis.url(),
        RedisBusConfig::default(),
        BusMetrics::default(),
    )
    .unwrap();
    eventually("the side bus is ready", || async {
        (bus.readiness() == danmaku_bus::Readiness::Ready).then_some(())
    })
    .await;
    bus
}

#[tokio::test]
async fn a_recall_reaches_every_instance_after_its_comment_and_leaves_history() {
    let redis = RedisServer::start().unwrap();
    let a = start(&redis, "gw-a", |_| {}).await;
    let b = start(&redis, "gw-b", |_| {}).await;
    let mut pa = Tracked::new(a.join("r").await);
    let mut vb = Tracked::new(Client::connect(&b.url("r"), Some(SUBPROTOCOL_MSGPACK)).await);
    let keep = pa.post("keep").await.unwrap();
    let gone = pa.post("recalled").await.unwrap();
    let bus = side_bus(&redis).await;
    let room = RoomId::parse("r").unwrap();
    assert!(bus.remove_history(&room, &gone).await.unwrap());
    bus.publish(&room, RoomEvent::Delete { id: gone.clone() })
        .await
        .unwrap();
    for t in [&mut pa, &mut vb] {
        t.until(|t| !t.deleted.is_empty()).await;
        assert_eq!(t.deleted, std::slice::from_ref(&gone));
        // The recall came after the comment it removes.
        assert!(t.ids().contains(&gone));
    }
    // A late joiner never sees the recalled comment.
    let late = b.join("r").await;
    let recent: Vec<&str> = late.hello.recent.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(recent, [keep.as_str()]);
}

#[tokio::test]
async fn an_event_kind_from_a_newer_version_is_skipped_and_counted() {
    let redis = RedisServer::start().unwrap();
    let a = start(&redis, "gw-a", |_| {}).await;
    let mut pa = Tracked::new(a.join("u").await);
    pa.post("before").await.unwrap();
    pa.until_seen(1).await;

    // What a newer instance might publish: a v1 envelope of a kind this
    // version does not know.
    #[derive(serde::Serialize)]
    struct Future<'a> {
        v: u64,
        kind: &'a str,
        shiny: u32,
    }
    let payload = rmp_serde::to_vec_named(&Future {
        v: 1,
        kind: "future_thing",
        shiny: 7,
    })
    .unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let receivers: u64 = redis::cmd("PUBLISH")
        .arg(channel("u"))
        .arg(payload)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(receivers, 1);

    // Nothing reaches the viewer for it, and the stream goes on.
    pa.post("after").await.unwrap();
    pa.until_seen(2).await;
    let texts: Vec<&str> = pa.seen.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(texts, ["before", "after"]);
    let (_, metrics) = crate::support::http_get(a.addr, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("danmaku_bus_unknown_events_total") && l.ends_with(" 1")),
        "{metrics}"
    );
}
