//! Sluice backends: the embedded `local` stream and table stores, and the
//! conformance suites every stream and table backend passes.

pub mod fault;
pub mod local;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
