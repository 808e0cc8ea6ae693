//! A model check of the handshake state machines (issue 7): every
//! interleaving, up to the bounds below, of the real peripheral and gateway
//! machines on a network the attacker owns.
//!
//! # The model
//!
//! - **Machines.** The real [`PeripheralHandshake`] and [`GatewayHandshake`],
//!   not a re-implementation. Each instance has its own seeded RNG, so an
//!   instance's state is a function of the inputs it received: the explorer
//!   keeps, per instance, only the list of inputs, and rebuilds the machine by
//!   replaying them (memoised). Secrets are never cloned.
//! - **Peripheral instances.** `P` twice (two full handshakes of one honest
//!   device, two fresh ephemerals), `P` resuming with a ticket from an earlier
//!   session with `G`, `M` (an enrolled device the attacker controls, allowed
//!   at `G`) and `X` (enrolled, but the policy does not allow it at `G`). Each
//!   sends its first message at the start.
//! - **Gateway instances.** Up to [`Bounds::gateways`] instances of the honest
//!   gateway `G` and [`Bounds::rogues`] of the attacker's gateway `R`: enrolled,
//!   with its own key, and associated with `M` only, so the attacker holds
//!   real vouches and Responses for its own device's handshakes. A new
//!   instance starts on *any* message the attacker has seen.
//! - **Backend.** The reference logic of SPEC.md §5.3: open the hello, look the
//!   claimed id up, verify, check the policy (`P`, `M` at `G`; `M` at `R`),
//!   refuse an ephemeral it has vouched for before (replay), and vouch for the
//!   asking gateway's key and ephemeral. The gateway's ticket store is
//!   single-use, as in the gateway crate (a lookup removes the ticket).
//! - **An old backend key.** The backend rotated from key 1 to key 2 (SPEC.md
//!   §7.7), every peripheral applied the rotation, and the attacker stole
//!   key 1: its gateway may answer any vouch request with a vouch of its
//!   own, signed by key 1, for itself, over the very Hello it got (it is
//!   granted the peripheral's id: an id is no secret). The backend serves
//!   key 2.
//! - **Network and attacker.** Every message any party sent is in the
//!   attacker's pool forever; any pool message may be delivered to any
//!   instance waiting for input, any number of times, in any order, or never.
//!   That is drops, duplicates, reordering, replays and redirection to other
//!   handshakes and gateways, and an attacker who injects any message it has
//!   seen. Cryptography is assumed perfect: byte-level mutation is the tamper
//!   tests' and the fuzzers' job.
//!
//! # What must hold in every reachable state
//!
//! 1. A peripheral that completes accepted a Response made by a gateway
//!    instance that started on *this* peripheral handshake's first message,
//!    for which the backend vouched (full) or the ticket was found
//!    (resumption); the gateway key it learned is that instance's. So the
//!    honest `P` only ever completes with `G`.
//! 2. A gateway instance that completes learned a peripheral id the backend
//!    verified: the id of the device that made the first message it started
//!    on, and that device is allowed at that gateway (never `X`, and `R` only
//!    ever `M`); the Finish it accepted is that same peripheral instance's.
//! 3. When both ends of one handshake complete, they hold the same keys
//!    (each side's sending key is the other's receiving key).
//! 4. One peripheral handshake completes with at most one gateway instance.
//!
//! A planted flaw (a backend that ignores its policy) must be caught, so the
//! checker is shown able to fail. (A backend that names the wrong gateway in
//! the vouch is not a usable plant: the gateway machine refuses such a vouch
//! before the peripheral ever sees it.)

use std::collections::{BTreeSet, HashMap, HashSet};

use vouch_proto::anchor::{AnchorAction, AnchorSet, AnchorUpdate};
use vouch_proto::error::Refusal;
use vouch_proto::handshake::backend::{open_hello, BackendKeys, VouchGrant};
use vouch_proto::handshake::gateway::GatewayTicket;
use vouch_proto::handshake::gateway::{GatewayConfig, GatewayEvent, GatewayHandshake};
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake, PeripheralTicket};
use vouch_proto::keys::DhPublic;
use vouch_proto::keys::{IdentityKey, KeyId, PeripheralId, PublicKey};
use vouch_proto::testing::{rng, Pair};
use vouch_proto::wire::backend::{PeripheralInfo, VouchAnswer, Vouched};
use vouch_proto::wire::{Lifetimes, Scope, MAX_HANDSHAKE_MESSAGE};
use vouch_proto::Timestamp;

