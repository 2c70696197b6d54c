//! `[outcomes]`: how long each kind of task lives after it is raised.

use std::num::NonZeroU64;

use serde::Serialize;

use crate::decide::TaskKind;
use crate::time::{self, UnixSeconds};

/// A kind's life after it is raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TaskLife {
    /// A task not written within this many days of being raised is not written at all
    /// (`expires_at`): its moment has passed.
    pub expires_after_days: u32,
    /// The conversion window: a purchase within this many days of the task converts it;
    /// when it closes without one, the outcome is `not_converted`.
    pub window_days: u32,
}

impl TaskLife {
    const fn days(expires_after_days: u32, window_days: u32) -> Self {
        Self {
            expires_after_days,
            window_days,
        }
    }

    /// When a task raised at `as_of` expires.
    pub fn expires_at(&self, as_of: UnixSeconds) -> UnixSeconds {
        as_of.saturating_add(time::days(self.expires_after_days))
    }

    /// When the conversion window of a task raised at `as_of` closes.
    pub fn closes_at(&self, as_of: UnixSeconds) -> UnixSeconds {
        as_of.saturating_add(time::days(self.window_days))
    }
}

/// The outcome stream and every kind's [`TaskLife`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutcomeSettings {
    /// One record per task written, when its window closes or the customer converts.
    pub stream: String,
    pub max_len: NonZeroU64,
    pub winback: TaskLife,
    pub convert: TaskLife,
    pub welcome: TaskLife,
    pub birthday: TaskLife,
    pub anniversary: TaskLife,
    pub revisit: TaskLife,
    pub service_recovery: TaskLife,
}

impl Default for OutcomeSettings {
    fn default() -> Self {
        Self {
            stream: "churn:outcomes".into(),
            max_len: NonZeroU64::new(10_000_000).expect("not zero"),
            // A win-back offer a week late is aimed at a customer who may have moved on.
            winback: TaskLife::days(7, 30),
            convert: TaskLife::days(3, 30),
            welcome: TaskLife::days(3, 30),
            // Raised days before the date: late by more is after it.
            birthday: TaskLife::days(3, 30),
            anniversary: TaskLife::days(3, 30),
            revisit: TaskLife::days(7, 30),
            // An apology goes out within days or not at all.
            service_recovery: TaskLife::days(2, 30),
        }
    }
}

impl OutcomeSettings {
    /// The life of `kind`'s tasks.
    pub fn of(&self, kind: TaskKind) -> &TaskLife {
        match kind {
            TaskKind::Winback => &self.winback,
            TaskKind::Convert => &self.convert,
            TaskKind::Welcome => &self.welcome,
            TaskKind::Birthday => &self.birthday,
            TaskKind::Anniversary => &self.anniversary,
            TaskKind::Revisit => &self.revisit,
            TaskKind::ServiceRecovery => &self.service_recovery,
        }
    }
}
