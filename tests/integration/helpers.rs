//! Test harness: a private redis-server per test, the daemon in-process on an ephemeral
//! port, and small helpers to write events and read streams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use churnd::classify::Segment;
use churnd::config::{ClockMode, Interval, SegmentMode, Settings};
use churnd::daemon::{self, DaemonError};
use churnd::features::FEATURE_NAMES;
use churnd::model::{FeatureParams, ModelFile, MODEL_FORMAT_V1};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::cluster_harness::RedisCluster;

pub const DAY_MS: u64 = 86_400_000;
/// 1997-01-01T00:00:00Z in milliseconds.
pub const T0_MS: u64 = 852_076_800_000;

/// A redis-server child on a free port, killed on drop. Its files live in a temp dir.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    persistent: bool,
    options: ServerOptions,
}

/// How a test's redis-server guards itself.
#[derive(Clone, Default)]
pub struct ServerOptions {
    /// `requirepass`: clients must AUTH with it.
    pub password: Option<String>,
    /// Serve TLS only (no plain port), with the server certificate of these.
    pub tls: Option<TestPki>,
    /// `tls-auth-clients yes`: clients need a certificate signed by the test CA.
    pub require_client_cert: bool,
    /// `cluster-enabled yes`: a Redis Cluster node (give it slots with
    /// [`RedisServer::own_all_slots`]); it refuses a command whose keys span slots.
    pub cluster: bool,
    /// `cluster-node-timeout` in ms (Redis' default, 15 s, when `None`).
    pub cluster_node_timeout_ms: Option<u64>,
}

/// Certificates made for one test (no fixed files that expire): a CA, a server certificate
/// for 127.0.0.1 and localhost, a client certificate, all signed by the CA, and an
/// unrelated CA that trusts none of them. PEM files in a temp dir.
#[derive(Clone)]
pub struct TestPki {
    _dir: Arc<tempfile::TempDir>,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
}

impl TestPki {
    pub fn generate() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().expect("a temp dir");
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let (ca_pem, issuer) = ca("churnd test CA");
        let (other_ca_pem, _) = ca("some other CA");
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(names).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, "churnd test");
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(vec!["churnd".into()], ExtendedKeyUsagePurpose::ClientAuth);
        Self {
            ca: write("ca.pem", ca_pem),
            server_cert: write("server.pem", server_cert),
            server_key: write("server.key", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client.key", client_key),
            other_ca: write("other-ca.pem", other_ca_pem),
            _dir: Arc::new(dir),
        }
    }
}

