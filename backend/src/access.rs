//! Who may do what through the admin API: named operators, each with one
//! [`Role`], and their API tokens.
//!
//! - A token is `vouch_<id>_<secret>`: a public id (12 hex digits, it names
//!   the token in listings and logs) and a 256-bit secret (64 hex digits).
//!   Only SHA-256 of the whole token is stored; a presented token is looked
//!   up by its id and its hash compared in constant time
//!   ([`TokenHash::matches`]). The admin token `init` printed has the older
//!   form `vouch_<secret>`; it is the first admin's token, id `init`
//!   ([`crate::store::Store::bootstrap_operators`]).
//! - Roles are ordered: a [`Role::Viewer`] reads everything; a
//!   [`Role::Operator`] also enrolls, imports, changes lifecycles, adds
//!   policy rules (`associate`) and lifts lockouts; an [`Role::Admin`] also
//!   manages operators and their tokens and removes policy rules. Each admin
//!   route's handler names the role it needs in its signature
//!   (`crate::routes::admin`), so a route cannot forget its check; a request
//!   above its role is answered 403 `forbidden`.
//!
//! Every audit entry an operator's request writes names the operator
//! ([`Caller::actor`]): `operator:alice`. The local CLI, which needs a shell on
//! the backend's host and its data directory, writes `cli:<unix user>`.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// What an operator may do. Ordered: each role may do what the ones before
/// it may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything: the registry, policy, audit, lockouts, anchors.
    Viewer,
    /// Also enrolls, imports, suspends, reinstates, revokes, associates and
    /// lifts lockouts.
    Operator,
    /// Also manages operators and their tokens, and removes policy rules.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses a stored or user-given name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The id of the token `init` printed, which has no id of its own.
pub const INIT_TOKEN_ID: &str = "init";

/// The name of the first admin, whose token is the one `init` printed.
pub const FIRST_ADMIN: &str = "admin";

/// Hex digits of a token id.
const ID_HEX: usize = 12;

/// A new API token: shown once, to the person who asked for it.
pub struct NewToken {
    /// Its public id.
    pub id: String,
    /// The whole token, to give to the client. Secret.
    pub token: Zeroizing<String>,
    /// What the store keeps.
    pub hash: TokenHash,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a whole token, as stored.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

impl TokenHash {
    /// The hash of `token`.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `presented` hashes to this, in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        bool::from(Self::of(presented).0.ct_eq(&self.0))
    }

    /// Stored form: lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the stored form.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut h = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut h).ok()?;
        Some(Self(h))
    }
}

/// Generates a token with a fresh id and secret from the operating system's
/// RNG. `None` only if the RNG fails.
pub fn generate_token() -> Option<NewToken> {
    let mut bytes = Zeroizing::new([0u8; ID_HEX / 2 + 32]);
    getrandom::fill(bytes.as_mut()).ok()?;
    let (id, secret) = bytes.split_at(ID_HEX / 2);
    let id = hex::encode(id);
    let token = Zeroizing::new(format!("vouch_{id}_{}", hex::encode(secret)));
    let hash = TokenHash::of(&token);
    Some(NewToken { id, token, hash })
}

/// The id a presented token names: `vouch_<id>_<secret>` → `id`, the init
/// token's older `vouch_<secret>` → [`INIT_TOKEN_ID`]; `None` if it has
/// neither shape (it is then refused without a lookup).
pub fn token_id(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix("vouch_")?;
    let hexdigits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    match rest.split_once('_') {
        Some((id, secret)) if id.len() == ID_HEX && hexdigits(id) && secret.len() == 64 => {
            hexdigits(secret).then_some(id)
        }
        None if rest.len() == 64 && hexdigits(rest) => Some(INIT_TOKEN_ID),
        _ => None,
    }
}

/// An operator name: 1 to 64 of ASCII letters, digits, `.`, `_`, `-`, `@`,
/// starting with a letter or digit (it is written into audit entries and
/// shown in pages: nothing there needs escaping).
pub fn valid_operator_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// The authenticated caller of an admin request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The operator's name.
    pub name: String,
    /// The operator's role.
    pub role: Role,
    /// The id of the token presented.
    pub token_id: String,
}

impl Caller {
    /// The actor its writes record in the audit log.
    pub fn actor(&self) -> String {
        format!("operator:{}", self.name)
    }
}

/// An operator as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OperatorRecord {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// When added (ms since the Unix epoch).
    pub created_ms: i64,
    /// When removed, if it was: its tokens no longer work.
    pub removed_ms: Option<i64>,
}

/// An API token as listed: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenRecord {
    /// Public id.
    pub id: String,
    /// Whose it is.
    pub operator: String,
    /// When created (ms since the Unix epoch).
    pub created_ms: i64,
    /// When revoked, if it was.
    pub revoked_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_names_its_id_and_matches_its_hash_only() {
        let t = generate_token().expect("rng");
        assert_eq!(token_id(&t.token), Some(t.id.as_str()));
        assert!(t.hash.matches(&t.token));
        let mut other = t.token.to_string();
        other.pop();
        other.push('x');
        assert!(!t.hash.matches(&other));
        assert!(!format!("{t:?}").contains(&t.token[20..]));
    }

    #[test]
    fn the_init_token_form_is_the_init_id_and_anything_else_has_none() {
        let init = format!("vouch_{}", "ab".repeat(32));
        assert_eq!(token_id(&init), Some(INIT_TOKEN_ID));
        for bad in [
            "",
            "vouch_",
            "Bearer x",
            "vouch_zz",
            &format!("vouch_{}", "ab".repeat(31)),
            &format!("vouch_0123456789ab_{}", "g".repeat(64)),
            &format!("vouch_0123456789a_{}", "a".repeat(64)),
            &format!("vouch_0123456789ab_{}_", "a".repeat(64)),
        ] {
            assert_eq!(token_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn roles_are_ordered_and_parse_their_names() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn operator_names_are_plain() {
        for ok in ["alice", "a", "ops-1", "bob@example.com", "x.y_z"] {
            assert!(valid_operator_name(ok), "{ok}");
        }
        for bad in ["", "-a", "<script>", "a b", "a'b", &"a".repeat(65), "ä"] {
            assert!(!valid_operator_name(bad), "{bad}");
        }
    }
}
