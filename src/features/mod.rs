//! Per-customer rolling RFM state and the model's feature vector.
//!
//! [`CustomerFeatures`] keeps constant space per customer: exponentially decayed counts and
//! spend at several half-lives, anchored at the latest event time applied. Decay is exact in
//! event time: a late event is decayed back to the anchor instead of forward, so the state
//! does not depend on arrival order. [`FEATURE_NAMES`] and [`CustomerFeatures::vector`] are
//! the one definition of the model's inputs, shared by streaming scoring, batch scoring and
//! training.

pub(crate) mod recheck;
pub mod store;
pub(crate) mod timers;

use crate::event::{Event, EventKind};
use crate::time::{self, UnixSeconds, SECONDS_PER_DAY};

/// Half-lives of the decayed purchase counts and spend, in days.
pub(crate) const HALF_LIVES_DAYS: [f64; 3] = [30.0, 90.0, 365.0];
/// Half-life of the refund and complaint signals, in days.
const DISSATISFACTION_HALF_LIFE_DAYS: f64 = 90.0;
/// Half-life of the visit (engagement) signal, in days.
const VISIT_HALF_LIFE_DAYS: f64 = 30.0;
/// `overdue_ratio` is capped so one customer's long silence cannot dominate a fit.
const MAX_OVERDUE_RATIO: f64 = 10.0;
/// Prior of the buy-till-you-die features, as in a BG/NBD model: a purchase rate of
/// `PRIOR_PURCHASES` per `PRIOR_DAYS` before any evidence. Fixed constants (fitted BG/NBD
/// values on CDNOW are near r = 0.25, α = 30 days) so that the features need no per-model
/// state; the logistic coefficients do the weighting.
const PRIOR_PURCHASES: f64 = 0.25;
const PRIOR_DAYS: f64 = 30.0;

/// Names of the model's inputs, in the order of [`FeatureVector`]. A model file must name
/// exactly these.
pub const FEATURE_NAMES: [&str; FEATURE_COUNT] = [
    "log_recency_days",
    "log_tenure_days",
    "log_purchases",
    "repeat_buyer",
    "log_interpurchase_days",
    "overdue_ratio",
    "log_frequency_30d",
    "log_frequency_90d",
    "log_frequency_365d",
    "log_monetary_30d",
    "log_monetary_90d",
    "log_monetary_365d",
    "log_avg_order_value",
    "refunds_90d",
    "complaints_90d",
    "visits_30d",
    "log_inactivity_days",
    "log_purchase_rate",
    "silence_evidence",
];
pub const FEATURE_COUNT: usize = 19;

/// One customer's model inputs at one moment.
pub(crate) type FeatureVector = [f64; FEATURE_COUNT];

/// Rolling state of one customer: 56 bytes, whatever the number of events.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CustomerFeatures {
    first_purchase: UnixSeconds,
    last_purchase: UnixSeconds,
    /// Latest event time of any kind: the anchor of every decayed sum below.
    last_event: UnixSeconds,
    purchases: u32,
    /// Lifetime spend, net of refunds.
    total_spend: f32,
    /// Purchase counts decayed with [`HALF_LIVES_DAYS`], as of `last_event`.
    frequency: [f32; 3],
    /// Spend net of refunds decayed with [`HALF_LIVES_DAYS`], as of `last_event`.
    monetary: [f32; 3],
    refunds: f32,
    complaints: f32,
    visits: f32,
}

/// A count decayed with a 90-day half-life and anchored at its own latest event, exact in
/// event time like the features (a late event is decayed back to the anchor): for the
/// signals only some customers have, kept in the store's sparse column. 8 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Decayed {
    value: f32,
    at: UnixSeconds,
}

impl Decayed {
    /// Adds one at time `t`.
    pub fn add(&mut self, t: UnixSeconds) {
        if t >= self.at {
            self.value =
                (f64::from(self.value) * decay(t - self.at, DISSATISFACTION_HALF_LIFE_DAYS)) as f32
                    + 1.0;
            self.at = t;
        } else {
            self.value += decay(self.at - t, DISSATISFACTION_HALF_LIFE_DAYS) as f32;
        }
    }

    /// The count at `now`.
    pub fn at(&self, now: UnixSeconds) -> f64 {
        f64::from(self.value) * decay(now.saturating_sub(self.at), DISSATISFACTION_HALF_LIFE_DAYS)
    }