const NOW: Timestamp = Timestamp(1_000);

/// How far the exploration goes.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// Instances of the honest gateway.
    gateways: usize,
    /// Instances of the rogue gateway.
    rogues: usize,
}

/// A flaw planted in the world, to show the checker catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    None,
    /// The backend vouches whatever the policy says.
    BackendIgnoresPolicy,
    /// The peripherals never applied the rotation: the stolen key 1 is
    /// still their anchor (what the first rotation design amounted to, where
    /// a device kept trusting every key it had held).
    StolenKeyStillTrusted,
}

/// Who a peripheral instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Device {
    P,
    M,
    X,
}

#[derive(Debug, Clone, Copy)]
struct PeripheralSpec {
    device: Device,
    resume: bool,
}

const PERIPHERALS: [PeripheralSpec; 5] = [
    PeripheralSpec {
        device: Device::P,
        resume: false,
    },
    PeripheralSpec {
        device: Device::P,
        resume: false,
    },
    PeripheralSpec {
        device: Device::P,
        resume: true,
    },
    PeripheralSpec {
        device: Device::M,
        resume: false,
    },
    PeripheralSpec {
        device: Device::X,
        resume: false,
    },
];

/// The fixed world: keys, registry, and the ticket pair of an earlier session.
struct World {
    backend: BackendKeys,
    /// Key 1, rotated away from, in the attacker's hands.
    stolen: BackendKeys,
    anchors: AnchorSet,
    keys: HashMap<PeripheralId, (Device, IdentityKey)>,
    ids: [PeripheralId; 3],
    gateway: IdentityKey,
    rogue: IdentityKey,
    /// The earlier session's tickets (postcard bytes and parts: a ticket holds
    /// a secret and is rebuilt on every replay rather than cloned).
    p_ticket: Vec<u8>,
    g_ticket_id: vouch_proto::wire::ResumptionId,
    g_ticket_secret: [u8; 32],
    g_ticket_info: PeripheralInfo,
    lifetimes: Lifetimes,
    flaw: Flaw,
}

fn info(id: PeripheralId, key: &IdentityKey) -> PeripheralInfo {
    PeripheralInfo {
        id,
        public_key: key.public_key(),
        group: None,
        attributes: Vec::new(),
        scope: Scope::TELEMETRY.union(Scope::COMMAND),
    }
}

impl World {
    fn new(flaw: Flaw) -> Self {
        // The earlier session between P and G comes from the same harness the
        // other tests use; its keys become this world's P, G and backend.
        let mut pair = Pair::new(77);
        // The rotation from key 1 to key 2, applied by every peripheral; the
        // backend serves key 2, the attacker holds key 1.
        let unrotated = pair.anchors.clone();
        let k3 = BackendKeys::generate(KeyId(3), &mut rng(79));
        let rotate = AnchorUpdate::sign(
            1,
            AnchorAction::Rotate {
                anchor: pair.next_backend.anchor(),
                next: k3.anchor().digest(),
            },
            KeyId(2),
            pair.next_backend.signing(),
        );
        pair.anchors.apply(&rotate).expect("the rotation applies");
        let key2 = std::mem::replace(&mut pair.next_backend, k3);
        let stolen = std::mem::replace(&mut pair.backend, key2);
        let (p_est, g_est) = pair
            .full_handshake()
            .expect("the setup handshake completes");
        let mut r = rng(78);
        let m = IdentityKey::generate(&mut r);
        let x = IdentityKey::generate(&mut r);
        let rogue = IdentityKey::generate(&mut r);
        let p_id = pair.peripheral_id;
        let m_id = PeripheralId::derive(&m.public_key());
        let x_id = PeripheralId::derive(&x.public_key());
        let mut keys = HashMap::new();
        keys.insert(p_id, (Device::P, pair.peripheral_key));
        keys.insert(m_id, (Device::M, m));
        keys.insert(x_id, (Device::X, x));
        Self {
            backend: pair.backend,
            stolen,
            anchors: if flaw == Flaw::StolenKeyStillTrusted {
                unrotated
            } else {
                pair.anchors
            },
            keys,
            ids: [p_id, m_id, x_id],
            gateway: pair.gateway_key,
            rogue,
            p_ticket: postcard::to_allocvec(&p_est.ticket).expect("a ticket serializes"),
            g_ticket_id: g_est.ticket.id,
            g_ticket_secret: *g_est.ticket.danger_secret(),
            g_ticket_info: g_est.ticket.peripheral.clone(),
            lifetimes: pair.lifetimes,
            flaw,
        }
    }

