//! The backend key ring and trust-anchor rotation (SPEC.md §2.5, §7.7).
//!
//! ## Where things live
//!
//! - The **private keys** are files in the data directory, one
//!   `signing-N.pem` / `sealing-N.pem` pair per key id N ([`crate::datadir`]).
//!   They never enter the database.
//! - The **status** of every key id (its public anchor, when it was added,
//!   retired or purged) and the **signed anchor updates**, in serial order,
//!   are in the database ([`crate::store::KeyRow`], [`crate::store::UpdateRow`]),
//!   written under the global writer lock together with their audit entry.
//!   Every backend instance on one database thus agrees on them, and a change
//!   is either wholly recorded or not at all.
//! - Which key is **current** is not stored: it is the primary anchor of the
//!   set a fully updated peripheral holds, which the backend computes by
//!   replaying every stored update with the peripheral's own
//!   [`AnchorSet::apply`] (signatures included) on the anchors peripherals
//!   were provisioned with. The stored log is thereby checked every time it is
//!   used, by the code the devices run.
//!
//! A data directory from before key rotation has one key pair (key id 1) and
//! an empty `backend_keys` table. It works unchanged: that key is then the
//! only one, current, and nothing is written until the first `keys rotate`,
//! which registers it (audit entry `backend_key_genesis`) in the same
//! transaction as the rotation.
//!
//! ## The life of a key id
//!
//! | state | trusted by updated devices | served: hellos sealed to it are opened, its vouches signed | reached by |
//! |---|---|---|---|
//! | `prepared` | no | yes | `keys rotate --prepare` |
//! | `current` | yes (their primary: they seal to it) | yes | `init` (key id 1), `keys rotate` |
//! | `trusted` | yes (an older anchor) | yes | the next `keys rotate` |
//! | `retired` | no, once they applied its `Retire` | **yes** | `keys retire KID` |
//! | `purged` | no | no: `unknown_backend_key` | `keys purge KID` |
//!
//! A vouch is signed by the key pair the hello named (SPEC.md §5.3), which the
//! peripheral holds: it sealed its hello to that anchor. So a peripheral that
//! has not received the updates yet (offline, or out of range of every
//! gateway) keeps working on the old key, and receives the updates in its
//! next session. Retiring a key therefore does not stop serving it: a
//! peripheral that missed the `Add` still seals to the retired key and must
//! still be able to connect to learn the new one. Only `keys purge` stops
//! serving it, deleting its private half; a peripheral that still knows only
//! purged keys can no longer connect and must be provisioned again
//! (`export-anchor`). Key ids are never reused.
//!
//! ## Several instances
//!
//! Each instance reloads its ring from the database and its data directory
//! every second ([`reload`]): a key registered in the database whose files
//! are present is served from then on; a purged one is dropped. An instance
//! hands a gateway only the updates up to, not including, the first `Add` of
//! a key it does not serve ([`updates_for_gateways`]), so it never tells a
//! peripheral to seal to a key that it cannot open. With several instances,
//! `keys rotate --prepare` creates the key without announcing it; copy its
//! two files to every instance's data directory, then `keys rotate`
//! announces it (backend/README.md, "Key rotation").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde::Serialize;
use vouch_proto::anchor::{Anchor, AnchorAction, AnchorSet, AnchorUpdate, MAX_ANCHORS};
use vouch_proto::handshake::backend::BackendKeys;
use vouch_proto::keys::KeyId;
use vouch_proto::wire::backend::{AnchorUpdateBatch, MAX_ANCHOR_UPDATES};

use crate::datadir::{self, DataDir, DataDirError};
use crate::model::ser_display;
use crate::store::{now_ms, KeyRow, NewAudit, Rfc3339, Store, StoreError, UpdateRow};
use crate::AppState;

