//! The backend key ring and pre-rotated trust anchors (SPEC.md §2.3, §2.5, §7.7).
//!
//! ## Where things live
//!
//! - The **private keys** are files in the data directory, one
//!   `signing-N.pem` / `sealing-N.pem` pair per key id N ([`crate::datadir`]).
//!   They never enter the database.
//! - The **status** of every key id (its public anchor, when it was
//!   created, rotated to, rotated away from or purged) and the **signed
//!   anchor updates**, in serial order, are in the database
//!   ([`crate::store::KeyRow`], [`crate::store::UpdateRow`]), written under the
//!   global writer lock together with their audit entry. Every backend
//!   instance on one database thus agrees on them, and a change is either
//!   wholly recorded or not at all.
//! - Which key is **current**, and which is **next**, is not stored: it is
//!   what a fully updated peripheral holds, computed by replaying every
//!   stored update with the peripheral's own [`AnchorSet::apply`] (signatures
//!   included) on the anchor peripherals were provisioned with. The stored
//!   log is thereby checked every time it is used, by the code the devices run.
//!
//! ## Pre-rotation
//!
//! Every key pair is created together with its successor, and a peripheral
//! holds, besides its anchor, the commitment to that successor
//! ([`vouch_proto::anchor::Anchor::digest`]). The commitment of key id N is
//! the anchor of the next key id registered after it. `init` creates key 1
//! and key 2; `keys rotate` reveals the committed key (the update `Rotate`,
//! signed by that key) and creates the key the revealed one commits to. So
//! whoever steals the current key cannot move a device to a key of its
//! choosing. The committed key's private half may be kept offline until its
//! rotation: move its two files out of the data directory, and bring them
//! back for `keys rotate`.
//!
//! ## The life of a key id
//!
//! | state | what updated devices do with it | served: hellos sealed to it are opened, its vouches signed | reached by |
//! |---|---|---|---|
//! | `next` | hold its commitment | no (nothing is sealed to it yet) | `init` (key id 2), each `keys rotate` |
//! | `current` | seal to it; only it vouches | yes | `init` (key id 1), `keys rotate` |
//! | `retired` | nothing: a rotation replaced it | **yes** | the next `keys rotate` |
//! | `purged` | nothing | no: `unknown_backend_key` | `keys purge KID` |
//!
//! A vouch is signed by the key pair the hello named (SPEC.md §5.3), the
//! peripheral's one anchor. A peripheral that missed rotations (offline, or
//! out of range of every gateway) keeps working on its old key, now
//! `retired`, and receives every rotation in order in its next session. So a
//! retired key is still served; only `keys purge` stops serving it, deleting
//! its private half; a peripheral that still knows only a purged key can no
//! longer connect and must be provisioned again (`export-anchor`). Key ids
//! are never reused.
//!
//! ## Several instances
//!
//! Each instance reloads its ring from the database and its data directory
//! every second ([`reload`]): a key registered in the database whose files
//! are present is served from then on; a purged one is dropped. With the
//! same reload it records in the database which keys it serves and which it
//! holds (their private half is in its data directory, the committed next
//! key included), with a time until which it counts as live
//! ([`InstanceRow`]; `keys.instance_ttl_s` after its last record). It
//! records itself before it serves its first request, and deletes its
//! record when it stops. So the system, not a procedure, keeps a rotated
//! peripheral from being refused by an instance that lacks its key:
//!
//! - a Rotate to key N is handed to gateways only once every live instance
//!   serves N: every instance hands out the updates up to, not including,
//!   the first Rotate to a key that it, or any live instance, does not serve
//!   and that is not purged ([`updates_for_gateways`]);
//! - the first moment every live instance serves it, the revocation feed
//!   announces it (event `anchor_updates`, [`FeedChange::AnchorUpdates`]),
//!   so gateways fetch it at once rather than at their hourly fetch; the
//!   first instance to see it announces it, once ([`reload`]);
//! - `keys rotate` refuses while a live instance does not hold the committed
//!   key's private half (`--force` rotates anyway: the Rotate then waits);
//! - `keys purge` purges keys only in the order they became current, so the
//!   keys a peripheral passes through while it catches up are all served
//!   ([`purge`]).
//!
//! An instance that stops without deleting its record (a crash) holds
//! rotations back until its record expires.
//!
//! [`FeedChange::AnchorUpdates`]: vouch_proto::wire::backend::FeedChange::AnchorUpdates

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde::Serialize;
use vouch_proto::anchor::{Anchor, AnchorAction, AnchorSet, AnchorUpdate};
use vouch_proto::handshake::backend::BackendKeys;
use vouch_proto::keys::KeyId;
use vouch_proto::wire::backend::{AnchorUpdateBatch, MAX_ANCHOR_UPDATES};

