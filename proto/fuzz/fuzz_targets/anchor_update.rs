//! See [`vouch_proto_fuzz::anchor_update`] for the input format and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = vouch_proto_fuzz::anchor_update(data);
});
