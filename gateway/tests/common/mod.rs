//! Shared test fixtures: a fake backend built from the protocol's own backend
//! role, a gateway context, and a minimal peripheral.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use vouch_gateway::clock::TokioClock;
use vouch_gateway::driver::{run_link, Context, Outcome};
use vouch_gateway::metrics::Metrics;
use vouch_gateway::sessions::SessionTable;
use vouch_gateway::transport::memory::MemoryLink;
use vouch_gateway::transport::Link;
use vouch_proto::anchor::AnchorSet;
use vouch_proto::handshake::backend::BackendKeys;
use vouch_proto::handshake::gateway::GatewayConfig;
use vouch_proto::handshake::peripheral::{
    PeripheralConfig, PeripheralEstablished, PeripheralHandshake,
};
use vouch_proto::keys::{IdentityKey, KeyId, PeripheralId};
use vouch_proto::testing::rng;
use vouch_proto::wire::backend::FeedEvent;
use vouch_proto::wire::Scope;
use vouch_proto::{Error as ProtoError, Timestamp};

/// Runs a driver on a link it owns (the tests hand the link over).
/// A 32-byte seed from a number.
pub fn seed32(n: u64) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&n.to_le_bytes());
    s
}

pub async fn run_link_owned(
    ctx: Arc<Context<Arc<FakeBackend>, TokioClock>>,
    mut link: MemoryLink,
    seed: u64,
    shutdown: watch::Receiver<bool>,
) -> Outcome {
    run_link(ctx, &mut link, seed32(seed), shutdown).await
}

pub use vouch_gateway::testing::FakeBackend;

pub struct Setup {
    pub ctx: Arc<Context<Arc<FakeBackend>, TokioClock>>,
    pub backend: Arc<FakeBackend>,
    /// The one peripheral enrolled, with the setup's scope.
    pub device: IdentityKey,
    pub anchors: AnchorSet,
    pub id: PeripheralId,
    pub feed_tx: mpsc::Sender<FeedEvent>,
    pub shutdown_tx: watch::Sender<bool>,
    pub shutdown: watch::Receiver<bool>,
}

/// The backend key pair `kid` (2 and above) that every [`setup`]'s key
/// ring creates in advance: key 1 commits to key 2, key 2 to key 3, …
pub fn future_keys(kid: u8) -> BackendKeys {
    BackendKeys::generate(KeyId(kid), &mut rng(198 + u64::from(kid)))
}

/// The anchor set of every [`setup`]: the fake backend's key 1, committed to
/// [`future_keys`]`(2)`.
pub fn setup_anchors() -> AnchorSet {
    let keys = BackendKeys::generate(KeyId(1), &mut rng(1));
    AnchorSet::new(keys.anchor(), future_keys(2).anchor().digest(), 0)
}

pub fn setup(scope: Scope) -> Setup {
    let mut r = rng(1);
    let keys = BackendKeys::generate(KeyId(1), &mut r);
    let device = IdentityKey::generate(&mut r);
    let gateway = IdentityKey::generate(&mut r);
    let id = PeripheralId::derive(&device.public_key());
    let anchors = setup_anchors();
    let config = GatewayConfig::new(gateway.public_key());
    let backend = FakeBackend::from_parts(keys, gateway, future_keys);
    backend.enroll(device.public_key(), scope);
    let feed_tx = backend.feed_sender();
    let ctx = context(&backend, config, SessionTable::new(100), TokioClock::new());
    let (shutdown_tx, shutdown) = watch::channel(false);
    Setup {
        ctx,
        backend,
        device,
        anchors,
        id,
        feed_tx,
        shutdown_tx,
        shutdown,
    }
}

/// A gateway context around `table` and `clock`, sharing `backend`.
pub fn context(
    backend: &Arc<FakeBackend>,
    config: GatewayConfig,
    table: Arc<SessionTable>,
    clock: TokioClock,
) -> Arc<Context<Arc<FakeBackend>, TokioClock>> {
    Arc::new(Context {
        config,
        backend: backend.clone(),
        clock,
        table,
        metrics: Arc::new(Metrics::new().unwrap()),
        idle_timeout: Duration::from_secs(600),
        reports: Default::default(),
    })
}

/// A fresh directory under the system's temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "vouch-gw-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A minimal peripheral on the other end of a memory link.
pub async fn peripheral_full(
    s: &Setup,
    link: &mut MemoryLink,
    seed: u64,
) -> Result<PeripheralEstablished, ProtoError> {
    let now = Timestamp(0);
    let mut p = PeripheralHandshake::start(
        &PeripheralConfig::default(),
        s.id,
        &s.device,
        &s.anchors,
        now,
        &mut rng(seed),
    )?;
    drive_peripheral(&mut p, link).await?;
    p.into_established()
}

