//! Vouch issuing (SPEC.md §5.3–5.4) and session reports (§11.6).
//!
//! ## The order of checks
//!
//! Cheap before expensive, as SPEC.md §5.3 numbers them:
//!
//! | step | check | cost | refusal reason in the audit log |
//! |---|---|---|---|
//! | 1 | gateway enrolled and active (TLS identity); the event log's head read with it | one indexed read, once per request | `gateway_unknown`, `gateway_not_active` |
//! | 2 | gateway not locked out | memory | `gateway_locked_out` (answered `Busy`) |
//! | 2 | hello decodes, names a key id this instance serves ([`crate::keyring`]: not purged) | decode, memory | `malformed_hello`, `unknown_backend_key` |
//! | 3 | `e_P` not in the replay cache | one indexed read | `replay` |
//! | 4 | open the sealed identity | one X25519 (on `crypto.provider`, aws-lc by default) | `bad_seal` |
//! | 3 | claimed id locked out? Not refused (SPEC.md §10.3): its lock is an alert, and a valid signature still gets its vouch | — | — |
//! | 5 | id registered and active | two indexed reads | `unknown_peripheral`, `peripheral_pending`, `peripheral_suspended`, `peripheral_revoked` |
//! | 6 | signature | one Ed25519 verification, batched per request, the key decoded once ([`crate::keycache`]) | `bad_signature` |
//! | 7 | policy grants a scope | one read | `policy_denied` |
//! | 7½ | not live on another gateway (clone) | one read | `clone_refused` (if `clone_action = "refuse"`) |
//! | 8 | no status change of the gateway or the peripheral and no policy rule removed since the head read in step 1 (an event after it); then record `e_P` (the authoritative replay check) and the audit entry, durably | group commit: one read of the log's tail under the write lock | `registry_changed` (answered `Busy`), `replay` |
//! | 8 | sign the vouch with the key pair the hello named (the one it was opened with) | one Ed25519 sign (on `crypto.provider`) | — |
//!
//! The hello names the key its peripheral sealed it to: the peripheral's
//! primary anchor, which it holds. So the vouch is signed by that same key
//! pair, and the peripheral can verify it (SPEC.md §5.6 step 4 looks up the
//! vouch's `backend_key` among its anchors) whether or not it has applied
//! the anchor updates of a rotation yet. Each request works on one snapshot
//! of the key ring.
//!
//! Every refusal except a gateway's lockout and a registry change at commit
//! is answered `Refused(Denied)`, identical on the wire whatever the
//! reason; those two are answered `Refused(Busy)` ("retry later"). The audit log names the exact
//! reason; refusals that repeat one of the same kind (reason, gateway,
//! claimed id) within an interval are counted into one summary entry
//! instead of one entry each ([`crate::audit`], SPEC.md §11.12).
//!
//! ## Group commit
//!
//! Step 8 must be durable before the answer leaves (a vouch whose `e_P` was
//! not recorded could be issued twice after a crash). Rather than one
//! transaction, and one fsync, per vouch, a single writer task takes every
//! pending decision and commits them together: under load, one fsync covers
//! dozens of vouches. Each request waits for the commit that holds its
//! decisions, so nothing is answered before it is on disk. Session reports
//! go through the same writer (`sessions.rs`): judged one after another in
//! the group's transaction, answered once it has committed.
//!
//! Waiting for the writer opens a gap between a decision's registry reads
//! and its commit, in which an operator may revoke the peripheral, suspend
//! the gateway or remove a policy rule. Every such change appends an event to
//! the log under the same write lock, so the commit reads the events after
//! the head its decision's reads began at, and a vouch they concern is not
//! given (`registry_changed`, answered `Busy`; its `e_P` not recorded). A
//! change committed after the vouch finds its grant, and the feed closes
//! the session (SPEC.md §10.4).

