//! Sluice core: the record envelope, routing rules, the pure router, the
//! stream and table backend traits, retry policy and service limits.
//!
//! This crate does no I/O. Backends, the client library and the application
//! build on it; it imports nothing else of Sluice.

#![forbid(unsafe_code)]

pub mod aggregate;
pub mod envelope;
pub mod hash;
pub mod json;
pub mod limits;
pub mod retry;
pub mod router;
pub mod rules;
pub mod sample;
pub mod sequence;
pub mod stream;
pub mod table;

pub use envelope::{EnvelopeError, HeaderValue, Headers};
pub use sequence::SequenceNumber;
pub use stream::{StreamBackend, StreamError};
pub use table::{TableBackend, TableError};
