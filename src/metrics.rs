//! Every Prometheus metric churnd exports, defined in one place.
//!
//! Names follow Prometheus conventions: `churnd_` prefix, base units, `_total` on counters;
//! the process's own CPU, memory and file descriptors carry the standard `process_*` names
//! every client library uses ([`process`]).
//! Labels take values from small fixed sets (event types, reasons, stages, segments,
//! configured actions, stream names); never a customer ID. Each daemon owns its registry,
//! so several can run in one process (tests).

use std::cell::RefCell;
use std::sync::Arc;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

#[cfg(target_os = "linux")]
mod process;

use crate::classify::{LifecycleStage, Segment};
use crate::decide::Group;
use crate::decide::TaskKind;
use crate::event::{EventKind, Reason};

/// The source revision built from (build.rs: the git commit, the container build's `REVISION`
/// argument, or `unknown`), the `revision` label of `churnd_build_info`.
pub const REVISION: &str = env!("CHURND_REVISION");

/// Labels of the churn-probability distribution gauge, one per tenth.
pub const PROBABILITY_BUCKETS: [&str; 10] = [
    "0.0-0.1", "0.1-0.2", "0.2-0.3", "0.3-0.4", "0.4-0.5", "0.5-0.6", "0.6-0.7", "0.7-0.8",
    "0.8-0.9", "0.9-1.0",
];

/// What became of a stream entry, the `outcome` label of `churnd_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied to the customer's state.
    Applied,
    /// Rejected and written to the dead-letter stream.
    DeadLettered,
    /// Applied before (redelivered after Redis lost acknowledgements); only acknowledged.
    AlreadyApplied,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Self::Applied, Self::DeadLettered, Self::AlreadyApplied];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::DeadLettered => "dead_lettered",
            Self::AlreadyApplied => "already_applied",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The `type` label of entries whose type field is missing or unknown.
const UNKNOWN_TYPE: &str = "unknown";

/// Entries by type and outcome, counted locally over a batch and published once.
#[derive(Debug, Default)]
pub struct OutcomeCounts {
    /// Indexed by event kind (the last slot: unknown) and outcome.
    counts: [[u64; Outcome::ALL.len()]; EventKind::ALL.len() + 1],
}

impl OutcomeCounts {
    pub fn add(&mut self, kind: Option<EventKind>, outcome: Outcome) {
        let k = kind.map_or(EventKind::ALL.len(), EventKind::index);
        self.counts[k][outcome.index()] += 1;
    }

