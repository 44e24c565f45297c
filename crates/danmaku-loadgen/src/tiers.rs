//! Density tiers as a viewer sees them: how many comments each viewer got
//! per second against the budget its `hello` granted, the worst five
//! seconds of each, and, for a few viewers per tier, the exact set of
//! comments received, to check that tiers are nested (a lower tier's
//! comments all reach every higher tier) and consistent (every viewer of a
//! tier gets the same comments, on whichever gateway it is).
//!
//! Per-second counts are taken on the viewer's receive clock from the start
//! of posting; "any 5 s" is therefore checked in 1 s steps.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

/// Seconds of the budget window the check uses.
pub(crate) const WINDOW_S: usize = 5;
/// Recorded sets count only comments sent at least this long after posting
/// began, so the gateway's first rate measurement is behind them.
pub(crate) const SETTLE_US: u64 = 2_000_000;

/// What one viewer counts while it runs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meter {
    /// Deliveries per second since posting began, by receive time.
    pub bins: Vec<u32>,
    /// The post sequence numbers received, for the recorded viewers.
    pub seqs: Option<Vec<u64>>,
}

impl Meter {
    /// A meter; `record` keeps the received set too.
    pub(crate) fn new(record: bool) -> Meter {
        Meter {
            bins: Vec::new(),
            seqs: record.then(Vec::new),
        }
    }

    /// One delivery, `second` seconds into posting (`None` before it).
    pub(crate) fn delivery(&mut self, second: Option<usize>, seq: u64, settled: bool) {
        if let Some(s) = second {
            if self.bins.len() <= s {
                self.bins.resize(s + 1, 0);
            }
            self.bins[s] += 1;
        }
        if let (Some(seqs), true) = (self.seqs.as_mut(), settled) {
            seqs.push(seq);
        }
    }
}

/// One tier over all its viewers.
#[derive(Debug, Clone, Default)]
struct TierAgg {
    viewers: u64,
    deliveries: u64,
    worst_ratio: f64,
    over: u64,
    sets: Vec<(String, Vec<u64>)>,
}

/// Every viewer's meter, folded as connections end.
#[derive(Debug, Default)]
pub(crate) struct Tiers {
    by_density: BTreeMap<u32, TierAgg>,
}

/// The largest sum of `WINDOW_S` consecutive bins among the first
/// `seconds` bins; `None` when the run is shorter than the window.
fn worst_window(bins: &[u32], seconds: usize) -> Option<u64> {
    if seconds < WINDOW_S {
        return None;
    }
    let bin = |i: usize| u64::from(bins.get(i).copied().unwrap_or(0));
    (0..=seconds - WINDOW_S)
        .map(|start| (start..start + WINDOW_S).map(bin).sum())
        .max()
}

impl Tiers {
    /// Folds in the meter of a viewer granted `density` (0: unlimited) on
    /// `gateway`, over `seconds` of posting.
    pub(crate) fn add(&mut self, density: u32, gateway: &str, meter: Meter, seconds: usize) {
        let t = self.by_density.entry(density).or_default();
        t.viewers += 1;
        t.deliveries += meter
            .bins
            .iter()
            .take(seconds)
            .map(|&n| u64::from(n))
            .sum::<u64>();
        if density > 0 {
            if let Some(worst) = worst_window(&meter.bins, seconds) {
                let ratio = worst as f64 / (WINDOW_S as f64 * f64::from(density));
                t.worst_ratio = t.worst_ratio.max(ratio);
                if ratio > 1.1 {
                    t.over += 1;
                }
            }
        }
        if let Some(mut seqs) = meter.seqs {
            seqs.sort_unstable();
            t.sets.push((gateway.to_owned(), seqs));
        }
    }

