//! Round-trip properties of every codec (SPEC.md §4, §7.7, §10).
//!
//! For every message on the air (through `Message::encode`/`decode`), every
//! gateway ↔ backend body (`encode_body`/`decode_body`), and the trust-anchor
//! types (postcard, and an update through a session record):
//!
//! - `decode(encode(m)) == m`;
//! - every strict prefix of an encoding fails (`Empty` or `Truncated`);
//! - an encoding plus one byte fails with `TrailingBytes` (`TooLarge` past
//!   the size limit);
//! - decoding arbitrary bytes never panics, and whatever decodes is the
//!   canonical encoding of its value (SPEC.md §4.1: one encoding per message).
//!
//! `PeripheralTicket` has a private secret and cannot be built from outside;
//! it is not covered here.

use std::fmt::Debug;
use std::sync::{Mutex, OnceLock};

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use vouch_proto::anchor::{Anchor, AnchorAction, AnchorDigest, AnchorSet, AnchorUpdate};
use vouch_proto::error::Refusal;
use vouch_proto::keys::{DhPublic, IdentityKey, KeyId, PeripheralId, PublicKey, Signature};
use vouch_proto::session::{Inbound, Session};
use vouch_proto::testing::Pair;
use vouch_proto::wire::backend::{
    decode_body, encode_body, AnchorUpdateBatch, EventTimes, FeedBatch, FeedChange, FeedEvent,
    PeripheralInfo, SessionEvent, SessionEventKind, SessionReport, SessionReportAnswer,
    SessionVerdict, VouchAnswer, VouchBatchAnswer, VouchBatchRequest, VouchRequest, Vouched,
    MAX_BODY,
};
use vouch_proto::wire::{
    Alert, Finish, Hello, Lifetimes, Mac16, Message, MessageType, Record, Response, ResumeHello,
    ResumeResponse, ResumptionId, Scope, SealedIdentity, Suite, Vouch, MAX_HANDSHAKE_MESSAGE,
    MAX_MESSAGE, MAX_VOUCH_LEN, PROTOCOL_VERSION,
};
use vouch_proto::{AlertCode, ApiMisuse, DecodeError};

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// A valid Ed25519 public key: derived from a random seed.
fn public_key() -> impl Strategy<Value = PublicKey> {
    any::<[u8; 32]>().prop_map(|seed| IdentityKey::from_seed(&seed).public_key())
}

fn dh_public() -> impl Strategy<Value = DhPublic> {
    any::<[u8; 32]>().prop_map(DhPublic)
}

fn signature() -> impl Strategy<Value = Signature> {
    any::<[u8; 64]>().prop_map(Signature)
}

fn key_id() -> impl Strategy<Value = KeyId> {
    any::<u8>().prop_map(KeyId)
}

fn mac16() -> impl Strategy<Value = Mac16> {
    any::<[u8; 16]>().prop_map(Mac16)
}

fn suite() -> impl Strategy<Value = Suite> {
    Just(Suite::Ed25519X25519ChaCha20Poly1305)
}

fn alert_code() -> impl Strategy<Value = AlertCode> {
    prop_oneof![
        Just(AlertCode::HandshakeFailed),
        Just(AlertCode::Busy),
        Just(AlertCode::Unsupported),
        Just(AlertCode::ResumptionRejected),
    ]
}

/// Counters that exercise every varint length, the epoch boundary and the top.
fn counter() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..300,
        any::<u64>(),
        Just(u64::MAX),
        (0u32..4, any::<u32>()).prop_map(|(epoch, low)| (u64::from(epoch) << 32) | u64::from(low)),
    ]
}

fn scope() -> impl Strategy<Value = Scope> {
    prop_oneof![
        Just(Scope::TELEMETRY),
        Just(Scope::COMMAND),
        any::<u32>().prop_map(Scope)
    ]
}

fn lifetimes() -> impl Strategy<Value = Lifetimes> {
    (any::<u32>(), any::<u32>()).prop_map(|(session_s, resumption_s)| Lifetimes {
        session_s,
        resumption_s,
    })
}

