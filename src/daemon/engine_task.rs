//! The task that owns the [`Engine`]: applies batches, ticks the clock, swaps models, takes
//! snapshots and answers queries, forwarding effects to the sink. One owner, no locks on the
//! hot path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::snapshots::Snapshotter;
use crate::engine::{Effects, Engine};
use crate::health::{Health, Part};
use crate::http::Query;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::source::batch::Batch;
use crate::time::wall_millis;

/// What the engine task talks to.
pub struct Channels {
    pub batches: mpsc::Receiver<Batch>,
    pub effects: mpsc::Sender<Effects>,
    pub queries: mpsc::Receiver<Query>,
    pub models: watch::Receiver<Arc<Model>>,
}

/// Snapshots on an interval, and how recovery is reported.
pub struct Durability {
    pub snapshots: Option<(Snapshotter, Duration)>,
    pub health: Arc<Health>,
    pub metrics: Metrics,
    /// When the daemon started: recovery time counts from here.
    pub started: Instant,
}

fn answer(engine: &Engine, query: Query) {
    // A dropped receiver means the HTTP request gave up; nothing to do.
    match query {
        Query::Customer(id, reply) => {
            let _ = reply.send(engine.customer(&id));
        }
        Query::Summary(reply) => {
            let _ = reply.send(engine.summary());
        }
    }
}

/// Sends effects to the sink, answering queries while the sink is backed up, and counts
/// them in `forwarded`. `false` when the sink is gone.
async fn forward(engine: &Engine, fx: Effects, ch: &mut Channels, forwarded: &mut u64) -> bool {
    if fx.is_empty() {
        return true;
    }
    let send = ch.effects.send(fx);
    tokio::pin!(send);
    loop {
        tokio::select! {
            sent = &mut send => {
                *forwarded += 1;
                return sent.is_ok();
            }
            Some(q) = ch.queries.recv() => answer(engine, q),
        }
    }
}

/// The next tick of an interval that may be off (`None`: never ticks).
async fn next_tick(ticker: &mut Option<tokio::time::Interval>) -> Option<()> {
    ticker.as_mut()?.tick().await;
    Some(())
}

/// Runs until the source closes the batch channel (shutdown) or the sink goes away, then
/// takes the final snapshot.
pub async fn run(mut engine: Engine, mut ch: Channels, durability: Durability, tick: Duration) {
    let Durability {
        snapshots,
        health,
        metrics,
        started,
    } = durability;
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (snapshotter, mut snapshot_ticker) = snapshots
        .map(|(s, every)| {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate: nothing to save yet.
            ticker.reset();
            (s, ticker)
        })
        .unzip();
    let mut forwarded = 0u64;
    loop {
        tokio::select! {
            biased;
            Some(q) = ch.queries.recv() => answer(&engine, q),
            Ok(()) = ch.models.changed() => {
                let model = ch.models.borrow_and_update().clone();
                tracing::info!(version = model.version(), "serving the reloaded model");
                engine.set_model(model);
            }
            batch = ch.batches.recv() => {
                let Some(batch) = batch else { break };
                let caught_up = batch.caught_up;
                let fx = engine.apply_batch(batch, wall_millis());
                if !forward(&engine, fx, &mut ch, &mut forwarded).await {
                    break;
                }
                if caught_up {
                    let elapsed = started.elapsed();
                    metrics.recovery_seconds.set(elapsed.as_secs_f64());
                    health.set(Part::State, true);
                    tracing::info!(
                        customers = engine.customers(),
                        ?elapsed,
                        "state recovered: caught up with the input streams"
                    );
                }
            }
            _ = ticker.tick() => {
                let fx = engine.tick(wall_millis());
                if !forward(&engine, fx, &mut ch, &mut forwarded).await {
                    break;
                }
            }
            Some(()) = next_tick(&mut snapshot_ticker) => {
                if let Some(s) = &snapshotter {
                    s.take(&engine, forwarded);
                }
            }
        }
    }
    tracing::info!("engine stopped");
    if let Some(s) = snapshotter {
        s.take_final(&engine, forwarded).await;
    }
}
