//! Sluice, the application: the collector (sites, the tracker it serves),
//! the router (the worker and the Lambda adapter around the pure router in
//! `sluice-core`), the read API and the `sluice` command's pieces. `main.rs`
//! only parses arguments and calls into here.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod collector;
pub mod config;
pub mod consume;
pub mod dashboard;
pub mod error;
pub mod health;
pub mod http;
pub mod lambda;
pub mod live;
pub mod router;
pub mod server;
pub mod views;