use crate::datadir::{self, DataDir, DataDirError};
use crate::model::ser_display;
use crate::store::{
    now_ms, InstanceRow, KeyRow, NewAudit, Rfc3339, Store, StoreError, UpdateRow, WriteTx,
};
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
    /// Only a key rotated away from can be purged.
    #[error(
        "key {0} is {1}: only a retired key (one a rotation replaced) can be purged; \
         the current key and the next one are what devices trust"
    )]
    NotRetired(KeyId, KeyState),
    /// Every key id was used (they are never reused).
    #[error("every key id up to 255 has been used, and key ids are never reused")]
    KeyIdsExhausted,
    /// The private half of a key this operation needs is not here.
    #[error(
        "the private key of key {kid} is not in this data directory ({}): if it was kept \
         offline, copy its two files (signing-{kid}.pem, sealing-{kid}.pem) back first",
        .dir.display()
    )]
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
    /// The registered keys do not include the key devices were provisioned
    /// with and the one it commits to.
    #[error(
        "the key ring has no provisioned key and committed successor (a data directory \
         from before pre-rotated anchors? see backend/README.md, \"Key rotation\")"
    )]
    BadGenesis,
    /// The backend lives in memory only (`DataDir::ephemeral`).
    #[error("key rotation needs a data directory on disk")]
    NoDirectory,
    /// A live backend instance does not hold the committed key: peripherals
    /// rotated to it would be refused there.
    #[error(
        "the private key of key {kid}, the committed next key, is not on every live backend \
         instance: missing on {}. Copy signing-{kid}.pem and sealing-{kid}.pem (mode 0600) into \
         their data directories (each picks them up within a second; `keys list` shows what \
         every instance holds), or stop them. `keys rotate --force` rotates anyway: gateways \
         are then not given the Rotate until every live instance serves key {kid}",
        .instances.join(", ")
    )]
    InstancesLackKey {
        /// The committed key.
        kid: KeyId,
        /// The live instances without it (id, host and data directory).
        instances: Vec<String>,
    },
    /// An older key is still served: purging this one would strand the
    /// peripherals catching up through it.
    #[error(
        "key {older} became current before key {kid} and is still served: a peripheral on key \
         {older} catches up through key {kid} (its session may end after any update, leaving it \
         on key {kid}), so keys are purged in the order they became current: purge key {older} \
         first"
    )]
    OlderKeyServed {
        /// The key asked for.
        kid: KeyId,
        /// The oldest key still served.
        older: KeyId,
    },
}

/// Where a key id is in its life (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// The committed successor of the current key: devices hold its
    /// commitment; not announced, not served.
    Next,
    /// The anchor of a fully updated device: hellos seal to it.
    Current,
    /// Replaced by a rotation; still served (devices that missed the
    /// rotation seal to it) until purged.
    Retired,
    /// Its private half is gone; not served.
    Purged,
}

impl KeyState {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Current => "current",
            KeyState::Retired => "retired",
            KeyState::Purged => "purged",
        }
    }

    /// Whether instances serve a key in this state.
    pub fn served(self) -> bool {
        matches!(self, KeyState::Current | KeyState::Retired)
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
    /// The rotation that made it current (0: provisioned before any update;
    /// none: not yet).
    pub added_serial: Option<u32>,
    /// The rotation that replaced it.
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
    /// The anchor, commitment and last serial of a peripheral that applied
    /// every update: what `export-anchor` provisions new devices with.
    pub fleet: AnchorSet,
    /// Whether the database holds the ring. `false` for a data directory no
    /// backend has served yet: its two lowest key pairs are then the ring.
    pub registered: bool,
    /// The live backend instances, with the keys each serves and holds.
    pub instances: Vec<InstanceRow>,
    /// The serial of the last update every live instance hands to
    /// gateways (below [`serial`](Self::serial) while a Rotate waits for an
    /// instance to serve its key).
    pub handed_out: u32,
}

impl RingStatus {
    /// The current key: the anchor of [`fleet`](Self::fleet).
    pub fn current(&self) -> KeyId {
        self.fleet.primary().kid
    }

    /// The serial of the last update issued.
    pub fn serial(&self) -> u32 {
        self.fleet.serial()
    }
}

/// What a fully updated peripheral holds: the provisioned key (registered
/// with serial 0) and the commitment to the key registered after it, then
/// every stored update applied in order.
fn replay(rows: &[KeyRow], updates: &[UpdateRow]) -> Result<AnchorSet, KeyRingError> {
    let mut by_kid = rows.iter().skip_while(|r| r.added_serial != Some(0));
    let (Some(genesis), Some(next)) = (by_kid.next(), by_kid.next()) else {
        return Err(KeyRingError::BadGenesis);
    };
    let mut set = AnchorSet::new(genesis.anchor, next.anchor.digest(), 0);
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
    } else if fleet.primary() == &row.anchor {
        KeyState::Current
    } else if fleet.next() == &row.anchor.digest() {
        KeyState::Next
    } else {
        KeyState::Retired
    }
}

