//! The orchestrator: sets up the backend, the gateways and the fleet, plays
//! the timeline, and gathers the report.
//!
//! ## Time
//!
//! Events happen in virtual time. Between two events, every device action
//! the first one started (a connect at its virtual start time within
//! `spread_s`) runs for real and concurrently — real gateway drivers, the
//! real backend — and the next event waits until all of them have finished.
//! Outcomes therefore never depend on how the machine schedules threads,
//! and the modelled latency comes from the link model and the modelled
//! uplink, not from the wall clock: the same seed gives the same handshakes,
//! the same failures and the same latencies. Wall-clock figures (`wall_s`,
//! rates, `revocation_ms`, memory) are measured and vary between runs.
//!
//! ## Phases
//!
//! [`run`] starts the world (`World::start`: the backend, its anchors, the
//! enrolled gateways, the policy, the imported fleet), plays the timeline
//! (`Timeline::play`, one method per event action; an attack goes through
//! `attack`: victims, the stage, honest devices beside it, the tally),
//! closes (`World::close`: the backend's counters, draining, shutting
//! down) and builds the report (`Timeline::finish`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::Method;
use indicatif::{ProgressBar, ProgressStyle};
use rand_chacha::ChaCha20Rng;
use rand_core::Rng;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use vouch_gateway::transport::memory::pair;
use vouch_proto::anchor::{AnchorBundle, AnchorSet};
use vouch_proto::handshake::peripheral::TicketSlot;
use vouch_proto::keys::IdentityKey;
use vouch_proto::session::CloseReason;
use vouch_proto::wire::backend::route;
use vouch_proto::AlertCode;

use crate::adversary::{self, Arena, AttackOutput, Victim};
use crate::backend::{BackendMode, SimBackend};
use crate::error::Error;
use crate::fleet::{
    connect, derive_seed, meet, rng_for, wait_until, ConnectResult, Env, SimDevice, SimGateway,
    Verdict,
};
use crate::link::{unit, LinkModel};
use crate::report::{
    peak_rss_mib, round2, rss_mib, AttackTally, BackendFigures, BytesOnAir, Handshakes,
    LinkCounters, LoadSample, Percentiles, Report, Resumptions,
};
use crate::scenario::{Action, AttackClass, Event, Scenario, Select};

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The scenario.
    pub scenario: Scenario,
    /// Overrides the scenario's peripheral count.
    pub peripherals: Option<usize>,
    /// Overrides the scenario's gateway count.
    pub gateways: Option<usize>,
    /// The seed of every RNG in the run.
    pub seed: u64,
    /// In-process router or HTTPS on loopback.
    pub backend: BackendMode,
    /// A PostgreSQL server (a database is created for the run); SQLite in a
    /// temporary directory when `None`.
    pub database_url: Option<String>,
    /// How many backend instances serve the fleet (in-process, on the one
    /// database); gateway `g` talks to instance `g mod n`, and the operator's
    /// revocations go to instance 0.
    pub backend_instances: usize,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// The operator's revocation calls side by side, unless an event says
/// otherwise (`at_once`).
const REVOKE_AT_ONCE: usize = 64;

/// One revocation's reach: admin call → the live session's close at the
/// peripheral (wall clock, ms), how much of it the admin call took, and
/// whether the session's gateway is on another backend instance than the
/// call.
#[derive(Debug, Clone, Copy)]
struct Reach {
    ms: f64,
    call_ms: f64,
    elsewhere: bool,
}

/// One honest handshake, for the plots.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Virtual start, s.
    pub start_s: f64,
    /// Modelled latency, ms.
    pub latency_ms: f64,
    /// Completed.
    pub ok: bool,
    /// A resumption.
    pub resumed: bool,
}

/// A run's report and the data behind the plots.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The report.
    pub report: Report,
    /// Every honest handshake.
    pub samples: Vec<Sample>,
    /// The timeline's events: virtual time and a label.
    pub marks: Vec<(f64, String)>,
    /// Every revocation's reach (admin call → the live session's close at
    /// the peripheral, wall clock, ms), sorted; empty where revocation is
    /// not exercised. The report's `revocation_ms` summarises these.
    pub revocations_ms: Vec<f64>,
}

#[derive(Default)]
struct Acc {
    h: Handshakes,
    r: Resumptions,
    lat_full: Vec<f64>,
    lat_res: Vec<f64>,
    air_full: u64,
    air_res: u64,
    msg_full: u64,
    link: LinkCounters,
    air_total: u64,
    honest_rejected: u64,
    samples: Vec<Sample>,
    connect_wall: Duration,
    end_ms: f64,
    queue_waits: Vec<f64>,
}

impl Acc {
    /// Counts a connect phase that started at `t`: its wall time, then
    /// each honest connection.
    fn add_phase(&mut self, t: Instant, rs: &[ConnectResult]) {
        self.connect_wall += t.elapsed();
        for r in rs {
            let _ = self.add(r, false);
        }
    }

    /// Counts one honest connection; returns whether it counted as an
    /// honest device refused.
    fn add(&mut self, r: &ConnectResult, excuse_all: bool) -> bool {
        self.link.fragments += u64::from(r.air.fragments);
        self.link.packets += u64::from(r.air.packets);
        self.link.retransmissions += u64::from(r.air.retransmissions);
        self.link.disconnects += u64::from(r.disconnects);
        self.air_total += r.air.air_bytes;
        if r.queued_us > 0.0 {
            self.link.queued += 1;
            self.queue_waits.push(r.queued_us / 1000.0);
        }
        if r.resumption_rejected {
            self.r.rejected += 1;
        }
        let lat = r.latency_us / 1000.0;
        self.end_ms = self.end_ms.max(r.start_ms as f64 + lat);
        let ok = r.verdict == Verdict::Established;
        self.samples.push(Sample {
            start_s: r.start_ms as f64 / 1000.0,
            latency_ms: lat,
            ok,
            resumed: r.resumed,
        });
        if ok {
            self.h.ok += 1;
            if r.resumed {
                self.r.ok += 1;
                self.lat_res.push(lat);
                self.air_res += r.air.air_bytes;
            } else {
                self.h.full_ok += 1;
                self.lat_full.push(lat);
                self.air_full += r.air.air_bytes;
                self.msg_full += r.message_bytes;
            }
            return false;
        }
        self.h.failed += 1;
        let excused = excuse_all
            || r.verdict == Verdict::LinkLost
            || (r.uplink_down && r.verdict == Verdict::Refused(AlertCode::Busy));
        if excused {
            self.h.excused += 1;
        } else {
            self.honest_rejected += 1;
        }
        !excused
    }
}

struct World {
    backend: SimBackend,
    env: Arc<Env>,
    devices: Vec<Option<SimDevice>>,
    revoked_gateways: HashSet<usize>,
    sem: Arc<Semaphore>,
    pb: ProgressBar,
    seed: u64,
    links: LinkQueue,
}

/// The gateways' link caps in modelled time: each central holds at most
/// `max` links at once, a connection keeps its link from the moment it gets
/// one until its handshake is over (its modelled latency), and connections
/// take free links in order of arrival (virtual start, then device).
/// Computed from the phase's results once they are in, so it depends on the
/// seed only, never on how the machine scheduled the real handshakes (a
/// handshake's modelled cost does not depend on when it starts).
struct LinkQueue {
    max: usize,
    /// Per gateway: when each busy link frees, virtual µs.
    busy: Vec<std::collections::BinaryHeap<std::cmp::Reverse<u64>>>,
    /// Most links one gateway held at once.
    peak: usize,
}

