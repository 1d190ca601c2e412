//! A clock driven by tokio's time, so tests on a paused runtime control it.

use deploykit_core::{Clock, Timestamp};
use tokio::time::Instant;

/// Wall-clock time that advances with tokio's clock: on a runtime started with
/// `start_paused = true`, a ten-minute rollout takes milliseconds of real time and every run
/// sees the same timestamps.
///
/// It starts at 2026-01-01T00:00:00Z so timelines read the same on every run.
#[derive(Clone, Copy, Debug)]
pub struct SimClock {
    base: Timestamp,
    start: Instant,
}

/// 2026-01-01T00:00:00Z.
const EPOCH_2026: u64 = 1_767_225_600_000;

impl SimClock {
    /// A clock reading 2026-01-01T00:00:00Z now. Call it inside the tokio runtime whose time it
    /// should follow.
    pub fn new() -> Self {
        SimClock {
            base: Timestamp::from_millis(EPOCH_2026),
            start: Instant::now(),
        }
    }

    /// When this clock started.
    pub fn start(&self) -> Timestamp {
        self.base
    }
}

impl Default for SimClock {
    fn default() -> Self {
        SimClock::new()
    }
}

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        self.base.plus(self.start.elapsed())
    }
}
