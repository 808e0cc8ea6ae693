//! `vouch-gateway`: the gateway daemon and its setup commands.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info};
use vouch_gateway::api::{self, ApiState};
use vouch_gateway::backend_client::{HttpBackend, HttpBackendConfig};
use vouch_gateway::certificate::{
    self, CertificateError, CertificateInfo, CertificateWatch, Renewal,
};
use vouch_gateway::clock::{Clock, SystemClock};
use vouch_gateway::config::{Config, LogFormat};
use vouch_gateway::endpoint::{Gateway, Parts, Settings};
use vouch_gateway::metrics::Metrics;
use vouch_gateway::serve::slots::LinkSlots;
use vouch_gateway::serve::tcp::serve_tcp_with;
use vouch_gateway::state::{StateBinding, StateDir};
use vouch_proto::keys::{IdentityKey, PublicKey};

/// The Vouch gateway: authenticates nearby peripherals through the backend
/// and carries their encrypted traffic.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create this gateway's identity key (PKCS#8 PEM, mode 0600) and print
    /// what to enroll in the backend. Never overwrites an existing key.
    Init {
        /// Take the key path from this configuration file.
        #[arg(long, conflicts_with = "key")]
        config: Option<PathBuf>,
        /// Where to write the key.
        #[arg(long, default_value = "/var/lib/vouch-gateway/identity.pem")]
        key: PathBuf,
    },
    /// Run the daemon until SIGINT or SIGTERM.
    Run {
        /// Configuration file (TOML; environment overrides VOUCH_GATEWAY_*).
        #[arg(long, short, default_value = "/etc/vouch/gateway.toml")]
        config: PathBuf,
    },
    /// Show the running daemon's sessions and counters (through its local API).
    Status {
        /// Configuration file (to find the API socket).
        #[arg(long, short, default_value = "/etc/vouch/gateway.toml")]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the example configuration.
    ExampleConfig,
    #[command(flatten)]
    Docs(vouch_host::cli::Docs),
}

fn main() -> std::process::ExitCode {
    match command(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            vouch_host::report::fatal(&*e);
            std::process::ExitCode::FAILURE
        }
    }
}

fn command(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init { config, key } => {
            let key = match config {
                Some(c) => Config::load(&c)?.identity.key,
                None => key,
            };
            init(&key)
        }
        Command::Run { config } => {
            let config = Config::load(&config)?;
            init_tracing(config.log.format)?;
            // In JSON mode, an error it stops on is logged in the log
            // format too (`report::fatal`, in `main`).
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(run(config)))
        }
        Command::Status { config, json } => {
            let config = Config::load(&config)?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(status(&config, json))
        }
        Command::ExampleConfig => {
            print!("{}", vouch_gateway::config::EXAMPLE);
            Ok(())
        }
        Command::Docs(docs) => Ok(docs.print(<Cli as clap::CommandFactory>::command())?),
    }
}

fn init_tracing(format: LogFormat) -> Result<()> {
    let format = match format {
        LogFormat::Json => vouch_host::logging::Format::Json,
        LogFormat::Text => vouch_host::logging::Format::Text,
    };
    Ok(vouch_host::logging::init(format, "info")?)
}

fn init(path: &Path) -> Result<()> {
    if path.exists() {
        let pem =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let key = IdentityKey::from_pkcs8_pem(&pem)
            .with_context(|| format!("{} is not a valid identity key", path.display()))?;
        println!("{} already exists; not overwriting it.", path.display());
        println!("public key: {}", key.public_key());
        let public = write_public_key(path, &key.public_key())?;
        println!("public key file: {}", public.display());
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut()).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    let key = IdentityKey::from_seed(&seed);
    let pem = key.to_pkcs8_pem()?;
    // Written whole or not at all, and never over a key another `init`
    // put there meanwhile.
    vouch_host::fs::AtomicWrite::new(0o600)
        .never_replace()
        .write_file(path, pem.as_bytes())?;
    let public = key.public_key();
    let public_file = write_public_key(path, &public)?;
    println!(
        "Gateway identity written to {} (mode 0600).",
        path.display()
    );
    println!("public key: {public}");
    println!(
        "public key file: {} (SPKI PEM, for the operator)",
        public_file.display()
    );
    println!();
    println!("Enroll it with the backend (operator, on the backend host):");
    println!(
        "  vouch-backend --data-dir DIR enroll gateway --public-key @{} --out client.pem",
        public_file
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    );
    println!(
        "then install client.pem and the backend CA where [backend] certificate and ca point."
    );
    Ok(())
}

