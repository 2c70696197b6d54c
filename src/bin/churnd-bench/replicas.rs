//! Replicas under `partitions.ownership = "leases"` as real `churnd run` processes of the
//! built binary, over one private Redis, and what the `replicas` and `takeover` benchmarks
//! read of them: CPU time from /proc, metrics and `/readyz` over HTTP, the partitions'
//! consumer groups and leases in Redis.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use redis::aio::MultiplexedConnection;

use churnd::config::{Interval, Ownership, Settings, StateStore};
use churnd::partition::PartitionCount;
use churnd::source::commit::{committed_group, written_group};
use churnd::source::lag::{group_info, GroupInfo};

use crate::http_probe::http_get;
use crate::machine::process_cpu_time;
use crate::redis_server::RedisServer;
use crate::workload::{daemon_settings, max_customers};

/// Where the replicas keep their snapshots (`state.store`).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreArg {
    /// One `state.dir` shared by every replica (a host path here; a ReadWriteMany volume in
    /// Kubernetes).
    Dir,
    /// Keys in the Redis they read from.
    Redis,
}

/// What every replica of a run shares.
pub struct Fleet {
    /// The `churnd` binary.
    pub churnd: PathBuf,
    /// The settings every replica gets, before its own name and port.
    pub settings: Settings,
    /// Config files, logs, and the shared `state.dir`.
    pub dir: PathBuf,
}

impl Fleet {
    /// Replicas over `redis` with `p` partitions held by leases of `lease`, snapshots in
    /// `store`, room for `customers`, files under `dir`.
    pub fn new(
        churnd: PathBuf,
        redis: &RedisServer,
        dir: &Path,
        (p, lease, store): (PartitionCount, Interval, StoreArg),
        customers: usize,
    ) -> Self {
        let mut settings = daemon_settings(redis, &dir.join("state"));
        settings.partitions.count = p;
        settings.partitions.ownership = Ownership::Leases;
        settings.partitions.lease = lease;
        settings.state.store = match store {
            StoreArg::Dir => StateStore::Dir,
            StoreArg::Redis => StateStore::Redis,
        };
        settings.state.max_customers = settings.state.max_customers.max(max_customers(customers));
        settings.shutdown.drain_timeout = Duration::from_secs(60);
        Self {
            churnd,
            settings,
            dir: dir.to_path_buf(),
        }
    }

    /// The input streams, one per partition.
    pub fn streams(&self) -> Vec<String> {
        self.settings.input_streams()
    }

    pub fn group(&self) -> &str {
        &self.settings.source.group
    }

    /// Starts replica `name` (`source.consumer`) on a free port, logging to `<name>.log`.
    pub fn spawn(&self, name: &str) -> Result<Replica> {
        let mut settings = self.settings.clone();
        settings.source.consumer = name.into();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        settings.http.addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = self.dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml::to_string(&settings)?)?;
        let log = self.dir.join(format!("{name}.log"));
        let child = Command::new(&self.churnd)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("CHURND__LOG__LEVEL", "info")
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", self.churnd.display()))?;
        Ok(Replica {
            name: name.into(),
            addr: settings.http.addr,
            child,
            log,
        })
    }
}

/// The `churnd` binary: `--churnd`, or the one beside this program.
pub fn churnd_binary(given: Option<&PathBuf>) -> Result<PathBuf> {
    let path = match given {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this program's directory")?
            .join("churnd"),
    };
    if !path.is_file() {
        bail!(
            "no churnd binary at {}: build it (`cargo build --release --bins`) or give --churnd",
            path.display()
        );
    }
    Ok(path)
}

/// One `churnd run` process, killed on drop.
pub struct Replica {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Replica {
    /// CPU time the process has used so far.
    pub fn cpu(&self) -> Result<Duration> {
        process_cpu_time(self.child.id())
    }

    /// Fails, with the end of its log, if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "replica {} exited ({status}); the end of its log:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `GET /metrics`, `None` while it does not answer.
    pub async fn metrics(&self) -> Option<String> {
        let got = tokio::time::timeout(Duration::from_secs(5), http_get(self.addr, "/metrics"));
        got.await.ok()?.ok().map(|(_, body)| body)
    }

    /// `GET /readyz`: status and body, `None` while it does not answer.
    pub async fn readyz(&self) -> Option<(u16, String)> {
        let got = tokio::time::timeout(Duration::from_secs(5), http_get(self.addr, "/readyz"));
        got.await.ok()?.ok()
    }

