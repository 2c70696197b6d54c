//! `[[tags]]`: the rules that give customers tags (see [`crate::decide::Tags`]).

use config::Value;
use serde::Serialize;

use super::read::{Fields, Read, Reader};
use super::{Problem, Section};
use crate::decide::{self, TagRule};

/// `[[tags]]`: the tag rules; the playbook's examples by default. A file's rules replace the
/// default ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct TagSettings(pub Vec<TagRule>);

impl Default for TagSettings {
    fn default() -> Self {
        Self(decide::default_rules())
    }
}

impl Read for TagSettings {
    fn read(value: Value, key: &str, r: &mut Reader) -> Option<Self> {
        Vec::read(value, key, r).map(Self)
    }
}

impl Section for TagRule {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            name: f.get("name", d.name),
            segments: f.get("segments", d.segments),
            stages: f.get("stages", d.stages),
            risks: f.get("risks", d.risks),
            min_churn_probability: f.get("min_churn_probability", d.min_churn_probability),
            max_churn_probability: f.get("max_churn_probability", d.max_churn_probability),
            min_purchases: f.get("min_purchases", d.min_purchases),
            min_monetary_365d: f.get("min_monetary_365d", d.min_monetary_365d),
            min_refunds_90d: f.get("min_refunds_90d", d.min_refunds_90d),
            min_complaints_90d: f.get("min_complaints_90d", d.min_complaints_90d),
            min_coupons_90d: f.get("min_coupons_90d", d.min_coupons_90d),
            min_low_feedback_90d: f.get("min_low_feedback_90d", d.min_low_feedback_90d),
            max_last_feedback_score: f.get("max_last_feedback_score", d.max_last_feedback_score),
            profile: f.get("profile", d.profile),
        }
    }
}

impl TagSettings {
    /// Problems with the rules, by key (`tags[2].name`).
    pub(super) fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (i, rule) in self.0.iter().enumerate() {
            let key = format!("tags[{i}]");
            let name_ok = !rule.name.is_empty()
                && rule.name.len() <= 32
                && rule
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !name_ok {
                problems.push(Problem::new(
                    format!("{key}.name"),
                    format!(
                        "must be 1 to 32 bytes of a-z, 0-9 and _ (got {:?})",
                        rule.name
                    ),
                ));
            }
            if rule.conditions() == 0 {
                problems.push(Problem::new(
                    key.clone(),
                    format!("({:?}) has no condition: it would tag everyone", rule.name),
                ));
            }
            for (bound, value) in [
                ("min_churn_probability", rule.min_churn_probability),
                ("max_churn_probability", rule.max_churn_probability),
            ] {
                if let Some(p) = value.filter(|p| !(0.0..=1.0).contains(p)) {
                    problems.push(Problem::new(
                        format!("{key}.{bound}"),
                        format!("({p}) must be between 0 and 1"),
                    ));
                }
            }
            if let Some(s) = rule
                .max_last_feedback_score
                .filter(|s| !(1..=5).contains(s))
            {
                problems.push(Problem::new(
                    format!("{key}.max_last_feedback_score"),
                    format!("({s}) must be between 1 and 5"),
                ));
            }
            for (bound, value) in [
                ("min_monetary_365d", rule.min_monetary_365d),
                ("min_refunds_90d", rule.min_refunds_90d),
                ("min_complaints_90d", rule.min_complaints_90d),
                ("min_coupons_90d", rule.min_coupons_90d),
                ("min_low_feedback_90d", rule.min_low_feedback_90d),
            ] {
                if value.is_some_and(|v| !v.is_finite()) {
                    problems.push(Problem::new(
                        format!("{key}.{bound}"),
                        "must be a finite number",
                    ));
                }
            }
        }
        let distinct: std::collections::BTreeSet<&str> =
            self.0.iter().map(|r| r.name.as_str()).collect();
        if distinct.len() > 64 {
            problems.push(Problem::new(
                "tags",
                format!("name {} tags: at most 64 distinct names", distinct.len()),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_rules_are_valid() {
        assert!(TagSettings::default().problems().is_empty());
    }

    #[test]
    fn bad_rules_are_reported_by_key() {
        let bad = TagSettings(vec![
            TagRule {
                name: "Bad Name".into(),
                min_purchases: Some(1),
                ..TagRule::default()
            },
            TagRule {
                name: "everyone".into(),
                ..TagRule::default()
            },
            TagRule {
                name: "p".into(),
                min_churn_probability: Some(1.5),
                ..TagRule::default()
            },
        ]);
        let problems: Vec<String> = bad.problems().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            problems,
            [
                "tags[0].name must be 1 to 32 bytes of a-z, 0-9 and _ (got \"Bad Name\")",
                "tags[1] (\"everyone\") has no condition: it would tag everyone",
                "tags[2].min_churn_probability (1.5) must be between 0 and 1",
            ]
        );
    }
}
