//! # vouch-simulator
//!
//! Simulated fleets of Vouch peripherals and gateways against the real
//! backend and the real gateway code, with the BLE radio modelled and
//! adversaries in the mix (`vouch-sim run`), plus `vouch-sim demo` (one
//! backend, one gateway, a few devices over real sockets).
//!
//! - [`scenario`]: TOML scenarios (fleet, link model, timeline, attacks);
//!   the built-ins live in `simulator/scenarios/`.
//! - [`link`]: the BLE link model (connection interval, ATT MTU, data
//!   length, loss, drops) in virtual time.
//! - [`backend`]: the real backend in-process or over HTTPS on loopback.
//! - [`fleet`]: gateways (the daemon's endpoint, fed memory links) and
//!   peripherals (the proto state machine).
//! - [`adversary`]: one attacker per class of DESIGN.md §4.
//! - [`run`](mod@run): the timeline; [`report`] and [`plot`]: the results.
//!
//! ```no_run
//! # async fn demo() -> Result<(), vouch_simulator::Error> {
//! use vouch_simulator::{run, Scenario, RunOptions, BackendMode};
//! let out = run(RunOptions {
//!     scenario: Scenario::load("baseline")?,
//!     peripherals: Some(50),
//!     gateways: Some(2),
//!     seed: 1,
//!     backend: BackendMode::InProc,
//!     database_url: None,
//!     backend_instances: 1,
//!     progress: false,
//! })
//! .await?;
//! assert_eq!(out.report.honest_rejected, 0);
//! println!("{}", out.report.table());
//! # Ok(()) }
//! ```

pub mod adversary;
pub mod backend;
mod error;
pub mod fleet;
pub mod link;
pub mod plot;
pub mod report;
pub mod run;
pub mod scenario;

pub use backend::BackendMode;
pub use error::Error;
pub use report::Report;
pub use run::{run, RunOptions, RunOutput};
pub use scenario::Scenario;

pub mod bench;

use std::time::Instant;

use vouch_peripheral::driver::SessionEnd;
use vouch_peripheral::Event;
use vouch_proto::session::CloseReason;
use vouch_tests::{Backend, Device, Gateway};

/// Runs the demo with `devices` peripherals, printing each step.
pub async fn demo(devices: usize) -> anyhow::Result<()> {
    anyhow::ensure!((1..=100).contains(&devices), "--devices must be 1 to 100");
    let t0 = Instant::now();
    let step = |s: &str| println!("[{:>7.3}s] {s}", t0.elapsed().as_secs_f64());

    let mut backend = Backend::start().await;
    step(&format!(
        "backend: keys, CA and SQLite registry created; serving HTTPS at {}",
        backend.url()
    ));
    let gateway = Gateway::start(&backend, "plant-1").await;
    step(&format!(
        "gateway {} enrolled (client certificate issued), TCP transport at {}",
        short(&gateway.key.to_string()),
        gateway.url()
    ));
    let mut fleet = Vec::new();
    for _ in 0..devices {
        fleet.push(Device::enroll(&backend, "meters").await);
    }
    backend
        .allow("group:meters", "site:plant-1", "telemetry,command")
        .await;
    step(&format!("{devices} peripherals: keys made on the device, enrolled, provisioned with the anchor; policy meters → plant-1"));

    let mut inbound = gateway.table.sessions().subscribe();
    let mut running = Vec::new();
    // Each device's flash: the same store across its runs keeps its ticket.
    let stores: Vec<_> = fleet.iter().map(|d| d.store()).collect();
    for (d, store) in fleet.iter().zip(&stores) {
        let mut r = d.run_url(&gateway.url(), store.clone()).await;
        let resumed = r.established().await;
        step(&format!(
            "peripheral {} authenticated (full handshake: {})",
            d.id, !resumed
        ));
        running.push(r);
    }
    for (d, r) in fleet.iter().zip(&running) {
        r.handle
            .send(format!("{} temperature=21.5C", d.id).into_bytes())
            .await?;
        let m = tokio::time::timeout(vouch_tests::DEADLINE, inbound.recv()).await??;
        step(&format!(
            "gateway received from {}: {:?}",
            m.peripheral,
            String::from_utf8_lossy(&m.data)
        ));
    }
    gateway
        .table
        .sessions()
        .send(fleet[0].id, b"led=on".to_vec())
        .await?;
    let ev = running[0]
        .next_matching("the command", |e| matches!(e, Event::Data(_)))
        .await;
    if let Event::Data(d) = ev {
        step(&format!(
            "peripheral {} received command {:?}",
            fleet[0].id,
            String::from_utf8_lossy(&d)
        ));
    }

    backend.peripheral_action(&fleet[0].id, "revoke").await;
    let t = Instant::now();
    running[0]
        .next_matching("the revocation", |e| {
            matches!(
                e,
                Event::SessionEnded(SessionEnd::ClosedByGateway(CloseReason::REVOKED))
            )
        })
        .await;
    step(&format!(
        "peripheral {} revoked: its live session was closed {:?} after the admin call",
        fleet[0].id,
        t.elapsed()
    ));

    if devices > 1 {
        backend.stop().await;
        step("backend stopped (uplink down)");
        let r = running.remove(1);
        r.stop().await;
        let mut again = fleet[1].run_url(&gateway.url(), stores[1].clone()).await;
        let resumed = again.established().await;
        step(&format!(
            "peripheral {} reconnected without the backend: resumed = {resumed}",
            fleet[1].id
        ));
        again.stop().await;
    }
    for r in running {
        r.stop().await;
    }
    let audit = fleet.iter().map(|d| d.id).collect::<Vec<_>>();
    step(&format!(
        "done: {} peripherals, gateway metrics below",
        audit.len()
    ));
    for line in gateway
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("vouch_gateway_handshakes_total"))
    {
        println!("    {line}");
    }
    Ok(())
}

fn short(s: &str) -> &str {
    &s[..16.min(s.len())]
}
