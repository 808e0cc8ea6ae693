//! A real Vouch handshake, in memory: a backend, a gateway and a peripheral
//! with fresh random keys, a full handshake, data both ways, a resumption
//! without the backend, and a rekey. Prints what went on the air.
//!
//! `cargo run --release -p vouch-proto --example handshake`

use std::time::Instant;

use vouch_proto::anchor::AnchorSet;
use vouch_proto::handshake::backend::{open_hello, BackendKeys, VouchGrant};
use vouch_proto::handshake::gateway::{GatewayConfig, GatewayEvent, GatewayHandshake};
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake};
use vouch_proto::keys::{IdentityKey, KeyId, PeripheralId};
use vouch_proto::session::Inbound;
use vouch_proto::wire::backend::{PeripheralInfo, VouchAnswer, Vouched};
use vouch_proto::wire::{Lifetimes, Scope, MAX_HANDSHAKE_MESSAGE};
use vouch_proto::Timestamp;

fn main() -> Result<(), vouch_proto::Error> {
    let mut rng = rand_chacha_seed();
    let start = Instant::now();
    let now = || Timestamp(start.elapsed().as_millis() as u64);

    // Provisioning: the backend's key pair; a device key made on the device and
    // enrolled; a gateway key enrolled; the device is flashed with the anchor.
    let backend = BackendKeys::generate(KeyId(1), &mut rng);
    // The backend's next key pair, made with the first and kept offline: the
    // device is flashed with a commitment to it (SPEC.md §2.3).
    let next_backend = BackendKeys::generate(KeyId(2), &mut rng);
    let device = IdentityKey::generate(&mut rng);
    let device_id = PeripheralId::derive(&device.public_key());
    let gateway = IdentityKey::generate(&mut rng);
    let anchors = AnchorSet::new(backend.anchor(), next_backend.anchor().digest(), 0);
    println!("backend key 1: {}", backend.anchor().signing);
    println!("peripheral {device_id}: {}", device.public_key());
    println!("gateway: {}", gateway.public_key());

    // 1. Peripheral → gateway: Hello.
    let mut p = PeripheralHandshake::start(
        &PeripheralConfig::default(),
        device_id,
        &device,
        &anchors,
        now(),
        &mut rng,
    )?;
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    let n = p
        .poll_transmit(&mut buf)
        .ok_or(vouch_proto::ApiMisuse::WrongState)?;
    let hello = buf[..n].to_vec();
    println!(
        "\nP → G  Hello     {:>3} bytes  {}",
        hello.len(),
        hex(&hello)
    );

    // 2. Gateway → backend: the vouch request; the backend checks and vouches.
    let mut g = GatewayHandshake::new(GatewayConfig::new(gateway.public_key()), now());
    g.handle_input(now(), &hello, &mut rng)?;
    let Some(GatewayEvent::NeedVouch(request)) = g.poll_event() else {
        return Err(vouch_proto::ApiMisuse::WrongState.into());
    };
    let opened = open_hello(&request.hello, &backend)?;
    println!("backend: hello claims {}", opened.claimed_peripheral());
    let verified = opened.verify(&device.public_key())?;
    let grant = VouchGrant {
        gateway_key: gateway.public_key(),
        gateway_ephemeral: request.gateway_ephemeral,
        scope: Scope::TELEMETRY.union(Scope::COMMAND),
        lifetimes: Lifetimes {
            session_s: 3600,
            resumption_s: 86_400,
        },
    };
    let info = PeripheralInfo {
        id: verified.peripheral(),
        public_key: device.public_key(),
        group: Some("greenhouse".into()),
        attributes: vec![("model".into(), "th-sensor".into())],
        scope: grant.scope,
    };
    let answer = VouchAnswer::Vouched(Vouched {
        vouch: verified.vouch(&backend, &grant),
        peripheral: info,
    });
    g.handle_vouch(now(), answer)?;

    // 3. Gateway → peripheral: Response; the peripheral checks the vouch.
    let response = g
        .poll_transmit()
        .ok_or(vouch_proto::ApiMisuse::WrongState)?;
    println!(
        "G → P  Response  {:>3} bytes  {}",
        response.len(),
        hex(&response)
    );
    p.handle_input(now(), &response)?;

    // 4. Peripheral → gateway: Finish.
    let n = p
        .poll_transmit(&mut buf)
        .ok_or(vouch_proto::ApiMisuse::WrongState)?;
    let finish = buf[..n].to_vec();
    println!(
        "P → G  Finish    {:>3} bytes  {}",
        finish.len(),
        hex(&finish)
    );
    g.handle_input(now(), &finish, &mut rng)?;
    println!(
        "on air: {} bytes in 3 messages",
        hello.len() + response.len() + finish.len()
    );

    let mut p = p.into_established()?;
    let mut g = g.into_established()?;
    println!(
        "\nperipheral: session {} with gateway {}",
        hex(&p.session.id()),
        p.gateway_key
    );
    println!(
        "gateway:    session {} with peripheral {} ({:?})",
        hex(&g.session.id()),
        g.peripheral.id,
        g.peripheral.group
    );

    // Data both ways.
    let mut rec = [0u8; 256];
    let mut out = [0u8; 256];
    let n = p.session.seal_data(now(), b"temperature=21.5C", &mut rec)?;
    if let Inbound::Data(d) = g.session.open(now(), &rec[..n], &mut out)? {
        println!(
            "gateway got  {:?} ({} bytes on air)",
            String::from_utf8_lossy(d),
            n
        );
    }
    let n = g.session.seal_data(now(), b"fan=on", &mut rec)?;
    if let Inbound::Data(d) = p.session.open(now(), &rec[..n], &mut out)? {
        println!(
            "peripheral got {:?} ({} bytes on air)",
            String::from_utf8_lossy(d),
            n
        );
    }
    // Rekey, then more data.
    p.session.rekey()?;
    let n = p.session.seal_data(now(), b"after rekey", &mut rec)?;
    g.session.open(now(), &rec[..n], &mut out)?;
    println!(
        "rekeyed: epochs peripheral {:?}, gateway {:?}",
        p.session.epochs(),
        g.session.epochs()
    );

    // Resumption, with the backend out of the picture.
    let mut rp = PeripheralHandshake::resume(
        &PeripheralConfig::default(),
        &p.ticket,
        &anchors,
        now(),
        &mut rng,
    )?;
    let mut rg = GatewayHandshake::new(GatewayConfig::new(gateway.public_key()), now());
    let n = rp
        .poll_transmit(&mut buf)
        .ok_or(vouch_proto::ApiMisuse::WrongState)?;
    let resume_hello = buf[..n].to_vec();
    rg.handle_input(now(), &resume_hello, &mut rng)?;
    rg.handle_ticket(now(), Some(&g.ticket), &mut rng)?;
    let rr = rg
        .poll_transmit()
        .ok_or(vouch_proto::ApiMisuse::WrongState)?;
    rp.handle_input(now(), &rr)?;
    let n = rp
        .poll_transmit(&mut buf)
        .ok_or(vouch_proto::ApiMisuse::WrongState)?;
    rg.handle_input(now(), &buf[..n], &mut rng)?;
    let rp = rp.into_established()?;
    println!(
        "\nresumed without the backend: {} + {} + {} bytes, session {}",
        resume_hello.len(),
        rr.len(),
        n,
        hex(&rp.session.id())
    );
    println!("done in {:?}", start.elapsed());
    Ok(())
}

fn rand_chacha_seed() -> rand_chacha::ChaCha20Rng {
    use rand_core::SeedableRng;
    let mut seed = [0u8; 32];
    // The OS RNG seeds the generator; the protocol itself never reads one.
    getrandom::fill(&mut seed).unwrap_or_else(|e| panic!("no OS randomness: {e}"));
    rand_chacha::ChaCha20Rng::from_seed(seed)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
