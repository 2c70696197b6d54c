//! The effects script and its calls: one `EVALSHA` writes many entries to one stream, each
//! only if its guard key is not set, and sets the guards of those it wrote.
//!
//! Why this shape: a script call costs Redis a fixed dispatch plus, per argument, a string it
//! parses and hands to Lua.
//! One call per entry with the script's source (as before) paid the dispatch and the source
//! once per entry; one call per stream and chunk of a batch pays them once per chunk, and
//! entries whose fields have the same names (every win-back task, every task of one care
//! kind) send the names once per call instead of once per entry.
//! Measured on 2026-12-01 (2-core VM, Redis 7.0.15) against one `EVAL` with the source per
//! entry: Redis CPU per task 11.1–11.7 µs → 8.0–8.2 µs, per duplicate 6.1 → 2.7 µs, and a
//! year's backfill from 0.29–0.40 to 0.47–0.55 of a bare consumer (`churnd-bench throughput
//! --history-days 365`, builds alternated). What is left per task is the guarantee itself
//! (`EXISTS`, `XADD`, `SET` ≈ 3 µs) and Lua handing the fields to `XADD`.
//!
//! All keys of a call (the stream, its entries' guards) hash to the stream's Redis Cluster
//! slot (see [`super::guards`]); while guards under their old names are being moved, a call
//! also reads those, which only a single Redis allows.

use std::borrow::Cow;
use std::sync::LazyLock;

use redis::Value;

use super::guards::{guard_prefix, old_guard_prefix};
use super::{Fence, SinkSettings};
use crate::engine::{DeadLetter, Effects};

/// KEYS[1]: the stream; KEYS[2..n+1]: the n entries' guard keys.
/// ARGV[1]: guard TTL (s); ARGV[2]: the stream's MAXLEN (~); ARGV[3]: the guard keys' old
/// prefix, to check too, or ''; ARGV[4]: the length of the guard keys' prefix (what follows
/// it is the ID, for the old name); ARGV[5]: s, the number of field-name lists, then each list
/// as a count k and k names; then per entry: a list's number l and that list's k values, or
/// l = 0, a count m and m field/value items (an entry that brings its own names).
/// Returns one character per entry: '1' written, '0' written before (its guard is set).
///
/// The stream's type is checked first, so that a key of another type fails the call before
/// it writes anything. An entry is written before its guard is set: should the XADD fail, the
/// entry is not marked written, and the retry writes it.
///
/// `last_key` is the last guard key: the fenced script ([`FENCED_LUA`]) has a fence record
/// and lease keys after the guards.
const EFFECTS_BODY: &str = r#"
local stream = KEYS[1]
local kind = redis.call('TYPE', stream)['ok']
if kind ~= 'stream' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. stream .. ' holds a ' .. kind .. ', not a stream')
end
local ttl, maxlen, old, skip = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local lists, sizes = {}, {}
local a = 6
for l = 1, tonumber(ARGV[5]) do
  local k = tonumber(ARGV[a])
  local list = {}
  for j = 1, k do
    list[2 * j - 1] = ARGV[a + j]
  end
  lists[l], sizes[l] = list, k
  a = a + 1 + k
end
local out = {}
for i = 2, last_key do
  local guard = KEYS[i]
  local seen
  if old == '' then
    seen = redis.call('EXISTS', guard)
  else
    seen = redis.call('EXISTS', guard, old .. string.sub(guard, skip + 1))
  end
  local l = tonumber(ARGV[a])
  local list, m
  if l == 0 then
    m = tonumber(ARGV[a + 1])
    a = a + 2
  else
    list, m = lists[l], sizes[l]
    a = a + 1
  end
  if seen > 0 then
    out[i - 1] = '0'
  else
    local id
    if l == 0 then
      id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, a, a + m - 1))
    else
      for j = 1, m do
        list[2 * j] = ARGV[a + j - 1]
      end
      id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(list, 1, 2 * m))
    end
    redis.call('SET', guard, id, 'EX', ttl)
    out[i - 1] = '1'
  end
  a = a + m
end
return table.concat(out)
"#;

/// The effects script: [`EFFECTS_BODY`] with every key after the first a guard.
pub(super) static EFFECTS: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(&format!("local last_key = #KEYS\n{EFFECTS_BODY}")));

