//! Routing rules: routes tried in order over an envelope's headers, the
//! first match wins unless it says `continue = true`; records no route
//! takes go to `unmatched`, records that are not envelopes to `dead_letter`.
//!
//! Everything is checked while the rule file is deserialized, so a bad file
//! is refused whole, with the line the deserializer points at.

pub mod pattern;

use serde::de::{self, Deserializer};
use serde::Deserialize;

pub use pattern::{Matcher, Pattern};

use crate::envelope::{HeaderValue, Headers};

/// One `[[routes]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Names the route in metrics and errors.
    pub name: String,
    /// The pattern; an empty or absent one matches every record.
    #[serde(rename = "match", default)]
    pub pattern: Pattern,
    /// Output streams, at least one.
    #[serde(deserialize_with = "stream_list")]
    pub to: Vec<String>,
    /// Keep trying later routes after this one matched (fan-out).
    #[serde(rename = "continue", default)]
    pub fan_out: bool,
}

/// Where records go that no route takes.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Unmatched {
    #[serde(deserialize_with = "stream_name")]
    pub to: String,
}

impl Default for Unmatched {
    fn default() -> Self {
        Self {
            to: "unrouted".into(),
        }
    }
}

/// Where records go that cannot be routed (not an envelope, too large).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
    #[serde(deserialize_with = "stream_name")]
    pub to: String,
}

impl Default for DeadLetter {
    fn default() -> Self {
        Self {
            to: "dead-letter".into(),
        }
    }
}

/// Checks a stream name the way Kinesis does: 1 to 128 of `[a-zA-Z0-9_.-]`.
pub fn check_stream_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "stream name {name:?} must be 1 to 128 characters of letters, digits, `_`, `.` and `-`"
        ))
    }
}

fn stream_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let name = String::deserialize(deserializer)?;
    check_stream_name(&name).map_err(de::Error::custom)?;
    Ok(name)
}

fn stream_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(deserializer)?;
    if names.is_empty() {
        return Err(de::Error::custom("`to` names at least one stream"));
    }
    for name in &names {
        check_stream_name(name).map_err(de::Error::custom)?;
    }
    Ok(names)
}

/// Deserializes `[[routes]]`, refusing duplicate route names.
pub fn route_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Route>, D::Error> {
    let routes = Vec::<Route>::deserialize(deserializer)?;
    for (i, route) in routes.iter().enumerate() {
        if route.name.is_empty() {
            return Err(de::Error::custom(format!("routes[{i}]: `name` is empty")));
        }
        if routes[..i].iter().any(|r| r.name == route.name) {
            return Err(de::Error::custom(format!(
                "routes[{i}]: route name {:?} is used twice",
                route.name
            )));
        }
    }
    Ok(routes)
}

/// What the rules decided for one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// At least one route matched.
    Routed,
    /// No route matched: the record goes to the unmatched stream.
    Unmatched,
}

/// A name's length and first seven bytes in one word: equal names have
/// equal fingerprints, and most different names do not.
/// Names up to this long are told apart by their fingerprint alone.
const FINGERPRINT_BYTES: usize = 7;

fn fingerprint(name: &str) -> u64 {
    let bytes = name.as_bytes();
    let mut first = [0u8; 8];
    let taken = bytes.len().min(FINGERPRINT_BYTES);
    first[..taken].copy_from_slice(&bytes[..taken]);
    let first = u64::from_le_bytes(first) & ((1 << 56) - 1);
    ((bytes.len().min(255) as u64) << 56) | first
}

/// Routes compiled for matching: header names interned, stream names
/// numbered, so matching a record does no allocation.
#[derive(Clone, Debug)]
pub struct RuleSet {
    routes: Vec<CompiledRoute>,
    names: Vec<String>,
    /// [`fingerprint`] of each name, to skip most string comparisons.
    fingerprints: Vec<u64>,
    streams: Vec<String>,
    unmatched: usize,
    dead_letter: usize,
    route_names: Vec<String>,
}

#[derive(Clone, Debug)]
struct CompiledRoute {
    pattern: CompiledPattern,
    to: Vec<usize>,
    fan_out: bool,
}

#[derive(Clone, Debug)]
struct CompiledPattern {
    fields: Vec<(usize, Vec<Matcher>)>,
    any_of: Vec<CompiledPattern>,
}

