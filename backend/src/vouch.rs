//! Vouch issuing (SPEC.md §5.3–5.4) and session reports (§11.6).
//!
//! ## The order of checks
//!
//! Cheap before expensive, as SPEC.md §5.3 numbers them:
//!
//! | step | check | cost | refusal reason in the audit log |
//! |---|---|---|---|
//! | 1 | gateway enrolled and active (TLS identity) | one indexed read, once per request | `gateway_unknown`, `gateway_not_active` |
//! | 2 | gateway not locked out | memory | `gateway_locked_out` (answered `Busy`) |
//! | 2 | hello decodes, names a key id this instance serves ([`crate::keyring`]: not purged) | decode, memory | `malformed_hello`, `unknown_backend_key` |
//! | 3 | `e_P` not in the replay cache | one indexed read | `replay` |
//! | 4 | open the sealed identity | one X25519 | `bad_seal` |
//! | 3 | claimed id locked out? Not refused (SPEC.md §10.3): its lock is an alert, and a valid signature still gets its vouch | — | — |
//! | 5 | id registered and active | two indexed reads | `unknown_peripheral`, `peripheral_pending`, `peripheral_suspended`, `peripheral_revoked` |
//! | 6 | signature | one Ed25519 verification, batched per request | `bad_signature` |
//! | 7 | policy grants a scope | one read | `policy_denied` |
//! | 7½ | not live on another gateway (clone) | one read | `clone_refused` (if `clone_action = "refuse"`) |
//! | 8 | record `e_P` (the authoritative replay check) and the audit entry, durably | group commit | `replay` |
//! | 8 | sign the vouch with the key pair the hello named (the one it was opened with) | one Ed25519 sign | — |
//!
//! The hello names the key its peripheral sealed it to: the peripheral's
//! primary anchor, which it holds. So the vouch is signed by that same key
//! pair, and the peripheral can verify it (SPEC.md §5.6 step 4 looks up the
//! vouch's `backend_key` among its anchors) whether or not it has applied
//! the anchor updates of a rotation yet. Each request works on one snapshot
//! of the key ring.
//!
//! Every refusal except a gateway's lockout is answered `Refused(Denied)`,
//! identical on the wire whatever the reason; a locked-out gateway is
//! answered `Refused(Busy)` ("retry later"). The audit log names the exact
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
//! decisions, so nothing is answered before it is on disk.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use vouch_proto::handshake::backend::{open_hello, BackendKeys, VerifiedHello, VouchGrant};
use vouch_proto::keys::{DhPublic, KeyId, PeripheralId, PublicKey};
use vouch_proto::wire::backend::{
    EventTimes, PeripheralInfo, Refusal, SessionEvent, SessionEventKind, SessionVerdict,
    VouchAnswer, VouchRequest, Vouched,
};
use vouch_proto::wire::{Hello, Lifetimes, Scope};

use crate::audit::{Admit, RefusalTally};
use crate::config::CloneAction;
use crate::model::{GatewayRecord, PeripheralRecord, Status};
use crate::security::{Alert, Subject};
use crate::store::SessionState;
use crate::store::{now_ms, NewAudit, Store, StoreError};
use crate::AppState;

