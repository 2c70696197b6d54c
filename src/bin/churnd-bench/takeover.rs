//! `churnd-bench takeover`: how long the partitions of a replica killed with SIGKILL go
//! unserved (issue 21: taken over within the lease time + 2 s at 1,000,000 customers).
//!
//! A round starts its own `redis-server`, pre-loads one event of the throughput mix for each
//! of `--customers` customers into the P = `--partitions` partition streams (event times
//! now), and starts `--replicas` replicas as `churnd run` processes of the built binary
//! (`partitions.ownership = "leases"`, `partitions.lease_ms` = `--lease-ms`, snapshots every
//! 10 s in a shared `state.dir` or with `--store redis` in Redis; listed as members before
//! they start, so none takes another's share first: [`crate::replicas::announce`]). It waits
//! until every partition is drained and its committed group is at the last entry (a
//! snapshot of every partition holds everything), then appends `--tail-events` more events
//! (random customers among them) and waits until they are drained: what the killed replica
//! applied after its last snapshot, which its successor replays. Then it sends SIGKILL to
//! one replica (a different one each round) and polls every 10 ms, from the kill on: the
//! lease keys (`<group>:lease:{p}`), and each survivor's `/readyz` and `/metrics`. The
//! takeover is done when every lease the dead replica held is held by a survivor, the
//! survivors own all P partitions between them (`churnd_partitions_owned`) and every
//! survivor answers `/readyz` 200: restored and caught up with its streams.
//!
//! The split, from the kill: **lease wait** until the last of the dead replica's leases is
//! held by a survivor (its lease and member entry expire `lease_ms` after its last renewal,
//! which came up to a third of that before the kill, and a survivor's round scheduled for
//! that expiry takes it; the leases' time to live at the kill tells the two apart); then,
//! from the survivor's `/readyz` reasons during its rebalance (it only gains partitions, so
//! its engines pause and go on): **hand-over** ("handing over partitions …": its own
//! partitions' reading paused, what was read applied and written, no snapshot),
//! **restore** ("restoring partitions …": the partitions gained loaded from their newest
//! snapshots, beside the engines running, and the groups moved to the positions) and
//! **replay** ("replaying the input streams": reading from those positions to the streams'
//! end). The entries replayed are the committed groups' lag of the dead replica's
//! partitions at the kill. `churnd_partitions_restored_total` tells how many partitions
//! the survivors restored.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::Rng;

use churnd::config::{Interval, Settings};
use churnd::ownership::lease::Leases;
use churnd::partition::PartitionCount;

use crate::machine::load_average;
use crate::redis_server::{tempfile_dir::TempDir, RedisServer};
use crate::replicas::{
    announce, churnd_binary, groups, holder_name, lease_holders, median, stop_all, sum_samples,
    wait_streams, Fleet, Groups, Replica, StoreArg,
};
use crate::workload::preload_partitioned;

/// `churnd-bench takeover` options.
#[derive(clap::Args)]
pub struct Args {
    /// Customers, one event each, over every partition.
    #[arg(long, default_value_t = 1_000_000)]
    customers: usize,
    /// `partitions.count`.
    #[arg(long, default_value_t = 16)]
    partitions: u16,
    /// Replicas; one of them is killed.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(2..))]
    replicas: u16,
    /// Events appended after every partition's snapshot holds everything: the dead replica's
    /// share of them is what its successor replays.
    #[arg(long, default_value_t = 100_000)]
    tail_events: usize,
    /// Rounds, each on a new Redis.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// `partitions.lease_ms`.
    #[arg(long, default_value_t = Settings::default().partitions.lease.as_millis())]
    lease_ms: u64,
    /// Where the replicas keep their snapshots.
    #[arg(long, value_enum, default_value = "dir")]
    store: StoreArg,
    /// The churnd binary; default: `churnd` beside this program (`cargo build --release
    /// --bins`).
    #[arg(long)]
    churnd: Option<PathBuf>,
    /// The redis-server binary to start.
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
}

