//! The live view of the fleet behind `/dashboard`: `GET /api/live`.
//!
//! Every instance's heartbeat carries its cumulative counters (see
//! `presence.rs`). A sampler task here reads the fleet's heartbeats every
//! [`SAMPLE_INTERVAL`] and turns them into rates by differencing each
//! instance's counters between two of its heartbeats, over the time between
//! them; a counter that went down means the instance (or, for a room's
//! count, the room) started afresh, and counts from zero. Each sample adds
//! a point to a bounded history: ten minutes of the fleet's online count and
//! comment rate, and the same for the busiest rooms.
//!
//! The endpoint answers with one JSON snapshot (`?once=1`) or streams one
//! every interval as server-sent events. EventSource cannot set headers, so
//! the read credentials may also come as `?token=`.
//!
//! A room's comment rate is the highest any instance serving it saw: every
//! such instance fans out the same comments, so summing would count them
//! once per instance. The fleet's comment rate is the sum over rooms.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use danmaku_bus::{now_ms, InstanceCounters, InstanceStatus};
use danmaku_proto::RoomId;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::Gateway;

/// How often the sampler reads the fleet, and a stream sends a snapshot.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// Points of history kept: ten minutes at the sampling interval.
const HISTORY_POINTS: usize = 300;
/// How far back history goes, in ms.
const HISTORY_MS: u64 = HISTORY_POINTS as u64 * SAMPLE_INTERVAL.as_millis() as u64;
/// Rooms listed in a snapshot, and rooms whose history each sample records.
const TOP_ROOMS: usize = 200;
/// Most rooms with a history kept at once; beyond it, the least recently
/// recorded go first.
const ROOM_HISTORIES_MAX: usize = 500;
/// Most open streams; more are refused with 503, so a dashboard left open
/// in many tabs cannot make the instance build snapshots without bound.
const MAX_STREAMS: usize = 64;
/// Longest `?q=` search, in bytes.
const MAX_QUERY_BYTES: usize = 64;

/// One point of a chart.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LivePoint {
    /// When it was sampled, in ms since the Unix epoch.
    pub t: u64,
    /// Viewers online.
    pub online: u64,
    /// Comments fanned out per second.
    pub comments_per_s: f64,
}

/// An instance in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveInstance {
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
    /// How long ago that was, in ms.
    pub heartbeat_age_ms: u64,
    /// Whether it reported within three heartbeat intervals.
    pub healthy: bool,
}

/// A room in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveRoom {
    /// The room.
    pub room: String,
    /// Viewers across the fleet.
    pub online: u64,
    /// Comments fanned out per second.
    pub comments_per_s: f64,
}

/// The charts' data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LiveHistory {
    /// The fleet, oldest first.
    pub fleet: Vec<LivePoint>,
    /// The room asked for with `?room=`, oldest first; absent when none was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<Vec<LivePoint>>,
}

/// `GET /api/live`: one snapshot of the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveSnapshot {
    /// When it was taken, in ms since the Unix epoch.
    pub t: u64,
    /// The instance that answered.
    pub instance: String,
    /// Between snapshots of a stream, and between history points, in ms.
    pub interval_ms: u64,
    /// Viewers across the fleet.
    pub total_online: u64,
    /// Rooms with a viewer across the fleet.
    pub total_rooms: u64,
    /// Comments fanned out per second, over every room.
    pub comments_per_s: f64,
    /// Posts accepted per second, over every instance.
    pub posts_per_s: f64,
    /// Live instances, by id.
    pub instances: Vec<LiveInstance>,
    /// The busiest rooms matching `?q=` (all when absent), by online count
    /// descending, then id; the `?room=` room is always among them.
    pub rooms: Vec<LiveRoom>,
    /// Posts refused per second, by reject code; codes at zero left out.
    pub rejects_per_s: BTreeMap<String, f64>,
    /// Room frames dropped per second for viewers whose queue was full.
    pub drops_per_s: f64,
    /// Connections closed per second as too slow.
    pub evictions_per_s: f64,
    /// The charts.
    pub history: LiveHistory,
}

/// Per-second rates of one instance, from its last two heartbeats seen.
#[derive(Debug, Default, Clone)]
struct Rates {
    room_comments: HashMap<String, f64>,
    posts: f64,
    rejected: HashMap<String, f64>,
    dropped: f64,
    evicted: f64,
}

/// What the sampler remembers of one instance.
struct Tracked {
    /// Its last heartbeat seen.
    status: InstanceStatus,
    /// Rates between that heartbeat and the one before.
    rates: Rates,
}

