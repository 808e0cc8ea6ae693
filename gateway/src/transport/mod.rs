//! Links to peripherals behind one narrow trait of our own (STYLE.md §3.15).
//!
//! A [`Link`] carries whole Vouch messages; each transport fragments and
//! reassembles with `vouch_proto::framing` (SPEC.md §8), so the driver never
//! sees fragments. Implementations: [`tcp`] (development, simulator, CI),
//! [`memory`] (tests, simulator) and `ble` (btleplug; the only file that
//! imports it).

#[cfg(feature = "ble")]
pub mod ble;
pub mod ble_central;
pub mod memory;
pub mod tcp;

use std::future::Future;

use vouch_proto::FramingError;

/// Why a link failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The underlying socket or radio failed.
    #[error("link I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the framing rules; the link is closed.
    #[error("framing: {0}")]
    Framing(#[from] FramingError),
    /// The message is larger than the protocol allows.
    #[error("message of {0} bytes is too large to send")]
    TooLarge(usize),
    /// The BLE stack reported an error (mapped from the backend's own type).
    #[error("BLE: {0}")]
    Ble(String),
    /// An operation did not finish in time.
    #[error("link operation timed out")]
    Timeout,
}

/// One connection to one peripheral, carrying whole messages.
///
/// `recv` must be cancel-safe: the driver calls it inside `select!`.
pub trait Link: Send + 'static {
    /// Sends one whole message.
    fn send(&mut self, msg: &[u8]) -> impl Future<Output = Result<(), LinkError>> + Send;
    /// The next whole message, or `None` when the peer disconnected.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Vec<u8>>, LinkError>> + Send;
    /// A description of the peer for logs (an address: never trusted).
    fn peer(&self) -> String;
}
