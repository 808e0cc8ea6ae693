//! One task per peripheral link (STYLE.md §3.15): it owns the protocol state
//! and loops over link input, the backend's answer, the next deadline, local
//! commands and shutdown.
//!
//! Once a session is established (full handshake or resumption), the driver
//! sends the peripheral every trust-anchor update the gateway holds, in
//! serial order, one record each (SPEC.md §7.7): it cannot know which ones
//! the peripheral applied, and the peripheral refuses the stale ones at the
//! cost of a comparison. One update goes out per turn of the session loop,
//! between the session's own traffic, so a long list never holds up a
//! command or an inbound record for longer than one record takes to send.

use std::sync::Arc;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use vouch_proto::anchor::{AnchorAction, AnchorUpdate, MAX_ANCHOR_UPDATE_LEN};
use vouch_proto::error::PeerMisbehaved;
use vouch_proto::handshake::gateway::{
    GatewayConfig, GatewayEstablished, GatewayEvent, GatewayHandshake,
};
use vouch_proto::session::{CloseReason, Inbound as ProtoInbound};
use vouch_proto::wire::backend::{SessionEvent, SessionEventKind, SessionVerdict, VouchAnswer};
use vouch_proto::wire::{Message, RECORD_OVERHEAD};
use vouch_proto::{Error as ProtoError, Timestamp};

use crate::backend_client::{BackendApi, BackendError};
use crate::clock::Clock;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::reports::{Heard, Reports};
use crate::sessions::{Command, Inbound, SessionInfo, SessionTable, TicketClaim};
use crate::transport::{Link, LinkError};

/// What every driver shares.
pub struct Context<B, C> {
    /// The protocol settings (gateway identity, timeouts).
    pub config: GatewayConfig,
    /// The backend.
    pub backend: B,
    /// The clock.
    pub clock: C,
    /// Sessions and tickets.
    pub table: Arc<SessionTable>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Idle time after which a session is closed.
    pub idle_timeout: Duration,
    /// Session events waiting to be reported, coalesced into reports.
    pub reports: Reports,
}

/// How a driver ended.
#[derive(Debug)]
pub enum Outcome {
    /// The handshake failed or the link dropped before it completed.
    HandshakeFailed(Error),
    /// A session ran and ended.
    SessionEnded {
        /// Why it ended.
        reason: SessionEnd,
    },
}

/// Why an established session ended (logged by its display).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionEnd {
    /// The peripheral's link went away.
    #[error("peer disconnected")]
    PeerDisconnected,
    /// The link failed.
    #[error("link error: {0}")]
    Link(#[source] LinkError),
    /// The peripheral sent a Close record.
    #[error("peripheral closed ({0})")]
    ClosedByPeripheral(CloseReason),
    /// A record arrived after the session's lifetime ran out.
    #[error("session expired")]
    Expired,
    /// The gateway closed it: the session's lifetime ended
    /// ([`CloseReason::EXPIRED`]), it went idle or another session of the
    /// peripheral replaced it ([`CloseReason::NORMAL`]), or a revocation or
    /// policy change ended it.
    #[error("{}", closed_by_gateway(*.0))]
    ClosedByGateway(CloseReason),
    /// The gateway is shutting down.
    #[error("gateway shutting down")]
    Shutdown,
}

fn closed_by_gateway(reason: CloseReason) -> String {
    match reason {
        CloseReason::EXPIRED => "session lifetime ended".into(),
        CloseReason::NORMAL => "closed: idle or replaced".into(),
        r => format!("closed by gateway ({r})"),
    }
}

