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
//! Each connection keeps up to [`SQLITE_CACHE_KIB`] of pages in its cache
//! (SQLite's default is 2 MiB): a registry of a million devices is a file
//! of a gigabyte or more whose replay and grant indexes take random
//! inserts, and with the default cache each insert reads its pages again.
//! Every write goes through [`Store::begin_write`], whose first statement
//! updates the single `audit_head` row. That takes SQLite's write lock (with
//! the busy timeout, before any snapshot is read) or PostgreSQL's row lock, so
//! writers are serialized across connections, processes and instances. Two
//! things depend on it: the audit hash chain (each entry covers the previous
//! hash) and the revocation feed (event sequence numbers are allocated in
//! commit order, so a subscriber that has seen `seq` has seen everything
//! before it).
//!
//! ## Layout
//!
//! This file holds the [`Store`] (the pool, the dialect, the migrations),
//! the write transaction [`WriteTx`] and the expiry of everything that
//! expires ([`Store::purge`]). The operations are split by aggregate, each
//! file adding its methods to `Store` (reads and single writes) and to
//! `WriteTx` (writes that must share a transaction):
//!
//! | file | aggregate |
//! |---|---|
//! | `peripherals.rs` | peripherals: enrollment, lookups, lifecycle |
//! | `gateways.rs` | gateways: enrollment, lookups, lifecycle |
//! | `policies.rs` | policy rules |
//! | `replay.rs` | the replay cache of `e_P`s |
//! | `lockouts.rs` | lockouts shared by every instance |
//! | `operators.rs` | operators and their API tokens |
//! | `grants.rs` | what each vouch granted, for attach reports |
//! | `sessions.rs` | reported sessions and attachments |
//! | `console.rs` | web console sessions, the overview's counts |
//! | `clones.rs` | clone evidence: pairs waiting for judgment, alerts raised |
//! | `events.rs` | the revocation feed's event log |
//! | `fleet.rs` | fleet visibility: feed polls, where a peripheral was last seen |
//! | `audit.rs` | the hash-chained audit log, its checkpoint and pruning |
//! | `keys.rs` | the backend key ring's status and the anchor updates |
//! | `read.rs` | the vouch path's batched reads ([`Reader`]) |

mod audit;
mod clones;
mod console;
mod events;
mod fleet;
mod gateways;
mod grants;
mod keys;
mod lockouts;
mod operators;
mod peripherals;
mod policies;
mod read;
mod replay;
mod sessions;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Connection, Executor, Row, Transaction};

pub use audit::{
    AuditEntry, AuditFilter, AuditVerdict, CheckpointKey, CheckpointKeyError, NewAudit, PruneError,
    PruneOutcome, Rfc3339,
};
pub use clones::Suspicion;
pub use console::{ConsoleSession, Overview, MAX_SESSIONS_PER_TOKEN};
pub use events::{EventRow, FeedListener, FEED_CHANNEL};
pub use fleet::Presence;
pub use gateways::{CertificateIssue, GatewayFilter, NewGateway};
pub use grants::{Grant, ReportedDevice, StoredGrant};
pub use keys::{InstanceRow, KeyRow, UpdateRow};
pub use peripherals::{EnrollOutcome, NewPeripheral, PeripheralFilter};
pub use read::{AfterOpen, BeforeCrypto, Reader};
pub use sessions::{OtherSession, PeripheralSessions, SessionState};

use crate::model::{Status, Transition};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The most rows a list call returns.
pub const MAX_PAGE: u32 = 1000;

/// The bound parameters `$from, …, $(from + n - 1)`, comma-separated: the
/// list of an `IN (…)` of `n` values.
pub(super) fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Keys per statement of the reads by many keys ([`Store::reported_devices`],
/// [`Store::gateways_by_key`]; one parameter each).
const IDS_CHUNK: usize = 64;

/// A `WHERE` clause of only the conditions asked for: `conditions` are
/// `(asked, "column op")`, each asked one becomes `AND column op $n`, numbered
/// in order. Returns the clause and the next placeholder's number; bind the
/// asked values in the same order. A list query must not say
/// `($1 IS NULL OR column = $1)`: that hides from the planner which index
/// serves the query, and it walks the primary key, filtering every row
/// (benches/registry_million.rs measured it).
pub(crate) fn where_asked(conditions: &[(bool, &str)]) -> (String, usize) {
    let mut sql = String::from(" WHERE TRUE");
    let mut n = 0;
    for (asked, condition) in conditions {
        if *asked {
            n += 1;
            sql.push_str(&format!(" AND {condition} ${n}"));
        }
    }
    (sql, n + 1)
}

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
    /// The subject is not active (pending, suspended or revoked), and the
    /// operation is only for active ones.
    #[error("the subject is {0}, not active")]
    NotActive(Status),
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
    /// The operation exists only for SQLite (a file copy of the database).
    #[error("only an SQLite registry can be copied this way; back PostgreSQL up with pg_dump")]
    NotSqlite,
    /// A file name SQLite cannot be given (it is not UTF-8).
    #[error("{0:?} is not a UTF-8 path")]
    NonUtf8Path(std::path::PathBuf),
    /// An operator of this name exists or existed (names are not reused:
    /// the audit log names operators).
    #[error("an operator of this name exists or existed")]
    OperatorExists,
    /// Removing this operator or revoking this token would leave no admin
    /// with a live token.
    #[error(
        "no admin would be left with a live token (add another admin, or rotate the token instead)"
    )]
    LastAdmin,
    /// A new token drew the id of an existing one (about once in 16 million
    /// tokens): ask again.
    #[error("a new token's id is taken; ask again")]
    TokenIdTaken,
    /// A read this request shared with others that arrived with it failed
    /// (the error is theirs too), or ended without an outcome (`None`: the
    /// server is stopping).
    #[error("a shared read failed: {}", .0.as_ref().map_or_else(|| "it ended without an outcome".to_owned(), ToString::to_string))]
    SharedRead(Option<std::sync::Arc<StoreError>>),
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
    /// Enrolled keys kept decoded ([`crate::keycache`]).
    keys: std::sync::Arc<crate::keycache::KeyCache>,
    engine: Engine,
    /// PostgreSQL: the URL, for the connection that LISTENs for the
    /// revocation feed's NOTIFY ([`Store::feed_listener`]).
    url: Option<DatabaseUrl>,
}

