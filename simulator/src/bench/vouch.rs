//! Vouch's three roles, each timed on its own calls, through real full
//! handshakes (fresh randomness every time) and real resumptions chained on
//! each other's tickets.

use vouch_proto::handshake::gateway::{GatewayEvent, GatewayHandshake, GatewayTicket};
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake, PeripheralTicket};
use vouch_proto::testing::Pair;
use vouch_proto::wire::MAX_HANDSHAKE_MESSAGE;

use super::{
    BenchError, Bytes, Flight, Provides, RoleCpu, Samples, Stopwatch, VouchHandshake, VouchReport,
};

const P: usize = 0;
const G: usize = 1;
const B: usize = 2;

/// What Vouch provides (DESIGN.md §1, §3).
pub(super) const PROVIDES: Provides = Provides {
    mutual_auth: "yes: the peripheral by its Ed25519 signature, checked against the registry; \
                  the gateway by the backend's vouch binding its key to this handshake",
    third_party: "yes: the backend checks status and policy and vouches at every full \
                  handshake (revocation takes effect at the next one); resumption within \
                  the lifetime the vouch set, without the backend",
    identity_hiding: "peripheral: from everyone but the backend (sealed to the backend's key), \
                      active attackers and unauthorized gateways included; gateway: from \
                      passive listeners",
};

/// The messages of one handshake and the parties' tickets after it.
struct Outcome {
    times: [Stopwatch; 3],
    sizes: [usize; 3],
    tickets: (PeripheralTicket, GatewayTicket),
}

/// Measures `iterations` full handshakes and as many resumptions.
pub(super) fn measure(iterations: usize, warmup: usize) -> Result<VouchReport, BenchError> {
    let mut pair = Pair::new(8);
    // The backend's work on the provider it runs on by default (issue 21).
    pair.backend
        .use_provider(vouch_backend::config::Crypto::default().provider.provider())
        .map_err(|_| BenchError::Invariant("the backend's crypto provider refused its keys"))?;
    let mut full = Samples::with_capacity(iterations);
    let mut last = None;
    for i in 0..warmup + iterations {
        let out = full_once(&mut pair)?;
        if i >= warmup {
            full.push(out.times);
        }
        last = Some(out);
    }
    let last = last.ok_or(BenchError::Invariant("no full handshake ran"))?;
    let full_sizes = last.sizes;
    let (mut p_ticket, mut g_ticket) = last.tickets;

    let mut resumed = Samples::with_capacity(iterations);
    let mut resume_sizes = [0; 3];
    for i in 0..warmup + iterations {
        let out = resume_once(&mut pair, p_ticket, &g_ticket)?;
        if i >= warmup {
            resumed.push(out.times);
        }
        resume_sizes = out.sizes;
        (p_ticket, g_ticket) = out.tickets;
    }

    Ok(VouchReport {
        full: handshake(&full, full_sizes, ["Hello", "Response", "Finish"], 1),
        resumption: handshake(
            &resumed,
            resume_sizes,
            ["ResumeHello", "ResumeResponse", "Finish"],
            0,
        ),
        provides: PROVIDES,
    })
}

fn handshake(
    samples: &Samples<3>,
    sizes: [usize; 3],
    names: [&str; 3],
    backend_round_trips: u32,
) -> VouchHandshake {
    let from = ["initiator", "responder", "initiator"];
    let bytes = Bytes::new(
        (0..3)
            .map(|i| Flight {
                name: names[i].to_owned(),
                from: from[i],
                bytes: sizes[i],
                post_handshake: false,
            })
            .collect(),
    );
    VouchHandshake {
        cpu_us: RoleCpu {
            peripheral: samples.median_of(P),
            gateway: samples.median_of(G),
            backend: samples.median_of(B),
            total: samples.median_total(),
        },
        round_trips: bytes.round_trips(),
        bytes_on_air: bytes,
        backend_round_trips,
    }
}