/// The purged key ids.
fn purged(rows: &[KeyRow]) -> BTreeSet<u8> {
    rows.iter()
        .filter(|r| r.purged_ms.is_some())
        .map(|r| r.anchor.kid.0)
        .collect()
}

/// Whether every instance of `live` serves `kid`.
fn served_by_all(live: &[InstanceRow], kid: KeyId) -> bool {
    live.iter().all(|i| i.serves.contains(&kid.0))
}

/// The updates gateways may be handed: `updates` (in serial order) up to,
/// not including, the first Rotate to a key that is not purged and that
/// `served` does not accept. A peripheral that applies a Rotate seals to its
/// key from its next handshake on, wherever that handshake lands.
fn handed_out<'a>(
    updates: &'a [UpdateRow],
    purged: &BTreeSet<u8>,
    served: impl Fn(KeyId) -> bool,
) -> &'a [UpdateRow] {
    let n = updates
        .iter()
        .take_while(|u| match u.update.action {
            AnchorAction::Rotate { anchor: a, .. } => purged.contains(&a.kid.0) || served(a.kid),
            // Never issued (SPEC.md §7.7: reserved); a device refuses them.
            AnchorAction::Add(_) | AnchorAction::Replace(_) | AnchorAction::Retire(_) => true,
        })
        .count();
    &updates[..n]
}

/// The serial of the last of `updates` (0 if none).
fn last_serial(updates: &[UpdateRow]) -> u32 {
    updates.last().map_or(0, |u| u.update.serial)
}

/// The rows of a data directory no backend registered yet: its lowest key
/// pair, provisioned before any update, and the next one, its committed
/// successor. `None` if the directory holds fewer than two.
fn genesis_rows<'a>(
    pairs: impl Iterator<Item = &'a BackendKeys>,
    dir: &Path,
) -> Option<[KeyRow; 2]> {
    let mut pairs: Vec<&BackendKeys> = pairs.collect();
    pairs.sort_by_key(|k| k.kid().0);
    let row = |keys: &BackendKeys, added_serial| {
        let created_ms = std::fs::metadata(dir.join(datadir::files::signing(keys.kid())))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .unwrap_or_else(now_ms);
        KeyRow {
            anchor: keys.anchor(),
            created_ms,
            added_serial,
            retired_serial: None,
            purged_ms: None,
        }
    };
    match pairs[..] {
        [first, second, ..] => Some([row(first, Some(0)), row(second, None)]),
        _ => None,
    }
}

/// Registers `rows` (from [`genesis_rows`]) as the ring, in `tx`.
async fn register_genesis(
    tx: &mut WriteTx<'_>,
    rows: &[KeyRow; 2],
    actor: &str,
    now: i64,
) -> Result<(), KeyRingError> {
    for r in rows {
        tx.insert_key(r).await?;
    }
    let [genesis, next] = rows;
    tx.audit(
        NewAudit::new("backend_key_genesis", "ok", actor).detail(&format!(
            "kid={} signing={} sealing={}: the key devices are provisioned with; \
             kid={} committed as its successor",
            genesis.anchor.kid,
            genesis.anchor.signing,
            hex::encode(genesis.anchor.sealing.as_bytes()),
            next.anchor.kid,
        )),
        now,
    )
    .await?;
    Ok(())
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
        genesis_rows(data.key_pairs(), &data.path)
            .ok_or(KeyRingError::BadGenesis)?
            .to_vec()
    };
    let fleet = replay(&rows, &updates)?;
    let now = now_ms();
    let instances: Vec<InstanceRow> = store
        .instances()
        .await?
        .into_iter()
        .filter(|i| i.live_at(now))
        .collect();
    let handed_out = last_serial(handed_out(&updates, &purged(&rows), |kid| {
        served_by_all(&instances, kid)
    }));
    Ok(RingStatus {
        keys: rows.iter().map(|r| info(r, &fleet, data)).collect(),
        fleet,
        registered,
        instances,
        handed_out,
    })
}

/// What a fully updated peripheral holds (the admin API's provisioning
/// bundle). A serving backend registered its ring when it started
/// (`initial_ring`).
pub async fn fleet(store: &Store) -> Result<AnchorSet, KeyRingError> {
    let rows = store.key_rows().await?;
    replay(&rows, &store.anchor_updates_after(0).await?)
}

