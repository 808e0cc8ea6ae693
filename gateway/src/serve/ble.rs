//! The BLE central's logic, independent of any Bluetooth library: our own
//! device table, filtering advertisements for the Vouch service in our code,
//! a cap on concurrent links, timeouts on every radio operation, and retries
//! with backoff for connection aborts and first-discovery failures
//! (SPEC.md §8.5). It speaks to the radio through [`BleRadio`]
//! ([`crate::transport::ble`]; btleplug implements it, tests use a fake) and
//! hands every link that comes up to the [`Gateway`].
//!
//! A device is identified here only by the opaque id the stack gives it. It is
//! a handle for reconnecting, never an identity: who is on the other end is
//! decided by the handshake, and a spoofed address gains nothing but a
//! handshake it cannot complete.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::slots::{Acquired, Gated, LinkSlots};
use crate::backend_client::BackendApi;
use crate::clock::Clock;
use crate::driver::Outcome;
use crate::endpoint::Gateway;
use crate::retry::Retry;
use crate::state::KnownDevices;
use crate::transport::ble::{Advert, BleConnection, BleLink, BleRadio, SERVICE_UUID};
use crate::transport::LinkError;

/// Timeouts and limits of the central.
#[derive(Debug, Clone, Copy)]
pub struct BleSettings {
    /// Most concurrent links.
    pub max_links: usize,
    /// Timeout of one connect (not counting the wait for a turn).
    pub connect_timeout: Duration,
    /// After a session ends, when to try the device again from its last
    /// advertisement (it may be rebooting; BlueZ will not report it again).
    pub rejoin_after: Duration,
    /// Most connects in progress at once. BlueZ makes one LE connection at a
    /// time and queues the rest, so a device's connect timeout would otherwise
    /// run while it waits behind the others.
    pub concurrent_connects: usize,
    /// Timeout of service discovery and subscription.
    pub setup_timeout: Duration,
    /// Timeout of one write.
    pub write_timeout: Duration,
    /// Retries of a failed first discovery on the same connection attempt.
    pub setup_retries: u32,
    /// First backoff after a failed attempt; doubles per failure, each
    /// wait plus up to as much again in jitter ([`Retry`]).
    pub backoff_min: Duration,
    /// Longest backoff (before its jitter).
    pub backoff_max: Duration,
    /// A link up that sends no whole message within this is closed; when
    /// the cap is reached, the link that waited longest for its first
    /// message makes room ([`super::slots`]).
    pub first_message: Duration,
    /// A link that just came up is not evicted before it had this long to
    /// send its first message; a link being connected never is.
    pub evict_grace: Duration,
}

