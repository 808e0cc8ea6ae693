//! The registry's domain types: lifecycle status, records, policy rules and
//! their selectors. Parsed once at the edge (parse, don't validate): a
//! [`PeripheralRecord`] always holds a valid key and id.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Serialize, Serializer};
use vouch_proto::keys::{PeripheralId, PublicKey};
use vouch_proto::wire::{Lifetimes, Scope};

/// The lifecycle of a peripheral or a gateway.
///
/// ```text
/// pending ──activate──▶ active ──suspend──▶ suspended
///                          ▲                    │
///                          └─────reinstate──────┘
/// pending | active | suspended ──revoke──▶ revoked (final)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Known to the registry, not yet allowed to attach.
    Pending,
    /// Allowed to attach (subject to policy).
    Active,
    /// Temporarily refused; can be reinstated.
    Suspended,
    /// Refused for good. Final.
    Revoked,
}

impl Status {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Active => "active",
            Status::Suspended => "suspended",
            Status::Revoked => "revoked",
        }
    }

    /// Parses a stored or user-given name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Status::Pending,
            "active" => Status::Active,
            "suspended" => Status::Suspended,
            "revoked" => Status::Revoked,
            _ => return None,
        })
    }

    /// Whether `self → to` is a transition of the lifecycle.
    pub fn can_become(self, to: Status) -> bool {
        matches!(
            (self, to),
            (Status::Pending, Status::Active)
                | (Status::Active, Status::Suspended)
                | (Status::Suspended, Status::Active)
                | (
                    Status::Pending | Status::Active | Status::Suspended,
                    Status::Revoked
                )
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lifecycle change requested by an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// pending → active.
    Activate,
    /// active → suspended.
    Suspend,
    /// suspended → active.
    Reinstate,
    /// any but revoked → revoked.
    Revoke,
}

impl Transition {
    /// The status the transition leads to.
    pub fn target(self) -> Status {
        match self {
            Transition::Activate | Transition::Reinstate => Status::Active,
            Transition::Suspend => Status::Suspended,
            Transition::Revoke => Status::Revoked,
        }
    }

    /// Whether the transition applies to a subject in status `from`.
    pub fn applies_to(self, from: Status) -> bool {
        match self {
            Transition::Activate => from == Status::Pending,
            Transition::Reinstate => from == Status::Suspended,
            Transition::Suspend => from == Status::Active,
            Transition::Revoke => from != Status::Revoked,
        }
    }

    /// The verb, as in the CLI and the API path.
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Activate => "activate",
            Transition::Suspend => "suspend",
            Transition::Reinstate => "reinstate",
            Transition::Revoke => "revoke",
        }
    }
}

/// Serializes anything `Display` as a string (ids and keys as hex).
pub(crate) fn ser_display<T: fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A registered peripheral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeripheralRecord {
    /// Registry id (16 hex digits).
    #[serde(serialize_with = "ser_display")]
    pub id: PeripheralId,
    /// Ed25519 identity key (64 hex digits).
    #[serde(serialize_with = "ser_display")]
    pub public_key: PublicKey,
    /// Lifecycle status.
    pub status: Status,
    /// Group, if any.
    pub group: Option<String>,
    /// Free-form attributes, sorted by name.
    pub attributes: BTreeMap<String, String>,
    /// When enrolled (ms since the Unix epoch).
    pub created_ms: i64,
    /// Last change (ms since the Unix epoch).
    pub updated_ms: i64,
}

/// A registered gateway; its id is its Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewayRecord {
    /// The gateway's Ed25519 identity key (64 hex digits), also in its TLS certificate.
    #[serde(serialize_with = "ser_display")]
    pub public_key: PublicKey,
    /// A human name.
    pub name: Option<String>,
    /// Gateway group, if any.
    pub group: Option<String>,
    /// Site, if any.
    pub site: Option<String>,
    /// Lifecycle status.
    pub status: Status,
    /// When enrolled (ms since the Unix epoch).
    pub created_ms: i64,
    /// Last change (ms since the Unix epoch).
    pub updated_ms: i64,
}

/// Which peripherals a policy rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeripheralSelector {
    /// One peripheral.
    Peripheral(PeripheralId),
    /// Every peripheral of a group.
    Group(String),
    /// Every peripheral.
    Any,
}