/// Registers the ring of a data directory no backend registered yet: its
/// lowest key pair as the key devices are provisioned with, and the next as
/// its committed successor. A directory from before pre-rotated anchors holds
/// one key pair: its successor is created first (written 0600; logged).
/// Returns whether anything was written. `serve`, `export-anchor` and `keys`
/// run it first, so a provisioning bundle never names a commitment the
/// database does not hold.
pub async fn register(
    data: &mut DataDir,
    store: &Store,
    actor: &str,
) -> Result<bool, KeyRingError> {
    if !store.key_rows().await?.is_empty() {
        return Ok(false);
    }
    if data.key_pairs().count() < 2 {
        if data.path.as_os_str().is_empty() {
            return Err(KeyRingError::NoDirectory);
        }
        let kid = next_key_id(data.key_pairs().map(BackendKeys::kid), &data.path)?;
        let successor = BackendKeys::generate(kid, &mut datadir::os_rng());
        datadir::write_key_pair(&data.path, &successor)?;
        tracing::info!(%kid, dir = %data.path.display(), "created the committed successor of \
            the provisioned key (a data directory from before pre-rotated anchors); devices \
            provisioned from a format-1 bundle must be provisioned again");
        data.more_keys.push(successor);
    }
    let genesis = genesis_rows(data.key_pairs(), &data.path).ok_or(KeyRingError::BadGenesis)?;
    register_genesis_once(store, &genesis, actor).await
}

/// Registers `genesis` in its own transaction unless a ring is registered
/// already (another instance may have done it meanwhile). Returns whether
/// it wrote.
async fn register_genesis_once(
    store: &Store,
    genesis: &[KeyRow; 2],
    actor: &str,
) -> Result<bool, KeyRingError> {
    let mut tx = store.begin_write().await?;
    if !tx.key_rows().await?.is_empty() {
        return Ok(false);
    }
    register_genesis(&mut tx, genesis, actor, now_ms()).await?;
    tx.commit().await?;
    Ok(true)
}

/// The key id for a new key pair: one above every id registered (`kids`) or
/// with files in `dir` (an interrupted rotation's leftovers), never reused.
fn next_key_id(kids: impl Iterator<Item = KeyId>, dir: &Path) -> Result<KeyId, KeyRingError> {
    let max = kids
        .chain(datadir::key_ids(dir)?)
        .map(|k| k.0)
        .max()
        .unwrap_or(0);
    Ok(KeyId(
        max.checked_add(1).ok_or(KeyRingError::KeyIdsExhausted)?,
    ))
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
    /// The anchor rotated to: the key the previous one committed to.
    pub anchor: Anchor,
    /// The signed `Rotate`.
    pub update: AnchorUpdate,
    /// The key created as its committed successor.
    pub next: Anchor,
}

/// `keys rotate`: reveals the committed successor of the current key with
/// the update `Rotate`, signed by that successor, with the next serial, and
/// creates the key it commits to (written 0600). Peripherals that apply it
/// seal their next hellos to the new key and no longer trust the old one,
/// which stays served (see the module doc).
///
/// The new key files are written before the database commits, under the
/// writer lock; if the commit fails they stay behind unregistered, are never
/// served, and the next rotation skips their key id.
///
/// Refuses ([`KeyRingError::InstancesLackKey`]) while a live instance does
/// not hold the committed key; [`rotate_with`] can force it.
pub async fn rotate(data: &DataDir, store: &Store, actor: &str) -> Result<Rotation, KeyRingError> {
    rotate_with(data, store, actor, RotateOptions::default()).await
}

/// How `keys rotate` goes about it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RotateOptions {
    /// Rotate even when a live instance does not hold the committed key.
    /// Safe, since no gateway is given the Rotate until every live instance
    /// serves the key ([`updates_for_gateways`]), but the rotation then waits
    /// for that: for a rotation that must be on record at once (a
    /// compromise) while an instance is being fixed.
    pub force: bool,
}

