//! The embedded bus: one process, no network. Each room is a [`Fanout`] to
//! its subscriptions' queues (see `subscription.rs`), created on first
//! subscription; control messages go through one in-process broadcast.
//! Nothing here waits, so every future it returns is ready at once, well
//! within [`BusConfig::op_timeout`].
//!
//! History is a capped deque per room (by count, `history_len`, and by age,
//! `history_max_age`), and all rooms' history together is bounded by
//! [`BusConfig::history_max_bytes`], whatever the number of rooms: each
//! comment is counted approximately (its text and fields, plus slot and
//! `Arc` overhead), each room with a fixed overhead, and while the total is
//! over the budget the least recently written room loses its whole history
//! (counted in `danmaku_bus_history_evicted_rooms_total`). A room that alone
//! exceeds the budget keeps only its newest comments that fit. Rooms whose
//! last write is older than `history_max_age` are dropped on the way, so an
//! abandoned room costs nothing once its comments could no longer be shown.
//!
//! Limits (`embedded/limits.rs`) are a map on the monotonic clock whose
//! idle keys are swept; state (`embedded/state.rs`) is kept in memory and,
//! with a [`BusConfig::state_dir`], in one file written atomically. Its
//! announcements go to the local control subscribers, like
//! [`Controller::publish_control`].

mod limits;
mod state;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Weak};

use danmaku_proto::{Danmaku, RoomId};
use parking_lot::Mutex;
use tokio::sync::broadcast;

use self::limits::Limits;
use self::state::Store;
use crate::deadline::bounded;
use crate::subscription::Fanout;
use crate::{
    now_ms, BoxFuture, Broker, BusConfig, BusError, BusMetrics, ControlMessage,
    ControlSubscription, Controller, Health, InstanceReport, InstanceStatus, LimitCheck,
    LimitExceeded, Limiter, PresenceManager, Readiness, RoomEvent, StateSnapshot, StateStore,
    StateWrite, Subscription,
};

/// Control messages buffered per control subscriber.
const CONTROL_BUFFER: usize = 256;

/// What a room's history costs besides its comments: the map entry, the
/// deque and the recency index entry (plus the room name, counted apart).
const ROOM_OVERHEAD: usize = 160;

/// The in-process bus: the default when no Redis is configured.
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBus").finish_non_exhaustive()
    }
}

struct Inner {
    config: BusConfig,
    metrics: BusMetrics,
    /// Live rooms, each fanning out to its subscriptions. A blocking mutex
    /// is fine: publishes and subscriptions are short and never await
    /// while holding it.
    channels: Mutex<HashMap<String, Fanout>>,
    history: Mutex<History>,
    /// The last heartbeat of the single instance.
    report: Mutex<Option<InstanceStatus>>,
    control: broadcast::Sender<ControlMessage>,
    /// Limit state (`Limiter`).
    limits: Limits,
    /// Tables and logs (`StateStore`).
    state: Store,
}

/// Every room's recent comments, within a global byte budget.
#[derive(Default)]
struct History {
    rooms: HashMap<String, RoomHistory>,
    /// Rooms by their last write, oldest first: who is evicted next.
    by_write: BTreeMap<u64, String>,
    /// Counter of writes, the key of `by_write`.
    writes: u64,
    /// The approximate bytes all rooms' history takes.
    bytes: usize,
}

struct RoomHistory {
    comments: VecDeque<Arc<Danmaku>>,
    /// This room's share of `History::bytes`.
    bytes: usize,
    /// Its key in `History::by_write`.
    written: u64,
    /// When it was last written, ms since the epoch.
    written_ms: u64,
}

/// Approximate memory one history entry keeps alive: the comment, its
/// heap fields, the `Arc` counts and the deque slot.
fn comment_bytes(c: &Danmaku) -> usize {
    std::mem::size_of::<Danmaku>()
        + 2 * std::mem::size_of::<usize>()
        + std::mem::size_of::<Arc<Danmaku>>()
        + c.id.len()
        + c.room.len()
        + c.user.len()
        + c.name.as_ref().map_or(0, |n| n.len())
        + c.text.len()
        + c.color.len()
}

