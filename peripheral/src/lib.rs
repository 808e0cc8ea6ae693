//! # vouch-peripheral
//!
//! The Vouch device library: driver, key storage, provisioning, reference peripheral.
//!
//! **Status: not built yet.** This crate only exists so the workspace has the
//! layout of DESIGN.md section 2; its work is tracked in issue 5. It
//! contains no code and claims no behaviour. Until then, everything it will do
//! is available at the protocol level from `vouch-proto`:
//!
//! ```
//! assert_eq!(vouch_proto::wire::PROTOCOL_VERSION, 1);
//! ```