/// One full handshake: Hello, the vouch request answered by the reference
/// backend logic (open, verify, vouch), Response, Finish.
fn full_once(pair: &mut Pair) -> Result<Outcome, BenchError> {
    let now = pair.now;
    let config = PeripheralConfig::default();
    let gateway_config = pair.gateway_config();
    let mut sw = [Stopwatch::default(); 3];
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];

    let mut p = sw[P].time(|| {
        PeripheralHandshake::start(
            &config,
            pair.peripheral_id,
            &pair.peripheral_key,
            &pair.anchors,
            now,
            &mut pair.rng,
        )
    })?;
    let n = sw[P]
        .time(|| p.poll_transmit(&mut buf))
        .ok_or(BenchError::Invariant("no Hello"))?;
    let hello = buf[..n].to_vec();

    let mut g = sw[G].time(|| GatewayHandshake::new(gateway_config, now));
    sw[G].time(|| g.handle_input(now, &hello, &mut pair.rng))?;
    let Some(GatewayEvent::NeedVouch(request)) = sw[G].time(|| g.poll_event()) else {
        return Err(BenchError::Invariant("the gateway did not ask for a vouch"));
    };
    let answer = sw[B].time(|| pair.backend_vouch(&request));
    sw[G].time(|| g.handle_vouch(now, answer))?;
    let response = sw[G]
        .time(|| g.poll_transmit())
        .ok_or(BenchError::Invariant("no Response"))?;

    sw[P].time(|| p.handle_input(now, &response))?;
    let n = sw[P]
        .time(|| p.poll_transmit(&mut buf))
        .ok_or(BenchError::Invariant("no Finish"))?;
    let finish = buf[..n].to_vec();
    let p = sw[P].time(|| p.into_established())?;

    sw[G].time(|| g.handle_input(now, &finish, &mut pair.rng))?;
    let g = sw[G].time(|| g.into_established())?;
    if p.resumed {
        return Err(BenchError::Invariant("a full handshake resumed"));
    }
    Ok(Outcome {
        times: sw,
        sizes: [hello.len(), response.len(), finish.len()],
        tickets: (p.ticket, g.ticket),
    })
}

/// One resumption with the tickets of the previous handshake; no backend.
fn resume_once(
    pair: &mut Pair,
    p_ticket: PeripheralTicket,
    g_ticket: &GatewayTicket,
) -> Result<Outcome, BenchError> {
    let now = pair.now;
    let config = PeripheralConfig::default();
    let gateway_config = pair.gateway_config();
    let mut sw = [Stopwatch::default(); 3];
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];

    let mut p = sw[P].time(|| {
        PeripheralHandshake::resume(&config, &p_ticket, &pair.anchors, now, &mut pair.rng)
    })?;
    let n = sw[P]
        .time(|| p.poll_transmit(&mut buf))
        .ok_or(BenchError::Invariant("no ResumeHello"))?;
    let hello = buf[..n].to_vec();

    let mut g = sw[G].time(|| GatewayHandshake::new(gateway_config, now));
    sw[G].time(|| g.handle_input(now, &hello, &mut pair.rng))?;
    let Some(GatewayEvent::NeedTicket(_)) = sw[G].time(|| g.poll_event()) else {
        return Err(BenchError::Invariant(
            "the gateway did not ask for a ticket",
        ));
    };
    sw[G].time(|| g.handle_ticket(now, Some(g_ticket), &mut pair.rng))?;
    let response = sw[G]
        .time(|| g.poll_transmit())
        .ok_or(BenchError::Invariant("no ResumeResponse"))?;

    sw[P].time(|| p.handle_input(now, &response))?;
    let n = sw[P]
        .time(|| p.poll_transmit(&mut buf))
        .ok_or(BenchError::Invariant("no Finish"))?;
    let finish = buf[..n].to_vec();
    let p = sw[P].time(|| p.into_established())?;

    sw[G].time(|| g.handle_input(now, &finish, &mut pair.rng))?;
    let g = sw[G].time(|| g.into_established())?;
    if !p.resumed {
        return Err(BenchError::Invariant("a resumption did not resume"));
    }
    Ok(Outcome {
        times: sw,
        sizes: [hello.len(), response.len(), finish.len()],
        tickets: (p.ticket, g.ticket),
    })
}