/// The key unknown and inactive ids are verified against, so that every
/// refusal costs the same verification. The result is never used: such
/// hellos are refused whatever it is. Drawn at random when first used and its
/// private half dropped at once, so that nobody can sign with it: a key
/// whose private half could be known would let a gateway make hellos that
/// pass a batch verification exactly when the claimed id is unknown or
/// inactive, and time the difference (SPEC.md §5.3 step 5).
static UNUSED_KEY: std::sync::LazyLock<vouch_proto::keys::PublicKey> =
    std::sync::LazyLock::new(|| {
        vouch_proto::keys::IdentityKey::generate(&mut crate::datadir::os_rng()).public_key()
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
        }
    }

    /// What goes on the wire.
    pub fn refusal(self) -> Refusal {
        match self {
            Reason::GatewayLockedOut => Refusal::Busy,
            _ => Refusal::Denied,
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

/// Step 1: the gateway behind the TLS identity.
pub(crate) async fn check_gateway(
    store: &Store,
    key: &PublicKey,
) -> Result<GatewayCheck, StoreError> {
    let mut reader = store.reader().await?;
    Ok(judge_gateway(reader.gateway(key).await?))
}

fn judge_gateway(g: Option<GatewayRecord>) -> GatewayCheck {
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

/// Decides and answers a batch of vouch requests from the gateway `key`.
///
/// The reads are batched: one connection and one query per kind of lookup
/// for the whole request, made between the steps, so each item still goes
/// through the checks in the order of the module doc (no X25519 before its
/// replay check, no registry lookup before its hello opened). Store failures
/// fail the whole request (the caller answers 503): no vouch is given
/// without its durable record.
pub(crate) async fn vouch_batch(
    state: &AppState,
    key: &PublicKey,
    items: &[VouchRequest],
) -> Result<Vec<VouchAnswer>, StoreError> {
    let now = now_ms();
    let actor = format!("gateway:{key}");
    let refuse = |item: &VouchRequest, claimed, reason| Decision {
        gateway_ephemeral: item.gateway_ephemeral,
        claimed,
        outcome: Err(reason),
        clone_of: Vec::new(),
        refuse_clone: false,
    };
    let ring = state.keys.snapshot();
    let mut reader = state.store.reader().await?;

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
            return finish(state, key, &actor, decisions, now).await;
        }
    };
    let gw_locked = state
        .lockouts
        .is_locked(&Subject::Gateway(key.to_string()), now);

    // Steps 2–3: decode, key id, lockout; then the replay cache for all.
    let mut stages: Vec<Stage> = items
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
        .collect();
    let replayed = before.replayed;

    // Step 4: open (one X25519 each), then the claimed id's lockout.
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
    let (records, rules) = (&after.peripherals, &after.rules);
    // Every opened hello costs its share of one batch signature verification,
    // also when the id is unknown or not active (against a key nobody holds),
    // so that how long a refusal takes says nothing about the registry: no
    // timing oracle for enumerating ids. A dummy verification's result is
    // never used (below, such ids are refused before it is looked at).
    let mut to_verify = Vec::new();
    let stages: Vec<Stage> = stages
        .into_iter()
        .map(|stage| match stage {
            Stage::Opened(o, keys) => {
                let id = o.claimed_peripheral();
                let key = match records.get(&id) {
                    Some(r) if matches!(r.status, Status::Active) => &r.public_key,
                    _ => &*UNUSED_KEY,
                };
                to_verify.push((o, key));
                Stage::Verifying(id, keys)
            }
            other => other,
        })
        .collect();
    state
        .metrics
        .hello_verifications
        .inc_by(to_verify.len() as u64);
    let mut verdicts = vouch_proto::handshake::backend::verify_batch(to_verify).into_iter();

    let mut granted_ids = Vec::new();
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
                // one handed to the verification, above.
                decisions.push(refuse(item, None, Reason::MalformedHello));
                continue;
            }
        };
        let record = records.get(&id);
        let Some(record) = record else {
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
        let Some((scope, lifetimes)) = crate::model::grant(rules, record, &gateway) else {
            decisions.push(refuse(item, Some(id), Reason::PolicyDenied));
            continue;
        };
        granted_ids.push(id);
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

    // Step 7½: live on another gateway?
    if !granted_ids.is_empty() {
        let elsewhere = &after.attached_elsewhere;
        let refuse_clones = state.config.security.clone_action == CloneAction::Refuse;
        for d in &mut decisions {
            let Some(others) = d.claimed.and_then(|c| elsewhere.get(&c)) else {
                continue;
            };
            if d.outcome.is_ok() {
                d.clone_of = others.clone();
                d.refuse_clone = refuse_clones;
            }
        }
    }
    finish(state, key, &actor, decisions, now).await
}

