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
//!
//! ## Retention: the signed checkpoint
//!
//! [`prune`] deletes the oldest entries, up to some entry `s`, and keeps one
//! row in their place, the checkpoint: `s`, `hash_s`, the time of entry `s`,
//! the time it was made, and an Ed25519 signature over
//!
//! ```text
//! "vouch/1 audit checkpoint" ‖ 0x00 ‖ u64be(s) ‖ hash_s ‖ i64be(at_ms_s) ‖ i64be(made_ms)
//! ```
//!
//! [`verify`] then starts from the checkpoint instead of from zero: it checks
//! the signature, and entry `s + 1` must link to `hash_s`. A prune first
//! verifies the entries it deletes (from the previous checkpoint), so it
//! never removes the evidence of a tampered entry, and refuses if the chain
//! is broken there.
//!
//! The signing key is the backend CA's Ed25519 key (`ca-key.pem`), and the
//! checkpoint is checked with the public key in `ca.pem`, never with a key
//! read from the database. Why that key:
//!
//! - The threat is someone who can write the database but not the data
//!   directory: without a signature, they could delete the oldest entries
//!   (or any prefix) and write a checkpoint that makes the rest verify.
//! - The CA key never rotates. The backend signing keys do, and a purged
//!   key's files are deleted, so a checkpoint signed by one could no longer
//!   be checked against a trusted copy (the `backend_keys` table is in the
//!   database, which is what we do not trust here).
//! - No new secret: an HMAC key would be one more file to create, back up
//!   and copy to every instance (created on upgrade, it would differ between
//!   instances), and only its holders could check a checkpoint. `ca.pem` is
//!   public and on every gateway already, so anyone with a copy of the
//!   database and `ca.pem` can verify the log.
//! - No confusion with its other use: the CA signs DER certificates and
//!   CRLs, which begin with `0x30`; a checkpoint message begins with the
//!   label `vouch/1 …` (`0x76`), so neither signature can stand for the other.

use sha2::{Digest, Sha256};
use sqlx::{Any, AnyPool, Row, Transaction};

use super::{Store, StoreError, WriteTx};
use crate::model::ser_display;
use crate::pki::CaMaterial;

const LABEL: &[u8] = b"vouch/1 audit\0";
const CHECKPOINT_LABEL: &[u8] = b"vouch/1 audit checkpoint\0";

/// Entries verified and deleted per transaction of a prune: the writer lock
/// is held for one chunk at a time.
const PRUNE_CHUNK: i64 = 5000;

