//! The source's decisions, without I/O: where each stream's next read starts and how many
//! entries it asks for, when recovery is complete, when other consumers' entries are
//! claimed, and where consumer groups are created or moved back to.
//!
//! With positions committed with snapshots ([`Commit::WithSnapshots`]) every read is by
//! position (a plain `XREAD` after the last entry received of each stream, starting at the
//! snapshot's): reading moves no state shared in Redis, so a replica paused past its lease
//! that reads again takes nothing from the partition's new owner, and a reply lost in
//! transit is read again simply by reading from the same place. The consumer group is then
//! only told where reading stands ([`super::position`]).
//!
//! [`Source::run`](super::Source::run) does what [`Machine`] asks and reports what came of
//! it: after every (re)connect it performs [`Machine::prepare`] and reports
//! [`Machine::prepared`]; then, step by step, [`Machine::next`] says claim or read (and how),
//! and [`Machine::claimed`], [`Machine::read_done`] or [`Machine::unreadable_reply`] take
//! the outcome. Time comes in as an argument, so every rule can be tested without Redis or
//! a clock.

use std::time::{Duration, Instant};

use super::batch::Entry;
use super::budget::ReadSize;
use super::Commit;
use crate::config::{SourceSettings, StartFrom};
use crate::event::EntryId;

/// Where the next read of one stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    /// Re-reading this consumer's own pending entries after this ID.
    Pending(EntryId),
    /// Reading new entries (`>`).
    Live,
}

/// What to do next on a prepared connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// A round of claiming entries stranded on other consumers; report [`Machine::claimed`].
    Claim,
    /// One read; report [`Machine::read_done`] or [`Machine::unreadable_reply`].
    Read(ReadPlan),
}

/// One read: XREADGROUP, or XREAD by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReadPlan {
    /// Entries asked of each stream (COUNT).
    pub count: usize,
    pub from: ReadFrom,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadFrom {
    /// This consumer's own pending entries of these streams (index into `source.streams`),
    /// after these IDs; never blocking, the pending list is there or not.
    Pending(Vec<(usize, EntryId)>),
    /// New entries of every stream, waiting up to `block_ms` for some if `block`.
    New { block: bool },
    /// By position, with plain XREAD ([`Commit::WithSnapshots`]): the entries of every
    /// stream after these (one per stream), waiting up to `block_ms` for some if `block`.
    After { after: Vec<GroupStart>, block: bool },
}

impl ReadFrom {
    /// Whether the read waits for entries (`BLOCK`).
    pub fn blocks(&self) -> bool {
        matches!(
            self,
            Self::New { block: true } | Self::After { block: true, .. }
        )
    }
}

impl ReadPlan {
    /// A read of what follows every stream's position (not a re-read of pending entries).
    pub fn is_new(&self) -> bool {
        !matches!(self.from, ReadFrom::Pending(_))
    }
}

/// What a fresh connection needs before the first read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Prepare {
    /// Per stream, where its group is created should it be missing.
    pub create_at: Vec<GroupStart>,
    /// On the first connection only: per stream, the durable position its group moves back
    /// to (`None`: none kept, the consumer re-reads its own pending entries instead).
    pub rewind_to: Option<Vec<Option<EntryId>>>,
}

/// Where a consumer group is created (XGROUP CREATE's ID), or where a read by position
/// starts (XREAD's ID: the same arguments mean the same there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupStart {
    /// After an entry received or applied: nothing is read twice or skipped.
    After(EntryId),
    /// A new deployment with `start_from = "beginning"`.
    Beginning,
    /// A new deployment with `start_from = "end"`.
    End,
}

impl GroupStart {
    /// The ID argument of XGROUP CREATE.
    pub fn arg(self) -> String {
        match self {
            Self::After(id) => id.to_string(),
            Self::Beginning => "0".into(),
            Self::End => "$".into(),
        }
    }
}

/// What one read brought, as the batch needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadDone {
    /// The first read since start to find the end of every stream: recovery is complete
    /// once this batch is applied.
    pub caught_up: bool,
    /// The read found every stream's end (new entries, fewer than asked of each).
    pub at_end: bool,
    /// Bytes of the entries read (the in-flight budget holds them).
    pub bytes: u64,
}

