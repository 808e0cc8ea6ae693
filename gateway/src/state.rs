//! What the gateway keeps across restarts: the `[state] dir`.
//!
//! ```text
//! DIR/                    created 0700 if missing; refused if group/other may write it
//!   tickets/              0700: one file per resumption ticket (SPEC.md §6.1)
//!     <ticket id hex>.ticket   0600
//!   feed-cursor           0600: the revocation feed's cursor (SPEC.md §10.5)
//!   ble-devices           0600: addresses that advertised the Vouch service
//!   anchor-updates        0600: the trust-anchor updates fetched (SPEC.md §10.6)
//! ```
//!
//! Every file is written to a temporary file of its own (mode 0600),
//! fsynced, renamed over its name, and the directory is fsynced
//! ([`vouch_host::fs::AtomicWrite`]): a crash leaves the old file or the
//! new one, never a torn one. Every file has the same framing:
//!
//! ```text
//! version (1) ‖ kind ('T' ticket, 'C' cursor, 'D' devices, 'A' anchor updates) ‖ postcard body ‖ CRC-32 (LE) of all before it
//! ```
//!
//! The CRC finds a damaged file; it is not an authenticator (whoever can
//! write the directory can forge anything in it, which is why a directory
//! others may write is refused). A file that cannot be read or decoded is
//! logged and skipped, never a panic. A version this build does not know is
//! skipped the same way.
//!
//! Tickets are secret: their files hold the resumption secret and are never
//! logged; buffers holding it are zeroized. A restored ticket is not used
//! until the revocation feed has caught up from the persisted cursor (see
//! [`SessionTable::open`](crate::sessions::SessionTable::open)).

pub(crate) mod anchors;
mod devices;
pub(crate) mod tickets;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vouch_host::fs::{AtomicWrite, FsError};
use vouch_proto::keys::PublicKey;
use zeroize::Zeroizing;

pub use devices::{KnownDevices, MAX_ADDRESS_LEN, MAX_KNOWN_DEVICES};
pub use tickets::RestoreReport;

/// The version byte every state file starts with.
pub const FORMAT_VERSION: u8 = 1;

