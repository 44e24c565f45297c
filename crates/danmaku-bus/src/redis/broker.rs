//! Publish and history on Redis (`Broker`): a comment's `PUBLISH` and its
//! history write (`RPUSH`, `LTRIM`, `PEXPIRE`) run in one Lua script
//! ([`PUBLISH_SCRIPT`], by its SHA) on the command connection, atomically,
//! so history holds exactly the published comments, in publish order, as
//! the very envelope bytes that were published.
//!
//! The script first compares Redis `TIME` with the publish's deadline and
//! does nothing (answering 0) once it has passed. The deadline is the
//! operation's own (its start plus `op_timeout`), less a reply allowance
//! (a tenth of `op_timeout`, at most 100 ms) so an answer still has time to
//! come back, expressed on Redis's clock through a lower bound of it
//! (`clock.rs`). So a publish the caller saw time out, because Redis was
//! stalled (`DEBUG SLEEP`, `CLIENT PAUSE WRITE`, a slow fork...) and ran
//! nothing before the deadline, can never take effect later: the promise
//! behind `BusError::Unavailable` ("nothing was published") holds. A script
//! that ran before the deadline but whose answer is lost is the one case
//! left open, as with any request. The history write goes first, so a
//! refused write (out of memory) aborts the script before anything is
//! published.
//!
//! What each operation waits on, all within `op_timeout` overall:
//!
//! - `publish`: fails at once if the bus is not ready; if this instance
//!   serves the room and its `SUBSCRIBE` is not confirmed yet, waits for it
//!   up to half of `op_timeout` (so the poster sees its own comment), then
//!   runs the script in what is left.
//! - `recent`: waits the same way for the room's subscription (so `hello`
//!   promises every later comment), but reads history even if it did not
//!   come, then reads in what is left.
//! - `remove_history`: reads the room's history and removes (`LREM`) the
//!   exact bytes of the entries with that id. Not one transaction: an entry
//!   trimmed away in between is simply not counted as removed.

use std::time::Duration;

use danmaku_proto::{Danmaku, RoomId};
use tokio::time::Instant;

use super::recovery::decode_history;
use super::{millis, RedisBus};
use crate::deadline::bounded;
use crate::envelope::{self, Decoded};
use crate::{now_ms, BoxFuture, Broker, BusError, RoomEvent, Subscription};

/// The publish script. `KEYS[1]`: the room's history list. `ARGV`: the
/// deadline (µs since the epoch, Redis's clock), the channel, the envelope,
/// how many comments history keeps (`0`: not a comment, no history write)
/// and its negation for `LTRIM`, and history's lifetime in ms. Answers 1 if
/// it published, 0 if the deadline had passed and it did nothing.
/// `replicate_commands` lets Redis before 5 write after reading `TIME`.
pub(crate) const PUBLISH_SCRIPT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local now = redis.call('TIME')
if tonumber(now[1]) * 1000000 + tonumber(now[2]) > tonumber(ARGV[1]) then
  return 0
end
if ARGV[4] ~= '0' then
  redis.call('RPUSH', KEYS[1], ARGV[3])
  redis.call('LTRIM', KEYS[1], ARGV[5], -1)
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"#;