    /// SIGKILL, and waits for the exit.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Sends SIGTERM (a replica hands over and leaves on it).
    pub fn terminate(&self) {
        // SAFETY: plain kill(2) on our own child's PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    /// Waits up to `limit` for the exit after [`Self::terminate`], then kills.
    pub fn wait_exit(mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                eprintln!(
                    "replica {} did not exit within {limit:?}: killed",
                    self.name
                );
                return self.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops every replica with SIGTERM, all at once.
pub fn stop_all(replicas: Vec<Replica>) -> Result<()> {
    for r in &replicas {
        r.terminate();
    }
    for r in replicas {
        r.wait_exit(Duration::from_secs(90))?;
    }
    Ok(())
}

/// Lists `names` as live members of `group` for `ttl` on Redis's clock, as their own first
/// heartbeats would: each replica's first ownership round then sees all of them and takes
/// only its own share, instead of the first one up taking every partition and handing most
/// over again moments later. What is measured is then the steady state, not that start-up
/// rebalance.
pub async fn announce(
    conn: &mut MultiplexedConnection,
    group: &str,
    names: &[String],
    ttl: Duration,
) -> Result<()> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    let until = secs * 1000 + micros / 1000 + ttl.as_millis() as u64;
    let key = churnd::ownership::membership::Membership::new(group, ttl)
        .key()
        .to_string();
    for name in names {
        redis::cmd("ZADD")
            .arg(&key)
            .arg(until)
            .arg(name)
            .query_async::<()>(conn)
            .await?;
    }
    Ok(())
}

/// The rows of `group`, its written group and its committed group on `stream`.
pub struct Groups {
    pub main: Option<GroupInfo>,
    pub written: Option<GroupInfo>,
    pub committed: Option<GroupInfo>,
}

pub async fn groups(conn: &mut MultiplexedConnection, stream: &str, group: &str) -> Groups {
    let reply: Option<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .ok();
    let row = |name: &str| reply.as_ref().and_then(|r| group_info(r, name));
    Groups {
        main: row(group),
        written: row(&written_group(group)),
        committed: row(&committed_group(group)),
    }
}

impl Groups {
    /// Drained (docs/redis.md): nothing pending and, with positions committed with
    /// snapshots, the written group at the stream's last entry (its lag 0: the main group
    /// is only told where reading stands, a moment later); per entry acknowledged, the main
    /// group's lag 0.
    pub fn drained(&self) -> bool {
        self.main.as_ref().is_some_and(|g| match &self.written {
            Some(w) => g.pending == 0 && w.lag == Some(0),
            None => g.lag == Some(0) && g.pending == 0,
        })
    }

    /// Drained, and a durable snapshot holds the last entry written: nothing to replay.
    pub fn committed(&self) -> bool {
        let end = self.written.as_ref().or(self.main.as_ref());
        self.drained()
            && end.is_some_and(|g| {
                self.committed
                    .as_ref()
                    .is_some_and(|c| c.last_delivered >= g.last_delivered)
            })
    }

    /// Entries after the committed position: what a new owner replays.
    pub fn to_replay(&self) -> Option<i64> {
        self.committed.as_ref().and_then(|c| c.lag)
    }
}

/// Waits until every stream satisfies `done` (checked every 50 ms), failing if a replica
/// exits or `limit` passes; returns the time it took.
pub async fn wait_streams(
    conn: &mut MultiplexedConnection,
    streams: &[String],
    group: &str,
    replicas: &mut [Replica],
    done: fn(&Groups) -> bool,
    limit: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    'wait: loop {
        for r in replicas.iter_mut() {
            r.check_running()?;
        }
        if started.elapsed() > limit {
            bail!("the streams were not drained within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for s in streams {
            if !done(&groups(conn, s, group).await) {
                continue 'wait;
            }
        }
        return Ok(started.elapsed());
    }
}

/// Redis's own CPU time so far (`INFO cpu`: `used_cpu_sys` + `used_cpu_user`), in seconds.
pub async fn redis_cpu(conn: &mut MultiplexedConnection) -> Result<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Ok(
        field("used_cpu_sys").context("INFO cpu without used_cpu_sys")?
            + field("used_cpu_user").context("INFO cpu without used_cpu_user")?,
    )
}

/// The sum of the samples of `name` in a Prometheus exposition whose labels contain
/// `labels` (e.g. `outcome="applied"`; empty: every sample, labelled or not).
pub fn sum_samples(exposition: &str, name: &str, labels: &str) -> f64 {
    exposition
        .lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let matches = (rest.is_empty() && labels.is_empty())
                || (rest.starts_with('{') && rest.contains(labels));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// The holder of each partition's lease (`<member>#<run>:<epoch>`), `None` where it is free.
pub async fn lease_holders(
    conn: &mut MultiplexedConnection,
    group: &str,
    p: PartitionCount,
) -> Result<Vec<Option<String>>> {
    let leases = churnd::ownership::lease::Leases::new(group, Duration::from_secs(1));
    let mut cmd = redis::cmd("MGET");
    for q in 0..p.get() {
        cmd.arg(leases.key(q));
    }
    Ok(cmd.query_async(conn).await?)
}

/// The member a lease value names (`<member>#<run>:<epoch>`).
pub fn holder_name(token: &str) -> &str {
    token.rsplit_once('#').map_or(token, |(member, _)| member)
}

/// Median of non-empty `values`.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}
