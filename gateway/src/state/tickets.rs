//! Resumption tickets on disk (SPEC.md §6.1): one file per ticket, written
//! and removed by one writer thread, in the order the session table asked.
//!
//! The order is what makes revocation safe across a restart: the feed cursor
//! is queued after the removals of the events it covers, so it is never on
//! disk before they are. If a removal fails, the cursor file is removed
//! instead of advanced, and the next start discards every ticket.
//!
//! A ticket file (`tickets/<id hex>.ticket`, 0600):
//!
//! ```text
//! 1 ‖ 'T' ‖ resumption secret (32) ‖ postcard(TicketRecord) ‖ CRC-32
//! TicketRecord = { id: 16 bytes, peripheral: 8 bytes, public_key: 32 bytes,
//!                  group: Option<string>, attributes: [(string, string)],
//!                  scope: varint, session_s: varint, resumption_s: varint,
//!                  expires_at_ms: varint }
//! ```

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{error, info, warn};
use vouch_proto::handshake::gateway::GatewayTicket;
use vouch_proto::keys::{PeripheralId, PublicKey};
use vouch_proto::wire::backend::PeripheralInfo;
use vouch_proto::wire::{Lifetimes, ResumptionId, Scope};
use vouch_proto::Timestamp;
use zeroize::Zeroizing;

use crate::clock::WallTime;

use super::{
    encode_cursor, frame, read_cursor, read_limited, remove_if_present, sync_dir_of, unframe,
    write_atomic, Kind, StateBinding, StateDir, StateError, Unreadable, CURSOR_FILE,
};

/// Largest ticket file read (a ticket is a few hundred bytes; the backend's
/// attributes are the only variable part).
const MAX_TICKET_FILE: u64 = 64 * 1024;

/// The file extension of ticket files.
const EXTENSION: &str = "ticket";

/// The non-secret part of a ticket file. Its own type, so that a change to a
/// protocol type cannot silently change the file format.
#[derive(Serialize, Deserialize)]
struct TicketRecord {
    id: [u8; 16],
    peripheral: [u8; 8],
    public_key: [u8; 32],
    group: Option<String>,
    attributes: Vec<(String, String)>,
    scope: u32,
    session_s: u32,
    resumption_s: u32,
    expires_at_ms: u64,
}

fn file_name(id: &ResumptionId) -> String {
    format!("{}.{EXTENSION}", hex::encode(id.0))
}

/// The bytes of a ticket's file; `expires_at` is the ticket's expiry on the
/// wall clock (the ticket's own is monotonic).
fn encode(ticket: &GatewayTicket, expires_at: WallTime) -> Zeroizing<Vec<u8>> {
    let p = &ticket.peripheral;
    let record = TicketRecord {
        id: ticket.id.0,
        peripheral: p.id.0,
        public_key: *p.public_key.as_bytes(),
        group: p.group.clone(),
        attributes: p.attributes.clone(),
        scope: p.scope.0,
        session_s: ticket.lifetimes.session_s,
        resumption_s: ticket.lifetimes.resumption_s,
        expires_at_ms: expires_at.as_millis(),
    };
    // Serializing plain fields into a Vec cannot fail.
    let body = postcard::to_allocvec(&record).unwrap_or_default();
    let secret = ticket.danger_secret();
    frame(Kind::Ticket, &[secret.as_slice(), &body])
}

/// Parses a ticket file's bytes; the ticket's `expires_at` is then the wall
/// time the file holds (the caller converts it).
fn decode(bytes: &[u8]) -> Result<GatewayTicket, Unreadable> {
    let body = unframe(Kind::Ticket, bytes)?;
    if body.len() < 32 {
        return Err(Unreadable::Truncated);
    }
    let (secret_bytes, rest) = body.split_at(32);
    let record: TicketRecord = postcard::from_bytes(rest)?;
    let public_key = PublicKey::from_bytes(record.public_key).ok_or(Unreadable::Invalid(
        "the peripheral's public key is not a valid key",
    ))?;
    let mut secret = Zeroizing::new([0u8; 32]);
    secret.copy_from_slice(secret_bytes);
    Ok(GatewayTicket::from_parts(
        ResumptionId(record.id),
        *secret,
        PeripheralInfo {
            id: PeripheralId(record.peripheral),
            public_key,
            group: record.group,
            attributes: record.attributes,
            scope: Scope(record.scope),
        },
        Lifetimes {
            session_s: record.session_s,
            resumption_s: record.resumption_s,
        },
        Timestamp(record.expires_at_ms),
    ))
}

