//! The built binary: signals, configuration errors, model files.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;

const EVENTS: &str = "churn:events";

fn output(cmd: &mut Command) -> (Output, String) {
    let out = cmd.output().expect("churnd runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

#[test]
fn invalid_configuration_fails_at_start_naming_the_key() {
    for (variable, value, named) in [
        (
            "CHURND__SOURCE__BATCH_SIZE",
            "0",
            "CHURND__SOURCE__BATCH_SIZE (environment): source.batch_size must be a whole number from 1 to 100000 (got \"0\")",
        ),
        (
            "CHURND__CLOCK__MODE",
            "sundial",
            "CHURND__CLOCK__MODE (environment): clock.mode must be one of: wall, event (got \"sundial\")",
        ),
        (
            "CHURND__REDIS__URLL",
            "redis://x",
            "CHURND__REDIS__URLL (environment): redis.urll is not a setting (did you mean redis.url?)",
        ),
    ] {
        let (out, stderr) = output(churnd().arg("check-config").env(variable, value));
        assert_eq!(out.status.code(), Some(2), "{variable}: {stderr}");
        assert!(
            stderr.contains(&format!("churnd: configuration is invalid (1 problem):\n  - {named}\n")),
            "{variable} should name {named}: {stderr}"
        );
    }
}

#[test]
fn check_config_prints_the_effective_settings_without_secrets() {
    let (out, stderr) = output(
        churnd()
            .arg("check-config")
            .env(
                "CHURND__REDIS__URL",
                "redis://:s3cret@redis.internal:6380/2",
            )
            .env("CHURND__SOURCE__STREAMS", "events:eu, events:us")
            .env("CHURND__HTTP__ADDR", "127.0.0.1:9999"),
    );
    assert!(out.status.success(), "{stderr}");
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("redis.internal:6380"), "{shown}");
    let parsed: toml::Value = toml::from_str(&shown).unwrap();
    assert_eq!(parsed["source"]["streams"].as_array().unwrap().len(), 2);
    assert_eq!(parsed["http"]["addr"].as_str(), Some("127.0.0.1:9999"));
}

#[test]
fn a_bad_model_file_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"format": "churnd-logistic/1", "version": "x"}"#).unwrap();
    let (out, stderr) = output(
        churnd()
            .arg("run")
            .env("CHURND__MODEL__PATH", &bad)
            .env("CHURND__HTTP__ADDR", "127.0.0.1:0"),
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad.json"), "{stderr}");
}

/// The names of a running process's threads (Linux: /proc/PID/task/TID/comm).
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process is running")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_writes_what_was_read_and_exits_zero() {
    let redis = RedisServer::start();
    let mut c = redis.conn().await;
    for chunk in 0..20 {
        let mut pipe = redis::pipe();
        for i in 0..1_000u64 {
            let n = chunk * 1_000 + i;
            pipe.cmd("XADD")
                .arg(EVENTS)
                .arg("*")
                .arg("customer_id")
                .arg(format!("c{}", n % 5_000))
                .arg("type")
                .arg("purchase")
                .arg("amount")
                .arg("9.99")
                .ignore();
        }
        pipe.query_async::<()>(&mut c).await.unwrap();
    }
    let port = free_port();
    let state = tempfile::tempdir().unwrap();
    let mut child = churnd()
        .arg("run")
        .env("CHURND__STATE__DIR", state.path())
        .env("CHURND__REDIS__URL", redis.url())
        .env("CHURND__HTTP__ADDR", format!("127.0.0.1:{port}"))
        .env("CHURND__SOURCE__CONSUMER", "sigterm-test")
        .env("CHURND__SOURCE__BATCH_SIZE", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    wait_for("processing to start", Duration::from_secs(15), || {
        let url = metrics.clone();
        async move {
            match reqwest::get(&url).await {
                Ok(r) => parse_metric(
                    &r.text().await.unwrap_or_default(),
                    "churnd_events_total{outcome=\"applied\",type=\"purchase\"}",
                )
                .is_some_and(|n| n > 0.0),
                Err(_) => false,
            }
        }
    })
    .await;
    // The engine works on a thread of its own, beside the runtime's workers.
    let threads = thread_names(child.id());
    assert!(threads.iter().any(|t| t == "churnd-engine"), "{threads:?}");

    // SAFETY: plain kill(2) on our own child's PID.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "churnd did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("drained"), "{stderr}");
    assert!(
        std::fs::read_dir(state.path()).unwrap().count() >= 1,
        "a final snapshot was written: {stderr}"
    );
    // The effects of every entry read before SIGTERM are written: with positions committed
    // with snapshots (the default), the written group stands at the last entry read.
    let reply: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(EVENTS)
        .query_async(&mut c)
        .await
        .unwrap();
    let read = churnd::source::lag::group_info(&reply, "churnd").unwrap();
    let written = churnd::source::lag::group_info(&reply, "churnd:written");
    assert_eq!(read.pending, 0, "nothing pending: reads are NOACK");
    assert!(
        read.last_delivered
            .is_some_and(|id| id > Default::default()),
        "{read:?}"
    );
    assert_eq!(
        written.map(|w| w.last_delivered),
        Some(read.last_delivered),
        "the effects of every entry read before SIGTERM were written"
    );
}

