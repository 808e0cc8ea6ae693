//! Errors of the protocol layer (SPEC.md §9).
//!
//! One [`Error`] for everything `vouch-proto` does, holding categories that say
//! who is at fault: the bytes ([`DecodeError`], [`FramingError`]), the peer
//! ([`PeerMisbehaved`]), or the caller ([`ApiMisuse`]). What goes on the air is
//! much less: [`AlertCode`] collapses every handshake failure to
//! [`AlertCode::HandshakeFailed`], so an unauthenticated peer never learns which
//! check failed.

/// Everything that can go wrong in `vouch-proto`.
///
/// Handshake state machines are *sticky*: once a `handle_*` call returns an
/// error, every later call returns the same error without doing any work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a well-formed message of this version.
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    /// The BLE framing layer rejected a fragment.
    #[error("framing: {0}")]
    Framing(#[from] FramingError),
    /// The peer sent something well-formed that the protocol forbids.
    #[error("peer misbehaved: {0}")]
    PeerMisbehaved(#[from] PeerMisbehaved),
    /// The caller used the API in a way it does not allow.
    #[error("API misuse: {0}")]
    ApiMisuse(#[from] ApiMisuse),
    /// The peer aborted the handshake with an alert (unauthenticated, SPEC.md §9).
    #[error("peer sent alert: {0:?}")]
    Alert(AlertCode),
    /// A deadline passed before the handshake completed (SPEC.md §6.4).
    #[error("handshake timed out")]
    Timeout,
    /// The session reached the end of the lifetime the vouch granted (SPEC.md §7.5).
    #[error("session expired")]
    SessionExpired,
    /// The session was closed, by us or by the peer (SPEC.md §7.6).
    #[error("session closed")]
    SessionClosed,
    /// The backend refused to vouch (SPEC.md §10.1).
    #[error("backend refused: {0:?}")]
    Refused(Refusal),
}

/// Why the backend refused to vouch; deliberately coarse (SPEC.md §9).
///
/// APPEND ONLY: the variant order is wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Refusal {
    /// Not vouched. The same answer for an unknown peripheral, a bad signature,
    /// a replay, a revoked device and a gateway the policy does not allow; the
    /// backend's audit log says which.
    Denied,
    /// The backend is overloaded or the caller is locked out: retry later.
    Busy,
}

/// Why bytes could not be decoded as a Vouch message (SPEC.md §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty input")]
    Empty,
    /// The version byte is not one this implementation speaks. There is no
    /// negotiation and no fallback (SPEC.md §4.1).
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The suite byte is not one this implementation speaks.
    #[error("unsupported suite {0}")]
    UnsupportedSuite(u8),
    /// The message-type byte names no message of this version.
    #[error("unknown message type {0}")]
    UnknownMessageType(u8),
    /// The input ended before the message did.
    #[error("truncated message")]
    Truncated,
    /// Bytes remained after a complete message.
    #[error("trailing bytes after message")]
    TrailingBytes,
    /// The input is longer than the protocol allows for this message.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The limit that applies.
        max: usize,
    },
    /// A field holds a value the format does not allow.
    #[error("malformed field")]
    Malformed,
    /// The bytes are not the canonical encoding of what they decode to (an
    /// over-long varint).
    #[error("non-canonical encoding")]
    NonCanonical,
}

/// Why a BLE fragment was rejected by the reassembler (SPEC.md §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// A fragment without even a header byte.
    #[error("empty fragment")]
    EmptyFragment,
    /// A continuation fragment arrived with no message in progress.
    #[error("continuation without a start fragment")]
    NoMessageInProgress,
    /// A start fragment arrived while another message was in progress.
    #[error("start fragment while a message was in progress")]
    UnexpectedStart,
    /// The sequence number is not the next one.
    #[error("fragment out of sequence")]
    OutOfSequence,
    /// The announced or accumulated length exceeds the limit.
    #[error("message would exceed {max} bytes")]
    MessageTooLarge {
        /// The limit in force.
        max: usize,
    },
    /// The message needs more fragments than the limit allows.
    #[error("too many fragments")]
    TooManyFragments,
    /// The final fragment did not complete the announced length.
    #[error("length mismatch at the final fragment")]
    LengthMismatch,
    /// The reassembly took longer than the limit.
    #[error("reassembly timed out")]
    Timeout,
    /// Too many reassemblies are in progress at once.
    #[error("too many concurrent reassemblies")]
    TooManyReassemblies,
    /// The ATT MTU is too small to carry a fragment.
    #[error("ATT MTU {0} is below the minimum of 23")]
    MtuTooSmall(usize),
}