/// What [`SessionTable::open`](crate::sessions::SessionTable::open) found in
/// the state directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Tickets loaded (usable once the feed has caught up).
    pub restored: usize,
    /// The cursor the feed resumes after, if a valid one was saved.
    pub cursor: Option<u64>,
    /// Why every ticket file was discarded, if they were (no valid cursor).
    pub discarded_because: Option<String>,
    /// Ticket files discarded for that reason.
    pub discarded: usize,
    /// Tickets past their expiry, removed.
    pub expired: usize,
    /// Tickets issued later than the clock says it is now (the clock went
    /// back, as on a Raspberry Pi without a real-time clock before NTP),
    /// removed: their expiry cannot be trusted.
    pub clock_behind: usize,
    /// Tickets beyond `max_tickets` (those expiring first), removed.
    pub over_limit: usize,
    /// Files that could not be read or decoded, left in place and skipped,
    /// with the reason.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// What [`TicketStore::open`] found and started.
pub(crate) struct Loaded {
    /// The store, its writer running.
    pub(crate) store: TicketStore,
    /// The tickets restored, by id: each with its expiry on the monotonic
    /// clock as the wall clock at start put it (provisional: the wall clock
    /// is not trusted yet), and its expiry on the wall clock, as saved.
    pub(crate) tickets: HashMap<ResumptionId, (GatewayTicket, WallTime)>,
    /// The cursor the revocation feed resumes after.
    pub(crate) cursor: u64,
    /// What was found.
    pub(crate) report: RestoreReport,
}

/// A request to the writer thread.
enum Op {
    Write(ResumptionId, Zeroizing<Vec<u8>>),
    Remove(ResumptionId),
    Cursor(u64),
    Flush(oneshot::Sender<()>),
}

/// The tickets restored from `files` (their cursor was found): each is read
/// (an unreadable one is skipped and reported), dropped if the wall clock
/// says it expired or was issued in its future, and its expiry moved to the
/// monotonic clock; beyond `max_tickets`, those expiring first are dropped.
/// Returns the tickets kept and the files to remove.
fn restore(
    files: Vec<PathBuf>,
    tickets_dir: &Path,
    max_tickets: usize,
    now: Timestamp,
    wall: WallTime,
    report: &mut RestoreReport,
) -> (
    HashMap<ResumptionId, (GatewayTicket, WallTime)>,
    Vec<PathBuf>,
) {
    let mut tickets = HashMap::new();
    let mut remove = Vec::new();
    for path in files {
        let Some(mut ticket) = read_ticket(&path, report) else {
            continue;
        };
        // Both checks on a wall clock not confirmed yet, so both only ever
        // remove: the tickets kept are checked again once it is
        // (TicketBook::check_clock).
        let expires = WallTime(ticket.expires_at.as_millis());
        if wall >= expires {
            report.expired += 1;
            remove.push(path);
        } else if wall < issued_at(&ticket, expires) {
            report.clock_behind += 1;
            remove.push(path);
        } else {
            ticket.expires_at = Timestamp(now.as_millis().saturating_add(expires.0 - wall.0));
            tickets.insert(ticket.id, (ticket, expires));
        }
    }
    if report.clock_behind > 0 {
        warn!(
            tickets = report.clock_behind,
            wall_ms = wall.as_millis(),
            "the clock is behind the time some persisted tickets were issued: they were discarded"
        );
    }
    if tickets.len() > max_tickets {
        let mut by_expiry: Vec<_> = tickets.values().map(|(t, w)| (*w, t.id.0)).collect();
        by_expiry.sort();
        let excess = tickets.len() - max_tickets;
        for (_, id) in by_expiry.into_iter().take(excess) {
            let id = ResumptionId(id);
            tickets.remove(&id);
            remove.push(tickets_dir.join(file_name(&id)));
        }
        report.over_limit = excess;
    }
    (tickets, remove)
}

/// One ticket file, if it reads, decodes and is named after its ticket;
/// otherwise it is skipped (and reported).
fn read_ticket(path: &Path, report: &mut RestoreReport) -> Option<GatewayTicket> {
    match read_limited(path, MAX_TICKET_FILE).and_then(|bytes| decode(&bytes)) {
        Ok(t) if path.file_name().and_then(|n| n.to_str()) == Some(file_name(&t.id).as_str()) => {
            Some(t)
        }
        Ok(_) => {
            skip(
                report,
                path.to_path_buf(),
                &Unreadable::Invalid("the file name is not its ticket id"),
            );
            None
        }
        Err(e) => {
            skip(report, path.to_path_buf(), &e);
            None
        }
    }
}

/// The ticket files and the feed cursor, written in order by one thread.
pub(crate) struct TicketStore {
    tx: mpsc::Sender<Op>,
}

