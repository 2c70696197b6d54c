//! The deployment files checked by the tools their formats have: hadolint for the Dockerfile,
//! kubernetes-validate (strict: no unknown fields) for the Kubernetes manifests and what
//! `kubectl kustomize` builds from them, the compose-spec schema for the compose file,
//! `promtool check config` for Prometheus, and churnd itself for the settings file the
//! Kubernetes pod runs with. The tools come from `.ci/install-tools`; one that is missing
//! fails its test.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::helpers::{churnd, dashboard, ops_tool, repo};

/// Runs the tool from the repository root (so its messages name files as the repository
/// does), panicking with everything it printed when it fails.
fn check_with(tool: &str, args: &[&str]) -> Output {
    let output = Command::new(ops_tool(tool))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("{tool} could not be started: {e}"));
    assert_success(&format!("{tool} {}", args.join(" ")), &output);
    output
}

fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "`{what}` failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The Kubernetes manifests: every YAML file in deploy/k8s but the kustomization, which is
/// kustomize's input rather than a Kubernetes object.
fn kubernetes_manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/k8s"))
        .expect("deploy/k8s is readable")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .filter(|path| path.file_stem().is_some_and(|s| s != "kustomization"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_dockerfile_passes_hadolint() {
    check_with("hadolint", &["Dockerfile"]);
}

#[test]
fn every_kubernetes_manifest_passes_strict_validation() {
    let manifests = kubernetes_manifests();
    assert!(
        manifests.len() >= 4,
        "expected the StatefulSet, two Services and PodDisruptionBudget in deploy/k8s, found {manifests:?}"
    );
    let relative: Vec<&str> = manifests
        .iter()
        .map(|path| {
            path.strip_prefix(repo())
                .unwrap()
                .to_str()
                .expect("UTF-8 file names")
        })
        .collect();
    let mut args = vec!["--strict"];
    args.extend(&relative);
    check_with("kubernetes-validate", &args);
}

#[test]
fn the_kustomization_builds_into_valid_manifests() {
    // What `kubectl apply -k deploy/k8s` applies, including the generated ConfigMap.
    let built = check_with("kubectl", &["kustomize", "deploy/k8s"]);
    let dir = tempfile::tempdir().expect("a temp dir");
    let rendered = dir.path().join("churnd.yaml");
    std::fs::write(&rendered, &built.stdout).expect("the build is written");
    let validated = check_with(
        "kubernetes-validate",
        &["--strict", rendered.to_str().expect("a UTF-8 temp path")],
    );
    let report = String::from_utf8_lossy(&validated.stdout).into_owned()
        + &String::from_utf8_lossy(&validated.stderr);
    for object in [
        "configmap/churnd-config-",
        "statefulset/churnd ",
        "service/churnd ",
        "service/churnd-headless ",
        "poddisruptionbudget/churnd ",
    ] {
        assert!(
            report.contains(object),
            "{object} is missing from the build:\n{report}"
        );
    }
}

/// `kubectl apply -k` applies everything the kustomization builds, again at every change: a
/// Secret in it would overwrite the real one (made by `kubectl create secret` or a secret
/// store) with the repository's placeholders, and churnd would then fail to authenticate.
#[test]
fn the_kustomization_holds_no_secret() {
    let built = check_with("kubectl", &["kustomize", "deploy/k8s"]);
    let manifests = String::from_utf8(built.stdout).expect("UTF-8 manifests");
    let kinds: Vec<&str> = manifests
        .lines()
        .filter_map(|line| line.strip_prefix("kind:"))
        .map(str::trim)
        .collect();
    assert!(
        kinds.contains(&"StatefulSet"),
        "the build has no StatefulSet, kinds {kinds:?}"
    );
    assert!(
        !kinds.contains(&"Secret"),
        "the kustomization builds a Secret, which `kubectl apply -k` would overwrite the real one with:\n{manifests}"
    );
    assert!(
        !manifests.contains("REPLACE-ME"),
        "a placeholder value in the build:\n{manifests}"
    );
    // The pod still finds its Secret by name; a Redis without a password needs no key.
    assert!(
        manifests.contains("secretName: churnd") && manifests.contains("optional: true"),
        "the StatefulSet should name the Secret churnd, its redis-password optional:\n{manifests}"
    );
}

#[test]
fn the_kubernetes_settings_file_is_accepted_by_churnd() {
    // The pod's environment: the image's state directory, the Secret's password and token
    // file, and the variables Kubernetes adds for the Services named churnd and
    // churnd-headless, which share the CHURND prefix (but not the double underscore).
    let dir = tempfile::tempdir().expect("a temp dir");
    let token = dir.path().join("customer-token");
    std::fs::write(&token, "test-customer-token\n").expect("the token file is written");
    let output = churnd()
        .args(["--config", "deploy/k8s/churnd.toml", "check-config"])
        .env("CHURND__STATE__DIR", "/var/lib/churnd/state")
        .env("CHURND__REDIS__PASSWORD", "test-redis-password")
        .env("CHURND__HTTP__CUSTOMER_TOKEN_FILE", &token)
        .env("CHURND_PORT", "tcp://127.0.0.1:9898")
        .env("CHURND_SERVICE_HOST", "127.0.0.1")
        .env("CHURND_HEADLESS_SERVICE_PORT_HTTP", "9898")
        .output()
        .expect("churnd runs");
    assert_success(
        "churnd --config deploy/k8s/churnd.toml check-config",
        &output,
    );
    let shown = String::from_utf8_lossy(&output.stdout);
    // The file's own values are in effect, not the defaults it overrides.
    for line in ["format = \"json\"", "max_customers = 5000000"] {
        assert!(shown.contains(line), "`{line}` not in effect:\n{shown}");
    }
}

#[test]
fn the_compose_file_matches_the_compose_spec() {
    check_with(
        "check-jsonschema",
        &[
            "--builtin-schema",
            "vendor.compose-spec",
            "deploy/docker-compose.yml",
        ],
    );
}

#[test]
fn the_prometheus_config_passes_promtool() {
    // promtool also checks the rule files it names (deploy/prometheus/alerts.yml).
    check_with(
        "promtool",
        &["check", "config", "deploy/prometheus/prometheus.yml"],
    );
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    check_with(
        "promtool",
        &["check", "rules", "deploy/prometheus/alerts.yml"],
    );
    check_with(
        "promtool",
        &["test", "rules", "deploy/prometheus/alerts_test.yml"],
    );
}

/// The anchors GitHub gives the headings of a Markdown file (outside code blocks): lower
/// case, spaces as hyphens, punctuation other than hyphens and underscores dropped.
fn markdown_anchors(markdown: &str) -> Vec<String> {
    let mut in_code = false;
    let mut anchors = Vec::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let Some(heading) = line
            .strip_prefix('#')
            .filter(|_| !in_code)
            .map(|rest| rest.trim_start_matches('#'))
            .and_then(|rest| rest.strip_prefix(' '))
        else {
            continue;
        };
        anchors.push(
            heading
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect(),
        );
    }
    anchors
}

/// Each rule of alerts.yml: its name and the text of the rule (up to the next one).
fn alert_rules() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml"))
        .expect("the alert rules are readable");
    text.split("- alert: ")
        .skip(1)
        .map(|rule| {
            let (name, body) = rule.split_once('\n').unwrap_or((rule, ""));
            (name.trim().to_string(), body.to_string())
        })
        .collect()
}