/// Where `init` puts the public key of the identity key at `key`: the same
/// name with `.pub.pem` for its extension (`identity.pem` →
/// `identity.pub.pem`).
fn public_key_path(key: &Path) -> PathBuf {
    key.with_extension("pub.pem")
}

/// Writes the identity's public key (SPKI PEM, mode 0644) beside the key
/// file, for the operator's `enroll gateway --public-key @FILE`; returns its
/// path. Derived from the key, so an existing one is replaced.
fn write_public_key(key: &Path, public: &PublicKey) -> Result<PathBuf> {
    let path = public_key_path(key);
    vouch_host::fs::AtomicWrite::new(0o644)
        .write_file(&path, public.to_public_key_pem().as_bytes())?;
    Ok(path)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

async fn run(config: Config) -> Result<()> {
    let (key_pem, gateway_key) = load_identity(&config.identity.key)?;
    let ca_pem = read(&config.backend.ca)?;
    let cert_pem = read(&config.backend.certificate)?;
    let certificate = check_certificate(&config, &cert_pem, &ca_pem, &gateway_key)?;
    let metrics = Arc::new(Metrics::new()?);
    let backend_urls = config.backend_urls();
    let backend = HttpBackend::new(HttpBackendConfig {
        urls: backend_urls.clone(),
        shuffle: true,
        metrics: Some(metrics.clone()),
        ca_pem: ca_pem.clone(),
        cert_pem,
        key_pem,
        request_timeout: Duration::from_millis(config.backend.request_timeout_ms),
        feed_timeout: Duration::from_secs(60),
        batch_window: Duration::from_millis(config.backend.batch_window_ms),
        breaker_threshold: 3,
        breaker_cooldown: Duration::from_secs(5),
    })?;
    let state_dir = match config.state.dir() {
        Some(dir) => Some(StateDir::open(dir)?),
        None => {
            info!("no [state] dir: resumption tickets, trust-anchor updates and the BLE device memory are kept in memory only");
            None
        }
    };
    let api = bind_api(&config).await?;
    let (stop_tx, shutdown) = watch::channel(false);
    let gateway = Gateway::start(
        Parts {
            key: gateway_key,
            backend,
            clock: SystemClock,
            metrics,
            state: state_dir.as_ref().map(|dir| {
                let binding = StateBinding {
                    gateway_key,
                    backend_url: config.state_backend_name(),
                };
                (dir, binding)
            }),
            settings: Settings {
                max_tickets: config.limits.max_tickets,
                idle_timeout: config.idle_timeout(),
                feed_silence_limit: config.feed_silence_limit(),
                anchor_updates_every: Some(config.anchor_updates_interval()),
                ..Settings::default()
            },
            certificate: Some(Renewal {
                watch: certificate.clone(),
                file: Some(config.backend.certificate.clone()),
                ca_pem,
                identity: gateway_key,
                policy: config.renewal_policy(),
            }),
        },
        shutdown,
    )?;
    info!(gateway_key = %gateway_key, backend = ?backend_urls, "vouch-gateway starting");
    let mut tasks = JoinSet::new();
    serve_api(api, &gateway, certificate, &mut tasks);
    serve_transports(&config, &gateway, state_dir.as_ref(), &mut tasks).await?;

    wait_for_signal().await;
    info!("signal received: closing sessions and shutting down");
    let _ = stop_tx.send(true);
    let drain = async {
        while tasks.join_next().await.is_some() {}
        gateway.closed().await;
    };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        error!("shutdown took longer than 10 s; exiting anyway");
    }
    // Tickets and the feed cursor are written as they change; wait for the
    // last writes to reach the disk.
    if tokio::time::timeout(Duration::from_secs(5), gateway.table().tickets().flush())
        .await
        .is_err()
    {
        error!("the state directory did not take the last writes within 5 s");
    }
    let _ = std::fs::remove_file(&config.api.socket);
    info!("stopped");
    Ok(())
}

