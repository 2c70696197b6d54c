//! The configuration as platform teams meet it, through the built binary: every problem at
//! once with where its value came from, lists from the environment, and `check-config` as
//! a preflight (the model file; with `--connect`, a real redis-server).

use std::process::Output;
use std::time::{Duration, Instant};

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
        format!("{file}: colour is not a section: the sections are redis, source, partitions, events, dead_letter, clock, model, scoring, stages, segments, risk, winback, tasks, outcomes, profiles, tags, http, lift, log, shutdown, state"),
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

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run where churnd finds neither config/default.toml nor models/: the default model path is
/// relative, and the message says to what.
#[test]
fn check_config_fails_on_a_missing_model_and_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let out = churnd()
        .current_dir(dir.path())
        .arg("check-config")
        .env_remove("CHURND__MODEL__PATH")
        .output()
        .unwrap();
    let (stdout, stderr) = (stdout_of(&out), stderr_of(&out));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let cwd = std::fs::canonicalize(dir.path()).unwrap();
    let expected = format!(
        "churnd: check-config: model.path: cannot read model file models/cdnow.json: No such file or directory (os error 2); models/cdnow.json is relative to the working directory {}: start churnd in the directory that holds it, or set model.path (CHURND__MODEL__PATH) to an absolute path\n",
        cwd.display()
    );
    assert_eq!(stderr, expected);
    // The report says the defaults file was not there either, and is still valid TOML.
    assert!(
        stdout.contains(&format!(
            "# config/default.toml (in the working directory {}) not found: the built-in defaults (the same values) stand in\n",
            cwd.display()
        )),
        "{stdout}"
    );
    assert!(stdout.contains(&format!(
        "# FAILED: {}",
        &expected["churnd: check-config: ".len()..]
    )));
    let shown: toml::Value = toml::from_str(&stdout).unwrap();
    assert_eq!(shown["model"]["path"].as_str(), Some("models/cdnow.json"));

    // The same file, found: the check passes.
    let out = churnd()
        .current_dir(dir.path())
        .arg("check-config")
        .env("CHURND__MODEL__PATH", repo().join("models/cdnow.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).contains("# ok: model ")
            && stdout_of(&out).contains(", churn within 90 days"),
        "{}",
        stdout_of(&out)
    );
}

/// `run` fails on the same missing file with the same words.
#[test]
fn run_outside_the_repository_says_where_it_looked_for_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = churnd()
        .current_dir(dir.path())
        .arg("run")
        .env_remove("CHURND__MODEL__PATH")
        .env("CHURND__HTTP__ADDR", "127.0.0.1:0")
        .env("CHURND__STATE__DIR", "")
        .output()
        .unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let cwd = std::fs::canonicalize(dir.path()).unwrap();
    assert!(
        stderr.ends_with(&format!(
            "churnd: model.path: cannot read model file models/cdnow.json: No such file or directory (os error 2); models/cdnow.json is relative to the working directory {}: start churnd in the directory that holds it, or set model.path (CHURND__MODEL__PATH) to an absolute path\n",
            cwd.display()
        )),
        "{stderr}"
    );
}

#[test]
fn check_config_fails_on_an_invalid_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"format": "churnd-logistic/1", "version": "x"}"#).unwrap();
    let out = churnd()
        .arg("check-config")
        .env("CHURND__MODEL__PATH", &bad)
        .output()
        .unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "churnd: check-config: model.path: model file {} is not valid model JSON",
            bad.display()
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("working directory"),
        "an absolute path: {stderr}"
    );
}

#[test]
fn check_config_names_the_files_and_variables_it_used_but_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("churnd.toml");
    std::fs::write(&file, "[log]\nformat = \"json\"\n").unwrap();
    let out = churnd()
        .arg("--config")
        .arg(&file)
        .arg("check-config")
        .env("CHURND__REDIS__PASSWORD", "hunter2-secret")
        .env("CHURND__STATE__DIR", "")
        .env("CHURND_SERVICE_HOST", "10.0.0.1")
        .output()
        .unwrap();
    let (stdout, stderr) = (stdout_of(&out), stderr_of(&out));
    assert!(out.status.success(), "{stderr}");
    let repo = std::fs::canonicalize(repo()).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    let read = lines
        .iter()
        .position(|l| *l == "# Settings read, later ones over earlier ones:")
        .expect("the files read are listed");
    assert_eq!(
        lines[read + 1..read + 4],
        [
            "#   built-in defaults".to_string(),
            format!(
                "#   config/default.toml (in the working directory {})",
                repo.display()
            ),
            format!("#   {}", file.display()),
        ]
    );
    let env = lines
        .iter()
        .find(|l| l.starts_with("# Environment, over the files: "))
        .expect("the variables are listed");
    for name in ["CHURND__REDIS__PASSWORD", "CHURND__STATE__DIR"] {
        assert!(env.contains(name), "{env}");
    }
    assert!(!env.contains("CHURND_SERVICE_HOST"), "not a setting: {env}");
    assert!(
        !stdout.contains("hunter2") && !stderr.contains("hunter2"),
        "{stdout}"
    );
    let shown: toml::Value = toml::from_str(&stdout).unwrap();
    assert_eq!(shown["log"]["format"].as_str(), Some("json"));
    assert_eq!(shown["redis"]["password"].as_str(), Some("***"));
}

