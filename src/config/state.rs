//! `[state]`: snapshots of customer state, and the memory bound.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::read::Fields;
use super::units::Interval;
use super::Section;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateSettings {
    /// Where snapshots of customer state go (a container volume); empty turns them off, and
    /// a restart then forgets every customer.
    pub dir: PathBuf,
    /// How often a snapshot is written (and once more at shutdown), unless nothing changed
    /// since the last one written.
    #[serde(rename = "snapshot_interval_ms")]
    pub snapshot_interval: Interval,
    /// Snapshots kept: the newest is used, older ones stand in if it is damaged.
    pub keep: NonZeroUsize,
    /// Customers tracked at most: the memory bound. When a new customer would exceed it,
    /// the least recently active 1 % are forgotten.
    pub max_customers: NonZeroU32,
    /// Snapshots failing this many times in a row make `/readyz` answer 503 until one is
    /// written again: a restart would lose everything since the last good one. 0: never.
    pub max_consecutive_snapshot_failures: u32,
}

impl Default for StateSettings {
    fn default() -> Self {
        Self {
            dir: "state".into(),
            snapshot_interval: Interval::from_millis(10_000),
            keep: NonZeroUsize::new(3).expect("not zero"),
            max_customers: NonZeroU32::new(10_000_000).expect("not zero"),
            max_consecutive_snapshot_failures: 3,
        }
    }
}

impl StateSettings {
    /// The snapshot directory, unless snapshots are off.
    pub(crate) fn snapshot_dir(&self) -> Option<&Path> {
        (!self.dir.as_os_str().is_empty()).then_some(self.dir.as_path())
    }
}

impl Section for StateSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            dir: f.get("dir", d.dir),
            snapshot_interval: f.get("snapshot_interval_ms", d.snapshot_interval),
            keep: f.get("keep", d.keep),
            max_customers: f.get("max_customers", d.max_customers),
            max_consecutive_snapshot_failures: f.get(
                "max_consecutive_snapshot_failures",
                d.max_consecutive_snapshot_failures,
            ),
        }
    }
}
