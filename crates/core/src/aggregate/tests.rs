use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use proptest::prelude::*;
use serde_json::Value;

use super::*;

fn fixtures() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/kpl/aggregates.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn b64(value: &Value) -> Bytes {
    Bytes::from(STANDARD.decode(value.as_str().unwrap()).unwrap())
}

fn expected_records(case: &Value) -> Vec<UserRecord> {
    case["user_records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| UserRecord {
            partition_key: r["partition_key"].as_str().unwrap().into(),
            explicit_hash_key: r["explicit_hash_key"].as_str().map(str::to_owned),
            data: b64(&r["data"]),
        })
        .collect()
}

#[test]
fn aggregates_made_by_the_reference_library_decode() {
    let cases = fixtures();
    assert!(cases.len() >= 5);
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let data = b64(&case["data"]);
        assert!(is_aggregate(&data), "{name}");
        let records = deaggregate(&data).unwrap().expect(name);
        assert_eq!(records, expected_records(case), "{name}");
    }
}

#[test]
fn our_aggregates_are_byte_identical_to_the_reference_library() {
    for case in &fixtures() {
        let mut aggregator = Aggregator::new();
        for r in expected_records(case) {
            aggregator.push(&r.partition_key, r.explicit_hash_key.as_deref(), r.data);
        }
        assert_eq!(
            aggregator.first_partition_key(),
            case["partition_key"].as_str(),
            "{}",
            case["name"]
        );
        let expected = b64(&case["data"]);
        assert_eq!(aggregator.encoded_len(), expected.len(), "{}", case["name"]);
        assert_eq!(aggregator.finish(), expected, "{}", case["name"]);
        assert!(aggregator.is_empty(), "finish starts a new aggregate");
    }
}

#[test]
fn plain_records_are_not_aggregates() {
    let one = {
        let mut a = Aggregator::new();
        a.push("k", None, Bytes::from_static(b"hello"));
        a.finish()
    };
    assert!(deaggregate(&one).unwrap().is_some());
    let plain = [
        Bytes::from_static(b"{\"headers\":{}}"),
        Bytes::new(),
        Bytes::from_static(&MAGIC),
        one.slice(..one.len() - 1),
        {
            let mut wrong_digest = one.to_vec();
            *wrong_digest.last_mut().unwrap() ^= 1;
            Bytes::from(wrong_digest)
        },
        {
            let mut changed_body = one.to_vec();
            changed_body[6] ^= 0x20;
            Bytes::from(changed_body)
        },
    ];
    for data in plain {
        assert_eq!(deaggregate(&data), Ok(None), "{data:?}");
    }
    let empty = Aggregator::new().finish();
    assert_eq!(empty.len(), OVERHEAD);
    assert_eq!(deaggregate(&empty), Ok(Some(Vec::new())));
}

/// An aggregate with a valid digest over `body`.
fn framed(body: &[u8]) -> Bytes {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(body);
    out.extend_from_slice(&Md5::digest(body));
    Bytes::from(out)
}

#[test]
fn corrupt_aggregates_with_a_valid_digest_are_errors() {
    let cases: [(&str, &[u8]); 6] = [
        ("truncated varint", &[0x1a, 0x80]),
        ("length past the end", &[0x0a, 0x05, b'a']),
        (
            "index outside the table",
            &[0x1a, 0x04, 0x08, 0x01, 0x1a, 0x00],
        ),
        (
            "record without data",
            &[0x0a, 0x01, b'k', 0x1a, 0x02, 0x08, 0x00],
        ),
        (
            "key not UTF-8",
            &[0x0a, 0x01, 0xff, 0x1a, 0x04, 0x08, 0x00, 0x1a, 0x00],
        ),
        ("wire type 7", &[0x0f]),
    ];
    for (name, body) in cases {
        let err = deaggregate(&framed(body)).unwrap_err();
        assert!(!err.0.is_empty(), "{name}");
    }
}

#[test]
fn unknown_fields_and_tags_are_read_past() {
    // partition key table ["k"], then an unknown fixed64 field 9, then a
    // record with a tag (field 4) before its data.
    let body = [
        0x0a, 0x01, b'k', 0x49, 1, 2, 3, 4, 5, 6, 7, 8, 0x1a, 0x0b, 0x08, 0x00, 0x22, 0x03, 0x0a,
        0x01, b't', 0x1a, 0x02, b'h', b'i',
    ];
    let records = deaggregate(&framed(&body)).unwrap().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].partition_key, "k");
    assert_eq!(&records[0].data[..], b"hi");
}

fn user_records() -> impl Strategy<Value = Vec<UserRecord>> {
    prop::collection::vec(
        (
            "[a-c]{1,3}|\\PC{1,20}",
            prop::option::of("[0-9]{1,39}"),
            prop::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(partition_key, explicit_hash_key, data)| UserRecord {
                partition_key: partition_key.into(),
                explicit_hash_key,
                data: Bytes::from(data),
            }),
        0..60,
    )
}

proptest! {
    #[test]
    fn round_trip(records in user_records()) {
        let mut aggregator = Aggregator::new();
        for r in &records {
            let before = aggregator.encoded_len();
            let growth = aggregator.growth(&r.partition_key, r.explicit_hash_key.as_deref(), r.data.len());
            aggregator.push(&r.partition_key, r.explicit_hash_key.as_deref(), r.data.clone());
            prop_assert_eq!(aggregator.encoded_len(), before + growth);
        }
        let expected_len = aggregator.encoded_len();
        let data = aggregator.finish();
        prop_assert_eq!(data.len(), expected_len);
        prop_assert_eq!(deaggregate(&data).unwrap().unwrap(), records);
    }

    #[test]
    fn any_bytes_decode_without_panic(body in prop::collection::vec(any::<u8>(), 0..200), framed_ in any::<bool>()) {
        let data = if framed_ { framed(&body) } else { Bytes::from(body) };
        let _ = deaggregate(&data);
    }
}
