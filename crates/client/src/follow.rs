//! Following a whole stream without leases: every shard read in order, a
//! child only after its parents were read to their end, so order per
//! partition key holds across splits and merges. This is how one process
//! sees every record of a stream (live feeds, tails), where the consumer
//! shares a stream's shards among workers.
//!
//! Where a follower stands is a [`Positions`]: per shard, the position after
//! the last record handed out. It encodes to a short URL-safe text, a cursor
//! that lets a later follower, in any process, continue exactly there.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;

use sluice_core::stream::StartPosition;
use sluice_core::{SequenceNumber, StreamBackend, StreamError};

use crate::consumer::reader::{user_records, Skip};
use crate::consumer::UserRecord;

/// Where a shard continues from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Position {
    /// Every record the shard holds.
    TrimHorizon,
    /// Records that arrived at or after this time (ms since the Unix epoch).
    AtMs(i64),
    /// Records after this one; `sub` is the user record inside an aggregate.
    After {
        sequence: SequenceNumber,
        sub: Option<u64>,
    },
}

impl Position {
    /// The position after `record`.
    pub fn after(record: &UserRecord) -> Self {
        Position::After {
            sequence: record.sequence_number.clone(),
            sub: record.sub_sequence,
        }
    }

    /// Whether `record` comes after this position, i.e. a reader from here
    /// would hand it out.
    pub fn admits(&self, record: &UserRecord) -> bool {
        match self {
            Position::TrimHorizon => true,
            Position::AtMs(ms) => record.arrival_ms >= *ms,
            Position::After { sequence, sub } => match record.sequence_number.cmp(sequence) {
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Less => false,
                std::cmp::Ordering::Equal => match (sub, record.sub_sequence) {
                    (Some(done), Some(this)) => this > *done,
                    _ => false,
                },
            },
        }
    }

    fn start(&self) -> (StartPosition, Option<Skip>) {
        match self {
            Position::TrimHorizon => (StartPosition::TrimHorizon, None),
            Position::AtMs(ms) => (StartPosition::AtTimestamp(*ms), None),
            Position::After {
                sequence,
                sub: None,
            } => (StartPosition::AfterSequence(sequence.clone()), None),
            Position::After {
                sequence,
                sub: Some(sub),
            } => (
                StartPosition::AtSequence(sequence.clone()),
                Some(Skip {
                    sequence: sequence.clone(),
                    sub_sequence: *sub,
                }),
            ),
        }
    }

    /// A text that [`Position::from_text`] reads back.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        self.write(&mut text);
        text
    }

    pub fn from_text(text: &str) -> Option<Self> {
        Self::parse(text)
    }

    fn write(&self, out: &mut String) {
        use std::fmt::Write;
        match self {
            Position::TrimHorizon => out.push('t'),
            Position::AtMs(ms) => {
                let _ = write!(out, "m{ms}");
            }
            Position::After { sequence, sub } => {
                out.push_str(sequence.as_str());
                if let Some(sub) = sub {
                    let _ = write!(out, ".{sub}");
                }
            }
        }
    }

    fn parse(text: &str) -> Option<Self> {
        if text == "t" {
            return Some(Position::TrimHorizon);
        }
        if let Some(ms) = text.strip_prefix('m') {
            return ms.parse().ok().map(Position::AtMs);
        }
        let (sequence, sub) = match text.split_once('.') {
            Some((sequence, sub)) => (sequence, Some(sub.parse().ok()?)),
            None => (text, None),
        };
        Some(Position::After {
            sequence: SequenceNumber::parse(sequence)?,
            sub,
        })
    }
}

/// Where every shard of a stream continues from; shards not listed (the
/// children of a later split or merge) from `default`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Positions {
    pub default: Position,
    pub shards: BTreeMap<Arc<str>, Position>,
}

/// A cursor that is not one [`Positions::encode`] wrote.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a cursor this stream's reader wrote")]
pub struct BadCursor;

