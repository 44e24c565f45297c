//! The read API: typed responses of `/api/*`, in one place, and `/metrics`.
//!
//! Every response body is a type here, so a field cannot change by accident
//! and tests can decode exactly what clients get. `/api/stats` and
//! `/metrics` read the same registry.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use danmaku_bus::{now_ms, InstanceStatus};
use serde::{Deserialize, Serialize};

use crate::Gateway;

/// One room in `GET /api/rooms`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomCount {
    /// The room.
    pub room: String,
    /// Viewers across the fleet.
    pub online: u64,
}

/// `GET /api/rooms[?limit=N][&cursor=C]`: one page of rooms.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomsResponse {
    /// This page's rooms, by online count descending, then by room id.
    pub rooms: Vec<RoomCount>,
    /// Sum of `online` over every room, not just this page.
    pub total_online: u64,
    /// Rooms over every page.
    #[serde(default)]
    pub total_rooms: u64,
    /// What to pass as `?cursor=` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Rooms on a page when `?limit=` is not given.
const DEFAULT_PAGE: usize = 100;
/// Most rooms on a page.
const MAX_PAGE: usize = 1000;

/// Where a page starts: just after this room in the listing's order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    online: u64,
    room: String,
}

impl Cursor {
    /// `<online>.<room>`: room ids never hold a `.`. Clients treat it as
    /// opaque, so the form may change.
    fn encode(&self) -> String {
        format!("{}.{}", self.online, self.room)
    }

    fn decode(s: &str) -> Option<Cursor> {
        let (online, room) = s.split_once('.')?;
        let online = online.parse().ok()?;
        danmaku_proto::RoomId::parse(room).ok()?;
        Some(Cursor {
            online,
            room: room.to_owned(),
        })
    }

    /// Whether `r` comes after the cursor: fewer viewers, or as many and a
    /// later id. A page boundary keeps its place when rooms come and go.
    fn precedes(&self, r: &RoomCount) -> bool {
        r.online < self.online || (r.online == self.online && r.room > self.room)
    }
}

/// The page `?limit=` and `?cursor=` ask for, or the 400 naming the bad one.
#[allow(clippy::result_large_err)]
fn page_query(raw: Option<&str>) -> Result<(usize, Option<Cursor>), Response> {
    let bad = |reason: &str| (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response();
    let (mut limit, mut cursor) = (None, None);
    for (key, value) in crate::http::query_pairs(raw) {
        let value = String::from_utf8(value);
        match key.as_slice() {
            b"limit" => {
                if limit.is_some() {
                    return Err(bad("limit is given more than once"));
                }
                let n = value
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
                    .filter(|n| (1..=MAX_PAGE).contains(n));
                let Some(n) = n else {
                    return Err(bad("limit must be an integer from 1 to 1000"));
                };
                limit = Some(n);
            }
            b"cursor" => {
                if cursor.is_some() {
                    return Err(bad("cursor is given more than once"));
                }
                // An empty cursor is the first page.
                let c = match value.as_deref() {
                    Ok("") => None,
                    Ok(v) => match Cursor::decode(v) {
                        Some(c) => Some(c),
                        None => return Err(bad("cursor is not one this server gave out")),
                    },
                    Err(_) => return Err(bad("cursor is not one this server gave out")),
                };
                cursor = Some(c);
            }
            _ => {}
        }
    }
    Ok((limit.unwrap_or(DEFAULT_PAGE), cursor.flatten()))
}

/// A live instance, as `GET /api/instances` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl From<InstanceStatus> for InstanceInfo {
    fn from(s: InstanceStatus) -> InstanceInfo {
        let r = s.report;
        InstanceInfo {
            connections: r.rooms.iter().map(|(_, n)| n).sum(),
            rooms: r.rooms.len() as u64,
            uptime_s: Duration::from_millis(now_ms().saturating_sub(r.started_ms)).as_secs(),
            last_heartbeat_ms: s.last_heartbeat_ms,
            id: r.id,
            address: r.address,
        }
    }
}

/// `GET /api/instances`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstancesResponse {
    /// Live instances, by id.
    pub instances: Vec<InstanceInfo>,
}

