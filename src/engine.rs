//! The engine: owns every customer's state and turns batches of entries (and the passing of
//! time) into state changes and effects. No I/O: the daemon feeds it and writes its
//! [`Effects`], tests drive it directly.
//!
//! Per event: parse, update the customer's features, score, classify, ask the win-back
//! policy, and schedule the customer's next check. Per tick (or, under the event-time clock,
//! whenever the watermark advances): re-score the customers whose check is due, so silence is
//! noticed without scanning everyone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::classify::{LifecycleStage, RfmThresholds, RiskBands, Segment, StageBounds};
use crate::config::{ClockMode, SegmentMode, SegmentSettings, Settings};
use crate::event::{
    event_kind, parse_event, EntryId, Event, EventKind, EventLimits, Reason, Rejection,
};
use crate::features::recheck::Recheck;
use crate::features::store::{CaptureSize, Captured, CustomerIdx, CustomerStore};
use crate::features::timers::{Timer, TimerQueue, TimerSlots};
use crate::features::{CustomerFeatures, Rfm, FEATURE_NAMES};
use crate::metrics::{Metrics, Outcome, OutcomeCounts, PROBABILITY_BUCKETS};
use crate::model::Model;
use crate::source::batch::{Batch, StreamIdx};
use crate::tasks::{CareCandidate, CarePolicy, CareTask, Contact, TasksSettings};
use crate::time::{self, UnixSeconds};
use crate::winback::{Candidate, Group, Policy, Task, WinbackSettings, WinbackState};

/// Population thresholds need at least this many buyers to mean something.
const MIN_POPULATION_SAMPLE: usize = 30;
/// One scoring in this many is timed for the scoring histogram.
const SCORING_SAMPLE_EVERY: u64 = 64;
/// Customers forgotten at once when the table is full, in percent: evicting in bulk keeps
/// the O(customers) cost of choosing them rare.
const EVICTION_PERCENT: usize = 1;

/// The engine's slice of the settings.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub clock: ClockMode,
    pub limits: EventLimits,
    pub stages: StageBounds,
    pub risk: RiskBands,
    pub segments: SegmentSettings,
    pub rescore_interval_secs: u32,
    pub max_rescore_interval_secs: u32,
    pub winback: WinbackSettings,
    pub tasks: TasksSettings,
    pub max_customers: usize,
}

impl EngineSettings {
    /// A hash of every setting that decides when a silent customer is checked next. A
    /// restart under other settings (or another model) must re-check everyone: checks
    /// scheduled under the old ones may come too late under the new.
    pub fn schedule_fingerprint(&self) -> u64 {
        let w = &self.winback;
        // Per-segment thresholds in a fixed order (a HashMap's order is random per process).
        let task_thresholds = Segment::ALL.map(|s| w.segment_thresholds.get(&s).copied());
        let scheduling = format!(
            "{:?}",
            (
                (&self.stages, &self.risk, &self.segments),
                (self.rescore_interval_secs, self.max_rescore_interval_secs),
                (w.enabled, w.threshold, task_thresholds),
                (w.min_silence_days, w.cooldown_days, w.max_tasks_per_episode),
                // Every kind's timing (actions and streams too: a harmless excess).
                &self.tasks,
            )
        );
        xxhash_rust::xxh3::xxh3_64(scheduling.as_bytes()).max(1)
    }
}

impl From<&Settings> for EngineSettings {
    fn from(s: &Settings) -> Self {
        Self {
            clock: s.clock.mode,
            limits: EventLimits {
                max_future_skew_ms: s.events.max_future_skew_ms,
                min_ts_ms: s.events.min_ts_ms,
            },
            stages: s.stages,
            risk: s.risk,
            segments: s.segments.clone(),
            rescore_interval_secs: s.scoring.rescore_interval_secs,
            max_rescore_interval_secs: s.scoring.max_rescore_interval_secs,
            winback: s.winback.clone(),
            tasks: s.tasks.clone(),
            max_customers: s.state.max_customers,
        }
    }
}

/// What the daemon must write to Redis for a batch or a tick.
#[derive(Debug, Default)]
pub struct Effects {
    pub tasks: Vec<Task>,
    /// Tasks of the other kinds (convert, welcome, anniversary, revisit).
    pub care_tasks: Vec<CareTask>,
    pub dead_letters: Vec<DeadLetter>,
    /// Entries to acknowledge once the tasks and dead letters are written.
    pub acks: Vec<(StreamIdx, EntryId)>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.care_tasks.is_empty()
            && self.dead_letters.is_empty()
            && self.acks.is_empty()
    }
}

/// A rejected entry with its original fields.
#[derive(Debug)]
pub struct DeadLetter {
    pub stream: StreamIdx,
    pub id: EntryId,
    pub values: Vec<redis::Value>,
    pub reason: Reason,
    pub detail: String,
}

/// A customer's record: 80 bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Customer {
    pub features: CustomerFeatures,
    pub timer: Timer,
    pub winback: WinbackState,
    pub contact: Contact,
    /// Classification at the last scoring, as counted in the population gauges.
    pub stage: Option<LifecycleStage>,
    pub segment: Option<Segment>,
    pub bucket: Option<u8>,
}

/// Everything the engine needs to continue where it stopped: what a snapshot holds. Settings
/// and the model come from the new process.
#[derive(Clone)]
pub struct EngineState {
    pub customers: CustomerStore<Customer>,
    pub header: StateHeader,
}

/// What a snapshot holds besides the customers.
#[derive(Debug, Clone, PartialEq)]
pub struct StateHeader {
    pub watermark: UnixSeconds,
    pub thresholds: RfmThresholds,
    pub next_threshold_refresh: UnixSeconds,
    pub scorings: u64,
    /// Fingerprint of the settings the customers' next checks were scheduled under (see
    /// [`EngineSettings::schedule_fingerprint`]); 0 = unknown.
    pub schedule_settings: u64,
    /// Per input stream (by position in `source.streams`), the last entry applied.
    pub applied: Vec<EntryId>,
    /// The model that scored the customers, for the log of a restore.
    pub model_version: String,
}

impl TimerSlots for CustomerStore<Customer> {
    fn timer_mut(&mut self, idx: CustomerIdx) -> &mut Timer {
        &mut self.get_mut(idx).timer
    }
}

/// Customers by stage, segment and probability tenth, kept incrementally.
#[derive(Debug, Default, Clone)]
struct Population {
    stage: [i64; LifecycleStage::ALL.len()],
    segment: [i64; Segment::ALL.len()],
    bucket: [i64; PROBABILITY_BUCKETS.len()],
}