    /// The report over `seconds` of posting.
    pub(crate) fn report(&self, seconds: f64) -> TierReport {
        let mut tiers = Vec::new();
        for (&density, t) in &self.by_density {
            tiers.push(TierLine {
                density,
                viewers: t.viewers,
                per_viewer_per_s: t.deliveries as f64 / t.viewers.max(1) as f64 / seconds.max(1e-9),
                worst_5s_over_budget: (density > 0).then_some(t.worst_ratio),
                viewers_over_110pct: t.over,
                recorded: t.sets.iter().map(|(g, s)| (g.clone(), s.len())).collect(),
            });
        }
        // Consistency: every recorded set of a tier equals its first.
        let (mut pairs, mut differing, mut cross_gateway) = (0, 0, 0);
        for t in self.by_density.values() {
            let Some((g0, first)) = t.sets.first() else {
                continue;
            };
            for (g, other) in &t.sets[1..] {
                pairs += 1;
                if g != g0 {
                    cross_gateway += 1;
                }
                if other != first {
                    differing += 1;
                }
            }
        }
        // Nesting: each tier's first set inside the next higher tier's
        // (unlimited, 0, is the highest).
        let mut order: Vec<(u32, &TierAgg)> = self
            .by_density
            .iter()
            .filter(|(_, t)| !t.sets.is_empty())
            .map(|(&d, t)| (d, t))
            .collect();
        order.sort_by_key(|(d, _)| if *d == 0 { u32::MAX } else { *d });
        let mut nesting_violations = 0;
        for w in order.windows(2) {
            let higher: HashSet<u64> = w[1].1.sets[0].1.iter().copied().collect();
            nesting_violations += w[0].1.sets[0]
                .1
                .iter()
                .filter(|s| !higher.contains(s))
                .count() as u64;
        }
        TierReport {
            tiers,
            consistency_pairs: pairs,
            consistency_pairs_across_gateways: cross_gateway,
            consistency_pairs_differing: differing,
            nesting_checked: order.len().saturating_sub(1) as u64,
            nesting_violations,
        }
    }
}

/// One tier in the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct TierLine {
    /// The granted budget in comments/s; 0 for unlimited.
    pub density: u32,
    /// Viewers granted it.
    pub viewers: u64,
    /// Comments received per viewer per second during posting.
    pub per_viewer_per_s: f64,
    /// The worst 5 s of any of its viewers, as a multiple of the budget.
    pub worst_5s_over_budget: Option<f64>,
    /// Viewers whose worst 5 s went over 110 % of the budget.
    pub viewers_over_110pct: u64,
    /// The recorded viewers: their gateway and how many comments each got.
    pub recorded: Vec<(String, usize)>,
}

/// Density tiers over the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct TierReport {
    /// Per tier, by granted density.
    pub tiers: Vec<TierLine>,
    /// Pairs of recorded viewers of the same tier compared.
    pub consistency_pairs: u64,
    /// Of those, pairs on different gateways.
    pub consistency_pairs_across_gateways: u64,
    /// Pairs whose sets differ.
    pub consistency_pairs_differing: u64,
    /// Adjacent tier pairs checked for nesting.
    pub nesting_checked: u64,
    /// Comments of a lower tier missing from the next higher one.
    pub nesting_violations: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(bins: &[u32], seqs: Option<&[u64]>) -> Meter {
        Meter {
            bins: bins.to_vec(),
            seqs: seqs.map(<[u64]>::to_vec),
        }
    }

    #[test]
    fn the_worst_five_seconds_are_found() {
        assert_eq!(worst_window(&[1, 1, 1, 1, 1, 9], 6), Some(13));
        assert_eq!(worst_window(&[1, 1, 1], 6), Some(3));
        assert_eq!(worst_window(&[1, 1, 1], 4), None);
        // Bins past the posting time are not counted.
        assert_eq!(worst_window(&[1, 1, 1, 1, 1, 100], 5), Some(5));
    }

    #[test]
    fn budgets_nesting_and_consistency_are_reported() {
        let mut t = Tiers::default();
        t.add(10, "a", meter(&[10; 10], Some(&[3, 1, 2])), 10);
        t.add(
            10,
            "b",
            meter(&[10, 10, 10, 10, 10, 12, 12, 12, 12, 12], Some(&[1, 2, 3])),
            10,
        );
        t.add(20, "a", meter(&[20; 10], Some(&[1, 2, 3, 4])), 10);
        t.add(0, "b", meter(&[30; 10], Some(&[1, 2, 4, 5])), 10);
        let r = t.report(10.0);
        assert_eq!(r.tiers.len(), 3);
        let ten = r.tiers.iter().find(|l| l.density == 10).unwrap();
        assert_eq!(ten.viewers, 2);
        assert!((ten.per_viewer_per_s - 10.5).abs() < 1e-9);
        assert_eq!(ten.worst_5s_over_budget, Some(1.2));
        assert_eq!(ten.viewers_over_110pct, 1);
        assert_eq!(r.consistency_pairs, 1);
        assert_eq!(r.consistency_pairs_across_gateways, 1);
        assert_eq!(r.consistency_pairs_differing, 0, "order does not matter");
        // 10 ⊆ 20 holds; 20 ⊄ unlimited (3 is missing).
        assert_eq!(r.nesting_checked, 2);
        assert_eq!(r.nesting_violations, 1);
        let unlimited = r.tiers.iter().find(|l| l.density == 0).unwrap();
        assert_eq!(unlimited.worst_5s_over_budget, None);
    }
}
