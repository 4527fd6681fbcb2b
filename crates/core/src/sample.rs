//! A deterministic sample of a made-up shop's website events, in the shape a
//! sender posts them to the collector (`{"type", "headers", "partition_key",
//! "ts", "payload"}`), for the demo, the tests and the benchmarks.
//!
//! The mix follows what a shop's site sends: about 45% page views, 25%
//! clicks, 8% each add-to-cart and searches, 7% heartbeats, 4% purchases,
//! 2% signups and 1% refunds, from 2,000 users (`u-1` … `u-2000`, the
//! partition keys). Every event has the headers `region`, `channel` and
//! `ab_bucket`; about a fifth also `tier`; purchases and refunds carry their
//! `amount` (the sum of their items) and sometimes a `coupon`. Events are
//! 160 to 510 bytes as NDJSON lines, 20 ms apart on average from 2026-11-28
//! 14:00 UTC unless told otherwise.
//!
//! The same seed gives the same events on every machine and in every
//! version that keeps this module's tables: the random numbers come from
//! ChaCha8, whose output is fixed by its specification. Tests compute what
//! they expect from the events generated, never from numbers typed in.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

/// The seed the demo and the benchmarks use unless told otherwise.
pub const DEFAULT_SEED: u64 = 1;

/// 2026-11-28T14:00:00Z, where a sample's clock starts by default.
pub const DEFAULT_START_MS: i64 = 1_795_874_400_000;

/// Partition keys are `u-1` … `u-USERS`.
pub const USERS: u32 = 2_000;

/// Event types with their weight per 20,000 events.
pub const MIX: [(&str, u32); 8] = [
    ("page_view", 9_104),
    ("click", 4_974),
    ("add_to_cart", 1_619),
    ("search", 1_565),
    ("heartbeat", 1_384),
    ("purchase", 780),
    ("signup", 390),
    ("refund", 184),
];

const REGIONS: [&str; 4] = ["us", "eu", "apac", "latam"];
const CHANNELS: [&str; 2] = ["web", "mobile"];
const TIERS: [&str; 3] = ["silver", "gold", "platinum"];
const COUPONS: [&str; 2] = ["WINTER10", "WELCOME"];
const PAGES: [&str; 10] = [
    "https://shop.example.com/",
    "https://shop.example.com/shop",
    "https://shop.example.com/shop/shoes",
    "https://shop.example.com/shop/shoes/trail-runner-2",
    "https://shop.example.com/shop/jackets",
    "https://shop.example.com/search",
    "https://shop.example.com/cart",
    "https://shop.example.com/checkout",
    "https://shop.example.com/account",
    "https://shop.example.com/blog/winter-guide",
];
const REFERRERS: [&str; 3] = [
    "",
    "https://www.google.com/",
    "https://news.example.org/article/123",
];
const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Mobile Safari/537.36",
];
const SCREENS: [&str; 3] = ["1920x1080", "1440x900", "390x844"];
const LOCALES: [&str; 4] = ["en-US", "de-DE", "fr-FR", "ja-JP"];
const CLICKS: [(&str, &str); 5] = [
    (".nav-shoes", "Shoes"),
    (".banner", "Winter sale"),
    ("#add", "Add to cart"),
    ("#buy", "Buy now"),
    ("#search-btn", "Search"),
];
const QUERIES: [&str; 5] = [
    "trail shoes",
    "rain jacket",
    "socks",
    "winter boots size 43",
    "gift card",
];
const PAYMENTS: [&str; 3] = ["card", "paypal", "invoice"];
const PLANS: [&str; 2] = ["free", "plus"];
const SIGNUP_SOURCES: [&str; 3] = ["organic", "newsletter", "checkout"];

/// One generated event.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleEvent {
    /// The event type (`type`).
    pub kind: &'static str,
    pub partition_key: String,
    /// Event time, milliseconds since the Unix epoch (`ts`).
    pub ts_ms: i64,
    /// `region`, `channel`, `ab_bucket`, then sometimes `amount`, `tier`, `coupon`.
    pub headers: Map<String, Value>,
    pub payload: Value,
}

