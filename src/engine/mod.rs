//! The engine: owns every customer's state and turns batches of entries (and the passing of
//! time) into state changes and effects. No I/O: the daemon feeds it and writes its
//! [`Effects`], tests drive it directly.
//!
//! Per event: parse, update the customer's features, score, classify, ask the win-back
//! policy, and schedule the customer's next check. Per tick (or, under the event-time clock,
//! whenever the watermark advances): re-score the customers whose check is due, so silence is
//! noticed without scanning everyone. Under the wall clock, while a backlog is read, "now"
//! is the event time reached ([`catch_up`]). Every task raised is stamped with its expiry
//! (dropped if already past) and opened for its outcome ([`crate::outcomes`]); purchases
//! cancel and convert open tasks, and the sweeps close conversion windows.

mod catch_up;
mod customer;
mod effects;
mod eviction;
mod partitioned;
mod persistence;
mod population;
mod settings;
mod view;

#[cfg(test)]
mod follow_up_tests;
#[cfg(test)]
mod partitioned_tests;
#[cfg(test)]
pub(crate) mod tests;

pub use customer::{Customer, Customers, Extras, Signals};
pub use effects::{DeadLetter, Effects};
pub use partitioned::{partition_settings, Partitioned};
pub use persistence::{EngineState, StateHeader, StateVersion};
pub use population::Summary;
pub use settings::EngineSettings;
pub use view::{CustomerView, Dissatisfaction};

use std::sync::Arc;
use std::time::Instant;

use crate::classify::{LifecycleStage, RfmThresholds};
use crate::config::{ClockMode, SegmentMode};
use crate::decide::uplift::UpliftBook;
use crate::decide::{Assessment, Budgets, Playbook, Scored, Targeting, TaskKind, WinbackState};
use crate::event::{event_kind, parse_event, EntryId, Event, EventKind, Reason, Rejection};
use crate::features::recheck::Recheck;
use crate::features::store::CustomerIdx;
use crate::features::timers::{Timer, TimerQueue};
use crate::features::CustomerFeatures;
use crate::metrics::{EngineMetrics, Outcome, OutcomeCounts, PROBABILITY_BUCKETS};
use crate::model::Model;
use crate::outcomes::OpenTasks;
use crate::profiles::{Interner, Profile, Profiles};
use crate::source::batch::{Batch, StreamIdx};
use crate::time::{self, UnixSeconds};
use catch_up::CatchUp;
use effects::cut_copy;
use population::Population;

/// One scoring in this many is timed for the scoring histogram.
const SCORING_SAMPLE_EVERY: u64 = 64;

pub struct Engine {
    settings: EngineSettings,
    /// Which tasks a customer gets, and when.
    playbook: Playbook,
    /// How much of each budgeted action's daily budget is left (win-back's and the care
    /// kinds'), and the running picture of candidates' priorities that paces it.
    budgets: Budgets,
    /// The lift measured per action × segment, which `winback.policy = learned` draws
    /// priorities from; swapped in between batches.
    targeting: Targeting,
    model: Arc<Model>,
    model_version: Arc<str>,
    store: Customers,
    timers: TimerQueue,
    recheck: Recheck,
    profiles: Profiles,
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
    /// Under the wall clock, the event time reached while reading a backlog.
    catch_up: CatchUp,
    /// Tasks written whose outcome is not known yet.
    open_tasks: OpenTasks,
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
    metrics: EngineMetrics,
    /// `churnd_customers_by_region` per region label (in the order of
    /// [`Profiles::region_labels`]), resolved at the first publish.
    region_gauges: std::sync::OnceLock<Vec<prometheus::IntGauge>>,
    /// The budget series of each budgeted action, in the order of [`Budgets`].
    budget_series: Vec<crate::metrics::BudgetSeries>,
    /// The pooled budget's series, with a pooled budget only.
    pool_series: Option<crate::metrics::PoolSeries>,
}

