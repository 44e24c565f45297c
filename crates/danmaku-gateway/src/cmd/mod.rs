//! One handler per client command, as mini-redis keeps one per Redis
//! command: each module decides what a command means and queues the answer;
//! the connection loop in `conn.rs` stays about I/O.
//!
//! A handler returns `Err(reason)` when the frame itself is unusable: the
//! connection then counts it as a bad frame.

pub(crate) mod auth;
pub(crate) mod moderate;
pub(crate) mod ping;
pub(crate) mod post;
