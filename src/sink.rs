//! The Redis sink: writes each batch's effects (tasks of every kind, dead letters), and only once
//! they are written acknowledges the batch's entries (when state is not kept: with state kept,
//! positions are committed with snapshots instead, see [`crate::source::commit`], and the sink
//! moves each stream's [`written_group`] to the last entry written, one `XGROUP SETID` per
//! stream and write: what tools and tests wait on). A write that fails is retried until it
//! succeeds: the engine waits (the bounded channel fills, the source stops reading) rather
//! than lose or skip anything.
//!
//! Every effect is written by a Lua script that writes it only if its deterministic ID has not
//! been written before (a guard key with an expiry, [`guards`]), so retries, redeliveries and
//! replays never produce a second task for the same episode or a second dead letter for the
//! same entry. One call of the script writes up to [`calls::MAX_ENTRIES_PER_CALL`] entries of
//! one stream; a batch's calls go in one pipeline (`EVALSHA`: the script is loaded once per
//! connection, and again when Redis answers that it does not know it). Batches that queue up
//! while a write is in flight go together in the next write (all their effects, then all
//! their acknowledgements): a sink that falls behind makes fewer, fuller calls and round
//! trips, one that keeps up writes each batch as it comes.
//!
//! Effects and acknowledgements are two round trips on purpose: a pipeline (or MULTI/EXEC)
//! does not stop at a failed command, so a write failing (a key of the wrong type) would not
//! stop an XACK queued beside it. The calls of a batch are not one transaction: each is
//! atomic, a call that failed is sent again, and the guards make the order in which they
//! succeed irrelevant.

pub(crate) mod backlog;
mod calls;
pub(crate) mod guards;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{FromRedisValue, RedisError, ServerErrorKind, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::connection::{Connector, RedisConn};
use crate::daemon::Applied;
use crate::decide::Group;
use crate::decide::{Task, TaskKind, TasksSettings};
use crate::engine::Effects;
use crate::event::EntryId;
use crate::health::{Health, Part};
use crate::metrics::{DeadLettered, SinkMetrics};
use crate::source::commit::written_group;
use crate::source::start::create_group;
use crate::source::Commit;

/// Where effects go, resolved from the settings.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub input_streams: Vec<String>,
    pub group: String,
    pub dead_letter_stream: String,
    pub dead_letter_max_len: u64,
    pub dead_letter_dedup_ttl_secs: u64,
    pub task_stream: String,
    pub control_stream: String,
    pub task_max_len: u64,
    pub dedup_ttl_secs: u64,
    /// Where outcomes go, and that stream's length cap.
    pub outcome_stream: String,
    pub outcome_max_len: u64,
    /// The other kinds' streams and length cap.
    pub tasks: TasksSettings,
    /// With nothing to write for this long, the sink checks its connection (PING), so that
    /// `churnd_redis_connected{role="sink"}` and readiness tell a Redis that stopped
    /// answering even when no effects come (`source.lag_poll_ms`).
    pub probe_interval: Duration,
    /// Whether entries are acknowledged (`XACK`) once their effects are written: only when
    /// state is not kept ([`Commit::PerEntry`]).
    pub acknowledge: bool,
    /// Under `partitions.ownership = leases`: whose writes these are. Every write is
    /// refused unless each partition still shows this replica's token where the script
    /// checks it. `None`: writes are not fenced.
    pub fence: Option<Fence>,
}

/// The partitions a sink writes for under leases, and how its writes are checked: against
/// the fence record beside each output stream ([`crate::ownership::fence`]), and on a single
/// Redis against the leases themselves too (which a cluster keeps out of the script's
/// reach): that also refuses the writes of a replica whose lease expired before anyone took
/// it, and those of a replica beside an older churnd that raises no fences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The consumer group: it names the fence records.
    pub group: String,
    /// The partitions, each with its lease and the token this replica holds it by.
    pub leases: Vec<Lease>,
    /// Whether the leases are checked too (a single Redis).
    pub check_leases: bool,
}

/// A partition's lease key and the token its holder writes with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub partition: u16,
    pub key: String,
    pub token: String,
}

