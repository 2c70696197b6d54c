//! How simulated customers answer churnd's actions: a hidden, heterogeneous response.
//!
//! To show that a policy learns where its actions work, the simulation needs customers on
//! whom actions work differently, in a way churnd cannot read off them directly. Each
//! customer has a hidden *persona*; a persona answers some actions (a deal seeker a coupon,
//! a customer who values the relationship a personal call) and most customers answer none.
//! The personas lean on what churnd does see: customers who spend much per order are more
//! often of the relationship kind, those who spend little more often deal seekers, so a
//! segment's lift differs by action and a policy can find it. Customers who would have come
//! back anyway are the population's own: their purchases happen whatever churnd does, and
//! only the holdout tells them from the ones an action brought back. And a customer who has
//! not bought for more than [`GONE_DAYS`] when the action reaches them answers nothing,
//! whatever their persona: they have moved on. So the segments of long silence (low
//! recency) answer no action at all, and an action's lift is in the recently lapsed.
//!
//! Every draw is a hash of the seed, the customer and the task, never the population's own
//! random stream: two runs under different policies see the same customers behave the same
//! way except where an action changed something.

use xxhash_rust::xxh3::xxh3_64_with_seed;

const DAY_MS: f64 = 86_400_000.0;
/// Mean days from an action that works to the purchase it brings.
const MEAN_RESPONSE_DAYS: f64 = 5.0;
/// The purchase comes within this many days (inside a 30-day conversion window).
const MAX_RESPONSE_DAYS: f64 = 25.0;
/// Days without a purchase after which no action brings a customer back (the lifecycle's
/// `silent` stage starts at 90 days).
pub(crate) const GONE_DAYS: f64 = 90.0;
/// Per-order spend above which a customer counts as a high spender (the population's mean
/// order value is about 35).
const HIGH_SPEND: f64 = 35.0;

/// A customer's hidden way of answering actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Persona {
    /// Answers nothing.
    Unmoved,
    /// Answers money off.
    DealSeeker,
    /// Answers a person.
    Relationship,
    /// Answers a reminder.
    Nudgeable,
}

impl Persona {
    /// Shares of (deal seeker, relationship, nudgeable) among high and low spenders; the rest
    /// are unmoved.
    const HIGH: [f64; 3] = [0.10, 0.35, 0.10];
    const LOW: [f64; 3] = [0.30, 0.05, 0.15];

    /// The persona of a customer who spends `mean_order` per order, from a uniform draw `u`.
    fn of(mean_order: f64, u: f64) -> Self {
        let shares = if mean_order >= HIGH_SPEND {
            Self::HIGH
        } else {
            Self::LOW
        };
        let mut cumulative = 0.0;
        for (share, persona) in
            shares
                .iter()
                .zip([Self::DealSeeker, Self::Relationship, Self::Nudgeable])
        {
            cumulative += share;
            if u < cumulative {
                return persona;
            }
        }
        Self::Unmoved
    }

    /// The chance that `action` brings a purchase from this persona. Actions are churnd's
    /// configured names (config/default.toml's playbook); any other name works on nobody.
    pub(crate) fn lift(self, action: &str) -> f64 {
        match (self, action) {
            (Self::DealSeeker, "coupon" | "first_purchase_offer") => 0.30,
            (Self::DealSeeker, "loyalty_offer") => 0.20,
            (Self::Relationship, "personal_call") => 0.30,
            (Self::Relationship, "loyalty_offer") => 0.10,
            (Self::Nudgeable, "email_reminder") => 0.25,
            (Self::Nudgeable, "coupon" | "personal_call") => 0.10,
            _ => 0.0,
        }
    }
}

/// The hidden responses of one simulated population.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Responses {
    seed: u64,
}

