//! danmaku-loadgen: opens many WebSocket viewers against one or more danmaku
//! gateways, has some of them post at a fixed rate, and measures what
//! arrives: deliveries against what was expected, loss, duplicates, latency
//! from the send time carried in each comment, throughput, and the gateway's
//! memory per connection.
//!
//! A run goes: raise the file limit, ramp connections up at `connect_rate`
//! until every one has its `hello`, measure gateway RSS, wait `warmup`,
//! post for `duration`, wait `drain` for late deliveries, close, report.
//!
//! This library is the whole load generator; the `danmaku-loadgen` binary
//! only turns its command line into [`Settings`] and calls [`run`].

mod conn;
mod layout;
mod progress;
mod reconnect;
mod report;
mod scan;
mod stats;
mod sys;
mod tiers;
mod ws;

/// Entry points for the coverage-guided fuzzer in `fuzz/`: not an API, and
/// free to change with the parsers they reach.
#[doc(hidden)]
pub mod fuzz {
    use danmaku_proto::Format;

    use crate::scan::{classify, Scanner};
    use crate::ws::{parse_stream, Incoming, MAX_MESSAGE};

    /// Feeds `data` to the WebSocket frame parser in reads of `chunk` bytes,
    /// and every message it yields to the frame scanner; returns how many
    /// messages there were. Any panic is a bug in one of the two.
    pub fn frames(data: &[u8], chunk: usize) -> usize {
        let scanner = Scanner::new();
        let mut messages = 0;
        parse_stream(data, chunk, |message| {
            if let Incoming::Data { text, payload } = message {
                assert!(payload.len() <= MAX_MESSAGE, "message over the limit");
                messages += 1;
                let format = if text { Format::Json } else { Format::MsgPack };
                let _ = classify(format, payload);
                scanner.scan(format, payload, |_| {});
            }
        });
        messages
    }
}

use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use danmaku_proto::Format;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::conn::{Phase, Target};
use crate::layout::Layout;
use crate::progress::{CpuTimes, Progress};
use crate::report::{Deliveries, GatewayMemory, Latency, Report};
use crate::scan::Scanner;
use crate::stats::Stats;

/// Everything a run is told; the binary's command-line options, one for one
/// (see `danmaku-loadgen --help` for their defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Gateway addresses, `HOST:PORT`; connections are spread round-robin.
    pub gateways: Vec<String>,
    /// Viewer connections in total, posters included.
    pub viewers: usize,
    /// Rooms; viewers are spread evenly over them.
    pub rooms: usize,
    /// Viewers of each room that also post.
    pub posters_per_room: usize,
    /// Posts per second per room, shared by its posters; 0 keeps everyone idle.
    pub rate: f64,
    /// Seconds of posting (or of idling, with rate 0).
    pub duration: f64,
    /// Seconds between the last connection coming up and the first post.
    pub warmup: f64,
    /// Seconds to wait for late deliveries after posting stops.
    pub drain: f64,
    /// Encoding to ask for.
    pub format: Format,
    /// Local addresses to connect from (127.0.0.1, 127.0.0.2, ...); `None`:
    /// 127.0.0.1 up to 20,000 connections per gateway, then the next one.
    pub source_ips: Option<u32>,
    /// New connections per second while ramping up; 0 for no limit.
    pub connect_rate: f64,
    /// Seconds one connection may take to get its hello.
    pub connect_timeout: f64,
    /// Gateway process ids, for RSS and CPU.
    pub gateway_pids: Vec<u32>,
    /// Where to write the final report as JSON, if anywhere.
    pub json: Option<PathBuf>,
    /// Room ids are `PREFIX-0` .. `PREFIX-(rooms-1)`.
    pub room_prefix: String,
    /// Runtime worker threads; `None`: one per core.
    pub threads: Option<usize>,
    /// The run fails when more than this fraction of connections fail.
    pub max_failed_ratio: f64,
    /// `KEY=VALUE` pairs noted in the JSON report (settings, versions).
    pub meta: Vec<String>,
    /// The command line that started the run, noted in the report.
    pub command: Vec<String>,
    /// Densities (comments/s, 0 for unlimited) that the viewers who do not
    /// post ask for in turn; empty: no `density` parameter at all.
    pub density: Vec<u32>,
    /// Viewers per density, in the first room, that record every comment
    /// they receive, for the nesting and consistency checks.
    pub record_per_density: usize,
    /// Offer `permessage-deflate`.
    pub deflate: bool,
    /// Follow a 1001 (a gateway going away) to the next address, and report
    /// how the viewers came back.
    pub reconnect: bool,
    /// Addresses only reconnecting viewers go to, after the `gateways`.
    pub standby: Vec<String>,
}

