//! The Redis bus: many gateway instances share rooms through one Redis.
//!
//! Modules, one concern each:
//!
//! - `keys`: every key and channel name (the layout table is there);
//! - `transport`: the connections to Redis, the seam a Redis Cluster
//!   transport will plug into;
//! - `command`: the multiplexed command connection and its task (pings,
//!   Redis's clock, the write probe);
//! - `clock`: a safe reading of Redis's clock, for publish deadlines;
//! - `pubsub`: the pub/sub task, subscriptions and delivery to rooms;
//! - `rooms`: the served rooms and their subscriptions' queues;
//! - `recovery`: replay of comments missed while the pub/sub link was down;
//! - `broker`: publish (a deadline-checked script), history (`Broker`);
//! - `fleet`: heartbeats and presence (`PresenceManager`);
//! - `limits`: fleet-wide limits in one script (`Limiter`);
//! - `state`: tables and logs, written in one transaction (`StateStore`);
//! - `backoff`: reconnect delays with full jitter.
//!
//! Two connections per instance, each owned by a background task that
//! (re)connects with backoff, so neither construction nor a Redis outage
//! ever blocks the gateway. While either is down, or Redis refuses writes
//! (`command.rs`), the bus is not ready and `publish` fails at once: a post
//! is never acknowledged when this instance could not deliver it. On
//! reconnect every room still served is subscribed again, and its missed
//! comments recovered from history, before the bus turns ready; the rooms'
//! subscriptions live on, so room tasks simply see events resume.
//!
//! Every future returned resolves within `BusConfig::op_timeout` (see
//! [`crate::Broker`] and the impls for what each waits on within it).

mod backoff;
mod broker;
mod clock;
mod command;
mod fleet;
mod keys;
mod limits;
mod pubsub;
mod recovery;
mod rooms;
mod state;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::RngExt;
use tokio::sync::{broadcast, watch};

use self::command::Commands;
use self::keys::Keys;
use self::rooms::Rooms;
use self::transport::Transport;
use crate::deadline::bounded;
use crate::{
    envelope, BoxFuture, BusConfig, BusError, BusMetrics, ControlMessage, ControlSubscription,
    Controller, Health, Readiness,
};

/// Control messages buffered per control subscriber.
const CONTROL_BUFFER: usize = 256;

/// Settings of the Redis bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisBusConfig {
    /// Prefix of every key and channel, so deployments can share one Redis.
    pub prefix: String,
    /// How long a room stays subscribed after its last local viewer left,
    /// so a viewer who reconnects at once does not cost two round trips.
    pub unsubscribe_linger: Duration,
    /// A heartbeat older than this no longer counts: a killed instance
    /// leaves the fleet's counts within it.
    pub heartbeat_ttl: Duration,
    /// Settings shared with the embedded bus (history, room queues, and
    /// `op_timeout`, which also bounds connecting, each command and each
    /// ping). `history_max_bytes` does not apply: history lives in Redis.
    pub bus: BusConfig,
    /// How often each connection is pinged, so a silent loss is noticed.
    /// Each ping of the command connection also reads Redis's clock and
    /// probes that Redis takes writes.
    pub ping_interval: Duration,
    /// Longest wait between reconnection attempts (the cap of the jittered
    /// backoff).
    pub max_backoff: Duration,
}

