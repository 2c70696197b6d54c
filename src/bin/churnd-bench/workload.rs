//! What the benchmarks feed churnd: the stream, customer IDs, the event mix, engines that
//! have learnt many customers, and the daemon's settings.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::aio::{ConnectionLike, MultiplexedConnection};

use churnd::config::Settings;
use churnd::engine::{Engine, EngineSettings};
use churnd::event::EntryId;
use churnd::metrics::{EngineMetrics, Metrics};
use churnd::model::Model;
use churnd::partition::PartitionCount;
use churnd::source::batch::{Batch, Entry};
use churnd::state::{self, SnapshotDir};

use crate::redis_server::RedisServer;

pub const STREAM: &str = "bench:events";

/// The `n`th customer's ID: 12 to 24 bytes, stable per customer.
pub fn customer_id(n: usize) -> String {
    let pad = 12 + (n * 7919) % 13;
    format!("{n:0>pad$}")
}

/// Appends to `pipe` one XADD to `stream` of the realistic mix for `customer` at event time
/// `ts_ms`: 70 % purchases (1 to 200), 20 % visits, 5 % refunds, 5 % complaints.
pub fn push_mixed_event<'p>(
    pipe: &'p mut redis::Pipeline,
    stream: &str,
    rng: &mut StdRng,
    customer: &str,
    ts_ms: u64,
) -> &'p mut redis::Pipeline {
    let cmd = pipe
        .cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("customer_id")
        .arg(customer)
        .arg("ts")
        .arg(ts_ms);
    match rng.random_range(0..20) {
        0..=13 => cmd
            .arg("type")
            .arg("purchase")
            .arg("amount")
            .arg(format!("{:.2}", rng.random_range(1.0..200.0))),
        14..=17 => cmd.arg("type").arg("visit"),
        18 => cmd.arg("type").arg("refund").arg("amount").arg("9.99"),
        _ => cmd.arg("type").arg("complaint"),
    }
}

/// Appends `events` entries over `customers` customers: the mix of [`push_mixed_event`],
/// IDs of 12 to 24 bytes, event times spread evenly over the `history_days` before now, in
/// stream order (all now when 0).
pub async fn preload(
    conn: &mut MultiplexedConnection,
    events: usize,
    customers: usize,
    history_days: u64,
) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(42);
    let now_ms = churnd::time::wall_millis();
    let history_ms = history_days * 86_400_000;
    for start in (0..events).step_by(10_000) {
        let mut pipe = redis::pipe();
        for i in start..(start + 10_000).min(events) {
            let ts = now_ms - history_ms + (i as u64 * history_ms) / events as u64;
            let customer = customer_id(rng.random_range(0..customers));
            push_mixed_event(&mut pipe, STREAM, &mut rng, &customer, ts).ignore();
        }
        pipe.query_async::<()>(conn).await?;
    }
    Ok(())
}

/// Appends `events` entries of the [`push_mixed_event`] mix to the P partition streams of
/// the default input stream, each in its customer's partition (`churnd partition`): the
/// `i`th event is customer `customer(i, rng)`'s, event times spread evenly over the
/// `history_days` before now, in stream order. One pipeline per partition per 10,000
/// events (a pipeline stays in one slot, as a Redis Cluster needs).
pub async fn preload_partitioned(
    conn: &mut impl ConnectionLike,
    p: PartitionCount,
    events: usize,
    mut customer: impl FnMut(usize, &mut StdRng) -> usize,
    history_days: u64,
) -> Result<()> {
    let base = &Settings::default().source.streams[0];
    let streams: Vec<String> = (0..p.get()).map(|q| p.stream(base, q)).collect();
    let mut rng = StdRng::seed_from_u64(42);
    let now_ms = churnd::time::wall_millis();
    let history_ms = history_days * 86_400_000;
    for start in (0..events).step_by(10_000) {
        let mut pipes: Vec<redis::Pipeline> = streams.iter().map(|_| redis::pipe()).collect();
        for i in start..(start + 10_000).min(events) {
            let ts = now_ms - history_ms + (i as u64 * history_ms) / events as u64;
            let id = customer_id(customer(i, &mut rng));
            let q = usize::from(p.of(&id));
            push_mixed_event(&mut pipes[q], &streams[q], &mut rng, &id, ts).ignore();
        }
        for pipe in pipes.iter().filter(|pipe| !pipe.is_empty()) {
            pipe.query_async::<()>(conn).await?;
        }
    }
    Ok(())
}

/// The shipped model.
pub fn model_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/cdnow.json")
}

/// `state.max_customers` for at least `n` customers (at most `u32::MAX`).
pub fn max_customers(n: usize) -> std::num::NonZeroU32 {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN)
}

