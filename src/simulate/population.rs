//! A synthetic customer base that behaves like the buy-till-you-die models say real ones do,
//! for demos and load tests: pure and seeded, so a run can be repeated event for event.
//!
//! Each customer, from their first purchase on:
//! - buys as a Poisson process with a rate drawn from a gamma distribution (BG/NBD), and visits
//!   at a multiple of that rate;
//! - after every repeat purchase, drops out for good with a probability drawn from a beta
//!   distribution (BG/NBD), so some customers go silent early and others stay for years;
//! - spends per purchase from a gamma distribution around a mean that is itself drawn per
//!   customer (the gamma-gamma spend model): heavy-tailed across customers;
//! - now and then follows a purchase with a refund of it, with a complaint, or with a
//!   satisfaction score (mostly good, sometimes very bad);
//! - for most customers, first tells who they are: a profile (region, age band, gender,
//!   birthday, channel) before their first event.
//!
//! Some arrivals are prospects: they visit (every `prospect_visit_days` on average) and after
//! each visit either buy for the first time, give up for good, or come back.
//!
//! Customers also answer churnd's actions ([`Population::respond`]): an action that works on
//! a customer's hidden persona ([`super::response`]) brings one purchase a few days later,
//! beside their own process (which goes on as it would have), unless they have been gone
//! too long ([`super::response::GONE_DAYS`]).
//!
//! New customers arrive as a Poisson process, spread evenly over time. Events come out in
//! time order across the whole population from a heap holding one pending event per live
//! customer: memory stays constant per customer however long the simulation runs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Beta, Distribution, Exp, Exp1, Gamma};

use super::response::Responses;

const DAY_MS: f64 = 86_400_000.0;

/// Population parameters. The defaults are the published fits to the CDNOW customers (Fader,
/// Hardie and Lee 2005: BG/NBD r = 0.243, α = 4.414 weeks, a = 0.793, b = 2.426; gamma-gamma
/// p = 6.25, q = 3.74, γ = 15.44), the data churnd's model is trained on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Params {
    /// Shape of the gamma distribution of purchase rates.
    pub rate_shape: f64,
    /// Its scale, in purchases per day.
    pub rate_scale_per_day: f64,
    /// Beta distribution of the drop-out probability after a purchase.
    pub dropout_a: f64,
    pub dropout_b: f64,
    /// Gamma-gamma spend: per-purchase shape, and the shape and scale of the per-customer
    /// distribution of its rate parameter.
    pub spend_shape: f64,
    pub spend_mix_shape: f64,
    pub spend_mix_scale: f64,
    /// Visits per purchase, on average, while a customer is active.
    pub visits_per_purchase: f64,
    /// Chance that a purchase is followed by its refund, by a complaint, or by feedback.
    pub refund_probability: f64,
    pub complaint_probability: f64,
    pub feedback_probability: f64,
    /// Share of customers who send a profile before their first event.
    pub profile_share: f64,
    /// Mean days from a purchase to its refund or complaint.
    pub follow_up_days: f64,
    /// Share of arrivals who visit before they buy, if ever.
    pub prospect_share: f64,
    /// Mean days between a prospect's visits.
    pub prospect_visit_days: f64,
    /// After each visit, the chance that a prospect buys next, and that they give up.
    pub prospect_conversion: f64,
    pub prospect_give_up: f64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            rate_shape: 0.243,
            rate_scale_per_day: 1.0 / (4.414 * 7.0),
            dropout_a: 0.793,
            dropout_b: 2.426,
            spend_shape: 6.25,
            spend_mix_shape: 3.74,
            spend_mix_scale: 1.0 / 15.44,
            visits_per_purchase: 2.0,
            refund_probability: 0.03,
            complaint_probability: 0.02,
            feedback_probability: 0.1,
            profile_share: 0.7,
            follow_up_days: 5.0,
            prospect_share: 0.3,
            prospect_visit_days: 7.0,
            prospect_conversion: 0.2,
            prospect_give_up: 0.15,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid population parameter {name}: {reason}")]
pub struct ParamsError {
    pub name: &'static str,
    pub reason: String,
}

/// What a simulated customer did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Activity {
    Purchase {
        cents: u64,
    },
    Refund {
        cents: u64,
    },
    Visit,
    Complaint,
    /// A satisfaction score, 1 to 5.
    Feedback {
        score: u8,
    },
    /// Attributes, by index into [`REGIONS`], [`AGE_BANDS`], [`GENDERS`], [`CHANNELS`]; a
    /// birthday as month and day.
    Profile {
        region: u8,
        age_band: u8,
        gender: u8,
        channel: u8,
        birthday: (u8, u8),
    },
}

