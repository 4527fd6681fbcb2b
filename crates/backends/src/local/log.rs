//! The on-disk log of one stream: append-only segment files holding the
//! records of all its shards, each record framed with its length and a
//! CRC-32C, and an index file written for each segment once it is sealed.
//!
//! Frame: `len: u32 LE | crc32c(body): u32 LE | body`, where
//! `body = seq: u64 | arrival_ms: i64 | shard: u32 | key_len: u16 | key | data`.
//!
//! Recovery reads the index files of sealed segments and scans only the
//! last segment, cutting a torn or corrupt tail there. A bad frame in a
//! sealed segment is an error: those were acknowledged and must not vanish.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes before the body of a frame.
pub const FRAME_HEADER: usize = 8;
/// Bytes of a body before the partition key.
const BODY_FIXED: usize = 8 + 8 + 4 + 2;

/// Where a record lives and what the index needs to find it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub shard: u32,
    pub seq: u64,
    pub arrival_ms: i64,
    pub segment: u64,
    pub offset: u32,
    /// Length of the whole frame.
    pub len: u32,
}

/// A decoded frame body.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameBody<'a> {
    pub seq: u64,
    pub arrival_ms: i64,
    pub shard: u32,
    pub key: &'a [u8],
    pub data: &'a [u8],
}

