//! What the gateway knows from the revocation feed (SPEC.md §10.5): which
//! peripherals are revoked or suspended, how many policy changes it
//! delivered, how far it has been applied, and whether it answers often
//! enough for resumption to go on (§11.5).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use tracing::{info, warn};
use vouch_proto::keys::PeripheralId;

/// The default of `limits.feed_silence_s` (SPEC.md §11.5): four hours
/// without an answer from the revocation feed, after which the gateway
/// stops resuming.
pub const DEFAULT_FEED_SILENCE: std::time::Duration = std::time::Duration::from_secs(4 * 3600);

/// Whether the revocation feed answers often enough for resumption to go on
/// (SPEC.md §11.5): a gateway that has heard nothing from the feed for the
/// limit cannot know of revocations made since, and stops resuming until
/// it hears again. Times are on tokio's clock: the monotonic clock
/// (`CLOCK_MONOTONIC`) in production, the paused clock in tests, as for
/// [`crate::clock::TokioClock`] and every timer of the gateway.
struct FeedSilence {
    /// The limit in ms; 0: never stop resuming.
    limit_ms: AtomicU64,
    /// When the feed last answered up to its end; `None` until the feed is
    /// followed ([`FeedState::followed`]): a table nobody feeds
    /// (tests, tools) never stops resuming.
    last_heard: Mutex<Option<tokio::time::Instant>>,
    /// Whether resumption is refused now (for the log: once each way).
    refusing: AtomicBool,
}

/// The revocation feed's state at this gateway.
pub struct FeedState {
    /// Peripherals the feed said are revoked or suspended: a handshake or a
    /// ticket restore that was in flight when the event arrived must not
    /// bring them back.
    revoked: Mutex<HashSet<PeripheralId>>,
    /// How many `PolicyChanged` events the feed delivered: a handshake that
    /// started under another count was judged under a policy that may have
    /// changed, and must not survive the change
    /// ([`SessionTable::policy_changed`](super::SessionTable::policy_changed)).
    policy_epoch: AtomicU64,
    /// The feed cursor up to which every event has been applied in this run.
    position: AtomicU64,
    /// How long the revocation feed may stay silent before resumption stops.
    silence: FeedSilence,
    /// Since when, and why, the feed's requests to the backend fail; `None`
    /// while the backend answers (`vouch-gateway status`).
    backend_down: Mutex<Option<(tokio::time::Instant, String)>>,
}

impl FeedState {
    /// The state of a feed applied up to `position`, never silent yet.
    pub fn new(position: u64) -> Self {
        Self {
            revoked: Mutex::new(HashSet::new()),
            policy_epoch: AtomicU64::new(0),
            position: AtomicU64::new(position),
            silence: FeedSilence {
                limit_ms: AtomicU64::new(DEFAULT_FEED_SILENCE.as_millis() as u64),
                last_heard: Mutex::new(None),
                refusing: AtomicBool::new(false),
            },
            backend_down: Mutex::new(None),
        }
    }

    /// A request of the feed to the backend failed with `error` (the first
    /// failure of a run of them dates the outage).
    pub fn backend_failed(&self, error: String) {
        let mut down = self.backend_down.lock().unwrap_or_else(|e| e.into_inner());
        let since = down
            .as_ref()
            .map_or_else(tokio::time::Instant::now, |d| d.0);
        *down = Some((since, error));
    }

    /// The backend answered the feed.
    pub fn backend_answered(&self) {
        *self.backend_down.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// For how long, and why, the backend has not been answering the feed;
    /// `None` while it answers.
    pub fn backend_down(&self) -> Option<(std::time::Duration, String)> {
        self.backend_down
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(since, e)| (since.elapsed(), e.clone()))
    }

