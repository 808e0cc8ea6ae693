//! Session reports (SPEC.md §11.6) and clone detection (§10.5): the
//! attach, detach and concurrency events gateways report, each judged
//! against the live vouch it stems from and the peripheral's sessions on
//! other gateways.
//!
//! A report's reads (statuses, live vouches) are made by its request; its
//! judgment and its writes go through the group commit the vouches use
//! ([`super::Committer`]): one write transaction takes every report (and
//! every vouch decision) pending at that moment, judges the reports one
//! after another under the writer lock, and commits once. A report is
//! answered only once that transaction has committed.

use vouch_proto::keys::PeripheralId;
use vouch_proto::wire::backend::{EventTimes, SessionEvent, SessionEventKind, SessionVerdict};

use super::commit::ReportSlot;
#[cfg(doc)]
use super::Committer;
use crate::config::{CloneAction, Security};
use crate::model::{GatewayRecord, Status};
use crate::security::{Alert, Alerter};
use crate::store::{
    now_ms, NewAudit, PeripheralSessions, SessionState, Store, StoreError, StoredGrant, Suspicion,
    WriteTx,
};

/// How much later than the vouch's lifetimes an attach report still counts:
/// the gateway's ticket clock starts after the backend's audit time, the
/// report waits for the handshake to finish and for a slot to the backend,
/// and the two clocks may differ.
pub(crate) const ATTACH_GRACE_MS: i64 = 120_000;

/// When the vouch `grant` (the latest for a peripheral at the reporting
/// gateway) was given, if a session can be starting under it at `now`: a
/// full handshake's session starts right after its vouch, and every
/// session resumed from it within `resumption_s` of it (the longer of the
/// two lifetimes is allowed, plus [`ATTACH_GRACE_MS`]). No session of it
/// started before that time.
fn live_vouch_at(grant: Option<StoredGrant>, now: i64) -> Option<i64> {
    let StoredGrant {
        at_ms,
        lifetimes: l,
    } = grant?;
    let span_ms = i64::from(l.session_s.max(l.resumption_s))
        .saturating_mul(1000)
        .saturating_add(ATTACH_GRACE_MS);
    (now <= at_ms.saturating_add(span_ms)).then_some(at_ms)
}

/// The clone-detection settings (`[security]`), in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CloneRules {
    /// How long an attachment without a detach counts as live, and how long
    /// a detach is remembered for its session's attach arriving late
    /// (`attachment_ttl_s`).
    pub(crate) ttl_ms: i64,
    /// Reported times this close count as one moment (`clone_tolerance_ms`).
    pub(crate) tolerance_ms: i64,
    /// `clone_action = "refuse"`.
    pub(crate) refuse: bool,
}

impl CloneRules {
    /// The rules `security` configures.
    pub(crate) fn new(security: &Security) -> Self {
        Self {
            ttl_ms: i64::try_from(security.attachment_ttl_s)
                .unwrap_or(i64::MAX / 2)
                .saturating_mul(1000),
            tolerance_ms: i64::from(security.clone_tolerance_ms),
            refuse: security.clone_action == CloneAction::Refuse,
        }
    }
}

/// One session report being judged: who reports, under which rules, and the
/// alerts to raise once its transaction commits.
struct Report<'a> {
    gateway: &'a GatewayRecord,
    gw_hex: String,
    actor: String,
    rules: CloneRules,
    now: i64,
    alerts: Vec<Alert>,
    /// Its audit entries, in order, appended with the group's
    /// ([`Judged::entries`]).
    entries: Vec<NewAudit>,
}

impl Report<'_> {
    /// The audit entry of a reported event: `action` with the verdict's
    /// outcome and `reason`, naming the session.
    fn entry(
        &self,
        action: &str,
        verdict: SessionVerdict,
        reason: &str,
        ev: &SessionEvent,
    ) -> NewAudit {
        NewAudit::new(action, outcome_of(verdict), &self.actor)
            .reason(reason)
            .peripheral(&ev.peripheral.to_string())
            .gateway(&self.gw_hex)
            .detail(&format!("session {}", hex::encode(ev.session_id)))
    }
}

