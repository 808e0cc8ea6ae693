//! # vouch-gateway
//!
//! The Vouch gateway: it finds the site's peripherals (BLE, or TCP for
//! development and simulation), runs the handshake with each, asks the backend
//! to vouch, and then carries their authenticated, encrypted traffic. It never
//! trusts a link address: sessions are keyed by the identity the backend
//! vouched for.
//!
//! The library is the daemon without its `main`: the daemon, the system
//! tests and the simulator all start a gateway through one endpoint,
//! [`endpoint::Gateway`], and feed it links from an accept loop of
//! [`serve`] (or, in the simulator, in-memory links).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use vouch_gateway::endpoint::{Gateway, Parts, Settings};
//! use vouch_gateway::{clock::SystemClock, metrics::Metrics};
//! # let backend: vouch_gateway::backend_client::HttpBackend = unimplemented!();
//! # let key: vouch_proto::keys::PublicKey = unimplemented!();
//! let (stop, shutdown) = tokio::sync::watch::channel(false);
//! let gateway = Gateway::start(
//!     Parts {
//!         key,
//!         backend,
//!         clock: SystemClock,
//!         metrics: Arc::new(Metrics::new()?),
//!         state: None,
//!         settings: Settings::default(),
//!         certificate: None,
//!     },
//!     shutdown,
//! )?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7800").await?;
//! tokio::spawn(vouch_gateway::serve::tcp::serve_tcp(gateway.clone(), listener, 1000, 247));
//! // … until it is time to stop:
//! stop.send(true)?;
//! gateway.closed().await;
//! # Ok(()) }
//! ```
//!
//! ## Modules, from the top down
//!
//! | module | what it holds |
//! |---|---|
//! | [`endpoint`] | the [`Gateway`](endpoint::Gateway): its state, its sweeper and followers, and the links it runs |
//! | [`serve`] | accept loops (TCP, the BLE central) and the link slots that admit links |
//! | [`api`] | the local API on a Unix socket, and the metrics endpoint |
//! | [`driver`] | one task per link: handshake, session, reports to the backend |
//! | [`reports`] | session events to the backend, coalesced into reports |
//! | [`revocation`] | the revocation feed follower (SPEC.md §10.5) |
//! | [`anchors`] | trust-anchor updates: fetch, hold, deliver (SPEC.md §7.7) |
//! | [`sessions`] | live sessions, tickets and the feed's state |
//! | [`state`] | what the gateway keeps on disk across restarts |
//! | [`backend_client`] | the backend behind a trait (HTTPS with mutual TLS), and why a request failed |
//! | [`certificate`] | the client certificate: its check at start, its renewal before it expires |
//! | [`retry`] | the delays between attempts against the backend: exponential, capped, jittered |
//! | [`transport`] | links: the [`Link`](transport::Link) trait, TCP, memory, BLE |
//! | [`config`], [`metrics`], [`clock`], [`error`] | configuration, counters, time, errors |
//! | `testing` | (feature `test-utils`) a fake backend for tests |

pub mod anchors;
pub mod api;
pub mod backend_client;
pub mod certificate;
/// The gateway's clocks (shared with the reference peripheral).
pub use vouch_host::clock;
pub mod config;
pub mod driver;
pub mod endpoint;
pub mod error;
pub mod metrics;
pub mod reports;
pub mod retry;
pub mod revocation;
pub mod serve;
pub mod sessions;
pub mod state;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod transport;

pub use error::Error;
