//! The device's links to a gateway, behind two narrow traits of our own.
//!
//! A [`Connector`] produces one [`Link`] per connection: over TCP it dials the
//! gateway; over BLE it waits for a gateway to connect and subscribe. A link
//! carries whole Vouch messages: each transport fragments and reassembles
//! with `vouch_proto::framing` (SPEC.md §8), so the driver never sees
//! fragments. Implementations: [`tcp`] (development, simulator, CI) and, with
//! feature `ble`, `ble` (a BlueZ GATT server; the only file that imports
//! bluer).

#[cfg(feature = "ble")]
pub mod ble;
pub mod tcp;

use std::future::Future;

pub use vouch_host::link::{BleError, Link, LinkError};

/// Produces links to a gateway, one per connection.
pub trait Connector: Send + 'static {
    /// The link type.
    type Link: Link;
    /// The next connection. Over TCP: dial. Over BLE: wait until a gateway
    /// connects and subscribes (SPEC.md §8.5).
    fn connect(&mut self) -> impl Future<Output = Result<Self::Link, LinkError>> + Send;
    /// What this connector reaches, for logs.
    fn describe(&self) -> String;
}

/// Checks an ATT MTU: 23 (the BLE minimum) to 517 (a 512-byte fragment, SPEC.md §8.2).
pub fn check_att_mtu(att_mtu: usize) -> Result<usize, LinkError> {
    if (23..=517).contains(&att_mtu) {
        Ok(att_mtu)
    } else {
        Err(LinkError::InvalidMtu(att_mtu))
    }
}

/// Splits a message into the fragments of SPEC.md §8.1 for `att_mtu`.
#[cfg(any(feature = "ble", test))]
pub(crate) fn fragments(msg: &[u8], att_mtu: usize) -> Result<Vec<Vec<u8>>, LinkError> {
    use vouch_proto::framing::{Fragmenter, MAX_FRAGMENT};
    let mut f = Fragmenter::new(msg, att_mtu)?;
    let mut out = Vec::with_capacity(Fragmenter::count(msg.len(), att_mtu)?);
    let mut buf = [0u8; MAX_FRAGMENT];
    while let Some(n) = f.next_into(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    Ok(out)
}

/// Reassembly of one link's fragments within the limits of SPEC.md §8.3, on
/// the link's own clock.
#[cfg(feature = "ble")]
pub(crate) struct Reassembly {
    inner: Box<vouch_proto::framing::Reassembler>,
    epoch: tokio::time::Instant,
}

#[cfg(feature = "ble")]
impl Reassembly {
    pub(crate) fn new() -> Self {
        Self {
            inner: Box::new(vouch_proto::framing::Reassembler::new(
                vouch_proto::framing::ReassemblyLimits::default(),
            )),
            epoch: tokio::time::Instant::now(),
        }
    }

    /// Takes one fragment; returns a whole message when it completes one. A
    /// bad fragment drops only its partial message (SPEC.md §8.3), logged,
    /// and the link goes on; a partial message past its deadline is dropped
    /// first, and the fragment is judged on its own.
    pub(crate) fn push(&mut self, fragment: &[u8]) -> Option<Vec<u8>> {
        let now = vouch_proto::Timestamp(self.epoch.elapsed().as_millis() as u64);
        vouch_host::link::push_fragment(&mut self.inner, now, fragment, "gateway")
            .map(<[u8]>::to_vec)
    }
}
