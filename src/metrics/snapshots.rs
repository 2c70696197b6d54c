//! Snapshots of the customer state: outcomes, pauses, write time, size, staleness.

use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntGauge};

use super::labels::PerLabel;
use super::Registrar;

/// What became of a snapshot, the `outcome` label of `churnd_snapshots_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOutcome {
    Written,
    /// Nothing changed since the last one written.
    Skipped,
    /// Encoding or the disk failed.
    Failed,
    /// Shutdown came before the effects it covers were written.
    Abandoned,
}

impl SnapshotOutcome {
    pub const ALL: [Self; 4] = [Self::Written, Self::Skipped, Self::Failed, Self::Abandoned];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Written => "written",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
            Self::Abandoned => "abandoned",
        }
    }
}

super::labels::label_enum!(SnapshotOutcome);

#[derive(Clone)]
pub struct SnapshotMetrics {
    pub outcomes: PerLabel<SnapshotOutcome, IntCounter>,
    pub pause_seconds: Histogram,
    pub write_seconds: Histogram,
    pub bytes: IntGauge,
    pub last_success: IntGauge,
    pub rejected: IntCounter,
}

impl SnapshotMetrics {
    pub(super) fn register(r: &mut Registrar) -> Self {
        Self {
            outcomes: PerLabel::new(&r.counter_vec(
                "churnd_snapshots_total",
                "State snapshots, by outcome (written; skipped: nothing changed since the last one written; failed: encoding or the disk failed; abandoned: shutdown came before the effects they cover were written).",
                &["outcome"],
            )),
            pause_seconds: r.histogram(
                "churnd_snapshot_pause_seconds",
                "Time event processing stops for each step of a snapshot: copying one slice of the customers out of the table.",
                prometheus::exponential_buckets(1e-4, 2.5, 12).expect("valid buckets"),
            ),
            write_seconds: r.histogram(
                "churnd_snapshot_write_duration_seconds",
                "Time to encode a snapshot and write it durably (off the processing path).",
                prometheus::exponential_buckets(1e-3, 2.5, 12).expect("valid buckets"),
            ),
            bytes: r.gauge("churnd_snapshot_bytes", "Size of the last snapshot written."),
            last_success: r.gauge(
                "churnd_snapshot_last_success_timestamp_seconds",
                "Unix time up to which the state on disk is current: the last snapshot written, or skipped because nothing had changed since; alert when it falls far behind.",
            ),
            rejected: r.counter(
                "churnd_snapshots_rejected_total",
                "Snapshots found damaged at start (truncated, corrupt, another format), set aside for an older one.",
            ),
        }
    }
}

/// A snapshot written durably: counted, its size, time and age recorded, and logged.
pub struct SnapshotWritten<'a> {
    /// Where it is: a file, or a Redis key.
    pub path: &'a dyn std::fmt::Display,
    pub customers: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// When its state was taken: the state on disk is current up to then.
    pub created_ms: u64,
    /// Why it was written when it is not a routine one (logged at info, with this message).
    pub notable: Option<&'static str>,
}

impl SnapshotWritten<'_> {
    pub(crate) fn emit(self, metrics: &SnapshotMetrics) {
        metrics.outcomes.get(SnapshotOutcome::Written).inc();
        metrics.write_seconds.observe(self.elapsed.as_secs_f64());
        metrics
            .bytes
            .set(i64::try_from(self.bytes).unwrap_or(i64::MAX));
        metrics.last_success.set((self.created_ms / 1000) as i64);
        let (path, customers, bytes, elapsed) =
            (self.path, self.customers, self.bytes, self.elapsed);
        match self.notable {
            Some(message) => {
                tracing::info!(path = %path, customers, bytes, ?elapsed, "{message}")
            }
            None => tracing::debug!(path = %path, customers, bytes, ?elapsed, "snapshot written"),
        }
    }
}

/// A snapshot not taken because the state on disk is the current one: counted, the state on
/// disk marked current as of `now_ms`, and logged.
pub struct SnapshotSkipped {
    pub now_ms: u64,
}

impl SnapshotSkipped {
    pub(crate) fn emit(self, metrics: &SnapshotMetrics) {
        metrics.outcomes.get(SnapshotOutcome::Skipped).inc();
        // The state on disk is current as of now: the staleness alert stays quiet while idle.
        metrics.last_success.set((self.now_ms / 1000) as i64);
        tracing::debug!("snapshot skipped: nothing changed since the last one written");
    }
}
