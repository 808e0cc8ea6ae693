//! One task per peripheral link (STYLE.md §3.15): it owns the protocol state
//! and loops over link input, the backend's answer, the next deadline, local
//! commands and shutdown.

use std::sync::Arc;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use vouch_proto::handshake::gateway::{
    GatewayConfig, GatewayEstablished, GatewayEvent, GatewayHandshake,
};
use vouch_proto::session::{CloseReason, Inbound as ProtoInbound};
use vouch_proto::wire::backend::{
    SessionEvent, SessionEventKind, SessionReport, SessionVerdict, VouchAnswer,
};
use vouch_proto::wire::MAX_MESSAGE;
use vouch_proto::{Error as ProtoError, Timestamp};

use crate::backend_client::{BackendApi, BackendError};
use crate::clock::Clock;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::sessions::{Command, Inbound, SessionInfo, SessionTable};
use crate::transport::Link;

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
}

/// How a driver ended.
#[derive(Debug)]
pub enum Outcome {
    /// The handshake failed or the link dropped before it completed.
    HandshakeFailed(Error),
    /// A session ran and ended.
    SessionEnded {
        /// Why it ended.
        reason: String,
    },
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs one link: the handshake, then the session, until either side ends it
/// or `shutdown` turns true.
pub async fn run_link<L, B, C>(
    ctx: Arc<Context<B, C>>,
    link: &mut L,
    mut rng: ChaCha20Rng,
    mut shutdown: watch::Receiver<bool>,
) -> Outcome
where
    L: Link,
    B: BackendApi,
    C: Clock,
{
    let peer = link.peer();
    let started = std::time::Instant::now();
    let est = match handshake(&ctx, link, &mut rng, &mut shutdown).await {
        Ok(est) => est,
        Err(e) => {
            ctx.metrics.handshake_failed(&e);
            info!(link = %peer, error = %e, "handshake failed");
            return Outcome::HandshakeFailed(e);
        }
    };
    let resumed = est.consumed_ticket.is_some();
    ctx.metrics.handshake_ok(resumed, started.elapsed());
    info!(
        link = %peer,
        peripheral = %est.peripheral.id,
        session = %hex(&est.session.id()),
        resumed,
        latency_ms = started.elapsed().as_millis() as u64,
        "session established"
    );
    let reason = session(ctx.clone(), link, est, peer, resumed, &mut shutdown).await;
    Outcome::SessionEnded { reason }
}

async fn handshake<L, B, C>(
    ctx: &Context<B, C>,
    link: &mut L,
    rng: &mut ChaCha20Rng,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<GatewayEstablished, Error>
where
    L: Link,
    B: BackendApi,
    C: Clock,
{
    let mut hs = GatewayHandshake::new(ctx.config, ctx.clock.now());
    // A resumption ticket taken out of the store while it is being used.
    let mut held_ticket = None;
    let result = async {
        loop {
            // Deadline of the current wait, in tokio time.
            let wait = deadline_after(&ctx.clock, hs.poll_timeout());
            tokio::select! {
                msg = link.recv() => {
                    let msg = msg?.ok_or(Error::Disconnected)?;
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
                    held_ticket = ctx.table.take_ticket(&id);
                    let r = hs.handle_ticket(ctx.clock.now(), held_ticket.as_ref(), rng);
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
    match result {
        Ok(()) => Ok(hs.into_established()?),
        Err(e) => {
            // A ticket whose resumption failed goes back (it was not used).
            if let Some(t) = held_ticket {
                if t.expires_at > ctx.clock.now() {
                    ctx.table.store_ticket(t);
                }
            }
            Err(e)
        }
    }
}

async fn flush<L: Link>(hs: &mut GatewayHandshake, link: &mut L) {
    while let Some(out) = hs.poll_transmit() {
        if let Err(e) = link.send(&out).await {
            debug!(error = %e, "could not send to peripheral");
            return;
        }
    }
}

async fn session<L, B, C>(
    ctx: Arc<Context<B, C>>,
    link: &mut L,
    est: GatewayEstablished,
    peer: String,
    resumed: bool,
    shutdown: &mut watch::Receiver<bool>,
) -> String
where
    L: Link,
    B: BackendApi,
    C: Clock,
{
    let GatewayEstablished {
        mut session,
        peripheral,
        ticket,
        ..
    } = est;
    let id = peripheral.id;
    ctx.table.store_ticket(ticket);
    let (tx, mut commands) = mpsc::channel(32);
    let info = SessionInfo {
        peripheral: id,
        session_id: session.id(),
        scope: session.scope(),
        link: peer.clone(),
        since: ctx.clock.now(),
        resumed,
        group: peripheral.group.clone(),
    };
    let token = ctx.table.insert(info, tx);
    ctx.metrics.sessions_changed(ctx.table.len());
    let session_id = session.id();
    // Reports go out in the background: a slow or absent backend must not hold
    // up the session.
    spawn_report(&ctx, id, SessionEventKind::Attached, session_id);
    let arc = ctx;
    let ctx = &*arc;

    let mut record = vec![0u8; MAX_MESSAGE];
    let mut plain = vec![0u8; MAX_MESSAGE];
    let mut last_activity = tokio::time::Instant::now();
    let reason: String = loop {
        let expiry = deadline_after(&ctx.clock, session.poll_timeout());
        let idle = ctx.idle_timeout.saturating_sub(last_activity.elapsed());
        tokio::select! {
            msg = link.recv() => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => break "peer disconnected".into(),
                    Err(e) => break format!("link error: {e}"),
                };
                last_activity = tokio::time::Instant::now();
                match session.open(ctx.clock.now(), &msg, &mut plain) {
                    Ok(ProtoInbound::Data(d)) => {
                        ctx.metrics.record_in(d.len());
                        ctx.table.publish(Inbound { peripheral: id, at: ctx.clock.now(), data: d.to_vec() });
                    }
                    Ok(ProtoInbound::Close(r)) => break format!("peripheral closed (reason {})", r.0),
                    Ok(ProtoInbound::AnchorUpdate(_)) => {}
                    Err(ProtoError::SessionExpired) => break "session expired".into(),
                    Err(e) => {
                        // Rejected record: counted, session unchanged (SPEC.md §7.4).
                        ctx.metrics.record_rejected();
                        debug!(peripheral = %id, error = %e, "record rejected");
                    }
                }
            }
            cmd = commands.recv() => match cmd {
                Some(Command::Send(data, reply)) => {
                    let r = match session.seal_data(ctx.clock.now(), &data, &mut record) {
                        Ok(n) => link.send(&record[..n]).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if r.is_ok() {
                        ctx.metrics.record_out(data.len());
                        last_activity = tokio::time::Instant::now();
                    }
                    let _ = reply.send(r);
                }
                Some(Command::Close(reason)) => {
                    close(&mut session, link, ctx, reason).await;
                    break format!("closed by gateway (reason {})", reason.0);
                }
                None => break "session table dropped".into(),
            },
            () = sleep_for(expiry) => {
                close(&mut session, link, ctx, CloseReason::EXPIRED).await;
                break "session lifetime ended".into();
            }
            () = tokio::time::sleep(idle) => {
                close(&mut session, link, ctx, CloseReason::NORMAL).await;
                break "idle timeout".into();
            }
            _ = shutdown.changed() => {
                close(&mut session, link, ctx, CloseReason::SHUTDOWN).await;
                break "gateway shutting down".into();
            }
        }
    };
    ctx.table.remove(&id, token);
    ctx.metrics.sessions_changed(ctx.table.len());
    info!(peripheral = %id, session = %hex(&session_id), reason = %reason, "session ended");
    spawn_report(&arc, id, SessionEventKind::Detached, session_id);
    reason
}

fn spawn_report<B: BackendApi, C: Clock>(
    ctx: &Arc<Context<B, C>>,
    peripheral: vouch_proto::keys::PeripheralId,
    kind: SessionEventKind,
    session_id: [u8; 8],
) {
    let ctx = ctx.clone();
    tokio::spawn(async move { report(&ctx, peripheral, kind, session_id).await });
}

async fn close<L: Link, B, C: Clock>(
    session: &mut vouch_proto::session::Session,
    link: &mut L,
    ctx: &Context<B, C>,
    reason: CloseReason,
) {
    let mut buf = [0u8; 64];
    if let Ok(n) = session.seal_close(ctx.clock.now(), reason, &mut buf) {
        let _ = tokio::time::timeout(Duration::from_secs(2), link.send(&buf[..n])).await;
    }
}

async fn report<B: BackendApi, C>(
    ctx: &Context<B, C>,
    peripheral: vouch_proto::keys::PeripheralId,
    kind: SessionEventKind,
    session_id: [u8; 8],
) {
    let report = SessionReport {
        events: vec![SessionEvent {
            peripheral,
            kind,
            session_id,
        }],
    };
    match ctx.backend.report(report).await {
        Ok(answer) => {
            if answer.items.first() == Some(&SessionVerdict::Refused)
                && kind == SessionEventKind::Attached
            {
                warn!(peripheral = %peripheral, "backend refused the session (clone policy or status): closing");
                ctx.table.close(&peripheral, CloseReason::REVOKED);
            }
        }
        Err(e) => debug!(peripheral = %peripheral, error = %e, "session event not reported"),
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