impl SampleEvent {
    /// The event as one JSON object, the way a sender posts it.
    pub fn to_json(&self) -> String {
        let mut line = String::with_capacity(512);
        line.push_str("{\"type\":");
        line.push_str(&Value::from(self.kind).to_string());
        line.push_str(",\"headers\":");
        line.push_str(&Value::Object(self.headers.clone()).to_string());
        line.push_str(",\"partition_key\":");
        line.push_str(&Value::from(self.partition_key.as_str()).to_string());
        line.push_str(",\"ts\":\"");
        line.push_str(&format_ts(self.ts_ms));
        line.push_str("\",\"payload\":");
        line.push_str(&self.payload.to_string());
        line.push('}');
        line
    }

    /// A header's value as text (strings as they are, other values as JSON).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    /// The `amount` header of purchases and refunds.
    pub fn amount(&self) -> Option<f64> {
        self.headers.get("amount").and_then(Value::as_f64)
    }
}

/// An endless, deterministic stream of sample events.
pub struct Sample {
    rng: ChaCha8Rng,
    clock_ms: i64,
}

impl Sample {
    /// The sample of `seed`, its clock starting at [`DEFAULT_START_MS`].
    pub fn new(seed: u64) -> Self {
        Self::starting_at(seed, DEFAULT_START_MS)
    }

    /// The sample of `seed`, its clock starting at `start_ms`.
    pub fn starting_at(seed: u64, start_ms: i64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            clock_ms: start_ms,
        }
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.rng.random_range(0..items.len())]
    }

    fn kind(&mut self) -> &'static str {
        let total: u32 = MIX.iter().map(|(_, w)| w).sum();
        let mut roll = self.rng.random_range(0..total);
        for (kind, weight) in MIX {
            if roll < weight {
                return kind;
            }
            roll -= weight;
        }
        unreachable!("the roll is below the total weight")
    }

    /// A price in cents, as euros with two decimals.
    fn euros(&mut self, cents: std::ops::Range<u32>) -> f64 {
        f64::from(self.rng.random_range(cents)) / 100.0
    }

    fn sku(&mut self) -> String {
        format!("SKU-{:05}", self.rng.random_range(1..=300))
    }

    fn order(&mut self) -> (f64, Value) {
        let count = self.rng.random_range(1..=5);
        let mut total_cents = 0u64;
        let items: Vec<Value> = (0..count)
            .map(|_| {
                let cents = self.rng.random_range(508..40_000u32);
                let qty = self.rng.random_range(1..=2u32);
                total_cents += u64::from(cents * qty);
                json!({"sku": self.sku(), "price": f64::from(cents) / 100.0, "qty": qty})
            })
            .collect();
        let amount = total_cents as f64 / 100.0;
        let order_id = format!("o-{:012x}", self.rng.random::<u64>() >> 16);
        let payment = self.pick(&PAYMENTS);
        let payload = json!({
            "order_id": order_id, "amount": amount, "currency": "EUR",
            "items": items, "payment": payment,
        });
        (amount, payload)
    }
}

impl Iterator for Sample {
    type Item = SampleEvent;

    fn next(&mut self) -> Option<SampleEvent> {
        self.clock_ms += self.rng.random_range(0..=40);
        let kind = self.kind();
        let user = self.rng.random_range(1..=USERS);
        let mut headers = Map::new();
        headers.insert("region".into(), self.pick(&REGIONS).into());
        headers.insert("channel".into(), self.pick(&CHANNELS).into());
        headers.insert(
            "ab_bucket".into(),
            (if self.rng.random_bool(0.5) { "a" } else { "b" }).into(),
        );
        let url = self.pick(&PAGES);
        let payload = match kind {
            "page_view" => json!({
                "url": url,
                "title": "Example Shop",
                "referrer": self.pick(&REFERRERS),
                "user_agent": self.pick(&USER_AGENTS),
                "screen": self.pick(&SCREENS),
                "locale": self.pick(&LOCALES),
            }),
            "click" => {
                let (element, text) = CLICKS[self.rng.random_range(0..CLICKS.len())];
                json!({"url": url, "element": element, "text": text})
            }
            "add_to_cart" => json!({
                "sku": self.sku(),
                "price": self.euros(508..40_000),
                "qty": self.rng.random_range(1..=3),
                "currency": "EUR",
            }),
            "search" => json!({
                "query": self.pick(&QUERIES),
                "results": self.rng.random_range(0..120),
            }),
            "heartbeat" => json!({"visible_ms": self.rng.random_range(1_000..60_000)}),
            "signup" => json!({
                "plan": self.pick(&PLANS),
                "source": self.pick(&SIGNUP_SOURCES),
            }),
            "purchase" | "refund" => {
                let (amount, payload) = self.order();
                headers.insert("amount".into(), amount.into());
                payload
            }
            other => unreachable!("{other} is not in the mix"),
        };
        if self.rng.random_bool(0.195) {
            headers.insert("tier".into(), self.pick(&TIERS).into());
        }
        if matches!(kind, "purchase" | "refund") && self.rng.random_bool(0.19) {
            headers.insert("coupon".into(), self.pick(&COUPONS).into());
        }
        Some(SampleEvent {
            kind,
            partition_key: format!("u-{user}"),
            ts_ms: self.clock_ms,
            headers,
            payload,
        })
    }
}

