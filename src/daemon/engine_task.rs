//! The task that owns the engines (one per partition, see [`Partitioned`]): applies batches,
//! ticks the clock, swaps models, takes snapshots and answers queries, forwarding effects to
//! the sink. One owner, no locks on the hot path, on a thread of its own (see [`spawn`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::snapshots::{Room, Snapshotter};
use super::Applied;
use crate::decide::uplift::UpliftBook;
use crate::engine::{Effects, Partitioned};
use crate::event::EntryId;
use crate::health::{Health, Part};
use crate::http::Query;
use crate::model::Model;
use crate::source::batch::Batch;
use crate::time::wall_millis;

/// What the engine task talks to.
pub(crate) struct Channels {
    pub batches: mpsc::Receiver<Batch>,
    pub effects: mpsc::Sender<Effects>,
    pub queries: mpsc::Receiver<Query>,
    pub models: watch::Receiver<Arc<Model>>,
    /// The outcomes per arm the lift task measured (`winback.policy = learned`).
    pub uplift: watch::Receiver<Arc<UpliftBook>>,
    /// Where the positions applied are published, if anyone asked (see `Observers`).
    pub applied: Option<watch::Sender<Applied>>,
}

/// Snapshots on an interval, and how recovery is reported.
pub(crate) struct Durability {
    pub snapshots: Option<(Snapshotter, Duration)>,
    pub health: Arc<Health>,
    /// `churnd_recovery_duration_seconds`, set once state has caught up.
    pub recovery_seconds: prometheus::Gauge,
    /// When the daemon started: recovery time counts from here.
    pub started: Instant,
}

