//! `[stages]` and `[risk]`, and the names of lifecycle stages, segments and risk levels that
//! other sections list.

use super::read::{read_choices, Choice, Fields};
use super::{Problem, Section};
use crate::classify::{LifecycleStage, Risk, RiskBands, Segment, StageBounds};

impl Choice for LifecycleStage {
    const ALL: &'static [Self] = &Self::ALL;
    fn name(self) -> &'static str {
        self.as_str()
    }
}

impl Choice for Segment {
    const ALL: &'static [Self] = &Self::ALL;
    fn name(self) -> &'static str {
        self.as_str()
    }
}

impl Choice for Risk {
    const ALL: &'static [Self] = &[Self::Low, Self::Medium, Self::High];
    fn name(self) -> &'static str {
        self.as_str()
    }
}

read_choices!(LifecycleStage, Segment, Risk);

impl Section for StageBounds {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            new_days: f.get("new_days", d.new_days),
            active_days: f.get("active_days", d.active_days),
            silent_days: f.get("silent_days", d.silent_days),
            sleeping_days: f.get("sleeping_days", d.sleeping_days),
            lost_days: f.get("lost_days", d.lost_days),
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let order = [
            ("active_days", self.active_days),
            ("silent_days", self.silent_days),
            ("sleeping_days", self.sleeping_days),
            ("lost_days", self.lost_days),
        ];
        let mut problems: Vec<Problem> = order
            .windows(2)
            .filter(|w| w[0].1 >= w[1].1)
            .map(|w| {
                Problem::new(
                    format!("stages.{}", w[1].0),
                    format!(
                        "({}) must be greater than stages.{} ({})",
                        w[1].1, w[0].0, w[0].1
                    ),
                )
            })
            .collect();
        if self.active_days == 0 {
            problems.push(Problem::new("stages.active_days", "must be at least 1"));
        }
        problems
    }
}

impl Section for RiskBands {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            medium: f.get("medium", d.medium),
            high: f.get("high", d.high),
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if !(0.0 < self.medium && self.medium < self.high && self.high <= 1.0) {
            problems.push(Problem::new(
                "risk.medium",
                format!(
                    "({}) and risk.high ({}) must satisfy 0 < medium < high <= 1",
                    self.medium, self.high
                ),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_out_of_order_are_reported_by_key() {
        let b = StageBounds {
            silent_days: 80,
            ..StageBounds::default()
        };
        let problems = b.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "stages.silent_days");
        assert!(StageBounds::default().problems().is_empty());
    }

    #[test]
    fn risk_bands_must_be_in_order() {
        let bands = RiskBands {
            medium: 0.8,
            high: 0.7,
        };
        let problems = bands.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "risk.medium");
        assert!(RiskBands::default().problems().is_empty());
    }

    #[test]
    fn the_names_are_the_ones_of_the_wire_format() {
        for segment in Segment::ALL {
            let json = serde_json::to_string(&segment).unwrap();
            assert_eq!(json, format!("{:?}", segment.name()));
        }
        for stage in LifecycleStage::ALL {
            let json = serde_json::to_string(&stage).unwrap();
            assert_eq!(json, format!("{:?}", stage.name()));
        }
        for risk in <Risk as Choice>::ALL {
            let json = serde_json::to_string(risk).unwrap();
            assert_eq!(json, format!("{:?}", risk.name()));
        }
    }
}
