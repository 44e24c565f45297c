//! Presence: how many viewers each room has across the fleet.
//!
//! Every heartbeat the instance reports its local counts to the bus and reads
//! back the fleet's sums. It keeps "viewers on other instances" per room, so a
//! count shown to a client is this instance's exact local count plus the
//! others' as of the last heartbeat.
//!
//! The heartbeat also carries the instance's cumulative counters (comments
//! per room, posts accepted and refused, drops), from which any instance
//! can tell fleet-wide rates (`live.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use danmaku_bus::{InstanceReport, PresenceManager};
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::metrics::ReportCounters;
use crate::rooms::Rooms;

/// Viewers on other instances, per room.
#[derive(Debug, Default)]
pub(crate) struct Presence {
    others: RwLock<HashMap<String, u64>>,
}

impl Presence {
    /// The room's count across the fleet, given this instance's count.
    pub(crate) fn online(&self, room: &str, local: u64) -> u64 {
        local + self.others.read().get(room).copied().unwrap_or(0)
    }

    /// Every room's count across the fleet, given this instance's counts.
    pub(crate) fn all(&self, local: &[(String, u64)]) -> Vec<(String, u64)> {
        let mut merged: HashMap<String, u64> = self.others.read().clone();
        for (room, n) in local {
            *merged.entry(room.clone()).or_default() += n;
        }
        merged.into_iter().filter(|(_, n)| *n > 0).collect()
    }

    fn set_others(&self, cluster: Vec<(String, u64)>, local: &[(String, u64)]) {
        let local: HashMap<&str, u64> = local.iter().map(|(r, n)| (r.as_str(), *n)).collect();
        let others = cluster
            .into_iter()
            .filter_map(|(room, n)| {
                let rest = n.saturating_sub(local.get(room.as_str()).copied().unwrap_or(0));
                (rest > 0).then_some((room, rest))
            })
            .collect();
        *self.others.write() = others;
    }
}

/// What the heartbeat task needs to know about this instance.
pub(crate) struct Heartbeat {
    /// Instance id.
    pub id: String,
    /// Address to advertise.
    pub address: String,
    /// Start time, ms since the epoch.
    pub started_ms: u64,
    /// Interval between heartbeats.
    pub interval: Duration,
    /// The cumulative counters each heartbeat carries.
    pub counters: ReportCounters,
}

/// Reports local counts and refreshes the others' until shutdown.
pub(crate) async fn run_heartbeat(
    hb: Heartbeat,
    rooms: Arc<Rooms>,
    presence: Arc<Presence>,
    bus: Arc<dyn PresenceManager>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(hb.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let (local, room_comments) = rooms.local_report();
        let report = InstanceReport {
            id: hb.id.clone(),
            address: hb.address.clone(),
            started_ms: hb.started_ms,
            rooms: local.clone(),
            counters: hb.counters.read(room_comments),
        };
        // Every bus call is bounded by the bus itself.
        if let Err(e) = bus.report(report).await {
            tracing::warn!(error = %e, "Heartbeat failed");
            continue;
        }
        match bus.cluster_rooms().await {
            Ok(cluster) => presence.set_others(cluster, &local),
            Err(e) => tracing::warn!(error = %e, "Reading fleet counts failed"),
        }
    }
}
