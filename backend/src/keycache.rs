//! Enrolled keys kept decoded (issue 21).
//!
//! Every vouch reads a gateway's and a peripheral's public key from the
//! store and verifies a signature with the peripheral's: each read checks
//! the key (a valid point, not of small order: a decompression), and each
//! verification decompresses it again. Both depend on the key's 32 bytes
//! alone, so this cache keeps their result by those bytes: a key is parsed
//! and decoded once, then looked up. What a key may do (its status, its
//! policy) is still read from the store at every request: only the pure
//! function of the bytes is cached, so nothing here can go stale.
//!
//! Bounded: when it holds its capacity, it starts again empty (an
//! enrolled fleet larger than the capacity decodes as if there were no
//! cache, never worse). Capacity 0 turns it off.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use vouch_proto::handshake::hello_signature::DecodedKey;
use vouch_proto::keys::PublicKey;

/// Decoded keys by their bytes. Cheap to share behind an `Arc`. Its
/// `Debug` says how full it is, never which keys it holds.
pub struct KeyCache {
    capacity: AtomicUsize,
    keys: Mutex<HashMap<[u8; 32], Entry>>,
}

/// One valid key: the parsed public key and its decoded point.
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: PublicKey,
    decoded: DecodedKey,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // try_lock: a Debug print never waits for (or blocks) a vouch.
        let held = self.keys.try_lock().map(|k| k.len()).ok();
        f.debug_struct("KeyCache")
            .field("capacity", &self.capacity.load(Ordering::Relaxed))
            .field("held", &held)
            .finish()
    }
}

impl KeyCache {
    /// An empty cache of `capacity` keys (0: off).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: AtomicUsize::new(capacity),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Changes the capacity (0 turns the cache off and empties it).
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
        if capacity == 0 {
            self.lock().clear();
        }
    }

    /// The public key written as 64 hex digits, as the store keeps it:
    /// `None` if it is not a valid one ([`PublicKey::from_bytes`]).
    pub fn public_key_hex(&self, hex: &str) -> Option<PublicKey> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex, &mut bytes).ok()?;
        self.entry(&bytes).map(|e| e.key)
    }

    /// `key` decoded for the hello rule.
    pub fn decoded(&self, key: &PublicKey) -> DecodedKey {
        self.entry(key.as_bytes())
            .map_or_else(|| DecodedKey::new(key), |e| e.decoded)
    }

    fn entry(&self, bytes: &[u8; 32]) -> Option<Entry> {
        let capacity = self.capacity.load(Ordering::Relaxed);
        if capacity == 0 {
            return Self::decode(bytes);
        }
        if let Some(e) = self.lock().get(bytes) {
            return Some(*e);
        }
        let entry = Self::decode(bytes)?;
        let mut keys = self.lock();
        if keys.len() >= capacity {
            keys.clear();
        }
        keys.insert(*bytes, entry);
        Some(entry)
    }

    fn decode(bytes: &[u8; 32]) -> Option<Entry> {
        let key = PublicKey::from_bytes(*bytes)?;
        Some(Entry {
            key,
            decoded: DecodedKey::new(&key),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vouch_proto::keys::IdentityKey;

    #[test]
    fn cached_keys_answer_as_uncached_ones_and_the_cache_stays_bounded() {
        let cache = KeyCache::new(2);
        let off = KeyCache::new(0);
        for seed in 1..=5u8 {
            let key = IdentityKey::from_seed(&[seed; 32]).public_key();
            let hex = key.to_string();
            for c in [&cache, &off] {
                assert_eq!(c.public_key_hex(&hex), Some(key));
                assert_eq!(c.decoded(&key).as_bytes(), key.as_bytes());
                assert!(c.decoded(&key).is_strict());
            }
            assert!(cache.lock().len() <= 2);
        }
        assert!(off.lock().is_empty());
        // Not a point, a small-order point, not hex: refused either way.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        for bad in [hex::encode(identity), "zz".repeat(32), "00".into()] {
            assert_eq!(cache.public_key_hex(&bad), None);
            assert_eq!(off.public_key_hex(&bad), None);
        }
    }
}
