//! `churnd check-config`: what a start would meet, found before starting. The settings are
//! loaded and resolved by the caller; here the model file is loaded the way the daemon loads
//! it, and, with `--connect`, Redis is asked what churnd needs of it (docs/redis.md): the
//! version, the eviction policy, Lua scripting, and the streams and consumer group.
//!
//! Each check gives a [`Finding`]; a failed one means the daemon would not start or would
//! not work, a warning one that it would start but something deserves a look.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use redis::{RedisError, Value};

use crate::config::{redact_url, Resolved, Settings, StartFrom};
use crate::connection::{Connector, RedisConn};
use crate::decide::TaskKind;
use crate::metrics::{Metrics, RedisRole};
use crate::model::{Model, ModelError};
use crate::source::lag::group_info;

/// The oldest Redis churnd works with (docs/redis.md: `XAUTOCLAIM` reporting deleted
/// entries, `XINFO GROUPS` lag).
pub(crate) const MIN_REDIS_VERSION: (u32, u32) = (7, 0);

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warning,
    Failed,
}

/// One check's outcome, in words for the person running it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub status: Status,
    pub text: String,
}

impl Finding {
    fn ok(text: impl Into<String>) -> Self {
        Self {
            status: Status::Ok,
            text: text.into(),
        }
    }

    fn warning(text: impl Into<String>) -> Self {
        Self {
            status: Status::Warning,
            text: text.into(),
        }
    }

    fn failed(text: impl Into<String>) -> Self {
        Self {
            status: Status::Failed,
            text: text.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Failed => "FAILED",
        };
        write!(f, "{status}: {}", self.text)
    }
}

/// Loads the model file as the daemon does at start.
pub fn model(settings: &Settings) -> Finding {
    let path = &settings.model.path;
    match Model::load(path) {
        Ok(model) => Finding::ok(format!(
            "model {}: version {}, churn within {} days",
            path.display(),
            model.version(),
            model.horizon_days()
        )),
        Err(e) => Finding::failed(model_error(&e, path)),
    }
}

/// A model file that cannot be loaded, with where churnd looked: a relative `model.path` is
/// relative to the working directory, which outside the repository or the image holds no
/// `models/`.
pub fn model_error(error: &ModelError, path: &Path) -> String {
    let mut text = format!("model.path: {error}");
    if matches!(error, ModelError::Read { .. }) && path.is_relative() {
        let cwd = std::env::current_dir()
            .map_or_else(|_| "(unknown)".to_string(), |d| d.display().to_string());
        text += &format!(
            "; {} is relative to the working directory {cwd}: start churnd in the directory \
             that holds it, or set model.path (CHURND__MODEL__PATH) to an absolute path",
            path.display()
        );
    }
    text
}

/// Connects to the configured Redis (its password, its TLS material) once and asks it what
/// churnd needs. Unreachable is a failure, and nothing else is checked then.
pub async fn redis(resolved: &Resolved) -> Vec<Finding> {
    let settings = &resolved.settings;
    let url = redact_url(&settings.redis.url);
    let connector = Connector::new(
        resolved.redis.clone(),
        &settings.redis,
        settings.redis.response_timeout.get(),
        RedisRole::Check,
        &Metrics::new().redis,
    );
    let mut c = match connector.connect_once().await {
        Ok(c) => c,
        Err(e) => {
            return vec![Finding::failed(format!(
                "cannot connect to Redis at {url} (redis.url): {e}"
            ))]
        }
    };
    let ask = Asker {
        connector: &connector,
        timeout: settings.redis.response_timeout.get(),
    };
    let mut findings = vec![ask.version(&mut c, &url).await];
    findings.push(ask.eviction(&mut c).await);
    findings.push(ask.scripting(&mut c).await);
    findings.extend(ask.inputs(&mut c, settings).await);
    findings.extend(ask.outputs(&mut c, settings).await);
    findings
}

/// Asks one connection, each reply within the response timeout, errors in the words of
/// [`Connector::describe`] (the password scrubbed).
struct Asker<'a> {
    connector: &'a Connector,
    timeout: Duration,
}

