//! Batched reads for the vouch path: one pooled connection per request and
//! one query per kind of lookup for the whole batch, rather than several
//! queries per vouch. (With SQLite every statement is a round trip to the
//! connection's worker thread; the round trips, not the SQL, dominate.)

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::pool::PoolConnection;
use sqlx::{Any, Row};
use vouch_proto::keys::{DhPublic, PeripheralId, PublicKey};

use super::gateways::{gateway_from_row, GATEWAY_COLUMNS};
use super::peripherals::peripheral_from_row;
use super::policies::policy_from_row;
use super::{placeholders, StoreError};
use crate::model::{GatewayRecord, PeripheralRecord, PolicyRule};

/// Rows per `IN (…)` list: far below every engine's parameter limit.
const CHUNK: usize = 256;

/// A pooled connection for the reads of one request.
pub struct Reader {
    pub(super) conn: PoolConnection<Any>,
    pub(super) keys: std::sync::Arc<crate::keycache::KeyCache>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reader")
    }
}

impl Reader {
    /// One gateway, if enrolled.
    pub async fn gateway(&mut self, key: &PublicKey) -> Result<Option<GatewayRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {GATEWAY_COLUMNS} FROM gateways WHERE public_key = $1"
        ))
        .bind(key.to_string())
        .fetch_optional(&mut *self.conn)
        .await?;
        row.as_ref().map(gateway_from_row).transpose()
    }

    /// Which of `ephemerals` are in the replay cache.
    pub async fn replayed(
        &mut self,
        ephemerals: &[DhPublic],
    ) -> Result<HashSet<[u8; 32]>, StoreError> {
        let mut out = HashSet::new();
        for chunk in ephemerals.chunks(CHUNK) {
            let sql = format!(
                "SELECT ephemeral FROM replay_cache WHERE ephemeral IN ({})",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for e in chunk {
                q = q.bind(hex::encode(e.as_bytes()));
            }
            for row in q.fetch_all(&mut *self.conn).await? {
                let h: String = row.try_get("ephemeral")?;
                let mut b = [0u8; 32];
                if hex::decode_to_slice(&h, &mut b).is_ok() {
                    out.insert(b);
                }
            }
        }
        Ok(out)
    }

    /// Every policy rule.
    pub async fn policies(&mut self) -> Result<Vec<PolicyRule>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, peripheral_kind, peripheral_value, gateway_kind, gateway_value, scope, \
             session_s, resumption_s, created_ms FROM policies ORDER BY id",
        )
        .fetch_all(&mut *self.conn)
        .await?;
        rows.iter().map(policy_from_row).collect()
    }

    /// The peripherals among `ids` that are registered, with attributes.
    pub async fn peripherals(
        &mut self,
        ids: &[PeripheralId],
    ) -> Result<HashMap<PeripheralId, PeripheralRecord>, StoreError> {
        let mut out: HashMap<PeripheralId, PeripheralRecord> = HashMap::new();
        let unique: Vec<String> = ids
            .iter()
            .map(ToString::to_string)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for chunk in unique.chunks(CHUNK) {
            let sql = format!(
                "SELECT p.id, p.public_key, p.status, p.grp, p.created_ms, p.updated_ms, \
                 a.name AS attr_name, a.value AS attr_value \
                 FROM peripherals p LEFT JOIN peripheral_attributes a ON a.peripheral_id = p.id \
                 WHERE p.id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id.clone());
            }
            for row in q.fetch_all(&mut *self.conn).await? {
                let id: String = row.try_get("id")?;
                let Some(pid) = PeripheralId::from_hex(&id) else {
                    return Err(StoreError::Corrupt("peripherals"));
                };
                let name: Option<String> = row.try_get("attr_name")?;
                let value: Option<String> = row.try_get("attr_value")?;
                let rec = match out.entry(pid) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(peripheral_from_row(&row, BTreeMap::new())?)
                    }
                };
                if let (Some(n), Some(v)) = (name, value) {
                    rec.attributes.insert(n, v);
                }
            }
        }
        Ok(out)
    }

    /// For each of `ids`, the gateways other than `gateway` it is attached to at `now`.
    pub async fn attached_elsewhere(
        &mut self,
        ids: &[PeripheralId],
        gateway: &PublicKey,
        now: i64,
    ) -> Result<HashMap<PeripheralId, Vec<String>>, StoreError> {
        let mut out: HashMap<PeripheralId, Vec<String>> = HashMap::new();
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT DISTINCT peripheral_id, gateway_key FROM attachments \
                 WHERE gateway_key <> $1 AND expires_ms > $2 AND peripheral_id IN ({}) \
                 ORDER BY gateway_key",
                placeholders(3, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(gateway.to_string()).bind(now);
            for id in chunk {
                q = q.bind(id.to_string());
            }
            for row in q.fetch_all(&mut *self.conn).await? {
                let id: String = row.try_get("peripheral_id")?;
                if let Some(pid) = PeripheralId::from_hex(&id) {
                    out.entry(pid)
                        .or_default()
                        .push(row.try_get("gateway_key")?);
                }
            }
        }
        Ok(out)
    }
}

