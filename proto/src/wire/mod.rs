//! The messages on the air, defined once (SPEC.md §4).
//!
//! Every message is `version ‖ type ‖ body`: one version byte
//! ([`PROTOCOL_VERSION`]), one message-type byte ([`MessageType`]), then the
//! postcard encoding of the body. Fixed-size fields are raw bytes; integers are
//! postcard varints; variable-length byte strings carry a varint length.
//! [`Message::decode`] rejects unknown versions, types and suites, truncation,
//! trailing bytes and oversized input with a typed [`DecodeError`].

#[cfg(feature = "alloc")]
pub mod backend;

use serde::{Deserialize, Serialize};

use crate::error::{AlertCode, ApiMisuse, DecodeError};
use crate::keys::{DhPublic, KeyId, PublicKey, Signature};

/// The protocol version byte that leads every message (SPEC.md §4.1).
pub const PROTOCOL_VERSION: u8 = 1;

/// The largest handshake message: one BLE PDU at ATT MTU 247 (SPEC.md §4.8).
pub const MAX_HANDSHAKE_MESSAGE: usize = 244;

/// The largest message of any kind, records included (SPEC.md §4.8).
pub const MAX_MESSAGE: usize = 1024;

/// Bytes a record adds around its payload at most: version, type, counter
/// (varint, up to 10), length (varint, up to 2), content type, AEAD tag.
pub const RECORD_OVERHEAD: usize = 2 + 10 + 2 + 1 + crate::crypto::TAG_LEN;

/// The largest application payload one record carries.
pub const MAX_RECORD_PAYLOAD: usize = MAX_MESSAGE - RECORD_OVERHEAD;

/// Length of the sealed identity in a hello: peripheral id and signature.
pub const SEALED_IDENTITY_LEN: usize = 8 + 64;

/// The message types of version 1 (SPEC.md §4.2).
///
/// APPEND ONLY: the values are wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// [`Hello`], peripheral → gateway.
    Hello = 0,
    /// [`Response`], gateway → peripheral.
    Response = 1,
    /// [`Finish`], peripheral → gateway.
    Finish = 2,
    /// [`ResumeHello`], peripheral → gateway.
    ResumeHello = 3,
    /// [`ResumeResponse`], gateway → peripheral.
    ResumeResponse = 4,
    /// [`Record`], either way once the session is up.
    Record = 5,
    /// [`Alert`], either way, unauthenticated.
    Alert = 6,
}

impl MessageType {
    /// Decodes the type byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Hello,
            1 => Self::Response,
            2 => Self::Finish,
            3 => Self::ResumeHello,
            4 => Self::ResumeResponse,
            5 => Self::Record,
            6 => Self::Alert,
            _ => return None,
        })
    }
}

/// The cipher suites (SPEC.md §3.1). Version 1 has exactly one.
///
/// APPEND ONLY: the values are wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Suite {
    /// Ed25519, X25519, HKDF-SHA-256, ChaCha20-Poly1305, SHA-256.
    Ed25519X25519ChaCha20Poly1305 = 1,
}

impl Suite {
    /// Decodes the suite byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Ed25519X25519ChaCha20Poly1305),
            _ => None,
        }
    }
}

impl Serialize for Suite {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(*self as u8)
    }
}

impl<'de> Deserialize<'de> for Suite {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u8::deserialize(d)?;
        Suite::from_u8(v).ok_or_else(|| serde::de::Error::custom("unsupported suite"))
    }
}

macro_rules! fixed_bytes {
    ($(#[$m:meta])* $name:ident, $n:expr) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub [u8; $n]);

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(concat!(stringify!($name), "("))?;
                crate::keys::write_hex(f, &self.0)?;
                f.write_str(")")
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeTuple;
                let mut t = s.serialize_tuple($n)?;
                for b in &self.0 {
                    t.serialize_element(b)?;
                }
                t.end()
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                        write!(f, "{} bytes", $n)
                    }
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<$name, A::Error> {
                        let mut out = [0u8; $n];
                        for (i, b) in out.iter_mut().enumerate() {
                            *b = seq
                                .next_element()?
                                .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                        }
                        Ok($name(out))
                    }
                }
                d.deserialize_tuple($n, V)
            }
        }
    };
}

fixed_bytes!(
    /// The hello's encrypted identity: `ChaCha20(k_seal, peripheral id ‖ signature)` (SPEC.md §5.1).
    SealedIdentity,
    SEALED_IDENTITY_LEN
);

fixed_bytes!(
    /// Identifies a resumption ticket. Derived from the key schedule, used once,
    /// and never on the air before it is used (SPEC.md §6.1).
    ResumptionId,
    16
);

fixed_bytes!(
    /// A 16-byte MAC (resumption binder and confirmation).
    Mac16,
    16
);

