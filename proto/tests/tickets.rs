//! The peripheral's ticket decisions (SPEC.md §6.1, §6.4), made once in
//! [`TicketWallet`] for the host driver and the firmware alike.

use vouch_proto::anchor::{AnchorAction, AnchorUpdate};
use vouch_proto::handshake::backend::BackendKeys;
use vouch_proto::handshake::peripheral::{NextHandshake, TicketSlot, TicketWallet};
use vouch_proto::keys::KeyId;
use vouch_proto::testing::{rng, Pair};

#[test]
fn failed_attempts_never_drop_a_ticket_and_alternate_before_a_full_handshake() {
    let mut pair = Pair::new(1);
    let (first, g1) = pair.full_handshake().unwrap();
    let mut w = TicketWallet::new();
    assert_eq!(w.choose(), NextHandshake::Full);
    w.on_established(None, first.ticket);
    assert_eq!(w.choose(), NextHandshake::Resume(TicketSlot::Unconfirmed));

    // A resumption with it completes, but nobody knows whether the gateway
    // got the Finish: both are kept, the new one tried first.
    let (resumed, _g2) = pair
        .resume(
            postcard::from_bytes(
                &postcard::to_allocvec(w.ticket(TicketSlot::Unconfirmed).unwrap()).unwrap(),
            )
            .unwrap(),
            &g1.ticket,
        )
        .unwrap();
    w.on_established(Some(TicketSlot::Unconfirmed), resumed.ticket);
    let (old, new) = (
        w.ticket(TicketSlot::Confirmed).unwrap().id,
        w.ticket(TicketSlot::Unconfirmed).unwrap().id,
    );
    assert_eq!(old, g1.ticket.id);
    assert_ne!(old, new);

    // Unauthenticated failures: the other ticket, then a full handshake,
    // then both again; neither is ever dropped.
    for _ in 0..2 {
        assert_eq!(w.choose(), NextHandshake::Resume(TicketSlot::Unconfirmed));
        w.on_failed(TicketSlot::Unconfirmed);
        assert_eq!(w.choose(), NextHandshake::Resume(TicketSlot::Confirmed));
        w.on_failed(TicketSlot::Confirmed);
        assert_eq!(w.choose(), NextHandshake::Full);
        assert_eq!(w.ticket(TicketSlot::Confirmed).unwrap().id, old);
        assert_eq!(w.ticket(TicketSlot::Unconfirmed).unwrap().id, new);
    }

    // The gateway's first authenticated record confirms the new ticket: the
    // old one goes (the gateway replaced it).
    assert!(w.on_gateway_record());
    assert!(!w.on_gateway_record(), "once");
    assert_eq!(w.ticket(TicketSlot::Confirmed).unwrap().id, new);
    assert!(w.ticket(TicketSlot::Unconfirmed).is_none());

    // Persisted whole (the failure marks are not).
    let back: TicketWallet = postcard::from_bytes(&postcard::to_allocvec(&w).unwrap()).unwrap();
    assert_eq!(back.ticket(TicketSlot::Confirmed).unwrap().id, new);

    // Revoked: everything goes.
    w.clear();
    assert!(w.is_empty());
}

#[test]
fn a_resumption_with_the_fallback_drops_the_ticket_the_gateway_never_stored() {
    let mut pair = Pair::new(2);
    let (first, _g1) = pair.full_handshake().unwrap();
    let (second, _g2) = pair.full_handshake().unwrap();
    let mut w = TicketWallet::new();
    w.on_established(None, first.ticket);
    assert!(w.on_gateway_record());
    // A full handshake whose Finish was lost: the previous ticket stays.
    w.on_established(None, second.ticket);
    let confirmed = w.ticket(TicketSlot::Confirmed).unwrap().id;
    // Resuming with the confirmed one proves the gateway holds it, and so
    // not the other (one ticket per peripheral): the other goes.
    let (third, _) = pair.full_handshake().unwrap();
    w.on_established(Some(TicketSlot::Confirmed), third.ticket);
    assert_eq!(w.ticket(TicketSlot::Confirmed).unwrap().id, confirmed);
    assert_ne!(w.ticket(TicketSlot::Unconfirmed).unwrap().id, confirmed);
}

#[test]
fn tickets_of_a_rotated_away_anchor_and_expired_ones_are_pruned() {
    let mut pair = Pair::new(3);
    let (p, _g) = pair.full_handshake().unwrap();
    let issued = p.ticket.issued_at;
    let lifetime_ms = u64::from(p.ticket.lifetimes.resumption_s) * 1000;
    let mut w = TicketWallet::new();
    w.on_established(None, p.ticket);
    let anchors = pair.anchors.clone();
    // Before a reboot the device's clock judges expiry; after one (None) it
    // cannot, and the gateway does.
    assert!(!w.prune(&anchors, Some(issued)));
    assert!(!w.prune(&anchors, None));
    assert!(!w.is_empty());
    let mut expired = TicketWallet::new();
    let (p2, _) = pair.full_handshake().unwrap();
    expired.on_established(None, p2.ticket);
    assert!(expired.prune(
        &anchors,
        Some(vouch_proto::Timestamp(issued.0 + lifetime_ms))
    ));
    assert!(expired.is_empty());

    // After a rotation, the ticket granted under key 1 goes.
    let k3 = BackendKeys::generate(KeyId(3), &mut rng(33));
    let mut rotated = anchors.clone();
    rotated
        .apply(&AnchorUpdate::sign(
            1,
            AnchorAction::Rotate {
                anchor: pair.next_backend.anchor(),
                next: k3.anchor().digest(),
            },
            KeyId(2),
            pair.next_backend.signing(),
        ))
        .unwrap();
    assert!(w.prune(&rotated, None));
    assert!(w.is_empty());
    assert_eq!(w.choose(), NextHandshake::Full);
}
