//! The Lambda event reader sees the body of every invocation: it must never
//! panic or hang, and reading records by their learnt shape must give what
//! reading them field by field gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::lambda::KinesisBatch;

fuzz_target!(|data: &[u8]| {
    let shaped = KinesisBatch::parse(data);
    let by_field = KinesisBatch::parse_field_by_field(data);
    assert_eq!(shaped, by_field);
});
