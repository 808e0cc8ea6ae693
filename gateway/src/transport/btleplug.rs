//! [`BleRadio`] on btleplug (BlueZ on Linux). The only file that imports
//! btleplug: everything else speaks our own narrow trait, and btleplug's
//! errors are mapped into [`LinkError`] here.
//!
//! Fragment size: btleplug does not report the negotiated ATT MTU, so the
//! gateway writes fragments of the configured size (default ATT MTU 247) with
//! write requests; BlueZ turns a value longer than the negotiated MTU allows
//! into a long write (prepare/execute), so a peripheral that negotiated ATT MTU
//! 23 still receives whole fragments. Notifications are the peripheral's to
//! size (SPEC.md §8.5).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use btleplug::api::{
    Central, CentralEvent, CharPropFlags, Characteristic, Manager as _, Peripheral as _,
    ScanFilter, WriteType,
};
use btleplug::platform::{Adapter, Manager, Peripheral, PeripheralId};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tracing::{debug, warn};
use uuid::Uuid;

use super::ble::{
    Advert, BleConnection, BleRadio, INBOX_UUID, INFO_UUID, OUTBOX_UUID, SERVICE_UUID,
};
use super::{BleError, LinkError};

fn ble_err(e: btleplug::Error) -> LinkError {
    LinkError::Ble(BleError::Stack(e.to_string()))
}

/// One BlueZ adapter, chosen by name.
pub struct BtleplugRadio {
    adapter: Adapter,
    ids: Arc<Mutex<HashMap<String, PeripheralId>>>,
    fragment_len: usize,
}

impl BtleplugRadio {
    /// Opens the adapter whose name (`hci0`) starts its description; adapter
    /// order is not stable, so the name is required.
    pub async fn open(adapter_name: &str, att_mtu: usize) -> Result<Self, LinkError> {
        let manager = Manager::new().await.map_err(ble_err)?;
        let mut names = Vec::new();
        for adapter in manager.adapters().await.map_err(ble_err)? {
            let info = adapter.adapter_info().await.map_err(ble_err)?;
            if info.split_whitespace().next() == Some(adapter_name) {
                return Ok(Self {
                    adapter,
                    ids: Arc::new(Mutex::new(HashMap::new())),
                    fragment_len: att_mtu.saturating_sub(3).max(20),
                });
            }
            names.push(info);
        }
        Err(BleError::AdapterNotFound {
            name: adapter_name.to_string(),
            available: names,
        }
        .into())
    }

    fn remember(&self, id: &PeripheralId) -> String {
        let key = format!("{id:?}");
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), id.clone());
        key
    }
}

impl BleRadio for BtleplugRadio {
    type Conn = BtleplugConn;

    async fn scan(&self) -> Result<mpsc::Receiver<Advert>, LinkError> {
        let mut events = self.adapter.events().await.map_err(ble_err)?;
        // Scan for everything and filter in our own code (SPEC.md §8.5):
        // BlueZ's service filter misses devices whose UUID is in the scan
        // response rather than the advertisement.
        self.adapter
            .start_scan(ScanFilter::default())
            .await
            .map_err(ble_err)?;
        let (tx, rx) = mpsc::channel(256);
        let adapter = self.adapter.clone();
        let ids = self.ids.clone();
        tokio::spawn(async move {
            // Devices BlueZ already knows (from before this process started,
            // or from another program) produce no event until their
            // advertisement changes, which for a device that simply keeps
            // advertising is never: report each of them once now.
            let known = match adapter.peripherals().await {
                Ok(known) => known,
                Err(e) => {
                    warn!(error = %e, "cannot list the devices BlueZ knows");
                    Vec::new()
                }
            };
            debug!(count = known.len(), "devices BlueZ already knows");
            for p in known {
                let Some(advert) = advert_of(&p, &ids).await else {
                    continue;
                };
                if tx.send(advert).await.is_err() {
                    return;
                }
            }
            while let Some(event) = events.next().await {
                let id = match &event {
                    CentralEvent::DeviceDiscovered(id)
                    | CentralEvent::DeviceUpdated(id)
                    | CentralEvent::ServicesAdvertisement { id, .. } => id.clone(),
                    _ => continue,
                };
                let Ok(p) = adapter.peripheral(&id).await else {
                    continue;
                };
                let Some(advert) = advert_of(&p, &ids).await else {
                    continue;
                };
                if tx.send(advert).await.is_err() {
                    return;
                }
            }
            warn!("BlueZ event stream ended");
        });
        Ok(rx)
    }