impl Positions {
    /// Every shard from `default`.
    pub fn from(default: Position) -> Self {
        Self {
            default,
            shards: BTreeMap::new(),
        }
    }

    pub fn get(&self, shard: &str) -> &Position {
        self.shards.get(shard).unwrap_or(&self.default)
    }

    pub fn set(&mut self, shard: &Arc<str>, position: Position) {
        match self.shards.get_mut(shard) {
            Some(at) => *at = position,
            None => {
                self.shards.insert(shard.clone(), position);
            }
        }
    }

    /// A URL-safe text that [`Positions::decode`] reads back.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(32 + 80 * self.shards.len());
        self.default.write(&mut text);
        for (shard, position) in &self.shards {
            text.push(' ');
            text.push_str(shard);
            text.push('=');
            position.write(&mut text);
        }
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    pub fn decode(cursor: &str) -> Result<Self, BadCursor> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor.trim())
            .map_err(|_| BadCursor)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| BadCursor)?;
        let mut parts = text.split(' ');
        let default = Position::parse(parts.next().ok_or(BadCursor)?).ok_or(BadCursor)?;
        let mut shards = BTreeMap::new();
        for part in parts {
            let (shard, position) = part.split_once('=').ok_or(BadCursor)?;
            if shard.is_empty() {
                return Err(BadCursor);
            }
            shards.insert(
                Arc::from(shard),
                Position::parse(position).ok_or(BadCursor)?,
            );
        }
        Ok(Self { default, shards })
    }
}

/// One record handed out, with its shard.
#[derive(Clone, Debug)]
pub struct Followed {
    pub shard: Arc<str>,
    pub record: UserRecord,
}

/// What one round of reads gave.
#[derive(Debug, Default)]
pub struct Round {
    /// In order per shard; shards interleaved by arrival time.
    pub records: Vec<Followed>,
    /// The first error a shard's read met, if any; the other shards were
    /// read and nothing handed out is lost. The round can be tried again.
    pub error: Option<StreamError>,
}

struct ShardState {
    parents: Vec<String>,
    iterator: Option<String>,
    skip: Option<Skip>,
    finished: bool,
    /// The last read reached the tip of the shard.
    caught_up: bool,
}

/// Reads every shard of one stream from given positions. Positions move as
/// records are handed out, never before.
pub struct Follower {
    streams: Arc<dyn StreamBackend>,
    stream: String,
    positions: Positions,
    shards: BTreeMap<Arc<str>, ShardState>,
    batch: usize,
}

impl Follower {
    /// Follows `stream` from `positions`. Fails if the stream does not exist.
    pub async fn new(
        streams: Arc<dyn StreamBackend>,
        stream: &str,
        positions: Positions,
        batch: usize,
    ) -> Result<Self, StreamError> {
        let mut follower = Self {
            streams,
            stream: stream.to_owned(),
            positions,
            shards: BTreeMap::new(),
            batch: batch.max(1),
        };
        follower.discover().await?;
        Ok(follower)
    }

