//! The AWS backend when things go wrong: an endpoint nobody listens on, a
//! stream deleted while in use and refused credentials give clear, typed
//! errors in bounded time, never a hang. Runs against the moto servers that
//! ./scripts/test starts (one of them checks credentials).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_backends::conformance::servers::{dynamodb, kinesis, moto, moto_checking_credentials};
use sluice_client::{ProduceError, Producer, ProducerConfig, SendFailure};
use sluice_core::retry::{Backoff, Retryable};
use sluice_core::stream::{PutRecord, StartPosition, StreamError};
use sluice_core::table::TableError;
use sluice_core::{StreamBackend, TableBackend};

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
        matches!(
            &err,
            ProduceError::Rejected {
                reason: SendFailure::Call(StreamError::StreamNotFound(_)),
                ..
            }
        ),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_a_typed_error_that_is_not_retried() {
    let url = moto_checking_credentials();
    let streams: Arc<dyn StreamBackend> = Arc::new(kinesis(&url));
    let err = streams.list_streams().await.unwrap_err();
    let StreamError::AccessDenied(reason) = &err else {
        panic!("expected access denied, got {err:?}")
    };
    assert!(reason.contains("InvalidClientTokenId"), "{reason}");
    assert!(!err.is_retryable(), "no retry fixes credentials");
    let err = streams
        .put_records("any", vec![PutRecord::new("k", Bytes::from_static(b"v"))])
        .await
        .unwrap_err();
    assert!(matches!(err, StreamError::AccessDenied(_)), "{err:?}");

    let tables = dynamodb(&url);
    let err = tables.get("any", "k").await.unwrap_err();
    assert!(matches!(err, TableError::AccessDenied(_)), "{err:?}");
    assert!(!err.is_retryable());
}
