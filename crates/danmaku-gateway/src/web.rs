//! The web face: the viewer pages and the JavaScript client, compiled into
//! the binary so `cargo run` and a container need no files beside it.
//!
//! `GET /` is the room picker, `GET /room/{room}` a room's viewer page,
//! `GET /dashboard` the fleet's live dashboard and moderation panel,
//! `GET /client/danmaku.js` (and its `.d.ts`) the client library, and
//! `GET /static/{file}` the pages' scripts and styles. Every response is a
//! fixed asset; pages get their data from the API and the WebSocket.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use danmaku_proto::RoomId;

use crate::Gateway;

/// One embedded file: its name under `/static/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The pages' scripts and styles, served under `/static/`.
const STATIC: &[Asset] = &[
    Asset {
        name: "room.js",
        content_type: JS,
        body: include_str!("../../../web/room.js"),
    },
    Asset {
        name: "renderer.js",
        content_type: JS,
        body: include_str!("../../../web/renderer.js"),
    },
    Asset {
        name: "style.css",
        content_type: CSS,
        body: include_str!("../../../web/style.css"),
    },
    Asset {
        name: "dashboard.js",
        content_type: JS,
        body: include_str!("../../../web/dashboard.js"),
    },
    Asset {
        name: "chart.js",
        content_type: JS,
        body: include_str!("../../../web/chart.js"),
    },
    Asset {
        name: "dashboard.css",
        content_type: CSS,
        body: include_str!("../../../web/dashboard.css"),
    },
];

const INDEX: &str = include_str!("../../../web/index.html");
const ROOM: &str = include_str!("../../../web/room.html");
const DASHBOARD: &str = include_str!("../../../web/dashboard.html");
const CLIENT: &str = include_str!("../../../clients/js/danmaku.js");
const CLIENT_TYPES: &str = include_str!("../../../clients/js/danmaku.d.ts");

/// The web routes.
pub(crate) fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/", get(|| async { asset(HTML, INDEX) }))
        .route("/room/{room}", get(room))
        .route("/dashboard", get(|| async { asset(HTML, DASHBOARD) }))
        .route("/client/danmaku.js", get(|| async { asset(JS, CLIENT) }))
        .route(
            "/client/danmaku.d.ts",
            get(|| async { asset("text/plain; charset=utf-8", CLIENT_TYPES) }),
        )
        .route("/static/{file}", get(static_file))
}

/// A fixed asset. `no-cache` makes browsers revalidate, so a new build's
/// pages are seen at once; the pages are small.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The viewer page, for a valid room id; the page reads the room from its
/// own address.
async fn room(Path(room): Path<String>) -> Response {
    match RoomId::parse(&room) {
        Ok(_) => asset(HTML, ROOM),
        Err(e) => (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
    }
}

async fn static_file(Path(file): Path<String>) -> Response {
    match STATIC.iter().find(|a| a.name == file) {
        Some(a) => asset(a.content_type, a.body),
        None => (StatusCode::NOT_FOUND, "no such file\n").into_response(),
    }
}