/// The peer sent a well-formed message that the protocol forbids.
///
/// These never go on the air in detail (SPEC.md §9): they map to
/// [`AlertCode::HandshakeFailed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerMisbehaved {
    /// A message of a type this state does not expect (this includes reflected
    /// and reordered messages).
    #[error("unexpected message {got:?}")]
    UnexpectedMessage {
        /// The type that arrived.
        got: crate::wire::MessageType,
    },
    /// A Diffie–Hellman input was a low-order point (the shared secret would be
    /// all zeros).
    #[error("non-contributory Diffie-Hellman share")]
    WeakKeyShare,
    /// The hello names a backend key the backend does not hold.
    #[error("unknown backend key id")]
    UnknownBackendKey,
    /// The peripheral's signature over the hello did not verify.
    #[error("hello signature invalid")]
    BadHelloSignature,
    /// The vouch names another key than the anchor the Hello was sealed to.
    #[error("vouch signed by another key than the hello's anchor")]
    UnknownAnchor,
    /// The vouch signature did not verify for this hello, peripheral and gateway share.
    #[error("vouch signature invalid")]
    BadVouchSignature,
    /// The vouch the backend returned is not for this gateway or handshake.
    #[error("vouch does not match this handshake")]
    VouchMismatch,
    /// The encrypted vouch body is not a well-formed vouch.
    #[error("vouch body malformed")]
    MalformedVouch,
    /// The Finish did not authenticate: the peer does not hold the keys.
    #[error("finish did not authenticate")]
    BadFinish,
    /// The resumption binder did not authenticate.
    #[error("resumption binder invalid")]
    BadBinder,
    /// The gateway's resumption confirmation did not authenticate.
    #[error("resumption confirmation invalid")]
    BadResumeConfirm,
    /// The resumption ticket is unknown or expired at the gateway.
    #[error("resumption ticket unknown or expired")]
    UnknownTicket,
    /// A session record failed authentication.
    #[error("record failed authentication")]
    BadRecord,
    /// A session record's counter was already seen or is too old.
    #[error("replayed or stale record")]
    ReplayedRecord,
    /// The peer sent data the vouch's scope does not allow.
    #[error("data outside the granted scope")]
    OutOfScope,
    /// A trust-anchor update is not a rotation to the key the held anchor
    /// committed to, signed by that key (SPEC.md §7.7): a reserved action,
    /// another key, or a signature that does not verify.
    #[error("anchor update refused: not a rotation to the committed key, signed by it")]
    BadAnchorUpdate,
    /// A trust-anchor update is not newer than what the peripheral holds.
    #[error("anchor update is stale")]
    StaleAnchorUpdate,
}

/// The caller used the API in a way it does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiMisuse {
    /// The output buffer cannot hold the result.
    #[error("buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The payload is larger than one record may carry.
    #[error("payload of {len} bytes exceeds {max}")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The operation needs a state the machine is not in.
    #[error("operation not valid in the current state")]
    WrongState,
    /// The scope granted by the vouch does not allow this.
    #[error("the granted scope does not allow this")]
    OutOfScope,
    /// The ticket was issued under a vouch of an anchor the peripheral no
    /// longer holds (SPEC.md §6.1): a full handshake is needed.
    #[error("ticket issued under a rotated-away anchor")]
    TicketOfOldAnchor,
    /// Every record counter of the session has been used.
    #[error("record counters exhausted")]
    CountersExhausted,
}

/// The minimal error codes that go on the air, unauthenticated (SPEC.md §9).
///
/// APPEND ONLY: the values are wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
#[non_exhaustive]
pub enum AlertCode {
    /// The handshake failed. Never says which check.
    HandshakeFailed = 0,
    /// The responder is overloaded or its backend is unreachable: retry later,
    /// with backoff.
    Busy = 1,
    /// The version or suite is not supported. Carries no list: there is no
    /// negotiation.
    Unsupported = 2,
    /// The resumption ticket cannot be used: run a full handshake.
    ResumptionRejected = 3,
}

impl AlertCode {
    /// Decodes a wire value.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::HandshakeFailed,
            1 => Self::Busy,
            2 => Self::Unsupported,
            3 => Self::ResumptionRejected,
            _ => return None,
        })
    }
}

impl From<&Error> for AlertCode {
    fn from(e: &Error) -> Self {
        match e {
            Error::Decode(
                DecodeError::UnsupportedVersion(_) | DecodeError::UnsupportedSuite(_),
            ) => AlertCode::Unsupported,
            Error::PeerMisbehaved(PeerMisbehaved::UnknownTicket | PeerMisbehaved::BadBinder) => {
                AlertCode::ResumptionRejected
            }
            _ => AlertCode::HandshakeFailed,
        }
    }
}

impl From<postcard::Error> for DecodeError {
    fn from(e: postcard::Error) -> Self {
        match e {
            postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated,
            _ => DecodeError::Malformed,
        }
    }
}

impl From<postcard::Error> for Error {
    fn from(e: postcard::Error) -> Self {
        Error::Decode(e.into())
    }
}
