//! Conformance suites: one per backend trait, run against every backend.
//!
//! Each check is a public async function taking the backend under test and
//! a name prefix unique to the run, so the suites can run against shared
//! servers. The `stream_conformance!` and `table_conformance!` macros turn
//! them into one test each for a given backend fixture. Resharding checks
//! are listed apart, for servers that do not implement splits correctly.

pub mod servers;
pub mod stream;
pub mod table;

/// Expands to one `#[tokio::test]` per named stream check. `$fixture` is an
/// async expression giving `(Arc<dyn StreamBackend>, guard)`.
#[macro_export]
macro_rules! stream_conformance {
    ($fixture:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let (backend, _guard) = $fixture.await;
                $crate::conformance::stream::$check(backend, &$crate::conformance::unique_prefix()).await;
            }
        )+
    };
}

/// Expands to one `#[tokio::test]` per named table check.
#[macro_export]
macro_rules! table_conformance {
    ($fixture:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let (backend, _guard) = $fixture.await;
                $crate::conformance::table::$check(backend, &$crate::conformance::unique_prefix()).await;
            }
        )+
    };
}

/// A name prefix no other run uses.
pub fn unique_prefix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "t{}-{}-{}",
        std::process::id(),
        nanos % 100_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
