//! The Redis bus: many gateway instances share rooms through one Redis.
//!
//! Layout in Redis (every name starts with the configured prefix, `danmaku:`
//! by default):
//!
//! | name                  | type    | what                                             |
//! |-----------------------|---------|--------------------------------------------------|
//! | `{p}room:{room}`      | channel | each accepted comment, MessagePack (named map)   |
//! | `{p}history:{room}`   | list    | the same bytes, newest last, capped, expiring    |
//! | `{p}instance:{id}`    | hash    | an instance's last heartbeat, expiring after TTL |
//! | `{p}instances`        | zset    | instance ids scored by last heartbeat (ms)       |
//!
//! Two connections per instance, each owned by a background task that
//! (re)connects with capped exponential backoff, so neither construction nor
//! a Redis outage ever blocks the gateway:
//!
//! - the command connection, multiplexed: every publish, history read and
//!   heartbeat of every socket is pipelined on it;
//! - the pub/sub connection: one `SUBSCRIBE` per room that has local
//!   viewers, sent when the room's first [`Subscription`] appears and undone
//!   `unsubscribe_linger` after its last one is dropped. Changes are batched
//!   into one command with many channels. Being a single connection read by
//!   a single task, it keeps each room's comments in publish order.
//!
//! While either connection is down the bus is not ready and `publish` fails
//! at once: a post is never acknowledged when this instance could not
//! deliver it. On reconnect every room still served is subscribed again
//! before the bus turns ready, and the rooms' broadcast channels live on, so
//! room tasks simply see comments resume. Comments other instances published
//! meanwhile are recovered from the room's history (see
//! `Inner::recover_missed`), so a dropped connection (a Redis output-buffer
//! limit, say) loses nothing that history still holds, and repeats nothing.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use ::redis::aio::{MultiplexedConnection, PubSubSink};
use ::redis::{AsyncConnectionConfig, Client, FromRedisValue, Msg, Pipeline, RedisError, Value};
use danmaku_proto::{Danmaku, RoomId};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{broadcast, watch, Notify};
use tokio::time::Instant;

use crate::embedded::instance_info;
use crate::{
    now_ms, BoxFuture, Bus, BusConfig, BusError, InstanceInfo, InstanceReport, Readiness,
    Subscription,
};

/// Most channels named in one `SUBSCRIBE` or `UNSUBSCRIBE`, so a reconnect
/// with many rooms does not build one huge command.
const CHANNELS_PER_COMMAND: usize = 512;
/// Clock difference between instances tolerated when comparing comment
/// timestamps set by different instances, in ms.
const CLOCK_SKEW_MS: u64 = 5_000;

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
    /// Settings shared with the embedded bus (history, room buffer).
    pub bus: BusConfig,
    /// Bound on connecting and on each command, after which Redis counts as
    /// unreachable for that operation.
    pub command_timeout: Duration,
    /// How often each connection is pinged, so a silent loss is noticed.
    pub ping_interval: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// How long a publish or history read waits for the room's pending
    /// `SUBSCRIBE` to be confirmed, so a viewer who got `hello` sees every
    /// later comment, its own included.
    pub subscribe_wait: Duration,
}

impl Default for RedisBusConfig {
    fn default() -> Self {
        RedisBusConfig {
            prefix: "danmaku:".into(),
            unsubscribe_linger: Duration::from_secs(10),
            heartbeat_ttl: Duration::from_secs(15),
            bus: BusConfig::default(),
            command_timeout: Duration::from_secs(2),
            ping_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(2),
            subscribe_wait: Duration::from_secs(1),
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
            .field("prefix", &self.inner.keys.prefix)
            .finish_non_exhaustive()
    }
}

/// Names of keys and channels under the prefix.
struct Keys {
    prefix: String,
}

impl Keys {
    fn channel(&self, room: &str) -> String {
        format!("{}room:{room}", self.prefix)
    }

    fn room_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(&self.prefix)?.strip_prefix("room:")
    }