/// A database URL, which may hold a password: never printed.
#[derive(Clone)]
struct DatabaseUrl(std::sync::Arc<str>);

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl(..)")
    }
}

/// Milliseconds since the Unix epoch, on this machine's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The most page cache one SQLite connection keeps, in KiB (8 connections:
/// at most 256 MiB in all, reached only by a database that large).
pub const SQLITE_CACHE_KIB: u32 = 32 * 1024;

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
            // A SQLite connection is a file this process holds: nothing can
            // break it behind the pool's back, and the check before each
            // acquire is one more round trip to its worker thread (of the
            // few a vouch takes). PostgreSQL's are checked (a server restart
            // or a dropped TCP connection).
            .test_before_acquire(engine == Engine::Postgres)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if engine == Engine::Sqlite {
                        // FULL: a commit is durable against power loss, not only
                        // against a crash of this process.
                        conn.execute("PRAGMA synchronous=FULL").await?;
                        conn.execute("PRAGMA busy_timeout=30000").await?;
                        conn.execute("PRAGMA foreign_keys=ON").await?;
                        conn.execute(format!("PRAGMA cache_size=-{SQLITE_CACHE_KIB}").as_str())
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let url = (engine == Engine::Postgres).then(|| DatabaseUrl(url.into()));
        Ok(Self {
            pool,
            keys: Self::key_cache_of_default_size(),
            engine,
            url,
        })
    }

    fn key_cache_of_default_size() -> std::sync::Arc<crate::keycache::KeyCache> {
        std::sync::Arc::new(crate::keycache::KeyCache::new(
            crate::config::Crypto::default().decoded_keys,
        ))
    }

    /// The enrolled keys this store's reads keep decoded.
    pub fn key_cache(&self) -> &crate::keycache::KeyCache {
        &self.keys
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
            keys: Self::key_cache_of_default_size(),
            engine: Engine::Sqlite,
            url: None,
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
            keys: self.keys.clone(),
        })
    }

    /// Starts a write transaction: takes the global writer lock (the audit
    /// head row) before anything else. See the module doc.
    pub async fn begin_write(&self) -> Result<WriteTx<'static>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(
            "SELECT seq, hash, (SELECT COALESCE(MAX(seq), 0) FROM events) AS event_head \
             FROM audit_head WHERE id = 1",
        )
        .fetch_one(&mut *tx)
        .await?;
        let seq: i64 = row.try_get("seq")?;
        let hash: String = row.try_get("hash")?;
        let event_head: i64 = row.try_get("event_head")?;
        let hash = audit::parse_hash(&hash).ok_or(StoreError::Corrupt("audit_head"))?;
        Ok(WriteTx {
            tx,
            head_seq: seq,
            head_hash: hash,
            event_head,
            wrote_events: false,
            engine: self.engine,
        })
    }

    /// SQLite: writes a consistent copy of the whole database to the new
    /// file `path` (`VACUUM INTO`: one read transaction, so every row is
    /// from the same instant, while writers carry on). PostgreSQL has no
    /// such statement: [`StoreError::NotSqlite`] (its copy is `pg_dump`'s).
    pub async fn snapshot_into(&self, path: &std::path::Path) -> Result<(), StoreError> {
        if self.engine != Engine::Sqlite {
            return Err(StoreError::NotSqlite);
        }
        let path = path
            .to_str()
            .ok_or_else(|| StoreError::NonUtf8Path(path.to_owned()))?;
        sqlx::query("VACUUM INTO $1")
            .bind(path)
            .execute(&self.pool)
            .await?;
        Ok(())
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
}

/// A write transaction holding the global writer lock. Dropping it without
/// [`commit`](Self::commit) rolls everything back.
pub struct WriteTx<'c> {
    pub(crate) tx: Transaction<'c, Any>,
    head_seq: i64,
    head_hash: [u8; 32],
    /// The event log's head when the write lock was taken.
    event_head: i64,
    wrote_events: bool,
    engine: Engine,
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
    /// Commits, advancing the audit head.
    pub async fn commit(mut self) -> Result<Committed, StoreError> {
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(self.head_seq)
            .bind(hex::encode(self.head_hash))
            .execute(&mut *self.tx)
            .await?;
        if self.wrote_events && self.engine == Engine::Postgres {
            // Delivered to every listening instance when (and only if) the
            // transaction commits (events::FEED_CHANNEL).
            sqlx::query(events::NOTIFY_FEED)
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        Ok(Committed {
            wrote_events: self.wrote_events,
            audit_seq: self.head_seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::where_asked;

    #[test]
    fn only_the_asked_conditions_are_numbered_in_order() {
        assert_eq!(
            where_asked(&[(false, "status ="), (true, "grp ="), (true, "id >")]),
            (" WHERE TRUE AND grp = $1 AND id > $2".to_owned(), 3)
        );
        assert_eq!(
            where_asked(&[(false, "a =")]),
            (" WHERE TRUE".to_owned(), 1)
        );
    }
}
