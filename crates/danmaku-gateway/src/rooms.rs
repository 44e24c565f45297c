//! Rooms: who is watching what on this instance, and the fan-out task of
//! each room.
//!
//! A room exists while it has a local viewer: the first join creates it and
//! subscribes it on the bus, the last leave removes it. The registry is
//! sharded so unrelated rooms never wait on one lock. Each room's task reads
//! the room's bus subscription, encodes every comment once per format in use,
//! gathers comments into `batch` frames while the room is busy, and pushes the
//! same shared bytes into every viewer's outbox.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;
use danmaku_bus::{Bus, RecvError, Subscription};
use danmaku_proto::{
    batch_frame, encode, encode_danmaku, Danmaku, Encoded, Format, RoomId, ServerEvent,
};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

use crate::outbox::{Outbox, Pushed};
use crate::presence::Presence;

/// Shards of the registry; a power of two well above the core count.
const SHARDS: usize = 64;

/// How rooms batch and fan out.
#[derive(Debug, Clone)]
pub(crate) struct FanoutConfig {
    /// How long a busy room gathers comments into one frame.
    pub flush_window: Duration,
    /// Most comments in one `batch` frame.
    pub max_batch_items: usize,
    /// How long a viewer's queue may stay full before it is closed.
    pub slow_close: Duration,
    /// Interval of `online` events.
    pub online_interval: Duration,
}

/// Counters of the fan-out, for `/api/stats` and metrics.
#[derive(Debug, Default)]
pub(crate) struct FanoutStats {
    /// Comments fanned out (counted once per room, not per viewer).
    pub comments: AtomicU64,
    /// Frames pushed into outboxes.
    pub frames_pushed: AtomicU64,
    /// Room frames dropped because a viewer's queue was full.
    pub frames_dropped: AtomicU64,
    /// Connections closed as too slow (queue full too long, or a write stalled).
    pub slow_evictions: AtomicU64,
    /// Comments a room task skipped because it fell behind the bus.
    pub bus_lagged: AtomicU64,
}

/// One shard of the registry: room id to room.
type Shard = Mutex<HashMap<String, Arc<Room>>>;

/// The local rooms of this instance.
pub(crate) struct Rooms {
    shards: Box<[Shard]>,
    hasher: RandomState,
    bus: Arc<dyn Bus>,
    config: FanoutConfig,
    presence: Arc<Presence>,
    /// Fan-out counters.
    pub stats: Arc<FanoutStats>,
}

/// One room with at least one local viewer.
pub(crate) struct Room {
    id: RoomId,
    members: Mutex<Members>,
    /// Tells the room task to stop once the room has been removed.
    stop: Notify,
}

#[derive(Default)]
struct Members {
    slots: Vec<Option<(Arc<Outbox>, Format)>>,
    free: Vec<usize>,
    count: usize,
    per_format: [usize; 2],
}

/// A viewer's place in a room; dropping it leaves the room.
pub(crate) struct Membership {
    rooms: Arc<Rooms>,
    room: Arc<Room>,
    slot: usize,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.rooms.leave(&self.room, self.slot);
    }
}

impl Membership {
    /// Local viewers of the room right now.
    pub(crate) fn local_count(&self) -> u64 {
        self.room.members.lock().count as u64
    }
}

impl Rooms {
    /// An empty registry whose rooms subscribe on `bus`.
    pub(crate) fn new(
        bus: Arc<dyn Bus>,
        config: FanoutConfig,
        presence: Arc<Presence>,
    ) -> Arc<Rooms> {
        Arc::new(Rooms {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            bus,
            config,
            presence,
            stats: Arc::default(),
        })
    }

    fn shard(&self, room: &str) -> &Shard {
        &self.shards[self.hasher.hash_one(room) as usize % SHARDS]
    }

    /// Adds a viewer to a room, creating the room (and its bus subscription
    /// and task) if it is the first.
    pub(crate) fn join(
        self: &Arc<Self>,
        id: &RoomId,
        outbox: Arc<Outbox>,
        format: Format,
    ) -> Membership {
        let mut shard = self.shard(id.as_str()).lock();
        let room = shard
            .entry(id.as_str().to_owned())
            .or_insert_with(|| {
                let room = Arc::new(Room {
                    id: id.clone(),
                    members: Mutex::default(),
                    stop: Notify::new(),
                });
                let sub = self.bus.subscribe(id);
                let span = tracing::info_span!("room", room = %id);
                tokio::spawn(
                    run_room(
                        room.clone(),
                        sub,
                        self.config.clone(),
                        self.presence.clone(),
                        self.stats.clone(),
                    )
                    .instrument(span),
                );
                room
            })
            .clone();
        let slot = {
            let mut m = room.members.lock();
            m.count += 1;
            m.per_format[format.index()] += 1;
            match m.free.pop() {
                Some(i) => {
                    m.slots[i] = Some((outbox, format));
                    i
                }
                None => {
                    m.slots.push(Some((outbox, format)));
                    m.slots.len() - 1
                }
            }
        };
        drop(shard);
        Membership {
            rooms: self.clone(),
            room,
            slot,
        }
    }

    fn leave(&self, room: &Arc<Room>, slot: usize) {
        let mut shard = self.shard(room.id.as_str()).lock();
        let mut m = room.members.lock();
        if let Some((_, format)) = m.slots[slot].take() {
            m.count -= 1;
            m.per_format[format.index()] -= 1;
            m.free.push(slot);
        }
        if m.count == 0 {
            if shard
                .get(room.id.as_str())
                .is_some_and(|r| Arc::ptr_eq(r, room))
            {
                shard.remove(room.id.as_str());
            }
            room.stop.notify_one();
        }
    }

