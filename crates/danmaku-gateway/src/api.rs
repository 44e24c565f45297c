//! The read API: typed responses of `/api/*`, in one place, and `/metrics`.
//!
//! Every response body is a type here, so a field cannot change by accident
//! and tests can decode exactly what clients get. `/api/stats` and
//! `/metrics` read the same registry.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
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

/// `GET /api/rooms`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomsResponse {
    /// Rooms by online count, descending.
    pub rooms: Vec<RoomCount>,
    /// Sum of `online`.
    pub total_online: u64,
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

pub(crate) async fn rooms(State(gw): State<Arc<Gateway>>) -> Json<RoomsResponse> {
    let local = gw.rooms.local_counts();
    let mut rooms: Vec<RoomCount> = gw
        .presence
        .all(&local)
        .into_iter()
        .map(|(room, online)| RoomCount { room, online })
        .collect();
    rooms.sort_by(|a, b| b.online.cmp(&a.online).then_with(|| a.room.cmp(&b.room)));
    let total_online = rooms.iter().map(|r| r.online).sum();
    Json(RoomsResponse {
        rooms,
        total_online,
    })
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

/// Prometheus text exposition format, version 0.0.4.
pub(crate) async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        gw.metrics.render(),
    )
        .into_response()
}
