//! danmaku-loadgen: opens many WebSocket viewers against one or more danmaku
//! gateways, has some of them post at a fixed rate, and measures what
//! arrives: deliveries against what was expected, loss, duplicates, latency
//! from the send time carried in each comment, throughput, and the gateway's
//! memory per connection.
//!
//! A run goes: raise the file limit, ramp connections up at `--connect-rate`
//! until every one has its `hello`, measure gateway RSS, wait `--warmup`,
//! post for `--duration`, wait `--drain` for late deliveries, close, report.

mod conn;
mod report;
mod scan;
mod stats;
mod sys;
mod ws;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use danmaku_proto::Format;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::conn::{Phase, Plan, Schedule, Target};
use crate::report::{Cpu, Deliveries, GatewayMemory, Latency, Report};
use crate::scan::Scanner;
use crate::stats::{Stats, Totals};

/// Connections one source address is used for per gateway before the next
/// one is taken: one address reaches one port only ~28,000 times.
const CONNECTIONS_PER_SOURCE: usize = 20_000;

/// Wire encoding to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FormatArg {
    /// `danmaku.v1.json`, text frames.
    Json,
    /// `danmaku.v1.msgpack`, binary frames.
    Msgpack,
}

impl FormatArg {
    fn format(self) -> Format {
        match self {
            FormatArg::Json => Format::Json,
            FormatArg::Msgpack => Format::MsgPack,
        }
    }
}

/// Load generator for danmaku gateways: viewers, posters, and what arrives.
#[derive(Debug, Clone, Parser)]
#[command(version, args_override_self = true)]
struct Args {
    /// Gateway address HOST:PORT; repeat to spread connections round-robin.
    #[arg(long = "gateway", default_value = "127.0.0.1:8080")]
    gateways: Vec<String>,
    /// Viewer connections in total, posters included.
    #[arg(long, default_value_t = 1000)]
    viewers: usize,
    /// Rooms; viewers are spread evenly over them.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Viewers of each room that also post.
    #[arg(long, default_value_t = 2)]
    posters_per_room: usize,
    /// Posts per second per room, shared by its posters; 0 keeps everyone idle.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds of posting (or of idling, with --rate 0).
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Seconds between the last connection coming up and the first post.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds to wait for late deliveries after posting stops.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// Encoding to ask for.
    #[arg(long, value_enum, default_value_t = FormatArg::Json)]
    format: FormatArg,
    /// Local addresses to connect from (127.0.0.1, 127.0.0.2, ...); default:
    /// 127.0.0.1 up to 20,000 connections per gateway, then the next one.
    #[arg(long)]
    source_ips: Option<u32>,
    /// New connections per second while ramping up; 0 for no limit.
    #[arg(long, default_value_t = 2000.0)]
    connect_rate: f64,
    /// Seconds one connection may take to get its hello.
    #[arg(long, default_value_t = 15.0)]
    connect_timeout: f64,
    /// Gateway process id, for RSS and CPU; repeat for several gateways.
    #[arg(long = "gateway-pid")]
    gateway_pids: Vec<u32>,
    /// Write the final report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Room ids are PREFIX-0 .. PREFIX-(rooms-1).
    #[arg(long, default_value = "lg")]
    room_prefix: String,
    /// Runtime worker threads; default: one per core.
    #[arg(long)]
    threads: Option<usize>,
    /// Exit with status 2 when more than this fraction of connections fail.
    #[arg(long, default_value_t = 0.01)]
    max_failed_ratio: f64,
    /// KEY=VALUE noted in the JSON report (settings, versions); repeatable.
    #[arg(long = "meta")]
    meta: Vec<String>,
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    validate(&args)?;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < args.viewers as u64 + 64 => eprintln!(
            "warning: open file limit is {limit}, too low for {} connections",
            args.viewers
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: could not raise the open file limit: {e}"),
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(run(args))
}

fn validate(args: &Args) -> anyhow::Result<()> {
    if args.viewers == 0 || args.rooms == 0 {
        bail!("--viewers and --rooms must be at least 1");
    }
    if args.rooms > args.viewers {
        bail!(
            "--rooms ({}) is more than --viewers ({})",
            args.rooms,
            args.viewers
        );
    }
    for (name, v) in [
        ("--rate", args.rate),
        ("--duration", args.duration),
        ("--warmup", args.warmup),
        ("--drain", args.drain),
        ("--connect-rate", args.connect_rate),
    ] {
        if !v.is_finite() || v < 0.0 {
            bail!("{name} must be a number ≥ 0");
        }
    }
    if args.connect_timeout <= 0.0 || !args.connect_timeout.is_finite() {
        bail!("--connect-timeout must be > 0");
    }
    if args.source_ips == Some(0) {
        bail!("--source-ips must be at least 1");
    }
    for m in &args.meta {
        if !m.contains('=') {
            bail!("--meta expects KEY=VALUE, got {m:?}");
        }
    }
    Ok(())
}

/// Resolves every `--gateway`.
fn resolve(gateways: &[String]) -> anyhow::Result<Vec<Arc<Target>>> {
    gateways
        .iter()
        .map(|g| {
            let addr = g
                .to_socket_addrs()
                .with_context(|| format!("resolving {g}"))?
                .next()
                .with_context(|| format!("{g} resolves to no address"))?;
            Ok(Arc::new(Target {
                addr,
                host: g.clone(),
            }))
        })
        .collect()
}

/// How viewers and posters are laid out.
#[derive(Debug, Clone)]
struct Layout {
    viewers: usize,
    rooms: usize,
    posters_per_room: usize,
    rate: f64,
    source_ips: Option<u32>,
}

impl Layout {
    fn of(args: &Args) -> Layout {
        Layout {
            viewers: args.viewers,
            rooms: args.rooms,
            posters_per_room: args.posters_per_room,
            rate: args.rate,
            source_ips: args.source_ips,
        }
    }

