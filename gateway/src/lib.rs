//! # vouch-gateway
//!
//! The Vouch gateway: it finds the site's peripherals (BLE, or TCP for
//! development and simulation), runs the handshake with each, asks the backend
//! to vouch, and then carries their authenticated, encrypted traffic. It never
//! trusts a link address: sessions are keyed by the identity the backend
//! vouched for.
//!
//! The library is the daemon without its `main`: the simulator and the tests
//! run the same drivers with an in-memory link and an in-process backend.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use vouch_gateway::{clock::SystemClock, driver::Context, metrics::Metrics, sessions::SessionTable};
//! # let backend: vouch_gateway::backend_client::HttpBackend = unimplemented!();
//! # let config: vouch_proto::handshake::gateway::GatewayConfig = unimplemented!();
//! let ctx = Arc::new(Context {
//!     config,
//!     backend,
//!     clock: SystemClock,
//!     table: SessionTable::new(10_000),
//!     metrics: Arc::new(Metrics::new()?),
//!     idle_timeout: std::time::Duration::from_secs(600),
//! });
//! let (_stop, shutdown) = tokio::sync::watch::channel(false);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7800").await?;
//! vouch_gateway::server::serve_tcp(listener, ctx, 1000, 247, shutdown).await?;
//! # Ok(()) }
//! ```

pub mod anchors;
pub mod api;
pub mod backend_client;
pub mod clock;
pub mod config;
pub mod driver;
pub mod error;
pub mod metrics;
pub mod revocation;
pub mod server;
pub mod sessions;
pub mod state;
pub mod transport;

pub use error::Error;