    /// Counts a policy change; returns the new count.
    pub(super) fn next_policy_epoch(&self) -> u64 {
        self.policy_epoch.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Records that a peripheral was revoked or suspended (`true`) or
    /// reinstated (`false`).
    pub fn set_revoked(&self, peripheral: PeripheralId, revoked: bool) {
        let mut set = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        if revoked {
            set.insert(peripheral);
        } else {
            set.remove(&peripheral);
        }
    }

    /// How many policy changes the feed delivered so far: a handshake takes
    /// it when it starts, and its session must not survive if it changed
    /// by the time the session is registered.
    pub fn policy_epoch(&self) -> u64 {
        self.policy_epoch.load(Ordering::SeqCst)
    }

    /// Whether the feed said this peripheral is revoked or suspended.
    pub fn is_revoked(&self, peripheral: &PeripheralId) -> bool {
        self.revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(peripheral)
    }

    /// Every feed event up to `next` has been applied
    /// ([`revocation::follow`](crate::revocation::follow) calls this after
    /// each batch).
    pub fn set_position(&self, next: u64) {
        self.position.store(next, Ordering::SeqCst);
    }

    /// The feed cursor up to which every event has been applied: a test, or
    /// an operator, can tell from it that a change made in the backend has
    /// reached this gateway.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::SeqCst)
    }

    /// Sets how long the revocation feed may go without an answer before
    /// resumption stops (`limits.feed_silence_s`, SPEC.md §11.5); `None`:
    /// never (the tickets' `resumption_s` alone bounds resumption).
    pub fn set_silence_limit(&self, limit: Option<std::time::Duration>) {
        let ms = limit.map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        self.silence.limit_ms.store(ms, Ordering::SeqCst);
    }

    /// The revocation feed is followed from now on
    /// ([`revocation::follow`](crate::revocation::follow) calls this when it
    /// starts): its silence counts from here until its first answer.
    pub fn followed(&self) {
        let mut last = self.lock_heard();
        if last.is_none() {
            *last = Some(tokio::time::Instant::now());
        }
    }

    /// The revocation feed answered and every event it had up to the
    /// answer is applied: the gateway knows of every revocation made until
    /// then, and resumes again if it had stopped.
    pub fn heard(&self) {
        *self.lock_heard() = Some(tokio::time::Instant::now());
        if self.silence.refusing.swap(false, Ordering::SeqCst) {
            info!("revocation feed answered again: resumption resumes");
        }
    }

    /// Whether resumption is refused because the revocation feed has not
    /// answered for `limits.feed_silence_s` (SPEC.md §11.5): a revocation
    /// made meanwhile cannot reach this gateway, and a ticket of the revoked
    /// peripheral would otherwise go on resuming until its `resumption_s`
    /// ran out. Logs once when it starts refusing (and
    /// [`heard`](Self::heard) once when it stops).
    pub fn resumption_suspended(&self) -> bool {
        let limit = self.silence.limit_ms.load(Ordering::SeqCst);
        let Some(last) = *self.lock_heard() else {
            return false;
        };
        let silent_ms = u64::try_from(last.elapsed().as_millis()).unwrap_or(u64::MAX);
        let suspended = limit != 0 && silent_ms >= limit;
        if suspended && !self.silence.refusing.swap(true, Ordering::SeqCst) {
            warn!(
                silent_s = silent_ms / 1000,
                limit_s = limit / 1000,
                "the revocation feed has not answered for longer than limits.feed_silence_s: resumption refused until it answers (peripherals run full handshakes, which need the backend)"
            );
        }
        suspended
    }

    /// The limit set by [`set_silence_limit`](Self::set_silence_limit).
    pub fn silence_limit(&self) -> Option<std::time::Duration> {
        match self.silence.limit_ms.load(Ordering::SeqCst) {
            0 => None,
            ms => Some(std::time::Duration::from_millis(ms)),
        }
    }

    /// How long since the revocation feed last answered, if it is followed.
    pub fn silent_for(&self) -> Option<std::time::Duration> {
        self.lock_heard().map(|t| t.elapsed())
    }

    fn lock_heard(&self) -> std::sync::MutexGuard<'_, Option<tokio::time::Instant>> {
        self.silence
            .last_heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}
