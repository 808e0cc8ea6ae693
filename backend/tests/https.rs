//! End to end over real HTTPS on loopback: TLS 1.3, the gateway's client
//! certificate from the backend CA, a real peripheral and a real gateway
//! state machine, keep-alive; gateway suspension and revocation; the feed.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{gateway_takes, Backend, Db, Device};
use reqwest::StatusCode;
use vouch_backend::server::{self, Transport};
use vouch_backend::{app, pki};
use vouch_proto::keys::IdentityKey;
use vouch_proto::testing::rng;
use vouch_proto::wire::backend::{
    decode_body, encode_body, FeedBatch, FeedChange, Refusal, VouchAnswer, VouchRequest,
    CONTENT_TYPE,
};
use vouch_proto::wire::MAX_HANDSHAKE_MESSAGE;
use vouch_proto::Timestamp;

on_both!(
    gateway_vouches_over_mutual_tls_and_the_peripheral_establishes,
    suspended_and_revoked_gateways_are_refused_at_once,
    feed_over_https_delivers_a_revocation_within_a_second,
);

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
    let cfg = pki::server_config(&data.ca.cert_pem, &cert, &key).expect("tls config");
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
        let (mut p, hello) = dev.hello(&b.anchors(), round);
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
        &gateway_takes(&gw, &dev.hello(&b.anchors(), 9).1, 9).1,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A certificate from another CA does not even complete TLS.
    let other_ca = pki::generate_ca().expect("ca");
    let rogue_cert = pki::issue_gateway_cert(&other_ca, &gw.public_key(), None).expect("cert");
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
    let mut seed = 0;
    let mut attempt = || {
        seed += 1;
        let (_, hello) = dev.hello(&b.anchors(), seed);
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
