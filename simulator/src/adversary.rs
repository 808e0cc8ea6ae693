//! The adversaries of DESIGN.md §4, each acting with what it can observe or
//! hold: bytes captured on the air, a BLE address, keys it made itself, a
//! copied device key, a revoked device's saved ticket, a gateway of its own.
//!
//! An attempt is *accepted* when it got anything: a session registered at a
//! gateway (the gateway driver ran into its session loop), an honest
//! peripheral's machine accepting a forged or moved answer, or a record the
//! gateway delivered twice. Every attempt talks to the real gateway code
//! over a memory link, and through it to the real backend.

use std::sync::Arc;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::Rng;
use tokio::task::{JoinHandle, JoinSet};
use vouch_gateway::driver::{Outcome, SessionEnd};
use vouch_gateway::transport::memory::MemoryLink;
use vouch_gateway::transport::Link;
use vouch_proto::anchor::{AnchorAction, AnchorUpdate};
use vouch_proto::handshake::backend::{open_hello, BackendKeys, VouchGrant};
use vouch_proto::handshake::gateway::{GatewayConfig, GatewayEvent, GatewayHandshake};
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake, PeripheralTicket};
use vouch_proto::keys::{DhPublic, IdentityKey, PeripheralId};
use vouch_proto::keys::{KeyId, PublicKey};
use vouch_proto::wire::backend::{PeripheralInfo, VouchAnswer, Vouched};
use vouch_proto::wire::{
    Alert, Mac16, Message, ResumeHello, ResumeResponse, ResumptionId, Suite, MAX_HANDSHAKE_MESSAGE,
    RECORD_OVERHEAD,
};
use vouch_proto::wire::{Lifetimes, Scope};
use vouch_proto::{AlertCode, Timestamp};

use crate::fleet::{seed32, Env, SimGateway, DEADLINE};
use crate::report::AttackTally;
use crate::scenario::AttackClass;

/// What an adversary knows of one honest device (its identity only matters
/// where the attack is about that device: a clone, a revoked device).
#[derive(Clone)]
pub struct Victim {
    /// Fleet index.
    pub idx: usize,
    /// Identity key seed (the honest device's own, or what a cloner copied).
    pub key_seed: [u8; 32],
    /// Registry id.
    pub id: PeripheralId,
    /// BLE address.
    pub mac: String,
    /// Its gateway.
    pub home: usize,
    /// ATT MTU.
    pub att_mtu: usize,
    /// A saved copy of its resumption ticket (postcard), if any.
    pub ticket: Option<Vec<u8>>,
}

/// An attacker's link to a gateway, with the gateway's driver on the other end.
pub struct Probe {
    link: MemoryLink,
    gw_task: JoinHandle<Outcome>,
}

impl Probe {
    /// Opens a link to `gw`.
    pub fn open(gw: &SimGateway, mtu: usize, peer: &str, rng: &mut ChaCha20Rng) -> Self {
        let (link, gw_task) = gw.open_link(mtu, peer, seed32(rng));
        Self { link, gw_task }
    }

    async fn send(&mut self, msg: &[u8]) -> bool {
        self.link.send(msg).await.is_ok()
    }

    async fn recv(&mut self) -> Option<Vec<u8>> {
        match tokio::time::timeout(DEADLINE, self.link.recv()).await {
            Ok(Ok(m)) => m,
            _ => None,
        }
    }

    async fn exchange(&mut self, msg: &[u8]) -> Option<Vec<u8>> {
        if !self.send(msg).await {
            return None;
        }
        self.recv().await
    }

    /// Hangs up; returns whether the gateway had established a session.
    pub async fn finish(self) -> bool {
        drop(self.link);
        matches!(
            tokio::time::timeout(DEADLINE, self.gw_task).await,
            Ok(Ok(Outcome::SessionEnded { .. }))
        )
    }
}

/// What an attack leaves for the caller: its tally so far, and links it
/// keeps open (slow peers) until the honest traffic beside it is done.
pub struct AttackOutput {
    /// Attempts and acceptances (detection is counted by the caller).
    pub tally: AttackTally,
    /// Links still held; each counts as accepted if its gateway established.
    pub held: Vec<Probe>,
}

/// Everything an attack may use.
pub struct Arena<'a> {
    /// The fleet's gateways, anchors, link model, air capture.
    pub env: &'a Arc<Env>,
    /// Extra gateways the attack brings (rogue, distant), already started.
    pub extra: &'a [SimGateway],
    /// Victims chosen for it.
    pub victims: &'a [Victim],
    /// The attack's randomness.
    pub rng: ChaCha20Rng,
    /// Attempts asked for.
    pub attempts: u32,
    /// The gateway an attack is about (revoked gateway).
    pub gateway: Option<usize>,
}

