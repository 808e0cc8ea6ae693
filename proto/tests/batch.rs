//! Batch verification of hello signatures (SPEC.md §5.3) gives, item by item,
//! exactly the answers of single strict verification, whatever mix of good
//! and bad signatures a batch holds, adversarial ones included: signatures
//! made with the private key that meet the batch equation but not the strict
//! rules of SPEC.md §3.4 (small-order or non-canonical `R`, `S ≥ L`), and
//! keys that are not canonically encoded.

use proptest::prelude::*;
use sha2::{Digest, Sha512};
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

    /// A fresh hello from device `i`, its sealed signature replaced by what
    /// `forge` makes of the honest one (given the statement it signs and the
    /// signer's secret scalar). ChaCha20 without a tag lets the test swap
    /// the plaintext: the keystream is the sealed bytes XOR the honest
    /// plaintext, and Ed25519 signatures are deterministic.
    fn forged(&self, i: usize, seed: u64, forge: Forgery) -> Vec<u8> {
        let (key, id) = &self.devices[i];
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
        let mut hello = buf[..n].to_vec();
        // SPEC.md §5.1 step 3.
        let mut statement = b"vouch/1 hello signature".to_vec();
        statement.extend_from_slice(&hello[..36]);
        statement.extend_from_slice(self.backend.anchor().sealing.as_bytes());
        statement.extend_from_slice(&id.0);
        let honest = key.sign(&statement).0;
        let forged = forge.apply(&honest, &statement, &key.public_key(), &secret_scalar(i));
        for (k, b) in hello[36 + 8..].iter_mut().enumerate() {
            *b ^= honest[k] ^ forged[k];
        }
        hello
    }
}

/// The clamped secret scalar of device `i` (RFC 8032 §5.1.5), reduced mod L.
fn secret_scalar(i: usize) -> [u8; 32] {
    let h = Sha512::digest([i as u8; 32]);
    let mut a = [0u8; 32];
    a.copy_from_slice(&h[..32]);
    a[0] &= 248;
    a[31] &= 127;
    a[31] |= 64;
    mod_l(&a)
}

/// The group order L, little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// A little-endian integer mod L, by shift and subtract.
fn mod_l(x: &[u8]) -> [u8; 32] {
    let l = limbs(&L);
    let mut r = [0u64; 5];
    for byte in x.iter().rev() {
        for bit in (0..8).rev() {
            let mut carry = u64::from(byte >> bit & 1);
            for limb in r.iter_mut() {
                let next = *limb >> 63;
                *limb = *limb << 1 | carry;
                carry = next;
            }
            if !lt(&r, &l) {
                let mut borrow = 0u64;
                for (a, b) in r.iter_mut().zip(l) {
                    let (d, b1) = a.overflowing_sub(b);
                    let (d, b2) = d.overflowing_sub(borrow);
                    *a = d;
                    borrow = u64::from(b1 || b2);
                }
            }
        }
    }
    let mut out = [0u8; 32];
    for (k, limb) in r[..4].iter().enumerate() {
        out[8 * k..8 * k + 8].copy_from_slice(&limb.to_le_bytes());
    }
    out
}

fn limbs(x: &[u8; 32]) -> [u64; 5] {
    let mut l = [0u64; 5];
    for (k, chunk) in x.chunks(8).enumerate() {
        l[k] = u64::from_le_bytes(chunk.try_into().unwrap());
    }
    l
}

fn lt(a: &[u64; 5], b: &[u64; 5]) -> bool {
    a.iter().rev().lt(b.iter().rev())
}

/// `a · b mod L`.
fn mul_mod_l(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut p = [0u32; 16];
    for i in 0..8 {
        let ai = u64::from(u32::from_le_bytes(a[4 * i..4 * i + 4].try_into().unwrap()));
        let mut carry = 0u64;
        for j in 0..8 {
            let bj = u64::from(u32::from_le_bytes(b[4 * j..4 * j + 4].try_into().unwrap()));
            let t = u64::from(p[i + j]) + ai * bj + carry;
            p[i + j] = t as u32;
            carry = t >> 32;
        }
        p[i + 8] = carry as u32;
    }
    let bytes: Vec<u8> = p.iter().flat_map(|w| w.to_le_bytes()).collect();
    mod_l(&bytes)
}

