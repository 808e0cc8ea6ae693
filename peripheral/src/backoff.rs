//! Exponential backoff with jitter between handshake attempts (SPEC.md §6.4).
//!
//! The `n`-th consecutive failure waits a random time in `[d/2, d]` with
//! `d = min(max, initial · 2^(n-1))`: the wait grows quickly while a gateway
//! or its backend is down, and the jitter keeps a fleet that lost its gateway
//! at the same moment from reconnecting in lockstep.

use std::time::Duration;

use rand_core::Rng;

/// Settings of [`Backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The upper bound of the first wait.
    pub initial: Duration,
    /// The upper bound of any wait.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

/// Counts consecutive failures and says how long to wait before the next try.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    failures: u32,
}

impl Backoff {
    /// No failures yet.
    pub fn new(config: BackoffConfig) -> Self {
        Self {
            config,
            failures: 0,
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The upper bound of the wait after `failures` consecutive failures.
    pub fn ceiling(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        self.config
            .initial
            .checked_mul(factor)
            .unwrap_or(self.config.max)
            .min(self.config.max)
    }

    /// Records one more failure and returns how long to wait before retrying.
    pub fn next_delay<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ceiling = self.ceiling(self.failures);
        let ms = ceiling.as_millis().min(u64::MAX as u128) as u64;
        let half = ms / 2;
        let jitter = if ms > half {
            rng.next_u64() % (ms - half + 1)
        } else {
            0
        };
        Duration::from_millis(half + jitter)
    }

    /// Forgets the failures (after a session that held).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let mut rng = vouch_proto::testing::rng(1);
        let mut b = Backoff::new(BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        });
        let mut seen = Vec::new();
        for n in 1..=8u32 {
            let d = b.next_delay(&mut rng);
            let ceiling = Duration::from_millis((100u64 << (n - 1)).min(1000));
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "attempt {n}: {d:?} vs {ceiling:?}"
            );
            seen.push(d);
        }
        assert_eq!(b.failures(), 8);
        // Jitter: at the cap the waits are not all equal.
        assert!(seen[4..].windows(2).any(|w| w[0] != w[1]), "{seen:?}");
        b.reset();
        assert_eq!(b.failures(), 0);
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(100));
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let mut b = Backoff::new(BackoffConfig::default());
        b.failures = u32::MAX - 1;
        let d = b.next_delay(&mut vouch_proto::testing::rng(2));
        assert!(d <= BackoffConfig::default().max);
        assert_eq!(b.ceiling(u32::MAX), BackoffConfig::default().max);
    }
}