impl Population {
    /// Adds (`+1`) or removes (`-1`) a customer's last classification.
    fn count(&mut self, c: &Customer, delta: i64) {
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

/// A customer as the API shows them, computed at the engine's "now".
#[derive(Debug, Clone, Serialize)]
pub struct CustomerView {
    pub customer_id: String,
    pub as_of: String,
    pub lifecycle_stage: LifecycleStage,
    pub segment: Option<Segment>,
    pub churn_probability: Option<f64>,
    pub risk: Option<crate::classify::Risk>,
    pub reasons: Vec<String>,
    pub rfm: Option<Rfm>,
    pub features: BTreeMap<&'static str, f64>,
    pub first_purchase: Option<String>,
    pub last_purchase: Option<String>,
    pub last_event: String,
    pub group: Group,
    pub winback_tasks_in_episode: u8,
    pub last_winback_task_at: Option<String>,
    pub model_version: String,
}

/// Totals for people (the demo) and tests.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub now: String,
    pub customers: usize,
    pub by_stage: BTreeMap<&'static str, i64>,
    pub by_segment: BTreeMap<&'static str, i64>,
    pub by_churn_probability: BTreeMap<&'static str, i64>,
    pub thresholds: RfmThresholds,
}

pub struct Engine {
    settings: EngineSettings,
    policy: Policy,
    /// The other task kinds and the contact cap they share with win-back.
    care: CarePolicy,
    model: Arc<Model>,
    model_version: Arc<str>,
    store: CustomerStore<Customer>,
    timers: TimerQueue,
    recheck: Recheck,
    /// Under population segment thresholds, the lowest and highest per-segment task
    /// threshold (see `segment_may_decide`); `None` otherwise or when they are all equal.
    population_task_band: Option<(f64, f64)>,
    /// [`EngineSettings::schedule_fingerprint`] of `settings`, recorded in snapshots.
    schedule_fingerprint: u64,
    thresholds: RfmThresholds,
    next_threshold_refresh: UnixSeconds,
    /// Largest event time seen.
    watermark: UnixSeconds,
    /// Wall clock at the start of the current batch or tick.
    wall: UnixSeconds,
    population: Population,
    scorings: u64,
    /// Per input stream, the last entry applied. Stream IDs only grow, so an entry at or
    /// below it was applied before: a Redis restored from an older snapshot redelivers
    /// entries as new, and applying them again would count purchases twice.
    applied: Vec<EntryId>,
    /// Every customer's next check is to be brought forward once the clock is known (after
    /// a restore: the checks were scheduled under the previous process's settings and model).
    recheck_pending: bool,
    metrics: Metrics,
}

impl Engine {
    pub fn new(settings: EngineSettings, model: Arc<Model>, metrics: Metrics) -> Self {
        metrics.set_model(model.version());
        metrics
            .customers_max
            .set(i64::try_from(settings.max_customers).unwrap_or(i64::MAX));
        let policy = Policy::new(&settings.winback);
        // Where the probability tenth (a population gauge) or the task decision changes.
        // Risk bands need no check of their own: nothing counts customers by risk.
        let boundaries = (1..PROBABILITY_BUCKETS.len())
            .map(|tenth| tenth as f64 / PROBABILITY_BUCKETS.len() as f64)
            .chain(policy.thresholds().iter().copied());
        Self {
            recheck: Recheck::new(
                boundaries,
                settings.rescore_interval_secs,
                settings.max_rescore_interval_secs,
            ),
            population_task_band: (settings.segments.mode == SegmentMode::Population)
                .then(|| policy.thresholds_span())
                .flatten(),
            policy,
            care: CarePolicy::new(&settings.tasks),
            schedule_fingerprint: settings.schedule_fingerprint(),
            model_version: model.version().into(),
            model,
            thresholds: settings.segments.fixed(),
            settings,
            store: CustomerStore::new(),
            timers: TimerQueue::default(),
            next_threshold_refresh: 0,
            watermark: 0,
            wall: 0,
            population: Population::default(),
            scorings: 0,
            applied: Vec::new(),
            recheck_pending: false,
            metrics,
        }
    }

    /// Continues from a snapshot's state: same customers, timers, clock and stream positions.
    pub fn restore(
        settings: EngineSettings,
        model: Arc<Model>,
        metrics: Metrics,
        state: EngineState,
    ) -> Self {
        let mut engine = Self::new(settings, model, metrics);
        let EngineState { customers, header } = state;
        let StateHeader {
            watermark,
            thresholds,
            next_threshold_refresh,
            scorings,
            schedule_settings,
            applied,
            model_version,
        } = header;
        let mut population = Population::default();
        for (_, c) in customers.iter() {
            population.count(c, 1);
        }
        engine.store = customers;
        engine.population = population;
        engine.rebuild_timers();
        engine.watermark = watermark;
        engine.thresholds = thresholds;
        engine.next_threshold_refresh = next_threshold_refresh;
        engine.scorings = scorings;
        engine.applied = applied;
        let settings_changed = schedule_settings != engine.schedule_fingerprint;
        if settings_changed || model_version != *engine.model_version {
            // The snapshot's checks were scheduled under other settings or another model,
            // which may have moved boundaries closer: everyone is re-checked within one
            // rescore_interval_secs of the first batch or tick (when the clock is known).
            tracing::info!(
                snapshot_model = %model_version,
                model = %engine.model_version,
                settings_changed,
                "model or scheduling settings changed since the snapshot: every customer is re-checked within scoring.rescore_interval_secs"
            );
            engine.recheck_pending = true;
        }
        engine.publish();
        engine
    }

    /// A copy of the state for a snapshot. A copy (not an encoding) so that the engine
    /// pauses only for a memory copy; encoding and writing happen elsewhere.
    pub fn snapshot(&self) -> EngineState {
        EngineState {
            customers: self.store.clone(),
            header: self.state_header(),
        }
    }

    /// Begins a snapshot taken while the engine keeps running: the header now, the customers
    /// as they are now, handed out by [`Self::snapshot_slice`] between batches. Replaces a
    /// snapshot in progress.
    pub fn begin_snapshot(&mut self) -> (StateHeader, CaptureSize) {
        (self.state_header(), self.store.begin_capture())
    }

    /// The next `max` customers of the snapshot in progress, as they were when it began;
    /// `None` once all were handed out (or when none is in progress).
    pub fn snapshot_slice(&mut self, max: usize) -> Option<Captured<Customer>> {
        self.store.capture_next(max)
    }

    /// Drops the snapshot in progress, if any.
    pub fn abort_snapshot(&mut self) {
        self.store.abort_capture();
    }

    fn state_header(&self) -> StateHeader {
        StateHeader {
            watermark: self.watermark,
            thresholds: self.thresholds,
            next_threshold_refresh: self.next_threshold_refresh,
            scorings: self.scorings,
            schedule_settings: self.schedule_fingerprint,
            applied: self.applied.clone(),
            model_version: self.model_version.to_string(),
        }
    }

    /// Queues every customer's timer afresh, after indices changed.
    fn rebuild_timers(&mut self) {
        self.timers = TimerQueue::default();
        for (idx, c) in self.store.iter_mut() {
            let due = c.timer.due();
            c.timer = Timer::default();
            self.timers.schedule(idx, &mut c.timer, due);
        }
    }

