//! What vouches granted, read back to authorize attach reports.

use sqlx::Row;
use vouch_proto::keys::{PeripheralId, PublicKey};

use super::{Store, StoreError};

impl Store {
    /// When the latest vouch for `peripheral` was given to `gateway`, and its
    /// audit detail (the grant). `None` if it never was. Newest first on the
    /// audit log's `(peripheral_id, seq)` index.
    pub async fn last_vouch(
        &self,
        peripheral: &PeripheralId,
        gateway: &PublicKey,
    ) -> Result<Option<(i64, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT at_ms, detail FROM audit_log WHERE peripheral_id = $1 AND gateway_key = $2 \
             AND action = 'vouch' AND outcome = 'vouched' ORDER BY seq DESC LIMIT 1",
        )
        .bind(peripheral.to_string())
        .bind(gateway.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((r.try_get("at_ms")?, r.try_get("detail")?)))
            .transpose()
    }
}
