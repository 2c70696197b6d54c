//! Which replica owns which partition: rendezvous (highest random weight) hashing.
//!
//! Every replica ranks the live members for a partition by `xxh3(member, partition)` and the
//! highest wins. All replicas that see the same member list compute the same owners with no
//! message between them, and a change of membership moves only what it must: a new member
//! takes about 1/N of the partitions (each from whichever member had it), and a member that
//! leaves gives up only its own. Sticky assignment would need a coordinator to remember the
//! previous one; rendezvous needs no memory (Thaler & Ravishankar, 1998).

use std::collections::BTreeSet;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::MemberName;
use crate::partition::PartitionCount;

/// The weight of `member` for `partition`: the member's name hashed with the partition as
/// the seed, so that each partition orders the members differently.
fn weight(member: &MemberName, partition: u16) -> u64 {
    xxh3_64_with_seed(member.as_str().as_bytes(), u64::from(partition))
}

/// The owner of `partition` among `members`; `None` when there are none. Ties (two names
/// with the same 64-bit weight) go to the smaller name, so the answer never depends on the
/// order of the list.
pub fn owner(partition: u16, members: &BTreeSet<MemberName>) -> Option<&MemberName> {
    members.iter().max_by(|a, b| {
        weight(a, partition)
            .cmp(&weight(b, partition))
            .then_with(|| b.cmp(a))
    })
}

/// The partitions `me` owns when `members` are alive (whether or not `me` is among them:
/// a member that is not listed owns nothing).
pub fn owned_by(
    me: &MemberName,
    members: &BTreeSet<MemberName>,
    count: PartitionCount,
) -> Vec<u16> {
    (0..count.get())
        .filter(|&p| owner(p, members) == Some(me))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(names: &[&str]) -> BTreeSet<MemberName> {
        names.iter().map(|n| MemberName::new(n).unwrap()).collect()
    }

    fn count(n: u16) -> PartitionCount {
        PartitionCount::new(n).unwrap()
    }

    fn owners(m: &BTreeSet<MemberName>, n: u16) -> Vec<MemberName> {
        (0..n).map(|p| owner(p, m).unwrap().clone()).collect()
    }

    #[test]
    fn every_partition_has_exactly_one_owner() {
        let m = members(&["churnd-0", "churnd-1", "churnd-2"]);
        let mut all: Vec<u16> = m
            .iter()
            .flat_map(|me| owned_by(me, &m, count(64)))
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..64).collect::<Vec<_>>());
    }

    #[test]
    fn nobody_owns_anything_without_members_and_a_stranger_owns_nothing() {
        assert_eq!(owner(0, &BTreeSet::new()), None);
        let m = members(&["a", "b"]);
        let stranger = MemberName::new("c").unwrap();
        assert!(owned_by(&stranger, &m, count(16)).is_empty());
    }

    #[test]
    fn the_partitions_are_shared_out_roughly_evenly() {
        let m = members(&["churnd-0", "churnd-1", "churnd-2"]);
        for me in &m {
            let n = owned_by(me, &m, count(256)).len();
            // 256 / 3 ≈ 85; a binomial spread of ±3σ is about ±23.
            assert!((60..=110).contains(&n), "{me} owns {n} of 256");
        }
    }

    #[test]
    fn a_new_member_takes_partitions_only_for_itself() {
        let before = members(&["churnd-0", "churnd-1", "churnd-2"]);
        let after = members(&["churnd-0", "churnd-1", "churnd-2", "churnd-3"]);
        let (old, new) = (owners(&before, 256), owners(&after, 256));
        let moved: Vec<usize> = (0..256).filter(|&p| old[p] != new[p]).collect();
        assert!(moved.iter().all(|&p| new[p].as_str() == "churnd-3"));
        // About a quarter move, all of them to the newcomer.
        assert!((40..=90).contains(&moved.len()), "{} moved", moved.len());
    }

    #[test]
    fn a_member_that_leaves_gives_up_only_its_own() {
        let before = members(&["churnd-0", "churnd-1", "churnd-2"]);
        let after = members(&["churnd-0", "churnd-2"]);
        let (old, new) = (owners(&before, 128), owners(&after, 128));
        for p in 0..128 {
            if old[p].as_str() != "churnd-1" {
                assert_eq!(old[p], new[p], "partition {p} moved needlessly");
            }
        }
    }

    #[test]
    fn the_owners_are_the_same_whatever_the_order_members_were_seen_in() {
        let a = members(&["x", "y", "z"]);
        let b: BTreeSet<MemberName> = ["z", "x", "y"]
            .iter()
            .map(|n| MemberName::new(n).unwrap())
            .collect();
        assert_eq!(owners(&a, 32), owners(&b, 32));
    }
}