impl TicketStore {
    /// Loads the tickets for `binding` and starts the writer. `wall` is the
    /// wall clock at start, `now` the monotonic one.
    pub(crate) fn open(
        dir: &StateDir,
        binding: &StateBinding,
        max_tickets: usize,
        now: Timestamp,
        wall: WallTime,
    ) -> Result<Loaded, StateError> {
        let tickets_dir = dir.tickets_dir();
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        let mut report = RestoreReport::default();
        let files = ticket_files(&tickets_dir).map_err(io_err(&tickets_dir))?;
        let mut tickets = HashMap::new();
        let remove: Vec<PathBuf>;
        match read_cursor(dir, binding) {
            Err(why) => {
                // Without a cursor for this gateway and backend, nothing says
                // which revocations these tickets have missed.
                report.discarded = files.len();
                if !files.is_empty() {
                    warn!(dir = %dir.path().display(), tickets = files.len(), reason = %why,
                        "persisted resumption tickets discarded: the revocation feed cannot be resumed");
                }
                report.discarded_because = Some(why);
                remove = files;
            }
            Ok(after) => {
                report.cursor = Some(after);
                (tickets, remove) =
                    restore(files, &tickets_dir, max_tickets, now, wall, &mut report);
            }
        }
        for path in &remove {
            remove_if_present(path).map_err(io_err(path))?;
        }
        let cursor = report.cursor.unwrap_or(0);
        if report.cursor.is_none() {
            // Removals first, durably; then a cursor from the start of the
            // feed, from which every revocation will be seen.
            sync_dir_of(&tickets_dir).map_err(io_err(&tickets_dir))?;
            write_atomic(dir.path(), CURSOR_FILE, &encode_cursor(binding, 0), true)
                .map_err(io_err(&dir.cursor_path()))?;
        } else if !remove.is_empty() {
            sync_dir_of(&tickets_dir).map_err(io_err(&tickets_dir))?;
        }
        report.restored = tickets.len();
        if report.restored > 0 {
            info!(dir = %dir.path().display(), tickets = report.restored, cursor,
                expired = report.expired, unreadable = report.unreadable.len(),
                "resumption tickets restored; they are used once the revocation feed has caught up");
        }
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            root: dir.path().to_path_buf(),
            tickets: tickets_dir,
            binding: binding.clone(),
            removal_failed: false,
        };
        std::thread::Builder::new()
            .name("vouch-state".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(dir.path()))?;
        Ok(Loaded {
            store: Self { tx },
            tickets,
            cursor,
            report,
        })
    }

    fn send(&self, op: Op) {
        // The writer ends only when this sender is dropped.
        let _ = self.tx.send(op);
    }

    /// Queues a ticket's file, with its expiry on the wall clock.
    pub(crate) fn write(&self, ticket: &GatewayTicket, expires_at: WallTime) {
        self.send(Op::Write(ticket.id, encode(ticket, expires_at)));
    }

    /// Queues the removal of a ticket's file.
    pub(crate) fn remove(&self, id: &ResumptionId) {
        self.send(Op::Remove(*id));
    }

    /// Queues the feed cursor: written after every operation queued before it.
    pub(crate) fn cursor(&self, after: u64) {
        self.send(Op::Cursor(after));
    }

    /// Waits until everything queued so far is on disk.
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Flush(tx));
        let _ = rx.await;
    }
}

/// When a ticket expiring at `expires_at` (wall clock) was issued: its
/// resumption lifetime earlier (SPEC.md §6.1).
pub(crate) fn issued_at(ticket: &GatewayTicket, expires_at: WallTime) -> WallTime {
    WallTime(
        expires_at
            .0
            .saturating_sub(1000 * u64::from(ticket.lifetimes.resumption_s)),
    )
}

fn skip(report: &mut RestoreReport, path: PathBuf, why: &Unreadable) {
    warn!(file = %path.display(), reason = %why, "unreadable ticket file skipped");
    report.unreadable.push((path, why.to_string()));
}

fn ticket_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == EXTENSION) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

