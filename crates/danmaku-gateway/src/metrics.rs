//! The one metrics registry of a gateway process.
//!
//! Every counter and gauge the gateway and its bus keep is registered here
//! once, at start, and read from here by `/metrics` (Prometheus text format)
//! and `/api/stats` (JSON). Handles are cloned into the code that updates
//! them; an update is one atomic operation: no lock, no allocation, no label
//! lookup. Labelled series (rejects by code) are resolved into plain handles
//! when the registry is built, so the post path never touches a `Family`.

use std::sync::atomic::Ordering;

use danmaku_bus::{BusMetrics, InstanceCounters};
use danmaku_proto::RejectCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Label of the rejected-posts counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

/// Label of the moderator-actions counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: &'static str,
}

/// Every kind of moderator action, as counted and logged.
pub(crate) const ACTION_KINDS: [&str; 8] = [
    "mute",
    "unmute",
    "room_settings",
    "block_word",
    "unblock_word",
    "allow_word",
    "disallow_word",
    "recall",
];

/// Moderator actions per kind, indexed like `ACTION_KINDS`; handles on
/// the registry's counters, cheap to clone.
#[derive(Clone, Debug, Default)]
pub(crate) struct ActionCounters([Counter; ACTION_KINDS.len()]);

impl ActionCounters {
    /// Counts an action of kind `action` (one of `ACTION_KINDS`).
    pub(crate) fn inc(&self, action: &str) {
        if let Some(i) = ACTION_KINDS.iter().position(|a| *a == action) {
            self.0[i].inc();
        }
    }
}

/// Label of the refused-connections counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Counters of the accept loop and HTTP connections, resolved to plain
/// handles at start like the reject counters.
#[derive(Clone, Debug)]
pub(crate) struct ServerMetrics {
    /// Open TCP connections: HTTP and WebSocket alike.
    pub(crate) tcp_connections: Gauge,
    /// `accept` calls that failed (out of descriptors, aborted handshakes).
    pub(crate) accept_errors: Counter,
    /// Connections refused at accept, and WebSocket upgrades refused with
    /// 429: their client address had `max_connections_per_ip` open.
    pub(crate) refused_per_ip: Counter,
    /// WebSocket upgrades refused (403) for an `Origin` not allowed.
    pub(crate) forbidden_origin: Counter,
    /// Connections closed for a PROXY header from a peer not in
    /// `trusted_proxies`.
    pub(crate) untrusted_proxy_header: Counter,
    /// Connections from a trusted proxy closed for a malformed PROXY header.
    pub(crate) bad_proxy_header: Counter,
    /// Connections closed because their first request did not arrive
    /// within `http_header_timeout_ms`.
    pub(crate) header_timeouts: Counter,
    /// Keep-alive connections closed because no next request arrived
    /// within `http_idle_timeout_ms`.
    pub(crate) idle_timeouts: Counter,
    /// Requests refused (431) for a head over `http_max_header_bytes`.
    pub(crate) headers_too_large: Counter,
    /// HTTP connections still open at the shutdown deadline, dropped.
    pub(crate) shutdown_dropped: Counter,
    /// Connections closed because their TLS handshake failed (plain HTTP
    /// to a TLS port, an untrusted certificate, garbage).
    pub(crate) tls_handshake: Counter,
}

impl ServerMetrics {
    /// Builds the handles and registers them in `registry`.
    fn new(registry: &mut Registry) -> ServerMetrics {
        let tcp_connections = Gauge::default();
        registry.register(
            "danmaku_tcp_connections",
            "Open TCP connections, HTTP and WebSocket",
            tcp_connections.clone(),
        );
        let accept_errors = Counter::default();
        registry.register(
            "danmaku_accept_errors",
            "Failed accepts (e.g. out of file descriptors)",
            accept_errors.clone(),
        );
        let by_reason = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "danmaku_connections_refused",
            "TCP connections and WebSocket upgrades refused (per-address cap, origin, PROXY header, TLS handshake) or cut off by a bound (timeouts, head size, shutdown deadline), by reason",
            by_reason.clone(),
        );
        let reason = |reason| by_reason.get_or_create(&ReasonLabel { reason }).clone();
        ServerMetrics {
            tcp_connections,
            accept_errors,
            refused_per_ip: reason("per_ip_limit"),
            forbidden_origin: reason("forbidden_origin"),
            untrusted_proxy_header: reason("untrusted_proxy_header"),
            bad_proxy_header: reason("bad_proxy_header"),
            header_timeouts: reason("header_timeout"),
            idle_timeouts: reason("idle_timeout"),
            headers_too_large: reason("header_too_large"),
            shutdown_dropped: reason("shutdown_deadline"),
            tls_handshake: reason("tls_handshake"),
        }
    }
}

