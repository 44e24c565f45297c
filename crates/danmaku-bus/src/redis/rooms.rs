//! The rooms this instance serves: for each, the [`Fanout`] to its
//! [`Subscription`]s' queues (see `subscription.rs`: each grows on demand
//! up to `room_queue_max`, so a burst is not lost), and whether, and since
//! when, Redis confirmed the room's `SUBSCRIBE`.
//!
//! Subscribing and unsubscribing here never touch Redis: they mark the room
//! as pending and wake the pub/sub task, which batches the changes into as
//! few commands as it can. A room outlives its last subscription by the
//! linger, and its subscriptions outlive pub/sub reconnects, so room tasks
//! just see events resume.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use danmaku_proto::{Danmaku, RoomId};
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::subscription::Fanout;
use crate::{now_ms, BusMetrics, Subscription};

/// The registry of served rooms, shared by subscriptions, the pub/sub task
/// and the operations that wait for a room's subscription.
pub(crate) struct Rooms {
    room_queue_max: usize,
    metrics: BusMetrics,
    pub(crate) map: Mutex<HashMap<String, RoomState>>,
    /// Rooms whose wanted subscription may have changed since the pub/sub
    /// task last looked.
    pending: Mutex<HashSet<String>>,
    /// Wakes the pub/sub task when `pending` gained a room.
    pub(crate) changed: Notify,
}

/// One served (or lingering) room.
pub(crate) struct RoomState {
    /// The queues of this instance's live [`Subscription`]s.
    pub(crate) fanout: Fanout,
    /// When `local` last dropped to zero; `None` while it is above.
    pub(crate) idle_since: Option<Instant>,
    /// Whether Redis confirmed the room's `SUBSCRIBE` on the current pub/sub
    /// connection.
    pub(crate) subscribed: watch::Sender<bool>,
    /// When Redis first confirmed the room's `SUBSCRIBE` (ms since the
    /// epoch, this host's clock): where recovery starts for a room that has
    /// not received any comment yet.
    pub(crate) confirmed_ms: Option<u64>,
    /// The last comment handed to the room, where recovery resumes after a
    /// lost pub/sub connection.
    pub(crate) last: Option<Arc<Danmaku>>,
    /// Ids recovered from history that may also arrive live on the new
    /// connection, to be dropped then; cleared by the first live comment
    /// that is not one of them.
    pub(crate) recovered: HashSet<String>,
}

impl RoomState {
    /// Live [`Subscription`]s of this instance.
    pub(crate) fn local(&self) -> usize {
        self.fanout.len()
    }
}

/// Releases a subscription's interest in its room on drop.
struct Guard {
    rooms: Weak<Rooms>,
    room: String,
    id: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(rooms) = self.rooms.upgrade() else {
            return;
        };
        let idle = {
            let mut map = rooms.map.lock();
            match map.get_mut(&self.room) {
                Some(st) => {
                    st.fanout.remove(self.id);
                    if st.local() == 0 {
                        st.idle_since = Some(Instant::now());
                    }
                    st.local() == 0
                }
                None => false,
            }
        };
        if idle {
            rooms.mark(std::mem::take(&mut self.room));
        }
    }
}

impl Rooms {
    pub(crate) fn new(room_queue_max: usize, metrics: BusMetrics) -> Rooms {
        Rooms {
            room_queue_max: room_queue_max.max(1),
            metrics,
            map: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashSet::new()),
            changed: Notify::new(),
        }
    }

    /// A new subscription to `room`, asking the pub/sub task to subscribe
    /// the room if this instance did not serve it.
    pub(crate) fn subscribe(self: &Arc<Self>, room: &RoomId) -> Subscription {
        let ((id, queue), was_idle) = {
            let mut map = self.map.lock();
            let st = map.entry(room.as_str().to_owned()).or_insert_with(|| {
                self.metrics.subscribed_rooms.inc();
                RoomState {
                    fanout: Fanout::default(),
                    idle_since: None,
                    subscribed: watch::channel(false).0,
                    confirmed_ms: None,
                    last: None,
                    recovered: HashSet::new(),
                }
            });
            // New, or lingering: the pub/sub task must (re)consider it.
            let was_idle = st.local() == 0;
            st.idle_since = None;
            let added = st
                .fanout
                .add(self.room_queue_max, self.metrics.room_events_shed.clone());
            (added, was_idle)
        };
        if was_idle {
            self.mark(room.as_str().to_owned());
        }
        let guard = Guard {
            rooms: Arc::downgrade(self),
            room: room.as_str().to_owned(),
            id,
        };
        Subscription::new(queue, Box::new(guard))
    }

    /// Tells the pub/sub task to look at `room` again.
    fn mark(&self, room: String) {
        self.pending.lock().insert(room);
        self.changed.notify_one();
    }

    /// The rooms marked since the last call.
    pub(crate) fn take_pending(&self) -> Vec<String> {
        self.pending.lock().drain().collect()
    }

    /// Forgets the marks: a fresh connection subscribes every room anyway.
    pub(crate) fn clear_pending(&self) {
        self.pending.lock().clear();
    }

    /// Forgets a room whose linger ended, if it still has no subscription
    /// (one may have come back meanwhile); true if it was forgotten. Takes
    /// the locked map so the caller decides the whole batch under one lock.
    pub(crate) fn forget_if_idle(&self, map: &mut HashMap<String, RoomState>, room: &str) -> bool {
        match map.get(room) {
            Some(st) if st.local() == 0 => {
                map.remove(room);
                self.metrics.subscribed_rooms.dec();
                true
            }
            _ => false,
        }
    }

    /// Marks rooms as subscribed (or not) on the current connection,
    /// releasing operations that waited for it; a first confirmation is
    /// remembered for recovery.
    pub(crate) fn set_subscribed<'a>(
        &self,
        rooms: impl IntoIterator<Item = &'a String>,
        yes: bool,
    ) {
        let now = now_ms();
        let mut map = self.map.lock();
        for room in rooms {
            if let Some(st) = map.get_mut(room) {
                if yes && st.confirmed_ms.is_none() {
                    st.confirmed_ms = Some(now);
                }
                st.subscribed.send_replace(yes);
            }
        }
    }

    /// Marks every room as not subscribed, as after a lost connection.
    pub(crate) fn unsubscribe_all(&self) {
        for st in self.map.lock().values() {
            st.subscribed.send_replace(false);
        }
    }

    /// Waits, up to `limit`, for a locally served room's `SUBSCRIBE` to be
    /// confirmed. True when it is confirmed or the room is not served here
    /// (nothing to wait for); false when it is not. `link_up` says whether
    /// there is a pub/sub connection to wait on at all.
    pub(crate) async fn wait_subscribed(&self, room: &str, link_up: bool, limit: Duration) -> bool {
        let mut confirmed = match self.map.lock().get(room) {
            Some(st) if !*st.subscribed.borrow() => st.subscribed.subscribe(),
            _ => return true,
        };
        if !link_up {
            return false;
        }
        let waited =
            tokio::time::timeout(limit, confirmed.wait_for(|subscribed| *subscribed)).await;
        matches!(waited, Ok(Ok(_)))
    }
}
