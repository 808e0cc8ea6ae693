//! The backend's key ring as the database records it, and the anchor updates
//! the backend issued (SPEC.md §2.5, §7.7). The private keys are not here:
//! they stay in the data directory ([`crate::datadir`]). What every backend
//! instance must agree on is: which key ids exist, their public anchors, their
//! status, and the signed updates in serial order. Besides, each running
//! instance records which of those keys it serves and holds
//! ([`InstanceRow`]), so that the others can wait for it. [`crate::keyring`]
//! decides; this module only stores.

use std::collections::BTreeSet;

use sqlx::{Any, Executor, Row};
use vouch_proto::anchor::{Anchor, AnchorAction, AnchorUpdate};
use vouch_proto::keys::{DhPublic, KeyId, PublicKey};

use super::{Store, StoreError, WriteTx};

const KEYS: &str = "backend_keys";
const UPDATES: &str = "anchor_updates";
const INSTANCES: &str = "backend_instances";

/// What one running backend instance last recorded about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    /// Random, new at every start.
    pub id: String,
    /// Host name and data directory, for the operator.
    pub host: String,
    /// When it started (ms since the Unix epoch).
    pub started_ms: i64,
    /// Its last refresh.
    pub seen_ms: i64,
    /// Until when it counts as live without another refresh.
    pub live_until_ms: i64,
    /// The key ids it serves: hellos sealed to them are opened there.
    pub serves: BTreeSet<u8>,
    /// The key ids whose registered private key is in its data directory
    /// (the served ones and, when present, the committed next key).
    pub holds: BTreeSet<u8>,
}

impl InstanceRow {
    /// Whether it counts as live at `now`.
    pub fn live_at(&self, now: i64) -> bool {
        self.live_until_ms > now
    }
}

fn kid_list(kids: &BTreeSet<u8>) -> String {
    kids.iter().map(u8::to_string).collect::<Vec<_>>().join(",")
}

fn parse_kid_list(s: &str) -> Result<BTreeSet<u8>, StoreError> {
    s.split(',')
        .filter(|k| !k.is_empty())
        .map(|k| k.parse().map_err(|_| StoreError::Corrupt(INSTANCES)))
        .collect()
}

fn instance_from_row(row: &sqlx::any::AnyRow) -> Result<InstanceRow, StoreError> {
    Ok(InstanceRow {
        id: row.try_get("instance_id")?,
        host: row.try_get("host")?,
        started_ms: row.try_get("started_ms")?,
        seen_ms: row.try_get("seen_ms")?,
        live_until_ms: row.try_get("live_until_ms")?,
        serves: parse_kid_list(&row.try_get::<String, _>("serves")?)?,
        holds: parse_kid_list(&row.try_get::<String, _>("holds")?)?,
    })
}

async fn instances<'e, E: Executor<'e, Database = Any>>(
    e: E,
) -> Result<Vec<InstanceRow>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT instance_id, host, started_ms, seen_ms, live_until_ms, serves, holds \
         FROM {INSTANCES} ORDER BY started_ms, instance_id"
    ))
    .fetch_all(e)
    .await?;
    rows.iter().map(instance_from_row).collect()
}

/// One registered backend key pair (public half and status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// Its anchor: key id and public keys.
    pub anchor: Anchor,
    /// When it was created (ms since the Unix epoch).
    pub created_ms: i64,
    /// The serial of the update that added it: `Some(0)` for a key devices
    /// were provisioned with before any update, `None` for a key prepared
    /// but not announced yet.
    pub added_serial: Option<u32>,
    /// The serial of the update that retired it.
    pub retired_serial: Option<u32>,
    /// When its private half was purged: from then on no instance serves it.
    pub purged_ms: Option<i64>,
}

/// One issued anchor update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateRow {
    /// When it was issued (ms since the Unix epoch).
    pub at_ms: i64,
    /// The signed update (its serial is the row's key).
    pub update: AnchorUpdate,
}

const KEY_COLUMNS: &str =
    "kid, signing, sealing, created_ms, added_serial, retired_serial, purged_ms";

