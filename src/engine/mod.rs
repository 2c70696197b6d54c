//! The engine: owns every customer's state and turns batches of entries (and the passing of
//! time) into state changes and effects. No I/O: the daemon feeds it and writes its
//! [`Effects`], tests drive it directly.
//!
//! Per event: parse, update the customer's features, score, classify, ask the win-back
//! policy, and schedule the customer's next check. Per tick (or, under the event-time clock,
//! whenever the watermark advances): re-score the customers whose check is due, so silence is
//! noticed without scanning everyone.

mod customer;
mod effects;
mod eviction;
mod persistence;
mod population;
mod settings;
mod view;

#[cfg(test)]
pub(crate) mod tests;

pub use customer::{Customer, Customers, Extras, Signals};
pub use effects::{DeadLetter, Effects};
pub use persistence::{EngineState, StateHeader, StateVersion};
pub use population::Summary;
pub use settings::EngineSettings;
pub use view::{CustomerView, Dissatisfaction};

use std::sync::Arc;
use std::time::Instant;

use crate::classify::{LifecycleStage, RfmThresholds, Risk, Segment};
use crate::config::{ClockMode, SegmentMode};
use crate::event::{event_kind, parse_event, EntryId, Event, EventKind, Reason, Rejection};
use crate::features::recheck::Recheck;
use crate::features::store::CustomerIdx;
use crate::features::timers::{Timer, TimerQueue};
use crate::features::CustomerFeatures;
use crate::metrics::{Metrics, Outcome, OutcomeCounts, PROBABILITY_BUCKETS};
use crate::model::Model;
use crate::profiles::{Interner, Profile, Profiles};
use crate::source::batch::{Batch, StreamIdx};
use crate::tags::{Facts, Tags};
use crate::tasks::{CareCandidate, CarePolicy};
use crate::time::{self, UnixSeconds};
use crate::winback::{Candidate, Policy, WinbackState};
use effects::cut_copy;
use population::Population;

/// One scoring in this many is timed for the scoring histogram.
const SCORING_SAMPLE_EVERY: u64 = 64;

/// A scored customer's classification, for the tag rules.
#[derive(Debug, Clone, Copy)]
struct Scored {
    segment: Segment,
    risk: Risk,
    probability: f64,
    monetary_365d: f64,
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
}
