//! The revocation feed's event log: one row per change a gateway must apply, in commit order.

use sqlx::Row;

use super::{Store, StoreError, WriteTx, MAX_PAGE};
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
        rows.iter()
            .map(|r| {
                Ok(EventRow {
                    seq: r.try_get("seq")?,
                    at_ms: r.try_get("at_ms")?,
                    kind: r.try_get("kind")?,
                    subject: r.try_get("subject")?,
                })
            })
            .collect()
    }

    /// The highest event sequence number (0 if none).
    pub async fn last_event_seq(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT MAX(seq) AS m FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("m")?.unwrap_or(0))
    }
}

impl WriteTx<'_> {
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
