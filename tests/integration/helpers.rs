//! Test harness: a private redis-server per test, the daemon in-process on an ephemeral
//! port, and small helpers to write events and read streams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use churnd::config::{ClockMode, SegmentMode, Settings};
use churnd::daemon::{self, DaemonError};
use churnd::features::FEATURE_NAMES;
use churnd::model::{FeatureParams, ModelFile, MODEL_FORMAT};
use redis::aio::MultiplexedConnection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const DAY_MS: u64 = 86_400_000;
/// 1997-01-01T00:00:00Z in milliseconds.
pub const T0_MS: u64 = 852_076_800_000;

/// A redis-server child on a free port, killed on drop. Its files live in a temp dir.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    persistent: bool,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl RedisServer {
    /// Without persistence: a restart loses everything.
    pub fn start() -> Self {
        Self::launch(false)
    }

    /// With an append-only file fsynced on every write: a restart keeps everything.
    pub fn start_persistent() -> Self {
        Self::launch(true)
    }

    fn launch(persistent: bool) -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("a temp dir"),
            persistent,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("");
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port (same files).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A connection with a generous response timeout: tests read large streams on a
    /// machine busy with other tests.
    pub async fn conn(&self) -> MultiplexedConnection {
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("a connection to the test redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes a model whose probability depends only on recency: logit =
/// (ln(1 + recency_days) − 3) / 0.5 − 1, so p ≥ 0.7 from about 49.6 days of silence.
pub fn write_recency_model(dir: &Path, version: &str) -> PathBuf {
    let file = recency_model(version);
    let path = dir.join(format!("{version}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    path
}

pub fn recency_model(version: &str) -> ModelFile {
    ModelFile {
        format: MODEL_FORMAT.into(),
        version: version.into(),
        horizon_days: 90,
        features: FEATURE_NAMES
            .iter()
            .map(|&name| {
                let recency = name == "log_recency_days";
                FeatureParams {
                    name: name.into(),
                    mean: if recency { 3.0 } else { 0.0 },
                    scale: if recency { 0.5 } else { 1.0 },
                    coefficient: if recency { 1.0 } else { 0.0 },
                }
            })
            .collect(),
        intercept: -1.0,
        training: serde_json::Value::Null,
    }
}

/// The test model's probability after `days` of silence.
pub fn recency_model_probability(days: f64) -> f64 {
    let logit = (days.ln_1p() - 3.0) / 0.5 - 1.0;
    1.0 / (1.0 + (-logit).exp())
}

/// The built binary, run from the crate root (where config/ and models/ are).
pub fn churnd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_churnd"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

/// Settings for a test: this redis, the recency model, fixed segments, event clock, no
/// control group, fast polling.
pub fn test_settings(redis: &RedisServer, model_dir: &Path) -> Settings {
    let mut s = Settings::default();
    s.redis.url = redis.url();
    s.redis.backoff_initial_ms = 20;
    s.redis.backoff_max_ms = 200;
    s.redis.connect_timeout_ms = 500;
    s.redis.response_timeout_ms = 2_000;
    s.source.consumer = "test-consumer".into();
    s.source.block_ms = 100;
    s.source.lag_poll_ms = 100;
    s.model.path = write_recency_model(model_dir, "recency-1");
    s.model.watch_interval_ms = 100;
    s.clock.mode = ClockMode::Event;
    s.clock.tick_ms = 50;
    s.segments.mode = SegmentMode::Fixed;
    s.winback.control_share = 0.0;
    s.http.addr = "127.0.0.1:0".into();
    s.shutdown.drain_timeout_ms = 5_000;
    s.state.dir = model_dir.join("state");
    s.state.snapshot_interval_ms = 200;
    s
}

/// The daemon running in this process.
pub struct App {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<Result<(), DaemonError>>,
}

impl App {
    pub async fn spawn(settings: Settings) -> Self {
        let settings = settings.validated().expect("valid test settings");
        let listener = daemon::bind(&settings).await.expect("an HTTP port");
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(daemon::run(settings, listener, shutdown.clone()));
        let app = Self {
            addr,
            shutdown,
            handle,
        };
        // The HTTP server starts once the model is loaded.
        wait_for("the daemon to serve HTTP", Duration::from_secs(10), || {
            let url = app.url("/healthz");
            async move {
                reqwest::get(url)
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        app
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(self.url(path))
            .await
            .expect("the daemon answers HTTP")
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = self.get(path).await;
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    /// The value of one series in /metrics, e.g. `churnd_events_total{outcome="applied",type="purchase"}`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        parse_metric(&self.metrics().await, series)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.handle)
            .await
            .expect("the daemon stops within 15 s")
            .expect("the daemon task does not panic")
            .expect("the daemon exits cleanly");
    }
}

pub fn parse_metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// Polls `check` every 20 ms until it holds, panicking with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Appends one entry.
pub async fn xadd(
    conn: &mut MultiplexedConnection,
    stream: &str,
    fields: &[(&str, String)],
) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(v);
    }
    cmd.query_async(conn).await.unwrap()
}

pub fn purchase(customer: &str, amount: f64, ts_ms: u64) -> Vec<(&'static str, String)> {
    vec![
        ("customer_id", customer.to_string()),
        ("type", "purchase".into()),
        ("amount", format!("{amount}")),
        ("ts", ts_ms.to_string()),
    ]
}

pub type StreamEntry = (String, HashMap<String, String>);

/// Every entry of a stream, oldest first.
pub async fn read_stream(conn: &mut MultiplexedConnection, stream: &str) -> Vec<StreamEntry> {
    type RawEntry = (String, Vec<(Vec<u8>, Vec<u8>)>);
    let raw: Vec<RawEntry> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    raw.into_iter()
        .map(|(id, fields)| {
            (
                id,
                fields
                    .into_iter()
                    .map(|(k, v)| (text(k), text(v)))
                    .collect(),
            )
        })
        .collect()
}

pub async fn xlen(conn: &mut MultiplexedConnection, stream: &str) -> usize {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(conn)
        .await
        .unwrap()
}

/// (lag, pending) of a consumer group, from XINFO GROUPS.
pub async fn group_state(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
) -> Option<(Option<i64>, i64)> {
    let reply: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .ok()?;
    churnd::source::lag::group_info(&reply, group).map(|g| (g.lag, g.pending))
}

/// Waits until the group has read everything and acknowledged it.
pub async fn wait_drained(conn: &mut MultiplexedConnection, stream: &str, group: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if group_state(conn, stream, group).await == Some((Some(0), 0)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{stream} not drained by group {group}: {:?}",
        group_state(conn, stream, group).await
    );
}

/// Creates the daemon's consumer group on `stream` at its beginning, as a previous run would.
pub async fn create_group(conn: &mut MultiplexedConnection, stream: &str) {
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("churnd")
        .arg("0")
        .arg("MKSTREAM")
        .query_async::<()>(conn)
        .await
        .unwrap();
}

/// Reads every new entry as the test daemon's consumer without acknowledging: what a run
/// that died mid-batch leaves pending.
pub async fn leave_pending(conn: &mut MultiplexedConnection, stream: &str) {
    redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("churnd")
        .arg("test-consumer")
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async::<redis::Value>(conn)
        .await
        .unwrap();
}
