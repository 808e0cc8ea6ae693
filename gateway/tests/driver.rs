//! The gateway's drivers against an in-memory link and a fake backend built
//! from the protocol's own backend role: handshake, data, resumption with the
//! backend down, revocation, hostile peers.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use common::{drive_peripheral, peripheral_full, run_link_owned, setup, wait_for};
use vouch_gateway::driver::Outcome;
use vouch_gateway::endpoint::{Gateway, SWEEP_EVERY};
use vouch_gateway::serve::tcp::serve_tcp;
use vouch_gateway::transport::memory::pair;
use vouch_gateway::transport::memory::MemoryLink;
use vouch_gateway::transport::Link;
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake, PeripheralTicket};
use vouch_proto::session::{CloseReason, Inbound};
use vouch_proto::testing::rng;
use vouch_proto::wire::backend::{FeedChange, FeedEvent, SessionEventKind, SessionVerdict};
use vouch_proto::wire::Scope;
use vouch_proto::{AlertCode, Error as ProtoError, Timestamp};

#[tokio::test]
async fn handshake_data_both_ways_and_close() {
    let s = setup(Scope::TELEMETRY.union(Scope::COMMAND));
    for mtu in [23, 247] {
        let (mut p_link, g_link) = pair(mtu, "p", "g");
        let driver = tokio::spawn(run_link_owned(s.ctx.clone(), g_link, 2, s.shutdown.clone()));
        let mut est = peripheral_full(&s, &mut p_link, 10 + mtu as u64)
            .await
            .unwrap();
        wait_for("session in table", || s.ctx.table.sessions().len() == 1).await;
        let listed = s.ctx.table.sessions().list();
        assert_eq!(listed[0].peripheral, s.id);
        assert_eq!(listed[0].group.as_deref(), Some("lab"));

        // Peripheral → gateway application data reaches subscribers.
        let mut sub = s.ctx.table.sessions().subscribe();
        let mut rec = [0u8; 1024];
        let payload = vec![7u8; 600]; // several fragments at MTU 23
        let n = est
            .session
            .seal_data(Timestamp(0), &payload, &mut rec)
            .unwrap();
        p_link.send(&rec[..n]).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((got.peripheral, got.data), (s.id, payload));

        // Gateway → peripheral through the table.
        let table = s.ctx.table.clone();
        let id = s.id;
        let send = tokio::spawn(async move { table.sessions().send(id, b"led=on".to_vec()).await });
        let msg = p_link.recv().await.unwrap().unwrap();
        let mut out = [0u8; 1024];
        assert_eq!(
            est.session.open(Timestamp(0), &msg, &mut out).unwrap(),
            Inbound::Data(b"led=on")
        );
        send.await.unwrap().unwrap();

        // The gateway closes it (as on revocation); the peripheral sees a close.
        assert!(s.ctx.table.close(&s.id, CloseReason::REVOKED));
        let msg = p_link.recv().await.unwrap().unwrap();
        assert_eq!(
            est.session.open(Timestamp(0), &msg, &mut out).unwrap(),
            Inbound::Close(CloseReason::REVOKED)
        );
        assert!(matches!(
            driver.await.unwrap(),
            Outcome::SessionEnded { .. }
        ));
        assert_eq!(s.ctx.table.sessions().len(), 0);
    }
    // Attach and detach were reported for both sessions (in the background).
    wait_for("four session reports", || {
        s.backend.reports.lock().unwrap().len() == 4
    })
    .await;
}

#[tokio::test]
async fn commands_outside_scope_are_refused_locally() {
    let s = setup(Scope::TELEMETRY);
    let (mut p_link, g_link) = pair(247, "p", "g");
    tokio::spawn(run_link_owned(s.ctx.clone(), g_link, 2, s.shutdown.clone()));
    let _est = peripheral_full(&s, &mut p_link, 3).await.unwrap();
    wait_for("session", || s.ctx.table.sessions().len() == 1).await;
    let err = s
        .ctx
        .table
        .sessions()
        .send(s.id, b"unlock".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err, vouch_gateway::sessions::SendError::OutOfScope(s.id));
}

