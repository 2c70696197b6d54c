//! The engine's slice of the settings, and the fingerprint of those that schedule checks.

use crate::classify::{RiskBands, Segment, StageBounds};
use crate::config::{ClockMode, SegmentSettings, Settings};
use crate::decide::TagRule;
use crate::decide::TasksSettings;
use crate::decide::WinbackSettings;
use crate::event::EventLimits;
use crate::partition::Partitioning;
use crate::profiles::ProfileSettings;

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
    /// Every kind's expiry and conversion window.
    pub outcomes: crate::outcomes::OutcomeSettings,
    pub profiles: ProfileSettings,
    pub tags: Vec<TagRule>,
    pub max_customers: usize,
    /// Largest entry applied (`events.max_entry_bytes`); larger ones are dead-lettered.
    pub max_entry_bytes: usize,
    /// Bytes of a rejected entry copied into its dead letter (`dead_letter.max_copy_bytes`).
    pub max_copy_bytes: usize,
    /// Which partition each input stream is, to dead-letter events in the wrong one.
    pub partitions: Partitioning,
}

impl EngineSettings {
    /// A hash of every setting that decides when a silent customer is checked next. A
    /// restart under other settings (or another model) must re-check everyone: checks
    /// scheduled under the old ones may come too late under the new.
    pub(crate) fn schedule_fingerprint(&self) -> u64 {
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
                max_future_skew_ms: u64::try_from(s.events.max_future_skew.as_millis())
                    .unwrap_or(u64::MAX),
                min_ts_ms: s.events.min_ts_ms,
                max_profile_value_bytes: s.profiles.max_value_bytes,
            },
            stages: s.stages,
            risk: s.risk,
            segments: s.segments.clone(),
            rescore_interval_secs: s.scoring.rescore_interval_secs.get(),
            max_rescore_interval_secs: s.scoring.max_rescore_interval_secs,
            winback: s.winback.clone(),
            tasks: s.tasks.clone(),
            outcomes: s.outcomes.clone(),
            profiles: s.profiles.clone(),
            tags: s.tags.0.clone(),
            max_entry_bytes: s.events.max_entry_bytes,
            max_copy_bytes: s.dead_letter.max_copy_bytes,
            max_customers: s.state.max_customers.get() as usize,
            partitions: s.partitioning(),
        }
    }
}
