//! Full handshakes, resumptions and the byte and work budgets (SPEC.md §4.8, §11).

use std::cell::Cell;

use vouch_proto::handshake::gateway::GatewayHandshake;
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake};
use vouch_proto::keys::{IdentityKey, IdentitySigner, PublicKey, Signature};
use vouch_proto::session::Inbound;
use vouch_proto::testing::Pair;
use vouch_proto::wire::{Lifetimes, Message, Scope, MAX_HANDSHAKE_MESSAGE};
use vouch_proto::{AlertCode, Error, PeerMisbehaved};

/// Counts signatures, to check the per-handshake work budget.
struct CountingSigner<'a> {
    key: &'a IdentityKey,
    signatures: Cell<u32>,
}

impl IdentitySigner for CountingSigner<'_> {
    fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }
    fn sign(&self, msg: &[u8]) -> Signature {
        self.signatures.set(self.signatures.get() + 1);
        self.key.sign(msg)
    }
}

#[test]
fn full_handshake_agrees_on_keys_and_identities() {
    let mut pair = Pair::new(1);
    let (p, g) = pair.full_handshake().unwrap();
    assert_eq!(p.gateway_key, pair.gateway_key.public_key());
    assert_eq!(g.peripheral.id, pair.peripheral_id);
    assert_eq!(p.session.id(), g.session.id());
    let (p_send, p_recv) = p.session.danger_export_keys();
    let (g_send, g_recv) = g.session.danger_export_keys();
    assert_eq!(p_send, g_recv);
    assert_eq!(p_recv, g_send);
    assert_ne!(p_send, p_recv);
    assert_eq!(p.ticket.id, g.ticket.id);
    assert!(!p.resumed);
    assert_eq!(g.consumed_ticket, None);
}

#[test]
fn message_sizes_fit_one_pdu_and_the_budget() {
    let mut pair = Pair::new(2);
    pair.full_handshake().unwrap();
    let t = pair.transcript.clone();
    println!(
        "full: hello {} response {} finish {} total {}",
        t.first.len(),
        t.second.len(),
        t.finish.len(),
        t.total()
    );
    assert_eq!(t.first.len(), 108);
    // scope 3 (1 byte), lifetimes 3600 (2) and 86400 (3).
    assert_eq!(t.second.len(), 138);
    assert_eq!(t.finish.len(), 18);
    assert!(t.total() <= 280);

    // The largest vouch: every varint at its widest.
    let mut pair = Pair::new(3);
    pair.scope = Scope(u32::MAX);
    pair.lifetimes = Lifetimes {
        session_s: u32::MAX,
        resumption_s: u32::MAX,
    };
    pair.full_handshake().unwrap();
    let t = pair.transcript.clone();
    assert_eq!(t.second.len(), 147);
    assert!(t.first.len() <= MAX_HANDSHAKE_MESSAGE && t.second.len() <= MAX_HANDSHAKE_MESSAGE);
    assert_eq!(t.total(), 273);
    assert!(t.total() <= 280);
}

#[test]
fn resumption_sizes() {
    let mut pair = Pair::new(4);
    let (p, g) = pair.full_handshake().unwrap();
    pair.resume(p.ticket, &g.ticket).unwrap();
    let t = pair.transcript.clone();
    println!(
        "resume: hello {} response {} finish {} total {}",
        t.first.len(),
        t.second.len(),
        t.finish.len(),
        t.total()
    );
    assert_eq!(
        (t.first.len(), t.second.len(), t.finish.len()),
        (67, 50, 18)
    );
}

#[test]
fn peripheral_signs_once_per_full_handshake_and_never_on_resumption() {
    let mut pair = Pair::new(5);
    let key = IdentityKey::from_seed(&[5u8; 32]);
    // Register this key as the pair's peripheral.
    pair.peripheral_key = IdentityKey::from_seed(&[5u8; 32]);
    let signer = CountingSigner {
        key: &key,
        signatures: Cell::new(0),
    };
    let p = PeripheralHandshake::start(
        &PeripheralConfig::default(),
        pair.peripheral_id,
        &signer,
        &pair.anchors,
        pair.now,
        &mut pair.rng,
    )
    .unwrap();
    let g = GatewayHandshake::new(pair.gateway_config(), pair.now);
    let (p, g) = pair.drive(p, g).unwrap();
    assert_eq!(signer.signatures.get(), 1);
    pair.resume(p.ticket, &g.ticket).unwrap();
    assert_eq!(signer.signatures.get(), 1, "a resumption must not sign");
}

