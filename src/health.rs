//! Readiness: connected to Redis for reading and writing, with a model loaded and customer
//! state recovered (snapshot loaded, input streams read up to their end once), and snapshots
//! being written (not too many failed in a row).
//!
//! Each part reports its own state; `/readyz` and the `churnd_ready` gauge read the whole.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

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
        }
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
        [
            (Part::Source, "not connected to Redis for reading"),
            (Part::Sink, "not connected to Redis for writing"),
            (Part::Model, "no model loaded"),
            (Part::State, recovering),
        ]
        .into_iter()
        .filter(|(part, _)| !self.flag(*part).load(Ordering::Relaxed))
        .map(|(_, why)| why.to_string())
        .chain(self.streak().reason())
        .collect()
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
    fn stopped_snapshots_make_it_not_ready_at_once() {
        let h = ready_health(3);
        h.snapshots_stopped("the snapshot writer stopped");
        assert_eq!(
            h.not_ready(),
            vec!["snapshots stopped: the snapshot writer stopped"]
        );
    }
}
