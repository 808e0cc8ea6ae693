//! The attacks of DESIGN.md §4 that can be expressed at the protocol layer,
//! one named test each (SPEC.md §11). System-level attacks (backend replay
//! cache, lockout, clone detection, revocation) are tested in `vouch-tests`.

use vouch_proto::handshake::backend::{open_hello, BackendKeys, VouchGrant};
use vouch_proto::handshake::gateway::{GatewayConfig, GatewayEvent, GatewayHandshake};
use vouch_proto::keys::{DhPublic, IdentityKey, KeyId, PeripheralId};
use vouch_proto::testing::Pair;
use vouch_proto::wire::backend::{VouchAnswer, Vouched};
use vouch_proto::wire::{Message, Response, MAX_HANDSHAKE_MESSAGE};
use vouch_proto::{AlertCode, DecodeError, Error, PeerMisbehaved};

fn hello_of(
    pair: &mut Pair,
) -> (
    vouch_proto::handshake::peripheral::PeripheralHandshake,
    Vec<u8>,
) {
    let mut p = pair.start_peripheral().unwrap();
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    let n = p.poll_transmit(&mut buf).unwrap();
    (p, buf[..n].to_vec())
}

/// Runs a gateway on `hello` with the backend answer `answer_for(request)`;
/// returns the gateway and its Response.
fn gateway_answer(
    pair: &mut Pair,
    config: GatewayConfig,
    hello: &[u8],
    answer: impl FnOnce(&mut Pair, &vouch_proto::wire::backend::VouchRequest) -> VouchAnswer,
) -> (GatewayHandshake, Vec<u8>) {
    let mut g = GatewayHandshake::new(config, pair.now);
    g.handle_input(pair.now, hello, &mut pair.rng).unwrap();
    let Some(GatewayEvent::NeedVouch(req)) = g.poll_event() else {
        panic!("no vouch request")
    };
    let a = answer(pair, &req);
    g.handle_vouch(pair.now, a).unwrap();
    let resp = g.poll_transmit().unwrap();
    (g, resp)
}

#[test]
fn replayed_hello_cannot_complete_without_the_ephemeral_secret() {
    // An eavesdropper records a whole genuine handshake...
    let mut pair = Pair::new(30);
    pair.full_handshake().unwrap();
    let recorded = pair.transcript.clone();
    // ...and replays the hello to the same gateway. Even a backend without a
    // replay cache vouches again; the replayer cannot produce the Finish.
    let cfg = pair.gateway_config();
    let (mut g, resp) = gateway_answer(&mut pair, cfg, &recorded.first, |p, r| p.backend_vouch(r));
    assert_ne!(
        resp, recorded.second,
        "the gateway answers with a fresh ephemeral"
    );
    assert_eq!(
        g.handle_input(pair.now, &recorded.finish, &mut pair.rng),
        Err(PeerMisbehaved::BadFinish.into())
    );
    assert!(!g.is_established());
    // Replayed to another gateway: the same.
    let other = IdentityKey::from_seed(&[31; 32]);
    pair.gateway_key = other;
    let cfg = pair.gateway_config();
    let (mut g2, _) = gateway_answer(&mut pair, cfg, &recorded.first, |p, r| p.backend_vouch(r));
    assert_eq!(
        g2.handle_input(pair.now, &recorded.finish, &mut pair.rng),
        Err(PeerMisbehaved::BadFinish.into())
    );
}

#[test]
fn replayed_response_is_rejected_by_a_new_handshake() {
    let mut pair = Pair::new(32);
    pair.full_handshake().unwrap();
    let old = pair.transcript.clone();
    let (mut p, _hello) = hello_of(&mut pair);
    let err = p.handle_input(pair.now, &old.second).unwrap_err();
    assert!(matches!(
        err,
        Error::PeerMisbehaved(PeerMisbehaved::BadVouchSignature | PeerMisbehaved::MalformedVouch)
    ));
    assert!(!p.is_established());
}

#[test]
fn vouch_for_another_peripheral_is_rejected() {
    // Two peripherals; a gateway that holds a genuine vouch for P1's handshake
    // tries to use it for P2's.
    let mut p1 = Pair::new(33);
    let mut p2 = Pair::new(33);
    p2.peripheral_key = IdentityKey::from_seed(&[34; 32]);
    p2.peripheral_id = PeripheralId::derive(&p2.peripheral_key.public_key());
    let (_h1, hello1) = hello_of(&mut p1);
    let (mut h2, hello2) = hello_of(&mut p2);
    // The backend vouches for P1's hello (and the gateway's genuine ephemeral).
    let cfg = p1.gateway_config();
    let mut g = GatewayHandshake::new(cfg, p1.now);
    g.handle_input(p1.now, &hello1, &mut p1.rng).unwrap();
    let Some(GatewayEvent::NeedVouch(req1)) = g.poll_event() else {
        panic!()
    };
    let vouch_for_p1 = p1.backend_vouch(&req1);
    assert!(matches!(vouch_for_p1, VouchAnswer::Vouched(_)));
    // The gateway answers P2's hello with P1's vouch.
    let (_g2, resp) = gateway_answer(&mut p2, cfg, &hello2, |_, _| vouch_for_p1.clone());
    assert_eq!(
        h2.handle_input(p2.now, &resp),
        Err(PeerMisbehaved::BadVouchSignature.into())
    );
}