/// Runs one link: the handshake, then the session, until either side ends it
/// or `shutdown` turns true. `seed` seeds this link's CSPRNG (from the OS in
/// production, fixed in tests and the simulator).
pub async fn run_link<L, B, C>(
    ctx: Arc<Context<B, C>>,
    link: &mut L,
    seed: [u8; 32],
    mut shutdown: watch::Receiver<bool>,
) -> Outcome
where
    L: Link,
    B: BackendApi,
    C: Clock,
{
    // Boxed, with the RNG and the handshake state inside: all of it is freed
    // when the handshake ends instead of sizing every session's task.
    let live = Box::pin(async {
        let started = std::time::Instant::now();
        // The policy this handshake is judged under (SPEC.md §10.5).
        let epoch = ctx.table.feed().policy_epoch();
        let done = match handshake(&ctx, link, seed, &mut shutdown).await {
            Ok((est, claim)) => register(&ctx, est, claim, epoch, link.peer(), started.elapsed()),
            Err(e) => Err(e),
        };
        match done {
            Ok(live) => {
                ctx.metrics.handshake_ok(live.resumed, started.elapsed());
                Ok(live)
            }
            Err(e) => {
                ctx.metrics.handshake_failed(&e);
                if matches!(
                    e,
                    Error::Protocol(ProtoError::PeerMisbehaved(PeerMisbehaved::UnknownTicket))
                ) {
                    // A normal case, not misbehaviour: a ticket of another
                    // gateway of the site, one used or expired, or one this
                    // gateway lost. The peripheral runs a full handshake.
                    debug!(link = %link.peer(), "resumption ticket not held here: ResumptionRejected");
                } else {
                    info!(link = %link.peer(), error = %e, "handshake failed");
                }
                Err(e)
            }
        }
    })
    .await;
    match live {
        Ok(mut live) => Outcome::SessionEnded {
            reason: session(&ctx, link, &mut live, &mut shutdown).await,
        },
        Err(e) => Outcome::HandshakeFailed(e),
    }
}

/// What the session loop keeps of an established handshake: little, because
/// it lives for as long as the session does.
struct Live {
    session: vouch_proto::session::Session,
    id: vouch_proto::keys::PeripheralId,
    token: u64,
    mailbox: Arc<crate::sessions::Mailbox>,
    /// Trust-anchor updates still to send; `None` once all went out (or
    /// when none is held). Boxed: a session holds it only while sending.
    delivery: Option<Box<Delivery>>,
    /// Whether the session is a resumption.
    resumed: bool,
    /// When the session was established, and when it last heard the
    /// peripheral (an authenticated record): what its session reports say
    /// (SPEC.md §10.5).
    times: Heard,
}

/// The trust-anchor updates held when the session was established, and the
/// next one to send.
struct Delivery {
    updates: Arc<[AnchorUpdate]>,
    next: usize,
}

/// Stores the ticket (for a resumption, in place of the one used, if this
/// attempt still holds its claim), registers the session in the table,
/// reports the attach. `epoch` is the table's policy epoch when the
/// handshake started.
fn register<B: BackendApi, C: Clock>(
    ctx: &Arc<Context<B, C>>,
    est: GatewayEstablished,
    claim: Option<TicketClaim>,
    epoch: u64,
    peer: String,
    latency: Duration,
) -> Result<Live, Error> {
    let GatewayEstablished {
        session,
        peripheral,
        ticket,
        ..
    } = est;
    let id = peripheral.id;
    let resumed = claim.is_some();
    match claim {
        Some(claim) => {
            if !ctx.table.complete_resumption(claim, ticket) {
                return Err(Error::ResumptionSuperseded);
            }
        }
        None => ctx.table.store_ticket(ticket),
    }
    info!(
        link = %peer,
        peripheral = %id,
        session = %hex::encode(session.id()),
        resumed,
        latency_ms = latency.as_millis() as u64,
        "session established"
    );
    let mailbox = crate::sessions::Mailbox::new();
    mailbox.touch(ctx.clock.now());
    let info = SessionInfo {
        peripheral: id,
        session_id: session.id(),
        scope: session.scope(),
        link: peer,
        since: ctx.clock.now(),
        expires_at: session.expires_at(),
        resumed,
        group: peripheral.group,
    };
    let token = ctx.table.sessions().insert(info, mailbox.clone());
    // Revoked while the handshake was in flight: the feed's close could not
    // reach a session that was not yet registered, so close it now.
    if ctx.table.feed().is_revoked(&id) {
        mailbox.close(CloseReason::REVOKED);
    }
    // Likewise a policy change: this handshake was judged (or its ticket
    // granted) under the policy before it, and the feed's close-all could
    // not reach it. Checked after the ticket was stored and the session
    // registered: a change after this check drops both itself.
    if ctx.table.feed().policy_epoch() != epoch {
        debug!(peripheral = %id, "the policy changed during the handshake: closing");
        ctx.table.tickets().forget_peripheral(&id);
        mailbox.close(CloseReason::REVOKED);
    }
    ctx.metrics.sessions_changed(ctx.table.sessions().len());
    // Reports go out in the background: a slow or absent backend must not hold
    // up the session.
    let times = Heard::started(ctx.clock.now());
    spawn_report(ctx, id, SessionEventKind::Attached, session.id(), times);
    let delivery = ctx.table.anchor_updates().snapshot().map(|updates| {
        debug!(
            peripheral = %id,
            updates = updates.len(),
            first_serial = updates.first().map_or(0, |u| u.serial),
            last_serial = updates.last().map_or(0, |u| u.serial),
            "sending the trust-anchor updates held"
        );
        Box::new(Delivery { updates, next: 0 })
    });
    Ok(Live {
        session,
        id,
        token,
        mailbox,
        delivery,
        resumed,
        times,
    })
}

