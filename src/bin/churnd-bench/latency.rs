//! `churnd-bench latency`: at a steady offered load, the time from an XADD to the engine
//! having applied the entry, and from a probe event to its win-back task in Redis; first the
//! same for a bare consumer (the Redis floor).
//!
//! The program starts its own `redis-server` and runs the daemon in-process with its default
//! settings (wall clock, snapshots every 10 s) except a private `state.dir`, the shipped model,
//! HTTP on a free port and the win-back budgets lifted (under the shipped ones a run of
//! seconds is a sliver of a day's budget, and no probe would get a task). Once `/readyz` answers 200, a load generator on its own thread (a
//! single-threaded runtime, so that its pacing and timestamps do not wait for a worker of the
//! daemon's runtime) offers a steady `--rate` from its own connection: every millisecond one
//! pipeline of the XADDs due by then (50 at the default rate). The traffic is the throughput
//! mix (70 % purchases, 20 % visits, 5 % refunds, 5 % complaints; IDs of 12–24 bytes; `ts` =
//! now) over `--customers` 100,000 customers; one event in 500 is a **probe**: a brand-new
//! customer's single purchase 300 days ago, which the shipped model scores 0.928 (the program
//! checks at start that it raises a task). Two latencies are measured,
//! for the events sent after the warm-up:
//!
//! 1. **XADD → state updated**: from the `Instant` just before the pipeline holding the XADD is
//!    sent to the `Instant` the engine finished applying the batch holding the entry. The
//!    daemon publishes that instant with its per-stream position through `daemon::run_observed`
//!    (`Observers::with_applied`, a `tokio::sync::watch`); the entry ID is the one XADD
//!    returned. If the watcher misses a publication, entries count as applied at the next one
//!    it sees, so the figure can only err upwards.
//! 2. **XADD → win-back task read**: from the same `Instant` for a probe to the arrival of the
//!    `XREAD BLOCK` reply that carries its task, read from both `churn:winback` and
//!    `churn:winback:control` (10 % of probes hash into the control group). This adds the hop
//!    to the sink, its write of the batch's tasks (one `EVALSHA` of the guarded-write script
//!    per output stream and up to 256 tasks, queued behind any earlier batch's writes and
//!    XACKs) and the reader's wake-up.
//!
//! Before starting the daemon, the program offers the same load for the same time to a bare
//! consumer on a stream of its own (it only reads with `XREADGROUP BLOCK`, same `COUNT` and
//! block time as the daemon, and acknowledges, riding with the next read) and prints its XADD →
//! read latency: the Redis floor, what Redis, the client library and the OS cost before churnd
//! does any work. Percentiles are nearest-rank over all samples (a sorted `Vec`). The program
//! also prints the rate achieved, and from the daemon's `/metrics` the batches, mean entries
//! and processing time per batch and the snapshot pauses over the run.
//!
//! Two options show what snapshots cost at scale: `--tracked N` starts the daemon from a
//! snapshot of N customers (one purchase each over the past year, the ordinary traffic's
//! customers among them; built in-process and written the daemon's way, so the bench takes a
//! minute longer), and `--snapshot-interval-ms` sets the daemon's interval (longer than the
//! run: only the final snapshot).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::streams::StreamReadReply;
use redis::AsyncCommands;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use churnd::config::Settings;
use churnd::daemon;
use churnd::engine::{Engine, EngineSettings};
use churnd::event::EntryId;
use churnd::metrics::Metrics;
use churnd::model::Model;
use churnd::source::batch::Batch;

use crate::bare::BareConsumer;
use crate::http_probe::{http_get, sample, wait_ready};
use crate::machine::load_average;
use crate::redis_server::{connect, tempfile_dir, RedisServer};
use crate::workload::{
    customer_id, daemon_settings, max_customers, model_path, purchase_entry, push_mixed_event,
    restart_with_snapshot,
};

