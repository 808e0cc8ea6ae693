//! Clone evidence: pairs of sessions waiting to be judged, and the alerts raised (SPEC.md §10.5).

use sqlx::Row;
use vouch_proto::keys::{PeripheralId, PublicKey};

use super::{StoreError, WriteTx};

/// A pair of sessions waiting for the detach of one of them
/// ([`WriteTx::take_suspicions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspicion {
    /// The other one's gateway key.
    pub partner_gateway: String,
    /// The other one's session id, hex; empty for a vouch.
    pub partner_session: String,
    /// The later of the two starts.
    pub since_ms: i64,
    /// Whether the partner must also have heard the device after
    /// `since_ms` (their starts were too close to order).
    pub both_sides: bool,
}

impl WriteTx<'_> {
    /// Records a pair of sessions of `peripheral` that cannot be judged
    /// yet: it waits for the detach of `waiting` (gateway, session), and is
    /// then a clone if that session heard the device after `since_ms` (and,
    /// with `both_sides`, `partner` too), SPEC.md §10.5. One record per
    /// waiting session and partner gateway, which keeps the earliest
    /// `since_ms` (the earliest evidence of the device at the partner: a
    /// vouch, a session's start).
    pub async fn suspect(
        &mut self,
        peripheral: &PeripheralId,
        waiting: (&str, &str),
        partner: (&str, &str),
        since_ms: i64,
        both_sides: bool,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO clone_suspicions (peripheral_id, waiting_gateway, waiting_session, \
             partner_gateway, partner_session, since_ms, both_sides, expires_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (peripheral_id, waiting_gateway, waiting_session, partner_gateway) \
             DO UPDATE SET since_ms = CASE WHEN excluded.since_ms < clone_suspicions.since_ms \
             THEN excluded.since_ms ELSE clone_suspicions.since_ms END",
        )
        .bind(peripheral.to_string())
        .bind(waiting.0.to_owned())
        .bind(waiting.1.to_owned())
        .bind(partner.0.to_owned())
        .bind(partner.1.to_owned())
        .bind(since_ms)
        .bind(i32::from(both_sides))
        .bind(expires_ms)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Records, for a vouch given (or refused) to `gateway` at `since_ms`,
    /// one suspicion per session of `peripheral` open on another gateway
    /// that started clearly before it (more than `tolerance_ms`), each
    /// judged when that session ends (SPEC.md §10.5).
    pub async fn suspect_open_elsewhere(
        &mut self,
        peripheral: &PeripheralId,
        gateway: &PublicKey,
        since_ms: i64,
        tolerance_ms: i64,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO clone_suspicions (peripheral_id, waiting_gateway, waiting_session, \
             partner_gateway, partner_session, since_ms, both_sides, expires_ms) \
             SELECT peripheral_id, gateway_key, session_id, $2, '', $3, 0, $5 FROM attachments \
             WHERE peripheral_id = $1 AND gateway_key <> $2 AND expires_ms > $3 \
             AND attached_ms + $4 < $3 \
             ON CONFLICT (peripheral_id, waiting_gateway, waiting_session, partner_gateway) \
             DO UPDATE SET since_ms = CASE WHEN excluded.since_ms < clone_suspicions.since_ms \
             THEN excluded.since_ms ELSE clone_suspicions.since_ms END",
        )
        .bind(peripheral.to_string())
        .bind(gateway.to_string())
        .bind(since_ms)
        .bind(tolerance_ms)
        .bind(expires_ms)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Removes and returns the suspicions waiting for the end of session
    /// `session` of `peripheral` on `gateway`.
    pub async fn take_suspicions(
        &mut self,
        peripheral: &PeripheralId,
        gateway: &PublicKey,
        session: &[u8; 8],
    ) -> Result<Vec<Suspicion>, StoreError> {
        let rows = sqlx::query(
            "DELETE FROM clone_suspicions WHERE peripheral_id = $1 AND waiting_gateway = $2 \
             AND waiting_session = $3 \
             RETURNING partner_gateway, partner_session, since_ms, both_sides",
        )
        .bind(peripheral.to_string())
        .bind(gateway.to_string())
        .bind(hex::encode(session))
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter()
            .map(|r| {
                let both: i32 = r.try_get("both_sides")?;
                Ok(Suspicion {
                    partner_gateway: r.try_get("partner_gateway")?,
                    partner_session: r.try_get("partner_session")?,
                    since_ms: r.try_get("since_ms")?,
                    both_sides: both != 0,
                })
            })
            .collect()
    }

    /// Whether a clone alert for `peripheral` on this pair of gateways may
    /// be raised now: the first since the last one expired. Records it
    /// until `expires_ms` (one alert per pair for `attachment_ttl_s`).
    pub async fn first_clone_alert(
        &mut self,
        peripheral: &PeripheralId,
        gateways: (&str, &str),
        now: i64,
        expires_ms: i64,
    ) -> Result<bool, StoreError> {
        let (lo, hi) = if gateways.0 <= gateways.1 {
            gateways
        } else {
            (gateways.1, gateways.0)
        };
        let n = sqlx::query(
            "INSERT INTO clone_alerts (peripheral_id, gateway_lo, gateway_hi, expires_ms) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (peripheral_id, gateway_lo, gateway_hi) \
             DO UPDATE SET expires_ms = excluded.expires_ms WHERE clone_alerts.expires_ms <= $5",
        )
        .bind(peripheral.to_string())
        .bind(lo.to_owned())
        .bind(hi.to_owned())
        .bind(expires_ms)
        .bind(now)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        Ok(n > 0)
    }
}