/// An entry to append.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// When (ms since the Unix epoch).
    pub at_ms: i64,
    /// When, RFC 3339.
    #[serde(serialize_with = "ser_display")]
    #[schemars(with = "String")]
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AuditVerdict {
    /// Every entry and the head check out.
    Intact {
        /// Entries checked.
        entries: i64,
        /// The head hash (hex).
        head: String,
        /// The last pruned entry, if entries were pruned: the chain was
        /// checked from its signed checkpoint.
        #[serde(skip_serializing_if = "Option::is_none")]
        pruned_through: Option<i64>,
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
    let (clause, next) = super::where_asked(&[
        (f.peripheral.is_some(), "peripheral_id ="),
        (f.gateway.is_some(), "gateway_key ="),
        (f.action.is_some(), "action ="),
        (f.since_ms.is_some(), "at_ms >="),
        (f.until_ms.is_some(), "at_ms <"),
        (true, "seq >"),
    ]);
    let sql = format!("SELECT {COLUMNS} FROM audit_log{clause} ORDER BY seq LIMIT ${next}");
    let mut query = sqlx::query(&sql);
    for text in [&f.peripheral, &f.gateway, &f.action].into_iter().flatten() {
        query = query.bind(text.clone());
    }
    for ms in [f.since_ms, f.until_ms].into_iter().flatten() {
        query = query.bind(ms);
    }
    let rows = query
        .bind(f.after_seq.unwrap_or(0))
        .bind(i64::from(f.limit.clamp(1, super::MAX_PAGE)))
        .fetch_all(pool)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Errors of the checkpoint key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointKeyError {
    /// The CA key does not load.
    #[error("the CA key does not load: {0}")]
    Key(#[from] rcgen::Error),
    /// The CA certificate does not hold an Ed25519 key.
    #[error("the CA certificate does not parse: {0}")]
    Cert(#[from] crate::pki::PkiError),
    /// The CA key is not an Ed25519 key.
    #[error("the CA key is not an Ed25519 key")]
    NotEd25519,
    /// This key can only check checkpoints (it was made from `ca.pem`).
    #[error("no signing key: checkpoints need the CA key (ca-key.pem)")]
    VerifyOnly,
}

/// The key that signs and checks audit checkpoints: the backend CA's Ed25519
/// key (see the module doc for why that one).
pub struct CheckpointKey {
    signer: Option<rcgen::KeyPair>,
    /// Checked with SPEC.md §3.4's strict rule, as every signature is.
    public: vouch_proto::keys::PublicKey,
}

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointKey")
            .field("public", &hex::encode(self.public.as_bytes()))
            .field("can_sign", &self.signer.is_some())
            .finish()
    }
}

impl CheckpointKey {
    /// Signs and checks with the CA's key, checked against the CA's
    /// certificate.
    pub fn from_ca(ca: &CaMaterial) -> Result<Self, CheckpointKeyError> {
        let signer = rcgen::KeyPair::from_pem(&ca.key_pem)?;
        if signer.algorithm() != &rcgen::PKCS_ED25519 {
            return Err(CheckpointKeyError::NotEd25519);
        }
        let checker = Self::from_ca_cert(&ca.cert_pem)?;
        if signer.public_key_raw() != checker.public.as_bytes() {
            return Err(CheckpointKeyError::NotEd25519);
        }
        Ok(Self {
            signer: Some(signer),
            public: checker.public,
        })
    }

    /// Checks only, with the public key of the CA certificate (`ca.pem`).
    pub fn from_ca_cert(cert_pem: &str) -> Result<Self, CheckpointKeyError> {
        Ok(Self {
            signer: None,
            public: crate::pki::ca_public_key(cert_pem)?,
        })
    }

    fn sign(&self, msg: &[u8]) -> Result<String, CheckpointKeyError> {
        use rcgen::SigningKey;
        let signer = self.signer.as_ref().ok_or(CheckpointKeyError::VerifyOnly)?;
        Ok(hex::encode(signer.sign(msg)?))
    }

    fn verifies(&self, msg: &[u8], signature_hex: &str) -> bool {
        let mut sig = [0u8; 64];
        if hex::decode_to_slice(signature_hex, &mut sig).is_err() {
            return false;
        }
        self.public
            .verify_strict(msg, &vouch_proto::keys::Signature(sig))
    }
}

/// The signed checkpoint of a pruned chain.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Checkpoint {
    seq: i64,
    hash: [u8; 32],
    at_ms: i64,
    made_ms: i64,
    signature: String,
}

impl Checkpoint {
    fn message(seq: i64, hash: &[u8; 32], at_ms: i64, made_ms: i64) -> Vec<u8> {
        let mut m = Vec::with_capacity(CHECKPOINT_LABEL.len() + 8 + 32 + 16);
        m.extend_from_slice(CHECKPOINT_LABEL);
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(hash);
        m.extend_from_slice(&at_ms.to_be_bytes());
        m.extend_from_slice(&made_ms.to_be_bytes());
        m
    }

    fn verifies(&self, key: &CheckpointKey) -> bool {
        key.verifies(
            &Self::message(self.seq, &self.hash, self.at_ms, self.made_ms),
            &self.signature,
        )
    }
}

async fn load_checkpoint<'e, E>(conn: E) -> Result<Option<Checkpoint>, StoreError>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let Some(row) = sqlx::query(
        "SELECT seq, hash, at_ms, made_ms, signature FROM audit_checkpoint WHERE id = 1",
    )
    .fetch_optional(conn)
    .await?
    else {
        return Ok(None);
    };
    let hash: String = row.try_get("hash")?;
    Ok(Some(Checkpoint {
        seq: row.try_get("seq")?,
        // An unreadable hash fails the signature check below, like any edit.
        hash: parse_hash(&hash).unwrap_or([0xff; 32]),
        at_ms: row.try_get("at_ms")?,
        made_ms: row.try_get("made_ms")?,
        signature: row.try_get("signature")?,
    }))
}

