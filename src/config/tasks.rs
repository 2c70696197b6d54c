//! `[tasks]` and its kinds (`[tasks.convert]`, `[tasks.welcome]`, …): the task kinds beyond
//! win-back, their streams and the contact cap.

use super::read::Fields;
use super::{Problem, Section};
use crate::decide::{
    AnniversarySettings, BirthdaySettings, ConvertSettings, RevisitSettings,
    ServiceRecoverySettings, TaskKind, TasksSettings, WelcomeSettings,
};

impl Section for TasksSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            stream: f.get("stream", d.stream),
            max_len: f.get("max_len", d.max_len),
            control_stream: f.get("control_stream", d.control_stream),
            control_share: f.get("control_share", d.control_share),
            contact_cap_days: f.get("contact_cap_days", d.contact_cap_days),
            convert: f.get("convert", d.convert),
            welcome: f.get("welcome", d.welcome),
            birthday: f.get("birthday", d.birthday),
            anniversary: f.get("anniversary", d.anniversary),
            revisit: f.get("revisit", d.revisit),
            service_recovery: f.get("service_recovery", d.service_recovery),
            budgets: f.get("budgets", d.budgets),
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.stream.is_empty() {
            problems.push(Problem::new("tasks.stream", "must not be empty"));
        }
        if self.control_stream.is_empty() {
            problems.push(Problem::new("tasks.control_stream", "must not be empty"));
        }
        // The shared share, then each kind's own where it sets one.
        let mut shares = vec![("tasks.control_share", self.control_share)];
        shares.extend(
            TaskKind::CARE
                .map(|kind| self.control_share(kind))
                .into_iter()
                .filter(|(key, _)| *key != "tasks.control_share"),
        );
        for (key, share) in shares {
            if !(0.0..=1.0).contains(&share) {
                problems.push(Problem::new(
                    key,
                    format!("({share}) must be between 0 and 1"),
                ));
            }
        }
        for (key, days_before) in [
            (
                "tasks.anniversary.days_before",
                self.anniversary.days_before,
            ),
            ("tasks.birthday.days_before", self.birthday.days_before),
        ] {
            if days_before > 300 {
                problems.push(Problem::new(
                    key,
                    format!("({days_before}) must be at most 300"),
                ));
            }
        }
        if !(1..=5).contains(&self.service_recovery.max_score) {
            problems.push(Problem::new(
                "tasks.service_recovery.max_score",
                format!(
                    "({}) must be between 1 and 5",
                    self.service_recovery.max_score
                ),
            ));
        }
        let actions = [
            ("convert", &self.convert.action),
            ("welcome", &self.welcome.action),
            ("birthday", &self.birthday.action),
            ("anniversary", &self.anniversary.action),
            ("revisit", &self.revisit.action),
            ("service_recovery", &self.service_recovery.action),
        ];
        for (kind, action) in actions {
            if action.trim().is_empty() {
                problems.push(Problem::new(
                    format!("tasks.{kind}.action"),
                    "must not be empty",
                ));
            }
        }
        problems.extend(super::winback::budget_problems(
            "tasks",
            ("any [tasks.<kind>]", "the care kinds'"),
            &self.budgets,
            actions.iter().map(|(_, a)| a.as_str()),
        ));
        problems
    }
}

impl Section for ConvertSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            enabled: f.get("enabled", d.enabled),
            min_visits: f.get("min_visits", d.min_visits),
            action: f.get("action", d.action),
            stream: f.get("stream", d.stream),
            control_share: f.get("control_share", d.control_share),
        }
    }
}

impl Section for WelcomeSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            enabled: f.get("enabled", d.enabled),
            after_days: f.get("after_days", d.after_days),
            max_late_days: f.get("max_late_days", d.max_late_days),
            action: f.get("action", d.action),
            stream: f.get("stream", d.stream),
            control_share: f.get("control_share", d.control_share),
        }
    }
}

impl Section for BirthdaySettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            enabled: f.get("enabled", d.enabled),
            days_before: f.get("days_before", d.days_before),
            action: f.get("action", d.action),
            stream: f.get("stream", d.stream),
            control_share: f.get("control_share", d.control_share),
        }
    }
}

impl Section for AnniversarySettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            enabled: f.get("enabled", d.enabled),
            days_before: f.get("days_before", d.days_before),
            action: f.get("action", d.action),
            stream: f.get("stream", d.stream),
            control_share: f.get("control_share", d.control_share),
        }
    }
}

impl Section for RevisitSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            enabled: f.get("enabled", d.enabled),
            segments: f.get("segments", d.segments),
            every_days: f.get("every_days", d.every_days),
            action: f.get("action", d.action),
            stream: f.get("stream", d.stream),
            control_share: f.get("control_share", d.control_share),
        }
    }
}

impl Section for ServiceRecoverySettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            enabled: f.get("enabled", d.enabled),
            max_score: f.get("max_score", d.max_score),
            segments: f.get("segments", d.segments),
            bypass_contact_cap: f.get("bypass_contact_cap", d.bypass_contact_cap),
            max_late_days: f.get("max_late_days", d.max_late_days),
            action: f.get("action", d.action),
            stream: f.get("stream", d.stream),
            control_share: f.get("control_share", d.control_share),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_problems_name_their_keys() {
        let mut settings = TasksSettings::default();
        settings.welcome.action = " ".into();
        settings.stream.clear();
        settings.birthday.days_before = 301;
        settings.control_share = 1.5;
        settings.revisit.control_share = Some(-0.1);
        settings.welcome.control_share = Some(0.5);
        let keys: Vec<String> = settings.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "tasks.stream",
                "tasks.control_share",
                "tasks.revisit.control_share",
                "tasks.birthday.days_before",
                "tasks.welcome.action"
            ]
        );
        assert!(TasksSettings::default().problems().is_empty());
    }

    #[test]
    fn care_budgets_name_a_kind_s_action_and_cost_something() {
        use crate::decide::ActionBudget;
        let mut settings = TasksSettings::default();
        settings
            .budgets
            .insert("welcome_follow_up".into(), ActionBudget::new(10.0, 1.0));
        settings
            .budgets
            .insert("coupon".into(), ActionBudget::new(10.0, 1.0));
        settings
            .budgets
            .insert("first_purchase_offer".into(), ActionBudget::new(-1.0, 0.0));
        let problems: Vec<String> = settings
            .problems()
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            problems,
            [
                "tasks.budgets.coupon is not an action of any [tasks.<kind>]: budgets are for the care kinds' actions (account_manager_call, anniversary_greeting, birthday_greeting, first_purchase_offer, service_recovery_call, welcome_follow_up)",
                "tasks.budgets.first_purchase_offer.per_day (-1) must be 0 or more",
                "tasks.budgets.first_purchase_offer.cost (0) must be above 0 (an action that costs nothing needs no budget: leave it out of [tasks.budgets])",
            ]
        );
    }
}
