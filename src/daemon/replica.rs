//! A replica under `partitions.ownership = leases`: runs engines, reads streams and writes
//! effects only for the partitions whose leases it holds ([`super::owners`]), and moves
//! partitions in generations (Kafka's eager rebalancing):
//!
//! 1. A generation starts with a set of partitions: each one's newest snapshot is loaded from
//!    its directory in the shared `state.dir`, its engine restored, and its streams read
//!    from the snapshot's positions (the consumer group moved back there), so whatever a
//!    previous owner applied after its last snapshot is replayed; the guards of the effects
//!    keep anything from being written twice.
//! 2. When the set changes (a replica joined, left or died; a lease was lost) the generation
//!    stops: the source stops reading, the engines apply what was read, the sink writes it,
//!    and a final snapshot of every partition is written (named with the partition's
//!    epoch). Only then are the partitions to hand over released, so their next owner
//!    restores that snapshot. Then the next generation starts with the new set.
//!
//! Writes are fenced: every effect script call checks that every partition of the
//! generation still shows this replica's token at its epoch (in the fence record beside the
//! output stream, [`crate::ownership::fence`], and on a single Redis in the lease too), and
//! Redis refuses it otherwise. A refusal stops the
//! generation at once without acknowledging or snapshotting past what was written, so the
//! next owner's replay, not this replica, writes those effects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::engine_task::{self, Channels, Durability};
use super::layout::{self, Layout};
use super::owners::{self, Held, Owners};
use super::services::{self, Role};
use super::{connectors, snapshots, start, DaemonError, Start, EFFECT_QUEUE};
use crate::config::{RedisMode, Settings, SourceSettings};
use crate::connection::{Connector, RedisClient};
use crate::decide::uplift::UpliftBook;
use crate::engine::{EngineSettings, Partitioned};
use crate::event::EntryId;
use crate::health::{Health, Part, Partitions};
use crate::http::{LocalPartitions, Query};
use crate::metrics::{Metrics, RedisRole};
use crate::model::Model;
use crate::ownership::coordinator::Coordinator;
use crate::ownership::fence::Fences;
use crate::ownership::lease::Leases;
use crate::ownership::membership::Membership;
use crate::ownership::{Epoch, MemberName};
use crate::sink::{self, Fence, Fencing, Lease, Sink, SinkSettings};
use crate::source::{self, Commit, Source};

/// What every generation is built from.
pub(super) struct Replica {
    pub settings: Settings,
    pub client: RedisClient,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub models: watch::Receiver<Arc<Model>>,
    pub uplift: watch::Receiver<Arc<UpliftBook>>,
    pub started: Instant,
    /// The URL of this replica's HTTP API, published with its heartbeats.
    pub advertise: String,
    /// The partitions held here, for HTTP (serve or pass on) and the lag monitor.
    pub local: watch::Sender<LocalPartitions>,
}

impl Replica {
    fn connector(&self, role: RedisRole, response_timeout: Duration) -> Connector {
        super::connectors(&self.client, &self.settings, &self.metrics)(role, response_timeout)
    }

    /// Runs generations until `shutdown`, then hands every partition over and leaves.
    /// Queries from HTTP are answered by the running generation's engines (a customer of a
    /// partition held elsewhere is not found here).
    pub async fn run(
        self,
        queries: mpsc::Receiver<Query>,
        shutdown: CancellationToken,
    ) -> Result<(), DaemonError> {
        let settings = &self.settings;
        let me = MemberName::new(&settings.source.consumer)
            .expect("source.consumer was checked with partitions.ownership = leases");
        let layout = layout::open(
            settings,
            || super::snapshot_connector(&self.client, settings, &self.metrics),
            &shutdown,
        )?
        .expect("state.dir or state.store was checked with partitions.ownership = leases");
        let lease = settings.partitions.lease.get();
        let group = &settings.source.group;
        let outputs = SinkSettings::from(settings);
        let coordinator = Coordinator::new(
            me.clone(),
            settings.partitions.count,
            Membership::new(group, lease).advertising(self.advertise.clone()),
            Leases::new(group, lease),
        )
        .fencing(Fences::new(group, outputs.output_streams()));
        let owner_abort = CancellationToken::new();
        let (owners, owner_task) = owners::spawn(
            coordinator,
            self.connector(RedisRole::Ownership, settings.redis.response_timeout.get()),
            (lease / 3, lease),
            (self.metrics.ownership.clone(), self.health.clone()),
            owner_abort.clone(),
        );
        let (target_tx, target) = watch::channel(None);
        let forwarder = tokio::spawn(forward_queries(queries, target));
        tracing::info!(replica = %me, partitions = %settings.partitions.count, lease = ?lease, "replica running: taking the partitions assigned to it");

        let result = self
            .generations(&layout, &owners, &target_tx, &shutdown)
            .await;
        target_tx.send_replace(None);
        self.publish(LocalPartitions::default(), Partitions::Idle);
        owners.leave().await;
        owner_abort.cancel();
        let _ = owner_task.await;
        forwarder.abort();
        result
    }

