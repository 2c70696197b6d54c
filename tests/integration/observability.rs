//! The Grafana dashboard and the alert rules against a live Prometheus (Debian's package, from
//! `.ci/install-tools`) scraping a running churnd that `churnd simulate` feeds: every PromQL
//! expression must parse and evaluate, and every dashboard query must return data. churnd's
//! exposition must also pass `promtool check metrics` (Prometheus's naming conventions).
//!
//! Prometheus scrapes churnd under the job name Kubernetes pod-annotation scraping gives it,
//! not "churnd": nothing may depend on the job's name. ChurndDown must stay quiet while churnd
//! answers, and find it once it stops.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{dashboard, free_port, ops_tool, repo, DaemonProcess, RedisServer};

/// The scrape job: the one pod-annotation scraping configurations usually name.
const JOB: &str = "kubernetes-pods";

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Values as Grafana writes a multi-value variable into a Prometheus regex matcher: regex
/// metacharacters escaped (with a backslash the PromQL string keeps), one value as it is, All
/// or several as an alternation.
fn grafana_regex(values: &[&str], all: bool) -> String {
    let escaped: Vec<String> = values
        .iter()
        .map(|v| {
            v.chars().fold(String::new(), |mut out, c| {
                if "$^*{}[]'+?.()|".contains(c) {
                    out.push_str("\\\\");
                }
                out.push(c);
                out
            })
        })
        .collect();
    if escaped.len() == 1 && !all {
        escaped[0].clone()
    } else {
        format!("({})", escaped.join("|"))
    }
}

/// The dashboard's variables as Grafana fills them in: the job selected by name, the
/// instances as "All".
fn substitute(text: &str, instance: &str) -> String {
    text.replace("$job", &grafana_regex(&[JOB], false))
        .replace("$instance", &grafana_regex(&[instance], true))
}

/// The `expr` of every target of every panel, variables filled in, with the panel's title.
fn dashboard_queries(instance: &str) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard().1 {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            let title = panel["title"].as_str().unwrap_or_default();
            queries.push((title.to_string(), substitute(expr, instance)));
        }
    }
    queries
}

/// Grafana's `label_values(<selector>, <label>)` of a template variable, asked of Prometheus's
/// label API as Grafana does; the values, or why not.
async fn label_values(prometheus: &str, query: &str) -> Result<Vec<String>, String> {
    let (selector, label) = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .and_then(|q| q.rsplit_once(','))
        .ok_or_else(|| format!("not a label_values query: {query}"))?;
    let body: serde_json::Value = reqwest::Client::new()
        .get(format!("{prometheus}/api/v1/label/{}/values", label.trim()))
        .query(&[("match[]", selector.trim())])
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    Ok(body["data"]
        .as_array()
        .ok_or_else(|| format!("{body}"))?
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect())
}

