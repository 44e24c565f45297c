//! The final report: the numbers a run produced, as a table for people and
//! as JSON for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::stats::{PostRecord, PostState, Reasons};

/// Delivery accounting over all posts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Deliveries {
    /// Σ over acked posts of the viewers connected in its room when posting began.
    pub expected: u64,
    /// Deliveries of acked posts seen, counting at most `expected` per post.
    pub received: u64,
    /// Deliveries of acked posts beyond the number of viewers of its room.
    pub duplicates: u64,
    /// Deliveries of posts that were never acked (rejected or unanswered).
    pub unexpected: u64,
    /// Posts sent that got neither `ack` nor `reject`.
    pub unanswered: u64,
}

impl Deliveries {
    /// Counts deliveries of `posts` against `viewers` per room.
    pub(crate) fn count(posts: &[PostRecord], viewers: &[u32]) -> Deliveries {
        let mut d = Deliveries::default();
        for post in posts {
            let received = u64::from(post.received);
            match post.state {
                PostState::Acked => {
                    let expected = u64::from(viewers.get(post.room).copied().unwrap_or(0));
                    d.expected += expected;
                    d.received += received.min(expected);
                    d.duplicates += received.saturating_sub(expected);
                }
                PostState::Sent => {
                    d.unanswered += 1;
                    d.unexpected += received;
                }
                PostState::Rejected | PostState::Unsent => d.unexpected += received,
            }
        }
        d
    }

