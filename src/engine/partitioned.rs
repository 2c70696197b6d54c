//! One engine per partition, in one process: Kafka Streams' stream tasks. With
//! `partitions.count` = P > 1 each partition has an [`Engine`] of its own, with its own
//! customers, clock (under `clock.mode = event`, time in a partition moves with that
//! partition's events only), timers, open tasks and stream positions, and its share of what
//! is global to a deployment: each budget's tasks a day and `state.max_customers`
//! ([`partition_settings`]). So what becomes of a customer does not depend on which other
//! partitions the process reads, and a partition can later be handed to another replica
//! with its own snapshot.
//!
//! A batch read from every partition stream is split by stream, each part applied by its
//! partition's engine, and the effects merged; ticks, model swaps and the lift measured go
//! to every engine; a customer is looked up in their partition's engine. With one partition
//! there is one engine, called directly: the same work as before partitions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::decide::share_of;
use crate::decide::uplift::UpliftBook;
use crate::event::EntryId;
use crate::metrics::{BudgetedActions, EngineMetrics, PartitionGauges};
use crate::model::Model;
use crate::partition::PartitionCount;
use crate::profiles::{Interner, Profiles};
use crate::source::batch::{Batch, Entry, StreamIdx};
use crate::time;

use super::{CustomerView, Effects, Engine, EngineSettings, EngineState, Summary};

/// The engines of every partition the process reads: all of them, or (a replica under
/// `partitions.ownership = leases`) those it owns. Input streams are numbered base by base,
/// the owned partitions in order within each base: stream `i` is base `i / k`'s stream of
/// the `i mod k`th owned partition, k the number owned (with every partition owned, the
/// order of [`PartitionCount::streams`]).
pub struct Partitioned {
    /// The engine of `owned[i]` at index `i`.
    parts: Vec<Engine>,
    /// The partitions whose engines these are, in order.
    owned: Vec<u16>,
    count: PartitionCount,
    /// Input streams per partition (`source.streams` as configured).
    bases: usize,
    /// With more than one partition: the partitions' gauges, combined into the exported
    /// ones (each engine sets its own as if alone).
    gauges: Option<PartitionGauges>,
    /// With more than one partition: each engine's own metrics, in the order of `parts`
    /// (what `gauges` combine; kept to combine them again when partitions are added).
    own: Vec<EngineMetrics>,
    metrics: EngineMetrics,
}

/// Partition `partition`'s settings: `settings` with its share of each budget's tasks a day
/// and of `state.max_customers` (the shares add up to the whole; a partition holds at least
/// one customer), numbering its streams by base. Also what a replica owning only that
/// partition runs with.
pub fn partition_settings(settings: &EngineSettings, partition: u16) -> EngineSettings {
    let count = settings.partitions.count.get();
    let mut s = settings.clone();
    if count == 1 {
        return s;
    }
    let max = u32::try_from(settings.max_customers).unwrap_or(u32::MAX);
    s.max_customers = (share_of(max, partition, count) as usize).max(1);
    for budget in s.winback.budgets.values_mut() {
        *budget = budget.share(partition, count);
    }
    s.winback.budget = settings.winback.budget.share(count);
    for budget in s.tasks.budgets.values_mut() {
        *budget = budget.share(partition, count);
    }
    s.partitions = settings.partitions.for_partition(partition);
    s
}

impl Partitioned {
    /// Engines with no customers.
    pub fn new(settings: EngineSettings, model: Arc<Model>, metrics: EngineMetrics) -> Self {
        Self::restore(settings, model, metrics, Vec::new())
    }

    /// Engines continuing from `states`, partition `p`'s at index `p` (`None`, or missing:
    /// that partition starts with no customers).
    pub fn restore(
        settings: EngineSettings,
        model: Arc<Model>,
        metrics: EngineMetrics,
        states: Vec<Option<EngineState>>,
    ) -> Self {
        let every: Vec<u16> = (0..settings.partitions.count.get()).collect();
        Self::restore_owned(settings, model, metrics, &every, states)
    }

