//! Snapshots on the daemon's clock: the engine's task copies its state (a short pause), and
//! the writer task here encodes and writes the copy off the processing path.
//!
//! A snapshot records "every entry up to here is applied", so it may only become durable
//! once the sink has written every task and dead letter those entries produced: otherwise a
//! crash right after it would lose them (recovery replays only what follows the snapshot).
//! The engine's task numbers the effects it forwards; the writer waits until the sink
//! reports that many written.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, EngineState};
use crate::metrics::Metrics;
use crate::state::{codec, SnapshotDir};
use crate::time::wall_millis;

/// One state copy to write.
struct Job {
    state: EngineState,
    /// Effects forwarded to the sink before the copy was taken.
    effects_before: u64,
    /// Held until the write ends: at most one copy exists at a time.
    permit: OwnedSemaphorePermit,
    at_shutdown: bool,
}

/// The engine task's handle on the writer.
pub struct Snapshotter {
    idle: Arc<Semaphore>,
    jobs: mpsc::Sender<Job>,
    /// Copies the writer is done with, to copy the next snapshot into.
    spares: mpsc::Receiver<EngineState>,
    metrics: Metrics,
}

impl Snapshotter {
    /// Copies the engine's state for the writer, unless the previous copy is still being
    /// written (then this turn is skipped: the next interval takes it).
    pub fn take(&mut self, engine: &Engine, effects_before: u64) {
        if let Ok(permit) = self.idle.clone().try_acquire_owned() {
            self.send(engine, effects_before, permit, false);
        }
    }

    /// The snapshot at shutdown: waits for the writer to be idle, so it is never skipped.
    pub async fn take_final(mut self, engine: &Engine, effects_before: u64) {
        if let Ok(permit) = self.idle.clone().acquire_owned().await {
            self.send(engine, effects_before, permit, true);
        }
    }

    fn send(
        &mut self,
        engine: &Engine,
        effects_before: u64,
        permit: OwnedSemaphorePermit,
        at_shutdown: bool,
    ) {
        let started = Instant::now();
        // The writer returns its copy before it releases the permit we hold now.
        let state = match self.spares.try_recv() {
            Ok(mut spare) => {
                engine.snapshot_into(&mut spare);
                spare
            }
            Err(_) => engine.snapshot(),
        };
        self.metrics
            .snapshot_pause_seconds
            .observe(started.elapsed().as_secs_f64());
        let job = Job {
            state,
            effects_before,
            permit,
            at_shutdown,
        };
        // The permit guarantees room; a closed channel means the writer is gone (shutdown).
        let _ = self.jobs.try_send(job);
    }
}

/// Starts the writer; it ends once the returned handle is dropped and its last job is done.
/// `written` counts the effects the sink has written; `abort` gives up waiting for them.
pub fn spawn(
    dir: SnapshotDir,
    streams: Vec<String>,
    written: watch::Receiver<u64>,
    metrics: Metrics,
    abort: CancellationToken,
) -> (Snapshotter, tokio::task::JoinHandle<()>) {
    let (jobs_tx, jobs_rx) = mpsc::channel(1);
    let (spares_tx, spares_rx) = mpsc::channel(1);
    let handle = Snapshotter {
        idle: Arc::new(Semaphore::new(1)),
        jobs: jobs_tx,
        spares: spares_rx,
        metrics: metrics.clone(),
    };
    let task = tokio::spawn(run(
        Arc::new(dir),
        Arc::from(streams),
        jobs_rx,
        spares_tx,
        written,
        metrics,
        abort,
    ));
    (handle, task)
}

async fn run(
    dir: Arc<SnapshotDir>,
    streams: Arc<[String]>,
    mut jobs: mpsc::Receiver<Job>,
    spares: mpsc::Sender<EngineState>,
    mut written: watch::Receiver<u64>,
    metrics: Metrics,
    abort: CancellationToken,
) {
    while let Some(job) = jobs.recv().await {
        let Job {
            state,
            effects_before,
            permit,
            at_shutdown,
        } = job;
        let effects_written = tokio::select! {
            w = written.wait_for(|&n| n >= effects_before) => w.is_ok(),
            _ = abort.cancelled() => false,
        };
        if !effects_written {
            let _ = spares.try_send(state);
            drop(permit);
            metrics.snapshots.with_label_values(&["abandoned"]).inc();
            tracing::warn!(
                "snapshot abandoned: the effects it covers were not all written; the previous snapshot stays the newest"
            );
            continue;
        }
        let started = Instant::now();
        let created_ms = wall_millis();
        let customers = state.customers.len();
        let (dir, streams) = (dir.clone(), streams.clone());
        let result = tokio::task::spawn_blocking(move || {
            let bytes = codec::encode(&state, &streams, created_ms);
            let len = bytes.len();
            (dir.write(&bytes, created_ms).map(|path| (path, len)), state)
        })
        .await
        .map(|(written, state)| {
            // Kept for the next copy: the process holds it anyway at every snapshot.
            let _ = spares.try_send(state);
            written
        });
        drop(permit);
        match result {
            Ok(Ok((path, bytes))) => {
                metrics.snapshots.with_label_values(&["written"]).inc();
                metrics
                    .snapshot_write_seconds
                    .observe(started.elapsed().as_secs_f64());
                metrics.snapshot_bytes.set(bytes as i64);
                metrics
                    .snapshot_last_success
                    .set((created_ms / 1000) as i64);
                let elapsed = started.elapsed();
                if at_shutdown {
                    tracing::info!(path = %path.display(), customers, bytes, ?elapsed, "final snapshot written");
                } else {
                    tracing::debug!(path = %path.display(), customers, bytes, ?elapsed, "snapshot written");
                }
            }
            Ok(Err(e)) => {
                metrics.snapshots.with_label_values(&["failed"]).inc();
                tracing::error!(error = %e, "snapshot failed; the previous one stays the newest");
            }
            Err(e) => {
                metrics.snapshots.with_label_values(&["failed"]).inc();
                tracing::error!(error = %e, "snapshot task failed");
            }
        }
    }
}