/// One reported event with what was read before the write transaction.
struct Planned {
    ev: SessionEvent,
    /// The peripheral's status (`None`: not registered).
    status: Option<Status>,
    /// Whether the event may count (see [`plan`]).
    vouched: bool,
    /// When the vouch its session can stem from was given, if one is live.
    vouch_at: Option<i64>,
    /// When its session started and last heard the device, backend time.
    started_ms: i64,
    heard_ms: i64,
}

/// Records the session events a gateway reports and judges each: a
/// peripheral that is not active must not have a session (`Refused`); two
/// sessions of one peripheral on different gateways are a suspected clone
/// when the earlier one heard the device after the later one began, and a
/// gateway that saw one live twice at once reports it (`Concurrent`):
/// alert, and `Refused` if the policy says so, else `CloneSuspected`
/// (SPEC.md §10.5). `times` holds one entry per event, or none (a gateway
/// that predates them: every event then happened at arrival). `slot` is the
/// report's room in the writer's backlog ([`Committer::reserve_report`]),
/// through which it goes to the group commit.
pub(crate) async fn report_sessions(
    store: &Store,
    alerter: &Alerter,
    rules: CloneRules,
    gateway: &GatewayRecord,
    events: &[SessionEvent],
    times: &[EventTimes],
    slot: ReportSlot,
) -> Result<Vec<SessionVerdict>, StoreError> {
    let now = now_ms();
    // Statuses first; then the group commit judges the whole report in one
    // write transaction, which reads the other sessions under the writer
    // lock: two gateways reporting a clone at the same moment must not both
    // find the other absent (reports in one transaction are judged one
    // after another, each seeing what the ones before it wrote).
    let plan = plan(store, gateway, rules, now, events, times).await?;
    let job = ReportJob {
        gateway: gateway.clone(),
        rules,
        now,
        plan,
    };
    let judged = slot.report(job).await?;
    for a in judged.alerts {
        alerter.raise(a);
    }
    Ok(judged.verdicts)
}

/// A session report whose reads are done, waiting for the group commit
/// that judges and records it.
pub(crate) struct ReportJob {
    gateway: GatewayRecord,
    rules: CloneRules,
    /// When it arrived, backend time.
    now: i64,
    plan: Vec<Planned>,
}

impl ReportJob {
    /// How many events it holds.
    pub(crate) fn events(&self) -> usize {
        self.plan.len()
    }
}

/// What a report came to: a verdict per event, and the alerts to raise
/// once its transaction committed.
pub(crate) struct Judged {
    pub(crate) verdicts: Vec<SessionVerdict>,
    pub(crate) alerts: Vec<Alert>,
    /// Its audit entries, which the group appends together (one statement
    /// per 24) before it commits.
    pub(crate) entries: Vec<NewAudit>,
}

/// Judges and records `job` in `tx` (the group commit's transaction).
pub(crate) async fn judge(tx: &mut WriteTx<'_>, job: &ReportJob) -> Result<Judged, StoreError> {
    let gw_hex = job.gateway.public_key.to_string();
    let mut report = Report {
        gateway: &job.gateway,
        actor: format!("gateway:{gw_hex}"),
        gw_hex,
        rules: job.rules,
        now: job.now,
        alerts: Vec::new(),
        entries: Vec::new(),
    };
    let mut verdicts = Vec::with_capacity(job.plan.len());
    for p in &job.plan {
        let verdict = match p.ev.kind {
            SessionEventKind::Detached => detached(tx, &mut report, p).await?,
            SessionEventKind::Concurrent => concurrent(tx, &mut report, p).await?,
            SessionEventKind::Attached => attached(tx, &mut report, p).await?,
        };
        verdicts.push(verdict);
    }
    Ok(Judged {
        verdicts,
        alerts: report.alerts,
        entries: report.entries,
    })
}

