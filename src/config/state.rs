//! `[state]`: snapshots of customer state, and the memory bound.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateSettings {
    /// Where snapshots of customer state go (a container volume); empty turns them off, and
    /// a restart then forgets every customer.
    pub dir: PathBuf,
    /// How often a snapshot is written (and once more at shutdown), unless nothing changed
    /// since the last one written.
    pub snapshot_interval_ms: u64,
    /// Snapshots kept: the newest is used, older ones stand in if it is damaged.
    pub keep: usize,
    /// Customers tracked at most: the memory bound. When a new customer would exceed it,
    /// the least recently active 1 % are forgotten.
    pub max_customers: usize,
    /// Snapshots failing this many times in a row make `/readyz` answer 503 until one is
    /// written again: a restart would lose everything since the last good one. 0: never.
    pub max_consecutive_snapshot_failures: u32,
}

impl Default for StateSettings {
    fn default() -> Self {
        Self {
            dir: "state".into(),
            snapshot_interval_ms: 10_000,
            keep: 3,
            max_customers: 10_000_000,
            max_consecutive_snapshot_failures: 3,
        }
    }
}

impl StateSettings {
    /// The snapshot directory, unless snapshots are off.
    pub fn snapshot_dir(&self) -> Option<&Path> {
        (!self.dir.as_os_str().is_empty()).then_some(self.dir.as_path())
    }
}

impl StateSettings {
    /// Problems with these settings, by key.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.snapshot_interval_ms == 0 {
            p.push("state.snapshot_interval_ms must be at least 1".into());
        }
        if self.keep == 0 {
            p.push("state.keep must be at least 1".into());
        }
        if !(1..=u32::MAX as usize).contains(&self.max_customers) {
            p.push(format!(
                "state.max_customers ({}) must be between 1 and {}",
                self.max_customers,
                u32::MAX
            ));
        }
        p
    }
}
