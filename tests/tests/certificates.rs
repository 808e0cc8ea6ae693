//! The gateway's client certificate (issue 19): renewal over mutual TLS
//! with the real backend and the swap of the backend client, the renewal's
//! trigger on the injected clock, refusals of revoked and suspended
//! gateways, and what a gateway says about a certificate that is wrong, at
//! start and on every failed request.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use vouch_backend::pki;
use vouch_gateway::backend_client::{
    BackendApi, BackendError, HttpBackend, HttpBackendConfig, TlsFailure,
};
use vouch_gateway::certificate::{
    self, CertificateError, CertificateInfo, CertificateWatch, Renewal, RenewalError, RenewalPolicy,
};
use vouch_gateway::clock::{Clock, TokioClock, WallTime};
use vouch_gateway::metrics::Metrics;
use vouch_proto::keys::IdentityKey;
use vouch_proto::wire::backend::{
    CertificateIssued, ErrorCode, FeedBatch, FeedChange, SessionReport, SessionReportAnswer,
    VouchAnswer, VouchRequest,
};
use vouch_tests::{Backend, Device, Gateway};

const DAY: Duration = Duration::from_secs(86_400);

/// The gateway API client as the daemon builds it, for `key` with `cert`.
fn http_backend(url: &str, ca_pem: &str, cert_pem: &str, key: &IdentityKey) -> HttpBackend {
    HttpBackend::new(HttpBackendConfig {
        urls: vec![url.to_owned()],
        shuffle: false,
        metrics: None,
        ca_pem: ca_pem.as_bytes().to_vec(),
        cert_pem: cert_pem.as_bytes().to_vec(),
        key_pem: zeroize::Zeroizing::new(key.to_pkcs8_pem().expect("pem").as_bytes().to_vec()),
        request_timeout: Duration::from_secs(5),
        feed_timeout: Duration::from_secs(40),
        batch_window: Duration::from_millis(2),
        // Every failure here is one the test asks for: never fail fast.
        breaker_threshold: 1000,
        breaker_cooldown: Duration::from_millis(10),
    })
    .expect("backend client")
}