/// Which gateways a policy rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewaySelector {
    /// One gateway.
    Gateway(PublicKey),
    /// Every gateway of a group.
    Group(String),
    /// Every gateway at a site.
    Site(String),
    /// Every gateway.
    Any,
}

impl PeripheralSelector {
    /// (kind, value) as stored.
    pub(crate) fn to_columns(&self) -> (&'static str, String) {
        match self {
            PeripheralSelector::Peripheral(id) => ("peripheral", id.to_string()),
            PeripheralSelector::Group(g) => ("group", g.clone()),
            PeripheralSelector::Any => ("any", String::new()),
        }
    }

    /// From stored columns.
    pub(crate) fn from_columns(kind: &str, value: &str) -> Option<Self> {
        Some(match kind {
            "peripheral" => PeripheralSelector::Peripheral(PeripheralId::from_hex(value)?),
            "group" => PeripheralSelector::Group(value.to_owned()),
            "any" => PeripheralSelector::Any,
            _ => return None,
        })
    }
}

impl GatewaySelector {
    /// (kind, value) as stored.
    pub(crate) fn to_columns(&self) -> (&'static str, String) {
        match self {
            GatewaySelector::Gateway(k) => ("gateway", k.to_string()),
            GatewaySelector::Group(g) => ("group", g.clone()),
            GatewaySelector::Site(s) => ("site", s.clone()),
            GatewaySelector::Any => ("any", String::new()),
        }
    }

    /// From stored columns.
    pub(crate) fn from_columns(kind: &str, value: &str) -> Option<Self> {
        Some(match kind {
            "gateway" => GatewaySelector::Gateway(PublicKey::from_hex(value)?),
            "group" => GatewaySelector::Group(value.to_owned()),
            "site" => GatewaySelector::Site(value.to_owned()),
            "any" => GatewaySelector::Any,
            _ => return None,
        })
    }
}

impl fmt::Display for PeripheralSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeripheralSelector::Peripheral(id) => write!(f, "peripheral:{id}"),
            PeripheralSelector::Group(g) => write!(f, "group:{g}"),
            PeripheralSelector::Any => f.write_str("any"),
        }
    }
}

impl fmt::Display for GatewaySelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatewaySelector::Gateway(k) => write!(f, "gateway:{k}"),
            GatewaySelector::Group(g) => write!(f, "group:{g}"),
            GatewaySelector::Site(s) => write!(f, "site:{s}"),
            GatewaySelector::Any => f.write_str("any"),
        }
    }
}

impl Serialize for PeripheralSelector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for GatewaySelector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parses `peripheral:ID`, `group:NAME` or `any`.
pub fn parse_peripheral_selector(s: &str) -> Option<PeripheralSelector> {
    match s.split_once(':') {
        Some(("peripheral", id)) => PeripheralId::from_hex(id).map(PeripheralSelector::Peripheral),
        Some(("group", g)) if valid_name(g) => Some(PeripheralSelector::Group(g.to_owned())),
        None if s == "any" => Some(PeripheralSelector::Any),
        _ => None,
    }
}

/// Parses `gateway:KEY`, `group:NAME`, `site:NAME` or `any`.
pub fn parse_gateway_selector(s: &str) -> Option<GatewaySelector> {
    match s.split_once(':') {
        Some(("gateway", k)) => PublicKey::from_hex(k).map(GatewaySelector::Gateway),
        Some(("group", g)) if valid_name(g) => Some(GatewaySelector::Group(g.to_owned())),
        Some(("site", g)) if valid_name(g) => Some(GatewaySelector::Site(g.to_owned())),
        None if s == "any" => Some(GatewaySelector::Any),
        _ => None,
    }
}

/// A policy rule: peripherals matching `peripheral` may attach to gateways
/// matching `gateway`, with `scope` and `lifetimes`.
///
/// When several rules match one (peripheral, gateway) pair, the grant is the
/// union of their scopes and the longest of their lifetimes: rules only ever
/// grant, so adding a rule never takes anything away. No matching rule means
/// no vouch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyRule {
    /// Rule id.
    pub id: i64,
    /// Which peripherals.
    pub peripheral: PeripheralSelector,
    /// Which gateways.
    pub gateway: GatewaySelector,
    /// Scope bits granted (TELEMETRY = 1, COMMAND = 2, application bits 8..31).
    #[serde(serialize_with = "ser_scope")]
    pub scope: Scope,
    /// Lifetimes granted.
    #[serde(serialize_with = "ser_lifetimes")]
    pub lifetimes: Lifetimes,
    /// When created (ms since the Unix epoch).
    pub created_ms: i64,
}

