//! Opening a stream's directory after a stop or a crash: its meta, its
//! segments (indexes of sealed ones, a scan of the last, a torn tail cut),
//! and a writer that continues where the log ends.

use super::*;

pub(super) fn recover(
    dir: &Path,
    options: &LocalStreamOptions,
) -> Result<LocalStream, StreamError> {
    let meta_bytes = fs::read(dir.join("meta.json")).map_err(storage)?;
    let meta: StreamMeta = serde_json::from_slice(&meta_bytes)
        .map_err(|e| storage(format!("{}: {e}", dir.join("meta.json").display())))?;
    meta.validate()
        .map_err(|e| storage(format!("{}: {e}", dir.join("meta.json").display())))?;
    let bases = log::list_segments(dir).map_err(storage)?;
    let mut shards: Vec<Entries> = meta.shards.iter().map(|_| Entries::default()).collect();
    let mut segments = BTreeMap::new();
    let mut next_seq = meta
        .shards
        .iter()
        .map(|s| s.ending_seq.map_or(s.starting_seq, |e| e + 1))
        .max()
        .unwrap_or(0);
    let mut active = None;
    for (i, &base) in bases.iter().enumerate() {
        let last = i + 1 == bases.len();
        let path = log::segment_path(dir, base);
        let entries = match (last, log::read_index(dir, base)) {
            (false, Some(entries)) => entries,
            _ => {
                let bytes = fs::read(&path).map_err(storage)?;
                let (entries, valid, error) = log::scan_segment(&bytes, base);
                let zeros = log::clean_tail(&bytes[valid..]);
                match (error, last) {
                    (None, _) => {}
                    (Some(_), true) if zeros => {}
                    (Some(e), true) => tracing::warn!(
                        segment = %path.display(), valid_bytes = valid, cut_bytes = bytes.len() - valid,
                        reason = ?e, "cut a torn tail from the last segment"
                    ),
                    (Some(e), false) => {
                        return Err(storage(format!(
                            "{}: damaged at byte {valid} ({e:?}); it holds acknowledged records, refusing to serve it",
                            path.display()
                        )))
                    }
                }
                if !last {
                    // Sealed before a stop that came before its index was
                    // written: written now, so the next start reads it.
                    if let Err(e) = log::write_index(&options.disk, dir, base, entries.iter()) {
                        tracing::warn!(segment = %path.display(), error = %e, "could not write a sealed segment's index; it is scanned at each start");
                    }
                }
                if last {
                    active = Some(
                        ActiveSegment::reopen(&options.disk, dir, base, valid as u64, zeros)
                            .map_err(storage)?,
                    );
                }
                entries
            }
        };
        let mut max_arrival_ms = i64::MIN;
        for entry in entries {
            let Some(shard) = shards.get_mut(entry.shard as usize) else {
                return Err(storage(format!(
                    "{}: record for unknown shard {}",
                    path.display(),
                    entry.shard
                )));
            };
            next_seq = next_seq.max(entry.seq + 1);
            max_arrival_ms = max_arrival_ms.max(entry.arrival_ms);
            shard.push(entry);
        }
        next_seq = next_seq.max(base);
        let file = File::open(&path).map_err(storage)?;
        segments.insert(
            base,
            SegmentInfo {
                file: Arc::new(file),
                max_arrival_ms,
                evicted: None,
            },
        );
    }
    let active = match active {
        Some(active) => active,
        None => {
            let active = ActiveSegment::create(&options.disk, dir, next_seq).map_err(storage)?;
            let file = File::open(log::segment_path(dir, next_seq)).map_err(storage)?;
            segments.insert(
                next_seq,
                SegmentInfo {
                    file: Arc::new(file),
                    max_arrival_ms: i64::MIN,
                    evicted: None,
                },
            );
            active
        }
    };
    let last_arrival = shards
        .iter()
        .filter_map(|s| s.back())
        .map(|e| e.arrival_ms)
        .max()
        .unwrap_or(0);
    let active_entries: Vec<Entry> = shards
        .iter()
        .flat_map(|s| s.iter().filter(|e| e.segment == active.base_seq).copied())
        .collect();
    let shared = Arc::new(Shared {
        name: meta.name.clone(),
        disk: options.disk.clone(),
        dir: dir.to_owned(),
        state: RwLock::new(State {
            meta,
            shards,
            segments,
            active_base: active.base_seq,
            indexing: BTreeSet::new(),
            resident_from: 0,
            next_seq,
        }),
        resident_records: options.resident_records,
        loaded: Loaded::default(),
    });
    shared
        .state
        .write()
        .expect("state lock")
        .evict(options.resident_records);
    Ok(start_writer(
        shared,
        active,
        next_seq,
        last_arrival,
        active_entries,
        options.segment_bytes,
    ))
}
