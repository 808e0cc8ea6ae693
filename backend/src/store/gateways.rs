//! Gateways: enrollment, lookups, listing, lifecycle transitions.

use std::collections::HashMap;

use sqlx::Row;
use vouch_proto::keys::PublicKey;

use super::events::event_kind;
use super::{
    now_ms, placeholders, Conflict, EnrollOutcome, NewAudit, Store, StoreError, IDS_CHUNK, MAX_PAGE,
};
use crate::model::{GatewayRecord, Status, Transition};

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

/// Why a gateway client certificate was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateIssue {
    /// At enrollment, by an operator (whatever the gateway's status: an
    /// operator re-enrolls a gateway that lost its certificate).
    Enrollment,
    /// The gateway renewed its own over mutual TLS (active gateways only).
    Renewal,
}

impl CertificateIssue {
    /// The audit action of the issue.
    pub fn action(self) -> &'static str {
        match self {
            CertificateIssue::Enrollment => "gateway_certificate_issue",
            CertificateIssue::Renewal => "gateway_certificate_renew",
        }
    }
}

/// The columns [`gateway_from_row`] reads.
pub(super) const GATEWAY_COLUMNS: &str = "public_key, name, grp, site, status, created_ms, \
     updated_ms, cert_not_after_ms, last_poll_ms";

pub(super) fn gateway_from_row(row: &sqlx::any::AnyRow) -> Result<GatewayRecord, StoreError> {
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
        certificate_expires_ms: row.try_get("cert_not_after_ms")?,
        last_poll_ms: row.try_get("last_poll_ms")?,
    })
}

impl Store {
    /// One gateway.
    pub async fn gateway(&self, key: &PublicKey) -> Result<GatewayRecord, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {GATEWAY_COLUMNS} FROM gateways WHERE public_key = $1"
        ))
        .bind(key.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        gateway_from_row(&row)
    }

    /// The enrolled gateways among `keys`, in a few statements however
    /// many: for each enrolled one its record, or [`StoreError::Corrupt`]
    /// if its row does not parse (that gateway's alone: the others' reads
    /// stand). Unenrolled ones are absent.
    pub async fn gateways_by_key(
        &self,
        keys: &[PublicKey],
    ) -> Result<HashMap<PublicKey, Result<GatewayRecord, StoreError>>, StoreError> {
        let mut hex: Vec<String> = keys.iter().map(ToString::to_string).collect();
        hex.sort_unstable();
        hex.dedup();
        let mut found = HashMap::with_capacity(hex.len());
        for chunk in hex.chunks(IDS_CHUNK) {
            let sql = format!(
                "SELECT {GATEWAY_COLUMNS} FROM gateways WHERE public_key IN ({})",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for key in chunk {
                q = q.bind(key.as_str());
            }
            for row in q.fetch_all(&self.pool).await? {
                // The key matched one asked for, so it parses back to it.
                let key: String = row.try_get("public_key")?;
                let Some(key) = PublicKey::from_hex(&key) else {
                    continue;
                };
                found.insert(key, gateway_from_row(&row));
            }
        }
        Ok(found)
    }

    /// A page of gateways ordered by key.
    pub async fn list_gateways(&self, f: &GatewayFilter) -> Result<Vec<GatewayRecord>, StoreError> {
        let limit = i64::from(f.limit.clamp(1, MAX_PAGE));
        let (status, group, site, after) = (
            f.status.map(|s| s.as_str().to_owned()),
            f.group.clone(),
            f.site.clone(),
            f.after.map(|a| a.to_string()),
        );
        let (clause, next) = super::where_asked(&[
            (status.is_some(), "status ="),
            (group.is_some(), "grp ="),
            (site.is_some(), "site ="),
            (after.is_some(), "public_key >"),
        ]);
        let sql = format!(
            "SELECT {GATEWAY_COLUMNS} FROM gateways{clause} ORDER BY public_key LIMIT ${next}"
        );
        let mut query = sqlx::query(&sql);
        for value in [status, group, site, after].into_iter().flatten() {
            query = query.bind(value);
        }
        let rows = query.bind(limit).fetch_all(&self.pool).await?;
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

    /// Records a client certificate issued to a gateway, with its expiry,
    /// and its audit entry ([`CertificateIssue::action`]). A renewal is only
    /// for an active gateway: otherwise nothing is written and the answer is
    /// [`StoreError::NotActive`] with the gateway's status, checked in the
    /// same transaction as the write, so a suspension or revocation that
    /// commits first is never overtaken. [`StoreError::NotFound`] if the
    /// gateway is not enrolled.
    pub async fn record_gateway_certificate(
        &self,
        key: &PublicKey,
        not_after_ms: i64,
        issue: CertificateIssue,
        actor: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let k = key.to_string();
        let status: String = sqlx::query("SELECT status FROM gateways WHERE public_key = $1")
            .bind(k.clone())
            .fetch_optional(&mut *tx.tx)
            .await?
            .ok_or(StoreError::NotFound)?
            .try_get("status")?;
        let status = Status::parse(&status).ok_or(StoreError::Corrupt("gateways"))?;
        if issue == CertificateIssue::Renewal && status != Status::Active {
            return Err(StoreError::NotActive(status));
        }
        let now = now_ms();
        sqlx::query("UPDATE gateways SET cert_not_after_ms = $1 WHERE public_key = $2")
            .bind(not_after_ms)
            .bind(k.clone())
            .execute(&mut *tx.tx)
            .await?;
        tx.audit(
            NewAudit::new(issue.action(), "ok", actor)
                .gateway(&k)
                .detail(&format!("not_after_ms={not_after_ms}")),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
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
        let row = sqlx::query(&format!(
            "SELECT {GATEWAY_COLUMNS} FROM gateways WHERE public_key = $1"
        ))
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
}