fn hello(
    env: &Env,
    id: PeripheralId,
    key: &IdentityKey,
    rng: &mut ChaCha20Rng,
) -> Option<(PeripheralHandshake, Vec<u8>)> {
    let mut hs = PeripheralHandshake::start(
        &PeripheralConfig::default(),
        id,
        key,
        &env.anchors,
        Timestamp(0),
        rng,
    )
    .ok()?;
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    let n = hs.poll_transmit(&mut buf)?;
    Some((hs, buf[..n].to_vec()))
}

/// Drives a peripheral machine through `probe`: sends `first`, hands the
/// answer to the machine, sends the Finish. Returns whether the machine
/// accepted the answer.
async fn as_peripheral(probe: &mut Probe, hs: &mut PeripheralHandshake, first: &[u8]) -> bool {
    let Some(answer) = probe.exchange(first).await else {
        return false;
    };
    let ok = hs.handle_input(Timestamp(0), &answer).is_ok();
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    if let Some(n) = hs.poll_transmit(&mut buf) {
        let _ = probe.send(&buf[..n]).await;
        if ok {
            // Let the gateway take the Finish before hanging up.
            let _ = tokio::time::timeout(Duration::from_millis(200), probe.recv()).await;
        }
    }
    ok
}

fn flip(msg: &mut [u8], rng: &mut ChaCha20Rng) {
    if msg.is_empty() {
        return;
    }
    let i = (rng.next_u32() as usize) % msg.len();
    let bit = 1u8 << (rng.next_u32() % 8);
    msg[i] ^= bit;
}

fn victim<'v>(a: &'v Arena<'_>, i: u32) -> Option<&'v Victim> {
    if a.victims.is_empty() {
        None
    } else {
        a.victims.get(i as usize % a.victims.len())
    }
}

/// Runs one attack class.
pub async fn run(class: AttackClass, mut a: Arena<'_>) -> Result<AttackOutput, crate::Error> {
    let mut t = AttackTally::default();
    let mut held = Vec::new();
    match class {
        AttackClass::SlotStall => slot_stall(&mut a, &mut t, &mut held).await?,
        AttackClass::RogueCentral | AttackClass::OldKey => {
            return Err(need(
                class,
                "run by the orchestrator (it drives the victims' own devices)",
            ));
        }
        AttackClass::MacSpoof => mac_spoof(&mut a, &mut t).await?,
        AttackClass::Replay => replay(&mut a, &mut t).await?,
        AttackClass::VouchSwap => vouch_swap(&mut a, &mut t).await?,
        AttackClass::RogueGateway => rogue_gateway(&mut a, &mut t).await?,
        AttackClass::RevokedPeripheral => revoked_peripheral(&mut a, &mut t).await?,
        AttackClass::RevokedGateway => revoked_gateway(&mut a, &mut t).await?,
        AttackClass::Clone => cloned_key(&mut a, &mut t).await?,
        AttackClass::Relay => relay(&mut a, &mut t).await?,
        AttackClass::Tamper => tamper(&mut a, &mut t).await?,
        AttackClass::Downgrade => downgrade(&mut a, &mut t).await?,
        AttackClass::BruteForce => brute_force(&mut a, &mut t).await?,
        AttackClass::Flood => flood(&mut a, &mut t, &mut held).await?,
    }
    Ok(AttackOutput { tally: t, held })
}

/// The error of an attack the scenario cannot run.
fn need(class: AttackClass, what: &str) -> crate::Error {
    crate::Error::Invalid(format!("attack {}: {what}", class.name()))
}

/// The [`AttackClass::SlotStall`] attack.
async fn slot_stall(
    a: &mut Arena<'_>,
    t: &mut AttackTally,
    held: &mut Vec<Probe>,
) -> Result<(), crate::Error> {
    let env = a.env.clone();
    let gws = &env.gateways;
    // Before any honest device comes: on every gateway, as many
    // silent links as it has slots, and `attempts` more (each takes
    // the slot of the silent link that waited longest). Held, silent,
    // while the honest devices connect.
    for gw in gws {
        let Some((_, max)) = &gw.slots else {
            return Err(need(
                AttackClass::SlotStall,
                "the scenario caps no link slots ([gateway] spare_links)",
            ));
        };
        for _ in 0..(*max as u64 + u64::from(a.attempts)) {
            held.push(Probe::open(gw, 247, "staller", &mut a.rng));
            t.attempts += 1;
        }
    }
    Ok(())
}

