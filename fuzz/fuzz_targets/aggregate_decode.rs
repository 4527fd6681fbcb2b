//! De-aggregation sees any record of a stream: it must never panic, and
//! whatever it reads must survive a round trip through the aggregator.
//! Random bytes never carry a matching MD5, so the target frames its input
//! (magic, body, digest) when the first byte is odd, to reach the protobuf
//! decoder.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use md5::{Digest, Md5};
use sluice_core::aggregate::{deaggregate, Aggregator, MAGIC};

fuzz_target!(|data: &[u8]| {
    let record = match data.split_first() {
        Some((first, body)) if first & 1 == 1 => {
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(body);
            framed.extend_from_slice(&Md5::digest(body));
            Bytes::from(framed)
        }
        _ => Bytes::copy_from_slice(data),
    };
    if let Ok(Some(records)) = deaggregate(&record) {
        let mut aggregator = Aggregator::new();
        for r in &records {
            aggregator.push(&r.partition_key, r.explicit_hash_key.as_deref(), r.data.clone());
        }
        let again = deaggregate(&aggregator.finish()).expect("our own aggregate decodes");
        assert_eq!(again, Some(records));
    }
});
