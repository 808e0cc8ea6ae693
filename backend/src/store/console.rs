//! Web console sessions ([`crate::console`]) and the overview's counts.

use sqlx::Row;

use super::{now_ms, NewAudit, Store, StoreError};
use crate::access::{Caller, Role, TokenHash};

/// Live console sessions one token may have; a login beyond it ends the
/// oldest.
pub const MAX_SESSIONS_PER_TOKEN: i64 = 10;

/// A console session as a request finds it.
#[derive(Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// Who is logged in (through the token the login presented).
    pub caller: Caller,
    /// The session's CSRF token (hex).
    pub csrf: String,
}

impl std::fmt::Debug for ConsoleSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSession")
            .field("caller", &self.caller)
            .finish_non_exhaustive()
    }
}

/// What the console's overview counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overview {
    /// Gateways that polled the feed since the cutoff given.
    pub gateways_online: i64,
    /// Gateways enrolled.
    pub gateways: i64,
    /// Vouch decisions since the hour's start, by outcome (`vouched`,
    /// refusals by reason are summarized in the audit log).
    pub vouches_last_hour: Vec<(String, i64)>,
    /// Lockout and clone alerts in the last 24 hours.
    pub alerts_last_day: i64,
}

impl Store {
    /// Opens a console session for `caller` (its id's hash, its CSRF token),
    /// valid until `expires_ms`, and records the login in the audit log.
    /// Expired sessions are deleted on the way.
    pub async fn open_console_session(
        &self,
        id_hash: &TokenHash,
        caller: &Caller,
        csrf: &str,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        sqlx::query("DELETE FROM console_sessions WHERE expires_ms < $1")
            .bind(now)
            .execute(&mut *tx.tx)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions (id_hash, token_id, csrf, created_ms, expires_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id_hash.to_hex())
        .bind(caller.token_id.clone())
        .bind(csrf.to_owned())
        .bind(now)
        .bind(expires_ms)
        .execute(&mut *tx.tx)
        .await?;
        // At most MAX_SESSIONS_PER_TOKEN live sessions per token: the
        // oldest go (a login loop cannot grow the table).
        sqlx::query(
            "DELETE FROM console_sessions WHERE token_id = $1 AND id_hash NOT IN \
             (SELECT id_hash FROM console_sessions WHERE token_id = $1 \
              ORDER BY created_ms DESC, id_hash LIMIT $2)",
        )
        .bind(caller.token_id.clone())
        .bind(MAX_SESSIONS_PER_TOKEN)
        .execute(&mut *tx.tx)
        .await?;
        tx.audit(
            NewAudit::new("console_login", "ok", &caller.actor())
                .detail(&format!("token={}", caller.token_id)),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The live session whose id hashes to `id_hash`: not expired, its token
    /// not revoked, its operator not removed.
    pub async fn console_session(
        &self,
        id_hash: &TokenHash,
        now: i64,
    ) -> Result<Option<ConsoleSession>, StoreError> {
        let row = sqlx::query(
            "SELECT s.csrf, s.token_id, o.name, o.role FROM console_sessions s \
             JOIN operator_tokens t ON t.id = s.token_id \
             JOIN operators o ON o.name = t.operator \
             WHERE s.id_hash = $1 AND s.expires_ms > $2 \
             AND t.revoked_ms IS NULL AND o.removed_ms IS NULL",
        )
        .bind(id_hash.to_hex())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let role: String = row.try_get("role")?;
        Ok(Some(ConsoleSession {
            caller: Caller {
                name: row.try_get("name")?,
                role: Role::parse(&role).ok_or(StoreError::Corrupt("operators"))?,
                token_id: row.try_get("token_id")?,
            },
            csrf: row.try_get("csrf")?,
        }))
    }

    /// Ends a console session (logout).
    pub async fn close_console_session(&self, id_hash: &TokenHash) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
            .bind(id_hash.to_hex())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The overview's counts at `now`; gateways count as online if they
    /// polled after `online_after_ms`.
    pub async fn overview(&self, now: i64, online_after_ms: i64) -> Result<Overview, StoreError> {
        let g = sqlx::query(
            "SELECT COUNT(*) AS n, COUNT(CASE WHEN last_poll_ms > $1 THEN 1 END) AS online \
             FROM gateways",
        )
        .bind(online_after_ms)
        .fetch_one(&self.pool)
        .await?;
        let vouches = sqlx::query(
            "SELECT outcome, COUNT(*) AS n FROM audit_log WHERE at_ms > $1 AND action = 'vouch' \
             GROUP BY outcome ORDER BY outcome",
        )
        .bind(now - 3_600_000)
        .fetch_all(&self.pool)
        .await?;
        let alerts = sqlx::query(
            "SELECT COUNT(*) AS n FROM audit_log WHERE at_ms > $1 \
             AND action IN ('lockout', 'clone_alert')",
        )
        .bind(now - 86_400_000)
        .fetch_one(&self.pool)
        .await?;
        Ok(Overview {
            gateways_online: g.try_get("online")?,
            gateways: g.try_get("n")?,
            vouches_last_hour: vouches
                .iter()
                .map(|r| Ok((r.try_get("outcome")?, r.try_get("n")?)))
                .collect::<Result<_, StoreError>>()?,
            alerts_last_day: alerts.try_get("n")?,
        })
    }
}
