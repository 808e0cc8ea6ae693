//! The gateway's view of the backend (SPEC.md §10), behind a trait so the
//! driver can be tested without a network and the simulator can plug in the
//! backend in-process; [`HttpBackend`] is the real one.
//!
//! [`HttpBackend`] speaks HTTPS with reqwest over rustls: the gateway's client
//! certificate (its Ed25519 identity), the backend CA pinned (no system roots),
//! HTTP/2 with keep-alive. Concurrent vouch requests are coalesced into batches;
//! at most [`MAX_IN_FLIGHT`] requests are in flight at once (what waits meanwhile
//! goes into the next, larger batch); a circuit breaker makes new handshakes
//! fail fast while the backend is down, and closes again on its own. A
//! backend of several instances is several URLs: each request goes to the
//! first instance in this gateway's order of preference that answers, fails
//! over to the next when one stops answering, and comes back when it answers
//! again (the policy is argued in gateway/README.md, "Several backend
//! instances"). The
//! client certificate can be replaced while the client runs
//! ([`BackendApi::use_certificate`]: the renewal of
//! [`crate::certificate`]). A request that fails says why, from the
//! innermost cause: a TLS failure is a [`TlsFailure`] that names it (an
//! expired client certificate, a backend certificate not from the pinned
//! CA, …), a refused connection is
//! [`BackendError::ConnectionRefused`].

use std::error::Error as _;
use std::future::Future;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use crate::clock::WallTime;
use tokio::sync::{mpsc, oneshot, Semaphore};
use vouch_proto::wire::backend::{
    decode_body, encode_body, route, AnchorUpdateBatch, CertificateIssued, CertificateRenewal,
    ErrorCode, EventTimes, FeedBatch, SessionReport, SessionReportAnswer, VouchAnswer,
    VouchBatchAnswer, VouchBatchRequest, VouchRequest, CONTENT_TYPE, MAX_BATCH,
};

mod instances;

use instances::Instances;

/// Vouch batches, session reports, anchor-update fetches and certificate
/// renewals one gateway keeps in flight to the backend. Well below the backend's default budget
/// per gateway (32, SPEC.md §10.2), so an honest gateway is never told
/// `gateway_busy`; under a storm the requests that wait form larger batches
/// instead.
pub const MAX_IN_FLIGHT: usize = 8;

/// Why a backend call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The backend could not be reached, timed out, or failed (5xx).
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// TLS with the backend failed, for the reason given.
    #[error("{0}")]
    Tls(TlsFailure),
    /// Nothing listens at the backend's address.
    #[error(
        "the backend at {0} refused the connection: is vouch-backend running there, on that port?"
    )]
    ConnectionRefused(String),
    /// The circuit breaker is open after repeated failures: failing fast.
    #[error("backend unavailable (failing fast after repeated errors)")]
    CircuitOpen,
    /// The backend refused the request itself (4xx), with its error code.
    #[error("backend refused the request: HTTP {status} {}", code.map_or("(no known code)", ErrorCode::as_str))]
    Refused {
        /// HTTP status.
        status: u16,
        /// The backend's stable error code; `None` if the answer had none
        /// this gateway knows.
        code: Option<ErrorCode>,
    },
    /// The answer was not a valid body.
    #[error("backend answer malformed: {0}")]
    Malformed(String),
    /// The TLS or client configuration is unusable.
    #[error("backend client configuration: {0}")]
    Config(String),
    /// This implementation of [`BackendApi`] does not offer the call (a test
    /// or simulated backend without it).
    #[error("not offered by this backend: {0}")]
    Unsupported(&'static str),
}

impl BackendError {
    /// Whether the failure says the backend is down (as opposed to a refusal).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            BackendError::Unavailable(_)
                | BackendError::CircuitOpen
                | BackendError::Tls(_)
                | BackendError::ConnectionRefused(_)
        )
    }
}

/// Why TLS with the backend failed, said so that an installer or operator
/// knows what to fix. The first four are the backend's refusal of this
/// gateway's client certificate (a TLS alert it sent); the next three are
/// this gateway's refusal of the backend's certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsFailure {
    /// Alert `certificate_expired`.
    #[error("the backend refused this gateway's client certificate as expired or not yet valid (TLS alert certificate_expired): `vouch-gateway status` shows its validity; an expired one cannot be renewed, ask the operator for a new one (vouch-backend enroll gateway)")]
    ClientCertificateExpired,
    /// Alert `unknown_ca`.
    #[error("the backend does not know the CA of this gateway's client certificate (TLS alert unknown_ca): the certificate was issued by another backend")]
    ClientCertificateUnknownCa,
    /// Alert `decrypt_error`.
    #[error("the backend could not verify this gateway's client certificate (TLS alert decrypt_error): it was issued by another backend's CA, or it does not match this gateway's identity key")]
    ClientCertificateNotVerified,
    /// Another alert about the certificate.
    #[error("the backend refused this gateway's client certificate (TLS alert {0})")]
    ClientCertificateRejected(String),
    /// The backend's certificate does not chain to the pinned CA.
    #[error("the backend's certificate was not issued by the pinned CA ([backend] ca): the wrong CA file, or not this backend at [backend] url")]
    BackendNotFromPinnedCa,
    /// The backend's certificate expired or is not valid yet.
    #[error("the backend's certificate has expired or is not valid yet: the operator reissues it (vouch-backend server-cert reissue), or a clock is wrong")]
    BackendCertificateExpired,
    /// The backend's certificate is not for the host in the URL.
    #[error("the backend's certificate is not valid for the host in [backend] url: the operator reissues it with that name (vouch-backend server-cert reissue --san HOST)")]
    BackendNameMismatch,
    /// Anything else TLS refused.
    #[error("TLS with the backend failed: {0}")]
    Other(String),
}

