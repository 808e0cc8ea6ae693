//! The gateway endpoint: one object that owns what every link shares and the
//! tasks that keep it current, as quinn's `Endpoint` owns its connections.
//!
//! [`Gateway::start`] opens the session table (from the state directory when
//! there is one), spawns the one session sweeper, the revocation-feed
//! follower, the trust-anchor-update follower and the client-certificate
//! renewal, and then accepts links:
//! the accept loops of [`crate::serve`] hand it every link they admit
//! ([`Gateway::accept`], or [`Gateway::run_link`] on the caller's own task
//! when the caller must know how the link ended, as the BLE central does).
//! The daemon's `main`, the system-test harness and the simulator all start
//! their gateways here, so they run the same wiring.
//!
//! Shutdown: when the `shutdown` receiver given to [`start`](Gateway::start)
//! turns `true`, every driver closes its session and every follower ends;
//! [`Gateway::closed`] waits for all of them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use vouch_proto::handshake::gateway::GatewayConfig;
use vouch_proto::keys::PublicKey;

use crate::backend_client::BackendApi;
use crate::certificate::Renewal;
use crate::clock::Clock;
use crate::driver::{self, Context, Outcome};
use crate::metrics::Metrics;
use crate::sessions::{SessionTable, DEFAULT_FEED_SILENCE};
use crate::state::{StateBinding, StateDir, StateError};
use crate::transport::Link;

/// How often the sweeper closes idle sessions and drops expired tickets.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The limits and the followers of a gateway; [`Default`] is the daemon's
/// configuration defaults.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Most resumption tickets held (oldest expiring first are dropped).
    pub max_tickets: usize,
    /// Idle time after which a session is closed.
    pub idle_timeout: Duration,
    /// How long the revocation feed may stay silent before resumption stops
    /// (`limits.feed_silence_s`, SPEC.md §11.5); `None`: never.
    pub feed_silence_limit: Option<Duration>,
    /// How often the sweeper runs.
    pub sweep_every: Duration,
    /// Whether to follow the backend's revocation feed (SPEC.md §10.5). Only
    /// a simulation of a gateway cut off from it turns this off.
    pub follow_feed: bool,
    /// How often to fetch trust-anchor updates (SPEC.md §7.7), besides at
    /// start and on request; `None`: never (whoever runs the gateway fetches
    /// them itself, as the simulator's key-rotation scenario does).
    pub anchor_updates_every: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_tickets: 100_000,
            idle_timeout: Duration::from_secs(600),
            feed_silence_limit: Some(DEFAULT_FEED_SILENCE),
            sweep_every: SWEEP_EVERY,
            follow_feed: true,
            anchor_updates_every: Some(crate::anchors::DEFAULT_FETCH_INTERVAL),
        }
    }
}

/// What a gateway is made of.
pub struct Parts<'a, B, C> {
    /// Its identity's public key (the key the backend vouches for).
    pub key: PublicKey,
    /// Its backend.
    pub backend: B,
    /// The clock its drivers run on.
    pub clock: C,
    /// Its counters.
    pub metrics: Arc<Metrics>,
    /// Its state directory and what the state there must belong to; `None`:
    /// tickets, the feed cursor and trust-anchor updates live in memory only.
    pub state: Option<(&'a StateDir, StateBinding)>,
    /// Its limits and followers.
    pub settings: Settings,
    /// Its client certificate, to renew before it expires
    /// ([`crate::certificate::follow`]); `None`: not renewed (a backend
    /// reached without TLS, a simulation).
    pub certificate: Option<Renewal>,
}

/// A running gateway: the shared context of its drivers and the tasks it
/// owns. Links come in through [`accept`](Self::accept) or
/// [`run_link`](Self::run_link).
pub struct Gateway<B, C> {
    ctx: Arc<Context<B, C>>,
    shutdown: watch::Receiver<bool>,
    tasks: TaskTracker,
}

