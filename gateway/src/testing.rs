//! A fake backend for tests (feature `test-utils`): the protocol's own
//! backend role (`vouch_proto::handshake::backend`) behind the gateway's
//! [`BackendApi`], with a registry, revocations, key rotation, a revocation
//! feed the test writes, trust-anchor updates, and switches that make it
//! fail the ways a real backend fails (down, slow, a feed cut, a lying
//! signer). The gateway's and the reference peripheral's test suites both
//! use it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, watch};
use vouch_proto::anchor::{AnchorBundle, AnchorSet, AnchorUpdate};
use vouch_proto::error::Refusal;
use vouch_proto::handshake::backend::{open_hello, BackendKeys, VouchGrant};
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake};
use vouch_proto::keys::{IdentityKey, KeyId, PeripheralId, PublicKey};
use vouch_proto::testing::rng;
use vouch_proto::wire::backend::{
    AnchorUpdateBatch, FeedBatch, FeedEvent, PeripheralInfo, SessionEventKind, SessionReport,
    SessionReportAnswer, SessionVerdict, VouchAnswer, VouchRequest, Vouched, MAX_ANCHOR_UPDATES,
};
use vouch_proto::wire::{Hello, Lifetimes, Scope, MAX_HANDSHAKE_MESSAGE};
use vouch_proto::Timestamp;

use crate::backend_client::{BackendApi, BackendError, FeedAnswer};
use crate::clock::{Clock, TokioClock};

/// What the backend does with a hello it authenticated.
#[derive(Default)]
pub enum Mode {
    /// Vouch as a real backend does.
    #[default]
    Honest,
    /// Sign the vouch with a key the device does not trust, under a key id it
    /// does (a rogue backend behind a rogue gateway).
    RogueSigner(BackendKeys),
    /// Answer with a genuine vouch issued for another peripheral's hello (a
    /// gateway presenting someone else's vouch).
    OtherPeripheral(IdentityKey),
}

/// How the backend makes its future key pairs (key 2 and above), which the
/// current anchor set commits to (SPEC.md §2.3).
type FutureKeys = Box<dyn Fn(u8) -> BackendKeys + Send + Sync>;

