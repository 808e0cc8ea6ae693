//! rustls TLS 1.3 with client certificates, in memory: a `ClientConnection`
//! (the device) and a `ServerConnection`, each timed on its own calls, every
//! record counted both ways. rustls 0.23 with the ring provider and its
//! defaults (key exchange X25519 first, 2 session tickets after each
//! handshake, in-memory session caches on both sides); certificates from
//! rcgen, one CA, the leaf alone sent by each side.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SignatureAlgorithm,
};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, Connection, HandshakeKind, ProtocolVersion, RootCertStore,
    ServerConfig, ServerConnection,
};

use super::{
    BenchError, Bytes, Flight, PeerCpu, PeerHandshake, PeerReport, Provides, Samples, Stopwatch,
};

const I: usize = 0;
const R: usize = 1;

/// The certificate and signature algorithm of both sides and the CA.
#[derive(Debug, Clone, Copy)]
pub(super) enum Certs {
    /// Ed25519 everywhere.
    Ed25519,
    /// ECDSA P-256 with SHA-256 everywhere.
    P256,
}

const PROVIDES: Provides = Provides {
    mutual_auth: "yes: X.509 certificates both ways, checked against a CA",
    third_party: "offline only: a CA signed both certificates in advance; nobody is asked \
                  at handshake time (revocation needs CRLs or OCSP, not measured)",
    identity_hiding: "client certificate: encrypted and sent only after the server \
                      authenticated (hidden from active attackers without a server \
                      certificate); server certificate: from passive listeners",
};

struct Configs {
    server: Arc<ServerConfig>,
    /// The defaults with the client's session cache off, so every handshake
    /// is a full one.
    client_full: Arc<ClientConfig>,
    /// The defaults: resumes with a ticket from the previous handshake.
    client_resume: Arc<ClientConfig>,
}

/// Measures `iterations` full and `iterations` resumed handshakes.
pub(super) fn measure(
    certs: Certs,
    iterations: usize,
    warmup: usize,
) -> Result<PeerReport, BenchError> {
    let configs = configs(certs)?;
    let full = run(
        &configs,
        &configs.client_full,
        HandshakeKind::Full,
        iterations,
        warmup,
    )?;
    // The first handshake with the resuming client fills its cache.
    handshake(&configs.client_resume, &configs.server)?;
    let resumed = run(
        &configs,
        &configs.client_resume,
        HandshakeKind::Resumed,
        iterations,
        warmup,
    )?;
    let (name, what) = match certs {
        Certs::Ed25519 => (
            "rustls mTLS Ed25519",
            "rustls 0.23 (ring), TLS 1.3, X25519, Ed25519 certificates both ways (one CA, \
             leaf only); resumed: PSK with (EC)DHE from the defaults' session ticket",
        ),
        Certs::P256 => (
            "rustls mTLS P-256",
            "rustls 0.23 (ring), TLS 1.3, X25519, ECDSA P-256 certificates both ways (one CA, \
             leaf only); resumed: PSK with (EC)DHE from the defaults' session ticket",
        ),
    };
    Ok(PeerReport {
        name,
        what,
        full,
        resumed: Some(resumed),
        provides: PROVIDES,
    })
}

fn run(
    configs: &Configs,
    client: &Arc<ClientConfig>,
    kind: HandshakeKind,
    iterations: usize,
    warmup: usize,
) -> Result<PeerHandshake, BenchError> {
    let mut samples = Samples::with_capacity(iterations);
    let mut bytes = None;
    for i in 0..warmup + iterations {
        let out = handshake(client, &configs.server)?;
        if out.kind != Some(kind) {
            return Err(BenchError::Invariant(
                "rustls did not do the kind of handshake being measured",
            ));
        }
        if i >= warmup {
            samples.push(out.times);
        }
        bytes = Some(out.bytes);
    }
    let bytes = bytes.ok_or(BenchError::Invariant("no TLS handshake ran"))?;
    Ok(PeerHandshake {
        cpu_us: PeerCpu {
            initiator: samples.median_of(I),
            responder: samples.median_of(R),
            total: samples.median_total(),
        },
        round_trips: bytes.round_trips(),
        bytes_on_air: bytes,
    })
}

fn configs(certs: Certs) -> Result<Configs, BenchError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let alg: &'static SignatureAlgorithm = match certs {
        Certs::Ed25519 => &rcgen::PKCS_ED25519,
        Certs::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
    };
    let ca_key = KeyPair::generate_for(alg)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "bench fleet CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |sans: Vec<String>,
                cn: &str,
                usage: ExtendedKeyUsagePurpose|
     -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), rcgen::Error> {
        let key = KeyPair::generate_for(alg)?;
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer)?;
        Ok((
            cert.der().clone(),
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        ))
    };
    let (server_cert, server_key) = leaf(
        vec!["backend.example.net".to_owned()],
        "backend.example.net",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_cert, client_key) = leaf(
        Vec::new(),
        "device 0001",
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;

    let mut roots = RootCertStore::empty();
    roots.add(ca_cert.der().clone())?;
    let roots = Arc::new(roots);
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server_cert], server_key)?;
    let client_resume = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![client_cert], client_key)?;
    let mut client_full = client_resume.clone();
    client_full.resumption = Resumption::disabled();
    Ok(Configs {
        server: Arc::new(server),
        client_full: Arc::new(client_full),
        client_resume: Arc::new(client_resume),
    })
}

