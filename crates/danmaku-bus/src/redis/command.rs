//! The command connection: one multiplexed connection per instance on which
//! every publish, history read and heartbeat is pipelined. [`Commands`]
//! holds it while it is believed up; [`run`] is the background task that
//! (re)connects it with backoff, pings it, and replaces it when a ping or a
//! command finds it broken. Neither construction nor an outage ever blocks
//! a caller: without a connection, a command fails at once.
//!
//! On each (re)connect, before the connection is used, the task reads
//! Redis's clock (`clock.rs`) and loads the publish script (`broker.rs`),
//! which is run by its SHA from then on and loaded again if Redis lost it
//! (`NOSCRIPT`, after a restart or `SCRIPT FLUSH`); the other scripts
//! (limits, state) are loaded the same way on their first use. Each ping is a `TIME`,
//! which refreshes the clock reading, followed by a write probe (`SET` of
//! this instance's probe key, expiring): a Redis that answers but refuses
//! writes (out of memory under `noeviction`, a read-only replica, a failed
//! snapshot with `stop-writes-on-bgsave-error`...) makes the bus not ready,
//! as does such a refusal of any command, until a write succeeds again.
//! The probe is what lets readiness come back by itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{ErrorKind, FromRedisValue, Pipeline, RedisError, ServerErrorKind};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::backoff::Backoff;
use super::broker::PUBLISH_SCRIPT;
use super::clock::RedisClock;
use super::{millis, Inner};
use crate::BusError;

/// Error codes of a Redis that is up but refuses writes.
const WRITE_REFUSALS: [&str; 4] = ["OOM", "READONLY", "MISCONF", "NOREPLICAS"];

/// The command connection while it is up, and why it is down otherwise.
#[derive(Debug)]
pub(crate) struct Commands {
    /// The connection with a generation, so a failure seen on an old
    /// connection never drops a newer one.
    slot: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// `Err(why)` while there is no usable connection.
    health: Mutex<Result<(), String>>,
    /// `Err(why)` from a refused write until a write succeeds again.
    writes: Mutex<Result<(), String>>,
    /// The latest reading of Redis's clock.
    clock: Mutex<Option<RedisClock>>,
    /// Each script's SHA (by its source), once Redis loaded it.
    script_sha: Mutex<HashMap<&'static str, String>>,
    /// Wakes the task when a command saw the connection fail.
    lost: Notify,
    /// `danmaku_bus_write_refusals_total`.
    write_refusals: Counter,
}

impl Commands {
    pub(crate) fn new(write_refusals: Counter) -> Commands {
        Commands {
            slot: Mutex::new(None),
            health: Mutex::new(Err("redis unreachable: connecting".into())),
            writes: Mutex::new(Ok(())),
            clock: Mutex::new(None),
            script_sha: Mutex::new(HashMap::new()),
            lost: Notify::new(),
            write_refusals,
        }
    }

    /// `Err(why)` while there is no connection, or Redis refuses writes.
    pub(crate) fn health(&self) -> Result<(), String> {
        self.health.lock().clone()?;
        self.writes.lock().clone()
    }

    /// A write succeeded: Redis takes writes again.
    pub(crate) fn wrote(&self) {
        let mut writes = self.writes.lock();
        if writes.is_err() {
            tracing::info!("Redis takes writes again");
            *writes = Ok(());
        }
    }

    /// Redis is up but does not take writes: not ready until one succeeds.
    fn refused(&self, why: String) {
        let mut writes = self.writes.lock();
        if writes.is_ok() {
            tracing::warn!(error = %why, "Redis refuses writes; not ready until one succeeds");
        }
        *writes = Err(format!("redis refuses writes: {why}"));
    }

    /// Looks at a failed command: a refused write makes the bus not ready
    /// (true); a connection-level failure hands the connection back to the
    /// task for replacement.
    fn classify(&self, generation: u64, e: &RedisError) -> bool {
        if refuses_writes(e) {
            self.write_refusals.inc();
            self.refused(e.to_string());
            return true;
        }
        if is_connection_error(e) {
            self.failed(generation, &e.to_string());
        }
        false
    }

    /// Redis's clock at the local instant `at`, as a lower bound in µs
    /// since the epoch; `None` before the first reading.
    pub(crate) fn redis_time_us(&self, at: Instant) -> Option<u64> {
        self.clock.lock().map(|c| c.lower_bound_us(at))
    }

    fn connection(&self) -> Result<(u64, MultiplexedConnection), BusError> {
        self.slot.lock().clone().ok_or_else(|| {
            let why = self.health.lock().clone().err();
            BusError::Unavailable(why.unwrap_or_else(|| "redis unreachable".into()))
        })
    }

