//! `auth`: a fresh token for an open connection, so a client keeps posting
//! past its first token's expiry without reconnecting. The new token must be
//! for the same user: a connection's `user` never changes, since the room
//! and every comment already posted know it by that id.

use danmaku_proto::{Auth, ErrorCode, ServerEvent};

use crate::conn::Conn;

/// Checks the token and, if it is good and for this connection's user,
/// takes its name, role and expiry; answers `auth_ok`, or an `error` with
/// `bad_token` leaving the old identity as it was. An over-long nonce makes
/// the frame a bad one, as for `ping`.
pub(crate) fn handle(conn: &mut Conn, auth: Auth) -> Result<(), String> {
    let nonce = auth.nonce().map_err(|e| e.to_string())?;
    let refuse = |conn: &Conn, message: String| {
        tracing::debug!(reason = %message, "Token refresh refused");
        conn.reply(&ServerEvent::Error {
            nonce: None,
            code: ErrorCode::BadToken,
            message,
        });
    };
    let identity = &conn.viewer.identity;
    if identity.exp.is_none() {
        refuse(
            conn,
            "auth refreshes the token a connection opened with; reconnect with a token to sign in"
                .into(),
        );
        return Ok(());
    }
    let claims = match conn.gw.auth.verify(&auth.token) {
        Ok(claims) => claims,
        Err(e) => {
            refuse(conn, e.to_string());
            return Ok(());
        }
    };
    if claims.sub != identity.user {
        refuse(conn, "the token is for another user".into());
        return Ok(());
    }
    let identity = &mut conn.viewer.identity;
    identity.name = Some(claims.name);
    identity.role = claims.role;
    identity.exp = Some(claims.exp);
    identity.rooms = claims.rooms;
    let user = identity.user.clone();
    tracing::debug!(
        role = claims.role.as_str(),
        exp = claims.exp,
        "Token refreshed"
    );
    conn.reply(&ServerEvent::AuthOk {
        nonce,
        user,
        role: claims.role,
        exp: claims.exp,
    });
    Ok(())
}