    /// Viewers of room `room`.
    fn room_size(&self, room: usize) -> usize {
        self.viewers / self.rooms + usize::from(room < self.viewers % self.rooms)
    }

    /// Posters of room `room`.
    fn posters(&self, room: usize) -> usize {
        self.posters_per_room.min(self.room_size(room))
    }

    /// One plan per connection, in the order they are opened: viewer `i`
    /// joins room `i % rooms` as its member `i / rooms`; members alternate
    /// over the gateways, so with two gateways every room spans both.
    fn plans(&self, targets: &[Arc<Target>]) -> Vec<Plan> {
        let per_gateway_total = self.viewers.div_ceil(targets.len());
        let mut on_gateway = vec![0usize; targets.len()];
        (0..self.viewers)
            .map(|i| {
                let room = i % self.rooms;
                let member = i / self.rooms;
                let g = member % targets.len();
                let target = targets[g].clone();
                let source = source_address(
                    target.addr.ip(),
                    on_gateway[g],
                    per_gateway_total,
                    self.source_ips,
                );
                on_gateway[g] += 1;
                let posters = self.posters(room);
                let poster = (member < posters && self.rate > 0.0).then(|| {
                    // The room's posts are evenly spaced: poster j of K posts
                    // every K/rate s, shifted by j/rate s, plus a per-room
                    // shift so that rooms do not post in lockstep.
                    let room_gap = 1.0 / self.rate;
                    let interval = posters as f64 * room_gap;
                    let room_shift = (room as f64 * 0.618_034).fract() * room_gap;
                    Schedule {
                        interval: Duration::from_secs_f64(interval),
                        offset: Duration::from_secs_f64(member as f64 * room_gap + room_shift),
                    }
                });
                Plan {
                    target,
                    source,
                    room,
                    poster,
                    seed: (i as u32).wrapping_mul(0x9e37_79b9),
                }
            })
            .collect()
    }

