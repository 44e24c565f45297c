//! `post`: a comment from the client. It is moderated, given a fleet-unique
//! id, published on the bus, and answered with `ack` only once published;
//! every refusal is a `reject` with a stable code. Identity comes first: in
//! `token` mode a guest may not post, and a token that expired on the open
//! connection stops its posts until `auth` refreshes it.

use std::sync::Arc;

use danmaku_bus::{now_ms, RoomEvent};
use danmaku_moderation::PostContext;
use danmaku_proto::{Danmaku, Nonce, Post, RejectCode, ServerEvent};

use crate::conn::Conn;

/// Handles one post. Always answers, and never with an over-long nonce:
/// such a post is refused and its nonce is not echoed.
pub(crate) async fn handle(conn: &mut Conn, post: Post) {
    let nonce = match post.nonce() {
        Ok(nonce) => nonce,
        Err(e) => return refuse(conn, None, RejectCode::BadRequest, e.to_string(), None),
    };
    let gw = conn.gw.clone();
    let identity = &conn.viewer.identity;
    match identity.exp {
        None if gw.auth.required_to_post => {
            let message = "posting needs a signed token; connect with one";
            return refuse(conn, nonce, RejectCode::Unauthorized, message.into(), None);
        }
        Some(exp) if crate::auth::expired(exp) => {
            let message = "the token has expired; send a fresh one with `auth`";
            return refuse(conn, nonce, RejectCode::TokenExpired, message.into(), None);
        }
        _ => {}
    }
    let ctx = PostContext {
        room: &conn.viewer.room,
        user: &identity.user,
        role: identity.role,
        now: gw.moderator.now(),
    };
    let state = conn
        .moderation
        .get_or_insert_with(|| Box::new(gw.moderator.conn_state()));
    let accepted = match gw.moderator.check(&ctx, state, &post) {
        Ok(accepted) => accepted,
        Err(refusal) => {
            let retry = refusal.retry_after.map(|d| d.as_millis() as u64);
            return refuse(conn, nonce, refusal.code, refusal.message, retry);
        }
    };
    let comment = Arc::new(Danmaku {
        id: gw.ids.next(),
        room: conn.viewer.room.as_str().to_owned(),
        user: identity.user.clone(),
        name: identity.name.clone(),
        text: accepted.text,
        color: accepted.color,
        mode: accepted.mode,
        ts: now_ms(),
    });
    let id = comment.id.clone();
    // The outbox is not drained while this awaits, so the ack is queued
    // before the poster's own comment can be written. The bus bounds the
    // call itself and reports a timeout as an error.
    match gw
        .bus
        .publish(&conn.viewer.room, RoomEvent::Comment(comment))
        .await
    {
        Ok(()) => {
            gw.metrics.posts_accepted.inc();
            conn.reply(&ServerEvent::Ack { nonce, id });
        }
        Err(e) => {
            tracing::warn!(error = %e, "Publish failed");
            let message = "service temporarily unavailable; nothing was published";
            refuse(
                conn,
                nonce,
                RejectCode::Unavailable,
                message.into(),
                Some(1000),
            );
        }
    }
}

/// Counts and sends a `reject`.
fn refuse(
    conn: &Conn,
    nonce: Option<Nonce>,
    code: RejectCode,
    message: String,
    retry_after_ms: Option<u64>,
) {
    conn.gw.metrics.rejected(code).inc();
    conn.reply(&ServerEvent::Reject {
        nonce,
        code,
        message,
        retry_after_ms,
    });
}
