//! The embedded bus: one process, no network. Each room is a tokio broadcast
//! channel created on first subscription; history is a capped deque per
//! room; control messages go through one in-process broadcast. Nothing here
//! waits, so every future it returns is ready at once, well within
//! [`BusConfig::op_timeout`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

use danmaku_proto::{Danmaku, RoomId};
use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::{
    now_ms, BoxFuture, Broker, BusConfig, BusError, BusMetrics, ControlMessage,
    ControlSubscription, Controller, Health, InstanceReport, InstanceStatus, PresenceManager,
    Readiness, RoomEvent, Subscription,
};

/// Control messages buffered per control subscriber.
const CONTROL_BUFFER: usize = 256;

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
    /// Live room channels. A `std`-style mutex is fine: publishes and
    /// subscriptions are short and never await while holding it.
    channels: Mutex<HashMap<String, Channel>>,
    /// Recent comments per room, capped by count and age.
    history: Mutex<HashMap<String, VecDeque<Arc<Danmaku>>>>,
    /// The last heartbeat of the single instance.
    report: Mutex<Option<InstanceStatus>>,
    control: broadcast::Sender<ControlMessage>,
}

struct Channel {
    tx: broadcast::Sender<RoomEvent>,
    /// Live subscriptions; the channel is removed when it reaches zero.
    subscribers: usize,
}

/// Unsubscribes on drop.
struct Guard {
    inner: Weak<Inner>,
    room: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut channels = inner.channels.lock();
        if let Some(ch) = channels.get_mut(&self.room) {
            ch.subscribers -= 1;
            if ch.subscribers == 0 {
                channels.remove(&self.room);
                inner.metrics.subscribed_rooms.dec();
            }
        }
    }
}

impl EmbeddedBus {
    /// A new, empty bus.
    pub fn new(config: BusConfig, metrics: BusMetrics) -> EmbeddedBus {
        EmbeddedBus {
            inner: Arc::new(Inner {
                config,
                metrics,
                channels: Mutex::new(HashMap::new()),
                history: Mutex::new(HashMap::new()),
                report: Mutex::new(None),
                control: broadcast::channel(CONTROL_BUFFER).0,
            }),
        }
    }

    fn remember(&self, room: &RoomId, comment: &Arc<Danmaku>) {
        let cfg = &self.inner.config;
        if cfg.history_len == 0 {
            return;
        }
        let mut history = self.inner.history.lock();
        let deque = history.entry(room.as_str().to_owned()).or_default();
        if deque.len() >= cfg.history_len {
            deque.pop_front();
        }
        deque.push_back(comment.clone());
        // Forget rooms whose newest comment has aged out, so a long-running
        // process does not keep every room it ever saw.
        if history.len() > 1024 && history.len().is_power_of_two() {
            let oldest = now_ms().saturating_sub(cfg.history_max_age.as_millis() as u64);
            history.retain(|_, d| d.back().is_some_and(|c| c.ts >= oldest));
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
        if let Some(ch) = self.inner.channels.lock().get(room.as_str()) {
            // An error only means nobody listens any more: nothing to deliver.
            let _ = ch.tx.send(event);
        }
        ready(Ok(()))
    }

    fn subscribe(&self, room: &RoomId) -> Subscription {
        let mut channels = self.inner.channels.lock();
        let ch = channels.entry(room.as_str().to_owned()).or_insert_with(|| {
            self.inner.metrics.subscribed_rooms.inc();
            Channel {
                tx: broadcast::channel(self.inner.config.room_buffer.max(1)).0,
                subscribers: 0,
            }
        });
        ch.subscribers += 1;
        let guard = Guard {
            inner: Arc::downgrade(&self.inner),
            room: room.as_str().to_owned(),
        };
        Subscription::new(ch.tx.subscribe(), Box::new(guard))
    }

    fn recent(&self, room: &RoomId) -> BoxFuture<'_, Result<Vec<Danmaku>, BusError>> {
        let max_age = self.inner.config.history_max_age;
        let oldest = now_ms().saturating_sub(max_age.as_millis() as u64);
        let items = self
            .inner
            .history
            .lock()
            .get(room.as_str())
            .map(|d| {
                d.iter()
                    .filter(|c| c.ts >= oldest)
                    .map(|c| (**c).clone())
                    .collect()
            })
            .unwrap_or_default();
        ready(Ok(items))
    }

    fn remove_history(&self, room: &RoomId, id: &str) -> BoxFuture<'_, Result<bool, BusError>> {
        let mut history = self.inner.history.lock();
        let removed = history.get_mut(room.as_str()).is_some_and(|deque| {
            let before = deque.len();
            deque.retain(|c| c.id != id);
            deque.len() != before
        });
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
            room_buffer: 2,
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
