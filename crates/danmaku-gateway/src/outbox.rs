//! A connection's outbound queue: bounded, never blocking the producer.
//!
//! Room tasks push shared frames here and move on; the connection's own task
//! drains it into the socket. Two lanes: control frames (hello, ack, reject,
//! error, pong) are few, per-connection and never dropped; room frames
//! (danmaku, batch, online) are shared, ephemeral and dropped oldest-first
//! when the lane is full. A lane that stays full for the configured time marks
//! the connection for eviction ("too slow").

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::Message;
use parking_lot::Mutex;
use tokio::sync::Notify;

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
    /// Room frames dropped for this connection, for metrics.
    dropped: AtomicU64,
}

struct State {
    control: VecDeque<Message>,
    data: VecDeque<Message>,
    /// Room-frame capacity.
    capacity: usize,
    /// When the room lane was first found full since the last flush.
    full_since: Option<Instant>,
    /// Set once the connection must be closed as too slow.
    evicted: bool,
}

/// What [`Outbox::push_room`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// The frame was queued.
    Queued,
    /// The frame was queued and the oldest room frame dropped to make room.
    DroppedOldest,
    /// As `DroppedOldest`, and the queue has been full for too long: the
    /// connection is now marked too slow.
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
    /// An empty queue holding at most `capacity` room frames. Allocates
    /// nothing until the first frame arrives.
    pub(crate) fn new(capacity: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State {
                control: VecDeque::new(),
                data: VecDeque::new(),
                capacity: capacity.max(1),
                full_since: None,
                evicted: false,
            }),
            wake: Notify::new(),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues a shared room frame, dropping the oldest one when full.
    pub(crate) fn push_room(&self, frame: Message, now: Instant, slow_close: Duration) -> Pushed {
        let mut s = self.state.lock();
        if s.evicted {
            return Pushed::Ignored;
        }
        let was_empty = s.data.is_empty() && s.control.is_empty();
        let mut outcome = Pushed::Queued;
        if s.data.len() >= s.capacity {
            s.data.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
            outcome = Pushed::DroppedOldest;
            let since = *s.full_since.get_or_insert(now);
            if now.duration_since(since) >= slow_close {
                s.evicted = true;
                outcome = Pushed::Evicted;
            }
        }
        s.data.push_back(frame);
        drop(s);
        if was_empty || outcome == Pushed::Evicted {
            self.wake.notify_one();
        }
        outcome
    }

    /// Queues a control frame; these are never dropped. A client that has
    /// let `MAX_CONTROL_FRAMES` answers pile up is evicted instead.
    pub(crate) fn push_control(&self, frame: Message) {
        let mut s = self.state.lock();
        if s.control.len() >= MAX_CONTROL_FRAMES {
            s.evicted = true;
        } else {
            s.control.push_back(frame);
        }
        drop(s);
        self.wake.notify_one();
    }

    /// Moves every queued frame into `out`, control frames first.
    pub(crate) fn drain(&self, out: &mut Vec<Message>) -> Drained {
        let mut s = self.state.lock();
        if s.evicted {
            return Drained::Evicted;
        }
        out.extend(s.control.drain(..));
        out.extend(s.data.drain(..));
        // An empty lane keeps no allocation: an idle connection then costs
        // nothing here, and a busy one pays a small allocation per drain.
        s.control.shrink_to(0);
        s.data.shrink_to(0);
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

    /// Frames waiting, both lanes.
    pub(crate) fn len(&self) -> usize {
        let s = self.state.lock();
        s.control.len() + s.data.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Message {
        Message::Text(s.into())
    }

    #[test]
    fn drops_oldest_room_frames_but_never_control_frames() {
        let o = Outbox::new(2);
        let t0 = Instant::now();
        let slow = Duration::from_secs(10);
        o.push_control(text("hello"));
        for i in 0..5 {
            let expected = if i < 2 {
                Pushed::Queued
            } else {
                Pushed::DroppedOldest
            };
            assert_eq!(o.push_room(text(&format!("d{i}")), t0, slow), expected);
        }
        o.push_control(text("ack"));
        let mut out = Vec::new();
        assert_eq!(o.drain(&mut out), Drained::Frames);
        let got: Vec<_> = out
            .iter()
            .map(|m| m.to_text().unwrap().to_owned())
            .collect();
        assert_eq!(got, ["hello", "ack", "d3", "d4"]);
        assert_eq!(o.dropped(), 3);
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn full_for_longer_than_the_limit_evicts_and_a_flush_forgives() {
        let o = Outbox::new(1);
        let t0 = Instant::now();
        let slow = Duration::from_secs(10);
        o.push_room(text("a"), t0, slow);
        o.push_room(text("b"), t0, slow); // full since t0
        assert_eq!(
            o.push_room(text("c"), t0 + Duration::from_secs(9), slow),
            Pushed::DroppedOldest
        );
        o.flushed();
        // The clock restarts after a flush.
        assert_eq!(
            o.push_room(text("d"), t0 + Duration::from_secs(11), slow),
            Pushed::DroppedOldest
        );
        assert_eq!(
            o.push_room(text("e"), t0 + Duration::from_secs(20), slow),
            Pushed::DroppedOldest
        );
        assert_eq!(
            o.push_room(text("f"), t0 + Duration::from_secs(21), slow),
            Pushed::Evicted
        );
        assert!(o.is_evicted());
        assert_eq!(o.drain(&mut Vec::new()), Drained::Evicted);
        // Eviction is reported once; later pushes are ignored.
        assert_eq!(
            o.push_room(text("g"), t0 + Duration::from_secs(30), slow),
            Pushed::Ignored
        );
    }

    #[test]
    fn a_flood_of_control_frames_evicts_instead_of_growing() {
        let o = Outbox::new(4);
        for _ in 0..MAX_CONTROL_FRAMES + 10 {
            o.push_control(text("pong"));
        }
        assert!(o.is_evicted());
        assert!(o.len() <= MAX_CONTROL_FRAMES);
    }
}