    fn history(&self, room: &str) -> String {
        format!("{}history:{room}", self.prefix)
    }

    fn instance(&self, id: &str) -> String {
        format!("{}instance:{id}", self.prefix)
    }

    fn instances(&self) -> String {
        format!("{}instances", self.prefix)
    }
}

struct Inner {
    config: RedisBusConfig,
    keys: Keys,
    client: Client,
    /// The command connection while it is believed up, with a generation so
    /// a failure seen on an old connection never drops a newer one.
    command: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Wakes the command task when a command saw the connection fail.
    command_lost: Notify,
    /// Rooms this instance serves or lingers on.
    rooms: Mutex<HashMap<String, RoomState>>,
    /// Rooms whose wanted subscription may have changed since the pub/sub
    /// task last looked.
    pending: Mutex<HashSet<String>>,
    /// Wakes the pub/sub task when `pending` gained a room.
    rooms_changed: Notify,
    health: Mutex<Health>,
}

/// Why each connection is down, if it is.
struct Health {
    command: Result<(), String>,
    pubsub: Result<(), String>,
}

struct RoomState {
    tx: broadcast::Sender<Arc<Danmaku>>,
    /// Live [`Subscription`]s of this instance.
    local: usize,
    /// When `local` last dropped to zero; `None` while it is above.
    idle_since: Option<Instant>,
    /// Whether Redis confirmed the room's `SUBSCRIBE` on the current pub/sub
    /// connection.
    subscribed: watch::Sender<bool>,
    /// The last comment handed to the room, where recovery resumes after a
    /// lost pub/sub connection.
    last: Option<Arc<Danmaku>>,
    /// Ids recovered from history that may also arrive live on the new
    /// connection, to be dropped then; cleared by the first live comment
    /// that is not one of them.
    recovered: HashSet<String>,
}

/// Releases a subscription's interest in its room on drop.
struct Guard {
    inner: Weak<Inner>,
    room: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let idle = {
            let mut rooms = inner.rooms.lock();
            match rooms.get_mut(&self.room) {
                Some(st) => {
                    st.local = st.local.saturating_sub(1);
                    if st.local == 0 {
                        st.idle_since = Some(Instant::now());
                    }
                    st.local == 0
                }
                None => false,
            }
        };
        if idle {
            inner.pending.lock().insert(std::mem::take(&mut self.room));
            inner.rooms_changed.notify_one();
        }
    }
}

impl RedisBus {
    /// A bus on the Redis at `url`. Only checks the URL: connecting happens
    /// in background tasks that retry until Redis answers, so a gateway can
    /// start (and take viewers) while Redis is down. Must be called within a
    /// Tokio runtime.
    pub fn new(url: &str, config: RedisBusConfig) -> Result<RedisBus, BusError> {
        let client =
            Client::open(url).map_err(|e| BusError::Config(format!("redis url {url:?}: {e}")))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| BusError::Config("the redis bus needs a Tokio runtime".into()))?;
        let connecting = || Err("redis unreachable: connecting".to_owned());
        let inner = Arc::new(Inner {
            keys: Keys {
                prefix: config.prefix.clone(),
            },
            config,
            client,
            command: Mutex::new(None),
            command_lost: Notify::new(),
            rooms: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashSet::new()),
            rooms_changed: Notify::new(),
            health: Mutex::new(Health {
                command: connecting(),
                pubsub: connecting(),
            }),
        });
        let (stop, stopped) = watch::channel(());
        runtime.spawn(run_command(inner.clone(), stopped.clone()));
        runtime.spawn(run_pubsub(inner.clone(), stopped));
        Ok(RedisBus { inner, _stop: stop })
    }
}