/// Percent-encodes all but RFC 3986's unreserved characters, for a password in a URL.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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

    /// With a password, TLS or both.
    pub fn start_with(options: ServerOptions) -> Self {
        Self::launch_with(false, options)
    }

    fn launch(persistent: bool) -> Self {
        Self::launch_with(persistent, ServerOptions::default())
    }

    fn launch_with(persistent: bool, options: ServerOptions) -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("a temp dir"),
            persistent,
            options,
        };
        // A port found free can be taken by another test process before redis-server binds
        // it (the suite runs twice at once in CI): then try another.
        for _ in 0..5 {
            if server.spawn() {
                return server;
            }
            server.port = free_port();
        }
        panic!("redis-server did not start on five free ports");
    }

    /// Starts redis-server on `self.port`; `false` if it could not take the port.
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        match &self.options.tls {
            Some(pki) => {
                cmd.args(["--port", "0", "--tls-port"])
                    .arg(self.port.to_string())
                    .arg("--tls-cert-file")
                    .arg(&pki.server_cert)
                    .arg("--tls-key-file")
                    .arg(&pki.server_key)
                    .arg("--tls-ca-cert-file")
                    .arg(&pki.ca)
                    .arg("--tls-auth-clients")
                    .arg(if self.options.require_client_cert {
                        "yes"
                    } else {
                        "no"
                    });
            }
            None => {
                cmd.arg("--port").arg(self.port.to_string());
            }
        }
        if let Some(password) = &self.options.password {
            cmd.arg("--requirepass").arg(password);
        }
        if self.options.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(self.dir.path().join("nodes.conf"));
            if let Some(ms) = self.options.cluster_node_timeout_ms {
                cmd.arg("--cluster-node-timeout").arg(ms.to_string());
            }
        }
        cmd.arg("--bind")
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
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                // It exited: the port was taken.
                self.child = None;
                return false;
            }
            // The server answering must be this one, not another that holds the port.
            let info = self
                .client()
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut c| redis::cmd("INFO").arg("server").query::<String>(&mut c));
            if let Ok(info) = info {
                if !info.contains(&format!("process_id:{pid}\r")) {
                    self.stop();
                    return false;
                }
                // PING fails while a restarted server loads its data.
                let loaded = self
                    .client()
                    .get_connection_with_timeout(Duration::from_millis(200))
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
                if loaded.is_ok() {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// The URL a client needs: `rediss://` under TLS, with the password if there is one.
    pub fn url(&self) -> String {
        let password = self.options.password.as_deref().map(percent_encode);
        self.url_with_password(password.as_deref())
    }

    /// The URL with this password (or none; percent-encoded already) instead of the server's.
    pub fn url_with_password(&self, password: Option<&str>) -> String {
        let scheme = if self.options.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let auth = password.map_or(String::new(), |p| format!(":{p}@"));
        format!("{scheme}://{auth}127.0.0.1:{}/0", self.port)
    }

    /// The test CA and, when the server requires one, the client certificate.
    pub fn tls(&self) -> Option<&TestPki> {
        self.options.tls.as_ref()
    }

    /// A client for the harness itself, trusting the test CA under TLS.
    pub fn client(&self) -> redis::Client {
        let Some(pki) = &self.options.tls else {
            return redis::Client::open(self.url()).unwrap();
        };
        let client_tls = self
            .options
            .require_client_cert
            .then(|| redis::ClientTlsConfig {
                client_cert: std::fs::read(&pki.client_cert).unwrap(),
                client_key: std::fs::read(&pki.client_key).unwrap(),
            });
        let certificates = redis::TlsCertificates {
            client_tls,
            root_cert: Some(std::fs::read(&pki.ca).unwrap()),
        };
        redis::Client::build_with_tls(self.url(), certificates).unwrap()
    }

    /// Makes a cluster node the owner of every slot, a cluster of one, and waits until it
    /// serves them.
    pub async fn own_all_slots(&self) {
        let mut c = self.conn().await;
        redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(0)
            .arg(16383)
            .query_async::<()>(&mut c)
            .await
            .expect("a cluster-enabled redis-server takes the slots");
        wait_for("the cluster to be up", Duration::from_secs(10), || {
            let mut c = c.clone();
            async move { cluster_info(&mut c).await.contains("cluster_state:ok") }
        })
        .await;
    }

    /// Whether the server's process runs (it has not been stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server's process (SIGSTOP): connections stay open and new ones are even
    /// accepted by the kernel, but nothing is answered, as with a Redis hung on a slow disk or
    /// `DEBUG SLEEP`. [`Self::thaw`] lets it go on.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("the server runs");
        // SAFETY: plain kill(2) on our own child's PID.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    }

    /// Kills the server and starts it again on the same port (same files).
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "redis-server could not take its port {} again",
            self.port
        );
    }

    /// A connection with a generous response timeout: tests read large streams on a
    /// machine busy with other tests.
    pub async fn conn(&self) -> MultiplexedConnection {
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
        self.client()
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
    // By rename: replicas started mid-run write it again while others watch it, and a
    // watcher must never see it half written.
    let mut temp = tempfile::NamedTempFile::new_in(dir).unwrap();
    std::io::Write::write_all(
        &mut temp,
        serde_json::to_string_pretty(&file).unwrap().as_bytes(),
    )
    .unwrap();
    temp.persist(&path).unwrap();
    path
}

