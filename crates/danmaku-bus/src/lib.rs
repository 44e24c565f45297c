//! The bus: how accepted comments travel from the gateway that accepted them
//! to every gateway serving the room, plus the shared state that must be seen
//! across instances (recent history, per-room online counts, live instances).
//!
//! Its API is split the way centrifuge splits its engine, one trait per
//! concern, so each can later be backed by something else:
//!
//! - [`Broker`]: a room's events (publish, subscribe) and its history;
//! - [`PresenceManager`]: the fleet's heartbeats and per-room counts;
//! - [`Controller`]: node-to-node control messages, fleet-wide;
//! - [`Health`]: whether posts can be taken now;
//! - [`Limiter`]: fleet-wide rate limits, slow mode and duplicate checks;
//! - [`StateStore`]: durable fleet state (moderation's mutes, room modes,
//!   word lists and action log), opaque to the bus.
//!
//! [`Bus`] is all of them at once, and what the gateway holds (as
//! `Arc<dyn Bus>`): [`EmbeddedBus`] keeps everything in this process (the
//! default for a single instance), [`RedisBus`] shares it across a fleet
//! through one Redis.
//!
//! Every future the bus returns is bounded by the bus itself
//! ([`BusConfig::op_timeout`]): callers never wrap a bus call in a timeout.
//!
//! Architecture invariant: only this crate knows Redis. It knows nothing of
//! WebSockets or of who is connected; it deals in rooms and events.

mod deadline;
mod embedded;
mod envelope;
mod event;
mod limit;
mod metrics;
mod redis;
mod state;
mod subscription;
mod throttle;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use danmaku_proto::{Danmaku, RoomId};

pub use crate::embedded::EmbeddedBus;
pub use crate::event::{ControlMessage, RoomEvent, CONTROL_RESYNC};
pub use crate::limit::{LimitCheck, LimitExceeded, LimitKind, Limiter};
pub use crate::metrics::BusMetrics;
pub use crate::redis::{RedisBus, RedisBusConfig};
pub use crate::state::{StateOp, StateSnapshot, StateStore, StateWrite};
pub use crate::subscription::{ControlSubscription, RecvError, Subscription};

/// A boxed future, so the bus traits can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Errors of a bus operation, as the gateway must classify them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The backend cannot be reached or did not answer within
    /// [`BusConfig::op_timeout`]; the operation had no effect (a post is not
    /// published).
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
    /// Embedded bus only: the most memory all rooms' history may take
    /// together, counted approximately (text and fields of each comment,
    /// plus a per-room overhead). Beyond it the history of the least
    /// recently written room is dropped, so the bound holds however many
    /// rooms there are. (On Redis, history lives in Redis.)
    pub history_max_bytes: usize,
    /// The most events one subscription's queue holds unread. The queue
    /// costs nothing while empty and grows only as needed, so this is a
    /// safety bound, not a preallocation: a subscriber that keeps up on
    /// average receives every event. Beyond it the oldest are shed, the
    /// reader gets [`RecvError::Lagged`], and
    /// `danmaku_bus_room_events_shed_total` counts them.
    pub room_queue_max: usize,
    /// The longest any future returned by the bus takes to resolve, all
    /// waits included; past it the operation ends with
    /// [`BusError::Unavailable`]. The bus is the one owner of this bound,
    /// so callers need no timeout of their own.
    pub op_timeout: Duration,
    /// Entries kept per [`StateStore`] log.
    pub state_log_len: usize,
    /// Embedded bus only: where [`StateStore`] state is saved (one file,
    /// `state.msgpack`, replaced atomically on each write; the directory is
    /// created if missing) so it survives a restart; `None` keeps it in
    /// memory only. (On Redis, state lives in Redis.)
    pub state_dir: Option<std::path::PathBuf>,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            history_len: 50,
            history_max_age: Duration::from_secs(600),
            history_max_bytes: 64 << 20,
            room_queue_max: 65_536,
            op_timeout: Duration::from_secs(2),
            state_log_len: 200,
            state_dir: None,
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
    /// Cumulative counters since the instance started, for fleet-wide
    /// rates (the dashboard differences them between heartbeats). Absent
    /// from a report of an older version, which reads as all zero.
    #[serde(default)]
    pub counters: InstanceCounters,
}

