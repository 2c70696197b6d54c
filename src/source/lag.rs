//! Consumer-group introspection: lag and pending counts, polled from `XINFO GROUPS` into
//! gauges (what operators and alerts watch to know whether churnd keeps up), and the other
//! consumers of the group (`XINFO CONSUMERS`). The same poll samples the output streams'
//! backlog ([`Backlog`]): whether their consumers keep up.

use prometheus::IntGaugeVec;
use redis::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::SourceSettings;
use crate::connection::{Connector, RedisConn};
use crate::event::EntryId;
use crate::http::LocalPartitions;
use crate::metrics::SourceMetrics;
use crate::partition::PartitionCount;
use crate::sink::backlog::Backlog;

/// Lag and pending entries of one group on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupInfo {
    /// `None` when Redis cannot tell (e.g. after entries were deleted mid-stream).
    pub lag: Option<i64>,
    pub pending: i64,
    /// The last entry delivered to any consumer of the group.
    pub last_delivered: Option<EntryId>,
    /// Redis's count of the entries up to `last_delivered` (`entries-read`); `None` when
    /// Redis cannot tell.
    pub entries_read: Option<i64>,
}

/// Another consumer of the group, from `XINFO CONSUMERS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    pub name: String,
    pub pending: i64,
    pub idle_ms: i64,
}

/// One row of an `XINFO` reply: a flat name/value array (RESP2) or a map (RESP3).
pub(crate) struct Row<'a>(Vec<(&'a Value, &'a Value)>);

