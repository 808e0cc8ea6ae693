//! The delays between attempts of everything the gateway retries against
//! the backend (the revocation feed, trust-anchor updates, certificate
//! renewal, session reports): exponential, capped, and jittered, from the
//! `backon` crate, so that the gateways of a fleet that lost their backend
//! together do not all come back in lockstep.
//!
//! Each delay is the exponential step plus a random part of up to the step
//! itself (backon's jitter): the first retry of a 250 ms schedule waits
//! 250–500 ms, the next 500 ms–1 s, and so on up to the cap.
//!
//! ```
//! use std::time::Duration;
//! use vouch_gateway::retry::Retry;
//! let mut r = Retry::new(Duration::from_millis(250), Duration::from_secs(10));
//! let first = r.next_delay();
//! assert!(first >= Duration::from_millis(250) && first < Duration::from_millis(500));
//! r.succeeded(); // back to the first step
//! ```

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// A retry schedule: [`next_delay`](Self::next_delay) after each failure,
/// [`succeeded`](Self::succeeded) after a success.
#[derive(Debug)]
pub struct Retry {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
    failures: u32,
}

impl Retry {
    /// Delays from `first` (plus jitter), doubling up to `max` (plus
    /// jitter, never more than twice `max`), forever.
    pub fn new(first: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::new()
            .with_min_delay(first)
            .with_max_delay(max.max(first))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
            max: max.max(first),
            failures: 0,
        }
    }

    /// The wait before the next attempt, after a failure.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        // Without a limit on the number of attempts the schedule never ends;
        // the cap is the fallback all the same.
        self.delays.next().unwrap_or(self.max)
    }

    /// The attempts that failed since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Back to the first step; returns how many attempts had failed.
    pub fn succeeded(&mut self) -> u32 {
        self.delays = self.builder.build();
        std::mem::take(&mut self.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_and_start_over_after_a_success() {
        let ms = Duration::from_millis;
        let mut r = Retry::new(ms(250), ms(2000));
        let delays: Vec<Duration> = (0..8).map(|_| r.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let step = ms(250 * (1 << i.min(3)));
            assert!(*d >= step && *d <= step * 2, "delay {i}: {d:?}");
        }
        assert_eq!(r.failures(), 8);
        assert_eq!(r.succeeded(), 8);
        assert!(r.next_delay() < ms(500));
        // Jitter: a hundred schedules do not all wait the same.
        let firsts: std::collections::BTreeSet<Duration> = (0..100)
            .map(|_| Retry::new(ms(250), ms(2000)).next_delay())
            .collect();
        assert!(firsts.len() > 10, "{firsts:?}");
    }
}
