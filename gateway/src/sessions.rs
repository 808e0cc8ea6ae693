//! The session table: who is connected, how to reach their driver, the
//! resumption tickets (SPEC.md §6.1), and the trust-anchor updates every
//! session delivers (SPEC.md §7.7, [`crate::anchors`]).
//!
//! Tickets live in memory ([`SessionTable::new`]) or are also kept in the
//! state directory ([`SessionTable::open`]), so that devices resume after a
//! gateway restart. Tickets restored from disk are held back until the
//! revocation feed has caught up from the cursor saved with them (a
//! peripheral revoked while the gateway was down must not resume) and the
//! wall clock has been confirmed against the backend's authenticated time
//! ([`SessionTable::check_clock`]): their expiry was saved on the wall clock,
//! and a gateway that boots with an old time (a Raspberry Pi has no
//! real-time clock; fake-hwclock restores the last saved time) would
//! otherwise lengthen their lives.
//!
//! Every time in the table (session lifetimes, ticket expiry, activity) is on
//! the monotonic clock ([`crate::clock`]); only a ticket file holds a wall
//! time.
//!
//! A session is keyed by the authenticated peripheral id, never by a link
//! address. A second session for a peripheral that already has one becomes
//! its session at once (commands go to it): a device that reconnects before
//! the gateway noticed its old link died (BLE supervision timeout) must not
//! be locked out by its own stale link. The older session is *superseded*,
//! not closed: it stays open until its link ends (the genuine case), and if
//! it delivers an authenticated record meanwhile, two holders of the key
//! are live at once, a suspected clone that the driver reports to the
//! backend (SPEC.md §11.6). At most one superseded session is kept per
//! peripheral; revocation, policy changes, shutdown and the sweep reach it
//! like any other.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, oneshot, watch, Notify};
use tracing::{debug, info, warn};
use vouch_proto::handshake::gateway::GatewayTicket;
use vouch_proto::keys::PeripheralId;
use vouch_proto::session::CloseReason;
use vouch_proto::wire::{ResumptionId, Scope};
use vouch_proto::Timestamp;

use crate::anchors::AnchorUpdates;
use crate::clock::{Clock, WallTime};
use crate::state::tickets::{issued_at, Loaded, TicketStore};
use crate::state::{RestoreReport, StateBinding, StateDir, StateError};

/// A request from the rest of the gateway to one session's driver.
#[derive(Debug)]
pub enum Command {
    /// Seal and send application data; the reply says whether it went out.
    Send(Vec<u8>, oneshot::Sender<Result<(), String>>),
    /// Close the session with this reason.
    Close(CloseReason),
}

/// Most commands queued for one session before senders get `Busy`.
pub const MAILBOX_CAPACITY: usize = 32;

/// Data queued for a session, with the channel its outcome goes back on.
type Outgoing = (Vec<u8>, oneshot::Sender<Result<(), String>>);

/// The mailbox refused data: its queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("mailbox full")]
pub struct MailboxFull;

/// A session driver's inbox: commands from the rest of the gateway. It
/// allocates nothing while empty (an idle session costs no queue), and a close
/// is never refused, however full the queue.
#[derive(Debug, Default)]
pub struct Mailbox {
    queue: Mutex<VecDeque<Outgoing>>,
    /// 0: open; 1 + reason: close requested.
    close: AtomicU16,
    notify: Notify,
    /// Last traffic, in ms on the gateway clock (for the idle sweep).
    last_activity_ms: AtomicU64,
}

impl Mailbox {
    /// An empty mailbox.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Outgoing>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues data to send; fails when the queue is full.
    pub fn send(
        &self,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), String>>,
    ) -> Result<(), MailboxFull> {
        let mut q = self.queue();
        if q.len() >= MAILBOX_CAPACITY {
            return Err(MailboxFull);
        }
        q.push_back((data, reply));
        drop(q);
        self.notify.notify_one();
        Ok(())
    }

    /// Records traffic now (the idle timeout restarts).
    pub fn touch(&self, now: Timestamp) {
        self.last_activity_ms
            .store(now.as_millis(), Ordering::Relaxed);
    }

    /// Asks the driver to close the session (the first reason wins).
    pub fn close(&self, reason: CloseReason) {
        let _ = self.close.compare_exchange(
            0,
            1 + u16::from(reason.0),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.notify.notify_one();
    }

    /// The next command: a requested close first, then queued data. Cancel-safe.
    pub async fn recv(&self) -> Command {
        loop {
            let c = self.close.load(Ordering::Acquire);
            if c != 0 {
                return Command::Close(CloseReason((c - 1) as u8));
            }
            if let Some((data, reply)) = self.queue().pop_front() {
                return Command::Send(data, reply);
            }
            self.notify.notified().await;
        }
    }
}

