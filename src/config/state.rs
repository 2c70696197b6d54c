//! `[state]`: snapshots of customer state, and the memory bound.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::read::{read_choices, Choice, Fields};
use super::units::Interval;
use super::Section;

/// Where snapshots are kept (`state.store`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StateStore {
    /// Files in `state.dir` (a volume; shared by the replicas under
    /// `partitions.ownership = leases`).
    #[default]
    Dir,
    /// Keys in the Redis churnd reads from (`redis.url`, either `redis.mode`), under each
    /// partition's hash tag: no volume, and replicas share nothing but Redis. `state.dir` is
    /// not used. As durable as Redis's own persistence.
    Redis,
}

impl Choice for StateStore {
    const ALL: &'static [Self] = &[Self::Dir, Self::Redis];
    fn name(self) -> &'static str {
        match self {
            Self::Dir => "dir",
            Self::Redis => "redis",
        }
    }
}
read_choices!(StateStore);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateSettings {
    /// Where snapshots are kept: files in `dir`, or keys in Redis.
    pub store: StateStore,
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
            store: StateStore::Dir,
            dir: "state".into(),
            snapshot_interval: Interval::from_millis(10_000),
            keep: NonZeroUsize::new(3).expect("not zero"),
            max_customers: NonZeroU32::new(10_000_000).expect("not zero"),
            max_consecutive_snapshot_failures: 3,
        }
    }
}

impl StateSettings {
    /// The snapshot directory, unless snapshots are off or kept in Redis.
    pub(crate) fn snapshot_dir(&self) -> Option<&Path> {
        (self.store == StateStore::Dir && !self.dir.as_os_str().is_empty())
            .then_some(self.dir.as_path())
    }

    /// Whether customer state is kept in snapshots: always with `store = "redis"`, with a
    /// `dir` otherwise.
    pub(crate) fn keeps_state(&self) -> bool {
        self.store == StateStore::Redis || self.snapshot_dir().is_some()
    }
}

impl Section for StateSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            store: f.get("store", d.store),
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