pub async fn drive_peripheral(
    p: &mut PeripheralHandshake,
    link: &mut MemoryLink,
) -> Result<(), ProtoError> {
    let mut buf = [0u8; 256];
    let n = p.poll_transmit(&mut buf).unwrap();
    link.send(&buf[..n]).await.unwrap();
    let answer = link.recv().await.unwrap().expect("gateway answered");
    p.handle_input(Timestamp(0), &answer)?;
    let n = p.poll_transmit(&mut buf).unwrap();
    link.send(&buf[..n]).await.unwrap();
    Ok(())
}

pub async fn wait_for<F: Fn() -> bool>(what: &str, f: F) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// Captures formatted log lines.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    pub fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
        let sink = self.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The next inbound message published while the session lasts; panics if
/// the session leaves the table first (its link was closed) instead of
/// waiting forever.
pub async fn next_inbound_while_live(
    s: &Setup,
    sub: &mut tokio::sync::broadcast::Receiver<vouch_gateway::sessions::Inbound>,
) -> vouch_gateway::sessions::Inbound {
    let table = s.ctx.table.clone();
    tokio::select! {
        got = sub.recv() => got.expect("inbound"),
        () = async {
            while !table.sessions().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        } => panic!("the session ended: its link was closed"),
    }
}

/// A peripheral's end of a TCP link written by hand, so that it can also
/// send frames no honest peer would.
pub struct RawTcp {
    pub stream: tokio::net::TcpStream,
    reassembler: vouch_proto::framing::Reassembler,
}

impl RawTcp {
    pub fn new(stream: tokio::net::TcpStream) -> Self {
        Self {
            stream,
            reassembler: vouch_proto::framing::Reassembler::new(Default::default()),
        }
    }

    /// Sends one message as fragments of ATT MTU `att_mtu`.
    pub async fn send_at(&mut self, msg: &[u8], att_mtu: usize) {
        let mut f = vouch_proto::framing::Fragmenter::new(msg, att_mtu).unwrap();
        let mut buf = [0u8; 512];
        while let Some(n) = f.next_into(&mut buf) {
            self.frame(&buf[..n]).await;
        }
    }

    pub async fn send(&mut self, msg: &[u8]) {
        self.send_at(msg, 247).await;
    }

    /// Sends `fragment` behind its two-byte length.
    pub async fn frame(&mut self, fragment: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let len = u16::try_from(fragment.len()).unwrap();
        self.stream.write_all(&len.to_le_bytes()).await.unwrap();
        self.stream.write_all(fragment).await.unwrap();
    }

    /// The next whole message.
    pub async fn recv(&mut self) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        loop {
            let mut len = [0u8; 2];
            self.stream.read_exact(&mut len).await.unwrap();
            let mut frag = vec![0u8; usize::from(u16::from_le_bytes(len))];
            self.stream.read_exact(&mut frag).await.unwrap();
            if let Some(m) = self.reassembler.push(Timestamp(0), &frag).unwrap() {
                return m.to_vec();
            }
        }
    }

    /// A full handshake as `s`'s device.
    pub async fn handshake(&mut self, s: &Setup, seed: u64) -> PeripheralEstablished {
        let mut p = PeripheralHandshake::start(
            &PeripheralConfig::default(),
            s.id,
            &s.device,
            &s.anchors,
            Timestamp(0),
            &mut rng(seed),
        )
        .unwrap();
        let mut buf = [0u8; 256];
        let n = p.poll_transmit(&mut buf).unwrap();
        self.send(&buf[..n]).await;
        let answer = self.recv().await;
        p.handle_input(Timestamp(0), &answer).unwrap();
        let n = p.poll_transmit(&mut buf).unwrap();
        self.send(&buf[..n]).await;
        p.into_established().unwrap()
    }
}

/// A gateway driver on a TCP link accepted from `listener`, and the
/// peripheral's raw end of it.
pub async fn tcp_link(s: &Setup, seed: u64) -> (RawTcp, tokio::task::JoinHandle<Outcome>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (p, g) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    let mut g =
        vouch_gateway::transport::tcp::TcpLink::new(g.unwrap().0, 247, Default::default()).unwrap();
    let (ctx, shutdown) = (s.ctx.clone(), s.shutdown.clone());
    let driver = tokio::spawn(async move { run_link(ctx, &mut g, seed32(seed), shutdown).await });
    (RawTcp::new(p.unwrap()), driver)
}