/// What the table knows of a live session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The authenticated peripheral.
    pub peripheral: PeripheralId,
    /// Non-secret session id (hex in logs).
    pub session_id: [u8; 8],
    /// The granted scope.
    pub scope: Scope,
    /// The link's peer description (untrusted, for operators).
    pub link: String,
    /// When the session was established (gateway monotonic clock).
    pub since: Timestamp,
    /// When its lifetime ends (gateway monotonic clock).
    pub expires_at: Timestamp,
    /// Whether it was a resumption.
    pub resumed: bool,
    /// The peripheral's group, as the backend described it.
    pub group: Option<String>,
}

/// An authenticated application message from a peripheral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// Who sent it.
    pub peripheral: PeripheralId,
    /// When it arrived (gateway clock).
    pub at: Timestamp,
    /// The payload.
    pub data: Vec<u8>,
}

struct Entry {
    info: SessionInfo,
    mailbox: Arc<Mailbox>,
    token: u64,
}

/// Errors of [`SessionTable::send`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No live session for that peripheral.
    #[error("no session with peripheral {0}")]
    NoSession(PeripheralId),
    /// The granted scope does not allow the gateway to send.
    #[error("the scope granted for {0} does not allow commands")]
    OutOfScope(PeripheralId),
    /// The session's queue is full: it is not keeping up.
    #[error("session with {0} is busy")]
    Busy(PeripheralId),
    /// Sealing or sending failed.
    #[error("send failed: {0}")]
    Failed(String),
}

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

/// A ticket a resumption attempt verified, to be used by
/// [`SessionTable::complete_resumption`] (see [`SessionTable::claim_ticket`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketClaim {
    id: ResumptionId,
    claim: u64,
}

/// The default of `limits.feed_silence_s` (SPEC.md §11.5): four hours
/// without an answer from the revocation feed, after which the gateway
/// stops resuming.
pub const DEFAULT_FEED_SILENCE: std::time::Duration = std::time::Duration::from_secs(4 * 3600);

/// Whether the revocation feed answers often enough for resumption to go on
/// (SPEC.md §11.5): a gateway that has heard nothing from the feed for the
/// limit cannot know of revocations made since, and stops resuming until
/// it hears again. Times are on tokio's clock: the monotonic clock
/// (`CLOCK_MONOTONIC`) in production, the paused clock in tests, as for
/// [`crate::clock::TokioClock`] and every timer of the gateway.
struct FeedSilence {
    /// The limit in ms; 0: never stop resuming.
    limit_ms: AtomicU64,
    /// When the feed last answered up to its end; `None` until the feed is
    /// followed ([`SessionTable::feed_followed`]): a table nobody feeds
    /// (tests, tools) never stops resuming.
    last_heard: Mutex<Option<tokio::time::Instant>>,
    /// Whether resumption is refused now (for the log: once each way).
    refusing: std::sync::atomic::AtomicBool,
}

/// An older session of a peripheral that a newer one replaced, kept open
/// until its link ends (see the module docs).
struct Superseded {
    entry: Entry,
    /// The newer session's id (for the log).
    newer: [u8; 8],
    /// Whether it already spoke (reported once).
    spoke: bool,
}

