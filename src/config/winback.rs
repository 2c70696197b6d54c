//! `[winback]`: win-back tasks, their streams, thresholds, playbook and control group.

use std::collections::BTreeMap;

use super::read::{read_choices, Choice, Fields};
use super::{Problem, Section};
use crate::classify::Segment;
use crate::decide::uplift::LearnSettings;
use crate::decide::{ActionBudget, PooledBudget, WinbackPolicy, WinbackSettings};

impl Choice for WinbackPolicy {
    const ALL: &'static [Self] = &[Self::Learned, Self::Playbook, Self::Random];
    fn name(self) -> &'static str {
        self.as_str()
    }
}
read_choices!(WinbackPolicy);

impl Section for LearnSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            min_outcomes: f.get("min_outcomes", d.min_outcomes),
            exploration: f.get("exploration", d.exploration),
        }
    }
}

impl Section for WinbackSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            enabled: f.get("enabled", d.enabled),
            stream: f.get("stream", d.stream),
            control_stream: f.get("control_stream", d.control_stream),
            max_len: f.get("max_len", d.max_len),
            threshold: f.get("threshold", d.threshold),
            segment_thresholds: f.get("segment_thresholds", d.segment_thresholds),
            actions: f.get("actions", d.actions),
            candidates: f.get("candidates", d.candidates),
            min_silence_days: f.get("min_silence_days", d.min_silence_days),
            cooldown_days: f.get("cooldown_days", d.cooldown_days),
            max_tasks_per_episode: f.get("max_tasks_per_episode", d.max_tasks_per_episode),
            control_share: f.get("control_share", d.control_share),
            budgets: f.get("budgets", d.budgets),
            budget: f.get("budget", d.budget),
            policy: f.get("policy", d.policy),
            learn: f.get("learn", d.learn),
            dedup_ttl_days: f.get("dedup_ttl_days", d.dedup_ttl_days),
            reasons: f.get("reasons", d.reasons),
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut probability = |key: String, v: f64| {
            if !(0.0..=1.0).contains(&v) {
                problems.push(Problem::new(key, format!("({v}) must be between 0 and 1")));
            }
        };
        probability("winback.threshold".into(), self.threshold);
        probability("winback.control_share".into(), self.control_share);
        probability("winback.learn.exploration".into(), self.learn.exploration);
        for segment in Segment::ALL {
            if let Some(&v) = self.segment_thresholds.get(&segment) {
                let key = format!("winback.segment_thresholds.{}", segment.as_str());
                probability(key, v);
            }
        }
        for segment in Segment::ALL {
            match self.actions.get(&segment) {
                Some(a) if !a.trim().is_empty() => {}
                _ => problems.push(Problem::new(
                    format!("winback.actions.{}", segment.as_str()),
                    "is missing: every segment needs an action",
                )),
            }
        }
        for (key, value) in [
            ("winback.stream", &self.stream),
            ("winback.control_stream", &self.control_stream),
        ] {
            if value.is_empty() {
                problems.push(Problem::new(key, "must not be empty"));
            }
        }
        if self.learn.min_outcomes == 0 {
            problems.push(Problem::new(
                "winback.learn.min_outcomes",
                "(0) must be 1 or more: outcomes win-back needs in each group, all actions × segments together, before measured lift steers tasks",
            ));
        }
        problems.extend(self.candidate_problems());
        problems.extend(self.budget_problems());
        problems.extend(self.pool_problems());
        if self.stream == self.control_stream {
            problems.push(Problem::new(
                "winback.control_stream",
                "must differ from winback.stream",
            ));
        }
        problems
    }
}

impl WinbackSettings {
    /// Every budget must name an action of the playbook or of a segment's candidates and
    /// give a spend per day (0 or more) and a cost per task (above 0).
    fn budget_problems(&self) -> Vec<Problem> {
        budget_problems(
            "winback",
            ("[winback.actions] or [winback.candidates]", "win-back's"),
            &self.budgets,
            self.actions
                .values()
                .chain(self.candidates.values().flatten())
                .map(String::as_str),
        )
    }

