//! Reading settings key by key from the merged layers.
//!
//! The config crate merges the layers (built-in defaults, files, environment) into one tree
//! of values, each remembering where it came from. Deserialising the tree in one go stops
//! at the first value that does not fit and names Rust types (`enum ClockMode does not
//! have variant constructor walll`). Here every section reads its own keys one by one
//! ([`Fields::get`]): a value that does not fit is reported with its key, its origin and
//! what was expected, the default stands in, and reading goes on, so one run reports every
//! problem, unknown keys included.
//!
//! Scalars convert as config always did (text from the environment becomes a number or a
//! switch: `"true"`, `"yes"`, `"1"`); every list also takes comma-separated text, the form
//! an environment variable can hold; closed sets of names list their valid values.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::path::{Path, PathBuf};

use config::{Map, Value, ValueKind};
use serde::de::DeserializeOwned;

use super::problem::{Origin, Problem};
use super::secret::Secret;
use super::ENV_PREFIX;

/// The environment variable that sets `key`: `http.customer_token` → `CHURND__HTTP__CUSTOMER_TOKEN`.
pub fn env_var(key: &str) -> String {
    format!("{ENV_PREFIX}__{}", key.replace('.', "__").to_uppercase())
}

/// What config 0.15 names the origin of every environment variable's value.
const ENVIRONMENT: &str = "the environment";

/// Reads values, collecting the problems and where each value came from.
pub(crate) struct Reader {
    /// The files read, as given, with their canonical paths: config names a file by its
    /// path relative to the working directory, messages name it as the user did.
    files: Vec<(PathBuf, Option<PathBuf>)>,
    problems: Vec<Problem>,
    /// The sections with a value that did not fit (a default stands in for it).
    unfit: BTreeSet<String>,
    origins: Origins,
    /// Keys no layer gave, whose built-in default stands.
    missing: Vec<String>,
}

impl Reader {
    pub fn new(files: &[&Path]) -> Self {
        Self {
            files: files
                .iter()
                .map(|f| (f.to_path_buf(), std::fs::canonicalize(f).ok()))
                .collect(),
            problems: Vec::new(),
            unfit: BTreeSet::new(),
            origins: Origins::default(),
            missing: Vec::new(),
        }
    }

    /// Where `value` (of `key`) came from. Merged tables keep no origin of their own: theirs
    /// is that of their first value.
    fn origin_of(&self, key: &str, value: &Value) -> Option<Origin> {
        let origin = match (value.origin(), &value.kind) {
            (Some(origin), _) => origin,
            (None, ValueKind::Table(table)) => {
                let (name, first) = table.iter().min_by(|a, b| a.0.cmp(b.0))?;
                return self.origin_of(&format!("{key}.{name}"), first);
            }
            (None, ValueKind::Array(elements)) => {
                return self.origin_of(&format!("{key}[0]"), elements.first()?);
            }
            (None, _) => return None,
        };
        match origin {
            // A list's elements come from the list's variable: `CHURND__SOURCE__STREAMS`
            // for `source.streams[1]` (a variable cannot name what is inside a list).
            ENVIRONMENT => Some(Origin::Env(env_var(key.split('[').next().unwrap_or(key)))),
            file => {
                let here = std::fs::canonicalize(file).ok();
                let given = self
                    .files
                    .iter()
                    .find(|(_, canonical)| here.is_some() && *canonical == here)
                    .map_or_else(|| file.to_string(), |(f, _)| f.display().to_string());
                Some(Origin::File(given))
            }
        }
    }

    /// Reports that `value` of `key` does not fit: `message` follows the key. A default
    /// stands in for it.
    pub(crate) fn unfit(&mut self, key: &str, value: &Value, message: impl Into<String>) {
        let end = key.find(['.', '[']).unwrap_or(key.len());
        self.unfit.insert(key[..end].to_string());
        self.report(key, value, message);
    }

    /// Reports a problem with `value` of `key`: `message` follows the key.
    fn report(&mut self, key: &str, value: &Value, message: impl Into<String>) {
        let origin = self.origin_of(key, value);
        self.problems.push(Problem {
            key: key.to_string(),
            origin,
            message: message.into(),
        });
    }

