//! The trust-anchor updates the gateway fetched (SPEC.md §7.7, §10.6), kept
//! across restarts so that a restarted gateway delivers them at once and
//! fetches only what is newer.
//!
//! `anchor-updates` (0600):
//!
//! ```text
//! 1 ‖ 'A' ‖ postcard(AnchorFile) ‖ CRC-32
//! AnchorFile = { backend_url: string, updates: [AnchorUpdate] }   serial order, at most MAX_HELD_ANCHOR_UPDATES
//! ```
//!
//! Each `AnchorUpdate` is in its wire encoding (SPEC.md §7.7), which is fixed
//! and append-only, exactly as the backend signed it. The updates are
//! public (every peripheral receives them), so nothing in the file is
//! secret; the device verifies each signature itself, so a forged file can
//! only make the gateway deliver updates its devices refuse. A file saved
//! for another backend URL is ignored: its serials count another backend's
//! updates.

use std::io;

use serde::{Deserialize, Serialize};
use vouch_proto::anchor::AnchorUpdate;

use super::{frame, read_limited, unframe, write_atomic, Kind, StateDir, Unreadable, ANCHORS_FILE};

/// The most anchor updates a gateway keeps. A backend issues a few hundred
/// at most in its life (SPEC.md §10.6); beyond this bound newer updates are
/// refused (and logged as an error) rather than grow without limit.
pub const MAX_HELD_ANCHOR_UPDATES: usize = 1024;

/// Largest encoded update: serial varint (5) ‖ action (1 + 65) ‖ signer (1)
/// ‖ signature (64).
const MAX_UPDATE_LEN: u64 = 5 + 1 + 65 + 1 + 64;
/// Largest anchor-update file read: every update at its largest, plus the
/// backend URL and the framing.
const MAX_ANCHORS_FILE: u64 = MAX_HELD_ANCHOR_UPDATES as u64 * MAX_UPDATE_LEN + 8 * 1024;

/// The file's body.
#[derive(Serialize, Deserialize)]
struct AnchorFile {
    backend_url: String,
    updates: Vec<AnchorUpdate>,
}

/// What [`load`] found.
#[derive(Debug)]
pub(crate) enum Saved {
    /// No file.
    None,
    /// The updates saved for this backend, in serial order.
    Updates(Vec<AnchorUpdate>),
    /// A file saved for another backend URL (ignored).
    OtherBackend(String),
}

/// Reads the saved updates. An unreadable, damaged or invalid file is an
/// error for the caller to log; it is left in place and replaced at the next
/// save.
pub(crate) fn load(dir: &StateDir, backend_url: &str) -> Result<Saved, Unreadable> {
    let bytes = match read_limited(&dir.anchors_path(), MAX_ANCHORS_FILE) {
        Ok(b) => b,
        Err(Unreadable::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(Saved::None),
        Err(e) => return Err(e),
    };
    let file: AnchorFile = postcard::from_bytes(unframe(Kind::Anchors, &bytes)?)?;
    if file.updates.len() > MAX_HELD_ANCHOR_UPDATES {
        return Err(Unreadable::Invalid("more updates than a gateway keeps"));
    }
    if !in_serial_order(0, &file.updates) {
        return Err(Unreadable::Invalid(
            "updates not in strictly increasing serial order",
        ));
    }
    if file.backend_url != backend_url {
        return Ok(Saved::OtherBackend(file.backend_url));
    }
    Ok(Saved::Updates(file.updates))
}

/// Writes `updates` (in serial order) as the saved updates for
/// `backend_url`: atomically, durably, mode 0600.
pub(crate) fn save(dir: &StateDir, backend_url: &str, updates: &[AnchorUpdate]) -> io::Result<()> {
    let file = AnchorFile {
        backend_url: backend_url.to_string(),
        updates: updates.to_vec(),
    };
    let body = postcard::to_allocvec(&file).map_err(io::Error::other)?;
    write_atomic(
        dir.path(),
        ANCHORS_FILE,
        &frame(Kind::Anchors, &[&body]),
        true,
    )
}

/// Whether every serial is above `after` and above the one before it.
pub(crate) fn in_serial_order(after: u32, updates: &[AnchorUpdate]) -> bool {
    let mut last = after;
    updates.iter().all(|u| {
        let ok = u.serial > last;
        last = u.serial;
        ok
    })
}