#[test]
fn every_alert_links_to_its_section_of_the_runbooks() {
    let runbooks = std::fs::read_to_string(repo().join("docs/runbooks.md"))
        .expect("docs/runbooks.md is readable");
    let anchors = markdown_anchors(&runbooks);
    let rules = alert_rules();
    assert!(rules.len() >= 9, "only {} alert rules found", rules.len());
    for (name, body) in rules {
        let annotation = |key: &str| {
            body.lines()
                .find_map(|line| line.trim().strip_prefix(&format!("{key}: ")))
                .map(|value| value.trim().trim_matches('"').to_string())
        };
        for key in ["summary", "description"] {
            assert!(annotation(key).is_some(), "{name} has no {key}");
        }
        let url = annotation("runbook_url").unwrap_or_else(|| panic!("{name} has no runbook_url"));
        let (file, anchor) = url
            .split_once('#')
            .unwrap_or_else(|| panic!("{name}: runbook_url {url} has no #anchor"));
        assert_eq!(file, "docs/runbooks.md", "{name}: runbook_url {url}");
        assert_eq!(
            anchor,
            name.to_lowercase(),
            "{name}: the anchor is the alert's name in lower case"
        );
        assert!(
            anchors.iter().any(|a| a == anchor),
            "{name}: docs/runbooks.md has no section #{anchor} (a heading \"## {name}\")"
        );
    }
}

