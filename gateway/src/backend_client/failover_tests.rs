//! The resend rule of SPEC.md §10.2 and the instances' health, against fake
//! instances on loopback (plain HTTP, and HTTPS with rcgen certificates that
//! read a request and then fail without answering). Written from an
//! adversarial review of the failover: each test failed on the code before
//! its fix.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vouch_proto::keys::DhPublic;
use vouch_proto::wire::backend::Refusal;

use super::*;

struct Pki {
    ca_pem: String,
    server_cert: rustls::pki_types::CertificateDer<'static>,
    server_key: Vec<u8>,
    client_cert_pem: String,
    client_key_pem: String,
}

impl Pki {
    fn new() -> Self {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "test backend CA");
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let mut server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        server
            .distinguished_name
            .push(rcgen::DnType::CommonName, "instance");
        server.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let server = server.signed_by(&server_key, &*ca).unwrap();
        let client_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let client = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&client_key)
            .unwrap();
        Pki {
            ca_pem: ca.pem(),
            server_cert: server.der().clone(),
            server_key: server_key.serialize_der(),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }
}

fn client(
    pki: &Pki,
    urls: Vec<String>,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
) -> HttpBackend {
    HttpBackend::new(HttpBackendConfig {
        urls,
        shuffle: false,
        metrics: None,
        ca_pem: pki.ca_pem.clone().into_bytes(),
        cert_pem: pki.client_cert_pem.clone().into_bytes(),
        key_pem: zeroize::Zeroizing::new(pki.client_key_pem.clone().into_bytes()),
        request_timeout: Duration::from_secs(2),
        feed_timeout: Duration::from_secs(20),
        batch_window: Duration::from_millis(1),
        breaker_threshold,
        breaker_cooldown,
    })
    .expect("backend client")
}

fn vouch_request() -> VouchRequest {
    VouchRequest {
        hello: vec![7; 40],
        gateway_ephemeral: DhPublic([9; 32]),
    }
}

fn busy() -> Vec<u8> {
    encode_body(&VouchAnswer::Refused(Refusal::Busy))
}

fn empty_feed() -> Vec<u8> {
    encode_body(&FeedBatch {
        events: Vec::new(),
        next: 0,
    })
}

/// Reads one HTTP/1.1 request (head, then Content-Length bytes); its path.
async fn read_request<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..end + 4 + len);
            return head.split_whitespace().nth(1).map(str::to_owned);
        }
        let n = s.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

struct Reply {
    status: u16,
    body: Vec<u8>,
    location: Option<String>,
}

fn reply(status: u16, body: Vec<u8>) -> Option<Reply> {
    Some(Reply {
        status,
        body,
        location: None,
    })
}

type Seen = Arc<Mutex<Vec<String>>>;

fn vouches(seen: &Seen) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|p| p.starts_with("/v1/vouch"))
        .count()
}