    fn id_of(&self, d: Device) -> PeripheralId {
        self.ids[match d {
            Device::P => 0,
            Device::M => 1,
            Device::X => 2,
        }]
    }

    fn gateway_key(&self, rogue: bool) -> PublicKey {
        if rogue {
            self.rogue.public_key()
        } else {
            self.gateway.public_key()
        }
    }

    /// The backend's answer, and the ephemeral it now remembers (replays).
    fn vouch(
        &self,
        hello: &[u8],
        e_g: DhPublic,
        rogue: bool,
        seen: &BTreeSet<[u8; 32]>,
    ) -> (VouchAnswer, Option<[u8; 32]>) {
        let refused = (VouchAnswer::Refused(Refusal::Denied), None);
        let Ok(opened) = open_hello(hello, &self.backend) else {
            return refused;
        };
        let Some((device, key)) = self.keys.get(&opened.claimed_peripheral()) else {
            return refused;
        };
        // The attacker's gateway is enrolled, and associated with M only.
        let allowed = self.flaw == Flaw::BackendIgnoresPolicy
            || matches!(
                (device, rogue),
                (Device::P, false) | (Device::M, false) | (Device::M, true)
            );
        let e_p = opened.ephemeral().0;
        let Ok(verified) = opened.verify(&key.public_key()) else {
            return refused;
        };
        if !allowed || seen.contains(&e_p) {
            return refused;
        }
        let grant = VouchGrant {
            gateway_key: self.gateway_key(rogue),
            gateway_ephemeral: e_g,
            scope: Scope::TELEMETRY.union(Scope::COMMAND),
            lifetimes: self.lifetimes,
        };
        let vouched = Vouched {
            vouch: verified.vouch(&self.backend, &grant),
            peripheral: info(verified.peripheral(), key),
        };
        (VouchAnswer::Vouched(vouched), Some(e_p))
    }

    /// The attacker's own vouch for its gateway, signed by the stolen key 1,
    /// over `hello` (it learns the id from the backend's key 2, standing in
    /// for knowing it otherwise). `None` if the hello is not a device's.
    fn forged_vouch(&self, hello: &[u8], e_g: DhPublic) -> Option<VouchAnswer> {
        let opened = open_hello(hello, &self.backend)
            .or_else(|_| open_hello(hello, &self.stolen))
            .ok()?;
        let (_, key) = self.keys.get(&opened.claimed_peripheral())?;
        let verified = opened.verify(&key.public_key()).ok()?;
        let grant = VouchGrant {
            gateway_key: self.rogue.public_key(),
            gateway_ephemeral: e_g,
            scope: Scope::TELEMETRY.union(Scope::COMMAND),
            lifetimes: self.lifetimes,
        };
        Some(VouchAnswer::Vouched(Vouched {
            vouch: verified.vouch(&self.stolen, &grant),
            peripheral: info(verified.peripheral(), key),
        }))
    }

    fn gateway_ticket(&self) -> GatewayTicket {
        GatewayTicket::from_parts(
            self.g_ticket_id,
            self.g_ticket_secret,
            self.g_ticket_info.clone(),
            self.lifetimes,
            NOW.add_secs(self.lifetimes.resumption_s),
        )
    }
}