impl Bus for RedisBus {
    fn publish(&self, comment: Arc<Danmaku>) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            let inner = &self.inner;
            if let Readiness::NotReady(why) = inner.readiness() {
                return Err(BusError::Unavailable(why));
            }
            if !inner.wait_subscribed(&comment.room).await {
                return Err(BusError::Unavailable(
                    "the room's subscription is not confirmed yet".into(),
                ));
            }
            let bytes = rmp_serde::to_vec_named(&*comment)
                .map_err(|e| BusError::Unavailable(format!("encoding the comment: {e}")))?;
            let cfg = &inner.config.bus;
            let mut pipe = ::redis::pipe();
            pipe.atomic();
            pipe.cmd("PUBLISH")
                .arg(inner.keys.channel(&comment.room))
                .arg(&bytes)
                .ignore();
            if cfg.history_len > 0 {
                let history = inner.keys.history(&comment.room);
                pipe.cmd("RPUSH").arg(&history).arg(&bytes).ignore();
                pipe.cmd("LTRIM")
                    .arg(&history)
                    .arg(-(cfg.history_len as i64))
                    .arg(-1)
                    .ignore();
                pipe.cmd("PEXPIRE")
                    .arg(&history)
                    .arg(millis(cfg.history_max_age).max(1))
                    .ignore();
            }
            inner.query::<()>("publish", &pipe).await
        })
    }

    fn subscribe(&self, room: &RoomId) -> Subscription {
        let inner = &self.inner;
        let (rx, was_idle) = {
            let mut rooms = inner.rooms.lock();
            let st = rooms
                .entry(room.as_str().to_owned())
                .or_insert_with(|| RoomState {
                    tx: broadcast::channel(inner.config.bus.room_buffer.max(1)).0,
                    local: 0,
                    idle_since: None,
                    subscribed: watch::channel(false).0,
                    last: None,
                    recovered: HashSet::new(),
                });
            // New, or lingering: the pub/sub task must (re)consider it.
            let was_idle = st.local == 0;
            st.local += 1;
            st.idle_since = None;
            (st.tx.subscribe(), was_idle)
        };
        if was_idle {
            inner.pending.lock().insert(room.as_str().to_owned());
            inner.rooms_changed.notify_one();
        }
        let guard = Guard {
            inner: Arc::downgrade(inner),
            room: room.as_str().to_owned(),
        };
        Subscription::new(rx, Box::new(guard))
    }

    fn recent(&self, room: &RoomId) -> BoxFuture<'_, Result<Vec<Danmaku>, BusError>> {
        let room = room.as_str().to_owned();
        Box::pin(async move {
            let inner = &self.inner;
            // Answering only once subscribed makes `hello` a promise: every
            // comment published after it reaches this instance.
            inner.wait_subscribed(&room).await;
            let cfg = &inner.config.bus;
            if cfg.history_len == 0 {
                return Ok(Vec::new());
            }
            let mut pipe = ::redis::pipe();
            pipe.cmd("LRANGE")
                .arg(inner.keys.history(&room))
                .arg(-(cfg.history_len as i64))
                .arg(-1);
            let (raw,): (Vec<Vec<u8>>,) = inner.query("reading history", &pipe).await?;
            let oldest = now_ms().saturating_sub(millis(cfg.history_max_age));
            Ok(raw
                .iter()
                .filter_map(|bytes| match rmp_serde::from_slice::<Danmaku>(bytes) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        tracing::warn!(room = %room, error = %e, "Undecodable history entry skipped");
                        None
                    }
                })
                .filter(|d| d.ts >= oldest)
                .collect())
        })
    }

    fn report(&self, report: InstanceReport) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let now = now_ms();
            let rooms = serde_json::to_string(&report.rooms)
                .map_err(|e| BusError::Unavailable(format!("encoding the report: {e}")))?;
            let key = inner.keys.instance(&report.id);
            let mut pipe = ::redis::pipe();
            pipe.atomic();
            pipe.cmd("HSET")
                .arg(&key)
                .arg("id")
                .arg(&report.id)
                .arg("address")
                .arg(&report.address)
                .arg("started_ms")
                .arg(report.started_ms)
                .arg("rooms")
                .arg(rooms)
                .arg("last_heartbeat_ms")
                .arg(now)
                .ignore();
            pipe.cmd("PEXPIRE")
                .arg(&key)
                .arg(millis(inner.config.heartbeat_ttl).max(1))
                .ignore();
            pipe.cmd("ZADD")
                .arg(inner.keys.instances())
                .arg(now)
                .arg(&report.id)
                .ignore();
            inner.query::<()>("heartbeat", &pipe).await
        })
    }

    fn cluster_rooms(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, BusError>> {
        Box::pin(async move {
            let mut sums: HashMap<String, u64> = HashMap::new();
            for (report, _) in self.inner.live_reports().await? {
                for (room, n) in report.rooms {
                    *sums.entry(room).or_default() += n;
                }
            }
            Ok(sums.into_iter().filter(|(_, n)| *n > 0).collect())
        })
    }

    fn instances(&self) -> BoxFuture<'_, Result<Vec<InstanceInfo>, BusError>> {
        Box::pin(async move {
            Ok(self
                .inner
                .live_reports()
                .await?
                .iter()
                .map(|(r, at)| instance_info(r, *at))
                .collect())
        })
    }

    fn readiness(&self) -> Readiness {
        self.inner.readiness()
    }

    fn leave(&self, instance_id: &str) -> BoxFuture<'_, ()> {
        let id = instance_id.to_owned();
        Box::pin(async move {
            let inner = &self.inner;
            let mut pipe = ::redis::pipe();
            pipe.atomic();
            pipe.cmd("DEL").arg(inner.keys.instance(&id)).ignore();
            pipe.cmd("ZREM")
                .arg(inner.keys.instances())
                .arg(&id)
                .ignore();
            match inner.query::<()>("leaving the fleet", &pipe).await {
                Ok(()) => tracing::info!(instance = %id, "Left the fleet"),
                Err(e) => tracing::warn!(instance = %id, error = %e, "Leaving the fleet failed"),
            }
        })
    }
}

