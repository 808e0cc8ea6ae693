//! Drives `examples/firmware_shape.rs` (the no_std firmware glue) against the
//! protocol's gateway and backend roles at ATT MTU 23: full handshake in
//! fragments, data both ways, an anchor update, then a "reboot" that resumes
//! from the ticket the firmware persisted; a rogue central answering the
//! device's resumptions, and a lost Finish, cost it no ticket.

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
use vouch_proto::handshake::peripheral::{TicketSlot, TicketWallet};
use vouch_proto::keys::{IdentityKey, KeyId, PeripheralId};
use vouch_proto::session::{CloseReason, Inbound};
use vouch_proto::testing::{rng, Pair};
use vouch_proto::wire::{Hello, Scope, MAX_MESSAGE};
use vouch_proto::AlertCode;

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
    fn store_tickets(&mut self, tickets: &TicketWallet) {
        let mut buf = [0u8; 256];
        let n = postcard::to_slice(tickets, &mut buf).unwrap().len();
        self.ticket_flash = Some(buf[..n].to_vec());
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
    gateway_holding(pair, fw, board, ticket.as_slice(), true).expect("the handshake completes")
}

/// The honest gateway, holding `tickets`, answers the device's first
/// message; with `deliver_finish` false the device's Finish is lost on the
/// way. `None` if the gateway refused (an unknown ticket: the device got
/// `ResumptionRejected`).
fn gateway_holding(
    pair: &mut Pair,
    fw: &mut Firmware<IdentityKey>,
    board: &mut Board,
    tickets: &[&GatewayTicket],
    deliver_finish: bool,
) -> Option<GatewayEstablished> {
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
        Some(GatewayEvent::NeedTicket(id)) => {
            let held = tickets.iter().copied().find(|t| t.id == id);
            if g.handle_ticket(now, held, &mut pair.rng).is_err() {
                let alert = g.poll_transmit().unwrap();
                assert!(matches!(
                    fw_write(fw, board, &alert, now),
                    Err(firmware_shape::Failure::ResumptionRejected)
                ));
                return None;
            }
        }
        None => panic!("no event"),
    }
    let second = g.poll_transmit().unwrap();
    write_to(fw, board, &second, now);
    let finish = take_messages(board);
    assert_eq!(finish.len(), 1);
    if !deliver_finish {
        return None;
    }
    g.handle_input(now, &finish[0], &mut pair.rng).unwrap();
    Some(g.into_established().unwrap())
}

/// Writes a gateway message whose last fragment may fail the handshake.
fn fw_write(
    fw: &mut Firmware<IdentityKey>,
    board: &mut Board,
    msg: &[u8],
    now: vouch_proto::Timestamp,
) -> Result<(), firmware_shape::Failure> {
    let mut f = Fragmenter::new(msg, MTU).unwrap();
    let mut buf = [0u8; MAX_FRAGMENT];
    let mut last = Ok(());
    while let Some(n) = f.next_into(&mut buf) {
        last = fw.on_write(now, &buf[..n], board);
    }
    last
}

/// The tickets in the board's flash.
fn flash_tickets(board: &Board) -> TicketWallet {
    postcard::from_bytes(board.ticket_flash.as_deref().unwrap_or(&[0, 0])).unwrap()
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
    let mut fw = Firmware::new(
        device_key(),
        pair.peripheral_id,
        pair.anchors.clone(),
        TicketWallet::new(),
    );
    let mut board = Board::default();
    let mut rng = rng(51);

    // Full handshake: the Hello (108 bytes) goes out as 6 fragments at MTU 23.
    fw.on_subscribed(now, MTU, &mut rng, &mut board).unwrap();
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
    // The gateway's record confirmed the ticket.
    let tickets = flash_tickets(&board);
    assert!(tickets.ticket(TicketSlot::Confirmed).is_some());
    // No anchor update yet: the anchors in flash are the provisioned ones.
    assert!(board.anchors_flash.is_none());
    let mut fw = Firmware::new(
        device_key(),
        pair.peripheral_id,
        pair.anchors.clone(),
        tickets,
    );
    fw.on_subscribed(now, MTU, &mut rng, &mut board).unwrap();
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
    let tickets = flash_tickets(&board);
    assert_eq!(
        tickets.ticket(TicketSlot::Confirmed).unwrap().anchor,
        KeyId(1)
    );
    let mut fw = Firmware::new(
        device_key(),
        pair.peripheral_id,
        board.anchors_flash.clone().unwrap(),
        tickets,
    );
    fw.on_subscribed(now, MTU, &mut rng, &mut board).unwrap();
    let first = take_messages(&mut board);
    assert_eq!(Hello::peek(&first[0]).unwrap().anchor, KeyId(2));
}

/// A device with a confirmed ticket from its gateway, and the gateway's
/// side of that ticket.
fn device_with_a_confirmed_ticket(
    seed: u64,
) -> (Pair, Firmware<IdentityKey>, Board, GatewayTicket) {
    let mut pair = Pair::new(seed);
    pair.peripheral_key = device_key();
    pair.peripheral_id = PeripheralId::derive(&device_key().public_key());
    let now = pair.now;
    let mut fw = Firmware::new(
        device_key(),
        pair.peripheral_id,
        pair.anchors.clone(),
        TicketWallet::new(),
    );
    let mut board = Board::default();
    fw.on_subscribed(now, MTU, &mut rng(seed + 1), &mut board)
        .unwrap();
    let mut g = gateway_side(&mut pair, &mut fw, &mut board, None);
    let mut rec = [0u8; MAX_MESSAGE];
    let n = g.session.seal_data(now, b"hello", &mut rec).unwrap();
    write_to(&mut fw, &mut board, &rec[..n], now);
    assert!(flash_tickets(&board)
        .ticket(TicketSlot::Confirmed)
        .is_some());
    fw.close(now, CloseReason::SHUTDOWN, &mut board);
    take_messages(&mut board);
    (pair, fw, board, g.ticket)
}

