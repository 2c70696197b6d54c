//! Settings: layered, read key by key, checked section by section.
//!
//! Layers, later ones win: built-in defaults, `config/default.toml` (if present in the
//! working directory), the file given with `--config`, then `CHURND__SECTION__KEY`
//! environment variables. The config crate merges them ([`load`](Settings::load)); then each
//! section reads its own keys ([`read`]) and checks its values together ([`Section`]), and
//! [`streams`] checks what spans sections. Every problem is reported at once, with its key,
//! where the value came from and what was expected ([`Problem`]).
//!
//! One file per section, or a few small ones together; sections whose types live with the
//! code that uses them (`[winback]`, `[tasks]`, `[profiles]`, `[[tags]]`, `[stages]`,
//! `[risk]`) are read and checked here all the same.

mod classify;
mod events;
mod http;
mod log;
mod problem;
mod profiles;
mod read;
mod redis;
mod resolve;
mod scoring;
mod secret;
mod segments;
mod source;
mod state;
mod streams;
mod tags;
mod tasks;
mod units;
mod winback;

use std::path::{Path, PathBuf};

use config::{Config, Environment, File, Source, Value, ValueKind};
use serde::Serialize;

use crate::classify::{RiskBands, StageBounds};
use crate::decide::{TasksSettings, WinbackSettings};
use crate::profiles::ProfileSettings;
use read::{section, Fields, Read, Reader};

pub use events::{DeadLetterSettings, EventSettings};
pub use http::HttpSettings;
pub use log::{LogFormat, LogSettings, ShutdownSettings};
pub use problem::{ConfigError, Origin, Problem, Problems};
pub use read::env_var;
pub use redis::RedisSettings;
pub use resolve::Resolved;
pub use scoring::{ClockMode, ClockSettings, ModelSettings, ScoringSettings};
use secret::REDACTED;
pub use secret::{redact_url, Secret};
pub use segments::{SegmentMode, SegmentSettings};
pub use source::{BatchSize, SourceSettings, StartFrom};
pub use state::StateSettings;
pub use tags::TagSettings;
pub use units::Interval;

/// The shipped, documented defaults file, read from the working directory when present.
pub const DEFAULT_FILE: &str = "config/default.toml";
pub const ENV_PREFIX: &str = "CHURND";

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
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

/// Where the settings came from, for `check-config`: the files read and the variables
/// applied, by name only (their values may be secrets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layers {
    /// The files read, later ones over earlier ones, as given (relative ones to the working
    /// directory).
    pub files: Vec<PathBuf>,
    /// The defaults file when it is not there (outside the repository or the image): the
    /// built-in defaults, the same values, stand in.
    pub defaults_not_found: Option<PathBuf>,
    /// The `CHURND__…` environment variables applied, sorted.
    pub variables: Vec<String>,
}

impl Layers {
    fn of(
        defaults_file: &Path,
        config_file: Option<&Path>,
        env: Option<&config::Map<String, String>>,
    ) -> Self {
        let mut layers = Self::default();
        if defaults_file.is_file() {
            layers.files.push(defaults_file.to_path_buf());
        } else {
            layers.defaults_not_found = Some(defaults_file.to_path_buf());
        }
        layers.files.extend(config_file.map(Path::to_path_buf));
        // As config matches them: the prefix and separator in any case.
        let prefix = format!("{ENV_PREFIX}__").to_lowercase();
        let names: Vec<String> = match env {
            Some(env) => env.keys().cloned().collect(),
            None => std::env::vars_os()
                .filter_map(|(name, _)| name.into_string().ok())
                .collect(),
        };
        layers.variables = names
            .into_iter()
            .filter(|name| name.to_lowercase().starts_with(&prefix))
            .collect();
        layers.variables.sort_unstable();
        layers
    }
}

