//! The moderation HTTP API: mutes, room modes, word lists, recalls and a
//! room's moderation view, plus the credential check of the read API.
//!
//! Every handler checks credentials first (401 without, 403 when
//! insufficient), then the body (400 naming the field), and only then acts
//! through [`ModState`](crate::modstate::ModState), the same path the
//! WebSocket `moderate` command takes; a refusal changes nothing. Bodies
//! are read by hand from a JSON object rather than derived, so an error can
//! always name its field and unknown fields are refused rather than ignored.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use danmaku_moderation::{Change, FieldError, RoomSettings, WordAction};
use danmaku_proto::{Role, RoomId};
use serde_json::{json, Map, Value};

use crate::modstate::{self, ActError, Actor};
use crate::Gateway;

/// Largest request body the API reads.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// The API's routes.
pub(crate) fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/api/rooms/{room}/mutes", post(room_mute))
        .route("/api/rooms/{room}/mutes/{user}", delete(room_unmute))
        .route("/api/mutes", post(global_mute))
        .route("/api/mutes/{user}", delete(global_unmute))
        .route("/api/rooms/{room}/settings", put(room_settings))
        .route("/api/rooms/{room}/danmaku/{id}", delete(recall))
        .route("/api/rooms/{room}/moderation", get(room_view))
        .route("/api/blocklist", post(block_word).get(blocklist))
        .route("/api/blocklist/{word}", delete(unblock_word))
        .route("/api/allowlist", post(allow_word).get(allowlist))
        .route("/api/allowlist/{word}", delete(disallow_word))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// A refusal, as the API answers it: a status and a JSON body
/// `{"error": code, "message": .., "field"?: ..}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    field: Option<&'static str>,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            field: None,
            message: message.into(),
        }
    }

    fn field(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            field: Some(field),
            message: format!("{field}: {}", message.into()),
        }
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> ApiError {
        ApiError::field(e.field, e.message)
    }
}

