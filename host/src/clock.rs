//! Where the host side's time comes from (SPEC.md §1.3). A peripheral has
//! the monotonic clock only; the gateway has both.
//!
//! Two clocks, never mixed:
//!
//! - [`Clock::now`] is monotonic: every deadline and duration (handshake
//!   deadlines, session lifetimes, idle timeouts, ticket expiry in memory)
//!   runs on it, so stepping the wall clock (NTP, an operator, a Raspberry Pi
//!   without a real-time clock catching up at boot) neither ends a session
//!   early nor extends one.
//! - [`Clock::wall`] is the wall clock: used only for what must survive a
//!   restart (a ticket's expiry in the state directory, converted when the
//!   file is written and when it is read back) and checked against the
//!   backend's authenticated `Date` before restored tickets are used (the
//!   gateway's `TicketBook::check_clock`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use vouch_proto::Timestamp;

/// A wall-clock time: milliseconds since the Unix epoch. Its own type so
/// that it cannot be mistaken for a monotonic [`Timestamp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WallTime(pub u64);

impl WallTime {
    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// From a [`SystemTime`]; the epoch for times before it.
    pub fn from_system(t: SystemTime) -> Self {
        Self(
            t.duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
        )
    }

    /// How far `self` is from `other`, in milliseconds, either way.
    pub fn distance(self, other: WallTime) -> u64 {
        self.0.abs_diff(other.0)
    }
}

/// The two clocks (see the module docs).
pub trait Clock: Send + Sync + 'static {
    /// Monotonic milliseconds: deadlines and durations. Never goes back and
    /// does not move when the wall clock is stepped.
    fn now(&self) -> Timestamp;
    /// The wall clock: only for what is kept across restarts.
    fn wall(&self) -> WallTime;
    /// How long from now until `t` on the monotonic clock (zero if past).
    fn until(&self, t: Timestamp) -> std::time::Duration {
        std::time::Duration::from_millis(t.as_millis().saturating_sub(self.now().as_millis()))
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
    fn wall(&self) -> WallTime {
        (**self).wall()
    }
}

/// The operating system's clocks: `now` from [`std::time::Instant`]
/// (`CLOCK_MONOTONIC` on Linux), counted from the first call in this
/// process; `wall` from [`SystemTime`]. The default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

fn process_epoch() -> std::time::Instant {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp(u64::try_from(process_epoch().elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn wall(&self) -> WallTime {
        WallTime::from_system(SystemTime::now())
    }
}

/// A wall time for test clocks that are not given one: 2026-01-01.
pub const DEFAULT_TEST_WALL: WallTime = WallTime(1_767_225_600_000);

/// Clocks on tokio's time, which tests and the simulator can pause and
/// advance: `now` counts milliseconds since creation, `wall` goes on from a
/// given wall time at the same pace, and [`step_wall`](Self::step_wall)
/// makes it jump as a stepped system clock does, while `now` does not.
/// Clones share the steps.
#[derive(Debug, Clone)]
pub struct TokioClock {
    start: tokio::time::Instant,
    /// Wall time at `start` plus every step, in ms.
    wall_at_start: Arc<AtomicI64>,
}

impl TokioClock {
    /// `now` at zero, `wall` at [`DEFAULT_TEST_WALL`].
    pub fn new() -> Self {
        Self::with_wall(DEFAULT_TEST_WALL)
    }

    /// `now` at zero, `wall` at `wall`: a gateway process started at that
    /// wall time (as after a restart, when the wall clock goes on and the
    /// monotonic one starts again).
    pub fn with_wall(wall: WallTime) -> Self {
        Self {
            start: tokio::time::Instant::now(),
            wall_at_start: Arc::new(AtomicI64::new(i64::try_from(wall.0).unwrap_or(i64::MAX))),
        }
    }

    /// Steps the wall clock by `delta_ms` (back if negative); `now` does
    /// not move.
    pub fn step_wall(&self, delta_ms: i64) {
        self.wall_at_start.fetch_add(delta_ms, Ordering::SeqCst);
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.elapsed_ms())
    }

    fn wall(&self) -> WallTime {
        let base = self.wall_at_start.load(Ordering::SeqCst);
        let ms = i64::try_from(self.elapsed_ms())
            .unwrap_or(i64::MAX)
            .saturating_add(base);
        WallTime(u64::try_from(ms).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wall_step_moves_wall_time_and_not_monotonic_time() {
        let c = TokioClock::with_wall(WallTime(1_000_000));
        let shared = c.clone();
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        assert_eq!((c.now(), c.wall()), (Timestamp(500), WallTime(1_000_500)));
        shared.step_wall(-600_000);
        assert_eq!((c.now(), c.wall()), (Timestamp(500), WallTime(400_500)));
        shared.step_wall(3_600_000);
        assert_eq!(c.now(), Timestamp(500));
        assert_eq!(c.wall(), WallTime(4_000_500));
    }

    #[test]
    fn the_system_clock_is_monotonic_and_its_wall_clock_is_unix_time() {
        let a = SystemClock.now();
        let b = SystemClock.now();
        assert!(b >= a);
        // After 2020-01-01.
        assert!(SystemClock.wall() > WallTime(1_577_836_800_000));
    }
}