/// An instance's cumulative counters, as its heartbeat carries them. Each
/// only grows while the instance runs; one that went down means the
/// instance (or, for a room's count, the room) started afresh.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct InstanceCounters {
    /// Comments fanned out per local room, counted once per room (not per
    /// viewer) since the room last opened here; rooms with no viewer left
    /// out.
    #[serde(default)]
    pub room_comments: Vec<(String, u64)>,
    /// Posts published and acknowledged.
    #[serde(default)]
    pub posts_accepted: u64,
    /// Posts refused, per reject code; codes never seen left out.
    #[serde(default)]
    pub rejected: Vec<(String, u64)>,
    /// Room frames dropped because a viewer's queue was full.
    #[serde(default)]
    pub frames_dropped: u64,
    /// Connections closed as too slow.
    #[serde(default)]
    pub slow_evictions: u64,
}

/// A live instance's last heartbeat, raw: the gateway turns it into its own
/// `/api` type, so the bus does not decide what the API shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    /// What it reported.
    pub report: InstanceReport,
    /// When the bus recorded that report, in ms since the Unix epoch.
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

/// Pub/sub with history: a room's events, and the comments a late joiner is
/// shown. Publishing a comment and writing it to history are one atomic
/// step, which is what lets a reconnecting instance recover what it missed.
pub trait Broker: Send + Sync + 'static {
    /// Publishes an event to its room. `Ok` means it was handed to the
    /// backend and every subscribed instance, this one included, will
    /// deliver it (and, for a comment, that it is in history); `Err` means
    /// nothing was published, and never will be: an operation that timed
    /// out cannot take effect later. Resolves within
    /// [`BusConfig::op_timeout`].
    fn publish(&self, room: &RoomId, event: RoomEvent) -> BoxFuture<'_, Result<(), BusError>>;

    /// Starts receiving a room's events. The only delivery path: a gateway
    /// delivers what its subscription yields, including its own posts.
    /// Dropping the subscription ends the interest.
    fn subscribe(&self, room: &RoomId) -> Subscription;

    /// The room's most recent comments, oldest first. Resolves within
    /// [`BusConfig::op_timeout`].
    fn recent(&self, room: &RoomId) -> BoxFuture<'_, Result<Vec<Danmaku>, BusError>>;

    /// Removes a comment from the room's history (centrifuge's
    /// `RemoveHistory`), so late joiners never see it. `Ok(true)` if it was
    /// there. Viewers already shown it learn of it only through a published
    /// [`RoomEvent::Delete`]. Resolves within [`BusConfig::op_timeout`].
    fn remove_history(&self, room: &RoomId, id: &str) -> BoxFuture<'_, Result<bool, BusError>>;
}

/// Fleet presence: who is up, and how many viewers each room has across the
/// fleet. Every future resolves within [`BusConfig::op_timeout`].
pub trait PresenceManager: Send + Sync + 'static {
    /// Records this instance's heartbeat and per-room counts.
    fn report(&self, report: InstanceReport) -> BoxFuture<'_, Result<(), BusError>>;

    /// Viewers per room summed over live instances, rooms with none left out.
    fn cluster_rooms(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, BusError>>;

    /// The live instances' last heartbeats.
    fn instances(&self) -> BoxFuture<'_, Result<Vec<InstanceStatus>, BusError>>;

    /// Removes this instance from the fleet's view at a clean stop; failures
    /// are logged, since nothing can be done about them while stopping.
    fn leave(&self, instance_id: &str) -> BoxFuture<'_, ()>;
}

/// Node-to-node control (centrifuge's `Controller`): fleet-wide messages
/// that every instance, the sender included, receives once each. Moderation
/// state changes travel here.
pub trait Controller: Send + Sync + 'static {
    /// Sends a message to every instance. Resolves within
    /// [`BusConfig::op_timeout`].
    fn publish_control(&self, msg: ControlMessage) -> BoxFuture<'_, Result<(), BusError>>;

    /// Starts receiving control messages, from this call on.
    fn subscribe_control(&self) -> ControlSubscription;
}

/// Whether the bus can serve now, for `/readyz`.
pub trait Health: Send + Sync + 'static {
    /// Whether posts can be published now: the backend is reachable and
    /// takes writes (a backend refusing writes, out of memory say, is not
    /// ready until a write succeeds again). Never waits.
    fn readiness(&self) -> Readiness;
}

/// Everything a gateway needs from the bus, in one trait object.
pub trait Bus: Broker + PresenceManager + Controller + Health + Limiter + StateStore {}

impl<T: Broker + PresenceManager + Controller + Health + Limiter + StateStore + ?Sized> Bus for T {}

/// Milliseconds since the Unix epoch, for timestamps on the wire.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
