//! Sluice backends: the embedded `local` stream and table stores, the `aws`
//! ones (Kinesis and DynamoDB), and the
//! conformance suites every stream and table backend passes.

#![forbid(unsafe_code)]

pub mod aws;
pub mod fault;
pub mod local;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
