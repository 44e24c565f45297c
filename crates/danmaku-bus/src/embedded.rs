//! The embedded bus: one process, no network. Each room is a tokio broadcast
//! channel created on first subscription; history is a capped deque per room.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use danmaku_proto::{Danmaku, RoomId};
use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::{
    now_ms, BoxFuture, Bus, BusConfig, BusError, InstanceInfo, InstanceReport, Readiness,
    Subscription,
};

/// The in-process bus: the default when no Redis is configured.
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: BusConfig,
    /// Live room channels. A `std`-style mutex is fine: publishes and
    /// subscriptions are short and never await while holding it.
    channels: Mutex<HashMap<String, Channel>>,
    /// Recent comments per room, capped by count and age.
    history: Mutex<HashMap<String, VecDeque<Arc<Danmaku>>>>,
    /// The last heartbeat of the single instance.
    report: Mutex<Option<(InstanceReport, u64)>>,
}

struct Channel {
    tx: broadcast::Sender<Arc<Danmaku>>,
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
            }
        }
    }
}

impl EmbeddedBus {
    /// A new, empty bus.
    pub fn new(config: BusConfig) -> EmbeddedBus {
        EmbeddedBus {
            inner: Arc::new(Inner {
                config,
                channels: Mutex::new(HashMap::new()),
                history: Mutex::new(HashMap::new()),
                report: Mutex::new(None),
            }),
        }
    }

    fn remember(&self, comment: &Arc<Danmaku>) {
        let cfg = &self.inner.config;
        if cfg.history_len == 0 {
            return;
        }
        let mut history = self.inner.history.lock();
        let deque = history.entry(comment.room.clone()).or_default();
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

impl Bus for EmbeddedBus {
    fn publish(&self, comment: Arc<Danmaku>) -> BoxFuture<'_, Result<(), BusError>> {
        self.remember(&comment);
        if let Some(ch) = self.inner.channels.lock().get(&comment.room) {
            // An error only means nobody listens any more: nothing to deliver.
            let _ = ch.tx.send(comment);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn subscribe(&self, room: &RoomId) -> Subscription {
        let mut channels = self.inner.channels.lock();
        let ch = channels
            .entry(room.as_str().to_owned())
            .or_insert_with(|| Channel {
                tx: broadcast::channel(self.inner.config.room_buffer.max(1)).0,
                subscribers: 0,
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
        Box::pin(std::future::ready(Ok(items)))
    }

    fn report(&self, report: InstanceReport) -> BoxFuture<'_, Result<(), BusError>> {
        *self.inner.report.lock() = Some((report, now_ms()));
        Box::pin(std::future::ready(Ok(())))
    }

    fn cluster_rooms(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, BusError>> {
        let rooms = self
            .inner
            .report
            .lock()
            .as_ref()
            .map(|(r, _)| r.rooms.clone())
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(rooms)))
    }

    fn instances(&self) -> BoxFuture<'_, Result<Vec<InstanceInfo>, BusError>> {
        let list = self
            .inner
            .report
            .lock()
            .as_ref()
            .map(|(r, at)| vec![instance_info(r, *at)])
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(list)))
    }

    fn readiness(&self) -> Readiness {
        Readiness::Ready
    }

    fn leave(&self, _instance_id: &str) -> BoxFuture<'_, ()> {
        *self.inner.report.lock() = None;
        Box::pin(std::future::ready(()))
    }
}

/// Summarises a heartbeat for `GET /api/instances`.
pub(crate) fn instance_info(r: &InstanceReport, at_ms: u64) -> InstanceInfo {
    InstanceInfo {
        id: r.id.clone(),
        address: r.address.clone(),
        connections: r.rooms.iter().map(|(_, n)| n).sum(),
        rooms: r.rooms.len() as u64,
        uptime_s: Duration::from_millis(now_ms().saturating_sub(r.started_ms)).as_secs(),
        last_heartbeat_ms: at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use danmaku_proto::Mode;

    fn comment(room: &str, i: u64) -> Arc<Danmaku> {
        Arc::new(Danmaku {
            id: format!("id{i}"),
            room: room.into(),
            user: "guest-000000".into(),
            name: None,
            text: format!("t{i}"),
            color: "#ffffff".into(),
            mode: Mode::Scroll,
            ts: now_ms(),
        })
    }

    #[tokio::test]
    async fn delivers_in_order_only_to_the_room_and_keeps_capped_history() {
        let bus = EmbeddedBus::new(BusConfig {
            history_len: 3,
            ..BusConfig::default()
        });
        let a = RoomId::parse("a").unwrap();
        let b = RoomId::parse("b").unwrap();
        let mut sa = bus.subscribe(&a);
        let mut sb = bus.subscribe(&b);
        for i in 0..5 {
            bus.publish(comment("a", i)).await.unwrap();
        }
        for i in 0..5 {
            assert_eq!(sa.recv().await.unwrap().id, format!("id{i}"));
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
    async fn dropping_the_last_subscription_removes_the_channel() {
        let bus = EmbeddedBus::new(BusConfig::default());
        let a = RoomId::parse("a").unwrap();
        let s1 = bus.subscribe(&a);
        let s2 = bus.subscribe(&a);
        drop(s1);
        assert_eq!(bus.inner.channels.lock().len(), 1);
        drop(s2);
        assert!(bus.inner.channels.lock().is_empty());
    }

    #[tokio::test]
    async fn lagging_subscription_reports_the_skip() {
        let bus = EmbeddedBus::new(BusConfig {
            room_buffer: 2,
            ..BusConfig::default()
        });
        let a = RoomId::parse("a").unwrap();
        let mut s = bus.subscribe(&a);
        for i in 0..5 {
            bus.publish(comment("a", i)).await.unwrap();
        }
        assert_eq!(s.recv().await, Err(crate::RecvError::Lagged(3)));
        assert_eq!(s.recv().await.unwrap().id, "id3");
    }
}