/// `churnd-bench latency` options.
#[derive(clap::Args)]
pub struct Args {
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
    /// Customers the daemon already tracks when the load starts, restored from a snapshot
    /// (one purchase each over the past year; the ordinary traffic's customers are the
    /// first of them): latency at scale, with every snapshot of the run copying them all.
    /// 0 (the default): the daemon starts empty.
    #[arg(long, default_value_t = 0)]
    tracked: usize,
    /// The daemon's `state.snapshot_interval_ms` (default: the shipped 10 s); a value longer
    /// than the run leaves only the final snapshot, to see what snapshots cost.
    #[arg(long)]
    snapshot_interval_ms: Option<u64>,
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
    let mut engine = Engine::new(EngineSettings::from(settings), model, Metrics::new().engine);
    let customer = "probe-check-0";
    let ts = now_ms - age_days * 86_400_000;
    let mut fx = engine.apply_batch(
        Batch::new(vec![purchase_entry(now_ms, 1, customer, "49.90", ts)]),
        now_ms,
    );
    // Under the wall clock a backdated purchase is read as the past: tasks wait for the
    // read at the streams' end.
    let mut end = Batch::new(Vec::new());
    end.at_end = true;
    fx.tasks.extend(engine.apply_batch(end, now_ms).tasks);
    let probability = engine
        .customer(customer)
        .and_then(|c| c.churn_probability)
        .context("the probe customer was not scored")?;
    Ok((probability, !fx.tasks.is_empty()))
}

/// Load generator settings for [`latency`].
#[derive(Clone)]
struct Load {
    url: String,
    stream: String,
    task_streams: [String; 2],
    rate: u64,
    warmup: Duration,
    measure: Duration,
    customers: usize,
    /// Probe customers are numbered from here on: new to the daemon.
    first_probe: usize,
    probe_every: u64,
    probe_age_days: u64,
    /// Whether a consumer writes win-back tasks for the probes (the bare one does not):
    /// after the load, wait for them.
    expect_tasks: bool,
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
                let customer = customer_id(load.first_probe + report.total_probes as usize);
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
            load.first_probe,
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
        while load.expect_tasks
            && probe_tasks.load(Ordering::Relaxed) < report.total_probes
            && Instant::now() < deadline
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

/// Runs [`generate`] on its own thread and single-threaded runtime.
async fn run_load(load: Load, applied: watch::Receiver<daemon::Applied>) -> Result<LoadReport> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("load".into())
        .spawn(move || {
            let report = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("load generator runtime")
                .and_then(|rt| tokio::task::LocalSet::new().block_on(&rt, generate(load, applied)));
            let _ = done_tx.send(report);
        })?;
    done_rx.await.context("the load generator panicked")?
}

/// For every entry sent during the measurement, the time from its XADD to the first
/// published position that covers it; says how many were never covered.
fn read_latencies(report: &LoadReport) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(report.sent.len());
    for (id, sent) in &report.sent {
        let i = report
            .applied
            .partition_point(|(position, _)| position < id);
        if let Some((_, at)) = report.applied.get(i) {
            latencies.push(at.saturating_duration_since(*sent));
        }
    }
    let unmatched = report.sent.len() - latencies.len();
    if unmatched > 0 {
        println!("  {unmatched} entries sent were never seen read");
    }
    latencies
}

/// The Redis floor: a consumer that only reads (XREADGROUP BLOCK, `batch` entries at most)
/// and acknowledges (riding with the next read, one round trip per batch), publishing each
/// reply's last ID the moment it arrives, as the daemon publishes what it applied. What
/// XADD→read costs on this machine before churnd does anything.
async fn bare_reader(
    url: String,
    stream: String,
    batch: usize,
    block_ms: u64,
    published: watch::Sender<daemon::Applied>,
    stop: CancellationToken,
) -> Result<()> {
    let mut conn = connect(&url).await?;
    let mut consumer = BareConsumer::create(&mut conn, &stream, "$", batch, Some(block_ms)).await?;
    while !stop.is_cancelled() {
        let entries = consumer.next(&mut conn).await?;
        let at = Instant::now();
        if let Some(last) = entries.last() {
            published.send_replace(daemon::Applied {
                positions: vec![last.id],
                at: Some(at),
            });
        }
    }
    Ok(())
}

