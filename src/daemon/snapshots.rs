//! Snapshots on the daemon's clock, taken while events keep flowing. The engine's task begins
//! a capture of its state (no copy: the store keeps each customer as it was until it is
//! copied out) and hands the customers to the writer here a slice at a time, between batches;
//! the writer encodes each slice and writes it as it comes, off the processing path. Event
//! processing never stops for longer than one slice's copy, and no second copy of the table
//! is ever held.
//!
//! A snapshot records "every entry up to here is applied", so it may only become durable
//! once the sink has written every task and dead letter those entries produced: otherwise a
//! crash right after it would lose them (recovery replays only what follows the snapshot).
//! The engine's task numbers the effects it forwards; the writer waits until the sink
//! reports that many written before it commits the file.
//!
//! A snapshot of a state that has not changed since the last one written is skipped (counted
//! as `skipped`): an idle daemon with millions of customers would otherwise rewrite the same
//! gigabytes every interval. The last one written already holds that state, so a restart
//! from it loses nothing.
//!
//! Once a snapshot is durable, its positions are published to the committer
//! ([`crate::source::commit`]), which moves each stream's `<group>:committed` group there: with
//! state kept, that is how Redis learns what is safe, instead of an `XACK` per entry.
//!
//! With one engine per partition (`partitions.count` > 1) each partition's state is its own
//! snapshot, in its own directory: a round captures every partition whose state changed at
//! the same moment (after the same effects), then hands them to the writer one after the
//! other. With one partition a round is one snapshot, as before partitions.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc::{self, OwnedPermit};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::engine::{Customer, Engine, Extras, StateHeader, StateVersion};
use crate::event::EntryId;
use crate::features::store::{CaptureSize, Captured};
use crate::health::Health;
use crate::metrics::{SnapshotMetrics, SnapshotOutcome, SnapshotSkipped, SnapshotWritten};
use crate::source::commit::Durable;
use crate::state::{SnapshotStore, SnapshotWriter, SLICE_CUSTOMERS};
use crate::time::wall_millis;

/// Slices waiting for the writer; when they are full the engine goes on without copying.
const QUEUE: usize = 2;

/// What the engine's task sends the writer, in order: a `Begin`, the customers in slices,
/// then `End` (or `Abort`).
enum Job {
    Begin {
        /// Boxed: with the open tasks it is far larger than the other jobs.
        capture: Box<Capture>,
        /// Effects forwarded to the sink before the capture began.
        effects_before: u64,
        at_shutdown: bool,
        /// Held until every snapshot of the round is written or dropped: one round at a
        /// time.
        permit: Arc<OwnedSemaphorePermit>,
    },
    Customers(Captured<Customer, Extras>),
    End,
    Abort,
}

/// One partition's state as captured at the start of a round.
struct Capture {
    /// The partition (the index of its engine and of its snapshot directory).
    partition: usize,
    header: StateHeader,
    /// The state it records, to remember once it is written.
    version: StateVersion,
    size: CaptureSize,
}

/// A round of snapshots being handed to the writer.
struct Round {
    /// The partition whose customers are being copied (its `Begin` sent).
    copying: Option<usize>,
    /// Partitions captured, not begun yet.
    waiting: VecDeque<Capture>,
    effects_before: u64,
    at_shutdown: bool,
    permit: Arc<OwnedSemaphorePermit>,
}

/// Room in the writer's queue for the next step of a snapshot.
pub(crate) struct Room(OwnedPermit<Job>);

/// Per partition, the state of the last snapshot written, set by the writer once it is
/// durable.
type Written = Arc<Mutex<Vec<Option<StateVersion>>>>;

/// The engine task's handle on the writer.
pub(crate) struct Snapshotter {
    idle: Arc<Semaphore>,
    jobs: mpsc::Sender<Job>,
    /// A round has begun and not all of it was handed to the writer yet.
    round: Option<Round>,
    written: Written,
    metrics: SnapshotMetrics,
    health: Arc<Health>,
}

impl Snapshotter {
    /// Begins a round of snapshots, unless the previous one is still being written (then
    /// this turn is skipped: the next interval takes it) or no partition's state changed
    /// since it was last written.
    pub fn begin(&mut self, engines: &mut [Engine], effects_before: u64) {
        if self.round.is_some() || self.jobs.is_closed() {
            return;
        }
        if let Ok(permit) = self.idle.clone().try_acquire_owned() {
            let changed = self.changed(engines);
            if !changed.is_empty() {
                self.start(engines, &changed, effects_before, permit, false);
            }
        }
    }

