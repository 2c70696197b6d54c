//! End-to-end benchmarks against a real redis-server that the program starts itself.
//!
//! `churnd-bench throughput`: pre-loads a stream, then measures how fast a bare consumer that
//! only reads and acknowledges drains it (the Redis limit on this machine) and how fast the
//! daemon does the whole job on the same stream, and prints both with their ratio.
//!
//! `churnd-bench memory`: resident memory per tracked customer.
//!
//! `churnd-bench sweep`: the CPU cost of re-scoring the silent customers that fall due.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use churnd::config::{ClockMode, Settings};
use churnd::daemon;
use churnd::engine::{Engine, EngineSettings};
use churnd::event::EntryId;
use churnd::metrics::Metrics;
use churnd::source::batch::{Batch, Entry};
use churnd::source::lag::group_info;
use redis::Value;

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
    /// CPU cost of re-scoring silent customers: the wall clock moves on in steps over a
    /// table of `customers`, and each step's tick re-scores those whose check fell due.
    Sweep {
        #[arg(long, default_value_t = 10_000_000)]
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
        /// Event times are spread over this many days before now. 0 (the default): live
        /// traffic, every event happens now. 365: a backfill of a year of history, in which
        /// most customers lapse, so many win-back tasks are written (and under
        /// `--clock event` every silence check of the year is made).
        #[arg(long, default_value_t = 0)]
        history_days: u64,
        /// The daemon's clock: `wall` (the default, live traffic: silence is checked as
        /// real time passes, so not during the run) or `event` (a replay: the year of event
        /// time the stream covers passes during the run, with every silence check it implies).
        #[arg(long, default_value = "wall")]
        clock: ClockArg,
        /// The redis-server binary to start.
        #[arg(long, default_value = "redis-server")]
        redis_server: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ClockArg {
    Wall,
    Event,
}

impl From<ClockArg> for ClockMode {
    fn from(clock: ClockArg) -> Self {
        match clock {
            ClockArg::Wall => ClockMode::Wall,
            ClockArg::Event => ClockMode::Event,
        }
    }
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
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
        Ok(redis::Client::open(self.url())?
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }
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

/// Appends `events` entries over `customers` customers: 70 % purchases, 20 % visits, 5 %
/// refunds, 5 % complaints, IDs of 12 to 24 bytes, event times spread evenly over the
/// `history_days` before now, in stream order (all now when 0).
async fn preload(
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
            let cmd = pipe
                .cmd("XADD")
                .arg(STREAM)
                .arg("*")
                .arg("customer_id")
                .arg(customer)
                .arg("ts")
                .arg(ts);
            match rng.random_range(0..20) {
                0..=13 => cmd
                    .arg("type")
                    .arg("purchase")
                    .arg("amount")
                    .arg(format!("{:.2}", rng.random_range(1.0..200.0))),
                14..=17 => cmd.arg("type").arg("visit"),
                18 => cmd.arg("type").arg("refund").arg("amount").arg("9.99"),
                _ => cmd.arg("type").arg("complaint"),
            };
            cmd.ignore();
        }
        pipe.query_async::<()>(conn).await?;
    }
    Ok(())
}

/// Reads the whole stream with its own group, acknowledging every entry after reading it
/// (one XACK per batch, as the daemon does), and doing nothing else. Returns the time it
/// took.
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
    let mut unacked: Vec<String> = Vec::new();
    // One round trip per batch: the acknowledgement of the last batch rides with the read of
    // the next, so Redis, not the network, sets the pace.
    while read < events {
        let mut pipe = redis::pipe();
        if !unacked.is_empty() {
            pipe.cmd("XACK")
                .arg(STREAM)
                .arg("bare")
                .arg(&unacked)
                .ignore();
        }
        pipe.cmd("XREADGROUP")
            .arg("GROUP")
            .arg("bare")
            .arg("bare")
            .arg("COUNT")
            .arg(batch)
            .arg("STREAMS")
            .arg(STREAM)
            .arg(">");
        let (reply,): (redis::Value,) = pipe.query_async(conn).await?;
        let entries = churnd::source::batch::parse_reply(reply, &[STREAM.to_string()])?;
        if entries.is_empty() {
            bail!("the stream ended after {read} of {events} entries");
        }
        read += entries.len();
        unacked = entries.iter().map(|e| e.id.to_string()).collect();
    }
    redis::cmd("XACK")
        .arg(STREAM)
        .arg("bare")
        .arg(&unacked)
        .query_async::<()>(conn)
        .await?;
    Ok(started.elapsed())
}

/// Runs the daemon until its group has read and acknowledged every entry.
async fn daemon_run(
    redis: &RedisServer,
    conn: &mut MultiplexedConnection,
    batch: usize,
    clock: ClockMode,
) -> Result<Duration> {
    let state = tempfile_dir::TempDir::new("state")?;
    let mut settings = Settings::default();
    settings.redis.url = redis.url();
    settings.source.streams = vec![STREAM.into()];
    settings.source.group = "churnd".into();
    settings.source.consumer = "bench".into();
    settings.source.batch_size = batch;
    settings.clock.mode = clock;
    settings.http.addr = "127.0.0.1:0".into();
    settings.state.dir = state.path().to_path_buf();
    settings.model.path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/cdnow.json");
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
    let defaults = Settings::default();
    let mut written = Vec::new();
    for stream in [
        &defaults.winback.stream,
        &defaults.winback.control_stream,
        &defaults.dead_letter.stream,
    ] {
        let len: u64 = redis::cmd("XLEN").arg(stream).query_async(conn).await?;
        written.push(format!("{len} in {stream}"));
    }
    println!("churnd wrote {}", written.join(", "));
    Ok(elapsed)
}

