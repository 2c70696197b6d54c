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

use crate::classify::{LifecycleStage, RfmThresholds, Risk, RiskBands, Segment, StageBounds};
use crate::config::{ClockMode, SegmentMode, SegmentSettings, Settings};
use crate::event::{
    event_kind, parse_event, EntryId, Event, EventKind, EventLimits, Reason, Rejection,
};
use crate::features::recheck::Recheck;
use crate::features::store::{CaptureSize, Captured, CustomerIdx, CustomerStore};
use crate::features::timers::{Timer, TimerQueue, TimerSlots};
use crate::features::{CustomerFeatures, Decayed, Feedback, Rfm, FEATURE_NAMES};
use crate::metrics::{Metrics, Outcome, OutcomeCounts, PROBABILITY_BUCKETS};
use crate::model::Model;
use crate::profiles::{Interner, Profile, ProfileSettings, Profiles};
use crate::source::batch::{Batch, StreamIdx};
use crate::tags::{Facts, TagRule, Tags};
use crate::tasks::{CareCandidate, CarePolicy, Contact, Task, TasksSettings};
use crate::time::{self, UnixSeconds};
use crate::winback::{Candidate, Group, Policy, WinbackSettings, WinbackState};

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
    pub profiles: ProfileSettings,
    pub tags: Vec<TagRule>,
    pub max_customers: usize,
    /// Largest entry applied (`events.max_entry_bytes`); larger ones are dead-lettered.
    pub max_entry_bytes: usize,
    /// Bytes of a rejected entry copied into its dead letter (`dead_letter.max_copy_bytes`).
    pub max_copy_bytes: usize,
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
                max_profile_value_bytes: s.profiles.max_value_bytes,
            },
            stages: s.stages,
            risk: s.risk,
            segments: s.segments.clone(),
            rescore_interval_secs: s.scoring.rescore_interval_secs,
            max_rescore_interval_secs: s.scoring.max_rescore_interval_secs,
            winback: s.winback.clone(),
            tasks: s.tasks.clone(),
            profiles: s.profiles.clone(),
            tags: s.tags.0.clone(),
            max_entry_bytes: s.events.max_entry_bytes,
            max_copy_bytes: s.dead_letter.max_copy_bytes,
            max_customers: s.state.max_customers,
        }
    }
}

/// What the daemon must write to Redis for a batch or a tick.
#[derive(Debug, Default)]
pub struct Effects {
    /// Tasks of every kind.
    pub tasks: Vec<Task>,
    pub dead_letters: Vec<DeadLetter>,
    /// Entries to acknowledge once the tasks and dead letters are written.
    pub acks: Vec<(StreamIdx, EntryId)>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.dead_letters.is_empty() && self.acks.is_empty()
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

/// A rejected entry's fields, as its dead letter copies them: whole if names and values take
/// at most `max_bytes` (`Ok`), otherwise (`Err`) the fields that fit, the one that does not
/// fit with its value cut (at a character boundary when it is text), and none after it.
/// The entry's memory is let go at once, before the dead letter waits for the sink.
fn cut_copy(
    mut values: Vec<redis::Value>,
    max_bytes: usize,
) -> Result<Vec<redis::Value>, Vec<redis::Value>> {
    let len = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => b.len(),
        redis::Value::SimpleString(s) => s.len(),
        _ => 0,
    };
    let total: usize = values.iter().map(len).sum();
    if total <= max_bytes {
        return Ok(values);
    }
    let mut room = max_bytes;
    let mut kept = 0;
    for pair in values.chunks_exact_mut(2) {
        let name = len(&pair[0]);
        if name >= room {
            break;
        }
        room -= name;
        kept += 2;
        if len(&pair[1]) > room {
            if let redis::Value::BulkString(b) = &mut pair[1] {
                let mut end = room;
                if std::str::from_utf8(b).is_ok() {
                    while std::str::from_utf8(&b[..end]).is_err() {
                        end -= 1;
                    }
                }
                b.truncate(end);
                b.shrink_to_fit();
            }
            break;
        }
        room -= len(&pair[1]);
    }
    values.truncate(kept);
    values.shrink_to_fit();
    Err(values)
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

/// What only some customers have, in the store's sparse column: the others pay nothing.
/// 16 bytes: the profile is shared, the rarer signals boxed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Extras {
    pub profile: Option<Arc<Profile>>,
    signals: Option<Box<Signals>>,
}

/// Feedback and coupon use, for the customers who have either.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Signals {
    pub feedback: Option<Feedback>,
    /// Purchases with a coupon, decayed.
    pub coupons: Option<Decayed>,
}

impl Extras {
    pub fn is_empty(&self) -> bool {
        self.profile.is_none() && self.signals.is_none()
    }

    pub fn feedback(&self) -> Option<Feedback> {
        self.signals.as_ref().and_then(|s| s.feedback)
    }

    pub fn coupons(&self) -> Option<Decayed> {
        self.signals.as_ref().and_then(|s| s.coupons)
    }

    pub fn signals_mut(&mut self) -> &mut Signals {
        self.signals.get_or_insert_default()
    }
}

/// The customer table: a record per customer, extras for some.
pub type Customers = CustomerStore<Customer, Extras>;

/// Everything the engine needs to continue where it stopped: what a snapshot holds. Settings
/// and the model come from the new process.
#[derive(Clone)]
pub struct EngineState {
    pub customers: Customers,
    pub header: StateHeader,
    /// The profiles the customers hold, each once.
    pub profiles: Interner,
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
    /// Per input stream (by position in `source.streams`), the last entry applied, or where
    /// reading started when nothing was applied since (0-0: from the stream's beginning).
    /// `None`: no position is known (a stream added since, or a snapshot of an older churnd
    /// that left out streams it had applied nothing from).
    pub applied: Vec<Option<EntryId>>,
    /// The model that scored the customers, for the log of a restore.
    pub model_version: String,
}