    /// Most posts a run of `duration` seconds can send.
    fn max_posts(&self, duration: f64) -> usize {
        if self.rate <= 0.0 {
            return 0;
        }
        (0..self.rooms)
            .map(|room| {
                let posters = self.posters(room);
                let per_poster = (duration * self.rate / posters.max(1) as f64).ceil() as usize;
                posters * (per_poster + 1)
            })
            .sum()
    }
}

/// The local address for the `index`-th of `total` connections to a gateway
/// at `gateway`: `None` lets the kernel choose.
fn source_address(
    gateway: IpAddr,
    index: usize,
    total: usize,
    source_ips: Option<u32>,
) -> Option<IpAddr> {
    if !gateway.is_loopback() || !gateway.is_ipv4() {
        return None;
    }
    let k = match source_ips {
        Some(1) => return None,
        Some(n) => index % n as usize,
        None if total <= CONNECTIONS_PER_SOURCE => return None,
        None => index / CONNECTIONS_PER_SOURCE,
    };
    let base = u32::from(Ipv4Addr::new(127, 0, 0, 1));
    Some(IpAddr::V4(Ipv4Addr::from(base + k as u32)))
}

/// Sums VmRSS over the gateway processes, in KiB.
fn gateway_rss(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().map(|&p| sys::vm_rss_kib(p)).sum()
}

/// CPU seconds used so far.
#[derive(Debug, Clone, Copy)]
struct CpuTimes {
    /// By the gateways, if any are known.
    gateway: Option<f64>,
    /// By this process.
    loadgen: f64,
    /// By the whole machine.
    machine: Option<f64>,
}

impl CpuTimes {
    fn now(pids: &[u32]) -> CpuTimes {
        let gateway = if pids.is_empty() {
            None
        } else {
            pids.iter().map(|&p| sys::cpu_seconds(Some(p))).sum()
        };
        CpuTimes {
            gateway,
            loadgen: sys::cpu_seconds(None).unwrap_or(0.0),
            machine: sys::machine_busy_seconds(),
        }
    }

    /// Use between `earlier` and `self`, in percent of one core.
    fn since(&self, earlier: &CpuTimes, seconds: f64) -> Cpu {
        let pct = |a: f64, b: f64| (a - b) / seconds * 100.0;
        let gateway_pct = self.gateway.zip(earlier.gateway).map(|(a, b)| pct(a, b));
        let loadgen_pct = pct(self.loadgen, earlier.loadgen);
        let machine_pct = self.machine.zip(earlier.machine).map(|(a, b)| pct(a, b));
        Cpu {
            gateway_pct,
            loadgen_pct,
            machine_pct,
            other_pct: machine_pct.map(|m| (m - loadgen_pct - gateway_pct.unwrap_or(0.0)).max(0.0)),
        }
    }
}

/// Prints one line a second to stderr.
struct Progress {
    started: Instant,
    last_at: Instant,
    last: Totals,
    last_cpu: CpuTimes,
    target: usize,
    pids: Vec<u32>,
}

impl Progress {
    fn new(target: usize, pids: Vec<u32>) -> Progress {
        let now = Instant::now();
        Progress {
            started: now,
            last_at: now,
            last: Totals::default(),
            last_cpu: CpuTimes::now(&pids),
            target,
            pids,
        }
    }

