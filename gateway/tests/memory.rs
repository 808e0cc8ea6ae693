//! Memory per established session on the gateway (DESIGN.md §6: at most
//! 2 KiB per session, 1,000 sessions in one process), and per stored
//! resumption ticket, which is per peripheral and outlives its sessions.
//!
//! The gateway runs in this process under a counting allocator (the `cap` crate); the
//! 1,000 peripherals run in a child process (this same test binary, re-run
//! with `VOUCH_MEMORY_CHILD` set), so only the gateway's heap is counted:
//! driver tasks, links, sessions, the session table and the stored tickets.
//! Allocation counts are deterministic; this is not a timing test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use vouch_gateway::backend_client::{BackendApi, BackendError};
use vouch_gateway::clock::TokioClock;
use vouch_gateway::driver::Context;
use vouch_gateway::endpoint::{Gateway, SWEEP_EVERY};
use vouch_gateway::metrics::Metrics;
use vouch_gateway::serve::tcp::serve_tcp;
use vouch_gateway::sessions::SessionTable;
use vouch_gateway::transport::tcp::TcpLink;
use vouch_gateway::transport::Link;
use vouch_proto::anchor::AnchorSet;
use vouch_proto::framing::ReassemblyLimits;
use vouch_proto::handshake::backend::{open_hello, BackendKeys, VouchGrant};
use vouch_proto::handshake::gateway::GatewayConfig;
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake};
use vouch_proto::keys::{IdentityKey, KeyId, PeripheralId, PublicKey};
use vouch_proto::testing::rng;
use vouch_proto::wire::backend::{
    FeedBatch, PeripheralInfo, SessionReport, SessionReportAnswer, SessionVerdict, VouchAnswer,
    VouchRequest, Vouched,
};
use vouch_proto::wire::{Lifetimes, Scope};
use vouch_proto::Timestamp;

#[global_allocator]
static ALLOC: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

const SESSIONS: usize = 1000;
const BUDGET_PER_SESSION: usize = 2048;

struct Keys {
    backend: BackendKeys,
    gateway: IdentityKey,
}

fn keys() -> Keys {
    let mut r = rng(77);
    Keys {
        backend: BackendKeys::generate(KeyId(1), &mut r),
        gateway: IdentityKey::generate(&mut r),
    }
}

