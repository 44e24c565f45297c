//! Rooms: who is watching what on this instance, and the fan-out task of
//! each room.
//!
//! A room exists while it has a local viewer: the first join creates it and
//! subscribes it on the bus, the last leave removes it. The registry is
//! sharded so unrelated rooms never wait on one lock. Each room's task reads
//! the room's bus subscription, encodes every comment once per format in use,
//! gathers comments into `batch` frames while the room is busy, and pushes the
//! same shared bytes into every viewer's outbox.
//!
//! Encoding is once per *variant*: what decides the bytes a viewer gets.
//! Today that is its wire format; density tiers will add a dimension to
//! [`Variant`] without touching the push loop, which asks a [`Prepared`] set
//! for each viewer's frames and builds each variant's only on first use.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use danmaku_bus::{Broker, RecvError, RoomEvent, Subscription};
use danmaku_proto::{
    batch_frame, encode, encode_danmaku, Danmaku, Encoded, Format, RoomId, ServerEvent,
};
use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

use crate::frame::Frame;
use crate::metrics::FanoutMetrics;
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

/// A number per room, as heartbeats carry them.
pub(crate) type RoomTally = Vec<(String, u64)>;

/// One shard of the registry: room id to room.
type Shard = Mutex<HashMap<String, Arc<Room>>>;

/// The local rooms of this instance.
pub(crate) struct Rooms {
    shards: Box<[Shard]>,
    hasher: RandomState,
    bus: Arc<dyn Broker>,
    config: FanoutConfig,
    presence: Arc<Presence>,
    /// Fan-out counters, shared with every room task.
    metrics: FanoutMetrics,
    /// Rooms with a local viewer.
    rooms_gauge: Gauge,
}

/// What decides which bytes a viewer receives: every viewer of the same
/// variant gets clones of the same frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Variant {
    /// The negotiated wire format.
    pub(crate) format: Format,
}

/// One room with at least one local viewer.
pub(crate) struct Room {
    id: RoomId,
    members: Mutex<Members>,
    /// Tells the room task to stop once the room has been removed.
    stop: Notify,
    /// Comments fanned out since the room opened here: bumped once per
    /// delivery to the room (not per viewer), read by the heartbeat, so
    /// the fleet can tell each room's comment rate.
    comments: AtomicU64,
}