/// The fleet as of the last observation, aggregated once for every reader.
#[derive(Default)]
struct Current {
    instances: Vec<LiveInstance>,
    /// Every room, busiest first.
    rooms: Vec<LiveRoom>,
    total_online: u64,
    comments_per_s: f64,
    posts_per_s: f64,
    rejects_per_s: BTreeMap<String, f64>,
    drops_per_s: f64,
    evictions_per_s: f64,
}

#[derive(Default)]
struct LiveState {
    tracked: HashMap<String, Tracked>,
    current: Current,
    fleet: VecDeque<LivePoint>,
    rooms: HashMap<String, VecDeque<LivePoint>>,
}

/// The live view: the sampler's memory and the streams' signal.
pub(crate) struct Live {
    instance_id: String,
    /// This fleet's heartbeat interval: what "healthy" is measured in.
    heartbeat: Duration,
    state: Mutex<LiveState>,
    /// Counts samples; streams wake on it.
    sampled: watch::Sender<u64>,
    streams: AtomicUsize,
}

/// The growth of a cumulative counter; one that went down started afresh.
fn grown(prev: u64, now: u64) -> u64 {
    if now >= prev {
        now - prev
    } else {
        now
    }
}

/// The per-second rates between two heartbeats of one instance.
fn rates(prev: &InstanceStatus, now: &InstanceStatus) -> Rates {
    let secs = now.last_heartbeat_ms.saturating_sub(prev.last_heartbeat_ms) as f64 / 1000.0;
    let zero = InstanceCounters::default();
    // A new start time: the instance restarted, and counts from zero.
    let before = if prev.report.started_ms == now.report.started_ms {
        &prev.report.counters
    } else {
        &zero
    };
    let after = &now.report.counters;
    let per_s = |n: u64| n as f64 / secs;
    let keyed = |before: &[(String, u64)], after: &[(String, u64)]| {
        let old: HashMap<&str, u64> = before.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        after
            .iter()
            .map(|(k, n)| {
                let prev = old.get(k.as_str()).copied().unwrap_or(0);
                (k.clone(), per_s(grown(prev, *n)))
            })
            .filter(|(_, r)| *r > 0.0)
            .collect()
    };
    Rates {
        room_comments: keyed(&before.room_comments, &after.room_comments),
        posts: per_s(grown(before.posts_accepted, after.posts_accepted)),
        rejected: keyed(&before.rejected, &after.rejected),
        dropped: per_s(grown(before.frames_dropped, after.frames_dropped)),
        evicted: per_s(grown(before.slow_evictions, after.slow_evictions)),
    }
}

