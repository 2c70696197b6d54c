//! The engine: what became of each entry, how long batches and scorings take, and the
//! population of customers held.
//!
//! The engine counts per event into local arrays and publishes once per batch; every series
//! it touches there is resolved at registration ([`PerLabel`]), so publishing hashes no label
//! strings.

use prometheus::{Gauge, GaugeVec, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

use super::labels::PerLabel;
use super::model::ModelInfo;
use super::Registrar;
use crate::classify::{LifecycleStage, Segment};
use crate::decide::Group;
use crate::event::EventKind;

/// Labels of the churn-probability distribution gauge, one per tenth.
pub const PROBABILITY_BUCKETS: [&str; 10] = [
    "0.0-0.1", "0.1-0.2", "0.2-0.3", "0.3-0.4", "0.4-0.5", "0.5-0.6", "0.6-0.7", "0.7-0.8",
    "0.8-0.9", "0.9-1.0",
];

/// A tenth of the churn probability, the `range` label of
/// `churnd_customers_by_churn_probability`: 0 is `0.0-0.1`, 9 is `0.9-1.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbabilityRange(u8);

impl ProbabilityRange {
    pub const ALL: [Self; 10] = [
        Self(0),
        Self(1),
        Self(2),
        Self(3),
        Self(4),
        Self(5),
        Self(6),
        Self(7),
        Self(8),
        Self(9),
    ];

    pub fn as_str(self) -> &'static str {
        PROBABILITY_BUCKETS[usize::from(self.0)]
    }
}

impl super::labels::Label for ProbabilityRange {
    const ALL: &'static [Self] = &Self::ALL;
    fn as_str(self) -> &'static str {
        Self::as_str(self)
    }
    fn index(self) -> usize {
        usize::from(self.0)
    }
}

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

super::labels::label_enum!(Outcome);

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

    pub(crate) fn publish(&self, metrics: &EngineMetrics) {
        let (known, unknown) = self.counts.split_at(EventKind::ALL.len());
        for (series, row) in metrics.events_by_kind.iter().zip(known) {
            for (counter, &n) in series.iter().zip(row) {
                if n > 0 {
                    counter.inc_by(n);
                }
            }
        }
        // Entries of no known type: rare, and the series appears only once one is seen.
        for (outcome, &n) in Outcome::ALL.iter().zip(&unknown[0]) {
            if n > 0 {
                metrics
                    .events
                    .with_label_values(&[UNKNOWN_TYPE, outcome.as_str()])
                    .inc_by(n);
            }
        }
    }
}

#[derive(Clone)]
pub struct EngineMetrics {
    /// `churnd_events_total`, for the `unknown` type (see [`OutcomeCounts::publish`]).
    events: IntCounterVec,
    /// `churnd_events_total` per known event kind (indexed by [`EventKind::index`]), per
    /// outcome.
    events_by_kind: Box<[PerLabel<Outcome, IntCounter>]>,
    pub batch_entries: Histogram,
    pub batch_seconds: Histogram,
    pub scoring_seconds: Histogram,
    pub event_latency_seconds: Histogram,
    pub rescores: IntCounter,
    pub customers: IntGauge,
    pub customers_max: IntGauge,
    pub customers_evicted: IntCounter,
    pub customers_by_stage: PerLabel<LifecycleStage, IntGauge>,
    pub customers_by_segment: PerLabel<Segment, IntGauge>,
    pub customers_by_probability: PerLabel<ProbabilityRange, IntGauge>,
    /// Open: the regions are `profiles.regions` (plus `other` and `none`), known only from
    /// the settings; see [`Self::regions`].
    pub(super) customers_by_region: IntGaugeVec,
    pub store_bytes: IntGauge,
    pub clock_seconds: IntGauge,
    pub recoveries: PerLabel<Group, IntCounter>,
    /// Win-back candidates whose learned lift did not pay for the action.
    pub winback_no_lift: IntCounter,
    /// Open: by configured action (`[winback.budgets]`); see [`Self::budget`].
    pub(super) budget: BudgetFamilies,
    /// Open: by configured action (`[tasks.budgets]`); see [`Self::budget`].
    pub(super) care_budget: BudgetFamilies,
    /// Open: exported only with a pooled win-back budget; see [`Self::pool`].
    pub(super) pool: PoolFamilies,
    /// The engine swaps models in, so it reports the version serving.
    pub model: ModelInfo,
    /// Expired tasks, catching up, open tasks.
    pub follow_up: super::FollowUpMetrics,
}

