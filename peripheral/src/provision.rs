//! Provisioning: the record a factory line feeds to the backend's bulk
//! enrollment, and the checks on what goes into it.
//!
//! The device generates its key ([`FileKeyStore::generate`](crate::keystore::FileKeyStore::generate));
//! only the public half leaves it, as one [`ImportRow`] in the backend's
//! NDJSON import format (`vouch-backend import rows.ndjson`):
//!
//! ```json
//! {"id":"68edde1277fa1ca9","public_key":"2543…559d","group":"meters","attributes":{"site":"plant-1"}}
//! ```
//!
//! The device is then flashed with the backend's anchor bundle
//! (`vouch-backend export-anchor`, installed with
//! [`FileKeyStore::install_bundle`](crate::keystore::FileKeyStore::install_bundle)).

use std::collections::BTreeMap;

use serde::Serialize;
use vouch_proto::keys::{PeripheralId, PublicKey};

/// One row of the backend's NDJSON bulk import (`backend/src/import.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportRow {
    /// The registry id, 16 hex digits.
    pub id: String,
    /// The Ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// The device's group, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Attributes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

impl ImportRow {
    /// The row for a device.
    pub fn new(
        id: PeripheralId,
        public_key: &PublicKey,
        group: Option<String>,
        attributes: BTreeMap<String, String>,
    ) -> Self {
        Self {
            id: id.to_string(),
            public_key: public_key.to_string(),
            group,
            attributes,
        }
    }

    /// The row as one JSON line (no trailing newline).
    pub fn to_json_line(&self) -> String {
        // Strings and a map of strings always serialize.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Why a group or attribute cannot go into an import row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// An attribute is not `NAME=VALUE`.
    #[error("attribute {0:?} is not NAME=VALUE")]
    NotAPair(String),
    /// A name (group or attribute) is empty, longer than 128 characters, or
    /// holds a control character.
    #[error("{0:?} is not a valid name (1 to 128 bytes, no control characters)")]
    BadName(String),
    /// A value is longer than 1024 characters or holds a control character.
    #[error("value of {0:?} is not valid (at most 1024 bytes, no control characters)")]
    BadValue(String),
    /// The same attribute twice.
    #[error("attribute {0:?} given twice")]
    Duplicate(String),
}

/// The backend's rule for names (groups, attribute names).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control)
}

/// The backend's rule for attribute values.
pub fn valid_value(s: &str) -> bool {
    s.len() <= 1024 && !s.chars().any(char::is_control)
}

/// Checks a group name.
pub fn parse_group(s: &str) -> Result<String, RecordError> {
    if valid_name(s) {
        Ok(s.to_string())
    } else {
        Err(RecordError::BadName(s.to_string()))
    }
}

/// Parses `NAME=VALUE` attributes.
pub fn parse_attributes(pairs: &[String]) -> Result<BTreeMap<String, String>, RecordError> {
    let mut out = BTreeMap::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| RecordError::NotAPair(p.clone()))?;
        if !valid_name(k) {
            return Err(RecordError::BadName(k.to_string()));
        }
        if !valid_value(v) {
            return Err(RecordError::BadValue(k.to_string()));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(RecordError::Duplicate(k.to_string()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vouch_proto::keys::IdentityKey;

    #[test]
    fn row_shape_and_attribute_checks() {
        let key = IdentityKey::from_seed(&[5; 32]).public_key();
        let id = PeripheralId::derive(&key);
        let attrs = parse_attributes(&["site=plant 1".into(), "fw=1.2=x".into()]).unwrap();
        let row = ImportRow::new(id, &key, Some("meters".into()), attrs);
        let line = row.to_json_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["id"], id.to_string());
        assert_eq!(v["public_key"], key.to_string());
        assert_eq!(v["group"], "meters");
        assert_eq!(v["attributes"]["fw"], "1.2=x");
        let bare = ImportRow::new(id, &key, None, BTreeMap::new()).to_json_line();
        assert_eq!(
            bare,
            format!("{{\"id\":\"{id}\",\"public_key\":\"{key}\"}}")
        );

        assert_eq!(
            parse_attributes(&["x".into()]),
            Err(RecordError::NotAPair("x".into()))
        );
        assert_eq!(
            parse_attributes(&["=v".into()]),
            Err(RecordError::BadName("".into()))
        );
        assert_eq!(
            parse_attributes(&["a=1".into(), "a=2".into()]),
            Err(RecordError::Duplicate("a".into()))
        );
        assert_eq!(
            parse_attributes(&["a=\u{7}".into()]),
            Err(RecordError::BadValue("a".into()))
        );
        assert!(parse_group("").is_err());
    }
}
