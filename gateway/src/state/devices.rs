//! The BLE central's memory of which devices advertised the Vouch service,
//! kept across restarts.
//!
//! BlueZ replaces a connected device's service list with the GATT services it
//! resolved, so after a gateway restart a device BlueZ already knows may be
//! reported without the Vouch service. The addresses of devices that did
//! advertise it are kept in `ble-devices` (0600):
//!
//! ```text
//! 1 ‖ 'D' ‖ postcard([string]) ‖ CRC-32        oldest first, at most MAX_KNOWN_DEVICES
//! ```
//!
//! The file is written when a device is remembered for the first time, not
//! on every advertisement. An address is a hint to try a connection, never an
//! identity: the handshake decides who is there (SPEC.md §11.1).

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{debug, info, warn};

use super::{frame, read_limited, unframe, write_atomic, Kind, StateDir, Unreadable, DEVICES_FILE};

/// Most addresses remembered; beyond it the oldest is forgotten.
pub const MAX_KNOWN_DEVICES: usize = 1024;
/// Longest address remembered (a BLE address is 17 characters).
pub const MAX_ADDRESS_LEN: usize = 64;
/// Largest device file read.
const MAX_DEVICES_FILE: u64 = (MAX_KNOWN_DEVICES * (MAX_ADDRESS_LEN + 2) + 64) as u64;

#[derive(Default)]
struct List {
    order: VecDeque<String>,
    set: HashSet<String>,
    /// Bumped on every change; the file holds `written`.
    generation: u64,
}

struct Inner {
    /// `None`: in memory only.
    dir: Option<PathBuf>,
    list: Mutex<List>,
    /// The generation on disk; held while writing, so writes never interleave.
    written: Mutex<u64>,
}

/// Addresses of devices that advertised the Vouch service. Cheap to clone
/// (clones share the memory).
#[derive(Clone)]
pub struct KnownDevices {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KnownDevices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownDevices")
            .field("dir", &self.inner.dir)
            .field("len", &self.len())
            .finish()
    }
}

fn normalize(address: &str) -> Option<String> {
    let a = address.trim();
    (!a.is_empty() && a.len() <= MAX_ADDRESS_LEN).then(|| a.to_ascii_uppercase())
}

impl KnownDevices {
    /// A memory that lasts as long as the process.
    pub fn in_memory() -> Self {
        Self::with(None, List::default())
    }

    /// The memory kept in `state`: loads `ble-devices`. A missing file is an
    /// empty memory; an unreadable one is logged and replaced at the next
    /// write, never fatal.
    pub fn open(state: &StateDir) -> Self {
        let path = state.devices_path();
        let mut list = List::default();
        match read_limited(&path, MAX_DEVICES_FILE).and_then(|bytes| {
            let body = unframe(Kind::Devices, &bytes)?;
            Ok(postcard::from_bytes::<Vec<String>>(body)?)
        }) {
            Ok(addresses) => {
                for a in addresses.into_iter().filter_map(|a| normalize(&a)) {
                    if list.set.insert(a.clone()) {
                        list.order.push_back(a);
                    }
                }
                while list.order.len() > MAX_KNOWN_DEVICES {
                    if let Some(old) = list.order.pop_front() {
                        list.set.remove(&old);
                    }
                }
                info!(file = %path.display(), devices = list.order.len(), "BLE devices remembered from before");
            }
            Err(Unreadable::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(file = %path.display(), reason = %e,
                "unreadable BLE device memory skipped; devices are learnt again from their advertisements"),
        }
        Self::with(Some(state.path().to_path_buf()), list)
    }

    fn with(dir: Option<PathBuf>, list: List) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir,
                list: Mutex::new(list),
                written: Mutex::new(0),
            }),
        }
    }

    fn list(&self) -> MutexGuard<'_, List> {
        self.inner.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a device with this address advertised the Vouch service.
    pub fn contains(&self, address: &str) -> bool {
        normalize(address).is_some_and(|a| self.list().set.contains(&a))
    }

    /// How many addresses are remembered.
    pub fn len(&self) -> usize {
        self.list().order.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remembers that the device at `address` advertised the Vouch service.
    /// Returns whether it is new; only then is the file written (in the
    /// background: the caller is the central's event loop).
    pub fn remember(&self, address: &str) -> bool {
        let Some(a) = normalize(address) else {
            return false;
        };
        {
            let mut list = self.list();
            if !list.set.insert(a.clone()) {
                return false;
            }
            list.order.push_back(a);
            while list.order.len() > MAX_KNOWN_DEVICES {
                if let Some(old) = list.order.pop_front() {
                    list.set.remove(&old);
                }
            }
            list.generation += 1;
        }
        if self.inner.dir.is_some() {
            let inner = self.inner.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn_blocking(move || write_latest(&inner));
                }
                Err(_) => write_latest(&inner),
            }
        }
        true
    }

    /// Waits until the file holds every address remembered so far.
    pub async fn flush(&self) {
        if self.inner.dir.is_none() {
            return;
        }
        let inner = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || write_latest(&inner)).await;
    }
}

/// Writes the current list unless the file already holds it.
fn write_latest(inner: &Inner) {
    let Some(dir) = &inner.dir else { return };
    let mut written = inner.written.lock().unwrap_or_else(|e| e.into_inner());
    let (generation, addresses) = {
        let list = inner.list.lock().unwrap_or_else(|e| e.into_inner());
        (
            list.generation,
            list.order.iter().cloned().collect::<Vec<_>>(),
        )
    };
    if generation <= *written {
        return;
    }
    // Serializing a list of strings into a Vec cannot fail.
    let body = postcard::to_allocvec(&addresses).unwrap_or_default();
    match write_atomic(dir, DEVICES_FILE, &frame(Kind::Devices, &[&body]), true) {
        Ok(()) => {
            *written = generation;
            debug!(devices = addresses.len(), "BLE device memory saved");
        }
        Err(e) => warn!(file = %dir.join(DEVICES_FILE).display(), error = %e,
            "cannot save the BLE device memory"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembering_is_bounded_and_normalized() {
        let k = KnownDevices::in_memory();
        assert!(k.remember("aa:bb:cc:dd:ee:01"));
        assert!(!k.remember("AA:BB:CC:DD:EE:01"), "the same address");
        assert!(k.contains("AA:BB:CC:DD:EE:01"));
        assert!(!k.remember(""));
        assert!(!k.remember(&"x".repeat(MAX_ADDRESS_LEN + 1)));
        for i in 0..MAX_KNOWN_DEVICES {
            k.remember(&format!("dev-{i}"));
        }
        assert_eq!(k.len(), MAX_KNOWN_DEVICES);
        assert!(!k.contains("AA:BB:CC:DD:EE:01"), "the oldest was forgotten");
        assert!(k.contains(&format!("dev-{}", MAX_KNOWN_DEVICES - 1)));
    }
}
