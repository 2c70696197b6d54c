//! Ownership of partitions: which replica reads, keeps and writes which partition.
//!
//! The design is the one keyed stream processors share (Kafka Streams' partition
//! assignment, Flink's key groups): a fixed number of partitions, each owned by one replica
//! at a time and moved whole with its state. Here Redis is the only thing the replicas have
//! in common, so it is also how they find each other and how ownership is held:
//!
//! - **Members** ([`membership`]): each replica, named by `source.consumer` (a StatefulSet
//!   pod's host name), keeps an entry in one sorted set, scored by when it expires on
//!   Redis's clock. The live members are the entries that have not.
//! - **Assignment** ([`assign`]): from the live members every replica computes the same
//!   owner of each partition by rendezvous hashing, with no further coordination.
//! - **Leases** ([`lease`]): what a replica computed is not yet what it may do. It owns a
//!   partition while it holds the partition's lease, a key with an expiry that only its
//!   holder renews. Each new holder gets the next **epoch** of the partition (a counter that
//!   never goes back): stamped on what an owner writes, it lets a write from a previous
//!   owner that was paused past its lease be told apart and refused (a fencing token,
//!   Kleppmann's term).
//! - **Fences** ([`fence`]): an owner records its token beside every output stream
//!   before it reads a partition, and writes go in only while their partitions still show
//!   the writer's token: checked in the output stream's slot, so on a Redis Cluster too.
//! - **The plan** ([`plan`]): per round, which leases to take and which to hand over.
//! - **The schedule** ([`schedule`]): rounds every third of the lease, and one more as soon
//!   as another member's entry or a lease wanted can have expired, so a dead member's
//!   partitions are taken at once.
//!
//! A replica that dies stops renewing: its leases expire and the survivors, which no longer
//! see it among the members, take its partitions. A replica that shuts down or loses a
//! partition to a newcomer hands it over: final snapshot first, then the lease is released,
//! so the next owner can take it at once.

pub mod assign;
pub mod coordinator;
pub mod fence;
pub mod lease;
pub mod membership;
pub mod schedule;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::partition::PartitionCount;

/// A replica's name: `source.consumer`. Unique among the replicas sharing a consumer group,
/// non-empty, at most [`MemberName::MAX_LEN`] bytes and without white space or control
/// characters (it is written into Redis keys' values and logs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberName(String);

impl MemberName {
    pub const MAX_LEN: usize = 200;

    pub fn new(name: &str) -> Result<Self, InvalidMemberName> {
        if name.is_empty() {
            return Err(InvalidMemberName::Empty);
        }
        if name.len() > Self::MAX_LEN {
            return Err(InvalidMemberName::TooLong(name.len()));
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InvalidMemberName::WhiteSpace);
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MemberName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a name cannot name a replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMemberName {
    #[error("must not be empty: it names this replica among the others")]
    Empty,
    #[error("is {0} bytes long; at most 200 are allowed")]
    TooLong(usize),
    #[error("must not contain white space or control characters")]
    WhiteSpace,
}

/// A partition's ownership epoch: 1 for its first owner, one more for each owner after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a replica should do this round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Partitions assigned to it that it does not hold: try to take their leases.
    pub acquire: Vec<u16>,
    /// Partitions it holds that are now assigned to another member: hand them over.
    pub release: Vec<u16>,
}

/// The round's plan for `me`, given the live `members` and the partitions it `held`.
pub fn plan(
    me: &MemberName,
    members: &BTreeSet<MemberName>,
    count: PartitionCount,
    held: &BTreeMap<u16, Epoch>,
) -> Plan {
    let wanted: BTreeSet<u16> = assign::owned_by(me, members, count).into_iter().collect();
    Plan {
        acquire: wanted
            .iter()
            .filter(|p| !held.contains_key(p))
            .copied()
            .collect(),
        release: held
            .keys()
            .filter(|p| !wanted.contains(p))
            .copied()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> MemberName {
        MemberName::new(n).unwrap()
    }

    #[test]
    fn a_member_name_is_checked() {
        assert_eq!(MemberName::new(""), Err(InvalidMemberName::Empty));
        assert_eq!(MemberName::new("a b"), Err(InvalidMemberName::WhiteSpace));
        assert_eq!(
            MemberName::new("a\u{7}"),
            Err(InvalidMemberName::WhiteSpace)
        );
        assert!(matches!(
            MemberName::new(&"x".repeat(201)),
            Err(InvalidMemberName::TooLong(201))
        ));
        assert_eq!(name("churnd-0").as_str(), "churnd-0");
    }

    #[test]
    fn alone_a_member_takes_every_partition_then_gives_back_what_a_newcomer_gets() {
        let me = name("churnd-0");
        let count = PartitionCount::new(8).unwrap();
        let alone: BTreeSet<_> = [me.clone()].into();
        let first = plan(&me, &alone, count, &BTreeMap::new());
        assert_eq!(first.acquire, (0..8).collect::<Vec<_>>());
        assert!(first.release.is_empty());

        let held: BTreeMap<u16, Epoch> = (0..8).map(|p| (p, Epoch(1))).collect();
        assert_eq!(plan(&me, &alone, count, &held), Plan::default());

        let two: BTreeSet<_> = [me.clone(), name("churnd-1")].into();
        let next = plan(&me, &two, count, &held);
        assert!(next.acquire.is_empty());
        assert_eq!(
            next.release,
            (0..8)
                .filter(|&p| assign::owner(p, &two, count) != Some(&me))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_member_missing_from_the_list_releases_everything() {
        let me = name("churnd-0");
        let held: BTreeMap<u16, Epoch> = [(3, Epoch(2))].into();
        let others: BTreeSet<_> = [name("churnd-1")].into();
        let p = plan(&me, &others, PartitionCount::new(4).unwrap(), &held);
        assert_eq!(p.release, vec![3]);
        assert!(p.acquire.is_empty());
    }
}