impl LinkQueue {
    fn new(max: usize, gateways: usize) -> Self {
        Self {
            max,
            busy: vec![Default::default(); if max == 0 { 0 } else { gateways }],
            peak: 0,
        }
    }

    /// Queues the phase's connections (`gw` of each, in `rs` order):
    /// adds each one's wait for a link to its latency.
    fn schedule(&mut self, rs: &mut [ConnectResult], gw: &[usize]) {
        use std::cmp::Reverse;
        if self.max == 0 {
            return;
        }
        let mut order: Vec<usize> = (0..rs.len()).collect();
        order.sort_by_key(|&k| (rs[k].start_ms, rs[k].device));
        for k in order {
            let Some(busy) = self.busy.get_mut(gw[k]) else {
                continue;
            };
            let r = &mut rs[k];
            let arrive = r.start_ms * 1000;
            // Links freed by the time it arrives are free.
            while busy.peek().is_some_and(|Reverse(t)| *t <= arrive) {
                busy.pop();
            }
            let begin = if busy.len() < self.max {
                arrive
            } else {
                busy.pop().map_or(arrive, |Reverse(t)| t.max(arrive))
            };
            let service = r.latency_us.max(0.0) as u64;
            let wait = (begin - arrive) as f64;
            r.queued_us = wait;
            r.latency_us += wait;
            busy.push(Reverse(begin + service));
            // Links busy at `begin`: those freeing later, and this one.
            let held = busy.iter().filter(|Reverse(t)| *t > begin).count();
            self.peak = self.peak.max(held);
        }
    }
}

fn active_home(home: usize, m: usize, revoked: &HashSet<usize>) -> usize {
    (0..m)
        .map(|k| (home + k) % m)
        .find(|g| !revoked.contains(g))
        .unwrap_or(home)
}

impl World {
    fn dev(&self, i: usize) -> Option<&SimDevice> {
        self.devices.get(i).and_then(Option::as_ref)
    }

    fn select(
        &self,
        sel: Select,
        fraction: f64,
        rng: &mut ChaCha20Rng,
        exclude: &HashSet<usize>,
    ) -> Vec<usize> {
        let mut c: Vec<usize> = self
            .devices
            .iter()
            .flatten()
            .filter(|d| !d.revoked && !exclude.contains(&d.idx))
            .filter(|d| match sel {
                Select::All => true,
                Select::Online => d.live.is_some(),
                Select::Offline => d.live.is_none(),
                Select::Fresh => d.live.is_none() && !d.ever_connected,
                Select::Returning => d.live.is_none() && d.has_ticket(),
            })
            .map(|d| d.idx)
            .collect();
        let k = if fraction <= 0.0 || c.is_empty() {
            0
        } else {
            ((fraction * c.len() as f64).round() as usize).clamp(1, c.len())
        };
        // Partial Fisher–Yates: the first k of a seeded shuffle.
        for i in 0..k {
            let j = i + (rng.next_u64() as usize) % (c.len() - i);
            c.swap(i, j);
        }
        c.truncate(k);
        c.sort_unstable();
        c
    }

    async fn connect_all(
        &mut self,
        chosen: &[usize],
        at_ms: f64,
        spread_ms: f64,
        rng: &mut ChaCha20Rng,
    ) -> Vec<ConnectResult> {
        let m = self.env.gateways.len();
        let mut set = JoinSet::new();
        let mut out = Vec::with_capacity(chosen.len());
        for &i in chosen {
            let start = (at_ms + unit(rng) * spread_ms) as u64;
            let Some(mut dev) = self.devices.get_mut(i).and_then(Option::take) else {
                continue;
            };
            // A device on a live session leaves it first (it reconnects).
            let gw = active_home(dev.home, m, &self.revoked_gateways);
            dev.home = gw;
            let env = self.env.clone();
            let pb = self.pb.clone();
            // A task is spawned once it may run: a million tasks spawned at
            // once, each sized for a whole handshake, were gigabytes of
            // futures waiting for their turn.
            let permit = self.sem.clone().acquire_owned().await;
            set.spawn(async move {
                let _permit = permit;
                if let Some(live) = dev.live.take() {
                    live.close().await;
                }
                let r = connect(&env, &mut dev, gw, start).await;
                pb.inc(1);
                (dev, r)
            });
            while let Some(j) = set.try_join_next() {
                self.connected(j, &mut out);
            }
        }
        while let Some(j) = set.join_next().await {
            self.connected(j, &mut out);
        }
        out.sort_by_key(|r| r.device);
        // The wait for a link, in modelled time; the device's clock moves on by it.
        let gws: Vec<usize> = out
            .iter()
            .map(|r| self.dev(r.device).map_or(usize::MAX, |d| d.home))
            .collect();
        self.links.schedule(&mut out, &gws);
        for r in &out {
            if let Some(d) = self.devices.get_mut(r.device).and_then(Option::as_mut) {
                d.clock_ms += (r.queued_us / 1000.0) as u64;
            }
        }
        out
    }

    /// Puts a device back after its connect, keeping its result.
    fn connected(
        &mut self,
        j: Result<(SimDevice, ConnectResult), tokio::task::JoinError>,
        out: &mut Vec<ConnectResult>,
    ) {
        if let Ok((dev, r)) = j {
            let i = dev.idx;
            self.devices[i] = Some(dev);
            out.push(r);
        }
    }

    async fn disconnect(&mut self, chosen: &[usize]) {
        let mut set = JoinSet::new();
        for &i in chosen {
            if let Some(live) = self.devices[i].as_mut().and_then(|d| d.live.take()) {
                set.spawn(live.close());
            }
        }
        while set.join_next().await.is_some() {}
    }

    fn sessions(&self) -> usize {
        self.env
            .gateways
            .iter()
            .map(|g| g.table().sessions().len())
            .sum()
    }

    fn victim(&self, i: usize) -> Option<Victim> {
        let d = self.dev(i)?;
        Some(Victim {
            idx: d.idx,
            key_seed: d.key_seed,
            id: d.id,
            mac: d.mac.clone(),
            home: active_home(d.home, self.env.gateways.len(), &self.revoked_gateways),
            att_mtu: d.att_mtu,
            ticket: d.ticket_copy(),
        })
    }

