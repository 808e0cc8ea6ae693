//! Policy changes reach live sessions and tickets (SPEC.md §10.5): the
//! backend's `PolicyChanged` names no rule, peripheral or gateway, so the
//! gateway closes every session and drops every ticket, and each peripheral
//! is judged again by the backend at its next (full) handshake.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{drive_peripheral, peripheral_full, run_link_owned, setup, wait_for, Setup};
use tokio::task::JoinHandle;
use vouch_gateway::driver::Outcome;
use vouch_gateway::transport::memory::{pair, MemoryLink};
use vouch_gateway::transport::Link;
use vouch_proto::handshake::gateway::GatewayTicket;
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake};
use vouch_proto::keys::{IdentityKey, PeripheralId};
use vouch_proto::session::{CloseReason, Inbound, Session};
use vouch_proto::testing::rng;
use vouch_proto::wire::backend::{FeedChange, FeedEvent, PeripheralInfo};
use vouch_proto::wire::{Lifetimes, ResumptionId, Scope};
use vouch_proto::{AlertCode, Error as ProtoError, Timestamp};

fn follow(s: &Setup) -> JoinHandle<()> {
    tokio::spawn(vouch_gateway::revocation::follow(
        s.backend.clone(),
        s.ctx.table.clone(),
        s.ctx.config.gateway_key,
        s.ctx.metrics.clone(),
        s.shutdown.clone(),
    ))
}

async fn policy_changed(s: &Setup, seq: u64) {
    s.feed_tx
        .send(FeedEvent {
            seq,
            at_ms: 0,
            change: FeedChange::PolicyChanged,
        })
        .await
        .unwrap();
}

/// The next record from the gateway must be a close with `reason`, within a
/// second (of paused, virtual time: deterministic).
async fn expect_close(session: &mut Session, link: &mut MemoryLink, reason: CloseReason) {
    let msg = tokio::time::timeout(Duration::from_secs(1), link.recv())
        .await
        .expect("closed within a second")
        .unwrap()
        .unwrap();
    let mut out = [0u8; 64];
    assert_eq!(
        session.open(Timestamp(0), &msg, &mut out).unwrap(),
        Inbound::Close(reason)
    );
}

/// A ticket of another peripheral, stored directly.
fn other_ticket(n: u8) -> GatewayTicket {
    let key = IdentityKey::generate(&mut rng(500 + u64::from(n)));
    GatewayTicket::from_parts(
        ResumptionId([n; 16]),
        [n; 32],
        PeripheralInfo {
            id: PeripheralId::derive(&key.public_key()),
            public_key: key.public_key(),
            group: None,
            attributes: vec![],
            scope: Scope::TELEMETRY,
        },
        Lifetimes {
            session_s: 60,
            resumption_s: 3600,
        },
        Timestamp(3_600_000),
    )
}

#[tokio::test(start_paused = true)]
async fn a_policy_change_closes_every_live_session_and_drops_every_ticket() {
    let s = setup(Scope::TELEMETRY.union(Scope::COMMAND));
    let follower = follow(&s);
    let (mut p_link, g_link) = pair(247, "p", "g");
    let d = tokio::spawn(run_link_owned(s.ctx.clone(), g_link, 1, s.shutdown.clone()));
    let mut est = peripheral_full(&s, &mut p_link, 2).await.unwrap();
    wait_for("the session", || s.ctx.table.sessions().len() == 1).await;
    s.ctx.table.store_ticket(other_ticket(7));
    assert_eq!(s.ctx.table.tickets().len(), 2);

    policy_changed(&s, 1).await;
    expect_close(&mut est.session, &mut p_link, CloseReason::REVOKED).await;
    assert!(matches!(d.await.unwrap(), Outcome::SessionEnded { .. }));
    assert_eq!(s.ctx.table.sessions().len(), 0);
    assert_eq!(s.ctx.table.tickets().len(), 0, "every ticket is dropped");

    // The device's ticket is refused: it must go back to the backend.
    let (mut p_link, g_link) = pair(247, "p", "g");
    let d = tokio::spawn(run_link_owned(s.ctx.clone(), g_link, 3, s.shutdown.clone()));
    let mut p = PeripheralHandshake::resume(
        &PeripheralConfig::default(),
        &est.ticket,
        &s.anchors,
        Timestamp(0),
        &mut rng(4),
    )
    .unwrap();
    assert_eq!(
        drive_peripheral(&mut p, &mut p_link).await,
        Err(ProtoError::Alert(AlertCode::ResumptionRejected))
    );
    assert!(matches!(d.await.unwrap(), Outcome::HandshakeFailed(_)));
    let vouches = s.backend.requests.load(Ordering::SeqCst);
    let (mut p_link, g_link) = pair(247, "p", "g");
    tokio::spawn(run_link_owned(s.ctx.clone(), g_link, 5, s.shutdown.clone()));
    peripheral_full(&s, &mut p_link, 6).await.unwrap();
    assert_eq!(s.backend.requests.load(Ordering::SeqCst), vouches + 1);
    s.shutdown_tx.send(true).unwrap();
    follower.await.unwrap();
}

/// A handshake the backend judged under the old policy, completing after
/// the change, must not start a session or keep a ticket: the feed's
/// close-all could not reach it.
#[tokio::test(start_paused = true)]
async fn a_handshake_in_flight_when_the_policy_changes_does_not_survive_it() {
    let s = setup(Scope::TELEMETRY.union(Scope::COMMAND));
    let follower = follow(&s);
    s.backend.vouch_open.send_replace(false);
    let (mut p_link, g_link) = pair(247, "p", "g");
    let d = tokio::spawn(run_link_owned(s.ctx.clone(), g_link, 1, s.shutdown.clone()));
    let mut p = PeripheralHandshake::start(
        &PeripheralConfig::default(),
        s.id,
        &s.device,
        &s.anchors,
        Timestamp(0),
        &mut rng(2),
    )
    .unwrap();
    let mut buf = [0u8; 256];
    let n = p.poll_transmit(&mut buf).unwrap();
    p_link.send(&buf[..n]).await.unwrap();
    // The gateway waits for the backend's vouch; the policy changes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    policy_changed(&s, 1).await;
    wait_for("the policy change", || {
        s.ctx.table.feed().policy_epoch() == 1
    })
    .await;
    s.backend.vouch_open.send_replace(true);

    let answer = p_link.recv().await.unwrap().expect("the gateway answers");
    p.handle_input(Timestamp(0), &answer).unwrap();
    let n = p.poll_transmit(&mut buf).unwrap();
    p_link.send(&buf[..n]).await.unwrap();
    let mut est = p.into_established().unwrap();
    expect_close(&mut est.session, &mut p_link, CloseReason::REVOKED).await;
    assert!(matches!(d.await.unwrap(), Outcome::SessionEnded { .. }));
    assert_eq!(s.ctx.table.sessions().len(), 0);
    assert_eq!(
        s.ctx.table.tickets().len(),
        0,
        "no ticket from the old policy"
    );
    s.shutdown_tx.send(true).unwrap();
    follower.await.unwrap();
}