/// The fake backend; see the [module docs](self).
pub struct FakeBackend {
    keys: Mutex<Vec<Arc<BackendKeys>>>,
    future_keys: FutureKeys,
    /// The gateway it vouches for.
    pub gateway: IdentityKey,
    registry: Mutex<HashMap<PeripheralId, (PublicKey, Scope)>>,
    revoked: Mutex<HashSet<PeripheralId>>,
    /// While `true`, every call fails as a backend that cannot be reached.
    pub down: AtomicBool,
    /// What it does with an authenticated hello.
    pub mode: Mutex<Mode>,
    /// Vouch requests that reached the (up) backend: the round trips a
    /// resumption saves.
    pub requests: AtomicUsize,
    /// Of those, the ones refused.
    pub refusals: AtomicUsize,
    /// The lifetimes it grants.
    pub lifetimes: Mutex<Lifetimes>,
    /// Every session report, in order.
    pub reports: Mutex<Vec<SessionReport>>,
    /// The verdict on a `Concurrent` session event (others are accepted).
    pub concurrent_verdict: Mutex<SessionVerdict>,
    /// While `false`, `vouch` does not answer (a slow backend).
    pub vouch_open: watch::Sender<bool>,
    /// The feed's log: served by cursor, before anything sent on
    /// [`feed_sender`](Self::feed_sender).
    pub log: Mutex<Vec<FeedEvent>>,
    feed_tx: mpsc::Sender<FeedEvent>,
    feed: tokio::sync::Mutex<mpsc::Receiver<FeedEvent>>,
    /// While `false`, `feed_now` does not answer (a backend not reached yet).
    pub feed_now_open: watch::Sender<bool>,
    /// While `true`, the revocation feed fails (`feed`, `feed_now`), and a
    /// long poll already waiting fails when it turns `true`: an uplink cut.
    pub feed_down: watch::Sender<bool>,
    /// When set, `feed_now` answers this instead of reading the log.
    pub feed_now_answer: Mutex<Option<Result<FeedBatch, BackendError>>>,
    /// The trust-anchor updates the backend issued, in serial order.
    pub anchor_log: Mutex<Vec<AnchorUpdate>>,
    /// When set, the last serial handed out (an instance that does not
    /// serve the newest key yet); otherwise the log's last.
    pub anchor_latest: Mutex<Option<u32>>,
    /// The `after` of every anchor-update request, in order.
    pub anchor_requests: Mutex<Vec<u32>>,
    /// The backend's own clock: its feed answers carry its wall time (the
    /// `Date` of the real backend's answers). Step it to put a gateway's
    /// clock behind or ahead.
    pub clock: TokioClock,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeBackend {
    /// A backend whose key pair 1 and gateway identity are drawn, in that
    /// order, from `seed`, and whose key pair `kid` from `seed × 1000 + kid`.
    /// Its verdict on concurrent sessions is `Accepted`.
    pub fn new(seed: u64) -> Arc<Self> {
        let mut r = rng(seed);
        let keys = BackendKeys::generate(KeyId(1), &mut r);
        let gateway = IdentityKey::generate(&mut r);
        let backend = Self::from_parts(keys, gateway, move |kid| {
            BackendKeys::generate(KeyId(kid), &mut rng(seed * 1_000 + u64::from(kid)))
        });
        *lock(&backend.concurrent_verdict) = SessionVerdict::Accepted;
        backend
    }

    /// A backend with key pair `keys`, vouching for `gateway`, whose future
    /// key pairs `future_keys` makes. Its verdict on concurrent sessions is
    /// `CloneSuspected`.
    pub fn from_parts(
        keys: BackendKeys,
        gateway: IdentityKey,
        future_keys: impl Fn(u8) -> BackendKeys + Send + Sync + 'static,
    ) -> Arc<Self> {
        let (feed_tx, feed_rx) = mpsc::channel(16);
        Arc::new(Self {
            keys: Mutex::new(vec![Arc::new(keys)]),
            future_keys: Box::new(future_keys),
            gateway,
            registry: Mutex::new(HashMap::new()),
            revoked: Mutex::new(HashSet::new()),
            down: AtomicBool::new(false),
            mode: Mutex::new(Mode::Honest),
            requests: AtomicUsize::new(0),
            refusals: AtomicUsize::new(0),
            lifetimes: Mutex::new(Lifetimes {
                session_s: 3600,
                resumption_s: 86_400,
            }),
            reports: Mutex::new(vec![]),
            concurrent_verdict: Mutex::new(SessionVerdict::CloneSuspected),
            vouch_open: watch::channel(true).0,
            log: Mutex::new(vec![]),
            feed_tx,
            feed: tokio::sync::Mutex::new(feed_rx),
            feed_now_open: watch::channel(true).0,
            feed_down: watch::channel(false).0,
            feed_now_answer: Mutex::new(None),
            anchor_log: Mutex::new(vec![]),
            anchor_latest: Mutex::new(None),
            anchor_requests: Mutex::new(vec![]),
            clock: TokioClock::new(),
        })
    }

    /// Key pair `kid` (2 and above) as this backend creates it in advance:
    /// the devices hold a commitment to key 2 from provisioning, key 2's
    /// rotation commits to key 3, and so on (SPEC.md §2.3).
    pub fn future_keys(&self, kid: u8) -> BackendKeys {
        (self.future_keys)(kid)
    }

    /// Adds a backend key pair (rotation).
    pub fn add_keys(&self, keys: BackendKeys) -> Arc<BackendKeys> {
        let keys = Arc::new(keys);
        lock(&self.keys).push(keys.clone());
        keys
    }

    /// Key pair `kid`, if the backend has it.
    pub fn find_keys(&self, kid: u8) -> Option<Arc<BackendKeys>> {
        lock(&self.keys)
            .iter()
            .find(|k| k.kid() == KeyId(kid))
            .cloned()
    }

    /// Key pair `kid`.
    ///
    /// # Panics
    ///
    /// If the backend does not have it (a test that names a key it never
    /// added).
    pub fn keys(&self, kid: u8) -> Arc<BackendKeys> {
        match self.find_keys(kid) {
            Some(keys) => keys,
            None => panic!("the fake backend has no key pair {kid}"),
        }
    }

    /// The anchor set devices are provisioned with: key 1, committed to
    /// [`future_keys`](Self::future_keys)`(2)`.
    pub fn anchors(&self) -> AnchorSet {
        let first = lock(&self.keys)[0].anchor();
        AnchorSet::new(first, self.future_keys(2).anchor().digest(), 0)
    }

    /// The bundle `vouch-backend export-anchor` would write (key id 1).
    pub fn bundle(&self) -> AnchorBundle {
        AnchorBundle::from_anchor_set(&self.anchors())
    }

    /// Enrolls a peripheral with `scope`; returns its id.
    pub fn enroll(&self, public: PublicKey, scope: Scope) -> PeripheralId {
        let id = PeripheralId::derive(&public);
        lock(&self.registry).insert(id, (public, scope));
        id
    }

    /// Revokes a peripheral: its hellos are refused.
    pub fn revoke(&self, id: PeripheralId) {
        lock(&self.revoked).insert(id);
    }

    /// Reinstates a revoked peripheral.
    pub fn reinstate(&self, id: PeripheralId) {
        lock(&self.revoked).remove(&id);
    }

    /// Where the test writes the revocation feed's events after the log.
    pub fn feed_sender(&self) -> mpsc::Sender<FeedEvent> {
        self.feed_tx.clone()
    }

    /// SPEC.md §5.3, as the reference backend logic of `vouch_proto::testing`:
    /// vouches for an enrolled, unrevoked peripheral whose hello verifies.
    pub fn answer(&self, req: &VouchRequest) -> VouchAnswer {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let answer = self.vouched(req);
        if answer.is_none() {
            self.refusals.fetch_add(1, Ordering::SeqCst);
        }
        answer.map_or(VouchAnswer::Refused(Refusal::Denied), VouchAnswer::Vouched)
    }

    fn vouched(&self, req: &VouchRequest) -> Option<Vouched> {
        let hello = Hello::peek(&req.hello).ok()?;
        let keys = self.find_keys(hello.anchor.0)?;
        let opened = open_hello(&req.hello, &keys).ok()?;
        let id = opened.claimed_peripheral();
        if lock(&self.revoked).contains(&id) {
            return None;
        }
        let (public, scope) = *lock(&self.registry).get(&id)?;
        let verified = opened.verify(&public).ok()?;
        let grant = VouchGrant {
            gateway_key: self.gateway.public_key(),
            gateway_ephemeral: req.gateway_ephemeral,
            scope,
            lifetimes: *lock(&self.lifetimes),
        };
        let info = |id, public_key| PeripheralInfo {
            id,
            public_key,
            group: Some("lab".into()),
            attributes: vec![],
            scope,
        };
        let vouched = match &*lock(&self.mode) {
            Mode::Honest => Vouched {
                vouch: verified.vouch(&keys, &grant),
                peripheral: info(id, public),
            },
            Mode::RogueSigner(rogue) => Vouched {
                vouch: verified.vouch(rogue, &grant),
                peripheral: info(id, public),
            },
            Mode::OtherPeripheral(other) => {
                // A real, backend-signed vouch, but for another device's
                // hello (and so its TH1 and id).
                let other_id = PeripheralId::derive(&other.public_key());
                let mut hs = PeripheralHandshake::start(
                    &PeripheralConfig::default(),
                    other_id,
                    other,
                    &AnchorSet::new(keys.anchor(), keys.anchor().digest(), 0),
                    Timestamp(0),
                    &mut rng(99),
                )
                .ok()?;
                let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
                let n = hs.poll_transmit(&mut buf)?;
                let theirs = open_hello(&buf[..n], &keys)
                    .ok()?
                    .verify(&other.public_key())
                    .ok()?;
                Vouched {
                    vouch: theirs.vouch(&keys, &grant),
                    peripheral: info(other_id, other.public_key()),
                }
            }
        };
        Some(vouched)
    }

    /// The log's events after `after` (`next` = the last one's seq).
    fn logged_after(&self, after: u64) -> Option<FeedBatch> {
        let events: Vec<FeedEvent> = lock(&self.log)
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect();
        let next = events.last()?.seq;
        Some(FeedBatch { events, next })
    }

    fn check_up(&self) -> Result<(), BackendError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable("connection refused".into()));
        }
        Ok(())
    }
}