    async fn connect(&self, device: &str) -> Result<BtleplugConn, LinkError> {
        let id = self
            .ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(device)
            .cloned();
        let peripheral = match id {
            Some(id) => self.adapter.peripheral(&id).await.map_err(ble_err)?,
            None => {
                // Seen by the scan task but not yet recorded here: look it up.
                let all = self.adapter.peripherals().await.map_err(ble_err)?;
                let p = all
                    .into_iter()
                    .find(|p| format!("{:?}", p.id()) == device)
                    .ok_or_else(|| BleError::DeviceVanished(device.to_string()))?;
                self.remember(&p.id());
                p
            }
        };
        peripheral.connect().await.map_err(ble_err)?;
        Ok(BtleplugConn {
            peripheral,
            inbox: None,
            outbox: None,
            notifications: None,
            fragment_len: self.fragment_len,
        })
    }

    async fn cancel(&self, device: &str) {
        let id = self
            .ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(device)
            .cloned();
        let Some(id) = id else { return };
        // BlueZ's Disconnect also aborts a connection still being made.
        match self.adapter.peripheral(&id).await {
            Ok(p) => {
                if let Err(e) = p.disconnect().await {
                    debug!(device, error = %e, "BLE cancel");
                }
            }
            Err(e) => debug!(device, error = %e, "BLE cancel: device gone"),
        }
    }
}

/// What BlueZ currently holds about `p`, as an [`Advert`]; remembers its id
/// for [`BtleplugRadio::connect`]. `None` when its properties cannot be read.
async fn advert_of(p: &Peripheral, ids: &Mutex<HashMap<String, PeripheralId>>) -> Option<Advert> {
    let props = p.properties().await.ok()??;
    let id = p.id();
    let key = format!("{id:?}");
    ids.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key.clone(), id);
    Some(Advert {
        device: key,
        address: props.address.to_string(),
        services: props.services.iter().map(|u| u.as_u128()).collect(),
    })
}

/// A GATT connection through btleplug.
pub struct BtleplugConn {
    peripheral: Peripheral,
    inbox: Option<Characteristic>,
    outbox: Option<Characteristic>,
    notifications: Option<Pin<Box<dyn Stream<Item = btleplug::api::ValueNotification> + Send>>>,
    fragment_len: usize,
}

impl BleConnection for BtleplugConn {
    async fn setup(&mut self) -> Result<(), LinkError> {
        self.peripheral.discover_services().await.map_err(ble_err)?;
        let service = Uuid::from_u128(SERVICE_UUID);
        let chars = self.peripheral.characteristics();
        let find = |uuid: u128| {
            chars
                .iter()
                .find(|c| c.uuid == Uuid::from_u128(uuid) && c.service_uuid == service)
                .cloned()
        };
        let inbox = find(INBOX_UUID).ok_or(BleError::MissingCharacteristic("inbox"))?;
        let outbox = find(OUTBOX_UUID).ok_or(BleError::MissingCharacteristic("outbox"))?;
        if !outbox.properties.contains(CharPropFlags::NOTIFY) {
            return Err(BleError::OutboxDoesNotNotify.into());
        }
        if let Some(info) = find(INFO_UUID) {
            let v = self.peripheral.read(&info).await.map_err(ble_err)?;
            if v.first() != Some(&vouch_proto::wire::PROTOCOL_VERSION) {
                return Err(BleError::UnsupportedProtocol(v).into());
            }
        }
        let stream = self.peripheral.notifications().await.map_err(ble_err)?;
        self.peripheral.subscribe(&outbox).await.map_err(ble_err)?;
        debug!(device = ?self.peripheral.id(), "subscribed to the Vouch outbox");
        self.inbox = Some(inbox);
        self.outbox = Some(outbox);
        self.notifications = Some(stream);
        Ok(())
    }

    fn fragment_len(&self) -> usize {
        self.fragment_len
    }

    async fn write(&mut self, fragment: &[u8]) -> Result<(), LinkError> {
        let inbox = self.inbox.as_ref().ok_or(BleError::NotSetUp("write"))?;
        self.peripheral
            .write(inbox, fragment, WriteType::WithResponse)
            .await
            .map_err(ble_err)
    }

    async fn notification(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        let Some(stream) = self.notifications.as_mut() else {
            return Err(BleError::NotSetUp("read").into());
        };
        let outbox = Uuid::from_u128(OUTBOX_UUID);
        while let Some(n) = stream.next().await {
            if n.uuid == outbox {
                return Ok(Some(n.value));
            }
        }
        Ok(None)
    }

    async fn disconnect(&mut self) {
        // Stop notifying first: BlueZ keeps a notification client per D-Bus
        // peer across connections and re-registers it on the next one, which
        // then delivered nothing (found by the BLE VM test).
        if let Some(outbox) = self.outbox.take() {
            if let Err(e) = self.peripheral.unsubscribe(&outbox).await {
                debug!(error = %e, "BLE unsubscribe");
            }
        }
        self.notifications = None;
        if let Err(e) = self.peripheral.disconnect().await {
            debug!(error = %e, "BLE disconnect");
        }
    }
}
