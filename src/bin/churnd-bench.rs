//! End-to-end benchmarks against a real redis-server that the program starts itself.
//!
//! `churnd-bench throughput`: pre-loads a stream, then measures how fast a bare consumer that
//! only reads and acknowledges drains it (the Redis limit on this machine) and how fast the
//! daemon does the whole job on the same stream, and prints both with their ratio.
//!
//! `churnd-bench memory`: resident memory per tracked customer.
//!
//! `churnd-bench latency`: at a steady offered load, the time from an XADD to the engine
//! having applied the entry, and from a probe event to its win-back task in Redis.
//!
//! `churnd-bench recovery`: the time from start to ready with a snapshot of many customers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use churnd::config::{ClockMode, Settings};
use churnd::daemon;
use churnd::engine::{Engine, EngineSettings};
use churnd::event::EntryId;
use churnd::metrics::Metrics;
use churnd::model::Model;
use churnd::source::batch::{Batch, Entry};
use churnd::source::lag::group_info;
use churnd::state::{codec, SnapshotDir};

#[derive(Parser)]
#[command(
    name = "churnd-bench",
    about = "End-to-end benchmarks of churnd against a real Redis"
)]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Resident memory per tracked customer: the growth of the process's RSS while the
    /// engine learns `customers` customers (one purchase each, IDs of 12 to 24 bytes).
    Memory {
        #[arg(long, default_value_t = 1_000_000)]
        customers: usize,
    },
    /// Events per second: the daemon against a bare read-and-acknowledge consumer.
    Throughput {
        /// Events pre-loaded into the stream.
        #[arg(long, default_value_t = 2_000_000)]
        events: usize,
        /// Distinct customers among them.
        #[arg(long, default_value_t = 1_000_000)]
        customers: usize,
        /// Entries per read (XREADGROUP COUNT), for both consumers.
        #[arg(long, default_value_t = 1_000)]
        batch_size: usize,
        /// The redis-server binary to start.
        #[arg(long, default_value = "redis-server")]
        redis_server: PathBuf,
    },
    /// Latency at a steady offered load: XADD to state updated, and XADD of a probe (a new
    /// customer's single purchase long ago) to its win-back task.
    Latency {
        /// Events offered per second.
        #[arg(long, default_value_t = 50_000)]
        rate: u64,
        /// Seconds of measurement, after the warm-up.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Seconds of load before measuring (not counted).
        #[arg(long, default_value_t = 3)]
        warmup_seconds: u64,
        /// Distinct customers in the ordinary traffic.
        #[arg(long, default_value_t = 100_000)]
        customers: usize,
        /// One event in this many is a probe.
        #[arg(long, default_value_t = 500)]
        probe_every: u64,
        /// How long ago a probe's purchase lies, in days: old enough for the shipped model
        /// to score a one-time buyer at or above the win-back threshold (checked at start).
        #[arg(long, default_value_t = 300)]
        probe_age_days: u64,
        /// The redis-server binary to start.
        #[arg(long, default_value = "redis-server")]
        redis_server: PathBuf,
    },
    /// Start-to-ready time of the daemon with a snapshot of `customers` customers.
    Recovery {
        #[arg(long, default_value_t = 10_000_000)]
        customers: usize,
        /// The redis-server binary to start.
        #[arg(long, default_value = "redis-server")]
        redis_server: PathBuf,
    },
}

const STREAM: &str = "bench:events";

/// A private redis-server, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile_dir::TempDir,
}

