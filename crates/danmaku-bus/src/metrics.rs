//! The bus's Prometheus metrics. The gateway owns the one `Registry` and
//! calls [`BusMetrics::register`]; the bus only updates them.
//!
//! Invariant: updating a metric on a hot path neither locks nor allocates.
//! Labelled counters are resolved once, at construction, into plain
//! [`Counter`] handles (which share their atomic with the family), so no
//! `Family::get_or_create` runs per event.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label set of the per-connection counters.
type ConnectionLabel = Vec<(&'static str, &'static str)>;

/// Counters and gauges of one bus. Clones share the same values, so the
/// gateway can keep a clone after handing one to the bus.
#[derive(Clone, Debug)]
pub struct BusMetrics {
    /// `danmaku_bus_reconnects_total{connection}`: connections re-established
    /// after being lost (the first connect is not counted).
    reconnects: Family<ConnectionLabel, Counter>,
    pub(crate) command_reconnects: Counter,
    pub(crate) pubsub_reconnects: Counter,
    /// `danmaku_bus_recoveries_total`: pub/sub reconnects after which missed
    /// comments were looked up in history.
    pub(crate) recoveries: Counter,
    /// `danmaku_bus_recovered_comments_total`: comments replayed from history
    /// after a pub/sub reconnect.
    pub(crate) recovered_comments: Counter,
    /// `danmaku_bus_publish_errors_total`: publishes that failed (nothing
    /// published, the post is rejected).
    pub(crate) publish_errors: Counter,
    /// `danmaku_bus_unknown_events_total`: well-formed events of a kind or
    /// version this instance does not know, skipped.
    pub(crate) unknown_events: Counter,
    /// `danmaku_bus_invalid_payloads_total`: payloads that could not be
    /// decoded at all, skipped.
    pub(crate) invalid_payloads: Counter,
    /// `danmaku_bus_subscribed_rooms`: rooms this instance is subscribed to
    /// (or lingers on).
    pub(crate) subscribed_rooms: Gauge,
    /// `danmaku_bus_room_events_shed_total`: room events dropped from a
    /// subscription's queue because it held `room_queue_max` unread ones
    /// (its reader was told with `RecvError::Lagged`).
    pub(crate) room_events_shed: Counter,
    /// `danmaku_bus_history_evicted_rooms_total`: rooms whose history the
    /// embedded bus dropped to stay within `history_max_bytes`.
    pub(crate) history_evicted_rooms: Counter,
    /// `danmaku_bus_write_refusals_total`: writes Redis refused (OOM,
    /// READONLY, MISCONF...), each turning the bus not ready until a write
    /// succeeds again.
    pub(crate) write_refusals: Counter,
}

impl Default for BusMetrics {
    fn default() -> Self {
        let reconnects = Family::<ConnectionLabel, Counter>::default();
        let command_reconnects = reconnects
            .get_or_create(&vec![("connection", "command")])
            .clone();
        let pubsub_reconnects = reconnects
            .get_or_create(&vec![("connection", "pubsub")])
            .clone();
        BusMetrics {
            reconnects,
            command_reconnects,
            pubsub_reconnects,
            recoveries: Counter::default(),
            recovered_comments: Counter::default(),
            publish_errors: Counter::default(),
            unknown_events: Counter::default(),
            invalid_payloads: Counter::default(),
            subscribed_rooms: Gauge::default(),
            room_events_shed: Counter::default(),
            history_evicted_rooms: Counter::default(),
            write_refusals: Counter::default(),
        }
    }
}

impl BusMetrics {
    /// Registers every bus metric (names `danmaku_bus_*`) in `registry`.
    /// Call it once per registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "danmaku_bus_reconnects",
            "Bus connections re-established after a loss, by connection",
            self.reconnects.clone(),
        );
        registry.register(
            "danmaku_bus_recoveries",
            "Pub/sub reconnects after which missed comments were read back from history",
            self.recoveries.clone(),
        );
        registry.register(
            "danmaku_bus_recovered_comments",
            "Comments replayed from history after a pub/sub reconnect",
            self.recovered_comments.clone(),
        );
        registry.register(
            "danmaku_bus_publish_errors",
            "Publishes that failed; nothing was published",
            self.publish_errors.clone(),
        );
        registry.register(
            "danmaku_bus_unknown_events",
            "Bus events of a kind or version this instance does not know, skipped",
            self.unknown_events.clone(),
        );
        registry.register(
            "danmaku_bus_invalid_payloads",
            "Bus payloads that could not be decoded, skipped",
            self.invalid_payloads.clone(),
        );
        registry.register(
            "danmaku_bus_subscribed_rooms",
            "Rooms this instance is subscribed to, lingering ones included",
            self.subscribed_rooms.clone(),
        );
        registry.register(
            "danmaku_bus_room_events_shed",
            "Room events shed from a subscription queue that reached room_queue_max",
            self.room_events_shed.clone(),
        );
        registry.register(
            "danmaku_bus_history_evicted_rooms",
            "Rooms whose history the embedded bus dropped to stay within history_max_bytes",
            self.history_evicted_rooms.clone(),
        );
        registry.register(
            "danmaku_bus_write_refusals",
            "Writes Redis refused (OOM, READONLY, MISCONF...), each making the bus not ready",
            self.write_refusals.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_names_follow_prometheus_conventions_and_clones_share_values() {
        let metrics = BusMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.clone().pubsub_reconnects.inc();
        metrics.subscribed_rooms.set(3);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "danmaku_bus_reconnects_total{connection=\"pubsub\"} 1",
            "danmaku_bus_reconnects_total{connection=\"command\"} 0",
            "danmaku_bus_recoveries_total 0",
            "danmaku_bus_recovered_comments_total 0",
            "danmaku_bus_publish_errors_total 0",
            "danmaku_bus_unknown_events_total 0",
            "danmaku_bus_invalid_payloads_total 0",
            "danmaku_bus_subscribed_rooms 3",
            "danmaku_bus_room_events_shed_total 0",
            "danmaku_bus_history_evicted_rooms_total 0",
            "danmaku_bus_write_refusals_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
