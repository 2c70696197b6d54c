//! Gauges of one engine per partition in one process (see `crate::engine::partitioned`).
//! Each engine sets its gauges as if it were alone, so each gets gauges of its own, kept out
//! of the registry, and the gauges exported are combined from them after every batch and
//! tick: customers, open tasks, budgets per day and spend add up; the clock and how far
//! catching up is behind are the furthest partition's; a budget's priority bar is the lowest
//! (`+Inf` only once every partition's share of the day is spent). Counters and histograms
//! are shared: each engine adds what it did.

use prometheus::{GaugeVec, Histogram, HistogramOpts, IntGauge, IntGaugeVec, Opts};

use super::engine::{BudgetFamilies, PoolFamilies};
use super::{BudgetSeries, EngineMetrics, PerLabel, PoolSeries};

/// A gauge outside any registry, for one partition's engine.
fn own_gauge() -> IntGauge {
    IntGauge::new("partition_gauge", "one partition's part").expect("a valid name")
}

fn own_gauge_vec(label: &str) -> IntGaugeVec {
    IntGaugeVec::new(
        Opts::new("partition_gauge", "one partition's part"),
        &[label],
    )
    .expect("a valid name")
}

fn own_float_gauge_vec(label: &str) -> GaugeVec {
    GaugeVec::new(
        Opts::new("partition_gauge", "one partition's part"),
        &[label],
    )
    .expect("a valid name")
}

fn own_histogram() -> Histogram {
    Histogram::with_opts(HistogramOpts::new(
        "partition_histogram",
        "one partition's part",
    ))
    .expect("a valid name")
}

impl EngineMetrics {
    /// The metrics of one partition's engine: the same counters and histograms, gauges of
    /// its own. Its batch histograms are its own too: the batch read is observed once, as a
    /// whole, by the engines' owner.
    pub fn for_partition(&self) -> Self {
        let mut m = self.clone();
        m.batch_entries = own_histogram();
        m.batch_seconds = own_histogram();
        m.customers = own_gauge();
        m.customers_max = own_gauge();
        m.customers_by_stage = PerLabel::new(&own_gauge_vec("stage"));
        m.customers_by_segment = PerLabel::new(&own_gauge_vec("segment"));
        m.customers_by_probability = PerLabel::new(&own_gauge_vec("range"));
        m.customers_by_region = own_gauge_vec("region");
        m.store_bytes = own_gauge();
        m.clock_seconds = own_gauge();
        m.follow_up.catching_up = own_gauge();
        m.follow_up.catch_up_behind_seconds = own_gauge();
        m.follow_up.open_tasks = own_gauge();
        for families in [&mut m.budget, &mut m.care_budget] {
            *families = BudgetFamilies {
                per_day: own_float_gauge_vec("action"),
                spent: own_float_gauge_vec("action"),
                bar: own_float_gauge_vec("action"),
                held_back: families.held_back.clone(),
            };
        }
        m.pool = PoolFamilies {
            spend_per_day: own_float_gauge_vec("kind"),
            spent: own_float_gauge_vec("kind"),
            bar: own_float_gauge_vec("kind"),
        };
        m
    }
}

/// The gauges of one engine (or the exported ones), resolved once.
struct GaugeSet {
    /// Combined by sum: customers, the cap, the table's bytes, open tasks, then customers by
    /// stage, segment, probability and region.
    summed: Vec<IntGauge>,
    /// Combined by maximum: the clock, catching up, how far behind.
    furthest: Vec<IntGauge>,
    budgets: Vec<BudgetSeries>,
    /// With a pooled win-back budget only.
    pool: Option<PoolSeries>,
}

impl GaugeSet {
    fn of(m: &EngineMetrics, regions: &[String], actions: &BudgetedActions) -> Self {
        let mut summed = vec![
            m.customers.clone(),
            m.customers_max.clone(),
            m.store_bytes.clone(),
            m.follow_up.open_tasks.clone(),
        ];
        summed.extend(m.customers_by_stage.iter().cloned());
        summed.extend(m.customers_by_segment.iter().cloned());
        summed.extend(m.customers_by_probability.iter().cloned());
        summed.extend(m.regions(regions.iter().map(String::as_str)));
        Self {
            summed,
            furthest: vec![
                m.clock_seconds.clone(),
                m.follow_up.catching_up.clone(),
                m.follow_up.catch_up_behind_seconds.clone(),
            ],
            budgets: m.budget(
                actions.winback.iter().map(String::as_str),
                actions.care.iter().map(String::as_str),
            ),
            pool: actions.pooled.then(|| m.pool()),
        }
    }
}

