//! What a run measures, kept cheap to update from thousands of tasks.
//!
//! Hot counters (frames, bytes, deliveries, per-post receive counts and the
//! latency histogram) live in one [`ThreadStats`] per runtime worker thread.
//! Only its own thread writes it, so updates are plain loads and stores with
//! no contended cache lines; the reporter sums the threads. Rare events
//! (connects, posts, acks) go straight to shared atomics.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// Highest latency the histograms track, in microseconds (one hour);
/// anything slower is recorded as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// State of one post in the post table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum PostState {
    /// Never sent (or the slot is past the end of the run).
    Unsent = 0,
    /// Sent, no answer yet.
    Sent = 1,
    /// Acknowledged: it counts towards expected deliveries.
    Acked = 2,
    /// Refused by the gateway.
    Rejected = 3,
}

impl PostState {
    fn from_u8(v: u8) -> PostState {
        match v {
            1 => PostState::Sent,
            2 => PostState::Acked,
            3 => PostState::Rejected,
            _ => PostState::Unsent,
        }
    }
}

/// Adds `n` to a counter that only the calling thread writes.
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed) + n, Relaxed);
}

/// The hot counters of one worker thread.
pub(crate) struct ThreadStats {
    frames: AtomicU64,
    bytes: AtomicU64,
    /// Bytes read from sockets: frame headers, compressed payloads, all.
    wire_bytes: AtomicU64,
    deliveries: AtomicU64,
    /// Marked comments that are not from this run (old sequence or time).
    foreign: AtomicU64,
    /// Latency of every delivery, in microseconds.
    hist: Mutex<Histogram<u64>>,
    /// Deliveries seen per post sequence number, by this thread.
    per_post: Box<[AtomicU32]>,
}

/// Everything this thread saw in one frame, recorded in one go.
pub(crate) struct FrameRecorder<'a> {
    stats: &'a Stats,
    local: &'a ThreadStats,
    hist: parking_lot::MutexGuard<'a, Histogram<u64>>,
    now_us: u64,
    deliveries: u64,
}

impl FrameRecorder<'_> {
    /// Records one delivery of post `seq`, sent at `sent_us`. Only
    /// `counted` deliveries (to viewers meant to get every comment) count
    /// against the post's expected deliveries; every one counts in the
    /// latency and the rates.
    pub(crate) fn delivery(&mut self, sent_us: u64, seq: u64, counted: bool) {
        let slot = usize::try_from(seq)
            .ok()
            .and_then(|i| self.local.per_post.get(i));
        let Some(slot) = slot.filter(|_| sent_us >= self.stats.run_start_us) else {
            bump(&self.local.foreign, 1);
            return;
        };
        if counted {
            slot.store(slot.load(Relaxed) + 1, Relaxed);
        }
        let latency = self.now_us.saturating_sub(sent_us).max(1);
        self.hist.saturating_record(latency.min(MAX_LATENCY_US));
        self.deliveries += 1;
    }
}

impl Drop for FrameRecorder<'_> {
    fn drop(&mut self) {
        bump(&self.local.deliveries, self.deliveries);
    }
}

/// Sums of the hot counters over all threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Frames received.
    pub frames: u64,
    /// Payload bytes received (inflated, when compressed).
    pub bytes: u64,
    /// Bytes read from sockets.
    pub wire_bytes: u64,
    /// Marked comments received from this run.
    pub deliveries: u64,
    /// Marked comments that were not from this run.
    pub foreign: u64,
}

/// One number per reason, for failures and refusals.
pub(crate) type Reasons = BTreeMap<String, u64>;

/// Shared statistics of one run.
pub(crate) struct Stats {
    /// Identifies this instance in the thread-local cache.
    id: u64,
    /// Posts with a sent time before this are not ours.
    run_start_us: u64,
    threads: Mutex<Vec<Arc<ThreadStats>>>,
    post_state: Box<[AtomicU8]>,
    post_room: Box<[AtomicU32]>,
    /// When each post was handed to its socket, Unix µs.
    post_sent_us: Box<[AtomicU64]>,
    next_seq: AtomicU64,
    /// Viewers that got `hello`, are still connected and are meant to get
    /// every comment (no density limit), per room.
    room_viewers: Box<[AtomicU32]>,
    /// Density tiers as the viewers saw them.
    pub tiers: Mutex<crate::tiers::Tiers>,
    /// With `--reconnect`: every viewer's connections and receipts.
    pub viewers: Mutex<Vec<crate::reconnect::Viewer>>,
    /// Viewers that followed a 1001 to another address.
    pub reconnected: AtomicU64,
    /// Connections that got `hello`.
    pub established: AtomicU64,
    /// Connections that never got `hello`.
    pub failed: AtomicU64,
    /// Established connections that ended before the run stopped them.
    pub closed_early: AtomicU64,
    /// Posts sent.
    pub posts_sent: AtomicU64,
    /// `ack`s received.
    pub posts_acked: AtomicU64,
    /// `reject`s received.
    pub posts_rejected: AtomicU64,
    /// `error` events received.
    pub errors: AtomicU64,
    /// Posts not sent because the post table was full.
    pub posts_skipped: AtomicU64,
    /// Why connections failed, ended early, or posts were refused.
    reasons: Mutex<Reasons>,
}

