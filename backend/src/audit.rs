//! The audit log under floods, and its retention (SPEC.md §11.12).
//!
//! ## Repeated refusals are counted, not written one by one
//!
//! A refusal from the radio side costs an attacker nothing: one captured
//! hello replayed at BLE rates is refused thousands of times a second, and
//! radio-side failures rightly count against no gateway (SPEC.md §10.3), so
//! nothing throttles them. Writing a chained entry for each would grow the
//! database by gigabytes a day. So refusals go through a [`RefusalTally`]:
//!
//! - The first `audit.first_per_kind` (32) refusals of a kind (every field
//!   of their entry alike: action, outcome, reason, actor, claimed id or
//!   subject, gateway, detail) are written at once, one entry each, as
//!   before, so an operator sees them at once; 32 is more than the lockout
//!   threshold K (10), so the failures behind a lockout are all readable.
//! - The rest are counted in memory, with the time of the first and last.
//! - Every `audit.summary_interval_s` (and at a graceful shutdown,
//!   [`crate::AppState::flush_audit`]) each kind counted since is written as
//!   one ordinary chained entry: the same fields, with the detail
//!   `repeated=N first=T0 last=T1`. A kind with no refusal for a whole
//!   interval is forgotten, so its next refusals are written at once again.
//!
//! So a flood of one kind, at any rate, adds `first_per_kind` entries at its
//! start and one per interval while it lasts.
//!
//! Metrics, lockout counting and alerts see every refusal; only the rows are
//! merged. A crash (not a graceful stop) loses the counts of the current
//! interval, never the first refusal of a kind. At most
//! `audit.max_kinds` kinds are told apart per interval (anyone can seal a
//! hello claiming any id, so claimed ids are unbounded); beyond, a new kind is
//! counted with the same action, outcome, reason, actor and gateway but no
//! subject, and beyond twice that, per action, outcome and reason alone.
//!
//! What is aggregated: the refused vouches ([`crate::vouch`]) and the
//! refusals at the HTTP level ([`crate::routes`]: 400, 401, 403, 413, 415,
//! 429), which left no trace before.
//!
//! ## Retention
//!
//! [`prune_cutoff`] is the policy around [`Store::audit_prune`]: never prune
//! the entries a live vouch still needs. A gateway's attach report is judged
//! against the last vouch for that peripheral and gateway, read from the
//! audit log, for up to `max(session_s, resumption_s)` + 120 s
//! ([`crate::vouch`]); so the cutoff is at least the longest lifetime any
//! policy rule grants, plus that grace, before now.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::store::{NewAudit, Rfc3339, Store, StoreError};

/// Whether a refusal is written now or only counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// The first of its kind in this interval: write it.
    Write,
    /// Counted; it will be in the kind's summary entry.
    Counted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    /// Refusals counted and not yet in a summary.
    count: u64,
    /// The time of the first and the last of them.
    first_ms: i64,
    last_ms: i64,
    /// Refusals of this kind written one by one since it was last quiet.
    written: u32,
    /// Whether a refusal of this kind came since the last summary.
    active: bool,
}

impl Tally {
    const EMPTY: Tally = Tally {
        count: 0,
        first_ms: 0,
        last_ms: 0,
        written: 0,
        active: false,
    };

    fn bump(&mut self, now: i64) {
        self.active = true;
        if self.count == 0 {
            self.first_ms = now;
        }
        self.count = self.count.saturating_add(1);
        self.last_ms = self.last_ms.max(now);
    }

    fn merge(&mut self, other: &Tally) {
        if other.count == 0 {
            return;
        }
        self.active = true;
        if self.count == 0 {
            self.count = other.count;
            self.first_ms = other.first_ms;
            self.last_ms = other.last_ms;
            return;
        }
        self.count = self.count.saturating_add(other.count);
        self.first_ms = self.first_ms.min(other.first_ms);
        self.last_ms = self.last_ms.max(other.last_ms);
    }
}

/// Counts repeated refusals between summary entries (see the module doc).
#[derive(Debug)]
pub struct RefusalTally {
    kinds: Mutex<HashMap<NewAudit, Tally>>,
    max_kinds: usize,
    first_per_kind: u32,
}

