//! CRM classification of a customer: lifecycle stage, RFM value segment, risk level.
//!
//! Pure functions of the customer's RFM facts, the churn probability and configured bounds.

use serde::{Deserialize, Serialize};

use crate::features::{Rfm, HALF_LIVES_DAYS};
use crate::time::{self, UnixSeconds};

/// Where a customer is in their life with the business, by days since the last purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleStage {
    /// Seen (visits, complaints) but has not bought yet.
    Potential,
    /// In the first weeks after the first purchase.
    New,
    Active,
    Silent,
    Sleeping,
    Lost,
    Churned,
}

impl LifecycleStage {
    pub const ALL: [Self; 7] = [
        Self::Potential,
        Self::New,
        Self::Active,
        Self::Silent,
        Self::Sleeping,
        Self::Lost,
        Self::Churned,
    ];

    /// Position in `ALL` (declaration order), for arrays indexed by stage.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Potential => "potential",
            Self::New => "new",
            Self::Active => "active",
            Self::Silent => "silent",
            Self::Sleeping => "sleeping",
            Self::Lost => "lost",
            Self::Churned => "churned",
        }
    }
}

/// Stage boundaries in days (see `[stages]` in config/default.toml), read and checked by
/// `config::classify`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StageBounds {
    pub new_days: u32,
    pub active_days: u32,
    pub silent_days: u32,
    pub sleeping_days: u32,
    pub lost_days: u32,
}

impl Default for StageBounds {
    fn default() -> Self {
        Self {
            new_days: 30,
            active_days: 90,
            silent_days: 180,
            sleeping_days: 270,
            lost_days: 365,
        }
    }
}

impl StageBounds {
    pub fn stage(
        &self,
        purchases: Option<(UnixSeconds, UnixSeconds)>,
        now: UnixSeconds,
    ) -> LifecycleStage {
        let Some((first, last)) = purchases else {
            return LifecycleStage::Potential;
        };
        let since_last = now.saturating_sub(last);
        if now.saturating_sub(first) < time::days(self.new_days) {
            LifecycleStage::New
        } else if since_last < time::days(self.active_days) {
            LifecycleStage::Active
        } else if since_last < time::days(self.silent_days) {
            LifecycleStage::Silent
        } else if since_last < time::days(self.sleeping_days) {
            LifecycleStage::Sleeping
        } else if since_last < time::days(self.lost_days) {
            LifecycleStage::Lost
        } else {
            LifecycleStage::Churned
        }
    }

    /// The first moment after `now` at which the stage changes without any event.
    pub(crate) fn next_change(
        &self,
        purchases: Option<(UnixSeconds, UnixSeconds)>,
        now: UnixSeconds,
    ) -> Option<UnixSeconds> {
        let (first, last) = purchases?;
        let add = |t: UnixSeconds, d: u32| t.saturating_add(time::days(d));
        [
            add(first, self.new_days),
            add(last, self.active_days),
            add(last, self.silent_days),
            add(last, self.sleeping_days),
            add(last, self.lost_days),
        ]
        .into_iter()
        .filter(|&t| t > now)
        .min()
    }
}

/// The eight classic RFM value segments: recency, frequency and monetary each rated high or
/// low against a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    /// R high, F high, M high.
    ImportantValue,
    /// R high, F low, M high.
    ImportantDevelopment,
    /// R low, F high, M high.
    ImportantRetention,
    /// R low, F low, M high.
    ImportantWinback,
    /// R high, F high, M low.
    GeneralValue,
    /// R high, F low, M low.
    GeneralDevelopment,
    /// R low, F high, M low.
    GeneralRetention,
    /// R low, F low, M low.
    GeneralWinback,
}

impl Segment {
    pub const ALL: [Self; 8] = [
        Self::ImportantValue,
        Self::ImportantDevelopment,
        Self::ImportantRetention,
        Self::ImportantWinback,
        Self::GeneralValue,
        Self::GeneralDevelopment,
        Self::GeneralRetention,
        Self::GeneralWinback,
    ];

    /// Position in `ALL` (declaration order), for arrays indexed by segment.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ImportantValue => "important_value",
            Self::ImportantDevelopment => "important_development",
            Self::ImportantRetention => "important_retention",
            Self::ImportantWinback => "important_winback",
            Self::GeneralValue => "general_value",
            Self::GeneralDevelopment => "general_development",
            Self::GeneralRetention => "general_retention",
            Self::GeneralWinback => "general_winback",
        }
    }

    fn from_ratings(recent: bool, frequent: bool, valuable: bool) -> Self {
        match (valuable, recent, frequent) {
            (true, true, true) => Self::ImportantValue,
            (true, true, false) => Self::ImportantDevelopment,
            (true, false, true) => Self::ImportantRetention,
            (true, false, false) => Self::ImportantWinback,
            (false, true, true) => Self::GeneralValue,
            (false, true, false) => Self::GeneralDevelopment,
            (false, false, true) => Self::GeneralRetention,
            (false, false, false) => Self::GeneralWinback,
        }
    }
}