struct Writer {
    root: PathBuf,
    tickets: PathBuf,
    binding: StateBinding,
    /// A ticket file could not be removed: a restart must not trust the
    /// tickets, so the cursor is removed rather than advanced.
    removal_failed: bool,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        while let Ok(first) = rx.recv() {
            // Take whatever else is queued: one directory sync per batch.
            let mut batch = vec![first];
            batch.extend(rx.try_iter());
            let mut dirty = false;
            let mut flushed = Vec::new();
            for op in batch {
                match op {
                    Op::Write(id, bytes) => {
                        let name = file_name(&id);
                        match write_atomic(&self.tickets, &name, &bytes, false) {
                            Ok(()) => dirty = true,
                            Err(e) => warn!(file = %self.tickets.join(&name).display(), error = %e,
                                "cannot save a resumption ticket (it will not survive a restart)"),
                        }
                    }
                    Op::Remove(id) => {
                        let path = self.tickets.join(file_name(&id));
                        match remove_if_present(&path) {
                            Ok(()) => dirty = true,
                            Err(e) => {
                                error!(file = %path.display(), error = %e,
                                    "cannot remove a resumption ticket file; the next start will discard every ticket");
                                self.removal_failed = true;
                            }
                        }
                    }
                    Op::Cursor(after) => {
                        // The removals before this cursor must be durable first.
                        self.sync(&mut dirty);
                        self.write_cursor(after);
                    }
                    Op::Flush(done) => flushed.push(done),
                }
            }
            self.sync(&mut dirty);
            for done in flushed {
                let _ = done.send(());
            }
        }
    }

    fn sync(&mut self, dirty: &mut bool) {
        if !*dirty {
            return;
        }
        *dirty = false;
        if let Err(e) = sync_dir_of(&self.tickets) {
            error!(dir = %self.tickets.display(), error = %e,
                "cannot sync the ticket directory; the next start will discard every ticket");
            self.removal_failed = true;
        }
    }

    fn write_cursor(&mut self, after: u64) {
        let path = self.root.join(CURSOR_FILE);
        if self.removal_failed {
            if let Err(e) = remove_if_present(&path).and_then(|()| sync_dir_of(&self.root)) {
                error!(file = %path.display(), error = %e,
                    "cannot remove the feed cursor after a failed ticket removal; remove the state directory's tickets by hand");
            }
            return;
        }
        if let Err(e) = write_atomic(
            &self.root,
            CURSOR_FILE,
            &encode_cursor(&self.binding, after),
            true,
        ) {
            // The older cursor stays: a restart replays more of the feed, which is safe.
            warn!(file = %path.display(), error = %e, "cannot save the revocation feed cursor");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(id: u8, expires_at: u64) -> GatewayTicket {
        let key = vouch_proto::keys::IdentityKey::from_seed(&[id; 32]).public_key();
        GatewayTicket::from_parts(
            ResumptionId([id; 16]),
            [id ^ 0x5a; 32],
            PeripheralInfo {
                id: PeripheralId::derive(&key),
                public_key: key,
                group: Some("lab".into()),
                attributes: vec![("room".into(), "7".into())],
                scope: Scope(3),
            },
            Lifetimes {
                session_s: 60,
                resumption_s: 3600,
            },
            Timestamp(expires_at),
        )
    }

    /// The identity point: a valid encoding of a key of small order.
    fn small_order_point() -> [u8; 32] {
        let mut p = [0u8; 32];
        p[0] = 1;
        p
    }

    #[test]
    fn a_ticket_file_round_trips_and_holds_the_secret_only_once() {
        let t = ticket(7, 5_000_000);
        let bytes = encode(&t, WallTime(5_000_000));
        assert_eq!(&bytes[..2], &[1, b'T']);
        let back = decode(&bytes).unwrap();
        assert_eq!(back.id, t.id);
        assert_eq!(*back.danger_secret(), *t.danger_secret());
        assert_eq!(back.peripheral, t.peripheral);
        assert_eq!(back.lifetimes, t.lifetimes);
        assert_eq!(back.expires_at, t.expires_at);
        let secret = t.danger_secret();
        let found = bytes
            .windows(32)
            .filter(|w| *w == secret.as_slice())
            .count();
        assert_eq!(found, 1);
    }

    #[test]
    fn a_damaged_or_foreign_ticket_file_does_not_decode() {
        let bytes = encode(&ticket(9, 5_000_000), WallTime(5_000_000));
        let mut flipped = bytes.to_vec();
        flipped[40] ^= 1;
        assert!(matches!(decode(&flipped), Err(Unreadable::Checksum)));
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(Unreadable::Checksum)
        ));
        let mut v9 = bytes.to_vec();
        v9[0] = 9;
        assert!(matches!(decode(&v9), Err(Unreadable::Version(9))));
        assert!(decode(b"").is_err());
        // A body with an invalid public key: framed correctly, refused on parse.
        let mut record = postcard::to_allocvec(&TicketRecord {
            id: [1; 16],
            peripheral: [2; 8],
            public_key: small_order_point(),
            group: None,
            attributes: vec![],
            scope: 1,
            session_s: 1,
            resumption_s: 1,
            expires_at_ms: 1,
        })
        .unwrap();
        let mut body = vec![0u8; 32];
        body.append(&mut record);
        let framed = frame(Kind::Ticket, &[&body]);
        assert!(matches!(decode(&framed), Err(Unreadable::Invalid(_))));
    }
}