/// The daemon's settings in these benchmarks: the defaults (wall clock among them), except
/// our own Redis, a private `state.dir`, the shipped model and HTTP on a free port.
pub fn daemon_settings(redis: &RedisServer, state_dir: &Path) -> Settings {
    let mut settings = Settings::default();
    settings.redis.url = redis.url();
    settings.http.addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    settings.state.dir = state_dir.to_path_buf();
    settings.model.path = model_path();
    settings
}

/// An entry as the source hands it to the engine: entry ID `now_ms`-`seq` of stream 0.
pub fn entry(now_ms: u64, seq: u64, fields: &[(&str, &str)]) -> Entry {
    let bulk = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
    Entry {
        stream: 0,
        id: EntryId { ms: now_ms, seq },
        values: Some(
            fields
                .iter()
                .flat_map(|&(k, v)| [bulk(k), bulk(v)])
                .collect(),
        ),
    }
}

/// A purchase [`entry`] with event time `ts_ms`.
pub fn purchase_entry(now_ms: u64, seq: u64, customer: &str, amount: &str, ts_ms: u64) -> Entry {
    let ts = ts_ms.to_string();
    entry(
        now_ms,
        seq,
        &[
            ("customer_id", customer),
            ("type", "purchase"),
            ("amount", amount),
            ("ts", &ts),
        ],
    )
}

/// An engine with `settings` that has learnt `customers` customers through
/// `Engine::apply_batch`, in batches of 1,000: one purchase each (IDs of 12 to 24 bytes,
/// event times over the year before `now_ms`), as entries `now_ms`-1, `now_ms`-2, … of
/// stream 0, then a read at the end (under the wall clock the history is a backlog caught
/// up on). Effects (tasks for the old buyers, under the wall clock) are dropped. Returns
/// the engine and its metrics.
pub fn learn_customers(
    settings: &Settings,
    model: Arc<Model>,
    customers: usize,
    now_ms: u64,
) -> (Engine, EngineMetrics) {
    let metrics = Metrics::new().engine;
    let mut engine = Engine::new(EngineSettings::from(settings), model, metrics.clone());
    let mut rng = StdRng::seed_from_u64(7);
    for start in (0..customers).step_by(1_000) {
        let entries = (start..(start + 1_000).min(customers))
            .map(|n| {
                let ts = now_ms - rng.random_range(0..365 * 86_400_000u64);
                purchase_entry(now_ms, n as u64 + 1, &customer_id(n), "19.90", ts)
            })
            .collect();
        engine.apply_batch(Batch::new(entries), now_ms);
    }
    // The source's read at the streams' end: the history is read, wall time rules.
    let mut end = Batch::new(Vec::new());
    end.at_end = true;
    engine.apply_batch(end, now_ms);
    (engine, metrics)
}

/// What [`restart_with_snapshot`] made.
pub struct Restart {
    pub path: PathBuf,
    pub bytes: u64,
    /// Learning the customers through the engine.
    pub build: Duration,
    /// Writing the snapshot: capture, encoding, write with fsync.
    pub write: Duration,
}

/// Prepares a restart with `customers` tracked: their snapshot in `settings.state.dir`
/// (one purchase each over the past year, wall clock, as [`learn_customers`]), written the
/// daemon's way, and Redis as that snapshot left it: the input stream up to the snapshot's
/// last entry, delivered to the group. A daemon started on them restores every customer and
/// has nothing to replay. The file was just written, so it is in the page cache.
pub async fn restart_with_snapshot(
    redis: &RedisServer,
    settings: &Settings,
    model: Arc<Model>,
    customers: usize,
) -> Result<Restart> {
    let now_ms = churnd::time::wall_millis();
    let started = Instant::now();
    let (mut engine, _) = learn_customers(settings, model, customers, now_ms);
    let build = started.elapsed();
    let position = engine
        .positions()
        .first()
        .copied()
        .flatten()
        .unwrap_or_default();
    let streams = &settings.source.streams;
    let dir = SnapshotDir::open(&settings.state.dir, settings.state.keep.get())?;
    let started = Instant::now();
    let (location, bytes) =
        state::write_snapshot(&mut engine, &dir, streams, churnd::time::wall_millis())?;
    // A file's location displays as its path.
    let path = PathBuf::from(location.to_string());
    let write = started.elapsed();
    drop(engine);

    let mut conn = redis.conn().await?;
    redis::cmd("XADD")
        .arg(&streams[0])
        .arg(position.to_string())
        .arg("customer_id")
        .arg(customer_id(customers.saturating_sub(1)))
        .arg("type")
        .arg("visit")
        .arg("ts")
        .arg(now_ms)
        .query_async::<()>(&mut conn)
        .await?;
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&streams[0])
        .arg(&settings.source.group)
        .arg(position.to_string())
        .query_async::<()>(&mut conn)
        .await?;
    Ok(Restart {
        path,
        bytes,
        build,
        write,
    })
}
