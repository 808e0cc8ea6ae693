//! The device driver: the proto peripheral machine on a tokio task.
//!
//! One [`Device`] owns the [`KeyStore`], a [`Connector`] and the protocol
//! state. [`Device::run`] loops until shutdown:
//!
//! ```text
//!  ┌─▶ wait (backoff) ─▶ connect ─▶ handshake ──ok──▶ session ──ends──┐
//!  │                        │        (resume if a ticket                │
//!  │                        │         is stored, else full)             │
//!  └────── failure ◀────────┴────────────┘                              │
//!  └──────────────────────────────────────────────────────────────────┘
//! ```
//!
//! - **Resumption** (SPEC.md §6): every decision about tickets is
//!   `vouch_proto`'s [`TicketWallet`], the same the firmware makes. With a
//!   stored ticket the device sends a ResumeHello; a failed attempt
//!   (`ResumptionRejected`, garbage, a confirmation that does not verify, a
//!   timeout: all unauthenticated) costs no ticket, and the next attempt, at
//!   once after `ResumptionRejected`, uses the other ticket, then a full
//!   handshake (§6.4). A completed handshake's ticket is kept unconfirmed,
//!   beside the previous one, until the gateway's first authenticated record
//!   (§6.1), so a lost Finish costs no resumption.
//! - **Backoff** (§6.4): after a failed connection or handshake, or a session
//!   that ended early, the device waits with exponential backoff and jitter
//!   ([`Backoff`]). A session that lasted [`DriverConfig::stable_after`], or
//!   that expired, is followed by an immediate reconnect.
//! - **Session** (§7): application data goes out through a [`DeviceHandle`]
//!   and comes in as [`Event::Data`]; a trust-anchor update (§7.7) is verified
//!   with [`AnchorSet::apply`] and persisted; a close from the gateway ends the
//!   session (reason `revoked` also forgets the tickets); the session's
//!   lifetime ends it with a close `expired`; shutdown sends a close
//!   `shutdown`.
//!
//! Everything the driver sees is reported as an [`Event`] and logged with
//! `tracing` (never a key, a ticket secret or a session key).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use vouch_host::clock::{Clock, TokioClock};
use vouch_proto::anchor::{AnchorSet, AnchorUpdate};
use vouch_proto::handshake::peripheral::{
    NextHandshake, PeripheralConfig, PeripheralEstablished, PeripheralHandshake, TicketSlot,
    TicketWallet,
};
use vouch_proto::keys::{KeyId, PublicKey};
use vouch_proto::session::{CloseReason, Inbound, Session};
use vouch_proto::wire::{Lifetimes, Scope, MAX_HANDSHAKE_MESSAGE, MAX_MESSAGE};
use vouch_proto::{AlertCode, Error as ProtoError, PeerMisbehaved, Timestamp};

use crate::backoff::{Backoff, BackoffConfig};
use crate::keystore::{KeyStore, KeyStoreError};
use crate::transport::{Connector, Link, LinkError};

/// Settings of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverConfig {
    /// How long to wait for the gateway's answer to a Hello or ResumeHello
    /// (SPEC.md §6.4: 30 s, which covers the backend round trip).
    pub handshake_timeout: Duration,
    /// Waits between failed attempts.
    pub backoff: BackoffConfig,
    /// A session that lasted this long resets the backoff and is followed by
    /// an immediate reconnect.
    pub stable_after: Duration,
    /// How long a close record may take to send at shutdown.
    pub close_timeout: Duration,
    /// **Dangerous, for tests only: makes the device an attacker.** After
    /// each connect the device says nothing: no Hello, no ResumeHello. It
    /// holds the link, discarding anything it receives, until the gateway
    /// closes it, then connects again at once (with backoff only when the
    /// link closed within a second). This emulates a rogue device that
    /// occupies a gateway's link slots (SPEC.md §8.4); a real device never
    /// sets it. Default `false`.
    pub danger_silent: bool,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_millis(
                vouch_proto::handshake::DEFAULT_PERIPHERAL_TIMEOUT_MS,
            ),
            backoff: BackoffConfig::default(),
            stable_after: Duration::from_secs(30),
            close_timeout: Duration::from_secs(2),
            danger_silent: false,
        }
    }
}