/// `events` sample events of `seed` as NDJSON, one event a line.
pub fn ndjson(seed: u64, events: usize) -> String {
    let mut text = String::with_capacity(events * 320);
    for event in Sample::new(seed).take(events) {
        text.push_str(&event.to_json());
        text.push('\n');
    }
    text
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
fn format_ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn the_same_seed_gives_the_same_events_and_another_seed_others() {
        assert_eq!(ndjson(7, 500), ndjson(7, 500));
        assert_ne!(ndjson(7, 500), ndjson(8, 500));
    }

    #[test]
    fn the_sample_has_the_shape_of_a_shops_events() {
        let events: Vec<SampleEvent> = Sample::new(DEFAULT_SEED).take(20_000).collect();
        let mut kinds: HashMap<&str, u32> = HashMap::new();
        let mut users = HashSet::new();
        let mut previous_ts = DEFAULT_START_MS;
        for event in &events {
            *kinds.entry(event.kind).or_default() += 1;
            users.insert(event.partition_key.clone());
            assert!(event.ts_ms >= previous_ts, "time only moves forward");
            previous_ts = event.ts_ms;

            let line = event.to_json();
            assert!(
                (160..=510).contains(&line.len()),
                "{} bytes: {line}",
                line.len()
            );
            let parsed: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(parsed["type"], event.kind);
            assert_eq!(parsed["ts"], format_ts(event.ts_ms));
            for name in ["region", "channel", "ab_bucket"] {
                assert!(event.headers.contains_key(name), "{name} in {line}");
            }
            if matches!(event.kind, "purchase" | "refund") {
                let items = event.payload["items"].as_array().unwrap();
                let cents: f64 = items
                    .iter()
                    .map(|i| i["price"].as_f64().unwrap() * i["qty"].as_f64().unwrap())
                    .sum();
                assert!((event.amount().unwrap() - cents).abs() < 0.005, "{line}");
            } else {
                assert!(event.amount().is_none() && event.header("coupon").is_none());
            }
        }
        // Each type within a fifth of its weight; every type present.
        for (kind, weight) in MIX {
            let got = f64::from(kinds[kind]);
            let want = f64::from(weight);
            assert!(
                (got - want).abs() <= want / 5.0 + 10.0,
                "{kind}: {got} for {want}"
            );
        }
        assert!(users.len() > 1_950 && users.len() <= USERS as usize);
        let tiers = events.iter().filter(|e| e.header("tier").is_some()).count();
        assert!(
            (3_000..5_000).contains(&tiers),
            "{tiers} events with a tier"
        );
        let span_s = (previous_ts - DEFAULT_START_MS) / 1000;
        assert!(
            (300..500).contains(&span_s),
            "20,000 events over {span_s} s"
        );
    }

    #[test]
    fn timestamps_are_utc_with_milliseconds() {
        assert_eq!(format_ts(DEFAULT_START_MS), "2026-11-28T14:00:00.000Z");
        assert_eq!(
            format_ts(DEFAULT_START_MS + 61_005),
            "2026-11-28T14:01:01.005Z"
        );
    }
}