#[test]
fn every_alert_is_in_the_metrics_and_alerts_reference() {
    let reference = std::fs::read_to_string(repo().join("docs/metrics.md"))
        .expect("docs/metrics.md is readable");
    let listed: Vec<&str> = reference
        .lines()
        .filter_map(|line| line.strip_prefix("| `Churnd"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(name, _)| name)
        .collect();
    let rules = alert_rules();
    for (name, _) in &rules {
        let row = reference
            .lines()
            .find(|line| line.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("{name} is not in the alerts of docs/metrics.md"));
        assert!(
            row.contains(&format!("(runbooks.md#{})", name.to_lowercase())),
            "{name}: its row in docs/metrics.md does not link its runbook: {row}"
        );
    }
    for name in listed {
        assert!(
            rules
                .iter()
                .any(|(rule, _)| rule == &format!("Churnd{name}")),
            "docs/metrics.md lists Churnd{name}, which alerts.yml does not have"
        );
    }
}

/// The metric names in a PromQL expression (churnd's and the process's), each with the text
/// that follows it.
fn metric_selectors(expr: &str) -> Vec<(&str, &str)> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut found = Vec::new();
    let mut rest = expr;
    let mut offset = 0;
    while let Some(i) = ["churnd_", "process_"]
        .iter()
        .filter_map(|prefix| rest.find(prefix))
        .min()
    {
        let start = offset + i;
        let end = start
            + expr[start..]
                .find(|c| !is_name(c))
                .unwrap_or(expr.len() - start);
        if !expr[..start].ends_with(is_name) {
            found.push((&expr[start..end], &expr[end..]));
        }
        offset = end;
        rest = &expr[end..];
    }
    found
}

#[test]
fn the_grafana_dashboard_is_valid_json_with_a_query_on_every_panel() {
    let (dashboard, panels) = dashboard();
    assert_eq!(dashboard["uid"], "churnd", "the provisioned uid");
    let mut ids = std::collections::HashSet::new();
    for panel in &panels {
        assert!(ids.insert(panel["id"].as_u64()), "duplicate id: {panel}");
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().map_or(0, |t| t.len());
        assert!(targets > 0, "panel without a query: {}", panel["title"]);
    }
}

/// Imported into another Grafana, the dashboard must find its data source, and with several
/// churnd deployments or replicas behind one Prometheus it must not add them up unasked: a
/// data source variable instead of a fixed uid, and job and instance variables (taken from
/// churnd_build_info) that every query is scoped to.
#[test]
fn the_grafana_dashboard_is_portable_with_datasource_job_and_instance_variables() {
    let (dashboard, panels) = dashboard();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating variables");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    let datasource = variable("datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    for name in ["job", "instance"] {
        let v = variable(name);
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(v["multi"], true, "{name} takes several values");
        assert_eq!(v["includeAll"], true, "{name} offers All");
        assert!(
            v["allValue"].is_null(),
            "{name}: All must mean all churnd targets, not `.*` (every process_* of every target)"
        );
        assert_eq!(v["datasource"]["uid"], "${datasource}", "{name}");
        let query = v["query"].as_str().expect("a label_values query");
        assert!(
            query.starts_with("label_values(churnd_build_info"),
            "{name}: {query}"
        );
    }
    let text = std::fs::read_to_string(repo().join("deploy/grafana/dashboards/churnd.json"))
        .expect("the dashboard is readable");
    assert!(
        !text.contains("\"uid\": \"prometheus\""),
        "a fixed data source uid is left in the dashboard"
    );
    let scope = "{job=~\"$job\", instance=~\"$instance\"";
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = &panel["title"];
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {title} must use the data source variable"
        );
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "a query of panel {title} must use the data source variable"
            );
            let expr = target["expr"].as_str().expect("a PromQL expr");
            let selectors = metric_selectors(expr);
            assert!(
                !selectors.is_empty(),
                "panel {title}: no metric in `{expr}`"
            );
            for (name, after) in selectors {
                assert!(
                    after.starts_with(scope),
                    "panel {title}: {name} is not scoped to {scope}}} in `{expr}`"
                );
            }
        }
    }
}
