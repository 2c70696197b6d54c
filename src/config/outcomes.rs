//! `[outcomes]`: the outcome stream, and each kind's expiry and conversion window
//! (`[outcomes.winback]`, `[outcomes.convert]`, …).

use super::read::Fields;
use super::{Problem, Section};
use crate::decide::TaskKind;
use crate::outcomes::{OutcomeSettings, TaskLife};

/// Longest expiry or window, in days: beyond it the guards that keep records unique
/// (`winback.dedup_ttl_days`, at most 400 by default) could be gone before the record.
const MAX_DAYS: u32 = 365;

impl Section for OutcomeSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            stream: f.get("stream", d.stream),
            max_len: f.get("max_len", d.max_len),
            winback: f.get("winback", d.winback),
            convert: f.get("convert", d.convert),
            welcome: f.get("welcome", d.welcome),
            birthday: f.get("birthday", d.birthday),
            anniversary: f.get("anniversary", d.anniversary),
            revisit: f.get("revisit", d.revisit),
            service_recovery: f.get("service_recovery", d.service_recovery),
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.stream.is_empty() {
            problems.push(Problem::new("outcomes.stream", "must not be empty"));
        }
        for kind in TaskKind::ALL {
            let life = self.of(kind);
            for (name, days, zero) in [
                (
                    "expires_after_days",
                    life.expires_after_days,
                    "every task would expire before it is written",
                ),
                (
                    "window_days",
                    life.window_days,
                    "the conversion window would close as the task is raised",
                ),
            ] {
                let key = format!("outcomes.{}.{name}", kind.as_str());
                if days == 0 {
                    problems.push(Problem::new(key, format!("must be at least 1 (0: {zero})")));
                } else if days > MAX_DAYS {
                    problems.push(Problem::new(
                        key,
                        format!("({days}) must be at most {MAX_DAYS}"),
                    ));
                }
            }
        }
        problems
    }
}

impl Section for TaskLife {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            expires_after_days: f.get("expires_after_days", d.expires_after_days),
            window_days: f.get("window_days", d.window_days),
        }
    }
}

impl Default for TaskLife {
    fn default() -> Self {
        *OutcomeSettings::default().of(TaskKind::Winback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_expiries_of_zero_days_name_their_keys() {
        let mut s = OutcomeSettings::default();
        assert!(s.problems().is_empty());
        s.winback.window_days = 0;
        s.revisit.expires_after_days = 0;
        s.welcome.window_days = 400;
        let found: Vec<String> = s.problems().iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "outcomes.winback.window_days must be at least 1 (0: the conversion window would close as the task is raised)",
                "outcomes.welcome.window_days (400) must be at most 365",
                "outcomes.revisit.expires_after_days must be at least 1 (0: every task would expire before it is written)",
            ]
        );
    }
}
