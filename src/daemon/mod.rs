//! The running daemon: wires source → engine → sink with bounded channels, plus the HTTP
//! server, the lag monitor, the model watcher and the lift report's reader of the outcome
//! stream, and shuts them down in order.
//!
//! Start: load the model and the newest good snapshot, then read the input streams from the
//! snapshot's positions (recovery). Shutdown: stop reading, let the engine finish the batches
//! already read, let the sink write and acknowledge them, write a final snapshot (all within
//! `shutdown.drain_timeout_ms`), then stop serving HTTP.
//!
//! After the common start (settings resolved, model loaded), one of two ways runs the rest:
//! one process of every partition ([`single`], `partitions.ownership = all`) or a replica of
//! the partitions it leases ([`replica`], `leases`).
//!
//! A program that embeds the daemon can follow its progress through [`Observers`] given to
//! [`run_observed`] (the end-to-end latency benchmark does).

mod engine_task;
mod layout;
mod lift;
mod model_watch;
mod owners;
mod replica;
mod services;
mod single;
mod snapshots;
mod start;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Ownership, Resolved, Settings};
use crate::connection::Connector;
use crate::event::EntryId;
use crate::health::{Health, Part};
use crate::metrics::{Metrics, RedisRole, SnapshotMetrics};
use crate::model::{Model, ModelError};
use crate::partition::PartitionCount;
use crate::state::{SnapshotStore, StateError};
use crate::time::wall_millis;
use layout::Layout;
pub(crate) use lift::Published as LiftReport;

/// Effects buffered between engine and sink.
const EFFECT_QUEUE: usize = 2;
/// Engine queries buffered from HTTP.
const QUERY_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot serve HTTP: {0}")]
    Http(std::io::Error),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("loading the snapshot failed: {0}")]
    Load(String),
    #[error("cannot start the snapshot writer's thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot start the engine's thread: {0}")]
    EngineThread(std::io::Error),
    #[error(
        "the snapshot in {dir} was written with partitions.count = {kept}, but partitions.count \
         is now {configured}: customers and stream positions are kept per partition, and \
         changing the count of existing state is not supported (docs/operating.md, \
         \"Partitions and scale-out\"). Set partitions.count back to {kept}, or move the \
         snapshots away (the files out of state.dir; with state.store = redis, the keys \
         listed in {dir}) to start with no customers from the partition streams"
    )]
    PartitionsChanged {
        dir: String,
        kept: PartitionCount,
        configured: PartitionCount,
    },
    #[error(
        "{dir} holds a snapshot of all {count} partitions in one file, written by a churnd \
         that kept one snapshot for every partition; this churnd keeps each partition's \
         snapshots in {dir}/partition-<p>/ and does not split an older one (docs/operating.md, \
         \"Partitions and scale-out\"). Run the churnd that wrote it, or move the \
         snapshot-*.bin files out of {dir} to start every partition with no customers"
    )]
    OneSnapshotForAllPartitions { dir: String, count: PartitionCount },
    #[error(
        "the snapshot in {dir} is partition {found}'s, not partition {expected}'s: each \
         partition's snapshots belong in state.dir/partition-<p>/ of their own partition"
    )]
    MisplacedPartition {
        dir: String,
        found: u16,
        expected: u16,
    },
}

/// Binds the configured HTTP address.
pub async fn bind(settings: &Settings) -> std::io::Result<TcpListener> {
    TcpListener::bind(settings.http.addr).await
}

/// How far the engine has applied the input streams: the highest entry applied per stream.
/// Every entry read since the start up to it is applied; entries left pending by another
/// consumer are applied when claimed, which can be later.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Per input stream, in the order of `source.streams`, the last entry the engine has
    /// applied (dead-lettered entries count: they are done with). 0-0: nothing yet.
    pub positions: Vec<EntryId>,
    /// When the engine finished the batch that last moved a position, before its tasks
    /// reach the sink. `None` until a batch moves one (positions restored from a snapshot
    /// have no time in this process).
    pub at: Option<Instant>,
}

