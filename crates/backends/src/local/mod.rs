//! The embedded `local` backend: durable streams (a segment log per stream)
//! and tables (redb) under one data directory that belongs to one process.
//! Other processes reach it through that process's HTTP API, never by
//! opening its files; a lock file enforces it.

pub mod log;
pub mod stream;
pub mod table;

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use stream::{LocalStreamOptions, LocalStreams};
pub use table::LocalTable;

/// The streams and tables of one data directory, held open by this process.
pub struct LocalBackend {
    pub streams: Arc<LocalStreams>,
    pub table: Arc<LocalTable>,
    pub dir: PathBuf,
    _lock: File,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("data directory {0} is in use by another Sluice process (it holds {0}/LOCK)")]
    InUse(String),
    #[error("data directory {dir}: {message}")]
    Io { dir: String, message: String },
}

impl LocalBackend {
    /// Opens (creating and recovering as needed) the data directory.
    pub fn open(dir: &Path, options: LocalStreamOptions) -> Result<Self, OpenError> {
        let io = |e: &dyn std::fmt::Display| OpenError::Io {
            dir: dir.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| io(&e))?;
        let lock = File::create(dir.join("LOCK")).map_err(|e| io(&e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(OpenError::InUse(dir.display().to_string()))
            }
            Err(TryLockError::Error(e)) => return Err(io(&e)),
        }
        let streams = LocalStreams::open(dir.join("streams"), options).map_err(|e| io(&e))?;
        let table = LocalTable::open(&dir.join("table.redb")).map_err(|e| io(&e))?;
        Ok(Self {
            streams: Arc::new(streams),
            table: Arc::new(table),
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    /// Runs retention and expiry sweeps every `period` until the runtime stops.
    pub fn spawn_housekeeping(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        let (streams, table) = (self.streams.clone(), self.table.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                let (streams, table) = (streams.clone(), table.clone());
                let outcome = tokio::task::spawn_blocking(move || {
                    (streams.enforce_retention(), table.sweep_expired())
                })
                .await;
                match outcome {
                    Ok((Err(e), _)) => tracing::error!(error = %e, "retention sweep failed"),
                    Ok((_, Err(e))) => tracing::error!(error = %e, "expiry sweep failed"),
                    Err(e) => tracing::error!(error = %e, "housekeeping task failed"),
                    _ => {}
                }
            }
        })
    }
}
