//! The fleet: real gateway drivers on in-memory links, and peripherals that
//! are the real proto state machine with the link model around it.
//!
//! A peripheral here is lighter than `vouch-peripheral`'s driver (no key
//! store on disk, no backoff timers) so that ten thousand of them fit in one
//! process, but every byte it sends or checks comes from
//! [`PeripheralHandshake`] and [`Session`], and it makes the driver's
//! decisions with the driver's code: which ticket to resume with and what a
//! failure costs ([`TicketWallet`]), which trust-anchor updates to apply
//! ([`AnchorSet::apply`]). Each link to a gateway is a
//! `vouch_gateway::transport::memory` pair whose gateway end the gateway's
//! real endpoint ([`Gateway`], started as the daemon starts it) runs a
//! driver for, so fragmentation, reassembly, the gateway's handshake, its
//! backend calls, its session table, tickets, its sweeper and the
//! revocation feed are the daemon's own code.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use vouch_gateway::clock::SystemClock;
use vouch_gateway::driver::Outcome;
use vouch_gateway::endpoint::{Gateway, Parts, Settings};
use vouch_gateway::metrics::Metrics;
use vouch_gateway::serve::slots::{Gated, LinkSlots};
use vouch_gateway::sessions::SessionTable;
use vouch_gateway::transport::memory::{pair, MemoryLink};
use vouch_gateway::transport::Link;
use vouch_proto::anchor::AnchorSet;
use vouch_proto::handshake::peripheral::{
    NextHandshake, PeripheralConfig, PeripheralEstablished, PeripheralHandshake, TicketSlot,
    TicketWallet,
};
use vouch_proto::keys::{IdentityKey, PeripheralId, PublicKey};
use vouch_proto::session::{CloseReason, Inbound, Session};
use vouch_proto::wire::{MAX_HANDSHAKE_MESSAGE, RECORD_OVERHEAD};
use vouch_proto::{AlertCode, Error as ProtoError, Timestamp};

use crate::backend::Uplink;
use crate::link::{unit, LinkModel, Transfer};
use crate::scenario::{Fleet, Uplink as UplinkParams};

/// Longest real wait for anything one link does (a safety net: nothing in a
/// healthy run comes near it).
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A 32-byte seed for `what` number `n`, derived from the run's seed.
pub fn derive_seed(seed: u64, what: &str, n: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"vouch-sim/1 ");
    h.update(seed.to_le_bytes());
    h.update(what.as_bytes());
    h.update(n.to_le_bytes());
    h.finalize().into()
}

/// A seeded RNG for `what` number `n`.
pub fn rng_for(seed: u64, what: &str, n: u64) -> ChaCha20Rng {
    ChaCha20Rng::from_seed(derive_seed(seed, what, n))
}

/// A 32-byte draw.
pub fn seed32(rng: &mut ChaCha20Rng) -> [u8; 32] {
    let mut s = [0u8; 32];
    rng.fill_bytes(&mut s);
    s
}

/// One gateway: the daemon's endpoint with its uplink.
pub struct SimGateway {
    /// Position in the fleet.
    pub idx: usize,
    /// Its identity.
    pub key: PublicKey,
    /// Its site (policy).
    pub site: String,
    /// The gateway itself, started as the daemon starts it.
    pub gateway: Arc<Gateway<Uplink, SystemClock>>,
    /// Its uplink (outage switch).
    pub uplink: Uplink,
    /// Its link slots and how many there are, when they are capped (SPEC.md
    /// §8.4): the daemon's own [`LinkSlots`], gating each memory link as
    /// the daemon gates a TCP connection or a BLE device.
    pub slots: Option<(Arc<LinkSlots>, usize)>,
    /// Its central's link cap (`[link] max_links`): devices queue for a link.
    pub links: LinkCap,
}

/// A gateway central's cap on the links it connects and authenticates at
/// once (`[link] max_links`). A device that finds every link taken waits
/// for one, in order of arrival (tokio's semaphore is fair); unlike the
/// daemon's [`LinkSlots`] (which [`SimGateway::with_slots`] models), it is
/// never refused. This bounds the real gateway's concurrent handshakes in
/// wall time; the run's modelled time line queues the same way in virtual
/// time (`run.rs`, `LinkQueue`).
#[derive(Debug)]
pub struct LinkCap {
    max: usize,
    permits: tokio::sync::Semaphore,
    held: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

impl LinkCap {
    /// At most `max` links at once; 0: no cap.
    pub fn new(max: usize) -> Self {
        let permits = if max == 0 {
            tokio::sync::Semaphore::MAX_PERMITS
        } else {
            max
        };
        Self {
            max,
            permits: tokio::sync::Semaphore::new(permits),
            held: Default::default(),
            peak: Default::default(),
        }
    }

