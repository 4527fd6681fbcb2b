//! The envelope decoders see bytes from any producer: they must never panic,
//! and the header-only path must agree with the full decode on headers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_core::envelope::{decode, decode_headers};

fuzz_target!(|data: &[u8]| {
    let headers = decode_headers(data);
    if let Ok(full) = decode(data) {
        let headers = headers.expect("a full decode implies a header decode");
        assert_eq!(headers, full.headers);
    }
});