impl TlsFailure {
    /// The failure a rustls error says.
    pub fn of(e: &rustls::Error) -> Self {
        use rustls::{AlertDescription as A, CertificateError as C};
        match e {
            rustls::Error::AlertReceived(A::CertificateExpired) => Self::ClientCertificateExpired,
            rustls::Error::AlertReceived(A::UnknownCA) => Self::ClientCertificateUnknownCa,
            rustls::Error::AlertReceived(A::DecryptError) => Self::ClientCertificateNotVerified,
            rustls::Error::AlertReceived(
                a @ (A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateUnknown
                | A::CertificateRequired
                | A::AccessDenied),
            ) => Self::ClientCertificateRejected(format!("{a:?}")),
            rustls::Error::InvalidCertificate(c) => match c {
                #[allow(deprecated)]
                C::UnknownIssuer | C::BadSignature => Self::BackendNotFromPinnedCa,
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => Self::BackendCertificateExpired,
                C::NotValidForName | C::NotValidForNameContext { .. } => Self::BackendNameMismatch,
                other => Self::Other(other.to_string()),
            },
            other => Self::Other(other.to_string()),
        }
    }
}

/// What a failed request's error says happened, from the innermost cause:
/// reqwest's own message is "error sending request" whatever the cause. The
/// chain is walked for the [`rustls::Error`] (which an I/O error carries
/// inside; its `source` skips it, and an HTTP/2 connection error hides the
/// I/O error) and for a refused connection.
pub fn classify(e: &reqwest::Error, url: &str) -> BackendError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return BackendError::Tls(TlsFailure::of(tls));
        }
        // An HTTP/2 connection error keeps its I/O error to itself.
        let io = err
            .downcast_ref::<std::io::Error>()
            .or_else(|| err.downcast_ref::<h2::Error>().and_then(h2::Error::get_io));
        if let Some(io) = io {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return BackendError::Tls(TlsFailure::of(tls));
            }
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return BackendError::ConnectionRefused(url.to_owned());
            }
        }
        cause = err.source();
    }
    // Not one of those: the whole chain, not just its first line.
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    BackendError::Unavailable(text)
}

/// A revocation-feed answer, with the time the backend sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedAnswer {
    /// The events.
    pub batch: FeedBatch,
    /// The `Date` of the backend's answer, on the mutually authenticated
    /// channel (SPEC.md §10.2): what confirms the gateway's wall clock before
    /// it uses restored tickets ([`crate::sessions::TicketBook::check_clock`]).
    /// `None` when the answer carried none.
    pub server_time: Option<WallTime>,
}

impl FeedAnswer {
    /// An answer without a time.
    pub fn undated(batch: FeedBatch) -> Self {
        Self {
            batch,
            server_time: None,
        }
    }
}

