//! `[log]` and `[shutdown]`: how churnd logs, and how long it drains at SIGTERM.

use std::time::Duration;

use serde::Serialize;

use super::read::{read_choices, Choice, Fields};
use super::units::{millis, Millis};
use super::{set_but_empty, Problem, Section};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `churnd=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShutdownSettings {
    /// After SIGTERM, how long in-flight batches may take to finish and be acknowledged.
    #[serde(rename = "drain_timeout_ms", serialize_with = "millis")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl Choice for LogFormat {
    const ALL: &'static [Self] = &[Self::Text, Self::Json];
    fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}
read_choices!(LogFormat);

impl Section for LogSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            format: f.get("format", d.format),
            level: f.get("level", d.level),
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if self.level.trim().is_empty() {
            p.push(set_but_empty(
                "log.level",
                "it would log errors only; unset it for the default (info)",
            ));
        } else if tracing_subscriber::EnvFilter::try_new(&self.level).is_err() {
            p.push(Problem::new(
                "log.level",
                format!(
                    "must be a tracing filter such as info or churnd=debug,info (got {:?})",
                    self.level
                ),
            ));
        }
        p
    }
}

impl Section for ShutdownSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            drain_timeout: f.get("drain_timeout_ms", Millis(d.drain_timeout)).0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_is_a_filter_and_not_empty() {
        let with = |level: &str| {
            let s = LogSettings {
                level: level.into(),
                ..LogSettings::default()
            };
            s.problems()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            with(" "),
            ["log.level is set but empty: it would log errors only; unset it for the default (info)"]
        );
        assert_eq!(
            with("churnd=loud"),
            ["log.level must be a tracing filter such as info or churnd=debug,info (got \"churnd=loud\")"]
        );
        assert!(with("churnd=debug,info").is_empty());
    }
}
