//! Rule-based tags: names for kinds of customers (`vip`, `bargain_hunter`, `at_risk`) that
//! marketing filters and personalises on, from rules in the configuration.
//!
//! A rule is a conjunction of conditions on what churnd knows of a customer at a scoring
//! (segment, stage, risk, dissatisfaction, spend, profile attributes); a customer has a tag
//! when every condition of one of its rules holds, so several rules of one name are their
//! disjunction. Tags are evaluated at every scoring, attached to the tasks raised then and
//! shown by the customer endpoint; they are a function of the state, so nothing is stored.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::assessment::{Assessment, Recent};
use crate::classify::{LifecycleStage, Risk, Segment};

/// One `[[tags]]` rule. Every condition given must hold; a rule gives at least one.
/// `config::tags` reads and checks the rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TagRule {
    /// The tag: 1 to 32 bytes of a-z, 0-9 and _.
    pub name: String,
    pub segments: Vec<Segment>,
    pub stages: Vec<LifecycleStage>,
    pub risks: Vec<Risk>,
    pub min_churn_probability: Option<f64>,
    pub max_churn_probability: Option<f64>,
    pub min_purchases: Option<u32>,
    /// Spend over the last year (365-day decay).
    pub min_monetary_365d: Option<f64>,
    /// Refunds, complaints, coupon purchases and scores of 1 or 2, each decayed with a 90-day
    /// half-life.
    pub min_refunds_90d: Option<f64>,
    pub min_complaints_90d: Option<f64>,
    pub min_coupons_90d: Option<f64>,
    pub min_low_feedback_90d: Option<f64>,
    /// The latest feedback score at most this (a customer without feedback does not match).
    pub max_last_feedback_score: Option<u8>,
    /// Profile attributes and the values that match (any of them).
    pub profile: BTreeMap<String, Vec<String>>,
}

/// The default rules: the examples of the CRM playbook.
pub fn default_rules() -> Vec<TagRule> {
    vec![
        TagRule {
            name: "vip".into(),
            segments: vec![Segment::ImportantValue],
            ..TagRule::default()
        },
        TagRule {
            name: "bargain_hunter".into(),
            min_refunds_90d: Some(2.0),
            ..TagRule::default()
        },
        TagRule {
            name: "bargain_hunter".into(),
            min_coupons_90d: Some(2.0),
            ..TagRule::default()
        },
        TagRule {
            name: "at_risk".into(),
            risks: vec![Risk::High],
            ..TagRule::default()
        },
    ]
}

impl TagRule {
    /// How many conditions the rule gives: one at least, or it would tag everyone.
    pub(crate) fn conditions(&self) -> usize {
        let lists = [
            self.segments.is_empty(),
            self.stages.is_empty(),
            self.risks.is_empty(),
            self.profile.is_empty(),
        ];
        let bounds = [
            self.min_churn_probability,
            self.max_churn_probability,
            self.min_monetary_365d,
            self.min_refunds_90d,
            self.min_complaints_90d,
            self.min_coupons_90d,
            self.min_low_feedback_90d,
        ];
        lists.iter().filter(|empty| !**empty).count()
            + bounds.iter().flatten().count()
            + usize::from(self.min_purchases.is_some())
            + usize::from(self.max_last_feedback_score.is_some())
    }

    fn matches(&self, a: &Assessment<'_>, recent: &Recent) -> bool {
        let at_least = |bound: Option<f64>, value: f64| bound.is_none_or(|b| value >= b);
        let probability = a.scored.map(|s| s.probability);
        within(&self.segments, a.segment())
            && within(&self.stages, Some(a.stage))
            && within(&self.risks, a.scored.map(|s| s.risk))
            && self
                .min_churn_probability
                .is_none_or(|b| probability.is_some_and(|p| p >= b))
            && self
                .max_churn_probability
                .is_none_or(|b| probability.is_some_and(|p| p <= b))
            && self.min_purchases.is_none_or(|b| a.purchases() >= b)
            && at_least(
                self.min_monetary_365d,
                a.scored.map_or(0.0, |s| s.monetary_365d),
            )
            && at_least(self.min_refunds_90d, recent.refunds_90d)
            && at_least(self.min_complaints_90d, recent.complaints_90d)
            && at_least(self.min_coupons_90d, recent.coupons_90d)
            && at_least(self.min_low_feedback_90d, recent.low_feedback_90d)
            && self
                .max_last_feedback_score
                .is_none_or(|b| recent.last_feedback_score.is_some_and(|s| s <= b))
            && self.profile.iter().all(|(key, values)| {
                a.profile
                    .and_then(|p| p.get(key))
                    .is_some_and(|v| values.iter().any(|accepted| accepted == v))
            })
    }
}

/// Whether `value` is one of `list`, or `list` is empty (no condition).
fn within<T: PartialEq>(list: &[T], value: Option<T>) -> bool {
    list.is_empty() || value.is_some_and(|v| list.contains(&v))
}

