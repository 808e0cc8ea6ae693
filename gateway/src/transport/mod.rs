//! Links to peripherals behind one narrow trait of our own (STYLE.md §3.15).
//!
//! A [`Link`] carries whole Vouch messages; each transport fragments and
//! reassembles with `vouch_proto::framing` (SPEC.md §8), so the driver never
//! sees fragments. Implementations: [`tcp`] (development, simulator, CI),
//! [`memory`] (tests, simulator) and [`ble`] (a GATT connection behind the
//! [`ble::BleRadio`] trait; `btleplug` implements it with btleplug, the only
//! file that imports that crate). Which links to open and admit is the
//! business of the accept loops above (`serve/`).

pub mod ble;
#[cfg(feature = "ble")]
pub mod btleplug;
pub mod memory;

/// The TCP link, shared with the reference peripheral.
pub use vouch_host::tcp;

pub use vouch_host::link::{push_fragment, BleError, Link, LinkError};