    /// The partitions whose state is not the one their last snapshot written holds
    /// (checked with the writer idle, so that "last written" is final); counts and logs a
    /// skip when there is none.
    fn changed(&self, engines: &[Engine]) -> Vec<usize> {
        let written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let changed: Vec<usize> = engines
            .iter()
            .enumerate()
            .filter(|&(p, engine)| {
                written.get(p).cloned().flatten() != Some(engine.state_version())
            })
            .map(|(p, _)| p)
            .collect();
        if changed.is_empty() {
            SnapshotSkipped {
                now_ms: wall_millis(),
            }
            .emit(&self.metrics);
        }
        changed
    }

    fn start(
        &mut self,
        engines: &mut [Engine],
        partitions: &[usize],
        effects_before: u64,
        permit: OwnedSemaphorePermit,
        at_shutdown: bool,
    ) {
        let started = Instant::now();
        // Every partition at the same moment: after the same effects.
        let mut waiting: VecDeque<Capture> = partitions
            .iter()
            .map(|&partition| {
                let engine = &mut engines[partition];
                // The version after the capture began: beginning takes a book offered since.
                let (header, size) = engine.begin_snapshot();
                let version = engine.state_version();
                Capture {
                    partition,
                    header,
                    version,
                    size,
                }
            })
            .collect();
        let first = waiting.pop_front().expect("a partition to snapshot");
        let partition = first.partition;
        let permit = Arc::new(permit);
        let begin = Job::Begin {
            capture: Box::new(first),
            effects_before,
            at_shutdown,
            permit: permit.clone(),
        };
        // The writer is idle (we hold its permit), so its queue is empty; a full or closed
        // queue means it is gone (shutdown).
        match self.jobs.try_send(begin) {
            Ok(()) => {
                self.round = Some(Round {
                    copying: Some(partition),
                    waiting,
                    effects_before,
                    at_shutdown,
                    permit,
                });
            }
            Err(_) => abort_all(engines),
        }
        self.observe_pause(started);
    }

    /// Hands the writer the next slice if it has room: called after every batch and tick, so
    /// that a snapshot progresses however busy the engine is.
    pub fn step(&mut self, engines: &mut [Engine]) {
        if self.round.is_none() {
            return;
        }
        match self.jobs.clone().try_reserve_owned() {
            Ok(permit) => self.copy(engines, Room(permit)),
            Err(mpsc::error::TrySendError::Closed(_)) => self.writer_gone(engines),
            Err(mpsc::error::TrySendError::Full(_)) => {}
        }
    }

    /// The writer's thread ended (it panicked): the snapshot being copied out is dropped, so
    /// that the store stops keeping records for it, and no other begins.
    fn writer_gone(&mut self, engines: &mut [Engine]) {
        abort_all(engines);
        self.round = None;
        self.metrics.outcomes.get(SnapshotOutcome::Failed).inc();
        self.health
            .snapshots_stopped("the snapshot writer is gone; restart churnd");
        tracing::error!("the snapshot writer is gone: no more snapshots until churnd restarts");
    }

    /// Resolves with room for the next slice while a snapshot is being copied (the engine
    /// task waits on it when no batch comes); `None` at once otherwise.
    pub fn room(&self) -> impl Future<Output = Option<Room>> + 'static {
        let jobs = self.round.is_some().then(|| self.jobs.clone());
        async move { jobs?.reserve_owned().await.ok().map(Room) }
    }

    /// Copies the next slice into `room`, ends the partition's snapshot when none is left,
    /// or begins the next partition's.
    pub fn copy(&mut self, engines: &mut [Engine], room: Room) {
        let Some(round) = &mut self.round else {
            return;
        };
        let started = Instant::now();
        match round.copying {
            Some(partition) => match engines[partition].snapshot_slice(SLICE_CUSTOMERS) {
                Some(slice) => {
                    room.0.send(Job::Customers(slice));
                }
                None => {
                    room.0.send(Job::End);
                    round.copying = None;
                    if round.waiting.is_empty() {
                        self.round = None;
                    }
                }
            },
            None => {
                if let Some(capture) = round.waiting.pop_front() {
                    round.copying = Some(capture.partition);
                    room.0.send(Job::Begin {
                        capture: Box::new(capture),
                        effects_before: round.effects_before,
                        at_shutdown: round.at_shutdown,
                        permit: round.permit.clone(),
                    });
                }
            }
        }
        self.observe_pause(started);
    }

    fn observe_pause(&self, started: Instant) {
        self.metrics
            .pause_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// The snapshot at shutdown, of the final state: a snapshot still being copied is
    /// dropped, then a new one is copied whole, waiting for the writer. Skipped only when the
    /// last snapshot written holds this very state (a restart from it loses nothing).
    pub async fn finish(mut self, engines: &mut [Engine], effects_before: u64) {
        if self.round.take().is_some() {
            abort_all(engines);
            if self.jobs.send(Job::Abort).await.is_err() {
                return;
            }
        }
        let Ok(permit) = self.idle.clone().acquire_owned().await else {
            return;
        };
        let changed = self.changed(engines);
        if changed.is_empty() {
            tracing::info!("final snapshot skipped: the last one written holds this state");
            return;
        }
        self.start(engines, &changed, effects_before, permit, true);
        while self.round.is_some() {
            match self.room().await {
                Some(room) => self.copy(engines, room),
                None => {
                    abort_all(engines);
                    return;
                }
            }
        }
    }
}

