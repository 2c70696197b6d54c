//! `[partitions]`: how many partitions the input streams are split into (see
//! [`crate::partition`]). Fixed at install: a snapshot records the count, and a start with
//! another is refused.

use config::Value;
use serde::Serialize;

use super::read::{not_a, Fields, Read, Reader};
use super::{Problem, Section, Settings, SourceSettings};
use crate::partition::{PartitionCount, Partitioning};

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PartitionSettings {
    /// Partitions of every input stream; 1 keeps each stream whole, under its own name.
    pub count: PartitionCount,
}

impl Read for PartitionCount {
    fn read(value: Value, key: &str, r: &mut Reader) -> Option<Self> {
        let n = value.clone().try_deserialize::<u16>().ok();
        let n = n.and_then(Self::new);
        if n.is_none() {
            let expected = format!("a whole number from 1 to {}", Self::MAX);
            not_a(&value, key, r, &expected);
        }
        n
    }
}

impl Section for PartitionSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            count: f.get("count", d.count),
        }
    }
}

/// Problems of `source.streams` under partitions: a stream name holding a brace would put a
/// hash tag of its own before the partition's, and every partition in one slot.
pub(super) fn problems(s: &Settings) -> Vec<Problem> {
    if !s.partitions.count.is_partitioned() {
        return Vec::new();
    }
    s.source
        .streams
        .iter()
        .filter(|stream| stream.contains(['{', '}']))
        .map(|stream| {
            Problem::new(
                "source.streams",
                format!(
                    "({stream:?}) must not hold braces with partitions.count > 1: the \
                     partition streams are named {stream}:{{0}} … and the braces are their \
                     Redis Cluster hash tag"
                ),
            )
        })
        .collect()
}

impl Settings {
    /// The streams read: `source.streams`, each split into its partition streams when
    /// `partitions.count` > 1. Positions, acknowledgements and lag are per stream of this
    /// list.
    pub fn input_streams(&self) -> Vec<String> {
        self.partitions.count.streams(&self.source.streams)
    }

    /// `[source]` with [`Self::input_streams`] as its streams: what the source, the lag
    /// monitor and recovery read.
    pub fn partitioned_source(&self) -> SourceSettings {
        SourceSettings {
            streams: self.input_streams(),
            ..self.source.clone()
        }
    }

    /// What the engine needs to dead-letter events in the wrong partition stream.
    pub fn partitioning(&self) -> Partitioning {
        Partitioning {
            count: self.partitions.count,
            bases: self.source.streams.clone(),
            own: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_with_braces_are_refused_only_under_partitions() {
        let mut s = Settings::default();
        s.source.streams = vec!["{shop}:events".into()];
        assert!(problems(&s).is_empty());
        s.partitions.count = PartitionCount::new(4).unwrap();
        assert_eq!(
            problems(&s)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["source.streams (\"{shop}:events\") must not hold braces with partitions.count > 1: \
              the partition streams are named {shop}:events:{0} … and the braces are their Redis \
              Cluster hash tag"]
        );
    }

    #[test]
    fn the_source_reads_every_partition_stream() {
        let mut s = Settings::default();
        assert_eq!(s.partitioned_source(), s.source);
        s.partitions.count = PartitionCount::new(2).unwrap();
        assert_eq!(
            s.partitioned_source().streams,
            ["churn:events:{0}", "churn:events:{1}"]
        );
        assert_eq!(s.partitioning().bases, ["churn:events"]);
    }
}