/// The [`AttackClass::MacSpoof`] attack.
async fn mac_spoof(a: &mut Arena<'_>, t: &mut AttackTally) -> Result<(), crate::Error> {
    let env = a.env.clone();
    let gws = &env.gateways;
    for i in 0..a.attempts {
        let v = victim(a, i)
            .ok_or_else(|| need(AttackClass::MacSpoof, "no peripherals to spoof"))?
            .clone();
        let spoof = IdentityKey::from_seed(&seed32(&mut a.rng));
        // Half claim their own (unregistered) id, half the victim's.
        let claimed = if i % 2 == 0 {
            PeripheralId::derive(&spoof.public_key())
        } else {
            v.id
        };
        let Some((mut hs, h)) = hello(&env, claimed, &spoof, &mut a.rng) else {
            continue;
        };
        let mut p = Probe::open(&gws[v.home], v.att_mtu, &v.mac, &mut a.rng);
        let ok = as_peripheral(&mut p, &mut hs, &h).await;
        t.attempts += 1;
        t.accepted += u64::from(p.finish().await || ok);
    }
    Ok(())
}

/// The [`AttackClass::Replay`] attack.
async fn replay(a: &mut Arena<'_>, t: &mut AttackTally) -> Result<(), crate::Error> {
    let env = a.env.clone();
    let gws = &env.gateways;
    let m = env.gateways.len();
    let (full, resumed) = {
        let c = env.capture.lock().unwrap_or_else(|e| e.into_inner());
        (c.full.clone(), c.resumed.clone())
    };
    let all: Vec<_> = full.into_iter().chain(resumed).collect();
    if all.is_empty() {
        return Err(need(
            AttackClass::Replay,
            "nothing captured on the air yet: connect devices first",
        ));
    }
    for i in 0..a.attempts {
        let (g0, first, finish) = &all[i as usize % all.len()];
        // To the gateway that heard it, and to its neighbour.
        let g = if i % 2 == 0 { *g0 } else { (g0 + 1) % m };
        let mut p = Probe::open(&gws[g], 247, "replayer", &mut a.rng);
        if let Some(ans) = p.exchange(first).await {
            if ans.len() > 3 {
                let _ = p.send(finish).await;
            }
        }
        t.attempts += 1;
        t.accepted += u64::from(p.finish().await);
    }
    Ok(())
}

/// The [`AttackClass::VouchSwap`] attack.
async fn vouch_swap(a: &mut Arena<'_>, t: &mut AttackTally) -> Result<(), crate::Error> {
    let env = a.env.clone();
    let gws = &env.gateways;
    if a.victims.len() < 2 {
        return Err(need(
            AttackClass::VouchSwap,
            "needs at least 2 offline peripherals",
        ));
    }
    for i in 0..a.attempts {
        let va = victim(a, 2 * i)
            .ok_or_else(|| need(AttackClass::VouchSwap, "victims"))?
            .clone();
        let vb = victim(a, 2 * i + 1)
            .ok_or_else(|| need(AttackClass::VouchSwap, "victims"))?
            .clone();
        let ka = IdentityKey::from_seed(&va.key_seed);
        let kb = IdentityKey::from_seed(&vb.key_seed);
        if i % 2 == 0 {
            // Two handshakes at once; each peripheral gets the other's vouch.
            let (Some((mut ha, hello_a)), Some((mut hb, hello_b))) = (
                hello(&env, va.id, &ka, &mut a.rng),
                hello(&env, vb.id, &kb, &mut a.rng),
            ) else {
                continue;
            };
            let mut pa = Probe::open(&gws[va.home], 247, &va.mac, &mut a.rng);
            let mut pb = Probe::open(&gws[vb.home], 247, &vb.mac, &mut a.rng);
            let ra = pa.exchange(&hello_a).await;
            let rb = pb.exchange(&hello_b).await;
            if let (Some(ra), Some(rb)) = (ra, rb) {
                t.attempts += 2;
                t.accepted += u64::from(ha.handle_input(Timestamp(0), &rb).is_ok());
                t.accepted += u64::from(hb.handle_input(Timestamp(0), &ra).is_ok());
            }
            t.accepted += u64::from(pa.finish().await) + u64::from(pb.finish().await);
        } else {
            // An old vouch answered to a new handshake of the same peripheral.
            let Some((mut h1, hello1)) = hello(&env, va.id, &ka, &mut a.rng) else {
                continue;
            };
            let mut p1 = Probe::open(&gws[va.home], 247, &va.mac, &mut a.rng);
            let Some(r1) = p1.exchange(&hello1).await else {
                continue;
            };
            let _ = h1.handle_input(Timestamp(0), &r1);
            let _ = p1.finish().await;
            let Some((mut h2, _hello2)) = hello(&env, va.id, &ka, &mut a.rng) else {
                continue;
            };
            t.attempts += 1;
            t.accepted += u64::from(h2.handle_input(Timestamp(0), &r1).is_ok());
        }
    }
    Ok(())
}