    /// Engines of the partitions `owned` (ascending, each below `partitions.count`) only,
    /// continuing from `states`, `owned[i]`'s at index `i` (`None`, or missing: that
    /// partition starts with no customers).
    pub fn restore_owned(
        settings: EngineSettings,
        model: Arc<Model>,
        metrics: EngineMetrics,
        owned: &[u16],
        mut states: Vec<Option<EngineState>>,
    ) -> Self {
        let count = settings.partitions.count;
        let bases = settings.partitions.bases.len();
        assert!(
            !owned.is_empty()
                && owned.windows(2).all(|w| w[0] < w[1])
                && owned.iter().all(|&p| p < count.get()),
            "owned partitions {owned:?} must be ascending and below {count}"
        );
        states.resize_with(owned.len(), || None);
        let start = |settings, metrics, state| match state {
            Some(state) => Engine::restore(settings, model.clone(), metrics, state),
            None => Engine::new(settings, model.clone(), metrics),
        };
        if !count.is_partitioned() {
            let state = states.pop().flatten();
            return Self {
                parts: vec![start(settings, metrics.clone(), state)],
                owned: owned.to_vec(),
                count,
                bases,
                gauges: None,
                own: Vec::new(),
                metrics,
            };
        }
        let own: Vec<EngineMetrics> = states.iter().map(|_| metrics.for_partition()).collect();
        let parts = owned
            .iter()
            .copied()
            .zip(states)
            .zip(&own)
            .map(|((p, state), m)| start(partition_settings(&settings, p), m.clone(), state))
            .collect();
        let gauges = combined_gauges(&settings, &metrics, &own);
        gauges.publish();
        Self {
            parts,
            owned: owned.to_vec(),
            count,
            bases,
            gauges: Some(gauges),
            own,
            metrics,
        }
    }

    /// Adds the engines of the partitions `added` (none owned yet, each below
    /// `partitions.count`, which must be more than one), each continuing from its state
    /// (`None`: no customers), beside the engines already running, which go on untouched:
    /// what a replica that takes over partitions does without stopping its own. The input
    /// streams are numbered anew (see [`Partitioned`]): [`Self::positions`] after the call is
    /// in the new numbering, and batches read before it must all have been applied.
    pub fn add_owned(
        &mut self,
        settings: &EngineSettings,
        model: Arc<Model>,
        added: Vec<(u16, Option<EngineState>)>,
    ) {
        assert!(
            self.count.is_partitioned(),
            "partitions are added only with more than one"
        );
        for (p, state) in added {
            assert!(
                p < self.count.get(),
                "partition {p} is not below {}",
                self.count
            );
            let Err(i) = self.owned.binary_search(&p) else {
                panic!("partition {p} is already owned");
            };
            let m = self.metrics.for_partition();
            let settings = partition_settings(settings, p);
            let engine = match state {
                Some(state) => Engine::restore(settings, model.clone(), m.clone(), state),
                None => Engine::new(settings, model.clone(), m.clone()),
            };
            self.parts.insert(i, engine);
            self.owned.insert(i, p);
            self.own.insert(i, m);
        }
        let gauges = combined_gauges(settings, &self.metrics, &self.own);
        gauges.publish();
        self.gauges = Some(gauges);
    }

    /// The partitions whose engines these are: [`Self::parts`]`[i]` is `owned()[i]`'s.
    pub fn owned(&self) -> &[u16] {
        &self.owned
    }

    /// The engine of [`Self::owned`]`[i]` at index `i` (with every partition: partition
    /// `p`'s at `p`).
    pub fn parts(&self) -> &[Engine] {
        &self.parts
    }

    pub fn parts_mut(&mut self) -> &mut [Engine] {
        &mut self.parts
    }

    /// Per input stream (in the order of [`PartitionCount::streams`]), the last entry
    /// applied or where reading starts; `None` where no position is known.
    pub fn positions(&self) -> Vec<Option<EntryId>> {
        if let [one] = &self.parts[..] {
            return one.positions().to_vec();
        }
        let count = self.parts.len();
        (0..self.bases * count)
            .map(|g| {
                self.parts[g % count]
                    .positions()
                    .get(g / count)
                    .copied()
                    .flatten()
            })
            .collect()
    }

    /// See [`Engine::start_at`]; `stream` numbers the input streams of every partition.
    pub(crate) fn start_at(&mut self, stream: StreamIdx, position: EntryId) {
        let (p, local) = self.route(stream);
        self.parts[p].start_at(local, position);
    }

    /// The partition of input stream `stream`, and the stream's number in its engine.
    fn route(&self, stream: StreamIdx) -> (usize, StreamIdx) {
        let count = self.parts.len() as StreamIdx;
        (usize::from(stream % count), stream / count)
    }

    /// Customers tracked, in every partition.
    pub fn customers(&self) -> usize {
        self.parts.iter().map(Engine::customers).sum()
    }

    pub(crate) fn set_model(&mut self, model: Arc<Model>) {
        for engine in &mut self.parts {
            engine.set_model(model.clone());
        }
    }

    pub(crate) fn set_uplift(&mut self, book: Arc<UpliftBook>) {
        for engine in &mut self.parts {
            engine.set_uplift(book.clone());
        }
    }

    /// Every partition takes `book` at its next snapshot ([`Engine::offer_uplift`]).
    pub(crate) fn offer_uplift(&mut self, book: Arc<UpliftBook>) {
        for engine in &mut self.parts {
            engine.offer_uplift(book.clone());
        }
    }

