//! The inner loops of Sluice's hand-written JSON readers (envelope headers,
//! the Lambda event): where the plain part of a string ends, found eight
//! bytes at a time.
//!
//! Each eight-byte word is tested for the bytes that end a plain run with
//! the classic "has a zero byte" arithmetic: a flag can be set wrongly only
//! above a byte that is truly flagged, so the lowest flag always marks the
//! first byte sought.

const fn splat(byte: u8) -> u64 {
    u64::from_ne_bytes([byte; 8])
}

const HIGH: u64 = splat(0x80);

/// The high bit of each byte of `word` below `limit` (at most 0x80); exact
/// for the lowest one.
#[inline]
fn below(word: u64, limit: u8) -> u64 {
    word.wrapping_sub(splat(limit)) & !word & HIGH
}

/// The high bit of each byte of `word` equal to `byte`; exact for the
/// lowest one.
#[inline]
fn equal(word: u64, byte: u8) -> u64 {
    below(word ^ splat(byte), 1)
}

#[inline]
fn word_at(data: &[u8], pos: usize) -> Option<u64> {
    let chunk = data.get(pos..pos + 8)?;
    Some(u64::from_le_bytes(chunk.try_into().expect("eight bytes")))
}

/// Position of the first byte at or after `pos` that is a quote, a
/// backslash, a control character or not ASCII; `data.len()` if none is.
#[inline]
pub fn plain_ascii_end(data: &[u8], mut pos: usize) -> usize {
    while let Some(word) = word_at(data, pos) {
        let flags = equal(word, b'"') | equal(word, b'\\') | below(word, 0x20) | (word & HIGH);
        if flags != 0 {
            return pos + (flags.trailing_zeros() / 8) as usize;
        }
        pos += 8;
    }
    while pos < data.len() && !matches!(data[pos], b'"' | b'\\' | 0..=0x1f | 0x80..) {
        pos += 1;
    }
    pos
}

/// Position of the first quote or backslash at or after `pos`.
#[inline]
pub fn quote_or_backslash(data: &[u8], pos: usize) -> Option<usize> {
    // Most strings are short: a few words before handing long ones to the
    // vectorised search.
    let mut at = pos;
    for _ in 0..4 {
        let Some(word) = word_at(data, at) else {
            break;
        };
        let flags = equal(word, b'"') | equal(word, b'\\');
        if flags != 0 {
            return Some(at + (flags.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = data.get(at..)?;
    memchr::memchr2(b'"', b'\\', rest).map(|found| at + found)
}

/// Whether every byte of `text` is an ASCII digit.
#[inline]
pub fn all_digits(text: &[u8]) -> bool {
    let mut words = text.chunks_exact(8);
    // A byte is a digit when its high nibble is 3 and adding 6 to it keeps
    // it so (low nibbles A to F carry into the high one; no byte carries
    // into the next).
    let digits = words.by_ref().all(|chunk| {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        word & splat(0xf0) == splat(0x30)
            && word.wrapping_add(splat(0x06)) & splat(0xf0) == splat(0x30)
    });
    digits && words.remainder().iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plain_ascii_end_bytewise(data: &[u8], pos: usize) -> usize {
        data[pos..]
            .iter()
            .position(|b| matches!(b, b'"' | b'\\' | 0..=0x1f | 0x80..))
            .map_or(data.len(), |i| pos + i)
    }

    fn quote_or_backslash_bytewise(data: &[u8], pos: usize) -> Option<usize> {
        data[pos..]
            .iter()
            .position(|b| matches!(b, b'"' | b'\\'))
            .map(|i| pos + i)
    }

    #[test]
    fn finds_the_first_special_byte() {
        assert_eq!(plain_ascii_end(b"abcdefghij\"k", 0), 10);
        assert_eq!(plain_ascii_end(b"abc\x01\"", 0), 3);
        assert_eq!(plain_ascii_end("abcdefgh\u{e9}\"".as_bytes(), 2), 8);
        assert_eq!(plain_ascii_end(b"abc", 0), 3);
        assert_eq!(quote_or_backslash(b"abc\\\"", 0), Some(3));
        assert_eq!(quote_or_backslash(b"abc", 0), None);
        let long = [b"x".repeat(100), b"\"".to_vec()].concat();
        assert_eq!(quote_or_backslash(&long, 1), Some(100));
        assert!(all_digits(
            b"49590338271490256608559692538361571095921575989136588898"
        ));
        for bad in [
            &b"4959033827149025660855969253836157109592157598913658889/"[..],
            b"0123456:",
            b"12a4",
        ] {
            assert!(!all_digits(bad));
        }
    }

    proptest! {
        #[test]
        fn words_agree_with_bytes(
            data in proptest::collection::vec(
                prop_oneof![12 => Just(b'a'), 1 => Just(b'"'), 1 => Just(b'\\'), 1 => Just(0x1fu8),
                            1 => Just(0x20u8), 1 => Just(0x7f), 1 => Just(0x80), 1 => Just(0xff),
                            1 => Just(0x01), 1 => Just(0x21)],
                0..80,
            ),
            pos in 0usize..80,
        ) {
            let pos = pos.min(data.len());
            prop_assert_eq!(plain_ascii_end(&data, pos), plain_ascii_end_bytewise(&data, pos));
            prop_assert_eq!(quote_or_backslash(&data, pos), quote_or_backslash_bytewise(&data, pos));
        }

        #[test]
        fn digit_words_agree_with_bytes(
            text in proptest::collection::vec(
                prop_oneof![20 => b'0'..=b'9', 1 => any::<u8>()],
                0..40,
            ),
        ) {
            prop_assert_eq!(all_digits(&text), text.iter().all(u8::is_ascii_digit));
        }
    }
}