#[tokio::test]
async fn resumption_works_while_the_backend_is_down_and_new_peripherals_get_busy() {
    let s = setup(Scope::TELEMETRY.union(Scope::COMMAND));
    let (mut p_link, g_link) = pair(247, "p", "g");
    let d = tokio::spawn(run_link_owned(s.ctx.clone(), g_link, 2, s.shutdown.clone()));
    let est = peripheral_full(&s, &mut p_link, 4).await.unwrap();
    wait_for("session", || s.ctx.table.sessions().len() == 1).await;
    drop(p_link);
    d.await.unwrap();
    assert_eq!(s.ctx.table.tickets().len(), 1);

    s.backend.down.store(true, Ordering::SeqCst);
    // A resumption needs no backend.
    let ticket_bytes = postcard::to_allocvec(&est.ticket).unwrap();
    let ticket: PeripheralTicket = postcard::from_bytes(&ticket_bytes).unwrap();
    let (mut p_link, g_link) = pair(247, "p", "g");
    tokio::spawn(run_link_owned(s.ctx.clone(), g_link, 5, s.shutdown.clone()));
    let mut p = PeripheralHandshake::resume(
        &PeripheralConfig::default(),
        &ticket,
        &s.anchors,
        Timestamp(0),
        &mut rng(6),
    )
    .unwrap();
    drive_peripheral(&mut p, &mut p_link).await.unwrap();
    let resumed = p.into_established().unwrap();
    assert!(resumed.resumed);
    wait_for("resumed session", || s.ctx.table.sessions().len() == 1).await;
    assert_eq!(s.ctx.metrics.handshakes("resumed"), 1);

    // A full handshake is answered Busy, quickly.
    let (mut p_link, g_link) = pair(247, "p", "g");
    let d = tokio::spawn(run_link_owned(s.ctx.clone(), g_link, 7, s.shutdown.clone()));
    let mut p = PeripheralHandshake::start(
        &PeripheralConfig::default(),
        s.id,
        &s.device,
        &s.anchors,
        Timestamp(0),
        &mut rng(8),
    )
    .unwrap();
    let mut buf = [0u8; 256];
    let n = p.poll_transmit(&mut buf).unwrap();
    p_link.send(&buf[..n]).await.unwrap();
    let alert = p_link.recv().await.unwrap().unwrap();
    assert_eq!(
        p.handle_input(Timestamp(0), &alert),
        Err(ProtoError::Alert(AlertCode::Busy))
    );
    assert!(matches!(d.await.unwrap(), Outcome::HandshakeFailed(_)));
    assert_eq!(s.ctx.metrics.handshakes("busy"), 1);
}

#[tokio::test]
async fn revocation_feed_closes_the_live_session() {
    let s = setup(Scope::TELEMETRY.union(Scope::COMMAND));
    let follower = tokio::spawn(vouch_gateway::revocation::follow(
        s.backend.clone(),
        s.ctx.table.clone(),
        s.ctx.config.gateway_key,
        s.ctx.metrics.clone(),
        s.shutdown.clone(),
    ));
    let (mut p_link, g_link) = pair(247, "p", "g");
    let d = tokio::spawn(run_link_owned(s.ctx.clone(), g_link, 2, s.shutdown.clone()));
    let mut est = peripheral_full(&s, &mut p_link, 9).await.unwrap();
    wait_for("session", || s.ctx.table.sessions().len() == 1).await;
    s.feed_tx
        .send(FeedEvent {
            seq: 1,
            at_ms: 0,
            change: FeedChange::PeripheralRevoked(s.id),
        })
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(1), p_link.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut out = [0u8; 64];
    assert_eq!(
        est.session.open(Timestamp(0), &msg, &mut out).unwrap(),
        Inbound::Close(CloseReason::REVOKED)
    );
    d.await.unwrap();
    assert_eq!(
        s.ctx.table.tickets().len(),
        0,
        "the revoked peripheral's ticket is gone"
    );
    s.shutdown_tx.send(true).unwrap();
    follower.await.unwrap();
}

#[tokio::test]
async fn garbage_ends_the_handshake_and_an_oversized_announce_costs_only_its_message() {
    let s = setup(Scope::TELEMETRY);
    // Garbage message.
    let (mut p_link, g_link) = pair(247, "p", "g");
    let d = tokio::spawn(run_link_owned(s.ctx.clone(), g_link, 2, s.shutdown.clone()));
    p_link.send(&[0xde, 0xad, 0xbe, 0xef]).await.unwrap();
    let alert = p_link.recv().await.unwrap().unwrap();
    assert_eq!(
        alert,
        vouch_proto::wire::encode_alert(AlertCode::Unsupported).to_vec()
    );
    assert!(matches!(d.await.unwrap(), Outcome::HandshakeFailed(_)));
    assert_eq!(s.ctx.table.sessions().len(), 0);
    // A fragment announcing a 60 000-byte message is refused before any
    // buffering (SPEC.md §8.3) and drops only itself: the handshake that
    // follows on the same link completes.
    let (mut p_link, g_link) = pair(247, "p", "g");
    let _d = tokio::spawn(run_link_owned(s.ctx.clone(), g_link, 2, s.shutdown.clone()));
    p_link
        .send_fragment(&[0x80, 0x60, 0xea, 1, 2, 3])
        .await
        .unwrap();
    peripheral_full(&s, &mut p_link, 5).await.unwrap();
    wait_for("session in table", || s.ctx.table.sessions().len() == 1).await;
}

