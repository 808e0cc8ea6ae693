//! The session table: who is connected, how to reach their driver, and the
//! resumption tickets (SPEC.md §6.1).
//!
//! A session is keyed by the authenticated peripheral id, never by a link
//! address. A second session for a peripheral that already has one replaces
//! it (the old link is closed): a device that reconnects must not be locked
//! out by its own stale link, and a clone is the backend's to detect (it sees
//! both attaches).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc, oneshot};
use vouch_proto::handshake::gateway::GatewayTicket;
use vouch_proto::keys::PeripheralId;
use vouch_proto::session::CloseReason;
use vouch_proto::wire::{ResumptionId, Scope};
use vouch_proto::Timestamp;

/// A request from the rest of the gateway to one session's driver.
#[derive(Debug)]
pub enum Command {
    /// Seal and send application data; the reply says whether it went out.
    Send(Vec<u8>, oneshot::Sender<Result<(), String>>),
    /// Close the session with this reason.
    Close(CloseReason),
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
    /// When the session was established (gateway clock).
    pub since: Timestamp,
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
    commands: mpsc::Sender<Command>,
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

/// The live sessions and the stored tickets.
pub struct SessionTable {
    sessions: Mutex<HashMap<PeripheralId, Entry>>,
    tickets: Mutex<HashMap<ResumptionId, GatewayTicket>>,
    inbound: broadcast::Sender<Inbound>,
    next_token: std::sync::atomic::AtomicU64,
    max_tickets: usize,
}

impl SessionTable {
    /// An empty table; `max_tickets` bounds stored tickets (oldest expiring
    /// first are dropped).
    pub fn new(max_tickets: usize) -> Arc<Self> {
        let (inbound, _) = broadcast::channel(1024);
        Arc::new(Self {
            sessions: Mutex::new(HashMap::new()),
            tickets: Mutex::new(HashMap::new()),
            inbound,
            next_token: std::sync::atomic::AtomicU64::new(1),
            max_tickets,
        })
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<PeripheralId, Entry>> {
        // A poisoned lock means a panic elsewhere; the map itself is still
        // consistent (every update is a single insert or remove).
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_tickets(&self) -> std::sync::MutexGuard<'_, HashMap<ResumptionId, GatewayTicket>> {
        self.tickets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a session; returns a token for [`remove`](Self::remove). A
    /// previous session of the same peripheral is told to close.
    pub fn insert(&self, info: SessionInfo, commands: mpsc::Sender<Command>) -> u64 {
        let token = self
            .next_token
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let old = self.lock_sessions().insert(
            info.peripheral,
            Entry {
                info,
                commands,
                token,
            },
        );
        if let Some(old) = old {
            let _ = old.commands.try_send(Command::Close(CloseReason::NORMAL));
        }
        token
    }

    /// Unregisters a session, if it is still the one with `token`.
    pub fn remove(&self, peripheral: &PeripheralId, token: u64) {
        let mut map = self.lock_sessions();
        if map.get(peripheral).is_some_and(|e| e.token == token) {
            map.remove(peripheral);
        }
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
        let commands = {
            let map = self.lock_sessions();
            let entry = map
                .get(&peripheral)
                .ok_or(SendError::NoSession(peripheral))?;
            if !entry.info.scope.contains(Scope::COMMAND) {
                return Err(SendError::OutOfScope(peripheral));
            }
            entry.commands.clone()
        };
        let (tx, rx) = oneshot::channel();
        commands
            .try_send(Command::Send(data, tx))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SendError::Busy(peripheral),
                mpsc::error::TrySendError::Closed(_) => SendError::NoSession(peripheral),
            })?;
        rx.await
            .map_err(|_| SendError::NoSession(peripheral))?
            .map_err(SendError::Failed)
    }

    /// Closes a peripheral's session (revocation); returns whether one was live.
    pub fn close(&self, peripheral: &PeripheralId, reason: CloseReason) -> bool {
        self.forget_tickets_of(peripheral);
        match self.lock_sessions().get(peripheral) {
            Some(e) => {
                let _ = e.commands.try_send(Command::Close(reason));
                true
            }
            None => false,
        }
    }

    /// Closes every session (gateway revoked, or shutdown).
    pub fn close_all(&self, reason: CloseReason) -> usize {
        let map = self.lock_sessions();
        for e in map.values() {
            let _ = e.commands.try_send(Command::Close(reason));
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

    /// Stores a ticket, evicting the one expiring first when full.
    pub fn store_ticket(&self, ticket: GatewayTicket) {
        let mut map = self.lock_tickets();
        if map.len() >= self.max_tickets && !map.contains_key(&ticket.id) {
            if let Some(oldest) = map.values().min_by_key(|t| t.expires_at).map(|t| t.id) {
                map.remove(&oldest);
            }
        }
        map.insert(ticket.id, ticket);
    }

    /// Takes a ticket out for a resumption attempt. It is gone from the store:
    /// a ticket is used once (SPEC.md §6.1); on failure it is not restored.
    pub fn take_ticket(&self, id: &ResumptionId) -> Option<GatewayTicket> {
        self.lock_tickets().remove(id)
    }

    /// Drops every ticket of a peripheral (revocation).
    pub fn forget_tickets_of(&self, peripheral: &PeripheralId) -> usize {
        let mut map = self.lock_tickets();
        let before = map.len();
        map.retain(|_, t| &t.peripheral.id != peripheral);
        before - map.len()
    }

    /// Drops every ticket.
    pub fn forget_all_tickets(&self) {
        self.lock_tickets().clear();
    }

    /// Drops expired tickets; returns how many.
    pub fn expire_tickets(&self, now: Timestamp) -> usize {
        let mut map = self.lock_tickets();
        let before = map.len();
        map.retain(|_, t| t.expires_at > now);
        before - map.len()
    }

    /// How many tickets are stored.
    pub fn ticket_count(&self) -> usize {
        self.lock_tickets().len()
    }
}