impl Asker<'_> {
    async fn query(&self, c: &mut RedisConn, cmd: &redis::Cmd) -> Result<Value, String> {
        match tokio::time::timeout(self.timeout, cmd.query_async::<Value>(c)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.describe(&e)),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    fn describe(&self, e: &RedisError) -> String {
        self.connector.describe(e)
    }

    async fn version(&self, c: &mut RedisConn, url: &str) -> Finding {
        let info = match self.query(c, redis::cmd("INFO").arg("server")).await {
            Ok(info) => text(&info),
            Err(e) => {
                return Finding::warning(format!(
                    "connected to {url}, but cannot read the server version (INFO server: {e}); churnd needs Redis {}.{} or later (docs/redis.md)",
                    MIN_REDIS_VERSION.0, MIN_REDIS_VERSION.1
                ))
            }
        };
        let version = info_field(&info, "redis_version");
        match version.as_deref().and_then(parse_version) {
            Some(v) if v >= MIN_REDIS_VERSION => Finding::ok(format!(
                "connected to {url}: Redis {}",
                version.unwrap_or_default()
            )),
            Some(_) => Finding::failed(format!(
                "connected to {url}: Redis {} is older than {}.{}, which churnd needs (docs/redis.md: XAUTOCLAIM and the consumer group lag)",
                version.unwrap_or_default(),
                MIN_REDIS_VERSION.0,
                MIN_REDIS_VERSION.1
            )),
            None => Finding::warning(format!(
                "connected to {url}, but INFO server gives no redis_version; churnd needs Redis {}.{} or later (docs/redis.md)",
                MIN_REDIS_VERSION.0, MIN_REDIS_VERSION.1
            )),
        }
    }

    async fn eviction(&self, c: &mut RedisConn) -> Finding {
        let reply = self
            .query(c, redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy"))
            .await;
        let policy = match &reply {
            Ok(Value::Array(kv)) | Ok(Value::Set(kv)) => kv.get(1).map(text),
            Ok(Value::Map(kv)) => kv.first().map(|(_, v)| text(v)),
            _ => None,
        };
        match (policy, reply) {
            (Some(policy), _) if policy == "noeviction" => {
                Finding::ok("maxmemory-policy is noeviction")
            }
            (Some(policy), _) => Finding::warning(format!(
                "maxmemory-policy is {policy}: churnd needs noeviction, or Redis may evict the guards that keep tasks exactly-once, or a stream (docs/redis.md)"
            )),
            (None, Err(e)) => Finding::warning(format!(
                "cannot read maxmemory-policy (CONFIG GET: {e}); make sure it is noeviction (docs/redis.md)"
            )),
            (None, Ok(_)) => Finding::warning(
                "CONFIG GET maxmemory-policy gives no value; make sure it is noeviction (docs/redis.md)",
            ),
        }
    }

    async fn scripting(&self, c: &mut RedisConn) -> Finding {
        match self
            .query(c, redis::cmd("EVAL").arg("return 1").arg(0))
            .await
        {
            Ok(_) => Finding::ok("Lua scripting is allowed (tasks and dead letters are written by a script)"),
            Err(e) => Finding::failed(format!(
                "Lua scripting is refused (EVAL: {e}): churnd writes tasks and dead letters with a script (docs/redis.md)"
            )),
        }
    }

    /// The key's type: `none`, `stream`, or another.
    async fn key_type(&self, c: &mut RedisConn, key: &str) -> Result<String, String> {
        self.query(c, redis::cmd("TYPE").arg(key))
            .await
            .map(|v| text(&v))
    }

    async fn inputs(&self, c: &mut RedisConn, s: &Settings) -> Vec<Finding> {
        let source = &s.source;
        let start = match source.start_from {
            StartFrom::Beginning => "its beginning",
            StartFrom::End => "its end",
        };
        let mut findings = Vec::new();
        // Every partition stream (source.streams itself with one partition).
        for stream in &s.input_streams() {
            let group = &source.group;
            match self.key_type(c, stream).await {
                Err(e) => findings.push(Finding::failed(format!(
                    "input stream {stream} (source.streams) cannot be read: {e}"
                ))),
                Ok(kind) if kind == "none" => findings.push(Finding::warning(format!(
                    "input stream {stream} (source.streams) does not exist yet: churnd creates it and the consumer group {group} at start, reading from {start} (source.start_from); check the name if producers already write elsewhere"
                ))),
                Ok(kind) if kind != "stream" => findings.push(Finding::failed(format!(
                    "input stream {stream} (source.streams) holds a {kind}, not a stream: churnd cannot read it"
                ))),
                Ok(_) => {
                    let length = self
                        .query(c, redis::cmd("XLEN").arg(stream))
                        .await
                        .ok()
                        .and_then(|v| integer(&v));
                    let entries = match length {
                        Some(1) => "1 entry, ".to_string(),
                        Some(n) => format!("{n} entries, "),
                        None => String::new(),
                    };
                    let groups = self
                        .query(c, redis::cmd("XINFO").arg("GROUPS").arg(stream))
                        .await;
                    findings.push(match groups {
                        Err(e) => Finding::failed(format!(
                            "input stream {stream}: its consumer groups cannot be read (XINFO GROUPS: {e})"
                        )),
                        Ok(reply) => match group_info(&reply, group) {
                            Some(info) => Finding::ok(format!(
                                "input stream {stream}: {entries}consumer group {group} (source.group) with {} pending and lag {}",
                                info.pending,
                                info.lag.map_or("unknown".into(), |l| l.to_string())
                            )),
                            None => Finding::ok(format!(
                                "input stream {stream}: {entries}no consumer group {group} (source.group) yet: churnd creates it at start, reading from {start} (source.start_from)"
                            )),
                        },
                    });
                }
            }
        }
        findings
    }

    async fn outputs(&self, c: &mut RedisConn, s: &Settings) -> Vec<Finding> {
        let mut outputs: Vec<(&str, &str)> = vec![
            ("dead_letter.stream", &s.dead_letter.stream),
            ("winback.stream", &s.winback.stream),
            ("winback.control_stream", &s.winback.control_stream),
            ("tasks.control_stream", &s.tasks.control_stream),
            ("outcomes.stream", &s.outcomes.stream),
        ];
        outputs.extend(TaskKind::CARE.map(|kind| s.tasks.stream_setting(kind)));
        outputs.sort_unstable_by_key(|(_, stream)| *stream);
        outputs.dedup_by_key(|(_, stream)| *stream);
        let mut findings = Vec::new();
        let mut fine = Vec::new();
        for (key, stream) in outputs {
            match self.key_type(c, stream).await {
                Err(e) => findings.push(Finding::failed(format!(
                    "output stream {stream} ({key}) cannot be checked: {e}"
                ))),
                Ok(kind) if kind == "none" || kind == "stream" => fine.push(stream),
                Ok(kind) => findings.push(Finding::failed(format!(
                    "output stream {stream} ({key}) holds a {kind}, not a stream: churnd cannot write to it"
                ))),
            }
        }
        if !fine.is_empty() {
            findings.push(Finding::ok(format!(
                "output streams {} are streams or free (created at the first write)",
                fine.join(", ")
            )));
        }
        findings
    }
}

/// The text of a simple reply.
fn text(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::Okay => "OK".into(),
        Value::Int(n) => n.to_string(),
        _ => String::new(),
    }
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

/// A `field:value` line of an INFO reply.
fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.trim().strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// Major and minor of `7.0.15`.
fn parse_version(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().unwrap_or("0").parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
        assert_eq!(info_field(info, "redis_version").as_deref(), Some("7.0.15"));
        assert_eq!(info_field(info, "redis_git"), None);
        assert_eq!(parse_version("7.0.15"), Some((7, 0)));
        assert_eq!(parse_version("6.2.14"), Some((6, 2)));
        assert!(parse_version("6.2.14").unwrap() < MIN_REDIS_VERSION);
        assert_eq!(parse_version("8"), Some((8, 0)));
        assert_eq!(parse_version("x"), None);
    }

    #[test]
    fn a_missing_relative_model_file_names_the_working_directory_and_the_key() {
        let mut settings = Settings::default();
        settings.model.path = "no/such/model.json".into();
        let found = model(&settings);
        assert_eq!(found.status, Status::Failed);
        let cwd = std::env::current_dir().unwrap();
        for part in [
            "model.path: cannot read model file no/such/model.json".to_string(),
            format!("is relative to the working directory {}", cwd.display()),
            "CHURND__MODEL__PATH".to_string(),
        ] {
            assert!(found.text.contains(&part), "{part:?} in {found}");
        }
        // An absolute path needs no hint.
        settings.model.path = "/no/such/model.json".into();
        let found = model(&settings);
        assert!(!found.text.contains("working directory"), "{found}");
    }
}