/// The [`AttackClass::RogueGateway`] attack.
async fn rogue_gateway(a: &mut Arena<'_>, t: &mut AttackTally) -> Result<(), crate::Error> {
    let env = a.env.clone();
    if a.extra.is_empty() {
        return Err(need(
            AttackClass::RogueGateway,
            "no rogue gateways were started",
        ));
    }
    for i in 0..a.attempts {
        let v = victim(a, i)
            .ok_or_else(|| need(AttackClass::RogueGateway, "no peripherals"))?
            .clone();
        let rogue = &a.extra[i as usize % a.extra.len()];
        let k = IdentityKey::from_seed(&v.key_seed);
        let Some((mut hs, h)) = hello(&env, v.id, &k, &mut a.rng) else {
            continue;
        };
        let mut p = Probe::open(rogue, v.att_mtu, &v.mac, &mut a.rng);
        let ok = as_peripheral(&mut p, &mut hs, &h).await;
        t.attempts += 1;
        t.accepted += u64::from(p.finish().await || ok);
    }
    Ok(())
}

/// The [`AttackClass::RevokedPeripheral`] attack.
async fn revoked_peripheral(a: &mut Arena<'_>, t: &mut AttackTally) -> Result<(), crate::Error> {
    let env = a.env.clone();
    let gws = &env.gateways;
    for v in a.victims {
        let k = IdentityKey::from_seed(&v.key_seed);
        // First the ticket it saved before it was cut off.
        if let Some(bytes) = &v.ticket {
            if let Ok(ticket) = postcard::from_bytes::<PeripheralTicket>(bytes) {
                let g = gws
                    .iter()
                    .position(|g| g.key == ticket.gateway_key)
                    .unwrap_or(v.home);
                if let Ok(mut hs) = PeripheralHandshake::resume(
                    &PeripheralConfig::default(),
                    &ticket,
                    &env.anchors,
                    Timestamp(0),
                    &mut a.rng,
                ) {
                    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
                    if let Some(n) = hs.poll_transmit(&mut buf) {
                        let mut p = Probe::open(&gws[g], v.att_mtu, &v.mac, &mut a.rng);
                        let ok = as_peripheral(&mut p, &mut hs, &buf[..n]).await;
                        t.attempts += 1;
                        t.accepted += u64::from(p.finish().await || ok);
                    }
                }
            }
        }
        // Then a full handshake.
        if let Some((mut hs, h)) = hello(&env, v.id, &k, &mut a.rng) {
            let mut p = Probe::open(&gws[v.home], v.att_mtu, &v.mac, &mut a.rng);
            let ok = as_peripheral(&mut p, &mut hs, &h).await;
            t.attempts += 1;
            t.accepted += u64::from(p.finish().await || ok);
        }
    }
    Ok(())
}

/// The [`AttackClass::RevokedGateway`] attack.
async fn revoked_gateway(a: &mut Arena<'_>, t: &mut AttackTally) -> Result<(), crate::Error> {
    let env = a.env.clone();
    let gws = &env.gateways;
    let g = a
        .gateway
        .ok_or_else(|| need(AttackClass::RevokedGateway, "no revoked gateway"))?;
    for i in 0..a.attempts {
        let v = victim(a, i)
            .ok_or_else(|| need(AttackClass::RevokedGateway, "no peripherals"))?
            .clone();
        let k = IdentityKey::from_seed(&v.key_seed);
        let Some((mut hs, h)) = hello(&env, v.id, &k, &mut a.rng) else {
            continue;
        };
        let mut p = Probe::open(&gws[g], v.att_mtu, &v.mac, &mut a.rng);
        let ok = as_peripheral(&mut p, &mut hs, &h).await;
        t.attempts += 1;
        t.accepted += u64::from(p.finish().await || ok);
    }
    Ok(())
}

