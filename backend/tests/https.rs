//! End to end over real HTTPS on loopback: TLS 1.3, the gateway's client
//! certificate from the backend CA, a real peripheral and a real gateway
//! state machine, keep-alive; gateway suspension and revocation; the feed.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{gateway_takes, Backend, Db, Device};
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject;
use vouch_backend::server::{self, Transport};
use vouch_backend::{app, pki};
use vouch_proto::keys::IdentityKey;
use vouch_proto::testing::rng;
use vouch_proto::wire::backend::{
    decode_body, encode_body, route, CertificateIssued, CertificateRenewal, FeedBatch, FeedChange,
    Refusal, VouchAnswer, VouchRequest, CONTENT_TYPE,
};
use vouch_proto::wire::MAX_HANDSHAKE_MESSAGE;
use vouch_proto::Timestamp;

on_both!(
    gateway_vouches_over_mutual_tls_and_the_peripheral_establishes,
    suspended_and_revoked_gateways_are_refused_at_once,
    feed_over_https_delivers_a_revocation_within_a_second,
    a_gateway_renews_its_certificate_for_the_configured_lifetime_and_the_new_one_works,
    suspended_revoked_and_unknown_gateways_cannot_renew,
    rejected_client_certificates_are_counted_by_reason,
    a_reissued_server_certificate_keeps_gateways_that_pin_the_ca_working,
);

const LIFETIME: Duration = pki::DEFAULT_GATEWAY_LIFETIME;
const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("ms")
}

/// `POST /v1/certificate` with `client`: the status and the body.
async fn post_renewal(c: &reqwest::Client, url: &str) -> (StatusCode, Vec<u8>) {
    let res = c
        .post(format!("{url}{}", route::CERTIFICATE))
        .header("content-type", CONTENT_TYPE)
        .body(encode_body(&CertificateRenewal))
        .send()
        .await
        .expect("request");
    let s = res.status();
    (s, res.bytes().await.expect("body").to_vec())
}

/// The stable error code of a JSON error body.
fn error_code(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).expect("JSON error");
    v["error"]["code"].as_str().expect("code").to_owned()
}

/// The gateway's record as the admin API lists it.
async fn listed(b: &Backend, gw: &IdentityKey) -> serde_json::Value {
    let (_, v) = b.admin("GET", "/v1/admin/gateways", None).await;
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|g| g["public_key"] == gw.public_key().to_string())
        .cloned()
        .expect("listed")
}

struct Served {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let r = tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("graceful shutdown finishes");
        r.expect("task").expect("serve");
    }
}

async fn serve(b: &Backend) -> Served {
    let data = vouch_backend::datadir::DataDir::load(b.dir.path()).expect("load");
    let (cert, key) = data.server_tls().expect("server tls");
    let cfg = pki::server_config(
        &data.ca.cert_pem,
        &cert,
        &key,
        None,
        b.state.metrics.client_cert_rejections(),
    )
    .expect("tls config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(
        listener,
        app(b.state.clone()),
        Transport::Tls(Arc::new(cfg)),
        async move {
            let _ = rx.await;
        },
    ));
    Served {
        url: format!("https://127.0.0.1:{}", addr.port()),
        stop: Some(tx),
        task,
    }
}

fn ca_pem(b: &Backend) -> String {
    std::fs::read_to_string(b.dir.path().join("ca.pem")).expect("ca")
}