fn issue_between(
    ca: &pki::CaMaterial,
    key: &IdentityKey,
    not_before: SystemTime,
    not_after: SystemTime,
) -> String {
    pki::issue_gateway_cert_between(ca, &key.public_key(), None, not_before, not_after)
        .expect("certificate")
        .pem
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_renews_its_certificate_over_mutual_tls_and_keeps_working() {
    let backend = Backend::start().await;
    let gateway = Gateway::start(&backend, "plant-1").await;
    let device = Device::enroll(&backend, "meters").await;
    backend
        .allow("group:meters", "site:plant-1", "telemetry")
        .await;
    let mut dev = device.run(&gateway).await;
    assert!(!dev.established().await, "a full handshake");
    dev.stop().await;

    let before = gateway.certificate();
    let after = gateway.renew_certificate().await.expect("renewed");
    assert_eq!(after.key, gateway.key);
    assert!(after.not_after >= before.not_after);
    assert_eq!(gateway.certificate(), after);
    // The backend records the new expiry and audits the renewal.
    let key = gateway.key;
    let (_, v) = backend
        .admin("GET", &format!("/v1/admin/gateways/{key}"), None)
        .await;
    assert_eq!(
        v["certificate_expires_ms"].as_u64(),
        Some(after.not_after.0),
        "{v}"
    );
    let (_, audit) = backend
        .admin(
            "GET",
            &format!("/v1/admin/audit?gateway={key}&action=gateway_certificate_renew"),
            None,
        )
        .await;
    assert_eq!(audit["items"].as_array().map(Vec::len), Some(1), "{audit}");

    // New handshakes go through the swapped client, without a restart.
    let second = Device::enroll(&backend, "meters").await;
    let mut dev = second.run(&gateway).await;
    assert!(!dev.established().await, "a full handshake after the swap");
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_suspended_gateways_cannot_renew_and_keep_their_certificate() {
    let backend = Backend::start().await;
    let gateway = Gateway::start(&backend, "plant-1").await;
    let before = gateway.certificate();
    for action in ["suspend", "revoke"] {
        backend.gateway_action(&gateway.key, action).await;
        match gateway.renew_certificate().await {
            Err(RenewalError::Backend(BackendError::Refused { status, code })) => {
                assert_eq!((status, code), (403, Some(ErrorCode::GatewayNotActive)));
            }
            other => panic!("a {action}ed gateway renewed: {other:?}"),
        }
        assert_eq!(gateway.certificate(), before);
        if action == "suspend" {
            backend.gateway_action(&gateway.key, "reinstate").await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_use_the_swapped_certificate_and_a_request_in_flight_finishes() {
    let backend = Backend::start().await;
    let key = IdentityKey::from_seed(&[42; 32]);
    let cert = backend.enroll_gateway(&key.public_key(), "s").await;
    let client = http_backend(&backend.url(), backend.ca_pem(), &cert, &key);
    let device = Device::enroll(&backend, "meters").await;
    let head = client.feed_now(0).await.expect("feed head").next;

    // A long-poll of the feed, started on the current certificate.
    let poller = client.clone();
    let poll = poller.feed(head);
    tokio::pin!(poll);
    // Started (its request holds the client of this moment), not answered.
    let _ = tokio::time::timeout(Duration::from_millis(300), &mut poll).await;

    // Swapped to a certificate for the same key from another backend's CA:
    // new connections present it, and this backend refuses them.
    let foreign = pki::issue_gateway_cert(
        &pki::generate_ca().expect("ca"),
        &key.public_key(),
        None,
        pki::DEFAULT_GATEWAY_LIFETIME,
    )
    .expect("certificate")
    .pem;
    client
        .use_certificate(foreign.as_bytes())
        .expect("a certificate for this key");
    assert_eq!(
        client.anchor_updates(0).await,
        Err(BackendError::Tls(TlsFailure::ClientCertificateNotVerified))
    );
    // The long-poll started before the swap is unaffected: it delivers.
    backend.peripheral_action(&device.id, "revoke").await;
    let batch: FeedBatch = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .expect("the long-poll answers")
        .expect("on the old connection");
    assert!(batch
        .events
        .iter()
        .any(|e| e.change == FeedChange::PeripheralRevoked(device.id)));
    // And back: the good certificate works again at once.
    client.use_certificate(cert.as_bytes()).expect("swap");
    assert!(client.anchor_updates(0).await.is_ok());
}

#[test]
fn each_certificate_problem_is_named_at_start() {
    let ca = pki::generate_ca().expect("ca");
    let key = IdentityKey::from_seed(&[43; 32]);
    let now = SystemTime::now();
    let wall = WallTime::from_system(now);
    let check = |pem: &str| {
        certificate::check(
            pem.as_bytes(),
            ca.cert_pem.as_bytes(),
            &key.public_key(),
            wall,
        )
    };

    let good = issue_between(&ca, &key, now - DAY, now + 90 * DAY);
    assert_eq!(check(&good).expect("valid").key, key.public_key());

    let expired = check(&issue_between(&ca, &key, now - 2 * DAY, now - DAY)).unwrap_err();
    assert!(matches!(expired, CertificateError::Expired { .. }));
    assert!(expired.to_string().contains("expired at"), "{expired}");

    let early = check(&issue_between(&ca, &key, now + DAY, now + 2 * DAY)).unwrap_err();
    assert!(matches!(early, CertificateError::NotYetValid { .. }));
    assert!(early.to_string().contains("not valid before"), "{early}");

    let other_ca = pki::generate_ca().expect("ca");
    let foreign = check(&issue_between(&other_ca, &key, now - DAY, now + DAY)).unwrap_err();
    assert_eq!(foreign, CertificateError::ForeignCa);
    assert!(
        foreign
            .to_string()
            .contains("not issued by the pinned backend CA"),
        "{foreign}"
    );

    let stranger = IdentityKey::from_seed(&[44; 32]);
    let mismatch = check(&issue_between(&ca, &stranger, now - DAY, now + DAY)).unwrap_err();
    assert_eq!(
        mismatch,
        CertificateError::KeyMismatch {
            certificate: stranger.public_key(),
            identity: key.public_key(),
        }
    );
    assert!(
        mismatch.to_string().contains("this gateway's identity key"),
        "{mismatch}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failed_request_says_what_happened() {
    let backend = Backend::start().await;
    let ca = backend.danger_ca();
    let key = IdentityKey::from_seed(&[45; 32]);
    let good = backend.enroll_gateway(&key.public_key(), "s").await;
    let now = SystemTime::now();
    let url = backend.url();
    let says = |e: &BackendError, what: &str| {
        let text = e.to_string();
        assert!(text.contains(what), "{text}");
        assert!(!text.contains("error sending request"), "{text}");
    };

    // The backend refuses an expired client certificate.
    let expired = issue_between(&ca, &key, now - 2 * DAY, now - DAY);
    let c = http_backend(&url, backend.ca_pem(), &expired, &key);
    for _ in 0..2 {
        let e = c.anchor_updates(0).await.unwrap_err();
        assert_eq!(e, BackendError::Tls(TlsFailure::ClientCertificateExpired));
        says(&e, "expired");
    }
    // … and one from another backend's CA.
    let foreign = pki::issue_gateway_cert(
        &pki::generate_ca().expect("ca"),
        &key.public_key(),
        None,
        pki::DEFAULT_GATEWAY_LIFETIME,
    )
    .expect("certificate")
    .pem;
    let c = http_backend(&url, backend.ca_pem(), &foreign, &key);
    let e = c.feed_now(0).await.unwrap_err();
    assert_eq!(
        e,
        BackendError::Tls(TlsFailure::ClientCertificateNotVerified)
    );
    says(&e, "another backend's CA");

    // The gateway refuses a backend whose certificate is not from the CA it pins.
    let other = pki::generate_ca().expect("ca");
    let c = http_backend(&url, &other.cert_pem, &good, &key);
    let e = c.anchor_updates(0).await.unwrap_err();
    assert_eq!(e, BackendError::Tls(TlsFailure::BackendNotFromPinnedCa));
    says(&e, "pinned CA");

    // Nothing listens.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let nobody = format!("https://127.0.0.1:{closed}");
    let c = http_backend(&nobody, backend.ca_pem(), &good, &key);
    let e = c.anchor_updates(0).await.unwrap_err();
    assert_eq!(e, BackendError::ConnectionRefused(nobody.clone()));
    says(&e, "refused the connection");

    // A key that does not match the certificate: the client is not built.
    let stranger = IdentityKey::from_seed(&[46; 32]);
    let Err(e) = HttpBackend::new(HttpBackendConfig {
        urls: vec![url.clone()],
        shuffle: false,
        metrics: None,
        ca_pem: backend.ca_pem().as_bytes().to_vec(),
        cert_pem: good.as_bytes().to_vec(),
        key_pem: zeroize::Zeroizing::new(stranger.to_pkcs8_pem().expect("pem").as_bytes().to_vec()),
        request_timeout: Duration::from_secs(5),
        feed_timeout: Duration::from_secs(5),
        batch_window: Duration::from_millis(2),
        breaker_threshold: 3,
        breaker_cooldown: Duration::from_millis(10),
    }) else {
        panic!("a client with another key's certificate was built");
    };
    says(&e, "not for this gateway's identity key");

    // And the good certificate works.
    let c = http_backend(&url, backend.ca_pem(), &good, &key);
    assert!(c.anchor_updates(0).await.is_ok());
}

/// A backend that only renews certificates: for `key`, from `ca`, valid
/// for 90 days from its clock's wall time.
struct Renewer {
    ca: pki::CaMaterial,
    key: IdentityKey,
    clock: TokioClock,
    renewals: AtomicUsize,
    used: Mutex<Vec<Vec<u8>>>,
}

impl BackendApi for Renewer {
    async fn vouch(&self, _: VouchRequest) -> Result<VouchAnswer, BackendError> {
        Err(BackendError::Unsupported("vouch"))
    }
    async fn report(&self, _: SessionReport) -> Result<SessionReportAnswer, BackendError> {
        Err(BackendError::Unsupported("reports"))
    }
    async fn feed(&self, _: u64) -> Result<FeedBatch, BackendError> {
        Err(BackendError::Unsupported("feed"))
    }
    async fn renew_certificate(&self) -> Result<CertificateIssued, BackendError> {
        self.renewals.fetch_add(1, Ordering::SeqCst);
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(self.clock.wall().0);
        let issued = pki::issue_gateway_cert_between(
            &self.ca,
            &self.key.public_key(),
            None,
            now - Duration::from_secs(3600),
            now + 90 * DAY,
        )
        .expect("certificate");
        Ok(CertificateIssued {
            certificate_pem: issued.pem,
            not_after_ms: u64::try_from(issued.not_after_ms).expect("after 1970"),
        })
    }
    fn use_certificate(&self, cert_pem: &[u8]) -> Result<(), BackendError> {
        self.used.lock().expect("lock").push(cert_pem.to_vec());
        Ok(())
    }
}

/// The gauge `vouch_gateway_certificate_expiry_timestamp_seconds`.
fn expiry_gauge(metrics: &Metrics) -> Option<u64> {
    metrics.render().lines().find_map(|l| {
        l.strip_prefix("vouch_gateway_certificate_expiry_timestamp_seconds ")
            .and_then(|v| v.parse().ok())
    })
}

#[tokio::test(start_paused = true)]
async fn renewal_starts_once_a_third_of_the_lifetime_is_left_on_the_injected_clock() {
    let ca = pki::generate_ca().expect("ca");
    let key = IdentityKey::from_seed(&[47; 32]);
    // A certificate for days 0 to 90; the gateway starts on day 50.
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let first = issue_between(&ca, &key, t0, t0 + 90 * DAY);
    let clock = TokioClock::with_wall(WallTime::from_system(t0 + 50 * DAY));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("client.pem");
    std::fs::write(&file, &first).expect("write");
    let watch = CertificateWatch::new(CertificateInfo::parse(first.as_bytes()).expect("parse"));
    let backend = Arc::new(Renewer {
        ca: pki::CaMaterial {
            cert_pem: ca.cert_pem.clone(),
            key_pem: ca.key_pem.clone(),
        },
        key: IdentityKey::from_seed(&[47; 32]),
        clock: clock.clone(),
        renewals: AtomicUsize::new(0),
        used: Mutex::new(Vec::new()),
    });
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let follower = tokio::spawn(certificate::follow(
        backend.clone(),
        Renewal {
            watch: watch.clone(),
            file: Some(file.clone()),
            ca_pem: ca.cert_pem.as_bytes().to_vec(),
            identity: key.public_key(),
            policy: RenewalPolicy::default(),
        },
        clock.clone(),
        metrics.clone(),
        shutdown,
    ));

    // Until day 59 more than a third (30 days) is left: no renewal; the
    // expiry is exposed.
    tokio::time::sleep(9 * DAY).await;
    assert_eq!(backend.renewals.load(Ordering::SeqCst), 0);
    let day90 = t0 + 90 * DAY;
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
    };
    assert_eq!(expiry_gauge(&metrics), Some(secs(day90)));
    assert_eq!(std::fs::read_to_string(&file).expect("file"), first);

    // By day 68 it renewed once: at day 60 at the earliest, and the jitter
    // delays it by at most a quarter of the 30 days.
    tokio::time::sleep(9 * DAY).await;
    assert_eq!(backend.renewals.load(Ordering::SeqCst), 1);
    let new = watch.info();
    assert!(new.not_after.0 >= WallTime::from_system(day90 + 60 * DAY).0);
    assert!(new.not_after.0 <= WallTime::from_system(day90 + 68 * DAY).0);
    // Written atomically, private, and swapped into the client.
    let written = std::fs::read_to_string(&file).expect("file");
    assert_eq!(
        CertificateInfo::parse(written.as_bytes()).expect("parse"),
        new
    );
    assert_eq!(
        std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(*backend.used.lock().expect("lock"), [written.into_bytes()]);
    assert_eq!(expiry_gauge(&metrics), Some(new.not_after.0 / 1000));
    assert_eq!(metrics.certificate_renewals("ok"), 1);
    assert_eq!(watch.renewals(), 1);

    let _ = stop.send(true);
    follower.await.expect("the follower ends at shutdown");
}
