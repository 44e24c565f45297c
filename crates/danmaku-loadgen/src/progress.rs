//! Progress while a run goes: one line a second on stderr, and the CPU use
//! of the gateways, of this process and of the machine.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::time::Instant;

use crate::report::Cpu;
use crate::stats::{Stats, Totals};
use crate::sys;

/// CPU seconds used so far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuTimes {
    /// By the gateways, if any are known.
    gateway: Option<f64>,
    /// By this process.
    loadgen: f64,
    /// By the whole machine.
    machine: Option<f64>,
}

impl CpuTimes {
    pub(crate) fn now(pids: &[u32]) -> CpuTimes {
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
    pub(crate) fn since(&self, earlier: &CpuTimes, seconds: f64) -> Cpu {
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
pub(crate) struct Progress {
    started: Instant,
    last_at: Instant,
    last: Totals,
    last_cpu: CpuTimes,
    target: usize,
    pids: Vec<u32>,
}

impl Progress {
    pub(crate) fn new(target: usize, pids: Vec<u32>) -> Progress {
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
    pub(crate) async fn until(
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