#[test]
fn vouch_moved_to_another_gateway_ephemeral_is_rejected() {
    // A gateway that is not G obtains a vouch the backend issued to G for this
    // hello (with G's ephemeral) and answers with its own ephemeral while
    // presenting G's identity.
    let mut pair = Pair::new(35);
    let (mut p, hello) = hello_of(&mut pair);
    let cfg = pair.gateway_config();
    let mut genuine = GatewayHandshake::new(cfg, pair.now);
    genuine
        .handle_input(pair.now, &hello, &mut pair.rng)
        .unwrap();
    let Some(GatewayEvent::NeedVouch(req)) = genuine.poll_event() else {
        panic!()
    };
    let stolen = pair.backend_vouch(&req);
    let (_thief, resp) = gateway_answer(&mut pair, cfg, &hello, |_, _| stolen.clone());
    assert_eq!(
        p.handle_input(pair.now, &resp),
        Err(PeerMisbehaved::BadVouchSignature.into())
    );
}

#[test]
fn vouch_for_another_gateway_key_is_refused_by_the_gateway() {
    let mut pair = Pair::new(36);
    let (_p, hello) = hello_of(&mut pair);
    // The backend's vouch names G; a machine configured as G' refuses it.
    let other = IdentityKey::from_seed(&[37; 32]).public_key();
    let mut g = GatewayHandshake::new(GatewayConfig::new(other), pair.now);
    g.handle_input(pair.now, &hello, &mut pair.rng).unwrap();
    let Some(GatewayEvent::NeedVouch(req)) = g.poll_event() else {
        panic!()
    };
    let answer = pair.backend_vouch(&req);
    assert_eq!(
        g.handle_vouch(pair.now, answer),
        Err(PeerMisbehaved::VouchMismatch.into())
    );
}

#[test]
fn rogue_gateway_with_its_own_signing_key_is_rejected() {
    // A gateway not in the registry gets no vouch, so it forges one with a key
    // it made, under the backend's key id.
    let mut pair = Pair::new(38);
    let (mut p, hello) = hello_of(&mut pair);
    let rogue_backend = BackendKeys::generate(KeyId(1), &mut pair.rng);
    let cfg = pair.gateway_config();
    let (_g, resp) = gateway_answer(&mut pair, cfg, &hello, |pair, req| {
        // The rogue cannot open the sealed hello: with its own key the identity
        // decrypts to garbage.
        let opened = open_hello(&req.hello, &rogue_backend).unwrap();
        assert_ne!(opened.claimed_peripheral(), pair.peripheral_id);
        let grant = VouchGrant {
            gateway_key: pair.gateway_key.public_key(),
            gateway_ephemeral: req.gateway_ephemeral,
            scope: pair.scope,
            lifetimes: pair.lifetimes,
        };
        // Give the rogue every advantage: a vouch statement built with the real
        // backend's knowledge of the peripheral, signed with the rogue key.
        let verified = open_hello(&req.hello, &pair.backend)
            .unwrap()
            .verify(&pair.peripheral_key.public_key())
            .unwrap();
        VouchAnswer::Vouched(Vouched {
            vouch: verified.vouch(&rogue_backend, &grant),
            peripheral: pair.peripheral_info(),
        })
    });
    assert_eq!(
        p.handle_input(pair.now, &resp),
        Err(PeerMisbehaved::BadVouchSignature.into())
    );
}

#[test]
fn vouch_under_an_unknown_anchor_is_rejected() {
    let mut pair = Pair::new(39);
    let (mut p, hello) = hello_of(&mut pair);
    let other = BackendKeys::generate(KeyId(9), &mut pair.rng);
    let cfg = pair.gateway_config();
    let (_g, resp) = gateway_answer(&mut pair, cfg, &hello, |pair, req| {
        let verified = open_hello(&req.hello, &pair.backend)
            .unwrap()
            .verify(&pair.peripheral_key.public_key())
            .unwrap();
        let grant = VouchGrant {
            gateway_key: pair.gateway_key.public_key(),
            gateway_ephemeral: req.gateway_ephemeral,
            scope: pair.scope,
            lifetimes: pair.lifetimes,
        };
        VouchAnswer::Vouched(Vouched {
            vouch: verified.vouch(&other, &grant),
            peripheral: pair.peripheral_info(),
        })
    });
    assert_eq!(
        p.handle_input(pair.now, &resp),
        Err(PeerMisbehaved::UnknownAnchor.into())
    );
}

