//! Hello signature verification (SPEC.md §3.4, §5.3 step 6), the previous
//! rule beside the current one, in microseconds per signature: alone and in
//! batches of 8, 32 and 64, all valid (the batch's fast path).
//!
//! - `strict`: ed25519-dalek's `verify_strict` (cofactorless) alone, and
//!   `verify_batch` (cofactorless) for the batches; `strict+prechecks` adds
//!   the encoding checks the backend ran before that batch (each key and
//!   `R` decompressed, re-compressed and checked for small order): what
//!   the backend did before the hello rule.
//! - `hello`: `handshake::hello_signature` (cofactored, with the encoding
//!   checks), alone and in one multiscalar multiplication.
//!
//! Each reported time is per signature (a batch's time divided by its size).
//! Run: `cargo bench -p vouch-proto --bench hello_signatures`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use vouch_proto::handshake::hello_signature;
use vouch_proto::keys::{IdentityKey, PublicKey, Signature};

struct Items {
    keys: Vec<PublicKey>,
    messages: Vec<Vec<u8>>,
    signatures: Vec<Signature>,
}

/// `n` devices, each signing a hello-sized statement of its own (the
/// statement of SPEC.md §5.1 step 3 is 99 bytes).
fn items(n: usize) -> Items {
    let mut keys = Vec::new();
    let mut messages = Vec::new();
    let mut signatures = Vec::new();
    for i in 0..n {
        let key = IdentityKey::from_seed(&[i as u8; 32]);
        let m: Vec<u8> = (0..99).map(|j| (i * 7 + j) as u8).collect();
        signatures.push(key.sign(&m));
        keys.push(key.public_key());
        messages.push(m);
    }
    Items {
        keys,
        messages,
        signatures,
    }
}

/// The encoding checks the backend ran before ed25519-dalek's batch:
/// `S < L`, the key and `R` canonical and not of small order.
fn prechecked(key: &PublicKey, sig: &Signature) -> Option<ed25519_dalek::VerifyingKey> {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    if !sig.0[32..].iter().rev().lt(L.iter().rev()) {
        return None;
    }
    let strict = |vk: ed25519_dalek::VerifyingKey| {
        (vk.to_edwards().compress().to_bytes() == vk.to_bytes() && !vk.is_weak()).then_some(vk)
    };
    let key = strict(ed25519_dalek::VerifyingKey::from_bytes(key.as_bytes()).ok()?)?;
    let r: [u8; 32] = sig.0[..32].try_into().ok()?;
    strict(ed25519_dalek::VerifyingKey::from_bytes(&r).ok()?)?;
    Some(key)
}

/// Time for `iters` runs of `f`, per signature of a batch of `n`.
fn per_signature(iters: u64, n: usize, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed() / n as u32
}

fn hello_signatures(c: &mut Criterion) {
    let mut group = c.benchmark_group("hello_signature_us_per_signature");
    let one = items(1);
    group.bench_function("alone/strict", |b| {
        b.iter(|| assert!(one.keys[0].verify_strict(&one.messages[0], &one.signatures[0])))
    });
    group.bench_function("alone/hello", |b| {
        b.iter(|| {
            assert!(hello_signature::verify(
                &one.keys[0],
                &one.messages[0],
                &one.signatures[0]
            ))
        })
    });
    for n in [8usize, 32, 64] {
        let it = items(n);
        let messages: Vec<&[u8]> = it.messages.iter().map(Vec::as_slice).collect();
        let dalek_sigs: Vec<ed25519_dalek::Signature> = it
            .signatures
            .iter()
            .map(|s| ed25519_dalek::Signature::from_bytes(&s.0))
            .collect();
        let batch: Vec<(&PublicKey, &[u8], &Signature)> = (0..n)
            .map(|i| (&it.keys[i], messages[i], &it.signatures[i]))
            .collect();
        // Keys are held as their 32 bytes (`PublicKey`), so every rule pays
        // for decompressing them inside the measurement.
        group.bench_function(format!("batch_{n}/strict"), |b| {
            b.iter_custom(|iters| {
                per_signature(iters, n, || {
                    let keys: Vec<ed25519_dalek::VerifyingKey> = it
                        .keys
                        .iter()
                        .map(|k| ed25519_dalek::VerifyingKey::from_bytes(k.as_bytes()).unwrap())
                        .collect();
                    assert!(
                        ed25519_dalek::verify_batch(black_box(&messages), &dalek_sigs, &keys)
                            .is_ok()
                    )
                })
            })
        });
        group.bench_function(format!("batch_{n}/strict+prechecks"), |b| {
            b.iter_custom(|iters| {
                per_signature(iters, n, || {
                    let keys: Vec<ed25519_dalek::VerifyingKey> = (0..n)
                        .map(|i| prechecked(&it.keys[i], &it.signatures[i]).unwrap())
                        .collect();
                    assert!(
                        ed25519_dalek::verify_batch(black_box(&messages), &dalek_sigs, &keys)
                            .is_ok()
                    )
                })
            })
        });
        group.bench_function(format!("batch_{n}/hello"), |b| {
            b.iter_custom(|iters| {
                per_signature(iters, n, || {
                    assert!(hello_signature::verify_batch(black_box(&batch))
                        .iter()
                        .all(|ok| *ok))
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, hello_signatures);
criterion_main!(benches);
