//! Nothing secret is logged (DESIGN.md §4): a whole life of a device — enrol,
//! full handshake, data both ways, resumption, revocation — with every crate
//! logging at TRACE into a buffer, which must hold none of the secrets the
//! test knows. In its own test binary because it installs the process's
//! global subscriber.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vouch_peripheral::Event;
use vouch_tests::{Backend, Device, Gateway};

/// A `MakeWriter` appending to a shared buffer.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The ways a 32-byte secret could show up in text.
fn renderings(secret: &[u8; 32]) -> Vec<String> {
    vec![
        hex::encode(secret),
        hex::encode_upper(secret),
        format!("{secret:?}"),
        format!("{:?}", &secret[..16]),
    ]
}

#[tokio::test]
async fn nothing_secret_is_logged_at_any_level() {
    let logs = Buffer::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .init();

    let backend = Backend::start().await;
    let gateway = Gateway::start(&backend, "plant-1").await;
    let device = Device::enroll(&backend, "meters").await;
    backend
        .allow("group:meters", "site:plant-1", "telemetry,command")
        .await;
    let store = device.store();
    let mut inbound = gateway.table.sessions().subscribe();
    let mut live = device.run_url(&gateway.url(), store.clone()).await;
    assert!(!live.established().await);
    live.handle.send(b"t=21.5".to_vec()).await.expect("send");
    inbound.recv().await.expect("telemetry");
    gateway
        .table
        .sessions()
        .send(device.id, b"led=on".to_vec())
        .await
        .expect("command");
    live.next_matching("the command", |e| matches!(e, Event::Data(_)))
        .await;
    live.stop().await;
    let mut again = device.run_url(&gateway.url(), store).await;
    assert!(again.established().await, "resumed");
    backend.peripheral_action(&device.id, "revoke").await;
    again
        .next_matching("the revocation", |e| matches!(e, Event::SessionEnded(_)))
        .await;
    again.stop().await;

    let text = String::from_utf8_lossy(&logs.0.lock().expect("log buffer")).to_string();
    assert!(
        text.contains("session established"),
        "the capture works: the gateway's INFO lines are in it"
    );
    assert!(text.lines().count() > 50, "TRACE output was captured");
    for r in renderings(&device.danger_secret_seed()) {
        assert!(!text.contains(&r), "the device's identity key was logged");
    }
    let pem = device.key().to_pkcs8_pem().expect("pem");
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line), "the device's PEM key was logged");
    }
    // Secrets the test cannot see (session keys, ephemerals, tickets) reach
    // only `danger_` exports, so no 64-hex-digit run in our logs may be
    // anything but a public key printed on purpose, all listed here.
    let public: Vec<String> = vec![
        device.key().public_key().to_string(),
        gateway.key.to_string(),
    ];
    // Checked on our own crates' lines (other crates log public handshake
    // values, such as TLS randoms, at TRACE).
    for line in text.lines().filter(|l| l.contains(" vouch_")) {
        for word in line.split(|c: char| !c.is_ascii_hexdigit()) {
            if word.len() >= 64 {
                assert!(
                    public.iter().any(|p| p.eq_ignore_ascii_case(word)),
                    "a long hex value that is not a known public key was logged: {line}"
                );
            }
        }
    }
}
