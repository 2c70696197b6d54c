//! `[events]` and `[dead_letter]`: which entries are accepted, and where rejected ones go.

use std::num::NonZeroU64;
use std::time::Duration;

use serde::Serialize;

use super::read::Fields;
use super::units::{millis, Millis};
use super::{Problem, Section};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventSettings {
    /// How far an event's `ts` may lie ahead of its stream entry's time.
    #[serde(rename = "max_future_skew_ms", serialize_with = "millis")]
    pub max_future_skew: Duration,
    /// The earliest `ts` accepted (milliseconds since the Unix epoch).
    pub min_ts_ms: u64,
    /// Largest entry processed, in bytes (names and values of its fields); larger ones
    /// are dead-lettered as `entry_too_large`.
    pub max_entry_bytes: usize,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            max_future_skew: Duration::from_secs(86_400),
            // 1973-03-03: every `ts` in seconds (up to the year 5138) lies below it.
            min_ts_ms: 100_000_000_000,
            max_entry_bytes: 64 << 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetterSettings {
    pub stream: String,
    /// Approximate cap of the stream (XADD MAXLEN ~).
    pub max_len: NonZeroU64,
    /// How long Redis remembers that an entry was dead-lettered, so a redelivery of the
    /// entry does not write it twice (seconds, as Redis takes them).
    pub dedup_ttl_secs: NonZeroU64,
    /// At most this many bytes of a rejected entry's fields are copied to its dead letter;
    /// the rest is cut (and the dead letter says so).
    pub max_copy_bytes: usize,
}

impl Default for DeadLetterSettings {
    fn default() -> Self {
        Self {
            stream: "churn:events:dlq".into(),
            max_len: NonZeroU64::new(1_000_000).expect("not zero"),
            dedup_ttl_secs: NonZeroU64::new(604_800).expect("not zero"),
            max_copy_bytes: 16 << 10,
        }
    }
}

impl Section for EventSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            max_future_skew: f.get("max_future_skew_ms", Millis(d.max_future_skew)).0,
            min_ts_ms: f.get("min_ts_ms", d.min_ts_ms),
            max_entry_bytes: f.get("max_entry_bytes", d.max_entry_bytes),
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if self.max_entry_bytes < 1 << 10 {
            p.push(Problem::new(
                "events.max_entry_bytes",
                format!("({}) must be at least {}", self.max_entry_bytes, 1 << 10),
            ));
        }
        p
    }
}

impl Section for DeadLetterSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            stream: f.get("stream", d.stream),
            max_len: f.get("max_len", d.max_len),
            dedup_ttl_secs: f.get("dedup_ttl_secs", d.dedup_ttl_secs),
            max_copy_bytes: f.get("max_copy_bytes", d.max_copy_bytes),
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if self.max_copy_bytes < 1 << 8 {
            p.push(Problem::new(
                "dead_letter.max_copy_bytes",
                format!("({}) must be at least {}", self.max_copy_bytes, 1 << 8),
            ));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_their_copies_have_a_least_size() {
        let events = EventSettings {
            max_entry_bytes: 100,
            ..EventSettings::default()
        };
        let problems: Vec<String> = events.problems().iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            ["events.max_entry_bytes (100) must be at least 1024"]
        );
        let dead_letter = DeadLetterSettings {
            max_copy_bytes: 10,
            ..DeadLetterSettings::default()
        };
        let problems: Vec<String> = dead_letter
            .problems()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            problems,
            ["dead_letter.max_copy_bytes (10) must be at least 256"]
        );
        assert!(EventSettings::default().problems().is_empty());
        assert!(DeadLetterSettings::default().problems().is_empty());
    }
}
