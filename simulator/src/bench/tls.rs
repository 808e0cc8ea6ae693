//! rustls TLS 1.3 with client certificates, in memory and over loopback
//! TCP, in every configuration an operator could pick (issue 21): rustls's
//! two providers, ring and aws-lc-rs (its default), × Ed25519 or ECDSA P-256
//! certificates × key exchange X25519 or X25519MLKEM768 (rustls's default
//! with its default features; aws-lc-rs only, ring implements no ML-KEM).
//! Each configuration gets its own explicit [`CryptoProvider`] (no process
//! default). In memory: a `ClientConnection` (the device) and a
//! `ServerConnection`, each timed on its own calls, every record counted
//! both ways. rustls 0.23's other defaults: 2 session tickets after each
//! handshake, in-memory session caches on both sides; certificates from
//! rcgen, one CA, the leaf alone sent by each side. Every handshake is
//! checked to have negotiated TLS 1.3, the configuration's key exchange
//! group and the kind (full or resumed) being measured.

use std::fmt;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SignatureAlgorithm,
};
use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, ring, CryptoProvider, SupportedKxGroup};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, CommonState, Connection, HandshakeKind, NamedGroup,
    ProtocolVersion, RootCertStore, ServerConfig, ServerConnection,
};
use serde::Serialize;

use super::{
    BenchError, Bytes, Flight, PeerCpu, PeerHandshake, PeerReport, Provides, Samples, Stopwatch,
};

const I: usize = 0;
const R: usize = 1;

/// rustls's crypto provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Provider {
    /// `rustls::crypto::ring`.
    Ring,
    /// `rustls::crypto::aws_lc_rs`, rustls's default provider.
    AwsLcRs,
}

/// The certificate and signature algorithm of both sides and the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Certs {
    /// Ed25519 everywhere.
    Ed25519,
    /// ECDSA P-256 with SHA-256 everywhere.
    P256,
}

/// The key exchange group both sides prefer (and must negotiate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyExchange {
    /// Classical X25519 (then P-256 and P-384 offered, as ring's defaults).
    X25519,
    /// The hybrid X25519MLKEM768 first, then X25519, P-256 and P-384: the
    /// order of rustls's default provider with its default features
    /// (`prefer-post-quantum`); the client sends an X25519MLKEM768 and an
    /// X25519 key share, as rustls does by default.
    X25519Mlkem768,
}

/// One rustls configuration: provider × certificates × key exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TlsConfig {
    /// The crypto provider.
    pub(super) provider: Provider,
    /// The certificates of both sides.
    pub(super) certs: Certs,
    /// The key exchange.
    pub(super) kx: KeyExchange,
}

impl TlsConfig {
    /// Every combination, measured or not, in table order.
    pub(super) fn matrix() -> Vec<TlsConfig> {
        let mut all = Vec::new();
        for provider in [Provider::Ring, Provider::AwsLcRs] {
            for certs in [Certs::Ed25519, Certs::P256] {
                for kx in [KeyExchange::X25519, KeyExchange::X25519Mlkem768] {
                    all.push(TlsConfig {
                        provider,
                        certs,
                        kx,
                    });
                }
            }
        }
        all
    }

