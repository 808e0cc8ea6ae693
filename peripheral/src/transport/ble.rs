//! The BLE transport: the device as a GATT server through BlueZ (bluer),
//! following the GATT profile of SPEC.md §8.5. Linux only, feature `ble`.
//!
//! | attribute | UUID | properties | use |
//! |---|---|---|---|
//! | Vouch service | [`SERVICE_UUID`] | primary, advertised | |
//! | Inbox | [`INBOX_UUID`] | write (Write Request) | gateway → device fragments |
//! | Outbox | [`OUTBOX_UUID`] | notify | device → gateway fragments |
//! | Info | [`INFO_UUID`] | read | `01 01` (version, suite) |
//!
//! [`BleConnector::start`] powers the adapter on, registers the GATT
//! application and advertises the service. Each [`Connector::connect`] waits
//! until a gateway subscribes to Outbox; the link it returns notifies
//! fragments sized for the negotiated ATT MTU and reassembles what the
//! gateway writes to Inbox (only from the device that subscribed). The driver
//! then sends its Hello or ResumeHello, as SPEC.md §8.5 asks. One GATT
//! connection carries one handshake and its session; when the gateway
//! unsubscribes or disconnects, the link ends.
//!
//! **Untested against a radio.** This module builds in CI (it needs
//! libdbus-1-dev and pkg-config) and was written against bluer 0.17's
//! `gatt::local` API and its examples, but this repository's machines have no
//! Bluetooth controller, so it has never carried a handshake. The framing and
//! the driver above it are the ones the TCP tests exercise. To try it: a Linux
//! machine with BlueZ ≥ 5.56 (AcquireNotify), `bluetoothd` running, and
//! `vouch-peripheral run --dir DIR --connect ble` (or `ble:hci1`); see the
//! workspace's BLE testing notes for virtual controllers.

use std::sync::Arc;

use bluer::adv::{Advertisement, AdvertisementHandle};
use bluer::gatt::local::{
    characteristic_control, Application, ApplicationHandle, Characteristic, CharacteristicControl,
    CharacteristicControlEvent, CharacteristicNotify, CharacteristicNotifyMethod,
    CharacteristicRead, CharacteristicWrite, CharacteristicWriteMethod, ReqError, Service,
};
use bluer::gatt::CharacteristicWriter;
use bluer::{Address, DeviceEvent, DeviceProperty, Uuid};
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, Mutex};
use tracing::{debug, info};
use vouch_proto::framing::MAX_FRAGMENT;
use vouch_proto::wire::{Suite, PROTOCOL_VERSION};

use super::{fragments, BleError, Connector, Link, LinkError, Reassembly};

/// A BlueZ error, as the link layer reports it (its text: only this file
/// may name bluer's types).
fn ble_err(e: bluer::Error) -> LinkError {
    LinkError::Ble(BleError::Stack(e.to_string()))
}

/// The Vouch service (SPEC.md §8.5).
pub const SERVICE_UUID: Uuid = Uuid::from_u128(0x5b3f0001_8e4a_4c6e_9d2a_7f1c0b6e4a10);
/// Inbox: the gateway writes fragments.
pub const INBOX_UUID: Uuid = Uuid::from_u128(0x5b3f0002_8e4a_4c6e_9d2a_7f1c0b6e4a10);
/// Outbox: the device notifies fragments.
pub const OUTBOX_UUID: Uuid = Uuid::from_u128(0x5b3f0003_8e4a_4c6e_9d2a_7f1c0b6e4a10);
/// Info: `version ‖ suite`.
pub const INFO_UUID: Uuid = Uuid::from_u128(0x5b3f0004_8e4a_4c6e_9d2a_7f1c0b6e4a10);

/// Settings of [`BleConnector`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BleConfig {
    /// The adapter (`hci0`, …); `None` for BlueZ's default.
    pub adapter: Option<String>,
    /// The advertised local name.
    pub local_name: String,
    /// Fragments written to Inbox that may wait unread (beyond that, writes
    /// are answered with an error).
    pub inbox_queue: usize,
    /// The largest ATT MTU to size notifications for: the fragments are
    /// sized for the smaller of this and the MTU BlueZ negotiated (a radio
    /// whose buffers are smaller than what the stack agreed to).
    pub max_att_mtu: usize,
}

