//! Every Prometheus metric churnd exports, per component: each component gets the small
//! struct of the families it updates ([`EngineMetrics`], [`SourceMetrics`], [`SinkMetrics`],
//! …), all registered once into one registry by [`Metrics::new`].
//!
//! Names follow Prometheus conventions: `churnd_` prefix, base units, `_total` on counters;
//! the process's own CPU, memory and file descriptors carry the standard `process_*` names
//! every client library uses ([`process`]).
//! Labels take values from small fixed sets, as enums ([`labels`]: event types, reasons,
//! stages, segments, outcomes, roles), or from the settings (stream names, configured
//! actions, regions); never a customer ID. Each daemon owns its registry, so several can
//! run in one process (tests).

use std::sync::Arc;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

mod engine;
mod follow_up;
mod http;
pub(crate) mod labels;
mod lift;
mod model;
mod output;
mod ownership;
mod partitions;
#[cfg(target_os = "linux")]
mod process;
mod redis;
mod service;
mod sink;
mod snapshots;
mod source;

pub use engine::{
    BudgetSeries, EngineMetrics, Outcome, OutcomeCounts, PoolSeries, ProbabilityRange,
    PROBABILITY_BUCKETS,
};
pub use follow_up::FollowUpMetrics;
pub use http::HttpMetrics;
pub use labels::{Label, PerLabel};
pub use lift::LiftMetrics;
pub use model::{ModelInfo, ModelMetrics, ModelReload};
pub use output::OutputMetrics;
pub use ownership::OwnershipMetrics;
pub use partitions::{BudgetedActions, PartitionGauges};
pub use redis::{RedisMetrics, RedisRole, RoleMetrics};
pub use service::ServiceMetrics;
pub use sink::{DeadLettered, SinkMetrics};
pub use snapshots::{SnapshotMetrics, SnapshotOutcome, SnapshotSkipped, SnapshotWritten};
pub use source::SourceMetrics;

/// The source revision built from (build.rs: the git commit, the container build's `REVISION`
/// argument, or `unknown`), the `revision` label of `churnd_build_info`.
pub(crate) const REVISION: &str = env!("CHURND_REVISION");

/// The registry and every component's metrics. Cheap to clone: every handle is shared.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub service: ServiceMetrics,
    pub engine: EngineMetrics,
    pub source: SourceMetrics,
    pub sink: SinkMetrics,
    pub output: OutputMetrics,
    pub snapshots: SnapshotMetrics,
    pub redis: RedisMetrics,
    pub http: HttpMetrics,
    pub model: ModelMetrics,
    pub lift: LiftMetrics,
    pub ownership: OwnershipMetrics,
    /// Every family registered, with its label names, including those without a series yet
    /// (the reference in docs/metrics.md is checked against it).
    families: Arc<[(String, Vec<String>)]>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registrar {
            registry: Registry::new(),
            families: Vec::new(),
        };
        let service = ServiceMetrics::register(&mut r);
        // CPU, memory and file descriptors under the standard process_* names.
        #[cfg(target_os = "linux")]
        r.collector(Box::<process::ProcessCollector>::default());
        let model = ModelMetrics::register(&mut r);
        let follow_up = FollowUpMetrics::register(&mut r);
        Self {
            service,
            engine: EngineMetrics::register(&mut r, model.info.clone(), follow_up.clone()),
            source: SourceMetrics::register(&mut r),
            sink: SinkMetrics::register(&mut r, follow_up),
            output: OutputMetrics::register(&mut r),
            snapshots: SnapshotMetrics::register(&mut r),
            redis: RedisMetrics::register(&mut r),
            http: HttpMetrics::register(&mut r),
            lift: LiftMetrics::register(&mut r),
            ownership: OwnershipMetrics::register(&mut r),
            model,
            registry: r.registry,
            families: r.families.into(),
        }
    }

    /// The name and label names of every metric family registered, those that have no
    /// series yet (a vector never set) included.
    pub fn families(&self) -> &[(String, Vec<String>)] {
        &self.families
    }

    /// The text exposition format.
    pub(crate) fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers families into the registry and records each with its label names, so that
/// [`Metrics::families`] lists every family whether or not it has series yet. One method
/// per metric type; a name used twice panics at start (every test builds the registry).
pub(crate) struct Registrar {
    registry: Registry,
    families: Vec<(String, Vec<String>)>,
}

impl Registrar {
    fn collector(&mut self, c: Box<dyn Collector>) {
        self.families.extend(
            c.desc()
                .into_iter()
                .map(|d| (d.fq_name.clone(), d.variable_labels.clone())),
        );
        self.registry.register(c).expect("unique metric");
    }

