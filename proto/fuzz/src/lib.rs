//! The fuzz harnesses of `vouch-proto`, one function per target (DESIGN.md §7).
//!
//! Each file in `fuzz_targets/` only calls the function of the same name here,
//! so the harnesses also run as ordinary tests (`tests/corpus.rs` runs every
//! seed through them) and the seed corpus is generated from the same fixtures
//! ([`seeds`]).
//!
//! Every harness is deterministic: the keys come from fixed seeds, and every
//! random draw of a state machine comes from a ChaCha20 RNG re-seeded for each
//! input. Harnesses return whether the input got all the way through (a
//! message decoded, a handshake established); the fuzzer ignores that, the
//! corpus test checks it.
//!
//! Panics and `expect` are the point here: a panic is a finding.

use std::sync::{Mutex, OnceLock};

use vouch_proto::anchor::{AnchorAction, AnchorSet, AnchorUpdate};
use vouch_proto::error::Refusal;
use vouch_proto::framing::{
    stream, Fragmenter, Reassembler, ReassemblyLimits, ReassemblyPool, FLAG_END, FLAG_START,
    MAX_FRAGMENT,
};
use vouch_proto::handshake::backend::BackendKeys;
use vouch_proto::handshake::gateway::{GatewayEvent, GatewayHandshake, GatewayTicket};
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake, PeripheralTicket};
use vouch_proto::keys::{KeyId, PeripheralId};
use vouch_proto::session::{CloseReason, Inbound, Session};
use vouch_proto::testing::{self, Pair};
use vouch_proto::wire::backend::{
    decode_body, encode_body, AnchorUpdateBatch, FeedBatch, FeedChange, FeedEvent, PeripheralInfo,
    EventTimes, SessionEvent, SessionEventKind, SessionReport, SessionReportAnswer, SessionVerdict,
    VouchAnswer, VouchBatchAnswer, VouchBatchRequest, VouchRequest,
};
use vouch_proto::wire::{encode_alert, Message, Scope, MAX_HANDSHAKE_MESSAGE, MAX_MESSAGE};
use vouch_proto::{AlertCode, ApiMisuse, Error, FramingError, Timestamp};

/// Every target, in the order `run.sh` runs them.
pub const TARGETS: &[&str] = &[
    "decode_message",
    "decode_backend_body",
    "reassembler",
    "peripheral_handshake",
    "gateway_handshake",
    "session_open",
    "anchor_update",
    "tcp_stream",
];

/// Runs the harness of `target` on `data`; returns what the harness returns.
pub fn run(target: &str, data: &[u8]) -> bool {
    match target {
        "decode_message" => decode_message(data),
        "decode_backend_body" => decode_backend_body(data),
        "reassembler" => reassembler(data),
        "peripheral_handshake" => peripheral_handshake(data),
        "gateway_handshake" => gateway_handshake(data),
        "session_open" => session_open(data),
        "anchor_update" => anchor_update(data),
        "tcp_stream" => tcp_stream(data),
        other => panic!("no fuzz target {other}"),
    }
}

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// Seed of the [`Pair`] whose keys every handshake harness uses.
pub const PAIR_SEED: u64 = 0x7e57_0001;
/// Seed of the peripheral's RNG, re-seeded for every input.
pub const PERIPHERAL_RNG_SEED: u64 = 0x7e57_0002;
/// Seed of the gateway's RNG, re-seeded for every input.
pub const GATEWAY_RNG_SEED: u64 = 0x7e57_0003;
/// Seed of the pair whose session `session_open` attacks.
pub const SESSION_PAIR_SEED: u64 = 0x7e57_0004;
/// Seed of the RNG of the session harness's handshake.
pub const SESSION_RNG_SEED: u64 = 0x7e57_0005;
/// Seed of an unrelated pair: well-formed messages under other keys.
pub const OTHER_PAIR_SEED: u64 = 0x7e57_0006;
/// The serial the anchor harness's set has already applied.
pub const ANCHOR_SERIAL: u32 = 1000;

/// One full handshake and one resumption, run once with the fixed seeds: the
/// real bytes every handshake harness compares against.
pub struct Fixture {
    /// Keys of the peripheral, the gateway and the backend.
    pub pair: Pair,
    /// The peripheral's Hello.
    pub hello: Vec<u8>,
    /// The gateway's request to the backend.
    pub vouch_request: VouchRequest,
    /// The backend's answer.
    pub vouch_answer: VouchAnswer,
    /// The gateway's Response.
    pub response: Vec<u8>,
    /// The peripheral's Finish.
    pub finish: Vec<u8>,
    /// The peripheral's resumption ticket, as postcard (it is not `Clone`).
    pub peripheral_ticket: Vec<u8>,
    /// The gateway's resumption ticket.
    pub gateway_ticket: GatewayTicket,
    /// The peripheral's ResumeHello.
    pub resume_hello: Vec<u8>,
    /// The gateway's ResumeResponse.
    pub resume_response: Vec<u8>,
    /// The peripheral's Finish of the resumption.
    pub resume_finish: Vec<u8>,
    /// A second backend key, committed to by [`Fixture::anchors`].
    pub second_backend: BackendKeys,
    /// Anchor 1 (the pair's backend) with the commitment to key 2, serial
    /// [`ANCHOR_SERIAL`].
    pub anchors: AnchorSet,
}

/// The fixture, built on first use.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build_fixture)
}

fn poll_peripheral(p: &mut PeripheralHandshake) -> Option<Vec<u8>> {
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    p.poll_transmit(&mut buf).map(|n| buf[..n].to_vec())
}

/// The peripheral of a full handshake, with its Hello already polled out.
fn start_peripheral(pair: &Pair) -> (PeripheralHandshake, Vec<u8>) {
    let mut rng = testing::rng(PERIPHERAL_RNG_SEED);
    let mut p = PeripheralHandshake::start(
        &PeripheralConfig::default(),
        pair.peripheral_id,
        &pair.peripheral_key,
        &pair.anchors,
        pair.now,
        &mut rng,
    )
    .expect("the peripheral starts");
    let hello = poll_peripheral(&mut p).expect("a hello is queued");
    (p, hello)
}