#[test]
fn a_rogue_central_answering_resumptions_costs_the_device_no_ticket() {
    // The backend is down (only resumption works); a rogue central that
    // does not hold the ticket answers the device's ResumeHello every way
    // it can: garbage, an unexpected message, an unauthenticated
    // ResumptionRejected, and a ResumeResponse with a forged confirmation.
    let (mut pair, mut fw, mut board, g_ticket) = device_with_a_confirmed_ticket(60);
    let now = pair.now;
    let before = board.ticket_flash.clone();
    let mut forged = vec![1, 4];
    forged.extend_from_slice(&[9u8; 32]);
    forged.extend_from_slice(&[7u8; 16]);
    let answers: [Vec<u8>; 4] = [
        vec![0xde, 0xad, 0xbe, 0xef],
        take_hello_like(&pair),
        vec![1, 6, AlertCode::ResumptionRejected as u8],
        forged,
    ];
    for (i, answer) in answers.iter().enumerate() {
        fw.on_subscribed(now, MTU, &mut rng(70 + i as u64), &mut board)
            .unwrap();
        take_messages(&mut board);
        // Whatever the firmware makes of it, the ticket stays.
        let _ = fw_write(&mut fw, &mut board, answer, now);
        // (The alert the device may send back goes to the rogue.)
        take_messages(&mut board);
        assert!(!fw.is_established(), "answer {i} established a session");
        assert_eq!(board.ticket_flash, before, "answer {i} touched the tickets");
    }
    // The device then reaches its genuine gateway, still with no backend:
    // within its next attempts (the other ticket, or a full handshake that
    // the gateway cannot get vouched, then the ticket again) it resumes.
    pair.backend = BackendKeys::generate(KeyId(9), &mut rng(61));
    let mut resumed = None;
    for attempt in 0..3 {
        fw.on_subscribed(now, MTU, &mut rng(80 + attempt), &mut board)
            .unwrap();
        let mut peek = Board {
            air: board.air.clone(),
            ..Board::default()
        };
        if take_messages(&mut peek)[0][1] == 0 {
            // A Hello: the gateway's backend is unreachable; it gives up.
            take_messages(&mut board);
            let alert = [1, 6, AlertCode::HandshakeFailed as u8];
            let _ = fw_write(&mut fw, &mut board, &alert, now);
            take_messages(&mut board);
            continue;
        }
        resumed = gateway_holding(&mut pair, &mut fw, &mut board, &[&g_ticket], true);
        break;
    }
    let resumed = resumed.expect("the device resumed with its genuine gateway");
    assert_eq!(resumed.consumed_ticket, Some(g_ticket.id));
    assert!(fw.is_established());
}

/// A Hello-type message (type 0) of a plausible length: a reflected first
/// message is unexpected in answer to a ResumeHello.
fn take_hello_like(pair: &Pair) -> Vec<u8> {
    let mut p = pair_peripheral_hello(pair);
    p.truncate(108);
    p
}

fn pair_peripheral_hello(pair: &Pair) -> Vec<u8> {
    let mut hs = vouch_proto::handshake::peripheral::PeripheralHandshake::start(
        &vouch_proto::handshake::peripheral::PeripheralConfig::default(),
        pair.peripheral_id,
        &device_key(),
        &pair.anchors,
        pair.now,
        &mut rng(99),
    )
    .unwrap();
    let mut buf = [0u8; 256];
    let n = hs.poll_transmit(&mut buf).unwrap();
    buf[..n].to_vec()
}

#[test]
fn a_lost_finish_costs_the_device_no_resumption() {
    let (mut pair, mut fw, mut board, t1) = device_with_a_confirmed_ticket(62);
    let now = pair.now;
    // A resumption whose Finish never reaches the gateway: the gateway
    // still holds T1, the device holds T1 and, unconfirmed, T2.
    fw.on_subscribed(now, MTU, &mut rng(63), &mut board)
        .unwrap();
    assert!(gateway_holding(&mut pair, &mut fw, &mut board, &[&t1], false).is_none());
    let tickets = flash_tickets(&board);
    assert!(tickets.ticket(TicketSlot::Unconfirmed).is_some());
    assert_eq!(
        tickets.ticket(TicketSlot::Confirmed).map(|t| t.id),
        Some(t1.id),
        "the ticket the gateway still holds is kept"
    );
    fw.close(now, CloseReason::SHUTDOWN, &mut board);
    take_messages(&mut board);
    // Next connection: T2 first, which the gateway never stored (rejected,
    // unauthenticated, nothing dropped), then T1, which resumes.
    fw.on_subscribed(now, MTU, &mut rng(64), &mut board)
        .unwrap();
    assert!(gateway_holding(&mut pair, &mut fw, &mut board, &[&t1], true).is_none());
    fw.on_subscribed(now, MTU, &mut rng(65), &mut board)
        .unwrap();
    let resumed = gateway_holding(&mut pair, &mut fw, &mut board, &[&t1], true)
        .expect("resumed with the previous ticket");
    assert_eq!(resumed.consumed_ticket, Some(t1.id));
}
