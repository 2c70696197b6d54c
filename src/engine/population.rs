//! Customers counted by stage, segment, probability tenth and region, kept as they change
//! and published as gauges; the segment thresholds drawn from the population.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::classify::{LifecycleStage, RfmThresholds, Segment};
use crate::config::SegmentMode;
use crate::features::store::CustomerIdx;
use crate::features::Rfm;
use crate::metrics::PROBABILITY_BUCKETS;
use crate::time::{self, UnixSeconds};

use super::{Customer, Engine};

/// Population thresholds need at least this many buyers to mean something.
const MIN_POPULATION_SAMPLE: usize = 30;

/// Customers by stage, segment and probability tenth, kept incrementally.
#[derive(Debug, Default, Clone)]
pub(super) struct Population {
    pub(super) stage: [i64; LifecycleStage::ALL.len()],
    pub(super) segment: [i64; Segment::ALL.len()],
    pub(super) bucket: [i64; PROBABILITY_BUCKETS.len()],
    /// Customers with a profile by [`Profiles::region`] index (the last, `none`, is derived:
    /// everyone else).
    pub(super) region: Vec<i64>,
}

impl Population {
    /// Adds (`+1`) or removes (`-1`) a customer's last classification.
    pub(super) fn count(&mut self, c: &Customer, delta: i64) {
        if let Some(stage) = c.stage {
            self.stage[stage.index()] += delta;
        }
        if let Some(segment) = c.segment {
            self.segment[segment.index()] += delta;
        }
        if let Some(bucket) = c.bucket {
            self.bucket[usize::from(bucket)] += delta;
        }
    }
}

/// Totals for people (the demo) and tests.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub now: String,
    pub customers: usize,
    pub by_stage: BTreeMap<&'static str, i64>,
    pub by_segment: BTreeMap<&'static str, i64>,
    pub by_churn_probability: BTreeMap<&'static str, i64>,
    /// Customers by the region of their profile (`none`: no region).
    pub by_region: BTreeMap<String, i64>,
    pub thresholds: RfmThresholds,
    /// With partitions: the partitions whose customers these are (a replica's own, under
    /// `partitions.ownership = leases`), so that the summaries of several replicas can be
    /// added up without counting a partition twice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<u16>>,
}

impl Engine {
    /// Moves the customer between population counts if their classification changed.
    pub(super) fn reclassify(
        &mut self,
        idx: CustomerIdx,
        stage: LifecycleStage,
        segment: Option<Segment>,
        bucket: Option<u8>,
    ) {
        let c = self.store.get_mut(idx);
        let pop = &mut self.population;
        if c.stage != Some(stage) {
            if let Some(old) = c.stage {
                pop.stage[old.index()] -= 1;
            }
            pop.stage[stage.index()] += 1;
            c.stage = Some(stage);
        }
        if c.segment != segment {
            if let Some(old) = c.segment {
                pop.segment[old.index()] -= 1;
            }
            if let Some(new) = segment {
                pop.segment[new.index()] += 1;
            }
            c.segment = segment;
        }
        if c.bucket != bucket {
            if let Some(old) = c.bucket {
                pop.bucket[usize::from(old)] -= 1;
            }
            if let Some(new) = bucket {
                pop.bucket[usize::from(new)] += 1;
            }
            c.bucket = bucket;
        }
    }

    /// Under `segments.mode = population`, recomputes R/F/M thresholds as the medians of a
    /// sample of buyers, once per `segments.refresh_secs` of clock time.
    pub(super) fn refresh_thresholds(&mut self, now: UnixSeconds) {
        let seg = &self.settings.segments;
        if seg.mode != SegmentMode::Population || now < self.next_threshold_refresh {
            return;
        }
        self.next_threshold_refresh = now.saturating_add(seg.refresh_secs.get());
        let step = (self.store.len() / seg.sample_size.get()).max(1);
        let mut sample: Vec<Rfm> = (0..self.store.len())
            .step_by(step)
            .filter_map(|i| self.store.get(i as CustomerIdx).features.rfm(now))
            .collect();
        if sample.len() >= MIN_POPULATION_SAMPLE {
            if let Some(t) = RfmThresholds::medians(&mut sample) {
                self.thresholds = t;
            }
        }
    }

    /// Copies population counts to the gauges (once per batch or tick).
    pub(super) fn publish(&self) {
        let m = &self.metrics;
        m.customers.set(self.store.len() as i64);
        m.clock_seconds.set(i64::from(self.now()));
        let f = &m.follow_up;
        f.open_tasks.set(self.open_tasks.len() as i64);
        let behind = self
            .catch_up
            .position()
            .map(|p| self.wall.saturating_sub(p));
        f.catching_up.set(i64::from(behind.is_some()));
        f.catch_up_behind_seconds
            .set(i64::from(behind.unwrap_or(0)));
        m.store_bytes
            .set((self.store.heap_bytes() + self.timers.heap_bytes()) as i64);
        for (gauge, n) in m.customers_by_stage.iter().zip(self.population.stage) {
            gauge.set(n);
        }
        for (gauge, n) in m.customers_by_segment.iter().zip(self.population.segment) {
            gauge.set(n);
        }
        for (gauge, n) in m
            .customers_by_probability
            .iter()
            .zip(self.population.bucket)
        {
            gauge.set(n);
        }
        let regions = self
            .region_gauges
            .get_or_init(|| m.regions(self.profiles.region_labels()));
        for (gauge, n) in regions.iter().zip(self.region_counts()) {
            gauge.set(n);
        }
    }

    /// How each budgeted action and the pooled budget stand (see [`crate::decide::Budgets`]).
    pub(super) fn publish_budgets(&mut self) {
        let now = self.now();
        for (series, report) in self.budget_series.iter().zip(self.budgets.take_report(now)) {
            series.per_day.set(report.per_day);
            series.spent.set(report.spent_today);
            series.bar.set(report.bar);
            series.held_back.inc_by(report.held_back);
        }
        if let (Some(series), Some(report)) = (&self.pool_series, self.budgets.pool_report(now)) {
            series.spend_per_day.set(report.spend_per_day);
            series.spent.set(report.spent_today);
            series.bar.set(report.bar);
        }
        self.metrics
            .winback_no_lift
            .inc_by(self.targeting.take_skipped());
    }

    /// Customers by region label, `none` counting everyone without a region.
    pub(super) fn region_counts(&self) -> impl Iterator<Item = i64> + '_ {
        let (named, _) = self
            .population
            .region
            .split_at(self.population.region.len() - 1);
        let without = self.store.len() as i64 - named.iter().sum::<i64>();
        named.iter().copied().chain([without])
    }

    pub fn summary(&self) -> Summary {
        Summary {
            now: time::rfc3339(self.now()),
            customers: self.store.len(),
            by_stage: LifecycleStage::ALL
                .iter()
                .map(|s| s.as_str())
                .zip(self.population.stage)
                .collect(),
            by_segment: Segment::ALL
                .iter()
                .map(|s| s.as_str())
                .zip(self.population.segment)
                .collect(),
            by_churn_probability: PROBABILITY_BUCKETS
                .into_iter()
                .zip(self.population.bucket)
                .collect(),
            by_region: self
                .profiles
                .region_labels()
                .map(String::from)
                .zip(self.region_counts())
                .collect(),
            thresholds: self.thresholds,
            partitions: None,
        }
    }
}
