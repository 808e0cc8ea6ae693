//! Trust-anchor updates (SPEC.md §7.7, §10.6): the gateway fetches the
//! signed updates the backend issues when it rotates its keys, keeps them,
//! and delivers every one to every peripheral after each handshake (the
//! drivers do that: [`crate::driver`]).
//!
//! - [`AnchorUpdates`] holds the updates in serial order, in memory and, with
//!   a state directory, in its `anchor-updates` file
//!   ([`crate::state`]), so a restarted gateway delivers them at once and
//!   asks only for newer ones.
//! - [`fetch`] asks the backend for the updates after the last serial held,
//!   page after page while the backend's `latest` is above what it got, and
//!   drops the updates above `latest` when `latest` is below what it holds
//!   (an instance that does not serve the newest key yet, or a backend
//!   restored from a backup).
//! - [`follow`] fetches at start, then every `interval` (an hour by default)
//!   and whenever [`AnchorUpdates::request_fetch`] asks; after a failure it
//!   retries sooner, with backoff.
//!
//! The gateway cannot check the updates (it does not hold the anchors; the
//! peripheral verifies each signature and refuses stale serials, SPEC.md
//! §7.7), only that the backend's answer is consistent: serials above the
//! one asked for, strictly increasing, none above `latest`, at most
//! [`MAX_ANCHOR_UPDATES`] per answer. It keeps at most
//! [`MAX_HELD_ANCHOR_UPDATES`] (a backend issues a few hundred in its whole
//! life: each adds or retires one of 256 key ids) and refuses newer ones
//! beyond that, with an error in the log.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tracing::{debug, error, info, warn};
use vouch_proto::anchor::AnchorUpdate;
use vouch_proto::wire::backend::{AnchorUpdateBatch, MAX_ANCHOR_UPDATES};

use crate::backend_client::{BackendApi, BackendError};
use crate::metrics::Metrics;
use crate::state::anchors::{in_serial_order, load, save, Saved};
use crate::state::StateDir;

pub use crate::state::anchors::MAX_HELD_ANCHOR_UPDATES;

/// How often [`follow`] fetches when nothing asks sooner: SPEC.md §10.6 says
/// at least once an hour.
pub const DEFAULT_FETCH_INTERVAL: Duration = Duration::from_secs(3600);

/// The first wait after a failed fetch; it doubles up to [`MAX_RETRY`] (and
/// never beyond the fetch interval).
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait after failed fetches.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// Why a fetch failed. What earlier pages of the same fetch brought is kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The backend could not be reached or refused the request.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The backend's answer contradicts SPEC.md §10.6; nothing of it was
    /// taken.
    #[error("inconsistent anchor-update answer: {0}")]
    BadAnswer(String),
}

/// What one [`fetch`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Requests made (pages).
    pub pages: usize,
    /// Updates added.
    pub added: usize,
    /// Updates dropped because the backend's `latest` was below them.
    pub dropped: usize,
    /// Updates refused because [`MAX_HELD_ANCHOR_UPDATES`] are held.
    pub refused: usize,
    /// The backend's `latest` in its last answer.
    pub latest: u32,
}

/// The trust-anchor updates a gateway holds, in serial order. Cheap to clone
/// (clones share them).
#[derive(Clone)]
pub struct AnchorUpdates {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where they are saved, and for which backend; `None`: memory only.
    saved: Option<(StateDir, String)>,
    /// `None` while none is held, so that a session costs nothing extra.
    held: Mutex<Option<Arc<[AnchorUpdate]>>>,
    /// [`AnchorUpdates::request_fetch`] wakes [`follow`].
    fetch_requested: Notify,
    /// One [`fetch`] at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AnchorUpdates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnchorUpdates")
            .field("held", &self.len())
            .field("last_serial", &self.last_serial())
            .field("persistent", &self.inner.saved.is_some())
            .finish()
    }
}

impl AnchorUpdates {
    /// Updates kept in memory only (tests, the simulator, a gateway without
    /// a state directory): a restart fetches them again.
    pub fn in_memory() -> Self {
        Self::with(None, Vec::new())
    }

