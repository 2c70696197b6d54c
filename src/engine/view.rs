//! The read model: one customer as the API shows them, scored at the engine's "now".

use std::collections::BTreeMap;

use serde::Serialize;

use crate::classify::{LifecycleStage, Segment};
use crate::decide::Group;
use crate::features::{Rfm, FEATURE_NAMES};
use crate::time::{self};

use super::Engine;
use crate::decide::Scored;

/// A customer as the API shows them, computed at the engine's "now".
#[derive(Debug, Clone, Serialize)]
pub struct CustomerView {
    pub customer_id: String,
    pub as_of: String,
    pub lifecycle_stage: LifecycleStage,
    pub segment: Option<Segment>,
    pub churn_probability: Option<f64>,
    pub risk: Option<crate::classify::Risk>,
    pub reasons: Vec<String>,
    pub rfm: Option<Rfm>,
    pub features: BTreeMap<&'static str, f64>,
    pub first_purchase: Option<String>,
    pub last_purchase: Option<String>,
    pub last_event: String,
    pub group: Group,
    pub winback_tasks_in_episode: u8,
    pub last_winback_task_at: Option<String>,
    pub model_version: String,
    /// Tags the rules give the customer now.
    pub tags: Vec<String>,
    /// Profile attributes.
    pub profile: BTreeMap<String, String>,
    pub dissatisfaction: Dissatisfaction,
    /// Purchases with a coupon, decayed with a 90-day half-life.
    pub coupons_90d: f64,
    /// The customer value model's estimates now: `null` before the first purchase and with a
    /// model file that has no value part (format 1).
    pub p_alive: Option<f64>,
    pub expected_purchases_90d: Option<f64>,
    pub expected_spend_90d: Option<f64>,
    pub clv_365d: Option<f64>,
    pub next_purchase_at: Option<String>,
}

/// What a customer's complaints, refunds and feedback say, now.
#[derive(Debug, Clone, Serialize)]
pub struct Dissatisfaction {
    /// Decayed with a 90-day half-life.
    pub refunds_90d: f64,
    pub complaints_90d: f64,
    /// Feedback scores of 1 or 2, decayed.
    pub low_feedback_90d: f64,
    pub last_feedback_score: Option<u8>,
    pub last_feedback_at: Option<String>,
}

impl Engine {
    /// One customer, scored now.
    pub fn customer(&self, customer_id: &str) -> Option<CustomerView> {
        let idx = self.store.find(customer_id)?;
        let c = self.store.get(idx);
        let now = self.now();
        let f = &c.features;
        let purchases = f.first_purchase().zip(f.last_purchase());
        let vector = f.vector(now);
        let score = vector.map(|x| self.model.score(&x));
        let rfm = f.rfm(now);
        let stage = self.settings.stages.stage(purchases, now);
        let scored = score.as_ref().zip(rfm).map(|(s, r)| Scored {
            probability: s.probability,
            risk: self.settings.risk.risk(s.probability),
            segment: self.thresholds.segment(&r),
            monetary_365d: r.monetary_365d,
            score: s,
        });
        let assessment = self.assess(idx, now, stage, scored);
        let recent = assessment.recent();
        let value = assessment.value_estimates();
        Some(CustomerView {
            customer_id: customer_id.to_string(),
            as_of: time::rfc3339(now),
            lifecycle_stage: stage,
            segment: scored.map(|s| s.segment),
            churn_probability: scored.map(|s| s.probability),
            risk: scored.map(|s| s.risk),
            reasons: score
                .map(|s| {
                    s.reasons(self.playbook.reasons())
                        .iter()
                        .map(ToString::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            rfm,
            features: vector
                .map(|x| FEATURE_NAMES.iter().copied().zip(x).collect())
                .unwrap_or_default(),
            first_purchase: f.first_purchase().map(time::rfc3339),
            last_purchase: f.last_purchase().map(time::rfc3339),
            last_event: time::rfc3339(f.last_event()),
            group: self.playbook.group(customer_id),
            winback_tasks_in_episode: c.winback.episode_tasks,
            last_winback_task_at: (c.winback.last_task_at != 0)
                .then(|| time::rfc3339(c.winback.last_task_at)),
            model_version: self.model_version.to_string(),
            tags: self
                .playbook
                .tags(&assessment)
                .iter()
                .map(|t| t.to_string())
                .collect(),
            profile: assessment
                .profile
                .iter()
                .flat_map(|p| p.iter())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dissatisfaction: Dissatisfaction {
                refunds_90d: recent.refunds_90d,
                complaints_90d: recent.complaints_90d,
                low_feedback_90d: recent.low_feedback_90d,
                last_feedback_score: recent.last_feedback_score,
                last_feedback_at: recent.last_feedback_at.map(time::rfc3339),
            },
            coupons_90d: recent.coupons_90d,
            p_alive: value.map(|v| v.p_alive),
            expected_purchases_90d: value.map(|v| v.expected_purchases_90d),
            expected_spend_90d: value.map(|v| v.expected_spend_90d),
            clv_365d: value.map(|v| v.clv_365d),
            next_purchase_at: value.and_then(|v| v.next_purchase_at).map(time::rfc3339),
        })
    }
}
