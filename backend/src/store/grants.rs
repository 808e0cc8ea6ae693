//! What each vouch granted, read back to authorize attach reports
//! (SPEC.md §10.5): the latest grant of each pair of peripheral and
//! gateway, written with the vouch's audit entry (migration 0008 explains
//! why a table and how rows from before it were backfilled).

use std::collections::{BTreeMap, HashMap};

use sqlx::Row;
use vouch_proto::keys::{PeripheralId, PublicKey};
use vouch_proto::wire::Lifetimes;

use super::policies::to_u32;
use super::{placeholders, IDS_CHUNK};
use super::{Store, StoreError, WriteTx};
use crate::model::Status;

/// What one vouch granted, to record with its audit entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The peripheral vouched for.
    pub peripheral: PeripheralId,
    /// The gateway it was vouched to.
    pub gateway: PublicKey,
    /// The lifetimes the vouch granted.
    pub lifetimes: Lifetimes,
    /// The backend key that signed the vouch.
    pub kid: vouch_proto::keys::KeyId,
}

/// The latest grant of a pair, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredGrant {
    /// When it was given: its audit entry's time.
    pub at_ms: i64,
    /// The lifetimes it granted.
    pub lifetimes: Lifetimes,
}

/// Rows per statement (six parameters each; see `audit_many` on why small).
const CHUNK: usize = 24;

/// A registered peripheral as a session report is judged against it: its
/// status, and its latest grant at the reporting gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportedDevice {
    /// Its registry status.
    pub status: Status,
    /// Its latest grant at the gateway, if it was ever vouched there.
    pub grant: Option<StoredGrant>,
}

impl Store {
    /// How many devices each backend key's vouches went to: (key id, or
    /// `None` for grants recorded before key ids were, devices), a device
    /// counted under every key whose vouch is the latest at one of its
    /// gateways.
    pub async fn devices_by_key(&self) -> Result<Vec<(Option<i64>, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, COUNT(DISTINCT peripheral_id) AS n FROM vouch_grants GROUP BY kid ORDER BY kid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("kid")?, r.try_get("n")?)))
            .collect()
    }
}

impl WriteTx<'_> {
    /// Records `grants`, each with the sequence number of its audit entry,
    /// written at `at_ms`. Each pair keeps only its latest grant (the one
    /// with the highest sequence number).
    pub async fn record_grants(
        &mut self,
        grants: &[(i64, Grant)],
        at_ms: i64,
    ) -> Result<(), StoreError> {
        // One row per pair in a statement: an upsert may not touch a row twice.
        let mut latest: BTreeMap<(String, String), (i64, Lifetimes, u8)> = BTreeMap::new();
        for (seq, g) in grants {
            let key = (g.peripheral.to_string(), g.gateway.to_string());
            let newer = latest.get(&key).is_none_or(|(s, _, _)| s < seq);
            if newer {
                latest.insert(key, (*seq, g.lifetimes, g.kid.0));
            }
        }
        let rows: Vec<_> = latest.into_iter().collect();
        for chunk in rows.chunks(CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let b = 2 + i * 6;
                    format!(
                        "(${}, ${}, ${}, $1, ${}, ${}, ${})",
                        b,
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO vouch_grants (peripheral_id, gateway_key, audit_seq, at_ms, \
                 session_s, resumption_s, kid) VALUES {} ON CONFLICT (peripheral_id, gateway_key) \
                 DO UPDATE SET audit_seq = excluded.audit_seq, at_ms = excluded.at_ms, \
                 session_s = excluded.session_s, resumption_s = excluded.resumption_s, \
                 kid = excluded.kid \
                 WHERE vouch_grants.audit_seq < excluded.audit_seq",
                values.join(",")
            );
            let mut q = sqlx::query(&sql).bind(at_ms);
            for ((peripheral, gateway), (seq, l, kid)) in chunk {
                q = q
                    .bind(peripheral.clone())
                    .bind(gateway.clone())
                    .bind(*seq)
                    .bind(i64::from(l.session_s))
                    .bind(i64::from(l.resumption_s))
                    .bind(i64::from(*kid));
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }
}

impl Store {
    /// The latest grant of `peripheral` at `gateway`; `None` if it was never
    /// vouched there (or that vouch's audit entry was pruned).
    pub async fn last_grant(
        &self,
        peripheral: &PeripheralId,
        gateway: &PublicKey,
    ) -> Result<Option<StoredGrant>, StoreError> {
        const T: &str = "vouch_grants";
        let row = sqlx::query(
            "SELECT at_ms, session_s, resumption_s FROM vouch_grants \
             WHERE peripheral_id = $1 AND gateway_key = $2",
        )
        .bind(peripheral.to_string())
        .bind(gateway.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| grant_from_row(&r, T)).transpose()
    }

    /// For the peripherals of a session report, in a few statements
    /// whatever its length: each registered one's status and latest grant
    /// at `gateway` (a report of 256 events would otherwise be 768 reads,
    /// one after another). Unregistered ones are absent.
    pub async fn reported_devices(
        &self,
        gateway: &PublicKey,
        peripherals: &[PeripheralId],
    ) -> Result<HashMap<PeripheralId, ReportedDevice>, StoreError> {
        const T: &str = "peripherals";
        let mut ids: Vec<String> = peripherals.iter().map(ToString::to_string).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_CHUNK) {
            let sql = format!(
                "SELECT p.id, p.status, g.at_ms, g.session_s, g.resumption_s FROM peripherals p \
                 LEFT JOIN vouch_grants g ON g.peripheral_id = p.id AND g.gateway_key = $1 \
                 WHERE p.id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(gateway.to_string());
            for id in chunk {
                q = q.bind(id.clone());
            }
            for r in q.fetch_all(&self.pool).await? {
                let id: String = r.try_get("id")?;
                let status: String = r.try_get("status")?;
                let at_ms: Option<i64> = r.try_get("at_ms")?;
                found.insert(
                    PeripheralId::from_hex(&id).ok_or(StoreError::Corrupt(T))?,
                    ReportedDevice {
                        status: Status::parse(&status).ok_or(StoreError::Corrupt(T))?,
                        grant: at_ms
                            .map(|_| grant_from_row(&r, "vouch_grants"))
                            .transpose()?,
                    },
                );
            }
        }
        Ok(found)
    }
}

/// A [`StoredGrant`] from a row with `at_ms`, `session_s` and `resumption_s`.
fn grant_from_row(r: &sqlx::any::AnyRow, table: &'static str) -> Result<StoredGrant, StoreError> {
    Ok(StoredGrant {
        at_ms: r.try_get("at_ms")?,
        lifetimes: Lifetimes {
            session_s: to_u32(r.try_get("session_s")?, table)?,
            resumption_s: to_u32(r.try_get("resumption_s")?, table)?,
        },
    })
}
