//! Holdouts: which customers are held out of a kind of task (the control group), so that
//! what the kind's tasks change can be measured. A stable hash of the customer ID, so a
//! customer stays in their group for good, whatever the process, restarts or replays.
//!
//! Win-back keeps the hash it always had ([`CONTROL_GROUP_SEED`]); each other kind hashes
//! with a seed of its own, derived from its name, so that the kinds' control groups are
//! drawn independently: a customer held out of one kind gets the others as everyone does,
//! and each kind's lift is its own.

use serde::Serialize;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::task::TaskKind;

/// Seed of win-back's control-group hash. Changing it reshuffles the groups and invalidates
/// uplift measurement in flight: never change it.
const CONTROL_GROUP_SEED: u64 = 0x6368_7572_6e64_6367; // "churndcg"

/// Treatment (marketing acts) or control (held out to measure uplift).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    Treatment,
    Control,
}

impl Group {
    pub const ALL: [Group; 2] = [Group::Treatment, Group::Control];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Treatment => "treatment",
            Self::Control => "control",
        }
    }
}

/// One kind's holdout: its share and its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Holdout {
    seed: u64,
    /// Customers whose hash falls below this are in the control group.
    cut: u64,
}

impl Holdout {
    /// The holdout of `kind` holding out `share` (0 to 1) of customers.
    pub fn new(kind: TaskKind, share: f64) -> Self {
        let seed = match kind {
            TaskKind::Winback => CONTROL_GROUP_SEED,
            other => xxh3_64_with_seed(other.as_str().as_bytes(), CONTROL_GROUP_SEED),
        };
        Self {
            seed,
            cut: (share.clamp(0.0, 1.0) * u64::MAX as f64) as u64,
        }
    }

    /// The customer's group: a stable function of the ID alone.
    pub fn group(&self, customer_id: &str) -> Group {
        if xxh3_64_with_seed(customer_id.as_bytes(), self.seed) < self.cut {
            Group::Control
        } else {
            Group::Treatment
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control_count(h: Holdout, n: usize) -> usize {
        (0..n)
            .filter(|i| h.group(&format!("customer-{i}")) == Group::Control)
            .count()
    }

    #[test]
    fn each_kind_holds_out_its_share() {
        for kind in TaskKind::ALL {
            for share in [0.05, 0.1, 0.3] {
                let n = control_count(Holdout::new(kind, share), 100_000);
                let want = share * 100_000.0;
                // Binomial: sd = sqrt(n p (1-p)) ≤ 145; 5 sd.
                assert!(
                    (n as f64 - want).abs() < 725.0,
                    "{kind:?} {share}: {n} for {want}"
                );
            }
            assert_eq!(control_count(Holdout::new(kind, 0.0), 10_000), 0);
            assert_eq!(control_count(Holdout::new(kind, 1.0), 10_000), 10_000);
        }
    }

    #[test]
    fn win_back_keeps_its_groups_and_the_kinds_draw_independently() {
        // The win-back control group as churnd drew it before holdouts for every kind.
        let before = |id: &str| {
            let cut = (0.1 * u64::MAX as f64) as u64;
            xxh3_64_with_seed(id.as_bytes(), CONTROL_GROUP_SEED) < cut
        };
        let winback = Holdout::new(TaskKind::Winback, 0.1);
        let welcome = Holdout::new(TaskKind::Welcome, 0.1);
        let mut both = 0;
        for i in 0..100_000 {
            let id = format!("customer-{i}");
            assert_eq!(winback.group(&id) == Group::Control, before(&id));
            both += usize::from(
                winback.group(&id) == Group::Control && welcome.group(&id) == Group::Control,
            );
        }
        // Independent draws: about 1 % in both, not 10 %.
        assert!((700..1_300).contains(&both), "{both}");
    }
}
