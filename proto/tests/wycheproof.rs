//! Wycheproof vectors against the primitives as the protocol uses them
//! (SPEC.md §3): Ed25519 through `keys::PublicKey::verify_strict` (§3.4),
//! X25519 with the all-zero check of §3.2 (also through the handshake
//! machines), and ChaCha20-Poly1305 (RFC 8439), including the record layer's
//! nonce and AAD (§7.2).
//!
//! Every test asserts the exact expected outcome of every vector and prints
//! its counts (`cargo test -p vouch-proto --test wycheproof -- --nocapture`).

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use ed25519_dalek::Verifier as _;
use vouch_proto::handshake::backend::open_hello;
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake, PeripheralTicket};
use vouch_proto::keys::{DhPublic, KeyId, PublicKey, Signature};
use vouch_proto::testing::Pair;
use vouch_proto::wire::{
    Hello, Message, Response, ResumeResponse, SealedIdentity, Suite, MAX_MESSAGE, MAX_VOUCH_LEN,
};
use vouch_proto::{Error, PeerMisbehaved};
use wycheproof::TestResult;

/// What the protocol's verifier says about one Ed25519 vector: `None` when the
/// inputs cannot even be represented (a public key that is not a point, a
/// signature that is not 64 bytes); those are rejections too.
fn protocol_verify(pk: &[u8], msg: &[u8], sig: &[u8]) -> Option<bool> {
    let key = PublicKey::from_bytes(pk.try_into().ok()?)?;
    let sig = Signature(sig.try_into().ok()?);
    Some(key.verify_strict(msg, &sig))
}

/// ed25519-dalek's lenient `verify` (RFC 8032 without the small-order checks),
/// to explain any difference.
fn dalek_lenient_verify(pk: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    let (Ok(pk), Ok(sig)) = (<[u8; 32]>::try_from(pk), <[u8; 64]>::try_from(sig)) else {
        return false;
    };
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&pk) else {
        return false;
    };
    vk.verify(msg, &ed25519_dalek::Signature::from_bytes(&sig))
        .is_ok()
}

#[test]
fn ed25519_verify_strict_accepts_exactly_the_valid_vectors() {
    let set = wycheproof::eddsa::TestSet::load(wycheproof::eddsa::TestName::Ed25519).unwrap();
    let (mut valid_ok, mut invalid_rejected, mut unrepresentable) = (0, 0, 0);
    let (mut acceptable_ok, mut acceptable_rejected) = (Vec::new(), Vec::new());
    let mut valid_rejected = Vec::new();
    let mut invalid_accepted = Vec::new();
    let mut strict_only = Vec::new();
    let mut total = 0;
    for group in &set.test_groups {
        let pk: &[u8] = &group.key.pk;
        for t in &group.tests {
            total += 1;
            let verdict = protocol_verify(pk, &t.msg, &t.sig);
            let accepted = verdict == Some(true);
            if verdict.is_none() {
                unrepresentable += 1;
            }
            if !accepted && dalek_lenient_verify(pk, &t.msg, &t.sig) {
                strict_only.push((t.tc_id, t.comment.clone()));
            }
            match (t.result, accepted) {
                (TestResult::Valid, true) => valid_ok += 1,
                (TestResult::Valid, false) => valid_rejected.push((t.tc_id, t.comment.clone())),
                (TestResult::Invalid, false) => invalid_rejected += 1,
                (TestResult::Invalid, true) => {
                    invalid_accepted.push((t.tc_id, t.comment.clone()));
                }
                (TestResult::Acceptable, true) => acceptable_ok.push(t.tc_id),
                (TestResult::Acceptable, false) => acceptable_rejected.push(t.tc_id),
            }
        }
    }
    println!(
        "Ed25519 (Wycheproof, {total} vectors): valid accepted {valid_ok}, invalid rejected \
         {invalid_rejected} ({unrepresentable} not representable: wrong-length signature or \
         key), acceptable accepted {acceptable_ok:?}, acceptable rejected \
         {acceptable_rejected:?}; rejected by verify_strict but accepted by dalek's lenient \
         verify: {strict_only:?}"
    );
    assert_eq!(total, set.number_of_tests);
    assert!(
        valid_rejected.is_empty(),
        "valid vectors rejected: {valid_rejected:?}"
    );
    assert!(
        invalid_accepted.is_empty(),
        "invalid vectors accepted: {invalid_accepted:?}"
    );
    // The set this crate version ships: 88 valid, 63 invalid, none acceptable.
    // If an update adds acceptable vectors, decide and pin their outcome here.
    assert_eq!((valid_ok, invalid_rejected), (88, 63));
    assert!(acceptable_ok.is_empty() && acceptable_rejected.is_empty());
}