mod commit;
mod sessions;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use vouch_proto::handshake::backend::{open_hello, BackendKeys, VerifiedHello, VouchGrant};
use vouch_proto::handshake::hello_signature::DecodedKey;
use vouch_proto::keys::{DhPublic, KeyId, PeripheralId, PublicKey};
use vouch_proto::wire::backend::{PeripheralInfo, Refusal, VouchAnswer, VouchRequest, Vouched};
use vouch_proto::wire::{Hello, Lifetimes, Scope};

pub(crate) use commit::{Committer, Fate, JobItem};
pub(crate) use sessions::{report_sessions, CloneRules, ATTACH_GRACE_MS};

use crate::audit::{Admit, RefusalTally};
use crate::config::{CloneAction, Security};
use crate::keycache::KeyCache;
use crate::keyring::{KeyRing, ServedKeys};
use crate::metrics::Metrics;
use crate::model::{GatewayRecord, PeripheralRecord, Status};
use crate::security::{Alert, Alerter, Lockouts, Subject};
use crate::store::{now_ms, AfterOpen, Grant, NewAudit, Store, StoreError};

/// The batch signature verification's verdicts, one per opened hello.
type Verdicts = std::vec::IntoIter<Result<VerifiedHello, vouch_proto::Error>>;

/// The key unknown and inactive ids are verified against, so that every
/// refusal costs the same verification. The result is never used: such
/// hellos are refused whatever it is. Drawn at random when first used and its
/// private half dropped at once, so that nobody can sign with it: a key
/// whose private half could be known would let a gateway make hellos that
/// pass a batch verification exactly when the claimed id is unknown or
/// inactive, and time the difference (SPEC.md §5.3 step 5).
static UNUSED_KEY: std::sync::LazyLock<DecodedKey> = std::sync::LazyLock::new(|| {
    DecodedKey::new(
        &vouch_proto::keys::IdentityKey::generate(&mut crate::datadir::os_rng()).public_key(),
    )
});

/// Why a vouch was refused: the audit log's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The TLS identity is not an enrolled gateway.
    GatewayUnknown,
    /// The gateway is pending, suspended or revoked.
    GatewayNotActive,
    /// The gateway is locked out.
    GatewayLockedOut,
    /// The hello does not decode.
    MalformedHello,
    /// The hello names a backend key id this backend does not hold.
    UnknownBackendKey,
    /// `e_P` was seen before.
    Replay,
    /// The sealed identity does not open (low-order `e_P`).
    BadSeal,
    /// The claimed id is not registered.
    UnknownPeripheral,
    /// The peripheral is pending.
    PeripheralPending,
    /// The peripheral is suspended.
    PeripheralSuspended,
    /// The peripheral is revoked.
    PeripheralRevoked,
    /// The hello's signature does not verify with the registered key.
    BadSignature,
    /// No policy rule lets this peripheral attach to this gateway.
    PolicyDenied,
    /// The peripheral is live on another gateway and policy refuses a second.
    CloneRefused,
    /// The peripheral's or the gateway's status changed, or a policy rule
    /// was removed, after the reads the vouch was decided on and before it
    /// was committed:
    /// not given (answered `Busy`: the device retries, and the new state
    /// decides).
    RegistryChanged,
}