/// The peripheral of a resumption, with its ResumeHello already polled out.
fn resume_peripheral(ticket: &[u8], now: Timestamp) -> (PeripheralHandshake, Vec<u8>) {
    let ticket: PeripheralTicket = postcard::from_bytes(ticket).expect("the ticket decodes");
    let mut rng = testing::rng(PERIPHERAL_RNG_SEED);
    let anchors = testing::Pair::new(PAIR_SEED).anchors;
    let mut p =
        PeripheralHandshake::resume(&PeripheralConfig::default(), &ticket, &anchors, now, &mut rng)
            .expect("the peripheral resumes");
    let hello = poll_peripheral(&mut p).expect("a resume hello is queued");
    (p, hello)
}

fn build_fixture() -> Fixture {
    let pair = Pair::new(PAIR_SEED);
    let now = pair.now;

    // Full handshake.
    let (mut p, hello) = start_peripheral(&pair);
    let mut g = GatewayHandshake::new(pair.gateway_config(), now);
    let mut grng = testing::rng(GATEWAY_RNG_SEED);
    g.handle_input(now, &hello, &mut grng)
        .expect("the gateway takes the hello");
    let Some(GatewayEvent::NeedVouch(vouch_request)) = g.poll_event() else {
        panic!("the gateway did not ask for a vouch");
    };
    let vouch_answer = pair.backend_vouch(&vouch_request);
    assert!(matches!(vouch_answer, VouchAnswer::Vouched(_)));
    g.handle_vouch(now, vouch_answer.clone())
        .expect("the gateway takes the vouch");
    let response = g.poll_transmit().expect("a response is queued");
    p.handle_input(now, &response)
        .expect("the peripheral takes the response");
    let finish = poll_peripheral(&mut p).expect("a finish is queued");
    g.handle_input(now, &finish, &mut grng)
        .expect("the gateway takes the finish");
    let p_est = p.into_established().expect("peripheral established");
    let g_est = g.into_established().expect("gateway established");
    let peripheral_ticket = postcard::to_allocvec(&p_est.ticket).expect("the ticket encodes");
    let gateway_ticket = g_est.ticket;

    // Resumption with the tickets of that handshake.
    let (mut p, resume_hello) = resume_peripheral(&peripheral_ticket, now);
    let mut g = GatewayHandshake::new(pair.gateway_config(), now);
    let mut grng = testing::rng(GATEWAY_RNG_SEED);
    g.handle_input(now, &resume_hello, &mut grng)
        .expect("the gateway takes the resume hello");
    assert_eq!(
        g.poll_event(),
        Some(GatewayEvent::NeedTicket(gateway_ticket.id))
    );
    g.handle_ticket(now, Some(&gateway_ticket), &mut grng)
        .expect("the gateway takes the ticket");
    let resume_response = g.poll_transmit().expect("a resume response is queued");
    p.handle_input(now, &resume_response)
        .expect("the peripheral takes the resume response");
    let resume_finish = poll_peripheral(&mut p).expect("a finish is queued");
    g.handle_input(now, &resume_finish, &mut grng)
        .expect("the gateway takes the finish");
    assert!(g.is_established() && p.is_established());

    let second_backend = BackendKeys::generate(KeyId(2), &mut testing::rng(PAIR_SEED + 100));
    let anchors = AnchorSet::new(
        pair.backend.anchor(),
        second_backend.anchor().digest(),
        ANCHOR_SERIAL,
    );

    Fixture {
        pair,
        hello,
        vouch_request,
        vouch_answer,
        response,
        finish,
        peripheral_ticket,
        gateway_ticket,
        resume_hello,
        resume_response,
        resume_finish,
        second_backend,
        anchors,
    }
}

/// The pair whose sessions `session_open` attacks (its handshake needs `&mut`).
fn session_pair() -> &'static Mutex<Pair> {
    static PAIR: OnceLock<Mutex<Pair>> = OnceLock::new();
    PAIR.get_or_init(|| Mutex::new(Pair::new(SESSION_PAIR_SEED)))
}

// ---------------------------------------------------------------------------
// Input splitting
// ---------------------------------------------------------------------------

/// Splits off a chunk with a one-byte length, or `0xff` and a u16 LE length.
/// A length beyond the input takes what is left.
pub fn split_fragment(data: &[u8]) -> (&[u8], &[u8]) {
    match data {
        [0xff, a, b, rest @ ..] => {
            let n = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
            rest.split_at(n)
        }
        [l, rest @ ..] => rest.split_at(usize::from(*l).min(rest.len())),
        [] => (&[], &[]),
    }
}