    pub fn publish(&self, metrics: &Metrics) {
        let types = EventKind::ALL.map(EventKind::as_str);
        let types = types.iter().chain([&UNKNOWN_TYPE]);
        for (ty, row) in types.zip(&self.counts) {
            for (outcome, &n) in Outcome::ALL.iter().zip(row) {
                if n > 0 {
                    metrics
                        .events
                        .with_label_values(&[ty, outcome.as_str()])
                        .inc_by(n);
                }
            }
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub events: IntCounterVec,
    pub dead_lettered: IntCounterVec,
    pub entries_acked: IntCounter,
    pub entries_claimed: IntCounter,
    pub source_inflight_bytes: IntGauge,
    pub batch_entries: Histogram,
    pub batch_seconds: Histogram,
    pub scoring_seconds: Histogram,
    pub event_latency_seconds: Histogram,
    pub sink_seconds: Histogram,
    pub consumer_lag: IntGaugeVec,
    pub consumer_pending: IntGaugeVec,
    pub output_length: IntGaugeVec,
    pub output_max_length: IntGaugeVec,
    pub output_removed: IntGaugeVec,
    pub output_group_unread: IntGaugeVec,
    pub output_group_trimmed_unread: IntCounterVec,
    pub customers: IntGauge,
    pub customers_max: IntGauge,
    pub customers_evicted: IntCounter,
    pub customers_by_stage: IntGaugeVec,
    pub customers_by_segment: IntGaugeVec,
    pub customers_by_probability: IntGaugeVec,
    pub customers_by_region: IntGaugeVec,
    pub store_bytes: IntGauge,
    pub rescores: IntCounter,
    pub tasks: IntCounterVec,
    pub tasks_by_kind: IntCounterVec,
    pub tasks_duplicate: IntCounter,
    pub recoveries: IntCounterVec,
    pub model_info: IntGaugeVec,
    pub model_reloads: IntCounterVec,
    pub model_reload_successful: IntGauge,
    pub redis_connected: IntGaugeVec,
    pub redis_errors: IntCounterVec,
    pub http_unauthorized: IntCounter,
    pub http_connections: IntGauge,
    pub http_connections_max: IntGauge,
    pub http_connections_closed: IntCounterVec,
    pub http_connections_waited: IntCounter,
    pub http_accept_errors: IntCounter,
    pub ready: IntGauge,
    pub clock_seconds: IntGauge,
    pub snapshots: IntCounterVec,
    pub snapshot_pause_seconds: Histogram,
    pub snapshot_write_seconds: Histogram,
    pub snapshot_bytes: IntGauge,
    pub snapshot_last_success: IntGauge,
    pub snapshots_rejected: IntCounter,
    pub recovery_seconds: Gauge,
    /// Every family registered, with its label names, including those without a series yet
    /// (the reference in docs/metrics.md is checked against it).
    families: Arc<[(String, Vec<String>)]>,
}

/// Why churnd closed an HTTP connection, the `reason` label of
/// `churnd_http_connections_closed_total` (see `http::connection::Close`).
pub const HTTP_CLOSE_REASONS: [&str; 4] = [
    "header_timeout",
    "idle_timeout",
    "request_timeout",
    "evicted",
];

/// Outcomes of a snapshot, the `outcome` label of `churnd_snapshots_total`.
pub const SNAPSHOT_OUTCOMES: [&str; 4] = ["written", "skipped", "failed", "abandoned"];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let families = RefCell::new(Vec::new());
        let register = |c: Box<dyn Collector>| {
            families.borrow_mut().extend(
                c.desc()
                    .into_iter()
                    .map(|d| (d.fq_name.clone(), d.variable_labels.clone())),
            );
            registry.register(c).expect("unique metric");
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            register(Box::new(m.clone()));
            m
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let m = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            register(Box::new(m.clone()));
            m
        };
        let counter = |name: &str, help: &str| {
            let m = IntCounter::new(name, help).expect("valid metric");
            register(Box::new(m.clone()));
            m
        };
        let gauge = |name: &str, help: &str| {
            let m = IntGauge::new(name, help).expect("valid metric");
            register(Box::new(m.clone()));
            m
        };
        let float_gauge = |name: &str, help: &str| {
            let m = Gauge::new(name, help).expect("valid metric");
            register(Box::new(m.clone()));
            m
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let m = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            register(Box::new(m.clone()));
            m
        };

        let build = gauge_vec(
            "churnd_build_info",
            "The version and source revision churnd was built from (value 1); revision is the git commit, or unknown.",
            &["version", "revision"],
        );
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), REVISION])
            .set(1);
        // CPU, memory and file descriptors under the standard process_* names.
        #[cfg(target_os = "linux")]
        register(Box::<process::ProcessCollector>::default());

        let mut m = Self {
            events: counter_vec(
                "churnd_events_total",
                "Stream entries consumed, by event type and outcome (applied, dead_lettered, already_applied).",
                &["type", "outcome"],
            ),
            dead_lettered: counter_vec(
                "churnd_events_dead_lettered_total",
                "Entries rejected and written to the dead-letter stream, by reason.",
                &["reason"],
            ),
            entries_acked: counter(
                "churnd_entries_acknowledged_total",
                "Stream entries acknowledged after their effects were written.",
            ),
            entries_claimed: counter(
                "churnd_entries_claimed_total",
                "Entries taken over from other consumers of the group after source.claim_idle_ms (a replica that is gone).",
            ),
            source_inflight_bytes: gauge(
                "churnd_source_inflight_bytes",
                "Bytes of entries read and not yet applied (bounded by source.max_inflight_bytes)",
            ),
            batch_entries: histogram(
                "churnd_batch_entries",
                "Entries per batch read from Redis.",
                vec![1.0, 10.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0],
            ),
            batch_seconds: histogram(
                "churnd_batch_processing_duration_seconds",
                "Time to apply one batch to customer state (parse, update, score, classify).",
                prometheus::exponential_buckets(1e-5, 2.5, 12).expect("valid buckets"),
            ),
            scoring_seconds: histogram(
                "churnd_scoring_duration_seconds",
                "Time to compute features, score and classify one customer (1 in 64 sampled).",
                prometheus::exponential_buckets(5e-8, 2.5, 12).expect("valid buckets"),
            ),
            event_latency_seconds: histogram(
                "churnd_event_latency_seconds",
                "From an entry's stream ID time (XADD) to its processing.",
                prometheus::exponential_buckets(1e-4, 2.5, 16).expect("valid buckets"),
            ),
            sink_seconds: histogram(
                "churnd_sink_write_duration_seconds",
                "Time to write the tasks, dead letters and acknowledgements of one batch (or of the batches that queued up behind the previous write) to Redis.",
                prometheus::exponential_buckets(5e-5, 2.5, 14).expect("valid buckets"),
            ),
            consumer_lag: gauge_vec(
                "churnd_consumer_group_lag",
                "Entries in the stream not yet delivered to the consumer group (XINFO GROUPS lag).",
                &["stream"],
            ),
            consumer_pending: gauge_vec(
                "churnd_consumer_group_pending",
                "Entries delivered to the consumer group but not acknowledged (XINFO GROUPS pending).",
                &["stream"],
            ),
            output_length: gauge_vec(
                "churnd_output_stream_length",
                "Entries in each output stream (tasks, control group, dead letters): XINFO STREAM length, 0 while the stream does not exist.",
                &["stream"],
            ),
            output_max_length: gauge_vec(
                "churnd_output_stream_max_length",
                "The approximate cap of each output stream (XADD MAXLEN ~: winback.max_len, tasks.max_len, dead_letter.max_len); the oldest entries are trimmed beyond it.",
                &["stream"],
            ),
            output_removed: gauge_vec(
                "churnd_output_stream_removed_entries",
                "Entries trimmed (MAXLEN ~) or deleted (XDEL) from each output stream since it was created: XINFO STREAM entries-added minus length (Redis 7.0 or later).",
                &["stream"],
            ),
            output_group_unread: gauge_vec(
                "churnd_output_stream_group_unread",
                "Entries of an output stream not yet delivered to a consumer group of its consumers (XINFO GROUPS lag, at most the stream's length); absent while Redis cannot tell.",
                &["stream", "group"],
            ),
            output_group_trimmed_unread: counter_vec(
                "churnd_output_stream_group_trimmed_unread_total",
                "Entries removed from an output stream (trimmed by MAXLEN ~, or deleted) before a consumer group read them, counted while the group is seen behind the stream's first entry.",
                &["stream", "group"],
            ),
            customers: gauge("churnd_customers_tracked", "Customers held in memory."),
            customers_max: gauge(
                "churnd_customers_max",
                "The most customers held (state.max_customers); beyond it the least recently active are forgotten.",
            ),
            customers_evicted: counter(
                "churnd_customers_evicted_total",
                "Customers forgotten to stay within state.max_customers (the least recently active).",
            ),
            customers_by_stage: gauge_vec(
                "churnd_customers_by_stage",
                "Customers by lifecycle stage, as of their last scoring.",
                &["stage"],
            ),
            customers_by_segment: gauge_vec(
                "churnd_customers_by_segment",
                "Buyers by RFM value segment, as of their last scoring.",
                &["segment"],
            ),
            customers_by_probability: gauge_vec(
                "churnd_customers_by_churn_probability",
                "Buyers by churn probability (tenths), as of their last scoring.",
                &["range"],
            ),
            customers_by_region: gauge_vec(
                "churnd_customers_by_region",
                "Customers by the region of their profile: one of profiles.regions, other, or none (no region).",
                &["region"],
            ),
            store_bytes: gauge(
                "churnd_customer_store_bytes",
                "Estimated memory the customer table and its timers occupy (entries in use and the index; room reserved for growth is not counted).",
            ),
            rescores: counter(
                "churnd_silence_rescores_total",
                "Customers re-scored because time passed without events.",
            ),
            tasks: counter_vec(
                "churnd_winback_tasks_total",
                "Win-back tasks written, by action and group (control-group tasks go to the control stream).",
                &["action", "group"],
            ),
            tasks_by_kind: counter_vec(
                "churnd_tasks_total",
                &format!(
                    "Tasks written, by kind ({}; winback in either group).",
                    TaskKind::ALL.map(TaskKind::as_str).join(", ")
                ),
                &["kind"],
            ),
            tasks_duplicate: counter(
                "churnd_winback_tasks_duplicate_total",
                "Win-back tasks not written because their ID had been written before (replays).",
            ),
            recoveries: counter_vec(
                "churnd_winback_recoveries_total",
                "Customers who bought again after a win-back task, by group.",
                &["group"],
            ),
            model_info: gauge_vec(
                "churnd_model_info",
                "The model version serving (value 1).",
                &["version"],
            ),
            model_reloads: counter_vec(
                "churnd_model_reloads_total",
                "Model reload attempts, by outcome (success, failure).",
                &["outcome"],
            ),
            model_reload_successful: gauge(
                "churnd_model_last_reload_successful",
                "1 when the last model reload succeeded (or none was tried since start), 0 when it failed and the previous model keeps serving.",
            ),
            redis_connected: gauge_vec(
                "churnd_redis_connected",
                "Whether the connection for each role (source, sink, monitor) is up.",
                &["role"],
            ),
            redis_errors: counter_vec(
                "churnd_redis_errors_total",
                "Failed Redis operations, by role.",
                &["role"],
            ),
            http_unauthorized: counter(
                "churnd_http_unauthorized_total",
                "Requests to the customer endpoints refused for a missing or wrong bearer token.",
            ),
            http_connections: gauge(
                "churnd_http_connections",
                "HTTP connections open.",
            ),
            http_connections_max: gauge(
                "churnd_http_connections_max",
                "The most HTTP connections served at once (http.max_connections).",
            ),
            http_connections_closed: counter_vec(
                "churnd_http_connections_closed_total",
                "HTTP connections churnd closed itself, by reason: header_timeout (no complete request head within http.header_timeout_ms), idle_timeout (no next request within http.idle_timeout_ms), request_timeout (response not handed over within http.request_timeout_ms), evicted (it waited for a request when a new connection needed its place at http.max_connections).",
                &["reason"],
            ),
            http_connections_waited: counter(
                "churnd_http_connections_waited_total",
                "New HTTP connections that had to wait for a place: all http.max_connections were in the middle of a request.",
            ),
            http_accept_errors: counter(
                "churnd_http_accept_errors_total",
                "Failures to accept an HTTP connection (such as too many open files); the listener pauses briefly after each.",
            ),
            ready: gauge(
                "churnd_ready",
                "1 when connected to Redis with a model loaded, customer state recovered and snapshots not failing (see /readyz for the reasons when 0).",
            ),
            clock_seconds: gauge(
                "churnd_clock_seconds",
                "The daemon's \"now\" as Unix seconds (the event-time watermark under clock.mode=event).",
            ),
            snapshots: counter_vec(
                "churnd_snapshots_total",
                "State snapshots, by outcome (written; skipped: nothing changed since the last one written; failed: encoding or the disk failed; abandoned: shutdown came before the effects they cover were written).",
                &["outcome"],
            ),
            snapshot_pause_seconds: histogram(
                "churnd_snapshot_pause_seconds",
                "Time event processing stops for each step of a snapshot: copying one slice of the customers out of the table.",
                prometheus::exponential_buckets(1e-4, 2.5, 12).expect("valid buckets"),
            ),
            snapshot_write_seconds: histogram(
                "churnd_snapshot_write_duration_seconds",
                "Time to encode a snapshot and write it durably (off the processing path).",
                prometheus::exponential_buckets(1e-3, 2.5, 12).expect("valid buckets"),
            ),
            snapshot_bytes: gauge(
                "churnd_snapshot_bytes",
                "Size of the last snapshot written.",
            ),
            snapshot_last_success: gauge(
                "churnd_snapshot_last_success_timestamp_seconds",
                "Unix time up to which the state on disk is current: the last snapshot written, or skipped because nothing had changed since; alert when it falls far behind.",
            ),
            snapshots_rejected: counter(
                "churnd_snapshots_rejected_total",
                "Snapshots found damaged at start (truncated, corrupt, another format), set aside for an older one.",
            ),
            recovery_seconds: float_gauge(
                "churnd_recovery_duration_seconds",
                "From start to state recovered: snapshot loaded and the input streams replayed to their end.",
            ),
            registry,
            families: Arc::from([]),
        };
        m.families = families.into_inner().into();
        m.model_reload_successful.set(1);
        m.initialise_label_sets();
        m
    }

    /// Creates every series of the fixed label sets, so dashboards see zeros, not gaps.
    fn initialise_label_sets(&self) {
        for kind in EventKind::ALL {
            for outcome in Outcome::ALL {
                self.events
                    .with_label_values(&[kind.as_str(), outcome.as_str()]);
            }
        }
        for reason in Reason::ALL {
            self.dead_lettered.with_label_values(&[reason.as_str()]);
        }
        for stage in LifecycleStage::ALL {
            self.customers_by_stage.with_label_values(&[stage.as_str()]);
        }
        for segment in Segment::ALL {
            self.customers_by_segment
                .with_label_values(&[segment.as_str()]);
        }
        for range in PROBABILITY_BUCKETS {
            self.customers_by_probability.with_label_values(&[range]);
        }
        for group in Group::ALL {
            self.recoveries.with_label_values(&[group.as_str()]);
        }
        for kind in TaskKind::ALL {
            self.tasks_by_kind.with_label_values(&[kind.as_str()]);
        }
        for outcome in ["success", "failure"] {
            self.model_reloads.with_label_values(&[outcome]);
        }
        for outcome in SNAPSHOT_OUTCOMES {
            self.snapshots.with_label_values(&[outcome]);
        }
        for reason in HTTP_CLOSE_REASONS {
            self.http_connections_closed.with_label_values(&[reason]);
        }
    }

    /// The name and label names of every metric family registered, those that have no
    /// series yet (a vector never set) included.
    pub fn families(&self) -> &[(String, Vec<String>)] {
        &self.families
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    pub fn set_model(&self, version: &str) {
        self.model_info.reset();
        self.model_info.with_label_values(&[version]).set(1);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        m.set_model("v1");
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
