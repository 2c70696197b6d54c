//! The task: what churnd writes to a task stream for marketing automation or account
//! managers. Every kind shares the [`Task`]; what only one kind carries is its [`Detail`].
//! [`Task::fields`] is the wire format (documented for consumers in docs/tasks.md): field
//! names and their order are a contract, so they change only with care.
//!
//! Task IDs are deterministic, so a replay raises the same ID and the sink's guard in Redis
//! drops the copy.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;
use xxhash_rust::xxh3::xxh3_128;

use super::holdout::Group;
use super::uplift::Effect;
use crate::classify::{LifecycleStage, Risk, Segment};
use crate::model::value::ValueEstimates;
use crate::model::ScoreReason;
use crate::profiles::Profile;
use crate::time::{self, UnixSeconds};

/// What a task asks marketing or account managers to do, broadly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Winback,
    Convert,
    Welcome,
    Birthday,
    Anniversary,
    Revisit,
    ServiceRecovery,
}

impl TaskKind {
    pub const ALL: [Self; 7] = [
        Self::Winback,
        Self::Convert,
        Self::Welcome,
        Self::Birthday,
        Self::Anniversary,
        Self::Revisit,
        Self::ServiceRecovery,
    ];

    /// The kinds of `[tasks]`: every one but win-back.
    pub const CARE: [Self; 6] = [
        Self::Convert,
        Self::Welcome,
        Self::Birthday,
        Self::Anniversary,
        Self::Revisit,
        Self::ServiceRecovery,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Winback => "winback",
            Self::Convert => "convert",
            Self::Welcome => "welcome",
            Self::Birthday => "birthday",
            Self::Anniversary => "anniversary",
            Self::Revisit => "revisit",
            Self::ServiceRecovery => "service_recovery",
        }
    }
}

/// A task for marketing automation or account managers, of any kind: what every kind
/// carries, and a [`Detail`] of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// 32 hex digits, deterministic: a replay raises the same ID, and the sink writes it once.
    pub task_id: String,
    pub customer_id: String,
    pub action: Arc<str>,
    pub lifecycle_stage: LifecycleStage,
    /// RFM segment, when the customer has bought.
    pub segment: Option<Segment>,
    /// When the decision was made (clock time).
    pub as_of: UnixSeconds,
    /// Past this moment the task is not written at all (`outcomes.<kind>.expires_after_days`
    /// after `as_of`; set by the engine, 0 until then).
    pub expires_at: UnixSeconds,
    /// The customer's tags at the decision.
    pub tags: Vec<Arc<str>>,
    /// The customer's profile, copied onto the task.
    pub profile: Option<Arc<Profile>>,
    pub detail: Detail,
    /// Treatment (to act on) or control (held out, written to a control stream).
    pub group: Group,
    /// The customer value model's estimates at the decision: `None` for a customer who has
    /// not bought and with a model that has no value part.
    pub value: Option<ValueEstimates>,
}

/// What only one kind of task carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Detail {
    Winback(WinbackDetail),
    /// Visits counted without a purchase.
    Convert {
        visits: u8,
    },
    /// The first purchase being followed up.
    Welcome {
        first_purchase: UnixSeconds,
    },
    /// This year's birthday, midnight UTC.
    Birthday {
        date: UnixSeconds,
    },
    /// The anniversary of the first purchase, midnight UTC.
    Anniversary {
        date: UnixSeconds,
    },
    /// When the revisit fell due.
    Revisit {
        due: UnixSeconds,
    },
    /// The score and when it was given.
    ServiceRecovery {
        score: u8,
        feedback_at: UnixSeconds,
    },
}

/// A win-back task's own part.
#[derive(Debug, Clone, PartialEq)]
pub struct WinbackDetail {
    pub churn_probability: f64,
    pub risk: Risk,
    /// The value at stake, what the budget ranks candidates by: `clv_365d` (with a model that
    /// has no value part, spend over the last year, 365-day decay) × the chance the action
    /// changes the outcome (`effect`); under `winback.policy = random`, a random number.
    pub priority: f64,
    /// Where the chance in `priority` came from (`winback.policy`), and the chance.
    pub effect: Effect,
    pub reasons: Vec<ScoreReason>,
    pub model_version: Arc<str>,
    /// The last purchase, which began this episode of silence.
    pub episode_start: UnixSeconds,
    pub attempt: u8,
}

impl Detail {
    /// The kind of task this detail belongs to: each kind has one.
    pub fn kind(&self) -> TaskKind {
        match self {
            Detail::Winback(_) => TaskKind::Winback,
            Detail::Convert { .. } => TaskKind::Convert,
            Detail::Welcome { .. } => TaskKind::Welcome,
            Detail::Birthday { .. } => TaskKind::Birthday,
            Detail::Anniversary { .. } => TaskKind::Anniversary,
            Detail::Revisit { .. } => TaskKind::Revisit,
            Detail::ServiceRecovery { .. } => TaskKind::ServiceRecovery,
        }
    }
}

impl Task {
    pub fn kind(&self) -> TaskKind {
        self.detail.kind()
    }

    /// The win-back part, for a win-back task.
    pub fn winback(&self) -> Option<&WinbackDetail> {
        match &self.detail {
            Detail::Winback(w) => Some(w),
            _ => None,
        }
    }