fn client(ca: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let cfg = pki::client_config(ca, identity).expect("client tls");
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

async fn post_vouch(c: &reqwest::Client, url: &str, req: &VouchRequest) -> (StatusCode, Vec<u8>) {
    let res = c
        .post(format!("{url}/v1/vouch"))
        .header("content-type", CONTENT_TYPE)
        .body(encode_body(req))
        .send()
        .await
        .expect("request");
    let s = res.status();
    (s, res.bytes().await.expect("body").to_vec())
}

async fn gateway_vouches_over_mutual_tls_and_the_peripheral_establishes(db: Db) {
    let b = Backend::new(&db).await;
    let gw = IdentityKey::from_seed(&[100; 32]);
    let cert = b.enroll_gateway(&gw, None).await;
    b.allow("any", "any", "telemetry").await;
    let dev = Device::new(1);
    b.enroll_peripheral(&dev, None).await;
    let served = serve(&b).await;
    let ca = ca_pem(&b);
    let key_pem = gw.to_pkcs8_pem().expect("pem");
    let gateway = client(&ca, Some((&cert, &key_pem)));

    // Several handshakes on one keep-alive connection.
    for round in 0..3u64 {
        let (mut p, hello) = dev.hello(&b.anchors().await, round);
        let (mut g, req) = gateway_takes(&gw, &hello, 100 + round);
        let (s, bytes) = post_vouch(&gateway, &served.url, &req).await;
        assert_eq!(s, StatusCode::OK);
        let answer: VouchAnswer = decode_body(&bytes).expect("answer");
        assert!(matches!(answer, VouchAnswer::Vouched(_)), "{answer:?}");
        let now = Timestamp(1_000);
        g.handle_vouch(now, answer).expect("gateway");
        p.handle_input(now, &g.poll_transmit().expect("response"))
            .expect("peripheral");
        let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
        let n = p.poll_transmit(&mut buf).expect("finish");
        g.handle_input(now, &buf[..n], &mut rng(round))
            .expect("finish");
        assert!(p.is_established() && g.is_established());
    }

    // The admin API answers on the same listener with the token and no
    // client certificate.
    let admin = client(&ca, None);
    let res = admin
        .get(format!("{}/v1/admin/peripherals", served.url))
        .bearer_auth(&b.token)
        .send()
        .await
        .expect("admin");
    assert_eq!(res.status(), StatusCode::OK);
    // Without a client certificate the gateway API refuses.
    let (s, _) = post_vouch(
        &admin,
        &served.url,
        &gateway_takes(&gw, &dev.hello(&b.anchors().await, 9).1, 9).1,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A certificate from another CA does not even complete TLS.
    let other_ca = pki::generate_ca().expect("ca");
    let rogue_cert = pki::issue_gateway_cert(&other_ca, &gw.public_key(), None, LIFETIME)
        .expect("cert")
        .pem;
    let rogue = client(&ca, Some((&rogue_cert, &key_pem)));
    let r = rogue
        .post(format!("{}/v1/vouch", served.url))
        .header("content-type", CONTENT_TYPE)
        .body(vec![1])
        .send()
        .await;
    assert!(r.is_err(), "a certificate from a foreign CA was accepted");
    // Nor does a client that does not trust the backend CA.
    let stranger = client(&other_ca.cert_pem, None);
    assert!(stranger
        .get(format!("{}/healthz", served.url))
        .send()
        .await
        .is_err());
    served.stop().await;
}

async fn suspended_and_revoked_gateways_are_refused_at_once(db: Db) {
    let b = Backend::new(&db).await;
    let gw = IdentityKey::from_seed(&[100; 32]);
    let cert = b.enroll_gateway(&gw, None).await;
    b.allow("any", "any", "telemetry").await;
    let dev = Device::new(1);
    b.enroll_peripheral(&dev, None).await;
    let served = serve(&b).await;
    let gateway = client(&ca_pem(&b), Some((&cert, &gw.to_pkcs8_pem().expect("pem"))));
    let anchors = b.anchors().await;
    let mut seed = 0;
    let mut attempt = || {
        seed += 1;
        let (_, hello) = dev.hello(&anchors, seed);
        gateway_takes(&gw, &hello, 1000 + seed).1
    };
    let answer = |bytes: Vec<u8>| decode_body::<VouchAnswer>(&bytes).expect("answer");
    let (_, ok) = post_vouch(&gateway, &served.url, &attempt()).await;
    assert!(matches!(answer(ok), VouchAnswer::Vouched(_)));
    // Suspension takes effect on the very next request of the same
    // keep-alive connection.
    let key = gw.public_key();
    b.admin("POST", &format!("/v1/admin/gateways/{key}/suspend"), None)
        .await;
    let (_, r) = post_vouch(&gateway, &served.url, &attempt()).await;
    assert_eq!(answer(r), VouchAnswer::Refused(Refusal::Denied));
    let feed = gateway
        .get(format!("{}/v1/feed?after=0&wait_ms=0", served.url))
        .send()
        .await
        .expect("feed");
    assert_eq!(feed.status(), StatusCode::FORBIDDEN);
    b.admin("POST", &format!("/v1/admin/gateways/{key}/reinstate"), None)
        .await;
    let (_, r) = post_vouch(&gateway, &served.url, &attempt()).await;
    assert!(matches!(answer(r), VouchAnswer::Vouched(_)));
    b.admin("POST", &format!("/v1/admin/gateways/{key}/revoke"), None)
        .await;
    let (_, r) = post_vouch(&gateway, &served.url, &attempt()).await;
    assert_eq!(answer(r), VouchAnswer::Refused(Refusal::Denied));
    let reasons: Vec<String> = b
        .audit(&format!("gateway={key}&action=vouch"))
        .await
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        reasons,
        ["", "gateway_not_active", "", "gateway_not_active"]
    );
    served.stop().await;
}

async fn feed_over_https_delivers_a_revocation_within_a_second(db: Db) {
    let b = Backend::new(&db).await;
    let gw = IdentityKey::from_seed(&[100; 32]);
    let cert = b.enroll_gateway(&gw, None).await;
    let dev = Device::new(1);
    b.enroll_peripheral(&dev, None).await;
    let served = serve(&b).await;
    let gateway = client(&ca_pem(&b), Some((&cert, &gw.to_pkcs8_pem().expect("pem"))));
    let admin = client(&ca_pem(&b), None);
    // Subscribe, and make sure the subscription is waiting: the poll returns
    // only when an event exists, so ordering does not matter for correctness;
    // the measured latency is from the revocation call to delivery.
    let url = served.url.clone();
    let sub = tokio::spawn(async move {
        let res = gateway
            .get(format!("{url}/v1/feed?after=0&wait_ms=20000"))
            .send()
            .await
            .expect("feed");
        assert_eq!(res.status(), StatusCode::OK);
        let bytes = res.bytes().await.expect("body");
        (
            Instant::now(),
            decode_body::<FeedBatch>(&bytes).expect("batch"),
        )
    });
    common::eventually(Duration::from_secs(5), || async {
        (b.state.metrics.feed_waiters.get() > 0).then_some(())
    })
    .await
    .expect("the subscription is waiting");
    let start = Instant::now();
    let res = admin
        .post(format!(
            "{}/v1/admin/peripherals/{}/revoke",
            served.url, dev.id
        ))
        .bearer_auth(&b.token)
        .send()
        .await
        .expect("revoke");
    assert_eq!(res.status(), StatusCode::OK);
    let (at, batch) = tokio::time::timeout(Duration::from_secs(5), sub)
        .await
        .expect("delivered")
        .expect("task");
    let lag = at.duration_since(start);
    assert!(lag < Duration::from_secs(1), "revocation took {lag:?}");
    assert_eq!(
        batch.events[0].change,
        FeedChange::PeripheralRevoked(dev.id)
    );
    served.stop().await;
}

async fn a_gateway_renews_its_certificate_for_the_configured_lifetime_and_the_new_one_works(
    db: Db,
) {
    let mut config = vouch_backend::config::Config::default();
    config.certificates.gateway_lifetime_days = 30;
    let b = Backend::with_config(&db, config).await;
    let gw = IdentityKey::from_seed(&[101; 32]);
    let before = now_ms();
    let cert = b.enroll_gateway(&gw, None).await;
    // Enrollment honours the lifetime, and the list shows the expiry.
    let expires = pki::not_after_ms(&cert).expect("notAfter");
    assert!(
        (before + 30 * DAY_MS - 60_000..=now_ms() + 30 * DAY_MS).contains(&expires),
        "expires {expires}, enrolled at {before}"
    );
    assert_eq!(listed(&b, &gw).await["certificate_expires_ms"], expires);

    b.allow("any", "any", "telemetry").await;
    let dev = Device::new(7);
    b.enroll_peripheral(&dev, None).await;
    let served = serve(&b).await;
    let key_pem = gw.to_pkcs8_pem().expect("pem");
    let old = client(&ca_pem(&b), Some((&cert, &key_pem)));
    // A second apart, so that the new notAfter differs (whole seconds).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, body) = post_renewal(&old, &served.url).await;
    assert_eq!(s, StatusCode::OK);
    let issued: CertificateIssued = decode_body(&body).expect("answer");
    // The same key, the same CA, a fresh validity, recorded and audited.
    let der = rustls::pki_types::CertificateDer::from_pem_slice(issued.certificate_pem.as_bytes())
        .expect("PEM");
    assert_eq!(pki::ed25519_key_of(&der), Some(gw.public_key()));
    let renewed = pki::not_after_ms(&issued.certificate_pem).expect("notAfter");
    assert_eq!(u64::try_from(renewed).ok(), Some(issued.not_after_ms));
    assert!(renewed > expires);
    assert_eq!(listed(&b, &gw).await["certificate_expires_ms"], renewed);
    let audit = b
        .audit(&format!(
            "gateway={}&action=gateway_certificate_renew",
            gw.public_key()
        ))
        .await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["actor"], "gateway");

    // The new certificate authenticates the gateway.
    let new = client(&ca_pem(&b), Some((&issued.certificate_pem, &key_pem)));
    let (_, hello) = dev.hello(&b.anchors().await, 1);
    let (_, req) = gateway_takes(&gw, &hello, 11);
    let (s, bytes) = post_vouch(&new, &served.url, &req).await;
    assert_eq!(s, StatusCode::OK);
    assert!(matches!(
        decode_body::<VouchAnswer>(&bytes).expect("answer"),
        VouchAnswer::Vouched(_)
    ));
    served.stop().await;
}

