//! Serving the router over TLS 1.3 (tokio-rustls, hyper-util), or over plain
//! HTTP on loopback for development.
//!
//! Each accepted connection does its TLS handshake (bounded by a timeout),
//! then the Ed25519 key of the client certificate, if any, is attached to
//! every request on that connection as a [`ClientIdentity`]. Which routes
//! need it is the router's business. Shutdown is graceful: stop accepting,
//! let requests in flight finish (bounded), then return.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::routes::gateway::InsecureDevIdentity;
use crate::ClientIdentity;

/// Longest TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a request's headers (slow-loris bound).
const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for requests in flight at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How to serve.
#[derive(Clone)]
pub enum Transport {
    /// HTTPS with this configuration.
    Tls(Arc<rustls::ServerConfig>),
    /// Plain HTTP (the caller checked that the address is loopback). The
    /// gateway API then takes the gateway key from a development header.
    InsecureLoopback,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tls(_) => "Tls",
            Transport::InsecureLoopback => "InsecureLoopback",
        })
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    transport: Transport,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let acceptor = match &transport {
        Transport::Tls(cfg) => Some(tokio_rustls::TlsAcceptor::from(cfg.clone())),
        Transport::InsecureLoopback => None,
    };
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead
                    // of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            match acceptor {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let identity = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(crate::pki::ed25519_key_of);
                    let svc = router.map_request(move |mut req: Request<Incoming>| {
                        req.extensions_mut().insert(ClientIdentity(identity));
                        req
                    });
                    let conn = builder
                        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc))
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                None => {
                    let svc = router.map_request(move |mut req: Request<Incoming>| {
                        req.extensions_mut().insert(ClientIdentity(None));
                        req.extensions_mut().insert(InsecureDevIdentity);
                        req
                    });
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
    Ok(())
}

/// Whether plain HTTP may be served on `addr` (loopback only).
pub fn insecure_allowed(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Resolves when the process receives SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