    /// `[winback.budget]`: a spend per day of 0 or more, and, since every action draws on it
    /// by its cost, a `[winback.budgets.<action>]` (its cost, and its cap) for every action
    /// of the playbook and the candidates.
    fn pool_problems(&self) -> Vec<Problem> {
        let Some(spend) = self.budget.spend_per_day else {
            return Vec::new();
        };
        let key = "winback.budget.spend_per_day";
        let mut problems = Vec::new();
        if !(spend.is_finite() && spend >= 0.0) {
            problems.push(Problem::new(key, format!("({spend}) must be 0 or more")));
        }
        let mut unpriced: Vec<&str> = self
            .actions
            .values()
            .chain(self.candidates.values().flatten())
            .map(String::as_str)
            .filter(|a| !a.trim().is_empty() && !self.budgets.contains_key(*a))
            .collect();
        unpriced.sort_unstable();
        unpriced.dedup();
        if !unpriced.is_empty() {
            problems.push(Problem::new(
                key,
                format!(
                    "needs a cost for every win-back action, which draws on it by its cost: {} {} no [winback.budgets.<action>] (give each a cost, and a per_day as its cap: 1e12 for none)",
                    unpriced.join(", "),
                    if unpriced.len() == 1 { "has" } else { "have" }
                ),
            ));
        }
        problems
    }

    /// A segment's candidate actions: named, each once, and, when there are several, each
    /// with a budget (the learned policy weighs each against its budget's bar, and an
    /// action without a limit would take every candidate the others pass over).
    fn candidate_problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for segment in Segment::ALL {
            let Some(list) = self.candidates.get(&segment) else {
                continue;
            };
            let key = format!("winback.candidates.{}", segment.as_str());
            for (i, action) in list.iter().enumerate() {
                if action.trim().is_empty() {
                    problems.push(Problem::new(
                        key.clone(),
                        "names an empty action: list action names, e.g. [\"coupon\", \"email_reminder\"]",
                    ));
                } else if list[..i].contains(action) {
                    problems.push(Problem::new(
                        key.clone(),
                        format!("lists {action} twice: list each action once"),
                    ));
                } else if list.len() > 1 && !self.budgets.contains_key(action) {
                    problems.push(Problem::new(
                        key.clone(),
                        format!(
                            "lists {action}, which has no [winback.budgets.{action}]: a segment that chooses among actions needs each one's cost and budget"
                        ),
                    ));
                }
            }
        }
        problems
    }
}

/// `[<section>.budgets]`: every budget must name one of `actions` (those of `where_`, the
/// actions of `whose`) and give a spend per day (0 or more) and a cost per task (above 0).
pub(super) fn budget_problems<'a>(
    section: &str,
    (where_, whose): (&str, &str),
    budgets: &BTreeMap<String, ActionBudget>,
    actions: impl Iterator<Item = &'a str>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut actions: Vec<&str> = actions.collect();
    actions.sort_unstable();
    actions.dedup();
    for (action, budget) in budgets {
        let key = format!("{section}.budgets.{action}");
        if !actions.contains(&action.as_str()) {
            problems.push(Problem::new(
                key.clone(),
                format!(
                    "is not an action of {where_}: budgets are for {whose} actions ({})",
                    actions.join(", ")
                ),
            ));
        }
        match budget.per_day {
            None => problems.push(Problem::new(
                format!("{key}.per_day"),
                "is missing: the spend a day may take",
            )),
            Some(v) if !(v.is_finite() && v >= 0.0) => problems.push(Problem::new(
                format!("{key}.per_day"),
                format!("({v}) must be 0 or more"),
            )),
            Some(_) => {}
        }
        match budget.cost {
            None => problems.push(Problem::new(
                format!("{key}.cost"),
                "is missing: what one task costs",
            )),
            Some(v) if !(v.is_finite() && v > 0.0) => problems.push(Problem::new(
                format!("{key}.cost"),
                format!(
                    "({v}) must be above 0 (an action that costs nothing needs no budget: leave it out of [{section}.budgets])"
                ),
            )),
            Some(_) => {}
        }
    }
    problems
}

impl Section for PooledBudget {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        Self {
            spend_per_day: f.get("spend_per_day", None),
        }
    }
}

