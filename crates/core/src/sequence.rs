//! Sequence numbers: opaque decimal strings compared as big integers.
//!
//! Kinesis hands out 56-digit numbers, test servers small ones; neither fits
//! an integer type everywhere, so Sluice never converts them except inside
//! the backend that minted them.

use std::cmp::Ordering;
use std::fmt;

/// A sequence number as a backend gave it. Ordered as an unbounded integer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SequenceNumber(String);

impl SequenceNumber {
    /// Accepts a non-empty run of ASCII digits.
    pub fn parse(text: &str) -> Option<Self> {
        Self::from_digits(text.as_bytes())
    }

    /// [`SequenceNumber::parse`] of text given as bytes (as a JSON reader
    /// finds it).
    pub fn from_digits(text: &[u8]) -> Option<Self> {
        if text.is_empty() || text.len() > 128 || !crate::json::all_digits(text) {
            return None;
        }
        String::from_utf8(text.to_vec()).ok().map(Self)
    }

    pub fn from_u64(value: u64) -> Self {
        Self(value.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value as u64 when it fits (backends that mint small numbers).
    pub fn to_u64(&self) -> Option<u64> {
        self.0.parse().ok()
    }

    fn significant(&self) -> &str {
        let trimmed = self.0.trim_start_matches('0');
        if trimmed.is_empty() {
            "0"
        } else {
            trimmed
        }
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.significant(), other.significant());
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SequenceNumber {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value).ok_or_else(|| format!("not a sequence number: {value:?}"))
    }
}

impl From<SequenceNumber> for String {
    fn from(value: SequenceNumber) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compares_as_big_integers() {
        let small = SequenceNumber::parse("9").unwrap();
        let big = SequenceNumber::parse("49590338271490256608559692538361571095921575989136588898")
            .unwrap();
        assert!(small < big);
        assert_eq!(
            SequenceNumber::parse("007")
                .unwrap()
                .cmp(&SequenceNumber::parse("7").unwrap()),
            Ordering::Equal
        );
        assert!(SequenceNumber::parse("").is_none());
        assert!(SequenceNumber::parse("12a").is_none());
    }

    proptest! {
        #[test]
        fn order_matches_integer_order(a: u64, b: u64) {
            let (x, y) = (SequenceNumber::from_u64(a), SequenceNumber::from_u64(b));
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
        }
    }
}