impl Default for BleSettings {
    fn default() -> Self {
        Self {
            max_links: 8,
            // Generous: a slow advertiser (or an emulator) can take several
            // seconds; connects are made one at a time, so this is one
            // device's own time.
            connect_timeout: Duration::from_secs(15),
            rejoin_after: Duration::from_secs(2),
            concurrent_connects: 1,
            setup_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(5),
            setup_retries: 2,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            first_message: super::slots::DEFAULT_FIRST_MESSAGE,
            evict_grace: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Default)]
struct DeviceState {
    busy: bool,
    /// The backoff after failed links (none since the last success: `None`).
    retry: Option<Retry>,
    retry_at: Option<tokio::time::Instant>,
    /// The last advertisement seen, to retry from when none comes again.
    last_advert: Option<Advert>,
    /// The link ended: the device may be rebooting, so try it again once.
    rejoin: bool,
    /// Attempts made from `last_advert` since the stack last reported the
    /// device; after [`STALE_ATTEMPTS`] the device waits for a new report.
    stale_attempts: u32,
    /// The device has advertised the Vouch service. BlueZ replaces a device's
    /// service list with what it resolved over GATT once connected, so its
    /// later reports may lack the service: they are still this device's.
    /// (Across restarts the same is remembered by address: [`KnownDevices`].)
    vouch: bool,
    /// Its last turn found no slot: try again from the last advert, without
    /// counting a stale attempt (the device did nothing wrong).
    no_slot: bool,
}

/// Connects made from a remembered advertisement before the device must be
/// reported again: a device that left for good costs at most this many
/// connect timeouts, and connects are made one at a time.
pub const STALE_ATTEMPTS: u32 = 3;

/// What a finished connection task reports to the manager.
#[derive(Debug)]
enum Done {
    /// A session ran: reset the failure count.
    Ran(String),
    /// Connecting, discovery or the handshake failed: back off.
    Failed(String),
    /// Every slot was held by a link that could not make room: try again
    /// soon, without counting it against the device.
    NoSlot(String),
}

/// Runs the central until `shutdown`: scans, connects to Vouch peripherals
/// within the cap, and runs a driver per link. Which devices advertised the
/// Vouch service is remembered for as long as the process runs; see
/// [`serve_ble_with_memory`] to keep it across restarts.
pub async fn serve_ble<R: BleRadio, B: BackendApi, C: Clock>(
    gateway: Arc<Gateway<B, C>>,
    radio: Arc<R>,
    settings: BleSettings,
) -> Result<(), LinkError> {
    serve_ble_with_memory(gateway, radio, settings, KnownDevices::in_memory()).await
}

/// [`serve_ble`], with the addresses of devices that advertised the Vouch
/// service kept in `known` (in the state directory: [`KnownDevices::open`]).
/// A device reported at a remembered address is recognised even when BlueZ
/// reports it with the services it resolved instead of the ones it
/// advertised, as it does for a device it already knew when the gateway
/// (re)started.
pub async fn serve_ble_with_memory<R: BleRadio, B: BackendApi, C: Clock>(
    gateway: Arc<Gateway<B, C>>,
    radio: Arc<R>,
    settings: BleSettings,
    known: KnownDevices,
) -> Result<(), LinkError> {
    let mut shutdown = gateway.shutdown();
    let mut adverts = radio.scan().await?;
    // The grace is a part of the first-message time, never all of it.
    let slots = LinkSlots::with_grace(
        settings.max_links,
        settings.first_message,
        settings.evict_grace.min(settings.first_message / 2),
    );
    let connecting = Arc::new(Semaphore::new(settings.concurrent_connects.max(1)));
    let mut devices = Devices {
        table: HashMap::new(),
        known,
        settings,
    };
    let mut tasks: JoinSet<Done> = JoinSet::new();
    info!(
        max_links = settings.max_links,
        "BLE central scanning for the Vouch service"
    );
    // BlueZ reports a known device again only when its advertisement or
    // signal strength changes, so a device whose connection failed may never
    // be reported again: the last advert of every Vouch device is kept, and a
    // tick retries those whose backoff has run out.
    let mut tick = tokio::time::interval(settings.backoff_min.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let candidates: Vec<Advert> = tokio::select! {
            advert = adverts.recv() => {
                let Some(advert) = advert else {
                    warn!("BLE scan ended");
                    break;
                };
                devices.advertised(advert).into_iter().collect()
            }
            _ = tick.tick() => devices.due(tokio::time::Instant::now()),
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(done) = done {
                    if devices.finished(done) {
                        gateway.metrics().link_error("ble");
                    }
                }
                continue;
            }
            _ = shutdown.changed() => break,
        };
        for advert in candidates {
            if !devices.take_turn(&advert.device, tokio::time::Instant::now()) {
                continue;
            }
            let (radio, gateway) = (radio.clone(), gateway.clone());
            let (slots, connecting) = (slots.clone(), connecting.clone());
            tasks.spawn(async move {
                connect_and_run(&gateway, radio, settings, advert, &slots, connecting).await
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The central's device table: what it knows of every device that
/// advertised the Vouch service, and when to try each again.
struct Devices {
    table: HashMap<String, DeviceState>,
    known: KnownDevices,
    settings: BleSettings,
}

impl Devices {
    /// An advertisement report: the advert to connect from, if it is a Vouch
    /// device's. Filtered in our own code: only the Vouch service, or a
    /// device that advertised it before (in this process, or at this address
    /// before a restart).
    fn advertised(&mut self, advert: Advert) -> Option<Advert> {
        let advertises = advert.services.contains(&SERVICE_UUID);
        let seen_before = self.table.get(&advert.device).is_some_and(|s| s.vouch)
            || self.known.contains(&advert.address);
        if !advertises && !seen_before {
            debug!(device = %advert.device, services = ?advert.services, "advert without the Vouch service");
            return None;
        }
        if advertises && self.known.remember(&advert.address) {
            debug!(device = %advert.device, address = %advert.address, "Vouch device remembered");
        }
        debug!(device = %advert.device, "advert");
        let s = self.table.entry(advert.device.clone()).or_default();
        s.vouch = true;
        s.last_advert = Some(advert.clone());
        s.stale_attempts = 0;
        Some(advert)
    }

    /// The devices to try again now from their last advertisement: those
    /// whose backoff ran out after a failure, whose session ended, or whose
    /// last turn found no slot. A device tried [`STALE_ATTEMPTS`] times
    /// without being reported again waits for an advertisement.
    fn due(&mut self, now: tokio::time::Instant) -> Vec<Advert> {
        let mut due = Vec::new();
        for s in self.table.values_mut() {
            let waiting = s.retry.is_some() || s.rejoin || s.no_slot;
            if s.busy || !waiting || s.retry_at.is_none_or(|t| t > now) {
                continue;
            }
            if s.no_slot {
                if let Some(a) = s.last_advert.clone() {
                    s.no_slot = false;
                    due.push(a);
                    continue;
                }
            }
            if s.stale_attempts >= STALE_ATTEMPTS {
                if let Some(a) = s.last_advert.take() {
                    debug!(device = %a.device, "not reported again; waiting for an advertisement");
                }
                continue;
            }
            if let Some(a) = s.last_advert.clone() {
                s.stale_attempts += 1;
                s.rejoin = false;
                due.push(a);
            }
        }
        due
    }

    /// A connection task finished; returns whether it counts as a link
    /// failure.
    fn finished(&mut self, done: Done) -> bool {
        let now = tokio::time::Instant::now();
        match done {
            Done::Ran(device) => {
                let s = self.table.entry(device).or_default();
                s.busy = false;
                s.retry = None;
                // BlueZ may not report a device that rebooted on the same
                // address until its cached entry expires (30 s or more): try
                // it again from the last advert.
                s.rejoin = true;
                s.retry_at = Some(now + self.settings.rejoin_after);
                false
            }
            Done::Failed(device) => {
                let s = self.table.entry(device.clone()).or_default();
                s.busy = false;
                let (min, max) = (self.settings.backoff_min, self.settings.backoff_max);
                let retry = s.retry.get_or_insert_with(|| Retry::new(min, max));
                let wait = retry.next_delay();
                s.retry_at = Some(now + wait);
                info!(device = %device, failures = retry.failures(), retry_in_ms = wait.as_millis() as u64, "BLE link failed; backing off");
                true
            }
            Done::NoSlot(device) => {
                let s = self.table.entry(device).or_default();
                s.busy = false;
                s.no_slot = true;
                s.retry_at = Some(now + self.settings.rejoin_after);
                false
            }
        }
    }

    /// Whether `device` may be connected now (it is not connected and not
    /// backing off); if so, it is marked busy until its task finishes.
    fn take_turn(&mut self, device: &str, now: tokio::time::Instant) -> bool {
        let state = self.table.entry(device.to_string()).or_default();
        if state.busy || state.retry_at.is_some_and(|t| t > now) {
            return false;
        }
        state.busy = true;
        state.no_slot = false;
        true
    }
}

async fn connect_and_run<R: BleRadio, B: BackendApi, C: Clock>(
    gateway: &Gateway<B, C>,
    radio: Arc<R>,
    settings: BleSettings,
    advert: Advert,
    slots: &Arc<LinkSlots>,
    connecting: Arc<Semaphore>,
) -> Done {
    let device = advert.device.clone();
    // One connect at a time; the turn is held until the link is set up, which
    // is bounded by the connect and setup timeouts, so waiting for it is too.
    let Ok(turn) = connecting.acquire_owned().await else {
        return Done::Failed(device);
    };
    // The slot is taken with the turn, not before: a device waiting for its
    // turn holds no slot, and a link being connected cannot be evicted
    // (slots.rs), so it must not take one until it is about to connect.
    let slot = loop {
        match slots.acquire_connecting() {
            Some((slot, Acquired::Free)) => break slot,
            Some((slot, Acquired::Evicted)) => {
                debug!(device = %device, "link cap reached: the link silent the longest makes room");
                break slot;
            }
            None => match slots.evictable_at() {
                // A link that just came up has its grace to speak first.
                Some(at) => tokio::time::sleep_until(at).await,
                None => {
                    debug!(device = %device, "link cap reached and no link can make room; not connecting");
                    return Done::NoSlot(device);
                }
            },
        }
    };
    let conn = match tokio::time::timeout(settings.connect_timeout, radio.connect(&device)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            info!(device = %device, address = %advert.address, error = %e, "BLE connect failed");
            return Done::Failed(device);
        }
        Err(_) => {
            info!(device = %device, "BLE connect timed out; cancelling it");
            radio.cancel(&device).await;
            return Done::Failed(device);
        }
    };
    let mut conn = conn;
    let mut attempt = 0;
    loop {
        match tokio::time::timeout(settings.setup_timeout, conn.setup()).await {
            Ok(Ok(())) => break,
            Ok(Err(e)) if attempt < settings.setup_retries => {
                attempt += 1;
                debug!(device = %device, error = %e, attempt, "GATT discovery failed; retrying");
            }
            Ok(Err(e)) => {
                info!(device = %device, error = %e, "GATT discovery failed");
                conn.disconnect().await;
                return Done::Failed(device);
            }
            Err(_) => {
                info!(device = %device, "GATT discovery timed out");
                conn.disconnect().await;
                return Done::Failed(device);
            }
        }
    }
    drop(turn);
    info!(device = %device, address = %advert.address, "BLE link up");
    // The first-message deadline runs from here: the peripheral sends its
    // Hello once subscribed (SPEC.md §8.5).
    let mut link = Gated::new(
        BleLink::new(conn, device.clone(), settings.write_timeout),
        slot,
    );
    let outcome = gateway.run_link(&mut link).await;
    debug!(device = %device, ?outcome, "BLE link done");
    link.into_inner().into_inner().disconnect().await;
    match outcome {
        // A device whose handshakes fail is backed off like one that cannot
        // be reached: each attempt may cost the backend a vouch request.
        Outcome::HandshakeFailed(_) => Done::Failed(device),
        Outcome::SessionEnded { .. } => Done::Ran(device),
    }
}
