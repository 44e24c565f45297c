//! HTTP: the routes, the WebSocket endpoint with its checks before the
//! upgrade (room, identity, format, admission), health and readiness. The
//! JSON API and `/metrics` live in `api.rs`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use danmaku_bus::Readiness;
use danmaku_proto::{validate_nick, Format, Role, RoomId};
use serde::Deserialize;

use crate::api;
use crate::conn::{self, Identity, Viewer};
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
        .route("/metrics", get(api::metrics))
        .route("/api/rooms", get(api::rooms))
        .route("/api/instances", get(api::instances))
        .route("/api/stats", get(api::stats))
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
    let query = match query {
        Ok(Query(query)) => query,
        Err(e) => return bad_request(e.body_text()),
    };
    let identity = match authenticate(&query) {
        Ok(identity) => identity,
        Err(refused) => return refused,
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
    let format = negotiate_format(&headers);
    if let Some(format) = format {
        upgrade.set_selected_protocol(HeaderValue::from_static(format.subprotocol()));
    }
    let format = format.unwrap_or(Format::Json);
    let conn_id = gw.next_conn_id();
    let span = tracing::info_span!(
        "conn",
        room = %room,
        conn = conn_id,
        peer = %peer,
        user = %identity.user,
        role = identity.role.as_str()
    );
    let viewer = Viewer {
        room,
        format,
        identity,
    };
    let c = &gw.conn;
    let gw2 = gw.clone();
    upgrade
        .read_buffer_size(c.read_buffer_bytes)
        .write_buffer_size(c.write_buffer_bytes)
        .max_write_buffer_size(c.max_write_buffer_bytes)
        .max_message_size(c.max_frame_bytes)
        .max_frame_size(c.max_frame_bytes)
        .on_upgrade(move |ws| {
            // The connection gets a task of its own and axum's upgrade task
            // ends here, so idle connections do not also carry axum's
            // upgrade state. The slot is released when the connection ends,
            // or here when the upgrade fails and this never runs.
            conn::start(gw2, ws, viewer, slot, conn_id, span);
            std::future::ready(())
        })
}

/// The client's first offered subprotocol that we speak, in the client's
/// order (axum's own list is sorted); `None` means plain JSON.
fn negotiate_format(headers: &HeaderMap) -> Option<Format> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|p| p.to_str().ok())
        .flat_map(|p| p.split(','))
        .find_map(Format::from_subprotocol)
}

/// Who the connection speaks for. Today every connection is a guest with a
/// fresh id and an optional checked nickname; signed tokens will add users
/// and roles here, before the upgrade, without touching the connection.
#[allow(clippy::result_large_err)]
fn authenticate(query: &WsQuery) -> Result<Identity, Response> {
    let name = match &query.nick {
        None => None,
        Some(nick) => Some(validate_nick(nick).map_err(|e| bad_request(e.to_string()))?),
    };
    Ok(Identity {
        user: crate::ids::guest_id(),
        name,
        role: Role::Viewer,
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