    /// Why this combination cannot be measured, if it cannot.
    pub(super) fn unavailable(self) -> Option<&'static str> {
        match (self.provider, self.kx) {
            (Provider::Ring, KeyExchange::X25519Mlkem768) => {
                Some("ring implements no ML-KEM: rustls offers X25519MLKEM768 with aws-lc-rs only")
            }
            _ => None,
        }
    }

    /// The key of this configuration in the JSON report, for example
    /// `rustls_aws_lc_rs_ed25519_x25519`.
    pub(super) fn key(self) -> String {
        format!(
            "rustls_{}_{}_{}",
            match self.provider {
                Provider::Ring => "ring",
                Provider::AwsLcRs => "aws_lc_rs",
            },
            match self.certs {
                Certs::Ed25519 => "ed25519",
                Certs::P256 => "p256",
            },
            match self.kx {
                KeyExchange::X25519 => "x25519",
                KeyExchange::X25519Mlkem768 => "x25519mlkem768",
            }
        )
    }

    fn group(self) -> NamedGroup {
        match self.kx {
            KeyExchange::X25519 => NamedGroup::X25519,
            KeyExchange::X25519Mlkem768 => NamedGroup::X25519MLKEM768,
        }
    }

    /// The configuration's own provider: the provider's defaults with the
    /// key exchange groups of `self.kx`.
    fn crypto_provider(self) -> CryptoProvider {
        match self.provider {
            Provider::Ring => {
                use ring::kx_group::{SECP256R1, SECP384R1, X25519};
                CryptoProvider {
                    kx_groups: vec![X25519, SECP256R1, SECP384R1],
                    ..ring::default_provider()
                }
            }
            Provider::AwsLcRs => {
                use aws_lc_rs::kx_group::{SECP256R1, SECP384R1, X25519, X25519MLKEM768};
                let kx_groups: Vec<&'static dyn SupportedKxGroup> = match self.kx {
                    KeyExchange::X25519 => vec![X25519, SECP256R1, SECP384R1],
                    KeyExchange::X25519Mlkem768 => {
                        vec![X25519MLKEM768, X25519, SECP256R1, SECP384R1]
                    }
                };
                CryptoProvider {
                    kx_groups,
                    ..aws_lc_rs::default_provider()
                }
            }
        }
    }

    /// Checks that a finished connection negotiated TLS 1.3 and this
    /// configuration's group.
    fn check(self, conn: &CommonState) -> Result<(), BenchError> {
        if conn.protocol_version() != Some(ProtocolVersion::TLSv1_3) {
            return Err(BenchError::Invariant("rustls did not negotiate TLS 1.3"));
        }
        if conn.negotiated_key_exchange_group().map(|g| g.name()) != Some(self.group()) {
            return Err(BenchError::Invariant(
                "rustls did not negotiate the configuration's key exchange group",
            ));
        }
        Ok(())
    }
}

/// Short and human: `aws-lc-rs, Ed25519, X25519MLKEM768`.
impl fmt::Display for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {}, {}",
            match self.provider {
                Provider::Ring => "ring",
                Provider::AwsLcRs => "aws-lc-rs",
            },
            match self.certs {
                Certs::Ed25519 => "Ed25519",
                Certs::P256 => "P-256",
            },
            match self.kx {
                KeyExchange::X25519 => "X25519",
                KeyExchange::X25519Mlkem768 => "X25519MLKEM768",
            }
        )
    }
}

/// What a handshake of one configuration costs over loopback TCP.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TcpHandshake {
    /// CPU of the client's threads per handshake, µs (connect, handshake,
    /// reading the tickets and the close; tokio and the socket included).
    pub client_cpu_us: f64,
    /// CPU of the server's threads per handshake, µs (accept, handshake,
    /// tickets, close).
    pub server_cpu_us: f64,
    /// `1e6 / server_cpu_us`: handshakes per second per server core.
    pub server_handshakes_per_s: f64,
    /// TLS bytes both ways per connection, mean: every record, the tickets
    /// and the server's close_notify included.
    pub bytes_on_air: f64,
    /// Connections measured.
    pub handshakes: usize,
    /// Connections in flight.
    pub concurrency: usize,
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