fn vouch() -> impl Strategy<Value = Vouch> {
    (public_key(), scope(), lifetimes(), key_id(), signature()).prop_map(
        |(gateway_key, scope, lifetimes, backend_key, signature)| Vouch {
            gateway_key,
            scope,
            lifetimes,
            backend_key,
            signature,
        },
    )
}

/// A message on the air, owning its bytes (`Response` and `Record` borrow).
#[derive(Debug, Clone)]
enum OwnedMessage {
    Hello(Hello),
    Response(DhPublic, Vec<u8>),
    Finish(Finish),
    ResumeHello(ResumeHello),
    ResumeResponse(ResumeResponse),
    Record(u64, Vec<u8>),
    Alert(AlertCode),
}

impl OwnedMessage {
    fn message(&self) -> Message<'_> {
        match self {
            Self::Hello(m) => Message::Hello(m.clone()),
            Self::Response(e, v) => Message::Response(Response {
                ephemeral: *e,
                sealed_vouch: v,
            }),
            Self::Finish(m) => Message::Finish(m.clone()),
            Self::ResumeHello(m) => Message::ResumeHello(m.clone()),
            Self::ResumeResponse(m) => Message::ResumeResponse(m.clone()),
            Self::Record(c, v) => Message::Record(Record {
                counter: *c,
                sealed: v,
            }),
            Self::Alert(code) => Message::Alert(Alert { code: *code }),
        }
    }

    /// The size limit that applies to this message (SPEC.md §4.8).
    fn limit(&self) -> usize {
        match self {
            Self::Record(..) => MAX_MESSAGE,
            _ => MAX_HANDSHAKE_MESSAGE,
        }
    }
}

/// Sizes of a record's sealed part: the smallest, small, and up to what
/// still fits `MAX_MESSAGE` with a 10-byte counter varint.
fn sealed_len() -> impl Strategy<Value = usize> {
    prop_oneof![17usize..64, 17usize..=1010, 1000usize..=1010]
}

fn owned_message() -> impl Strategy<Value = OwnedMessage> {
    prop_oneof![
        (suite(), key_id(), dh_public(), any::<[u8; 72]>()).prop_map(
            |(suite, anchor, ephemeral, sealed)| OwnedMessage::Hello(Hello {
                suite,
                anchor,
                ephemeral,
                sealed: SealedIdentity(sealed),
            })
        ),
        (dh_public(), vec(any::<u8>(), 0..=MAX_VOUCH_LEN))
            .prop_map(|(e, v)| OwnedMessage::Response(e, v)),
        mac16().prop_map(|tag| OwnedMessage::Finish(Finish { tag })),
        (suite(), any::<[u8; 16]>(), dh_public(), mac16()).prop_map(
            |(suite, ticket, ephemeral, binder)| OwnedMessage::ResumeHello(ResumeHello {
                suite,
                ticket: ResumptionId(ticket),
                ephemeral,
                binder,
            })
        ),
        (dh_public(), mac16()).prop_map(|(ephemeral, confirm)| {
            OwnedMessage::ResumeResponse(ResumeResponse { ephemeral, confirm })
        }),
        (
            counter(),
            sealed_len().prop_flat_map(|n| vec(any::<u8>(), n))
        )
            .prop_map(|(c, v)| OwnedMessage::Record(c, v)),
        alert_code().prop_map(OwnedMessage::Alert),
    ]
}

/// Short strings, any Unicode but control characters.
fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn vouch_request() -> impl Strategy<Value = VouchRequest> {
    (vec(any::<u8>(), 0..300), dh_public()).prop_map(|(hello, gateway_ephemeral)| VouchRequest {
        hello,
        gateway_ephemeral,
    })
}

fn peripheral_info() -> impl Strategy<Value = PeripheralInfo> {
    (
        any::<[u8; 8]>(),
        public_key(),
        option::of(text()),
        vec((text(), text()), 0..4),
        scope(),
    )
        .prop_map(
            |(id, public_key, group, attributes, scope)| PeripheralInfo {
                id: PeripheralId(id),
                public_key,
                group,
                attributes,
                scope,
            },
        )
}

