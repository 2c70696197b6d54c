//! `[source]`: the input streams, the consumer group and how they are read.

use std::collections::HashSet;

use serde::Serialize;

use super::read::{read_choices, Choice, Fields};
use super::{Problem, Section};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// A new consumer group reads the stream's whole retained history.
    Beginning,
    /// A new consumer group reads only entries added after it is created.
    End,
}

impl Choice for StartFrom {
    const ALL: &'static [Self] = &[Self::Beginning, Self::End];
    fn name(self) -> &'static str {
        match self {
            Self::Beginning => "beginning",
            Self::End => "end",
        }
    }
}
read_choices!(StartFrom);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceSettings {
    /// Input streams.
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

impl Section for SourceSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            streams: f.get("streams", d.streams),
            group: f.get("group", d.group),
            consumer: f.get("consumer", d.consumer),
            batch_size: f.get("batch_size", d.batch_size),
            block_ms: f.get("block_ms", d.block_ms),
            start_from: f.get("start_from", d.start_from),
            queue_batches: f.get("queue_batches", d.queue_batches),
            lag_poll_ms: f.get("lag_poll_ms", d.lag_poll_ms),
            claim_idle_ms: f.get("claim_idle_ms", d.claim_idle_ms),
            max_inflight_bytes: f.get("max_inflight_bytes", d.max_inflight_bytes),
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        for (key, v) in [
            ("source.block_ms", self.block_ms),
            ("source.lag_poll_ms", self.lag_poll_ms),
        ] {
            if v == 0 {
                p.push(Problem::new(key, "must be at least 1"));
            }
        }
        if self.streams.is_empty() {
            p.push(Problem::new(
                "source.streams",
                "must name at least one stream",
            ));
        }
        let mut seen = HashSet::new();
        for stream in &self.streams {
            if stream.is_empty() {
                p.push(Problem::new("source.streams", "contains an empty name"));
            } else if !seen.insert(stream) {
                p.push(Problem::new(
                    "source.streams",
                    format!("lists {stream:?} twice"),
                ));
            }
        }
        if self.streams.len() > usize::from(u16::MAX) {
            p.push(Problem::new(
                "source.streams",
                format!("has too many streams (at most {})", u16::MAX),
            ));
        }
        if self.group.is_empty() {
            p.push(Problem::new("source.group", "must not be empty"));
        }
        if !(1..=100_000).contains(&self.batch_size) {
            p.push(Problem::new(
                "source.batch_size",
                format!("({}) must be between 1 and 100000", self.batch_size),
            ));
        }
        if self.queue_batches == 0 {
            p.push(Problem::new("source.queue_batches", "must be at least 1"));
        }
        if self.max_inflight_bytes < 1 << 16 {
            p.push(Problem::new(
                "source.max_inflight_bytes",
                format!("({}) must be at least {}", self.max_inflight_bytes, 1 << 16),
            ));
        }
        p
    }
}
