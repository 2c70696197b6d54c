//! `[source]`: the input streams, the consumer group and how they are read.

use std::collections::HashSet;

use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// A new consumer group reads the stream's whole retained history.
    Beginning,
    /// A new consumer group reads only entries added after it is created.
    End,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceSettings {
    /// Input streams; from the environment as a comma-separated list.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub streams: Vec<String>,
    pub group: String,
    /// Consumer name; empty means the host name (the pod name in Kubernetes), which keeps
    /// a restarted replica's pending entries its own.
    pub consumer: String,
    /// Entries per XREADGROUP (COUNT).
    pub batch_size: usize,
    /// How long a read waits for new entries (BLOCK).
    pub block_ms: u64,
    pub start_from: StartFrom,
    /// Batches buffered between reading and processing: the backpressure bound.
    pub queue_batches: usize,
    /// How often consumer-group lag and pending counts are polled for metrics, and an idle
    /// sink checks its connection.
    pub lag_poll_ms: u64,
    /// Entries pending this long on another consumer of the group (one that is gone) are
    /// claimed by this one; 0 turns claiming off.
    pub claim_idle_ms: u64,
    /// Bytes of entries read and not yet applied, at most: reading waits for room, and a
    /// read asks for fewer entries when they are large (see `source::budget`).
    pub max_inflight_bytes: u64,
}

impl Default for SourceSettings {
    fn default() -> Self {
        Self {
            streams: vec!["churn:events".into()],
            group: "churnd".into(),
            consumer: String::new(),
            batch_size: 1_000,
            block_ms: 1_000,
            start_from: StartFrom::Beginning,
            queue_batches: 4,
            lag_poll_ms: 5_000,
            claim_idle_ms: 60_000,
            max_inflight_bytes: 64 << 20,
        }
    }
}

impl SourceSettings {
    /// Problems with these settings, by key.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (key, v) in [
            ("source.block_ms", self.block_ms),
            ("source.lag_poll_ms", self.lag_poll_ms),
        ] {
            if v == 0 {
                p.push(format!("{key} must be at least 1"));
            }
        }
        if self.streams.is_empty() {
            p.push("source.streams must name at least one stream".into());
        }
        let mut seen = HashSet::new();
        for stream in &self.streams {
            if stream.is_empty() {
                p.push("source.streams contains an empty name".into());
            } else if !seen.insert(stream) {
                p.push(format!("source.streams lists {stream:?} twice"));
            }
        }
        if self.streams.len() > usize::from(u16::MAX) {
            p.push("source.streams has too many streams".into());
        }
        if self.group.is_empty() {
            p.push("source.group must not be empty".into());
        }
        if !(1..=100_000).contains(&self.batch_size) {
            p.push(format!(
                "source.batch_size ({}) must be between 1 and 100000",
                self.batch_size
            ));
        }
        if self.queue_batches == 0 {
            p.push("source.queue_batches must be at least 1".into());
        }
        if self.max_inflight_bytes < 1 << 16 {
            p.push(format!(
                "source.max_inflight_bytes ({}) must be at least {}",
                self.max_inflight_bytes,
                1 << 16
            ));
        }
        p
    }
}

fn list_or_comma_separated<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    Ok(match ListOrString::deserialize(d)? {
        ListOrString::List(v) => v,
        ListOrString::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    })
}
