//! [`MemoryKeyStore`]: the device state in memory, shared between clones (so
//! a test can "reboot" a device by starting a new driver on a clone).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use vouch_proto::anchor::AnchorSet;
use vouch_proto::handshake::peripheral::TicketWallet;
use vouch_proto::keys::{IdentityKey, IdentitySigner, PeripheralId, PublicKey, Signature};
use zeroize::Zeroizing;

use super::{KeyStore, KeyStoreError};

/// An identity key shared by reference count; signs, never exports.
#[derive(Clone)]
pub struct SharedSigner(Arc<IdentityKey>);

impl SharedSigner {
    /// Wraps a key.
    pub fn new(key: IdentityKey) -> Self {
        Self(Arc::new(key))
    }
}

impl IdentitySigner for SharedSigner {
    fn public_key(&self) -> PublicKey {
        self.0.public_key()
    }
    fn sign(&self, msg: &[u8]) -> Signature {
        self.0.sign(msg)
    }
}

impl fmt::Debug for SharedSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSigner(..)")
    }
}

#[derive(Default)]
struct State {
    anchors: Option<AnchorSet>,
    /// The ticket as it would be on disk (postcard), zeroized when replaced.
    ticket: Option<Zeroizing<Vec<u8>>>,
}

/// Identity, anchors and ticket in memory. Clones share the same state.
#[derive(Clone)]
pub struct MemoryKeyStore {
    signer: SharedSigner,
    id: PeripheralId,
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for MemoryKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryKeyStore")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MemoryKeyStore {
    /// A store with this identity (and the derived id) and no anchors yet.
    pub fn new(key: IdentityKey) -> Self {
        let id = PeripheralId::derive(&key.public_key());
        Self::with_id(key, id)
    }

    /// A store with a factory-assigned id.
    pub fn with_id(key: IdentityKey, id: PeripheralId) -> Self {
        Self {
            signer: SharedSigner::new(key),
            id,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// A store with this identity and these anchors installed.
    pub fn provisioned(key: IdentityKey, anchors: AnchorSet) -> Self {
        let store = Self::new(key);
        store.lock().anchors = Some(anchors);
        store
    }

    /// Whether any resumption ticket is stored.
    pub fn has_ticket(&self) -> bool {
        self.lock().ticket.is_some()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is one assignment: the state is consistent even if a
        // holder panicked.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl KeyStore for MemoryKeyStore {
    type Signer = SharedSigner;

    fn signer(&self) -> &SharedSigner {
        &self.signer
    }

    fn peripheral_id(&self) -> PeripheralId {
        self.id
    }

    fn anchors(&self) -> Result<AnchorSet, KeyStoreError> {
        self.lock()
            .anchors
            .clone()
            .ok_or_else(|| KeyStoreError::NotProvisioned {
                path: "(memory)".into(),
            })
    }

    fn save_anchors(&mut self, anchors: &AnchorSet) -> Result<(), KeyStoreError> {
        self.lock().anchors = Some(anchors.clone());
        Ok(())
    }

    fn load_tickets(&self) -> Result<TicketWallet, KeyStoreError> {
        match &self.lock().ticket {
            None => Ok(TicketWallet::new()),
            Some(bytes) => postcard::from_bytes(bytes).map_err(|_| KeyStoreError::CorruptTicket {
                path: "(memory)".into(),
            }),
        }
    }

    fn save_tickets(&mut self, tickets: &TicketWallet) -> Result<(), KeyStoreError> {
        if tickets.is_empty() {
            self.lock().ticket = None;
            return Ok(());
        }
        let bytes =
            postcard::to_allocvec(tickets).map_err(|_| KeyStoreError::Encode("the tickets"))?;
        self.lock().ticket = Some(Zeroizing::new(bytes));
        Ok(())
    }
}