/// Writes only on behalf of the partitions' current owners (`partitions.ownership = leases`):
/// after the guard keys come the stream's fence record ([`crate::ownership::fence`]) and l
/// lease keys (0 on a Redis Cluster, else one per partition); after [`EFFECTS_BODY`]'s
/// arguments, per partition its number and the token the writer holds it by
/// (`<member>#<run>:<epoch>`), then l, then the number of partitions n. Unless every
/// partition's fence (and lease) still shows its token, nothing is written and the call
/// fails with `FENCED`: another replica owns the partition now, and its replay writes these
/// effects instead.
const FENCED_LUA: &str = r#"
local n = tonumber(ARGV[#ARGV])
local leases = tonumber(ARGV[#ARGV - 1])
local last_key = #KEYS - 1 - leases
local fence = KEYS[last_key + 1]
local first = #ARGV - 2 - 2 * n
for i = 1, n do
  local p, token = ARGV[first + 2 * i - 1], ARGV[first + 2 * i]
  if redis.call('HGET', fence, p) ~= token then
    return redis.error_reply('FENCED partition ' .. p .. ' is fenced in ' .. fence .. ' for another owner than ' .. token)
  end
  if leases > 0 and redis.call('GET', KEYS[last_key + 1 + i]) ~= token then
    return redis.error_reply('FENCED ' .. KEYS[last_key + 1 + i] .. ' is no longer held by ' .. token)
  end
end
"#;

/// [`FENCED_LUA`]'s check, then [`EFFECTS_BODY`].
pub(super) static FENCED: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(&format!("{FENCED_LUA}{EFFECTS_BODY}")));

/// Entries per call at most: a script holds Redis while it runs (about 5 µs per entry here),
/// so a call of 256 holds it about 1.5 ms.
pub(crate) const MAX_ENTRIES_PER_CALL: usize = 256;

/// A call takes no more entries once its values pass this many bytes (dead letters copy
/// whatever the rejected entry held); an entry larger than that goes alone.
const MAX_BYTES_PER_CALL: usize = 1 << 20;

/// A rejected entry's fields beyond this many values are not copied to the dead-letter stream
/// (and `dlq_detail` says so): the script passes an entry's fields to XADD with Lua's
/// `unpack`, which takes at most about 8,000 values.
const MAX_DEAD_LETTER_VALUES: usize = 4_000;

/// An effect of a batch, by its place in [`Effects`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
    Task(usize),
    Cancel(usize),
    Outcome(usize),
    DeadLetter(usize),
}

/// One call of the effects script and the effects it writes, in reply order.
pub(super) struct Call {
    pub cmd: redis::Cmd,
    pub effects: Vec<Effect>,
}

/// What a call's reply says of each of its entries: `true` written, `false` written before;
/// `None` when the reply is not one character per entry.
pub(super) fn outcomes(reply: &Value, entries: usize) -> Option<Vec<bool>> {
    match reply {
        Value::BulkString(s)
            if s.len() == entries && s.iter().all(|b| matches!(b, b'0' | b'1')) =>
        {
            Some(s.iter().map(|b| *b == b'1').collect())
        }
        _ => None,
    }
}

/// An entry waiting for its call.
struct Entry<'a> {
    effect: Effect,
    /// What follows the guard prefix: a task's ID (an outcome's too, in its own stream), a
    /// cancel's (see [`crate::outcomes::Cancel::guard_id`]), or a dead letter's source stream
    /// and ID.
    id: String,
    body: Body<'a>,
}

enum Body<'a> {
    /// A record's fields: a task's names are mostly shared with the other tasks of its kind
    /// (a profile's attributes add names of their own), every cancel's and outcome's are the
    /// same.
    Task(Vec<(Cow<'static, str>, String)>),
    /// A dead letter: whatever the rejected entry held, then the four `dlq_` fields.
    DeadLetter {
        values: &'a [Value],
        dlq: [(&'static str, String); 4],
    },
}

impl Body<'_> {
    /// A task's field names (the same for most tasks of a kind: a call sends each such list
    /// once), or `None` for a body whose names go with its values (a dead letter).
    fn names(&self) -> Option<impl Iterator<Item = &str> + Clone + '_> {
        match self {
            Body::Task(fields) => Some(fields.iter().map(|(name, _)| name.as_ref())),
            Body::DeadLetter { .. } => None,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Body::Task(fields) => fields.iter().map(|(_, v)| v.len()).sum(),
            Body::DeadLetter { values, dlq } => {
                values.iter().map(value_len).sum::<usize>()
                    + dlq.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()
            }
        }
    }
}

fn value_len(v: &Value) -> usize {
    match v {
        Value::BulkString(b) => b.len(),
        Value::SimpleString(s) => s.len(),
        _ => 16,
    }
}

/// Entries that go to one stream with one length cap and guard TTL, in the order of the
/// effects.
struct Group<'a> {
    stream: &'a str,
    max_len: u64,
    ttl_secs: u64,
    entries: Vec<Entry<'a>>,
}

/// The calls that write `fx`'s effects: per output stream, in chunks of at most
/// [`MAX_ENTRIES_PER_CALL`], each stream's entries in the order of the effects.
/// `check_old_names`: also honour guards under their old names. The same `fx` always gives
/// the same calls (the sink resends the failed ones by their place), whatever
/// `check_old_names`.
pub(super) fn calls(settings: &SinkSettings, fx: &Effects, check_old_names: bool) -> Vec<Call> {
    let mut groups: Vec<Group> = Vec::new();
    for (i, task) in fx.tasks.iter().enumerate() {
        let entry = Entry {
            effect: Effect::Task(i),
            id: task.task_id.clone(),
            body: Body::Task(task.fields()),
        };
        let (stream, max_len) = settings.stream_of(task);
        push(&mut groups, stream, max_len, settings.dedup_ttl_secs, entry);
    }
    // After the tasks: a cancel follows its task in their stream.
    for (i, cancel) in fx.cancels.iter().enumerate() {
        let entry = Entry {
            effect: Effect::Cancel(i),
            id: cancel.guard_id(),
            body: Body::Task(cancel.fields()),
        };
        let (stream, max_len) = settings.stream_of_kind(cancel.kind, cancel.group);
        push(&mut groups, stream, max_len, settings.dedup_ttl_secs, entry);
    }
    for (i, outcome) in fx.outcomes.iter().enumerate() {
        let entry = Entry {
            effect: Effect::Outcome(i),
            id: outcome.guard_id().to_string(),
            body: Body::Task(outcome.fields()),
        };
        let (stream, max_len) = (&settings.outcome_stream, settings.outcome_max_len);
        push(&mut groups, stream, max_len, settings.dedup_ttl_secs, entry);
    }
    for (i, dl) in fx.dead_letters.iter().enumerate() {
        let entry = dead_letter(settings, i, dl);
        let stream = &settings.dead_letter_stream;
        let (max_len, ttl) = (
            settings.dead_letter_max_len,
            settings.dead_letter_dedup_ttl_secs,
        );
        push(&mut groups, stream, max_len, ttl, entry);
    }
    let mut calls = Vec::new();
    for group in groups {
        let prefix = guard_prefix(group.stream);
        let old = check_old_names
            .then(|| old_guard_prefix(group.stream))
            .flatten();
        // Each entry with its size, counted once.
        let mut entries = group
            .entries
            .into_iter()
            .map(|e| (e.body.bytes(), e))
            .peekable();
        while entries.peek().is_some() {
            let mut chunk = Vec::new();
            let mut bytes = 0;
            while let Some((size, entry)) = entries.next_if(|&(size, _)| {
                chunk.is_empty()
                    || (chunk.len() < MAX_ENTRIES_PER_CALL && bytes + size <= MAX_BYTES_PER_CALL)
            }) {
                bytes += size;
                chunk.push(entry);
            }
            let target = Target {
                stream: group.stream,
                max_len: group.max_len,
                ttl_secs: group.ttl_secs,
                prefix: &prefix,
                old_prefix: old.as_deref(),
            };
            calls.push(call(&target, chunk, settings.fence.as_ref()));
        }
    }
    calls
}

/// Adds `entry` to the group of its stream, length cap and TTL, made if new.
fn push<'a>(
    groups: &mut Vec<Group<'a>>,
    stream: &'a str,
    max_len: u64,
    ttl_secs: u64,
    entry: Entry<'a>,
) {
    let group = groups
        .iter_mut()
        .find(|g| g.stream == stream && g.max_len == max_len && g.ttl_secs == ttl_secs);
    match group {
        Some(group) => group.entries.push(entry),
        None => groups.push(Group {
            stream,
            max_len,
            ttl_secs,
            entries: vec![entry],
        }),
    }
}

