//! The sink: tasks and dead letters written, acknowledgements, write time.

use prometheus::{Histogram, IntCounter, IntCounterVec};

use super::labels::PerLabel;
use super::Registrar;
use crate::decide::{Group, TaskKind};
use crate::event::Reason;

#[derive(Clone)]
pub struct SinkMetrics {
    /// By reason; see [`DeadLettered`].
    pub dead_lettered: PerLabel<Reason, IntCounter>,
    pub entries_acked: IntCounter,
    pub sink_seconds: Histogram,
    /// By action and group: the actions are open (the configured `[winback.actions]`).
    pub tasks: IntCounterVec,
    pub tasks_by_kind: PerLabel<TaskKind, IntCounter>,
    pub tasks_duplicate: IntCounter,
    /// Cancels and outcomes written.
    pub follow_up: super::FollowUpMetrics,
}

impl SinkMetrics {
    pub(super) fn register(r: &mut Registrar, follow_up: super::FollowUpMetrics) -> Self {
        Self {
            dead_lettered: PerLabel::new(&r.counter_vec(
                "churnd_events_dead_lettered_total",
                "Entries rejected and written to the dead-letter stream, by reason.",
                &["reason"],
            )),
            entries_acked: r.counter(
                "churnd_entries_acknowledged_total",
                "Stream entries acknowledged after their effects were written.",
            ),
            sink_seconds: r.histogram(
                "churnd_sink_write_duration_seconds",
                "Time to write the tasks, dead letters and acknowledgements of one batch (or of the batches that queued up behind the previous write) to Redis.",
                prometheus::exponential_buckets(5e-5, 2.5, 14).expect("valid buckets"),
            ),
            tasks: r.counter_vec(
                "churnd_winback_tasks_total",
                "Win-back tasks written, by action and group (control-group tasks go to the control stream).",
                &["action", "group"],
            ),
            tasks_by_kind: PerLabel::new(&r.counter_vec(
                "churnd_tasks_total",
                &format!(
                    "Tasks written, by kind ({}; winback in either group).",
                    TaskKind::ALL.map(TaskKind::as_str).join(", ")
                ),
                &["kind"],
            )),
            tasks_duplicate: r.counter(
                "churnd_winback_tasks_duplicate_total",
                "Win-back tasks not written because their ID had been written before (replays).",
            ),
            follow_up,
        }
    }

    /// Counts a win-back task written with `action` (a configured one) in `group`.
    pub(crate) fn winback_task(&self, action: &str, group: Group) {
        self.tasks
            .with_label_values(&[action, group.as_str()])
            .inc();
    }
}

/// An entry written to the dead-letter stream: logged and counted together.
pub struct DeadLettered<'a> {
    pub id: &'a dyn std::fmt::Display,
    pub reason: Reason,
    pub detail: &'a str,
}

impl DeadLettered<'_> {
    pub(crate) fn emit(self, metrics: &SinkMetrics) {
        tracing::debug!(id = %self.id, reason = self.reason.as_str(), detail = %self.detail, "dead-lettered an entry");
        metrics.dead_lettered.get(self.reason).inc();
    }
}
