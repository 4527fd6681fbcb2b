//! Kinesis hash keys: the MD5 of a partition key read as a 128-bit unsigned
//! big-endian integer, and the even division of the key space into shards.

use md5::{Digest, Md5};

/// The hash key Kinesis assigns to a partition key.
pub fn partition_hash(partition_key: &str) -> u128 {
    let digest = Md5::digest(partition_key.as_bytes());
    u128::from_be_bytes(digest.into())
}

/// Parses an explicit hash key (a decimal string in 0..2^128).
pub fn parse_hash_key(text: &str) -> Option<u128> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u128>().ok()
}

/// Hash-key ranges (inclusive) for `count` shards evenly covering the space,
/// as CreateStream lays them out.
pub fn even_ranges(count: u32) -> Vec<(u128, u128)> {
    assert!(count > 0, "a stream has at least one shard");
    let step = u128::MAX / u128::from(count);
    (0..count)
        .map(|i| {
            let start = step * u128::from(i);
            let end = if i + 1 == count {
                u128::MAX
            } else {
                step * u128::from(i + 1) - 1
            };
            (start, end)
        })
        .collect()
}

/// A hasher for keys that are already uniform hashes (64 bits of an MD5, a
/// keyed SipHash): their bits pass through instead of being hashed again.
#[derive(Clone, Copy, Debug, Default)]
pub struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }

    fn write_u128(&mut self, key: u128) {
        self.0 = (key as u64) ^ ((key >> 64) as u64);
    }
}

/// Builds [`Prehashed`] hashers, for maps and sets of hashed keys.
pub type BuildPrehashed = std::hash::BuildHasherDefault<Prehashed>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_of_partition_key_is_big_endian() {
        // md5("a") = 0cc175b9c0f1b6a831c399e269772661
        assert_eq!(partition_hash("a"), 0x0cc175b9c0f1b6a831c399e269772661u128);
    }

    #[test]
    fn even_ranges_cover_the_space_without_gaps() {
        for n in [1u32, 2, 3, 4, 7, 8, 100] {
            let ranges = even_ranges(n);
            assert_eq!(ranges.len(), n as usize);
            assert_eq!(ranges[0].0, 0);
            assert_eq!(ranges.last().unwrap().1, u128::MAX);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].1 + 1, pair[1].0);
            }
        }
    }

    #[test]
    fn hash_keys_parse_only_decimal_in_range() {
        assert_eq!(parse_hash_key("0"), Some(0));
        assert_eq!(
            parse_hash_key("340282366920938463463374607431768211455"),
            Some(u128::MAX)
        );
        assert_eq!(
            parse_hash_key("340282366920938463463374607431768211456"),
            None
        );
        assert_eq!(parse_hash_key("-1"), None);
        assert_eq!(parse_hash_key(""), None);
    }
}