/// What "high" means for R, F and M.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RfmThresholds {
    /// R is high when the last purchase is at most this many days ago.
    pub recency_days: f64,
    /// F is high when the purchase count decayed with a 365-day half-life reaches this.
    pub frequency: f64,
    /// M is high when spend decayed with a 365-day half-life reaches this.
    pub monetary: f64,
}

impl RfmThresholds {
    pub fn segment(&self, rfm: &Rfm) -> Segment {
        Segment::from_ratings(
            rfm.recency_days <= self.recency_days,
            rfm.frequency_365d >= self.frequency,
            rfm.monetary_365d >= self.monetary,
        )
    }

    /// The first moment after `now` at which silence alone changes the segment of a customer
    /// whose facts at `now` are `rfm`: recency passing its threshold, or the decayed purchase
    /// count or spend falling below theirs. `None` when silence changes nothing more.
    pub(crate) fn next_change(&self, rfm: &Rfm, now: UnixSeconds) -> Option<UnixSeconds> {
        // Both decayed sums use the 365-day half-life: v·2^(-d/h) falls below `t` after
        // h·log2(v/t) days.
        let half_life = HALF_LIVES_DAYS[2];
        let falls_below = |value: f64, threshold: f64| {
            (threshold > 0.0 && value >= threshold).then(|| half_life * (value / threshold).log2())
        };
        [
            (rfm.recency_days <= self.recency_days).then_some(self.recency_days - rfm.recency_days),
            falls_below(rfm.frequency_365d, self.frequency),
            falls_below(rfm.monetary_365d, self.monetary),
        ]
        .into_iter()
        .flatten()
        // One second past the moment the comparison turns, which is when it has turned.
        .map(|days| {
            now.saturating_add(((days * time::SECONDS_PER_DAY).ceil() as u32).saturating_add(1))
        })
        .min()
    }

    /// Thresholds at the medians of a population sample. Customers at the median rate high,
    /// so a population where most bought once still splits on frequency.
    pub(crate) fn medians(sample: &mut [Rfm]) -> Option<Self> {
        fn median(values: &mut [f64]) -> f64 {
            let mid = values.len() / 2;
            *values.select_nth_unstable_by(mid, f64::total_cmp).1
        }
        if sample.is_empty() {
            return None;
        }
        let column = |f: fn(&Rfm) -> f64| median(&mut sample.iter().map(f).collect::<Vec<_>>());
        Some(Self {
            recency_days: column(|r| r.recency_days),
            frequency: column(|r| r.frequency_365d),
            monetary: column(|r| r.monetary_365d),
        })
    }
}

/// Churn risk level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    Low,
    Medium,
    High,
}

impl Risk {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }
}

/// Probability bounds of the risk levels (`[risk]`), read and checked by `config::classify`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RiskBands {
    pub medium: f64,
    pub high: f64,
}

impl Default for RiskBands {
    fn default() -> Self {
        Self {
            medium: 0.4,
            high: 0.7,
        }
    }
}