/// Two decimals are plenty on a dashboard and keep the JSON short.
fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Live {
    pub(crate) fn new(instance_id: String, heartbeat: Duration) -> Live {
        Live {
            instance_id,
            heartbeat,
            state: Mutex::default(),
            sampled: watch::channel(0).0,
            streams: AtomicUsize::new(0),
        }
    }

    /// Folds in the fleet's heartbeats as just read; `local` are this
    /// instance's exact counts now, fresher than its last heartbeat.
    fn observe(&self, list: Vec<InstanceStatus>, local: Vec<(String, u64)>) {
        let now = now_ms();
        let mut state = self.state.lock();
        let mut tracked = std::mem::take(&mut state.tracked);
        let mut next = HashMap::with_capacity(list.len());
        for status in list {
            let id = status.report.id.clone();
            let entry = match tracked.remove(&id) {
                // A newer heartbeat: rates over the time between the two.
                Some(t) if status.last_heartbeat_ms > t.status.last_heartbeat_ms => Tracked {
                    rates: rates(&t.status, &status),
                    status,
                },
                // The same one (or an older read that raced a newer one).
                Some(t) => t,
                // First seen: a baseline, no rates yet.
                None => Tracked {
                    status,
                    rates: Rates::default(),
                },
            };
            next.insert(id, entry);
        }
        state.tracked = next;
        state.current = self.aggregate(&state.tracked, local, now);
    }

    fn aggregate(
        &self,
        tracked: &HashMap<String, Tracked>,
        local: Vec<(String, u64)>,
        now: u64,
    ) -> Current {
        let healthy_within = 3 * self.heartbeat.as_millis() as u64;
        let mut current = Current::default();
        let mut rooms: HashMap<&str, (u64, f64)> = HashMap::new();
        for t in tracked.values() {
            let r = &t.status.report;
            let counts = if r.id == self.instance_id {
                &local
            } else {
                &r.rooms
            };
            for (room, n) in counts {
                rooms.entry(room).or_default().0 += n;
            }
            for (room, rate) in &t.rates.room_comments {
                let slot = &mut rooms.entry(room).or_default().1;
                *slot = slot.max(*rate);
            }
            for (code, rate) in &t.rates.rejected {
                *current.rejects_per_s.entry(code.clone()).or_default() += rate;
            }
            current.posts_per_s += t.rates.posts;
            current.drops_per_s += t.rates.dropped;
            current.evictions_per_s += t.rates.evicted;
            let age = now.saturating_sub(t.status.last_heartbeat_ms);
            current.instances.push(LiveInstance {
                id: r.id.clone(),
                address: r.address.clone(),
                connections: counts.iter().map(|(_, n)| n).sum(),
                rooms: counts.iter().filter(|(_, n)| *n > 0).count() as u64,
                uptime_s: now.saturating_sub(r.started_ms) / 1000,
                last_heartbeat_ms: t.status.last_heartbeat_ms,
                heartbeat_age_ms: age,
                healthy: age <= healthy_within,
            });
        }
        current.instances.sort_by(|a, b| a.id.cmp(&b.id));
        current.rooms = rooms
            .into_iter()
            .filter(|(_, (online, rate))| *online > 0 || *rate > 0.0)
            .map(|(room, (online, rate))| LiveRoom {
                room: room.to_owned(),
                online,
                comments_per_s: round(rate),
            })
            .collect();
        current.rooms.sort_by(|a, b| {
            b.online
                .cmp(&a.online)
                .then_with(|| b.comments_per_s.total_cmp(&a.comments_per_s))
                .then_with(|| a.room.cmp(&b.room))
        });
        current.total_online = current.rooms.iter().map(|r| r.online).sum();
        current.comments_per_s = round(current.rooms.iter().map(|r| r.comments_per_s).sum());
        current.posts_per_s = round(current.posts_per_s);
        current.drops_per_s = round(current.drops_per_s);
        current.evictions_per_s = round(current.evictions_per_s);
        for rate in current.rejects_per_s.values_mut() {
            *rate = round(*rate);
        }
        current
    }

    /// Adds the current view to the history, dropping what is older than
    /// the window, and wakes the streams.
    fn record(&self) {
        let now = now_ms();
        let oldest = now.saturating_sub(HISTORY_MS);
        {
            let mut state = self.state.lock();
            let state = &mut *state;
            let c = &state.current;
            state.fleet.push_back(LivePoint {
                t: now,
                online: c.total_online,
                comments_per_s: c.comments_per_s,
            });
            while state.fleet.len() > HISTORY_POINTS {
                state.fleet.pop_front();
            }
            for r in c.rooms.iter().take(TOP_ROOMS) {
                let points = state.rooms.entry(r.room.clone()).or_default();
                points.push_back(LivePoint {
                    t: now,
                    online: r.online,
                    comments_per_s: r.comments_per_s,
                });
                if points.len() > HISTORY_POINTS {
                    points.pop_front();
                }
            }
            state.rooms.retain(|_, points| {
                while points.front().is_some_and(|p| p.t < oldest) {
                    points.pop_front();
                }
                !points.is_empty()
            });
            if state.rooms.len() > ROOM_HISTORIES_MAX {
                let mut last: Vec<(u64, String)> = state
                    .rooms
                    .iter()
                    .map(|(room, points)| (points.back().map_or(0, |p| p.t), room.clone()))
                    .collect();
                last.sort_unstable();
                let excess = state.rooms.len() - ROOM_HISTORIES_MAX;
                for (_, room) in last.into_iter().take(excess) {
                    state.rooms.remove(&room);
                }
            }
        }
        self.sampled.send_modify(|n| *n += 1);
    }

    /// A snapshot for one reader.
    fn snapshot(&self, query: &LiveQuery) -> LiveSnapshot {
        let state = self.state.lock();
        let c = &state.current;
        let matches = |r: &&LiveRoom| query.q.as_deref().is_none_or(|q| r.room.contains(q));
        let mut rooms: Vec<LiveRoom> = c
            .rooms
            .iter()
            .filter(matches)
            .take(TOP_ROOMS)
            .cloned()
            .collect();
        let mut history = LiveHistory {
            fleet: state.fleet.iter().copied().collect(),
            room: None,
        };
        if let Some(room) = &query.room {
            if !rooms.iter().any(|r| &r.room == room) {
                let found = c.rooms.iter().find(|r| &r.room == room).cloned();
                rooms.push(found.unwrap_or_else(|| LiveRoom {
                    room: room.clone(),
                    online: 0,
                    comments_per_s: 0.0,
                }));
            }
            let points = state.rooms.get(room);
            history.room = Some(
                points
                    .map(|p| p.iter().copied().collect())
                    .unwrap_or_default(),
            );
        }
        LiveSnapshot {
            t: now_ms(),
            instance: self.instance_id.clone(),
            interval_ms: SAMPLE_INTERVAL.as_millis() as u64,
            total_online: c.total_online,
            total_rooms: c.rooms.iter().filter(|r| r.online > 0).count() as u64,
            comments_per_s: c.comments_per_s,
            posts_per_s: c.posts_per_s,
            instances: c.instances.clone(),
            rooms,
            rejects_per_s: c.rejects_per_s.clone(),
            drops_per_s: c.drops_per_s,
            evictions_per_s: c.evictions_per_s,
            history,
        }
    }
}

