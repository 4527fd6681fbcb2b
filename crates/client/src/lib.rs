//! The Sluice client library, "KPL and KCL for Rust": a producer that
//! batches records into PutRecords calls while keeping order per partition
//! key, and a consumer that shares a stream's shards among workers through
//! leases and checkpoints.
//!
//! It knows a backend only through `sluice-core`'s traits.

#![forbid(unsafe_code)]

pub mod consumer;
pub mod follow;
pub mod producer;

pub use producer::{ProduceError, Producer, ProducerConfig, SendFailure};