    async fn generations(
        &self,
        layout: &Layout,
        owners: &Owners,
        target: &watch::Sender<Option<mpsc::Sender<Query>>>,
        shutdown: &CancellationToken,
    ) -> Result<(), DaemonError> {
        let metrics = &self.metrics.ownership;
        let mut held = owners.held.clone();
        let mut first = true;
        // The engines of the last set, handed back when the next one only adds partitions,
        // with the partitions they ran (epochs, tokens) and the leases lost then.
        let mut kept: Option<Kept> = None;
        while !shutdown.is_cancelled() {
            let now = held.borrow_and_update().clone();
            let run = now.to_run();
            // The engines kept go on only if what they ran is still held as it was; otherwise
            // (a change came while they paused) their state is written as at a hand-over.
            if let Some(k) = kept.take() {
                if k.goes_on_in(&now) {
                    kept = Some(k);
                } else {
                    self.final_snapshots(layout, k, &now).await;
                }
            }
            // Nothing runs for what is to be handed over: it can go at once.
            owners
                .release(now.hand_over.iter().copied().collect())
                .await;
            let partitions: Vec<u16> = run.keys().copied().collect();
            let set = || partitions.iter().copied().collect();
            if run.is_empty() {
                self.publish(LocalPartitions::default(), Partitions::Idle);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    changed = held.changed() => if changed.is_err() { shutdown.cancelled().await; break },
                }
                continue;
            }
            if !first {
                metrics.rebalances.inc();
            }
            first = false;
            let moving = LocalPartitions {
                serving: Default::default(),
                moving: set(),
            };
            self.publish(moving.clone(), Partitions::Restoring(partitions.clone()));
            // Recovered again once this generation has read its streams to their end.
            self.health.set(Part::State, false);
            let generation = match self.start(layout, &run, kept.take(), shutdown).await? {
                Ok(generation) => generation,
                Err(unstarted) => {
                    if let Some(k) = unstarted {
                        let now = held.borrow().clone();
                        self.final_snapshots(layout, k, &now).await;
                    }
                    break;
                }
            };
            metrics.owned.set(run.len() as i64);
            target.send_replace(Some(generation.queries.clone()));
            let serving = LocalPartitions {
                serving: set(),
                moving: Default::default(),
            };
            self.publish(serving, Partitions::Running(partitions.clone()));
            tracing::info!(?partitions, "serving partitions");
            let why = tokio::select! {
                () = shutdown.cancelled() => Stop::Shutdown,
                () = generation.fenced.cancelled() => Stop::Fenced,
                () = changed(&mut held, &run, now.lost) => Stop::Changed,
            };
            // Partitions only added: the engines pause and go on with the new ones beside
            // them, without a final snapshot and a restore of their own partitions.
            let keep = why == Stop::Changed && only_added(&run, now.lost, &held.borrow());
            if keep {
                tracing::info!(
                    ?partitions,
                    "partitions added: pausing these to go on with the new ones beside them"
                );
            } else {
                tracing::info!(
                    ?partitions,
                    why = why.describe(),
                    "stopping these partitions: final snapshot, then hand-over"
                );
            }
            target.send_replace(None);
            let pausing = if keep {
                Partitions::Pausing(partitions.clone())
            } else {
                Partitions::HandingOver(partitions.clone())
            };
            self.publish(moving, pausing);
            let engine = generation
                .stop(sink::drain_timeout(&self.settings), keep)
                .await;
            kept = engine.map(|engine| Kept {
                engine,
                run,
                lost: now.lost,
            });
            metrics.owned.set(0);
        }
        if let Some(k) = kept {
            let now = held.borrow().clone();
            self.final_snapshots(layout, k, &now).await;
        }
        Ok(())
    }

    /// Writes a snapshot of each partition of engines kept that cannot go on (what the
    /// final snapshot of a generation does), so their next owner replays no more than
    /// after a hand-over; only of those whose lease is still held (`now`) at the epoch they
    /// ran with: a lost one's new owner already replays. A failure is logged: the next
    /// owner replays from the snapshot before, as after a crash.
    async fn final_snapshots(&self, layout: &Layout, kept: Kept, now: &Held) {
        let Kept {
            mut engine, run, ..
        } = kept;
        let still: Vec<bool> = engine
            .owned()
            .iter()
            .map(|p| now.leases.get(p).map(|(e, _)| e) == run.get(p).map(|(e, _)| e))
            .collect();
        let leases = Leases::new(
            &self.settings.source.group,
            self.settings.partitions.lease.get(),
        );
        let owners: Vec<(u16, u64, String, String)> = run
            .iter()
            .map(|(&p, (e, token))| (p, e.0, leases.key(p), token.clone()))
            .collect();
        let dirs = layout.owned_parts(&owners);
        let written = tokio::task::spawn_blocking(move || {
            let created_ms = crate::time::wall_millis();
            let parts = engine.parts_mut().iter_mut().zip(dirs).zip(still);
            for ((part, (dir, streams)), held) in parts {
                if !held {
                    continue;
                }
                if let Err(e) = crate::state::write_snapshot(part, dir, &streams, created_ms) {
                    tracing::warn!(error = %e, "cannot write a partition's final snapshot; its next owner replays from the one before");
                }
            }
        })
        .await;
        if let Err(e) = written {
            tracing::error!(error = %e, "writing the final snapshots panicked");
        }
    }

    /// Tells HTTP, the lag monitor and `/readyz` what this replica does with its partitions.
    fn publish(&self, local: LocalPartitions, partitions: Partitions) {
        self.local.send_replace(local);
        self.health.set_partitions(partitions);
    }

    /// Starts a generation for the partitions `run`, going on with the engines `kept` (a
    /// subset of `run`) if given and restoring the others; `Err` if shutdown came first,
    /// with the engines kept if they were not used yet.
    async fn start(
        &self,
        layout: &Layout,
        run: &BTreeMap<u16, (Epoch, String)>,
        kept: Option<Kept>,
        shutdown: &CancellationToken,
    ) -> Result<Result<Generation, Option<Kept>>, DaemonError> {
        let settings = &self.settings;
        let metrics = &self.metrics;
        let owned: Vec<u16> = run.keys().copied().collect();
        let added: Vec<u16> = owned
            .iter()
            .copied()
            .filter(|p| !kept.as_ref().is_some_and(|k| k.run.contains_key(p)))
            .collect();
        self.health.set_loading(true);
        let (loading, snapshot_metrics, parts) =
            (layout.clone(), metrics.snapshots.clone(), added.clone());
        let load =
            tokio::task::spawn_blocking(move || loading.load_owned(&parts, &snapshot_metrics));
        let states = tokio::select! {
            loaded = load => loaded.map_err(|e| DaemonError::Load(e.to_string()))??,
            () = shutdown.cancelled() => return Ok(Err(kept)),
        };
        let model = self.models.borrow().clone();
        // The streams of the partitions kept: their positions are past the last snapshot,
        // so they are not committed as durable (the next snapshot commits them).
        let mut kept_partitions = Vec::new();
        let engine = match kept {
            Some(Kept { mut engine, .. }) => {
                kept_partitions = engine.owned().to_vec();
                tracing::info!(
                    kept = ?kept_partitions,
                    restored = ?added,
                    "going on with the partitions running, restoring only the ones added"
                );
                engine.add_owned(
                    &EngineSettings::from(settings),
                    model,
                    added.iter().copied().zip(states).collect(),
                );
                engine
            }
            None => Partitioned::restore_owned(
                EngineSettings::from(settings),
                model,
                metrics.engine.clone(),
                &owned,
                states,
            ),
        };
        metrics
            .ownership
            .restored_partitions
            .inc_by(added.len() as u64);
        let leases = Leases::new(&settings.source.group, settings.partitions.lease.get());
        let owners: Vec<(u16, u64, String, String)> = run
            .iter()
            .map(|(&p, (e, token))| (p, e.0, leases.key(p), token.clone()))
            .collect();
        let dirs = layout.owned_parts(&owners);

        let (written_tx, written_rx) = watch::channel(0u64);
        let (durable_tx, durable_rx) = watch::channel(source::commit::Durable::new());
        let abort = CancellationToken::new();
        let (snapshotter, snapshot_task) = snapshots::spawn(
            dirs.clone(),
            (written_rx, durable_tx.clone()),
            metrics.snapshots.clone(),
            self.health.clone(),
            abort.clone(),
        )
        .map_err(DaemonError::Thread)?;
        self.health.set_loading(false);
        let source_settings = owned_source(settings, &owned);
        let response_timeout = settings.redis.response_timeout.get();
        let stop = CancellationToken::new();
        let engine = start::make_positions_durable(
            engine,
            &source_settings,
            &dirs,
            self.connector(RedisRole::Source, response_timeout),
            (&metrics.snapshots, &self.health),
            shutdown,
        )
        .await;
        let Some(engine) = engine else {
            drop(snapshotter);
            let _ = snapshot_task.await;
            return Ok(Err(None));
        };
        let mut positions = engine.positions();
        positions.resize(source_settings.streams.len(), None);
        let durable: Vec<Option<EntryId>> = positions
            .iter()
            .enumerate()
            .map(|(i, &at)| {
                let p = owned[i % owned.len()];
                at.filter(|_| !kept_partitions.contains(&p))
            })
            .collect();

        let (batch_tx, batch_rx) = mpsc::channel(settings.source.queue_batches.get());
        let (effect_tx, effect_rx) = mpsc::channel(EFFECT_QUEUE);
        let (query_tx, query_rx) = mpsc::channel(super::QUERY_QUEUE);
        let fenced = CancellationToken::new();
        let sink_settings = SinkSettings {
            input_streams: source_settings.streams.clone(),
            fence: Some(Fence {
                group: settings.source.group.clone(),
                leases: run
                    .iter()
                    .map(|(&p, (_, token))| Lease {
                        partition: p,
                        key: leases.key(p),
                        token: token.clone(),
                    })
                    .collect(),
                check_leases: settings.redis.mode != RedisMode::Cluster,
            }),
            ..SinkSettings::from(settings)
        };
        let sink = Sink::new(
            sink_settings,
            self.connector(RedisRole::Sink, response_timeout),
            self.health.clone(),
            metrics.sink.clone(),
            effect_rx,
            written_tx,
        )
        .with_fencing(Fencing {
            refused: metrics.ownership.fenced_writes.clone(),
            fenced: fenced.clone(),
        });
        let sink_task = tokio::spawn(sink.run(abort.clone()));
        let source = Source::new(
            source_settings.clone(),
            self.connector(
                RedisRole::Source,
                source::read_timeout(&source_settings, settings.redis.response_timeout),
            ),
            self.health.clone(),
            metrics.source.clone(),
            batch_tx,
            (positions.clone(), Commit::of(settings)),
        );
        let commit_task = source::commit::spawn(
            Commit::of(settings),
            (&source_settings, source.read_counts(), &durable),
            (&durable_tx, &durable_rx),
            self.connector(RedisRole::Commit, response_timeout),
            abort.clone(),
        );
        // The committer ends once the snapshot writer (the one sender left) is done.
        drop((durable_tx, durable_rx));
        let keep = CancellationToken::new();
        let engine_task = engine_task::spawn_keeping(
            engine,
            Channels {
                batches: batch_rx,
                effects: effect_tx,
                queries: query_rx,
                models: self.models.clone(),
                uplift: self.uplift.clone(),
                applied: None,
            },
            Durability {
                snapshots: Some((snapshotter, settings.state.snapshot_interval.get())),
                health: self.health.clone(),
                recovery_seconds: metrics.service.recovery_seconds.clone(),
                started: self.started,
            },
            settings.clock.tick.get(),
            Some(keep.clone()),
        )
        .map_err(DaemonError::EngineThread)?;
        let source_task = tokio::spawn(source.run(stop.clone()));
        Ok(Ok(Generation {
            stop,
            keep,
            abort,
            fenced,
            queries: query_tx,
            source_task,
            engine_task,
            sink_task,
            snapshot_task,
            commit_task,
        }))
    }
}

