//! Streams on Kinesis Data Streams.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::{Blob, DateTime};
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use aws_sdk_kinesis::Client;
use bytes::Bytes;

use sluice_core::stream::{
    validate_put, GetRecordsOutput, PutFailure, PutRecord, PutResult, Record, Shard, StartPosition,
    StreamError, StreamSummary,
};
use sluice_core::{SequenceNumber, StreamBackend};

use super::{access_problem, describe, wait_until};

/// Kinesis Data Streams behind the stream trait.
#[derive(Clone)]
pub struct AwsStreams {
    client: Client,
    wait_active: Duration,
}

/// Maps an SDK error to the stream error it stands for. Service errors are
/// told apart by the error codes of the Kinesis API.
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    stream: &str,
    err: SdkError<E>,
) -> StreamError {
    if let Some(problem) = access_problem(&err) {
        return StreamError::AccessDenied(format!("Kinesis, stream {stream}: {problem}"));
    }
    match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            StreamError::Unavailable(describe(&err))
        }
        SdkError::ServiceError(service) => {
            let inner = service.err();
            let message = inner.message().unwrap_or("").to_owned();
            match inner.code() {
                Some("ResourceNotFoundException") => StreamError::StreamNotFound(stream.to_owned()),
                Some("ResourceInUseException") => {
                    StreamError::AlreadyExists(format!("{stream}: {message}"))
                }
                Some(
                    "ProvisionedThroughputExceededException"
                    | "LimitExceededException"
                    | "ThrottlingException",
                ) => StreamError::Throttled(message),
                Some("ExpiredIteratorException") => StreamError::ExpiredIterator(message),
                Some("InvalidArgumentException" | "ValidationException") => {
                    StreamError::InvalidArgument(message)
                }
                code => {
                    let status = service.raw().status().as_u16();
                    if status >= 500 {
                        StreamError::Unavailable(format!("HTTP {status} {code:?}: {message}"))
                    } else {
                        StreamError::Storage(format!("HTTP {status} {code:?}: {message}"))
                    }
                }
            }
        }
        _ => StreamError::Storage(describe(&err)),
    }
}

fn parse_hash(text: Option<&str>) -> Result<u128, StreamError> {
    text.and_then(sluice_core::hash::parse_hash_key)
        .ok_or_else(|| StreamError::Storage(format!("bad hash key {text:?} from the service")))
}

fn sequence(text: Option<&str>) -> Result<SequenceNumber, StreamError> {
    text.and_then(SequenceNumber::parse).ok_or_else(|| {
        StreamError::Storage(format!("bad sequence number {text:?} from the service"))
    })
}

/// Iterators are handed out as `stream/shard/iterator` so that GetRecords
/// errors can name the stream.
fn wrap_iterator(stream: &str, shard: &str, iterator: &str) -> String {
    format!("{stream}/{shard}/{iterator}")
}

fn unwrap_iterator(text: &str) -> Result<(&str, &str, &str), StreamError> {
    let mut parts = text.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(stream), Some(shard), Some(iterator)) if !iterator.is_empty() => {
            Ok((stream, shard, iterator))
        }
        _ => Err(StreamError::InvalidArgument(
            "malformed shard iterator".into(),
        )),
    }
}

impl AwsStreams {
    pub fn new(client: Client, wait_active: Duration) -> Self {
        Self {
            client,
            wait_active,
        }
    }

