//! What follows a task: tasks expired before they could be written, catching up on a
//! backlog, tasks open for their outcome, and the cancels and outcomes written. The engine
//! and the sink each hold a copy.

use prometheus::{IntCounter, IntCounterVec, IntGauge};

use super::labels::PerLabel;
use super::Registrar;
use crate::decide::TaskKind;

#[derive(Clone)]
pub struct FollowUpMetrics {
    pub tasks_expired: PerLabel<TaskKind, IntCounter>,
    pub tasks_held_back: PerLabel<TaskKind, IntCounter>,
    pub catching_up: IntGauge,
    pub catch_up_behind_seconds: IntGauge,
    pub open_tasks: IntGauge,
    pub cancels: PerLabel<TaskKind, IntCounter>,
    /// By kind and outcome (`converted`, `not_converted`).
    pub outcomes: IntCounterVec,
}

impl FollowUpMetrics {
    pub(super) fn register(r: &mut Registrar) -> Self {
        Self {
            tasks_expired: PerLabel::new(&r.counter_vec(
                "churnd_tasks_expired_total",
                "Tasks not written because their moment (expires_at) had passed when they were raised, by kind: raised while catching up on a backlog.",
                &["kind"],
            )),
            tasks_held_back: PerLabel::new(&r.counter_vec(
                "churnd_tasks_held_back_total",
                "Tasks not written because they were raised while catching up on a backlog (a purchase still unread could make them pointless), by kind: the customer is checked again once the backlog is read.",
                &["kind"],
            )),
            catching_up: r.gauge(
                "churnd_catching_up",
                "1 while churnd reads a backlog under the wall clock (silence is then judged at the event time reached), 0 once it has read to the end.",
            ),
            catch_up_behind_seconds: r.gauge(
                "churnd_catch_up_behind_seconds",
                "While catching up, how far the event time reached lies behind the wall clock; 0 otherwise.",
            ),
            open_tasks: r.gauge(
                "churnd_open_tasks",
                "Tasks written whose outcome is not known yet (their conversion window is open).",
            ),
            cancels: PerLabel::new(&r.counter_vec(
                "churnd_task_cancels_total",
                "Cancel records written (the customer bought while a task of theirs was open), by kind.",
                &["kind"],
            )),
            outcomes: r.counter_vec(
                "churnd_task_outcomes_total",
                "Outcome records written, by kind and outcome (converted, not_converted).",
                &["kind", "outcome"],
            ),
        }
    }
}