/// Errors of key-ring operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRingError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data directory failed.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// No key with this id was ever registered.
    #[error("key {0} is not in the key ring (see `vouch-backend keys list`)")]
    UnknownKey(KeyId),
    /// The current key cannot be retired or purged.
    #[error("key {0} is the current key: `keys rotate` first, then retire the key before it")]
    Current(KeyId),
    /// Only a key devices trust can be retired.
    #[error("key {0} is {1}, not trusted by devices: there is nothing to retire")]
    NotTrusted(KeyId, KeyState),
    /// Only a retired or prepared key can be purged.
    #[error("key {0} is still trusted by devices ({1}): `keys retire {0}` first")]
    StillTrusted(KeyId, KeyState),
    /// Devices cannot take another anchor.
    #[error(
        "devices hold at most {MAX_ANCHORS} anchors and {0} keys are trusted: retire one first"
    )]
    Full(usize),
    /// A prepared key is waiting to be announced.
    #[error(
        "key {0} is prepared and not announced yet: announce it with `keys rotate`, \
         or discard it with `keys purge {0}`"
    )]
    AlreadyPrepared(KeyId),
    /// Every key id was used (they are never reused).
    #[error("every key id up to 255 has been used, and key ids are never reused")]
    KeyIdsExhausted,
    /// The private half of a key this operation needs is not here.
    #[error("the private key of key {kid} is not in this data directory ({})", .dir.display())]
    MissingPrivateKey {
        /// The key.
        kid: KeyId,
        /// The data directory.
        dir: PathBuf,
    },
    /// A key file holds another key than the one registered under its id.
    #[error(
        "{}: this is not the key {kid} registered in the database \
         (a data directory from another backend?)",
        .path.display()
    )]
    Mismatch {
        /// The key id.
        kid: KeyId,
        /// Its signing key file.
        path: PathBuf,
    },
    /// The stored updates do not apply in order to the provisioned anchors.
    #[error("stored anchor update {serial} does not apply to the anchors before it: {error}")]
    BrokenLog {
        /// The update's serial.
        serial: u32,
        /// Why `AnchorSet::apply` refused it.
        error: vouch_proto::Error,
    },
    /// The keys registered as provisioned before any update are not a valid
    /// anchor set (none, or more than a device holds).
    #[error("the registered keys do not include the anchors devices were provisioned with")]
    BadGenesis,
    /// The backend lives in memory only (`DataDir::ephemeral`).
    #[error("key rotation needs a data directory on disk")]
    NoDirectory,
}

/// Where a key id is in its life (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Created and served, not announced to devices.
    Prepared,
    /// The primary anchor of a fully updated device; signs anchor updates.
    Current,
    /// An older anchor devices still hold.
    Trusted,
    /// Devices were told to drop it; still served until purged.
    Retired,
    /// Its private half is gone; not served.
    Purged,
}

impl KeyState {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Prepared => "prepared",
            KeyState::Current => "current",
            KeyState::Trusted => "trusted",
            KeyState::Retired => "retired",
            KeyState::Purged => "purged",
        }
    }

    /// Whether instances serve a key in this state.
    pub fn served(self) -> bool {
        self != KeyState::Purged
    }
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One key of the ring as `keys list` shows it: public halves only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// Key id.
    pub kid: u8,
    /// Where it is in its life.
    pub state: KeyState,
    /// When it was created.
    #[serde(serialize_with = "ser_display")]
    pub created: Rfc3339,
    /// The update that added it (0: provisioned before any update; none:
    /// prepared).
    pub added_serial: Option<u32>,
    /// The update that retired it.
    pub retired_serial: Option<u32>,
    /// When its private half was purged.
    pub purged: Option<String>,
    /// Whether its private half is in this data directory.
    pub private_key_here: bool,
    /// Ed25519 public key, hex.
    pub signing: String,
    /// X25519 public key, hex.
    pub sealing: String,
    /// Its anchor.
    #[serde(skip)]
    pub anchor: Anchor,
}

