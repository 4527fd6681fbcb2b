//! A view as declared in `[[views]]`, checked and made ready to use.

use std::time::Duration;

use serde::Deserialize;

use sluice_core::rules::{check_stream_name, Pattern};

/// Most entries `keep` may ask for.
pub const MAX_KEEP: usize = 100;

/// `[[views]]`: an aggregate a consumer application keeps of a stream.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewConfig {
    /// 1 to 64 of `A-Z a-z 0-9 _ -`; the view's URL and its consumer
    /// application (`VIEWS_TABLE-NAME`) are named after it.
    pub name: String,
    /// The stream it reads.
    pub from: String,
    /// Only records whose headers match (the routing rules' pattern syntax).
    #[serde(rename = "match", default)]
    pub pattern: Option<Pattern>,
    pub kind: ViewKind,
    /// sum: the header summed; top: the header or `payload.PATH` counted.
    #[serde(default)]
    pub field: Option<String>,
    /// count, sum, top: one result per value of this header.
    #[serde(default)]
    pub group_by: Option<String>,
    /// count, sum, top: tumbling windows on the event's `ts`, UTC-aligned
    /// (`30s`, `1m`, `1h`, `1d`; default `1m`).
    #[serde(default)]
    pub window: Option<String>,
    /// top: entries answered per window (default 10); latest: records kept
    /// per partition key (default 10). At most 100.
    #[serde(default)]
    pub keep: Option<usize>,
    /// Windows (and latest records) older than this are dropped (default `7d`).
    #[serde(default)]
    pub retention: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ViewKind {
    Count,
    Sum,
    Top,
    Latest,
}

impl ViewKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ViewKind::Count => "count",
            ViewKind::Sum => "sum",
            ViewKind::Top => "top",
            ViewKind::Latest => "latest",
        }
    }
}

/// Where a `top` view's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    Header(String),
    /// A path into the payload, as a JSON pointer.
    Payload(String),
}

/// A checked view.
#[derive(Clone, Debug)]
pub struct ViewSpec {
    pub name: String,
    pub from: String,
    pub pattern: Option<Pattern>,
    pub kind: ViewKind,
    pub field: Option<Field>,
    pub group_by: Option<String>,
    pub window_ms: i64,
    pub keep: usize,
    pub retention: Duration,
}

/// `30s`, `5m`, `1h`, `7d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok().filter(|n| *n > 0)?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

impl ViewConfig {
    /// Checks the entry; errors start with the key they are about, under
    /// `at` (e.g. `views[1]`).
    pub fn check(&self, at: &str) -> Result<ViewSpec, String> {
        let name_ok = (1..=64).contains(&self.name.len())
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_ok {
            return Err(format!(
                "{at}.name: {:?} must be 1 to 64 of A-Z a-z 0-9 _ -",
                self.name
            ));
        }
        check_stream_name(&self.from).map_err(|e| format!("{at}.from: {e}"))?;
        let needs_field = matches!(self.kind, ViewKind::Sum | ViewKind::Top);
        let field = match (&self.field, needs_field) {
            (None, true) => {
                return Err(format!(
                    "{at}.field: a {} view needs the field it reads",
                    self.kind.as_str()
                ))
            }
            (Some(_), false) => {
                return Err(format!(
                    "{at}.field: a {} view reads no field",
                    self.kind.as_str()
                ))
            }
            (None, false) => None,
            (Some(text), true) => {
                Some(parse_field(text, self.kind).map_err(|e| format!("{at}.field: {e}"))?)
            }
        };
        let windowed = self.kind != ViewKind::Latest;
        if !windowed && (self.window.is_some() || self.group_by.is_some()) {
            let key = if self.window.is_some() {
                "window"
            } else {
                "group_by"
            };
            return Err(format!(
                "{at}.{key}: a latest view keeps records per partition key, without windows or groups"
            ));
        }
        if self.group_by.as_deref() == Some("") {
            return Err(format!("{at}.group_by: expected a header name"));
        }
        let window = match &self.window {
            Some(text) => parse_duration(text).ok_or_else(|| {
                format!("{at}.window: {text:?} is not a duration like 30s, 1m, 1h or 1d")
            })?,
            None => Duration::from_secs(60),
        };
        if window > Duration::from_secs(86_400) || 86_400 % window.as_secs() != 0 {
            return Err(format!(
                "{at}.window: windows must divide a day evenly (30s, 1m, 5m, 1h, 1d…), found {}",
                self.window.as_deref().unwrap_or("1m")
            ));
        }
        let keep = self.keep.unwrap_or(10);
        if self.keep.is_some() && !matches!(self.kind, ViewKind::Top | ViewKind::Latest) {
            return Err(format!("{at}.keep: only top and latest views keep entries"));
        }
        if !(1..=MAX_KEEP).contains(&keep) {
            return Err(format!("{at}.keep: expected 1 to {MAX_KEEP}, found {keep}"));
        }
        let retention = match &self.retention {
            Some(text) => parse_duration(text).ok_or_else(|| {
                format!("{at}.retention: {text:?} is not a duration like 1h or 7d")
            })?,
            None => Duration::from_secs(7 * 86_400),
        };
        if retention < window {
            return Err(format!("{at}.retention: shorter than one window"));
        }
        Ok(ViewSpec {
            name: self.name.clone(),
            from: self.from.clone(),
            pattern: self.pattern.clone(),
            kind: self.kind,
            field,
            group_by: self.group_by.clone(),
            window_ms: window.as_millis() as i64,
            keep,
            retention,
        })
    }
}

fn parse_field(text: &str, kind: ViewKind) -> Result<Field, String> {
    match text.strip_prefix("payload.") {
        Some(path) if kind == ViewKind::Top && !path.is_empty() => Ok(Field::Payload(
            path.split('.').fold(String::new(), |pointer, part| {
                pointer + "/" + &part.replace('~', "~0").replace('/', "~1")
            }),
        )),
        Some(_) if kind == ViewKind::Top => Err("payload. needs a path, e.g. payload.page".into()),
        Some(_) => Err("a sum reads a header (numbers), not the payload".into()),
        None if text.is_empty() => Err("expected a header name".into()),
        None => Ok(Field::Header(text.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_written() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        for bad in ["", "m", "0m", "1", "1w", "-1m", "1.5h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn payload_fields_become_json_pointers() {
        assert_eq!(
            parse_field("payload.page.path", ViewKind::Top),
            Ok(Field::Payload("/page/path".into()))
        );
        assert_eq!(
            parse_field("region", ViewKind::Sum),
            Ok(Field::Header("region".into()))
        );
        assert!(parse_field("payload.x", ViewKind::Sum).is_err());
    }
}