/// Errors of the driver layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The key store failed. Fatal for [`Device::run`] when it concerns the
    /// identity or the anchors.
    #[error("key store: {0}")]
    KeyStore(#[from] KeyStoreError),
    /// The link failed.
    #[error("link: {0}")]
    Link(#[from] LinkError),
    /// The protocol refused something: a failed handshake (an alert from the
    /// gateway, a vouch that does not verify, a timeout), a rejected record or
    /// anchor update, data outside the granted scope.
    #[error("protocol: {0}")]
    Protocol(#[from] ProtoError),
    /// The gateway closed the connection.
    #[error("the gateway closed the connection")]
    Disconnected,
    /// There is no session with a gateway at the moment.
    #[error("no session with a gateway")]
    NotConnected,
    /// The driver has stopped.
    #[error("the device driver has stopped")]
    Stopped,
    /// The operating system has no randomness for the handshake.
    #[error("no OS randomness: {0}")]
    NoRandomness(String),
}

/// What a completed handshake established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The gateway the backend vouched for.
    pub gateway_key: PublicKey,
    /// What the gateway may do (SPEC.md §5.5): protocol bits and application
    /// bits 8–31.
    pub scope: Scope,
    /// The lifetimes the backend granted.
    pub lifetimes: Lifetimes,
    /// Whether this was a resumption (no backend, no signature).
    pub resumed: bool,
    /// The non-secret session id (equal on both sides; for logs).
    pub session_id: [u8; 8],
    /// From the first handshake message sent to the session.
    pub latency: Duration,
    /// The link's peer (an address: never trusted).
    pub peer: String,
}

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The gateway sent a close record (SPEC.md §7.6; 1 = revoked).
    ClosedByGateway(CloseReason),
    /// This device closed it (2 = expired, 3 = shutdown).
    ClosedByDevice(CloseReason),
    /// The gateway dropped the connection.
    Disconnected,
    /// The link failed.
    Link(LinkError),
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::ClosedByGateway(r) => {
                write!(f, "closed by the gateway ({})", reason_name(*r))
            }
            SessionEnd::ClosedByDevice(r) => {
                write!(f, "closed by this device ({})", reason_name(*r))
            }
            SessionEnd::Disconnected => f.write_str("the gateway disconnected"),
            SessionEnd::Link(e) => write!(f, "link failed: {e}"),
        }
    }
}

/// The name of a close reason (SPEC.md §7.6).
pub fn reason_name(r: CloseReason) -> String {
    match r {
        CloseReason::NORMAL => "normal".into(),
        CloseReason::REVOKED => "revoked".into(),
        CloseReason::EXPIRED => "expired".into(),
        CloseReason::SHUTDOWN => "shutdown".into(),
        CloseReason::PROTOCOL_ERROR => "protocol error".into(),
        CloseReason(n) => format!("reason {n}"),
    }
}

/// What the driver reports to the application.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A connection to a gateway is up; the handshake starts.
    Connected {
        /// The peer (an address: never trusted).
        peer: String,
    },
    /// Connecting failed.
    ConnectFailed(DriverError),
    /// The handshake completed: the session is up.
    Established(SessionInfo),
    /// The handshake failed (no session).
    HandshakeFailed(DriverError),
    /// Application data from the gateway (it held `COMMAND`; the application
    /// checks its own bits, 8–31, see [`SessionInfo::scope`]).
    Data(Vec<u8>),
    /// A trust-anchor update was verified, applied and stored (SPEC.md §7.7).
    AnchorsUpdated {
        /// The update's serial.
        serial: u32,
        /// The anchor new hellos seal to: the only one held.
        primary: KeyId,
    },
    /// A trust-anchor update was refused (stale serial, a key the held
    /// commitment does not name, a bad signature, a reserved action) or could
    /// not be stored; the anchors are
    /// unchanged.
    AnchorUpdateRejected(DriverError),
    /// The session ended.
    SessionEnded(SessionEnd),
    /// The next attempt starts after `delay`.
    Retrying {
        /// The wait.
        delay: Duration,
        /// Consecutive failures so far.
        failures: u32,
    },
}

enum Request {
    Send(Vec<u8>, oneshot::Sender<Result<(), DriverError>>),
}

/// Sends application data over the device's current session. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DeviceHandle {
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Send(d, _) => write!(f, "Send({} bytes)", d.len()),
        }
    }
}