#[derive(Default)]
struct Members {
    slots: Vec<Option<(Arc<Outbox>, Variant)>>,
    free: Vec<usize>,
    count: usize,
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
        bus: Arc<dyn Broker>,
        config: FanoutConfig,
        presence: Arc<Presence>,
        metrics: FanoutMetrics,
        rooms_gauge: Gauge,
    ) -> Arc<Rooms> {
        Arc::new(Rooms {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            bus,
            config,
            presence,
            metrics,
            rooms_gauge,
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
        variant: Variant,
    ) -> Membership {
        let mut shard = self.shard(id.as_str()).lock();
        let room = shard
            .entry(id.as_str().to_owned())
            .or_insert_with(|| {
                let room = Arc::new(Room {
                    id: id.clone(),
                    members: Mutex::default(),
                    stop: Notify::new(),
                    comments: AtomicU64::new(0),
                });
                let sub = self.bus.subscribe(id);
                let span = tracing::info_span!("room", room = %id);
                self.rooms_gauge.inc();
                tokio::spawn(
                    run_room(
                        room.clone(),
                        sub,
                        self.config.clone(),
                        self.presence.clone(),
                        self.metrics.clone(),
                    )
                    .instrument(span),
                );
                room
            })
            .clone();
        let slot = {
            let mut m = room.members.lock();
            m.count += 1;
            match m.free.pop() {
                Some(i) => {
                    m.slots[i] = Some((outbox, variant));
                    i
                }
                None => {
                    m.slots.push(Some((outbox, variant)));
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
        if m.slots[slot].take().is_some() {
            m.count -= 1;
            m.free.push(slot);
        }
        if m.count == 0 {
            if shard
                .get(room.id.as_str())
                .is_some_and(|r| Arc::ptr_eq(r, room))
            {
                shard.remove(room.id.as_str());
                self.rooms_gauge.dec();
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

    /// Local viewers and comments fanned out (since the room opened here)
    /// per room, rooms with no viewer left out: what a heartbeat reports.
    pub(crate) fn local_report(&self) -> (RoomTally, RoomTally) {
        let (mut counts, mut comments) = (Vec::new(), Vec::new());
        for shard in self.shards.iter() {
            for (id, room) in shard.lock().iter() {
                let n = room.members.lock().count as u64;
                if n > 0 {
                    counts.push((id.clone(), n));
                    comments.push((id.clone(), room.comments.load(Ordering::Relaxed)));
                }
            }
        }
        (counts, comments)
    }
}

/// The frames of one room event (or batch of comments), built once per
/// variant on first use and shared by every viewer of that variant. A
/// one-entry front cache answers the common case, consecutive viewers of
/// the same variant, without a search.
struct Prepared<F> {
    make: F,
    built: Vec<(Variant, Vec<Frame>)>,
    last: usize,
}

impl<F: FnMut(Variant) -> Vec<Frame>> Prepared<F> {
    fn new(make: F) -> Self {
        Prepared {
            make,
            built: Vec::new(),
            last: 0,
        }
    }

    fn get(&mut self, variant: Variant) -> &[Frame] {
        let hit = self
            .built
            .get(self.last)
            .is_some_and(|(v, _)| *v == variant);
        if !hit {
            self.last = match self.built.iter().position(|(v, _)| *v == variant) {
                Some(i) => i,
                None => {
                    self.built.push((variant, (self.make)(variant)));
                    self.built.len() - 1
                }
            };
        }
        &self.built[self.last].1
    }
}

/// Which lane of the outbox a room's frames take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Comments and counts: the oldest are dropped for a viewer who lags.
    Droppable,
    /// Recalls: never dropped; a viewer who cannot take them is evicted.
    Must,
}

impl Room {
    /// Pushes `items` to every viewer, encoded once per variant: a lone
    /// comment as itself, several as `batch` frames.
    fn deliver(&self, items: &[Arc<Danmaku>], config: &FanoutConfig, metrics: &FanoutMetrics) {
        let mut prepared = Prepared::new(|variant: Variant| {
            let format = variant.format;
            let mut encoded: Vec<Encoded> =
                items.iter().map(|d| encode_danmaku(format, d)).collect();
            if encoded.len() == 1 {
                return encoded.pop().map(Frame::from).into_iter().collect();
            }
            encoded
                .chunks(config.max_batch_items)
                .map(|chunk| Frame::from(batch_frame(format, chunk)))
                .collect()
        });
        metrics.comments.inc_by(items.len() as u64);
        metrics.batch_items.observe(items.len() as f64);
        let now_ms = danmaku_bus::now_ms();
        for d in items {
            let ms = now_ms.saturating_sub(d.ts);
            metrics.post_to_fanout.observe(ms as f64 / 1000.0);
        }
        self.comments
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        self.push(&mut prepared, Lane::Droppable, config, metrics);
    }

    /// Pushes one server event to every viewer on `lane`.
    fn deliver_event(
        &self,
        event: &ServerEvent,
        lane: Lane,
        config: &FanoutConfig,
        metrics: &FanoutMetrics,
    ) {
        let mut prepared =
            Prepared::new(|variant: Variant| vec![Frame::from(encode(variant.format, event))]);
        self.push(&mut prepared, lane, config, metrics);
    }

    fn push<F: FnMut(Variant) -> Vec<Frame>>(
        &self,
        prepared: &mut Prepared<F>,
        lane: Lane,
        config: &FanoutConfig,
        metrics: &FanoutMetrics,
    ) {
        let now = Instant::now();
        let (mut pushed, mut dropped, mut evicted, mut longest) = (0u64, 0u64, 0usize, 0usize);
        let m = self.members.lock();
        for (outbox, variant) in m.slots.iter().flatten() {
            for frame in prepared.get(*variant) {
                let (outcome, len) = match lane {
                    Lane::Droppable => outbox.push_room(frame.clone(), now, config.slow_close),
                    Lane::Must => outbox.push_must(frame.clone()),
                };
                match (outcome, lane) {
                    (Pushed::Queued, _) => {}
                    (Pushed::DroppedOldest(n), _) => dropped += n,
                    (Pushed::Evicted, Lane::Droppable) => {
                        dropped += 1;
                        evicted += 1;
                    }
                    (Pushed::Evicted, Lane::Must) => {
                        evicted += 1;
                        continue;
                    }
                    (Pushed::Ignored, _) => continue,
                }
                longest = longest.max(len);
                pushed += 1;
            }
        }
        drop(m);
        metrics.frames_pushed.inc_by(pushed);
        if dropped > 0 {
            metrics.frames_dropped.inc_by(dropped);
        }
        if lane == Lane::Must {
            metrics.must_frames.inc_by(pushed);
        }
        metrics.saw_queue(longest);
        if evicted > 0 {
            tracing::info!(evicted, "Viewers marked too slow");
        }
    }
}

/// The room task: quiet rooms deliver each comment at once; a comment that
/// arrives within `flush_window` of the previous delivery waits for the
/// window to end and goes out with the others in one `batch` frame. Any
/// other room event first flushes what is pending, so viewers see events in
/// the order they were published.
async fn run_room(
    room: Arc<Room>,
    mut sub: Subscription,
    config: FanoutConfig,
    presence: Arc<Presence>,
    metrics: FanoutMetrics,
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
                    room.deliver(&pending, &config, &metrics);
                    pending.clear();
                    window_end = Some(Instant::now() + config.flush_window);
                }
            }
            received = sub.recv() => match received {
                Ok(RoomEvent::Comment(comment)) => {
                    if window_end.is_none() {
                        room.deliver(std::slice::from_ref(&comment), &config, &metrics);
                        window_end = Some(Instant::now() + config.flush_window);
                    } else {
                        pending.push(comment);
                        while pending.len() < config.max_batch_items {
                            match sub.try_recv() {
                                Ok(Some(RoomEvent::Comment(c))) => pending.push(c),
                                Ok(Some(other)) => {
                                    room.deliver(&pending, &config, &metrics);
                                    pending.clear();
                                    room.on_event(other, &config, &metrics);
                                }
                                _ => break,
                            }
                        }
                        if pending.len() >= config.max_batch_items {
                            room.deliver(&pending, &config, &metrics);
                            pending.clear();
                        }
                    }
                }
                Ok(other) => {
                    if !pending.is_empty() {
                        room.deliver(&pending, &config, &metrics);
                        pending.clear();
                    }
                    room.on_event(other, &config, &metrics);
                }
                Err(RecvError::Lagged(n)) => {
                    metrics.bus_lagged.inc_by(n);
                    tracing::warn!(skipped = n, "Room fell behind the bus");
                }
                Err(RecvError::Closed) => break,
            },
            _ = online.tick() => {
                let local = room.members.lock().count as u64;
                let event = ServerEvent::Online {
                    room: room.id.as_str().to_owned(),
                    count: presence.online(room.id.as_str(), local),
                };
                room.deliver_event(&event, Lane::Droppable, &config, &metrics);
            }
        }
    }
    if !pending.is_empty() {
        room.deliver(&pending, &config, &metrics);
    }
    tracing::debug!("Room closed");
}

impl Room {
    /// A room event other than a comment.
    fn on_event(&self, event: RoomEvent, config: &FanoutConfig, metrics: &FanoutMetrics) {
        match event {
            RoomEvent::Comment(c) => self.deliver(&[c], config, metrics),
            RoomEvent::Delete { id } => {
                let event = ServerEvent::Delete {
                    room: self.id.as_str().to_owned(),
                    id,
                };
                self.deliver_event(&event, Lane::Must, config, metrics);
            }
            other => tracing::debug!(kind = other.kind(), "Room event not delivered here"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepared_builds_each_variant_once() {
        let mut builds = Vec::new();
        let json = Variant {
            format: Format::Json,
        };
        let msgpack = Variant {
            format: Format::MsgPack,
        };
        {
            let mut prepared = Prepared::new(|v: Variant| {
                builds.push(v);
                vec![Frame::Binary(bytes::Bytes::from(format!("{:?}", v.format)))]
            });
            for v in [json, json, msgpack, json, msgpack, msgpack] {
                let frames = prepared.get(v);
                assert_eq!(frames.len(), 1);
                assert_eq!(frames[0].as_bytes(), format!("{:?}", v.format).as_bytes());
            }
        }
        assert_eq!(builds, [json, msgpack]);
    }
}
