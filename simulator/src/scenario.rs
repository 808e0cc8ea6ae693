//! Scenario files: the fleet, the link model, the backend's settings and a
//! timeline of events, in TOML.
//!
//! Every table denies unknown fields, so a misspelt key is an error that
//! names the line and the field, never a silently ignored setting. The
//! built-in scenarios are the files in `simulator/scenarios/`, compiled in.

use std::path::Path;

use serde::Deserialize;

use crate::error::Error;

/// A parsed, checked scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name (reports and `vouch-sim list`).
    pub name: String,
    /// One line about what it shows.
    pub description: String,
    /// The fleet.
    pub fleet: Fleet,
    /// The BLE link model.
    #[serde(default)]
    pub link: LinkParams,
    /// The gateway ↔ backend uplink.
    #[serde(default)]
    pub uplink: Uplink,
    /// Backend settings that differ from the defaults.
    #[serde(default)]
    pub backend: BackendParams,
    /// Gateway settings that differ from the defaults.
    #[serde(default)]
    pub gateway: GatewayParams,
    /// What happens, in order of `at_s`.
    #[serde(default, rename = "event")]
    pub events: Vec<toml::Spanned<Event>>,
}

/// The fleet: how many of each, and the devices' radios and CPUs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// Peripherals (overridden by `--peripherals`).
    pub peripherals: usize,
    /// Gateways (overridden by `--gateways`).
    pub gateways: usize,
    /// Fraction of peripherals stuck at ATT MTU 23 (the rest use 247).
    #[serde(default)]
    pub mtu23_fraction: f64,
    /// Handshakes in flight at once across the fleet (a bound on the
    /// simulator's own concurrency, not a protocol setting).
    #[serde(default = "default_inflight")]
    pub max_inflight: usize,
    /// Modelled peripheral CPU time to build a Hello (key generation, seal,
    /// signature), ms. Default: a Cortex-M4F at 64 MHz.
    #[serde(default = "default_cpu_hello")]
    pub cpu_hello_ms: f64,
    /// Modelled peripheral CPU time to check a Response (verify, key
    /// schedule, Finish), ms.
    #[serde(default = "default_cpu_response")]
    pub cpu_response_ms: f64,
    /// Modelled peripheral CPU time of a whole resumption, ms.
    #[serde(default = "default_cpu_resume")]
    pub cpu_resume_ms: f64,
}

fn default_inflight() -> usize {
    256
}
fn default_cpu_hello() -> f64 {
    68.0
}
fn default_cpu_response() -> f64 {
    55.0
}
fn default_cpu_resume() -> f64 {
    45.0
}

/// The BLE link model (see [`crate::link`]).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkParams {
    /// Connection interval, ms (7.5 to 4000).
    pub interval_ms: f64,
    /// Link-layer data length: the largest LL payload (27 without the data
    /// length extension, up to 251 with it).
    pub data_length: usize,
    /// Link-layer packets one side may send per connection event.
    pub packets_per_event: usize,
    /// PHY rate, 1 or 2 Mbit/s.
    pub phy_mbps: u32,
    /// Probability that one LL packet is lost (it is sent again in the next
    /// connection event).
    pub loss: f64,
    /// Probability that a connection drops during a handshake.
    pub disconnect: f64,
    /// Supervision timeout: how long a dropped connection takes to notice, ms.
    pub supervision_timeout_ms: f64,
    /// Connection attempts per handshake before a device gives up for now.
    pub attempts: u32,
    /// Most links one gateway's BLE central connects and authenticates at
    /// once; a device that finds them all taken waits (in order of arrival)
    /// for one to free, it is not refused. 0: no cap. Default
    /// [`DEFAULT_MAX_LINKS`].
    pub max_links: usize,
}

/// The default link cap: the gateway daemon's own `[transport.ble]
/// max_links` default, in the range common BLE controllers hold at once
/// (simulator/README.md, "The link cap").
pub const DEFAULT_MAX_LINKS: usize = 8;

impl Default for LinkParams {
    fn default() -> Self {
        Self {
            interval_ms: 30.0,
            data_length: 251,
            packets_per_event: 4,
            phy_mbps: 1,
            loss: 0.0,
            disconnect: 0.0,
            supervision_timeout_ms: 2000.0,
            attempts: 3,
            max_links: DEFAULT_MAX_LINKS,
        }
    }
}