impl Inner {
    fn readiness(&self) -> Readiness {
        let health = self.health.lock();
        match (&health.command, &health.pubsub) {
            (Ok(()), Ok(())) => Readiness::Ready,
            (Err(why), _) | (_, Err(why)) => Readiness::NotReady(why.clone()),
        }
    }

    /// Waits, up to `subscribe_wait`, for a locally served room's
    /// `SUBSCRIBE` to be confirmed. True when it is confirmed or the room is
    /// not served here (nothing to wait for); false when it is not.
    async fn wait_subscribed(&self, room: &str) -> bool {
        let mut confirmed = match self.rooms.lock().get(room) {
            Some(st) if !*st.subscribed.borrow() => st.subscribed.subscribe(),
            _ => return true,
        };
        if self.health.lock().pubsub.is_err() {
            return false;
        }
        let waited = tokio::time::timeout(
            self.config.subscribe_wait,
            confirmed.wait_for(|subscribed| *subscribed),
        )
        .await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Runs `pipe` on the command connection, bounded by `command_timeout`.
    /// A connection-level failure hands the connection back to the command
    /// task for replacement; `what` names the operation in the error.
    async fn query<T: FromRedisValue>(&self, what: &str, pipe: &Pipeline) -> Result<T, BusError> {
        let (generation, mut conn) = self.command.lock().clone().ok_or_else(|| {
            let why = self.health.lock().command.clone().err();
            BusError::Unavailable(why.unwrap_or_else(|| "redis unreachable".into()))
        })?;
        match tokio::time::timeout(self.config.command_timeout, pipe.query_async(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if is_connection_error(&e) {
                    self.command_failed(generation, &e);
                }
                Err(BusError::Unavailable(format!("{what}: {e}")))
            }
            Err(_) => Err(BusError::Unavailable(format!("{what}: redis timed out"))),
        }
    }

    /// Marks the command connection of `generation` as lost, if it is still
    /// the current one, so posts fail at once until it is replaced.
    fn command_failed(&self, generation: u64, e: &RedisError) {
        let mut command = self.command.lock();
        if command.as_ref().is_some_and(|(g, _)| *g == generation) {
            *command = None;
            self.health.lock().command = Err(format!("redis unreachable: {e}"));
            self.command_lost.notify_one();
        }
    }

    /// Heartbeats younger than the TTL, with when each was written. Prunes
    /// the older ones from the instance index on the way.
    async fn live_reports(&self) -> Result<Vec<(InstanceReport, u64)>, BusError> {
        let oldest = now_ms().saturating_sub(millis(self.config.heartbeat_ttl));
        let index = self.keys.instances();
        let mut pipe = ::redis::pipe();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&index)
            .arg("-inf")
            .arg(format!("({oldest}"))
            .ignore();
        pipe.cmd("ZRANGEBYSCORE")
            .arg(&index)
            .arg(oldest)
            .arg("+inf");
        let (ids,): (Vec<String>,) = self.query("listing instances", &pipe).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(self.keys.instance(id));
        }
        let hashes: Vec<HashMap<String, String>> = self.query("reading instances", &pipe).await?;
        Ok(hashes
            .into_iter()
            .zip(&ids)
            .filter_map(|(fields, id)| {
                // An empty hash expired between the two reads: the instance is gone.
                let report = parse_report(id, &fields)?;
                let at = fields.get("last_heartbeat_ms")?.parse().ok()?;
                Some((report, at))
            })
            .collect())
    }

    /// Hands a pub/sub message to its room's channel. Never waits: a room
    /// whose task lags loses its oldest comments, not the others' time.
    fn dispatch(&self, msg: &Msg) {
        let Some(room) = self.keys.room_of(msg.get_channel_name()) else {
            return;
        };
        let comment = match rmp_serde::from_slice::<Danmaku>(msg.get_payload_bytes()) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                tracing::warn!(room, error = %e, "Undecodable comment on the bus skipped");
                return;
            }
        };
        if let Some(st) = self.rooms.lock().get_mut(room) {
            if !st.recovered.is_empty() {
                if st.recovered.remove(&comment.id) {
                    return;
                }
                // Live comments come in publish order: past the overlap.
                st.recovered.clear();
            }
            st.last = Some(comment.clone());
            // An error only means no local subscription right now (lingering).
            let _ = st.tx.send(comment);
        }
    }

    /// After a new pub/sub connection subscribed every room: hands each room
    /// the comments published after its last one while it was not
    /// subscribed, read from history (written in the same transaction as
    /// each publish, so in the same order). Those published after the new
    /// `SUBSCRIBE` also come live and are dropped then. Bounded by history:
    /// beyond `history_len` missed comments, the oldest stay lost. Rooms
    /// that had not received any comment yet resume with live ones only.
    async fn recover_missed(&self) {
        if self.config.bus.history_len == 0 {
            return;
        }
        let resume: Vec<(String, String, u64)> = self
            .rooms
            .lock()
            .iter()
            .filter_map(|(room, st)| {
                let last = st.last.as_ref()?;
                Some((room.clone(), last.id.clone(), last.ts))
            })
            .collect();
        if resume.is_empty() {
            return;
        }
        let mut pipe = ::redis::pipe();
        for (room, _, _) in &resume {
            pipe.cmd("LRANGE")
                .arg(self.keys.history(room))
                .arg(0)
                .arg(-1);
        }
        // After a Redis restart the command connection may come back a
        // moment after this one.
        let deadline = Instant::now() + self.config.command_timeout;
        while self.command.lock().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let oldest = now_ms().saturating_sub(millis(self.config.bus.history_max_age));
        let histories: Vec<Vec<Vec<u8>>> = match self.query("recovering comments", &pipe).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "Comments missed while disconnected cannot be recovered");
                return;
            }
        };
        let (mut recovered, mut unknown) = (0usize, 0usize);
        for ((room, last_id, last_ts), raw) in resume.iter().zip(histories) {
            let entries: Vec<Danmaku> = raw
                .iter()
                .filter_map(|b| rmp_serde::from_slice(b).ok())
                .collect();
            // History holds comments in publish order. Without the last one
            // seen (trimmed away, expired, or gone with a Redis restart),
            // every entry is newer than it: all were missed. Timestamps,
            // allowing for clock skew between instances, guard against
            // replaying older ones should an instance not keep history.
            let missed: Vec<&Danmaku> = match entries.iter().position(|d| &d.id == last_id) {
                Some(at) => entries[at + 1..].iter().collect(),
                None => {
                    unknown += 1;
                    let floor = last_ts.saturating_sub(CLOCK_SKEW_MS).max(oldest);
                    entries.iter().filter(|d| d.ts >= floor).collect()
                }
            };
            if missed.is_empty() {
                continue;
            }
            let mut rooms = self.rooms.lock();
            let Some(st) = rooms.get_mut(room) else {
                continue;
            };
            for d in &missed {
                let d = Arc::new((*d).clone());
                st.recovered.insert(d.id.clone());
                st.last = Some(d.clone());
                let _ = st.tx.send(d);
            }
            recovered += missed.len();
        }
        if recovered > 0 || unknown > 0 {
            tracing::info!(
                recovered,
                rooms_without_last_seen = unknown,
                "Recovered comments missed while disconnected"
            );
        }
    }

    fn set_pubsub_health(&self, health: Result<(), String>) {
        self.health.lock().pubsub = health;
    }
}