/// A plain-HTTP instance on loopback: logs each path, answers as `answer`
/// says (`None`: never, holding the connection open).
async fn http_instance(
    answer: impl Fn(&str) -> Option<Reply> + Send + Sync + 'static,
) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Seen::default();
    let (answer, log) = (Arc::new(answer), seen.clone());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (answer, log) = (answer.clone(), log.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(path) = read_request(&mut tcp, &mut buf).await {
                    log.lock().unwrap().push(path.clone());
                    let Some(r) = (*answer)(path.as_str()) else {
                        return std::future::pending::<()>().await;
                    };
                    let location = r
                        .location
                        .map(|l| format!("location: {l}\r\n"))
                        .unwrap_or_default();
                    let head = format!(
                        "HTTP/1.1 {} X\r\ncontent-length: {}\r\n{location}\r\n",
                        r.status,
                        r.body.len()
                    );
                    if tcp.write_all(head.as_bytes()).await.is_err()
                        || tcp.write_all(&r.body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

#[derive(Debug, Clone, Copy)]
enum AfterReading {
    /// The process dies: its connection ends, its port refuses.
    Vanish,
    /// A record that does not decrypt arrives (a flipped bit, or an
    /// on-path attacker).
    CorruptRecord,
}

/// An HTTPS instance that reads (and, for all anyone knows, judges) one
/// request, then fails as `then` says without answering.
async fn https_instance(pki: &Pki, then: AfterReading) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(pki.server_key.clone().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![pki.server_cert.clone()], key)
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.send_tls13_tickets = 0;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let judged = Arc::new(AtomicUsize::new(0));
    let count = judged.clone();
    tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let Ok(mut tls) = acceptor.accept(tcp).await else {
            return;
        };
        let mut buf = Vec::new();
        if read_request(&mut tls, &mut buf).await.is_some() {
            count.fetch_add(1, Ordering::SeqCst);
        }
        match then {
            AfterReading::Vanish => {
                drop(listener);
                drop(tls);
            }
            AfterReading::CorruptRecord => {
                let (tcp, _) = tls.get_mut();
                let _ = tcp.write_all(&[0x17, 0x03, 0x03, 0x00, 0x20]).await;
                let _ = tcp.write_all(&[0u8; 32]).await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    });
    (url, judged)
}

#[tokio::test]
async fn a_vouch_the_first_instance_may_have_judged_is_sent_to_no_other() {
    for then in [AfterReading::Vanish, AfterReading::CorruptRecord] {
        let pki = Pki::new();
        let (b, judged) = https_instance(&pki, then).await;
        let (a, seen) = http_instance(|_| reply(200, busy())).await;
        let c = client(&pki, vec![b, a], 1000, Duration::from_millis(10));
        let answer = c.vouch(vouch_request()).await;
        assert_eq!(
            judged.load(Ordering::SeqCst),
            1,
            "{then:?}: the first instance read it"
        );
        assert_eq!(vouches(&seen), 0, "{then:?}: resent to the second instance");
        assert!(
            answer.is_err(),
            "{then:?}: its device is answered Busy, not {answer:?}"
        );
    }
}

#[tokio::test]
async fn a_vouch_that_never_reached_the_first_instance_is_answered_by_the_next() {
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("https://{}", l.local_addr().unwrap())
    };
    let (a, seen) = http_instance(|_| reply(200, busy())).await;
    let c = client(
        &Pki::new(),
        vec![refused, a],
        1000,
        Duration::from_millis(10),
    );
    let answer = c.vouch(vouch_request()).await;
    assert!(
        matches!(answer, Ok(VouchAnswer::Refused(Refusal::Busy))),
        "{answer:?}"
    );
    assert_eq!(vouches(&seen), 1);
}

#[tokio::test]
async fn only_a_503_said_before_any_work_sends_a_vouch_on() {
    for (code, resent) in [
        ("timeout", false),
        ("unavailable", false),
        ("overloaded", true),
    ] {
        let body = format!(r#"{{"error":{{"code":"{code}","message":"x"}}}}"#).into_bytes();
        let (b, _) = http_instance(move |_| reply(503, body.clone())).await;
        let (a, seen) = http_instance(|_| reply(200, busy())).await;
        let c = client(&Pki::new(), vec![b, a], 1000, Duration::from_millis(10));
        let answer = c.vouch(vouch_request()).await;
        assert_eq!(vouches(&seen) == 1, resent, "503 {code}");
        assert_eq!(answer.is_ok(), resent, "503 {code}: {answer:?}");
    }
}

#[tokio::test]
async fn an_instance_shedding_load_is_busy_not_down() {
    let shed = br#"{"error":{"code":"overloaded","message":"x"}}"#.to_vec();
    let (busy_i, _) = http_instance(move |p| {
        if p == "/readyz" {
            reply(200, Vec::new())
        } else {
            reply(503, shed.clone())
        }
    })
    .await;
    let (other, _) = http_instance(|_| reply(200, empty_feed())).await;
    let c = client(
        &Pki::new(),
        vec![busy_i.clone(), other],
        1000,
        Duration::from_millis(10),
    );
    c.feed_now(0).await.expect("the other instance had room");
    assert_eq!(c.in_use(), Some(busy_i));
}

#[tokio::test]
async fn a_down_instance_is_probed_again_on_its_growing_schedule() {
    let (down, seen) =
        http_instance(|p| reply(if p == "/readyz" { 503 } else { 500 }, Vec::new())).await;
    let (up, _) = http_instance(|_| reply(200, empty_feed())).await;
    let c = client(&Pki::new(), vec![down, up], 1000, Duration::from_millis(10));
    c.feed_now(0).await.expect("the second instance answers");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let probes = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.as_str() == "/readyz")
        .count();
    // 0.25-0.5 s, then +0.5-1 s, then +1-2 s: at least two in 3.2 s.
    assert!(probes >= 2, "{probes} probe(s) in 3.2 s");
}

#[tokio::test]
async fn an_instance_whose_readyz_answers_but_whose_vouches_fail_is_backed_off() {
    let (flaky, seen) =
        http_instance(|p| reply(if p == "/readyz" { 200 } else { 500 }, Vec::new())).await;
    let (good, _) = http_instance(|_| reply(200, busy())).await;
    // The daemon's breaker: 3 failures, 5 s.
    let c = client(&Pki::new(), vec![flaky, good], 3, Duration::from_secs(5));
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < until {
        let _ = c.vouch(vouch_request()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = vouches(&seen);
    assert!(
        sent <= 6,
        "{sent} vouch requests in 8 s went to an instance that failed every one"
    );
}

#[tokio::test]
async fn an_instance_cannot_redirect_a_vouch_to_another() {
    let (a, seen) = http_instance(|_| reply(200, busy())).await;
    let to = format!("{a}/v1/vouch");
    let (b, _) = http_instance(move |_| {
        Some(Reply {
            status: 307,
            body: Vec::new(),
            location: Some(to.clone()),
        })
    })
    .await;
    let c = client(&Pki::new(), vec![b], 1000, Duration::from_millis(10));
    let _ = c.vouch(vouch_request()).await;
    assert_eq!(vouches(&seen), 0);
}

#[tokio::test]
async fn the_long_poll_names_a_wait_shorter_than_its_own_timeout() {
    let (b, seen) = http_instance(|_| reply(200, empty_feed())).await;
    let c = client(&Pki::new(), vec![b], 1000, Duration::from_millis(10));
    c.feed(0).await.unwrap();
    let path = seen.lock().unwrap()[0].clone();
    assert!(path.contains("wait_ms=15000"), "{path}");
}

#[tokio::test]
async fn the_feed_leaves_an_instance_found_down_instead_of_waiting_out_its_long_poll() {
    let (hung, _) = http_instance(|p| {
        if p.starts_with("/v1/feed") {
            None
        } else {
            reply(500, Vec::new())
        }
    })
    .await;
    let (good, _) = http_instance(|p| {
        reply(
            200,
            if p.starts_with("/v1/feed") {
                empty_feed()
            } else {
                busy()
            },
        )
    })
    .await;
    let c = client(
        &Pki::new(),
        vec![hung, good.clone()],
        1000,
        Duration::from_millis(10),
    );
    let feed = tokio::spawn({
        let c = c.clone();
        async move { c.feed(0).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A vouch finds the first instance down (500).
    let _ = c.vouch(vouch_request()).await;
    assert_eq!(c.in_use(), Some(good.clone()));
    let polled = tokio::time::timeout(Duration::from_secs(3), feed).await;
    assert!(
        matches!(polled, Ok(Ok(Ok(_)))),
        "the feed still waits on a down instance: {polled:?}"
    );
}