impl RiskBands {
    pub fn risk(&self, probability: f64) -> Risk {
        if probability >= self.high {
            Risk::High
        } else if probability >= self.medium {
            Risk::Medium
        } else {
            Risk::Low
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u32 = 86_400;
    const T0: u32 = 852_076_800;

    #[test]
    fn stages_follow_days_since_last_purchase() {
        let b = StageBounds::default();
        let stage = |first_day: u32, last_day: u32, now_day: u32| {
            b.stage(
                Some((T0 + first_day * DAY, T0 + last_day * DAY)),
                T0 + now_day * DAY,
            )
        };
        assert_eq!(b.stage(None, T0), LifecycleStage::Potential);
        assert_eq!(stage(0, 0, 10), LifecycleStage::New);
        assert_eq!(stage(0, 0, 30), LifecycleStage::Active);
        assert_eq!(stage(0, 0, 89), LifecycleStage::Active);
        assert_eq!(stage(0, 0, 90), LifecycleStage::Silent);
        assert_eq!(stage(0, 0, 180), LifecycleStage::Sleeping);
        assert_eq!(stage(0, 0, 270), LifecycleStage::Lost);
        assert_eq!(stage(0, 0, 364), LifecycleStage::Lost);
        assert_eq!(stage(0, 0, 365), LifecycleStage::Churned);
        assert_eq!(stage(0, 100, 150), LifecycleStage::Active);
    }

    #[test]
    fn the_next_stage_change_is_the_nearest_boundary() {
        let b = StageBounds::default();
        let p = Some((T0, T0 + 40 * DAY));
        assert_eq!(b.next_change(p, T0 + 10 * DAY), Some(T0 + 30 * DAY));
        assert_eq!(b.next_change(p, T0 + 30 * DAY), Some(T0 + 130 * DAY));
        assert_eq!(b.next_change(p, T0 + 500 * DAY), None);
        assert_eq!(b.next_change(None, T0), None);
    }

    #[test]
    fn silence_flips_the_segment_at_computed_moments() {
        let t = RfmThresholds {
            recency_days: 90.0,
            frequency: 1.0,
            monetary: 50.0,
        };
        let rfm = |recency_days: f64, frequency_365d: f64, monetary_365d: f64| Rfm {
            recency_days,
            tenure_days: 400.0,
            purchases: 3,
            frequency_365d,
            monetary_365d,
            total_spend: 300.0,
        };
        // R turns low 30 days on, F (2 → 1 at a 365-day half-life) a year on, M (400 → 50)
        // three half-lives on: the nearest first, one second after the comparison turns.
        assert_eq!(
            t.next_change(&rfm(60.0, 2.0, 400.0), T0),
            Some(T0 + 30 * DAY + 1)
        );
        let later = t.next_change(&rfm(100.0, 2.0, 400.0), T0).unwrap();
        assert!(later.abs_diff(T0 + 365 * DAY) <= 2, "{later}");
        // Everything already low: silence changes nothing more.
        assert_eq!(t.next_change(&rfm(100.0, 0.5, 10.0), T0), None);
        // The moment found is when the segment has changed.
        let f = rfm(100.0, 2.0, 10.0);
        let at = t.next_change(&f, T0).unwrap();
        let decayed = |secs: u32| {
            rfm(
                100.0,
                2.0 * (-(f64::from(secs) / 86_400.0) / 365.0).exp2(),
                10.0,
            )
        };
        assert_ne!(t.segment(&decayed(at - T0)), t.segment(&f));
        assert_eq!(t.segment(&decayed(at - T0 - 2)), t.segment(&f));
    }

    #[test]
    fn segments_follow_the_three_ratings() {
        let t = RfmThresholds {
            recency_days: 90.0,
            frequency: 2.0,
            monetary: 100.0,
        };
        let rfm = |recency_days, frequency_365d, monetary_365d| Rfm {
            recency_days,
            tenure_days: 400.0,
            purchases: 3,
            frequency_365d,
            monetary_365d,
            total_spend: monetary_365d,
        };
        assert_eq!(t.segment(&rfm(10.0, 3.0, 200.0)), Segment::ImportantValue);
        assert_eq!(
            t.segment(&rfm(10.0, 1.0, 200.0)),
            Segment::ImportantDevelopment
        );
        assert_eq!(
            t.segment(&rfm(200.0, 3.0, 200.0)),
            Segment::ImportantRetention
        );
        assert_eq!(
            t.segment(&rfm(200.0, 1.0, 200.0)),
            Segment::ImportantWinback
        );
        assert_eq!(t.segment(&rfm(10.0, 3.0, 20.0)), Segment::GeneralValue);
        assert_eq!(
            t.segment(&rfm(10.0, 1.0, 20.0)),
            Segment::GeneralDevelopment
        );
        assert_eq!(t.segment(&rfm(200.0, 3.0, 20.0)), Segment::GeneralRetention);
        assert_eq!(t.segment(&rfm(200.0, 1.0, 20.0)), Segment::GeneralWinback);
    }

    #[test]
    fn population_thresholds_are_medians() {
        let mut sample: Vec<Rfm> = (1..=5)
            .map(|i| Rfm {
                recency_days: f64::from(i) * 10.0,
                tenure_days: 100.0,
                purchases: i,
                frequency_365d: f64::from(i),
                monetary_365d: f64::from(i) * 100.0,
                total_spend: 0.0,
            })
            .collect();
        let t = RfmThresholds::medians(&mut sample).unwrap();
        assert_eq!(
            (t.recency_days, t.frequency, t.monetary),
            (30.0, 3.0, 300.0)
        );
        assert_eq!(RfmThresholds::medians(&mut []), None);
    }

    #[test]
    fn risk_levels_follow_the_bands() {
        let bands = RiskBands::default();
        assert_eq!(bands.risk(0.1), Risk::Low);
        assert_eq!(bands.risk(0.4), Risk::Medium);
        assert_eq!(bands.risk(0.95), Risk::High);
    }
}
