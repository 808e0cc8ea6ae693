//! Deterministic keys, RNGs and an in-memory harness that runs all three roles
//! (feature `test-utils`). For tests, vectors, benchmarks and the simulator;
//! never for production keys.

use alloc::vec::Vec;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::anchor::AnchorSet;
use crate::error::{Error, Refusal};
use crate::handshake::backend::{open_hello, BackendKeys, VouchGrant};
use crate::handshake::gateway::{
    GatewayConfig, GatewayEstablished, GatewayEvent, GatewayHandshake, GatewayTicket,
};
use crate::handshake::peripheral::{
    PeripheralConfig, PeripheralEstablished, PeripheralHandshake, PeripheralTicket,
};
use crate::keys::{IdentityKey, KeyId, PeripheralId};
use crate::wire::backend::{PeripheralInfo, VouchAnswer, VouchRequest, Vouched};
use crate::wire::{Lifetimes, Scope, MAX_HANDSHAKE_MESSAGE};
use crate::Timestamp;

/// A ChaCha20 RNG seeded from a number.
pub fn rng(seed: u64) -> ChaCha20Rng {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    ChaCha20Rng::from_seed(s)
}

/// The messages of one handshake as they went on the air.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transcript {
    /// Peripheral → gateway: Hello or ResumeHello.
    pub first: Vec<u8>,
    /// Gateway → peripheral: Response or ResumeResponse.
    pub second: Vec<u8>,
    /// Peripheral → gateway: Finish.
    pub finish: Vec<u8>,
}

impl Transcript {
    /// Bytes on the air for the whole handshake.
    pub fn total(&self) -> usize {
        self.first.len() + self.second.len() + self.finish.len()
    }
}

/// One peripheral, one gateway and a backend with deterministic keys, run in
/// memory with the reference backend logic of SPEC.md §5.3.
pub struct Pair {
    /// The current time (the same clock for all three; tests move it).
    pub now: Timestamp,
    /// The RNG every role draws from.
    pub rng: ChaCha20Rng,
    /// The backend's keys (key id 1).
    pub backend: BackendKeys,
    /// The backend's next key pair (key id 2), which [`Pair::anchors`]
    /// holds the commitment to.
    pub next_backend: BackendKeys,
    /// The peripheral's identity key.
    pub peripheral_key: IdentityKey,
    /// The peripheral's registry id.
    pub peripheral_id: PeripheralId,
    /// The gateway's identity key.
    pub gateway_key: IdentityKey,
    /// The peripheral's anchors.
    pub anchors: AnchorSet,
    /// The scope the backend grants.
    pub scope: Scope,
    /// The lifetimes the backend grants.
    pub lifetimes: Lifetimes,
    /// What went on the air in the last handshake.
    pub transcript: Transcript,
}

/// Mixed into a pair's seed for the backend's committed next key.
const NEXT_KEY_STREAM: u64 = 0x6e65_7874;

impl Pair {
    /// Keys derived from `seed`; scope telemetry + command; one-hour sessions and
    /// one-day resumption.
    pub fn new(seed: u64) -> Self {
        let mut rng = rng(seed);
        let backend = BackendKeys::generate(KeyId(1), &mut rng);
        let peripheral_key = IdentityKey::generate(&mut rng);
        let gateway_key = IdentityKey::generate(&mut rng);
        let peripheral_id = PeripheralId::derive(&peripheral_key.public_key());
        // The committed successor comes from a stream of its own, so adding
        // it did not change any other key of a seeded pair.
        let next_backend = BackendKeys::generate(KeyId(2), &mut self::rng(seed ^ NEXT_KEY_STREAM));
        let anchors = AnchorSet::new(backend.anchor(), next_backend.anchor().digest(), 0);
        Self {
            now: Timestamp(1_000),
            rng,
            backend,
            next_backend,
            peripheral_key,
            peripheral_id,
            gateway_key,
            anchors,
            scope: Scope::TELEMETRY.union(Scope::COMMAND),
            lifetimes: Lifetimes {
                session_s: 3600,
                resumption_s: 86_400,
            },
            transcript: Transcript::default(),
        }
    }

    /// The gateway machine's configuration.
    pub fn gateway_config(&self) -> GatewayConfig {
        GatewayConfig::new(self.gateway_key.public_key())
    }

    /// What the registry says about the peripheral.
    pub fn peripheral_info(&self) -> PeripheralInfo {
        PeripheralInfo {
            id: self.peripheral_id,
            public_key: self.peripheral_key.public_key(),
            group: None,
            attributes: Vec::new(),
            scope: self.scope,
        }
    }