/// Reads one instance hash back into the report it was written from.
fn parse_report(id: &str, fields: &HashMap<String, String>) -> Option<InstanceReport> {
    Some(InstanceReport {
        id: id.to_owned(),
        address: fields.get("address")?.clone(),
        started_ms: fields.get("started_ms")?.parse().ok()?,
        rooms: serde_json::from_str(fields.get("rooms")?).ok()?,
    })
}

/// Errors after which a connection cannot be trusted any more.
fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// Capped exponential backoff between connection attempts.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);

    fn new(max: Duration) -> Backoff {
        Backoff {
            next: Self::FIRST,
            max,
        }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// Sleeps for the current delay, doubling the next one; false if the bus
    /// was dropped meanwhile.
    async fn wait(&mut self, stop: &mut watch::Receiver<()>) -> bool {
        let delay = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = stop.changed() => false,
        }
    }
}

/// Runs `fut` unless the bus is dropped first.
async fn unless_stopped<F: Future>(stop: &mut watch::Receiver<()>, fut: F) -> Option<F::Output> {
    tokio::select! {
        out = fut => Some(out),
        _ = stop.changed() => None,
    }
}

/// Keeps the command connection up: connects with backoff, pings it, and
/// replaces it when a ping or a command finds it broken.
async fn run_command(inner: Arc<Inner>, mut stop: watch::Receiver<()>) {
    let cfg = &inner.config;
    let conn_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(cfg.command_timeout))
        .set_response_timeout(Some(cfg.command_timeout));
    let mut backoff = Backoff::new(cfg.max_backoff);
    let mut generation = 0u64;
    let mut was_up = false;
    loop {
        let connecting = inner
            .client
            .get_multiplexed_async_connection_with_config(&conn_config);
        let Some(connected) = unless_stopped(&mut stop, connecting).await else {
            return;
        };
        let conn = match connected {
            Ok(conn) => conn,
            Err(e) => {
                let why = format!("redis unreachable: {e}");
                if was_up {
                    tracing::warn!(error = %e, "Redis command connection failed; retrying");
                } else {
                    tracing::debug!(error = %e, "Redis not reachable yet; retrying");
                }
                was_up = false;
                inner.health.lock().command = Err(why);
                if !backoff.wait(&mut stop).await {
                    return;
                }
                continue;
            }
        };
        generation += 1;
        *inner.command.lock() = Some((generation, conn.clone()));
        inner.health.lock().command = Ok(());
        backoff.reset();
        was_up = true;
        tracing::info!(generation, "Redis command connection up");

        let mut ping =
            tokio::time::interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let why = loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = inner.command_lost.notified() => {
                    let current = inner.command.lock().as_ref().map(|(g, _)| *g);
                    if current != Some(generation) {
                        break "a command found the connection broken".to_owned();
                    }
                }
                _ = ping.tick() => {
                    let mut c = conn.clone();
                    let ping_cmd = ::redis::cmd("PING");
                    let pong = tokio::time::timeout(
                        cfg.command_timeout,
                        ping_cmd.query_async::<Value>(&mut c),
                    );
                    match pong.await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break e.to_string(),
                        Err(_) => break "ping timed out".to_owned(),
                    }
                }
            }
        };
        {
            let mut command = inner.command.lock();
            if command.as_ref().is_some_and(|(g, _)| *g == generation) {
                *command = None;
            }
        }
        inner.health.lock().command = Err(format!("redis unreachable: {why}"));
        tracing::warn!(error = %why, "Redis command connection lost; reconnecting");
    }
}

