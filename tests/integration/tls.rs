//! Redis over TLS (`rediss://`): a real redis-server with `--tls-port` and certificates made
//! at test time; a private CA through `redis.tls_ca_file`, client certificates (mTLS), and
//! clear errors that never show the password when the server's certificate is not trusted.

use std::time::Duration;

use crate::helpers::*;

const EVENTS: &str = "churn:events";
const PASSWORD: &str = "tls-Secret-4711";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_flow_over_tls_with_a_private_ca_and_a_password() {
    let redis = RedisServer::start_with(ServerOptions {
        password: Some(PASSWORD.into()),
        tls: Some(TestPki::generate()),
        ..ServerOptions::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(&redis, dir.path());
    assert!(settings.redis.url.starts_with("rediss://"));
    assert!(settings.redis.tls_ca_file.is_some());
    let app = App::spawn(settings).await;
    let mut c = redis.conn().await;
    xadd(&mut c, EVENTS, &purchase("over-tls", 42.0, T0_MS)).await;
    wait_drained(&mut c, EVENTS, "churnd").await;

    let customer = app.get_json("/v1/customers/over-tls").await;
    assert_eq!(customer["customer_id"], "over-tls");
    assert_eq!(
        app.metric("churnd_redis_connected{role=\"sink\"}").await,
        Some(1.0)
    );
    wait_for("readiness over TLS", Duration::from_secs(10), || {
        let app = &app;
        async move { app.get("/readyz").await.status() == 200 }
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_requiring_client_certificates_accepts_the_configured_one() {
    let redis = RedisServer::start_with(ServerOptions {
        tls: Some(TestPki::generate()),
        require_client_cert: true,
        ..ServerOptions::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(&redis, dir.path());
    assert!(settings.redis.tls_cert_file.is_some() && settings.redis.tls_key_file.is_some());
    let app = App::spawn(settings).await;
    let mut c = redis.conn().await;
    xadd(&mut c, EVENTS, &purchase("mutual", 1.0, T0_MS)).await;
    wait_drained(&mut c, EVENTS, "churnd").await;
    assert_eq!(
        app.get_json("/v1/customers/mutual").await["customer_id"],
        "mutual"
    );
    app.stop().await;
}

/// Runs `churnd run` against the TLS server with these extra settings until the source has
/// failed to connect a few times, and returns /readyz, /metrics and the log.
async fn failing_tls_run(redis: &RedisServer, env: &[(&str, String)]) -> (String, String, String) {
    let mut all = vec![
        ("RUST_LOG", "debug".to_string()),
        ("CHURND__REDIS__URL", redis.url()),
    ];
    all.extend(env.iter().cloned());
    let daemon = DaemonProcess::spawn(&all);
    wait_for(
        "repeated connection failures",
        Duration::from_secs(15),
        || {
            let daemon = &daemon;
            async move {
                daemon.get_text("/metrics").await.is_some_and(|m| {
                    parse_metric(&m, "churnd_redis_errors_total{role=\"source\"}")
                        .is_some_and(|n| n >= 3.0)
                })
            }
        },
    )
    .await;
    let readyz = daemon.get_text("/readyz").await.unwrap();
    let metrics = daemon.get_text("/metrics").await.unwrap();
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    (readyz, metrics, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused_clearly_without_showing_the_password() {
    let pki = TestPki::generate();
    let redis = RedisServer::start_with(ServerOptions {
        password: Some(PASSWORD.into()),
        tls: Some(pki.clone()),
        ..ServerOptions::default()
    });
    let (readyz, metrics, log) = failing_tls_run(
        &redis,
        &[(
            "CHURND__REDIS__TLS_CA_FILE",
            pki.other_ca.display().to_string(),
        )],
    )
    .await;
    assert!(readyz.contains("not connected to Redis"), "{readyz}");
    assert!(log.contains("cannot connect to Redis"), "{log}");
    assert!(log.contains("invalid peer certificate"), "{log}");
    assert!(
        log.contains("redis.tls_ca_file"),
        "the hint names the setting: {log}"
    );
    assert!(log.contains("rediss://:***@127.0.0.1"), "{log}");
    for text in [&readyz, &metrics, &log] {
        assert!(!text.contains(PASSWORD), "password shown:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_roots_do_not_trust_a_private_ca() {
    let redis = RedisServer::start_with(ServerOptions {
        tls: Some(TestPki::generate()),
        ..ServerOptions::default()
    });
    let (_, _, log) = failing_tls_run(&redis, &[]).await;
    assert!(log.contains("invalid peer certificate"), "{log}");
    assert!(log.contains("redis.tls_ca_file"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_client_certificate_is_reported() {
    let pki = TestPki::generate();
    let redis = RedisServer::start_with(ServerOptions {
        tls: Some(pki.clone()),
        require_client_cert: true,
        ..ServerOptions::default()
    });
    let (readyz, _, log) = failing_tls_run(
        &redis,
        &[("CHURND__REDIS__TLS_CA_FILE", pki.ca.display().to_string())],
    )
    .await;
    assert!(readyz.contains("not connected to Redis"), "{readyz}");
    assert!(log.contains("redis.tls_cert_file"), "{log}");
}

#[test]
fn check_config_names_an_unusable_tls_setting() {
    let dir = tempfile::tempdir().unwrap();
    let out = churnd()
        .arg("check-config")
        .env(
            "CHURND__REDIS__URL",
            format!("rediss://:{PASSWORD}@redis:6380/0"),
        )
        .env("CHURND__REDIS__TLS_CA_FILE", dir.path().join("missing.pem"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("redis.tls_ca_file"), "{stderr}");
    assert!(stderr.contains("missing.pem"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
}
