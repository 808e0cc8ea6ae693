//! # vouch-proto
//!
//! The Vouch protocol and nothing but the protocol: the messages, the keys, the
//! handshake state machines of all three roles (peripheral, gateway, backend),
//! the encrypted session, resumption, trust-anchor rotation and BLE framing.
//! [`SPEC.md`](https://example.invalid/vouch/SPEC.md) is the normative
//! description; every item here cites its section.
//!
//! ## Determinism contract
//!
//! This crate does no I/O, reads no clock and owns no randomness. Time comes in
//! as a [`Timestamp`] argument, randomness as a `&mut impl CryptoRng`, bytes as
//! slices; messages come out through `poll_transmit`. Given the same inputs, every
//! machine produces the same bytes (which is how SPEC.md's test vectors are made).
//!
//! ## `no_std`
//!
//! With `default-features = false` the crate is `#![no_std]` and allocates
//! nothing: the peripheral role ([`handshake::peripheral`]), the session
//! ([`session`]), the backend role's crypto ([`handshake::backend`]) and the
//! framing ([`framing`]) use fixed-size buffers. Feature `alloc` adds the gateway
//! role and the gateway↔backend bodies ([`wire::backend`]); `std` adds PEM keys
//! and `std::error::Error`.
//!
//! ## Crypto providers
//!
//! X25519 and Ed25519 run on a [`provider::CryptoProvider`]: the dalek crates
//! by default (the peripheral's on every host), field arithmetic for
//! Cortex-M4/M33 with feature `cortex-m` (the peripheral's in the firmware),
//! and aws-lc-rs with feature `aws-lc`, for the backend and the gateway. The
//! rules of SPEC.md §3.2 and §3.4 are checked in [`provider`], in front of
//! every provider, so a provider changes the speed and never an answer.
//!
//! ## Driving a handshake
//!
//! Each machine is driven the same way: call `handle_*` with what arrived,
//! then drain `poll_transmit` (and, for the gateway, `poll_event`), and arm a
//! timer for `poll_timeout`, calling `handle_timeout` when it fires.
//!
//! ```
//! # #[cfg(feature = "test-utils")] {
//! use vouch_proto::testing::Pair;
//!
//! // A peripheral, a gateway and a backend with fixed test keys, run in memory.
//! let mut pair = Pair::new(7);
//! let (mut p, mut g) = pair.full_handshake().expect("handshake");
//!
//! let mut record = [0u8; 128];
//! let mut plain = [0u8; 128];
//! let now = pair.now;
//! let n = p.session.seal_data(now, b"21.5 C", &mut record).unwrap();
//! match g.session.open(now, &record[..n], &mut plain).unwrap() {
//!     vouch_proto::session::Inbound::Data(d) => assert_eq!(d, b"21.5 C"),
//!     other => panic!("{other:?}"),
//! }
//! # }
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod anchor;
pub(crate) mod crypto;
pub mod error;
pub mod framing;
pub mod handshake;
pub mod keys;
pub mod provider;
pub mod session;
#[cfg(all(feature = "alloc", any(test, feature = "test-utils")))]
pub mod testing;
pub mod wire;

pub use error::{AlertCode, ApiMisuse, DecodeError, Error, FramingError, PeerMisbehaved};

/// A point in time, in milliseconds, on a clock the caller chooses and keeps
/// monotonic (SPEC.md §1.3). The peripheral has no wall clock: its timestamps
/// are uptime. Only differences between timestamps of one party matter.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// From milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + ms`, saturating.
    pub const fn add_millis(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    /// `self + s` seconds, saturating.
    pub const fn add_secs(self, s: u32) -> Self {
        Self(self.0.saturating_add(s as u64 * 1000))
    }
}

/// Every domain-separation label of version 1 (SPEC.md §5.7). Each signature,
/// key derivation and MAC uses exactly one, and no two uses share one.
pub mod label {
    /// Derives the default [`PeripheralId`](crate::keys::PeripheralId).
    pub const PERIPHERAL_ID: &[u8] = b"vouch/1 peripheral-id";
    /// The peripheral's signature over the hello.
    pub const HELLO_SIGNATURE: &[u8] = b"vouch/1 hello signature";
    /// The key that seals the peripheral's identity to the backend.
    pub const SEAL: &[u8] = b"vouch/1 seal";
    /// The key that encrypts the vouch in the response.
    pub const RESPONSE: &[u8] = b"vouch/1 response";
    /// The backend's signature over a vouch.
    pub const VOUCH_SIGNATURE: &[u8] = b"vouch/1 vouch signature";
    /// Peripheral-to-gateway record key.
    pub const P2G: &[u8] = b"vouch/1 p2g";
    /// Gateway-to-peripheral record key.
    pub const G2P: &[u8] = b"vouch/1 g2p";
    /// The resumption secret.
    pub const RESUMPTION: &[u8] = b"vouch/1 resumption";
    /// The next resumption ticket's id.
    pub const RESUMPTION_ID: &[u8] = b"vouch/1 resumption id";
    /// A non-secret session id for logs.
    pub const SESSION_ID: &[u8] = b"vouch/1 session id";
    /// The record key ratchet.
    pub const REKEY: &[u8] = b"vouch/1 rekey";
    /// The resumption binder key.
    pub const BINDER: &[u8] = b"vouch/1 binder";
    /// The gateway's resumption confirmation key.
    pub const RESUME_CONFIRM: &[u8] = b"vouch/1 resume confirm";
    /// The backend's signature over a trust-anchor update.
    pub const ANCHOR_UPDATE: &[u8] = b"vouch/1 anchor update";
    /// The commitment to a backend's next anchor (SPEC.md §2.3).
    pub const ANCHOR_COMMITMENT: &[u8] = b"vouch/1 anchor commitment";
}
