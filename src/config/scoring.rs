//! `[clock]`, `[model]` and `[scoring]`: what "now" is, the model file, and how often silent
//! customers are scored again.

use std::num::NonZeroU32;
use std::path::PathBuf;

use serde::Serialize;

use super::read::{read_choices, Choice, Fields};
use super::units::{millis_or_off, Interval, OrOff};
use super::{Problem, Section};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockMode {
    /// "Now" is the wall clock: live traffic.
    Wall,
    /// "Now" is the largest event time seen: replays give the results of living it.
    Event,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClockSettings {
    pub mode: ClockMode,
    /// How often silent customers are checked under the wall clock.
    #[serde(rename = "tick_ms")]
    pub tick: Interval,
}

impl Default for ClockSettings {
    fn default() -> Self {
        Self {
            mode: ClockMode::Wall,
            tick: Interval::from_millis(1_000),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSettings {
    pub path: PathBuf,
    /// How often the file is checked for changes; 0 turns watching off (SIGHUP still reloads).
    #[serde(rename = "watch_interval_ms", serialize_with = "millis_or_off")]
    pub watch_interval: Option<Interval>,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            path: "models/cdnow.json".into(),
            watch_interval: Some(Interval::from_millis(2_000)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoringSettings {
    /// Silent customers are re-scored when their classification could next change (see
    /// `features::recheck`), but never more often than this: a churn probability crossing a
    /// boundary is noticed at most this late.
    pub rescore_interval_secs: NonZeroU32,
    /// Silent customers are re-scored at least this often, so that refreshed population
    /// segment thresholds reach everyone.
    pub max_rescore_interval_secs: u32,
}

impl Default for ScoringSettings {
    fn default() -> Self {
        Self {
            rescore_interval_secs: NonZeroU32::new(86_400).expect("not zero"),
            max_rescore_interval_secs: 2_592_000,
        }
    }
}

impl Choice for ClockMode {
    const ALL: &'static [Self] = &[Self::Wall, Self::Event];
    fn name(self) -> &'static str {
        match self {
            Self::Wall => "wall",
            Self::Event => "event",
        }
    }
}
read_choices!(ClockMode);

impl Section for ClockSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            mode: f.get("mode", d.mode),
            tick: f.get("tick_ms", d.tick),
        }
    }
}

impl Section for ModelSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            path: f.get("path", d.path),
            watch_interval: f.get("watch_interval_ms", OrOff(d.watch_interval)).0,
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if self.path.as_os_str().is_empty() {
            p.push(Problem::new("model.path", "must not be empty"));
        }
        p
    }
}

impl Section for ScoringSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            rescore_interval_secs: f.get("rescore_interval_secs", d.rescore_interval_secs),
            max_rescore_interval_secs: f
                .get("max_rescore_interval_secs", d.max_rescore_interval_secs),
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if self.max_rescore_interval_secs < self.rescore_interval_secs.get() {
            p.push(Problem::new(
                "scoring.max_rescore_interval_secs",
                "must be at least scoring.rescore_interval_secs",
            ));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_path_and_the_rescore_bounds_are_checked() {
        let model = ModelSettings {
            path: "".into(),
            ..ModelSettings::default()
        };
        assert_eq!(
            model.problems()[0].to_string(),
            "model.path must not be empty"
        );
        let scoring = ScoringSettings {
            max_rescore_interval_secs: 60,
            ..ScoringSettings::default()
        };
        assert_eq!(
            scoring.problems()[0].to_string(),
            "scoring.max_rescore_interval_secs must be at least scoring.rescore_interval_secs"
        );
        assert!(ModelSettings::default().problems().is_empty());
        assert!(ScoringSettings::default().problems().is_empty());
        assert!(ClockSettings::default().problems().is_empty());
    }
}