fn ser_scope<S: Serializer>(v: &Scope, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u32(v.0)
}

fn ser_lifetimes<S: Serializer>(v: &Lifetimes, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("Lifetimes", 2)?;
    st.serialize_field("session_s", &v.session_s)?;
    st.serialize_field("resumption_s", &v.resumption_s)?;
    st.end()
}

impl PeripheralSelector {
    /// Whether the rule side covers `p`.
    pub fn matches(&self, p: &PeripheralRecord) -> bool {
        match self {
            PeripheralSelector::Peripheral(id) => *id == p.id,
            PeripheralSelector::Group(g) => p.group.as_deref() == Some(g.as_str()),
            PeripheralSelector::Any => true,
        }
    }
}

impl GatewaySelector {
    /// Whether the rule side covers `g`.
    pub fn matches(&self, g: &GatewayRecord) -> bool {
        match self {
            GatewaySelector::Gateway(k) => *k == g.public_key,
            GatewaySelector::Group(n) => g.group.as_deref() == Some(n.as_str()),
            GatewaySelector::Site(s) => g.site.as_deref() == Some(s.as_str()),
            GatewaySelector::Any => true,
        }
    }
}

/// The grant of `rules` for peripheral `p` on gateway `g`: the union of the
/// scopes and the longest lifetimes of every matching rule (see
/// [`PolicyRule`]), or `None` if no rule matches.
pub fn grant(
    rules: &[PolicyRule],
    p: &PeripheralRecord,
    g: &GatewayRecord,
) -> Option<(Scope, Lifetimes)> {
    rules
        .iter()
        .filter(|r| r.peripheral.matches(p) && r.gateway.matches(g))
        .fold(None, |acc, r| {
            Some(match acc {
                None => (r.scope, r.lifetimes),
                Some((s, l)) => (
                    s.union(r.scope),
                    Lifetimes {
                        session_s: l.session_s.max(r.lifetimes.session_s),
                        resumption_s: l.resumption_s.max(r.lifetimes.resumption_s),
                    },
                ),
            })
        })
}

/// The scope names the CLI and API accept besides numbers.
pub fn parse_scope(s: &str) -> Option<Scope> {
    let mut scope = Scope(0);
    for part in s.split([',', '|', '+']) {
        let part = part.trim();
        let bits = match part {
            "telemetry" => Scope::TELEMETRY,
            "command" => Scope::COMMAND,
            "" => continue,
            n => {
                if let Some(hex) = n.strip_prefix("0x") {
                    Scope(u32::from_str_radix(hex, 16).ok()?)
                } else if let Some(bit) = n.strip_prefix("app") {
                    let bit: u32 = bit.parse().ok()?;
                    if !(8..=31).contains(&bit) {
                        return None;
                    }
                    Scope(1 << bit)
                } else {
                    Scope(n.parse().ok()?)
                }
            }
        };
        scope = scope.union(bits);
    }
    // Bits 2..7 are reserved by the protocol.
    if scope.0 == 0 || scope.0 & 0xfc != 0 {
        return None;
    }
    Some(scope)
}

/// Group, site, attribute and gateway names: 1 to 128 printable characters
/// without control characters.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control)
}

/// Attribute values: at most 1024 characters, no control characters.
pub fn valid_value(s: &str) -> bool {
    s.len() <= 1024 && !s.chars().any(char::is_control)
}