/// What the vouch path needs before any crypto: the gateway, which
/// ephemerals were seen, and the event log's head. One statement.
#[derive(Debug, Default)]
pub struct BeforeCrypto {
    /// The gateway, if enrolled.
    pub gateway: Option<GatewayRecord>,
    /// The ephemerals already in the replay cache.
    pub replayed: HashSet<[u8; 32]>,
    /// The event log's head as this statement saw it, before any of the
    /// registry reads of the decision: its commit refuses a vouch whose
    /// peripheral, gateway or policy changed after it.
    pub registry_seq: i64,
}

/// What the vouch path needs once the hellos are open: the claimed
/// peripherals, the policy, and where they are attached. One statement.
#[derive(Debug, Default)]
pub struct AfterOpen {
    /// The registered peripherals among the claimed ids.
    pub peripherals: HashMap<PeripheralId, PeripheralRecord>,
    /// Every policy rule.
    pub rules: Vec<PolicyRule>,
    /// Gateways other than the caller each claimed id is attached to now.
    pub attached_elsewhere: HashMap<PeripheralId, Vec<String>>,
}

impl Reader {
    /// The gateway, the event log's head and the replay check for up to 256
    /// ephemerals in one round trip (more are checked in further
    /// statements).
    pub async fn before_crypto(
        &mut self,
        gateway: &PublicKey,
        ephemerals: &[DhPublic],
    ) -> Result<BeforeCrypto, StoreError> {
        let (first, rest) = ephemerals.split_at(ephemerals.len().min(CHUNK));
        let mut sql = String::from(
            "SELECT 'g' AS k, public_key AS t1, name AS t2, grp AS t3, site AS t4, status AS t5, \
             created_ms AS n1, updated_ms AS n2, cert_not_after_ms AS n3, last_poll_ms AS n4 FROM gateways \
             WHERE public_key = $1 \
             UNION ALL SELECT 'h', NULL, NULL, NULL, NULL, NULL, \
             (SELECT COALESCE(MAX(seq), 0) FROM events), NULL, NULL, NULL",
        );
        if !first.is_empty() {
            sql.push_str(&format!(
                " UNION ALL SELECT 'r', ephemeral, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL \
                 FROM replay_cache WHERE ephemeral IN ({})",
                placeholders(2, first.len())
            ));
        }
        let mut q = sqlx::query(&sql).bind(gateway.to_string());
        for e in first {
            q = q.bind(hex::encode(e.as_bytes()));
        }
        let mut out = BeforeCrypto::default();
        for row in q.fetch_all(&mut *self.conn).await? {
            let k: String = row.try_get("k")?;
            if k == "h" {
                out.registry_seq = row.try_get("n1")?;
                continue;
            }
            let t1: String = row.try_get("t1")?;
            if k == "g" {
                let status: String = row.try_get("t5")?;
                out.gateway = Some(GatewayRecord {
                    public_key: self
                        .keys
                        .public_key_hex(&t1)
                        .ok_or(StoreError::Corrupt("gateways"))?,
                    name: row.try_get("t2")?,
                    group: row.try_get("t3")?,
                    site: row.try_get("t4")?,
                    status: crate::model::Status::parse(&status)
                        .ok_or(StoreError::Corrupt("gateways"))?,
                    created_ms: row.try_get("n1")?,
                    updated_ms: row.try_get("n2")?,
                    certificate_expires_ms: row.try_get("n3")?,
                    last_poll_ms: row.try_get("n4")?,
                });
            } else {
                let mut b = [0u8; 32];
                if hex::decode_to_slice(&t1, &mut b).is_ok() {
                    out.replayed.insert(b);
                }
            }
        }
        if !rest.is_empty() {
            out.replayed.extend(self.replayed(rest).await?);
        }
        Ok(out)
    }