impl Responses {
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// A uniform draw in [0, 1) from the seed, the customer and `salt`.
    fn uniform(&self, customer: u32, salt: u64) -> f64 {
        let mut key = [0u8; 12];
        key[..4].copy_from_slice(&customer.to_le_bytes());
        key[4..].copy_from_slice(&salt.to_le_bytes());
        (xxh3_64_with_seed(&key, self.seed) >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn persona(&self, customer: u32, mean_order: f64) -> Persona {
        Persona::of(mean_order, self.uniform(customer, 0))
    }

    /// Whether `action`, sent at `at_ms` on the task `task` (any number that tells the
    /// customer's tasks apart) to `customer`, whose last purchase was at `last_purchase_ms`,
    /// brings a purchase from them, and when.
    pub fn answer(
        &self,
        customer: u32,
        mean_order: f64,
        last_purchase_ms: u64,
        action: &str,
        task: u64,
        at_ms: u64,
    ) -> Option<u64> {
        let silent_days = at_ms.saturating_sub(last_purchase_ms) as f64 / DAY_MS;
        let lift = if silent_days > GONE_DAYS {
            0.0
        } else {
            self.persona(customer, mean_order).lift(action)
        };
        // Salts 1 and 2 per task: whether, then when (0 is the persona's).
        let salt = task.wrapping_mul(2).wrapping_add(1);
        if self.uniform(customer, salt) >= lift {
            return None;
        }
        let u = self.uniform(customer, salt.wrapping_add(1));
        let days = (-(1.0 - u).ln() * MEAN_RESPONSE_DAYS).min(MAX_RESPONSE_DAYS);
        Some(at_ms + (days * DAY_MS) as u64 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(mean_order: f64) -> [f64; 4] {
        let r = Responses::new(9);
        let mut counts = [0usize; 4];
        for c in 0..100_000 {
            counts[r.persona(c, mean_order) as usize] += 1;
        }
        counts.map(|n| n as f64 / 100_000.0)
    }

    #[test]
    fn personas_follow_the_spend_level() {
        let high = shares(80.0);
        let low = shares(12.0);
        for (got, want) in high.iter().zip([0.45, 0.10, 0.35, 0.10]) {
            assert!((got - want).abs() < 0.01, "high spenders {high:?}");
        }
        for (got, want) in low.iter().zip([0.50, 0.30, 0.05, 0.15]) {
            assert!((got - want).abs() < 0.01, "low spenders {low:?}");
        }
    }

    #[test]
    fn an_action_brings_purchases_at_its_lift_within_the_window() {
        let r = Responses::new(3);
        let (mut answered, mut asked) = (0usize, 0usize);
        for c in 0..200_000 {
            if r.persona(c, 12.0) != Persona::DealSeeker {
                continue;
            }
            asked += 1;
            if let Some(at) = r.answer(c, 12.0, 0, "coupon", 1, 1_000) {
                answered += 1;
                assert!(at > 1_000 && at <= 1_000 + (25.0 * DAY_MS) as u64 + 1);
            }
        }
        let rate = answered as f64 / asked as f64;
        assert!((rate - 0.30).abs() < 0.01, "coupon on deal seekers: {rate}");
    }

    #[test]
    fn the_unmoved_and_unknown_actions_answer_nothing() {
        let r = Responses::new(4);
        for c in 0..20_000 {
            if r.persona(c, 50.0) == Persona::Unmoved {
                assert_eq!(r.answer(c, 50.0, 0, "personal_call", 7, 0), None);
            }
            assert_eq!(r.answer(c, 50.0, 0, "carrier_pigeon", 7, 0), None);
        }
    }

    #[test]
    fn customers_gone_longer_than_gone_days_answer_nothing() {
        let r = Responses::new(6);
        let at = (200.0 * DAY_MS) as u64;
        let last = |days: f64| at - (days * DAY_MS) as u64;
        let answered = |silent: f64| {
            (0..20_000)
                .filter(|&c| r.answer(c, 12.0, last(silent), "coupon", 1, at).is_some())
                .count()
        };
        assert!(
            answered(GONE_DAYS - 1.0) > 1_000,
            "the recently lapsed answer"
        );
        assert_eq!(answered(GONE_DAYS + 1.0), 0);
    }

    #[test]
    fn answers_are_the_same_for_the_same_task_and_differ_between_tasks() {
        let r = Responses::new(5);
        let answer = |task| {
            (0..20_000)
                .map(|c| r.answer(c, 12.0, 0, "coupon", task, 0))
                .collect::<Vec<_>>()
        };
        assert_eq!(answer(1), answer(1));
        assert_ne!(answer(1), answer(2));
    }
}