/// The configured rules, grouped by tag in the order tags are first named.
#[derive(Debug, Clone, Default)]
pub struct Tags {
    tags: Vec<(Arc<str>, Vec<TagRule>)>,
}

impl Tags {
    pub fn new(rules: &[TagRule]) -> Self {
        let mut tags: Vec<(Arc<str>, Vec<TagRule>)> = Vec::new();
        for rule in rules {
            match tags.iter_mut().find(|(name, _)| **name == *rule.name) {
                Some((_, group)) => group.push(rule.clone()),
                None => tags.push((rule.name.as_str().into(), vec![rule.clone()])),
            }
        }
        Self { tags }
    }

    /// The customer's tags, in configuration order.
    pub fn of(&self, a: &Assessment<'_>) -> Vec<Arc<str>> {
        if self.tags.is_empty() {
            return Vec::new();
        }
        let recent = a.recent();
        self.tags
            .iter()
            .filter(|(_, rules)| rules.iter().any(|r| r.matches(a, &recent)))
            .map(|(name, _)| name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Scored;
    use crate::event::{Event, EventKind};
    use crate::features::{CustomerFeatures, Decayed, Feedback};
    use crate::model::Score;
    use crate::profiles::{Interner, Profile};
    use crate::time::UnixSeconds;

    const NOW: UnixSeconds = 900_000_000;

    static SCORE: std::sync::LazyLock<Score> = std::sync::LazyLock::new(|| {
        let model = crate::model::Model::from_file(&crate::model::tests::recency_only_model_file())
            .expect("valid test model");
        model.score(&[0.0; crate::features::FEATURE_COUNT])
    });

    /// What a test customer has done: purchases of 60 each and refunds, all at NOW.
    fn history(purchases: u32, refunds: u32) -> CustomerFeatures {
        let mut f = CustomerFeatures::default();
        for _ in 0..purchases {
            f.apply(&Event::new("c", EventKind::Purchase, 60.0, NOW));
        }
        for _ in 0..refunds {
            f.apply(&Event::new("c", EventKind::Refund, 5.0, NOW));
        }
        f
    }

    /// An active, valuable, low-risk buyer unless changed.
    fn assessed<'a>(features: &'a CustomerFeatures) -> Assessment<'a> {
        Assessment {
            customer_id: "c",
            now: NOW,
            stage: LifecycleStage::Active,
            features,
            scored: Some(Scored {
                probability: 0.2,
                risk: Risk::Low,
                segment: Segment::ImportantValue,
                monetary_365d: 300.0,
                score: &SCORE,
            }),
            profile: None,
            feedback: None,
            coupons: None,
            value: None,
        }
    }

    fn names(tags: &Tags, a: &Assessment<'_>) -> Vec<String> {
        tags.of(a).iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn the_default_rules_tag_as_documented() {
        let tags = Tags::new(&default_rules());
        let buyer = history(5, 0);
        assert_eq!(names(&tags, &assessed(&buyer)), ["vip"]);
        let mut coupons = Decayed::default();
        coupons.add(NOW);
        coupons.add(NOW);
        let mut hunter = assessed(&buyer);
        hunter.coupons = Some(coupons);
        hunter.scored = hunter.scored.map(|s| Scored {
            segment: Segment::GeneralValue,
            risk: Risk::High,
            ..s
        });
        assert_eq!(names(&tags, &hunter), ["bargain_hunter", "at_risk"]);
        let refunds = history(5, 2);
        let refunder = Assessment {
            scored: None,
            ..assessed(&refunds)
        };
        assert_eq!(names(&tags, &refunder), ["bargain_hunter"]);
    }

    #[test]
    fn every_condition_of_a_rule_must_hold() {
        let mut interner = Interner::default();
        let eu: Arc<Profile> = interner.profile([("region", "eu"), ("channel", "app")]);
        let rule = TagRule {
            name: "unhappy_eu_app".into(),
            profile: BTreeMap::from([
                ("region".into(), vec!["eu".into(), "uk".into()]),
                ("channel".into(), vec!["app".into()]),
            ]),
            max_last_feedback_score: Some(2),
            ..TagRule::default()
        };
        let tags = Tags::new(&[rule]);
        let buyer = history(5, 0);
        let feedback = |score| {
            let mut f = Feedback::default();
            f.apply(score, NOW);
            Some(f)
        };
        let unhappy = Assessment {
            feedback: feedback(1),
            profile: Some(&eu),
            ..assessed(&buyer)
        };
        assert_eq!(tags.of(&unhappy).len(), 1);
        assert!(tags
            .of(&Assessment {
                feedback: feedback(3),
                ..unhappy
            })
            .is_empty());
        assert!(tags
            .of(&Assessment {
                feedback: None,
                ..unhappy
            })
            .is_empty());
        assert!(tags
            .of(&Assessment {
                profile: None,
                ..unhappy
            })
            .is_empty());
    }
}