impl Reason {
    /// The stable code in the audit log and the metrics.
    pub fn code(self) -> &'static str {
        match self {
            Reason::GatewayUnknown => "gateway_unknown",
            Reason::GatewayNotActive => "gateway_not_active",
            Reason::GatewayLockedOut => "gateway_locked_out",
            Reason::MalformedHello => "malformed_hello",
            Reason::UnknownBackendKey => "unknown_backend_key",
            Reason::Replay => "replay",
            Reason::BadSeal => "bad_seal",
            Reason::UnknownPeripheral => "unknown_peripheral",
            Reason::PeripheralPending => "peripheral_pending",
            Reason::PeripheralSuspended => "peripheral_suspended",
            Reason::PeripheralRevoked => "peripheral_revoked",
            Reason::BadSignature => "bad_signature",
            Reason::PolicyDenied => "policy_denied",
            Reason::CloneRefused => "clone_refused",
            Reason::RegistryChanged => "registry_changed",
        }
    }

    /// What goes on the wire.
    pub fn refusal(self) -> Refusal {
        match self {
            Reason::GatewayLockedOut | Reason::RegistryChanged => Refusal::Busy,
            _ => Refusal::Denied,
        }
    }

    /// The audit entry's outcome for this refusal: `busy` or `denied`, as
    /// on the wire.
    pub fn outcome(self) -> &'static str {
        match self.refusal() {
            Refusal::Busy => "busy",
            Refusal::Denied => "denied",
        }
    }

    /// Whether a gateway is to blame for this failure, so that it counts
    /// toward the gateway's lockout. Only a body an honest gateway would never
    /// send: every other failure comes from the radio side, which an honest
    /// gateway relays without being able to check (counting those would let
    /// anyone in radio range lock a gateway out).
    pub fn counts_against_gateway(self) -> bool {
        matches!(self, Reason::MalformedHello)
    }

    /// Whether this is a credential failure, which counts toward the claimed
    /// id's lockout (see [`crate::security`]).
    pub fn is_credential_failure(self) -> bool {
        matches!(
            self,
            Reason::MalformedHello
                | Reason::UnknownBackendKey
                | Reason::Replay
                | Reason::BadSeal
                | Reason::UnknownPeripheral
                | Reason::BadSignature
        )
    }
}

/// A positive decision waiting for step 8.
struct Granted {
    verified: VerifiedHello,
    /// The key pair the hello named and was opened with: it signs the vouch.
    keys: Arc<BackendKeys>,
    record: PeripheralRecord,
    scope: Scope,
    lifetimes: Lifetimes,
}

/// One item's decision before the commit.
struct Decision {
    gateway_ephemeral: DhPublic,
    claimed: Option<PeripheralId>,
    outcome: Result<Granted, Reason>,
    /// Other gateways the peripheral has an open session on: each is a
    /// clone suspicion, judged when that session ends (SPEC.md §10.5).
    clone_of: Vec<String>,
    /// Refused because of them (`clone_action = "refuse"`). The outcome
    /// stays the grant until the commit, which records its `e_P` like a
    /// vouch's: only a fresh hello is evidence that the device was here.
    refuse_clone: bool,
}

/// The gateway key of a request, authenticated by TLS, and its registry entry.
pub(crate) enum GatewayCheck {
    /// Enrolled and active.
    Active(GatewayRecord),
    /// Refused with this reason (step 1).
    Refused(Reason),
}

/// Step 1 on the gateway's record (`None`: not enrolled).
pub(crate) fn judge_gateway(g: Option<GatewayRecord>) -> GatewayCheck {
    match g {
        Some(g) if g.status == Status::Active => GatewayCheck::Active(g),
        Some(_) => GatewayCheck::Refused(Reason::GatewayNotActive),
        None => GatewayCheck::Refused(Reason::GatewayUnknown),
    }
}

/// An item between the steps.
enum Stage {
    /// Refused at some step.
    Done(Decision),
    /// Decoded (step 2), waiting for the replay check and the opening with
    /// the key pair it names.
    Decoded(Hello, Arc<BackendKeys>),
    /// Opened (step 4) with this key pair, waiting for the registry.
    Opened(
        vouch_proto::handshake::backend::OpenedHello,
        Arc<BackendKeys>,
    ),
    /// Handed to the batch signature verification (step 6).
    Verifying(PeripheralId, Arc<BackendKeys>),
}

