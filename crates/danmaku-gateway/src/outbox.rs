//! A connection's outbound queue: bounded, never blocking the producer.
//!
//! Room tasks push shared frames here and move on; the connection's own task
//! drains it into the socket. Three kinds of frame:
//! - control frames (hello, ack, reject, error, pong) are few,
//!   per-connection and never dropped;
//! - room frames (danmaku, batch, online) are shared and ephemeral, and the
//!   oldest are dropped when `capacity` of them wait, or when the next one
//!   would take the room lane over `max_bytes` (a lone frame larger than
//!   that is still queued: frames are never split);
//! - must-arrive room frames (a recall, later moderation notices) are shared
//!   and never dropped: they wait in the same ordered room lane as comments,
//!   so a recall never overtakes the comment it removes, and are bounded by
//!   `must_capacity`. A viewer that lets that many pile up is evicted.
//!
//! A room lane that stays full for the configured time marks the connection
//! for eviction ("too slow"). Time is tokio's, like the rest of the
//! connection code, so tests can pause it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::frame::Frame;
use crate::metrics::raise_mark;

/// Control frames a connection may have queued before it is considered
/// unable to keep up; control frames are answers to the client's own
/// requests, so only a client that floods and never reads gets here.
const MAX_CONTROL_FRAMES: usize = 256;

/// The queue of one connection.
pub(crate) struct Outbox {
    state: Mutex<State>,
    /// Wakes the connection task when the queue goes from empty to not
    /// empty, or when the connection is evicted.
    wake: Notify,
    /// Room frames dropped for this connection, for logs.
    dropped: AtomicU64,
    /// The gateway-wide high-water mark of room-lane bytes, raised when
    /// this queue's own mark rises.
    bytes_mark: Gauge,
}

struct State {
    control: VecDeque<Frame>,
    /// Room frames in arrival order, droppable and must-arrive together.
    room: VecDeque<Queued>,
    /// Must-arrive frames in `room`; the rest are droppable.
    must: usize,
    /// Droppable room-frame capacity.
    capacity: usize,
    /// Must-arrive capacity.
    must_capacity: usize,
    /// Payload bytes of the frames in `room`.
    bytes: usize,
    /// Room-lane bytes beyond which the oldest droppable frames go.
    max_bytes: usize,
    /// The most `bytes` this queue has held; the shared gauge is touched
    /// only when this rises.
    bytes_seen: usize,
    /// When the room lane was first found full since the last flush.
    full_since: Option<Instant>,
    /// Set once the connection must be closed as too slow.
    evicted: bool,
}

struct Queued {
    frame: Frame,
    must: bool,
}

impl State {
    fn droppable(&self) -> usize {
        self.room.len() - self.must
    }

    fn is_empty(&self) -> bool {
        self.room.is_empty() && self.control.is_empty()
    }
}

/// Payload bytes of a frame, what the room lane's byte bound counts.
fn payload_len(frame: &Frame) -> usize {
    match frame {
        Frame::Text(text) => text.as_str().len(),
        Frame::Binary(bytes) => bytes.len(),
        Frame::Ping => 0,
    }
}

/// What [`Outbox::push_room`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// The frame was queued.
    Queued,
    /// The frame was queued and this many of the oldest room frames were
    /// dropped to make room (several when the byte bound needed it).
    DroppedOldest(u64),
    /// As `DroppedOldest`, and the queue has been full for too long: the
    /// connection is now marked too slow. For a must-arrive frame: its lane
    /// was full, so the connection is marked too slow.
    Evicted,
    /// The connection was already evicted; the frame was discarded.
    Ignored,
}

/// What the writer got from [`Outbox::drain`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Frames were moved into the buffer (possibly none).
    Frames,
    /// The connection is too slow and must be closed.
    Evicted,
}