/// One not-ready spell of a survivor after the kill: when each `/readyz` reason was first
/// seen, from the kill.
#[derive(Debug, Default, Clone)]
struct Spell {
    start: Duration,
    restoring: Option<Duration>,
    replaying: Option<Duration>,
    ready: Option<Duration>,
}

impl Spell {
    fn describe(&self) -> String {
        let at =
            |t: Option<Duration>| t.map_or("-".into(), |t| format!("{:.2} s", t.as_secs_f64()));
        format!(
            "not ready at {}, restoring {}, replaying {}, ready {}",
            at(Some(self.start)),
            at(self.restoring),
            at(self.replaying),
            at(self.ready)
        )
    }
}

/// What a survivor's `/readyz` showed after the kill.
#[derive(Default)]
struct Survivor {
    spells: Vec<Spell>,
}

impl Survivor {
    fn observe(&mut self, at: Duration, status: u16, body: &str) {
        let open = self.spells.last().is_some_and(|s| s.ready.is_none());
        if status == 200 {
            if let Some(s) = self.spells.last_mut().filter(|_| open) {
                s.ready = Some(at);
            }
            return;
        }
        if !open {
            self.spells.push(Spell {
                start: at,
                ..Spell::default()
            });
        }
        let s = self.spells.last_mut().expect("a spell is open");
        if body.contains("restoring partitions") {
            s.restoring.get_or_insert(at);
        }
        if body.contains("replaying the input streams") {
            s.replaying.get_or_insert(at);
        }
    }
}

/// What one round measured, from the kill.
struct Round {
    total: Duration,
    /// The dead replica's leases ran out (their time to live at the kill).
    expiry: Duration,
    lease_wait: Duration,
    hand_over: Duration,
    restore: Duration,
    replay: Duration,
    replayed: i64,
    spells: usize,
}

pub async fn takeover(args: Args) -> Result<()> {
    let p = PartitionCount::new(args.partitions).context("--partitions must be 1 to 1024")?;
    let lease = Interval::try_from_millis(args.lease_ms).context("--lease-ms must be above 0")?;
    let churnd = churnd_binary(args.churnd.as_ref())?;
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        println!(
            "round {round} of {} (load average {})",
            args.rounds,
            load_average()
        );
        let victim = (round as usize - 1) % usize::from(args.replicas);
        rounds.push(one_round(&args, &churnd, p, lease, victim).await?);
    }
    let secs = |f: fn(&Round) -> Duration| {
        let v: Vec<f64> = rounds.iter().map(|r| f(r).as_secs_f64()).collect();
        let text: Vec<String> = v.iter().map(|s| format!("{s:.2}")).collect();
        format!("{} (median {:.2})", text.join(", "), median(&v))
    };
    let limit = lease.get() + Duration::from_secs(2);
    println!(
        "\n{} customers, P = {}, {} replicas, lease {:.1} s, {} tail events; seconds per round from the SIGKILL:",
        args.customers,
        args.partitions,
        args.replicas,
        lease.get().as_secs_f64(),
        args.tail_events
    );
    println!("  taken over (restored, caught up): {}", secs(|r| r.total));
    println!(
        "  within lease + 2 s ({:.1} s): {} of {} rounds",
        limit.as_secs_f64(),
        rounds.iter().filter(|r| r.total <= limit).count(),
        rounds.len()
    );
    println!(
        "  lease wait (last lease taken): {}",
        secs(|r| r.lease_wait)
    );
    println!(
        "    of which until the leases expired: {}",
        secs(|r| r.expiry)
    );
    println!(
        "    and from expiry to taken (the survivor's round at the expiry): {}",
        secs(|r| r.lease_wait.saturating_sub(r.expiry))
    );
    println!(
        "  hand-over (survivor's own partitions paused): {}",
        secs(|r| r.hand_over)
    );
    println!(
        "  restore (gained partitions' snapshots loaded): {}",
        secs(|r| r.restore)
    );
    println!("  replay (to the streams' end): {}", secs(|r| r.replay));
    let replayed: Vec<String> = rounds.iter().map(|r| r.replayed.to_string()).collect();
    let spells: Vec<String> = rounds.iter().map(|r| r.spells.to_string()).collect();
    println!(
        "  entries replayed: {}; rebalances of the last survivor ready: {}; load average {}",
        replayed.join(", "),
        spells.join(", "),
        load_average()
    );
    Ok(())
}

