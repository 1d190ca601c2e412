//! Windowed per-group statistics: a ring of per-second buckets (the last 600 s), each counting
//! requests, errors and a log-spaced latency histogram.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{GroupStats, lock};

/// How far back statistics go.
const RING_SECS: u64 = 600;

/// Upper bounds of the latency buckets, in milliseconds; one more bucket holds the rest.
const BOUNDS_MS: [u64; 28] = [
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 1_500, 2_000,
    3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000, 60_000,
];
const BUCKETS: usize = BOUNDS_MS.len() + 1;

struct Second {
    sec: u64,
    requests: u64,
    errors: u64,
    latency: [u32; BUCKETS],
}

pub(super) struct Stats {
    epoch: Instant,
    /// Per group, the seconds that saw traffic, oldest first.
    groups: Mutex<HashMap<String, VecDeque<Second>>>,
}

impl Stats {
    pub(super) fn new() -> Self {
        Stats {
            epoch: Instant::now(),
            groups: Mutex::new(HashMap::new()),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    /// Counts one response of `group`.
    pub(super) fn record(&self, group: &str, error: bool, latency: Duration) {
        let bucket = BOUNDS_MS
            .iter()
            .position(|&bound| latency <= Duration::from_millis(bound))
            .unwrap_or(BOUNDS_MS.len());
        let mut groups = lock(&self.groups);
        // Read the clock under the lock so that seconds are pushed in order.
        let sec = self.now();
        let ring = match groups.get_mut(group) {
            Some(ring) => ring,
            None => groups.entry(group.to_owned()).or_default(),
        };
        while ring.front().is_some_and(|s| s.sec + RING_SECS <= sec) {
            ring.pop_front();
        }
        let current = match ring.back_mut() {
            Some(s) if s.sec == sec => s,
            _ => {
                ring.push_back(Second {
                    sec,
                    requests: 0,
                    errors: 0,
                    latency: [0; BUCKETS],
                });
                ring.back_mut().expect("just pushed")
            }
        };
        current.requests += 1;
        current.errors += u64::from(error);
        current.latency[bucket] += 1;
    }

    /// Sums the seconds of `group` within `window` (rounded up to whole seconds, at most 600).
    pub(super) fn snapshot(&self, group: &str, window: Duration) -> GroupStats {
        let window_secs =
            (window.as_secs() + u64::from(window.subsec_nanos() > 0)).clamp(1, RING_SECS);
        let groups = lock(&self.groups);
        let now = self.now();
        let Some(ring) = groups.get(group) else {
            return GroupStats::default();
        };
        let mut stats = GroupStats::default();
        let mut latency = [0u64; BUCKETS];
        for second in ring.iter().rev().take_while(|s| now - s.sec < window_secs) {
            stats.requests += second.requests;
            stats.errors += second.errors;
            for (sum, count) in latency.iter_mut().zip(second.latency) {
                *sum += u64::from(count);
            }
        }
        drop(groups);
        stats.latency_p50 = percentile(&latency, stats.requests, 50);
        stats.latency_p99 = percentile(&latency, stats.requests, 99);
        stats
    }

    /// Forgets groups without traffic in the last 600 s.
    pub(super) fn prune(&self) {
        let mut groups = lock(&self.groups);
        let now = self.now();
        groups.retain(|_, ring| ring.back().is_some_and(|s| s.sec + RING_SECS > now));
    }
}

/// The upper bound of the bucket holding the `percent`th percentile.
fn percentile(histogram: &[u64; BUCKETS], total: u64, percent: u64) -> Option<Duration> {
    if total == 0 {
        return None;
    }
    let rank = (total * percent).div_ceil(100).max(1);
    let mut cumulative = 0;
    for (index, count) in histogram.iter().enumerate() {
        cumulative += count;
        if cumulative >= rank {
            let bound = BOUNDS_MS.get(index).or(BOUNDS_MS.last()).copied();
            return bound.map(Duration::from_millis);
        }
    }
    None
}