/// One input to a gateway instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum GInput {
    /// A message from the pool (by id).
    Msg(usize),
    /// The backend vouched (`true`) or refused.
    Vouch(bool),
    /// The attacker answered its own gateway's vouch request with a vouch
    /// signed by the stolen key 1.
    Forged,
    /// The ticket lookup found the ticket (`true`) or not.
    Ticket(bool),
}

/// What an instance is waiting for after its inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Message,
    /// The backend: the hello and e_G of the request.
    Vouch(Vec<u8>, DhPublic),
    Ticket,
    Established(Done),
    Failed,
}

/// A completed handshake, as the invariants need it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Done {
    /// Peripheral: the gateway key learned. Gateway: unused (own key).
    gateway_key: Option<PublicKey>,
    /// Gateway: the peripheral id learned.
    peripheral: Option<PeripheralId>,
    /// (sending key, receiving key).
    keys: ([u8; 32], [u8; 32]),
    session_id: [u8; 8],
}

#[derive(Debug, Clone)]
struct Eval {
    status: Status,
    /// Messages sent after the last input.
    sent: Vec<Vec<u8>>,
}

struct Explorer {
    world: World,
    bounds: Bounds,
    /// Message interner: bytes, and who sent each (instance, after how many inputs).
    msgs: Vec<Vec<u8>>,
    msg_ids: HashMap<Vec<u8>, usize>,
    senders: HashMap<usize, Vec<Sender>>,
    p_memo: HashMap<(usize, Option<usize>), Eval>,
    g_memo: HashMap<(bool, usize, Vec<GInput>), Eval>,
    evaluations: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sender {
    Peripheral(usize),
    /// Gateway instance index (creation order), rogue or not.
    Gateway(usize),
}

/// The global state: what each instance received, the backend's replay
/// memory, and whether the earlier session's ticket is still in the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct State {
    peripherals: Vec<Option<usize>>,
    /// (rogue, inputs) per gateway instance, in creation order.
    gateways: Vec<(bool, Vec<GInput>)>,
    seen: BTreeSet<[u8; 32]>,
    ticket: bool,
}

impl Explorer {
    fn new(flaw: Flaw, bounds: Bounds) -> Self {
        Self {
            world: World::new(flaw),
            bounds,
            msgs: Vec::new(),
            msg_ids: HashMap::new(),
            senders: HashMap::new(),
            p_memo: HashMap::new(),
            g_memo: HashMap::new(),
            evaluations: 0,
        }
    }

    fn intern(&mut self, bytes: &[u8], sender: Sender) -> usize {
        let id = match self.msg_ids.get(bytes) {
            Some(&id) => id,
            None => {
                let id = self.msgs.len();
                self.msgs.push(bytes.to_vec());
                self.msg_ids.insert(bytes.to_vec(), id);
                id
            }
        };
        let s = self.senders.entry(id).or_default();
        if !s.contains(&sender) {
            s.push(sender);
        }
        id
    }

    /// Peripheral instance `i` after receiving `input` (or nothing).
    fn eval_peripheral(&mut self, i: usize, input: Option<usize>) -> Eval {
        if let Some(e) = self.p_memo.get(&(i, input)) {
            return e.clone();
        }
        self.evaluations += 1;
        let spec = PERIPHERALS[i];
        let w = &self.world;
        let mut r = rng(1_000 + i as u64);
        let cfg = PeripheralConfig::default();
        let id = w.id_of(spec.device);
        let started = if spec.resume {
            let ticket: PeripheralTicket =
                postcard::from_bytes(&w.p_ticket).expect("the ticket deserializes");
            // Refused at start when the ticket's anchor is not the one held
            // (the planted flaw's world): that instance never acts.
            PeripheralHandshake::resume(&cfg, &ticket, &w.anchors, NOW, &mut r)
        } else {
            let key = &w.keys[&id].1;
            PeripheralHandshake::start(&cfg, id, key, &w.anchors, NOW, &mut r)
        };
        let Ok(mut m) = started else {
            let e = Eval {
                status: Status::Failed,
                sent: Vec::new(),
            };
            self.p_memo.insert((i, input), e.clone());
            return e;
        };
        let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
        let first = m.poll_transmit(&mut buf).map(|n| buf[..n].to_vec());
        let mut sent = Vec::new();
        let status = match input {
            None => {
                sent.extend(first);
                Status::Message
            }
            Some(msg) => {
                let bytes = self.msgs[msg].clone();
                if m.handle_input(NOW, &bytes).is_err() {
                    Status::Failed
                } else if m.is_established() {
                    if let Some(n) = m.poll_transmit(&mut buf) {
                        sent.push(buf[..n].to_vec());
                    }
                    let est = m.into_established().expect("established");
                    Status::Established(Done {
                        gateway_key: Some(est.gateway_key),
                        peripheral: None,
                        keys: est.session.danger_export_keys(),
                        session_id: est.session.id(),
                    })
                } else {
                    Status::Message
                }
            }
        };
        let e = Eval { status, sent };
        self.p_memo.insert((i, input), e.clone());
        e
    }

