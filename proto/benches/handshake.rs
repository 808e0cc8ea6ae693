//! CPU cost of each role per full handshake and per resumption (DESIGN.md §6),
//! with the primitives beside them for scale. Run: `cargo bench -p vouch-proto`.
//!
//! Every iteration replays the same deterministic handshake: fixed ephemeral
//! secrets make the other side's messages valid again each time, so each
//! benchmark measures exactly one role's work.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use vouch_proto::handshake::backend::{open_hello, VouchGrant};
use vouch_proto::handshake::gateway::{GatewayEvent, GatewayHandshake, GatewayTicket};
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake, PeripheralTicket};
use vouch_proto::keys::IdentityKey;
use vouch_proto::testing::{FixedRng, Pair};
use vouch_proto::wire::backend::{VouchAnswer, VouchRequest, Vouched};

const E_P: [u8; 32] = [0x11; 32];
const E_G: [u8; 32] = [0x22; 32];
const E_P2: [u8; 32] = [0x33; 32];
const E_G2: [u8; 32] = [0x44; 32];

struct Recorded {
    pair: Pair,
    hello: Vec<u8>,
    request: VouchRequest,
    answer: VouchAnswer,
    response: Vec<u8>,
    finish: Vec<u8>,
    g_ticket: GatewayTicket,
    p_ticket: Vec<u8>,
    resume_hello: Vec<u8>,
    resume_response: Vec<u8>,
}

fn record() -> Recorded {
    let mut pair = Pair::new(99);
    let now = pair.now;
    let mut p = PeripheralHandshake::start(
        &PeripheralConfig::default(),
        pair.peripheral_id,
        &pair.peripheral_key,
        &pair.anchors,
        now,
        &mut FixedRng::new(&E_P),
    )
    .unwrap();
    let mut buf = [0u8; 256];
    let n = p.poll_transmit(&mut buf).unwrap();
    let hello = buf[..n].to_vec();
    let mut g = GatewayHandshake::new(pair.gateway_config(), now);
    g.handle_input(now, &hello, &mut FixedRng::new(&E_G))
        .unwrap();
    let Some(GatewayEvent::NeedVouch(request)) = g.poll_event() else {
        panic!()
    };
    let answer = pair.backend_vouch(&request);
    g.handle_vouch(now, answer.clone()).unwrap();
    let response = g.poll_transmit().unwrap();
    p.handle_input(now, &response).unwrap();
    let n = p.poll_transmit(&mut buf).unwrap();
    let finish = buf[..n].to_vec();
    g.handle_input(now, &finish, &mut FixedRng::new(&[]))
        .unwrap();
    let p = p.into_established().unwrap();
    let g = g.into_established().unwrap();
    let p_ticket = postcard::to_allocvec(&p.ticket).unwrap();

    let mut rp = PeripheralHandshake::resume(
        &PeripheralConfig::default(),
        &p.ticket,
        &pair.anchors,
        now,
        &mut FixedRng::new(&E_P2),
    )
    .unwrap();
    let n = rp.poll_transmit(&mut buf).unwrap();
    let resume_hello = buf[..n].to_vec();
    let mut rg = GatewayHandshake::new(pair.gateway_config(), now);
    rg.handle_input(now, &resume_hello, &mut FixedRng::new(&[]))
        .unwrap();
    rg.handle_ticket(now, Some(&g.ticket), &mut FixedRng::new(&E_G2))
        .unwrap();
    let resume_response = rg.poll_transmit().unwrap();
    pair.rng = vouch_proto::testing::rng(1);
    Recorded {
        pair,
        hello,
        request,
        answer,
        response,
        finish,
        g_ticket: g.ticket,
        p_ticket,
        resume_hello,
        resume_response,
    }
}

fn roles(c: &mut Criterion) {
    let r = record();
    let now = r.pair.now;
    let mut group = c.benchmark_group("full_handshake");
    group.bench_function("peripheral", |b| {
        b.iter(|| {
            let mut p = PeripheralHandshake::start(
                &PeripheralConfig::default(),
                r.pair.peripheral_id,
                &r.pair.peripheral_key,
                &r.pair.anchors,
                now,
                &mut FixedRng::new(&E_P),
            )
            .unwrap();
            let mut buf = [0u8; 256];
            p.poll_transmit(&mut buf).unwrap();
            p.handle_input(now, &r.response).unwrap();
            p.poll_transmit(&mut buf).unwrap();
            p.into_established().unwrap()
        })
    });
    group.bench_function("gateway", |b| {
        b.iter_batched(
            || r.answer.clone(),
            |answer| {
                let mut g = GatewayHandshake::new(r.pair.gateway_config(), now);
                g.handle_input(now, &r.hello, &mut FixedRng::new(&E_G))
                    .unwrap();
                g.poll_event().unwrap();
                g.handle_vouch(now, answer).unwrap();
                g.poll_transmit().unwrap();
                g.handle_input(now, &r.finish, &mut FixedRng::new(&[]))
                    .unwrap();
                g.into_established().unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("backend", |b| {
        let registered = r.pair.peripheral_key.public_key();
        b.iter(|| {
            let verified = open_hello(&r.request.hello, &r.pair.backend)
                .unwrap()
                .verify(&registered)
                .unwrap();
            let grant = VouchGrant {
                gateway_key: r.pair.gateway_key.public_key(),
                gateway_ephemeral: r.request.gateway_ephemeral,
                scope: r.pair.scope,
                lifetimes: r.pair.lifetimes,
            };
            Vouched {
                vouch: verified.vouch(&r.pair.backend, &grant),
                peripheral: r.pair.peripheral_info(),
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("resumption");
    group.bench_function("peripheral", |b| {
        b.iter_batched(
            || postcard::from_bytes::<PeripheralTicket>(&r.p_ticket).unwrap(),
            |ticket| {
                let mut p = PeripheralHandshake::resume(
                    &PeripheralConfig::default(),
                    &ticket,
                    &r.pair.anchors,
                    now,
                    &mut FixedRng::new(&E_P2),
                )
                .unwrap();
                let mut buf = [0u8; 256];
                p.poll_transmit(&mut buf).unwrap();
                p.handle_input(now, &r.resume_response).unwrap();
                p.poll_transmit(&mut buf).unwrap();
                p.into_established().unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("gateway", |b| {
        b.iter(|| {
            let mut g = GatewayHandshake::new(r.pair.gateway_config(), now);
            g.handle_input(now, &r.resume_hello, &mut FixedRng::new(&[]))
                .unwrap();
            g.handle_ticket(now, Some(&r.g_ticket), &mut FixedRng::new(&E_G2))
                .unwrap();
            g.poll_transmit().unwrap()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("primitives");
    let key = IdentityKey::from_seed(&[7; 32]);
    let msg = [0u8; 100];
    let sig = key.sign(&msg);
    let pk = key.public_key();
    group.bench_function("ed25519_sign", |b| b.iter(|| key.sign(&msg)));
    group.bench_function("ed25519_verify_strict", |b| {
        b.iter(|| assert!(pk.verify_strict(&msg, &sig)))
    });
    group.bench_function("x25519_keygen_and_dh", |b| {
        let peer = r.pair.backend.anchor().sealing;
        b.iter(|| {
            let s = x25519_dalek::ReusableSecret::random_from_rng(&mut FixedRng::new(&E_P));
            let _public = x25519_dalek::PublicKey::from(&s);
            s.diffie_hellman(&x25519_dalek::PublicKey::from(peer.0))
        })
    });
    group.finish();
}

criterion_group!(benches, roles);
criterion_main!(benches);