impl History {
    /// Appends a comment to a room, then restores every bound.
    fn push(&mut self, room: &str, comment: &Arc<Danmaku>, config: &BusConfig) -> usize {
        let now = now_ms();
        self.writes += 1;
        let written = self.writes;
        match self.rooms.get(room) {
            Some(entry) => {
                self.by_write.remove(&entry.written);
            }
            None => {
                let overhead = ROOM_OVERHEAD + room.len();
                self.bytes += overhead;
                self.rooms.insert(
                    room.to_owned(),
                    RoomHistory {
                        comments: VecDeque::new(),
                        bytes: overhead,
                        written,
                        written_ms: now,
                    },
                );
            }
        }
        let Some(entry) = self.rooms.get_mut(room) else {
            return 0;
        };
        entry.written = written;
        entry.written_ms = now;
        let size = comment_bytes(comment);
        entry.comments.push_back(comment.clone());
        entry.bytes += size;
        self.bytes += size;
        while entry.comments.len() > config.history_len {
            if let Some(old) = entry.comments.pop_front() {
                let size = comment_bytes(&old);
                entry.bytes -= size;
                self.bytes -= size;
            }
        }
        self.by_write.insert(written, room.to_owned());
        self.enforce(room, config)
    }

    /// Drops aged-out rooms, then the least recently written ones while
    /// over the budget; the room just written (`keep`) only loses its
    /// oldest comments, and only if it alone is over. Returns how many
    /// rooms were evicted for the budget.
    fn enforce(&mut self, keep: &str, config: &BusConfig) -> usize {
        let oldest_ms = now_ms().saturating_sub(config.history_max_age.as_millis() as u64);
        while let Some((_, room)) = self.by_write.first_key_value() {
            if room == keep {
                break;
            }
            let aged = self
                .rooms
                .get(room)
                .is_none_or(|r| r.written_ms < oldest_ms);
            if !aged {
                break;
            }
            let room = room.clone();
            self.drop_room(&room);
        }
        let mut evicted = 0;
        while self.bytes > config.history_max_bytes {
            match self.by_write.first_key_value() {
                Some((_, room)) if room != keep => {
                    let room = room.clone();
                    self.drop_room(&room);
                    evicted += 1;
                }
                _ => break,
            }
        }
        if self.bytes > config.history_max_bytes {
            if let Some(entry) = self.rooms.get_mut(keep) {
                while self.bytes > config.history_max_bytes && entry.comments.len() > 1 {
                    if let Some(old) = entry.comments.pop_front() {
                        let size = comment_bytes(&old);
                        entry.bytes -= size;
                        self.bytes -= size;
                    }
                }
            }
        }
        evicted
    }

    fn drop_room(&mut self, room: &str) {
        if let Some(entry) = self.rooms.remove(room) {
            self.by_write.remove(&entry.written);
            self.bytes -= entry.bytes;
        }
    }

    fn remove(&mut self, room: &str, id: &str) -> bool {
        let Some(entry) = self.rooms.get_mut(room) else {
            return false;
        };
        let before = entry.comments.len();
        let mut freed = 0;
        entry.comments.retain(|c| {
            let gone = c.id == id;
            if gone {
                freed += comment_bytes(c);
            }
            !gone
        });
        entry.bytes -= freed;
        self.bytes -= freed;
        entry.comments.len() != before
    }
}

/// Unsubscribes on drop.
struct Guard {
    inner: Weak<Inner>,
    room: String,
    id: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut channels = inner.channels.lock();
        if let Some(fanout) = channels.get_mut(&self.room) {
            fanout.remove(self.id);
            if fanout.len() == 0 {
                channels.remove(&self.room);
                inner.metrics.subscribed_rooms.dec();
            }
        }
    }
}

impl EmbeddedBus {
    /// A new bus, with the state saved in [`BusConfig::state_dir`] if there
    /// is some. Never fails: a state file that cannot be read is logged,
    /// set aside (renamed `state.msgpack.corrupt-{ms}`, so it is not
    /// overwritten) and the state starts empty. [`EmbeddedBus::open`]
    /// refuses such a file instead.
    pub fn new(config: BusConfig, metrics: BusMetrics) -> EmbeddedBus {
        let state = Store::open_or_empty(config.state_dir.clone());
        EmbeddedBus::with_state(config, metrics, state)
    }

