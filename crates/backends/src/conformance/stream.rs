//! The stream conformance suite.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use sluice_core::hash::partition_hash;
use sluice_core::stream::{
    PartitionKey, PutRecord, PutResult, Record, Shard, StartPosition, StreamError,
};
use sluice_core::{SequenceNumber, StreamBackend};

type Backend = Arc<dyn StreamBackend>;

/// Every check but resharding.
pub const BASIC: &[&str] = &[
    "lifecycle",
    "put_assigns_shards_by_hash_and_growing_sequences",
    "iterators_start_where_asked",
    "reads_page_and_keep_bytes",
    "put_limits_are_enforced",
    "bad_iterators_are_errors",
];

async fn create(backend: &Backend, name: &str, shards: u32) {
    backend
        .create_stream(name, shards)
        .await
        .expect("create stream");
}

fn record(key: &str, data: &str) -> PutRecord {
    PutRecord::new(key, Bytes::copy_from_slice(data.as_bytes()))
}

/// Puts records and returns (shard, sequence) for each.
async fn put_all(
    backend: &Backend,
    name: &str,
    records: Vec<PutRecord>,
) -> Vec<(String, SequenceNumber)> {
    let mut out = Vec::new();
    for chunk in records.chunks(500) {
        let results = backend
            .put_records(name, chunk.to_vec())
            .await
            .expect("put records");
        assert_eq!(results.len(), chunk.len(), "one result per record");
        for result in results {
            match result {
                PutResult::Ok {
                    shard_id,
                    sequence_number,
                } => out.push((shard_id, sequence_number)),
                PutResult::Failed(f) => panic!("put failed: {f:?}"),
            }
        }
    }
    out
}

/// Reads a shard from `start` until it has no more records right now (or it ended).
pub async fn read_shard(
    backend: &Backend,
    name: &str,
    shard: &str,
    start: StartPosition,
) -> (Vec<Record>, bool) {
    let mut iterator = Some(
        backend
            .get_shard_iterator(name, shard, start)
            .await
            .expect("iterator"),
    );
    let mut records = Vec::new();
    while let Some(it) = iterator {
        let out = backend.get_records(&it, 1000).await.expect("get records");
        let empty = out.records.is_empty();
        records.extend(out.records);
        iterator = out.next_iterator;
        if empty && iterator.is_some() {
            return (records, false);
        }
    }
    (records, true)
}

/// Every user record of a stream from its beginning, shard by shard, KPL
/// aggregates opened: the shard it is in, its partition key and its data.
pub async fn read_all(backend: &Backend, name: &str) -> Vec<(Shard, PartitionKey, Bytes)> {
    let mut out = Vec::new();
    for shard in backend.list_shards(name).await.expect("list shards") {
        let (records, _) =
            read_shard(backend, name, &shard.shard_id, StartPosition::TrimHorizon).await;
        for record in records {
            match sluice_core::aggregate::deaggregate(&record.data).expect("a readable aggregate") {
                Some(users) => out.extend(
                    users
                        .into_iter()
                        .map(|u| (shard.clone(), u.partition_key, u.data)),
                ),
                None => out.push((shard.clone(), record.partition_key, record.data)),
            }
        }
    }
    out
}

fn shard_for(shards: &[Shard], hash: u128) -> &str {
    shards
        .iter()
        .filter(|s| s.is_open())
        .find(|s| s.hash_key_range.0 <= hash && hash <= s.hash_key_range.1)
        .map(|s| s.shard_id.as_str())
        .expect("open shards cover the hash space")
}

pub async fn lifecycle(backend: Backend, prefix: &str) {
    let name = format!("{prefix}-life");
    create(&backend, &name, 3).await;
    assert!(backend.list_streams().await.unwrap().contains(&name));
    assert!(matches!(
        backend.create_stream(&name, 3).await,
        Err(StreamError::AlreadyExists(_))
    ));
    let summary = backend.describe_stream(&name).await.unwrap();
    assert_eq!(summary.open_shards, 3);
    let shards = backend.list_shards(&name).await.unwrap();
    assert_eq!(shards.len(), 3);
    assert_eq!(shards[0].hash_key_range.0, 0);
    assert_eq!(shards[2].hash_key_range.1, u128::MAX);
    for pair in shards.windows(2) {
        assert_eq!(
            pair[0].hash_key_range.1 + 1,
            pair[1].hash_key_range.0,
            "ranges are contiguous"
        );
    }
    backend.delete_stream(&name).await.unwrap();
    let missing = format!("{prefix}-missing");
    assert!(matches!(
        backend.describe_stream(&missing).await,
        Err(StreamError::StreamNotFound(_))
    ));
    assert!(matches!(
        backend.put_records(&missing, vec![record("k", "v")]).await,
        Err(StreamError::StreamNotFound(_))
    ));
}