/// Why a generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Shutdown,
    Fenced,
    Changed,
}

impl Stop {
    fn describe(self) -> &'static str {
        match self {
            Self::Shutdown => "shutdown",
            Self::Fenced => "a write was refused: a lease is gone",
            Self::Changed => "the partitions assigned changed",
        }
    }
}

/// The engines of a generation that paused to go on with partitions added.
struct Kept {
    engine: Partitioned,
    /// The partitions they ran, with their epochs and tokens.
    run: BTreeMap<u16, (Epoch, String)>,
    /// [`Held::lost`] when they ran.
    lost: u64,
}

impl Kept {
    /// Whether they can go on in the set `now`: only partitions added since.
    fn goes_on_in(&self, now: &Held) -> bool {
        only_added(&self.run, self.lost, now)
    }
}

/// Whether `now` only adds partitions to `run` (held when `lost` leases had been lost):
/// every partition of `run` still to run at the same epoch, none lost since, none to hand
/// over, and some added.
fn only_added(run: &BTreeMap<u16, (Epoch, String)>, lost: u64, now: &Held) -> bool {
    let next = now.to_run();
    now.lost == lost
        && now.hand_over.is_empty()
        && next.len() > run.len()
        && run.iter().all(|(p, v)| next.get(p) == Some(v))
}

