//! Telling the consumer group where reading stands, when reading is by position.
//!
//! With positions committed with snapshots the source reads with plain `XREAD`
//! ([`super::machine`]), which never moves the group; yet the group's `XINFO GROUPS` row is
//! what operators and tools watch: its `lag` (`churnd_consumer_group_lag`,
//! `churnd_partition_lag`), `entries-read`, and `last-delivered-id` (the "drained" checks).
//! So the committer ([`super::commit::run`]) moves the group to the last entry read of each
//! stream (`XGROUP SETID`) every [`TELL_EVERY`] while reading moves, before each snapshot's
//! commit, and once more after the source stopped: a shutdown or a hand-over leaves it at
//! the last entry read.
//!
//! Redis counts the lag of a group moved by hand only when told its count of entries
//! (`ENTRIESREAD`, Redis 7.0 and later). [`count_at`] takes that count from the stream where
//! Redis itself knows it (at its last entry, or before its first) or from an earlier count
//! (the group's own, as last told) and the entries this process read since. Without one
//! (Redis 6.2, or entries deleted with `XDEL` in between) the group is moved without a
//! count, and Redis shows its lag as unknown rather than wrong.

use std::time::Duration;

use redis::{RedisError, Value};

use super::commit::ReadCounts;
use super::lag::{group_info, Row};
use crate::config::SourceSettings;
use crate::connection::RedisConn;
use crate::event::EntryId;

/// How often the group is told where reading stands while it moves: often enough that the
/// lag and the "drained" checks follow reading closely, at most a few commands a second.
pub(crate) const TELL_EVERY: Duration = Duration::from_millis(200);

/// How often the group is told even where reading has not moved: another process (a
/// replica that was paused past its lease, when it resumes) may have moved it meanwhile.
const VERIFY_EVERY: Duration = Duration::from_secs(5);

/// What `XINFO STREAM` says of a stream's entry counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct StreamCounts {
    /// `entries-added`: every entry ever added; `None` before Redis 7.0.
    pub added: Option<u64>,
    /// Entries in the stream now.
    pub length: u64,
    /// `last-generated-id`.
    pub last: EntryId,
    /// The first entry's ID (`recorded-first-entry-id`, or the first entry's).
    pub first: Option<EntryId>,
    /// `max-deleted-entry-id` (0-0: none deleted).
    pub max_deleted: EntryId,
}

impl StreamCounts {
    /// From an `XINFO STREAM` reply.
    pub fn parse(reply: &Value) -> Option<Self> {
        let row = Row::new(reply)?;
        let id = |name: &str| row.text(name).and_then(|t| EntryId::parse(t.as_bytes()));
        let first_entry = match row.get("first-entry") {
            Some(Value::Array(entry)) => match entry.first() {
                Some(Value::BulkString(b)) => EntryId::parse(b),
                Some(Value::SimpleString(s)) => EntryId::parse(s.as_bytes()),
                _ => None,
            },
            _ => None,
        };
        Some(Self {
            added: row.int("entries-added").and_then(|n| u64::try_from(n).ok()),
            length: row.int("length").and_then(|n| u64::try_from(n).ok())?,
            last: id("last-generated-id")?,
            first: id("recorded-first-entry-id")
                .filter(|f| *f != EntryId::default())
                .or(first_entry),
            max_deleted: id("max-deleted-entry-id").unwrap_or_default(),
        })
    }

    /// Redis's count of the entries up to `id` where the stream alone tells it (as Redis
    /// estimates a group's count): at the last entry, or at or before the first one when no
    /// entry was deleted after it.
    pub fn known_at(&self, id: EntryId) -> Option<u64> {
        let added = self.added?;
        if added == 0 {
            return Some(0);
        }
        if id == self.last || (self.length == 0 && id < self.last) {
            return Some(added);
        }
        if id > self.last {
            return None;
        }
        let first = self.first?;
        let unfragmented = self.max_deleted == EntryId::default() || self.max_deleted < first;
        let before_first = added.checked_sub(self.length)?;
        match id.cmp(&first) {
            std::cmp::Ordering::Less if unfragmented => Some(before_first),
            std::cmp::Ordering::Equal if unfragmented => Some(before_first + 1),
            _ => None,
        }
    }

    /// No entry after `id` was deleted: entries read after it are all the entries there are.
    fn intact_after(&self, id: EntryId) -> bool {
        self.max_deleted == EntryId::default() || self.max_deleted <= id
    }
}

