//! What several integration tests share: a `sluice` process, and headless
//! Chromium over the DevTools protocol.
#![allow(dead_code)]

pub mod alerts;
pub mod aws;
pub mod cdp;
pub mod otlp;
pub mod process;
pub mod proxy;
pub mod sse;
pub mod wait;
