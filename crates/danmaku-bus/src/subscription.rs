//! Receiving ends handed out by the bus: [`Subscription`] for one room's
//! events, [`ControlSubscription`] for the fleet's control messages.
//!
//! A room [`Subscription`] reads its own queue ([`Queue`]), which the bus
//! fills through the room's [`Fanout`], one push per subscription. The
//! queue is what lets a subscriber that keeps up on average ride out a
//! burst without losing anything:
//!
//! - it costs nothing while empty (no preallocated ring: an idle room's
//!   subscription holds no slots), grows on demand and shrinks back as it
//!   is read, freeing its memory once drained;
//! - it is bounded by [`crate::BusConfig::room_queue_max`] events (each an
//!   `Arc` or a short id, so a few MB per room at worst). Beyond the bound
//!   the oldest event is shed, the reader is told how many with
//!   [`RecvError::Lagged`] before its next event, and each shed event is
//!   counted in `danmaku_bus_room_events_shed_total`;
//! - pushing never waits: one short lock per subscription, no await, so the
//!   publish path (a poster's task on the embedded bus, the single pub/sub
//!   reader on Redis) stays cheap and a slow room never holds up another.
//!
//! Control messages are few and small: a bounded broadcast is enough there.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{broadcast, Notify};

use crate::{ControlMessage, RoomEvent, CONTROL_RESYNC};

/// Why a `recv` returned without an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// The reader fell behind and this many events were skipped.
    #[error("subscription lagged by {0} events")]
    Lagged(u64),
    /// The bus is gone; no more events will come.
    #[error("bus closed")]
    Closed,
}

impl From<broadcast::error::RecvError> for RecvError {
    fn from(e: broadcast::error::RecvError) -> Self {
        match e {
            broadcast::error::RecvError::Lagged(n) => RecvError::Lagged(n),
            broadcast::error::RecvError::Closed => RecvError::Closed,
        }
    }
}

/// A queue above this capacity is halved once it is a quarter full, so a
/// burst's memory is given back while the reader catches up.
const SHRINK_ABOVE: usize = 64;

/// One subscription's queue of room events: single reader, many pushers.
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    /// Wakes the reader after a push or the close. `notify_one` keeps a
    /// permit when the reader is not waiting yet, so no wake-up is lost.
    ready: Notify,
    /// Most events held; beyond it the oldest is shed.
    max: usize,
    /// `danmaku_bus_room_events_shed_total`.
    shed_metric: Counter,
}

struct QueueState {
    items: VecDeque<RoomEvent>,
    /// Events shed since the reader last heard of it.
    shed: u64,
    /// The bus side is gone: once drained, the reader gets `Closed`.
    closed: bool,
}

impl Queue {
    pub(crate) fn new(max: usize, shed_metric: Counter) -> Arc<Queue> {
        Arc::new(Queue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                shed: 0,
                closed: false,
            }),
            ready: Notify::new(),
            max: max.max(1),
            shed_metric,
        })
    }

    /// Appends an event, shedding the oldest beyond the bound. Never waits.
    pub(crate) fn push(&self, event: RoomEvent) {
        {
            let mut st = self.state.lock();
            if st.closed {
                return;
            }
            if st.items.len() >= self.max {
                st.items.pop_front();
                st.shed += 1;
                self.shed_metric.inc();
            }
            st.items.push_back(event);
        }
        self.ready.notify_one();
    }

    /// No more events will come; the reader drains what is left first.
    fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_one();
    }

    /// The next event if one is waiting, `Ok(None)` if none is; a pending
    /// skip is reported before the events after it.
    fn take(&self) -> Result<Option<RoomEvent>, RecvError> {
        let mut st = self.state.lock();
        if st.shed > 0 {
            return Err(RecvError::Lagged(std::mem::take(&mut st.shed)));
        }
        match st.items.pop_front() {
            Some(event) => {
                let (len, cap) = (st.items.len(), st.items.capacity());
                if len == 0 {
                    // Drained: an idle subscription holds no memory.
                    st.items = VecDeque::new();
                } else if cap > SHRINK_ABOVE && len <= cap / 4 {
                    st.items.shrink_to(cap / 2);
                }
                Ok(Some(event))
            }
            None if st.closed => Err(RecvError::Closed),
            None => Ok(None),
        }
    }

    async fn recv(&self) -> Result<RoomEvent, RecvError> {
        loop {
            if let Some(event) = self.take()? {
                return Ok(event);
            }
            self.ready.notified().await;
        }
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.state.lock().items.capacity()
    }
}