#[tokio::test(start_paused = true)]
async fn silent_peer_times_out() {
    let s = setup(Scope::TELEMETRY);
    let (_p_link, g_link) = pair(247, "p", "g");
    let outcome = run_link_owned(s.ctx.clone(), g_link, 2, s.shutdown.clone()).await;
    assert!(matches!(
        outcome,
        Outcome::HandshakeFailed(vouch_gateway::Error::Timeout(_))
    ));
}

#[tokio::test]
async fn connection_floods_are_capped_and_the_gateway_keeps_serving() {
    let s = setup(Scope::TELEMETRY.union(Scope::COMMAND));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    const CAP: usize = 4;
    tokio::spawn(serve_tcp(
        Gateway::with_context(s.ctx.clone(), SWEEP_EVERY, s.shutdown.clone()),
        listener,
        CAP,
        247,
    ));
    // An attacker opens 60 connections and says nothing (slow peers).
    let mut flood = Vec::new();
    for _ in 0..60 {
        flood.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // Beyond the cap, connections are refused at once: counted as link errors,
    // and the refused sockets see end-of-stream.
    wait_for("refusals beyond the cap", || {
        s.ctx.metrics.render().contains(&format!(
            "vouch_gateway_link_errors_total{{transport=\"tcp\"}} {}",
            60 - CAP
        ))
    })
    .await;
    // The flood goes away; the slots come back and a real device is served.
    drop(flood);
    let stream = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let st = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut link =
                vouch_gateway::transport::tcp::TcpLink::new(st, 247, Default::default()).unwrap();
            let mut p = PeripheralHandshake::start(
                &PeripheralConfig::default(),
                s.id,
                &s.device,
                &s.anchors,
                Timestamp(0),
                &mut rng(77),
            )
            .unwrap();
            let mut buf = [0u8; 256];
            let n = p.poll_transmit(&mut buf).unwrap();
            link.send(&buf[..n]).await.unwrap();
            match link.recv().await {
                Ok(Some(resp)) => {
                    p.handle_input(Timestamp(0), &resp).unwrap();
                    return p;
                }
                // Refused while the flood's slots were still being released.
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("a real device is served after the flood");
    assert!(stream.is_established());
}

#[tokio::test]
async fn a_revocation_during_the_handshake_still_closes_the_session() {
    let s = setup(Scope::TELEMETRY.union(Scope::COMMAND));
    // The feed reports the revocation before the handshake completes.
    vouch_gateway::revocation::apply(
        &s.ctx.table,
        &s.ctx.config.gateway_key,
        &FeedEvent {
            seq: 1,
            at_ms: 0,
            change: FeedChange::PeripheralRevoked(s.id),
        },
    );
    let (mut p_link, g_link) = pair(247, "p", "g");
    let d = tokio::spawn(run_link_owned(
        s.ctx.clone(),
        g_link,
        31,
        s.shutdown.clone(),
    ));
    // (The fake backend still vouches: the backend's own check races the feed.)
    let mut est = peripheral_full(&s, &mut p_link, 32).await.unwrap();
    let msg = p_link.recv().await.unwrap().expect("a close record");
    let mut out = [0u8; 64];
    assert_eq!(
        est.session.open(Timestamp(0), &msg, &mut out).unwrap(),
        Inbound::Close(CloseReason::REVOKED)
    );
    d.await.unwrap();
    assert_eq!(
        s.ctx.table.tickets().len(),
        0,
        "no ticket is kept for a revoked peripheral"
    );
    assert_eq!(s.ctx.table.sessions().len(), 0);
}

/// SPEC.md §8.3: a bad fragment drops only its partial message. An empty
/// TCP frame, a frame over 512 bytes, or a fragment out of sequence sent into
/// an established session must not close the link (and with it the session):
/// anyone able to inject one frame could otherwise end any session.
#[tokio::test]
async fn bad_frames_in_an_established_tcp_session_drop_only_their_message() {
    let s = setup(Scope::TELEMETRY.union(Scope::COMMAND));
    let (mut p, _driver) = common::tcp_link(&s, 3).await;
    let mut est = p.handshake(&s, 31).await;
    wait_for("session in table", || s.ctx.table.sessions().len() == 1).await;
    let mut sub = s.ctx.table.sessions().subscribe();
    let mut rec = [0u8; 1024];
    // A record in 20-byte fragments, interrupted by an empty frame: lost.
    let n = est
        .session
        .seal_data(Timestamp(0), b"lost", &mut rec)
        .unwrap();
    let mut f = vouch_proto::framing::Fragmenter::new(&rec[..n], 23).unwrap();
    let mut frag = [0u8; 512];
    let first = f.next_into(&mut frag).unwrap();
    p.frame(&frag[..first]).await;
    p.stream.write_all(&[0, 0]).await.unwrap();
    while let Some(k) = f.next_into(&mut frag) {
        p.frame(&frag[..k]).await;
    }
    // A frame over 512 bytes, then a continuation out of sequence.
    p.frame(&[0xc0; 600]).await;
    p.frame(&[0x07, 1, 2, 3]).await;
    // The session still carries records.
    let n = est
        .session
        .seal_data(Timestamp(0), b"kept", &mut rec)
        .unwrap();
    p.send(&rec[..n]).await;
    let got = common::next_inbound_while_live(&s, &mut sub).await;
    assert_eq!(got.data, b"kept");
    let table = s.ctx.table.clone();
    let id = s.id;
    let send = tokio::spawn(async move { table.sessions().send(id, b"still here".to_vec()).await });
    let msg = p.recv().await;
    let mut out = [0u8; 64];
    assert_eq!(
        est.session.open(Timestamp(0), &msg, &mut out).unwrap(),
        Inbound::Data(b"still here")
    );
    send.await.unwrap().unwrap();
}

/// SPEC.md §8.4: peers that connect and say nothing cannot keep devices
/// out. With every slot held by a silent connection, a device that connects
/// and speaks takes the slot of the one silent the longest; once it has
/// spoken, a new flood cannot take its slot.
#[tokio::test]
async fn idle_tcp_connections_cannot_keep_an_honest_device_out() {
    let s = setup(Scope::TELEMETRY.union(Scope::COMMAND));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    const CAP: usize = 4;
    tokio::spawn(serve_tcp(
        Gateway::with_context(s.ctx.clone(), SWEEP_EVERY, s.shutdown.clone()),
        listener,
        CAP,
        247,
    ));
    let flood = |n: usize| async move {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        v
    };
    // 60 silent connections, all kept open: every slot is taken.
    let _flood = flood(60).await;
    wait_for("the flood fills every slot", || {
        s.ctx.metrics.render().contains(&format!(
            "vouch_gateway_link_errors_total{{transport=\"tcp\"}} {}",
            60 - CAP
        ))
    })
    .await;
    // A device connects and is served while the flood stays.
    let mut p = common::RawTcp::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let mut est = p.handshake(&s, 41).await;
    wait_for("session in table", || s.ctx.table.sessions().len() == 1).await;
    // A second flood cannot take the slot of a link that spoke.
    let _flood2 = flood(60).await;
    let mut sub = s.ctx.table.sessions().subscribe();
    let mut rec = [0u8; 64];
    let n = est
        .session
        .seal_data(Timestamp(0), b"after the flood", &mut rec)
        .unwrap();
    p.send(&rec[..n]).await;
    let got = common::next_inbound_while_live(&s, &mut sub).await;
    assert_eq!(got.data, b"after the flood");
}

/// A link that sends nothing is closed at the first-message deadline (3 s),
/// long before the 10 s handshake deadline.
#[tokio::test(start_paused = true)]
async fn a_silent_link_is_closed_at_the_first_message_deadline() {
    use vouch_gateway::serve::slots::{Gated, LinkSlots, DEFAULT_FIRST_MESSAGE};
    let s = setup(Scope::TELEMETRY);
    let slots = LinkSlots::new(1, DEFAULT_FIRST_MESSAGE);
    let (_p_link, g_link) = pair(247, "p", "g");
    let mut link = Gated::new(g_link, slots.acquire().unwrap().0);
    assert_eq!(slots.held(), 1);
    let started = tokio::time::Instant::now();
    let outcome = vouch_gateway::driver::run_link(
        s.ctx.clone(),
        &mut link,
        common::seed32(2),
        s.shutdown.clone(),
    )
    .await;
    assert!(
        matches!(
            outcome,
            Outcome::HandshakeFailed(vouch_gateway::Error::Link(
                vouch_gateway::transport::LinkError::FirstMessageTimeout
            ))
        ),
        "{outcome:?}"
    );
    assert_eq!(started.elapsed(), DEFAULT_FIRST_MESSAGE);
    drop(link);
    assert_eq!(slots.held(), 0);
    // A link that spoke keeps its slot past that deadline.
    let (mut p_link, g_link) = pair(247, "p", "g");
    let link = Gated::new(g_link, slots.acquire().unwrap().0);
    let ctx = s.ctx.clone();
    let shutdown = s.shutdown.clone();
    tokio::spawn(async move {
        let mut link = link;
        vouch_gateway::driver::run_link(ctx, &mut link, common::seed32(3), shutdown).await
    });
    peripheral_full(&s, &mut p_link, 9).await.unwrap();
    wait_for("session in table", || s.ctx.table.sessions().len() == 1).await;
    tokio::time::sleep(DEFAULT_FIRST_MESSAGE * 2).await;
    assert_eq!(s.ctx.table.sessions().len(), 1);
    assert!(
        slots.acquire().is_none(),
        "the slot of a link that spoke is not taken"
    );
}

fn copy_ticket(t: &PeripheralTicket) -> PeripheralTicket {
    postcard::from_bytes(&postcard::to_allocvec(t).unwrap()).unwrap()
}

/// A ticket of another peripheral, stored directly, expiring at `at_ms`.
fn other_ticket(n: u8, at_ms: u64) -> vouch_proto::handshake::gateway::GatewayTicket {
    let key = vouch_proto::keys::IdentityKey::generate(&mut rng(200 + u64::from(n)));
    vouch_proto::handshake::gateway::GatewayTicket::from_parts(
        vouch_proto::wire::ResumptionId([n; 16]),
        [n; 32],
        vouch_proto::wire::backend::PeripheralInfo {
            id: vouch_proto::keys::PeripheralId::derive(&key.public_key()),
            public_key: key.public_key(),
            group: None,
            attributes: vec![],
            scope: Scope::TELEMETRY,
        },
        vouch_proto::wire::Lifetimes {
            session_s: 60,
            resumption_s: 3600,
        },
        Timestamp(at_ms),
    )
}

/// SPEC.md §6.1: the gateway keeps one ticket chain per peripheral. One
/// vouched identity running many full handshakes replaces its own ticket
/// each time instead of filling the store and evicting everyone else's.
#[tokio::test]
async fn many_full_handshakes_of_one_identity_do_not_evict_other_devices_tickets() {
    let mut s = setup(Scope::TELEMETRY);
    s.ctx = common::context(
        &s.backend,
        s.ctx.config,
        vouch_gateway::sessions::SessionTable::new(4),
        vouch_gateway::clock::TokioClock::new(),
    );
    // Three other devices' tickets, expiring before any new one would.
    let others: Vec<_> = (1..=3).map(|n| other_ticket(n, 3_600_000)).collect();
    let ids: Vec<_> = others.iter().map(|t| t.peripheral.id).collect();
    for t in others {
        s.ctx.table.store_ticket(t);
    }
    for i in 0..10 {
        let (mut p_link, g_link) = pair(247, "p", "g");
        let d = tokio::spawn(run_link_owned(
            s.ctx.clone(),
            g_link,
            50 + i,
            s.shutdown.clone(),
        ));
        peripheral_full(&s, &mut p_link, 60 + i).await.unwrap();
        wait_for("session", || s.ctx.table.sessions().len() == 1).await;
        drop(p_link);
        d.await.unwrap();
    }
    for id in &ids {
        assert_eq!(
            s.ctx.table.tickets().forget_peripheral(id),
            1,
            "{id}'s ticket was evicted"
        );
    }
    assert_eq!(
        s.ctx.table.tickets().forget_peripheral(&s.id),
        1,
        "one ticket per peripheral"
    );
}

/// Sends `hello` on a new link; returns the gateway's answer and the link,
/// kept open (a peer that never sends its Finish).
async fn present(
    s: &common::Setup,
    hello: &[u8],
    seed: u64,
) -> (Vec<u8>, vouch_gateway::transport::memory::MemoryLink) {
    let (mut p_link, g_link) = pair(247, "p", "g");
    tokio::spawn(run_link_owned(
        s.ctx.clone(),
        g_link,
        seed,
        s.shutdown.clone(),
    ));
    p_link.send(hello).await.unwrap();
    let answer = p_link.recv().await.unwrap().expect("the gateway answers");
    (answer, p_link)
}

/// A resumption of `ticket` that must complete.
async fn resume_fully(s: &common::Setup, ticket: &PeripheralTicket, seed: u64) {
    let mut p = PeripheralHandshake::resume(
        &PeripheralConfig::default(),
        &copy_ticket(ticket),
        &s.anchors,
        Timestamp(0),
        &mut rng(seed),
    )
    .unwrap();
    let (mut p_link, g_link) = pair(247, "p", "g");
    tokio::spawn(run_link_owned(
        s.ctx.clone(),
        g_link,
        seed,
        s.shutdown.clone(),
    ));
    drive_peripheral(&mut p, &mut p_link)
        .await
        .expect("the genuine device resumes");
    let est = p.into_established().unwrap();
    assert!(est.resumed);
    wait_for("resumed session", || {
        s.ctx.table.sessions().list().iter().any(|i| i.resumed)
    })
    .await;
}

/// SPEC.md §6.1: a replayed ResumeHello cannot take a genuine device's
/// ticket out of the store. Replays of an attempt that reached the gateway
/// are refused outright; a replay of one an attacker jammed holds no lock:
/// the device's own next attempt still resumes.
#[tokio::test]
async fn a_replayed_resume_hello_leaves_the_genuine_ticket_usable() {
    let s = setup(Scope::TELEMETRY);
    let (mut p_link, g_link) = pair(247, "p", "g");
    tokio::spawn(run_link_owned(s.ctx.clone(), g_link, 2, s.shutdown.clone()));
    let ticket = peripheral_full(&s, &mut p_link, 3).await.unwrap().ticket;
    wait_for("session", || s.ctx.table.sessions().len() == 1).await;
    let hello = |seed: u64| {
        let mut p = PeripheralHandshake::resume(
            &PeripheralConfig::default(),
            &copy_ticket(&ticket),
            &s.anchors,
            Timestamp(0),
            &mut rng(seed),
        )
        .unwrap();
        let mut buf = [0u8; 128];
        let n = p.poll_transmit(&mut buf).unwrap();
        buf[..n].to_vec()
    };
    // The device's attempt reaches the gateway, then its link drops before
    // the Finish. An attacker who recorded it replays it, and keeps the link.
    let recorded = hello(100);
    let (answer, genuine_link) = present(&s, &recorded, 10).await;
    assert_eq!(answer[1], 4, "a ResumeResponse");
    drop(genuine_link);
    let (answer, _replay) = present(&s, &recorded, 11).await;
    assert_eq!(
        answer,
        vouch_proto::wire::encode_alert(AlertCode::ResumptionRejected).to_vec()
    );
    // A second attempt the attacker jammed and replays first: answered (the
    // gateway cannot tell it from the device), but it holds nothing.
    let jammed = hello(101);
    let (answer, _replay2) = present(&s, &jammed, 12).await;
    assert_eq!(answer[1], 4);
    // The device resumes with its ticket all the same.
    resume_fully(&s, &ticket, 102).await;
}

/// A device offering a ticket this gateway does not hold (another gateway's,
/// at a site with several) is a normal case: answered ResumptionRejected,
/// logged below `info`, counted apart from failures.
#[tokio::test]
async fn a_ticket_of_another_gateway_is_not_logged_as_misbehaviour() {
    let s = setup(Scope::TELEMETRY);
    // A ticket from a full handshake with another gateway (own table).
    let other = common::context(
        &s.backend,
        s.ctx.config,
        vouch_gateway::sessions::SessionTable::new(10),
        vouch_gateway::clock::TokioClock::new(),
    );
    let (mut p_link, g_link) = pair(247, "p", "g");
    tokio::spawn(run_link_owned(other, g_link, 2, s.shutdown.clone()));
    let ticket = peripheral_full(&s, &mut p_link, 3).await.unwrap().ticket;
    let logs = common::Capture::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let mut p = PeripheralHandshake::resume(
        &PeripheralConfig::default(),
        &ticket,
        &s.anchors,
        Timestamp(0),
        &mut rng(4),
    )
    .unwrap();
    let mut buf = [0u8; 128];
    let n = p.poll_transmit(&mut buf).unwrap();
    let (answer, _link) = present(&s, &buf[..n], 5).await;
    assert_eq!(
        answer,
        vouch_proto::wire::encode_alert(AlertCode::ResumptionRejected).to_vec()
    );
    wait_for("counted", || {
        s.ctx.metrics.handshakes("ticket_unknown") == 1
    })
    .await;
    assert_eq!(s.ctx.metrics.handshakes("failed"), 0);
    let text = logs.text();
    assert!(!text.contains("handshake failed"), "{text}");
}

/// One resumption attempt with `ticket` on a new link; the link is then
/// dropped. The peripheral's new ticket if it completed, else its error.
async fn try_resume(
    s: &common::Setup,
    ticket: &PeripheralTicket,
    seed: u64,
) -> Result<PeripheralTicket, ProtoError> {
    let mut p = PeripheralHandshake::resume(
        &PeripheralConfig::default(),
        &copy_ticket(ticket),
        &s.anchors,
        Timestamp(0),
        &mut rng(seed),
    )
    .unwrap();
    let (mut p_link, g_link) = pair(247, "p", "g");
    let d = tokio::spawn(run_link_owned(
        s.ctx.clone(),
        g_link,
        seed,
        s.shutdown.clone(),
    ));
    let r = drive_peripheral(&mut p, &mut p_link).await;
    drop(p_link);
    d.await.unwrap();
    r?;
    Ok(p.into_established()?.ticket)
}

/// SPEC.md §11.5: a gateway that has heard nothing from the revocation feed
/// for `limits.feed_silence_s` (default 4 h) cannot know of a revocation
/// made meanwhile, and stops resuming; once the feed answers it resumes
/// again. Each change is logged once.
#[tokio::test(start_paused = true)]
async fn a_gateway_cut_off_from_the_revocation_feed_stops_resuming_until_the_feed_answers() {
    let s = setup(Scope::TELEMETRY);
    let logs = common::Capture::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let follower = tokio::spawn(vouch_gateway::revocation::follow(
        s.backend.clone(),
        s.ctx.table.clone(),
        s.ctx.config.gateway_key,
        s.ctx.metrics.clone(),
        s.shutdown.clone(),
    ));
    let (mut p_link, g_link) = pair(247, "p", "g");
    let d = tokio::spawn(run_link_owned(s.ctx.clone(), g_link, 1, s.shutdown.clone()));
    let ticket = peripheral_full(&s, &mut p_link, 2).await.unwrap().ticket;
    wait_for("session", || s.ctx.table.sessions().len() == 1).await;
    drop(p_link);
    d.await.unwrap();

    // The uplink is cut: the feed fails from now on, retried with backoff.
    s.backend.feed_down.send_replace(true);
    // A minute before the limit, a kept ticket still resumes.
    tokio::time::advance(Duration::from_secs(4 * 3600 - 60)).await;
    let ticket = try_resume(&s, &ticket, 10)
        .await
        .expect("resumes before the limit");
    // After it, the gateway refuses: a revocation could not have reached it.
    tokio::time::advance(Duration::from_secs(120)).await;
    assert_eq!(
        try_resume(&s, &ticket, 11).await.unwrap_err(),
        ProtoError::Alert(AlertCode::ResumptionRejected),
        "no resumption once the feed has been silent for the limit"
    );
    assert!(s.ctx.table.feed().resumption_suspended());
    assert!(s.ctx.metrics.resumption_is_suspended());
    assert_eq!(s.ctx.table.tickets().len(), 1, "the ticket is kept, unused");

    // The feed answers again (an event for another peripheral): the same
    // ticket resumes.
    s.backend.feed_down.send_replace(false);
    let other = vouch_proto::keys::PeripheralId::derive(
        &vouch_proto::keys::IdentityKey::generate(&mut rng(77)).public_key(),
    );
    s.feed_tx
        .send(FeedEvent {
            seq: 1,
            at_ms: 0,
            change: FeedChange::PeripheralReinstated(other),
        })
        .await
        .unwrap();
    // Past the feed's longest retry delay (10 s and its jitter).
    tokio::time::advance(Duration::from_secs(16)).await;
    wait_for("the feed answered", || s.ctx.table.feed().position() == 1).await;
    assert!(!s.ctx.table.feed().resumption_suspended());
    assert!(!s.ctx.metrics.resumption_is_suspended());
    try_resume(&s, &ticket, 12)
        .await
        .expect("resumes once the feed answered");

    let text = logs.text();
    assert_eq!(
        text.matches("resumption refused until it answers").count(),
        1,
        "{text}"
    );
    assert_eq!(
        text.matches("revocation feed answered again").count(),
        1,
        "{text}"
    );
    s.shutdown_tx.send(true).unwrap();
    follower.await.unwrap();
}

/// Whether `s`'s backend got a session event of `kind` for `session`.
fn reported(s: &common::Setup, kind: SessionEventKind, session: [u8; 8]) -> bool {
    s.backend
        .reports
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| r.events.iter())
        .any(|e| e.kind == kind && e.session_id == session)
}

/// Sends one authenticated data record on a peripheral's session.
async fn say(session: &mut vouch_proto::session::Session, link: &mut MemoryLink, data: &[u8]) {
    let mut buf = [0u8; 128];
    let n = session.seal_data(Timestamp(0), data, &mut buf).unwrap();
    link.send(&buf[..n]).await.unwrap();
}

/// SPEC.md §11.6: a genuine device that reconnects before the gateway
/// noticed its old link died gets the new session at once, and its silent
/// old link ends with no clone report. A second device with the same
/// identity, live beside it on the same gateway, gives itself away when
/// the older session speaks after the newer one started: reported to the
/// backend as `Concurrent`, and with the backend refusing clones the newer
/// session is closed while the older, live first, stays.
#[tokio::test]
async fn a_quick_reconnect_raises_no_clone_report_and_a_second_live_device_on_one_gateway_is_reported_and_refused(
) {
    let s = setup(Scope::TELEMETRY);
    *s.backend.concurrent_verdict.lock().unwrap() = SessionVerdict::Refused;
    let mut inbound = s.ctx.table.sessions().subscribe();
    // The genuine device's first session; its link then dies silently.
    let (mut a_link, g) = pair(247, "p", "g");
    let da = tokio::spawn(run_link_owned(s.ctx.clone(), g, 1, s.shutdown.clone()));
    let a = peripheral_full(&s, &mut a_link, 2).await.unwrap();
    wait_for("first session", || s.ctx.table.sessions().len() == 1).await;
    // It reconnects before the gateway noticed: the new session is its session.
    let (mut b_link, g) = pair(247, "p", "g");
    let db = tokio::spawn(run_link_owned(s.ctx.clone(), g, 3, s.shutdown.clone()));
    let mut b = peripheral_full(&s, &mut b_link, 4).await.unwrap();
    wait_for("the old session superseded", || {
        s.ctx.table.sessions().superseded_count() == 1
            && s.ctx.table.sessions().get(&s.id).map(|i| i.session_id) == Some(b.session.id())
    })
    .await;
    say(&mut b.session, &mut b_link, b"after the reconnect").await;
    assert_eq!(inbound.recv().await.unwrap().data, b"after the reconnect");
    // The old link ends (BLE supervision timeout): quietly.
    drop(a_link);
    assert!(matches!(da.await.unwrap(), Outcome::SessionEnded { .. }));
    wait_for("the old session gone", || {
        s.ctx.table.sessions().superseded_count() == 0
    })
    .await;
    wait_for("the old session's detach", || {
        reported(&s, SessionEventKind::Detached, a.session.id())
    })
    .await;
    assert_eq!(s.ctx.metrics.clones_suspected(), 0);
    assert!(!s
        .backend
        .reports
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| r.events.iter())
        .any(|e| e.kind == SessionEventKind::Concurrent));

    // A clone connects with the same identity while the device is live.
    let (mut c_link, g) = pair(247, "p", "g");
    let dc = tokio::spawn(run_link_owned(s.ctx.clone(), g, 5, s.shutdown.clone()));
    let mut c = peripheral_full(&s, &mut c_link, 6).await.unwrap();
    wait_for("the device's session superseded", || {
        s.ctx.table.sessions().superseded_count() == 1
            && s.ctx.table.sessions().get(&s.id).map(|i| i.session_id) == Some(c.session.id())
    })
    .await;
    // The device speaks on its session: two holders of the key are live.
    say(&mut b.session, &mut b_link, b"still here").await;
    wait_for("the Concurrent report", || {
        reported(&s, SessionEventKind::Concurrent, b.session.id())
    })
    .await;
    assert_eq!(s.ctx.metrics.clones_suspected(), 1);
    // Refused: the newer session is closed, the older one stays.
    let msg = c_link.recv().await.unwrap().unwrap();
    let mut out = [0u8; 64];
    assert_eq!(
        c.session.open(Timestamp(0), &msg, &mut out).unwrap(),
        Inbound::Close(CloseReason::REVOKED)
    );
    assert!(matches!(dc.await.unwrap(), Outcome::SessionEnded { .. }));
    wait_for("the older session is the peripheral's again", || {
        s.ctx.table.sessions().superseded_count() == 0
            && s.ctx.table.sessions().get(&s.id).map(|i| i.session_id) == Some(b.session.id())
    })
    .await;
    say(&mut b.session, &mut b_link, b"served").await;
    loop {
        if inbound.recv().await.unwrap().data == b"served" {
            break;
        }
    }
    assert_eq!(s.ctx.metrics.clones_suspected(), 1, "reported once");
    drop(b_link);
    db.await.unwrap();
}

