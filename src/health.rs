//! Readiness: connected to Redis for reading and writing, with a model loaded and customer
//! state recovered (snapshot loaded, input streams read up to their end once), and snapshots
//! being written (not too many failed in a row).
//!
//! Each part reports its own state; `/readyz` and the `churnd_ready` gauge read the whole.
//!
//! A replica under `partitions.ownership = leases` ([`Health::for_replica`]) is ready when it
//! is among the live replicas and every partition it holds is restored and running: not
//! while it joins, restores or hands partitions over. A replica that holds no partition
//! (more replicas than partitions) is ready: it answers queries by passing them on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use prometheus::IntGauge;

pub struct Health {
    source: AtomicBool,
    sink: AtomicBool,
    model: AtomicBool,
    state: AtomicBool,
    /// The snapshot is being read: there is no engine to ask yet.
    loading: AtomicBool,
    /// Failed snapshots in a row. A std mutex: held only to update or read it, never across
    /// an await, and taken a few times per snapshot interval and per probe.
    snapshots: Mutex<SnapshotStreak>,
    /// `churnd_ready`, kept equal to [`Self::is_ready`].
    ready: IntGauge,
    /// Under `partitions.ownership = leases`: where this replica is with its partitions;
    /// `None` for a process that owns every partition. A std mutex, as `snapshots`.
    replica: Mutex<Option<ReplicaState>>,
}

/// What a replica does with the partitions it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitions {
    /// It holds none.
    Idle,
    /// Their snapshots are being restored, and their streams replayed from them.
    Restoring(Vec<u16>),
    /// Their engines run: ready once the streams are read up to their end (as one process).
    Running(Vec<u16>),
    /// Their engines stop: final snapshots, then the leases are released.
    HandingOver(Vec<u16>),
    /// Their engines pause, to go on with partitions gained beside them.
    Pausing(Vec<u16>),
}

#[derive(Debug)]
struct ReplicaState {
    /// Until when this replica counts among the live replicas: its last successful
    /// ownership round plus the lease time; `None` before the first.
    member_until: Option<Instant>,
    partitions: Partitions,
}

/// Consecutive snapshot failures, and whether they are enough to tell `/readyz`. A daemon
/// whose snapshots keep failing (a full or read-only volume, a directory gone) would lose
/// every customer since the last good one at its next restart: that must not stay hidden
/// behind a counter until then.
#[derive(Debug, Default)]
struct SnapshotStreak {
    /// Failures in a row that make the daemon not ready; 0: snapshots never do.
    limit: u32,
    failed: u32,
    /// What the last failure said.
    error: String,
    /// No snapshot will be tried again (the writer is gone), whatever the count says.
    stopped: bool,
}