/// Step 8 and the answers: commit every decision durably, sign the vouches
/// that survived the authoritative replay check, count failures.
async fn finish(
    state: &AppState,
    key: &PublicKey,
    actor: &str,
    decisions: Vec<Decision>,
    now: i64,
) -> Result<Vec<VouchAnswer>, StoreError> {
    let gw_hex = key.to_string();
    let mut job = Vec::with_capacity(decisions.len());
    // Per decision: whether its own entry went into the job (a refusal that
    // repeats one already written this interval is only counted,
    // crate::audit).
    let mut written = Vec::with_capacity(decisions.len());
    for d in &decisions {
        let claimed = d.claimed.map(|c| c.to_string());
        let (ephemeral, audit) = match &d.outcome {
            Ok(g) if d.refuse_clone => {
                let a = refusal_entry(actor, &gw_hex, claimed.as_deref(), Reason::CloneRefused);
                if state.refusals.admit(&a, now) == Admit::Counted {
                    written.push(false);
                    continue;
                }
                (Some(g.verified.ephemeral()), a)
            }
            Ok(g) => (
                Some(g.verified.ephemeral()),
                NewAudit::new("vouch", "vouched", actor)
                    .gateway(&gw_hex)
                    .peripheral(&g.record.id.to_string())
                    .detail(&grant_detail(g.scope, g.lifetimes, g.keys.kid())),
            ),
            Err(reason) => {
                let a = refusal_entry(actor, &gw_hex, claimed.as_deref(), *reason);
                if state.refusals.admit(&a, now) == Admit::Counted {
                    written.push(false);
                    continue;
                }
                (None, a)
            }
        };
        written.push(true);
        job.push(JobItem { ephemeral, audit });
    }
    let fresh = state.committer.commit(job).await?;
    // `fresh` has one flag per job item; pick out the decisions' own items.
    let mut flags = fresh.into_iter();
    let mut answers = Vec::with_capacity(decisions.len());
    for (d, written) in decisions.into_iter().zip(written) {
        let first_seen = written && flags.next().unwrap_or(false);
        // Open elsewhere: not yet a clone (that gateway may not have seen
        // the device's link die), but judged when that session ends; also
        // if this vouch is refused for it. Only for a fresh hello: a
        // replayed one says nothing about where the device is.
        // Written under the write lock, like every judgment of a pair.
        if let (true, false, Some(p)) = (first_seen, d.clone_of.is_empty(), d.claimed) {
            let ttl_ms = attachment_ttl_ms(state);
            let tolerance = i64::from(state.config.security.clone_tolerance_ms);
            let write = async {
                let mut tx = state.store.begin_write().await?;
                tx.suspect_open_elsewhere(&p, key, now, tolerance, now.saturating_add(ttl_ms))
                    .await?;
                tx.commit().await
            };
            if let Err(e) = write.await {
                tracing::warn!(peripheral = %p, error = %e, "could not record a clone suspicion");
            }
        }
        let outcome = match d.outcome {
            Ok(_) if d.refuse_clone => Err(Reason::CloneRefused),
            Ok(g) if first_seen => Ok(g),
            Ok(_) => Err(Reason::Replay),
            Err(r) => Err(r),
        };
        let answer = match outcome {
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
                state
                    .metrics
                    .refusals
                    .with_label_values(&[reason.code()])
                    .inc();
                if reason.counts_against_gateway() {
                    count_failure(state, Subject::Gateway(gw_hex.clone()), now).await;
                }
                if reason.is_credential_failure() {
                    if let Some(c) = d.claimed {
                        count_failure(state, Subject::Peripheral(c.to_string()), now).await;
                    }
                }
                VouchAnswer::Refused(reason.refusal())
            }
        };
        let label = match &answer {
            VouchAnswer::Vouched(_) => "vouched",
            VouchAnswer::Refused(Refusal::Busy) => "busy",
            VouchAnswer::Refused(_) => "denied",
        };
        state.metrics.answers.with_label_values(&[label]).inc();
        answers.push(answer);
    }
    Ok(answers)
}