/// A temporary directory without a dev-dependency: created under the system's temporary
/// space, removed on drop.
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(label: &str) -> std::io::Result<Self> {
            let path = std::env::temp_dir().join(format!(
                "churnd-bench-{label}-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(&path)?;
            Ok(Self(path))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl RedisServer {
    fn start(binary: &PathBuf) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile_dir::TempDir::new("redis")?;
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {} (install redis-server)", binary.display()))?;
        let server = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let ping = redis::Client::open(server.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ping.is_ok() {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("redis-server did not start on port {port}")
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn conn(&self) -> Result<MultiplexedConnection> {
        connect(&self.url()).await
    }
}

/// A connection whose response timeout (60 s) outlasts every BLOCK used here.
async fn connect(url: &str) -> Result<MultiplexedConnection> {
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `n`th customer's ID: 12 to 24 bytes, stable per customer.
fn customer_id(n: usize) -> String {
    let pad = 12 + (n * 7919) % 13;
    format!("{n:0>pad$}")
}

/// Appends to `pipe` one XADD to `stream` of the realistic mix for `customer` at event time
/// `ts_ms`: 70 % purchases (1 to 200), 20 % visits, 5 % refunds, 5 % complaints.
fn push_mixed_event<'p>(
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
/// IDs of 12 to 24 bytes, event times over the year before now.
async fn preload(conn: &mut MultiplexedConnection, events: usize, customers: usize) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(42);
    let now_ms = churnd::time::wall_millis();
    let year_ms = 365 * 86_400_000u64;
    for start in (0..events).step_by(10_000) {
        let mut pipe = redis::pipe();
        for i in start..(start + 10_000).min(events) {
            let ts = now_ms - year_ms + (i as u64 * year_ms) / events as u64;
            let customer = customer_id(rng.random_range(0..customers));
            push_mixed_event(&mut pipe, STREAM, &mut rng, &customer, ts).ignore();
        }
        pipe.query_async::<()>(conn).await?;
    }
    Ok(())
}

/// Reads the whole stream with its own group, acknowledging each batch after reading it, as
/// the daemon does, and doing nothing else. Returns the time it took.
async fn bare_consumer(
    conn: &mut MultiplexedConnection,
    events: usize,
    batch: usize,
) -> Result<Duration> {
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg("bare")
        .arg("0")
        .query_async::<()>(conn)
        .await?;
    let started = Instant::now();
    let mut read = 0;
    while read < events {
        let reply: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("bare")
            .arg("bare")
            .arg("COUNT")
            .arg(batch)
            .arg("STREAMS")
            .arg(STREAM)
            .arg(">")
            .query_async(conn)
            .await?;
        let entries = churnd::source::batch::parse_reply(reply, &[STREAM.to_string()])?;
        if entries.is_empty() {
            bail!("the stream ended after {read} of {events} entries");
        }
        read += entries.len();
        let ids: Vec<String> = entries.iter().map(|e| e.id.to_string()).collect();
        redis::cmd("XACK")
            .arg(STREAM)
            .arg("bare")
            .arg(ids)
            .query_async::<()>(conn)
            .await?;
    }
    Ok(started.elapsed())
}

/// The shipped model.
fn model_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/cdnow.json")
}

/// The daemon's settings in these benchmarks: the defaults (wall clock among them), except
/// our own Redis, a private `state.dir`, the shipped model and HTTP on a free port.
fn daemon_settings(redis: &RedisServer, state_dir: &Path) -> Settings {
    let mut settings = Settings::default();
    settings.redis.url = redis.url();
    settings.http.addr = "127.0.0.1:0".into();
    settings.state.dir = state_dir.to_path_buf();
    settings.model.path = model_path();
    settings
}

/// Runs the daemon until its group has read and acknowledged every entry.
async fn daemon_run(
    redis: &RedisServer,
    conn: &mut MultiplexedConnection,
    batch: usize,
) -> Result<Duration> {
    let state = tempfile_dir::TempDir::new("state")?;
    let mut settings = daemon_settings(redis, state.path());
    settings.source.streams = vec![STREAM.into()];
    settings.source.group = "churnd".into();
    settings.source.consumer = "bench".into();
    settings.source.batch_size = batch;
    settings.clock.mode = ClockMode::Event;
    let settings = settings.validated()?;
    let listener = daemon::bind(&settings).await?;
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let handle = tokio::spawn(daemon::run(settings, listener, shutdown.clone()));
    loop {
        if handle.is_finished() {
            bail!("the daemon stopped early: {:?}", handle.await);
        }
        let reply: Option<redis::Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(STREAM)
            .query_async(conn)
            .await
            .ok();
        let info = reply.as_ref().and_then(|r| group_info(r, "churnd"));
        if info.is_some_and(|g| g.lag == Some(0) && g.pending == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    handle.await??;
    Ok(elapsed)
}

async fn throughput(events: usize, customers: usize, batch: usize, binary: &PathBuf) -> Result<()> {
    let redis = RedisServer::start(binary)?;
    let mut conn = redis.conn().await?;
    let loading = Instant::now();
    preload(&mut conn, events, customers).await?;
    println!(
        "pre-loaded {events} events over {customers} customers in {:.1} s",
        loading.elapsed().as_secs_f64()
    );
    let bare = bare_consumer(&mut conn, events, batch).await?;
    let bare_rate = events as f64 / bare.as_secs_f64();
    println!(
        "bare consumer (XREADGROUP COUNT {batch} + XACK per batch): {:.2} s, {bare_rate:.0} events/s",
        bare.as_secs_f64()
    );
    let churnd = daemon_run(&redis, &mut conn, batch).await?;
    let churnd_rate = events as f64 / churnd.as_secs_f64();
    println!(
        "churnd (start to every entry processed and acknowledged): {:.2} s, {churnd_rate:.0} events/s",
        churnd.as_secs_f64()
    );
    println!("churnd / bare consumer: {:.2}", churnd_rate / bare_rate);
    Ok(())
}

/// The process's resident set size, from /proc (Linux).
fn resident_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("reading /proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .context("unexpected /proc/self/statm")?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Ok(pages * u64::try_from(page).context("page size")?)
}

/// A purchase entry as the source hands it to the engine: entry ID `now_ms`-`seq` of
/// stream 0, event time `ts_ms`.
fn purchase_entry(now_ms: u64, seq: u64, customer: &str, amount: &str, ts_ms: u64) -> Entry {
    let bulk = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
    Entry {
        stream: 0,
        id: EntryId { ms: now_ms, seq },
        values: Some(vec![
            bulk("customer_id"),
            bulk(customer),
            bulk("type"),
            bulk("purchase"),
            bulk("amount"),
            bulk(amount),
            bulk("ts"),
            bulk(&ts_ms.to_string()),
        ]),
    }
}

/// An engine with `settings` that has learnt `customers` customers through
/// `Engine::apply_batch`, in batches of 1,000: one purchase each (IDs of 12 to 24 bytes,
/// event times over the year before `now_ms`), as entries `now_ms`-1, `now_ms`-2, … of
/// stream 0. Effects (tasks for the old buyers, under the wall clock) are dropped.
fn learn_customers(
    settings: &Settings,
    model: Arc<Model>,
    customers: usize,
    now_ms: u64,
) -> Engine {
    let mut engine = Engine::new(EngineSettings::from(settings), model, Metrics::new());
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
    engine
}

fn memory(customers: usize) -> Result<()> {
    let mut settings = Settings::default();
    settings.clock.mode = ClockMode::Event;
    settings.state.max_customers = customers.max(1);
    let model = Arc::new(Model::load(&model_path())?);
    let now_ms = churnd::time::wall_millis();
    let before = resident_bytes()?;
    let engine = learn_customers(&settings, model, customers, now_ms);
    let grown = resident_bytes()?.saturating_sub(before);
    println!(
        "{} customers tracked: resident memory grew by {:.1} MiB, {:.1} bytes per customer (table, IDs, index, timers and allocator slack included)",
        engine.customers(),
        grown as f64 / (1024.0 * 1024.0),
        grown as f64 / engine.customers().max(1) as f64
    );
    Ok(())
}

/// The machine's load average, to print beside figures measured on a shared machine.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// `GET path` on `addr` over a plain connection: status code and body. Enough HTTP for a
/// probe and a scrape, without an HTTP client dependency.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP response: {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The value of an unlabelled sample `name` in a Prometheus text exposition.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (n, v) = line.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Polls `GET /readyz` every 10 ms until it answers 200, and returns the time from
/// `started`; fails if the daemon stops first or `limit` passes.
async fn wait_ready(
    addr: SocketAddr,
    daemon: &JoinHandle<Result<(), daemon::DaemonError>>,
    started: Instant,
    limit: Duration,
) -> Result<Duration> {
    loop {
        if daemon.is_finished() {
            bail!("the daemon stopped before it was ready");
        }
        if started.elapsed() > limit {
            bail!("the daemon was not ready within {limit:?}");
        }
        // While the daemon loads its snapshot nothing serves the (already bound) port: the
        // request waits in the backlog and is answered once HTTP starts.
        let reply = tokio::time::timeout(Duration::from_secs(5), http_get(addr, "/readyz"))
            .await
            .ok()
            .and_then(Result::ok);
        if reply.is_some_and(|(status, _)| status == 200) {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Prints p50, p99, p99.9 and max of `samples` in milliseconds.
fn print_latency(label: &str, samples: &mut [Duration]) {
    if samples.is_empty() {
        println!("{label}: no samples");
        return;
    }
    samples.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{label}: {} samples, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        samples.len(),
        ms(percentile(samples, 0.50)),
        ms(percentile(samples, 0.99)),
        ms(percentile(samples, 0.999)),
        ms(samples[samples.len() - 1]),
    );
}

/// The churn probability the daemon's engine gives a brand-new customer whose single
/// purchase lies `age_days` back, and whether it raises a task (in either group).
fn probe_score(settings: &Settings, model: Arc<Model>, age_days: u64) -> Result<(f64, bool)> {
    let now_ms = churnd::time::wall_millis();
    let mut engine = Engine::new(EngineSettings::from(settings), model, Metrics::new());
    let customer = "probe-check-0";
    let ts = now_ms - age_days * 86_400_000;
    let fx = engine.apply_batch(
        Batch::new(vec![purchase_entry(now_ms, 1, customer, "49.90", ts)]),
        now_ms,
    );
    let probability = engine
        .customer(customer)
        .and_then(|c| c.churn_probability)
        .context("the probe customer was not scored")?;
    Ok((probability, !fx.tasks.is_empty()))
}

/// Load generator settings for [`latency`].
struct Load {
    url: String,
    stream: String,
    task_streams: [String; 2],
    rate: u64,
    warmup: Duration,
    measure: Duration,
    customers: usize,
    probe_every: u64,
    probe_age_days: u64,
}

/// What the load generator saw.
#[derive(Default)]
struct LoadReport {
    /// Entries added during the measurement, with the instant before their XADD was sent.
    sent: Vec<(EntryId, Instant)>,
    /// Probe customers added during the measurement, with the instant before their XADD.
    probes: HashMap<String, Instant>,
    /// Every publication of the applied position the watcher saw: position, engine's instant.
    applied: Vec<(EntryId, Instant)>,
    /// Win-back tasks read: customer, instant the reply arrived.
    tasks: Vec<(String, Instant)>,
    /// Events and probes sent in all, warm-up included.
    total_events: u64,
    total_probes: u64,
    /// Whether the daemon applied the last entry sent before the wait ran out.
    caught_up: bool,
}

/// The producer: XADDs of the realistic mix over `load.customers` customers, one probe every
/// `probe_every` events, paced by a 1 ms tick so that the load is steady: each tick sends, as
/// one pipeline, the events due by then (at most 5 ms worth: a producer that falls behind
/// shows as a lower achieved rate, not a burst).
async fn produce(load: &Load, report: &mut LoadReport) -> Result<EntryId> {
    let mut conn = connect(&load.url).await?;
    let mut rng = StdRng::seed_from_u64(42);
    let max_chunk = (load.rate / 200).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let (measure_from, end) = (started + load.warmup, started + load.warmup + load.measure);
    report
        .sent
        .reserve((load.rate * load.measure.as_secs()) as usize + 1);
    let mut last = EntryId::default();
    let mut probes = Vec::new();
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now >= end {
            break;
        }
        let due = (load.rate as f64 * (now - started).as_secs_f64()) as u64;
        let n = due.saturating_sub(report.total_events).min(max_chunk);
        if n == 0 {
            continue;
        }
        let now_ms = churnd::time::wall_millis();
        let mut pipe = redis::pipe();
        probes.clear();
        for k in report.total_events..report.total_events + n {
            if k % load.probe_every == 0 {
                let customer = customer_id(load.customers + report.total_probes as usize);
                report.total_probes += 1;
                pipe.cmd("XADD")
                    .arg(&load.stream)
                    .arg("*")
                    .arg("customer_id")
                    .arg(&customer)
                    .arg("type")
                    .arg("purchase")
                    .arg("amount")
                    .arg("49.90")
                    .arg("ts")
                    .arg(now_ms - load.probe_age_days * 86_400_000);
                probes.push(customer);
            } else {
                let customer = customer_id(rng.random_range(0..load.customers));
                push_mixed_event(&mut pipe, &load.stream, &mut rng, &customer, now_ms);
            }
        }
        let before_send = Instant::now();
        let ids: Vec<String> = pipe.query_async(&mut conn).await?;
        report.total_events += n;
        for id in &ids {
            let id = EntryId::parse(id.as_bytes()).with_context(|| format!("XADD ID {id}"))?;
            last = last.max(id);
            if before_send >= measure_from {
                report.sent.push((id, before_send));
            }
        }
        if before_send >= measure_from {
            report
                .probes
                .extend(probes.drain(..).map(|c| (c, before_send)));
        }
    }
    Ok(last)
}

/// Reads the task streams (`XREAD BLOCK`) until `stop`, noting each task's customer and
/// when the reply arrived, and counting in `probe_tasks` those of probes (customers
/// numbered from `first_probe` on).
async fn read_tasks(
    url: &str,
    streams: &[String; 2],
    first_probe: usize,
    probe_tasks: &AtomicU64,
    stop: CancellationToken,
) -> Result<Vec<(String, Instant)>> {
    let mut conn = connect(url).await?;
    let mut after = ["0-0".to_string(), "0-0".to_string()];
    let mut tasks = Vec::new();
    while !stop.is_cancelled() {
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1_000)
            .arg("BLOCK")
            .arg(100)
            .arg("STREAMS")
            .arg(&streams[..])
            .arg(&after[..])
            .query_async(&mut conn)
            .await?;
        let arrived = Instant::now();
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            let Some(i) = streams.iter().position(|s| *s == key.key) else {
                continue;
            };
            for entry in key.ids {
                if let Some(customer) = entry.get::<String>("customer_id") {
                    if customer.parse::<usize>().is_ok_and(|n| n >= first_probe) {
                        probe_tasks.fetch_add(1, Ordering::Relaxed);
                    }
                    tasks.push((customer, arrived));
                }
                after[i] = entry.id;
            }
        }
    }
    Ok(tasks)
}

/// Records every publication of the engine's applied position on the first stream until the
/// daemon stops or `stop`. A publication the watcher misses (it ran late) only makes the
/// entries it covered count as applied at the next one: the figures can only err upwards.
async fn watch_applied(
    mut applied: watch::Receiver<daemon::Applied>,
    stop: CancellationToken,
) -> Vec<(EntryId, Instant)> {
    let mut seen = Vec::new();
    loop {
        tokio::select! {
            // A publication already made is recorded before `stop` is: the last batches
            // applied before the load generator stops waiting must not be lost.
            biased;
            changed = applied.changed() => {
                if changed.is_err() {
                    break;
                }
                let a = applied.borrow_and_update();
                if let (Some(&position), Some(at)) = (a.positions.first(), a.at) {
                    seen.push((position, at));
                }
            }
            _ = stop.cancelled() => break,
        }
    }
    seen
}

/// The load generator, on its own thread and single-threaded runtime so that its pacing and
/// its timestamps do not wait for a worker of the daemon's runtime: producer, task reader
/// and position watcher. After the measurement it waits (up to 30 s) for the daemon to
/// apply the last entry and (up to 5 s more) for every probe's task.
async fn generate(load: Load, applied: watch::Receiver<daemon::Applied>) -> Result<LoadReport> {
    let mut report = LoadReport::default();
    let stop = CancellationToken::new();
    let watcher = tokio::task::spawn_local(watch_applied(applied.clone(), stop.clone()));
    let probe_tasks = Arc::new(AtomicU64::new(0));
    let reader = {
        let (url, streams, first_probe, probe_tasks, stop) = (
            load.url.clone(),
            load.task_streams.clone(),
            load.customers,
            probe_tasks.clone(),
            stop.clone(),
        );
        tokio::task::spawn_local(async move {
            read_tasks(&url, &streams, first_probe, &probe_tasks, stop).await
        })
    };
    let produced = produce(&load, &mut report).await;
    if let Ok(last) = &produced {
        let mut applied = applied;
        let wait = applied.wait_for(|a| a.covers(0, *last));
        report.caught_up = matches!(
            tokio::time::timeout(Duration::from_secs(30), wait).await,
            Ok(Ok(_))
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while probe_tasks.load(Ordering::Relaxed) < report.total_probes && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    stop.cancel();
    report.applied = watcher.await?;
    report.tasks = reader.await??;
    produced?;
    Ok(report)
}

async fn latency(
    rate: u64,
    seconds: u64,
    warmup_seconds: u64,
    customers: usize,
    probe_every: u64,
    probe_age_days: u64,
    binary: &PathBuf,
) -> Result<()> {
    if rate == 0 || seconds == 0 || probe_every == 0 || customers == 0 {
        bail!("--rate, --seconds, --probe-every and --customers must be positive");
    }
    let redis = RedisServer::start(binary)?;
    let state = tempfile_dir::TempDir::new("state")?;
    let settings = daemon_settings(&redis, state.path()).validated()?;
    let (probability, raises_task) = probe_score(
        &settings,
        Arc::new(Model::load(&model_path())?),
        probe_age_days,
    )?;
    println!(
        "probe: a new customer's single purchase {probe_age_days} days ago scores {probability:.3} (win-back threshold {}), raises a task: {raises_task}",
        settings.winback.threshold
    );
    if !raises_task {
        bail!("probes would raise no task: choose another --probe-age-days");
    }
    let load = Load {
        url: redis.url(),
        stream: settings.source.streams[0].clone(),
        task_streams: [
            settings.winback.stream.clone(),
            settings.winback.control_stream.clone(),
        ],
        rate,
        warmup: Duration::from_secs(warmup_seconds),
        measure: Duration::from_secs(seconds),
        customers,
        probe_every,
        probe_age_days,
    };
    let (applied_tx, applied_rx) = watch::channel(daemon::Applied::default());
    let listener = daemon::bind(&settings).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let observers = daemon::Observers::default().with_applied(applied_tx);
    let started = Instant::now();
    let daemon = tokio::spawn(daemon::run_observed(
        settings,
        listener,
        shutdown.clone(),
        observers,
    ));
    wait_ready(addr, &daemon, started, Duration::from_secs(30)).await?;
    println!(
        "daemon ready; offering {rate} events/s over {customers} customers for {warmup_seconds} s of warm-up + {seconds} s (load average before: {})",
        load_average()
    );

    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("load".into())
        .spawn(move || {
            let report = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("load generator runtime")
                .and_then(|rt| {
                    tokio::task::LocalSet::new().block_on(&rt, generate(load, applied_rx))
                });
            let _ = done_tx.send(report);
        })?;
    let report = done_rx.await.context("the load generator panicked")??;
    let load_after = load_average();
    let (_, metrics) = http_get(addr, "/metrics").await?;
    shutdown.cancel();
    daemon.await??;

    let achieved = report.sent.len() as f64 / seconds as f64;
    println!(
        "offered {rate} events/s, achieved {achieved:.0} events/s during the measurement ({} events; {} in all, {} probes in all); load average after: {load_after}",
        report.sent.len(),
        report.total_events,
        report.total_probes,
    );
    if !report.caught_up {
        println!("the daemon had NOT applied the last entry 30 s after the load stopped");
    }
    let mut state_latency = Vec::with_capacity(report.sent.len());
    for (id, sent) in &report.sent {
        let i = report
            .applied
            .partition_point(|(position, _)| position < id);
        if let Some((_, at)) = report.applied.get(i) {
            state_latency.push(at.saturating_duration_since(*sent));
        }
    }
    let unmatched = report.sent.len() - state_latency.len();
    print_latency("XADD -> state updated", &mut state_latency);
    if unmatched > 0 {
        println!("  {unmatched} entries sent were never seen applied");
    }
    let mut task_latency = Vec::with_capacity(report.probes.len());
    for (customer, arrived) in &report.tasks {
        if let Some(sent) = report.probes.get(customer) {
            task_latency.push(arrived.saturating_duration_since(*sent));
        }
    }
    let missing = report.probes.len() - task_latency.len();
    print_latency("XADD -> win-back task read", &mut task_latency);
    if missing > 0 {
        println!("  {missing} of {} probes got no task", report.probes.len());
    }
    let others = report
        .tasks
        .iter()
        .filter(|(c, _)| c.parse::<usize>().is_ok_and(|n| n < customers))
        .count();
    println!("  tasks for customers of the ordinary traffic (not timed): {others}");
    // Context from the daemon's own metrics over the whole run, warm-up and drain included.
    let mean = |name: &str| {
        let sum = sample(&metrics, &format!("{name}_sum"))?;
        let count = sample(&metrics, &format!("{name}_count"))?;
        Some((count, sum / count.max(1.0)))
    };
    if let (Some((batches, entries)), Some((_, seconds))) = (
        mean("churnd_batch_entries"),
        mean("churnd_batch_processing_duration_seconds"),
    ) {
        println!(
            "daemon: {batches:.0} batches, {entries:.1} entries and {:.3} ms of processing per batch on average",
            seconds * 1e3
        );
    }
    if let Some((snapshots, pause)) = mean("churnd_snapshot_pause_seconds") {
        println!(
            "daemon: {snapshots:.0} snapshots, {:.2} ms pause each on average",
            pause * 1e3
        );
    }
    Ok(())
}

async fn recovery(customers: usize, binary: &PathBuf) -> Result<()> {
    let redis = RedisServer::start(binary)?;
    let state = tempfile_dir::TempDir::new("state")?;
    let mut settings = daemon_settings(&redis, state.path());
    settings.state.max_customers = settings.state.max_customers.max(customers);
    let settings = settings.validated()?;
    let streams = settings.source.streams.clone();
    let model = Arc::new(Model::load(&model_path())?);
    let secs = |d: Duration| d.as_secs_f64();

    let now_ms = churnd::time::wall_millis();
    let t = Instant::now();
    let engine = learn_customers(&settings, model.clone(), customers, now_ms);
    println!(
        "built an engine of {} customers in {:.1} s (wall clock, one purchase each)",
        engine.customers(),
        secs(t.elapsed())
    );
    let t = Instant::now();
    let snapshot = engine.snapshot();
    let pause = t.elapsed();
    drop(engine);
    let position = snapshot.applied.first().copied().unwrap_or_default();
    let created_ms = churnd::time::wall_millis();
    let t = Instant::now();
    let bytes = codec::encode(&snapshot, &streams, created_ms);
    let encode = t.elapsed();
    drop(snapshot);
    let dir = SnapshotDir::open(&settings.state.dir, settings.state.keep)?;
    let t = Instant::now();
    let path = dir.write(&bytes, created_ms)?;
    let write = t.elapsed();
    let size = bytes.len();
    drop(bytes);
    println!(
        "snapshot written: {size} bytes ({:.1} bytes per customer), clone {:.3} s, encode {:.3} s, write with fsync {:.3} s; the file was just written, so it is in the page cache",
        size as f64 / customers.max(1) as f64,
        secs(pause),
        secs(encode),
        secs(write)
    );

    // Redis as the snapshot left it: the stream up to the snapshot's last entry, the group
    // having delivered it. Nothing newer: what is timed is recovery alone, no replay.
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

    println!(
        "starting the daemon (its log follows); load average {}",
        load_average()
    );
    let listener = daemon::bind(&settings).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let daemon = tokio::spawn(daemon::run(settings.clone(), listener, shutdown.clone()));
    let ready = wait_ready(addr, &daemon, started, Duration::from_secs(600)).await?;
    println!(
        "start to ready (GET /readyz 200, polled every 10 ms): {:.3} s with {customers} customers, {size}-byte snapshot; load average {}",
        secs(ready),
        load_average()
    );
    shutdown.cancel();
    daemon.await??;

    // The same steps, one at a time, on the snapshot written above (still in the page cache).
    let t = Instant::now();
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let read = t.elapsed();
    let t = Instant::now();
    let decoded = codec::decode(&bytes, &streams)?;
    let decode = t.elapsed();
    drop(bytes);
    let t = Instant::now();
    let engine = Engine::restore(
        EngineSettings::from(&settings),
        model,
        Metrics::new(),
        decoded.state,
    );
    let restore = t.elapsed();
    println!(
        "the same steps timed alone: read {:.3} s, decode {:.3} s, restore {:.3} s ({} customers)",
        secs(read),
        secs(decode),
        secs(restore),
        engine.customers()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Bench::Memory { customers } => memory(customers),
        Bench::Throughput {
            events,
            customers,
            batch_size,
            redis_server,
        } => throughput(events, customers, batch_size, &redis_server).await,
        Bench::Latency {
            rate,
            seconds,
            warmup_seconds,
            customers,
            probe_every,
            probe_age_days,
            redis_server,
        } => {
            latency(
                rate,
                seconds,
                warmup_seconds,
                customers,
                probe_every,
                probe_age_days,
                &redis_server,
            )
            .await
        }
        Bench::Recovery {
            customers,
            redis_server,
        } => {
            // The daemon's own log gives its breakdown: snapshot loaded (read and decode),
            // state recovered (start to caught up). RUST_LOG overrides.
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "churnd=info".into()),
                )
                .init();
            recovery(customers, &redis_server).await
        }
    }
}