/// Appends `chunk` in the format [`split_fragment`] reads.
pub fn push_fragment(out: &mut Vec<u8>, chunk: &[u8]) {
    if chunk.len() < 0xff {
        out.push(chunk.len() as u8);
    } else {
        let n = u16::try_from(chunk.len()).expect("chunk under 64 KiB");
        out.push(0xff);
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(chunk);
}

/// Splits off a chunk with a u16 LE length (short input: all of it).
pub fn split_u16(data: &[u8]) -> (&[u8], &[u8]) {
    match data {
        [a, b, rest @ ..] => {
            let n = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
            rest.split_at(n)
        }
        _ => (data, &[]),
    }
}

/// Appends `chunk` in the format [`split_u16`] reads.
pub fn push_u16(out: &mut Vec<u8>, chunk: &[u8]) {
    let n = u16::try_from(chunk.len()).expect("chunk under 64 KiB");
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(chunk);
}

// ---------------------------------------------------------------------------
// decode_message
// ---------------------------------------------------------------------------

/// `Message::decode` on arbitrary bytes. Whatever decodes re-encodes to exactly
/// the same bytes (one encoding per message: the transcript hashes and the
/// record AAD must not have a second spelling), and decodes again to the same
/// value. Returns whether the bytes decoded.
pub fn decode_message(data: &[u8]) -> bool {
    let Ok(msg) = Message::decode(data) else {
        return false;
    };
    assert!(data.len() <= MAX_MESSAGE);
    assert_eq!(data[1], msg.message_type() as u8);
    let mut buf = [0u8; MAX_MESSAGE + 16];
    let n = msg.encode(&mut buf).expect("a decoded message re-encodes");
    assert_eq!(
        &buf[..n],
        data,
        "decode accepted a non-canonical encoding of {msg:?}"
    );
    assert_eq!(Message::decode(&buf[..n]).as_ref(), Ok(&msg));
    true
}

// ---------------------------------------------------------------------------
// decode_backend_body
// ---------------------------------------------------------------------------

/// Decodes one body type; on success checks that `encode_body` gives back
/// exactly the input (decoding rejects every non-canonical encoding, so each
/// body has one), and that it decodes again to the same value.
macro_rules! body_round_trip {
    ($data:expr, $t:ty) => {{
        match decode_body::<$t>($data) {
            Ok(v) => {
                let enc = encode_body(&v);
                assert_eq!(enc, $data, "decode_body accepted a non-canonical {v:?}");
                let back = decode_body::<$t>(&enc).expect("a re-encoded body decodes");
                assert_eq!(back, v);
                true
            }
            Err(_) => false,
        }
    }};
}

/// Every gateway ↔ backend body decoder on the same bytes. Returns whether
/// any of them decoded.
pub fn decode_backend_body(data: &[u8]) -> bool {
    let decoded = [
        body_round_trip!(data, VouchRequest),
        body_round_trip!(data, VouchBatchRequest),
        body_round_trip!(data, VouchAnswer),
        body_round_trip!(data, VouchBatchAnswer),
        body_round_trip!(data, PeripheralInfo),
        body_round_trip!(data, FeedBatch),
        body_round_trip!(data, SessionReport),
        body_round_trip!(data, SessionReportAnswer),
        body_round_trip!(data, AnchorUpdateBatch),
    ];
    decoded.contains(&true)
}

// ---------------------------------------------------------------------------
// reassembler
// ---------------------------------------------------------------------------

/// Links the reassembler harness spreads fragments over.
const LINKS: usize = 8;
/// Reassemblies the pool allows at once.
const POOL_CAP: usize = 3;
/// Buffer of the small reassembler.
const SMALL: usize = 64;

/// Checks a message that came out of reassembly, and that it survives
/// fragmenting and reassembling again at the smallest and the usual MTU.
fn check_reassembled(msg: &[u8], fragment: &[u8], max: usize) {
    assert!(
        msg.len() <= max,
        "{} bytes reassembled, limit {max}",
        msg.len()
    );
    if fragment[0] & (FLAG_START | FLAG_END) == FLAG_START | FLAG_END {
        assert_eq!(msg, &fragment[1..]);
    }
    for mtu in [23, 247] {
        let mut f = Fragmenter::new(msg, mtu).expect("a reassembled message can be fragmented");
        let mut r: Reassembler = Reassembler::new(ReassemblyLimits::default());
        let mut buf = [0u8; MAX_FRAGMENT];
        let mut count = 0;
        let mut out = None;
        while let Some(n) = f.next_into(&mut buf) {
            count += 1;
            assert!(out.is_none(), "fragments after the end");
            if let Some(m) = r
                .push(Timestamp(0), &buf[..n])
                .expect("our own fragments reassemble")
            {
                out = Some(m.to_vec());
            }
        }
        assert_eq!(out.as_deref(), Some(msg));
        assert_eq!(Some(count), Fragmenter::count(msg.len(), mtu).ok());
    }
}

/// One fragment into a lone reassembler, checking its invariants.
fn push_lone<const N: usize>(r: &mut Reassembler<N>, now: Timestamp, fragment: &[u8], max: usize) {
    let got = r.push(now, fragment).map(|m| m.map(<[u8]>::to_vec));
    match got {
        Ok(Some(m)) => {
            assert!(!r.in_progress());
            check_reassembled(&m, fragment, max);
        }
        Ok(None) => assert!(r.in_progress()),
        Err(_) => assert!(!r.in_progress(), "an error keeps a partial message"),
    }
    assert_eq!(r.poll_timeout().is_some(), r.in_progress());
}

/// Fragments into a `ReassemblyPool` (cap 3, 8 links), per-link
/// `Reassembler`s (the reference the pool must agree with), one `Reassembler`
/// fed everything, and one with a 64-byte buffer.
///
/// Input: a sequence of `header ‖ fragment`, where `fragment` is in
/// [`split_fragment`]'s format and `header` is: bits 0–2 the link, bit 3 "call
/// `handle_timeout` first", bits 4–7 seconds to advance the clock by.
///
/// Checks: every completed message is within its limit (`MAX_MESSAGE`, or 64)
/// and survives fragmenting again; the pool never holds more than its cap, has
/// a deadline exactly when it holds something, and gives the same results as
/// the per-link reassemblers. Returns whether any message completed.
pub fn reassembler(data: &[u8]) -> bool {
    let limits = ReassemblyLimits::default();
    let mut pool: ReassemblyPool<u8> = ReassemblyPool::new(POOL_CAP, limits);
    let mut links: Vec<Reassembler> = (0..LINKS).map(|_| Reassembler::new(limits)).collect();
    let mut lone: Box<Reassembler> = Box::new(Reassembler::new(limits));
    let mut small: Reassembler<SMALL> = Reassembler::new(limits);
    let mut now = Timestamp(0);
    let mut completed = false;
    let mut rest = data;
    while let Some((&header, tail)) = rest.split_first() {
        let (fragment, tail) = split_fragment(tail);
        rest = tail;
        now = now.add_millis(u64::from(header >> 4) * 1000);
        let key = header & 0x07;
        if header & 0x08 != 0 {
            let dropped = pool.handle_timeout(now);
            let expected: usize = links
                .iter_mut()
                .map(|r| usize::from(r.handle_timeout(now)))
                .sum();
            assert_eq!(dropped, expected);
            assert!(pool.poll_timeout().is_none_or(|d| d > now));
        }

        let got = pool.push(&key, now, fragment);
        assert!(pool.in_progress() <= POOL_CAP, "pool over its cap");
        let link = &mut links[usize::from(key)];
        match &got {
            Err(FramingError::TooManyReassemblies) => {
                assert!(!link.in_progress());
                assert_eq!(pool.in_progress(), POOL_CAP);
                assert_eq!(fragment[0] & (FLAG_START | FLAG_END), FLAG_START);
            }
            _ => {
                let want = link.push(now, fragment).map(|m| m.map(<[u8]>::to_vec));
                assert_eq!(got, want, "the pool disagrees with a lone reassembler");
            }
        }
        let busy = links.iter().filter(|r| r.in_progress()).count();
        assert_eq!(pool.in_progress(), busy);
        assert_eq!(
            pool.poll_timeout(),
            links.iter().filter_map(|r| r.poll_timeout()).min()
        );
        if let Ok(Some(m)) = &got {
            completed = true;
            check_reassembled(m, fragment, MAX_MESSAGE);
        }

        push_lone(&mut lone, now, fragment, MAX_MESSAGE);
        push_lone(&mut small, now, fragment, SMALL);
    }
    completed
}

// ---------------------------------------------------------------------------
// peripheral_handshake
// ---------------------------------------------------------------------------

/// A peripheral that has sent its Hello (input byte 0, bit 0 clear) or its
/// ResumeHello (bit set) takes the rest of the input as the gateway's answer.
///
/// It becomes established only from the real Response (ResumeResponse), and
/// then queues exactly the real Finish. Any failure queues the alert the
/// error maps to (none if the peer sent an alert), and is sticky: the same
/// bytes, the real answer and a timeout all get the same error, and nothing
/// more is sent. Returns whether it became established.
pub fn peripheral_handshake(data: &[u8]) -> bool {
    let Some((&mode, answer)) = data.split_first() else {
        return false;
    };
    let fx = fixture();
    let now = fx.pair.now;
    let resume = mode & 1 == 1;
    let (mut p, first, real_answer, real_finish) = if resume {
        let (p, h) = resume_peripheral(&fx.peripheral_ticket, now);
        (p, h, &fx.resume_response, &fx.resume_finish)
    } else {
        let (p, h) = start_peripheral(&fx.pair);
        (p, h, &fx.response, &fx.finish)
    };
    let real_first = if resume { &fx.resume_hello } else { &fx.hello };
    assert_eq!(&first, real_first, "the fixture is not deterministic");

    match p.handle_input(now, answer) {
        Ok(()) => {
            assert_eq!(
                answer,
                real_answer.as_slice(),
                "established from bytes that are not the gateway's answer"
            );
            assert!(p.is_established());
            assert_eq!(poll_peripheral(&mut p).as_ref(), Some(real_finish));
            assert_eq!(
                p.handle_input(now, answer),
                Err(ApiMisuse::WrongState.into())
            );
            assert!(p.is_established());
            assert_eq!(p.poll_timeout(), None);
            let est = p.into_established().expect("established");
            assert_eq!(est.resumed, resume);
            true
        }
        Err(e) => {
            assert!(!p.is_established());
            assert_eq!(p.error(), Some(&e));
            let alert = match &e {
                Error::Alert(_) => None,
                other => Some(encode_alert(AlertCode::from(other)).to_vec()),
            };
            assert_eq!(poll_peripheral(&mut p), alert);
            assert_eq!(p.handle_input(now, answer), Err(e.clone()));
            assert_eq!(p.handle_input(now, real_answer), Err(e.clone()));
            p.handle_timeout(now.add_secs(3600));
            assert_eq!(p.error(), Some(&e));
            assert_eq!(poll_peripheral(&mut p), None);
            assert_eq!(p.poll_timeout(), None);
            assert!(!p.is_established());
            assert_eq!(p.into_established().err(), Some(e));
            false
        }
    }
}

// ---------------------------------------------------------------------------
// gateway_handshake
// ---------------------------------------------------------------------------

/// The alert a failed gateway queues for `e`.
fn gateway_alert(e: &Error) -> Option<Vec<u8>> {
    let code = match e {
        Error::Alert(_) => return None,
        Error::Refused(Refusal::Busy) | Error::Timeout => AlertCode::Busy,
        other => AlertCode::from(other),
    };
    Some(encode_alert(code).to_vec())
}

/// Checks a gateway that just failed with `$e`: the alert is queued, and
/// every later call returns `$e` and does nothing. (A macro, so it can use the
/// RNG of `testing::rng` without naming its type.)
macro_rules! check_gateway_failed {
    ($g:expr, $e:expr, $rng:expr) => {{
        let (g, e, rng) = (&mut $g, &$e, &mut $rng);
        let fx = fixture();
        let now = fx.pair.now;
        assert!(!g.is_established());
        assert_eq!(g.error(), Some(e));
        assert_eq!(g.poll_transmit(), gateway_alert(e));
        assert_eq!(g.poll_event(), None);
        assert_eq!(g.handle_input(now, &fx.hello, rng), Err(e.clone()));
        assert_eq!(g.handle_input(now, &fx.finish, rng), Err(e.clone()));
        assert_eq!(g.handle_vouch(now, fx.vouch_answer.clone()), Err(e.clone()));
        assert_eq!(
            g.handle_ticket(now, Some(&fx.gateway_ticket), rng),
            Err(e.clone())
        );
        g.handle_timeout(now.add_secs(3600));
        assert_eq!(g.error(), Some(e));
        assert_eq!(g.poll_transmit(), None);
        assert_eq!(g.poll_event(), None);
        assert_eq!(g.poll_timeout(), None);
    }};
}

/// A fresh gateway takes `part1` as the peripheral's first message, asks the
/// reference backend (`Pair::backend_vouch`) for a vouch or is handed the
/// fixture's resumption ticket, then takes `part2` as the Finish.
///
/// Input: `len ‖ part1 ‖ part2`, `len` one byte.
///
/// The backend vouches only for the real Hello, the ticket opens only for the
/// real ResumeHello, and the gateway becomes established only from the real
/// (first, Finish) pairs. Every failure is sticky and queues the right alert.
/// Returns whether it became established.
pub fn gateway_handshake(data: &[u8]) -> bool {
    let Some((&len, rest)) = data.split_first() else {
        return false;
    };
    let (part1, part2) = rest.split_at(usize::from(len).min(rest.len()));
    let fx = fixture();
    let now = fx.pair.now;
    let mut rng = testing::rng(GATEWAY_RNG_SEED);
    let mut g = GatewayHandshake::new(fx.pair.gateway_config(), now);

    macro_rules! fail_on_err {
        ($r:expr) => {
            if let Err(e) = $r {
                assert!(!g.is_established());
                check_gateway_failed!(g, e, rng);
                return false;
            }
        };
    }

    fail_on_err!(g.handle_input(now, part1, &mut rng));
    assert!(
        g.poll_transmit().is_none(),
        "the gateway answered by itself"
    );
    let resumed = match g.poll_event() {
        Some(GatewayEvent::NeedVouch(req)) => {
            assert_eq!(req.hello, part1);
            assert_eq!(
                req.gateway_ephemeral, fx.vouch_request.gateway_ephemeral,
                "the gateway RNG is not deterministic"
            );
            let answer = fx.pair.backend_vouch(&req);
            if matches!(answer, VouchAnswer::Vouched(_)) {
                assert_eq!(part1, fx.hello, "the backend vouched for a forged hello");
            }
            fail_on_err!(g.handle_vouch(now, answer));
            assert_eq!(g.poll_transmit().as_ref(), Some(&fx.response));
            false
        }
        Some(GatewayEvent::NeedTicket(id)) => {
            assert_eq!(&part1[3..19], &id.0);
            fail_on_err!(g.handle_ticket(now, Some(&fx.gateway_ticket), &mut rng));
            assert_eq!(part1, fx.resume_hello, "a forged resume hello was accepted");
            assert_eq!(g.poll_transmit().as_ref(), Some(&fx.resume_response));
            true
        }
        None => panic!("the gateway took a first message and asked for nothing"),
    };
    assert!(!g.is_established());
    fail_on_err!(g.handle_input(now, part2, &mut rng));
    assert!(g.is_established());
    let real = if resumed {
        (&fx.resume_hello, &fx.resume_finish)
    } else {
        (&fx.hello, &fx.finish)
    };
    assert_eq!(
        (part1, part2),
        (real.0.as_slice(), real.1.as_slice()),
        "established from bytes that are not the peripheral's"
    );
    assert_eq!(
        g.handle_input(now, part2, &mut rng),
        Err(ApiMisuse::WrongState.into())
    );
    assert!(g.is_established());
    let est = g.into_established().expect("established");
    assert_eq!(est.consumed_ticket.is_some(), resumed);
    true
}

// ---------------------------------------------------------------------------
// session_open
// ---------------------------------------------------------------------------

/// An established session (`Pair::full_handshake`) opens records made of fuzz
/// bytes.
///
/// Input: `flags ‖ records`, each record with a u16 LE length ([`split_u16`]),
/// at most 8. Flags: bit 0 clear, the peripheral's session receives, set, the
/// gateway's; bit 1 set, the clock stands at the session's expiry.
///
/// No fuzz record is ever accepted (no `Data`, no `Close`, no
/// `AnchorUpdate`), and none changes the session: afterwards it is open and
/// still takes the peer's next real record. Past expiry every call fails with
/// `SessionExpired` (then `SessionClosed`). Returns whether any record
/// decoded as a record message.
pub fn session_open(data: &[u8]) -> bool {
    let Some((&flags, mut rest)) = data.split_first() else {
        return false;
    };
    let mut pair = session_pair()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    pair.rng = testing::rng(SESSION_RNG_SEED);
    let (mut p, mut g) = pair.full_handshake().expect("the handshake completes");
    let (rx, tx) = if flags & 1 == 0 {
        (&mut p.session, &mut g.session)
    } else {
        (&mut g.session, &mut p.session)
    };
    let expired = flags & 2 != 0;
    let now = if expired { rx.expires_at() } else { pair.now };
    let mut out = [0u8; MAX_MESSAGE];
    let mut any_record = false;
    let mut opened = 0;
    while !rest.is_empty() && opened < 8 {
        let (record, tail) = split_u16(rest);
        rest = tail;
        any_record |= matches!(Message::decode(record), Ok(Message::Record(_)));
        match rx.open(now, record, &mut out) {
            Ok(inbound) => panic!("the session accepted fuzz bytes: {inbound:?}"),
            Err(e) if expired => {
                let want = if opened == 0 {
                    Error::SessionExpired
                } else {
                    Error::SessionClosed
                };
                assert_eq!(e, want);
                assert!(rx.is_closed());
            }
            Err(_) => assert!(!rx.is_closed(), "fuzz bytes closed the session"),
        }
        opened += 1;
    }
    if !expired {
        let mut record = [0u8; 64];
        let n = tx
            .seal_data(now, b"still here", &mut record)
            .expect("the peer seals");
        match rx.open(now, &record[..n], &mut out) {
            Ok(Inbound::Data(d)) => assert_eq!(d, b"still here"),
            other => panic!("the session no longer takes real records: {other:?}"),
        }
    }
    any_record
}

// ---------------------------------------------------------------------------
// anchor_update
// ---------------------------------------------------------------------------

/// Decodes an `AnchorUpdate` (postcard) and applies it to the fixture's anchor
/// set (anchor 1, committed to key 2, serial 1000). It is never accepted, and the set is
/// unchanged. Returns whether the bytes decoded.
pub fn anchor_update(data: &[u8]) -> bool {
    let Ok((update, _rest)) = postcard::take_from_bytes::<AnchorUpdate>(data) else {
        return false;
    };
    let enc = postcard::to_allocvec(&update).expect("an update encodes");
    assert!(enc.len() <= data.len());
    let back: AnchorUpdate = postcard::from_bytes(&enc).expect("a re-encoded update decodes");
    assert_eq!(back, update);

    let fx = fixture();
    let mut set = fx.anchors.clone();
    let result = set.apply(&update);
    assert!(
        result.is_err(),
        "an anchor update made of fuzz bytes was accepted: {update:?}"
    );
    assert_eq!(set, fx.anchors, "a refused update changed the set");
    true
}

// ---------------------------------------------------------------------------
// tcp_stream
// ---------------------------------------------------------------------------

/// The TCP transport's length-prefixed frames, parsed in one go: a fragment
/// or the error of a bad frame each, in order (SPEC.md §8.4: a frame of a
/// length no fragment has is reported and its announced bytes skipped).
fn parse_stream(mut data: &[u8]) -> Vec<Result<Vec<u8>, FramingError>> {
    let mut out = Vec::new();
    while let [a, b, rest @ ..] = data {
        let len = usize::from(u16::from_le_bytes([*a, *b]));
        if len == 0 {
            out.push(Err(FramingError::EmptyFragment));
            data = rest;
            continue;
        }
        if len > MAX_FRAGMENT {
            out.push(Err(FramingError::MessageTooLarge { max: MAX_FRAGMENT }));
            data = rest.get(len..).unwrap_or(&[]);
            continue;
        }
        if rest.len() < len {
            break;
        }
        out.push(Ok(rest[..len].to_vec()));
        data = &rest[len..];
    }
    out
}

/// `framing::stream::Decoder` on a byte stream cut into chunks.
///
/// Input: `chunk ‖ stream`: the stream is fed `chunk` bytes at a time (0
/// means 256). Whatever the chunking, the decoder yields exactly the
/// fragments (1 to 512 bytes) and bad-frame errors, in order, that a
/// one-pass parse of the whole stream finds, consumes input on every call,
/// and each fragment re-encodes (`stream::encode`) to its bytes. Returns
/// whether any fragment came out.
pub fn tcp_stream(data: &[u8]) -> bool {
    let Some((&chunk, wire)) = data.split_first() else {
        return false;
    };
    let chunk = if chunk == 0 { 256 } else { usize::from(chunk) };
    let want = parse_stream(wire);
    let mut decoder = stream::Decoder::default();
    let mut got = Vec::new();
    for part in wire.chunks(chunk) {
        let mut rest = part;
        while !rest.is_empty() {
            let (used, found) = decoder.push(rest);
            assert!(
                used >= 1 && used <= rest.len(),
                "used {used} of {}",
                rest.len()
            );
            match found {
                Ok(Some(f)) => {
                    assert!(!f.is_empty() && f.len() <= MAX_FRAGMENT);
                    let mut buf = [0u8; stream::PREFIX + MAX_FRAGMENT];
                    let n = stream::encode(f, &mut buf).expect("a decoded fragment encodes");
                    assert_eq!(&buf[stream::PREFIX..n], f);
                    got.push(Ok(f.to_vec()));
                }
                Ok(None) => {}
                Err(e) => got.push(Err(e)),
            }
            rest = &rest[used..];
        }
    }
    assert_eq!(got, want);
    got.iter().any(Result::is_ok)
}

// ---------------------------------------------------------------------------
// Seed corpus
// ---------------------------------------------------------------------------

/// Seals one record with `f` and returns its bytes.
fn seal(
    session: &mut Session,
    f: impl FnOnce(&mut Session, &mut [u8]) -> Result<usize, Error>,
) -> Vec<u8> {
    let mut buf = [0u8; MAX_MESSAGE];
    let n = f(session, &mut buf).expect("the record seals");
    buf[..n].to_vec()
}

/// One seed: target, file name, bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// The seed corpus: real messages from the fixtures, a few corrupted.
pub fn seeds() -> Vec<Seed> {
    let fx = fixture();
    let mut out: Vec<Seed> = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        out.push((target, name.to_string(), bytes));
    };

    // Records and an anchor update from an unrelated session: well-formed,
    // but under other keys.
    let mut other = Pair::new(OTHER_PAIR_SEED);
    let now = other.now;
    let (mut op, mut og) = other.full_handshake().expect("other handshake");
    let data_p2g = seal(&mut op.session, |s, b| s.seal_data(now, b"21.5 C", b));
    let data_g2p = seal(&mut og.session, |s, b| s.seal_data(now, &[0x42; 300], b));
    let update = AnchorUpdate::sign(
        7,
        AnchorAction::Add(fx.second_backend.anchor()),
        KeyId(1),
        other.backend.signing(),
    );
    let anchor_g2p = seal(&mut og.session, |s, b| {
        s.seal_anchor_update(now, &update, b)
    });
    let rekeyed = seal(&mut op.session, |s, b| {
        s.rekey()?;
        s.seal_data(now, b"epoch 1", b)
    });
    let close_p2g = seal(&mut op.session, |s, b| {
        s.seal_close(now, CloseReason::NORMAL, b)
    });

    // decode_message
    add("decode_message", "hello", fx.hello.clone());
    add("decode_message", "response", fx.response.clone());
    add("decode_message", "finish", fx.finish.clone());
    add("decode_message", "resume_hello", fx.resume_hello.clone());
    add(
        "decode_message",
        "resume_response",
        fx.resume_response.clone(),
    );
    add("decode_message", "resume_finish", fx.resume_finish.clone());
    add("decode_message", "record_data", data_p2g.clone());
    add("decode_message", "record_300", data_g2p.clone());
    add("decode_message", "record_anchor_update", anchor_g2p.clone());
    add("decode_message", "record_epoch1", rekeyed.clone());
    add("decode_message", "record_close", close_p2g.clone());
    for code in [
        AlertCode::HandshakeFailed,
        AlertCode::Busy,
        AlertCode::Unsupported,
        AlertCode::ResumptionRejected,
    ] {
        add(
            "decode_message",
            &format!("alert_{}", code as u8),
            encode_alert(code).to_vec(),
        );
    }

    // decode_backend_body
    let mut req2 = fx.vouch_request.clone();
    req2.hello.truncate(10);
    let info = PeripheralInfo {
        id: PeripheralId(*b"\x01\x02\x03\x04\x05\x06\x07\x08"),
        public_key: fx.pair.peripheral_key.public_key(),
        group: Some("greenhouse".into()),
        attributes: vec![
            ("name".into(), "sensor 7".into()),
            ("room".into(), "north".into()),
        ],
        scope: Scope::TELEMETRY,
    };
    add(
        "decode_backend_body",
        "vouch_request",
        encode_body(&fx.vouch_request),
    );
    add(
        "decode_backend_body",
        "vouch_batch_request",
        encode_body(&VouchBatchRequest {
            items: vec![fx.vouch_request.clone(), req2],
        }),
    );
    add(
        "decode_backend_body",
        "vouched",
        encode_body(&fx.vouch_answer),
    );
    add(
        "decode_backend_body",
        "refused_busy",
        encode_body(&VouchAnswer::Refused(Refusal::Busy)),
    );
    add(
        "decode_backend_body",
        "vouch_batch_answer",
        encode_body(&VouchBatchAnswer {
            items: vec![
                fx.vouch_answer.clone(),
                VouchAnswer::Refused(Refusal::Denied),
            ],
        }),
    );
    add("decode_backend_body", "peripheral_info", encode_body(&info));
    let peripheral = fx.pair.peripheral_id;
    let gateway = fx.pair.gateway_key.public_key();
    add(
        "decode_backend_body",
        "feed_batch",
        encode_body(&FeedBatch {
            events: vec![
                FeedEvent {
                    seq: 41,
                    at_ms: 1_790_000_000_000,
                    change: FeedChange::PeripheralRevoked(peripheral),
                },
                FeedEvent {
                    seq: 42,
                    at_ms: 1_790_000_000_500,
                    change: FeedChange::GatewaySuspended(gateway),
                },
                FeedEvent {
                    seq: 300,
                    at_ms: 1_790_000_001_000,
                    change: FeedChange::PolicyChanged,
                },
            ],
            next: 300,
        }),
    );
    add(
        "decode_backend_body",
        "session_report",
        encode_body(&SessionReport {
            events: vec![
                SessionEvent {
                    peripheral,
                    kind: SessionEventKind::Attached,
                    session_id: [1, 2, 3, 4, 5, 6, 7, 8],
                },
                SessionEvent {
                    peripheral,
                    kind: SessionEventKind::Detached,
                    session_id: [1, 2, 3, 4, 5, 6, 7, 8],
                },
            ],
            times: vec![
                EventTimes {
                    started_ms_ago: 5_000,
                    heard_ms_ago: 5_000,
                },
                EventTimes {
                    started_ms_ago: 5_000,
                    heard_ms_ago: 1_200,
                },
            ],
        }),
    );
    add(
        "decode_backend_body",
        "session_report_answer",
        encode_body(&SessionReportAnswer {
            items: vec![
                SessionVerdict::Accepted,
                SessionVerdict::CloneSuspected,
                SessionVerdict::Refused,
            ],
        }),
    );

    add(
        "decode_backend_body",
        "anchor_update_batch",
        encode_body(&AnchorUpdateBatch {
            updates: vec![
                AnchorUpdate::sign(
                    1,
                    AnchorAction::Add(fx.second_backend.anchor()),
                    KeyId(1),
                    fx.pair.backend.signing(),
                ),
                AnchorUpdate::sign(
                    2,
                    AnchorAction::Retire(KeyId(1)),
                    KeyId(2),
                    fx.second_backend.signing(),
                ),
            ],
            latest: 2,
        }),
    );

    // reassembler: header byte (link, timeout flag, seconds) then the fragment.
    let frames = |msg: &[u8], mtu: usize| -> Vec<Vec<u8>> {
        let mut f = Fragmenter::new(msg, mtu).expect("fragmenter");
        let mut buf = [0u8; MAX_FRAGMENT];
        let mut v = Vec::new();
        while let Some(n) = f.next_into(&mut buf) {
            v.push(buf[..n].to_vec());
        }
        v
    };
    let stream = |steps: &[(u8, &[u8])]| -> Vec<u8> {
        let mut v = Vec::new();
        for (h, frag) in steps {
            v.push(*h);
            push_fragment(&mut v, frag);
        }
        v
    };
    {
        // The hello at MTU 23 on link 0, interleaved with the 300-byte record
        // at MTU 23 on link 1.
        let a = frames(&fx.hello, 23);
        let b = frames(&data_g2p, 23);
        let mut steps: Vec<(u8, &[u8])> = Vec::new();
        for i in 0..a.len().max(b.len()) {
            if let Some(x) = a.get(i) {
                steps.push((0x00, x));
            }
            if let Some(x) = b.get(i) {
                steps.push((0x01, x));
            }
        }
        add("reassembler", "interleaved_mtu23", stream(&steps));
        // The record at MTU 247, then the response whole.
        let c = frames(&data_g2p, 247);
        let d = frames(&fx.response, 247);
        let steps: Vec<(u8, &[u8])> = c
            .iter()
            .map(|x| (0x02, x.as_slice()))
            .chain(d.iter().map(|x| (0x03, x.as_slice())))
            .collect();
        add("reassembler", "mtu247", stream(&steps));
        // Four links start at once: the fourth is over the cap. Then time
        // passes (15 s, with handle_timeout) and link 3 starts again.
        let starts: Vec<(u8, &[u8])> = (0..4u8)
            .map(|k| (k, a[0].as_slice()))
            .chain([(0xf8 | 3, a[0].as_slice()), (0x03, a[1].as_slice())])
            .collect();
        add("reassembler", "over_cap_then_timeout", stream(&starts));
        // A start announcing more than MAX_MESSAGE, an empty fragment, a
        // single fragment of MAX_MESSAGE + 1 bytes.
        let mut big = vec![FLAG_START | FLAG_END];
        big.extend_from_slice(&[0x55; MAX_MESSAGE + 1]);
        let huge_start = [FLAG_START, 0x01, 0x08, 1, 2, 3];
        add(
            "reassembler",
            "limits",
            stream(&[
                (0x00, &huge_start),
                (0x00, &a[0]),
                (0x00, &[]),
                (0x00, &a[1]),
                (0x04, &big),
            ]),
        );
    }

    // tcp_stream: chunk size, then length-prefixed fragments.
    {
        let mut wire = Vec::new();
        let mut buf = [0u8; stream::PREFIX + MAX_FRAGMENT];
        for msg in [&fx.hello, &fx.response, &data_g2p] {
            for mtu in [23, 247] {
                for f in frames(msg, mtu) {
                    let n = stream::encode(&f, &mut buf).expect("encode");
                    wire.extend_from_slice(&buf[..n]);
                }
            }
        }
        for chunk in [1u8, 7, 0] {
            let mut v = vec![chunk];
            v.extend_from_slice(&wire);
            add("tcp_stream", &format!("messages_chunk{chunk}"), v);
        }
        let mut bad = vec![5u8];
        bad.extend_from_slice(&wire[..30]);
        bad.extend_from_slice(&[0x01, 0x02]); // 513: over MAX_FRAGMENT
        add("tcp_stream", "oversized", bad);
    }

    // peripheral_handshake: mode byte (bit 0: resumption), then the answer.
    let with = |prefix: &[u8], body: &[u8]| -> Vec<u8> {
        let mut v = prefix.to_vec();
        v.extend_from_slice(body);
        v
    };
    let mut flipped_response = fx.response.clone();
    let last = flipped_response.len() - 1;
    flipped_response[last] ^= 0x01;
    let mut flipped_resume = fx.resume_response.clone();
    flipped_resume[10] ^= 0x80;
    add("peripheral_handshake", "response", with(&[0], &fx.response));
    add(
        "peripheral_handshake",
        "resume_response",
        with(&[1], &fx.resume_response),
    );
    add(
        "peripheral_handshake",
        "response_flipped",
        with(&[0], &flipped_response),
    );
    add(
        "peripheral_handshake",
        "resume_response_flipped",
        with(&[1], &flipped_resume),
    );
    add(
        "peripheral_handshake",
        "alert",
        with(&[0], &encode_alert(AlertCode::Busy)),
    );
    add(
        "peripheral_handshake",
        "wrong_type",
        with(&[1], &fx.response),
    );

    // gateway_handshake: len ‖ first message ‖ finish.
    let pair_input = |first: &[u8], second: &[u8]| -> Vec<u8> {
        let mut v = vec![u8::try_from(first.len()).expect("short message")];
        v.extend_from_slice(first);
        v.extend_from_slice(second);
        v
    };
    let mut forged_hello = fx.hello.clone();
    forged_hello[50] ^= 0x04;
    let mut bad_finish = fx.finish.clone();
    bad_finish[5] ^= 0x20;
    add(
        "gateway_handshake",
        "full",
        pair_input(&fx.hello, &fx.finish),
    );
    add(
        "gateway_handshake",
        "resume",
        pair_input(&fx.resume_hello, &fx.resume_finish),
    );
    add(
        "gateway_handshake",
        "bad_finish",
        pair_input(&fx.hello, &bad_finish),
    );
    add(
        "gateway_handshake",
        "forged_hello",
        pair_input(&forged_hello, &fx.finish),
    );
    add(
        "gateway_handshake",
        "resume_wrong_finish",
        pair_input(&fx.resume_hello, &fx.finish),
    );

    // session_open: flags ‖ (u16 length ‖ record)*.
    let records = |flags: u8, recs: &[&[u8]]| -> Vec<u8> {
        let mut v = vec![flags];
        for r in recs {
            push_u16(&mut v, r);
        }
        v
    };
    add(
        "session_open",
        "peripheral_receives",
        records(0, &[&data_g2p, &anchor_g2p, &encode_alert(AlertCode::Busy)]),
    );
    add(
        "session_open",
        "gateway_receives",
        records(1, &[&data_p2g, &rekeyed, &close_p2g, &fx.finish]),
    );
    add(
        "session_open",
        "expired",
        records(2, &[&data_g2p, &data_g2p]),
    );

    // anchor_update: real signatures, refused for serial, signer or key.
    let k1 = fx.pair.backend.signing();
    let k2 = fx.second_backend.signing();
    let third = BackendKeys::generate(KeyId(3), &mut testing::rng(PAIR_SEED + 200));
    let updates = [
        (
            "stale_add",
            AnchorUpdate::sign(5, AnchorAction::Add(third.anchor()), KeyId(1), k1),
        ),
        (
            "stale_replace",
            AnchorUpdate::sign(
                ANCHOR_SERIAL,
                AnchorAction::Replace(third.anchor()),
                KeyId(2),
                k2,
            ),
        ),
        (
            "stale_retire",
            AnchorUpdate::sign(999, AnchorAction::Retire(KeyId(1)), KeyId(2), k2),
        ),
        (
            "unknown_signer",
            AnchorUpdate::sign(
                2000,
                AnchorAction::Replace(third.anchor()),
                KeyId(3),
                third.signing(),
            ),
        ),
        (
            // Signed by a key the device does not hold. (It used to be
            // signed by held anchor 2 while naming anchor 1: the fuzzer
            // changed the signer byte to 2 and got a genuinely authorized
            // update, which is correct behaviour, not a forgery.)
            "wrong_key",
            AnchorUpdate::sign(
                2000,
                AnchorAction::Retire(KeyId(2)),
                KeyId(1),
                third.signing(),
            ),
        ),
    ];
    for (name, u) in updates {
        add(
            "anchor_update",
            name,
            postcard::to_allocvec(&u).expect("update encodes"),
        );
    }
    out
}