/// Redis's count of the entries up to `target` (`ENTRIESREAD`): from the stream itself
/// where it tells ([`StreamCounts::known_at`]), else from an anchor (an entry and its
/// count) and the entries read between the two (`between(older, newer)`), provided no entry
/// after the older one was deleted. `None`: unknown, or a Redis before 7.0.
pub(crate) fn count_at(
    target: EntryId,
    stream: &StreamCounts,
    anchors: &[(EntryId, u64)],
    between: impl Fn(EntryId, EntryId) -> Option<u64>,
) -> Option<u64> {
    stream.added?;
    if let Some(n) = stream.known_at(target) {
        return Some(n);
    }
    anchors.iter().find_map(|&(at, n)| {
        if !stream.intact_after(at.min(target)) {
            return None;
        }
        if at <= target {
            n.checked_add(between(at, target)?)
        } else {
            n.checked_sub(between(target, at)?)
        }
    })
}

/// Where the group of each stream was last told reading stands.
#[derive(Debug)]
pub(crate) struct Teller {
    told: Vec<Option<EntryId>>,
    /// When every stream was last looked at, moved or not.
    verified: tokio::time::Instant,
}

impl Teller {
    /// Nothing told yet: the group stands where reading starts (the source moves it there
    /// before its first read), so only a read past it is told.
    pub fn new(counts: &ReadCounts, streams: usize) -> Self {
        Self {
            told: (0..streams).map(|i| counts.last(i)).collect(),
            verified: tokio::time::Instant::now(),
        }
    }

    /// Moves the group of each stream whose reading moved since it was last told to the
    /// last entry read; every [`VERIFY_EVERY`], of each stream whose group stands elsewhere.
    /// A stream Redis answers for with an error (deleted under churnd) is tried again next
    /// time; a failed connection is returned.
    pub async fn tell(
        &mut self,
        c: &mut RedisConn,
        settings: &SourceSettings,
        counts: &ReadCounts,
    ) -> Result<(), RedisError> {
        let verify = self.verified.elapsed() >= VERIFY_EVERY;
        if verify {
            self.verified = tokio::time::Instant::now();
        }
        for (i, stream) in settings.streams.iter().enumerate() {
            let Some(read) = counts.last(i) else { continue };
            if !verify && self.told.get(i).copied().flatten() == Some(read) {
                continue;
            }
            match tell_one(c, &settings.group, (i, stream), read, counts).await {
                Ok(()) => {}
                Err(e) if is_refusal(&e) => {
                    tracing::debug!(stream, error = %e, "cannot tell the group where reading stands; trying again");
                    continue;
                }
                Err(e) => return Err(e),
            }
            if let Some(told) = self.told.get_mut(i) {
                *told = Some(read);
            }
        }
        Ok(())
    }
}

/// An answer of Redis to the command itself (not a lost connection).
fn is_refusal(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
        || e.code().is_some()
}

/// Moves `stream`'s `group` to `read`, with Redis's count of the entries up to it when it
/// can be known.
async fn tell_one(
    c: &mut RedisConn,
    group: &str,
    (index, stream): (usize, &str),
    read: EntryId,
    counts: &ReadCounts,
) -> Result<(), RedisError> {
    let (groups, info): (Value, Value) = redis::pipe()
        .cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query_async(c)
        .await?;
    let main = group_info(&groups, group);
    if main.and_then(|g| g.last_delivered) == Some(read) {
        return Ok(());
    }
    let entries_read = StreamCounts::parse(&info).and_then(|stream| {
        let mut anchors = Vec::with_capacity(2);
        if let Some(g) = main {
            if let (Some(at), Some(n)) = (g.last_delivered, g.entries_read) {
                anchors.extend(u64::try_from(n).ok().map(|n| (at, n)));
            }
        }
        if let Some((at, _)) = counts.oldest(index) {
            anchors.extend(stream.known_at(at).map(|n| (at, n)));
        }
        count_at(read, &stream, &anchors, |from, to| {
            counts.between(index, from, to)
        })
    });
    set_group(c, stream, group, read, entries_read).await
}