    /// Peripherals (with attributes), policy rules and attachments elsewhere
    /// for up to 256 claimed ids in one round trip.
    pub async fn after_open(
        &mut self,
        ids: &[PeripheralId],
        gateway: &PublicKey,
        now: i64,
    ) -> Result<AfterOpen, StoreError> {
        let unique: Vec<String> = ids
            .iter()
            .map(ToString::to_string)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if unique.is_empty() || unique.len() > CHUNK {
            let parsed: Vec<PeripheralId> = unique
                .iter()
                .filter_map(|s| PeripheralId::from_hex(s))
                .collect();
            return Ok(AfterOpen {
                peripherals: self.peripherals(&parsed).await?,
                rules: self.policies().await?,
                attached_elsewhere: self.attached_elsewhere(&parsed, gateway, now).await?,
            });
        }
        let list = placeholders(3, unique.len());
        let sql = format!(
            "SELECT 'p' AS k, p.id AS t1, p.public_key AS t2, p.status AS t3, p.grp AS t4, \
                    a.name AS t5, a.value AS t6, p.created_ms AS n1, p.updated_ms AS n2, \
                    NULL AS n3, NULL AS n4 \
             FROM peripherals p LEFT JOIN peripheral_attributes a ON a.peripheral_id = p.id \
             WHERE p.id IN ({list}) \
             UNION ALL \
             SELECT 'r', peripheral_kind, peripheral_value, gateway_kind, gateway_value, NULL, NULL, \
                    id, scope, session_s, resumption_s FROM policies \
             UNION ALL \
             SELECT 'a', peripheral_id, gateway_key, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL \
             FROM attachments WHERE gateway_key <> $1 AND expires_ms > $2 AND peripheral_id IN ({list})"
        );
        let mut q = sqlx::query(&sql).bind(gateway.to_string()).bind(now);
        for id in &unique {
            q = q.bind(id.clone());
        }
        let mut out = AfterOpen::default();
        for row in q.fetch_all(&mut *self.conn).await? {
            let k: String = row.try_get("k")?;
            let t1: String = row.try_get("t1")?;
            match k.as_str() {
                "p" => {
                    let pid =
                        PeripheralId::from_hex(&t1).ok_or(StoreError::Corrupt("peripherals"))?;
                    let rec = match out.peripherals.entry(pid) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(v) => {
                            let key: String = row.try_get("t2")?;
                            let status: String = row.try_get("t3")?;
                            v.insert(PeripheralRecord {
                                id: pid,
                                public_key: self
                                    .keys
                                    .public_key_hex(&key)
                                    .ok_or(StoreError::Corrupt("peripherals"))?,
                                status: crate::model::Status::parse(&status)
                                    .ok_or(StoreError::Corrupt("peripherals"))?,
                                group: row.try_get("t4")?,
                                attributes: BTreeMap::new(),
                                created_ms: row.try_get("n1")?,
                                updated_ms: row.try_get("n2")?,
                            })
                        }
                    };
                    let name: Option<String> = row.try_get("t5")?;
                    let value: Option<String> = row.try_get("t6")?;
                    if let (Some(n), Some(v)) = (name, value) {
                        rec.attributes.insert(n, v);
                    }
                }
                "r" => {
                    const T: &str = "policies";
                    let pv: String = row.try_get("t2")?;
                    let gk: String = row.try_get("t3")?;
                    let gv: String = row.try_get("t4")?;
                    let num = |c: &str| -> Result<u32, StoreError> {
                        let v: i64 = row.try_get(c)?;
                        u32::try_from(v).map_err(|_| StoreError::Corrupt(T))
                    };
                    out.rules.push(PolicyRule {
                        id: row.try_get("n1")?,
                        peripheral: crate::model::PeripheralSelector::from_columns(&t1, &pv)
                            .ok_or(StoreError::Corrupt(T))?,
                        gateway: crate::model::GatewaySelector::from_columns(&gk, &gv)
                            .ok_or(StoreError::Corrupt(T))?,
                        scope: vouch_proto::wire::Scope(num("n2")?),
                        lifetimes: vouch_proto::wire::Lifetimes {
                            session_s: num("n3")?,
                            resumption_s: num("n4")?,
                        },
                        created_ms: 0,
                    });
                }
                _ => {
                    if let Some(pid) = PeripheralId::from_hex(&t1) {
                        let g: String = row.try_get("t2")?;
                        // One row per live session: a gateway once.
                        let v = out.attached_elsewhere.entry(pid).or_default();
                        v.push(g);
                        v.sort();
                        v.dedup();
                    }
                }
            }
        }
        Ok(out)
    }
}