    /// The exact state, for snapshots.
    pub(crate) fn to_parts(self) -> (f32, UnixSeconds) {
        (self.value, self.at)
    }

    pub(crate) fn from_parts(value: f32, at: UnixSeconds) -> Self {
        Self { value, at }
    }
}

/// What `feedback` events told of a customer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Feedback {
    /// The latest score, 1 to 5.
    pub last_score: u8,
    /// When it was given.
    pub last_at: UnixSeconds,
    /// Scores of 1 or 2, decayed: dissatisfaction beside complaints.
    pub low_scores: Decayed,
}

/// Scores at or below this count as dissatisfied.
pub(crate) const LOW_SCORE: u8 = 2;

impl Feedback {
    pub fn apply(&mut self, score: u8, t: UnixSeconds) {
        if t >= self.last_at {
            self.last_score = score;
            self.last_at = t;
        }
        if score <= LOW_SCORE {
            self.low_scores.add(t);
        }
    }
}

/// Raw RFM facts for people (the API and tasks), as opposed to the model's transformed inputs.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Rfm {
    pub recency_days: f64,
    pub tenure_days: f64,
    pub purchases: u32,
    pub frequency_365d: f64,
    pub monetary_365d: f64,
    pub total_spend: f64,
}

/// `2^(-elapsed / half_life)`.
fn decay(elapsed_secs: u32, half_life_days: f64) -> f64 {
    (-(elapsed_secs as f64) / (half_life_days * SECONDS_PER_DAY)).exp2()
}

impl CustomerFeatures {
    /// Applies one event. O(1), no allocation. An event of a kind these features do not
    /// move with ([`Self::moves_with`]) changes nothing, not even the anchor.
    pub fn apply(&mut self, event: &Event<'_>) {
        if !Self::moves_with(event.kind) {
            return;
        }
        let t = event.time;
        // Weight of the new event at the anchor: 1 if it moves the anchor forward (after
        // decaying everything to it), less than 1 if it is late.
        let behind = if t >= self.last_event || self.last_event == 0 {
            self.decay_to(t);
            0
        } else {
            self.last_event - t
        };
        let weights = HALF_LIVES_DAYS.map(|h| decay(behind, h));
        match event.kind {
            EventKind::Purchase => {
                if self.purchases == 0 || t < self.first_purchase {
                    self.first_purchase = t;
                }
                self.last_purchase = self.last_purchase.max(t);
                self.purchases = self.purchases.saturating_add(1);
                self.total_spend += event.amount as f32;
                for ((f, m), w) in self
                    .frequency
                    .iter_mut()
                    .zip(&mut self.monetary)
                    .zip(weights)
                {
                    *f += w as f32;
                    *m += (event.amount * w) as f32;
                }
            }
            EventKind::Refund => {
                self.refunds += decay(behind, DISSATISFACTION_HALF_LIFE_DAYS) as f32;
                self.total_spend -= event.amount as f32;
                for (m, w) in self.monetary.iter_mut().zip(weights) {
                    *m -= (event.amount * w) as f32;
                }
            }
            EventKind::Complaint => {
                self.complaints += decay(behind, DISSATISFACTION_HALF_LIFE_DAYS) as f32;
            }
            EventKind::Visit => {
                self.visits += decay(behind, VISIT_HALF_LIFE_DAYS) as f32;
            }
            // Returned above: feedback and coupons live in the sparse column ([`Feedback`],
            // [`Decayed`]); a profile is no activity.
            EventKind::Feedback | EventKind::Profile => {}
        }
    }

    /// Whether an event of this kind changes these features (a profile does not, and the
    /// anchor of the decayed sums must not move for it).
    pub(crate) fn moves_with(kind: EventKind) -> bool {
        !matches!(kind, EventKind::Feedback | EventKind::Profile)
    }

    /// Refunds and complaints, decayed with a 90-day half-life, at `now`.
    pub fn dissatisfaction(&self, now: UnixSeconds) -> (f64, f64) {
        (
            self.at(self.refunds, now, DISSATISFACTION_HALF_LIFE_DAYS),
            self.at(self.complaints, now, DISSATISFACTION_HALF_LIFE_DAYS),
        )
    }

