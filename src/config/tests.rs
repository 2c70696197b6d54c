//! The settings as a whole: layering, reading, checking and resolving, through files and
//! variables as users give them.

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
    let from_file = Settings::read_root(Value::new(None, ValueKind::Table(merged)), &mut reader);
    // Unset by default, and commented out in the file with an example value.
    let optional = [
        "redis.password",
        "redis.tls_ca_file",
        "redis.tls_cert_file",
        "redis.tls_key_file",
        "http.customer_token",
        "http.customer_token_file",
        "partitions.advertise_url",
        "tasks.convert.control_share",
        "tasks.welcome.control_share",
        "tasks.birthday.control_share",
        "tasks.anniversary.control_share",
        "tasks.revisit.control_share",
        "tasks.service_recovery.control_share",
        "winback.budget",
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
            err.contains("http.max_connections (4294967295)") && err.contains("open-file limit"),
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
        "FILE: colour is not a section: the sections are redis, source, partitions, events, dead_letter, clock, model, scoring, stages, segments, risk, winback, tasks, outcomes, profiles, tags, http, lift, log, shutdown, state",
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
fn a_removed_key_is_named_with_what_replaces_it() {
    let err = load_with(Some("[lift]\nstream = \"shop:outcomes\"\n"), &[]).unwrap_err();
    assert!(
        err.contains("FILE: lift.stream was removed: the lift report reads outcomes.stream, the stream the outcome records are written to: set that instead"),
        "{err}"
    );
    let err = load_with(None, &[("CHURND__LIFT__STREAM", "shop:outcomes")]).unwrap_err();
    assert!(
        err.contains("CHURND__LIFT__STREAM (environment): lift.stream was removed"),
        "{err}"
    );
    let s = load_with(Some("[outcomes]\nstream = \"shop:outcomes\"\n"), &[]).unwrap();
    assert_eq!(s.outcomes.stream, "shop:outcomes");
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
    let samples: [(&str, &[&str]); 13] = [
        ("source.streams", &["events:eu", "events:us"]),
        ("winback.candidates.important_value", &["personal_call"]),
        (
            "winback.candidates.important_development",
            &["email_reminder", "personal_call"],
        ),
        ("winback.candidates.important_retention", &["loyalty_offer"]),
        ("winback.candidates.important_winback", &["personal_call"]),
        (
            "winback.candidates.general_value",
            &["coupon", "email_reminder"],
        ),
        ("winback.candidates.general_development", &["coupon"]),
        (
            "winback.candidates.general_retention",
            &["loyalty_offer", "coupon"],
        ),
        ("winback.candidates.general_winback", &["email_reminder"]),
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
fn the_win_back_policy_and_learning_are_read_and_checked_by_key() {
    let err = load_with(Some("[winback]\npolicy = \"learnt\"\n"), &[]).unwrap_err();
    assert!(
        err.contains(
            "FILE: winback.policy must be one of: learned, playbook, random (got \"learnt\")"
        ),
        "{err}"
    );
    let file = "\
[winback.learn]
min_outcomes = 0
exploration = 1.5
";
    let err = load_with(Some(file), &[]).unwrap_err();
    for expected in [
        "FILE: winback.learn.exploration (1.5) must be between 0 and 1",
        "FILE: winback.learn.min_outcomes (0) must be 1 or more: outcomes win-back needs in each group, all actions × segments together, before measured lift steers tasks",
    ] {
        assert!(
            err.lines().any(|line| line == format!("  - {expected}")),
            "missing {expected:?} in:\n{err}"
        );
    }
    let s = load_with(
        None,
        &[
            ("CHURND__WINBACK__POLICY", "random"),
            ("CHURND__WINBACK__LEARN__MIN_OUTCOMES", "500"),
        ],
    )
    .unwrap();
    assert_eq!(s.winback.policy, crate::decide::WinbackPolicy::Random);
    assert_eq!(s.winback.learn.min_outcomes, 500);
    assert_eq!(
        load_with(None, &[]).unwrap().winback.policy,
        crate::decide::WinbackPolicy::Learned
    );
}

#[test]
fn snapshots_in_redis_need_no_state_dir_even_under_leases() {
    let s = load_with(
        None,
        &[
            ("CHURND__STATE__STORE", "redis"),
            ("CHURND__STATE__DIR", ""),
            ("CHURND__PARTITIONS__OWNERSHIP", "leases"),
            ("CHURND__SOURCE__CONSUMER", "replica-a"),
        ],
    )
    .unwrap();
    assert_eq!(s.state.store, StateStore::Redis);
    assert!(s.state.keeps_state());
    assert_eq!(s.state.snapshot_dir(), None, "state.dir is not used");
    assert_eq!(load_with(None, &[]).unwrap().state.store, StateStore::Dir);

    let err = load_with(None, &[("CHURND__STATE__STORE", "s3")]).unwrap_err();
    assert!(
        err.contains("CHURND__STATE__STORE") && err.contains("one of: dir, redis"),
        "{err}"
    );
    // Without either, leases are refused naming both options.
    let err = problems_with(|s| {
        s.state.dir = Default::default();
        s.partitions.ownership = Ownership::Leases;
        s.source.consumer = "replica-a".into();
    });
    assert!(
        err.contains("state.dir is empty") && err.contains("state.store = redis"),
        "{err}"
    );
}

#[test]
fn the_pooled_win_back_budget_is_read_from_file_and_environment() {
    assert_eq!(
        load_with(None, &[]).unwrap().winback.budget.spend_per_day,
        None
    );
    let s = load_with(None, &[("CHURND__WINBACK__BUDGET__SPEND_PER_DAY", "202.5")]).unwrap();
    assert_eq!(s.winback.budget.spend_per_day, Some(202.5));
    let err = load_with(Some("[winback.budget]\nspend_per_day = -3.0\n"), &[]).unwrap_err();
    assert!(
        err.lines()
            .any(|l| l == "  - FILE: winback.budget.spend_per_day (-3) must be 0 or more"),
        "{err}"
    );
}
