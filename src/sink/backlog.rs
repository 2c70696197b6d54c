//! The backlog of the output streams (win-back, control group, other task kinds, dead
//! letters): what their consumers have not read yet, and what `XADD MAXLEN ~` trimmed before
//! they did. The lag monitor ([`crate::source::lag::monitor`]) samples it every
//! `source.lag_poll_ms`.
//!
//! What Redis shows (7.0 or later): `XINFO STREAM` gives a stream's length, its first entry,
//! its last generated ID and `entries-added` (every entry ever added), so entries-added minus
//! length is what was trimmed or deleted. `XINFO GROUPS` gives each consumer group's last
//! delivered ID, `entries-read` and `lag` (entries not yet delivered to it). Without a
//! consumer group nothing tells what a consumer has read: such a stream shows only its length.
//!
//! A group whose last delivered entry is older than the stream's first has lost entries: they
//! were removed before it read them. How many: the entries removed minus the entries the group
//! read (exact while removal is from the head, which is what trimming does; a lower bound
//! otherwise). churnd counts the growth of that figure while it sees a group behind, so the
//! counter rises as tasks are lost and not before. Some Redis versions (7.0 among them) keep
//! counting entries trimmed unread in `lag`, and leave `entries-read` short, even after the
//! group has caught up: the unread backlog is therefore capped at the stream's length and is
//! 0 once the group has had the last entry, and losses are counted only while a group is
//! behind.

use std::collections::HashMap;

use redis::{RedisError, Value};

use crate::connection::RedisConn;
use crate::event::EntryId;
use crate::metrics::OutputMetrics;
use crate::source::lag::{rows, Row};

use super::SinkSettings;

/// Consumer groups reported per stream, at most: group names become label values, and they
/// are chosen by the streams' consumers, not by churnd.
pub(crate) const MAX_GROUPS: usize = 16;

/// An output stream and its approximate length cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputStream {
    pub name: String,
    pub max_len: u64,
}

impl SinkSettings {
    /// Every output stream with its cap (the larger one when two settings name one stream).
    pub(crate) fn output_caps(&self) -> Vec<OutputStream> {
        let mut caps: Vec<OutputStream> = Vec::new();
        let mut add = |name: &str, max_len: u64| match caps.iter_mut().find(|s| s.name == name) {
            Some(s) => s.max_len = s.max_len.max(max_len),
            None => caps.push(OutputStream {
                name: name.to_string(),
                max_len,
            }),
        };
        add(&self.task_stream, self.task_max_len);
        add(&self.control_stream, self.task_max_len);
        for kind in crate::decide::TaskKind::CARE {
            add(self.tasks.stream(kind), self.tasks.max_len.get());
        }
        add(&self.tasks.control_stream, self.tasks.max_len.get());
        add(&self.outcome_stream, self.outcome_max_len);
        add(&self.dead_letter_stream, self.dead_letter_max_len);
        caps.sort_by(|a, b| a.name.cmp(&b.name));
        caps
    }
}

/// A stream, from `XINFO STREAM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct StreamInfo {
    pub length: i64,
    pub first: Option<EntryId>,
    pub last_generated: Option<EntryId>,
    /// Every entry ever added (Redis 7.0 or later).
    pub entries_added: Option<i64>,
}

impl StreamInfo {
    /// Reads an `XINFO STREAM` reply.
    pub fn parse(reply: &Value) -> Option<Self> {
        let row = Row::new(reply)?;
        let id = |name: &str| row.text(name).and_then(|t| EntryId::parse(t.as_bytes()));
        let first = match row.get("first-entry") {
            Some(Value::Array(entry)) => match entry.first() {
                Some(Value::BulkString(id)) => EntryId::parse(id),
                _ => None,
            },
            _ => None,
        };
        Some(Self {
            length: row.int("length")?,
            first,
            last_generated: id("last-generated-id"),
            entries_added: row.int("entries-added"),
        })
    }