/// Appends one frame to `out` and returns its length.
pub fn encode_frame(
    out: &mut Vec<u8>,
    seq: u64,
    arrival_ms: i64,
    shard: u32,
    key: &str,
    data: &[u8],
) -> usize {
    let body_len = BODY_FIXED + key.len() + data.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&arrival_ms.to_le_bytes());
    out.extend_from_slice(&shard.to_le_bytes());
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(data);
    let crc = crc32c::crc32c(&out[start + FRAME_HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// Why a frame could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The bytes end before the frame does.
    Truncated,
    /// The checksum or the layout is wrong.
    Corrupt(&'static str),
}

/// Decodes the frame at the start of `bytes`; returns it and its length.
pub fn decode_frame(bytes: &[u8]) -> Result<(FrameBody<'_>, usize), FrameError> {
    if bytes.len() < FRAME_HEADER {
        return Err(FrameError::Truncated);
    }
    let body_len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if body_len < BODY_FIXED {
        return Err(FrameError::Corrupt("frame shorter than its fixed fields"));
    }
    let Some(body) = bytes.get(FRAME_HEADER..FRAME_HEADER + body_len) else {
        return Err(FrameError::Truncated);
    };
    if crc32c::crc32c(body) != crc {
        return Err(FrameError::Corrupt("checksum mismatch"));
    }
    let seq = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
    let arrival_ms = i64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
    let shard = u32::from_le_bytes(body[16..20].try_into().expect("4 bytes"));
    let key_len = u16::from_le_bytes(body[20..22].try_into().expect("2 bytes")) as usize;
    if BODY_FIXED + key_len > body.len() {
        return Err(FrameError::Corrupt("partition key runs past the frame"));
    }
    let key = &body[BODY_FIXED..BODY_FIXED + key_len];
    let data = &body[BODY_FIXED + key_len..];
    Ok((
        FrameBody {
            seq,
            arrival_ms,
            shard,
            key,
            data,
        },
        FRAME_HEADER + body_len,
    ))
}

pub fn segment_path(dir: &Path, base_seq: u64) -> PathBuf {
    dir.join(format!("{base_seq:020}.log"))
}

pub fn index_path(dir: &Path, base_seq: u64) -> PathBuf {
    dir.join(format!("{base_seq:020}.idx"))
}

/// Base sequence numbers of the segments in `dir`, ascending.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".log") {
            if let Ok(base) = stem.parse::<u64>() {
                bases.push(base);
            }
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Scans a segment's frames. Returns the entries read and the length of the
/// valid prefix, plus what stopped the scan if it did not reach the end.
pub fn scan_segment(bytes: &[u8], segment: u64) -> (Vec<Entry>, usize, Option<FrameError>) {
    let mut entries = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        match decode_frame(&bytes[pos..]) {
            Ok((body, len)) => {
                entries.push(Entry {
                    shard: body.shard,
                    seq: body.seq,
                    arrival_ms: body.arrival_ms,
                    segment,
                    offset: pos as u32,
                    len: len as u32,
                });
                pos += len;
            }
            Err(e) => return (entries, pos, Some(e)),
        }
    }
    (entries, pos, None)
}

const INDEX_ENTRY: usize = 4 + 8 + 8 + 4 + 4;

/// Writes a sealed segment's index durably (temporary file, fsync, rename).
pub fn write_index<'a>(
    disk: &Disk,
    dir: &Path,
    base_seq: u64,
    entries: impl IntoIterator<Item = &'a Entry>,
) -> io::Result<()> {
    // The count first, filled in once the entries are written.
    let mut buf = vec![0; 4];
    let mut count: u32 = 0;
    for e in entries {
        count += 1;
        buf.extend_from_slice(&e.shard.to_le_bytes());
        buf.extend_from_slice(&e.seq.to_le_bytes());
        buf.extend_from_slice(&e.arrival_ms.to_le_bytes());
        buf.extend_from_slice(&e.offset.to_le_bytes());
        buf.extend_from_slice(&e.len.to_le_bytes());
    }
    buf[..4].copy_from_slice(&count.to_le_bytes());
    let crc = crc32c::crc32c(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    disk.write_atomically(dir, &index_path(dir, base_seq), &buf)
}

/// Reads a sealed segment's index; `None` if it is missing or damaged.
pub fn read_index(dir: &Path, base_seq: u64) -> Option<Vec<Entry>> {
    let bytes = fs::read(index_path(dir, base_seq)).ok()?;
    if bytes.len() < 8 {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let count = u32::from_le_bytes(body[0..4].try_into().ok()?) as usize;
    if body.len() != 4 + count * INDEX_ENTRY {
        return None;
    }
    Some(
        body[4..]
            .chunks_exact(INDEX_ENTRY)
            .map(|c| Entry {
                shard: u32::from_le_bytes(c[0..4].try_into().expect("4")),
                seq: u64::from_le_bytes(c[4..12].try_into().expect("8")),
                arrival_ms: i64::from_le_bytes(c[12..20].try_into().expect("8")),
                segment: base_seq,
                offset: u32::from_le_bytes(c[20..24].try_into().expect("4")),
                len: u32::from_le_bytes(c[24..28].try_into().expect("4")),
            })
            .collect(),
    )
}

/// Where the log's data becomes durable: every sync of the log goes
/// through here and nowhere else, so a [`SyncWitness`] sees each one and a
/// test can replay a crash that loses whatever was not synced.
#[derive(Clone, Default)]
pub struct Disk {
    witness: Option<Arc<dyn SyncWitness>>,
}

/// Told of every sync as it completes.
pub trait SyncWitness: Send + Sync {
    /// The first `len` bytes of `path` are durable.
    fn data(&self, path: &Path, len: u64);
    /// The entries of `dir`, as they are now, are durable.
    fn dir(&self, dir: &Path);
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("witnessed", &self.witness.is_some())
            .finish()
    }
}

impl Disk {
    /// Syncs told to `witness`.
    pub fn witnessed(witness: Arc<dyn SyncWitness>) -> Self {
        Self {
            witness: Some(witness),
        }
    }

    /// Makes the first `len` bytes of `file` (at `path`) durable, with what
    /// is needed to read them back, not its other metadata (fdatasync).
    pub fn sync_data(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        file.sync_data()?;
        if let Some(w) = &self.witness {
            w.data(path, len);
        }
        Ok(())
    }

    /// Makes `file` (at `path`, `len` bytes long) and all its metadata durable.
    pub fn sync_all(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        file.sync_all()?;
        if let Some(w) = &self.witness {
            w.data(path, len);
        }
        Ok(())
    }

    /// Makes a directory's entries (new, renamed or removed files) durable.
    pub fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()?;
        if let Some(w) = &self.witness {
            w.dir(dir);
        }
        Ok(())
    }

    /// Replaces `path` with `bytes` so that a crash leaves the old or the new
    /// content, never a mix.
    pub fn write_atomically(&self, dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        {
            let mut file = File::create(&tmp)?;
            file.write_all(bytes)?;
            self.sync_all(&file, &tmp, bytes.len() as u64)?;
        }
        fs::rename(&tmp, path)?;
        self.sync_dir(dir)?;
        // The synced content now has the new name.
        if let Some(w) = &self.witness {
            w.data(path, bytes.len() as u64);
        }
        Ok(())
    }
}

/// Zeros written ahead of the data when a small commit needs more room.
pub const ZERO_AHEAD: u64 = 1024 * 1024;
/// Commits up to this size make room with zeros; larger ones grow the file.
const SMALL_COMMIT: usize = 64 * 1024;

/// An open segment file for appending.
///
/// A sync of data that grows a file must also write the file's new size
/// (on ext4, a second write the sync waits for), and that doubles the cost
/// of the small commits a collector makes. So a small commit that needs
/// room writes [`ZERO_AHEAD`] bytes of zeros past its data in the same
/// sync; the commits that follow overwrite them, and their syncs write data
/// only. Large commits grow the file: zeros ahead of them would cost as
/// much copying as their data, on a writer thread short of CPU rather
/// than of disk there. The zeros past the data are a clean end to recovery
/// (see [`clean_tail`]); a sealed segment is cut to its data.
pub struct ActiveSegment {
    pub base_seq: u64,
    pub file: File,
    /// Bytes of records.
    pub len: u64,
    /// Bytes of the file: records, then zeros.
    allocated: u64,
    path: PathBuf,
    pub disk: Disk,
    zeros: Vec<u8>,
}

