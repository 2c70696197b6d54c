//! BG/NBD's conditional expectations beside [`BgNbd::p_alive`]: how many purchases a customer
//! with history (x, t_x, T) is expected to make in the next `t` days, and when their next
//! purchase is due.
//!
//! The expected purchases are Fader, Hardie & Lee's (2005) equation (10), lifetimes'
//! `conditional_expected_number_of_purchases_up_to_time`:
//!
//! ```text
//! E[Y(t) | x, t_x, T] = P(alive) · (a+b+x−1)/(a−1) · [1 − ((α+T)/(α+T+t))^(r+x) · ₂F₁(r+x, b+x; a+b+x−1; z)]
//! z = t / (α+T+t)
//! ```
//!
//! Computed as written it fails in three places: ₂F₁(r+x, b+x; …) grows like (1−z)^−x and
//! overflows for frequent buyers (lifetimes falls back to Euler's transformation when it sees
//! an infinity), the factor 1/(a−1) is singular at a = 1, and the bracket cancels there. Here
//! Euler's transformation is applied always,
//!
//! ```text
//! ₂F₁(A, B; C; z) = (1−z)^(C−A−B) · ₂F₁(C−A, C−B; C; z),  A = r+x, B = b+x, C = a+b+x−1,
//! ```
//!
//! which turns the power and the function into (1−z)^(a−1) · ₂F₁(a+b−1−r, a−1; C; z): the
//! upper parameters no longer depend on x (large x only makes the series converge faster),
//! and with ε = a−1 the whole expression divides by ε exactly:
//!
//! ```text
//! E[Y(t) | alive] = −C · expm1(ε·L)/ε − e^(ε·L) · Σ_{k≥1} T_k,    L = ln(1−z) = −ln(1 + t/(α+T))
//! T_1 = (a+b−1−r)·z,  T_{k+1} = T_k · (a+b−1−r+k)(ε+k)·z / ((C+k)(k+1))
//! ```
//!
//! (C·₂F₁ − C = ε·Σ T_k, since (ε)_k = ε·(1+ε)_{k−1} and (C)_k = C·(C+1)_{k−1}.) Every
//! denominator C+k is positive for k ≥ 1 whatever the parameters, so no constraint beyond
//! r, α, a, b > 0 is needed. All times are in days, like the parameters.

use crate::model::bgnbd::{BgNbd, RepeatSummary};

/// Series terms at most: the terms shrink at least geometrically with ratio z, so this is
/// reached only when z is within ~1e-4 of 1 (a horizon thousands of times α + T).
const MAX_TERMS: usize = 100_000;

impl BgNbd {
    /// Expected number of purchases in the `horizon_days` after T, given the history:
    /// P(alive) × the expected purchases of a customer alive at T (FHL 2005 eq. 10).
    ///
    /// A horizon of zero or less gives 0. The result is finite and non-negative for any
    /// valid parameters and summary; NaN in the summary gives NaN.
    pub(crate) fn expected_purchases(&self, s: &RepeatSummary, horizon_days: f64) -> f64 {
        if horizon_days <= 0.0 {
            return 0.0;
        }
        self.p_alive(s) * self.expected_purchases_if_alive(s, horizon_days)
    }

    /// Expected purchases in the `horizon_days` after T of a customer alive at T: the series
    /// of the module documentation.
    pub(crate) fn expected_purchases_if_alive(&self, s: &RepeatSummary, horizon_days: f64) -> f64 {
        if horizon_days <= 0.0 {
            return 0.0;
        }
        let &BgNbd { r, alpha, a, b } = self;
        let x = s.x;
        let c = a + b + x - 1.0;
        let eps = a - 1.0;
        let upper = a + b - 1.0 - r;
        let base = alpha + s.t;
        // z = t / (α+T+t) and ln(1−z), both without cancellation.
        let z = horizon_days / (base + horizon_days);
        let ln_1mz = -(horizon_days / base).ln_1p();

        let mut term = upper * z;
        let mut sum = term;
        let mut k = 1.0;
        for _ in 1..MAX_TERMS {
            let ratio = (upper + k) * (eps + k) * z / ((c + k) * (k + 1.0));
            term *= ratio;
            sum += term;
            k += 1.0;
            // Once the terms shrink, the tail is at most |term|·z/(1−z).
            if ratio.abs() < 1.0 && term.abs() * z <= 1e-17 * sum.abs() * (1.0 - z) {
                break;
            }
            if term == 0.0 {
                break;
            }
        }
        // expm1(ε·L)/ε → L as ε → 0 (a = 1): the form below is exact there too.
        let expm1_over_eps = if eps == 0.0 {
            ln_1mz
        } else {
            (eps * ln_1mz).exp_m1() / eps
        };
        let value = -c * expm1_over_eps - (eps * ln_1mz).exp() * sum;
        // Rounding can leave a tiny negative number for horizons of a few seconds.
        value.max(0.0)
    }