/// The key ring and what a fully updated device holds.
#[derive(Debug, Clone)]
pub struct RingStatus {
    /// Every key id ever registered, ascending.
    pub keys: Vec<KeyInfo>,
    /// The anchors and the last serial of a peripheral that applied every
    /// update: what `export-anchor` provisions new devices with.
    pub fleet: AnchorSet,
    /// Whether the database holds the ring. `false` until the first
    /// rotation: the data directory's key is then the only one.
    pub registered: bool,
}

impl RingStatus {
    /// The current key: the primary anchor of [`fleet`](Self::fleet).
    pub fn current(&self) -> Option<KeyId> {
        self.fleet.primary().map(|a| a.kid)
    }

    /// The serial of the last update issued.
    pub fn serial(&self) -> u32 {
        self.fleet.serial()
    }
}

/// The anchors before any update, and the anchors after each.
fn replay(rows: &[KeyRow], updates: &[UpdateRow]) -> Result<AnchorSet, KeyRingError> {
    let provisioned: Vec<Anchor> = rows
        .iter()
        .filter(|r| r.added_serial == Some(0))
        .map(|r| r.anchor)
        .collect();
    let mut set = AnchorSet::from_anchors(&provisioned, 0).map_err(|_| KeyRingError::BadGenesis)?;
    for u in updates {
        set.apply(&u.update)
            .map_err(|error| KeyRingError::BrokenLog {
                serial: u.update.serial,
                error,
            })?;
    }
    Ok(set)
}

/// The state of `row` given the replayed anchors.
fn state_of(row: &KeyRow, fleet: &AnchorSet) -> KeyState {
    if row.purged_ms.is_some() {
        KeyState::Purged
    } else if row.added_serial.is_none() {
        KeyState::Prepared
    } else if fleet.primary() == Some(&row.anchor) {
        KeyState::Current
    } else if fleet.get(row.anchor.kid) == Some(&row.anchor) {
        KeyState::Trusted
    } else {
        KeyState::Retired
    }
}

/// The row of a data directory's key before anything was registered: the
/// lowest key pair, provisioned before any update.
fn genesis_row(data: &DataDir) -> KeyRow {
    let created_ms = std::fs::metadata(data.path.join(datadir::files::signing(data.keys.kid())))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or_else(now_ms);
    KeyRow {
        anchor: data.keys.anchor(),
        created_ms,
        added_serial: Some(0),
        retired_serial: None,
        purged_ms: None,
    }
}

/// The private half of `kid` from `data`, checked against the registered
/// anchor.
fn private_key<'a>(data: &'a DataDir, anchor: &Anchor) -> Result<&'a BackendKeys, KeyRingError> {
    let keys = data
        .key_pair(anchor.kid)
        .ok_or_else(|| KeyRingError::MissingPrivateKey {
            kid: anchor.kid,
            dir: data.path.clone(),
        })?;
    if keys.anchor() != *anchor {
        return Err(KeyRingError::Mismatch {
            kid: anchor.kid,
            path: data.path.join(datadir::files::signing(anchor.kid)),
        });
    }
    Ok(keys)
}

fn info(row: &KeyRow, fleet: &AnchorSet, data: &DataDir) -> KeyInfo {
    KeyInfo {
        kid: row.anchor.kid.0,
        state: state_of(row, fleet),
        created: Rfc3339(row.created_ms),
        added_serial: row.added_serial,
        retired_serial: row.retired_serial,
        purged: row.purged_ms.map(|ms| Rfc3339(ms).to_string()),
        private_key_here: data
            .key_pair(row.anchor.kid)
            .is_some_and(|k| k.anchor() == row.anchor),
        signing: row.anchor.signing.to_string(),
        sealing: hex::encode(row.anchor.sealing.as_bytes()),
        anchor: row.anchor,
    }
}

