//! The Redis stream source: reads the input streams with a consumer group and hands batches
//! to the engine over a bounded channel (a full channel slows reading: backpressure).
//!
//! At start, with state kept in snapshots, the group is first moved back (XGROUP SETID) to
//! where customer state stands in each stream (the snapshot's position, which every stream
//! has before its first read: see [`start`]), so the entries applied after it, lost with the
//! process, are delivered again; the engine's recorded positions keep anything from being
//! applied twice. Without kept state, the consumer first re-reads its own pending entries.
//! After every reconnect it re-reads its own pending entries past the last one it received
//! (entries whose delivery was lost in transit); entries already in the pipeline are never
//! read twice. A missing group (deleted, or Redis restarted without its data) is recreated at
//! the last entry received, so nothing is skipped or replayed. Once a read finds every
//! stream's end, the batch is marked `caught_up`: recovery is complete.
//!
//! With state kept, positions are committed with snapshots instead of an `XACK` per entry
//! ([`commit`]), and reading is by position: a plain `XREAD` after the last entry this
//! process received of each stream (at first, the snapshot's position). Reading moves
//! nothing shared in Redis, so a replica paused past its lease whose read returns late, or
//! that reads again before it learns it lost the lease, takes nothing from the partition's
//! new owner (a read through the group would move the group's last delivered entry past
//! entries the new owner then never gets). After a reconnect (or a reply not understood) the
//! same read is simply made again. The consumer group is told where reading stands
//! ([`position`]), so its lag stays what operators watch. The source creates the group that
//! tells how far effects are written ([`commit::written_group`], moved by the sink) with the
//! main group, and moves both back to the snapshot's position at start; per entry
//! acknowledged, it removes one left behind.
//!
//! Those decisions are made without I/O by [`machine::Machine`]; this module performs the
//! Redis commands it asks for and reports what came of them.

pub mod batch;
pub(crate) mod budget;
pub(crate) mod claim;
pub mod commit;
pub mod lag;
pub(crate) mod machine;
pub(crate) mod position;
pub(crate) mod start;

use std::sync::Arc;
use std::time::Duration;

use redis::{RedisError, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Interval, SourceSettings};
use crate::connection::{slot_groups, Connector, RedisConn};
use crate::event::EntryId;
use crate::health::{Health, Part};
use crate::metrics::SourceMetrics;
use batch::{parse_reply, Batch, StreamIdx};
use budget::InFlight;
pub use commit::Commit;
use commit::{committed_group, written_group, ReadCounts};
use machine::{GroupStart, Machine, Prepare, ReadFrom, ReadPlan, Step};

/// Pending entries acknowledged per round trip when rewinding to a snapshot.
const REWIND_ACK_CHUNK: usize = 1_000;

pub struct Source {
    settings: SourceSettings,
    connector: Connector,
    health: Arc<Health>,
    metrics: SourceMetrics,
    tx: mpsc::Sender<Batch>,
    /// Bytes read and not yet applied.
    inflight: InFlight,
    /// Per stream, where customer state stands: the group is moved back there at start and
    /// what follows is read again. `None`: this consumer's own pending entries are read
    /// again instead (state is not kept: `state.dir` is empty).
    start: Vec<Option<EntryId>>,
    /// How what is read is settled: acknowledged per entry, or committed with snapshots.
    commit: Commit,
    /// Entries read per stream, for the committer's counts ([`commit::run`]).
    counts: ReadCounts,
}

impl Source {
    pub fn new(
        settings: SourceSettings,
        connector: Connector,
        health: Arc<Health>,
        metrics: SourceMetrics,
        tx: mpsc::Sender<Batch>,
        (start, commit): (Vec<Option<EntryId>>, Commit),
    ) -> Self {
        Self {
            inflight: InFlight::new(settings.max_inflight_bytes, metrics.inflight_bytes.clone()),
            counts: ReadCounts::new(&start),
            settings,
            connector,
            health,
            metrics,
            tx,
            start,
            commit,
        }
    }