impl Broker for RedisBus {
    fn publish(&self, room: &RoomId, event: RoomEvent) -> BoxFuture<'_, Result<(), BusError>> {
        let inner = &self.inner;
        let room = room.as_str().to_owned();
        let started = Instant::now();
        let publish = async move {
            inner.check_ready()?;
            let wait = inner.op_timeout() / 2;
            if !inner
                .rooms
                .wait_subscribed(&room, inner.pubsub_up(), wait)
                .await
            {
                return Err(BusError::Unavailable(
                    "the room's subscription is not confirmed yet".into(),
                ));
            }
            let bytes = envelope::encode(&event)
                .map_err(|e| BusError::Unavailable(format!("encoding the event: {e}")))?;
            let op_timeout = inner.op_timeout();
            let allowance = (op_timeout / 10).min(Duration::from_millis(100));
            let deadline_us = inner
                .commands
                .redis_time_us(started + op_timeout - allowance)
                .ok_or_else(|| BusError::Unavailable("redis clock not read yet".into()))?;
            let cfg = &inner.config.bus;
            let keep = match event {
                RoomEvent::Comment(_) => cfg.history_len,
                _ => 0,
            };
            let deadline = deadline_us.to_string();
            let keep_arg = keep.to_string();
            let trim_arg = (-(keep as i64)).to_string();
            let max_age = millis(cfg.history_max_age).max(1).to_string();
            let channel = inner.keys.channel(&room);
            let history = inner.keys.history(&room);
            let published: i64 = inner
                .commands
                .eval(
                    "publish",
                    PUBLISH_SCRIPT,
                    &[history.as_bytes()],
                    &[
                        deadline.as_bytes(),
                        channel.as_bytes(),
                        &bytes,
                        keep_arg.as_bytes(),
                        trim_arg.as_bytes(),
                        max_age.as_bytes(),
                    ],
                )
                .await?;
            if published != 1 {
                return Err(BusError::Unavailable(
                    "publish: redis got to it only after its deadline; nothing was published"
                        .into(),
                ));
            }
            if keep > 0 {
                inner.commands.wrote();
            }
            Ok(())
        };
        Box::pin(async move {
            let out = bounded(inner.op_timeout(), "publish", publish).await;
            if out.is_err() {
                inner.metrics.publish_errors.inc();
            }
            out
        })
    }

    fn subscribe(&self, room: &RoomId) -> Subscription {
        self.inner.rooms.subscribe(room)
    }

    fn recent(&self, room: &RoomId) -> BoxFuture<'_, Result<Vec<Danmaku>, BusError>> {
        let inner = &self.inner;
        let room = room.as_str().to_owned();
        Box::pin(bounded(inner.op_timeout(), "reading history", async move {
            let wait = inner.op_timeout() / 2;
            inner
                .rooms
                .wait_subscribed(&room, inner.pubsub_up(), wait)
                .await;
            let cfg = &inner.config.bus;
            if cfg.history_len == 0 {
                return Ok(Vec::new());
            }
            let mut pipe = ::redis::pipe();
            pipe.cmd("LRANGE")
                .arg(inner.keys.history(&room))
                .arg(-(cfg.history_len as i64))
                .arg(-1);
            let (raw,): (Vec<Vec<u8>>,) = inner.commands.query("reading history", &pipe).await?;
            let oldest = now_ms().saturating_sub(millis(cfg.history_max_age));
            Ok(decode_history(inner, &room, &raw)
                .into_iter()
                .filter(|d| d.ts >= oldest)
                .map(|d| (*d).clone())
                .collect())
        }))
    }

    fn remove_history(&self, room: &RoomId, id: &str) -> BoxFuture<'_, Result<bool, BusError>> {
        let inner = &self.inner;
        let key = inner.keys.history(room.as_str());
        let id = id.to_owned();
        Box::pin(bounded(
            inner.op_timeout(),
            "removing from history",
            async move {
                let mut pipe = ::redis::pipe();
                pipe.cmd("LRANGE").arg(&key).arg(0).arg(-1);
                let (raw,): (Vec<Vec<u8>>,) =
                    inner.commands.query("reading history", &pipe).await?;
                let mut matching: Vec<&Vec<u8>> = raw
                    .iter()
                    .filter(|bytes| {
                        matches!(envelope::decode(bytes),
                        Ok(Decoded::Event(RoomEvent::Comment(d))) if d.id == id)
                    })
                    .collect();
                matching.dedup();
                if matching.is_empty() {
                    return Ok(false);
                }
                let mut pipe = ::redis::pipe();
                pipe.atomic();
                for bytes in &matching {
                    pipe.cmd("LREM").arg(&key).arg(0).arg(bytes.as_slice());
                }
                let removed: Vec<u64> =
                    inner.commands.query("removing from history", &pipe).await?;
                Ok(removed.iter().sum::<u64>() > 0)
            },
        ))
    }
}