impl CompiledPattern {
    fn compile(pattern: &Pattern, names: &[String]) -> Self {
        let index = |name: &str| names.iter().position(|n| n == name).expect("interned");
        Self {
            fields: pattern
                .fields
                .iter()
                .map(|(name, matchers)| (index(name), matchers.clone()))
                .collect(),
            any_of: pattern
                .any_of
                .iter()
                .map(|p| Self::compile(p, names))
                .collect(),
        }
    }

    fn matches(&self, slots: &[Option<&HeaderValue>]) -> bool {
        self.fields
            .iter()
            .all(|(slot, matchers)| matchers.iter().any(|m| m.matches(slots[*slot])))
            && (self.any_of.is_empty() || self.any_of.iter().any(|p| p.matches(slots)))
    }
}

impl RuleSet {
    pub fn new(routes: &[Route], unmatched: &Unmatched, dead_letter: &DeadLetter) -> Self {
        let mut names: Vec<String> = Vec::new();
        for route in routes {
            for name in route.pattern.header_names() {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_owned());
                }
            }
        }
        let mut streams: Vec<String> = Vec::new();
        let mut stream_index = |name: &str| match streams.iter().position(|s| s == name) {
            Some(i) => i,
            None => {
                streams.push(name.to_owned());
                streams.len() - 1
            }
        };
        let compiled = routes
            .iter()
            .map(|route| CompiledRoute {
                pattern: CompiledPattern::compile(&route.pattern, &names),
                to: route.to.iter().map(|s| stream_index(s)).collect(),
                fan_out: route.fan_out,
            })
            .collect();
        let unmatched = stream_index(&unmatched.to);
        let dead_letter = stream_index(&dead_letter.to);
        Self {
            routes: compiled,
            fingerprints: names.iter().map(|n| fingerprint(n)).collect(),
            names,
            streams,
            unmatched,
            dead_letter,
            route_names: routes.iter().map(|r| r.name.clone()).collect(),
        }
    }

    /// Every stream the rules write to, routes first, then unmatched and dead-letter.
    pub fn streams(&self) -> &[String] {
        &self.streams
    }

    pub fn unmatched_stream(&self) -> usize {
        self.unmatched
    }

    pub fn dead_letter_stream(&self) -> usize {
        self.dead_letter
    }

    pub fn route_names(&self) -> &[String] {
        &self.route_names
    }

    /// Routes one record's headers: fills `targets` with stream indices (each
    /// once) and `matched` with route indices. Returns whether a route matched.
    pub fn route(
        &self,
        headers: &Headers,
        targets: &mut Vec<usize>,
        matched: &mut Vec<usize>,
    ) -> Decision {
        targets.clear();
        matched.clear();
        let mut slots: [Option<&HeaderValue>; 32] = [None; 32];
        let slots: &[Option<&HeaderValue>] = if self.names.len() <= slots.len() {
            for (name, value) in headers.iter() {
                let print = fingerprint(name);
                let found = self
                    .fingerprints
                    .iter()
                    .zip(&self.names)
                    .position(|(p, n)| *p == print && (n.len() <= FINGERPRINT_BYTES || n == name));
                if let Some(i) = found {
                    slots[i] = Some(value);
                }
            }
            &slots[..self.names.len()]
        } else {
            return self.route_many_names(headers, targets, matched);
        };
        self.route_slots(slots, targets, matched)
    }

    fn route_many_names(
        &self,
        headers: &Headers,
        targets: &mut Vec<usize>,
        matched: &mut Vec<usize>,
    ) -> Decision {
        let slots: Vec<Option<&HeaderValue>> = self.names.iter().map(|n| headers.get(n)).collect();
        self.route_slots(&slots, targets, matched)
    }

    fn route_slots(
        &self,
        slots: &[Option<&HeaderValue>],
        targets: &mut Vec<usize>,
        matched: &mut Vec<usize>,
    ) -> Decision {
        for (i, route) in self.routes.iter().enumerate() {
            if route.pattern.matches(slots) {
                matched.push(i);
                for &stream in &route.to {
                    if !targets.contains(&stream) {
                        targets.push(stream);
                    }
                }
                if !route.fan_out {
                    break;
                }
            }
        }
        if targets.is_empty() {
            targets.push(self.unmatched);
            Decision::Unmatched
        } else {
            Decision::Routed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::decode_headers;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(deserialize_with = "route_list")]
        routes: Vec<Route>,
        #[serde(default)]
        unmatched: Unmatched,
        #[serde(default)]
        dead_letter: DeadLetter,
    }

    fn rules(text: &str) -> RuleSet {
        let file: File = toml::from_str(text).unwrap();
        RuleSet::new(&file.routes, &file.unmatched, &file.dead_letter)
    }

    fn targets(rules: &RuleSet, record: &str) -> Vec<String> {
        let headers = decode_headers(record.as_bytes()).unwrap();
        let (mut t, mut m) = (Vec::new(), Vec::new());
        rules.route(&headers, &mut t, &mut m);
        t.iter().map(|&i| rules.streams()[i].clone()).collect()
    }

    const RULES: &str = r#"