impl From<&Settings> for SinkSettings {
    fn from(s: &Settings) -> Self {
        Self {
            input_streams: s.input_streams(),
            group: s.source.group.clone(),
            dead_letter_stream: s.dead_letter.stream.clone(),
            dead_letter_max_len: s.dead_letter.max_len.get(),
            dead_letter_dedup_ttl_secs: s.dead_letter.dedup_ttl_secs.get(),
            task_stream: s.winback.stream.clone(),
            control_stream: s.winback.control_stream.clone(),
            task_max_len: s.winback.max_len.get(),
            dedup_ttl_secs: u64::from(s.winback.dedup_ttl_days.get()) * 86_400,
            outcome_stream: s.outcomes.stream.clone(),
            outcome_max_len: s.outcomes.max_len.get(),
            tasks: s.tasks.clone(),
            probe_interval: s.source.lag_poll.get(),
            acknowledge: Commit::of(s) == Commit::PerEntry,
            fence: None,
        }
    }
}

impl SinkSettings {
    fn task_stream(&self, group: Group) -> &str {
        match group {
            Group::Treatment => &self.task_stream,
            Group::Control => &self.control_stream,
        }
    }

    /// The stream a task goes to and that stream's length cap: control-group tasks go to
    /// their kind's control stream, so that no consumer of the task streams acts on them.
    pub(crate) fn stream_of(&self, task: &Task) -> (&str, u64) {
        self.stream_of_kind(task.kind(), task.group)
    }

    /// The stream the tasks of `kind` in `group` go to (their cancels too), and its cap.
    pub(crate) fn stream_of_kind(&self, kind: TaskKind, group: Group) -> (&str, u64) {
        let care_max_len = self.tasks.max_len.get();
        match (kind, group) {
            (TaskKind::Winback, group) => (self.task_stream(group), self.task_max_len),
            (_, Group::Control) => (&self.tasks.control_stream, care_max_len),
            (kind, Group::Treatment) => (self.tasks.stream(kind), care_max_len),
        }
    }

    /// The script calls that write `fx`'s tasks and dead letters, in the order the sink sends
    /// them: per output stream, at most [`calls::MAX_ENTRIES_PER_CALL`] entries each, every
    /// key of a call in its stream's Redis Cluster slot. Each replies with one character per
    /// entry, `1` written or `0` written before. Safe to repeat: every write is guarded by
    /// its ID. `check_old_names`: also honour guards under the names used before the hash tag
    /// (see [`guards`]). The script must be loaded ([`load_effects_script`]).
    pub fn effect_calls(&self, fx: &Effects, check_old_names: bool) -> Vec<redis::Cmd> {
        calls::calls(self, fx, check_old_names)
            .into_iter()
            .map(|c| c.cmd)
            .collect()
    }