fn answer(engine: &Partitioned, query: Query) {
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
async fn forward(
    engine: &Partitioned,
    fx: Effects,
    ch: &mut Channels,
    forwarded: &mut u64,
) -> bool {
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

/// The last entry ID per stream in `batch` (indexed by stream; 0-0 for a stream it does
/// not touch).
fn last_ids(batch: &Batch) -> Vec<EntryId> {
    let mut last = Vec::new();
    for e in &batch.entries {
        let i = usize::from(e.stream);
        if last.len() <= i {
            last.resize(i + 1, EntryId::default());
        }
        last[i] = last[i].max(e.id);
    }
    last
}

/// Moves the published positions up to `last`, stamped `at`; receivers are woken only if
/// one moved. The engine keeps the same maximum for itself (entries at or below it are not
/// applied again), so what is published matches the engine's own record without reading it.
fn publish_applied(tx: &watch::Sender<Applied>, last: &[EntryId], at: Instant) {
    tx.send_if_modified(|applied| {
        if applied.positions.len() < last.len() {
            applied.positions.resize(last.len(), EntryId::default());
        }
        let mut moved = false;
        for (position, id) in applied.positions.iter_mut().zip(last) {
            if id > position {
                *position = *id;
                moved = true;
            }
        }
        if moved {
            applied.at = Some(at);
        }
        moved
    });
}

/// The next tick of an interval that may be off (`None`: never ticks).
async fn next_tick(ticker: &mut Option<tokio::time::Interval>) -> Option<()> {
    ticker.as_mut()?.tick().await;
    Some(())
}

/// Room for the next slice of a snapshot being copied; `None` at once when there is none.
async fn snapshot_room(snapshotter: &Option<Snapshotter>) -> Option<Room> {
    snapshotter.as_ref()?.room().await
}

/// Starts [`run`] on a thread of its own, in a single-threaded runtime. The engine's O(n)
/// passes (eviction, the recheck of everyone after a model swap, a threshold refresh) take
/// tens of milliseconds at millions of customers; on a worker of the shared runtime they
/// would hold up whatever else that worker had queued: HTTP probes, the source's next read,
/// the sink's writes. The channels are the same either way. The receiver resolves when the
/// engine has stopped and taken its final snapshot (or panicked: the sender is dropped).
pub fn spawn(
    engine: Partitioned,
    ch: Channels,
    durability: Durability,
    tick: Duration,
) -> std::io::Result<oneshot::Receiver<Option<Partitioned>>> {
    spawn_keeping(engine, ch, durability, tick, None)
}

/// As [`spawn`]; but if `keep` is cancelled when the source closes the batch channel, the
/// engines are handed back through the receiver instead of taking a final snapshot (a
/// snapshot being copied is dropped): a replica that only adds partitions goes on with
/// the engines it has ([`super::replica`]). Not when the sink went away first: what the
/// engines applied may not all be written then.
pub fn spawn_keeping(
    engine: Partitioned,
    ch: Channels,
    durability: Durability,
    tick: Duration,
    keep: Option<CancellationToken>,
) -> std::io::Result<oneshot::Receiver<Option<Partitioned>>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    // The thread's logs carry the daemon's span, as a task's would.
    let span = tracing::Span::current();
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("churnd-engine".into())
        .spawn(move || {
            let _entered = span.enter();
            let kept = runtime.block_on(run(engine, ch, durability, tick, keep));
            let _ = done_tx.send(kept);
        })?;
    Ok(done_rx)
}

/// Runs until the source closes the batch channel (shutdown) or the sink goes away, then
/// takes the final snapshot, or hands the engines back (see [`spawn_keeping`]).
async fn run(
    mut engine: Partitioned,
    mut ch: Channels,
    durability: Durability,
    tick: Duration,
    keep: Option<CancellationToken>,
) -> Option<Partitioned> {
    let Durability {
        snapshots,
        health,
        recovery_seconds,
        started,
    } = durability;
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut snapshotter, mut snapshot_ticker) = snapshots
        .map(|(s, every)| {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate: nothing to save yet.
            ticker.reset();
            (s, ticker)
        })
        .unzip();
    let mut forwarded = 0u64;
    // The loop ended because the sink went away (not the source): keep nothing.
    let mut sink_gone = false;
    loop {
        tokio::select! {
            biased;
            Some(q) = ch.queries.recv() => answer(&engine, q),
            Ok(()) = ch.models.changed() => {
                let model = ch.models.borrow_and_update().clone();
                tracing::info!(version = model.version(), "serving the reloaded model");
                engine.set_model(model);
            }
            // Between batches: an Arc swap, no lock on the path of events. With snapshots
            // on, the next snapshot takes the book and records it, so that a replay from it
            // decides with the same one.
            Ok(()) = ch.uplift.changed() => {
                let book = ch.uplift.borrow_and_update().clone();
                tracing::debug!(arms = book.arms(), "the lift measured so far");
                if snapshotter.is_some() {
                    engine.offer_uplift(book);
                } else {
                    engine.set_uplift(book);
                }
            }
            batch = ch.batches.recv() => {
                let Some(batch) = batch else { break };
                let caught_up = batch.caught_up;
                let last = ch.applied.as_ref().map(|_| last_ids(&batch));
                let fx = engine.apply_batch(batch, wall_millis());
                if let (Some(tx), Some(last)) = (&ch.applied, last) {
                    publish_applied(tx, &last, Instant::now());
                }
                if !forward(&engine, fx, &mut ch, &mut forwarded).await {
                    sink_gone = true;
                    break;
                }
                if let Some(s) = &mut snapshotter {
                    s.step(engine.parts_mut());
                }
                if caught_up {
                    let elapsed = started.elapsed();
                    recovery_seconds.set(elapsed.as_secs_f64());
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
                    sink_gone = true;
                    break;
                }
                if let Some(s) = &mut snapshotter {
                    s.step(engine.parts_mut());
                }
            }
            Some(()) = next_tick(&mut snapshot_ticker) => {
                if let Some(s) = &mut snapshotter {
                    s.begin(engine.parts_mut(), forwarded);
                    s.step(engine.parts_mut());
                }
            }
            // No batch came: the snapshot being copied goes on at the writer's pace.
            Some(room) = snapshot_room(&snapshotter) => {
                if let Some(s) = &mut snapshotter {
                    s.copy(engine.parts_mut(), room);
                }
            }
        }
    }
    if !sink_gone && keep.is_some_and(|k| k.is_cancelled()) {
        tracing::info!("engine paused: its partitions go on in the next set");
        if let Some(s) = snapshotter {
            s.abandon(engine.parts_mut()).await;
        }
        return Some(engine);
    }
    tracing::info!("engine stopped");
    if let Some(s) = snapshotter {
        s.finish(engine.parts_mut(), forwarded).await;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::batch::Entry;

    fn entry(stream: u16, ms: u64, seq: u64) -> Entry {
        Entry {
            stream,
            id: EntryId { ms, seq },
            values: None,
        }
    }

    #[test]
    fn published_positions_only_move_forward_and_wake_receivers_only_when_they_do() {
        let (tx, mut rx) = watch::channel(Applied {
            positions: vec![EntryId { ms: 5, seq: 0 }, EntryId::default()],
            at: None,
        });
        rx.mark_unchanged();
        let batch = Batch::new(vec![entry(1, 3, 0), entry(1, 4, 2), entry(0, 2, 0)]);
        let last = last_ids(&batch);
        assert_eq!(
            last,
            vec![EntryId { ms: 2, seq: 0 }, EntryId { ms: 4, seq: 2 }]
        );
        let at = Instant::now();
        publish_applied(&tx, &last, at);
        assert!(rx.has_changed().unwrap());
        let seen = rx.borrow_and_update().clone();
        assert_eq!(
            seen.positions[0],
            EntryId { ms: 5, seq: 0 },
            "never moves back"
        );
        assert_eq!(seen.positions[1], EntryId { ms: 4, seq: 2 });
        assert_eq!(seen.at, Some(at));
        assert!(seen.covers(1, EntryId { ms: 4, seq: 1 }));
        assert!(!seen.covers(1, EntryId { ms: 4, seq: 3 }));
        assert!(!seen.covers(2, EntryId { ms: 1, seq: 0 }), "unknown stream");

        // A batch of older entries (claimed ones) moves nothing: no wake-up, time kept.
        publish_applied(
            &tx,
            &last_ids(&Batch::new(vec![entry(0, 1, 0)])),
            Instant::now(),
        );
        assert!(!rx.has_changed().unwrap());
        assert_eq!(rx.borrow().at, Some(at));
    }
}