    /// Reads `value` as the setting `key`, remembering where it came from.
    pub fn read<T: Read>(&mut self, value: Value, key: &str) -> Option<T> {
        if let Some(origin) = self.origin_of(key, &value) {
            self.origins.0.insert(key.to_string(), origin);
        }
        T::read(value, key, self)
    }

    /// The problems found, the sections with a value that did not fit, and where every
    /// value read came from.
    pub fn finish(self) -> (Vec<Problem>, BTreeSet<String>, Origins) {
        (self.problems, self.unfit, self.origins)
    }

    /// Keys no layer gave.
    #[cfg(test)]
    pub fn missing(&self) -> &[String] {
        &self.missing
    }
}

/// Where each value read came from, by key.
#[derive(Debug, Default)]
pub(crate) struct Origins(HashMap<String, Origin>);

impl Origins {
    /// `problems` with the origin of each one's key, where it came from a file or the
    /// environment.
    pub(crate) fn attach(&self, problems: Vec<Problem>) -> impl Iterator<Item = Problem> + '_ {
        problems.into_iter().map(|mut p| {
            if p.origin.is_none() {
                p.origin = self.0.get(&p.key).cloned();
            }
            p
        })
    }
}

/// A setting's type: how a value becomes one, reporting what does not fit.
pub(crate) trait Read: Sized {
    /// `value` as this type, or `None` once the reason is reported at `key`.
    fn read(value: Value, key: &str, r: &mut Reader) -> Option<Self>;
}

/// How a value is shown in a message: text quoted, tables and lists not spelt out.
fn shown(value: &Value) -> String {
    match &value.kind {
        ValueKind::Nil => "nothing".into(),
        ValueKind::Boolean(b) => b.to_string(),
        ValueKind::I64(n) => n.to_string(),
        ValueKind::I128(n) => n.to_string(),
        ValueKind::U64(n) => n.to_string(),
        ValueKind::U128(n) => n.to_string(),
        ValueKind::Float(x) => x.to_string(),
        ValueKind::String(s) if s.chars().count() > 80 => {
            let cut: String = s.chars().take(80).collect();
            format!("{cut:?}…")
        }
        ValueKind::String(s) => format!("{s:?}"),
        ValueKind::Table(_) => "a table".into(),
        ValueKind::Array(_) => "a list".into(),
    }
}

/// Reports that `value` is not `expected`.
pub(crate) fn not_a(value: &Value, key: &str, r: &mut Reader, expected: &str) {
    r.unfit(
        key,
        value,
        format!("must be {expected} (got {})", shown(value)),
    );
}

/// A scalar read the way config reads it (text from the environment parsed), with the
/// message naming what was `expected`.
fn scalar<T: DeserializeOwned>(
    value: Value,
    key: &str,
    r: &mut Reader,
    expected: &str,
) -> Option<T> {
    match value.clone().try_deserialize::<T>() {
        Ok(v) => Some(v),
        Err(_) => {
            not_a(&value, key, r, expected);
            None
        }
    }
}

macro_rules! read_scalars {
    ($($t:ty => $expected:expr),* $(,)?) => {
        $(impl Read for $t {
            fn read(value: Value, key: &str, r: &mut Reader) -> Option<Self> {
                scalar(value, key, r, $expected)
            }
        })*
    };
}

read_scalars! {
    bool => "true or false",
    u8 => "a whole number from 0 to 255",
    u32 => "a whole number from 0 to 4294967295",
    u64 => "a whole number, 0 or more",
    usize => "a whole number, 0 or more",
    f64 => "a number",
    String => "text",
    PathBuf => "a path",
    Secret => "text",
}

/// `None` is a key without a value: one the built-in defaults leave unset.
impl<T: Read> Read for Option<T> {
    fn read(value: Value, key: &str, r: &mut Reader) -> Option<Self> {
        match value.kind {
            ValueKind::Nil => Some(None),
            _ => T::read(value, key, r).map(Some),
        }
    }
}