/// Claims of other consumers' idle entries are due every `every`.
#[derive(Debug, Clone, Copy)]
struct ClaimClock {
    every: Duration,
    next: Instant,
}

/// The source's state between I/O steps.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    /// Per stream, the last entry received by a read (claimed ones aside), or the durable
    /// position before any: a missing group is recreated there, and after a reconnect the
    /// consumer's own pending entries are re-read from there.
    received: Vec<Option<EntryId>>,
    start_from: StartFrom,
    /// No connection prepared yet: the first moves the groups back to the durable
    /// positions.
    starting: bool,
    /// Replay and own pending entries not yet read to every stream's end: reads do not wait
    /// (an empty reply means the end) and nothing is claimed.
    recovering: bool,
    cursors: Vec<Cursor>,
    commit: Commit,
    /// `None`: claiming is off (`claim_idle_ms = 0`, or reads by position, which leave
    /// nothing pending to claim).
    claims: Option<ClaimClock>,
    read_size: ReadSize,
}

impl Machine {
    /// A source reading `settings.streams` from `start` (per stream, where customer state
    /// stands; `None` where none is kept), created at `now`, settling what it reads as
    /// `commit` says: a claim is due at once after recovery.
    pub fn new(
        settings: &SourceSettings,
        mut start: Vec<Option<EntryId>>,
        now: Instant,
        commit: Commit,
    ) -> Self {
        let streams = settings.streams.len();
        // One position per configured stream, whatever the restored state held.
        start.resize(streams, None);
        // Reading by position, entries pending on consumers of the group (left by a run that
        // acknowledged per entry: acknowledged at start) are read again from the snapshot's
        // position, never claimed.
        let claims = settings
            .claim_idle
            .filter(|_| commit == Commit::PerEntry)
            .map(|idle| ClaimClock {
                every: (idle.get() / 2).max(Duration::from_secs(1)),
                next: now,
            });
        Self {
            received: start,
            start_from: settings.start_from,
            starting: true,
            recovering: true,
            cursors: vec![Cursor::Live; streams],
            commit,
            claims,
            read_size: ReadSize::for_budget(
                settings.batch_size.get(),
                settings.max_inflight_bytes,
                settings.queue_batches.get(),
            ),
        }
    }

    /// What a new connection needs before reading: groups created where missing and, the
    /// first time only, moved back to the durable positions.
    pub(crate) fn prepare(&self) -> Prepare {
        Prepare {
            create_at: self.create_at(),
            rewind_to: self.starting.then(|| self.received.clone()),
        }
    }

    /// The connection was prepared as [`Self::prepare`] asked. After a rewind, streams with
    /// a durable position read on from it and the others re-read this consumer's pending
    /// entries from the start; after a reconnect, every stream re-reads its pending
    /// entries past the last one received (a delivery lost in transit is found there,
    /// and what is already in the pipeline is not read twice) or, reading by position
    /// ([`Commit::WithSnapshots`]), reads on after the last entry received.
    pub(crate) fn prepared(&mut self) {
        self.cursors = if self.starting {
            self.received
                .iter()
                .map(|p| match (p, self.commit) {
                    (None, Commit::PerEntry) => Cursor::Pending(EntryId::default()),
                    // Reading by position keeps no pending entries list to re-read.
                    _ => Cursor::Live,
                })
                .collect()
        } else {
            self.after_lost_reply()
        };
        self.starting = false;
    }

    /// Where each stream's group is created should it be missing (at start, or deleted
    /// under a running source: NOGROUP): after the last entry received, so nothing is
    /// skipped or read again; for a stream nothing was received from, at `start_from`.
    pub(crate) fn create_at(&self) -> Vec<GroupStart> {
        self.received
            .iter()
            .map(|r| match (r, self.start_from) {
                (Some(id), _) => GroupStart::After(*id),
                (None, StartFrom::Beginning) => GroupStart::Beginning,
                (None, StartFrom::End) => GroupStart::End,
            })
            .collect()
    }

