//! The danmaku gateway: holds client WebSockets per room, runs posts through
//! moderation onto the bus, and fans each room's comments out to its local
//! viewers, encoded once and batched under load.
//!
//! Entry point: [`run`], which serves on a bound listener until a shutdown
//! future completes. The binary only parses config, sets up tracing, binds
//! and calls it; tests call it too, with their own listener and shutdown.
//!
//! Architecture invariant: only this crate knows WebSocket and HTTP.

mod admin;
mod api;
pub mod auth;
mod client_addr;
mod cmd;
pub mod config;
mod conn;
mod frame;
mod http;
mod ids;
mod live;
mod metrics;
mod modstate;
mod origin;
mod outbox;
mod presence;
pub mod probe;
mod rooms;
mod server;
mod tls;
mod web;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use danmaku_bus::{Bus, EmbeddedBus};
use danmaku_moderation::Moderator;
use danmaku_proto::{Limits, MAX_NONCE_BYTES};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::api::{InstanceInfo, InstancesResponse, RoomCount, RoomsResponse, StatsResponse};
pub use crate::client_addr::Cidr;
pub use crate::config::Settings;
pub use crate::live::{LiveHistory, LiveInstance, LivePoint, LiveRoom, LiveSnapshot};
pub use crate::modstate::{ActionRecord, RoomModeration};
pub use crate::origin::Origin;

use crate::config::{ms, ConnConfig};
use crate::ids::IdGen;
use crate::metrics::Metrics;
use crate::origin::AllowedOrigins;
use crate::presence::{Heartbeat, Presence};
use crate::rooms::Rooms;

/// Errors that stop a gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The settings cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Serving failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// State shared by every connection of one gateway: what a connection and
/// the HTTP handlers need, and nothing only `run` needs.
pub(crate) struct Gateway {
    pub(crate) instance_id: String,
    /// Per-connection settings, built once.
    pub(crate) conn: ConnConfig,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) rooms: Arc<Rooms>,
    pub(crate) presence: Arc<Presence>,
    /// The fleet's live view for the dashboard, sampled in the background.
    pub(crate) live: live::Live,
    /// The moderation rules, kept in step with the fleet; posts are judged
    /// by its moderator.
    pub(crate) modstate: Arc<modstate::ModState>,
    /// `admin_token`; empty when none is configured.
    pub(crate) admin_token: String,
    /// `api_read_token`; empty leaves the read API open.
    pub(crate) api_read_token: String,
    /// Checks tokens, at the handshake and on `auth`.
    pub(crate) auth: auth::Verifier,
    /// Origins whose pages may open WebSockets.
    pub(crate) origins: AllowedOrigins,
    /// Announced in every `hello`.
    pub(crate) limits: Limits,
    pub(crate) ids: IdGen,
    /// The one registry; `connections` doubles as the admission count.
    pub(crate) metrics: Metrics,
    /// Flips to true once when shutdown starts.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// What connections listen to: a ping tick every `ping_interval_ms`
    /// and the start of shutdown. A few shared timers instead of one per
    /// connection keep idle connections small; there are `PULSE_PHASES` of
    /// them, ticked in turn, so connections do not all ping at once.
    pulses: Vec<watch::Receiver<Pulse>>,
    /// Most open WebSockets.
    max_connections: usize,
    conn_seq: AtomicU64,
}

/// The gateway-wide signal connections wait on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pulse {
    /// Counts ping intervals since start.
    pub(crate) tick: u64,
    /// Set once shutdown starts.
    pub(crate) stopping: bool,
}

/// A WebSocket slot; dropping it frees the slot.
pub(crate) struct ConnSlot(Arc<Gateway>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.metrics.connections.dec();
    }
}

impl Gateway {
    /// Takes a connection slot unless `max_connections` are open.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<ConnSlot> {
        let max = self.max_connections as i64;
        self.metrics
            .connections
            .inner()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnSlot(self.clone()))
    }

    /// Open WebSocket connections.
    pub(crate) fn connections(&self) -> usize {
        self.metrics.connections.get().max(0) as usize
    }

    /// A number for a new connection, unique on this instance.
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.conn_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// The pulse connection `conn_id` listens to.
    pub(crate) fn pulse(&self, conn_id: u64) -> watch::Receiver<Pulse> {
        self.pulses[conn_id as usize % self.pulses.len()].clone()
    }
}

