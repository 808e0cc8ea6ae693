//! The fleet: real gateway drivers on in-memory links, and peripherals that
//! are the real proto state machine with the link model around it.
//!
//! A peripheral here is lighter than `vouch-peripheral`'s driver (no key
//! store, no backoff timers) so that ten thousand of them fit in one process,
//! but every byte it sends or checks comes from
//! [`PeripheralHandshake`] and [`Session`]. Each link to a gateway is a
//! `vouch_gateway::transport::memory` pair with the gateway's real
//! [`run_link`] on the other end, so fragmentation, reassembly, the
//! gateway's handshake, its backend calls, its session table, tickets and
//! the revocation feed are the daemon's own code.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use vouch_gateway::clock::SystemClock;
use vouch_gateway::driver::{run_link, Context, Outcome};
use vouch_gateway::metrics::Metrics;
use vouch_gateway::sessions::SessionTable;
use vouch_gateway::transport::memory::{pair, MemoryLink};
use vouch_gateway::transport::Link;
use vouch_proto::anchor::AnchorSet;
use vouch_proto::handshake::gateway::GatewayConfig;
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake, PeripheralTicket};
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

/// One gateway: the daemon's driver context with its uplink.
pub struct SimGateway {
    /// Position in the fleet.
    pub idx: usize,
    /// Its identity.
    pub key: PublicKey,
    /// Its site (policy).
    pub site: String,
    /// What every driver on it shares.
    pub ctx: Arc<Context<Uplink, SystemClock>>,
    /// Its uplink (outage switch).
    pub uplink: Uplink,
}

impl SimGateway {
    /// A gateway with identity `key` using `uplink`; starts its revocation
    /// feed until `shutdown`.
    pub fn start(
        idx: usize,
        key: &IdentityKey,
        site: &str,
        uplink: Uplink,
        shutdown: watch::Receiver<bool>,
        follow_feed: bool,
    ) -> Result<Self, crate::Error> {
        let metrics = Arc::new(Metrics::new().map_err(|e| crate::Error::Gateway(e.to_string()))?);
        let ctx = Arc::new(Context {
            config: GatewayConfig::new(key.public_key()),
            backend: uplink.clone(),
            clock: SystemClock,
            table: SessionTable::new(1_000_000),
            metrics: metrics.clone(),
            idle_timeout: Duration::from_secs(24 * 3600),
        });
        if follow_feed {
            tokio::spawn(vouch_gateway::revocation::follow(
                uplink.clone(),
                ctx.table.clone(),
                key.public_key(),
                metrics,
                shutdown,
            ));
        }
        Ok(Self {
            idx,
            key: key.public_key(),
            site: site.to_string(),
            ctx,
            uplink,
        })
    }

