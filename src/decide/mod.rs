//! Decisions: what churnd asks marketing automation and account managers to do about a
//! customer, and when to look at them again.
//!
//! Every policy reads one [`Assessment`] of the customer at a moment (built by the engine at
//! each scoring). The [`Playbook`] owns the order in which they are asked:
//!
//! 1. service recovery: the answer to a very low feedback score, when that is what brings the
//!    customer here (it goes out whatever the contact cap, unless configured otherwise, and
//!    counts as a contact);
//! 2. win-back, for a buyer whose churn probability crossed its threshold;
//! 3. the care kinds, in their own order ([`care`]).
//!
//! The contact cap (`tasks.contact_cap_days`) holds back every kind once the customer has
//! heard from the business. The tasks raised carry the customer's tags and profile.

mod assessment;
mod calendar;
mod care;
mod contact;
mod settings;
mod tags;
mod task;
mod winback;

use std::sync::Arc;

pub use assessment::{Assessment, Recent, Scored};
pub use contact::{Contact, ContactCap};
pub use settings::{
    AnniversarySettings, BirthdaySettings, ConvertSettings, RevisitSettings,
    ServiceRecoverySettings, TasksSettings, WelcomeSettings, WinbackSettings,
};
pub use tags::{default_rules, problems as tag_problems, TagRule, Tags};
pub use task::{care_task_id, winback_task_id, Detail, Task, TaskKind, WinbackDetail};
pub use winback::{Group, WinbackState};

use crate::time::UnixSeconds;

/// The configured policies, resolved for fast decisions.
#[derive(Debug, Clone)]
pub struct Playbook {
    winback: winback::Policy,
    care: care::CarePolicy,
    tags: Tags,
    cap: ContactCap,
}

impl Playbook {
    pub fn new(winback: &WinbackSettings, tasks: &TasksSettings, tags: &[TagRule]) -> Self {
        Self {
            winback: winback::Policy::new(winback),
            care: care::CarePolicy::new(tasks),
            tags: Tags::new(tags),
            cap: ContactCap::days(tasks.contact_cap_days),
        }
    }

    /// Every task due for the customer now, in the playbook's order, each with the
    /// customer's tags and profile, appended to `tasks`; updates the customer's bookkeeping.
    /// `feedback` is the score and time of the feedback being applied, if that is what brings
    /// the customer here. Returns the next moment after now at which a decision can change
    /// without an event (a waiting time ending, an occasion beginning, the cap lifting).
    pub fn decide(
        &self,
        a: &Assessment<'_>,
        (winback, contact): (&mut WinbackState, &mut Contact),
        feedback: Option<(u8, UnixSeconds)>,
        model_version: &Arc<str>,
        tasks: &mut Vec<Task>,
    ) -> Option<UnixSeconds> {
        let first = tasks.len();
        let now = a.now;
        let mut next = Vec::with_capacity(3);
        if a.scored.is_some() {
            if let Some(feedback) = feedback {
                tasks.extend(self.care.service_recovery(self.cap, contact, a, feedback));
            }
            let capped_until = self.cap.allowed_from(contact, now);
            if capped_until.is_none() {
                if let Some(task) = self.winback.decide(winback, a, model_version) {
                    contact.record(now);
                    tasks.push(task);
                }
            }
            next.push(
                a.last_purchase()
                    .and_then(|last| self.winback.next_eligible(winback, last, now)),
            );
            // A crossing while capped is acted on when the cap ends.
            next.push(capped_until.filter(|_| self.winback.may_raise(winback)));
        }
        let (task, care_next) = self.care.evaluate(self.cap, contact, a);
        tasks.extend(task);
        next.push(care_next);
        let raised = &mut tasks[first..];
        if !raised.is_empty() {
            let tags = self.tags.of(a);
            let profile = a.profile.cloned();
            for task in raised {
                task.tags.clone_from(&tags);
                task.profile.clone_from(&profile);
            }
        }
        next.into_iter().flatten().filter(|&t| t > now).min()
    }

    /// A purchase at `time`, after the customer's previous last purchase: it starts a new
    /// win-back episode and, if it follows an outstanding task, is a recovery. Returns the
    /// group to credit with the recovery.
    pub fn on_new_purchase(
        &self,
        winback: &mut WinbackState,
        customer_id: &str,
        time: UnixSeconds,
    ) -> Option<Group> {
        self.winback.on_new_purchase(winback, customer_id, time)
    }

    /// The customer's tags now.
    pub fn tags(&self, a: &Assessment<'_>) -> Vec<Arc<str>> {
        self.tags.of(a)
    }

    /// The customer's win-back group: a stable function of the ID alone.
    pub fn group(&self, customer_id: &str) -> Group {
        self.winback.group(customer_id)
    }

    /// Reasons listed on a win-back task (and in the API).
    pub fn reasons(&self) -> usize {
        self.winback.reasons
    }

    /// The churn probabilities at which a win-back task can be raised (for the scheduler of
    /// silence checks, which must not sleep through a crossing); none when win-back is off.
    pub fn thresholds(&self) -> &[f64] {
        self.winback.thresholds()
    }

    /// The lowest and the highest win-back threshold when they differ by segment.
    pub fn thresholds_span(&self) -> Option<(f64, f64)> {
        self.winback.thresholds_span()
    }

    /// Whether the customer's current episode of silence can still raise a win-back task.
    pub fn may_raise(&self, winback: &WinbackState) -> bool {
        self.winback.may_raise(winback)
    }
}