impl Outbox {
    /// An empty queue holding at most `capacity` droppable room frames and
    /// `must_capacity` must-arrive ones, dropping droppable ones beyond
    /// `max_bytes` of room frames; it raises `bytes_mark` to the most room
    /// bytes it held. Allocates nothing until the first frame arrives.
    pub(crate) fn new(
        capacity: usize,
        must_capacity: usize,
        max_bytes: usize,
        bytes_mark: Gauge,
    ) -> Outbox {
        Outbox {
            state: Mutex::new(State {
                control: VecDeque::new(),
                room: VecDeque::new(),
                must: 0,
                capacity: capacity.max(1),
                must_capacity: must_capacity.max(1),
                bytes: 0,
                max_bytes: max_bytes.max(1),
                bytes_seen: 0,
                full_since: None,
                evicted: false,
            }),
            wake: Notify::new(),
            dropped: AtomicU64::new(0),
            bytes_mark,
        }
    }

    /// Adds `len` bytes to the room lane's count and raises the marks.
    fn count_bytes(&self, s: &mut State, len: usize) {
        s.bytes += len;
        if s.bytes > s.bytes_seen {
            s.bytes_seen = s.bytes;
            raise_mark(&self.bytes_mark, s.bytes);
        }
    }

    /// Queues a shared room frame, dropping the oldest droppable ones when
    /// `capacity` of them wait or the frame would take the lane over
    /// `max_bytes`. Returns what happened and the queue's length after it.
    pub(crate) fn push_room(
        &self,
        frame: Frame,
        now: Instant,
        slow_close: Duration,
    ) -> (Pushed, usize) {
        let mut s = self.state.lock();
        if s.evicted {
            return (Pushed::Ignored, 0);
        }
        let was_empty = s.is_empty();
        let mut outcome = Pushed::Queued;
        let mut dropped = 0;
        let len = payload_len(&frame);
        while s.droppable() >= s.capacity || (s.droppable() > 0 && s.bytes + len > s.max_bytes) {
            // The oldest droppable frame; must-arrive frames are skipped.
            if let Some(i) = s.room.iter().position(|q| !q.must) {
                if let Some(old) = s.room.remove(i) {
                    s.bytes -= payload_len(&old.frame);
                }
            }
            dropped += 1;
        }
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
            outcome = Pushed::DroppedOldest(dropped);
            let since = *s.full_since.get_or_insert(now);
            if now.duration_since(since) >= slow_close {
                s.evicted = true;
                outcome = Pushed::Evicted;
            }
        }
        self.count_bytes(&mut s, len);
        s.room.push_back(Queued { frame, must: false });
        let len = s.room.len() + s.control.len();
        drop(s);
        if was_empty || outcome == Pushed::Evicted {
            self.wake.notify_one();
        }
        (outcome, len)
    }

    /// Queues a shared room frame that must arrive: it is never dropped. A
    /// viewer with `must_capacity` of them waiting is marked too slow
    /// instead (`Pushed::Evicted`), as one whose room lane stays full is.
    pub(crate) fn push_must(&self, frame: Frame) -> (Pushed, usize) {
        let mut s = self.state.lock();
        if s.evicted {
            return (Pushed::Ignored, 0);
        }
        let was_empty = s.is_empty();
        if s.must >= s.must_capacity {
            s.evicted = true;
            drop(s);
            self.wake.notify_one();
            return (Pushed::Evicted, 0);
        }
        self.count_bytes(&mut s, payload_len(&frame));
        s.room.push_back(Queued { frame, must: true });
        s.must += 1;
        let len = s.room.len() + s.control.len();
        drop(s);
        if was_empty {
            self.wake.notify_one();
        }
        (Pushed::Queued, len)
    }

    /// Queues a control frame; these are never dropped. A client that has
    /// let `MAX_CONTROL_FRAMES` answers pile up is evicted instead.
    pub(crate) fn push_control(&self, frame: Frame) {
        let mut s = self.state.lock();
        if s.control.len() >= MAX_CONTROL_FRAMES {
            s.evicted = true;
        } else {
            s.control.push_back(frame);
        }
        drop(s);
        self.wake.notify_one();
    }

    /// Moves every queued frame into `out`: control frames first, then room
    /// frames in the order they came.
    pub(crate) fn drain(&self, out: &mut Vec<Frame>) -> Drained {
        let mut s = self.state.lock();
        if s.evicted {
            return Drained::Evicted;
        }
        out.extend(s.control.drain(..));
        out.extend(s.room.drain(..).map(|q| q.frame));
        s.must = 0;
        s.bytes = 0;
        // An empty lane keeps no allocation: an idle connection then costs
        // nothing here, and a busy one pays a small allocation per drain.
        s.control.shrink_to(0);
        s.room.shrink_to(0);
        Drained::Frames
    }

    /// Records that the socket accepted everything drained so far: the
    /// connection is keeping up again.
    pub(crate) fn flushed(&self) {
        self.state.lock().full_since = None;
    }

    /// Whether the connection has been marked too slow.
    pub(crate) fn is_evicted(&self) -> bool {
        self.state.lock().evicted
    }

    /// Waits until there may be something to drain or the connection was evicted.
    pub(crate) async fn ready(&self) {
        self.wake.notified().await
    }

    /// Waits until the connection is evicted.
    pub(crate) async fn evicted(&self) {
        loop {
            if self.is_evicted() {
                return;
            }
            self.wake.notified().await;
        }
    }

    /// Room frames dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Frames waiting, every lane.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let s = self.state.lock();
        s.control.len() + s.room.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Frame {
        Frame::Text(s.into())
    }

    /// A queue with no byte bound, as the frame-count tests want.
    fn outbox(capacity: usize, must_capacity: usize) -> Outbox {
        Outbox::new(capacity, must_capacity, usize::MAX, Gauge::default())
    }

    fn texts(out: &[Frame]) -> Vec<String> {
        out.iter()
            .map(|f| String::from_utf8(f.as_bytes().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn drops_oldest_room_frames_but_never_control_frames() {
        let o = outbox(2, 4);
        let t0 = Instant::now();
        let slow = Duration::from_secs(10);
        o.push_control(text("hello"));
        for i in 0..5 {
            let expected = if i < 2 {
                Pushed::Queued
            } else {
                Pushed::DroppedOldest(1)
            };
            assert_eq!(o.push_room(text(&format!("d{i}")), t0, slow).0, expected);
        }
        o.push_control(text("ack"));
        let mut out = Vec::new();
        assert_eq!(o.drain(&mut out), Drained::Frames);
        assert_eq!(texts(&out), ["hello", "ack", "d3", "d4"]);
        assert_eq!(o.dropped(), 3);
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn full_for_longer_than_the_limit_evicts_and_a_flush_forgives() {
        let o = outbox(1, 4);
        let t0 = Instant::now();
        let slow = Duration::from_secs(10);
        o.push_room(text("a"), t0, slow);
        o.push_room(text("b"), t0, slow); // full since t0
        assert_eq!(
            o.push_room(text("c"), t0 + Duration::from_secs(9), slow).0,
            Pushed::DroppedOldest(1)
        );
        o.flushed();
        // The clock restarts after a flush.
        assert_eq!(
            o.push_room(text("d"), t0 + Duration::from_secs(11), slow).0,
            Pushed::DroppedOldest(1)
        );
        assert_eq!(
            o.push_room(text("e"), t0 + Duration::from_secs(20), slow).0,
            Pushed::DroppedOldest(1)
        );
        assert_eq!(
            o.push_room(text("f"), t0 + Duration::from_secs(21), slow).0,
            Pushed::Evicted
        );
        assert!(o.is_evicted());
        assert_eq!(o.drain(&mut Vec::new()), Drained::Evicted);
        // Eviction is reported once; later pushes are ignored.
        assert_eq!(
            o.push_room(text("g"), t0 + Duration::from_secs(30), slow).0,
            Pushed::Ignored
        );
    }

    #[test]
    fn a_flood_of_control_frames_evicts_instead_of_growing() {
        let o = outbox(4, 4);
        for _ in 0..MAX_CONTROL_FRAMES + 10 {
            o.push_control(text("pong"));
        }
        assert!(o.is_evicted());
        assert!(o.len() <= MAX_CONTROL_FRAMES);
    }

    #[test]
    fn must_arrive_frames_are_never_dropped_and_keep_their_place() {
        let o = outbox(2, 4);
        let t0 = Instant::now();
        let slow = Duration::from_secs(10);
        o.push_room(text("c1"), t0, slow);
        assert_eq!(o.push_must(text("delete c1")), (Pushed::Queued, 2));
        // The room lane overflows: comments go oldest first, the recall stays.
        for i in 2..6 {
            o.push_room(text(&format!("c{i}")), t0, slow);
        }
        let mut out = Vec::new();
        assert_eq!(o.drain(&mut out), Drained::Frames);
        assert_eq!(texts(&out), ["delete c1", "c4", "c5"]);
        assert_eq!(o.dropped(), 3);
        // A recall never overtakes the comment before it.
        o.push_room(text("c6"), t0, slow);
        o.push_must(text("delete c6"));
        o.push_control(text("ack"));
        let mut out = Vec::new();
        o.drain(&mut out);
        assert_eq!(texts(&out), ["ack", "c6", "delete c6"]);
    }

    #[test]
    fn a_viewer_that_cannot_take_must_arrive_frames_is_evicted() {
        let o = outbox(8, 2);
        assert_eq!(o.push_must(text("m1")).0, Pushed::Queued);
        assert_eq!(o.push_must(text("m2")).0, Pushed::Queued);
        assert_eq!(o.push_must(text("m3")).0, Pushed::Evicted);
        assert!(o.is_evicted());
        assert_eq!(o.push_must(text("m4")).0, Pushed::Ignored);
        // A drain empties the lane's budget for a viewer that keeps up.
        let o = outbox(8, 2);
        for i in 0..10 {
            assert_eq!(o.push_must(text(&format!("m{i}"))).0, Pushed::Queued);
            o.drain(&mut Vec::new());
        }
        assert!(!o.is_evicted());
    }

    #[test]
    fn room_frames_beyond_the_byte_bound_drop_the_oldest_and_raise_the_mark() {
        let mark = Gauge::default();
        let o = Outbox::new(100, 4, 10, mark.clone());
        let t0 = Instant::now();
        let slow = Duration::from_secs(10);
        assert_eq!(o.push_room(text("aaaa"), t0, slow).0, Pushed::Queued);
        assert_eq!(o.push_room(text("bbbb"), t0, slow).0, Pushed::Queued);
        // 8 + 4 > 10: "aaaa" goes.
        assert_eq!(
            o.push_room(text("cccc"), t0, slow).0,
            Pushed::DroppedOldest(1)
        );
        // Must-arrive frames count but stay; a big frame empties the
        // droppable part of the lane and is queued alone even over the bound.
        assert_eq!(o.push_must(text("mm")).0, Pushed::Queued);
        assert_eq!(
            o.push_room(text("0123456789ab"), t0, slow).0,
            Pushed::DroppedOldest(2)
        );
        assert_eq!(o.dropped(), 3);
        assert_eq!(mark.get(), 14);
        let mut out = Vec::new();
        o.drain(&mut out);
        assert_eq!(texts(&out), ["mm", "0123456789ab"]);
        // The count starts again after a drain; the mark keeps the most.
        assert_eq!(o.push_room(text("dddd"), t0, slow).0, Pushed::Queued);
        assert_eq!(o.push_room(text("eeee"), t0, slow).0, Pushed::Queued);
        assert_eq!(mark.get(), 14);
    }
}