/// The §2.1/§3.4 rules beyond RFC 8032 that Wycheproof's Ed25519 set does
/// not exercise: a small-order public key is refused (it cannot even be held
/// as a `PublicKey`), although the lenient verifier accepts its "signatures".
#[test]
fn ed25519_small_order_key_and_r_are_refused() {
    // The identity point (order 1) as both A and R, with S = 0: [0]B - [k]A
    // is the identity, which encodes to R, for every message.
    let identity = {
        let mut b = [0u8; 32];
        b[0] = 1;
        b
    };
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&identity);
    assert_eq!(
        PublicKey::from_bytes(identity),
        None,
        "a small-order key is no identity"
    );
    for msg in [&b""[..], b"vouch", &[0xff; 100]] {
        assert!(dalek_lenient_verify(&identity, msg, &sig));
        assert_eq!(protocol_verify(&identity, msg, &sig), None);
    }
}

/// The shares whose X25519 result is all zeros, with the private key of the
/// vector.
fn zero_shared_vectors() -> Vec<(usize, [u8; 32], [u8; 32])> {
    let set = wycheproof::xdh::TestSet::load(wycheproof::xdh::TestName::X25519).unwrap();
    let mut out = Vec::new();
    for group in &set.test_groups {
        for t in &group.tests {
            if t.shared_secret.iter().all(|&b| b == 0) {
                out.push((
                    t.tc_id,
                    t.private_key.as_slice().try_into().unwrap(),
                    t.public_key.as_slice().try_into().unwrap(),
                ));
            }
        }
    }
    out
}

#[test]
fn x25519_matches_every_vector_and_the_zero_check_rejects_low_order_shares() {
    use wycheproof::xdh::TestFlag;
    let set = wycheproof::xdh::TestSet::load(wycheproof::xdh::TestName::X25519).unwrap();
    let (mut valid, mut invalid) = (0, 0);
    let (mut acceptable_contributory, mut acceptable_zero) = (0, 0);
    let mut total = 0;
    for group in &set.test_groups {
        assert_eq!(group.curve, wycheproof::MontgomeryCurve::X25519);
        for t in &group.tests {
            total += 1;
            let sk: [u8; 32] = t.private_key.as_slice().try_into().unwrap();
            let pk: [u8; 32] = t.public_key.as_slice().try_into().unwrap();
            let expected: &[u8] = &t.shared_secret;
            let shared = x25519_dalek::x25519(sk, pk);
            // The protocol's rule (SPEC.md §3.2): the result must be contributory.
            let ss = x25519_dalek::StaticSecret::from(sk)
                .diffie_hellman(&x25519_dalek::PublicKey::from(pk));
            assert_eq!(ss.as_bytes(), &shared, "tcId {}", t.tc_id);
            let zero = shared == [0u8; 32];
            assert_eq!(ss.was_contributory(), !zero, "tcId {}", t.tc_id);
            assert_eq!(
                t.flags.contains(&TestFlag::ZeroSharedSecret),
                zero,
                "tcId {}",
                t.tc_id
            );
            match t.result {
                TestResult::Valid => {
                    assert_eq!(&shared[..], expected, "valid tcId {}", t.tc_id);
                    assert!(!zero, "a valid vector with an all-zero result: {}", t.tc_id);
                    valid += 1;
                }
                // Acceptable: twist points, non-canonical and low-order shares.
                // X25519 computes the RFC 7748 result for all of them; the
                // protocol then refuses exactly the all-zero ones.
                TestResult::Acceptable => {
                    assert_eq!(&shared[..], expected, "acceptable tcId {}", t.tc_id);
                    if zero {
                        acceptable_zero += 1;
                    } else {
                        acceptable_contributory += 1;
                    }
                }
                TestResult::Invalid => {
                    assert_ne!(&shared[..], expected, "invalid tcId {}", t.tc_id);
                    invalid += 1;
                }
            }
        }
    }
    println!(
        "X25519 (Wycheproof, {total} vectors): valid {valid} computed exactly; acceptable \
         {acceptable_contributory} computed exactly and used, {acceptable_zero} computed \
         exactly (all zeros) and refused as non-contributory; invalid {invalid}"
    );
    assert_eq!(total, set.number_of_tests);
    assert_eq!(
        (valid, acceptable_contributory, acceptable_zero, invalid),
        (264, 223, 31, 0)
    );
}