/// The live sessions and the stored tickets.
pub struct SessionTable {
    sessions: Mutex<HashMap<PeripheralId, Entry>>,
    /// Superseded sessions, at most one per peripheral; locked after
    /// `sessions` when both are.
    superseded: Mutex<HashMap<PeripheralId, Superseded>>,
    tickets: Mutex<Tickets>,
    inbound: broadcast::Sender<Inbound>,
    next_token: std::sync::atomic::AtomicU64,
    max_tickets: usize,
    /// Peripherals the feed said are revoked or suspended: a handshake or a
    /// ticket restore that was in flight when the event arrived must not
    /// bring them back.
    revoked: Mutex<HashSet<PeripheralId>>,
    /// How many `PolicyChanged` events the feed delivered: a handshake that
    /// started under another count was judged under a policy that may have
    /// changed, and must not survive the change (see
    /// [`policy_changed`](Self::policy_changed)).
    policy_epoch: AtomicU64,
    /// The feed cursor up to which every event has been applied in this run.
    feed_position: AtomicU64,
    /// Where tickets and the feed cursor are kept, with the clock that
    /// converts their expiry to wall time; `None`: memory only.
    store: Option<(TicketStore, Arc<dyn Clock>)>,
    /// Whether the wall clock agrees with the backend's last authenticated
    /// time (within [`CLOCK_TOLERANCE_MS`]). Tickets are written to disk only
    /// while it does (their wall-clock expiry would be wrong otherwise), and
    /// restored ones are used only once it has.
    wall_confirmed: std::sync::atomic::AtomicBool,
    /// Whether [`check_clock`](Self::check_clock) has compared it once.
    clock_checked: std::sync::atomic::AtomicBool,
    /// Tickets restored from disk that wait for the feed to catch up and the
    /// wall clock to be confirmed; empty once both happened (or when nothing
    /// was restored).
    restored: Mutex<Held>,
    /// `true` once no restored ticket is held.
    feed_ready: watch::Sender<bool>,
    /// The feed cursor the revocation feed starts after.
    feed_start: u64,
    /// What [`open`](Self::open) found.
    restore_report: Option<RestoreReport>,
    /// The trust-anchor updates delivered after every handshake.
    anchor_updates: AnchorUpdates,
    /// How long the revocation feed may stay silent before resumption stops.
    feed_silence: FeedSilence,
}

impl SessionTable {
    /// An empty table kept in memory only (tests, the simulator, a gateway
    /// without a state directory); `max_tickets` bounds stored tickets
    /// (oldest expiring first are dropped).
    pub fn new(max_tickets: usize) -> Arc<Self> {
        Arc::new(Self::build(
            max_tickets,
            None,
            HashMap::new(),
            0,
            None,
            AnchorUpdates::in_memory(),
        ))
    }