/// Where the chain is known good up to: the last entry checked and its hash.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// The last entry checked (0 before the first).
    seq: i64,
    /// Its hash (zeros before the first).
    hash: [u8; 32],
}

/// The start of the chain: the checkpoint if entries were pruned (its
/// signature checked), else before entry 1.
fn start(cp: Option<&Checkpoint>, key: &CheckpointKey) -> Result<Cursor, Break> {
    match cp {
        None => Ok(Cursor {
            seq: 0,
            hash: [0; 32],
        }),
        Some(cp) if cp.verifies(key) => Ok(Cursor {
            seq: cp.seq,
            hash: cp.hash,
        }),
        Some(cp) => Err(Break {
            seq: cp.seq,
            problem: "the checkpoint's signature does not verify with the CA key (ca.pem): \
                      the checkpoint was edited"
                .into(),
        }),
    }
}

/// Checks the entries after `cur` up to `last` (inclusive; `None`: to the
/// end of the log) and advances `cur`.
async fn check_rows(
    conn: &mut sqlx::AnyConnection,
    cur: &mut Cursor,
    last: Option<i64>,
) -> Result<Result<(), Break>, StoreError> {
    let page = 2000i64;
    loop {
        let limit = match last {
            Some(l) if l - cur.seq < page => l - cur.seq,
            _ => page,
        };
        if limit <= 0 {
            return Ok(Ok(()));
        }
        let sql = format!("SELECT {COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2");
        let rows = sqlx::query(&sql)
            .bind(cur.seq)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
        let n = rows.len() as i64;
        for row in rows {
            let e = from_row(&row)?;
            let expect_seq = cur.seq + 1;
            if e.seq != expect_seq {
                return Ok(Err(Break {
                    seq: expect_seq,
                    problem: format!("entry {expect_seq} is missing (next is {})", e.seq),
                }));
            }
            if e.prev_hash != hex::encode(cur.hash) {
                return Ok(Err(Break {
                    seq: e.seq,
                    problem: "prev_hash does not match the previous entry's hash".into(),
                }));
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
            let h = entry_hash(&cur.hash, e.seq, e.at_ms, &fields);
            if hex::encode(h) != e.hash {
                return Ok(Err(Break {
                    seq: e.seq,
                    problem: "hash does not match the entry's contents".into(),
                }));
            }
            cur.seq = e.seq;
            cur.hash = h;
        }
        if n < limit {
            return Ok(match last {
                Some(l) if cur.seq < l => Err(Break {
                    seq: cur.seq + 1,
                    problem: format!("entry {} is missing", cur.seq + 1),
                }),
                _ => Ok(()),
            });
        }
    }
}

pub(super) async fn verify(
    pool: &AnyPool,
    key: &CheckpointKey,
) -> Result<AuditVerdict, StoreError> {
    let mut conn = pool.acquire().await?;
    let cp = load_checkpoint(&mut *conn).await?;
    let mut cur = match start(cp.as_ref(), key) {
        Ok(c) => c,
        Err(broken) => return Ok(broken.into()),
    };
    if let Err(broken) = check_rows(&mut conn, &mut cur, None).await? {
        return Ok(broken.into());
    }
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?;
    let head_seq: i64 = head.try_get("seq")?;
    let head_hash: String = head.try_get("hash")?;
    let last = cur.seq;
    if head_seq != last || head_hash != hex::encode(cur.hash) {
        return Ok(AuditVerdict::Broken {
            seq: last + 1,
            problem: format!(
                "the head records entry {head_seq} but the log ends at entry {last} \
                 (entries removed from the end, or the head was edited)"
            ),
        });
    }
    let from = cp.as_ref().map_or(0, |c| c.seq);
    Ok(AuditVerdict::Intact {
        entries: last - from,
        head: head_hash,
        pruned_through: cp.map(|c| c.seq),
    })
}

/// What a prune did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PruneOutcome {
    /// Entries deleted.
    pub pruned: i64,
    /// The last pruned entry, now the checkpoint (0 if nothing was ever pruned).
    pub checkpoint_seq: i64,
}