/// A dead letter: the original fields of a rejected entry plus why and where from. Its guard
/// ID is the source stream and entry ID.
fn dead_letter<'a>(settings: &'a SinkSettings, i: usize, dl: &'a DeadLetter) -> Entry<'a> {
    let source_stream = settings
        .input_streams
        .get(usize::from(dl.stream))
        .map_or("", String::as_str);
    let source_id = dl.id.to_string();
    let copied = dl.values.len().min(MAX_DEAD_LETTER_VALUES) & !1;
    let mut detail = dl.detail.clone();
    if copied < dl.values.len() {
        detail.push_str(&format!(
            " ({} more fields not copied)",
            (dl.values.len() - copied) / 2
        ));
    }
    Entry {
        effect: Effect::DeadLetter(i),
        id: format!("{source_stream}:{source_id}"),
        body: Body::DeadLetter {
            values: &dl.values[..copied],
            dlq: [
                ("dlq_reason", dl.reason.as_str().to_string()),
                ("dlq_detail", detail),
                ("dlq_source_stream", source_stream.to_string()),
                ("dlq_source_id", source_id),
            ],
        },
    }
}

/// Where a call writes, and how its guards are named.
struct Target<'a> {
    stream: &'a str,
    max_len: u64,
    ttl_secs: u64,
    prefix: &'a str,
    old_prefix: Option<&'a str>,
}

