//! A batch of stream entries as read by XREADGROUP or XREAD, walked out of the raw reply.
//!
//! Entries keep the reply's own field values (no copy, no map per entry); [`Entry::fields`]
//! pairs them up for the event parser.

use redis::Value;

use crate::event::EntryId;

/// Position of a stream in `source.streams`.
pub(crate) type StreamIdx = u16;

#[derive(Debug)]
pub struct Entry {
    pub stream: StreamIdx,
    pub id: EntryId,
    /// Names and values alternating, each a bulk string; `None` when the entry was deleted
    /// from the stream while pending (Redis then returns only its ID).
    pub values: Option<Vec<Value>>,
}

impl Entry {
    /// Bytes of its field names and values (what it takes in memory, near enough).
    pub fn bytes(&self) -> usize {
        self.values
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|v| bytes(v).len())
            .sum()
    }

    /// `(name, value)` pairs.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.values
            .as_deref()
            .unwrap_or_default()
            .chunks_exact(2)
            .map(|pair| (bytes(&pair[0]), bytes(&pair[1])))
    }
}

fn bytes(v: &Value) -> &[u8] {
    match v {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.as_bytes(),
        _ => &[],
    }
}

/// Entries read in one round trip, in stream order per stream.
#[derive(Debug, Default)]
pub struct Batch {
    pub entries: Vec<Entry>,
    /// The first read since start that reached the end of every stream: recovery (replay
    /// and own pending entries) is complete once this batch is applied.
    pub caught_up: bool,
    /// The read that brought it found every stream's end (a read of new entries that brought
    /// fewer than asked of each): everything written so far has been read. Under the wall
    /// clock this ends catching up on a backlog (see `engine::catch_up`).
    pub at_end: bool,
    /// Taken over from consumers that are gone: never delivered to this one, so applied even
    /// if older than entries applied before (see `source::claim`).
    pub claimed: bool,
    /// The batch's bytes held from the in-flight budget until it is dropped (applied).
    pub held: Option<super::budget::Held>,
}

impl Batch {
    pub fn new(entries: Vec<Entry>) -> Self {
        Self {
            entries,
            ..Self::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unexpected stream read reply: {0}")]
pub struct ReplyError(String);

/// Walks an XREADGROUP or XREAD reply (RESP2 array or RESP3 map; nil when BLOCK timed out).
pub fn parse_reply(reply: Value, streams: &[String]) -> Result<Vec<Entry>, ReplyError> {
    let per_stream: Vec<(Value, Value)> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs,
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let entries = kv.pop().unwrap_or(Value::Nil);
                    let name = kv.pop().unwrap_or(Value::Nil);
                    Ok((name, entries))
                }
                other => Err(ReplyError(format!("stream item {other:?}"))),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(ReplyError(format!("top level {other:?}"))),
    };
    let mut out = Vec::new();
    for (name, entries) in per_stream {
        let name = bytes(&name);
        let stream = streams
            .iter()
            .position(|s| s.as_bytes() == name)
            .ok_or_else(|| {
                ReplyError(format!(
                    "unknown stream {:?}",
                    String::from_utf8_lossy(name)
                ))
            })? as StreamIdx;
        let entries = match entries {
            Value::Array(e) => e,
            Value::Nil => continue,
            other => return Err(ReplyError(format!("entries {other:?}"))),
        };
        out.reserve(entries.len());
        for entry in entries {
            out.push(parse_entry(entry, stream)?);
        }
    }
    Ok(out)
}

/// Walks a reply that is a plain array of entries of stream `stream` (XCLAIM, XRANGE).
pub(crate) fn parse_entries(reply: Value, stream: StreamIdx) -> Result<Vec<Entry>, ReplyError> {
    match reply {
        Value::Array(entries) => entries
            .into_iter()
            .map(|e| parse_entry(e, stream))
            .collect(),
        other => Err(ReplyError(format!("entries {other:?}"))),
    }
}

fn parse_entry(entry: Value, stream: StreamIdx) -> Result<Entry, ReplyError> {
    let Value::Array(mut parts) = entry else {
        return Err(ReplyError(format!("entry {entry:?}")));
    };
    if parts.len() != 2 {
        return Err(ReplyError(format!("entry with {} parts", parts.len())));
    }
    let values = parts.pop().unwrap_or(Value::Nil);
    let id_value = parts.pop().unwrap_or(Value::Nil);
    let id = EntryId::parse(bytes(&id_value))
        .ok_or_else(|| ReplyError(format!("entry ID {id_value:?}")))?;
    let values = match values {
        Value::Nil => None,
        Value::Array(v) if v.len() % 2 == 0 => Some(v),
        Value::Map(pairs) => Some(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        other => return Err(ReplyError(format!("fields of {id}: {other:?}"))),
    };
    Ok(Entry { stream, id, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn streams() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn walks_a_resp2_reply() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("b"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("5-1"),
                    Value::Array(vec![
                        bulk("customer_id"),
                        bulk("c1"),
                        bulk("type"),
                        bulk("visit"),
                    ]),
                ]),
                Value::Array(vec![bulk("6-0"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_reply(reply, &streams()).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].stream, 1);
        assert_eq!(entries[0].id, EntryId { ms: 5, seq: 1 });
        let fields: Vec<_> = entries[0].fields().collect();
        assert_eq!(
            fields,
            vec![
                (&b"customer_id"[..], &b"c1"[..]),
                (&b"type"[..], &b"visit"[..])
            ]
        );
        assert!(entries[1].values.is_none());
        assert_eq!(entries[1].fields().count(), 0);
    }

    #[test]
    fn walks_a_resp3_map_and_a_timeout() {
        let reply = Value::Map(vec![(
            bulk("a"),
            Value::Array(vec![Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("k"), bulk("v")]),
            ])]),
        )]);
        assert_eq!(parse_reply(reply, &streams()).unwrap().len(), 1);
        assert!(parse_reply(Value::Nil, &streams()).unwrap().is_empty());
    }

    #[test]
    fn rejects_replies_it_does_not_understand() {
        assert!(parse_reply(Value::Int(3), &streams()).is_err());
        let unknown = Value::Array(vec![Value::Array(vec![bulk("zzz"), Value::Array(vec![])])]);
        assert!(parse_reply(unknown, &streams()).is_err());
        let odd = Value::Array(vec![Value::Array(vec![
            bulk("a"),
            Value::Array(vec![Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("k")]),
            ])]),
        ])]);
        assert!(parse_reply(odd, &streams()).is_err());
    }
}
