//! `[source]`: the input streams, the consumer group and how they are read.

use std::collections::HashSet;
use std::num::NonZeroUsize;

use config::Value;
use serde::Serialize;

use super::read::{not_a, read_choices, Choice, Fields, Read, Reader};
use super::units::{millis_or_off, Interval, OrOff};
use super::{Problem, Section};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// A new consumer group reads the stream's whole retained history.
    Beginning,
    /// A new consumer group reads only entries added after it is created.
    End,
}

/// How entries read are settled with Redis (`source.acknowledge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Acknowledge {
    /// The default. With state kept (`state.dir`), no acknowledgement per entry: reads are
    /// `NOACK`, positions are committed with snapshots, and the group `<group>:written`
    /// tells how far effects are written; without kept state, `per_entry`.
    Snapshots,
    /// Every entry acknowledged (`XACK`) once its effects are written, state kept or not:
    /// the group's pending count tells what is not written yet.
    PerEntry,
}

impl Choice for Acknowledge {
    const ALL: &'static [Self] = &[Self::Snapshots, Self::PerEntry];
    fn name(self) -> &'static str {
        match self {
            Self::Snapshots => "snapshots",
            Self::PerEntry => "per_entry",
        }
    }
}
read_choices!(Acknowledge);

/// Entries per read (`source.batch_size`): 1 to [`BatchSize::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct BatchSize(NonZeroUsize);

impl BatchSize {
    /// The largest: a read of more entries holds up everything behind it.
    pub const MAX: usize = 100_000;

    /// `n` entries, if 1 to [`Self::MAX`].
    pub const fn new(n: usize) -> Option<Self> {
        match NonZeroUsize::new(n) {
            Some(n) if n.get() <= Self::MAX => Some(Self(n)),
            _ => None,
        }
    }

    pub const fn get(self) -> usize {
        self.0.get()
    }
}

impl std::fmt::Display for BatchSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Read for BatchSize {
    fn read(value: Value, key: &str, r: &mut Reader) -> Option<Self> {
        let n = value.clone().try_deserialize::<usize>().ok();
        let n = n.and_then(Self::new);
        if n.is_none() {
            let expected = format!("a whole number from 1 to {}", Self::MAX);
            not_a(&value, key, r, &expected);
        }
        n
    }
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
    pub batch_size: BatchSize,
    /// How long a read waits for new entries (BLOCK).
    #[serde(rename = "block_ms")]
    pub block: Interval,
    pub start_from: StartFrom,
    /// Batches buffered between reading and processing: the backpressure bound.
    pub queue_batches: NonZeroUsize,
    /// How often consumer-group lag and pending counts are polled for metrics, and an idle
    /// sink checks its connection.
    #[serde(rename = "lag_poll_ms")]
    pub lag_poll: Interval,
    /// Entries pending this long on another consumer of the group (one that is gone) are
    /// claimed by this one; `None` (0 in the key) turns claiming off.
    #[serde(rename = "claim_idle_ms", serialize_with = "millis_or_off")]
    pub claim_idle: Option<Interval>,
    /// Bytes of entries read and not yet applied, at most: reading waits for room, and a
    /// read asks for fewer entries when they are large (see `source::budget`).
    pub max_inflight_bytes: u64,
    /// Whether positions are committed with snapshots or each entry is acknowledged.
    pub acknowledge: Acknowledge,
}

impl Default for SourceSettings {
    fn default() -> Self {
        Self {
            streams: vec!["churn:events".into()],
            group: "churnd".into(),
            consumer: String::new(),
            batch_size: BatchSize::new(1_000).expect("a batch size"),
            block: Interval::from_millis(1_000),
            start_from: StartFrom::Beginning,
            queue_batches: NonZeroUsize::new(4).expect("not zero"),
            lag_poll: Interval::from_millis(5_000),
            claim_idle: Some(Interval::from_millis(60_000)),
            max_inflight_bytes: 64 << 20,
            acknowledge: Acknowledge::Snapshots,
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
            block: f.get("block_ms", d.block),
            start_from: f.get("start_from", d.start_from),
            queue_batches: f.get("queue_batches", d.queue_batches),
            lag_poll: f.get("lag_poll_ms", d.lag_poll),
            claim_idle: f.get("claim_idle_ms", OrOff(d.claim_idle)).0,
            max_inflight_bytes: f.get("max_inflight_bytes", d.max_inflight_bytes),
            acknowledge: f.get("acknowledge", d.acknowledge),
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
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

        if self.max_inflight_bytes < 1 << 16 {
            p.push(Problem::new(
                "source.max_inflight_bytes",
                format!("({}) must be at least {}", self.max_inflight_bytes, 1 << 16),
            ));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_with(change: impl FnOnce(&mut SourceSettings)) -> Vec<String> {
        let mut s = SourceSettings::default();
        change(&mut s);
        s.problems().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_streams_and_the_group_are_named() {
        assert_eq!(
            problems_with(|s| s.streams.clear()),
            ["source.streams must name at least one stream"]
        );
        assert_eq!(
            problems_with(|s| s.streams = vec!["a".into(), "".into(), "a".into()]),
            [
                "source.streams contains an empty name",
                "source.streams lists \"a\" twice"
            ]
        );
        assert_eq!(
            problems_with(|s| s.group.clear()),
            ["source.group must not be empty"]
        );
        assert_eq!(
            problems_with(|s| s.max_inflight_bytes = 1_000),
            ["source.max_inflight_bytes (1000) must be at least 65536"]
        );
        assert!(SourceSettings::default().problems().is_empty());
    }

    #[test]
    fn a_batch_size_is_1_to_100000() {
        assert_eq!(BatchSize::new(0), None);
        assert_eq!(BatchSize::new(1).map(BatchSize::get), Some(1));
        assert_eq!(BatchSize::new(100_000).map(BatchSize::get), Some(100_000));
        assert_eq!(BatchSize::new(100_001), None);
    }
}