/// The `EVALSHA` of [`EFFECTS`] for `entries` (see [`EFFECTS_LUA`] for the layout): the
/// field names of tasks once per call and set of names, a dead letter's with it.
fn call(target: &Target, entries: Vec<Entry>, fence: Option<&Fence>) -> Call {
    let mut lists: Vec<Vec<&str>> = Vec::new();
    let list_of: Vec<usize> = entries
        .iter()
        .map(|entry| {
            let Some(names) = entry.body.names() else {
                return 0;
            };
            // Compared in place: a list is collected only when it is new.
            match lists
                .iter()
                .position(|l| l.iter().copied().eq(names.clone()))
            {
                Some(i) => i + 1,
                None => {
                    lists.push(names.collect());
                    lists.len()
                }
            }
        })
        .collect();
    let script = if fence.is_some() { &FENCED } else { &EFFECTS };
    let leases = fence
        .filter(|f| f.check_leases)
        .map_or(0, |f| f.leases.len());
    let fence_keys = fence.map_or(0, |_| 1 + leases);
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash())
        .arg(1 + entries.len() + fence_keys)
        .arg(target.stream);
    let mut key = String::with_capacity(target.prefix.len() + 40);
    for entry in &entries {
        key.clear();
        key.push_str(target.prefix);
        key.push_str(&entry.id);
        cmd.arg(key.as_str());
    }
    if let Some(fence) = fence {
        cmd.arg(crate::ownership::fence::key(&fence.group, target.stream));
        for lease in fence.leases.iter().take(leases) {
            cmd.arg(&lease.key);
        }
    }
    cmd.arg(target.ttl_secs)
        .arg(target.max_len)
        .arg(target.old_prefix.unwrap_or(""))
        .arg(target.prefix.len())
        .arg(lists.len());
    for list in &lists {
        cmd.arg(list.len());
        for name in list {
            cmd.arg(*name);
        }
    }
    let mut effects = Vec::with_capacity(entries.len());
    for (entry, list) in entries.into_iter().zip(list_of) {
        effects.push(entry.effect);
        cmd.arg(list);
        match entry.body {
            Body::Task(fields) => {
                for (_, value) in fields {
                    cmd.arg(value);
                }
            }
            Body::DeadLetter { values, dlq } => {
                cmd.arg(values.len() + 2 * dlq.len());
                for v in values {
                    match v {
                        Value::BulkString(b) => cmd.arg(b.as_slice()),
                        Value::SimpleString(s) => cmd.arg(s.as_str()),
                        other => cmd.arg(format!("{other:?}")),
                    };
                }
                for (name, value) in dlq {
                    cmd.arg(name).arg(value);
                }
            }
        }
    }
    if let Some(fence) = fence {
        for lease in &fence.leases {
            cmd.arg(lease.partition).arg(&lease.token);
        }
        cmd.arg(leases).arg(fence.leases.len());
    }
    Call { cmd, effects }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::decide::{Detail, Task, TaskKind};
    use crate::event::{EntryId, Reason};

    fn care(n: usize, kind: TaskKind) -> Task {
        Task {
            task_id: format!("{n:032x}"),
            customer_id: format!("c{n}"),
            action: "act".into(),
            lifecycle_stage: crate::classify::LifecycleStage::New,
            segment: None,
            as_of: 0,
            expires_at: 0,
            tags: Vec::new(),
            profile: None,
            detail: match kind {
                TaskKind::Welcome => Detail::Welcome { first_purchase: 0 },
                TaskKind::Convert => Detail::Convert { visits: 3 },
                other => panic!("no test task of kind {other:?}"),
            },
            group: crate::decide::Group::Treatment,
            value: None,
        }
    }

    fn args(cmd: &redis::Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<other>".into(),
            })
            .collect()
    }

    #[test]
    fn a_stream_s_entries_go_in_chunks_in_their_order_with_shared_names_once() {
        let settings = SinkSettings::from(&Settings::default());
        let fx = Effects {
            tasks: (0..300)
                .map(|n| {
                    care(
                        n,
                        if n % 2 == 0 {
                            TaskKind::Welcome
                        } else {
                            TaskKind::Convert
                        },
                    )
                })
                .collect(),
            ..Effects::default()
        };
        let calls = calls(&settings, &fx, false);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].effects.len(), MAX_ENTRIES_PER_CALL);
        assert_eq!(calls[1].effects.len(), 300 - MAX_ENTRIES_PER_CALL);
        let order: Vec<Effect> = calls.iter().flat_map(|c| c.effects.clone()).collect();
        assert_eq!(order, (0..300).map(Effect::Task).collect::<Vec<_>>());

        let a = args(&calls[1].cmd);
        assert_eq!(a[0], "EVALSHA");
        let keys: usize = a[2].parse().unwrap();
        assert_eq!(keys, 1 + 44);
        assert_eq!(a[3], "crm:tasks");
        assert_eq!(a[4], format!("{{crm:tasks}}:dedup:{:032x}", 256));
        let argv = &a[3 + keys..];
        assert_eq!(
            &argv[2..4],
            ["", "{crm:tasks}:dedup:".len().to_string().as_str()]
        );
        // Two lists of names (welcome, convert), then each entry: its list and its values.
        assert_eq!(argv[4], "2");
        assert_eq!(argv[5], "12");
        assert_eq!(
            argv[6..18],
            [
                "schema_version",
                "record",
                "task_id",
                "kind",
                "customer_id",
                "action",
                "lifecycle_stage",
                "as_of",
                "expires_at",
                "first_purchase",
                "group",
                "tags"
            ]
        );
        assert_eq!(argv[18], "12");
        assert_eq!(argv[28], "visits");
        assert_eq!(argv[31], "1");
        assert_eq!(argv[32..34], ["1", "task"]);
        assert_eq!(argv[34], format!("{:032x}", 256));
        assert_eq!(argv[35], "welcome");
        assert_eq!(argv[44], "2");
        assert_eq!(argv[48], "convert");
        assert_eq!(argv.len(), 31 + 44 * 13);
    }

    #[test]
    fn a_dead_letter_brings_its_own_names_and_checks_the_old_guard_name_when_asked() {
        let mut settings = SinkSettings::from(&Settings::default());
        settings.input_streams = vec!["in".into()];
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let fx = Effects {
            dead_letters: vec![DeadLetter {
                stream: 0,
                id: EntryId { ms: 5, seq: 1 },
                values: vec![bulk("type"), bulk("gift"), bulk("odd")],
                reason: Reason::UnknownType,
                detail: "gift".into(),
            }],
            ..Effects::default()
        };
        let calls = calls(&settings, &fx, true);
        assert_eq!(calls.len(), 1);
        let a = args(&calls[0].cmd);
        assert_eq!(
            a[3..5],
            ["churn:events:dlq", "{churn:events:dlq}:dedup:in:5-1"]
        );
        let argv = &a[5..];
        assert_eq!(argv[2], "churn:events:dlq:dedup:");
        assert_eq!(argv[3], "{churn:events:dlq}:dedup:".len().to_string());
        // No shared names; the entry: list 0, its count, then name/value items (an odd last
        // value is not copied, and the detail says so).
        assert_eq!(argv[4..7], ["0", "0", "10"]);
        assert_eq!(argv[7..9], ["type", "gift"]);
        assert_eq!(argv[9..11], ["dlq_reason", "unknown_type"]);
        assert_eq!(argv[12], "gift (0 more fields not copied)");
        assert_eq!(
            argv[13..],
            ["dlq_source_stream", "in", "dlq_source_id", "5-1"]
        );
    }

    /// The part of `key` Redis Cluster hashes: the first `{…}` with something inside, else
    /// the whole key.
    fn hash_tag(key: &str) -> &str {
        key.find('{')
            .and_then(|open| {
                let close = open + 1 + key[open + 1..].find('}')?;
                (close > open + 1).then(|| &key[open + 1..close])
            })
            .unwrap_or(key)
    }

    #[test]
    fn dead_letters_of_every_partition_stream_go_in_calls_of_one_slot() {
        let mut s = Settings::default();
        s.partitions.count = crate::partition::PartitionCount::new(4).unwrap();
        let settings = SinkSettings::from(&s);
        assert_eq!(settings.input_streams[3], "churn:events:{3}");
        let fx = Effects {
            dead_letters: (0..4)
                .map(|stream| DeadLetter {
                    stream,
                    id: EntryId { ms: 5, seq: 1 },
                    values: Vec::new(),
                    reason: Reason::WrongPartition,
                    detail: "elsewhere".into(),
                })
                .collect(),
            tasks: (0..3).map(|n| care(n, TaskKind::Welcome)).collect(),
            ..Effects::default()
        };
        let calls = calls(&settings, &fx, false);
        assert_eq!(calls.len(), 2, "one call per output stream");
        for call in &calls {
            let a = args(&call.cmd);
            let keys: usize = a[2].parse().unwrap();
            let stream = &a[3];
            for key in &a[3..3 + keys] {
                assert_eq!(
                    hash_tag(key),
                    hash_tag(stream),
                    "{key} in the call of {stream}"
                );
            }
        }
        let dlq = calls
            .iter()
            .map(|c| args(&c.cmd))
            .find(|a| a[3] == "churn:events:dlq")
            .expect("the dead letters' call");
        assert_eq!(dlq[7], "{churn:events:dlq}:dedup:churn:events:{3}:5-1");
        assert_eq!(hash_tag(&dlq[7]), "churn:events:dlq");
        assert_eq!(hash_tag("churn:events:{3}"), "3");
        assert_eq!(hash_tag("a{}b"), "a{}b");
    }

    #[test]
    fn a_cancel_follows_its_task_in_the_task_s_stream_and_outcomes_go_to_theirs() {
        use crate::decide::Group;
        use crate::outcomes::{Cancel, CancelReason, OutcomeRecord};
        let settings = SinkSettings::from(&Settings::default());
        let task = care(1, TaskKind::Welcome);
        let fx = Effects {
            cancels: vec![Cancel {
                task_id: task.task_id.clone(),
                customer_id: task.customer_id.clone(),
                kind: TaskKind::Welcome,
                action: task.action.clone(),
                group: Group::Treatment,
                reason: CancelReason::Purchase,
                cancelled_at: 5,
            }],
            outcomes: vec![OutcomeRecord {
                task_id: task.task_id.clone(),
                customer_id: task.customer_id.clone(),
                kind: TaskKind::Welcome,
                action: task.action.clone(),
                segment: None,
                group: Group::Treatment,
                raised_at: 0,
                converted: None,
                closed_at: 10,
            }],
            tasks: vec![task.clone()],
            ..Effects::default()
        };
        let calls = calls(&settings, &fx, false);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].effects, [Effect::Task(0), Effect::Cancel(0)]);
        assert_eq!(calls[1].effects, [Effect::Outcome(0)]);
        let a = args(&calls[0].cmd);
        assert_eq!(a[3], "crm:tasks");
        assert_eq!(a[4], format!("{{crm:tasks}}:dedup:{}", task.task_id));
        assert_eq!(a[5], format!("{{crm:tasks}}:dedup:cancel:{}", task.task_id));
        let b = args(&calls[1].cmd);
        assert_eq!(b[3], "churn:outcomes");
        assert_eq!(b[4], format!("{{churn:outcomes}}:dedup:{}", task.task_id));
    }

    #[test]
    fn outcomes_are_one_character_per_entry() {
        let reply = Value::BulkString(b"101".to_vec());
        assert_eq!(outcomes(&reply, 3), Some(vec![true, false, true]));
        assert_eq!(outcomes(&reply, 2), None);
        assert_eq!(outcomes(&Value::Nil, 0), None);
    }
}