impl<'a> Row<'a> {
    pub(crate) fn new(v: &'a Value) -> Option<Self> {
        match v {
            Value::Array(flat) => {
                Some(Self(flat.chunks_exact(2).map(|p| (&p[0], &p[1])).collect()))
            }
            Value::Map(pairs) => Some(Self(pairs.iter().map(|(k, v)| (k, v)).collect())),
            _ => None,
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.iter().find_map(|(k, v)| match k {
            Value::BulkString(b) if b == name.as_bytes() => Some(*v),
            Value::SimpleString(s) if s == name => Some(*v),
            _ => None,
        })
    }

    pub(crate) fn text(&self, name: &str) -> Option<String> {
        match self.get(name)? {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        }
    }

    pub(crate) fn int(&self, name: &str) -> Option<i64> {
        match self.get(name)? {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// The rows of an `XINFO GROUPS` or `XINFO CONSUMERS` reply.
pub(crate) fn rows(reply: &Value) -> impl Iterator<Item = Row<'_>> {
    let rows = match reply {
        Value::Array(rows) => rows.as_slice(),
        _ => &[],
    };
    rows.iter().filter_map(Row::new)
}

/// Reads the group's row from an `XINFO GROUPS` reply.
pub fn group_info(reply: &Value, group: &str) -> Option<GroupInfo> {
    rows(reply)
        .find(|row| row.text("name").as_deref() == Some(group))
        .map(|row| GroupInfo {
            lag: row.int("lag"),
            pending: row.int("pending").unwrap_or(0),
            last_delivered: row
                .text("last-delivered-id")
                .and_then(|id| EntryId::parse(id.as_bytes())),
            entries_read: row.int("entries-read"),
        })
}

/// The consumers other than `me` in an `XINFO CONSUMERS` reply.
pub fn other_consumers(reply: &Value, me: &str) -> Vec<ConsumerInfo> {
    rows(reply)
        .filter_map(|row| {
            let name = row.text("name")?;
            (name != me).then(|| ConsumerInfo {
                name,
                pending: row.int("pending").unwrap_or(0),
                idle_ms: row.int("idle").unwrap_or(0),
            })
        })
        .collect()
}

/// `churnd_partition_lag`: the lag of each partition's streams summed, reported only for
/// the partitions this process holds.
pub struct PartitionLag {
    pub count: PartitionCount,
    pub gauge: IntGaugeVec,
    /// What this process holds now: every partition for one that owns them all; a
    /// replica's, as its generations publish them.
    pub held: watch::Receiver<LocalPartitions>,
}

impl PartitionLag {
    /// Which of the monitor's streams (stream `i` is partition `i mod P`) belong to the
    /// partitions held now. Under leases every replica lists every stream, but only the
    /// owner polls and reports one: otherwise each stream's lag would be reported once per
    /// replica, its alert would fire once per replica, and a sum over replicas would count
    /// it N times.
    fn held_streams(&self, streams: usize) -> Vec<bool> {
        let held = self.held.borrow().held();
        let count = usize::from(self.count.get());
        (0..streams)
            .map(|i| u16::try_from(i % count).is_ok_and(|p| held.contains(&p)))
            .collect()
    }

    /// Sets the gauge from the lag of each stream of the monitor's list (stream `i` is
    /// partition `i mod P`; `None`: unknown), for the partitions held, and removes the
    /// others' series.
    fn publish(&self, lags: &[Option<i64>]) {
        let held = self.held.borrow().held();
        let count = usize::from(self.count.get());
        for p in 0..self.count.get() {
            let label = p.to_string();
            let lag = lags
                .iter()
                .skip(usize::from(p))
                .step_by(count)
                .try_fold(0i64, |sum, lag| Some(sum.saturating_add((*lag)?)));
            match lag.filter(|_| held.contains(&p)) {
                Some(lag) => self.gauge.with_label_values(&[&label]).set(lag),
                None => {
                    let _ = self.gauge.remove_label_values(&[&label]);
                }
            }
        }
    }
}

/// Polls every `lag_poll_ms` until shutdown: the input streams' group, then the output
/// streams' `backlog`.
pub async fn monitor(
    settings: SourceSettings,
    mut backlog: Backlog,
    mut connector: Connector,
    (metrics, partitions): (SourceMetrics, PartitionLag),
    shutdown: CancellationToken,
) {
    let mut conn: Option<RedisConn> = None;
    let committed = super::commit::committed_group(&settings.group);
    let mut interval = tokio::time::interval(settings.lag_poll.get());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connector.connect(&shutdown).await {
                Some(c) => conn.insert(c),
                None => return,
            },
        };
        let mut healthy = true;
        let mut lags = vec![None; settings.streams.len()];
        let held = partitions.held_streams(settings.streams.len());
        for (i, stream) in settings.streams.iter().enumerate() {
            // Another replica's partition: it reports the stream, and no lag of it is used.
            if !held[i] {
                metrics.forget_stream(stream);
                continue;
            }
            let reply: Result<Value, _> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(stream)
                .query_async(c)
                .await;
            match reply {
                Ok(reply) => {
                    if let Some(info) = group_info(&reply, &settings.group) {
                        lags[i] = info.lag;
                        if let Some(lag) = info.lag {
                            metrics.consumer_lag.with_label_values(&[stream]).set(lag);
                        }
                        metrics
                            .consumer_pending
                            .with_label_values(&[stream])
                            .set(info.pending);
                    }
                    // With positions committed with snapshots: the entries a restart would
                    // replay (unknown: no value, rather than a stale one).
                    match group_info(&reply, &committed).and_then(|g| g.lag) {
                        Some(lag) => metrics.committed_lag.with_label_values(&[stream]).set(lag),
                        None => {
                            let _ = metrics.committed_lag.remove_label_values(&[stream]);
                        }
                    }
                }
                Err(e) if e.code() == Some("ERR") => lags[i] = Some(0), // no such stream yet
                Err(e) => {
                    if connector.failed(&e) {
                        conn = None;
                    }
                    healthy = false;
                    break;
                }
            }
        }
        if healthy {
            partitions.publish(&lags);
        }
        if let (true, Some(c)) = (healthy, conn.as_mut()) {
            if let Err(e) = backlog.sample(c).await {
                if connector.failed(&e) {
                    conn = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn partition_lag_sums_a_partitions_streams_and_shows_only_those_held() {
        let gauge =
            prometheus::IntGaugeVec::new(prometheus::Opts::new("lag", "lag"), &["partition"])
                .unwrap();
        let (tx, held) = watch::channel(LocalPartitions {
            serving: [0].into(),
            moving: [2].into(),
        });
        let lag = PartitionLag {
            count: PartitionCount::new(3).unwrap(),
            gauge: gauge.clone(),
            held,
        };
        // Two bases of three partitions: streams 0..3 then 3..6.
        lag.publish(&[Some(1), Some(2), Some(3), Some(10), Some(20), None]);
        assert_eq!(gauge.with_label_values(&["0"]).get(), 11);
        // Partition 2's second stream is unknown: no value rather than a wrong one.
        let series = |g: &IntGaugeVec| {
            use prometheus::core::Collector;
            g.collect()[0].get_metric().len()
        };
        assert_eq!(series(&gauge), 1);
        tx.send_replace(LocalPartitions {
            serving: [1].into(),
            moving: Default::default(),
        });
        lag.publish(&[Some(1), Some(2), Some(3), Some(10), Some(20), Some(30)]);
        assert_eq!(series(&gauge), 1, "partition 0's series went with it");
        assert_eq!(gauge.with_label_values(&["1"]).get(), 22);
    }

    #[test]
    fn only_the_streams_of_the_partitions_held_are_reported() {
        let gauge =
            prometheus::IntGaugeVec::new(prometheus::Opts::new("lag", "lag"), &["partition"])
                .unwrap();
        let (_tx, held) = watch::channel(LocalPartitions {
            serving: [1].into(),
            moving: [2].into(),
        });
        let lag = PartitionLag {
            count: PartitionCount::new(3).unwrap(),
            gauge,
            held,
        };
        // Two bases of three partitions: streams 0..3 then 3..6.
        assert_eq!(lag.held_streams(6), [false, true, true, false, true, true]);
    }

    #[test]
    fn finds_the_group_row() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk("name"),
                bulk("other"),
                bulk("pending"),
                Value::Int(9),
            ]),
            Value::Array(vec![
                bulk("name"),
                bulk("churnd"),
                bulk("pending"),
                Value::Int(3),
                bulk("lag"),
                Value::Int(42),
                bulk("last-delivered-id"),
                bulk("1700000000000-7"),
            ]),
        ]);
        let mut with_count = reply.clone();
        if let Value::Array(rows) = &mut with_count {
            if let Value::Array(row) = &mut rows[1] {
                row.extend([bulk("entries-read"), Value::Int(1_234)]);
            }
        }
        assert_eq!(
            group_info(&with_count, "churnd").and_then(|g| g.entries_read),
            Some(1_234)
        );
        assert_eq!(
            group_info(&reply, "churnd"),
            Some(GroupInfo {
                lag: Some(42),
                pending: 3,
                last_delivered: Some(EntryId {
                    ms: 1_700_000_000_000,
                    seq: 7
                }),
                entries_read: None,
            })
        );
        assert_eq!(group_info(&reply, "nope"), None);
    }

    #[test]
    fn lists_the_other_consumers() {
        let consumer = |name: &str, pending: i64| {
            Value::Map(vec![
                (bulk("name"), bulk(name)),
                (bulk("pending"), Value::Int(pending)),
                (bulk("idle"), Value::Int(1500)),
            ])
        };
        let reply = Value::Array(vec![consumer("me", 1), consumer("old-pod", 7)]);
        assert_eq!(
            other_consumers(&reply, "me"),
            vec![ConsumerInfo {
                name: "old-pod".into(),
                pending: 7,
                idle_ms: 1500
            }]
        );
    }

    #[test]
    fn an_unknown_lag_is_none() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk("g"),
            bulk("pending"),
            Value::Int(0),
            bulk("lag"),
            Value::Nil,
        ])]);
        assert_eq!(
            group_info(&reply, "g"),
            Some(GroupInfo {
                lag: None,
                pending: 0,
                last_delivered: None,
                entries_read: None,
            })
        );
    }
}
