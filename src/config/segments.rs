//! `[segments]`: how the RFM value segments' thresholds are found.

use serde::{Deserialize, Serialize};

use crate::classify::RfmThresholds;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentMode {
    /// R, F and M thresholds are the live population's medians.
    Population,
    /// R, F and M thresholds are the configured values.
    Fixed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentSettings {
    pub mode: SegmentMode,
    /// Thresholds for `fixed`, and for `population` until enough customers are known.
    pub recency_days: f64,
    pub frequency: f64,
    pub monetary: f64,
    /// How often (clock time) population thresholds are recomputed.
    pub refresh_secs: u32,
    /// Customers sampled for the population medians.
    pub sample_size: usize,
}

impl Default for SegmentSettings {
    fn default() -> Self {
        Self {
            mode: SegmentMode::Population,
            recency_days: 90.0,
            frequency: 1.5,
            monetary: 100.0,
            refresh_secs: 86_400,
            sample_size: 10_000,
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

impl SegmentSettings {
    /// Problems with these settings, by key.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(self.recency_days >= 0.0 && self.frequency >= 0.0 && self.monetary >= 0.0) {
            p.push("segments.recency_days, segments.frequency and segments.monetary must be non-negative numbers".into());
        }
        if self.refresh_secs == 0 || self.sample_size == 0 {
            p.push("segments.refresh_secs and segments.sample_size must be at least 1".into());
        }
        p
    }
}
