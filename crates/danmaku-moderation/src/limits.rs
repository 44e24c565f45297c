//! Rate-limit budgets and keys: the local governor limiters keyed by user
//! and by client address, and the budgets the fleet-wide checks repeat.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::{ClusterKind, PolicyError};

/// A governor limiter with one cell per key, on clock `C`.
pub(crate) type Keyed<K, C> =
    RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One rate budget: `count` posts per `window` sustained, `burst` at once,
/// as a governor quota (local) and as GCRA parameters (fleet-wide), so both
/// tiers enforce the same numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// For the local limiter.
    pub(crate) quota: Quota,
    /// Time per post.
    pub(crate) period: Duration,
    /// Posts at once.
    pub(crate) burst: u32,
}

impl Budget {
    /// `count` per `window`, `burst` at once, both multiplied by `factor`;
    /// `names` are the policy fields (count, window, burst) a zero is
    /// blamed on.
    pub(crate) fn new(
        count: u32,
        window: Duration,
        burst: u32,
        factor: u32,
        names: [&'static str; 3],
    ) -> Result<Budget, PolicyError> {
        let [count_name, window_name, burst_name] = names;
        let count =
            NonZeroU32::new(count.saturating_mul(factor)).ok_or(PolicyError::Zero(count_name))?;
        let burst =
            NonZeroU32::new(burst.saturating_mul(factor)).ok_or(PolicyError::Zero(burst_name))?;
        if window.is_zero() {
            return Err(PolicyError::Zero(window_name));
        }
        let period = (window / count.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .ok_or(PolicyError::Zero(window_name))?
            .allow_burst(burst);
        Ok(Budget {
            quota,
            period,
            burst: burst.get(),
        })
    }

    /// The same budget for a fleet-wide check.
    pub(crate) fn cluster(&self) -> ClusterKind {
        ClusterKind::Gcra {
            period: self.period,
            burst: self.burst,
        }
    }
}

/// What a client address is limited as: an IPv4 address alone, or an IPv6
/// address's /64 prefix, since one subscriber usually holds a whole /64
/// and could otherwise post from endless addresses. An IPv4-mapped IPv6
/// address (`::ffff:a.b.c.d`, what a dual-stack socket reports for an IPv4
/// client) is that IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum IpKey {
    /// An IPv4 client.
    V4(Ipv4Addr),
    /// The upper 64 bits of an IPv6 client's address.
    V6(u64),
}

impl IpKey {
    /// The key of `ip`.
    pub(crate) fn of(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4),
                None => IpKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl IpKey {
    /// Appends the key's text (as [`Display`](fmt::Display) writes it) to
    /// `out`; IPv4 by hand, as the formatting machinery costs more than
    /// the rest of a key.
    pub(crate) fn push_to(&self, out: &mut String) {
        match self {
            IpKey::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push('.');
                    }
                    if octet >= 100 {
                        out.push(char::from(b'0' + octet / 100));
                    }
                    if octet >= 10 {
                        out.push(char::from(b'0' + octet / 10 % 10));
                    }
                    out.push(char::from(b'0' + octet % 10));
                }
            }
            IpKey::V6(_) => {
                use std::fmt::Write;
                // Writing to a String cannot fail.
                let _ = write!(out, "{self}");
            }
        }
    }
}

/// `203.0.113.7`, or `2001:db8:1:2::/64`: the form used in fleet-wide keys.
impl fmt::Display for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpKey::V4(v4) => v4.fmt(f),
            IpKey::V6(prefix) => {
                write!(f, "{}/64", Ipv6Addr::from(u128::from(*prefix) << 64))
            }
        }
    }
}

/// `wait` in whole milliseconds rounded up, so a client that waits exactly
/// this long succeeds; at least 1 ms, so a refusal never says "retry now".
pub(crate) fn whole_ms(wait: Duration) -> Duration {
    let ms = u64::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    Duration::from_millis(ms.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> String {
        IpKey::of(s.parse().expect("an address")).to_string()
    }

    #[test]
    fn ipv6_is_keyed_by_its_64_prefix() {
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::/64");
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
    }

    #[test]
    fn pushed_keys_read_as_displayed() {
        for ip in ["0.0.0.0", "9.10.99.100", "255.255.255.255", "2001:db8::1"] {
            let k = IpKey::of(ip.parse().expect("an address"));
            let mut pushed = String::new();
            k.push_to(&mut pushed);
            assert_eq!(pushed, k.to_string());
        }
    }

    #[test]
    fn ipv4_and_mapped_ipv4_are_one_key() {
        assert_eq!(key("203.0.113.7"), "203.0.113.7");
        assert_eq!(key("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(
            IpKey::of("::ffff:203.0.113.7".parse().expect("an address")),
            IpKey::of("203.0.113.7".parse().expect("an address"))
        );
    }

    #[test]
    fn whole_ms_rounds_up_to_at_least_one() {
        assert_eq!(whole_ms(Duration::ZERO), Duration::from_millis(1));
        assert_eq!(
            whole_ms(Duration::from_micros(1_001)),
            Duration::from_millis(2)
        );
        assert_eq!(
            whole_ms(Duration::from_millis(30)),
            Duration::from_millis(30)
        );
    }

    #[test]
    fn budgets_multiply_and_refuse_zeros() {
        let b = Budget::new(5, Duration::from_secs(10), 3, 10, ["c", "w", "b"]).expect("valid");
        assert_eq!((b.period, b.burst), (Duration::from_millis(200), 30));
        assert_eq!(
            Budget::new(0, Duration::from_secs(1), 1, 1, ["c", "w", "b"]),
            Err(PolicyError::Zero("c"))
        );
        assert_eq!(
            Budget::new(1, Duration::ZERO, 1, 1, ["c", "w", "b"]),
            Err(PolicyError::Zero("w"))
        );
        assert_eq!(
            Budget::new(1, Duration::from_secs(1), 1, 0, ["c", "w", "b"]),
            Err(PolicyError::Zero("c"))
        );
    }
}
