//! The BLE side of the links, independent of any Bluetooth library: the
//! Vouch GATT service's UUIDs (SPEC.md §8.5), the narrow [`BleRadio`] and
//! [`BleConnection`] traits a Bluetooth stack implements (`btleplug.rs` with
//! btleplug; the tests with a fake), and [`BleLink`], a [`Link`] over one
//! GATT connection. Which devices to connect and when is the central's
//! business (the BLE central, `serve/ble.rs`).

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use vouch_proto::framing::{Fragmenter, Reassembler, ReassemblyLimits, MAX_FRAGMENT};
use vouch_proto::Timestamp;

use super::{Link, LinkError};

/// The Vouch GATT service (SPEC.md §8.5).
pub const SERVICE_UUID: u128 = 0x5b3f0001_8e4a_4c6e_9d2a_7f1c0b6e4a10;
/// Inbox: the gateway writes fragments here.
pub const INBOX_UUID: u128 = 0x5b3f0002_8e4a_4c6e_9d2a_7f1c0b6e4a10;
/// Outbox: the peripheral notifies fragments here.
pub const OUTBOX_UUID: u128 = 0x5b3f0003_8e4a_4c6e_9d2a_7f1c0b6e4a10;
/// Info: `version ‖ suite`.
pub const INFO_UUID: u128 = 0x5b3f0004_8e4a_4c6e_9d2a_7f1c0b6e4a10;

/// An advertisement report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// The stack's handle for the device (not an identity).
    pub device: String,
    /// The address it advertised from (for logs; spoofable).
    pub address: String,
    /// Advertised service UUIDs.
    pub services: Vec<u128>,
}

/// A Bluetooth stack, as narrow as the central needs.
pub trait BleRadio: Send + Sync + 'static {
    /// A connection to one device.
    type Conn: BleConnection;
    /// Starts scanning; advertisement reports arrive on the receiver.
    fn scan(&self) -> impl Future<Output = Result<mpsc::Receiver<Advert>, LinkError>> + Send;
    /// Connects to a device seen in an advertisement.
    fn connect(&self, device: &str) -> impl Future<Output = Result<Self::Conn, LinkError>> + Send;
    /// Tears down whatever connection to `device` the stack still holds or is
    /// still making, after a connect that timed out: BlueZ completes an LE
    /// connection even when the caller stopped waiting, and a device with a
    /// stale connection cannot be connected again.
    fn cancel(&self, device: &str) -> impl Future<Output = ()> + Send;
}

/// One GATT connection to a Vouch peripheral.
pub trait BleConnection: Send + 'static {
    /// Discovers the Vouch service, checks Info (`01 01`) and subscribes to
    /// Outbox. Fails if the device does not offer the service.
    fn setup(&mut self) -> impl Future<Output = Result<(), LinkError>> + Send;
    /// The fragment size to write: ATT MTU − 3.
    fn fragment_len(&self) -> usize;
    /// Writes one fragment to Inbox (write with response).
    fn write(&mut self, fragment: &[u8]) -> impl Future<Output = Result<(), LinkError>> + Send;
    /// The next Outbox notification; `None` once disconnected. Cancel-safe.
    fn notification(&mut self) -> impl Future<Output = Result<Option<Vec<u8>>, LinkError>> + Send;
    /// Disconnects.
    fn disconnect(&mut self) -> impl Future<Output = ()> + Send;
}

/// A [`Link`] over a GATT connection.
pub struct BleLink<C: BleConnection> {
    conn: C,
    device: String,
    reassembler: Reassembler,
    write_timeout: Duration,
    epoch: tokio::time::Instant,
}

impl<C: BleConnection> BleLink<C> {
    /// Wraps a set-up connection.
    pub fn new(conn: C, device: String, write_timeout: Duration) -> Self {
        Self {
            conn,
            device,
            reassembler: Reassembler::new(ReassemblyLimits::default()),
            write_timeout,
            epoch: tokio::time::Instant::now(),
        }
    }

    /// Gives the connection back (to disconnect it).
    pub fn into_inner(self) -> C {
        self.conn
    }
}

impl<C: BleConnection> Link for BleLink<C> {
    async fn send(&mut self, msg: &[u8]) -> Result<(), LinkError> {
        let frag_len = self.conn.fragment_len();
        // Fragmenter takes an ATT MTU; fragment length = MTU − 3.
        let mut f = Fragmenter::new(msg, frag_len + 3)?;
        let mut buf = [0u8; MAX_FRAGMENT];
        while let Some(n) = f.next_into(&mut buf) {
            tokio::time::timeout(self.write_timeout, self.conn.write(&buf[..n]))
                .await
                .map_err(|_| LinkError::Timeout)??;
        }
        Ok(())
    }

    async fn recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        loop {
            let Some(fragment) = self.conn.notification().await? else {
                return Ok(None);
            };
            let now = Timestamp(self.epoch.elapsed().as_millis() as u64);
            if let Some(msg) =
                super::push_fragment(&mut self.reassembler, now, &fragment, &self.device)
            {
                return Ok(Some(msg.to_vec()));
            }
        }
    }

    fn peer(&self) -> String {
        format!("ble:{}", self.device)
    }
}
