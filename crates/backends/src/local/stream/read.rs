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
        let (picked, files, closed_children, remaining_from) = {
            let state = self.shared.state.read().expect("state lock");
            let shard_meta = state.meta.shards.get(token.shard as usize).ok_or_else(|| {
                StreamError::ExpiredIterator("iterator names an unknown shard".into())
            })?;
            let index = &state.shards[token.shard as usize];
            let start = index.partition_point(|e| e.seq < token.position);
            let mut bytes = 0usize;
            let mut picked = Vec::new();
            for entry in index.iter_from(start) {
                if picked.len() == limit
                    || (bytes + entry.len as usize > MAX_GET_BYTES && !picked.is_empty())
                {
                    break;
                }
                bytes += entry.len as usize;
                picked.push(*entry);
            }
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
            (picked, files, children, remaining_from)
        };
        let mut records = Vec::with_capacity(picked.len());
        for (entry, file) in picked.iter().zip(&files) {
            let bytes =
                log::read_at(file, u64::from(entry.offset), entry.len as usize).map_err(storage)?;
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
        let position = picked.last().map_or(token.position, |e| e.seq + 1);
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
