//! Where the gateway's [`Timestamp`]s come from.

use std::time::{SystemTime, UNIX_EPOCH};

use vouch_proto::Timestamp;

/// A source of time for the protocol machines.
pub trait Clock: Send + Sync + 'static {
    /// Now, in milliseconds.
    fn now(&self) -> Timestamp;
}

/// Wall-clock milliseconds since the Unix epoch: tickets then stay meaningful
/// across a restart. The default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Timestamp(ms)
    }
}

/// Milliseconds since creation on tokio's clock, which tests and the simulator
/// can pause and advance.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: tokio::time::Instant,
    offset: u64,
}

impl TokioClock {
    /// Starts at zero now.
    pub fn new() -> Self {
        Self::starting_at(Timestamp(0))
    }

    /// Starts at `at` now: a clock that goes on from another one, as the wall
    /// clock does across a gateway restart.
    pub fn starting_at(at: Timestamp) -> Self {
        Self {
            start: tokio::time::Instant::now(),
            offset: at.as_millis(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.offset + self.start.elapsed().as_millis() as u64)
    }
}
