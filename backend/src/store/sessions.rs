//! Sessions and attachments: what gateways report of their sessions, for clone
//! detection (SPEC.md §10.5).

use sqlx::{Any, Row};
use vouch_proto::keys::{PeripheralId, PublicKey};

use super::{Store, StoreError, WriteTx};

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

/// One stored session of a peripheral: an attachment (open) or a detach.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredSession {
    gateway: String,
    session: String,
    held: Held,
    expires_ms: i64,
}

/// What is held of a stored session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Attached, not yet detached.
    Open { started_ms: i64 },
    /// Its detach: when it last heard the device, the start recorded with
    /// it if any, and whether its attach was reported too.
    Finished {
        started_ms: Option<i64>,
        heard_ms: i64,
        attach_seen: bool,
    },
}

/// A peripheral's stored sessions, read once for a report's judgment
/// ([`WriteTx::sessions_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeripheralSessions {
    sessions: Vec<StoredSession>,
}

impl PeripheralSessions {
    /// What is held of session `session` on `gateway`: nothing, an open
    /// attachment, or its detach (its attach may come later, SPEC.md
    /// §10.5).
    pub fn state(&self, gateway: &str, session: &str) -> SessionState {
        let mine = || {
            self.sessions
                .iter()
                .filter(|s| s.gateway == gateway && s.session == session)
        };
        let open = mine().find_map(|s| match s.held {
            Held::Open { started_ms } => Some(SessionState::Open { started_ms }),
            Held::Finished { .. } => None,
        });
        let finished = || {
            mine().find_map(|s| match s.held {
                Held::Finished {
                    started_ms,
                    heard_ms,
                    attach_seen,
                } => Some(SessionState::Finished {
                    started_ms: started_ms.unwrap_or(heard_ms),
                    heard_ms,
                    attach_seen,
                }),
                Held::Open { .. } => None,
            })
        };
        open.or_else(finished).unwrap_or(SessionState::Unknown)
    }

    /// The sessions on gateways other than `gateway` that clone detection
    /// judges a new attach against (SPEC.md §10.5): the open ones, and the
    /// finished ones whose attach was reported (a pair is judged at the
    /// second of its two attaches), none expired at `now`; ordered by
    /// gateway and session, the open ones first.
    pub fn elsewhere(&self, gateway: &str, now: i64) -> Vec<OtherSession> {
        let live = self
            .sessions
            .iter()
            .filter(|s| s.gateway != gateway && s.expires_ms > now);
        let other = |s: &StoredSession, started_ms, heard_ms| OtherSession {
            gateway: s.gateway.clone(),
            session: s.session.clone(),
            started_ms,
            heard_ms,
        };
        let open = live.clone().filter_map(|s| match s.held {
            Held::Open { started_ms } => Some(other(s, started_ms, None)),
            Held::Finished { .. } => None,
        });
        let done = live.filter_map(|s| match s.held {
            Held::Finished {
                started_ms,
                heard_ms,
                attach_seen: true,
            } => Some(other(s, started_ms.unwrap_or(heard_ms), Some(heard_ms))),
            _ => None,
        });
        let mut out: Vec<OtherSession> = open.chain(done).collect();
        out.sort_by(|a, b| (&a.gateway, &a.session).cmp(&(&b.gateway, &b.session)));
        out
    }
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

impl Store {
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
}

impl WriteTx<'_> {
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

    /// What the store holds of `peripheral`'s sessions that a report of its
    /// session `session` on `gateway` is judged against, in one statement
    /// (under the writer lock, with the rest of the report's judgment):
    /// that session's attachment or detach, and every unexpired one.
    pub async fn sessions_of(
        &mut self,
        peripheral: &PeripheralId,
        gateway: &str,
        session: &str,
        now: i64,
    ) -> Result<PeripheralSessions, StoreError> {
        let rows = sqlx::query(
            "SELECT 0 AS done, gateway_key, session_id, attached_ms AS started_ms, \
             NULL AS detached_ms, 0 AS attach_seen, expires_ms FROM attachments \
             WHERE peripheral_id = $1 AND (expires_ms > $2 OR (gateway_key = $3 AND session_id = $4)) \
             UNION ALL \
             SELECT 1 AS done, gateway_key, session_id, started_ms, detached_ms, attach_seen, \
             expires_ms FROM session_detaches \
             WHERE peripheral_id = $1 AND (expires_ms > $2 OR (gateway_key = $3 AND session_id = $4))",
        )
        .bind(peripheral.to_string())
        .bind(now)
        .bind(gateway.to_owned())
        .bind(session.to_owned())
        .fetch_all(&mut *self.tx)
        .await?;
        let mut sessions = Vec::with_capacity(rows.len());
        for row in rows {
            let done: i32 = row.try_get("done")?;
            let held = if done == 0 {
                Held::Open {
                    started_ms: row.try_get("started_ms")?,
                }
            } else {
                let attach_seen: i32 = row.try_get("attach_seen")?;
                Held::Finished {
                    started_ms: row.try_get("started_ms")?,
                    heard_ms: row.try_get("detached_ms")?,
                    attach_seen: attach_seen != 0,
                }
            };
            sessions.push(StoredSession {
                gateway: row.try_get("gateway_key")?,
                session: row.try_get("session_id")?,
                held,
                expires_ms: row.try_get("expires_ms")?,
            });
        }
        Ok(PeripheralSessions { sessions })
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
}