fn refusal() -> impl Strategy<Value = Refusal> {
    prop_oneof![Just(Refusal::Denied), Just(Refusal::Busy)]
}

fn vouch_answer() -> impl Strategy<Value = VouchAnswer> {
    prop_oneof![
        (vouch(), peripheral_info())
            .prop_map(|(vouch, peripheral)| VouchAnswer::Vouched(Vouched { vouch, peripheral })),
        refusal().prop_map(VouchAnswer::Refused),
    ]
}

fn feed_change() -> impl Strategy<Value = FeedChange> {
    let id = any::<[u8; 8]>().prop_map(PeripheralId);
    prop_oneof![
        id.clone().prop_map(FeedChange::PeripheralSuspended),
        id.clone().prop_map(FeedChange::PeripheralRevoked),
        id.prop_map(FeedChange::PeripheralReinstated),
        public_key().prop_map(FeedChange::GatewaySuspended),
        public_key().prop_map(FeedChange::GatewayRevoked),
        public_key().prop_map(FeedChange::GatewayReinstated),
        Just(FeedChange::PolicyChanged),
        any::<u32>().prop_map(FeedChange::AnchorUpdates),
    ]
}

fn feed_batch() -> impl Strategy<Value = FeedBatch> {
    (
        vec(
            (any::<u64>(), any::<u64>(), feed_change())
                .prop_map(|(seq, at_ms, change)| FeedEvent { seq, at_ms, change }),
            0..4,
        ),
        any::<u64>(),
    )
        .prop_map(|(events, next)| FeedBatch { events, next })
}

fn session_report() -> impl Strategy<Value = SessionReport> {
    let kind = prop_oneof![
        Just(SessionEventKind::Attached),
        Just(SessionEventKind::Detached),
        Just(SessionEventKind::Concurrent)
    ];
    vec(
        (any::<[u8; 8]>(), kind, any::<[u8; 8]>()).prop_map(|(id, kind, session_id)| {
            SessionEvent {
                peripheral: PeripheralId(id),
                kind,
                session_id,
            }
        }),
        0..6,
    )
    .prop_flat_map(|events| {
        // Times for every event, or none (a gateway that predates them).
        let n = events.len();
        let times = vec(
            (any::<u32>(), any::<u32>()).prop_map(|(started_ms_ago, heard_ms_ago)| EventTimes {
                started_ms_ago,
                heard_ms_ago,
            }),
            n..=n,
        );
        (Just(events), prop_oneof![Just(Vec::new()), times])
    })
    .prop_map(|(events, times)| SessionReport { events, times })
}

fn session_report_answer() -> impl Strategy<Value = SessionReportAnswer> {
    let verdict = prop_oneof![
        Just(SessionVerdict::Accepted),
        Just(SessionVerdict::CloneSuspected),
        Just(SessionVerdict::Refused),
    ];
    vec(verdict, 0..8).prop_map(|items| SessionReportAnswer { items })
}

fn anchor() -> impl Strategy<Value = Anchor> {
    (key_id(), public_key(), dh_public()).prop_map(|(kid, signing, sealing)| Anchor {
        kid,
        signing,
        sealing,
    })
}

fn anchor_update() -> impl Strategy<Value = AnchorUpdate> {
    let action = prop_oneof![
        anchor().prop_map(AnchorAction::Add),
        anchor().prop_map(AnchorAction::Replace),
        key_id().prop_map(AnchorAction::Retire),
        (anchor(), any::<[u8; 32]>()).prop_map(|(anchor, next)| AnchorAction::Rotate {
            anchor,
            next: AnchorDigest(next)
        }),
    ];
    (any::<u32>(), action, key_id(), signature()).prop_map(|(serial, action, signer, signature)| {
        AnchorUpdate {
            serial,
            action,
            signer,
            signature,
        }
    })
}