/// Reads the fleet every [`SAMPLE_INTERVAL`] until shutdown. Always on, so
/// the charts have their ten minutes when a dashboard opens; a sample is one
/// bus read, a fold over the instances and a sort of the rooms.
pub(crate) async fn run_sampler(gw: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        }
        // The bus bounds the call itself.
        match gw.bus.instances().await {
            Ok(list) => gw.live.observe(list, gw.rooms.local_counts()),
            Err(e) => tracing::warn!(error = %e, "Reading the fleet for the live view failed"),
        }
        gw.live.record();
    }
}

/// What a request to `/api/live` asks for.
#[derive(Debug, Default)]
struct LiveQuery {
    once: bool,
    room: Option<String>,
    q: Option<String>,
    token: Option<String>,
}

impl LiveQuery {
    fn parse(raw: Option<&str>) -> Result<LiveQuery, String> {
        let mut query = LiveQuery::default();
        for (key, value) in crate::http::query_pairs(raw) {
            let name = match &key[..] {
                b"once" => "once",
                b"room" => "room",
                b"q" => "q",
                b"token" => "token",
                _ => continue,
            };
            let value =
                String::from_utf8(value).map_err(|_| format!("{name} is not valid UTF-8"))?;
            match name {
                "once" => query.once = !matches!(value.as_str(), "" | "0" | "false"),
                "room" if value.is_empty() => {}
                "room" => {
                    let room = RoomId::parse(&value).map_err(|e| format!("room: {e}"))?;
                    query.room = Some(room.as_str().to_owned());
                }
                "q" if value.len() > MAX_QUERY_BYTES => {
                    return Err(format!("q is longer than {MAX_QUERY_BYTES} bytes"))
                }
                "q" => query.q = Some(value).filter(|q| !q.is_empty()),
                _ => query.token = Some(value),
            }
        }
        Ok(query)
    }
}