async fn suspended_revoked_and_unknown_gateways_cannot_renew(db: Db) {
    let b = Backend::new(&db).await;
    let gw = IdentityKey::from_seed(&[102; 32]);
    let cert = b.enroll_gateway(&gw, None).await;
    let expires = listed(&b, &gw).await["certificate_expires_ms"].clone();
    let served = serve(&b).await;
    let key_pem = gw.to_pkcs8_pem().expect("pem");
    let c = client(&ca_pem(&b), Some((&cert, &key_pem)));
    let key = gw.public_key();
    let renewals = || async {
        b.audit(&format!("gateway={key}&action=gateway_certificate_renew"))
            .await
            .len()
    };

    b.admin("POST", &format!("/v1/admin/gateways/{key}/suspend"), None)
        .await;
    let (s, body) = post_renewal(&c, &served.url).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body), "gateway_not_active");
    assert_eq!(listed(&b, &gw).await["certificate_expires_ms"], expires);
    assert_eq!(renewals().await, 0);

    b.admin("POST", &format!("/v1/admin/gateways/{key}/reinstate"), None)
        .await;
    let (s, _) = post_renewal(&c, &served.url).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(renewals().await, 1);

    b.admin("POST", &format!("/v1/admin/gateways/{key}/revoke"), None)
        .await;
    let (s, body) = post_renewal(&c, &served.url).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body), "gateway_not_active");
    assert_eq!(renewals().await, 1);

    // A key this CA certified but the registry does not know.
    let stranger = IdentityKey::from_seed(&[103; 32]);
    let stranger_cert =
        pki::issue_gateway_cert(&b.state.ca, &stranger.public_key(), None, LIFETIME)
            .expect("cert")
            .pem;
    let c = client(
        &ca_pem(&b),
        Some((&stranger_cert, &stranger.to_pkcs8_pem().expect("pem"))),
    );
    let (s, body) = post_renewal(&c, &served.url).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body), "gateway_unknown");
    served.stop().await;
}

