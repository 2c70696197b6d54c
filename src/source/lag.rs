//! Consumer-group lag and pending counts, polled from `XINFO GROUPS` into gauges: what
//! operators and alerts watch to know whether churnd keeps up.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio_util::sync::CancellationToken;

use crate::config::SourceSettings;
use crate::connection::Connector;
use crate::metrics::Metrics;

/// Lag and pending entries of one group on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupInfo {
    /// `None` when Redis cannot tell (e.g. after entries were deleted mid-stream).
    pub lag: Option<i64>,
    pub pending: i64,
}

/// Reads the group's row from an `XINFO GROUPS` reply.
pub fn group_info(reply: &Value, group: &str) -> Option<GroupInfo> {
    let Value::Array(groups) = reply else {
        return None;
    };
    groups.iter().find_map(|g| {
        let fields: Vec<(&Value, &Value)> = match g {
            Value::Array(flat) => flat.chunks_exact(2).map(|p| (&p[0], &p[1])).collect(),
            Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
            _ => return None,
        };
        let get = |name: &str| {
            fields.iter().find_map(|(k, v)| match k {
                Value::BulkString(b) if b == name.as_bytes() => Some(*v),
                Value::SimpleString(s) if s == name => Some(*v),
                _ => None,
            })
        };
        let is_ours = match get("name")? {
            Value::BulkString(b) => b == group.as_bytes(),
            Value::SimpleString(s) => s == group,
            _ => false,
        };
        if !is_ours {
            return None;
        }
        let int = |v: Option<&Value>| match v {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        };
        Some(GroupInfo {
            lag: int(get("lag")),
            pending: int(get("pending")).unwrap_or(0),
        })
    })
}

/// Polls every `lag_poll_ms` until shutdown.
pub async fn monitor(
    settings: SourceSettings,
    mut connector: Connector,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut interval = tokio::time::interval(Duration::from_millis(settings.lag_poll_ms));
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
        for stream in &settings.streams {
            let reply: Result<Value, _> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(stream)
                .query_async(c)
                .await;
            match reply {
                Ok(reply) => {
                    if let Some(info) = group_info(&reply, &settings.group) {
                        if let Some(lag) = info.lag {
                            metrics.consumer_lag.with_label_values(&[stream]).set(lag);
                        }
                        metrics
                            .consumer_pending
                            .with_label_values(&[stream])
                            .set(info.pending);
                    }
                }
                Err(e) if e.code() == Some("ERR") => {} // no such stream yet
                Err(e) => {
                    if connector.failed(&e) {
                        conn = None;
                    }
                    break;
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
            ]),
        ]);
        assert_eq!(
            group_info(&reply, "churnd"),
            Some(GroupInfo {
                lag: Some(42),
                pending: 3
            })
        );
        assert_eq!(group_info(&reply, "nope"), None);
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
                pending: 0
            })
        );
    }
}