thread_local! {
    /// This thread's counters, with the id of the `Stats` they belong to.
    static LOCAL: RefCell<Option<(u64, Arc<ThreadStats>)>> = const { RefCell::new(None) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Stats {
    /// Statistics for a run of `rooms` rooms that sends at most `max_posts`
    /// posts, none of them before `run_start_us`.
    pub(crate) fn new(rooms: usize, max_posts: usize, run_start_us: u64) -> Stats {
        Stats {
            id: NEXT_ID.fetch_add(1, Relaxed),
            run_start_us,
            threads: Mutex::new(Vec::new()),
            post_state: (0..max_posts).map(|_| AtomicU8::new(0)).collect(),
            post_room: (0..max_posts).map(|_| AtomicU32::new(0)).collect(),
            post_sent_us: (0..max_posts).map(|_| AtomicU64::new(0)).collect(),
            next_seq: AtomicU64::new(0),
            room_viewers: (0..rooms).map(|_| AtomicU32::new(0)).collect(),
            tiers: Mutex::default(),
            viewers: Mutex::default(),
            reconnected: AtomicU64::new(0),
            established: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            closed_early: AtomicU64::new(0),
            posts_sent: AtomicU64::new(0),
            posts_acked: AtomicU64::new(0),
            posts_rejected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            posts_skipped: AtomicU64::new(0),
            reasons: Mutex::new(Reasons::new()),
        }
    }

    /// Runs `f` with this thread's counters, creating them on first use.
    fn with_local<R>(&self, f: impl FnOnce(&ThreadStats) -> R) -> R {
        LOCAL.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.as_ref().is_none_or(|(id, _)| *id != self.id) {
                let local = Arc::new(ThreadStats {
                    frames: AtomicU64::new(0),
                    bytes: AtomicU64::new(0),
                    wire_bytes: AtomicU64::new(0),
                    deliveries: AtomicU64::new(0),
                    foreign: AtomicU64::new(0),
                    hist: Mutex::new(new_histogram()),
                    per_post: (0..self.post_state.len())
                        .map(|_| AtomicU32::new(0))
                        .collect(),
                });
                self.threads.lock().push(local.clone());
                *cell = Some((self.id, local));
            }
            let (_, local) = cell.as_ref().expect("just set");
            f(local)
        })
    }

    /// Counts one received frame of `len` bytes, and lets `f` record the
    /// deliveries in it, all received at `now_us`.
    pub(crate) fn frame<R>(
        &self,
        len: usize,
        now_us: u64,
        f: impl FnOnce(&mut FrameRecorder<'_>) -> R,
    ) -> R {
        self.with_local(|local| {
            bump(&local.frames, 1);
            bump(&local.bytes, len as u64);
            let mut recorder = FrameRecorder {
                stats: self,
                local,
                hist: local.hist.lock(),
                now_us,
                deliveries: 0,
            };
            f(&mut recorder)
        })
    }

    /// Counts `n` bytes read from a socket.
    pub(crate) fn wire(&self, n: usize) {
        self.with_local(|local| bump(&local.wire_bytes, n as u64));
    }

    /// Counts one reason for a failure or refusal.
    pub(crate) fn reason(&self, reason: impl Into<String>) {
        *self.reasons.lock().entry(reason.into()).or_default() += 1;
    }

    /// The reasons counted so far.
    pub(crate) fn reasons(&self) -> Reasons {
        self.reasons.lock().clone()
    }

    /// A connection got `hello` in room `room`; `counted` when it is meant
    /// to get every comment.
    pub(crate) fn joined(&self, room: usize, counted: bool) {
        self.established.fetch_add(1, Relaxed);
        if counted {
            self.room_viewers[room].fetch_add(1, Relaxed);
        }
    }

    /// An established connection in room `room` is gone.
    pub(crate) fn left(&self, room: usize, counted: bool) {
        if counted {
            self.room_viewers[room].fetch_sub(1, Relaxed);
        }
    }

    /// Viewers connected per room right now.
    pub(crate) fn room_viewers(&self) -> Vec<u32> {
        self.room_viewers.iter().map(|v| v.load(Relaxed)).collect()
    }

    /// Takes the next post sequence number for a post in `room`, or `None`
    /// when the table is full.
    pub(crate) fn next_post(&self, room: usize) -> Option<u64> {
        let seq = self.next_seq.fetch_add(1, Relaxed);
        let i = usize::try_from(seq).ok()?;
        let (Some(state), Some(slot)) = (self.post_state.get(i), self.post_room.get(i)) else {
            self.posts_skipped.fetch_add(1, Relaxed);
            return None;
        };
        slot.store(room as u32, Relaxed);
        self.post_sent_us[i].store(crate::conn::unix_micros(), Relaxed);
        state.store(PostState::Sent as u8, Relaxed);
        self.posts_sent.fetch_add(1, Relaxed);
        Some(seq)
    }

    /// The gateway answered post `seq` with `ack` (`true`) or `reject`.
    /// Answers to posts we never sent count as foreign.
    pub(crate) fn answered(&self, seq: Option<u64>, acked: bool) {
        let counter = if acked {
            &self.posts_acked
        } else {
            &self.posts_rejected
        };
        counter.fetch_add(1, Relaxed);
        let state = seq
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|i| self.post_state.get(i));
        match state {
            Some(state) => state.store(
                if acked {
                    PostState::Acked
                } else {
                    PostState::Rejected
                } as u8,
                Relaxed,
            ),
            None => self.reason("answer to an unknown nonce"),
        }
    }

    /// When each post of [`Stats::posts`] was sent, Unix µs.
    pub(crate) fn sent_us(&self) -> Vec<u64> {
        let used = (self.next_seq.load(Relaxed) as usize).min(self.post_sent_us.len());
        self.post_sent_us[..used]
            .iter()
            .map(|t| t.load(Relaxed))
            .collect()
    }

    /// Sums of the hot counters.
    pub(crate) fn totals(&self) -> Totals {
        let threads = self.threads.lock();
        let mut t = Totals::default();
        for local in threads.iter() {
            t.frames += local.frames.load(Relaxed);
            t.bytes += local.bytes.load(Relaxed);
            t.wire_bytes += local.wire_bytes.load(Relaxed);
            t.deliveries += local.deliveries.load(Relaxed);
            t.foreign += local.foreign.load(Relaxed);
        }
        t
    }

    /// All latencies so far, in microseconds.
    pub(crate) fn histogram(&self) -> Histogram<u64> {
        let mut merged = new_histogram();
        for local in self.threads.lock().iter() {
            // Same bounds on both sides, so adding cannot fail.
            let _ = merged.add(&*local.hist.lock());
        }
        merged
    }

    /// Every post that was given a sequence number, with its room, state
    /// and how many deliveries of it were seen.
    pub(crate) fn posts(&self) -> Vec<PostRecord> {
        let used = (self.next_seq.load(Relaxed) as usize).min(self.post_state.len());
        let mut received = vec![0u32; used];
        for local in self.threads.lock().iter() {
            for (sum, count) in received.iter_mut().zip(local.per_post.iter()) {
                *sum += count.load(Relaxed);
            }
        }
        received
            .into_iter()
            .enumerate()
            .map(|(i, received)| PostRecord {
                room: self.post_room[i].load(Relaxed) as usize,
                state: PostState::from_u8(self.post_state[i].load(Relaxed)),
                received,
            })
            .collect()
    }
}

