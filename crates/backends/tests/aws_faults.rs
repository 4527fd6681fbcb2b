//! The AWS backend when things go wrong: an endpoint nobody listens on and
//! a stream deleted while in use give clear, typed errors in bounded time,
//! never a hang. Runs against the moto server that ./scripts/test starts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_backends::conformance::servers::{kinesis, moto};
use sluice_client::{ProduceError, Producer, ProducerConfig};
use sluice_core::retry::Backoff;
use sluice_core::stream::{PutRecord, StartPosition, StreamError};
use sluice_core::StreamBackend;

#[tokio::test]
async fn an_unreachable_endpoint_is_a_retryable_error_in_bounded_time() {
    // Bind a port, then free it: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let streams = kinesis(&format!("http://127.0.0.1:{port}"));
    let start = Instant::now();
    let err = streams.list_streams().await.unwrap_err();
    assert!(matches!(err, StreamError::Unavailable(_)), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_deleted_while_in_use_gives_not_found_errors() {
    let streams: Arc<dyn StreamBackend> = Arc::new(kinesis(&moto()));
    let name = format!("deleted-{}", std::process::id());
    streams.create_stream(&name, 1).await.unwrap();
    let shard = streams.list_shards(&name).await.unwrap()[0]
        .shard_id
        .clone();
    let iterator = streams
        .get_shard_iterator(&name, &shard, StartPosition::TrimHorizon)
        .await
        .unwrap();
    let config = ProducerConfig {
        backoff: Backoff::for_tests(),
        ..ProducerConfig::default()
    };
    let producer = Producer::start(streams.clone(), &name, config)
        .await
        .unwrap();
    producer
        .send(vec![PutRecord::new("k", Bytes::from_static(b"before"))])
        .await
        .unwrap();

    streams.delete_stream(&name).await.unwrap();
    let err = producer
        .send(vec![PutRecord::new("k", Bytes::from_static(b"after"))])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProduceError::Rejected { reason, .. } if reason.contains("StreamNotFound")),
        "{err:?}"
    );
    assert!(matches!(
        streams.describe_stream(&name).await,
        Err(StreamError::StreamNotFound(_))
    ));
    assert!(
        streams.get_records(&iterator, 10).await.is_err(),
        "reading a deleted stream fails"
    );
}
