//! Layered settings: built-in defaults, then `config/default.toml` (if present in the working
//! directory), then the file given with `--config`, then `CHURND__SECTION__KEY` environment
//! variables. The result is validated as a whole and every problem is reported by key.

mod events;
mod http;
mod log;
mod redis;
mod scoring;
mod secret;
mod segments;
mod source;
mod state;
mod streams;

use std::path::{Path, PathBuf};

use config::{Config, Environment, File};
use serde::{Deserialize, Serialize};

use crate::classify::{RiskBands, StageBounds};
use crate::decide::TasksSettings;
use crate::decide::WinbackSettings;
use crate::decide::{self, TagRule};
use crate::profiles::ProfileSettings;

pub use events::{DeadLetterSettings, EventSettings};
pub use http::HttpSettings;
pub use log::{LogFormat, LogSettings, ShutdownSettings};
pub use redis::RedisSettings;
pub use scoring::{ClockMode, ClockSettings, ModelSettings, ScoringSettings};
use secret::REDACTED;
pub use secret::{redact_url, Secret};
pub use segments::{SegmentMode, SegmentSettings};
pub use source::{SourceSettings, StartFrom};
pub use state::StateSettings;

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
        p.extend(self.redis.problems(!any_empty("redis.")));
        p.extend(self.source.problems());
        p.extend(self.events.problems());
        p.extend(self.dead_letter.problems());
        p.extend(self.clock.problems());
        p.extend(self.model.problems());
        p.extend(self.scoring.problems());
        p.extend(self.segments.problems());
        p.extend(self.stages.problems("stages"));
        p.extend(self.risk.problems("risk"));
        p.extend(self.winback.problems("winback"));
        p.extend(self.tasks.problems("tasks"));
        p.extend(self.profiles.problems("profiles"));
        p.extend(decide::tag_problems(&self.tags.0));
        p.extend(self.http.problems(!any_empty("http.")));
        p.extend(self.log.problems(!empty.contains(&"log.level")));
        p.extend(self.state.problems());
        p.extend(streams::problems(self));
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

    /// A Redis client for the configured server: see [`RedisSettings::client`].
    pub fn redis_client(&self) -> Result<::redis::Client, SettingError> {
        self.redis.client()
    }
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
    fn urls_are_redacted_in_the_effective_settings() {
        let mut s = Settings::default();
        s.redis.url = "redis://:sesame2@h:1".into();
        s.redis.password = Some("sesame3".into());
        let shown = s.to_redacted_toml();
        assert!(!shown.contains("sesame"), "{shown}");
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