impl BackendApi for FakeBackend {
    async fn vouch(&self, req: VouchRequest) -> Result<VouchAnswer, BackendError> {
        self.check_up()?;
        let mut open = self.vouch_open.subscribe();
        let _ = open.wait_for(|o| *o).await;
        Ok(self.answer(&req))
    }

    async fn report(&self, report: SessionReport) -> Result<SessionReportAnswer, BackendError> {
        self.check_up()?;
        let concurrent = *lock(&self.concurrent_verdict);
        let items = report
            .events
            .iter()
            .map(|e| match e.kind {
                SessionEventKind::Concurrent => concurrent,
                _ => SessionVerdict::Accepted,
            })
            .collect();
        lock(&self.reports).push(report);
        Ok(SessionReportAnswer { items })
    }

    async fn feed_now(&self, after: u64) -> Result<FeedBatch, BackendError> {
        if *self.feed_down.borrow() {
            return Err(BackendError::Unavailable("feed down".into()));
        }
        let mut open = self.feed_now_open.subscribe();
        let _ = open.wait_for(|o| *o).await;
        if let Some(answer) = lock(&self.feed_now_answer).clone() {
            return answer;
        }
        Ok(self.logged_after(after).unwrap_or(FeedBatch {
            events: vec![],
            next: after,
        }))
    }