/// Every low-order share of Wycheproof fails the handshake where the protocol
/// meets a peer's X25519 share: the backend opening a Hello, the peripheral
/// taking a Response and a ResumeResponse.
#[test]
fn low_order_shares_fail_every_handshake_step() {
    let vectors = zero_shared_vectors();
    assert_eq!(vectors.len(), 31);
    let mut pair = Pair::new(11);
    let (p, _g) = pair.full_handshake().unwrap();
    let ticket = postcard::to_allocvec(&p.ticket).unwrap();
    let weak = Err(Error::PeerMisbehaved(PeerMisbehaved::WeakKeyShare));
    for (tc_id, _sk, share) in vectors {
        let share = DhPublic(share);

        // The backend opening a Hello with e_P low order.
        let hello = Message::Hello(Hello {
            suite: Suite::Ed25519X25519ChaCha20Poly1305,
            anchor: pair.backend.kid(),
            ephemeral: share,
            sealed: SealedIdentity([0x5a; 72]),
        })
        .to_vec();
        assert_eq!(
            open_hello(&hello, &pair.backend).map(|_| ()),
            weak,
            "tcId {tc_id}"
        );

        // The peripheral taking a Response with e_G low order.
        let mut p = pair.start_peripheral().unwrap();
        let response = Message::Response(Response {
            ephemeral: share,
            sealed_vouch: &[0x5a; MAX_VOUCH_LEN],
        })
        .to_vec();
        assert_eq!(p.handle_input(pair.now, &response), weak, "tcId {tc_id}");
        assert!(!p.is_established());

        // The peripheral taking a ResumeResponse with a low-order share.
        let t: PeripheralTicket = postcard::from_bytes(&ticket).unwrap();
        let mut p = PeripheralHandshake::resume(
            &PeripheralConfig::default(),
            &t,
            &pair.anchors,
            pair.now,
            &mut pair.rng,
        )
        .unwrap();
        let rr = Message::ResumeResponse(ResumeResponse {
            ephemeral: share,
            confirm: vouch_proto::wire::Mac16([0x5a; 16]),
        })
        .to_vec();
        assert_eq!(p.handle_input(pair.now, &rr), weak, "tcId {tc_id}");
        assert!(!p.is_established());
    }
    // A hello naming another backend key is refused before any DH.
    let hello = Message::Hello(Hello {
        suite: Suite::Ed25519X25519ChaCha20Poly1305,
        anchor: KeyId(pair.backend.kid().0.wrapping_add(1)),
        ephemeral: DhPublic([0; 32]),
        sealed: SealedIdentity([0; 72]),
    })
    .to_vec();
    assert_eq!(
        open_hello(&hello, &pair.backend).map(|_| ()),
        Err(PeerMisbehaved::UnknownBackendKey.into())
    );
}

/// The outcome of one ChaCha20-Poly1305 vector.
#[derive(Debug, PartialEq, Eq)]
enum AeadOutcome {
    /// Encryption gave the expected ciphertext and tag, and decryption the
    /// plaintext.
    Matches,
    /// Decryption refused the ciphertext and tag.
    Refused,
    /// The nonce is not 96 bits: ChaCha20-Poly1305 (RFC 8439) has no such
    /// instance, and the type does not accept it.
    UnsupportedNonce,
}

fn chacha20poly1305_outcome(t: &wycheproof::aead::Test) -> AeadOutcome {
    let key: [u8; 32] = t.key.as_slice().try_into().unwrap();
    let Ok(nonce) = <[u8; 12]>::try_from(t.nonce.as_slice()) else {
        return AeadOutcome::UnsupportedNonce;
    };
    let tag: [u8; 16] = t.tag.as_slice().try_into().unwrap();
    let cipher = ChaCha20Poly1305::new(&key.into());

    let mut opened = t.ct.to_vec();
    let ok = cipher
        .decrypt_inout_detached(
            &nonce.into(),
            &t.aad,
            opened.as_mut_slice().into(),
            &tag.into(),
        )
        .is_ok();
    if !ok {
        return AeadOutcome::Refused;
    }
    assert_eq!(opened, t.pt.as_slice(), "tcId {}", t.tc_id);
    let mut sealed = t.pt.to_vec();
    let got_tag = cipher
        .encrypt_inout_detached(&nonce.into(), &t.aad, sealed.as_mut_slice().into())
        .unwrap();
    assert_eq!(sealed, t.ct.as_slice(), "tcId {}", t.tc_id);
    assert_eq!(got_tag.as_slice(), &tag, "tcId {}", t.tc_id);
    AeadOutcome::Matches
}