/// The gateway ↔ backend uplink as modelled in the latency figures.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Uplink {
    /// Round trip of one vouch request, ms (the backend's own time is
    /// measured separately and reported as wall-clock figures).
    pub backend_rtt_ms: f64,
    /// Gateway processing per handshake message, ms.
    pub gateway_ms: f64,
}

impl Default for Uplink {
    fn default() -> Self {
        Self {
            backend_rtt_ms: 40.0,
            gateway_ms: 0.5,
        }
    }
}

/// Backend settings the scenario changes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendParams {
    /// `alert` (default) or `refuse`: what a second live gateway gets.
    pub clone_action: Option<String>,
    /// Credential failures within the window that lock a subject out.
    pub lockout_failures: Option<u32>,
    /// How far apart reported times may be and count as one moment, ms
    /// (`security.clone_tolerance_ms`, SPEC.md §10.5).
    pub clone_tolerance_ms: Option<u32>,
}

/// Gateway settings the scenario changes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayParams {
    /// Caps each gateway's links (SPEC.md §8.4): one slot per device homed
    /// on it, plus this many. Uncapped when absent.
    pub spare_links: Option<usize>,
    /// With `spare_links`: how long a link may hold a slot without having
    /// sent its first message, ms (the daemon's `limits.first_message_ms`).
    #[serde(default = "default_first_message_ms")]
    pub first_message_ms: u64,
}

fn default_first_message_ms() -> u64 {
    3000
}

/// One thing that happens on the timeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// When, in virtual seconds from the start.
    pub at_s: f64,
    /// What.
    pub action: Action,
    /// Which peripherals (for `connect`, `disconnect`, `revoke`, and the
    /// honest devices that keep working during an `attack`).
    #[serde(default)]
    pub select: Select,
    /// What fraction of the selected peripherals (0 to 1).
    #[serde(default)]
    pub fraction: Option<f64>,
    /// Start times spread uniformly over this many virtual seconds.
    #[serde(default)]
    pub spread_s: f64,
    /// The attack class (`attack`).
    #[serde(default)]
    pub class: Option<AttackClass>,
    /// How many attempts the adversary makes (`attack`).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Which gateway (`revoke-gateway`, `outage-start`/`outage-end`; all when
    /// absent for outages).
    #[serde(default)]
    pub gateway: Option<usize>,
    /// How many times to repeat a `churn` cycle.
    #[serde(default)]
    pub cycles: Option<u32>,
    /// How many of the operator's calls go out side by side (`revoke`;
    /// default 64). With 1, each revocation's reach is its own, not the
    /// wait of the calls before it for the one writer.
    #[serde(default)]
    pub at_once: Option<usize>,
}

/// The kinds of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Selected peripherals connect: resume when they hold a ticket for
    /// their gateway, full handshake otherwise.
    Connect,
    /// Selected live peripherals close their sessions.
    Disconnect,
    /// `cycles` rounds of: a fraction of live peripherals leave, then every
    /// peripheral that left comes back (resuming).
    Churn,
    /// The uplink of one gateway, or all, goes down.
    OutageStart,
    /// The uplink comes back.
    OutageEnd,
    /// The operator revokes selected peripherals through the admin API.
    Revoke,
    /// The operator revokes one gateway through the admin API.
    RevokeGateway,
    /// The operator rotates the backend key (`keys rotate`); every gateway
    /// fetches the signed update and delivers it after each handshake.
    RotateKey,
    /// An adversary acts.
    Attack,
}

/// Which peripherals an event applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Select {
    /// Every honest peripheral not revoked.
    #[default]
    All,
    /// Those with a live session.
    Online,
    /// Those without one.
    Offline,
    /// Those that never completed a handshake.
    Fresh,
    /// Those without a session that hold a resumption ticket.
    Returning,
}

