//! Peripherals: enrollment (one, and checked for bulk imports), lookups,
//! listing, lifecycle transitions.

use std::collections::BTreeMap;

use sqlx::Row;
use vouch_proto::keys::{PeripheralId, PublicKey};

use super::events::event_kind;
use super::{now_ms, placeholders, Conflict, NewAudit, Store, StoreError, WriteTx, MAX_PAGE};
use crate::model::{PeripheralRecord, Status, Transition};

/// A peripheral to enroll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPeripheral {
    /// Registry id (defaults to [`PeripheralId::derive`] of the key at the edge).
    pub id: PeripheralId,
    /// Identity key.
    pub public_key: PublicKey,
    /// Group.
    pub group: Option<String>,
    /// Attributes.
    pub attributes: BTreeMap<String, String>,
    /// Initial status: `Active` or `Pending`.
    pub status: Status,
}

/// What an idempotent enrollment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EnrollOutcome {
    /// A new record was written.
    Created,
    /// An identical record existed; nothing changed.
    Unchanged,
}

/// Filters and cursor of a peripheral listing.
#[derive(Debug, Clone, Default)]
pub struct PeripheralFilter {
    /// Only this status.
    pub status: Option<Status>,
    /// Only this group.
    pub group: Option<String>,
    /// Only those with this attribute (name, value).
    pub attribute: Option<(String, String)>,
    /// Start after this id (the previous page's `next_cursor`).
    pub after: Option<PeripheralId>,
    /// Page size (capped at [`MAX_PAGE`]).
    pub limit: u32,
}

/// Whether an existing record is what `new` would enroll (status aside: the
/// same row again is a no-op even after a lifecycle change).
fn same_enrollment(existing: &PeripheralRecord, new: &NewPeripheral) -> bool {
    existing.public_key == new.public_key
        && existing.group == new.group
        && existing.attributes == new.attributes
}

async fn fetch_peripheral(
    conn: &mut sqlx::AnyConnection,
    id: &str,
) -> Result<Option<PeripheralRecord>, StoreError> {
    let Some(row) = sqlx::query(
        "SELECT id, public_key, status, grp, created_ms, updated_ms FROM peripherals WHERE id = $1",
    )
    .bind(id.to_owned())
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let mut attributes = BTreeMap::new();
    for r in sqlx::query(
        "SELECT name, value FROM peripheral_attributes WHERE peripheral_id = $1 ORDER BY name",
    )
    .bind(id.to_owned())
    .fetch_all(&mut *conn)
    .await?
    {
        attributes.insert(r.try_get("name")?, r.try_get("value")?);
    }
    peripheral_from_row(&row, attributes).map(Some)
}