    /// Updates kept in `state` for the backend at `backend_url`: loads the
    /// saved ones. A missing file is none held; a damaged or invalid one is
    /// logged and ignored (replaced at the next save), as is one saved for
    /// another backend. Never fails: what is not on disk is fetched again.
    pub fn open(state: &StateDir, backend_url: &str) -> Self {
        let path = state.anchors_path();
        let updates = match load(state, backend_url) {
            Ok(Saved::Updates(u)) => {
                info!(file = %path.display(), held = u.len(),
                    serial = u.last().map_or(0, |u| u.serial),
                    "trust-anchor updates restored; delivered to peripherals after each handshake");
                u
            }
            Ok(Saved::None) => Vec::new(),
            Ok(Saved::OtherBackend(url)) => {
                info!(file = %path.display(), saved_for = %url,
                    "trust-anchor updates saved for another backend ignored; fetching this backend's");
                Vec::new()
            }
            Err(e) => {
                warn!(file = %path.display(), reason = %e,
                    "unreadable trust-anchor update file skipped; the updates are fetched again");
                Vec::new()
            }
        };
        Self::with(Some((state.clone(), backend_url.to_string())), updates)
    }

    fn with(saved: Option<(StateDir, String)>, updates: Vec<AnchorUpdate>) -> Self {
        Self {
            inner: Arc::new(Inner {
                saved,
                held: Mutex::new(shared(updates)),
                fetch_requested: Notify::new(),
                fetching: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Arc<[AnchorUpdate]>>> {
        self.inner.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The updates held, in serial order; `None` when there are none. What a
    /// driver delivers after a handshake: later fetches do not change it.
    pub fn snapshot(&self) -> Option<Arc<[AnchorUpdate]>> {
        self.held().clone()
    }

    /// How many updates are held.
    pub fn len(&self) -> usize {
        self.held().as_ref().map_or(0, |u| u.len())
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The serial of the last update held (0 if none): the next fetch asks
    /// for the updates after it.
    pub fn last_serial(&self) -> u32 {
        self.held()
            .as_ref()
            .and_then(|u| u.last())
            .map_or(0, |u| u.serial)
    }

    /// Whether the updates are kept in a state directory.
    pub fn is_persistent(&self) -> bool {
        self.inner.saved.is_some()
    }

    /// Asks [`follow`] to fetch now rather than at its next interval (for
    /// example right after an operator rotated the backend's keys).
    pub fn request_fetch(&self) {
        self.inner.fetch_requested.notify_one();
    }

    /// Replaces the held updates and saves them (with a state directory).
    /// A failed save is logged: the updates stay held in memory, and a
    /// restart fetches them again.
    async fn replace(&self, updates: Vec<AnchorUpdate>) {
        if let Some((dir, url)) = &self.inner.saved {
            let (dir, url, copy) = (dir.clone(), url.clone(), updates.clone());
            let path = dir.anchors_path();
            let saved = tokio::task::spawn_blocking(move || save(&dir, &url, &copy))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if let Err(e) = saved {
                warn!(file = %path.display(), error = %e,
                    "cannot save the trust-anchor updates; they are still delivered, and fetched again after a restart");
            }
        }
        *self.held() = shared(updates);
    }
}

fn shared(updates: Vec<AnchorUpdate>) -> Option<Arc<[AnchorUpdate]>> {
    (!updates.is_empty()).then(|| updates.into())
}

/// What one answer changes in the held updates.
#[derive(Debug, Default)]
struct Merge {
    /// The updates to hold from now on; `None`: unchanged.
    next: Option<Vec<AnchorUpdate>>,
    added: usize,
    dropped: usize,
    refused: usize,
    /// Whether the backend has more after what was added.
    more: bool,
}

/// Takes the answer to a fetch after `after` (the last serial of `held`).
fn merge(
    held: &[AnchorUpdate],
    after: u32,
    batch: &AnchorUpdateBatch,
) -> Result<Merge, FetchError> {
    let bad = |why: String| Err(FetchError::BadAnswer(why));
    if batch.updates.len() > MAX_ANCHOR_UPDATES {
        return bad(format!(
            "{} updates in one answer (at most {MAX_ANCHOR_UPDATES})",
            batch.updates.len()
        ));
    }
    if !in_serial_order(after, &batch.updates) {
        return bad(format!(
            "asked for the updates after serial {after}, got serials that are not above it in increasing order"
        ));
    }
    if let Some(last) = batch.updates.last().filter(|u| u.serial > batch.latest) {
        return bad(format!(
            "update {} is above the latest serial announced, {}",
            last.serial, batch.latest
        ));
    }
    let last_held = held.last().map_or(0, |u| u.serial);
    if batch.latest < last_held {
        // SPEC.md §10.6: an instance that does not serve the newest key yet,
        // or a backend restored from a backup.
        let keep: Vec<AnchorUpdate> = held
            .iter()
            .copied()
            .filter(|u| u.serial <= batch.latest)
            .collect();
        return Ok(Merge {
            dropped: held.len() - keep.len(),
            next: Some(keep),
            ..Merge::default()
        });
    }
    if batch.updates.is_empty() {
        if batch.latest > last_held {
            return bad(format!(
                "latest serial {} announced, but no update after {after} sent",
                batch.latest
            ));
        }
        return Ok(Merge::default());
    }
    let room = MAX_HELD_ANCHOR_UPDATES.saturating_sub(held.len());
    let take = room.min(batch.updates.len());
    let refused = batch.updates.len() - take;
    if take == 0 {
        return Ok(Merge {
            refused,
            ..Merge::default()
        });
    }
    let mut next = Vec::with_capacity(held.len() + take);
    next.extend_from_slice(held);
    next.extend_from_slice(&batch.updates[..take]);
    let now_last = next.last().map_or(0, |u| u.serial);
    Ok(Merge {
        next: Some(next),
        added: take,
        dropped: 0,
        refused,
        more: refused == 0 && batch.latest > now_last,
    })
}

/// Fetches the updates after the last one held, page after page, and keeps
/// them (SPEC.md §10.6). One fetch runs at a time; a second call waits for
/// the first.
pub async fn fetch<B: BackendApi>(
    backend: &B,
    updates: &AnchorUpdates,
) -> Result<Fetched, FetchError> {
    let _one = updates.inner.fetching.lock().await;
    let mut report = Fetched::default();
    loop {
        let held = updates.snapshot();
        let held: &[AnchorUpdate] = held.as_deref().unwrap_or(&[]);
        let after = held.last().map_or(0, |u| u.serial);
        let batch = backend.anchor_updates(after).await?;
        report.pages += 1;
        report.latest = batch.latest;
        let m = merge(held, after, &batch)?;
        report.added += m.added;
        report.dropped += m.dropped;
        report.refused += m.refused;
        if m.dropped > 0 {
            warn!(latest = batch.latest, held_up_to = after, dropped = m.dropped,
                "the backend's latest trust-anchor update is below what this gateway holds \
                 (an instance without the newest key yet, or a restored backend): the updates above it are dropped");
        }
        if m.refused > 0 {
            error!(held = held.len(), max = MAX_HELD_ANCHOR_UPDATES, after = held.last().map_or(0, |u| u.serial),
                refused = m.refused,
                "this gateway holds the most trust-anchor updates it keeps: newer ones are refused \
                 and not delivered (a backend issues a few hundred in its life; check the backend's key ring)");
        }
        if let Some(next) = m.next {
            updates.replace(next).await;
        }
        if !m.more {
            break;
        }
    }
    if report.added > 0 {
        info!(
            added = report.added,
            held = updates.len(),
            serial = updates.last_serial(),
            "trust-anchor updates fetched: delivered to every peripheral after its next handshake"
        );
    } else {
        debug!(
            held = updates.len(),
            latest = report.latest,
            "no new trust-anchor update"
        );
    }
    Ok(report)
}

/// Fetches at start, then every `interval` (at least a second) and whenever
/// [`AnchorUpdates::request_fetch`] asks, until `shutdown`. After a failure it
/// retries after 1 s, doubling up to 5 minutes, never later than `interval`.
/// Stops for good if the backend does not offer anchor updates at all
/// ([`BackendError::Unsupported`]).
pub async fn follow<B: BackendApi>(
    backend: B,
    updates: AnchorUpdates,
    interval: Duration,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = interval.max(Duration::from_secs(1));
    let mut retry = crate::retry::Retry::new(FIRST_RETRY, MAX_RETRY);
    metrics.anchor_updates_held(updates.len(), updates.last_serial());
    loop {
        let result = tokio::select! {
            r = fetch(&backend, &updates) => r,
            _ = shutdown.changed() => return,
        };
        metrics.anchor_updates_held(updates.len(), updates.last_serial());
        let wait = match result {
            Ok(_) => {
                if retry.succeeded() > 0 {
                    info!(
                        held = updates.len(),
                        "trust-anchor updates: the backend answers again"
                    );
                }
                interval
            }
            Err(FetchError::Backend(BackendError::Unsupported(what))) => {
                info!("this backend offers no {what}: not fetching them");
                return;
            }
            Err(e) => {
                metrics.anchor_update_fetch_failed();
                let wait = retry.next_delay().min(interval);
                warn!(error = %e, retry_in_ms = wait.as_millis() as u64, held = updates.len(),
                    "trust-anchor updates could not be fetched; those held are still delivered");
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = updates.inner.fetch_requested.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vouch_proto::anchor::AnchorAction;
    use vouch_proto::keys::{IdentityKey, KeyId};

    /// An update with `serial` (the signature is another serial's: the
    /// gateway never checks it, the peripheral does).
    fn update(serial: u32) -> AnchorUpdate {
        let key = IdentityKey::from_seed(&[9; 32]);
        let template = AnchorUpdate::sign(1, AnchorAction::Retire(KeyId(1)), KeyId(2), &key);
        AnchorUpdate { serial, ..template }
    }

    fn updates(serials: impl IntoIterator<Item = u32>) -> Vec<AnchorUpdate> {
        serials.into_iter().map(update).collect()
    }

    fn serials(u: &[AnchorUpdate]) -> Vec<u32> {
        u.iter().map(|u| u.serial).collect()
    }

    fn batch(s: impl IntoIterator<Item = u32>, latest: u32) -> AnchorUpdateBatch {
        AnchorUpdateBatch {
            updates: updates(s),
            latest,
        }
    }

    #[test]
    fn answers_are_appended_and_paging_follows_latest() {
        let m = merge(&[], 0, &batch(1..=2, 5)).unwrap();
        assert_eq!(serials(m.next.as_deref().unwrap()), [1, 2]);
        assert_eq!((m.added, m.more), (2, true));
        let held = updates(1..=2);
        let m = merge(&held, 2, &batch(3..=5, 5)).unwrap();
        assert_eq!(serials(m.next.as_deref().unwrap()), [1, 2, 3, 4, 5]);
        assert!(!m.more);
        // Nothing new: unchanged.
        let m = merge(&held, 2, &batch([], 2)).unwrap();
        assert!(m.next.is_none() && !m.more);
    }

    #[test]
    fn a_latest_below_what_is_held_drops_the_excess() {
        let held = updates(1..=4);
        let m = merge(&held, 4, &batch([], 2)).unwrap();
        assert_eq!(serials(m.next.as_deref().unwrap()), [1, 2]);
        assert_eq!(m.dropped, 2);
        let m = merge(&held, 4, &batch([], 0)).unwrap();
        assert!(m.next.unwrap().is_empty());
    }

    #[test]
    fn inconsistent_answers_are_refused_whole() {
        let held = updates(1..=2);
        for (b, why) in [
            (batch([2, 3], 3), "a serial already held"),
            (batch([4, 3], 4), "out of order"),
            (batch([3, 3], 3), "repeated"),
            (batch([3, 4], 3), "above latest"),
            (batch([], 7), "latest announced, nothing sent"),
            (batch(3..=(3 + MAX_ANCHOR_UPDATES as u32), 100), "too many"),
        ] {
            assert!(
                matches!(merge(&held, 2, &b), Err(FetchError::BadAnswer(_))),
                "{why}"
            );
        }
    }

    #[test]
    fn no_more_than_the_bound_is_held() {
        let held = updates(1..=(MAX_HELD_ANCHOR_UPDATES as u32 - 1));
        let last = held.len() as u32;
        let m = merge(&held, last, &batch((last + 1)..=(last + 3), last + 10)).unwrap();
        assert_eq!(m.next.unwrap().len(), MAX_HELD_ANCHOR_UPDATES);
        assert_eq!((m.added, m.refused, m.more), (1, 2, false));
        let full = updates(1..=(MAX_HELD_ANCHOR_UPDATES as u32));
        let last = full.len() as u32;
        let m = merge(&full, last, &batch([last + 1], last + 1)).unwrap();
        assert!(m.next.is_none());
        assert_eq!((m.added, m.refused, m.more), (0, 1, false));
    }
}
