//! Batch verification of hello signatures (SPEC.md §5.3 step 6) gives, item
//! by item, exactly the answers of single verification (the hello rule of
//! SPEC.md §3.4: cofactored, with the strict encoding checks), whatever mix
//! of good and bad signatures a batch holds, adversarial ones included:
//! signatures made with the private key whose `R` or key carries a
//! small-order component (accepted alone and in a batch), small-order,
//! non-canonical or wrong `R`, `S ≥ L`, non-canonical keys (refused alone
//! and in a batch). The rule itself is checked against ed25519-zebra, an
//! implementation of ZIP-215.

use curve25519_dalek::constants::EIGHT_TORSION;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
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

/// A hello made by [`Fleet::forged`]: the message, the key it is checked
/// against, and the statement and signature inside it.
struct Made {
    hello: Vec<u8>,
    key: PublicKey,
    statement: Vec<u8>,
    signature: [u8; 64],
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

    /// A fresh hello from device `i` as its peripheral machine sends it.
    fn hello(&self, i: usize, seed: u64) -> Vec<u8> {
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
        buf[..n].to_vec()
    }

    /// A fresh hello from device `i`, opened by the backend.
    fn opened(&self, i: usize, seed: u64) -> OpenedHello {
        open_hello(&self.hello(i, seed), &self.backend).unwrap()
    }

    fn key(&self, i: usize) -> PublicKey {
        self.devices[i].0.public_key()
    }

    /// A fresh hello from device `i`, its sealed signature replaced by the
    /// one `forge` makes with the device's private key. ChaCha20 without a
    /// tag lets the test swap the plaintext: the keystream is the sealed
    /// bytes XOR the honest plaintext, and Ed25519 signatures are
    /// deterministic.
    fn forged(&self, i: usize, seed: u64, forge: Forgery) -> Made {
        let (key, id) = &self.devices[i];
        let mut hello = self.hello(i, seed);
        // SPEC.md §5.1 step 3.
        let mut statement = b"vouch/1 hello signature".to_vec();
        statement.extend_from_slice(&hello[..36]);
        statement.extend_from_slice(self.backend.anchor().sealing.as_bytes());
        statement.extend_from_slice(&id.0);
        let honest = key.sign(&statement).0;
        let (signature, key) = forge.apply(&Signer::of(i), &statement, &key.public_key());
        for (k, b) in hello[36 + 8..].iter_mut().enumerate() {
            *b ^= honest[k] ^ signature[k];
        }
        Made {
            hello,
            key,
            statement,
            signature,
        }
    }
}

/// Device `i`'s private key as RFC 8032 §5.1.5 expands it: the secret
/// scalar and the prefix the nonce is hashed from.
struct Signer {
    a: Scalar,
    prefix: [u8; 32],
}

impl Signer {
    fn of(i: usize) -> Self {
        let h: [u8; 64] = Sha512::digest([i as u8; 32]).into();
        let mut a = [0u8; 32];
        a.copy_from_slice(&h[..32]);
        a[0] &= 248;
        a[31] &= 127;
        a[31] |= 64;
        let mut prefix = [0u8; 32];
        prefix.copy_from_slice(&h[32..]);
        Self {
            a: Scalar::from_bytes_mod_order(a),
            prefix,
        }
    }

    /// The nonce an honest signature over `m` uses.
    fn nonce(&self, m: &[u8]) -> Scalar {
        Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(self.prefix)
                .chain_update(m)
                .finalize()
                .into(),
        )
    }

    /// `R ‖ S` with `S = r + k·a`, `k = H(R ‖ A ‖ M)` over the encodings given.
    fn sign_with(&self, r: Scalar, r_bytes: [u8; 32], a_bytes: &[u8; 32], m: &[u8]) -> [u8; 64] {
        let k = hram(&r_bytes, a_bytes, m);
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r_bytes);
        sig[32..].copy_from_slice((r + k * self.a).as_bytes());
        sig
    }
}

fn hram(r: &[u8; 32], a: &[u8; 32], m: &[u8]) -> Scalar {
    Scalar::from_bytes_mod_order_wide(
        &Sha512::new()
            .chain_update(r)
            .chain_update(a)
            .chain_update(m)
            .finalize()
            .into(),
    )
}

fn point(bytes: &[u8; 32]) -> EdwardsPoint {
    CompressedEdwardsY(*bytes).decompress().unwrap()
}