/// Every reject code; rejects are counted per code.
const REJECT_CODES: [RejectCode; RejectCode::ALL.len()] = RejectCode::ALL;

/// Counters of the fan-out: updated by room tasks and connections.
#[derive(Clone, Debug)]
pub(crate) struct FanoutMetrics {
    /// Seconds from a comment's acceptance (its `ts`) to its room task
    /// pushing it to the viewers: the bus and the flush window together.
    /// Observed once per comment per room task, not per viewer.
    pub(crate) post_to_fanout: Histogram,
    /// Comments per flush of a room task (1 for a lone comment).
    pub(crate) batch_items: Histogram,
    /// Frames written to sockets, counted once per write of a batch of
    /// frames rather than per frame.
    pub(crate) frames_written: Counter,
    /// Comments fanned out, once per room task (not per viewer).
    pub(crate) comments: Counter,
    /// Frames pushed into outboxes (deliveries).
    pub(crate) frames_pushed: Counter,
    /// Room frames dropped because a viewer's queue was full.
    pub(crate) frames_dropped: Counter,
    /// Frames pushed on the must-arrive lane (recalls, notices).
    pub(crate) must_frames: Counter,
    /// Connections closed as too slow.
    pub(crate) slow_evictions: Counter,
    /// Room events a room task skipped because it fell behind its bus
    /// subscription.
    pub(crate) bus_lagged: Counter,
    /// The longest outbox seen since start, in frames: a high-water mark
    /// kept on push, so reading it walks no queue and takes no lock.
    pub(crate) max_queued: Gauge,
    /// The most room-frame bytes one viewer's queue held since start, kept
    /// by the outboxes: what a viewer that stops reading pins there.
    pub(crate) max_queued_bytes: Gauge,
    /// The most bytes one connection handed the WebSocket layer before
    /// waiting for its socket, since start.
    pub(crate) max_write_buffered: Gauge,
}

impl Default for FanoutMetrics {
    fn default() -> Self {
        FanoutMetrics {
            // 1 ms to about 16 s: a flush window is tens of ms, a backlog
            // seconds.
            post_to_fanout: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            // 1 to 1024 comments per flush.
            batch_items: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            frames_written: Counter::default(),
            comments: Counter::default(),
            frames_pushed: Counter::default(),
            frames_dropped: Counter::default(),
            must_frames: Counter::default(),
            slow_evictions: Counter::default(),
            bus_lagged: Counter::default(),
            max_queued: Gauge::default(),
            max_queued_bytes: Gauge::default(),
            max_write_buffered: Gauge::default(),
        }
    }
}

/// Raises a high-water mark to `value` if it is higher. The plain load
/// first keeps the shared cache line read-mostly: the mark rarely moves.
pub(crate) fn raise_mark(mark: &Gauge, value: usize) {
    let value = value as i64;
    let mark = mark.inner();
    if value > mark.load(Ordering::Relaxed) {
        mark.fetch_max(value, Ordering::Relaxed);
    }
}

impl FanoutMetrics {
    /// Raises the high-water mark to `len` if it is higher. The plain load
    /// first keeps the shared cache line read-mostly: the mark rarely moves.
    pub(crate) fn saw_queue(&self, len: usize) {
        raise_mark(&self.max_queued, len);
    }
}

/// The registry's counters that every heartbeat carries to the fleet, so
/// fleet-wide rates can be told from any instance.
#[derive(Clone, Debug)]
pub(crate) struct ReportCounters {
    posts_accepted: Counter,
    rejected: [Counter; REJECT_CODES.len()],
    frames_dropped: Counter,
    slow_evictions: Counter,
}

