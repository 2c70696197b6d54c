//! `[log]` and `[shutdown]`: how churnd logs, and how long it drains at SIGTERM.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSettings {
    /// After SIGTERM, how long in-flight batches may take to finish and be acknowledged.
    pub drain_timeout_ms: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain_timeout_ms: 10_000,
        }
    }
}

impl LogSettings {
    /// Problems with these settings, by key. `checked_level`: whether to check the level (not
    /// when it is reported empty already).
    pub(super) fn problems(&self, checked_level: bool) -> Vec<String> {
        let mut p = Vec::new();
        if checked_level && tracing_subscriber::EnvFilter::try_new(&self.level).is_err() {
            p.push(format!(
                "log.level {:?} is not a tracing filter such as info",
                self.level
            ));
        }
        p
    }
}