/// How a test signature, and the key it is checked against, are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forgery {
    /// The honest signature.
    Honest,
    /// `R` = the honest `[r]B` plus `EIGHT_TORSION[t]` (of order 8 for odd
    /// `t`, 4 for `t` = 2, 6, and 2 for `t` = 4), `S` made for it: meets the
    /// cofactored equation, misses the cofactorless one by the small-order
    /// point. Accepted.
    TorsionedR(usize),
    /// The key `A + EIGHT_TORSION[t]`, signed with `a`: as above for the
    /// key. Accepted.
    TorsionedA(usize),
    /// `R` a small-order point given by its encoding, `S = k·a`: meets the
    /// cofactored equation (`[8]R` vanishes), and for the identity the
    /// cofactorless one exactly. Refused (rule 3).
    SmallOrderR(usize),
    /// The honest signature with `R` replaced by a non-canonical encoding
    /// (y = p + 5) of a point of large order. Refused.
    NonCanonicalR,
    /// The honest signature, checked against a non-canonical key. Refused.
    NonCanonicalA,
    /// The honest signature with `S + L`: the same scalar, refused by rule 1.
    SPlusL,
    /// A signature by the right key over another statement. Refused.
    WrongMessage,
}

impl Forgery {
    /// What the hello rule answers.
    fn accepted(self) -> bool {
        matches!(
            self,
            Forgery::Honest | Forgery::TorsionedR(_) | Forgery::TorsionedA(_)
        )
    }

    fn apply(self, signer: &Signer, m: &[u8], key: &PublicKey) -> ([u8; 64], PublicKey) {
        let a_bytes = key.as_bytes();
        let r = signer.nonce(m);
        let honest_r = EdwardsPoint::mul_base(&r);
        let honest = signer.sign_with(r, honest_r.compress().to_bytes(), a_bytes, m);
        match self {
            Forgery::Honest => (honest, *key),
            Forgery::TorsionedR(t) => {
                let r_bytes = (honest_r + EIGHT_TORSION[t]).compress().to_bytes();
                (signer.sign_with(r, r_bytes, a_bytes, m), *key)
            }
            Forgery::TorsionedA(t) => {
                let a_t = (point(a_bytes) + EIGHT_TORSION[t]).compress().to_bytes();
                let sig = signer.sign_with(r, honest_r.compress().to_bytes(), &a_t, m);
                (sig, PublicKey::from_bytes(a_t).unwrap())
            }
            Forgery::SmallOrderR(k) => (
                signer.sign_with(Scalar::ZERO, SMALL_ORDER_R[k], a_bytes, m),
                *key,
            ),
            Forgery::NonCanonicalR => {
                let mut sig = honest;
                sig[..32].copy_from_slice(&NON_CANONICAL_Y5);
                (sig, *key)
            }
            Forgery::NonCanonicalA => (honest, non_canonical_key()),
            Forgery::SPlusL => {
                let mut sig = honest;
                let mut carry = 0u16;
                for (s, l) in sig[32..].iter_mut().zip(L) {
                    let t = u16::from(*s) + u16::from(l) + carry;
                    *s = t as u8;
                    carry = t >> 8;
                }
                (sig, *key)
            }
            Forgery::WrongMessage => {
                let mut other = m.to_vec();
                *other.last_mut().unwrap() ^= 1;
                let r = signer.nonce(&other);
                let r_bytes = EdwardsPoint::mul_base(&r).compress().to_bytes();
                (signer.sign_with(r, r_bytes, a_bytes, &other), *key)
            }
        }
    }
}

/// The group order L, little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

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

/// y = p + 5: a point of large order, encoded with `y ≥ p`.
const NON_CANONICAL_Y5: [u8; 32] =
    hex32("f2ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f");

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

