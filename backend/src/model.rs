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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PeripheralRecord {
    /// Registry id (16 hex digits).
    #[serde(serialize_with = "ser_display")]
    #[schemars(with = "String")]
    pub id: PeripheralId,
    /// Ed25519 identity key (64 hex digits).
    #[serde(serialize_with = "ser_display")]
    #[schemars(with = "String")]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct GatewayRecord {
    /// The gateway's Ed25519 identity key (64 hex digits), also in its TLS certificate.
    #[serde(serialize_with = "ser_display")]
    #[schemars(with = "String")]
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
    /// When the last client certificate issued to it (at enrollment or
    /// renewal) expires, ms since the Unix epoch; `None` if none was issued
    /// since the backend started recording it.
    pub certificate_expires_ms: Option<i64>,
    /// When it last polled the revocation feed, at any instance (ms since
    /// the Unix epoch; written about once a second); `None` if never.
    pub last_poll_ms: Option<i64>,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PolicyRule {
    /// Rule id.
    pub id: i64,
    /// Which peripherals: `peripheral:ID`, `group:NAME` or `any`.
    #[schemars(with = "String")]
    pub peripheral: PeripheralSelector,
    /// Which gateways: `gateway:KEY`, `group:NAME`, `site:NAME` or `any`.
    #[schemars(with = "String")]
    pub gateway: GatewaySelector,
    /// Scope bits granted (TELEMETRY = 1, COMMAND = 2, application bits 8..31).
    #[serde(serialize_with = "ser_scope")]
    #[schemars(with = "u32")]
    pub scope: Scope,
    /// Lifetimes granted.
    #[serde(serialize_with = "ser_lifetimes")]
    #[schemars(with = "LifetimesSchema")]
    pub lifetimes: Lifetimes,
    /// When created (ms since the Unix epoch).
    pub created_ms: i64,
}

/// How [`PolicyRule::lifetimes`] is written (its schema).
#[derive(schemars::JsonSchema)]
#[allow(dead_code)] // a schema only
struct LifetimesSchema {
    /// Session lifetime, seconds.
    session_s: u32,
    /// Resumption lifetime, seconds.
    resumption_s: u32,
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

/// A scope as the names [`parse_scope`] reads: `telemetry`, `command`,
/// `appN` for the application bits, and any other bits as `0x…`; `none`
/// for no bit. `parse_scope(&scope_names(s)) == Some(s)` for every scope
/// but the empty one.
pub fn scope_names(scope: Scope) -> String {
    let mut names = Vec::new();
    let mut rest = scope.0;
    for (bit, name) in [(Scope::TELEMETRY, "telemetry"), (Scope::COMMAND, "command")] {
        if rest & bit.0 != 0 {
            names.push(name.to_owned());
            rest &= !bit.0;
        }
    }
    for bit in 8..=31 {
        if rest & (1 << bit) != 0 {
            names.push(format!("app{bit}"));
            rest &= !(1 << bit);
        }
    }
    if rest != 0 {
        names.push(format!("0x{rest:x}"));
    }
    if names.is_empty() {
        return "none".to_owned();
    }
    names.join(",")
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

/// Why a public key given at enrollment or import is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejected {
    /// Neither 64 hex digits nor an Ed25519 SubjectPublicKeyInfo PEM.
    #[error("public_key must be 64 hex digits or an Ed25519 SubjectPublicKeyInfo PEM")]
    Malformed,
    /// The bytes do not decode to a curve point.
    #[error("public_key is not a point of the Ed25519 curve")]
    NotOnCurve,
    /// A valid point written with `y ≥ p` (or a sign bit on `x = 0`).
    #[error(
        "public_key is not canonically encoded: its y coordinate is not below 2^255 - 19 \
         (SPEC.md §2.1 requires the canonical encoding); no key generator writes it so"
    )]
    NonCanonical,
    /// A point whose order divides 8.
    #[error("public_key is a point of small order, a weak key no key generator makes")]
    SmallOrder,
}

