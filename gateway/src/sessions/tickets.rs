//! The resumption tickets (SPEC.md §6.1), at most one per peripheral, kept
//! in memory and, with a state directory, on disk; and the tickets restored
//! from disk, held back until the revocation feed caught up and the wall
//! clock is confirmed (see the [module docs](super)).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tracing::{info, warn};
use vouch_proto::handshake::gateway::GatewayTicket;
use vouch_proto::keys::PeripheralId;
use vouch_proto::wire::ResumptionId;
use vouch_proto::Timestamp;

use crate::clock::{Clock, WallTime};
use crate::state::tickets::{issued_at, TicketStore};
use crate::state::RestoreReport;

/// Most authenticated ResumeHello ephemerals remembered per ticket: a ticket
/// is used once, so this counts a genuine device's retries of one ticket
/// (lost answers), not its resumptions.
const SEEN_PER_TICKET: usize = 8;

/// A stored ticket and the state of its resumption attempts.
struct Stored {
    ticket: GatewayTicket,
    /// Its resumption attempts; boxed and absent until the first one
    /// verified its binder: most tickets wait unused, and the store holds
    /// one per peripheral.
    attempts: Option<Box<Attempts>>,
}

/// The resumption attempts of one ticket whose binder verified.
#[derive(Default)]
struct Attempts {
    /// Their `e_P'`: the same ResumeHello again is a replay.
    seen: Vec<[u8; 32]>,
    /// The attempt that may complete a resumption (the latest).
    claim: u64,
}

impl Stored {
    fn was_seen(&self, e_p: &[u8; 32]) -> bool {
        self.attempts.as_ref().is_some_and(|a| a.seen.contains(e_p))
    }
}

/// The tickets, at most one per peripheral (SPEC.md §6.1): a peripheral's
/// new ticket replaces its old one, so no identity, however many handshakes
/// it runs, holds more than one slot of `max_tickets`.
#[derive(Default)]
struct Tickets {
    by_id: HashMap<ResumptionId, Stored>,
    by_peripheral: HashMap<PeripheralId, ResumptionId>,
    next_claim: u64,
}