/// The [`AttackClass::Clone`] attack.
async fn cloned_key(a: &mut Arena<'_>, t: &mut AttackTally) -> Result<(), crate::Error> {
    let env = a.env.clone();
    let gws = &env.gateways;
    let m = env.gateways.len();
    if m < 2 {
        return Err(need(AttackClass::Clone, "needs at least 2 gateways"));
    }
    for v in a.victims.iter().take(a.attempts as usize) {
        // The copied key, on another device, near another gateway.
        let k = IdentityKey::from_seed(&v.key_seed);
        let Some((mut hs, h)) = hello(&env, v.id, &k, &mut a.rng) else {
            continue;
        };
        let g = (v.home + 1) % m;
        let mut p = Probe::open(&gws[g], v.att_mtu, "clone", &mut a.rng);
        let ok = as_peripheral(&mut p, &mut hs, &h).await;
        t.attempts += 1;
        t.accepted += u64::from(p.finish().await || ok);
    }
    Ok(())
}

/// The [`AttackClass::Relay`] attack.
async fn relay(a: &mut Arena<'_>, t: &mut AttackTally) -> Result<(), crate::Error> {
    let env = a.env.clone();
    let gws = &env.gateways;
    let m = env.gateways.len();
    let far = a
        .extra
        .first()
        .ok_or_else(|| need(AttackClass::Relay, "no distant gateway"))?;
    for i in 0..a.attempts {
        let v = victim(a, i)
            .ok_or_else(|| need(AttackClass::Relay, "no peripherals"))?
            .clone();
        let k = IdentityKey::from_seed(&v.key_seed);
        let Some((mut hs, h)) = hello(&env, v.id, &k, &mut a.rng) else {
            continue;
        };
        if i % 2 == 0 {
            // To a distant site the policy does not cover.
            let mut p = Probe::open(far, v.att_mtu, &v.mac, &mut a.rng);
            let ok = as_peripheral(&mut p, &mut hs, &h).await;
            t.attempts += 1;
            t.accepted += u64::from(p.finish().await || ok);
            continue;
        }
        // To another authorized gateway: a session with *that*
        // gateway (SPEC.md §11.7); the relay then replays a record.
        let g = &gws[(v.home + 1) % m];
        let mut inbound = g.table().sessions().subscribe();
        let mut p = Probe::open(g, v.att_mtu, &v.mac, &mut a.rng);
        if !as_peripheral(&mut p, &mut hs, &h).await {
            let _ = p.finish().await;
            continue;
        }
        let Ok(est) = hs.into_established() else {
            let _ = p.finish().await;
            continue;
        };
        let mut session = est.session;
        let mut rec = [0u8; 64 + RECORD_OVERHEAD];
        let mut marker = [0u8; 64 + RECORD_OVERHEAD];
        if let (Ok(n), Ok(nm)) = (
            session.seal_data(Timestamp(0), b"reading=1", &mut rec),
            session.seal_data(Timestamp(0), b"marker", &mut marker),
        ) {
            let _ = p.send(&rec[..n]).await;
            let _ = p.send(&rec[..n]).await;
            let _ = p.send(&marker[..nm]).await;
            t.attempts += 1;
            let mut copies = 0u64;
            let _ = tokio::time::timeout(DEADLINE, async {
                while let Ok(msg) = inbound.recv().await {
                    if msg.peripheral != v.id {
                        continue;
                    }
                    if msg.data == b"marker" {
                        break;
                    }
                    copies += 1;
                }
            })
            .await;
            t.accepted += copies.saturating_sub(1);
        }
        let _ = p.finish().await;
    }
    Ok(())
}