    /// Makes room under `max_customers`: forgets the least recently active customers (those
    /// churned longest ago), [`EVICTION_PERCENT`] of the table at once.
    fn evict(&mut self) {
        let n = self.store.len();
        let target = (n * EVICTION_PERCENT / 100).max(1);
        let mut last: Vec<UnixSeconds> = self
            .store
            .iter()
            .map(|(_, c)| c.features.last_event())
            .collect();
        let cutoff = *last.select_nth_unstable(target - 1).1;
        // Everyone before the cutoff goes, and as many at it as make up the target.
        let mut at_cutoff = target - last.iter().filter(|&&t| t < cutoff).count();
        let population = &mut self.population;
        let evicted = self.store.retain(|c| {
            let t = c.features.last_event();
            let go = t < cutoff || (t == cutoff && at_cutoff > 0);
            if t == cutoff && go {
                at_cutoff -= 1;
            }
            if go {
                population.count(c, -1);
            }
            !go
        });
        self.rebuild_timers();
        self.metrics.customers_evicted.inc_by(evicted as u64);
        tracing::info!(
            evicted,
            before = n,
            max_customers = self.settings.max_customers,
            last_active_before = %time::rfc3339(cutoff),
            "customer table full: forgot the least recently active"
        );
    }

    /// Per input stream, the last entry applied.
    pub fn positions(&self) -> &[EntryId] {
        &self.applied
    }

    /// Customers tracked.
    pub fn customers(&self) -> usize {
        self.store.len()
    }

    /// Serves a new model from the next score on.
    pub fn set_model(&mut self, model: Arc<Model>) {
        self.metrics.set_model(model.version());
        self.model_version = model.version().into();
        self.model = model;
        self.recheck_everyone();
    }

