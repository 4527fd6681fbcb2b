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
            let events: Vec<(usize, &[u8])> = body
                .split(|b| *b == b'\n')
                .enumerate()
                .map(|(i, line)| (i, line.strip_suffix(b"\r").unwrap_or(line)))
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