/// What a snapshot of the state now would record, in a form cheap to compare: equal
/// versions mean equal snapshots, so one need not be written again. The customer table is
/// represented by its count of changes (every change to a customer goes through the store,
/// which counts it); the header (positions, clock, thresholds, scorings, model version) by
/// itself, so that nothing that moves it is missed: a dead-lettered entry moves a position
/// without touching a customer, a new model only the version.
#[derive(Debug, Clone, PartialEq)]
pub struct StateVersion {
    customers: u64,
    header: StateHeader,
}

impl TimerSlots for Customers {
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
    /// Customers with a profile by [`Profiles::region`] index (the last, `none`, is derived:
    /// everyone else).
    region: Vec<i64>,
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

/// A scored customer's classification, for the tag rules.
#[derive(Debug, Clone, Copy)]
struct Scored {
    segment: Segment,
    risk: Risk,
    probability: f64,
    monetary_365d: f64,
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
    /// Tags the rules give the customer now.
    pub tags: Vec<String>,
    /// Profile attributes.
    pub profile: BTreeMap<String, String>,
    pub dissatisfaction: Dissatisfaction,
    /// Purchases with a coupon, decayed with a 90-day half-life.
    pub coupons_90d: f64,
}

/// What a customer's complaints, refunds and feedback say, now.
#[derive(Debug, Clone, Serialize)]
pub struct Dissatisfaction {
    /// Decayed with a 90-day half-life.
    pub refunds_90d: f64,
    pub complaints_90d: f64,
    /// Feedback scores of 1 or 2, decayed.
    pub low_feedback_90d: f64,
    pub last_feedback_score: Option<u8>,
    pub last_feedback_at: Option<String>,
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
}

pub struct Engine {
    settings: EngineSettings,
    policy: Policy,
    /// The other task kinds and the contact cap they share with win-back.
    care: CarePolicy,
    model: Arc<Model>,
    model_version: Arc<str>,
    store: Customers,
    timers: TimerQueue,
    recheck: Recheck,
    profiles: Profiles,
    tags: Tags,
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
    /// entries as new, and applying them again would count purchases twice. `None`: no
    /// position known yet.
    applied: Vec<Option<EntryId>>,
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
        let population = Population {
            region: vec![0; settings.profiles.regions.len() + 2],
            ..Population::default()
        };
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
            profiles: Profiles::new(&settings.profiles, Interner::default()),
            tags: Tags::new(&settings.tags),
            schedule_fingerprint: settings.schedule_fingerprint(),
            model_version: model.version().into(),
            model,
            thresholds: settings.segments.fixed(),
            settings,
            store: Customers::new(),
            timers: TimerQueue::default(),
            next_threshold_refresh: 0,
            watermark: 0,
            wall: 0,
            population,
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
        let EngineState {
            customers,
            header,
            profiles,
        } = state;
        let StateHeader {
            watermark,
            thresholds,
            next_threshold_refresh,
            scorings,
            schedule_settings,
            applied,
            model_version,
        } = header;
        for (_, c) in customers.iter() {
            engine.population.count(c, 1);
        }
        engine.store = customers;
        engine.profiles = Profiles::new(&engine.settings.profiles, profiles);
        engine.count_profiles();
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