    /// Like [`EmbeddedBus::new`], but a state file in
    /// [`BusConfig::state_dir`] that cannot be read is an error
    /// ([`BusError::Config`]) and left untouched, for a caller that would
    /// rather not start than start without its saved state.
    pub fn open(config: BusConfig, metrics: BusMetrics) -> Result<EmbeddedBus, BusError> {
        let state = Store::open(config.state_dir.clone())
            .map_err(|e| BusError::Config(format!("saved state: {e}")))?;
        Ok(EmbeddedBus::with_state(config, metrics, state))
    }

    fn with_state(config: BusConfig, metrics: BusMetrics, state: Store) -> EmbeddedBus {
        EmbeddedBus {
            inner: Arc::new(Inner {
                config,
                metrics,
                channels: Mutex::new(HashMap::new()),
                history: Mutex::new(History::default()),
                report: Mutex::new(None),
                control: broadcast::channel(CONTROL_BUFFER).0,
                limits: Limits::new(),
                state,
            }),
        }
    }

    fn remember(&self, room: &RoomId, comment: &Arc<Danmaku>) {
        let cfg = &self.inner.config;
        if cfg.history_len == 0 {
            return;
        }
        let evicted = self.inner.history.lock().push(room.as_str(), comment, cfg);
        if evicted > 0 {
            self.inner
                .metrics
                .history_evicted_rooms
                .inc_by(evicted as u64);
        }
    }
}

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

impl Broker for EmbeddedBus {
    fn publish(&self, room: &RoomId, event: RoomEvent) -> BoxFuture<'_, Result<(), BusError>> {
        if let RoomEvent::Comment(comment) = &event {
            self.remember(room, comment);
        }
        if let Some(fanout) = self.inner.channels.lock().get(room.as_str()) {
            fanout.send(event);
        }
        ready(Ok(()))
    }

    fn subscribe(&self, room: &RoomId) -> Subscription {
        let mut channels = self.inner.channels.lock();
        let fanout = channels.entry(room.as_str().to_owned()).or_insert_with(|| {
            self.inner.metrics.subscribed_rooms.inc();
            Fanout::default()
        });
        let (id, queue) = fanout.add(
            self.inner.config.room_queue_max,
            self.inner.metrics.room_events_shed.clone(),
        );
        let guard = Guard {
            inner: Arc::downgrade(&self.inner),
            room: room.as_str().to_owned(),
            id,
        };
        Subscription::new(queue, Box::new(guard))
    }

    fn recent(&self, room: &RoomId) -> BoxFuture<'_, Result<Vec<Danmaku>, BusError>> {
        let max_age = self.inner.config.history_max_age;
        let oldest = now_ms().saturating_sub(max_age.as_millis() as u64);
        let items = self
            .inner
            .history
            .lock()
            .rooms
            .get(room.as_str())
            .map(|r| {
                r.comments
                    .iter()
                    .filter(|c| c.ts >= oldest)
                    .map(|c| (**c).clone())
                    .collect()
            })
            .unwrap_or_default();
        ready(Ok(items))
    }

    fn remove_history(&self, room: &RoomId, id: &str) -> BoxFuture<'_, Result<bool, BusError>> {
        let removed = self.inner.history.lock().remove(room.as_str(), id);
        ready(Ok(removed))
    }
}

impl PresenceManager for EmbeddedBus {
    fn report(&self, report: InstanceReport) -> BoxFuture<'_, Result<(), BusError>> {
        *self.inner.report.lock() = Some(InstanceStatus {
            report,
            last_heartbeat_ms: now_ms(),
        });
        ready(Ok(()))
    }

    fn cluster_rooms(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, BusError>> {
        let rooms = self
            .inner
            .report
            .lock()
            .as_ref()
            .map(|s| s.report.rooms.clone())
            .unwrap_or_default();
        ready(Ok(rooms))
    }

    fn instances(&self) -> BoxFuture<'_, Result<Vec<InstanceStatus>, BusError>> {
        let list = self.inner.report.lock().iter().cloned().collect();
        ready(Ok(list))
    }

    fn leave(&self, _instance_id: &str) -> BoxFuture<'_, ()> {
        *self.inner.report.lock() = None;
        ready(())
    }
}