async fn one_round(
    args: &Args,
    churnd: &Path,
    p: PartitionCount,
    lease: Interval,
    victim: usize,
) -> Result<Round> {
    let redis = RedisServer::start(&args.redis_server)?;
    let mut conn = redis.conn().await?;
    let loading = Instant::now();
    preload_partitioned(&mut conn, p, args.customers, |i, _| i, 0).await?;
    let loaded = loading.elapsed();
    let dir = TempDir::new("takeover")?;
    let fleet = Fleet::new(
        churnd.to_path_buf(),
        &redis,
        dir.path(),
        (p, lease, args.store),
        args.customers,
    );
    let (streams, group) = (fleet.streams(), fleet.group().to_string());
    let names: Vec<String> = (0..args.replicas).map(|i| format!("replica-{i}")).collect();
    announce(&mut conn, &group, &names, lease.get()).await?;
    let mut replicas = names
        .iter()
        .map(|name| fleet.spawn(name))
        .collect::<Result<Vec<_>>>()?;
    let limit = Duration::from_secs(1800);
    let drained = wait_streams(
        &mut conn,
        &streams,
        &group,
        &mut replicas,
        Groups::drained,
        limit,
    )
    .await?;
    let committed = wait_streams(
        &mut conn,
        &streams,
        &group,
        &mut replicas,
        Groups::committed,
        limit,
    )
    .await?;
    let tracked = customers_tracked(&replicas).await;
    println!(
        "  {} customers loaded in {:.1} s, drained {:.1} s after the start, every partition's snapshot committed {:.1} s after that; {tracked} customers tracked",
        args.customers,
        loaded.as_secs_f64(),
        drained.as_secs_f64(),
        committed.as_secs_f64(),
    );
    if args.tail_events > 0 {
        let customers = args.customers;
        preload_partitioned(
            &mut conn,
            p,
            args.tail_events,
            |_, rng| rng.random_range(0..customers),
            0,
        )
        .await?;
        wait_streams(
            &mut conn,
            &streams,
            &group,
            &mut replicas,
            Groups::drained,
            limit,
        )
        .await?;
    }

    let holders = lease_holders(&mut conn, &group, p).await?;
    let dead_name = names[victim].clone();
    let held: Vec<u16> = (0..p.get())
        .filter(|&q| holders[usize::from(q)].as_deref().map(holder_name) == Some(&dead_name))
        .collect();
    if held.is_empty() {
        bail!("{dead_name} holds no partition: nothing to take over ({holders:?})");
    }
    let mut replayed = 0;
    for &q in &held {
        replayed += groups(&mut conn, &streams[usize::from(q)], &group)
            .await
            .to_replay()
            .unwrap_or(0);
    }
    // When the dead replica's leases run out: their longest time to live at the kill.
    let leases = Leases::new(&group, lease.get());
    let mut expiry_ms = 0i64;
    for &q in &held {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(leases.key(q))
            .query_async(&mut conn)
            .await?;
        expiry_ms = expiry_ms.max(ttl);
    }
    let mut dead = replicas.remove(victim);
    let restored_before = partitions_restored(&replicas).await;
    dead.kill()?;
    let killed = Instant::now();
    let expiry = Duration::from_millis(expiry_ms.max(0) as u64);
    println!(
        "  SIGKILL to {dead_name}, which held partitions {held:?} ({replayed} entries after their snapshots)"
    );
    let (lease_wait, total, survivors) = watch_takeover(
        &mut conn,
        &group,
        p,
        &held,
        &dead_name,
        &mut replicas,
        killed,
    )
    .await?;
    let tracked = customers_tracked(&replicas).await;
    let restored = partitions_restored(&replicas).await - restored_before;
    // The survivor ready last, and its last spell.
    let (name, last) = survivors
        .iter()
        .zip(&replicas)
        .filter_map(|(s, r)| Some((r.name.clone(), s.spells.last()?.clone())))
        .max_by_key(|(_, s)| s.ready)
        .context("no survivor rebalanced")?;
    let spells = survivors
        .iter()
        .zip(&replicas)
        .find(|(_, r)| r.name == name)
        .map_or(0, |(s, _)| s.spells.len());
    let ready = last.ready.unwrap_or(total);
    let restoring = last.restoring.unwrap_or(ready);
    let replaying = last.replaying.unwrap_or(ready);
    let round = Round {
        total,
        expiry,
        lease_wait,
        hand_over: restoring.saturating_sub(last.start),
        restore: replaying.saturating_sub(restoring),
        replay: ready.saturating_sub(replaying),
        replayed,
        spells,
    };
    for (s, r) in survivors.iter().zip(&replicas) {
        let spells: Vec<String> = s.spells.iter().map(Spell::describe).collect();
        println!("  {}: {}", r.name, spells.join("; "));
    }
    println!(
        "  taken over in {:.2} s (lease {:.1} s): leases expired {:.2} s, last one taken {:.2} s; {name} (ready last, {} rebalance(s)) not ready from {:.2} s: hand-over {:.2} s, restore {:.2} s, replay {:.2} s; {restored} partitions restored, {tracked} customers tracked by the survivors",
        total.as_secs_f64(),
        lease.get().as_secs_f64(),
        expiry.as_secs_f64(),
        lease_wait.as_secs_f64(),
        spells,
        last.start.as_secs_f64(),
        round.hand_over.as_secs_f64(),
        round.restore.as_secs_f64(),
        round.replay.as_secs_f64(),
    );
    stop_all(replicas)?;
    Ok(round)
}