/// Waits until the daemon has refused `n` model files in all, and checks that the first
/// model still serves.
async fn refused(app: &App, n: u32) {
    let failures = Some(f64::from(n));
    wait_for(
        &format!("model file {n} to be refused"),
        Duration::from_secs(30),
        || async move {
            app.metric("churnd_model_reloads_total{outcome=\"failure\"}")
                .await
                == failures
        },
    )
    .await;
    assert_eq!(
        app.metric("churnd_model_info{version=\"recency-1\"}").await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_model_reload_is_refused_and_a_good_one_is_served() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(&redis, dir.path());
    let path = settings.model.path.clone();
    let app = App::spawn(settings).await;
    let replace = |text: String| {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };

    // The watcher compares the file with the bytes the served model came from, so this
    // replacement counts even if it lands before the watcher's first look (on a busy
    // machine it can). Deadlines are generous for the same reason.
    let mut broken = recency_model("recency-broken");
    broken.features.pop();
    replace(serde_json::to_string(&broken).unwrap());
    refused(&app, 1).await;
    // What the ChurndModelReloadFailing alert watches.
    assert_eq!(
        app.metric("churnd_model_last_reload_successful").await,
        Some(0.0)
    );

    // A file whose value parameters are out of range is refused too (the shipped model with
    // BG/NBD's r at 1e300, past what a fit could give).
    let shipped = std::fs::read_to_string(repo().join("models/cdnow.json")).unwrap();
    let mut bad_value: serde_json::Value = serde_json::from_str(&shipped).unwrap();
    bad_value["version"] = "cdnow-bad-value".into();
    bad_value["value"]["bgnbd"]["r"] = 1e300.into();
    replace(bad_value.to_string());
    refused(&app, 2).await;
    // The refused model leaves the daemon ready (once it has recovered, which a busy
    // machine may not have finished yet).
    wait_for("the daemon to be ready", Duration::from_secs(30), || {
        let app = &app;
        async move { app.get("/readyz").await.status() == 200 }
    })
    .await;

    replace(serde_json::to_string(&recency_model("recency-2")).unwrap());
    wait_for("the new model to serve", Duration::from_secs(30), || {
        let app = &app;
        async move { app.metric("churnd_model_info{version=\"recency-2\"}").await == Some(1.0) }
    })
    .await;
    assert_eq!(
        app.metric("churnd_model_info{version=\"recency-1\"}").await,
        None
    );
    assert_eq!(
        app.metric("churnd_model_last_reload_successful").await,
        Some(1.0)
    );
    let mut c = redis.conn().await;
    xadd(&mut c, EVENTS, &purchase("scored", 1.0, T0_MS)).await;
    wait_drained(&mut c, EVENTS, "churnd").await;
    assert_eq!(
        app.get_json("/v1/customers/scored").await["model_version"],
        "recency-2"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_model() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = write_recency_model(dir.path(), "served");
    let port = free_port();
    let state = tempfile::tempdir().unwrap();
    let mut child = churnd()
        .arg("run")
        .env("CHURND__STATE__DIR", state.path())
        .env("CHURND__REDIS__URL", redis.url())
        .env("CHURND__HTTP__ADDR", format!("127.0.0.1:{port}"))
        .env("CHURND__MODEL__PATH", &path)
        .env("CHURND__MODEL__WATCH_INTERVAL_MS", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let version_served = |version: &'static str| {
        let url = metrics.clone();
        move || {
            let url = url.clone();
            async move {
                let text = match reqwest::get(&url).await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(_) => return false,
                };
                parse_metric(
                    &text,
                    &format!("churnd_model_info{{version=\"{version}\"}}"),
                ) == Some(1.0)
            }
        }
    };
    wait_for(
        "the first model",
        Duration::from_secs(15),
        version_served("served"),
    )
    .await;

    std::fs::write(
        &path,
        serde_json::to_string(&recency_model("after-hup")).unwrap(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        version_served("served")().await,
        "watching is off: no reload without SIGHUP"
    );
    // SAFETY: plain kill(2) on our own child's PID.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    wait_for(
        "the model reloaded on SIGHUP",
        Duration::from_secs(10),
        version_served("after-hup"),
    )
    .await;

    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

/// `churnd run 2>&1 | head -3`: once the reader of its log goes away, every log line fails
/// to write. The daemon must go on working, and still drain and exit 0 on SIGTERM (it used
/// to panic in the logging layer, ignore SIGTERM and need SIGKILL, or exit 101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_log_pipe_neither_stops_the_work_nor_the_clean_shutdown() {
    use std::io::BufRead;
    let redis = RedisServer::start();
    let port = free_port();
    let state = tempfile::tempdir().unwrap();
    let mut child = churnd()
        .arg("run")
        .env("CHURND__STATE__DIR", state.path())
        .env("CHURND__REDIS__URL", redis.url())
        .env("CHURND__HTTP__ADDR", format!("127.0.0.1:{port}"))
        .env("CHURND__SOURCE__BLOCK_MS", "100")
        .env("CHURND__STATE__SNAPSHOT_INTERVAL_MS", "50")
        // Debug logging: a line at every snapshot, all into the closed pipe.
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    for _ in 0..3 {
        line.clear();
        assert!(
            log.read_line(&mut line).unwrap() > 0,
            "churnd logs at start"
        );
    }
    drop(log);

    // Work goes on with nobody reading the log.
    let mut c = redis.conn().await;
    xadd(&mut c, EVENTS, &purchase("after-the-pipe", 3.0, T0_MS)).await;
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    wait_for("the event to be applied", Duration::from_secs(60), || {
        let url = metrics.clone();
        async move {
            let text = match reqwest::get(&url).await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => return false,
            };
            parse_metric(
                &text,
                "churnd_events_total{outcome=\"applied\",type=\"purchase\"}",
            ) == Some(1.0)
                && parse_metric(&text, "churnd_snapshots_total{outcome=\"written\"}")
                    .is_some_and(|n| n >= 1.0)
        }
    })
    .await;

    // SAFETY: plain kill(2) on our own child's PID.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("churnd ignored SIGTERM after its log pipe closed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "a clean exit");
    assert!(
        std::fs::read_dir(state.path()).unwrap().count() >= 1,
        "state was saved"
    );
}