/// Runs an instant query; the error text if Prometheus refuses it, else its result vector.
async fn query(prometheus: &str, expr: &str) -> Result<Vec<serde_json::Value>, String> {
    let response = reqwest::Client::new()
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .map_err(|e| format!("Prometheus did not answer: {e}"))?;
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| format!("not JSON: {e}"))?;
    if body["status"] != "success" {
        return Err(format!("{}: {}", body["errorType"], body["error"]));
    }
    Ok(body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Waits until `expr` returns a series whose value satisfies `ok`, or panics after `within`
/// with what Prometheus last answered and what it says of its scrape target.
async fn wait_for(prometheus: &str, expr: &str, ok: impl Fn(f64) -> bool, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let last = query(prometheus, expr).await;
        if let Ok(result) = &last {
            let value = result
                .first()
                .and_then(|s| s["value"][1].as_str()?.parse().ok());
            if value.is_some_and(&ok) {
                return;
            }
        }
        if Instant::now() >= deadline {
            panic!(
                "`{expr}` not satisfied within {within:?}; last answer {last:?}; target {}",
                scrape_target(prometheus).await
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The health, last error and scrape duration Prometheus reports for its targets.
async fn scrape_target(prometheus: &str) -> String {
    let body: Result<serde_json::Value, String> = async {
        reqwest::get(format!("{prometheus}/api/v1/targets"))
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    match body {
        Ok(body) => body["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                format!(
                    "{} health {} lastError {} lastScrapeDuration {}",
                    t["scrapeUrl"], t["health"], t["lastError"], t["lastScrapeDuration"]
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => format!("unknown (Prometheus did not answer: {e})"),
    }
}

/// A Prometheus scraping one churnd every second under the job name [`JOB`], with the alert
/// rules loaded; killed when dropped.
struct Prometheus {
    url: String,
    _process: KillOnDrop,
}

impl Prometheus {
    /// Starts Prometheus and waits until it is ready. A port another test took between
    /// [`free_port`] and Prometheus's bind is retried on a fresh one; any other exit panics
    /// with Prometheus's own log.
    async fn start(dir: &std::path::Path, churnd_port: u16) -> Self {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['127.0.0.1:{churnd_port}']\n",
                rules = repo().join("deploy/prometheus/alerts.yml").display(),
            ),
        )
        .expect("the config is written");
        for attempt in 0..5 {
            let port = free_port();
            let log_path = dir.join(format!("prometheus-{attempt}.log"));
            let log = std::fs::File::create(&log_path).expect("the log file is created");
            let mut process = KillOnDrop(
                Command::new(ops_tool("prometheus"))
                    .arg(format!("--config.file={}", config.display()))
                    .arg(format!(
                        "--storage.tsdb.path={}",
                        dir.join(format!("tsdb-{attempt}")).display()
                    ))
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("prometheus runs"),
            );
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                if let Some(status) = process.0.try_wait().expect("prometheus's status") {
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    if log.contains("address already in use") {
                        break;
                    }
                    panic!("prometheus exited ({status}) before it was ready:\n{log}");
                }
                let ready = reqwest::get(format!("{url}/-/ready"))
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ready {
                    return Self {
                        url,
                        _process: process,
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "prometheus not ready within 90s:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        panic!("prometheus found its port taken five times in a row");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_and_alert_query_runs_against_prometheus_scraping_churnd() {
    let redis = RedisServer::start();
    let stream = "shop:events";
    // The win-back tasks' consumers read with a group of their own, which never reads here:
    // the output-stream panels of unread and trimmed tasks have a group to show.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("churn:winback")
        .arg("crm")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut redis.conn().await)
        .await
        .expect("the consumers' group is created");
    // Win-back outcomes of both groups on the outcome stream: the lift panel has data
    // whether or not the simulated year closes conversion windows in time.
    let mut conn = redis.conn().await;
    for (i, group) in ["treatment"; 20]
        .into_iter()
        .chain(["control"; 10])
        .enumerate()
    {
        let revenue = (i % 4 == 0).then_some(25.5);
        let cell = ["winback", "coupon", "general_winback", group];
        let times = (1_763_164_800_000, 1_765_756_800_000);
        let fields = crate::helpers::outcome_record(&cell, revenue, times, i as u128);
        crate::helpers::xadd(&mut conn, "churn:outcomes", &fields).await;
    }
    let churnd = DaemonProcess::spawn(&[
        ("CHURND__REDIS__URL", redis.url()),
        ("CHURND__SOURCE__STREAMS", stream.into()),
        // Under the event clock the simulated year passes as it is written, so customers go
        // silent, get tasks and some come back: the win-back panels have data.
        ("CHURND__CLOCK__MODE", "event".into()),
        ("CHURND__STATE__SNAPSHOT_INTERVAL_MS", "1000".into()),
    ]);
    let simulate = KillOnDrop(
        crate::helpers::churnd()
            .args([
                "simulate",
                "--customers",
                "3000",
                "--history-days",
                "365",
                "--rate",
                "2000",
                "--speedup",
                "0",
                "--invalid-per-mille",
                "20",
                "--stream",
                stream,
            ])
            .env("CHURND__REDIS__URL", redis.url())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("churnd simulate runs"),
    );

    let dir = tempfile::tempdir().expect("a temp dir");
    let prometheus_server = Prometheus::start(dir.path(), churnd.port).await;
    let prometheus = prometheus_server.url.clone();

    // Enough scrapes for rate() over the dashboard's shortest window, of a churnd that has
    // written tasks and snapshots.
    let within = Duration::from_secs(90);
    wait_for(
        &prometheus,
        &format!("up{{job={JOB:?}}}"),
        |v| v == 1.0,
        within,
    )
    .await;
    wait_for(
        &prometheus,
        "sum(churnd_winback_tasks_total)",
        |v| v > 0.0,
        within,
    )
    .await;
    wait_for(
        &prometheus,
        "sum(churnd_snapshots_total{outcome=\"written\"})",
        |v| v > 0.0,
        within,
    )
    .await;
    wait_for(
        &prometheus,
        &format!("count_over_time(churnd_ready{{job={JOB:?}}}[1m])"),
        |v| v >= 20.0,
        within,
    )
    .await;
    drop(simulate);

    // Names, types, units and help texts as Prometheus's own linter wants them.
    let exposition = churnd
        .get_text("/metrics")
        .await
        .expect("churnd serves /metrics");
    let mut lint = Command::new(ops_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    lint.stdin
        .take()
        .expect("promtool's stdin")
        .write_all(exposition.as_bytes())
        .expect("the metrics reach promtool");
    let lint = lint.wait_with_output().expect("promtool finishes");
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    let mut failures = Vec::new();
    let instance = format!("127.0.0.1:{}", churnd.port);
    // The job and instance variables offer this churnd.
    for variable in dashboard().0["templating"]["list"]
        .as_array()
        .expect("templating variables")
        .iter()
        .filter(|v| v["type"] == "query")
    {
        let name = variable["name"].as_str().unwrap_or_default();
        let query = substitute(variable["query"].as_str().unwrap_or_default(), &instance);
        let expected = match name {
            "job" => JOB,
            "instance" => instance.as_str(),
            _ => "",
        };
        match label_values(&prometheus, &query).await {
            Ok(values) if values.iter().any(|v| v == expected) => {}
            Ok(values) => failures.push(format!(
                "variable {name}: `{query}` offers {values:?}, not {expected}"
            )),
            Err(e) => failures.push(format!("variable {name}: `{query}`: {e}")),
        }
    }
    let queries = dashboard_queries(&instance);
    assert!(
        queries.len() > 20,
        "only {} dashboard queries",
        queries.len()
    );
    for (panel, expr) in &queries {
        match query(&prometheus, expr).await {
            Ok(result) if result.is_empty() => {
                failures.push(format!("panel \"{panel}\": no data from `{expr}`"))
            }
            Ok(_) => {}
            Err(e) => failures.push(format!("panel \"{panel}\": `{expr}` refused: {e}")),
        }
    }
    // Prometheus loaded every rule of the file and has evaluated them all along: each query
    // must run, and no evaluation may have failed.
    let file = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml"))
        .expect("the alert rules are readable");
    let in_file = file.matches("- alert: ").count();
    let response: serde_json::Value = reqwest::get(format!("{prometheus}/api/v1/rules"))
        .await
        .expect("rules answer")
        .json()
        .await
        .expect("rules JSON");
    let loaded = response["data"]["groups"][0]["rules"]
        .as_array()
        .expect("the alert rules are loaded");
    assert_eq!(loaded.len(), in_file, "rules loaded vs in alerts.yml");
    for rule in loaded {
        // ALERTS holds pending alerts too: a ChurndDown that fires forever for want of a
        // job named "churnd" would be pending within a second.
        if rule["name"] == "ChurndDown" && rule["state"] != "inactive" {
            failures.push(format!(
                "ChurndDown is {} while churnd answers: {}",
                rule["state"], rule["alerts"]
            ));
        }
        let (name, expr) = (&rule["name"], rule["query"].as_str().unwrap_or_default());
        if let Err(e) = query(&prometheus, expr).await {
            failures.push(format!("alert {name}: `{expr}` refused: {e}"));
        }
        if rule["health"] != "ok" {
            failures.push(format!(
                "alert {name} evaluates with health {}: {}",
                rule["health"], rule["lastError"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // churnd stops: ChurndDown's expression names its target.
    let down = loaded
        .iter()
        .find(|rule| rule["name"] == "ChurndDown")
        .and_then(|rule| rule["query"].as_str())
        .expect("the ChurndDown rule")
        .to_string();
    let (code, _) = churnd.stop();
    assert_eq!(code, Some(0), "churnd stops cleanly");
    let deadline = Instant::now() + within;
    loop {
        let result = query(&prometheus, &down).await.unwrap_or_default();
        if result
            .iter()
            .any(|s| s["metric"]["instance"] == instance.as_str() && s["metric"]["job"] == JOB)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ChurndDown's expression does not find the stopped churnd at {instance}: {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
