//! Rule files come from users: any text must parse or be refused with an
//! error, never panic; rules that load must route any headers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use sluice_core::envelope::decode_headers;
use sluice_core::rules::{route_list, DeadLetter, Route, RuleSet, Unmatched};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default, deserialize_with = "route_list")]
    routes: Vec<Route>,
    #[serde(default)]
    unmatched: Unmatched,
    #[serde(default)]
    dead_letter: DeadLetter,
}

const RECORD: &[u8] = br#"{"headers":{"type":"purchase","source":"web","amount":42.5,"region":"eu","flag":true,"url":"https://a.example.com/x/cart"}}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(file) = toml::from_str::<RuleFile>(text) else { return };
    let rules = RuleSet::new(&file.routes, &file.unmatched, &file.dead_letter);
    let headers = decode_headers(RECORD).unwrap();
    let (mut targets, mut matched) = (Vec::new(), Vec::new());
    rules.route(&headers, &mut targets, &mut matched);
    assert!(!targets.is_empty(), "every record goes somewhere");
});
