//! The revocation feed's event log: one row per change a gateway must apply, in commit order.

use sqlx::Row;

use super::{Grant, Store, StoreError, WriteTx, MAX_PAGE};
use crate::model::Transition;

/// One entry of the revocation event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Sequence number, strictly increasing in commit order.
    pub seq: i64,
    /// When written (ms since the Unix epoch).
    pub at_ms: i64,
    /// Event kind (`peripheral_revoked`, …).
    pub kind: String,
    /// Peripheral id or gateway key, hex.
    pub subject: String,
}

impl EventRow {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, StoreError> {
        Ok(EventRow {
            seq: r.try_get("seq")?,
            at_ms: r.try_get("at_ms")?,
            kind: r.try_get("kind")?,
            subject: r.try_get("subject")?,
        })
    }
}

/// The registry changes committed after some point of the event log, as a
/// vouch's commit checks them (SPEC.md §5.3 step 8): by subject, the
/// newest status event of each peripheral and gateway, and the newest
/// policy change.
#[derive(Debug, Default)]
pub(crate) struct RegistryChanges {
    peripherals: std::collections::HashMap<String, i64>,
    gateways: std::collections::HashMap<String, i64>,
    policy: Option<i64>,
    /// More events than one read takes: every decision counts as overtaken.
    overflow: bool,
}

impl RegistryChanges {
    /// Whether a vouch for `grant`, decided on reads that began at the log's
    /// `since`, is overtaken by a change after it: its peripheral's or its
    /// gateway's status, or a policy rule removed.
    pub(crate) fn overtake(&self, grant: &Grant, since: i64) -> bool {
        let after = |seq: Option<&i64>| seq.is_some_and(|&s| s > since);
        self.overflow
            || self.policy.is_some_and(|s| s > since)
            || after(self.peripherals.get(&grant.peripheral.to_string()))
            || after(self.gateways.get(&grant.gateway.to_string()))
    }
}

/// The feed event a transition produces, if any.
pub(super) fn event_kind(subject: &str, t: Transition) -> Option<String> {
    match t {
        Transition::Activate => None,
        Transition::Suspend => Some(format!("{subject}_suspended")),
        Transition::Reinstate => Some(format!("{subject}_reinstated")),
        Transition::Revoke => Some(format!("{subject}_revoked")),
    }
}

impl Store {
    /// Events after `seq`, oldest first.
    pub async fn events_after(&self, seq: i64, limit: u32) -> Result<Vec<EventRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, kind, subject FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(seq)
        .bind(i64::from(limit.clamp(1, MAX_PAGE)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(EventRow::from_row).collect()
    }

    /// The highest event sequence number (0 if none).
    pub async fn last_event_seq(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT MAX(seq) AS m FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("m")?.unwrap_or(0))
    }
}

/// The PostgreSQL channel a write transaction that appended revocation-feed
/// events notifies on commit, so that every instance wakes its waiting polls
/// at once instead of at its next poll of the log ([`crate::feed`]).
pub const FEED_CHANNEL: &str = "vouch_feed";

/// The notification: no payload (the listener reads the log's head, which
/// stays the truth).
pub(super) const NOTIFY_FEED: &str = "SELECT pg_notify('vouch_feed', '')";

/// A PostgreSQL connection LISTENing on [`FEED_CHANNEL`].
pub struct FeedListener {
    inner: sqlx::postgres::PgListener,
}

impl std::fmt::Debug for FeedListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedListener").finish_non_exhaustive()
    }
}

impl FeedListener {
    /// Waits for the next notification. A lost connection is reconnected
    /// here (notifications sent meanwhile are lost: the caller's poll of the
    /// log covers them); an error means it could not be.
    pub async fn next(&mut self) -> Result<(), StoreError> {
        self.inner.recv().await?;
        Ok(())
    }
}

impl Store {
    /// PostgreSQL: a connection listening for the feed's notifications;
    /// `None` on SQLite, where every writer is in this process or is the CLI
    /// (whose writes the poll of the log picks up).
    pub async fn feed_listener(&self) -> Result<Option<FeedListener>, StoreError> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let mut inner = sqlx::postgres::PgListener::connect(&url.0).await?;
        inner.listen(FEED_CHANNEL).await?;
        Ok(Some(FeedListener { inner }))
    }
}

impl WriteTx<'_> {
    /// The registry changes after the log's `since`, as this transaction
    /// sees the log (under the write lock: every event committed before
    /// it). No statement when the log has not moved past `since` since the
    /// lock was taken, the usual case.
    pub(crate) async fn registry_changes(
        &mut self,
        since: i64,
    ) -> Result<RegistryChanges, StoreError> {
        /// Events one check reads; past it, everything counts as changed.
        const MOST: i64 = 4_096;
        let mut changes = RegistryChanges::default();
        if self.event_head <= since {
            return Ok(changes);
        }
        let rows = sqlx::query(
            "SELECT seq, at_ms, kind, subject FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(since)
        .bind(MOST)
        .fetch_all(&mut *self.tx)
        .await?;
        changes.overflow = rows.len() as i64 >= MOST;
        for row in &rows {
            let e = EventRow::from_row(row)?;
            let newest = |m: &mut std::collections::HashMap<String, i64>, e: EventRow| {
                let s = m.entry(e.subject).or_insert(e.seq);
                *s = (*s).max(e.seq);
            };
            match e.kind.as_str() {
                "policy_changed" => changes.policy = Some(changes.policy.unwrap_or(0).max(e.seq)),
                k if k.starts_with("peripheral_") => newest(&mut changes.peripherals, e),
                k if k.starts_with("gateway_") => newest(&mut changes.gateways, e),
                _ => {}
            }
        }
        Ok(changes)
    }

    /// Appends a revocation-feed event.
    pub async fn event(&mut self, kind: &str, subject: &str, at_ms: i64) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO events (at_ms, kind, subject) VALUES ($1, $2, $3)")
            .bind(at_ms)
            .bind(kind.to_owned())
            .bind(subject.to_owned())
            .execute(&mut *self.tx)
            .await?;
        self.wrote_events = true;
        Ok(())
    }
}