/// The reads before the write transaction: each event's peripheral status,
/// the live vouch its session can stem from, and its times on this
/// backend's clock.
async fn plan(
    store: &Store,
    gateway: &GatewayRecord,
    rules: CloneRules,
    now: i64,
    events: &[SessionEvent],
    times: &[EventTimes],
) -> Result<Vec<Planned>, StoreError> {
    let ids: Vec<PeripheralId> = events.iter().map(|e| e.peripheral).collect();
    let devices = store.reported_devices(&gateway.public_key, &ids).await?;
    let mut plan = Vec::with_capacity(events.len());
    for (i, ev) in events.iter().enumerate() {
        let device = devices.get(&ev.peripheral);
        let status = device.map(|d| d.status);
        // An attach counts only from a gateway that was vouched for this
        // peripheral recently enough for the session to be real: otherwise a
        // gateway could report any identity attached and frame a genuine
        // device as a clone elsewhere.
        // Detaches too: their times are dated against the vouch as well.
        let vouch_at = match device {
            Some(d) if d.status == Status::Active => live_vouch_at(d.grant, now),
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
        let at = |age_ms: u32| now - i64::from(age_ms).min(rules.ttl_ms);
        let (started_ms, heard_ms) = times
            .get(i)
            .map_or((now, now), |t| (at(t.started_ms_ago), at(t.heard_ms_ago)));
        let started_ms = vouch_at.map_or(started_ms, |v| started_ms.max(v));
        plan.push(Planned {
            ev: ev.clone(),
            status,
            vouched,
            vouch_at,
            started_ms,
            heard_ms: heard_ms.max(started_ms),
        });
    }
    Ok(plan)
}

/// A detach: ends its own session, then judges the pairs that waited for
/// it to say when it last heard the device.
async fn detached(
    tx: &mut WriteTx<'_>,
    r: &mut Report<'_>,
    p: &Planned,
) -> Result<SessionVerdict, StoreError> {
    let ev = &p.ev;
    let sid = hex::encode(ev.session_id);
    tx.detach(
        &ev.peripheral,
        &r.gateway.public_key,
        &ev.session_id,
        p.started_ms,
        p.heard_ms,
        r.now.saturating_add(r.rules.ttl_ms),
    )
    .await?;
    for w in tx
        .take_suspicions(&ev.peripheral, &r.gateway.public_key, &ev.session_id)
        .await?
    {
        judge_waiting(tx, r, ev, &sid, p.heard_ms, w).await?;
    }
    let verdict = SessionVerdict::Accepted;
    r.entries.push(r.entry("session_detach", verdict, "", ev));
    Ok(verdict)
}

/// A pair that waited for this session's end (`heard_ms`): a clone if this
/// session heard the device after `w.since_ms`, and, when both sides were
/// to be checked, the partner too (or, if it is still open, it waits on).
async fn judge_waiting(
    tx: &mut WriteTx<'_>,
    r: &mut Report<'_>,
    ev: &SessionEvent,
    sid: &str,
    heard_ms: i64,
    w: Suspicion,
) -> Result<(), StoreError> {
    let tolerance = r.rules.tolerance_ms;
    if heard_ms <= w.since_ms.saturating_add(tolerance) {
        return Ok(());
    }
    let clone = if !w.both_sides {
        true
    } else {
        // The partner must have heard it after `since` too.
        match tx
            .sessions_of(
                &ev.peripheral,
                &w.partner_gateway,
                &w.partner_session,
                r.now,
            )
            .await?
            .state(&w.partner_gateway, &w.partner_session)
        {
            SessionState::Finished { heard_ms: h, .. } => h > w.since_ms.saturating_add(tolerance),
            SessionState::Open { .. } => {
                tx.suspect(
                    &ev.peripheral,
                    (&w.partner_gateway, &w.partner_session),
                    (&r.gw_hex, sid),
                    w.since_ms,
                    false,
                    r.now.saturating_add(r.rules.ttl_ms),
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
        clone_alert(tx, r, &ev.peripheral, Some(&w.partner_gateway), detail).await?;
    }
    Ok(())
}

/// The gateway saw an older session of this peripheral speak after a newer
/// one started on it: two holders of the key live at once on one gateway.
/// Judged as a clone across gateways is, with no attachment recorded (each
/// session's own attach and detach keep those).
async fn concurrent(
    tx: &mut WriteTx<'_>,
    r: &mut Report<'_>,
    p: &Planned,
) -> Result<SessionVerdict, StoreError> {
    let pid = p.ev.peripheral.to_string();
    let sid = hex::encode(p.ev.session_id);
    let (verdict, reason) = if p.status != Some(Status::Active) {
        (SessionVerdict::Refused, "peripheral_not_active")
    } else if !p.vouched {
        r.alerts.push(unvouched_alert(&pid, &r.gw_hex, r.now));
        (SessionVerdict::Refused, "not_vouched")
    } else {
        let detail = format!(
            "two sessions live at once on this gateway: session {sid} spoke after a newer one started"
        );
        clone_alert(tx, r, &p.ev.peripheral, None, detail).await?;
        if r.rules.refuse {
            (SessionVerdict::Refused, "clone_refused")
        } else {
            (SessionVerdict::CloneSuspected, "clone_suspected")
        }
    };
    r.entries
        .push(r.entry("session_concurrent", verdict, reason, &p.ev));
    Ok(verdict)
}

/// An attach: judged against the peripheral's sessions on other gateways
/// (the first report of it only), then recorded unless refused.
async fn attached(
    tx: &mut WriteTx<'_>,
    r: &mut Report<'_>,
    p: &Planned,
) -> Result<SessionVerdict, StoreError> {
    let ev = &p.ev;
    let sid = hex::encode(ev.session_id);
    // This session and the others, in one read.
    let sessions = tx
        .sessions_of(&ev.peripheral, &r.gw_hex, &sid, r.now)
        .await?;
    let known = sessions.state(&r.gw_hex, &sid);
    let (this, first) = this_session(known, p.started_ms, p.vouch_at);
    let judged = p.status == Some(Status::Active) && p.vouched && first;
    let (clone_of, open_elsewhere) = if judged {
        judge_against_others(tx, r, ev, &sid, this, &sessions).await?
    } else {
        (Vec::new(), false)
    };
    let (verdict, reason) = attach_verdict(tx, r, p, this, &clone_of, open_elsewhere).await?;
    if verdict != SessionVerdict::Refused {
        tx.attach(
            &ev.peripheral,
            &r.gateway.public_key,
            &ev.session_id,
            this.start,
            r.now.saturating_add(r.rules.ttl_ms),
        )
        .await?;
    }
    r.entries
        .push(r.entry("session_attach", verdict, reason, ev));
    Ok(verdict)
}

/// This session as the store knows it: when it started and, if its detach
/// came first, when it last heard the device; and whether this is the
/// first report of its attach.
fn this_session(known: SessionState, started_ms: i64, vouch_at: Option<i64>) -> (Span, bool) {
    match known {
        SessionState::Unknown => (Span::open(started_ms), true),
        SessionState::Open { started_ms } => (Span::open(started_ms), false),
        // Its detach may have come without a live vouch, its start
        // unchecked: dated against this vouch now.
        SessionState::Finished {
            started_ms,
            heard_ms,
            attach_seen,
        } => {
            let start = vouch_at.map_or(started_ms, |v| started_ms.max(v));
            (Span::ended(start, heard_ms.max(start)), !attach_seen)
        }
    }
}

/// Judges `this` session against the peripheral's sessions on other
/// gateways: the gateways it is a clone with, and whether one that began
/// first is still open. Pairs that cannot be judged yet wait for a detach.
async fn judge_against_others(
    tx: &mut WriteTx<'_>,
    r: &Report<'_>,
    ev: &SessionEvent,
    sid: &str,
    this: Span,
    sessions: &PeripheralSessions,
) -> Result<(Vec<String>, bool), StoreError> {
    let mut clone_of = Vec::new();
    let mut open_elsewhere = false;
    for other in sessions.elsewhere(&r.gw_hex, r.now) {
        let o = Span {
            start: other.started_ms,
            heard: other.heard_ms,
        };
        // An open session that began first keeps its place (under `refuse`).
        open_elsewhere |= o.heard.is_none() && o.start <= this.start;
        match judge_pair(this, o, r.rules.tolerance_ms) {
            PairJudgment::Clone => clone_of.push(other.gateway),
            PairJudgment::Clear => {}
            PairJudgment::Wait {
                on_this,
                since,
                both,
            } => {
                let here = (r.gw_hex.as_str(), sid);
                let there = (other.gateway.as_str(), other.session.as_str());
                let (waiting, partner) = if on_this {
                    (here, there)
                } else {
                    (there, here)
                };
                tx.suspect(
                    &ev.peripheral,
                    waiting,
                    partner,
                    since,
                    both,
                    r.now.saturating_add(r.rules.ttl_ms),
                )
                .await?;
            }
        }
    }
    Ok((clone_of, open_elsewhere))
}

/// The verdict on an attach and its audit reason; alerts the clones found.
async fn attach_verdict(
    tx: &mut WriteTx<'_>,
    r: &mut Report<'_>,
    p: &Planned,
    this: Span,
    clone_of: &[String],
    open_elsewhere: bool,
) -> Result<(SessionVerdict, &'static str), StoreError> {
    Ok(if p.status != Some(Status::Active) {
        (
            SessionVerdict::Refused,
            p.status.map_or("unknown_peripheral", |s| match s {
                Status::Pending => "peripheral_pending",
                Status::Suspended => "peripheral_suspended",
                _ => "peripheral_revoked",
            }),
        )
    } else if !p.vouched {
        r.alerts.push(unvouched_alert(
            &p.ev.peripheral.to_string(),
            &r.gw_hex,
            r.now,
        ));
        (SessionVerdict::Refused, "not_vouched")
    } else if !clone_of.is_empty() {
        for other in clone_of {
            let detail = format!("heard here and on {other} at once");
            clone_alert(tx, r, &p.ev.peripheral, Some(other), detail).await?;
        }
        if r.rules.refuse {
            (SessionVerdict::Refused, "clone_refused")
        } else {
            (SessionVerdict::CloneSuspected, "clone_suspected")
        }
    } else if r.rules.refuse && open_elsewhere && this.heard.is_none() {
        // Not judged yet (the other session may be a link its gateway has
        // not yet seen die), but the policy allows one live session at a
        // time: the one that began first.
        (SessionVerdict::Refused, "live_elsewhere")
    } else if this.heard.is_some() {
        (SessionVerdict::Accepted, "already_detached")
    } else {
        (SessionVerdict::Accepted, "")
    })
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

/// Audits a suspected clone of `peripheral` (`clone_alert`) in `tx` and
/// queues its alert, raised once the transaction commits. Across gateways,
/// `other` names the other gateway, and at most one alert per peripheral
/// and pair of gateways is raised per `ttl_ms` (a pair judged again, or
/// reported again, is the same clone).
async fn clone_alert(
    tx: &mut WriteTx<'_>,
    r: &mut Report<'_>,
    peripheral: &PeripheralId,
    other: Option<&str>,
    detail: String,
) -> Result<(), StoreError> {
    if let Some(other) = other {
        let until = r.now.saturating_add(r.rules.ttl_ms);
        if !tx
            .first_clone_alert(peripheral, (&r.gw_hex, other), r.now, until)
            .await?
        {
            return Ok(());
        }
    }
    let pid = peripheral.to_string();
    r.entries.push(
        NewAudit::new("clone_alert", "alert", &r.actor)
            .reason("clone_suspected")
            .peripheral(&pid)
            .gateway(&r.gw_hex)
            .detail(&detail),
    );
    r.alerts.push(Alert {
        alert: "clone_suspected",
        peripheral: Some(pid),
        gateway: Some(r.gw_hex.clone()),
        detail,
        at_ms: r.now,
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
