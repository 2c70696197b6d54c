//! Where a stream's position is made durable, and how Redis is told.
//!
//! With customer state kept in snapshots (`state.dir`), a restart moves the consumer group
//! back to the newest snapshot's position and replays what follows, so an acknowledgement
//! per entry buys nothing the snapshot does not already give: the source reads by position
//! (plain `XREAD`: no pending entries list, no `XACK`), and a stream's position is committed
//! when a snapshot holding it is durable ([`Commit::WithSnapshots`]). Without kept state a
//! crash would lose whatever was acknowledged, so each entry is read through the group and
//! acknowledged once its effects are written, as before ([`Commit::PerEntry`]).
//!
//! The committer also tells the group (`source.group`) where reading stands
//! ([`super::position`]). What operators see
//! stays true: the group has nothing pending and its `XINFO GROUPS` lag counts the entries
//! not yet read; a second group per stream,
//! [`committed_group`] (`<group>:committed`), is never read from and is moved with
//! `XGROUP SETID` to each durable snapshot's position ([`run`]), so its lag counts the
//! entries a restart would replay. A third, [`written_group`] (`<group>:written`), is moved by
//! the sink to the last entry whose effects are written: the main group's lag of 0 only says
//! "read", and tools and tests that must know everything is applied and written ("drained")
//! wait on this one. Redis can only count the committed group's lag when told how many entries
//! precede the position (`ENTRIESREAD`): [`ReadCounts`] keeps, per stream, how many entries
//! this process has read up to the last entry of each read, and the main group's count at
//! the last entry read, as last told, anchors them (`entries_read(P) = entries_read(L) −
//! entries read in (P, L]`). When no anchor is known (just after a start, or after `XDEL`
//! made the count unknown) the position is committed without it and the lag shows as
//! unknown.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use redis::{RedisError, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::batch::Entry;
use super::lag::group_info;
use super::position::{set_group, Teller, TELL_EVERY};
use crate::config::{Acknowledge, Settings, SourceSettings};
use crate::connection::{Connector, RedisConn};
use crate::event::EntryId;

/// How the entries read are settled with Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// State is not kept: reads keep a pending entries list and each entry is acknowledged
    /// (`XACK`) once its effects are written.
    PerEntry,
    /// State is kept in snapshots: reads are by position (`XREAD`), and each stream's
    /// position is committed to [`committed_group`] once a snapshot holding it is durable.
    WithSnapshots,
}

impl Commit {
    /// The scheme `settings` call for: with snapshots whenever state is kept (`state.dir`
    /// set, or `state.store = "redis"`), unless
    /// `source.acknowledge = "per_entry"`.
    pub fn of(settings: &Settings) -> Self {
        match (settings.state.keeps_state(), settings.source.acknowledge) {
            (true, Acknowledge::Snapshots) => Self::WithSnapshots,
            _ => Self::PerEntry,
        }
    }
}

/// The group that records, per stream, the newest durable snapshot's position.
pub fn committed_group(group: &str) -> String {
    format!("{group}:committed")
}

/// The group that records, per stream, the last entry whose effects (tasks, outcome records,
/// dead letters) are written, with positions committed with snapshots: the sink moves it
/// after each write (one `XGROUP SETID` per stream and write, never per entry). Like
/// [`committed_group`] it is never read from. Its lag is 0 once every entry in the stream is
/// applied and its effects written ("drained"); while behind, Redis cannot count it (it is
/// moved without `ENTRIESREAD`) and shows null. Per entry acknowledged, the main group's
/// pending count tells the same and this group does not exist.
pub fn written_group(group: &str) -> String {
    format!("{group}:written")
}

/// Per input stream name, the position of the newest durable snapshot holding it.
pub type Durable = BTreeMap<String, EntryId>;

/// Records kept per stream at most; older ones are dropped (their positions are then
/// committed without a count).
const MAX_RECORDS: usize = 1 << 16;

/// Per stream (by index into `source.streams`), entries read by this process: at the last
/// entry of each read, how many were read up to it. Shared by the source, which records,
/// and the committer, which counts between two positions.
#[derive(Debug, Clone, Default)]
pub struct ReadCounts(Arc<Mutex<Vec<Records>>>);

/// One stream's records: the last entry of a read, and the entries read up to it.
type Records = VecDeque<(EntryId, u64)>;