/// Checks the client certificate at start and says exactly what is wrong
/// with it. One that is not for this gateway's key, or not a certificate,
/// stops the daemon (the TLS client cannot even be built); an expired one,
/// one not valid yet, or one from another CA is logged as an error and the
/// daemon runs on: the backend refuses it, but devices holding a ticket
/// keep resuming, and a clock that catches up cures "not valid yet".
fn check_certificate(
    config: &Config,
    cert_pem: &[u8],
    ca_pem: &[u8],
    gateway_key: &PublicKey,
) -> Result<Arc<CertificateWatch>> {
    let path = config.backend.certificate.display();
    let info = match certificate::check(cert_pem, ca_pem, gateway_key, SystemClock.wall()) {
        Ok(info) => {
            info!(file = %path, not_after = %certificate::format_wall(info.not_after),
                "client certificate valid");
            info
        }
        Err(
            e @ (CertificateError::Expired { .. }
            | CertificateError::NotYetValid { .. }
            | CertificateError::ForeignCa),
        ) => {
            error!(file = %path, "{e}");
            CertificateInfo::parse(cert_pem)?
        }
        Err(e) => anyhow::bail!("{path}: {e}"),
    };
    Ok(CertificateWatch::new(info))
}

/// Reads the identity key, refusing one that others can read.
fn load_identity(path: &Path) -> Result<(zeroize::Zeroizing<Vec<u8>>, PublicKey)> {
    let key_pem = zeroize::Zeroizing::new(read(path)?);
    let key = IdentityKey::from_pkcs8_pem(std::str::from_utf8(&key_pem).unwrap_or(""))
        .with_context(|| {
            format!(
                "{}: not a PKCS#8 Ed25519 key (run `vouch-gateway init`)",
                path.display()
            )
        })?;
    vouch_host::fs::check_private(path)?;
    Ok((key_pem, key.public_key()))
}

type Daemon = Gateway<HttpBackend, SystemClock>;

/// The local API's Unix socket and the metrics endpoint's listener, bound
/// before the gateway starts: a daemon that cannot serve them exits before
/// its followers touch the state directory.
struct ApiListeners {
    socket: tokio::net::UnixListener,
    metrics: Option<tokio::net::TcpListener>,
}

async fn bind_api(config: &Config) -> Result<ApiListeners> {
    let socket = &config.api.socket;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
    info!(socket = %socket.display(), "local API listening");
    let metrics = match config.api.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?,
        ),
        None => None,
    };
    Ok(ApiListeners {
        socket: listener,
        metrics,
    })
}

/// Serves the local API, and the metrics endpoint when one is configured;
/// both stop at shutdown.
fn serve_api(
    listeners: ApiListeners,
    gateway: &Arc<Daemon>,
    certificate: Arc<CertificateWatch>,
    tasks: &mut JoinSet<()>,
) {
    let state = ApiState {
        table: gateway.table().clone(),
        metrics: gateway.metrics().clone(),
        gateway_key: gateway.key().to_string(),
        shutdown: gateway.shutdown(),
        certificate: Some(certificate),
    };
    let mut s = gateway.shutdown();
    let app = api::router(state.clone());
    tasks.spawn(async move {
        let r = axum::serve(listeners.socket, app)
            .with_graceful_shutdown(async move {
                let _ = s.changed().await;
            })
            .await;
        if let Err(e) = r {
            error!(error = %e, "local API failed");
        }
    });
    if let Some(listener) = listeners.metrics {
        let mut s = gateway.shutdown();
        let app = api::metrics_router(state);
        tasks.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = s.changed().await;
                })
                .await;
        });
    }
}

/// The configured transports' accept loops.
async fn serve_transports(
    config: &Config,
    gateway: &Arc<Daemon>,
    state_dir: Option<&StateDir>,
    tasks: &mut JoinSet<()>,
) -> Result<()> {
    if let Some(tcp) = &config.transport.tcp {
        let listener = tokio::net::TcpListener::bind(tcp.listen)
            .await
            .with_context(|| format!("binding {}", tcp.listen))?;
        let slots = LinkSlots::new(config.limits.max_links, config.first_message_timeout());
        let (gateway, mtu) = (gateway.clone(), tcp.att_mtu);
        tasks.spawn(async move {
            if let Err(e) = serve_tcp_with(gateway, listener, slots, mtu).await {
                error!(error = %e, "TCP transport failed");
            }
        });
    }
    if let Some(ble) = &config.transport.ble {
        #[cfg(feature = "ble")]
        {
            use vouch_gateway::serve::ble::{serve_ble_with_memory, BleSettings};
            use vouch_gateway::state::KnownDevices;
            use vouch_gateway::transport::btleplug::BtleplugRadio;
            let radio = BtleplugRadio::open(&ble.adapter, ble.att_mtu)
                .await
                .with_context(|| format!("[transport.ble] adapter {:?}", ble.adapter))?;
            let settings = BleSettings {
                max_links: ble.max_links,
                first_message: config.first_message_timeout(),
                ..BleSettings::default()
            };
            let known = match state_dir {
                Some(dir) => KnownDevices::open(dir),
                None => KnownDevices::in_memory(),
            };
            let gateway = gateway.clone();
            tasks.spawn(async move {
                let s = gateway.shutdown();
                let result = serve_ble_with_memory(gateway, Arc::new(radio), settings, known).await;
                if !*s.borrow() {
                    // BlueZ went away (bluetoothd restarted, adapter removed): exit
                    // non-zero so that systemd (Restart=on-failure) starts us again.
                    error!(?result, "BLE transport ended; exiting");
                    std::process::exit(1);
                }
            });
        }
        #[cfg(not(feature = "ble"))]
        {
            let _ = (gateway, state_dir, tasks);
            anyhow::bail!(
                "[transport.ble] adapter {:?}: this binary was built without the `ble` feature",
                ble.adapter
            );
        }
    }
    Ok(())
}

