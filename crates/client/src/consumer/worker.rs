//! One worker of a consumer application: keeps the lease table in step with
//! the stream's shards, renews the leases it holds, takes expired ones,
//! steals to even out the load, and runs a shard reader per lease.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rand::seq::{IndexedRandom, SliceRandom};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use sluice_core::{StreamBackend, TableBackend};
use sluice_telemetry::metrics;

use super::lease::{Checkpoint, Lease, LeaseError, LeaseTable};
use super::reader::{ReadOutcome, ShardReader};
use super::{ConsumerConfig, InitialPosition, ProcessorFactory};

/// A lease this worker holds, shared with the shard's reader.
pub(crate) struct Held {
    pub lease: tokio::sync::Mutex<Lease>,
    pub lost: AtomicBool,
    pub last_write: Mutex<Instant>,
    /// When the checkpoint last moved.
    pub checkpointed_at: Mutex<Instant>,
}

impl Held {
    fn new(lease: Lease) -> Self {
        Self {
            lease: tokio::sync::Mutex::new(lease),
            lost: AtomicBool::new(false),
            last_write: Mutex::new(Instant::now()),
            checkpointed_at: Mutex::new(Instant::now()),
        }
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Writes the lease with `change` applied and its counter moved on, if
    /// it is still ours: renewals, checkpoints and releases all go here.
    pub async fn write(
        &self,
        table: &LeaseTable,
        change: impl FnOnce(&mut Lease),
    ) -> Result<(), LeaseError> {
        let mut lease = self.lease.lock().await;
        if self.is_lost() {
            return Err(LeaseError::Lost(lease.shard_id.clone()));
        }
        let mut next = lease.clone();
        change(&mut next);
        next.counter = lease.counter + 1;
        match table.replace(&next, lease.counter).await {
            Ok(()) => {
                *lease = next;
                *self.last_write.lock().expect("write time lock") = Instant::now();
                Ok(())
            }
            Err(LeaseError::Lost(shard)) => {
                self.lost.store(true, Ordering::Release);
                Err(LeaseError::Lost(shard))
            }
            Err(e) => Err(e),
        }
    }
}

/// What every part of a worker shares.
pub(crate) struct Shared {
    pub config: ConsumerConfig,
    pub streams: Arc<dyn StreamBackend>,
    pub leases: LeaseTable,
    pub shutdown: watch::Receiver<bool>,
}

/// Whether a worker does its share of the application's work, as of its
/// last round of the lease table: what a readiness probe reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Not through its first round yet.
    Starting,
    /// Holds every lease it should.
    Serving,
    /// Why it does not: the lease table or the stream cannot be read, or a
    /// shard has no live owner and this worker could not take it.
    Short(String),
}

/// A running worker.
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    held: Arc<Mutex<BTreeSet<String>>>,
    standing: watch::Receiver<Standing>,
}

impl WorkerHandle {
    /// The shards whose leases this worker holds now.
    pub fn held(&self) -> BTreeSet<String> {
        self.held.lock().expect("held lock").clone()
    }

    /// Follows the worker's [`Standing`], updated every round.
    pub fn standing(&self) -> watch::Receiver<Standing> {
        self.standing.clone()
    }

    /// Stops gracefully: processors get `shutdown_requested`, checkpoints
    /// are written, and the leases are released for others to take at once.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Stops at once, as a crash would: no checkpoint, no release. Others
    /// take the leases after the failover time.
    pub fn abort(self) {
        self.task.abort();
    }
}

pub struct Worker;

impl Worker {
    /// Starts a worker of `config.application` on `config.stream`.
    pub fn start(
        streams: Arc<dyn StreamBackend>,
        tables: Arc<dyn TableBackend>,
        config: ConsumerConfig,
        factory: Arc<dyn ProcessorFactory>,
    ) -> WorkerHandle {
        let (stop, shutdown) = watch::channel(false);
        let held = Arc::new(Mutex::new(BTreeSet::new()));
        let (standing_tx, standing) = watch::channel(Standing::Starting);
        let shared = Arc::new(Shared {
            leases: LeaseTable::new(tables, &config.application),
            config,
            streams,
            shutdown,
        });
        let task = tokio::spawn(run(shared, factory, held.clone(), standing_tx));
        WorkerHandle {
            stop,
            task,
            held,
            standing,
        }
    }
}

