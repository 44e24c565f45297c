//! Publish and history on Redis (`Broker`): a comment's `PUBLISH` and its
//! history write (`RPUSH`, `LTRIM`, `PEXPIRE`) go in one MULTI/EXEC on the
//! command connection, so history holds exactly the published comments, in
//! publish order, as the very envelope bytes that were published.
//!
//! What each operation waits on, all within `op_timeout` overall:
//!
//! - `publish`: fails at once if the bus is not ready; if this instance
//!   serves the room and its `SUBSCRIBE` is not confirmed yet, waits for it
//!   up to half of `op_timeout` (so the poster sees its own comment), then
//!   runs the transaction in what is left.
//! - `recent`: waits the same way for the room's subscription (so `hello`
//!   promises every later comment), but reads history even if it did not
//!   come, then reads in what is left.
//! - `remove_history`: reads the room's history and removes (`LREM`) the
//!   exact bytes of the entries with that id. Not one transaction: an entry
//!   trimmed away in between is simply not counted as removed.

use danmaku_proto::{Danmaku, RoomId};

use super::recovery::decode_history;
use super::{millis, RedisBus};
use crate::deadline::bounded;
use crate::envelope::{self, Decoded};
use crate::{now_ms, BoxFuture, Broker, BusError, RoomEvent, Subscription};

impl Broker for RedisBus {
    fn publish(&self, room: &RoomId, event: RoomEvent) -> BoxFuture<'_, Result<(), BusError>> {
        let inner = &self.inner;
        let room = room.as_str().to_owned();
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
            let cfg = &inner.config.bus;
            let mut pipe = ::redis::pipe();
            pipe.atomic();
            pipe.cmd("PUBLISH")
                .arg(inner.keys.channel(&room))
                .arg(&bytes)
                .ignore();
            if matches!(event, RoomEvent::Comment(_)) && cfg.history_len > 0 {
                let history = inner.keys.history(&room);
                pipe.cmd("RPUSH").arg(&history).arg(&bytes).ignore();
                pipe.cmd("LTRIM")
                    .arg(&history)
                    .arg(-(cfg.history_len as i64))
                    .arg(-1)
                    .ignore();
                pipe.cmd("PEXPIRE")
                    .arg(&history)
                    .arg(millis(cfg.history_max_age).max(1))
                    .ignore();
            }
            inner.commands.query::<()>("publish", &pipe).await
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
