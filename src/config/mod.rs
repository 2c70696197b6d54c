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
mod lift;
mod log;
mod outcomes;
mod partitions;
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
use crate::outcomes::OutcomeSettings;
use crate::profiles::ProfileSettings;
use read::{section, Fields, Read, Reader};

pub use events::{DeadLetterSettings, EventSettings};
pub use http::HttpSettings;
pub use lift::LiftSettings;
pub use log::{LogFormat, LogSettings, ShutdownSettings};
pub use partitions::{Ownership, PartitionSettings};
pub use problem::{ConfigError, Origin, Problem, Problems};
pub use read::env_var;
pub use redis::{RedisMode, RedisSettings};
pub(crate) use resolve::host_name;
pub use resolve::Resolved;
pub use scoring::{ClockMode, ClockSettings, ModelSettings, ScoringSettings};
use secret::REDACTED;
pub use secret::{redact_url, Secret};
pub use segments::{SegmentMode, SegmentSettings};
pub use source::{Acknowledge, BatchSize, SourceSettings, StartFrom};
pub use state::{StateSettings, StateStore};
pub use tags::TagSettings;
pub use units::Interval;

/// The shipped, documented defaults file, read from the working directory when present.
pub const DEFAULT_FILE: &str = "config/default.toml";
pub(crate) const ENV_PREFIX: &str = "CHURND";

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Settings {
    pub redis: RedisSettings,
    pub source: SourceSettings,
    pub partitions: PartitionSettings,
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
    pub outcomes: OutcomeSettings,
    pub profiles: ProfileSettings,
    pub tags: TagSettings,
    pub http: HttpSettings,
    pub lift: LiftSettings,
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
                partitions: f.get("partitions", d.partitions),
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
                outcomes: f.get("outcomes", d.outcomes),
                profiles: f.get("profiles", d.profiles),
                tags: f.get("tags", d.tags),
                http: f.get("http", d.http),
                lift: f.get("lift", d.lift),
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
    fn section_problems(&self) -> [(&'static str, Vec<Problem>); 21] {
        [
            ("redis", self.redis.problems()),
            ("source", self.source.problems()),
            ("partitions", self.partitions.problems()),
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
            ("outcomes", self.outcomes.problems()),
            ("profiles", self.profiles.problems()),
            ("tags", self.tags.problems()),
            ("http", self.http.problems()),
            ("lift", self.lift.problems()),
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
mod tests;