/// Keeps the pub/sub connection up and subscribed to exactly the rooms this
/// instance serves (or lingers on), and feeds incoming comments to them.
async fn run_pubsub(inner: Arc<Inner>, mut stop: watch::Receiver<()>) {
    let cfg = &inner.config;
    let mut backoff = Backoff::new(cfg.max_backoff);
    // Idle rooms and when their linger ends. Outlives connections.
    let mut lingering: HashMap<String, Instant> = HashMap::new();
    let mut was_up = false;
    loop {
        let connecting = tokio::time::timeout(cfg.command_timeout, inner.client.get_async_pubsub());
        let Some(connected) = unless_stopped(&mut stop, connecting).await else {
            return;
        };
        let (mut sink, mut stream) = match connected {
            Ok(Ok(pubsub)) => pubsub.split(),
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "connecting timed out".to_owned(),
                };
                if was_up {
                    tracing::warn!(error = %why, "Redis pub/sub connection failed; retrying");
                } else {
                    tracing::debug!(error = %why, "Redis pub/sub not reachable yet; retrying");
                }
                was_up = false;
                inner.set_pubsub_health(Err(format!("redis unreachable: {why}")));
                if !backoff.wait(&mut stop).await {
                    return;
                }
                continue;
            }
        };

        // A fresh connection serves every room still in the map.
        inner.pending.lock().clear();
        let all: Vec<String> = inner.rooms.lock().keys().cloned().collect();
        let mut current: HashSet<String> = HashSet::new();
        let resubscribed = change_subscriptions(&inner, &mut sink, "SUBSCRIBE", &all).await;
        if let Err(why) = resubscribed {
            tracing::warn!(error = %why, rooms = all.len(), "Subscribing rooms failed; reconnecting");
            inner.set_pubsub_health(Err(format!("redis pub/sub: {why}")));
            if !backoff.wait(&mut stop).await {
                return;
            }
            continue;
        }
        confirm(&inner, &all);
        current.extend(all.iter().cloned());
        inner.recover_missed().await;
        inner.set_pubsub_health(Ok(()));
        backoff.reset();
        was_up = true;
        tracing::info!(rooms = all.len(), "Redis pub/sub connection up");

        let mut ping =
            tokio::time::interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let why = loop {
            let next_expiry = lingering.values().min().copied();
            tokio::select! {
                _ = stop.changed() => return,
                msg = stream.next() => match msg {
                    Some(msg) => inner.dispatch(&msg),
                    None => break "connection closed".to_owned(),
                },
                _ = inner.rooms_changed.notified() => {
                    if let Err(why) = reconcile(&inner, &mut sink, &mut current, &mut lingering).await {
                        break why;
                    }
                }
                _ = tokio::time::sleep_until(next_expiry.unwrap_or_else(Instant::now)), if next_expiry.is_some() => {
                    if let Err(why) = reconcile(&inner, &mut sink, &mut current, &mut lingering).await {
                        break why;
                    }
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(cfg.command_timeout, sink.ping::<Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break e.to_string(),
                        Err(_) => break "ping timed out".to_owned(),
                    }
                }
            }
        };
        for st in inner.rooms.lock().values() {
            st.subscribed.send_replace(false);
        }
        inner.set_pubsub_health(Err(format!("redis pub/sub connection lost: {why}")));
        tracing::warn!(error = %why, rooms = current.len(), "Redis pub/sub connection lost; reconnecting");
    }
}