/// A table of settings (`[redis]`, `[tasks.welcome]`, one `[[tags]]` rule): how it is read
/// key by key, and what is wrong with its values together that their types cannot express.
pub(crate) trait Section: Default {
    /// The section from its keys; a key no layer gives, or one whose value does not fit
    /// (which is reported), keeps its default.
    fn from_fields(f: &mut Fields<'_>) -> Self;

    /// Problems with the values, by key. Pure: no files read, nothing connected.
    fn problems(&self) -> Vec<Problem> {
        Vec::new()
    }
}

impl<T: Section> Read for T {
    fn read(value: Value, key: &str, r: &mut Reader) -> Option<Self> {
        section(value, key, r, T::from_fields)
    }
}

/// A setting whose empty value would quietly mean "off" or "open" (no password, the built-in
/// CA roots, no API token, errors-only logging): refused wherever the value comes from (a
/// file, or an environment variable such as a Kubernetes Secret with an empty value). Other
/// settings' empty values either have a documented meaning (`state.dir`: snapshots off;
/// `source.consumer`: the host name; a task kind's `stream`: `tasks.stream`) or are invalid
/// values of their own.
pub(crate) fn set_but_empty(key: &str, instead: &str) -> Problem {
    Problem::new(key, format!("is set but empty: {instead}"))
}

impl Settings {
    /// Loads all layers, the process's environment last, and validates the result.
    /// `defaults_file` is normally [`DEFAULT_FILE`]; it is skipped when missing.
    pub fn load(defaults_file: &Path, config_file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_layers(defaults_file, config_file, None).map(|(settings, _)| settings)
    }

    /// [`Self::load`], also telling which files were read and which variables applied.
    pub fn load_with_layers(
        defaults_file: &Path,
        config_file: Option<&Path>,
    ) -> Result<(Self, Layers), ConfigError> {
        Self::load_layers(defaults_file, config_file, None)
    }

    /// [`Self::load_with_layers`] with these environment variables instead of the
    /// process's (tests).
    pub fn load_with_env(
        defaults_file: &Path,
        config_file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Self, Layers), ConfigError> {
        Self::load_layers(defaults_file, config_file, Some(env.into_iter().collect()))
    }

    fn load_layers(
        defaults_file: &Path,
        config_file: Option<&Path>,
        env: Option<config::Map<String, String>>,
    ) -> Result<(Self, Layers), ConfigError> {
        let layers = Layers::of(defaults_file, config_file, env.as_ref());
        let mut builder = Config::builder()
            .add_source(Config::try_from(&Settings::default())?)
            .add_source(File::from(defaults_file).required(false));
        if let Some(path) = config_file {
            builder = builder.add_source(File::from(path).required(true));
        }
        // An empty variable is a value, as an empty string in a file is (config's
        // `ignore_empty` would drop it and leave the file's or default value in force: an
        // empty token turned authentication off, an empty state.dir left snapshots on).
        let merged = builder
            .add_source(
                Environment::with_prefix(ENV_PREFIX)
                    .separator("__")
                    .source(env),
            )
            .build()?
            .collect()?;
        let files: Vec<&Path> = [Some(defaults_file), config_file]
            .into_iter()
            .flatten()
            .collect();
        let mut reader = Reader::new(&files);
        let settings = Self::read_root(Value::new(None, ValueKind::Table(merged)), &mut reader);
        let (mut problems, unread, origins) = reader.finish();
        // Checks of values together run on sections whose every value was read: elsewhere a
        // default stands in for a value that did not fit, and would be judged instead.
        for (name, found) in settings.section_problems() {
            if !unread.contains(name) {
                problems.extend(origins.attach(found));
            }
        }
        if unread.is_empty() {
            problems.extend(origins.attach(streams::problems(&settings)));
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(Problems(problems)));
        }
        Ok((settings, layers))
    }

    /// The settings from the merged tree (`root`), every problem reported to `r`.
    fn read_root(root: Value, r: &mut Reader) -> Self {
        let settings = section(root, "", r, |f| {
            let d = Self::default();
            Self {
                redis: f.get("redis", d.redis),
                source: f.get("source", d.source),
                events: f.get("events", d.events),
                dead_letter: f.get("dead_letter", d.dead_letter),
                clock: f.get("clock", d.clock),
                model: f.get("model", d.model),
                scoring: f.get("scoring", d.scoring),
                stages: f.get("stages", d.stages),
                segments: f.get("segments", d.segments),
                risk: f.get("risk", d.risk),
                winback: f.get("winback", d.winback),
                tasks: f.get("tasks", d.tasks),
                profiles: f.get("profiles", d.profiles),
                tags: f.get("tags", d.tags),
                http: f.get("http", d.http),
                log: f.get("log", d.log),
                shutdown: f.get("shutdown", d.shutdown),
                state: f.get("state", d.state),
            }
        });
        settings.unwrap_or_default()
    }