/// Measures `iterations` full and `iterations` resumed handshakes of
/// `config` in memory.
pub(super) fn measure(
    config: TlsConfig,
    iterations: usize,
    warmup: usize,
) -> Result<PeerReport, BenchError> {
    let configs = configs(config)?;
    let (full, suite) = run(
        config,
        &configs,
        &configs.client_full,
        HandshakeKind::Full,
        iterations,
        warmup,
    )?;
    // The first handshake with the resuming client fills its cache.
    handshake(config, &configs.client_resume, &configs.server)?;
    let (resumed, _) = run(
        config,
        &configs,
        &configs.client_resume,
        HandshakeKind::Resumed,
        iterations,
        warmup,
    )?;
    let provider = match config.provider {
        Provider::Ring => "ring",
        Provider::AwsLcRs => "aws-lc-rs, rustls's default provider",
    };
    let certs = match config.certs {
        Certs::Ed25519 => "Ed25519",
        Certs::P256 => "ECDSA P-256",
    };
    let kx = match config.kx {
        KeyExchange::X25519 => "key exchange X25519 (P-256, P-384 offered after it)",
        KeyExchange::X25519Mlkem768 => {
            "key exchange X25519MLKEM768 (rustls's default; X25519, P-256, P-384 offered \
             after it, an X25519 key share sent beside the hybrid one)"
        }
    };
    Ok(PeerReport {
        name: format!("rustls mTLS {config}"),
        what: format!(
            "rustls 0.23 ({provider}), TLS 1.3, {suite}, {kx}, {certs} certificates both \
             ways (one CA, leaf only); resumed: PSK with (EC)DHE from the defaults' session \
             ticket"
        ),
        full,
        resumed: Some(resumed),
        provides: PROVIDES,
    })
}

/// Runs `warmup + iterations` handshakes of `kind`; returns the medians of
/// the last `iterations` and the negotiated cipher suite.
fn run(
    config: TlsConfig,
    configs: &Configs,
    client: &Arc<ClientConfig>,
    kind: HandshakeKind,
    iterations: usize,
    warmup: usize,
) -> Result<(PeerHandshake, String), BenchError> {
    let mut samples = Samples::with_capacity(iterations);
    let mut last = None;
    for i in 0..warmup + iterations {
        let out = handshake(config, client, &configs.server)?;
        if out.kind != Some(kind) {
            return Err(BenchError::Invariant(
                "rustls did not do the kind of handshake being measured",
            ));
        }
        if i >= warmup {
            samples.push(out.times);
        }
        last = Some(out);
    }
    let out = last.ok_or(BenchError::Invariant("no TLS handshake ran"))?;
    Ok((
        PeerHandshake {
            cpu_us: PeerCpu {
                initiator: samples.median_of(I),
                responder: samples.median_of(R),
                total: samples.median_total(),
            },
            round_trips: out.bytes.round_trips(),
            bytes_on_air: out.bytes,
            tcp: None,
        },
        out.suite,
    ))
}

fn configs(config: TlsConfig) -> Result<Configs, BenchError> {
    if config.unavailable().is_some() {
        return Err(BenchError::Invariant(
            "a rustls configuration its provider cannot run",
        ));
    }
    let provider = Arc::new(config.crypto_provider());
    let alg: &'static SignatureAlgorithm = match config.certs {
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
    suite: String,
}