/// Offers `load` to [`bare_reader`] on a stream of its own and prints XADD→read.
async fn measure_floor(load: &Load, batch: usize, block_ms: u64) -> Result<()> {
    let load = Load {
        stream: format!("{}:floor", load.stream),
        expect_tasks: false,
        ..load.clone()
    };
    let (tx, rx) = watch::channel(daemon::Applied::default());
    let stop = CancellationToken::new();
    let reader = tokio::spawn(bare_reader(
        load.url.clone(),
        load.stream.clone(),
        batch,
        block_ms,
        tx,
        stop.clone(),
    ));
    // The group exists before the first XADD, or the reader would miss entries.
    let mut conn = connect(&load.url).await?;
    while !conn.exists::<_, bool>(&load.stream).await? {
        if reader.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stream = load.stream.clone();
    let report = run_load(load, rx).await;
    stop.cancel();
    reader.await??;
    let report = report?;
    print_latency(
        "Redis floor, XADD -> read by a bare consumer",
        &mut read_latencies(&report),
    );
    // Its entries would only take Redis memory from the daemon's run.
    conn.del::<_, ()>(&stream).await?;
    Ok(())
}

pub async fn latency(args: Args) -> Result<()> {
    let Args {
        rate,
        seconds,
        warmup_seconds,
        customers,
        tracked,
        snapshot_interval_ms,
        probe_every,
        probe_age_days,
        redis_server: binary,
    } = args;
    if rate == 0 || seconds == 0 || probe_every == 0 || customers == 0 {
        bail!("--rate, --seconds, --probe-every and --customers must be positive");
    }
    let redis = RedisServer::start(&binary)?;
    let state = tempfile_dir::TempDir::new("state")?;
    let mut settings = daemon_settings(&redis, state.path());
    // Every probe gets its task: the figure is the path's latency, not the budgets' pacing.
    settings.winback.lift_budgets();
    settings.state.max_customers = settings
        .state
        .max_customers
        .max(max_customers(tracked + customers));
    if let Some(interval) = snapshot_interval_ms {
        settings.state.snapshot_interval = churnd::config::Interval::try_from_millis(interval)
            .context("--snapshot-interval-ms must be positive")?;
    }
    let settings = settings.validated()?;
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
        first_probe: customers.max(tracked),
        probe_every,
        probe_age_days,
        expect_tasks: true,
    };
    println!(
        "Redis floor: offering {rate} events/s to a bare consumer for {warmup_seconds} s of warm-up + {seconds} s"
    );
    measure_floor(
        &load,
        settings.source.batch_size.get(),
        settings.source.block.as_millis(),
    )
    .await?;
    if tracked > 0 {
        let model = Arc::new(Model::load(&model_path())?);
        let restart = restart_with_snapshot(&redis, &settings, model, tracked).await?;
        println!(
            "the daemon restores {tracked} customers from a {}-byte snapshot (built in {:.1} s, written in {:.1} s)",
            restart.bytes,
            restart.build.as_secs_f64(),
            restart.write.as_secs_f64()
        );
    }
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
    wait_ready(addr, &daemon, started, Duration::from_secs(120)).await?;
    println!(
        "daemon ready; offering {rate} events/s over {customers} customers for {warmup_seconds} s of warm-up + {seconds} s (load average before: {})",
        load_average()
    );

    let report = run_load(load, applied_rx).await?;
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
    print_latency("XADD -> state updated", &mut read_latencies(&report));
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
    if let Some((steps, pause)) = mean("churnd_snapshot_pause_seconds") {
        let written =
            sample(&metrics, "churnd_snapshots_total{outcome=\"written\"}").unwrap_or(0.0);
        println!(
            "daemon: {written:.0} snapshots written; {steps:.0} steps copying them out (begin and slices), {:.3} ms pause each on average",
            pause * 1e3
        );
    }
    Ok(())
}
