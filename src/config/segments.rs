//! `[segments]`: how the RFM value segments' thresholds are found.

use std::num::{NonZeroU32, NonZeroUsize};

use serde::Serialize;

use super::read::{read_choices, Choice, Fields};
use super::{Problem, Section};
use crate::classify::RfmThresholds;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentMode {
    /// R, F and M thresholds are the live population's medians.
    Population,
    /// R, F and M thresholds are the configured values.
    Fixed,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentSettings {
    pub mode: SegmentMode,
    /// Thresholds for `fixed`, and for `population` until enough customers are known.
    pub recency_days: f64,
    pub frequency: f64,
    pub monetary: f64,
    /// How often (clock time) population thresholds are recomputed.
    pub refresh_secs: NonZeroU32,
    /// Customers sampled for the population medians.
    pub sample_size: NonZeroUsize,
}

impl Default for SegmentSettings {
    fn default() -> Self {
        Self {
            mode: SegmentMode::Population,
            recency_days: 90.0,
            frequency: 1.5,
            monetary: 100.0,
            refresh_secs: NonZeroU32::new(86_400).expect("not zero"),
            sample_size: NonZeroUsize::new(10_000).expect("not zero"),
        }
    }
}

impl SegmentSettings {
    pub fn fixed(&self) -> RfmThresholds {
        RfmThresholds {
            recency_days: self.recency_days,
            frequency: self.frequency,
            monetary: self.monetary,
        }
    }
}

impl Choice for SegmentMode {
    const ALL: &'static [Self] = &[Self::Population, Self::Fixed];
    fn name(self) -> &'static str {
        match self {
            Self::Population => "population",
            Self::Fixed => "fixed",
        }
    }
}
read_choices!(SegmentMode);

impl Section for SegmentSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            mode: f.get("mode", d.mode),
            recency_days: f.get("recency_days", d.recency_days),
            frequency: f.get("frequency", d.frequency),
            monetary: f.get("monetary", d.monetary),
            refresh_secs: f.get("refresh_secs", d.refresh_secs),
            sample_size: f.get("sample_size", d.sample_size),
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        for (key, value) in [
            ("segments.recency_days", self.recency_days),
            ("segments.frequency", self.frequency),
            ("segments.monetary", self.monetary),
        ] {
            // NaN is neither.
            if value.is_nan() || value < 0.0 {
                p.push(Problem::new(
                    key,
                    format!("({value}) must be a number, 0 or more"),
                ));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_numbers_0_or_more() {
        let s = SegmentSettings {
            recency_days: -1.0,
            monetary: f64::NAN,
            ..SegmentSettings::default()
        };
        let problems: Vec<String> = s.problems().iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "segments.recency_days (-1) must be a number, 0 or more",
                "segments.monetary (NaN) must be a number, 0 or more",
            ]
        );
        assert!(SegmentSettings::default().problems().is_empty());
    }
}
