//! The Redis sink: writes each batch's effects (tasks of every kind, dead letters), and only once
//! they are written acknowledges the batch's entries. A write that fails is retried until it
//! succeeds: the engine waits (the bounded channel fills, the source stops reading) rather
//! than lose or skip anything.
//!
//! Effects and acknowledgements are two round trips on purpose: MULTI/EXEC does not roll
//! back, so a write failing inside a transaction (a key of the wrong type) would not stop an
//! XACK queued beside it. Every effect is written through a small Lua script that writes it
//! only if its deterministic ID has not been written before (a guard key with an expiry), so
//! retries, redeliveries and replays never produce a second task for the same episode or a
//! second dead letter for the same entry.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, RedisError, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::connection::Connector;
use crate::engine::{DeadLetter, Effects};
use crate::health::{Health, Part};
use crate::metrics::Metrics;
use crate::tasks::{Task, TaskKind, TasksSettings};
use crate::winback::Group;

/// KEYS: guard key, stream. ARGV: guard TTL (s), stream MAXLEN, then field/value pairs.
/// Returns the new entry ID, or false (nil in RESP2) when the entry was written before.
const GUARDED_XADD: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
redis.call('SET', KEYS[1], id, 'EX', ARGV[1])
return id
"#;

/// A rejected entry's fields beyond this many are not copied to the dead-letter stream (and
/// `dlq_detail` says so): Lua's `unpack` takes at most about 8,000 values.
const MAX_DEAD_LETTER_VALUES: usize = 4_000;

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
    /// The other kinds' streams and length cap.
    pub tasks: TasksSettings,
}