/// A list. In a file an array; from the environment, where a variable holds text, the
/// elements separated by commas: `CHURND__PROFILES__REGIONS=eu,us`. Blanks around elements
/// and empty elements are dropped, so an empty variable is an empty list. Every element is
/// read, and each one that does not fit is reported as `key[i]`.
impl<T: Read> Read for Vec<T> {
    fn read(value: Value, key: &str, r: &mut Reader) -> Option<Self> {
        let origin = value.origin().map(String::from);
        let elements = match value.kind {
            ValueKind::Array(elements) => elements,
            ValueKind::String(text) => text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::new(origin.as_ref(), s))
                .collect(),
            kind => {
                not_a(&Value::new(origin.as_ref(), kind), key, r, "a list");
                return None;
            }
        };
        let mut list = Vec::with_capacity(elements.len());
        let mut fits = true;
        for (i, element) in elements.into_iter().enumerate() {
            match r.read(element, &format!("{key}[{i}]")) {
                Some(v) => list.push(v),
                None => fits = false,
            }
        }
        fits.then_some(list)
    }
}

/// A value of a closed set of names: a mode, a segment, a format.
pub(crate) trait Choice: Copy + 'static {
    const ALL: &'static [Self];
    fn name(self) -> &'static str;

    /// The valid names, for messages: `wall, event`.
    fn names() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|c| c.name()).collect();
        names.join(", ")
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.name() == text)
    }
}

/// Reads a [`Choice`]: one of its names, as text.
pub(crate) fn choice<T: Choice>(value: Value, key: &str, r: &mut Reader) -> Option<T> {
    let found = match &value.kind {
        ValueKind::String(text) => T::parse(text),
        _ => None,
    };
    if found.is_none() {
        not_a(&value, key, r, &format!("one of: {}", T::names()));
    }
    found
}

macro_rules! read_choices {
    ($($t:ty),* $(,)?) => {
        $(impl $crate::config::read::Read for $t {
            fn read(
                value: ::config::Value,
                key: &str,
                r: &mut $crate::config::read::Reader,
            ) -> Option<Self> {
                $crate::config::read::choice(value, key, r)
            }
        })*
    };
}
pub(crate) use read_choices;

/// A table keyed by a [`Choice`] (per-segment settings): every key must be one of its names.
impl<K: Choice + Eq + Hash, V: Read> Read for HashMap<K, V> {
    fn read(value: Value, key: &str, r: &mut Reader) -> Option<Self> {
        let table = table(value, key, r)?;
        let mut map = HashMap::with_capacity(table.len());
        let mut fits = true;
        for (name, v) in sorted(table) {
            let at = format!("{key}.{name}");
            match K::parse(&name) {
                Some(k) => match r.read(v, &at) {
                    Some(v) => {
                        map.insert(k, v);
                    }
                    None => fits = false,
                },
                None => {
                    r.unfit(
                        &at,
                        &v,
                        format!("is not a setting: the keys of [{key}] are {}", K::names()),
                    );
                    fits = false;
                }
            }
        }
        fits.then_some(map)
    }
}

/// A table of free-form keys (profile attributes).
impl<V: Read> Read for BTreeMap<String, V> {
    fn read(value: Value, key: &str, r: &mut Reader) -> Option<Self> {
        let table = table(value, key, r)?;
        let mut map = BTreeMap::new();
        let mut fits = true;
        for (name, v) in sorted(table) {
            match r.read(v, &format!("{key}.{name}")) {
                Some(v) => {
                    map.insert(name, v);
                }
                None => fits = false,
            }
        }
        fits.then_some(map)
    }
}

fn table(value: Value, key: &str, r: &mut Reader) -> Option<Map<String, Value>> {
    match value.kind {
        ValueKind::Table(table) => Some(table),
        _ => {
            let what = if key.is_empty() {
                "a table".to_string()
            } else {
                format!("a table ([{key}] in a file)")
            };
            not_a(&value, key, r, &what);
            None
        }
    }
}

/// The table's entries in the order of their keys: messages come in a stable order.
fn sorted(table: Map<String, Value>) -> Vec<(String, Value)> {
    let mut entries: Vec<_> = table.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

/// A table of settings being read: each key is taken by name, and what is left when the
/// section is done is reported as unknown.
pub(crate) struct Fields<'r> {
    key: String,
    table: Map<String, Value>,
    known: Vec<&'static str>,
    r: &'r mut Reader,
}