impl Applied {
    /// Whether entry `id` of the `stream`th input stream is reflected in customer state.
    pub fn covers(&self, stream: usize, id: EntryId) -> bool {
        self.positions.get(stream).is_some_and(|p| *p >= id)
    }
}

/// What a running daemon reports to a program that embeds it, beyond HTTP and metrics.
/// Nothing by default: [`run`] runs with no observers. Built with the `with_*` methods, so
/// that observers added later change no caller.
#[derive(Debug, Default)]
pub struct Observers {
    applied: Option<watch::Sender<Applied>>,
    written: Option<watch::Sender<Applied>>,
}

impl Observers {
    /// Publishes to `tx` how far the engine has applied the input streams: once at start
    /// with the positions restored from the snapshot, then after every batch that moves a
    /// position. For a program that must know when an entry it wrote has reached customer
    /// state (the end-to-end latency benchmark; an application waiting for its own writes)
    /// without polling Redis or the HTTP API. The engine only stores into the channel: a
    /// slow or absent receiver never holds it up, it just sees the latest positions (they
    /// only grow, so nothing is lost).
    pub fn with_applied(mut self, tx: watch::Sender<Applied>) -> Self {
        self.applied = Some(tx);
        self
    }

    /// Publishes to `tx`, per input stream, the last entry whose tasks and dead letters are
    /// written: everything read up to it is done with, as an `XACK` would tell (entries
    /// are not acknowledged per entry when state is kept, see [`crate::source::commit`]).
    pub fn with_written(mut self, tx: watch::Sender<Applied>) -> Self {
        self.written = Some(tx);
        self
    }
}

/// Runs until `shutdown` is cancelled, then drains. Fails at start on a bad model file, or
/// on files the settings name that cannot be used (certificates, the token).
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    run_observed(settings, listener, shutdown, Observers::default()).await
}

/// [`run`], reporting to `observers` as it goes.
pub async fn run_observed(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
    observers: Observers,
) -> Result<(), DaemonError> {
    run_resolved(settings.resolve()?, listener, shutdown, observers).await
}

/// [`run_observed`] on settings already resolved ([`Settings::resolve`]): what they name
/// (certificates, the token, the host name) was read once, before anything runs.
pub async fn run_resolved(
    resolved: Resolved,
    listener: TcpListener,
    shutdown: CancellationToken,
    observers: Observers,
) -> Result<(), DaemonError> {
    let started = Instant::now();
    return_large_allocations();
    let Resolved {
        settings,
        redis: client,
        customer_token,
    } = resolved;
    let metrics = Metrics::new();
    let health = Health::new(metrics.service.ready.clone())
        .with_snapshot_failure_limit(settings.state.max_consecutive_snapshot_failures);
    let health = Arc::new(match settings.partitions.ownership {
        Ownership::Leases => health.for_replica(),
        Ownership::All => health,
    });
    let (model, model_fingerprint) = Model::load_fingerprinted(&settings.model.path)?;
    tracing::info!(version = model.version(), path = %settings.model.path.display(), "model loaded");
    health.set(Part::Model, true);
    metrics
        .ownership
        .owned
        .set(i64::from(settings.partitions.count.get()));
    metrics
        .ownership
        .partitions
        .set(i64::from(settings.partitions.count.get()));
    let start = Start {
        settings,
        client,
        customer_token,
        metrics,
        health,
        model: (model, model_fingerprint),
        started,
    };
    match start.settings.partitions.ownership {
        Ownership::Leases => replica::run_replica(start, listener, shutdown).await,
        Ownership::All => single::run(start, listener, shutdown, observers).await,
    }
}

/// What a start has, once its settings are resolved and its model loaded: one process of
/// every partition ([`single`]) or a replica of those it leases ([`replica`]) goes on from it.
struct Start {
    settings: Settings,
    client: crate::connection::RedisClient,
    customer_token: Option<crate::config::Secret>,
    metrics: Metrics,
    health: Arc<Health>,
    model: (Model, u64),
    started: Instant,
}