fn key_from_row(row: &sqlx::any::AnyRow) -> Result<KeyRow, StoreError> {
    let kid: i64 = row.try_get("kid")?;
    let signing: String = row.try_get("signing")?;
    let sealing: String = row.try_get("sealing")?;
    let mut sealing_bytes = [0u8; 32];
    hex::decode_to_slice(&sealing, &mut sealing_bytes).map_err(|_| StoreError::Corrupt(KEYS))?;
    let serial = |v: Option<i64>| {
        v.map(|v| u32::try_from(v).map_err(|_| StoreError::Corrupt(KEYS)))
            .transpose()
    };
    Ok(KeyRow {
        anchor: Anchor {
            kid: KeyId(u8::try_from(kid).map_err(|_| StoreError::Corrupt(KEYS))?),
            signing: PublicKey::from_hex(&signing).ok_or(StoreError::Corrupt(KEYS))?,
            sealing: DhPublic(sealing_bytes),
        },
        created_ms: row.try_get("created_ms")?,
        added_serial: serial(row.try_get("added_serial")?)?,
        retired_serial: serial(row.try_get("retired_serial")?)?,
        purged_ms: row.try_get("purged_ms")?,
    })
}

fn update_from_row(row: &sqlx::any::AnyRow) -> Result<UpdateRow, StoreError> {
    let serial: i64 = row.try_get("serial")?;
    let body: String = row.try_get("body")?;
    let bytes = hex::decode(body).map_err(|_| StoreError::Corrupt(UPDATES))?;
    let update: AnchorUpdate =
        postcard::from_bytes(&bytes).map_err(|_| StoreError::Corrupt(UPDATES))?;
    if i64::from(update.serial) != serial {
        return Err(StoreError::Corrupt(UPDATES));
    }
    Ok(UpdateRow {
        at_ms: row.try_get("at_ms")?,
        update,
    })
}

/// The columns an update is stored with besides its body.
fn update_columns(update: &AnchorUpdate) -> (&'static str, u8) {
    match update.action {
        AnchorAction::Add(a) => ("add", a.kid.0),
        AnchorAction::Replace(a) => ("replace", a.kid.0),
        AnchorAction::Retire(kid) => ("retire", kid.0),
        AnchorAction::Rotate { anchor, .. } => ("rotate", anchor.kid.0),
    }
}