pub async fn put_assigns_shards_by_hash_and_growing_sequences(backend: Backend, prefix: &str) {
    let name = format!("{prefix}-put");
    create(&backend, &name, 4).await;
    let shards = backend.list_shards(&name).await.unwrap();
    let records: Vec<PutRecord> = (0..200)
        .map(|i| record(&format!("user-{}", i % 37), &format!("event-{i}")))
        .collect();
    let placed = put_all(&backend, &name, records.clone()).await;
    let mut last: HashMap<String, SequenceNumber> = HashMap::new();
    for (record, (shard, seq)) in records.iter().zip(&placed) {
        assert_eq!(
            shard,
            shard_for(&shards, partition_hash(&record.partition_key)),
            "MD5 picks the shard"
        );
        if let Some(previous) = last.insert(shard.clone(), seq.clone()) {
            assert!(seq > &previous, "sequence numbers grow within a shard");
        }
    }
    // An explicit hash key overrides the partition key's hash: aim every
    // record at the first key of the last shard, whatever its partition key.
    let last_start = shards.last().unwrap().hash_key_range.0;
    let pinned: Vec<PutRecord> = (0..20)
        .map(|i| {
            let mut r = record(&format!("any-key-{i}"), "pinned");
            r.explicit_hash_key = Some(last_start);
            r
        })
        .collect();
    let placed = put_all(&backend, &name, pinned).await;
    assert!(placed
        .iter()
        .all(|(shard, _)| shard == shard_for(&shards, last_start)));

    backend.delete_stream(&name).await.unwrap();
}

pub async fn iterators_start_where_asked(backend: Backend, prefix: &str) {
    let name = format!("{prefix}-iter");
    create(&backend, &name, 1).await;
    let shard = backend.list_shards(&name).await.unwrap()[0]
        .shard_id
        .clone();
    let first = put_all(
        &backend,
        &name,
        (0..5).map(|i| record("k", &format!("a{i}"))).collect(),
    )
    .await;
    let latest = backend
        .get_shard_iterator(&name, &shard, StartPosition::Latest)
        .await
        .unwrap();
    // Let the clock move so AT_TIMESTAMP can tell the two groups apart.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let boundary_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = put_all(
        &backend,
        &name,
        (0..3).map(|i| record("k", &format!("b{i}"))).collect(),
    )
    .await;

    let data = |records: &[Record]| -> Vec<String> {
        records
            .iter()
            .map(|r| String::from_utf8(r.data.to_vec()).unwrap())
            .collect()
    };
    let (all, ended) = read_shard(&backend, &name, &shard, StartPosition::TrimHorizon).await;
    assert!(!ended);
    assert_eq!(data(&all), ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2"]);
    let after_latest = backend.get_records(&latest, 100).await.unwrap();
    assert_eq!(data(&after_latest.records), ["b0", "b1", "b2"]);
    let (at, _) = read_shard(
        &backend,
        &name,
        &shard,
        StartPosition::AtSequence(first[3].1.clone()),
    )
    .await;
    assert_eq!(data(&at), ["a3", "a4", "b0", "b1", "b2"]);
    let (after, _) = read_shard(
        &backend,
        &name,
        &shard,
        StartPosition::AfterSequence(first[4].1.clone()),
    )
    .await;
    assert_eq!(data(&after), ["b0", "b1", "b2"]);
    let (since, _) = read_shard(
        &backend,
        &name,
        &shard,
        StartPosition::AtTimestamp(boundary_ms),
    )
    .await;
    assert_eq!(data(&since), ["b0", "b1", "b2"]);
    assert_eq!(all[5].sequence_number, second[0].1);
    backend.delete_stream(&name).await.unwrap();
}

pub async fn reads_page_and_keep_bytes(backend: Backend, prefix: &str) {
    let name = format!("{prefix}-page");
    create(&backend, &name, 1).await;
    let shard = backend.list_shards(&name).await.unwrap()[0]
        .shard_id
        .clone();
    let payloads: Vec<Vec<u8>> = (0..1200u32)
        .map(|i| (0..(i % 300)).map(|b| (b * 7 + i) as u8).collect())
        .collect();
    let records: Vec<PutRecord> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| PutRecord::new(format!("key-é-{}", i % 5), Bytes::from(p.clone())))
        .collect();
    put_all(&backend, &name, records.clone()).await;
    let iterator = backend
        .get_shard_iterator(&name, &shard, StartPosition::TrimHorizon)
        .await
        .unwrap();
    let page = backend.get_records(&iterator, 100).await.unwrap();
    assert_eq!(page.records.len(), 100, "limit is honoured");
    let (all, _) = read_shard(&backend, &name, &shard, StartPosition::TrimHorizon).await;
    assert_eq!(all.len(), records.len());
    for (read, written) in all.iter().zip(&records) {
        assert_eq!(read.data, written.data, "bytes are intact");
        assert_eq!(read.partition_key, written.partition_key);
    }
    backend.delete_stream(&name).await.unwrap();
}