[[routes]]
name = "transactions"
match = { type = ["purchase", "refund"] }
to = ["transactions"]
continue = true

[[routes]]
name = "big"
match = { amount = [{ numeric = [">=", 100] }] }
to = ["big-spenders", "transactions"]

[[routes]]
name = "clicks"
match = { type = [{ prefix = "page_" }, "click"] }
to = ["clickstream"]

[[routes]]
name = "never"
match = { type = ["click"] }
to = ["never"]

[unmatched]
to = "other"
"#;

    #[test]
    fn first_match_wins_and_continue_fans_out() {
        let r = rules(RULES);
        assert_eq!(
            targets(&r, r#"{"headers":{"type":"purchase","amount":250}}"#),
            ["transactions", "big-spenders"]
        );
        assert_eq!(
            targets(&r, r#"{"headers":{"type":"purchase","amount":5}}"#),
            ["transactions"]
        );
        assert_eq!(
            targets(&r, r#"{"headers":{"type":"click"}}"#),
            ["clickstream"]
        );
        assert_eq!(targets(&r, r#"{"headers":{"type":"signup"}}"#), ["other"]);
        assert_eq!(r.streams()[r.dead_letter_stream()], "dead-letter");
    }

    #[test]
    fn header_names_sharing_a_prefix_are_told_apart() {
        let r = rules(
            r#"
[[routes]]
name = "long-1"
match = { session_1 = ["x"] }
to = ["one"]
[[routes]]
name = "long-2"
match = { session_2 = ["x"] }
to = ["two"]
[[routes]]
name = "short"
match = { ab = ["x"] }
to = ["short"]
"#,
        );
        assert_eq!(targets(&r, r#"{"headers":{"session_2":"x"}}"#), ["two"]);
        assert_eq!(targets(&r, r#"{"headers":{"session_1":"x"}}"#), ["one"]);
        assert_eq!(targets(&r, r#"{"headers":{"ab":"x"}}"#), ["short"]);
        assert_eq!(
            targets(&r, r#"{"headers":{"ac":"x","abc":"x","a":"x"}}"#),
            ["unrouted"]
        );
    }

    #[test]
    fn bad_files_are_refused_whole_with_line_and_reason() {
        let cases = [
            (
                "[[routes]]\nname = \"a\"\nmatch = { type = [\"x\"] }\nto = []\n",
                "line 4",
                "at least one stream",
            ),
            (
                "[[routes]]\nname = \"a\"\nto = [\"bad name!\"]\n",
                "line 3",
                "stream name",
            ),
            (
                "[[routes]]\nname = \"a\"\nto = [\"x\"]\ncolour = 1\n",
                "line 4",
                "unknown field `colour`",
            ),
            (
                "[[routes]]\nname = \"a\"\nto = [\"x\"]\n[[routes]]\nname = \"a\"\nto = [\"y\"]\n",
                "line 1",
                "used twice",
            ),
            (
                "[[routes]]\nname = \"a\"\nmatch = { t = [{ fuzzy = 1 }] }\nto = [\"x\"]\n",
                "line 3",
                "unknown matcher `fuzzy`",
            ),
            ("[[routes]]\nname = \"a\"\n", "line 1", "missing field `to`"),
        ];
        for (text, line, reason) in cases {
            let err = toml::from_str::<File>(text).err().expect(text).to_string();
            assert!(
                err.contains(line) && err.contains(reason),
                "{text}\n=> {err}"
            );
        }
    }
}