/// Text logs into a pipe (a container's log collector, `2> file`, `| less`) carry no ANSI
/// colour codes: tracing-subscriber would write them wherever stderr goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_into_a_pipe_have_no_colour_codes() {
    let redis = RedisServer::start();
    let daemon = DaemonProcess::spawn(&[
        ("CHURND__REDIS__URL", redis.url()),
        ("CHURND__LOG__FORMAT", "text".into()),
        ("RUST_LOG", "debug".into()),
    ]);
    wait_for("the daemon to be ready", Duration::from_secs(30), || {
        let daemon = &daemon;
        async move {
            reqwest::get(daemon.url("/readyz"))
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    // Every level churnd logs at start and stop, so that colour would have shown.
    for level in [" INFO ", " DEBUG "] {
        assert!(log.contains(level), "no{level}line in the log:\n{log}");
    }
    assert!(
        !log.contains('\x1b'),
        "escape codes in a piped log:\n{}",
        log.escape_debug()
    );
}

/// `churnd demo | head -1`: the demo's report goes on into a closed stdout. It must run to
/// its end and stop its daemon cleanly (`println!` panicked there, abandoning the daemon).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_into_a_closed_pipe_runs_to_its_end() {
    use std::io::BufRead;
    let redis = RedisServer::start();
    let mut child = churnd()
        .arg("demo")
        .env("CHURND__REDIS__URL", redis.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut report = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    assert!(report.read_line(&mut line).unwrap() > 0, "the demo reports");
    assert!(line.starts_with("churnd demo:"), "{line}");
    drop(report);

    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo did not end");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // It got to the end: every entry processed, the report written (into the void).
    let mut c = redis.conn().await;
    let group = drained(&mut c, "churnd-demo:events", "churnd-demo").await;
    assert_eq!(group, Ok(()), "{stderr}");
}