    fn tick(&mut self, stats: &Stats, phase: &str) {
        let now = Instant::now();
        let dt = now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        let t = stats.totals();
        let cpu = CpuTimes::now(&self.pids);
        let use_ = cpu.since(&self.last_cpu, dt);
        let pct = |p: Option<f64>| p.map_or("-".to_owned(), |p| format!("{p:.0}%"));
        let p99 = stats.histogram();
        let p99 = if p99.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.1}ms", p99.value_at_quantile(0.99) as f64 / 1000.0)
        };
        eprintln!(
            "[{:>5.1}s {phase:<8}] conns {}/{} ({} failed, {} closed) | posts {} sent {} ack {} rej | {:.0} deliv/s {:.0} frames/s {:.1} MB/s | p99 {p99} | cpu gw {} lg {} other {}",
            now.duration_since(self.started).as_secs_f64(),
            stats.established.load(Relaxed),
            self.target,
            stats.failed.load(Relaxed),
            stats.closed_early.load(Relaxed),
            stats.posts_sent.load(Relaxed),
            stats.posts_acked.load(Relaxed),
            stats.posts_rejected.load(Relaxed),
            (t.deliveries - self.last.deliveries) as f64 / dt,
            (t.frames - self.last.frames) as f64 / dt,
            (t.bytes - self.last.bytes) as f64 / dt / 1e6,
            pct(use_.gateway_pct),
            pct(Some(use_.loadgen_pct)),
            pct(use_.other_pct),
        );
        self.last_at = now;
        self.last = t;
        self.last_cpu = cpu;
    }

    /// Prints progress every second until `deadline`, or until `done` holds.
    async fn until(
        &mut self,
        stats: &Stats,
        phase: &str,
        deadline: Instant,
        done: impl Fn() -> bool,
    ) {
        let mut next = self.last_at + Duration::from_secs(1);
        loop {
            if done() {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            if now >= next {
                self.tick(stats, phase);
                next = self.last_at + Duration::from_secs(1);
            }
            let wake = next.min(deadline).min(now + Duration::from_millis(100));
            tokio::time::sleep_until(wake).await;
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let targets = resolve(&args.gateways)?;
    let layout = Layout::of(&args);
    let plans = layout.plans(&targets);
    let stats = Arc::new(Stats::new(
        args.rooms,
        layout.max_posts(args.duration),
        conn::unix_micros(),
    ));
    let gateway_stats_before =
        futures_util::future::join_all(targets.iter().map(|t| sys::gateway_stats(t.addr, &t.host)))
            .await;
    let rss_before = if args.gateway_pids.is_empty() {
        None
    } else {
        Some(gateway_rss(&args.gateway_pids)?)
    };

    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let shared = Arc::new(conn::Shared {
        stats: stats.clone(),
        scanner: Scanner::new(),
        format: args.format.format(),
        rooms: (0..args.rooms)
            .map(|r| format!("{}-{r}", args.room_prefix))
            .collect(),
        connect_timeout: Duration::from_secs_f64(args.connect_timeout),
        phase: phase_rx,
    });

    // Ramp up.
    let total = plans.len();
    let ramp_start = Instant::now();
    let connect_rate = args.connect_rate;
    let spawner = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut handles = Vec::with_capacity(plans.len());
            for (i, plan) in plans.into_iter().enumerate() {
                if connect_rate > 0.0 {
                    let at = ramp_start + Duration::from_secs_f64(i as f64 / connect_rate);
                    tokio::time::sleep_until(at).await;
                }
                handles.push(tokio::spawn(conn::run(shared.clone(), plan)));
            }
            handles
        })
    };
    let mut progress = Progress::new(total, args.gateway_pids.clone());
    let ramp_time = if connect_rate > 0.0 {
        total as f64 / connect_rate
    } else {
        0.0
    };
    let connect_deadline =
        ramp_start + Duration::from_secs_f64(ramp_time + args.connect_timeout + 5.0);
    let all_attempted =
        || stats.established.load(Relaxed) + stats.failed.load(Relaxed) >= total as u64;
    progress
        .until(&stats, "connect", connect_deadline, all_attempted)
        .await;
    let connect_seconds = ramp_start.elapsed().as_secs_f64();
    let established = stats.established.load(Relaxed);
    eprintln!(
        "connected {established} of {total} in {connect_seconds:.1} s ({} failed)",
        stats.failed.load(Relaxed)
    );
    if established == 0 {
        for (reason, n) in stats.reasons() {
            eprintln!("  {n} × {reason}");
        }
        eprintln!("error: no connection could be established");
        return Ok(ExitCode::from(2));
    }

    // Memory once everything is up and has settled.
    let settle = Instant::now() + Duration::from_secs(2);
    progress.until(&stats, "settle", settle, || false).await;
    let rss_connected = match rss_before {
        Some(_) => Some(gateway_rss(&args.gateway_pids)?),
        None => None,
    };

    // Post.
    let viewers = stats.room_viewers();
    let start = Instant::now() + Duration::from_secs_f64(args.warmup);
    let end = start + Duration::from_secs_f64(args.duration);
    phase_tx.send_replace(Phase::Posting { start, end });
    progress.until(&stats, "warmup", start, || false).await;
    let at_start = stats.totals();
    let cpu_start = CpuTimes::now(&args.gateway_pids);
    progress.until(&stats, "posting", end, || false).await;
    let at_end = stats.totals();
    let cpu_end = CpuTimes::now(&args.gateway_pids);
    let rss_end = match rss_before {
        Some(_) => Some(gateway_rss(&args.gateway_pids)?),
        None => None,
    };
    let drain_end = Instant::now() + Duration::from_secs_f64(args.drain);
    progress.until(&stats, "drain", drain_end, || false).await;

    // Stop and wait for every task.
    phase_tx.send_replace(Phase::Stop);
    let handles = spawner.await.context("the connection spawner failed")?;
    let stopped = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::future::join_all(handles),
    )
    .await;
    if stopped.is_err() {
        eprintln!("warning: some connections did not stop within 10 s");
    }
    let gateway_stats_after =
        futures_util::future::join_all(targets.iter().map(|t| sys::gateway_stats(t.addr, &t.host)))
            .await;

    // Report.
    let deliveries = Deliveries::count(&stats.posts(), &viewers);
    let secs = args.duration.max(1e-9);
    let per_s = |a: u64, b: u64| (b - a) as f64 / secs;
    let gateway_memory = match (rss_before, rss_connected, rss_end) {
        (Some(before), Some(connected), Some(end)) => Some(GatewayMemory {
            pids: args.gateway_pids.clone(),
            rss_before_kib: before,
            rss_connected_kib: connected,
            rss_end_kib: end,
            bytes_per_connection: (connected.saturating_sub(before) * 1024) as f64
                / established.max(1) as f64,
        }),
        _ => None,
    };
    let cpu = cpu_end.since(&cpu_start, secs);
    let meta: BTreeMap<String, String> = args
        .meta
        .iter()
        .filter_map(|m| m.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let report = Report {
        command: std::env::args().collect(),
        meta,
        gateways: args.gateways.clone(),
        format: shared.format.subprotocol().to_owned(),
        rooms: args.rooms,
        posters_per_room: args.posters_per_room,
        rate_per_room: args.rate,
        duration_s: args.duration,
        connections_target: total,
        connections_established: established,
        connections_failed: stats.failed.load(Relaxed),
        connections_closed_early: stats.closed_early.load(Relaxed),
        connect_seconds,
        posts_sent: stats.posts_sent.load(Relaxed),
        posts_acked: stats.posts_acked.load(Relaxed),
        posts_rejected: stats.posts_rejected.load(Relaxed),
        posts_per_s: stats.posts_sent.load(Relaxed) as f64 / secs,
        loss_ratio: deliveries.loss_ratio(),
        deliveries,
        foreign_deliveries: stats.totals().foreign,
        errors_received: stats.errors.load(Relaxed),
        latency: Latency::from_histogram(&stats.histogram()),
        deliveries_per_s: per_s(at_start.deliveries, at_end.deliveries),
        frames_per_s: per_s(at_start.frames, at_end.frames),
        bytes_per_s: per_s(at_start.bytes, at_end.bytes),
        gateway_memory,
        cpu,
        reasons: stats.reasons(),
        gateway_stats: gateway_stats_before
            .into_iter()
            .zip(gateway_stats_after)
            .map(|(before, after)| serde_json::json!({ "before": before, "after": after }))
            .collect(),
    };
    print!("{}", report.table());
    if let Some(path) = &args.json {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(&report).context("serializing the report")?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    let failed = report.connections_failed as f64;
    if established == 0 || failed > args.max_failed_ratio * total as f64 {
        eprintln!(
            "error: {} of {total} connections failed (allowed: {:.2} %)",
            report.connections_failed,
            args.max_failed_ratio * 100.0
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn targets(n: u16) -> Vec<Arc<Target>> {
        (0..n)
            .map(|i| {
                Arc::new(Target {
                    addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i)),
                    host: format!("127.0.0.1:{}", 9000 + i),
                })
            })
            .collect()
    }

    fn layout(viewers: usize, rooms: usize, posters: usize, rate: f64) -> Layout {
        Layout {
            viewers,
            rooms,
            posters_per_room: posters,
            rate,
            source_ips: None,
        }
    }

    #[test]
    fn viewers_spread_evenly_over_rooms_and_every_room_spans_both_gateways() {
        let l = layout(10, 3, 2, 6.0);
        let plans = l.plans(&targets(2));
        let mut per_room = [0; 3];
        let mut gateways_per_room = [[0; 2]; 3];
        for p in &plans {
            per_room[p.room] += 1;
            gateways_per_room[p.room][(p.target.addr.port() - 9000) as usize] += 1;
        }
        assert_eq!(per_room, [4, 3, 3]);
        assert_eq!(
            (0..3).map(|r| l.room_size(r)).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        for g in gateways_per_room {
            assert!(g[0] > 0 && g[1] > 0, "{g:?}");
        }
        let posters: Vec<_> = plans.iter().filter(|p| p.poster.is_some()).collect();
        assert_eq!(posters.len(), 6);
    }

    #[test]
    fn posters_share_the_room_rate_evenly() {
        let l = layout(100, 1, 4, 200.0);
        let plans = l.plans(&targets(1));
        let mut offsets: Vec<Duration> = plans
            .iter()
            .filter_map(|p| p.poster)
            .map(|s| {
                assert_eq!(s.interval, Duration::from_millis(20));
                s.offset
            })
            .collect();
        offsets.sort();
        let gaps: Vec<_> = offsets.windows(2).map(|w| w[1] - w[0]).collect();
        for gap in gaps {
            assert!(
                gap.abs_diff(Duration::from_millis(5)) < Duration::from_micros(1),
                "{gap:?}"
            );
        }
        // 200/s for 10 s, with a spare post per poster.
        assert_eq!(l.max_posts(10.0), 2004);
        assert_eq!(layout(10, 1, 2, 0.0).max_posts(10.0), 0);
    }

    #[test]
    fn idle_runs_have_no_posters_and_small_rooms_have_fewer() {
        assert!(layout(10, 2, 2, 0.0)
            .plans(&targets(1))
            .iter()
            .all(|p| p.poster.is_none()));
        let l = layout(3, 3, 2, 1.0);
        assert_eq!(l.posters(0), 1);
        assert_eq!(
            l.plans(&targets(1))
                .iter()
                .filter(|p| p.poster.is_some())
                .count(),
            3
        );
    }

    #[test]
    fn source_addresses_switch_every_twenty_thousand_connections() {
        let lo: IpAddr = Ipv4Addr::LOCALHOST.into();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(source_address(lo, 19_999, 20_000, None), None);
        assert_eq!(source_address(lo, 0, 30_000, None), ip("127.0.0.1"));
        assert_eq!(source_address(lo, 19_999, 30_000, None), ip("127.0.0.1"));
        assert_eq!(source_address(lo, 20_000, 30_000, None), ip("127.0.0.2"));
        assert_eq!(source_address(lo, 5, 10, Some(3)), ip("127.0.0.3"));
        assert_eq!(source_address(lo, 5, 10, Some(1)), None);
        assert_eq!(source_address(lo, 255, 1000, Some(1000)), ip("127.0.1.0"));
        let remote: IpAddr = Ipv4Addr::new(10, 0, 0, 1).into();
        assert_eq!(source_address(remote, 30_000, 40_000, None), None);
    }

    #[test]
    fn arguments_are_checked() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["danmaku-loadgen"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv)
                .map_err(|e| e.to_string())
                .and_then(|a| validate(&a).map(|()| a).map_err(|e| e.to_string()))
        };
        let a = parse(&[
            "--gateway",
            "a:1",
            "--gateway",
            "b:2",
            "--format",
            "msgpack",
        ])
        .unwrap();
        assert_eq!(a.gateways, ["a:1", "b:2"]);
        assert_eq!(a.format.format(), Format::MsgPack);
        assert_eq!(parse(&[]).unwrap().gateways, ["127.0.0.1:8080"]);
        assert!(parse(&["--rooms", "5", "--viewers", "4"]).is_err());
        assert!(parse(&["--rate", "-1"]).is_err());
        assert!(parse(&["--meta", "novalue"]).is_err());
        assert!(parse(&["--source-ips", "0"]).is_err());
    }
}