/// One handshake, flights moved in memory until neither side has anything
/// to send; each side's calls timed on its own stopwatch.
fn handshake(
    config: TlsConfig,
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
    for c in &conns {
        config.check(c)?;
    }
    let suite = conns[I]
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .ok_or(BenchError::Invariant("no TLS cipher suite"))?;
    Ok(Outcome {
        times: sw,
        bytes: Bytes::new(flights),
        kind: conns[I].handshake_kind(),
        suite,
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

/// Connections in flight over TCP.
const TCP_CONCURRENCY: usize = 32;

/// `n` mutual-TLS handshakes of `kind` over loopback TCP: a tokio-rustls
/// server (threads `rustls-srv`, one worker per CPU) accepts connections from
/// `TCP_CONCURRENCY` clients in flight (threads `rustls-cli`), completes the
/// handshake, sends its tickets and closes; each client reads until the
/// close. Both ends set `TCP_NODELAY`, as the backend's server and reqwest
/// do. Resumed: each client task has a session cache of its own, primed
/// by one full handshake before the clock starts, so that every measured
/// connection resumes. CPU per handshake is each side's threads' CPU time
/// over `n`; bytes are counted on the client's socket. Must not run inside a
/// Tokio runtime.
pub(super) fn measure_tcp(
    config: TlsConfig,
    kind: HandshakeKind,
    n: usize,
) -> Result<TcpHandshake, BenchError> {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    let configs = configs(config)?;
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
            // As the backend's server does (and reqwest, its client).
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    // One connection: its bytes both ways and the kind of handshake it did.
    let connect = move |connector: TlsConnector| async move {
        let name = ServerName::try_from("backend.example.net")
            .map_err(|_| BenchError::Invariant("bad server name"))?;
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut tls = connector.connect(name, Counted::new(tcp)).await?;
        let mut buf = [0u8; 512];
        while tls.read(&mut buf).await? > 0 {}
        let (io, conn) = tls.get_ref();
        config.check(conn)?;
        Ok::<_, BenchError>((io.bytes, conn.handshake_kind()))
    };
    // One connector per client task: resumption needs a session cache of
    // its own (rustls keeps a few tickets per server name).
    let connectors: Vec<TlsConnector> = (0..TCP_CONCURRENCY)
        .map(|_| match kind {
            HandshakeKind::Resumed => {
                let mut c = (*configs.client_resume).clone();
                c.resumption = Resumption::default();
                TlsConnector::from(Arc::new(c))
            }
            _ => TlsConnector::from(configs.client_full.clone()),
        })
        .collect();
    // Warm up (and prime each cache), then measure.
    cli.block_on(async {
        for c in &connectors {
            connect(c.clone()).await?;
        }
        Ok::<(), BenchError>(())
    })?;
    let left = Arc::new(AtomicUsize::new(n));
    let cpu0 = (
        super::thread_cpu_s(&["rustls-srv"]),
        super::thread_cpu_s(&["rustls-cli"]),
    );
    let bytes = cli.block_on(async {
        let mut tasks = Vec::new();
        for connector in connectors {
            let left = left.clone();
            tasks.push(tokio::spawn(async move {
                let mut bytes = 0;
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1))
                    .is_ok()
                {
                    let (b, did) = connect(connector.clone()).await?;
                    if did != Some(kind) {
                        return Err(BenchError::Invariant(
                            "rustls over TCP did not do the kind of handshake being measured",
                        ));
                    }
                    bytes += b;
                }
                Ok::<usize, BenchError>(bytes)
            }));
        }
        let mut bytes = 0;
        for t in tasks {
            bytes += t
                .await
                .map_err(|_| BenchError::Invariant("a TLS client task panicked"))??;
        }
        Ok::<usize, BenchError>(bytes)
    })?;
    let server_cpu = super::thread_cpu_s(&["rustls-srv"]) - cpu0.0;
    let client_cpu = super::thread_cpu_s(&["rustls-cli"]) - cpu0.1;
    server.abort();
    drop(cli);
    drop(srv);
    let per = |cpu: f64| cpu * 1e6 / n.max(1) as f64;
    Ok(TcpHandshake {
        client_cpu_us: per(client_cpu),
        server_cpu_us: per(server_cpu),
        server_handshakes_per_s: n as f64 / server_cpu.max(1e-9),
        bytes_on_air: bytes as f64 / n.max(1) as f64,
        handshakes: n,
        concurrency: TCP_CONCURRENCY,
    })
}

/// A TCP stream that counts the bytes read and written through it.
struct Counted {
    tcp: tokio::net::TcpStream,
    bytes: usize,
}

impl Counted {
    fn new(tcp: tokio::net::TcpStream) -> Self {
        Self { tcp, bytes: 0 }
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf);
        self.bytes += buf.filled().len() - before;
        polled
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = polled {
            self.bytes += n;
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