/// Moves `stream`'s `group` to `at` (creating it there if missing), with `entries_read`
/// when known; a count Redis refuses (entries deleted or the stream trimmed in between, so
/// it no longer fits) is dropped and the position set without it.
pub(crate) async fn set_group(
    c: &mut RedisConn,
    stream: &str,
    group: &str,
    at: EntryId,
    entries_read: Option<u64>,
) -> Result<(), RedisError> {
    let set = |subcommand: &str, entries_read: Option<u64>| {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg(subcommand)
            .arg(stream)
            .arg(group)
            .arg(at.to_string());
        if let Some(n) = entries_read {
            cmd.arg("ENTRIESREAD").arg(n);
        }
        cmd
    };
    let mut result = set("SETID", entries_read).query_async::<()>(c).await;
    if matches!(&result, Err(e) if e.code() == Some("NOGROUP")) {
        result = set("CREATE", entries_read).query_async::<()>(c).await;
    }
    match result {
        Err(e)
            if entries_read.is_some()
                && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
        {
            tracing::debug!(stream, group, error = %e, "the entries count was refused; setting the position without it");
            set("SETID", None).query_async::<()>(c).await
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> EntryId {
        EntryId { ms, seq: 0 }
    }

    /// A stream of entries 1..=10 never trimmed, nothing deleted.
    fn ten() -> StreamCounts {
        StreamCounts {
            added: Some(10),
            length: 10,
            last: id(10),
            first: Some(id(1)),
            max_deleted: EntryId::default(),
        }
    }

    /// Entries read at 2, 5 and 7 (cumulative 0, 3, 5): as [`ReadCounts`] has them.
    fn between(from: EntryId, to: EntryId) -> Option<u64> {
        let at = |x: EntryId| match x.ms {
            2 => Some(0u64),
            5 => Some(3),
            7 => Some(5),
            _ => None,
        };
        at(to)?.checked_sub(at(from)?)
    }

    #[test]
    fn the_stream_tells_the_count_at_its_last_entry_and_before_its_first() {
        let s = ten();
        assert_eq!(s.known_at(id(10)), Some(10));
        assert_eq!(s.known_at(id(0)), Some(0));
        assert_eq!(s.known_at(id(1)), Some(1));
        assert_eq!(s.known_at(id(5)), None, "mid-stream: only the reader knows");
        assert_eq!(s.known_at(id(11)), None, "a future entry");
        let trimmed = StreamCounts {
            length: 4,
            first: Some(id(7)),
            ..ten()
        };
        assert_eq!(trimmed.known_at(id(3)), Some(6), "trimmed away: counted");
        assert_eq!(trimmed.known_at(id(7)), Some(7));
        let deleted = StreamCounts {
            length: 9,
            max_deleted: id(4),
            ..ten()
        };
        assert_eq!(deleted.known_at(id(0)), None, "a hole after it");
        assert_eq!(deleted.known_at(id(10)), Some(10));
        let empty = StreamCounts {
            length: 0,
            first: None,
            ..ten()
        };
        assert_eq!(empty.known_at(id(3)), Some(10));
        let new = StreamCounts {
            added: Some(0),
            ..StreamCounts::default()
        };
        assert_eq!(new.known_at(id(0)), Some(0));
    }

    #[test]
    fn the_count_mid_stream_follows_from_an_anchor_and_the_entries_read_since() {
        let s = ten();
        // The group was told 2 entries at 2; 3 more read up to 5, 2 more up to 7.
        assert_eq!(count_at(id(5), &s, &[(id(2), 2)], between), Some(5));
        assert_eq!(count_at(id(7), &s, &[(id(2), 2)], between), Some(7));
        // Backwards, from a count told further on (a snapshot's position behind reading).
        assert_eq!(count_at(id(5), &s, &[(id(7), 7)], between), Some(5));
        // An anchor not among the reads is passed over for the next one.
        assert_eq!(
            count_at(id(7), &s, &[(id(3), 3), (id(5), 5)], between),
            Some(7)
        );
        assert_eq!(count_at(id(7), &s, &[(id(3), 3)], between), None);
        assert_eq!(count_at(id(10), &s, &[], between), Some(10), "the end");
    }

    #[test]
    fn no_count_after_a_deletion_past_the_anchor_nor_before_redis_7() {
        let deleted = StreamCounts {
            length: 9,
            max_deleted: id(4),
            ..ten()
        };
        assert_eq!(count_at(id(7), &deleted, &[(id(2), 2)], between), None);
        assert_eq!(
            count_at(id(7), &deleted, &[(id(5), 5)], between),
            Some(7),
            "deleted before the anchor: counted in it"
        );
        let old = StreamCounts {
            added: None,
            ..ten()
        };
        assert_eq!(count_at(id(10), &old, &[(id(2), 2)], between), None);
    }

    #[test]
    fn reads_the_counts_of_xinfo_stream() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            bulk("length"),
            Value::Int(4),
            bulk("last-generated-id"),
            bulk("10-0"),
            bulk("max-deleted-entry-id"),
            bulk("0-0"),
            bulk("entries-added"),
            Value::Int(10),
            bulk("recorded-first-entry-id"),
            bulk("7-0"),
            bulk("first-entry"),
            Value::Array(vec![bulk("7-0"), Value::Array(vec![])]),
        ]);
        assert_eq!(
            StreamCounts::parse(&reply),
            Some(StreamCounts {
                added: Some(10),
                length: 4,
                last: id(10),
                first: Some(id(7)),
                max_deleted: EntryId::default(),
            })
        );
        // Redis 6.2: no counts; the first entry's ID stands for the first.
        let old = Value::Array(vec![
            bulk("length"),
            Value::Int(4),
            bulk("last-generated-id"),
            bulk("10-0"),
            bulk("first-entry"),
            Value::Array(vec![bulk("7-0"), Value::Array(vec![])]),
        ]);
        let parsed = StreamCounts::parse(&old).unwrap();
        assert_eq!((parsed.added, parsed.first), (None, Some(id(7))));
    }
}
