//! [`Now`]: the two clocks the sans-IO parts of the control plane are handed with every input.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Monotonic time for timers, wall-clock time for nonces and registrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time.
    pub instant: Instant,
    /// Wall-clock time.
    pub wall: SystemTime,
}

impl Now {
    /// The current time (drivers only).
    pub fn system() -> Self {
        Now { instant: Instant::now(), wall: SystemTime::now() }
    }

    /// UNIX seconds.
    pub fn unix(&self) -> u64 {
        self.wall.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }

    /// UNIX milliseconds.
    pub fn unix_ms(&self) -> u64 {
        self.wall.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }

    /// This time advanced by `d` on both clocks.
    pub fn plus(&self, d: Duration) -> Self {
        Now { instant: self.instant + d, wall: self.wall + d }
    }
}