pub(super) fn peripheral_from_row(
    row: &sqlx::any::AnyRow,
    attributes: BTreeMap<String, String>,
) -> Result<PeripheralRecord, StoreError> {
    const T: &str = "peripherals";
    let id: String = row.try_get("id")?;
    let key: String = row.try_get("public_key")?;
    let status: String = row.try_get("status")?;
    Ok(PeripheralRecord {
        id: PeripheralId::from_hex(&id).ok_or(StoreError::Corrupt(T))?,
        public_key: PublicKey::from_hex(&key).ok_or(StoreError::Corrupt(T))?,
        status: Status::parse(&status).ok_or(StoreError::Corrupt(T))?,
        group: row.try_get("grp")?,
        attributes,
        created_ms: row.try_get("created_ms")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

impl Store {
    /// One peripheral with its attributes.
    pub async fn peripheral(&self, id: &PeripheralId) -> Result<PeripheralRecord, StoreError> {
        let mut conn = self.pool.acquire().await?;
        fetch_peripheral(&mut conn, &id.to_string())
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// A page of peripherals ordered by id.
    pub async fn list_peripherals(
        &self,
        f: &PeripheralFilter,
    ) -> Result<Vec<PeripheralRecord>, StoreError> {
        let limit = i64::from(f.limit.clamp(1, MAX_PAGE));
        let (status, group, after) = (
            f.status.map(|s| s.as_str().to_owned()),
            f.group.clone(),
            f.after.map(|a| a.to_string()),
        );
        let (attr_name, attr_value) = match &f.attribute {
            Some((n, v)) => (Some(n.clone()), Some(v.clone())),
            None => (None, None),
        };
        let (mut clause, next) = super::where_asked(&[
            (status.is_some(), "status ="),
            (group.is_some(), "grp ="),
            (after.is_some(), "id >"),
        ]);
        let next = if f.attribute.is_some() {
            // The attribute's rows by (name, value), then their peripherals.
            clause.push_str(&format!(
                " AND id IN (SELECT peripheral_id FROM peripheral_attributes \
                 WHERE name = ${next} AND value = ${})",
                next + 1
            ));
            next + 2
        } else {
            next
        };
        let sql = format!(
            "SELECT id, public_key, status, grp, created_ms, updated_ms FROM peripherals\
             {clause} ORDER BY id LIMIT ${next}"
        );
        let mut query = sqlx::query(&sql);
        for value in [status, group, after, attr_name, attr_value]
            .into_iter()
            .flatten()
        {
            query = query.bind(value);
        }
        let rows = query.bind(limit).fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(peripheral_from_row(&row, BTreeMap::new())?);
        }
        if !out.is_empty() {
            let mut attrs = self
                .attributes_for(&out.iter().map(|p| p.id.to_string()).collect::<Vec<_>>())
                .await?;
            for p in &mut out {
                if let Some(a) = attrs.remove(&p.id.to_string()) {
                    p.attributes = a;
                }
            }
        }
        Ok(out)
    }

    async fn attributes_for(
        &self,
        ids: &[String],
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>, StoreError> {
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        // A page is at most MAX_PAGE ids; query in chunks to stay far below
        // every engine's bound-parameter limit.
        for chunk in ids.chunks(200) {
            let sql = format!(
                "SELECT peripheral_id, name, value FROM peripheral_attributes \
                 WHERE peripheral_id IN ({}) ORDER BY peripheral_id, name",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id.clone());
            }
            for row in q.fetch_all(&self.pool).await? {
                let pid: String = row.try_get("peripheral_id")?;
                out.entry(pid)
                    .or_default()
                    .insert(row.try_get("name")?, row.try_get("value")?);
            }
        }
        Ok(out)
    }

    /// What enrolling `new` would do, without writing (dry runs).
    pub async fn check_enrollment(
        &self,
        new: &NewPeripheral,
    ) -> Result<Result<EnrollOutcome, Conflict>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        if let Some(existing) = fetch_peripheral(&mut conn, &new.id.to_string()).await? {
            return Ok(if same_enrollment(&existing, new) {
                Ok(EnrollOutcome::Unchanged)
            } else {
                Err(Conflict::PeripheralId)
            });
        }
        let taken = sqlx::query("SELECT id FROM peripherals WHERE public_key = $1")
            .bind(new.public_key.to_string())
            .fetch_optional(&mut *conn)
            .await?;
        Ok(if taken.is_some() {
            Err(Conflict::PeripheralKey)
        } else {
            Ok(EnrollOutcome::Created)
        })
    }

    /// Counts peripherals by status (for `/metrics` and `list` summaries).
    pub async fn count_peripherals(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM peripherals GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        let mut out = BTreeMap::new();
        for row in rows {
            out.insert(
                row.try_get::<String, _>("status")?,
                row.try_get::<i64, _>("n")?,
            );
        }
        Ok(out)
    }

    /// Enrolls one peripheral in its own transaction (idempotent).
    pub async fn enroll_peripheral(
        &self,
        new: &NewPeripheral,
        actor: &str,
    ) -> Result<EnrollOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let outcome = tx.enroll_peripheral(new, actor).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Applies a lifecycle transition to a peripheral, with its audit entry
    /// and (for suspend/revoke/reinstate) its revocation-feed event.
    pub async fn transition_peripheral(
        &self,
        id: &PeripheralId,
        t: Transition,
        actor: &str,
    ) -> Result<PeripheralRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let key = id.to_string();
        let current = fetch_peripheral(&mut tx.tx, &key)
            .await?
            .ok_or(StoreError::NotFound)?;
        if !t.applies_to(current.status) {
            return Err(StoreError::InvalidTransition {
                from: current.status,
                transition: t,
            });
        }
        let now = now_ms();
        sqlx::query("UPDATE peripherals SET status = $1, updated_ms = $2 WHERE id = $3")
            .bind(t.target().as_str())
            .bind(now)
            .bind(key.clone())
            .execute(&mut *tx.tx)
            .await?;
        if let Some(kind) = event_kind("peripheral", t) {
            tx.event(&kind, &key, now).await?;
        }
        tx.audit(
            NewAudit::new(&format!("peripheral_{}", t.as_str()), "ok", actor)
                .peripheral(&key)
                .detail(&format!("{} -> {}", current.status, t.target())),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(PeripheralRecord {
            status: t.target(),
            updated_ms: now,
            ..current
        })
    }
}

impl WriteTx<'_> {
    /// Enrolls one peripheral inside this transaction (idempotent: the same
    /// id, key, group and attributes again is [`EnrollOutcome::Unchanged`]).
    pub async fn enroll_peripheral(
        &mut self,
        new: &NewPeripheral,
        actor: &str,
    ) -> Result<EnrollOutcome, StoreError> {
        let id = new.id.to_string();
        let key = new.public_key.to_string();
        if let Some(existing) = fetch_peripheral(&mut self.tx, &id).await? {
            return if same_enrollment(&existing, new) {
                Ok(EnrollOutcome::Unchanged)
            } else {
                Err(StoreError::Conflict(Conflict::PeripheralId))
            };
        }
        let now = now_ms();
        // The key is unique: the insert does nothing if another id holds it.
        let n = sqlx::query(
            "INSERT INTO peripherals (id, public_key, status, grp, created_ms, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT DO NOTHING",
        )
        .bind(id.clone())
        .bind(key)
        .bind(new.status.as_str())
        .bind(new.group.clone())
        .bind(now)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::Conflict(Conflict::PeripheralKey));
        }
        for (name, value) in &new.attributes {
            sqlx::query(
                "INSERT INTO peripheral_attributes (peripheral_id, name, value) VALUES ($1, $2, $3)",
            )
            .bind(id.clone())
            .bind(name.clone())
            .bind(value.clone())
            .execute(&mut *self.tx)
            .await?;
        }
        self.audit(enroll_entry(new, actor), now).await?;
        Ok(EnrollOutcome::Created)
    }

    /// Enrolls `news`, all new, in a few statements whatever their number
    /// (a bulk import's batch; one row at a time, each is three round
    /// trips). Returns `false`, having written nothing, when any of them is
    /// not plainly new: an id or key twice among them, or an id or key
    /// already in the registry. The caller then enrolls them one by one
    /// ([`enroll_peripheral`](Self::enroll_peripheral)), which says what
    /// each one is. The audit entries are the same, in the same order.
    pub async fn enroll_new_peripherals(
        &mut self,
        news: &[NewPeripheral],
        actor: &str,
    ) -> Result<bool, StoreError> {
        let ids: Vec<String> = news.iter().map(|n| n.id.to_string()).collect();
        let keys: Vec<String> = news.iter().map(|n| n.public_key.to_string()).collect();
        let distinct = |v: &[String]| {
            let mut sorted: Vec<&String> = v.iter().collect();
            sorted.sort_unstable();
            sorted.windows(2).all(|w| w[0] != w[1])
        };
        if !distinct(&ids) || !distinct(&keys) {
            return Ok(false);
        }
        // Parameters per statement stay small: sqlx binds SQLite's `$N`
        // by name, at a cost that grows with the square of their number
        // (`WriteTx::audit_many`).
        for (ids, keys) in ids.chunks(32).zip(keys.chunks(32)) {
            let list = |from: usize| placeholders(from, ids.len());
            let sql = format!(
                "SELECT COUNT(*) AS n FROM peripherals WHERE id IN ({}) OR public_key IN ({})",
                list(1),
                list(1 + ids.len())
            );
            let mut q = sqlx::query(&sql);
            for v in ids.iter().chain(keys) {
                q = q.bind(v.clone());
            }
            let n: i64 = q.fetch_one(&mut *self.tx).await?.try_get("n")?;
            if n > 0 {
                return Ok(false);
            }
        }
        let now = now_ms();
        for chunk in news.chunks(24) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let b = 2 + i * 4;
                    format!("(${}, ${}, ${}, ${}, $1, $1)", b, b + 1, b + 2, b + 3)
                })
                .collect();
            let sql = format!(
                "INSERT INTO peripherals (id, public_key, status, grp, created_ms, updated_ms) \
                 VALUES {}",
                values.join(",")
            );
            let mut q = sqlx::query(&sql).bind(now);
            for n in chunk {
                q = q
                    .bind(n.id.to_string())
                    .bind(n.public_key.to_string())
                    .bind(n.status.as_str())
                    .bind(n.group.clone());
            }
            q.execute(&mut *self.tx).await?;
        }
        let attributes: Vec<(String, &String, &String)> = news
            .iter()
            .flat_map(|n| {
                let id = n.id.to_string();
                n.attributes.iter().map(move |(k, v)| (id.clone(), k, v))
            })
            .collect();
        for chunk in attributes.chunks(32) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("(${}, ${}, ${})", 1 + i * 3, 2 + i * 3, 3 + i * 3))
                .collect();
            let sql = format!(
                "INSERT INTO peripheral_attributes (peripheral_id, name, value) VALUES {}",
                values.join(",")
            );
            let mut q = sqlx::query(&sql);
            for (id, name, value) in chunk {
                q = q
                    .bind(id.clone())
                    .bind((*name).clone())
                    .bind((*value).clone());
            }
            q.execute(&mut *self.tx).await?;
        }
        let entries: Vec<NewAudit> = news.iter().map(|n| enroll_entry(n, actor)).collect();
        self.audit_many(&entries, now).await?;
        Ok(true)
    }
}

/// The audit entry of an enrollment.
fn enroll_entry(new: &NewPeripheral, actor: &str) -> NewAudit {
    NewAudit::new("peripheral_enroll", "ok", actor)
        .peripheral(&new.id.to_string())
        .detail(&format!("status={}", new.status))
}