/// What vouch issuing uses of the service: the parts of
/// [`crate::AppState`] it reads and writes, borrowed for one request.
#[derive(Clone, Copy)]
pub(crate) struct Issuer<'a> {
    /// The registry, the replay cache, the lockouts' shared copy.
    pub(crate) store: &'a Store,
    /// The key pairs that open hellos and sign vouches.
    pub(crate) keys: &'a ServedKeys,
    /// Lockout thresholds, `clone_action`, clone timing.
    pub(crate) security: &'a Security,
    /// This instance's failure counts and lockouts.
    pub(crate) lockouts: &'a Lockouts,
    /// Metrics.
    pub(crate) metrics: &'a Metrics,
    /// Alerts (lockouts).
    pub(crate) alerter: &'a Alerter,
    /// Repeated refusals, counted between their summary entries.
    pub(crate) refusals: &'a RefusalTally,
    /// The group-commit writer.
    pub(crate) committer: &'a Committer,
}

/// Decides and answers a batch of vouch requests from the gateway `key`.
///
/// The reads are batched: one connection and one query per kind of lookup
/// for the whole request, made between the steps, so each item still goes
/// through the checks in the order of the module doc (no X25519 before its
/// replay check, no registry lookup before its hello opened). Store failures
/// fail the whole request (the caller answers 503): no vouch is given
/// without its durable record.
pub(crate) async fn vouch_batch(
    issuer: Issuer<'_>,
    key: &PublicKey,
    items: &[VouchRequest],
) -> Result<Vec<VouchAnswer>, StoreError> {
    let now = now_ms();
    let actor = format!("gateway:{key}");
    let ring = issuer.keys.snapshot();
    let mut reader = issuer.store.reader().await?;

    // Decode first (pure computation) so that the gateway lookup and the
    // replay check of every hello share one round trip.
    let decoded: Vec<Result<Hello, ()>> = items
        .iter()
        .map(|item| Hello::peek(&item.hello).map_err(|_| ()))
        .collect();
    let ephemerals: Vec<DhPublic> = decoded
        .iter()
        .filter_map(|h| h.as_ref().ok())
        .filter(|h| ring.get(h.anchor).is_some())
        .map(|h| h.ephemeral)
        .collect();
    let before = reader.before_crypto(key, &ephemerals).await?;

    // Step 1: the gateway.
    let gateway = match judge_gateway(before.gateway) {
        GatewayCheck::Active(g) => g,
        GatewayCheck::Refused(reason) => {
            drop(reader);
            let decisions = items.iter().map(|i| refuse(i, None, reason)).collect();
            return finish(issuer, key, &actor, decisions, before.registry_seq, now).await;
        }
    };
    let gw_locked = issuer
        .lockouts
        .is_locked(&Subject::Gateway(key.to_string()), now);
    let mut stages = screen(items, decoded, &ring, gw_locked);
    open_all(&mut stages, items, &before.replayed);

    // Steps 5–7: registry, signature, policy.
    let claimed: Vec<PeripheralId> = stages
        .iter()
        .filter_map(|s| match s {
            Stage::Opened(o, _) => Some(o.claimed_peripheral()),
            _ => None,
        })
        .collect();
    let after = if claimed.is_empty() {
        Default::default()
    } else {
        reader
            .after_open(&claimed, &gateway.public_key, now)
            .await?
    };
    drop(reader);
    let (stages, verdicts) = verify_all(
        stages,
        &after.peripherals,
        issuer.store.key_cache(),
        issuer.metrics,
    );
    let mut decisions = decide(items, stages, verdicts, &after, &gateway);
    // Step 7½: live on another gateway?
    let refuse_clones = issuer.security.clone_action == CloneAction::Refuse;
    mark_clones(&mut decisions, &after.attached_elsewhere, refuse_clones);
    finish(issuer, key, &actor, decisions, before.registry_seq, now).await
}

/// A refusal of `item` for `reason`, naming the id it claims once known.
fn refuse(item: &VouchRequest, claimed: Option<PeripheralId>, reason: Reason) -> Decision {
    Decision {
        gateway_ephemeral: item.gateway_ephemeral,
        claimed,
        outcome: Err(reason),
        clone_of: Vec::new(),
        refuse_clone: false,
    }
}