/// The subdirectory holding ticket files.
pub const TICKETS_DIR: &str = "tickets";
/// The file holding the revocation feed's cursor.
pub const CURSOR_FILE: &str = "feed-cursor";
/// The file holding the addresses of Vouch BLE devices.
pub const DEVICES_FILE: &str = "ble-devices";
/// The file holding the trust-anchor updates fetched from the backend.
pub const ANCHORS_FILE: &str = "anchor-updates";

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Creating, reading or writing it failed.
    #[error("state directory {path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// It exists but is not a directory.
    #[error("state directory {0} is not a directory")]
    NotADirectory(PathBuf),
    /// Other users may write it (and so forge tickets), or, for the ticket
    /// directory, read it.
    #[error("state directory {path} is accessible by other users (mode {mode:o}); chmod 700 it")]
    TooOpen {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// The gateway's state directory, checked and ready to use.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens `path`: creates it (mode 0700) if missing, refuses it if group or
    /// other users may write it, creates `tickets/` (0700; refused if anyone
    /// else may even read it), checks that files can be created in both, and
    /// removes temporary files a crash left behind.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        prepare_dir(path, 0o022)?;
        let tickets = path.join(TICKETS_DIR);
        prepare_dir(&tickets, 0o077)?;
        for dir in [path, tickets.as_path()] {
            probe(dir)?;
            remove_stale_temporaries(dir);
        }
        Ok(Self {
            root: path.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The directory of ticket files.
    pub fn tickets_dir(&self) -> PathBuf {
        self.root.join(TICKETS_DIR)
    }

    /// The feed cursor file.
    pub fn cursor_path(&self) -> PathBuf {
        self.root.join(CURSOR_FILE)
    }

    /// The BLE device memory file.
    pub fn devices_path(&self) -> PathBuf {
        self.root.join(DEVICES_FILE)
    }

    /// The file of fetched trust-anchor updates.
    pub fn anchors_path(&self) -> PathBuf {
        self.root.join(ANCHORS_FILE)
    }
}

/// What persisted state is valid for: tickets and the feed cursor are
/// meaningful only for the gateway identity that made them and the backend
/// whose feed the cursor counts. State made for another is discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateBinding {
    /// This gateway's identity key.
    pub gateway_key: PublicKey,
    /// The backend's base URL (its feed numbers the cursor).
    pub backend_url: String,
}

/// Creates `path` with mode 0700 if missing; refuses a non-directory or one
/// with any of the `forbidden` permission bits.
fn prepare_dir(path: &Path, forbidden: u32) -> Result<(), StateError> {
    let io_err = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    match fs::metadata(path) {
        Ok(meta) if !meta.is_dir() => Err(StateError::NotADirectory(path.to_path_buf())),
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & forbidden != 0 {
                return Err(StateError::TooOpen {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(io_err)?;
            // Exactly 0700, whatever the umask left.
            fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io_err)
        }
        Err(e) => Err(io_err(e)),
    }
}

/// Creates and removes a file in `dir`, so an unwritable directory is found
/// at startup rather than at the first ticket.
fn probe(dir: &Path) -> Result<(), StateError> {
    let path = dir.join(format!(".probe-{}.tmp", std::process::id()));
    let result = (|| {
        let _ = fs::remove_file(&path);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(b"vouch")?;
        drop(f);
        fs::remove_file(&path)
    })();
    result.map_err(|source| StateError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// How old a temporary file must be before it is taken for one a crash left
/// behind: `vouch-gateway init` may be writing the identity key into the same
/// directory (the default key path is in the default state directory).
const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes the temporary files a crash left behind: those of
/// [`vouch_host::fs::AtomicWrite`] once stale, and the `NAME.tmp` files of
/// gateways before it (the gateway was their only writer).
fn remove_stale_temporaries(dir: &Path) {
    vouch_host::fs::remove_temporaries(dir, STALE_TEMPORARY);
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a temporary state file");
            }
        }
    }
}

/// Writes `bytes` to `dir/name` atomically and durably, mode 0600
/// ([`vouch_host::fs::AtomicWrite`]); the directory is fsynced when
/// `sync_dir` (a caller writing several files syncs it once).
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8], sync_dir: bool) -> io::Result<()> {
    let write = AtomicWrite::new(0o600);
    let write = if sync_dir {
        write
    } else {
        write.defer_dir_sync()
    };
    write.write(dir, name, bytes).map_err(into_io)
}

/// Fsyncs a directory, making renames and removals in it durable.
pub(crate) fn sync_dir_of(dir: &Path) -> io::Result<()> {
    vouch_host::fs::sync_dir(dir).map_err(into_io)
}