    /// Every output stream: the dead-letter stream, each task stream and the outcomes.
    pub fn output_streams(&self) -> Vec<&str> {
        let care = TaskKind::CARE.map(|kind| self.tasks.stream(kind));
        let mut keys: Vec<&str> = [
            self.dead_letter_stream.as_str(),
            &self.task_stream,
            &self.control_stream,
            &self.tasks.control_stream,
            &self.outcome_stream,
        ]
        .into_iter()
        .chain(care)
        .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// The acknowledgements of `fx`'s entries, one XACK per stream; `None` when there are none
    /// or entries are not acknowledged.
    pub fn acks(&self, fx: &Effects) -> Option<redis::Pipeline> {
        if fx.acks.is_empty() || !self.acknowledge {
            return None;
        }
        let mut p = redis::pipe();
        for (i, stream) in self.input_streams.iter().enumerate() {
            let ids: Vec<String> = fx
                .acks
                .iter()
                .filter(|(s, _)| usize::from(*s) == i)
                .map(|(_, id)| id.to_string())
                .collect();
            if !ids.is_empty() {
                p.cmd("XACK").arg(stream).arg(&self.group).arg(ids).ignore();
            }
        }
        Some(p)
    }

    /// With positions committed with snapshots (entries are not acknowledged): where each
    /// input stream's [`written_group`] moves once `fx`'s effects are written, the last of
    /// `fx`'s entries in it, for the streams where that is past `marked` (per stream, where
    /// the sink last moved it). Empty when entries are acknowledged.
    pub(crate) fn written_moves(&self, fx: &Effects, marked: &[EntryId]) -> Vec<(usize, EntryId)> {
        if self.acknowledge {
            return Vec::new();
        }
        let mut last: Vec<Option<EntryId>> = vec![None; self.input_streams.len()];
        for &(stream, id) in &fx.acks {
            if let Some(l) = last.get_mut(usize::from(stream)) {
                *l = (*l).max(Some(id));
            }
        }
        last.into_iter()
            .enumerate()
            .filter_map(|(i, id)| {
                let id = id?;
                (marked.get(i).is_none_or(|&m| id > m)).then_some((i, id))
            })
            .collect()
    }

    /// One `XGROUP SETID` of [`written_group`] per move of [`Self::written_moves`].
    fn written_setids(&self, moves: &[(usize, EntryId)]) -> redis::Pipeline {
        let group = written_group(&self.group);
        let mut p = redis::pipe();
        for &(i, id) in moves {
            p.cmd("XGROUP")
                .arg("SETID")
                .arg(&self.input_streams[i])
                .arg(&group)
                .arg(id.to_string())
                .ignore();
        }
        p
    }

    /// Output keys that exist but are not streams: writes to them would fail, so the sink
    /// does not report ready until they are fixed.
    async fn misplaced_keys(&self, c: &mut RedisConn) -> Result<Vec<String>, RedisError> {
        let mut bad = Vec::new();
        for key in self.output_streams() {
            let kind: String = redis::cmd("TYPE").arg(key).query_async(c).await?;
            if kind != "stream" && kind != "none" {
                bad.push(format!("{key} is a {kind}"));
            }
        }
        Ok(bad)
    }
}

/// At most this many batches waiting for the sink are written together.
const MAX_MERGED_BATCHES: u64 = 8;

pub struct Sink {
    settings: SinkSettings,
    connector: Connector,
    health: Arc<Health>,
    metrics: SinkMetrics,
    rx: mpsc::Receiver<Effects>,
    /// How many effects (as received) are written: snapshots wait for it.
    written: watch::Sender<u64>,
    /// Whether writes still check guards under their old names (until they are moved).
    old_names: guards::OldNames,
    /// The current connection, for the pass that moves old guard names.
    conns: watch::Sender<Option<RedisConn>>,
    /// Where the entries whose effects are written are published, if anyone asked.
    written_positions: Option<watch::Sender<Applied>>,
    /// Under `partitions.ownership = leases`: what a refused (fenced) write is told to.
    fencing: Option<Fencing>,
    /// Per input stream, where this sink last moved its [`written_group`] (with positions
    /// committed with snapshots): it only moves forward.
    marked: Vec<EntryId>,
}

/// What the sink does when Redis refuses a write because a lease of [`SinkSettings::fence`]
/// is no longer held: it counts the refused calls, stops writing (nothing of the batch is
/// acknowledged, and no snapshot that covers it can be committed) and cancels `fenced`, so
/// that the daemon stops this set of partitions and starts again from their snapshots.
pub struct Fencing {
    pub refused: prometheus::IntCounter,
    pub fenced: CancellationToken,
}

impl Sink {
    pub fn new(
        settings: SinkSettings,
        connector: Connector,
        health: Arc<Health>,
        metrics: SinkMetrics,
        rx: mpsc::Receiver<Effects>,
        written: watch::Sender<u64>,
    ) -> Self {
        Self {
            settings,
            connector,
            health,
            metrics,
            rx,
            written,
            old_names: guards::OldNames::pending(),
            conns: watch::channel(None).0,
            written_positions: None,
            fencing: None,
            marked: Vec::new(),
        }
    }

    /// Publishes to `tx`, per input stream, the last entry whose effects are written (and,
    /// per entry acknowledged, acknowledged): what `XACK` tells Redis, for a program that
    /// embeds the daemon, whatever the scheme.
    pub fn with_written_positions(mut self, tx: Option<watch::Sender<Applied>>) -> Self {
        self.written_positions = tx;
        self
    }

    /// Reports refused writes (see [`Fencing`]); meant for settings with a
    /// [`SinkSettings::fence`].
    pub fn with_fencing(mut self, fencing: Fencing) -> Self {
        self.fencing = Some(fencing);
        self
    }