async fn throughput(
    events: usize,
    customers: usize,
    batch: usize,
    history_days: u64,
    clock: ClockMode,
    binary: &PathBuf,
) -> Result<()> {
    let redis = RedisServer::start(binary)?;
    let mut conn = redis.conn().await?;
    let loading = Instant::now();
    preload(&mut conn, events, customers, history_days).await?;
    println!(
        "pre-loaded {events} events over {customers} customers in {:.1} s",
        loading.elapsed().as_secs_f64()
    );
    let bare = bare_consumer(&mut conn, events, batch).await?;
    let bare_rate = events as f64 / bare.as_secs_f64();
    println!(
        "bare consumer (XREADGROUP COUNT {batch}, XACK of each batch pipelined with the next read): {:.2} s, {bare_rate:.0} events/s",
        bare.as_secs_f64()
    );
    let churnd = daemon_run(&redis, &mut conn, batch, clock).await?;
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

/// An engine with default settings, the shipped model and room for `customers`.
fn bench_engine(clock: ClockMode, customers: usize) -> Result<(Engine, Metrics)> {
    let mut settings = Settings::default();
    settings.clock.mode = clock;
    settings.state.max_customers = customers.max(1);
    let model = churnd::model::Model::load(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/cdnow.json"),
    )?;
    let metrics = Metrics::new();
    let engine = Engine::new(
        EngineSettings::from(&settings),
        std::sync::Arc::new(model),
        metrics.clone(),
    );
    Ok((engine, metrics))
}

/// Feeds the engine one purchase per customer (IDs of 12 to 24 bytes, event times over the
/// year before `now_ms`), in batches of 1,000 read at `now_ms`.
fn learn_customers(engine: &mut Engine, customers: usize, now_ms: u64) {
    let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
    let mut rng = StdRng::seed_from_u64(7);
    for start in (0..customers).step_by(1_000) {
        let entries = (start..(start + 1_000).min(customers))
            .map(|n| {
                let ts = now_ms - rng.random_range(0..365 * 86_400_000u64);
                Entry {
                    stream: 0,
                    id: EntryId {
                        ms: now_ms,
                        seq: n as u64 + 1,
                    },
                    values: Some(vec![
                        bulk("customer_id"),
                        bulk(&customer_id(n)),
                        bulk("type"),
                        bulk("purchase"),
                        bulk("amount"),
                        bulk("19.90"),
                        bulk("ts"),
                        bulk(&ts.to_string()),
                    ]),
                }
            })
            .collect();
        engine.apply_batch(Batch::new(entries), now_ms);
    }
}

fn memory(customers: usize) -> Result<()> {
    let (mut engine, _) = bench_engine(ClockMode::Event, customers)?;
    let before = resident_bytes()?;
    learn_customers(&mut engine, customers, churnd::time::wall_millis());
    let grown = resident_bytes()?.saturating_sub(before);
    println!(
        "{} customers tracked: resident memory grew by {:.1} MiB, {:.1} bytes per customer (table, IDs, index, timers and allocator slack included)",
        engine.customers(),
        grown as f64 / (1024.0 * 1024.0),
        grown as f64 / engine.customers().max(1) as f64
    );
    Ok(())
}

/// CPU time consumed by the calling thread: the sweep's own cost, whatever else the machine
/// is doing.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The wall clock moves on in steps; each tick re-scores the customers whose check fell due.
/// Prints, per step, how many were due and the CPU time the tick took, and the cost of a
/// tick with nobody due.
fn sweep(customers: usize) -> Result<()> {
    let (mut engine, metrics) = bench_engine(ClockMode::Wall, customers)?;
    let now_ms = churnd::time::wall_millis();
    let learning = Instant::now();
    learn_customers(&mut engine, customers, now_ms);
    println!(
        "{} customers tracked (one purchase each over the past year) in {:.1} s",
        engine.customers(),
        learning.elapsed().as_secs_f64()
    );
    println!(
        "{:>18} {:>10} {:>12} {:>16} {:>14}",
        "clock moved to", "due", "tick CPU", "per due", "idle tick CPU"
    );
    const HOUR_MS: u64 = 3_600_000;
    let mut tasks = 0;
    for hours in [1, 2, 4, 8, 16, 24, 48, 96, 192, 384, 720] {
        let at = now_ms + hours * HOUR_MS;
        let rescores = metrics.rescores.get();
        let cpu = thread_cpu_time();
        tasks += engine.tick(at).tasks.len();
        let spent = thread_cpu_time() - cpu;
        let due = metrics.rescores.get() - rescores;
        let cpu = thread_cpu_time();
        engine.tick(at);
        let idle = thread_cpu_time() - cpu;
        println!(
            "{:>18} {due:>10} {:>9.3} ms {:>13.0} ns {:>11.1} µs",
            format!("+{hours} h"),
            spent.as_secs_f64() * 1e3,
            spent.as_nanos() as f64 / due.max(1) as f64,
            idle.as_secs_f64() * 1e6,
        );
    }
    println!("{tasks} win-back tasks raised by the sweeps");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Bench::Memory { customers } => memory(customers),
        Bench::Sweep { customers } => sweep(customers),
        Bench::Throughput {
            events,
            customers,
            batch_size,
            history_days,
            clock,
            redis_server,
        } => {
            throughput(
                events,
                customers,
                batch_size,
                history_days,
                clock.into(),
                &redis_server,
            )
            .await
        }
    }
}
