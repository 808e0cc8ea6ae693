//! The audit log: append-only and hash-chained.
//!
//! Entry `n` stores `hash_n = SHA-256(canonical(n))` where
//!
//! ```text
//! canonical(n) = "vouch/1 audit" ‖ 0x00 ‖ hash_{n-1} (32 bytes; zeros for n = 1)
//!              ‖ u64be(seq) ‖ i64be(at_ms)
//!              ‖ field(action) ‖ field(outcome) ‖ field(reason) ‖ field(actor)
//!              ‖ opt(peripheral_id) ‖ opt(gateway_key) ‖ field(detail)
//! field(s)     = u32be(len(s)) ‖ s (UTF-8)
//! opt(None)    = 0x00,   opt(Some(s)) = 0x01 ‖ field(s)
//! ```
//!
//! Changing, inserting, deleting or reordering any entry breaks the chain at
//! that entry (or, for a truncated tail, at the head row, which records the
//! last sequence number and hash). [`verify`] recomputes everything and names
//! the first broken link.

use sha2::{Digest, Sha256};
use sqlx::{Any, AnyPool, Row, Transaction};

use super::StoreError;
use crate::model::ser_display;

const LABEL: &[u8] = b"vouch/1 audit\0";

/// An entry to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAudit {
    /// What was decided or done (`vouch`, `peripheral_revoke`, `lockout`, …).
    pub action: String,
    /// `ok`, `vouched`, `denied`, `busy`, `alert`, …
    pub outcome: String,
    /// The exact reason (for refusals: `unknown_peripheral`, `bad_signature`, …).
    pub reason: String,
    /// Who: `admin`, `cli`, `gateway:<key>`, `system`.
    pub actor: String,
    /// The peripheral concerned (claimed id for refusals), if any.
    pub peripheral: Option<String>,
    /// The gateway concerned, if any.
    pub gateway: Option<String>,
    /// Free text.
    pub detail: String,
}

impl NewAudit {
    /// An entry with the required fields.
    pub fn new(action: &str, outcome: &str, actor: &str) -> Self {
        Self {
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            reason: String::new(),
            actor: actor.to_owned(),
            peripheral: None,
            gateway: None,
            detail: String::new(),
        }
    }

    /// Sets the reason.
    pub fn reason(mut self, reason: &str) -> Self {
        self.reason = reason.to_owned();
        self
    }

    /// Sets the peripheral.
    pub fn peripheral(mut self, id: &str) -> Self {
        self.peripheral = Some(id.to_owned());
        self
    }

    /// Sets the gateway.
    pub fn gateway(mut self, key: &str) -> Self {
        self.gateway = Some(key.to_owned());
        self
    }

    /// Sets the detail.
    pub fn detail(mut self, detail: &str) -> Self {
        self.detail = detail.to_owned();
        self
    }
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// When (ms since the Unix epoch).
    pub at_ms: i64,
    /// When, RFC 3339.
    #[serde(serialize_with = "ser_display")]
    pub at: Rfc3339,
    /// See [`NewAudit::action`].
    pub action: String,
    /// See [`NewAudit::outcome`].
    pub outcome: String,
    /// See [`NewAudit::reason`].
    pub reason: String,
    /// See [`NewAudit::actor`].
    pub actor: String,
    /// See [`NewAudit::peripheral`].
    pub peripheral: Option<String>,
    /// See [`NewAudit::gateway`].
    pub gateway: Option<String>,
    /// See [`NewAudit::detail`].
    pub detail: String,
    /// The previous entry's hash (hex).
    pub prev_hash: String,
    /// This entry's hash (hex).
    pub hash: String,
}

/// A timestamp shown as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339(pub i64);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(u64::try_from(self.0).unwrap_or(0));
        write!(f, "{}", humantime::format_rfc3339_millis(t))
    }
}

/// Which entries to return.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only entries about this peripheral.
    pub peripheral: Option<String>,
    /// Only entries about this gateway.
    pub gateway: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// At or after (ms since the Unix epoch).
    pub since_ms: Option<i64>,
    /// Before (ms since the Unix epoch).
    pub until_ms: Option<i64>,
    /// Entries with a sequence number above this (the cursor).
    pub after_seq: Option<i64>,
    /// Page size (capped at [`super::MAX_PAGE`]).
    pub limit: u32,
}