/// A key encoded with `y ≥ p` (here y = p + 5, `f2ff…ff7f`): the point
/// decodes, but SPEC.md §2.1 and §3.4 rule 2 require the canonical encoding.
fn non_canonical_key() -> PublicKey {
    PublicKey::from_bytes(NON_CANONICAL_Y5)
        .expect("y = 5 is on the curve, and decoding reduces y mod p")
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

/// The forged signatures are what they claim: each meets the equation its
/// variant says, and ed25519-dalek's `verify_strict` (the cofactorless
/// strict rule, which every other signature of the protocol is verified
/// with) refuses each one but the honest.
#[test]
fn forgeries_meet_the_equations_they_claim() {
    use ed25519_dalek::Verifier;
    let fleet = Fleet::new(1);
    let strict = |made: &Made| {
        ed25519_dalek::VerifyingKey::from_bytes(made.key.as_bytes())
            .unwrap()
            .verify_strict(
                &made.statement,
                &ed25519_dalek::Signature::from_bytes(&made.signature),
            )
            .is_ok()
    };
    // The honest forgery is the device's own signature.
    let honest = fleet.forged(0, 7, Forgery::Honest);
    assert!(fleet.opened(0, 7).verify(&fleet.key(0)).is_ok());
    assert_eq!(
        honest.signature,
        fleet.devices[0].0.sign(&honest.statement).0
    );
    assert!(strict(&honest));
    for t in 1..8 {
        for f in [Forgery::TorsionedR(t), Forgery::TorsionedA(t)] {
            let made = fleet.forged(0, 7, f);
            let r: [u8; 32] = made.signature[..32].try_into().unwrap();
            let a = made.key.as_bytes();
            let k = hram(&r, a, &made.statement);
            let s = Scalar::from_canonical_bytes(made.signature[32..].try_into().unwrap()).unwrap();
            // [S]B − [k]A − R: exactly −T for a torsioned R, −[k]T for a
            // torsioned key (zero when the order of T divides k).
            let miss = EdwardsPoint::mul_base(&s) - k * point(a) - point(&r);
            assert!(miss.mul_by_cofactor().is_identity(), "{f:?}");
            assert_eq!(strict(&made), miss.is_identity(), "{f:?}");
            if let Forgery::TorsionedR(t) = f {
                assert_eq!(miss, -EIGHT_TORSION[t]);
            }
        }
    }
    for (k, r) in SMALL_ORDER_R.iter().enumerate() {
        let made = fleet.forged(0, 7, Forgery::SmallOrderR(k));
        assert!(!strict(&made), "R = {r:02x?}");
    }
    // With R the canonical identity the cofactorless equation holds
    // exactly: a lenient verifier accepts the signature.
    let made = fleet.forged(0, 7, Forgery::SmallOrderR(0));
    let vk = ed25519_dalek::VerifyingKey::from_bytes(made.key.as_bytes()).unwrap();
    assert!(vk
        .verify(
            &made.statement,
            &ed25519_dalek::Signature::from_bytes(&made.signature)
        )
        .is_ok());
    for f in [
        Forgery::NonCanonicalR,
        Forgery::NonCanonicalA,
        Forgery::SPlusL,
        Forgery::WrongMessage,
    ] {
        assert!(!strict(&fleet.forged(0, 7, f)), "{f:?}");
    }
}

/// Every small-order point added to `R` leaves a signature the hello rule
/// accepts, alone and among honest hellos; every small-order `R` (with
/// `S = k·a`, which the cofactored equation accepts, and for the identity
/// the cofactorless one too) is refused, alone and among honest hellos,
/// which keep their answers.
#[test]
fn a_torsioned_r_is_accepted_and_a_small_order_r_refused_alone_and_in_a_batch() {
    let fleet = Fleet::new(8);
    let mut cases: Vec<Forgery> = (1..8).map(Forgery::TorsionedR).collect();
    cases.extend((0..SMALL_ORDER_R.len()).map(Forgery::SmallOrderR));
    for (n, forgery) in cases.into_iter().enumerate() {
        let made: Vec<Made> = (0..8)
            .map(|i| {
                let f = if i == 5 { forgery } else { Forgery::Honest };
                fleet.forged(i, 40 + 8 * n as u64 + i as u64, f)
            })
            .collect();
        let open = |i: usize| open_hello(&made[i].hello, &fleet.backend).unwrap();
        let alone = open(5).verify(&made[5].key).is_ok();
        assert_eq!(alone, forgery.accepted(), "{forgery:?} alone");
        let answers: Vec<bool> = verify_batch((0..8).map(|i| (open(i), &made[i].key)).collect())
            .iter()
            .map(Result::is_ok)
            .collect();
        let expected: Vec<bool> = (0..8).map(|i| i != 5 || forgery.accepted()).collect();
        assert_eq!(answers, expected, "{forgery:?} in a batch of honest hellos");
    }
}

fn forgery() -> impl Strategy<Value = Forgery> {
    prop_oneof![
        3 => Just(Forgery::Honest),
        4 => (1usize..8).prop_map(Forgery::TorsionedR),
        3 => (1usize..8).prop_map(Forgery::TorsionedA),
        3 => (0..SMALL_ORDER_R.len()).prop_map(Forgery::SmallOrderR),
        1 => Just(Forgery::NonCanonicalR),
        1 => Just(Forgery::NonCanonicalA),
        1 => Just(Forgery::SPlusL),
        1 => Just(Forgery::WrongMessage),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any mix of honest and adversarial signatures, with a few honest
    /// hellos beside them: each item's answer in the batch is its answer
    /// alone, and that answer is the hello rule's.
    #[test]
    fn batch_and_single_verification_agree_on_torsioned_and_adversarial_signatures(
        items in proptest::collection::vec(forgery(), 1..12),
        honest in 1usize..4,
        seed in any::<u64>(),
    ) {
        let fleet = Fleet::new(16);
        let forgeries: Vec<Forgery> = items
            .iter()
            .copied()
            .chain(std::iter::repeat_n(Forgery::Honest, honest))
            .collect();
        let made: Vec<Made> = forgeries
            .iter()
            .enumerate()
            .map(|(i, f)| fleet.forged(i, seed.wrapping_add(i as u64), *f))
            .collect();
        let open = |i: usize| open_hello(&made[i].hello, &fleet.backend).unwrap();
        let alone: Vec<bool> = (0..made.len()).map(|i| open(i).verify(&made[i].key).is_ok()).collect();
        let batch: Vec<bool> = verify_batch((0..made.len()).map(|i| (open(i), &made[i].key)).collect())
            .iter()
            .map(Result::is_ok)
            .collect();
        for (i, f) in forgeries.iter().enumerate() {
            prop_assert_eq!(batch[i], alone[i], "batch and single disagree on item {} ({:?})", i, f);
        }
        for (i, f) in forgeries.iter().enumerate() {
            prop_assert_eq!(alone[i], f.accepted(), "item {} ({:?})", i, f);
        }
    }
}

/// ZIP-215 (ed25519-zebra) as the oracle: on every forgery, made by several
/// devices over several hellos, the hello rule accepts exactly what ZIP-215
/// accepts with the strict encoding checks added (`A` and `R` canonical and
/// not of small order). The forgeries cover both sides of the difference:
/// some ZIP-215 accepts and the encoding checks refuse (a small-order or
/// non-canonical `R`), and some ZIP-215 accepts that the cofactorless
/// strict rule refuses (a torsioned `R` or key).
#[test]
fn the_hello_rule_is_zip215_with_the_strict_encoding_checks() {
    let fleet = Fleet::new(4);
    let mut forgeries = vec![
        Forgery::Honest,
        Forgery::NonCanonicalR,
        Forgery::NonCanonicalA,
        Forgery::SPlusL,
        Forgery::WrongMessage,
    ];
    forgeries.extend((1..8).map(Forgery::TorsionedR));
    forgeries.extend((1..8).map(Forgery::TorsionedA));
    forgeries.extend((0..SMALL_ORDER_R.len()).map(Forgery::SmallOrderR));
    let strict_encoding = |bytes: &[u8; 32]| {
        CompressedEdwardsY(*bytes)
            .decompress()
            .is_some_and(|p| p.compress().to_bytes() == *bytes && !p.is_small_order())
    };
    let (mut zip215_only, mut beyond_strict) = (0, 0);
    for device in 0..4 {
        for (n, f) in forgeries.iter().enumerate() {
            let made = fleet.forged(device, 1000 * device as u64 + n as u64, *f);
            let zip215 = ed25519_zebra::VerificationKey::try_from(*made.key.as_bytes())
                .and_then(|vk| {
                    vk.verify(
                        &ed25519_zebra::Signature::from_bytes(&made.signature),
                        &made.statement,
                    )
                })
                .is_ok();
            let r: [u8; 32] = made.signature[..32].try_into().unwrap();
            let expected = zip215 && strict_encoding(made.key.as_bytes()) && strict_encoding(&r);
            let ours = open_hello(&made.hello, &fleet.backend)
                .unwrap()
                .verify(&made.key)
                .is_ok();
            assert_eq!(
                ours, expected,
                "device {device}, {f:?}: ZIP-215 says {zip215}"
            );
            assert_eq!(ours, f.accepted(), "device {device}, {f:?}");
            zip215_only += usize::from(zip215 && !expected);
            let strict =
                ed25519_dalek::VerifyingKey::from_bytes(made.key.as_bytes()).is_ok_and(|vk| {
                    vk.verify_strict(
                        &made.statement,
                        &ed25519_dalek::Signature::from_bytes(&made.signature),
                    )
                    .is_ok()
                });
            beyond_strict += usize::from(ours && !strict);
        }
    }
    assert!(zip215_only >= 4 * SMALL_ORDER_R.len(), "{zip215_only}");
    assert!(beyond_strict >= 4 * 7, "{beyond_strict}");
}
