//! Storage: the registry, policy, replay cache, lockouts, attachments, the
//! revocation event log, the audit chain, and the backend key ring's status
//! with the anchor updates issued, on SQLite or PostgreSQL.
//!
//! ## One implementation over sqlx's `Any` driver, not a `Store` trait
//!
//! Every query here is plain SQL that both engines accept (`$1` placeholders,
//! which sqlx's SQLite driver also understands; `ON CONFLICT … DO NOTHING`;
//! `RETURNING`), over the three types both map alike (`BIGINT` as `i64`,
//! `TEXT` as `String`, nullable text). The dialects differ only in the
//! migrations (`migrations/sqlite`, `migrations/postgres`: `AUTOINCREMENT`
//! versus `BIGSERIAL`) and in how a connection is set up. So there is exactly
//! one code path to test, and the same test suite exercising it on SQLite
//! exercises it on PostgreSQL. A trait with two implementations would
//! duplicate ~40 queries whose only difference would be the driver name, and
//! the copies would drift. The price: no compile-time checked `query!`
//! macros (they would need a live database at build time anyway) and a
//! small per-row conversion cost in `Any`.
//!
//! ## Durability and ordering
//!
//! SQLite runs in WAL mode with `synchronous=FULL`: a commit is on disk when
//! it returns, so nothing acknowledged is lost to a crash or a power cut.
//! Every write goes through [`Store::begin_write`], whose first statement
//! updates the single `audit_head` row. That takes SQLite's write lock (with
//! the busy timeout, before any snapshot is read) or PostgreSQL's row lock, so
//! writers are serialized across connections, processes and instances. Two
//! things depend on it: the audit hash chain (each entry covers the previous
//! hash) and the revocation feed (event sequence numbers are allocated in
//! commit order, so a subscriber that has seen `seq` has seen everything
//! before it).

mod audit;
mod keys;
mod read;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Connection, Executor, Row, Transaction};
use vouch_proto::keys::{DhPublic, PeripheralId, PublicKey};
use vouch_proto::wire::{Lifetimes, Scope};

pub use audit::{
    AuditEntry, AuditFilter, AuditVerdict, CheckpointKey, CheckpointKeyError, NewAudit, PruneError,
    PruneOutcome, Rfc3339,
};
pub use keys::{InstanceRow, KeyRow, UpdateRow};
pub use read::Reader;

use crate::model::{
    GatewayRecord, GatewaySelector, PeripheralRecord, PeripheralSelector, PolicyRule, Status,
    Transition,
};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The most rows a list call returns.
pub const MAX_PAGE: u32 = 1000;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The record does not exist.
    #[error("not found")]
    NotFound,
    /// The write conflicts with an existing record.
    #[error("conflict: {0}")]
    Conflict(Conflict),
    /// The lifecycle does not allow this transition.
    #[error("cannot {} a subject that is {}", .transition.as_str(), .from)]
    InvalidTransition {
        /// The current status.
        from: Status,
        /// The requested change.
        transition: Transition,
    },
    /// The database URL names an engine this build does not support.
    #[error("unsupported database URL (use sqlite://PATH or postgres://…)")]
    UnsupportedUrl,
    /// A stored row does not parse (the database was edited by hand).
    #[error("corrupt row in table {0}")]
    Corrupt(&'static str),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// What an enrollment or a policy conflicts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// The id is registered with a different key, group or attributes.
    #[error("peripheral id already enrolled with different data")]
    PeripheralId,
    /// The public key is registered under another id.
    #[error("public key already enrolled under another id")]
    PeripheralKey,
    /// The gateway key is registered with a different name, group or site.
    #[error("gateway already enrolled with different data")]
    Gateway,
    /// An identical policy rule exists.
    #[error("an identical policy rule exists")]
    Policy,
}

/// Which engine a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// SQLite, a file in the data directory.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// The storage handle: a connection pool. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    engine: Engine,
}

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