impl Section for ActionBudget {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        Self {
            per_day: f.get("per_day", None),
            cost: f.get("cost", None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_action_and_a_bad_threshold_are_reported_by_key() {
        let mut settings = WinbackSettings::default();
        settings.budgets.clear();
        settings.candidates.clear();
        settings.actions.remove(&Segment::GeneralValue);
        settings.threshold = 1.5;
        settings
            .segment_thresholds
            .insert(Segment::GeneralWinback, -0.1);
        let keys: Vec<String> = settings.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "winback.threshold",
                "winback.segment_thresholds.general_winback",
                "winback.actions.general_value"
            ]
        );
        assert!(WinbackSettings::default().problems().is_empty());
    }

    #[test]
    fn candidate_actions_are_named_once_and_budgeted() {
        let mut settings = WinbackSettings::default();
        settings.candidates.insert(
            Segment::GeneralValue,
            vec!["coupon".into(), "sms".into(), "coupon".into(), " ".into()],
        );
        // One action alone needs no budget: it is the segment's only choice.
        settings
            .candidates
            .insert(Segment::GeneralWinback, vec!["postcard".into()]);
        // A budget may be for a candidate action that no segment's playbook names.
        settings
            .budgets
            .insert("postcard".into(), ActionBudget::new(10.0, 1.0));
        let problems: Vec<String> = settings
            .problems()
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            problems,
            [
                "winback.candidates.general_value lists sms, which has no [winback.budgets.sms]: a segment that chooses among actions needs each one's cost and budget",
                "winback.candidates.general_value lists coupon twice: list each action once",
                "winback.candidates.general_value names an empty action: list action names, e.g. [\"coupon\", \"email_reminder\"]",
            ]
        );
    }

    #[test]
    fn budgets_name_an_action_and_spend_and_cost_nothing_negative() {
        let mut settings = WinbackSettings::default();
        settings
            .budgets
            .insert("sms_blast".into(), ActionBudget::new(10.0, 1.0));
        settings
            .budgets
            .insert("coupon".into(), ActionBudget::new(-1.0, -5.0));
        settings.budgets.insert(
            "email_reminder".into(),
            ActionBudget {
                per_day: Some(3.0),
                cost: None,
            },
        );
        settings
            .budgets
            .insert("loyalty_offer".into(), ActionBudget::new(5.0, 0.0));
        let problems: Vec<String> = settings
            .problems()
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            problems,
            [
                "winback.budgets.coupon.per_day (-1) must be 0 or more",
                "winback.budgets.coupon.cost (-5) must be above 0 (an action that costs nothing needs no budget: leave it out of [winback.budgets])",
                "winback.budgets.email_reminder.cost is missing: what one task costs",
                "winback.budgets.loyalty_offer.cost (0) must be above 0 (an action that costs nothing needs no budget: leave it out of [winback.budgets])",
                "winback.budgets.sms_blast is not an action of [winback.actions] or [winback.candidates]: budgets are for win-back's actions (coupon, email_reminder, loyalty_offer, personal_call)",
            ]
        );
    }

    #[test]
    fn a_pooled_budget_spends_0_or_more_and_prices_every_action() {
        let mut settings = WinbackSettings::default();
        settings.budget.spend_per_day = Some(200.0);
        assert!(
            settings.problems().is_empty(),
            "the shipped actions all have a cost"
        );
        settings.budget.spend_per_day = Some(-1.0);
        settings
            .actions
            .insert(Segment::GeneralValue, "postcard".into());
        settings
            .candidates
            .insert(Segment::GeneralValue, vec!["postcard".into()]);
        settings
            .candidates
            .insert(Segment::GeneralRetention, vec!["sms".into()]);
        let problems: Vec<String> = settings
            .problems()
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            problems,
            [
                "winback.budget.spend_per_day (-1) must be 0 or more",
                "winback.budget.spend_per_day needs a cost for every win-back action, which draws on it by its cost: postcard, sms have no [winback.budgets.<action>] (give each a cost, and a per_day as its cap: 1e12 for none)",
            ]
        );
        settings.budget.spend_per_day = None;
        assert!(settings.problems().is_empty(), "no pool, no need of a cost");
    }
}