    /// Brings every silent customer's next check forward to within one
    /// `rescore_interval_secs`: each was computed with the previous model, which may move
    /// towards a boundary more slowly than the new one. The checks are spread over the
    /// interval so that they do not all land in one sweep.
    fn recheck_everyone(&mut self) {
        let now = self.now();
        let spread = u64::from(self.settings.rescore_interval_secs);
        for (idx, c) in self.store.iter_mut() {
            let timer = &mut c.timer;
            if let Some(due) = timer.due() {
                // A multiplicative hash of the index: stable, and even over the interval.
                let offset = (u64::from(idx).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % spread;
                *timer = Timer::unqueued(Some(due.min(now.saturating_add(1 + offset as u32))));
            }
        }
        self.rebuild_timers();
    }

    /// "Now" by the configured clock.
    pub fn now(&self) -> UnixSeconds {
        match self.settings.clock {
            ClockMode::Wall => self.wall,
            ClockMode::Event => self.watermark,
        }
    }

    /// Applies a batch read at wall-clock time `wall_ms`. Every entry is acknowledged in the
    /// effects: good ones once applied, bad ones once dead-lettered.
    pub fn apply_batch(&mut self, batch: Batch, wall_ms: u64) -> Effects {
        let started = Instant::now();
        self.wall = time::from_millis(wall_ms);
        if std::mem::take(&mut self.recheck_pending) {
            self.recheck_everyone();
        }
        self.metrics
            .batch_entries
            .observe(batch.entries.len() as f64);
        let mut fx = Effects {
            acks: Vec::with_capacity(batch.entries.len()),
            ..Effects::default()
        };
        let mut outcomes = OutcomeCounts::default();
        for entry in batch.entries {
            fx.acks.push((entry.stream, entry.id));
            self.metrics
                .event_latency_seconds
                .observe(wall_ms.saturating_sub(entry.id.ms) as f64 / 1000.0);
            if !self.mark_applied(entry.stream, entry.id) && !batch.claimed {
                outcomes.add(event_kind(entry.fields()), Outcome::AlreadyApplied);
                continue;
            }
            let parsed = if entry.values.is_some() {
                parse_event(entry.fields(), entry.id.ms, &self.settings.limits)
            } else {
                Err(Rejection::new(
                    Reason::EntryDeleted,
                    "the entry was deleted from the stream before it was processed",
                ))
            };
            match parsed {
                Ok(event) => {
                    outcomes.add(Some(event.kind), Outcome::Applied);
                    self.apply_event(&event, &mut fx);
                }
                Err(rejection) => {
                    outcomes.add(event_kind(entry.fields()), Outcome::DeadLettered);
                    fx.dead_letters.push(DeadLetter {
                        stream: entry.stream,
                        id: entry.id,
                        values: entry.values.unwrap_or_default(),
                        reason: rejection.reason,
                        detail: rejection.detail,
                    });
                }
            }
        }
        outcomes.publish(&self.metrics);
        if self.settings.clock == ClockMode::Wall {
            self.sweep(self.wall, &mut fx);
        }
        self.publish();
        self.metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        fx
    }

    /// Records `id` as the last entry applied from `stream`; `false` if it was applied before.
    fn mark_applied(&mut self, stream: StreamIdx, id: EntryId) -> bool {
        let i = usize::from(stream);
        if self.applied.len() <= i {
            self.applied.resize(i + 1, EntryId::default());
        }
        // 0-0 is never a real entry ID, so the default means "nothing applied yet".
        if id <= self.applied[i] {
            return false;
        }
        self.applied[i] = id;
        true
    }

    /// The passing of wall-clock time: re-scores customers whose check is due. Under the
    /// event-time clock time moves only with events, so a tick does nothing.
    pub fn tick(&mut self, wall_ms: u64) -> Effects {
        let mut fx = Effects::default();
        self.wall = time::from_millis(wall_ms);
        if std::mem::take(&mut self.recheck_pending) {
            self.recheck_everyone();
        }
        if self.settings.clock == ClockMode::Wall {
            self.sweep(self.wall, &mut fx);
            self.publish();
        }
        fx
    }

    fn apply_event(&mut self, event: &Event<'_>, fx: &mut Effects) {
        if self.settings.clock == ClockMode::Event && event.time > self.watermark {
            self.advance_watermark(event.time, fx);
        }
        let now = self.now();
        if self.store.len() >= self.settings.max_customers
            && self.store.find(event.customer_id).is_none()
        {
            self.evict();
        }
        let (idx, _) = self.store.find_or_insert(event.customer_id);
        let customer = self.store.get_mut(idx);
        let previous_purchase = customer.features.last_purchase();
        customer.features.apply(event);
        if event.kind == EventKind::Visit && customer.features.last_purchase().is_none() {
            customer.contact.count_prospect_visit();
        }
        if event.kind == EventKind::Purchase && previous_purchase.is_some_and(|p| event.time > p) {
            if let Some(group) =
                self.policy
                    .on_new_purchase(&mut customer.winback, event.customer_id, event.time)
            {
                self.metrics
                    .recoveries
                    .with_label_values(&[group.as_str()])
                    .inc();
            }
        }
        self.evaluate(idx, now, fx);
    }

    /// Moves event time forward to `to`, first re-scoring every customer whose check fell
    /// due on the way, each at the moment it was due: a replay sees what living it would.
    fn advance_watermark(&mut self, to: UnixSeconds, fx: &mut Effects) {
        while let Some((idx, due)) = self.timers.pop_due(to, &mut self.store) {
            self.metrics.rescores.inc();
            self.evaluate(idx, due, fx);
        }
        self.watermark = to;
        self.refresh_thresholds(to);
    }

    fn sweep(&mut self, now: UnixSeconds, fx: &mut Effects) {
        while let Some((idx, _)) = self.timers.pop_due(now, &mut self.store) {
            self.metrics.rescores.inc();
            self.evaluate(idx, now, fx);
        }
        self.refresh_thresholds(now);
    }

    /// Scores and classifies one customer at `now`, raises a task if the policy says so, and
    /// schedules the next check.
    fn evaluate(&mut self, idx: CustomerIdx, now: UnixSeconds, fx: &mut Effects) {
        let customer = self.store.get(idx);
        let purchases = customer
            .features
            .first_purchase()
            .zip(customer.features.last_purchase());
        let stage = self.settings.stages.stage(purchases, now);
        let (Some(x), Some(rfm)) = (customer.features.vector(now), customer.features.rfm(now))
        else {
            // A prospect: no score, but maybe an offer.
            self.reclassify(idx, stage, None, None);
            let next = self.care_moment(idx, stage, None, now, fx);
            self.timers
                .schedule(idx, &mut self.store.get_mut(idx).timer, next);
            return;
        };
        self.scorings += 1;
        let timer = (self.scorings % SCORING_SAMPLE_EVERY == 0).then(Instant::now);
        let score = self.model.score(&x);
        let p = score.probability;
        let segment = self.thresholds.segment(&rfm);
        let risk = self.settings.risk.risk(p);
        if let Some(t) = timer {
            self.metrics
                .scoring_seconds
                .observe(t.elapsed().as_secs_f64());
        }
        let bucket = ((p * 10.0) as u8).min(9);
        self.reclassify(idx, stage, Some(segment), Some(bucket));

        let customer = self.store.get(idx);
        let (mut winback, mut contact) = (customer.winback, customer.contact);
        // Win-back first; every kind waits for the contact cap.
        let capped_until = self.care.contact_allowed_from(&contact, now);
        let candidate = Candidate {
            customer_id: self.store.id(idx),
            churn_probability: p,
            risk,
            segment,
            lifecycle_stage: stage,
            monetary_365d: rfm.monetary_365d,
            last_purchase: purchases.map_or(0, |(_, last)| last),
            score: &score,
        };
        if capped_until.is_none() {
            if let Some(task) =
                self.policy
                    .decide(&mut winback, candidate, &self.model_version, now)
            {
                contact.record(now);
                fx.tasks.push(task);
            }
        }
        let customer = self.store.get_mut(idx);
        customer.winback = winback;
        customer.contact = contact;
        let care_next = self.care_moment(idx, stage, Some(segment), now, fx);
        let features = self.store.get(idx).features;
        let next = self.recheck.next(
            now,
            score.logit,
            |secs| {
                features
                    .vector(now.saturating_add(secs))
                    .map_or((0.0, 0.0), |later| self.model.logit_reach(&x, &later))
            },
            [
                self.settings.stages.next_change(purchases, now),
                self.thresholds.next_change(&rfm, now),
                purchases.and_then(|(_, last)| self.policy.next_eligible(&winback, last, now)),
                self.segment_may_decide(&winback, p)
                    .then(|| now.saturating_add(self.settings.rescore_interval_secs)),
                care_next,
                // A crossing while capped is acted on when the cap ends.
                capped_until.filter(|_| self.policy.may_raise(&winback)),
            ],
        );
        self.timers
            .schedule(idx, &mut self.store.get_mut(idx).timer, Some(next));
    }

    /// Raises the care task due for the customer now, if any, and returns the next moment a
    /// care task can fall due without an event.
    fn care_moment(
        &mut self,
        idx: CustomerIdx,
        stage: LifecycleStage,
        segment: Option<Segment>,
        now: UnixSeconds,
        fx: &mut Effects,
    ) -> Option<UnixSeconds> {
        let customer = self.store.get(idx);
        let features = customer.features;
        let mut contact = customer.contact;
        let candidate = CareCandidate {
            customer_id: self.store.id(idx),
            lifecycle_stage: stage,
            segment,
            purchases: features.purchases(),
            first_purchase: features.first_purchase(),
            last_purchase: features.last_purchase(),
        };
        let (task, next) = self.care.evaluate(&mut contact, &candidate, now);
        fx.care_tasks.extend(task);
        self.store.get_mut(idx).contact = contact;
        next
    }

    /// Whether a segment change alone could raise this customer's task: their probability
    /// lies between the lowest and the highest per-segment threshold, and segment
    /// thresholds are refreshed from the population, which can move them into a segment
    /// with a lower threshold at any refresh. Such customers are checked at every
    /// `rescore_interval_secs`, as before the scheduler; under fixed thresholds segment
    /// changes are exact moments instead.
    fn segment_may_decide(&self, winback: &WinbackState, p: f64) -> bool {
        self.population_task_band
            .is_some_and(|(low, high)| (low..high).contains(&p))
            && self.policy.may_raise(winback)
    }

    /// Moves the customer between population counts if their classification changed.
    fn reclassify(
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
    fn refresh_thresholds(&mut self, now: UnixSeconds) {
        let seg = &self.settings.segments;
        if seg.mode != SegmentMode::Population || now < self.next_threshold_refresh {
            return;
        }
        self.next_threshold_refresh = now.saturating_add(seg.refresh_secs);
        let step = (self.store.len() / seg.sample_size).max(1);
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
    fn publish(&self) {
        let m = &self.metrics;
        m.customers.set(self.store.len() as i64);
        m.clock_seconds.set(i64::from(self.now()));
        m.store_bytes
            .set((self.store.heap_bytes() + self.timers.len() * 8) as i64);
        for (stage, n) in LifecycleStage::ALL.iter().zip(self.population.stage) {
            m.customers_by_stage
                .with_label_values(&[stage.as_str()])
                .set(n);
        }
        for (segment, n) in Segment::ALL.iter().zip(self.population.segment) {
            m.customers_by_segment
                .with_label_values(&[segment.as_str()])
                .set(n);
        }
        for (range, n) in PROBABILITY_BUCKETS.iter().zip(self.population.bucket) {
            m.customers_by_probability
                .with_label_values(&[range])
                .set(n);
        }
    }

    /// One customer, scored now.
    pub fn customer(&self, customer_id: &str) -> Option<CustomerView> {
        let idx = self.store.find(customer_id)?;
        let c = self.store.get(idx);
        let now = self.now();
        let f = &c.features;
        let purchases = f.first_purchase().zip(f.last_purchase());
        let vector = f.vector(now);
        let score = vector.map(|x| self.model.score(&x));
        let rfm = f.rfm(now);
        Some(CustomerView {
            customer_id: customer_id.to_string(),
            as_of: time::rfc3339(now),
            lifecycle_stage: self.settings.stages.stage(purchases, now),
            segment: rfm.map(|r| self.thresholds.segment(&r)),
            churn_probability: score.map(|s| s.probability),
            risk: score.map(|s| self.settings.risk.risk(s.probability)),
            reasons: score
                .map(|s| {
                    s.reasons(self.policy.reasons)
                        .iter()
                        .map(ToString::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            rfm,
            features: vector
                .map(|x| FEATURE_NAMES.iter().copied().zip(x).collect())
                .unwrap_or_default(),
            first_purchase: f.first_purchase().map(time::rfc3339),
            last_purchase: f.last_purchase().map(time::rfc3339),
            last_event: time::rfc3339(f.last_event()),
            group: self.policy.group(customer_id),
            winback_tasks_in_episode: c.winback.episode_tasks,
            last_winback_task_at: (c.winback.last_task_at != 0)
                .then(|| time::rfc3339(c.winback.last_task_at)),
            model_version: self.model_version.to_string(),
        })
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
            thresholds: self.thresholds,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::source::batch::Entry;
    use crate::tasks::TaskKind;
    use redis::Value;

    const DAY: u32 = 86_400;
    const T0: u32 = 852_076_800;

    fn settings(clock: ClockMode) -> EngineSettings {
        let mut s = Settings::default();
        s.clock.mode = clock;
        s.segments.mode = SegmentMode::Fixed;
        EngineSettings::from(&s)
    }

    /// [`settings`] with win-back the only task kind.
    fn winback_only(clock: ClockMode) -> EngineSettings {
        let mut s = settings(clock);
        s.tasks.welcome.enabled = false;
        s.tasks.convert.enabled = false;
        s
    }

    /// A model whose score never moves (every coefficient 0), version "flat".
    fn flat_model() -> Model {
        let mut flat = crate::model::tests::recency_only_model_file();
        flat.version = "flat".into();
        flat.features.iter_mut().for_each(|f| f.coefficient = 0.0);
        Model::from_file(&flat).unwrap()
    }

    fn engine(clock: ClockMode) -> Engine {
        let model = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
        Engine::new(settings(clock), Arc::new(model), Metrics::new())
    }

    fn entry(seq: u64, fields: &[(&str, String)]) -> Entry {
        Entry {
            stream: 0,
            // Stream time well after every event time used, as when history is replayed.
            id: EntryId {
                ms: u64::from(T0 + 1000 * DAY) * 1000 + seq,
                seq,
            },
            values: Some(
                fields
                    .iter()
                    .flat_map(|(k, v)| {
                        [
                            Value::BulkString(k.as_bytes().to_vec()),
                            Value::BulkString(v.as_bytes().to_vec()),
                        ]
                    })
                    .collect(),
            ),
        }
    }

    fn purchase(seq: u64, customer: &str, day: u32) -> Entry {
        entry(
            seq,
            &[
                ("customer_id", customer.into()),
                ("type", "purchase".into()),
                ("amount", "20".into()),
                ("ts", (u64::from(T0 + day * DAY) * 1000).to_string()),
            ],
        )
    }

    fn batch(entries: Vec<Entry>) -> Batch {
        Batch::new(entries)
    }

    /// The state of an engine that has seen nothing.
    pub(crate) fn empty_state() -> EngineState {
        engine(ClockMode::Event).snapshot()
    }

    fn visit(seq: u64, customer: &str, day: u32) -> Entry {
        entry(
            seq,
            &[
                ("customer_id", customer.into()),
                ("type", "visit".into()),
                ("ts", (u64::from(T0 + day * DAY) * 1000).to_string()),
            ],
        )
    }

    #[test]
    fn prospects_get_an_offer_at_the_third_visit_and_new_buyers_a_welcome_on_time() {
        let mut e = engine(ClockMode::Event);
        let fx = e.apply_batch(
            batch(vec![
                visit(1, "browser", 0),
                visit(2, "browser", 1),
                purchase(3, "buyer", 2),
                visit(4, "browser", 3),
                visit(5, "browser", 4),
            ]),
            0,
        );
        let kinds: Vec<_> = fx
            .care_tasks
            .iter()
            .map(|t| (t.kind, t.customer_id.as_str(), t.as_of))
            .collect();
        assert_eq!(kinds, [(TaskKind::Convert, "browser", T0 + 3 * DAY)]);
        // The welcome falls due 14 days after the first purchase, under the event clock as
        // soon as event time passes it.
        let fx = e.apply_batch(batch(vec![visit(6, "someone", 17)]), 0);
        let welcome: Vec<_> = fx
            .care_tasks
            .iter()
            .map(|t| (t.kind, t.customer_id.as_str(), t.as_of, t.reference))
            .collect();
        assert_eq!(
            welcome,
            [(TaskKind::Welcome, "buyer", T0 + 16 * DAY, T0 + 2 * DAY)]
        );
        let buyer = e.store.get(e.store.find("buyer").unwrap());
        assert_eq!(
            buyer.contact.last_day,
            u16::try_from((T0 + 16 * DAY) / DAY).unwrap()
        );
    }

    #[test]
    fn a_win_back_waits_for_the_contact_cap_after_another_task() {
        // Welcome at day 14, and a cap of 30 days: the win-back due from day 30 (minimum
        // silence) waits for day 44.
        let mut s = settings(ClockMode::Event);
        s.tasks.contact_cap_days = 30;
        s.winback.control_share = 0.0;
        // Over the threshold well before the minimum silence of 30 days ends.
        s.winback.threshold = 0.3;
        s.winback.segment_thresholds.clear();
        let model = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
        let mut e = Engine::new(s, Arc::new(model), Metrics::new());
        e.apply_batch(batch(vec![purchase(1, "once", 0)]), 0);
        let mut seen = Vec::new();
        for (seq, day) in (2..).zip(1..120) {
            let fx = e.apply_batch(batch(vec![visit(seq, "clock", day)]), 0);
            seen.extend(fx.care_tasks.iter().map(|t| (t.kind, t.as_of)));
            seen.extend(fx.tasks.iter().map(|t| (TaskKind::Winback, t.as_of)));
        }
        let once: Vec<_> = seen
            .iter()
            .filter(|(k, _)| *k != TaskKind::Convert)
            .collect();
        assert_eq!(once.len(), 2, "{seen:?}");
        assert_eq!(once[0], &(TaskKind::Welcome, T0 + 14 * DAY));
        assert_eq!(once[1].0, TaskKind::Winback);
        assert!(once[1].1 >= T0 + 44 * DAY, "{once:?}");
        assert!(once[1].1 <= T0 + 45 * DAY, "{once:?}");
    }

    #[test]
    fn a_full_table_forgets_the_least_recently_active() {
        let model = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
        let mut s = settings(ClockMode::Event);
        s.max_customers = 200;
        let metrics = Metrics::new();
        let mut e = Engine::new(s, Arc::new(model), metrics.clone());
        // c0 is active last of all; c1..c199 in order of their last purchase.
        let mut entries: Vec<Entry> = (1..200u32)
            .map(|i| purchase(u64::from(i), &format!("c{i}"), i))
            .collect();
        entries.push(purchase(200, "c0", 300));
        e.apply_batch(batch(entries), 0);
        assert_eq!(e.customers(), 200);

        // A new customer: 1 % (2 customers) must go, the two least recently active.
        e.apply_batch(batch(vec![purchase(201, "newcomer", 301)]), 0);
        assert_eq!(e.customers(), 199);
        assert_eq!(metrics.customers_evicted.get(), 2);
        for gone in ["c1", "c2"] {
            assert!(e.customer(gone).is_none(), "{gone} kept");
        }
        for kept in ["c0", "c3", "c199", "newcomer"] {
            assert!(e.customer(kept).is_some(), "{kept} evicted");
        }
        let by_stage: i64 = e.summary().by_stage.values().sum();
        assert_eq!(by_stage, 199, "population counts follow evictions");
        // Timers were rebuilt: time passing re-scores the kept customers only.
        e.apply_batch(batch(vec![purchase(202, "newcomer", 700)]), 0);
        assert_eq!(e.customers(), 199);
    }

    #[test]
    fn a_restored_engine_continues_exactly_as_one_that_never_stopped() {
        let streams = vec!["churn:events".to_string()];
        let entries = |range: std::ops::Range<u64>| -> Vec<Entry> {
            range
                .map(|i| {
                    let customer = format!("c{}", i % 17);
                    let day = (i * 3) as u32;
                    if i % 5 == 0 {
                        entry(
                            i,
                            &[
                                ("customer_id", customer),
                                ("type", "visit".into()),
                                ("ts", (u64::from(T0 + day * DAY) * 1000).to_string()),
                            ],
                        )
                    } else {
                        purchase(i, &customer, day)
                    }
                })
                .collect()
        };
        let mut whole = engine(ClockMode::Event);
        let mut expected = Vec::new();
        for chunk in [0..60, 60..130, 130..200] {
            expected.extend(whole.apply_batch(batch(entries(chunk)), 0).tasks);
        }

        let mut first = engine(ClockMode::Event);
        let mut got = first.apply_batch(batch(entries(0..60)), 0).tasks;
        let bytes = crate::state::codec::encode(&first.snapshot(), &streams, 0);
        drop(first);
        let decoded = crate::state::codec::decode(&bytes, &streams).unwrap();
        let model = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
        let mut restored = Engine::restore(
            settings(ClockMode::Event),
            Arc::new(model),
            Metrics::new(),
            decoded.state,
        );
        // Entries up to the recorded position are acknowledged, not applied again.
        let fx = restored.apply_batch(batch(entries(50..60)), 0);
        assert_eq!(fx.acks.len(), 10);
        assert!(fx.tasks.is_empty());
        for chunk in [60..130, 130..200] {
            got.extend(restored.apply_batch(batch(entries(chunk)), 0).tasks);
        }

        assert!(!expected.is_empty(), "the history raises tasks");
        assert_eq!(got, expected);
        assert_eq!(
            serde_json::to_value(restored.summary()).unwrap(),
            serde_json::to_value(whole.summary()).unwrap()
        );
        for i in 0..17 {
            let id = format!("c{i}");
            assert_eq!(
                serde_json::to_value(restored.customer(&id)).unwrap(),
                serde_json::to_value(whole.customer(&id)).unwrap(),
                "{id}"
            );
        }
    }

    #[test]
    fn a_snapshot_copied_out_between_batches_is_the_state_when_it_began() {
        use crate::state::codec::{self, Encoder};
        let streams = vec!["s".to_string()];
        let mut e = engine(ClockMode::Event);
        let mut seq = 0;
        let mut next_batch = |first: u32, customers: u32, day: u32| {
            let entries = (first..first + customers)
                .map(|i| {
                    seq += 1;
                    if i % 3 == 0 {
                        visit(seq, &format!("c{i}"), day)
                    } else {
                        purchase(seq, &format!("c{i}"), day)
                    }
                })
                .collect();
            batch(entries)
        };
        for day in 0..5 {
            e.apply_batch(next_batch(day * 40, 60, day), 0);
        }
        let before = codec::encode(&e.snapshot(), &streams, 7);

        let (header, size) = e.begin_snapshot();
        let mut bytes = Vec::new();
        let mut encoder = Encoder::start(&header, size, &streams, 7, &mut bytes);
        for round in 0u32.. {
            // Old customers buy again, new ones arrive, event time moves on (silence checks
            // fire), and once the model changes (every timer at once).
            e.apply_batch(next_batch(round * 17 % 300, 25, 10 + round * 20), 0);
            if round == 20 {
                e.set_model(Arc::new(flat_model()));
            }
            let Some(slice) = e.snapshot_slice(7) else {
                break;
            };
            encoder.customers(slice.iter(), &mut bytes);
        }
        encoder.finish(&mut bytes).unwrap();
        assert!(
            e.customers() > size.customers as usize,
            "customers came meanwhile"
        );
        assert_eq!(bytes, before);
    }

    #[test]
    fn bad_entries_are_dead_lettered_and_everything_is_acknowledged() {
        let mut e = engine(ClockMode::Event);
        let fx = e.apply_batch(
            batch(vec![
                purchase(1, "a", 0),
                entry(2, &[("customer_id", "b".into()), ("type", "gift".into())]),
                Entry {
                    values: None,
                    ..entry(3, &[])
                },
            ]),
            0,
        );
        assert_eq!(fx.acks.len(), 3);
        let reasons: Vec<Reason> = fx.dead_letters.iter().map(|d| d.reason).collect();
        assert_eq!(reasons, vec![Reason::UnknownType, Reason::EntryDeleted]);
        assert_eq!(
            fx.dead_letters[0].values.len(),
            4,
            "original fields are kept"
        );
        assert_eq!(e.summary().customers, 1);
    }

    #[test]
    fn entries_redelivered_after_a_rewind_are_acknowledged_not_applied_again() {
        let mut e = engine(ClockMode::Event);
        e.apply_batch(batch(vec![purchase(1, "a", 0), purchase(2, "a", 5)]), 0);
        let before = e.customer("a").unwrap().features["log_purchases"];
        // Redis restored from an older snapshot hands out entry 2 again, then a new one.
        let fx = e.apply_batch(batch(vec![purchase(2, "a", 5), purchase(3, "b", 6)]), 0);
        assert_eq!(fx.acks.len(), 2, "every entry is acknowledged");
        assert!(fx.dead_letters.is_empty());
        assert_eq!(e.customer("a").unwrap().features["log_purchases"], before);
        assert!(
            e.customer("b").is_some(),
            "entries past the last applied one are applied"
        );
        // Stream positions are per stream: the same ID on another stream is new.
        let other = Entry {
            stream: 1,
            ..purchase(2, "c", 6)
        };
        e.apply_batch(batch(vec![other]), 0);
        assert!(e.customer("c").is_some());
    }

    #[test]
    fn a_silent_customer_gets_a_task_as_event_time_moves_on() {
        let mut e = engine(ClockMode::Event);
        // The test model's probability passes 0.7 once ln(1 + recency) >= 3 + 0.5 * (1 + ln(7/3)),
        // i.e. after about 50 days of silence.
        let fx = e.apply_batch(
            batch(vec![purchase(1, "quiet", 0), purchase(2, "busy", 0)]),
            0,
        );
        assert!(fx.tasks.is_empty());
        let mut tasks = Vec::new();
        for (i, day) in (10..=200).step_by(10).enumerate() {
            let fx = e.apply_batch(batch(vec![purchase(10 + i as u64, "busy", day)]), 0);
            tasks.extend(fx.tasks);
        }
        assert_eq!(tasks.len(), 1, "{tasks:?}");
        let task = &tasks[0];
        assert_eq!(task.customer_id, "quiet");
        assert!(task.churn_probability >= 0.7);
        // The crossing is noticed within one rescore interval (a day).
        let threshold_logit = (0.7f64 / 0.3).ln();
        let crossing = T0 + (((3.0 + 0.5 * (1.0 + threshold_logit)).exp() - 1.0) * 86_400.0) as u32;
        assert!(
            (crossing..=crossing + DAY).contains(&task.as_of),
            "task at {}, crossing at {crossing}",
            task.as_of
        );
        assert_eq!(task.episode_start, T0);
        assert_eq!(e.customer("quiet").unwrap().winback_tasks_in_episode, 1);
    }

    #[test]
    fn silent_customers_are_rescored_only_near_a_change() {
        let mut e = engine(ClockMode::Event);
        e.apply_batch(batch(vec![purchase(1, "quiet", 0)]), 0);
        // A year of event time passes, one day at a time, through another customer.
        for day in 1..=365 {
            e.apply_batch(batch(vec![purchase(1 + u64::from(day), "busy", day)]), 0);
        }
        let rescores = e.metrics.rescores.get();
        // A fixed daily interval would re-score the quiet customer on each of those 365 days
        // (the busy one is scored by its purchases). 33 when written, with the test model's
        // steep recency coefficient crossing many probability tenths.
        assert!(rescores < 60, "{rescores} silence checks in a year");
        assert_eq!(
            e.customer("quiet").unwrap().lifecycle_stage,
            LifecycleStage::Churned
        );
        assert_eq!(e.summary().by_stage["churned"], 1);
    }

    /// The scheduler skips checks, never tasks: against checking every customer every day
    /// (the behaviour it replaced), on random histories scored by the shipped model, the
    /// same customers get the same tasks, each at most a day apart.
    #[test]
    fn sparse_checks_raise_the_same_tasks_as_daily_checks() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut entries = Vec::new();
        for c in 0..400 {
            let mut day = rng.random_range(0..200);
            for _ in 0..rng.random_range(1..6) {
                entries.push((day, format!("c{c}"), rng.random_range(5..200)));
                day += rng.random_range(1..120);
            }
        }
        // A heartbeat moves event time on through two years.
        entries.extend((0..730).map(|day| (day, "heartbeat".to_string(), 10)));
        entries.sort();
        let model = Arc::new(
            Model::load(
                &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cdnow.json"),
            )
            .unwrap(),
        );
        let run = |max_interval: u32| {
            let mut s = settings(ClockMode::Event);
            s.max_rescore_interval_secs = max_interval;
            let mut e = Engine::new(s, model.clone(), Metrics::new());
            let mut tasks = BTreeMap::new();
            for (seq, (day, customer, amount)) in entries.iter().enumerate() {
                let fx = e.apply_batch(
                    batch(vec![entry(
                        seq as u64 + 1,
                        &[
                            ("customer_id", customer.clone()),
                            ("type", "purchase".into()),
                            ("amount", amount.to_string()),
                            ("ts", (u64::from(T0 + day * DAY) * 1000).to_string()),
                        ],
                    )]),
                    0,
                );
                for t in fx.tasks {
                    tasks.insert((t.customer_id, t.attempt, t.episode_start), t.as_of);
                }
            }
            (tasks, e.metrics.rescores.get())
        };
        let (daily, daily_checks) = run(DAY);
        let (sparse, sparse_checks) = run(settings(ClockMode::Event).max_rescore_interval_secs);
        assert!(
            daily.len() > 50,
            "the histories raise tasks: {}",
            daily.len()
        );
        // A task one run raised and the other did not is only allowed where the crossing
        // came less than a day before the customer bought again: one run noticed it in
        // time, the other (as allowed) up to a day late, after the purchase ended the
        // episode.
        let bought_within_a_day = |customer: &str, at: u32| {
            entries
                .iter()
                .any(|(day, c, _)| c == customer && (at..=at + DAY).contains(&(T0 + day * DAY)))
        };
        for (one, other) in [(&daily, &sparse), (&sparse, &daily)] {
            for (key, at) in one.iter().filter(|(k, _)| !other.contains_key(*k)) {
                assert!(bought_within_a_day(&key.0, *at), "{key:?} at {at}");
            }
        }
        assert!(daily.keys().filter(|k| !sparse.contains_key(*k)).count() < 5);
        for (key, at) in daily.iter().filter(|(k, _)| sparse.contains_key(*k)) {
            assert!(
                sparse[key].abs_diff(*at) <= DAY,
                "{key:?}: {} vs {at}",
                sparse[key]
            );
        }
        assert!(
            sparse_checks * 5 < daily_checks,
            "{sparse_checks} checks against {daily_checks} daily"
        );
    }

    #[test]
    fn a_restore_under_other_settings_rechecks_everyone_once_the_clock_is_known() {
        // A model that never moves, and no welcome: the only checks are the exact moments
        // (day 30).
        let model = Arc::new(flat_model());
        let mut e = Engine::new(winback_only(ClockMode::Wall), model.clone(), Metrics::new());
        e.apply_batch(batch(vec![purchase(1, "quiet", 0)]), u64::from(T0) * 1000);
        let due = |e: &Engine| e.store.get(e.store.find("quiet").unwrap()).timer.due();
        assert_eq!(due(&e), Some(T0 + 30 * DAY));

        // Same settings and model: the schedule is kept as it was.
        let same = Engine::restore(
            winback_only(ClockMode::Wall),
            model.clone(),
            Metrics::new(),
            e.snapshot(),
        );
        assert_eq!(due(&same), due(&e));

        // A lower task threshold: re-checked within a day of the first tick, not at the
        // epoch (the wall clock is unknown until then).
        let mut lower = winback_only(ClockMode::Wall);
        lower.winback.threshold = 0.2;
        let mut restored = Engine::restore(lower, model, Metrics::new(), e.snapshot());
        assert_eq!(
            due(&restored),
            due(&e),
            "nothing moves before the clock is known"
        );
        let now = T0 + 2 * DAY;
        restored.tick(u64::from(now) * 1000);
        let next = due(&restored).unwrap();
        assert!((now..=now + DAY).contains(&next), "{next} vs {now}");
    }

    #[test]
    fn population_segments_keep_customers_between_task_thresholds_on_daily_checks() {
        // The test model puts a one-time buyer at p ≈ 0.65 after 45 days: above the 0.6 of
        // the important segments, below the 0.7 of theirs (general_development).
        let next_check = |mode: SegmentMode| {
            let mut s = settings(ClockMode::Event);
            s.segments.mode = mode;
            let model = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
            let mut e = Engine::new(s, Arc::new(model), Metrics::new());
            e.apply_batch(batch(vec![purchase(1, "quiet", 0)]), 0);
            let visit = entry(
                3,
                &[
                    ("customer_id", "quiet".into()),
                    ("type", "visit".into()),
                    ("ts", (u64::from(T0 + 45 * DAY) * 1000).to_string()),
                ],
            );
            e.apply_batch(batch(vec![purchase(2, "busy", 45), visit]), 0);
            let view = e.customer("quiet").unwrap();
            assert!((0.6..0.7).contains(&view.churn_probability.unwrap()));
            let due = e
                .store
                .get(e.store.find("quiet").unwrap())
                .timer
                .due()
                .unwrap();
            due - (T0 + 45 * DAY)
        };
        // A refresh of population thresholds could move them into an important segment at
        // any day: checked daily. Under fixed thresholds the segment flips at known moments.
        assert!(next_check(SegmentMode::Population) <= DAY);
        assert!(next_check(SegmentMode::Fixed) > DAY);
    }

    #[test]
    fn a_new_model_brings_every_silent_customer_s_check_forward() {
        let mut s = settings(ClockMode::Event);
        s.max_rescore_interval_secs = 400 * DAY;
        // A model that never moves: after day 30 (the stage and win-back waiting time
        // boundaries), the customer is not looked at again before day 90.
        let mut e = Engine::new(s, Arc::new(flat_model()), Metrics::new());
        e.apply_batch(batch(vec![purchase(1, "quiet", 0)]), 0);
        e.apply_batch(batch(vec![purchase(2, "busy", 35)]), 0);
        let recency = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
        e.set_model(Arc::new(recency));
        let mut tasks = Vec::new();
        for day in 36..=120 {
            let fx = e.apply_batch(batch(vec![purchase(u64::from(day), "busy", day)]), 0);
            tasks.extend(fx.tasks);
        }
        // The new model crosses 0.7 after about 50 days of silence (see the test above).
        assert_eq!(tasks.len(), 1, "{tasks:?}");
        assert!(tasks[0].as_of <= T0 + 52 * DAY, "{}", tasks[0].as_of);
    }

    #[test]
    fn the_same_history_in_other_batches_gives_the_same_tasks() {
        let history: Vec<(String, u32)> = (0..60)
            .map(|i| (format!("c{}", i % 12), (i * 7) as u32))
            .collect();
        let run = |batch_size: usize| {
            let mut e = engine(ClockMode::Event);
            let mut tasks = Vec::new();
            let entries: Vec<Entry> = history
                .iter()
                .enumerate()
                .map(|(i, (c, d))| purchase(i as u64, c, *d))
                .collect();
            let mut it = entries.into_iter().peekable();
            while it.peek().is_some() {
                let chunk: Vec<Entry> = it.by_ref().take(batch_size).collect();
                tasks.extend(e.apply_batch(batch(chunk), 0).tasks);
            }
            tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
            tasks
        };
        let one = run(1);
        assert!(!one.is_empty());
        assert_eq!(one, run(7));
        assert_eq!(one, run(1000));
    }

    #[test]
    fn a_purchase_after_a_task_counts_a_recovery() {
        let mut e = engine(ClockMode::Event);
        e.apply_batch(batch(vec![purchase(1, "c", 0)]), 0);
        let fx = e.apply_batch(batch(vec![purchase(2, "other", 150)]), 0);
        assert_eq!(fx.tasks.len(), 1);
        let group = fx.tasks[0].group;
        e.apply_batch(batch(vec![purchase(3, "c", 151)]), 0);
        let recovered = e
            .metrics
            .recoveries
            .with_label_values(&[group.as_str()])
            .get();
        assert_eq!(recovered, 1);
        assert_eq!(e.customer("c").unwrap().winback_tasks_in_episode, 0);
    }

    #[test]
    fn population_counts_follow_customers_between_stages() {
        let mut e = engine(ClockMode::Event);
        e.apply_batch(batch(vec![purchase(1, "a", 0), purchase(2, "b", 0)]), 0);
        assert_eq!(e.summary().by_stage["new"], 2);
        e.apply_batch(batch(vec![purchase(3, "b", 100)]), 0);
        let s = e.summary();
        assert_eq!(s.by_stage["silent"], 1, "{s:?}");
        assert_eq!(s.by_stage["active"], 1, "{s:?}");
        assert_eq!(s.by_stage.values().sum::<i64>(), 2);
        assert_eq!(s.by_segment.values().sum::<i64>(), 2);
    }

    #[test]
    fn the_wall_clock_scores_silence_on_ticks() {
        let mut e = engine(ClockMode::Wall);
        let wall = |day: u32| u64::from(T0 + day * DAY) * 1000;
        e.apply_batch(batch(vec![purchase(1, "a", 0)]), wall(0));
        assert!(e.tick(wall(40)).tasks.is_empty());
        assert_eq!(e.tick(wall(120)).tasks.len(), 1);
        assert!(e.tick(wall(200)).tasks.is_empty());
    }

    #[test]
    fn the_customer_view_explains_the_score() {
        let mut e = engine(ClockMode::Event);
        e.apply_batch(batch(vec![purchase(1, "a", 0), purchase(2, "b", 120)]), 0);
        let view = e.customer("a").unwrap();
        assert_eq!(view.lifecycle_stage, LifecycleStage::Silent);
        assert!(view.churn_probability.unwrap() > 0.5);
        assert_eq!(view.reasons, vec!["log_recency_days:high".to_string()]);
        assert_eq!(view.features.len(), FEATURE_NAMES.len());
        assert!(e.customer("nobody").is_none());
    }
}