/// The attack classes of DESIGN.md §4, one scenario each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackClass {
    /// A device copies a peripheral's BLE address and tries to pass as it.
    MacSpoof,
    /// Hellos, ResumeHellos and Finishes captured on the air, replayed.
    Replay,
    /// Responses (vouches) moved between handshakes and peripherals.
    VouchSwap,
    /// Gateways not in the registry, or not associated by policy.
    RogueGateway,
    /// Revoked peripherals try to come back (with a saved ticket, then full).
    RevokedPeripheral,
    /// A revoked gateway keeps asking for vouches.
    RevokedGateway,
    /// A peripheral's key copied into a second device on another gateway.
    Clone,
    /// A peripheral's messages relayed to a distant gateway.
    Relay,
    /// Bytes flipped, truncated, extended in flight; malformed fragments.
    Tamper,
    /// Version and suite bytes changed.
    Downgrade,
    /// Guessed credentials and ticket ids against the backend and gateways.
    BruteForce,
    /// Handshake and fragment floods, slow peers.
    Flood,
    /// During a backend outage, rogue centrals answer devices' resumptions
    /// with forged confirmations, garbage and alerts (SPEC.md §6.4).
    RogueCentral,
    /// A thief of a backend key the operator rotated away from runs a
    /// gateway: vouches and anchor updates signed by the old key (§11.15).
    OldKey,
    /// Rogue peers open links and say nothing, to hold every link slot
    /// (§8.4).
    SlotStall,
}

impl AttackClass {
    /// Every class, in report order.
    pub const ALL: [AttackClass; 15] = [
        AttackClass::MacSpoof,
        AttackClass::Replay,
        AttackClass::VouchSwap,
        AttackClass::RogueGateway,
        AttackClass::RevokedPeripheral,
        AttackClass::RevokedGateway,
        AttackClass::Clone,
        AttackClass::Relay,
        AttackClass::Tamper,
        AttackClass::Downgrade,
        AttackClass::BruteForce,
        AttackClass::Flood,
        AttackClass::RogueCentral,
        AttackClass::OldKey,
        AttackClass::SlotStall,
    ];

    /// The name used in scenario files and reports.
    pub fn name(self) -> &'static str {
        match self {
            AttackClass::MacSpoof => "mac-spoof",
            AttackClass::Replay => "replay",
            AttackClass::VouchSwap => "vouch-swap",
            AttackClass::RogueGateway => "rogue-gateway",
            AttackClass::RevokedPeripheral => "revoked-peripheral",
            AttackClass::RevokedGateway => "revoked-gateway",
            AttackClass::Clone => "clone",
            AttackClass::Relay => "relay",
            AttackClass::Tamper => "tamper",
            AttackClass::Downgrade => "downgrade",
            AttackClass::BruteForce => "brute-force",
            AttackClass::Flood => "flood",
            AttackClass::RogueCentral => "rogue-central",
            AttackClass::OldKey => "old-key",
            AttackClass::SlotStall => "slot-stall",
        }
    }
}

/// The built-in scenarios: name and file contents.
pub const BUILTINS: &[(&str, &str)] = &[
    ("baseline", include_str!("../scenarios/baseline.toml")),
    ("churn", include_str!("../scenarios/churn.toml")),
    (
        "backend-outage",
        include_str!("../scenarios/backend-outage.toml"),
    ),
    ("revocation", include_str!("../scenarios/revocation.toml")),
    (
        "revocation-reach",
        include_str!("../scenarios/revocation-reach.toml"),
    ),
    ("scale", include_str!("../scenarios/scale.toml")),
    ("mac-spoof", include_str!("../scenarios/mac-spoof.toml")),
    ("replay", include_str!("../scenarios/replay.toml")),
    ("vouch-swap", include_str!("../scenarios/vouch-swap.toml")),
    (
        "rogue-gateway",
        include_str!("../scenarios/rogue-gateway.toml"),
    ),
    (
        "revoked-peripheral",
        include_str!("../scenarios/revoked-peripheral.toml"),
    ),
    (
        "revoked-gateway",
        include_str!("../scenarios/revoked-gateway.toml"),
    ),
    ("clone", include_str!("../scenarios/clone.toml")),
    ("relay", include_str!("../scenarios/relay.toml")),
    ("tamper", include_str!("../scenarios/tamper.toml")),
    ("downgrade", include_str!("../scenarios/downgrade.toml")),
    ("brute-force", include_str!("../scenarios/brute-force.toml")),
    ("flood", include_str!("../scenarios/flood.toml")),
    (
        "rogue-central",
        include_str!("../scenarios/rogue-central.toml"),
    ),
    ("slot-stall", include_str!("../scenarios/slot-stall.toml")),
    ("old-key", include_str!("../scenarios/old-key.toml")),
    ("link-cap", include_str!("../scenarios/link-cap.toml")),
];