struct State {
    shared: Arc<Shared>,
    factory: Arc<dyn ProcessorFactory>,
    held: HashMap<String, Arc<Held>>,
    /// Each lease's counter and when this worker first saw it: a counter
    /// that stays put for the failover time means a dead owner.
    observed: HashMap<String, (i64, Instant)>,
    /// Bad rows already reported, so each is logged once.
    reported: BTreeSet<String>,
    /// The stream's shards as last listed.
    shards: BTreeSet<String>,
    readers: JoinSet<(String, ReadOutcome)>,
    /// The shard of each reader task, to name it if it panics.
    reader_shards: HashMap<tokio::task::Id, String>,
    published: Arc<Mutex<BTreeSet<String>>>,
}

async fn run(
    shared: Arc<Shared>,
    factory: Arc<dyn ProcessorFactory>,
    published: Arc<Mutex<BTreeSet<String>>>,
    standing: watch::Sender<Standing>,
) {
    let mut state = State {
        shared: shared.clone(),
        factory,
        held: HashMap::new(),
        observed: HashMap::new(),
        reported: BTreeSet::new(),
        shards: BTreeSet::new(),
        readers: JoinSet::new(),
        reader_shards: HashMap::new(),
        published,
    };
    let mut shutdown = shared.shutdown.clone();
    let mut announced = false;
    while !*shutdown.borrow() {
        let now = if let Err(e) = shared.leases.ensure().await {
            tracing::warn!(table = %shared.leases.table, error = %e, "lease table not reachable; retrying");
            Standing::Short(format!(
                "the lease table {} is not reachable: {e}",
                shared.leases.table
            ))
        } else {
            if !announced {
                tracing::info!(worker = %shared.config.worker_id, application = %shared.config.application, stream = %shared.config.stream, "worker started");
                announced = true;
            }
            state.renew().await;
            match state.sync_shards().await {
                Err(problem) => Standing::Short(problem),
                Ok(()) => state
                    .balance()
                    .await
                    .map_or(Standing::Serving, Standing::Short),
            }
        };
        standing.send_if_modified(|was| {
            let changed = *was != now;
            *was = now;
            changed
        });
        tokio::select! {
            _ = tokio::time::sleep(shared.config.renewal) => {}
            _ = shutdown.changed() => {}
            Some(done) = state.readers.join_next_with_id() => state.finished(done).await,
        }
    }
    // Readers see the same signal: they checkpoint and return.
    while let Some(done) = state.readers.join_next_with_id().await {
        state.finished(done).await;
    }
    for (shard, held) in state.held.drain() {
        if let Err(e) = held.write(&shared.leases, |l| l.owner = None).await {
            tracing::warn!(shard = %shard, error = %e, "could not release the lease; it expires instead");
        }
    }
    state.publish();
    tracing::info!(worker = %shared.config.worker_id, "worker stopped");
}

impl State {
    fn publish(&self) {
        *self.published.lock().expect("held lock") = self.held.keys().cloned().collect();
        let config = &self.shared.config;
        metrics::CONSUMER_LEASES_HELD
            .gauge(&[
                ("application", &config.application),
                ("worker", &config.worker_id),
            ])
            .set(self.held.len() as i64);
        for (shard, held) in &self.held {
            let age = held
                .checkpointed_at
                .lock()
                .expect("checkpoint time lock")
                .elapsed();
            metrics::CONSUMER_CHECKPOINT_AGE_MS
                .gauge(&[("application", &config.application), ("shard", shard)])
                .set(age.as_millis() as i64);
        }
    }

    async fn renew(&mut self) {
        let mut lost = Vec::new();
        for (shard, held) in &self.held {
            match held.write(&self.shared.leases, |_| {}).await {
                Ok(()) => {}
                Err(LeaseError::Lost(_)) => lost.push(shard.clone()),
                Err(e) => {
                    tracing::warn!(shard = %shard, error = %e, "could not renew the lease; trying again")
                }
            }
        }
        for shard in lost {
            tracing::info!(shard = %shard, worker = %self.shared.config.worker_id, "lease lost to another worker");
            self.held.remove(&shard);
        }
        self.publish();
    }

