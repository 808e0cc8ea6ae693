//! A link to the other end of a Vouch connection, behind one narrow trait
//! (STYLE.md §3.15): the gateway's links to peripherals and a peripheral's
//! link to its gateway are the same kind of thing.
//!
//! A [`Link`] carries whole Vouch messages; each transport fragments and
//! reassembles with `vouch_proto::framing` (SPEC.md §8), so the drivers never
//! see fragments. [`push_fragment`] is the reassembly step every transport
//! shares: a bad fragment drops its partial message, never the link.

use std::future::Future;

use tracing::debug;
use vouch_proto::framing::{Reassembler, MAX_FRAGMENT};
use vouch_proto::{FramingError, Timestamp};

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
    /// The BLE stack or the device failed ([`BleError`]).
    #[error("BLE: {0}")]
    Ble(#[from] BleError),
    /// An operation did not finish in time.
    #[error("link operation timed out")]
    Timeout,
    /// The gateway address is not usable.
    #[error("invalid gateway address {0:?} (expected tcp://HOST:PORT)")]
    InvalidAddress(String),
    /// The ATT MTU is outside 23..=517.
    #[error("ATT MTU {0} is outside 23..=517")]
    InvalidMtu(usize),
    /// The peer sent no whole message within the first-message deadline
    /// (the gateway's link slots, SPEC.md §8.4).
    #[error("no first message in time")]
    FirstMessageTimeout,
    /// All link slots were taken and this link, silent the longest, made
    /// room for a newcomer (SPEC.md §8.4).
    #[error("closed to make room: no first message yet")]
    Evicted,
}

/// What failed on a BLE link.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BleError {
    /// No adapter of that name.
    #[error("adapter {name:?} not found (have: {available:?})")]
    AdapterNotFound {
        /// The configured name (`hci0`).
        name: String,
        /// The adapters the stack reported.
        available: Vec<String>,
    },
    /// The stack no longer knows the device.
    #[error("device {0} vanished")]
    DeviceVanished(String),
    /// The device lacks a characteristic of the Vouch service (SPEC.md §8.5).
    #[error("no Vouch {0} characteristic")]
    MissingCharacteristic(&'static str),
    /// The Vouch outbox does not support notifications.
    #[error("Vouch outbox does not notify")]
    OutboxDoesNotNotify,
    /// The device's Info characteristic names another protocol version.
    #[error("peripheral speaks protocol {0:02x?}")]
    UnsupportedProtocol(Vec<u8>),
    /// A connection was used before its service was set up.
    #[error("{0} before setup")]
    NotSetUp(&'static str),
    /// The Bluetooth stack failed (its own error, as its text).
    #[error("{0}")]
    Stack(String),
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

/// Feeds one received fragment to `reassembler`; returns the message it
/// completes. A bad fragment (empty, over [`MAX_FRAGMENT`] bytes, out of
/// sequence, too long, …) drops only the partial message, never the link
/// (SPEC.md §8.3): ending the link would let anyone who can inject one
/// fragment end a session (§7.4). A partial message past its reassembly
/// deadline is dropped first, so the fragment that arrives late is judged on
/// its own (a new start is accepted) rather than refused with it.
pub fn push_fragment<'r>(
    reassembler: &'r mut Reassembler,
    now: Timestamp,
    fragment: &'r [u8],
    peer: &str,
) -> Option<&'r [u8]> {
    if reassembler.handle_timeout(now) {
        debug!(link = %peer, "reassembly timed out; partial message dropped");
    }
    if fragment.len() > MAX_FRAGMENT {
        reassembler.reset();
        debug!(link = %peer, len = fragment.len(), "fragment over 512 bytes rejected; partial message dropped");
        return None;
    }
    match reassembler.push(now, fragment) {
        Ok(msg) => msg,
        Err(e) => {
            debug!(link = %peer, error = %e, "fragment rejected; partial message dropped");
            None
        }
    }
}