/// The key ring's status (`keys list`, `export-anchor`). Writes nothing.
pub async fn status(data: &DataDir, store: &Store) -> Result<RingStatus, KeyRingError> {
    let rows = store.key_rows().await?;
    let updates = store.anchor_updates_after(0).await?;
    let registered = !rows.is_empty();
    let rows = if registered {
        rows
    } else {
        vec![genesis_row(data)]
    };
    let fleet = replay(&rows, &updates)?;
    Ok(RingStatus {
        keys: rows.iter().map(|r| info(r, &fleet, data)).collect(),
        fleet,
        registered,
    })
}

/// What a fully updated peripheral holds, for a backend whose unregistered
/// ring is `genesis` alone (the admin API's provisioning bundle).
pub async fn fleet(store: &Store, genesis: Anchor) -> Result<AnchorSet, KeyRingError> {
    let rows = store.key_rows().await?;
    if rows.is_empty() {
        return Ok(AnchorSet::new(genesis));
    }
    replay(&rows, &store.anchor_updates_after(0).await?)
}

/// Checks that `data` belongs to the key ring in `store`: every key file
/// whose key id is registered holds the registered key, and the stored
/// updates replay. `serve` runs this before it starts, so a data directory
/// copied from another backend is refused rather than half served.
pub async fn check(data: &DataDir, store: &Store) -> Result<(), KeyRingError> {
    let rows = store.key_rows().await?;
    for row in &rows {
        if row.purged_ms.is_none() && data.key_pair(row.anchor.kid).is_some() {
            private_key(data, &row.anchor)?;
        }
    }
    if !rows.is_empty() {
        replay(&rows, &store.anchor_updates_after(0).await?)?;
    }
    Ok(())
}

/// What `keys rotate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The new key's anchor.
    pub anchor: Anchor,
    /// The signed `Add`, or `None` if the key was only prepared.
    pub update: Option<AnchorUpdate>,
    /// Whether a new key pair was created (rather than a prepared one announced).
    pub created: bool,
}