/// SPEC.md §10.5: a session's reports say when it started and when it last
/// heard its device, as ages measured when each attempt is sent, and a
/// report the backend could not take is retried until it can. The device
/// speaks 5 s into its session, goes silent, and its link dies 20 s later
/// while the backend is down; the detach goes out once the backend is back,
/// 40 s after that, and says the device was last heard 5 s after the start
/// and over a minute ago (so the backend judges it by when it happened, not
/// by when it arrived).
#[tokio::test(start_paused = true)]
async fn session_reports_say_when_the_device_was_last_heard_and_are_retried_while_the_backend_is_down(
) {
    let s = setup(Scope::TELEMETRY);
    let mut inbound = s.ctx.table.sessions().subscribe();
    let (mut link, g) = pair(247, "p", "g");
    let d = tokio::spawn(run_link_owned(s.ctx.clone(), g, 1, s.shutdown.clone()));
    let mut p = peripheral_full(&s, &mut link, 2).await.unwrap();
    let id = p.session.id();
    wait_for("the attach", || {
        reported(&s, SessionEventKind::Attached, id)
    })
    .await;
    let times_of = |kind| {
        s.backend
            .reports
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.events.iter().zip(r.times.iter()))
            .find(|(e, _)| e.kind == kind && e.session_id == id)
            .map(|(_, t)| *t)
    };
    let attach = times_of(SessionEventKind::Attached).expect("the attach carries its times");
    assert!(
        attach.started_ms_ago < 100 && attach.heard_ms_ago < 100,
        "{attach:?}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    say(&mut p.session, &mut link, b"reading").await;
    assert_eq!(inbound.recv().await.unwrap().data, b"reading");
    s.backend.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(20)).await;
    drop(link);
    assert!(matches!(d.await.unwrap(), Outcome::SessionEnded { .. }));
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(
        !reported(&s, SessionEventKind::Detached, id),
        "the backend was down"
    );
    s.backend.down.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(60), async {
        while !reported(&s, SessionEventKind::Detached, id) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the detach, retried, once the backend is back");
    let detach = times_of(SessionEventKind::Detached).expect("the detach carries its times");
    let heard_after_start = detach.started_ms_ago - detach.heard_ms_ago;
    assert!(
        (5_000..5_100).contains(&heard_after_start),
        "last heard {heard_after_start} ms after the start: {detach:?}"
    );
    assert!(detach.heard_ms_ago >= 60_000, "{detach:?}");
}