    /// As the backend's `GET /v1/anchor-updates` (SPEC.md §10.6).
    async fn anchor_updates(&self, after: u32) -> Result<AnchorUpdateBatch, BackendError> {
        lock(&self.anchor_requests).push(after);
        self.check_up()?;
        let log = lock(&self.anchor_log);
        let latest =
            lock(&self.anchor_latest).unwrap_or_else(|| log.last().map_or(0, |u| u.serial));
        let updates = log
            .iter()
            .filter(|u| u.serial > after && u.serial <= latest)
            .take(MAX_ANCHOR_UPDATES)
            .copied()
            .collect();
        Ok(AnchorUpdateBatch { updates, latest })
    }

    async fn feed_dated(&self, after: u64) -> Result<FeedAnswer, BackendError> {
        let batch = self.feed(after).await?;
        Ok(FeedAnswer {
            batch,
            server_time: Some(self.clock.wall()),
        })
    }

    async fn feed_now_dated(&self, after: u64) -> Result<FeedAnswer, BackendError> {
        let batch = self.feed_now(after).await?;
        Ok(FeedAnswer {
            batch,
            server_time: Some(self.clock.wall()),
        })
    }

    async fn feed(&self, after: u64) -> Result<FeedBatch, BackendError> {
        let mut down = self.feed_down.subscribe();
        if *down.borrow_and_update() {
            return Err(BackendError::Unavailable("feed down".into()));
        }
        if let Some(batch) = self.logged_after(after) {
            return Ok(batch);
        }
        let mut rx = self.feed.lock().await;
        let next = tokio::select! {
            ev = rx.recv() => ev,
            _ = down.wait_for(|d| *d) => return Err(BackendError::Unavailable("feed down".into())),
        };
        match next {
            Some(ev) => Ok(FeedBatch {
                next: ev.seq,
                events: vec![ev],
            }),
            // The backend holds a sender, so the channel never closes.
            None => {
                drop(rx);
                std::future::pending().await
            }
        }
    }
}