/// Steps 2–3 for every item: the gateway's lockout, the hello decodes, it
/// names a key id this instance serves.
fn screen(
    items: &[VouchRequest],
    decoded: Vec<Result<Hello, ()>>,
    ring: &KeyRing,
    gw_locked: bool,
) -> Vec<Stage> {
    items
        .iter()
        .zip(decoded)
        .map(|(item, hello)| {
            if gw_locked {
                return Stage::Done(refuse(item, None, Reason::GatewayLockedOut));
            }
            match hello {
                Err(()) => Stage::Done(refuse(item, None, Reason::MalformedHello)),
                Ok(h) => match ring.get(h.anchor) {
                    Some(keys) => Stage::Decoded(h, keys.clone()),
                    None => Stage::Done(refuse(item, None, Reason::UnknownBackendKey)),
                },
            }
        })
        .collect()
}

/// Steps 3–4: the replay cache's verdict (read for the whole batch), then
/// open each fresh hello (one X25519 each).
fn open_all(stages: &mut [Stage], items: &[VouchRequest], replayed: &HashSet<[u8; 32]>) {
    for (stage, item) in stages.iter_mut().zip(items) {
        let Stage::Decoded(h, keys) = stage else {
            continue;
        };
        *stage = if replayed.contains(h.ephemeral.as_bytes()) {
            Stage::Done(refuse(item, None, Reason::Replay))
        } else {
            match open_hello(&item.hello, keys) {
                Err(_) => Stage::Done(refuse(item, None, Reason::BadSeal)),
                // A locked-out claimed id is not refused here: anyone can seal
                // any id to the backend, so refusing it would let an attacker
                // lock a genuine device out everywhere (and answering
                // differently would tell an observer which id a hello holds).
                // Its lockout is the audit entry and the alert; a genuine
                // device's valid signature still goes through below.
                Ok(o) => Stage::Opened(o, keys.clone()),
            }
        };
    }
}

/// Step 6: hands every opened hello to one batch signature verification.
///
/// Every opened hello costs its share of the verification, also when the
/// id is unknown or not active (against a key nobody holds), so that how
/// long a refusal takes says nothing about the registry: no timing oracle
/// for enumerating ids. A dummy verification's result is never used
/// ([`decide`] refuses such ids before it looks at it).
fn verify_all(
    stages: Vec<Stage>,
    records: &HashMap<PeripheralId, PeripheralRecord>,
    cache: &KeyCache,
    metrics: &Metrics,
) -> (Vec<Stage>, Verdicts) {
    let mut opened = Vec::new();
    let mut keys = Vec::new();
    let stages: Vec<Stage> = stages
        .into_iter()
        .map(|stage| match stage {
            Stage::Opened(o, pair) => {
                let id = o.claimed_peripheral();
                keys.push(match records.get(&id) {
                    Some(r) if matches!(r.status, Status::Active) => cache.decoded(&r.public_key),
                    _ => *UNUSED_KEY,
                });
                opened.push(o);
                Stage::Verifying(id, pair)
            }
            other => other,
        })
        .collect();
    metrics.hello_verifications.inc_by(opened.len() as u64);
    let to_verify = opened.into_iter().zip(&keys).collect();
    let verdicts = vouch_proto::handshake::backend::verify_batch_decoded(to_verify).into_iter();
    (stages, verdicts)
}