/// Parses a public key given as 64 hex digits or as SubjectPublicKeyInfo PEM.
/// Refuses weak keys (points of small order, such as all zeros): no honest
/// key generator produces one, and strict verification would refuse every
/// signature under it anyway.
pub fn parse_public_key(s: &str) -> Option<PublicKey> {
    let t = s.trim();
    let key = if t.starts_with("-----BEGIN") {
        PublicKey::from_public_key_pem(t).ok()?
    } else {
        PublicKey::from_hex(t)?
    };
    let vk = ed25519_dalek::VerifyingKey::from_bytes(key.as_bytes()).ok()?;
    (!vk.is_weak()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_transitions() {
        use Status::*;
        assert!(Pending.can_become(Active));
        assert!(Active.can_become(Suspended));
        assert!(Suspended.can_become(Active));
        assert!(Active.can_become(Revoked));
        assert!(!Revoked.can_become(Active));
        assert!(!Revoked.can_become(Suspended));
        assert!(!Pending.can_become(Suspended));
        for t in [
            Transition::Activate,
            Transition::Suspend,
            Transition::Reinstate,
            Transition::Revoke,
        ] {
            assert!(!t.applies_to(Revoked), "{t:?} must not leave revoked");
        }
    }

    #[test]
    fn scopes_and_selectors_parse() {
        assert_eq!(parse_scope("telemetry"), Some(Scope::TELEMETRY));
        assert_eq!(parse_scope("telemetry,command"), Some(Scope(3)));
        assert_eq!(parse_scope("telemetry,app8"), Some(Scope(1 | 256)));
        assert_eq!(parse_scope("4"), None, "reserved bit");
        assert_eq!(parse_scope(""), None);
        assert_eq!(parse_scope("app7"), None);
        assert_eq!(parse_scope("bogus"), None);
        assert_eq!(
            parse_peripheral_selector("any"),
            Some(PeripheralSelector::Any)
        );
        assert_eq!(
            parse_peripheral_selector("group:meters"),
            Some(PeripheralSelector::Group("meters".into()))
        );
        assert_eq!(parse_peripheral_selector("group:"), None);
        assert_eq!(
            parse_gateway_selector("site:plant-1"),
            Some(GatewaySelector::Site("plant-1".into()))
        );
        assert_eq!(parse_gateway_selector("gateway:zz"), None);
        assert_eq!(parse_gateway_selector("nonsense"), None);
    }

    #[test]
    fn grants_are_the_union_of_matching_rules() {
        let pk = vouch_proto::keys::IdentityKey::from_seed(&[1; 32]).public_key();
        let gk = vouch_proto::keys::IdentityKey::from_seed(&[2; 32]).public_key();
        let p = PeripheralRecord {
            id: PeripheralId::derive(&pk),
            public_key: pk,
            status: Status::Active,
            group: Some("meters".into()),
            attributes: BTreeMap::new(),
            created_ms: 0,
            updated_ms: 0,
        };
        let g = GatewayRecord {
            public_key: gk,
            name: None,
            group: None,
            site: Some("s1".into()),
            status: Status::Active,
            created_ms: 0,
            updated_ms: 0,
        };
        let rule = |id, ps, gs, scope, s| PolicyRule {
            id,
            peripheral: parse_peripheral_selector(ps).unwrap(),
            gateway: parse_gateway_selector(gs).unwrap(),
            scope: Scope(scope),
            lifetimes: Lifetimes {
                session_s: s,
                resumption_s: s,
            },
            created_ms: 0,
        };
        assert_eq!(grant(&[], &p, &g), None);
        let rules = vec![
            rule(1, "group:meters", "site:s1", 1, 10),
            rule(2, "any", &format!("gateway:{gk}"), 2, 5),
            rule(3, "group:other", "any", 256, 99),
            rule(4, "any", "site:s2", 256, 99),
        ];
        assert_eq!(
            grant(&rules, &p, &g),
            Some((
                Scope(3),
                Lifetimes {
                    session_s: 10,
                    resumption_s: 10
                }
            ))
        );
        assert_eq!(grant(&rules[2..], &p, &g), None);
    }

    #[test]
    fn weak_keys_are_refused() {
        assert_eq!(parse_public_key(&"00".repeat(32)), None);
        let mut identity = [0u8; 32];
        identity[0] = 1; // the neutral element
        assert_eq!(parse_public_key(&hex::encode(identity)), None);
        let good = vouch_proto::keys::IdentityKey::from_seed(&[1; 32]).public_key();
        assert_eq!(parse_public_key(&good.to_string()), Some(good));
        assert_eq!(parse_public_key(&good.to_public_key_pem()), Some(good));
    }
}