/// Brings the connection's subscriptions in line with the rooms: subscribes
/// rooms that gained a first viewer, unsubscribes those whose linger ended,
/// each batch in as few commands as possible.
async fn reconcile(
    inner: &Inner,
    sink: &mut PubSubSink,
    current: &mut HashSet<String>,
    lingering: &mut HashMap<String, Instant>,
) -> Result<(), String> {
    let changed: Vec<String> = inner.pending.lock().drain().collect();
    let now = Instant::now();
    let linger = inner.config.unsubscribe_linger;
    let mut subscribe = Vec::new();
    let mut unsubscribe = Vec::new();
    {
        let mut rooms = inner.rooms.lock();
        for room in changed {
            match rooms.get(&room) {
                Some(st) if st.local > 0 => {
                    lingering.remove(&room);
                    if !current.contains(&room) {
                        subscribe.push(room);
                    }
                }
                Some(st) => {
                    let since = st.idle_since.unwrap_or(now);
                    lingering.insert(room, since + linger);
                }
                None => {}
            }
        }
        lingering.retain(|room, until| {
            if *until > now {
                return true;
            }
            match rooms.get(room) {
                Some(st) if st.local == 0 => {
                    rooms.remove(room);
                    if current.remove(room) {
                        unsubscribe.push(room.clone());
                    }
                }
                // Rejoined meanwhile: stays subscribed.
                _ => {}
            }
            false
        });
    }
    if !unsubscribe.is_empty() {
        change_subscriptions(inner, sink, "UNSUBSCRIBE", &unsubscribe).await?;
        tracing::debug!(rooms = unsubscribe.len(), "Unsubscribed idle rooms");
    }
    if !subscribe.is_empty() {
        change_subscriptions(inner, sink, "SUBSCRIBE", &subscribe).await?;
        current.extend(subscribe.iter().cloned());
        confirm(inner, &subscribe);
        tracing::debug!(rooms = subscribe.len(), "Subscribed rooms");
    }
    Ok(())
}

/// Sends `SUBSCRIBE` or `UNSUBSCRIBE` for `rooms`, many channels per
/// command, and waits for Redis to confirm each.
async fn change_subscriptions(
    inner: &Inner,
    sink: &mut PubSubSink,
    command: &str,
    rooms: &[String],
) -> Result<(), String> {
    for chunk in rooms.chunks(CHANNELS_PER_COMMAND) {
        let channels: Vec<String> = chunk.iter().map(|r| inner.keys.channel(r)).collect();
        let sent = async {
            if command == "SUBSCRIBE" {
                sink.subscribe(&channels).await
            } else {
                sink.unsubscribe(&channels).await
            }
        };
        match tokio::time::timeout(inner.config.command_timeout, sent).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("{command}: {e}")),
            Err(_) => return Err(format!("{command}: timed out")),
        }
    }
    Ok(())
}

/// Marks rooms as subscribed on the current connection, releasing posts and
/// history reads that waited for it.
fn confirm(inner: &Inner, rooms: &[String]) {
    let map = inner.rooms.lock();
    for room in rooms {
        if let Some(st) = map.get(room) {
            st.subscribed.send_replace(true);
        }
    }
}
