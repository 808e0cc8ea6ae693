//! The replay cache: every hello's `e_P` that was vouched for or refused after it opened.

use sqlx::Row;
use vouch_proto::keys::DhPublic;

use super::{Store, StoreError, WriteTx};

impl Store {
    /// Whether `e_P` was recorded (the cheap pre-crypto replay check).
    pub async fn replay_seen(&self, ephemeral: &DhPublic) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 AS one FROM replay_cache WHERE ephemeral = $1")
            .bind(hex::encode(ephemeral.as_bytes()))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }
}

impl WriteTx<'_> {
    /// Records several `e_P` at once; returns those that were not recorded
    /// before (each at most once).
    pub async fn record_ephemerals(
        &mut self,
        ephemerals: &[DhPublic],
        at_ms: i64,
    ) -> Result<std::collections::HashSet<[u8; 32]>, StoreError> {
        let mut fresh = std::collections::HashSet::new();
        for chunk in ephemerals.chunks(200) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("(${}, $1)", i + 2))
                .collect();
            let sql = format!(
                "INSERT INTO replay_cache (ephemeral, seen_ms) VALUES {} \
                 ON CONFLICT (ephemeral) DO NOTHING RETURNING ephemeral",
                values.join(",")
            );
            let mut q = sqlx::query(&sql).bind(at_ms);
            for e in chunk {
                q = q.bind(hex::encode(e.as_bytes()));
            }
            for row in q.fetch_all(&mut *self.tx).await? {
                let h: String = row.try_get("ephemeral")?;
                let mut b = [0u8; 32];
                if hex::decode_to_slice(&h, &mut b).is_ok() {
                    fresh.insert(b);
                }
            }
        }
        Ok(fresh)
    }

    /// Records `e_P` in the replay cache. `false` if it was already there.
    pub async fn record_ephemeral(
        &mut self,
        ephemeral: &DhPublic,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "INSERT INTO replay_cache (ephemeral, seen_ms) VALUES ($1, $2) \
             ON CONFLICT (ephemeral) DO NOTHING",
        )
        .bind(hex::encode(ephemeral.as_bytes()))
        .bind(at_ms)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        Ok(n == 1)
    }
}
