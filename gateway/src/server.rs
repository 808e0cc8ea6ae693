//! Accept loops: one driver task per link, a cap on concurrent links, and a
//! graceful shutdown that closes every session.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use vouch_proto::framing::ReassemblyLimits;

use crate::backend_client::BackendApi;
use crate::clock::Clock;
use crate::driver::{run_link, Context};
use crate::transport::slots::{Acquired, Gated, LinkSlots};
use crate::transport::tcp::TcpLink;

/// A fresh per-link RNG seed from the operating system.
pub fn link_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut seed) {
        // Without entropy no handshake may run: fail loudly rather than weakly.
        #[allow(clippy::panic)]
        {
            panic!("no OS randomness for the handshake: {e}");
        }
    }
    seed
}

/// Serves peripherals over TCP until `shutdown` turns true, then waits for
/// every driver to close its session. At most `max_links` links, each of
/// which must send its first message within
/// [`DEFAULT_FIRST_MESSAGE`](crate::transport::slots::DEFAULT_FIRST_MESSAGE)
/// ([`serve_tcp_with`] sets it).
pub async fn serve_tcp<B: BackendApi, C: Clock>(
    listener: TcpListener,
    ctx: Arc<Context<B, C>>,
    max_links: usize,
    att_mtu: usize,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let slots = LinkSlots::new(max_links, crate::transport::slots::DEFAULT_FIRST_MESSAGE);
    serve_tcp_with(listener, ctx, slots, att_mtu, shutdown).await
}

/// [`serve_tcp`] with its link slots: a connection beyond the cap takes the
/// slot of the link that has waited longest for its first message, and is
/// refused only when every link has spoken (SPEC.md §8.4,
/// [`crate::transport::slots`]).
pub async fn serve_tcp_with<B: BackendApi, C: Clock>(
    listener: TcpListener,
    ctx: Arc<Context<B, C>>,
    slots: Arc<LinkSlots>,
    att_mtu: usize,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut drivers = JoinSet::new();
    tokio::spawn(crate::driver::sweeper(
        ctx.clone(),
        std::time::Duration::from_secs(1),
        shutdown.clone(),
    ));
    info!(addr = %listener.local_addr()?, att_mtu, "TCP transport listening");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        ctx.metrics.link_error("tcp");
                        continue;
                    }
                };
                let slot = match slots.acquire() {
                    Some((slot, Acquired::Free)) => slot,
                    Some((slot, Acquired::Evicted)) => {
                        debug!(peer = %addr, "link limit reached: the link silent the longest makes room");
                        ctx.metrics.link_error("tcp");
                        slot
                    }
                    None => {
                        warn!(peer = %addr, "link limit reached and every link has spoken: refusing connection");
                        ctx.metrics.link_error("tcp");
                        drop(stream);
                        continue;
                    }
                };
                let link = match TcpLink::new(stream, att_mtu, ReassemblyLimits::default()) {
                    Ok(l) => l,
                    Err(e) => {
                        warn!(peer = %addr, error = %e, "could not set up link");
                        continue;
                    }
                };
                let mut link = Gated::new(link, slot);
                let ctx = ctx.clone();
                let shutdown = shutdown.clone();
                drivers.spawn(async move {
                    run_link(ctx, &mut link, link_seed(), shutdown).await
                });
            }
            Some(_) = drivers.join_next(), if !drivers.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    info!(links = drivers.len(), "shutting down: closing sessions");
    while drivers.join_next().await.is_some() {}
    Ok(())
}
