//! Drives `examples/firmware_shape.rs` (the no_std firmware glue) against the
//! protocol's gateway and backend roles at ATT MTU 23: full handshake in
//! fragments, data both ways, an anchor update, then a "reboot" that resumes
//! from the ticket the firmware persisted.

#[allow(unreachable_pub)]
#[path = "../examples/firmware_shape.rs"]
mod firmware_shape;

use firmware_shape::{Firmware, Platform};
use vouch_proto::anchor::{AnchorAction, AnchorSet, AnchorUpdate};
use vouch_proto::framing::{Fragmenter, Reassembler, ReassemblyLimits, MAX_FRAGMENT};
use vouch_proto::handshake::backend::BackendKeys;
use vouch_proto::handshake::gateway::{
    GatewayEstablished, GatewayEvent, GatewayHandshake, GatewayTicket,
};
use vouch_proto::handshake::peripheral::PeripheralTicket;
use vouch_proto::keys::{IdentityKey, KeyId, PeripheralId};
use vouch_proto::session::{CloseReason, Inbound};
use vouch_proto::testing::{rng, Pair};
use vouch_proto::wire::{Hello, Scope, MAX_MESSAGE};

const MTU: usize = 23;

/// A firmware's platform in memory: notifications are collected, flash is a
/// byte buffer (the ticket serialized as postcard, as firmware would).
#[derive(Default)]
struct Board {
    air: Vec<Vec<u8>>,
    ticket_flash: Option<Vec<u8>>,
    anchors_flash: Option<AnchorSet>,
    data: Vec<(Vec<u8>, Scope)>,
    up: bool,
}

impl Platform for Board {
    fn notify(&mut self, fragment: &[u8]) {
        assert!(fragment.len() <= MTU - 3, "a notification fits the ATT MTU");
        self.air.push(fragment.to_vec());
    }
    fn store_ticket(&mut self, ticket: &PeripheralTicket) {
        let mut buf = [0u8; 128];
        let n = postcard::to_slice(ticket, &mut buf).unwrap().len();
        self.ticket_flash = Some(buf[..n].to_vec());
    }
    fn clear_ticket(&mut self) {
        self.ticket_flash = None;
    }
    fn store_anchors(&mut self, anchors: &AnchorSet) {
        self.anchors_flash = Some(anchors.clone());
    }
    fn on_data(&mut self, data: &[u8], scope: Scope) {
        self.data.push((data.to_vec(), scope));
    }
    fn on_session(&mut self, up: bool) {
        self.up = up;
    }
}

/// Reassembles what the board notified into whole messages (the gateway side).
fn take_messages(board: &mut Board) -> Vec<Vec<u8>> {
    let mut r: Reassembler = Reassembler::new(ReassemblyLimits::default());
    let mut out = Vec::new();
    for f in board.air.drain(..) {
        if let Some(m) = r.push(vouch_proto::Timestamp(0), &f).unwrap() {
            out.push(m.to_vec());
        }
    }
    out
}

/// Writes a gateway message to the firmware's Inbox, fragment by fragment.
fn write_to(
    fw: &mut Firmware<IdentityKey>,
    board: &mut Board,
    msg: &[u8],
    now: vouch_proto::Timestamp,
) {
    let mut f = Fragmenter::new(msg, MTU).unwrap();
    let mut buf = [0u8; MAX_FRAGMENT];
    while let Some(n) = f.next_into(&mut buf) {
        fw.on_write(now, &buf[..n], board).unwrap();
    }
}

fn gateway_side(
    pair: &mut Pair,
    fw: &mut Firmware<IdentityKey>,
    board: &mut Board,
    ticket: Option<&GatewayTicket>,
) -> GatewayEstablished {
    let now = pair.now;
    let mut g = GatewayHandshake::new(pair.gateway_config(), now);
    let first = take_messages(board);
    assert_eq!(first.len(), 1);
    g.handle_input(now, &first[0], &mut pair.rng).unwrap();
    match g.poll_event() {
        Some(GatewayEvent::NeedVouch(req)) => {
            let answer = pair.backend_vouch(&req);
            g.handle_vouch(now, answer).unwrap()
        }
        Some(GatewayEvent::NeedTicket(_)) => g.handle_ticket(now, ticket, &mut pair.rng).unwrap(),
        None => panic!("no event"),
    }
    let second = g.poll_transmit().unwrap();
    write_to(fw, board, &second, now);
    let finish = take_messages(board);
    assert_eq!(finish.len(), 1);
    g.handle_input(now, &finish[0], &mut pair.rng).unwrap();
    g.into_established().unwrap()
}

const SEED: [u8; 32] = [7; 32];