impl EngineMetrics {
    pub(super) fn register(
        r: &mut Registrar,
        model: ModelInfo,
        follow_up: super::FollowUpMetrics,
    ) -> Self {
        let events = r.counter_vec(
            "churnd_events_total",
            "Stream entries consumed, by event type and outcome (applied, dead_lettered, already_applied).",
            &["type", "outcome"],
        );
        let events_by_kind = EventKind::ALL
            .iter()
            .map(|kind| PerLabel::with_prefix(&events, &[kind.as_str()]))
            .collect();
        Self {
            events_by_kind,
            events,
            batch_entries: r.histogram(
                "churnd_batch_entries",
                "Entries per batch read from Redis.",
                vec![1.0, 10.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0],
            ),
            batch_seconds: r.histogram(
                "churnd_batch_processing_duration_seconds",
                "Time to apply one batch to customer state (parse, update, score, classify).",
                prometheus::exponential_buckets(1e-5, 2.5, 12).expect("valid buckets"),
            ),
            scoring_seconds: r.histogram(
                "churnd_scoring_duration_seconds",
                "Time to compute features, score and classify one customer (1 in 64 sampled).",
                prometheus::exponential_buckets(5e-8, 2.5, 12).expect("valid buckets"),
            ),
            event_latency_seconds: r.histogram(
                "churnd_event_latency_seconds",
                "From an entry's stream ID time (XADD) to its processing.",
                prometheus::exponential_buckets(1e-4, 2.5, 16).expect("valid buckets"),
            ),
            rescores: r.counter(
                "churnd_silence_rescores_total",
                "Customers re-scored because time passed without events.",
            ),
            customers: r.gauge("churnd_customers_tracked", "Customers held in memory."),
            customers_max: r.gauge(
                "churnd_customers_max",
                "The most customers held (state.max_customers); beyond it the least recently active are forgotten.",
            ),
            customers_evicted: r.counter(
                "churnd_customers_evicted_total",
                "Customers forgotten to stay within state.max_customers (the least recently active).",
            ),
            customers_by_stage: PerLabel::new(&r.gauge_vec(
                "churnd_customers_by_stage",
                "Customers by lifecycle stage, as of their last scoring.",
                &["stage"],
            )),
            customers_by_segment: PerLabel::new(&r.gauge_vec(
                "churnd_customers_by_segment",
                "Buyers by RFM value segment, as of their last scoring.",
                &["segment"],
            )),
            customers_by_probability: PerLabel::new(&r.gauge_vec(
                "churnd_customers_by_churn_probability",
                "Buyers by churn probability (tenths), as of their last scoring.",
                &["range"],
            )),
            customers_by_region: r.gauge_vec(
                "churnd_customers_by_region",
                "Customers by the region of their profile: one of profiles.regions, other, or none (no region).",
                &["region"],
            ),
            store_bytes: r.gauge(
                "churnd_customer_store_bytes",
                "Estimated memory the customer table and its timers occupy (entries in use and the index; room reserved for growth is not counted).",
            ),
            clock_seconds: r.gauge(
                "churnd_clock_seconds",
                "The daemon's \"now\" as Unix seconds (the event-time watermark under clock.mode=event).",
            ),
            recoveries: PerLabel::new(&r.counter_vec(
                "churnd_winback_recoveries_total",
                "Customers who bought again after a win-back task, by group.",
                &["group"],
            )),
            winback_no_lift: r
                .counter_vec(
                    "churnd_winback_skipped_total",
                    "Win-back candidates given no task, by reason: no_lift, the lift measured for the action in the customer's segment (winback.policy = learned) does not pay for its cost (looked at again the next day).",
                    &["reason"],
                )
                .with_label_values(&["no_lift"]),
            budget: BudgetFamilies::new(r, "winback", "win-back", "winback.budgets"),
            care_budget: BudgetFamilies::new(r, "care", "care", "tasks.budgets"),
            pool: PoolFamilies::new(r),
            model,
            follow_up,
        }
    }

