//! Where reading starts in an input stream that customer state holds no position for.
//!
//! churnd acknowledges an entry once its effects are written, before a snapshot holds its
//! effect on customer state; a crash is recovered by moving the consumer group back to the
//! newest snapshot's position in each stream and replaying what follows. That works only if
//! the snapshot has a position for every stream read since: a new deployment (no snapshot
//! yet), a stream added to `source.streams`, or a snapshot of a churnd before this rule (it
//! left out streams nothing had been applied from) have none, and the entries read and
//! acknowledged before the next snapshot would be lost with the process. So before reading
//! such a stream the daemon resolves where reading starts ([`resolve`]) and writes a snapshot
//! that holds it: from then on every stream always has a durable position.
//!
//! The start ([`start_position`]): with `source.start_from = "beginning"`, the stream's
//! beginning (0-0): with no position kept, nothing read from it was applied durably, so
//! everything Redis holds is replayed. With `"end"`, the group's last delivered entry (for a
//! group created now at `$`: the stream's end), or just before its oldest pending entry if
//! that is older (read by a run that crashed before applying it durably).

use redis::{RedisError, Value};

use super::batch::StreamIdx;
use super::lag::group_info;
use crate::config::{SourceSettings, StartFrom};
use crate::connection::RedisConn;
use crate::event::EntryId;

/// What the consumer group of one stream says of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct GroupView {
    /// The last entry delivered to any of its consumers (0-0: none).
    pub last_delivered: EntryId,
    /// The oldest entry delivered and not acknowledged, on any consumer.
    pub oldest_pending: Option<EntryId>,
}

/// Where reading starts in a stream with no known position: entries up to the returned ID
/// are not read.
pub(crate) fn start_position(from: StartFrom, group: &GroupView) -> EntryId {
    match from {
        StartFrom::Beginning => EntryId::default(),
        StartFrom::End => match group.oldest_pending {
            Some(oldest) => oldest.before().min(group.last_delivered),
            None => group.last_delivered,
        },
    }
}

/// Where reading starts in each stream `known` has no position for (by index into
/// `settings.streams`), creating the consumer groups that are missing.
pub async fn resolve(
    c: &mut RedisConn,
    settings: &SourceSettings,
    known: &[Option<EntryId>],
) -> Result<Vec<(StreamIdx, EntryId)>, RedisError> {
    let mut starts = Vec::new();
    for (i, stream) in settings.streams.iter().enumerate() {
        if known.get(i).copied().flatten().is_some() {
            continue;
        }
        let create_at = match settings.start_from {
            StartFrom::Beginning => "0",
            StartFrom::End => "$",
        };
        create_group(c, stream, &settings.group, create_at).await?;
        let group = group_view(c, stream, &settings.group).await?;
        let start = start_position(settings.start_from, &group);
        tracing::info!(
            stream,
            group = %settings.group,
            start_from = ?settings.start_from,
            %start,
            last_delivered = %group.last_delivered,
            oldest_pending = ?group.oldest_pending.map(|id| id.to_string()),
            "no position kept for this stream: reading starts after {start}"
        );
        starts.push((i as StreamIdx, start));
    }
    Ok(starts)
}

/// Creates `group` on `stream` (and the stream) at `start` unless it exists; whether it was
/// created.
pub async fn create_group(
    c: &mut RedisConn,
    stream: &str,
    group: &str,
    start: &str,
) -> Result<bool, RedisError> {
    let created: Result<(), RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg(start)
        .arg("MKSTREAM")
        .query_async(c)
        .await;
    match created {
        Ok(()) => {
            tracing::info!(stream, group, start, "created consumer group");
            Ok(true)
        }
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(false),
        Err(e) => Err(e),
    }
}

async fn group_view(c: &mut RedisConn, stream: &str, group: &str) -> Result<GroupView, RedisError> {
    let groups: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(c)
        .await?;
    let info = group_info(&groups, group).ok_or_else(|| {
        RedisError::from((
            redis::ErrorKind::Parse,
            "XINFO GROUPS does not list the group just created",
            format!("{stream} {group}"),
        ))
    })?;
    // Summary form: [count, oldest ID, newest ID, consumers]; the IDs are nil when none.
    let summary: Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(c)
        .await?;
    Ok(GroupView {
        last_delivered: info.last_delivered.unwrap_or_default(),
        oldest_pending: oldest_pending(&summary),
    })
}

/// The oldest pending ID of an `XPENDING <stream> <group>` summary reply.
fn oldest_pending(summary: &Value) -> Option<EntryId> {
    match summary {
        Value::Array(items) => match items.get(1)? {
            Value::BulkString(b) => EntryId::parse(b),
            Value::SimpleString(s) => EntryId::parse(s.as_bytes()),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64, seq: u64) -> EntryId {
        EntryId { ms, seq }
    }

    #[test]
    fn from_the_beginning_everything_redis_holds_is_read() {
        let group = GroupView {
            last_delivered: id(50, 0),
            oldest_pending: Some(id(40, 2)),
        };
        assert_eq!(
            start_position(StartFrom::Beginning, &group),
            EntryId::default()
        );
    }

    #[test]
    fn from_the_end_reading_goes_on_after_the_last_delivered_entry() {
        let group = GroupView {
            last_delivered: id(50, 3),
            oldest_pending: None,
        };
        assert_eq!(start_position(StartFrom::End, &group), id(50, 3));
        assert_eq!(
            start_position(StartFrom::End, &GroupView::default()),
            EntryId::default(),
            "an empty stream's group starts at its beginning"
        );
    }

    #[test]
    fn from_the_end_pending_entries_are_read_again() {
        let group = GroupView {
            last_delivered: id(50, 3),
            oldest_pending: Some(id(40, 0)),
        };
        assert_eq!(start_position(StartFrom::End, &group), id(39, u64::MAX));
        let group = GroupView {
            last_delivered: id(50, 3),
            oldest_pending: Some(id(40, 5)),
        };
        assert_eq!(start_position(StartFrom::End, &group), id(40, 4));
    }

    #[test]
    fn the_entry_before_an_id() {
        assert_eq!(id(7, 3).before(), id(7, 2));
        assert_eq!(id(7, 0).before(), id(6, u64::MAX));
        assert_eq!(id(0, 0).before(), id(0, 0));
        assert_eq!(id(0, 1).before(), id(0, 0));
    }

    #[test]
    fn reads_the_oldest_pending_entry_of_a_summary() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let summary = Value::Array(vec![
            Value::Int(2),
            bulk("10-1"),
            bulk("12-0"),
            Value::Array(vec![]),
        ]);
        assert_eq!(oldest_pending(&summary), Some(id(10, 1)));
        let none = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert_eq!(oldest_pending(&none), None);
    }
}