/// A format 1 file (no value parameters): the daemon's tests need only the churn model.
pub fn recency_model(version: &str) -> ModelFile {
    ModelFile {
        format: MODEL_FORMAT_V1.into(),
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
        value: None,
        training: serde_json::Value::Null,
    }
}

/// The test model's probability after `days` of silence.
pub fn recency_model_probability(days: f64) -> f64 {
    let logit = (days.ln_1p() - 3.0) / 0.5 - 1.0;
    1.0 / (1.0 + (-logit).exp())
}

/// The repository's root (where config/, models/ and deploy/ are).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The built binary, run from the crate root (where config/ and models/ are).
pub fn churnd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_churnd"));
    cmd.current_dir(repo());
    cmd
}

/// The Grafana dashboard (`deploy/grafana/dashboards/churnd.json`) and every panel in it,
/// rows included: those of a collapsed row, which holds its panels inside it, too.
pub fn dashboard() -> (serde_json::Value, Vec<serde_json::Value>) {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/dashboards/churnd.json"))
        .expect("the dashboard is readable");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let top = dashboard["panels"].as_array().expect("panels");
    let nested = top
        .iter()
        .flat_map(|p| p["panels"].as_array().into_iter().flatten());
    let panels = top.iter().chain(nested).cloned().collect();
    (dashboard, panels)
}

