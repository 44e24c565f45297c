//! `moderate`: a moderator's action on its open connection. The same
//! actions, checks and effects as the admin HTTP API.

use danmaku_proto::Moderate;

use crate::conn::Conn;

/// Handles one command; always answers with `moderated` or an `error`.
pub(crate) async fn handle(conn: &mut Conn, command: Moderate) -> Result<(), String> {
    let _ = (conn, command);
    Err("moderate: not yet implemented".into())
}