    /// Revokes peripherals through the admin API; returns the wall-clock ms
    /// from each admin call to the live session's close.
    async fn revoke(&mut self, chosen: &[usize], at_once: usize) -> Result<Vec<Reach>, Error> {
        // The operator's calls go out side by side, up to `at_once` (64 by
        // default) at a time: one after the other, each revocation woke every
        // gateway's feed poll on its own (a thousand gateways: 150 ms a
        // revocation), so a thousand revocations took minutes; side by side,
        // one wake-up of the feed carries many. Each reach is measured from
        // its own call, so it includes that call's wait for the writer.
        let calls = Arc::new(Semaphore::new(at_once.max(1)));
        let mut waits = JoinSet::new();
        for &i in chosen {
            let Some(d) = self.devices[i].as_mut() else {
                continue;
            };
            d.revoked = true;
            let id = d.id;
            let live = d.live.take();
            // Its gateway's instance; the operator's calls go to instance 0.
            let n = self.backend.instances();
            let home = active_home(d.home, self.env.gateways.len(), &self.revoked_gateways);
            let elsewhere = n > 1 && !home.is_multiple_of(n);
            let call = self.backend.admin_ok_owned(
                Method::POST,
                route::admin::PERIPHERAL_ACTION
                    .replace("{id}", &id.to_string())
                    .replace("{action}", "revoke"),
                "revoke peripheral",
            );
            let permit = calls.clone().acquire_owned().await;
            waits.spawn(async move {
                let t0 = Instant::now();
                let called = call.await;
                let answered = Instant::now();
                drop(permit);
                called?;
                let end = match live {
                    Some(live) => live.ended_by_gateway(Duration::from_secs(10)).await,
                    None => None,
                };
                Ok::<_, Error>((i, t0, answered, end, elsewhere))
            });
        }
        let mut ms = Vec::new();
        while let Some(r) = waits.join_next().await {
            if let Ok(r) = r {
                let (i, t0, answered, end, elsewhere) = r?;
                if let Some(end) = end.filter(|e| e.by_gateway == Some(CloseReason::REVOKED)) {
                    let since = |t: Instant| t.saturating_duration_since(t0).as_secs_f64() * 1000.0;
                    ms.push(Reach {
                        ms: since(end.at),
                        call_ms: since(answered),
                        elsewhere,
                    });
                    // The device forgets its tickets (a close "revoked").
                    if let Some(d) = self.devices[i].as_ref() {
                        d.forget_tickets();
                    }
                }
            }
        }
        // Every gateway has applied the feed up to the last revocation
        // before the timeline goes on: its cursor, one comparison a gateway
        // (asking each gateway about each id was 10^8 lookups a poll at
        // 10,000 gateways and 1 % of a million revoked).
        let last = self
            .backend
            .state()
            .store
            .last_event_seq()
            .await
            .map_err(Error::backend)?;
        let last = u64::try_from(last).unwrap_or(0);
        let env = self.env.clone();
        let mut behind = 0;
        wait_until(|| {
            // Resume from the first gateway still behind: the others stay done.
            while behind < env.gateways.len()
                && env.gateways[behind].table().feed().position() >= last
            {
                behind += 1;
            }
            (behind == env.gateways.len()).then_some(())
        })
        .await
        .ok_or_else(|| Error::Timeout("the revocation feed to reach every gateway".into()))?;
        debug_assert!(chosen.iter().all(|&i| self.dev(i).is_none_or(|d| self
            .env
            .gateways
            .iter()
            .all(|g| g.table().feed().is_revoked(&d.id)))));
        Ok(ms)
    }

    async fn revoke_gateway(&mut self, g: usize) -> Result<Vec<f64>, Error> {
        let key = self
            .env
            .gateways
            .get(g)
            .ok_or_else(|| Error::Invalid(format!("gateway {g} does not exist")))?
            .key;
        let mut lives = Vec::new();
        for d in self.devices.iter_mut().flatten() {
            if d.live.as_ref().is_some_and(|l| l.gateway == g) {
                if let Some(l) = d.live.take() {
                    lives.push((d.idx, l));
                }
            }
        }
        let t0 = Instant::now();
        self.backend
            .admin_ok(
                Method::POST,
                &route::admin::GATEWAY_ACTION
                    .replace("{key}", &key.to_string())
                    .replace("{action}", "revoke"),
                None,
                "revoke gateway",
            )
            .await?;
        self.revoked_gateways.insert(g);
        let mut waits = JoinSet::new();
        for (i, l) in lives {
            waits.spawn(async move { (i, l.ended_by_gateway(Duration::from_secs(10)).await) });
        }
        let mut ms = Vec::new();
        while let Some(r) = waits.join_next().await {
            if let Ok((i, Some(end))) = r {
                if end.by_gateway == Some(CloseReason::REVOKED) {
                    ms.push(end.at.saturating_duration_since(t0).as_secs_f64() * 1000.0);
                    if let Some(d) = self.devices[i].as_ref() {
                        d.forget_tickets();
                    }
                }
            }
        }
        Ok(ms)
    }

    fn alerts(&self) -> u64 {
        let a = &self.backend.state().metrics.alerts;
        ["lockout", "clone_suspected"]
            .iter()
            .map(|l| a.with_label_values(&[*l]).get())
            .sum()
    }
}

const REFUSAL_REASONS: [&str; 15] = [
    "gateway_unknown",
    "gateway_not_active",
    "gateway_locked_out",
    "malformed_hello",
    "unknown_backend_key",
    "replay",
    "bad_seal",
    "unknown_peripheral",
    "peripheral_pending",
    "peripheral_suspended",
    "peripheral_revoked",
    "bad_signature",
    "policy_denied",
    "clone_refused",
    "registry_changed",
];

/// Runs a scenario from start to end.
pub async fn run(opts: RunOptions) -> Result<RunOutput, Error> {
    let wall = Instant::now();
    let sc = &opts.scenario;
    let n = opts.peripherals.unwrap_or(sc.fleet.peripherals);
    let m = opts.gateways.unwrap_or(sc.fleet.gateways);
    if n == 0 || m == 0 {
        return Err(Error::Invalid(
            "--peripherals and --gateways must be at least 1".into(),
        ));
    }
    let pb = progress_bar(opts.progress);
    let (stop, shutdown) = watch::channel(false);
    let phase = Arc::new(std::sync::Mutex::new(String::from("setup")));
    let (load_stop, load_stopped) = tokio::sync::oneshot::channel();
    let mut w = World::start(&opts, n, m, shutdown, &pb).await?;
    let load = tokio::spawn(sample_load(
        w.backend.state().clone(),
        pb.clone(),
        phase.clone(),
        wall,
        opts.progress,
        load_stopped,
    ));
    let mut timeline = Timeline::new(opts.seed);
    for (k, ev) in sc.events.iter().enumerate() {
        set_phase(
            &phase,
            format!("{:?} at {:.1} s", ev.get_ref().action, ev.get_ref().at_s).to_lowercase(),
        );
        timeline.play(&mut w, k, ev.get_ref()).await?;
    }
    pb.set_message("closing");
    set_phase(&phase, "closing".into());
    let _ = load_stop.send(());
    let load = load.await.unwrap_or_default();
    let closing = w.close(&stop, load).await;
    pb.finish_and_clear();
    Ok(timeline.finish(&opts, n, m, closing, wall))
}

fn set_phase(phase: &std::sync::Mutex<String>, now: String) {
    *phase.lock().unwrap_or_else(|e| e.into_inner()) = now;
}

