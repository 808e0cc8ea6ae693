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

    /// Whether this change overtakes a vouch decided before it: a change of
    /// the vouched peripheral's or gateway's status, or of the policy.
    pub(crate) fn concerns(&self, grant: &Grant) -> bool {
        match self.kind.as_str() {
            "policy_changed" => true,
            k if k.starts_with("peripheral_") => self.subject == grant.peripheral.to_string(),
            k if k.starts_with("gateway_") => self.subject == grant.gateway.to_string(),
            _ => false,
        }
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
    /// Every event after `seq`, oldest first, as this transaction sees the
    /// log (under the write lock: every event committed before it).
    pub(crate) async fn events_after(&mut self, seq: i64) -> Result<Vec<EventRow>, StoreError> {
        let rows =
            sqlx::query("SELECT seq, at_ms, kind, subject FROM events WHERE seq > $1 ORDER BY seq")
                .bind(seq)
                .fetch_all(&mut *self.tx)
                .await?;
        rows.iter().map(EventRow::from_row).collect()
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