    /// Applies a batch read from any of the partition streams (see [`Engine::apply_batch`]):
    /// each partition's engine applies the entries of its streams, and every engine sees the
    /// batch end (under the wall clock, catching up and the sweep are per partition too).
    pub fn apply_batch(&mut self, batch: Batch, wall_ms: u64) -> Effects {
        if let ([one], None) = (&mut self.parts[..], &self.gauges) {
            return one.apply_batch(batch, wall_ms);
        }
        let started = Instant::now();
        let Batch {
            entries,
            caught_up,
            at_end,
            claimed,
            held,
        } = batch;
        let read = entries.len();
        let mut split: Vec<Vec<Entry>> = self.parts.iter().map(|_| Vec::new()).collect();
        for mut entry in entries {
            let (p, local) = self.route(entry.stream);
            entry.stream = local;
            split[p].push(entry);
        }
        let mut fx = Effects {
            acks: Vec::with_capacity(read),
            ..Effects::default()
        };
        for (p, entries) in split.into_iter().enumerate() {
            let part = Batch {
                entries,
                caught_up,
                at_end,
                claimed,
                held: None,
            };
            let part_fx = self.parts[p].apply_batch(part, wall_ms);
            self.merge(&mut fx, part_fx, p);
        }
        // The batch's bytes are released once every part is applied.
        drop(held);
        self.publish();
        PartitionGauges::observe_batch(&self.metrics, read, started.elapsed().as_secs_f64());
        fx
    }

    /// See [`Engine::tick`]: every partition's engine.
    pub fn tick(&mut self, wall_ms: u64) -> Effects {
        if let ([one], None) = (&mut self.parts[..], &self.gauges) {
            return one.tick(wall_ms);
        }
        let mut fx = Effects::default();
        for p in 0..self.parts.len() {
            let part_fx = self.parts[p].tick(wall_ms);
            self.merge(&mut fx, part_fx, p);
        }
        self.publish();
        fx
    }

    /// Adds partition `p`'s effects to `fx`, its streams numbered among every partition's.
    fn merge(&self, fx: &mut Effects, part: Effects, p: usize) {
        let count = self.parts.len();
        let global = |local: StreamIdx| (usize::from(local) * count + p) as StreamIdx;
        fx.tasks.extend(part.tasks);
        fx.cancels.extend(part.cancels);
        fx.outcomes.extend(part.outcomes);
        fx.dead_letters
            .extend(part.dead_letters.into_iter().map(|mut letter| {
                letter.stream = global(letter.stream);
                letter
            }));
        fx.acks
            .extend(part.acks.into_iter().map(|(s, id)| (global(s), id)));
    }

    fn publish(&self) {
        if let Some(gauges) = &self.gauges {
            gauges.publish();
        }
    }

    /// One customer, from their partition's engine; `None` also when their partition is
    /// not among those owned.
    pub fn customer(&self, customer_id: &str) -> Option<CustomerView> {
        let p = self.count.of(customer_id);
        let i = self.owned.binary_search(&p).ok()?;
        self.parts[i].customer(customer_id)
    }

    /// Every partition's totals added up; "now" is the furthest partition's clock, the
    /// segment thresholds partition 0's (under `segments.mode = population` each partition
    /// draws its own from its customers).
    pub fn summary(&self) -> Summary {
        let mut parts = self.parts.iter();
        let mut total = parts.next().expect("at least one partition").summary();
        let mut now = self.parts[0].now();
        for engine in parts {
            let s = engine.summary();
            now = now.max(engine.now());
            total.customers += s.customers;
            add(&mut total.by_stage, s.by_stage);
            add(&mut total.by_segment, s.by_segment);
            add(&mut total.by_churn_probability, s.by_churn_probability);
            add(&mut total.by_region, s.by_region);
        }
        total.now = time::rfc3339(now);
        if self.count.is_partitioned() {
            total.partitions = Some(self.owned.clone());
        }
        total
    }
}

/// The exported gauges as the sum (or furthest) of the partitions' `own` ones.
fn combined_gauges(
    settings: &EngineSettings,
    metrics: &EngineMetrics,
    own: &[EngineMetrics],
) -> PartitionGauges {
    let regions: Vec<String> = Profiles::new(&settings.profiles, Interner::default())
        .region_labels()
        .map(String::from)
        .collect();
    let actions = BudgetedActions {
        winback: settings.winback.budgets.keys().cloned().collect(),
        care: settings.tasks.budgets.keys().cloned().collect(),
        pooled: settings.winback.budget.spend_per_day.is_some(),
    };
    PartitionGauges::new(metrics, own, &regions, &actions)
}

fn add<K: Ord>(total: &mut BTreeMap<K, i64>, part: BTreeMap<K, i64>) {
    for (k, n) in part {
        *total.entry(k).or_default() += n;
    }
}
