//! The bus: how accepted comments travel from the gateway that accepted them
//! to every gateway serving the room, plus the shared state that must be seen
//! across instances (recent history, per-room online counts, live instances).
//!
//! The gateway talks to one [`Bus`] trait object and never knows which
//! implementation it has: [`EmbeddedBus`] keeps everything in this process
//! (the default for a single instance), [`RedisBus`] shares it across a
//! fleet through one Redis.
//!
//! Architecture invariant: only this crate knows Redis. It knows nothing of
//! WebSockets or of who is connected; it deals in rooms and comments.

mod embedded;
mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use danmaku_proto::{Danmaku, RoomId};
use tokio::sync::broadcast;

pub use crate::embedded::EmbeddedBus;
pub use crate::redis::{RedisBus, RedisBusConfig};

/// A boxed future, so [`Bus`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Errors of a bus operation, as the gateway must classify them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The backend cannot be reached or did not answer in time; the operation
    /// had no effect (a post is not published).
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The bus cannot be built from its settings (a malformed Redis URL, or
    /// no async runtime to run its connections on).
    #[error("invalid bus configuration: {0}")]
    Config(String),
}

/// Settings shared by every bus implementation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusConfig {
    /// Comments kept per room for `hello.recent`.
    pub history_len: usize,
    /// Comments older than this are not sent in `hello.recent`.
    pub history_max_age: Duration,
    /// Comments buffered per room between the bus and a lagging room task;
    /// beyond this the oldest are skipped for that room on this instance.
    pub room_buffer: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            history_len: 50,
            history_max_age: Duration::from_secs(600),
            room_buffer: 256,
        }
    }
}

/// What an instance tells the cluster about itself on every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct InstanceReport {
    /// The instance id (`DANMAKU_INSTANCE_ID`).
    pub id: String,
    /// The address clients reach it at.
    pub address: String,
    /// When it started, in ms since the Unix epoch.
    pub started_ms: u64,
    /// Local connections per room, rooms with none left out.
    pub rooms: Vec<(String, u64)>,
}

/// A live instance, as `GET /api/instances` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstanceInfo {
    /// The instance id.
    pub id: String,
    /// The address clients reach it at.
    pub address: String,
    /// Its WebSocket connections.
    pub connections: u64,
    /// Rooms with at least one of its connections.
    pub rooms: u64,
    /// Seconds since it started.
    pub uptime_s: u64,
    /// When it last reported, in ms since the Unix epoch.
    pub last_heartbeat_ms: u64,
}

/// Whether the bus can take posts now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Posts are published and delivered.
    Ready,
    /// Posts would fail; the reason says why (for `/readyz`).
    NotReady(String),
}

/// Why [`Subscription::recv`] returned without a comment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// The room task fell behind and this many comments were skipped.
    #[error("subscription lagged by {0} comments")]
    Lagged(u64),
    /// The bus is gone; no more comments will come.
    #[error("bus closed")]
    Closed,
}

/// A live subscription to one room: each comment published to the room
/// arrives once, in publish order. Dropping it unsubscribes.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Danmaku>>,
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
    pub fn new(rx: broadcast::Receiver<Arc<Danmaku>>, guard: Box<dyn Send + Sync>) -> Self {
        Subscription { rx, _guard: guard }
    }

    /// The next comment.
    pub async fn recv(&mut self) -> Result<Arc<Danmaku>, RecvError> {
        self.rx.recv().await.map_err(|e| match e {
            broadcast::error::RecvError::Lagged(n) => RecvError::Lagged(n),
            broadcast::error::RecvError::Closed => RecvError::Closed,
        })
    }

    /// The next comment if one is already waiting; `Ok(None)` if none is.
    pub fn try_recv(&mut self) -> Result<Option<Arc<Danmaku>>, RecvError> {
        match self.rx.try_recv() {
            Ok(d) => Ok(Some(d)),
            Err(broadcast::error::TryRecvError::Empty) => Ok(None),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
            Err(broadcast::error::TryRecvError::Closed) => Err(RecvError::Closed),
        }
    }
}

/// The bus, as the gateway sees it.
pub trait Bus: Send + Sync + 'static {
    /// Publishes an accepted comment to its room. `Ok` means it was handed
    /// to the backend and every subscribed instance, this one included, will
    /// deliver it; `Err` means nothing was published.
    fn publish(&self, comment: Arc<Danmaku>) -> BoxFuture<'_, Result<(), BusError>>;

    /// Starts receiving a room's comments. The only delivery path: a
    /// gateway delivers what its subscription yields, including its own posts.
    fn subscribe(&self, room: &RoomId) -> Subscription;

    /// The room's most recent comments, oldest first.
    fn recent(&self, room: &RoomId) -> BoxFuture<'_, Result<Vec<Danmaku>, BusError>>;

    /// Records this instance's heartbeat and per-room counts.
    fn report(&self, report: InstanceReport) -> BoxFuture<'_, Result<(), BusError>>;

    /// Viewers per room summed over live instances, rooms with none left out.
    fn cluster_rooms(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, BusError>>;

    /// The live instances.
    fn instances(&self) -> BoxFuture<'_, Result<Vec<InstanceInfo>, BusError>>;

    /// Whether posts can be published now.
    fn readiness(&self) -> Readiness;

    /// Removes this instance from the cluster's view at a clean stop.
    fn leave(&self, instance_id: &str) -> BoxFuture<'_, ()>;
}

/// Milliseconds since the Unix epoch, for timestamps on the wire.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