    /// Gateway instance `index` (rogue or not) after `inputs`.
    fn eval_gateway(&mut self, rogue: bool, index: usize, inputs: &[GInput]) -> Eval {
        let key = (rogue, index, inputs.to_vec());
        if let Some(e) = self.g_memo.get(&key) {
            return e.clone();
        }
        self.evaluations += 1;
        let mut r = rng(2_000 + index as u64);
        let mut g = GatewayHandshake::new(GatewayConfig::new(self.world.gateway_key(rogue)), NOW);
        let mut status = Status::Message;
        let mut sent = Vec::new();
        // Replaying the backend's answers needs the same replay memory the
        // answer was given with: the answer (vouched or not) is the input, and
        // a vouch is recomputed, which is deterministic (Ed25519).
        for input in inputs {
            sent.clear();
            let ok = match *input {
                GInput::Msg(m) => g.handle_input(NOW, &self.msgs[m], &mut r).is_ok(),
                GInput::Vouch(vouched) => {
                    let Status::Vouch(hello, e_g) = &status else {
                        unreachable!("a vouch input only follows a vouch request");
                    };
                    let answer = if vouched {
                        self.world.vouch(hello, *e_g, rogue, &BTreeSet::new()).0
                    } else {
                        VouchAnswer::Refused(Refusal::Denied)
                    };
                    g.handle_vouch(NOW, answer).is_ok()
                }
                GInput::Forged => {
                    let Status::Vouch(hello, e_g) = &status else {
                        unreachable!("a forged vouch only follows a vouch request");
                    };
                    match self.world.forged_vouch(hello, *e_g) {
                        Some(answer) => g.handle_vouch(NOW, answer).is_ok(),
                        None => false,
                    }
                }
                GInput::Ticket(found) => {
                    let ticket = found.then(|| self.world.gateway_ticket());
                    g.handle_ticket(NOW, ticket.as_ref(), &mut r).is_ok()
                }
            };
            status = if !ok {
                Status::Failed
            } else if g.is_established() {
                Status::Message // replaced below
            } else {
                match g.poll_event() {
                    Some(GatewayEvent::NeedVouch(req)) => {
                        Status::Vouch(req.hello, req.gateway_ephemeral)
                    }
                    Some(GatewayEvent::NeedTicket(_)) => Status::Ticket,
                    None => Status::Message,
                }
            };
            if let Some(out) = g.poll_transmit() {
                sent.push(out);
            }
            if status == Status::Failed || g.is_established() {
                break;
            }
        }
        if g.is_established() {
            let est = g.into_established().expect("established");
            status = Status::Established(Done {
                gateway_key: None,
                peripheral: Some(est.peripheral.id),
                keys: est.session.danger_export_keys(),
                session_id: est.session.id(),
            });
        }
        let e = Eval { status, sent };
        self.g_memo.insert(key, e.clone());
        e
    }

    fn initial(&mut self) -> State {
        for i in 0..PERIPHERALS.len() {
            let e = self.eval_peripheral(i, None);
            for m in &e.sent {
                self.intern(m, Sender::Peripheral(i));
            }
        }
        State {
            peripherals: vec![None; PERIPHERALS.len()],
            gateways: Vec::new(),
            seen: BTreeSet::new(),
            ticket: true,
        }
    }