/// Why a prune did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PruneError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The checkpoint could not be signed.
    #[error(transparent)]
    Key(#[from] CheckpointKeyError),
    /// The entries to prune do not verify: pruning would destroy the
    /// evidence. Nothing was deleted from there on.
    #[error("the audit chain is broken at entry {seq} ({problem}); not pruning past it")]
    Broken {
        /// The first broken entry.
        seq: i64,
        /// What is wrong.
        problem: String,
    },
}

/// Prunes the entries written before `cutoff_ms` (the longest prefix of the
/// chain written before it). First, without the writer lock, it verifies
/// every entry it will delete, from the checkpoint: if one does not check
/// out, nothing is deleted. Then, in chunks of [`PRUNE_CHUNK`], each in its
/// own write transaction: verify the chunk again (it could have been edited
/// since), move the checkpoint to its last entry (signed), delete it. The
/// last chunk appends an `audit_prune` entry that records what was pruned.
pub(super) async fn prune(
    store: &super::Store,
    cutoff_ms: i64,
    key: &CheckpointKey,
    actor: &str,
) -> Result<PruneOutcome, PruneError> {
    let target = {
        let mut conn = store.pool.acquire().await?;
        let cp = load_checkpoint(&mut *conn).await?;
        let mut cur = start(cp.as_ref(), key)?;
        // The longest prefix of entries written before the cutoff: an entry
        // from a skewed clock never takes newer ones with it.
        let row = sqlx::query(
            "SELECT (SELECT MIN(seq) FROM audit_log WHERE at_ms >= $1) AS newer, \
             (SELECT MAX(seq) FROM audit_log) AS last",
        )
        .bind(cutoff_ms)
        .fetch_one(&mut *conn)
        .await?;
        let target = match row.try_get::<Option<i64>, _>("newer")? {
            Some(newer) => newer - 1,
            None => row.try_get::<Option<i64>, _>("last")?.unwrap_or(0),
        };
        if target <= cur.seq {
            return Ok(PruneOutcome {
                pruned: 0,
                checkpoint_seq: cur.seq,
            });
        }
        check_rows(&mut conn, &mut cur, Some(target)).await??;
        target
    };
    let mut pruned = 0i64;
    let mut first_pruned = None;
    loop {
        let mut tx = store.begin_write().await?;
        let cp = load_checkpoint(&mut *tx.tx).await?;
        let mut cur = start(cp.as_ref(), key)?;
        if target <= cur.seq {
            // Another prune got there first.
            return Ok(PruneOutcome {
                pruned,
                checkpoint_seq: cur.seq,
            });
        }
        let from = cur.seq + 1;
        let first = *first_pruned.get_or_insert(from);
        let upto = target.min(cur.seq + PRUNE_CHUNK);
        check_rows(&mut tx.tx, &mut cur, Some(upto)).await??;
        let at_ms: i64 = sqlx::query("SELECT at_ms FROM audit_log WHERE seq = $1")
            .bind(upto)
            .fetch_one(&mut *tx.tx)
            .await?
            .try_get("at_ms")?;
        let made_ms = super::now_ms();
        let signature = key.sign(&Checkpoint::message(upto, &cur.hash, at_ms, made_ms))?;
        sqlx::query(
            "INSERT INTO audit_checkpoint (id, seq, hash, at_ms, made_ms, signature) \
             VALUES (1, $1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, \
             hash = excluded.hash, at_ms = excluded.at_ms, made_ms = excluded.made_ms, \
             signature = excluded.signature",
        )
        .bind(upto)
        .bind(hex::encode(cur.hash))
        .bind(at_ms)
        .bind(made_ms)
        .bind(signature)
        .execute(&mut *tx.tx)
        .await?;
        let n = sqlx::query("DELETE FROM audit_log WHERE seq <= $1")
            .bind(upto)
            .execute(&mut *tx.tx)
            .await?
            .rows_affected();
        // A grant goes with its vouch's entry: an attach is judged against
        // the vouches the log still holds, as before grants were stored.
        sqlx::query("DELETE FROM vouch_grants WHERE audit_seq <= $1")
            .bind(upto)
            .execute(&mut *tx.tx)
            .await?;
        pruned += i64::try_from(n).unwrap_or(i64::MAX);
        if upto == target {
            tx.audit(
                NewAudit::new("audit_prune", "ok", actor).detail(&format!(
                    "pruned entries {first}..={upto} (written before {}); checkpoint at \
                     entry {upto}, hash {}",
                    Rfc3339(cutoff_ms),
                    hex::encode(cur.hash)
                )),
                made_ms,
            )
            .await?;
            tx.commit().await?;
            return Ok(PruneOutcome {
                pruned,
                checkpoint_seq: upto,
            });
        }
        tx.commit().await?;
    }
}