    /// Median number of days from T to the next purchase, counting the chance that the
    /// customer has dropped out: the `w` at which P(a purchase within w days) reaches 1/2.
    ///
    /// Alive at T, a customer's next purchase comes after a waiting time whose survival
    /// function, under the posterior purchase rate Gamma(r+x, α+T), is ((α+T)/(α+T+w))^(r+x)
    /// (dropout happens only right after purchases, so it does not cut this wait short). So
    /// P(a purchase within w) = P(alive) · (1 − ((α+T)/(α+T+w))^(r+x)), and
    ///
    /// ```text
    /// w = (α+T) · ((1 − 1/(2·P(alive)))^(−1/(r+x)) − 1).
    /// ```
    ///
    /// `None` when P(alive) ≤ 1/2: the customer is then more likely never to buy again, and
    /// no date has an even chance. The result can be very large (a rarely buying one-time
    /// customer waits years at the median) or +∞ for extreme parameters; callers cap it.
    /// `p_alive` is the customer's [`BgNbd::p_alive`], which every caller has at hand.
    pub(crate) fn median_days_to_next_purchase(
        &self,
        s: &RepeatSummary,
        p_alive: f64,
    ) -> Option<f64> {
        if p_alive.is_nan() || p_alive <= 0.5 {
            return None;
        }
        let ln_never = (-0.5 / p_alive).ln_1p();
        Some((self.alpha + s.t) * (-ln_never / (self.r + s.x)).exp_m1())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use rand_distr::{Beta, Distribution, Exp, Gamma};

    /// Fader, Hardie & Lee (2005), CDNOW: r 0.243, α 4.414, a 0.793, b 2.426, in weeks.
    const FHL_WEEKS: BgNbd = BgNbd {
        r: 0.243,
        alpha: 4.414,
        a: 0.793,
        b: 2.426,
    };

    fn summary(x: f64, t_x: f64, t: f64) -> RepeatSummary {
        RepeatSummary { x, t_x, t }
    }

    fn close(actual: f64, expected: f64, relative: f64) -> bool {
        (actual - expected).abs() <= relative * expected.abs()
    }

    /// The worked example of FHL 2005 (section 5) and of Hardie's spreadsheet, checked by
    /// lifetimes' `test_conditional_expectation_returns_same_value_as_Hardie_excel_sheet`: a
    /// customer with x = 2, t_x = 30.43, T = 38.86 weeks is expected to make 1.226 purchases
    /// in the next 39 weeks.
    #[test]
    fn the_published_cdnow_example_gives_1_226_purchases() {
        let s = summary(2.0, 30.43, 38.86);
        let weeks = FHL_WEEKS.expected_purchases(&s, 39.0);
        assert!((weeks - 1.226).abs() < 5e-4, "{weeks}");
        // The same in days, with α in days: the formula is free of the time unit.
        let days = BgNbd {
            alpha: FHL_WEEKS.alpha * 7.0,
            ..FHL_WEEKS
        };
        let in_days = days.expected_purchases(&summary(2.0, 30.43 * 7.0, 38.86 * 7.0), 273.0);
        assert!(close(in_days, weeks, 1e-12), "{in_days} vs {weeks}");
    }

    /// ₂F₁(A, B; C; z) by its defining series, for the cross-check below (moderate x only:
    /// it overflows for large x, which is why the module does not use it).
    fn naive_hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
        let (mut term, mut sum) = (1.0, 1.0);
        for k in 0..100_000 {
            let k = f64::from(k);
            term *= (a + k) * (b + k) / ((c + k) * (k + 1.0)) * z;
            sum += term;
            if term.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        sum
    }

    /// FHL eq. (10) exactly as lifetimes writes it.
    fn lifetimes_formula(m: &BgNbd, s: &RepeatSummary, t: f64) -> f64 {
        let BgNbd { r, alpha, a, b } = *m;
        let x = s.x;
        let z = t / (alpha + s.t + t);
        let hyp = naive_hyp2f1(r + x, b + x, a + b + x - 1.0, z);
        let first = (a + b + x - 1.0) / (a - 1.0);
        let second = 1.0 - hyp * ((alpha + s.t) / (alpha + t + s.t)).powf(r + x);
        let dead_odds = if x > 0.0 {
            a / (b + x - 1.0) * ((alpha + s.t) / (alpha + s.t_x)).powf(r + x)
        } else {
            0.0
        };
        first * second / (1.0 + dead_odds)
    }

    /// E[Y(t) | alive] as the posterior expectation it is, by quadrature: given alive, the
    /// customer buys at rate λ ~ Gamma(r+x, α+T) and drops out after each purchase with
    /// p ~ Beta(a, b+x), so E = E_p[(1 − (1 + p·t/(α+T))^−(r+x)) / p]. The substitution
    /// p = u^(1/a) removes the Beta density's singularity at 0; composite Simpson on u.
    /// Independent of the series in every respect.
    fn quadrature_if_alive(m: &BgNbd, s: &RepeatSummary, t: f64) -> f64 {
        let BgNbd { r, alpha, a, b } = *m;
        let shape = r + s.x;
        let bx = b + s.x;
        let ln_beta = crate::model::bgnbd::ln_gamma(a) + crate::model::bgnbd::ln_gamma(bx)
            - crate::model::bgnbd::ln_gamma(a + bx);
        let g = |u: f64| -> f64 {
            if u <= 0.0 {
                // p → 0: (1 − (1+p·c)^−k)/p → k·c.
                return shape * t / (alpha + s.t);
            }
            let p = u.powf(1.0 / a);
            let buy = -(-shape * (p * t / (alpha + s.t)).ln_1p()).exp_m1();
            buy / p * (1.0 - p).powf(bx - 1.0)
        };
        let n = 400_000;
        let h = 1.0 / f64::from(n);
        let mut sum = g(0.0) + g(1.0);
        for i in 1..n {
            let w = if i % 2 == 1 { 4.0 } else { 2.0 };
            sum += w * g(f64::from(i) * h);
        }
        sum * h / 3.0 / a / ln_beta.exp()
    }

    #[test]
    fn the_series_matches_lifetimes_formula_and_the_posterior_integral() {
        let m = BgNbd {
            r: 0.243,
            alpha: 30.9,
            a: 0.793,
            b: 2.426,
        };
        let cases = [
            summary(0.0, 0.0, 0.0),
            summary(0.0, 0.0, 270.0),
            summary(1.0, 12.0, 270.0),
            summary(2.0, 213.0, 272.0),
            summary(7.0, 206.0, 272.0),
            summary(29.0, 264.0, 266.0),
            summary(60.0, 100.0, 272.0),
        ];
        for s in cases {
            for t in [1.0, 30.0, 90.0, 365.0] {
                let got = m.expected_purchases(&s, t);
                let direct = lifetimes_formula(&m, &s, t);
                assert!(close(got, direct, 1e-9), "{s:?} t {t}: {got} vs {direct}");
                let alive = m.expected_purchases_if_alive(&s, t);
                let integral = quadrature_if_alive(&m, &s, t);
                assert!(
                    close(alive, integral, 1e-6),
                    "{s:?} t {t}: {alive} vs {integral}"
                );
            }
        }
    }

    #[test]
    fn large_x_and_a_near_1_stay_finite_and_continuous() {
        let m = BgNbd {
            r: 0.243,
            alpha: 30.9,
            a: 0.793,
            b: 2.426,
        };
        // Where ₂F₁(r+x, b+x; …) itself overflows f64 (lifetimes needs its fallback).
        let naive = naive_hyp2f1(m.r + 3000.0, m.b + 3000.0, m.a + m.b + 2999.0, 0.25);
        assert!(naive.is_infinite(), "{naive}");
        for x in [500.0, 3000.0, 1e6, 4e9] {
            let s = summary(x, 270.0, 272.0);
            let alive = m.expected_purchases_if_alive(&s, 90.0);
            // A customer with x purchases in 272 days, alive, buys at about x/(α+T) a day.
            let rate = (m.r + x) / (m.alpha + s.t);
            assert!(alive.is_finite() && alive > 0.0, "x {x}: {alive}");
            // Given alive it buys at about rate λ; the dropout chance after each of those
            // purchases (~a/x each) takes some of them away, but not half.
            assert!(
                alive <= rate * 90.0 && alive > 0.5 * rate * 90.0,
                "x {x}: {alive} vs {}",
                rate * 90.0
            );
        }
        let integral = quadrature_if_alive(&m, &summary(500.0, 270.0, 272.0), 90.0);
        let series = m.expected_purchases_if_alive(&summary(500.0, 270.0, 272.0), 90.0);
        assert!(close(series, integral, 1e-5), "{series} vs {integral}");

        // At a = 1 the closed form's 1/(a−1) is singular; the series form is continuous.
        let s = summary(3.0, 150.0, 272.0);
        let at = |a: f64| BgNbd { a, ..m }.expected_purchases(&s, 90.0);
        let (below, exact, above) = (at(1.0 - 1e-9), at(1.0), at(1.0 + 1e-9));
        assert!(exact.is_finite() && exact > 0.0, "{exact}");
        assert!(close(below, exact, 1e-7) && close(above, exact, 1e-7));
        let integral = quadrature_if_alive(&BgNbd { a: 1.0, ..m }, &s, 90.0);
        let alive = BgNbd { a: 1.0, ..m }.expected_purchases_if_alive(&s, 90.0);
        assert!(close(alive, integral, 1e-6), "{alive} vs {integral}");
    }

    #[test]
    fn expected_purchases_grow_with_the_horizon_and_fall_with_silence() {
        let m = BgNbd {
            r: 0.25,
            alpha: 30.0,
            a: 0.8,
            b: 2.5,
        };
        let s = summary(4.0, 200.0, 250.0);
        let mut previous = 0.0;
        for t in [0.5, 1.0, 7.0, 30.0, 90.0, 365.0, 3650.0] {
            let e = m.expected_purchases(&s, t);
            assert!(e > previous, "t {t}: {e} after {previous}");
            previous = e;
        }
        assert_eq!(m.expected_purchases(&s, 0.0), 0.0);
        assert_eq!(m.expected_purchases(&s, -5.0), 0.0);
        let mut previous = f64::INFINITY;
        for t_x in [250.0, 200.0, 100.0, 10.0] {
            let e = m.expected_purchases(&summary(4.0, t_x, 250.0), 90.0);
            assert!(e < previous, "t_x {t_x}: {e}");
            previous = e;
        }
    }

    #[test]
    fn the_median_wait_has_an_even_chance_of_a_purchase() {
        let m = BgNbd {
            r: 0.25,
            alpha: 30.0,
            a: 0.8,
            b: 2.5,
        };
        for s in [
            summary(0.0, 0.0, 20.0),
            summary(3.0, 250.0, 252.0),
            summary(12.0, 240.0, 250.0),
        ] {
            let w = m
                .median_days_to_next_purchase(&s, m.p_alive(&s))
                .expect("likely alive");
            // P(purchase within w) = 1 − P(no purchase within w) = 1/2.
            let p_buy = 1.0 - m.p_no_purchase(&s, w);
            assert!((p_buy - 0.5).abs() < 1e-12, "{s:?}: w {w}, {p_buy}");
        }
        // x = 0 is alive for sure under BG/NBD: the median is the posterior's alone.
        let new = summary(0.0, 0.0, 20.0);
        let want = (m.alpha + 20.0) * (2f64.powf(1.0 / m.r) - 1.0);
        let got = m
            .median_days_to_next_purchase(&new, m.p_alive(&new))
            .unwrap();
        assert!(close(got, want, 1e-12), "{got} vs {want}");
        // Long silence after frequent purchases: likely gone, no date.
        let gone = summary(20.0, 30.0, 270.0);
        assert!(m.p_alive(&gone) < 0.5);
        assert_eq!(
            m.median_days_to_next_purchase(&gone, m.p_alive(&gone)),
            None
        );
        // Enormous x: no overflow, a short wait.
        let busy = summary(4e9, 270.0, 270.0);
        let w = m
            .median_days_to_next_purchase(&busy, m.p_alive(&busy))
            .unwrap();
        assert!(w.is_finite() && w > 0.0 && w < 1e-6, "{w}");
    }

    /// What a simulated customer did before and after `t_end`.
    struct Simulated {
        history: RepeatSummary,
        /// Purchases in (t_end, t_end + horizon].
        future: f64,
        alive_at_end: bool,
        /// Days from t_end to the first purchase after it, if within the horizon.
        next_within_horizon: Option<f64>,
    }

    /// One BG/NBD customer in continuous time, from their first purchase at 0: purchases at
    /// Exp(λ) gaps, dropping out after each repeat purchase with probability p.
    fn simulate(rng: &mut StdRng, m: &BgNbd, t_end: f64, horizon: f64) -> Simulated {
        let lambda = Gamma::new(m.r, 1.0 / m.alpha).unwrap().sample(rng);
        let p = Beta::new(m.a, m.b).unwrap().sample(rng);
        let gap = Exp::new(lambda).unwrap();
        let (mut now, mut x, mut t_x, mut future) = (0.0, 0.0, 0.0, 0.0);
        let mut alive_at_end = true;
        let mut next_within_horizon = None;
        loop {
            now += gap.sample(rng);
            if now > t_end + horizon {
                break;
            }
            if now <= t_end {
                x += 1.0;
                t_x = now;
            } else {
                future += 1.0;
                next_within_horizon.get_or_insert(now - t_end);
            }
            if rng.random::<f64>() < p {
                if now <= t_end {
                    alive_at_end = false;
                }
                break;
            }
        }
        Simulated {
            history: summary(x, t_x, t_end),
            future,
            alive_at_end,
            next_within_horizon,
        }
    }

    /// With the true parameters, the conditional expectations must agree with what simulated
    /// customers go on to do: the mean predicted purchases with the mean realised ones (per
    /// group of histories), the mean P(alive) with the share alive, and the median wait with
    /// the share who bought again within it.
    #[test]
    fn conditional_expectations_match_simulated_futures() {
        let m = BgNbd {
            r: 0.25,
            alpha: 30.0,
            a: 0.8,
            b: 2.5,
        };
        let mut rng = StdRng::seed_from_u64(19);
        let n = 200_000;
        let (mut predicted, mut realised) = ([0.0; 3], [0.0; 3]);
        let (mut p_alive, mut alive) = (0.0, 0.0);
        let mut counts = [0.0; 3];
        let (mut within_median, mut with_median) = (0.0f64, 0.0f64);
        for _ in 0..n {
            let t_end = 180.0 + 90.0 * rng.random::<f64>();
            let sim = simulate(&mut rng, &m, t_end, 90.0);
            let s = sim.history;
            let group = match s.x as u32 {
                0 => 0,
                1..=3 => 1,
                _ => 2,
            };
            predicted[group] += m.expected_purchases(&s, 90.0);
            realised[group] += sim.future;
            counts[group] += 1.0;
            p_alive += m.p_alive(&s);
            alive += f64::from(u8::from(sim.alive_at_end));
            // Where the median wait falls inside the simulated horizon, half of the customers
            // must have bought again within it.
            if let Some(w) = m
                .median_days_to_next_purchase(&s, m.p_alive(&s))
                .filter(|w| *w < 90.0)
            {
                with_median += 1.0;
                if sim.next_within_horizon.is_some_and(|d| d <= w) {
                    within_median += 1.0;
                }
            }
        }
        for g in 0..3 {
            let (p, r) = (predicted[g] / counts[g], realised[g] / counts[g]);
            assert!(
                (p - r).abs() < 0.03 * r.max(0.05),
                "group {g} ({} customers): predicted {p}, realised {r}",
                counts[g]
            );
        }
        let (p, a) = (p_alive / f64::from(n), alive / f64::from(n));
        assert!((p - a).abs() < 0.005, "mean P(alive) {p}, share alive {a}");
        assert!(
            with_median > 1_000.0,
            "{with_median} customers with a median"
        );
        let share = within_median / with_median;
        assert!(
            (share - 0.5).abs() < 0.02,
            "{share} bought within the median wait"
        );
    }
}
