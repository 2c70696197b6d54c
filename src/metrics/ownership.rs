//! Ownership of partitions under `partitions.ownership = leases`: what this replica holds,
//! how often its partitions were reshuffled, leases it lost, and writes refused because they
//! came from a previous owner. With `ownership = all` they stay at their initial values
//! (owned: every partition).

use prometheus::{IntCounter, IntGauge, IntGaugeVec};

use super::Registrar;

#[derive(Clone)]
pub struct OwnershipMetrics {
    pub owned: IntGauge,
    pub members: IntGauge,
    pub rebalances: IntCounter,
    /// Partitions restored from their snapshots when a set of partitions started: with
    /// `rebalances`, tells a takeover that kept the running engines (only the partitions
    /// gained restored) from one that restored everything.
    pub restored_partitions: IntCounter,
    pub lease_losses: IntCounter,
    pub fenced_writes: IntCounter,
    /// Fence raises refused because another holder is recorded at the same or a later
    /// epoch: the epoch counter went back (Redis lost writes) or this replica was overtaken.
    pub fence_conflicts: IntCounter,
    /// `partitions.count`: with `churnd_partitions_owned` summed over the replicas, shows a
    /// partition nobody serves.
    pub partitions: IntGauge,
    /// By partition, only those this replica owns: entries of its streams not yet read.
    pub partition_lag: IntGaugeVec,
}

impl OwnershipMetrics {
    pub(super) fn register(r: &mut Registrar) -> Self {
        Self {
            owned: r.gauge(
                "churnd_partitions_owned",
                "Partitions this replica reads, keeps and writes now (partitions.count under partitions.ownership = all; under leases, those whose lease it holds and whose engines run).",
            ),
            members: r.gauge(
                "churnd_partition_members",
                "Live replicas of the consumer group this replica saw in its last ownership round (partitions.ownership = leases; 0 otherwise).",
            ),
            rebalances: r.counter(
                "churnd_partition_rebalances_total",
                "Times this replica changed the set of partitions it runs (a replica joined, left or died; or a lease was lost): with only partitions gained, its engines go on and the new ones are restored beside them; otherwise every engine is snapshotted and started again.",
            ),
            restored_partitions: r.counter(
                "churnd_partitions_restored_total",
                "Partitions this replica restored from their newest snapshot (and replays from its position) when it started a set of partitions; partitions it keeps running when it only gains others are not counted.",
            ),
            lease_losses: r.counter(
                "churnd_partition_lease_losses_total",
                "Partition leases this replica found taken or expired when it renewed them: it was paused or cut off from Redis longer than partitions.lease_ms.",
            ),
            fenced_writes: r.counter(
                "churnd_fenced_writes_total",
                "Effect writes (script calls) Redis refused because a partition's fence record (or, on a single Redis, its lease) no longer showed this replica's token at the epoch it wrote with: a paused old owner kept from writing.",
            ),
            fence_conflicts: r.counter(
                "churnd_partition_fence_conflicts_total",
                "Partitions whose fence record showed another owner at this replica's epoch or a later one when it raised its own: the lease was given up and is taken again above that epoch. Redis lost writes (a failover before they were replicated, a restore from an older backup), or this replica was paused between taking a lease and raising its fences.",
            ),
            partitions: r.gauge(
                "churnd_partitions",
                "Partitions every input stream is split into (partitions.count): over a deployment's replicas, max(churnd_partitions) - sum(churnd_partitions_owned) is the number of partitions nobody serves.",
            ),
            partition_lag: r.gauge_vec(
                "churnd_partition_lag",
                "Entries of a partition's input streams not yet read (XINFO GROUPS lag, summed over source.streams), for the partitions this replica owns only; a partition handed over loses its series here and gains one on its new owner.",
                &["partition"],
            ),
        }
    }
}
