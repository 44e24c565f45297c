//! How a run's connections are laid out: which room each viewer joins,
//! which gateway and source address it uses, and when posters post.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use crate::conn::{Plan, Schedule, Target};
use crate::Settings;

/// Connections one source address is used for per gateway before the next
/// one is taken: one address reaches one port only ~28,000 times.
const CONNECTIONS_PER_SOURCE: usize = 20_000;

/// How viewers and posters are laid out.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    viewers: usize,
    rooms: usize,
    posters_per_room: usize,
    rate: f64,
    source_ips: Option<u32>,
    /// Densities the viewers who do not post cycle through; empty: none
    /// asked for.
    density: Vec<u32>,
    /// Viewers per density (in room 0) that record what they receive.
    record_per_density: usize,
}

impl Layout {
    pub(crate) fn of(settings: &Settings) -> Layout {
        Layout {
            viewers: settings.viewers,
            rooms: settings.rooms,
            posters_per_room: settings.posters_per_room,
            rate: settings.rate,
            source_ips: settings.source_ips,
            density: settings.density.clone(),
            record_per_density: settings.record_per_density,
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
    pub(crate) fn plans(&self, targets: &[Arc<Target>]) -> Vec<Plan> {
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
                // Viewers who do not post cycle through the densities;
                // posters ask for everything, so their own comments never
                // count against a budget.
                let (density, record) = match (&poster, self.density.len()) {
                    (_, 0) => (None, false),
                    (Some(_), _) => (Some(0), false),
                    (None, n) => {
                        let k = member - posters;
                        let record = room == 0 && k / n < self.record_per_density;
                        (Some(self.density[k % n]), record)
                    }
                };
                Plan {
                    target,
                    source,
                    room,
                    poster,
                    seed: (i as u32).wrapping_mul(0x9e37_79b9),
                    density,
                    record,
                }
            })
            .collect()
    }

    /// Most posts a run of `duration` seconds can send.
    pub(crate) fn max_posts(&self, duration: f64) -> usize {
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
            density: Vec::new(),
            record_per_density: 0,
        }
    }

    #[test]
    fn viewers_cycle_through_densities_and_recorders_span_both_gateways() {
        let mut l = layout(24, 1, 2, 10.0);
        l.density = vec![15, 30, 0];
        l.record_per_density = 2;
        let plans = l.plans(&targets(2));
        assert!(plans
            .iter()
            .filter(|p| p.poster.is_some())
            .all(|p| p.density == Some(0) && !p.record));
        let viewers: Vec<_> = plans.iter().filter(|p| p.poster.is_none()).collect();
        let got: Vec<_> = viewers.iter().take(4).map(|p| p.density).collect();
        assert_eq!(got, [Some(15), Some(30), Some(0), Some(15)]);
        for d in [15, 30, 0] {
            let rec: Vec<_> = viewers
                .iter()
                .filter(|p| p.record && p.density == Some(d))
                .collect();
            assert_eq!(rec.len(), 2, "{d}");
            // An odd number of densities puts the two on different gateways.
            assert_ne!(rec[0].target.addr, rec[1].target.addr, "{d}");
        }
        assert!(layout(4, 1, 1, 1.0)
            .plans(&targets(1))
            .iter()
            .all(|p| p.density.is_none()));
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
}
