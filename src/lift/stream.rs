//! Reading the outcome stream: the one part of the lift report that does I/O.
//!
//! `churnd report lift` reads the stream once in pages of XRANGE ([`read_all`]); the daemon
//! tails it with XREAD ([`read_after`], `src/daemon/lift.rs`). Either way only the
//! aggregates are kept: memory does not grow with the stream.

use redis::{RedisError, Value};

use super::report::{self, Report};
use super::{Aggregates, RecordError, Window};
use crate::connection::{Connector, RedisConn};
use crate::event::EntryId;

/// Entries per XRANGE or XREAD.
pub const PAGE: usize = 1000;

/// One entry of an XRANGE or XREAD reply, borrowing from it.
#[derive(Debug, PartialEq)]
pub struct Entry<'a> {
    pub id: EntryId,
    pub fields: Vec<(&'a [u8], &'a [u8])>,
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// The entries of an XRANGE reply (an array of `[id, [field, value, …]]`). Entries whose
/// shape is not that are left out (Redis does not send them).
pub fn range_entries(reply: &Value) -> Vec<Entry<'_>> {
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let id = EntryId::parse(bytes(parts.first()?)?)?;
            let fields = match parts.get(1)? {
                Value::Array(flat) => flat
                    .chunks_exact(2)
                    .filter_map(|p| Some((bytes(&p[0])?, bytes(&p[1])?)))
                    .collect(),
                Value::Map(pairs) => pairs
                    .iter()
                    .filter_map(|(k, v)| Some((bytes(k)?, bytes(v)?)))
                    .collect(),
                // An entry deleted while pending shows no fields: nothing to count.
                _ => Vec::new(),
            };
            Some(Entry { id, fields })
        })
        .collect()
}

/// The entries of an XREAD reply for one stream (RESP2: `[[name, entries]]`; RESP3: a map
/// of name to entries); none when the read timed out (nil).
pub fn read_entries(reply: &Value) -> Vec<Entry<'_>> {
    match reply {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(pair) => pair.get(1),
                _ => None,
            })
            .flat_map(range_entries)
            .collect(),
        Value::Map(streams) => streams
            .iter()
            .flat_map(|(_, entries)| range_entries(entries))
            .collect(),
        _ => Vec::new(),
    }
}

/// Counts `entries` into `aggregates`; returns the last entry's ID and calls `skipped` with
/// each entry not used and why.
pub fn add_entries(
    entries: &[Entry<'_>],
    aggregates: &mut Aggregates,
    mut skipped: impl FnMut(EntryId, &RecordError),
) -> Option<EntryId> {
    for entry in entries {
        if let Err(e) = aggregates.add_entry(entry.fields.iter().copied()) {
            skipped(entry.id, &e);
        }
    }
    entries.last().map(|e| e.id)
}

/// Reads the whole stream (what is in it now) into `aggregates`, [`PAGE`] entries at a
/// time. A stream that does not exist is empty.
pub async fn read_all<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    stream: &str,
    aggregates: &mut Aggregates,
    mut skipped: impl FnMut(EntryId, &RecordError),
) -> Result<(), RedisError> {
    let mut start = "-".to_string();
    loop {
        let reply: Value = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await?;
        let entries = range_entries(&reply);
        let last = add_entries(&entries, aggregates, &mut skipped);
        match last {
            // "(" makes the start exclusive (Redis 6.2 and later).
            Some(id) if entries.len() == PAGE => start = format!("({id}"),
            _ => return Ok(()),
        }
    }
}

/// Why `churnd report lift` has no report.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot connect to Redis: {0}")]
    Connect(String),
    #[error("cannot read the outcome stream {stream}: {error}")]
    Read { stream: String, error: String },
}

/// The report of the outcomes in `stream` (closed in `window`), read once over one
/// connection (one attempt: a command reports rather than waits); `skipped` hears of each
/// entry not counted.
pub async fn report_from(
    connector: &Connector,
    stream: &str,
    window: Window,
    skipped: impl FnMut(EntryId, &RecordError),
) -> Result<Report, ReadError> {
    let mut conn = connector.connect_once().await.map_err(ReadError::Connect)?;
    let mut aggregates = Aggregates::new(window);
    read_all(&mut conn, stream, &mut aggregates, skipped)
        .await
        .map_err(|e| ReadError::Read {
            stream: stream.into(),
            error: connector.describe(&e),
        })?;
    Ok(report::report(&aggregates, stream))
}

/// XREAD of up to [`PAGE`] entries after `after`, waiting up to `block_ms` for some (not
/// at all with `None`).
pub async fn read_after(
    conn: &mut RedisConn,
    stream: &str,
    after: EntryId,
    block_ms: Option<u64>,
) -> Result<Value, RedisError> {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT").arg(PAGE);
    if let Some(block_ms) = block_ms {
        cmd.arg("BLOCK").arg(block_ms);
    }
    cmd.arg("STREAMS")
        .arg(stream)
        .arg(after.to_string())
        .query_async(conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(k, v)| [bulk(k), bulk(v)])
                    .collect(),
            ),
        ])
    }

    #[test]
    fn xrange_and_xread_replies_give_their_entries() {
        let range = Value::Array(vec![
            entry("1-0", &[("a", "1")]),
            entry("2-5", &[("b", "2"), ("c", "3")]),
        ]);
        let entries = range_entries(&range);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].id, EntryId { ms: 2, seq: 5 });
        assert_eq!(
            entries[1].fields,
            vec![(&b"b"[..], &b"2"[..]), (&b"c"[..], &b"3"[..])]
        );
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("s"), range.clone()])]);
        assert_eq!(read_entries(&resp2), entries);
        let resp3 = Value::Map(vec![(bulk("s"), range.clone())]);
        assert_eq!(read_entries(&resp3), entries);
        assert!(read_entries(&Value::Nil).is_empty());
    }

    #[test]
    fn entries_are_counted_and_the_bad_ones_reported() {
        let reply = Value::Array(vec![entry("7-1", &[("schema_version", "3")])]);
        let mut aggregates = Aggregates::default();
        let mut bad = Vec::new();
        let last = add_entries(&range_entries(&reply), &mut aggregates, |id, e| {
            bad.push(format!("{id}: {e}"))
        });
        assert_eq!(last, Some(EntryId { ms: 7, seq: 1 }));
        assert_eq!(aggregates.read, 1);
        assert_eq!(bad.len(), 1);
        assert!(bad[0].starts_with("7-1: schema_version \"3\""), "{bad:?}");
    }
}