/// The values simulated profiles take.
pub(crate) const REGIONS: [&str; 4] = ["eu", "us", "apac", "latam"];
pub(crate) const AGE_BANDS: [&str; 5] = ["18-24", "25-34", "35-44", "45-54", "55+"];
pub(crate) const GENDERS: [&str; 3] = ["f", "m", "x"];
pub(crate) const CHANNELS: [&str; 3] = ["web", "app", "store"];
/// Weights of scores 1 to 5: mostly satisfied, a few very unhappy.
const SCORE_WEIGHTS: [f64; 5] = [0.06, 0.09, 0.2, 0.35, 0.3];

impl Activity {
    /// The event type churnd reads.
    pub(crate) fn event_type(&self) -> &'static str {
        match self {
            Self::Purchase { .. } => "purchase",
            Self::Refund { .. } => "refund",
            Self::Visit => "visit",
            Self::Complaint => "complaint",
            Self::Feedback { .. } => "feedback",
            Self::Profile { .. } => "profile",
        }
    }
}

/// One event of the simulation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SimEvent {
    /// The customer's number: 0 for the first to arrive, and so on.
    pub customer: u32,
    pub ts_ms: u64,
    pub activity: Activity,
}

/// What a customer does next, beyond their own purchase and visit process.
#[derive(Debug, Clone, Copy, PartialEq)]
enum FollowUp {
    None,
    Refund { cents: u64 },
    Complaint,
    Feedback,
}

/// One customer's drawn traits and their one pending event.
#[derive(Debug, Clone)]
struct Customer {
    /// Purchases and visits per day, together.
    activity_per_day: f64,
    dropout: f64,
    /// Rate parameter of the customer's spend per purchase (gamma-gamma).
    spend_rate: f64,
    /// When they last bought (0: not yet): how long they have been gone when an action
    /// reaches them.
    last_purchase_ms: u64,
    /// Set when the customer has dropped out: the pending event is their last.
    leaving: bool,
    follow_up: FollowUp,
    /// Whether the pending event is the first purchase.
    first: bool,
    /// Visiting, not bought yet: the pending event is a visit.
    prospect: bool,
    /// The pending event is the customer's profile, their first.
    profile: bool,
}

/// The simulated customer base.
pub(crate) struct Population {
    params: Params,
    rng: StdRng,
    rate: Gamma<f64>,
    dropout: Beta<f64>,
    spend_mix: Gamma<f64>,
    spend: Gamma<f64>,
    customers: Vec<Customer>,
    /// The next event of every customer still active: (time, customer).
    pending: BinaryHeap<Reverse<(u64, u32)>>,
    /// When the next new customer arrives, and the mean time between arrivals.
    next_arrival_ms: u64,
    arrival_gap: Exp<f64>,
    /// Purchases that actions brought: (time, customer, cents).
    induced: BinaryHeap<Reverse<(u64, u32, u64)>>,
    responses: Responses,
}