/// What the gateway needs from the backend.
pub trait BackendApi: Send + Sync + 'static {
    /// Asks for a vouch (SPEC.md §10.1).
    fn vouch(
        &self,
        req: VouchRequest,
    ) -> impl Future<Output = Result<VouchAnswer, BackendError>> + Send;
    /// Reports session changes (SPEC.md §10.5).
    fn report(
        &self,
        report: SessionReport,
    ) -> impl Future<Output = Result<SessionReportAnswer, BackendError>> + Send;
    /// Long-polls the revocation feed for events after `after` (SPEC.md §10.5).
    fn feed(&self, after: u64) -> impl Future<Output = Result<FeedBatch, BackendError>> + Send;
    /// Reads the revocation feed after `after` without waiting: an empty batch
    /// with `next == after` means nothing newer exists (SPEC.md §10.5,
    /// `wait_ms=0`). Used to catch up after a restart. The default long-polls
    /// through [`feed`](Self::feed): correct, but it waits for the poll's
    /// timeout when nothing is new.
    fn feed_now(&self, after: u64) -> impl Future<Output = Result<FeedBatch, BackendError>> + Send {
        self.feed(after)
    }
    /// [`feed`](Self::feed), with the time the backend sent its answer. The
    /// default has none: a gateway on such a backend never confirms its wall
    /// clock, so it neither saves tickets nor uses restored ones.
    fn feed_dated(
        &self,
        after: u64,
    ) -> impl Future<Output = Result<FeedAnswer, BackendError>> + Send {
        let poll = self.feed(after);
        async move { poll.await.map(FeedAnswer::undated) }
    }
    /// [`feed_now`](Self::feed_now), with the time the backend sent its
    /// answer (see [`feed_dated`](Self::feed_dated)).
    fn feed_now_dated(
        &self,
        after: u64,
    ) -> impl Future<Output = Result<FeedAnswer, BackendError>> + Send {
        let poll = self.feed_now(after);
        async move { poll.await.map(FeedAnswer::undated) }
    }
    /// Fetches the trust-anchor updates with a serial above `after` (SPEC.md
    /// §10.6): at most [`MAX_ANCHOR_UPDATES`](vouch_proto::wire::backend::MAX_ANCHOR_UPDATES)
    /// per answer, with the serial of the last one the backend hands out.
    /// The default answers [`BackendError::Unsupported`], for test and
    /// simulated backends that issue none; a gateway then keeps what it holds
    /// and delivers nothing new.
    fn anchor_updates(
        &self,
        after: u32,
    ) -> impl Future<Output = Result<AnchorUpdateBatch, BackendError>> + Send {
        let _ = after;
        std::future::ready(Err(BackendError::Unsupported("anchor updates")))
    }
    /// Asks for a fresh client certificate for this gateway's key (SPEC.md
    /// §10.8). The default answers [`BackendError::Unsupported`], for test
    /// and simulated backends that issue none.
    fn renew_certificate(
        &self,
    ) -> impl Future<Output = Result<CertificateIssued, BackendError>> + Send {
        std::future::ready(Err(BackendError::Unsupported("certificate renewal")))
    }
    /// Authenticates with `cert_pem` from now on: new connections use it,
    /// requests in flight finish on the connections they have. The default
    /// does nothing (a backend reached without TLS).
    fn use_certificate(&self, cert_pem: &[u8]) -> Result<(), BackendError> {
        let _ = cert_pem;
        Ok(())
    }
}

impl<T: BackendApi> BackendApi for Arc<T> {
    fn vouch(
        &self,
        req: VouchRequest,
    ) -> impl Future<Output = Result<VouchAnswer, BackendError>> + Send {
        (**self).vouch(req)
    }
    fn report(
        &self,
        report: SessionReport,
    ) -> impl Future<Output = Result<SessionReportAnswer, BackendError>> + Send {
        (**self).report(report)
    }
    fn feed(&self, after: u64) -> impl Future<Output = Result<FeedBatch, BackendError>> + Send {
        (**self).feed(after)
    }
    fn feed_now(&self, after: u64) -> impl Future<Output = Result<FeedBatch, BackendError>> + Send {
        (**self).feed_now(after)
    }
    fn feed_dated(
        &self,
        after: u64,
    ) -> impl Future<Output = Result<FeedAnswer, BackendError>> + Send {
        (**self).feed_dated(after)
    }
    fn feed_now_dated(
        &self,
        after: u64,
    ) -> impl Future<Output = Result<FeedAnswer, BackendError>> + Send {
        (**self).feed_now_dated(after)
    }
    fn anchor_updates(
        &self,
        after: u32,
    ) -> impl Future<Output = Result<AnchorUpdateBatch, BackendError>> + Send {
        (**self).anchor_updates(after)
    }
    fn renew_certificate(
        &self,
    ) -> impl Future<Output = Result<CertificateIssued, BackendError>> + Send {
        (**self).renew_certificate()
    }
    fn use_certificate(&self, cert_pem: &[u8]) -> Result<(), BackendError> {
        (**self).use_certificate(cert_pem)
    }
}

/// Settings of [`HttpBackend`]. `Debug` leaves out the key.
#[derive(Clone)]
pub struct HttpBackendConfig {
    /// Base URLs of the backend's instances, e.g.
    /// `https://backend.example:8443` (at least one; several instances of
    /// one backend share its database, its CA and its keys).
    pub urls: Vec<String>,
    /// Whether this gateway shuffles `urls` into its own order of
    /// preference (spreading a fleet over the instances), or prefers them
    /// in the order given.
    pub shuffle: bool,
    /// Where failovers and the instances' health are counted.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// PEM of the backend CA to pin.
    pub ca_pem: Vec<u8>,
    /// PEM of the gateway's client certificate.
    pub cert_pem: Vec<u8>,
    /// PKCS#8 PEM of the gateway's identity key.
    pub key_pem: zeroize::Zeroizing<Vec<u8>>,
    /// Timeout of one request.
    pub request_timeout: Duration,
    /// How long the feed long-poll may hang before the client gives up.
    pub feed_timeout: Duration,
    /// How long to gather concurrent vouch requests into one batch.
    pub batch_window: Duration,
    /// Consecutive failures that open one instance's circuit.
    pub breaker_threshold: u32,
    /// How long the circuit stays open before one request probes again.
    pub breaker_cooldown: Duration,
}

