//! Layered settings: built-in defaults, then `config/default.toml` (if present in the working
//! directory), then the file given with `--config`, then `CHURND__SECTION__KEY` environment
//! variables. The result is validated as a whole and every problem is reported by key.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File};
use serde::{Deserialize, Deserializer, Serialize};

use crate::classify::{RfmThresholds, RiskBands, StageBounds};
use crate::decide::WinbackSettings;
use crate::decide::{self, TagRule};
use crate::decide::{TaskKind, TasksSettings};
use crate::profiles::ProfileSettings;

/// The shipped, documented defaults file, read from the working directory when present.
pub const DEFAULT_FILE: &str = "config/default.toml";
pub const ENV_PREFIX: &str = "CHURND";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub redis: RedisSettings,
    pub source: SourceSettings,
    pub events: EventSettings,
    pub dead_letter: DeadLetterSettings,
    pub clock: ClockSettings,
    pub model: ModelSettings,
    pub scoring: ScoringSettings,
    pub stages: StageBounds,
    pub segments: SegmentSettings,
    pub risk: RiskBands,
    pub winback: WinbackSettings,
    pub tasks: TasksSettings,
    pub profiles: ProfileSettings,
    pub tags: TagSettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    pub shutdown: ShutdownSettings,
    pub state: StateSettings,
}

/// `[[tags]]`: the tag rules (see [`crate::tags`]); the playbook's examples by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TagSettings(pub Vec<TagRule>);

impl Default for TagSettings {
    fn default() -> Self {
        Self(decide::default_rules())
    }
}

/// A setting that must never be printed: its `Debug` shows `***`, and `check-config`
/// replaces it. Only [`Secret::expose`] gives the value, at the one place that uses it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// What [`Settings::to_redacted_toml`] shows instead of a secret.
const REDACTED: &str = "***";

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `redis://` or, for TLS, `rediss://`; may carry the password (redacted wherever shown).
    pub url: String,
    /// Overrides the URL's password (e.g. from a Kubernetes Secret); never printed.
    pub password: Option<Secret>,
    /// PEM file with the CA certificate(s) that sign the server's certificate: a private CA.
    /// It replaces the built-in web PKI roots, which serve when it is unset.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for servers that require client certificates (mTLS);
    /// goes with `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    pub connect_timeout_ms: u64,
    pub response_timeout_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            password: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            connect_timeout_ms: 2_000,
            response_timeout_ms: 5_000,
            backoff_initial_ms: 100,
            backoff_max_ms: 5_000,
        }
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("response_timeout_ms", &self.response_timeout_ms)
            .field("backoff_initial_ms", &self.backoff_initial_ms)
            .field("backoff_max_ms", &self.backoff_max_ms)
            .finish()
    }
}

impl RedisSettings {
    /// Whether the URL asks for TLS (`rediss://`, or Valkey's `valkeys://`).
    pub fn uses_tls(&self) -> bool {
        let scheme = self.url.split_once("://").map_or("", |(s, _)| s);
        scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
    }
}

/// The URL with its secrets replaced by `***`: the password of the user information
/// (`redis://user:***@host`, `redis://:***@host`; a user information without `:` is
/// redacted whole, since some clients read it as the password) and the `pass`/`password`
/// query parameters of socket URLs (`redis+unix:///run/redis.sock?pass=***`).
///
/// Works on the text, not a parsed URL, so that a URL too broken to parse is redacted too.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    // The last `@` ends the user information even when the password holds an unescaped `@`.
    let rest = match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{REDACTED}@{host}"),
            None => format!("{REDACTED}@{host}"),
        },
        None => rest.to_string(),
    };
    let rest = match rest.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _))
                        if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                    {
                        format!("{k}={REDACTED}")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            let mut shown = format!("{path}?{}", query.join("&"));
            if let Some(f) = fragment {
                shown = format!("{shown}#{f}");
            }
            shown
        }
        None => rest,
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// A new consumer group reads the stream's whole retained history.
    Beginning,
    /// A new consumer group reads only entries added after it is created.
    End,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceSettings {
    /// Input streams; from the environment as a comma-separated list.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub streams: Vec<String>,
    pub group: String,
    /// Consumer name; empty means the host name (the pod name in Kubernetes), which keeps
    /// a restarted replica's pending entries its own.
    pub consumer: String,
    /// Entries per XREADGROUP (COUNT).
    pub batch_size: usize,
    /// How long a read waits for new entries (BLOCK).
    pub block_ms: u64,
    pub start_from: StartFrom,
    /// Batches buffered between reading and processing: the backpressure bound.
    pub queue_batches: usize,
    /// How often consumer-group lag and pending counts are polled for metrics, and an idle
    /// sink checks its connection.
    pub lag_poll_ms: u64,
    /// Entries pending this long on another consumer of the group (one that is gone) are
    /// claimed by this one; 0 turns claiming off.
    pub claim_idle_ms: u64,
    /// Bytes of entries read and not yet applied, at most: reading waits for room, and a
    /// read asks for fewer entries when they are large (see `source::budget`).
    pub max_inflight_bytes: u64,
}