/// The count of `vouch_client_certificates_rejected_total{reason}`.
async fn rejected(b: &Backend, reason: &str) -> u64 {
    let text = String::from_utf8(b.metrics().await).expect("UTF-8");
    let prefix = format!("vouch_client_certificates_rejected_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.parse().expect("a count"))
}

/// Presents a certificate with a key that is not its own.
#[derive(Debug)]
struct WrongKey(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for WrongKey {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client that trusts `ca` and presents `cert` signing with `key_pem`,
/// whether or not they match.
fn wrong_key_client(ca: &str, cert: &str, key_pem: &str) -> reqwest::Client {
    let provider = pki::provider();
    let key = provider
        .key_provider
        .load_private_key(
            rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key"),
        )
        .expect("signing key");
    let chain =
        vec![rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")];
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).expect("ca"))
        .expect("root");
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(WrongKey(Arc::new(
            rustls::sign::CertifiedKey::new(chain, key),
        ))));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .build()
        .expect("client")
}

async fn rejected_client_certificates_are_counted_by_reason(db: Db) {
    let b = Backend::new(&db).await;
    let gw = IdentityKey::from_seed(&[104; 32]);
    b.enroll_gateway(&gw, None).await;
    let served = serve(&b).await;
    let key_pem = gw.to_pkcs8_pem().expect("pem");
    let now = std::time::SystemTime::now();
    let day = Duration::from_secs(86_400);
    let try_with = |cert: String| {
        let c = client(&ca_pem(&b), Some((&cert, &key_pem)));
        let url = served.url.clone();
        async move {
            c.post(format!("{url}{}", route::CERTIFICATE))
                .header("content-type", CONTENT_TYPE)
                .body(encode_body(&CertificateRenewal))
                .send()
                .await
        }
    };
    let expired = pki::issue_gateway_cert_between(
        &b.state.ca,
        &gw.public_key(),
        None,
        now - 2 * day,
        now - day,
    )
    .expect("cert")
    .pem;
    assert!(try_with(expired).await.is_err());
    let early = pki::issue_gateway_cert_between(
        &b.state.ca,
        &gw.public_key(),
        None,
        now + day,
        now + 2 * day,
    )
    .expect("cert")
    .pem;
    assert!(try_with(early).await.is_err());
    let foreign = pki::issue_gateway_cert(
        &pki::generate_ca().expect("ca"),
        &gw.public_key(),
        None,
        LIFETIME,
    )
    .expect("cert")
    .pem;
    assert!(try_with(foreign.clone()).await.is_err());
    assert!(try_with(foreign).await.is_err());
    // The gateway's own certificate, presented with another key (rustls
    // refuses to build such a client, so the pair is forced in).
    let own = pki::issue_gateway_cert(&b.state.ca, &gw.public_key(), None, LIFETIME)
        .expect("cert")
        .pem;
    let other_key = IdentityKey::from_seed(&[106; 32])
        .to_pkcs8_pem()
        .expect("pem");
    assert!(wrong_key_client(&ca_pem(&b), &own, &other_key)
        .post(format!("{}{}", served.url, route::CERTIFICATE))
        .header("content-type", CONTENT_TYPE)
        .body(encode_body(&CertificateRenewal))
        .send()
        .await
        .is_err());
    assert_eq!(rejected(&b, "expired").await, 1);
    assert_eq!(rejected(&b, "not_yet_valid").await, 1);
    assert_eq!(rejected(&b, "unknown_ca").await, 2);
    assert_eq!(rejected(&b, "key_mismatch").await, 1);
    served.stop().await;
}

async fn a_reissued_server_certificate_keeps_gateways_that_pin_the_ca_working(db: Db) {
    let b = Backend::new(&db).await;
    let gw = IdentityKey::from_seed(&[105; 32]);
    let cert = b.enroll_gateway(&gw, None).await;
    let dir = b.dir.path();
    let pinned = ca_pem(&b);
    let old_server = std::fs::read(dir.join("server.pem")).expect("server.pem");
    let done = vouch_backend::datadir::reissue_server_cert(
        dir,
        Some(&["backend.example.net".to_owned()]),
        Duration::from_secs(30 * 86_400),
    )
    .expect("reissue");
    assert_eq!(
        done.sans,
        ["localhost", "127.0.0.1", "::1", "backend.example.net"]
    );
    // The CA is untouched; the certificate and its key are new.
    assert_eq!(ca_pem(&b), pinned);
    assert_ne!(
        std::fs::read(dir.join("server.pem")).expect("server.pem"),
        old_server
    );
    let served = serve(&b).await;
    let key_pem = gw.to_pkcs8_pem().expect("pem");
    let port = served.url.rsplit(':').next().expect("port").to_owned();
    // The gateway, which pinned the CA before the reissue, still trusts the
    // backend, by address and by the new name.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let cfg = pki::client_config(&pinned, Some((&cert, &key_pem))).expect("client tls");
    let by_name = reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .resolve("backend.example.net", addr)
        .build()
        .expect("client");
    for (c, url) in [
        (client(&pinned, Some((&cert, &key_pem))), served.url.clone()),
        (by_name, format!("https://backend.example.net:{port}")),
    ] {
        let (s, _) = post_renewal(&c, &url).await;
        assert_eq!(s, StatusCode::OK, "{url}");
    }
    served.stop().await;
    // Reissued again without names: the current names are kept.
    let again = vouch_backend::datadir::reissue_server_cert(dir, None, LIFETIME).expect("reissue");
    assert_eq!(again.sans, done.sans);
    assert_eq!(ca_pem(&b), pinned);
}