impl Tickets {
    fn remove(&mut self, id: &ResumptionId) -> Option<GatewayTicket> {
        let stored = self.by_id.remove(id)?;
        let owner = stored.ticket.peripheral.id;
        if self.by_peripheral.get(&owner) == Some(id) {
            self.by_peripheral.remove(&owner);
        }
        Some(stored.ticket)
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// How far the wall clock may be from the backend's `Date` and still count
/// as confirmed (SPEC.md §6.1): the `Date` has a resolution of a second and
/// is stamped before the answer crosses the network. A restored ticket may
/// live this much longer (or shorter) than its lifetime.
pub const CLOCK_TOLERANCE_MS: u64 = 60_000;

/// Restored tickets waiting to be used, and what they wait for.
#[derive(Default)]
struct Held {
    /// Each restored ticket still held, with its expiry on the wall clock
    /// as saved.
    tickets: HashMap<ResumptionId, WallTime>,
    /// The revocation feed has caught up from the saved cursor.
    feed: bool,
}

/// A ticket a resumption attempt verified ([`TicketBook::claim`]), to be
/// used by [`SessionTable::complete_resumption`](super::SessionTable::complete_resumption).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketClaim {
    id: ResumptionId,
    claim: u64,
}

/// The tickets, and those restored from disk that wait to be usable.
pub struct TicketBook {
    tickets: Mutex<Tickets>,
    max_tickets: usize,
    /// Where tickets and the feed cursor are kept, with the clock that
    /// converts their expiry to wall time; `None`: memory only.
    store: Option<(TicketStore, Arc<dyn Clock>)>,
    /// Whether the wall clock agrees with the backend's last authenticated
    /// time (within [`CLOCK_TOLERANCE_MS`]). Tickets are written to disk only
    /// while it does (their wall-clock expiry would be wrong otherwise), and
    /// restored ones are used only once it has.
    wall_confirmed: AtomicBool,
    /// Whether [`check_clock`](Self::check_clock) has compared it once.
    clock_checked: AtomicBool,
    /// Tickets restored from disk that wait for the feed to catch up and the
    /// wall clock to be confirmed; empty once both happened (or when nothing
    /// was restored).
    restored: Mutex<Held>,
    /// `true` once no restored ticket is held.
    feed_ready: watch::Sender<bool>,
    /// The feed cursor the revocation feed starts after.
    feed_start: u64,
    /// What [`SessionTable::open`](super::SessionTable::open) found.
    restore_report: Option<RestoreReport>,
}

impl TicketBook {
    /// The tickets `tickets` (restored from `store`, or none), at most
    /// `max_tickets`; `feed_start` is the feed cursor saved with them.
    pub(super) fn new(
        max_tickets: usize,
        store: Option<(TicketStore, Arc<dyn Clock>)>,
        tickets: HashMap<ResumptionId, (GatewayTicket, WallTime)>,
        feed_start: u64,
        restore_report: Option<RestoreReport>,
    ) -> Self {
        // One ticket per peripheral: of several restored (files written
        // before this rule), the one expiring last.
        let mut newest: Vec<(GatewayTicket, WallTime)> = tickets.into_values().collect();
        newest.sort_by_key(|(_, wall)| *wall);
        let mut map = Tickets::default();
        let mut held = Held::default();
        for (t, wall) in newest {
            if let Some(old) = map.by_peripheral.insert(t.peripheral.id, t.id) {
                map.by_id.remove(&old);
                held.tickets.remove(&old);
                if let Some((store, _)) = &store {
                    store.remove(&old);
                }
            }
            held.tickets.insert(t.id, wall);
            map.by_id.insert(
                t.id,
                Stored {
                    ticket: t,
                    attempts: None,
                },
            );
        }
        let (feed_ready, _) = watch::channel(held.tickets.is_empty());
        Self {
            tickets: Mutex::new(map),
            max_tickets,
            store,
            wall_confirmed: AtomicBool::new(false),
            clock_checked: AtomicBool::new(false),
            restored: Mutex::new(held),
            feed_ready,
            feed_start,
            restore_report,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tickets> {
        self.tickets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_restored(&self) -> std::sync::MutexGuard<'_, Held> {
        self.restored.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes a ticket from the map (held locked by the caller) and from disk.
    fn drop_ticket(&self, map: &mut Tickets, id: &ResumptionId) -> Option<GatewayTicket> {
        let t = map.remove(id)?;
        if let Some((store, _)) = &self.store {
            store.remove(id);
        }
        Some(t)
    }

    /// Queues a ticket's file (the map held locked by the caller), its
    /// monotonic expiry converted to the wall clock; only while the wall
    /// clock is confirmed: on a wrong one the saved expiry would be wrong.
    /// A ticket not written now is written if the clock is confirmed later
    /// in this run ([`check_clock`](Self::check_clock)).
    fn persist(&self, ticket: &GatewayTicket) {
        let Some((store, clock)) = &self.store else {
            return;
        };
        if !self.wall_confirmed.load(Ordering::SeqCst) {
            return;
        }
        let remaining = ticket
            .expires_at
            .as_millis()
            .saturating_sub(clock.now().as_millis());
        store.write(
            ticket,
            WallTime(clock.wall().as_millis().saturating_add(remaining)),
        );
    }

    /// Checks the wall clock against `server_time`, the time of the
    /// backend's authenticated answer to the revocation feed (its `Date`;
    /// `None` when the answer had none, which changes nothing). Within
    /// [`CLOCK_TOLERANCE_MS`], the wall clock is confirmed: tickets are
    /// written to disk again (those made while it was not are written now),
    /// and restored tickets are released once the feed has caught up.
    /// Otherwise it is not: no ticket is written, and restored tickets stay
    /// held (a clock that boots far behind would lengthen their lives).
    /// Returns whether the wall clock is confirmed; `None` for a table
    /// without a state directory, which keeps no wall time.
    pub fn check_clock(&self, server_time: Option<WallTime>) -> Option<bool> {
        let (_, clock) = self.store.as_ref()?;
        let Some(server) = server_time else {
            return Some(self.wall_confirmed.load(Ordering::SeqCst));
        };
        let wall = clock.wall();
        let ok = wall.distance(server) <= CLOCK_TOLERANCE_MS;
        let map = self.lock();
        let was = self.wall_confirmed.swap(ok, Ordering::SeqCst);
        let checked_before = self.clock_checked.swap(true, Ordering::SeqCst);
        if ok && !was {
            info!(
                wall_ms = wall.as_millis(),
                backend_ms = server.as_millis(),
                "wall clock confirmed by the backend's time"
            );
            let held = self.lock_restored();
            for stored in map.by_id.values() {
                if !held.tickets.contains_key(&stored.ticket.id) {
                    self.persist(&stored.ticket);
                }
            }
        } else if !ok && (was || !checked_before) {
            warn!(
                wall_ms = wall.as_millis(),
                backend_ms = server.as_millis(),
                tolerance_ms = CLOCK_TOLERANCE_MS,
                "the wall clock disagrees with the backend's time: restored resumption tickets stay unused and new ones are not saved until it agrees"
            );
        }
        drop(map);
        if ok {
            self.release_restored();
        }
        Some(ok)
    }

    /// Whether the wall clock agreed with the backend's time at the last
    /// check ([`check_clock`](Self::check_clock)).
    pub fn wall_clock_confirmed(&self) -> bool {
        self.wall_confirmed.load(Ordering::SeqCst)
    }

    /// Releases the restored tickets once the feed caught up and the wall
    /// clock is confirmed: each gets its expiry again from the confirmed
    /// wall clock; one expired by it, or issued later than it says it is
    /// (it was written by a clock ahead), is dropped.
    fn release_restored(&self) {
        let n = {
            let mut map = self.lock();
            let mut held = self.lock_restored();
            if !held.feed || !self.wall_confirmed.load(Ordering::SeqCst) {
                return;
            }
            if held.tickets.is_empty() && !self.awaits_feed() {
                return;
            }
            let Some((_, clock)) = &self.store else {
                return;
            };
            let (now, wall) = (clock.now(), clock.wall());
            let mut dropped = 0;
            for (id, expires) in std::mem::take(&mut held.tickets) {
                let Some(stored) = map.by_id.get_mut(&id) else {
                    continue;
                };
                if wall >= expires
                    || issued_at(&stored.ticket, expires).as_millis()
                        > wall.as_millis().saturating_add(CLOCK_TOLERANCE_MS)
                {
                    self.drop_ticket(&mut map, &id);
                    dropped += 1;
                } else {
                    stored.ticket.expires_at =
                        Timestamp(now.as_millis().saturating_add(expires.0 - wall.0));
                }
            }
            held.tickets.shrink_to_fit();
            if dropped > 0 {
                warn!(
                    tickets = dropped,
                    "restored resumption tickets expired or issued in the future by the confirmed clock: dropped"
                );
            }
            map.len()
        };
        info!(
            tickets = n,
            "revocation feed caught up and wall clock confirmed: restored resumption tickets are usable"
        );
        self.feed_ready.send_replace(true);
    }

    /// Stores a ticket: it replaces the peripheral's previous ticket, if any
    /// (one chain per peripheral); when the store is full, the ticket
    /// expiring first is evicted. A ticket of a peripheral `revoked` says is
    /// revoked is dropped instead. With a state directory, the ticket's file is written (in
    /// order, durably) in the background.
    pub(super) fn store(&self, ticket: GatewayTicket, revoked: impl Fn(&PeripheralId) -> bool) {
        let mut map = self.lock();
        // Checked under the tickets lock: the feed marks a peripheral revoked
        // before it takes the lock to drop its tickets, so a ticket is either
        // refused here or dropped there, never kept.
        if revoked(&ticket.peripheral.id) {
            return;
        }
        if let Some(&old) = map.by_peripheral.get(&ticket.peripheral.id) {
            if old != ticket.id {
                self.drop_ticket(&mut map, &old);
                self.lock_restored().tickets.remove(&old);
            }
        }
        if map.len() >= self.max_tickets && !map.by_id.contains_key(&ticket.id) {
            if let Some(oldest) = map
                .by_id
                .values()
                .min_by_key(|s| s.ticket.expires_at)
                .map(|s| s.ticket.id)
            {
                self.drop_ticket(&mut map, &oldest);
                self.lock_restored().tickets.remove(&oldest);
            }
        }
        self.persist(&ticket);
        map.by_peripheral.insert(ticket.peripheral.id, ticket.id);
        map.by_id.insert(
            ticket.id,
            Stored {
                ticket,
                attempts: None,
            },
        );
    }

    /// A copy of the ticket a ResumeHello with ephemeral `e_p` names, for the
    /// handshake to check its binder (SPEC.md §6.1, §6.2). The ticket stays
    /// in the store: a forged, replayed or interrupted attempt cannot take
    /// it out. `None` (answered `ResumptionRejected`) when it is unknown,
    /// restored and waiting for the revocation feed
    /// ([`is_held_for_feed`](Self::is_held_for_feed)), its peripheral is
    /// revoked (by `revoked`), or `e_p` was already presented with a valid
    /// binder (the message is a replay).
    pub(super) fn for_attempt(
        &self,
        id: &ResumptionId,
        e_p: &[u8; 32],
        revoked: impl Fn(&PeripheralId) -> bool,
    ) -> Option<GatewayTicket> {
        let map = self.lock();
        if self.lock_restored().tickets.contains_key(id) {
            return None;
        }
        let stored = map.by_id.get(id)?;
        if stored.was_seen(e_p) || revoked(&stored.ticket.peripheral.id) {
            return None;
        }
        let t = &stored.ticket;
        Some(GatewayTicket::from_parts(
            t.id,
            *t.danger_secret(),
            t.peripheral.clone(),
            t.lifetimes,
            t.expires_at,
        ))
    }

    /// The attempt with ephemeral `e_p` verified its binder: it, and no
    /// earlier attempt, may complete a resumption with ticket `id`, and the
    /// same ResumeHello is refused from now on. Only the peripheral holding
    /// the ticket's secret (or a replay, refused here) passes the binder, so
    /// the latest such attempt is the device's own retry. `None` if the
    /// ticket is gone or `e_p` was seen (two copies racing).
    pub fn claim(&self, id: &ResumptionId, e_p: &[u8; 32]) -> Option<TicketClaim> {
        let mut map = self.lock();
        map.next_claim += 1;
        let claim = map.next_claim;
        let stored = map.by_id.get_mut(id)?;
        if stored.was_seen(e_p) {
            return None;
        }
        let attempts = stored.attempts.get_or_insert_with(Default::default);
        if attempts.seen.len() >= SEEN_PER_TICKET {
            attempts.seen.remove(0);
        }
        attempts.seen.push(*e_p);
        attempts.claim = claim;
        Some(TicketClaim { id: *id, claim })
    }

    /// A resumption under `claim` completed: its ticket is used up and
    /// `next` replaces it. Returns `false`, storing nothing, if the claim
    /// is no longer the ticket's (a later attempt claimed it, or the ticket
    /// was revoked, expired or replaced): the session must not start.
    pub(super) fn complete(
        &self,
        claim: TicketClaim,
        next: GatewayTicket,
        revoked: impl Fn(&PeripheralId) -> bool,
    ) -> bool {
        {
            let mut map = self.lock();
            let current = map
                .by_id
                .get(&claim.id)
                .and_then(|s| s.attempts.as_ref())
                .map(|a| a.claim);
            if current != Some(claim.claim) {
                return false;
            }
            self.drop_ticket(&mut map, &claim.id);
        }
        self.store(next, revoked);
        true
    }

    /// Whether `id` is a ticket restored from disk that waits for the
    /// revocation feed to catch up or the wall clock to be confirmed.
    pub fn is_held_for_feed(&self, id: &ResumptionId) -> bool {
        self.lock_restored().tickets.contains_key(id)
    }

    /// Waits until no restored ticket is held any more (at once for a table
    /// that restored none).
    pub async fn feed_ready(&self) {
        let mut rx = self.feed_ready.subscribe();
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Whether restored tickets wait for the feed to catch up or the wall
    /// clock to be confirmed.
    pub fn awaits_feed(&self) -> bool {
        !*self.feed_ready.borrow()
    }

    /// The feed cursor to start after: the one saved in the state directory,
    /// or 0 (the whole feed).
    pub fn feed_cursor(&self) -> u64 {
        self.feed_start
    }

    /// The feed has been read from the saved cursor to its end and every
    /// event applied: the restored tickets that are left may be used once
    /// the wall clock is confirmed too ([`check_clock`](Self::check_clock)).
    pub fn feed_caught_up(&self) {
        self.lock_restored().feed = true;
        if self.store.is_none() {
            self.feed_ready.send_replace(true);
            return;
        }
        if self.awaits_feed() && !self.wall_confirmed.load(Ordering::SeqCst) {
            info!("revocation feed caught up: restored resumption tickets wait for the wall clock to be confirmed");
        }
        self.release_restored();
    }

    /// The feed cannot be resumed from the saved cursor (the backend's log is
    /// behind it, or the backend refused the request): drops every restored
    /// ticket still waiting, on disk too. Returns how many.
    pub fn discard_restored(&self) -> usize {
        let n = {
            let mut map = self.lock();
            let mut restored = self.lock_restored();
            let n = restored.tickets.len();
            for (id, _) in std::mem::take(&mut restored.tickets) {
                self.drop_ticket(&mut map, &id);
            }
            n
        };
        self.feed_ready.send_replace(true);
        n
    }

    /// Saves the feed cursor (with a state directory): after every ticket
    /// change made before this call is on disk.
    pub fn record_feed_cursor(&self, after: u64) {
        if let Some((store, _)) = &self.store {
            store.cursor(after);
        }
    }

    /// Waits until every ticket and cursor change made so far is on disk (at
    /// once without a state directory). Call before exiting.
    pub async fn flush(&self) {
        if let Some((store, _)) = &self.store {
            store.flush().await;
        }
    }

    /// What [`SessionTable::open`](super::SessionTable::open) found in the state directory (`None` for a
    /// table in memory only).
    pub fn restore_report(&self) -> Option<&RestoreReport> {
        self.restore_report.as_ref()
    }

    /// Whether tickets are kept in a state directory.
    pub fn is_persistent(&self) -> bool {
        self.store.is_some()
    }

    /// Drops every ticket of a peripheral (revocation).
    pub fn forget_peripheral(&self, peripheral: &PeripheralId) -> usize {
        let mut map = self.lock();
        let ids: Vec<ResumptionId> = map
            .by_id
            .values()
            .filter(|s| &s.ticket.peripheral.id == peripheral)
            .map(|s| s.ticket.id)
            .collect();
        let mut restored = self.lock_restored();
        for id in &ids {
            self.drop_ticket(&mut map, id);
            restored.tickets.remove(id);
        }
        ids.len()
    }

    /// Drops every ticket.
    pub fn forget_all(&self) {
        let mut map = self.lock();
        let ids: Vec<ResumptionId> = map.by_id.keys().copied().collect();
        for id in &ids {
            self.drop_ticket(&mut map, id);
        }
        self.lock_restored().tickets.clear();
    }

    /// Drops expired tickets; returns how many.
    pub fn expire(&self, now: Timestamp) -> usize {
        let mut map = self.lock();
        let ids: Vec<ResumptionId> = map
            .by_id
            .values()
            .filter(|s| s.ticket.expires_at <= now)
            .map(|s| s.ticket.id)
            .collect();
        if ids.is_empty() {
            return 0;
        }
        let mut restored = self.lock_restored();
        for id in &ids {
            self.drop_ticket(&mut map, id);
            restored.tickets.remove(id);
        }
        ids.len()
    }

    /// How many tickets are stored.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no ticket is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
