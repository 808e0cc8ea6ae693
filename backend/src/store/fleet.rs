//! Fleet visibility: when each gateway last polled the revocation feed, and
//! where each peripheral was last seen. Observations, not decisions: written
//! outside the audit chain, read from what the vouch path and the session
//! reports already record.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use vouch_proto::keys::{PeripheralId, PublicKey};

use super::{Store, StoreError};

/// Where a peripheral was last seen, from its vouches and its gateways'
/// session reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Presence {
    /// The latest of its last vouch, its last reported attach and its last
    /// reported detach (ms since the Unix epoch); `None`: never seen.
    pub last_seen_ms: Option<i64>,
    /// The gateway it is attached to now (a reported session that has not
    /// ended or expired; the newest if several), if any.
    pub gateway: Option<String>,
    /// The gateway of its last vouch, if any.
    pub last_vouch_gateway: Option<String>,
}

impl Store {
    /// Records feed polls: `(gateway, at_ms)`, each kept only if later than
    /// what is stored (several instances write). One transaction.
    pub async fn record_polls(&self, polls: &[(PublicKey, i64)]) -> Result<(), StoreError> {
        if polls.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (key, at) in polls {
            sqlx::query(
                "UPDATE gateways SET last_poll_ms = $1 WHERE public_key = $2 \
                 AND (last_poll_ms IS NULL OR last_poll_ms < $1)",
            )
            .bind(*at)
            .bind(key.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The sessions reported live on `gateway` at `now` (attached, neither
    /// detached nor expired).
    pub async fn live_sessions(&self, gateway: &PublicKey, now: i64) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM attachments WHERE gateway_key = $1 AND expires_ms > $2",
        )
        .bind(gateway.to_string())
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }

    /// Where `peripheral` was last seen, at `now`.
    pub async fn presence(
        &self,
        peripheral: &PeripheralId,
        now: i64,
    ) -> Result<Presence, StoreError> {
        let id = peripheral.to_string();
        let vouch = sqlx::query(
            "SELECT gateway_key, at_ms FROM vouch_grants WHERE peripheral_id = $1 \
             ORDER BY at_ms DESC LIMIT 1",
        )
        .bind(id.clone())
        .fetch_optional(&self.pool)
        .await?;
        let attached = sqlx::query(
            "SELECT gateway_key, attached_ms, expires_ms FROM attachments \
             WHERE peripheral_id = $1 ORDER BY attached_ms DESC LIMIT 1",
        )
        .bind(id.clone())
        .fetch_optional(&self.pool)
        .await?;
        let detached = sqlx::query(
            "SELECT MAX(detached_ms) AS d FROM session_detaches WHERE peripheral_id = $1",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        let mut p = Presence::default();
        let mut seen: Vec<i64> = Vec::new();
        if let Some(v) = vouch {
            seen.push(v.try_get("at_ms")?);
            p.last_vouch_gateway = Some(v.try_get("gateway_key")?);
        }
        if let Some(a) = attached {
            seen.push(a.try_get("attached_ms")?);
            let expires: i64 = a.try_get("expires_ms")?;
            if expires > now {
                p.gateway = Some(a.try_get("gateway_key")?);
            }
        }
        if let Some(d) = detached.try_get::<Option<i64>, _>("d")? {
            seen.push(d);
        }
        p.last_seen_ms = seen.into_iter().max();
        Ok(p)
    }
}