    /// Writes effects until the engine closes the channel. `abort` ends retrying (after the
    /// drain timeout); entries whose effects were not written stay pending and are
    /// redelivered to this consumer on its next start.
    pub async fn run(mut self, abort: CancellationToken) {
        let streams = self
            .settings
            .output_streams()
            .into_iter()
            .map(String::from)
            .collect();
        let mover = tokio::spawn(guards::move_old_names(
            streams,
            self.old_names.clone(),
            self.conns.subscribe(),
        ));
        let mut conn = None;
        // Connect before the first write (readiness includes being able to write), unless
        // effects or the end of the input come first.
        let mut next = tokio::select! {
            c = connect(&mut self.connector, &self.settings, &self.health, (&self.conns, &self.old_names), &abort) => {
                conn = c;
                self.next_effects(&mut conn, &abort).await
            }
            fx = self.rx.recv() => fx,
        };
        while let Some(mut fx) = next {
            // Batches already waiting behind this one go with it: their effects in the same
            // calls, their acknowledgements in the same XACKs, all after all the effects.
            let mut batches = 1;
            while batches < MAX_MERGED_BATCHES {
                let Ok(more) = self.rx.try_recv() else {
                    break;
                };
                merge(&mut fx, more);
                batches += 1;
            }
            if !fx.is_empty() && !self.write(&fx, &mut conn, &abort).await {
                if self
                    .fencing
                    .as_ref()
                    .is_some_and(|f| f.fenced.is_cancelled())
                {
                    break;
                }
                tracing::error!(
                    tasks = fx.tasks.len(),
                    dead_letters = fx.dead_letters.len(),
                    entries = fx.acks.len(),
                    "gave up writing effects at shutdown; their entries stay pending and will be redelivered"
                );
                break;
            }
            self.written.send_modify(|n| *n += batches);
            if let Some(tx) = &self.written_positions {
                publish_written(tx, &fx);
            }
            next = self.next_effects(&mut conn, &abort).await;
        }
        mover.abort();
        self.health.set(Part::Sink, false);
    }

    /// The next effects to write; while none come, the connection is checked every
    /// `probe_interval` (a check in progress gives way to effects that arrive).
    async fn next_effects(
        &mut self,
        conn: &mut Option<RedisConn>,
        abort: &CancellationToken,
    ) -> Option<Effects> {
        loop {
            tokio::select! {
                fx = self.rx.recv() => return fx,
                () = tokio::time::sleep(self.settings.probe_interval) => {}
            }
            let probe = probe(
                &mut self.connector,
                &self.settings,
                &self.health,
                (&self.conns, &self.old_names),
                conn,
                abort,
            );
            tokio::select! {
                fx = self.rx.recv() => return fx,
                () = probe => {}
            }
        }
    }

    /// Writes one batch's effects, then acknowledges its entries, retrying each until done;
    /// `false` if aborted first.
    async fn write(
        &mut self,
        fx: &Effects,
        conn: &mut Option<RedisConn>,
        abort: &CancellationToken,
    ) -> bool {
        let started = Instant::now();
        if !self.write_effects(fx, conn, abort).await {
            return false;
        }
        if let Some(acks) = self.settings.acks(fx) {
            if self.execute::<()>(&acks, conn, abort).await.is_none() {
                return false;
            }
            self.metrics.entries_acked.inc_by(fx.acks.len() as u64);
        }
        let moves = self.settings.written_moves(fx, &self.marked);
        if !moves.is_empty() && !self.mark_written(&moves, conn, abort).await {
            return false;
        }
        self.metrics
            .sink_seconds
            .observe(started.elapsed().as_secs_f64());
        true
    }

