//! `ping`: an application-level liveness check, answered with `pong`.

use danmaku_proto::{Ping, ServerEvent};

use crate::conn::Conn;

/// Answers with `pong`, echoing the nonce. A nonce over the limit makes the
/// frame a bad one: a ping has no reject to carry the refusal.
pub(crate) fn handle(conn: &mut Conn, ping: Ping) -> Result<(), String> {
    let nonce = ping.nonce().map_err(|e| e.to_string())?;
    conn.reply(&ServerEvent::Pong { nonce });
    Ok(())
}