fn device_key() -> IdentityKey {
    IdentityKey::from_seed(&SEED)
}

#[test]
fn firmware_glue_handshakes_in_fragments_and_resumes_from_flash() {
    // The reference backend of `Pair` registers its `peripheral_key`: make
    // it the key the firmware holds.
    let mut pair = Pair::new(50);
    pair.peripheral_key = device_key();
    pair.peripheral_id = PeripheralId::derive(&device_key().public_key());
    let now = pair.now;
    let mut fw = Firmware::new(device_key(), pair.peripheral_id, pair.anchors.clone());
    let mut board = Board::default();
    let mut rng = rng(51);

    // Full handshake: the Hello (108 bytes) goes out as 6 fragments at MTU 23.
    fw.on_subscribed(now, MTU, None, &mut rng, &mut board)
        .unwrap();
    assert_eq!(board.air.len(), 6);
    let mut g = gateway_side(&mut pair, &mut fw, &mut board, None);
    assert!(fw.is_established() && board.up);
    assert!(board.ticket_flash.is_some(), "the ticket was persisted");

    // Data both ways.
    fw.send(now, b"21.5 C", &mut board).unwrap();
    let msgs = take_messages(&mut board);
    let mut plain = [0u8; MAX_MESSAGE];
    assert_eq!(
        g.session.open(now, &msgs[0], &mut plain).unwrap(),
        Inbound::Data(b"21.5 C")
    );
    let mut rec = [0u8; MAX_MESSAGE];
    let n = g.session.seal_data(now, b"led=on", &mut rec).unwrap();
    write_to(&mut fw, &mut board, &rec[..n], now);
    assert_eq!(board.data, vec![(b"led=on".to_vec(), pair.scope)]);

    // Close; "reboot": a new firmware instance resumes with the ticket from
    // flash (no backend, no signature).
    fw.close(now, CloseReason::SHUTDOWN, &mut board);
    let msgs = take_messages(&mut board);
    assert_eq!(
        g.session.open(now, &msgs[0], &mut plain).unwrap(),
        Inbound::Close(CloseReason::SHUTDOWN)
    );
    let ticket: PeripheralTicket =
        postcard::from_bytes(board.ticket_flash.as_ref().unwrap()).unwrap();
    // No anchor update yet: the anchors in flash are the provisioned ones.
    assert!(board.anchors_flash.is_none());
    let mut fw = Firmware::new(device_key(), pair.peripheral_id, pair.anchors.clone());
    fw.on_subscribed(now, MTU, Some(ticket), &mut rng, &mut board)
        .unwrap();
    let mut resumed = gateway_side(&mut pair, &mut fw, &mut board, Some(&g.ticket));
    assert!(resumed.consumed_ticket.is_some(), "a resumption");
    assert!(fw.is_established());

    // An anchor rotation is verified and persisted; a forged one is not.
    let k2 = &pair.next_backend;
    let k3 = BackendKeys::generate(KeyId(3), &mut rng);
    let rotate_to_2 = AnchorAction::Rotate {
        anchor: k2.anchor(),
        next: k3.anchor().digest(),
    };
    // Signed by the key the device holds, not by the key it rotates to.
    let forged = AnchorUpdate::sign(1, rotate_to_2, KeyId(2), pair.backend.signing());
    let n = resumed
        .session
        .seal_anchor_update(now, &forged, &mut rec)
        .unwrap();
    write_to(&mut fw, &mut board, &rec[..n], now);
    assert!(board.anchors_flash.is_none());
    let update = AnchorUpdate::sign(1, rotate_to_2, KeyId(2), k2.signing());
    let n = resumed
        .session
        .seal_anchor_update(now, &update, &mut rec)
        .unwrap();
    write_to(&mut fw, &mut board, &rec[..n], now);
    assert_eq!(
        board.anchors_flash.as_ref().unwrap().primary().kid,
        KeyId(2)
    );

    // Another reboot: the ticket in flash was granted under key 1, which the
    // device rotated away from, so it is not offered; a full handshake
    // sealed to key 2 starts instead.
    fw.close(now, CloseReason::SHUTDOWN, &mut board);
    take_messages(&mut board);
    let ticket: PeripheralTicket =
        postcard::from_bytes(board.ticket_flash.as_ref().unwrap()).unwrap();
    assert_eq!(ticket.anchor, KeyId(1));
    let mut fw = Firmware::new(
        device_key(),
        pair.peripheral_id,
        board.anchors_flash.clone().unwrap(),
    );
    fw.on_subscribed(now, MTU, Some(ticket), &mut rng, &mut board)
        .unwrap();
    let first = take_messages(&mut board);
    assert_eq!(Hello::peek(&first[0]).unwrap().anchor, KeyId(2));
}
