//! HTTP: the WebSocket endpoint with its checks before the upgrade, health
//! and readiness, and the JSON API.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use danmaku_bus::Readiness;
use danmaku_proto::{validate_nick, Format, RoomId};
use serde::{Deserialize, Serialize};

use crate::conn::{self, Viewer};
use crate::Gateway;

/// The gateway's routes.
pub(crate) fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/ws/{room}", get(ws_upgrade))
        .route("/ws", get(bad_room))
        .route("/ws/", get(bad_room))
        .route("/ws/{room}/{*rest}", get(bad_room))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/rooms", get(api_rooms))
        .route("/api/instances", get(api_instances))
        .route("/api/stats", get(api_stats))
        .with_state(gw)
}

/// Query parameters of the WebSocket endpoint.
#[derive(Debug, Deserialize)]
struct WsQuery {
    nick: Option<String>,
}

fn bad_request(reason: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, format!("{}\n", reason.into())).into_response()
}

async fn bad_room() -> Response {
    bad_request("room id must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-'")
}

async fn ws_upgrade(
    State(gw): State<Arc<Gateway>>,
    Path(room): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    query: Result<Query<WsQuery>, QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let room = match RoomId::parse(&room) {
        Ok(room) => room,
        Err(e) => return bad_request(e.to_string()),
    };
    let name = match query {
        Err(e) => return bad_request(e.body_text()),
        Ok(Query(WsQuery { nick: None })) => None,
        Ok(Query(WsQuery { nick: Some(nick) })) => match validate_nick(&nick) {
            Ok(nick) => Some(nick),
            Err(e) => return bad_request(e.to_string()),
        },
    };
    let mut upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    if *gw.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let Some(slot) = gw.admit() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    };
    // The client's first offered protocol that we speak, in the client's
    // order (axum's own list is sorted); JSON if none.
    let format = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|p| p.to_str().ok())
        .flat_map(|p| p.split(','))
        .find_map(Format::from_subprotocol);
    if let Some(format) = format {
        upgrade.set_selected_protocol(HeaderValue::from_static(format.subprotocol()));
    }
    let format = format.unwrap_or(Format::Json);
    let s = &gw.settings;
    let conn_id = gw.conn_seq.fetch_add(1, Ordering::Relaxed);
    let user = crate::ids::guest_id();
    let span =
        tracing::info_span!("conn", room = %room, conn = conn_id, peer = %peer, user = %user);
    let viewer = Viewer {
        room,
        format,
        user,
        name,
    };
    let gw2 = gw.clone();
    upgrade
        .read_buffer_size(s.read_buffer_bytes)
        .write_buffer_size(s.write_buffer_bytes)
        .max_write_buffer_size(s.max_write_buffer_bytes)
        .max_message_size(s.max_frame_bytes as usize)
        .max_frame_size(s.max_frame_bytes as usize)
        .on_upgrade(move |ws| {
            // The connection gets a task of its own and axum's upgrade task
            // ends here, so idle connections do not also carry axum's
            // upgrade state. The slot is released when the connection ends,
            // or here when the upgrade fails and this never runs.
            conn::start(gw2, ws, viewer, slot, conn_id, span);
            std::future::ready(())
        })
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    if *gw.shutdown.borrow() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        )
            .into_response();
    }
    match gw.bus.readiness() {
        Readiness::Ready => (StatusCode::OK, "ready\n").into_response(),
        Readiness::NotReady(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

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

async fn api_rooms(State(gw): State<Arc<Gateway>>) -> Json<RoomsResponse> {
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

async fn api_instances(State(gw): State<Arc<Gateway>>) -> Response {
    match tokio::time::timeout(gw.bus_timeout(), gw.bus.instances()).await {
        Ok(Ok(mut list)) => {
            list.sort_by(|a, b| a.id.cmp(&b.id));
            Json(serde_json::json!({ "instances": list })).into_response()
        }
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "bus timed out\n").into_response(),
    }
}

async fn api_stats(State(gw): State<Arc<Gateway>>) -> Json<serde_json::Value> {
    let f = &gw.rooms.stats;
    Json(serde_json::json!({
        "instance": gw.instance_id,
        "connections": gw.connections(),
        "posts_accepted": gw.stats.posts_accepted.load(Ordering::Relaxed),
        "posts_rejected": gw.stats.posts_rejected.load(Ordering::Relaxed),
        "comments_fanned_out": f.comments.load(Ordering::Relaxed),
        "frames_pushed": f.frames_pushed.load(Ordering::Relaxed),
        "frames_dropped": f.frames_dropped.load(Ordering::Relaxed),
        "slow_evictions": f.slow_evictions.load(Ordering::Relaxed),
        "bus_lagged": f.bus_lagged.load(Ordering::Relaxed),
        "max_queued_frames": gw.rooms.max_queued(),
        "outbox_frames": gw.settings.outbox_frames,
    }))
}