/// The audit entry of a refused vouch.
pub(crate) fn refusal_entry(
    actor: &str,
    gateway: &str,
    claimed: Option<&str>,
    reason: Reason,
) -> NewAudit {
    let outcome = match reason.refusal() {
        Refusal::Busy => "busy",
        Refusal::Denied => "denied",
    };
    let mut a = NewAudit::new("vouch", outcome, actor)
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
/// before purging it). [`granted_lifetimes`] reads it back.
fn grant_detail(scope: Scope, lifetimes: Lifetimes, kid: KeyId) -> String {
    format!(
        "scope={} session_s={} resumption_s={} kid={}",
        scope.0, lifetimes.session_s, lifetimes.resumption_s, kid
    )
}

/// The lifetimes a vouch's audit detail records ([`grant_detail`]).
fn granted_lifetimes(detail: &str) -> Option<Lifetimes> {
    let field = |name: &str| {
        detail
            .split(' ')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    Some(Lifetimes {
        session_s: field("session_s")?,
        resumption_s: field("resumption_s")?,
    })
}

/// How much later than the vouch's lifetimes an attach report still counts:
/// the gateway's ticket clock starts after the backend's audit time, the
/// report waits for the handshake to finish and for a slot to the backend,
/// and the two clocks may differ.
pub(crate) const ATTACH_GRACE_MS: i64 = 120_000;

/// When the vouch for `peripheral` was given under which `gateway` can be
/// starting a session at `now`, if it holds one: a full handshake's session
/// starts right after its vouch, and every session resumed from it within
/// `resumption_s` of it (the longer of the two lifetimes is allowed, plus
/// [`ATTACH_GRACE_MS`]). No session of it started before that time.
async fn live_vouch_at(
    state: &AppState,
    peripheral: &PeripheralId,
    gateway: &PublicKey,
    now: i64,
) -> Result<Option<i64>, StoreError> {
    let Some((at_ms, detail)) = state.store.last_vouch(peripheral, gateway).await? else {
        return Ok(None);
    };
    let Some(l) = granted_lifetimes(&detail) else {
        tracing::error!(%peripheral, %gateway, detail, "a vouch's audit detail does not parse");
        return Ok(None);
    };
    let span_ms = i64::from(l.session_s.max(l.resumption_s))
        .saturating_mul(1000)
        .saturating_add(ATTACH_GRACE_MS);
    Ok((now <= at_ms.saturating_add(span_ms)).then_some(at_ms))
}

/// Counts a credential failure; on reaching the threshold, writes the lockout
/// (shared by all instances) with its audit entry and raises the alert.
async fn count_failure(state: &AppState, subject: Subject, now: i64) {
    let Some(until) = state.lockouts.record_failure(&subject, now) else {
        return;
    };
    let sec = &state.config.security;
    let detail = format!(
        "{} credential failures within {} s; locked out for {} s",
        sec.lockout_failures, sec.lockout_window_s, sec.lockout_duration_s
    );
    let (peripheral, gateway) = match &subject {
        Subject::Gateway(k) => (None, Some(k.clone())),
        Subject::Peripheral(k) => (Some(k.clone()), None),
    };
    let write = async {
        let mut tx = state.store.begin_write().await?;
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
    state
        .metrics
        .lockouts
        .with_label_values(&[subject.kind()])
        .inc();
    state.alerter.raise(Alert {
        alert: "lockout",
        peripheral,
        gateway,
        detail,
        at_ms: now,
    });
}

/// Records the session events a gateway reports and judges each: a
/// peripheral that is not active must not have a session (`Refused`); two
/// sessions of one peripheral on different gateways are a suspected clone
/// when the earlier one heard the device after the later one began, and a
/// gateway that saw one live twice at once reports it (`Concurrent`):
/// alert, and `Refused` if the policy says so, else `CloneSuspected`
/// (SPEC.md §10.5). `times` holds one entry per event, or none (a gateway
/// that predates them: every event then happened at arrival).
pub(crate) async fn report_sessions(
    state: &AppState,
    gateway: &GatewayRecord,
    events: &[SessionEvent],
    times: &[EventTimes],
) -> Result<Vec<SessionVerdict>, StoreError> {
    let now = now_ms();
    let gw_hex = gateway.public_key.to_string();
    let actor = format!("gateway:{gw_hex}");
    let ttl_ms = attachment_ttl_ms(state);
    let refuse_clones = state.config.security.clone_action == CloneAction::Refuse;
    let tolerance = i64::from(state.config.security.clone_tolerance_ms);
    let mut verdicts = Vec::with_capacity(events.len());
    let mut alerts = Vec::new();
    // Statuses first; then one write transaction for the whole report, which
    // reads the other sessions under the writer lock: two gateways reporting
    // a clone at the same moment must not both find the other absent.
    let mut plan = Vec::with_capacity(events.len());
    for (i, ev) in events.iter().enumerate() {
        let status = match state.store.peripheral(&ev.peripheral).await {
            Ok(r) => Some(r.status),
            Err(StoreError::NotFound) => None,
            Err(e) => return Err(e),
        };
        // An attach counts only from a gateway that was vouched for this
        // peripheral recently enough for the session to be real: otherwise a
        // gateway could report any identity attached and frame a genuine
        // device as a clone elsewhere.
        // Detaches too: their times are dated against the vouch as well.
        let vouch_at = match status {
            Some(Status::Active) => {
                live_vouch_at(state, &ev.peripheral, &gateway.public_key, now).await?
            }
            _ => None,
        };
        let vouched = vouch_at.is_some()
            || !matches!(
                (ev.kind, status),
                (
                    SessionEventKind::Attached | SessionEventKind::Concurrent,
                    Some(Status::Active)
                )
            );
        // Ages, on this backend's clock. A session starts after its vouch:
        // a gateway cannot date one earlier (to be judged the earlier of a
        // pair), nor before the attachment could have been recorded.
        let at = |age_ms: u32| now - i64::from(age_ms).min(ttl_ms);
        let (started_ms, heard_ms) = times
            .get(i)
            .map_or((now, now), |t| (at(t.started_ms_ago), at(t.heard_ms_ago)));
        let started_ms = vouch_at.map_or(started_ms, |v| started_ms.max(v));
        plan.push((
            ev,
            status,
            vouched,
            vouch_at,
            started_ms,
            heard_ms.max(started_ms),
        ));
    }
    let mut tx = state.store.begin_write().await?;
    for (ev, status, vouched, vouch_at, started_ms, heard_ms) in plan {
        let pid = ev.peripheral.to_string();
        let sid = hex::encode(ev.session_id);
        let verdict = match ev.kind {
            SessionEventKind::Detached => {
                tx.detach(
                    &ev.peripheral,
                    &gateway.public_key,
                    &ev.session_id,
                    started_ms,
                    heard_ms,
                    now.saturating_add(ttl_ms),
                )
                .await?;
                // The pairs waiting for this session's end are judged now
                // that it says when it last heard the device.
                for w in tx
                    .take_suspicions(&ev.peripheral, &gateway.public_key, &ev.session_id)
                    .await?
                {
                    if heard_ms <= w.since_ms.saturating_add(tolerance) {
                        continue;
                    }
                    let clone = if !w.both_sides {
                        true
                    } else {
                        // The partner must have heard it after `since` too.
                        match tx
                            .session_state(&ev.peripheral, &w.partner_gateway, &w.partner_session)
                            .await?
                        {
                            SessionState::Finished { heard_ms: h, .. } => {
                                h > w.since_ms.saturating_add(tolerance)
                            }
                            SessionState::Open { .. } => {
                                tx.suspect(
                                    &ev.peripheral,
                                    (&w.partner_gateway, &w.partner_session),
                                    (&gw_hex, &sid),
                                    w.since_ms,
                                    false,
                                    now.saturating_add(ttl_ms),
                                )
                                .await?;
                                false
                            }
                            SessionState::Unknown => false,
                        }
                    };
                    if clone {
                        let detail = format!(
                            "heard here and on {} at once, {} ms after the later session began",
                            w.partner_gateway,
                            heard_ms - w.since_ms
                        );
                        let pair = Some(w.partner_gateway.as_str());
                        clone_alert(
                            &mut tx,
                            &mut alerts,
                            (&actor, &ev.peripheral, &gw_hex),
                            pair,
                            detail,
                            now,
                            ttl_ms,
                        )
                        .await?;
                    }
                }
                tx.audit(
                    NewAudit::new("session_detach", "ok", &actor)
                        .peripheral(&pid)
                        .gateway(&gw_hex)
                        .detail(&format!("session {sid}")),
                    now,
                )
                .await?;
                SessionVerdict::Accepted
            }
            // The gateway saw an older session of this peripheral speak
            // after a newer one started on it: two holders of the key live
            // at once on one gateway. Judged as a clone across gateways is,
            // with no attachment recorded (each session's own attach and
            // detach keep those).
            SessionEventKind::Concurrent => {
                let (verdict, reason) = if status != Some(Status::Active) {
                    (SessionVerdict::Refused, "peripheral_not_active")
                } else if !vouched {
                    alerts.push(unvouched_alert(&pid, &gw_hex, now));
                    (SessionVerdict::Refused, "not_vouched")
                } else {
                    let detail = format!(
                        "two sessions live at once on this gateway: session {sid} spoke after a newer one started"
                    );
                    clone_alert(
                        &mut tx,
                        &mut alerts,
                        (&actor, &ev.peripheral, &gw_hex),
                        None,
                        detail,
                        now,
                        ttl_ms,
                    )
                    .await?;
                    if refuse_clones {
                        (SessionVerdict::Refused, "clone_refused")
                    } else {
                        (SessionVerdict::CloneSuspected, "clone_suspected")
                    }
                };
                tx.audit(
                    NewAudit::new("session_concurrent", outcome_of(verdict), &actor)
                        .reason(reason)
                        .peripheral(&pid)
                        .gateway(&gw_hex)
                        .detail(&format!("session {sid}")),
                    now,
                )
                .await?;
                verdict
            }
            SessionEventKind::Attached => {
                let state_now = tx.session_state(&ev.peripheral, &gw_hex, &sid).await?;
                // This session: when it started, and, if its detach came
                // first, when it last heard the device.
                let (this, first) = match state_now {
                    SessionState::Unknown => (Span::open(started_ms), true),
                    SessionState::Open { started_ms } => (Span::open(started_ms), false),
                    // Its detach may have come without a live vouch, its
                    // start unchecked: dated against this vouch now.
                    SessionState::Finished {
                        started_ms,
                        heard_ms,
                        attach_seen,
                    } => {
                        let start = vouch_at.map_or(started_ms, |v| started_ms.max(v));
                        (Span::ended(start, heard_ms.max(start)), !attach_seen)
                    }
                };
                let judged = status == Some(Status::Active) && vouched && first;
                let mut clone_of = Vec::new();
                let mut open_elsewhere = false;
                if judged {
                    for other in tx
                        .sessions_elsewhere(&ev.peripheral, &gateway.public_key, now)
                        .await?
                    {
                        let o = Span {
                            start: other.started_ms,
                            heard: other.heard_ms,
                        };
                        // An open session that began first keeps its place
                        // (under `refuse`).
                        open_elsewhere |= o.heard.is_none() && o.start <= this.start;
                        match judge_pair(this, o, tolerance) {
                            PairJudgment::Clone => clone_of.push(other.gateway),
                            PairJudgment::Clear => {}
                            PairJudgment::Wait {
                                on_this,
                                since,
                                both,
                            } => {
                                let (waiting, partner) = if on_this {
                                    (
                                        (gw_hex.as_str(), sid.as_str()),
                                        (other.gateway.as_str(), other.session.as_str()),
                                    )
                                } else {
                                    (
                                        (other.gateway.as_str(), other.session.as_str()),
                                        (gw_hex.as_str(), sid.as_str()),
                                    )
                                };
                                tx.suspect(
                                    &ev.peripheral,
                                    waiting,
                                    partner,
                                    since,
                                    both,
                                    now.saturating_add(ttl_ms),
                                )
                                .await?;
                            }
                        }
                    }
                }
                let (verdict, reason) = if status != Some(Status::Active) {
                    (
                        SessionVerdict::Refused,
                        status.map_or("unknown_peripheral", |s| match s {
                            Status::Pending => "peripheral_pending",
                            Status::Suspended => "peripheral_suspended",
                            _ => "peripheral_revoked",
                        }),
                    )
                } else if !vouched {
                    alerts.push(unvouched_alert(&pid, &gw_hex, now));
                    (SessionVerdict::Refused, "not_vouched")
                } else if !clone_of.is_empty() {
                    for other in &clone_of {
                        let detail = format!("heard here and on {other} at once");
                        let pair = Some(other.as_str());
                        clone_alert(
                            &mut tx,
                            &mut alerts,
                            (&actor, &ev.peripheral, &gw_hex),
                            pair,
                            detail,
                            now,
                            ttl_ms,
                        )
                        .await?;
                    }
                    if refuse_clones {
                        (SessionVerdict::Refused, "clone_refused")
                    } else {
                        (SessionVerdict::CloneSuspected, "clone_suspected")
                    }
                } else if refuse_clones && open_elsewhere && this.heard.is_none() {
                    // Not judged yet (the other session may be a link its
                    // gateway has not yet seen die), but the policy allows
                    // one live session at a time: the one that began first.
                    (SessionVerdict::Refused, "live_elsewhere")
                } else if this.heard.is_some() {
                    (SessionVerdict::Accepted, "already_detached")
                } else {
                    (SessionVerdict::Accepted, "")
                };
                if verdict != SessionVerdict::Refused {
                    tx.attach(
                        &ev.peripheral,
                        &gateway.public_key,
                        &ev.session_id,
                        this.start,
                        now.saturating_add(ttl_ms),
                    )
                    .await?;
                }
                tx.audit(
                    NewAudit::new("session_attach", outcome_of(verdict), &actor)
                        .reason(reason)
                        .peripheral(&pid)
                        .gateway(&gw_hex)
                        .detail(&format!("session {sid}")),
                    now,
                )
                .await?;
                verdict
            }
        };
        verdicts.push(verdict);
    }
    tx.commit().await?;
    for a in alerts {
        state.alerter.raise(a);
    }
    Ok(verdicts)
}

/// How long an attachment without a detach counts as live, milliseconds.
fn attachment_ttl_ms(state: &AppState) -> i64 {
    i64::try_from(state.config.security.attachment_ttl_s)
        .unwrap_or(i64::MAX / 2)
        .saturating_mul(1000)
}

/// The audit outcome of a verdict.
fn outcome_of(verdict: SessionVerdict) -> &'static str {
    if verdict == SessionVerdict::Refused {
        "refused"
    } else {
        "ok"
    }
}

/// The alert for a session reported without a live vouch.
fn unvouched_alert(pid: &str, gw_hex: &str, now: i64) -> Alert {
    Alert {
        alert: "unvouched_session",
        peripheral: Some(pid.to_owned()),
        gateway: Some(gw_hex.to_owned()),
        detail: "session reported without a live vouch for this gateway".to_owned(),
        at_ms: now,
    }
}

/// Audits a suspected clone (`clone_alert`) in `tx` and queues its alert,
/// raised once the transaction commits. `who` is (actor, peripheral, this
/// gateway); across gateways, `other` names the other gateway, and at most
/// one alert per peripheral and pair of gateways is raised per
/// `ttl_ms` (a pair judged again, or reported again, is the same clone).
#[allow(clippy::too_many_arguments)]
async fn clone_alert(
    tx: &mut crate::store::WriteTx<'_>,
    alerts: &mut Vec<Alert>,
    (actor, peripheral, gw_hex): (&str, &PeripheralId, &str),
    other: Option<&str>,
    detail: String,
    now: i64,
    ttl_ms: i64,
) -> Result<(), StoreError> {
    if let Some(other) = other {
        if !tx
            .first_clone_alert(peripheral, (gw_hex, other), now, now.saturating_add(ttl_ms))
            .await?
        {
            return Ok(());
        }
    }
    let pid = peripheral.to_string();
    tx.audit(
        NewAudit::new("clone_alert", "alert", actor)
            .reason("clone_suspected")
            .peripheral(&pid)
            .gateway(gw_hex)
            .detail(&detail),
        now,
    )
    .await?;
    alerts.push(Alert {
        alert: "clone_suspected",
        peripheral: Some(pid),
        gateway: Some(gw_hex.to_owned()),
        detail,
        at_ms: now,
    });
    Ok(())
}

/// What clone detection knows of one session: when it started and, once it
/// ended, when it last heard the device (backend time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: i64,
    heard: Option<i64>,
}

impl Span {
    fn open(start: i64) -> Self {
        Self { start, heard: None }
    }
    fn ended(start: i64, heard: i64) -> Self {
        Self {
            start,
            heard: Some(heard),
        }
    }
}

/// The judgment of a pair of sessions of one peripheral on two gateways,
/// as far as what is known allows (SPEC.md §10.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PairJudgment {
    /// Two devices were heard at once.
    Clone,
    /// One device could have made both.
    Clear,
    /// Judged at the detach of this session (`on_this`) or of the other:
    /// a clone if it heard the device after `since`, and with `both`, the
    /// other one too.
    Wait {
        on_this: bool,
        since: i64,
        both: bool,
    },
}

