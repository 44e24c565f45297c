//! Fleet presence on Redis: each instance's heartbeat is a hash that
//! expires after `heartbeat_ttl`, indexed by a sorted set scored by the
//! time of the heartbeat. Readers only count heartbeats younger than the
//! TTL, and prune older ones from the index on the way, so a killed
//! instance leaves the fleet's counts within the TTL without anyone
//! cleaning up after it.

use std::collections::HashMap;

use super::{millis, Inner, RedisBus};
use crate::deadline::bounded;
use crate::{now_ms, BoxFuture, BusError, InstanceReport, InstanceStatus, PresenceManager};

impl PresenceManager for RedisBus {
    fn report(&self, report: InstanceReport) -> BoxFuture<'_, Result<(), BusError>> {
        let inner = &self.inner;
        Box::pin(bounded(inner.op_timeout(), "heartbeat", async move {
            let now = now_ms();
            let encode =
                |e: serde_json::Error| BusError::Unavailable(format!("encoding the report: {e}"));
            let rooms = serde_json::to_string(&report.rooms).map_err(encode)?;
            // A field of its own: readers of an older version never ask
            // for it, and a report without it reads as zero counters.
            let counters = serde_json::to_string(&report.counters).map_err(encode)?;
            let key = inner.keys.instance(&report.id);
            let mut pipe = ::redis::pipe();
            pipe.atomic();
            pipe.cmd("HSET")
                .arg(&key)
                .arg("id")
                .arg(&report.id)
                .arg("address")
                .arg(&report.address)
                .arg("started_ms")
                .arg(report.started_ms)
                .arg("rooms")
                .arg(rooms)
                .arg("counters")
                .arg(counters)
                .arg("last_heartbeat_ms")
                .arg(now)
                .ignore();
            pipe.cmd("PEXPIRE")
                .arg(&key)
                .arg(millis(inner.config.heartbeat_ttl).max(1))
                .ignore();
            pipe.cmd("ZADD")
                .arg(inner.keys.instances())
                .arg(now)
                .arg(&report.id)
                .ignore();
            inner.commands.query::<()>("heartbeat", &pipe).await?;
            inner.commands.wrote();
            Ok(())
        }))
    }

    fn cluster_rooms(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, BusError>> {
        let inner = &self.inner;
        Box::pin(bounded(inner.op_timeout(), "counting rooms", async move {
            let mut sums: HashMap<String, u64> = HashMap::new();
            for status in live_reports(inner).await? {
                for (room, n) in status.report.rooms {
                    *sums.entry(room).or_default() += n;
                }
            }
            Ok(sums.into_iter().filter(|(_, n)| *n > 0).collect())
        }))
    }

    fn instances(&self) -> BoxFuture<'_, Result<Vec<InstanceStatus>, BusError>> {
        let inner = &self.inner;
        Box::pin(bounded(
            inner.op_timeout(),
            "listing instances",
            live_reports(inner),
        ))
    }

    fn leave(&self, instance_id: &str) -> BoxFuture<'_, ()> {
        let id = instance_id.to_owned();
        let inner = &self.inner;
        Box::pin(async move {
            let mut pipe = ::redis::pipe();
            pipe.atomic();
            pipe.cmd("DEL").arg(inner.keys.instance(&id)).ignore();
            pipe.cmd("ZREM")
                .arg(inner.keys.instances())
                .arg(&id)
                .ignore();
            let left = inner.commands.query::<()>("leaving the fleet", &pipe);
            match bounded(inner.op_timeout(), "leaving the fleet", left).await {
                Ok(()) => tracing::info!(instance = %id, "Left the fleet"),
                Err(e) => tracing::warn!(instance = %id, error = %e, "Leaving the fleet failed"),
            }
        })
    }
}

/// Heartbeats younger than the TTL. Prunes the older ones from the
/// instance index on the way.
async fn live_reports(inner: &Inner) -> Result<Vec<InstanceStatus>, BusError> {
    let oldest = now_ms().saturating_sub(millis(inner.config.heartbeat_ttl));
    let index = inner.keys.instances();
    let mut pipe = ::redis::pipe();
    pipe.cmd("ZREMRANGEBYSCORE")
        .arg(&index)
        .arg("-inf")
        .arg(format!("({oldest}"))
        .ignore();
    pipe.cmd("ZRANGEBYSCORE")
        .arg(&index)
        .arg(oldest)
        .arg("+inf");
    let (ids,): (Vec<String>,) = inner.commands.query("listing instances", &pipe).await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = ::redis::pipe();
    for id in &ids {
        pipe.cmd("HGETALL").arg(inner.keys.instance(id));
    }
    let hashes: Vec<HashMap<String, String>> =
        inner.commands.query("reading instances", &pipe).await?;
    Ok(hashes
        .into_iter()
        .zip(&ids)
        // An empty hash expired between the two reads: the instance is gone.
        .filter_map(|(fields, id)| parse_status(id, &fields))
        .collect())
}

/// Reads one instance hash back into the heartbeat it was written from.
fn parse_status(id: &str, fields: &HashMap<String, String>) -> Option<InstanceStatus> {
    Some(InstanceStatus {
        report: InstanceReport {
            id: id.to_owned(),
            address: fields.get("address")?.clone(),
            started_ms: fields.get("started_ms")?.parse().ok()?,
            rooms: serde_json::from_str(fields.get("rooms")?).ok()?,
            // Missing (an older writer) or unreadable counters are zero:
            // the instance still counts for presence.
            counters: fields
                .get("counters")
                .and_then(|c| serde_json::from_str(c).ok())
                .unwrap_or_default(),
        },
        last_heartbeat_ms: fields.get("last_heartbeat_ms")?.parse().ok()?,
    })
}
