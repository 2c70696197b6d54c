//! Where each partition's snapshots are kept, and the state a start restores from them.
//!
//! With one partition, `state.dir` itself: the layout from before partitions. With
//! `partitions.count` = P > 1, one directory per partition, `state.dir/partition-<p>`, each
//! holding only that partition's snapshots (its customers, its positions in its own
//! streams, its clock, open tasks and budgets' pacing), so that a partition can be moved
//! with its directory. A start refuses state kept under another count, a snapshot of every
//! partition in one file (written before snapshots were per partition), and a partition's
//! snapshot found in another partition's directory.

use std::path::Path;

use super::{load_snapshot, DaemonError};
use crate::config::Settings;
use crate::engine::EngineState;
use crate::metrics::SnapshotMetrics;
use crate::partition::{PartitionCount, Partitioning};
use crate::state::{SnapshotDir, StateError};

/// The directory of partition `p`'s snapshots under `state.dir`.
pub(crate) fn partition_dir(root: &Path, partition: u16) -> std::path::PathBuf {
    root.join(format!("partition-{partition}"))
}

/// The snapshot directories of a deployment.
#[derive(Clone)]
pub(super) struct Layout {
    /// `state.dir`.
    root: SnapshotDir,
    /// Per partition, its directory and the streams its positions are of.
    pub parts: Vec<(SnapshotDir, Vec<String>)>,
    partitioning: Partitioning,
}

impl Layout {
    /// Opens (creating them if needed) the directories of every partition under `root`.
    pub fn open(root: SnapshotDir, settings: &Settings) -> Result<Self, StateError> {
        let partitioning = settings.partitioning();
        let count = partitioning.count;
        let parts = if count.is_partitioned() {
            let keep = settings.state.keep.get();
            (0..count.get())
                .map(|p| {
                    let dir = SnapshotDir::open(&partition_dir(root.dir(), p), keep)?;
                    Ok((dir, partitioning.streams_of(p)))
                })
                .collect::<Result<_, StateError>>()?
        } else {
            vec![(root.clone(), settings.input_streams())]
        };
        Ok(Self {
            root,
            parts,
            partitioning,
        })
    }

    /// The newest good snapshot of every partition, partition `p`'s at index `p` (blocking:
    /// reads the files).
    pub fn load(&self, metrics: &SnapshotMetrics) -> Result<Vec<Option<EngineState>>, DaemonError> {
        let count = self.partitioning.count;
        if !count.is_partitioned() {
            let (dir, streams) = &self.parts[0];
            let state = load_snapshot(dir, streams, metrics)?.map(|d| d.state);
            match &state {
                Some(state) => same_partitions(state.header.partitions, count, dir)?,
                None => self.refuse_partition_dirs(metrics)?,
            }
            return Ok(vec![state]);
        }
        if self.root.has_snapshots() {
            let streams = count.streams(&self.partitioning.bases);
            if let Some(old) = load_snapshot(&self.root, &streams, metrics)? {
                same_partitions(old.state.header.partitions, count, &self.root)?;
                return Err(DaemonError::OneSnapshotForAllPartitions {
                    dir: self.root.dir().display().to_string(),
                    count,
                });
            }
        }
        (0..count.get())
            .map(|p| self.load_partition(p, metrics))
            .collect()
    }

    /// The newest good snapshot of each partition of `owned`, `owned[i]`'s at index `i`: what
    /// a replica that owns them restores (blocking: reads the files). With one partition,
    /// as [`Self::load`].
    pub fn load_owned(
        &self,
        owned: &[u16],
        metrics: &SnapshotMetrics,
    ) -> Result<Vec<Option<EngineState>>, DaemonError> {
        if !self.partitioning.count.is_partitioned() {
            return self.load(metrics);
        }
        owned
            .iter()
            .map(|&p| self.load_partition(p, metrics))
            .collect()
    }

    /// Partition `p`'s newest good snapshot, refused if it is another count's or another
    /// partition's.
    fn load_partition(
        &self,
        p: u16,
        metrics: &SnapshotMetrics,
    ) -> Result<Option<EngineState>, DaemonError> {
        let count = self.partitioning.count;
        let (dir, streams) = &self.parts[usize::from(p)];
        let Some(decoded) = load_snapshot(dir, streams, metrics)? else {
            return Ok(None);
        };
        same_partitions(decoded.state.header.partitions, count, dir)?;
        if let Some(found) = decoded
            .dropped_streams
            .iter()
            .find_map(|name| self.partition_of(name))
            .filter(|&found| found != p)
        {
            return Err(DaemonError::MisplacedPartition {
                dir: dir.dir().display().to_string(),
                found,
                expected: p,
            });
        }
        Ok(Some(decoded.state))
    }

    /// The directories and streams of the partitions `owned`, in that order, each directory
    /// naming its snapshots with the ownership epoch given beside the partition.
    pub fn owned_parts(&self, owned: &[(u16, u64)]) -> Vec<(SnapshotDir, Vec<String>)> {
        owned
            .iter()
            .map(|&(p, epoch)| {
                let (dir, streams) = &self.parts[usize::from(p)];
                (dir.clone().with_epoch(epoch), streams.clone())
            })
            .collect()
    }

    /// The partition whose stream `name` is, if it is one of the configured streams'.
    fn partition_of(&self, name: &str) -> Option<u16> {
        let count = self.partitioning.count;
        (0..count.get()).find(|&p| {
            self.partitioning
                .bases
                .iter()
                .any(|base| count.stream(base, p) == name)
        })
    }

    /// With one partition and no snapshot in `state.dir`: refuses the per-partition
    /// snapshots of a deployment that ran with more.
    fn refuse_partition_dirs(&self, metrics: &SnapshotMetrics) -> Result<(), DaemonError> {
        let first = partition_dir(self.root.dir(), 0);
        if !first.is_dir() {
            return Ok(());
        }
        let dir = SnapshotDir::open(&first, 1)?;
        match load_snapshot(&dir, &[], metrics)? {
            Some(kept) => same_partitions(kept.state.header.partitions, PartitionCount::ONE, &dir),
            None => Ok(()),
        }
    }
}

/// Refuses state kept under another `partitions.count`: its positions name other streams,
/// and its customers were placed by the old count.
fn same_partitions(
    kept: PartitionCount,
    configured: PartitionCount,
    dir: &SnapshotDir,
) -> Result<(), DaemonError> {
    if kept == configured {
        return Ok(());
    }
    Err(DaemonError::PartitionsChanged {
        dir: dir.dir().display().to_string(),
        kept,
        configured,
    })
}