/// One post, for the final count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PostRecord {
    /// Index of its room.
    pub room: usize,
    /// What became of it.
    pub state: PostState,
    /// Deliveries seen, over all viewers.
    pub received: u32,
}

/// An empty latency histogram, in microseconds with 3 significant figures.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_are_counted_per_post_and_outsiders_are_foreign() {
        let stats = Stats::new(2, 4, 1_000);
        assert_eq!(stats.next_post(1), Some(0));
        assert_eq!(stats.next_post(0), Some(1));
        stats.frame(100, 5_000, |r| {
            r.delivery(2_000, 0, true);
            r.delivery(2_000, 0, true);
            r.delivery(3_000, 1, true);
            r.delivery(500, 1, true); // sent before the run began
            r.delivery(2_000, 9, true); // beyond the table
        });
        stats.answered(Some(0), true);
        stats.answered(Some(1), false);
        let t = stats.totals();
        assert_eq!((t.frames, t.bytes, t.deliveries, t.foreign), (1, 100, 3, 2));
        let posts = stats.posts();
        assert_eq!(
            posts,
            [
                PostRecord {
                    room: 1,
                    state: PostState::Acked,
                    received: 2
                },
                PostRecord {
                    room: 0,
                    state: PostState::Rejected,
                    received: 1
                },
            ]
        );
        let h = stats.histogram();
        assert_eq!(h.len(), 3);
        assert_eq!(h.max(), stats.histogram().max());
        assert!(h.value_at_quantile(1.0) >= 3_000);
    }

    #[test]
    fn a_full_post_table_skips_posts() {
        let stats = Stats::new(1, 1, 0);
        assert_eq!(stats.next_post(0), Some(0));
        assert_eq!(stats.next_post(0), None);
        assert_eq!(stats.posts_skipped.load(Relaxed), 1);
        assert_eq!(stats.posts_sent.load(Relaxed), 1);
    }

    #[test]
    fn counts_from_several_threads_add_up() {
        let stats = Arc::new(Stats::new(1, 2, 0));
        stats.next_post(0);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        stats.frame(10, 10, |r| r.delivery(5, 0, true));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(stats.totals().deliveries, 400);
        assert_eq!(stats.posts()[0].received, 400);
        assert_eq!(stats.histogram().len(), 400);
    }
}
