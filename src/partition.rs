//! Partitions: which input stream a customer's events belong in, so that the events of one
//! customer are read in order from one stream, and a replica can own whole partitions.
//!
//! With `partitions.count` = P > 1, each input stream `S` of `source.streams` becomes the
//! P streams `S:{0}` … `S:{P-1}` (the braces are a Redis Cluster hash tag: each partition's
//! stream, consumer group and position keys fall into one slot). A customer's partition is
//! `xxh3_64(customer_id as UTF-8 bytes, seed 0) mod P`: the 64-bit XXH3 hash that xxHash's
//! reference library (`XXH3_64bits`) and its ports in every language compute, so producers
//! can route events themselves; `churnd partition <customer_id>` prints it. With P = 1 (the
//! default) the streams keep their names and nothing is checked: today's layout.
//!
//! An event found in another partition's stream is not applied: it is dead-lettered as
//! `wrong_partition`, naming the stream it belongs in ([`Partitioning::check`]).

use std::fmt;
use std::num::NonZeroU16;

use crate::event::{Reason, Rejection};

/// The number of partitions (`partitions.count`): 1 to [`PartitionCount::MAX`]. Fixed at
/// install: customer state is kept by partition, and a new count would move customers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct PartitionCount(NonZeroU16);

impl PartitionCount {
    /// One partition: the input streams keep their names (today's layout).
    pub const ONE: Self = Self(NonZeroU16::MIN);
    /// The largest count: far more streams than any deployment reads, and far fewer than
    /// a Redis Cluster's 16,384 slots.
    pub const MAX: u16 = 1024;

    /// `n` partitions, if 1 to [`Self::MAX`].
    pub const fn new(n: u16) -> Option<Self> {
        match NonZeroU16::new(n) {
            Some(n) if n.get() <= Self::MAX => Some(Self(n)),
            _ => None,
        }
    }

    pub const fn get(self) -> u16 {
        self.0.get()
    }

    /// Whether input streams are split into partitions (P > 1).
    pub const fn is_partitioned(self) -> bool {
        self.0.get() > 1
    }

    /// The partition `customer_id` belongs to.
    pub fn of(self, customer_id: &str) -> u16 {
        (hash(customer_id) % u64::from(self.get())) as u16
    }

    /// The name of partition `partition` of the input stream `base`: `base:{p}`, or `base`
    /// itself with one partition.
    pub fn stream(self, base: &str, partition: u16) -> String {
        if self.is_partitioned() {
            format!("{base}:{{{partition}}}")
        } else {
            base.to_string()
        }
    }

    /// Every partition stream of `bases`, base by base: the streams read, in the order their
    /// positions are kept (stream `i` is partition `i mod P` of base `i / P`).
    pub fn streams(self, bases: &[String]) -> Vec<String> {
        bases
            .iter()
            .flat_map(|base| (0..self.get()).map(move |p| self.stream(base, p)))
            .collect()
    }
}

impl Default for PartitionCount {
    fn default() -> Self {
        Self::ONE
    }
}

impl fmt::Display for PartitionCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The hash a customer's partition is taken from: XXH3-64 of the ID's UTF-8 bytes, seed 0.
pub fn hash(customer_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(customer_id.as_bytes())
}

/// What the engine needs to tell an event in the wrong partition stream: the count and the
/// configured streams the partition streams are named after.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partitioning {
    pub count: PartitionCount,
    /// `source.streams` as configured (before they are split into partitions).
    pub bases: Vec<String>,
    /// The one partition an engine holds (one engine per partition, see
    /// `crate::engine::partitioned`): its streams are numbered by base, stream `i` being
    /// partition `own` of base `i`. `None`: an engine of every partition, whose streams are
    /// numbered as in [`PartitionCount::streams`].
    pub own: Option<u16>,
}

impl Partitioning {
    /// The same partitioning, for the engine that holds only partition `partition`.
    pub fn for_partition(&self, partition: u16) -> Self {
        Self {
            own: Some(partition),
            ..self.clone()
        }
    }

    /// The streams partition `partition` reads, one per base: what its engine's positions
    /// are numbered by when it holds that partition alone.
    pub fn streams_of(&self, partition: u16) -> Vec<String> {
        self.bases
            .iter()
            .map(|base| self.count.stream(base, partition))
            .collect()
    }

