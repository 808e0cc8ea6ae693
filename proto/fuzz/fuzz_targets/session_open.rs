//! See [`vouch_proto_fuzz::session_open`] for the input format and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = vouch_proto_fuzz::session_open(data);
});
