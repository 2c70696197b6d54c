//! `[lift]`: the lift report the daemon keeps from the outcome stream (`/v1/lift` and the
//! `churnd_lift_*` gauges).

use serde::Serialize;

use super::read::Fields;
use super::{Problem, Section};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiftSettings {
    /// Read the outcome stream and serve `/v1/lift` and the gauges.
    pub enabled: bool,
    /// The outcome stream: where the tasks' outcome records are written.
    pub stream: String,
}

impl Default for LiftSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            stream: "churn:outcomes".into(),
        }
    }
}

impl Section for LiftSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            enabled: f.get("enabled", d.enabled),
            stream: f.get("stream", d.stream),
        }
    }

    fn problems(&self) -> Vec<Problem> {
        if self.stream.is_empty() {
            vec![Problem::new(
                "lift.stream",
                "must not be empty: it names the outcome stream",
            )]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_named() {
        let s = LiftSettings {
            stream: String::new(),
            ..LiftSettings::default()
        };
        let problems: Vec<String> = s.problems().iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            ["lift.stream must not be empty: it names the outcome stream"]
        );
        assert!(LiftSettings::default().problems().is_empty());
    }
}
