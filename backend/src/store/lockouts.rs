//! Lockouts, shared by every instance through the store (SPEC.md §10.3).

use sqlx::Row;

use super::{now_ms, NewAudit, Store, StoreError, WriteTx};

impl Store {
    /// Lockouts in force at `now`: (subject, until).
    pub async fn active_lockouts(&self, now: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT subject, until_ms FROM lockouts WHERE until_ms > $1")
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("subject")?, r.try_get("until_ms")?)))
            .collect()
    }

    /// Lifts a lockout early (operator action).
    pub async fn clear_lockout(&self, subject: &str, actor: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("DELETE FROM lockouts WHERE subject = $1")
            .bind(subject.to_owned())
            .execute(&mut *tx.tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        tx.audit(
            NewAudit::new("lockout_clear", "ok", actor).detail(subject),
            now_ms(),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

impl WriteTx<'_> {
    /// Sets (or extends) a lockout.
    pub async fn lockout(
        &mut self,
        subject: &str,
        until_ms: i64,
        reason: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO lockouts (subject, until_ms, reason) VALUES ($1, $2, $3) \
             ON CONFLICT (subject) DO UPDATE SET until_ms = excluded.until_ms, reason = excluded.reason",
        )
        .bind(subject.to_owned())
        .bind(until_ms)
        .bind(reason.to_owned())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}
