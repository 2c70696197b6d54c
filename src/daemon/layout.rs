//! Where each partition's snapshots are kept, and the state a start restores from them.
//!
//! With one partition, `state.dir` itself: the layout from before partitions. With
//! `partitions.count` = P > 1, one directory per partition, `state.dir/partition-<p>`, each
//! holding only that partition's snapshots (its customers, its positions in its own
//! streams, its clock, open tasks and budgets' pacing), so that a partition can be moved
//! with its directory. A start refuses state kept under another count, a snapshot of every
//! partition in one file (written before snapshots were per partition), and a partition's
//! snapshot found in another partition's directory.
//!
//! With `state.store = "redis"`, each partition's snapshots are keys in Redis under its hash
//! tag (`<group>:snapshots:{p}`, see [`crate::state::redis_store`]; with one partition,
//! `{0}`), and `state.dir` is not used. A change of `partitions.count` is refused the same
//! way: partition 0's snapshot records the count it was written under.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::{load_snapshot, DaemonError};
use crate::config::{Settings, StateStore};
use crate::connection::Connector;
use crate::engine::EngineState;
use crate::metrics::SnapshotMetrics;
use crate::partition::{PartitionCount, Partitioning};
use crate::state::redis_store::RedisStore;
use crate::state::{SnapshotDir, SnapshotStore, StateError};

/// The directory of partition `p`'s snapshots under `state.dir`.
pub(crate) fn partition_dir(root: &Path, partition: u16) -> std::path::PathBuf {
    root.join(format!("partition-{partition}"))
}

/// Where a deployment's snapshots are kept.
#[derive(Clone)]
pub(super) struct Layout {
    /// `state.dir`; `None` with the snapshots in Redis.
    root: Option<SnapshotDir>,
    /// Per partition, where its snapshots are and the streams its positions are of.
    pub parts: Vec<(SnapshotStore, Vec<String>)>,
    partitioning: Partitioning,
}

/// The store `settings` call for (`state.store`); `None` when snapshots are off. With
/// Redis, `connector` makes the snapshots' connections and a load waits for Redis until
/// `stop`.
pub(super) fn open(
    settings: &Settings,
    connector: impl FnOnce() -> Connector,
    stop: &CancellationToken,
) -> Result<Option<Layout>, StateError> {
    let keep = settings.state.keep.get();
    if settings.state.store == StateStore::Redis {
        let store = RedisStore::new(connector(), &settings.source.group, keep, stop.clone());
        return Ok(Some(Layout::in_redis(&store, settings)));
    }
    match settings.state.snapshot_dir() {
        Some(dir) => Layout::open(SnapshotDir::open(dir, keep)?, settings).map(Some),
        None => Ok(None),
    }
}

impl Layout {
    /// Every partition's snapshots in Redis.
    pub fn in_redis(store: &RedisStore, settings: &Settings) -> Self {
        let partitioning = settings.partitioning();
        let count = partitioning.count;
        let parts = if count.is_partitioned() {
            (0..count.get())
                .map(|p| {
                    let store = SnapshotStore::Redis(store.partition(p));
                    (store, partitioning.streams_of(p))
                })
                .collect()
        } else {
            vec![(
                SnapshotStore::Redis(store.partition(0)),
                settings.input_streams(),
            )]
        };
        Self {
            root: None,
            parts,
            partitioning,
        }
    }

    /// Opens (creating them if needed) the directories of every partition under `root`.
    pub fn open(root: SnapshotDir, settings: &Settings) -> Result<Self, StateError> {
        let partitioning = settings.partitioning();
        let count = partitioning.count;
        let parts = if count.is_partitioned() {
            let keep = settings.state.keep.get();
            (0..count.get())
                .map(|p| {
                    let dir = SnapshotDir::open(&partition_dir(root.dir(), p), keep)?;
                    Ok((dir.into(), partitioning.streams_of(p)))
                })
                .collect::<Result<_, StateError>>()?
        } else {
            vec![(root.clone().into(), settings.input_streams())]
        };
        Ok(Self {
            root: Some(root),
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
            match (&state, &self.root) {
                (Some(state), _) => same_partitions(state.header.partitions, count, dir)?,
                (None, Some(root)) => refuse_partition_dirs(root, metrics)?,
                (None, None) => {}
            }
            return Ok(vec![state]);
        }
        if let Some(root) = self.root.as_ref().filter(|root| root.has_snapshots()) {
            let streams = count.streams(&self.partitioning.bases);
            let store = SnapshotStore::from(root);
            if let Some(old) = load_snapshot(&store, &streams, metrics)? {
                same_partitions(old.state.header.partitions, count, &store)?;
                return Err(DaemonError::OneSnapshotForAllPartitions {
                    dir: root.dir().display().to_string(),
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
                dir: dir.location().to_string(),
                found,
                expected: p,
            });
        }
        Ok(Some(decoded.state))
    }

    /// The stores and streams of the partitions `owned`, in that order, each naming its
    /// snapshots with the ownership epoch given beside the partition (and, in Redis,
    /// committing them only while the lease key given holds the token given).
    pub fn owned_parts(
        &self,
        owned: &[(u16, u64, String, String)],
    ) -> Vec<(SnapshotStore, Vec<String>)> {
        owned
            .iter()
            .map(|(p, epoch, lease, token)| {
                let (store, streams) = &self.parts[usize::from(*p)];
                let store = store.clone().owned(*epoch, lease.clone(), token.clone());
                (store, streams.clone())
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
}

/// With one partition and no snapshot in `state.dir` (`root`): refuses the per-partition
/// snapshots of a deployment that ran with more.
fn refuse_partition_dirs(root: &SnapshotDir, metrics: &SnapshotMetrics) -> Result<(), DaemonError> {
    let first = partition_dir(root.dir(), 0);
    if !first.is_dir() {
        return Ok(());
    }
    let dir = SnapshotStore::from(SnapshotDir::open(&first, 1)?);
    match load_snapshot(&dir, &[], metrics)? {
        Some(kept) => same_partitions(kept.state.header.partitions, PartitionCount::ONE, &dir),
        None => Ok(()),
    }
}

/// Refuses state kept under another `partitions.count`: its positions name other streams,
/// and its customers were placed by the old count.
fn same_partitions(
    kept: PartitionCount,
    configured: PartitionCount,
    dir: &SnapshotStore,
) -> Result<(), DaemonError> {
    if kept == configured {
        return Ok(());
    }
    Err(DaemonError::PartitionsChanged {
        dir: dir.location().to_string(),
        kept,
        configured,
    })
}