    /// Opens a link to this gateway: the peripheral's end, and the gateway's
    /// driver running on the other.
    pub fn open_link(
        &self,
        att_mtu: usize,
        peer: &str,
        seed: [u8; 32],
        shutdown: watch::Receiver<bool>,
    ) -> (MemoryLink, JoinHandle<Outcome>) {
        let (p, mut g) = pair(att_mtu, peer, &format!("gw{}", self.idx));
        let ctx = self.ctx.clone();
        let task = tokio::spawn(async move { run_link(ctx, &mut g, seed, shutdown).await });
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
    stop: oneshot::Sender<()>,
    task: JoinHandle<SessionEnd>,
    gw_task: JoinHandle<Outcome>,
    /// Sends one telemetry record.
    pub data: tokio::sync::mpsc::Sender<Vec<u8>>,
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
        let _ = self.stop.send(());
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
                let _ = stop.send(());
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
    /// Its ATT MTU (23 or 247).
    pub att_mtu: usize,
    /// Its BLE address (spoofable; trusted by nobody).
    pub mac: String,
    /// The gateway it attaches to.
    pub home: usize,
    rng: ChaCha20Rng,
    air: ChaCha20Rng,
    /// Its resumption ticket.
    pub ticket: Option<PeripheralTicket>,
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
    /// Device `idx` of a fleet seeded with `seed`.
    pub fn new(seed: u64, idx: usize, gateways: usize, fleet: &Fleet) -> Self {
        let key_seed = derive_seed(seed, "device-key", idx as u64);
        let key = IdentityKey::from_seed(&key_seed);
        let id = PeripheralId::derive(&key.public_key());
        let mut rng = rng_for(seed, "device", idx as u64);
        let att_mtu = if unit(&mut rng) < fleet.mtu23_fraction {
            23
        } else {
            247
        };
        let m = idx as u64;
        Self {
            idx,
            key_seed,
            id,
            att_mtu,
            mac: format!(
                "c0:de:{:02x}:{:02x}:{:02x}:{:02x}",
                (m >> 24) & 0xff,
                (m >> 16) & 0xff,
                (m >> 8) & 0xff,
                m & 0xff
            ),
            home: idx % gateways,
            rng,
            air: rng_for(seed, "air", idx as u64),
            ticket: None,
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
}

enum Attempt {
    Established(LiveSession, bool),
    ResumptionRejected,
    Dropped,
    Refused(AlertCode),
    Failed,
}

/// Connects `dev` to gateway `gw` at virtual time `start_ms`: resumes when it
/// holds a ticket for that gateway, else runs a full handshake; a rejected
/// ticket falls back to a full handshake at once, a dropped link is retried
/// after the supervision timeout.
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
    };
    let mut tries = 0;
    while tries < env.model.params().attempts {
        let gw_key = env.gateways[gw].key;
        let resume = dev.ticket.as_ref().is_some_and(|t| t.gateway_key == gw_key);
        let mut air = Transfer::default();
        let mut bytes = 0u64;
        let a = attempt(
            env,
            dev,
            gw,
            resume,
            &mut r.latency_us,
            &mut air,
            &mut bytes,
        )
        .await;
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
                // The ticket is gone (SPEC.md §6.4): full handshake at once.
                r.resumption_rejected = true;
                dev.ticket = None;
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
    r
}

async fn attempt(
    env: &Env,
    dev: &mut SimDevice,
    gw: usize,
    resume: bool,
    latency: &mut f64,
    air: &mut Transfer,
    bytes: &mut u64,
) -> Attempt {
    let g = &env.gateways[gw];
    let seed = seed32(&mut dev.rng);
    let (mut link, gw_task) = g.open_link(dev.att_mtu, &dev.mac, seed, env.shutdown.clone());
    let now = Timestamp(dev.clock_ms);
    let cfg = PeripheralConfig::default();
    let hs = match (resume, dev.ticket.take()) {
        (true, Some(t)) => PeripheralHandshake::resume(&cfg, &t, &env.anchors, now, &mut dev.rng),
        (_, t) => {
            dev.ticket = t;
            PeripheralHandshake::start(&cfg, dev.id, &dev.key(), &env.anchors, now, &mut dev.rng)
        }
    };
    let Ok(mut hs) = hs else {
        return Attempt::Failed;
    };
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    let Some(n) = hs.poll_transmit(&mut buf) else {
        return Attempt::Failed;
    };
    let first = buf[..n].to_vec();
    let f = &env.fleet;
    let (cpu_a, cpu_b) = if resume {
        (f.cpu_resume_ms * 0.55, f.cpu_resume_ms * 0.45)
    } else {
        (f.cpu_hello_ms, f.cpu_response_ms)
    };
    let t = env.model.transfer(n, dev.att_mtu, &mut dev.air);
    *latency += cpu_a * 1000.0 + t.time_us + env.uplink.gateway_ms * 1000.0;
    *air += t;
    *bytes += n as u64;
    if link.send(&first).await.is_err() {
        return Attempt::Failed;
    }
    if unit(&mut dev.air) < env.model.params().disconnect {
        // The connection drops before the answer (supervision timeout).
        drop(link);
        let _ = tokio::time::timeout(DEADLINE, gw_task).await;
        return Attempt::Dropped;
    }
    let Ok(Ok(Some(answer))) = tokio::time::timeout(DEADLINE, link.recv()).await else {
        return Attempt::Failed;
    };
    if !resume {
        *latency += env.uplink.backend_rtt_ms * 1000.0;
    }
    let t = env.model.transfer(answer.len(), dev.att_mtu, &mut dev.air);
    *latency += t.time_us;
    *air += t;
    *bytes += answer.len() as u64;
    match hs.handle_input(Timestamp(dev.clock_ms), &answer) {
        Ok(()) => {}
        Err(ProtoError::Alert(AlertCode::ResumptionRejected)) => {
            return Attempt::ResumptionRejected
        }
        Err(ProtoError::Alert(code)) => return Attempt::Refused(code),
        Err(_) => {
            flush(&mut hs, &mut link).await;
            return Attempt::Failed;
        }
    }
    let Some(n) = hs.poll_transmit(&mut buf) else {
        return Attempt::Failed;
    };
    let finish = buf[..n].to_vec();
    let t = env.model.transfer(n, dev.att_mtu, &mut dev.air);
    *latency += cpu_b * 1000.0 + t.time_us + env.uplink.gateway_ms * 1000.0;
    *air += t;
    *bytes += n as u64;
    if link.send(&finish).await.is_err() {
        return Attempt::Failed;
    }
    let Ok(est) = hs.into_established() else {
        return Attempt::Failed;
    };
    env.capture(gw, resume, &first, &finish);
    // Established on the peripheral; the gateway registers it after the Finish.
    let sid = est.session.id();
    let table = g.ctx.table.clone();
    let registered = wait_until(|| {
        if table.get(&dev.id).is_some_and(|s| s.session_id == sid) {
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
    dev.ticket = Some(est.ticket);
    let (stop, stopped) = oneshot::channel();
    let (data, data_rx) = tokio::sync::mpsc::channel(4);
    let clock = dev.clock_ms;
    let task = tokio::spawn(hold(link, est.session, clock, stopped, data_rx));
    Attempt::Established(
        LiveSession {
            gateway: gw,
            stop,
            task,
            gw_task,
            data,
        },
        est.resumed,
    )
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
/// closes it or the device is told to stop (then it sends a close).
async fn hold(
    mut link: MemoryLink,
    mut session: Session,
    clock_ms: u64,
    mut stop: oneshot::Receiver<()>,
    mut data: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> SessionEnd {
    let now = Timestamp(clock_ms);
    loop {
        tokio::select! {
            m = link.recv() => {
                let Ok(Some(msg)) = m else {
                    return SessionEnd { by_gateway: None, at: Instant::now() };
                };
                let mut plain = vec![0u8; msg.len()];
                if let Ok(Inbound::Close(r)) = session.open(now, &msg, &mut plain) {
                    return SessionEnd { by_gateway: Some(r), at: Instant::now() };
                }
            }
            Some(d) = data.recv() => {
                let mut rec = vec![0u8; d.len() + RECORD_OVERHEAD];
                if let Ok(n) = session.seal_data(now, &d, &mut rec) {
                    let _ = link.send(&rec[..n]).await;
                }
            }
            _ = &mut stop => {
                let mut rec = [0u8; 64];
                if let Ok(n) = session.seal_close(now, CloseReason::NORMAL, &mut rec) {
                    let _ = link.send(&rec[..n]).await;
                }
                return SessionEnd { by_gateway: None, at: Instant::now() };
            }
        }
    }
}