impl SnapshotStreak {
    /// Why the daemon is not ready because of snapshots, if it is not.
    fn reason(&self) -> Option<String> {
        if self.limit == 0 {
            None
        } else if self.stopped {
            Some(format!("snapshots stopped: {}", self.error))
        } else if self.failed >= self.limit {
            Some(format!(
                "the last {} snapshots failed: {}",
                self.failed, self.error
            ))
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The consumer can read the input streams.
    Source,
    /// The sink can write tasks, dead letters and acknowledgements.
    Sink,
    /// A valid model is loaded.
    Model,
    /// Customer state has caught up with the input streams since start: until then the
    /// API would answer from a partial state.
    State,
}

impl Health {
    /// `ready` is `churnd_ready` ([`crate::metrics::ServiceMetrics::ready`]).
    pub fn new(ready: IntGauge) -> Self {
        ready.set(0);
        Self {
            source: AtomicBool::new(false),
            sink: AtomicBool::new(false),
            model: AtomicBool::new(false),
            state: AtomicBool::new(false),
            loading: AtomicBool::new(false),
            snapshots: Mutex::new(SnapshotStreak::default()),
            ready,
            replica: Mutex::new(None),
        }
    }

    /// Readiness of a replica under `partitions.ownership = leases` (see the module's doc):
    /// joining until [`Self::set_membership`] says otherwise.
    pub(crate) fn for_replica(self) -> Self {
        *self.replica_state() = Some(ReplicaState {
            member_until: None,
            partitions: Partitions::Idle,
        });
        self
    }

    fn replica_state(&self) -> std::sync::MutexGuard<'_, Option<ReplicaState>> {
        self.replica
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A replica's ownership round succeeded: it counts among the live replicas until
    /// `until` (no effect on a process owning every partition).
    pub(crate) fn member_until(&self, until: Instant) {
        if let Some(r) = self.replica_state().as_mut() {
            r.member_until = Some(until);
        }
        self.publish();
    }

    /// Brings `churnd_ready` up to date with what time changed (a replica's membership
    /// lapsing while its ownership rounds fail): before each scrape.
    pub(crate) fn refresh(&self) {
        self.publish();
    }

    /// What a replica does with its partitions (no effect on a process owning every
    /// partition).
    pub(crate) fn set_partitions(&self, partitions: Partitions) {
        if let Some(r) = self.replica_state().as_mut() {
            r.partitions = partitions;
        }
        self.publish();
    }

    /// Makes `limit` snapshot failures in a row a reason not to be ready (0: none is; the
    /// default).
    pub(crate) fn with_snapshot_failure_limit(self, limit: u32) -> Self {
        self.streak().limit = limit;
        self
    }

    fn streak(&self) -> std::sync::MutexGuard<'_, SnapshotStreak> {
        // A panic elsewhere while it was held leaves plain counters, still usable.
        self.snapshots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A snapshot was written: the failures before it no longer matter.
    pub(crate) fn snapshot_written(&self) {
        let mut streak = self.streak();
        streak.failed = 0;
        streak.error.clear();
        drop(streak);
        self.publish();
    }

    /// A snapshot failed with `error` (abandoned ones, whose effects were not written at
    /// shutdown, are not failures).
    pub(crate) fn snapshot_failed(&self, error: &str) {
        let mut streak = self.streak();
        streak.failed = streak.failed.saturating_add(1);
        streak.error = error.to_string();
        drop(streak);
        self.publish();
    }

    /// No snapshot will be written until churnd restarts, for `why`.
    pub(crate) fn snapshots_stopped(&self, why: &str) {
        let mut streak = self.streak();
        streak.stopped = true;
        streak.error = why.to_string();
        drop(streak);
        self.publish();
    }

    /// Marks the snapshot as being read (or done being read).
    pub(crate) fn set_loading(&self, loading: bool) {
        self.loading.store(loading, Ordering::Relaxed);
    }

    /// Whether the snapshot is being read: customer queries cannot be answered at all yet.
    pub(crate) fn is_loading(&self) -> bool {
        self.loading.load(Ordering::Relaxed)
    }

    fn flag(&self, part: Part) -> &AtomicBool {
        match part {
            Part::Source => &self.source,
            Part::Sink => &self.sink,
            Part::Model => &self.model,
            Part::State => &self.state,
        }
    }

    pub fn set(&self, part: Part, up: bool) {
        self.flag(part).store(up, Ordering::Relaxed);
        self.publish();
    }

    fn publish(&self) {
        self.ready.set(i64::from(self.is_ready()));
    }

    pub fn is_ready(&self) -> bool {
        self.not_ready().is_empty()
    }

    /// What keeps the daemon from being ready, for people.
    pub fn not_ready(&self) -> Vec<String> {
        let recovering = if self.is_loading() {
            "recovering customer state (loading the snapshot)"
        } else {
            "recovering customer state (replaying the input streams)"
        };
        let (replica, running) = self.replica_reasons();
        [
            (Part::Source, "not connected to Redis for reading"),
            (Part::Sink, "not connected to Redis for writing"),
            (Part::Model, "no model loaded"),
            (Part::State, recovering),
        ]
        .into_iter()
        // A replica reads, writes and recovers only while partitions run.
        .filter(|(part, _)| running || *part == Part::Model)
        .filter(|(part, _)| !self.flag(*part).load(Ordering::Relaxed))
        .map(|(_, why)| why.to_string())
        .chain(replica)
        .chain(self.streak().reason())
        .collect()
    }

    /// Why a replica is not ready because of its membership or partitions, and whether its
    /// engines run (so that reading, writing and recovery count); no reason and running for
    /// a process that owns every partition.
    fn replica_reasons(&self) -> (Vec<String>, bool) {
        let state = self.replica_state();
        let Some(r) = state.as_ref() else {
            return (Vec::new(), true);
        };
        let list = |ps: &[u16]| ps.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
        let mut reasons = Vec::new();
        match r.member_until {
            None => reasons.push(
                "not yet among the replicas: no ownership round has succeeded (is Redis reachable?)"
                    .to_string(),
            ),
            Some(until) if until <= Instant::now() => reasons.push(
                "not among the live replicas: no ownership round has succeeded for longer than \
                 partitions.lease_ms (is Redis reachable?)"
                    .to_string(),
            ),
            Some(_) => {}
        }
        match &r.partitions {
            Partitions::Idle => (reasons, false),
            Partitions::Running(_) => (reasons, true),
            Partitions::Restoring(ps) => {
                reasons.push(format!(
                    "restoring partitions {} from their snapshots",
                    list(ps)
                ));
                (reasons, false)
            }
            Partitions::HandingOver(ps) => {
                reasons.push(format!(
                    "handing over partitions {} (final snapshots)",
                    list(ps)
                ));
                (reasons, false)
            }
            Partitions::Pausing(ps) => {
                reasons.push(format!(
                    "pausing partitions {} to take others beside them",
                    list(ps)
                ));
                (reasons, false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn ready_only_when_every_part_is_up() {
        let h = Health::new(Metrics::new().service.ready);
        assert_eq!(h.not_ready().len(), 4);
        h.set(Part::Source, true);
        h.set(Part::Sink, true);
        h.set(Part::Model, true);
        assert!(!h.is_ready());
        h.set(Part::State, true);
        assert!(h.is_ready());
        h.set(Part::Sink, false);
        assert_eq!(h.not_ready(), vec!["not connected to Redis for writing"]);
    }

    #[test]
    fn says_whether_state_is_loading_or_replaying() {
        let h = Health::new(Metrics::new().service.ready);
        h.set_loading(true);
        assert!(h.is_loading());
        let says = |h: &Health, reason: &str| h.not_ready().iter().any(|r| r == reason);
        assert!(says(&h, "recovering customer state (loading the snapshot)"));
        h.set_loading(false);
        assert!(says(
            &h,
            "recovering customer state (replaying the input streams)"
        ));
    }

    fn ready_health(snapshot_failure_limit: u32) -> Health {
        let h = Health::new(Metrics::new().service.ready)
            .with_snapshot_failure_limit(snapshot_failure_limit);
        for part in [Part::Source, Part::Sink, Part::Model, Part::State] {
            h.set(part, true);
        }
        h
    }

    #[test]
    fn not_ready_after_the_configured_snapshot_failures_in_a_row() {
        let h = ready_health(3);
        h.snapshot_failed("disk full");
        h.snapshot_failed("disk full");
        h.snapshot_written();
        h.snapshot_failed("disk full");
        h.snapshot_failed("disk full");
        assert!(h.is_ready(), "a success in between starts the count again");
        h.snapshot_failed("No space left on device");
        assert_eq!(
            h.not_ready(),
            vec!["the last 3 snapshots failed: No space left on device"]
        );
        assert_eq!(h.ready.get(), 0);
        h.snapshot_failed("No space left on device");
        assert_eq!(
            h.not_ready(),
            vec!["the last 4 snapshots failed: No space left on device"]
        );
        h.snapshot_written();
        assert!(h.is_ready());
        assert_eq!(h.ready.get(), 1);
    }

    #[test]
    fn snapshot_failures_never_matter_with_a_limit_of_0() {
        let h = ready_health(0);
        for _ in 0..10 {
            h.snapshot_failed("disk full");
        }
        h.snapshots_stopped("the writer panicked");
        assert!(h.is_ready());
    }

    #[test]
    fn a_replica_is_ready_only_as_a_member_with_its_partitions_running() {
        let h = Health::new(Metrics::new().service.ready).for_replica();
        h.set(Part::Model, true);
        assert_eq!(
            h.not_ready(),
            vec!["not yet among the replicas: no ownership round has succeeded (is Redis reachable?)"]
        );
        // A member holding nothing is ready: reading and writing are its partitions' parts.
        let later = Instant::now() + std::time::Duration::from_secs(3600);
        h.member_until(later);
        assert!(h.is_ready(), "{:?}", h.not_ready());
        h.set_partitions(Partitions::Restoring(vec![1, 5]));
        assert_eq!(
            h.not_ready(),
            vec!["restoring partitions 1, 5 from their snapshots"]
        );
        h.set_partitions(Partitions::Running(vec![1, 5]));
        assert_eq!(h.not_ready().len(), 3, "{:?}", h.not_ready());
        for part in [Part::Source, Part::Sink, Part::State] {
            h.set(part, true);
        }
        assert!(h.is_ready());
        assert_eq!(h.ready.get(), 1);
        h.set_partitions(Partitions::HandingOver(vec![5]));
        assert_eq!(
            h.not_ready(),
            vec!["handing over partitions 5 (final snapshots)"]
        );
        assert_eq!(h.ready.get(), 0);
        h.set_partitions(Partitions::Pausing(vec![1]));
        assert_eq!(
            h.not_ready(),
            vec!["pausing partitions 1 to take others beside them"]
        );
        h.set_partitions(Partitions::Running(vec![1]));
        h.member_until(Instant::now());
        assert!(h.not_ready()[0].starts_with("not among the live replicas"));
    }

    #[test]
    fn stopped_snapshots_make_it_not_ready_at_once() {
        let h = ready_health(3);
        h.snapshots_stopped("the snapshot writer stopped");
        assert_eq!(
            h.not_ready(),
            vec!["snapshots stopped: the snapshot writer stopped"]
        );
    }
}
