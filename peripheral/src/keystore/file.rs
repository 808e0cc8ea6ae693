//! [`FileKeyStore`]: the device's state in one directory.
//!
//! | file | content | mode |
//! |---|---|---|
//! | `identity.pem` | Ed25519 identity, PKCS#8 v1 PEM (`openssl pkey -in identity.pem -noout -text` reads it) | 0600 |
//! | `peripheral-id` | the factory-assigned id, 16 hex digits (only when one was assigned) | 0644 |
//! | `anchors.json` | the trust anchors as the backend's anchor bundle (`vouch_proto::anchor::AnchorBundle`) | 0644 |
//! | `ticket.bin` | the resumption tickets (`TicketWallet`), postcard (holds secrets) | 0600 |
//!
//! Every write goes to a temporary file in the same directory (created with
//! `O_CREAT|O_EXCL` and its final mode), is fsynced, then renamed over the
//! target, and the directory is fsynced: after a crash the old or the new
//! content is there, never a mix. The identity key is linked into place
//! instead of renamed, so an existing key is never replaced. Temporary files a
//! crash left behind (`.NAME.tmp-…`) are ignored when loading and removed once
//! stale.

use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vouch_proto::anchor::{AnchorBundle, AnchorSet};
use vouch_proto::handshake::peripheral::TicketWallet;
use vouch_proto::keys::{IdentityKey, PeripheralId};
use zeroize::Zeroizing;

use vouch_host::fs::{AtomicWrite, Replace};

use super::{KeyStore, KeyStoreError};

const KEY_FILE: &str = "identity.pem";
const ID_FILE: &str = "peripheral-id";
const ANCHORS_FILE: &str = "anchors.json";
const TICKET_FILE: &str = "ticket.bin";

/// Mode of files holding secrets.
const SECRET_MODE: u32 = 0o600;
/// Mode of files holding public data.
const PUBLIC_MODE: u32 = 0o644;
/// Temporary files older than this are leftovers of a crash.
const STALE_TMP: Duration = Duration::from_secs(600);
/// The largest file this store reads (a PEM key is ~120 bytes, a bundle ~700).
const MAX_FILE: u64 = 64 * 1024;

/// The device's identity, anchors and ticket in one directory (see the module
/// documentation for the layout).
///
/// The identity key is loaded once, at [`open`](Self::open); it is zeroized
/// when the store is dropped and never printed.
#[derive(Debug)]
pub struct FileKeyStore {
    dir: PathBuf,
    key: IdentityKey,
    id: PeripheralId,
}

impl FileKeyStore {
    /// Generates a new identity on this device from the operating system's
    /// randomness and writes it to `dir` (created with mode 0700 if missing).
    /// `id` is a factory-assigned registry id; `None` uses the derived one.
    ///
    /// Refuses with [`KeyStoreError::IdentityExists`] if `dir` already holds
    /// a key.
    pub fn generate(
        dir: impl AsRef<Path>,
        id: Option<PeripheralId>,
    ) -> Result<Self, KeyStoreError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| KeyStoreError::NoRandomness(e.to_string()))?;
        Self::create(dir, IdentityKey::from_seed(&seed), id)
    }

    /// Writes a given identity to `dir` (as [`generate`](Self::generate) does
    /// with a fresh one). For tests and for factories whose key comes from a
    /// secure source of their own.
    pub fn create(
        dir: impl AsRef<Path>,
        key: IdentityKey,
        id: Option<PeripheralId>,
    ) -> Result<Self, KeyStoreError> {
        let dir = dir.as_ref().to_path_buf();
        let key_path = dir.join(KEY_FILE);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| KeyStoreError::Io {
                action: "creating directory",
                path: dir.clone(),
                source,
            })?;
        if key_path.exists() {
            return Err(KeyStoreError::IdentityExists { path: key_path });
        }
        let pem = key
            .to_pkcs8_pem()
            .map_err(|_| KeyStoreError::Encode("the identity key"))?;
        write_atomic(&dir, KEY_FILE, pem.as_bytes(), SECRET_MODE, Replace::Never)?;
        let id = match id {
            Some(id) => {
                write_atomic(
                    &dir,
                    ID_FILE,
                    format!("{id}\n").as_bytes(),
                    PUBLIC_MODE,
                    Replace::Always,
                )?;
                id
            }
            None => PeripheralId::derive(&key.public_key()),
        };
        Ok(Self { dir, key, id })
    }

    /// Opens the store in `dir`, loading the identity key.
    ///
    /// Fails with a clear error, and never creates a new identity, when the key
    /// is missing ([`KeyStoreError::NoIdentity`]), corrupt
    /// ([`KeyStoreError::CorruptKey`]) or readable by group or others
    /// ([`KeyStoreError::InsecurePermissions`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, KeyStoreError> {
        let dir = dir.as_ref().to_path_buf();
        let key_path = dir.join(KEY_FILE);
        let meta = match fs::metadata(&key_path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(KeyStoreError::NoIdentity { path: key_path })
            }
            Err(source) => {
                return Err(KeyStoreError::Io {
                    action: "reading",
                    path: key_path,
                    source,
                })
            }
        };
        check_private(&key_path, &meta)?;
        let bytes = read_limited(&key_path)?;
        let key = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|pem| IdentityKey::from_pkcs8_pem(pem).ok())
            .ok_or_else(|| KeyStoreError::CorruptKey {
                path: key_path.clone(),
            })?;
        let id_path = dir.join(ID_FILE);
        let id = match fs::read_to_string(&id_path) {
            Ok(s) => PeripheralId::from_hex(s.trim())
                .ok_or(KeyStoreError::CorruptId { path: id_path })?,
            Err(e) if e.kind() == ErrorKind::NotFound => PeripheralId::derive(&key.public_key()),
            Err(source) => {
                return Err(KeyStoreError::Io {
                    action: "reading",
                    path: id_path,
                    source,
                })
            }
        };
        remove_stale_temporaries(&dir);
        Ok(Self { dir, key, id })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the identity key file.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    /// The path of the anchor file.
    pub fn anchors_path(&self) -> PathBuf {
        self.dir.join(ANCHORS_FILE)
    }

    /// The path of the ticket file.
    pub fn ticket_path(&self) -> PathBuf {
        self.dir.join(TICKET_FILE)
    }

    /// Validates `bundle` (SPEC.md §2.3) and installs it as the trust anchors,
    /// replacing any. Returns the installed set.
    pub fn install_bundle(&mut self, bundle: &AnchorBundle) -> Result<AnchorSet, KeyStoreError> {
        let set = bundle.to_anchor_set()?;
        self.save_anchors(&set)?;
        Ok(set)
    }
}