/// Connections to Redis through `client`, each for a role and with its response timeout.
fn connectors<'a>(
    client: &'a crate::connection::RedisClient,
    settings: &'a Settings,
    metrics: &'a Metrics,
) -> impl Fn(RedisRole, Duration) -> Connector + 'a {
    |role, response_timeout| {
        Connector::new(
            client.clone(),
            &settings.redis,
            response_timeout,
            role,
            &metrics.redis,
        )
    }
}

/// Allocations this large or larger get pages of their own, given back to the system when
/// freed (glibc's default threshold rises after such frees, and oversized entries read once
/// would then stay in the heap for good: hundreds of MB after a burst of 400 KB entries).
const MMAP_THRESHOLD: libc::c_int = 128 << 10;

/// Makes memory taken by a burst of large entries go back to the system once they are
/// applied (glibc: a fixed mmap threshold; elsewhere nothing to do).
fn return_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning; M_MMAP_THRESHOLD takes a size.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// How a start that loads a snapshot goes on.
enum Startup {
    /// With every partition's state, partition `p`'s at index `p` (`None`: a first start).
    Restore(Vec<Option<crate::engine::EngineState>>),
    /// Shutdown was requested while the snapshot loaded.
    Stop,
}

/// Loads the newest good snapshot of every partition on a blocking thread, so that HTTP
/// answers meanwhile (`/readyz` says the snapshot is loading, until the engines are
/// restored from them). State kept under another `partitions.count` is refused.
async fn load_while_serving(
    layout: &Layout,
    metrics: &SnapshotMetrics,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<Startup, DaemonError> {
    health.set_loading(true);
    let (loading, metrics) = (layout.clone(), metrics.clone());
    let load = tokio::task::spawn_blocking(move || loading.load(&metrics));
    let loaded = tokio::select! {
        loaded = load => loaded,
        _ = shutdown.cancelled() => {
            tracing::info!("shutdown requested while the snapshot loads");
            return Ok(Startup::Stop);
        }
    };
    let states = loaded.map_err(|e| DaemonError::Load(e.to_string()))??;
    Ok(Startup::Restore(states))
}

/// The connector of the snapshots kept in Redis (`state.store = "redis"`): a response
/// timeout long enough for a piece of a snapshot.
fn snapshot_connector(
    client: &crate::connection::RedisClient,
    settings: &Settings,
    metrics: &Metrics,
) -> Connector {
    let response_timeout = settings.redis.response_timeout.get();
    connectors(client, settings, metrics)(
        RedisRole::Snapshots,
        response_timeout.max(crate::state::redis_store::MIN_RESPONSE_TIMEOUT),
    )
}

/// The newest good snapshot's state, reporting the damaged ones it skipped.
fn load_snapshot(
    dir: &SnapshotStore,
    streams: &[String],
    metrics: &SnapshotMetrics,
) -> Result<Option<crate::state::codec::Decoded>, StateError> {
    let started = Instant::now();
    let (loaded, rejected) = dir.load_newest(streams)?;
    for r in &rejected {
        metrics.rejected.inc();
        tracing::error!(
            path = %r.location,
            error = %r.error,
            "damaged snapshot set aside (renamed *.corrupt); trying the previous one"
        );
    }
    let Some(loaded) = loaded else {
        tracing::info!(dir = %dir.location(), "no snapshot: starting with no customers");
        return Ok(None);
    };
    let snapshot = loaded.snapshot;
    if !snapshot.dropped_streams.is_empty() && !streams.is_empty() {
        tracing::warn!(
            streams = ?snapshot.dropped_streams,
            "the snapshot has positions in streams source.streams no longer lists; their customers are kept"
        );
    }
    let positions: Vec<String> = streams
        .iter()
        .zip(&snapshot.state.header.applied)
        .map(|(s, id)| match id {
            Some(id) => format!("{s}@{id}"),
            None => format!("{s}@none"),
        })
        .collect();
    tracing::info!(
        path = %loaded.location,
        bytes = loaded.bytes,
        customers = snapshot.state.customers.len(),
        age_secs = wall_millis().saturating_sub(snapshot.created_ms) / 1000,
        model_version = %snapshot.state.header.model_version,
        ?positions,
        elapsed = ?started.elapsed(),
        "snapshot loaded"
    );
    Ok(Some(snapshot))
}