/// A stream's place among `MAX_STREAMS`; dropping it frees the place.
struct StreamSlot(Arc<Gateway>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.live.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `GET /api/live`: a stream of snapshots, or one with `?once=1`.
pub(crate) async fn live(
    State(gw): State<Arc<Gateway>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = match LiveQuery::parse(raw.as_deref()) {
        Ok(query) => query,
        Err(reason) => return (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response(),
    };
    // `?token=` stands for the header EventSource cannot send; both at
    // once is ambiguous.
    let mut creds = headers;
    if let Some(token) = &query.token {
        if creds.contains_key(header::AUTHORIZATION) {
            return (
                StatusCode::BAD_REQUEST,
                "token is given both in the query and in Authorization\n",
            )
                .into_response();
        }
        match HeaderValue::try_from(format!("Bearer {token}")) {
            Ok(value) => {
                creds.insert(header::AUTHORIZATION, value);
            }
            Err(_) => return (StatusCode::BAD_REQUEST, "token is malformed\n").into_response(),
        }
    }
    if let Err(refused) = crate::admin::check_read(&gw, &creds) {
        return refused.into_response();
    }
    if query.once {
        // Fresh for the asker (tests, scripts); the history stays on the
        // sampler's grid.
        if let Ok(list) = gw.bus.instances().await {
            gw.live.observe(list, gw.rooms.local_counts());
        }
        return Json(gw.live.snapshot(&query)).into_response();
    }
    let taken = gw
        .live
        .streams
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_STREAMS).then_some(n + 1)
        });
    if taken.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many live streams\n").into_response();
    }
    let slot = StreamSlot(gw.clone());
    let sampled = gw.live.sampled.subscribe();
    let shutdown = gw.shutdown.clone();
    let state = (slot, sampled, shutdown, query, true);
    let stream = futures_util::stream::unfold(
        state,
        |(slot, mut sampled, mut shutdown, query, first)| async move {
            if !first {
                tokio::select! {
                    changed = sampled.changed() => changed.ok()?,
                    _ = shutdown.wait_for(|stopping| *stopping) => return None,
                }
            }
            if *shutdown.borrow() {
                return None;
            }
            let snapshot = slot.0.live.snapshot(&query);
            let data = serde_json::to_string(&snapshot).unwrap_or_default();
            let event = Ok::<Event, Infallible>(Event::default().event("snapshot").data(data));
            Some((event, (slot, sampled, shutdown, query, false)))
        },
    );
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    // Proxies that buffer responses would hold the stream back.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use danmaku_bus::InstanceReport;

    fn status(id: &str, started: u64, at: u64, counters: InstanceCounters) -> InstanceStatus {
        InstanceStatus {
            report: InstanceReport {
                id: id.into(),
                address: format!("{id}:1"),
                started_ms: started,
                rooms: vec![("r".into(), 3)],
                counters,
            },
            last_heartbeat_ms: at,
        }
    }

    fn counters(room: u64, posts: u64, rejected: u64) -> InstanceCounters {
        InstanceCounters {
            room_comments: vec![("r".into(), room)],
            posts_accepted: posts,
            rejected: vec![("rate_limited".into(), rejected)],
            frames_dropped: 0,
            slow_evictions: 0,
        }
    }

    #[test]
    fn rates_difference_counters_over_the_heartbeat_gap() {
        let prev = status("a", 1, 10_000, counters(10, 10, 2));
        let now = status("a", 1, 12_000, counters(30, 30, 6));
        let r = rates(&prev, &now);
        assert_eq!(r.room_comments["r"], 10.0);
        assert_eq!(r.posts, 10.0);
        assert_eq!(r.rejected["rate_limited"], 2.0);
        assert_eq!(r.dropped, 0.0);
    }

    #[test]
    fn a_restart_counts_from_zero() {
        // Same start time, but a counter went down: the room reopened.
        let prev = status("a", 1, 10_000, counters(100, 100, 0));
        let now = status("a", 1, 12_000, counters(4, 104, 0));
        assert_eq!(rates(&prev, &now).room_comments["r"], 2.0);
        // A new start time: every counter counts from zero.
        let now = status("a", 11_000, 12_000, counters(8, 8, 2));
        let r = rates(&prev, &now);
        assert_eq!((r.room_comments["r"], r.posts), (4.0, 4.0));
        assert_eq!(r.rejected["rate_limited"], 1.0);
    }

    #[test]
    fn rooms_take_the_highest_rate_and_the_fleet_sums_viewers() {
        let live = Live::new("a".into(), Duration::from_millis(500));
        let t = now_ms();
        live.observe(
            vec![
                status("a", 1, t - 2_000, counters(0, 0, 0)),
                status("b", 1, t - 2_000, counters(0, 0, 0)),
            ],
            vec![("r".into(), 5)],
        );
        live.observe(
            vec![
                status("a", 1, t, counters(20, 20, 0)),
                status("b", 1, t, counters(18, 0, 0)),
            ],
            vec![("r".into(), 5)],
        );
        live.record();
        let s = live.snapshot(&LiveQuery {
            room: Some("r".into()),
            ..LiveQuery::default()
        });
        // Local exact count for "a", the heartbeat's for "b".
        assert_eq!(s.total_online, 8);
        assert_eq!(s.rooms.len(), 1);
        assert_eq!(s.rooms[0].comments_per_s, 10.0);
        assert_eq!(s.comments_per_s, 10.0);
        assert_eq!(s.posts_per_s, 10.0);
        assert_eq!(s.instances.len(), 2);
        assert!(s.instances.iter().all(|i| i.healthy));
        assert_eq!(s.history.fleet.len(), 1);
        assert_eq!(s.history.room.as_ref().map(Vec::len), Some(1));
    }

    #[test]
    fn history_is_bounded() {
        let live = Live::new("a".into(), Duration::from_millis(500));
        for _ in 0..HISTORY_POINTS + 10 {
            live.record();
        }
        let s = live.snapshot(&LiveQuery::default());
        assert_eq!(s.history.fleet.len(), HISTORY_POINTS);
        assert!(s.history.room.is_none());
    }

    #[test]
    fn queries_are_checked() {
        let q = LiveQuery::parse(Some("once=1&room=abc&q=ab&token=t%20x")).unwrap();
        assert!(q.once);
        assert_eq!(q.room.as_deref(), Some("abc"));
        assert_eq!(q.q.as_deref(), Some("ab"));
        assert_eq!(q.token.as_deref(), Some("t x"));
        assert!(LiveQuery::parse(Some("room=a.b")).is_err());
        assert!(LiveQuery::parse(Some(&format!("q={}", "x".repeat(65)))).is_err());
    }
}