pub async fn put_limits_are_enforced(backend: Backend, prefix: &str) {
    let name = format!("{prefix}-limits");
    create(&backend, &name, 1).await;
    let too_many: Vec<PutRecord> = (0..501).map(|i| record("k", &i.to_string())).collect();
    assert!(matches!(
        backend.put_records(&name, too_many).await,
        Err(StreamError::InvalidArgument(_))
    ));
    let too_big = PutRecord::new("k", Bytes::from(vec![b'x'; 1024 * 1024 + 1]));
    assert!(matches!(
        backend.put_records(&name, vec![too_big]).await,
        Err(StreamError::InvalidArgument(_))
    ));
    let long_key = record(&"k".repeat(257), "v");
    assert!(matches!(
        backend.put_records(&name, vec![long_key]).await,
        Err(StreamError::InvalidArgument(_))
    ));
    assert!(matches!(
        backend.put_records(&name, vec![]).await,
        Err(StreamError::InvalidArgument(_))
    ));
    backend.delete_stream(&name).await.unwrap();
}

pub async fn bad_iterators_are_errors(backend: Backend, prefix: &str) {
    let name = format!("{prefix}-baditer");
    create(&backend, &name, 1).await;
    assert!(backend.get_records("not-an-iterator", 10).await.is_err());
    assert!(matches!(
        backend
            .get_shard_iterator(&name, "shardId-999999999999", StartPosition::TrimHorizon)
            .await,
        Err(StreamError::ShardNotFound { .. }) | Err(StreamError::InvalidArgument(_))
    ));
    backend.delete_stream(&name).await.unwrap();
}

/// Split and merge: lineage, closed parents, end of shard, writes to children.
pub async fn split_and_merge_keep_lineage_and_records(backend: Backend, prefix: &str) {
    let name = format!("{prefix}-reshard");
    create(&backend, &name, 1).await;
    let parent = backend.list_shards(&name).await.unwrap()[0].clone();
    let before = put_all(
        &backend,
        &name,
        (0..50)
            .map(|i| record(&format!("u{i}"), &format!("p{i}")))
            .collect(),
    )
    .await;
    let middle = u128::MAX / 2 + 1;
    backend
        .split_shard(&name, &parent.shard_id, middle)
        .await
        .unwrap();
    let shards = backend.list_shards(&name).await.unwrap();
    assert_eq!(shards.len(), 3);
    let closed = shards
        .iter()
        .find(|s| s.shard_id == parent.shard_id)
        .unwrap();
    let ending = closed
        .ending_sequence_number
        .clone()
        .expect("the parent is closed");
    assert!(
        before.iter().all(|(_, seq)| seq <= &ending),
        "the ending sequence covers the parent's records"
    );
    let children: Vec<&Shard> = shards
        .iter()
        .filter(|s| s.parent_shard_id.as_deref() == Some(&parent.shard_id))
        .collect();
    assert_eq!(children.len(), 2);
    assert_eq!(children[0].hash_key_range, (0, middle - 1));
    assert_eq!(children[1].hash_key_range, (middle, u128::MAX));

    let after = put_all(
        &backend,
        &name,
        (0..50)
            .map(|i| record(&format!("u{i}"), &format!("c{i}")))
            .collect(),
    )
    .await;
    assert!(
        after.iter().all(|(shard, _)| shard != &parent.shard_id),
        "writes go to the children"
    );
    let (parent_records, ended) = read_shard(
        &backend,
        &name,
        &parent.shard_id,
        StartPosition::TrimHorizon,
    )
    .await;
    assert!(
        ended,
        "a closed parent read to its end has no next iterator"
    );
    assert_eq!(parent_records.len(), 50);
    let mut in_children = 0;
    for child in &children {
        let (records, ended) =
            read_shard(&backend, &name, &child.shard_id, StartPosition::TrimHorizon).await;
        assert!(!ended);
        in_children += records.len();
    }
    assert_eq!(in_children, 50);

    backend
        .merge_shards(&name, &children[0].shard_id, &children[1].shard_id)
        .await
        .unwrap();
    let shards = backend.list_shards(&name).await.unwrap();
    let merged = shards.iter().find(|s| s.is_open()).unwrap();
    assert_eq!(shards.iter().filter(|s| s.is_open()).count(), 1);
    assert_eq!(merged.hash_key_range, (0, u128::MAX));
    let parents: Vec<&str> = merged.parents().collect();
    assert_eq!(parents.len(), 2);
    assert!(
        backend
            .split_shard(&name, &parent.shard_id, middle)
            .await
            .is_err(),
        "a closed shard cannot split"
    );
    backend.delete_stream(&name).await.unwrap();
}