    /// Local viewers per room, rooms with none left out.
    pub(crate) fn local_counts(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            for (id, room) in shard.lock().iter() {
                let n = room.members.lock().count as u64;
                if n > 0 {
                    out.push((id.clone(), n));
                }
            }
        }
        out
    }

    /// The longest outbox on this instance, to show queues stay bounded.
    pub(crate) fn max_queued(&self) -> usize {
        let mut longest = 0;
        for shard in self.shards.iter() {
            let rooms: Vec<Arc<Room>> = shard.lock().values().cloned().collect();
            for room in rooms {
                let m = room.members.lock();
                longest = m
                    .slots
                    .iter()
                    .flatten()
                    .map(|(o, _)| o.len())
                    .fold(longest, usize::max);
            }
        }
        longest
    }
}

impl Room {
    /// Encodes `items` once per format in use and pushes the frames to
    /// every viewer: a lone comment as itself, several as `batch` frames.
    fn deliver(&self, items: &[Arc<Danmaku>], config: &FanoutConfig, stats: &FanoutStats) {
        let frames = self.frames_per_format(|format| {
            let mut encoded: Vec<Encoded> =
                items.iter().map(|d| encode_danmaku(format, d)).collect();
            if encoded.len() == 1 {
                return encoded.pop().map(to_message).into_iter().collect();
            }
            encoded
                .chunks(config.max_batch_items)
                .map(|chunk| to_message(batch_frame(format, chunk)))
                .collect()
        });
        stats
            .comments
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        self.push(&frames, config, stats);
    }

    fn push_online(&self, count: u64, config: &FanoutConfig, stats: &FanoutStats) {
        let event = ServerEvent::Online {
            room: self.id.as_str().to_owned(),
            count,
        };
        let frames = self.frames_per_format(|format| vec![to_message(encode(format, &event))]);
        self.push(&frames, config, stats);
    }

    /// The frames `make` builds for each format some viewer uses; nothing
    /// is encoded for a format nobody in the room reads.
    fn frames_per_format(&self, make: impl Fn(Format) -> Vec<Message>) -> [Vec<Message>; 2] {
        let in_use = self.members.lock().per_format;
        Format::ALL.map(|format| {
            if in_use[format.index()] == 0 {
                Vec::new()
            } else {
                make(format)
            }
        })
    }

    fn push(&self, frames: &[Vec<Message>; 2], config: &FanoutConfig, stats: &FanoutStats) {
        let now = std::time::Instant::now();
        let (mut pushed, mut dropped, mut evicted) = (0u64, 0u64, 0usize);
        let m = self.members.lock();
        for (outbox, format) in m.slots.iter().flatten() {
            for frame in &frames[format.index()] {
                match outbox.push_room(frame.clone(), now, config.slow_close) {
                    Pushed::Queued => {}
                    Pushed::DroppedOldest => dropped += 1,
                    Pushed::Evicted => {
                        dropped += 1;
                        evicted += 1;
                    }
                    Pushed::Ignored => continue,
                }
                pushed += 1;
            }
        }
        drop(m);
        stats.frames_pushed.fetch_add(pushed, Ordering::Relaxed);
        stats.frames_dropped.fetch_add(dropped, Ordering::Relaxed);
        if evicted > 0 {
            tracing::info!(evicted, "Viewers marked too slow");
        }
    }
}

/// Wraps an encoded frame as a WebSocket message without copying or
/// re-validating it.
pub(crate) fn to_message(frame: Encoded) -> Message {
    match frame {
        Encoded::Text(s) => Message::Text(s.into()),
        Encoded::Binary(b) => Message::Binary(b.into()),
    }
}

/// The room task: quiet rooms deliver each comment at once; a comment that
/// arrives within `flush_window` of the previous delivery waits for the
/// window to end and goes out with the others in one `batch` frame.
async fn run_room(
    room: Arc<Room>,
    mut sub: Subscription,
    config: FanoutConfig,
    presence: Arc<Presence>,
    stats: Arc<FanoutStats>,
) {
    let mut online = tokio::time::interval_at(
        Instant::now() + config.online_interval,
        config.online_interval,
    );
    online.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: Vec<Arc<Danmaku>> = Vec::new();
    // While `Some`, the room is busy: comments wait for this instant.
    let mut window_end: Option<Instant> = None;
    loop {
        let deadline = window_end;
        tokio::select! {
            biased;
            _ = room.stop.notified() => break,
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                if pending.is_empty() {
                    window_end = None;
                } else {
                    room.deliver(&pending, &config, &stats);
                    pending.clear();
                    window_end = Some(Instant::now() + config.flush_window);
                }
            }
            received = sub.recv() => match received {
                Ok(comment) => {
                    if window_end.is_none() {
                        room.deliver(std::slice::from_ref(&comment), &config, &stats);
                        window_end = Some(Instant::now() + config.flush_window);
                    } else {
                        pending.push(comment);
                        while pending.len() < config.max_batch_items {
                            match sub.try_recv() {
                                Ok(Some(c)) => pending.push(c),
                                _ => break,
                            }
                        }
                        if pending.len() >= config.max_batch_items {
                            room.deliver(&pending, &config, &stats);
                            pending.clear();
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    stats.bus_lagged.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(skipped = n, "Room fell behind the bus");
                }
                Err(RecvError::Closed) => break,
            },
            _ = online.tick() => {
                let local = room.members.lock().count as u64;
                room.push_online(presence.online(room.id.as_str(), local), &config, &stats);
            }
        }
    }
    if !pending.is_empty() {
        room.deliver(&pending, &config, &stats);
    }
    tracing::debug!("Room closed");
}