    /// Runs one of the bus's scripts (named by its source) by its SHA with
    /// `keys` and `args`, loading it first if it was never loaded, or if
    /// this connection's Redis does not have it (once, on `NOSCRIPT`).
    pub(crate) async fn eval<T: FromRedisValue>(
        &self,
        what: &str,
        script: &'static str,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<T, BusError> {
        let (generation, mut conn) = self.connection()?;
        let known = self.script_sha.lock().get(script).cloned();
        let sha = match known {
            Some(sha) => sha,
            None => self.load_script(generation, &mut conn, script).await?,
        };
        let evalsha = |sha: &str| {
            let mut cmd = ::redis::cmd("EVALSHA");
            cmd.arg(sha).arg(keys.len());
            for key in keys {
                cmd.arg(*key);
            }
            for arg in args {
                cmd.arg(*arg);
            }
            cmd
        };
        match evalsha(&sha).query_async::<T>(&mut conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                let sha = self.load_script(generation, &mut conn, script).await?;
                evalsha(&sha)
                    .query_async::<T>(&mut conn)
                    .await
                    .map_err(|e| self.fail(generation, what, &e))
            }
            out => out.map_err(|e| self.fail(generation, what, &e)),
        }
    }

    async fn load_script(
        &self,
        generation: u64,
        conn: &mut MultiplexedConnection,
        script: &'static str,
    ) -> Result<String, BusError> {
        let sha: String = load_script(conn, script)
            .await
            .map_err(|e| self.fail(generation, "loading a script", &e))?;
        self.script_sha.lock().insert(script, sha.clone());
        Ok(sha)
    }

    /// The caller's error for a failed command, after classifying it.
    fn fail(&self, generation: u64, what: &str, e: &RedisError) -> BusError {
        if self.classify(generation, e) {
            return BusError::Unavailable(format!("{what}: redis refuses writes: {e}"));
        }
        BusError::Unavailable(format!("{what}: {e}"))
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
        let (generation, mut conn) = self.connection()?;
        pipe.query_async(&mut conn)
            .await
            .map_err(|e| self.fail(generation, what, &e))
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

/// Whether Redis is up but refuses writes. Errors inside a pipeline or a
/// transaction only show their code in their text.
fn refuses_writes(e: &RedisError) -> bool {
    if e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly) {
        return true;
    }
    if e.code().is_some_and(|code| WRITE_REFUSALS.contains(&code)) {
        return true;
    }
    let text = e.to_string();
    WRITE_REFUSALS
        .iter()
        .any(|code| text.starts_with(code) || text.contains(&format!("\"{code}\"")))
        || text.contains("ReadOnly:")
}

/// Loads a script, returning the SHA Redis runs it by.
async fn load_script(conn: &mut MultiplexedConnection, script: &str) -> Result<String, RedisError> {
    ::redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query_async(conn)
        .await
}

/// Reads Redis's clock (`TIME`), which also proves the connection answers.
async fn read_clock(conn: &mut MultiplexedConnection) -> Result<RedisClock, RedisError> {
    let time: (u64, u64) = ::redis::cmd("TIME").query_async(conn).await?;
    Ok(RedisClock::new(Instant::now(), time))
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
        let mut conn = conn;
        if let Err(why) = prepare(&inner, &mut conn, timeout).await {
            tracing::warn!(error = %why, "Preparing the Redis command connection failed; retrying");
            was_up = false;
            *commands.health.lock() = Err(format!("redis unreachable: {why}"));
            if !backoff.wait(&mut stop).await {
                return;
            }
            continue;
        }
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

/// Readies a new connection before anything uses it: a first reading of
/// Redis's clock, and the publish script loaded.
async fn prepare(
    inner: &Inner,
    conn: &mut MultiplexedConnection,
    timeout: Duration,
) -> Result<(), String> {
    let clock = tokio::time::timeout(timeout, read_clock(conn))
        .await
        .map_err(|_| "TIME timed out".to_owned())?
        .map_err(|e| format!("TIME: {e}"))?;
    *inner.commands.clock.lock() = Some(clock);
    let sha = tokio::time::timeout(timeout, load_script(conn, PUBLISH_SCRIPT))
        .await
        .map_err(|_| "SCRIPT LOAD timed out".to_owned())?
        .map_err(|e| format!("SCRIPT LOAD: {e}"))?;
    inner.commands.script_sha.lock().insert(PUBLISH_SCRIPT, sha);
    Ok(())
}

/// Pings the connection until it fails, or a command found it broken;
/// `None` once the bus is dropped. Each ping reads Redis's clock, then
/// probes that Redis takes writes.
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
    let probe_ttl = millis((interval * 3).max(Duration::from_secs(1)));
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
                match tokio::time::timeout(timeout, read_clock(&mut c)).await {
                    Ok(Ok(clock)) => *inner.commands.clock.lock() = Some(clock),
                    Ok(Err(e)) => return Some(e.to_string()),
                    Err(_) => return Some("ping timed out".to_owned()),
                }
                let mut probe = ::redis::cmd("SET");
                probe.arg(&inner.probe_key).arg(1).arg("PX").arg(probe_ttl);
                let commands = &inner.commands;
                match tokio::time::timeout(timeout, probe.query_async::<()>(&mut c)).await {
                    Ok(Ok(())) => commands.wrote(),
                    Ok(Err(e)) => {
                        let refused = commands.classify(generation, &e);
                        if !refused && is_connection_error(&e) {
                            return Some(e.to_string());
                        }
                    }
                    // The connection answered TIME just now: Redis is up,
                    // but holds writes back (`CLIENT PAUSE WRITE`, say).
                    Err(_) => commands.refused(format!(
                        "write probe unanswered within {} ms",
                        timeout.as_millis()
                    )),
                }
            }
        }
    }
}
