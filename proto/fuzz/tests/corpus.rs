//! The committed seed corpus is what `seeds()` generates, every corpus file
//! passes its harness, and the seeds reach where they are meant to.
//!
//! `VOUCH_WRITE_CORPUS=1 cargo test --manifest-path proto/fuzz/Cargo.toml`
//! rewrites the seeds (after a change to the wire format or the fixtures).

use std::fs;
use std::path::PathBuf;

use vouch_proto_fuzz::{run, seeds, TARGETS};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// The committed corpus stays small (the brief's budget).
const MAX_CORPUS_BYTES: usize = 200 * 1024;

#[test]
fn committed_seeds_are_current() {
    let write = std::env::var_os("VOUCH_WRITE_CORPUS").is_some();
    let seeds = seeds();
    for &target in TARGETS {
        assert!(
            seeds.iter().any(|(t, _, _)| *t == target),
            "no seed for {target}"
        );
    }
    let mut stale = Vec::new();
    for (target, name, bytes) in &seeds {
        let path = corpus_dir().join(target).join(name);
        if write {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, bytes).unwrap();
        } else if fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "seed files missing or stale (rerun with VOUCH_WRITE_CORPUS=1): {stale:#?}"
    );
}

#[test]
fn every_corpus_file_passes_its_harness_and_the_corpus_is_small() {
    if std::env::var_os("VOUCH_WRITE_CORPUS").is_some() {
        return; // the other test is rewriting the files right now
    }
    let mut total = 0;
    let mut files = 0;
    for &target in TARGETS {
        let dir = corpus_dir().join(target);
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = fs::read(&path).unwrap();
            total += bytes.len();
            files += 1;
            // Panics on a finding, naming nothing: say which file first.
            eprintln!("{target}: {}", path.display());
            run(target, &bytes);
        }
    }
    assert!(files >= 2 * TARGETS.len());
    assert!(
        total < MAX_CORPUS_BYTES,
        "corpus is {total} bytes, budget {MAX_CORPUS_BYTES}"
    );
}

/// What each seed is for: the harness must get exactly that far.
#[test]
fn seeds_reach_their_paths() {
    let expect_true = [
        ("decode_message", "hello"),
        ("decode_message", "record_300"),
        ("decode_message", "alert_3"),
        ("decode_backend_body", "vouched"),
        ("decode_backend_body", "peripheral_info"),
        ("reassembler", "interleaved_mtu23"),
        ("reassembler", "mtu247"),
        ("peripheral_handshake", "response"),
        ("peripheral_handshake", "resume_response"),
        ("gateway_handshake", "full"),
        ("gateway_handshake", "resume"),
        ("session_open", "peripheral_receives"),
        ("session_open", "gateway_receives"),
        ("anchor_update", "stale_add"),
        ("anchor_update", "wrong_key"),
        ("decode_backend_body", "feed_batch"),
        ("decode_backend_body", "session_report"),
        ("decode_backend_body", "session_report_answer"),
        ("tcp_stream", "messages_chunk1"),
        ("tcp_stream", "messages_chunk0"),
        ("tcp_stream", "oversized"),
    ];
    let expect_false = [
        ("peripheral_handshake", "response_flipped"),
        ("peripheral_handshake", "resume_response_flipped"),
        ("peripheral_handshake", "alert"),
        ("peripheral_handshake", "wrong_type"),
        ("gateway_handshake", "bad_finish"),
        ("gateway_handshake", "forged_hello"),
        ("gateway_handshake", "resume_wrong_finish"),
    ];
    let seeds = seeds();
    let find = |t: &str, n: &str| {
        seeds
            .iter()
            .find(|(st, sn, _)| *st == t && sn == n)
            .map(|(_, _, b)| b.clone())
            .unwrap_or_else(|| panic!("no seed {t}/{n}"))
    };
    for (t, n) in expect_true {
        assert!(run(t, &find(t, n)), "{t}/{n} did not get through");
    }
    for (t, n) in expect_false {
        assert!(!run(t, &find(t, n)), "{t}/{n} got through");
    }
}

#[test]
fn harnesses_take_empty_and_garbage_input() {
    for &target in TARGETS {
        assert!(!run(target, &[]), "{target} accepted nothing");
        for garbage in [&[0u8][..], &[0xff; 7], &[1, 5, 0x80, 0x80, 0x80]] {
            run(target, garbage);
        }
    }
}
