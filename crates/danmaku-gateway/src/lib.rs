//! The danmaku gateway: holds client WebSockets per room, runs posts through
//! moderation onto the bus, and fans each room's comments out to its local
//! viewers, encoded once and batched under load.
//!
//! Entry point: [`run`], which serves on a bound listener until a shutdown
//! future completes. The binary only parses config, sets up tracing, binds
//! and calls it; tests call it too, with their own listener and shutdown.
//!
//! Architecture invariant: only this crate knows WebSocket and HTTP.

pub mod config;
mod conn;
mod http;
mod ids;
mod outbox;
mod presence;
mod rooms;

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use danmaku_bus::{Bus, EmbeddedBus};
use danmaku_moderation::Moderator;
use danmaku_proto::{Limits, MAX_NONCE_BYTES};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::config::Settings;
pub use crate::http::{RoomCount, RoomsResponse};

use crate::config::ms;
use crate::ids::IdGen;
use crate::presence::{Heartbeat, Presence};
use crate::rooms::{FanoutConfig, Rooms};

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

/// Counters of posts, for `/api/stats`.
#[derive(Debug, Default)]
pub(crate) struct PostStats {
    pub posts_accepted: AtomicU64,
    pub posts_rejected: AtomicU64,
}

/// State shared by every connection of one gateway.
pub(crate) struct Gateway {
    pub settings: Settings,
    pub instance_id: String,
    pub bus: Arc<dyn Bus>,
    pub rooms: Arc<Rooms>,
    pub presence: Arc<Presence>,
    pub moderator: Moderator,
    /// Announced in every `hello`.
    pub limits: Limits,
    pub ids: IdGen,
    pub stats: PostStats,
    /// Flips to true once when shutdown starts.
    pub shutdown: watch::Receiver<bool>,
    /// What connections listen to: a ping tick every `ping_interval_ms`
    /// and the start of shutdown. A few shared timers instead of one per
    /// connection keep idle connections small; there are `PULSE_PHASES` of
    /// them, ticked in turn, so connections do not all ping at once.
    pub pulses: Vec<watch::Receiver<Pulse>>,
    /// Open WebSocket connections, counted from admission to close.
    open: AtomicUsize,
    pub conn_seq: AtomicU64,
}

/// The gateway-wide signal connections wait on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pulse {
    /// Counts ping intervals since start.
    pub tick: u64,
    /// Set once shutdown starts.
    pub stopping: bool,
}

/// A WebSocket slot; dropping it frees the slot.
pub(crate) struct ConnSlot(Arc<Gateway>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gateway {
    /// Takes a connection slot unless `max_connections` are open.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<ConnSlot> {
        let max = self.settings.max_connections;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnSlot(self.clone()))
    }

    /// Open WebSocket connections.
    pub(crate) fn connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Bound on one bus call.
    pub(crate) fn bus_timeout(&self) -> Duration {
        ms(self.settings.bus_timeout_ms)
    }

    /// Safety net around `Bus::publish`. The bus bounds its own work (up to
    /// a second waiting for the room's subscription, then `bus_timeout_ms`
    /// per command) and reports a failure itself; this outer bound is longer,
    /// so the gateway never rejects a post the bus may still publish.
    pub(crate) fn publish_timeout(&self) -> Duration {
        2 * self.bus_timeout() + Duration::from_secs(1)
    }
}

/// Builds the bus the settings ask for: embedded unless `redis_url` is set.
fn build_bus(settings: &Settings) -> Result<Arc<dyn Bus>, GatewayError> {
    if settings.redis_url.is_empty() {
        return Ok(Arc::new(EmbeddedBus::new(settings.bus_config())));
    }
    // Never connects here: the bus retries in the background, so the
    // gateway serves (not ready) while Redis is down.
    let config = danmaku_bus::RedisBusConfig {
        prefix: settings.redis_prefix.clone(),
        unsubscribe_linger: ms(settings.unsubscribe_linger_ms),
        heartbeat_ttl: ms(settings.heartbeat_ttl_ms),
        command_timeout: ms(settings.bus_timeout_ms),
        bus: settings.bus_config(),
        ..danmaku_bus::RedisBusConfig::default()
    };
    let bus = danmaku_bus::RedisBus::new(&settings.redis_url, config)
        .map_err(|e| GatewayError::Config(e.to_string()))?;
    tracing::info!(prefix = %settings.redis_prefix, "Using the Redis bus");
    Ok(Arc::new(bus))
}

/// Sets options on an accepted socket: no Nagle delay (frames are already
/// gathered per flush), and the configured send buffer.
fn tune_socket(tcp: &mut tokio::net::TcpStream, send_buffer: usize) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "Setting TCP_NODELAY failed");
    }
    if send_buffer > 0 {
        if let Err(e) = socket2::SockRef::from(&*tcp).set_send_buffer_size(send_buffer) {
            tracing::debug!(error = %e, "Setting SO_SNDBUF failed");
        }
    }
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
/// closes every socket with 1001, waits up to `shutdown_grace_ms` for them,
/// and returns.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let moderator =
        Moderator::new(settings.policy()).map_err(|e| GatewayError::Config(e.to_string()))?;
    let bus = build_bus(&settings)?;
    let instance_id = settings.instance_id();
    let address = if settings.public_address.is_empty() {
        listener.local_addr()?.to_string()
    } else {
        settings.public_address.clone()
    };
    let presence = Arc::new(Presence::default());
    let rooms = Rooms::new(
        bus.clone(),
        FanoutConfig {
            flush_window: ms(settings.flush_window_ms),
            max_batch_items: settings.max_batch_items,
            slow_close: ms(settings.slow_close_ms),
            online_interval: ms(settings.online_interval_ms),
        },
        presence.clone(),
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
        bus: bus.clone(),
        rooms: rooms.clone(),
        presence: presence.clone(),
        moderator,
        limits,
        ids: IdGen::new(),
        stats: PostStats::default(),
        shutdown: stop_rx.clone(),
        pulses: pulse_rxs,
        open: AtomicUsize::new(0),
        conn_seq: AtomicU64::new(0),
        settings,
    });
    let heartbeat = Heartbeat {
        id: instance_id.clone(),
        address,
        started_ms: danmaku_bus::now_ms(),
        interval: ms(gw.settings.heartbeat_interval_ms),
        timeout: gw.bus_timeout(),
    };
    tokio::spawn(presence::run_heartbeat(
        heartbeat,
        rooms,
        presence,
        bus.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(run_pulses(
        pulse_txs,
        ms(gw.settings.ping_interval_ms),
        stop_rx,
    ));

    tracing::info!(addr = %listener.local_addr()?, instance = %instance_id, "Gateway listening");
    let app =
        http::router(gw.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let send_buffer = gw.settings.tcp_send_buffer_bytes;
    let listener = listener.tap_io(move |tcp| tune_socket(tcp, send_buffer));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("Shutting down: closing sockets with 1001");
            let _ = stop_tx.send(true);
        })
        .await?;

    let grace = ms(gw.settings.shutdown_grace_ms);
    let deadline = tokio::time::Instant::now() + grace;
    while gw.connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = gw.connections();
    if left > 0 {
        tracing::warn!(left, "Grace period over with sockets still open");
    }
    let _ = tokio::time::timeout(gw.bus_timeout(), bus.leave(&instance_id)).await;
    tracing::info!("Gateway stopped");
    Ok(())
}