/// `GET /api/stats`: this instance's counters, read from the registry that
/// `/metrics` exposes.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsResponse {
    /// This instance's id.
    pub instance: String,
    /// Open WebSocket connections.
    pub connections: u64,
    /// Posts published and acknowledged.
    pub posts_accepted: u64,
    /// Posts refused, every code.
    pub posts_rejected: u64,
    /// Comments fanned out, once per room.
    pub comments_fanned_out: u64,
    /// Frames queued for viewers.
    pub frames_pushed: u64,
    /// Room frames dropped for viewers whose queue was full.
    pub frames_dropped: u64,
    /// Connections closed as too slow.
    pub slow_evictions: u64,
    /// Room events skipped because a room task fell behind the bus.
    pub bus_lagged: u64,
    /// The longest viewer queue seen since start, in frames.
    pub max_queued_frames: u64,
    /// The configured queue capacity, for comparison.
    pub outbox_frames: u64,
    /// The most bytes of comments and counts one viewer's queue held since
    /// start: at most `outbox_bytes`, unless a single frame was larger.
    #[serde(default)]
    pub max_queued_bytes: u64,
    /// The configured queue capacity in bytes, for comparison.
    #[serde(default)]
    pub outbox_bytes: u64,
    /// The most bytes one connection handed the WebSocket layer before
    /// waiting for its socket, since start: at most
    /// `max_write_buffer_bytes`, unless a single frame was larger.
    #[serde(default)]
    pub max_write_buffered_bytes: u64,
    /// The configured bound of that, for comparison.
    #[serde(default)]
    pub max_write_buffer_bytes: u64,
}

/// One page of the fleet's rooms. Pages follow a cursor rather than an
/// offset, so a room that comes or goes between two requests does not shift
/// every later page; counts that change between requests can still move a
/// room across a page boundary.
pub(crate) async fn rooms(State(gw): State<Arc<Gateway>>, RawQuery(query): RawQuery) -> Response {
    let (limit, cursor) = match page_query(query.as_deref()) {
        Ok(page) => page,
        Err(refused) => return refused,
    };
    let local = gw.rooms.local_counts();
    let all = gw.presence.all(&local);
    let total_rooms = all.len() as u64;
    let total_online = all.iter().map(|(_, n)| n).sum();
    let mut rooms: Vec<RoomCount> = all
        .into_iter()
        .map(|(room, online)| RoomCount { room, online })
        .filter(|r| cursor.as_ref().is_none_or(|c| c.precedes(r)))
        .collect();
    let order =
        |a: &RoomCount, b: &RoomCount| b.online.cmp(&a.online).then_with(|| a.room.cmp(&b.room));
    // Only the page needs sorting: pick it first.
    let more = rooms.len() > limit;
    if more {
        rooms.select_nth_unstable_by(limit, order);
        rooms.truncate(limit);
    }
    rooms.sort_unstable_by(order);
    let last = rooms.last().filter(|_| more);
    let next_cursor = last.map(|r| {
        Cursor {
            online: r.online,
            room: r.room.clone(),
        }
        .encode()
    });
    Json(RoomsResponse {
        rooms,
        total_online,
        total_rooms,
        next_cursor,
    })
    .into_response()
}

pub(crate) async fn instances(State(gw): State<Arc<Gateway>>) -> Response {
    // The bus bounds the call itself.
    match gw.bus.instances().await {
        Ok(list) => {
            let mut instances: Vec<InstanceInfo> = list.into_iter().map(Into::into).collect();
            instances.sort_by(|a, b| a.id.cmp(&b.id));
            Json(InstancesResponse { instances }).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

pub(crate) async fn stats(State(gw): State<Arc<Gateway>>) -> Json<StatsResponse> {
    let m = &gw.metrics;
    let f = &m.fanout;
    Json(StatsResponse {
        instance: gw.instance_id.clone(),
        connections: gw.connections() as u64,
        posts_accepted: m.posts_accepted.get(),
        posts_rejected: m.rejected_total(),
        comments_fanned_out: f.comments.get(),
        frames_pushed: f.frames_pushed.get(),
        frames_dropped: f.frames_dropped.get(),
        slow_evictions: f.slow_evictions.get(),
        bus_lagged: f.bus_lagged.get(),
        max_queued_frames: f.max_queued.get().max(0) as u64,
        outbox_frames: gw.conn.outbox_frames as u64,
        max_queued_bytes: f.max_queued_bytes.get().max(0) as u64,
        outbox_bytes: gw.conn.outbox_bytes as u64,
        max_write_buffered_bytes: f.max_write_buffered.get().max(0) as u64,
        max_write_buffer_bytes: gw.conn.max_write_buffer_bytes as u64,
    })
}

/// The registry in the OpenMetrics text format (what prometheus-client
/// writes: `info` metrics, `# EOF`). A scraper that asks for OpenMetrics,
/// as Prometheus does, is told so in the content type; its parser for the
/// older text format 0.0.4 would refuse the `info` type and mark the target
/// down. Anyone else (a browser, curl) gets the same text as `text/plain`,
/// so it shows in a browser instead of downloading.
pub(crate) async fn metrics(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let content_type = if openmetrics {
        OPENMETRICS_CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    ([(header::CONTENT_TYPE, content_type)], gw.metrics.render()).into_response()
}

/// The content type of the OpenMetrics text format, version 1.0.0.
pub(crate) const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
