//! Reading a shard: shard iterators as tokens, and GetRecords pages from
//! the segments.

use super::*;

pub(super) struct IteratorToken {
    pub(super) stream: String,
    pub(super) created_ms: i64,
    pub(super) shard: u32,
    pub(super) position: u64,
}

impl IteratorToken {
    pub(super) fn encode(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.stream, self.created_ms, self.shard, self.position
        )
    }

    pub(super) fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split(':');
        let token = Self {
            stream: parts.next()?.to_owned(),
            created_ms: parts.next()?.parse().ok()?,
            shard: parts.next()?.parse().ok()?,
            position: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(token)
    }
}

impl LocalStream {
    pub(super) fn read(
        &self,
        token: &IteratorToken,
        limit: usize,
    ) -> Result<GetRecordsOutput, StreamError> {
        let limit = limit.clamp(1, MAX_GET_RECORDS);
        let mut position = token.position;
        let (picked, files, closed_children, remaining_from) = loop {
            // Records before those whose entries are in memory: from the
            // index files of their segments (see `resident`).
            let (evicted, resident_from) = {
                let state = self.shared.state.read().expect("state lock");
                if state.meta.shards.get(token.shard as usize).is_none() {
                    return Err(StreamError::ExpiredIterator(
                        "iterator names an unknown shard".into(),
                    ));
                }
                (state.evicted_from(position), state.resident_from)
            };
            for (base, file) in evicted {
                let index = self.shared.segment_index(base, &file)?;
                let entries = index.shard(token.shard);
                let start = entries.partition_point(|e| e.seq < position);
                let picked = pick(entries[start..].iter(), limit);
                if let Some(last) = picked.last() {
                    let records = read_frames(&picked, |_| &file)?;
                    let behind_from = entries.get(start + picked.len()).unwrap_or(last);
                    return Ok(GetRecordsOutput {
                        records,
                        next_iterator: Some(
                            IteratorToken {
                                position: last.seq + 1,
                                stream: token.stream.clone(),
                                ..*token
                            }
                            .encode(),
                        ),
                        millis_behind_latest: Some(
                            (now_ms() - behind_from.arrival_ms).max(0) as u64
                        ),
                        child_shards: Vec::new(),
                    });
                }
            }
            // None of the shard's records before `resident_from`.
            position = position.max(resident_from);
            let state = self.shared.state.read().expect("state lock");
            if position < state.resident_from {
                // More left memory meanwhile: look in their index files too.
                continue;
            }
            let shard_meta = &state.meta.shards[token.shard as usize];
            let index = &state.shards[token.shard as usize];
            let start = index.partition_point(|e| e.seq < position);
            let picked = pick(index.iter_from(start), limit);
            let files: Vec<Arc<File>> = picked
                .iter()
                .map(|e| state.segments.get(&e.segment).map(|s| s.file.clone()))
                .collect::<Option<_>>()
                .ok_or_else(|| storage("index points at a removed segment"))?;
            let next = start + picked.len();
            let remaining_from = index.get(next).map(|e| e.arrival_ms);
            let children = if shard_meta.ending_seq.is_some() && remaining_from.is_none() {
                Some(
                    state
                        .meta
                        .shards
                        .iter()
                        .filter(|s| {
                            s.parent == Some(token.shard) || s.adjacent_parent == Some(token.shard)
                        })
                        .map(|s| shard_id(s.number))
                        .collect::<Vec<_>>(),
                )
            } else {
                None
            };
            break (picked, files, children, remaining_from);
        };
        let records = read_frames(&picked, |i| &files[i])?;
        let position = picked.last().map_or(position, |e| e.seq + 1);
        let millis_behind_latest = remaining_from.map_or(0, |at| (now_ms() - at).max(0) as u64);
        Ok(GetRecordsOutput {
            records,
            next_iterator: closed_children.is_none().then(|| {
                IteratorToken {
                    position,
                    stream: token.stream.clone(),
                    ..*token
                }
                .encode()
            }),
            millis_behind_latest: Some(millis_behind_latest),
            child_shards: closed_children.unwrap_or_default(),
        })
    }
}

impl LocalStream {
    /// The sequence number of the shard's first record that arrived at `ms`
    /// or later, or of the next record to come when none did. Arrival times
    /// grow with sequence numbers, so the first segment that may hold it is
    /// the first whose newest record arrived at `ms` or later.
    pub(super) fn at_timestamp(&self, shard: u32, ms: i64) -> Result<u64, StreamError> {
        loop {
            let (evicted, resident_from) = {
                let state = self.shared.state.read().expect("state lock");
                let evicted: Vec<_> = state
                    .evicted_from(0)
                    .into_iter()
                    .filter(|(base, _)| state.segments[base].max_arrival_ms >= ms)
                    .collect();
                (evicted, state.resident_from)
            };
            for (base, file) in evicted {
                let index = self.shared.segment_index(base, &file)?;
                let entries = index.shard(shard);
                if let Some(entry) = entries.get(entries.partition_point(|e| e.arrival_ms < ms)) {
                    return Ok(entry.seq);
                }
            }
            let state = self.shared.state.read().expect("state lock");
            if state.resident_from != resident_from {
                // More left memory meanwhile: look in their index files too.
                continue;
            }
            let index = &state.shards[shard as usize];
            let at = index.partition_point(|e| e.arrival_ms < ms);
            return Ok(index.get(at).map_or(state.next_seq, |e| e.seq));
        }
    }
}

/// The entries of one GetRecords page: at most `limit`, and within its
/// byte limit unless the first alone is larger.
fn pick<'a>(entries: impl Iterator<Item = &'a Entry>, limit: usize) -> Vec<Entry> {
    let mut bytes = 0usize;
    let mut picked = Vec::new();
    for entry in entries {
        if picked.len() == limit
            || (bytes + entry.len as usize > MAX_GET_BYTES && !picked.is_empty())
        {
            break;
        }
        bytes += entry.len as usize;
        picked.push(*entry);
    }
    picked
}

/// Reads the picked records' frames, the i-th from `file_of(i)`, checking
/// each against its entry.
fn read_frames<'a>(
    picked: &[Entry],
    file_of: impl Fn(usize) -> &'a File,
) -> Result<Vec<Record>, StreamError> {
    let mut records = Vec::with_capacity(picked.len());
    for (i, entry) in picked.iter().enumerate() {
        let bytes = log::read_at(file_of(i), u64::from(entry.offset), entry.len as usize)
            .map_err(storage)?;
        let (body, _) = log::decode_frame(&bytes)
            .map_err(|e| storage(format!("record {} is damaged: {e:?}", entry.seq)))?;
        if body.seq != entry.seq {
            return Err(storage(format!(
                "index and log disagree at record {}",
                entry.seq
            )));
        }
        records.push(Record {
            sequence_number: SequenceNumber::from_u64(body.seq),
            partition_key: String::from_utf8_lossy(body.key).into_owned().into(),
            data: Bytes::copy_from_slice(body.data),
            arrival_ms: body.arrival_ms,
        });
    }
    Ok(records)
}