    /// The cap (0: none).
    pub fn max(&self) -> usize {
        self.max
    }

    /// Most links held at once so far.
    pub fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits for a free link; it is held until the guard drops.
    pub async fn acquire(&self) -> Option<LinkHeld<'_>> {
        use std::sync::atomic::Ordering;
        let permit = self.permits.acquire().await.ok()?;
        let now = self.held.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        Some(LinkHeld {
            cap: self,
            _permit: permit,
        })
    }
}

/// A link taken from a [`LinkCap`].
pub struct LinkHeld<'a> {
    cap: &'a LinkCap,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Drop for LinkHeld<'_> {
    fn drop(&mut self) {
        self.cap
            .held
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl SimGateway {
    /// A gateway with identity `key` using `uplink`, running until
    /// `shutdown`; with `follow_feed`, it follows the revocation feed.
    /// Trust-anchor updates are fetched by the scenarios that rotate keys.
    pub fn start(
        idx: usize,
        key: &IdentityKey,
        site: &str,
        uplink: Uplink,
        shutdown: watch::Receiver<bool>,
        follow_feed: bool,
    ) -> Result<Self, crate::Error> {
        let metrics = Arc::new(Metrics::new().map_err(|e| crate::Error::Gateway(e.to_string()))?);
        let gateway = Gateway::start(
            Parts {
                key: key.public_key(),
                backend: uplink.clone(),
                clock: SystemClock,
                metrics,
                state: None,
                settings: Settings {
                    max_tickets: 1_000_000,
                    idle_timeout: Duration::from_secs(24 * 3600),
                    follow_feed,
                    anchor_updates_every: None,
                    ..Settings::default()
                },
                certificate: None,
            },
            shutdown,
        )
        .map_err(|e| crate::Error::Gateway(e.to_string()))?;
        Ok(Self {
            idx,
            key: key.public_key(),
            site: site.to_string(),
            gateway,
            uplink,
            slots: None,
            links: LinkCap::new(0),
        })
    }

    /// Its session table.
    pub fn table(&self) -> &Arc<SessionTable> {
        self.gateway.table()
    }

    /// Caps its central at `max` links being connected and authenticated at
    /// once (0: none); devices queue for them.
    pub fn with_link_cap(mut self, max: usize) -> Self {
        self.links = LinkCap::new(max);
        self
    }

    /// Caps its links at `max` slots, each link closed if it has not sent
    /// its first message within `first_message` (SPEC.md §8.4).
    pub fn with_slots(mut self, max: usize, first_message: Duration) -> Self {
        self.slots = Some((LinkSlots::new(max, first_message), max));
        self
    }

    /// Opens a link to this gateway: the peripheral's end, and the gateway's
    /// driver running on the other. (The gateway's shutdown ends it.)
    pub fn open_link(
        &self,
        att_mtu: usize,
        peer: &str,
        seed: [u8; 32],
    ) -> (MemoryLink, JoinHandle<Outcome>) {
        let (p, g) = pair(att_mtu, peer, &format!("gw{}", self.idx));
        // The slot is taken here, when the link comes up, as the daemon
        // takes it when it accepts a connection.
        let task = match &self.slots {
            None => self.gateway.accept_seeded(g, seed),
            Some((slots, _)) => match slots.acquire() {
                Some((slot, _)) => self.gateway.accept_seeded(Gated::new(g, slot), seed),
                // Every slot holds a link that spoke: refused.
                None => {
                    drop(g);
                    tokio::spawn(async {
                        Outcome::HandshakeFailed(vouch_gateway::Error::AtCapacity)
                    })
                }
            },
        };
        (p, task)
    }
}

/// What adversaries can hear: handshake messages captured on the air.
#[derive(Debug, Default)]
pub struct AirCapture {
    /// Full handshakes: gateway index, Hello, Finish.
    pub full: Vec<(usize, Vec<u8>, Vec<u8>)>,
    /// Resumptions: gateway index, ResumeHello, Finish.
    pub resumed: Vec<(usize, Vec<u8>, Vec<u8>)>,
}

/// How many handshakes of each kind the air capture keeps.
const CAPTURE_MAX: usize = 64;

/// What every device task shares.
pub struct Env {
    /// The gateways.
    pub gateways: Vec<SimGateway>,
    /// The radio.
    pub model: LinkModel,
    /// Modelled CPU times.
    pub fleet: Fleet,
    /// Modelled uplink.
    pub uplink: UplinkParams,
    /// The trust anchors devices are provisioned with.
    pub anchors: AnchorSet,
    /// Turns true at the end of the run.
    pub shutdown: watch::Receiver<bool>,
    /// What a listener on the air captured.
    pub capture: Mutex<AirCapture>,
}

impl Env {
    fn capture(&self, gw: usize, resumed: bool, first: &[u8], finish: &[u8]) {
        let mut c = self.capture.lock().unwrap_or_else(|e| e.into_inner());
        let list = if resumed { &mut c.resumed } else { &mut c.full };
        if list.len() < CAPTURE_MAX {
            list.push((gw, first.to_vec(), finish.to_vec()));
        }
    }
}

/// A live session as the peripheral holds it.
pub struct LiveSession {
    /// Which gateway.
    pub gateway: usize,
    stop: oneshot::Sender<Stop>,
    task: JoinHandle<SessionEnd>,
    gw_task: JoinHandle<Outcome>,
}

/// How the device ends its side of a session: one message to its task (a
/// oneshot, not a channel: a channel's first block is about 1 KiB, for each
/// of a million devices).
enum Stop {
    /// A close.
    Close,
    /// One telemetry record, then a close.
    SpeakThenClose(Vec<u8>),
}

/// How a session ended, seen from the peripheral.
#[derive(Debug, Clone, Copy)]
pub struct SessionEnd {
    /// The close reason the gateway sent, if it closed the session.
    pub by_gateway: Option<CloseReason>,
    /// When (wall clock).
    pub at: Instant,
}

impl LiveSession {
    /// Closes the session from the peripheral's side and waits until the
    /// gateway has dropped it too.
    pub async fn close(self) -> SessionEnd {
        self.end(Stop::Close).await
    }

    /// Sends one telemetry record, then closes as [`close`](Self::close).
    pub async fn speak_then_close(self, record: Vec<u8>) -> SessionEnd {
        self.end(Stop::SpeakThenClose(record)).await
    }

    async fn end(self, how: Stop) -> SessionEnd {
        let _ = self.stop.send(how);
        let end = self.task.await.unwrap_or(SessionEnd {
            by_gateway: None,
            at: Instant::now(),
        });
        let _ = tokio::time::timeout(DEADLINE, self.gw_task).await;
        end
    }

    /// Waits for the gateway to end the session (revocation), up to `limit`.
    pub async fn ended_by_gateway(self, limit: Duration) -> Option<SessionEnd> {
        let LiveSession {
            stop,
            mut task,
            gw_task,
            ..
        } = self;
        let r = tokio::time::timeout(limit, &mut task).await;
        let end = match r {
            Ok(Ok(end)) => Some(end),
            _ => {
                let _ = stop.send(Stop::Close);
                let _ = task.await;
                None
            }
        };
        let _ = tokio::time::timeout(DEADLINE, gw_task).await;
        end
    }
}

/// One simulated peripheral.
pub struct SimDevice {
    /// Position in the fleet.
    pub idx: usize,
    /// Seed of its identity key (a copy is what a cloner steals).
    pub key_seed: [u8; 32],
    /// Its registry id.
    pub id: PeripheralId,
    /// Its public key (what the operator enrolls).
    pub public_key: PublicKey,
    /// Its ATT MTU (23 or 247).
    pub att_mtu: usize,
    /// Its BLE address (spoofable; trusted by nobody).
    pub mac: String,
    /// The gateway it attaches to.
    pub home: usize,
    rngs: Rngs,
    /// What it keeps across sessions: tickets and trust anchors (shared with
    /// the task that holds its live session, which applies anchor updates
    /// and confirms tickets).
    pub keep: Arc<Mutex<Keep>>,
    /// Its live session.
    pub live: Option<LiveSession>,
    /// Whether it ever completed a handshake.
    pub ever_connected: bool,
    /// Whether the operator revoked it.
    pub revoked: bool,
    /// Virtual time of its last action, ms.
    pub clock_ms: u64,
}

impl SimDevice {
    /// Device `idx` of a fleet seeded with `seed`, provisioned with `anchors`.
    pub fn new(seed: u64, idx: usize, gateways: usize, fleet: &Fleet, anchors: &AnchorSet) -> Self {
        let key_seed = derive_seed(seed, "device-key", idx as u64);
        let public_key = IdentityKey::from_seed(&key_seed).public_key();
        let id = PeripheralId::derive(&public_key);
        let mut rng = rng_for(seed, "device", idx as u64);
        let att_mtu = if unit(&mut rng) < fleet.mtu23_fraction {
            23
        } else {
            247
        };
        let m = idx as u64;
        let rngs = Rngs {
            seed,
            idx: m,
            pos: [rng.get_word_pos(), 0],
            live: None,
        };
        Self {
            idx,
            key_seed,
            id,
            public_key,
            att_mtu,
            mac: format!(
                "c0:de:{:02x}:{:02x}:{:02x}:{:02x}",
                (m >> 24) & 0xff,
                (m >> 16) & 0xff,
                (m >> 8) & 0xff,
                m & 0xff
            ),
            home: idx % gateways,
            rngs,
            keep: Arc::new(Mutex::new(Keep {
                wallet: TicketWallet::new(),
                anchors: anchors.clone(),
                updates_seen: 0,
            })),
            live: None,
            ever_connected: false,
            revoked: false,
            clock_ms: 0,
        }
    }

    /// Its identity key.
    pub fn key(&self) -> IdentityKey {
        IdentityKey::from_seed(&self.key_seed)
    }

    /// What it keeps, locked.
    pub fn keep(&self) -> std::sync::MutexGuard<'_, Keep> {
        self.keep.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether it holds a resumption ticket.
    pub fn has_ticket(&self) -> bool {
        !self.keep().wallet.is_empty()
    }

    /// Its newest ticket, serialized: what a thief of its flash copies.
    pub fn ticket_copy(&self) -> Option<Vec<u8>> {
        let k = self.keep();
        let t = k
            .wallet
            .ticket(TicketSlot::Unconfirmed)
            .or(k.wallet.ticket(TicketSlot::Confirmed))?;
        postcard::to_allocvec(t).ok()
    }

    /// The gateway closed its session as revoked: it drops its tickets
    /// (SPEC.md §10.4), as the driver does.
    pub fn forget_tickets(&self) {
        self.keep().wallet.clear();
    }
}

/// A device's two random streams: its own choices (`rng`: ephemeral keys,
/// link seeds) and its radio's (`air`: the link model's draws). Between
/// connections only their positions are kept (two ChaCha20 generators are
/// 640 bytes with their block buffers: 640 MB for a million devices);
/// [`connect`] rebuilds them from the run's seed and puts them back.
struct Rngs {
    seed: u64,
    idx: u64,
    /// Word positions of `rng` and `air` while parked.
    pos: [u128; 2],
    live: Option<Box<[ChaCha20Rng; 2]>>,
}

impl Rngs {
    fn both(&mut self) -> &mut [ChaCha20Rng; 2] {
        let (seed, idx, pos) = (self.seed, self.idx, self.pos);
        self.live.get_or_insert_with(|| {
            let mut rng = rng_for(seed, "device", idx);
            rng.set_word_pos(pos[0]);
            let mut air = rng_for(seed, "air", idx);
            air.set_word_pos(pos[1]);
            Box::new([rng, air])
        })
    }

    fn rng(&mut self) -> &mut ChaCha20Rng {
        &mut self.both()[0]
    }

    fn air(&mut self) -> &mut ChaCha20Rng {
        &mut self.both()[1]
    }

    /// Keeps only the positions until the next connection.
    fn park(&mut self) {
        if let Some(b) = self.live.take() {
            self.pos = [b[0].get_word_pos(), b[1].get_word_pos()];
        }
    }
}

/// What a device keeps across sessions: the driver's key store, minus the
/// identity (in [`SimDevice::key_seed`]).
#[derive(Debug)]
pub struct Keep {
    /// Its resumption tickets and every decision about them.
    pub wallet: TicketWallet,
    /// Its trust anchor, commitment and update serial (SPEC.md §7.7).
    pub anchors: AnchorSet,
    /// Anchor-update records received in sessions, applied or refused.
    pub updates_seen: u64,
}

impl Keep {
    /// Applies an anchor update received in a session, as the driver does
    /// (SPEC.md §7.7): on any failure nothing changes.
    fn anchor_update(&mut self, update: &vouch_proto::anchor::AnchorUpdate) {
        let mut next = self.anchors.clone();
        if next.apply(update).is_ok() {
            self.anchors = next;
        }
        self.updates_seen += 1;
    }
}

/// How one connection attempt by an honest device ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A session is up on both sides.
    Established,
    /// Refused with this alert.
    Refused(AlertCode),
    /// The radio link dropped on every attempt.
    LinkLost,
    /// Some other failure (a vouch that did not verify, a timeout).
    Failed,
}

/// What one `connect` cost and how it ended.
#[derive(Debug, Clone, Copy)]
pub struct ConnectResult {
    /// The device.
    pub device: usize,
    /// How it ended.
    pub verdict: Verdict,
    /// Whether the session is a resumption.
    pub resumed: bool,
    /// A resumption was tried and the gateway rejected the ticket.
    pub resumption_rejected: bool,
    /// Virtual start, ms.
    pub start_ms: u64,
    /// Modelled latency from the first message to both sides established, µs.
    pub latency_us: f64,
    /// Air cost of the messages of the attempt that counted.
    pub air: Transfer,
    /// Handshake bytes (Vouch messages, before framing) of that attempt.
    pub message_bytes: u64,
    /// Connections dropped by the radio model.
    pub disconnects: u32,
    /// Whether the uplink of its gateway was down.
    pub uplink_down: bool,
    /// Modelled wait for a free link of its gateway's central, µs
    /// (included in `latency_us`; set by the run's link queue).
    pub queued_us: f64,
}

enum Attempt {
    Established(LiveSession, bool),
    ResumptionRejected,
    Dropped,
    Refused(AlertCode),
    Failed,
}

/// The next handshake of `dev` with the gateway whose key is `gw_key`, as
/// its wallet decides (SPEC.md §6.4): a ticket slot to resume with, or
/// `None` for a full handshake. Tickets that expired or were granted under
/// an anchor the device no longer holds go first. A device knows which
/// gateway it meets (by its advertisement, which anyone can copy) and does
/// not offer one gateway another's ticket: such a ticket counts as tried.
pub fn choose(dev: &SimDevice, gw_key: &PublicKey) -> Option<TicketSlot> {
    let now = Timestamp(dev.clock_ms);
    let mut k = dev.keep();
    let Keep {
        wallet, anchors, ..
    } = &mut *k;
    wallet.prune(anchors, Some(now));
    loop {
        match wallet.choose() {
            NextHandshake::Full => return None,
            NextHandshake::Resume(slot) => {
                if wallet
                    .ticket(slot)
                    .is_some_and(|t| t.gateway_key == *gw_key)
                {
                    return Some(slot);
                }
                wallet.on_failed(slot);
            }
        }
    }
}

/// Connects `dev` to gateway `gw` at virtual time `start_ms`: resumes when its
/// wallet holds a ticket for that gateway, else runs a full handshake; a
/// rejected ticket moves on at once to the other ticket, then to a full
/// handshake; a dropped link is retried after the supervision timeout.
pub async fn connect(env: &Env, dev: &mut SimDevice, gw: usize, start_ms: u64) -> ConnectResult {
    dev.clock_ms = dev.clock_ms.max(start_ms);
    let mut r = ConnectResult {
        device: dev.idx,
        verdict: Verdict::Failed,
        resumed: false,
        resumption_rejected: false,
        start_ms,
        latency_us: 0.0,
        air: Transfer::default(),
        message_bytes: 0,
        disconnects: 0,
        uplink_down: !env.gateways[gw].uplink.is_up(),
        queued_us: 0.0,
    };
    let attempts = env.model.params().attempts;
    let mut tries = 0;
    // A device holds at most two tickets: two rejections, then a full
    // handshake. The bound only guards against a loop.
    let mut rejected = 0;
    while tries < attempts && rejected <= 2 {
        let slot = choose(dev, &env.gateways[gw].key);
        let mut air = Transfer::default();
        let mut bytes = 0u64;
        let a = attempt(env, dev, gw, slot, &mut r.latency_us, &mut air, &mut bytes).await;
        r.air = air;
        r.message_bytes = bytes;
        match a {
            Attempt::Established(live, resumed) => {
                r.verdict = Verdict::Established;
                r.resumed = resumed;
                dev.live = Some(live);
                dev.ever_connected = true;
                break;
            }
            Attempt::ResumptionRejected => {
                // SPEC.md §6.4: at once, with the other ticket or in full.
                r.resumption_rejected = true;
                rejected += 1;
            }
            Attempt::Dropped => {
                r.disconnects += 1;
                r.verdict = Verdict::LinkLost;
                r.latency_us += env.model.params().supervision_timeout_ms * 1000.0;
                tries += 1;
            }
            Attempt::Refused(code) => {
                r.verdict = Verdict::Refused(code);
                break;
            }
            Attempt::Failed => {
                r.verdict = Verdict::Failed;
                break;
            }
        }
    }
    dev.clock_ms += (r.latency_us / 1000.0) as u64;
    dev.rngs.park();
    r
}

/// How one handshake over a link ended, seen from the device.
enum Exchanged {
    /// The machine accepted the answer and the wallet took the new ticket.
    Established {
        session: Box<Session>,
        resumed: bool,
        first: Vec<u8>,
        finish: Vec<u8>,
    },
    ResumptionRejected,
    Dropped,
    Refused(AlertCode),
    Failed,
}

/// What one handshake cost: modelled latency, air, message bytes.
struct Cost<'a> {
    latency: &'a mut f64,
    air: &'a mut Transfer,
    bytes: &'a mut u64,
}

