//! The TCP accept loop (development, the system tests, CI): every connection
//! admitted by the link slots becomes a link the gateway runs a driver for.

use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::{debug, info, warn};
use vouch_proto::framing::ReassemblyLimits;

use super::slots::{Acquired, Gated, LinkSlots, DEFAULT_FIRST_MESSAGE};
use crate::backend_client::BackendApi;
use crate::clock::Clock;
use crate::endpoint::Gateway;
use crate::transport::tcp::TcpLink;

/// Serves peripherals over TCP until the gateway's shutdown: at most
/// `max_links` links, each of which must send its first message within
/// [`DEFAULT_FIRST_MESSAGE`] ([`serve_tcp_with`] sets it). The drivers run on
/// the gateway's tasks: [`Gateway::closed`] waits for their sessions to close.
pub async fn serve_tcp<B: BackendApi, C: Clock>(
    gateway: Arc<Gateway<B, C>>,
    listener: TcpListener,
    max_links: usize,
    att_mtu: usize,
) -> std::io::Result<()> {
    let slots = LinkSlots::new(max_links, DEFAULT_FIRST_MESSAGE);
    serve_tcp_with(gateway, listener, slots, att_mtu).await
}

/// [`serve_tcp`] with its link slots: a connection beyond the cap takes the
/// slot of the link that has waited longest for its first message, and is
/// refused only when every link has spoken (SPEC.md §8.4, [`super::slots`]).
pub async fn serve_tcp_with<B: BackendApi, C: Clock>(
    gateway: Arc<Gateway<B, C>>,
    listener: TcpListener,
    slots: Arc<LinkSlots>,
    att_mtu: usize,
) -> std::io::Result<()> {
    let metrics = gateway.metrics().clone();
    let mut shutdown = gateway.shutdown();
    info!(addr = %listener.local_addr()?, att_mtu, "TCP transport listening");
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    metrics.link_error("tcp");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let slot = match slots.acquire() {
            Some((slot, Acquired::Free)) => slot,
            Some((slot, Acquired::Evicted)) => {
                debug!(peer = %addr, "link limit reached: the link silent the longest makes room");
                metrics.link_error("tcp");
                slot
            }
            None => {
                warn!(peer = %addr, "link limit reached and every link has spoken: refusing connection");
                metrics.link_error("tcp");
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
        gateway.accept(Gated::new(link, slot));
    }
    info!("TCP transport stopped accepting: closing sessions");
    Ok(())
}
