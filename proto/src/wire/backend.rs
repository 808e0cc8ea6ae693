//! The gateway ↔ backend bodies (SPEC.md §10), defined once for both sides.
//!
//! Each body travels as `version ‖ postcard(body)` in an HTTPS request or
//! response (`Content-Type: application/vnd.vouch.v1+postcard`). The gateway
//! is identified by its TLS client certificate, never by a field here.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::{DhPublic, Scope, Vouch, PROTOCOL_VERSION};
use crate::error::DecodeError;
use crate::keys::{PeripheralId, PublicKey};

/// The most requests one batch may carry.
pub const MAX_BATCH: usize = 64;

/// Largest encoded body the backend accepts or the gateway decodes.
pub const MAX_BODY: usize = 64 * 1024;

/// A gateway asks the backend to vouch for it in one handshake (SPEC.md §10.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VouchRequest {
    /// The peripheral's Hello, exactly as received.
    pub hello: Vec<u8>,
    /// The gateway's ephemeral for this handshake, `e_G`.
    pub gateway_ephemeral: DhPublic,
}

/// Several [`VouchRequest`]s at once (answered in order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VouchBatchRequest {
    /// At most [`MAX_BATCH`] requests.
    pub items: Vec<VouchRequest>,
}

/// What the backend tells the gateway about an authorized peripheral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeripheralInfo {
    /// Registry id.
    pub id: PeripheralId,
    /// Its identity key.
    pub public_key: PublicKey,
    /// Its group, if it has one.
    pub group: Option<String>,
    /// Free-form attributes from the registry (name, value), sorted by name.
    pub attributes: Vec<(String, String)>,
    /// What this gateway may do with it (equals the vouch's scope).
    pub scope: Scope,
}

/// A positive answer: the vouch for the peripheral, and who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vouched {
    /// The signed vouch, to be sealed into the Response.
    pub vouch: Vouch,
    /// The authenticated peripheral.
    pub peripheral: PeripheralInfo,
}

pub use crate::error::Refusal;

/// The backend's answer to one [`VouchRequest`].
///
/// APPEND ONLY: the variant order is wire format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// An answer lives for one request and is moved once; boxing the common
// variant would cost an allocation per vouch for nothing.
#[allow(clippy::large_enum_variant)]
pub enum VouchAnswer {
    /// Vouched.
    Vouched(Vouched),
    /// Refused.
    Refused(Refusal),
}

/// Answers to a [`VouchBatchRequest`], in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VouchBatchAnswer {
    /// One answer per request.
    pub items: Vec<VouchAnswer>,
}

/// Encodes a body as `version ‖ postcard(body)`.
pub fn encode_body<T: Serialize>(body: &T) -> Vec<u8> {
    let mut out = alloc::vec![PROTOCOL_VERSION];
    // Serializing these types into a Vec cannot fail.
    if let Ok(bytes) = postcard::to_allocvec(body) {
        out.extend_from_slice(&bytes);
    }
    out
}

/// Decodes a body, rejecting other versions, oversized input and trailing bytes.
pub fn decode_body<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_BODY {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: MAX_BODY,
        });
    }
    let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    super::body_of(rest)
}