/// What the backend allows the gateway to do with the peripheral (SPEC.md §5.5).
///
/// Bits 0–7 are defined by the protocol; bits 8–31 belong to the application,
/// which interprets them (the peripheral refuses commands outside them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Scope(pub u32);

impl Scope {
    /// The gateway may receive application data from the peripheral.
    pub const TELEMETRY: Scope = Scope(1 << 0);
    /// The gateway may send application data (commands) to the peripheral.
    pub const COMMAND: Scope = Scope(1 << 1);

    /// Whether every bit of `other` is granted.
    pub fn contains(self, other: Scope) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of two scopes.
    pub const fn union(self, other: Scope) -> Scope {
        Scope(self.0 | other.0)
    }
}

/// Lifetimes the backend grants in a vouch, in seconds (SPEC.md §5.5). Relative,
/// because the peripheral has no wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lifetimes {
    /// How long a session may last before it must be re-established.
    pub session_s: u32,
    /// How long after the full handshake the pair may resume without the backend.
    pub resumption_s: u32,
}

/// The backend's signed statement (SPEC.md §5.4): gateway `gateway_key` may use
/// the ephemeral it sent for the handshake that began with this hello, for this
/// peripheral, with this scope and these lifetimes.
///
/// The signed fields that every party already knows (hello hash, peripheral id,
/// gateway ephemeral) are not carried; they enter the signed statement (SPEC.md §5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vouch {
    /// The gateway's Ed25519 identity, as authenticated by the backend's TLS.
    pub gateway_key: PublicKey,
    /// What the gateway may do.
    pub scope: Scope,
    /// How long the session and its resumptions may last.
    pub lifetimes: Lifetimes,
    /// The anchor whose key signed this vouch.
    pub backend_key: KeyId,
    /// Ed25519 signature over the vouch statement.
    pub signature: Signature,
}

/// Largest encoded [`Vouch`]: 32 + 5 + 5 + 5 + 1 + 64.
pub const MAX_VOUCH_LEN: usize = 112;

/// Hello, peripheral → gateway (SPEC.md §4.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The suite; version 1 has one.
    pub suite: Suite,
    /// The backend key the identity is sealed to.
    pub anchor: KeyId,
    /// The peripheral's fresh X25519 ephemeral `e_P`.
    pub ephemeral: DhPublic,
    /// The peripheral id and its signature, encrypted to the backend.
    pub sealed: SealedIdentity,
}

/// Response, gateway → peripheral (SPEC.md §4.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response<'a> {
    /// The gateway's fresh X25519 ephemeral `e_G`.
    pub ephemeral: DhPublic,
    /// The encoded [`Vouch`], encrypted under the response key.
    #[serde(borrow)]
    pub sealed_vouch: &'a [u8],
}

/// Finish, peripheral → gateway: key confirmation, the ChaCha20-Poly1305 tag
/// over an empty plaintext with the transcript as AAD (SPEC.md §4.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finish {
    /// The AEAD tag.
    pub tag: Mac16,
}

/// ResumeHello, peripheral → gateway (SPEC.md §6.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeHello {
    /// The suite.
    pub suite: Suite,
    /// The ticket to resume.
    pub ticket: ResumptionId,
    /// The peripheral's fresh X25519 ephemeral.
    pub ephemeral: DhPublic,
    /// Proof of the resumption secret over the fields before it.
    pub binder: Mac16,
}

/// ResumeResponse, gateway → peripheral (SPEC.md §6.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeResponse {
    /// The gateway's fresh X25519 ephemeral.
    pub ephemeral: DhPublic,
    /// Proof of the resumption secret and both ephemerals.
    pub confirm: Mac16,
}

/// A session record, either direction (SPEC.md §7.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record<'a> {
    /// The record counter; the nonce, and its upper 32 bits the key epoch.
    pub counter: u64,
    /// Ciphertext of the content followed by the 16-byte tag.
    #[serde(borrow)]
    pub sealed: &'a [u8],
}

/// An unauthenticated error, either direction (SPEC.md §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alert {
    /// What kind of failure; never which check.
    pub code: AlertCode,
}