impl ActiveSegment {
    pub fn create(disk: &Disk, dir: &Path, base_seq: u64) -> io::Result<Self> {
        let path = segment_path(dir, base_seq);
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)?;
        disk.sync_dir(dir)?;
        Ok(Self::new(disk, path, base_seq, file, 0, 0))
    }

    /// Reopens a recovered segment holding `valid_len` bytes of records.
    /// What follows them is kept when it is zeros (room made earlier) and
    /// cut otherwise.
    pub fn reopen(
        disk: &Disk,
        dir: &Path,
        base_seq: u64,
        valid_len: u64,
        tail_is_zeros: bool,
    ) -> io::Result<Self> {
        let path = segment_path(dir, base_seq);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let file_len = file.metadata()?.len();
        let allocated = if tail_is_zeros {
            file_len
        } else {
            if file_len != valid_len {
                file.set_len(valid_len)?;
                disk.sync_all(&file, &path, valid_len)?;
            }
            valid_len
        };
        Ok(Self::new(disk, path, base_seq, file, valid_len, allocated))
    }

    fn new(
        disk: &Disk,
        path: PathBuf,
        base_seq: u64,
        file: File,
        len: u64,
        allocated: u64,
    ) -> Self {
        Self {
            base_seq,
            file,
            len,
            allocated,
            path,
            disk: disk.clone(),
            zeros: Vec::new(),
        }
    }

    /// Appends and syncs; on failure cuts the file back to where it was.
    pub fn append_durably(&mut self, bytes: &[u8]) -> io::Result<()> {
        let end = self.len + bytes.len() as u64;
        let room = (end > self.allocated && bytes.len() <= SMALL_COMMIT).then_some(ZERO_AHEAD);
        let result = self.file.write_all_at(bytes, self.len).and_then(|()| {
            if let Some(room) = room {
                self.zeros.resize(room as usize, 0);
                self.file.write_all_at(&self.zeros, end)?;
            }
            // Zeros made room for by an earlier sync are durable too.
            let synced = (end + room.unwrap_or(0)).max(self.allocated);
            self.disk.sync_data(&self.file, &self.path, synced)?;
            Ok(synced)
        });
        match result {
            Ok(allocated) => {
                self.len = end;
                self.allocated = allocated;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                self.allocated = self.len;
                Err(e)
            }
        }
    }

    /// Cuts the zeros past the records, for a segment being sealed.
    pub fn seal(&mut self) -> io::Result<()> {
        if self.allocated > self.len {
            self.file.set_len(self.len)?;
            self.disk.sync_all(&self.file, &self.path, self.len)?;
            self.allocated = self.len;
        }
        Ok(())
    }
}

/// Whether what follows a segment's valid records is zeros only: room a
/// small commit made (see [`ActiveSegment`]), not a torn write.
pub fn clean_tail(tail: &[u8]) -> bool {
    tail.iter().all(|&b| b == 0)
}

/// Reads `len` bytes at `offset` of an open segment.
pub fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_detect_damage() {
        let mut buf = Vec::new();
        let len = encode_frame(&mut buf, 42, 1_700_000_000_000, 3, "user-1", b"hello");
        let (body, read) = decode_frame(&buf).unwrap();
        assert_eq!(read, len);
        assert_eq!(
            (body.seq, body.shard, body.key, body.data),
            (42, 3, &b"user-1"[..], &b"hello"[..])
        );
        for cut in 0..buf.len() {
            assert_eq!(
                decode_frame(&buf[..cut]).unwrap_err(),
                FrameError::Truncated
            );
        }
        for i in FRAME_HEADER..buf.len() {
            let mut damaged = buf.clone();
            damaged[i] ^= 0x40;
            assert!(matches!(
                decode_frame(&damaged),
                Err(FrameError::Corrupt(_))
            ));
        }
    }

    #[test]
    fn scan_stops_at_a_torn_tail() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 1, 0, 0, "a", b"one");
        let first = buf.len();
        encode_frame(&mut buf, 2, 0, 1, "b", b"two");
        let (entries, valid, err) = scan_segment(&buf[..buf.len() - 1], 0);
        assert_eq!(entries.len(), 1);
        assert_eq!(valid, first);
        assert_eq!(err, Some(FrameError::Truncated));
    }

    #[test]
    fn index_files_round_trip_and_reject_damage() {
        let dir = tempfile::tempdir().unwrap();
        let entries = vec![
            Entry {
                shard: 0,
                seq: 5,
                arrival_ms: 9,
                segment: 5,
                offset: 0,
                len: 40,
            },
            Entry {
                shard: 1,
                seq: 6,
                arrival_ms: 9,
                segment: 5,
                offset: 40,
                len: 41,
            },
        ];
        write_index(&Disk::default(), dir.path(), 5, entries.iter()).unwrap();
        assert_eq!(read_index(dir.path(), 5).unwrap(), entries);
        let path = index_path(dir.path(), 5);
        let mut bytes = fs::read(&path).unwrap();
        bytes[6] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert_eq!(read_index(dir.path(), 5), None);
    }
}