async fn handshake<L, B, C>(
    ctx: &Context<B, C>,
    link: &mut L,
    seed: [u8; 32],
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(GatewayEstablished, Option<TicketClaim>), Error>
where
    L: Link,
    B: BackendApi,
    C: Clock,
{
    let mut rng = ChaCha20Rng::from_seed(seed);
    let rng = &mut rng;
    let mut hs = GatewayHandshake::new(ctx.config, ctx.clock.now());
    // For a resumption: the ResumeHello's `e_P'` (what tells a replay), and
    // the claim on the ticket once its binder verified. The ticket itself
    // stays in the store until the resumption completes (SPEC.md §6.1).
    let mut resume_ephemeral: Option<[u8; 32]> = None;
    let mut claim = None;
    let result = async {
        loop {
            // Deadline of the current wait, in tokio time.
            let wait = deadline_after(&ctx.clock, hs.poll_timeout());
            tokio::select! {
                msg = link.recv() => {
                    let msg = msg?.ok_or(Error::Disconnected)?;
                    if let Ok(Message::ResumeHello(h)) = Message::decode(&msg) {
                        resume_ephemeral = Some(*h.ephemeral.as_bytes());
                    }
                    if let Err(e) = hs.handle_input(ctx.clock.now(), &msg, rng) {
                        flush(&mut hs, link).await;
                        return Err(e.into());
                    }
                }
                () = sleep_for(wait) => {
                    hs.handle_timeout(ctx.clock.now());
                    flush(&mut hs, link).await;
                    return Err(Error::Timeout("handshake"));
                }
                _ = shutdown.changed() => return Err(Error::Disconnected),
            }
            match hs.poll_event() {
                Some(GatewayEvent::NeedVouch(req)) => {
                    let answer = tokio::select! {
                        a = ctx.backend.vouch(req) => a,
                        () = sleep_for(deadline_after(&ctx.clock, hs.poll_timeout())) => Err(BackendError::Unavailable("timed out".into())),
                    };
                    let answer = match answer {
                        Ok(a) => a,
                        Err(e) => {
                            if e.is_unavailable() {
                                warn!(error = %e, "backend unavailable: refusing a new peripheral (resumptions still work)");
                            }
                            // Tell the peripheral to come back later.
                            let _ = hs.handle_vouch(ctx.clock.now(), VouchAnswer::Refused(vouch_proto::error::Refusal::Busy));
                            flush(&mut hs, link).await;
                            return Err(e.into());
                        }
                    };
                    let r = hs.handle_vouch(ctx.clock.now(), answer);
                    flush(&mut hs, link).await;
                    r?;
                }
                Some(GatewayEvent::NeedTicket(id)) => {
                    // A ticket restored from disk is used only once the
                    // revocation feed has caught up (it may name a peripheral
                    // revoked while the gateway was down). That normally takes
                    // one backend round trip; if it does not happen before the
                    // handshake's deadline, the ticket is refused
                    // (ResumptionRejected) and the peripheral, which keeps its
                    // ticket, runs a full handshake.
                    if ctx.table.tickets().is_held_for_feed(&id) {
                        tokio::select! {
                            () = ctx.table.tickets().feed_ready() => {}
                            () = sleep_for(deadline_after(&ctx.clock, hs.poll_timeout())) => {
                                debug!("a restored ticket was presented before the revocation feed caught up: refused");
                            }
                            _ = shutdown.changed() => return Err(Error::Disconnected),
                        }
                    }
                    if ctx.table.feed().resumption_suspended() {
                        // SPEC.md §11.5: no revocation can reach this
                        // gateway; the ticket is refused below.
                        ctx.metrics.set_resumption_suspended(true);
                        debug!("resumption refused: the revocation feed has been silent too long");
                    }
                    let ticket = resume_ephemeral
                        .as_ref()
                        .and_then(|e| ctx.table.ticket_for_attempt(&id, e));
                    let r = hs.handle_ticket(ctx.clock.now(), ticket.as_ref(), rng);
                    drop(ticket);
                    if r.is_ok() {
                        // The binder verified: this attempt, and no earlier
                        // one, may use the ticket.
                        claim = resume_ephemeral
                            .as_ref()
                            .and_then(|e| ctx.table.tickets().claim(&id, e));
                        if claim.is_none() {
                            return Err(Error::ResumptionSuperseded);
                        }
                    }
                    flush(&mut hs, link).await;
                    r?;
                }
                None => flush(&mut hs, link).await,
            }
            if hs.is_established() {
                return Ok(());
            }
        }
    }
    .await;
    // A failed attempt leaves the ticket where it was: nothing to put back.
    result?;
    Ok((hs.into_established()?, claim))
}

async fn flush<L: Link>(hs: &mut GatewayHandshake, link: &mut L) {
    while let Some(out) = hs.poll_transmit() {
        if let Err(e) = link.send(&out).await {
            debug!(error = %e, "could not send to peripheral");
            return;
        }
    }
}

/// Why the session loop woke up.
enum Wake {
    Message(Result<Option<Vec<u8>>, crate::transport::LinkError>),
    Command(Command),
    Shutdown,
    /// Nothing else is ready and a trust-anchor update waits to be sent.
    DeliverUpdate,
}

async fn session<L, B, C>(
    ctx: &Arc<Context<B, C>>,
    link: &mut L,
    live: &mut Live,
    shutdown: &mut watch::Receiver<bool>,
) -> SessionEnd
where
    L: Link,
    B: BackendApi,
    C: Clock,
{
    // By reference, fields used in place: the task holds one copy of the session.
    let (id, session_id) = (live.id, live.session.id());
    let reason = loop {
        // The select only waits, with no timer of its own (the session
        // table's sweep closes idle and expired sessions through the
        // mailbox); everything that awaits while handling the wake-up is
        // boxed, so an idle session's task stays small.
        let wake = if live.delivery.is_some() {
            // Anchor updates go out only when the session's own traffic has
            // nothing ready, one per turn. Boxed: only a session that is
            // being sent updates pays for this wait.
            Box::pin(async {
                tokio::select! {
                    biased;
                    w = next_wake(link, &live.mailbox, shutdown) => w,
                    () = std::future::ready(()) => Wake::DeliverUpdate,
                }
            })
            .await
        } else {
            // The session's own traffic (what `next_wake` waits for), in
            // place: an idle session's task is sized by this wait.
            tokio::select! {
                m = link.recv() => Wake::Message(m),
                c = live.mailbox.recv() => Wake::Command(c),
                _ = shutdown.changed() => Wake::Shutdown,
            }
        };
        match wake {
            Wake::Message(msg) => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => break SessionEnd::PeerDisconnected,
                    Err(e) => break SessionEnd::Link(e),
                };
                // Buffers live only while a message is handled: an idle session holds none.
                let mut plain = vec![0u8; msg.len()];
                match live.session.open(ctx.clock.now(), &msg, &mut plain) {
                    Ok(ProtoInbound::Data(d)) => {
                        // Only authenticated traffic keeps a session from idling out.
                        live.mailbox.touch(ctx.clock.now());
                        live.times.heard(ctx.clock.now());
                        ctx.metrics.record_in(d.len());
                        ctx.table.sessions().publish(Inbound {
                            peripheral: id,
                            at: ctx.clock.now(),
                            data: d.to_vec(),
                        });
                        if let Some(newer) = ctx.table.sessions().spoke(&id, live.token) {
                            // A genuine device never speaks on the link it
                            // reconnected away from (SPEC.md §11.6).
                            ctx.metrics.clone_suspected();
                            warn!(peripheral = %id, session = %hex::encode(session_id), newer = %hex::encode(newer),
                                "two sessions of one identity live at once on this gateway: the older spoke after the newer started (suspected clone)");
                            spawn_report(
                                ctx,
                                id,
                                SessionEventKind::Concurrent,
                                session_id,
                                live.times,
                            );
                        }
                    }
                    Ok(ProtoInbound::Close(r)) => {
                        live.times.heard(ctx.clock.now());
                        break SessionEnd::ClosedByPeripheral(r);
                    }
                    Ok(ProtoInbound::AnchorUpdate(_)) => {}
                    Err(ProtoError::SessionExpired) => break SessionEnd::Expired,
                    Err(e) => {
                        // Rejected record: counted, session unchanged (SPEC.md §7.4).
                        ctx.metrics.record_rejected();
                        debug!(peripheral = %id, error = %e, "record rejected");
                    }
                }
            }
            Wake::Command(Command::Send(data, reply)) => {
                let mut record = vec![0u8; data.len() + RECORD_OVERHEAD];
                let r = match live.session.seal_data(ctx.clock.now(), &data, &mut record) {
                    Ok(n) => Box::pin(link.send(&record[..n]))
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if r.is_ok() {
                    ctx.metrics.record_out(data.len());
                    live.mailbox.touch(ctx.clock.now());
                }
                let _ = reply.send(r);
            }
            Wake::Command(Command::Close(reason)) => {
                Box::pin(close(&mut live.session, link, ctx, reason)).await;
                break SessionEnd::ClosedByGateway(reason);
            }
            Wake::Shutdown => {
                Box::pin(close(&mut live.session, link, ctx, CloseReason::SHUTDOWN)).await;
                break SessionEnd::Shutdown;
            }
            Wake::DeliverUpdate => Box::pin(deliver_next_update(ctx, link, live)).await,
        }
    };
    ctx.table.sessions().remove(&id, live.token);
    ctx.metrics.sessions_changed(ctx.table.sessions().len());
    info!(peripheral = %id, session = %hex::encode(session_id), reason = %reason, "session ended");
    spawn_report(ctx, id, SessionEventKind::Detached, session_id, live.times);
    reason
}

