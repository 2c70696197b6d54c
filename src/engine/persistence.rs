//! Snapshots and restores: what a snapshot holds, taking one while the engine runs, and
//! continuing from one.

use std::sync::Arc;

use crate::classify::RfmThresholds;
use crate::decide::uplift::{Arm, ArmOutcomes, UpliftBook};
use crate::decide::{PacerState, PoolState};
use crate::event::EntryId;
use crate::features::store::{CaptureSize, Captured};
use crate::features::timers::{Timer, TimerQueue};
use crate::metrics::EngineMetrics;
use crate::model::Model;
use crate::outcomes::OpenTask;
use crate::partition::PartitionCount;
use crate::profiles::{Interner, Profiles};
use crate::time::UnixSeconds;

use super::catch_up::CatchUp;
use super::{Customer, Customers, Engine, EngineSettings, Extras};

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
    /// Each budgeted win-back action's pacing (spend today, the picture of priorities), by
    /// action; empty in snapshots before format 5.
    pub budgets: Vec<(String, PacerState)>,
    /// Each budgeted care action's pacing (`[tasks.budgets]`), by action; empty in
    /// snapshots before format 6.
    pub care_budgets: Vec<(String, PacerState)>,
    /// The pooled budget's pacing (`[winback.budget]`), when one was set; format 8 on
    /// (format 7 kept it among `budgets`, from where it is read into here; none before).
    pub pool: Option<PoolState>,
    /// `partitions.count` the state was kept under (snapshots before format 5: 1). A start
    /// under another count is refused: the positions and customers are the old partitions'.
    pub partitions: PartitionCount,
    /// Tasks written whose outcome is not known yet, with their customer IDs (format
    /// version 5 on; none before).
    pub open_tasks: Vec<(String, OpenTask)>,
    /// The outcomes per arm of the book win-back decisions are made with from this point on
    /// (format 7 on; none before): a replay from here decides with the same book.
    pub uplift: Vec<(Arm, ArmOutcomes)>,
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
    /// The open tasks, by their count of changes, as the customers.
    open_tasks: u64,
    /// A newer book waits for the next snapshot, which takes it: the state to record moved.
    uplift_offered: bool,
    header: StateHeader,
}

impl Engine {
    /// Continues from a snapshot's state: same customers, timers, clock and stream positions.
    pub fn restore(
        settings: EngineSettings,
        model: Arc<Model>,
        metrics: EngineMetrics,
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
            budgets,
            care_budgets,
            pool,
            // Checked against the settings before the snapshot is restored (the daemon
            // refuses another count).
            partitions: _,
            open_tasks,
            uplift,
        } = header;
        if !uplift.is_empty() {
            let mut book = UpliftBook::new(engine.settings.winback.learn);
            uplift.into_iter().for_each(|(arm, o)| book.set(arm, o));
            engine.targeting.set_book(Arc::new(book));
        }
        for (customer, task) in open_tasks {
            engine.open_tasks.insert(&customer, task);
        }
        for (_, c) in customers.iter() {
            engine.population.count(c, 1);
        }
        engine.store = customers;
        engine.profiles = Profiles::new(&engine.settings.profiles, profiles);
        engine.count_profiles();
        engine.rebuild_timers();
        engine.watermark = watermark;
        engine.catch_up = CatchUp::restored();
        engine.thresholds = thresholds;
        engine.next_threshold_refresh = next_threshold_refresh;
        engine.scorings = scorings;
        engine.applied = applied;
        engine.budgets.restore(budgets, care_budgets);
        engine.budgets.restore_pool(pool);
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
        // Under the event clock nothing else publishes the budgets before the first batch:
        // their gauges (per day, spent, bar) would read 0 until then. (Under the wall clock
        // the first tick does, once the wall time is known.)
        if engine.settings.clock == super::ClockMode::Event {
            engine.publish_budgets();
        }
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
    /// snapshot in progress. A book offered since the last one is taken here, and recorded.
    pub fn begin_snapshot(&mut self) -> (StateHeader, CaptureSize) {
        self.targeting.adopt();
        (self.state_header(), self.store.begin_capture())
    }

    /// The next `max` customers of the snapshot in progress, as they were when it began;
    /// `None` once all were handed out (or when none is in progress).
    pub fn snapshot_slice(&mut self, max: usize) -> Option<Captured<Customer, Extras>> {
        self.store.capture_next(max)
    }

    /// The version of the state a snapshot would record now (see [`StateVersion`]).
    pub(crate) fn state_version(&self) -> StateVersion {
        StateVersion {
            customers: self.store.changes(),
            open_tasks: self.open_tasks.changes(),
            uplift_offered: self.targeting.offered(),
            header: self.header_without_open_tasks(),
        }
    }

    /// Drops the snapshot in progress, if any.
    pub fn abort_snapshot(&mut self) {
        self.store.abort_capture();
    }

    pub(super) fn state_header(&self) -> StateHeader {
        StateHeader {
            open_tasks: self
                .open_tasks
                .iter()
                .map(|(c, t)| (c.to_string(), t.clone()))
                .collect(),
            ..self.header_without_open_tasks()
        }
    }

    /// The header but for the open tasks: cheap to make.
    fn header_without_open_tasks(&self) -> StateHeader {
        StateHeader {
            open_tasks: Vec::new(),
            watermark: self.watermark,
            thresholds: self.thresholds,
            next_threshold_refresh: self.next_threshold_refresh,
            scorings: self.scorings,
            schedule_settings: self.schedule_fingerprint,
            applied: self.applied.clone(),
            model_version: self.model_version.to_string(),
            budgets: self.budgets.states(),
            care_budgets: self.budgets.care_states(),
            pool: self.budgets.pool_state(),
            partitions: self.settings.partitions.count,
            uplift: self.targeting.book().entries(),
        }
    }

    /// Recounts the customers' profiles: by region, and the free-form keys in use (after a
    /// restore or an eviction).
    pub(super) fn count_profiles(&mut self) {
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
    pub(super) fn rebuild_timers(&mut self) {
        self.timers = TimerQueue::default();
        for (idx, c) in self.store.iter_mut() {
            let due = c.timer.due();
            c.timer = Timer::default();
            self.timers.schedule(idx, &mut c.timer, due);
        }
    }
}