    fn add<C: Collector + Clone + 'static>(&mut self, metric: prometheus::Result<C>) -> C {
        let metric = metric.expect("valid metric");
        self.collector(Box::new(metric.clone()));
        metric
    }

    fn counter(&mut self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help))
    }

    fn counter_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels))
    }

    fn gauge(&mut self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help))
    }

    fn gauge_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels))
    }

    fn float_gauge(&mut self, name: &str, help: &str) -> Gauge {
        self.add(Gauge::new(name, help))
    }

    fn float_gauge_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.add(GaugeVec::new(Opts::new(name, help), labels))
    }

    fn histogram(&mut self, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        self.add(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::TaskKind;

    /// The tables of docs/metrics.md: per metric (the first cell, in backticks), the text
    /// of its labels cell.
    fn documented_metrics() -> Vec<(String, String)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md");
        let text = std::fs::read_to_string(path).expect("docs/metrics.md is readable");
        text.lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.strip_prefix('|')?.split(" | ").collect();
                let name = cells.first()?.trim().strip_prefix('`')?.strip_suffix('`')?;
                (name.starts_with("churnd_") || name.starts_with("process_"))
                    .then(|| (name.to_string(), cells.get(2).unwrap_or(&"").to_string()))
            })
            .collect()
    }

    #[test]
    fn every_metric_is_documented_and_every_documented_metric_exists() {
        let metrics = Metrics::new();
        let registered = metrics.families();
        assert!(registered.len() > 50, "{} families", registered.len());
        let documented = documented_metrics();
        let mut problems = Vec::new();
        for (name, labels) in registered {
            match documented.iter().find(|(d, _)| d == name) {
                None => problems.push(format!("{name} is not in docs/metrics.md")),
                Some((_, cell)) => {
                    for label in labels {
                        if !cell.contains(&format!("`{label}`")) {
                            problems.push(format!(
                                "{name}: label `{label}` is not in its labels cell ({cell:?})"
                            ));
                        }
                    }
                }
            }
        }
        for (name, _) in &documented {
            // The process collector reads /proc: Linux only.
            let linux_only = name.starts_with("process_") && !cfg!(target_os = "linux");
            if !linux_only && !registered.iter().any(|(r, _)| r == name) {
                problems.push(format!(
                    "docs/metrics.md documents {name}, which churnd does not register"
                ));
            }
            if documented.iter().filter(|(d, _)| d == name).count() > 1 {
                problems.push(format!("docs/metrics.md documents {name} twice"));
            }
        }
        // Families registered but never set are not in the exposition: the list must not
        // depend on what has happened yet.
        assert!(
            registered
                .iter()
                .any(|(n, _)| n == "churnd_output_stream_group_unread"),
            "a vector without series yet is listed"
        );
        problems.dedup();
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn the_revision_is_the_commit_built_from() {
        // build.rs asks git, unless CHURND_REVISION is given (as the container build does).
        let git = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        match (std::env::var("CHURND_REVISION"), git) {
            (Err(_), Some(commit)) => assert_eq!(REVISION, commit),
            (Err(_), None) => assert_eq!(REVISION, "unknown"),
            (Ok(given), _) if !given.trim().is_empty() => assert_eq!(REVISION, given.trim()),
            (Ok(_), _) => assert!(!REVISION.is_empty()),
        }
    }

    #[test]
    fn renders_prefixed_metrics_with_fixed_label_sets() {
        let m = Metrics::new();
        m.model.info.set("v1");
        let text = m.render();
        assert!(text.contains("churnd_events_total{outcome=\"applied\",type=\"purchase\"} 0"));
        assert!(text.contains("churnd_customers_by_stage{stage=\"churned\"} 0"));
        assert!(text.contains("churnd_model_info{version=\"v1\"} 1"));
        assert!(text.contains(&format!(
            "churnd_build_info{{revision=\"{REVISION}\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        let kinds = text
            .lines()
            .find(|l| l.starts_with("# HELP churnd_tasks_total "))
            .expect("the help of churnd_tasks_total");
        for kind in TaskKind::ALL {
            assert!(kinds.contains(kind.as_str()), "{kind:?} not in {kinds}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.starts_with("churnd_") || line.starts_with("process_"),
                "unprefixed metric: {line}"
            );
        }
        #[cfg(target_os = "linux")]
        for name in ["process_cpu_seconds_total", "process_resident_memory_bytes"] {
            assert!(text.contains(&format!("\n{name} ")), "{name} missing");
        }
        assert!(!text.contains("churnd_process_"), "the old process names");
    }
}