impl RefusalTally {
    /// A tally that writes the first `first_per_kind` (at least 1) refusals
    /// of a kind one by one and tells at most `max_kinds` kinds apart per
    /// interval.
    pub fn new(max_kinds: usize, first_per_kind: u32) -> Self {
        Self {
            kinds: Mutex::new(HashMap::new()),
            max_kinds: max_kinds.max(1),
            first_per_kind: first_per_kind.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<NewAudit, Tally>> {
        // A panic while holding the lock leaves only counts behind: use them.
        self.kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits one refusal whose entry would be `entry`.
    pub fn admit(&self, entry: &NewAudit, now: i64) -> Admit {
        let mut kinds = self.lock();
        if let Some(t) = kinds.get_mut(entry) {
            if t.written < self.first_per_kind {
                t.written += 1;
                t.active = true;
                return Admit::Write;
            }
            t.bump(now);
            return Admit::Counted;
        }
        if kinds.len() < self.max_kinds {
            kinds.insert(
                entry.clone(),
                Tally {
                    written: 1,
                    active: true,
                    ..Tally::EMPTY
                },
            );
            return Admit::Write;
        }
        // Too many kinds in this interval: count it without its subject, and
        // beyond twice the bound, by action, outcome and reason alone.
        let mut coarse = entry.clone();
        coarse.peripheral = None;
        coarse.detail = "various subjects (more kinds than audit.max_kinds)".to_owned();
        if !kinds.contains_key(&coarse) && kinds.len() >= self.max_kinds.saturating_mul(2) {
            coarse.gateway = None;
            coarse.actor = "various".to_owned();
        }
        // Counted only: these are past the bound by definition.
        let t = kinds.entry(coarse).or_insert(Tally {
            written: self.first_per_kind,
            ..Tally::EMPTY
        });
        t.bump(now);
        Admit::Counted
    }

    /// Refusals counted and not yet written.
    pub fn pending(&self) -> u64 {
        self.lock().values().map(|t| t.count).sum()
    }

    /// Takes the counts to write; forgets the kinds that were quiet since the
    /// last summary.
    fn take(&self) -> Vec<(NewAudit, Tally)> {
        let mut kinds = self.lock();
        let mut out = Vec::new();
        kinds.retain(|kind, t| {
            if !t.active {
                return false;
            }
            if t.count > 0 {
                out.push((kind.clone(), *t));
            }
            *t = Tally {
                written: t.written,
                ..Tally::EMPTY
            };
            true
        });
        out
    }

    /// Puts counts back whose summary could not be written.
    fn restore(&self, taken: Vec<(NewAudit, Tally)>) {
        let mut kinds = self.lock();
        for (kind, t) in taken {
            kinds.entry(kind).or_insert(Tally::EMPTY).merge(&t);
        }
    }

    /// Writes one summary entry per kind counted since the last flush, in one
    /// write transaction; returns how many. On failure the counts are kept
    /// for the next flush.
    pub async fn flush(&self, store: &Store, now: i64) -> Result<usize, StoreError> {
        let mut taken = self.take();
        if taken.is_empty() {
            return Ok(0);
        }
        // A stable order, so the entries read well.
        taken.sort_by_key(|(_, t)| t.first_ms);
        let entries: Vec<NewAudit> = taken.iter().map(|(k, t)| summary(k, t)).collect();
        let write = async {
            let mut tx = store.begin_write().await?;
            tx.audit_many(&entries, now).await?;
            tx.commit().await
        };
        match write.await {
            Ok(_) => Ok(entries.len()),
            Err(e) => {
                self.restore(taken);
                Err(e)
            }
        }
    }
}

/// The summary entry of `t` refusals of `kind`.
fn summary(kind: &NewAudit, t: &Tally) -> NewAudit {
    let mut e = kind.clone();
    let counted = format!(
        "repeated={} first={} last={}",
        t.count,
        Rfc3339(t.first_ms),
        Rfc3339(t.last_ms)
    );
    e.detail = if kind.detail.is_empty() {
        counted
    } else {
        format!("{counted}; {}", kind.detail)
    };
    e
}

/// The cutoff of a prune of the entries older than `older_than_s` at `now`:
/// never later than the longest lifetime a policy grants, plus the grace of
/// an attach report, before now (see the module doc). Returns the cutoff and
/// whether it was moved back for that reason.
pub async fn prune_cutoff(
    store: &Store,
    older_than_s: u64,
    now: i64,
) -> Result<(i64, bool), StoreError> {
    let asked_ms = i64::try_from(older_than_s)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000);
    let floor_ms = store
        .longest_policy_lifetime_s()
        .await?
        .saturating_mul(1000)
        .saturating_add(crate::vouch::ATTACH_GRACE_MS);
    Ok((
        now.saturating_sub(asked_ms.max(floor_ms)),
        floor_ms > asked_ms,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(id: &str) -> NewAudit {
        NewAudit::new("vouch", "denied", "gateway:ab")
            .reason("replay")
            .gateway("ab")
            .peripheral(id)
    }

    fn counted(t: &Tally) -> (u64, i64, i64) {
        (t.count, t.first_ms, t.last_ms)
    }

    #[test]
    fn the_first_of_a_kind_is_written_and_the_rest_counted() {
        let t = RefusalTally::new(100, 1);
        assert_eq!(t.admit(&replay("01"), 1), Admit::Write);
        for now in 2..=10 {
            assert_eq!(t.admit(&replay("01"), now), Admit::Counted);
        }
        assert_eq!(t.admit(&replay("02"), 11), Admit::Write);
        assert_eq!(t.pending(), 9);
        let taken = t.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(counted(&taken[0].1), (9, 2, 10));
        assert!(summary(&taken[0].0, &taken[0].1)
            .detail
            .starts_with("repeated=9 first="));
        // Still counted in the next interval; a quiet kind is forgotten.
        assert_eq!(t.admit(&replay("01"), 12), Admit::Counted);
        t.take();
        t.take();
        assert_eq!(t.admit(&replay("01"), 13), Admit::Write);
    }

    #[test]
    fn the_first_few_of_a_kind_are_written_once_per_episode() {
        let t = RefusalTally::new(100, 3);
        for now in 1..=3 {
            assert_eq!(t.admit(&replay("01"), now), Admit::Write);
        }
        assert_eq!(t.admit(&replay("01"), 4), Admit::Counted);
        assert_eq!(t.take().len(), 1);
        // The flood goes on: no new burst of entries in the next interval.
        assert_eq!(t.admit(&replay("01"), 5), Admit::Counted);
        assert_eq!(t.take().len(), 1);
        // A kind written one by one in an interval, with nothing counted, is
        // still active: not forgotten, and no summary.
        let t = RefusalTally::new(100, 3);
        t.admit(&replay("02"), 1);
        assert!(t.take().is_empty());
        assert_eq!(t.admit(&replay("02"), 2), Admit::Write);
        assert_eq!(t.admit(&replay("02"), 3), Admit::Write);
        assert_eq!(t.admit(&replay("02"), 4), Admit::Counted);
        // Quiet for a whole interval: forgotten, the next burst is written.
        t.take();
        t.take();
        assert_eq!(t.admit(&replay("02"), 5), Admit::Write);
    }

    #[test]
    fn kinds_beyond_the_bound_are_counted_without_their_subject() {
        let t = RefusalTally::new(2, 1);
        assert_eq!(t.admit(&replay("01"), 1), Admit::Write);
        assert_eq!(t.admit(&replay("02"), 1), Admit::Write);
        for i in 3..50 {
            assert_eq!(t.admit(&replay(&format!("{i:02}")), 2), Admit::Counted);
        }
        assert!(t.lock().len() <= 4);
        let taken = t.take();
        let coarse: Vec<_> = taken
            .iter()
            .filter(|(k, _)| k.peripheral.is_none())
            .collect();
        assert_eq!(coarse.len(), 1);
        assert_eq!(coarse[0].1.count, 47);
    }

    #[test]
    fn counts_that_could_not_be_written_are_kept() {
        let t = RefusalTally::new(10, 1);
        t.admit(&replay("01"), 1);
        t.admit(&replay("01"), 2);
        let taken = t.take();
        t.admit(&replay("01"), 3);
        t.restore(taken);
        assert_eq!(t.pending(), 2);
    }
}
