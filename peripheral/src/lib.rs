//! # vouch-peripheral
//!
//! The device side of Vouch: a driver that runs the peripheral role of
//! `vouch-proto` over a real link, key storage, provisioning, and the
//! reference peripheral binary `vouch-peripheral`.
//!
//! | module | what |
//! |---|---|
//! | [`driver`] | [`Device`]: connect, full handshake or resumption, session, anchor updates, reconnect with backoff (SPEC.md §5–§7) |
//! | [`keystore`] | [`KeyStore`] (sign without exporting the key), [`FileKeyStore`], [`MemoryKeyStore`] |
//! | [`transport`] | [`Connector`]; the [`Link`] and TCP link (SPEC.md §8.4) shared with the gateway through `vouch-host`; BLE GATT server with feature `ble` (§8.5) |
//! | [`provision`] | the backend import row a factory line collects |
//! | [`reference`](mod@reference) | the reference device's commands and scope bits |
//! | [`backoff`] | exponential backoff with jitter (SPEC.md §6.4) |
//!
//! ## Two ways to build a device
//!
//! **A Linux device (or a simulator) with tokio**: this crate. The driver is a
//! task that owns the protocol state; the application talks to it through a
//! [`DeviceHandle`] and reads [`Event`]s.
//!
//! ```no_run
//! use vouch_peripheral::{Device, DriverConfig, Event, FileKeyStore, TcpConnector};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Generated once with `vouch-peripheral keygen`, provisioned with the
//! // backend's anchor bundle.
//! let store = FileKeyStore::open("/var/lib/vouch-device")?;
//! let connector = TcpConnector::from_url("tcp://127.0.0.1:7800", 247)?;
//! let (device, handle, mut events) = Device::new(store, connector, DriverConfig::default())?;
//! let driver = tokio::spawn(device.run(async {
//!     let _ = tokio::signal::ctrl_c().await;
//! }));
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Established(s) => {
//!             println!("session with gateway {} (resumed: {})", s.gateway_key, s.resumed);
//!             handle.send(b"21.5 C".to_vec()).await?;
//!         }
//!         Event::Data(command) => println!("gateway says {command:?}"),
//!         _ => {}
//!     }
//! }
//! driver.await??;
//! # Ok(()) }
//! ```
//!
//! **Microcontroller firmware (`no_std`, no heap)**: not this crate. This
//! crate needs `std` and tokio (files, sockets, a task). Firmware uses
//! `vouch-proto` directly, with `default-features = false`:
//! `PeripheralHandshake` (start/resume, `handle_input`, `poll_transmit`,
//! `poll_timeout`/`handle_timeout`), `Session` and the framing's
//! `Fragmenter`/`Reassembler` all work on fixed buffers, and the identity key
//! sits behind `IdentitySigner` (a secure element can implement it). The
//! example `examples/firmware_shape.rs` is that glue, written against `core`
//! and `vouch-proto` alone: what the BLE stack's callbacks (GATT write,
//! notification, timer) call, and what the firmware must persist (anchors and
//! ticket, in flash). It builds on the host as a `#![no_std]` library; the
//! firmware supplies the BLE stack, the flash storage, a CSPRNG seed and a
//! monotonic millisecond clock. `peripheral/README.md` shows how to
//! build it against `vouch-proto` without default features and what it
//! measures on Cortex-M.
//!
//! ## Key storage
//!
//! The identity key is generated on the device and never leaves it: the
//! driver only asks the [`KeyStore`] for something that signs. The file store
//! keeps it as PKCS#8 PEM with mode 0600, refuses a key file others can read,
//! and never creates an identity implicitly. A secure element or a TPM fits
//! behind the same trait (its `Signer` calls into the chip).
//!
//! ## What is tested where
//!
//! `tests/gateway.rs` runs this driver against the real gateway driver
//! (`vouch-gateway`, TCP) with an in-process backend built from the protocol's
//! backend role; `tests/cli.rs` runs the binary. The BLE transport (feature
//! `ble`) is built but has not run against a radio here: see
//! [`transport`] and the README.

pub mod backoff;
pub mod driver;
pub mod keystore;
pub mod provision;
pub mod reference;
pub mod transport;

pub use driver::{
    Device, DeviceHandle, DriverConfig, DriverError, Event, Events, SessionEnd, SessionInfo,
};
pub use keystore::{FileKeyStore, KeyStore, KeyStoreError, MemoryKeyStore};
pub use transport::tcp::{TcpConnector, TcpLink};
pub use transport::{Connector, Link, LinkError};
