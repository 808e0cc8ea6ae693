//! Batch verification of hello signatures (SPEC.md §5.3) gives, item by item,
//! exactly the answers of single strict verification, whatever mix of good
//! and bad signatures a batch holds.

use proptest::prelude::*;
use vouch_proto::anchor::AnchorSet;
use vouch_proto::handshake::backend::{open_hello, verify_batch, BackendKeys, OpenedHello};
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake};
use vouch_proto::keys::{IdentityKey, KeyId, PeripheralId, PublicKey};
use vouch_proto::testing::rng;
use vouch_proto::wire::MAX_HANDSHAKE_MESSAGE;
use vouch_proto::Timestamp;

struct Fleet {
    backend: BackendKeys,
    devices: Vec<(IdentityKey, PeripheralId)>,
}

impl Fleet {
    fn new(n: u8) -> Self {
        let mut r = rng(1);
        let backend = BackendKeys::generate(KeyId(1), &mut r);
        let devices = (0..n)
            .map(|i| {
                let key = IdentityKey::from_seed(&[i; 32]);
                let id = PeripheralId::derive(&key.public_key());
                (key, id)
            })
            .collect();
        Self { backend, devices }
    }

    /// A fresh hello from device `i`, opened by the backend.
    fn opened(&self, i: usize, seed: u64) -> OpenedHello {
        let (key, id) = &self.devices[i];
        // The commitment plays no part in a Hello.
        let anchors = AnchorSet::new(self.backend.anchor(), self.backend.anchor().digest(), 0);
        let mut p = PeripheralHandshake::start(
            &PeripheralConfig::default(),
            *id,
            key,
            &anchors,
            Timestamp(0),
            &mut rng(seed),
        )
        .unwrap();
        let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
        let n = p.poll_transmit(&mut buf).unwrap();
        open_hello(&buf[..n], &self.backend).unwrap()
    }

    fn key(&self, i: usize) -> PublicKey {
        self.devices[i].0.public_key()
    }
}

/// The batch's answers as (claimed id, accepted), against single verification.
fn compare(fleet: &Fleet, keys_of: &[usize]) -> Vec<(PeripheralId, bool)> {
    let keys: Vec<PublicKey> = keys_of.iter().map(|&k| fleet.key(k)).collect();
    let singles: Vec<bool> = (0..keys_of.len())
        .map(|i| fleet.opened(i, i as u64).verify(&keys[i]).is_ok())
        .collect();
    let batch = verify_batch(
        (0..keys_of.len())
            .map(|i| (fleet.opened(i, i as u64), &keys[i]))
            .collect(),
    );
    assert_eq!(batch.len(), keys_of.len());
    let answers: Vec<(PeripheralId, bool)> = batch
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            if let Ok(v) = &v {
                assert_eq!(v.peripheral(), fleet.devices[i].1);
            }
            (fleet.devices[i].1, v.is_ok())
        })
        .collect();
    let accepted: Vec<bool> = answers.iter().map(|a| a.1).collect();
    assert_eq!(accepted, singles, "batch and single verification disagree");
    answers
}

#[test]
fn a_batch_of_good_signatures_is_accepted_whole() {
    let fleet = Fleet::new(32);
    let answers = compare(&fleet, &(0..32).collect::<Vec<_>>());
    assert!(answers.iter().all(|a| a.1));
}

#[test]
fn one_wrong_key_refuses_only_its_own_hello() {
    let fleet = Fleet::new(32);
    let mut keys: Vec<usize> = (0..32).collect();
    keys[17] = 3; // hello 17 checked against device 3's key
    let answers = compare(&fleet, &keys);
    for (i, (_, ok)) in answers.iter().enumerate() {
        assert_eq!(*ok, i != 17, "item {i}");
    }
}

#[test]
fn a_tampered_signature_is_refused_and_its_neighbours_kept() {
    let fleet = Fleet::new(4);
    let keys: Vec<PublicKey> = (0..4).map(|i| fleet.key(i)).collect();
    // Hello 1 verified against a statement signed by device 1 for another
    // handshake: the signature is genuine, but not over this hello.
    let mut items: Vec<(OpenedHello, &PublicKey)> = (0..4)
        .map(|i| (fleet.opened(i, 100 + i as u64), &keys[i]))
        .collect();
    let other = fleet.opened(1, 999);
    items[1] = (other, &keys[2]);
    let answers: Vec<bool> = verify_batch(items).iter().map(Result::is_ok).collect();
    assert_eq!(answers, [true, false, true, true]);
}

#[test]
fn empty_and_single_batches_answer_like_single_verification() {
    let fleet = Fleet::new(2);
    assert!(verify_batch(Vec::new()).is_empty());
    let k0 = fleet.key(0);
    let k1 = fleet.key(1);
    assert!(verify_batch(vec![(fleet.opened(0, 5), &k0)])[0].is_ok());
    assert!(verify_batch(vec![(fleet.opened(0, 5), &k1)])[0].is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any mix of right and wrong keys: the batch answers each item as
    /// single strict verification does.
    #[test]
    fn batch_answers_match_single_verification(wrong in proptest::collection::vec(proptest::option::weighted(0.2, 0usize..8), 1..12)) {
        let fleet = Fleet::new(12);
        let keys: Vec<usize> = wrong
            .iter()
            .enumerate()
            .map(|(i, w)| w.map_or(i, |k| if k == i { (k + 1) % 8 } else { k }))
            .collect();
        let answers = compare(&fleet, &keys);
        for (i, (_, ok)) in answers.iter().enumerate() {
            prop_assert_eq!(*ok, keys[i] == i);
        }
    }
}
