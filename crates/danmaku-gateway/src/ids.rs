//! Identifiers: comment ids unique across the fleet, and guest user ids.

use std::sync::atomic::{AtomicU64, Ordering};

/// Makes comment ids: a random per-process prefix (64 bits, base 36) and
/// a counter. Two processes share a prefix with probability about
/// n²/2⁶⁵ for n process starts, so ids need no coordination.
pub(crate) struct IdGen {
    prefix: String,
    seq: AtomicU64,
}

impl IdGen {
    /// A generator with a fresh random prefix.
    pub(crate) fn new() -> IdGen {
        IdGen {
            prefix: base36(rand::random::<u64>()),
            seq: AtomicU64::new(0),
        }
    }

    /// The next id.
    pub(crate) fn next(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{}", self.prefix, base36(n))
    }
}

impl Default for IdGen {
    fn default() -> Self {
        IdGen::new()
    }
}

/// A guest user id: `guest-` and six base-36 characters.
pub(crate) fn guest_id() -> String {
    let n = rand::random::<u64>() % 36u64.pow(6);
    format!("guest-{:0>6}", base36(n))
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::with_capacity(13);
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    // Only ASCII digits were pushed.
    String::from_utf8(out).expect("ascii")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_guests_are_well_formed() {
        let g = IdGen::new();
        let a = g.next();
        let b = g.next();
        assert_ne!(a, b);
        assert_ne!(IdGen::new().next(), IdGen::new().next());
        let guest = guest_id();
        assert_eq!(guest.len(), 12);
        assert!(guest.starts_with("guest-"));
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}
