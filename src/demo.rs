//! `churnd demo`: the whole product on real data in one command.
//!
//! Uses the configured Redis, or starts a private `redis-server` when none answers; replays
//! the bundled CDNOW purchases (plus three deliberately malformed entries) into demo-only
//! streams under the event-time clock; runs the daemon until every entry is processed and
//! acknowledged; prints what happened.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::config::{redact_url, ClockMode, RedisMode, Settings};
use crate::connection::{self, ClientError, RedisClient, RedisConn};
use crate::daemon::{self, DaemonError};
use crate::transactions::{Transactions, TransactionsError};

/// `println!` that cannot panic: the demo's report goes to stdout, and `println!` panics once
/// the reader has gone (`churnd demo | head`), abandoning the daemon it runs mid-way. A line
/// that cannot be written is dropped; the demo runs on and stops the daemon cleanly.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Every key the demo writes starts with this, so it never touches a deployment's streams.
pub(crate) const KEY_PREFIX: &str = "churnd-demo:";
/// The bundled sample.
pub const DEFAULT_TRANSACTIONS: &str = "data/cdnow/transactions_1997-01_to_1997-09.csv";
const PROCESSING_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Transactions(#[from] TransactionsError),
    #[error("no Redis answers at {url} and redis-server is not on PATH: install Redis (e.g. apt-get install redis-server) or point CHURND__REDIS__URL at one")]
    NoRedis { url: String },
    #[error("could not start a private redis-server: {0}")]
    StartRedis(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("Redis failed during the demo: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the daemon failed: {0}")]
    Daemon(#[from] DaemonError),
    #[error("cannot bind the demo's HTTP port: {0}")]
    Bind(std::io::Error),
    #[error("the daemon did not process all {expected} entries within {PROCESSING_TIMEOUT:?}")]
    Timeout { expected: usize },
    #[error("the daemon's HTTP API did not answer: {0}")]
    Http(String),
    #[error("the daemon stopped before the demo ended ({0}); its log above says why")]
    DaemonStopped(String),
    #[error("the demo runs on one Redis server, not a cluster: unset redis.mode (CHURND__REDIS__MODE) or set it to \"standalone\"")]
    Cluster,
}

/// A `redis-server` child process, killed on drop.
pub(crate) struct PrivateRedis {
    child: tokio::process::Child,
    pub url: String,
}

impl PrivateRedis {
    /// Starts one on a free loopback port, without persistence, and waits until it answers.
    pub async fn start() -> Result<Self, DemoError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| DemoError::StartRedis(e.to_string()))?
            .port();
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| DemoError::StartRedis(e.to_string()))?;
        let redis = Self {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
        };
        let client = redis::Client::open(redis.url.as_str())
            .map(RedisClient::Standalone)
            .map_err(|e| DemoError::StartRedis(e.to_string()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(&client).await {
                return Ok(redis);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(DemoError::StartRedis(format!(
            "it did not answer on port {port}"
        )))
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn ping(client: &RedisClient) -> bool {
    let attempt = async {
        let mut c = client.connection().await.ok()?;
        redis::cmd("PING").query_async::<String>(&mut c).await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(_))
    )
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The demo's settings: demo-only keys, event-time clock, an ephemeral HTTP port.
fn demo_settings(mut settings: Settings, redis_url: Option<String>) -> Settings {
    if let Some(url) = redis_url {
        // The private redis-server: plain TCP on loopback, no password.
        settings.redis.url = url;
        settings.redis.password = None;
        settings.redis.tls_ca_file = None;
        settings.redis.tls_cert_file = None;
        settings.redis.tls_key_file = None;
    }
    // The demo's API listens on an ephemeral loopback port and only the demo asks it.
    settings.http.customer_token = None;
    settings.http.customer_token_file = None;
    settings.source.streams = vec![format!("{KEY_PREFIX}events")];
    settings.source.group = "churnd-demo".into();
    settings.source.consumer = "demo".into();
    settings.dead_letter.stream = format!("{KEY_PREFIX}events:dlq");
    settings.winback.stream = format!("{KEY_PREFIX}winback");
    settings.winback.control_stream = format!("{KEY_PREFIX}winback:control");
    settings.tasks.stream = format!("{KEY_PREFIX}tasks");
    settings.tasks.control_stream = format!("{KEY_PREFIX}tasks:control");
    settings.outcomes.stream = format!("{KEY_PREFIX}outcomes");
    for stream in [
        &mut settings.tasks.convert.stream,
        &mut settings.tasks.welcome.stream,
        &mut settings.tasks.birthday.stream,
        &mut settings.tasks.anniversary.stream,
        &mut settings.tasks.revisit.stream,
        &mut settings.tasks.service_recovery.stream,
    ] {
        stream.clear();
    }
    settings.clock.mode = ClockMode::Event;
    settings.http.addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    // Each demo replays the history from scratch: its snapshots go to a directory of its own,
    // removed at the end.
    settings.state.dir = std::env::temp_dir().join(format!("churnd-demo-{}", std::process::id()));
    settings
}

/// Entries that break the event rules, to show dead-lettering.
const BAD_ENTRIES: [&[(&str, &str)]; 3] = [
    &[("customer_id", "00001"), ("type", "refund")],
    &[("customer_id", "00002"), ("type", "gift"), ("amount", "5")],
    &[
        ("customer_id", "00003"),
        ("type", "purchase"),
        ("amount", "-12.50"),
    ],
];

pub async fn run(settings: Settings, transactions: &Path) -> Result<(), DemoError> {
    let started = Instant::now();
    let data = Transactions::read(transactions)?;
    say!(
        "churnd demo: {} purchases of {} from {}",
        data.rows.len(),
        customers(&data),
        transactions.display()
    );
    if !data.bad_rows.is_empty() {
        say!("  ({} unreadable rows skipped)", data.bad_rows.len());
    }

    // With the configured password and TLS settings, so the demo finds the Redis the daemon
    // would use.
    if settings.redis.mode == RedisMode::Cluster {
        return Err(DemoError::Cluster);
    }
    let configured = connection::client(&settings.redis)?;
    let (_private, url) = if ping(&configured).await {
        say!("Redis: using {}", redact_url(&settings.redis.url));
        (None, None)
    } else if on_path("redis-server") {
        let private = PrivateRedis::start().await?;
        say!(
            "Redis: none answers at {}; started a private redis-server at {}",
            redact_url(&settings.redis.url),
            private.url
        );
        let url = private.url.clone();
        (Some(private), Some(url))
    } else {
        return Err(DemoError::NoRedis {
            url: redact_url(&settings.redis.url),
        });
    };
    let settings = demo_settings(settings, url);
    let client = connection::client(&settings.redis)?;
    let mut conn = client.connection().await?;
    clear_demo_keys(&mut conn).await?;

    let stream = settings.source.streams[0].clone();
    let loaded = load_events(&mut conn, &stream, &data).await?;
    say!(
        "Loaded {loaded} entries into {stream} ({} of them deliberately malformed)",
        BAD_ENTRIES.len()
    );

    let listener = daemon::bind(&settings).await.map_err(DemoError::Bind)?;
    let api = listener.local_addr().map_err(DemoError::Bind)?;
    let shutdown = CancellationToken::new();
    let (written_tx, written) = tokio::sync::watch::channel(daemon::Applied::default());
    let observers = daemon::Observers::default().with_written(written_tx);
    let daemon = tokio::spawn(daemon::run_observed(
        settings.clone(),
        listener,
        shutdown.clone(),
        observers,
    ));
    let processing = Instant::now();
    wait_until_processed(&mut conn, &stream, written, loaded, &daemon).await?;
    let elapsed = processing.elapsed();
    say!(
        "Processed all {loaded} entries in {:.2} s ({:.0} entries/s, event-time clock)\n",
        elapsed.as_secs_f64(),
        loaded as f64 / elapsed.as_secs_f64()
    );

    report(&mut conn, &settings, api).await?;
    shutdown.cancel();
    let stopped = daemon.await;
    let snapshots = std::fs::read_dir(&settings.state.dir).map_or(0, |d| d.count());
    // Best effort: the directory is in the system's temporary space anyway.
    let _ = std::fs::remove_dir_all(&settings.state.dir);
    match stopped {
        Ok(result) => result?,
        Err(e) => return Err(DemoError::DaemonStopped(e.to_string())),
    }
    say!(
        "The daemon stopped with a snapshot of every customer's final state ({snapshots} snapshot file(s) in {}, now removed).",
        settings.state.dir.display()
    );
    say!("\nDone in {:.1} s. The demo's keys stay in Redis under {KEY_PREFIX}* and {{{KEY_PREFIX}* until the next demo run.", started.elapsed().as_secs_f64());
    Ok(())
}

fn customers(data: &Transactions) -> usize {
    let mut ids: Vec<&str> = data.rows.iter().map(|t| &*t.customer_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.len()
}

/// Removes the previous demo's streams and the guard keys of its tasks and dead letters
/// (`{churnd-demo:winback}:dedup:<id>`: left in place, they would make this run's tasks
/// count as written before, and the demo would show none).
async fn clear_demo_keys(conn: &mut RedisConn) -> Result<(), redis::RedisError> {
    for pattern in [format!("{KEY_PREFIX}*"), format!("{{{KEY_PREFIX}*")] {
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            if !keys.is_empty() {
                redis::cmd("DEL").arg(keys).query_async::<()>(conn).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(())
}

async fn load_events(
    conn: &mut RedisConn,
    stream: &str,
    data: &Transactions,
) -> Result<usize, redis::RedisError> {
    for chunk in data.rows.chunks(2_000) {
        let mut pipe = redis::pipe();
        for t in chunk {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("customer_id")
                .arg(&*t.customer_id)
                .arg("type")
                .arg(t.kind.as_str())
                .arg("amount")
                .arg(format!("{:.2}", t.amount))
                .arg("ts")
                .arg(u64::from(t.time) * 1000)
                .ignore();
        }
        pipe.query_async::<()>(conn).await?;
    }
    let mut pipe = redis::pipe();
    for fields in BAD_ENTRIES {
        pipe.cmd("XADD").arg(stream).arg("*").arg(fields).ignore();
    }
    pipe.query_async::<()>(conn).await?;
    Ok(data.rows.len() + BAD_ENTRIES.len())
}

/// Waits until the daemon reports the stream's last entry processed and its tasks and dead
/// letters written (with state kept, entries are not acknowledged one by one: the group's
/// pending count does not tell).
async fn wait_until_processed(
    conn: &mut RedisConn,
    stream: &str,
    mut written: tokio::sync::watch::Receiver<daemon::Applied>,
    expected: usize,
    daemon: &tokio::task::JoinHandle<Result<(), DaemonError>>,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + PROCESSING_TIMEOUT;
    let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await
        .unwrap_or_default();
    let Some(last) = last
        .first()
        .and_then(|(id, _)| crate::event::EntryId::parse(id.as_bytes()))
    else {
        return Err(DemoError::Timeout { expected });
    };
    while Instant::now() < deadline {
        if daemon.is_finished() {
            return Err(DemoError::DaemonStopped(
                "while processing the sample".into(),
            ));
        }
        if written.borrow_and_update().positions.first() >= Some(&last) {
            return Ok(());
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), written.changed()).await;
    }
    Err(DemoError::Timeout { expected })
}

/// A GET against the daemon's API, parsed as JSON.
async fn get_json(api: std::net::SocketAddr, path: &str) -> Result<serde_json::Value, DemoError> {
    let http = |e: std::io::Error| DemoError::Http(e.to_string());
    let mut stream = tokio::net::TcpStream::connect(api).await.map_err(http)?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .map_err(http)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.map_err(http)?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).map_err(|e| DemoError::Http(format!("{path}: {e}")))
}

async fn report(
    conn: &mut RedisConn,
    settings: &Settings,
    api: std::net::SocketAddr,
) -> Result<(), DemoError> {
    let summary = get_json(api, "/v1/summary").await?;
    say!(
        "As of {} (the last event time):",
        summary["now"].as_str().unwrap_or("?")
    );
    say!("  customers tracked: {}", summary["customers"]);
    say!("  by lifecycle stage:");
    print_counts(&summary["by_stage"]);
    say!("  by RFM segment (thresholds: {}):", summary["thresholds"]);
    print_counts(&summary["by_segment"]);
    say!("  by churn probability (no purchase in the model's horizon):");
    print_counts(&summary["by_churn_probability"]);

    let dlq = &settings.dead_letter.stream;
    let dead: Vec<(String, Vec<(String, String)>)> = xrange(conn, dlq, 10).await?;
    say!("\nDead-lettered entries ({dlq}): {}", dead.len());
    for (_, fields) in &dead {
        let reason = field(fields, "dlq_reason");
        let detail = field(fields, "dlq_detail");
        say!("  {reason}: {detail}");
    }

    let treatment = tally(conn, &settings.winback.stream).await?;
    let control = tally(conn, &settings.winback.control_stream).await?;
    say!(
        "\nWin-back tasks: {} in {} for marketing, {} in {} for the control group ({} and {} cancelled by a purchase)",
        treatment.total(),
        settings.winback.stream,
        control.total(),
        settings.winback.control_stream,
        treatment.cancels,
        control.cancels,
    );
    let examples = xrange(conn, &settings.winback.stream, 3).await?;
    for (id, fields) in &examples {
        say!("  task {id}:");
        for (k, v) in fields {
            say!("    {k:<17} {v}");
        }
    }
    // How far the tasks reach: customers given one (either group), and the busiest 30 days.
    let mut tasked = std::collections::HashSet::new();
    let mut days = Vec::new();
    for stream in [&settings.winback.stream, &settings.winback.control_stream] {
        for_each_entry(conn, stream, |fields| {
            if field(fields, "record") == "cancel" {
                return;
            }
            tasked.insert(field(fields, "customer_id").to_string());
            days.push(
                crate::time::parse_date_or_datetime(field(fields, "as_of")).unwrap_or(0) / 86_400,
            );
        })
        .await?;
    }
    let customers = summary["customers"].as_u64().unwrap_or(0).max(1) as f64;
    days.sort_unstable();
    let busiest = (0..days.len())
        .map(|i| days[i..].partition_point(|&d| d < days[i] + 30))
        .max()
        .unwrap_or(0);
    say!(
        "  customers given a win-back task: {} ({:.1} % of those tracked); the busiest 30 days: {busiest} tasks ({:.1} %)",
        tasked.len(),
        100.0 * tasked.len() as f64 / customers,
        100.0 * busiest as f64 / customers,
    );
    // The other kinds share one stream in the demo: counted by kind.
    let others = tally(conn, &settings.tasks.stream).await?;
    let kinds: Vec<String> = others
        .by_kind
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    say!(
        "\nOther tasks: {} in {} ({}; {} cancelled by a purchase)",
        others.total(),
        settings.tasks.stream,
        if kinds.is_empty() {
            "none".into()
        } else {
            kinds.join(", ")
        },
        others.cancels,
    );
    let outcomes = tally(conn, &settings.outcomes.stream).await?;
    let results: Vec<String> = outcomes
        .by_outcome
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    say!(
        "Outcomes: {} in {} ({}; the tasks whose window is still open have none yet)",
        outcomes.entries,
        settings.outcomes.stream,
        if results.is_empty() {
            "none".into()
        } else {
            results.join(", ")
        }
    );
    if let Some((_, fields)) = examples.first() {
        let customer = field(fields, "customer_id");
        let view = get_json(api, &format!("/v1/customers/{customer}")).await?;
        say!(
            "\nGET /v1/customers/{customer} →\n{}",
            serde_json::to_string_pretty(&view).unwrap_or_default()
        );
    }
    Ok(())
}

/// Calls `f` with every entry of `stream`, a page at a time (the whole stream, tens of
/// thousands of tasks, in one reply can take longer than the connection's response timeout
/// on a slow machine).
async fn for_each_entry(
    conn: &mut RedisConn,
    stream: &str,
    mut f: impl FnMut(&[(String, String)]),
) -> Result<(), redis::RedisError> {
    let mut from = "-".to_string();
    loop {
        let page = xrange_from(conn, stream, &from, 1_000).await?;
        for (_, fields) in &page {
            f(fields);
        }
        match page.last() {
            Some((id, _)) if page.len() == 1_000 => from = format!("({id}"),
            _ => return Ok(()),
        }
    }
}

/// What a task or outcome stream holds, by record.
#[derive(Default)]
struct Tally {
    entries: usize,
    /// Tasks by kind.
    by_kind: std::collections::BTreeMap<String, usize>,
    cancels: usize,
    /// Outcome records by outcome.
    by_outcome: std::collections::BTreeMap<String, usize>,
}

impl Tally {
    fn total(&self) -> usize {
        self.by_kind.values().sum()
    }
}

/// Counts `stream`'s records.
async fn tally(conn: &mut RedisConn, stream: &str) -> Result<Tally, redis::RedisError> {
    let mut tally = Tally::default();
    for_each_entry(conn, stream, |fields| {
        tally.entries += 1;
        match field(fields, "record") {
            "cancel" => tally.cancels += 1,
            "outcome" => {
                *tally
                    .by_outcome
                    .entry(field(fields, "outcome").to_string())
                    .or_default() += 1;
            }
            _ => {
                *tally
                    .by_kind
                    .entry(field(fields, "kind").to_string())
                    .or_default() += 1;
            }
        }
    })
    .await?;
    Ok(tally)
}

fn print_counts(counts: &serde_json::Value) {
    if let Some(map) = counts.as_object() {
        for (name, n) in map {
            say!("    {name:<22} {n}");
        }
    }
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

async fn xrange(
    conn: &mut RedisConn,
    stream: &str,
    count: usize,
) -> Result<Vec<(String, Vec<(String, String)>)>, redis::RedisError> {
    xrange_from(conn, stream, "-", count).await
}

/// Up to `count` entries from `from` on (`(<id>` starts after that entry).
async fn xrange_from(
    conn: &mut RedisConn,
    stream: &str,
    from: &str,
    count: usize,
) -> Result<Vec<(String, Vec<(String, String)>)>, redis::RedisError> {
    redis::cmd("XRANGE")
        .arg(stream)
        .arg(from)
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::TaskKind;

    /// The demo clears its own keys before a run and shares a Redis with whatever else is
    /// there: every stream it reads or writes carries its prefix.
    #[test]
    fn every_stream_of_the_demo_is_its_own() {
        let s = demo_settings(Settings::default(), None);
        let mut streams = vec![
            &s.dead_letter.stream,
            &s.winback.stream,
            &s.winback.control_stream,
            &s.tasks.stream,
            &s.tasks.control_stream,
            &s.outcomes.stream,
        ];
        streams.extend(&s.source.streams);
        let care = TaskKind::CARE.map(|kind| s.tasks.stream(kind));
        for stream in streams.iter().map(|s| s.as_str()).chain(care) {
            assert!(stream.starts_with(KEY_PREFIX), "{stream}");
        }
    }
}