#[test]
fn resumption_without_backend_then_data() {
    let mut pair = Pair::new(6);
    let (p, g) = pair.full_handshake().unwrap();
    let first_keys = p.session.danger_export_keys();
    pair.now = pair.now.add_secs(600);
    let (mut p2, mut g2) = pair.resume(p.ticket, &g.ticket).unwrap();
    assert!(p2.resumed);
    assert_eq!(g2.consumed_ticket, Some(g.ticket.id));
    assert_ne!(p2.session.danger_export_keys(), first_keys);
    assert_ne!(p2.ticket.id, g.ticket.id, "each ticket is used once");
    assert_eq!(
        g2.ticket.expires_at, g.ticket.expires_at,
        "resumption never extends the backend's lifetime"
    );
    let mut rec = [0u8; 64];
    let mut out = [0u8; 64];
    let n = p2.session.seal_data(pair.now, b"t=21", &mut rec).unwrap();
    assert_eq!(
        g2.session.open(pair.now, &rec[..n], &mut out).unwrap(),
        Inbound::Data(b"t=21")
    );
    // And resumption chains: the new tickets work too.
    let (p3, _) = pair.resume(p2.ticket, &g2.ticket).unwrap();
    assert!(p3.resumed);
}

#[test]
fn expired_ticket_is_refused_with_resumption_rejected() {
    let mut pair = Pair::new(7);
    let (p, g) = pair.full_handshake().unwrap();
    pair.now = g.ticket.expires_at;
    let err = pair.resume(p.ticket, &g.ticket).unwrap_err();
    assert_eq!(err, Error::PeerMisbehaved(PeerMisbehaved::UnknownTicket));
}

#[test]
fn consumed_ticket_cannot_be_used_again() {
    let mut pair = Pair::new(8);
    let (p, g) = pair.full_handshake().unwrap();
    // Keep a copy of the peripheral's ticket bytes to replay it after use.
    let saved = postcard::to_allocvec(&p.ticket).unwrap();
    let (_p2, g2) = pair.resume(p.ticket, &g.ticket).unwrap();
    // The gateway deletes the consumed ticket; the lookup now finds nothing.
    let replay: vouch_proto::handshake::peripheral::PeripheralTicket =
        postcard::from_bytes(&saved).unwrap();
    let mut ph = PeripheralHandshake::resume(
        &PeripheralConfig::default(),
        &replay,
        &pair.anchors,
        pair.now,
        &mut pair.rng,
    )
    .unwrap();
    let mut gh = GatewayHandshake::new(pair.gateway_config(), pair.now);
    let mut buf = [0u8; 256];
    let n = ph.poll_transmit(&mut buf).unwrap();
    gh.handle_input(pair.now, &buf[..n], &mut pair.rng).unwrap();
    assert!(g2.consumed_ticket.is_some());
    assert_eq!(
        gh.handle_ticket(pair.now, None, &mut pair.rng),
        Err(PeerMisbehaved::UnknownTicket.into())
    );
    let alert = gh.poll_transmit().unwrap();
    assert_eq!(
        Message::decode(&alert).unwrap(),
        Message::Alert(vouch_proto::wire::Alert {
            code: AlertCode::ResumptionRejected
        })
    );
    // The peripheral learns it must run a full handshake.
    assert_eq!(
        ph.handle_input(pair.now, &alert),
        Err(Error::Alert(AlertCode::ResumptionRejected))
    );
}

#[test]
fn timeouts_fail_stickily() {
    let mut pair = Pair::new(9);
    let mut p = pair.start_peripheral().unwrap();
    let deadline = p.poll_timeout().unwrap();
    p.handle_timeout(deadline.add_millis(0));
    assert_eq!(p.error(), Some(&Error::Timeout));
    assert_eq!(p.handle_input(pair.now, &[1, 1]), Err(Error::Timeout));

    let mut g = GatewayHandshake::new(pair.gateway_config(), pair.now);
    let mut buf = [0u8; 256];
    let mut p = pair.start_peripheral().unwrap();
    let n = p.poll_transmit(&mut buf).unwrap();
    g.handle_input(pair.now, &buf[..n], &mut pair.rng).unwrap();
    let d = g.poll_timeout().unwrap();
    g.handle_timeout(d);
    assert_eq!(g.error(), Some(&Error::Timeout));
    // A backend that times out means "busy", so the peripheral backs off.
    assert_eq!(
        Message::decode(&g.poll_transmit().unwrap()).unwrap(),
        Message::Alert(vouch_proto::wire::Alert {
            code: AlertCode::Busy
        })
    );
}