impl Store {
    /// Every registered backend key, by key id.
    pub async fn key_rows(&self) -> Result<Vec<KeyRow>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM {KEYS} ORDER BY kid"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// The anchor updates with a serial above `after`, in serial order.
    /// There are at most a few hundred in a backend's life (every update
    /// adds or retires a key id, and there are 256), so this is bounded.
    pub async fn anchor_updates_after(&self, after: u32) -> Result<Vec<UpdateRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT serial, at_ms, body FROM {UPDATES} WHERE serial > $1 ORDER BY serial"
        ))
        .bind(i64::from(after))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(update_from_row).collect()
    }

    /// The serial of the last update the revocation feed announced (0 if
    /// none).
    pub async fn last_announced_serial(&self) -> Result<u32, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT MAX(serial) AS m FROM {UPDATES} WHERE announced_ms IS NOT NULL"
        ))
        .fetch_one(&self.pool)
        .await?;
        let m: Option<i64> = row.try_get("m")?;
        u32::try_from(m.unwrap_or(0)).map_err(|_| StoreError::Corrupt(UPDATES))
    }

    /// Every instance that recorded itself, live or not, oldest first.
    pub async fn instances(&self) -> Result<Vec<InstanceRow>, StoreError> {
        instances(&self.pool).await
    }

    /// Records (or refreshes) what instance `row.id` serves and holds. Not
    /// under the writer lock: each instance writes only its own row.
    pub async fn record_instance(&self, row: &InstanceRow) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO {INSTANCES} \
             (instance_id, host, started_ms, seen_ms, live_until_ms, serves, holds) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (instance_id) DO UPDATE SET seen_ms = excluded.seen_ms, \
             live_until_ms = excluded.live_until_ms, serves = excluded.serves, \
             holds = excluded.holds"
        ))
        .bind(row.id.clone())
        .bind(row.host.clone())
        .bind(row.started_ms)
        .bind(row.seen_ms)
        .bind(row.live_until_ms)
        .bind(kid_list(&row.serves))
        .bind(kid_list(&row.holds))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes the record of instance `id` (it stopped), and those of
    /// instances last seen before `seen_before_ms` (they stopped without
    /// saying so).
    pub async fn forget_instances(&self, id: &str, seen_before_ms: i64) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "DELETE FROM {INSTANCES} WHERE instance_id = $1 OR seen_ms < $2"
        ))
        .bind(id.to_owned())
        .bind(seen_before_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

impl WriteTx<'_> {
    /// Every instance that recorded itself, read in the transaction.
    pub async fn instances(&mut self) -> Result<Vec<InstanceRow>, StoreError> {
        instances(&mut *self.tx).await
    }

    /// Marks the updates up to `serial` not announced yet as announced at
    /// `at_ms`; returns how many it marked (0: another instance did).
    pub async fn announce_anchor_updates(
        &mut self,
        serial: u32,
        at_ms: i64,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(&format!(
            "UPDATE {UPDATES} SET announced_ms = $1 \
             WHERE serial <= $2 AND announced_ms IS NULL"
        ))
        .bind(at_ms)
        .bind(i64::from(serial))
        .execute(&mut *self.tx)
        .await?
        .rows_affected())
    }

    /// Every registered backend key, read under the writer lock.
    pub async fn key_rows(&mut self) -> Result<Vec<KeyRow>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM {KEYS} ORDER BY kid"))
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Every anchor update, in serial order, read under the writer lock.
    pub async fn anchor_updates(&mut self) -> Result<Vec<UpdateRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT serial, at_ms, body FROM {UPDATES} ORDER BY serial"
        ))
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(update_from_row).collect()
    }

    /// Registers a key.
    pub async fn insert_key(&mut self, row: &KeyRow) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO {KEYS} ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(i64::from(row.anchor.kid.0))
        .bind(row.anchor.signing.to_string())
        .bind(hex::encode(row.anchor.sealing.as_bytes()))
        .bind(row.created_ms)
        .bind(row.added_serial.map(i64::from))
        .bind(row.retired_serial.map(i64::from))
        .bind(row.purged_ms)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Records that update `serial` added (announced) key `kid`.
    pub async fn key_added(&mut self, kid: KeyId, serial: u32) -> Result<(), StoreError> {
        self.set_key_column("added_serial", kid, i64::from(serial))
            .await
    }

    /// Records that update `serial` retired key `kid`.
    pub async fn key_retired(&mut self, kid: KeyId, serial: u32) -> Result<(), StoreError> {
        self.set_key_column("retired_serial", kid, i64::from(serial))
            .await
    }

    /// Records that key `kid`'s private half was purged at `at_ms`.
    pub async fn key_purged(&mut self, kid: KeyId, at_ms: i64) -> Result<(), StoreError> {
        self.set_key_column("purged_ms", kid, at_ms).await
    }

    async fn set_key_column(
        &mut self,
        column: &'static str,
        kid: KeyId,
        value: i64,
    ) -> Result<(), StoreError> {
        let n = sqlx::query(&format!("UPDATE {KEYS} SET {column} = $1 WHERE kid = $2"))
            .bind(value)
            .bind(i64::from(kid.0))
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound)
        }
    }

    /// Appends a signed anchor update (its serial must be new).
    pub async fn insert_anchor_update(
        &mut self,
        update: &AnchorUpdate,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let body = postcard::to_allocvec(update).map_err(|_| StoreError::Corrupt(UPDATES))?;
        let (action, kid) = update_columns(update);
        sqlx::query(&format!(
            "INSERT INTO {UPDATES} (serial, at_ms, action, kid, signer, body) \
             VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(i64::from(update.serial))
        .bind(at_ms)
        .bind(action.to_owned())
        .bind(i64::from(kid))
        .bind(i64::from(update.signer.0))
        .bind(hex::encode(body))
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}
