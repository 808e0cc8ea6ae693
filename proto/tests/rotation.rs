//! A backend key the peripheral rotated away from has no authority left
//! (SPEC.md §2.3, §6.1, §7.7, §11.15): it cannot vouch, its tickets do not
//! resume, and it cannot sign an update. The update rules themselves are
//! tested beside [`vouch_proto::anchor::AnchorSet::apply`].

use vouch_proto::anchor::{AnchorAction, AnchorSet, AnchorUpdate};
use vouch_proto::handshake::backend::{open_hello, BackendKeys, VouchGrant};
use vouch_proto::handshake::gateway::{GatewayEvent, GatewayHandshake};
use vouch_proto::keys::{IdentityKey, KeyId, SealingKey};
use vouch_proto::testing::Pair;
use vouch_proto::wire::backend::{VouchAnswer, Vouched};
use vouch_proto::wire::MAX_HANDSHAKE_MESSAGE;
use vouch_proto::{ApiMisuse, Error, PeerMisbehaved};

/// Backend key pair `kid` from fixed seeds; `as_kid` relabels it, as an
/// attacker does who signs with one key under another key's id.
fn key(seed: u8, as_kid: u8) -> BackendKeys {
    BackendKeys::from_parts(
        KeyId(as_kid),
        IdentityKey::from_seed(&[seed; 32]),
        SealingKey::from_bytes([seed ^ 0x55; 32]),
    )
}

/// A pair whose peripheral was provisioned on key 1 and applied the
/// rotation to key 2; the honest backend now serves key 2.
fn rotated_pair(seed: u64) -> (Pair, BackendKeys) {
    let (k1, k2, k3) = (key(1, 1), key(2, 2), key(3, 3));
    let mut pair = Pair::new(seed);
    pair.anchors = AnchorSet::new(k1.anchor(), k2.anchor().digest(), 0);
    let rotate = AnchorUpdate::sign(
        1,
        AnchorAction::Rotate {
            anchor: k2.anchor(),
            next: k3.anchor().digest(),
        },
        KeyId(2),
        k2.signing(),
    );
    pair.anchors.apply(&rotate).unwrap();
    pair.backend = k2;
    (pair, k1)
}

/// Runs a handshake in which the vouch is signed by `signer` (the Hello is
/// opened with the honest key: the attacker is granted the peripheral's id,
/// which is no secret). Returns the peripheral's verdict on the Response.
fn handshake_vouched_by(pair: &mut Pair, signer: &BackendKeys) -> Result<(), Error> {
    let mut p = pair.start_peripheral().unwrap();
    let mut g = GatewayHandshake::new(pair.gateway_config(), pair.now);
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    let n = p.poll_transmit(&mut buf).unwrap();
    g.handle_input(pair.now, &buf[..n], &mut pair.rng).unwrap();
    let Some(GatewayEvent::NeedVouch(req)) = g.poll_event() else {
        panic!("the gateway asks for a vouch")
    };
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
    let answer = VouchAnswer::Vouched(Vouched {
        vouch: verified.vouch(signer, &grant),
        peripheral: pair.peripheral_info(),
    });
    g.handle_vouch(pair.now, answer).unwrap();
    let response = g.poll_transmit().unwrap();
    p.handle_input(pair.now, &response)
}

#[test]
fn a_vouch_signed_by_a_rotated_away_key_is_refused() {
    let (mut pair, k1) = rotated_pair(1);
    // Key 1's vouch, under its own id: the Hello was sealed to key 2.
    assert_eq!(
        handshake_vouched_by(&mut pair, &k1),
        Err(PeerMisbehaved::UnknownAnchor.into())
    );
    // Key 1's signature under key 2's id.
    assert_eq!(
        handshake_vouched_by(&mut pair, &key(1, 2)),
        Err(PeerMisbehaved::BadVouchSignature.into())
    );
    // The honest backend, on key 2: accepted.
    let k2 = key(2, 2);
    assert_eq!(handshake_vouched_by(&mut pair, &k2), Ok(()));
}

#[test]
fn a_ticket_granted_before_a_rotation_does_not_resume() {
    let (k1, k2, k3) = (key(1, 1), key(2, 2), key(3, 3));
    let mut pair = Pair::new(2);
    pair.anchors = AnchorSet::new(k1.anchor(), k2.anchor().digest(), 0);
    pair.backend = k1;
    let (p, g) = pair.full_handshake().unwrap();
    assert_eq!(p.ticket.anchor, KeyId(1));
    // The ticket resumes while key 1 is the anchor…
    let (p, g) = pair.resume(p.ticket, &g.ticket).unwrap();
    // …and not once the peripheral rotated to key 2: whoever vouched under
    // key 1 (a thief of key 1 running a rogue gateway, say) keeps nothing.
    let rotate = AnchorUpdate::sign(
        1,
        AnchorAction::Rotate {
            anchor: k2.anchor(),
            next: k3.anchor().digest(),
        },
        KeyId(2),
        k2.signing(),
    );
    pair.anchors.apply(&rotate).unwrap();
    assert!(matches!(
        pair.resume(p.ticket, &g.ticket),
        Err(Error::ApiMisuse(ApiMisuse::TicketOfOldAnchor))
    ));
}