/// How a test signature is made from the honest one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forgery {
    /// The honest signature.
    Honest,
    /// `R` a small-order point given by its encoding, `S = k·a` with
    /// `k = H(R ‖ A ‖ M)`: then `[S]B − [k]A` is the identity, so the
    /// cofactorless equation misses by `R` alone (by nothing, for the
    /// identity), and a batch may accept what §3.4 rule 3 refuses.
    SmallOrderR([u8; 32]),
    /// The honest signature with `S + L`: the same point, refused by rule 1.
    SPlusL,
}

/// Encodings of small-order points, canonical and not.
const SMALL_ORDER_R: [[u8; 32]; 7] = [
    // The identity (0, 1), canonical.
    hex32("0100000000000000000000000000000000000000000000000000000000000000"),
    // The identity with y = p + 1 (not canonical).
    hex32("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    // The identity with the sign bit of x = 0 set (not canonical).
    hex32("0100000000000000000000000000000000000000000000000000000000000080"),
    // (0, −1), order 2.
    hex32("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    // An order-4 point (y = 0).
    hex32("0000000000000000000000000000000000000000000000000000000000000000"),
    // Order-8 points.
    hex32("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    hex32("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
];

const fn hex32(s: &str) -> [u8; 32] {
    let b = s.as_bytes();
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = nibble(b[2 * i]) << 4 | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        _ => c - b'a' + 10,
    }
}

impl Forgery {
    fn apply(self, honest: &[u8; 64], m: &[u8], a_pub: &PublicKey, a: &[u8; 32]) -> [u8; 64] {
        let mut sig = *honest;
        match self {
            Forgery::Honest => {}
            Forgery::SmallOrderR(r) => {
                let k = mod_l(
                    &Sha512::new()
                        .chain_update(r)
                        .chain_update(a_pub.as_bytes())
                        .chain_update(m)
                        .finalize(),
                );
                sig[..32].copy_from_slice(&r);
                sig[32..].copy_from_slice(&mul_mod_l(&k, a));
            }
            Forgery::SPlusL => {
                let mut carry = 0u16;
                for (s, l) in sig[32..].iter_mut().zip(L) {
                    let t = u16::from(*s) + u16::from(l) + carry;
                    *s = t as u8;
                    carry = t >> 8;
                }
            }
        }
        sig
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

/// A key encoded with `y ≥ p` (here y = p + 5, `f2ff…ff7f`): the point
/// decodes, but SPEC.md §2.1 and §3.4 rule 2 require the canonical encoding.
fn non_canonical_key() -> PublicKey {
    PublicKey::from_bytes(hex32(
        "f2ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ))
    .expect("y = 5 is on the curve, and decoding reduces y mod p")
}

/// The forged signatures are what they claim: each meets the cofactorless
/// equation up to its small-order `R` (checked with ed25519-dalek's lenient
/// `verify`, which compares `[S]B − [k]A` with `R`'s encoding), and the
/// strict rules refuse each one.
#[test]
fn forged_signatures_are_refused_by_single_strict_verification() {
    let fleet = Fleet::new(1);
    let key = fleet.key(0);
    for r in SMALL_ORDER_R {
        let hello = fleet.forged(0, 7, Forgery::SmallOrderR(r));
        let opened = open_hello(&hello, &fleet.backend).unwrap();
        assert!(opened.verify(&key).is_err(), "R = {r:02x?}");
    }
    // With R the canonical identity the equation holds exactly: a lenient
    // verifier accepts the signature.
    let (id_key, id) = &fleet.devices[0];
    let mut statement = b"vouch/1 hello signature".to_vec();
    let hello = fleet.forged(0, 7, Forgery::SmallOrderR(SMALL_ORDER_R[0]));
    statement.extend_from_slice(&hello[..36]);
    statement.extend_from_slice(fleet.backend.anchor().sealing.as_bytes());
    statement.extend_from_slice(&id.0);
    let honest = id_key.sign(&statement).0;
    let forged =
        Forgery::SmallOrderR(SMALL_ORDER_R[0]).apply(&honest, &statement, &key, &secret_scalar(0));
    let vk = ed25519_dalek::VerifyingKey::from_bytes(key.as_bytes()).unwrap();
    let sig = ed25519_dalek::Signature::from_bytes(&forged);
    assert!(vk.verify_strict(&statement, &sig).is_err());
    use ed25519_dalek::Verifier;
    assert!(vk.verify(&statement, &sig).is_ok());
    let hello = fleet.forged(0, 7, Forgery::SPlusL);
    assert!(open_hello(&hello, &fleet.backend)
        .unwrap()
        .verify(&key)
        .is_err());
    assert!(fleet.opened(0, 7).verify(&non_canonical_key()).is_err());
}

/// The issue-16 case: a hello signed with `R` = the identity and `S = k·a`
/// meets the batch equation exactly; in a batch of honest hellos it must be
/// refused, as single strict verification refuses it. So must the
/// identity's non-canonical encodings, which meet it just as exactly.
#[test]
fn a_small_order_r_signed_by_the_key_holder_is_refused_in_a_batch_of_honest_hellos() {
    let fleet = Fleet::new(8);
    let keys: Vec<PublicKey> = (0..8).map(|i| fleet.key(i)).collect();
    for r in &SMALL_ORDER_R[..3] {
        let items: Vec<(OpenedHello, &PublicKey)> = (0..8)
            .map(|i| {
                let forgery = if i == 5 {
                    Forgery::SmallOrderR(*r)
                } else {
                    Forgery::Honest
                };
                let hello = fleet.forged(i, 40 + i as u64, forgery);
                (open_hello(&hello, &fleet.backend).unwrap(), &keys[i])
            })
            .collect();
        let answers: Vec<bool> = verify_batch(items).iter().map(Result::is_ok).collect();
        let expected: Vec<bool> = (0..8).map(|i| i != 5).collect();
        assert_eq!(answers, expected, "R = {r:02x?}");
    }
}

fn forgery() -> impl Strategy<Value = (Forgery, bool)> {
    let f = prop_oneof![
        4 => Just(Forgery::Honest),
        4 => (0..SMALL_ORDER_R.len()).prop_map(|k| Forgery::SmallOrderR(SMALL_ORDER_R[k])),
        1 => Just(Forgery::SPlusL),
    ];
    // The key checked against: the signer's, or (rarely) a non-canonical one.
    (f, proptest::bool::weighted(0.1))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any mix of honest and adversarial signatures, and of canonical and
    /// non-canonical keys: the batch answers each item exactly as single
    /// strict verification does, and accepts only the honest ones.
    #[test]
    fn batch_answers_match_single_verification_on_adversarial_signatures(
        items in proptest::collection::vec(forgery(), 1..16),
        seed in any::<u64>(),
    ) {
        let fleet = Fleet::new(16);
        let odd = non_canonical_key();
        let keys: Vec<PublicKey> = items
            .iter()
            .enumerate()
            .map(|(i, (_, odd_key))| if *odd_key { odd } else { fleet.key(i) })
            .collect();
        let hellos: Vec<Vec<u8>> = items
            .iter()
            .enumerate()
            .map(|(i, (f, _))| fleet.forged(i, seed.wrapping_add(i as u64), *f))
            .collect();
        let open = |i: usize| open_hello(&hellos[i], &fleet.backend).unwrap();
        let singles: Vec<bool> = (0..items.len()).map(|i| open(i).verify(&keys[i]).is_ok()).collect();
        let batch: Vec<bool> = verify_batch((0..items.len()).map(|i| (open(i), &keys[i])).collect())
            .iter()
            .map(Result::is_ok)
            .collect();
        prop_assert_eq!(&batch, &singles);
        for (i, (f, odd_key)) in items.iter().enumerate() {
            prop_assert_eq!(batch[i], *f == Forgery::Honest && !odd_key, "item {}", i);
        }
    }
}