impl std::fmt::Debug for HttpBackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBackendConfig")
            .field("urls", &self.urls)
            .field("request_timeout", &self.request_timeout)
            .field("batch_window", &self.batch_window)
            .finish_non_exhaustive()
    }
}

type Pending = (
    VouchRequest,
    oneshot::Sender<Result<VouchAnswer, BackendError>>,
);

/// The real backend client. Cheap to clone.
#[derive(Clone)]
pub struct HttpBackend {
    inner: Arc<Inner>,
    batch_tx: mpsc::Sender<Pending>,
}

/// A reqwest client and the TLS configuration it was built with.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
}

struct Inner {
    /// Replaced whole when the certificate is renewed; each request clones
    /// the one current when it starts.
    client: RwLock<Client>,
    /// The pinned CA and the identity key, to build the next client with.
    ca_pem: Vec<u8>,
    key_pem: zeroize::Zeroizing<Vec<u8>>,
    /// The backend's instances, their health and this gateway's order.
    instances: Instances,
    feed_timeout: Duration,
    /// Timeout of a request that does not long-poll.
    request_timeout: Duration,
    /// [`MAX_IN_FLIGHT`] permits for vouch batches, session reports,
    /// anchor-update fetches and certificate renewals.
    slots: Arc<Semaphore>,
}

impl HttpBackend {
    /// Builds the client and starts its batching task (needs a tokio runtime).
    pub fn new(cfg: HttpBackendConfig) -> Result<Self, BackendError> {
        let client = build_client(
            &cfg.ca_pem,
            &cfg.cert_pem,
            &cfg.key_pem,
            cfg.request_timeout,
        )?;
        let instances = Instances::new(
            &cfg.urls,
            cfg.shuffle,
            cfg.breaker_threshold,
            cfg.breaker_cooldown,
            cfg.metrics,
        )?;
        let inner = Arc::new(Inner {
            client: RwLock::new(client),
            ca_pem: cfg.ca_pem,
            key_pem: cfg.key_pem,
            instances,
            feed_timeout: cfg.feed_timeout,
            request_timeout: cfg.request_timeout,
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        });
        let (batch_tx, batch_rx) = mpsc::channel(1024);
        tokio::spawn(batcher(inner.clone(), batch_rx, cfg.batch_window));
        if inner.instances.len() > 1 {
            tokio::spawn(prober(Arc::downgrade(&inner)));
        }
        Ok(Self { inner, batch_tx })
    }

    /// The base URL of the backend instance the next request goes to
    /// (`None` while every instance's circuit is open).
    pub fn in_use(&self) -> Option<String> {
        self.inner.instances.in_use().map(str::to_owned)
    }

    /// The base URLs of the backend's instances, in this gateway's order of
    /// preference.
    pub fn instances(&self) -> Vec<String> {
        (0..self.inner.instances.len())
            .map(|i| self.inner.instances.url(i).to_owned())
            .collect()
    }
}

/// Whether a request that failed at one instance is sent to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Whatever the failure: the request may be repeated (reading the feed
    /// or the anchor updates, a session report, which the backend counts
    /// once however often it comes, a certificate renewal).
    Always,
    /// Only when it cannot have reached the backend's handlers (the
    /// connection or TLS failed, or the instance said 503 before any work):
    /// a vouch request that may have been judged elsewhere would be a
    /// replay of its hello. The peripheral, answered `Busy`, retries with
    /// a fresh one.
    IfUndelivered,
}

/// How much shorter than the client's feed timeout the long-poll asks the
/// backend to wait.
const FEED_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);

/// How one attempt at one instance went.
struct Attempt<T> {
    result: Result<T, BackendError>,
    /// The instance failed to answer (not a refusal, not a 429 or 503
    /// `overloaded` answer): it is down.
    instance_failed: bool,
    /// The request cannot have reached the instance's handlers: this
    /// request's own connection or TLS handshake failed, or the instance
    /// shed it (503 `overloaded`) before any work.
    undelivered: bool,
    /// The instance shed it (503 `overloaded`): up, but full; another
    /// instance may have room.
    shed: bool,
}