/// The first entry that does not check out.
#[derive(Debug)]
struct Break {
    seq: i64,
    problem: String,
}

impl From<Break> for AuditVerdict {
    fn from(b: Break) -> Self {
        AuditVerdict::Broken {
            seq: b.seq,
            problem: b.problem,
        }
    }
}

impl From<sqlx::Error> for PruneError {
    fn from(e: sqlx::Error) -> Self {
        PruneError::Store(StoreError::Database(e))
    }
}

impl From<Break> for PruneError {
    fn from(b: Break) -> Self {
        PruneError::Broken {
            seq: b.seq,
            problem: b.problem,
        }
    }
}

impl Store {
    /// Audit entries matching `filter`, by sequence number.
    pub async fn audit_query(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        query(&self.pool, filter).await
    }

    /// Recomputes the whole chain, from the signed checkpoint if entries
    /// were pruned (checked with `key`); reports the first broken link.
    pub async fn audit_verify(&self, key: &CheckpointKey) -> Result<AuditVerdict, StoreError> {
        verify(&self.pool, key).await
    }

    /// Deletes the audit entries written before `cutoff_ms`, behind a
    /// checkpoint signed with `key` (see the doc of the `audit` module).
    pub async fn audit_prune(
        &self,
        cutoff_ms: i64,
        key: &CheckpointKey,
        actor: &str,
    ) -> Result<PruneOutcome, PruneError> {
        prune(self, cutoff_ms, key, actor).await
    }
}

impl WriteTx<'_> {
    /// Appends an entry to the audit chain; returns its sequence number.
    pub async fn audit(&mut self, entry: NewAudit, at_ms: i64) -> Result<i64, StoreError> {
        let seq = self.head_seq + 1;
        let hash = entry_hash(&self.head_hash, seq, at_ms, &entry);
        insert(&mut self.tx, seq, at_ms, &entry, &self.head_hash, &hash).await?;
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
                let hash = entry_hash(&self.head_hash, seq, at_ms, e);
                rows.push((seq, e, self.head_hash, hash));
                self.head_seq = seq;
                self.head_hash = hash;
            }
            insert_many(&mut self.tx, at_ms, &rows).await?;
        }
        Ok(self.head_seq)
    }
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
