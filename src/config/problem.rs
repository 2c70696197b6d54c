//! What is wrong with the settings, in the user's words: the key, where its value came from
//! (a file, or an environment variable), and what was expected.

use std::fmt;

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A settings file, named as it was given (`--config /etc/churnd/churnd.toml`, or
    /// `config/default.toml`).
    File(String),
    /// An environment variable: `CHURND__CLOCK__MODE`.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(file) => f.write_str(file),
            Self::Env(variable) => write!(f, "{variable} (environment)"),
        }
    }
}

/// One thing wrong with the settings. Shown as `ORIGIN: KEY MESSAGE`:
///
/// ```text
/// /etc/churnd/churnd.toml: clock.mode must be one of: wall, event (got "walll")
/// CHURND__SOURCE__BATCH_SIZE (environment): source.batch_size must be a whole number from 1 to 100000 (got "ten")
/// ```
///
/// A value built into churnd, or settings built in code, have no origin. A message never
/// holds a secret: values are shown only for keys whose type does not fit, and secrets are
/// text, which every scalar fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The setting's key: `clock.mode`, `winback.segment_thresholds.important_value`,
    /// `tags[2].name`.
    pub key: String,
    /// Where the value came from, when it came from a file or the environment.
    pub origin: Option<Origin>,
    /// What is wrong, as it follows the key: `must be one of: wall, event (got "walll")`.
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            origin: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        write!(f, "{} {}", self.key, self.message)
    }
}

/// Every problem found in one reading of the settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        let s = if n == 1 { "" } else { "s" };
        write!(f, "configuration is invalid ({n} problem{s}):")?;
        for problem in &self.0 {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

/// Why settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file is missing or is not TOML: nothing else can be read.
    #[error("configuration could not be read: {0}")]
    Load(#[from] config::ConfigError),
    /// Values that do not fit their keys, all of them.
    #[error("{0}")]
    Invalid(Problems),
}

impl ConfigError {
    /// The problems, for an invalid configuration.
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Invalid(problems) => &problems.0,
            Self::Load(_) => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_names_its_origin_then_its_key() {
        let mut p = Problem::new("clock.mode", "must be one of: wall, event (got \"walll\")");
        assert_eq!(
            p.to_string(),
            "clock.mode must be one of: wall, event (got \"walll\")"
        );
        p.origin = Some(Origin::File("/etc/churnd/churnd.toml".into()));
        assert_eq!(
            p.to_string(),
            "/etc/churnd/churnd.toml: clock.mode must be one of: wall, event (got \"walll\")"
        );
        p.origin = Some(Origin::Env("CHURND__CLOCK__MODE".into()));
        assert!(p
            .to_string()
            .starts_with("CHURND__CLOCK__MODE (environment): clock.mode must"));
        let all = Problems(vec![p.clone(), Problem::new("a.b", "is wrong")]);
        assert_eq!(
            all.to_string(),
            format!("configuration is invalid (2 problems):\n  - {p}\n  - a.b is wrong")
        );
    }
}