impl ReportCounters {
    /// Their values now, with `room_comments` as given; reject codes never
    /// seen are left out to keep the heartbeat small.
    pub(crate) fn read(&self, room_comments: Vec<(String, u64)>) -> InstanceCounters {
        InstanceCounters {
            room_comments,
            posts_accepted: self.posts_accepted.get(),
            rejected: REJECT_CODES
                .iter()
                .zip(&self.rejected)
                .filter(|(_, c)| c.get() > 0)
                .map(|(code, c)| (code.as_str().to_owned(), c.get()))
                .collect(),
            frames_dropped: self.frames_dropped.get(),
            slow_evictions: self.slow_evictions.get(),
        }
    }
}

/// All of a gateway's metrics, and the registry that exposes them.
pub(crate) struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub(crate) connections: Gauge,
    /// Rooms with a local viewer.
    pub(crate) rooms: Gauge,
    /// Posts published and acknowledged.
    pub(crate) posts_accepted: Counter,
    /// Refused posts per code, indexed like `REJECT_CODES`.
    rejected: [Counter; REJECT_CODES.len()],
    /// Posts of shadow-muted users: acknowledged, shown to the poster only.
    pub(crate) posts_shadowed: Counter,
    /// Moderator actions per kind.
    pub(crate) actions: ActionCounters,
    /// Fan-out counters, shared with the room tasks.
    pub(crate) fanout: FanoutMetrics,
    /// The bus's own counters (reconnects, recoveries, unknown events).
    pub(crate) bus: BusMetrics,
    /// The accept loop's and HTTP connections' counters.
    pub(crate) server: ServerMetrics,
}