    /// Stream fields, in a stable order: those of every kind, the kind's own, then the tags
    /// and the profile's attributes (`profile_<key>`).
    pub fn fields(&self) -> Vec<(Cow<'static, str>, String)> {
        let mut fields: Vec<(Cow<'static, str>, String)> = Vec::with_capacity(30);
        let mut push = |name: &'static str, value: String| fields.push((name.into(), value));
        push("schema_version", crate::outcomes::SCHEMA_VERSION.into());
        push("record", "task".into());
        push("task_id", self.task_id.clone());
        push("kind", self.kind().as_str().into());
        push("customer_id", self.customer_id.clone());
        push("action", self.action.to_string());
        push("lifecycle_stage", self.lifecycle_stage.as_str().into());
        if let Some(segment) = self.segment {
            push("segment", segment.as_str().into());
        }
        push("as_of", time::rfc3339(self.as_of));
        push("expires_at", time::rfc3339(self.expires_at));
        match &self.detail {
            Detail::Winback(w) => {
                let reasons: Vec<String> = w.reasons.iter().map(ToString::to_string).collect();
                push("churn_probability", format!("{:.6}", w.churn_probability));
                push("risk", w.risk.as_str().into());
                push("priority", format!("{:.2}", w.priority));
                push("reasons", reasons.join(","));
                push("model_version", w.model_version.to_string());
                push("group", self.group.as_str().into());
                push("episode_start", time::rfc3339(w.episode_start));
                push("attempt", w.attempt.to_string());
                push("effect", w.effect.as_str().into());
                push("chance", format!("{:.6}", w.effect.chance()));
            }
            Detail::Convert { visits } => push("visits", visits.to_string()),
            Detail::Welcome { first_purchase } => {
                push("first_purchase", time::rfc3339(*first_purchase));
            }
            Detail::Birthday { date } => push("birthday", time::rfc3339(*date)),
            Detail::Anniversary { date } => push("anniversary", time::rfc3339(*date)),
            Detail::Revisit { due } => push("due", time::rfc3339(*due)),
            Detail::ServiceRecovery { score, feedback_at } => {
                push("score", score.to_string());
                push("feedback_at", time::rfc3339(*feedback_at));
            }
        }
        // Win-back's place for it is among its own fields, as before every kind had one.
        if self.winback().is_none() {
            push("group", self.group.as_str().into());
        }
        if let Some(v) = &self.value {
            push("p_alive", format!("{:.6}", v.p_alive));
            push(
                "expected_purchases_90d",
                format!("{:.6}", v.expected_purchases_90d),
            );
            push("expected_spend_90d", format!("{:.2}", v.expected_spend_90d));
            push("clv_365d", format!("{:.2}", v.clv_365d));
            if let Some(at) = v.next_purchase_at {
                push("next_purchase_at", time::rfc3339(at));
            }
        }
        let tags: Vec<&str> = self.tags.iter().map(|t| &**t).collect();
        push("tags", tags.join(","));
        for (key, value) in self.profile.iter().flat_map(|p| p.iter()) {
            fields.push((format!("profile_{key}").into(), value.to_string()));
        }
        fields
    }
}

/// Deterministic task ID: 128 bits of xxh3 over kind, customer and reference moment.
pub fn care_task_id(kind: TaskKind, customer_id: &str, reference: UnixSeconds) -> String {
    let mut key = Vec::with_capacity(customer_id.len() + 16);
    key.extend_from_slice(kind.as_str().as_bytes());
    key.push(0);
    key.extend_from_slice(customer_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&reference.to_le_bytes());
    spelled(xxh3_128(&key))
}

/// A task ID as it is written: the key's 32 hex digits.
pub(crate) fn spelled(key: u128) -> String {
    format!("{key:032x}")
}

/// Deterministic task ID: 128 bits of xxh3 over kind, customer, episode start and attempt.
pub fn winback_task_id(customer_id: &str, episode_start: UnixSeconds, attempt: u8) -> String {
    spelled(winback_task_key(customer_id, episode_start, attempt))
}

/// The number [`winback_task_id`] spells in hex: targeting draws from it, and a candidate
/// held back (most of them, once budgets bind) needs no text.
pub(crate) fn winback_task_key(customer_id: &str, episode_start: UnixSeconds, attempt: u8) -> u128 {
    let mut key = Vec::with_capacity(customer_id.len() + 16);
    key.extend_from_slice(b"winback\0");
    key.extend_from_slice(customer_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&episode_start.to_le_bytes());
    key.push(attempt);
    xxh3_128(&key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u32 = 852_076_800;

    #[test]
    fn care_ids_differ_by_kind_customer_and_reference() {
        let a = care_task_id(TaskKind::Welcome, "c", T0);
        assert_eq!(a, care_task_id(TaskKind::Welcome, "c", T0));
        assert_ne!(a, care_task_id(TaskKind::Convert, "c", T0));
        assert_ne!(a, care_task_id(TaskKind::Welcome, "d", T0));
        assert_ne!(a, care_task_id(TaskKind::Welcome, "c", T0 + 1));
    }

    #[test]
    fn winback_ids_are_deterministic_and_distinct() {
        assert_eq!(winback_task_id("a", T0, 1), winback_task_id("a", T0, 1));
        assert_ne!(winback_task_id("a", T0, 1), winback_task_id("a", T0, 2));
        assert_ne!(winback_task_id("a", T0, 1), winback_task_id("a", T0 + 1, 1));
        assert_ne!(winback_task_id("a", T0, 1), winback_task_id("b", T0, 1));
        assert_eq!(winback_task_id("a", T0, 1).len(), 32);
    }
}