/// SPEC.md §6.2, §11.12: the gateway checks a ResumeHello's ticket, its
/// expiry and its binder before any public-key operation. The gateway is
/// given no randomness at all (`FixedRng` with no bytes panics when asked):
/// a forged or expired attempt must be refused without it, so before any
/// ephemeral key is made or any Diffie–Hellman run.
#[test]
fn a_resume_hello_is_refused_before_any_public_key_operation() {
    use vouch_proto::handshake::gateway::GatewayEvent;
    use vouch_proto::testing::FixedRng;
    let mut pair = Pair::new(31);
    let (p, g) = pair.full_handshake().unwrap();
    let mut ph = PeripheralHandshake::resume(
        &PeripheralConfig::default(),
        &p.ticket,
        &pair.anchors,
        pair.now,
        &mut pair.rng,
    )
    .unwrap();
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    let n = ph.poll_transmit(&mut buf).unwrap();
    let mut forged = buf[..n].to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1; // the binder
    for (hello, now) in [
        (forged.clone(), pair.now),
        // Genuine, but the ticket has expired.
        (
            buf[..n].to_vec(),
            pair.now.add_secs(pair.lifetimes.resumption_s),
        ),
    ] {
        let mut gh = GatewayHandshake::new(pair.gateway_config(), now);
        let mut no_randomness = FixedRng::new(&[]);
        gh.handle_input(now, &hello, &mut no_randomness).unwrap();
        assert!(matches!(gh.poll_event(), Some(GatewayEvent::NeedTicket(_))));
        assert!(gh
            .handle_ticket(now, Some(&g.ticket), &mut no_randomness)
            .is_err());
        assert_eq!(no_randomness.remaining(), 0);
    }
    // An unknown ticket: refused as well, and still without randomness.
    let mut gh = GatewayHandshake::new(pair.gateway_config(), pair.now);
    let mut no_randomness = FixedRng::new(&[]);
    gh.handle_input(pair.now, &forged, &mut no_randomness)
        .unwrap();
    assert!(gh.poll_event().is_some());
    assert!(gh
        .handle_ticket(pair.now, None, &mut no_randomness)
        .is_err());
}

/// SPEC.md §11.14: nothing on the air names either party. A passive
/// listener sees neither the peripheral's id or public key nor the
/// gateway's public key, nor the scope and lifetimes of the grant, in any
/// message of a full handshake, a resumption or a record.
#[test]
fn the_air_carries_neither_identity_nor_the_grant_in_the_clear() {
    let mut pair = Pair::new(32);
    pair.scope = Scope(0x5a5a_0003);
    pair.lifetimes = Lifetimes {
        session_s: 0x0bad_cafe,
        resumption_s: 0x0dec_0ded,
    };
    let (mut p, g) = pair.full_handshake().unwrap();
    let mut air = vec![
        pair.transcript.first.clone(),
        pair.transcript.second.clone(),
        pair.transcript.finish.clone(),
    ];
    let mut rec = [0u8; 128];
    let n = p.session.seal_data(pair.now, b"21.5 C", &mut rec).unwrap();
    air.push(rec[..n].to_vec());
    pair.resume(p.ticket, &g.ticket).unwrap();
    air.extend([
        pair.transcript.first.clone(),
        pair.transcript.second.clone(),
        pair.transcript.finish.clone(),
    ]);
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("peripheral id", pair.peripheral_id.0.to_vec()),
        (
            "peripheral key",
            pair.peripheral_key.public_key().as_bytes().to_vec(),
        ),
        (
            "gateway key",
            pair.gateway_key.public_key().as_bytes().to_vec(),
        ),
        ("scope", pair.scope.0.to_le_bytes().to_vec()),
        (
            "scope (varint)",
            postcard::to_allocvec(&pair.scope.0).unwrap(),
        ),
        ("lifetimes", postcard::to_allocvec(&pair.lifetimes).unwrap()),
    ];
    for msg in &air {
        for (what, bytes) in &secrets {
            assert!(
                !msg.windows(bytes.len()).any(|w| w == bytes.as_slice()),
                "the {what} is on the air in the clear"
            );
        }
    }
}