fn anchor_set() -> impl Strategy<Value = AnchorSet> {
    (anchor(), any::<[u8; 32]>(), any::<u32>())
        .prop_map(|(anchor, next, serial)| AnchorSet::new(anchor, AnchorDigest(next), serial))
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// The postcard varint (LEB128) of `v`.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// `varint(v)` one byte longer than needed, if that still fits a u64 varint.
fn overlong_varint(v: u64) -> Option<Vec<u8>> {
    let mut out = varint(v);
    if out.len() == 10 {
        return None;
    }
    *out.last_mut().unwrap() |= 0x80;
    out.push(0);
    Some(out)
}

/// Round trip, prefixes and one extra byte for a message on the air.
fn check_message(m: &OwnedMessage, extra: u8) -> Result<(), TestCaseError> {
    let msg = m.message();
    let bytes = msg.to_vec();
    prop_assert!(bytes.len() <= m.limit(), "{} bytes", bytes.len());
    prop_assert_eq!(bytes[0], PROTOCOL_VERSION);
    prop_assert_eq!(bytes[1], msg.message_type() as u8);
    prop_assert_eq!(MessageType::from_u8(bytes[1]), Some(msg.message_type()));
    prop_assert_eq!(Message::decode(&bytes), Ok(msg.clone()));

    // `encode` into an exact buffer gives the same bytes; one byte less fails.
    let mut exact = vec![0u8; bytes.len()];
    prop_assert_eq!(msg.encode(&mut exact), Ok(bytes.len()));
    prop_assert_eq!(&exact, &bytes);
    let mut short = vec![0u8; bytes.len() - 1];
    let too_small = matches!(
        msg.encode(&mut short),
        Err(ApiMisuse::BufferTooSmall { .. })
    );
    prop_assert!(too_small, "encode into {} bytes", short.len());

    for cut in 0..bytes.len() {
        let want = if cut == 0 {
            DecodeError::Empty
        } else {
            DecodeError::Truncated
        };
        prop_assert_eq!(Message::decode(&bytes[..cut]), Err(want), "prefix {}", cut);
    }

    let mut longer = bytes.clone();
    longer.push(extra);
    let want = if longer.len() > m.limit() {
        DecodeError::TooLarge {
            len: longer.len(),
            max: m.limit(),
        }
    } else {
        DecodeError::TrailingBytes
    };
    prop_assert_eq!(Message::decode(&longer), Err(want));
    Ok(())
}

/// Round trip, prefixes and one extra byte for a gateway ↔ backend body.
fn check_body<T>(v: &T, extra: u8) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = encode_body(v);
    prop_assert!(bytes.len() <= MAX_BODY);
    prop_assert_eq!(bytes[0], PROTOCOL_VERSION);
    let decoded = decode_body::<T>(&bytes);
    prop_assert_eq!(decoded.as_ref(), Ok(v));
    for cut in 0..bytes.len() {
        let want = if cut == 0 {
            DecodeError::Empty
        } else {
            DecodeError::Truncated
        };
        prop_assert_eq!(
            decode_body::<T>(&bytes[..cut]).err(),
            Some(want),
            "prefix {}",
            cut
        );
    }
    let mut longer = bytes.clone();
    longer.push(extra);
    prop_assert_eq!(
        decode_body::<T>(&longer).err(),
        Some(DecodeError::TrailingBytes)
    );
    let mut other_version = bytes;
    other_version[0] = PROTOCOL_VERSION.wrapping_add(1);
    prop_assert_eq!(
        decode_body::<T>(&other_version).err(),
        Some(DecodeError::UnsupportedVersion(PROTOCOL_VERSION + 1))
    );
    Ok(())
}

/// Round trip and prefixes for a plain postcard value (anchor types).
fn check_postcard<T>(v: &T, extra: u8) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = postcard::to_allocvec(v).unwrap();
    let (back, rest) = postcard::take_from_bytes::<T>(&bytes).unwrap();
    prop_assert_eq!(&back, v);
    prop_assert!(rest.is_empty());
    for cut in 0..bytes.len() {
        prop_assert!(
            postcard::take_from_bytes::<T>(&bytes[..cut]).is_err(),
            "prefix {} decoded",
            cut
        );
    }
    let mut longer = bytes;
    longer.push(extra);
    let (back, rest) = postcard::take_from_bytes::<T>(&longer).unwrap();
    prop_assert_eq!(&back, v);
    prop_assert_eq!(rest, &[extra][..]);
    Ok(())
}