    /// Follows what arrives in `stream` from now on: the open shards from
    /// their tip (LATEST iterators, taken before this returns), children of
    /// later splits and merges from their start; closed shards are done.
    /// Until a shard hands out a record its position is `now_ms`, taken
    /// before the tips were: a cursor from then misses nothing the follower
    /// did not hand out.
    pub async fn from_now(
        streams: Arc<dyn StreamBackend>,
        stream: &str,
        now_ms: i64,
        batch: usize,
    ) -> Result<Self, StreamError> {
        let shards = streams.list_shards(stream).await?;
        let mut positions = Positions::from(Position::TrimHorizon);
        for shard in &shards {
            positions.set(&Arc::from(shard.shard_id.as_str()), Position::AtMs(now_ms));
        }
        let mut follower = Self::new(streams, stream, positions, batch).await?;
        for shard in &shards {
            let latest = if shard.is_open() {
                Some(
                    follower
                        .streams
                        .get_shard_iterator(stream, &shard.shard_id, StartPosition::Latest)
                        .await?,
                )
            } else {
                None
            };
            if let Some(state) = follower.shards.get_mut(shard.shard_id.as_str()) {
                state.finished = latest.is_none();
                state.iterator = latest;
            }
        }
        Ok(follower)
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Shards not yet read to their end.
    pub fn unfinished_shards(&self) -> usize {
        self.shards.values().filter(|s| !s.finished).count()
    }

    /// Records per read of a shard from now on (at least 1).
    pub fn set_batch(&mut self, batch: usize) {
        self.batch = batch.max(1);
    }

    /// Where each shard continues: after the last record handed out.
    pub fn positions(&self) -> &Positions {
        &self.positions
    }

    /// Whether the last round reached the tip of every shard there is to
    /// read (a shard behind on an empty page, as Kinesis answers on sparse
    /// shards, is not caught up).
    pub fn caught_up(&self) -> bool {
        self.shards
            .iter()
            .all(|(_, s)| s.finished || s.caught_up || !self.readable(s))
    }

    /// The least pause before the next round: the backend's read interval,
    /// or `idle` when the last round found nothing.
    pub fn pause(&self, round_had_records: bool, idle: Duration) -> Duration {
        let floor = self.streams.min_read_interval();
        if round_had_records {
            floor
        } else {
            floor.max(idle)
        }
    }

    fn readable(&self, state: &ShardState) -> bool {
        !state.finished
            && state
                .parents
                .iter()
                .all(|p| self.shards.get(p.as_str()).is_none_or(|p| p.finished))
    }

    /// Adds shards the follower does not know yet.
    async fn discover(&mut self) -> Result<(), StreamError> {
        for shard in self.streams.list_shards(&self.stream).await? {
            if self.shards.contains_key(shard.shard_id.as_str()) {
                continue;
            }
            let parents = shard.parents().map(str::to_owned).collect();
            self.shards.insert(
                Arc::from(shard.shard_id.as_str()),
                ShardState {
                    parents,
                    iterator: None,
                    skip: None,
                    finished: false,
                    caught_up: false,
                },
            );
        }
        Ok(())
    }

    /// Reads each shard that can be read once.
    pub async fn round(&mut self) -> Round {
        let mut per_shard: Vec<VecDeque<Followed>> = Vec::new();
        let mut error = None;
        let mut ended = false;
        let readable: Vec<Arc<str>> = self
            .shards
            .iter()
            .filter(|(_, s)| self.readable(s))
            .map(|(id, _)| id.clone())
            .collect();
        for shard in readable {
            match self.read_shard(&shard).await {
                Ok((records, shard_ended)) => {
                    ended |= shard_ended;
                    if !records.is_empty() {
                        per_shard.push(records);
                    }
                }
                Err(e) => {
                    tracing::debug!(stream = %self.stream, shard = %shard, error = %e, "follower read failed");
                    error.get_or_insert(e);
                }
            }
        }
        if ended {
            if let Err(e) = self.discover().await {
                error.get_or_insert(e);
            }
        }
        let records = merge_by_arrival(per_shard);
        for followed in &records {
            self.positions
                .set(&followed.shard, Position::after(&followed.record));
        }
        Round { records, error }
    }

    async fn read_shard(
        &mut self,
        shard: &Arc<str>,
    ) -> Result<(VecDeque<Followed>, bool), StreamError> {
        let state = self.shards.get_mut(shard).expect("known shard");
        let iterator = match state.iterator.take() {
            Some(iterator) => iterator,
            None => {
                let (start, skip) = self.positions.get(shard).start();
                state.skip = skip;
                self.streams
                    .get_shard_iterator(&self.stream, shard, start)
                    .await?
            }
        };
        let out = match self.streams.get_records(&iterator, self.batch).await {
            Ok(out) => out,
            Err(StreamError::ExpiredIterator(_)) => {
                // Opened again from the position on the next round.
                return Ok((VecDeque::new(), false));
            }
            Err(e) => {
                state.iterator = Some(iterator);
                return Err(e);
            }
        };
        let behind = out.millis_behind_latest.unwrap_or(0);
        state.caught_up = out.records.len() < self.batch && behind == 0;
        let ended = out.next_iterator.is_none();
        state.finished = ended;
        state.iterator = out.next_iterator;
        let records = user_records(shard, out.records, &mut state.skip)
            .into_iter()
            .map(|record| Followed {
                shard: shard.clone(),
                record,
            })
            .collect();
        Ok((records, ended))
    }
}

/// Interleaves shards' records by arrival time, keeping each shard's order.
fn merge_by_arrival(mut shards: Vec<VecDeque<Followed>>) -> Vec<Followed> {
    let total = shards.iter().map(VecDeque::len).sum();
    let mut out = Vec::with_capacity(total);
    if shards.len() == 1 {
        out.extend(shards.pop().expect("one shard"));
        return out;
    }
    while let Some(next) = shards
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.front().map(|f| (f.record.arrival_ms, i)))
        .min()
        .map(|(_, i)| i)
    {
        out.push(shards[next].pop_front().expect("front exists"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Producer, ProducerConfig};
    use bytes::Bytes;
    use sluice_backends::fault::{Faults, FaultyStreams};
    use sluice_backends::local::{LocalStreamOptions, LocalStreams};
    use sluice_core::stream::PutRecord;

    async fn local(shards: u32) -> (tempfile::TempDir, Arc<dyn StreamBackend>) {
        let dir = tempfile::tempdir().unwrap();
        let streams: Arc<dyn StreamBackend> =
            Arc::new(LocalStreams::open(dir.path(), LocalStreamOptions::default()).unwrap());
        streams.create_stream("events", shards).await.unwrap();
        (dir, streams)
    }

    /// Writes values `from..from + count` for each of `keys` keys, packed
    /// into aggregates so cursors stop inside them.
    async fn write(streams: &Arc<dyn StreamBackend>, keys: usize, from: u64, count: u64) {
        let config = ProducerConfig {
            aggregate_max_bytes: Some(300),
            ..ProducerConfig::default()
        };
        let producer = Producer::start(streams.clone(), "events", config)
            .await
            .unwrap();
        for value in from..from + count {
            let records = (0..keys)
                .map(|k| PutRecord::new(format!("key-{k}"), Bytes::from(value.to_string())))
                .collect();
            producer.send(records).await.unwrap();
        }
        producer.close().await;
    }

    /// Reads rounds until caught up (or `most` records), failing on a
    /// round that keeps erring.
    async fn follow(follower: &mut Follower, most: usize, into: &mut Vec<(String, u64)>) {
        let mut rounds = 0;
        loop {
            rounds += 1;
            assert!(rounds < 10_000, "the follower never caught up");
            let round = follower.round().await;
            for f in round.records {
                let value = std::str::from_utf8(&f.record.data)
                    .unwrap()
                    .parse()
                    .unwrap();
                into.push((f.record.partition_key.to_string(), value));
            }
            if round.error.is_none() && follower.caught_up() || into.len() >= most {
                return;
            }
        }
    }

    #[tokio::test]
    async fn every_record_once_in_order_per_key_across_reshards_faults_and_a_cursor() {
        let (_dir, streams) = local(2).await;
        write(&streams, 20, 0, 10).await;
        let shards = streams.list_shards("events").await.unwrap();
        let (low, high) = shards[0].hash_key_range;
        streams
            .split_shard("events", &shards[0].shard_id, low + (high - low) / 2)
            .await
            .unwrap();
        write(&streams, 20, 10, 10).await;
        let mut open: Vec<_> = streams
            .list_shards("events")
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.is_open())
            .collect();
        open.sort_by_key(|s| s.hash_key_range.0);
        streams
            .merge_shards("events", &open[1].shard_id, &open[2].shard_id)
            .await
            .unwrap();
        write(&streams, 20, 20, 10).await;

        let faulty: Arc<dyn StreamBackend> = Arc::new(FaultyStreams::new(
            streams.clone(),
            Faults {
                empty_page_rate: 0.3,
                read_throttle_rate: 0.1,
                expired_iterator_rate: 0.1,
                seed: 7,
                ..Faults::default()
            },
        ));
        let mut seen = Vec::new();
        let mut first = Follower::new(
            faulty.clone(),
            "events",
            Positions::from(Position::TrimHorizon),
            7,
        )
        .await
        .unwrap();
        follow(&mut first, 250, &mut seen).await;
        assert!(seen.len() >= 250 && seen.len() < 600, "{}", seen.len());
        let cursor = first.positions().encode();
        drop(first);
        let mut second = Follower::new(faulty, "events", Positions::decode(&cursor).unwrap(), 7)
            .await
            .unwrap();
        follow(&mut second, usize::MAX, &mut seen).await;

        assert_eq!(seen.len(), 600, "every record once, none twice");
        let mut next: BTreeMap<&str, u64> = BTreeMap::new();
        for (key, value) in &seen {
            let expected = next.entry(key).or_insert(0);
            assert_eq!(value, expected, "order of {key}");
            *expected += 1;
        }
    }

    #[tokio::test]
    async fn an_empty_page_that_is_behind_is_not_the_tip() {
        let (_dir, streams) = local(1).await;
        write(&streams, 1, 0, 3).await;
        let always_empty: Arc<dyn StreamBackend> = Arc::new(FaultyStreams::new(
            streams,
            Faults {
                empty_page_rate: 1.0,
                ..Faults::default()
            },
        ));
        let mut follower = Follower::new(
            always_empty,
            "events",
            Positions::from(Position::TrimHorizon),
            100,
        )
        .await
        .unwrap();
        for _ in 0..3 {
            assert!(follower.round().await.records.is_empty());
            assert!(!follower.caught_up());
        }
    }

    #[test]
    fn positions_round_trip_through_a_cursor() {
        let mut positions = Positions::from(Position::AtMs(1_795_874_400_000));
        positions.set(&Arc::from("shardId-000000000000"), Position::TrimHorizon);
        positions.set(
            &Arc::from("shardId-000000000001"),
            Position::After {
                sequence: SequenceNumber::parse(
                    "49654321098765432109876543210987654321098765432109876543",
                )
                .unwrap(),
                sub: Some(3),
            },
        );
        positions.set(
            &Arc::from("shardId-000000000002"),
            Position::After {
                sequence: SequenceNumber::parse("12").unwrap(),
                sub: None,
            },
        );
        let cursor = positions.encode();
        assert!(cursor
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(Positions::decode(&cursor), Ok(positions));
        for bad in ["", "!!", "eA", "dCA9dA", "dCBhPXg"] {
            assert_eq!(Positions::decode(bad), Err(BadCursor), "{bad}");
        }
    }

    #[test]
    fn a_position_admits_exactly_what_follows_it() {
        let record = |seq: &str, sub: Option<u64>, ms: i64| UserRecord {
            sequence_number: SequenceNumber::parse(seq).unwrap(),
            sub_sequence: sub,
            partition_key: "k".into(),
            data: bytes::Bytes::new(),
            arrival_ms: ms,
        };
        let after = |seq: &str, sub| Position::After {
            sequence: SequenceNumber::parse(seq).unwrap(),
            sub,
        };
        assert!(after("10", None).admits(&record("11", None, 0)));
        assert!(!after("10", None).admits(&record("10", None, 0)));
        assert!(!after("10", None).admits(&record("10", Some(4), 0)));
        assert!(after("10", Some(1)).admits(&record("10", Some(2), 0)));
        assert!(!after("10", Some(2)).admits(&record("10", Some(2), 0)));
        assert!(!after("100", None).admits(&record("99", None, 0)));
        assert!(Position::AtMs(5).admits(&record("1", None, 5)));
        assert!(!Position::AtMs(5).admits(&record("1", None, 4)));
        assert!(Position::TrimHorizon.admits(&record("1", None, 0)));
    }
}