impl Fields<'_> {
    /// The key's value, or `default` when no layer gives one or it does not fit (which is
    /// reported).
    pub fn get<T: Read>(&mut self, name: &'static str, default: T) -> T {
        self.known.push(name);
        let key = self.key_of(name);
        match self.table.remove(name) {
            Some(value) => self.r.read(value, &key).unwrap_or(default),
            None => {
                self.r.missing.push(key);
                default
            }
        }
    }

    /// A key churnd no longer reads: if a layer sets it, it is reported with what to use
    /// instead (`instead`), rather than as unknown.
    pub fn removed(&mut self, name: &'static str, instead: &str) {
        if let Some(value) = self.table.remove(name) {
            let key = self.key_of(name);
            self.r
                .report(&key, &value, format!("was removed: {instead}"));
        }
    }

    fn key_of(&self, name: &str) -> String {
        if self.key.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.key)
        }
    }

    /// Reports the keys left: none of the section's.
    fn finish(self) {
        let Self {
            key,
            table,
            known,
            r,
        } = self;
        for (name, value) in sorted(table) {
            let at = if key.is_empty() {
                name.clone()
            } else {
                format!("{key}.{name}")
            };
            let message = match closest(&name, &known) {
                Some(near) if key.is_empty() => {
                    format!("is not a section (did you mean [{near}]?)")
                }
                Some(near) => format!("is not a setting (did you mean {key}.{near}?)"),
                None if key.is_empty() => {
                    format!("is not a section: the sections are {}", known.join(", "))
                }
                None => format!(
                    "is not a setting: the keys of [{key}] are {}",
                    known.join(", ")
                ),
            };
            r.report(&at, &value, message);
        }
    }
}