/// Parses a public key given as 64 hex digits or as SubjectPublicKeyInfo PEM.
/// Refuses, for gateways and peripherals alike, bytes that are not a curve
/// point, a point not encoded canonically (SPEC.md §2.1: the decoding of RFC
/// 8032 §5.1.3 fails for `y ≥ p`, though ed25519-dalek reduces such a `y`
/// and accepts it), and weak keys (points of small order, such as all
/// zeros): no honest key generator produces either, and a second encoding of
/// one key would be a second registry entry, with another derived id, for
/// the same device.
pub fn parse_public_key(s: &str) -> Result<PublicKey, KeyRejected> {
    let t = s.trim();
    let bytes: [u8; 32] = if t.starts_with("-----BEGIN") {
        *PublicKey::from_public_key_pem(t)
            .map_err(|_| KeyRejected::Malformed)?
            .as_bytes()
    } else {
        let mut out = [0u8; 32];
        hex::decode_to_slice(t, &mut out).map_err(|_| KeyRejected::Malformed)?;
        out
    };
    let vk =
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| KeyRejected::NotOnCurve)?;
    if vk.to_edwards().compress().to_bytes() != bytes {
        return Err(KeyRejected::NonCanonical);
    }
    if vk.is_weak() {
        return Err(KeyRejected::SmallOrder);
    }
    PublicKey::from_bytes(bytes).ok_or(KeyRejected::SmallOrder)
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
        for bits in [1u32, 3, 0x100, 0x8000_0103, 0xffff_ff03] {
            let names = scope_names(Scope(bits));
            assert_eq!(parse_scope(&names), Some(Scope(bits)), "{names}");
        }
        assert_eq!(scope_names(Scope(0x103)), "telemetry,command,app8");
        assert_eq!(scope_names(Scope(0)), "none");
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
            certificate_expires_ms: None,
            last_poll_ms: None,
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
        assert_eq!(
            parse_public_key(&"00".repeat(32)),
            Err(KeyRejected::SmallOrder)
        );
        let mut identity = [0u8; 32];
        identity[0] = 1; // the neutral element
        assert_eq!(
            parse_public_key(&hex::encode(identity)),
            Err(KeyRejected::SmallOrder)
        );
        let good = vouch_proto::keys::IdentityKey::from_seed(&[1; 32]).public_key();
        assert_eq!(parse_public_key(&good.to_string()), Ok(good));
        assert_eq!(parse_public_key(&good.to_public_key_pem()), Ok(good));
        assert_eq!(parse_public_key("abc"), Err(KeyRejected::Malformed));
    }

    /// SPEC.md §2.1: a key written with `y ≥ p` is refused with its own
    /// message (issue 16: `f2ff…ff7f`, y = p + 5, was enrolled), in hex and
    /// in PEM. Not every `y ≥ p` is on the curve: those that are not are
    /// refused as such.
    #[test]
    fn non_canonical_keys_are_refused() {
        let odd = format!("f2{}7f", "ff".repeat(30));
        assert_eq!(parse_public_key(&odd), Err(KeyRejected::NonCanonical));
        let mut on_curve = 0;
        for y_minus_p in 0u8..19 {
            let mut bytes = [0xffu8; 32];
            bytes[0] = 0xed + y_minus_p;
            bytes[31] = 0x7f;
            let verdict = parse_public_key(&hex::encode(bytes));
            assert!(
                matches!(
                    verdict,
                    Err(KeyRejected::NonCanonical
                        | KeyRejected::NotOnCurve
                        | KeyRejected::SmallOrder)
                ),
                "y = p + {y_minus_p}: {verdict:?}"
            );
            on_curve += usize::from(verdict == Err(KeyRejected::NonCanonical));
        }
        assert!(on_curve > 0);
        // The same key as SubjectPublicKeyInfo PEM.
        let mut der = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        der.extend(hex::decode(&odd).unwrap_or_default());
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64(&der)
        );
        assert_eq!(parse_public_key(&pem), Err(KeyRejected::NonCanonical));
    }

    fn base64(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
