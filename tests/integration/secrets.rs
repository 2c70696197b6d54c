//! Credentials never show: the Redis password (in the URL or given separately) and the API
//! token stay out of the log (even at debug level), `/metrics`, `/readyz` and
//! `churnd check-config`; a wrong password is reported as such.

use std::time::Duration;

use crate::helpers::*;

const EVENTS: &str = "churn:events";
/// Has a character that must be percent-encoded in the URL, to check both spellings.
const PASSWORD: &str = "Pa55/w0rd-xyzzy";
const PASSWORD_IN_URL: &str = "Pa55%2Fw0rd-xyzzy";
const TOKEN: &str = "tok-9f8e7d6c5b4a";

fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "{what} shows {secret:?}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_and_token_never_appear_in_logs_metrics_or_check_config() {
    let redis = RedisServer::start_with(ServerOptions {
        password: Some(PASSWORD.into()),
        ..ServerOptions::default()
    });
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("customer-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let env = [
        (
            "CHURND__REDIS__URL",
            redis.url_with_password(Some(PASSWORD_IN_URL)),
        ),
        (
            "CHURND__HTTP__CUSTOMER_TOKEN_FILE",
            token_file.display().to_string(),
        ),
    ];
    let all_secrets = [PASSWORD, PASSWORD_IN_URL, TOKEN];

    let out = churnd()
        .arg("check-config")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_secret("check-config", &shown, &all_secrets);
    assert!(shown.contains(":***@127.0.0.1"), "{shown}");
    assert!(shown.contains("customer_token_file"), "{shown}");

    let mut daemon_env = env.to_vec();
    daemon_env.push(("RUST_LOG", "debug".into()));
    // Periodic snapshots are logged at debug level: proof that debug logging is on.
    daemon_env.push(("CHURND__STATE__SNAPSHOT_INTERVAL_MS", "50".into()));
    let daemon = DaemonProcess::spawn(&daemon_env);
    let mut c = redis.conn().await;
    xadd(&mut c, EVENTS, &purchase("c-1", 25.0, T0_MS)).await;
    wait_drained(&mut c, EVENTS, "churnd").await;
    wait_for("readiness", Duration::from_secs(15), || {
        let daemon = &daemon;
        async move {
            daemon
                .get_text("/readyz")
                .await
                .is_some_and(|r| r.contains("true"))
        }
    })
    .await;

    let http = reqwest::Client::new();
    let summary = |token: Option<&str>| {
        let mut request = http.get(daemon.url("/v1/summary"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(summary(None).await.unwrap().status(), 401);
    assert_eq!(summary(Some("not-the-token")).await.unwrap().status(), 401);
    let ok = summary(Some(TOKEN)).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_no_secret("/v1/summary", &ok.text().await.unwrap(), &all_secrets);

    let metrics = daemon.get_text("/metrics").await.unwrap();
    assert_eq!(
        parse_metric(&metrics, "churnd_http_unauthorized_total"),
        Some(2.0)
    );
    assert_eq!(
        parse_metric(
            &metrics,
            "churnd_events_total{outcome=\"applied\",type=\"purchase\"}"
        ),
        Some(1.0)
    );
    assert_no_secret("/metrics", &metrics, &all_secrets);
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("DEBUG"), "debug logging was on: {log}");
    assert!(log.contains(":***@127.0.0.1"), "{log}");
    assert!(
        log.contains("required"),
        "the log says a token is required: {log}"
    );
    assert_no_secret("the log", &log, &all_secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_password_is_reported_clearly_without_showing_it() {
    const WRONG: &str = "wr0ng-Guess-31337";
    let redis = RedisServer::start_with(ServerOptions {
        password: Some(PASSWORD.into()),
        ..ServerOptions::default()
    });
    let cases = [
        (
            "wrong password in the URL",
            vec![("CHURND__REDIS__URL", redis.url_with_password(Some(WRONG)))],
            "authentication failed",
        ),
        (
            "wrong redis.password",
            vec![
                (
                    "CHURND__REDIS__URL",
                    redis.url_with_password(Some(PASSWORD_IN_URL)),
                ),
                ("CHURND__REDIS__PASSWORD", WRONG.into()),
            ],
            "authentication failed",
        ),
        (
            "no password",
            vec![("CHURND__REDIS__URL", redis.url_with_password(None))],
            "authentication required",
        ),
    ];
    for (case, mut env, expected) in cases {
        env.push(("RUST_LOG", "debug".into()));
        let daemon = DaemonProcess::spawn(&env);
        wait_for(case, Duration::from_secs(15), || {
            let daemon = &daemon;
            async move {
                daemon.get_text("/metrics").await.is_some_and(|m| {
                    parse_metric(&m, "churnd_redis_errors_total{role=\"sink\"}")
                        .is_some_and(|n| n >= 3.0)
                })
            }
        })
        .await;
        let readyz = daemon.get_text("/readyz").await.unwrap();
        let metrics = daemon.get_text("/metrics").await.unwrap();
        let (code, log) = daemon.stop();
        assert_eq!(code, Some(0), "{case}: {log}");
        assert!(
            readyz.contains("not connected to Redis"),
            "{case}: {readyz}"
        );
        assert!(
            log.contains(expected),
            "{case}: expected {expected:?} in {log}"
        );
        assert!(
            log.contains("redis.password"),
            "{case}: the hint names the setting: {log}"
        );
        for (what, text) in [
            ("/readyz", &readyz),
            ("/metrics", &metrics),
            ("the log", &log),
        ] {
            assert_no_secret(what, text, &[WRONG, PASSWORD, PASSWORD_IN_URL]);
        }
    }
}

/// A Kubernetes Secret with an empty value becomes an empty variable: it must not open the
/// customer API (config's `ignore_empty` used to drop it, leaving no token at all).
#[test]
fn an_empty_token_variable_stops_churnd_instead_of_opening_the_api() {
    let out = churnd()
        .arg("check-config")
        .env("CHURND__HTTP__CUSTOMER_TOKEN", "")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "  - CHURND__HTTP__CUSTOMER_TOKEN (environment): http.customer_token is set but empty: unset it"
        ),
        "{stderr}"
    );

    // An empty state.dir turns snapshots off, as the same value in a file does.
    let out = churnd()
        .arg("check-config")
        .env("CHURND__STATE__DIR", "")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(shown["state"]["dir"].as_str(), Some(""));
}