    /// Entries trimmed or deleted since the stream was created.
    pub fn removed(&self) -> Option<i64> {
        self.entries_added.map(|added| (added - self.length).max(0))
    }
}

/// A consumer group of an output stream, from `XINFO GROUPS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupState {
    pub name: String,
    pub last_delivered: Option<EntryId>,
    /// `None` when Redis cannot tell.
    pub entries_read: Option<i64>,
    pub lag: Option<i64>,
}

impl GroupState {
    /// Reads every group of an `XINFO GROUPS` reply.
    pub(crate) fn parse_all(reply: &Value) -> Vec<Self> {
        rows(reply)
            .filter_map(|row| {
                Some(Self {
                    name: row.text("name")?,
                    last_delivered: row
                        .text("last-delivered-id")
                        .and_then(|id| EntryId::parse(id.as_bytes())),
                    entries_read: row.int("entries-read"),
                    lag: row.int("lag"),
                })
            })
            .collect()
    }

    /// Whether entries the group has not read were removed: its last delivered entry is
    /// older than the stream's first (or, the stream emptied, than its last).
    pub(crate) fn is_behind(&self, stream: &StreamInfo) -> bool {
        let delivered = self.last_delivered.unwrap_or_default();
        match (stream.first, stream.last_generated) {
            (Some(first), _) => delivered < first,
            (None, Some(last)) => delivered < last,
            (None, None) => false,
        }
    }

    /// Entries in the stream not delivered to the group yet: all of them when the group is
    /// behind, none when it has had the last one, else Redis's lag (at most the length: some
    /// Redis versions keep entries trimmed unread in it).
    pub fn unread(&self, stream: &StreamInfo) -> Option<i64> {
        let delivered = self.last_delivered.unwrap_or_default();
        if self.is_behind(stream) {
            Some(stream.length)
        } else if stream.last_generated.is_some_and(|last| delivered >= last) {
            Some(0)
        } else {
            self.lag.map(|lag| lag.clamp(0, stream.length))
        }
    }

    /// Entries removed minus entries the group read: while positive, at least that many
    /// were removed before the group read them.
    pub(crate) fn removed_beyond_read(&self, stream: &StreamInfo) -> Option<i64> {
        Some(stream.removed()? - self.entries_read?)
    }
}

/// How many entries to count as lost since the previous sample: the growth of
/// [`GroupState::removed_beyond_read`] while the group is behind. `previous` is that figure
/// at the previous sample, `None` before the first.
pub(crate) fn newly_lost(previous: Option<i64>, now: Option<i64>, behind: bool) -> u64 {
    match (previous, now) {
        (Some(previous), Some(now)) if behind => (now - previous.max(0)).max(0) as u64,
        _ => 0,
    }
}

/// Samples the output streams into their gauges, and counts losses between samples.
pub struct Backlog {
    streams: Vec<OutputStream>,
    /// Per stream and group, [`GroupState::removed_beyond_read`] at the last sample.
    seen: HashMap<(String, String), Option<i64>>,
    metrics: OutputMetrics,
}

impl Backlog {
    pub fn new(streams: Vec<OutputStream>, metrics: OutputMetrics) -> Self {
        for s in &streams {
            metrics
                .max_length
                .with_label_values(&[&s.name])
                .set(i64::try_from(s.max_len).unwrap_or(i64::MAX));
            metrics.length.with_label_values(&[&s.name]).set(0);
        }
        Self {
            streams,
            seen: HashMap::new(),
            metrics,
        }
    }