/// Reads the table `value` at `key` with `build`, which takes each key it knows from the
/// [`Fields`]; keys left over are reported as unknown.
pub(crate) fn section<T>(
    value: Value,
    key: &str,
    r: &mut Reader,
    build: impl FnOnce(&mut Fields<'_>) -> T,
) -> Option<T> {
    let table = table(value, key, r)?;
    let mut fields = Fields {
        key: key.to_string(),
        table,
        known: Vec::new(),
        r,
    };
    let built = build(&mut fields);
    fields.finish();
    Some(built)
}

/// The known name nearest to a misspelt `name`, if one is near enough to be meant.
fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|&(d, k)| d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Mode {
        Wall,
        Event,
    }

    impl Choice for Mode {
        const ALL: &'static [Self] = &[Self::Wall, Self::Event];
        fn name(self) -> &'static str {
            match self {
                Self::Wall => "wall",
                Self::Event => "event",
            }
        }
    }
    read_choices!(Mode);

    fn from_file(kind: impl Into<ValueKind>) -> Value {
        Value::new(Some(&"churnd.toml".to_string()), kind)
    }

    fn from_env(kind: impl Into<ValueKind>) -> Value {
        Value::new(Some(&ENVIRONMENT.to_string()), kind)
    }

    fn table_of(entries: Vec<(&str, Value)>) -> Value {
        let map: Map<String, Value> = entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        from_file(ValueKind::Table(map))
    }

    fn shown(problems: &[Problem]) -> Vec<String> {
        problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn every_value_that_does_not_fit_is_reported_with_its_origin_and_what_was_expected() {
        let mut r = Reader::new(&[]);
        let value = table_of(vec![
            ("mode", from_env("walll")),
            ("tick_ms", from_file("ten")),
            ("enabled", from_env("maybe")),
            (
                "modes",
                from_file(vec![from_file("wall"), from_file("sundial")]),
            ),
            ("modee", from_file("wall")),
            ("colour", from_env("blue")),
        ]);
        let read = section(value, "clock", &mut r, |f| {
            (
                f.get("mode", Mode::Wall),
                f.get("tick_ms", 1_000u64),
                f.get("enabled", true),
                f.get("modes", Vec::<Mode>::new()),
            )
        });
        assert_eq!(read, Some((Mode::Wall, 1_000, true, Vec::new())));
        let (problems, _, _) = r.finish();
        assert_eq!(
            shown(&problems),
            [
                "CHURND__CLOCK__MODE (environment): clock.mode must be one of: wall, event (got \"walll\")",
                "churnd.toml: clock.tick_ms must be a whole number, 0 or more (got \"ten\")",
                "CHURND__CLOCK__ENABLED (environment): clock.enabled must be true or false (got \"maybe\")",
                "churnd.toml: clock.modes[1] must be one of: wall, event (got \"sundial\")",
                "CHURND__CLOCK__COLOUR (environment): clock.colour is not a setting: the keys of [clock] are mode, tick_ms, enabled, modes",
                "churnd.toml: clock.modee is not a setting (did you mean clock.mode?)",
            ]
        );
    }

    #[test]
    fn text_from_the_environment_converts_as_config_converts_it() {
        let mut r = Reader::new(&[]);
        assert_eq!(r.read::<u64>(from_env("42"), "a.b"), Some(42));
        assert_eq!(r.read::<bool>(from_env("yes"), "a.b"), Some(true));
        assert_eq!(r.read::<f64>(from_env("0.25"), "a.b"), Some(0.25));
        assert_eq!(
            r.read::<Option<String>>(from_env(""), "a.b"),
            Some(Some(String::new()))
        );
        assert_eq!(
            r.read::<Option<String>>(Value::new(None, ValueKind::Nil), "a.b"),
            Some(None)
        );
        assert_eq!(r.read::<u8>(from_env("256"), "a.b"), None);
        assert_eq!(r.read::<u64>(from_env("-1"), "a.b"), None);
        let (problems, _, _) = r.finish();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].message.contains("from 0 to 255 (got \"256\")"));
    }

    #[test]
    fn a_list_is_an_array_or_comma_separated_text() {
        let mut r = Reader::new(&[]);
        let array = from_file(vec![from_file("event"), from_file("wall")]);
        assert_eq!(
            r.read::<Vec<Mode>>(array, "a.b"),
            Some(vec![Mode::Event, Mode::Wall])
        );
        let text = from_env(" event, wall ,,");
        assert_eq!(
            r.read::<Vec<Mode>>(text, "a.b"),
            Some(vec![Mode::Event, Mode::Wall])
        );
        assert_eq!(r.read::<Vec<Mode>>(from_env(""), "a.b"), Some(vec![]));
        assert_eq!(r.read::<Vec<Mode>>(from_env("wall,sun"), "a.b"), None);
        assert_eq!(r.read::<Vec<u32>>(from_file(7), "a.b"), None);
        let (problems, _, _) = r.finish();
        assert_eq!(
            shown(&problems),
            [
                "CHURND__A__B (environment): a.b[1] must be one of: wall, event (got \"sun\")",
                "churnd.toml: a.b must be a list (got 7)",
            ]
        );
    }

    #[test]
    fn a_table_keyed_by_names_reports_unknown_names_with_the_valid_ones() {
        let mut r = Reader::new(&[]);
        let value = table_of(vec![("wall", from_file(0.5)), ("sundial", from_file(0.5))]);
        assert_eq!(r.read::<HashMap<Mode, f64>>(value, "x.by_mode"), None);
        let (problems, _, _) = r.finish();
        assert_eq!(
            shown(&problems),
            ["churnd.toml: x.by_mode.sundial is not a setting: the keys of [x.by_mode] are wall, event"]
        );
    }

    #[test]
    fn origins_are_kept_for_the_checks_that_come_later() {
        let mut r = Reader::new(&[]);
        let value = table_of(vec![("a", from_env("1")), ("b", from_file("2"))]);
        section(value, "s", &mut r, |f| {
            f.get("a", 0u64);
            f.get("b", 0u64);
            f.get("c", 0u64);
        });
        assert_eq!(r.missing(), ["s.c"]);
        let (_, _, origins) = r.finish();
        let found: Vec<String> = origins
            .attach(vec![
                Problem::new("s.a", "is bad"),
                Problem::new("s.b", "is bad"),
                Problem::new("s.c", "is bad"),
            ])
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            found,
            [
                "CHURND__S__A (environment): s.a is bad",
                "churnd.toml: s.b is bad",
                "s.c is bad"
            ]
        );
    }

    #[test]
    fn near_misses_are_suggested_and_far_ones_are_not() {
        assert_eq!(closest("urll", &["url", "password"]), Some("url"));
        assert_eq!(closest("pasword", &["url", "password"]), Some("password"));
        assert_eq!(closest("colour", &["url", "password"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