impl Population {
    /// A population whose customers arrive from `start_ms` on at `arrivals_per_day`.
    pub fn new(
        params: Params,
        seed: u64,
        start_ms: u64,
        arrivals_per_day: f64,
    ) -> Result<Self, ParamsError> {
        let invalid = |name, reason: &dyn std::fmt::Display| ParamsError {
            name,
            reason: reason.to_string(),
        };
        let positive = |name, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(invalid(name, &format!("{value} must be a positive number")))
            }
        };
        let probability = |name, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(invalid(name, &format!("{value} must be between 0 and 1")))
            }
        };
        positive("arrivals_per_day", arrivals_per_day)?;
        positive("follow_up_days", params.follow_up_days)?;
        positive("prospect_visit_days", params.prospect_visit_days)?;
        probability("prospect_share", params.prospect_share)?;
        probability("prospect_conversion", params.prospect_conversion)?;
        probability("prospect_give_up", params.prospect_give_up)?;
        if params.prospect_conversion + params.prospect_give_up > 1.0 {
            return Err(invalid(
                "prospect_conversion + prospect_give_up",
                &"must not exceed 1",
            ));
        }
        if !(params.visits_per_purchase >= 0.0 && params.visits_per_purchase.is_finite()) {
            return Err(invalid("visits_per_purchase", &"must be 0 or more"));
        }
        probability("refund_probability", params.refund_probability)?;
        probability("complaint_probability", params.complaint_probability)?;
        probability("feedback_probability", params.feedback_probability)?;
        probability("profile_share", params.profile_share)?;
        if params.refund_probability + params.complaint_probability + params.feedback_probability
            > 1.0
        {
            return Err(invalid(
                "refund_probability + complaint_probability + feedback_probability",
                &"must not exceed 1",
            ));
        }
        let rate = Gamma::new(params.rate_shape, params.rate_scale_per_day)
            .map_err(|e| invalid("rate_shape/rate_scale_per_day", &e))?;
        let dropout = Beta::new(params.dropout_a, params.dropout_b)
            .map_err(|e| invalid("dropout_a/dropout_b", &e))?;
        let spend_mix = Gamma::new(params.spend_mix_shape, params.spend_mix_scale)
            .map_err(|e| invalid("spend_mix_shape/spend_mix_scale", &e))?;
        // Per purchase: Gamma(shape, 1) divided by the customer's rate parameter.
        let spend = Gamma::new(params.spend_shape, 1.0).map_err(|e| invalid("spend_shape", &e))?;
        let arrival_gap =
            Exp::new(arrivals_per_day / DAY_MS).map_err(|e| invalid("arrivals_per_day", &e))?;
        let mut rng = StdRng::seed_from_u64(seed);
        let next_arrival_ms = start_ms + arrival_gap.sample(&mut rng) as u64;
        Ok(Self {
            params,
            rng,
            rate,
            dropout,
            spend_mix,
            spend,
            customers: Vec::new(),
            pending: BinaryHeap::new(),
            next_arrival_ms,
            arrival_gap,
            induced: BinaryHeap::new(),
            // Its own draws (hashes of this seed), not the population's random stream.
            responses: Responses::new(seed ^ 0x7265_7370_6f6e_6473),
        })
    }

    /// The answer of `customer` to `action`, sent at `at_ms` on task `task` (a number that
    /// tells the customer's tasks apart): if it works on them, the purchase it brings is
    /// scheduled, and its time returned. Unknown customers answer nothing.
    pub(crate) fn respond(
        &mut self,
        customer: u32,
        action: &str,
        task: u64,
        at_ms: u64,
    ) -> Option<u64> {
        let c = self.customers.get(customer as usize)?;
        // The mean of the customer's spend per order (gamma-gamma), which the purchase spends.
        let mean_order = self.params.spend_shape / c.spend_rate;
        // A prospect, who has not bought yet, is not gone.
        let last_purchase_ms = match c.last_purchase_ms {
            0 => at_ms,
            ms => ms,
        };
        let at =
            self.responses
                .answer(customer, mean_order, last_purchase_ms, action, task, at_ms)?;
        let cents = ((mean_order * 100.0).round() as u64).max(1);
        self.induced.push(Reverse((at, customer, cents)));
        Some(at)
    }

    /// Customers who have arrived so far.
    pub fn arrived(&self) -> usize {
        self.customers.len()
    }

    /// Customers who have not dropped out yet.
    pub fn active(&self) -> usize {
        self.pending.len()
    }

    /// The time of the next event.
    pub(crate) fn peek_ms(&self) -> u64 {
        let induced = self
            .induced
            .peek()
            .map_or(u64::MAX, |Reverse((ts, ..))| *ts);
        self.peek_natural_ms().min(induced)
    }

    /// The time of the next event of the customers' own processes.
    fn peek_natural_ms(&self) -> u64 {
        self.pending
            .peek()
            .map_or(self.next_arrival_ms, |Reverse((ts, _))| {
                (*ts).min(self.next_arrival_ms)
            })
    }

    /// The next event in time order (ties in customer order). Never ends: customers keep
    /// arriving.
    pub(crate) fn next_event(&mut self) -> SimEvent {
        if let Some(&Reverse((ts, customer, cents))) = self.induced.peek() {
            if ts <= self.peek_natural_ms() {
                self.induced.pop();
                self.customers[customer as usize].last_purchase_ms = ts;
                return SimEvent {
                    customer,
                    ts_ms: ts,
                    activity: Activity::Purchase { cents },
                };
            }
        }
        let due = self.pending.peek().map(|Reverse(p)| *p);
        match due {
            Some((ts, customer)) if ts <= self.next_arrival_ms => {
                self.pending.pop();
                self.act(customer, ts)
            }
            _ => {
                let ts = self.next_arrival_ms;
                self.next_arrival_ms = ts + self.arrival_gap.sample(&mut self.rng) as u64;
                let customer = self.arrive();
                self.act(customer, ts)
            }
        }
    }

    /// Draws a new customer's traits; their first event is a purchase, or a prospect's visit.
    fn arrive(&mut self) -> u32 {
        let prospect = self.rng.random_bool(self.params.prospect_share);
        let purchases_per_day = self.rate.sample(&mut self.rng);
        let activity_per_day = purchases_per_day * (1.0 + self.params.visits_per_purchase);
        let customer = Customer {
            activity_per_day,
            dropout: self.dropout.sample(&mut self.rng),
            spend_rate: self.spend_mix.sample(&mut self.rng),
            last_purchase_ms: 0,
            leaving: false,
            follow_up: FollowUp::None,
            first: !prospect,
            prospect,
            profile: self.rng.random_bool(self.params.profile_share),
        };
        let number = u32::try_from(self.customers.len()).unwrap_or(u32::MAX);
        self.customers.push(customer);
        number
    }

    /// The customer's pending event at `ts`, and the scheduling of the one after it.
    fn act(&mut self, number: u32, ts: u64) -> SimEvent {
        let params = &self.params;
        let rng = &mut self.rng;
        let c = &mut self.customers[number as usize];
        if std::mem::take(&mut c.profile) {
            // Who they are first; what they do comes a moment later.
            self.pending.push(Reverse((ts + 1, number)));
            let pick = |rng: &mut StdRng, n: usize| rng.random_range(0..n) as u8;
            let month = rng.random_range(1..=12u8);
            let days = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][usize::from(month - 1)];
            return SimEvent {
                customer: number,
                ts_ms: ts,
                activity: Activity::Profile {
                    region: pick(rng, REGIONS.len()),
                    age_band: pick(rng, AGE_BANDS.len()),
                    gender: pick(rng, GENDERS.len()),
                    channel: pick(rng, CHANNELS.len()),
                    birthday: (month, rng.random_range(1..=days)),
                },
            };
        }
        if c.prospect {
            // Visit, then buy next, give up, or come back.
            let draw: f64 = rng.random();
            let gap = rng.sample::<f64, _>(Exp1) * params.prospect_visit_days;
            if draw < params.prospect_conversion {
                (c.prospect, c.first) = (false, true);
            } else if draw < params.prospect_conversion + params.prospect_give_up {
                c.leaving = true;
            }
            if !c.leaving {
                let at = ts.saturating_add((gap * DAY_MS) as u64).max(ts + 1);
                self.pending.push(Reverse((at, number)));
            }
            return SimEvent {
                customer: number,
                ts_ms: ts,
                activity: Activity::Visit,
            };
        }
        let purchase_share = 1.0 / (1.0 + params.visits_per_purchase);
        let activity = match std::mem::replace(&mut c.follow_up, FollowUp::None) {
            FollowUp::Refund { cents } => Activity::Refund { cents },
            FollowUp::Complaint => Activity::Complaint,
            FollowUp::Feedback => {
                let draw: f64 = rng.random();
                let mut cumulative = 0.0;
                let score = SCORE_WEIGHTS
                    .iter()
                    .position(|w| {
                        cumulative += w;
                        draw < cumulative
                    })
                    .unwrap_or(SCORE_WEIGHTS.len() - 1);
                Activity::Feedback {
                    score: score as u8 + 1,
                }
            }
            FollowUp::None if c.first || rng.random_bool(purchase_share) => {
                let amount = self.spend.sample(rng) / c.spend_rate;
                Activity::Purchase {
                    cents: ((amount * 100.0).round() as u64).max(1),
                }
            }
            FollowUp::None => Activity::Visit,
        };
        let first_purchase = std::mem::take(&mut c.first);
        if let Activity::Purchase { cents } = activity {
            c.last_purchase_ms = ts;
            let draw: f64 = rng.random();
            let complaint = params.refund_probability + params.complaint_probability;
            c.follow_up = if draw < params.refund_probability {
                FollowUp::Refund { cents }
            } else if draw < complaint {
                FollowUp::Complaint
            } else if draw < complaint + params.feedback_probability {
                FollowUp::Feedback
            } else {
                FollowUp::None
            };
            // BG/NBD: the drop-out comes after a repeat purchase (never right after the
            // first); a pending follow-up still happens.
            c.leaving = !first_purchase && rng.random_bool(c.dropout);
        }
        let next = match c.follow_up {
            FollowUp::None if c.leaving || c.activity_per_day <= 0.0 => None,
            FollowUp::None => Some(rng.sample::<f64, _>(Exp1) / c.activity_per_day),
            _ => Some(rng.sample::<f64, _>(Exp1) * params.follow_up_days),
        };
        if let Some(days) = next.filter(|d| d.is_finite()) {
            let at = ts.saturating_add((days * DAY_MS) as u64).max(ts + 1);
            self.pending.push(Reverse((at, number)));
        }
        SimEvent {
            customer: number,
            ts_ms: ts,
            activity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: u64 = 1_700_000_000_000;

    fn run(seed: u64, days: f64) -> Vec<SimEvent> {
        let mut p = Population::new(Params::default(), seed, START, 100.0).unwrap();
        let end = START + (days * DAY_MS) as u64;
        let mut out = Vec::new();
        while p.peek_ms() < end {
            out.push(p.next_event());
        }
        out
    }

    #[test]
    fn the_same_seed_gives_the_same_events_and_another_seed_others() {
        assert_eq!(run(7, 60.0), run(7, 60.0));
        assert_ne!(run(7, 60.0), run(8, 60.0));
    }

    #[test]
    fn events_come_in_time_order_and_customers_start_with_a_purchase_or_as_prospects() {
        let events = run(1, 365.0);
        assert!(events.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
        let mut first = std::collections::HashMap::new();
        let mut profiled = std::collections::HashSet::new();
        for e in &events {
            match e.activity {
                // The profile comes before what the customer does, at most once.
                Activity::Profile { .. } => {
                    assert!(!first.contains_key(&e.customer) && profiled.insert(e.customer));
                }
                _ => {
                    first.entry(e.customer).or_insert(e.activity);
                }
            }
        }
        let share = profiled.len() as f64 / first.len() as f64;
        assert!((0.67..0.73).contains(&share), "profiles {share}");
        // 100 arrivals a day for a year, 30 % of them prospects who visit first.
        assert!((30_000..43_000).contains(&first.len()), "{}", first.len());
        let visiting = first.values().filter(|a| **a == Activity::Visit).count() as f64;
        let share = visiting / first.len() as f64;
        assert!((0.27..0.33).contains(&share), "prospects {share}");
        assert!(first
            .values()
            .all(|a| matches!(a, Activity::Visit | Activity::Purchase { .. })));
        // About half of the prospects buy at some point: 0.2 / (0.2 + 0.15) of those who stop.
        let buyers: std::collections::HashSet<u32> = events
            .iter()
            .filter(|e| matches!(e.activity, Activity::Purchase { .. }))
            .map(|e| e.customer)
            .collect();
        let converted = first
            .iter()
            .filter(|(c, a)| **a == Activity::Visit && buyers.contains(c))
            .count() as f64;
        assert!(
            (0.45..0.62).contains(&(converted / visiting)),
            "{}",
            converted / visiting
        );
    }

    #[test]
    fn behaviour_matches_the_buy_till_you_die_parameters() {
        let events = run(3, 365.0);
        let count = |kind: &str| {
            events
                .iter()
                .filter(|e| e.activity.event_type() == kind)
                .count() as f64
        };
        let (purchases, visits) = (count("purchase"), count("visit"));
        let (refunds, complaints) = (count("refund"), count("complaint"));
        // Buyers' visits: two per repeat activity, none with the first purchase.
        let customers = events.iter().map(|e| e.customer).max().unwrap() as f64 + 1.0;
        let mut first_seen = std::collections::HashSet::new();
        let mut buyer = vec![false; customers as usize];
        let mut prospect_visits = 0.0;
        for e in &events {
            let new = first_seen.insert(e.customer);
            match e.activity {
                Activity::Purchase { .. } => buyer[e.customer as usize] = true,
                Activity::Visit if new || !buyer[e.customer as usize] => prospect_visits += 1.0,
                _ => {}
            }
        }
        let buyers = buyer.iter().filter(|&&b| b).count() as f64;
        let repeats = purchases - buyers;
        let buyer_visits = visits - prospect_visits;
        assert!(
            (buyer_visits / repeats - 2.0).abs() < 0.2,
            "visits per repeat purchase {}",
            buyer_visits / repeats
        );
        assert!((refunds / purchases - 0.03).abs() < 0.005);
        assert!((complaints / purchases - 0.02).abs() < 0.005);
        // Heavy-tailed spend with the gamma-gamma mean p·γ/(q−1) ≈ 35.2.
        let mut amounts: Vec<f64> = events
            .iter()
            .filter_map(|e| match e.activity {
                Activity::Purchase { cents } => Some(cents as f64 / 100.0),
                _ => None,
            })
            .collect();
        amounts.sort_by(f64::total_cmp);
        let mean = amounts.iter().sum::<f64>() / amounts.len() as f64;
        let median = amounts[amounts.len() / 2];
        assert!((28.0..45.0).contains(&mean), "mean spend {mean}");
        assert!(mean > median, "right-skewed: mean {mean}, median {median}");
        // Most customers buy once and drop out or never come back within the year, a few
        // buy often: the CDNOW picture.
        let mut per_customer = vec![0u32; customers as usize];
        for e in &events {
            if matches!(e.activity, Activity::Purchase { .. }) {
                per_customer[e.customer as usize] += 1;
            }
        }
        let once = per_customer.iter().filter(|&&n| n == 1).count() as f64 / buyers;
        let ten_or_more = per_customer.iter().filter(|&&n| n >= 10).count() as f64 / buyers;
        assert!((0.5..0.9).contains(&once), "share buying once {once}");
        assert!(
            ten_or_more > 0.001,
            "share buying ten times or more {ten_or_more}"
        );
    }

    #[test]
    fn customers_drop_out_so_the_active_base_is_smaller_than_the_arrivals() {
        let mut p = Population::new(Params::default(), 5, START, 50.0).unwrap();
        while p.peek_ms() < START + 2 * 365 * DAY_MS as u64 {
            p.next_event();
        }
        // Drop-outs happen only after purchases, and most customers buy rarely (gamma shape
        // 0.243): after two years about 60 % are still "alive", many of them quiet.
        assert!(
            p.active() * 4 < p.arrived() * 3,
            "{} of {}",
            p.active(),
            p.arrived()
        );
        assert!(p.active() > 0);
    }

    #[test]
    fn an_action_that_works_brings_one_purchase_and_changes_nothing_else() {
        let days = |d: u64| START + d * DAY_MS as u64;
        let mut natural = Population::new(Params::default(), 11, START, 200.0).unwrap();
        let mut acted = Population::new(Params::default(), 11, START, 200.0).unwrap();
        let mut own = Vec::new();
        while natural.peek_ms() < days(30) {
            own.push(natural.next_event());
            acted.next_event();
        }
        // Day 30: every customer so far gets a coupon.
        let customers = acted.arrived() as u32;
        let induced: Vec<(u32, u64)> = (0..customers)
            .filter_map(|c| acted.respond(c, "coupon", 1, days(30)).map(|at| (c, at)))
            .collect();
        assert_eq!(acted.respond(customers + 10, "coupon", 1, days(30)), None);
        // Deal seekers answer 30 % and the nudgeable 10 %: some, far from all.
        let share = induced.len() as f64 / f64::from(customers);
        assert!((0.02..0.15).contains(&share), "answered {share}");
        let (mut with, mut without) = (Vec::new(), Vec::new());
        while natural.peek_ms() < days(60) {
            without.push(natural.next_event());
        }
        while acted.peek_ms() < days(60) {
            with.push(acted.next_event());
        }
        assert!(with.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
        // The acted-on run is the natural one plus exactly the induced purchases.
        let extra: Vec<(u32, u64)> = with
            .iter()
            .filter(|e| !without.contains(e))
            .map(|e| (e.customer, e.ts_ms))
            .collect();
        let mut expected = induced.clone();
        expected.sort_by_key(|&(c, at)| (at, c));
        assert_eq!(extra, expected);
        assert_eq!(with.len(), without.len() + induced.len());
        assert!(induced
            .iter()
            .all(|&(_, at)| at > days(30) && at < days(56)));
    }

    #[test]
    fn invalid_parameters_are_refused_by_name() {
        let err = Population::new(
            Params {
                refund_probability: 1.5,
                ..Params::default()
            },
            1,
            START,
            1.0,
        )
        .err()
        .unwrap();
        assert_eq!(err.name, "refund_probability");
        let err = Population::new(Params::default(), 1, START, 0.0)
            .err()
            .unwrap();
        assert_eq!(err.name, "arrivals_per_day");
        let err = Population::new(
            Params {
                dropout_a: -1.0,
                ..Params::default()
            },
            1,
            START,
            1.0,
        )
        .err()
        .unwrap();
        assert_eq!(err.name, "dropout_a/dropout_b");
    }
}