/// Samples the backend's load once a second until `stop`; shows it on the
/// progress bar, and with `progress` on a standard error that is not a
/// terminal (no bar is drawn there) prints a line every ten seconds.
async fn sample_load(
    state: vouch_backend::AppState,
    pb: ProgressBar,
    phase: Arc<std::sync::Mutex<String>>,
    wall: Instant,
    progress: bool,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<LoadSample> {
    use std::io::IsTerminal;
    let lines = progress && !std::io::stderr().is_terminal();
    let mut out: Vec<LoadSample> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return out,
        }
        let t_s = round2(wall.elapsed().as_secs_f64());
        let vouches = state.metrics.answers.with_label_values(&["vouched"]).get();
        let (dv, dt) = out.last().map_or((vouches, t_s), |p| {
            (vouches.saturating_sub(p.vouches), t_s - p.t_s)
        });
        let s = LoadSample {
            t_s,
            phase: phase.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            handshakes: pb.position(),
            vouches,
            vouches_per_s: if dt > 0.0 {
                round2(dv as f64 / dt)
            } else {
                0.0
            },
            requests_in_flight: crate::backend::MAX_REQUESTS
                .saturating_sub(state.request_slots.available_permits()),
            feed_waiters: state.metrics.feed_waiters.get(),
            rss_mib: rss_mib(),
        };
        pb.set_message(format!(
            "{}: {:.0} vouches/s, {} requests in the backend, {:.0} MiB",
            s.phase, s.vouches_per_s, s.requests_in_flight, s.rss_mib
        ));
        if lines && out.len() % 10 == 9 {
            eprintln!(
                "[{:>7.1} s] {}: {} handshakes, {:.0} vouches/s, {} requests in the backend, {} feed polls waiting, {:.0} MiB",
                s.t_s, s.phase, s.handshakes, s.vouches_per_s, s.requests_in_flight, s.feed_waiters, s.rss_mib
            );
        }
        out.push(s);
    }
}

/// Setup progress: on the bar, and as a line when standard error is not a
/// terminal (no bar is drawn there).
struct Say {
    pb: ProgressBar,
    lines: bool,
    since: Instant,
}

impl Say {
    fn new(pb: &ProgressBar, progress: bool) -> Self {
        use std::io::IsTerminal;
        Self {
            pb: pb.clone(),
            lines: progress && !std::io::stderr().is_terminal(),
            since: Instant::now(),
        }
    }

    fn phase(&self, what: &str) {
        self.pb.set_message(what.to_string());
        if self.lines {
            eprintln!(
                "[{:>7.1} s] setup: {what}",
                self.since.elapsed().as_secs_f64()
            );
        }
    }
}

/// A spinner counting handshakes on stderr when `show`, else a hidden bar.
fn progress_bar(show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos} handshakes  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}

/// The backend's figures, read at the end of the timeline.
struct Closing {
    peak_links: usize,
    peak_links_modelled: usize,
    load: Vec<LoadSample>,
    vouches: u64,
    refusals: BTreeMap<String, u64>,
    alerts: BTreeMap<String, u64>,
    database: String,
}

impl World {
    /// Starts the backend, enrolls `m` gateways and `n` peripherals under
    /// one policy, and starts the gateways, each device provisioned with
    /// the backend's anchors. `shutdown` turns true at the end of the run.
    async fn start(
        opts: &RunOptions,
        n: usize,
        m: usize,
        shutdown: watch::Receiver<bool>,
        pb: &ProgressBar,
    ) -> Result<Self, Error> {
        let sc = &opts.scenario;
        let say = Say::new(pb, opts.progress);
        say.phase("starting the backend");
        let mut backend =
            SimBackend::start(opts.backend, opts.database_url.as_deref(), &sc.backend).await?;
        backend
            .add_instances(opts.backend_instances.saturating_sub(1))
            .await?;
        let anchors = anchors(&backend).await?;

        say.phase(&format!("enrolling {m} gateways"));
        let gateways = enroll_gateways(&backend, sc, opts.seed, n, m, &shutdown).await?;
        allow_fleet(&backend).await?;

        say.phase(&format!("making and enrolling {n} peripherals"));
        let devices = make_devices(opts.seed, n, m, &sc.fleet, &anchors);
        import_peripherals(&backend, &devices, &say).await?;

        let env = Arc::new(Env {
            gateways,
            model: LinkModel::new(sc.link),
            fleet: sc.fleet.clone(),
            uplink: sc.uplink,
            anchors,
            shutdown,
            capture: Default::default(),
        });
        Ok(World {
            backend,
            env,
            devices: devices.into_iter().map(Some).collect(),
            revoked_gateways: HashSet::new(),
            sem: Arc::new(Semaphore::new(sc.fleet.max_inflight)),
            pb: pb.clone(),
            seed: opts.seed,
            links: LinkQueue::new(sc.link.max_links, m),
        })
    }

    /// Reads the backend's counters, lets its queued session reports
    /// finish, then takes the uplinks down, stops the gateways (`stop`),
    /// closes the live sessions and shuts the backend down.
    async fn close(mut self, stop: &watch::Sender<bool>, load: Vec<LoadSample>) -> Closing {
        let peak_links = self
            .env
            .gateways
            .iter()
            .map(|g| g.links.peak())
            .max()
            .unwrap_or(0);
        let peak_links_modelled = self.links.peak;
        let state = self.backend.state().clone();
        let vouches = state.metrics.answers.with_label_values(&["vouched"]).get();
        let mut refusals = BTreeMap::new();
        for r in REFUSAL_REASONS {
            let c = state.metrics.refusals.with_label_values(&[r]).get();
            if c > 0 {
                refusals.insert(r.to_string(), c);
            }
        }
        let mut alerts = BTreeMap::new();
        for a in ["lockout", "clone_suspected"] {
            let c = state.metrics.alerts.with_label_values(&[a]).get();
            if c > 0 {
                alerts.insert(a.to_string(), c);
            }
        }
        // Session reports still queued in the backend finish first.
        let slots = state.request_slots.clone();
        let _ = wait_until(|| {
            (slots.available_permits() >= crate::backend::MAX_REQUESTS).then_some(())
        })
        .await;
        // The uplinks go first, so that the detach reports of the closing
        // sessions fail fast instead of reaching a store that is shutting down.
        self.set_uplinks(None, false);
        let _ = stop.send(true);
        for d in self.devices.iter_mut().flatten() {
            if let Some(l) = d.live.take() {
                let _ = tokio::time::timeout(Duration::from_secs(2), l.close()).await;
            }
        }
        let database = self.backend.database().to_string();
        self.backend.shutdown().await;
        Closing {
            peak_links,
            peak_links_modelled,
            load,
            vouches,
            refusals,
            alerts,
            database,
        }
    }

    /// Turns the uplink of `gateway`, or of every gateway when `None`, up
    /// or down.
    fn set_uplinks(&self, gateway: Option<usize>, up: bool) {
        for g in &self.env.gateways {
            if gateway.is_none_or(|x| x == g.idx) {
                g.uplink.set_up(up);
            }
        }
    }

    /// The operator rotates the backend key; every gateway fetches the
    /// anchor update.
    async fn rotate_key(&self) -> Result<(), Error> {
        self.backend.rotate_key().await?;
        for g in &self.env.gateways {
            vouch_gateway::anchors::fetch(&g.uplink, g.table().anchor_updates())
                .await
                .map_err(|e| Error::Gateway(format!("fetching the anchor updates: {e}")))?;
        }
        Ok(())
    }
}