    /// Refuses to reshard a closed or unknown shard before asking the
    /// service, as not every Kinesis-compatible server checks it.
    async fn require_open(&self, name: &str, shard_ids: &[&str]) -> Result<(), StreamError> {
        let shards = self.list_shards(name).await?;
        for id in shard_ids {
            match shards.iter().find(|s| s.shard_id == *id) {
                None => {
                    return Err(StreamError::ShardNotFound {
                        stream: name.to_owned(),
                        shard: (*id).to_owned(),
                    })
                }
                Some(shard) if !shard.is_open() => {
                    return Err(StreamError::InvalidArgument(format!("{id} is closed")));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Waits until the stream is ACTIVE (after create, split or merge).
    pub async fn wait_active(&self, name: &str) -> Result<(), StreamError> {
        let client = self.client.clone();
        wait_until(self.wait_active, &format!("stream {name}"), || {
            let client = client.clone();
            async move {
                let out = client
                    .describe_stream_summary()
                    .stream_name(name)
                    .send()
                    .await
                    .map_err(|e| classify(name, e))?;
                Ok::<_, StreamError>(
                    out.stream_description_summary()
                        .is_some_and(|s| *s.stream_status() == StreamStatus::Active),
                )
            }
        })
        .await
        .map_err(StreamError::Unavailable)
    }
}

#[async_trait]
impl StreamBackend for AwsStreams {
    async fn create_stream(&self, name: &str, shards: u32) -> Result<(), StreamError> {
        self.client
            .create_stream()
            .stream_name(name)
            .shard_count(shards as i32)
            .send()
            .await
            .map_err(|e| match classify(name, e) {
                StreamError::AlreadyExists(_) => StreamError::AlreadyExists(name.to_owned()),
                other => other,
            })?;
        self.wait_active(name).await
    }

    async fn delete_stream(&self, name: &str) -> Result<(), StreamError> {
        self.client
            .delete_stream()
            .stream_name(name)
            .enforce_consumer_deletion(true)
            .send()
            .await
            .map_err(|e| classify(name, e))?;
        Ok(())
    }

    async fn list_streams(&self) -> Result<Vec<String>, StreamError> {
        let mut names = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let out = self
                .client
                .list_streams()
                .set_exclusive_start_stream_name(start.clone())
                .send()
                .await
                .map_err(|e| classify("*", e))?;
            names.extend(out.stream_names().iter().cloned());
            if !out.has_more_streams() || out.stream_names().is_empty() {
                break;
            }
            start = names.last().cloned();
        }
        names.sort();
        Ok(names)
    }

    async fn describe_stream(&self, name: &str) -> Result<StreamSummary, StreamError> {
        let out = self
            .client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .map_err(|e| classify(name, e))?;
        let summary = out
            .stream_description_summary()
            .ok_or_else(|| StreamError::Storage("no stream summary in the answer".into()))?;
        Ok(StreamSummary {
            name: name.to_owned(),
            open_shards: summary.open_shard_count().max(0) as usize,
            retention_hours: summary.retention_period_hours().max(0) as u32,
            record_count: None,
        })
    }

    async fn list_shards(&self, name: &str) -> Result<Vec<Shard>, StreamError> {
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        loop {
            // ListShards takes the stream name or a next token, not both.
            let request = match &token {
                Some(token) => self.client.list_shards().next_token(token),
                None => self.client.list_shards().stream_name(name),
            };
            let out = request.send().await.map_err(|e| classify(name, e))?;
            for shard in out.shards() {
                let range = shard.hash_key_range();
                let sequences = shard.sequence_number_range();
                shards.push(Shard {
                    shard_id: shard.shard_id().to_owned(),
                    parent_shard_id: shard.parent_shard_id().map(str::to_owned),
                    adjacent_parent_shard_id: shard.adjacent_parent_shard_id().map(str::to_owned),
                    hash_key_range: (
                        parse_hash(range.map(|r| r.starting_hash_key()))?,
                        parse_hash(range.map(|r| r.ending_hash_key()))?,
                    ),
                    starting_sequence_number: sequence(
                        sequences.map(|s| s.starting_sequence_number()),
                    )?,
                    ending_sequence_number: sequences
                        .and_then(|s| s.ending_sequence_number())
                        .map(|s| sequence(Some(s)))
                        .transpose()?,
                });
            }
            match out.next_token() {
                Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok(shards)
    }

    async fn put_records(
        &self,
        name: &str,
        records: Vec<PutRecord>,
    ) -> Result<Vec<PutResult>, StreamError> {
        validate_put(&records)?;
        let entries = records
            .iter()
            .map(|r| {
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(r.data.to_vec()))
                    .partition_key(r.partition_key.as_str())
                    .set_explicit_hash_key(r.explicit_hash_key.map(|h| h.to_string()))
                    .build()
                    .map_err(|e| StreamError::InvalidArgument(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .put_records()
            .stream_name(name)
            .set_records(Some(entries))
            .send()
            .await
            .map_err(|e| classify(name, e))?;
        if out.records().len() != records.len() {
            return Err(StreamError::Storage(format!(
                "{} results for {} records",
                out.records().len(),
                records.len()
            )));
        }
        out.records()
            .iter()
            .map(|entry| match entry.error_code() {
                None => Ok(PutResult::Ok {
                    shard_id: entry.shard_id().unwrap_or_default().to_owned(),
                    sequence_number: sequence(entry.sequence_number())?,
                }),
                Some(code) => {
                    let message = entry.error_message().unwrap_or_default().to_owned();
                    Ok(PutResult::Failed(match code {
                        "ProvisionedThroughputExceededException" => PutFailure::Throttled(message),
                        "InternalFailure" => PutFailure::Internal(message),
                        other => PutFailure::Other {
                            code: other.to_owned(),
                            message,
                        },
                    }))
                }
            })
            .collect()
    }

    async fn get_shard_iterator(
        &self,
        name: &str,
        shard_id: &str,
        start: StartPosition,
    ) -> Result<String, StreamError> {
        let request = self
            .client
            .get_shard_iterator()
            .stream_name(name)
            .shard_id(shard_id);
        let request = match start {
            StartPosition::TrimHorizon => {
                request.shard_iterator_type(ShardIteratorType::TrimHorizon)
            }
            StartPosition::Latest => request.shard_iterator_type(ShardIteratorType::Latest),
            StartPosition::AtSequence(seq) => request
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(seq.as_str()),
            StartPosition::AfterSequence(seq) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq.as_str()),
            StartPosition::AtTimestamp(ms) => request
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(ms)),
        };
        let out = request.send().await.map_err(|e| match classify(name, e) {
            StreamError::StreamNotFound(_) => StreamError::ShardNotFound {
                stream: name.to_owned(),
                shard: shard_id.to_owned(),
            },
            other => other,
        })?;
        let iterator = out
            .shard_iterator()
            .ok_or_else(|| StreamError::Storage("no shard iterator in the answer".into()))?;
        Ok(wrap_iterator(name, shard_id, iterator))
    }

    async fn get_records(
        &self,
        iterator: &str,
        limit: usize,
    ) -> Result<GetRecordsOutput, StreamError> {
        let (stream, shard, raw) = unwrap_iterator(iterator)?;
        let limit = limit.clamp(1, sluice_core::limits::MAX_GET_RECORDS) as i32;
        let out = self
            .client
            .get_records()
            .shard_iterator(raw)
            .limit(limit)
            .send()
            .await
            .map_err(|e| classify(stream, e))?;
        let records = out
            .records()
            .iter()
            .map(|r| {
                Ok(Record {
                    sequence_number: sequence(Some(r.sequence_number()))?,
                    partition_key: r.partition_key().unwrap_or_default().into(),
                    data: Bytes::copy_from_slice(r.data().as_ref()),
                    arrival_ms: r
                        .approximate_arrival_timestamp()
                        .and_then(|t| t.to_millis().ok())
                        .unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>, StreamError>>()?;
        Ok(GetRecordsOutput {
            records,
            next_iterator: out
                .next_shard_iterator()
                .map(|next| wrap_iterator(stream, shard, next)),
            millis_behind_latest: out.millis_behind_latest().map(|m| m.max(0) as u64),
            child_shards: out
                .child_shards()
                .iter()
                .map(|c| c.shard_id().to_owned())
                .collect(),
        })
    }

    async fn split_shard(
        &self,
        name: &str,
        shard_id: &str,
        new_starting_hash_key: u128,
    ) -> Result<(), StreamError> {
        self.require_open(name, &[shard_id]).await?;
        self.client
            .split_shard()
            .stream_name(name)
            .shard_to_split(shard_id)
            .new_starting_hash_key(new_starting_hash_key.to_string())
            .send()
            .await
            .map_err(|e| classify(name, e))?;
        self.wait_active(name).await
    }

    async fn merge_shards(
        &self,
        name: &str,
        shard_id: &str,
        adjacent_shard_id: &str,
    ) -> Result<(), StreamError> {
        self.require_open(name, &[shard_id, adjacent_shard_id])
            .await?;
        self.client
            .merge_shards()
            .stream_name(name)
            .shard_to_merge(shard_id)
            .adjacent_shard_to_merge(adjacent_shard_id)
            .send()
            .await
            .map_err(|e| classify(name, e))?;
        self.wait_active(name).await
    }

    fn min_read_interval(&self) -> Duration {
        // Kinesis allows 5 GetRecords calls per second per shard.
        Duration::from_millis(200)
    }
}
