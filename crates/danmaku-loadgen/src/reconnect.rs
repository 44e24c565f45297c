//! Reconnect storms as viewers live them: a gateway going away (1001)
//! sends its viewers to the other addresses, and the run measures how long
//! each took to be back (close to the new `hello`), how long its handshake
//! took, how fast the gateways took the returning viewers in, and whether
//! any comment posted after a viewer was back failed to reach it.
//!
//! "Back" is the viewer's last `hello` of the run; a comment posted (sent
//! by its poster) after that instant and acknowledged must arrive. Each
//! reconnecting viewer keeps one bit per post of the run for this, so the
//! check is exact per viewer rather than a count per post.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::report::Latency;
use crate::stats::{new_histogram, PostRecord, PostState};

/// The reconnect hint a gateway may put in its 1001 close reason:
/// `reconnect_ms=N` anywhere in the reason. Longer hints are capped, so a
/// bad reason cannot park the load generator.
pub(crate) fn hint_ms(reason: &str) -> Option<u64> {
    let at = reason.find("reconnect_ms=")? + "reconnect_ms=".len();
    let digits: String = reason[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse::<u64>().ok().map(|ms| ms.min(60_000))
}

/// One viewer's record of the comments it received.
#[derive(Debug, Clone, Default)]
pub(crate) struct Received {
    bits: Vec<u64>,
}

impl Received {
    /// Room for posts `0..posts`.
    pub(crate) fn new(posts: usize) -> Received {
        Received {
            bits: vec![0; posts.div_ceil(64)],
        }
    }

    /// Post `seq` arrived.
    pub(crate) fn set(&mut self, seq: u64) {
        let i = seq as usize;
        if let Some(word) = self.bits.get_mut(i / 64) {
            *word |= 1 << (i % 64);
        }
    }

    fn has(&self, i: usize) -> bool {
        self.bits
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// What one viewer went through, handed over when it ends.
#[derive(Debug, Clone, Default)]
pub(crate) struct Viewer {
    /// Its room.
    pub room: usize,
    /// Its `hello` times, Unix µs, first connection included.
    pub hellos: Vec<u64>,
    /// When each 1001 that sent it elsewhere arrived, Unix µs.
    pub closes: Vec<u64>,
    /// Handshake time (connect start to `hello`) of each reconnection, µs.
    pub handshakes: Vec<u64>,
    /// First comment received after the last `hello`, Unix µs.
    pub first_after_back: Option<u64>,
    /// The comments it received.
    pub received: Received,
}

/// Every viewer, folded as they end.
pub(crate) struct Storm {
    viewers: u64,
    moved: u64,
    close_to_back: Histogram<u64>,
    handshake: Histogram<u64>,
    back_to_receiving: Histogram<u64>,
    /// Every reconnection's `hello`, Unix µs: the accept rate's raw data.
    backs: Vec<u64>,
    last_close: u64,
    last_back: u64,
    expected: u64,
    missing: u64,
    viewers_missing: u64,
}

impl Default for Storm {
    fn default() -> Storm {
        Storm {
            viewers: 0,
            moved: 0,
            close_to_back: new_histogram(),
            handshake: new_histogram(),
            back_to_receiving: new_histogram(),
            backs: Vec::new(),
            last_close: 0,
            last_back: 0,
            expected: 0,
            missing: 0,
            viewers_missing: 0,
        }
    }
}

/// The most events within any `window_us`, over sorted times.
fn peak(times: &[u64], window_us: u64) -> usize {
    let mut best = 0;
    let mut from = 0;
    for (to, &t) in times.iter().enumerate() {
        while t - times[from] >= window_us {
            from += 1;
        }
        best = best.max(to + 1 - from);
    }
    best
}

impl Storm {
    /// Folds in one viewer; `posts` and `sent_us` are the run's post table.
    pub(crate) fn add(&mut self, v: &Viewer, posts: &[PostRecord], sent_us: &[u64]) {
        self.viewers += 1;
        let Some(&back) = v.hellos.last() else {
            return;
        };
        if !v.closes.is_empty() {
            self.moved += 1;
            for (close, hello) in v.closes.iter().zip(&v.hellos[1..]) {
                self.close_to_back
                    .saturating_record(hello.saturating_sub(*close).max(1));
                self.backs.push(*hello);
                self.last_back = self.last_back.max(*hello);
            }
            self.last_close = self.last_close.max(*v.closes.iter().max().unwrap_or(&0));
            for h in &v.handshakes {
                self.handshake.saturating_record((*h).max(1));
            }
            if let Some(first) = v.first_after_back {
                self.back_to_receiving
                    .saturating_record(first.saturating_sub(back).max(1));
            }
        }
        let mut missing = 0;
        for (i, post) in posts.iter().enumerate() {
            let after = sent_us.get(i).is_some_and(|&s| s > back);
            if post.room == v.room && post.state == PostState::Acked && after {
                self.expected += 1;
                if !v.received.has(i) {
                    missing += 1;
                }
            }
        }
        self.missing += missing;
        self.viewers_missing += u64::from(missing > 0);
    }

    /// The report.
    pub(crate) fn report(&mut self) -> StormReport {
        self.backs.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        StormReport {
            viewers: self.viewers,
            moved: self.moved,
            close_to_back: Latency::from_histogram(&self.close_to_back),
            handshake: Latency::from_histogram(&self.handshake),
            back_to_receiving: Latency::from_histogram(&self.back_to_receiving),
            last_back_after_last_close_ms: (self.moved > 0)
                .then(|| ms(self.last_back.saturating_sub(self.last_close))),
            peak_reconnects_per_s: peak(&self.backs, 1_000_000) as u64,
            peak_reconnects_per_100ms_as_per_s: peak(&self.backs, 100_000) as u64 * 10,
            expected_after_back: self.expected,
            missing_after_back: self.missing,
            viewers_missing: self.viewers_missing,
        }
    }
}

/// Reconnections over the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct StormReport {
    /// Viewers tracked.
    pub viewers: u64,
    /// Viewers sent elsewhere by a 1001 at least once.
    pub moved: u64,
    /// From the 1001 to the new `hello`.
    pub close_to_back: Latency,
    /// From connect start to `hello`, reconnections only.
    pub handshake: Latency,
    /// From the new `hello` to the first comment after it.
    pub back_to_receiving: Latency,
    /// The last viewer's return after the last 1001 (the drain's end), ms.
    pub last_back_after_last_close_ms: Option<f64>,
    /// Most reconnections (new `hello`s) within any second.
    pub peak_reconnects_per_s: u64,
    /// Most within any 100 ms, times ten.
    pub peak_reconnects_per_100ms_as_per_s: u64,
    /// Acked comments posted after their viewer was back, summed over
    /// viewers.
    pub expected_after_back: u64,
    /// Of those, the ones that never arrived.
    pub missing_after_back: u64,
    /// Viewers that missed at least one.
    pub viewers_missing: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_is_found_and_capped() {
        assert_eq!(hint_ms("going away; reconnect_ms=1234"), Some(1234));
        assert_eq!(hint_ms("reconnect_ms=99999999"), Some(60_000));
        assert_eq!(hint_ms("going away"), None);
        assert_eq!(hint_ms("reconnect_ms=x"), None);
    }

    #[test]
    fn peaks_count_events_within_a_window() {
        assert_eq!(peak(&[], 10), 0);
        assert_eq!(peak(&[0, 5, 9, 10, 30], 10), 3);
        assert_eq!(peak(&[0, 1, 2, 3], 100), 4);
    }

    fn post(room: usize, state: PostState) -> PostRecord {
        PostRecord {
            room,
            state,
            received: 0,
        }
    }

    #[test]
    fn only_comments_posted_after_the_return_are_owed() {
        let posts = [
            post(0, PostState::Acked),    // before the return: not owed
            post(0, PostState::Acked),    // after, received
            post(0, PostState::Acked),    // after, missing
            post(1, PostState::Acked),    // another room
            post(0, PostState::Rejected), // never acked
        ];
        let sent = [100, 300, 400, 500, 600];
        let mut received = Received::new(posts.len());
        received.set(1);
        received.set(999); // out of range: ignored
        let moved = Viewer {
            room: 0,
            hellos: vec![10, 250],
            closes: vec![200],
            handshakes: vec![40],
            first_after_back: Some(300),
            received,
        };
        let stayed = Viewer {
            room: 0,
            hellos: vec![10],
            received: {
                let mut r = Received::new(posts.len());
                for i in 0..3 {
                    r.set(i);
                }
                r
            },
            ..Viewer::default()
        };
        let mut storm = Storm::default();
        storm.add(&moved, &posts, &sent);
        storm.add(&stayed, &posts, &sent);
        let r = storm.report();
        assert_eq!((r.viewers, r.moved), (2, 1));
        assert_eq!(r.expected_after_back, 2 + 3);
        assert_eq!((r.missing_after_back, r.viewers_missing), (1, 1));
        assert_eq!(r.last_back_after_last_close_ms, Some(0.05));
        assert_eq!(r.close_to_back.count, 1);
        assert_eq!(r.peak_reconnects_per_s, 1);
    }
}