struct Outcome {
    times: [Stopwatch; 2],
    bytes: Bytes,
    kind: Option<HandshakeKind>,
}

/// One handshake, flights moved in memory until neither side has anything
/// to send; each side's calls timed on its own stopwatch.
fn handshake(
    client: &Arc<ClientConfig>,
    server: &Arc<ServerConfig>,
) -> Result<Outcome, BenchError> {
    let mut sw = [Stopwatch::default(); 2];
    let name = ServerName::try_from("backend.example.net")
        .map_err(|_| BenchError::Invariant("bad server name"))?;
    let mut conns: [Connection; 2] = [
        sw[I]
            .time(|| ClientConnection::new(client.clone(), name))?
            .into(),
        sw[R].time(|| ServerConnection::new(server.clone()))?.into(),
    ];
    let mut flights = Vec::new();
    let mut wire = Vec::with_capacity(4096);
    let mut idle = 0;
    // At most a few flights each way; the bound only guards against a loop.
    for turn in 0..16 {
        let (from, to) = if turn % 2 == 0 { (I, R) } else { (R, I) };
        let post_handshake = !conns[I].is_handshaking() && !conns[R].is_handshaking();
        wire.clear();
        let sent = sw[from].time(|| drain(&mut conns[from], &mut wire))?;
        if sent == 0 {
            idle += 1;
            if idle == 2 {
                break;
            }
            continue;
        }
        idle = 0;
        flights.push(Flight {
            name: if post_handshake {
                "NewSessionTicket".to_owned()
            } else {
                format!("flight {}", flights.len() + 1)
            },
            from: if from == I { "initiator" } else { "responder" },
            bytes: sent,
            post_handshake,
        });
        sw[to].time(|| feed(&mut conns[to], &wire))?;
    }
    if conns.iter().any(|c| c.is_handshaking()) {
        return Err(BenchError::Invariant("a TLS handshake did not complete"));
    }
    if conns[I].protocol_version() != Some(ProtocolVersion::TLSv1_3) {
        return Err(BenchError::Invariant("rustls did not negotiate TLS 1.3"));
    }
    Ok(Outcome {
        times: sw,
        bytes: Bytes::new(flights),
        kind: conns[I].handshake_kind(),
    })
}

/// Everything the connection wants to send.
fn drain(conn: &mut Connection, out: &mut Vec<u8>) -> Result<usize, BenchError> {
    let mut n = 0;
    while conn.wants_write() {
        n += conn.write_tls(out)?;
    }
    Ok(n)
}

/// Hands `bytes` to the connection and processes them.
fn feed(conn: &mut Connection, mut bytes: &[u8]) -> Result<(), BenchError> {
    while !bytes.is_empty() {
        conn.read_tls(&mut bytes)?;
        conn.process_new_packets()?;
    }
    Ok(())
}

/// Full mutual-TLS handshakes per second per server core over loopback TCP:
/// a tokio-rustls server (threads `rustls-srv`, one worker per CPU) accepts
/// connections from `CONCURRENCY` clients in flight (threads `rustls-cli`,
/// resumption off), completes the handshake, sends its tickets and closes.
/// Per core = handshakes ÷ the server threads' CPU time; the clients' CPU is
/// not counted. Must not run inside a Tokio runtime.
pub(super) fn tcp_server_rate(certs: Certs, n: usize) -> Result<f64, BenchError> {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    const CONCURRENCY: usize = 32;
    let configs = configs(certs)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .thread_name(name)
            .enable_all()
            .build()
    };
    let srv = runtime("rustls-srv")?;
    let cli = runtime("rustls-cli")?;
    let listener = srv.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(configs.server.clone());
    let server = srv.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    let connector = TlsConnector::from(configs.client_full.clone());
    let connect = move |connector: TlsConnector| async move {
        let name = ServerName::try_from("backend.example.net")
            .map_err(|_| BenchError::Invariant("bad server name"))?;
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut tls = connector.connect(name, tcp).await?;
        let mut buf = [0u8; 512];
        while tls.read(&mut buf).await? > 0 {}
        Ok::<(), BenchError>(())
    };
    // Warm up, then measure.
    cli.block_on(connect(connector.clone()))?;
    let left = std::sync::Arc::new(AtomicUsize::new(n));
    let cpu0 = super::thread_cpu_s(&["rustls-srv"]);
    cli.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..CONCURRENCY {
            let left = left.clone();
            let connector = connector.clone();
            tasks.push(tokio::spawn(async move {
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1))
                    .is_ok()
                {
                    connect(connector.clone()).await?;
                }
                Ok::<(), BenchError>(())
            }));
        }
        for t in tasks {
            t.await
                .map_err(|_| BenchError::Invariant("a TLS client task panicked"))??;
        }
        Ok::<(), BenchError>(())
    })?;
    let cpu = super::thread_cpu_s(&["rustls-srv"]) - cpu0;
    server.abort();
    drop(cli);
    drop(srv);
    Ok(n as f64 / cpu.max(1e-9))
}