    /// One sample of every output stream. A stream that does not exist yet has length 0
    /// and no groups.
    pub async fn sample(&mut self, c: &mut RedisConn) -> Result<(), RedisError> {
        for i in 0..self.streams.len() {
            let name = self.streams[i].name.clone();
            let stream: Result<Value, _> = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&name)
                .query_async(c)
                .await;
            let (info, groups) = match stream {
                Ok(reply) => {
                    let groups: Value = redis::cmd("XINFO")
                        .arg("GROUPS")
                        .arg(&name)
                        .query_async(c)
                        .await?;
                    (StreamInfo::parse(&reply), GroupState::parse_all(&groups))
                }
                // No such key (yet): nothing in it, nothing removed.
                Err(e) if e.code() == Some("ERR") => {
                    let empty = StreamInfo {
                        entries_added: Some(0),
                        ..StreamInfo::default()
                    };
                    (Some(empty), Vec::new())
                }
                // A key of another type: the sink reports it (readiness), nothing to sample.
                Err(e) if e.code() == Some("WRONGTYPE") => continue,
                Err(e) => return Err(e),
            };
            if let Some(info) = info {
                self.record(&name, &info, &groups);
            }
        }
        Ok(())
    }

    fn record(&mut self, stream: &str, info: &StreamInfo, groups: &[GroupState]) {
        let metrics = &self.metrics;
        metrics.length.with_label_values(&[stream]).set(info.length);
        if let Some(removed) = info.removed() {
            metrics.removed.with_label_values(&[stream]).set(removed);
        }
        let groups = &groups[..groups.len().min(MAX_GROUPS)];
        for g in groups {
            let labels = [stream, g.name.as_str()];
            match g.unread(info) {
                Some(unread) => metrics.group_unread.with_label_values(&labels).set(unread),
                None => {
                    let _ = metrics.group_unread.remove_label_values(&labels);
                }
            }
            let now = g.removed_beyond_read(info);
            let key = (stream.to_string(), g.name.clone());
            let previous = self.seen.insert(key, now).flatten();
            let lost = metrics.group_trimmed_unread.with_label_values(&labels);
            lost.inc_by(newly_lost(previous, now, g.is_behind(info)));
        }
        // Groups gone since the last sample take their series with them.
        let gone: Vec<(String, String)> = self
            .seen
            .keys()
            .filter(|(s, g)| s == stream && !groups.iter().any(|x| &x.name == g))
            .cloned()
            .collect();
        for key in gone {
            self.seen.remove(&key);
            let labels = [key.0.as_str(), key.1.as_str()];
            let _ = metrics.group_unread.remove_label_values(&labels);
            let _ = metrics.group_trimmed_unread.remove_label_values(&labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn id(ms: u64) -> Option<EntryId> {
        Some(EntryId { ms, seq: 0 })
    }

    #[test]
    fn reads_xinfo_stream() {
        let reply = Value::Array(vec![
            bulk("length"),
            Value::Int(110),
            bulk("last-generated-id"),
            bulk("400-0"),
            bulk("max-deleted-entry-id"),
            bulk("0-0"),
            bulk("entries-added"),
            Value::Int(410),
            bulk("first-entry"),
            Value::Array(vec![
                bulk("291-0"),
                Value::Array(vec![bulk("a"), bulk("1")]),
            ]),
            bulk("last-entry"),
            Value::Array(vec![
                bulk("400-0"),
                Value::Array(vec![bulk("a"), bulk("2")]),
            ]),
        ]);
        let info = StreamInfo::parse(&reply).unwrap();
        assert_eq!(
            info,
            StreamInfo {
                length: 110,
                first: id(291),
                last_generated: id(400),
                entries_added: Some(410),
            }
        );
        assert_eq!(info.removed(), Some(300));
        // An empty stream has no first entry; Redis 6.2 has no entries-added.
        let empty = Value::Map(vec![
            (bulk("length"), Value::Int(0)),
            (bulk("last-generated-id"), bulk("0-0")),
            (bulk("first-entry"), Value::Nil),
        ]);
        let info = StreamInfo::parse(&empty).unwrap();
        assert_eq!((info.first, info.removed()), (None, None));
    }

    #[test]
    fn reads_every_group() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk("crm"),
            bulk("last-delivered-id"),
            bulk("7-0"),
            bulk("entries-read"),
            Value::Nil,
            bulk("lag"),
            Value::Int(3),
        ])]);
        assert_eq!(
            GroupState::parse_all(&reply),
            vec![GroupState {
                name: "crm".into(),
                last_delivered: id(7),
                entries_read: None,
                lag: Some(3),
            }]
        );
    }

    /// A stream capped near 100 that got 410 entries; a group that read 3 of them.
    fn trimmed() -> (StreamInfo, GroupState) {
        let stream = StreamInfo {
            length: 110,
            first: id(301),
            last_generated: id(410),
            entries_added: Some(410),
        };
        let group = GroupState {
            name: "crm".into(),
            last_delivered: id(3),
            entries_read: Some(3),
            lag: Some(407),
        };
        (stream, group)
    }

    #[test]
    fn a_group_behind_the_first_entry_has_lost_what_was_removed_beyond_its_reads() {
        let (stream, group) = trimmed();
        assert!(group.is_behind(&stream));
        // Redis 7.0 says lag 407; only 110 are there to read.
        assert_eq!(group.unread(&stream), Some(110));
        assert_eq!(group.removed_beyond_read(&stream), Some(297));
    }

    #[test]
    fn a_group_past_the_first_entry_reads_redis_lag_capped_at_the_length() {
        let (stream, mut group) = trimmed();
        // Read everything left: Redis 7.0 counts 113 read, so its lag stays 297.
        group.last_delivered = id(410);
        group.entries_read = Some(113);
        group.lag = Some(297);
        assert!(!group.is_behind(&stream));
        assert_eq!(group.unread(&stream), Some(0));
        // Halfway through what is left.
        group.last_delivered = id(355);
        group.entries_read = Some(58);
        group.lag = Some(352);
        assert_eq!(group.unread(&stream), Some(110));
        group.lag = Some(55);
        assert_eq!(group.unread(&stream), Some(55));
        group.lag = None;
        assert_eq!(group.unread(&stream), None);
    }

    #[test]
    fn a_group_that_read_exactly_what_was_trimmed_lost_nothing() {
        let stream = StreamInfo {
            length: 5,
            first: id(6),
            last_generated: id(10),
            entries_added: Some(10),
        };
        let group = GroupState {
            name: "crm".into(),
            last_delivered: id(5),
            entries_read: Some(5),
            lag: Some(5),
        };
        assert!(group.is_behind(&stream));
        assert_eq!(group.removed_beyond_read(&stream), Some(0));
        assert_eq!(newly_lost(Some(-3), Some(0), true), 0);
    }

    #[test]
    fn losses_count_their_growth_while_the_group_is_behind() {
        // The first sample only sets the baseline.
        assert_eq!(newly_lost(None, Some(297), true), 0);
        // Fell behind since the last sample: everything beyond its reads is new.
        assert_eq!(newly_lost(Some(-110), Some(40), true), 40);
        // Stays behind: the growth.
        assert_eq!(newly_lost(Some(40), Some(90), true), 50);
        // Reads faster than the trimming: nothing new.
        assert_eq!(newly_lost(Some(90), Some(80), true), 0);
        // Not behind (Redis 7.0's short entries-read moves with node-sized trims): nothing.
        assert_eq!(newly_lost(Some(100), Some(200), false), 0);
        // Redis cannot tell what the group read.
        assert_eq!(newly_lost(Some(5), None, true), 0);
    }

    #[test]
    fn an_emptied_stream_leaves_a_group_that_had_not_read_its_last_entry_behind() {
        let stream = StreamInfo {
            length: 0,
            first: None,
            last_generated: id(10),
            entries_added: Some(10),
        };
        let mut group = GroupState {
            name: "crm".into(),
            last_delivered: id(8),
            entries_read: Some(8),
            lag: Some(2),
        };
        assert!(group.is_behind(&stream));
        assert_eq!(group.unread(&stream), Some(0));
        assert_eq!(group.removed_beyond_read(&stream), Some(2));
        group.last_delivered = id(10);
        assert!(!group.is_behind(&stream));
    }
}