/// The bus side of a room: every subscription's queue, each event pushed
/// to each. Dropping it (the bus or the room is gone) closes the queues.
#[derive(Default)]
pub(crate) struct Fanout {
    queues: Vec<(u64, Arc<Queue>)>,
    next_id: u64,
}

impl Fanout {
    /// A new subscription's queue, and the id that removes it.
    pub(crate) fn add(&mut self, max: usize, shed_metric: Counter) -> (u64, Arc<Queue>) {
        let id = self.next_id;
        self.next_id += 1;
        let queue = Queue::new(max, shed_metric);
        self.queues.push((id, queue.clone()));
        (id, queue)
    }

    /// Forgets a dropped subscription's queue.
    pub(crate) fn remove(&mut self, id: u64) {
        self.queues.retain(|(i, _)| *i != id);
    }

    /// Live subscriptions.
    pub(crate) fn len(&self) -> usize {
        self.queues.len()
    }

    /// Pushes the event to every subscription: O(subscriptions), never
    /// waits. Cloning an event is cheap (an `Arc`, or a short id).
    pub(crate) fn send(&self, event: RoomEvent) {
        if let Some(((_, last), rest)) = self.queues.split_last() {
            for (_, queue) in rest {
                queue.push(event.clone());
            }
            last.push(event);
        }
    }
}

impl Drop for Fanout {
    fn drop(&mut self) {
        for (_, queue) in &self.queues {
            queue.close();
        }
    }
}

/// A live subscription to one room: each event published to the room
/// arrives once, in publish order. Dropping it unsubscribes.
pub struct Subscription {
    queue: Arc<Queue>,
    /// Dropped with the subscription; tells the bus this interest ended.
    _guard: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// Wraps a queue and a guard whose drop releases the interest.
    pub(crate) fn new(queue: Arc<Queue>, guard: Box<dyn Send + Sync>) -> Self {
        Subscription {
            queue,
            _guard: guard,
        }
    }

    /// The next event. Cancel-safe: an event is only taken when returned.
    pub async fn recv(&mut self) -> Result<RoomEvent, RecvError> {
        self.queue.recv().await
    }

    /// The next event if one is already waiting; `Ok(None)` if none is.
    pub fn try_recv(&mut self) -> Result<Option<RoomEvent>, RecvError> {
        self.queue.take()
    }
}