impl Metrics {
    /// Builds and registers every metric; `instance` goes into build info.
    pub(crate) fn new(instance: &str) -> Metrics {
        let mut registry = Registry::default();
        let connections = Gauge::default();
        registry.register(
            "danmaku_connections",
            "Open WebSocket connections",
            connections.clone(),
        );
        let rooms = Gauge::default();
        registry.register("danmaku_rooms", "Rooms with a local viewer", rooms.clone());
        let posts_accepted = Counter::default();
        registry.register(
            "danmaku_posts_accepted",
            "Posts published and acknowledged",
            posts_accepted.clone(),
        );
        let by_code = Family::<CodeLabel, Counter>::default();
        registry.register(
            "danmaku_posts_rejected",
            "Posts refused, by reject code",
            by_code.clone(),
        );
        let rejected = REJECT_CODES.map(|code| {
            by_code
                .get_or_create(&CodeLabel {
                    code: code.as_str(),
                })
                .clone()
        });
        let posts_shadowed = Counter::default();
        registry.register(
            "danmaku_posts_shadowed",
            "Posts of shadow-muted users, acknowledged and shown to their poster only",
            posts_shadowed.clone(),
        );
        let by_action = Family::<ActionLabel, Counter>::default();
        registry.register(
            "danmaku_moderation_actions",
            "Moderator actions taken through this instance, by kind",
            by_action.clone(),
        );
        let actions = ActionCounters(
            ACTION_KINDS.map(|action| by_action.get_or_create(&ActionLabel { action }).clone()),
        );
        let fanout = FanoutMetrics::default();
        registry.register(
            "danmaku_post_to_fanout_seconds",
            "Time from a comment's acceptance to its room task pushing it to the viewers",
            fanout.post_to_fanout.clone(),
        );
        registry.register(
            "danmaku_batch_items",
            "Comments per flush of a room task",
            fanout.batch_items.clone(),
        );
        registry.register(
            "danmaku_frames_written",
            "Frames written to sockets",
            fanout.frames_written.clone(),
        );
        registry.register(
            "danmaku_comments_fanned_out",
            "Comments fanned out by room tasks, once per room",
            fanout.comments.clone(),
        );
        registry.register(
            "danmaku_frames_pushed",
            "Frames queued for viewers (deliveries)",
            fanout.frames_pushed.clone(),
        );
        registry.register(
            "danmaku_frames_dropped",
            "Room frames dropped because a viewer's queue was full",
            fanout.frames_dropped.clone(),
        );
        registry.register(
            "danmaku_must_frames",
            "Frames queued on the must-arrive lane (never dropped)",
            fanout.must_frames.clone(),
        );
        registry.register(
            "danmaku_slow_evictions",
            "Connections closed as too slow",
            fanout.slow_evictions.clone(),
        );
        registry.register(
            "danmaku_bus_lagged",
            "Room events skipped because a room task fell behind the bus",
            fanout.bus_lagged.clone(),
        );
        registry.register(
            "danmaku_max_queued_frames",
            "Longest viewer queue seen since start, in frames",
            fanout.max_queued.clone(),
        );
        registry.register(
            "danmaku_max_queued_bytes",
            "Most room-frame bytes one viewer's queue held since start",
            fanout.max_queued_bytes.clone(),
        );
        registry.register(
            "danmaku_max_write_buffered_bytes",
            "Most bytes one connection buffered for its socket before waiting, since start",
            fanout.max_write_buffered.clone(),
        );
        let info = Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
            ("instance", instance.to_owned()),
        ]);
        registry.register("danmaku_build", "Build and instance information", info);
        let bus = BusMetrics::default();
        bus.register(&mut registry);
        let server = ServerMetrics::new(&mut registry);
        Metrics {
            registry,
            connections,
            rooms,
            posts_accepted,
            rejected,
            posts_shadowed,
            actions,
            fanout,
            bus,
            server,
        }
    }

    /// Counts a refused post.
    pub(crate) fn rejected(&self, code: RejectCode) -> &Counter {
        // `ALL` lists every code, so the search always finds it.
        let i = REJECT_CODES.iter().position(|c| *c == code).unwrap_or(0);
        &self.rejected[i]
    }

    /// Refused posts of every code.
    pub(crate) fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(Counter::get).sum()
    }

    /// Handles on the counters a heartbeat carries, for the heartbeat task.
    pub(crate) fn report_counters(&self) -> ReportCounters {
        ReportCounters {
            posts_accepted: self.posts_accepted.clone(),
            rejected: self.rejected.clone(),
            frames_dropped: self.fanout.frames_dropped.clone(),
            slow_evictions: self.fanout.slow_evictions.clone(),
        }
    }

    /// Everything, in Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_names_with_rejects_by_code() {
        let m = Metrics::new("gw-1");
        m.posts_accepted.inc();
        m.rejected(RejectCode::RateLimited).inc_by(2);
        m.fanout.saw_queue(7);
        m.fanout.saw_queue(3);
        let text = m.render();
        for line in [
            "danmaku_posts_accepted_total 1",
            "danmaku_posts_rejected_total{code=\"rate_limited\"} 2",
            "danmaku_posts_rejected_total{code=\"empty\"} 0",
            "danmaku_max_queued_frames 7",
            "danmaku_build_info{version=",
            "danmaku_accept_errors_total 0",
            "danmaku_tcp_connections 0",
            "danmaku_connections_refused_total{reason=\"per_ip_limit\"} 0",
            "danmaku_connections_refused_total{reason=\"header_timeout\"} 0",
            "danmaku_connections_refused_total{reason=\"forbidden_origin\"} 0",
            "danmaku_connections_refused_total{reason=\"bad_proxy_header\"} 0",
            "danmaku_connections_refused_total{reason=\"tls_handshake\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert_eq!(m.rejected_total(), 2);
    }

    #[test]
    fn report_counters_carry_only_the_codes_seen() {
        let m = Metrics::new("gw-1");
        m.posts_accepted.inc_by(4);
        m.rejected(RejectCode::RateLimited).inc_by(2);
        m.fanout.frames_dropped.inc_by(3);
        let c = m.report_counters().read(vec![("r".into(), 4)]);
        assert_eq!(c.posts_accepted, 4);
        assert_eq!(c.rejected, [("rate_limited".to_string(), 2)]);
        assert_eq!(c.frames_dropped, 3);
        assert_eq!(c.slow_evictions, 0);
        assert_eq!(c.room_comments, [("r".to_string(), 4)]);
    }
}
