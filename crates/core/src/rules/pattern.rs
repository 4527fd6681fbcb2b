//! Event patterns over header values, in the syntax AWS users know from
//! EventBridge and Lambda event filtering.
//!
//! A pattern maps header names to a list of allowed values or matchers; a
//! header matches when any entry of its list does, and the pattern matches
//! when every header does. `$or` holds a list of patterns, one of which must
//! match besides the fields next to it.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::envelope::HeaderValue;

/// An exact value in a pattern.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Str(String),
    Num(f64),
    Bool(bool),
}

impl Scalar {
    fn equals(&self, value: &HeaderValue) -> bool {
        match (self, value) {
            (Scalar::Str(a), HeaderValue::Str(b)) => same_text(a, b),
            (Scalar::Num(a), HeaderValue::Num(b)) => a == b,
            (Scalar::Bool(a), HeaderValue::Bool(b)) => a == b,
            _ => false,
        }
    }
}

/// String equality that rules out most different strings by length and
/// first byte before comparing the rest.
fn same_text(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.as_bytes().first() == b.as_bytes().first() && a == b
}

/// A `*` glob, with `\*` and `\\` for literal characters.
#[derive(Clone, Debug, PartialEq)]
pub struct Wildcard {
    /// Literal pieces between the stars (one piece: no star).
    pieces: Vec<String>,
}

impl Wildcard {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = vec![String::new()];
        let mut chars = text.chars().peekable();
        let mut previous_star = false;
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(escaped @ ('*' | '\\')) => {
                        pieces.last_mut().expect("pieces").push(escaped);
                        previous_star = false;
                    }
                    _ => return Err(format!("wildcard {text:?}: `\\` must escape `*` or `\\`")),
                },
                '*' => {
                    if previous_star {
                        return Err(format!(
                            "wildcard {text:?}: consecutive `*` are not allowed"
                        ));
                    }
                    pieces.push(String::new());
                    previous_star = true;
                }
                other => {
                    pieces.last_mut().expect("pieces").push(other);
                    previous_star = false;
                }
            }
        }
        Ok(Self { pieces })
    }

    pub fn matches(&self, text: &str) -> bool {
        if self.pieces.len() == 1 {
            return self.pieces[0] == text;
        }
        let first = &self.pieces[0];
        let last = self.pieces.last().expect("pieces");
        if !text.starts_with(first.as_str()) {
            return false;
        }
        let mut rest = &text[first.len()..];
        if rest.len() < last.len() || !rest.ends_with(last.as_str()) {
            return false;
        }
        rest = &rest[..rest.len() - last.len()];
        // Greedy leftmost matching of the middle pieces is exact for `*` globs.
        for piece in &self.pieces[1..self.pieces.len() - 1] {
            match rest.find(piece.as_str()) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        true
    }
}

/// A numeric range: one or two comparisons.
#[derive(Clone, Debug, PartialEq)]
pub struct Numeric {
    lower: Option<(f64, bool)>,
    upper: Option<(f64, bool)>,
}

impl Numeric {
    pub fn matches(&self, value: f64) -> bool {
        let above = match self.lower {
            Some((bound, inclusive)) => value > bound || (inclusive && value == bound),
            None => true,
        };
        let below = match self.upper {
            Some((bound, inclusive)) => value < bound || (inclusive && value == bound),
            None => true,
        };
        above && below
    }
}

/// What `anything-but` excludes.
#[derive(Clone, Debug, PartialEq)]
pub enum AnythingBut {
    Values(Vec<Scalar>),
    Prefix(String),
    Suffix(String),
    EqualsIgnoreCase(Vec<String>),
    Wildcard(Vec<Wildcard>),
}

/// One entry of a header's list.
#[derive(Clone, Debug, PartialEq)]
pub enum Matcher {
    Exact(Scalar),
    Prefix(String),
    Suffix(String),
    /// Holds the lowercased text.
    EqualsIgnoreCase(String),
    Wildcard(Wildcard),
    Exists(bool),
    AnythingBut(AnythingBut),
    Numeric(Numeric),
}

pub const MATCHER_NAMES: &str =
    "prefix, suffix, equals-ignore-case, wildcard, exists, anything-but, numeric";