/// `Ok(None)` for an empty channel, the error otherwise.
fn try_recv<T: Clone>(rx: &mut broadcast::Receiver<T>) -> Result<Option<T>, RecvError> {
    match rx.try_recv() {
        Ok(v) => Ok(Some(v)),
        Err(broadcast::error::TryRecvError::Empty) => Ok(None),
        Err(broadcast::error::TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
        Err(broadcast::error::TryRecvError::Closed) => Err(RecvError::Closed),
    }
}

/// A live subscription to the fleet's control messages: each message
/// published after it was made arrives once, in publish order.
///
/// When messages may have been missed, a [`CONTROL_RESYNC`] message takes
/// their place, so a receiver has one way to learn it must reload: the
/// Redis bus sends one after its pub/sub link comes (back) up, and a
/// reader that fell more than the buffer behind gets one instead of the
/// messages it lost. So `recv` never returns [`RecvError::Lagged`]; its
/// only error is [`RecvError::Closed`], once the bus is gone.
#[derive(Debug)]
pub struct ControlSubscription {
    rx: broadcast::Receiver<ControlMessage>,
}

/// What a lagging reader receives in place of the messages it lost.
fn resync() -> ControlMessage {
    ControlMessage {
        origin: String::new(),
        kind: CONTROL_RESYNC.to_owned(),
        body: bytes::Bytes::new(),
    }
}

impl ControlSubscription {
    /// Wraps a receiver of the bus's control broadcast.
    pub fn new(rx: broadcast::Receiver<ControlMessage>) -> Self {
        ControlSubscription { rx }
    }

    /// The next control message, or [`CONTROL_RESYNC`] if some were lost.
    pub async fn recv(&mut self) -> Result<ControlMessage, RecvError> {
        match self.rx.recv().await {
            Ok(msg) => Ok(msg),
            Err(broadcast::error::RecvError::Lagged(_)) => Ok(resync()),
            Err(broadcast::error::RecvError::Closed) => Err(RecvError::Closed),
        }
    }

    /// The next control message if one is already waiting (or
    /// [`CONTROL_RESYNC`] if some were lost); `Ok(None)` if none is.
    pub fn try_recv(&mut self) -> Result<Option<ControlMessage>, RecvError> {
        match try_recv(&mut self.rx) {
            Err(RecvError::Lagged(_)) => Ok(Some(resync())),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delete(i: usize) -> RoomEvent {
        RoomEvent::Delete {
            id: format!("d{i}"),
        }
    }

    fn sub(fanout: &mut Fanout, max: usize, shed: &Counter) -> Subscription {
        let (_, queue) = fanout.add(max, shed.clone());
        Subscription::new(queue, Box::new(()))
    }

    #[tokio::test]
    async fn a_queue_grows_for_a_burst_keeps_order_and_gives_its_memory_back() {
        let shed = Counter::default();
        let mut fanout = Fanout::default();
        let mut s = sub(&mut fanout, 65_536, &shed);
        assert_eq!(s.queue.capacity(), 0, "nothing preallocated");
        for i in 0..20_000 {
            fanout.send(delete(i));
        }
        assert!(s.queue.capacity() >= 20_000);
        for i in 0..10_000 {
            assert_eq!(s.recv().await.unwrap(), delete(i));
        }
        for i in 10_000..20_000 {
            assert_eq!(s.try_recv().unwrap(), Some(delete(i)));
            let cap = s.queue.capacity();
            let left = 20_000 - i - 1;
            assert!(cap <= (4 * left).max(SHRINK_ABOVE * 2), "{cap} for {left}");
        }
        assert_eq!(s.try_recv().unwrap(), None);
        assert_eq!(s.queue.capacity(), 0, "drained: memory given back");
        assert_eq!(shed.get(), 0);
    }

    #[tokio::test]
    async fn beyond_the_bound_the_oldest_are_shed_reported_and_counted() {
        let shed = Counter::default();
        let mut fanout = Fanout::default();
        let mut small = sub(&mut fanout, 3, &shed);
        let mut big = sub(&mut fanout, 100, &shed);
        for i in 0..10 {
            fanout.send(delete(i));
        }
        assert_eq!(small.recv().await, Err(RecvError::Lagged(7)));
        for i in 7..10 {
            assert_eq!(small.recv().await.unwrap(), delete(i));
        }
        for i in 0..10 {
            assert_eq!(big.recv().await.unwrap(), delete(i), "each its own queue");
        }
        assert_eq!(shed.get(), 7);
    }

    #[tokio::test]
    async fn a_waiting_reader_is_woken_and_a_dropped_fanout_closes_after_the_rest() {
        let shed = Counter::default();
        let mut fanout = Fanout::default();
        let (id, queue) = fanout.add(8, shed.clone());
        let mut s = Subscription::new(queue, Box::new(()));
        let reader = tokio::spawn(async move {
            let first = s.recv().await;
            let second = s.recv().await;
            let third = s.recv().await;
            (first, second, third)
        });
        tokio::task::yield_now().await;
        fanout.send(delete(1));
        fanout.send(delete(2));
        drop(fanout);
        let (first, second, third) = reader.await.unwrap();
        assert_eq!(first.unwrap(), delete(1));
        assert_eq!(second.unwrap(), delete(2));
        assert_eq!(third, Err(RecvError::Closed));

        let mut fanout = Fanout::default();
        let (id2, _q) = fanout.add(8, shed);
        assert_eq!(fanout.len(), 1);
        fanout.remove(id2);
        fanout.remove(id);
        assert_eq!(fanout.len(), 0);
    }

    #[tokio::test]
    async fn a_lagging_control_reader_gets_a_resync_in_place_of_what_it_lost() {
        let (tx, rx) = broadcast::channel(2);
        let mut sub = ControlSubscription::new(rx);
        let mut other = ControlSubscription::new(tx.subscribe());
        let msg = |n: u8| ControlMessage {
            origin: "gw".into(),
            kind: "k".into(),
            body: bytes::Bytes::from(vec![n]),
        };
        for n in 0..5 {
            tx.send(msg(n)).unwrap();
        }
        assert_eq!(sub.recv().await.unwrap(), resync());
        assert_eq!(sub.recv().await.unwrap(), msg(3));
        assert_eq!(sub.try_recv().unwrap(), Some(msg(4)));
        assert_eq!(sub.try_recv().unwrap(), None);
        assert_eq!(other.try_recv().unwrap(), Some(resync()));
        assert_eq!(other.try_recv().unwrap(), Some(msg(3)));
        assert_eq!(resync().kind, CONTROL_RESYNC);
        drop(tx);
        assert_eq!(other.recv().await.unwrap(), msg(4));
        assert_eq!(other.recv().await, Err(RecvError::Closed));
    }
}
