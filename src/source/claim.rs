//! Entries stranded on consumers that are gone (a replica renamed by a reschedule, a crashed
//! process under another name) are claimed by this consumer once idle for
//! `source.claim_idle_ms`, and the emptied consumers are removed from the group.
//!
//! Only other consumers' entries are claimed (never this consumer's own, which may still be
//! in the pipeline): they were never delivered here, so the engine applies them even when
//! they are older than what it has applied (features do not depend on arrival order).

use std::collections::HashSet;

use redis::{RedisError, Value};

use super::batch::{parse_entries, Entry, StreamIdx};
use super::lag::other_consumers;
use crate::config::{Interval, SourceSettings};
use crate::connection::RedisConn;
use crate::event::EntryId;

/// What one round claimed from one consumer, for the log.
#[derive(Debug)]
pub(crate) struct ClaimReport {
    pub stream: String,
    pub consumer: String,
    pub entries: usize,
    pub removed: bool,
}

/// One round over every stream, claiming up to `batch_size` entries per consumer.
pub(crate) async fn claim_stranded(
    c: &mut RedisConn,
    settings: &SourceSettings,
    min_idle: Interval,
) -> Result<(Vec<Entry>, Vec<ClaimReport>), RedisError> {
    let min_idle_ms = min_idle.as_millis();
    let mut claimed = Vec::new();
    let mut reports = Vec::new();
    for (i, stream) in settings.streams.iter().enumerate() {
        let consumers: Value = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(stream)
            .arg(&settings.group)
            .query_async(c)
            .await?;
        for other in other_consumers(&consumers, &settings.consumer) {
            if u64::try_from(other.idle_ms).unwrap_or(0) < min_idle_ms {
                continue;
            }
            let entries = if other.pending > 0 {
                claim_from(c, settings, i as StreamIdx, &other.name, min_idle_ms).await?
            } else {
                Vec::new()
            };
            // A consumer idle this long with nothing pending is gone (a later round removes
            // one emptied by this round: DELCONSUMER discards whatever is still pending).
            let removed = other.pending == 0 && {
                redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(stream)
                    .arg(&settings.group)
                    .arg(&other.name)
                    .query_async::<i64>(c)
                    .await?;
                true
            };
            reports.push(ClaimReport {
                stream: stream.clone(),
                consumer: other.name,
                entries: entries.len(),
                removed,
            });
            claimed.extend(entries);
        }
    }
    Ok((claimed, reports))
}

/// Claims `consumer`'s entries idle for `min_idle_ms`, oldest first. Entries deleted from the
/// stream meanwhile come back as entries without fields, to be dead-lettered.
async fn claim_from(
    c: &mut RedisConn,
    settings: &SourceSettings,
    stream: StreamIdx,
    consumer: &str,
    min_idle_ms: u64,
) -> Result<Vec<Entry>, RedisError> {
    let name = &settings.streams[usize::from(stream)];
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(name)
        .arg(&settings.group)
        .arg("IDLE")
        .arg(min_idle_ms)
        .arg("-")
        .arg("+")
        .arg(settings.batch_size.get())
        .arg(consumer)
        .query_async(c)
        .await?;
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = pending.iter().map(|(id, ..)| id.as_str()).collect();
    let reply: Value = redis::cmd("XCLAIM")
        .arg(name)
        .arg(&settings.group)
        .arg(&settings.consumer)
        .arg(min_idle_ms)
        .arg(&ids)
        .query_async(c)
        .await?;
    let mut entries = parse_entries(reply, stream)
        .map_err(|e| RedisError::from((redis::ErrorKind::Parse, "XCLAIM reply", e.to_string())))?;
    // Redis leaves deleted entries out of the reply (and drops them from the pending list);
    // keep a trace of them. One that still exists was not claimed: its consumer is alive.
    let returned: HashSet<EntryId> = entries.iter().map(|e| e.id).collect();
    for id in ids.iter().filter_map(|id| EntryId::parse(id.as_bytes())) {
        if returned.contains(&id) {
            continue;
        }
        let exists: Vec<Value> = redis::cmd("XRANGE")
            .arg(name)
            .arg(id.to_string())
            .arg(id.to_string())
            .query_async(c)
            .await?;
        if exists.is_empty() {
            entries.push(Entry {
                stream,
                id,
                values: None,
            });
        }
    }
    entries.sort_by_key(|e| e.id);
    Ok(entries)
}

/// Entries of `stream` pending in the group from `from` on (on any consumer) that were
/// deleted from the stream: a replay from `from` cannot deliver them again, so they would
/// stay pending forever. Redis drops them from the pending list as it reports them (XAUTOCLAIM,
/// Redis 7); the others become this consumer's, as the replay would make them anyway.
pub(crate) async fn deleted_while_pending(
    c: &mut RedisConn,
    settings: &SourceSettings,
    stream: StreamIdx,
    from: EntryId,
) -> Result<Vec<Entry>, RedisError> {
    let name = &settings.streams[usize::from(stream)];
    let mut deleted = Vec::new();
    let mut cursor = from.to_string();
    loop {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(name)
            .arg(&settings.group)
            .arg(&settings.consumer)
            .arg(0)
            .arg(&cursor)
            .arg("COUNT")
            .arg(1_000)
            .arg("JUSTID")
            .query_async(c)
            .await?;
        let (next, ids) = autoclaim_deleted(&reply).ok_or_else(|| {
            RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected XAUTOCLAIM reply",
                format!("{reply:?}"),
            ))
        })?;
        deleted.extend(ids.into_iter().map(|id| Entry {
            stream,
            id,
            values: None,
        }));
        if next == EntryId::default() {
            return Ok(deleted);
        }
        cursor = next.to_string();
    }
}

/// The next cursor and the deleted IDs of an XAUTOCLAIM reply (`[cursor, claimed, deleted]`;
/// Redis before 7 gives no deleted list).
fn autoclaim_deleted(reply: &Value) -> Option<(EntryId, Vec<EntryId>)> {
    let id = |v: &Value| match v {
        Value::BulkString(b) => EntryId::parse(b),
        Value::SimpleString(s) => EntryId::parse(s.as_bytes()),
        _ => None,
    };
    let Value::Array(parts) = reply else {
        return None;
    };
    let next = id(parts.first()?)?;
    let deleted = match parts.get(2) {
        Some(Value::Array(ids)) => ids.iter().filter_map(id).collect(),
        _ => Vec::new(),
    };
    Some((next, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_deleted_ids_of_an_autoclaim_reply() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            bulk("7-0"),
            Value::Array(vec![bulk("5-0")]),
            Value::Array(vec![bulk("6-1"), bulk("6-2")]),
        ]);
        let (next, deleted) = autoclaim_deleted(&reply).unwrap();
        assert_eq!(next, EntryId { ms: 7, seq: 0 });
        assert_eq!(
            deleted,
            vec![EntryId { ms: 6, seq: 1 }, EntryId { ms: 6, seq: 2 }]
        );
        let older = Value::Array(vec![bulk("0-0"), Value::Array(vec![])]);
        assert_eq!(
            autoclaim_deleted(&older),
            Some((EntryId::default(), vec![]))
        );
        assert_eq!(autoclaim_deleted(&Value::Nil), None);
    }
}
