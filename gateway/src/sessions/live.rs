//! The live sessions: who is connected, how to reach their driver, and the
//! older session a newer one of the same peripheral superseded (see the
//! [module docs](super)).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{broadcast, oneshot, Notify};
use tracing::debug;
use vouch_proto::keys::PeripheralId;
use vouch_proto::session::CloseReason;
use vouch_proto::wire::Scope;
use vouch_proto::Timestamp;

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

/// Errors of [`LiveSessions::send`].
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

/// An older session of a peripheral that a newer one replaced, kept open
/// until its link ends (see the module docs).
struct Superseded {
    entry: Entry,
    /// The newer session's id (for the log).
    newer: [u8; 8],
    /// Whether it already spoke (reported once).
    spoke: bool,
}

/// The live sessions, and the superseded ones still open.
pub struct LiveSessions {
    sessions: Mutex<HashMap<PeripheralId, Entry>>,
    /// Superseded sessions, at most one per peripheral; locked after
    /// `sessions` when both are.
    superseded: Mutex<HashMap<PeripheralId, Superseded>>,
    /// The local API's subscribers to inbound messages; made at the first
    /// [`subscribe`](Self::subscribe): its 1,024 slots (about 64 KiB) are
    /// not paid by a gateway nobody listens to (the simulator runs 10,000).
    inbound: OnceLock<broadcast::Sender<Inbound>>,
    next_token: AtomicU64,
}

/// Inbound messages buffered for a slow local subscriber.
const INBOUND_CAPACITY: usize = 1024;

impl Default for LiveSessions {
    fn default() -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            superseded: Mutex::new(HashMap::new()),
            inbound: OnceLock::new(),
            next_token: AtomicU64::new(1),
        }
    }
}

impl LiveSessions {
    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<PeripheralId, Entry>> {
        // A poisoned lock means a panic elsewhere; the map itself is still
        // consistent (every update is a single insert or remove).
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_superseded(&self) -> std::sync::MutexGuard<'_, HashMap<PeripheralId, Superseded>> {
        self.superseded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a session; returns a token for [`remove`](Self::remove). A
    /// previous session of the same peripheral is superseded: it stays open
    /// until its link ends, and [`spoke`](Self::spoke) tells whether it
    /// speaks meanwhile. A session superseded before is closed (reason 0).
    pub fn insert(&self, info: SessionInfo, mailbox: Arc<Mailbox>) -> u64 {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
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

    /// Closes a peripheral's sessions, live and superseded; returns whether
    /// one was live.
    pub(super) fn close(&self, peripheral: &PeripheralId, reason: CloseReason) -> bool {
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

    /// Closes the session `session_id` of `peripheral`, live or superseded;
    /// returns whether it was open.
    pub(super) fn close_session(
        &self,
        peripheral: &PeripheralId,
        session_id: &[u8; 8],
        reason: CloseReason,
    ) -> bool {
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
    /// (the newer of two live at once); returns whether one was closed.
    pub(super) fn close_newer_than(
        &self,
        peripheral: &PeripheralId,
        session_id: &[u8; 8],
        reason: CloseReason,
    ) -> bool {
        match self.lock_sessions().get(peripheral) {
            Some(e) if &e.info.session_id != session_id => {
                e.mailbox.close(reason);
                true
            }
            _ => false,
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
        // Nobody subscribed yet: dropped, as a channel without receivers does.
        if let Some(tx) = self.inbound.get() {
            let _ = tx.send(msg);
        }
    }

    /// Subscribes to inbound messages.
    pub fn subscribe(&self) -> broadcast::Receiver<Inbound> {
        self.inbound
            .get_or_init(|| broadcast::channel(INBOUND_CAPACITY).0)
            .subscribe()
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
}