/// Runs one handshake of `dev` over `link` (resuming with `slot`, or in
/// full) and settles its tickets the way the driver does: an established
/// handshake's ticket goes into the wallet at once (the Finish is never
/// acknowledged, SPEC.md §6.1), and a failed resumption, whatever the
/// failure, only marks its ticket tried (§6.4).
async fn exchange(
    env: &Env,
    dev: &mut SimDevice,
    link: &mut MemoryLink,
    slot: Option<TicketSlot>,
    backend_rtt: bool,
    cost: Cost<'_>,
) -> Exchanged {
    let out = exchange_inner(env, dev, link, slot, backend_rtt, cost).await;
    let mut k = dev.keep();
    match out {
        Ok((est, first, finish)) => {
            k.wallet.on_established(slot, est.ticket);
            Exchanged::Established {
                session: Box::new(est.session),
                resumed: est.resumed,
                first,
                finish,
            }
        }
        Err(failed) => {
            if let Some(slot) = slot {
                k.wallet.on_failed(slot);
            }
            failed
        }
    }
}

async fn exchange_inner(
    env: &Env,
    dev: &mut SimDevice,
    link: &mut MemoryLink,
    slot: Option<TicketSlot>,
    backend_rtt: bool,
    cost: Cost<'_>,
) -> Result<(PeripheralEstablished, Vec<u8>, Vec<u8>), Exchanged> {
    let now = Timestamp(dev.clock_ms);
    let cfg = PeripheralConfig::default();
    let hs = {
        let k = dev.keep.lock().unwrap_or_else(|e| e.into_inner());
        match slot.and_then(|s| k.wallet.ticket(s)) {
            Some(t) => PeripheralHandshake::resume(&cfg, t, &k.anchors, now, dev.rngs.rng()),
            None => PeripheralHandshake::start(
                &cfg,
                dev.id,
                &IdentityKey::from_seed(&dev.key_seed),
                &k.anchors,
                now,
                dev.rngs.rng(),
            ),
        }
    };
    let resume = slot.is_some();
    let Ok(mut hs) = hs else {
        return Err(Exchanged::Failed);
    };
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    let Some(n) = hs.poll_transmit(&mut buf) else {
        return Err(Exchanged::Failed);
    };
    let first = buf[..n].to_vec();
    let f = &env.fleet;
    let (cpu_a, cpu_b) = if resume {
        (f.cpu_resume_ms * 0.55, f.cpu_resume_ms * 0.45)
    } else {
        (f.cpu_hello_ms, f.cpu_response_ms)
    };
    let t = env.model.transfer(n, dev.att_mtu, dev.rngs.air());
    *cost.latency += cpu_a * 1000.0 + t.time_us + env.uplink.gateway_ms * 1000.0;
    *cost.air += t;
    *cost.bytes += n as u64;
    if link.send(&first).await.is_err() {
        return Err(Exchanged::Failed);
    }
    if unit(dev.rngs.air()) < env.model.params().disconnect {
        // The connection drops before the answer (supervision timeout).
        return Err(Exchanged::Dropped);
    }
    let Ok(Ok(Some(answer))) = tokio::time::timeout(DEADLINE, link.recv()).await else {
        return Err(Exchanged::Failed);
    };
    if !resume && backend_rtt {
        *cost.latency += env.uplink.backend_rtt_ms * 1000.0;
    }
    let t = env
        .model
        .transfer(answer.len(), dev.att_mtu, dev.rngs.air());
    *cost.latency += t.time_us;
    *cost.air += t;
    *cost.bytes += answer.len() as u64;
    match hs.handle_input(Timestamp(dev.clock_ms), &answer) {
        Ok(()) => {}
        Err(ProtoError::Alert(AlertCode::ResumptionRejected)) => {
            return Err(Exchanged::ResumptionRejected)
        }
        Err(ProtoError::Alert(code)) => return Err(Exchanged::Refused(code)),
        Err(_) => {
            flush(&mut hs, link).await;
            return Err(Exchanged::Failed);
        }
    }
    let Some(n) = hs.poll_transmit(&mut buf) else {
        return Err(Exchanged::Failed);
    };
    let finish = buf[..n].to_vec();
    let t = env.model.transfer(n, dev.att_mtu, dev.rngs.air());
    *cost.latency += cpu_b * 1000.0 + t.time_us + env.uplink.gateway_ms * 1000.0;
    *cost.air += t;
    *cost.bytes += n as u64;
    if link.send(&finish).await.is_err() {
        return Err(Exchanged::Failed);
    }
    match hs.into_established() {
        Ok(est) => Ok((est, first, finish)),
        Err(_) => Err(Exchanged::Failed),
    }
}