    /// A table whose tickets are kept in `state` (SPEC.md §6.1, §10.5): loads
    /// the tickets saved for `binding` and keeps every later change on disk.
    /// `clock` must be the clock the gateway's drivers run on: it converts
    /// ticket expiry between its monotonic and wall times.
    ///
    /// - Tickets are restored only with a feed cursor saved for the same
    ///   gateway identity and backend; without one, every ticket file is
    ///   removed (nothing says which revocations they missed), and a cursor
    ///   from the start of the feed is saved.
    /// - Tickets expired on the wall clock, tickets issued after it (the clock
    ///   went back), and tickets beyond `max_tickets` are removed; unreadable
    ///   files are logged and skipped.
    /// - Restored tickets are not used until the revocation feed reports that
    ///   it caught up from the cursor ([`feed_caught_up`](Self::feed_caught_up))
    ///   and the wall clock is confirmed ([`check_clock`](Self::check_clock));
    ///   [`revocation::follow`](crate::revocation::follow) does both. Their
    ///   expiry is then taken again from the confirmed wall clock.
    /// - The trust-anchor updates saved for `binding`'s backend are loaded
    ///   ([`AnchorUpdates::open`]); [`anchors::follow`](crate::anchors::follow)
    ///   fetches newer ones.
    pub fn open(
        max_tickets: usize,
        state: &StateDir,
        binding: &StateBinding,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, StateError> {
        let Loaded {
            store,
            tickets,
            cursor,
            report,
        } = TicketStore::open(state, binding, max_tickets, clock.now(), clock.wall())?;
        Ok(Arc::new(Self::build(
            max_tickets,
            Some((store, clock)),
            tickets,
            cursor,
            Some(report),
            AnchorUpdates::open(state, &binding.backend_url),
        )))
    }

    fn build(
        max_tickets: usize,
        store: Option<(TicketStore, Arc<dyn Clock>)>,
        tickets: HashMap<ResumptionId, (GatewayTicket, WallTime)>,
        feed_start: u64,
        restore_report: Option<RestoreReport>,
        anchor_updates: AnchorUpdates,
    ) -> Self {
        let (inbound, _) = broadcast::channel(1024);
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
            sessions: Mutex::new(HashMap::new()),
            superseded: Mutex::new(HashMap::new()),
            tickets: Mutex::new(map),
            inbound,
            next_token: std::sync::atomic::AtomicU64::new(1),
            max_tickets,
            revoked: Mutex::new(HashSet::new()),
            policy_epoch: AtomicU64::new(0),
            feed_position: AtomicU64::new(feed_start),
            store,
            wall_confirmed: std::sync::atomic::AtomicBool::new(false),
            clock_checked: std::sync::atomic::AtomicBool::new(false),
            restored: Mutex::new(held),
            feed_ready,
            feed_start,
            restore_report,
            anchor_updates,
            feed_silence: FeedSilence {
                limit_ms: AtomicU64::new(DEFAULT_FEED_SILENCE.as_millis() as u64),
                last_heard: Mutex::new(None),
                refusing: std::sync::atomic::AtomicBool::new(false),
            },
        }
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<PeripheralId, Entry>> {
        // A poisoned lock means a panic elsewhere; the map itself is still
        // consistent (every update is a single insert or remove).
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_tickets(&self) -> std::sync::MutexGuard<'_, Tickets> {
        self.tickets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_superseded(&self) -> std::sync::MutexGuard<'_, HashMap<PeripheralId, Superseded>> {
        self.superseded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a session; returns a token for [`remove`](Self::remove). A
    /// previous session of the same peripheral is superseded: it stays open
    /// until its link ends, and [`spoke`](Self::spoke) tells whether it
    /// speaks meanwhile. A session superseded before is closed (reason 0).
    pub fn insert(&self, info: SessionInfo, mailbox: Arc<Mailbox>) -> u64 {
        let token = self
            .next_token
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (peripheral, newer) = (info.peripheral, info.session_id);
        let mut map = self.lock_sessions();
        let old = map.insert(
            peripheral,
            Entry {
                info,
                mailbox,
                token,
            },
        );
        if let Some(old) = old {
            debug!(peripheral = %peripheral, "a newer session of this peripheral: the older one is kept open until its link ends");
            let replaced = self.lock_superseded().insert(
                peripheral,
                Superseded {
                    entry: old,
                    newer,
                    spoke: false,
                },
            );
            if let Some(s) = replaced {
                s.entry.mailbox.close(CloseReason::NORMAL);
            }
        }
        token
    }

    /// Unregisters a session, if it is still the one with `token` (live or
    /// superseded). When the live one ends, a superseded one still open is
    /// the peripheral's session again.
    pub fn remove(&self, peripheral: &PeripheralId, token: u64) {
        let mut map = self.lock_sessions();
        let mut sup = self.lock_superseded();
        if map.get(peripheral).is_some_and(|e| e.token == token) {
            map.remove(peripheral);
            if let Some(s) = sup.remove(peripheral) {
                map.insert(*peripheral, s.entry);
            }
        } else if sup.get(peripheral).is_some_and(|s| s.entry.token == token) {
            sup.remove(peripheral);
        }
    }

    /// The session with `token` delivered an authenticated record. If it is
    /// superseded and had not spoken before, returns the newer session's id:
    /// two sessions of one identity are live at once (SPEC.md §11.6).
    pub fn spoke(&self, peripheral: &PeripheralId, token: u64) -> Option<[u8; 8]> {
        let mut sup = self.lock_superseded();
        let s = sup.get_mut(peripheral)?;
        if s.entry.token != token || s.spoke {
            return None;
        }
        s.spoke = true;
        Some(s.newer)
    }

    /// Closes the session `session_id` of `peripheral`, live or superseded,
    /// and drops the peripheral's tickets; returns whether it was open.
    pub fn close_session(
        &self,
        peripheral: &PeripheralId,
        session_id: &[u8; 8],
        reason: CloseReason,
    ) -> bool {
        self.forget_tickets_of(peripheral);
        let map = self.lock_sessions();
        let sup = self.lock_superseded();
        let entry = map
            .get(peripheral)
            .filter(|e| &e.info.session_id == session_id)
            .or_else(|| {
                sup.get(peripheral)
                    .map(|s| &s.entry)
                    .filter(|e| &e.info.session_id == session_id)
            });
        match entry {
            Some(e) => {
                e.mailbox.close(reason);
                true
            }
            None => false,
        }
    }

    /// Closes the live session of `peripheral` if it is not `session_id`
    /// (the newer of two live at once), and drops the peripheral's
    /// tickets; returns whether one was closed.
    pub fn close_newer_than(
        &self,
        peripheral: &PeripheralId,
        session_id: &[u8; 8],
        reason: CloseReason,
    ) -> bool {
        self.forget_tickets_of(peripheral);
        match self.lock_sessions().get(peripheral) {
            Some(e) if &e.info.session_id != session_id => {
                e.mailbox.close(reason);
                true
            }
            _ => false,
        }
    }

    /// How many superseded sessions are still open.
    pub fn superseded_count(&self) -> usize {
        self.lock_superseded().len()
    }

    /// The live sessions.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut v: Vec<_> = self
            .lock_sessions()
            .values()
            .map(|e| e.info.clone())
            .collect();
        v.sort_by_key(|i| i.peripheral);
        v
    }

    /// The live session of one peripheral, if any (a lookup, where
    /// [`list`](Self::list) copies the whole table).
    pub fn get(&self, peripheral: &PeripheralId) -> Option<SessionInfo> {
        self.lock_sessions().get(peripheral).map(|e| e.info.clone())
    }

    /// How many sessions are live.
    pub fn len(&self) -> usize {
        self.lock_sessions().len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends application data to a peripheral, within its scope.
    pub async fn send(&self, peripheral: PeripheralId, data: Vec<u8>) -> Result<(), SendError> {
        let mailbox = {
            let map = self.lock_sessions();
            let entry = map
                .get(&peripheral)
                .ok_or(SendError::NoSession(peripheral))?;
            if !entry.info.scope.contains(Scope::COMMAND) {
                return Err(SendError::OutOfScope(peripheral));
            }
            entry.mailbox.clone()
        };
        let (tx, rx) = oneshot::channel();
        mailbox
            .send(data, tx)
            .map_err(|MailboxFull| SendError::Busy(peripheral))?;
        rx.await
            .map_err(|_| SendError::NoSession(peripheral))?
            .map_err(SendError::Failed)
    }

    /// Closes a peripheral's session (revocation); returns whether one was live.
    pub fn close(&self, peripheral: &PeripheralId, reason: CloseReason) -> bool {
        self.forget_tickets_of(peripheral);
        let map = self.lock_sessions();
        if let Some(s) = self.lock_superseded().get(peripheral) {
            s.entry.mailbox.close(reason);
        }
        match map.get(peripheral) {
            Some(e) => {
                e.mailbox.close(reason);
                true
            }
            None => false,
        }
    }

    /// Closes every session, superseded ones too (gateway revoked, or
    /// shutdown); returns how many live ones.
    pub fn close_all(&self, reason: CloseReason) -> usize {
        let map = self.lock_sessions();
        for e in map.values() {
            e.mailbox.close(reason);
        }
        for s in self.lock_superseded().values() {
            s.entry.mailbox.close(reason);
        }
        map.len()
    }

    /// Publishes an inbound message to the local API's subscribers.
    pub fn publish(&self, msg: Inbound) {
        let _ = self.inbound.send(msg);
    }

    /// Subscribes to inbound messages.
    pub fn subscribe(&self) -> broadcast::Receiver<Inbound> {
        self.inbound.subscribe()
    }

    /// Records that a peripheral was revoked or suspended (`true`) or
    /// reinstated (`false`).
    pub fn set_revoked(&self, peripheral: PeripheralId, revoked: bool) {
        let mut set = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        if revoked {
            set.insert(peripheral);
        } else {
            set.remove(&peripheral);
        }
    }

    /// The feed said a policy rule was added or removed (SPEC.md §10.5):
    /// the event does not say which peripherals or gateways it touches, so
    /// every grant this gateway holds may have narrowed or been withdrawn.
    /// Closes every session (reason 1, revoked: the peripheral runs a full
    /// handshake, which the backend judges under the new policy) and drops
    /// every ticket (a resumption would keep the old grant). A handshake in
    /// flight, started before the change, is closed when it registers
    /// ([`policy_epoch`](Self::policy_epoch)). Returns how many sessions
    /// were told to close.
    pub fn policy_changed(&self) -> usize {
        // First the count, then the drops: a handshake that registers after
        // this line sees the new count and closes itself; one that
        // registered before has its session and ticket dropped below.
        self.policy_epoch.fetch_add(1, Ordering::SeqCst);
        self.forget_all_tickets();
        self.close_all(CloseReason::REVOKED)
    }

    /// How many policy changes the feed delivered so far: a handshake takes
    /// it when it starts, and its session must not survive if it changed
    /// by the time the session is registered.
    pub fn policy_epoch(&self) -> u64 {
        self.policy_epoch.load(Ordering::SeqCst)
    }

    /// Whether the feed said this peripheral is revoked or suspended.
    pub fn is_revoked(&self, peripheral: &PeripheralId) -> bool {
        self.revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(peripheral)
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
        let map = self.lock_tickets();
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
            let mut map = self.lock_tickets();
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
    /// expiring first is evicted. A revoked peripheral's ticket is dropped
    /// instead. With a state directory, the ticket's file is written (in
    /// order, durably) in the background.
    pub fn store_ticket(&self, ticket: GatewayTicket) {
        let mut map = self.lock_tickets();
        // Checked under the tickets lock: the feed marks a peripheral revoked
        // before it takes the lock to drop its tickets, so a ticket is either
        // refused here or dropped there, never kept.
        if self.is_revoked(&ticket.peripheral.id) {
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
    /// revoked, `e_p` was already presented with a valid binder (the
    /// message is a replay), or the revocation feed has been silent for
    /// longer than its limit ([`resumption_suspended`](Self::resumption_suspended)).
    pub fn ticket_for_attempt(&self, id: &ResumptionId, e_p: &[u8; 32]) -> Option<GatewayTicket> {
        if self.resumption_suspended() {
            return None;
        }
        let map = self.lock_tickets();
        if self.lock_restored().tickets.contains_key(id) {
            return None;
        }
        let stored = map.by_id.get(id)?;
        if stored.was_seen(e_p) || self.is_revoked(&stored.ticket.peripheral.id) {
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
    pub fn claim_ticket(&self, id: &ResumptionId, e_p: &[u8; 32]) -> Option<TicketClaim> {
        let mut map = self.lock_tickets();
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
    pub fn complete_resumption(&self, claim: TicketClaim, next: GatewayTicket) -> bool {
        {
            let mut map = self.lock_tickets();
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
        self.store_ticket(next);
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
    pub fn discard_restored_tickets(&self) -> usize {
        let n = {
            let mut map = self.lock_tickets();
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

    /// Every feed event up to `next` has been applied
    /// ([`revocation::follow`](crate::revocation::follow) calls this after
    /// each batch).
    pub fn set_feed_position(&self, next: u64) {
        self.feed_position.store(next, Ordering::SeqCst);
    }

    /// The feed cursor up to which every event has been applied: a test, or
    /// an operator, can tell from it that a change made in the backend has
    /// reached this gateway.
    pub fn feed_position(&self) -> u64 {
        self.feed_position.load(Ordering::SeqCst)
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

    /// What [`open`](Self::open) found in the state directory (`None` for a
    /// table in memory only).
    pub fn restore_report(&self) -> Option<&RestoreReport> {
        self.restore_report.as_ref()
    }

    /// The trust-anchor updates this gateway holds: every session is sent
    /// all of them, in serial order, once established (SPEC.md §7.7).
    pub fn anchor_updates(&self) -> &AnchorUpdates {
        &self.anchor_updates
    }

    /// Whether tickets are kept in a state directory.
    pub fn is_persistent(&self) -> bool {
        self.store.is_some()
    }

    /// Drops every ticket of a peripheral (revocation).
    pub fn forget_tickets_of(&self, peripheral: &PeripheralId) -> usize {
        let mut map = self.lock_tickets();
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
    pub fn forget_all_tickets(&self) {
        let mut map = self.lock_tickets();
        let ids: Vec<ResumptionId> = map.by_id.keys().copied().collect();
        for id in &ids {
            self.drop_ticket(&mut map, id);
        }
        self.lock_restored().tickets.clear();
    }

    /// Closes sessions past their lifetime or idle for `idle_ms`, one timer
    /// for all sessions instead of one per task; returns how many it closed.
    pub fn sweep(&self, now: Timestamp, idle_ms: u64) -> usize {
        let map = self.lock_sessions();
        let sup = self.lock_superseded();
        let mut n = 0;
        for e in map.values().chain(sup.values().map(|s| &s.entry)) {
            if now >= e.info.expires_at {
                e.mailbox.close(CloseReason::EXPIRED);
                n += 1;
            } else if now
                .as_millis()
                .saturating_sub(e.mailbox.last_activity_ms.load(Ordering::Relaxed))
                >= idle_ms
            {
                e.mailbox.close(CloseReason::NORMAL);
                n += 1;
            }
        }
        n
    }

    /// Drops expired tickets; returns how many.
    pub fn expire_tickets(&self, now: Timestamp) -> usize {
        let mut map = self.lock_tickets();
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
    pub fn ticket_count(&self) -> usize {
        self.lock_tickets().len()
    }

    /// Sets how long the revocation feed may go without an answer before
    /// resumption stops (`limits.feed_silence_s`, SPEC.md §11.5); `None`:
    /// never (the tickets' `resumption_s` alone bounds resumption).
    pub fn set_feed_silence_limit(&self, limit: Option<std::time::Duration>) {
        let ms = limit.map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        self.feed_silence.limit_ms.store(ms, Ordering::SeqCst);
    }

    /// The revocation feed is followed from now on
    /// ([`revocation::follow`](crate::revocation::follow) calls this when it
    /// starts): its silence counts from here until its first answer.
    pub fn feed_followed(&self) {
        let mut last = self.lock_heard();
        if last.is_none() {
            *last = Some(tokio::time::Instant::now());
        }
    }

    /// The revocation feed answered and every event it had up to the
    /// answer is applied: the gateway knows of every revocation made until
    /// then, and resumes again if it had stopped.
    pub fn feed_heard(&self) {
        *self.lock_heard() = Some(tokio::time::Instant::now());
        if self.feed_silence.refusing.swap(false, Ordering::SeqCst) {
            info!("revocation feed answered again: resumption resumes");
        }
    }

    /// Whether resumption is refused because the revocation feed has not
    /// answered for `limits.feed_silence_s` (SPEC.md §11.5): a revocation
    /// made meanwhile cannot reach this gateway, and a ticket of the revoked
    /// peripheral would otherwise go on resuming until its `resumption_s`
    /// ran out. Logs once when it starts refusing (and
    /// [`feed_heard`](Self::feed_heard) once when it stops).
    pub fn resumption_suspended(&self) -> bool {
        let limit = self.feed_silence.limit_ms.load(Ordering::SeqCst);
        let Some(last) = *self.lock_heard() else {
            return false;
        };
        let silent_ms = u64::try_from(last.elapsed().as_millis()).unwrap_or(u64::MAX);
        let suspended = limit != 0 && silent_ms >= limit;
        if suspended && !self.feed_silence.refusing.swap(true, Ordering::SeqCst) {
            warn!(
                silent_s = silent_ms / 1000,
                limit_s = limit / 1000,
                "the revocation feed has not answered for longer than limits.feed_silence_s: resumption refused until it answers (peripherals run full handshakes, which need the backend)"
            );
        }
        suspended
    }

    /// The limit set by [`set_feed_silence_limit`](Self::set_feed_silence_limit).
    pub fn feed_silence_limit(&self) -> Option<std::time::Duration> {
        match self.feed_silence.limit_ms.load(Ordering::SeqCst) {
            0 => None,
            ms => Some(std::time::Duration::from_millis(ms)),
        }
    }

    /// How long since the revocation feed last answered, if it is followed.
    pub fn feed_silent_for(&self) -> Option<std::time::Duration> {
        self.lock_heard().map(|t| t.elapsed())
    }

    fn lock_heard(&self) -> std::sync::MutexGuard<'_, Option<tokio::time::Instant>> {
        self.feed_silence
            .last_heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}