/// Resolves once what this replica should run differs from `run`, or a lease was lost
/// since (`lost`): even one held again is a new epoch. Never, once the ownership task is
/// gone (shutdown stops the generation then).
async fn changed(
    held: &mut watch::Receiver<Held>,
    run: &BTreeMap<u16, (Epoch, String)>,
    lost: u64,
) {
    loop {
        if held.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        let now = held.borrow_and_update();
        if now.to_run() != *run || now.lost != lost || !now.hand_over.is_empty() {
            return;
        }
    }
}

/// `[source]` reading only the streams of `owned`, numbered as [`Partitioned`] numbers
/// them (base by base, the owned partitions in order within each). Entries another consumer
/// left pending are not claimed: the partition's previous owner is done with them (it
/// stopped, or its lease expired), and the snapshot's position replays them in order.
fn owned_source(settings: &Settings, owned: &[u16]) -> SourceSettings {
    let count = settings.partitions.count;
    SourceSettings {
        streams: settings
            .source
            .streams
            .iter()
            .flat_map(|base| owned.iter().map(move |&p| count.stream(base, p)))
            .collect(),
        claim_idle: None,
        ..settings.source.clone()
    }
}

/// Passes each query to the running generation's engines; without one, the query is
/// dropped (HTTP answers that the engine is unavailable).
async fn forward_queries(
    mut queries: mpsc::Receiver<Query>,
    target: watch::Receiver<Option<mpsc::Sender<Query>>>,
) {
    while let Some(q) = queries.recv().await {
        let tx = target.borrow().clone();
        if let Some(tx) = tx {
            let _ = tx.send(q).await;
        }
    }
}

