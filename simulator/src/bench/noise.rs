//! snow Noise handshakes in memory, with its default resolver and the
//! suite its documentation leads with: 25519, ChaChaPoly, BLAKE2s. Empty
//! payloads; both sides go into transport mode at the end.

use snow::params::NoiseParams;
use snow::{Builder, HandshakeState, Keypair};

use super::{
    BenchError, Bytes, Flight, PeerCpu, PeerHandshake, PeerReport, Provides, Samples, Stopwatch,
};

const I: usize = 0;
const R: usize = 1;

/// The handshake pattern.
#[derive(Debug, Clone, Copy)]
pub(super) enum Pattern {
    /// IK: the initiator knows the responder's static key in advance.
    Ik,
    /// XX: both static keys travel in the handshake.
    Xx,
}

impl Pattern {
    fn params(self) -> &'static str {
        match self {
            Self::Ik => "Noise_IK_25519_ChaChaPoly_BLAKE2s",
            Self::Xx => "Noise_XX_25519_ChaChaPoly_BLAKE2s",
        }
    }
}

/// Measures `iterations` handshakes of `pattern`.
pub(super) fn measure(
    pattern: Pattern,
    iterations: usize,
    warmup: usize,
) -> Result<PeerReport, BenchError> {
    let params: NoiseParams = pattern.params().parse()?;
    let initiator_keys = Builder::new(params.clone()).generate_keypair()?;
    let responder_keys = Builder::new(params.clone()).generate_keypair()?;
    let mut samples = Samples::with_capacity(iterations);
    let mut bytes = None;
    for i in 0..warmup + iterations {
        let (times, b) = handshake(pattern, &params, &initiator_keys, &responder_keys)?;
        if i >= warmup {
            samples.push(times);
        }
        bytes = Some(b);
    }
    let bytes = bytes.ok_or(BenchError::Invariant("no Noise handshake ran"))?;
    let (name, what, provides) = match pattern {
        Pattern::Ik => (
            "snow Noise IK",
            "snow 0.10, Noise_IK_25519_ChaChaPoly_BLAKE2s, default resolver, empty payloads",
            Provides {
                mutual_auth: "yes, raw static X25519 keys: the initiator must know the \
                              responder's key in advance; each side decides itself whether \
                              it trusts the other's key (no certificates)",
                third_party: "no",
                identity_hiding: "initiator: encrypted to the responder's static key (from \
                                  passive listeners; no forward secrecy for it); responder: \
                                  its key is never sent",
            },
        ),
        Pattern::Xx => (
            "snow Noise XX",
            "snow 0.10, Noise_XX_25519_ChaChaPoly_BLAKE2s, default resolver, empty payloads",
            Provides {
                mutual_auth: "yes, raw static X25519 keys sent in the handshake; each side \
                              decides itself whether it trusts the other's key (no \
                              certificates)",
                third_party: "no",
                identity_hiding: "initiator: sent after the responder authenticated (hidden \
                                  from active attackers); responder: from passive listeners",
            },
        ),
    };
    Ok(PeerReport {
        name: name.to_owned(),
        what: what.to_owned(),
        full: PeerHandshake {
            cpu_us: PeerCpu {
                initiator: samples.median_of(I),
                responder: samples.median_of(R),
                total: samples.median_total(),
            },
            round_trips: bytes.round_trips(),
            bytes_on_air: bytes,
            tcp: None,
        },
        resumed: None,
        provides,
    })
}

fn handshake(
    pattern: Pattern,
    params: &NoiseParams,
    initiator_keys: &Keypair,
    responder_keys: &Keypair,
) -> Result<([Stopwatch; 2], Bytes), BenchError> {
    let mut sw = [Stopwatch::default(); 2];
    let initiator = sw[I].time(|| -> Result<HandshakeState, snow::Error> {
        let b = Builder::new(params.clone()).local_private_key(&initiator_keys.private)?;
        let b = match pattern {
            Pattern::Ik => b.remote_public_key(&responder_keys.public)?,
            Pattern::Xx => b,
        };
        b.build_initiator()
    })?;
    let responder = sw[R].time(|| {
        Builder::new(params.clone())
            .local_private_key(&responder_keys.private)?
            .build_responder()
    })?;
    let mut states = [initiator, responder];
    let mut flights = Vec::new();
    let mut msg = [0u8; 256];
    let mut payload = [0u8; 256];
    let mut from = I;
    while !(states[I].is_handshake_finished() && states[R].is_handshake_finished()) {
        if flights.len() > 4 {
            return Err(BenchError::Invariant("a Noise handshake did not complete"));
        }
        let to = 1 - from;
        let n = sw[from].time(|| states[from].write_message(&[], &mut msg))?;
        sw[to].time(|| states[to].read_message(&msg[..n], &mut payload))?;
        flights.push(Flight {
            name: format!("message {}", flights.len() + 1),
            from: if from == I { "initiator" } else { "responder" },
            bytes: n,
            post_handshake: false,
        });
        from = to;
    }
    let [initiator, responder] = states;
    let initiator = sw[I].time(|| initiator.into_transport_mode())?;
    let responder = sw[R].time(|| responder.into_transport_mode())?;
    // The application's check of the peer's static key (a lookup) is not
    // part of snow; make sure the keys went where they should.
    if responder.get_remote_static() != Some(&initiator_keys.public[..]) {
        return Err(BenchError::Invariant(
            "Noise: the responder has the wrong key",
        ));
    }
    drop(initiator);
    Ok((sw, Bytes::new(flights)))
}