/// Waits for the session's own traffic: link input, a command, shutdown.
async fn next_wake<L: Link>(
    link: &mut L,
    mailbox: &crate::sessions::Mailbox,
    shutdown: &mut watch::Receiver<bool>,
) -> Wake {
    tokio::select! {
        m = link.recv() => Wake::Message(m),
        c = mailbox.recv() => Wake::Command(c),
        _ = shutdown.changed() => Wake::Shutdown,
    }
}

/// Sends the next trust-anchor update of `live` (SPEC.md §7.7; content type
/// 2, no scope bit needed). A failure to seal or send ends the delivery, not
/// the session: the session loop sees a broken link or an expired session
/// on its own.
async fn deliver_next_update<L: Link, B, C: Clock>(
    ctx: &Context<B, C>,
    link: &mut L,
    live: &mut Live,
) {
    let Some(delivery) = &mut live.delivery else {
        return;
    };
    let Some(update) = delivery.updates.get(delivery.next).copied() else {
        live.delivery = None;
        return;
    };
    delivery.next += 1;
    let done = delivery.next >= delivery.updates.len();
    let count = delivery.updates.len();
    let mut record = vec![0u8; ANCHOR_UPDATE_RECORD_MAX];
    let sent = match live
        .session
        .seal_anchor_update(ctx.clock.now(), &update, &mut record)
    {
        Ok(n) => link.send(&record[..n]).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match sent {
        Ok(()) => {
            ctx.metrics.anchor_update_sent();
            debug!(
                peripheral = %live.id,
                serial = update.serial,
                action = action_name(&update.action),
                signer = %update.signer,
                "trust-anchor update sent"
            );
            if done {
                debug!(peripheral = %live.id, updates = count, last_serial = update.serial,
                    "every trust-anchor update held was sent");
                live.delivery = None;
            }
        }
        Err(e) => {
            debug!(peripheral = %live.id, serial = update.serial, error = %e,
                "could not send a trust-anchor update; the rest are sent after the next handshake");
            live.delivery = None;
        }
    }
}

/// Room for one anchor-update record: the largest update (SPEC.md §7.7) in a
/// record.
const ANCHOR_UPDATE_RECORD_MAX: usize = MAX_ANCHOR_UPDATE_LEN + RECORD_OVERHEAD;

fn action_name(action: &AnchorAction) -> String {
    match action {
        AnchorAction::Add(a) => format!("add key {}", a.kid),
        AnchorAction::Replace(a) => format!("replace with key {}", a.kid),
        AnchorAction::Retire(kid) => format!("retire key {kid}"),
        AnchorAction::Rotate { anchor, .. } => format!("rotate to key {}", anchor.kid),
    }
}

/// The one timer for every session: closes sessions past their lifetime or
/// idle too long, and drops expired tickets, every `period`, until `shutdown`.
pub async fn sweeper<B: BackendApi, C: Clock>(
    ctx: Arc<Context<B, C>>,
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {
                let now = ctx.clock.now();
                ctx.table.sessions().sweep(now, ctx.idle_timeout.as_millis() as u64);
                ctx.table.tickets().expire(now);
            }
            _ = shutdown.changed() => return,
        }
    }
}

