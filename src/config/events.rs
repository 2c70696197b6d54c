//! `[events]` and `[dead_letter]`: which entries are accepted, and where rejected ones go.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    /// How far an event's `ts` may lie ahead of its stream entry's time.
    pub max_future_skew_ms: u64,
    /// The earliest `ts` accepted (milliseconds since the Unix epoch).
    pub min_ts_ms: u64,
    /// Largest entry processed, in bytes (names and values of its fields); larger ones
    /// are dead-lettered as `entry_too_large`.
    pub max_entry_bytes: usize,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            max_future_skew_ms: 86_400_000,
            // 1973-03-03: every `ts` in seconds (up to the year 5138) lies below it.
            min_ts_ms: 100_000_000_000,
            max_entry_bytes: 64 << 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterSettings {
    pub stream: String,
    pub max_len: u64,
    /// How long Redis remembers that an entry was dead-lettered, so a redelivery of the
    /// entry does not write it twice.
    pub dedup_ttl_secs: u64,
    /// At most this many bytes of a rejected entry's fields are copied to its dead letter;
    /// the rest is cut (and the dead letter says so).
    pub max_copy_bytes: usize,
}

impl Default for DeadLetterSettings {
    fn default() -> Self {
        Self {
            stream: "churn:events:dlq".into(),
            max_len: 1_000_000,
            dedup_ttl_secs: 604_800,
            max_copy_bytes: 16 << 10,
        }
    }
}

impl EventSettings {
    /// Problems with these settings, by key.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.max_entry_bytes < 1 << 10 {
            p.push(format!(
                "events.max_entry_bytes ({}) must be at least {}",
                self.max_entry_bytes,
                1 << 10
            ));
        }
        p
    }
}

impl DeadLetterSettings {
    /// Problems with these settings, by key.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.max_copy_bytes < 1 << 8 {
            p.push(format!(
                "dead_letter.max_copy_bytes ({}) must be at least {}",
                self.max_copy_bytes,
                1 << 8
            ));
        }
        if self.dedup_ttl_secs == 0 {
            p.push("dead_letter.dedup_ttl_secs must be at least 1".into());
        }
        p
    }
}