#[test]
fn check_config_connect_fails_clearly_on_an_unreachable_redis() {
    let port = free_port();
    let started = Instant::now();
    let out = churnd()
        .args(["check-config", "--connect"])
        .env(
            "CHURND__REDIS__URL",
            format!("redis://:hunter2-secret@127.0.0.1:{port}/0"),
        )
        .output()
        .unwrap();
    let (stdout, stderr) = (stdout_of(&out), stderr_of(&out));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "churnd: check-config: cannot connect to Redis at redis://:***@127.0.0.1:{port}/0 (redis.url): "
        )) && stderr.contains("refused"),
        "{stderr}"
    );
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));
    // One attempt, within the connect timeout: no retrying forever.
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn check_config_connect_passes_on_a_real_redis_and_reports_the_streams() {
    let redis = RedisServer::start();
    let check = || {
        let out = churnd()
            .args(["check-config", "--connect"])
            .env("CHURND__REDIS__URL", redis.url())
            .env("CHURND__SOURCE__STREAMS", "churn:events,events:new")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert_eq!(stderr_of(&out), "");
        stdout_of(&out)
    };
    let stdout = check();
    let expected = [
        format!("# ok: connected to {}: Redis 7.", redis.url()),
        "# ok: maxmemory-policy is noeviction".to_string(),
        "# ok: Lua scripting is allowed".to_string(),
        // The daemon creates missing streams with their group (XGROUP CREATE … MKSTREAM).
        "# warning: input stream churn:events (source.streams) does not exist yet: churnd creates it and the consumer group churnd at start, reading from its beginning (source.start_from)".to_string(),
        "# ok: output streams churn:events:dlq, churn:outcomes, churn:winback, churn:winback:control, crm:tasks, crm:tasks:control are streams or free".to_string(),
    ];
    for line in &expected {
        assert!(
            stdout.lines().any(|l| l.starts_with(line.as_str())),
            "{line:?} in:\n{stdout}"
        );
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = redis.conn().await;
        xadd(&mut c, "churn:events", &purchase("c1", 10.0, T0_MS)).await;
        create_group(&mut c, "churn:events").await;
        xadd(&mut c, "events:new", &purchase("c2", 10.0, T0_MS)).await;
    });
    let stdout = check();
    for line in [
        "# ok: input stream churn:events: 1 entry, consumer group churnd (source.group) with 0 pending and lag 1",
        "# ok: input stream events:new: 1 entry, no consumer group churnd (source.group) yet: churnd creates it at start",
    ] {
        assert!(stdout.lines().any(|l| l.starts_with(line)), "{line:?} in:\n{stdout}");
    }
}

/// `--connect` connects as the daemon does: with the configured password and TLS material.
#[test]
fn check_config_connect_uses_the_configured_password_and_tls() {
    let redis = RedisServer::start_with(ServerOptions {
        password: Some("s3cret-pass".into()),
        tls: Some(TestPki::generate()),
        ..ServerOptions::default()
    });
    let pki = redis.tls().unwrap();
    let check = |password: &str| {
        churnd()
            .args(["check-config", "--connect"])
            .env("CHURND__REDIS__URL", redis.url_with_password(None))
            .env("CHURND__REDIS__PASSWORD", password)
            .env("CHURND__REDIS__TLS_CA_FILE", &pki.ca)
            .output()
            .unwrap()
    };
    let out = check("s3cret-pass");
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).contains(&format!(
            "# ok: connected to {}: Redis 7.",
            redis.url_with_password(None)
        )),
        "{}",
        stdout_of(&out)
    );
    let out = check("wrong-pass");
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("authentication failed: check the password in redis.url or redis.password"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wrong-pass") && !stderr.contains("s3cret"),
        "{stderr}"
    );
}