/// Builds the bus the settings ask for: embedded unless `redis_url` is set.
fn build_bus(settings: &Settings, metrics: &Metrics) -> Result<Arc<dyn Bus>, GatewayError> {
    if settings.redis_url.is_empty() {
        // A saved moderation state that cannot be read stops the start:
        // serving without the mutes and word lists it holds would quietly
        // undo what moderators did. The message names the file.
        let bus = EmbeddedBus::open(settings.bus_config(), metrics.bus.clone())
            .map_err(|e| GatewayError::Config(format!("data_dir: {e}")))?;
        return Ok(Arc::new(bus));
    }
    // Never connects here: the bus retries in the background, so the
    // gateway serves (not ready) while Redis is down.
    let config = danmaku_bus::RedisBusConfig {
        prefix: settings.redis_prefix.clone(),
        unsubscribe_linger: ms(settings.unsubscribe_linger_ms),
        heartbeat_ttl: ms(settings.heartbeat_ttl_ms),
        bus: settings.bus_config(),
        ..danmaku_bus::RedisBusConfig::default()
    };
    let bus = danmaku_bus::RedisBus::new(&settings.redis_url, config, metrics.bus.clone())
        .map_err(|e| GatewayError::Config(e.to_string()))?;
    tracing::info!(prefix = %settings.redis_prefix, "Using the Redis bus");
    Ok(Arc::new(bus))
}

/// The words of `blocklist_file`, or none when it is not set; a file that
/// cannot be read or parsed stops the start, naming the line.
fn load_blocklist(
    settings: &Settings,
) -> Result<Vec<(String, danmaku_moderation::WordAction)>, GatewayError> {
    if settings.blocklist_file.is_empty() {
        return Ok(Vec::new());
    }
    let path = &settings.blocklist_file;
    let text = std::fs::read_to_string(path)
        .map_err(|e| GatewayError::Config(format!("blocklist_file {path}: {e}")))?;
    danmaku_moderation::parse_blocklist(&text)
        .map_err(|e| GatewayError::Config(format!("blocklist_file {path}: {e}")))
}

/// Pulse channels; connection n listens to pulse n % PULSE_PHASES.
const PULSE_PHASES: usize = 8;

