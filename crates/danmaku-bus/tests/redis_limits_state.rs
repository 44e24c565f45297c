//! The Redis bus's limits and state against a real `redis-server` started
//! per test: GCRA bursts and their `retry_after`, all-or-nothing checks,
//! `Once` keys, one budget shared by two instances, limit keys that expire
//! on their own; state tables and capped logs, a write announced to another
//! instance that then sees it, `CONTROL_RESYNC` after Redis restarts, and
//! every one of these operations failing within `op_timeout` while Redis
//! is down.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use danmaku_bus::{
    BusConfig, BusError, BusMetrics, ControlMessage, ControlSubscription, Controller, Health,
    LimitCheck, LimitExceeded, LimitKind, Limiter, Readiness, RedisBus, RedisBusConfig, StateOp,
    StateSnapshot, StateStore, StateWrite, CONTROL_RESYNC,
};
use danmaku_testkit::RedisServer;

/// How long any single expectation may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

fn config() -> RedisBusConfig {
    RedisBusConfig {
        prefix: "t:".into(),
        bus: BusConfig {
            state_log_len: 3,
            op_timeout: Duration::from_secs(1),
            ..BusConfig::default()
        },
        ping_interval: Duration::from_millis(200),
        max_backoff: Duration::from_millis(200),
        ..RedisBusConfig::default()
    }
}

fn bus(redis: &RedisServer) -> RedisBus {
    RedisBus::new(&redis.url(), config(), BusMetrics::default()).unwrap()
}

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

async fn ready_bus(redis: &RedisServer) -> RedisBus {
    let bus = bus(redis);
    ready(&bus).await;
    bus
}

fn gcra(key: &str, period: Duration, burst: u32) -> LimitCheck {
    LimitCheck {
        key: key.into(),
        kind: LimitKind::Gcra { period, burst },
    }
}

fn once(key: &str, ttl: Duration) -> LimitCheck {
    LimitCheck {
        key: key.into(),
        kind: LimitKind::Once { ttl },
    }
}

/// The refusal of `checks`, failing the test if they passed.
async fn refusal(bus: &RedisBus, checks: &[LimitCheck]) -> LimitExceeded {
    bus.check_limits(checks.to_vec())
        .await
        .unwrap()
        .expect("refused")
}