impl Default for RedisBusConfig {
    fn default() -> Self {
        RedisBusConfig {
            prefix: "danmaku:".into(),
            unsubscribe_linger: Duration::from_secs(10),
            heartbeat_ttl: Duration::from_secs(15),
            bus: BusConfig::default(),
            ping_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// The bus shared through Redis: the choice for more than one instance.
///
/// Dropping it stops its background tasks and closes its connections.
pub struct RedisBus {
    inner: Arc<Inner>,
    /// Dropped with the bus; its receivers tell the background tasks to end.
    _stop: watch::Sender<()>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("prefix", &self.inner.keys.prefix())
            .finish_non_exhaustive()
    }
}

/// State shared by the bus handle and its two background tasks.
struct Inner {
    config: RedisBusConfig,
    keys: Keys,
    metrics: BusMetrics,
    transport: Transport,
    commands: Commands,
    /// This bus's write-probe key, unique per bus (`keys.rs`).
    probe_key: String,
    rooms: Arc<Rooms>,
    /// Control messages read from the pub/sub link, to every
    /// [`ControlSubscription`].
    control: broadcast::Sender<ControlMessage>,
    /// `Err(why)` while the pub/sub link is down or not yet resubscribed.
    pubsub_health: Mutex<Result<(), String>>,
}

impl RedisBus {
    /// A bus on the Redis at `url`. Only checks the URL: connecting happens
    /// in background tasks that retry until Redis answers, so a gateway can
    /// start (and take viewers) while Redis is down. Must be called within a
    /// Tokio runtime.
    pub fn new(
        url: &str,
        config: RedisBusConfig,
        metrics: BusMetrics,
    ) -> Result<RedisBus, BusError> {
        let transport = Transport::open(url, config.bus.op_timeout)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| BusError::Config("the redis bus needs a Tokio runtime".into()))?;
        let keys = Keys::new(&config.prefix);
        let token: u64 = rand::rng().random_range(0..u64::MAX);
        let inner = Arc::new(Inner {
            probe_key: keys.probe(&format!("{token:016x}")),
            keys,
            rooms: Arc::new(Rooms::new(config.bus.room_queue_max, metrics.clone())),
            config,
            commands: Commands::new(metrics.write_refusals.clone()),
            metrics,
            transport,
            control: broadcast::channel(CONTROL_BUFFER).0,
            pubsub_health: Mutex::new(Err("redis unreachable: connecting".into())),
        });
        let (stop, stopped) = watch::channel(());
        runtime.spawn(command::run(inner.clone(), stopped.clone()));
        runtime.spawn(pubsub::run(inner.clone(), stopped));
        Ok(RedisBus { inner, _stop: stop })
    }
}

impl Inner {
    fn op_timeout(&self) -> Duration {
        self.config.bus.op_timeout
    }

    fn readiness(&self) -> Readiness {
        let command = self.commands.health();
        let pubsub = self.pubsub_health.lock().clone();
        match (command, pubsub) {
            (Ok(()), Ok(())) => Readiness::Ready,
            (Err(why), _) | (_, Err(why)) => Readiness::NotReady(why),
        }
    }

    /// `Ok` if ready, the reason as an error otherwise.
    fn check_ready(&self) -> Result<(), BusError> {
        match self.readiness() {
            Readiness::Ready => Ok(()),
            Readiness::NotReady(why) => Err(BusError::Unavailable(why)),
        }
    }

    fn pubsub_up(&self) -> bool {
        self.pubsub_health.lock().is_ok()
    }

    fn set_pubsub_health(&self, health: Result<(), String>) {
        *self.pubsub_health.lock() = health;
    }
}

impl Health for RedisBus {
    fn readiness(&self) -> Readiness {
        self.inner.readiness()
    }
}

impl Controller for RedisBus {
    /// Fails at once unless the bus is ready (this instance would not
    /// receive its own message otherwise); resolves within `op_timeout`.
    /// Messages published while an instance's pub/sub link is down are not
    /// replayed to it; once it is back, its control subscribers receive
    /// [`crate::CONTROL_RESYNC`] instead, and reload.
    fn publish_control(&self, msg: ControlMessage) -> BoxFuture<'_, Result<(), BusError>> {
        let inner = &self.inner;
        Box::pin(bounded(inner.op_timeout(), "control message", async move {
            inner.check_ready()?;
            let bytes = envelope::encode_control(&msg)
                .map_err(|e| BusError::Unavailable(format!("encoding the control message: {e}")))?;
            let mut pipe = ::redis::pipe();
            pipe.cmd("PUBLISH")
                .arg(inner.keys.control())
                .arg(bytes)
                .ignore();
            inner.commands.query::<()>("control message", &pipe).await
        }))
    }

    fn subscribe_control(&self) -> ControlSubscription {
        ControlSubscription::new(self.inner.control.subscribe())
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}