impl Controller for EmbeddedBus {
    fn publish_control(&self, msg: ControlMessage) -> BoxFuture<'_, Result<(), BusError>> {
        // An error only means nobody listens: nothing to deliver.
        let _ = self.inner.control.send(msg);
        ready(Ok(()))
    }

    fn subscribe_control(&self) -> ControlSubscription {
        ControlSubscription::new(self.inner.control.subscribe())
    }
}

impl Health for EmbeddedBus {
    fn readiness(&self) -> Readiness {
        Readiness::Ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecvError;
    use danmaku_testkit::comment;

    fn bus(config: BusConfig) -> EmbeddedBus {
        EmbeddedBus::new(config, BusMetrics::default())
    }

    fn id_of(event: RoomEvent) -> String {
        match event {
            RoomEvent::Comment(c) => c.id.clone(),
            other => panic!("not a comment: {other:?}"),
        }
    }

    #[tokio::test]
    async fn delivers_in_order_only_to_the_room_and_keeps_capped_history() {
        let bus = bus(BusConfig {
            history_len: 3,
            ..BusConfig::default()
        });
        let a = RoomId::parse("a").unwrap();
        let b = RoomId::parse("b").unwrap();
        let mut sa = bus.subscribe(&a);
        let mut sb = bus.subscribe(&b);
        for i in 0..5 {
            let c = comment("a", &format!("id{i}"));
            bus.publish(&a, RoomEvent::Comment(c)).await.unwrap();
        }
        for i in 0..5 {
            assert_eq!(id_of(sa.recv().await.unwrap()), format!("id{i}"));
        }
        assert_eq!(sb.try_recv().unwrap(), None);
        let recent: Vec<_> = bus
            .recent(&a)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(recent, ["id2", "id3", "id4"]);
        assert!(bus.recent(&b).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_delete_is_delivered_and_remove_history_hides_the_comment_from_late_joiners() {
        let bus = bus(BusConfig::default());
        let a = RoomId::parse("a").unwrap();
        let mut sub = bus.subscribe(&a);
        for id in ["c1", "c2", "c3"] {
            bus.publish(&a, RoomEvent::Comment(comment("a", id)))
                .await
                .unwrap();
        }
        assert!(bus.remove_history(&a, "c2").await.unwrap());
        assert!(!bus.remove_history(&a, "c2").await.unwrap(), "already gone");
        assert!(!bus.remove_history(&a, "nope").await.unwrap());
        let b = RoomId::parse("b").unwrap();
        assert!(!bus.remove_history(&b, "c1").await.unwrap());
        let ids: Vec<_> = bus
            .recent(&a)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(ids, ["c1", "c3"]);
        let delete = RoomEvent::Delete { id: "c2".into() };
        bus.publish(&a, delete.clone()).await.unwrap();
        for _ in 0..3 {
            sub.recv().await.unwrap();
        }
        assert_eq!(sub.recv().await.unwrap(), delete);
        assert_eq!(
            bus.recent(&a).await.unwrap().len(),
            2,
            "delete is not history"
        );
    }

    #[tokio::test]
    async fn dropping_the_last_subscription_removes_the_channel() {
        let metrics = BusMetrics::default();
        let bus = EmbeddedBus::new(BusConfig::default(), metrics.clone());
        let a = RoomId::parse("a").unwrap();
        let s1 = bus.subscribe(&a);
        let s2 = bus.subscribe(&a);
        assert_eq!(metrics.subscribed_rooms.get(), 1);
        drop(s1);
        assert_eq!(bus.inner.channels.lock().len(), 1);
        drop(s2);
        assert!(bus.inner.channels.lock().is_empty());
        assert_eq!(metrics.subscribed_rooms.get(), 0);
    }

    #[tokio::test]
    async fn lagging_subscription_reports_the_skip() {
        let bus = bus(BusConfig {
            room_queue_max: 2,
            ..BusConfig::default()
        });
        let a = RoomId::parse("a").unwrap();
        let mut s = bus.subscribe(&a);
        for i in 0..5 {
            let c = comment("a", &format!("id{i}"));
            bus.publish(&a, RoomEvent::Comment(c)).await.unwrap();
        }
        assert_eq!(s.recv().await, Err(RecvError::Lagged(3)));
        assert_eq!(id_of(s.recv().await.unwrap()), "id3");
    }

    #[tokio::test]
    async fn a_burst_nobody_reads_yet_is_received_whole_in_order() {
        let metrics = BusMetrics::default();
        let bus = EmbeddedBus::new(BusConfig::default(), metrics.clone());
        let a = RoomId::parse("a").unwrap();
        let mut reader = bus.subscribe(&a);
        let mut other = bus.subscribe(&a);
        for i in 0..20_000 {
            let c = comment("a", &format!("id{i}"));
            bus.publish(&a, RoomEvent::Comment(c)).await.unwrap();
        }
        for sub in [&mut reader, &mut other] {
            for i in 0..20_000 {
                assert_eq!(id_of(sub.recv().await.unwrap()), format!("id{i}"));
            }
            assert_eq!(sub.try_recv().unwrap(), None);
        }
        assert_eq!(metrics.room_events_shed.get(), 0);
    }

    #[tokio::test]
    async fn beyond_room_queue_max_the_oldest_are_shed_and_counted() {
        let metrics = BusMetrics::default();
        let config = BusConfig {
            room_queue_max: 100,
            ..BusConfig::default()
        };
        let bus = EmbeddedBus::new(config, metrics.clone());
        let a = RoomId::parse("a").unwrap();
        let mut s = bus.subscribe(&a);
        for i in 0..250 {
            let c = comment("a", &format!("id{i}"));
            bus.publish(&a, RoomEvent::Comment(c)).await.unwrap();
        }
        assert_eq!(s.recv().await, Err(RecvError::Lagged(150)));
        for i in 150..250 {
            assert_eq!(id_of(s.recv().await.unwrap()), format!("id{i}"));
        }
        assert_eq!(metrics.room_events_shed.get(), 150);
    }

    #[tokio::test]
    async fn history_memory_stays_within_the_budget_evicting_the_least_recently_written_rooms() {
        let budget = 64 * 1024;
        let metrics = BusMetrics::default();
        let config = BusConfig {
            history_len: 10,
            history_max_bytes: budget,
            ..BusConfig::default()
        };
        let bus = EmbeddedBus::new(config, metrics.clone());
        let rooms: Vec<RoomId> = (0..1_000)
            .map(|i| RoomId::parse(&format!("r{i}")).unwrap())
            .collect();
        for (i, room) in rooms.iter().enumerate() {
            for j in 0..10 {
                let c = comment(room.as_str(), &format!("r{i}-c{j}"));
                bus.publish(room, RoomEvent::Comment(c)).await.unwrap();
            }
            let held = bus.inner.history.lock().bytes;
            assert!(held <= budget, "{held} bytes held after room {i}");
        }
        // The accounting is honest: what is held is what is counted.
        let kept = {
            let history = bus.inner.history.lock();
            let counted: usize = history
                .rooms
                .iter()
                .map(|(room, r)| {
                    ROOM_OVERHEAD
                        + room.len()
                        + r.comments.iter().map(|c| comment_bytes(c)).sum::<usize>()
                })
                .sum();
            assert_eq!(counted, history.bytes);
            assert_eq!(history.by_write.len(), history.rooms.len());
            history.rooms.len()
        };
        assert!((10..1_000).contains(&kept), "{kept} rooms kept");
        // The most recently written rooms keep all their history...
        for room in &rooms[1_000 - 10..] {
            assert_eq!(bus.recent(room).await.unwrap().len(), 10, "{room:?}");
        }
        // ...the least recently written ones were evicted whole.
        for room in &rooms[..1_000 - kept] {
            assert!(bus.recent(room).await.unwrap().is_empty(), "{room:?}");
        }
        assert_eq!(metrics.history_evicted_rooms.get(), (1_000 - kept) as u64);
        // Writing an old room again makes it the newest: it is kept.
        let first = &rooms[0];
        bus.publish(first, RoomEvent::Comment(comment("r0", "again")))
            .await
            .unwrap();
        assert_eq!(bus.recent(first).await.unwrap().len(), 1);
        // Removing from history gives the bytes back.
        let before = bus.inner.history.lock().bytes;
        assert!(bus.remove_history(first, "again").await.unwrap());
        assert!(bus.inner.history.lock().bytes < before);
    }

    #[tokio::test]
    async fn a_room_alone_over_the_budget_keeps_its_newest_comments() {
        let bus = bus(BusConfig {
            history_len: 50,
            history_max_bytes: 2_000,
            ..BusConfig::default()
        });
        let a = RoomId::parse("a").unwrap();
        for i in 0..50 {
            let c = comment("a", &format!("id{i}"));
            bus.publish(&a, RoomEvent::Comment(c)).await.unwrap();
        }
        let recent = bus.recent(&a).await.unwrap();
        assert!(!recent.is_empty() && recent.len() < 50, "{}", recent.len());
        assert_eq!(recent.last().unwrap().id, "id49");
        assert!(bus.inner.history.lock().bytes <= 2_000);
    }

    #[tokio::test]
    async fn control_messages_reach_every_subscriber_the_sender_included() {
        let bus = bus(BusConfig::default());
        let mut first = bus.subscribe_control();
        let mut second = bus.subscribe_control();
        let msg = ControlMessage {
            origin: "gw-1".into(),
            kind: "mute".into(),
            body: bytes::Bytes::from_static(b"\x01\x02"),
        };
        bus.publish_control(msg.clone()).await.unwrap();
        assert_eq!(first.recv().await.unwrap(), msg);
        assert_eq!(second.recv().await.unwrap(), msg);
        assert_eq!(first.try_recv().unwrap(), None);
    }

    #[tokio::test]
    async fn presence_is_the_single_instance_last_report() {
        let bus = bus(BusConfig::default());
        assert!(bus.instances().await.unwrap().is_empty());
        let report = InstanceReport {
            id: "gw".into(),
            address: "gw:1".into(),
            started_ms: 1,
            rooms: vec![("a".into(), 2)],
            counters: crate::InstanceCounters {
                room_comments: vec![("a".into(), 7)],
                posts_accepted: 7,
                rejected: vec![("rate_limited".into(), 1)],
                frames_dropped: 3,
                slow_evictions: 1,
            },
        };
        bus.report(report.clone()).await.unwrap();
        assert_eq!(bus.cluster_rooms().await.unwrap(), [("a".to_string(), 2)]);
        let list = bus.instances().await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].report, report);
        bus.leave("gw").await;
        assert!(bus.instances().await.unwrap().is_empty());
    }
}

impl Limiter for EmbeddedBus {
    /// Decided at once, under one short lock.
    fn check_limits(
        &self,
        checks: Vec<LimitCheck>,
    ) -> BoxFuture<'_, Result<Option<LimitExceeded>, BusError>> {
        ready(Ok(self.inner.limits.check(&checks)))
    }
}