#[test]
fn impostor_peripheral_claiming_another_id_fails_the_backend() {
    // A device with its own key claims the registered peripheral's id.
    let mut pair = Pair::new(40);
    let registered = pair.peripheral_key.public_key();
    pair.peripheral_key = IdentityKey::from_seed(&[41; 32]);
    let (_p, hello) = hello_of(&mut pair);
    let opened = open_hello(&hello, &pair.backend).unwrap();
    assert_eq!(opened.claimed_peripheral(), pair.peripheral_id);
    assert_eq!(
        opened.verify(&registered).unwrap_err(),
        PeerMisbehaved::BadHelloSignature.into()
    );
}

#[test]
fn hello_sealed_to_another_backend_cannot_be_opened() {
    let mut pair = Pair::new(42);
    let (_p, hello) = hello_of(&mut pair);
    let other = BackendKeys::generate(KeyId(1), &mut pair.rng);
    // Same key id, different key: the identity decrypts to garbage.
    let opened = open_hello(&hello, &other).unwrap();
    assert_ne!(opened.claimed_peripheral(), pair.peripheral_id);
    let other_kid = BackendKeys::generate(KeyId(2), &mut pair.rng);
    assert_eq!(
        open_hello(&hello, &other_kid).unwrap_err(),
        PeerMisbehaved::UnknownBackendKey.into()
    );
}

#[test]
fn downgrade_of_version_or_suite_is_refused_without_fallback() {
    let mut pair = Pair::new(43);
    let (_p, hello) = hello_of(&mut pair);
    for (at, value, expect) in [
        (0, 0u8, DecodeError::UnsupportedVersion(0)),
        (0, 2, DecodeError::UnsupportedVersion(2)),
        (2, 0, DecodeError::UnsupportedSuite(0)),
        (2, 2, DecodeError::UnsupportedSuite(2)),
    ] {
        let mut bad = hello.clone();
        bad[at] = value;
        let mut g = GatewayHandshake::new(pair.gateway_config(), pair.now);
        assert_eq!(
            g.handle_input(pair.now, &bad, &mut pair.rng),
            Err(expect.into())
        );
        let alert = g.poll_transmit().unwrap();
        assert_eq!(
            alert,
            vouch_proto::wire::encode_alert(AlertCode::Unsupported).to_vec()
        );
        assert!(g.poll_event().is_none(), "nothing reaches the backend");
    }
}

#[test]
fn reflected_messages_are_rejected() {
    let mut pair = Pair::new(44);
    let (mut p, hello) = hello_of(&mut pair);
    // The peripheral's own hello, reflected back to it.
    assert_eq!(
        p.handle_input(pair.now, &hello),
        Err(PeerMisbehaved::UnexpectedMessage {
            got: vouch_proto::wire::MessageType::Hello
        }
        .into())
    );
    // The gateway's own response, reflected back to it as the Finish.
    let cfg = pair.gateway_config();
    let (_p2, hello2) = hello_of(&mut pair);
    let (mut g, resp) = gateway_answer(&mut pair, cfg, &hello2, |p, r| p.backend_vouch(r));
    assert_eq!(
        g.handle_input(pair.now, &resp, &mut pair.rng),
        Err(PeerMisbehaved::UnexpectedMessage {
            got: vouch_proto::wire::MessageType::Response
        }
        .into())
    );
}

#[test]
fn reordered_messages_are_rejected() {
    let mut pair = Pair::new(45);
    pair.full_handshake().unwrap();
    let t = pair.transcript.clone();
    // Finish first.
    let mut g = GatewayHandshake::new(pair.gateway_config(), pair.now);
    assert!(matches!(
        g.handle_input(pair.now, &t.finish, &mut pair.rng),
        Err(Error::PeerMisbehaved(
            PeerMisbehaved::UnexpectedMessage { .. }
        ))
    ));
    // A second hello while waiting for the vouch.
    let mut g = GatewayHandshake::new(pair.gateway_config(), pair.now);
    g.handle_input(pair.now, &t.first, &mut pair.rng).unwrap();
    assert!(g.handle_input(pair.now, &t.first, &mut pair.rng).is_err());
    assert!(g
        .handle_vouch(
            pair.now,
            VouchAnswer::Refused(vouch_proto::error::Refusal::Denied)
        )
        .is_err());
    // A Finish at the peripheral.
    let (mut p, _) = hello_of(&mut pair);
    assert!(p.handle_input(pair.now, &t.finish).is_err());
}