impl<B: BackendApi + Clone, C: Clock + Clone> Gateway<B, C> {
    /// Opens the gateway's state and starts its sweeper and followers; they
    /// run until `shutdown` turns `true`. Fails only when the state directory
    /// cannot be read or written.
    pub fn start(
        parts: Parts<'_, B, C>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Self>, StateError> {
        let Parts {
            key,
            backend,
            clock,
            metrics,
            state,
            settings,
            certificate,
        } = parts;
        let table = match state {
            Some((dir, binding)) => {
                SessionTable::open(settings.max_tickets, dir, &binding, Arc::new(clock.clone()))?
            }
            None => SessionTable::new(settings.max_tickets),
        };
        table.feed().set_silence_limit(settings.feed_silence_limit);
        let ctx = Arc::new(Context {
            config: GatewayConfig::new(key),
            backend: backend.clone(),
            clock,
            table: table.clone(),
            metrics: metrics.clone(),
            idle_timeout: settings.idle_timeout,
            reports: Default::default(),
        });
        let gateway = Self::unfollowed(ctx, settings.sweep_every, shutdown);
        if settings.follow_feed {
            gateway.tasks.spawn(crate::revocation::follow(
                backend.clone(),
                table.clone(),
                key,
                metrics.clone(),
                gateway.shutdown(),
            ));
        }
        if let Some(renewal) = certificate {
            gateway.tasks.spawn(crate::certificate::follow(
                backend.clone(),
                renewal,
                gateway.ctx.clock.clone(),
                metrics.clone(),
                gateway.shutdown(),
            ));
        }
        if let Some(every) = settings.anchor_updates_every {
            gateway.tasks.spawn(crate::anchors::follow(
                backend,
                table.anchor_updates().clone(),
                every,
                metrics,
                gateway.shutdown(),
            ));
        }
        Ok(Arc::new(gateway))
    }
}

impl<B: BackendApi, C: Clock> Gateway<B, C> {
    /// A gateway around an existing driver context, with its sweeper but no
    /// follower: for tests of the accept loops that feed the revocation feed
    /// and the trust-anchor updates to the table themselves.
    pub fn with_context(
        ctx: Arc<Context<B, C>>,
        sweep_every: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(Self::unfollowed(ctx, sweep_every, shutdown))
    }

    fn unfollowed(
        ctx: Arc<Context<B, C>>,
        sweep_every: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let tasks = TaskTracker::new();
        tasks.spawn(driver::sweeper(ctx.clone(), sweep_every, shutdown.clone()));
        Self {
            ctx,
            shutdown,
            tasks,
        }
    }

    /// What every driver of this gateway shares.
    pub fn context(&self) -> &Arc<Context<B, C>> {
        &self.ctx
    }

    /// Its sessions, tickets and feed state.
    pub fn table(&self) -> &Arc<SessionTable> {
        &self.ctx.table
    }

    /// Its counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.ctx.metrics
    }

    /// Its identity's public key.
    pub fn key(&self) -> PublicKey {
        self.ctx.config.gateway_key
    }

    /// The shutdown signal it was started with.
    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// Runs a driver for `link` on a task of the gateway's own, with a CSPRNG
    /// seeded from the operating system; [`closed`](Self::closed) waits for it.
    pub fn accept<L: Link>(self: &Arc<Self>, mut link: L) -> JoinHandle<Outcome> {
        // The task captures one pointer (the gateway) rather than the context
        // and the shutdown receiver, and draws its seed inside: a session's
        // task lives as long as the session, tokio sizes tasks in steps of
        // 128 bytes, and the budget per session is 2 KiB (DESIGN.md §6,
        // gateway/tests/memory.rs measures it).
        let gateway = self.clone();
        self.tasks.spawn(async move {
            let (ctx, shutdown) = (gateway.ctx.clone(), gateway.shutdown.clone());
            drop(gateway);
            driver::run_link(ctx, &mut link, link_seed(), shutdown).await
        })
    }

    /// [`accept`](Self::accept) with a fixed seed for the link's CSPRNG (the
    /// simulator's reproducible runs).
    pub fn accept_seeded<L: Link>(&self, mut link: L, seed: [u8; 32]) -> JoinHandle<Outcome> {
        let (ctx, shutdown) = (self.ctx.clone(), self.shutdown.clone());
        self.tasks
            .spawn(async move { driver::run_link(ctx, &mut link, seed, shutdown).await })
    }

    /// Runs a driver for `link` on the caller's task until the link ends,
    /// and says how it ended (the BLE central backs off a device whose
    /// handshakes fail, and disconnects the link itself afterwards).
    pub async fn run_link<L: Link>(&self, link: &mut L) -> Outcome {
        driver::run_link(self.ctx.clone(), link, link_seed(), self.shutdown.clone()).await
    }

    /// After shutdown: waits until every task of the gateway (sweeper,
    /// followers, the drivers of [`accept`](Self::accept)) has ended, which
    /// includes every session's close.
    pub async fn closed(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// A fresh per-link CSPRNG seed from the operating system.
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