/// Judges `this` against `other`. When one clearly started first (more
/// than `tolerance` before), it is a clone if that one heard the device
/// after the other began more than `tolerance` later: a genuine device
/// never speaks on a session it left. When their starts are closer than
/// that, the reported times cannot order them, and it is a clone only if
/// both heard the device more than `tolerance` after the later start.
fn judge_pair(this: Span, other: Span, tolerance: i64) -> PairJudgment {
    let after = |h: i64, since: i64| h > since.saturating_add(tolerance);
    let one_sided = |earlier: Span, on_this: bool, since: i64| match earlier.heard {
        Some(h) if after(h, since) => PairJudgment::Clone,
        Some(_) => PairJudgment::Clear,
        None => PairJudgment::Wait {
            on_this,
            since,
            both: false,
        },
    };
    if other.start.saturating_add(tolerance) < this.start {
        one_sided(other, false, this.start)
    } else if this.start.saturating_add(tolerance) < other.start {
        one_sided(this, true, other.start)
    } else {
        let since = this.start.max(other.start);
        match (
            this.heard.map(|h| after(h, since)),
            other.heard.map(|h| after(h, since)),
        ) {
            (Some(false), _) | (_, Some(false)) => PairJudgment::Clear,
            (Some(true), Some(true)) => PairJudgment::Clone,
            (Some(true), None) => PairJudgment::Wait {
                on_this: false,
                since,
                both: false,
            },
            (None, Some(true)) => PairJudgment::Wait {
                on_this: true,
                since,
                both: false,
            },
            (None, None) => PairJudgment::Wait {
                on_this: false,
                since,
                both: true,
            },
        }
    }
}