async fn attempt(
    env: &Env,
    dev: &mut SimDevice,
    gw: usize,
    slot: Option<TicketSlot>,
    latency: &mut f64,
    air: &mut Transfer,
    bytes: &mut u64,
) -> Attempt {
    let g = &env.gateways[gw];
    // The central's link, held until the handshake is over either way.
    let Some(_link) = g.links.acquire().await else {
        return Attempt::Failed;
    };
    let seed = seed32(dev.rngs.rng());
    let (mut link, gw_task) = g.open_link(dev.att_mtu, &dev.mac, seed);
    let cost = Cost {
        latency,
        air,
        bytes,
    };
    let resume = slot.is_some();
    let (session, resumed, first, finish) =
        match exchange(env, dev, &mut link, slot, true, cost).await {
            Exchanged::Established {
                session,
                resumed,
                first,
                finish,
            } => (session, resumed, first, finish),
            Exchanged::ResumptionRejected => return Attempt::ResumptionRejected,
            Exchanged::Dropped => {
                drop(link);
                let _ = tokio::time::timeout(DEADLINE, gw_task).await;
                return Attempt::Dropped;
            }
            Exchanged::Refused(code) => return Attempt::Refused(code),
            Exchanged::Failed => return Attempt::Failed,
        };
    env.capture(gw, resume, &first, &finish);
    // Established on the peripheral; the gateway registers it after the Finish.
    let sid = session.id();
    let table = g.table().clone();
    let registered = wait_until(|| {
        if table
            .sessions()
            .get(&dev.id)
            .is_some_and(|s| s.session_id == sid)
        {
            Some(true)
        } else if gw_task.is_finished() {
            Some(false)
        } else {
            None
        }
    })
    .await;
    if registered != Some(true) {
        return Attempt::Failed;
    }
    let updates = g.table().anchor_updates().len() as u64;
    let before = dev.keep().updates_seen;
    let live = LiveSession::hold(dev, gw, link, *session, gw_task);
    // The gateway sends every trust-anchor update it holds after the
    // handshake: the device takes them all before it goes on, so which
    // devices rotated depends on the timeline only.
    if updates > 0 {
        let keep = dev.keep.clone();
        let _ = wait_until(|| {
            (keep.lock().unwrap_or_else(|e| e.into_inner()).updates_seen >= before + updates)
                .then_some(())
        })
        .await;
    }
    Attempt::Established(live, resumed)
}