impl Default for BleConfig {
    fn default() -> Self {
        Self {
            adapter: None,
            local_name: "vouch".into(),
            inbox_queue: 128,
            max_att_mtu: 247,
        }
    }
}

/// One fragment the gateway wrote to Inbox.
struct Fragment {
    from: Address,
    data: Vec<u8>,
}

type Inbox = Arc<Mutex<mpsc::Receiver<Fragment>>>;

/// The GATT server: advertises the Vouch service and hands out one link per
/// gateway subscription.
pub struct BleConnector {
    adapter: bluer::Adapter,
    adapter_name: String,
    max_att_mtu: usize,
    outbox: CharacteristicControl,
    inbox: Inbox,
    // Dropping these unregisters the application and stops advertising.
    _app: ApplicationHandle,
    _adv: AdvertisementHandle,
    _session: bluer::Session,
}

impl std::fmt::Debug for BleConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BleConnector")
            .field("adapter", &self.adapter_name)
            .finish_non_exhaustive()
    }
}

impl BleConnector {
    /// Powers the adapter on, registers the GATT application and advertises.
    pub async fn start(config: BleConfig) -> Result<Self, LinkError> {
        let session = bluer::Session::new().await.map_err(ble_err)?;
        let adapter = match &config.adapter {
            Some(name) => session.adapter(name).map_err(ble_err)?,
            None => session.default_adapter().await.map_err(ble_err)?,
        };
        adapter.set_powered(true).await.map_err(ble_err)?;

        let (inbox_tx, inbox_rx) = mpsc::channel(config.inbox_queue.max(1));
        let (outbox, outbox_handle) = characteristic_control();
        let inbox_write = CharacteristicWrite {
            write: true,
            method: CharacteristicWriteMethod::Fun(Box::new(move |value, req| {
                let tx = inbox_tx.clone();
                async move {
                    if value.is_empty() || value.len() > MAX_FRAGMENT {
                        return Err(ReqError::InvalidValueLength);
                    }
                    if req.offset != 0 {
                        return Err(ReqError::InvalidOffset);
                    }
                    tx.try_send(Fragment {
                        from: req.device_address,
                        data: value,
                    })
                    .map_err(|_| ReqError::Failed)
                }
                .boxed()
            })),
            ..Default::default()
        };
        let info_read = CharacteristicRead {
            read: true,
            fun: Box::new(|_req| {
                async move {
                    Ok(vec![
                        PROTOCOL_VERSION,
                        Suite::Ed25519X25519ChaCha20Poly1305 as u8,
                    ])
                }
                .boxed()
            }),
            ..Default::default()
        };
        let app = Application {
            services: vec![Service {
                uuid: SERVICE_UUID,
                primary: true,
                characteristics: vec![
                    Characteristic {
                        uuid: INBOX_UUID,
                        write: Some(inbox_write),
                        ..Default::default()
                    },
                    Characteristic {
                        uuid: OUTBOX_UUID,
                        notify: Some(CharacteristicNotify {
                            notify: true,
                            method: CharacteristicNotifyMethod::Io,
                            ..Default::default()
                        }),
                        control_handle: outbox_handle,
                        ..Default::default()
                    },
                    Characteristic {
                        uuid: INFO_UUID,
                        read: Some(info_read),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let app = adapter.serve_gatt_application(app).await.map_err(ble_err)?;
        let adv = adapter
            .advertise(Advertisement {
                service_uuids: [SERVICE_UUID].into_iter().collect(),
                discoverable: Some(true),
                local_name: Some(config.local_name.clone()),
                ..Default::default()
            })
            .await
            .map_err(ble_err)?;
        info!(adapter = adapter.name(), name = %config.local_name, "advertising the Vouch GATT service");
        Ok(Self {
            adapter_name: adapter.name().to_string(),
            adapter,
            max_att_mtu: config.max_att_mtu.clamp(23, 517),
            outbox,
            inbox: Arc::new(Mutex::new(inbox_rx)),
            _app: app,
            _adv: adv,
            _session: session,
        })
    }
}

impl BleConnector {
    /// BlueZ's events for `peer`, reduced to the one the link needs: the
    /// device disconnected. BlueZ does not always close the notification
    /// socket when a central disconnects (seen in the BLE VM: the device then
    /// waited out its handshake timeout and missed the gateway's next
    /// connection), so the link also ends on this. `None` if BlueZ cannot
    /// give the events; the link then ends only when the socket closes.
    async fn disconnected(&self, peer: Address) -> Option<BoxStream<'static, ()>> {
        let device = self.adapter.device(peer).ok()?;
        let events = device.events().await.ok()?;
        // It may have gone before the subscription to its events.
        let gone = !device.is_connected().await.unwrap_or(true);
        let ended = events.filter_map(|event| async move {
            matches!(
                event,
                DeviceEvent::PropertyChanged(DeviceProperty::Connected(false))
            )
            .then_some(())
        });
        Some(if gone {
            futures_util::stream::once(async {}).boxed()
        } else {
            ended.boxed()
        })
    }
}

impl Connector for BleConnector {
    type Link = BleLink;

    async fn connect(&mut self) -> Result<BleLink, LinkError> {
        loop {
            match self.outbox.next().await {
                Some(CharacteristicControlEvent::Notify(writer)) => {
                    // Fragments from an earlier connection mean nothing now.
                    {
                        let mut inbox = self.inbox.lock().await;
                        while inbox.try_recv().is_ok() {}
                    }
                    let peer = writer.device_address();
                    let att_mtu = writer.mtu().min(self.max_att_mtu);
                    info!(peer = %peer, mtu = writer.mtu(), att_mtu, "gateway subscribed to Outbox");
                    let disconnected = self.disconnected(peer).await;
                    return Ok(BleLink {
                        att_mtu,
                        writer,
                        peer,
                        inbox: self.inbox.clone(),
                        reassembly: Reassembly::new(),
                        disconnected,
                    });
                }
                Some(CharacteristicControlEvent::Write(req)) => {
                    // Inbox takes writes through its callback; nothing asks
                    // for an I/O write.
                    req.reject(ReqError::NotSupported);
                }
                None => {
                    return Err(LinkError::Io(std::io::Error::other(
                        "the GATT application was unregistered",
                    )))
                }
            }
        }
    }

    fn describe(&self) -> String {
        format!("ble:{} (GATT server)", self.adapter_name)
    }
}

/// One gateway's GATT connection: notifications out, Inbox writes in.
pub struct BleLink {
    /// The ATT MTU notifications are sized for.
    att_mtu: usize,
    writer: CharacteristicWriter,
    peer: Address,
    inbox: Inbox,
    reassembly: Reassembly,
    /// Yields when BlueZ reports the gateway disconnected.
    disconnected: Option<BoxStream<'static, ()>>,
}

impl std::fmt::Debug for BleLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BleLink")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Link for BleLink {
    async fn send(&mut self, msg: &[u8]) -> Result<(), LinkError> {
        // BlueZ reports the ATT MTU; a notification carries MTU − 3 bytes.
        for fragment in fragments(msg, self.att_mtu)? {
            self.writer.send(&fragment).await?;
        }
        Ok(())
    }

    async fn recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        loop {
            let fragment = {
                let mut inbox = self.inbox.lock().await;
                let disconnected = async {
                    match &mut self.disconnected {
                        Some(events) => {
                            if events.next().await.is_none() {
                                // BlueZ stopped reporting: rely on the socket.
                                std::future::pending::<()>().await;
                            }
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    f = inbox.recv() => f,
                    // BlueZ closes the notification socket when the gateway
                    // unsubscribes or disconnects; not always (above).
                    _ = self.writer.closed() => None,
                    () = disconnected => {
                        debug!(peer = %self.peer, "BlueZ reports the gateway disconnected");
                        None
                    }
                }
            };
            let Some(fragment) = fragment else {
                return Ok(None);
            };
            if fragment.from != self.peer {
                debug!(from = %fragment.from, "dropping an Inbox write from another device");
                continue;
            }
            if let Some(msg) = self.reassembly.push(&fragment.data) {
                return Ok(Some(msg));
            }
        }
    }

    fn peer(&self) -> String {
        format!("ble:{}", self.peer)
    }
}