async fn passes(bus: &RedisBus, checks: &[LimitCheck]) {
    assert_eq!(bus.check_limits(checks.to_vec()).await.unwrap(), None);
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn next_control(sub: &mut ControlSubscription) -> ControlMessage {
    tokio::time::timeout(PATIENCE, sub.recv())
        .await
        .expect("a control message in time")
        .expect("a control message")
}

fn put(table: &str, field: &str, value: &[u8]) -> StateOp {
    StateOp::Put {
        table: table.into(),
        field: field.into(),
        value: Bytes::copy_from_slice(value),
    }
}

fn sorted(mut snapshot: StateSnapshot) -> StateSnapshot {
    snapshot.sort();
    for (_, fields) in &mut snapshot {
        fields.sort();
    }
    snapshot
}

#[tokio::test]
async fn gcra_allows_the_burst_then_refuses_until_retry_after() {
    let redis = RedisServer::start().unwrap();
    let bus = ready_bus(&redis).await;
    let check = [gcra("user:alice", ms(1_000), 3)];
    for _ in 0..3 {
        passes(&bus, &check).await;
    }
    let refused = refusal(&bus, &check).await;
    assert_eq!(refused.index, 0);
    // The first event's slot comes back one period after it was charged.
    assert!(
        refused.retry_after > ms(700) && refused.retry_after <= ms(1_000),
        "{refused:?}"
    );
    tokio::time::sleep(refused.retry_after + ms(20)).await;
    passes(&bus, &check).await;
    let refused = refusal(&bus, &check).await;
    assert!(
        refused.retry_after > ms(900) && refused.retry_after <= ms(1_000),
        "one per period once the burst is spent: {refused:?}"
    );
}

#[tokio::test]
async fn a_refused_check_charges_none_of_the_others() {
    let redis = RedisServer::start().unwrap();
    let bus = ready_bus(&redis).await;
    let user = gcra("user:bob", Duration::from_secs(60), 1);
    let dup = once("dup:bob:hello", Duration::from_secs(60));
    passes(&bus, std::slice::from_ref(&dup)).await;
    for _ in 0..3 {
        let refused = refusal(&bus, &[user.clone(), dup.clone()]).await;
        assert_eq!(refused.index, 1);
    }
    let exists: i64 = redis.redis_cli(&["EXISTS", "t:limit:user:bob"]).unwrap();
    assert_eq!(exists, 0, "the passing check was not charged");
    passes(&bus, std::slice::from_ref(&user)).await;
    assert_eq!(refusal(&bus, &[user]).await.index, 0);
    // Two checks of one key in one call see each other.
    let twice = gcra("user:carol", Duration::from_secs(60), 1);
    let refused = refusal(&bus, &[twice.clone(), twice.clone()]).await;
    assert_eq!(refused.index, 1);
    passes(&bus, &[twice]).await;
}

#[tokio::test]
async fn once_passes_once_per_ttl_and_reports_what_is_left() {
    let redis = RedisServer::start().unwrap();
    let bus = ready_bus(&redis).await;
    let check = [once("dup:x", ms(600))];
    passes(&bus, &check).await;
    let refused = refusal(&bus, &check).await;
    assert_eq!(refused.index, 0);
    assert!(
        refused.retry_after > ms(400) && refused.retry_after <= ms(600),
        "{refused:?}"
    );
    tokio::time::sleep(refused.retry_after + ms(20)).await;
    passes(&bus, &check).await;
    assert!(refusal(&bus, &check).await.retry_after > ms(400));
}

#[tokio::test]
async fn two_instances_share_one_budget() {
    let redis = RedisServer::start().unwrap();
    let (a, b) = (ready_bus(&redis).await, ready_bus(&redis).await);
    let check = [gcra("user:dave", Duration::from_secs(60), 2)];
    passes(&a, &check).await;
    passes(&b, &check).await;
    assert_eq!(refusal(&a, &check).await.index, 0);
    assert_eq!(refusal(&b, &check).await.index, 0);
    let dup = [once("dup:dave", Duration::from_secs(60))];
    passes(&b, &dup).await;
    assert_eq!(refusal(&a, &dup).await.index, 0);
}

#[tokio::test]
async fn limit_keys_expire_once_they_hold_no_information() {
    let redis = RedisServer::start().unwrap();
    let bus = ready_bus(&redis).await;
    passes(&bus, &[gcra("user:eve", ms(300), 2)]).await;
    passes(&bus, &[gcra("user:eve", ms(300), 2)]).await;
    passes(&bus, &[once("dup:eve", ms(400))]).await;
    // Two events charged: the TAT is two periods ahead, and so is the key's
    // expiry.
    let gcra_ttl: i64 = redis.redis_cli(&["PTTL", "t:limit:user:eve"]).unwrap();
    assert!((400..=600).contains(&gcra_ttl), "{gcra_ttl} ms");
    let once_ttl: i64 = redis.redis_cli(&["PTTL", "t:limit:dup:eve"]).unwrap();
    assert!((200..=400).contains(&once_ttl), "{once_ttl} ms");
    eventually("both keys are gone", || async {
        let left: i64 = redis
            .redis_cli(&["EXISTS", "t:limit:user:eve", "t:limit:dup:eve"])
            .unwrap();
        (left == 0).then_some(())
    })
    .await;
    // Gone means a fresh budget.
    passes(&bus, &[gcra("user:eve", ms(300), 2)]).await;
    passes(&bus, &[once("dup:eve", ms(400))]).await;
}

#[tokio::test]
async fn state_round_trips_and_logs_keep_the_newest_first() {
    let redis = RedisServer::start().unwrap();
    let bus = ready_bus(&redis).await;
    assert!(bus.load_state().await.unwrap().is_empty());
    assert!(bus.read_log("actions", 10).await.unwrap().is_empty());
    bus.write_state(StateWrite {
        ops: vec![
            put("mutes", "alice", b"\x00\xff"),
            put("mutes", "bob", b"2"),
            put("modes", "room1", b"slow"),
            // A table named like the set of tables does not collide with it.
            put("tables", "f", b"v"),
        ],
        log: (0..5u8)
            .map(|i| ("actions".to_owned(), Bytes::from(vec![i])))
            .collect(),
        announce: None,
    })
    .await
    .unwrap();
    bus.write_state(StateWrite {
        ops: vec![
            StateOp::Delete {
                table: "mutes".into(),
                field: "alice".into(),
            },
            StateOp::Delete {
                table: "tables".into(),
                field: "f".into(),
            },
        ],
        log: vec![("actions".into(), Bytes::from_static(b"\x05"))],
        announce: None,
    })
    .await
    .unwrap();
    assert_eq!(
        sorted(bus.load_state().await.unwrap()),
        [
            (
                "modes".to_owned(),
                vec![("room1".to_owned(), Bytes::from_static(b"slow"))]
            ),
            (
                "mutes".to_owned(),
                vec![("bob".to_owned(), Bytes::from_static(b"2"))]
            ),
        ],
        "emptied tables are left out"
    );
    assert_eq!(
        bus.read_log("actions", 10).await.unwrap(),
        [vec![5u8], vec![4], vec![3]]
    );
    assert_eq!(bus.read_log("actions", 1).await.unwrap(), [vec![5u8]]);
    assert!(bus.read_log("actions", 0).await.unwrap().is_empty());
    let len: i64 = redis.redis_cli(&["LLEN", "t:log:actions"]).unwrap();
    assert_eq!(len, 3, "capped at state_log_len");
    let kind: String = redis.redis_cli(&["TYPE", "t:state:mutes"]).unwrap();
    assert_eq!(kind, "hash");
    let ttl: i64 = redis.redis_cli(&["PTTL", "t:state:mutes"]).unwrap();
    assert_eq!(ttl, -1, "state never expires");
}

#[tokio::test]
async fn a_state_write_is_announced_to_another_instance_which_then_sees_it() {
    let redis = RedisServer::start().unwrap();
    let (a, b) = (ready_bus(&redis).await, ready_bus(&redis).await);
    let mut cb = b.subscribe_control();
    let mut ca = a.subscribe_control();
    for round in 0..5u8 {
        let announce = ControlMessage {
            origin: "gw-a".into(),
            kind: "moderation.changed".into(),
            body: Bytes::from(vec![round, 0, 255]),
        };
        a.write_state(StateWrite {
            ops: vec![put("mutes", &format!("user{round}"), &[round])],
            log: vec![("actions".into(), Bytes::from(vec![round]))],
            announce: Some(announce.clone()),
        })
        .await
        .unwrap();
        assert_eq!(next_control(&mut cb).await, announce);
        // Loaded as soon as the announcement arrives, the change is there.
        let state = b.load_state().await.unwrap();
        let mutes = &state.iter().find(|(t, _)| t == "mutes").unwrap().1;
        assert_eq!(mutes.len(), usize::from(round) + 1);
        assert!(mutes.contains(&(format!("user{round}"), Bytes::from(vec![round]))));
        assert_eq!(b.read_log("actions", 1).await.unwrap(), [vec![round]]);
        assert_eq!(next_control(&mut ca).await, announce, "the writer too");
    }
}

#[tokio::test]
async fn control_subscribers_are_told_to_resync_after_redis_restarts() {
    let mut redis = RedisServer::start().unwrap();
    let bus = ready_bus(&redis).await;
    passes(&bus, &[gcra("user:f", Duration::from_secs(60), 1)]).await;
    assert!(bus.load_state().await.unwrap().is_empty());
    let mut control = bus.subscribe_control();
    redis.restart().unwrap();
    let msg = next_control(&mut control).await;
    assert_eq!(
        msg,
        ControlMessage {
            origin: String::new(),
            kind: CONTROL_RESYNC.into(),
            body: Bytes::new(),
        }
    );
    // Once the command connection is replaced too, the scripts are loaded
    // again into the new Redis (NOSCRIPT), whose limit state is empty.
    let check = vec![gcra("user:f", Duration::from_secs(60), 1)];
    let outcome = eventually("limits are checked again", || async {
        bus.check_limits(check.clone()).await.ok()
    })
    .await;
    assert_eq!(outcome, None, "a fresh budget");
    assert!(bus.load_state().await.unwrap().is_empty());
    assert_eq!(control.try_recv().unwrap(), None, "one resync");
}

#[tokio::test]
async fn limits_and_state_fail_within_op_timeout_while_redis_is_down() {
    let mut redis = RedisServer::start().unwrap();
    let bus = ready_bus(&redis).await;
    redis.stop();
    eventually("the bus notices", || async {
        (bus.readiness() != Readiness::Ready).then_some(())
    })
    .await;
    let limit = tokio::time::Instant::now();
    let outcome = bus
        .check_limits(vec![gcra("user:g", Duration::from_secs(1), 1)])
        .await;
    assert!(
        matches!(outcome, Err(BusError::Unavailable(_))),
        "{outcome:?}"
    );
    let write = bus
        .write_state(StateWrite {
            ops: vec![put("t", "f", b"v")],
            ..StateWrite::default()
        })
        .await;
    assert!(matches!(write, Err(BusError::Unavailable(_))), "{write:?}");
    let load = bus.load_state().await;
    assert!(matches!(load, Err(BusError::Unavailable(_))), "{load:?}");
    let log = bus.read_log("actions", 5).await;
    assert!(matches!(log, Err(BusError::Unavailable(_))), "{log:?}");
    assert!(limit.elapsed() < 4 * config().bus.op_timeout + ms(200));
}
