//! One peripheral full handshake or one resumption, with fixed keys and
//! fixed ephemeral secrets, for `simulator/bench/callgrind.sh`: callgrind
//! counts instructions only inside `vouch_peripheral_full` and
//! `vouch_peripheral_resume` (`--toggle-collect`), which wrap exactly the
//! peripheral's calls. Everything else (recording the gateway's and the
//! backend's answers first) is not counted.
//!
//! `cargo run --release -p vouch-simulator --example callgrind_peripheral -- full|resume`

use std::hint::black_box;

use vouch_proto::handshake::gateway::{GatewayEvent, GatewayHandshake};
use vouch_proto::handshake::peripheral::{
    PeripheralConfig, PeripheralEstablished, PeripheralHandshake, PeripheralTicket,
};
use vouch_proto::testing::{FixedRng, Pair};
use vouch_proto::wire::MAX_HANDSHAKE_MESSAGE;
use vouch_proto::{ApiMisuse, Error};

const E_P: [u8; 32] = [0x11; 32];
const E_G: [u8; 32] = [0x22; 32];
const E_P2: [u8; 32] = [0x33; 32];
const E_G2: [u8; 32] = [0x44; 32];

/// The other side's answers to a peripheral that uses `E_P` (full) and
/// `E_P2` (resumption): replaying the peripheral with the same secrets
/// produces the same messages, so the answers are valid again.
struct Recorded {
    pair: Pair,
    response: Vec<u8>,
    resume_response: Vec<u8>,
    ticket: Vec<u8>,
}

fn record() -> Result<Recorded, Error> {
    let pair = Pair::new(99);
    let now = pair.now;
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    let mut p = PeripheralHandshake::start(
        &PeripheralConfig::default(),
        pair.peripheral_id,
        &pair.peripheral_key,
        &pair.anchors,
        now,
        &mut FixedRng::new(&E_P),
    )?;
    let n = p.poll_transmit(&mut buf).ok_or(ApiMisuse::WrongState)?;
    let mut g = GatewayHandshake::new(pair.gateway_config(), now);
    g.handle_input(now, &buf[..n], &mut FixedRng::new(&E_G))?;
    let Some(GatewayEvent::NeedVouch(request)) = g.poll_event() else {
        return Err(ApiMisuse::WrongState.into());
    };
    g.handle_vouch(now, pair.backend_vouch(&request))?;
    let response = g.poll_transmit().ok_or(ApiMisuse::WrongState)?;
    p.handle_input(now, &response)?;
    let n = p.poll_transmit(&mut buf).ok_or(ApiMisuse::WrongState)?;
    g.handle_input(now, &buf[..n], &mut FixedRng::new(&[]))?;
    let p = p.into_established()?;
    let g = g.into_established()?;
    let ticket = postcard::to_allocvec(&p.ticket).map_err(|_| ApiMisuse::WrongState)?;

    let mut rp = PeripheralHandshake::resume(
        &PeripheralConfig::default(),
        &p.ticket,
        &pair.anchors,
        now,
        &mut FixedRng::new(&E_P2),
    )?;
    let n = rp.poll_transmit(&mut buf).ok_or(ApiMisuse::WrongState)?;
    let mut rg = GatewayHandshake::new(pair.gateway_config(), now);
    rg.handle_input(now, &buf[..n], &mut FixedRng::new(&[]))?;
    rg.handle_ticket(now, Some(&g.ticket), &mut FixedRng::new(&E_G2))?;
    let resume_response = rg.poll_transmit().ok_or(ApiMisuse::WrongState)?;
    Ok(Recorded {
        pair,
        response,
        resume_response,
        ticket,
    })
}

/// The peripheral's whole part of a full handshake: Hello, check the
/// Response (the vouch), Finish, session keys.
#[inline(never)]
fn vouch_peripheral_full(r: &Recorded) -> Result<PeripheralEstablished, Error> {
    let now = r.pair.now;
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    let mut p = PeripheralHandshake::start(
        &PeripheralConfig::default(),
        r.pair.peripheral_id,
        &r.pair.peripheral_key,
        &r.pair.anchors,
        now,
        &mut FixedRng::new(&E_P),
    )?;
    p.poll_transmit(&mut buf).ok_or(ApiMisuse::WrongState)?;
    p.handle_input(now, &r.response)?;
    p.poll_transmit(&mut buf).ok_or(ApiMisuse::WrongState)?;
    p.into_established()
}

/// The peripheral's whole part of a resumption.
#[inline(never)]
fn vouch_peripheral_resume(
    r: &Recorded,
    ticket: PeripheralTicket,
) -> Result<PeripheralEstablished, Error> {
    let now = r.pair.now;
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    let mut p = PeripheralHandshake::resume(
        &PeripheralConfig::default(),
        &ticket,
        &r.pair.anchors,
        now,
        &mut FixedRng::new(&E_P2),
    )?;
    p.poll_transmit(&mut buf).ok_or(ApiMisuse::WrongState)?;
    p.handle_input(now, &r.resume_response)?;
    p.poll_transmit(&mut buf).ok_or(ApiMisuse::WrongState)?;
    p.into_established()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let r = record()?;
    let established = match mode.as_str() {
        "full" => vouch_peripheral_full(black_box(&r))?,
        "resume" => {
            let ticket: PeripheralTicket = postcard::from_bytes(&r.ticket)?;
            vouch_peripheral_resume(black_box(&r), ticket)?
        }
        _ => return Err("usage: callgrind_peripheral full|resume".into()),
    };
    if established.resumed != (mode == "resume") {
        return Err("the handshake was not the kind asked for".into());
    }
    println!("{mode}: established, resumed = {}", established.resumed);
    Ok(())
}