impl DeviceHandle {
    /// Seals `data` as application data (it needs `TELEMETRY` in the granted
    /// scope) and sends it to the gateway. Fails with
    /// [`DriverError::NotConnected`] when there is no session: the
    /// application decides whether to drop or keep the data.
    pub async fn send(&self, data: impl Into<Vec<u8>>) -> Result<(), DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Send(data.into(), tx))
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)?
    }
}

/// The events of one [`Device`]. Unbounded: read them (a device produces
/// them at the pace of its gateway and its own connection attempts).
pub type Events = mpsc::UnboundedReceiver<Event>;

/// A shutdown future that can be waited on repeatedly.
struct Shutdown<'a> {
    fut: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    fired: bool,
}

impl Shutdown<'_> {
    /// Resolves once the shutdown future has; cancel-safe.
    async fn wait(&mut self) {
        if !self.fired {
            (&mut self.fut).await;
            self.fired = true;
        }
    }
}

/// The application's requests, answered "not connected" outside a session.
struct Requests {
    rx: mpsc::Receiver<Request>,
    open: bool,
}

impl Requests {
    /// The next request; never resolves once every handle is gone.
    async fn next(&mut self) -> Request {
        if self.open {
            if let Some(r) = self.rx.recv().await {
                return r;
            }
            self.open = false;
        }
        std::future::pending().await
    }
}

fn reject(req: Request) {
    match req {
        Request::Send(_, reply) => {
            let _ = reply.send(Err(DriverError::NotConnected));
        }
    }
}

/// Runs `fut` while answering requests "not connected"; `None` on shutdown.
async fn outside_session<F: Future>(
    fut: F,
    requests: &mut Requests,
    shutdown: &mut Shutdown<'_>,
) -> Option<F::Output> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return Some(out),
            () = shutdown.wait() => return None,
            req = requests.next() => reject(req),
        }
    }
}

/// What the driver does after a connection.
enum Next {
    /// Connect again after this delay.
    Retry(Duration),
    /// Stop: shutdown (`Ok`), or the device cannot work at all.
    Stop(Result<(), DriverError>),
}

/// How a handshake attempt failed.
enum Failure {
    Shutdown,
    /// The device cannot go on (no identity, no anchors).
    Fatal(DriverError),
    /// This attempt failed; `resuming` names the ticket of a resumption.
    Attempt {
        error: DriverError,
        resuming: Option<TicketSlot>,
    },
}

/// A completed handshake, and the ticket it resumed with.
struct Handshaken {
    established: PeripheralEstablished,
    resumed_with: Option<TicketSlot>,
}

/// The device: a key store, a connector and the protocol state. See the
/// module documentation.
pub struct Device<K, C> {
    store: K,
    connector: C,
    config: DriverConfig,
    rng: ChaCha20Rng,
    /// Milliseconds since the driver started, on tokio's clock (which
    /// tests can pause). The device has no wall clock (SPEC.md §1.3): the
    /// driver never calls `wall`.
    clock: TokioClock,
    requests: Requests,
    events: mpsc::UnboundedSender<Event>,
    backoff: Backoff,
    /// Whether the stored ticket's `issued_at` is on this run's clock (the
    /// full handshake that started its chain happened in this run). A ticket
    /// from before a reboot has an issue time on another clock: only the
    /// gateway can judge its age.
    ticket_on_our_clock: bool,
    /// The resumption tickets and every decision about them (SPEC.md §6.4),
    /// loaded from the store at the first handshake and saved on each change.
    tickets: Option<TicketWallet>,
}