/// Probes the down instances (`GET /readyz`) on their schedules until the
/// client is dropped; an instance that answers is up again.
async fn prober(inner: Weak<Inner>) {
    /// Longest sleep, so that a dropped client ends the task.
    const NAP: Duration = Duration::from_secs(5);
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let (due, _) = strong.instances.due(std::time::Instant::now());
        for i in due {
            if strong.probe_ready(i).await {
                strong.instances.probe_answered(i);
            } else {
                strong.instances.probe_failed(i);
            }
        }
        // After the probes, whose failures moved their instances' next
        // probe later on the jittered, growing schedule.
        let now = std::time::Instant::now();
        let sleep = strong
            .instances
            .next_probe_at()
            .map_or(NAP, |n| n.saturating_duration_since(now).min(NAP));
        let wake = strong.instances.wake.clone();
        // Not holding the client while asleep.
        drop(strong);
        let _ = tokio::time::timeout(sleep, wake.notified()).await;
    }
}

/// The reqwest client for a certificate: HTTP/2 keep-alive over TLS 1.3.
fn build_client(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
    request_timeout: Duration,
) -> Result<Client, BackendError> {
    let tls = Arc::new(tls_config(ca_pem, cert_pem, key_pem)?);
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        // The backend never redirects; a redirect followed would send a
        // hello somewhere the resend rule (SPEC.md §10.2) never judged.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(request_timeout)
        .connect_timeout(request_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .http2_keep_alive_while_idle(true)
        .build()
        .map_err(|e| BackendError::Config(e.to_string()))?;
    Ok(Client { http, tls })
}

fn tls_config(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<rustls::ClientConfig, BackendError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| BackendError::Config(format!("{what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(ca.map_err(|e| bad("backend CA", &e))?)
            .map_err(|e| bad("backend CA", &e))?;
    }
    if roots.is_empty() {
        return Err(BackendError::Config(
            "backend CA: no certificate in the PEM".into(),
        ));
    }
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("client certificate", &e))?;
    if certs.is_empty() {
        return Err(BackendError::Config(
            "client certificate: no certificate in the PEM".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad("identity key", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad("TLS", &e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                BackendError::Config(
                    "the client certificate is not for this gateway's identity key".into(),
                )
            }
            e => bad("client certificate", &e),
        })
        .map(|mut c| {
            c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            c
        })
}

impl Inner {
    /// Fails fast while every instance's circuit is open.
    fn fail_fast(&self) -> Result<(), BackendError> {
        self.instances
            .pick(&[])
            .map(|_| ())
            .ok_or(BackendError::CircuitOpen)
    }

    /// The client current now.
    fn client(&self) -> Client {
        self.client
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Why a request to `url` failed ([`classify`]). A connection that
    /// died on the backend's TLS alert often tells its requests only that
    /// it closed (HTTP/2 ends them with "connection closed", without the
    /// cause): then one TLS connection of our own, with the same
    /// configuration, asks the backend's TLS layer, and its answer is the
    /// failure.
    async fn failure(
        &self,
        e: &reqwest::Error,
        url: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> BackendError {
        let found = classify(e, url);
        if !matches!(found, BackendError::Unavailable(_)) || e.is_timeout() {
            return found;
        }
        match tokio::time::timeout(self.request_timeout, probe(url, tls)).await {
            Ok(Some(failure)) => failure,
            _ => found,
        }
    }

    /// Whether instance `i` answers `GET /readyz` (it serves, and its
    /// database answers).
    async fn probe_ready(&self, i: usize) -> bool {
        let url = format!("{}{}", self.instances.url(i), route::READYZ);
        let sent = self
            .client()
            .http
            .get(url)
            .timeout(self.request_timeout)
            .send()
            .await;
        matches!(sent, Ok(r) if r.status().is_success())
    }

    /// Sends the request `build` makes for an instance's base URL to the
    /// instance this gateway prefers among those that answer; if that one
    /// fails to answer, to the next, as `resend` allows, each instance at
    /// most once.
    async fn send<Resp: serde::de::DeserializeOwned + serde::Serialize>(
        &self,
        resend: Resend,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<(Resp, Option<WallTime>), BackendError> {
        let mut tried = Vec::new();
        loop {
            let Some(i) = self.instances.pick(&tried) else {
                return Err(BackendError::CircuitOpen);
            };
            tried.push(i);
            let client = self.client();
            let url = self.instances.url(i);
            let request = self.attempt(build(&client.http, url), url, client.tls);
            // A repeatable request (the feed's long-poll above all) leaves an
            // instance that another request found down meanwhile, for the
            // next one, instead of waiting out its own timeout there; a vouch
            // never does. With one instance there is nowhere to go: the
            // request goes on (a connection opened before a certificate
            // swap that the backend refuses still answers).
            let attempt = if resend == Resend::Always
                && self.instances.len() > 1
                && self.instances.is_up(i)
            {
                let down = self.instances.went_down(i);
                tokio::select! {
                    a = request => a,
                    () = down => Attempt {
                        result: Err(BackendError::Unavailable(format!(
                            "{url} was found down while this request waited"
                        ))),
                        instance_failed: true,
                        undelivered: true,
                        shed: false,
                    },
                }
            } else {
                request.await
            };
            if !attempt.instance_failed {
                self.instances.answered(i);
                // Shed before any work (503 `overloaded`): the instance is
                // up but full; another may have room.
                if attempt.shed
                    && tried.len() < self.instances.len()
                    && self.instances.pick(&tried).is_some()
                {
                    continue;
                }
                return attempt.result;
            }
            let Err(e) = attempt.result else {
                return attempt.result;
            };
            self.instances.failed(i, &e);
            let another = tried.len() < self.instances.len()
                && (resend == Resend::Always || attempt.undelivered);
            if !another || self.instances.pick(&tried).is_none() {
                return Err(e);
            }
            tracing::debug!(backend = url, error = %e, "request sent to the next backend instance");
        }
    }

    async fn post<Req: serde::Serialize, Resp: serde::de::DeserializeOwned + serde::Serialize>(
        &self,
        path: &str,
        body: &Req,
        resend: Resend,
    ) -> Result<Resp, BackendError> {
        self.send(resend, |http, url| {
            http.post(format!("{url}{path}"))
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(encode_body(body))
        })
        .await
        .map(|(r, _)| r)
    }

    async fn get<Resp: serde::de::DeserializeOwned + serde::Serialize>(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<Resp, BackendError> {
        self.get_dated(path, timeout).await.map(|(r, _)| r)
    }

    /// A GET, with the answer's `Date`. Reading is always repeatable.
    async fn get_dated<Resp: serde::de::DeserializeOwned + serde::Serialize>(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<(Resp, Option<WallTime>), BackendError> {
        self.send(Resend::Always, |http, url| {
            http.get(format!("{url}{path}")).timeout(timeout)
        })
        .await
    }

    /// Sends `req` to the instance at `url` (built on the client whose TLS
    /// configuration is `tls`).
    async fn attempt<Resp: serde::de::DeserializeOwned + serde::Serialize>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Attempt<(Resp, Option<WallTime>)> {
        let failed = |e: BackendError, undelivered: bool| Attempt {
            instance_failed: e.is_unavailable(),
            undelivered,
            shed: false,
            result: Err(e),
        };
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) => {
                // Whether this request can have reached the handlers is
                // decided from its own error only: its connection or TLS
                // handshake failed, or the backend refused this gateway's
                // certificate (a refusal made before any HTTP is read). A
                // connection that closed or reset after the request was
                // written, or a record that did not decrypt, may have
                // followed a committed decision: the probe below only
                // explains the failure, it never makes it "undelivered".
                let direct = classify(&e, url);
                let undelivered = e.is_connect()
                    || matches!(
                        direct,
                        BackendError::ConnectionRefused(_)
                            | BackendError::Tls(
                                TlsFailure::ClientCertificateExpired
                                    | TlsFailure::ClientCertificateUnknownCa
                                    | TlsFailure::ClientCertificateNotVerified
                                    | TlsFailure::ClientCertificateRejected(_)
                            )
                    );
                let e = self.failure(&e, url, tls).await;
                return failed(e, undelivered);
            }
        };
        let date = server_date(resp.headers());
        let status = resp.status();
        let bytes = match resp.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => return failed(self.failure(&e, url, tls).await, false),
        };
        if status.as_u16() == 503
            && matches!(
                refused(503, &bytes),
                BackendError::Refused {
                    code: Some(ErrorCode::Overloaded),
                    ..
                }
            )
        {
            // Shed by the instance's load limit before any work: an
            // answer (the instance is up), and nothing was judged, so
            // another instance may take it (SPEC.md §10.2).
            return Attempt {
                result: Err(BackendError::Unavailable(format!(
                    "HTTP {status} overloaded"
                ))),
                instance_failed: false,
                undelivered: true,
                shed: true,
            };
        }
        if status.as_u16() == 429 {
            // This gateway's budget at that instance (SPEC.md §10.2): an
            // answer, the instance is up; the caller retries later.
            return Attempt {
                result: Err(BackendError::Unavailable(format!("HTTP {status}"))),
                instance_failed: false,
                undelivered: true,
                shed: false,
            };
        }
        if status.is_server_error() {
            // Any other 5xx, a 503 `timeout` or `unavailable` included, may
            // come after the instance committed its decisions (a deadline
            // that fired while the group commit ran, a commit whose
            // acknowledgment was lost): never "undelivered".
            return failed(BackendError::Unavailable(format!("HTTP {status}")), false);
        }
        let result = if !status.is_success() {
            Err(refused(status.as_u16(), &bytes))
        } else {
            decode_body::<Resp>(&bytes)
                .map(|r| (r, date))
                .map_err(|e| BackendError::Malformed(e.to_string()))
        };
        Attempt {
            result,
            instance_failed: false,
            undelivered: false,
            shed: false,
        }
    }
}

/// Opens one TLS connection to the backend at `url` with `tls` (HTTP/1.1
/// only), asks `GET /healthz`, and says how TLS failed, if it did: a
/// refused connection, this gateway's refusal of the backend's
/// certificate, or the backend's alert about this gateway's certificate
/// (which TLS 1.3 delivers after the handshake, on the first read).
/// `None`: TLS worked (or the URL is not one to probe).
async fn probe(url: &str, tls: Arc<rustls::ClientConfig>) -> Option<BackendError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let parsed = reqwest::Url::parse(url).ok()?;
    if parsed.scheme() != "https" {
        return None;
    }
    let host = parsed
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = parsed.port_or_known_default()?;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).ok()?;
    let tcp = match tokio::net::TcpStream::connect((host, port)).await {
        Ok(tcp) => tcp,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Some(BackendError::ConnectionRefused(url.to_owned()));
        }
        Err(_) => return None,
    };
    let mut config = (*tls).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls_failure = |e: std::io::Error| {
        e.get_ref()
            .and_then(|i| i.downcast_ref::<rustls::Error>())
            .map(|r| BackendError::Tls(TlsFailure::of(r)))
    };
    let mut stream = match tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Ok(s) => s,
        Err(e) => return tls_failure(e),
    };
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return tls_failure(e);
    }
    let mut byte = [0u8; 1];
    match stream.read(&mut byte).await {
        Ok(_) => None,
        Err(e) => tls_failure(e),
    }
}