    /// Every message sent so far in this state.
    fn pool(&mut self, s: &State) -> BTreeSet<usize> {
        let mut pool = BTreeSet::new();
        for i in 0..PERIPHERALS.len() {
            for m in self.eval_peripheral(i, None).sent {
                pool.insert(self.intern(&m, Sender::Peripheral(i)));
            }
            if let Some(input) = s.peripherals[i] {
                for m in self.eval_peripheral(i, Some(input)).sent {
                    pool.insert(self.intern(&m, Sender::Peripheral(i)));
                }
            }
        }
        for (j, (rogue, inputs)) in s.gateways.iter().enumerate() {
            for k in 1..=inputs.len() {
                for m in self.eval_gateway(*rogue, j, &inputs[..k]).sent {
                    pool.insert(self.intern(&m, Sender::Gateway(j)));
                }
            }
        }
        pool
    }

    /// Whether a move that leaves an instance failed can be skipped: a failed
    /// instance never completes and never acts again, so the state is covered
    /// by the one where the move never happened (that instance can still
    /// receive anything there), unless failing sent something new.
    fn prunable(&mut self, e: &Eval, pool: &BTreeSet<usize>) -> bool {
        e.status == Status::Failed
            && e.sent.iter().all(|m| {
                self.msg_ids
                    .get(m.as_slice())
                    .is_some_and(|id| pool.contains(id))
            })
    }

    fn successors(&mut self, s: &State) -> Vec<State> {
        let pool = self.pool(s);
        let mut next = Vec::new();
        // A peripheral instance waiting for its answer receives a pool message.
        for i in 0..PERIPHERALS.len() {
            if s.peripherals[i].is_some() {
                continue;
            }
            for &m in &pool {
                let e = self.eval_peripheral(i, Some(m));
                if self.prunable(&e, &pool) {
                    continue;
                }
                let mut t = s.clone();
                t.peripherals[i] = Some(m);
                next.push(t);
            }
        }
        // A gateway instance moves on.
        for j in 0..s.gateways.len() {
            let (rogue, inputs) = s.gateways[j].clone();
            match self.eval_gateway(rogue, j, &inputs).status {
                Status::Message => {
                    for &m in &pool {
                        let mut t = s.clone();
                        t.gateways[j].1.push(GInput::Msg(m));
                        let e = self.eval_gateway(rogue, j, &t.gateways[j].1);
                        if !self.prunable(&e, &pool) {
                            next.push(t);
                        }
                    }
                }
                Status::Vouch(hello, e_g) => {
                    let (answer, remembered) = self.world.vouch(&hello, e_g, rogue, &s.seen);
                    let mut t = s.clone();
                    t.gateways[j]
                        .1
                        .push(GInput::Vouch(matches!(answer, VouchAnswer::Vouched(_))));
                    t.seen.extend(remembered);
                    next.push(t);
                    if rogue {
                        let mut t = s.clone();
                        t.gateways[j].1.push(GInput::Forged);
                        next.push(t);
                    }
                }
                Status::Ticket => {
                    // Honest gateways hold the ticket; a lookup takes it.
                    let found = s.ticket && !rogue;
                    let mut t = s.clone();
                    t.gateways[j].1.push(GInput::Ticket(found));
                    t.ticket &= !found;
                    next.push(t);
                }
                Status::Established(_) | Status::Failed => {}
            }
        }
        // A new gateway instance starts on any pool message.
        let honest = s.gateways.iter().filter(|(r, _)| !r).count();
        let rogues = s.gateways.len() - honest;
        for (rogue, room) in [
            (false, honest < self.bounds.gateways),
            (true, rogues < self.bounds.rogues),
        ] {
            if !room {
                continue;
            }
            for &m in &pool {
                let e = self.eval_gateway(rogue, s.gateways.len(), &[GInput::Msg(m)]);
                if self.prunable(&e, &pool) {
                    continue;
                }
                let mut t = s.clone();
                t.gateways.push((rogue, vec![GInput::Msg(m)]));
                next.push(t);
            }
        }
        next
    }