/// Any message of version 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Response`].
    Response(Response<'a>),
    /// See [`Finish`].
    Finish(Finish),
    /// See [`ResumeHello`].
    ResumeHello(ResumeHello),
    /// See [`ResumeResponse`].
    ResumeResponse(ResumeResponse),
    /// See [`Record`].
    Record(Record<'a>),
    /// See [`Alert`].
    Alert(Alert),
}

impl<'a> Message<'a> {
    /// The type byte of this message.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Hello(_) => MessageType::Hello,
            Message::Response(_) => MessageType::Response,
            Message::Finish(_) => MessageType::Finish,
            Message::ResumeHello(_) => MessageType::ResumeHello,
            Message::ResumeResponse(_) => MessageType::ResumeResponse,
            Message::Record(_) => MessageType::Record,
            Message::Alert(_) => MessageType::Alert,
        }
    }

    /// Decodes one whole message. Checks, in order: length limit, version,
    /// type, suite (for hellos), body, trailing bytes, then the per-type length
    /// limits of SPEC.md §4.8.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_MESSAGE,
            });
        }
        let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let (&ty, body) = rest.split_first().ok_or(DecodeError::Truncated)?;
        let ty = MessageType::from_u8(ty).ok_or(DecodeError::UnknownMessageType(ty))?;
        if matches!(ty, MessageType::Hello | MessageType::ResumeHello) {
            let &suite = body.first().ok_or(DecodeError::Truncated)?;
            Suite::from_u8(suite).ok_or(DecodeError::UnsupportedSuite(suite))?;
        }
        if ty != MessageType::Record && bytes.len() > MAX_HANDSHAKE_MESSAGE {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_HANDSHAKE_MESSAGE,
            });
        }
        let msg = match ty {
            MessageType::Hello => Message::Hello(body_of(body)?),
            MessageType::Response => {
                let r: Response<'a> = body_of(body)?;
                if r.sealed_vouch.len() > MAX_VOUCH_LEN {
                    return Err(DecodeError::Malformed);
                }
                Message::Response(r)
            }
            MessageType::Finish => Message::Finish(body_of(body)?),
            MessageType::ResumeHello => Message::ResumeHello(body_of(body)?),
            MessageType::ResumeResponse => Message::ResumeResponse(body_of(body)?),
            MessageType::Record => {
                let r: Record<'a> = body_of(body)?;
                // At least a content-type byte and the tag.
                if r.sealed.len() < 1 + crate::crypto::TAG_LEN {
                    return Err(DecodeError::Malformed);
                }
                Message::Record(r)
            }
            MessageType::Alert => match body {
                [code] => Message::Alert(Alert {
                    code: AlertCode::from_u8(*code).ok_or(DecodeError::Malformed)?,
                }),
                [] => return Err(DecodeError::Truncated),
                _ => return Err(DecodeError::TrailingBytes),
            },
        };
        Ok(msg)
    }

    /// Encodes the message into `out`, returning the length written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, ApiMisuse> {
        let too_small = |need| ApiMisuse::BufferTooSmall {
            need,
            have: out.len(),
        };
        if out.len() < 2 {
            return Err(too_small(2));
        }
        out[0] = PROTOCOL_VERSION;
        out[1] = self.message_type() as u8;
        let have = out.len();
        let body = &mut out[2..];
        let n = match self {
            Message::Hello(m) => postcard::to_slice(m, body).map(|s| s.len()),
            Message::Response(m) => postcard::to_slice(m, body).map(|s| s.len()),
            Message::Finish(m) => postcard::to_slice(m, body).map(|s| s.len()),
            Message::ResumeHello(m) => postcard::to_slice(m, body).map(|s| s.len()),
            Message::ResumeResponse(m) => postcard::to_slice(m, body).map(|s| s.len()),
            Message::Record(m) => postcard::to_slice(m, body).map(|s| s.len()),
            Message::Alert(a) => match body.first_mut() {
                Some(b) => {
                    *b = a.code as u8;
                    Ok(1)
                }
                None => Err(postcard::Error::SerializeBufferFull),
            },
        }
        .map_err(|_| ApiMisuse::BufferTooSmall {
            need: have + 1,
            have,
        })?;
        Ok(2 + n)
    }

    /// Encodes into a new vector.
    #[cfg(feature = "alloc")]
    pub fn to_vec(&self) -> alloc::vec::Vec<u8> {
        let mut buf = alloc::vec![0u8; MAX_MESSAGE + 16];
        // MAX_MESSAGE + 16 holds every message this crate can build.
        let n = self.encode(&mut buf).unwrap_or(0);
        buf.truncate(n);
        buf
    }
}

/// Decodes a postcard body that must use every byte and be canonical.
///
/// postcard's decoder accepts over-long varints (`81 00` for 1). A message
/// whose bytes differ from the canonical encoding of what it decodes to is
/// rejected, so that every message has exactly one encoding (SPEC.md §4.1):
/// with every byte consumed, a body longer than the canonical size must hold
/// an over-long varint.
pub(crate) fn body_of<'a, T: Deserialize<'a> + Serialize>(
    body: &'a [u8],
) -> Result<T, DecodeError> {
    let (v, rest) = postcard::take_from_bytes(body)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    let canonical = postcard::serialize_with_flavor::<T, postcard::ser_flavors::Size, usize>(
        &v,
        postcard::ser_flavors::Size::default(),
    )?;
    if canonical != body.len() {
        return Err(DecodeError::NonCanonical);
    }
    Ok(v)
}

/// Encodes an [`Alert`] message (3 bytes).
pub fn encode_alert(code: AlertCode) -> [u8; 3] {
    [PROTOCOL_VERSION, MessageType::Alert as u8, code as u8]
}