    fn decay_to(&mut self, t: UnixSeconds) {
        if self.last_event != 0 && t > self.last_event {
            let dt = t - self.last_event;
            for (i, h) in HALF_LIVES_DAYS.iter().enumerate() {
                let f = decay(dt, *h) as f32;
                self.frequency[i] *= f;
                self.monetary[i] *= f;
            }
            let f = decay(dt, DISSATISFACTION_HALF_LIFE_DAYS) as f32;
            self.refunds *= f;
            self.complaints *= f;
            self.visits *= decay(dt, VISIT_HALF_LIFE_DAYS) as f32;
        }
        self.last_event = self.last_event.max(t);
    }

    /// Size of [`Self::to_bytes`].
    pub(crate) const ENCODED_LEN: usize = 56;

    /// The exact state, little-endian, for snapshots: a restored customer continues
    /// bit-for-bit where it stopped.
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        let words = [
            self.first_purchase,
            self.last_purchase,
            self.last_event,
            self.purchases,
            self.total_spend.to_bits(),
            self.frequency[0].to_bits(),
            self.frequency[1].to_bits(),
            self.frequency[2].to_bits(),
            self.monetary[0].to_bits(),
            self.monetary[1].to_bits(),
            self.monetary[2].to_bits(),
            self.refunds.to_bits(),
            self.complaints.to_bits(),
            self.visits.to_bits(),
        ];
        for (chunk, w) in out.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// The inverse of [`Self::to_bytes`].
    pub(crate) fn from_bytes(bytes: &[u8; Self::ENCODED_LEN]) -> Self {
        let mut w = [0u32; Self::ENCODED_LEN / 4];
        for (word, chunk) in w.iter_mut().zip(bytes.chunks_exact(4)) {
            *word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        let f = f32::from_bits;
        Self {
            first_purchase: w[0],
            last_purchase: w[1],
            last_event: w[2],
            purchases: w[3],
            total_spend: f(w[4]),
            frequency: [f(w[5]), f(w[6]), f(w[7])],
            monetary: [f(w[8]), f(w[9]), f(w[10])],
            refunds: f(w[11]),
            complaints: f(w[12]),
            visits: f(w[13]),
        }
    }

    pub(crate) fn has_purchased(&self) -> bool {
        self.purchases > 0
    }

    pub fn purchases(&self) -> u32 {
        self.purchases
    }

    pub fn first_purchase(&self) -> Option<UnixSeconds> {
        self.has_purchased().then_some(self.first_purchase)
    }

    pub fn last_purchase(&self) -> Option<UnixSeconds> {
        self.has_purchased().then_some(self.last_purchase)
    }

    pub fn last_event(&self) -> UnixSeconds {
        self.last_event
    }

    /// Lifetime spend net of refunds (negative when refunds exceed purchases).
    pub fn total_spend(&self) -> f64 {
        f64::from(self.total_spend)
    }

    /// A decayed sum read at `now`.
    fn at(&self, value: f32, now: UnixSeconds, half_life_days: f64) -> f64 {
        value as f64 * decay(now.saturating_sub(self.last_event), half_life_days)
    }

    /// Raw RFM facts at `now`; `None` before the first purchase.
    pub fn rfm(&self, now: UnixSeconds) -> Option<Rfm> {
        if !self.has_purchased() {
            return None;
        }
        Some(Rfm {
            recency_days: time::days_between(self.last_purchase, now),
            tenure_days: time::days_between(self.first_purchase, now),
            purchases: self.purchases,
            frequency_365d: self.at(self.frequency[2], now, HALF_LIVES_DAYS[2]),
            monetary_365d: self.at(self.monetary[2], now, HALF_LIVES_DAYS[2]).max(0.0),
            total_spend: (self.total_spend as f64).max(0.0),
        })
    }

    /// The model's inputs at `now`, in [`FEATURE_NAMES`] order; `None` before the first
    /// purchase (churn is defined for buyers).
    pub fn vector(&self, now: UnixSeconds) -> Option<FeatureVector> {
        if !self.has_purchased() {
            return None;
        }
        let recency = time::days_between(self.last_purchase, now);
        let tenure = time::days_between(self.first_purchase, now);
        let repeat = self.purchases >= 2;
        let interpurchase = if repeat {
            time::days_between(self.first_purchase, self.last_purchase)
                / f64::from(self.purchases - 1)
        } else {
            0.0
        };
        let overdue = if repeat {
            (recency / interpurchase.max(1.0)).min(MAX_OVERDUE_RATIO)
        } else {
            0.0
        };
        let freq = |i: usize| self.at(self.frequency[i], now, HALF_LIVES_DAYS[i]);
        let money = |i: usize| self.at(self.monetary[i], now, HALF_LIVES_DAYS[i]).max(0.0);
        let avg_order = (self.total_spend as f64).max(0.0) / f64::from(self.purchases);
        let repeats = f64::from(self.purchases - 1);
        Some([
            recency.ln_1p(),
            tenure.ln_1p(),
            f64::from(self.purchases).ln_1p(),
            f64::from(u8::from(repeat)),
            interpurchase.ln_1p(),
            overdue,
            freq(0).ln_1p(),
            freq(1).ln_1p(),
            freq(2).ln_1p(),
            money(0).ln_1p(),
            money(1).ln_1p(),
            money(2).ln_1p(),
            avg_order.ln_1p(),
            self.at(self.refunds, now, DISSATISFACTION_HALF_LIFE_DAYS),
            self.at(self.complaints, now, DISSATISFACTION_HALF_LIFE_DAYS),
            self.at(self.visits, now, VISIT_HALF_LIFE_DAYS),
            time::days_between(self.last_event, now).ln_1p(),
            // The customer's purchase rate per day, shrunk towards the prior.
            (repeats + PRIOR_PURCHASES).ln() - (PRIOR_DAYS + tenure).ln(),
            // How unlikely the current silence is for a customer still buying at their
            // rate: BG/NBD's log-odds against being alive, up to constants.
            (repeats + PRIOR_PURCHASES)
                * ((PRIOR_DAYS + tenure).ln() - (PRIOR_DAYS + tenure - recency).ln()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_and_feedback_leave_the_features_and_their_anchor_alone() {
        let mut f = CustomerFeatures::default();
        f.apply(&Event::new("c", EventKind::Purchase, 10.0, 1_000_000_000));
        let before = f;
        for kind in [EventKind::Profile, EventKind::Feedback] {
            f.apply(&Event::new("c", kind, 0.0, 1_000_000_000 + 30 * 86_400));
        }
        assert_eq!(f, before);
    }

    #[test]
    fn bytes_round_trip_exactly() {
        let mut f = CustomerFeatures::default();
        for (day, kind, amount) in [
            (0, EventKind::Purchase, 19.99),
            (3, EventKind::Visit, 0.0),
            (40, EventKind::Purchase, 5.5),
            (41, EventKind::Refund, 2.25),
            (50, EventKind::Complaint, 0.0),
        ] {
            f.apply(&Event::new("c", kind, amount, 1_000_000_000 + day * 86_400));
        }
        assert_eq!(CustomerFeatures::from_bytes(&f.to_bytes()), f);
    }

    const DAY: u32 = 86_400;
    const T0: u32 = 852_076_800; // 1997-01-01

    fn ev(kind: EventKind, amount: f64, day: u32) -> Event<'static> {
        Event::new("c", kind, amount, T0 + day * DAY)
    }

    fn feature(v: &FeatureVector, name: &str) -> f64 {
        v[FEATURE_NAMES.iter().position(|n| *n == name).unwrap()]
    }

    #[test]
    fn decayed_sums_halve_every_half_life() {
        let mut f = CustomerFeatures::default();
        f.apply(&ev(EventKind::Purchase, 10.0, 0));
        f.apply(&ev(EventKind::Purchase, 20.0, 30));
        let v = f.vector(T0 + 60 * DAY).unwrap();
        // 30-day half-life at day 60: 1·2^-2 + 1·2^-1 counts, 10·2^-2 + 20·2^-1 spend.
        assert!((feature(&v, "log_frequency_30d") - 0.75f64.ln_1p()).abs() < 1e-6);
        assert!((feature(&v, "log_monetary_30d") - 12.5f64.ln_1p()).abs() < 1e-5);
        assert!((feature(&v, "log_recency_days") - 30f64.ln_1p()).abs() < 1e-12);
        assert!((feature(&v, "log_tenure_days") - 60f64.ln_1p()).abs() < 1e-12);
        assert_eq!(feature(&v, "repeat_buyer"), 1.0);
        assert!((feature(&v, "log_interpurchase_days") - 30f64.ln_1p()).abs() < 1e-12);
        assert!((feature(&v, "overdue_ratio") - 1.0).abs() < 1e-12);
        assert!((feature(&v, "log_avg_order_value") - 15f64.ln_1p()).abs() < 1e-6);
    }

    #[test]
    fn arrival_order_does_not_change_the_state() {
        let events = [
            ev(EventKind::Purchase, 10.0, 0),
            ev(EventKind::Visit, 0.0, 5),
            ev(EventKind::Purchase, 35.0, 40),
            ev(EventKind::Refund, 5.0, 45),
            ev(EventKind::Complaint, 0.0, 50),
        ];
        let mut in_order = CustomerFeatures::default();
        events.iter().for_each(|e| in_order.apply(e));
        let mut shuffled = CustomerFeatures::default();
        for i in [3, 0, 4, 2, 1] {
            shuffled.apply(&events[i]);
        }
        let now = T0 + 100 * DAY;
        let (a, b) = (in_order.vector(now).unwrap(), shuffled.vector(now).unwrap());
        for (i, name) in FEATURE_NAMES.iter().enumerate() {
            assert!((a[i] - b[i]).abs() < 1e-5, "{name}: {} vs {}", a[i], b[i]);
        }
    }

    #[test]
    fn refunds_reduce_spend_and_count_as_dissatisfaction() {
        let mut f = CustomerFeatures::default();
        f.apply(&ev(EventKind::Purchase, 100.0, 0));
        f.apply(&ev(EventKind::Refund, 40.0, 0));
        let rfm = f.rfm(T0).unwrap();
        assert_eq!(rfm.total_spend, 60.0);
        assert!((rfm.monetary_365d - 60.0).abs() < 1e-4);
        let v = f.vector(T0 + 90 * DAY).unwrap();
        assert!((feature(&v, "refunds_90d") - 0.5).abs() < 1e-6);
    }

    #[test]
    fn visits_alone_do_not_make_a_buyer() {
        let mut f = CustomerFeatures::default();
        f.apply(&ev(EventKind::Visit, 0.0, 3));
        assert!(f.vector(T0 + 4 * DAY).is_none());
        assert_eq!(f.last_event(), T0 + 3 * DAY);
    }

    #[test]
    fn one_time_buyers_have_no_rhythm() {
        let mut f = CustomerFeatures::default();
        f.apply(&ev(EventKind::Purchase, 10.0, 0));
        let v = f.vector(T0 + 200 * DAY).unwrap();
        assert_eq!(feature(&v, "repeat_buyer"), 0.0);
        assert_eq!(feature(&v, "overdue_ratio"), 0.0);
        assert!(v.iter().all(|x| x.is_finite()));
    }

    proptest::proptest! {
        /// During silence every input moves in one direction only: the scheduler of silence
        /// checks bounds a score's movement from that (see `recheck`).
        #[test]
        fn every_input_is_monotone_during_silence(
            history in proptest::collection::vec(
                (0u32..4, 0.0f64..500.0, 0u32..400 * DAY), 1..8),
            since_last in 0u32..200 * DAY,
            mut silences in proptest::collection::vec(1u32..800 * DAY, 2..8),
        ) {
            let mut f = CustomerFeatures::default();
            f.apply(&ev(EventKind::Purchase, 20.0, 0));
            for (kind, amount, at) in &history {
                let kind = [EventKind::Purchase, EventKind::Refund, EventKind::Visit,
                    EventKind::Complaint][*kind as usize];
                f.apply(&Event::new("c", kind, *amount, T0 + at));
            }
            let now = f.last_event() + since_last;
            silences.sort_unstable();
            let path: Vec<FeatureVector> = std::iter::once(0)
                .chain(silences)
                .map(|s| f.vector(now + s).unwrap())
                .collect();
            for i in 0..FEATURE_COUNT {
                let steps: Vec<f64> = path.windows(2).map(|w| w[1][i] - w[0][i]).collect();
                proptest::prop_assert!(
                    steps.iter().all(|d| *d >= 0.0) || steps.iter().all(|d| *d <= 0.0),
                    "{} goes both ways: {steps:?}", FEATURE_NAMES[i]
                );
            }
        }
    }

    #[test]
    fn the_state_stays_small() {
        assert!(std::mem::size_of::<CustomerFeatures>() <= 56);
    }
}