    /// Checks every key, reporting all problems at once: for settings built in code.
    pub fn validated(self) -> Result<Self, ConfigError> {
        let problems = self.problems();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(Problems(problems)));
        }
        Ok(self)
    }

    /// Every problem with the values, by key: each section's, then those across sections.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems: Vec<Problem> = self
            .section_problems()
            .into_iter()
            .flat_map(|(_, found)| found)
            .collect();
        problems.extend(streams::problems(self));
        problems
    }

    /// Each section's problems, by the section's name.
    fn section_problems(&self) -> [(&'static str, Vec<Problem>); 18] {
        [
            ("redis", self.redis.problems()),
            ("source", self.source.problems()),
            ("events", self.events.problems()),
            ("dead_letter", self.dead_letter.problems()),
            ("clock", self.clock.problems()),
            ("model", self.model.problems()),
            ("scoring", self.scoring.problems()),
            ("stages", self.stages.problems()),
            ("segments", self.segments.problems()),
            ("risk", self.risk.problems()),
            ("winback", self.winback.problems()),
            ("tasks", self.tasks.problems()),
            ("profiles", self.profiles.problems()),
            ("tags", self.tags.problems()),
            ("http", self.http.problems()),
            ("log", self.log.problems()),
            ("shutdown", self.shutdown.problems()),
            ("state", self.state.problems()),
        ]
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[test]
    fn defaults_are_valid() {
        let s = Settings::default().validated().unwrap();
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn the_shipped_defaults_file_equals_the_built_in_defaults_and_gives_every_key() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_FILE);
        let merged = Config::builder()
            .add_source(File::from(file.as_path()))
            .build()
            .unwrap()
            .collect()
            .unwrap();
        let mut reader = Reader::new(&[&file]);
        let from_file =
            Settings::read_root(Value::new(None, ValueKind::Table(merged)), &mut reader);
        // Unset by default, and commented out in the file with an example value.
        let optional = [
            "redis.password",
            "redis.tls_ca_file",
            "redis.tls_cert_file",
            "redis.tls_key_file",
            "http.customer_token",
            "http.customer_token_file",
        ];
        let missing: Vec<&String> = reader
            .missing()
            .iter()
            .filter(|key| !optional.contains(&key.as_str()) && !key.starts_with("tags["))
            .collect();
        assert!(missing.is_empty(), "not in {DEFAULT_FILE}: {missing:?}");
        let (problems, _, _) = reader.finish();
        assert!(problems.is_empty(), "{problems:?}");
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
        s.source.streams = vec!["a".into(), "a".into()];
        s.segments.frequency = -1.0;
        s.risk.high = 2.0;
        s.dead_letter.stream = "churn:events".into();
        s.source.streams.push("churn:events".into());
        let err = s.validated().unwrap_err().to_string();
        for key in [
            "source.streams",
            "segments.frequency",
            "risk.medium",
            "dead_letter.stream",
        ] {
            assert!(err.contains(key), "{key} not named in:\n{err}");
        }
    }

    #[test]
    fn http_limits_are_checked_by_key() {
        let err = load_with(
            Some("[http]\nmax_connections = 0\nheader_timeout_ms = 0\nidle_timeout_ms = 0\n"),
            &[("CHURND__HTTP__REQUEST_TIMEOUT_MS", "0")],
        )
        .unwrap_err();
        for problem in [
            "FILE: http.max_connections must be a whole number from 1 to 4294967295 (got 0)",
            "FILE: http.header_timeout_ms must be a whole number of milliseconds, at least 1 (got 0)",
            "FILE: http.idle_timeout_ms must be a whole number of milliseconds, at least 1 (got 0)",
            "CHURND__HTTP__REQUEST_TIMEOUT_MS (environment): http.request_timeout_ms must be a whole number of milliseconds, at least 1 (got \"0\")",
        ] {
            assert!(err.contains(&format!("  - {problem}\n")) || err.ends_with(&format!("  - {problem}")), "{problem} not in:\n{err}");
        }
        // Beyond any open-file limit but "unlimited" (Linux allows about a million at most).
        if crate::http::serve::open_file_limit().is_some() {
            let err = problems_with(|s| s.http.max_connections = NonZeroU32::MAX);
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
        let err = problems_with(|s| {
            s.http.customer_token = Some("direct".into());
            s.http.customer_token_file = Some("token".into());
        });
        assert!(
            err.contains(
                "  - http.customer_token and http.customer_token_file are both set: set one"
            ),
            "{err}"
        );
        let err = problems_with(|s| s.http.customer_token = Some("".into()));
        assert!(
            err.contains("  - http.customer_token is set but empty"),
            "{err}"
        );
        let err = problems_with(|s| s.http.customer_token = Some("sp ace-secret".into()));
        assert!(
            err.contains("  - http.customer_token must be visible ASCII"),
            "{err}"
        );
        assert!(!err.contains("ace-secret"), "{err}");
        // The file is read when the settings are resolved (config::resolve), not here.
        assert_eq!(
            problems_with(|s| s.http.customer_token_file = Some("/nonexistent/token".into())),
            ""
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
            .map(|(settings, _)| settings)
            .map_err(|e| e.to_string().replace(&path.display().to_string(), "FILE"))
    }

    #[test]
    fn an_empty_value_means_the_same_from_the_environment_as_from_a_file() {
        // Refused, naming the key and where the value came from.
        for key in [
            "redis.password",
            "redis.tls_ca_file",
            "redis.tls_cert_file",
            "redis.tls_key_file",
            "http.customer_token",
            "http.customer_token_file",
            "log.level",
        ] {
            let var = env_var(key);
            let err = load_with(None, &[(&var, ""), ("UNRELATED", "")]).unwrap_err();
            assert!(
                err.contains(&format!(
                    "  - {var} (environment): {key} is set but empty: "
                )),
                "{err}"
            );
            assert_eq!(err.matches(key).count(), 1, "{key} reported once: {err}");
            let (section, name) = key.split_once('.').unwrap();
            let err = load_with(Some(&format!("[{section}]\n{name} = \"\"\n")), &[]).unwrap_err();
            assert!(
                err.contains(&format!("  - FILE: {key} is set but empty: ")),
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
        assert!(!s.resolve().unwrap().settings.source.consumer.is_empty());

        // Empty numbers, switches and lists are invalid values, named by key.
        for (var, named) in [
            (
                "CHURND__STATE__KEEP",
                "CHURND__STATE__KEEP (environment): state.keep must be a whole number, at least 1 (got \"\")",
            ),
            (
                "CHURND__WINBACK__ENABLED",
                "CHURND__WINBACK__ENABLED (environment): winback.enabled must be true or false (got \"\")",
            ),
        ] {
            let err = load_with(None, &[(var, "")]).unwrap_err();
            assert!(err.contains(named), "{named}: {err}");
        }
        let err = load_with(None, &[("CHURND__SOURCE__STREAMS", "")]).unwrap_err();
        assert!(
            err.contains("source.streams must name at least one stream"),
            "{err}"
        );
        assert!(load_with(None, &[("CHURND__HTTP__CUSTOMER_TOKEN", "t0k")]).is_ok());
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_origin_and_the_valid_values() {
        let file = "\
[clock]
mode = \"walll\"
tick_ms = \"soon\"

[redis]
urll = \"redis://elsewhere\"
url = \"http://cache.internal:6379\"

[winback.segment_thresholds]
important_valu = 0.5

[tasks.revisit]
segments = [\"important_value\", \"vip\"]

[colour]
red = 1
";
        let err = load_with(
            Some(file),
            &[
                ("CHURND__SEGMENTS__MODE", "median"),
                ("CHURND__SOURCE__BATCH_SIZE", "ten"),
                ("CHURND__HTTP__ADR", "127.0.0.1:9898"),
                ("CHURND__LOG__FORMAT", "yaml"),
            ],
        )
        .unwrap_err();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines[0], "configuration is invalid (11 problems):", "{err}");
        for expected in [
            "FILE: redis.urll is not a setting (did you mean redis.url?)",
            "CHURND__SOURCE__BATCH_SIZE (environment): source.batch_size must be a whole number from 1 to 100000 (got \"ten\")",
            "FILE: clock.mode must be one of: wall, event (got \"walll\")",
            "FILE: clock.tick_ms must be a whole number of milliseconds, at least 1 (got \"soon\")",
            "CHURND__SEGMENTS__MODE (environment): segments.mode must be one of: population, fixed (got \"median\")",
            "FILE: winback.segment_thresholds.important_valu is not a setting: the keys of [winback.segment_thresholds] are important_value, important_development, important_retention, important_winback, general_value, general_development, general_retention, general_winback",
            "FILE: tasks.revisit.segments[1] must be one of: important_value, important_development, important_retention, important_winback, general_value, general_development, general_retention, general_winback (got \"vip\")",
            "CHURND__HTTP__ADR (environment): http.adr is not a setting (did you mean http.addr?)",
            "CHURND__LOG__FORMAT (environment): log.format must be one of: text, json (got \"yaml\")",
            "FILE: colour is not a section: the sections are redis, source, events, dead_letter, clock, model, scoring, stages, segments, risk, winback, tasks, profiles, tags, http, log, shutdown, state",
            // Checked although other sections have problems: its own keys were all read.
            "FILE: redis.url must be a Redis URL: redis://[user:password@]host[:port][/db], rediss://… for TLS, or redis+unix:///path/to/socket (got \"http://cache.internal:6379\")",
        ] {
            assert!(
                lines.iter().any(|line| *line == format!("  - {expected}")),
                "missing {expected:?} in:\n{err}"
            );
        }
        // No Rust type names.
        for rust in [
            "ClockMode",
            "enum",
            "variant",
            "Segment",
            "InvalidClientConfig",
        ] {
            assert!(!err.contains(rust), "{rust} in:\n{err}");
        }
    }

    #[test]
    fn a_redis_url_that_does_not_parse_says_why_without_its_password() {
        for (url, reason) in [
            ("redis://:hunter2@", "is not a valid redis:// URL"),
            ("redis://:hunter2@h:6379/x", "invalid database number"),
            ("redis://:hunter2@h:port", "is not a valid redis:// URL"),
            ("rediss://:hunter2@h#verify", "only #insecure is supported"),
            ("hunter2", "got \"hunter2\")"),
        ] {
            let problem = problems_with(|s| s.redis.url = url.into());
            assert!(
                problem.contains("redis.url must be a Redis URL") && problem.contains(reason),
                "{url}: {problem}"
            );
            assert_eq!(problem.lines().count(), 2, "{problem}");
            if url != "hunter2" {
                assert!(!problem.contains("hunter2"), "{problem}");
            }
        }
        assert_eq!(
            problems_with(|s| s.redis.url = "unix:///run/redis.sock".into()),
            ""
        );
    }

    #[test]
    fn checks_of_values_together_wait_for_the_values_to_be_read() {
        // backoff_max_ms < the default backoff_initial_ms would be reported, but the initial
        // value given does not fit: only that is reported.
        let err = load_with(
            Some("[redis]\nbackoff_initial_ms = -5\nbackoff_max_ms = 50\n"),
            &[],
        )
        .unwrap_err();
        assert!(
            err.starts_with("configuration is invalid (1 problem):"),
            "{err}"
        );
        assert!(
            err.contains(
                "FILE: redis.backoff_initial_ms must be a whole number of milliseconds, at least 1 (got -5)"
            ),
            "{err}"
        );
        // Read in full, the same check runs and names its origin.
        let err = load_with(Some("[redis]\nbackoff_max_ms = 50\n"), &[]).unwrap_err();
        assert!(
            err.contains("FILE: redis.backoff_max_ms must be at least redis.backoff_initial_ms"),
            "{err}"
        );
    }

    /// The keys of every list among the settings (but the `[[tags]]` rules, which no
    /// variable can name).
    fn list_keys(table: config::Map<String, Value>, prefix: &str, found: &mut Vec<String>) {
        for (name, value) in table {
            let key = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}.{name}")
            };
            match value.kind {
                ValueKind::Array(_) if key != "tags" => found.push(key),
                ValueKind::Table(table) => list_keys(table, &key, found),
                _ => {}
            }
        }
    }

    #[test]
    fn every_list_setting_takes_comma_separated_text_from_the_environment() {
        let samples: [(&str, &[&str]); 5] = [
            ("source.streams", &["events:eu", "events:us"]),
            ("profiles.keys", &["region", "tier"]),
            ("profiles.regions", &["eu", "us"]),
            (
                "tasks.revisit.segments",
                &["general_value", "important_value"],
            ),
            (
                "tasks.service_recovery.segments",
                &["important_winback", "general_retention"],
            ),
        ];
        // The documented defaults: the built-in ones leave empty lists out.
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_FILE);
        let defaults = Config::builder()
            .add_source(File::from(file))
            .build()
            .unwrap()
            .collect()
            .unwrap();
        let mut found = Vec::new();
        list_keys(defaults, "", &mut found);
        found.sort_unstable();
        let mut sampled: Vec<&str> = samples.iter().map(|(key, _)| *key).collect();
        sampled.sort_unstable();
        assert_eq!(found, sampled, "a new list setting needs a sample here");

        let vars: Vec<(String, String)> = samples
            .iter()
            .map(|(key, values)| (env_var(key), values.join(" , ")))
            .collect();
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let settings = load_with(None, &vars).unwrap();
        let shown: toml::Value = toml::from_str(&settings.to_redacted_toml()).unwrap();
        for (key, values) in samples {
            let value = key.split('.').fold(&shown, |v, name| &v[name]);
            let expected: Vec<toml::Value> = values.iter().map(|v| (*v).into()).collect();
            assert_eq!(value.as_array(), Some(&expected), "{key}");
        }

        // An empty variable is an empty list; an element that does not fit is named with
        // the variable it came from.
        let settings = load_with(None, &[("CHURND__PROFILES__REGIONS", "")]).unwrap();
        assert!(settings.profiles.regions.is_empty());
        let err = load_with(
            None,
            &[(
                "CHURND__TASKS__REVISIT__SEGMENTS",
                "important_value,at_risk",
            )],
        )
        .unwrap_err();
        assert!(
            err.contains("  - CHURND__TASKS__REVISIT__SEGMENTS (environment): tasks.revisit.segments[1] must be one of: important_value, "),
            "{err}"
        );
        assert!(err.contains("(got \"at_risk\")"), "{err}");
    }

    #[test]
    fn the_layers_name_the_files_read_and_the_variables_applied() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("churnd.toml");
        std::fs::write(&file, "[log]\nformat = \"json\"\n").unwrap();
        let missing = dir.path().join("default.toml");
        let env = [
            ("CHURND__REDIS__PASSWORD", "sesame"),
            ("churnd__log__level", "debug"),
            ("CHURND_SERVICE_HOST", "10.0.0.1"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let (settings, layers) = Settings::load_with_env(&missing, Some(&file), env).unwrap();
        assert_eq!(settings.log.format, LogFormat::Json);
        assert_eq!(settings.log.level, "debug");
        assert_eq!(
            layers,
            Layers {
                files: vec![file.clone()],
                defaults_not_found: Some(missing),
                variables: vec![
                    "CHURND__REDIS__PASSWORD".to_string(),
                    "churnd__log__level".to_string()
                ],
            }
        );
    }

    #[test]
    fn tls_settings_are_checked_by_key() {
        for (change, named) in [
            (
                Box::new(|s: &mut Settings| s.redis.tls_ca_file = Some("ca.pem".into()))
                    as Box<dyn FnOnce(&mut Settings)>,
                "  - redis.tls_ca_file is set but redis.url is not a rediss:// (TLS) URL",
            ),
            (
                Box::new(|s: &mut Settings| s.redis.url = "rediss://:pw@h:6380/#insecure".into()),
                "  - redis.url must not ask for #insecure",
            ),
            (
                Box::new(|s: &mut Settings| {
                    s.redis.url = "rediss://h:6380".into();
                    s.redis.tls_cert_file = Some("client.pem".into());
                }),
                "  - redis.tls_cert_file and redis.tls_key_file go together",
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
        // The files are read once, when the settings are resolved.
        let mut s = Settings::default();
        s.redis.url = "rediss://:pw@h:6380/0".into();
        s.redis.tls_ca_file = Some("/nonexistent/ca.pem".into());
        assert!(s.problems().is_empty());
        let err = s.resolve().unwrap_err().to_string();
        assert!(
            err.contains("  - redis.tls_ca_file /nonexistent/ca.pem cannot be read: "),
            "{err}"
        );
    }
}