    /// `Ok` if an event of `customer_id` read from input stream `stream` (an index into
    /// [`PartitionCount::streams`] of the bases) belongs there; otherwise the rejection that
    /// names the stream it belongs in. Always `Ok` with one partition.
    pub fn check(&self, stream: usize, customer_id: &str) -> Result<(), Rejection> {
        if !self.count.is_partitioned() {
            return Ok(());
        }
        let count = usize::from(self.count.get());
        let (base, found) = match self.own {
            Some(own) => (stream, own),
            None => (stream / count, (stream % count) as u16),
        };
        let right = self.count.of(customer_id);
        if right == found {
            return Ok(());
        }
        let base = self.bases.get(base).map_or("?", String::as_str);
        Err(Rejection::new(
            Reason::WrongPartition,
            format!(
                "customer {customer_id:?} belongs in partition {right} ({}) of {count}, not in \
                 partition {found} ({}): xxh3_64 of the customer_id mod partitions.count",
                self.count.stream(base, right),
                self.count.stream(base, found),
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(n: u16) -> PartitionCount {
        PartitionCount::new(n).unwrap()
    }

    /// Test vectors, the hash from xxHash's reference C library (`XXH3_64bits`, libxxhash
    /// 0.8.1), computed apart from this code; the same table is in docs/configuration.md.
    const VECTORS: [(&str, u64, [u16; 3]); 10] = [
        // (customer_id, XXH3-64, partition for P = 1, 2, 16)
        ("", 0x2d06_8005_38d3_94c2, [0, 0, 2]),
        ("c1", 0x8ea6_ff26_c9a9_5602, [0, 0, 2]),
        ("c2", 0x3088_6e54_d9ac_c2d5, [0, 1, 5]),
        ("42", 0x1217_cb28_c0ef_2191, [0, 1, 1]),
        ("customer-1", 0x76ed_62b8_9efb_594c, [0, 0, 12]),
        ("customer-2", 0xbd90_316b_cf73_bd19, [0, 1, 9]),
        ("12345", 0xf340_99ed_e96b_5581, [0, 1, 1]),
        ("alice@example.com", 0x76eb_8955_12bf_35ff, [0, 1, 15]),
        ("Zoë", 0x44e1_6385_af55_d1be, [0, 0, 14]),
        ("顧客-7", 0x9e42_355d_9bdb_6375, [0, 1, 5]),
    ];

    #[test]
    fn partitions_match_the_reference_hash() {
        for (id, h, partitions) in VECTORS {
            assert_eq!(hash(id), h, "{id:?}");
            for (p, expected) in [1, 2, 16].into_iter().zip(partitions) {
                assert_eq!(count(p).of(id), expected, "{id:?} with {p} partitions");
            }
        }
    }

    #[test]
    fn a_count_is_1_to_1024() {
        assert_eq!(PartitionCount::new(0), None);
        assert_eq!(PartitionCount::new(1), Some(PartitionCount::ONE));
        assert_eq!(
            PartitionCount::new(1024).map(PartitionCount::get),
            Some(1024)
        );
        assert_eq!(PartitionCount::new(1025), None);
    }

    #[test]
    fn streams_are_split_base_by_base_and_one_partition_keeps_the_names() {
        let bases = vec!["churn:events".to_string(), "shop:events".to_string()];
        assert_eq!(PartitionCount::ONE.streams(&bases), bases);
        assert_eq!(
            count(3).streams(&bases),
            [
                "churn:events:{0}",
                "churn:events:{1}",
                "churn:events:{2}",
                "shop:events:{0}",
                "shop:events:{1}",
                "shop:events:{2}",
            ]
        );
    }

    #[test]
    fn an_event_in_another_partitions_stream_is_rejected_naming_the_right_one() {
        let p = Partitioning {
            count: count(16),
            bases: vec!["churn:events".into(), "shop:events".into()],
            own: None,
        };
        // "c2" is in partition 5: stream 5 (churn:events:{5}) or 21 (shop:events:{5}).
        assert_eq!(p.check(5, "c2"), Ok(()));
        assert_eq!(p.check(16 + 5, "c2"), Ok(()));
        let wrong = p.check(16 + 4, "c2").unwrap_err();
        assert_eq!(wrong.reason, Reason::WrongPartition);
        assert_eq!(
            wrong.detail,
            "customer \"c2\" belongs in partition 5 (shop:events:{5}) of 16, not in partition \
             4 (shop:events:{4}): xxh3_64 of the customer_id mod partitions.count"
        );
        let one = Partitioning {
            count: PartitionCount::ONE,
            bases: vec!["churn:events".into()],
            own: None,
        };
        // The engine of partition 4 alone numbers its streams by base.
        let four = p.for_partition(4);
        assert_eq!(four.streams_of(4), ["churn:events:{4}", "shop:events:{4}"]);
        assert!(four.check(1, "c2").is_err());
        let five = p.for_partition(5);
        assert_eq!(five.check(1, "c2"), Ok(()));
        assert_eq!(one.check(0, "c2"), Ok(()));
    }
}