/// One decision to make durable.
pub(crate) struct JobItem {
    /// `e_P` to record, for a positive decision. If it is already recorded,
    /// the decision becomes a `replay` refusal.
    pub(crate) ephemeral: Option<DhPublic>,
    /// The audit entry.
    pub(crate) audit: NewAudit,
}

struct Job {
    items: Vec<JobItem>,
    reply: oneshot::Sender<Result<Vec<bool>, ()>>,
}

/// The single writer of vouch decisions (group commit; see the module doc).
#[derive(Clone, Debug)]
pub(crate) struct Committer {
    tx: mpsc::Sender<Job>,
}

/// Most decisions in one group commit.
const MAX_GROUP: usize = 512;

impl Committer {
    /// Starts the writer task; it ends when every handle is dropped.
    pub(crate) fn spawn(
        store: Store,
        metrics: crate::metrics::Metrics,
        refusals: Arc<RefusalTally>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run_committer(store, metrics, refusals, rx));
        Self { tx }
    }

    /// Commits `items`; returns, per item, whether it stands (`false`: its
    /// `e_P` was already recorded, so it is a replay).
    pub(crate) async fn commit(&self, items: Vec<JobItem>) -> Result<Vec<bool>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { items, reply })
            .await
            .map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?;
        rx.await
            .map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?
            .map_err(|()| StoreError::Database(sqlx::Error::WorkerCrashed))
    }
}