/// `keys rotate`: creates the next key pair (or takes the prepared one) and,
/// unless `prepare_only`, announces it: the update `Add(new anchor)` with the
/// next serial, signed by the current key. Peripherals that apply it seal
/// their next hellos to the new key, which thereby becomes current; the old
/// key stays trusted and served.
///
/// The key files are written (0600) before the database commits, under the
/// writer lock; if the commit fails they stay behind unregistered, are never
/// served, and the next rotation skips their key id.
pub async fn rotate(
    data: &DataDir,
    store: &Store,
    prepare_only: bool,
    actor: &str,
) -> Result<Rotation, KeyRingError> {
    if data.path.as_os_str().is_empty() {
        return Err(KeyRingError::NoDirectory);
    }
    let mut tx = store.begin_write().await?;
    let now = now_ms();
    let mut rows = tx.key_rows().await?;
    let updates = tx.anchor_updates().await?;
    if rows.is_empty() {
        let genesis = genesis_row(data);
        tx.insert_key(&genesis).await?;
        tx.audit(
            NewAudit::new("backend_key_genesis", "ok", actor).detail(&format!(
                "kid={} signing={} sealing={}: the key devices were provisioned with, registered",
                genesis.anchor.kid,
                genesis.anchor.signing,
                hex::encode(genesis.anchor.sealing.as_bytes())
            )),
            now,
        )
        .await?;
        rows.push(genesis);
    }
    let fleet = replay(&rows, &updates)?;
    if fleet.len() >= MAX_ANCHORS {
        return Err(KeyRingError::Full(fleet.len()));
    }
    let current = *fleet.primary().ok_or(KeyRingError::BadGenesis)?;
    // The current key signs the Add: check it is here before creating anything.
    let signer = if prepare_only {
        None
    } else {
        Some(private_key(data, &current)?)
    };
    let prepared = rows
        .iter()
        .find(|r| r.added_serial.is_none() && r.purged_ms.is_none());
    let (anchor, created) = match prepared {
        Some(r) if prepare_only => return Err(KeyRingError::AlreadyPrepared(r.anchor.kid)),
        Some(r) => (private_key(data, &r.anchor)?.anchor(), false),
        None => {
            let used: BTreeSet<u8> = rows
                .iter()
                .map(|r| r.anchor.kid.0)
                .chain(datadir::key_ids(&data.path)?.into_iter().map(|k| k.0))
                .collect();
            let kid = match used.last() {
                Some(&max) => max.checked_add(1).ok_or(KeyRingError::KeyIdsExhausted)?,
                None => 1,
            };
            let keys = BackendKeys::generate(KeyId(kid), &mut datadir::os_rng());
            datadir::write_key_pair(&data.path, &keys)?;
            tx.insert_key(&KeyRow {
                anchor: keys.anchor(),
                created_ms: now,
                added_serial: None,
                retired_serial: None,
                purged_ms: None,
            })
            .await?;
            (keys.anchor(), true)
        }
    };
    let keys_detail = format!(
        "kid={} signing={} sealing={}",
        anchor.kid,
        anchor.signing,
        hex::encode(anchor.sealing.as_bytes())
    );
    if prepare_only {
        tx.audit(
            NewAudit::new("backend_key_prepare", "ok", actor).detail(&keys_detail),
            now,
        )
        .await?;
        tx.commit().await?;
        return Ok(Rotation {
            anchor,
            update: None,
            created,
        });
    }
    let signer = signer.ok_or(KeyRingError::MissingPrivateKey {
        kid: current.kid,
        dir: data.path.clone(),
    })?;
    let update = sign_next(&fleet, AnchorAction::Add(anchor), signer)?;
    tx.insert_anchor_update(&update, now).await?;
    tx.key_added(anchor.kid, update.serial).await?;
    tx.audit(
        NewAudit::new("backend_key_rotate", "ok", actor).detail(&format!(
            "{keys_detail} serial={} signer={}: Add issued; devices that apply it seal to key {}",
            update.serial, update.signer, anchor.kid
        )),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(Rotation {
        anchor,
        update: Some(update),
        created,
    })
}

/// Signs `action` as the update after `fleet` with `signer` (the current
/// key), and checks that a fully updated peripheral would accept it.
fn sign_next(
    fleet: &AnchorSet,
    action: AnchorAction,
    signer: &BackendKeys,
) -> Result<AnchorUpdate, KeyRingError> {
    // Never saturates in practice (every update adds or retires one of 256
    // key ids); if it did, `apply` below would refuse the update as stale.
    let serial = fleet.serial().saturating_add(1);
    let update = AnchorUpdate::sign(serial, action, signer.kid(), signer.signing());
    let mut next = fleet.clone();
    match next.apply(&update) {
        Ok(()) => Ok(update),
        Err(vouch_proto::Error::ApiMisuse(vouch_proto::ApiMisuse::AnchorSetFull)) => {
            Err(KeyRingError::Full(fleet.len()))
        }
        Err(error) => Err(KeyRingError::BrokenLog { serial, error }),
    }
}

/// `keys retire KID`: issues `Retire(kid)` with the next serial, signed by
/// the current key. Refuses the current key (and so the last one) and keys
/// devices do not trust. The key stays served: peripherals that have not
/// applied the `Add` of its successor still seal to it (see the module doc).
pub async fn retire(
    data: &DataDir,
    store: &Store,
    kid: KeyId,
    actor: &str,
) -> Result<AnchorUpdate, KeyRingError> {
    let mut tx = store.begin_write().await?;
    let now = now_ms();
    let rows = tx.key_rows().await?;
    let updates = tx.anchor_updates().await?;
    let rows = if rows.is_empty() {
        vec![genesis_row(data)]
    } else {
        rows
    };
    let fleet = replay(&rows, &updates)?;
    let row = rows
        .iter()
        .find(|r| r.anchor.kid == kid)
        .ok_or(KeyRingError::UnknownKey(kid))?;
    match state_of(row, &fleet) {
        KeyState::Current => return Err(KeyRingError::Current(kid)),
        KeyState::Trusted => {}
        other => return Err(KeyRingError::NotTrusted(kid, other)),
    }
    let current = *fleet.primary().ok_or(KeyRingError::BadGenesis)?;
    let signer = private_key(data, &current)?;
    let update = sign_next(&fleet, AnchorAction::Retire(kid), signer)?;
    tx.insert_anchor_update(&update, now).await?;
    tx.key_retired(kid, update.serial).await?;
    tx.audit(
        NewAudit::new("backend_key_retire", "ok", actor).detail(&format!(
            "kid={kid} serial={} signer={}: Retire issued; key {kid} stays served until `keys purge {kid}`",
            update.serial, update.signer
        )),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(update)
}

/// What `keys purge` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purge {
    /// Whether this call marked the key purged (`false`: it already was, and
    /// only the files in this data directory were looked at).
    pub newly_purged: bool,
    /// Whether key files were deleted from this data directory.
    pub files_removed: bool,
}

/// `keys purge KID`: stops serving a retired (or prepared, never announced)
/// key on every instance and deletes its private half from this data
/// directory. Hellos sealed to it are refused `unknown_backend_key` from
/// then on. Run it again on every other host whose data directory holds a
/// copy of the key: a purged key is never served, but its files stay until
/// removed.
pub async fn purge(
    dir: &Path,
    store: &Store,
    kid: KeyId,
    actor: &str,
) -> Result<Purge, KeyRingError> {
    if dir.as_os_str().is_empty() {
        return Err(KeyRingError::NoDirectory);
    }
    let mut tx = store.begin_write().await?;
    let now = now_ms();
    let rows = tx.key_rows().await?;
    let updates = tx.anchor_updates().await?;
    let Some(row) = rows.iter().find(|r| r.anchor.kid == kid) else {
        // Nothing registered: the data directory's single key is current.
        return Err(
            if rows.is_empty() && datadir::key_ids(dir)?.first() == Some(&kid) {
                KeyRingError::Current(kid)
            } else {
                KeyRingError::UnknownKey(kid)
            },
        );
    };
    let fleet = replay(&rows, &updates)?;
    let newly_purged = match state_of(row, &fleet) {
        KeyState::Current => return Err(KeyRingError::Current(kid)),
        state @ KeyState::Trusted => return Err(KeyRingError::StillTrusted(kid, state)),
        KeyState::Purged => {
            drop(tx);
            false
        }
        state @ (KeyState::Retired | KeyState::Prepared) => {
            tx.key_purged(kid, now).await?;
            tx.audit(
                NewAudit::new("backend_key_purge", "ok", actor).detail(&format!(
                    "kid={kid} (was {state}): no longer served; hellos sealed to it are refused"
                )),
                now,
            )
            .await?;
            tx.commit().await?;
            true
        }
    };
    let files_removed = datadir::remove_key_pair(dir, kid)?;
    Ok(Purge {
        newly_purged,
        files_removed,
    })
}

// ---------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------

/// The key pairs one instance serves, by key id: hellos naming one of them
/// are opened with its sealing key and vouched with its signing key.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: BTreeMap<u8, Arc<BackendKeys>>,
}

