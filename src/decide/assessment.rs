//! One customer as a decision sees them at a moment: the one view every policy and the tag
//! rules read, built by the engine at a scoring and by the API's read model.

use std::sync::Arc;

use crate::classify::{LifecycleStage, Risk, Segment};
use crate::features::{CustomerFeatures, Decayed, Feedback};
use crate::model::value::{CustomerHistory, ValueEstimates, ValueModel};
use crate::model::Score;
use crate::profiles::Profile;
use crate::time::UnixSeconds;

/// A customer at `now`, as the playbook decides about them.
#[derive(Debug, Clone, Copy)]
pub struct Assessment<'a> {
    pub customer_id: &'a str,
    pub now: UnixSeconds,
    pub stage: LifecycleStage,
    pub features: &'a CustomerFeatures,
    /// The model's view, for a customer who has bought (a prospect has none).
    pub scored: Option<Scored<'a>>,
    pub profile: Option<&'a Arc<Profile>>,
    pub feedback: Option<Feedback>,
    /// Purchases with a coupon, decayed.
    pub coupons: Option<Decayed>,
    /// The serving model's value part (`None` for a format 1 model file). The estimates are
    /// worked out from `features` when read ([`Self::value_estimates`]): when a task is raised
    /// or the API asks, not at every event, and nothing is stored per customer.
    pub value: Option<&'a ValueModel>,
}

/// A buyer's churn score and what it is read with.
#[derive(Debug, Clone, Copy)]
pub struct Scored<'a> {
    pub probability: f64,
    pub risk: Risk,
    pub segment: Segment,
    /// Spend over the last year (365-day decay).
    pub monetary_365d: f64,
    /// The score behind `probability`: its reasons go on a win-back task.
    pub score: &'a Score,
}

/// What a customer's refunds, complaints, coupons and feedback say at the assessment's
/// moment, each decayed with a 90-day half-life: worked out when read (the tag rules, the
/// API), not at every decision.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Recent {
    pub refunds_90d: f64,
    pub complaints_90d: f64,
    pub coupons_90d: f64,
    /// Feedback scores of 1 or 2.
    pub low_feedback_90d: f64,
    pub last_feedback_score: Option<u8>,
    pub last_feedback_at: Option<UnixSeconds>,
}

impl Assessment<'_> {
    pub fn purchases(&self) -> u32 {
        self.features.purchases()
    }

    pub fn first_purchase(&self) -> Option<UnixSeconds> {
        self.features.first_purchase()
    }

    pub fn last_purchase(&self) -> Option<UnixSeconds> {
        self.features.last_purchase()
    }

    /// The RFM segment, for a buyer.
    pub fn segment(&self) -> Option<Segment> {
        self.scored.map(|s| s.segment)
    }

    /// Month and day, from the profile.
    pub fn birthday(&self) -> Option<(u8, u8)> {
        self.profile.and_then(|p| p.birthday())
    }

    /// The customer value model's estimates now: `None` before the first purchase, with a
    /// model that has no value part, and where the value model does not vouch for them
    /// (`ValueModel::estimate`: never NaN).
    pub fn value_estimates(&self) -> Option<ValueEstimates> {
        let model = self.value?;
        let history = CustomerHistory::of(self.features, self.now)?;
        model.estimate(&history, self.now)
    }

    pub(crate) fn recent(&self) -> Recent {
        let (refunds_90d, complaints_90d) = self.features.dissatisfaction(self.now);
        Recent {
            refunds_90d,
            complaints_90d,
            coupons_90d: self.coupons.map_or(0.0, |c| c.at(self.now)),
            low_feedback_90d: self.feedback.map_or(0.0, |f| f.low_scores.at(self.now)),
            last_feedback_score: self.feedback.map(|f| f.last_score),
            last_feedback_at: self.feedback.map(|f| f.last_at),
        }
    }
}