/// Steps 5–7 for every item, in order: registered and active, signature,
/// policy.
fn decide(
    items: &[VouchRequest],
    stages: Vec<Stage>,
    mut verdicts: Verdicts,
    after: &AfterOpen,
    gateway: &GatewayRecord,
) -> Vec<Decision> {
    let (records, rules) = (&after.peripherals, &after.rules);
    let mut decisions: Vec<Decision> = Vec::with_capacity(items.len());
    for (stage, item) in stages.into_iter().zip(items) {
        let (id, keys, verified) = match stage {
            // One verdict per `Verifying` stage, in order.
            Stage::Verifying(id, keys) => match verdicts.next() {
                Some(v) => (id, keys, v),
                None => {
                    decisions.push(refuse(item, Some(id), Reason::BadSignature));
                    continue;
                }
            },
            Stage::Done(d) => {
                decisions.push(d);
                continue;
            }
            Stage::Decoded(..) | Stage::Opened(..) => {
                // Every decoded item was opened or refused, and every opened
                // one handed to the verification, before.
                decisions.push(refuse(item, None, Reason::MalformedHello));
                continue;
            }
        };
        let Some(record) = records.get(&id) else {
            decisions.push(refuse(item, Some(id), Reason::UnknownPeripheral));
            continue;
        };
        let reason = match record.status {
            Status::Active => None,
            Status::Pending => Some(Reason::PeripheralPending),
            Status::Suspended => Some(Reason::PeripheralSuspended),
            Status::Revoked => Some(Reason::PeripheralRevoked),
        };
        if let Some(r) = reason {
            decisions.push(refuse(item, Some(id), r));
            continue;
        }
        let Ok(verified) = verified else {
            decisions.push(refuse(item, Some(id), Reason::BadSignature));
            continue;
        };
        let Some((scope, lifetimes)) = crate::model::grant(rules, record, gateway) else {
            decisions.push(refuse(item, Some(id), Reason::PolicyDenied));
            continue;
        };
        decisions.push(Decision {
            gateway_ephemeral: item.gateway_ephemeral,
            claimed: Some(id),
            outcome: Ok(Granted {
                verified,
                keys,
                record: record.clone(),
                scope,
                lifetimes,
            }),
            clone_of: Vec::new(),
            refuse_clone: false,
        });
    }
    decisions
}

/// Step 7½: a granted peripheral with an open session on another gateway
/// is a clone suspicion, and refused under `clone_action = "refuse"`.
fn mark_clones(
    decisions: &mut [Decision],
    elsewhere: &HashMap<PeripheralId, Vec<String>>,
    refuse_clones: bool,
) {
    for d in decisions {
        let Some(others) = d.claimed.and_then(|c| elsewhere.get(&c)) else {
            continue;
        };
        if d.outcome.is_ok() {
            d.clone_of = others.clone();
            d.refuse_clone = refuse_clones;
        }
    }
}

/// Step 8 and the answers: commit every decision durably, sign the vouches
/// that survived the authoritative replay check, count failures.
async fn finish(
    issuer: Issuer<'_>,
    key: &PublicKey,
    actor: &str,
    decisions: Vec<Decision>,
    registry_seq: i64,
    now: i64,
) -> Result<Vec<VouchAnswer>, StoreError> {
    let (job, written) = audit_job(issuer.refusals, key, actor, &decisions, now);
    let fates = issuer.committer.commit(job, Some(registry_seq)).await?;
    // `fates` has one fate per job item; pick out the decisions' own items.
    let mut fates = fates.into_iter();
    let mut answers = Vec::with_capacity(decisions.len());
    for (d, written) in decisions.into_iter().zip(written) {
        let fate = match written {
            true => fates.next().unwrap_or(Fate::Replay),
            false => Fate::Replay,
        };
        let first_seen = fate == Fate::Stands;
        // Open elsewhere: not yet a clone (that gateway may not have seen
        // the device's link die), but judged when that session ends; also
        // if this vouch is refused for it. Only for a fresh hello: a
        // replayed one says nothing about where the device is.
        if let (true, false, Some(p)) = (first_seen, d.clone_of.is_empty(), d.claimed) {
            record_suspicion(issuer, &p, key, now).await;
        }
        let answer = answer(issuer, key, d, fate, now).await;
        let label = match &answer {
            VouchAnswer::Vouched(_) => "vouched",
            VouchAnswer::Refused(Refusal::Busy) => "busy",
            VouchAnswer::Refused(_) => "denied",
        };
        issuer.metrics.answers.with_label_values(&[label]).inc();
        answers.push(answer);
    }
    Ok(answers)
}

