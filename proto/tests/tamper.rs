//! Every tampered handshake message is rejected, and the machine that
//! rejected it stays failed (SPEC.md §11.9).
//!
//! For each message of the full handshake and of the resumption: every byte
//! flipped (xor 0xff and xor 0x01), every truncation, and one extra byte.

use vouch_proto::handshake::gateway::{GatewayEvent, GatewayHandshake};
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake};
use vouch_proto::testing::Pair;
use vouch_proto::wire::backend::VouchAnswer;
use vouch_proto::Error;

/// All the ways we corrupt a message.
fn corruptions(msg: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..msg.len() {
        for mask in [0xff, 0x01] {
            let mut m = msg.to_vec();
            m[i] ^= mask;
            out.push(m);
        }
    }
    for len in 0..msg.len() {
        out.push(msg[..len].to_vec());
    }
    let mut longer = msg.to_vec();
    longer.push(0);
    out.push(longer);
    out
}

/// Feeds a (possibly corrupted) hello to a fresh gateway and the reference
/// backend; returns the gateway's error.
fn gateway_outcome(pair: &mut Pair, hello: &[u8]) -> Result<(), Error> {
    let mut g = GatewayHandshake::new(pair.gateway_config(), pair.now);
    let r = (|| {
        g.handle_input(pair.now, hello, &mut pair.rng)?;
        let Some(GatewayEvent::NeedVouch(req)) = g.poll_event() else {
            panic!("gateway asked for nothing");
        };
        let answer = pair.backend_vouch(&req);
        g.handle_vouch(pair.now, answer)
    })();
    if let Err(e) = &r {
        // Sticky: the same error again, with no work.
        assert_eq!(
            g.handle_input(pair.now, hello, &mut pair.rng).as_ref(),
            Err(e)
        );
        assert!(!g.is_established());
    }
    r
}

#[test]
fn every_corrupted_hello_is_refused() {
    let mut pair = Pair::new(20);
    let mut p = pair.start_peripheral().unwrap();
    let mut buf = [0u8; 256];
    let n = p.poll_transmit(&mut buf).unwrap();
    let hello = buf[..n].to_vec();
    assert!(
        gateway_outcome(&mut pair, &hello).is_ok(),
        "the genuine hello is vouched"
    );
    let mut refused = 0;
    for bad in corruptions(&hello) {
        let r = gateway_outcome(&mut pair, &bad);
        assert!(r.is_err(), "corrupted hello accepted: {bad:02x?}");
        refused += 1;
    }
    assert_eq!(refused, 3 * hello.len() + 1);
}

#[test]
fn every_corrupted_response_fails_the_peripheral() {
    let mut pair = Pair::new(21);
    let p = pair.start_peripheral().unwrap();
    let g = GatewayHandshake::new(pair.gateway_config(), pair.now);
    pair.drive(p, g).unwrap();
    let genuine = pair.transcript.clone();
    for bad in corruptions(&genuine.second) {
        // Re-create the peripheral in exactly the same state: same RNG seed.
        let mut replay = Pair::new(21);
        let mut p = replay.start_peripheral().unwrap();
        let mut buf = [0u8; 256];
        let n = p.poll_transmit(&mut buf).unwrap();
        assert_eq!(&buf[..n], &genuine.first[..], "deterministic hello");
        let err = p.handle_input(replay.now, &bad).unwrap_err();
        assert!(!p.is_established());
        assert_eq!(
            p.handle_input(replay.now, &genuine.second).unwrap_err(),
            err,
            "sticky"
        );
        assert!(p.into_established().is_err());
    }
}

#[test]
fn every_corrupted_finish_fails_the_gateway() {
    let genuine = {
        let mut pair = Pair::new(22);
        pair.full_handshake().unwrap();
        pair.transcript.clone()
    };
    for bad in corruptions(&genuine.finish) {
        let mut pair = Pair::new(22);
        let mut p = pair.start_peripheral().unwrap();
        let mut g = GatewayHandshake::new(pair.gateway_config(), pair.now);
        let mut buf = [0u8; 256];
        let n = p.poll_transmit(&mut buf).unwrap();
        g.handle_input(pair.now, &buf[..n], &mut pair.rng).unwrap();
        let Some(GatewayEvent::NeedVouch(req)) = g.poll_event() else {
            panic!()
        };
        let answer = pair.backend_vouch(&req);
        assert!(matches!(answer, VouchAnswer::Vouched(_)));
        g.handle_vouch(pair.now, answer).unwrap();
        let resp = g.poll_transmit().unwrap();
        assert_eq!(resp, genuine.second);
        let err = g.handle_input(pair.now, &bad, &mut pair.rng).unwrap_err();
        assert_eq!(
            g.handle_input(pair.now, &genuine.finish, &mut pair.rng)
                .unwrap_err(),
            err,
            "sticky"
        );
        assert!(!g.is_established());
    }
}

#[test]
fn every_corrupted_resumption_message_is_refused() {
    let mut base = Pair::new(23);
    let (p, g) = base.full_handshake().unwrap();
    let ticket_bytes = postcard::to_allocvec(&p.ticket).unwrap();
    let g_ticket = g.ticket;
    // The same seed gives the same peripheral state (ephemeral) every time.
    let fresh = |base: &mut Pair, seed: u64| {
        base.rng = vouch_proto::testing::rng(seed);
        let t: vouch_proto::handshake::peripheral::PeripheralTicket =
            postcard::from_bytes(&ticket_bytes).unwrap();
        PeripheralHandshake::resume(
            &PeripheralConfig::default(),
            &t,
            &base.anchors,
            base.now,
            &mut base.rng,
        )
        .unwrap()
    };
    // ResumeHello corrupted → the gateway refuses.
    let mut p = fresh(&mut base, 1001);
    let mut buf = [0u8; 256];
    let n = p.poll_transmit(&mut buf).unwrap();
    let resume_hello = buf[..n].to_vec();
    for bad in corruptions(&resume_hello) {
        let mut g = GatewayHandshake::new(base.gateway_config(), base.now);
        let r = (|| {
            g.handle_input(base.now, &bad, &mut base.rng)?;
            match g.poll_event() {
                Some(GatewayEvent::NeedTicket(id)) => {
                    let t = (id == g_ticket.id).then_some(&g_ticket);
                    g.handle_ticket(base.now, t, &mut base.rng)
                }
                other => panic!("unexpected event {other:?}"),
            }
        })();
        assert!(r.is_err(), "corrupted resume hello accepted: {bad:02x?}");
        assert!(!g.is_established());
    }
    // ResumeResponse corrupted → the peripheral refuses.
    let mut g = GatewayHandshake::new(base.gateway_config(), base.now);
    g.handle_input(base.now, &resume_hello, &mut base.rng)
        .unwrap();
    g.poll_event();
    g.handle_ticket(base.now, Some(&g_ticket), &mut base.rng)
        .unwrap();
    let rr = g.poll_transmit().unwrap();
    for bad in corruptions(&rr) {
        let mut p = fresh(&mut base, 1001);
        let n = p.poll_transmit(&mut buf).unwrap();
        assert_eq!(&buf[..n], &resume_hello[..]);
        let err = p.handle_input(base.now, &bad).unwrap_err();
        assert_eq!(p.handle_input(base.now, &rr).unwrap_err(), err, "sticky");
    }
    // And the genuine one works from that same state.
    let mut p = fresh(&mut base, 1001);
    p.poll_transmit(&mut buf).unwrap();
    p.handle_input(base.now, &rr).unwrap();
    assert!(p.is_established());
}