/// The [`AttackClass::Tamper`] attack.
async fn tamper(a: &mut Arena<'_>, t: &mut AttackTally) -> Result<(), crate::Error> {
    let env = a.env.clone();
    let gws = &env.gateways;
    for i in 0..a.attempts {
        let v = victim(a, i)
            .ok_or_else(|| need(AttackClass::Tamper, "no peripherals"))?
            .clone();
        let k = IdentityKey::from_seed(&v.key_seed);
        let Some((mut hs, mut h)) = hello(&env, v.id, &k, &mut a.rng) else {
            continue;
        };
        let mut p = Probe::open(&gws[v.home], v.att_mtu, &v.mac, &mut a.rng);
        t.attempts += 1;
        let mut peripheral_ok = false;
        match i % 6 {
            0 => {
                flip(&mut h, &mut a.rng);
                peripheral_ok = as_peripheral(&mut p, &mut hs, &h).await;
            }
            1 => {
                let cut = 1 + (a.rng.next_u32() as usize) % (h.len() - 1);
                h.truncate(cut);
                peripheral_ok = as_peripheral(&mut p, &mut hs, &h).await;
            }
            2 | 4 => {
                if let Some(mut r) = p.exchange(&h).await {
                    if i % 6 == 2 {
                        flip(&mut r, &mut a.rng);
                    } else {
                        r.push(0);
                    }
                    peripheral_ok = hs.handle_input(Timestamp(0), &r).is_ok();
                }
            }
            3 => {
                if let Some(r) = p.exchange(&h).await {
                    if hs.handle_input(Timestamp(0), &r).is_ok() {
                        let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
                        if let Some(n) = hs.poll_transmit(&mut buf) {
                            let mut f = buf[..n].to_vec();
                            flip(&mut f, &mut a.rng);
                            let _ = p.send(&f).await;
                            let _ = p.recv().await;
                        }
                    }
                }
            }
            _ => {
                // Frames the reassembly must refuse: an announced
                // length over the limit, then a continuation out of
                // sequence, then the hello itself.
                let _ = p.link.send_fragment(&[0x80, 0xd0, 0x07, 1, 2, 3]).await;
                let _ = p.link.send_fragment(&[0x05, 9, 9, 9]).await;
                peripheral_ok = as_peripheral(&mut p, &mut hs, &h).await;
                // The well-formed hello after the junk may complete:
                // that is the genuine device, not the attack.
                if peripheral_ok {
                    t.attempts -= 1;
                    let _ = p.finish().await;
                    continue;
                }
            }
        }
        t.accepted += u64::from(p.finish().await || peripheral_ok);
    }
    Ok(())
}

/// The [`AttackClass::Downgrade`] attack.
async fn downgrade(a: &mut Arena<'_>, t: &mut AttackTally) -> Result<(), crate::Error> {
    let env = a.env.clone();
    let gws = &env.gateways;
    for i in 0..a.attempts {
        let v = victim(a, i)
            .ok_or_else(|| need(AttackClass::Downgrade, "no peripherals"))?
            .clone();
        let k = IdentityKey::from_seed(&v.key_seed);
        let Some((mut hs, mut h)) = hello(&env, v.id, &k, &mut a.rng) else {
            continue;
        };
        match i % 5 {
            0 => h[0] = 0,
            1 => h[0] = 2,
            2 => h[2] = 0,
            3 => h[2] = 2,
            _ => {
                let rh = ResumeHello {
                    suite: Suite::Ed25519X25519ChaCha20Poly1305,
                    ticket: ResumptionId(rand16(&mut a.rng)),
                    ephemeral: DhPublic(seed32(&mut a.rng)),
                    binder: Mac16(rand16(&mut a.rng)),
                };
                h = Message::ResumeHello(rh).to_vec();
                if h.len() > 2 {
                    h[2] = 0xff;
                }
            }
        }
        let mut p = Probe::open(&gws[v.home], v.att_mtu, &v.mac, &mut a.rng);
        let ok = as_peripheral(&mut p, &mut hs, &h).await;
        t.attempts += 1;
        t.accepted += u64::from(p.finish().await || ok);
    }
    Ok(())
}

/// The [`AttackClass::BruteForce`] attack.
async fn brute_force(a: &mut Arena<'_>, t: &mut AttackTally) -> Result<(), crate::Error> {
    let env = a.env.clone();
    let gws = &env.gateways;
    let target = a
        .victims
        .first()
        .ok_or_else(|| need(AttackClass::BruteForce, "no peripherals"))?
        .clone();
    for i in 0..a.attempts {
        let guess = IdentityKey::from_seed(&seed32(&mut a.rng));
        let g = &gws[target.home];
        let mut p = Probe::open(g, 247, "guesser", &mut a.rng);
        let ok = match i % 4 {
            // Guessed keys for a known id (the lockout's target).
            0 | 1 => match hello(&env, target.id, &guess, &mut a.rng) {
                Some((mut hs, h)) => as_peripheral(&mut p, &mut hs, &h).await,
                None => false,
            },
            // Enumeration: ids nobody enrolled.
            2 => {
                let id = PeripheralId::derive(&guess.public_key());
                match hello(&env, id, &guess, &mut a.rng) {
                    Some((mut hs, h)) => as_peripheral(&mut p, &mut hs, &h).await,
                    None => false,
                }
            }
            // Guessed resumption tickets and binders.
            _ => {
                let rh = Message::ResumeHello(ResumeHello {
                    suite: Suite::Ed25519X25519ChaCha20Poly1305,
                    ticket: ResumptionId(rand16(&mut a.rng)),
                    ephemeral: DhPublic(seed32(&mut a.rng)),
                    binder: Mac16(rand16(&mut a.rng)),
                })
                .to_vec();
                if let Some(ans) = p.exchange(&rh).await {
                    ans.len() > 3
                } else {
                    false
                }
            }
        };
        t.attempts += 1;
        t.accepted += u64::from(p.finish().await || ok);
    }
    Ok(())
}

