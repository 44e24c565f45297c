//! `post`: a comment from the client. It is moderated (locally, then
//! against the fleet-wide limits), given a fleet-unique id, published on the
//! bus, and answered with `ack` only once published;
//! every refusal is a `reject` with a stable code. Identity comes first: in
//! `token` mode a guest may not post, and a token that expired on the open
//! connection stops its posts until `auth` refreshes it.

use std::sync::Arc;

use danmaku_bus::{now_ms, LimitCheck, LimitKind, RoomEvent};
use danmaku_moderation::{ClusterCheck, ClusterKind, PostContext, Refusal};
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
    if !gw.modstate.is_ready() {
        return unavailable(conn, nonce, "moderation rules are still loading");
    }
    let moderator = &gw.modstate.moderator;
    let ctx = PostContext {
        room: &conn.viewer.room,
        user: &identity.user,
        role: identity.role,
        ip: conn.viewer.ip,
        now: moderator.now(),
        wall_ms: now_ms(),
    };
    let checked = match moderator.check(&ctx, &post) {
        Ok(checked) => checked,
        Err(refusal) => return refuse_with(conn, nonce, refusal),
    };
    // Fleet-wide limits (slow mode, budgets, duplicates), in one atomic
    // round trip, then the blocked-word verdict: the steps' order holds.
    if !checked.cluster.is_empty() {
        let checks = checked.cluster.iter().map(limit_check).collect();
        match gw.bus.check_limits(checks).await {
            Ok(None) => {}
            Ok(Some(exceeded)) => {
                let Some(check) = checked.cluster.get(exceeded.index) else {
                    return refuse(
                        conn,
                        nonce,
                        RejectCode::RateLimited,
                        "posting too fast".into(),
                        None,
                    );
                };
                let refusal = moderator.refusal(check, exceeded.retry_after);
                return refuse_with(conn, nonce, refusal);
            }
            Err(e) => {
                tracing::warn!(error = %e, "Limit check failed");
                return unavailable(conn, nonce, "service temporarily unavailable");
            }
        }
    }
    if let Some(refusal) = checked.blocked {
        return refuse_with(conn, nonce, refusal);
    }
    let accepted = checked.accepted;
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
    if checked.shadow {
        // A shadow-muted poster is answered and shown its own comment as
        // usual; nothing is published, so nobody else ever receives it.
        gw.metrics.posts_shadowed.inc();
        conn.reply(&ServerEvent::Ack { nonce, id });
        conn.reply(&ServerEvent::Danmaku(Arc::unwrap_or_clone(comment)));
        return;
    }
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
            unavailable(conn, nonce, "service temporarily unavailable");
        }
    }
}

/// The bus's form of a fleet-wide check moderation asked for.
fn limit_check(check: &ClusterCheck) -> LimitCheck {
    LimitCheck {
        key: check.key.clone(),
        kind: match check.kind {
            ClusterKind::Gcra { period, burst } => LimitKind::Gcra { period, burst },
            ClusterKind::Once { ttl } => LimitKind::Once { ttl },
        },
    }
}

/// Refuses with `unavailable`, to retry in a second: nothing was published.
fn unavailable(conn: &Conn, nonce: Option<Nonce>, why: &str) {
    let message = format!("{why}; nothing was published");
    refuse(conn, nonce, RejectCode::Unavailable, message, Some(1000))
}

/// Sends moderation's refusal.
fn refuse_with(conn: &Conn, nonce: Option<Nonce>, refusal: Refusal) {
    let retry = refusal
        .retry_after
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    refuse(conn, nonce, refusal.code, refusal.message, retry)
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