    /// The counts of entries read that [`commit::run`] needs, shared with this source.
    pub fn read_counts(&self) -> ReadCounts {
        self.counts.clone()
    }

    /// Reads until shutdown: the I/O [`Machine`] asks for, its outcomes reported back. An
    /// in-flight XREADGROUP is not abandoned (it ends within `block_ms`), so every entry
    /// delivered reaches the engine; a read by position is (it delivers nothing in Redis).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let streams = self.settings.streams.clone();
        let start = std::mem::take(&mut self.start);
        let mut machine = Machine::new(&self.settings, start, now(), self.commit);
        let mut conn: Option<RedisConn> = None;
        // An empty read at the streams' end has been sent since the last entries.
        let mut idle_told = false;
        while !shutdown.is_cancelled() {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => {
                    let Some(mut c) = self.connector.connect(&shutdown).await else {
                        break;
                    };
                    let deleted = match self.prepare(&mut c, &machine.prepare()).await {
                        Ok(deleted) => deleted,
                        Err(e) => {
                            if !self.back_off(&e, &mut conn, &shutdown).await {
                                break;
                            }
                            continue;
                        }
                    };
                    machine.prepared();
                    self.warn_about_other_consumers(&mut c).await;
                    self.health.set(Part::Source, true);
                    // Entries deleted while pending go first, to be dead-lettered: they
                    // carry nothing to apply, so their order does not matter.
                    if !deleted.is_empty() && !self.send(Batch::new(deleted), 0).await {
                        break;
                    }
                    conn.insert(c)
                }
            };
            let at = now();
            let plan = match machine.next(at) {
                Step::Claim => {
                    machine.claimed(at);
                    match self.claim(c).await {
                        Ok(Some(batch)) => {
                            let bytes = batch.entries.iter().map(|e| e.bytes() as u64).sum();
                            if !self.send(batch, bytes).await {
                                break;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            if !self.back_off(&e, &mut conn, &shutdown).await {
                                break;
                            }
                        }
                    }
                    continue;
                }
                Step::Read(plan) => plan,
            };
            let reply = match self.commit {
                Commit::PerEntry => self.read(c, &plan).await,
                // A read by position hands nothing over in Redis: one still waiting at
                // shutdown (or a hand-over) is left, and stopping takes no `block_ms`.
                Commit::WithSnapshots => tokio::select! {
                    reply = self.read(c, &plan) => reply,
                    () = shutdown.cancelled() => break,
                },
            };
            match reply {
                Ok(reply) => {
                    self.connector.succeeded();
                    let entries = match parse_reply(reply, &streams) {
                        Ok(entries) => entries,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot understand a read reply; reading its entries again");
                            machine.unreadable_reply();
                            if !self.connector.pause(&shutdown).await {
                                break;
                            }
                            continue;
                        }
                    };
                    let done = machine.read_done(&plan, &entries);
                    if self.commit == Commit::WithSnapshots && plan.is_new() {
                        self.counts.record(&entries);
                    }
                    let mut batch = Batch::new(entries);
                    batch.caught_up = done.caught_up;
                    batch.at_end = done.at_end;
                    // The first empty read at the end of a stretch goes too: it tells the
                    // engine that everything written has been read.
                    let idle = batch.entries.is_empty() && done.at_end;
                    let worth_sending =
                        !batch.entries.is_empty() || batch.caught_up || (idle && !idle_told);
                    idle_told = idle;
                    if worth_sending && !self.send(batch, done.bytes).await {
                        break; // the engine is gone: shutting down
                    }
                }
                Err(e) if e.code() == Some("NOGROUP") => {
                    tracing::warn!(
                        group = %self.settings.group,
                        "consumer group missing (stream or group deleted, or Redis restarted without its data); recreating it at the last entry received"
                    );
                    if let Err(e) = self.create_groups(c, &machine.create_at()).await {
                        if !self.back_off(&e, &mut conn, &shutdown).await {
                            break;
                        }
                    }
                }
                Err(e) => {
                    if !self.back_off(&e, &mut conn, &shutdown).await {
                        break;
                    }
                }
            }
        }
        self.health.set(Part::Source, false);
        tracing::info!("source stopped reading");
    }

    /// Prepares a new connection as `prepare` says: creates the missing groups, and at
    /// start moves them back to the durable positions. Returns the entries found deleted
    /// while pending, to be dead-lettered.
    async fn prepare(
        &self,
        c: &mut RedisConn,
        prepare: &Prepare,
    ) -> Result<Vec<batch::Entry>, RedisError> {
        self.create_groups(c, &prepare.create_at).await?;
        if self.commit == Commit::PerEntry && prepare.rewind_to.is_some() {
            self.forget_written(c).await?;
        }
        match &prepare.rewind_to {
            Some(positions) => self.rewind_groups(c, positions).await,
            None => Ok(Vec::new()),
        }
    }

    /// Hands `batch` (`bytes` of entries) to the engine once its bytes fit the in-flight
    /// budget; `false` when the engine is gone.
    async fn send(&self, mut batch: Batch, bytes: u64) -> bool {
        batch.held = Some(self.inflight.hold(bytes).await);
        self.tx.send(batch).await.is_ok()
    }

    /// One read as `plan` says: own pending entries of some streams (no blocking), new
    /// entries of every stream (XREADGROUP), or what follows every stream's position
    /// (XREAD). On a Redis Cluster, streams of different slots are read in one command per
    /// slot ([`Self::read_per_slot`]).
    async fn read(&self, c: &mut RedisConn, plan: &ReadPlan) -> Result<Value, RedisError> {
        let wanted: Vec<(usize, String)> = match &plan.from {
            ReadFrom::New { .. } => (0..self.settings.streams.len())
                .map(|i| (i, ">".to_string()))
                .collect(),
            ReadFrom::Pending(pending) => pending
                .iter()
                .map(|(i, after)| (*i, after.to_string()))
                .collect(),
            ReadFrom::After { after, .. } => after
                .iter()
                .enumerate()
                .map(|(i, after)| (i, after.arg()))
                .collect(),
        };
        let block = plan.from.blocks();
        if c.is_cluster() {
            let names: Vec<&str> = wanted
                .iter()
                .map(|(i, _)| self.settings.streams[*i].as_str())
                .collect();
            let groups = slot_groups(&names);
            if groups.len() > 1 {
                let parts = groups
                    .iter()
                    .map(|g| g.iter().map(|&k| wanted[k].clone()).collect())
                    .collect();
                return self.read_per_slot(c, plan.count, parts, block).await;
            }
        }
        self.read_cmd(plan.count, &wanted, block)
            .query_async(c)
            .await
    }

    /// The read of `wanted` (stream index, read after), COUNT `count`, blocking for
    /// `source.block_ms` when `block`: XREADGROUP per entry acknowledged, XREAD by position
    /// when positions are committed with snapshots.
    fn read_cmd(&self, count: usize, wanted: &[(usize, String)], block: bool) -> redis::Cmd {
        let s = &self.settings;
        let mut cmd = match self.commit {
            Commit::PerEntry => {
                let mut cmd = redis::cmd("XREADGROUP");
                cmd.arg("GROUP").arg(&s.group).arg(&s.consumer);
                cmd
            }
            Commit::WithSnapshots => redis::cmd("XREAD"),
        };
        cmd.arg("COUNT").arg(count);
        if block {
            cmd.arg("BLOCK").arg(s.block.as_millis());
        }
        cmd.arg("STREAMS");
        for (i, _) in wanted {
            cmd.arg(&s.streams[*i]);
        }
        for (_, after) in wanted {
            cmd.arg(after);
        }
        cmd
    }

    /// A read of streams in several cluster slots, one read per slot, all at once; the
    /// replies are joined as one reply naming every stream. A blocking read first reads
    /// every slot without blocking, and only when that finds nothing blocks on every slot,
    /// waiting for all of them: a read is never abandoned (an XREADGROUP's entries would be
    /// delivered to this consumer unseen), so with nothing to read, an entry that arrives
    /// waits until the other slots' reads end, at most `source.block_ms`. Entries one slot
    /// delivered are returned even when another slot's read failed; its error comes back at
    /// the next read.
    async fn read_per_slot(
        &self,
        c: &RedisConn,
        count: usize,
        parts: Vec<Vec<(usize, String)>>,
        block: bool,
    ) -> Result<Value, RedisError> {
        let first = self.read_parts(c, count, &parts, false).await;
        let reply = if block && first.entries == 0 && first.error.is_none() {
            self.read_parts(c, count, &parts, true).await
        } else {
            first
        };
        match reply.error {
            Some(e) if reply.entries == 0 => Err(e),
            _ => Ok(Value::Array(reply.streams)),
        }
    }

    async fn read_parts(
        &self,
        c: &RedisConn,
        count: usize,
        parts: &[Vec<(usize, String)>],
        block: bool,
    ) -> SlotReads {
        let mut reads = tokio::task::JoinSet::new();
        for (k, part) in parts.iter().enumerate() {
            let cmd = self.read_cmd(count, part, block);
            let mut c = c.clone();
            reads.spawn(async move { (k, cmd.query_async::<Value>(&mut c).await) });
        }
        let mut replies: Vec<Option<Value>> = vec![None; parts.len()];
        let mut out = SlotReads::default();
        while let Some(done) = reads.join_next().await {
            match done {
                Ok((k, Ok(v))) => replies[k] = Some(v),
                Ok((_, Err(e))) => {
                    out.error.get_or_insert(e);
                }
                Err(e) => {
                    out.error
                        .get_or_insert(RedisError::from(std::io::Error::other(format!(
                            "a read of one slot's streams failed: {e}"
                        ))));
                }
            }
        }
        for reply in replies.into_iter().flatten() {
            let pairs = match reply {
                Value::Array(items) => items,
                Value::Map(pairs) => pairs
                    .into_iter()
                    .map(|(k, v)| Value::Array(vec![k, v]))
                    .collect(),
                _ => continue,
            };
            for pair in pairs {
                if let Value::Array(kv) = &pair {
                    if let Some(Value::Array(entries)) = kv.get(1) {
                        out.entries += entries.len();
                    }
                }
                out.streams.push(pair);
            }
        }
        out
    }

    /// Customer state lives in this process, so each group must have one consumer: a second
    /// one would see only part of each customer's events. A former name of this replica is
    /// harmless: its idle pending entries are claimed and the consumer removed. Reading by
    /// position, this process is no consumer at all, and one with nothing pending is removed.
    async fn warn_about_other_consumers(&self, c: &mut RedisConn) {
        for stream in &self.settings.streams {
            let reply: Result<Value, RedisError> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(stream)
                .arg(&self.settings.group)
                .query_async(c)
                .await;
            let Ok(reply) = reply else { continue };
            for other in lag::other_consumers(&reply, &self.settings.consumer) {
                if self.commit == Commit::WithSnapshots && other.pending == 0 {
                    // Reading by position uses no consumer: one with nothing pending is
                    // left by a run that read through the group (an earlier version, or
                    // this replica's own name then).
                    let removed: Result<i64, RedisError> = redis::cmd("XGROUP")
                        .arg("DELCONSUMER")
                        .arg(stream)
                        .arg(&self.settings.group)
                        .arg(&other.name)
                        .query_async(c)
                        .await;
                    if removed.is_ok() {
                        tracing::info!(stream, group = %self.settings.group, consumer = %other.name, "removed a consumer with nothing pending: reads are by position");
                    }
                    continue;
                }
                tracing::warn!(
                    stream,
                    group = %self.settings.group,
                    consumer = %other.name,
                    pending = other.pending,
                    idle_ms = other.idle_ms,
                    "another consumer is in churnd's group: run one churnd per group (state is per process); a former name of this replica is claimed from and removed after source.claim_idle_ms"
                );
            }
        }
    }

    /// Creates the consumer group on every stream that lacks it (and the stream itself),
    /// at `at` (per stream, see [`Machine::create_at`]).
    /// With positions committed with snapshots, the [`written_group`] too, at the same
    /// place: nothing read since is written yet, or it was lost with Redis's data.
    async fn create_groups(&self, c: &mut RedisConn, at: &[GroupStart]) -> Result<(), RedisError> {
        let written = written_group(&self.settings.group);
        for (stream, at) in self.settings.streams.iter().zip(at) {
            start::create_group(c, stream, &self.settings.group, &at.arg()).await?;
            if self.commit == Commit::WithSnapshots {
                start::create_group(c, stream, &written, &at.arg()).await?;
            }
        }
        Ok(())
    }

    /// Per entry acknowledged, removes the [`written_group`] a run that committed positions
    /// with snapshots left: the main group's pending count tells what is written, and a
    /// group standing still would tell tools waiting on it that nothing is.
    async fn forget_written(&self, c: &mut RedisConn) -> Result<(), RedisError> {
        let written = written_group(&self.settings.group);
        for stream in &self.settings.streams {
            let removed: Result<i64, RedisError> = redis::cmd("XGROUP")
                .arg("DESTROY")
                .arg(stream)
                .arg(&written)
                .query_async(c)
                .await;
            let removed = match removed {
                Ok(removed) => removed,
                // No such stream (yet): no such group either.
                Err(e)
                    if e.kind()
                        == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
                {
                    0
                }
                Err(e) => return Err(e),
            };
            if removed > 0 {
                tracing::info!(stream, group = %written, "removed the written group: entries are acknowledged per entry");
            }
        }
        Ok(())
    }

    /// Records a failed operation (dropping the connection if it is unusable) and waits
    /// before the next try; `false` if shutdown came first.
    async fn back_off(
        &mut self,
        e: &RedisError,
        conn: &mut Option<RedisConn>,
        shutdown: &CancellationToken,
    ) -> bool {
        if self.connector.failed(e) {
            *conn = None;
            self.health.set(Part::Source, false);
        }
        self.connector.pause(shutdown).await
    }

    /// Claims the entries stranded on consumers that are gone, as a batch.
    async fn claim(&self, c: &mut RedisConn) -> Result<Option<Batch>, RedisError> {
        let Some(min_idle) = self.settings.claim_idle else {
            return Ok(None);
        };
        let (entries, reports) = claim::claim_stranded(c, &self.settings, min_idle).await?;
        for r in &reports {
            if r.entries > 0 {
                tracing::warn!(stream = %r.stream, consumer = %r.consumer, entries = r.entries, "claimed entries left pending by a consumer that is gone");
            }
            if r.removed {
                tracing::info!(stream = %r.stream, consumer = %r.consumer, "removed an idle consumer with nothing pending from the group");
            }
        }
        if entries.is_empty() {
            return Ok(None);
        }
        self.metrics.entries_claimed.inc_by(entries.len() as u64);
        let mut batch = Batch::new(entries);
        batch.claimed = true;
        Ok(Some(batch))
    }

    /// Moves the groups back before the first reads. A stream customer state has a
    /// position for (the snapshot's, or where reading started, see [`start`]): the group
    /// moves back to it (forward, if Redis came back from older data), so what followed is
    /// delivered again, in order; entries up to it that are still pending (on any consumer)
    /// were applied and their effects written before the snapshot, so they are
    /// acknowledged. With positions committed with snapshots, the entries after it still
    /// pending (left by a run that acknowledged per entry) are acknowledged too: they are
    /// delivered again without a pending entries list. A stream without one (state is not
    /// kept) is left as it is: it starts with this consumer's own pending entries. Returns
    /// the entries found deleted while pending.
    async fn rewind_groups(
        &self,
        c: &mut RedisConn,
        applied: &[Option<EntryId>],
    ) -> Result<Vec<batch::Entry>, RedisError> {
        let group = &self.settings.group;
        let mut deleted = Vec::new();
        for (i, (stream, position)) in self.settings.streams.iter().zip(applied).enumerate() {
            let Some(position) = *position else {
                continue;
            };
            let from = position;
            let entries_read = self.entries_read_at(c, stream, position).await?;
            let position = position.to_string();
            if self.commit == Commit::WithSnapshots {
                // Effects up to the snapshot's position are written; what follows is
                // written again as it is replayed.
                let written = written_group(group);
                start::create_group(c, stream, &written, &position).await?;
                let mut setid = redis::cmd("XGROUP");
                setid.arg("SETID").arg(stream).arg(&written).arg(&position);
                if let Some(n) = entries_read {
                    setid.arg("ENTRIESREAD").arg(n);
                }
                setid.query_async::<()>(c).await?;
            }
            let mut setid = redis::cmd("XGROUP");
            setid.arg("SETID").arg(stream).arg(group).arg(&position);
            if let Some(n) = entries_read {
                setid.arg("ENTRIESREAD").arg(n);
            }
            setid.query_async::<()>(c).await?;
            let mut acknowledged = self.acknowledge_pending(c, stream, &position).await?;
            let gone =
                claim::deleted_while_pending(c, &self.settings, i as StreamIdx, from).await?;
            if !gone.is_empty() {
                tracing::warn!(stream, entries = gone.len(), "entries pending since before the restart were deleted from the stream; dead-lettering them as entry_deleted");
            }
            deleted.extend(gone);
            if self.commit == Commit::WithSnapshots {
                acknowledged += self.acknowledge_pending(c, stream, "+").await?;
            }
            tracing::info!(stream, %group, %position, acknowledged, "replaying from the snapshot's position");
        }
        Ok(deleted)
    }

    /// Acknowledges the group's pending entries of `stream` up to `end` (an ID or `+`);
    /// how many there were.
    async fn acknowledge_pending(
        &self,
        c: &mut RedisConn,
        stream: &str,
        end: &str,
    ) -> Result<usize, RedisError> {
        let group = &self.settings.group;
        let mut acknowledged = 0;
        loop {
            let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                .arg(stream)
                .arg(group)
                .arg("-")
                .arg(end)
                .arg(REWIND_ACK_CHUNK)
                .query_async(c)
                .await?;
            if pending.is_empty() {
                return Ok(acknowledged);
            }
            let ids: Vec<&str> = pending.iter().map(|(id, ..)| id.as_str()).collect();
            redis::cmd("XACK")
                .arg(stream)
                .arg(group)
                .arg(&ids)
                .query_async::<()>(c)
                .await?;
            acknowledged += ids.len();
        }
    }

    /// Redis's count of the entries of `stream` up to `position`, as the committed group
    /// holds it when it stands there (see [`commit`]): given to the group moved back there,
    /// its lag is known from the first read on.
    async fn entries_read_at(
        &self,
        c: &mut RedisConn,
        stream: &str,
        position: EntryId,
    ) -> Result<Option<i64>, RedisError> {
        if self.commit != Commit::WithSnapshots {
            return Ok(None);
        }
        let groups: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(c)
            .await?;
        Ok(
            lag::group_info(&groups, &committed_group(&self.settings.group))
                .filter(|g| g.last_delivered == Some(position))
                .and_then(|g| g.entries_read),
        )
    }
}

/// The joined replies of reads of several slots' streams.
#[derive(Default)]
struct SlotReads {
    /// `[name, entries]` per stream, as one read's RESP2 reply has them.
    streams: Vec<Value>,
    /// How many entries they hold.
    entries: usize,
    /// The first read that failed, if any.
    error: Option<RedisError>,
}

/// The clock [`Machine`] is given: tokio's, so that tests pausing time pause it too.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Response timeout of the reading connection: a blocked read must not time out.
pub(crate) fn read_timeout(settings: &SourceSettings, response_timeout: Interval) -> Duration {
    settings.block.get() + response_timeout.get()
}