    /// Moves the [`written_group`] of each stream in `moves` (one round trip), retrying until
    /// done; a group that is missing (deleted, or Redis restarted without its data) is
    /// created there. `false` if aborted first.
    async fn mark_written(
        &mut self,
        moves: &[(usize, EntryId)],
        conn: &mut Option<RedisConn>,
        abort: &CancellationToken,
    ) -> bool {
        let setids = self.settings.written_setids(moves);
        let group = written_group(&self.settings.group);
        loop {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match self.connect(abort).await {
                    Some(c) => conn.insert(c),
                    None => return false,
                },
            };
            let mut result = setids.query_async::<()>(c).await;
            if matches!(&result, Err(e) if no_group(e)) {
                result = async {
                    for &(i, id) in moves {
                        let stream = &self.settings.input_streams[i];
                        let at = id.to_string();
                        if !create_group(c, stream, &group, &at).await? {
                            setids_one(stream, &group, &at).query_async::<()>(c).await?;
                        }
                    }
                    Ok::<(), RedisError>(())
                }
                .await;
            }
            match result {
                Ok(()) => {
                    self.connector.succeeded();
                    self.health.set(Part::Sink, true);
                    for &(i, id) in moves {
                        if self.marked.len() <= i {
                            self.marked.resize(i + 1, EntryId::default());
                        }
                        self.marked[i] = id;
                    }
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, group, "cannot move the written group to the entries whose effects are written; retrying");
                    if self.failed(&e) {
                        *conn = None;
                    }
                    self.health.set(Part::Sink, false);
                    if !self.connector.pause(abort).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Sends the script calls of `fx`'s effects in one pipeline until each has succeeded
    /// once, counting what each wrote as it succeeds; `false` if aborted first. A call Redis
    /// does not know the script for (restarted, or `SCRIPT FLUSH`) is sent again at once
    /// after loading it; other failures wait for the backoff, and only the calls that failed
    /// are sent again.
    async fn write_effects(
        &mut self,
        fx: &Effects,
        conn: &mut Option<RedisConn>,
        abort: &CancellationToken,
    ) -> bool {
        let mut done: Vec<bool> = Vec::new();
        let mut loaded = false;
        loop {
            // Connected first: connecting tells whether old guard names need checking.
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match self.connect(abort).await {
                    Some(c) => conn.insert(c),
                    None => return false,
                },
            };
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            let mut sent = Vec::new();
            let calls = calls::calls(&self.settings, fx, self.old_names.pending_check());
            done.resize(calls.len(), false);
            for (i, call) in calls.into_iter().enumerate() {
                if !done[i] {
                    pipe.add_command(call.cmd);
                    sent.push((i, call.effects));
                }
            }
            if sent.is_empty() {
                return true;
            }
            // The first failure of this attempt, logged and counted once.
            let mut failure: Option<RedisError> = None;
            let mut unknown_script = false;
            let mut refused = 0u64;
            match pipe.query_async::<Vec<Value>>(c).await {
                Ok(replies) if replies.len() == sent.len() => {
                    for ((i, effects), reply) in sent.iter().zip(&replies) {
                        if let Some(written) = calls::outcomes(reply, effects.len()) {
                            for (effect, written) in effects.iter().zip(written) {
                                self.record(fx, *effect, written);
                            }
                            done[*i] = true;
                            continue;
                        }
                        let e = match reply {
                            Value::ServerError(e) => RedisError::from(e.clone()),
                            other => unexpected(other),
                        };
                        if e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) {
                            unknown_script = true;
                        } else if e.code() == Some("FENCED") {
                            refused += 1;
                            failure.get_or_insert(e);
                        } else {
                            failure.get_or_insert(e);
                        }
                    }
                }
                Ok(replies) => failure = Some(unexpected(&Value::Array(replies))),
                Err(e) => failure = Some(e),
            }
            if refused > 0 {
                if let Some(fencing) = &self.fencing {
                    fencing.refused.inc_by(refused);
                    fencing.fenced.cancel();
                }
                tracing::error!(
                    calls = refused,
                    error = ?failure,
                    "effects refused: a partition's lease is no longer this replica's; stopping these partitions (their new owner replays what this batch held)"
                );
                return false;
            }
            let failure = match (failure, unknown_script) {
                (None, false) => {
                    self.connector.succeeded();
                    self.health.set(Part::Sink, true);
                    return true;
                }
                (None, true) if !loaded => {
                    tracing::info!("Redis does not know the effects script (restarted, or SCRIPT FLUSH): loading it");
                    loaded = true;
                    match load_effects_script(c).await {
                        Ok(()) => continue,
                        Err(e) => Some(e),
                    }
                }
                (Some(e), _) => Some(e),
                (None, true) => None,
            };
            if let Some(e) = failure {
                if self.failed(&e) {
                    *conn = None;
                }
            }
            // Failed, or the script went missing again right after it was loaded: wait.
            loaded = false;
            self.health.set(Part::Sink, false);
            if !self.connector.pause(abort).await {
                return false;
            }
        }
    }

    /// Records a failed write (logs it, counts it); whether to reconnect.
    fn failed(&self, e: &RedisError) -> bool {
        if e.code() == Some("WRONGTYPE") {
            tracing::error!(
                error = %e,
                "an output stream's key holds another type; delete or rename it, or configure other streams"
            );
        }
        self.connector.failed(e)
    }