/// The [`AttackClass::Flood`] attack.
async fn flood(
    a: &mut Arena<'_>,
    t: &mut AttackTally,
    held: &mut Vec<Probe>,
) -> Result<(), crate::Error> {
    let env = a.env.clone();
    let m = env.gateways.len();
    let mut set = JoinSet::new();
    for i in 0..a.attempts {
        let env2 = env.clone();
        let mut rng = crate::fleet::rng_for(a.rng.next_u64(), "flood", u64::from(i));
        let g = (i as usize) % m;
        set.spawn(async move {
            let gw = &env2.gateways[g];
            match i % 4 {
                0 => {
                    // A handshake from an identity nobody enrolled.
                    let key = IdentityKey::from_seed(&seed32(&mut rng));
                    let id = PeripheralId::derive(&key.public_key());
                    let mut p = Probe::open(gw, 247, "flood", &mut rng);
                    let ok = match hello(&env2, id, &key, &mut rng) {
                        Some((mut hs, h)) => as_peripheral(&mut p, &mut hs, &h).await,
                        None => false,
                    };
                    (p.finish().await || ok, None)
                }
                1 => {
                    // Garbage of any length.
                    let mut p = Probe::open(gw, 247, "flood", &mut rng);
                    let len = 1 + (rng.next_u32() as usize) % MAX_HANDSHAKE_MESSAGE;
                    let mut junk = vec![0u8; len];
                    rng.fill_bytes(&mut junk);
                    let _ = p.exchange(&junk).await;
                    (p.finish().await, None)
                }
                2 => {
                    // A fragment flood: a start announcing the most a
                    // message may hold, then continuations, then it stalls.
                    let mut p = Probe::open(gw, 23, "flood", &mut rng);
                    let _ = p.link.send_fragment(&[0x80, 0x00, 0x04, 0, 0]).await;
                    for s in 1..64u8 {
                        let _ = p.link.send_fragment(&[s & 0x3f, 0, 0, 0, 0]).await;
                    }
                    (false, Some(p))
                }
                _ => {
                    // A slow peer: the first fragment of a hello, then nothing.
                    let mut p = Probe::open(gw, 23, "slow", &mut rng);
                    let _ = p.link.send_fragment(&[0x80, 108, 0, 1, 0, 0]).await;
                    (false, Some(p))
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        t.attempts += 1;
        if let Ok((accepted, keep)) = r {
            t.accepted += u64::from(accepted);
            held.extend(keep);
        }
    }
    Ok(())
}

/// A rogue central impersonating a device's gateway while the backend is
/// down (SPEC.md §6.4): it takes the device's first message (a ResumeHello,
/// or a Hello once the device has tried its tickets) and answers what an
/// attacker without the ticket's secret can send, by `round`: a
/// ResumeResponse with a forged confirmation, garbage, or the alert
/// `ResumptionRejected`. Then it waits for the device to hang up.
pub async fn rogue_central(mut link: MemoryLink, round: u32, mut rng: ChaCha20Rng) -> Outcome {
    let hung_up = Outcome::HandshakeFailed(vouch_gateway::Error::Disconnected);
    let Ok(Ok(Some(_first))) = tokio::time::timeout(DEADLINE, link.recv()).await else {
        return hung_up;
    };
    let answer = match round % 3 {
        0 => Message::ResumeResponse(ResumeResponse {
            ephemeral: DhPublic(seed32(&mut rng)),
            confirm: Mac16(rand16(&mut rng)),
        })
        .to_vec(),
        1 => {
            let len = 1 + (rng.next_u32() as usize) % MAX_HANDSHAKE_MESSAGE;
            let mut junk = vec![0u8; len];
            rng.fill_bytes(&mut junk);
            junk
        }
        _ => Message::Alert(Alert {
            code: AlertCode::ResumptionRejected,
        })
        .to_vec(),
    };
    if link.send(&answer).await.is_err() {
        return hung_up;
    }
    // The device's alert or Finish, until it hangs up.
    while let Ok(Ok(Some(_))) = tokio::time::timeout(DEADLINE, link.recv()).await {}
    hung_up
}

/// A gateway run by a thief of backend key `stolen` (SPEC.md §11.15), under
/// a gateway key of its own, never enrolled. It answers a Hello with a vouch
/// for itself signed by the stolen key and, if the device accepts it, pushes
/// in the session the updates the stolen key can sign: a Rotate to a key of
/// its own, the first design's Replace, both at serial `u32::MAX`, and a
/// Rotate its own key signs. To build the vouch it must open the Hello:
/// with the stolen key when the Hello is sealed to it; otherwise `opener`
/// (the backend's current key) stands in, granting the thief the device's
/// id, which is no secret: so the run shows what the vouch alone is worth.
/// Returns how many updates it pushed, inside the task's outcome.
pub async fn old_key_gateway(
    mut link: MemoryLink,
    stolen: Arc<BackendKeys>,
    opener: Arc<BackendKeys>,
    device_key: PublicKey,
    now: Timestamp,
    mut rng: ChaCha20Rng,
) -> Outcome {
    let refused = Outcome::HandshakeFailed(vouch_gateway::Error::Disconnected);
    let Ok(Ok(Some(first))) = tokio::time::timeout(DEADLINE, link.recv()).await else {
        return refused;
    };
    let alert = |code| Message::Alert(Alert { code }).to_vec();
    let me = IdentityKey::from_seed(&seed32(&mut rng));
    let mut g = GatewayHandshake::new(GatewayConfig::new(me.public_key()), now);
    let req = match g.handle_input(now, &first, &mut rng) {
        Ok(()) => match g.poll_event() {
            Some(GatewayEvent::NeedVouch(req)) => req,
            _ => return refused,
        },
        // A ResumeHello: the thief holds no ticket of the device's.
        Err(_) => {
            let _ = link.send(&alert(AlertCode::ResumptionRejected)).await;
            return refused;
        }
    };
    let opened = open_hello(&req.hello, &stolen).or_else(|_| open_hello(&req.hello, &opener));
    let Ok(verified) = opened.and_then(|o| o.verify(&device_key)) else {
        let _ = link.send(&alert(AlertCode::HandshakeFailed)).await;
        return refused;
    };
    let grant = VouchGrant {
        gateway_key: me.public_key(),
        gateway_ephemeral: req.gateway_ephemeral,
        scope: Scope::TELEMETRY.union(Scope::COMMAND),
        lifetimes: Lifetimes {
            session_s: u32::MAX,
            resumption_s: u32::MAX,
        },
    };
    let peripheral = PeripheralInfo {
        id: verified.peripheral(),
        public_key: device_key,
        group: None,
        attributes: Vec::new(),
        scope: grant.scope,
    };
    let vouch = verified.vouch(&stolen, &grant);
    if g.handle_vouch(now, VouchAnswer::Vouched(Vouched { vouch, peripheral }))
        .is_err()
    {
        return refused;
    }
    let Some(response) = g.poll_transmit() else {
        return refused;
    };
    if link.send(&response).await.is_err() {
        return refused;
    }
    // The device checks the vouch: a Finish if it took it, else an alert.
    let Ok(Ok(Some(finish))) = tokio::time::timeout(DEADLINE, link.recv()).await else {
        return refused;
    };
    if g.handle_input(now, &finish, &mut rng).is_err() {
        return refused;
    }
    let Ok(mut est) = g.into_established() else {
        return refused;
    };
    let own = BackendKeys::generate(KeyId(200), &mut rng);
    let forged = [
        AnchorUpdate::sign(
            u32::MAX,
            AnchorAction::Rotate {
                anchor: own.anchor(),
                next: own.anchor().digest(),
            },
            stolen.kid(),
            stolen.signing(),
        ),
        AnchorUpdate::sign(
            u32::MAX,
            AnchorAction::Replace(own.anchor()),
            stolen.kid(),
            stolen.signing(),
        ),
        AnchorUpdate::sign(
            u32::MAX,
            AnchorAction::Rotate {
                anchor: own.anchor(),
                next: own.anchor().digest(),
            },
            own.kid(),
            own.signing(),
        ),
    ];
    for update in &forged {
        let mut buf = [0u8; 256];
        if let Ok(n) = est.session.seal_anchor_update(now, update, &mut buf) {
            let _ = link.send(&buf[..n]).await;
        }
    }
    // Keep the session until the device goes.
    while let Ok(Ok(Some(_))) = tokio::time::timeout(DEADLINE, link.recv()).await {}
    debug_assert_eq!(forged.len() as u64, OLD_KEY_FORGED_UPDATES);
    Outcome::SessionEnded {
        reason: SessionEnd::PeerDisconnected,
    }
}

/// How many updates [`old_key_gateway`] pushes in a session.
pub const OLD_KEY_FORGED_UPDATES: u64 = 3;

fn rand16(rng: &mut ChaCha20Rng) -> [u8; 16] {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    b
}
