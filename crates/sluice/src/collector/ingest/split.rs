//! Splitting a body into the raw text of each event: one JSON object, an
//! array of them, NDJSON, or `text/plain` holding either.

use super::*;

/// Splits a body into the raw text of each event.
pub(super) fn split(body: &[u8], format: BodyFormat) -> Result<Vec<(usize, &[u8])>, BodyError> {
    let format = match format {
        BodyFormat::Text => match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'[') => BodyFormat::Json,
            _ => BodyFormat::Ndjson,
        },
        other => other,
    };
    match format {
        BodyFormat::Ndjson => {
            let ends = memchr::memchr_iter(b'\n', body).chain([body.len()]);
            let mut start = 0;
            let events: Vec<(usize, &[u8])> = ends
                .map(|end| {
                    let line = &body[start..end];
                    start = end + 1;
                    line.strip_suffix(b"\r").unwrap_or(line)
                })
                .enumerate()
                .filter(|(_, line)| line.iter().any(|b| !b.is_ascii_whitespace()))
                .collect();
            if events.is_empty() {
                Err(BodyError::Empty)
            } else {
                Ok(events)
            }
        }
        BodyFormat::Json => {
            let first = body
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .ok_or(BodyError::Empty)?;
            match first {
                b'{' => Ok(vec![(0, body)]),
                b'[' => {
                    let items: Vec<&RawValue> = serde_json::from_slice(body)
                        .map_err(|e| BodyError::NotJson(e.to_string()))?;
                    if items.is_empty() {
                        return Err(BodyError::Empty);
                    }
                    // A RawValue borrows from the body, so its bytes are a sub-slice of it.
                    Ok(items
                        .into_iter()
                        .map(|raw| raw.get().as_bytes())
                        .enumerate()
                        .collect())
                }
                _ => match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                    Ok(_) => Err(BodyError::NotEventOrArray),
                    Err(e) => Err(BodyError::NotJson(e.to_string())),
                },
            }
        }
        BodyFormat::Text => unreachable!("text is read as JSON or NDJSON above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// NDJSON lines are numbered as the body's lines, CRLF or LF, and
        /// blank lines are skipped.
        #[test]
        fn ndjson_lines_keep_their_numbers(
            lines in proptest::collection::vec("[ a{}\r\n]{0,6}", 0..8),
        ) {
            let body = lines.concat();
            let want: Vec<(usize, &[u8])> = body
                .as_bytes()
                .split(|b| *b == b'\n')
                .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
                .enumerate()
                .filter(|(_, line)| line.iter().any(|b| !b.is_ascii_whitespace()))
                .collect();
            match split(body.as_bytes(), BodyFormat::Ndjson) {
                Ok(events) => proptest::prop_assert_eq!(events, want),
                Err(e) => {
                    proptest::prop_assert_eq!(e, BodyError::Empty);
                    proptest::prop_assert!(want.is_empty());
                }
            }
        }
    }
}