/// Ticks the pulses in turn, each once every `every`, until shutdown; then
/// marks them all stopping.
async fn run_pulses(
    pulses: Vec<watch::Sender<Pulse>>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let step = (every / pulses.len() as u32).max(Duration::from_millis(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + step, step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for phase in (0..pulses.len()).cycle() {
        tokio::select! {
            _ = tick.tick() => pulses[phase].send_modify(|p| p.tick += 1),
            _ = shutdown.wait_for(|stopping| *stopping) => break,
        }
    }
    for pulse in &pulses {
        pulse.send_modify(|p| p.stopping = true);
    }
}

/// Serves HTTP and WebSocket on `listener` until `shutdown` completes, then
/// stops accepting, closes every socket with 1001, waits up to
/// `shutdown_grace_ms` for them, drops what is left, leaves the fleet and
/// returns: within `shutdown_grace_ms` plus the bus's own bound on `leave`,
/// whatever clients do.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let moderator =
        Moderator::new(settings.policy()).map_err(|e| GatewayError::Config(e.to_string()))?;
    let seed = load_blocklist(&settings)?;
    // Before anything serves: a certificate or key that cannot be used
    // stops the start, naming the file.
    let tls = tls::acceptor(&settings.tls_cert_file, &settings.tls_key_file)
        .map_err(|e| GatewayError::Config(e.to_string()))?;
    let instance_id = settings.instance_id();
    let metrics = Metrics::new(&instance_id);
    let bus = build_bus(&settings, &metrics)?;
    let modstate = Arc::new(modstate::ModState::new(
        bus.clone(),
        moderator,
        metrics.actions.clone(),
        instance_id.clone(),
        seed,
    ));
    let address = if settings.public_address.is_empty() {
        listener.local_addr()?.to_string()
    } else {
        settings.public_address.clone()
    };
    let presence = Arc::new(Presence::default());
    let rooms = Rooms::new(
        bus.clone(),
        settings.fanout_config(),
        presence.clone(),
        metrics.fanout.clone(),
        metrics.rooms.clone(),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let (pulse_txs, pulse_rxs): (Vec<_>, Vec<_>) = (0..PULSE_PHASES)
        .map(|_| watch::channel(Pulse::default()))
        .unzip();
    let limits = Limits {
        max_text_chars: settings.max_text_chars,
        max_frame_bytes: settings.max_frame_bytes,
        max_nonce_bytes: MAX_NONCE_BYTES as u32,
        post_rate_count: settings.post_rate_count,
        post_window_ms: settings.post_window_ms,
        post_burst: settings.post_burst,
    };
    let gw = Arc::new(Gateway {
        instance_id: instance_id.clone(),
        conn: settings.conn_config(),
        bus: bus.clone(),
        rooms: rooms.clone(),
        presence: presence.clone(),
        live: live::Live::new(instance_id.clone(), ms(settings.heartbeat_interval_ms)),
        modstate: modstate.clone(),
        admin_token: settings.admin_token.0.clone(),
        api_read_token: settings.api_read_token.0.clone(),
        auth: auth::Verifier::new(&settings),
        origins: AllowedOrigins::new(settings.allowed_origins.clone()),
        limits,
        ids: IdGen::new(),
        metrics,
        shutdown: stop_rx.clone(),
        pulses: pulse_rxs,
        max_connections: settings.max_connections,
        conn_seq: AtomicU64::new(0),
    });
    let heartbeat = Heartbeat {
        id: instance_id.clone(),
        address,
        started_ms: danmaku_bus::now_ms(),
        interval: ms(settings.heartbeat_interval_ms),
        counters: gw.metrics.report_counters(),
    };
    tokio::spawn(presence::run_heartbeat(
        heartbeat,
        rooms,
        presence,
        bus.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(live::run_sampler(gw.clone(), stop_rx.clone()));
    tokio::spawn(run_pulses(
        pulse_txs,
        ms(settings.ping_interval_ms),
        stop_rx.clone(),
    ));
    tokio::spawn(
        modstate
            .clone()
            .run(ms(settings.limiter_evict_interval_ms), stop_rx),
    );
    // Posts wait for the rules; give them a moment to load before serving,
    // so a healthy store means no post is refused for it. A store that is
    // down does not stop the start: posts are refused `unavailable` (and
    // /readyz says why) until it answers.
    let loading = tokio::time::Instant::now() + 2 * ms(settings.bus_timeout_ms);
    while !modstate.is_ready() && tokio::time::Instant::now() < loading {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    tracing::info!(
        addr = %listener.local_addr()?,
        instance = %instance_id,
        tls = tls.is_some(),
        "Gateway listening"
    );
    let server = Arc::new(server::Server::new(
        settings.server_config(),
        tls,
        http::router(gw.clone()),
        gw.metrics.server.clone(),
    ));
    let draining = server::accept_until(listener, server, gw.shutdown.clone(), shutdown).await;
    tracing::info!("Shutting down: closing sockets with 1001");
    let _ = stop_tx.send(true);

    // Everything below is bounded by the deadline, whatever clients do:
    // HTTP connections still open then are dropped, and WebSockets have
    // been told 1001 and are not waited for any longer.
    let deadline = tokio::time::Instant::now() + ms(settings.shutdown_grace_ms);
    draining.finish(deadline).await;
    while gw.connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = gw.connections();
    if left > 0 {
        tracing::warn!(left, "Grace period over with sockets still open");
    }
    // The bus bounds this call itself.
    bus.leave(&instance_id).await;
    tracing::info!("Gateway stopped");
    Ok(())
}