    /// The series of each budgeted action, win-back's then the care kinds', in the order
    /// given; the engine resolves them once, as its settings fix the actions.
    pub fn budget<'a>(
        &self,
        winback: impl Iterator<Item = &'a str>,
        care: impl Iterator<Item = &'a str>,
    ) -> Vec<BudgetSeries> {
        let mut series: Vec<BudgetSeries> = winback.map(|a| self.budget.series(a)).collect();
        series.extend(care.map(|a| self.care_budget.series(a)));
        series
    }

    /// The pooled win-back budget's series (`[winback.budget]`), resolved only by an engine
    /// that has one, so that a daemon without a pool exports none.
    pub fn pool(&self) -> PoolSeries {
        self.pool.series()
    }

    /// The gauge of each region label, in the order given; the engine resolves them once,
    /// as its settings fix the labels.
    pub fn regions<'a>(&self, labels: impl Iterator<Item = &'a str>) -> Vec<IntGauge> {
        labels
            .map(|region| self.customers_by_region.with_label_values(&[region]))
            .collect()
    }
}

/// The budget families of win-back's or the care kinds' actions, labelled by action.
#[derive(Clone)]
pub(super) struct BudgetFamilies {
    pub(super) per_day: GaugeVec,
    pub(super) spent: GaugeVec,
    pub(super) bar: GaugeVec,
    pub(super) held_back: IntCounterVec,
}

impl BudgetFamilies {
    /// `churnd_<prefix>_budget_*` for the actions of `[<section>]`, described as `what`'s.
    fn new(r: &mut Registrar, prefix: &str, what: &str, section: &str) -> Self {
        Self {
            per_day: r.float_gauge_vec(
                &format!("churnd_{prefix}_budget_per_day"),
                &format!("What a budgeted {what} action may spend per day ({section}.<action>.per_day)."),
                &["action"],
            ),
            spent: r.float_gauge_vec(
                &format!("churnd_{prefix}_budget_spent"),
                &format!("Spent on a budgeted {what} action on the clock's current day (tasks of both groups times the cost)."),
                &["action"],
            ),
            bar: r.float_gauge_vec(
                &format!("churnd_{prefix}_budget_priority_bar"),
                &format!("The priority a {what} candidate of the action needs now to get a task (+Inf: the day's budget is spent)."),
                &["action"],
            ),
            held_back: r.counter_vec(
                &format!("churnd_{prefix}_candidates_held_back_total"),
                &format!("{} candidates not given a task because the action's budget did not afford it that day (looked at again the next day).", capitalised(what)),
                &["action"],
            ),
        }
    }

    fn series(&self, action: &str) -> BudgetSeries {
        BudgetSeries {
            per_day: self.per_day.with_label_values(&[action]),
            spent: self.spent.with_label_values(&[action]),
            bar: self.bar.with_label_values(&[action]),
            held_back: self.held_back.with_label_values(&[action]),
        }
    }
}

/// The pooled win-back budget's families, labelled by kind (only `winback` has a pool).
#[derive(Clone)]
pub(super) struct PoolFamilies {
    pub(super) spend_per_day: GaugeVec,
    pub(super) spent: GaugeVec,
    pub(super) bar: GaugeVec,
}

impl PoolFamilies {
    fn new(r: &mut Registrar) -> Self {
        Self {
            spend_per_day: r.float_gauge_vec(
                "churnd_budget_pool_spend_per_day",
                "What all win-back actions together may spend per day (winback.budget.spend_per_day).",
                &["kind"],
            ),
            spent: r.float_gauge_vec(
                "churnd_budget_pool_spent",
                "Spent from the pooled budget on the clock's current day (tasks of both groups times their action's cost).",
                &["kind"],
            ),
            bar: r.float_gauge_vec(
                "churnd_budget_pool_value_per_cost_bar",
                "The expected incremental value per unit of cost a candidate needs now to get a task from the pooled budget (0: spend to spare; +Inf: the day's spend is gone).",
                &["kind"],
            ),
        }
    }

    fn series(&self) -> PoolSeries {
        PoolSeries {
            spend_per_day: self.spend_per_day.with_label_values(&["winback"]),
            spent: self.spent.with_label_values(&["winback"]),
            bar: self.bar.with_label_values(&["winback"]),
        }
    }
}

/// The pooled budget's series.
#[derive(Clone)]
pub struct PoolSeries {
    pub spend_per_day: Gauge,
    pub spent: Gauge,
    pub bar: Gauge,
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// One budgeted action's series.
#[derive(Clone)]
pub struct BudgetSeries {
    pub per_day: Gauge,
    pub spent: Gauge,
    pub bar: Gauge,
    pub held_back: IntCounter,
}
