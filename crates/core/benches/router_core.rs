//! Router core in process: decode headers, match 20 rules, batch per output.
//! Records are the shared sample events as the collector would wrap them,
//! padded to 1 KiB and to 64 KiB; the figure to compare is records/s, which
//! should not depend on the payload size.
//!
//! cargo bench -p sluice-core --bench router_core

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use sluice_core::router::{route_batch, RouterOptions};
use sluice_core::rules::{DeadLetter, Route, RuleSet, Unmatched};
use sluice_core::stream::Record;

#[path = "support/sample.rs"]
mod sample;

const RULES: &str = r#"
[[routes]]
name = "r01"
match = { type = ["login"], region = ["eu"] }
to = ["accounts-eu"]
[[routes]]
name = "r02"
match = { type = ["logout"] }
to = ["accounts"]
[[routes]]
name = "r03"
match = { type = [{ prefix = "admin_" }] }
to = ["admin"]
[[routes]]
name = "r04"
match = { channel = ["kiosk"] }
to = ["kiosk"]
[[routes]]
name = "r05"
match = { tier = [{ equals-ignore-case = "PLATINUM" }] }
to = ["vip"]
[[routes]]
name = "r06"
match = { type = ["error"], severity = [{ numeric = [">=", 3] }] }
to = ["errors"]
[[routes]]
name = "r07"
match = { source = [{ anything-but = ["web", "app"] }] }
to = ["other-sources"]
[[routes]]
name = "r08"
match = { debug = [{ exists = true }] }
to = ["debug"]
[[routes]]
name = "r09"
match = { type = [{ suffix = "_test" }] }
to = ["tests"]
[[routes]]
name = "r10"
match = { region = ["mars"] }
to = ["space"]
[[routes]]
name = "r11"
match = { "$or" = [{ type = ["chargeback"] }, { fraud_score = [{ numeric = [">", 90] }] }] }
to = ["fraud"]
[[routes]]
name = "r12"
match = { type = ["purchase", "refund"] }
to = ["transactions"]
continue = true
[[routes]]
name = "r13"
match = { type = ["purchase"], amount = [{ numeric = [">=", 500] }] }
to = ["big-spenders"]
[[routes]]
name = "r14"
match = { type = ["signup"] }
to = ["accounts"]
[[routes]]
name = "r15"
match = { type = ["add_to_cart", "remove_from_cart"] }
to = ["cart", "clickstream"]
[[routes]]
name = "r16"
match = { type = ["search"], region = [{ wildcard = "*" }] }
to = ["search"]
continue = true
[[routes]]
name = "r17"
match = { type = ["click"], ab_bucket = ["a"] }
to = ["clicks-a"]
continue = true
[[routes]]
name = "r18"
match = { type = ["click"], ab_bucket = ["b"] }
to = ["clicks-b"]
continue = true
[[routes]]
name = "r19"
match = { type = [{ prefix = "page_" }, "click", "search"] }
to = ["clickstream"]
[[routes]]
name = "r20"
match = { type = ["heartbeat"], channel = ["web", "mobile"] }
to = ["heartbeats"]
"#;

fn rules() -> RuleSet {
    let table: toml::Table = toml::from_str(RULES).unwrap();
    let routes: Vec<Route> = table["routes"].clone().try_into().unwrap();
    assert_eq!(routes.len(), 20);
    RuleSet::new(&routes, &Unmatched::default(), &DeadLetter::default())
}

fn records(size: usize) -> Vec<Record> {
    sample::records(size, 10_000)
}

fn bench(c: &mut Criterion) {
    let rules = rules();
    let options = RouterOptions::new("inbound");
    let mut group = c.benchmark_group("router_core");
    for size in [1024usize, 64 * 1024] {
        let all = records(size);
        // 1,000-record batches, as the router reads them.
        let batches: Vec<&[Record]> = all.chunks(1000).collect();
        group.throughput(Throughput::Elements(1000));
        group.bench_with_input(
            BenchmarkId::new("route_batch_1000", format!("{size}B")),
            &batches,
            |b, batches| {
                let mut i = 0;
                b.iter(|| {
                    let batch = route_batch(&rules, &options, batches[i % batches.len()]);
                    i += 1;
                    batch
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