impl From<&Settings> for SinkSettings {
    fn from(s: &Settings) -> Self {
        Self {
            input_streams: s.source.streams.clone(),
            group: s.source.group.clone(),
            dead_letter_stream: s.dead_letter.stream.clone(),
            dead_letter_max_len: s.dead_letter.max_len,
            dead_letter_dedup_ttl_secs: s.dead_letter.dedup_ttl_secs,
            task_stream: s.winback.stream.clone(),
            control_stream: s.winback.control_stream.clone(),
            task_max_len: s.winback.max_len,
            dedup_ttl_secs: u64::from(s.winback.dedup_ttl_days) * 86_400,
            tasks: s.tasks.clone(),
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

    /// The stream a task goes to and that stream's length cap.
    fn stream_of(&self, task: &Task) -> (&str, u64) {
        match task.winback() {
            Some(w) => (self.task_stream(w.group), self.task_max_len),
            None => (self.tasks.stream(task.kind), self.tasks.max_len),
        }
    }

    /// The writes of `fx`'s tasks and dead letters as one transaction (replies: tasks, then
    /// dead letters, in order); `None` when there are none. Safe to repeat: every write is
    /// guarded by its ID.
    pub fn effects(&self, fx: &Effects) -> Option<redis::Pipeline> {
        if fx.tasks.is_empty() && fx.dead_letters.is_empty() {
            return None;
        }
        let mut p = redis::pipe();
        p.atomic();
        for task in &fx.tasks {
            let (stream, max_len) = self.stream_of(task);
            p.add_command(self.task(stream, max_len, &task.task_id, task.fields()));
        }
        for dl in &fx.dead_letters {
            p.add_command(self.dead_letter(dl));
        }
        Some(p)
    }

    /// The guarded write of a task of any kind: its ID is remembered beside its stream for
    /// `dedup_ttl_secs`.
    fn task(
        &self,
        stream: &str,
        max_len: u64,
        task_id: &str,
        fields: impl IntoIterator<Item = (Cow<'static, str>, String)>,
    ) -> redis::Cmd {
        let mut cmd = guarded_xadd(
            format!("{stream}:dedup:{task_id}"),
            stream,
            self.dedup_ttl_secs,
            max_len,
        );
        for (name, value) in fields {
            cmd.arg(name.as_ref()).arg(value);
        }
        cmd
    }

    /// The original fields of a rejected entry plus why and where from.
    fn dead_letter(&self, dl: &DeadLetter) -> redis::Cmd {
        let source_stream = self
            .input_streams
            .get(usize::from(dl.stream))
            .map_or("", String::as_str);
        let source_id = dl.id.to_string();
        let mut cmd = guarded_xadd(
            format!(
                "{}:dedup:{source_stream}:{source_id}",
                self.dead_letter_stream
            ),
            &self.dead_letter_stream,
            self.dead_letter_dedup_ttl_secs,
            self.dead_letter_max_len,
        );
        let copied = dl.values.len().min(MAX_DEAD_LETTER_VALUES) & !1;
        for v in &dl.values[..copied] {
            match v {
                Value::BulkString(b) => cmd.arg(b.as_slice()),
                Value::SimpleString(s) => cmd.arg(s.as_str()),
                other => cmd.arg(format!("{other:?}")),
            };
        }
        let mut detail = dl.detail.clone();
        if copied < dl.values.len() {
            detail.push_str(&format!(
                " ({} more fields not copied)",
                (dl.values.len() - copied) / 2
            ));
        }
        cmd.arg("dlq_reason")
            .arg(dl.reason.as_str())
            .arg("dlq_detail")
            .arg(detail)
            .arg("dlq_source_stream")
            .arg(source_stream)
            .arg("dlq_source_id")
            .arg(source_id);
        cmd
    }

    /// The acknowledgements of `fx`'s entries, one XACK per stream; `None` when there are none.
    pub fn acks(&self, fx: &Effects) -> Option<redis::Pipeline> {
        if fx.acks.is_empty() {
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

    /// Output keys that exist but are not streams: writes to them would fail, so the sink
    /// does not report ready until they are fixed.
    async fn misplaced_keys(
        &self,
        c: &mut MultiplexedConnection,
    ) -> Result<Vec<String>, RedisError> {
        let mut bad = Vec::new();
        let care = TaskKind::CARE.map(|kind| self.tasks.stream(kind));
        let mut keys: Vec<&str> = [
            self.dead_letter_stream.as_str(),
            &self.task_stream,
            &self.control_stream,
        ]
        .into_iter()
        .chain(care)
        .collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let kind: String = redis::cmd("TYPE").arg(key).query_async(c).await?;
            if kind != "stream" && kind != "none" {
                bad.push(format!("{key} is a {kind}"));
            }
        }
        Ok(bad)
    }
}

pub struct Sink {
    settings: SinkSettings,
    connector: Connector,
    health: Arc<Health>,
    metrics: Metrics,
    rx: mpsc::Receiver<Effects>,
    /// How many effects (as received) are written: snapshots wait for it.
    written: watch::Sender<u64>,
}

impl Sink {
    pub fn new(
        settings: SinkSettings,
        connector: Connector,
        health: Arc<Health>,
        metrics: Metrics,
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
        }
    }

    /// Writes effects until the engine closes the channel. `abort` ends retrying (after the
    /// drain timeout); entries whose effects were not written stay pending and are
    /// redelivered to this consumer on its next start.
    pub async fn run(mut self, abort: CancellationToken) {
        let mut conn = None;
        // Connect before the first write (readiness includes being able to write), unless
        // effects or the end of the input come first.
        let mut next = tokio::select! {
            c = connect(&mut self.connector, &self.settings, &self.health, &abort) => {
                conn = c;
                self.rx.recv().await
            }
            fx = self.rx.recv() => fx,
        };
        while let Some(fx) = next {
            if !fx.is_empty() && !self.write(&fx, &mut conn, &abort).await {
                tracing::error!(
                    tasks = fx.tasks.len(),
                    dead_letters = fx.dead_letters.len(),
                    entries = fx.acks.len(),
                    "gave up writing effects at shutdown; their entries stay pending and will be redelivered"
                );
                break;
            }
            self.written.send_modify(|n| *n += 1);
            next = self.rx.recv().await;
        }
        self.health.set(Part::Sink, false);
    }

    /// Writes one batch's effects, then acknowledges its entries, retrying each until done;
    /// `false` if aborted first.
    async fn write(
        &mut self,
        fx: &Effects,
        conn: &mut Option<MultiplexedConnection>,
        abort: &CancellationToken,
    ) -> bool {
        let started = Instant::now();
        if let Some(effects) = self.settings.effects(fx) {
            let Some(replies) = self.execute::<Vec<Value>>(&effects, conn, abort).await else {
                return false;
            };
            self.record(fx, &replies);
        }
        if let Some(acks) = self.settings.acks(fx) {
            if self.execute::<()>(&acks, conn, abort).await.is_none() {
                return false;
            }
            self.metrics.entries_acked.inc_by(fx.acks.len() as u64);
        }
        self.metrics
            .sink_seconds
            .observe(started.elapsed().as_secs_f64());
        true
    }

    /// Runs `pipeline` until it succeeds, reconnecting as needed; `None` if aborted first.
    /// The sink is not ready while its writes fail.
    async fn execute<T: FromRedisValue>(
        &mut self,
        pipeline: &redis::Pipeline,
        conn: &mut Option<MultiplexedConnection>,
        abort: &CancellationToken,
    ) -> Option<T> {
        loop {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(
                    connect(&mut self.connector, &self.settings, &self.health, abort).await?,
                ),
            };
            match pipeline.query_async::<T>(c).await {
                Ok(reply) => {
                    self.connector.succeeded();
                    self.health.set(Part::Sink, true);
                    return Some(reply);
                }
                Err(e) => {
                    if e.code() == Some("WRONGTYPE") {
                        tracing::error!(
                            error = %e,
                            "an output stream's key holds another type; delete or rename it, or configure other streams"
                        );
                    }
                    if self.connector.failed(&e) {
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

    /// Counts what the effects transaction wrote; `replies` are in [`SinkSettings::effects`]
    /// order.
    fn record(&self, fx: &Effects, replies: &[Value]) {
        let (task_replies, dead_letter_replies) =
            replies.split_at(fx.tasks.len().min(replies.len()));
        for (task, reply) in fx.tasks.iter().zip(task_replies) {
            let winback = task.winback();
            if written_before(reply) {
                if winback.is_some() {
                    self.metrics.tasks_duplicate.inc();
                }
                tracing::debug!(task_id = %task.task_id, kind = task.kind.as_str(), "task was written before; not written again");
                continue;
            }
            if let Some(w) = winback {
                self.metrics
                    .tasks
                    .with_label_values(&[&task.action, w.group.as_str()])
                    .inc();
            }
            self.metrics
                .tasks_by_kind
                .with_label_values(&[task.kind.as_str()])
                .inc();
        }
        for (dl, reply) in fx.dead_letters.iter().zip(dead_letter_replies) {
            if written_before(reply) {
                tracing::debug!(id = %dl.id, "entry was dead-lettered before; not written again");
                continue;
            }
            self.metrics
                .dead_lettered
                .with_label_values(&[dl.reason.as_str()])
                .inc();
            tracing::debug!(id = %dl.id, reason = dl.reason.as_str(), detail = %dl.detail, "dead-lettered an entry");
        }
    }
}

/// An EVAL of [`GUARDED_XADD`]; the caller appends the field/value pairs.
fn guarded_xadd(guard: String, stream: &str, ttl_secs: u64, max_len: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(GUARDED_XADD)
        .arg(2)
        .arg(guard)
        .arg(stream)
        .arg(ttl_secs)
        .arg(max_len);
    cmd
}

/// The guarded write's "already written" reply: Lua's false is nil in RESP2 and a boolean
/// in RESP3.
fn written_before(reply: &Value) -> bool {
    matches!(reply, Value::Nil | Value::Boolean(false))
}

/// Connects and checks the output keys; `None` if aborted first.
async fn connect(
    connector: &mut Connector,
    settings: &SinkSettings,
    health: &Health,
    abort: &CancellationToken,
) -> Option<MultiplexedConnection> {
    loop {
        let mut c = connector.connect(abort).await?;
        match settings.misplaced_keys(&mut c).await {
            Ok(bad) if bad.is_empty() => {
                health.set(Part::Sink, true);
                return Some(c);
            }
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

/// How long the daemon waits for in-flight effects after shutdown begins.
pub fn drain_timeout(settings: &Settings) -> Duration {
    Duration::from_millis(settings.shutdown.drain_timeout_ms)
}