/// The group commit's items for `decisions`: each grant's `e_P` with its
/// audit entry, each refusal's entry; and, per decision, whether its own
/// entry went into the job (a refusal that repeats one already written this
/// interval is only counted, [`crate::audit`]).
fn audit_job(
    refusals: &RefusalTally,
    key: &PublicKey,
    actor: &str,
    decisions: &[Decision],
    now: i64,
) -> (Vec<JobItem>, Vec<bool>) {
    let gw_hex = key.to_string();
    let mut job = Vec::with_capacity(decisions.len());
    let mut written = Vec::with_capacity(decisions.len());
    for d in decisions {
        let claimed = d.claimed.map(|c| c.to_string());
        let (ephemeral, audit, grant) = match &d.outcome {
            Ok(g) if d.refuse_clone => {
                let a = refusal_entry(actor, &gw_hex, claimed.as_deref(), Reason::CloneRefused);
                if refusals.admit(&a, now) == Admit::Counted {
                    written.push(false);
                    continue;
                }
                (Some(g.verified.ephemeral()), a, None)
            }
            Ok(g) => (
                Some(g.verified.ephemeral()),
                NewAudit::new("vouch", "vouched", actor)
                    .gateway(&gw_hex)
                    .peripheral(&g.record.id.to_string())
                    .detail(&grant_detail(g.scope, g.lifetimes, g.keys.kid())),
                Some(Grant {
                    peripheral: g.record.id,
                    gateway: *key,
                    lifetimes: g.lifetimes,
                    kid: g.keys.kid(),
                }),
            ),
            Err(reason) => {
                let a = refusal_entry(actor, &gw_hex, claimed.as_deref(), *reason);
                if refusals.admit(&a, now) == Admit::Counted {
                    written.push(false);
                    continue;
                }
                (None, a, None)
            }
        };
        written.push(true);
        job.push(JobItem {
            ephemeral,
            audit,
            grant,
        });
    }
    (job, written)
}

/// Records that `peripheral`, vouched for (or refused as a clone) at
/// `gateway`, has sessions open elsewhere: each pair is judged when the
/// open session ends. Written under the write lock, like every judgment of
/// a pair; a failure is logged, not answered.
async fn record_suspicion(
    issuer: Issuer<'_>,
    peripheral: &PeripheralId,
    gateway: &PublicKey,
    now: i64,
) {
    let rules = CloneRules::new(issuer.security);
    let write = async {
        let mut tx = issuer.store.begin_write().await?;
        tx.suspect_open_elsewhere(
            peripheral,
            gateway,
            now,
            rules.tolerance_ms,
            now.saturating_add(rules.ttl_ms),
        )
        .await?;
        tx.commit().await
    };
    if let Err(e) = write.await {
        tracing::warn!(peripheral = %peripheral, error = %e, "could not record a clone suspicion");
    }
}