impl Snapshotter {
    /// Ends without a final snapshot: a snapshot still being copied is dropped; one handed
    /// whole to the writer is still written. For engines that go on in another set of
    /// partitions, whose snapshots come from the next writer.
    pub async fn abandon(mut self, engines: &mut [Engine]) {
        if self.round.take().is_some() {
            abort_all(engines);
            let _ = self.jobs.send(Job::Abort).await;
        }
    }
}

/// Drops every partition's snapshot in progress.
fn abort_all(engines: &mut [Engine]) {
    engines.iter_mut().for_each(Engine::abort_snapshot);
}

/// How much lower than the daemon's the writer thread's scheduling priority is (added to its
/// nice value): encoding and writing a large snapshot takes seconds of CPU, which on a small
/// machine would otherwise be taken from Redis and the engine, showing as latency. The
/// writer uses what they leave idle.
const WRITER_NICENESS: libc::c_int = 10;

/// Starts the writer on a thread of its own; it ends once the returned handle is dropped and
/// its last job is done (the receiver then resolves). `written` counts the effects the sink
/// has written; `abort` gives up waiting for them. Each snapshot written or failed is told
/// to `health`, and the positions of each one written to `durable`.
pub fn spawn(
    dirs: Vec<(SnapshotStore, Vec<String>)>,
    (written, durable): (watch::Receiver<u64>, watch::Sender<Durable>),
    metrics: SnapshotMetrics,
    health: Arc<Health>,
    abort: CancellationToken,
) -> std::io::Result<(Snapshotter, oneshot::Receiver<()>)> {
    let (jobs_tx, jobs_rx) = mpsc::channel(QUEUE);
    let state_written = Written::new(Mutex::new(vec![None; dirs.len()]));
    let handle = Snapshotter {
        idle: Arc::new(Semaphore::new(1)),
        jobs: jobs_tx,
        round: None,
        written: state_written.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
    };
    let writer = Writer {
        dirs,
        written,
        durable,
        state_written,
        metrics,
        health,
        abort,
        runtime: tokio::runtime::Handle::current(),
    };
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("churnd-snapshots".into())
        .spawn(move || {
            lower_priority();
            writer.run(jobs_rx);
            let _ = done_tx.send(());
        })?;
    Ok((handle, done_rx))
}

/// Lowers the calling thread's scheduling priority by [`WRITER_NICENESS`] (at most to 19,
/// the lowest).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getpriority, setpriority and gettid have no memory-safety preconditions;
        // on Linux a thread ID names one thread, so only this one is affected. A thread
        // starts with the process's nice value, which getpriority reads.
        let rc = unsafe {
            let thread = libc::gettid() as libc::id_t;
            let current = libc::getpriority(libc::PRIO_PROCESS, thread);
            libc::setpriority(
                libc::PRIO_PROCESS,
                thread,
                (current + WRITER_NICENESS).min(19),
            )
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the snapshot writer's priority");
        }
    }
}

struct Writer {
    /// Per partition, where its snapshots go and the streams its positions are of.
    dirs: Vec<(SnapshotStore, Vec<String>)>,
    written: watch::Receiver<u64>,
    /// Where the positions of each snapshot committed are published.
    durable: watch::Sender<Durable>,
    /// Where the state of each snapshot committed is recorded.
    state_written: Written,
    metrics: SnapshotMetrics,
    health: Arc<Health>,
    abort: CancellationToken,
    /// To wait for the sink from this thread.
    runtime: tokio::runtime::Handle,
}