    /// Runs `pipeline` until it succeeds, reconnecting as needed; `None` if aborted first.
    /// The sink is not ready while its writes fail.
    async fn execute<T: FromRedisValue>(
        &mut self,
        pipeline: &redis::Pipeline,
        conn: &mut Option<RedisConn>,
        abort: &CancellationToken,
    ) -> Option<T> {
        loop {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(self.connect(abort).await?),
            };
            match pipeline.query_async::<T>(c).await {
                Ok(reply) => {
                    self.connector.succeeded();
                    self.health.set(Part::Sink, true);
                    return Some(reply);
                }
                Err(e) => {
                    if self.failed(&e) {
                        *conn = None;
                    }
                    self.health.set(Part::Sink, false);
                    if !self.connector.pause(abort).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Counts one effect the script wrote (`written`) or found written before.
    fn record(&self, fx: &Effects, effect: calls::Effect, written: bool) {
        match effect {
            calls::Effect::Task(i) => {
                let task = &fx.tasks[i];
                let winback = task.winback();
                if !written {
                    if winback.is_some() {
                        self.metrics.tasks_duplicate.inc();
                    }
                    tracing::debug!(task_id = %task.task_id, kind = task.kind().as_str(), "task was written before; not written again");
                    return;
                }
                if winback.is_some() {
                    self.metrics.winback_task(&task.action, task.group);
                }
                self.metrics.tasks_by_kind.get(task.kind()).inc();
            }
            calls::Effect::Cancel(i) => {
                let cancel = &fx.cancels[i];
                if written {
                    self.metrics.follow_up.cancels.get(cancel.kind).inc();
                } else {
                    tracing::debug!(task_id = %cancel.task_id, "cancel was written before; not written again");
                }
            }
            calls::Effect::Outcome(i) => {
                let outcome = &fx.outcomes[i];
                if written {
                    self.metrics
                        .follow_up
                        .outcomes
                        .with_label_values(&[outcome.kind.as_str(), outcome.result()])
                        .inc();
                } else {
                    tracing::debug!(task_id = %outcome.task_id, "outcome was written before; not written again");
                }
            }
            calls::Effect::DeadLetter(i) => {
                let dl = &fx.dead_letters[i];
                if written {
                    DeadLettered {
                        id: &dl.id,
                        reason: dl.reason,
                        detail: &dl.detail,
                    }
                    .emit(&self.metrics);
                } else {
                    tracing::debug!(id = %dl.id, "entry was dead-lettered before; not written again");
                }
            }
        }
    }

    async fn connect(&mut self, abort: &CancellationToken) -> Option<RedisConn> {
        connect(
            &mut self.connector,
            &self.settings,
            &self.health,
            (&self.conns, &self.old_names),
            abort,
        )
        .await
    }
}

/// Connects, checks the output keys, loads the effects script and, on a Redis Cluster node,
/// stops checking old guard names (there are none); then publishes the connection for the
/// pass that moves old guard names. `None` if aborted first.
async fn connect(
    connector: &mut Connector,
    settings: &SinkSettings,
    health: &Health,
    (conns, old_names): (&watch::Sender<Option<RedisConn>>, &guards::OldNames),
    abort: &CancellationToken,
) -> Option<RedisConn> {
    loop {
        let mut c = connector.connect(abort).await?;
        match settings.misplaced_keys(&mut c).await {
            Ok(bad) if bad.is_empty() => match prepare(&mut c).await {
                Ok(cluster) => {
                    if cluster {
                        old_names.settled();
                    }
                    health.set(Part::Sink, true);
                    conns.send_replace(Some(c.clone()));
                    return Some(c);
                }
                Err(e) => {
                    connector.failed(&e);
                }
            },
            Ok(bad) => tracing::error!(
                keys = %bad.join(", "),
                "output keys hold the wrong type; delete or rename them, or configure other streams"
            ),
            Err(e) => {
                connector.failed(&e);
            }
        }
        if !connector.pause(abort).await {
            return None;
        }
    }
}

/// Checks an idle sink's connection with a PING, or connects if it has none: a Redis that
/// stopped answering shows as disconnected and not ready, as a failed write would show it.
async fn probe(
    connector: &mut Connector,
    settings: &SinkSettings,
    health: &Health,
    published: (&watch::Sender<Option<RedisConn>>, &guards::OldNames),
    conn: &mut Option<RedisConn>,
    abort: &CancellationToken,
) {
    let Some(c) = conn.as_mut() else {
        *conn = connect(connector, settings, health, published, abort).await;
        return;
    };
    match redis::cmd("PING").query_async::<()>(c).await {
        Ok(()) => {
            connector.succeeded();
            health.set(Part::Sink, true);
        }
        Err(e) => {
            if connector.failed(&e) {
                *conn = None;
            }
            health.set(Part::Sink, false);
        }
    }
}

/// Appends `more`'s effects and acknowledgements to `fx`'s, in order.
fn merge(fx: &mut Effects, more: Effects) {
    let Effects {
        tasks,
        cancels,
        outcomes,
        dead_letters,
        acks,
    } = more;
    fx.tasks.extend(tasks);
    fx.cancels.extend(cancels);
    fx.outcomes.extend(outcomes);
    fx.dead_letters.extend(dead_letters);
    fx.acks.extend(acks);
}

/// Moves the published positions up to the last entry of each stream in `fx`.
fn publish_written(tx: &watch::Sender<Applied>, fx: &Effects) {
    tx.send_if_modified(|written| {
        let mut moved = false;
        for &(stream, id) in &fx.acks {
            let i = usize::from(stream);
            if written.positions.len() <= i {
                written
                    .positions
                    .resize(i + 1, crate::event::EntryId::default());
            }
            if id > written.positions[i] {
                written.positions[i] = id;
                moved = true;
            }
        }
        if moved {
            written.at = Some(Instant::now());
        }
        moved
    });
}

/// Whether `e` (of a command or of a pipeline: each failed command's error is kept) says a
/// consumer group is missing.
fn no_group(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP")
        || e.clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, e)| e.code() == "NOGROUP"))
}

/// `XGROUP SETID <stream> <group> <at>`.
fn setids_one(stream: &str, group: &str, at: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("XGROUP");
    cmd.arg("SETID").arg(stream).arg(group).arg(at);
    cmd
}

/// Loads the effects script; whether the server is a cluster node.
async fn prepare(c: &mut RedisConn) -> Result<bool, RedisError> {
    load_effects_script(c).await?;
    Ok(guards::is_cluster(c).await)
}

/// A reply the effects script does not give, as an error.
fn unexpected(reply: &Value) -> RedisError {
    RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply to the effects script",
        format!("{reply:?}"),
    ))
}