/// The backend's refusal of a request (a 4xx answer): its status, and the
/// stable code of its JSON error body (`{"error": {"code": …}}`).
pub fn refused(status: u16, body: &[u8]) -> BackendError {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().and_then(ErrorCode::parse));
    BackendError::Refused { status, code }
}

/// The time in an answer's `Date` header (RFC 9110 §6.6.1), if it has a
/// valid one.
fn server_date(headers: &reqwest::header::HeaderMap) -> Option<WallTime> {
    let value = headers.get(reqwest::header::DATE)?.to_str().ok()?;
    httpdate::parse_http_date(value)
        .ok()
        .map(WallTime::from_system)
}

/// Gathers vouch requests that arrive within `window` into one batch.
async fn batcher(inner: Arc<Inner>, mut rx: mpsc::Receiver<Pending>, window: Duration) {
    while let Some(first) = rx.recv().await {
        // Wait for a free slot first: while every slot is taken, requests
        // queue in the channel and the next batch takes them all at once.
        let Ok(permit) = inner.slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + window;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => batch.push(p),
                _ => break,
            }
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if batch.len() == 1 {
                let Some((req, reply)) = batch.pop() else {
                    return;
                };
                let _ = reply.send(inner.post(route::VOUCH, &req, Resend::IfUndelivered).await);
                return;
            }
            let (reqs, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let n = reqs.len();
            let result: Result<VouchBatchAnswer, _> = inner
                .post(
                    route::VOUCH_BATCH,
                    &VouchBatchRequest { items: reqs },
                    Resend::IfUndelivered,
                )
                .await;
            match result {
                Ok(answer) if answer.items.len() == n => {
                    for (reply, item) in replies.into_iter().zip(answer.items) {
                        let _ = reply.send(Ok(item));
                    }
                }
                Ok(answer) => {
                    let e = BackendError::Malformed(format!(
                        "{} answers for {n} requests",
                        answer.items.len()
                    ));
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

impl BackendApi for HttpBackend {
    async fn vouch(&self, req: VouchRequest) -> Result<VouchAnswer, BackendError> {
        // Fail fast while the circuit is open: do not even queue.
        self.inner.fail_fast()?;
        let (tx, rx) = oneshot::channel();
        self.batch_tx
            .send((req, tx))
            .await
            .map_err(|_| BackendError::Unavailable("client stopped".into()))?;
        rx.await
            .map_err(|_| BackendError::Unavailable("client stopped".into()))?
    }

    async fn report(&self, mut report: SessionReport) -> Result<SessionReportAnswer, BackendError> {
        let asked = std::time::Instant::now();
        let _permit = self
            .inner
            .slots
            .acquire()
            .await
            .map_err(|_| BackendError::Unavailable("client stopped".into()))?;
        // The ages were measured when the report was made: add the wait for
        // a slot, and for the instances tried before, so that they hold when
        // it is sent (SPEC.md §10.5).
        let ages = std::mem::take(&mut report.times);
        self.inner
            .send(Resend::Always, |http, url| {
                let waited = u32::try_from(asked.elapsed().as_millis()).unwrap_or(u32::MAX);
                let report = SessionReport {
                    events: report.events.clone(),
                    times: ages
                        .iter()
                        .map(|t| EventTimes {
                            started_ms_ago: t.started_ms_ago.saturating_add(waited),
                            heard_ms_ago: t.heard_ms_ago.saturating_add(waited),
                        })
                        .collect(),
                };
                http.post(format!("{url}{}", route::SESSIONS))
                    .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                    .body(encode_body(&report))
            })
            .await
            .map(|(r, _)| r)
    }

    async fn feed(&self, after: u64) -> Result<FeedBatch, BackendError> {
        self.feed_dated(after).await.map(|a| a.batch)
    }

    async fn feed_now(&self, after: u64) -> Result<FeedBatch, BackendError> {
        self.feed_now_dated(after).await.map(|a| a.batch)
    }

    async fn feed_dated(&self, after: u64) -> Result<FeedAnswer, BackendError> {
        // The wait is named, shorter than this client's own timeout: a
        // backend whose `feed_wait_max_ms` is longer would otherwise hold
        // every quiet poll past it, and the instance would look down.
        let wait_ms = self
            .inner
            .feed_timeout
            .saturating_sub(FEED_TIMEOUT_MARGIN)
            .as_millis();
        let (batch, server_time) = self
            .inner
            .get_dated(
                &format!("{}?after={after}&wait_ms={wait_ms}", route::FEED),
                self.inner.feed_timeout,
            )
            .await?;
        Ok(FeedAnswer { batch, server_time })
    }

    async fn feed_now_dated(&self, after: u64) -> Result<FeedAnswer, BackendError> {
        let (batch, server_time) = self
            .inner
            .get_dated(
                &format!("{}?after={after}&wait_ms=0", route::FEED),
                self.inner.request_timeout,
            )
            .await?;
        Ok(FeedAnswer { batch, server_time })
    }
    async fn anchor_updates(&self, after: u32) -> Result<AnchorUpdateBatch, BackendError> {
        // Fail fast while the circuit is open, before waiting for a slot.
        self.inner.fail_fast()?;
        let _permit = self
            .inner
            .slots
            .acquire()
            .await
            .map_err(|_| BackendError::Unavailable("client stopped".into()))?;
        self.inner
            .get(
                &format!("{}?after={after}", route::ANCHOR_UPDATES),
                self.inner.request_timeout,
            )
            .await
    }

    async fn renew_certificate(&self) -> Result<CertificateIssued, BackendError> {
        self.inner.fail_fast()?;
        let _permit = self
            .inner
            .slots
            .acquire()
            .await
            .map_err(|_| BackendError::Unavailable("client stopped".into()))?;
        self.inner
            .post(route::CERTIFICATE, &CertificateRenewal, Resend::Always)
            .await
    }

    fn use_certificate(&self, cert_pem: &[u8]) -> Result<(), BackendError> {
        let client = build_client(
            &self.inner.ca_pem,
            cert_pem,
            &self.inner.key_pem,
            self.inner.request_timeout,
        )?;
        *self
            .inner
            .client
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = client;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod failover_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_errors_name_what_happened() {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        let cases = [
            (
                E::AlertReceived(A::CertificateExpired),
                TlsFailure::ClientCertificateExpired,
            ),
            (
                E::AlertReceived(A::UnknownCA),
                TlsFailure::ClientCertificateUnknownCa,
            ),
            (
                E::AlertReceived(A::DecryptError),
                TlsFailure::ClientCertificateNotVerified,
            ),
            (
                E::AlertReceived(A::BadCertificate),
                TlsFailure::ClientCertificateRejected("BadCertificate".into()),
            ),
            (
                E::InvalidCertificate(C::UnknownIssuer),
                TlsFailure::BackendNotFromPinnedCa,
            ),
            (
                E::InvalidCertificate(C::Expired),
                TlsFailure::BackendCertificateExpired,
            ),
            (
                E::InvalidCertificate(C::NotValidYet),
                TlsFailure::BackendCertificateExpired,
            ),
            (
                E::InvalidCertificate(C::NotValidForName),
                TlsFailure::BackendNameMismatch,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(TlsFailure::of(&e), want, "{e:?}");
            let text = BackendError::Tls(want).to_string();
            assert!(!text.contains("error sending request"), "{text}");
            assert!(BackendError::Tls(TlsFailure::of(&e)).is_unavailable());
        }
        assert!(TlsFailure::ClientCertificateUnknownCa
            .to_string()
            .contains("issued by another backend"));
        assert!(TlsFailure::BackendNameMismatch
            .to_string()
            .contains("--san"));
    }

    #[test]
    fn the_date_header_gives_the_backends_time() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(server_date(&h), None);
        h.insert(
            reqwest::header::DATE,
            reqwest::header::HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(server_date(&h), Some(WallTime(784_111_777_000)));
        h.insert(
            reqwest::header::DATE,
            reqwest::header::HeaderValue::from_static("yesterday"),
        );
        assert_eq!(server_date(&h), None);
    }
}
