//! The running daemon: wires source → engine → sink with bounded channels, plus the HTTP
//! server, the lag monitor, the model watcher and the lift report's reader of the outcome
//! stream, and shuts them down in order.
//!
//! Start: load the model and the newest good snapshot, then read the input streams from the
//! snapshot's positions (recovery). Shutdown: stop reading, let the engine finish the batches
//! already read, let the sink write and acknowledge them, write a final snapshot (all within
//! `shutdown.drain_timeout_ms`), then stop serving HTTP.
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
mod snapshots;
mod start;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Ownership, Resolved, Settings};
use crate::connection::Connector;
use crate::engine::{EngineSettings, Partitioned};
use crate::event::EntryId;
use crate::health::{Health, Part};
use crate::http;
use crate::metrics::{Metrics, RedisRole, SnapshotMetrics};
use crate::model::{Model, ModelError};
use crate::partition::PartitionCount;
use crate::sink::{self, Sink, SinkSettings};
use crate::source::{self, Commit, Source};
use crate::state::{SnapshotStore, StateError};
use crate::time::wall_millis;
use engine_task::{Channels, Durability};
use layout::Layout;
pub(crate) use lift::Published as LiftReport;
use services::Role;

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
    mut observers: Observers,
) -> Result<(), DaemonError> {
    let started = Instant::now();
    return_large_allocations();
    let Resolved {
        settings,
        redis: client,
        customer_token,
    } = resolved;
    // The streams read: source.streams, split into partitions (see `crate::partition`).
    let source_settings = settings.partitioned_source();
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
    if settings.partitions.ownership == Ownership::Leases {
        let start = Start {
            settings,
            client,
            customer_token,
            metrics,
            health,
            model: (model, model_fingerprint),
            started,
        };
        return run_replica(start, listener, shutdown).await;
    }
    let snapshot_dir = layout::open(
        &settings,
        || snapshot_connector(&client, &settings, &metrics),
        &shutdown,
    )?;
    if snapshot_dir.is_none() {
        tracing::warn!(
            "state.dir is empty: snapshots are off, and a restart forgets every customer"
        );
    }
    // The snapshot writer's thread before anything else runs: it is the one part that can
    // fail to start.
    let (written_tx, written_rx) = watch::channel(0u64);
    let (durable_tx, durable_rx) = watch::channel(source::commit::Durable::new());
    let abort = CancellationToken::new();
    let (snapshotter, snapshot_task) = match &snapshot_dir {
        Some(layout) => {
            let (handle, task) = snapshots::spawn(
                layout.parts.clone(),
                (written_rx, durable_tx.clone()),
                metrics.snapshots.clone(),
                health.clone(),
                abort.clone(),
            )
            .map_err(DaemonError::Thread)?;
            let interval = settings.state.snapshot_interval.get();
            (Some((handle, interval)), Some(task))
        }
        None => (None, None),
    };
    // HTTP first: probes and scrapers get answers (503 not ready, with the reason) while a
    // large snapshot loads, instead of connections waiting in the listen backlog.
    let (serving, feeds) = services::serve(
        listener,
        (&settings, &metrics),
        (&health, customer_token),
        None,
        (model, model_fingerprint),
    )?;
    let restored = match &snapshot_dir {
        Some(dir) => match load_while_serving(dir, &metrics.snapshots, &health, &shutdown).await {
            Ok(Startup::Restore(states)) => states,
            outcome => {
                serving.stop().await;
                return outcome.map(|_| ());
            }
        },
        None => Vec::new(),
    };
    let connector = connectors(&client, &settings, &metrics);
    let response_timeout = settings.redis.response_timeout.get();

    let (batch_tx, batch_rx) = mpsc::channel(settings.source.queue_batches.get());
    let (effect_tx, effect_rx) = mpsc::channel(EFFECT_QUEUE);

    let engine_settings = EngineSettings::from(&settings);
    let model = feeds.models.borrow().clone();
    let engine = Partitioned::restore(engine_settings, model, metrics.engine.clone(), restored);
    health.set_loading(false);
    let sink = Sink::new(
        SinkSettings::from(&settings),
        connector(RedisRole::Sink, response_timeout),
        health.clone(),
        metrics.sink.clone(),
        effect_rx,
        written_tx,
    )
    .with_written_positions(observers.written.take());
    let sink_task = tokio::spawn(sink.run(abort.clone()));
    // Every partition is held here, for good.
    let (_, held) = watch::channel(http::LocalPartitions {
        serving: (0..settings.partitions.count.get()).collect(),
        moving: Default::default(),
    });
    let services = serving.start(
        (&settings, &metrics),
        &connector,
        held,
        Role::All {
            streams: &source_settings.streams,
        },
        &shutdown,
    );

    // Reading begins once every stream has a position in a snapshot on disk.
    let engine = match &snapshot_dir {
        Some(layout) => {
            start::make_positions_durable(
                engine,
                &source_settings,
                &layout.parts,
                connector(RedisRole::Source, response_timeout),
                (&metrics.snapshots, &health),
                &shutdown,
            )
            .await
        }
        None => Some(engine),
    };
    let (source_task, engine_task, commit_task) = match engine {
        Some(engine) => {
            let mut positions = engine.positions();
            positions.resize(source_settings.streams.len(), None);
            if let Some(applied) = &observers.applied {
                applied.send_replace(Applied {
                    positions: positions.iter().map(|p| p.unwrap_or_default()).collect(),
                    at: None,
                });
            }
            let source = Source::new(
                source_settings.clone(),
                connector(
                    RedisRole::Source,
                    source::read_timeout(&source_settings, settings.redis.response_timeout),
                ),
                health.clone(),
                metrics.source.clone(),
                batch_tx,
                (positions.clone(), Commit::of(&settings)),
            );
            let commit_task = source::commit::spawn(
                Commit::of(&settings),
                (&source_settings, source.read_counts(), &positions),
                (&durable_tx, &durable_rx),
                connector(RedisRole::Commit, response_timeout),
                abort.clone(),
            );
            let engine_task = engine_task::spawn(
                engine,
                Channels {
                    batches: batch_rx,
                    effects: effect_tx,
                    queries: feeds.queries,
                    models: feeds.models,
                    uplift: feeds.uplift,
                    applied: observers.applied,
                },
                Durability {
                    snapshots: snapshotter,
                    health: health.clone(),
                    recovery_seconds: metrics.service.recovery_seconds.clone(),
                    started,
                },
                settings.clock.tick.get(),
            );
            let engine_task = match engine_task {
                Ok(task) => task,
                Err(e) => {
                    // Nothing was read yet: the parts already running stop with the daemon.
                    abort.cancel();
                    services.abandon();
                    return Err(DaemonError::EngineThread(e));
                }
            };
            let source_task = tokio::spawn(source.run(shutdown.clone()));
            (Some(source_task), Some(engine_task), commit_task)
        }
        // Shutdown came first: nothing was read. Dropping the engine's ends of the
        // channels and the snapshot writer's handle lets the sink and the writer end.
        None => {
            drop((batch_tx, batch_rx, effect_tx, feeds, snapshotter));
            (None, None, None)
        }
    };
    // The committer ends once the snapshot writer (the one sender left) is done.
    drop((durable_tx, durable_rx));

    shutdown.cancelled().await;
    tracing::info!("shutdown requested: finishing the batches in flight");
    let drain = async {
        if let Some(task) = source_task {
            let _ = task.await;
        }
        if let Some(task) = engine_task {
            let _ = task.await;
        }
        let _ = sink_task.await;
        if let Some(task) = snapshot_task {
            let _ = task.await;
        }
        if let Some(task) = commit_task {
            let _ = task.await;
        }
    };
    tokio::pin!(drain);
    let timeout = sink::drain_timeout(&settings);
    if tokio::time::timeout(timeout, &mut drain).await.is_ok() {
        tracing::info!("drained: every entry read was processed and acknowledged, state saved");
    } else {
        tracing::warn!(
            ?timeout,
            "drain timed out; unacknowledged entries will be redelivered on restart"
        );
        abort.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
    services.stop(&shutdown).await;
    Ok(())
}

/// What a replica starts from, once its settings are resolved and its model loaded.
struct Start {
    settings: Settings,
    client: crate::connection::RedisClient,
    customer_token: Option<crate::config::Secret>,
    metrics: Metrics,
    health: Arc<Health>,
    model: (Model, u64),
    started: Instant,
}

/// [`run_resolved`] under `partitions.ownership = leases`: HTTP, the lag monitor, the model
/// watcher and the lift report as for one process ([`services`]), the engines in generations
/// of the partitions this replica owns ([`replica`]).
async fn run_replica(
    start: Start,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let Start {
        settings,
        client,
        customer_token,
        metrics,
        health,
        model: (model, model_fingerprint),
        started,
    } = start;
    metrics.ownership.owned.set(0);
    let connector = connectors(&client, &settings, &metrics);
    let me = crate::ownership::MemberName::new(&settings.source.consumer)
        .expect("source.consumer was checked with partitions.ownership = leases");
    let (local_tx, local) = watch::channel(http::LocalPartitions::default());
    let replicas = http::Replicas::new(
        (me, settings.partitions.count, &settings.source.group),
        local.clone(),
        connector(RedisRole::Ownership, settings.redis.response_timeout.get()),
        metrics.http.forwarded.clone(),
    );
    let (serving, feeds) = services::serve(
        listener,
        (&settings, &metrics),
        (&health, customer_token),
        Some(replicas),
        (model, model_fingerprint),
    )?;
    let advertise = match &settings.partitions.advertise_url {
        Some(url) => url.clone(),
        None => format!(
            "http://{}:{}",
            crate::config::host_name(),
            serving.addr().port()
        ),
    };
    let services = serving.start(
        (&settings, &metrics),
        &connector,
        local,
        Role::Replica {
            advertise: &advertise,
        },
        &shutdown,
    );
    let replica = replica::Replica {
        advertise,
        local: local_tx,
        settings: settings.clone(),
        client: client.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        models: feeds.models,
        uplift: feeds.uplift,
        started,
    };
    let result = replica.run(feeds.queries, shutdown.clone()).await;
    services.stop(&shutdown).await;
    result
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
