//! The command connection: one multiplexed connection per instance on which
//! every publish, history read and heartbeat is pipelined. [`Commands`]
//! holds it while it is believed up; [`run`] is the background task that
//! (re)connects it with backoff, pings it, and replaces it when a ping or a
//! command finds it broken. Neither construction nor an outage ever blocks
//! a caller: without a connection, a command fails at once.

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{FromRedisValue, Pipeline, RedisError, Value};
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::backoff::Backoff;
use super::Inner;
use crate::BusError;

/// The command connection while it is up, and why it is down otherwise.
#[derive(Debug)]
pub(crate) struct Commands {
    /// The connection with a generation, so a failure seen on an old
    /// connection never drops a newer one.
    slot: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// `Err(why)` while there is no usable connection.
    health: Mutex<Result<(), String>>,
    /// Wakes the task when a command saw the connection fail.
    lost: Notify,
}

impl Commands {
    pub(crate) fn new() -> Commands {
        Commands {
            slot: Mutex::new(None),
            health: Mutex::new(Err("redis unreachable: connecting".into())),
            lost: Notify::new(),
        }
    }

    pub(crate) fn health(&self) -> Result<(), String> {
        self.health.lock().clone()
    }

    pub(crate) fn is_up(&self) -> bool {
        self.slot.lock().is_some()
    }

    /// Runs `pipe` on the connection. A connection-level failure hands the
    /// connection back to the task for replacement; `what` names the
    /// operation in the error. Bounded by the connection's response timeout.
    pub(crate) async fn query<T: FromRedisValue>(
        &self,
        what: &str,
        pipe: &Pipeline,
    ) -> Result<T, BusError> {
        let (generation, mut conn) = self.slot.lock().clone().ok_or_else(|| {
            let why = self.health.lock().clone().err();
            BusError::Unavailable(why.unwrap_or_else(|| "redis unreachable".into()))
        })?;
        match pipe.query_async(&mut conn).await {
            Ok(value) => Ok(value),
            Err(e) => {
                if is_connection_error(&e) {
                    self.failed(generation, &e.to_string());
                }
                Err(BusError::Unavailable(format!("{what}: {e}")))
            }
        }
    }

    /// Marks the connection of `generation` as lost, if it is still the
    /// current one, so commands fail at once until it is replaced.
    fn failed(&self, generation: u64, why: &str) {
        let mut slot = self.slot.lock();
        if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
            *slot = None;
            *self.health.lock() = Err(format!("redis unreachable: {why}"));
            self.lost.notify_one();
        }
    }

    fn install(&self, generation: u64, conn: MultiplexedConnection) {
        *self.slot.lock() = Some((generation, conn));
        *self.health.lock() = Ok(());
    }

    fn current(&self) -> Option<u64> {
        self.slot.lock().as_ref().map(|(g, _)| *g)
    }
}

/// Errors after which a connection cannot be trusted any more. A timeout is
/// not one by itself: the next ping tells whether the connection is wedged.
fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

/// Keeps the command connection up until the bus is dropped.
pub(crate) async fn run(inner: Arc<Inner>, mut stop: watch::Receiver<()>) {
    let cfg = &inner.config;
    let commands = &inner.commands;
    let timeout = cfg.bus.op_timeout;
    let mut backoff = Backoff::new(cfg.max_backoff);
    let mut generation = 0u64;
    let mut was_up = false;
    loop {
        let connected = tokio::select! {
            c = inner.transport.command_connection() => c,
            _ = stop.changed() => return,
        };
        let conn = match connected {
            Ok(conn) => conn,
            Err(e) => {
                if was_up {
                    tracing::warn!(error = %e, "Redis command connection failed; retrying");
                } else {
                    tracing::debug!(error = %e, "Redis not reachable yet; retrying");
                }
                was_up = false;
                *commands.health.lock() = Err(format!("redis unreachable: {e}"));
                if !backoff.wait(&mut stop).await {
                    return;
                }
                continue;
            }
        };
        generation += 1;
        if generation > 1 {
            inner.metrics.command_reconnects.inc();
        }
        commands.install(generation, conn.clone());
        backoff.reset();
        was_up = true;
        tracing::info!(generation, "Redis command connection up");

        let why = watch_connection(&inner, generation, conn, timeout, &mut stop).await;
        let Some(why) = why else { return };
        commands.failed(generation, &why);
        tracing::warn!(error = %why, "Redis command connection lost; reconnecting");
    }
}

/// Pings the connection until it fails, or a command found it broken;
/// `None` once the bus is dropped.
async fn watch_connection(
    inner: &Inner,
    generation: u64,
    conn: MultiplexedConnection,
    timeout: Duration,
    stop: &mut watch::Receiver<()>,
) -> Option<String> {
    let interval = inner.config.ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return None,
            _ = inner.commands.lost.notified() => {
                if inner.commands.current() != Some(generation) {
                    return Some("a command found the connection broken".to_owned());
                }
            }
            _ = ping.tick() => {
                let mut c = conn.clone();
                let ping_cmd = ::redis::cmd("PING");
                match tokio::time::timeout(timeout, ping_cmd.query_async::<Value>(&mut c)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Some(e.to_string()),
                    Err(_) => return Some("ping timed out".to_owned()),
                }
            }
        }
    }
}