/// The result of recomputing the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AuditVerdict {
    /// Every entry and the head check out.
    Intact {
        /// Entries checked.
        entries: i64,
        /// The head hash (hex).
        head: String,
    },
    /// The first broken link.
    Broken {
        /// Sequence number of the first entry (or the head) that does not check out.
        seq: i64,
        /// What is wrong.
        problem: String,
    },
}

pub(super) fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

fn field(h: &mut Sha256, s: &str) {
    // Entries are far below 4 GiB; saturate rather than wrap if one is not.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    h.update(len.to_be_bytes());
    h.update(s.as_bytes());
}

fn opt(h: &mut Sha256, s: Option<&str>) {
    match s {
        None => h.update([0u8]),
        Some(s) => {
            h.update([1u8]);
            field(h, s);
        }
    }
}

/// The hash of entry `seq` (see the module doc).
pub(super) fn entry_hash(prev: &[u8; 32], seq: i64, at_ms: i64, e: &NewAudit) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(LABEL);
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(at_ms.to_be_bytes());
    field(&mut h, &e.action);
    field(&mut h, &e.outcome);
    field(&mut h, &e.reason);
    field(&mut h, &e.actor);
    opt(&mut h, e.peripheral.as_deref());
    opt(&mut h, e.gateway.as_deref());
    field(&mut h, &e.detail);
    h.finalize().into()
}

