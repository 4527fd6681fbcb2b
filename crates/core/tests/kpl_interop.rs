//! Aggregates made by Sluice, decoded by the Kinesis aggregation library for
//! Python (the other direction is in the unit tests, from fixtures). The
//! test command installs the library into its virtualenv and names the
//! interpreter in SLUICE_TEST_PYTHON.

use std::process::Command;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use sluice_core::aggregate::Aggregator;

/// Partition key, explicit hash key and data of one user record.
type UserRecord = (String, Option<String>, Vec<u8>);

#[test]
fn the_reference_library_reads_our_aggregates() {
    let python = std::env::var("SLUICE_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "SLUICE_TEST_PYTHON is not set: this test needs a Python with aws-kinesis-agg; \
             run ./scripts/test, which installs it into .venv"
        )
    });
    let aggregates: Vec<Vec<UserRecord>> = vec![
        vec![("k".into(), None, b"one".to_vec())],
        (0..300usize)
            .map(|i| {
                let ehk = (i % 7 == 0).then(|| (u128::MAX / 7 * (i % 5) as u128).to_string());
                (format!("user-{}", i % 17), ehk, vec![i as u8; i % 50])
            })
            .collect(),
        vec![("ключ 🔑".into(), Some("0".into()), Vec::new())],
    ];
    let mut encoded = Vec::new();
    for records in &aggregates {
        let mut aggregator = Aggregator::new();
        for (pk, ehk, data) in records {
            aggregator.push(pk, ehk.as_deref(), Bytes::from(data.clone()));
        }
        encoded.push(STANDARD.encode(aggregator.finish()));
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("aggregates.json");
    std::fs::write(&input, serde_json::to_vec(&encoded).unwrap()).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/kpl/make_fixtures.py"
    );
    let output = Command::new(&python)
        .arg(script)
        .arg("--decode")
        .arg(&input)
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut decoded: Value = serde_json::from_slice(&output.stdout).unwrap();
    // The Python library reports the first explicit hash key of the table
    // for a record that has none (it reads the absent index as 0), so the
    // hash key is compared only where we wrote one.
    for (aggregate, records) in aggregates.iter().enumerate() {
        for (i, (_, ehk, _)) in records.iter().enumerate() {
            if ehk.is_none() {
                decoded[aggregate][i]["explicit_hash_key"] = Value::Null;
            }
        }
    }
    let expected: Value = aggregates
        .iter()
        .map(|records| {
            records
                .iter()
                .map(|(pk, ehk, data)| {
                    json!({"partition_key": pk, "explicit_hash_key": ehk, "data": STANDARD.encode(data)})
                })
                .collect::<Value>()
        })
        .collect();
    assert_eq!(decoded, expected);
}