impl KeyRing {
    /// A ring of these key pairs.
    pub fn new(keys: impl IntoIterator<Item = Arc<BackendKeys>>) -> Self {
        Self {
            keys: keys.into_iter().map(|k| (k.kid().0, k)).collect(),
        }
    }

    /// The key pair of `kid`, if served.
    pub fn get(&self, kid: KeyId) -> Option<&Arc<BackendKeys>> {
        self.keys.get(&kid.0)
    }

    /// The served key ids, ascending.
    pub fn kids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.keys().map(|&k| KeyId(k))
    }

    /// The served key pairs, by ascending key id.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<BackendKeys>> {
        self.keys.values()
    }

    /// How many key pairs are served.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The ring an instance serves, replaced as a whole when a key is added or
/// purged; each request works on one snapshot.
#[derive(Debug, Default)]
pub struct ServedKeys {
    ring: RwLock<Arc<KeyRing>>,
    /// Key ids whose files are missing or wrong here, already logged.
    warned: Mutex<BTreeSet<u8>>,
}

impl ServedKeys {
    /// Serving `ring`.
    pub fn new(ring: KeyRing) -> Self {
        Self {
            ring: RwLock::new(Arc::new(ring)),
            warned: Mutex::default(),
        }
    }

    /// The ring now.
    pub fn snapshot(&self) -> Arc<KeyRing> {
        self.ring
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, ring: KeyRing) {
        *self.ring.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ring);
    }

    /// Logs a problem with `kid`'s files once per process.
    fn warn_once(&self, kid: KeyId, what: impl FnOnce()) {
        if self
            .warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(kid.0)
        {
            what();
        }
    }
}