    /// The invariants of the module doc; `Err` names the one broken.
    fn check(&mut self, s: &State) -> Result<Outcome, String> {
        let mut outcome = Outcome::default();
        let first_msg = |ex: &mut Self, i: usize| -> usize {
            let m = ex.eval_peripheral(i, None).sent[0].clone();
            ex.intern(&m, Sender::Peripheral(i))
        };
        let g_key = self.world.gateway.public_key();
        let mut completed_with: HashMap<usize, usize> = HashMap::new();
        for (j, (rogue, inputs)) in s.gateways.clone().iter().enumerate() {
            let Status::Established(done) = self.eval_gateway(*rogue, j, inputs).status else {
                continue;
            };
            outcome.gateway_done = true;
            let GInput::Msg(first) = inputs[0] else {
                unreachable!()
            };
            // Invariant 2: the peripheral it learned made the first message.
            let makers: Vec<usize> = self.senders[&first]
                .iter()
                .filter_map(|s| match s {
                    Sender::Peripheral(i) => Some(*i),
                    Sender::Gateway(_) => None,
                })
                .collect();
            let [maker] = makers[..] else {
                return Err(format!(
                    "gateway {j} completed on a message no peripheral made alone: {makers:?}"
                ));
            };
            let spec = PERIPHERALS[maker];
            if *rogue && spec.device != Device::M {
                return Err(format!(
                    "the attacker's gateway (instance {j}) completed with {:?}",
                    spec.device
                ));
            }
            if spec.device == Device::X {
                return Err(format!(
                    "gateway {j} accepted X, which the policy does not allow"
                ));
            }
            if done.peripheral != Some(self.world.id_of(spec.device)) {
                return Err(format!(
                    "gateway {j} learned {:?}, but the first message was {:?}'s",
                    done.peripheral, spec.device
                ));
            }
            let vouched_or_ticket = inputs
                .iter()
                .any(|i| matches!(i, GInput::Vouch(true) | GInput::Ticket(true)));
            if !vouched_or_ticket {
                return Err(format!("gateway {j} completed without a vouch or a ticket"));
            }
            let Some(GInput::Msg(finish)) = inputs.last() else {
                unreachable!()
            };
            if !self.senders[finish].contains(&Sender::Peripheral(maker)) {
                return Err(format!(
                    "gateway {j} accepted a Finish not made by peripheral instance {maker}"
                ));
            }
            // Invariant 4: one completion per peripheral handshake.
            if let Some(other) = completed_with.insert(maker, j) {
                return Err(format!(
                    "peripheral instance {maker} completed with gateway instances {other} and {j}"
                ));
            }
            if spec.resume {
                outcome.resumed = true;
            }
        }
        for (i, spec) in PERIPHERALS.iter().enumerate() {
            let Some(input) = s.peripherals[i] else {
                continue;
            };
            let Status::Established(done) = self.eval_peripheral(i, Some(input)).status else {
                continue;
            };
            outcome.peripheral_done = true;
            // Invariant 1: the Response came from a gateway instance that
            // started on this handshake's first message and was vouched for,
            // and the key learned is that instance's.
            let first = first_msg(self, i);
            let makers: Vec<usize> = self.senders[&input]
                .iter()
                .filter_map(|s| match s {
                    Sender::Gateway(j) => Some(*j),
                    Sender::Peripheral(_) => None,
                })
                .collect();
            let [j] = makers[..] else {
                return Err(format!(
                    "peripheral instance {i} accepted a Response made by {makers:?}"
                ));
            };
            let (rogue, inputs) = s.gateways[j].clone();
            if done.gateway_key != Some(self.world.gateway_key(rogue)) {
                return Err(format!(
                    "peripheral instance {i} learned a key that is not the answering gateway's"
                ));
            }
            if spec.device == Device::P && (rogue || done.gateway_key != Some(g_key)) {
                return Err(format!(
                    "the honest peripheral (instance {i}) completed with the attacker's gateway"
                ));
            }
            if inputs[0] != GInput::Msg(first) {
                return Err(format!(
                    "peripheral instance {i} accepted a Response to another handshake"
                ));
            }
            if !inputs
                .iter()
                .any(|x| matches!(x, GInput::Vouch(true) | GInput::Ticket(true)))
            {
                return Err(format!(
                    "peripheral instance {i} accepted a Response nobody vouched for"
                ));
            }
            // Invariant 3: if that gateway instance completed too, same keys.
            if let Status::Established(g_done) = self.eval_gateway(rogue, j, &inputs).status {
                if g_done.keys != (done.keys.1, done.keys.0) || g_done.session_id != done.session_id
                {
                    return Err(format!(
                        "peripheral instance {i} and gateway instance {j} hold different keys"
                    ));
                }
                outcome.both_done = true;
            }
        }
        Ok(outcome)
    }