impl ReadCounts {
    /// Counts starting at `start` (per stream, where reading starts; `None`: unknown).
    pub fn new(start: &[Option<EntryId>]) -> Self {
        let streams = start
            .iter()
            .map(|p| p.map(|id| (id, 0)).into_iter().collect())
            .collect();
        Self(Arc::new(Mutex::new(streams)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Records>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a read's `entries` (in stream order per stream).
    pub(crate) fn record(&self, entries: &[Entry]) {
        if entries.is_empty() {
            return;
        }
        let mut streams = self.lock();
        let mut i = 0;
        while i < entries.len() {
            let stream = usize::from(entries[i].stream);
            let run = entries[i..]
                .iter()
                .take_while(|e| usize::from(e.stream) == stream)
                .count();
            let last = entries[i + run - 1].id;
            if streams.len() <= stream {
                streams.resize_with(stream + 1, VecDeque::new);
            }
            let records = &mut streams[stream];
            let before = records.back().map_or(0, |&(_, n)| n);
            if records.back().is_none_or(|&(id, _)| last > id) {
                records.push_back((last, before + run as u64));
                if records.len() > MAX_RECORDS {
                    records.pop_front();
                }
            }
            i += run;
        }
    }

    /// The last entry read of `stream` (where reading starts, before any read).
    pub(crate) fn last(&self, stream: usize) -> Option<EntryId> {
        self.lock().get(stream)?.back().map(|&(id, _)| id)
    }

    /// The oldest record of `stream`: an entry and the entries read up to it.
    pub(crate) fn oldest(&self, stream: usize) -> Option<(EntryId, u64)> {
        self.lock().get(stream)?.front().copied()
    }

    /// Entries read after `from` up to `to` in `stream`, if both are recorded.
    pub(crate) fn between(&self, stream: usize, from: EntryId, to: EntryId) -> Option<u64> {
        let streams = self.lock();
        let records = streams.get(stream)?;
        let count_at = |id: EntryId| {
            let k = records.binary_search_by_key(&id, |&(id, _)| id).ok()?;
            Some(records[k].1)
        };
        count_at(to)?.checked_sub(count_at(from)?)
    }

    /// Drops the records before `id` in `stream`: no position before it is committed again.
    fn forget_before(&self, stream: usize, id: EntryId) {
        if let Some(records) = self.lock().get_mut(stream) {
            while records.len() > 1 && records.front().is_some_and(|&(r, _)| r < id) {
                records.pop_front();
            }
        }
    }

    /// Redis's count of the entries up to `position` (`ENTRIESREAD`), given that the group
    /// had read `read_at_last` entries up to `last`, its last delivered one.
    fn entries_read(
        &self,
        stream: usize,
        position: EntryId,
        (last, read_at_last): (EntryId, u64),
    ) -> Option<u64> {
        read_at_last.checked_sub(self.between(stream, position, last)?)
    }
}

/// Starts the committer of `settings`' streams when `commit` is [`Commit::WithSnapshots`]
/// (`None` per entry): where reading starts (`positions`) is committed first, then each
/// durable snapshot's positions as the snapshot writer publishes them on `durable`.
pub fn spawn(
    commit: Commit,
    (settings, counts, positions): (&SourceSettings, ReadCounts, &[Option<EntryId>]),
    (durable_tx, durable_rx): (&watch::Sender<Durable>, &watch::Receiver<Durable>),
    connector: Connector,
    abort: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    (commit == Commit::WithSnapshots).then(|| {
        durable_tx.send_modify(|d| {
            let at = settings.streams.iter().zip(positions);
            d.extend(at.filter_map(|(s, p)| Some((s.clone(), (*p)?))));
        });
        tokio::spawn(run(
            settings.clone(),
            counts,
            durable_rx.clone(),
            connector,
            abort,
        ))
    })
}

/// Moves each stream's [`committed_group`] to the positions `durable` publishes (the
/// snapshot writer, once a snapshot is durable) until the publisher is gone, committing the
/// last ones first; `abort` ends retrying. A failed commit is retried after the backoff: a
/// position committed late only leaves the lag higher meanwhile (the snapshot, not the
/// group, is what a restart replays from). Before each round, and every [`TELL_EVERY`],
/// the main group is told where reading stands ([`Teller`]); the last round, once the
/// publisher is gone (the source stopped before), tells it the last entry read.
pub async fn run(
    settings: SourceSettings,
    counts: ReadCounts,
    mut durable: watch::Receiver<Durable>,
    mut connector: Connector,
    abort: CancellationToken,
) {
    let mut done = Durable::new();
    let mut conn: Option<RedisConn> = None;
    let mut closed = false;
    let mut teller = Teller::new(&counts, settings.streams.len());
    let mut tick = tokio::time::interval(TELL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connector.connect(&abort).await {
                Some(c) => conn.insert(c),
                None => return,
            },
        };
        // First, so that a commit's count is taken from the count told here.
        if let Err(e) = teller.tell(c, &settings, &counts).await {
            tracing::warn!(error = %e, "cannot tell the consumer group where reading stands; retrying");
            if connector.failed(&e) {
                conn = None;
            }
            if !connector.pause(&abort).await {
                return;
            }
            continue;
        }
        let wanted = durable.borrow_and_update().clone();
        for (stream, &at) in &wanted {
            let Some(index) = settings.streams.iter().position(|s| s == stream) else {
                continue;
            };
            while done.get(stream) != Some(&at) {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match connector.connect(&abort).await {
                        Some(c) => conn.insert(c),
                        None => return,
                    },
                };
                match commit(c, &settings.group, (index, stream), at, &counts).await {
                    Ok(()) => {
                        connector.succeeded();
                        done.insert(stream.clone(), at);
                        counts.forget_before(index, at);
                    }
                    Err(e) => {
                        tracing::warn!(stream, position = %at, error = %e, "cannot commit the snapshot's position to the committed group; retrying");
                        if connector.failed(&e) {
                            conn = None;
                        }
                        if !connector.pause(&abort).await {
                            return;
                        }
                    }
                }
            }
        }
        if closed {
            return;
        }
        tokio::select! {
            changed = durable.changed() => closed = changed.is_err(),
            _ = tick.tick() => {}
            () = abort.cancelled() => return,
        }
    }
}

/// Moves `stream`'s committed group to `at` (creating it there if missing), with Redis's
/// count of the entries up to it when it can be known: from the main group's count at the
/// last entry read (told just before) and the entries read in between.
async fn commit(
    c: &mut RedisConn,
    group: &str,
    (index, stream): (usize, &str),
    at: EntryId,
    counts: &ReadCounts,
) -> Result<(), RedisError> {
    let committed = committed_group(group);
    let groups: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(c)
        .await?;
    if group_info(&groups, &committed).and_then(|g| g.last_delivered) == Some(at) {
        return Ok(()); // already there (a restart from this snapshot)
    }
    let anchor = group_info(&groups, group).and_then(|g| {
        let read = u64::try_from(g.entries_read?).ok()?;
        Some((g.last_delivered?, read))
    });
    // An anchor before `at` (moved back meanwhile by another process) tells nothing.
    let entries_read = anchor
        .filter(|&(last, _)| last >= at)
        .and_then(|anchor| counts.entries_read(index, at, anchor));
    set_group(c, stream, &committed, at, entries_read).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::batch::StreamIdx;

    fn id(ms: u64) -> EntryId {
        EntryId { ms, seq: 0 }
    }

    fn entry(stream: StreamIdx, ms: u64) -> Entry {
        Entry {
            stream,
            id: id(ms),
            values: None,
        }
    }

    #[test]
    fn counts_entries_read_between_two_recorded_positions() {
        let counts = ReadCounts::new(&[Some(id(10)), Some(id(0))]);
        counts.record(&[entry(0, 11), entry(0, 12), entry(1, 3)]);
        counts.record(&[entry(0, 15)]);
        counts.record(&[entry(1, 4), entry(1, 9)]);
        assert_eq!(counts.between(0, id(10), id(12)), Some(2));
        assert_eq!(counts.between(0, id(12), id(15)), Some(1));
        assert_eq!(counts.between(0, id(10), id(15)), Some(3));
        assert_eq!(counts.between(1, id(3), id(9)), Some(2));
        assert_eq!(
            counts.between(0, id(11), id(15)),
            None,
            "not a read's last entry"
        );
        assert_eq!(counts.between(0, id(15), id(12)), None, "backwards");
    }

    #[test]
    fn the_count_at_a_position_follows_from_the_groups_count_at_its_last_entry() {
        let counts = ReadCounts::new(&[Some(id(10))]);
        counts.record(&[entry(0, 11), entry(0, 12)]);
        counts.record(&[entry(0, 13), entry(0, 14), entry(0, 15)]);
        // The group has read 1,000 entries up to 15: 997 up to 12.
        assert_eq!(counts.entries_read(0, id(12), (id(15), 1_000)), Some(997));
        assert_eq!(counts.entries_read(0, id(15), (id(15), 1_000)), Some(1_000));
        assert_eq!(counts.entries_read(0, id(10), (id(15), 1_000)), Some(995));
        assert_eq!(
            counts.entries_read(0, id(12), (id(15), 2)),
            None,
            "cannot be"
        );
        assert_eq!(
            counts.entries_read(0, id(12), (id(16), 9)),
            None,
            "unknown anchor"
        );
    }

    #[test]
    fn an_older_read_again_is_not_recorded_and_old_records_are_dropped() {
        let counts = ReadCounts::new(&[None]);
        counts.record(&[entry(0, 5)]);
        counts.record(&[entry(0, 7)]);
        counts.record(&[entry(0, 6)]);
        assert_eq!(counts.between(0, id(5), id(7)), Some(1));
        counts.forget_before(0, id(7));
        assert_eq!(counts.between(0, id(5), id(7)), None);
        assert_eq!(counts.between(0, id(7), id(7)), Some(0));
        counts.forget_before(0, id(100));
        assert_eq!(
            counts.between(0, id(7), id(7)),
            Some(0),
            "the last one stays"
        );
    }

    #[test]
    fn the_scheme_follows_state_dir() {
        let mut s = Settings::default();
        assert_eq!(Commit::of(&s), Commit::WithSnapshots, "the default");
        s.source.acknowledge = Acknowledge::PerEntry;
        assert_eq!(Commit::of(&s), Commit::PerEntry);
        s.source.acknowledge = Acknowledge::Snapshots;
        s.state.dir = Default::default();
        assert_eq!(Commit::of(&s), Commit::PerEntry, "no state kept");
        assert_eq!(committed_group("churnd"), "churnd:committed");
        assert_eq!(written_group("churnd"), "churnd:written");
    }
}
