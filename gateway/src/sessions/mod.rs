//! The session table: who is connected and how to reach their driver
//! ([`live`]), the resumption tickets (SPEC.md §6.1, [`tickets`]), what the
//! revocation feed said ([`feed`]), and the trust-anchor updates every
//! session delivers (SPEC.md §7.7, [`crate::anchors`]). [`SessionTable`]
//! holds one of each and does what needs more than one: a revocation closes
//! sessions and drops tickets, a ticket is stored only for a peripheral the
//! feed has not revoked, a policy change ends every grant.
//!
//! Tickets live in memory ([`SessionTable::new`]) or are also kept in the
//! state directory ([`SessionTable::open`]), so that devices resume after a
//! gateway restart. Tickets restored from disk are held back until the
//! revocation feed has caught up from the cursor saved with them (a
//! peripheral revoked while the gateway was down must not resume) and the
//! wall clock has been confirmed against the backend's authenticated time
//! ([`TicketBook::check_clock`]): their expiry was saved on the wall clock,
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

use std::sync::Arc;

use vouch_proto::handshake::gateway::GatewayTicket;
use vouch_proto::keys::PeripheralId;
use vouch_proto::session::CloseReason;
use vouch_proto::wire::ResumptionId;

use crate::anchors::AnchorUpdates;
use crate::clock::Clock;
use crate::state::tickets::{Loaded, TicketStore};
use crate::state::{StateBinding, StateDir, StateError};

pub mod feed;
pub mod live;
pub mod tickets;

pub use feed::{FeedState, DEFAULT_FEED_SILENCE};
pub use live::{
    Command, Inbound, LiveSessions, Mailbox, MailboxFull, SendError, SessionInfo, MAILBOX_CAPACITY,
};
pub use tickets::{TicketBook, TicketClaim, CLOCK_TOLERANCE_MS};

/// The live sessions, the tickets, the feed's state and the trust-anchor
/// updates of one gateway.
pub struct SessionTable {
    sessions: LiveSessions,
    tickets: TicketBook,
    feed: FeedState,
    anchor_updates: AnchorUpdates,
}

impl SessionTable {
    /// An empty table kept in memory only (tests, the simulator, a gateway
    /// without a state directory); `max_tickets` bounds stored tickets
    /// (oldest expiring first are dropped).
    pub fn new(max_tickets: usize) -> Arc<Self> {
        Arc::new(Self {
            sessions: LiveSessions::default(),
            tickets: TicketBook::new(max_tickets, None, Default::default(), 0, None),
            feed: FeedState::new(0),
            anchor_updates: AnchorUpdates::in_memory(),
        })
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
    ///   it caught up from the cursor ([`TicketBook::feed_caught_up`]) and the
    ///   wall clock is confirmed ([`TicketBook::check_clock`]);
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
        Ok(Arc::new(Self {
            sessions: LiveSessions::default(),
            tickets: TicketBook::new(
                max_tickets,
                Some((store, clock)),
                tickets,
                cursor,
                Some(report),
            ),
            feed: FeedState::new(cursor),
            anchor_updates: AnchorUpdates::open(state, &binding.backend_url),
        }))
    }

    /// The live sessions.
    pub fn sessions(&self) -> &LiveSessions {
        &self.sessions
    }

    /// The resumption tickets.
    pub fn tickets(&self) -> &TicketBook {
        &self.tickets
    }

    /// What the revocation feed said.
    pub fn feed(&self) -> &FeedState {
        &self.feed
    }

    /// The trust-anchor updates this gateway holds: every session is sent
    /// all of them, in serial order, once established (SPEC.md §7.7).
    pub fn anchor_updates(&self) -> &AnchorUpdates {
        &self.anchor_updates
    }

    /// Stores a ticket unless the feed said its peripheral is revoked
    /// (checked under the tickets' lock): it replaces the peripheral's
    /// previous ticket, and when the store is full the ticket expiring first
    /// is evicted; with a state directory its file is written in the
    /// background.
    pub fn store_ticket(&self, ticket: GatewayTicket) {
        self.tickets.store(ticket, |p| self.feed.is_revoked(p));
    }

    /// A copy of the ticket a ResumeHello with ephemeral `e_p` names, for the
    /// handshake to check its binder (SPEC.md §6.1, §6.2); the ticket stays
    /// in the store. `None` (answered `ResumptionRejected`) when it is
    /// unknown, restored and waiting for the feed, `e_p` was already
    /// presented with a valid binder (a replay), the feed said its
    /// peripheral is revoked, or the feed has been silent for longer than
    /// its limit ([`FeedState::resumption_suspended`]).
    pub fn ticket_for_attempt(&self, id: &ResumptionId, e_p: &[u8; 32]) -> Option<GatewayTicket> {
        if self.feed.resumption_suspended() {
            return None;
        }
        self.tickets
            .for_attempt(id, e_p, |p| self.feed.is_revoked(p))
    }

    /// A resumption under `claim` ([`TicketBook::claim`]) completed: its
    /// ticket is used up and `next` replaces it (unless the feed revoked the
    /// peripheral meanwhile). Returns `false`, storing nothing, if the claim
    /// is no longer the ticket's (a later attempt claimed it, or the ticket
    /// was revoked, expired or replaced): the session must not start.
    pub fn complete_resumption(&self, claim: TicketClaim, next: GatewayTicket) -> bool {
        self.tickets
            .complete(claim, next, |p| self.feed.is_revoked(p))
    }

    /// Closes a peripheral's sessions and drops its tickets (revocation);
    /// returns whether a session was live.
    pub fn close(&self, peripheral: &PeripheralId, reason: CloseReason) -> bool {
        self.tickets.forget_peripheral(peripheral);
        self.sessions.close(peripheral, reason)
    }

    /// Closes the session `session_id` of `peripheral`, live or superseded,
    /// and drops the peripheral's tickets; returns whether it was open.
    pub fn close_session(
        &self,
        peripheral: &PeripheralId,
        session_id: &[u8; 8],
        reason: CloseReason,
    ) -> bool {
        self.tickets.forget_peripheral(peripheral);
        self.sessions.close_session(peripheral, session_id, reason)
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
        self.tickets.forget_peripheral(peripheral);
        self.sessions
            .close_newer_than(peripheral, session_id, reason)
    }

    /// The feed said a policy rule was added or removed (SPEC.md §10.5):
    /// the event does not say which peripherals or gateways it touches, so
    /// every grant this gateway holds may have narrowed or been withdrawn.
    /// Closes every session (reason 1, revoked: the peripheral runs a full
    /// handshake, which the backend judges under the new policy) and drops
    /// every ticket (a resumption would keep the old grant). A handshake in
    /// flight, started before the change, is closed when it registers
    /// ([`FeedState::policy_epoch`]). Returns how many sessions were told to
    /// close.
    pub fn policy_changed(&self) -> usize {
        // First the count, then the drops: a handshake that registers after
        // this line sees the new count and closes itself; one that
        // registered before has its session and ticket dropped below.
        self.feed.next_policy_epoch();
        self.tickets.forget_all();
        self.sessions.close_all(CloseReason::REVOKED)
    }
}