impl From<ActError> for ApiError {
    fn from(e: ActError) -> ApiError {
        match e {
            ActError::Forbidden(m) => ApiError::forbidden(m),
            ActError::BadRequest(f) => f.into(),
            ActError::Unavailable(b) => {
                tracing::warn!(error = %b, "Moderation store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the moderation store did not confirm the change in time; it may or may not have been applied, and repeating it is safe",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = match self.status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            _ => "unavailable",
        };
        let mut body = json!({ "error": code, "message": self.message });
        if let Some(field) = self.field {
            body["field"] = json!(field);
        }
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        }
        response
    }
}

type ApiResult = Result<Response, ApiError>;

/// The bearer token of a request: `Ok(None)` without `Authorization`.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(Some)
        .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <token>`"))
}

/// Equal strings, compared in time that does not depend on where they
/// first differ, so a token cannot be guessed byte by byte.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Who the request acts as: `admin_token`, or a moderator's or admin's
/// signed token. 401 without credentials or with a bad or expired token;
/// 403 for a viewer's token.
fn actor(gw: &Gateway, headers: &HeaderMap) -> Result<Actor, ApiError> {
    let Some(token) = bearer(headers)? else {
        return Err(ApiError::unauthorized(
            "credentials needed: Authorization: Bearer <admin_token or a moderator's token>",
        ));
    };
    if !gw.admin_token.is_empty() && same_secret(token, &gw.admin_token) {
        return Ok(Actor {
            name: "admin-token".into(),
            role: Role::Admin,
            rooms: None,
        });
    }
    let claims = gw
        .auth
        .verify(token)
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    if claims.role < Role::Moderator {
        return Err(ApiError::forbidden(
            "this needs a token with role moderator or admin",
        ));
    }
    Ok(Actor {
        name: claims.sub,
        role: claims.role,
        rooms: claims.rooms,
    })
}

/// Checks `api_read_token` for the read API, when one is configured:
/// it, `admin_token`, or a moderator's or admin's token pass.
pub(crate) fn check_read(gw: &Gateway, headers: &HeaderMap) -> Result<(), ApiError> {
    if gw.api_read_token.is_empty() {
        return Ok(());
    }
    match bearer(headers)? {
        Some(token) if same_secret(token, &gw.api_read_token) => Ok(()),
        Some(_) => actor(gw, headers).map(drop),
        None => Err(ApiError::unauthorized(
            "credentials needed: Authorization: Bearer <api_read_token>",
        )),
    }
}

/// A JSON object body, read field by field.
struct Body(Map<String, Value>);

impl Body {
    /// Parses `bytes` as a JSON object holding no field but `allowed`.
    fn parse(bytes: &[u8], allowed: &[&'static str]) -> Result<Body, ApiError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}"))
        })?;
        let Value::Object(map) = value else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "body must be a JSON object",
            ));
        };
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown field `{unknown}`; expected {}", allowed.join(", ")),
            ));
        }
        Ok(Body(map))
    }

    fn string(&self, field: &'static str) -> Result<String, ApiError> {
        match self.0.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) => Err(ApiError::field(field, "is required")),
            Some(_) => Err(ApiError::field(field, "must be a string")),
        }
    }

    fn u64(&self, field: &'static str) -> Result<Option<u64>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| ApiError::field(field, "must be a non-negative integer")),
        }
    }

    fn bool(&self, field: &'static str) -> Result<Option<bool>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::field(field, "must be true or false")),
        }
    }
}

fn room_id(room: &str) -> Result<RoomId, ApiError> {
    RoomId::parse(room).map_err(|e| ApiError::field("room", e.to_string()))
}

fn ok(value: Value) -> ApiResult {
    Ok(Json(value).into_response())
}

/// `POST /api/rooms/{room}/mutes` and `POST /api/mutes`: {user, seconds
/// (0 = permanent), shadow?}.
async fn mute(gw: &Gateway, headers: &HeaderMap, room: Option<&str>, body: &[u8]) -> ApiResult {
    let actor = actor(gw, headers)?;
    let room = room.map(room_id).transpose()?;
    let body = Body::parse(body, &["user", "seconds", "shadow"])?;
    let user = body.string("user")?;
    let seconds = body
        .u64("seconds")?
        .ok_or_else(|| ApiError::field("seconds", "is required (0 = permanent)"))?;
    let shadow = body.bool("shadow")?.unwrap_or(false);
    let change = modstate::mute(&actor, room.as_ref(), user, seconds, shadow)?;
    let answer = json!({ "change": &change });
    gw.modstate.act(&actor, change).await?;
    ok(answer)
}

async fn room_mute(
    State(gw): State<Arc<Gateway>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    mute(&gw, &headers, Some(&room), &body).await
}

async fn global_mute(State(gw): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    mute(&gw, &headers, None, &body).await
}

/// `DELETE /api/rooms/{room}/mutes/{user}` and `DELETE /api/mutes/{user}`.
async fn unmute(gw: &Gateway, headers: &HeaderMap, room: Option<&str>, user: String) -> ApiResult {
    actor(gw, headers)?;
    let room = room.map(room_id).transpose()?;
    let change = Change::Unmute {
        room: room.map(|r| r.as_str().to_owned()),
        user,
    };
    take(gw, headers, change).await
}

async fn room_unmute(
    State(gw): State<Arc<Gateway>>,
    Path((room, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    unmute(&gw, &headers, Some(&room), user).await
}

async fn global_unmute(
    State(gw): State<Arc<Gateway>>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    unmute(&gw, &headers, None, user).await
}

/// `PUT /api/rooms/{room}/settings`: {slow_mode_secs?, locked?}; a field
/// left out keeps its current value.
async fn room_settings(
    State(gw): State<Arc<Gateway>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let actor = actor(&gw, &headers)?;
    let room = room_id(&room)?;
    let body = Body::parse(&body, &["slow_mode_secs", "locked"])?;
    let current = gw
        .modstate
        .moderator
        .room_view(room.as_str(), danmaku_bus::now_ms())
        .settings;
    let slow_mode_secs = match body.u64("slow_mode_secs")? {
        None => current.slow_mode_secs,
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| *n <= danmaku_moderation::MAX_SLOW_MODE_SECS)
            .ok_or_else(|| {
                ApiError::field(
                    "slow_mode_secs",
                    format!(
                        "must be 0 (off) to {}",
                        danmaku_moderation::MAX_SLOW_MODE_SECS
                    ),
                )
            })?,
    };
    let settings = RoomSettings {
        slow_mode_secs,
        locked: body.bool("locked")?.unwrap_or(current.locked),
    };
    let change = Change::RoomSettings {
        room: room.as_str().to_owned(),
        settings,
    };
    gw.modstate.act(&actor, change).await?;
    ok(json!({ "room": room.as_str(), "settings": settings }))
}

/// `DELETE /api/rooms/{room}/danmaku/{id}`: recalls a comment everywhere.
async fn recall(
    State(gw): State<Arc<Gateway>>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let actor = actor(&gw, &headers)?;
    let room = room_id(&room)?;
    let in_history = gw.modstate.recall(&actor, &room, &id).await?;
    ok(json!({ "recalled": id, "in_history": in_history }))
}

/// `GET /api/rooms/{room}/moderation`: mutes, modes and recent actions.
async fn room_view(
    State(gw): State<Arc<Gateway>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let actor = actor(&gw, &headers)?;
    let room = room_id(&room)?;
    if !actor.may_act_in(room.as_str()) {
        return Err(ApiError::forbidden(format!(
            "you may not moderate room {room}"
        )));
    }
    let view = gw.modstate.room_view(&room).await?;
    Ok(Json(view).into_response())
}

/// `POST /api/blocklist`: {word, action: "block" | "mask"}.
async fn block_word(State(gw): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let actor = actor(&gw, &headers)?;
    let body = Body::parse(&body, &["word", "action"])?;
    let word = body.string("word")?;
    let action = match body.0.get("action") {
        None | Some(Value::Null) => WordAction::Block,
        Some(Value::String(a)) if a == "block" => WordAction::Block,
        Some(Value::String(a)) if a == "mask" => WordAction::Mask,
        Some(_) => return Err(ApiError::field("action", "must be \"block\" or \"mask\"")),
    };
    gw.modstate
        .act(
            &actor,
            Change::BlockWord {
                word: word.clone(),
                action,
            },
        )
        .await?;
    ok(json!({ "word": word, "action": action }))
}

/// Takes a change that needs no body, answering `{"ok": true}`.
async fn take(gw: &Gateway, headers: &HeaderMap, change: Change) -> ApiResult {
    let actor = actor(gw, headers)?;
    gw.modstate.act(&actor, change).await?;
    ok(json!({ "ok": true }))
}

async fn unblock_word(
    State(gw): State<Arc<Gateway>>,
    Path(word): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    take(&gw, &headers, Change::UnblockWord { word }).await
}

/// A word list, to credentials that may moderate somewhere.
fn listing(gw: &Gateway, headers: &HeaderMap, words: Vec<Value>) -> ApiResult {
    actor(gw, headers)?;
    ok(json!({ "words": words }))
}

/// `GET /api/blocklist`: every blocked word with its action.
async fn blocklist(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult {
    let moderator = &gw.modstate.moderator;
    let words = moderator.blocklist().into_iter();
    let words = words.map(|(word, action)| json!({ "word": word, "action": action }));
    listing(&gw, &headers, words.collect())
}

/// `POST /api/allowlist`: {word}.
async fn allow_word(State(gw): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let actor = actor(&gw, &headers)?;
    let body = Body::parse(&body, &["word"])?;
    let word = body.string("word")?;
    gw.modstate
        .act(&actor, Change::AllowWord { word: word.clone() })
        .await?;
    ok(json!({ "word": word }))
}

async fn disallow_word(
    State(gw): State<Arc<Gateway>>,
    Path(word): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    take(&gw, &headers, Change::DisallowWord { word }).await
}

/// `GET /api/allowlist`: every allowed word.
async fn allowlist(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult {
    let words = gw.modstate.moderator.allowlist().into_iter();
    let words = words.map(|word| json!({ "word": word }));
    listing(&gw, &headers, words.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "a"));
    }

    #[test]
    fn bodies_name_the_bad_field() {
        let err =
            |bytes: &str, allowed: &[&'static str], f: &dyn Fn(&Body) -> Result<(), ApiError>| {
                match Body::parse(bytes.as_bytes(), allowed).and_then(|b| f(&b)) {
                    Err(e) => e,
                    Ok(()) => panic!("{bytes} should be refused"),
                }
            };
        let e = err("[1]", &["user"], &|_| Ok(()));
        assert!(e.message.contains("object"));
        let e = err(r#"{"usr":"a"}"#, &["user"], &|_| Ok(()));
        assert!(e.message.contains("usr"));
        let e = err(r#"{}"#, &["user"], &|b| b.string("user").map(drop));
        assert_eq!(e.field, Some("user"));
        let e = err(r#"{"seconds":-1}"#, &["seconds"], &|b| {
            b.u64("seconds").map(drop)
        });
        assert_eq!(e.field, Some("seconds"));
        let e = err(r#"{"shadow":"yes"}"#, &["shadow"], &|b| {
            b.bool("shadow").map(drop)
        });
        assert_eq!(e.field, Some("shadow"));
        assert!(err("not json", &[], &|_| Ok(())).message.contains("JSON"));
    }
}