async fn wait_for_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `GET path` on the daemon's local API (HTTP/1.1 over its Unix socket),
/// as JSON.
async fn local_api(socket: &Path, path: &str) -> Result<serde_json::Value> {
    use http_body_util::BodyExt;
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| {
            format!(
                "connecting to {} (is vouch-gateway running?)",
                socket.display()
            )
        })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, "gateway")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    driver.abort();
    anyhow::ensure!(
        status.is_success(),
        "the daemon answered {status} to {path}"
    );
    serde_json::from_slice(&body).context("the daemon's answer is not JSON")
}

async fn status(config: &Config, json: bool) -> Result<()> {
    let v = local_api(&config.api.socket, "/v1/status").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("gateway {}", v["gateway_key"].as_str().unwrap_or("?"));
    let sessions = v["sessions"].as_array().cloned().unwrap_or_default();
    println!(
        "{} live sessions, {} resumption tickets",
        sessions.len(),
        v["tickets"]
    );
    // `ok 12, resumed 40, refused 1, …`: the counters as the daemon names them.
    let counts: Vec<String> = v["handshakes"]
        .as_object()
        .map(|m| m.iter().map(|(k, n)| format!("{k} {n}")).collect())
        .unwrap_or_default();
    println!("handshakes: {}", counts.join(", "));
    let backend = &v["backend"];
    if backend["reachable"].as_bool() == Some(false) {
        println!(
            "backend UNREACHABLE for {} s: {}",
            backend["unreachable_for_s"],
            backend["error"].as_str().unwrap_or("-")
        );
    } else {
        println!(
            "backend reachable; revocation feed at cursor {}, caught up {} s ago",
            backend["feed_cursor"],
            backend["feed_caught_up_s_ago"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), |s| s.to_string())
        );
    }
    let resumption = &v["resumption"];
    if resumption["suspended"].as_bool() == Some(true) {
        println!(
            "resumption REFUSED: no answer from the revocation feed for {} s (limits.feed_silence_s = {})",
            resumption["feed_silent_s"], resumption["feed_silence_limit_s"]
        );
    }
    if v["clones_suspected"].as_u64().unwrap_or(0) > 0 {
        println!(
            "suspected clones (two live sessions of one identity here): {}",
            v["clones_suspected"]
        );
    }
    let cert = &v["certificate"];
    if let Some(not_after) = cert["not_after"].as_str() {
        let days = cert["expires_in_s"].as_u64().unwrap_or(0) / 86_400;
        if cert["expired"].as_bool() == Some(true) {
            println!("client certificate EXPIRED at {not_after}: the backend refuses this gateway; ask the operator for a new one");
        } else {
            println!(
                "client certificate valid until {not_after} ({days} days); renewal from {}, {} renewals",
                cert["renewal_from"].as_str().unwrap_or("-"),
                cert["renewals"]
            );
        }
        if let Some(e) = cert["last_renewal_error"].as_str() {
            println!("  last renewal failed: {e}");
        }
    }
    let anchors = &v["anchor_updates"];
    println!(
        "trust-anchor updates: {} held (last serial {}), {} sent",
        anchors["held"], anchors["last_serial"], anchors["sent"]
    );
    for s in sessions {
        println!(
            "  {}  session {}  scope {:#x}  {}{}",
            s["peripheral"].as_str().unwrap_or("?"),
            s["session"].as_str().unwrap_or("?"),
            s["scope"].as_u64().unwrap_or(0),
            s["link"].as_str().unwrap_or("?"),
            if s["resumed"].as_bool() == Some(true) {
                "  (resumed)"
            } else {
                ""
            }
        );
    }
    Ok(())
}