/// A snapshot the writer is writing.
struct InProgress {
    /// The file so far, or why it cannot be written (the rest of the snapshot is then only
    /// received, to be reported failed at its end).
    writer: Result<SnapshotWriter, String>,
    partition: usize,
    version: StateVersion,
    /// Per stream of the partition, the position the snapshot holds.
    applied: Vec<Option<EntryId>>,
    effects_before: u64,
    at_shutdown: bool,
    customers: u64,
    created_ms: u64,
    started: Instant,
    /// Released when every snapshot of the round is written or dropped.
    _permit: Arc<OwnedSemaphorePermit>,
}

impl InProgress {
    /// Encodes and writes the next customers.
    fn append(&mut self, slice: &Captured<Customer, Extras>) {
        if let Ok(writer) = &mut self.writer {
            if let Err(e) = writer.append(slice) {
                self.writer = Err(e.to_string());
            }
        }
    }
}

impl Writer {
    fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let mut current: Option<InProgress> = None;
        while let Some(job) = jobs.blocking_recv() {
            match job {
                Job::Begin {
                    capture,
                    effects_before,
                    at_shutdown,
                    permit,
                } => {
                    let created_ms = wall_millis();
                    let Capture {
                        partition,
                        header,
                        version,
                        size,
                    } = *capture;
                    let (dir, streams) = &self.dirs[partition];
                    let writer = SnapshotWriter::start(dir, &header, size, streams, created_ms)
                        .map_err(|e| e.to_string());
                    current = Some(InProgress {
                        writer,
                        partition,
                        version,
                        applied: header.applied.clone(),
                        effects_before,
                        at_shutdown,
                        customers: size.customers,
                        created_ms,
                        started: Instant::now(),
                        _permit: permit,
                    });
                }
                Job::Customers(slice) => {
                    if let Some(snapshot) = &mut current {
                        snapshot.append(&slice);
                    }
                }
                Job::End => {
                    if let Some(snapshot) = current.take() {
                        self.end(snapshot);
                    }
                }
                Job::Abort => {
                    // Dropping it removes its temporary file.
                    current = None;
                    tracing::debug!("snapshot in progress dropped for the final one");
                }
            }
        }
    }

    /// Commits a snapshot whose customers are all written, once the effects it covers are.
    fn end(&mut self, snapshot: InProgress) {
        let effects_before = snapshot.effects_before;
        let (written, abort) = (&mut self.written, &self.abort);
        let effects_written = self.runtime.block_on(async {
            tokio::select! {
                w = written.wait_for(|&n| n >= effects_before) => w.is_ok(),
                _ = abort.cancelled() => false,
            }
        });
        if !effects_written {
            self.metrics.outcomes.get(SnapshotOutcome::Abandoned).inc();
            tracing::warn!(
                "snapshot abandoned: the effects it covers were not all written; the previous snapshot stays the newest"
            );
            return;
        }
        let (started, created_ms) = (snapshot.started, snapshot.created_ms);
        let (customers, at_shutdown) = (snapshot.customers, snapshot.at_shutdown);
        match snapshot
            .writer
            .and_then(|writer| writer.commit().map_err(|e| e.to_string()))
        {
            Ok((location, bytes)) => {
                self.state_written.lock().unwrap_or_else(|e| e.into_inner())[snapshot.partition] =
                    Some(snapshot.version);
                let streams = &self.dirs[snapshot.partition].1;
                self.durable.send_modify(|durable| {
                    for (stream, at) in streams.iter().zip(&snapshot.applied) {
                        if let Some(at) = at {
                            durable.insert(stream.clone(), *at);
                        }
                    }
                });
                SnapshotWritten {
                    path: &location,
                    customers,
                    bytes,
                    elapsed: started.elapsed(),
                    created_ms,
                    notable: at_shutdown.then_some("final snapshot written"),
                }
                .emit(&self.metrics);
                self.health.snapshot_written();
            }
            Err(e) => {
                self.metrics.outcomes.get(SnapshotOutcome::Failed).inc();
                self.health.snapshot_failed(&e);
                tracing::error!(error = %e, "snapshot failed; the previous one stays the newest");
            }
        }
    }
}