/// Settings a run cannot start with. The messages name the command-line
/// options, since that is where settings come from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingsError {
    /// No viewers or no rooms.
    #[error("--viewers and --rooms must be at least 1")]
    NoViewersOrRooms,
    /// More rooms than viewers would leave rooms empty.
    #[error("--rooms ({rooms}) is more than --viewers ({viewers})")]
    MoreRoomsThanViewers {
        /// Rooms asked for.
        rooms: usize,
        /// Viewers asked for.
        viewers: usize,
    },
    /// A negative, infinite or NaN rate or time.
    #[error("{0} must be a number ≥ 0")]
    Negative(&'static str),
    /// A connect timeout that is not positive.
    #[error("--connect-timeout must be > 0")]
    ConnectTimeout,
    /// Zero source addresses.
    #[error("--source-ips must be at least 1")]
    NoSourceIps,
    /// A `meta` entry without `=`.
    #[error("--meta expects KEY=VALUE, got {0:?}")]
    Meta(String),
}

impl Settings {
    /// Checks the settings before anything starts.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.viewers == 0 || self.rooms == 0 {
            return Err(SettingsError::NoViewersOrRooms);
        }
        if self.rooms > self.viewers {
            return Err(SettingsError::MoreRoomsThanViewers {
                rooms: self.rooms,
                viewers: self.viewers,
            });
        }
        for (name, v) in [
            ("--rate", self.rate),
            ("--duration", self.duration),
            ("--warmup", self.warmup),
            ("--drain", self.drain),
            ("--connect-rate", self.connect_rate),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(SettingsError::Negative(name));
            }
        }
        if self.connect_timeout <= 0.0 || !self.connect_timeout.is_finite() {
            return Err(SettingsError::ConnectTimeout);
        }
        if self.source_ips == Some(0) {
            return Err(SettingsError::NoSourceIps);
        }
        if let Some(m) = self.meta.iter().find(|m| !m.contains('=')) {
            return Err(SettingsError::Meta(m.clone()));
        }
        Ok(())
    }
}