    /// The next step at `now` on a prepared connection. A claim is made only once recovery
    /// is complete and every stream reads new entries: a claimed entry must not move the
    /// engine's position past entries the replay or a re-read has yet to deliver.
    pub fn next(&self, now: Instant) -> Step {
        let pending: Vec<(usize, EntryId)> = self
            .cursors
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c {
                Cursor::Pending(after) => Some((i, *after)),
                Cursor::Live => None,
            })
            .collect();
        let claim_due = self.claims.is_some_and(|c| now >= c.next);
        if pending.is_empty() && !self.recovering && claim_due {
            return Step::Claim;
        }
        // While recovering, reads do not wait: an empty reply means every stream's end.
        let block = !self.recovering;
        let from = if self.commit == Commit::WithSnapshots {
            ReadFrom::After {
                after: self.create_at(),
                block,
            }
        } else if pending.is_empty() {
            ReadFrom::New { block }
        } else {
            ReadFrom::Pending(pending)
        };
        Step::Read(ReadPlan {
            count: self.read_size.count(),
            from,
        })
    }

    /// A claim round was started at `at`, whatever its outcome: the next is due a claim
    /// interval later.
    pub fn claimed(&mut self, at: Instant) {
        if let Some(c) = &mut self.claims {
            c.next = at + c.every;
        }
    }

    /// `plan` brought `entries`. A stream re-reading its pending entries goes on after the
    /// last one read, or reads new entries once none are left; the read size follows the
    /// entries' size. Recovery is complete at the first read of new entries that brings
    /// fewer than asked of every stream.
    pub(crate) fn read_done(&mut self, plan: &ReadPlan, entries: &[Entry]) -> ReadDone {
        for (i, cursor) in self.cursors.iter_mut().enumerate() {
            if let Cursor::Pending(after) = cursor {
                match entries.iter().rev().find(|e| usize::from(e.stream) == i) {
                    Some(last) => *after = last.id,
                    None => *cursor = Cursor::Live,
                }
            }
        }
        let mut per_stream = vec![0usize; self.received.len()];
        let mut bytes = 0;
        for e in entries {
            let i = usize::from(e.stream);
            self.received[i] = self.received[i].max(Some(e.id));
            per_stream[i] += 1;
            bytes += e.bytes() as u64;
        }
        self.read_size.observe(entries.len(), bytes);
        let at_end = plan.is_new() && per_stream.iter().all(|&n| n < plan.count);
        let caught_up = self.recovering && at_end;
        if caught_up {
            self.recovering = false;
        }
        ReadDone {
            caught_up,
            at_end,
            bytes,
        }
    }

    /// A read's reply could not be understood. The entries in it were delivered all the
    /// same: every stream re-reads its pending entries past the last one received.
    pub(crate) fn unreadable_reply(&mut self) {
        self.cursors = self.after_lost_reply();
    }

    /// The cursors after a reply may have been lost: re-reading own pending entries past
    /// the last one received or, reading by position, reading on after the last entries
    /// received (what the lost reply held comes again).
    fn after_lost_reply(&mut self) -> Vec<Cursor> {
        match self.commit {
            Commit::PerEntry => self.pending_after_received(),
            Commit::WithSnapshots => vec![Cursor::Live; self.received.len()],
        }
    }

    /// Replay and own pending entries are not yet read to every stream's end.
    #[cfg(test)]
    pub fn recovering(&self) -> bool {
        self.recovering
    }

    fn pending_after_received(&self) -> Vec<Cursor> {
        self.received
            .iter()
            .map(|r| Cursor::Pending(r.unwrap_or_default()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BatchSize, Interval};
    use crate::source::batch::StreamIdx;
    use redis::Value;
    use std::num::NonZeroUsize;

    const BATCH: usize = 10;

    fn id(ms: u64, seq: u64) -> EntryId {
        EntryId { ms, seq }
    }

    fn settings(claim_idle_ms: u64) -> SourceSettings {
        SourceSettings {
            streams: vec!["a".into(), "b".into()],
            batch_size: BatchSize::new(BATCH).unwrap(),
            claim_idle: Interval::try_from_millis(claim_idle_ms),
            ..SourceSettings::default()
        }
    }

    fn machine(start: Vec<Option<EntryId>>, t0: Instant) -> Machine {
        Machine::new(&settings(60_000), start, t0, Commit::PerEntry)
    }

    /// A small entry of stream `stream`.
    fn entry(stream: StreamIdx, ms: u64) -> Entry {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        Entry {
            stream,
            id: id(ms, 0),
            values: Some(vec![
                bulk("customer_id"),
                bulk("c"),
                bulk("type"),
                bulk("visit"),
            ]),
        }
    }

    /// `n` entries of `stream`, IDs `first`, `first + 1`, …
    fn entries(stream: StreamIdx, first: u64, n: u64) -> Vec<Entry> {
        (first..first + n).map(|ms| entry(stream, ms)).collect()
    }

    /// Entries of two reads' worth, as one reply.
    fn two(mut first: Vec<Entry>, second: Vec<Entry>) -> Vec<Entry> {
        first.extend(second);
        first
    }

    fn plan(m: &Machine, now: Instant) -> ReadPlan {
        match m.next(now) {
            Step::Read(plan) => plan,
            Step::Claim => panic!("a claim, not a read"),
        }
    }

    fn read(m: &mut Machine, now: Instant, entries: &[Entry]) -> (ReadPlan, ReadDone) {
        let plan = plan(m, now);
        let done = m.read_done(&plan, entries);
        (plan, done)
    }

    fn new_entries(block: bool) -> ReadFrom {
        ReadFrom::New { block }
    }

    /// A machine that has caught up, at `t0`, with no claim made yet.
    fn caught_up(t0: Instant) -> Machine {
        let mut m = machine(vec![Some(id(1, 0)), Some(id(1, 0))], t0);
        m.prepared();
        assert!(read(&mut m, t0, &[]).1.caught_up);
        m
    }

    #[test]
    fn without_kept_positions_every_stream_first_rereads_its_own_pending_entries() {
        let t0 = Instant::now();
        let mut m = machine(vec![], t0);
        assert_eq!(
            m.prepare(),
            Prepare {
                create_at: vec![GroupStart::Beginning; 2],
                rewind_to: Some(vec![None, None]),
            }
        );
        m.prepared();
        assert_eq!(
            plan(&m, t0),
            ReadPlan {
                count: BATCH,
                from: ReadFrom::Pending(vec![(0, EntryId::default()), (1, EntryId::default())]),
            }
        );
        let from_end = SourceSettings {
            start_from: StartFrom::End,
            ..settings(0)
        };
        assert_eq!(
            Machine::new(&from_end, vec![], t0, Commit::PerEntry)
                .prepare()
                .create_at,
            vec![GroupStart::End; 2]
        );
    }

    #[test]
    fn with_kept_positions_groups_move_back_and_new_entries_are_read_without_waiting() {
        let t0 = Instant::now();
        let start = vec![Some(id(5, 1)), Some(EntryId::default())];
        let mut m = machine(start.clone(), t0);
        assert_eq!(
            m.prepare(),
            Prepare {
                create_at: vec![GroupStart::After(id(5, 1)), GroupStart::After(id(0, 0))],
                rewind_to: Some(start),
            }
        );
        m.prepared();
        assert_eq!(plan(&m, t0).from, new_entries(false));
        assert!(m.recovering());
    }

    #[test]
    fn a_stream_without_a_kept_position_rereads_pending_entries_alone() {
        let t0 = Instant::now();
        // More positions than streams: the extra one is dropped; fewer: the rest have none.
        let mut m = machine(vec![Some(id(5, 0)), None, Some(id(9, 0))], t0);
        m.prepared();
        assert_eq!(
            plan(&m, t0).from,
            ReadFrom::Pending(vec![(1, EntryId::default())])
        );
        let mut m = machine(vec![Some(id(5, 0))], t0);
        assert_eq!(m.prepare().rewind_to, Some(vec![Some(id(5, 0)), None]));
        m.prepared();
        assert_eq!(
            plan(&m, t0).from,
            ReadFrom::Pending(vec![(1, EntryId::default())])
        );
    }

    #[test]
    fn each_stream_rereads_pending_entries_until_it_has_none_left_then_reads_new_ones() {
        let t0 = Instant::now();
        let mut m = machine(vec![None, None], t0);
        m.prepared();
        // Stream a has pending entries left after 3-0, stream b had none.
        let (_, done) = read(&mut m, t0, &entries(0, 1, 3));
        assert!(!done.caught_up, "a re-read of pending entries is no end");
        assert_eq!(plan(&m, t0).from, ReadFrom::Pending(vec![(0, id(3, 0))]));
        let (_, done) = read(&mut m, t0, &entries(0, 4, 2));
        assert!(!done.caught_up);
        assert_eq!(plan(&m, t0).from, ReadFrom::Pending(vec![(0, id(5, 0))]));
        let (_, done) = read(&mut m, t0, &[]);
        assert!(!done.caught_up, "even an empty one");
        assert_eq!(plan(&m, t0).from, new_entries(false));
        assert_eq!(
            m.create_at(),
            vec![GroupStart::After(id(5, 0)), GroupStart::Beginning]
        );
    }

    #[test]
    fn recovery_completes_once_when_every_stream_brought_fewer_than_asked() {
        let t0 = Instant::now();
        let mut m = machine(vec![Some(id(0, 0)), Some(id(0, 0))], t0);
        m.prepared();
        let full = two(entries(0, 1, BATCH as u64), entries(1, 1, 3));
        let (plan, done) = read(&mut m, t0, &full);
        assert_eq!(plan.from, new_entries(false));
        assert!(!done.caught_up, "stream a may hold more");
        let (_, done) = read(&mut m, t0, &entries(1, 4, BATCH as u64));
        assert!(!done.caught_up, "stream b may hold more");
        let (_, done) = read(&mut m, t0, &two(entries(0, 11, 9), entries(1, 14, 1)));
        assert!(done.caught_up);
        assert!(!m.recovering());
        assert_eq!(m.next(t0), Step::Claim);
        m.claimed(t0);
        // From now on reads wait for new entries, and no batch is caught up again.
        let (plan, done) = read(&mut m, t0, &[]);
        assert_eq!(plan.from, new_entries(true));
        assert!(!done.caught_up);
    }

    #[test]
    fn a_read_reports_its_bytes() {
        let t0 = Instant::now();
        let mut m = caught_up(t0);
        m.claimed(t0);
        let got = entries(0, 2, 2);
        let (_, done) = read(&mut m, t0, &got);
        assert_eq!(done.bytes, 2 * got[0].bytes() as u64);
        assert_eq!(got[0].bytes(), "customer_idctypevisit".len());
    }

    #[test]
    fn the_read_size_follows_the_size_of_the_entries() {
        let t0 = Instant::now();
        let small_budget = SourceSettings {
            batch_size: BatchSize::new(1_000).unwrap(),
            max_inflight_bytes: 6 * 1_000,
            queue_batches: NonZeroUsize::new(4).unwrap(),
            ..settings(0)
        };
        let mut m = Machine::new(&small_budget, vec![Some(id(0, 0)); 2], t0, Commit::PerEntry);
        m.prepared();
        assert_eq!(plan(&m, t0).count, 64, "the first read, sizes unknown");
        // A share of 1,000 bytes at 21 bytes an entry: 47.
        let (_, done) = read(&mut m, t0, &entries(0, 1, 64));
        assert!(!done.caught_up, "64 of 64 asked");
        assert_eq!(plan(&m, t0).count, 47);
    }

    #[test]
    fn claims_wait_for_recovery_then_come_every_half_idle_time() {
        let t0 = Instant::now();
        let mut m = machine(vec![Some(id(1, 0)), Some(id(1, 0))], t0);
        m.prepared();
        let later = t0 + Duration::from_secs(3_600);
        assert!(
            matches!(m.next(later), Step::Read(_)),
            "not while recovering, however due"
        );
        read(&mut m, t0, &entries(0, 2, BATCH as u64));
        assert!(matches!(m.next(later), Step::Read(_)));
        assert!(read(&mut m, t0, &[]).1.caught_up);
        assert_eq!(m.next(t0), Step::Claim, "due at once after recovery");
        m.claimed(t0);
        assert!(matches!(
            m.next(t0 + Duration::from_millis(29_999)),
            Step::Read(_)
        ));
        assert_eq!(m.next(t0 + Duration::from_secs(30)), Step::Claim);
    }

    #[test]
    fn claims_come_at_most_every_second_and_not_at_all_when_off() {
        let t0 = Instant::now();
        let mut m = Machine::new(
            &settings(300),
            vec![Some(id(1, 0)); 2],
            t0,
            Commit::PerEntry,
        );
        m.prepared();
        read(&mut m, t0, &[]);
        assert_eq!(m.next(t0), Step::Claim);
        m.claimed(t0);
        assert!(matches!(
            m.next(t0 + Duration::from_millis(999)),
            Step::Read(_)
        ));
        assert_eq!(m.next(t0 + Duration::from_secs(1)), Step::Claim);

        let mut off = Machine::new(&settings(0), vec![Some(id(1, 0)); 2], t0, Commit::PerEntry);
        off.prepared();
        assert!(read(&mut off, t0, &[]).1.caught_up);
        let much_later = t0 + Duration::from_secs(86_400);
        assert!(matches!(off.next(much_later), Step::Read(_)));
    }

    #[test]
    fn a_reconnect_rereads_own_pending_entries_after_the_last_received_and_claims_wait() {
        let t0 = Instant::now();
        let mut m = caught_up(t0);
        m.claimed(t0);
        read(&mut m, t0, &two(entries(0, 7, 3), entries(1, 4, 1)));
        assert_eq!(
            m.prepare().rewind_to,
            None,
            "groups move back at start only"
        );
        m.prepared();
        let due = t0 + Duration::from_secs(60);
        assert_eq!(
            plan(&m, due).from,
            ReadFrom::Pending(vec![(0, id(9, 0)), (1, id(4, 0))]),
            "not a claim: stream a's re-read is not done"
        );
        read(&mut m, due, &entries(0, 10, 1));
        assert_eq!(plan(&m, due).from, ReadFrom::Pending(vec![(0, id(10, 0))]));
        let (_, done) = read(&mut m, due, &[]);
        assert!(!done.caught_up, "recovery was complete before");
        assert_eq!(m.next(due), Step::Claim);
    }

    #[test]
    fn a_reconnect_before_any_entry_rereads_from_the_kept_position_or_the_beginning() {
        let t0 = Instant::now();
        let mut m = machine(vec![Some(id(5, 0)), None], t0);
        m.prepared();
        m.prepared();
        assert_eq!(
            plan(&m, t0).from,
            ReadFrom::Pending(vec![(0, id(5, 0)), (1, EntryId::default())])
        );
    }

    #[test]
    fn a_failed_first_preparation_is_a_rewind_again() {
        let t0 = Instant::now();
        let m = machine(vec![Some(id(5, 0)), None], t0);
        // Nothing reported: the next connection rewinds as the first would have.
        assert_eq!(m.prepare().rewind_to, Some(vec![Some(id(5, 0)), None]));
    }

    #[test]
    fn a_missing_group_is_recreated_after_the_last_entry_received() {
        let t0 = Instant::now();
        let from_end = SourceSettings {
            start_from: StartFrom::End,
            ..settings(0)
        };
        let mut m = Machine::new(&from_end, vec![Some(id(3, 0)), None], t0, Commit::PerEntry);
        assert_eq!(
            m.create_at(),
            vec![GroupStart::After(id(3, 0)), GroupStart::End]
        );
        m.prepared();
        // Stream b's pending entries first, then new ones of both.
        read(&mut m, t0, &[]);
        read(&mut m, t0, &two(entries(0, 4, 2), entries(1, 8, 1)));
        assert_eq!(
            m.create_at(),
            vec![GroupStart::After(id(5, 0)), GroupStart::After(id(8, 0))]
        );
        // An older entry (a re-read) does not move the position back.
        read(&mut m, t0, &entries(0, 1, 1));
        assert_eq!(m.create_at()[0], GroupStart::After(id(5, 0)));
        assert_eq!(
            m.create_at()
                .into_iter()
                .map(GroupStart::arg)
                .collect::<Vec<_>>(),
            vec!["5-0", "8-0"]
        );
        assert_eq!(GroupStart::Beginning.arg(), "0");
        assert_eq!(GroupStart::End.arg(), "$");
    }

    #[test]
    fn an_unreadable_reply_rereads_own_pending_entries_after_the_last_received() {
        let t0 = Instant::now();
        let mut m = machine(vec![Some(id(2, 0)), Some(id(6, 0))], t0);
        m.prepared();
        read(&mut m, t0, &entries(0, 3, BATCH as u64));
        m.unreadable_reply();
        assert_eq!(
            plan(&m, t0).from,
            ReadFrom::Pending(vec![(0, id(12, 0)), (1, id(6, 0))])
        );
        assert!(m.recovering(), "still recovering");
        read(&mut m, t0, &[]);
        assert!(read(&mut m, t0, &[]).1.caught_up);
    }

    fn noack(start: Vec<Option<EntryId>>, t0: Instant) -> Machine {
        Machine::new(&settings(60_000), start, t0, Commit::WithSnapshots)
    }

    /// A read by position after these entries of streams a and b.
    fn after(a: EntryId, b: EntryId, block: bool) -> ReadFrom {
        ReadFrom::After {
            after: vec![GroupStart::After(a), GroupStart::After(b)],
            block,
        }
    }

    #[test]
    fn with_snapshots_every_read_is_by_position_from_the_snapshots_then_the_last_received() {
        let t0 = Instant::now();
        let mut m = noack(vec![Some(id(1, 0)), Some(id(2, 0))], t0);
        m.prepared();
        assert_eq!(plan(&m, t0).from, after(id(1, 0), id(2, 0), false));
        let (_, done) = read(&mut m, t0, &two(entries(0, 5, 3), entries(1, 9, 1)));
        assert!(done.caught_up, "fewer than asked of each: the end");
        assert_eq!(
            plan(&m, t0).from,
            after(id(7, 0), id(9, 0), true),
            "waiting for more, after the last received"
        );
        assert!(plan(&m, t0).is_new() && plan(&m, t0).from.blocks());
        // A read by position leaves nothing pending anywhere: nothing is ever claimed.
        let much_later = t0 + Duration::from_secs(86_400);
        assert!(matches!(m.next(much_later), Step::Read(_)));
    }

    #[test]
    fn with_snapshots_a_reconnect_reads_on_after_the_last_entries_received() {
        let t0 = Instant::now();
        let mut m = noack(vec![Some(id(1, 0)), Some(id(2, 0))], t0);
        m.prepared();
        read(&mut m, t0, &entries(0, 5, BATCH as u64));
        assert_eq!(
            m.prepare().rewind_to,
            None,
            "groups move back at start only"
        );
        m.prepared();
        assert_eq!(
            plan(&m, t0).from,
            after(id(14, 0), id(2, 0), false),
            "still recovering: no pending list to re-read, nothing moved in Redis"
        );
        assert!(read(&mut m, t0, &[]).1.caught_up);
        assert_eq!(plan(&m, t0).from, after(id(14, 0), id(2, 0), true));
    }

    #[test]
    fn with_snapshots_an_unreadable_reply_is_read_again_from_the_same_place() {
        let t0 = Instant::now();
        let mut m = noack(vec![Some(id(2, 0)), Some(id(6, 0))], t0);
        m.prepared();
        read(&mut m, t0, &entries(0, 3, BATCH as u64));
        let before = plan(&m, t0);
        m.unreadable_reply();
        assert_eq!(plan(&m, t0), before);
        assert!(m.recovering());
    }

    #[test]
    fn with_snapshots_a_stream_without_a_position_reads_from_start_from() {
        let t0 = Instant::now();
        let mut m = noack(vec![Some(id(5, 1)), None], t0);
        assert_eq!(m.prepare().rewind_to, Some(vec![Some(id(5, 1)), None]));
        m.prepared();
        assert_eq!(
            plan(&m, t0).from,
            ReadFrom::After {
                after: vec![GroupStart::After(id(5, 1)), GroupStart::Beginning],
                block: false
            },
            "no pending entries to re-read first"
        );
    }
}