/// Device `i`'s identity: every session belongs to a distinct peripheral.
fn device(i: usize) -> IdentityKey {
    let mut seed = [7u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    IdentityKey::from_seed(&seed)
}

struct Backend {
    k: Keys,
    registry: HashMap<PeripheralId, PublicKey>,
    reports: AtomicUsize,
}

impl BackendApi for Backend {
    async fn vouch(&self, req: VouchRequest) -> Result<VouchAnswer, BackendError> {
        let opened = open_hello(&req.hello, &self.k.backend)
            .map_err(|e| BackendError::Malformed(e.to_string()))?;
        let key = *self
            .registry
            .get(&opened.claimed_peripheral())
            .ok_or(BackendError::Malformed("unknown".into()))?;
        let v = opened
            .verify(&key)
            .map_err(|e| BackendError::Malformed(e.to_string()))?;
        let grant = VouchGrant {
            gateway_key: self.k.gateway.public_key(),
            gateway_ephemeral: req.gateway_ephemeral,
            scope: Scope::TELEMETRY.union(Scope::COMMAND),
            lifetimes: Lifetimes {
                session_s: 3600,
                resumption_s: 86_400,
            },
        };
        let info = PeripheralInfo {
            id: v.peripheral(),
            public_key: key,
            group: Some("site-a".into()),
            attributes: vec![],
            scope: grant.scope,
        };
        Ok(VouchAnswer::Vouched(Vouched {
            vouch: v.vouch(&self.k.backend, &grant),
            peripheral: info,
        }))
    }
    async fn report(&self, r: SessionReport) -> Result<SessionReportAnswer, BackendError> {
        self.reports.fetch_add(r.events.len(), Ordering::SeqCst);
        Ok(SessionReportAnswer {
            items: vec![SessionVerdict::Accepted; r.events.len()],
        })
    }
    async fn feed(&self, _after: u64) -> Result<FeedBatch, BackendError> {
        std::future::pending().await
    }
}

/// The child: SESSIONS peripherals that authenticate and then stay idle until
/// standard input closes.
async fn child(port: u16) {
    let k = keys();
    // The commitment plays no part in a Hello.
    let anchors = AnchorSet::new(k.backend.anchor(), k.backend.anchor().digest(), 0);
    let mut links = Vec::with_capacity(SESSIONS);
    for i in 0..SESSIONS {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut link = TcpLink::new(stream, 247, ReassemblyLimits::default()).expect("link");
        let dev = device(i);
        let id = PeripheralId::derive(&dev.public_key());
        let mut p = PeripheralHandshake::start(
            &PeripheralConfig::default(),
            id,
            &dev,
            &anchors,
            Timestamp(0),
            &mut rng(1000 + i as u64),
        )
        .expect("start");
        let mut buf = [0u8; 256];
        let n = p.poll_transmit(&mut buf).expect("hello");
        link.send(&buf[..n]).await.expect("send hello");
        let resp = link.recv().await.expect("recv").expect("response");
        p.handle_input(Timestamp(0), &resp).expect("vouch");
        let n = p.poll_transmit(&mut buf).expect("finish");
        link.send(&buf[..n]).await.expect("send finish");
        links.push(link);
    }
    println!("ready");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(links);
}

/// The heap once it stops changing (tasks that were finishing have finished).
async fn settled() -> usize {
    let mut last = ALLOC.allocated();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = ALLOC.allocated();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

#[test]
fn memory_per_established_session() {
    if let Ok(port) = std::env::var("VOUCH_MEMORY_CHILD") {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(child(port.parse().unwrap()));
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let registry = (0..SESSIONS)
            .map(|i| {
                let public = device(i).public_key();
                (PeripheralId::derive(&public), public)
            })
            .collect();
        let backend = Arc::new(Backend { k: keys(), registry, reports: AtomicUsize::new(0) });
        let ctx = Arc::new(Context {
            config: GatewayConfig::new(backend.k.gateway.public_key()),
            backend: backend.clone(),
            clock: TokioClock::new(),
            table: SessionTable::new(100_000),
            metrics: Arc::new(Metrics::new().unwrap()),
            idle_timeout: Duration::from_secs(3600),
            reports: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, shutdown) = watch::channel(false);
        let gateway = Gateway::with_context(ctx.clone(), SWEEP_EVERY, shutdown);
        let server = tokio::spawn(serve_tcp(gateway.clone(), listener, SESSIONS + 10, 247));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let baseline = ALLOC.allocated();

        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "memory_per_established_session", "--nocapture", "--test-threads=1"])
            .env("VOUCH_MEMORY_CHILD", port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        // Keep reading the child's output to its end (a closed pipe would make
        // the child's test harness fail to print its summary).
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.ends_with("ready") {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(true);
                    }
                }
            }
            if let Some(tx) = ready_tx.take() {
                let _ = tx.send(false);
            }
        });
        let ok = tokio::time::timeout(Duration::from_secs(300), ready).await.unwrap().unwrap();
        assert!(ok, "child peripherals failed; gateway metrics:\n{}", ctx.metrics.render());
        // Every session is in the table and its attach report went out.
        tokio::time::timeout(Duration::from_secs(60), async {
            while backend.reports.load(Ordering::SeqCst) < SESSIONS || ctx.table.tickets().len() < SESSIONS {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("all sessions established and reported");
        let live = settled().await;
        let per_session = (live - baseline) / SESSIONS;
        println!(
            "gateway heap: {} bytes for {SESSIONS} established sessions = {per_session} bytes per session (budget {BUDGET_PER_SESSION}); {} tickets",
            live - baseline,
            ctx.table.tickets().len()
        );

        // Closing everything gives the memory back (tickets stay, by design).
        child.stdin.take().unwrap().write_all(b"done\n").unwrap();
        let _ = child.wait();
        tokio::time::timeout(Duration::from_secs(60), async {
            while backend.reports.load(Ordering::SeqCst) < 2 * SESSIONS {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("all sessions ended");
        let after = settled().await;
        let per_ticket = (after.saturating_sub(baseline)) / SESSIONS;
        println!("after all sessions ended: {} bytes above baseline ({per_ticket} per stored ticket)", after.saturating_sub(baseline));
        let session_alone = per_session - per_ticket;
        println!("per live session without its ticket: {session_alone} bytes (budget {BUDGET_PER_SESSION}); per stored ticket: {per_ticket} bytes");
        // The session (task, link, protocol state, table entry, mailbox) is
        // the DESIGN.md budget; the resumption ticket is per peripheral and
        // outlives sessions, so it is bounded on its own.
        assert!(session_alone <= BUDGET_PER_SESSION, "{session_alone} bytes per live session");
        assert!(per_ticket <= 700, "a stored ticket costs {per_ticket} bytes");
        let _ = stop.send(true);
        let _ = server.await;
        gateway.closed().await;
    });
}