async fn run_committer(
    store: Store,
    metrics: crate::metrics::Metrics,
    refusals: Arc<RefusalTally>,
    mut rx: mpsc::Receiver<Job>,
) {
    while let Some(first) = rx.recv().await {
        let mut n = first.items.len();
        let mut jobs = vec![first];
        while n < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => {
                    n += j.items.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        metrics
            .commit_batch
            .with_label_values::<&str>(&[])
            .observe(n as f64);
        let started = Instant::now();
        match write_group(&store, &refusals, &mut jobs).await {
            Ok(results) => {
                for (job, r) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(r));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, decisions = n, "group commit failed; answering 503");
                for job in jobs {
                    let _ = job.reply.send(Err(()));
                }
            }
        }
        tracing::trace!(
            decisions = n,
            elapsed_us = started.elapsed().as_micros() as u64,
            "group commit"
        );
    }
}

async fn write_group(
    store: &Store,
    refusals: &RefusalTally,
    jobs: &mut [Job],
) -> Result<Vec<Vec<bool>>, StoreError> {
    let now = now_ms();
    // Each e_P once; a second copy in the same group is a replay of the first.
    let mut unique = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for item in jobs.iter().flat_map(|j| j.items.iter()) {
        if let Some(e) = &item.ephemeral {
            if seen.insert(e.0) {
                unique.push(*e);
            }
        }
    }
    let mut tx = store.begin_write().await?;
    let fresh = if unique.is_empty() {
        Default::default()
    } else {
        tx.record_ephemerals(&unique, now).await?
    };
    let mut taken = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(jobs.len());
    let mut entries = Vec::new();
    for job in jobs.iter_mut() {
        let mut flags = Vec::with_capacity(job.items.len());
        for item in job.items.iter_mut() {
            let stands = match &item.ephemeral {
                Some(e) => fresh.contains(&e.0) && taken.insert(e.0),
                None => true,
            };
            flags.push(stands);
            if !stands {
                // A replay caught here (the same hello in flight twice) is a
                // refusal like those caught before: counted if repeated.
                item.audit.outcome = "denied".into();
                item.audit.reason = Reason::Replay.code().into();
                item.audit.detail = String::new();
                if refusals.admit(&item.audit, now) == Admit::Counted {
                    continue;
                }
            }
            entries.push(item.audit.clone());
        }
        out.push(flags);
    }
    tx.audit_many(&entries, now).await?;
    tx.commit().await?;
    Ok(out)
}