/// How [`meet`] ended.
pub struct Met {
    /// The session, if the device's machine accepted the answer (it then
    /// holds it, applying anchor updates, until closed).
    pub session: Option<LiveSession>,
    /// The ticket it offered, if it tried to resume.
    pub offered: Option<TicketSlot>,
}

/// One handshake of `dev` over `link`, whose other end (`peer_task`)
/// claims to be the gateway with key `gw_key`: an impostor, in attacks. The
/// device chooses its ticket and settles the outcome exactly as with its
/// genuine gateway ([`connect`]).
pub async fn meet(
    env: &Env,
    dev: &mut SimDevice,
    gw_key: PublicKey,
    mut link: MemoryLink,
    peer_task: JoinHandle<Outcome>,
) -> Met {
    let slot = choose(dev, &gw_key);
    let (mut latency, mut air, mut bytes) = (0.0, Transfer::default(), 0u64);
    let cost = Cost {
        latency: &mut latency,
        air: &mut air,
        bytes: &mut bytes,
    };
    let session = match exchange(env, dev, &mut link, slot, false, cost).await {
        Exchanged::Established { session, .. } => Some(LiveSession::hold(
            dev,
            usize::MAX,
            link,
            *session,
            peer_task,
        )),
        _ => {
            drop(link);
            let _ = tokio::time::timeout(DEADLINE, peer_task).await;
            None
        }
    };
    dev.rngs.park();
    Met {
        session,
        offered: slot,
    }
}

