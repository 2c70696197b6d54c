//! The configuration as platform teams meet it, through the built binary: every problem at
//! once with where its value came from.

use std::process::Output;

use crate::helpers::*;

fn stderr(out: &Output) -> String {
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
    let stderr = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing checked is printed");
    let file = file.display();
    let segments = "important_value, important_development, important_retention, \
        important_winback, general_value, general_development, general_retention, general_winback";
    let expected = [
        format!("{file}: redis.urll is not a setting (did you mean redis.url?)"),
        format!("{file}: source.batch_size must be a whole number, 0 or more (got \"many\")"),
        format!("{file}: clock.mode must be one of: wall, event (got \"walll\")"),
        "CHURND__SEGMENTS__MODE (environment): segments.mode must be one of: population, fixed (got \"median\")".to_string(),
        "CHURND__WINBACK__ENABLED (environment): winback.enabled must be true or false (got \"maybe\")".to_string(),
        format!("{file}: tasks.revisit.segments[1] must be one of: {segments} (got \"at_risk\")"),
        "CHURND__HTTP__ADR (environment): http.adr is not a setting (did you mean http.addr?)".to_string(),
        "CHURND__STATE__KEEP (environment): state.keep must be a whole number, 0 or more (got \"none\")".to_string(),
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