/// How a run that could be carried out went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Enough connections came up; the report was printed (and written).
    Passed,
    /// Not a single connection came up; there is no report.
    NoConnection,
    /// More than `max_failed_ratio` of the connections failed; the report
    /// was printed (and written) anyway.
    TooManyFailed,
}

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The settings are unusable.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// A gateway address did not resolve.
    #[error("resolving {gateway}")]
    Resolve {
        /// The address as given.
        gateway: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A gateway address resolved to nothing.
    #[error("{0} resolves to no address")]
    NoAddress(String),
    /// The async runtime could not start.
    #[error("starting the runtime")]
    Runtime(#[source] std::io::Error),
    /// A gateway's `/proc` entry could not be read (was the pid right?).
    #[error("reading {path}")]
    ReadProc {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A gateway's `/proc/PID/status` has no `VmRSS` (a zombie?).
    #[error("no VmRSS in {path}")]
    NoVmRss {
        /// The file.
        path: String,
    },
    /// The task that opens connections panicked.
    #[error("the connection spawner failed")]
    Spawner(#[source] tokio::task::JoinError),
    /// The report's directory could not be created.
    #[error("creating {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The report could not be serialized.
    #[error("serializing the report")]
    Serialize(#[source] serde_json::Error),
    /// The report could not be written.
    #[error("writing {}", path.display())]
    WriteReport {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Carries out a whole run: checks `settings`, raises the open file limit,
/// starts a runtime of `settings.threads` workers, connects, posts,
/// measures, prints the report to stdout (progress goes to stderr) and
/// writes it to `settings.json`.
pub fn run(settings: Settings) -> Result<Outcome, Error> {
    settings.validate()?;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < settings.viewers as u64 + 64 => eprintln!(
            "warning: open file limit is {limit}, too low for {} connections",
            settings.viewers
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: could not raise the open file limit: {e}"),
    }
    let threads = settings.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    runtime.block_on(run_async(settings))
}

/// Resolves every gateway address.
fn resolve(gateways: &[String]) -> Result<Vec<Arc<Target>>, Error> {
    gateways
        .iter()
        .map(|g| {
            let addr = g
                .to_socket_addrs()
                .map_err(|source| Error::Resolve {
                    gateway: g.clone(),
                    source,
                })?
                .next()
                .ok_or_else(|| Error::NoAddress(g.clone()))?;
            Ok(Arc::new(Target {
                addr,
                host: g.clone(),
            }))
        })
        .collect()
}

/// Sums VmRSS over the gateway processes, in KiB.
fn gateway_rss(pids: &[u32]) -> Result<u64, Error> {
    pids.iter().map(|&p| sys::vm_rss_kib(p)).sum()
}

/// The run itself, on the runtime.
async fn run_async(settings: Settings) -> Result<Outcome, Error> {
    let targets = resolve(&settings.gateways)?;
    let standby = resolve(&settings.standby)?;
    let layout = Layout::of(&settings);
    let plans = layout.plans(&targets);
    let stats = Arc::new(Stats::new(
        settings.rooms,
        layout.max_posts(settings.duration),
        conn::unix_micros(),
    ));
    let gateway_stats_before =
        futures_util::future::join_all(targets.iter().map(|t| sys::gateway_stats(t.addr, &t.host)))
            .await;
    let rss_before = if settings.gateway_pids.is_empty() {
        None
    } else {
        Some(gateway_rss(&settings.gateway_pids)?)
    };

    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let shared = Arc::new(conn::Shared {
        stats: stats.clone(),
        scanner: Scanner::new(),
        format: settings.format,
        rooms: (0..settings.rooms)
            .map(|r| format!("{}-{r}", settings.room_prefix))
            .collect(),
        connect_timeout: Duration::from_secs_f64(settings.connect_timeout),
        phase: phase_rx,
        deflate: settings.deflate,
        posting_seconds: settings.duration.floor() as usize,
        reconnect: settings.reconnect,
        targets: targets.iter().chain(&standby).cloned().collect(),
        max_posts: layout.max_posts(settings.duration),
    });

    // Ramp up.
    let total = plans.len();
    let ramp_start = Instant::now();
    let connect_rate = settings.connect_rate;
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
    let mut progress = Progress::new(total, settings.gateway_pids.clone());
    let ramp_time = if connect_rate > 0.0 {
        total as f64 / connect_rate
    } else {
        0.0
    };
    let connect_deadline =
        ramp_start + Duration::from_secs_f64(ramp_time + settings.connect_timeout + 5.0);
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
        return Ok(Outcome::NoConnection);
    }

    // Memory once everything is up and has settled.
    let settle = Instant::now() + Duration::from_secs(2);
    progress.until(&stats, "settle", settle, || false).await;
    let rss_connected = match rss_before {
        Some(_) => Some(gateway_rss(&settings.gateway_pids)?),
        None => None,
    };

    // Post.
    let viewers = stats.room_viewers();
    let start = Instant::now() + Duration::from_secs_f64(settings.warmup);
    let end = start + Duration::from_secs_f64(settings.duration);
    phase_tx.send_replace(Phase::Posting { start, end });
    progress.until(&stats, "warmup", start, || false).await;
    let at_start = stats.totals();
    let cpu_start = CpuTimes::now(&settings.gateway_pids);
    progress.until(&stats, "posting", end, || false).await;
    let at_end = stats.totals();
    let cpu_end = CpuTimes::now(&settings.gateway_pids);
    let rss_end = match rss_before {
        Some(_) => Some(gateway_rss(&settings.gateway_pids)?),
        None => None,
    };
    let drain_end = Instant::now() + Duration::from_secs_f64(settings.drain);
    progress.until(&stats, "drain", drain_end, || false).await;

    // Stop and wait for every task.
    phase_tx.send_replace(Phase::Stop);
    let handles = spawner.await.map_err(Error::Spawner)?;
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
    let secs = settings.duration.max(1e-9);
    let per_s = |a: u64, b: u64| (b - a) as f64 / secs;
    let gateway_memory = match (rss_before, rss_connected, rss_end) {
        (Some(before), Some(connected), Some(end)) => Some(GatewayMemory {
            pids: settings.gateway_pids.clone(),
            rss_before_kib: before,
            rss_connected_kib: connected,
            rss_end_kib: end,
            bytes_per_connection: (connected.saturating_sub(before) * 1024) as f64
                / established.max(1) as f64,
        }),
        _ => None,
    };
    let cpu = cpu_end.since(&cpu_start, secs);
    let meta: BTreeMap<String, String> = settings
        .meta
        .iter()
        .filter_map(|m| m.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let report = Report {
        command: settings.command.clone(),
        meta,
        gateways: settings.gateways.clone(),
        format: shared.format.subprotocol().to_owned(),
        rooms: settings.rooms,
        posters_per_room: settings.posters_per_room,
        rate_per_room: settings.rate,
        duration_s: settings.duration,
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
        wire_bytes_per_s: per_s(at_start.wire_bytes, at_end.wire_bytes),
        wire_bytes_per_delivery: (at_end.wire_bytes - at_start.wire_bytes) as f64
            / (at_end.deliveries - at_start.deliveries).max(1) as f64,
        gateway_us_per_frame: report::us_per_frame(
            cpu.gateway_pct,
            per_s(at_start.frames, at_end.frames),
        ),
        deflate: settings.deflate,
        density: (!settings.density.is_empty())
            .then(|| stats.tiers.lock().report(settings.duration)),
        reconnect: settings.reconnect.then(|| {
            let posts = stats.posts();
            let sent = stats.sent_us();
            let mut storm = reconnect::Storm::default();
            for v in stats.viewers.lock().iter() {
                storm.add(v, &posts, &sent);
            }
            storm.report()
        }),
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
    if let Some(path) = &settings.json {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let json = serde_json::to_string_pretty(&report).map_err(Error::Serialize)?;
        std::fs::write(path, json + "\n").map_err(|source| Error::WriteReport {
            path: path.clone(),
            source,
        })?;
    }
    let failed = report.connections_failed as f64;
    if established == 0 || failed > settings.max_failed_ratio * total as f64 {
        eprintln!(
            "error: {} of {total} connections failed (allowed: {:.2} %)",
            report.connections_failed,
            settings.max_failed_ratio * 100.0
        );
        return Ok(Outcome::TooManyFailed);
    }
    Ok(Outcome::Passed)
}
