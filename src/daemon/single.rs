//! One process that owns every partition (`partitions.ownership = all`, the default): the
//! snapshots of all of them loaded at start, one source reading every stream, one engine
//! thread over all partitions, one sink, one snapshot writer.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::engine_task::{self, Channels, Durability};
use super::services::{self, Role};
use super::{
    connectors, layout, load_while_serving, snapshot_connector, snapshots, start, Applied,
    DaemonError, Observers, Start, Startup, EFFECT_QUEUE,
};
use crate::engine::{EngineSettings, Partitioned};
use crate::http;
use crate::metrics::RedisRole;
use crate::sink::{self, Sink, SinkSettings};
use crate::source::{self, Commit, Source};

/// Runs every partition in this process until `shutdown` is cancelled, then drains.
pub(super) async fn run(
    start: Start,
    listener: TcpListener,
    shutdown: CancellationToken,
    mut observers: Observers,
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
    // The streams read: source.streams, split into partitions (see `crate::partition`).
    let source_settings = settings.partitioned_source();
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