fn spawn_report<B: BackendApi, C: Clock>(
    ctx: &Arc<Context<B, C>>,
    peripheral: vouch_proto::keys::PeripheralId,
    kind: SessionEventKind,
    session_id: [u8; 8],
    times: Heard,
) {
    let ctx = ctx.clone();
    tokio::spawn(async move { report(&ctx, peripheral, kind, session_id, times).await });
}

async fn close<L: Link, B, C: Clock>(
    session: &mut vouch_proto::session::Session,
    link: &mut L,
    ctx: &Context<B, C>,
    reason: CloseReason,
) {
    let mut buf = vec![0u8; 64];
    if let Ok(n) = session.seal_close(ctx.clock.now(), reason, &mut buf) {
        buf.truncate(n);
        let _ = tokio::time::timeout(Duration::from_secs(2), link.send(&buf)).await;
    }
}

/// How long a session event is retried while the backend is unavailable:
/// a lost detach would leave the session live at the backend until its
/// attachment expires, and the device judged against it (SPEC.md §10.5).
const REPORT_RETRY_FOR: Duration = Duration::from_secs(600);

/// Reports one session event, retrying with backoff (0.5 s doubling to 30 s,
/// plus up to half again of jitter, for [`REPORT_RETRY_FOR`]) while the
/// backend is unavailable. The event goes in a report with whatever other
/// events of this gateway wait ([`Reports`]); the times go as ages measured
/// when each attempt is sent, so a late report still says when things
/// happened.
async fn report<B: BackendApi, C: Clock>(
    ctx: &Context<B, C>,
    peripheral: vouch_proto::keys::PeripheralId,
    kind: SessionEventKind,
    session_id: [u8; 8],
    times: Heard,
) {
    let first = ctx.clock.now();
    let mut retry = crate::retry::Retry::new(Duration::from_millis(500), Duration::from_secs(30));
    let answer = loop {
        let event = SessionEvent {
            peripheral,
            kind,
            session_id,
        };
        match ctx
            .reports
            .send(&ctx.backend, &ctx.clock, event, times)
            .await
        {
            Ok(verdict) => break verdict,
            Err(e)
                if e.is_unavailable()
                    && ctx
                        .clock
                        .now()
                        .as_millis()
                        .saturating_sub(first.as_millis())
                        < REPORT_RETRY_FOR.as_millis() as u64 =>
            {
                // Jittered, so the reports a backend outage held back do not
                // all come back at the same instants.
                let wait = retry.next_delay();
                debug!(peripheral = %peripheral, error = %e, retry_in_ms = wait.as_millis() as u64,
                    "session event not reported yet; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                warn!(peripheral = %peripheral, session = %hex::encode(session_id), kind = ?kind, error = %e,
                    "session event not reported");
                return;
            }
        }
    };
    match (answer, kind) {
        (SessionVerdict::Refused, SessionEventKind::Attached) => {
            warn!(peripheral = %peripheral, session = %hex::encode(session_id),
                "backend refused the session (clone policy or status): closing");
            ctx.table
                .close_session(&peripheral, &session_id, CloseReason::REVOKED);
        }
        // Two live at once here, and the policy refuses clones: as
        // across gateways, the session that was live first stays and
        // the newer one is closed (SPEC.md §11.6).
        (SessionVerdict::Refused, SessionEventKind::Concurrent) => {
            warn!(peripheral = %peripheral, session = %hex::encode(session_id),
                "backend refused the suspected clone: closing the newer session, the older stays");
            ctx.table
                .close_newer_than(&peripheral, &session_id, CloseReason::REVOKED);
        }
        _ => {}
    }
}

/// How long until `deadline` on `clock`; `None` means never.
fn deadline_after<C: Clock>(clock: &C, deadline: Option<Timestamp>) -> Option<Duration> {
    deadline.map(|d| Duration::from_millis(d.as_millis().saturating_sub(clock.now().as_millis())))
}

async fn sleep_for(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
