//! The handshake state machines of the three roles (SPEC.md §5, §6).
//!
//! - [`peripheral`]: the initiator. Sends Hello (or ResumeHello), checks the
//!   vouch, sends Finish. No heap.
//! - [`gateway`]: the responder. Pauses to ask the backend for a vouch (or the
//!   caller's ticket store for a resumption), then answers and checks Finish.
//! - [`backend`]: opens a sealed hello, verifies it against the registry entry
//!   the caller looked up, and issues the vouch. No heap.
//! - [`hello_signature`]: the rule the backend verifies hello signatures
//!   with, alone and in batches (SPEC.md §3.4, §5.3 step 6).
//!
//! Machines are enums of per-state structs consumed by value inside, with one
//! typestate step at the edge (`into_established`). Errors are sticky: after a
//! failed `handle_*`, every call returns the same error and does no work.

pub mod backend;
#[cfg(feature = "alloc")]
pub mod gateway;
pub mod hello_signature;
pub mod peripheral;
pub(crate) mod schedule;

/// Default time a peripheral waits for the gateway's answer (it includes the
/// backend round trip).
pub const DEFAULT_PERIPHERAL_TIMEOUT_MS: u64 = 30_000;

/// Default time a gateway waits for the backend's vouch.
pub const DEFAULT_BACKEND_TIMEOUT_MS: u64 = 10_000;

/// Default time a gateway waits for the peripheral's Finish.
pub const DEFAULT_FINISH_TIMEOUT_MS: u64 = 10_000;