/// The ring an instance starts with: with nothing registered, the data
/// directory's lowest key pair (a directory from before rotation: key id 1);
/// otherwise every key pair of the directory registered with the same
/// anchor and not purged.
pub(crate) async fn initial_ring(
    store: &Store,
    pairs: Vec<BackendKeys>,
) -> Result<KeyRing, StoreError> {
    let rows = store.key_rows().await?;
    if rows.is_empty() {
        return Ok(KeyRing::new(pairs.into_iter().take(1).map(Arc::new)));
    }
    let mut served = Vec::new();
    for pair in pairs {
        let kid = pair.kid();
        match rows.iter().find(|r| r.anchor.kid == kid) {
            Some(r) if r.purged_ms.is_some() => {
                tracing::warn!(%kid, "key files of a purged key are still in the data directory; \
                    not served (run `vouch-backend keys purge {kid}` here to delete them)");
            }
            Some(r) if r.anchor == pair.anchor() => served.push(Arc::new(pair)),
            Some(_) => {
                tracing::error!(%kid, "the key files of this key id hold another key than the \
                    one registered in the database; not served");
            }
            None => tracing::warn!(%kid, "key files of an unregistered key id (an interrupted \
                rotation?); not served"),
        }
    }
    Ok(KeyRing::new(served))
}

/// Brings the instance's ring up to date with the database and its data
/// directory: registered keys whose files appeared are served, purged ones
/// are dropped. Runs every second in the background; returns whether the
/// ring changed.
pub async fn reload(state: &AppState) -> Result<bool, StoreError> {
    let rows = state.store.key_rows().await?;
    if rows.is_empty() {
        return Ok(false);
    }
    let served = state.keys.snapshot();
    let mut next = Vec::new();
    for row in rows.iter().filter(|r| r.purged_ms.is_none()) {
        let kid = row.anchor.kid;
        if let Some(k) = served.get(kid) {
            if k.anchor() == row.anchor {
                next.push(k.clone());
            }
            continue;
        }
        if state.data_dir.as_os_str().is_empty() {
            continue;
        }
        match datadir::load_key_pair(&state.data_dir, kid) {
            Ok(Some(pair)) if pair.anchor() == row.anchor => {
                tracing::info!(%kid, "backend key loaded: now served");
                next.push(Arc::new(pair));
            }
            Ok(Some(_)) => state.keys.warn_once(kid, || {
                tracing::error!(%kid, "the key files of this key id hold another key than the \
                    one registered in the database; not served");
            }),
            Ok(None) => state.keys.warn_once(kid, || {
                tracing::warn!(%kid, dir = %state.data_dir.display(), "a registered backend key \
                    is not in this instance's data directory: not served here, and its Add is \
                    not handed to gateways by this instance, until its two key files are copied \
                    here");
            }),
            Err(e) => state.keys.warn_once(kid, || {
                tracing::error!(%kid, error = %e, "cannot load a registered backend key");
            }),
        }
    }
    let changed = next.len() != served.len() || next.iter().any(|k| served.get(k.kid()).is_none());
    if changed {
        for kid in served
            .kids()
            .filter(|k| !next.iter().any(|n| n.kid() == *k))
        {
            tracing::info!(%kid, "backend key purged: no longer served");
        }
        state.keys.replace(KeyRing::new(next));
    }
    Ok(changed)
}

