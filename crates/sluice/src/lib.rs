//! Sluice, the application: the collector, the router (worker and, later,
//! Lambda adapters around the pure router in `sluice-core`), the read API
//! and the `sluice` command's pieces. `main.rs` only parses arguments and
//! calls into here.

pub mod api;
pub mod auth;
pub mod cli;
pub mod collector;
pub mod config;
pub mod consume;
pub mod error;
pub mod lambda;
pub mod router;
pub mod server;