/// A gateway to enroll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGateway {
    /// Identity key.
    pub public_key: PublicKey,
    /// Human name.
    pub name: Option<String>,
    /// Group.
    pub group: Option<String>,
    /// Site.
    pub site: Option<String>,
}

/// What an idempotent enrollment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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
    /// Start after this id (the previous page's `next_cursor`).
    pub after: Option<PeripheralId>,
    /// Page size (capped at [`MAX_PAGE`]).
    pub limit: u32,
}

/// Filters and cursor of a gateway listing.
#[derive(Debug, Clone, Default)]
pub struct GatewayFilter {
    /// Only this status.
    pub status: Option<Status>,
    /// Only this group.
    pub group: Option<String>,
    /// Only this site.
    pub site: Option<String>,
    /// Start after this key.
    pub after: Option<PublicKey>,
    /// Page size (capped at [`MAX_PAGE`]).
    pub limit: u32,
}

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

/// Milliseconds since the Unix epoch, on this machine's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the database at `url` and applies the
    /// migrations. `sqlite://PATH` or `postgres://…`.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let engine = if url.starts_with("sqlite:") {
            Engine::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Engine::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        let url = match engine {
            Engine::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        {
            // One connection first: WAL mode needs an exclusive moment, and the
            // migrations run once before the pool opens.
            let mut conn = sqlx::AnyConnection::connect_with(&options).await?;
            match engine {
                Engine::Sqlite => {
                    conn.execute("PRAGMA journal_mode=WAL").await?;
                    conn.execute("PRAGMA busy_timeout=30000").await?;
                    SQLITE_MIGRATIONS.run(&mut conn).await?;
                }
                Engine::Postgres => {
                    POSTGRES_MIGRATIONS.run(&mut conn).await?;
                }
            }
            conn.close().await?;
        }
        let max = match engine {
            Engine::Sqlite => 8,
            Engine::Postgres => 16,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if engine == Engine::Sqlite {
                        // FULL: a commit is durable against power loss, not only
                        // against a crash of this process.
                        conn.execute("PRAGMA synchronous=FULL").await?;
                        conn.execute("PRAGMA busy_timeout=30000").await?;
                        conn.execute("PRAGMA foreign_keys=ON").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Self { pool, engine })
    }

    /// The engine behind this store.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A private in-memory SQLite registry (for simulations and tests): it
    /// lives as long as the returned store and is shared by all its
    /// connections.
    pub async fn open_in_memory() -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let options = AnyConnectOptions::from_str("sqlite::memory:")?;
        // One connection that never closes keeps the database alive.
        let pool = AnyPoolOptions::new()
            .min_connections(1)
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute("PRAGMA foreign_keys=ON").await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        {
            let mut conn = pool.acquire().await?;
            SQLITE_MIGRATIONS.run(&mut *conn).await?;
        }
        Ok(Self {
            pool,
            engine: Engine::Sqlite,
        })
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await?;
        Ok(())
    }

    /// A connection for the batched reads of one request.
    pub async fn reader(&self) -> Result<Reader, StoreError> {
        Ok(Reader {
            conn: self.pool.acquire().await?,
        })
    }

    /// Starts a write transaction: takes the global writer lock (the audit
    /// head row) before anything else. See the module doc.
    pub async fn begin_write(&self) -> Result<WriteTx<'static>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let seq: i64 = row.try_get("seq")?;
        let hash: String = row.try_get("hash")?;
        let hash = audit::parse_hash(&hash).ok_or(StoreError::Corrupt("audit_head"))?;
        Ok(WriteTx {
            tx,
            head_seq: seq,
            head_hash: hash,
            wrote_events: false,
        })
    }

    // ----- peripherals -------------------------------------------------

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
        let rows = sqlx::query(
            "SELECT id, public_key, status, grp, created_ms, updated_ms FROM peripherals \
             WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR grp = $2) \
             AND ($3 IS NULL OR id > $3) ORDER BY id LIMIT $4",
        )
        .bind(f.status.map(|s| s.as_str().to_owned()))
        .bind(f.group.clone())
        .bind(f.after.map(|a| a.to_string()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
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
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT peripheral_id, name, value FROM peripheral_attributes \
                 WHERE peripheral_id IN ({}) ORDER BY peripheral_id, name",
                placeholders.join(",")
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

    // ----- gateways ----------------------------------------------------

    /// One gateway.
    pub async fn gateway(&self, key: &PublicKey) -> Result<GatewayRecord, StoreError> {
        let row = sqlx::query(
            "SELECT public_key, name, grp, site, status, created_ms, updated_ms \
             FROM gateways WHERE public_key = $1",
        )
        .bind(key.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        gateway_from_row(&row)
    }

    /// A page of gateways ordered by key.
    pub async fn list_gateways(&self, f: &GatewayFilter) -> Result<Vec<GatewayRecord>, StoreError> {
        let limit = i64::from(f.limit.clamp(1, MAX_PAGE));
        let rows = sqlx::query(
            "SELECT public_key, name, grp, site, status, created_ms, updated_ms FROM gateways \
             WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR grp = $2) \
             AND ($3 IS NULL OR site = $3) AND ($4 IS NULL OR public_key > $4) \
             ORDER BY public_key LIMIT $5",
        )
        .bind(f.status.map(|s| s.as_str().to_owned()))
        .bind(f.group.clone())
        .bind(f.site.clone())
        .bind(f.after.map(|a| a.to_string()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(gateway_from_row).collect()
    }

    /// Enrolls a gateway (idempotent: the same data again is a no-op). Gateways
    /// start `active`: an operator enrolls one when it is installed.
    pub async fn enroll_gateway(
        &self,
        new: &NewGateway,
        actor: &str,
    ) -> Result<EnrollOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let key = new.public_key.to_string();
        let existing = sqlx::query("SELECT name, grp, site FROM gateways WHERE public_key = $1")
            .bind(key.clone())
            .fetch_optional(&mut *tx.tx)
            .await?;
        if let Some(row) = existing {
            let same = row.try_get::<Option<String>, _>("name")? == new.name
                && row.try_get::<Option<String>, _>("grp")? == new.group
                && row.try_get::<Option<String>, _>("site")? == new.site;
            return if same {
                Ok(EnrollOutcome::Unchanged)
            } else {
                Err(StoreError::Conflict(Conflict::Gateway))
            };
        }
        let now = now_ms();
        sqlx::query(
            "INSERT INTO gateways (public_key, name, grp, site, status, created_ms, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(key.clone())
        .bind(new.name.clone())
        .bind(new.group.clone())
        .bind(new.site.clone())
        .bind(Status::Active.as_str())
        .bind(now)
        .execute(&mut *tx.tx)
        .await?;
        tx.audit(
            NewAudit::new("gateway_enroll", "ok", actor).gateway(&key),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(EnrollOutcome::Created)
    }

    /// Applies a lifecycle transition to a gateway.
    pub async fn transition_gateway(
        &self,
        key: &PublicKey,
        t: Transition,
        actor: &str,
    ) -> Result<GatewayRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let k = key.to_string();
        let row = sqlx::query(
            "SELECT public_key, name, grp, site, status, created_ms, updated_ms \
             FROM gateways WHERE public_key = $1",
        )
        .bind(k.clone())
        .fetch_optional(&mut *tx.tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let current = gateway_from_row(&row)?;
        if !t.applies_to(current.status) {
            return Err(StoreError::InvalidTransition {
                from: current.status,
                transition: t,
            });
        }
        let now = now_ms();
        sqlx::query("UPDATE gateways SET status = $1, updated_ms = $2 WHERE public_key = $3")
            .bind(t.target().as_str())
            .bind(now)
            .bind(k.clone())
            .execute(&mut *tx.tx)
            .await?;
        if let Some(kind) = event_kind("gateway", t) {
            tx.event(&kind, &k, now).await?;
        }
        tx.audit(
            NewAudit::new(&format!("gateway_{}", t.as_str()), "ok", actor)
                .gateway(&k)
                .detail(&format!("{} -> {}", current.status, t.target())),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(GatewayRecord {
            status: t.target(),
            updated_ms: now,
            ..current
        })
    }

    // ----- policy ------------------------------------------------------

    /// Adds a policy rule.
    pub async fn add_policy(
        &self,
        peripheral: &PeripheralSelector,
        gateway: &GatewaySelector,
        scope: Scope,
        lifetimes: Lifetimes,
        actor: &str,
    ) -> Result<PolicyRule, StoreError> {
        let mut tx = self.begin_write().await?;
        let (pk, pv) = peripheral.to_columns();
        let (gk, gv) = gateway.to_columns();
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO policies (peripheral_kind, peripheral_value, gateway_kind, gateway_value, \
             scope, session_s, resumption_s, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (peripheral_kind, peripheral_value, gateway_kind, gateway_value) DO NOTHING \
             RETURNING id",
        )
        .bind(pk)
        .bind(pv)
        .bind(gk)
        .bind(gv)
        .bind(i64::from(scope.0))
        .bind(i64::from(lifetimes.session_s))
        .bind(i64::from(lifetimes.resumption_s))
        .bind(now)
        .fetch_optional(&mut *tx.tx)
        .await?
        .ok_or(StoreError::Conflict(Conflict::Policy))?;
        let id: i64 = row.try_get("id")?;
        tx.audit(
            NewAudit::new("policy_add", "ok", actor).detail(&format!(
                "rule {id}: {peripheral} -> {gateway} scope={} session_s={} resumption_s={}",
                scope.0, lifetimes.session_s, lifetimes.resumption_s
            )),
            now,
        )
        .await?;
        // No feed event: a grant is the union of the matching rules
        // (`model::grant`), so a new rule never takes anything away, and
        // gateways close every session on `policy_changed` (SPEC.md §10.5).
        tx.commit().await?;
        Ok(PolicyRule {
            id,
            peripheral: peripheral.clone(),
            gateway: gateway.clone(),
            scope,
            lifetimes,
            created_ms: now,
        })
    }

    /// Removes a policy rule.
    pub async fn remove_policy(&self, id: i64, actor: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("DELETE FROM policies WHERE id = $1")
            .bind(id)
            .execute(&mut *tx.tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        let now = now_ms();
        tx.audit(
            NewAudit::new("policy_remove", "ok", actor).detail(&format!("rule {id}")),
            now,
        )
        .await?;
        // A removed rule may take a grant away: gateways close the sessions
        // and drop the tickets it may have allowed (SPEC.md §10.5).
        tx.event("policy_changed", &id.to_string(), now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// All policy rules, by id.
    pub async fn list_policies(&self) -> Result<Vec<PolicyRule>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, peripheral_kind, peripheral_value, gateway_kind, gateway_value, scope, \
             session_s, resumption_s, created_ms FROM policies ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(policy_from_row).collect()
    }

    // ----- replay cache ------------------------------------------------

    /// Whether `e_P` was recorded (the cheap pre-crypto replay check).
    pub async fn replay_seen(&self, ephemeral: &DhPublic) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 AS one FROM replay_cache WHERE ephemeral = $1")
            .bind(hex::encode(ephemeral.as_bytes()))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Deletes replay entries, lockouts and attachments that have expired.
    /// Returns the number of replay entries removed.
    pub async fn purge(&self, replay_before_ms: i64, now: i64) -> Result<u64, StoreError> {
        let n = sqlx::query("DELETE FROM replay_cache WHERE seen_ms < $1")
            .bind(replay_before_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM lockouts WHERE until_ms < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM attachments WHERE expires_ms < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM session_detaches WHERE expires_ms < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM clone_suspicions WHERE expires_ms < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM clone_alerts WHERE expires_ms < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(n)
    }

    // ----- lockouts ----------------------------------------------------

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

    // ----- attachments (clone detection) -------------------------------

    /// Gateways other than `gateway` on which `peripheral` is attached at `now`.
    pub async fn attached_elsewhere(
        &self,
        peripheral: &PeripheralId,
        gateway: &PublicKey,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = attached_elsewhere_query(peripheral, gateway, now)
            .fetch_all(&self.pool)
            .await?;
        gateway_keys(&rows)
    }

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

    // ----- revocation feed ---------------------------------------------

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

    // ----- audit -------------------------------------------------------

    /// Audit entries matching `filter`, by sequence number.
    pub async fn audit_query(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        audit::query(&self.pool, filter).await
    }

    /// Recomputes the whole chain, from the signed checkpoint if entries
    /// were pruned (checked with `key`); reports the first broken link.
    pub async fn audit_verify(&self, key: &CheckpointKey) -> Result<AuditVerdict, StoreError> {
        audit::verify(&self.pool, key).await
    }

    /// Deletes the audit entries written before `cutoff_ms`, behind a
    /// checkpoint signed with `key` (see the doc of the `audit` module).
    pub async fn audit_prune(
        &self,
        cutoff_ms: i64,
        key: &CheckpointKey,
        actor: &str,
    ) -> Result<PruneOutcome, PruneError> {
        audit::prune(self, cutoff_ms, key, actor).await
    }

    /// The longest lifetime, `max(session_s, resumption_s)`, any policy rule
    /// grants, seconds (0 without rules).
    pub async fn longest_policy_lifetime_s(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT MAX(session_s) AS s, MAX(resumption_s) AS r FROM policies")
            .fetch_one(&self.pool)
            .await?;
        let s = row.try_get::<Option<i64>, _>("s")?.unwrap_or(0);
        let r = row.try_get::<Option<i64>, _>("r")?.unwrap_or(0);
        Ok(s.max(r))
    }
}

/// What the store holds of one session for clone detection (SPEC.md §10.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Neither its attach nor its detach was reported.
    Unknown,
    /// Attached, not yet detached.
    Open {
        /// When it started (backend time, from the report's age).
        started_ms: i64,
    },
    /// Its detach was reported.
    Finished {
        /// When it started.
        started_ms: i64,
        /// When it last heard the peripheral.
        heard_ms: i64,
        /// Whether its attach was reported too.
        attach_seen: bool,
    },
}

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

/// A session of a peripheral on another gateway, as clone detection judges
/// a new one against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherSession {
    /// The other gateway's key.
    pub gateway: String,
    /// Its session id, hex.
    pub session: String,
    /// When it started (backend time).
    pub started_ms: i64,
    /// When it last heard the peripheral; `None` while it is open.
    pub heard_ms: Option<i64>,
}

/// A write transaction holding the global writer lock. Dropping it without
/// [`commit`](Self::commit) rolls everything back.
pub struct WriteTx<'c> {
    pub(crate) tx: Transaction<'c, Any>,
    head_seq: i64,
    head_hash: [u8; 32],
    wrote_events: bool,
}

impl std::fmt::Debug for WriteTx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTx")
            .field("head_seq", &self.head_seq)
            .finish_non_exhaustive()
    }
}

/// What a committed write transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Whether it wrote revocation-feed events (subscribers should wake up).
    pub wrote_events: bool,
    /// The audit chain's last sequence number after the commit.
    pub audit_seq: i64,
}

impl WriteTx<'_> {
    /// Appends an entry to the audit chain; returns its sequence number.
    pub async fn audit(&mut self, entry: NewAudit, at_ms: i64) -> Result<i64, StoreError> {
        let seq = self.head_seq + 1;
        let hash = audit::entry_hash(&self.head_hash, seq, at_ms, &entry);
        audit::insert(&mut self.tx, seq, at_ms, &entry, &self.head_hash, &hash).await?;
        self.head_seq = seq;
        self.head_hash = hash;
        Ok(seq)
    }

    /// Appends several entries with one statement per 100 entries; returns
    /// the last sequence number.
    pub async fn audit_many(
        &mut self,
        entries: &[NewAudit],
        at_ms: i64,
    ) -> Result<i64, StoreError> {
        // Small statements: sqlx binds SQLite's `$N` parameters by looking up
        // each one's name, a scan of the statement's parameter list, so a
        // statement's binding costs the square of its parameters (ten per
        // row). 24 rows keep that below the cost of a round trip.
        for chunk in entries.chunks(24) {
            let mut rows = Vec::with_capacity(chunk.len());
            for e in chunk {
                let seq = self.head_seq + 1;
                let hash = audit::entry_hash(&self.head_hash, seq, at_ms, e);
                rows.push((seq, e, self.head_hash, hash));
                self.head_seq = seq;
                self.head_hash = hash;
            }
            audit::insert_many(&mut self.tx, at_ms, &rows).await?;
        }
        Ok(self.head_seq)
    }

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

    /// Gateways other than `gateway` on which `peripheral` is attached at
    /// `now`, read inside this transaction: under the writer lock, so two
    /// gateways reporting the same peripheral at once cannot both see the
    /// other absent.
    pub async fn attached_elsewhere(
        &mut self,
        peripheral: &PeripheralId,
        gateway: &PublicKey,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = attached_elsewhere_query(peripheral, gateway, now)
            .fetch_all(&mut *self.tx)
            .await?;
        gateway_keys(&rows)
    }

    /// What the store holds of session `session` of `peripheral` on
    /// `gateway`: nothing, an open attachment, or its detach (its attach
    /// may come later, SPEC.md §10.5).
    pub async fn session_state(
        &mut self,
        peripheral: &PeripheralId,
        gateway: &str,
        session: &str,
    ) -> Result<SessionState, StoreError> {
        let (p, g, s) = (
            peripheral.to_string(),
            gateway.to_owned(),
            session.to_owned(),
        );
        let open = sqlx::query(
            "SELECT attached_ms FROM attachments WHERE peripheral_id = $1 AND gateway_key = $2 \
             AND session_id = $3",
        )
        .bind(p.clone())
        .bind(g.clone())
        .bind(s.clone())
        .fetch_optional(&mut *self.tx)
        .await?;
        if let Some(row) = open {
            return Ok(SessionState::Open {
                started_ms: row.try_get("attached_ms")?,
            });
        }
        let done = sqlx::query(
            "SELECT detached_ms, started_ms, attach_seen FROM session_detaches \
             WHERE peripheral_id = $1 AND gateway_key = $2 AND session_id = $3",
        )
        .bind(p)
        .bind(g)
        .bind(s)
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(match done {
            None => SessionState::Unknown,
            Some(row) => {
                let heard_ms: i64 = row.try_get("detached_ms")?;
                let started_ms: Option<i64> = row.try_get("started_ms")?;
                let attach_seen: i32 = row.try_get("attach_seen")?;
                SessionState::Finished {
                    started_ms: started_ms.unwrap_or(heard_ms),
                    heard_ms,
                    attach_seen: attach_seen != 0,
                }
            }
        })
    }

    /// The sessions of `peripheral` on gateways other than `gateway` that
    /// clone detection judges a new attach against (SPEC.md §10.5): the
    /// open ones, and the finished ones whose attach was reported (a pair is
    /// judged at the second of its two attaches), none expired at `now`.
    pub async fn sessions_elsewhere(
        &mut self,
        peripheral: &PeripheralId,
        gateway: &PublicKey,
        now: i64,
    ) -> Result<Vec<OtherSession>, StoreError> {
        let (p, g) = (peripheral.to_string(), gateway.to_string());
        let open = sqlx::query(
            "SELECT gateway_key, session_id, attached_ms FROM attachments \
             WHERE peripheral_id = $1 AND gateway_key <> $2 AND expires_ms > $3",
        )
        .bind(p.clone())
        .bind(g.clone())
        .bind(now)
        .fetch_all(&mut *self.tx)
        .await?;
        let done = sqlx::query(
            "SELECT gateway_key, session_id, started_ms, detached_ms FROM session_detaches \
             WHERE peripheral_id = $1 AND gateway_key <> $2 AND expires_ms > $3 \
             AND attach_seen = 1",
        )
        .bind(p)
        .bind(g)
        .bind(now)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut out = Vec::with_capacity(open.len() + done.len());
        for row in open {
            out.push(OtherSession {
                gateway: row.try_get("gateway_key")?,
                session: row.try_get("session_id")?,
                started_ms: row.try_get("attached_ms")?,
                heard_ms: None,
            });
        }
        for row in done {
            let heard_ms: i64 = row.try_get("detached_ms")?;
            let started_ms: Option<i64> = row.try_get("started_ms")?;
            out.push(OtherSession {
                gateway: row.try_get("gateway_key")?,
                session: row.try_get("session_id")?,
                started_ms: started_ms.unwrap_or(heard_ms),
                heard_ms: Some(heard_ms),
            });
        }
        out.sort_by(|a, b| (&a.gateway, &a.session).cmp(&(&b.gateway, &b.session)));
        Ok(out)
    }

    /// Records the first attach report of session `session` of `peripheral`
    /// on `gateway`, which started at `started_ms`: open until its detach or
    /// `expires_ms`; if its detach came first, only marks its attach seen.
    /// Idempotent: a retried attach of an open session renews it.
    pub async fn attach(
        &mut self,
        peripheral: &PeripheralId,
        gateway: &PublicKey,
        session: &[u8; 8],
        started_ms: i64,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        let (p, g, s) = (
            peripheral.to_string(),
            gateway.to_string(),
            hex::encode(session),
        );
        let finished = sqlx::query(
            "UPDATE session_detaches SET attach_seen = 1, \
             started_ms = COALESCE(started_ms, $4) \
             WHERE peripheral_id = $1 AND gateway_key = $2 AND session_id = $3",
        )
        .bind(p.clone())
        .bind(g.clone())
        .bind(s.clone())
        .bind(started_ms)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        if finished > 0 {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO attachments (peripheral_id, gateway_key, session_id, attached_ms, \
             expires_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (peripheral_id, gateway_key, session_id) \
             DO UPDATE SET expires_ms = excluded.expires_ms",
        )
        .bind(p)
        .bind(g)
        .bind(s)
        .bind(started_ms)
        .bind(expires_ms)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Records that session `session` of `peripheral` on `gateway` ended,
    /// having started at `started_ms` and last heard the peripheral at
    /// `heard_ms`: removes its attachment (only that session's) and keeps
    /// its times until `expires_ms`, so that its attach, if it arrives
    /// later, neither revives it nor escapes judgment. Idempotent.
    pub async fn detach(
        &mut self,
        peripheral: &PeripheralId,
        gateway: &PublicKey,
        session: &[u8; 8],
        started_ms: i64,
        heard_ms: i64,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        let (p, g, s) = (
            peripheral.to_string(),
            gateway.to_string(),
            hex::encode(session),
        );
        // The start its attach recorded, if it came first (a report without
        // times says only when it arrived).
        let attached: Option<i64> = sqlx::query(
            "DELETE FROM attachments WHERE peripheral_id = $1 AND gateway_key = $2 \
             AND session_id = $3 RETURNING attached_ms",
        )
        .bind(p.clone())
        .bind(g.clone())
        .bind(s.clone())
        .fetch_optional(&mut *self.tx)
        .await?
        .map(|row| row.try_get("attached_ms"))
        .transpose()?;
        sqlx::query(
            "INSERT INTO session_detaches (peripheral_id, gateway_key, session_id, detached_ms, \
             started_ms, attach_seen, expires_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (peripheral_id, gateway_key, session_id) DO NOTHING",
        )
        .bind(p)
        .bind(g)
        .bind(s)
        .bind(heard_ms)
        .bind(attached.unwrap_or(started_ms))
        .bind(i32::from(attached.is_some()))
        .bind(expires_ms)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

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
        self.audit(
            NewAudit::new("peripheral_enroll", "ok", actor)
                .peripheral(&id)
                .detail(&format!("status={}", new.status)),
            now,
        )
        .await?;
        Ok(EnrollOutcome::Created)
    }

    /// Commits, advancing the audit head.
    pub async fn commit(mut self) -> Result<Committed, StoreError> {
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(self.head_seq)
            .bind(hex::encode(self.head_hash))
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await?;
        Ok(Committed {
            wrote_events: self.wrote_events,
            audit_seq: self.head_seq,
        })
    }
}

/// Whether an existing record is what `new` would enroll (status aside: the
/// same row again is a no-op even after a lifecycle change).
fn same_enrollment(existing: &PeripheralRecord, new: &NewPeripheral) -> bool {
    existing.public_key == new.public_key
        && existing.group == new.group
        && existing.attributes == new.attributes
}

/// The feed event a transition produces, if any.
fn event_kind(subject: &str, t: Transition) -> Option<String> {
    match t {
        Transition::Activate => None,
        Transition::Suspend => Some(format!("{subject}_suspended")),
        Transition::Reinstate => Some(format!("{subject}_reinstated")),
        Transition::Revoke => Some(format!("{subject}_revoked")),
    }
}

fn to_u32(v: i64, table: &'static str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(table))
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

fn peripheral_from_row(
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

fn gateway_from_row(row: &sqlx::any::AnyRow) -> Result<GatewayRecord, StoreError> {
    const T: &str = "gateways";
    let key: String = row.try_get("public_key")?;
    let status: String = row.try_get("status")?;
    Ok(GatewayRecord {
        public_key: PublicKey::from_hex(&key).ok_or(StoreError::Corrupt(T))?,
        name: row.try_get("name")?,
        group: row.try_get("grp")?,
        site: row.try_get("site")?,
        status: Status::parse(&status).ok_or(StoreError::Corrupt(T))?,
        created_ms: row.try_get("created_ms")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

fn policy_from_row(row: &sqlx::any::AnyRow) -> Result<PolicyRule, StoreError> {
    const T: &str = "policies";
    let pk: String = row.try_get("peripheral_kind")?;
    let pv: String = row.try_get("peripheral_value")?;
    let gk: String = row.try_get("gateway_kind")?;
    let gv: String = row.try_get("gateway_value")?;
    Ok(PolicyRule {
        id: row.try_get("id")?,
        peripheral: PeripheralSelector::from_columns(&pk, &pv).ok_or(StoreError::Corrupt(T))?,
        gateway: GatewaySelector::from_columns(&gk, &gv).ok_or(StoreError::Corrupt(T))?,
        scope: Scope(to_u32(row.try_get("scope")?, T)?),
        lifetimes: Lifetimes {
            session_s: to_u32(row.try_get("session_s")?, T)?,
            resumption_s: to_u32(row.try_get("resumption_s")?, T)?,
        },
        created_ms: row.try_get("created_ms")?,
    })
}

/// The attachments of `peripheral` on gateways other than `gateway` that have
/// not expired at `now`: one query for the pool and for a write transaction.
fn attached_elsewhere_query<'q>(
    peripheral: &PeripheralId,
    gateway: &PublicKey,
    now: i64,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(
        "SELECT DISTINCT gateway_key FROM attachments WHERE peripheral_id = $1 \
         AND gateway_key <> $2 AND expires_ms > $3 ORDER BY gateway_key",
    )
    .bind(peripheral.to_string())
    .bind(gateway.to_string())
    .bind(now)
}

/// The gateway keys of [`attached_elsewhere_query`]'s rows.
fn gateway_keys(rows: &[sqlx::any::AnyRow]) -> Result<Vec<String>, StoreError> {
    rows.iter().map(|r| Ok(r.try_get("gateway_key")?)).collect()
}