    /// Creates a lease for every shard that has none; the problem if the
    /// stream or the lease table cannot be read.
    async fn sync_shards(&mut self) -> Result<(), String> {
        let config = &self.shared.config;
        let shards = match self.shared.streams.list_shards(&config.stream).await {
            Ok(shards) => shards,
            Err(e) => {
                tracing::warn!(stream = %config.stream, error = %e, "could not list shards");
                return Err(format!(
                    "the shards of {} cannot be listed: {e}",
                    config.stream
                ));
            }
        };
        let known: BTreeSet<String> = match self.shared.leases.list().await {
            Ok((leases, bad)) => leases
                .into_iter()
                .map(|l| l.shard_id)
                .chain(bad.into_iter().map(|b| b.shard))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the lease table");
                return Err(self.unreadable(&e));
            }
        };
        self.shards = shards.iter().map(|s| s.shard_id.clone()).collect();
        for shard in &shards {
            if known.contains(&shard.shard_id) {
                continue;
            }
            let parents: Vec<String> = shard.parents().map(str::to_owned).collect();
            // A child starts at its beginning, so nothing after its parents is missed.
            let start = if parents.is_empty() {
                match config.initial_position {
                    InitialPosition::TrimHorizon => Checkpoint::TrimHorizon,
                    InitialPosition::Latest => Checkpoint::Latest,
                    InitialPosition::AtTimestamp(ms) => Checkpoint::AtTimestamp(ms),
                }
            } else {
                Checkpoint::TrimHorizon
            };
            match self
                .shared
                .leases
                .create(&Lease::new(&shard.shard_id, parents, start))
                .await
            {
                Ok(true) => tracing::info!(shard = %shard.shard_id, "lease created"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(shard = %shard.shard_id, error = %e, "could not create the lease")
                }
            }
        }
        Ok(())
    }

    fn unreadable(&self, e: &impl std::fmt::Display) -> String {
        format!(
            "the lease table {} cannot be read: {e}",
            self.shared.leases.table
        )
    }

    /// Takes expired leases up to a fair share, or steals one when none is
    /// expired and another worker holds more than its share. What keeps a
    /// shard from being read, if anything: a lease row that cannot be read,
    /// or a free lease this worker could not take while below its share.
    async fn balance(&mut self) -> Option<String> {
        let me = self.shared.config.worker_id.clone();
        let (leases, bad) = match self.shared.leases.list().await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the lease table");
                return Some(self.unreadable(&e));
            }
        };
        let mut problem = None;
        for b in bad {
            if self.reported.insert(b.shard.clone()) {
                tracing::error!(shard = %b.shard, problem = %b.problem, "lease row cannot be read; the shard is left alone until it is fixed");
            }
            if !self.shards.contains(&b.shard) {
                continue;
            }
            problem.get_or_insert_with(|| {
                format!(
                    "the lease of shard {} cannot be read ({}); the shard is not read until the row is fixed",
                    b.shard, b.problem
                )
            });
        }
        let now = Instant::now();
        let failover = self.shared.config.failover;
        let mut expired = Vec::new();
        let mut load: BTreeMap<String, Vec<Lease>> = BTreeMap::new();
        let mut active = 0usize;
        for lease in leases {
            let seen = self
                .observed
                .entry(lease.shard_id.clone())
                .or_insert((lease.counter, now));
            if seen.0 != lease.counter {
                *seen = (lease.counter, now);
            }
            if lease.checkpoint == Checkpoint::ShardEnd {
                continue;
            }
            active += 1;
            let stale = now.duration_since(seen.1) >= failover;
            match &lease.owner {
                Some(owner) if *owner == me && self.held.contains_key(&lease.shard_id) => {}
                // Ours from before a restart under the same name: take it back now.
                Some(owner) if *owner == me => expired.push(lease),
                Some(owner) if !stale => load.entry(owner.clone()).or_default().push(lease),
                _ => expired.push(lease),
            }
        }
        let mine = self.held.len();
        let workers = load.len() + 1;
        let target = active.div_ceil(workers);
        if mine >= target {
            return problem;
        }
        expired.shuffle(&mut rand::rng());
        let mut wanted = target - mine;
        let mut failed = None;
        for lease in expired {
            if wanted == 0 {
                break;
            }
            match self.take(lease, false).await {
                Ok(true) => wanted -= 1,
                Ok(false) => {}
                Err(e) => failed = Some(e),
            }
        }
        if let (Some(e), true) = (failed, wanted > 0) {
            problem.get_or_insert_with(|| {
                format!(
                    "shards have no live owner and this worker, holding {} of its share of {target}, could not take them: {e}",
                    target - wanted
                )
            });
        }
        if wanted == target - mine {
            // Nothing was free: steal one from the most loaded worker, if it
            // holds more than its share.
            let victim = load
                .into_iter()
                .max_by_key(|(_, l)| l.len())
                .filter(|(_, leases)| leases.len() > target)
                .and_then(|(owner, leases)| {
                    let lease = leases.choose(&mut rand::rng()).cloned()?;
                    Some((owner, lease))
                });
            if let Some((owner, lease)) = victim {
                tracing::info!(shard = %lease.shard_id, from = %owner, "stealing a lease to even out the load");
                let _ = self.take(lease, true).await;
            }
        }
        problem
    }

    /// Takes a lease as last seen; false if someone changed it first.
    async fn take(&mut self, lease: Lease, stolen: bool) -> Result<bool, LeaseError> {
        let mut next = lease.clone();
        next.owner = Some(self.shared.config.worker_id.clone());
        next.counter = lease.counter + 1;
        if next.owner != lease.owner {
            next.owner_switches += 1;
        }
        match self.shared.leases.replace(&next, lease.counter).await {
            Ok(()) => {
                tracing::info!(shard = %next.shard_id, worker = %self.shared.config.worker_id, stolen, previous = ?lease.owner, "lease taken");
                let held = Arc::new(Held::new(next.clone()));
                self.held.insert(next.shard_id.clone(), held.clone());
                let reader = ShardReader::new(
                    self.shared.clone(),
                    held,
                    self.factory.create(&next.shard_id),
                );
                let shard = next.shard_id.clone();
                let task = self
                    .readers
                    .spawn(async move { (shard, reader.run().await) });
                self.reader_shards.insert(task.id(), next.shard_id.clone());
                self.publish();
                Ok(true)
            }
            Err(LeaseError::Lost(_)) => Ok(false),
            Err(e) => {
                tracing::warn!(shard = %next.shard_id, error = %e, "could not take the lease");
                Err(e)
            }
        }
    }

    async fn finished(
        &mut self,
        done: Result<(tokio::task::Id, (String, ReadOutcome)), tokio::task::JoinError>,
    ) {
        let (shard, outcome) = match done {
            Ok((id, done)) => {
                self.reader_shards.remove(&id);
                done
            }
            Err(e) => {
                let shard = self.reader_shards.remove(&e.id()).unwrap_or_default();
                tracing::error!(shard = %shard, error = %e, "the shard's processor panicked; its lease is released and the shard is read again from its checkpoint");
                (shard, ReadOutcome::Ended)
            }
        };
        // What was measured of the shard here ended with its reader.
        let config = &self.shared.config;
        for gauge in [
            &metrics::CONSUMER_MILLIS_BEHIND,
            &metrics::CONSUMER_CHECKPOINT_AGE_MS,
        ] {
            gauge.remove(&[("application", &config.application), ("shard", &shard)]);
        }
        if outcome == ReadOutcome::Gone {
            if let Some(held) = self.held.get(&shard) {
                let counter = held.lease.lock().await.counter;
                if let Err(e) = self.shared.leases.delete(&shard, counter).await {
                    tracing::warn!(shard = %shard, error = %e, "could not remove the lease of a shard that is gone");
                }
            }
        }
        if outcome == ReadOutcome::Ended {
            // Released: an ended shard counts for no one; a failed one is
            // taken again, with a new processor, from its checkpoint.
            if let Some(held) = self.held.get(&shard) {
                let _ = held.write(&self.shared.leases, |l| l.owner = None).await;
            }
        }
        self.forget(&shard, outcome);
    }

    fn forget(&mut self, shard: &str, outcome: ReadOutcome) {
        match outcome {
            // Stopping: the lease is released with the others.
            ReadOutcome::Stopped => return,
            ReadOutcome::Ended | ReadOutcome::Lost | ReadOutcome::Gone => {}
        }
        self.held.remove(shard);
        self.publish();
    }
}