/// [`rotate`], with options.
pub async fn rotate_with(
    data: &DataDir,
    store: &Store,
    actor: &str,
    options: RotateOptions,
) -> Result<Rotation, KeyRingError> {
    if data.path.as_os_str().is_empty() {
        return Err(KeyRingError::NoDirectory);
    }
    let mut tx = store.begin_write().await?;
    let now = now_ms();
    let mut rows = tx.key_rows().await?;
    let updates = tx.anchor_updates().await?;
    if rows.is_empty() {
        let genesis = genesis_rows(data.key_pairs(), &data.path).ok_or(KeyRingError::BadGenesis)?;
        register_genesis(&mut tx, &genesis, actor, now).await?;
        rows.extend(genesis);
    }
    let fleet = replay(&rows, &updates)?;
    let current = *fleet.primary();
    let committed = rows
        .iter()
        .find(|r| &r.anchor.digest() == fleet.next())
        .ok_or(KeyRingError::BadGenesis)?
        .anchor;
    // The committed key signs its own rotation: check it is here before
    // creating anything.
    let signer = private_key(data, &committed)?;
    // Every live instance must hold it too, or the peripherals rotated
    // through one instance would be refused by another. The hand-out rule
    // (`updates_for_gateways`) makes that safe in any case; this makes it
    // visible while the operator is at the console.
    // (An instance on this very data directory holds what was just checked,
    // whether or not it has recorded it since the last rotation.)
    let here = host_label(&data.path);
    let lacking: Vec<String> = tx
        .instances()
        .await?
        .iter()
        .filter(|i| i.live_at(now) && i.host != here && !i.holds.contains(&committed.kid.0))
        .map(|i| format!("instance {} ({})", i.id, i.host))
        .collect();
    if !lacking.is_empty() && !options.force {
        return Err(KeyRingError::InstancesLackKey {
            kid: committed.kid,
            instances: lacking,
        });
    }
    let kid = next_key_id(rows.iter().map(|r| r.anchor.kid), &data.path)?;
    let successor = BackendKeys::generate(kid, &mut datadir::os_rng());
    datadir::write_key_pair(&data.path, &successor)?;
    tx.insert_key(&KeyRow {
        anchor: successor.anchor(),
        created_ms: now,
        added_serial: None,
        retired_serial: None,
        purged_ms: None,
    })
    .await?;
    let action = AnchorAction::Rotate {
        anchor: committed,
        next: successor.anchor().digest(),
    };
    // Never saturates in practice (one update per rotation, 256 key ids); if
    // it did, the check below would refuse the update as stale.
    let serial = fleet.serial().saturating_add(1);
    let update = AnchorUpdate::sign(serial, action, signer.kid(), signer.signing());
    fleet
        .clone()
        .apply(&update)
        .map_err(|error| KeyRingError::BrokenLog { serial, error })?;
    tx.insert_anchor_update(&update, now).await?;
    tx.key_added(committed.kid, serial).await?;
    tx.key_retired(current.kid, serial).await?;
    tx.audit(
        NewAudit::new("backend_key_rotate", "ok", actor).detail(&format!(
            "kid={} signing={} sealing={} serial={serial}: Rotate issued, signed by key {}; \
             devices that apply it seal to key {} and no longer trust key {} (still served \
             until purged); kid={kid} committed as the next key",
            committed.kid,
            committed.signing,
            hex::encode(committed.sealing.as_bytes()),
            committed.kid,
            committed.kid,
            current.kid,
        )),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(Rotation {
        anchor: committed,
        update,
        next: successor.anchor(),
    })
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

/// `keys purge KID`: stops serving a retired key on every instance and deletes its private half from this data
/// directory. Hellos sealed to it are refused `unknown_backend_key` from
/// then on. Run it again on every other host whose data directory holds a
/// copy of the key: a purged key is never served, but its files stay until
/// removed.
///
/// Keys are purged in the order they became current
/// ([`KeyRingError::OlderKeyServed`]): a peripheral on a retired key `k`
/// applies the Rotates after `k` one by one, and its session may end after
/// any of them, leaving it on a key between `k` and the current one. With
/// the purged keys always the oldest, every key it can be left on is still
/// served.
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
        // Nothing registered: the data directory's keys are current and next.
        let kids = datadir::key_ids(dir)?;
        return Err(match kids.iter().position(|k| *k == kid) {
            Some(0) if rows.is_empty() => KeyRingError::NotRetired(kid, KeyState::Current),
            Some(1) if rows.is_empty() => KeyRingError::NotRetired(kid, KeyState::Next),
            _ => KeyRingError::UnknownKey(kid),
        });
    };
    let fleet = replay(&rows, &updates)?;
    let newly_purged = match state_of(row, &fleet) {
        state @ (KeyState::Current | KeyState::Next) => {
            return Err(KeyRingError::NotRetired(kid, state))
        }
        KeyState::Purged => {
            drop(tx);
            false
        }
        state @ KeyState::Retired => {
            let became_current = row.added_serial;
            if let Some(older) = rows.iter().find(|r| {
                r.purged_ms.is_none() && r.added_serial.is_some() && r.added_serial < became_current
            }) {
                return Err(KeyRingError::OlderKeyServed {
                    kid,
                    older: older.anchor.kid,
                });
            }
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

/// Who this running instance is, in the records of [`InstanceRow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Random, new at every start (16 hex digits).
    pub id: String,
    /// Host name and data directory, for the operator.
    pub host: String,
    /// When it started.
    pub started_ms: i64,
    /// How long its record stays live without a refresh, milliseconds.
    pub ttl_ms: i64,
}

impl Instance {
    /// A new instance serving `data_dir`, live for `ttl` after each record.
    pub fn new(data_dir: &Path, ttl: std::time::Duration) -> Self {
        let mut id = [0u8; 8];
        // Without entropy (never on Linux) the start time still tells the
        // instances of one host apart.
        if getrandom::fill(&mut id).is_err() {
            id = now_ms().to_be_bytes();
        }
        Self {
            id: hex::encode(id),
            host: host_label(data_dir),
            started_ms: now_ms(),
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2),
        }
    }
}

/// `host:data directory` (canonical), naming an instance for the operator,
/// and telling `keys rotate` which instances share its data directory.
fn host_label(data_dir: &Path) -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown host".to_owned());
    let dir = if data_dir.as_os_str().is_empty() {
        "in memory".to_owned()
    } else {
        std::fs::canonicalize(data_dir)
            .unwrap_or_else(|_| data_dir.to_path_buf())
            .display()
            .to_string()
    };
    format!("{name}:{dir}")
}