fn eq_ignore_case(lowered: &str, text: &str) -> bool {
    if text.is_ascii() && lowered.is_ascii() {
        lowered.eq_ignore_ascii_case(text)
    } else {
        text.to_lowercase() == lowered
    }
}

impl Matcher {
    /// Whether the header's value (absent: `None`) satisfies this entry.
    pub fn matches(&self, value: Option<&HeaderValue>) -> bool {
        if let Matcher::Exists(expected) = self {
            return value.is_some() == *expected;
        }
        let Some(value) = value else {
            return false;
        };
        let text = value.as_str();
        match self {
            Matcher::Exact(scalar) => scalar.equals(value),
            Matcher::Prefix(p) => text.is_some_and(|t| t.starts_with(p.as_str())),
            Matcher::Suffix(s) => text.is_some_and(|t| t.ends_with(s.as_str())),
            Matcher::EqualsIgnoreCase(lowered) => text.is_some_and(|t| eq_ignore_case(lowered, t)),
            Matcher::Wildcard(w) => text.is_some_and(|t| w.matches(t)),
            Matcher::Numeric(range) => matches!(value, HeaderValue::Num(n) if range.matches(*n)),
            Matcher::AnythingBut(but) => !match but {
                AnythingBut::Values(values) => values.iter().any(|v| v.equals(value)),
                AnythingBut::Prefix(p) => text.is_some_and(|t| t.starts_with(p.as_str())),
                AnythingBut::Suffix(s) => text.is_some_and(|t| t.ends_with(s.as_str())),
                AnythingBut::EqualsIgnoreCase(values) => {
                    text.is_some_and(|t| values.iter().any(|l| eq_ignore_case(l, t)))
                }
                AnythingBut::Wildcard(globs) => {
                    text.is_some_and(|t| globs.iter().any(|w| w.matches(t)))
                }
            },
            Matcher::Exists(_) => unreachable!("handled above"),
        }
    }
}

/// A pattern over headers, as written in a rule file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pattern {
    pub fields: Vec<(String, Vec<Matcher>)>,
    pub any_of: Vec<Pattern>,
}

impl Pattern {
    /// Matches with a header lookup function.
    pub fn matches<'v, F>(&self, lookup: &F) -> bool
    where
        F: Fn(&str) -> Option<&'v HeaderValue<'v>>,
    {
        self.fields.iter().all(|(name, matchers)| {
            let value = lookup(name);
            matchers.iter().any(|m| m.matches(value))
        }) && (self.any_of.is_empty() || self.any_of.iter().any(|p| p.matches(lookup)))
    }

    /// Every header name the pattern reads, including inside `$or`.
    pub fn header_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.fields.iter().map(|(n, _)| n.as_str()).collect();
        for p in &self.any_of {
            names.extend(p.header_names());
        }
        names
    }
}

// ---- parsing -----------------------------------------------------------

/// A JSON/TOML scalar or a one-key table, before it becomes a matcher.
enum Raw {
    Str(String),
    Num(f64),
    Bool(bool),
    List(Vec<Raw>),
    Table(Vec<(String, Raw)>),
}