    /// A copy of the whole state now (tests, benchmarks): the daemon snapshots through
    /// [`Self::begin_snapshot`] and [`Self::snapshot_slice`] instead, without a copy.
    pub fn snapshot(&self) -> EngineState {
        EngineState {
            customers: self.store.clone(),
            header: self.state_header(),
            profiles: Interner::default(),
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
    pub fn snapshot_slice(&mut self, max: usize) -> Option<Captured<Customer, Extras>> {
        self.store.capture_next(max)
    }

    /// The version of the state a snapshot would record now (see [`StateVersion`]).
    pub fn state_version(&self) -> StateVersion {
        StateVersion {
            customers: self.store.changes(),
            header: self.state_header(),
        }
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

    /// Recounts the customers' profiles: by region, and the free-form keys in use (after a
    /// restore or an eviction).
    fn count_profiles(&mut self) {
        self.population.region.iter_mut().for_each(|n| *n = 0);
        self.profiles.forget_counts();
        for (_, extras) in self.store.extras() {
            if let Some(profile) = &extras.profile {
                self.population.region[self.profiles.region(Some(profile))] += 1;
                self.profiles.hold(None, Some(profile));
            }
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
    /// churned longest ago), [`EVICTION_PERCENT`] of the table at once, and those beyond the
    /// bound (who arrived while a snapshot was copied out).
    fn evict(&mut self) {
        let n = self.store.len();
        let target =
            (n * EVICTION_PERCENT / 100).max(1) + n.saturating_sub(self.settings.max_customers);
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
        self.count_profiles();
        self.metrics.customers_evicted.inc_by(evicted as u64);
        tracing::info!(
            evicted,
            before = n,
            max_customers = self.settings.max_customers,
            last_active_before = %time::rfc3339(cutoff),
            "customer table full: forgot the least recently active"
        );
    }

    /// Per input stream, the last entry applied (or where reading started); `None` where no
    /// position is known.
    pub fn positions(&self) -> &[Option<EntryId>] {
        &self.applied
    }

    /// Records where reading starts in a stream the engine has no position for: entries up
    /// to `position` count as applied (before the deployment's start, or never to be read).
    /// A snapshot then holds a position for the stream before anything is read from it, so
    /// that a crash can always be recovered by replaying what follows.
    pub fn start_at(&mut self, stream: StreamIdx, position: EntryId) {
        let i = usize::from(stream);
        if self.applied.len() <= i {
            self.applied.resize(i + 1, None);
        }
        self.applied[i].get_or_insert(position);
    }

    /// Customers tracked.
    pub fn customers(&self) -> usize {
        self.store.len()
    }

    /// Serves a new model from the next score on; every customer's next check is brought
    /// forward at the next batch or tick ([`Self::recheck_everyone`]).
    pub fn set_model(&mut self, model: Arc<Model>) {
        self.metrics.set_model(model.version());
        self.model_version = model.version().into();
        self.model = model;
        self.recheck_pending = true;
    }

    /// Runs the re-check of everyone a new model or a restore asked for, unless a snapshot is
    /// being copied out: it touches every timer, and the capture would have to copy the rest
    /// of the table at once to keep its picture. It runs once the snapshot is out.
    fn recheck_if_pending(&mut self) {
        if self.recheck_pending && !self.store.is_capturing() {
            self.recheck_pending = false;
            self.recheck_everyone();
        }
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
        self.recheck_if_pending();
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
            // An entry deleted from the stream (only its ID is left) changes nothing and does
            // not move the position: entries before it may still be on their way in a replay.
            let new = if entry.values.is_some() {
                self.mark_applied(entry.stream, entry.id)
            } else {
                !self.was_applied(entry.stream, entry.id)
            };
            if !new && !batch.claimed {
                outcomes.add(event_kind(entry.fields()), Outcome::AlreadyApplied);
                continue;
            }
            let size = entry.bytes();
            let parsed = if entry.values.is_none() {
                Err(Rejection::new(
                    Reason::EntryDeleted,
                    "the entry was deleted from the stream before it was processed",
                ))
            } else if size > self.settings.max_entry_bytes {
                Err(Rejection::new(
                    Reason::EntryTooLarge,
                    format!(
                        "the entry holds {size} bytes, more than events.max_entry_bytes ({})",
                        self.settings.max_entry_bytes
                    ),
                ))
            } else {
                parse_event(entry.fields(), entry.id.ms, &self.settings.limits)
            };
            // Applying can reject too (a profile key beyond the bound).
            let applied = parsed.and_then(|event| {
                self.apply_event(&event, &mut fx)?;
                Ok(event.kind)
            });
            match applied {
                Ok(kind) => outcomes.add(Some(kind), Outcome::Applied),
                Err(rejection) => {
                    outcomes.add(event_kind(entry.fields()), Outcome::DeadLettered);
                    let mut detail = rejection.detail;
                    let values = entry.values.unwrap_or_default();
                    let values = match cut_copy(values, self.settings.max_copy_bytes) {
                        Ok(values) => values,
                        Err(cut) => {
                            detail.push_str(&format!(
                                " (fields copied cut to dead_letter.max_copy_bytes: {} of {size} bytes)",
                                self.settings.max_copy_bytes
                            ));
                            cut
                        }
                    };
                    fx.dead_letters.push(DeadLetter {
                        stream: entry.stream,
                        id: entry.id,
                        values,
                        reason: rejection.reason,
                        detail,
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

    /// Whether `id` is at or below the last entry applied from `stream`.
    fn was_applied(&self, stream: StreamIdx, id: EntryId) -> bool {
        Some(id) <= self.applied.get(usize::from(stream)).copied().flatten()
    }

    /// Records `id` as the last entry applied from `stream`; `false` if it was applied before.
    fn mark_applied(&mut self, stream: StreamIdx, id: EntryId) -> bool {
        let i = usize::from(stream);
        if self.applied.len() <= i {
            self.applied.resize(i + 1, None);
        }
        // `None` sorts below every position: nothing applied yet.
        if Some(id) <= self.applied[i] {
            return false;
        }
        self.applied[i] = Some(id);
        true
    }

    /// The passing of wall-clock time: re-scores customers whose check is due. Under the
    /// event-time clock time moves only with events, so a tick does nothing.
    pub fn tick(&mut self, wall_ms: u64) -> Effects {
        let mut fx = Effects::default();
        self.wall = time::from_millis(wall_ms);
        self.recheck_if_pending();
        if self.settings.clock == ClockMode::Wall {
            self.sweep(self.wall, &mut fx);
            self.publish();
        }
        fx
    }

    fn apply_event(&mut self, event: &Event<'_>, fx: &mut Effects) -> Result<(), Rejection> {
        // A profile change is worked out first, so that a rejected one changes nothing.
        let profile = match event.kind {
            EventKind::Profile => {
                let current = self
                    .store
                    .find(event.customer_id)
                    .and_then(|idx| self.store.extra(idx))
                    .and_then(|x| x.profile.clone());
                Some(
                    self.profiles
                        .update(current.as_deref(), &event.attributes)?,
                )
            }
            _ => None,
        };
        if self.settings.clock == ClockMode::Event && event.time > self.watermark {
            self.advance_watermark(event.time, fx);
        }
        let now = self.now();
        // Not while a snapshot is copied out: compaction moves every customer, and the
        // capture would have to copy the rest of the table at once. The table may pass its
        // bound by the customers who arrive meanwhile; the next one after takes it back.
        if self.store.len() >= self.settings.max_customers
            && !self.store.is_capturing()
            && self.store.find(event.customer_id).is_none()
        {
            self.evict();
        }
        let (idx, _) = self.store.find_or_insert(event.customer_id);
        let mut feedback = None;
        match event.kind {
            EventKind::Profile => self.set_profile(idx, profile.flatten()),
            EventKind::Feedback => {
                let extras = self.store.extra_mut(idx);
                extras
                    .signals_mut()
                    .feedback
                    .get_or_insert_default()
                    .apply(event.score, event.time);
                feedback = Some((event.score, event.time));
            }
            EventKind::Purchase if event.coupon => {
                self.store
                    .extra_mut(idx)
                    .signals_mut()
                    .coupons
                    .get_or_insert_default()
                    .add(event.time);
            }
            _ => {}
        }
        if CustomerFeatures::moves_with(event.kind) {
            let customer = self.store.get_mut(idx);
            let previous_purchase = customer.features.last_purchase();
            customer.features.apply(event);
            if event.kind == EventKind::Visit && customer.features.last_purchase().is_none() {
                customer.contact.count_prospect_visit();
            }
            if event.kind == EventKind::Purchase
                && previous_purchase.is_some_and(|p| event.time > p)
            {
                if let Some(group) = self.policy.on_new_purchase(
                    &mut customer.winback,
                    event.customer_id,
                    event.time,
                ) {
                    self.metrics
                        .recoveries
                        .with_label_values(&[group.as_str()])
                        .inc();
                }
            }
        }
        self.evaluate(idx, now, feedback, fx);
        Ok(())
    }

    /// Gives the customer `profile` (or none), keeping the counts by region and of keys.
    fn set_profile(&mut self, idx: CustomerIdx, profile: Option<Arc<Profile>>) {
        let old = self.store.extra(idx).and_then(|x| x.profile.clone());
        if let Some(old) = &old {
            self.population.region[self.profiles.region(Some(old))] -= 1;
        }
        if let Some(new) = &profile {
            self.population.region[self.profiles.region(Some(new))] += 1;
        }
        self.profiles.hold(old.as_deref(), profile.as_deref());
        let extras = self.store.extra_mut(idx);
        extras.profile = profile;
        if extras.is_empty() {
            self.store.remove_extra(idx);
        }
    }

    /// Moves event time forward to `to`, first re-scoring every customer whose check fell
    /// due on the way, each at the moment it was due: a replay sees what living it would.
    fn advance_watermark(&mut self, to: UnixSeconds, fx: &mut Effects) {
        while let Some((idx, due)) = self.timers.pop_due(to, &mut self.store) {
            self.metrics.rescores.inc();
            self.evaluate(idx, due, None, fx);
        }
        self.watermark = to;
        self.refresh_thresholds(to);
    }

    fn sweep(&mut self, now: UnixSeconds, fx: &mut Effects) {
        while let Some((idx, _)) = self.timers.pop_due(now, &mut self.store) {
            self.metrics.rescores.inc();
            self.evaluate(idx, now, None, fx);
        }
        self.refresh_thresholds(now);
    }

    /// Scores and classifies one customer at `now`, raises a task if the policy says so, and
    /// schedules the next check.
    ///
    /// `feedback` is the score and time of the feedback being applied, if that is what
    /// brings the customer here: a low one from a valuable customer is answered first.
    fn evaluate(
        &mut self,
        idx: CustomerIdx,
        now: UnixSeconds,
        feedback: Option<(u8, UnixSeconds)>,
        fx: &mut Effects,
    ) {
        let first_task = fx.tasks.len();
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
            self.attach_context(idx, now, stage, None, first_task, fx);
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
        if let Some(feedback) = feedback {
            self.service_recovery(idx, stage, segment, feedback, now, fx);
        }

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
        let scored = Scored {
            segment,
            risk,
            probability: p,
            monetary_365d: rfm.monetary_365d,
        };
        self.attach_context(idx, now, stage, Some(scored), first_task, fx);
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
        let mut contact = self.store.get(idx).contact;
        let candidate = self.care_candidate(idx, stage, segment);
        let (task, next) = self.care.evaluate(&mut contact, &candidate, now);
        fx.tasks.extend(task);
        self.store.get_mut(idx).contact = contact;
        next
    }

    /// Answers a feedback (score, time given) with a service-recovery task if the policy
    /// calls for one.
    fn service_recovery(
        &mut self,
        idx: CustomerIdx,
        stage: LifecycleStage,
        segment: Segment,
        (score, feedback_at): (u8, UnixSeconds),
        now: UnixSeconds,
        fx: &mut Effects,
    ) {
        let mut contact = self.store.get(idx).contact;
        let candidate = self.care_candidate(idx, stage, Some(segment));
        let task = self
            .care
            .service_recovery(&mut contact, &candidate, score, feedback_at, now);
        if let Some(task) = task {
            fx.tasks.push(task);
            self.store.get_mut(idx).contact = contact;
        }
    }

    fn care_candidate(
        &self,
        idx: CustomerIdx,
        stage: LifecycleStage,
        segment: Option<Segment>,
    ) -> CareCandidate<'_> {
        let features = &self.store.get(idx).features;
        CareCandidate {
            customer_id: self.store.id(idx),
            lifecycle_stage: stage,
            segment,
            purchases: features.purchases(),
            first_purchase: features.first_purchase(),
            last_purchase: features.last_purchase(),
            birthday: self
                .store
                .extra(idx)
                .and_then(|x| x.profile.as_ref())
                .and_then(|p| p.birthday()),
        }
    }

    /// Gives the tasks raised for the customer since `first_task` their tags and profile.
    fn attach_context(
        &self,
        idx: CustomerIdx,
        now: UnixSeconds,
        stage: LifecycleStage,
        scored: Option<Scored>,
        first_task: usize,
        fx: &mut Effects,
    ) {
        let raised = &mut fx.tasks[first_task..];
        if raised.is_empty() {
            return;
        }
        let facts = self.facts(idx, now, stage, scored);
        let tags = self.tags.of(&facts);
        let profile = self.store.extra(idx).and_then(|x| x.profile.clone());
        for task in raised {
            task.tags.clone_from(&tags);
            task.profile.clone_from(&profile);
        }
    }

    /// What the tag rules look at for a customer at `now`.
    fn facts(
        &self,
        idx: CustomerIdx,
        now: UnixSeconds,
        stage: LifecycleStage,
        scored: Option<Scored>,
    ) -> Facts<'_> {
        let features = &self.store.get(idx).features;
        let extras = self.store.extra(idx);
        let (refunds_90d, complaints_90d) = features.dissatisfaction(now);
        let feedback = extras.and_then(Extras::feedback);
        Facts {
            stage,
            segment: scored.map(|s| s.segment),
            risk: scored.map(|s| s.risk),
            churn_probability: scored.map(|s| s.probability),
            purchases: features.purchases(),
            monetary_365d: scored.map_or(0.0, |s| s.monetary_365d),
            refunds_90d,
            complaints_90d,
            coupons_90d: extras.and_then(Extras::coupons).map_or(0.0, |c| c.at(now)),
            low_feedback_90d: feedback.map_or(0.0, |f| f.low_scores.at(now)),
            last_feedback_score: feedback.map(|f| f.last_score),
            profile: extras.and_then(|x| x.profile.as_deref()),
        }
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
            .set((self.store.heap_bytes() + self.timers.heap_bytes()) as i64);
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
        for (region, n) in self.profiles.region_labels().zip(self.region_counts()) {
            m.customers_by_region.with_label_values(&[region]).set(n);
        }
    }

    /// Customers by region label, `none` counting everyone without a region.
    fn region_counts(&self) -> impl Iterator<Item = i64> + '_ {
        let (named, _) = self
            .population
            .region
            .split_at(self.population.region.len() - 1);
        let without = self.store.len() as i64 - named.iter().sum::<i64>();
        named.iter().copied().chain([without])
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
        let stage = self.settings.stages.stage(purchases, now);
        let scored = score.zip(rfm).map(|(s, r)| Scored {
            segment: self.thresholds.segment(&r),
            risk: self.settings.risk.risk(s.probability),
            probability: s.probability,
            monetary_365d: r.monetary_365d,
        });
        let facts = self.facts(idx, now, stage, scored);
        let feedback = self.store.extra(idx).and_then(Extras::feedback);
        Some(CustomerView {
            customer_id: customer_id.to_string(),
            as_of: time::rfc3339(now),
            lifecycle_stage: stage,
            segment: scored.map(|s| s.segment),
            churn_probability: scored.map(|s| s.probability),
            risk: scored.map(|s| s.risk),
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
            tags: self.tags.of(&facts).iter().map(|t| t.to_string()).collect(),
            profile: facts
                .profile
                .iter()
                .flat_map(|p| p.iter())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dissatisfaction: Dissatisfaction {
                refunds_90d: facts.refunds_90d,
                complaints_90d: facts.complaints_90d,
                low_feedback_90d: facts.low_feedback_90d,
                last_feedback_score: facts.last_feedback_score,
                last_feedback_at: feedback.map(|f| time::rfc3339(f.last_at)),
            },
            coupons_90d: facts.coupons_90d,
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
            by_region: self
                .profiles
                .region_labels()
                .map(String::from)
                .zip(self.region_counts())
                .collect(),
            thresholds: self.thresholds,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::source::batch::Entry;
    use crate::tasks::{Detail, TaskKind};
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

    fn profile(seq: u64, customer: &str, day: u32, attributes: &[(&str, &str)]) -> Entry {
        let mut fields = vec![
            ("customer_id", customer.to_string()),
            ("type", "profile".into()),
            ("ts", (u64::from(T0 + day * DAY) * 1000).to_string()),
        ];
        fields.extend(attributes.iter().map(|&(k, v)| (k, v.to_string())));
        entry(seq, &fields)
    }

    fn feedback(seq: u64, customer: &str, day: u32, score: u8) -> Entry {
        entry(
            seq,
            &[
                ("customer_id", customer.into()),
                ("type", "feedback".into()),
                ("score", score.to_string()),
                ("ts", (u64::from(T0 + day * DAY) * 1000).to_string()),
            ],
        )
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
            .tasks
            .iter()
            .map(|t| (t.kind(), t.customer_id.as_str(), t.as_of))
            .collect();
        assert_eq!(kinds, [(TaskKind::Convert, "browser", T0 + 3 * DAY)]);
        // The welcome falls due 14 days after the first purchase, under the event clock as
        // soon as event time passes it.
        let fx = e.apply_batch(batch(vec![visit(6, "someone", 17)]), 0);
        let welcome: Vec<_> = fx
            .tasks
            .iter()
            .map(|t| (t.kind(), t.customer_id.as_str(), t.as_of, &t.detail))
            .collect();
        assert_eq!(
            welcome,
            [(
                TaskKind::Welcome,
                "buyer",
                T0 + 16 * DAY,
                &Detail::Welcome {
                    first_purchase: T0 + 2 * DAY
                }
            )]
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
            seen.extend(fx.tasks.iter().map(|t| (t.kind(), t.as_of)));
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
    fn evictions_and_new_models_wait_for_the_snapshot_being_copied_out() {
        let model = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
        let mut s = settings(ClockMode::Event);
        s.max_customers = 100;
        let mut e = Engine::new(s, Arc::new(model), Metrics::new());
        let entries = (0..100u32).map(|i| purchase(u64::from(i) + 1, &format!("c{i}"), i));
        e.apply_batch(batch(entries.collect()), 0);
        let (_, size) = e.begin_snapshot();
        assert_eq!(size.customers, 100);
        let mut largest = 0;
        let mut seq = 200;
        e.set_model(Arc::new(flat_model()));
        while let Some(slice) = e.snapshot_slice(10) {
            largest = largest.max(slice.len());
            // New customers beyond the bound, and batches in which the new model is pending.
            seq += 1;
            e.apply_batch(batch(vec![purchase(seq, &format!("new{seq}"), 200)]), 0);
        }
        assert_eq!(largest, 10, "no slice became the rest of the table");
        assert_eq!(
            e.customers(),
            110,
            "no eviction while the snapshot was copied out"
        );
        assert!(e.recheck_pending, "the re-check waits too");

        // Once it is out: the next batch re-checks everyone and the next newcomer evicts
        // back under the bound.
        e.apply_batch(batch(vec![purchase(seq + 1, "late", 201)]), 0);
        assert!(!e.recheck_pending);
        assert!(e.customers() <= 100, "{}", e.customers());
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
                    let customer = format!("c{i}");
                    match (i + day) % 5 {
                        0 => visit(seq, &customer, day),
                        // Extras change too: profiles set and removed, feedback.
                        1 => profile(
                            seq,
                            &customer,
                            day,
                            &[("region", ["eu", "us"][i as usize % 2])],
                        ),
                        2 if day % 2 == 0 => profile(seq, &customer, day, &[("region", "")]),
                        3 => feedback(seq, &customer, day, 1 + (i % 5) as u8),
                        _ => purchase(seq, &customer, day),
                    }
                })
                .collect();
            batch(entries)
        };
        for day in 0..5 {
            e.apply_batch(next_batch(day * 40, 60, day), 0);
        }
        assert!(e.store.extras_len() > 20, "customers with extras");
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

    /// Three purchases of 50 within ten days: important value under the fixed thresholds.
    fn valuable(e: &mut Engine, seq: u64, customer: &str, day: u32) {
        let purchase_of_50 = |seq: u64, day: u32| {
            entry(
                seq,
                &[
                    ("customer_id", customer.into()),
                    ("type", "purchase".into()),
                    ("amount", "50".into()),
                    ("ts", (u64::from(T0 + day * DAY) * 1000).to_string()),
                ],
            )
        };
        let entries = (0..3).map(|k| purchase_of_50(seq + k, day + 5 * k as u32));
        e.apply_batch(batch(entries.collect()), 0);
        assert_eq!(
            e.customer(customer).unwrap().segment,
            Some(Segment::ImportantValue)
        );
    }

    #[test]
    fn profiles_are_stored_shared_counted_by_region_and_shown() {
        let mut s = settings(ClockMode::Event);
        s.profiles.regions = vec!["eu".into()];
        s.profiles.max_free_keys = 1;
        let model = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
        let mut e = Engine::new(s, Arc::new(model), Metrics::new());
        let fx = e.apply_batch(
            batch(vec![
                profile(1, "ann", 0, &[("region", "eu"), ("age_band", "25-34")]),
                profile(2, "bob", 0, &[("age_band", "25-34"), ("region", "eu")]),
                profile(3, "cy", 0, &[("region", "mars"), ("loyalty", "gold")]),
                purchase(4, "dee", 0),
                profile(5, "bob", 1, &[("region", "")]),
                // A second free-form key is beyond the bound: rejected, nothing changes.
                profile(6, "eve", 2, &[("region", "eu"), ("nickname", "e")]),
            ]),
            0,
        );
        let reasons: Vec<_> = fx.dead_letters.iter().map(|d| d.reason).collect();
        assert_eq!(reasons, [Reason::UnknownProfileKey]);
        assert!(
            e.customer("eve").is_none(),
            "a rejected profile creates nobody"
        );
        assert_eq!(e.now(), T0 + DAY, "nor moves the clock");
        let by_region = e.summary().by_region;
        assert_eq!(
            by_region,
            BTreeMap::from([("eu".into(), 1), ("other".into(), 1), ("none".into(), 2)])
        );
        let ann = e.customer("ann").unwrap();
        assert_eq!(ann.lifecycle_stage, LifecycleStage::Potential);
        assert_eq!(
            ann.profile,
            BTreeMap::from([
                ("age_band".into(), "25-34".into()),
                ("region".into(), "eu".into())
            ])
        );
        assert_eq!(
            e.profiles.interned(),
            3,
            "ann's profile is shared, bob's first too"
        );
        assert_eq!(e.customer("bob").unwrap().profile.len(), 1);
        // A restore keeps profiles, free keys and counts.
        let bytes = crate::state::codec::encode(&e.snapshot(), &["s".into()], 0);
        let state = crate::state::codec::decode(&bytes, &["s".into()])
            .unwrap()
            .state;
        let mut s = settings(ClockMode::Event);
        s.profiles.regions = vec!["eu".into()];
        s.profiles.max_free_keys = 1;
        let model = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
        let mut restored = Engine::restore(s, Arc::new(model), Metrics::new(), state);
        assert_eq!(restored.summary().by_region, by_region);
        let fx = restored.apply_batch(batch(vec![profile(7, "eve", 2, &[("nickname", "e")])]), 0);
        assert_eq!(
            fx.dead_letters.len(),
            1,
            "the free key learnt before is remembered"
        );
    }

    #[test]
    fn a_very_low_score_from_a_valuable_customer_is_answered_at_once_with_tags_and_profile() {
        let mut e = engine(ClockMode::Event);
        valuable(&mut e, 1, "vip", 0);
        valuable(&mut e, 10, "other", 0);
        e.apply_batch(
            batch(vec![
                profile(20, "vip", 11, &[("region", "eu")]),
                // Only a purchase: general segment.
                purchase(21, "plain", 11),
            ]),
            0,
        );
        let fx = e.apply_batch(
            batch(vec![
                feedback(22, "vip", 12, 1),
                feedback(23, "other", 12, 3),
                feedback(24, "plain", 12, 1),
            ]),
            0,
        );
        let recovery: Vec<_> = fx
            .tasks
            .iter()
            .filter(|t| t.kind() == TaskKind::ServiceRecovery)
            .collect();
        assert_eq!(recovery.len(), 1, "{:?}", fx.tasks);
        let task = recovery[0];
        assert_eq!(task.customer_id, "vip");
        assert_eq!(
            task.detail,
            Detail::ServiceRecovery {
                score: 1,
                feedback_at: T0 + 12 * DAY
            }
        );
        assert_eq!(task.tags, [Arc::<str>::from("vip")]);
        assert_eq!(task.profile.as_ref().unwrap().get("region"), Some("eu"));
        let fields = task.fields();
        assert!(fields
            .iter()
            .any(|(k, v)| k == "profile_region" && v == "eu"));
        assert!(fields.iter().any(|(k, v)| k == "tags" && v == "vip"));
        // Another low score soon after: answered again (its own ID), whatever the cap.
        let fx = e.apply_batch(batch(vec![feedback(25, "vip", 13, 1)]), 0);
        let again: Vec<_> = fx
            .tasks
            .iter()
            .filter(|t| t.kind() == TaskKind::ServiceRecovery)
            .collect();
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].task_id, task.task_id);
        let view = e.customer("vip").unwrap();
        assert_eq!(view.dissatisfaction.last_feedback_score, Some(1));
        assert!(view.dissatisfaction.low_feedback_90d > 1.9);
        assert_eq!(view.tags, ["vip"]);
    }

    #[test]
    fn a_birthday_is_greeted_days_before_once_a_year() {
        let mut s = winback_only(ClockMode::Event);
        s.winback.enabled = false;
        s.tasks.birthday.enabled = true;
        let model = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
        let mut e = Engine::new(s, Arc::new(model), Metrics::new());
        // 1997-01-01 plus 40 days: 10 February; the birthday is on 15 March.
        e.apply_batch(
            batch(vec![profile(1, "bday", 40, &[("birthday", "1980-03-15")])]),
            0,
        );
        let mut seen = Vec::new();
        for (seq, day) in (2..).zip(41..500) {
            let fx = e.apply_batch(batch(vec![visit(seq, "clock", day)]), 0);
            seen.extend(
                fx.tasks
                    .into_iter()
                    .filter(|t| t.kind() == TaskKind::Birthday),
            );
        }
        let days: Vec<_> = seen.iter().map(|t| (t.as_of - T0) / DAY).collect();
        // 12 March 1997 (day 70) and 12 March 1998 (day 435).
        assert_eq!(days, [70, 435]);
        assert_eq!(
            seen[0].detail,
            Detail::Birthday {
                date: T0 + 73 * DAY
            }
        );
    }

    #[test]
    fn coupon_purchases_make_a_bargain_hunter() {
        let mut e = engine(ClockMode::Event);
        let coupon = |seq: u64, day: u32| {
            entry(
                seq,
                &[
                    ("customer_id", "saver".into()),
                    ("type", "purchase".into()),
                    ("amount", "10".into()),
                    ("coupon", "SPRING10".into()),
                    ("ts", (u64::from(T0 + day * DAY) * 1000).to_string()),
                ],
            )
        };
        e.apply_batch(batch(vec![coupon(1, 0)]), 0);
        assert!(e.customer("saver").unwrap().tags.is_empty());
        e.apply_batch(batch(vec![coupon(2, 1), coupon(3, 2)]), 0);
        let view = e.customer("saver").unwrap();
        assert!(view.coupons_90d > 2.9, "{}", view.coupons_90d);
        assert_eq!(view.tags, ["bargain_hunter"]);
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
    fn a_deleted_entry_is_dead_lettered_without_moving_the_position() {
        let mut e = engine(ClockMode::Event);
        let start = purchase(1, "before", 0).id;
        e.start_at(0, start);
        let deleted = Entry {
            values: None,
            ..purchase(9, "gone", 0)
        };
        let fx = e.apply_batch(batch(vec![deleted]), 0);
        assert_eq!(fx.dead_letters.len(), 1);
        assert_eq!(fx.dead_letters[0].reason, Reason::EntryDeleted);
        assert_eq!(e.positions(), &[Some(start)]);
        // Entries before it, replayed after it, are still applied.
        e.apply_batch(batch(vec![purchase(2, "a", 0)]), 0);
        assert!(e.customer("a").is_some());
        // One at or below the position was seen before: only acknowledged.
        let again = Entry {
            values: None,
            ..purchase(1, "gone", 0)
        };
        let fx = e.apply_batch(batch(vec![again]), 0);
        assert!(fx.dead_letters.is_empty());
        assert_eq!(fx.acks.len(), 1);
    }

    #[test]
    fn an_entry_over_the_size_limit_is_dead_lettered_with_a_cut_copy() {
        let mut settings = settings(ClockMode::Event);
        settings.max_entry_bytes = 1_000;
        settings.max_copy_bytes = 300;
        let model = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
        let mut e = Engine::new(settings, Arc::new(model), Metrics::new());
        let mut big = purchase(1, "big", 0);
        let values = big.values.as_mut().unwrap();
        values.push(Value::BulkString(b"note".to_vec()));
        values.push(Value::BulkString("é".repeat(600).into_bytes()));
        let size = big.bytes();
        let fx = e.apply_batch(batch(vec![big, purchase(2, "small", 0)]), 0);
        assert!(e.customer("big").is_none());
        assert!(e.customer("small").is_some(), "the batch goes on");
        let dl = &fx.dead_letters[0];
        assert_eq!(dl.reason, Reason::EntryTooLarge);
        assert!(
            dl.detail.contains(&format!("holds {size} bytes"))
                && dl.detail.contains("events.max_entry_bytes (1000)")
                && dl.detail.contains("300 of"),
            "{}",
            dl.detail
        );
        let copied: usize = dl
            .values
            .iter()
            .map(|v| match v {
                Value::BulkString(b) => b.len(),
                _ => 0,
            })
            .sum();
        assert!(copied <= 300, "{copied}");
        let Value::BulkString(note) = dl.values.last().unwrap() else {
            panic!("{:?}", dl.values)
        };
        assert!(
            std::str::from_utf8(note).is_ok(),
            "text is cut at a character boundary"
        );
        assert_eq!(dl.values.len() % 2, 0, "names and values in pairs");
    }

    #[test]
    fn a_copy_within_the_limit_is_whole() {
        let values = vec![
            Value::BulkString(b"customer_id".to_vec()),
            Value::BulkString(b"c".to_vec()),
        ];
        assert_eq!(cut_copy(values.clone(), 12), Ok(values.clone()));
        assert_eq!(
            cut_copy(values.clone(), 11),
            Err(vec![]),
            "a name that does not fit ends the copy"
        );
    }

    #[test]
    fn a_start_position_counts_as_applied_and_is_kept_once_set() {
        let mut e = engine(ClockMode::Event);
        assert!(e.positions().is_empty());
        let at_start = Entry {
            stream: 1,
            ..purchase(5, "old", 0)
        };
        e.start_at(1, at_start.id);
        assert_eq!(e.positions(), &[None, Some(at_start.id)]);
        e.start_at(1, purchase(9, "x", 0).id);
        assert_eq!(
            e.positions()[1],
            Some(at_start.id),
            "a known position is never replaced"
        );
        e.apply_batch(batch(vec![at_start]), 0);
        assert!(
            e.customer("old").is_none(),
            "entries up to the start are not applied"
        );
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
            tasks.extend(
                fx.tasks
                    .into_iter()
                    .filter(|t| t.kind() == TaskKind::Winback),
            );
        }
        assert_eq!(tasks.len(), 1, "{tasks:?}");
        let task = &tasks[0];
        assert_eq!(task.customer_id, "quiet");
        let winback = task.winback().expect("a win-back task");
        assert!(winback.churn_probability >= 0.7);
        // The crossing is noticed within one rescore interval (a day).
        let threshold_logit = (0.7f64 / 0.3).ln();
        let crossing = T0 + (((3.0 + 0.5 * (1.0 + threshold_logit)).exp() - 1.0) * 86_400.0) as u32;
        assert!(
            (crossing..=crossing + DAY).contains(&task.as_of),
            "task at {}, crossing at {crossing}",
            task.as_of
        );
        assert_eq!(winback.episode_start, T0);
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
                    if let Some(w) = t.winback() {
                        tasks.insert((t.customer_id.clone(), w.attempt, w.episode_start), t.as_of);
                    }
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
        let winbacks: Vec<_> = fx.tasks.iter().filter_map(Task::winback).collect();
        assert_eq!(winbacks.len(), 1);
        let group = winbacks[0].group;
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
    fn the_state_version_moves_with_every_change_a_snapshot_records_and_only_then() {
        let mut e = engine(ClockMode::Wall);
        let wall = |day: u32| u64::from(T0 + day * DAY) * 1000;
        let mut last = e.state_version();
        let mut moved = |e: &Engine, what: &str, expected: bool| {
            let now = e.state_version();
            assert_eq!(now != last, expected, "{what}: {last:?} -> {now:?}");
            last = now;
        };
        e.apply_batch(batch(vec![purchase(1, "a", 0)]), wall(0));
        moved(&e, "a purchase", true);
        e.tick(wall(1));
        moved(&e, "a tick with nobody due", false);
        e.apply_batch(batch(vec![]), wall(1));
        moved(&e, "an empty batch", false);
        e.apply_batch(batch(vec![purchase(1, "a", 0)]), wall(1));
        moved(&e, "an entry applied before", false);
        let bad = entry(2, &[("customer_id", "b".into()), ("type", "gift".into())]);
        e.apply_batch(batch(vec![bad]), wall(1));
        moved(&e, "a dead-lettered entry (its position)", true);
        e.tick(wall(120));
        moved(&e, "a tick that re-scores a silent customer", true);
        e.set_model(Arc::new(flat_model()));
        moved(&e, "a new model", true);
        e.tick(wall(121));
        moved(&e, "the re-check of everyone after a new model", true);
        e.begin_snapshot();
        while e.snapshot_slice(10).is_some() {}
        moved(&e, "a snapshot", false);
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