impl StateStore for EmbeddedBus {
    fn load_state(&self) -> BoxFuture<'_, Result<StateSnapshot, BusError>> {
        ready(Ok(self.inner.state.snapshot()))
    }

    /// Saves the file (with a `state_dir`) on a blocking thread, then
    /// makes the write current and announces it to the local control
    /// subscribers. The write runs in a task of its own, so it completes
    /// (or not) as a whole even if the caller gives up at `op_timeout`; a
    /// timed-out write's outcome is unknown, as with Redis.
    fn write_state(&self, write: StateWrite) -> BoxFuture<'_, Result<(), BusError>> {
        let inner = self.inner.clone();
        Box::pin(bounded(
            self.inner.config.op_timeout,
            "state write",
            async move {
                let task = tokio::spawn(async move {
                    let log_len = inner.config.state_log_len;
                    inner.state.write(write, log_len, &inner.control).await
                });
                task.await
                    .map_err(|e| BusError::Unavailable(format!("state write: {e}")))?
            },
        ))
    }

    fn read_log(&self, log: &str, n: usize) -> BoxFuture<'_, Result<Vec<bytes::Bytes>, BusError>> {
        ready(Ok(self.inner.state.read_log(log, n)))
    }
}

#[cfg(test)]
mod limit_and_state_tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use bytes::Bytes;

    use super::state::{STATE_FILE, TEMP_FILE};
    use super::*;
    use crate::{LimitKind, StateOp};

    /// A fresh scratch directory, removed on drop.
    struct ScratchDir(PathBuf);

    impl ScratchDir {
        fn new(name: &str) -> ScratchDir {
            let dir = std::env::temp_dir().join(format!(
                "danmaku-bus-{name}-{}-{}",
                std::process::id(),
                now_ms()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            ScratchDir(dir)
        }

        fn files(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn saving_to(dir: &ScratchDir, log_len: usize) -> BusConfig {
        BusConfig {
            state_dir: Some(dir.0.clone()),
            state_log_len: log_len,
            ..BusConfig::default()
        }
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
    async fn limits_are_checked_all_or_nothing_through_the_bus() {
        let bus = EmbeddedBus::new(BusConfig::default(), BusMetrics::default());
        let user = LimitCheck {
            key: "user:alice".into(),
            kind: LimitKind::Gcra {
                period: Duration::from_secs(60),
                burst: 2,
            },
        };
        let dup = LimitCheck {
            key: "dup:alice:hello".into(),
            kind: LimitKind::Once {
                ttl: Duration::from_secs(60),
            },
        };
        assert_eq!(
            bus.check_limits(vec![user.clone(), dup.clone()])
                .await
                .unwrap(),
            None
        );
        let refused = bus
            .check_limits(vec![user.clone(), dup.clone()])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(refused.index, 1);
        assert!(refused.retry_after <= Duration::from_secs(60));
        assert!(refused.retry_after > Duration::from_secs(59));
        // The refusal did not charge "user": one event of its burst is left.
        assert_eq!(bus.check_limits(vec![user.clone()]).await.unwrap(), None);
        let refused = bus.check_limits(vec![user]).await.unwrap().unwrap();
        assert_eq!(refused.index, 0);
        assert!(refused.retry_after > Duration::from_secs(59));
        assert!(refused.retry_after <= Duration::from_secs(60));
    }

    #[tokio::test]
    async fn state_round_trips_and_the_announcement_follows_the_write() {
        let bus = EmbeddedBus::new(
            BusConfig {
                state_log_len: 3,
                ..BusConfig::default()
            },
            BusMetrics::default(),
        );
        assert!(bus.load_state().await.unwrap().is_empty());
        let mut control = bus.subscribe_control();
        let announce = ControlMessage {
            origin: "gw".into(),
            kind: "moderation.changed".into(),
            body: Bytes::from_static(b"\x01"),
        };
        bus.write_state(StateWrite {
            ops: vec![
                put("mutes", "alice", b"\x00\xff"),
                put("mutes", "bob", b"2"),
                put("modes", "room1", b"slow"),
            ],
            log: (0..5u8)
                .map(|i| ("actions".to_owned(), Bytes::from(vec![i])))
                .collect(),
            announce: Some(announce.clone()),
        })
        .await
        .unwrap();
        assert_eq!(control.recv().await.unwrap(), announce);
        assert_eq!(
            sorted(bus.load_state().await.unwrap()),
            [
                (
                    "modes".to_owned(),
                    vec![("room1".to_owned(), Bytes::from_static(b"slow"))]
                ),
                (
                    "mutes".to_owned(),
                    vec![
                        ("alice".to_owned(), Bytes::from_static(b"\x00\xff")),
                        ("bob".to_owned(), Bytes::from_static(b"2")),
                    ]
                ),
            ]
        );
        assert_eq!(
            bus.read_log("actions", 10).await.unwrap(),
            [vec![4u8], vec![3], vec![2]]
        );
        assert_eq!(
            bus.read_log("actions", 2).await.unwrap(),
            [vec![4u8], vec![3]]
        );
        bus.write_state(StateWrite {
            ops: vec![StateOp::Delete {
                table: "mutes".into(),
                field: "alice".into(),
            }],
            ..StateWrite::default()
        })
        .await
        .unwrap();
        let state = sorted(bus.load_state().await.unwrap());
        assert_eq!(state[1].1, [("bob".to_owned(), Bytes::from_static(b"2"))]);
        assert_eq!(control.try_recv().unwrap(), None, "nothing announced");
    }

    #[tokio::test]
    async fn saved_state_survives_a_restart_and_no_temporary_file_is_left() {
        let dir = ScratchDir::new("restart");
        {
            let bus = EmbeddedBus::open(saving_to(&dir, 2), BusMetrics::default()).unwrap();
            for i in 0..3u8 {
                bus.write_state(StateWrite {
                    ops: vec![put("mutes", &format!("u{i}"), &[i, 0xff])],
                    log: vec![("actions".into(), Bytes::from(vec![i]))],
                    announce: None,
                })
                .await
                .unwrap();
                assert_eq!(dir.files(), [STATE_FILE], "only the state file");
            }
        }
        let bus = EmbeddedBus::open(saving_to(&dir, 2), BusMetrics::default()).unwrap();
        let state = sorted(bus.load_state().await.unwrap());
        assert_eq!(
            state,
            [(
                "mutes".to_owned(),
                (0..3u8)
                    .map(|i| (format!("u{i}"), Bytes::from(vec![i, 0xff])))
                    .collect::<Vec<_>>()
            )]
        );
        assert_eq!(
            bus.read_log("actions", 10).await.unwrap(),
            [vec![2u8], vec![1]]
        );
    }

    #[tokio::test]
    async fn a_leftover_temporary_file_is_removed_and_an_unreadable_one_set_aside() {
        let dir = ScratchDir::new("corrupt");
        std::fs::create_dir_all(&dir.0).unwrap();
        // A crash mid-write leaves the temporary file: ignored and removed.
        std::fs::write(dir.0.join(TEMP_FILE), b"half a fi").unwrap();
        let bus = EmbeddedBus::open(saving_to(&dir, 10), BusMetrics::default()).unwrap();
        assert!(bus.load_state().await.unwrap().is_empty());
        assert!(dir.files().is_empty(), "{:?}", dir.files());
        drop(bus);

        std::fs::write(dir.0.join(STATE_FILE), b"not msgpack").unwrap();
        let refused = EmbeddedBus::open(saving_to(&dir, 10), BusMetrics::default());
        assert!(matches!(refused, Err(BusError::Config(_))), "{refused:?}");
        assert_eq!(dir.files(), [STATE_FILE], "left untouched");

        let bus = EmbeddedBus::new(saving_to(&dir, 10), BusMetrics::default());
        assert!(bus.load_state().await.unwrap().is_empty());
        let files = dir.files();
        assert_eq!(files.len(), 1);
        assert!(files[0].starts_with("state.msgpack.corrupt-"), "{files:?}");
        bus.write_state(StateWrite {
            ops: vec![put("t", "f", b"v")],
            ..StateWrite::default()
        })
        .await
        .unwrap();
        assert_eq!(dir.files().len(), 2, "the bad file is kept");
    }

    #[tokio::test]
    async fn a_write_that_cannot_be_saved_changes_nothing() {
        let dir = ScratchDir::new("unsavable");
        // A file where the directory should be: nothing can be saved.
        std::fs::write(&dir.0, b"in the way").unwrap();
        let bus = EmbeddedBus::new(saving_to(&dir, 10), BusMetrics::default());
        let mut control = bus.subscribe_control();
        let out = bus
            .write_state(StateWrite {
                ops: vec![put("t", "f", b"v")],
                log: vec![("l".into(), Bytes::from_static(b"e"))],
                announce: Some(ControlMessage {
                    origin: "gw".into(),
                    kind: "k".into(),
                    body: Bytes::new(),
                }),
            })
            .await;
        assert!(matches!(out, Err(BusError::Unavailable(_))), "{out:?}");
        assert!(bus.load_state().await.unwrap().is_empty());
        assert!(bus.read_log("l", 10).await.unwrap().is_empty());
        assert_eq!(control.try_recv().unwrap(), None);
        let _ = std::fs::remove_file(&dir.0);
    }
}
