//! When a replica's next ownership round comes. Rounds every third of the lease keep the
//! leases held; but a survivor that waited for its next such round to notice a dead
//! member would leave the dead member's partitions unserved for up to a third of the lease
//! more. So a round also comes as soon as another member's entry or a lease this replica
//! wants can have expired: the expiries are read from Redis (the members' scores against
//! Redis's `TIME`, a lease's `PTTL`), so only durations cross over to the local clock,
//! never instants of another clock.

use std::time::Duration;

use super::membership::Live;
use super::MemberName;

/// After an expiry, how long to wait more before the round that acts on it: Redis counts
/// an entry as expired from its score on, and a lease from its `PTTL` reaching 0.
pub const AFTER_EXPIRY: Duration = Duration::from_millis(5);

/// The shortest time between rounds, whatever Redis reports (a lease without expiry, a
/// score in the past, a clock that jumps): no busy loop.
pub const MIN_GAP: Duration = Duration::from_millis(20);

/// How long after a round the next one comes: at the earliest expiry of another member's
/// entry (`live`) or of a lease `me` wants and another holds (`busy_ttls_ms`, each a `PTTL`
/// in ms: -2 the key is gone, -1 it has no expiry), plus [`AFTER_EXPIRY`]; at most `every`,
/// at least [`MIN_GAP`] (or `every` if that is shorter).
pub fn next_round(every: Duration, me: &MemberName, live: &Live, busy_ttls_ms: &[i64]) -> Duration {
    let members = live
        .expiries
        .iter()
        .filter(|(m, _)| m != me)
        .map(|(_, expiry)| Duration::from_millis(expiry.saturating_sub(live.now_ms)));
    let leases = busy_ttls_ms.iter().filter_map(|&ttl| match ttl {
        -2 => Some(Duration::ZERO),
        ttl if ttl >= 0 => Some(Duration::from_millis(ttl.unsigned_abs())),
        _ => None,
    });
    let earliest = members
        .chain(leases)
        .min()
        .map_or(every, |d| d.saturating_add(AFTER_EXPIRY));
    earliest.min(every).max(MIN_GAP.min(every))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> MemberName {
        MemberName::new(n).unwrap()
    }

    fn live(now_ms: u64, expiries: &[(&str, u64)]) -> Live {
        Live {
            now_ms,
            expiries: expiries.iter().map(|&(n, e)| (name(n), e)).collect(),
        }
    }

    const EVERY: Duration = Duration::from_millis(3_333);

    #[test]
    fn alone_and_holding_everything_rounds_come_every_third_of_the_lease() {
        let me = name("a");
        let l = live(1_000, &[("a", 11_000)]);
        assert_eq!(next_round(EVERY, &me, &l, &[]), EVERY);
    }

    #[test]
    fn live_peers_renewing_in_time_add_no_round() {
        // A peer that renewed a moment ago expires a whole lease later: beyond `every`.
        let me = name("a");
        let l = live(1_000, &[("a", 11_000), ("b", 8_000)]);
        assert_eq!(next_round(EVERY, &me, &l, &[]), EVERY);
    }

    #[test]
    fn a_round_comes_just_after_a_silent_peer_expires() {
        let me = name("a");
        let l = live(1_000, &[("a", 11_000), ("b", 2_200), ("c", 9_000)]);
        assert_eq!(
            next_round(EVERY, &me, &l, &[]),
            Duration::from_millis(1_200) + AFTER_EXPIRY
        );
    }

    #[test]
    fn a_round_comes_just_after_a_wanted_lease_expires() {
        let me = name("a");
        let l = live(1_000, &[("a", 11_000)]);
        assert_eq!(
            next_round(EVERY, &me, &l, &[2_000, 700]),
            Duration::from_millis(700) + AFTER_EXPIRY
        );
    }

    #[test]
    fn odd_values_never_make_a_busy_loop_nor_a_long_wait() {
        let me = name("a");
        // A score in the past, a lease already gone, a lease without expiry.
        let past = live(5_000, &[("a", 15_000), ("b", 10)]);
        assert_eq!(next_round(EVERY, &me, &past, &[]), MIN_GAP);
        let none = live(5_000, &[("a", 15_000)]);
        assert_eq!(next_round(EVERY, &me, &none, &[-2]), MIN_GAP);
        assert_eq!(next_round(EVERY, &me, &none, &[-1]), EVERY);
        assert_eq!(next_round(EVERY, &me, &none, &[i64::MIN, 0]), MIN_GAP);
        // A score far in the future, Redis's time unknown (0).
        let far = live(0, &[("a", u64::MAX), ("b", u64::MAX)]);
        assert_eq!(next_round(EVERY, &me, &far, &[i64::MAX]), EVERY);
        // A lease time shorter than the floor: rounds every `every`, no longer.
        let short = Duration::from_millis(10);
        assert_eq!(next_round(short, &me, &past, &[]), short);
    }
}