/// The operating system's error of a host file operation (the callers name
/// the path themselves).
fn into_io(e: FsError) -> io::Error {
    match e {
        FsError::Io { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

/// Removes a file; a file that is already gone is not an error.
pub(crate) fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Why a state file was skipped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Unreadable {
    /// It could not be read.
    #[error("cannot read it: {0}")]
    Io(#[from] io::Error),
    /// It is larger than any valid file of its kind.
    #[error("larger than {0} bytes")]
    TooLarge(u64),
    /// It is shorter than the framing.
    #[error("truncated")]
    Truncated,
    /// Written by a format version this build does not read.
    #[error("format version {0} (this gateway reads version {FORMAT_VERSION})")]
    Version(u8),
    /// It is a state file of another kind.
    #[error("not a {0} file")]
    WrongKind(&'static str),
    /// The checksum does not match: the file is damaged.
    #[error("checksum mismatch (damaged)")]
    Checksum,
    /// The body does not decode.
    #[error("does not decode: {0}")]
    Decode(#[from] postcard::Error),
    /// The body decodes but its content is invalid.
    #[error("invalid content: {0}")]
    Invalid(&'static str),
}

/// The kinds of state file (the second byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Ticket,
    Cursor,
    Devices,
    Anchors,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Ticket => b'T',
            Kind::Cursor => b'C',
            Kind::Devices => b'D',
            Kind::Anchors => b'A',
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Ticket => "ticket",
            Kind::Cursor => "feed cursor",
            Kind::Devices => "BLE device",
            Kind::Anchors => "anchor update",
        }
    }
}

/// Frames a body: `version ‖ kind ‖ body ‖ CRC-32`. The buffer is allocated
/// once at its final size (it may hold a secret: no copies left behind by
/// growing) and zeroized on drop.
pub(crate) fn frame(kind: Kind, parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
    let len = 2 + parts.iter().map(|p| p.len()).sum::<usize>() + 4;
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    out.push(FORMAT_VERSION);
    out.push(kind.byte());
    for p in parts {
        out.extend_from_slice(p);
    }
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks the framing and returns the body.
pub(crate) fn unframe(kind: Kind, bytes: &[u8]) -> Result<&[u8], Unreadable> {
    if bytes.len() < 6 {
        return Err(Unreadable::Truncated);
    }
    if bytes[0] != FORMAT_VERSION {
        return Err(Unreadable::Version(bytes[0]));
    }
    if bytes[1] != kind.byte() {
        return Err(Unreadable::WrongKind(kind.name()));
    }
    let (content, crc) = bytes.split_at(bytes.len() - 4);
    let mut expected = [0u8; 4];
    expected.copy_from_slice(crc);
    if crc32(content) != u32::from_le_bytes(expected) {
        return Err(Unreadable::Checksum);
    }
    Ok(&content[2..])
}

/// Reads a whole file of at most `max` bytes into a buffer zeroized on drop.
pub(crate) fn read_limited(path: &Path, max: u64) -> Result<Zeroizing<Vec<u8>>, Unreadable> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    if len > max {
        return Err(Unreadable::TooLarge(max));
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(len as usize + 1));
    file.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(Unreadable::TooLarge(max));
    }
    Ok(buf)
}

/// The feed cursor file's body.
#[derive(Serialize, Deserialize)]
struct CursorRecord {
    gateway_key: [u8; 32],
    backend_url: String,
    after: u64,
}

/// Largest cursor file read.
const MAX_CURSOR_FILE: u64 = 4096;

/// The persisted cursor, if there is one for `binding`; otherwise why not.
pub(crate) fn read_cursor(dir: &StateDir, binding: &StateBinding) -> Result<u64, String> {
    let path = dir.cursor_path();
    let bytes = match read_limited(&path, MAX_CURSOR_FILE) {
        Ok(b) => b,
        Err(Unreadable::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
            return Err("no feed cursor was saved".into())
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let record: CursorRecord = unframe(Kind::Cursor, &bytes)
        .and_then(|body| Ok(postcard::from_bytes(body)?))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if record.gateway_key != *binding.gateway_key.as_bytes() {
        return Err("the state was saved by another gateway identity".into());
    }
    if record.backend_url != binding.backend_url {
        return Err(format!(
            "the state was saved for another backend ({})",
            record.backend_url
        ));
    }
    Ok(record.after)
}

/// The bytes of a cursor file.
pub(crate) fn encode_cursor(binding: &StateBinding, after: u64) -> Zeroizing<Vec<u8>> {
    let record = CursorRecord {
        gateway_key: *binding.gateway_key.as_bytes(),
        backend_url: binding.backend_url.clone(),
        after,
    };
    // Serializing a struct of plain fields into a Vec cannot fail.
    let body = postcard::to_allocvec(&record).unwrap_or_default();
    frame(Kind::Cursor, &[&body])
}

/// CRC-32 (IEEE 802.3, reflected, as zlib and PNG use): finds damage, not
/// forgery.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    CRC32.checksum(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn framing_round_trips_and_finds_damage() {
        let framed = frame(Kind::Cursor, &[b"ab", b"cd"]);
        assert_eq!(&framed[..2], &[FORMAT_VERSION, b'C']);
        assert_eq!(unframe(Kind::Cursor, &framed).unwrap(), b"abcd");
        assert!(matches!(
            unframe(Kind::Ticket, &framed),
            Err(Unreadable::WrongKind("ticket"))
        ));
        for i in 0..framed.len() {
            let mut bad = framed.to_vec();
            bad[i] ^= 0x10;
            assert!(unframe(Kind::Cursor, &bad).is_err(), "byte {i}");
        }
        assert!(matches!(
            unframe(Kind::Cursor, &framed[..5]),
            Err(Unreadable::Truncated)
        ));
        let mut v2 = framed.to_vec();
        v2[0] = 2;
        assert!(matches!(
            unframe(Kind::Cursor, &v2),
            Err(Unreadable::Version(2))
        ));
    }
}