    /// The reference backend: open, verify against the one registered
    /// peripheral, vouch for this pair's gateway.
    pub fn backend_vouch(&self, req: &VouchRequest) -> VouchAnswer {
        let answer = (|| {
            let opened = open_hello(&req.hello, &self.backend).ok()?;
            if opened.claimed_peripheral() != self.peripheral_id {
                return None;
            }
            let verified = opened.verify(&self.peripheral_key.public_key()).ok()?;
            let grant = VouchGrant {
                gateway_key: self.gateway_key.public_key(),
                gateway_ephemeral: req.gateway_ephemeral,
                scope: self.scope,
                lifetimes: self.lifetimes,
            };
            Some(Vouched {
                vouch: verified.vouch(&self.backend, &grant),
                peripheral: self.peripheral_info(),
            })
        })();
        answer.map_or(VouchAnswer::Refused(Refusal::Denied), VouchAnswer::Vouched)
    }

    /// Starts the peripheral machine (the Hello is queued).
    pub fn start_peripheral(&mut self) -> Result<PeripheralHandshake, Error> {
        PeripheralHandshake::start(
            &PeripheralConfig::default(),
            self.peripheral_id,
            &self.peripheral_key,
            &self.anchors,
            self.now,
            &mut self.rng,
        )
    }

    /// Runs a full handshake to completion.
    pub fn full_handshake(&mut self) -> Result<(PeripheralEstablished, GatewayEstablished), Error> {
        let p = self.start_peripheral()?;
        let g = GatewayHandshake::new(self.gateway_config(), self.now);
        self.drive(p, g)
    }

    /// Runs a resumption with the tickets of an earlier handshake.
    pub fn resume(
        &mut self,
        p_ticket: PeripheralTicket,
        g_ticket: &GatewayTicket,
    ) -> Result<(PeripheralEstablished, GatewayEstablished), Error> {
        let p = PeripheralHandshake::resume(
            &PeripheralConfig::default(),
            &p_ticket,
            &self.anchors,
            self.now,
            &mut self.rng,
        )?;
        let g = GatewayHandshake::new(self.gateway_config(), self.now);
        self.drive_with_ticket(p, g, Some(g_ticket))
    }

    /// Drives a started peripheral and a fresh gateway to completion.
    pub fn drive(
        &mut self,
        p: PeripheralHandshake,
        g: GatewayHandshake,
    ) -> Result<(PeripheralEstablished, GatewayEstablished), Error> {
        self.drive_with_ticket(p, g, None)
    }

    fn drive_with_ticket(
        &mut self,
        mut p: PeripheralHandshake,
        mut g: GatewayHandshake,
        ticket: Option<&GatewayTicket>,
    ) -> Result<(PeripheralEstablished, GatewayEstablished), Error> {
        let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
        let now = self.now;
        self.transcript = Transcript::default();
        let n = p
            .poll_transmit(&mut buf)
            .ok_or(crate::ApiMisuse::WrongState)?;
        self.transcript.first = buf[..n].to_vec();
        g.handle_input(now, &buf[..n], &mut self.rng)?;
        match g.poll_event() {
            Some(GatewayEvent::NeedVouch(req)) => {
                let answer = self.backend_vouch(&req);
                g.handle_vouch(now, answer)?;
            }
            Some(GatewayEvent::NeedTicket(_)) => g.handle_ticket(now, ticket, &mut self.rng)?,
            None => return Err(crate::ApiMisuse::WrongState.into()),
        }
        let second = g.poll_transmit().ok_or(crate::ApiMisuse::WrongState)?;
        self.transcript.second = second.clone();
        p.handle_input(now, &second)?;
        let n = p
            .poll_transmit(&mut buf)
            .ok_or(crate::ApiMisuse::WrongState)?;
        self.transcript.finish = buf[..n].to_vec();
        g.handle_input(now, &buf[..n], &mut self.rng)?;
        Ok((p.into_established()?, g.into_established()?))
    }
}

/// An "RNG" that returns fixed bytes in order, for test vectors: every random
/// input of a handshake (an ephemeral secret) is then an explicit value.
///
/// Panics when exhausted: a vector that needs more randomness than it lists is
/// a bug in the vector.
#[derive(Debug, Clone)]
pub struct FixedRng {
    bytes: Vec<u8>,
    at: usize,
}

impl FixedRng {
    /// Returns `bytes` in order.
    pub fn new(bytes: &[u8]) -> Self {
        Self {
            bytes: bytes.to_vec(),
            at: 0,
        }
    }

    /// Bytes not yet handed out.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }
}

impl rand_core::TryRng for FixedRng {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    #[allow(clippy::panic)]
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        let end = self.at + dst.len();
        if end > self.bytes.len() {
            panic!("FixedRng exhausted: the vector lists too little randomness");
        }
        dst.copy_from_slice(&self.bytes[self.at..end]);
        self.at = end;
        Ok(())
    }
}

impl rand_core::TryCryptoRng for FixedRng {}