/// Polls every 10 ms from the kill until the dead replica's partitions are held by
/// survivors, the survivors own all P and every one is ready. Returns when the last lease
/// was taken, when it was all done, and what each survivor's `/readyz` showed.
async fn watch_takeover(
    conn: &mut redis::aio::MultiplexedConnection,
    group: &str,
    p: PartitionCount,
    held: &[u16],
    dead: &str,
    survivors: &mut [Replica],
    killed: Instant,
) -> Result<(Duration, Duration, Vec<Survivor>)> {
    let mut seen: Vec<Survivor> = survivors.iter().map(|_| Survivor::default()).collect();
    let mut leases_taken = None;
    loop {
        let at = killed.elapsed();
        if at > Duration::from_secs(600) {
            bail!("not taken over within 600 s");
        }
        let holders = lease_holders(conn, group, p).await?;
        let taken = held.iter().all(|&q| {
            holders[usize::from(q)]
                .as_deref()
                .is_some_and(|h| holder_name(h) != dead)
        });
        if taken && leases_taken.is_none() {
            leases_taken = Some(at);
        }
        let (mut owned, mut ready) = (0.0, true);
        for (r, s) in survivors.iter_mut().zip(&mut seen) {
            r.check_running()?;
            let (status, body) = r.readyz().await.unwrap_or((0, String::new()));
            s.observe(killed.elapsed(), status, &body);
            ready &= status == 200;
            owned += sum_samples(
                &r.metrics().await.unwrap_or_default(),
                "churnd_partitions_owned",
                "",
            );
        }
        if let Some(taken_at) = leases_taken.filter(|_| taken) {
            if ready && owned as u16 == p.get() {
                return Ok((taken_at, killed.elapsed(), seen));
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Customers the replicas track together (`churnd_customers_tracked` summed).
async fn customers_tracked(replicas: &[Replica]) -> f64 {
    summed(replicas, "churnd_customers_tracked").await
}

/// Partitions the replicas restored from snapshots so far (`churnd_partitions_restored_total`
/// summed): at a takeover, the dead replica's only, if the survivors kept their engines.
async fn partitions_restored(replicas: &[Replica]) -> f64 {
    summed(replicas, "churnd_partitions_restored_total").await
}

/// `metric` summed over the replicas.
async fn summed(replicas: &[Replica], metric: &str) -> f64 {
    let mut total = 0.0;
    for r in replicas {
        total += sum_samples(&r.metrics().await.unwrap_or_default(), metric, "");
    }
    total
}
