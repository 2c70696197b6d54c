//! `[winback]`: win-back tasks, their streams, thresholds, playbook and control group.

use super::read::Fields;
use super::{Problem, Section};
use crate::classify::Segment;
use crate::decide::WinbackSettings;

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
            min_silence_days: f.get("min_silence_days", d.min_silence_days),
            cooldown_days: f.get("cooldown_days", d.cooldown_days),
            max_tasks_per_episode: f.get("max_tasks_per_episode", d.max_tasks_per_episode),
            control_share: f.get("control_share", d.control_share),
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
        if self.stream == self.control_stream {
            problems.push(Problem::new(
                "winback.control_stream",
                "must differ from winback.stream",
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_action_and_a_bad_threshold_are_reported_by_key() {
        let mut settings = WinbackSettings::default();
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
}