/// The fleet's `n` devices, made on every core (a device's key is derived
/// from its seed: 15 µs, 15 s for a million on one core).
fn make_devices(
    seed: u64,
    n: usize,
    m: usize,
    fleet: &crate::scenario::Fleet,
    anchors: &AnchorSet,
) -> Vec<SimDevice> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let per = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = (0..n)
            .step_by(per)
            .map(|from| {
                s.spawn(move || {
                    (from..(from + per).min(n))
                        .map(|i| SimDevice::new(seed, i, m, fleet, anchors))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// The backend's trust anchors, as devices are provisioned with them.
async fn anchors(backend: &SimBackend) -> Result<AnchorSet, Error> {
    let bundle: AnchorBundle = serde_json::from_value(
        backend
            .admin_ok(Method::GET, route::admin::ANCHOR, None, "anchor")
            .await?,
    )
    .map_err(Error::backend)?;
    bundle.to_anchor_set().map_err(Error::backend)
}

/// Enrolls `m` gateways at site `plant` and starts them, each capped to
/// its share of the `n` devices plus the spare links when the scenario
/// asks.
async fn enroll_gateways(
    backend: &SimBackend,
    sc: &Scenario,
    seed: u64,
    n: usize,
    m: usize,
    shutdown: &watch::Receiver<bool>,
) -> Result<Vec<SimGateway>, Error> {
    let mut gateways = Vec::with_capacity(m);
    for g in 0..m {
        let key = IdentityKey::from_seed(&derive_seed(seed, "gateway-key", g as u64));
        let cert = backend.enroll_gateway(&key.public_key(), "plant").await?;
        let uplink = backend.uplink_to(g % backend.instances(), &key, Some(&cert))?;
        let mut gw = SimGateway::start(g, &key, "plant", uplink, shutdown.clone(), true)?
            .with_link_cap(sc.link.max_links);
        if let Some(spare) = sc.gateway.spare_links {
            gw = gw.with_slots(
                n.div_ceil(m) + spare,
                Duration::from_millis(sc.gateway.first_message_ms),
            );
        }
        gateways.push(gw);
    }
    Ok(gateways)
}

/// The one policy: the fleet's group may talk to the plant's gateways.
async fn allow_fleet(backend: &SimBackend) -> Result<(), Error> {
    backend
        .admin_ok(
            Method::POST,
            route::admin::POLICIES,
            Some(
                serde_json::json!({"peripheral": "group:fleet", "gateway": "site:plant",
                "scope": "telemetry,command"}),
            ),
            "policy",
        )
        .await?;
    Ok(())
}

/// Enrolls the devices in group `fleet` through the bulk NDJSON import,
/// 5,000 a request.
async fn import_peripherals(
    backend: &SimBackend,
    devices: &[SimDevice],
    say: &Say,
) -> Result<(), Error> {
    for (k, chunk) in devices.chunks(5000).enumerate() {
        if k > 0 && k % 20 == 0 {
            say.phase(&format!(
                "enrolled {} of {} peripherals",
                k * 5000,
                devices.len()
            ));
        }
        let mut body = String::new();
        for d in chunk {
            body.push_str(
                &serde_json::json!({"public_key": d.public_key.to_string(), "group": "fleet"})
                    .to_string(),
            );
            body.push('\n');
        }
        let (s, v) = backend
            .admin_raw(
                Method::POST,
                &format!("{}?format=ndjson", route::admin::PERIPHERALS_IMPORT),
                "application/x-ndjson",
                Some(body.into_bytes()),
            )
            .await?;
        if s != 200 || v["summary"]["errors"].as_u64() != Some(0) {
            return Err(Error::Backend(format!("import: HTTP {s} {}", v["summary"])));
        }
    }
    Ok(())
}

/// The timeline as it plays: what it has counted so far, and the
/// randomness every selection draws from, in event order.
struct Timeline {
    acc: Acc,
    attacks: BTreeMap<String, AttackTally>,
    revocation: Vec<f64>,
    /// Of those, the reaches at gateways of another backend instance than
    /// the one the revocation was made on.
    revocation_elsewhere: Vec<f64>,
    /// How long their admin calls took.
    revocation_call: Vec<f64>,
    revocation_exercised: bool,
    marks: Vec<(f64, String)>,
    peak: usize,
    sel_rng: ChaCha20Rng,
    last_s: f64,
}

impl Timeline {
    fn new(seed: u64) -> Self {
        Timeline {
            acc: Acc::default(),
            attacks: BTreeMap::new(),
            revocation: Vec::new(),
            revocation_elsewhere: Vec::new(),
            revocation_call: Vec::new(),
            revocation_exercised: false,
            marks: Vec::new(),
            peak: 0,
            sel_rng: rng_for(seed, "timeline", 0),
            last_s: 0.0,
        }
    }

    /// Plays event `k`: marks it, runs its action, then notes the live
    /// sessions.
    async fn play(&mut self, w: &mut World, k: usize, ev: &Event) -> Result<(), Error> {
        self.last_s = self.last_s.max(ev.at_s);
        let label = match ev.class {
            Some(c) => format!("attack {}", c.name()),
            None => format!("{:?}", ev.action).to_lowercase(),
        };
        w.pb.set_message(format!("{label} at {:.1} s", ev.at_s));
        self.marks.push((ev.at_s, label));
        match ev.action {
            Action::Connect => self.connect(w, ev).await,
            Action::Disconnect => self.disconnect(w, ev).await,
            Action::Churn => self.churn(w, ev).await,
            Action::OutageStart | Action::OutageEnd => {
                w.set_uplinks(ev.gateway, ev.action == Action::OutageEnd);
            }
            Action::Revoke => self.revoke(w, ev).await?,
            Action::RevokeGateway => self.revoke_gateway(w, ev).await?,
            Action::RotateKey => w.rotate_key().await?,
            Action::Attack => self.attack(w, ev, k).await?,
        }
        self.peak = self.peak.max(w.sessions());
        Ok(())
    }

    async fn connect(&mut self, w: &mut World, ev: &Event) {
        let none = HashSet::new();
        let fraction = ev.fraction.unwrap_or(1.0);
        let chosen = w.select(ev.select, fraction, &mut self.sel_rng, &none);
        let t = Instant::now();
        let (at_ms, spread_ms) = (ev.at_s * 1000.0, ev.spread_s * 1000.0);
        let rs = w
            .connect_all(&chosen, at_ms, spread_ms, &mut self.sel_rng)
            .await;
        self.acc.add_phase(t, &rs);
    }

    async fn disconnect(&mut self, w: &mut World, ev: &Event) {
        let none = HashSet::new();
        let fraction = ev.fraction.unwrap_or(1.0);
        let chosen = w.select(
            online_for_all(ev.select),
            fraction,
            &mut self.sel_rng,
            &none,
        );
        w.disconnect(&chosen).await;
    }

    /// `cycles` rounds of "a fraction of the online leave, then come back".
    async fn churn(&mut self, w: &mut World, ev: &Event) {
        let none = HashSet::new();
        let (at_ms, spread_ms) = (ev.at_s * 1000.0, ev.spread_s * 1000.0);
        for c in 0..ev.cycles.unwrap_or(1) {
            let fraction = ev.fraction.unwrap_or(0.2);
            let chosen = w.select(Select::Online, fraction, &mut self.sel_rng, &none);
            w.disconnect(&chosen).await;
            self.peak = self.peak.max(w.sessions());
            let t = Instant::now();
            let back_at = at_ms + (f64::from(c) + 0.5) * spread_ms.max(1000.0);
            let rs = w
                .connect_all(&chosen, back_at, spread_ms * 0.5, &mut self.sel_rng)
                .await;
            self.acc.add_phase(t, &rs);
            self.last_s = self.last_s.max(back_at / 1000.0);
        }
    }

    async fn revoke(&mut self, w: &mut World, ev: &Event) -> Result<(), Error> {
        let none = HashSet::new();
        let fraction = ev.fraction.unwrap_or(0.1);
        let chosen = w.select(
            online_for_all(ev.select),
            fraction,
            &mut self.sel_rng,
            &none,
        );
        self.revocation_exercised = true;
        for r in w
            .revoke(&chosen, ev.at_once.unwrap_or(REVOKE_AT_ONCE))
            .await?
        {
            self.revocation.push(r.ms);
            self.revocation_call.push(r.call_ms);
            if r.elsewhere {
                self.revocation_elsewhere.push(r.ms);
            }
        }
        Ok(())
    }

    async fn revoke_gateway(&mut self, w: &mut World, ev: &Event) -> Result<(), Error> {
        self.revocation_exercised = true;
        let g = ev.gateway.unwrap_or(0);
        self.revocation.extend(w.revoke_gateway(g).await?);
        Ok(())
    }

    /// Runs the attack and adds its tally, with the backend alerts raised
    /// meanwhile as its detections, to its class.
    async fn attack(&mut self, w: &mut World, ev: &Event, k: usize) -> Result<(), Error> {
        let class = ev.class.unwrap_or(AttackClass::Replay);
        let attempts = ev.attempts.unwrap_or(10);
        let before = w.alerts();
        let (mut tally, rev) =
            attack(w, &mut self.acc, class, attempts, ev, k, &mut self.sel_rng).await?;
        self.revocation.extend(rev.iter().copied());
        if !rev.is_empty()
            || matches!(
                class,
                AttackClass::RevokedPeripheral | AttackClass::RevokedGateway
            )
        {
            self.revocation_exercised = true;
        }
        tally.detected = w.alerts().saturating_sub(before);
        let e = self.attacks.entry(class.name().to_string()).or_default();
        e.attempts += tally.attempts;
        e.accepted += tally.accepted;
        e.detected += tally.detected;
        Ok(())
    }

    /// The report of a run of `n` peripherals and `m` gateways started at
    /// `wall`, and the samples and marks behind the plots.
    fn finish(
        mut self,
        opts: &RunOptions,
        n: usize,
        m: usize,
        closing: Closing,
        wall: Instant,
    ) -> RunOutput {
        let acc = &mut self.acc;
        let connect_s = acc.connect_wall.as_secs_f64().max(1e-9);
        let per = |sum: u64, k: u64| {
            if k == 0 {
                0.0
            } else {
                round2(sum as f64 / k as f64)
            }
        };
        let report = Report {
            scenario: opts.scenario.name.clone(),
            seed: opts.seed,
            peripherals: n,
            gateways: m,
            backend_mode: match opts.backend {
                BackendMode::InProc => "inproc".into(),
                BackendMode::Https => "https".into(),
            },
            database: closing.database,
            latency_ms: Percentiles::of(&mut acc.lat_full),
            resumption_latency_ms: Percentiles::of(&mut acc.lat_res),
            bytes_on_air: BytesOnAir {
                per_handshake: per(acc.air_full, acc.h.full_ok),
                per_resumption: per(acc.air_res, acc.r.ok),
                message_bytes_per_handshake: per(acc.msg_full, acc.h.full_ok),
                total: acc.air_total,
            },
            link: LinkCounters {
                max_links: opts.scenario.link.max_links,
                peak_links: closing.peak_links,
                peak_links_modelled: closing.peak_links_modelled,
                queue_wait_ms: Percentiles::of(&mut acc.queue_waits),
                ..acc.link.clone()
            },
            backend: BackendFigures {
                vouches: closing.vouches,
                vouches_per_s: round2(closing.vouches as f64 / connect_s),
                refusals: closing.refusals,
                alerts: closing.alerts,
            },
            attacks: self.attacks,
            revocation_ms: self
                .revocation_exercised
                .then(|| Percentiles::of(&mut self.revocation)),
            revocation_other_instance_ms: (!self.revocation_elsewhere.is_empty())
                .then(|| Percentiles::of(&mut self.revocation_elsewhere)),
            revocation_call_ms: (!self.revocation_call.is_empty())
                .then(|| Percentiles::of(&mut self.revocation_call)),
            honest_rejected: acc.honest_rejected,
            sessions_peak: self.peak,
            virtual_s: round2(self.last_s.max(acc.end_ms / 1000.0)),
            wall_s: round2(wall.elapsed().as_secs_f64()),
            handshakes_per_s: round2(acc.h.ok as f64 / connect_s),
            peak_rss_mib: peak_rss_mib(),
            backend_load: closing.load,
            handshakes: acc.h.clone(),
            resumptions: acc.r.clone(),
        };
        RunOutput {
            report,
            samples: std::mem::take(&mut acc.samples),
            marks: self.marks,
            revocations_ms: self.revocation,
        }
    }
}

/// The selection of an event where `all` means every device online
/// (disconnect, revoke).
fn online_for_all(select: Select) -> Select {
    if select == Select::All {
        Select::Online
    } else {
        select
    }
}

/// One attack event: picks victims, starts the adversary's own gateways,
/// runs honest devices beside it (the event's `select`/`fraction`), and
/// returns the tally and any revocation delays it caused.
async fn attack(
    w: &mut World,
    acc: &mut Acc,
    class: AttackClass,
    attempts: u32,
    ev: &Event,
    k: usize,
    sel_rng: &mut ChaCha20Rng,
) -> Result<(AttackTally, Vec<f64>), Error> {
    let (at_ms, spread_ms) = (ev.at_s * 1000.0, ev.spread_s * 1000.0);
    if class == AttackClass::RogueCentral {
        let tally = rogue_central(w, acc, attempts, ev, k, at_ms, spread_ms, sel_rng).await;
        return Ok((tally, Vec::new()));
    }
    if class == AttackClass::OldKey {
        return Ok((old_key(w, ev, k, sel_rng).await?, Vec::new()));
    }
    let mut rng = rng_for(w.seed, "attack", k as u64);
    let victims_idx = choose_victims(w, class, attempts, sel_rng);
    let stage = set_stage(w, class, ev, &victims_idx).await?;
    let honest = honest_beside(w, class, ev, &stage.victims, sel_rng);
    let env = w.env.clone();
    let arena = Arena {
        env: &env,
        extra: &stage.extra,
        victims: &stage.victims,
        rng: rng_for(rng.next_u64(), class.name(), 0),
        attempts,
        gateway: stage.gateway,
    };
    let t = Instant::now();
    let (out, honest_rs) = {
        let attack_fut = adversary::run(class, arena);
        let honest_fut = w.connect_all(&honest, at_ms, spread_ms, sel_rng);
        tokio::join!(attack_fut, honest_fut)
    };
    acc.add_phase(t, &honest_rs);
    let tally = final_tally(w, class, attempts, out?, &honest_rs, &stage.victims).await;
    Ok((tally, stage.rev_ms))
}

/// Victims: whom the adversary needs, chosen like every other selection.
fn choose_victims(
    w: &World,
    class: AttackClass,
    attempts: u32,
    sel_rng: &mut ChaCha20Rng,
) -> Vec<usize> {
    let none = HashSet::new();
    match class {
        // The adversary takes over handshakes of these: they must not hold a
        // session (it would be replaced) nor have held one (attachments).
        AttackClass::VouchSwap | AttackClass::Tamper | AttackClass::Relay => {
            let want = match class {
                AttackClass::VouchSwap => 2 * attempts as usize,
                _ => attempts as usize,
            };
            let all = w.select(Select::Fresh, 1.0, sel_rng, &none);
            all.into_iter().take(want.max(2)).collect()
        }
        AttackClass::Clone => {
            let all = w.select(Select::Online, 1.0, sel_rng, &none);
            all.into_iter().take(attempts as usize).collect()
        }
        AttackClass::RevokedPeripheral => {
            let all = w.select(Select::Online, 1.0, sel_rng, &none);
            all.into_iter().take(attempts.max(1) as usize).collect()
        }
        _ => w
            .select(Select::All, 1.0, sel_rng, &none)
            .into_iter()
            .take(64)
            .collect(),
    }
}

/// What an attack starts from once its victims are chosen.
struct Stage {
    /// The victims as the adversary knows them.
    victims: Vec<Victim>,
    /// Gateways of the adversary's own (rogue, distant), started.
    extra: Vec<SimGateway>,
    /// The gateway the attack is about (revoked gateway).
    gateway: Option<usize>,
    /// Revocation delays the operator's action before the attack caused.
    rev_ms: Vec<f64>,
}

/// Sets the attack up: what the adversary learns of its victims, what the
/// operator does first (revocations), and the adversary's own gateways.
async fn set_stage(
    w: &mut World,
    class: AttackClass,
    ev: &Event,
    victims_idx: &[usize],
) -> Result<Stage, Error> {
    let mut stage = Stage {
        victims: victims_idx.iter().filter_map(|&i| w.victim(i)).collect(),
        extra: Vec::new(),
        gateway: None,
        rev_ms: Vec::new(),
    };
    match class {
        AttackClass::RevokedPeripheral => {
            // The adversary saved each device's ticket before the operator acted.
            stage.rev_ms = w
                .revoke(victims_idx, REVOKE_AT_ONCE)
                .await?
                .iter()
                .map(|r| r.ms)
                .collect();
        }
        AttackClass::RevokedGateway => {
            let g = ev.gateway.unwrap_or(0);
            stage.rev_ms = w.revoke_gateway(g).await?;
            stage.gateway = Some(g);
            // The devices it served are the ones it tries to keep.
            let served: Vec<usize> = w
                .devices
                .iter()
                .flatten()
                .filter(|d| d.home == g)
                .map(|d| d.idx)
                .collect();
            stage.victims = served.iter().filter_map(|&i| w.victim(i)).collect();
        }
        AttackClass::Clone => await_attachments(w, &stage.victims).await?,
        AttackClass::RogueGateway | AttackClass::Relay => {
            stage.extra = adversary_gateways(w, class).await?;
        }
        _ => {}
    }
    Ok(stage)
}

/// Waits until the backend knows where each original of a clone is
/// attached (as seen from another gateway).
async fn await_attachments(w: &World, victims: &[Victim]) -> Result<(), Error> {
    let m = w.env.gateways.len();
    for v in victims {
        let other = w.env.gateways[(v.home + 1) % m].key;
        let store = w.backend.state().store.clone();
        let start = Instant::now();
        loop {
            let now = vouch_backend::store::now_ms();
            let seen = store
                .attached_elsewhere(&v.id, &other, now)
                .await
                .map_err(Error::backend)?;
            if !seen.is_empty() {
                break;
            }
            if start.elapsed() > crate::fleet::DEADLINE {
                return Err(Error::Timeout("the backend to record an attach".into()));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok(())
}

/// The adversary's gateways: one not enrolled at all (rogue gateway only),
/// one enrolled at a site no policy covers.
async fn adversary_gateways(w: &World, class: AttackClass) -> Result<Vec<SimGateway>, Error> {
    let m = w.env.gateways.len();
    let k1 = IdentityKey::from_seed(&derive_seed(w.seed, "rogue-key", 0));
    let k2 = IdentityKey::from_seed(&derive_seed(w.seed, "rogue-key", 1));
    let cert = w
        .backend
        .enroll_gateway(&k2.public_key(), "far-away")
        .await?;
    let u2 = w.backend.uplink(&k2, Some(&cert))?;
    let g2 = SimGateway::start(m + 1, &k2, "far-away", u2, w.env.shutdown.clone(), false)?;
    let mut extra = Vec::new();
    if class == AttackClass::RogueGateway {
        let u1 = w.backend.uplink(&k1, None)?;
        extra.push(SimGateway::start(
            m,
            &k1,
            "nowhere",
            u1,
            w.env.shutdown.clone(),
            false,
        )?);
    }
    extra.push(g2);
    Ok(extra)
}

/// Honest devices keep working beside the attack: the event's
/// `select`/`fraction`.
fn honest_beside(
    w: &World,
    class: AttackClass,
    ev: &Event,
    victims: &[Victim],
    sel_rng: &mut ChaCha20Rng,
) -> Vec<usize> {
    // Devices whose identity the adversary runs complete handshakes with
    // stay out of the honest traffic (their sessions would replace each
    // other); the others only lend an address or an id to failed attempts.
    let exclude: HashSet<usize> = match class {
        AttackClass::VouchSwap | AttackClass::Tamper | AttackClass::Relay | AttackClass::Clone => {
            victims.iter().map(|v| v.idx).collect()
        }
        _ => HashSet::new(),
    };
    match ev.fraction {
        Some(f) if f > 0.0 => w.select(ev.select, f, sel_rng, &exclude),
        _ => Vec::new(),
    }
}

/// The attack's tally once the adversary and the honest devices are done:
/// the adversary's own count, plus the honest devices a slot stall kept
/// out and the held links that got a session; for a clone, the originals
/// then speak so that the backend can raise its alerts.
async fn final_tally(
    w: &mut World,
    class: AttackClass,
    attempts: u32,
    mut out: AttackOutput,
    honest_rs: &[ConnectResult],
    victims: &[Victim],
) -> AttackTally {
    if class == AttackClass::SlotStall {
        // What the stall is for: honest devices kept out.
        out.tally.accepted += honest_rs
            .iter()
            .filter(|r| r.verdict != Verdict::Established)
            .count() as u64;
    }
    for p in out.held.drain(..) {
        out.tally.accepted += u64::from(p.finish().await);
    }
    if class == AttackClass::Clone {
        originals_speak(w, victims, attempts).await;
    }
    out.tally
}

/// A clone is two devices heard at once (SPEC.md §10.5): each original
/// goes on talking after its copy's attempt (a record, then its close), and
/// its gateway's detach report says when it last heard it. The alert comes
/// with that report; this waits for one per original that spoke.
async fn originals_speak(w: &mut World, victims: &[Victim], attempts: u32) {
    tokio::time::sleep(Duration::from_millis(10)).await;
    let before = w.alerts();
    let mut spoke = 0u64;
    for v in victims.iter().take(attempts as usize) {
        let live = w
            .devices
            .get_mut(v.idx)
            .and_then(Option::as_mut)
            .and_then(|d| d.live.take());
        if let Some(live) = live {
            live.speak_then_close(b"still here".to_vec()).await;
            spoke += 1;
        }
    }
    let _ = crate::fleet::wait_until(|| (w.alerts() >= before + spoke).then_some(())).await;
}

/// Rogue centrals during a backend outage (SPEC.md §6.4): each device the
/// event selects meets one `attempts` times (its own machine and wallet,
/// the rogue posing as its gateway), then reaches its genuine gateway, which
/// it must resume with. Like the driver, it tries again after a failed
/// attempt (a full handshake refused `Busy`, excused as in any outage), up
/// to three times. Accepted: a session with a rogue, or a ticket the device
/// no longer holds. Harmed: a device that did not resume.
#[allow(clippy::too_many_arguments)]
async fn rogue_central(
    w: &mut World,
    acc: &mut Acc,
    attempts: u32,
    ev: &Event,
    k: usize,
    at_ms: f64,
    spread_ms: f64,
    sel_rng: &mut ChaCha20Rng,
) -> AttackTally {
    let none = HashSet::new();
    let chosen = w.select(ev.select, ev.fraction.unwrap_or(1.0), sel_rng, &none);
    let m = w.env.gateways.len();
    let mut set = JoinSet::new();
    for (n, &i) in chosen.iter().enumerate() {
        let start = (at_ms + unit(sel_rng) * spread_ms) as u64;
        let Some(mut dev) = w.devices.get_mut(i).and_then(Option::take) else {
            continue;
        };
        let gw = active_home(dev.home, m, &w.revoked_gateways);
        dev.home = gw;
        let env = w.env.clone();
        let sem = w.sem.clone();
        let pb = w.pb.clone();
        let mut rng = rng_for(w.seed, "rogue-central", ((k as u64) << 32) | n as u64);
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            if let Some(live) = dev.live.take() {
                live.close().await;
            }
            dev.clock_ms = dev.clock_ms.max(start);
            let held = |d: &SimDevice| {
                let k = d.keep();
                [TicketSlot::Confirmed, TicketSlot::Unconfirmed]
                    .map(|s| k.wallet.ticket(s).is_some())
            };
            let before = held(&dev);
            let gw_key = env.gateways[gw].key;
            let mut tally = AttackTally::default();
            for round in 0..attempts {
                let (mine, theirs) = pair(dev.att_mtu, &dev.mac, "rogue-central");
                let seed = rng.next_u64();
                let task = tokio::spawn(adversary::rogue_central(
                    theirs,
                    round,
                    rng_for(seed, "rogue-central-round", u64::from(round)),
                ));
                let met = meet(&env, &mut dev, gw_key, mine, task).await;
                tally.attempts += 1;
                if let Some(s) = met.session {
                    tally.accepted += 1;
                    s.close().await;
                }
            }
            let after = held(&dev);
            tally.accepted += before.iter().zip(after).filter(|(b, a)| **b && !a).count() as u64;
            let mut results = Vec::new();
            for _ in 0..3 {
                let start = dev.clock_ms;
                let r = connect(&env, &mut dev, gw, start).await;
                pb.inc(1);
                let done = r.verdict == Verdict::Established;
                results.push(r);
                if done {
                    break;
                }
            }
            (dev, tally, results)
        });
    }
    let mut tally = AttackTally::default();
    let mut done = Vec::new();
    while let Some(j) = set.join_next().await {
        if let Ok(x) = j {
            done.push(x);
        }
    }
    done.sort_by_key(|(d, _, _)| d.idx);
    for (dev, t, results) in done {
        tally.attempts += t.attempts;
        tally.accepted += t.accepted;
        let mut counted = false;
        for r in &results {
            counted |= acc.add(r, false);
        }
        let resumed = results
            .last()
            .is_some_and(|r| r.verdict == Verdict::Established && r.resumed);
        if !resumed && !counted {
            acc.honest_rejected += 1;
        }
        let i = dev.idx;
        w.devices[i] = Some(dev);
    }
    tally
}

/// A thief of backend key 1, which the operator rotated away from, runs a
/// gateway of its own (SPEC.md §11.15): each device the event selects meets
/// it once, with its own machine, wallet and anchors. A device that applied
/// the rotation must refuse the handshake (a vouch counts only under the
/// anchor its Hello was sealed to); one that has not is still on key 1, so
/// the handshake completes, as SPEC.md §11.15 states, and it must refuse
/// every update the thief pushes. Accepted: a rotated device's session with
/// the thief, or a device whose anchors the thief changed.
async fn old_key(
    w: &mut World,
    ev: &Event,
    k: usize,
    sel_rng: &mut ChaCha20Rng,
) -> Result<AttackTally, Error> {
    use vouch_proto::keys::KeyId;
    let stolen = Arc::new(w.backend.danger_steal_key(KeyId(1))?);
    // The key the fleet rotated to: the provisioned anchors, with every
    // update the backend issued applied.
    let current = {
        let updates = w
            .backend
            .state()
            .store
            .anchor_updates_after(0)
            .await
            .map_err(Error::backend)?;
        let mut fleet = w.env.anchors.clone();
        for u in &updates {
            fleet.apply(&u.update).map_err(Error::backend)?;
        }
        fleet.primary().kid
    };
    if current == KeyId(1) {
        return Err(Error::Invalid(
            "attack old-key: rotate the key first (action rotate-key)".into(),
        ));
    }
    let opener = Arc::new(w.backend.danger_steal_key(current)?);
    let none = HashSet::new();
    let chosen = w.select(ev.select, ev.fraction.unwrap_or(1.0), sel_rng, &none);
    let mut set = JoinSet::new();
    for (n, &i) in chosen.iter().enumerate() {
        let Some(mut dev) = w.devices.get_mut(i).and_then(Option::take) else {
            continue;
        };
        let env = w.env.clone();
        let sem = w.sem.clone();
        let (stolen, opener) = (stolen.clone(), opener.clone());
        let seed = rng_for(w.seed, "old-key", ((k as u64) << 32) | n as u64).next_u64();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            if let Some(live) = dev.live.take() {
                live.close().await;
            }
            let mut tally = AttackTally::default();
            let before = dev.keep().anchors.clone();
            let rotated = before.primary().kid != KeyId(1);
            let (mine, theirs) = pair(dev.att_mtu, &dev.mac, "thief");
            let mut rng = rng_for(seed, "thief", 0);
            let thief_key = IdentityKey::from_seed(&crate::fleet::seed32(&mut rng)).public_key();
            let task = tokio::spawn(adversary::old_key_gateway(
                theirs,
                stolen,
                opener,
                dev.key().public_key(),
                vouch_proto::Timestamp(dev.clock_ms),
                rng,
            ));
            let seen = dev.keep().updates_seen;
            let met = meet(&env, &mut dev, thief_key, mine, task).await;
            if rotated {
                tally.attempts += 1;
                tally.accepted += u64::from(met.session.is_some());
            }
            if let Some(s) = met.session {
                if !rotated {
                    tally.attempts += adversary::OLD_KEY_FORGED_UPDATES;
                    // The device has taken every update pushed before it goes.
                    let keep = dev.keep.clone();
                    let _ = wait_until(|| {
                        (keep.lock().unwrap_or_else(|e| e.into_inner()).updates_seen
                            >= seen + adversary::OLD_KEY_FORGED_UPDATES)
                            .then_some(())
                    })
                    .await;
                }
                s.close().await;
            }
            tally.accepted += u64::from(dev.keep().anchors != before);
            (dev, tally)
        });
    }
    let mut tally = AttackTally::default();
    while let Some(j) = set.join_next().await {
        if let Ok((dev, t)) = j {
            tally.attempts += t.attempts;
            tally.accepted += t.accepted;
            let i = dev.idx;
            w.devices[i] = Some(dev);
        }
    }
    Ok(tally)
}