impl LiveSession {
    /// Starts the device's side of an established session on `link`.
    fn hold(
        dev: &SimDevice,
        gateway: usize,
        link: MemoryLink,
        session: Session,
        gw_task: JoinHandle<Outcome>,
    ) -> Self {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(hold(
            link,
            Box::new(session),
            dev.clock_ms,
            dev.keep.clone(),
            stopped,
        ));
        LiveSession {
            gateway,
            stop,
            task,
            gw_task,
        }
    }
}

async fn flush(hs: &mut PeripheralHandshake, link: &mut MemoryLink) {
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    if let Some(n) = hs.poll_transmit(&mut buf) {
        let _ = link.send(&buf[..n]).await;
    }
}

/// Polls `f` until it returns `Some`, yielding between polls, up to [`DEADLINE`].
pub async fn wait_until<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > DEADLINE {
            return None;
        }
        spins += 1;
        if spins < 50 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The peripheral's side of a live session: reads records until the gateway
/// closes it or the device is told to stop (then it sends a close). As the
/// driver does, the gateway's first authenticated record confirms the
/// session's ticket, and anchor updates are applied or refused (SPEC.md
/// §6.1, §7.7).
async fn hold(
    mut link: MemoryLink,
    mut session: Box<Session>,
    clock_ms: u64,
    keep: Arc<Mutex<Keep>>,
    mut stop: oneshot::Receiver<Stop>,
) -> SessionEnd {
    // A million of these wait at once: the task holds the link, the boxed
    // session and this wait; what runs rarely (sending) is boxed, so the
    // task is sized by the wait, not by a send's buffers.
    let now = Timestamp(clock_ms);
    loop {
        tokio::select! {
            m = link.recv() => {
                let Ok(Some(msg)) = m else {
                    return SessionEnd { by_gateway: None, at: Instant::now() };
                };
                let mut plain = vec![0u8; msg.len()];
                let opened = session.open(now, &msg, &mut plain);
                let mut k = keep.lock().unwrap_or_else(|e| e.into_inner());
                if opened.is_ok() {
                    k.wallet.on_gateway_record();
                }
                match opened {
                    Ok(Inbound::Close(r)) => {
                        return SessionEnd { by_gateway: Some(r), at: Instant::now() };
                    }
                    Ok(Inbound::AnchorUpdate(u)) => k.anchor_update(&u),
                    _ => {}
                }
            }
            how = &mut stop => {
                Box::pin(leave(&mut link, &mut session, now, how.ok())).await;
                return SessionEnd { by_gateway: None, at: Instant::now() };
            }
        }
    }
}

/// The device leaves a session: a record first if it has one to send,
/// then its close.
async fn leave(link: &mut MemoryLink, session: &mut Session, now: Timestamp, how: Option<Stop>) {
    if let Some(Stop::SpeakThenClose(d)) = how {
        let mut rec = vec![0u8; d.len() + RECORD_OVERHEAD];
        if let Ok(n) = session.seal_data(now, &d, &mut rec) {
            let _ = link.send(&rec[..n]).await;
        }
    }
    let mut rec = [0u8; 64];
    if let Ok(n) = session.seal_close(now, CloseReason::NORMAL, &mut rec) {
        let _ = link.send(&rec[..n]).await;
    }
}
