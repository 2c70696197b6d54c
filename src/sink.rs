//! The Redis sink: writes each batch's effects (win-back tasks, dead letters) and then
//! acknowledges its entries, all in one MULTI/EXEC, so an entry is acknowledged only together
//! with its effects. A write that fails is retried until it succeeds: the engine waits (the
//! bounded channel fills, the source stops reading) rather than lose or skip anything.
//!
//! Tasks go through a small Lua script that writes a task only if its deterministic ID has
//! not been written before (a guard key with an expiry), so replays and retries never
//! produce a second task for the same episode.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{RedisError, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::connection::Connector;
use crate::engine::Effects;
use crate::health::{Health, Part};
use crate::metrics::Metrics;
use crate::winback::Group;

/// KEYS: guard key, task stream. ARGV: guard TTL (s), stream MAXLEN, then field/value pairs.
/// Returns the new entry ID, or nil when the task was written before.
const GUARDED_XADD: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
redis.call('SET', KEYS[1], id, 'EX', ARGV[1])
return id
"#;

/// Where effects go, resolved from the settings.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub input_streams: Vec<String>,
    pub group: String,
    pub dead_letter_stream: String,
    pub dead_letter_max_len: u64,
    pub task_stream: String,
    pub control_stream: String,
    pub task_max_len: u64,
    pub dedup_ttl_secs: u64,
}

impl From<&Settings> for SinkSettings {
    fn from(s: &Settings) -> Self {
        Self {
            input_streams: s.source.streams.clone(),
            group: s.source.group.clone(),
            dead_letter_stream: s.dead_letter.stream.clone(),
            dead_letter_max_len: s.dead_letter.max_len,
            task_stream: s.winback.stream.clone(),
            control_stream: s.winback.control_stream.clone(),
            task_max_len: s.winback.max_len,
            dedup_ttl_secs: u64::from(s.winback.dedup_ttl_days) * 86_400,
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

    /// The commands that write `fx`, as one transaction. Only the task scripts' replies are
    /// kept, in task order.
    pub fn pipeline(&self, fx: &Effects) -> redis::Pipeline {
        let mut p = redis::pipe();
        p.atomic();
        for task in &fx.tasks {
            let stream = self.task_stream(task.group);
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(GUARDED_XADD)
                .arg(2)
                .arg(format!("{stream}:dedup:{}", task.task_id))
                .arg(stream)
                .arg(self.dedup_ttl_secs)
                .arg(self.task_max_len);
            for (name, value) in task.fields() {
                cmd.arg(name).arg(value);
            }
            p.add_command(cmd);
        }
        for dl in &fx.dead_letters {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&self.dead_letter_stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.dead_letter_max_len)
                .arg("*");
            for v in &dl.values {
                match v {
                    Value::BulkString(b) => cmd.arg(b.as_slice()),
                    Value::SimpleString(s) => cmd.arg(s.as_str()),
                    other => cmd.arg(format!("{other:?}")),
                };
            }
            cmd.arg("dlq_reason")
                .arg(dl.reason.as_str())
                .arg("dlq_detail")
                .arg(&dl.detail)
                .arg("dlq_source_stream")
                .arg(
                    self.input_streams
                        .get(usize::from(dl.stream))
                        .map_or("", String::as_str),
                )
                .arg("dlq_source_id")
                .arg(dl.id.to_string());
            p.add_command(cmd).ignore();
        }
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
        p
    }

    /// Output keys that exist but are not streams: writes to them would fail inside the
    /// transaction after the acknowledgements, so the sink refuses to write until fixed.
    async fn misplaced_keys(
        &self,
        c: &mut MultiplexedConnection,
    ) -> Result<Vec<String>, RedisError> {
        let mut bad = Vec::new();
        for key in [
            &self.dead_letter_stream,
            &self.task_stream,
            &self.control_stream,
        ] {
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
}

impl Sink {
    pub fn new(
        settings: SinkSettings,
        connector: Connector,
        health: Arc<Health>,
        metrics: Metrics,
        rx: mpsc::Receiver<Effects>,
    ) -> Self {
        Self {
            settings,
            connector,
            health,
            metrics,
            rx,
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
            next = self.rx.recv().await;
        }
        self.health.set(Part::Sink, false);
    }

    /// Writes one batch's effects, retrying until done; `false` if aborted first.
    async fn write(
        &mut self,
        fx: &Effects,
        conn: &mut Option<MultiplexedConnection>,
        abort: &CancellationToken,
    ) -> bool {
        let pipeline = self.settings.pipeline(fx);
        loop {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => {
                    match connect(&mut self.connector, &self.settings, &self.health, abort).await {
                        Some(c) => conn.insert(c),
                        None => return false,
                    }
                }
            };
            let started = Instant::now();
            match pipeline.query_async::<Vec<Value>>(c).await {
                Ok(replies) => {
                    self.metrics
                        .sink_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.connector.succeeded();
                    self.record(fx, &replies);
                    return true;
                }
                Err(e) => {
                    if self.connector.failed(&e) {
                        *conn = None;
                        self.health.set(Part::Sink, false);
                    }
                    if !self.connector.pause(abort).await {
                        return false;
                    }
                }
            }
        }
    }

    fn record(&self, fx: &Effects, replies: &[Value]) {
        for (task, reply) in fx.tasks.iter().zip(replies) {
            if matches!(reply, Value::Nil) {
                self.metrics.tasks_duplicate.inc();
            } else {
                self.metrics
                    .tasks
                    .with_label_values(&[&task.action, task.group.as_str()])
                    .inc();
            }
        }
        for dl in &fx.dead_letters {
            self.metrics
                .dead_lettered
                .with_label_values(&[dl.reason.as_str()])
                .inc();
            tracing::debug!(id = %dl.id, reason = dl.reason.as_str(), detail = %dl.detail, "dead-lettered an entry");
        }
        self.metrics.entries_acked.inc_by(fx.acks.len() as u64);
    }
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