/// Loads the effects script that [`SinkSettings::effect_calls`] call.
pub async fn load_effects_script(conn: &mut RedisConn) -> Result<(), RedisError> {
    calls::EFFECTS.load_async(conn).await?;
    calls::FENCED.load_async(conn).await.map(drop)
}

/// How long the daemon waits for in-flight effects after shutdown begins.
pub fn drain_timeout(settings: &Settings) -> Duration {
    settings.shutdown.drain_timeout
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Acknowledge;

    fn id(ms: u64) -> EntryId {
        EntryId { ms, seq: 0 }
    }

    fn two_streams(acknowledge: Acknowledge) -> SinkSettings {
        let mut s = Settings::default();
        s.source.streams = vec!["a".into(), "b".into()];
        s.source.acknowledge = acknowledge;
        SinkSettings::from(&s)
    }

    #[test]
    fn the_written_group_moves_to_each_streams_last_entry_and_only_forward() {
        let settings = two_streams(Acknowledge::Snapshots);
        let fx = Effects {
            acks: vec![(0, id(5)), (1, id(3)), (0, id(7)), (0, id(6))],
            ..Effects::default()
        };
        assert_eq!(settings.written_moves(&fx, &[]), [(0, id(7)), (1, id(3))]);
        assert_eq!(
            settings.written_moves(&fx, &[id(7), id(2)]),
            [(1, id(3))],
            "stream a stands there already"
        );
        assert!(settings.written_moves(&fx, &[id(9), id(3)]).is_empty());
        assert!(settings.written_moves(&Effects::default(), &[]).is_empty());
        let setids = settings.written_setids(&[(0, id(7))]);
        let args: Vec<Vec<u8>> = setids
            .cmd_iter()
            .flat_map(|c| c.args_iter())
            .filter_map(|a| match a {
                redis::Arg::Simple(a) => Some(a.to_vec()),
                _ => None,
            })
            .collect();
        assert_eq!(
            args,
            ["XGROUP", "SETID", "a", "churnd:written", "7-0"].map(|a| a.as_bytes().to_vec())
        );
    }

    #[test]
    fn per_entry_the_written_group_is_not_moved() {
        let settings = two_streams(Acknowledge::PerEntry);
        let fx = Effects {
            acks: vec![(0, id(5))],
            ..Effects::default()
        };
        assert!(settings.written_moves(&fx, &[]).is_empty());
        assert!(settings.acks(&fx).is_some());
    }
}
