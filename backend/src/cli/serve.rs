//! `serve`: the HTTPS service, and the operations listener beside it.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use tokio::task::JoinHandle;
use vouch_backend::config::{Config, LogFormat};
use vouch_backend::datadir::{self, DataDir};
use vouch_backend::server::{self, Transport};
use vouch_backend::store::Store;
use vouch_backend::{app, keyring, pki, AppState};

use super::Cli;

#[derive(Args, Debug)]
pub(super) struct ServeArgs {
    /// Address to listen on (default from config: 127.0.0.1:8443).
    #[arg(long, env = "VOUCH_LISTEN")]
    listen: Option<String>,
    /// Operations listener: plain HTTP `/metrics`, `/healthz`, `/readyz`
    /// without credentials; refused unless the address is loopback.
    #[arg(long, env = "VOUCH_OPS_LISTEN")]
    ops_listen: Option<String>,
    /// Serve plain HTTP instead of HTTPS; refused unless the address is loopback.
    #[arg(long)]
    insecure_http: bool,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormatArg>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub(super) enum LogFormatArg {
    Text,
    Json,
}

fn init_logging(format: LogFormat) -> Result<()> {
    let format = match format {
        LogFormat::Json => vouch_host::logging::Format::Json,
        LogFormat::Text => vouch_host::logging::Format::Text,
    };
    Ok(vouch_host::logging::init(format, "info")?)
}

/// The listeners' addresses, checked: the main one, and the operations
/// listener's if configured.
struct Addresses {
    listen: SocketAddr,
    ops: Option<SocketAddr>,
}

/// Serves until SIGINT or SIGTERM, then drains the requests, writes the
/// audit summaries and closes the store.
pub(super) async fn serve(cli: &Cli, args: &ServeArgs) -> Result<()> {
    let config = settings(cli, args)?;
    init_logging(config.log_format)?;
    let addrs = addresses(&config)?;
    let (state, store, transport) = start(cli, &config).await?;
    let listener = tokio::net::TcpListener::bind(addrs.listen)
        .await
        .with_context(|| format!("cannot listen on {}", addrs.listen))?;
    let local = listener.local_addr()?;
    let scheme = if config.insecure_http {
        "http"
    } else {
        "https"
    };
    // The line tests and scripts wait for (the port may have been 0).
    println!("listening on {scheme}://{local}");
    let _ = std::io::stdout().flush();
    tracing::info!(%local, engine = ?store.engine(), scheme, "serving");
    let ops_server = match addrs.ops {
        None => None,
        Some(ops) => Some(spawn_ops(ops, &state).await?),
    };
    let shutdown_state = state.clone();
    let final_state = state.clone();
    server::serve(listener, app(state), transport, async move {
        server::shutdown_signal().await;
        tracing::info!("shutting down");
        shutdown_state.shutdown();
    })
    .await?;
    if let Some(ops) = ops_server {
        match ops.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the operations listener failed"),
            Err(e) => tracing::warn!(error = %e, "the operations listener panicked"),
        }
    }
    // Requests have drained: write the counts of repeated refusals.
    match final_state.flush_audit().await {
        Ok(n) => tracing::info!(summaries = n, "audit summaries written"),
        Err(e) => tracing::error!(error = %e, "could not write the audit summaries"),
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The settings: the file, then the environment, then the flags.
fn settings(cli: &Cli, args: &ServeArgs) -> Result<Config> {
    let mut config = super::settings(cli)?;
    if let Some(l) = &args.listen {
        config.listen = l.clone();
    }
    if let Some(l) = &args.ops_listen {
        config.ops_listen = Some(l.clone());
    }
    if args.insecure_http {
        config.insecure_http = true;
    }
    if let Some(f) = args.log_format {
        config.log_format = match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        };
    }
    if let Some(u) = &cli.database_url {
        config.database_url = Some(u.clone());
    }
    config.validate()?;
    Ok(config)
}

/// The listen addresses, refusing plain HTTP anywhere but on loopback.
fn addresses(config: &Config) -> Result<Addresses> {
    let listen: SocketAddr = config
        .listen
        .parse()
        .with_context(|| format!("listen address {:?} is not IP:PORT", config.listen))?;
    if config.insecure_http && !server::insecure_allowed(&listen) {
        bail!("--insecure-http is only allowed on a loopback address, not {listen}");
    }
    let ops = match &config.ops_listen {
        None => None,
        Some(a) => {
            let ops: SocketAddr = a
                .parse()
                .with_context(|| format!("ops_listen address {a:?} is not IP:PORT"))?;
            if !server::insecure_allowed(&ops) {
                bail!(
                    "ops_listen serves /metrics without credentials over plain HTTP, so only on a \
                     loopback address, not {ops}; elsewhere read /metrics on the main listener \
                     with the admin token"
                );
            }
            Some(ops)
        }
    };
    Ok(Addresses { listen, ops })
}

/// Loads the data directory and the TLS setup, opens the store, registers
/// and checks the key ring, and builds the state (which starts the
/// background tasks).
async fn start(cli: &Cli, config: &Config) -> Result<(AppState, Store, Transport)> {
    let mut data = DataDir::load(&cli.data_dir)?;
    let ca_pem = data.ca.cert_pem.clone();
    let tls = if config.insecure_http {
        None
    } else {
        Some(data.server_tls()?)
    };
    // Browsers verify no Ed25519 in TLS: the console gets an ECDSA P-256
    // certificate of its own (made or renewed here). Without it the API
    // serves on, and only browsers cannot connect.
    let console = match tls {
        Some(_) => match datadir::ensure_console_cert(&cli.data_dir) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "no console certificate: browsers cannot open the console");
                None
            }
        },
        None => None,
    };
    let url = config
        .database_url
        .clone()
        .unwrap_or_else(|| data.sqlite_url());
    let store = Store::open(&url)
        .await
        .context("cannot open the database")?;
    keyring::register(&mut data, &store, "backend")
        .await
        .context("cannot register the key ring")?;
    keyring::check(&data, &store)
        .await
        .context("the data directory's keys do not match the database")?;
    let state = AppState::new(store.clone(), data, config.clone()).await?;
    let transport = match tls {
        None => Transport::InsecureLoopback,
        Some((cert, key)) => Transport::Tls(Arc::new(pki::server_config(
            &ca_pem,
            &cert,
            &key,
            console.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
            state.metrics.client_cert_rejections(),
        )?)),
    };
    Ok((state, store, transport))
}

/// Binds the operations listener and serves it until shutdown.
async fn spawn_ops(ops: SocketAddr, state: &AppState) -> Result<JoinHandle<std::io::Result<()>>> {
    let ops_listener = tokio::net::TcpListener::bind(ops)
        .await
        .with_context(|| format!("cannot listen on {ops} (ops_listen)"))?;
    let ops_local = ops_listener.local_addr()?;
    // After the line tests wait for; a closed stdout is not an error.
    let _ = writeln!(std::io::stdout(), "operations on http://{ops_local}");
    let _ = std::io::stdout().flush();
    tracing::info!(%ops_local, "serving /metrics, /healthz, /readyz (no credentials)");
    let stop = state.shutdown.clone();
    Ok(tokio::spawn(server::serve(
        ops_listener,
        vouch_backend::ops_app(state.clone()),
        Transport::InsecureLoopback,
        async move { stop.cancelled().await },
    )))
}
