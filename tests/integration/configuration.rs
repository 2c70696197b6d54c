//! The configuration as platform teams meet it, through the built binary: every problem at
//! once with where its value came from.

use std::process::Output;

use crate::helpers::*;

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn every_configuration_problem_is_listed_with_its_origin_and_the_valid_values() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("churnd.toml");
    std::fs::write(
        &file,
        "\
[clock]
mode = \"walll\"

[redis]
urll = \"redis://elsewhere:6379\"
url = \"http://cache.internal:6379\"

[source]
batch_size = \"many\"

[tasks.revisit]
segments = [\"important_value\", \"at_risk\"]

[colour]
red = 1
",
    )
    .unwrap();
    let out = churnd()
        .arg("--config")
        .arg(&file)
        .arg("check-config")
        .env("CHURND__SEGMENTS__MODE", "median")
        .env("CHURND__HTTP__ADR", "127.0.0.1:9898")
        .env("CHURND__STATE__KEEP", "none")
        .env("CHURND__WINBACK__ENABLED", "maybe")
        .output()
        .unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing checked is printed");
    let file = file.display();
    let segments = "important_value, important_development, important_retention, \
        important_winback, general_value, general_development, general_retention, general_winback";
    let expected = [
        format!("{file}: redis.urll is not a setting (did you mean redis.url?)"),
        format!("{file}: source.batch_size must be a whole number from 1 to 100000 (got \"many\")"),
        format!("{file}: clock.mode must be one of: wall, event (got \"walll\")"),
        "CHURND__SEGMENTS__MODE (environment): segments.mode must be one of: population, fixed (got \"median\")".to_string(),
        "CHURND__WINBACK__ENABLED (environment): winback.enabled must be true or false (got \"maybe\")".to_string(),
        format!("{file}: tasks.revisit.segments[1] must be one of: {segments} (got \"at_risk\")"),
        "CHURND__HTTP__ADR (environment): http.adr is not a setting (did you mean http.addr?)".to_string(),
        "CHURND__STATE__KEEP (environment): state.keep must be a whole number, at least 1 (got \"none\")".to_string(),
        format!("{file}: colour is not a section: the sections are redis, source, events, dead_letter, clock, model, scoring, stages, segments, risk, winback, tasks, profiles, tags, http, log, shutdown, state"),
        // The redis section's values were all read (an unknown key takes nothing away), so
        // its URL is checked in the same run.
        format!("{file}: redis.url must be a Redis URL: redis://[user:password@]host[:port][/db], rediss://… for TLS, or redis+unix:///path/to/socket (got \"http://cache.internal:6379\")"),
    ];
    let mut want = vec![format!(
        "churnd: configuration is invalid ({} problems):",
        expected.len()
    )];
    want.extend(expected.iter().map(|line| format!("  - {line}")));
    let mut got: Vec<&str> = stderr.lines().collect();
    // The order is the reading order, then the checks; compare as sets after the header.
    got[1..].sort_unstable();
    want[1..].sort_unstable();
    assert_eq!(got, want, "{stderr}");
}

/// Every list setting takes the form `source.streams` always took from the environment.
#[test]
fn list_settings_come_from_the_environment_comma_separated() {
    let out = churnd()
        .arg("check-config")
        .env("CHURND__SOURCE__STREAMS", "events:eu,events:us")
        .env("CHURND__PROFILES__REGIONS", "eu, us")
        .env("CHURND__PROFILES__KEYS", "region,tier")
        .env(
            "CHURND__TASKS__REVISIT__SEGMENTS",
            "important_value,general_value",
        )
        .env(
            "CHURND__TASKS__SERVICE_RECOVERY__SEGMENTS",
            "important_winback",
        )
        .output()
        .unwrap();
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    let shown: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let list = |section: &str, key: &str| -> Vec<String> {
        let mut value = &shown[section];
        for name in key.split('.') {
            value = &value[name];
        }
        value
            .as_array()
            .unwrap_or_else(|| panic!("{section}.{key} is a list"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(list("source", "streams"), ["events:eu", "events:us"]);
    assert_eq!(list("profiles", "regions"), ["eu", "us"]);
    assert_eq!(list("profiles", "keys"), ["region", "tier"]);
    assert_eq!(
        list("tasks", "revisit.segments"),
        ["important_value", "general_value"]
    );
    assert_eq!(
        list("tasks", "service_recovery.segments"),
        ["important_winback"]
    );

    // An element that is not valid is named with the variable it came from.
    let out = churnd()
        .arg("check-config")
        .env("CHURND__TASKS__REVISIT__SEGMENTS", "at_risk,lapsing")
        .output()
        .unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for i in 0..2 {
        assert!(
            stderr.contains(&format!(
                "  - CHURND__TASKS__REVISIT__SEGMENTS (environment): tasks.revisit.segments[{i}] must be one of: important_value, important_development"
            )),
            "{stderr}"
        );
    }
}