/// The answer to one decision: the signed vouch, or the refusal (counted,
/// and against the lockouts it counts toward).
async fn answer(
    issuer: Issuer<'_>,
    key: &PublicKey,
    d: Decision,
    fate: Fate,
    now: i64,
) -> VouchAnswer {
    let outcome = match (d.outcome, fate) {
        (Ok(_), _) if d.refuse_clone => Err(Reason::CloneRefused),
        (Ok(g), Fate::Stands) => Ok(g),
        (Ok(_), Fate::Replay) => Err(Reason::Replay),
        (Ok(_), Fate::Changed) => Err(Reason::RegistryChanged),
        (Err(r), _) => Err(r),
    };
    match outcome {
        Ok(g) => {
            let grant = VouchGrant {
                gateway_key: *key,
                gateway_ephemeral: d.gateway_ephemeral,
                scope: g.scope,
                lifetimes: g.lifetimes,
            };
            VouchAnswer::Vouched(Vouched {
                vouch: g.verified.vouch(&g.keys, &grant),
                peripheral: PeripheralInfo {
                    id: g.record.id,
                    public_key: g.record.public_key,
                    group: g.record.group,
                    attributes: g.record.attributes.into_iter().collect(),
                    scope: g.scope,
                },
            })
        }
        Err(reason) => {
            issuer
                .metrics
                .refusals
                .with_label_values(&[reason.code()])
                .inc();
            if reason.counts_against_gateway() {
                count_failure(issuer, Subject::Gateway(key.to_string()), now).await;
            }
            if reason.is_credential_failure() {
                if let Some(c) = d.claimed {
                    count_failure(issuer, Subject::Peripheral(c.to_string()), now).await;
                }
            }
            VouchAnswer::Refused(reason.refusal())
        }
    }
}

/// The audit entry of a refused vouch.
pub(crate) fn refusal_entry(
    actor: &str,
    gateway: &str,
    claimed: Option<&str>,
    reason: Reason,
) -> NewAudit {
    let mut a = NewAudit::new("vouch", reason.outcome(), actor)
        .reason(reason.code())
        .gateway(gateway);
    if let Some(c) = claimed {
        a = a.peripheral(c).detail(
            if matches!(
                reason,
                Reason::BadSignature
                    | Reason::UnknownPeripheral
                    | Reason::PeripheralPending
                    | Reason::PeripheralSuspended
                    | Reason::PeripheralRevoked
            ) {
                "claimed id (signature not verified)"
            } else {
                ""
            },
        );
    }
    a
}

/// The audit detail of a vouch: what it granted, and the key id that signed
/// it (so an operator can see which peripherals still seal to an old key
/// before purging it). Written for people: attach reports are authorized
/// from the grant stored with it ([`crate::store::Grant`]).
fn grant_detail(scope: Scope, lifetimes: Lifetimes, kid: KeyId) -> String {
    format!(
        "scope={} session_s={} resumption_s={} kid={}",
        scope.0, lifetimes.session_s, lifetimes.resumption_s, kid
    )
}

/// Counts a credential failure; on reaching the threshold, writes the lockout
/// (shared by all instances) with its audit entry and raises the alert.
async fn count_failure(issuer: Issuer<'_>, subject: Subject, now: i64) {
    let Some(until) = issuer.lockouts.record_failure(&subject, now) else {
        return;
    };
    let sec = issuer.security;
    let detail = format!(
        "{} credential failures within {} s; locked out for {} s",
        sec.lockout_failures, sec.lockout_window_s, sec.lockout_duration_s
    );
    let (peripheral, gateway) = match &subject {
        Subject::Gateway(k) => (None, Some(k.clone())),
        Subject::Peripheral(k) => (Some(k.clone()), None),
    };
    let write = async {
        let mut tx = issuer.store.begin_write().await?;
        tx.lockout(&subject.key(), until, "credential_failures")
            .await?;
        let mut a = NewAudit::new("lockout", "alert", "system")
            .reason("credential_failures")
            .detail(&detail);
        if let Some(p) = &peripheral {
            a = a.peripheral(p);
        }
        if let Some(g) = &gateway {
            a = a.gateway(g);
        }
        tx.audit(a, now).await?;
        tx.commit().await
    };
    if let Err(e) = write.await {
        // The lockout holds on this instance regardless; only its sharing
        // with other instances and its audit entry are lost.
        tracing::error!(error = %e, subject = %subject.key(), "could not store a lockout");
    }
    issuer
        .metrics
        .lockouts
        .with_label_values(&[subject.kind()])
        .inc();
    issuer.alerter.raise(Alert {
        alert: "lockout",
        peripheral,
        gateway,
        detail,
        at_ms: now,
    });
}