    /// Explores every reachable state; the first violation is returned with
    /// the state that shows it.
    fn run(&mut self) -> Result<Report, (String, State)> {
        let init = self.initial();
        let mut seen: HashSet<State> = HashSet::new();
        let mut stack = vec![init.clone()];
        seen.insert(init);
        let mut report = Report::default();
        while let Some(s) = stack.pop() {
            report.states += 1;
            match self.check(&s) {
                Ok(o) => {
                    report.peripheral_done |= o.peripheral_done;
                    report.gateway_done |= o.gateway_done;
                    report.both_done |= o.both_done;
                    report.resumed |= o.resumed;
                }
                Err(why) => return Err((why, s)),
            }
            for t in self.successors(&s) {
                if seen.insert(t.clone()) {
                    stack.push(t);
                }
            }
        }
        report.messages = self.msgs.len();
        report.evaluations = self.evaluations;
        Ok(report)
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    peripheral_done: bool,
    gateway_done: bool,
    both_done: bool,
    resumed: bool,
}

#[derive(Debug, Default)]
struct Report {
    states: usize,
    messages: usize,
    evaluations: usize,
    peripheral_done: bool,
    gateway_done: bool,
    both_done: bool,
    resumed: bool,
}

#[test]
fn no_reachable_state_breaks_authentication_or_key_agreement() {
    let bounds = Bounds {
        gateways: 2,
        rogues: 1,
    };
    let mut ex = Explorer::new(Flaw::None, bounds);
    let report = match ex.run() {
        Ok(r) => r,
        Err((why, state)) => panic!("invariant broken: {why}\nstate: {state:?}"),
    };
    println!("model check ({bounds:?}): {report:?}");
    // The exploration is not vacuous: honest runs complete, both ways and by
    // resumption, and the attacker's pool grew beyond the first messages.
    assert!(
        report.both_done,
        "no state where both ends completed: the model is broken"
    );
    assert!(
        report.resumed,
        "no resumption completed: the model is broken"
    );
    assert!(report.messages > PERIPHERALS.len() + 4);
    assert!(report.states > 1_000, "only {} states", report.states);
}

#[test]
fn a_planted_flaw_is_caught() {
    // A backend that vouches X at G, which the policy forbids: the checker
    // must find the gateway instance that accepted X.
    let mut ex = Explorer::new(
        Flaw::BackendIgnoresPolicy,
        Bounds {
            gateways: 1,
            rogues: 0,
        },
    );
    let err = ex.run().expect_err("the planted flaw must be found");
    assert!(
        err.0.contains("accepted X"),
        "found something else: {}",
        err.0
    );
}

#[test]
fn a_planted_old_key_still_trusted_is_caught() {
    // Devices that kept trusting the stolen key (as the first rotation
    // design let them): the attacker's own vouch, signed by that key, wins
    // the honest peripheral. The checker must find it; with the rotation
    // applied (the test above) no state does.
    let bounds = Bounds {
        gateways: 1,
        rogues: 1,
    };
    let mut ex = Explorer::new(Flaw::StolenKeyStillTrusted, bounds);
    let err = ex.run().expect_err("the planted flaw must be found");
    assert!(
        err.0.contains("attacker") || err.0.contains("nobody vouched"),
        "{}",
        err.0
    );
}