/// What the engines budget, as their settings fix it: the actions with a budget each
/// (win-back's, the care kinds'), and whether win-back's draw on a pooled spend.
pub struct BudgetedActions {
    pub winback: Vec<String>,
    pub care: Vec<String>,
    pub pooled: bool,
}

/// The partitions' gauges and the exported ones they are combined into.
pub struct PartitionGauges {
    parts: Vec<GaugeSet>,
    exported: GaugeSet,
}

impl PartitionGauges {
    /// `parts` are the partitions' metrics ([`EngineMetrics::for_partition`]), `exported`
    /// the registered ones; `regions` the region labels and `actions` what the engines
    /// publish of their budgets, the actions in their order.
    pub fn new(
        exported: &EngineMetrics,
        parts: &[EngineMetrics],
        regions: &[String],
        actions: &BudgetedActions,
    ) -> Self {
        Self {
            parts: parts
                .iter()
                .map(|m| GaugeSet::of(m, regions, actions))
                .collect(),
            exported: GaugeSet::of(exported, regions, actions),
        }
    }

    /// Sets the exported gauges from the partitions'.
    pub fn publish(&self) {
        for (i, gauge) in self.exported.summed.iter().enumerate() {
            gauge.set(self.parts.iter().map(|p| p.summed[i].get()).sum());
        }
        for (i, gauge) in self.exported.furthest.iter().enumerate() {
            let furthest = self.parts.iter().map(|p| p.furthest[i].get()).max();
            gauge.set(furthest.unwrap_or(0));
        }
        for (i, series) in self.exported.budgets.iter().enumerate() {
            let parts = || self.parts.iter().map(|p| &p.budgets[i]);
            series.per_day.set(parts().map(|s| s.per_day.get()).sum());
            series.spent.set(parts().map(|s| s.spent.get()).sum());
            let bar = parts().map(|s| s.bar.get()).fold(f64::INFINITY, f64::min);
            series.bar.set(bar);
        }
        if let Some(series) = &self.exported.pool {
            let parts = || self.parts.iter().filter_map(|p| p.pool.as_ref());
            series
                .spend_per_day
                .set(parts().map(|s| s.spend_per_day.get()).sum());
            series.spent.set(parts().map(|s| s.spent.get()).sum());
            let bar = parts().map(|s| s.bar.get()).fold(f64::INFINITY, f64::min);
            series.bar.set(bar);
        }
    }

    /// The histograms a partition's engine observes per batch are its own: the whole batch
    /// is observed here.
    pub fn observe_batch(exported: &EngineMetrics, entries: usize, seconds: f64) {
        exported.batch_entries.observe(entries as f64);
        exported.batch_seconds.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn exported_gauges_combine_the_partitions() {
        let metrics = Metrics::new();
        let exported = &metrics.engine;
        let parts = [exported.for_partition(), exported.for_partition()];
        let regions = ["eu".to_string(), "none".to_string()];
        let actions = BudgetedActions {
            winback: vec!["coupon".into()],
            care: vec![],
            pooled: true,
        };
        let gauges = PartitionGauges::new(exported, &parts, &regions, &actions);
        for (i, m) in parts.iter().enumerate() {
            m.customers.set(10 + i as i64);
            m.clock_seconds.set(100 * (1 + i as i64));
            m.regions(["eu"].into_iter())[0].set(3);
            let budget = &m.budget(["coupon"].into_iter(), [].into_iter())[0];
            budget.per_day.set(50.0);
            budget.bar.set(if i == 0 { f64::INFINITY } else { 2.0 });
            let pool = m.pool();
            pool.spend_per_day.set(101.0);
            pool.spent.set(10.0 * (1 + i) as f64);
            pool.bar.set(if i == 0 { 0.5 } else { f64::INFINITY });
        }
        assert_eq!(
            exported.customers.get(),
            0,
            "the partitions' own are not exported"
        );
        gauges.publish();
        assert_eq!(exported.customers.get(), 21);
        assert_eq!(exported.clock_seconds.get(), 200);
        assert_eq!(exported.regions(["eu"].into_iter())[0].get(), 6);
        let budget = &exported.budget(["coupon"].into_iter(), [].into_iter())[0];
        assert_eq!(budget.per_day.get(), 100.0);
        assert_eq!(budget.bar.get(), 2.0);
        let pool = exported.pool();
        assert_eq!(pool.spend_per_day.get(), 202.0);
        assert_eq!(pool.spent.get(), 30.0);
        assert_eq!(pool.bar.get(), 0.5, "the lowest partition's bar");
    }
}
