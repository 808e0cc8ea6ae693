//! Accept loops: where links come from. Each admits links within the link
//! slots ([`slots`], SPEC.md §8.4) and hands them to the
//! [`Gateway`](crate::endpoint::Gateway), which runs a driver for each.
//!
//! | module | what it serves |
//! |---|---|
//! | [`tcp`] | TCP connections (development, system tests, CI) |
//! | [`ble`] | the BLE central: scanning, connecting, retries (SPEC.md §8.5) |
//! | [`slots`] | the cap on concurrent links and the first-message deadline |

pub mod ble;
pub mod slots;
pub mod tcp;