impl<K, C> std::fmt::Debug for Device<K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<K: KeyStore, C: Connector> Device<K, C> {
    /// A device with a CSPRNG seeded from the operating system. Returns the
    /// device (run it with [`run`](Self::run)), a handle to send data, and
    /// its events.
    pub fn new(
        store: K,
        connector: C,
        config: DriverConfig,
    ) -> Result<(Self, DeviceHandle, Events), DriverError> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| DriverError::NoRandomness(e.to_string()))?;
        Ok(Self::with_rng(
            store,
            connector,
            config,
            ChaCha20Rng::from_seed(*seed),
        ))
    }

    /// A device drawing its randomness from `rng` (tests and simulators; in
    /// production use [`new`](Self::new)).
    pub fn with_rng(
        store: K,
        connector: C,
        config: DriverConfig,
        rng: ChaCha20Rng,
    ) -> (Self, DeviceHandle, Events) {
        let (tx, rx) = mpsc::channel(64);
        let (events, events_rx) = mpsc::unbounded_channel();
        let device = Self {
            store,
            connector,
            config,
            rng,
            clock: TokioClock::new(),
            requests: Requests { rx, open: true },
            events,
            backoff: Backoff::new(config.backoff),
            ticket_on_our_clock: false,
            tickets: None,
        };
        (device, DeviceHandle { tx }, events_rx)
    }

    fn emit(&self, event: Event) {
        // Nobody listening is fine: the device works on.
        let _ = self.events.send(event);
    }

    /// Connects, authenticates and carries the session, reconnecting as
    /// needed, until `shutdown` resolves; then closes the session (reason
    /// `shutdown`) and returns.
    ///
    /// Returns an error only when the device cannot work at all: no identity
    /// or no trust anchors in the store. Everything else (gateways down,
    /// refusals, rogue gateways) is retried with backoff and reported as
    /// events.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), DriverError> {
        let mut shutdown = Shutdown {
            fut: Box::pin(shutdown),
            fired: false,
        };
        // Refuse to start unprovisioned: there is nothing to seal a hello to.
        self.store.anchors()?;
        let mut delay = Duration::ZERO;
        loop {
            if !delay.is_zero() && !self.wait_to_retry(delay, &mut shutdown).await {
                return Ok(());
            }
            let target = self.connector.describe();
            let Some(connected) =
                outside_session(self.connector.connect(), &mut self.requests, &mut shutdown).await
            else {
                return Ok(());
            };
            let mut link = match connected {
                Ok(link) => link,
                Err(e) => {
                    warn!(gateway = %target, error = %e, "could not connect");
                    self.emit(Event::ConnectFailed(e.into()));
                    delay = self.backoff.next_delay(&mut self.rng);
                    continue;
                }
            };
            let peer = link.peer();
            info!(peer = %peer, "connected");
            self.emit(Event::Connected { peer: peer.clone() });
            let next = if self.config.danger_silent {
                self.hold_silently(&mut link, &peer, &mut shutdown).await
            } else {
                self.connection(&mut link, &peer, &mut shutdown).await
            };
            match next {
                Next::Retry(d) => delay = d,
                Next::Stop(result) => return result,
            }
        }
    }

    /// Waits `delay` before the next attempt, answering the application
    /// meanwhile; `false` if shutdown came first.
    async fn wait_to_retry(&mut self, delay: Duration, shutdown: &mut Shutdown<'_>) -> bool {
        info!(
            delay_ms = delay.as_millis() as u64,
            failures = self.backoff.failures(),
            "retrying in {} ms",
            delay.as_millis()
        );
        self.emit(Event::Retrying {
            delay,
            failures: self.backoff.failures(),
        });
        outside_session(tokio::time::sleep(delay), &mut self.requests, shutdown)
            .await
            .is_some()
    }

    /// `danger_silent`: holds the link without a word until the gateway
    /// closes it (attacker emulation, tests only).
    async fn hold_silently(
        &mut self,
        link: &mut C::Link,
        peer: &str,
        shutdown: &mut Shutdown<'_>,
    ) -> Next {
        warn!(peer = %peer, "danger-silent: holding the link without sending a first message (attacker emulation, tests only)");
        let held_since = tokio::time::Instant::now();
        let held = outside_session(hold_silent(link), &mut self.requests, shutdown).await;
        if held.is_none() {
            return Next::Stop(Ok(()));
        }
        let held_for = held_since.elapsed();
        info!(peer = %peer, held_ms = held_for.as_millis() as u64, "danger-silent: the gateway closed the silent link");
        Next::Retry(if held_for >= Duration::from_secs(1) {
            self.backoff.reset();
            Duration::ZERO
        } else {
            self.backoff.next_delay(&mut self.rng)
        })
    }

    /// One connection: the handshake, then the session until it ends.
    async fn connection(
        &mut self,
        link: &mut C::Link,
        peer: &str,
        shutdown: &mut Shutdown<'_>,
    ) -> Next {
        let started = tokio::time::Instant::now();
        let handshaken = match self.handshake(link, shutdown).await {
            Ok(h) => h,
            Err(Failure::Shutdown) => return Next::Stop(Ok(())),
            Err(Failure::Fatal(e)) => return Next::Stop(Err(e)),
            Err(Failure::Attempt { error, resuming }) => {
                return Next::Retry(self.handshake_failed(error, resuming, peer));
            }
        };
        let session = self.established(handshaken, started.elapsed(), peer);
        let established_at = tokio::time::Instant::now();
        let end = self.session(link, session, shutdown).await;
        info!(peer = %peer, reason = %end, "session closed: {end}");
        let shut_down = shutdown.fired;
        let delay = match &end {
            _ if shut_down => Duration::ZERO,
            SessionEnd::ClosedByDevice(CloseReason::EXPIRED)
            | SessionEnd::ClosedByGateway(CloseReason::EXPIRED) => {
                self.backoff.reset();
                Duration::ZERO
            }
            _ if established_at.elapsed() >= self.config.stable_after => {
                self.backoff.reset();
                Duration::ZERO
            }
            _ => self.backoff.next_delay(&mut self.rng),
        };
        if let SessionEnd::ClosedByGateway(CloseReason::REVOKED) = end {
            // The gateway deleted its side of the ticket (SPEC.md §10.4).
            self.forget_ticket();
        }
        self.emit(Event::SessionEnded(end));
        if shut_down {
            Next::Stop(Ok(()))
        } else {
            Next::Retry(delay)
        }
    }

    /// A failed handshake attempt: reported, and the delay before the next.
    fn handshake_failed(
        &mut self,
        error: DriverError,
        resuming: Option<TicketSlot>,
        peer: &str,
    ) -> Duration {
        let rejected = matches!(
            error,
            DriverError::Protocol(ProtoError::Alert(AlertCode::ResumptionRejected))
        );
        if let Some(slot) = resuming {
            // Nothing on the air before the session is authenticated may
            // cost the device a ticket (an alert, garbage, a confirmation
            // that does not verify: anyone can send them). The next attempt
            // uses the other ticket, then a full handshake; both tickets
            // stay (SPEC.md §6.4).
            self.wallet().on_failed(slot);
        }
        let resuming = resuming.is_some();
        warn!(peer = %peer, resuming, error = %error, "handshake failed");
        self.emit(Event::HandshakeFailed(error));
        if resuming && rejected {
            Duration::ZERO
        } else {
            self.backoff.next_delay(&mut self.rng)
        }
    }

    /// A handshake completed: the ticket is stored, the session reported;
    /// returns the session.
    fn established(&mut self, handshaken: Handshaken, latency: Duration, peer: &str) -> Session {
        let Handshaken {
            established: est,
            resumed_with: resumed_slot,
        } = handshaken;
        let info = SessionInfo {
            gateway_key: est.gateway_key,
            scope: est.scope,
            lifetimes: est.lifetimes,
            resumed: est.resumed,
            session_id: est.session.id(),
            latency,
            peer: peer.to_string(),
        };
        if !est.resumed {
            self.ticket_on_our_clock = true;
        }
        let PeripheralEstablished {
            session, ticket, ..
        } = est;
        self.wallet().on_established(resumed_slot, ticket);
        self.save_tickets();
        info!(
            peer = %peer,
            mode = if info.resumed { "resumed" } else { "full" },
            latency_ms = info.latency.as_millis() as u64,
            gateway = %info.gateway_key,
            session = %hex::encode(info.session_id),
            scope = format_args!("{:#x}", info.scope.0),
            "handshake ok ({}, {} ms)",
            if info.resumed { "resumed" } else { "full" },
            info.latency.as_millis()
        );
        self.emit(Event::Established(info));
        session
    }

    fn forget_ticket(&mut self) {
        self.wallet().clear();
        self.save_tickets();
    }

    /// The tickets, loaded from the store on first use (an unreadable file
    /// is logged, and replaced by an empty wallet).
    fn wallet(&mut self) -> &mut TicketWallet {
        let store = &self.store;
        self.tickets.get_or_insert_with(|| {
            store.load_tickets().unwrap_or_else(|e| {
                warn!(error = %e, "discarding unreadable resumption tickets");
                TicketWallet::new()
            })
        })
    }

    /// Persists the tickets. A failure is logged: the next connection may
    /// then need a full handshake.
    fn save_tickets(&mut self) {
        let empty = TicketWallet::new();
        let tickets = self.tickets.as_ref().unwrap_or(&empty);
        if let Err(e) = self.store.save_tickets(tickets) {
            warn!(error = %e, "could not store the resumption tickets");
        }
    }

    /// One handshake on a fresh link: a resumption if a usable ticket is
    /// stored, else a full handshake.
    async fn handshake(
        &mut self,
        link: &mut C::Link,
        shutdown: &mut Shutdown<'_>,
    ) -> Result<Handshaken, Failure> {
        let anchors = self.store.anchors().map_err(|e| Failure::Fatal(e.into()))?;
        let now = self.clock.now();
        let config = PeripheralConfig {
            handshake_timeout_ms: self.config.handshake_timeout.as_millis() as u64,
        };
        // Tickets granted under a rotated-away anchor, or expired on this
        // run's clock, go; then the wallet picks the attempt (SPEC.md §6.4).
        let on_our_clock = self.ticket_on_our_clock.then_some(now);
        if self.wallet().prune(&anchors, on_our_clock) {
            debug!("dropped resumption tickets that expired or were granted under a rotated-away anchor");
            self.save_tickets();
        }
        let choice = self.wallet().choose();
        let resuming = match choice {
            NextHandshake::Resume(slot) => Some(slot),
            NextHandshake::Full => None,
        };
        let ticket = resuming.and_then(|slot| self.tickets.as_ref()?.ticket(slot));
        let hs = match ticket {
            Some(t) => PeripheralHandshake::resume(&config, t, &anchors, now, &mut self.rng),
            None => self.start_full(&config, &anchors, now),
        };
        let mut hs = hs.map_err(|e| Failure::Attempt {
            error: e.into(),
            resuming,
        })?;
        let resuming_slot = resuming;
        let resuming = resuming.is_some();
        debug!(
            mode = if resuming { "resume" } else { "full" },
            "sending {}",
            if resuming { "ResumeHello" } else { "Hello" }
        );
        let attempt = |error: DriverError| Failure::Attempt {
            error,
            resuming: resuming_slot,
        };
        flush(&mut hs, link).await.map_err(attempt)?;
        loop {
            let wait = hs.poll_timeout().map(|t| self.clock.until(t));
            tokio::select! {
                msg = link.recv() => {
                    let msg = match msg {
                        Ok(Some(m)) => m,
                        Ok(None) => return Err(attempt(DriverError::Disconnected)),
                        Err(e) => return Err(attempt(e.into())),
                    };
                    if let Err(e) = hs.handle_input(self.clock.now(), &msg) {
                        // Send the alert the machine queued (none for an alert
                        // from the gateway); the gateway ends the link anyway.
                        let _ = flush(&mut hs, link).await;
                        return Err(attempt(e.into()));
                    }
                    if hs.is_established() {
                        flush(&mut hs, link).await.map_err(attempt)?;
                        let established = hs.into_established().map_err(|e| attempt(e.into()))?;
                        return Ok(Handshaken {
                            established,
                            resumed_with: resuming_slot,
                        });
                    }
                }
                () = sleep_opt(wait) => {
                    hs.handle_timeout(self.clock.now());
                    if let Some(e) = hs.error() {
                        return Err(attempt(e.clone().into()));
                    }
                }
                () = shutdown.wait() => return Err(Failure::Shutdown),
                req = self.requests.next() => reject(req),
            }
        }
    }

    fn start_full(
        &mut self,
        config: &PeripheralConfig,
        anchors: &AnchorSet,
        now: Timestamp,
    ) -> Result<PeripheralHandshake, ProtoError> {
        PeripheralHandshake::start(
            config,
            self.store.peripheral_id(),
            self.store.signer(),
            anchors,
            now,
            &mut self.rng,
        )
    }

    /// Carries one established session until it ends.
    async fn session(
        &mut self,
        link: &mut C::Link,
        mut session: Session,
        shutdown: &mut Shutdown<'_>,
    ) -> SessionEnd {
        let session = &mut session;
        let mut plain = vec![0u8; MAX_MESSAGE];
        let mut record = vec![0u8; MAX_MESSAGE];
        loop {
            let expiry = session.poll_timeout().map(|t| self.clock.until(t));
            tokio::select! {
                msg = link.recv() => {
                    let msg = match msg {
                        Ok(Some(m)) => m,
                        Ok(None) => return SessionEnd::Disconnected,
                        Err(e) => return SessionEnd::Link(e),
                    };
                    let opened = session.open(self.clock.now(), &msg, &mut plain);
                    if opened.is_ok() && self.wallet().on_gateway_record() {
                        // The gateway completed the handshake: it holds the
                        // new ticket (SPEC.md §6.1).
                        self.save_tickets();
                    }
                    match opened {
                        Ok(Inbound::Data(d)) => self.emit(Event::Data(d.to_vec())),
                        Ok(Inbound::Close(r)) => return SessionEnd::ClosedByGateway(r),
                        Ok(Inbound::AnchorUpdate(u)) => self.apply_anchor_update(&u),
                        Err(ProtoError::SessionExpired | ProtoError::SessionClosed) => {
                            close(session, link, self.clock.now(), CloseReason::EXPIRED, self.config.close_timeout).await;
                            return SessionEnd::ClosedByDevice(CloseReason::EXPIRED);
                        }
                        // A record that fails any check is dropped and the
                        // session goes on (SPEC.md §7.4).
                        Err(e) => debug!(error = %e, "record rejected"),
                    }
                }
                req = self.requests.next() => match req {
                    Request::Send(data, reply) => {
                        let r = match session.seal_data(self.clock.now(), &data, &mut record) {
                            Ok(n) => link.send(&record[..n]).await.map_err(DriverError::from),
                            Err(e) => Err(e.into()),
                        };
                        let _ = reply.send(r);
                    }
                },
                () = sleep_opt(expiry) => {
                    session.handle_timeout(self.clock.now());
                    close(session, link, self.clock.now(), CloseReason::EXPIRED, self.config.close_timeout).await;
                    return SessionEnd::ClosedByDevice(CloseReason::EXPIRED);
                }
                () = shutdown.wait() => {
                    close(session, link, self.clock.now(), CloseReason::SHUTDOWN, self.config.close_timeout).await;
                    return SessionEnd::ClosedByDevice(CloseReason::SHUTDOWN);
                }
            }
        }
    }

    /// Verifies an anchor update against the stored anchors, applies it and
    /// stores the result (SPEC.md §7.7). On any error nothing changes.
    fn apply_anchor_update(&mut self, update: &AnchorUpdate) {
        let result = (|| -> Result<AnchorSet, DriverError> {
            let mut set = self.store.anchors()?;
            set.apply(update)?;
            self.store.save_anchors(&set)?;
            Ok(set)
        })();
        match result {
            Ok(set) => {
                let primary = set.primary().kid;
                info!(
                    serial = update.serial,
                    anchor = %primary,
                    "trust anchor rotated"
                );
                self.emit(Event::AnchorsUpdated {
                    serial: update.serial,
                    primary,
                });
            }
            Err(e) => {
                // Gateways re-send every update they hold after each
                // handshake (SPEC.md §7.7): one already applied is routine,
                // not a warning.
                if matches!(
                    e,
                    DriverError::Protocol(ProtoError::PeerMisbehaved(
                        PeerMisbehaved::StaleAnchorUpdate
                    ))
                ) {
                    debug!(serial = update.serial, "anchor update already applied");
                } else {
                    warn!(serial = update.serial, error = %e, "anchor update refused; anchors unchanged");
                }
                self.emit(Event::AnchorUpdateRejected(e));
            }
        }
    }
}

/// Holds a link without sending anything, dropping what arrives, until it
/// closes ([`DriverConfig::danger_silent`]).
async fn hold_silent<L: Link>(link: &mut L) {
    while let Ok(Some(msg)) = link.recv().await {
        debug!(len = msg.len(), "danger-silent: ignoring a message");
    }
}

/// Sends what the handshake machine queued.
async fn flush<L: Link>(hs: &mut PeripheralHandshake, link: &mut L) -> Result<(), DriverError> {
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    while let Some(n) = hs.poll_transmit(&mut buf) {
        link.send(&buf[..n]).await?;
    }
    Ok(())
}

/// Seals and sends a close record, best effort within `timeout`.
async fn close<L: Link>(
    session: &mut vouch_proto::session::Session,
    link: &mut L,
    now: Timestamp,
    reason: CloseReason,
    timeout: Duration,
) {
    let mut buf = [0u8; 64];
    if let Ok(n) = session.seal_close(now, reason, &mut buf) {
        match tokio::time::timeout(timeout, link.send(&buf[..n])).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, "could not send the close record"),
            Err(_) => debug!("sending the close record timed out"),
        }
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