#[test]
fn chacha20poly1305_matches_valid_and_refuses_invalid_vectors() {
    let set =
        wycheproof::aead::TestSet::load(wycheproof::aead::TestName::ChaCha20Poly1305).unwrap();
    let (mut valid, mut refused, mut bad_nonce) = (0, 0, 0);
    let mut total = 0;
    for group in &set.test_groups {
        assert_eq!((group.key_size, group.tag_size), (256, 128));
        for t in &group.tests {
            total += 1;
            let outcome = chacha20poly1305_outcome(t);
            match t.result {
                TestResult::Valid => {
                    assert_eq!(outcome, AeadOutcome::Matches, "valid tcId {}", t.tc_id);
                    valid += 1;
                }
                TestResult::Invalid => match outcome {
                    AeadOutcome::Refused => refused += 1,
                    AeadOutcome::UnsupportedNonce => {
                        assert_ne!(group.nonce_size, 96);
                        bad_nonce += 1;
                    }
                    AeadOutcome::Matches => panic!("invalid tcId {} accepted", t.tc_id),
                },
                TestResult::Acceptable => panic!("no acceptable AEAD vectors expected"),
            }
        }
    }
    println!(
        "ChaCha20-Poly1305 (Wycheproof, {total} vectors): valid {valid} matched; invalid \
         {refused} refused by the tag check, {bad_nonce} with a nonce that is not 96 bits \
         (not representable)"
    );
    assert_eq!(total, set.number_of_tests);
    assert_eq!((valid, refused, bad_nonce), (256, 60, 9));
}

/// The record layer is RFC 8439 ChaCha20-Poly1305 with the nonce and AAD of
/// SPEC.md §7.2: nonce `0^32 ‖ counter (LE64)`, AAD `version ‖ 5 ‖ counter
/// (LE64)`, plaintext `content type ‖ content`. Checked with the AEAD crate
/// directly on records the session seals, across a rekey.
#[test]
fn session_records_are_rfc8439_with_the_spec_nonce_and_aad() {
    let mut pair = Pair::new(12);
    let (mut p, _g) = pair.full_handshake().unwrap();
    let now = pair.now;
    for round in 0..3 {
        let payload = [round as u8; 40];
        let (send_key, _) = p.session.danger_export_keys();
        let mut buf = [0u8; MAX_MESSAGE];
        let n = p.session.seal_data(now, &payload, &mut buf).unwrap();
        let Ok(Message::Record(rec)) = Message::decode(&buf[..n]) else {
            panic!("not a record");
        };
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&rec.counter.to_le_bytes());
        let mut aad = vec![1u8, 5];
        aad.extend_from_slice(&rec.counter.to_le_bytes());
        let (ct, tag) = rec.sealed.split_at(rec.sealed.len() - 16);
        let tag: [u8; 16] = tag.try_into().unwrap();
        let mut plain = ct.to_vec();
        ChaCha20Poly1305::new(&send_key.into())
            .decrypt_inout_detached(
                &nonce.into(),
                &aad,
                plain.as_mut_slice().into(),
                &tag.into(),
            )
            .unwrap();
        assert_eq!(plain[0], 0, "content type Data");
        assert_eq!(&plain[1..], &payload);
        // A wrong AAD (the counter as the varint on the air) must not open.
        let mut wrong = ct.to_vec();
        let mut bad_aad = vec![1u8, 5];
        bad_aad.extend_from_slice(&buf[2..3]);
        assert!(ChaCha20Poly1305::new(&send_key.into())
            .decrypt_inout_detached(
                &nonce.into(),
                &bad_aad,
                wrong.as_mut_slice().into(),
                &tag.into()
            )
            .is_err());
        if round == 1 {
            assert_eq!(rec.counter >> 32, 0);
            p.session.rekey().unwrap();
        }
        if round == 2 {
            assert_eq!(rec.counter >> 32, 1, "the rekeyed record is in epoch 1");
        }
    }
}