/// The ring an instance serves, replaced as a whole when a key is added or
/// purged; each request works on one snapshot.
#[derive(Debug, Default)]
pub struct ServedKeys {
    ring: RwLock<Arc<KeyRing>>,
    /// Key ids whose files are missing or wrong here, already logged.
    warned: Mutex<BTreeSet<u8>>,
    /// One [`reload`] at a time: one that read the database before a
    /// rotation must not replace the ring after one that read it after.
    reloading: tokio::sync::Mutex<()>,
}

impl ServedKeys {
    /// Serving `ring`.
    pub fn new(ring: KeyRing) -> Self {
        Self {
            ring: RwLock::new(Arc::new(ring)),
            warned: Mutex::default(),
            reloading: tokio::sync::Mutex::default(),
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

/// The ring an instance starts with: every key pair of the directory that
/// the database registers with the same anchor, current or retired (not the
/// next key, not a purged one). With nothing registered (a data directory no
/// backend served yet), it first registers the directory's lowest key pair as
/// the provisioned key and the next one as its committed successor, so every
/// instance and every provisioning bundle agree on them.
/// `keys` on the configured crypto provider ([`crate::config::Crypto`]).
/// A provider that cannot load them (its public keys would differ from the
/// dalek crates': never seen) is logged, and the keys serve on the default
/// provider: the answers are the same, only slower.
pub(crate) fn on_provider(mut keys: BackendKeys, crypto: &crate::config::Crypto) -> BackendKeys {
    let provider = crypto.provider.provider();
    if provider.name() != keys.provider().name() {
        if let Err(e) = keys.use_provider(provider) {
            tracing::error!(kid = %keys.kid(), provider = provider.name(), error = %e,
                "the crypto provider cannot load this key pair; it serves on the default provider");
        }
    }
    keys
}

pub(crate) async fn initial_ring(
    store: &Store,
    pairs: Vec<BackendKeys>,
    dir: &Path,
) -> Result<KeyRing, KeyRingError> {
    if store.key_rows().await?.is_empty() {
        let genesis = genesis_rows(pairs.iter(), dir).ok_or(KeyRingError::BadGenesis)?;
        register_genesis_once(store, &genesis, "backend").await?;
    }
    let rows = store.key_rows().await?;
    let fleet = replay(&rows, &store.anchor_updates_after(0).await?)?;
    let mut served = Vec::new();
    for pair in pairs {
        let kid = pair.kid();
        match rows.iter().find(|r| r.anchor.kid == kid) {
            Some(r) if r.anchor != pair.anchor() => {
                tracing::error!(%kid, "the key files of this key id hold another key than the \
                    one registered in the database; not served");
            }
            Some(r) => match state_of(r, &fleet) {
                KeyState::Current | KeyState::Retired => served.push(Arc::new(pair)),
                KeyState::Next => {}
                KeyState::Purged => tracing::warn!(%kid, "key files of a purged key are still \
                    in the data directory; not served (run `vouch-backend keys purge {kid}` \
                    here to delete them)"),
            },
            None => tracing::warn!(%kid, "key files of an unregistered key id (an interrupted \
                rotation?); not served"),
        }
    }
    Ok(KeyRing::new(served))
}

/// Brings the instance's ring up to date with the database and its data
/// directory: registered keys whose files appeared are served, purged ones
/// are dropped. Then records what the instance serves and holds, and
/// announces on the feed the updates that every live instance now serves
/// the keys of (see the module doc). Runs every second in the background;
/// returns whether the ring changed.
pub async fn reload(state: &AppState) -> Result<bool, StoreError> {
    let _one_at_a_time = state.keys.reloading.lock().await;
    let rows = state.store.key_rows().await?;
    if rows.is_empty() {
        return Ok(false);
    }
    let updates = state.store.anchor_updates_after(0).await?;
    let Ok(fleet) = replay(&rows, &updates) else {
        // `serve` checked the log at start; a broken one changes nothing here.
        return Ok(false);
    };
    let served = state.keys.snapshot();
    let mut next = Vec::new();
    for row in rows.iter().filter(|r| state_of(r, &fleet).served()) {
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
                next.push(Arc::new(on_provider(pair, &state.config.crypto)));
            }
            Ok(Some(_)) => state.keys.warn_once(kid, || {
                tracing::error!(%kid, "the key files of this key id hold another key than the \
                    one registered in the database; not served");
            }),
            Ok(None) => state.keys.warn_once(kid, || {
                tracing::warn!(%kid, dir = %state.data_dir.display(), "a registered backend key \
                    is not in this instance's data directory: not served here, and no instance \
                    hands gateways the Rotate to it while this one is live, until its two key \
                    files are copied here");
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
    record(state, &rows, &fleet).await?;
    announce(state, &rows, &updates).await?;
    Ok(changed)
}

/// Records what this instance serves now (its ring, already replaced) and
/// holds: the served keys and, if its files are here, the committed next
/// key.
async fn record(state: &AppState, rows: &[KeyRow], fleet: &AnchorSet) -> Result<(), StoreError> {
    let serves: BTreeSet<u8> = state.keys.snapshot().kids().map(|k| k.0).collect();
    let mut holds = serves.clone();
    let next = rows.iter().find(|r| state_of(r, fleet) == KeyState::Next);
    if let Some(next) = next {
        if !state.data_dir.as_os_str().is_empty() {
            if let Ok(Some(pair)) = datadir::load_key_pair(&state.data_dir, next.anchor.kid) {
                if pair.anchor() == next.anchor {
                    holds.insert(next.anchor.kid.0);
                }
            }
        }
    }
    let now = now_ms();
    let me = &state.instance;
    state
        .store
        .record_instance(&InstanceRow {
            id: me.id.clone(),
            host: me.host.clone(),
            started_ms: me.started_ms,
            seen_ms: now,
            live_until_ms: now.saturating_add(me.ttl_ms),
            serves,
            holds,
        })
        .await
}

/// Announces on the revocation feed the updates every live instance now
/// hands out and that were not announced yet: one event `anchor_updates`
/// whose subject is the last one's serial, and an audit entry. Under the
/// writer lock, so that of several instances seeing it at once only the
/// first announces.
async fn announce(
    state: &AppState,
    rows: &[KeyRow],
    updates: &[UpdateRow],
) -> Result<(), StoreError> {
    let announced = state.store.last_announced_serial().await?;
    if last_serial(updates) <= announced {
        return Ok(());
    }
    let now = now_ms();
    let live: Vec<InstanceRow> = state
        .store
        .instances()
        .await?
        .into_iter()
        .filter(|i| i.live_at(now))
        .collect();
    let latest = last_serial(handed_out(updates, &purged(rows), |kid| {
        served_by_all(&live, kid)
    }));
    if latest <= announced {
        return Ok(());
    }
    let mut tx = state.store.begin_write().await?;
    if tx.announce_anchor_updates(latest, now).await? == 0 {
        // Another instance announced them meanwhile.
        return Ok(());
    }
    tx.event("anchor_updates", &latest.to_string(), now).await?;
    let ids: Vec<&str> = live.iter().map(|i| i.id.as_str()).collect();
    tx.audit(
        NewAudit::new("anchor_updates_announced", "ok", "backend").detail(&format!(
            "serial={latest}: every live backend instance ({}) serves the keys the updates up \
             to this serial rotate to; gateways are told on the feed to fetch them",
            ids.join(", ")
        )),
        now,
    )
    .await?;
    tx.commit().await?;
    state.feed.advance(state.store.last_event_seq().await?);
    tracing::info!(
        serial = latest,
        "anchor updates announced on the feed: every live instance serves their keys"
    );
    Ok(())
}

/// Records this instance for the first time (before it serves anything).
pub(crate) async fn record_start(state: &AppState) -> Result<(), StoreError> {
    let rows = state.store.key_rows().await?;
    let updates = state.store.anchor_updates_after(0).await?;
    match replay(&rows, &updates) {
        Ok(fleet) => record(state, &rows, &fleet).await,
        // `serve` checked the log before it started.
        Err(_) => Ok(()),
    }
}

/// Deletes this instance's record (it stops), and the records of instances
/// not seen for a day.
pub(crate) async fn forget(state: &AppState) -> Result<(), StoreError> {
    state
        .store
        .forget_instances(&state.instance.id, now_ms().saturating_sub(86_400_000))
        .await
}

/// The answer to `GET /v1/anchor-updates?after=SERIAL` (SPEC.md §10.6): the
/// stored updates after `after`, in serial order, at most
/// [`MAX_ANCHOR_UPDATES`], but only up to (not including) the first Rotate to
/// a key that was not purged and that this instance, or any live instance,
/// does not serve: a peripheral must never be told to seal to a key that
/// the instance its next handshake reaches cannot open.
pub async fn updates_for_gateways(
    store: &Store,
    keys: &ServedKeys,
    after: u32,
) -> Result<AnchorUpdateBatch, StoreError> {
    let ring = keys.snapshot();
    let rows = store.key_rows().await?;
    let now = now_ms();
    let live: Vec<InstanceRow> = store
        .instances()
        .await?
        .into_iter()
        .filter(|i| i.live_at(now))
        .collect();
    // The whole log: a few hundred rows at most (module doc of store::keys).
    let all = store.anchor_updates_after(0).await?;
    let servable = handed_out(&all, &purged(&rows), |kid| {
        ring.get(kid).is_some() && served_by_all(&live, kid)
    });
    let updates = servable
        .iter()
        .map(|u| u.update)
        .filter(|u| u.serial > after)
        .take(MAX_ANCHOR_UPDATES)
        .collect();
    Ok(AnchorUpdateBatch {
        updates,
        latest: last_serial(servable),
    })
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
        let k: [BackendKeys; 4] =
            core::array::from_fn(|i| BackendKeys::generate(KeyId(i as u8 + 1), &mut rng(i as u64)));
        let rotate = |serial, to: &BackendKeys, after: &BackendKeys| {
            AnchorUpdate::sign(
                serial,
                AnchorAction::Rotate {
                    anchor: to.anchor(),
                    next: after.anchor().digest(),
                },
                to.kid(),
                to.signing(),
            )
        };
        let r2 = rotate(1, &k[1], &k[2]);
        let r3 = rotate(2, &k[2], &k[3]);
        let mut rows = vec![row(&k[0], Some(0)), row(&k[1], None), row(&k[2], None)];
        let log = |us: &[AnchorUpdate]| -> Vec<UpdateRow> {
            us.iter()
                .map(|&update| UpdateRow { at_ms: 0, update })
                .collect()
        };
        let states = |rows: &[KeyRow], fleet: &AnchorSet| -> Vec<KeyState> {
            rows.iter().map(|r| state_of(r, fleet)).collect()
        };
        let fleet = replay(&rows[..2], &[]).unwrap();
        assert_eq!(
            states(&rows[..2], &fleet),
            [KeyState::Current, KeyState::Next]
        );
        let fleet = replay(&rows, &log(&[r2])).unwrap();
        assert_eq!(
            states(&rows, &fleet),
            [KeyState::Retired, KeyState::Current, KeyState::Next]
        );
        rows.push(row(&k[3], None));
        let fleet = replay(&rows, &log(&[r2, r3])).unwrap();
        rows[0].purged_ms = Some(5);
        assert_eq!(
            states(&rows, &fleet),
            [
                KeyState::Purged,
                KeyState::Retired,
                KeyState::Current,
                KeyState::Next
            ]
        );

        // A log whose order was changed does not replay: the device's own
        // checks catch it.
        assert!(matches!(
            replay(&rows, &log(&[r3, r2])),
            Err(KeyRingError::BrokenLog { serial: 2, .. })
        ));
        // Nor does one with a forged signature.
        let mut forged = r2;
        forged.signature.0[3] ^= 1;
        assert!(matches!(
            replay(&rows, &log(&[forged])),
            Err(KeyRingError::BrokenLog { serial: 1, .. })
        ));
        // Nor one signed by the current key instead of the committed one.
        let by_current = AnchorUpdate::sign(1, r2.action, KeyId(2), k[0].signing());
        assert!(matches!(
            replay(&rows, &log(&[by_current])),
            Err(KeyRingError::BrokenLog { serial: 1, .. })
        ));
        // A ring without a committed successor does not replay.
        assert!(matches!(
            replay(&rows[..1], &[]),
            Err(KeyRingError::BadGenesis)
        ));
    }

    #[test]
    fn updates_are_handed_out_up_to_the_first_rotate_to_a_key_not_served_everywhere() {
        let k: [BackendKeys; 5] =
            core::array::from_fn(|i| BackendKeys::generate(KeyId(i as u8 + 1), &mut rng(i as u64)));
        let log: Vec<UpdateRow> = (1..=3)
            .map(|n: usize| UpdateRow {
                at_ms: 0,
                update: AnchorUpdate::sign(
                    n as u32,
                    AnchorAction::Rotate {
                        anchor: k[n].anchor(),
                        next: k[n + 1].anchor().digest(),
                    },
                    k[n].kid(),
                    k[n].signing(),
                ),
            })
            .collect();
        let instance = |serves: &[u8]| InstanceRow {
            id: String::new(),
            host: String::new(),
            started_ms: 0,
            seen_ms: 0,
            live_until_ms: 1,
            serves: serves.iter().copied().collect(),
            holds: serves.iter().copied().collect(),
        };
        let serials = |live: &[InstanceRow], purged: &[u8]| -> Vec<u32> {
            let purged = purged.iter().copied().collect();
            handed_out(&log, &purged, |kid| served_by_all(live, kid))
                .iter()
                .map(|u| u.update.serial)
                .collect()
        };
        let all = [1, 2, 3, 4];
        assert_eq!(serials(&[instance(&all), instance(&all)], &[]), [1, 2, 3]);
        // Update n rotates to key n + 1. One instance lacks key 3: the
        // Rotate to it (serial 2) and every later one wait.
        assert_eq!(serials(&[instance(&all), instance(&[1, 2, 4])], &[]), [1]);
        // Lacking key 2 alone, it holds back everything.
        assert_eq!(
            serials(&[instance(&all), instance(&[1, 3, 4])], &[]),
            [] as [u32; 0]
        );
        // A purged key does not hold back the Rotates after it.
        assert_eq!(
            serials(&[instance(&all), instance(&[1, 3, 4])], &[1, 2]),
            [1, 2, 3]
        );
        // With no instance recorded, nothing is held back by the records.
        assert_eq!(serials(&[], &[]), [1, 2, 3]);
    }
}
