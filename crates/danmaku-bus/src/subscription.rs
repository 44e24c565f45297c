//! Receiving ends handed out by the bus: [`Subscription`] for one room's
//! events, [`ControlSubscription`] for the fleet's control messages. Both
//! are bounded broadcast receivers: a reader that falls behind skips the
//! oldest and is told how many, it never holds up the bus.

use tokio::sync::broadcast;

use crate::{ControlMessage, RoomEvent};

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

/// `Ok(None)` for an empty channel, the error otherwise.
fn try_recv<T: Clone>(rx: &mut broadcast::Receiver<T>) -> Result<Option<T>, RecvError> {
    match rx.try_recv() {
        Ok(v) => Ok(Some(v)),
        Err(broadcast::error::TryRecvError::Empty) => Ok(None),
        Err(broadcast::error::TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
        Err(broadcast::error::TryRecvError::Closed) => Err(RecvError::Closed),
    }
}

/// A live subscription to one room: each event published to the room
/// arrives once, in publish order. Dropping it unsubscribes.
pub struct Subscription {
    rx: broadcast::Receiver<RoomEvent>,
    /// Dropped with the subscription; tells the bus this interest ended.
    _guard: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// Wraps a receiver and a guard whose drop releases the interest.
    pub fn new(rx: broadcast::Receiver<RoomEvent>, guard: Box<dyn Send + Sync>) -> Self {
        Subscription { rx, _guard: guard }
    }

    /// The next event.
    pub async fn recv(&mut self) -> Result<RoomEvent, RecvError> {
        Ok(self.rx.recv().await?)
    }

    /// The next event if one is already waiting; `Ok(None)` if none is.
    pub fn try_recv(&mut self) -> Result<Option<RoomEvent>, RecvError> {
        try_recv(&mut self.rx)
    }
}

/// A live subscription to the fleet's control messages: each message
/// published after it was made arrives once, in publish order.
#[derive(Debug)]
pub struct ControlSubscription {
    rx: broadcast::Receiver<ControlMessage>,
}

impl ControlSubscription {
    /// Wraps a receiver of the bus's control broadcast.
    pub fn new(rx: broadcast::Receiver<ControlMessage>) -> Self {
        ControlSubscription { rx }
    }

    /// The next control message.
    pub async fn recv(&mut self) -> Result<ControlMessage, RecvError> {
        Ok(self.rx.recv().await?)
    }

    /// The next control message if one is already waiting; `Ok(None)` if
    /// none is.
    pub fn try_recv(&mut self) -> Result<Option<ControlMessage>, RecvError> {
        try_recv(&mut self.rx)
    }
}