#[test]
fn low_order_gateway_share_is_rejected() {
    let mut pair = Pair::new(46);
    let (mut p, _hello) = hello_of(&mut pair);
    // The identity point (u = 0) makes every shared secret zero.
    let resp = Message::Response(Response {
        ephemeral: DhPublic([0u8; 32]),
        sealed_vouch: &[0u8; 103],
    })
    .to_vec();
    assert_eq!(
        p.handle_input(pair.now, &resp),
        Err(PeerMisbehaved::WeakKeyShare.into())
    );
    // u = 1 is of small order too (order 4 point on the twist side).
    let mut p2 = hello_of(&mut pair).0;
    let mut one = [0u8; 32];
    one[0] = 1;
    let resp = Message::Response(Response {
        ephemeral: DhPublic(one),
        sealed_vouch: &[0u8; 103],
    })
    .to_vec();
    assert_eq!(
        p2.handle_input(pair.now, &resp),
        Err(PeerMisbehaved::WeakKeyShare.into())
    );
}

#[test]
fn low_order_peripheral_share_is_refused_by_the_backend() {
    let mut pair = Pair::new(47);
    let (_p, hello) = hello_of(&mut pair);
    let mut bad = hello.clone();
    bad[4..36].fill(0);
    assert_eq!(
        open_hello(&bad, &pair.backend).unwrap_err(),
        PeerMisbehaved::WeakKeyShare.into()
    );
}

#[test]
fn unknown_key_share_the_peripheral_learns_exactly_who_was_vouched() {
    // The session binds the gateway the backend vouched for: the peripheral's
    // view of its peer and the gateway's view of its peer are the real ones.
    let mut pair = Pair::new(48);
    let (p, g) = pair.full_handshake().unwrap();
    assert_eq!(p.gateway_key, pair.gateway_key.public_key());
    assert_eq!(g.peripheral.public_key, pair.peripheral_key.public_key());
    assert_eq!(p.scope, g.peripheral.scope);
}

#[test]
fn alert_from_the_peer_is_not_answered() {
    let mut pair = Pair::new(49);
    let (mut p, _) = hello_of(&mut pair);
    let alert = vouch_proto::wire::encode_alert(AlertCode::HandshakeFailed);
    assert_eq!(
        p.handle_input(pair.now, &alert),
        Err(Error::Alert(AlertCode::HandshakeFailed))
    );
    let mut buf = [0u8; 16];
    assert_eq!(
        p.poll_transmit(&mut buf),
        None,
        "no alert in answer to an alert"
    );
}

#[test]
fn backend_refusal_reaches_the_peripheral_as_a_generic_failure() {
    let mut pair = Pair::new(50);
    let (mut p, hello) = hello_of(&mut pair);
    let mut g = GatewayHandshake::new(pair.gateway_config(), pair.now);
    g.handle_input(pair.now, &hello, &mut pair.rng).unwrap();
    g.poll_event();
    let refused = VouchAnswer::Refused(vouch_proto::error::Refusal::Denied);
    assert!(g.handle_vouch(pair.now, refused).is_err());
    let alert = g.poll_transmit().unwrap();
    assert_eq!(
        p.handle_input(pair.now, &alert),
        Err(Error::Alert(AlertCode::HandshakeFailed))
    );
}

#[test]
fn overlong_varints_are_rejected_so_every_message_has_one_encoding() {
    let mut pair = Pair::new(51);
    let (mut p, mut g) = pair.full_handshake().unwrap();
    let response = pair.transcript.second.clone();
    let mut rec = [0u8; 64];
    let n = p.session.seal_data(pair.now, b"x", &mut rec).unwrap();
    // The record's counter (1) re-encoded as the over-long varint 81 00: the
    // AEAD would still authenticate (its AAD holds the counter as LE64).
    assert_eq!(rec[2], 1);
    let mut overlong = vec![rec[0], rec[1], 0x81, 0x00];
    overlong.extend_from_slice(&rec[3..n]);
    let mut out = [0u8; 64];
    assert_eq!(
        g.session.open(pair.now, &overlong, &mut out),
        Err(DecodeError::NonCanonical.into())
    );
    // The canonical record still opens: the rejection changed nothing.
    assert_eq!(
        g.session.open(pair.now, &rec[..n], &mut out).unwrap(),
        vouch_proto::session::Inbound::Data(b"x")
    );

    // The Response's length prefix, over-long.
    let len = response[34];
    assert!(len < 0x80);
    let mut bad = response[..34].to_vec();
    bad.extend_from_slice(&[len | 0x80, 0x00]);
    bad.extend_from_slice(&response[35..]);
    assert_eq!(Message::decode(&bad), Err(DecodeError::NonCanonical));
}
