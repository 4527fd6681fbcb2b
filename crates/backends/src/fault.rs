//! Fault injection: a stream backend wrapper that fails a chosen fraction of
//! PutRecords entries with ProvisionedThroughputExceeded, fails a fraction of
//! whole calls as unavailable, throttles reads, answers empty pages while
//! records remain, expires shard iterators,
//! and delays calls, all from a seed, so a run can be repeated exactly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use sluice_core::stream::{
    GetRecordsOutput, PutFailure, PutRecord, PutResult, Shard, StartPosition, StreamError,
    StreamSummary,
};
use sluice_core::StreamBackend;

/// What to inject.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Fraction of PutRecords entries failed as throttled (0.0 to 1.0).
    pub entry_failure_rate: f64,
    /// Fraction of PutRecords calls failed whole as unavailable.
    pub call_failure_rate: f64,
    /// Fraction of PutRecords calls that write their records and then fail
    /// as a timeout would: the caller cannot know, retries, and duplicates.
    pub timeout_rate: f64,
    /// Fraction of GetRecords calls failed as throttled
    /// (ProvisionedThroughputExceeded on reads).
    pub read_throttle_rate: f64,
    /// Fraction of GetRecords calls failed with an expired iterator, as
    /// Kinesis does for an iterator older than five minutes.
    pub expired_iterator_rate: f64,
    /// Fraction of GetRecords calls that had records answered with an
    /// empty page instead (`MillisBehindLatest` > 0), as Kinesis answers on
    /// sparse shards and after TRIM_HORIZON. The iterator is handed back
    /// unchanged, so nothing is skipped; at the tip pages are as they are.
    pub empty_page_rate: f64,
    /// Fraction of calls delayed by up to `max_delay`.
    pub delay_rate: f64,
    pub max_delay: Duration,
    pub seed: u64,
    /// When set, every PutRecords call first takes a permit from this
    /// semaphore: a test holds writes back, then releases them.
    pub stall: Option<Arc<tokio::sync::Semaphore>>,
}

/// A stream backend that misbehaves as told.
pub struct FaultyStreams {
    inner: Arc<dyn StreamBackend>,
    faults: Faults,
    rng: Mutex<StdRng>,
}

impl FaultyStreams {
    pub fn new(inner: Arc<dyn StreamBackend>, faults: Faults) -> Self {
        let rng = Mutex::new(StdRng::seed_from_u64(faults.seed));
        Self { inner, faults, rng }
    }

    fn roll(&self, rate: f64) -> bool {
        rate > 0.0
            && self
                .rng
                .lock()
                .expect("rng lock")
                .random_bool(rate.min(1.0))
    }

    async fn maybe_delay(&self) {
        if self.roll(self.faults.delay_rate) {
            let nanos = self.faults.max_delay.as_nanos() as u64;
            let pause = self.rng.lock().expect("rng lock").random_range(0..=nanos);
            tokio::time::sleep(Duration::from_nanos(pause)).await;
        }
    }
}

#[async_trait]
impl StreamBackend for FaultyStreams {
    async fn create_stream(&self, name: &str, shards: u32) -> Result<(), StreamError> {
        self.inner.create_stream(name, shards).await
    }
    async fn delete_stream(&self, name: &str) -> Result<(), StreamError> {
        self.inner.delete_stream(name).await
    }
    async fn list_streams(&self) -> Result<Vec<String>, StreamError> {
        self.inner.list_streams().await
    }
    async fn describe_stream(&self, name: &str) -> Result<StreamSummary, StreamError> {
        self.inner.describe_stream(name).await
    }
    async fn list_shards(&self, name: &str) -> Result<Vec<Shard>, StreamError> {
        self.inner.list_shards(name).await
    }

    async fn put_records(
        &self,
        name: &str,
        records: Vec<PutRecord>,
    ) -> Result<Vec<PutResult>, StreamError> {
        if let Some(stall) = &self.faults.stall {
            stall
                .acquire()
                .await
                .map_err(|_| StreamError::Unavailable("stalled".into()))?
                .forget();
        }
        self.maybe_delay().await;
        if self.roll(self.faults.call_failure_rate) {
            return Err(StreamError::Unavailable("injected call failure".into()));
        }
        // Decide each entry's fate first, then put only the survivors, so a
        // failed entry is really absent from the stream.
        let fail: Vec<bool> = records
            .iter()
            .map(|_| self.roll(self.faults.entry_failure_rate))
            .collect();
        let survivors: Vec<PutRecord> = records
            .iter()
            .zip(&fail)
            .filter(|(_, failed)| !**failed)
            .map(|(r, _)| r.clone())
            .collect();
        let mut stored = if survivors.is_empty() {
            Vec::new()
        } else {
            self.inner.put_records(name, survivors).await?
        }
        .into_iter();
        if self.roll(self.faults.timeout_rate) {
            return Err(StreamError::Unavailable(
                "injected timeout after the write".into(),
            ));
        }
        Ok(fail
            .into_iter()
            .map(|failed| {
                if failed {
                    PutResult::Failed(PutFailure::Throttled(
                        "injected: rate exceeded for shard".into(),
                    ))
                } else {
                    stored.next().expect("one result per survivor")
                }
            })
            .collect())
    }

    async fn get_shard_iterator(
        &self,
        name: &str,
        shard_id: &str,
        start: StartPosition,
    ) -> Result<String, StreamError> {
        self.inner.get_shard_iterator(name, shard_id, start).await
    }
    async fn get_records(
        &self,
        iterator: &str,
        limit: usize,
    ) -> Result<GetRecordsOutput, StreamError> {
        self.maybe_delay().await;
        if self.roll(self.faults.read_throttle_rate) {
            return Err(StreamError::Throttled(
                "injected: read rate exceeded for shard".into(),
            ));
        }
        if self.roll(self.faults.expired_iterator_rate) {
            return Err(StreamError::ExpiredIterator(
                "injected: iterator expired".into(),
            ));
        }
        let out = self.inner.get_records(iterator, limit).await?;
        if !out.records.is_empty() && self.roll(self.faults.empty_page_rate) {
            return Ok(GetRecordsOutput {
                records: Vec::new(),
                next_iterator: Some(iterator.to_owned()),
                millis_behind_latest: Some(out.millis_behind_latest.unwrap_or(0).max(1_000)),
                child_shards: Vec::new(),
            });
        }
        Ok(out)
    }
    async fn split_shard(&self, name: &str, shard_id: &str, at: u128) -> Result<(), StreamError> {
        self.inner.split_shard(name, shard_id, at).await
    }
    async fn merge_shards(
        &self,
        name: &str,
        shard_id: &str,
        adjacent: &str,
    ) -> Result<(), StreamError> {
        self.inner.merge_shards(name, shard_id, adjacent).await
    }
}