impl Engine {
    pub fn new(settings: EngineSettings, model: Arc<Model>, metrics: EngineMetrics) -> Self {
        metrics.model.set(model.version());
        metrics
            .customers_max
            .set(i64::try_from(settings.max_customers).unwrap_or(i64::MAX));
        let playbook = Playbook::new(&settings.winback, &settings.tasks, &settings.tags);
        let budgets = Budgets::with_care(&settings.winback.budgets, &settings.tasks.budgets)
            .with_pool(settings.winback.budget);
        let budget_series = metrics.budget(
            settings.winback.budgets.keys().map(String::as_str),
            settings.tasks.budgets.keys().map(String::as_str),
        );
        let pool_series = budgets.is_pooled().then(|| metrics.pool());
        let population = Population {
            region: vec![0; settings.profiles.regions.len() + 2],
            ..Population::default()
        };
        // Where the probability tenth (a population gauge) or the task decision changes.
        // Risk bands need no check of their own: nothing counts customers by risk.
        let boundaries = (1..PROBABILITY_BUCKETS.len())
            .map(|tenth| tenth as f64 / PROBABILITY_BUCKETS.len() as f64)
            .chain(playbook.thresholds().iter().copied());
        Self {
            recheck: Recheck::new(
                boundaries,
                settings.rescore_interval_secs,
                settings.max_rescore_interval_secs,
            ),
            population_task_band: (settings.segments.mode == SegmentMode::Population)
                .then(|| playbook.thresholds_span())
                .flatten(),
            playbook,
            budgets,
            targeting: Targeting::default(),
            budget_series,
            pool_series,
            profiles: Profiles::new(&settings.profiles, Interner::default()),
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
            catch_up: CatchUp::default(),
            open_tasks: OpenTasks::default(),
            population,
            scorings: 0,
            applied: Vec::new(),
            recheck_pending: false,
            metrics,
            region_gauges: std::sync::OnceLock::new(),
        }
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
    pub(crate) fn start_at(&mut self, stream: StreamIdx, position: EntryId) {
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
    pub(crate) fn set_model(&mut self, model: Arc<Model>) {
        self.metrics.model.set(model.version());
        self.model_version = model.version().into();
        self.model = model;
        self.recheck_pending = true;
    }

    /// Decides win-back priorities with `book` from the next decision on. The engine decides
    /// deterministically given the book it has: a replay with the same book raises the same
    /// tasks.
    pub(crate) fn set_uplift(&mut self, book: Arc<UpliftBook>) {
        self.targeting.set_book(book);
    }

    /// Keeps `book` for the next snapshot, which takes it and records it
    /// ([`Self::begin_snapshot`]): with snapshots on, a restore then replays the entries that
    /// follow with the book their first run had.
    pub(crate) fn offer_uplift(&mut self, book: Arc<UpliftBook>) {
        self.targeting.offer(book);
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

    /// "Now" by the configured clock: under the wall clock, while a backlog is read, the
    /// event time reached.
    pub fn now(&self) -> UnixSeconds {
        match self.settings.clock {
            ClockMode::Wall => self.catch_up.now(self.wall),
            ClockMode::Event => self.watermark,
        }
    }

    /// Applies a batch read at wall-clock time `wall_ms`. Every entry is acknowledged in the
    /// effects: good ones once applied, bad ones once dead-lettered.
    pub fn apply_batch(&mut self, batch: Batch, wall_ms: u64) -> Effects {
        let started = Instant::now();
        self.wall = time::from_millis(wall_ms);
        let at_end = batch.at_end;
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
                parse_event(entry.fields(), entry.id.ms, &self.settings.limits).and_then(|event| {
                    let stream = usize::from(entry.stream);
                    self.settings.partitions.check(stream, event.customer_id)?;
                    Ok(event)
                })
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
            if self.catch_up.batch_done(at_end, self.wall) {
                tracing::info!(
                    "caught up with the input streams: silence is judged at wall time again"
                );
            }
            self.sweep(self.now(), &mut fx);
        }
        self.publish();
        self.publish_budgets();
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
            if self.catch_up.judges_silence() {
                self.sweep(self.now(), &mut fx);
            }
            self.publish();
            self.publish_budgets();
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
        match self.settings.clock {
            ClockMode::Event if event.time > self.watermark => {
                self.advance_watermark(event.time, fx);
            }
            ClockMode::Event => {}
            ClockMode::Wall => self.read_at_wall(event.time, fx),
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
        if event.kind == EventKind::Purchase {
            self.open_tasks.on_purchase(
                event.customer_id,
                event.time,
                event.amount,
                (&mut fx.cancels, &mut fx.outcomes),
            );
        }
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
                if let Some(group) = self.playbook.on_new_purchase(
                    &mut customer.winback,
                    event.customer_id,
                    event.time,
                ) {
                    self.metrics.recoveries.get(group).inc();
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
        self.replay_to(to, fx);
        self.watermark = to;
    }

    /// Re-scores every customer whose check falls due by `to`, each at the moment it was
    /// due, and closes the conversion windows closed by then: a replay sees what living it
    /// would.
    fn replay_to(&mut self, to: UnixSeconds, fx: &mut Effects) {
        while let Some((idx, due)) = self.timers.pop_due(to, &mut self.store) {
            self.metrics.rescores.inc();
            self.evaluate(idx, due, None, fx);
        }
        self.open_tasks.close_due(to, &mut fx.outcomes);
        self.refresh_thresholds(to);
    }

    /// Under the wall clock, an event of `time` is read: if it is from the past (a backlog),
    /// the position reached moves, and what fell due by then is replayed.
    fn read_at_wall(&mut self, time: UnixSeconds, fx: &mut Effects) {
        let before = self.catch_up.position();
        self.catch_up.read(time, self.wall);
        let after = self.catch_up.position();
        if before.is_none() && after.is_some() {
            tracing::info!(
                event_time = %time::rfc3339(time),
                "reading events from the past: silence is judged at the event time reached until the input streams are read to the end"
            );
        }
        if let Some(to) = after.filter(|&to| Some(to) > before) {
            self.replay_to(to.min(self.wall), fx);
        }
    }

    fn sweep(&mut self, now: UnixSeconds, fx: &mut Effects) {
        while let Some((idx, _)) = self.timers.pop_due(now, &mut self.store) {
            self.metrics.rescores.inc();
            self.evaluate(idx, now, None, fx);
        }
        self.open_tasks.close_due(now, &mut fx.outcomes);
        self.refresh_thresholds(now);
    }

    /// Scores and classifies one customer at `now`, asks the playbook which tasks are due,
    /// and schedules the next check.
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
        let customer = *self.store.get(idx);
        let features = customer.features;
        let purchases = features.first_purchase().zip(features.last_purchase());
        let stage = self.settings.stages.stage(purchases, now);
        let scoring = features.vector(now).zip(features.rfm(now)).map(|(x, rfm)| {
            self.scorings += 1;
            let timer = (self.scorings % SCORING_SAMPLE_EVERY == 0).then(Instant::now);
            let score = self.model.score(&x);
            if let Some(t) = timer {
                self.metrics
                    .scoring_seconds
                    .observe(t.elapsed().as_secs_f64());
            }
            (x, rfm, score)
        });
        let scored = scoring.as_ref().map(|(_, rfm, score)| Scored {
            probability: score.probability,
            risk: self.settings.risk.risk(score.probability),
            segment: self.thresholds.segment(rfm),
            monetary_365d: rfm.monetary_365d,
            score,
        });
        let bucket = scored.map(|s| ((s.probability * 10.0) as u8).min(9));
        self.reclassify(idx, stage, scored.map(|s| s.segment), bucket);
        let (mut winback, mut contact) = (customer.winback, customer.contact);
        // Taken out for the decision, which reads the rest of the engine.
        let mut budgets = std::mem::take(&mut self.budgets);
        let mut targeting = std::mem::take(&mut self.targeting);
        let assessment = self.assess(idx, now, stage, scored);
        let first = fx.tasks.len();
        let decision_next = self.playbook.decide(
            &assessment,
            (&mut winback, &mut contact),
            feedback,
            &self.model_version,
            (&mut budgets, &mut targeting, &mut fx.tasks),
        );
        self.budgets = budgets;
        self.targeting = targeting;
        let wall_clock = self.settings.clock == ClockMode::Wall;
        let dropped = crate::outcomes::expire(
            &mut fx.tasks,
            first,
            &self.settings.outcomes,
            wall_clock.then_some(self.wall),
            wall_clock && self.catch_up.position().is_some(),
        );
        let held = !dropped.is_empty();
        // Only the tasks written spend their action's budget.
        let all = || dropped.expired.iter().chain(&dropped.held_back);
        self.budgets.settle(
            all().any(|&k| k == TaskKind::Winback),
            all().any(|&k| k != TaskKind::Winback),
        );
        if held {
            let f = &self.metrics.follow_up;
            for kind in dropped.expired {
                f.tasks_expired.get(kind).inc();
            }
            for kind in dropped.held_back {
                f.tasks_held_back.get(kind).inc();
            }
            // Nothing went out: the customer was not contacted.
            if fx.tasks.len() == first {
                (winback, contact) = (customer.winback, customer.contact);
            }
        }
        for task in &fx.tasks[first..] {
            self.open_tasks
                .open(task, self.settings.outcomes.of(task.kind()));
        }
        let record = self.store.get_mut(idx);
        record.winback = winback;
        record.contact = contact;
        let next = match &scoring {
            // Looked at again once the backlog is read: while catching up, "now" stays
            // below the wall clock of this batch.
            _ if held => Some(self.wall),
            // A prospect: nothing changes for them but the care occasions.
            None => decision_next,
            Some((x, rfm, score)) => Some(
                self.recheck.next(
                    now,
                    score.logit,
                    |secs| {
                        features
                            .vector(now.saturating_add(secs))
                            .map_or((0.0, 0.0), |later| self.model.logit_reach(x, &later))
                    },
                    [
                        self.settings.stages.next_change(purchases, now),
                        self.thresholds.next_change(rfm, now),
                        decision_next,
                        self.segment_may_decide(&winback, score.probability)
                            .then(|| now.saturating_add(self.settings.rescore_interval_secs)),
                    ],
                ),
            ),
        };
        // While catching up, what a check long before the wall clock decides is not kept.
        let next = match (next, self.catch_up.checks_from(self.wall)) {
            (Some(next), Some(from)) => Some(next.max(from)),
            (next, _) => next,
        };
        self.timers
            .schedule(idx, &mut self.store.get_mut(idx).timer, next);
    }

    /// The customer at `now`, as the playbook and the tag rules see them.
    fn assess<'a>(
        &'a self,
        idx: CustomerIdx,
        now: UnixSeconds,
        stage: LifecycleStage,
        scored: Option<Scored<'a>>,
    ) -> Assessment<'a> {
        let extras = self.store.extra(idx);
        Assessment {
            customer_id: self.store.id(idx),
            now,
            stage,
            features: &self.store.get(idx).features,
            scored,
            profile: extras.and_then(|x| x.profile.as_ref()),
            feedback: extras.and_then(Extras::feedback),
            coupons: extras.and_then(Extras::coupons),
            value: self.model.value(),
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
            && self.playbook.may_raise(winback)
    }
}