/// An established session pair (gateway, peripheral), shared by the cases:
/// each case seals on the gateway side and opens on the peripheral side.
fn sessions() -> &'static Mutex<(Session, Session)> {
    static SESSIONS: OnceLock<Mutex<(Session, Session)>> = OnceLock::new();
    SESSIONS.get_or_init(|| {
        let mut pair = Pair::new(21);
        let (p, g) = pair.full_handshake().unwrap();
        Mutex::new((g.session, p.session))
    })
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn messages_round_trip_and_reject_prefixes_and_trailing_bytes(
        m in owned_message(),
        extra in any::<u8>(),
    ) {
        check_message(&m, extra)?;
    }

    /// The largest records sit exactly at `MAX_MESSAGE`: one more byte is
    /// `TooLarge`, not `TrailingBytes`.
    #[test]
    fn records_up_to_max_message(counter in (1u64 << 63)..=u64::MAX, extra in any::<u8>()) {
        let m = OwnedMessage::Record(counter, vec![0xa5; MAX_MESSAGE - 2 - 10 - 2]);
        prop_assert_eq!(m.message().to_vec().len(), MAX_MESSAGE);
        check_message(&m, extra)?;
    }

    /// A record's sealed part holds at least a content-type byte and the tag;
    /// a response's vouch at most `MAX_VOUCH_LEN` bytes.
    #[test]
    fn short_records_and_long_vouches_are_malformed(
        c in counter(),
        sealed in vec(any::<u8>(), 0..17),
        e in dh_public(),
        vouch in vec(any::<u8>(), MAX_VOUCH_LEN + 1..=MAX_VOUCH_LEN + 60),
    ) {
        let record = Message::Record(Record { counter: c, sealed: &sealed }).to_vec();
        prop_assert_eq!(Message::decode(&record), Err(DecodeError::Malformed));
        let response = Message::Response(Response { ephemeral: e, sealed_vouch: &vouch }).to_vec();
        prop_assert_eq!(Message::decode(&response), Err(DecodeError::Malformed));
    }

    /// One encoding per message (SPEC.md §4.1): an over-long varint for the
    /// record counter or the sealed length is refused.
    #[test]
    fn overlong_varints_are_refused(c in counter(), n in 17usize..200) {
        let sealed = vec![0x3c; n];
        let canonical = Message::Record(Record { counter: c, sealed: &sealed }).to_vec();
        prop_assert!(Message::decode(&canonical).is_ok());
        if let Some(long_counter) = overlong_varint(c) {
            let mut bytes = vec![PROTOCOL_VERSION, MessageType::Record as u8];
            bytes.extend_from_slice(&long_counter);
            bytes.extend_from_slice(&varint(n as u64));
            bytes.extend_from_slice(&sealed);
            prop_assert_eq!(Message::decode(&bytes), Err(DecodeError::NonCanonical));
        }
        let mut bytes = vec![PROTOCOL_VERSION, MessageType::Record as u8];
        bytes.extend_from_slice(&varint(c));
        bytes.extend_from_slice(&overlong_varint(n as u64).unwrap());
        bytes.extend_from_slice(&sealed);
        prop_assert_eq!(Message::decode(&bytes), Err(DecodeError::NonCanonical));
    }

    /// Arbitrary bytes never panic the decoder, and what decodes is the
    /// canonical encoding of its value.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..1100)) {
        if let Ok(m) = Message::decode(&bytes) {
            prop_assert_eq!(m.to_vec(), bytes);
        }
    }

    /// The same, with a valid version and type in front so the body decoders
    /// are reached.
    #[test]
    fn decoding_arbitrary_bodies_never_panics(
        ty in 0u8..8,
        suite_byte in prop_oneof![Just(1u8), any::<u8>()],
        body in vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = vec![PROTOCOL_VERSION, ty, suite_byte];
        bytes.extend_from_slice(&body);
        match Message::decode(&bytes) {
            Ok(m) => prop_assert_eq!(m.to_vec(), bytes),
            Err(DecodeError::UnknownMessageType(t)) => prop_assert!(t == ty && t > 6),
            Err(_) => {}
        }
    }

    #[test]
    fn vouch_requests_round_trip(v in vouch_request(), extra in any::<u8>()) {
        check_body(&v, extra)?;
    }

    #[test]
    fn vouch_batch_requests_round_trip(
        items in vec(vouch_request(), 0..5),
        extra in any::<u8>(),
    ) {
        check_body(&VouchBatchRequest { items }, extra)?;
    }

    #[test]
    fn vouch_answers_round_trip(v in vouch_answer(), extra in any::<u8>()) {
        check_body(&v, extra)?;
    }

    #[test]
    fn vouch_batch_answers_round_trip(items in vec(vouch_answer(), 0..4), extra in any::<u8>()) {
        check_body(&VouchBatchAnswer { items }, extra)?;
    }

    #[test]
    fn peripheral_infos_round_trip(v in peripheral_info(), extra in any::<u8>()) {
        check_body(&v, extra)?;
    }

    #[test]
    fn feed_batches_round_trip(v in feed_batch(), extra in any::<u8>()) {
        check_body(&v, extra)?;
    }

    #[test]
    fn anchor_update_batches_round_trip(
        updates in vec(anchor_update(), 0..4),
        latest in any::<u32>(),
        extra in any::<u8>(),
    ) {
        check_body(&AnchorUpdateBatch { updates, latest }, extra)?;
    }

    #[test]
    fn session_reports_round_trip(
        report in session_report(),
        answer in session_report_answer(),
        extra in any::<u8>(),
    ) {
        check_body(&report, extra)?;
        check_body(&answer, extra)?;
        prop_assert_eq!(SessionReport::decode(&encode_body(&report)).ok(), Some(report.clone()));
        // A gateway that predates the times sent the events alone: the same
        // bytes without the trailing (empty) list of times.
        if report.times.is_empty() {
            let mut old = encode_body(&report);
            prop_assert_eq!(old.pop(), Some(0));
            prop_assert_eq!(SessionReport::decode(&old).ok(), Some(report));
        }
    }

    /// Arbitrary bytes never panic a body decoder; what decodes re-encodes to
    /// the same bytes.
    #[test]
    fn decoding_arbitrary_backend_bodies_never_panics(body in vec(any::<u8>(), 0..400)) {
        let mut bytes = vec![PROTOCOL_VERSION];
        bytes.extend_from_slice(&body);
        macro_rules! each {
            ($($t:ty),*) => {$(
                if let Ok(v) = decode_body::<$t>(&bytes) {
                    prop_assert_eq!(encode_body(&v), bytes.clone());
                }
            )*};
        }
        each!(
            VouchRequest, VouchBatchRequest, VouchAnswer, VouchBatchAnswer, PeripheralInfo,
            FeedBatch, SessionReport, SessionReportAnswer, AnchorUpdateBatch
        );
    }

    #[test]
    fn anchor_updates_round_trip(u in anchor_update(), extra in any::<u8>()) {
        check_postcard(&u, extra)?;
    }

    /// Through the protocol's own path: a gateway seals an update into a
    /// record and the peripheral's session hands back the same update.
    #[test]
    fn anchor_updates_round_trip_through_a_session(u in anchor_update()) {
        let mut guard = sessions().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (gateway, peripheral) = &mut *guard;
        let now = vouch_proto::Timestamp(1_000);
        let mut record = [0u8; MAX_MESSAGE];
        let n = gateway.seal_anchor_update(now, &u, &mut record).unwrap();
        let mut out = [0u8; MAX_MESSAGE];
        match peripheral.open(now, &record[..n], &mut out) {
            Ok(Inbound::AnchorUpdate(got)) => prop_assert_eq!(got, u),
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn anchor_sets_round_trip(set in anchor_set(), extra in any::<u8>()) {
        check_postcard(&set, extra)?;
        let back: AnchorSet = postcard::from_bytes(&postcard::to_allocvec(&set).unwrap()).unwrap();
        prop_assert_eq!(back.next(), set.next());
        prop_assert_eq!(back.primary(), set.primary());
        prop_assert_eq!(back.serial(), set.serial());
    }
}