    /// 1 − received/expected, 0 when nothing was expected.
    pub(crate) fn loss_ratio(&self) -> f64 {
        if self.expected == 0 {
            return 0.0;
        }
        (1.0 - self.received as f64 / self.expected as f64).max(0.0)
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Latency {
    /// Deliveries measured.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Latency {
    /// Percentiles of a histogram in microseconds.
    pub(crate) fn from_histogram(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Memory of the gateway processes, from `/proc/PID/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct GatewayMemory {
    /// The process ids measured.
    pub pids: Vec<u32>,
    /// Σ VmRSS before the first connection, in KiB.
    pub rss_before_kib: u64,
    /// Σ VmRSS once every connection was up, in KiB.
    pub rss_connected_kib: u64,
    /// Σ VmRSS at the end of posting, in KiB.
    pub rss_end_kib: u64,
    /// (rss_connected − rss_before) / established connections, in bytes.
    pub bytes_per_connection: f64,
}

/// CPU use during the posting period, in percent of one core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Cpu {
    /// The gateway processes together (only with `--gateway-pid`).
    pub gateway_pct: Option<f64>,
    /// This load generator.
    pub loadgen_pct: f64,
    /// The whole machine: every process and the kernel, out of 100 % per core.
    pub machine_pct: Option<f64>,
    /// The machine less the gateways and this load generator: other work
    /// that competed with the run (kernel softirq time shows up here too).
    pub other_pct: Option<f64>,
}

/// Gateway CPU µs per frame from its CPU share (100 = one core) and the
/// frames per second the viewers received.
pub(crate) fn us_per_frame(gateway_pct: Option<f64>, frames_per_s: f64) -> Option<f64> {
    let pct = gateway_pct?;
    (frames_per_s > 0.0).then(|| pct / 100.0 * 1e6 / frames_per_s)
}

/// Everything a run reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Report {
    /// The command line of the run.
    pub command: Vec<String>,
    /// `--meta KEY=VALUE` pairs, for scripts to note settings and versions.
    pub meta: BTreeMap<String, String>,
    /// Gateway addresses.
    pub gateways: Vec<String>,
    /// `json` or `msgpack`.
    pub format: String,
    /// Rooms.
    pub rooms: usize,
    /// Posters per room.
    pub posters_per_room: usize,
    /// Offered posts per second per room.
    pub rate_per_room: f64,
    /// Seconds of posting.
    pub duration_s: f64,
    /// Connections asked for.
    pub connections_target: usize,
    /// Connections that got `hello`.
    pub connections_established: u64,
    /// Connections that never got `hello`.
    pub connections_failed: u64,
    /// Established connections that ended before the run stopped them.
    pub connections_closed_early: u64,
    /// Seconds from the first connect to the last `hello` (or give-up).
    pub connect_seconds: f64,
    /// Posts sent.
    pub posts_sent: u64,
    /// Posts acked.
    pub posts_acked: u64,
    /// Posts rejected.
    pub posts_rejected: u64,
    /// Posts sent per second during posting, over all rooms.
    pub posts_per_s: f64,
    /// Delivery accounting.
    pub deliveries: Deliveries,
    /// 1 − received/expected.
    pub loss_ratio: f64,
    /// Marked comments from another run.
    pub foreign_deliveries: u64,
    /// `error` events received.
    pub errors_received: u64,
    /// Delivery latency, from the send time in the text to the receipt.
    pub latency: Latency,
    /// Deliveries per second during posting.
    pub deliveries_per_s: f64,
    /// Frames received per second during posting.
    pub frames_per_s: f64,
    /// Payload bytes received per second during posting (inflated).
    pub bytes_per_s: f64,
    /// Bytes read from the sockets per second during posting: what the
    /// wire carried, headers and compression included.
    pub wire_bytes_per_s: f64,
    /// Wire bytes per delivery during posting (everything received, over
    /// the comments delivered).
    pub wire_bytes_per_delivery: f64,
    /// Gateway CPU time per frame received by the viewers during posting,
    /// in µs (only with `--gateway-pid`): what one frame costs the gateway,
    /// kernel time included.
    pub gateway_us_per_frame: Option<f64>,
    /// Whether `permessage-deflate` was offered.
    pub deflate: bool,
    /// Density tiers, when the viewers asked for densities.
    pub density: Option<crate::tiers::TierReport>,
    /// Reconnections after 1001, with `--reconnect`.
    pub reconnect: Option<crate::reconnect::StormReport>,
    /// Gateway memory, with `--gateway-pid`.
    pub gateway_memory: Option<GatewayMemory>,
    /// CPU use during posting.
    pub cpu: Cpu,
    /// Failure, close and refusal reasons with counts.
    pub reasons: Reasons,
    /// `/api/stats` of each gateway before and after the run.
    pub gateway_stats: Vec<serde_json::Value>,
}

impl Report {
    /// The report as an aligned table.
    pub(crate) fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        row("gateways", self.gateways.join(" "));
        row(
            "load",
            format!(
                "{} rooms × {} viewers ({}), {} posters/room, {} posts/s/room for {} s",
                self.rooms,
                self.connections_target / self.rooms.max(1),
                self.format,
                self.posters_per_room,
                self.rate_per_room,
                self.duration_s
            ),
        );
        row(
            "connections",
            format!(
                "{} established, {} failed, {} closed early (of {}; up in {:.1} s)",
                self.connections_established,
                self.connections_failed,
                self.connections_closed_early,
                self.connections_target,
                self.connect_seconds
            ),
        );
        row(
            "posts",
            format!(
                "{} sent, {} acked, {} rejected ({:.1}/s)",
                self.posts_sent, self.posts_acked, self.posts_rejected, self.posts_per_s
            ),
        );
        let d = &self.deliveries;
        row(
            "deliveries",
            format!("{} expected, {} received", d.expected, d.received),
        );
        row(
            "loss ratio",
            format!("{:.6} ({:.4} %)", self.loss_ratio, self.loss_ratio * 100.0),
        );
        row(
            "duplicates",
            format!(
                "{} (unexpected {}, foreign {}, unanswered posts {})",
                d.duplicates, d.unexpected, self.foreign_deliveries, d.unanswered
            ),
        );
        let l = &self.latency;
        row(
            "latency ms",
            format!(
                "p50 {:.1}  p90 {:.1}  p99 {:.1}  p999 {:.1}  max {:.1}  (mean {:.1}, n={})",
                l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms, l.count
            ),
        );
        row("deliveries/s", format!("{:.0}", self.deliveries_per_s));
        row("frames/s", format!("{:.0}", self.frames_per_s));
        row(
            "received",
            format!(
                "{:.2} MB/s payload, {:.2} MB/s on the wire{}, {:.1} wire bytes/delivery",
                self.bytes_per_s / 1_000_000.0,
                self.wire_bytes_per_s / 1_000_000.0,
                if self.deflate {
                    " (deflate offered)"
                } else {
                    ""
                },
                self.wire_bytes_per_delivery
            ),
        );
        if let Some(d) = &self.density {
            for t in &d.tiers {
                let name = if t.density == 0 {
                    "tier unlimited".to_owned()
                } else {
                    format!("tier {}/s", t.density)
                };
                let worst = t.worst_5s_over_budget.map_or(String::new(), |w| {
                    format!(
                        ", worst 5 s {:.0} % of budget, {} viewers over 110 %",
                        w * 100.0,
                        t.viewers_over_110pct
                    )
                });
                row(
                    &name,
                    format!(
                        "{} viewers, {:.1} comments/s each{worst}",
                        t.viewers, t.per_viewer_per_s
                    ),
                );
            }
            row(
                "tier sets",
                format!(
                    "{} same-tier pairs ({} across gateways), {} differ; {} nestings checked, {} violations",
                    d.consistency_pairs,
                    d.consistency_pairs_across_gateways,
                    d.consistency_pairs_differing,
                    d.nesting_checked,
                    d.nesting_violations
                ),
            );
        }
        if let Some(m) = &self.gateway_memory {
            row(
                "gateway RSS",
                format!(
                    "{:.1} MiB before, {:.1} MiB connected, {:.1} MiB at end",
                    m.rss_before_kib as f64 / 1024.0,
                    m.rss_connected_kib as f64 / 1024.0,
                    m.rss_end_kib as f64 / 1024.0
                ),
            );
            row(
                "bytes/connection",
                format!(
                    "{:.0} ({:.2} KiB)",
                    m.bytes_per_connection,
                    m.bytes_per_connection / 1024.0
                ),
            );
        }
        let gw_cpu = self
            .cpu
            .gateway_pct
            .map_or("n/a".to_owned(), |p| format!("{p:.0} %"));
        let pct = |p: Option<f64>| p.map_or("n/a".to_owned(), |p| format!("{p:.0} %"));
        row(
            "cpu (posting)",
            format!(
                "gateway {gw_cpu}, loadgen {:.0} %, other {}, machine {} (100 % = one core)",
                self.cpu.loadgen_pct,
                pct(self.cpu.other_pct),
                pct(self.cpu.machine_pct)
            ),
        );
        if let Some(r) = &self.reconnect {
            let back = r
                .last_back_after_last_close_ms
                .map_or("n/a".to_owned(), |ms| format!("{ms:.0} ms"));
            row(
                "reconnects",
                format!(
                    "{} of {} viewers moved; last back {back} after the last 1001; close→back p50 {:.0} p99 {:.0} max {:.0} ms",
                    r.moved,
                    r.viewers,
                    r.close_to_back.p50_ms,
                    r.close_to_back.p99_ms,
                    r.close_to_back.max_ms
                ),
            );
            row(
                "reconnect accept",
                format!(
                    "peak {}/s (any 1 s), {}/s (any 100 ms); handshake p50 {:.1} p99 {:.1} ms; back→receiving p99 {:.0} ms",
                    r.peak_reconnects_per_s,
                    r.peak_reconnects_per_100ms_as_per_s,
                    r.handshake.p50_ms,
                    r.handshake.p99_ms,
                    r.back_to_receiving.p99_ms
                ),
            );
            row(
                "after back",
                format!(
                    "{} comments owed, {} missing ({} viewers missed any)",
                    r.expected_after_back, r.missing_after_back, r.viewers_missing
                ),
            );
        }
        if let Some(us) = self.gateway_us_per_frame {
            row("gateway cpu/frame", format!("{us:.2} µs"));
        }
        if self.errors_received > 0 {
            row("error events", self.errors_received.to_string());
        }
        for (reason, n) in &self.reasons {
            row("reason", format!("{n} × {reason}"));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:<width$}  {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(room: usize, state: PostState, received: u32) -> PostRecord {
        PostRecord {
            room,
            state,
            received,
        }
    }

    #[test]
    fn deliveries_are_counted_against_the_viewers_of_each_room() {
        let viewers = [10, 3];
        let posts = [
            post(0, PostState::Acked, 10), // complete
            post(1, PostState::Acked, 2),  // one lost
            post(1, PostState::Acked, 5),  // two duplicated
            post(0, PostState::Rejected, 1),
            post(0, PostState::Sent, 0),
        ];
        let d = Deliveries::count(&posts, &viewers);
        assert_eq!(
            d,
            Deliveries {
                expected: 16,
                received: 15,
                duplicates: 2,
                unexpected: 1,
                unanswered: 1,
            }
        );
        assert!((d.loss_ratio() - 1.0 / 16.0).abs() < 1e-12);
        assert_eq!(Deliveries::default().loss_ratio(), 0.0);
    }

    #[test]
    fn cpu_per_frame_is_cpu_time_over_frames() {
        // Half a core over 100,000 frames/s: 5 µs a frame.
        assert_eq!(us_per_frame(Some(50.0), 100_000.0), Some(5.0));
        assert_eq!(us_per_frame(None, 100_000.0), None);
        assert_eq!(us_per_frame(Some(50.0), 0.0), None);
    }

    #[test]
    fn the_table_names_every_headline_number() {
        let mut h = crate::stats::new_histogram();
        for us in [1_000, 2_000, 150_000] {
            h.record(us).unwrap();
        }
        let report = Report {
            rooms: 1,
            connections_target: 5,
            latency: Latency::from_histogram(&h),
            gateway_memory: Some(GatewayMemory {
                bytes_per_connection: 4096.0,
                ..GatewayMemory::default()
            }),
            ..Report::default()
        };
        let table = report.table();
        for needle in [
            "connections",
            "posts",
            "loss ratio",
            "duplicates",
            "p99 150.",
            "bytes/connection",
            "4.00 KiB",
        ] {
            assert!(table.contains(needle), "{needle} missing in\n{table}");
        }
    }
}