impl Scenario {
    /// A built-in by name, or else a file by path.
    pub fn load(name_or_path: &str) -> Result<Self, Error> {
        if let Some((name, text)) = BUILTINS.iter().find(|(n, _)| *n == name_or_path) {
            return Self::parse(text, &format!("builtin:{name}"));
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(Error::UnknownScenario(name_or_path.to_string()));
        }
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadScenario {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and checks a scenario; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, Error> {
        let at = |offset: usize, message: String| {
            let (line, column) = vouch_host::config::line_col(text, offset);
            Error::Scenario {
                origin: origin.to_string(),
                line,
                column,
                message,
            }
        };
        let mut s: Scenario = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |r| r.start);
            at(offset, e.message().trim().to_string())
        })?;
        let fleet_at = text.find("[fleet]").unwrap_or(0);
        s.check_fleet()
            .map_err(|m| at(fleet_at, format!("in [fleet]/[link]: {m}")))?;
        for ev in &s.events {
            ev.get_ref()
                .check()
                .map_err(|m| at(ev.span().start, format!("in [[event]]: {m}")))?;
        }
        s.events
            .sort_by(|a, b| a.get_ref().at_s.total_cmp(&b.get_ref().at_s));
        Ok(s)
    }

    fn check_fleet(&self) -> Result<(), String> {
        let f = &self.fleet;
        if f.peripherals == 0 || f.gateways == 0 {
            return Err("field `peripherals` and `gateways` must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&f.mtu23_fraction) {
            return Err("field `mtu23_fraction` must be within 0 to 1".into());
        }
        if f.max_inflight == 0 {
            return Err("field `max_inflight` must be at least 1".into());
        }
        let l = &self.link;
        if !(7.5..=4000.0).contains(&l.interval_ms) {
            return Err("field `interval_ms` must be within 7.5 to 4000".into());
        }
        if !(27..=251).contains(&l.data_length) {
            return Err("field `data_length` must be within 27 to 251".into());
        }
        if l.packets_per_event == 0 {
            return Err("field `packets_per_event` must be at least 1".into());
        }
        if l.phy_mbps != 1 && l.phy_mbps != 2 {
            return Err("field `phy_mbps` must be 1 or 2".into());
        }
        if !(0.0..0.9).contains(&l.loss) || !(0.0..=1.0).contains(&l.disconnect) {
            return Err("field `loss` must be within 0 to 0.9, `disconnect` within 0 to 1".into());
        }
        if l.attempts == 0 {
            return Err("field `attempts` must be at least 1".into());
        }
        if let Some(a) = &self.backend.clone_action {
            if a != "alert" && a != "refuse" {
                return Err("field `clone_action` must be \"alert\" or \"refuse\"".into());
            }
        }
        Ok(())
    }
}

impl Event {
    fn check(&self) -> Result<(), String> {
        if !(self.at_s >= 0.0 && self.at_s.is_finite()) {
            return Err("field `at_s` must be a time at or after 0".into());
        }
        if self.spread_s < 0.0 {
            return Err("field `spread_s` must not be negative".into());
        }
        if let Some(f) = self.fraction {
            if !(0.0..=1.0).contains(&f) {
                return Err("field `fraction` must be within 0 to 1".into());
            }
        }
        match self.action {
            Action::Attack if self.class.is_none() => {
                Err("action `attack` needs the field `class`".into())
            }
            Action::RevokeGateway if self.gateway.is_none() => {
                Err("action `revoke-gateway` needs the field `gateway`".into())
            }
            Action::Churn if self.cycles.is_none() => {
                Err("action `churn` needs the field `cycles`".into())
            }
            a if a != Action::Attack && self.class.is_some() => {
                Err("field `class` belongs to action `attack` only".into())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_parses() {
        for (name, text) in BUILTINS {
            let s = Scenario::parse(text, name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&s.name, name);
        }
    }
}
