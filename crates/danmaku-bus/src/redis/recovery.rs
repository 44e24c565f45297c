//! Recovery of the comments a room missed while the pub/sub link was down.
//!
//! History is written in the same atomic script as each publish, so it
//! holds a room's comments in publish order. After a new link subscribed
//! every room, each room that was confirmed on an earlier link gets, from
//! history, what it missed:
//!
//! - a room that had received a comment: the comments after its last one
//!   (or, if that one left history, those stamped after it, minus the
//!   clock-skew allowance);
//! - a room that had not received any comment yet: the comments stamped
//!   after its `SUBSCRIBE` was first confirmed, minus the same allowance
//!   (comments are stamped by the instance that accepted them, whose clock
//!   may lag this one's). Whatever came before that confirmation was never
//!   promised to the room.
//!
//! Comments published after the new `SUBSCRIBE` also come live and are
//! dropped then (`RoomState::recovered`), so nothing is delivered twice.
//! Bounded by history: beyond `history_len` missed comments, the oldest
//! stay lost. A room first confirmed on the new link missed nothing.
//! Deletes are not history: one published during the outage is lost, but a
//! comment removed from history meanwhile is not replayed either.

use std::sync::Arc;
use std::time::Duration;

use danmaku_proto::Danmaku;
use tokio::time::Instant;

use super::{millis, Inner};
use crate::envelope::{self, Decoded};
use crate::{now_ms, RoomEvent};

/// Clock difference between instances tolerated when comparing comment
/// timestamps set by different instances, in ms.
const CLOCK_SKEW_MS: u64 = 5_000;

/// Where a room's recovery starts.
pub(crate) enum Resume {
    /// After the last comment it received: its id and timestamp.
    After(String, u64),
    /// It received none: everything stamped since its subscription was
    /// first confirmed, at this time (ms since the epoch).
    Since(u64),
}

/// Where each room confirmed on an earlier link resumes. Taken before the
/// new link confirms anything.
pub(crate) fn resume_points(inner: &Inner) -> Vec<(String, Resume)> {
    inner
        .rooms
        .map
        .lock()
        .iter()
        .filter_map(|(room, st)| {
            let resume = match (&st.last, st.confirmed_ms) {
                (Some(last), _) => Resume::After(last.id.clone(), last.ts),
                (None, Some(ms)) => Resume::Since(ms),
                (None, None) => return None,
            };
            Some((room.clone(), resume))
        })
        .collect()
}

/// Replays each room's missed comments into its subscriptions.
pub(crate) async fn recover_missed(inner: &Inner, resume: Vec<(String, Resume)>) {
    if inner.config.bus.history_len == 0 || resume.is_empty() {
        return;
    }
    inner.metrics.recoveries.inc();
    let mut pipe = ::redis::pipe();
    for (room, _) in &resume {
        pipe.cmd("LRANGE")
            .arg(inner.keys.history(room))
            .arg(0)
            .arg(-1);
    }
    // After a Redis restart the command connection may come back a moment
    // after this one.
    let deadline = Instant::now() + inner.config.bus.op_timeout;
    while !inner.commands.is_up() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let oldest = now_ms().saturating_sub(millis(inner.config.bus.history_max_age));
    let histories: Vec<Vec<Vec<u8>>> = match inner
        .commands
        .query("recovering comments", &pipe)
        .await
    {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "Comments missed while disconnected cannot be recovered");
            return;
        }
    };
    let (mut recovered, mut unknown) = (0usize, 0usize);
    for ((room, resume), raw) in resume.iter().zip(histories) {
        let entries = decode_history(inner, room, &raw);
        let missed: Vec<Arc<Danmaku>> = match resume {
            Resume::After(last_id, last_ts) => {
                match entries.iter().position(|d| &d.id == last_id) {
                    Some(at) => entries[at + 1..].to_vec(),
                    // Without the last one seen (trimmed away, expired, or
                    // gone with a Redis restart), every entry is newer than
                    // it: all were missed. Timestamps, allowing for clock
                    // skew, guard against replaying older ones should an
                    // instance not keep history.
                    None => {
                        unknown += 1;
                        let floor = last_ts.saturating_sub(CLOCK_SKEW_MS).max(oldest);
                        entries.into_iter().filter(|d| d.ts >= floor).collect()
                    }
                }
            }
            Resume::Since(confirmed_ms) => {
                let floor = confirmed_ms.saturating_sub(CLOCK_SKEW_MS).max(oldest);
                entries.into_iter().filter(|d| d.ts >= floor).collect()
            }
        };
        if missed.is_empty() {
            continue;
        }
        let mut map = inner.rooms.map.lock();
        let Some(st) = map.get_mut(room) else {
            continue;
        };
        recovered += missed.len();
        for d in missed {
            st.recovered.insert(d.id.clone());
            st.last = Some(d.clone());
            st.fanout.send(RoomEvent::Comment(d));
        }
    }
    inner.metrics.recovered_comments.inc_by(recovered as u64);
    if recovered > 0 || unknown > 0 {
        tracing::info!(
            recovered,
            rooms_without_last_seen = unknown,
            "Recovered comments missed while disconnected"
        );
    }
}

/// Decodes history entries (envelopes of any version, or legacy bare
/// comments) into comments, oldest first, skipping and counting the rest.
pub(crate) fn decode_history(inner: &Inner, room: &str, raw: &[Vec<u8>]) -> Vec<Arc<Danmaku>> {
    raw.iter()
        .filter_map(|bytes| match envelope::decode(bytes) {
            Ok(Decoded::Event(RoomEvent::Comment(d))) => Some(d),
            Ok(_) => {
                inner.metrics.unknown_events.inc();
                None
            }
            Err(e) => {
                inner.metrics.invalid_payloads.inc();
                tracing::debug!(room, error = %e, "Undecodable history entry skipped");
                None
            }
        })
        .collect()
}