pub(super) async fn insert(
    tx: &mut Transaction<'_, Any>,
    seq: i64,
    at_ms: i64,
    e: &NewAudit,
    prev: &[u8; 32],
    hash: &[u8; 32],
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (seq, at_ms, action, outcome, reason, actor, peripheral_id, \
         gateway_key, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(seq)
    .bind(at_ms)
    .bind(e.action.clone())
    .bind(e.outcome.clone())
    .bind(e.reason.clone())
    .bind(e.actor.clone())
    .bind(e.peripheral.clone())
    .bind(e.gateway.clone())
    .bind(e.detail.clone())
    .bind(hex::encode(prev))
    .bind(hex::encode(hash))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// (seq, entry, prev hash, hash) of one row of a multi-row insert.
pub(super) type Pending<'e> = (i64, &'e NewAudit, [u8; 32], [u8; 32]);

pub(super) async fn insert_many(
    tx: &mut Transaction<'_, Any>,
    at_ms: i64,
    rows: &[Pending<'_>],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    // $1 is at_ms, shared; each row takes ten more parameters.
    let values: Vec<String> = (0..rows.len())
        .map(|i| {
            let b = 2 + i * 10;
            format!(
                "(${}, $1, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                b,
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7,
                b + 8,
                b + 9
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO audit_log (seq, at_ms, action, outcome, reason, actor, peripheral_id, \
         gateway_key, detail, prev_hash, hash) VALUES {}",
        values.join(",")
    );
    let mut q = sqlx::query(&sql).bind(at_ms);
    for (seq, e, prev, hash) in rows {
        q = q
            .bind(*seq)
            .bind(e.action.clone())
            .bind(e.outcome.clone())
            .bind(e.reason.clone())
            .bind(e.actor.clone())
            .bind(e.peripheral.clone())
            .bind(e.gateway.clone())
            .bind(e.detail.clone())
            .bind(hex::encode(prev))
            .bind(hex::encode(hash));
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<AuditEntry, StoreError> {
    let at_ms: i64 = row.try_get("at_ms")?;
    Ok(AuditEntry {
        seq: row.try_get("seq")?,
        at_ms,
        at: Rfc3339(at_ms),
        action: row.try_get("action")?,
        outcome: row.try_get("outcome")?,
        reason: row.try_get("reason")?,
        actor: row.try_get("actor")?,
        peripheral: row.try_get("peripheral_id")?,
        gateway: row.try_get("gateway_key")?,
        detail: row.try_get("detail")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

const COLUMNS: &str = "seq, at_ms, action, outcome, reason, actor, peripheral_id, gateway_key, \
                       detail, prev_hash, hash";

pub(super) async fn query(pool: &AnyPool, f: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM audit_log WHERE ($1 IS NULL OR peripheral_id = $1) \
         AND ($2 IS NULL OR gateway_key = $2) AND ($3 IS NULL OR action = $3) \
         AND ($4 IS NULL OR at_ms >= $4) AND ($5 IS NULL OR at_ms < $5) \
         AND seq > $6 ORDER BY seq LIMIT $7"
    );
    let rows = sqlx::query(&sql)
        .bind(f.peripheral.clone())
        .bind(f.gateway.clone())
        .bind(f.action.clone())
        .bind(f.since_ms)
        .bind(f.until_ms)
        .bind(f.after_seq.unwrap_or(0))
        .bind(i64::from(f.limit.clamp(1, super::MAX_PAGE)))
        .fetch_all(pool)
        .await?;
    rows.iter().map(from_row).collect()
}

pub(super) async fn verify(pool: &AnyPool) -> Result<AuditVerdict, StoreError> {
    let mut prev = [0u8; 32];
    let mut expect_seq = 1i64;
    let page = 2000i64;
    loop {
        let sql = format!("SELECT {COLUMNS} FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2");
        let rows = sqlx::query(&sql)
            .bind(expect_seq)
            .bind(page)
            .fetch_all(pool)
            .await?;
        let n = rows.len();
        for row in rows {
            let e = from_row(&row)?;
            if e.seq != expect_seq {
                return Ok(AuditVerdict::Broken {
                    seq: expect_seq,
                    problem: format!("entry {expect_seq} is missing (next is {})", e.seq),
                });
            }
            if e.prev_hash != hex::encode(prev) {
                return Ok(AuditVerdict::Broken {
                    seq: e.seq,
                    problem: "prev_hash does not match the previous entry's hash".into(),
                });
            }
            let fields = NewAudit {
                action: e.action,
                outcome: e.outcome,
                reason: e.reason,
                actor: e.actor,
                peripheral: e.peripheral,
                gateway: e.gateway,
                detail: e.detail,
            };
            let h = entry_hash(&prev, e.seq, e.at_ms, &fields);
            if hex::encode(h) != e.hash {
                return Ok(AuditVerdict::Broken {
                    seq: e.seq,
                    problem: "hash does not match the entry's contents".into(),
                });
            }
            prev = h;
            expect_seq += 1;
        }
        if (n as i64) < page {
            break;
        }
    }
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(pool)
        .await?;
    let head_seq: i64 = head.try_get("seq")?;
    let head_hash: String = head.try_get("hash")?;
    let last = expect_seq - 1;
    if head_seq != last || head_hash != hex::encode(prev) {
        return Ok(AuditVerdict::Broken {
            seq: last + 1,
            problem: format!(
                "the head records entry {head_seq} but the log ends at entry {last} \
                 (entries removed from the end, or the head was edited)"
            ),
        });
    }
    Ok(AuditVerdict::Intact {
        entries: last,
        head: head_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_covers_every_field_and_the_previous_hash() {
        let base = NewAudit::new("vouch", "denied", "gateway:ab")
            .reason("bad_signature")
            .peripheral("0011223344556677")
            .gateway("ab")
            .detail("x");
        let h = entry_hash(&[0; 32], 1, 5, &base);
        assert_ne!(h, entry_hash(&[1; 32], 1, 5, &base));
        assert_ne!(h, entry_hash(&[0; 32], 2, 5, &base));
        assert_ne!(h, entry_hash(&[0; 32], 1, 6, &base));
        let variants = [
            NewAudit {
                action: "vouchx".into(),
                ..base.clone()
            },
            NewAudit {
                outcome: "vouched".into(),
                ..base.clone()
            },
            NewAudit {
                reason: "replay".into(),
                ..base.clone()
            },
            NewAudit {
                actor: "admin".into(),
                ..base.clone()
            },
            NewAudit {
                peripheral: None,
                ..base.clone()
            },
            NewAudit {
                gateway: Some(String::new()),
                ..base.clone()
            },
            NewAudit {
                detail: String::new(),
                ..base.clone()
            },
        ];
        for v in variants {
            assert_ne!(h, entry_hash(&[0; 32], 1, 5, &v), "{v:?}");
        }
        // Field boundaries are unambiguous.
        let a = NewAudit::new("ab", "c", "");
        let b = NewAudit::new("a", "bc", "");
        assert_ne!(
            entry_hash(&[0; 32], 1, 1, &a),
            entry_hash(&[0; 32], 1, 1, &b)
        );
    }
}