impl Raw {
    fn describe(&self) -> &'static str {
        match self {
            Raw::Str(_) => "a string",
            Raw::Num(_) => "a number",
            Raw::Bool(_) => "a boolean",
            Raw::List(_) => "a list",
            Raw::Table(_) => "a table",
        }
    }
    fn scalar(self) -> Result<Scalar, String> {
        match self {
            Raw::Str(s) => Ok(Scalar::Str(s)),
            Raw::Num(n) => Ok(Scalar::Num(n)),
            Raw::Bool(b) => Ok(Scalar::Bool(b)),
            other => Err(format!(
                "expected a string, number or boolean, found {}",
                other.describe()
            )),
        }
    }
    fn string(self, what: &str) -> Result<String, String> {
        match self {
            Raw::Str(s) => Ok(s),
            other => Err(format!(
                "`{what}` takes a string, found {}",
                other.describe()
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawVisitor;
        impl<'de> Visitor<'de> for RawVisitor {
            type Value = Raw;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value or a matcher table")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
                Ok(Raw::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
                Ok(Raw::Str(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
                Ok(Raw::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
                Ok(Raw::Num(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
                Ok(Raw::Num(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
                Ok(Raw::Num(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Raw::List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Raw>()? {
                    entries.push((k, v));
                }
                Ok(Raw::Table(entries))
            }
        }
        deserializer.deserialize_any(RawVisitor)
    }
}

fn parse_numeric(raw: Raw) -> Result<Numeric, String> {
    let Raw::List(items) = raw else {
        return Err("`numeric` takes a list such as [\">\", 0, \"<=\", 5]".into());
    };
    if items.len() != 2 && items.len() != 4 {
        return Err(
            "`numeric` takes one or two comparisons, e.g. [\">=\", 10] or [\">\", 0, \"<\", 5]"
                .into(),
        );
    }
    let mut range = Numeric {
        lower: None,
        upper: None,
    };
    let mut iter = items.into_iter();
    while let (Some(op), Some(value)) = (iter.next(), iter.next()) {
        let op = op.string("numeric operator")?;
        let Raw::Num(value) = value else {
            return Err(format!(
                "`numeric`: operator {op:?} must be followed by a number"
            ));
        };
        if !value.is_finite() {
            return Err("`numeric` bounds must be finite".into());
        }
        let (slot, bound) = match op.as_str() {
            ">" => (&mut range.lower, (value, false)),
            ">=" => (&mut range.lower, (value, true)),
            "<" => (&mut range.upper, (value, false)),
            "<=" => (&mut range.upper, (value, true)),
            "=" => {
                if range.lower.is_some() || range.upper.is_some() {
                    return Err("`numeric`: \"=\" stands alone".into());
                }
                range.lower = Some((value, true));
                range.upper = Some((value, true));
                continue;
            }
            other => {
                return Err(format!(
                    "`numeric`: unknown operator {other:?} (expected <, <=, =, >=, >)"
                ))
            }
        };
        if slot.is_some() {
            return Err("`numeric`: give at most one lower and one upper bound".into());
        }
        *slot = Some(bound);
    }
    if let (Some((lo, _)), Some((hi, _))) = (range.lower, range.upper) {
        if lo > hi {
            return Err("`numeric`: the lower bound is above the upper bound".into());
        }
    }
    Ok(range)
}

fn non_empty(text: String, what: &str) -> Result<String, String> {
    if text.is_empty() {
        Err(format!("`{what}` takes a non-empty string"))
    } else {
        Ok(text)
    }
}

fn parse_anything_but(raw: Raw) -> Result<AnythingBut, String> {
    match raw {
        Raw::List(items) => {
            if items.is_empty() {
                return Err("`anything-but` needs at least one value".into());
            }
            Ok(AnythingBut::Values(
                items
                    .into_iter()
                    .map(Raw::scalar)
                    .collect::<Result<_, _>>()?,
            ))
        }
        Raw::Table(mut entries) => {
            if entries.len() != 1 {
                return Err(
                    "`anything-but` takes one of prefix, suffix, equals-ignore-case, wildcard"
                        .into(),
                );
            }
            let (name, value) = entries.pop().expect("one entry");
            let list = |value: Raw| -> Vec<Raw> {
                match value {
                    Raw::List(items) => items,
                    other => vec![other],
                }
            };
            match name.as_str() {
                "prefix" => Ok(AnythingBut::Prefix(non_empty(value.string("prefix")?, "prefix")?)),
                "suffix" => Ok(AnythingBut::Suffix(non_empty(value.string("suffix")?, "suffix")?)),
                "equals-ignore-case" => Ok(AnythingBut::EqualsIgnoreCase(
                    list(value)
                        .into_iter()
                        .map(|v| v.string("equals-ignore-case").map(|s| s.to_lowercase()))
                        .collect::<Result<_, _>>()?,
                )),
                "wildcard" => Ok(AnythingBut::Wildcard(
                    list(value)
                        .into_iter()
                        .map(|v| v.string("wildcard").and_then(|s| Wildcard::parse(&s)))
                        .collect::<Result<_, _>>()?,
                )),
                other => Err(format!(
                    "`anything-but` does not take `{other}` (expected prefix, suffix, equals-ignore-case or wildcard)"
                )),
            }
        }
        scalar => Ok(AnythingBut::Values(vec![scalar.scalar()?])),
    }
}

fn parse_matcher(raw: Raw) -> Result<Matcher, String> {
    let Raw::Table(mut entries) = raw else {
        return raw.scalar().map(Matcher::Exact);
    };
    if entries.len() != 1 {
        return Err(format!(
            "a matcher table has exactly one key, one of {MATCHER_NAMES}; found {}",
            entries.len()
        ));
    }
    let (name, value) = entries.pop().expect("one entry");
    match name.as_str() {
        "prefix" => Ok(Matcher::Prefix(non_empty(
            value.string("prefix")?,
            "prefix",
        )?)),
        "suffix" => Ok(Matcher::Suffix(non_empty(
            value.string("suffix")?,
            "suffix",
        )?)),
        "equals-ignore-case" => Ok(Matcher::EqualsIgnoreCase(
            value.string("equals-ignore-case")?.to_lowercase(),
        )),
        "wildcard" => Ok(Matcher::Wildcard(Wildcard::parse(
            &value.string("wildcard")?,
        )?)),
        "exists" => match value {
            Raw::Bool(b) => Ok(Matcher::Exists(b)),
            other => Err(format!(
                "`exists` takes true or false, found {}",
                other.describe()
            )),
        },
        "anything-but" => parse_anything_but(value).map(Matcher::AnythingBut),
        "numeric" => parse_numeric(value).map(Matcher::Numeric),
        other => Err(format!(
            "unknown matcher `{other}` (expected one of {MATCHER_NAMES})"
        )),
    }
}

fn parse_pattern(entries: Vec<(String, Raw)>) -> Result<Pattern, String> {
    let mut pattern = Pattern::default();
    for (name, value) in entries {
        if name == "$or" {
            let Raw::List(alternatives) = value else {
                return Err("`$or` takes a list of patterns".into());
            };
            if alternatives.len() < 2 {
                return Err("`$or` takes at least two patterns".into());
            }
            for alternative in alternatives {
                let Raw::Table(entries) = alternative else {
                    return Err("each `$or` entry is a pattern table".into());
                };
                pattern.any_of.push(parse_pattern(entries)?);
            }
            continue;
        }
        if name.is_empty() {
            return Err("header names are not empty".into());
        }
        let items = match value {
            Raw::List(items) => items,
            other => {
                return Err(format!(
                    "header `{name}`: expected a list of values or matchers, e.g. {name} = [\"a\", {{ prefix = \"b\" }}], found {}",
                    other.describe()
                ))
            }
        };
        if items.is_empty() {
            return Err(format!("header `{name}`: an empty list matches nothing"));
        }
        let matchers = items
            .into_iter()
            .map(parse_matcher)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("header `{name}`: {e}"))?;
        pattern.fields.push((name, matchers));
    }
    Ok(pattern)
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Raw::deserialize(deserializer)? {
            Raw::Table(entries) => parse_pattern(entries).map_err(de::Error::custom),
            other => Err(de::Error::custom(format!(
                "a pattern is a table of header names, found {}",
                other.describe()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::borrow::Cow;

    fn pattern(toml_text: &str) -> Pattern {
        #[derive(Deserialize)]
        struct Wrapper {
            r#match: Pattern,
        }
        toml::from_str::<Wrapper>(toml_text).unwrap().r#match
    }

    fn pattern_err(toml_text: &str) -> String {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Wrapper {
            r#match: Pattern,
        }
        toml::from_str::<Wrapper>(toml_text)
            .unwrap_err()
            .to_string()
    }

    fn check(p: &Pattern, headers: &[(&str, HeaderValue<'static>)]) -> bool {
        let lookup = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
        p.matches(&lookup)
    }

    fn s(text: &'static str) -> HeaderValue<'static> {
        HeaderValue::Str(Cow::Borrowed(text))
    }

    #[test]
    fn exact_values_any_of_list_all_of_fields() {
        let p = pattern(r#"match = { type = ["purchase", "refund"], source = ["web"] }"#);
        assert!(check(&p, &[("type", s("refund")), ("source", s("web"))]));
        assert!(!check(&p, &[("type", s("refund")), ("source", s("app"))]));
        assert!(!check(&p, &[("type", s("refund"))]));
        assert!(!check(&p, &[("type", s("click")), ("source", s("web"))]));
    }

    #[test]
    fn values_are_type_sensitive() {
        let p = pattern(r#"match = { n = [5], flag = [true] }"#);
        assert!(check(
            &p,
            &[
                ("n", HeaderValue::Num(5.0)),
                ("flag", HeaderValue::Bool(true))
            ]
        ));
        assert!(!check(
            &p,
            &[("n", s("5")), ("flag", HeaderValue::Bool(true))]
        ));
        assert!(!check(
            &p,
            &[("n", HeaderValue::Num(5.0)), ("flag", s("true"))]
        ));
    }

    #[test]
    fn string_matchers() {
        let p = pattern(r#"match = { type = [{ prefix = "page_" }, { suffix = "_cart" }] }"#);
        assert!(check(&p, &[("type", s("page_view"))]));
        assert!(check(&p, &[("type", s("add_to_cart"))]));
        assert!(!check(&p, &[("type", s("click"))]));
        let p = pattern(r#"match = { region = [{ equals-ignore-case = "EU" }] }"#);
        assert!(check(&p, &[("region", s("eu"))]));
        assert!(check(&p, &[("region", s("Eu"))]));
        assert!(!check(&p, &[("region", s("us"))]));
        let p = pattern(r#"match = { url = [{ wildcard = "https://*.example.com/*/cart" }] }"#);
        assert!(check(
            &p,
            &[("url", s("https://shop.example.com/a/b/cart"))]
        ));
        assert!(!check(&p, &[("url", s("https://shop.example.org/a/cart"))]));
    }

    #[test]
    fn exists_and_anything_but() {
        let p = pattern(r#"match = { coupon = [{ exists = true }] }"#);
        assert!(check(&p, &[("coupon", s("X"))]));
        assert!(!check(&p, &[]));
        let p = pattern(r#"match = { coupon = [{ exists = false }] }"#);
        assert!(check(&p, &[]));
        assert!(!check(&p, &[("coupon", s("X"))]));
        let p = pattern(r#"match = { type = [{ anything-but = ["heartbeat", "ping"] }] }"#);
        assert!(check(&p, &[("type", s("click"))]));
        assert!(!check(&p, &[("type", s("ping"))]));
        assert!(!check(&p, &[]), "anything-but needs the header to be there");
        let p = pattern(r#"match = { type = [{ anything-but = { prefix = "page_" } }] }"#);
        assert!(check(&p, &[("type", s("click"))]));
        assert!(!check(&p, &[("type", s("page_view"))]));
    }

    #[test]
    fn numeric_ranges() {
        let p = pattern(r#"match = { amount = [{ numeric = [">", 0, "<=", 100] }] }"#);
        assert!(check(&p, &[("amount", HeaderValue::Num(100.0))]));
        assert!(check(&p, &[("amount", HeaderValue::Num(0.5))]));
        assert!(!check(&p, &[("amount", HeaderValue::Num(0.0))]));
        assert!(!check(&p, &[("amount", s("50"))]));
        let p = pattern(r#"match = { amount = [{ numeric = ["=", 3.5] }] }"#);
        assert!(check(&p, &[("amount", HeaderValue::Num(3.5))]));
        assert!(!check(&p, &[("amount", HeaderValue::Num(3.0))]));
    }

    #[test]
    fn or_of_patterns() {
        let p = pattern(
            r#"match = { source = ["web"], "$or" = [{ type = ["purchase"] }, { amount = [{ numeric = [">=", 1000] }] }] }"#,
        );
        assert!(check(&p, &[("source", s("web")), ("type", s("purchase"))]));
        assert!(check(
            &p,
            &[
                ("source", s("web")),
                ("type", s("click")),
                ("amount", HeaderValue::Num(5000.0))
            ]
        ));
        assert!(!check(&p, &[("source", s("web")), ("type", s("click"))]));
        assert!(!check(&p, &[("source", s("app")), ("type", s("purchase"))]));
    }

    #[test]
    fn bad_patterns_are_rejected_with_a_reason_and_line() {
        let cases = [
            (
                r#"match = { type = [{ regex = "a.*" }] }"#,
                "unknown matcher `regex`",
            ),
            (r#"match = { type = "purchase" }"#, "expected a list"),
            (r#"match = { type = [] }"#, "empty list"),
            (
                r#"match = { amount = [{ numeric = [">", "x"] }] }"#,
                "followed by a number",
            ),
            (
                r#"match = { amount = [{ numeric = [">", 5, "<", 1] }] }"#,
                "lower bound is above",
            ),
            (
                r#"match = { amount = [{ numeric = ["~", 5] }] }"#,
                "unknown operator",
            ),
            (
                r#"match = { url = [{ wildcard = "a**b" }] }"#,
                "consecutive",
            ),
            (r#"match = { c = [{ exists = "yes" }] }"#, "true or false"),
            (
                r#"match = { c = [{ prefix = "a", suffix = "b" }] }"#,
                "exactly one key",
            ),
            (r#"match = { "$or" = [{ a = ["x"] }] }"#, "at least two"),
        ];
        for (text, expected) in cases {
            let err = pattern_err(&format!("\n{text}"));
            assert!(err.contains(expected), "{text}: {err}");
            assert!(err.contains("line 2"), "{text}: {err}");
        }
    }

    proptest! {
        #[test]
        fn prefix_and_suffix_agree_with_std(text in ".{0,12}", affix in ".{1,4}") {
            let value = HeaderValue::Str(Cow::Owned(text.clone()));
            prop_assert_eq!(Matcher::Prefix(affix.clone()).matches(Some(&value)), text.starts_with(&affix));
            prop_assert_eq!(Matcher::Suffix(affix.clone()).matches(Some(&value)), text.ends_with(&affix));
            prop_assert!(!Matcher::Prefix(affix).matches(None));
        }

        #[test]
        fn anything_but_is_the_negation_of_exact(text in "[a-c]{0,3}", excluded in proptest::collection::vec("[a-c]{0,3}", 1..4)) {
            let value = HeaderValue::Str(Cow::Owned(text.clone()));
            let exact = excluded.iter().any(|e| Matcher::Exact(Scalar::Str(e.clone())).matches(Some(&value)));
            let but = Matcher::AnythingBut(AnythingBut::Values(excluded.into_iter().map(Scalar::Str).collect()));
            prop_assert_eq!(but.matches(Some(&value)), !exact);
        }

        #[test]
        fn wildcard_agrees_with_a_reference_matcher(text in "[ab*]{0,10}", glob in "[ab]{0,3}(\\*[ab]{0,3}){0,3}") {
            fn reference(p: &[u8], t: &[u8]) -> bool {
                match p.split_first() {
                    None => t.is_empty(),
                    Some((b'*', rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
                    Some((c, rest)) => t.first() == Some(c) && reference(rest, &t[1..]),
                }
            }
            prop_assume!(!glob.contains("**"));
            // Stars in the text are literal characters there.
            let wildcard = Wildcard::parse(&glob).unwrap();
            prop_assert_eq!(wildcard.matches(&text), reference(glob.as_bytes(), text.as_bytes()));
        }

        #[test]
        fn numeric_agrees_with_comparisons(value in -1e6f64..1e6, lo in -1e6f64..1e6, width in 0f64..1e6, lo_inc: bool, hi_inc: bool) {
            let hi = lo + width;
            let range = Numeric { lower: Some((lo, lo_inc)), upper: Some((hi, hi_inc)) };
            let expected = (if lo_inc { value >= lo } else { value > lo }) && (if hi_inc { value <= hi } else { value < hi });
            prop_assert_eq!(range.matches(value), expected);
        }

        #[test]
        fn equals_ignore_case_agrees_with_lowercasing(a in "[a-zA-Zé É]{0,6}", b in "[a-zA-Zé É]{0,6}") {
            let m = Matcher::EqualsIgnoreCase(a.to_lowercase());
            let value = HeaderValue::Str(Cow::Owned(b.clone()));
            prop_assert_eq!(m.matches(Some(&value)), a.to_lowercase() == b.to_lowercase());
        }
    }
}