/// One set of partitions running.
struct Generation {
    /// Stops the source: the start of a generation's end.
    stop: CancellationToken,
    /// Cancelled before `stop`: the engines are handed back rather than snapshotted.
    keep: CancellationToken,
    /// Gives up writing effects and waiting for them (the snapshots covering them are then
    /// abandoned).
    abort: CancellationToken,
    /// Cancelled by the sink when Redis refused a write: a lease is gone.
    fenced: CancellationToken,
    queries: mpsc::Sender<Query>,
    source_task: JoinHandle<()>,
    engine_task: oneshot::Receiver<Option<Partitioned>>,
    sink_task: JoinHandle<()>,
    snapshot_task: oneshot::Receiver<()>,
    /// Moves the committed groups after each snapshot (positions committed with snapshots).
    commit_task: Option<JoinHandle<()>>,
}

impl Generation {
    /// Stops reading, lets the engines apply what was read and the sink write it, and waits
    /// for the final snapshots, all within `timeout`. After a refused write nothing more is
    /// written: the snapshots still waiting for effects are abandoned. With `keep`, no final
    /// snapshot: the engines are returned once all they applied is written (`None` if the
    /// stop was cut short: a refused write or the timeout).
    async fn stop(self, timeout: Duration, keep: bool) -> Option<Partitioned> {
        let Self {
            stop,
            keep: keeping,
            abort,
            fenced,
            queries,
            source_task,
            engine_task,
            sink_task,
            snapshot_task,
            commit_task,
        } = self;
        drop(queries);
        if keep {
            keeping.cancel();
        }
        stop.cancel();
        let drain = async {
            let _ = source_task.await;
            let engine = engine_task.await.ok().flatten();
            let _ = sink_task.await;
            let _ = snapshot_task.await;
            if let Some(task) = commit_task {
                let _ = task.await;
            }
            engine
        };
        tokio::pin!(drain);
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                engine = &mut drain => return engine.filter(|_| !abort.is_cancelled()),
                () = fenced.cancelled(), if !abort.is_cancelled() => abort.cancel(),
                () = &mut deadline, if !abort.is_cancelled() => {
                    tracing::warn!(?timeout, "stopping the partitions timed out; their next owner replays from the last snapshot written");
                    abort.cancel();
                }
            }
        }
    }
}

/// [`super::run_resolved`] under `partitions.ownership = leases`: HTTP, the lag monitor, the
/// model watcher and the lift report as for one process ([`services`]), the engines in
/// generations of the partitions this replica owns ([`Replica`]).
pub(super) async fn run_replica(
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
    let (local_tx, local) = watch::channel(LocalPartitions::default());
    let replicas = crate::http::Replicas::new(
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
    let replica = Replica {
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