/// The answer to `GET /v1/anchor-updates?after=SERIAL` (SPEC.md §10.6): the
/// stored updates after `after`, in serial order, at most
/// [`MAX_ANCHOR_UPDATES`], but only up to (not including) the first one that
/// adds a key this instance does not serve and that was not purged: a
/// peripheral must never be told to seal to a key the backend it reaches
/// cannot open.
pub async fn updates_for_gateways(
    state: &AppState,
    after: u32,
) -> Result<AnchorUpdateBatch, StoreError> {
    let ring = state.keys.snapshot();
    let rows = state.store.key_rows().await?;
    let purged: BTreeSet<u8> = rows
        .iter()
        .filter(|r| r.purged_ms.is_some())
        .map(|r| r.anchor.kid.0)
        .collect();
    // The whole log: a few hundred rows at most (module doc of store::keys).
    let all = state.store.anchor_updates_after(0).await?;
    let servable = all
        .iter()
        .map(|u| &u.update)
        .take_while(|u| match u.action {
            AnchorAction::Add(a) | AnchorAction::Replace(a) => {
                ring.get(a.kid).is_some() || purged.contains(&a.kid.0)
            }
            AnchorAction::Retire(_) => true,
        });
    let mut latest = 0;
    let mut updates = Vec::new();
    for u in servable {
        latest = u.serial;
        if u.serial > after && updates.len() < MAX_ANCHOR_UPDATES {
            updates.push(*u);
        }
    }
    Ok(AnchorUpdateBatch { updates, latest })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vouch_proto::testing::rng;

    fn row(keys: &BackendKeys, added: Option<u32>) -> KeyRow {
        KeyRow {
            anchor: keys.anchor(),
            created_ms: 0,
            added_serial: added,
            retired_serial: None,
            purged_ms: None,
        }
    }

    #[test]
    fn states_follow_the_replayed_log() {
        let k1 = BackendKeys::generate(KeyId(1), &mut rng(1));
        let k2 = BackendKeys::generate(KeyId(2), &mut rng(2));
        let k3 = BackendKeys::generate(KeyId(3), &mut rng(3));
        let add = AnchorUpdate::sign(1, AnchorAction::Add(k2.anchor()), KeyId(1), k1.signing());
        let retire = AnchorUpdate::sign(2, AnchorAction::Retire(KeyId(1)), KeyId(2), k2.signing());
        let mut rows = vec![row(&k1, Some(0)), row(&k2, Some(1)), row(&k3, None)];
        let log = |us: &[AnchorUpdate]| -> Vec<UpdateRow> {
            us.iter()
                .map(|&update| UpdateRow { at_ms: 0, update })
                .collect()
        };
        let fleet = replay(&rows, &log(&[add])).unwrap();
        let states: Vec<_> = rows.iter().map(|r| state_of(r, &fleet)).collect();
        assert_eq!(
            states,
            [KeyState::Trusted, KeyState::Current, KeyState::Prepared]
        );
        let fleet = replay(&rows, &log(&[add, retire])).unwrap();
        assert_eq!(state_of(&rows[0], &fleet), KeyState::Retired);
        rows[0].purged_ms = Some(5);
        assert_eq!(state_of(&rows[0], &fleet), KeyState::Purged);

        // A log whose order was changed does not replay: the device's own
        // checks catch it.
        assert!(matches!(
            replay(&rows, &log(&[retire, add])),
            Err(KeyRingError::BrokenLog { serial: 2, .. })
        ));
        // Nor does one with a forged signature.
        let mut forged = add;
        forged.signature.0[3] ^= 1;
        assert!(matches!(
            replay(&rows, &log(&[forged])),
            Err(KeyRingError::BrokenLog { serial: 1, .. })
        ));
    }
}