impl KeyStore for FileKeyStore {
    type Signer = IdentityKey;

    fn signer(&self) -> &IdentityKey {
        &self.key
    }

    fn peripheral_id(&self) -> PeripheralId {
        self.id
    }

    fn anchors(&self) -> Result<AnchorSet, KeyStoreError> {
        let path = self.anchors_path();
        let bytes = match read_limited(&path) {
            Ok(b) => b,
            Err(KeyStoreError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                return Err(KeyStoreError::NotProvisioned { path })
            }
            Err(e) => return Err(e),
        };
        let bundle: AnchorBundle =
            serde_json::from_slice(&bytes).map_err(|e| KeyStoreError::CorruptAnchors {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        bundle
            .to_anchor_set()
            .map_err(|e| KeyStoreError::CorruptAnchors {
                path,
                reason: e.to_string(),
            })
    }

    fn save_anchors(&mut self, anchors: &AnchorSet) -> Result<(), KeyStoreError> {
        let bundle = AnchorBundle::from_anchor_set(anchors);
        let mut json = serde_json::to_vec_pretty(&bundle)
            .map_err(|_| KeyStoreError::Encode("the anchor bundle"))?;
        json.push(b'\n');
        write_atomic(&self.dir, ANCHORS_FILE, &json, PUBLIC_MODE, Replace::Always)
    }

    fn load_tickets(&self) -> Result<TicketWallet, KeyStoreError> {
        let path = self.ticket_path();
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(TicketWallet::new()),
            Err(source) => {
                return Err(KeyStoreError::Io {
                    action: "reading",
                    path,
                    source,
                })
            }
        };
        check_private(&path, &meta)?;
        let bytes = read_limited(&path)?;
        match postcard::take_from_bytes::<TicketWallet>(&bytes) {
            Ok((tickets, [])) => Ok(tickets),
            _ => Err(KeyStoreError::CorruptTicket { path }),
        }
    }

    fn save_tickets(&mut self, tickets: &TicketWallet) -> Result<(), KeyStoreError> {
        if tickets.is_empty() {
            let path = self.ticket_path();
            return match fs::remove_file(&path) {
                Ok(()) => sync_dir(&self.dir),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(source) => Err(KeyStoreError::Io {
                    action: "removing",
                    path,
                    source,
                }),
            };
        }
        let bytes = Zeroizing::new(
            postcard::to_allocvec(tickets).map_err(|_| KeyStoreError::Encode("the tickets"))?,
        );
        write_atomic(&self.dir, TICKET_FILE, &bytes, SECRET_MODE, Replace::Always)
    }
}

/// Refuses a secret file that group or others may read or write.
fn check_private(path: &Path, meta: &fs::Metadata) -> Result<(), KeyStoreError> {
    Ok(vouch_host::fs::check_private_meta(path, meta)?)
}

/// Reads a whole file of at most [`MAX_FILE`] bytes into a buffer that is
/// zeroized when dropped (it may hold a key).
fn read_limited(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
    let io = |source| KeyStoreError::Io {
        action: "reading",
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut buf = Zeroizing::new(Vec::new());
    file.take(MAX_FILE + 1).read_to_end(&mut buf).map_err(io)?;
    if buf.len() as u64 > MAX_FILE {
        return Err(io(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("larger than {MAX_FILE} bytes"),
        )));
    }
    Ok(buf)
}

/// Writes `bytes` to `dir/name` atomically and durably with `mode`
/// ([`AtomicWrite`]: a temporary file, fsync, rename or link, fsync of the
/// directory).
fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
    replace: Replace,
) -> Result<(), KeyStoreError> {
    let write = AtomicWrite::new(mode);
    let write = match replace {
        Replace::Always => write,
        Replace::Never => write.never_replace(),
    };
    Ok(write.write(dir, name, bytes)?)
}

fn sync_dir(dir: &Path) -> Result<(), KeyStoreError> {
    Ok(vouch_host::fs::sync_dir(dir)?)
}

/// Removes temporary files a crash left behind, once they are old enough that
/// no writer can still be using them. Best effort.
fn remove_stale_temporaries(dir: &Path) {
    vouch_host::fs::remove_temporaries(dir, STALE_TMP);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_link_leaves_no_temporary_and_keeps_the_old_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = FileKeyStore::create(dir.path(), IdentityKey::from_seed(&[1; 32]), None).unwrap();
        let err =
            write_atomic(dir.path(), KEY_FILE, b"x", SECRET_MODE, Replace::Never).unwrap_err();
        assert!(matches!(err, KeyStoreError::IdentityExists { .. }), "{err}");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![KEY_FILE.to_string()]);
        let b = FileKeyStore::open(dir.path()).unwrap();
        assert_eq!(a.public_key(), b.public_key());
    }
}
