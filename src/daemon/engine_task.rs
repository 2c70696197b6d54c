//! The task that owns the [`Engine`]: applies batches, ticks the clock, swaps models and
//! answers queries, forwarding effects to the sink. One owner, no locks on the hot path.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::engine::{Effects, Engine};
use crate::http::Query;
use crate::model::Model;
use crate::source::batch::Batch;
use crate::time::wall_millis;

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

/// Sends effects to the sink, answering queries while the sink is backed up. `false` when
/// the sink is gone.
async fn forward(
    engine: &Engine,
    fx: Effects,
    effects: &mpsc::Sender<Effects>,
    queries: &mut mpsc::Receiver<Query>,
) -> bool {
    if fx.is_empty() {
        return true;
    }
    let send = effects.send(fx);
    tokio::pin!(send);
    loop {
        tokio::select! {
            sent = &mut send => return sent.is_ok(),
            Some(q) = queries.recv() => answer(engine, q),
        }
    }
}

/// Runs until the source closes the batch channel (shutdown) or the sink goes away.
pub async fn run(
    mut engine: Engine,
    mut batches: mpsc::Receiver<Batch>,
    effects: mpsc::Sender<Effects>,
    mut queries: mpsc::Receiver<Query>,
    mut models: watch::Receiver<Arc<Model>>,
    tick: Duration,
) {
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            biased;
            Some(q) = queries.recv() => answer(&engine, q),
            Ok(()) = models.changed() => {
                let model = models.borrow_and_update().clone();
                tracing::info!(version = model.version(), "serving the reloaded model");
                engine.set_model(model);
            }
            batch = batches.recv() => {
                let Some(batch) = batch else { break };
                let fx = engine.apply_batch(batch, wall_millis());
                if !forward(&engine, fx, &effects, &mut queries).await {
                    break;
                }
            }
            _ = ticker.tick() => {
                let fx = engine.tick(wall_millis());
                if !forward(&engine, fx, &effects, &mut queries).await {
                    break;
                }
            }
        }
    }
    tracing::info!("engine stopped");
}
