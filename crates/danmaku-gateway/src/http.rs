//! HTTP: the routes, the WebSocket endpoint with its checks before the
//! upgrade (origin, room, identity, handshake headers, format, admission
//! overall and per client address), health
//! and readiness, and the one query-string parser. The JSON API and
//! `/metrics` live in `api.rs`.

use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::Router;
use danmaku_bus::Readiness;
use danmaku_proto::{validate_nick, Format, Role, RoomId};

use crate::api;
use crate::client_addr::ClientAddr;
use crate::conn::{self, Identity, Viewer};
use crate::server::Uncounted;
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
        // Checks the read credentials itself: they may come as `?token=`.
        .route("/api/live", get(crate::live::live))
        .merge(read_api(gw.clone()))
        .merge(crate::admin::routes())
        .merge(crate::web::routes())
        .with_state(gw)
}

/// The read API, behind `api_read_token` when one is configured.
fn read_api(gw: Arc<Gateway>) -> Router<Arc<Gateway>> {
    Router::new()
        .route("/api/rooms", get(api::rooms))
        .route("/api/instances", get(api::instances))
        .route("/api/stats", get(api::stats))
        .route_layer(axum::middleware::from_fn_with_state(gw, read_guard))
}

/// Lets a read API request through only with the read credentials.
async fn read_guard(
    State(gw): State<Arc<Gateway>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match crate::admin::check_read(&gw, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

/// The WebSocket version this server speaks (RFC 6455 §4.1).
const WS_VERSION: &str = "13";

/// Query parameters of the WebSocket endpoint.
#[derive(Debug, Default)]
struct WsQuery {
    nick: Option<String>,
    /// A signed token; `Authorization: Bearer` is the other way to give one.
    token: Option<String>,
}

impl WsQuery {
    /// Reads the raw query. Parsed here rather than by axum's `Query`,
    /// which turns bytes that are not UTF-8 into U+FFFD: a `nick` that does
    /// not decode is refused, not silently changed. Other keys are ignored.
    fn parse(raw: Option<&str>) -> Result<WsQuery, String> {
        let mut query = WsQuery::default();
        for (key, value) in query_pairs(raw) {
            let (slot, name) = match &key[..] {
                b"nick" => (&mut query.nick, "nick"),
                b"token" => (&mut query.token, "token"),
                _ => continue,
            };
            if slot.is_some() {
                return Err(format!("{name} is given more than once"));
            }
            let value =
                String::from_utf8(value).map_err(|_| format!("{name} is not valid UTF-8"))?;
            *slot = Some(value);
        }
        Ok(query)
    }
}

/// The `key=value` pairs of a query string, both percent-decoded (and `+`
/// read as a space, as in forms), as bytes: the caller decides what must be
/// UTF-8. A `%` not followed by two hex digits stays as it is.
pub(crate) fn query_pairs(raw: Option<&str>) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
    raw.unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
}

fn percent_decode(s: &str) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Whether a `Sec-WebSocket-Key` is what RFC 6455 §4.1 requires: the
/// base64 encoding of exactly 16 bytes, which is 22 characters of the
/// base64 alphabet, the last of them carrying no bits past the 128th, then
/// `==`.
fn valid_ws_key(key: &[u8]) -> bool {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let key = key.trim_ascii();
    let Some(body) = key.strip_suffix(b"==") else {
        return false;
    };
    let digit = |c: &u8| ALPHABET.iter().position(|a| a == c);
    body.len() == 22
        && body.iter().all(|c| digit(c).is_some())
        // 22 digits hold 132 bits: the last digit's low 4 must be zero.
        && digit(&body[21]).is_some_and(|d| d & 0x0f == 0)
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
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    uncounted: Option<Extension<Uncounted>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // First: a page from another site learns nothing else about us.
    if let Err(reason) = gw.origins.check(&headers) {
        gw.metrics.server.forbidden_origin.inc();
        return (StatusCode::FORBIDDEN, reason).into_response();
    }
    let room = match RoomId::parse(&room) {
        Ok(room) => room,
        Err(e) => return bad_request(e.to_string()),
    };
    let query = match WsQuery::parse(query.as_deref()) {
        Ok(query) => query,
        Err(reason) => return bad_request(reason),
    };
    let identity = match authenticate(&gw, &query, &headers) {
        Ok(identity) => identity,
        Err(refused) => return refused,
    };
    let mut upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        // RFC 6455 §4.4: name the version we speak, with 426.
        Err(WebSocketUpgradeRejection::InvalidWebSocketVersionHeader(_)) => {
            return (
                StatusCode::UPGRADE_REQUIRED,
                [(header::SEC_WEBSOCKET_VERSION, WS_VERSION)],
                "unsupported Sec-WebSocket-Version: this server speaks 13\n",
            )
                .into_response()
        }
        Err(rejection) => return rejection.into_response(),
    };
    // axum only checks that the key is present.
    let key = headers.get(header::SEC_WEBSOCKET_KEY);
    if !key.is_some_and(|k| valid_ws_key(k.as_bytes())) {
        return bad_request("Sec-WebSocket-Key must be the base64 encoding of 16 bytes");
    }
    if *gw.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    // Behind a trusted proxy, the client named by `X-Forwarded-For` is
    // counted here; other connections were counted at accept.
    let place = match uncounted.map(|Extension(u)| u.claim(client)) {
        None => None,
        Some(Some(claimed)) => Some(claimed),
        Some(None) => {
            gw.metrics.server.refused_per_ip.inc();
            return (
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from your address\n",
            )
                .into_response();
        }
    };
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
        peer = %client,
        user = %identity.user,
        role = identity.role.as_str()
    );
    let viewer = Viewer {
        room,
        format,
        identity,
        ip: client,
    };
    let c = &gw.conn;
    let gw2 = gw.clone();
    upgrade
        .read_buffer_size(c.read_buffer_bytes)
        .write_buffer_size(c.write_buffer_bytes)
        // The connection bounds what it buffers by waiting for the socket
        // (`max_write_buffer_bytes`, in `conn.rs`); tungstenite's own cap
        // would fail a write instead, so it is left unbounded.
        .max_write_buffer_size(usize::MAX)
        .max_message_size(c.max_frame_bytes)
        .max_frame_size(c.max_frame_bytes)
        .on_upgrade(move |ws| {
            // The connection gets a task of its own and axum's upgrade task
            // ends here, so idle connections do not also carry axum's
            // upgrade state. The slot is released when the connection ends,
            // or here when the upgrade fails and this never runs; so is the
            // per-address place, which the TCP stream holds from now on.
            if let Some(place) = place {
                place.keep();
            }
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

/// Who the connection speaks for, settled before the upgrade. With a token
/// (`?token=` or `Authorization: Bearer`), the token's user, name and role,
/// and `?nick=` is ignored; a token that does not verify is refused with
/// 401 in every mode, rather than quietly falling back to a guest. Without
/// one, a guest with a fresh id and an optional checked nickname, unless
/// `anonymous_watch` is off. Neither the token nor the query holding it is
/// ever logged.
#[allow(clippy::result_large_err)]
fn authenticate(gw: &Gateway, query: &WsQuery, headers: &HeaderMap) -> Result<Identity, Response> {
    let bearer = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty());
            match token {
                Some(token) => Some(token),
                None => return Err(unauthorized("Authorization must be `Bearer <token>`")),
            }
        }
    };
    let token = match (bearer, query.token.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(bad_request(
                "token is given both in the query and in Authorization",
            ))
        }
        (token, None) | (None, token) => token,
    };
    if let Some(token) = token {
        let claims = gw
            .auth
            .verify(token)
            .map_err(|e| unauthorized(&e.to_string()))?;
        return Ok(Identity {
            user: claims.sub,
            name: Some(claims.name),
            role: claims.role,
            exp: Some(claims.exp),
            rooms: claims.rooms,
        });
    }
    if !gw.auth.anonymous_watch {
        return Err(unauthorized("a token is required"));
    }
    let name = match &query.nick {
        None => None,
        Some(nick) => Some(validate_nick(nick).map_err(|e| bad_request(e.to_string()))?),
    };
    Ok(Identity {
        user: crate::ids::guest_id(),
        name,
        role: Role::Viewer,
        exp: None,
        rooms: None,
    })
}

/// 401 with a plain reason, and the scheme to use (RFC 6750 §3).
fn unauthorized(reason: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        format!("{reason}\n"),
    )
        .into_response()
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
        Readiness::Ready if !gw.modstate.is_ready() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: moderation state not loaded yet\n",
        )
            .into_response(),
        Readiness::Ready => (StatusCode::OK, "ready\n").into_response(),
        Readiness::NotReady(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}