/// An operations tool (a linter, a validator, `promtool`, `prometheus`): from `PATH`, else
/// from the virtualenv that `.ci/install-tools` fills. Panics, naming that script, when
/// neither has it: a missing tool fails its test rather than skipping the check.
pub fn ops_tool(name: &str) -> PathBuf {
    let venv = repo().join(".tools/venv/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([venv.clone()])
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .unwrap_or_else(|| {
            panic!(
                "{name} is neither on PATH nor in {}: run .ci/install-tools",
                venv.display()
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Settings for a test: this redis, the recency model, fixed segments, event clock, no
/// control group, fast polling; win-back as before budgets (threshold 0.7, 0.6 for two
/// segments, budgets too large to bind), which the tests of other rules are written for.
pub fn test_settings(redis: &RedisServer, model_dir: &Path) -> Settings {
    let mut s = Settings::default();
    s.redis.url = redis.url();
    if let Some(pki) = redis.tls() {
        s.redis.tls_ca_file = Some(pki.ca.clone());
        if redis.options.require_client_cert {
            s.redis.tls_cert_file = Some(pki.client_cert.clone());
            s.redis.tls_key_file = Some(pki.client_key.clone());
        }
    }
    s.redis.backoff_initial = Interval::from_millis(20);
    s.redis.backoff_max = Interval::from_millis(200);
    s.redis.connect_timeout = Interval::from_millis(500);
    s.redis.response_timeout = Interval::from_millis(2_000);
    s.source.consumer = "test-consumer".into();
    s.source.block = Interval::from_millis(100);
    s.source.lag_poll = Interval::from_millis(100);
    s.model.path = write_recency_model(model_dir, "recency-1");
    s.model.watch_interval = Some(Interval::from_millis(100));
    s.clock.mode = ClockMode::Event;
    s.clock.tick = Interval::from_millis(50);
    s.segments.mode = SegmentMode::Fixed;
    s.winback.control_share = 0.0;
    s.winback.threshold = 0.7;
    s.winback.segment_thresholds = [Segment::ImportantValue, Segment::ImportantRetention]
        .into_iter()
        .map(|segment| (segment, 0.6))
        .collect();
    s.winback.lift_budgets();
    s.tasks.control_share = 0.0;
    s.http.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    s.shutdown.drain_timeout = Duration::from_secs(5);
    s.state.dir = model_dir.join("state");
    s.state.snapshot_interval = Interval::from_millis(200);
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
    conn: &mut impl ConnectionLike,
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

/// An outcome record as churnd writes it (schema_version 1): `[kind, action, segment,
/// group]`, the revenue of a conversion (`None`: not converted), raised and closed at (ms),
/// and a number that makes the task's ID and customer.
pub fn outcome_record(
    [kind, action, segment, group]: &[&str; 4],
    revenue: Option<f64>,
    (raised_at, closed_at): (u64, u64),
    task: u128,
) -> Vec<(&'static str, String)> {
    let converted = if revenue.is_some() {
        "converted"
    } else {
        "not_converted"
    };
    vec![
        ("schema_version", "1".into()),
        ("record", "outcome".into()),
        ("task_id", format!("{task:032x}")),
        ("customer_id", format!("c-{task}")),
        ("kind", kind.to_string()),
        ("action", action.to_string()),
        ("segment", segment.to_string()),
        ("group", group.to_string()),
        ("outcome", converted.into()),
        ("revenue", revenue.map_or("0".into(), |r| format!("{r}"))),
        (
            "days_to_convert",
            revenue.map_or(String::new(), |_| "2.5".into()),
        ),
        ("raised_at", raised_at.to_string()),
        ("closed_at", closed_at.to_string()),
    ]
}

/// An event of type `kind` with more fields (`score`, profile attributes, …).
pub fn event(
    customer: &str,
    kind: &str,
    ts_ms: u64,
    more: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("customer_id", customer.to_string()),
        ("type", kind.to_string()),
        ("ts", ts_ms.to_string()),
    ];
    fields.extend(more.iter().map(|&(k, v)| (k, v.to_string())));
    fields
}

pub fn visit(customer: &str, ts_ms: u64) -> Vec<(&'static str, String)> {
    vec![
        ("customer_id", customer.to_string()),
        ("type", "visit".into()),
        ("ts", ts_ms.to_string()),
    ]
}

pub type StreamEntry = (String, HashMap<String, String>);

/// Every entry of a stream, oldest first.
pub async fn read_stream(conn: &mut impl ConnectionLike, stream: &str) -> Vec<StreamEntry> {
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

pub async fn xlen(conn: &mut impl ConnectionLike, stream: &str) -> usize {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(conn)
        .await
        .unwrap()
}

/// (lag, pending) of a consumer group, from XINFO GROUPS.
pub async fn group_state(
    conn: &mut impl ConnectionLike,
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

/// Whether `group` has drained `stream`: read every entry and written the effects of all
/// (docs/redis.md). Per entry acknowledged, the group's lag is 0 with nothing pending; with
/// positions committed with snapshots (reads by position: the main group is only told where
/// reading stands, a moment later), the group `<group>:written` stands at the stream's last
/// entry (its lag, which Redis counts only there, is 0). From one `XINFO GROUPS` reply, so
/// the two agree. `Err` tells where the groups stand.
pub async fn drained(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
) -> Result<(), String> {
    let reply: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .map_err(|e| format!("XINFO GROUPS {stream}: {e}"))?;
    let info = churnd::source::lag::group_info(&reply, group);
    let written_group = churnd::source::commit::written_group(group);
    let written = churnd::source::lag::group_info(&reply, &written_group);
    let done = info.is_some_and(|g| match &written {
        Some(w) => g.pending == 0 && w.lag == Some(0),
        None => g.lag == Some(0) && g.pending == 0,
    });
    if done {
        Ok(())
    } else {
        Err(format!(
            "{stream} not drained by group {group}: {info:?}, {written_group}: {written:?}"
        ))
    }
}

/// Waits until the group has read everything and written its effects ([`drained`]).
pub async fn wait_drained(conn: &mut impl ConnectionLike, stream: &str, group: &str) {
    wait_drained_within(conn, stream, group, Duration::from_secs(20)).await
}

/// [`wait_drained`], for up to `timeout`.
pub async fn wait_drained_within(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        match drained(conn, stream, group).await {
            Ok(()) => return,
            Err(state) if Instant::now() >= deadline => {
                panic!("after {timeout:?}: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Runs the daemon over the whole of `stream` again with no state (the group moved back to
/// its start, the state directory removed) and waits until it has drained it: a replay, in
/// which every task already written must come out as a duplicate.
pub async fn replay_without_state(
    conn: &mut MultiplexedConnection,
    stream: &str,
    settings: Settings,
) -> App {
    redis::cmd("XGROUP")
        .arg("SETID")
        .arg(stream)
        .arg("churnd")
        .arg("0")
        .query_async::<()>(conn)
        .await
        .unwrap();
    std::fs::remove_dir_all(&settings.state.dir).unwrap();
    let app = App::spawn(settings).await;
    wait_drained(conn, stream, "churnd").await;
    app
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

/// `churnd run` as a child process on a free port, its stderr collected by a thread (so a
/// chatty log never fills the pipe and blocks the daemon).
pub struct DaemonProcess {
    child: Child,
    pub port: u16,
    stderr: Option<std::thread::JoinHandle<String>>,
    _state: tempfile::TempDir,
}

impl DaemonProcess {
    /// Runs with these environment variables on top of a private state directory and port.
    pub fn spawn(env: &[(&str, String)]) -> Self {
        let port = free_port();
        let state = tempfile::tempdir().expect("a temp dir");
        let mut cmd = churnd();
        cmd.arg("run")
            .env("CHURND__STATE__DIR", state.path())
            .env("CHURND__HTTP__ADDR", format!("127.0.0.1:{port}"))
            .env("CHURND__REDIS__BACKOFF_INITIAL_MS", "20")
            .env("CHURND__REDIS__BACKOFF_MAX_MS", "200")
            .env("CHURND__SOURCE__BLOCK_MS", "100")
            .env("CHURND__SOURCE__LAG_POLL_MS", "100")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("churnd runs");
        let mut pipe = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
            text
        });
        Self {
            child,
            port,
            stderr: Some(stderr),
            _state: state,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The body of a GET, or `None` while the daemon does not answer.
    pub async fn get_text(&self, path: &str) -> Option<String> {
        reqwest::get(self.url(path)).await.ok()?.text().await.ok()
    }

    /// The process's resident memory, in bytes (Linux).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the daemon's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS in kB")
            * 1024
    }

    /// Sends SIGTERM and returns the exit code and everything logged.
    pub fn stop(mut self) -> (Option<i32>, String) {
        // SAFETY: plain kill(2) on our own child's PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = self.stderr.take().unwrap().join().unwrap_or_default();
        (status.code(), stderr)
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Snapshot files directly in `dir` (none if it does not exist).
pub fn snapshot_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("snapshot-"))
                .count()
        })
        .unwrap_or(0)
}

/// One customer ID per partition of `p` (`busy-<i>`, the first that hashes there): a customer
/// whose events move that partition's event clock, which only its own events move.
pub fn one_customer_per_partition(p: churnd::partition::PartitionCount) -> Vec<String> {
    (0..p.get())
        .map(|partition| {
            (0..)
                .map(|i| format!("busy-{i}"))
                .find(|id| p.of(id) == partition)
                .expect("some ID hashes to every partition")
        })
        .collect()
}

/// `CLUSTER INFO` of the node behind `c`; empty while it does not answer (a node starting or
/// failing over), so that waits on its fields just go on waiting.
pub async fn cluster_info(c: &mut MultiplexedConnection) -> String {
    redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(c)
        .await
        .unwrap_or_default()
}

/// The Redis snapshot store of `settings` (`[redis]`, its group), keeping `keep` per
/// partition: what a daemon with `state.store = "redis"` reads and writes.
pub fn redis_snapshot_store(
    settings: &Settings,
    keep: usize,
) -> churnd::state::redis_store::RedisStore {
    let client = churnd::connection::client(&settings.redis).unwrap();
    let connector = churnd::connection::Connector::new(
        client,
        &settings.redis,
        settings.redis.response_timeout.get(),
        churnd::metrics::RedisRole::Snapshots,
        &churnd::metrics::Metrics::new().redis,
    );
    churnd::state::redis_store::RedisStore::new(
        connector,
        &settings.source.group,
        keep,
        CancellationToken::new(),
    )
}