impl Default for SourceSettings {
    fn default() -> Self {
        Self {
            streams: vec!["churn:events".into()],
            group: "churnd".into(),
            consumer: String::new(),
            batch_size: 1_000,
            block_ms: 1_000,
            start_from: StartFrom::Beginning,
            queue_batches: 4,
            lag_poll_ms: 5_000,
            claim_idle_ms: 60_000,
            max_inflight_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    /// How far an event's `ts` may lie ahead of its stream entry's time.
    pub max_future_skew_ms: u64,
    /// The earliest `ts` accepted (milliseconds since the Unix epoch).
    pub min_ts_ms: u64,
    /// Largest entry processed, in bytes (names and values of its fields); larger ones
    /// are dead-lettered as `entry_too_large`.
    pub max_entry_bytes: usize,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            max_future_skew_ms: 86_400_000,
            // 1973-03-03: every `ts` in seconds (up to the year 5138) lies below it.
            min_ts_ms: 100_000_000_000,
            max_entry_bytes: 64 << 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterSettings {
    pub stream: String,
    pub max_len: u64,
    /// How long Redis remembers that an entry was dead-lettered, so a redelivery of the
    /// entry does not write it twice.
    pub dedup_ttl_secs: u64,
    /// At most this many bytes of a rejected entry's fields are copied to its dead letter;
    /// the rest is cut (and the dead letter says so).
    pub max_copy_bytes: usize,
}

impl Default for DeadLetterSettings {
    fn default() -> Self {
        Self {
            stream: "churn:events:dlq".into(),
            max_len: 1_000_000,
            dedup_ttl_secs: 604_800,
            max_copy_bytes: 16 << 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockMode {
    /// "Now" is the wall clock: live traffic.
    Wall,
    /// "Now" is the largest event time seen: replays give the results of living it.
    Event,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockSettings {
    pub mode: ClockMode,
    /// How often silent customers are checked under the wall clock.
    pub tick_ms: u64,
}

impl Default for ClockSettings {
    fn default() -> Self {
        Self {
            mode: ClockMode::Wall,
            tick_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    pub path: PathBuf,
    /// How often the file is checked for changes; 0 turns watching off (SIGHUP still reloads).
    pub watch_interval_ms: u64,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            path: "models/cdnow.json".into(),
            watch_interval_ms: 2_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringSettings {
    /// Silent customers are re-scored when their classification could next change (see
    /// `features::recheck`), but never more often than this: a churn probability crossing a
    /// boundary is noticed at most this late.
    pub rescore_interval_secs: u32,
    /// Silent customers are re-scored at least this often, so that refreshed population
    /// segment thresholds reach everyone.
    pub max_rescore_interval_secs: u32,
}

impl Default for ScoringSettings {
    fn default() -> Self {
        Self {
            rescore_interval_secs: 86_400,
            max_rescore_interval_secs: 2_592_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentMode {
    /// R, F and M thresholds are the live population's medians.
    Population,
    /// R, F and M thresholds are the configured values.
    Fixed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentSettings {
    pub mode: SegmentMode,
    /// Thresholds for `fixed`, and for `population` until enough customers are known.
    pub recency_days: f64,
    pub frequency: f64,
    pub monetary: f64,
    /// How often (clock time) population thresholds are recomputed.
    pub refresh_secs: u32,
    /// Customers sampled for the population medians.
    pub sample_size: usize,
}

impl Default for SegmentSettings {
    fn default() -> Self {
        Self {
            mode: SegmentMode::Population,
            recency_days: 90.0,
            frequency: 1.5,
            monetary: 100.0,
            refresh_secs: 86_400,
            sample_size: 10_000,
        }
    }
}

impl SegmentSettings {
    pub fn fixed(&self) -> RfmThresholds {
        RfmThresholds {
            recency_days: self.recency_days,
            frequency: self.frequency,
            monetary: self.monetary,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// 127.0.0.1:9898 keeps the API to the host (or pod); 0.0.0.0 serves every interface.
    pub addr: String,
    /// When set, `/v1/customers/{id}` and `/v1/summary` require `Authorization: Bearer
    /// <token>`: they show per-customer data. Probes and scraping stay open.
    pub customer_token: Option<Secret>,
    /// A file holding the token (a mounted Kubernetes Secret), read at start; surrounding
    /// whitespace, such as a final newline, is ignored. Instead of `customer_token`.
    pub customer_token_file: Option<PathBuf>,
    /// Connections served at once: each holds a file descriptor, and without a bound idle
    /// clients could take every one that snapshots and Redis need. Must leave room under
    /// the open-file limit (see [`crate::http::serve::descriptor_problem`]).
    pub max_connections: u32,
    /// A request's head must be complete this long after its first byte (after the
    /// connection opened, for its first request): slow or silent clients free their place.
    pub header_timeout_ms: u64,
    /// How long a kept-alive connection may wait for its next request.
    pub idle_timeout_ms: u64,
    /// From a request's complete head until its response is handed over whole: a stuck
    /// handler or a client that stops reading gives its place back.
    pub request_timeout_ms: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            addr: "0.0.0.0:9898".into(),
            customer_token: None,
            customer_token_file: None,
            max_connections: 256,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            request_timeout_ms: 30_000,
        }
    }
}

impl HttpSettings {
    /// The token the customer endpoints require, if any, from `customer_token` or read from
    /// `customer_token_file`. Errors name the key and never show the token.
    pub fn customer_token(&self) -> Result<Option<Secret>, SettingError> {
        let (key, token) = match (&self.customer_token, &self.customer_token_file) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(SettingError(
                    "http.customer_token and http.customer_token_file are both set: set one".into(),
                ))
            }
            (Some(token), None) => ("http.customer_token", token.expose().to_string()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    SettingError(format!(
                        "http.customer_token_file {} cannot be read: {e}",
                        path.display()
                    ))
                })?;
                ("http.customer_token_file", text.trim().to_string())
            }
        };
        if token.is_empty() {
            return Err(SettingError(format!(
                "{key} gives an empty token; unset it to serve the customer endpoints without one"
            )));
        }
        // RFC 6750: a bearer token is visible ASCII; anything else cannot be sent in a header.
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SettingError(format!(
                "{key} must be visible ASCII characters without spaces (for example from `openssl rand -hex 32`)"
            )));
        }
        Ok(Some(Secret(token)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `churnd=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSettings {
    /// After SIGTERM, how long in-flight batches may take to finish and be acknowledged.
    pub drain_timeout_ms: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateSettings {
    /// Where snapshots of customer state go (a container volume); empty turns them off, and
    /// a restart then forgets every customer.
    pub dir: PathBuf,
    /// How often a snapshot is written (and once more at shutdown), unless nothing changed
    /// since the last one written.
    pub snapshot_interval_ms: u64,
    /// Snapshots kept: the newest is used, older ones stand in if it is damaged.
    pub keep: usize,
    /// Customers tracked at most: the memory bound. When a new customer would exceed it,
    /// the least recently active 1 % are forgotten.
    pub max_customers: usize,
    /// Snapshots failing this many times in a row make `/readyz` answer 503 until one is
    /// written again: a restart would lose everything since the last good one. 0: never.
    pub max_consecutive_snapshot_failures: u32,
}

impl Default for StateSettings {
    fn default() -> Self {
        Self {
            dir: "state".into(),
            snapshot_interval_ms: 10_000,
            keep: 3,
            max_customers: 10_000_000,
            max_consecutive_snapshot_failures: 3,
        }
    }
}

impl StateSettings {
    /// The snapshot directory, unless snapshots are off.
    pub fn snapshot_dir(&self) -> Option<&Path> {
        (!self.dir.as_os_str().is_empty()).then_some(self.dir.as_path())
    }
}

/// A setting that cannot be used, in a message that names its key (and no secret).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingError(pub String);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration is invalid:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

fn list_or_comma_separated<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    Ok(match ListOrString::deserialize(d)? {
        ListOrString::List(v) => v,
        ListOrString::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    })
}

/// Settings whose empty value would silently mean "off" or "open" (the URL's password or
/// none, the built-in CA roots, no client certificate, no API token, errors-only logging),
/// with what to do instead. An empty value of these is refused wherever it comes from (a
/// file, or an environment variable such as a Kubernetes Secret with an empty value), and the
/// message names where it came from. Other settings' empty values either have a documented
/// meaning (`state.dir`: snapshots off; `source.consumer`: the host name; a task kind's
/// `stream`: `tasks.stream`) or are invalid values of their own.
const REFUSED_EMPTY: [(&str, &str); 7] = [
    (
        "redis.password",
        "unset it to use the password in redis.url (or none)",
    ),
    (
        "redis.tls_ca_file",
        "unset it to trust the built-in web PKI roots",
    ),
    (
        "redis.tls_cert_file",
        "unset it and redis.tls_key_file to connect without a client certificate",
    ),
    (
        "redis.tls_key_file",
        "unset it and redis.tls_cert_file to connect without a client certificate",
    ),
    (
        "http.customer_token",
        "unset it to serve the customer endpoints without a token",
    ),
    (
        "http.customer_token_file",
        "unset it to serve the customer endpoints without a token",
    ),
    (
        "log.level",
        "it would log errors only; unset it for the default (info)",
    ),
];

/// Where the settings of [`REFUSED_EMPTY`] came from, for the messages: `in FILE` or `from
/// CHURND__… in the environment`. Empty for settings built in code.
#[derive(Debug, Default)]
struct Origins(Vec<(&'static str, String)>);

impl Origins {
    /// `files`: the files read, as given, to name them as the user did (config names a
    /// file by its path relative to the working directory).
    fn of(config: &Config, files: &[&Path]) -> Self {
        let name_of = |origin: &str| {
            let here = std::fs::canonicalize(origin).ok();
            files
                .iter()
                .find(|file| here.is_some() && std::fs::canonicalize(file).ok() == here)
                .map_or(origin.to_string(), |file| file.display().to_string())
        };
        let origins = REFUSED_EMPTY.iter().filter_map(|&(key, _)| {
            // Through the table: `get` deserialises a copy of the value, without its origin.
            let (section, name) = key.split_once('.')?;
            let table = config.get_table(section).ok()?;
            let origin = match table.get(name)?.origin()? {
                // What config 0.15 names every environment variable's origin.
                "the environment" => format!("from {} in the environment", env_var(key)),
                file => format!("in {}", name_of(file)),
            };
            Some((key, origin))
        });
        Self(origins.collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, o)| o.as_str())
    }
}

/// The environment variable that sets `key`: `http.customer_token` → `CHURND__HTTP__CUSTOMER_TOKEN`.
pub fn env_var(key: &str) -> String {
    format!("{ENV_PREFIX}__{}", key.replace('.', "__").to_uppercase())
}

impl Settings {
    /// Loads all layers, the process's environment last, and validates the result.
    /// `defaults_file` is normally [`DEFAULT_FILE`]; it is skipped when missing.
    pub fn load(defaults_file: &Path, config_file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_layers(defaults_file, config_file, None)
    }

    /// [`Self::load`] with these environment variables instead of the process's (tests).
    pub fn load_with_env(
        defaults_file: &Path,
        config_file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::load_layers(defaults_file, config_file, Some(env.into_iter().collect()))
    }

    fn load_layers(
        defaults_file: &Path,
        config_file: Option<&Path>,
        env: Option<config::Map<String, String>>,
    ) -> Result<Self, ConfigError> {
        let mut builder = Config::builder()
            .add_source(Config::try_from(&Settings::default())?)
            .add_source(File::from(defaults_file).required(false));
        if let Some(path) = config_file {
            builder = builder.add_source(File::from(path).required(true));
        }
        // An empty variable is a value, as an empty string in a file is (config's
        // `ignore_empty` would drop it and leave the file's or default value in force: an
        // empty token turned authentication off, an empty state.dir left snapshots on).
        let config = builder
            .add_source(
                Environment::with_prefix(ENV_PREFIX)
                    .separator("__")
                    .source(env),
            )
            .build()?;
        let files: Vec<&Path> = [Some(defaults_file), config_file]
            .into_iter()
            .flatten()
            .collect();
        let origins = Origins::of(&config, &files);
        let settings: Settings = config.try_deserialize()?;
        settings.validated_from(&origins)
    }

    /// Fills derived defaults and checks every key, reporting all problems at once.
    pub fn validated(self) -> Result<Self, ConfigError> {
        self.validated_from(&Origins::default())
    }

    fn validated_from(mut self, origins: &Origins) -> Result<Self, ConfigError> {
        if self.source.consumer.is_empty() {
            self.source.consumer = host_name();
        }
        let problems = self.problems(origins);
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Whether `key` (one of [`REFUSED_EMPTY`]) is set to an empty value.
    fn is_set_empty(&self, key: &str) -> bool {
        let path = |p: &Option<PathBuf>| p.as_ref().is_some_and(|p| p.as_os_str().is_empty());
        let secret = |s: &Option<Secret>| s.as_ref().is_some_and(|s| s.expose().is_empty());
        match key {
            "redis.password" => secret(&self.redis.password),
            "redis.tls_ca_file" => path(&self.redis.tls_ca_file),
            "redis.tls_cert_file" => path(&self.redis.tls_cert_file),
            "redis.tls_key_file" => path(&self.redis.tls_key_file),
            "http.customer_token" => secret(&self.http.customer_token),
            "http.customer_token_file" => path(&self.http.customer_token_file),
            "log.level" => self.log.level.trim().is_empty(),
            _ => false,
        }
    }

    fn problems(&self, origins: &Origins) -> Vec<String> {
        let mut p = Vec::new();
        let mut empty = Vec::new();
        for (key, instead) in REFUSED_EMPTY {
            if self.is_set_empty(key) {
                let from = origins
                    .get(key)
                    .map_or(String::new(), |o| format!(" ({o})"));
                p.push(format!("{key} is set but empty{from}: {instead}"));
                empty.push(key);
            }
        }
        // The checks that read these settings would only report the same value again.
        let any_empty = |prefix: &str| empty.iter().any(|key| key.starts_with(prefix));
        if !any_empty("redis.") {
            if let Err(e) = self.redis_client() {
                p.push(e.0);
            }
        }
        if !any_empty("http.") {
            if let Err(e) = self.http.customer_token() {
                p.push(e.0);
            }
        }
        for (key, v) in [
            ("redis.connect_timeout_ms", self.redis.connect_timeout_ms),
            ("redis.response_timeout_ms", self.redis.response_timeout_ms),
            ("redis.backoff_initial_ms", self.redis.backoff_initial_ms),
            ("source.block_ms", self.source.block_ms),
            ("source.lag_poll_ms", self.source.lag_poll_ms),
            ("clock.tick_ms", self.clock.tick_ms),
            (
                "state.snapshot_interval_ms",
                self.state.snapshot_interval_ms,
            ),
            ("http.header_timeout_ms", self.http.header_timeout_ms),
            ("http.idle_timeout_ms", self.http.idle_timeout_ms),
            ("http.request_timeout_ms", self.http.request_timeout_ms),
            ("http.max_connections", u64::from(self.http.max_connections)),
        ] {
            if v == 0 {
                p.push(format!("{key} must be at least 1"));
            }
        }
        if self.redis.backoff_max_ms < self.redis.backoff_initial_ms {
            p.push("redis.backoff_max_ms must be at least redis.backoff_initial_ms".into());
        }

        let s = &self.source;
        if s.streams.is_empty() {
            p.push("source.streams must name at least one stream".into());
        }
        let mut seen = HashSet::new();
        for stream in &s.streams {
            if stream.is_empty() {
                p.push("source.streams contains an empty name".into());
            } else if !seen.insert(stream) {
                p.push(format!("source.streams lists {stream:?} twice"));
            }
        }
        if s.streams.len() > usize::from(u16::MAX) {
            p.push("source.streams has too many streams".into());
        }
        if s.group.is_empty() {
            p.push("source.group must not be empty".into());
        }
        if !(1..=100_000).contains(&s.batch_size) {
            p.push(format!(
                "source.batch_size ({}) must be between 1 and 100000",
                s.batch_size
            ));
        }
        if s.queue_batches == 0 {
            p.push("source.queue_batches must be at least 1".into());
        }
        for (key, value, least) in [
            ("source.max_inflight_bytes", s.max_inflight_bytes, 1 << 16),
            (
                "events.max_entry_bytes",
                self.events.max_entry_bytes as u64,
                1 << 10,
            ),
            (
                "dead_letter.max_copy_bytes",
                self.dead_letter.max_copy_bytes as u64,
                1 << 8,
            ),
        ] {
            if value < least {
                p.push(format!("{key} ({value}) must be at least {least}"));
            }
        }

        let outputs = [
            ("dead_letter.stream", &self.dead_letter.stream),
            ("winback.stream", &self.winback.stream),
            ("winback.control_stream", &self.winback.control_stream),
        ];
        for (key, name) in outputs {
            if name.is_empty() {
                p.push(format!("{key} must not be empty"));
            } else if s.streams.contains(name) {
                p.push(format!(
                    "{key} ({name:?}) must not also be an input in source.streams"
                ));
            }
        }
        if self.dead_letter.stream == self.winback.stream
            || self.dead_letter.stream == self.winback.control_stream
        {
            p.push("dead_letter.stream must differ from the win-back streams".into());
        }
        // The streams the other kinds resolve to, each named once by the key that sets it
        // (`tasks.problems` reports an empty tasks.stream).
        let mut care: Vec<_> = TaskKind::CARE
            .map(|kind| self.tasks.stream_setting(kind))
            .to_vec();
        care.sort_unstable();
        care.dedup();
        for (key, name) in care {
            if s.streams.iter().any(|input| input == name) {
                p.push(format!(
                    "{key} ({name:?}) must not also be an input in source.streams"
                ));
            }
            if name == self.dead_letter.stream || name == self.winback.control_stream {
                p.push(format!(
                    "{key} ({name:?}) must differ from dead_letter.stream and winback.control_stream"
                ));
            }
        }
        if self.dead_letter.max_len == 0 || self.winback.max_len == 0 || self.tasks.max_len == 0 {
            p.push(
                "dead_letter.max_len, winback.max_len and tasks.max_len must be at least 1".into(),
            );
        }
        if self.dead_letter.dedup_ttl_secs == 0 {
            p.push("dead_letter.dedup_ttl_secs must be at least 1".into());
        }
        if self.model.path.as_os_str().is_empty() {
            p.push("model.path must not be empty".into());
        }
        if self.scoring.rescore_interval_secs == 0 {
            p.push("scoring.rescore_interval_secs must be at least 1".into());
        }
        if self.scoring.max_rescore_interval_secs < self.scoring.rescore_interval_secs {
            p.push(
                "scoring.max_rescore_interval_secs must be at least scoring.rescore_interval_secs"
                    .into(),
            );
        }
        let seg = &self.segments;
        if !(seg.recency_days >= 0.0 && seg.frequency >= 0.0 && seg.monetary >= 0.0) {
            p.push("segments.recency_days, segments.frequency and segments.monetary must be non-negative numbers".into());
        }
        if seg.refresh_secs == 0 || seg.sample_size == 0 {
            p.push("segments.refresh_secs and segments.sample_size must be at least 1".into());
        }
        p.extend(self.stages.problems("stages"));
        p.extend(self.risk.problems("risk"));
        p.extend(self.winback.problems("winback"));
        p.extend(self.tasks.problems("tasks"));
        p.extend(self.profiles.problems("profiles"));
        p.extend(decide::tag_problems(&self.tags.0));
        if self.state.keep == 0 {
            p.push("state.keep must be at least 1".into());
        }
        if !(1..=u32::MAX as usize).contains(&self.state.max_customers) {
            p.push(format!(
                "state.max_customers ({}) must be between 1 and {}",
                self.state.max_customers,
                u32::MAX
            ));
        }
        if self.http.max_connections > 0 {
            p.extend(crate::http::serve::descriptor_problem(
                self.http.max_connections,
            ));
        }
        if self.http.addr.parse::<SocketAddr>().is_err() {
            p.push(format!(
                "http.addr {:?} is not an address such as 0.0.0.0:9898",
                self.http.addr
            ));
        }
        if !empty.contains(&"log.level")
            && tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err()
        {
            p.push(format!(
                "log.level {:?} is not a tracing filter such as info",
                self.log.level
            ));
        }
        p
    }

    /// The effective settings as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.redis.url = redact_url(&shown.redis.url);
        if shown.redis.password.is_some() {
            shown.redis.password = Some(REDACTED.into());
        }
        if shown.http.customer_token.is_some() {
            shown.http.customer_token = Some(REDACTED.into());
        }
        toml::to_string_pretty(&shown)
            .unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }

    /// A Redis client for the configured server: the password override applied and, for
    /// `rediss://`, the configured CA and client certificate. Reads and checks the
    /// certificate files, so a bad one is reported at start by its key.
    pub fn redis_client(&self) -> Result<redis::Client, SettingError> {
        use redis::{ConnectionAddr, IntoConnectionInfo};
        let r = &self.redis;
        let mut info = r.url.as_str().into_connection_info().map_err(|e| {
            SettingError(format!(
                "redis.url {:?} is not a Redis URL: {e}",
                redact_url(&r.url)
            ))
        })?;
        if let Some(password) = &r.password {
            let redis_info = info
                .redis_settings()
                .clone()
                .set_password(password.expose());
            info = info.set_redis_settings(redis_info);
        }
        let files = [
            ("redis.tls_ca_file", &r.tls_ca_file),
            ("redis.tls_cert_file", &r.tls_cert_file),
            ("redis.tls_key_file", &r.tls_key_file),
        ];
        match info.addr() {
            ConnectionAddr::TcpTls { insecure: true, .. } => {
                return Err(SettingError(INSECURE_REFUSED.into()));
            }
            ConnectionAddr::TcpTls { .. } => {}
            _ => {
                if let Some((key, _)) = files.iter().find(|(_, f)| f.is_some()) {
                    return Err(SettingError(format!(
                        "{key} is set but redis.url is not a rediss:// (TLS) URL"
                    )));
                }
                return redis::Client::open(info)
                    .map_err(|e| SettingError(format!("redis.url: {e}")));
            }
        }
        install_crypto_provider();
        let root_cert = match &r.tls_ca_file {
            Some(path) => Some(read_certificates("redis.tls_ca_file", path)?),
            None => None,
        };
        let client_tls = match (&r.tls_cert_file, &r.tls_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_certificates("redis.tls_cert_file", cert)?,
                client_key: read_private_key("redis.tls_key_file", key)?,
            }),
            _ => return Err(SettingError(CERT_WITHOUT_KEY.into())),
        };
        let certificates = redis::TlsCertificates {
            client_tls,
            root_cert,
        };
        redis::Client::build_with_tls(info, certificates)
            .map_err(|e| SettingError(format!("redis TLS settings cannot be used: {e}")))
    }
}

const CERT_WITHOUT_KEY: &str =
    "redis.tls_cert_file and redis.tls_key_file go together: set both or neither";
const INSECURE_REFUSED: &str = "redis.url: #insecure (TLS without certificate verification) \
    is not supported; give the server's CA in redis.tls_ca_file";

/// rustls needs a process-wide crypto provider. Only ring is compiled in, which rustls would
/// pick by itself; installing it explicitly keeps TLS working should another dependency
/// ever enable a second provider (rustls then refuses to guess and panics).
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means a provider is installed already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, SettingError> {
    std::fs::read(path)
        .map_err(|e| SettingError(format!("{key} {} cannot be read: {e}", path.display())))
}

/// A PEM file's bytes, checked to hold at least one well-formed certificate.
fn read_certificates(key: &str, path: &Path) -> Result<Vec<u8>, SettingError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let pem = read_file(key, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            SettingError(format!(
                "{key} {} is not a PEM certificate file: {e}",
                path.display()
            ))
        })?;
    if certificates.is_empty() {
        return Err(SettingError(format!(
            "{key} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(pem)
}

/// A PEM file's bytes, checked to hold a private key (PKCS#8, PKCS#1 or SEC1).
fn read_private_key(key: &str, path: &Path) -> Result<Vec<u8>, SettingError> {
    use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
    let pem = read_file(key, path)?;
    // The parse error is about the file's structure; it never quotes the key.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        SettingError(format!(
            "{key} {} holds no usable PEM private key: {e}",
            path.display()
        ))
    })?;
    Ok(pem)
}

fn host_name() -> String {
    if let Ok(name) = std::env::var("HOSTNAME") {
        if !name.is_empty() {
            return name;
        }
    }
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "churnd".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let s = Settings::default().validated().unwrap();
        assert!(!s.source.consumer.is_empty());
    }

    #[test]
    fn the_shipped_defaults_file_equals_the_built_in_defaults() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_FILE);
        let from_file: Settings = Config::builder()
            .add_source(File::from(file))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        assert_eq!(from_file, Settings::default());
    }

    #[test]
    fn a_file_s_tags_replace_the_default_ones_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("churnd.toml");
        std::fs::write(
            &path,
            "[[tags]]\nname = \"eu_vip\"\nsegments = [\"important_value\"]\nprofile = { region = [\"eu\"] }\n",
        )
        .unwrap();
        let defaults = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_FILE);
        let s = Settings::load(&defaults, Some(&path)).unwrap();
        assert_eq!(s.tags.0.len(), 1, "{:?}", s.tags);
        assert_eq!(s.tags.0[0].profile["region"], ["eu"]);

        std::fs::write(&path, "[[tags]]\nname = \"everyone\"\n").unwrap();
        let err = Settings::load(&defaults, Some(&path))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tags[0]") && err.contains("no condition"),
            "{err}"
        );
        std::fs::write(&path, "[profiles]\nkeys = [\"Bad Key\"]\n").unwrap();
        let err = Settings::load(&defaults, Some(&path))
            .unwrap_err()
            .to_string();
        assert!(err.contains("profiles.keys"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let mut s = Settings::default();
        s.source.batch_size = 0;
        s.http.addr = "nowhere".into();
        s.risk.high = 2.0;
        s.dead_letter.stream = "churn:events".into();
        let err = s.validated().unwrap_err().to_string();
        for key in [
            "source.batch_size",
            "http.addr",
            "risk.high",
            "dead_letter.stream",
        ] {
            assert!(err.contains(key), "{key} not named in:\n{err}");
        }
    }

    #[test]
    fn http_limits_are_checked_by_key() {
        let err = problems_with(|s| {
            s.http.max_connections = 0;
            s.http.header_timeout_ms = 0;
            s.http.idle_timeout_ms = 0;
            s.http.request_timeout_ms = 0;
        });
        for key in [
            "http.max_connections must be at least 1",
            "http.header_timeout_ms must be at least 1",
            "http.idle_timeout_ms must be at least 1",
            "http.request_timeout_ms must be at least 1",
        ] {
            assert!(err.contains(key), "{key} not named in:\n{err}");
        }
        // Beyond any open-file limit but "unlimited" (Linux allows about a million at most).
        if crate::http::serve::open_file_limit().is_some() {
            let err = problems_with(|s| s.http.max_connections = u32::MAX);
            assert!(
                err.contains("http.max_connections (4294967295)")
                    && err.contains("open-file limit"),
                "{err}"
            );
        }
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("redis://:secret@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://user:pw@host"), "redis://user:***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        let mut s = Settings::default();
        s.redis.url = "redis://:sesame2@h:1".into();
        s.redis.password = Some("sesame3".into());
        let shown = s.to_redacted_toml();
        assert!(!shown.contains("sesame"), "{shown}");
    }

    #[test]
    fn every_form_of_url_secret_is_redacted() {
        for (url, shown) in [
            ("rediss://:pw@h:6380/1", "rediss://:***@h:6380/1"),
            ("redis://pw@h", "redis://***@h"),
            ("redis://u:p@ss@h", "redis://u:***@h"),
            (
                "redis+unix:///run/r.sock?db=1&pass=pw",
                "redis+unix:///run/r.sock?db=1&pass=***",
            ),
            (
                "unix:///r.sock?user=u&PASSWORD=pw#x",
                "unix:///r.sock?user=u&PASSWORD=***#x",
            ),
            ("u:pw@h:6379", "u:***@h:6379"),
            ("rediss://h:6380/0", "rediss://h:6380/0"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let mut s = Settings::default();
        s.redis.url = "rediss://churnd:sesame2@h:6380/0".into();
        s.redis.password = Some("sesame3".into());
        s.http.customer_token = Some("sesame4".into());
        for shown in [format!("{s:?}"), format!("{s:#?}"), s.to_redacted_toml()] {
            assert!(!shown.contains("sesame"), "{shown}");
            assert!(shown.contains("churnd:***@h:6380"), "{shown}");
        }
        let parsed: toml::Value = toml::from_str(&s.to_redacted_toml()).unwrap();
        assert_eq!(parsed["http"]["customer_token"].as_str(), Some("***"));
    }

    fn problems_with(change: impl FnOnce(&mut Settings)) -> String {
        let mut s = Settings::default();
        change(&mut s);
        match s.validated() {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_customer_token_is_checked_by_key_without_showing_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  from-a-secret\n").unwrap();
        let mut http = HttpSettings {
            customer_token_file: Some(file.clone()),
            ..HttpSettings::default()
        };
        assert_eq!(
            http.customer_token().unwrap().unwrap().expose(),
            "from-a-secret"
        );
        http.customer_token = Some("direct".into());
        let err = http.customer_token().unwrap_err().to_string();
        assert!(err.contains("both set"), "{err}");

        let err = problems_with(|s| s.http.customer_token = Some("".into()));
        assert!(
            err.contains("http.customer_token is set but empty"),
            "{err}"
        );
        std::fs::write(&file, "\n").unwrap();
        let err = problems_with(|s| s.http.customer_token_file = Some(file.clone()));
        assert!(
            err.contains("http.customer_token_file gives an empty token"),
            "{err}"
        );
        let err = problems_with(|s| s.http.customer_token = Some("sp ace-secret".into()));
        assert!(
            err.contains("http.customer_token must be visible ASCII"),
            "{err}"
        );
        assert!(!err.contains("ace-secret"), "{err}");
        let err = problems_with(|s| s.http.customer_token_file = Some(dir.path().join("none")));
        assert!(
            err.contains("http.customer_token_file") && err.contains("cannot be read"),
            "{err}"
        );
        assert_eq!(
            problems_with(|s| s.http.customer_token = Some("ok".into())),
            ""
        );
    }

    fn load_with(file: Option<&str>, env: &[(&str, &str)]) -> Result<Settings, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("churnd.toml");
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        let defaults = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_FILE);
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Settings::load_with_env(&defaults, file.map(|_| path.as_path()), env)
            .map_err(|e| e.to_string().replace(&path.display().to_string(), "FILE"))
    }

    #[test]
    fn an_empty_value_means_the_same_from_the_environment_as_from_a_file() {
        // Refused, naming the key and where the value came from.
        for (key, _) in REFUSED_EMPTY {
            let var = env_var(key);
            let err = load_with(None, &[(&var, ""), ("UNRELATED", "")]).unwrap_err();
            assert!(
                err.contains(&format!(
                    "{key} is set but empty (from {var} in the environment)"
                )),
                "{err}"
            );
            assert_eq!(err.matches(key).count(), 1, "{key} reported once: {err}");
            let (section, name) = key.split_once('.').unwrap();
            let err = load_with(Some(&format!("[{section}]\n{name} = \"\"\n")), &[]).unwrap_err();
            assert!(
                err.contains(&format!("{key} is set but empty (in FILE)")),
                "{err}"
            );
        }
        // The customer API is never open because a variable is empty, whatever the file says.
        let err = load_with(
            Some("[http]\ncustomer_token = \"from-the-file\"\n"),
            &[("CHURND__HTTP__CUSTOMER_TOKEN", "")],
        )
        .unwrap_err();
        assert!(err.contains("CHURND__HTTP__CUSTOMER_TOKEN"), "{err}");

        // An empty state.dir turns snapshots off from either source, as documented.
        let from_env = load_with(None, &[("CHURND__STATE__DIR", "")]).unwrap();
        assert_eq!(from_env.state.snapshot_dir(), None);
        let from_file = load_with(Some("[state]\ndir = \"\"\n"), &[]).unwrap();
        assert_eq!(from_file.state.snapshot_dir(), None);
        let overridden = load_with(
            Some("[state]\ndir = \"/var/lib/churnd\"\n"),
            &[("CHURND__STATE__DIR", "")],
        )
        .unwrap();
        assert_eq!(overridden.state.snapshot_dir(), None);
        // An empty consumer is the host name, from either source.
        let s = load_with(None, &[("CHURND__SOURCE__CONSUMER", "")]).unwrap();
        assert!(!s.source.consumer.is_empty());

        // Empty numbers, switches and lists are invalid values, named by key.
        for (var, key) in [
            ("CHURND__STATE__KEEP", "state.keep"),
            ("CHURND__WINBACK__ENABLED", "winback.enabled"),
        ] {
            let err = load_with(None, &[(var, "")]).unwrap_err();
            assert!(err.contains(key), "{key}: {err}");
        }
        let err = load_with(None, &[("CHURND__SOURCE__STREAMS", "")]).unwrap_err();
        assert!(
            err.contains("source.streams must name at least one stream"),
            "{err}"
        );
        assert!(load_with(None, &[("CHURND__HTTP__CUSTOMER_TOKEN", "t0k")]).is_ok());
    }

    #[test]
    fn tls_settings_are_checked_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for (change, named) in [
            (
                Box::new(|s: &mut Settings| s.redis.tls_ca_file = Some("ca.pem".into()))
                    as Box<dyn FnOnce(&mut Settings)>,
                "redis.tls_ca_file is set but redis.url is not a rediss://",
            ),
            (
                Box::new(|s: &mut Settings| s.redis.url = "rediss://:pw@h:6380/#insecure".into()),
                "#insecure",
            ),
            (
                Box::new(|s: &mut Settings| {
                    s.redis.url = "rediss://h:6380".into();
                    s.redis.tls_cert_file = Some("client.pem".into());
                }),
                "redis.tls_cert_file and redis.tls_key_file go together",
            ),
            (
                Box::new(|s: &mut Settings| {
                    s.redis.url = "rediss://h:6380".into();
                    s.redis.tls_ca_file = Some("/nonexistent/ca.pem".into());
                }),
                "redis.tls_ca_file /nonexistent/ca.pem cannot be read",
            ),
            (
                Box::new(move |s: &mut Settings| {
                    s.redis.url = "rediss://h:6380".into();
                    s.redis.tls_ca_file = Some(empty);
                }),
                "holds no PEM certificate",
            ),
        ] {
            let err = problems_with(change);
            assert!(err.contains(named), "expected {named:?} in:\n{err}");
            assert!(!err.contains("pw@"), "{err}");
        }
        // Web PKI roots by default: a rediss:// URL alone is valid.
        assert_eq!(
            problems_with(|s| s.redis.url = "rediss://:pw@h:6380/0".into()),
            ""
        );
    }
}
